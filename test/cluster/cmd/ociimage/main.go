// Command ociimage writes a container image as an OCI image-layout archive, without a registry
// or a daemon (see package nodeagent/test/cluster/oci). `make image` runs it for nodeagent's image:
//
//	ociimage -kind nodeagent -binary bin/image/nodeagent -name nodeagent:dev -o bin/nodeagent-image.tar
//	ociimage -check bin/nodeagent-image.tar
//
// Kinds: nodeagent (the agent plus the host's iptables-nft, nft and conntrack with their
// libraries, as the Containerfile installs them), kube-proxy (the same around a kube-proxy
// binary), single (one program at -path, with its libraries, as the entrypoint).
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"nodeagent/test/cluster/oci"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "ociimage:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("ociimage", flag.ContinueOnError)
	kind := fs.String("kind", "nodeagent", "nodeagent, kube-proxy or single")
	name := fs.String("name", "nodeagent:dev", "image reference (short names are normalised as containerd does)")
	binary := fs.String("binary", "", "the program to put in the image")
	inImage := fs.String("path", "", "single: where the program goes in the image (default /<base name>)")
	out := fs.String("o", "", "archive to write")
	check := fs.String("check", "", "read this archive, verify its digests and print what it holds")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *check != "" {
		l, err := oci.ReadFile(*check)
		if err != nil {
			return err
		}
		d := l.Index.Manifests[0]
		fmt.Printf("%s\n  manifest %s\n  layer    %s (%d bytes, %d entries)\n  entrypoint %q cmd %q\n",
			d.Annotations[oci.AnnotationImageName], d.Digest, l.Manifest.Layers[0].Digest, l.Manifest.Layers[0].Size,
			len(l.Files), l.Config.Config.Entrypoint, l.Config.Config.Cmd)
		return nil
	}
	if *binary == "" || *out == "" {
		return errors.New("give -binary and -o (or -check)")
	}
	var img *oci.Image
	var err error
	switch *kind {
	case "nodeagent":
		img, err = oci.Nodeagent(*name, *binary)
	case "kube-proxy":
		img, err = oci.KubeProxy(*name, *binary)
	case "single":
		p := *inImage
		if p == "" {
			p = "/" + (*binary)[strings.LastIndexByte(*binary, '/')+1:]
		}
		img, err = oci.Single(*name, *binary, p)
	default:
		return fmt.Errorf("unknown -kind %q", *kind)
	}
	if err != nil {
		return err
	}
	if err := img.WriteFile(*out); err != nil {
		return err
	}
	fmt.Printf("%s: %s\n", *out, img.Name)
	return nil
}
