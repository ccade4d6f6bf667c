package oci

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// NodeagentBinary is where the nodeagent image keeps the agent; deploy/daemonset.yaml runs it by
// this path, and the Containerfile installs it there.
const NodeagentBinary = "/usr/local/bin/nodeagent"

// iptablesCommands are the names xtables-nft-multi answers to that the proxy modes run.
var iptablesCommands = []string{
	"iptables", "iptables-save", "iptables-restore",
	"ip6tables", "ip6tables-save", "ip6tables-restore",
	"iptables-nft", "iptables-nft-save", "iptables-nft-restore",
	"ip6tables-nft", "ip6tables-nft-save", "ip6tables-nft-restore",
}

// hostTool finds a tool of the host in PATH or in the system directories PATH may lack.
func hostTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return filepath.EvalSymlinks(p)
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return filepath.EvalSymlinks(p)
		}
	}
	return "", fmt.Errorf("%s: not installed on this host (Debian: iptables, nftables, conntrack; scripts/deps.sh)", name)
}

// AddNetfilterTools adds the host's iptables (the nft variant, xtables-nft-multi, under every
// iptables and ip6tables name the proxies run, and its extensions, which it loads with dlopen),
// nft and conntrack, with their libraries: what kube-proxy's and nodeagent's modes run.
func (img *Image) AddNetfilterTools() error {
	multi, err := hostTool("xtables-nft-multi")
	if err != nil {
		return err
	}
	if err := img.AddBinary("/usr/sbin/xtables-nft-multi", multi); err != nil {
		return err
	}
	for _, name := range iptablesCommands {
		img.AddLink("/usr/sbin/"+name, "xtables-nft-multi")
	}
	exts, _ := filepath.Glob("/usr/lib/*/xtables/*.so")
	more, _ := filepath.Glob("/usr/lib/xtables/*.so")
	exts = append(exts, more...)
	if len(exts) == 0 {
		return fmt.Errorf("no iptables extensions (libxt_*.so) under /usr/lib/*/xtables")
	}
	for _, so := range exts {
		img.AddFile(so, so, 0o644)
		if err := img.AddLibraries(so); err != nil {
			return err
		}
	}
	for _, tool := range []string{"nft", "conntrack"} {
		p, err := hostTool(tool)
		if err != nil {
			return err
		}
		if err := img.AddBinary("/usr/sbin/"+tool, p); err != nil {
			return err
		}
	}
	return nil
}

// Nodeagent assembles nodeagent's image from a nodeagent binary (built with CGO_ENABLED=0, so
// that it needs no C library) and the host's netfilter tools: what the Containerfile builds from
// Debian's packages, without a registry. Entrypoint is the agent, its default command "run".
func Nodeagent(name, binary string) (*Image, error) {
	img := New(name)
	img.AddFile(NodeagentBinary, binary, 0o755)
	if err := img.AddLibraries(binary); err != nil {
		return nil, err
	}
	if err := img.AddNetfilterTools(); err != nil {
		return nil, fmt.Errorf("nodeagent image: %w", err)
	}
	img.Entrypoint = []string{NodeagentBinary}
	img.Cmd = []string{"run"}
	return img, nil
}

// KubeProxy assembles an image of kube-proxy (the binary at binary) with the same netfilter
// tools, for comparing it with nodeagent on the same cluster.
func KubeProxy(name, binary string) (*Image, error) {
	img := New(name)
	if err := img.AddBinary("/usr/local/bin/kube-proxy", binary); err != nil {
		return nil, err
	}
	if err := img.AddNetfilterTools(); err != nil {
		return nil, fmt.Errorf("kube-proxy image: %w", err)
	}
	img.Entrypoint = []string{"/usr/local/bin/kube-proxy"}
	return img, nil
}

// Single assembles an image of one program at /name (with its libraries if it has any) as the
// entrypoint: pause, CoreDNS, agnhost.
func Single(name, binary, inImage string) (*Image, error) {
	img := New(name)
	if err := img.AddBinary(inImage, binary); err != nil {
		return nil, err
	}
	img.Entrypoint = []string{inImage}
	return img, nil
}
