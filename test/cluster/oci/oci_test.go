package oci

import (
	"archive/tar"
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestNormalize(t *testing.T) {
	for in, want := range map[string]string{
		"nodeagent:dev":                     "docker.io/library/nodeagent:dev",
		"nodeagent":                         "docker.io/library/nodeagent:latest",
		"coredns/coredns:1.12.1":            "docker.io/coredns/coredns:1.12.1",
		"registry.k8s.io/pause:3.10.1":      "registry.k8s.io/pause:3.10.1",
		"localhost:5000/nodeagent":          "localhost:5000/nodeagent:latest",
		"localhost/nodeagent:dev":           "localhost/nodeagent:dev",
		"registry.k8s.io/e2e/agnhost:2.56":  "registry.k8s.io/e2e/agnhost:2.56",
		"docker.io/library/nodeagent:dev":   "docker.io/library/nodeagent:dev",
		"example.com:443/team/app:v1-rc.1":  "example.com:443/team/app:v1-rc.1",
		"ghcr.io/org/nodeagent:v0.1.0-beta": "ghcr.io/org/nodeagent:v0.1.0-beta",
	} {
		if got := Normalize(in); got != want {
			t.Errorf("Normalize(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseLDD(t *testing.T) {
	out := []byte(`	linux-vdso.so.1 (0x00007ffd6b7f2000)
	libxtables.so.12 => /lib/x86_64-linux-gnu/libxtables.so.12 (0x00007f2ed790f000)
	libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2ed76f2000)
	/lib64/ld-linux-x86-64.so.2 (0x00007f2ed79d8000)
`)
	got, err := parseLDD(out)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/lib/x86_64-linux-gnu/libxtables.so.12", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"}
	if !slices.Equal(got, want) {
		t.Errorf("parseLDD = %q, want %q", got, want)
	}
	if _, err := parseLDD([]byte("\tlibfoo.so.1 => not found\n")); err == nil {
		t.Error("a missing library is not an error")
	}
}

// write writes img and reads it back.
func write(t *testing.T, img *Image) ([]byte, *Layout) {
	t.Helper()
	var buf bytes.Buffer
	if err := img.Write(&buf); err != nil {
		t.Fatal(err)
	}
	l, err := Read(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), l
}

func files(l *Layout) map[string]*tar.Header {
	m := map[string]*tar.Header{}
	for _, h := range l.Files {
		m[h.Name] = h
	}
	return m
}

func TestLayout(t *testing.T) {
	src := filepath.Join(t.TempDir(), "prog")
	if err := os.WriteFile(src, []byte("#!/bin/true\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	img := New("example:v1")
	img.entries = map[string]Entry{} // no host-dependent links
	img.AddLink("/lib", "usr/lib")
	img.AddFile("/usr/local/bin/prog", src, 0o755)
	img.AddData("/lib/x86_64-linux-gnu/libfoo.so.1", []byte("lib"), 0o644)
	img.AddLink("/usr/sbin/alias", "prog")
	img.Add(Entry{Path: "/tmp", Mode: fs.ModeDir | fs.ModeSticky | 0o777})
	img.Entrypoint = []string{"/usr/local/bin/prog"}
	img.Cmd = []string{"run"}
	img.Aliases = []string{"registry.example/stand-in:2"}

	raw, l := write(t, img)
	if len(l.Index.Manifests) != 2 || l.Index.Manifests[1].Annotations[AnnotationImageName] != "registry.example/stand-in:2" ||
		l.Index.Manifests[1].Digest != l.Index.Manifests[0].Digest {
		t.Errorf("alias: index %+v", l.Index.Manifests)
	}
	d := l.Index.Manifests[0]
	if d.MediaType != MediaTypeManifest || d.Platform == nil || d.Platform.OS != "linux" {
		t.Errorf("index descriptor %+v", d)
	}
	if got := d.Annotations[AnnotationImageName]; got != "docker.io/library/example:v1" {
		t.Errorf("%s = %q", AnnotationImageName, got)
	}
	if got := d.Annotations[AnnotationRefName]; got != "v1" {
		t.Errorf("%s = %q", AnnotationRefName, got)
	}
	if l.Manifest.Layers[0].MediaType != MediaTypeLayer || l.Manifest.Config.MediaType != MediaTypeConfig {
		t.Errorf("media types %s, %s", l.Manifest.Layers[0].MediaType, l.Manifest.Config.MediaType)
	}
	if !slices.Equal(l.Config.Config.Entrypoint, img.Entrypoint) || !slices.Equal(l.Config.Config.Cmd, img.Cmd) || len(l.Config.Config.Env) == 0 {
		t.Errorf("config %+v", l.Config.Config)
	}

	fsys := files(l)
	var names []string
	for _, h := range l.Files {
		names = append(names, h.Name)
	}
	want := []string{"lib", "tmp/", "usr/", "usr/lib/", "usr/lib/x86_64-linux-gnu/", "usr/lib/x86_64-linux-gnu/libfoo.so.1",
		"usr/local/", "usr/local/bin/", "usr/local/bin/prog", "usr/sbin/", "usr/sbin/alias"}
	if !slices.Equal(names, want) {
		t.Errorf("layer holds\n%q\nwant (parents first, /lib/... stored below usr/lib)\n%q", names, want)
	}
	if h := fsys["usr/local/bin/prog"]; h == nil || h.Mode != 0o755 || h.Size != 12 || h.Uid != 0 || h.ModTime.Unix() != 0 {
		t.Errorf("prog header %+v", h)
	}
	if h := fsys["lib"]; h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "usr/lib" {
		t.Errorf("lib header %+v", h)
	}
	if h := fsys["tmp/"]; h == nil || h.Mode != 0o1777 {
		t.Errorf("tmp header %+v", h)
	}

	// The same image twice is the same archive, byte for byte.
	again, _ := write(t, img)
	if !bytes.Equal(raw, again) {
		t.Error("two writes of one image differ")
	}
}

func TestReadRejectsTampering(t *testing.T) {
	img := New("example:v1")
	img.AddData("/etc/hello", []byte("hello"), 0o644)
	raw, _ := write(t, img)
	i := bytes.Index(raw, []byte("hello"))
	if i < 0 {
		t.Fatal("layer content not found in the archive")
	}
	bad := bytes.Clone(raw)
	bad[i] = 'j'
	if _, err := Read(bytes.NewReader(bad)); err == nil {
		t.Error("Read accepted a layer whose digest does not match")
	}
}

// TestNodeagentImage builds the nodeagent image from a stand-in binary and the host's netfilter
// tools and checks that the tools the proxy modes run are there with their libraries.
func TestNodeagentImage(t *testing.T) {
	for _, tool := range []string{"xtables-nft-multi", "nft", "conntrack"} {
		if _, err := hostTool(tool); err != nil {
			t.Skipf("host lacks the tools the image copies: %v", err)
		}
	}
	bin := filepath.Join(t.TempDir(), "nodeagent")
	if err := os.WriteFile(bin, []byte("stand-in"), 0o755); err != nil {
		t.Fatal(err)
	}
	img, err := Nodeagent("nodeagent:dev", bin)
	if err != nil {
		t.Fatal(err)
	}
	_, l := write(t, img)
	fsys := files(l)
	for _, p := range []string{"usr/local/bin/nodeagent", "usr/sbin/xtables-nft-multi", "usr/sbin/nft", "usr/sbin/conntrack"} {
		if h := fsys[p]; h == nil || h.Typeflag != tar.TypeReg || h.Mode&0o111 == 0 {
			t.Errorf("%s missing or not executable: %+v", p, h)
		}
	}
	for _, name := range iptablesCommands {
		if h := fsys["usr/sbin/"+name]; h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "xtables-nft-multi" {
			t.Errorf("usr/sbin/%s: %+v", name, h)
		}
	}
	// Every library ldd names for the tools is in the image, below the links' targets.
	for _, tool := range []string{"xtables-nft-multi", "nft", "conntrack"} {
		p, _ := hostTool(tool)
		libs, err := Libraries(p)
		if err != nil {
			t.Fatal(err)
		}
		if len(libs) == 0 {
			continue
		}
		for _, lib := range libs {
			in := img.resolveParents(lib)
			if fsys[in[1:]] == nil {
				t.Errorf("%s needs %s, which the image lacks (as %s)", tool, lib, in)
			}
		}
	}
	exts := 0
	for name := range fsys {
		if matched, _ := filepath.Match("usr/lib/*/xtables/libxt_*.so", name); matched {
			exts++
		}
	}
	if exts == 0 {
		t.Error("no iptables extensions in the image")
	}
	if !slices.Equal(l.Config.Config.Entrypoint, []string{NodeagentBinary}) {
		t.Errorf("entrypoint %q", l.Config.Config.Entrypoint)
	}
}
