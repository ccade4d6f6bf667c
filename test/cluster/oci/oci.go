// Package oci writes container images as OCI image-layout archives without a registry, a daemon
// or a build tool: one uncompressed layer made of host files, a config, a manifest and an
// index.json that names the image. containerd imports such an archive with
// `ctr -n k8s.io images import`, podman with `podman load`, docker (25+) with `docker load`.
//
// The archive is deterministic: the same files give the same bytes (fixed times, owners and
// order), so an image rebuilt from unchanged binaries keeps its digest.
//
// Binaries that are not static come with the shared libraries ldd names for them (AddBinary),
// which is how the images of this project carry Debian's iptables, nft and conntrack.
package oci

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Media types and annotations of the OCI image specification and containerd.
const (
	MediaTypeIndex    = "application/vnd.oci.image.index.v1+json"
	MediaTypeManifest = "application/vnd.oci.image.manifest.v1+json"
	MediaTypeConfig   = "application/vnd.oci.image.config.v1+json"
	MediaTypeLayer    = "application/vnd.oci.image.layer.v1.tar"

	// AnnotationImageName is the full reference containerd's importer names the image by.
	AnnotationImageName = "io.containerd.image.name"
	// AnnotationRefName is the OCI layout's reference (the tag, as BuildKit writes it).
	AnnotationRefName = "org.opencontainers.image.ref.name"
)

// epoch is the modification time of every entry: archives do not change with the build time.
var epoch = time.Unix(0, 0).UTC()

// Entry is one file, directory or symbolic link of the layer.
type Entry struct {
	// Path is the absolute path inside the image.
	Path string
	// Mode is the permission bits (and fs.ModeDir or fs.ModeSymlink for those types).
	Mode fs.FileMode
	// Data is a regular file's content, or Source names the host file to read it from.
	Data   []byte
	Source string
	// Link is a symbolic link's target.
	Link string
}

// Image is an image being assembled: its name, process and files.
type Image struct {
	// Name is the full reference, e.g. docker.io/library/nodeagent:dev. A short name is
	// normalised the way containerd's CRI plugin normalises a pod's image field.
	Name string
	// Aliases are further references to the same image (one index entry each), for images
	// that stand in for others.
	Aliases []string
	// Entrypoint, Cmd, Env and WorkingDir are the image config's process defaults.
	Entrypoint []string
	Cmd        []string
	Env        []string
	WorkingDir string

	entries map[string]Entry
}

// New returns an empty image named name. Its root holds /tmp (mode 1777) and, on a host whose
// /bin, /sbin, /lib and /lib64 are links into /usr (Debian since 12), the same links, so that a
// library found at /lib/... on the host is found there in the image too.
func New(name string) *Image {
	img := &Image{Name: Normalize(name), entries: map[string]Entry{}}
	img.Add(Entry{Path: "/tmp", Mode: fs.ModeDir | fs.ModeSticky | 0o777})
	for _, d := range []string{"/bin", "/sbin", "/lib", "/lib64"} {
		if target, err := os.Readlink(d); err == nil && !strings.HasPrefix(target, "/") {
			img.Add(Entry{Path: d, Mode: fs.ModeSymlink | 0o777, Link: target})
		}
	}
	return img
}

// Normalize turns a short image name into the full reference containerd uses: nodeagent:dev
// becomes docker.io/library/nodeagent:dev, a name without a tag gets :latest.
func Normalize(name string) string {
	repo, tag := name, ""
	if i := strings.LastIndexByte(name, ':'); i > strings.LastIndexByte(name, '/') {
		repo, tag = name[:i], name[i+1:]
	}
	if !strings.Contains(repo, "@") && tag == "" {
		tag = "latest"
	}
	first, _, found := strings.Cut(repo, "/")
	switch {
	case !found:
		repo = "docker.io/library/" + repo
	case !strings.ContainsAny(first, ".:") && first != "localhost":
		repo = "docker.io/" + repo
	}
	if tag == "" {
		return repo
	}
	return repo + ":" + tag
}

// Tag returns the tag of a normalised reference ("dev" of docker.io/library/nodeagent:dev).
func Tag(ref string) string {
	if i := strings.LastIndexByte(ref, ':'); i > strings.LastIndexByte(ref, '/') {
		return ref[i+1:]
	}
	return ""
}

// Add puts an entry into the layer, replacing one at the same path.
func (img *Image) Add(e Entry) {
	e.Path = path.Clean("/" + e.Path)
	img.entries[e.Path] = e
}

// AddFile copies the host file src to dst in the image with mode perm.
func (img *Image) AddFile(dst, src string, perm fs.FileMode) {
	img.Add(Entry{Path: dst, Mode: perm, Source: src})
}

// AddData writes data to dst in the image with mode perm.
func (img *Image) AddData(dst string, data []byte, perm fs.FileMode) {
	img.Add(Entry{Path: dst, Mode: perm, Data: data})
}

// AddLink makes dst a symbolic link to target.
func (img *Image) AddLink(dst, target string) {
	img.Add(Entry{Path: dst, Mode: fs.ModeSymlink | 0o777, Link: target})
}

// AddBinary copies the host executable src to dst in the image with every shared library ldd
// lists for it, each at the path the host's loader found it (the dynamic loader included). A
// static binary comes alone.
func (img *Image) AddBinary(dst, src string) error {
	img.AddFile(dst, src, 0o755)
	return img.AddLibraries(src)
}

// AddLibraries adds the shared libraries that ldd lists for the host file src (an executable or
// a library loaded with dlopen, such as iptables' extensions) at their host paths.
func (img *Image) AddLibraries(src string) error {
	libs, err := Libraries(src)
	if err != nil {
		return err
	}
	for _, l := range libs {
		img.AddFile(l, l, 0o755)
	}
	return nil
}

// Libraries returns the absolute paths of the shared libraries ldd lists for file, or none for
// a static one.
func Libraries(file string) ([]string, error) {
	out, err := exec.Command("ldd", file).CombinedOutput()
	if err != nil {
		// ldd exits 1 for a static executable ("not a dynamic executable").
		if strings.Contains(string(out), "not a dynamic executable") || strings.Contains(string(out), "statically linked") {
			return nil, nil
		}
		return nil, fmt.Errorf("ldd %s: %w: %s", file, err, strings.TrimSpace(string(out)))
	}
	return parseLDD(out)
}

// parseLDD reads ldd's output: "name => /path (0x...)" per library, "/path (0x...)" for the
// loader, and no path for the vDSO.
func parseLDD(out []byte) ([]string, error) {
	var libs []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.Contains(line, "statically linked") {
			continue
		}
		if strings.Contains(line, "=> not found") {
			return nil, fmt.Errorf("ldd: missing library: %s", line)
		}
		if _, after, ok := strings.Cut(line, "=>"); ok {
			line = strings.TrimSpace(after)
		}
		p, _, _ := strings.Cut(line, " ")
		if strings.HasPrefix(p, "/") {
			libs = append(libs, p)
		}
	}
	return libs, sc.Err()
}

// Paths returns the paths of the layer's entries in archive order (parents first).
func (img *Image) Paths() []string {
	full := img.withParents()
	paths := make([]string, 0, len(full))
	for p := range full {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	return paths
}

// withParents returns the entries plus a directory entry (0755) for every parent directory not
// given, so that the layer never relies on the runtime to invent one. A parent that is a symbolic
// link in the image (/lib -> usr/lib) is resolved: the file goes below its target.
func (img *Image) withParents() map[string]Entry {
	out := make(map[string]Entry, len(img.entries))
	for p, e := range img.entries {
		p = img.resolveParents(p)
		e.Path = p
		out[p] = e
	}
	for p := range out {
		for d := path.Dir(p); d != "/"; d = path.Dir(d) {
			if _, ok := out[d]; !ok {
				out[d] = Entry{Path: d, Mode: fs.ModeDir | 0o755}
			}
		}
	}
	return out
}

// resolveParents rewrites p so that no directory above it is one of the image's symbolic links.
func (img *Image) resolveParents(p string) string {
	for range 16 {
		changed := false
		for d := path.Dir(p); d != "/"; d = path.Dir(d) {
			if e, ok := img.entries[d]; ok && e.Mode&fs.ModeSymlink != 0 {
				target := e.Link
				if !strings.HasPrefix(target, "/") {
					target = path.Join(path.Dir(d), target)
				}
				p = path.Join(target, strings.TrimPrefix(p, d))
				changed = true
				break
			}
		}
		if !changed {
			return p
		}
	}
	return p
}

// writeLayer writes the layer tar to w.
func (img *Image) writeLayer(w io.Writer) error {
	tw := tar.NewWriter(w)
	full := img.withParents()
	for _, p := range img.Paths() {
		e := full[p]
		h := &tar.Header{
			Name:    strings.TrimPrefix(p, "/"),
			Mode:    int64(e.Mode.Perm()),
			ModTime: epoch,
			Format:  tar.FormatPAX,
		}
		if e.Mode&fs.ModeSticky != 0 {
			h.Mode |= 0o1000
		}
		var body io.Reader
		switch {
		case e.Mode&fs.ModeDir != 0:
			h.Typeflag = tar.TypeDir
			h.Name += "/"
		case e.Mode&fs.ModeSymlink != 0:
			h.Typeflag = tar.TypeSymlink
			h.Linkname = e.Link
		case e.Source != "":
			f, err := os.Open(e.Source)
			if err != nil {
				return fmt.Errorf("layer: %w", err)
			}
			defer f.Close()
			st, err := f.Stat()
			if err != nil {
				return fmt.Errorf("layer: %w", err)
			}
			if !st.Mode().IsRegular() {
				return fmt.Errorf("layer: %s is not a regular file", e.Source)
			}
			h.Typeflag = tar.TypeReg
			h.Size = st.Size()
			body = f
		default:
			h.Typeflag = tar.TypeReg
			h.Size = int64(len(e.Data))
			body = bytes.NewReader(e.Data)
		}
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("layer %s: %w", p, err)
		}
		if body != nil {
			if n, err := io.Copy(tw, body); err != nil {
				return fmt.Errorf("layer %s: %w", p, err)
			} else if n != h.Size {
				return fmt.Errorf("layer %s: %s changed size while being read", p, e.Source)
			}
		}
	}
	return tw.Close()
}

// Descriptor is an OCI content descriptor.
type Descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    *Platform         `json:"platform,omitempty"`
}

// Platform is a descriptor's platform.
type Platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

// Index is an OCI image index (index.json).
type Index struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Manifests     []Descriptor `json:"manifests"`
}

// Manifest is an OCI image manifest.
type Manifest struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Config        Descriptor   `json:"config"`
	Layers        []Descriptor `json:"layers"`
}

// Config is the part of an OCI image config this package writes.
type Config struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
	Config       struct {
		Entrypoint []string `json:"Entrypoint,omitempty"`
		Cmd        []string `json:"Cmd,omitempty"`
		Env        []string `json:"Env,omitempty"`
		WorkingDir string   `json:"WorkingDir,omitempty"`
	} `json:"config"`
	RootFS struct {
		Type    string   `json:"type"`
		DiffIDs []string `json:"diff_ids"`
	} `json:"rootfs"`
}

func digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// Write writes the image as an OCI image-layout tar archive to w. The layer is staged in a
// temporary file, because its digest has to be known before the archive names its blob.
func (img *Image) Write(w io.Writer) error {
	if img.Name == "" {
		return errors.New("oci: image has no name")
	}
	tmp, err := os.CreateTemp("", "oci-layer-")
	if err != nil {
		return fmt.Errorf("oci: %w", err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	h := sha256.New()
	if err := img.writeLayer(io.MultiWriter(tmp, h)); err != nil {
		return err
	}
	layerSize, err := tmp.Seek(0, io.SeekCurrent)
	if err != nil {
		return fmt.Errorf("oci: %w", err)
	}
	layerDigest := "sha256:" + hex.EncodeToString(h.Sum(nil))

	var cfg Config
	cfg.Architecture, cfg.OS = runtime.GOARCH, "linux"
	cfg.Config.Entrypoint, cfg.Config.Cmd = img.Entrypoint, img.Cmd
	cfg.Config.Env, cfg.Config.WorkingDir = img.Env, img.WorkingDir
	if len(cfg.Config.Env) == 0 {
		cfg.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	}
	cfg.RootFS.Type = "layers"
	cfg.RootFS.DiffIDs = []string{layerDigest} // uncompressed: the layer's digest is its diff ID
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		return fmt.Errorf("oci: %w", err)
	}
	man := Manifest{
		SchemaVersion: 2,
		MediaType:     MediaTypeManifest,
		Config:        Descriptor{MediaType: MediaTypeConfig, Digest: digest(cfgJSON), Size: int64(len(cfgJSON))},
		Layers:        []Descriptor{{MediaType: MediaTypeLayer, Digest: layerDigest, Size: layerSize}},
	}
	manJSON, err := json.Marshal(man)
	if err != nil {
		return fmt.Errorf("oci: %w", err)
	}
	index := Index{SchemaVersion: 2, MediaType: MediaTypeIndex}
	for _, name := range append([]string{img.Name}, img.Aliases...) {
		name = Normalize(name)
		index.Manifests = append(index.Manifests, Descriptor{
			MediaType: MediaTypeManifest,
			Digest:    digest(manJSON),
			Size:      int64(len(manJSON)),
			Annotations: map[string]string{
				AnnotationImageName: name,
				AnnotationRefName:   Tag(name),
			},
			Platform: &Platform{Architecture: runtime.GOARCH, OS: "linux"},
		})
	}
	indexJSON, err := json.Marshal(index)
	if err != nil {
		return fmt.Errorf("oci: %w", err)
	}

	tw := tar.NewWriter(w)
	file := func(name string, size int64, body io.Reader) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Size: size, Mode: 0o644, ModTime: epoch, Format: tar.FormatPAX}); err != nil {
			return fmt.Errorf("oci: %s: %w", name, err)
		}
		if _, err := io.Copy(tw, body); err != nil {
			return fmt.Errorf("oci: %s: %w", name, err)
		}
		return nil
	}
	dir := func(name string) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX})
	}
	blob := func(d string) string { return "blobs/sha256/" + strings.TrimPrefix(d, "sha256:") }
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("oci: %w", err)
	}
	for _, step := range []func() error{
		func() error { return file("oci-layout", 30, strings.NewReader(`{"imageLayoutVersion":"1.0.0"}`)) },
		func() error { return file("index.json", int64(len(indexJSON)), bytes.NewReader(indexJSON)) },
		func() error { return dir("blobs/") },
		func() error { return dir("blobs/sha256/") },
		func() error { return file(blob(man.Config.Digest), int64(len(cfgJSON)), bytes.NewReader(cfgJSON)) },
		func() error {
			return file(blob(index.Manifests[0].Digest), int64(len(manJSON)), bytes.NewReader(manJSON))
		},
		func() error { return file(blob(layerDigest), layerSize, tmp) },
	} {
		if err := step(); err != nil {
			return err
		}
	}
	return tw.Close()
}

// WriteFile writes the archive to the file name, replacing it in one rename so that a reader
// never sees half an archive.
func (img *Image) WriteFile(name string) error {
	f, err := os.CreateTemp(filepath.Dir(name), "."+filepath.Base(name)+"-")
	if err != nil {
		return fmt.Errorf("oci: %w", err)
	}
	defer os.Remove(f.Name())
	bw := bufio.NewWriterSize(f, 1<<20)
	if err := img.Write(bw); err != nil {
		f.Close()
		return err
	}
	if err := bw.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("oci: %w", err)
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return fmt.Errorf("oci: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("oci: %w", err)
	}
	if err := os.Rename(f.Name(), name); err != nil {
		return fmt.Errorf("oci: %w", err)
	}
	return nil
}

// Layout is an archive read back by Read: its index, the one manifest and config it names (under
// one or more names), and
// the headers of the layer's entries.
type Layout struct {
	Index    Index
	Manifest Manifest
	Config   Config
	Files    []*tar.Header
}

// Read reads an image-layout archive written by Write and checks it: oci-layout, index.json with
// one manifest, every blob present with the digest and size its descriptor claims, the config's
// diff ID equal to the uncompressed layer's digest.
func Read(r io.Reader) (*Layout, error) {
	blobs := map[string][]byte{}
	var ociLayout, indexJSON []byte
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("oci: read: %w", err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			return nil, fmt.Errorf("oci: read %s: %w", h.Name, err)
		}
		switch {
		case h.Name == "oci-layout":
			ociLayout = b
		case h.Name == "index.json":
			indexJSON = b
		case strings.HasPrefix(h.Name, "blobs/sha256/"):
			blobs["sha256:"+strings.TrimPrefix(h.Name, "blobs/sha256/")] = b
		default:
			return nil, fmt.Errorf("oci: unexpected file %s", h.Name)
		}
	}
	var l Layout
	var lv struct {
		Version string `json:"imageLayoutVersion"`
	}
	if err := json.Unmarshal(ociLayout, &lv); err != nil || lv.Version != "1.0.0" {
		return nil, fmt.Errorf("oci: oci-layout %q", ociLayout)
	}
	if err := json.Unmarshal(indexJSON, &l.Index); err != nil {
		return nil, fmt.Errorf("oci: index.json: %w", err)
	}
	if len(l.Index.Manifests) == 0 {
		return nil, errors.New("oci: index.json names no manifest")
	}
	for _, d := range l.Index.Manifests[1:] {
		if d.Digest != l.Index.Manifests[0].Digest {
			return nil, fmt.Errorf("oci: index.json names manifests %s and %s, want one image", l.Index.Manifests[0].Digest, d.Digest)
		}
	}
	blob := func(d Descriptor) ([]byte, error) {
		b, ok := blobs[d.Digest]
		if !ok {
			return nil, fmt.Errorf("oci: blob %s missing", d.Digest)
		}
		if digest(b) != d.Digest || int64(len(b)) != d.Size {
			return nil, fmt.Errorf("oci: blob %s: digest %s, size %d, want size %d", d.Digest, digest(b), len(b), d.Size)
		}
		return b, nil
	}
	b, err := blob(l.Index.Manifests[0])
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, &l.Manifest); err != nil {
		return nil, fmt.Errorf("oci: manifest: %w", err)
	}
	if b, err = blob(l.Manifest.Config); err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, &l.Config); err != nil {
		return nil, fmt.Errorf("oci: config: %w", err)
	}
	if len(l.Manifest.Layers) != 1 || len(l.Config.RootFS.DiffIDs) != 1 || l.Manifest.Layers[0].Digest != l.Config.RootFS.DiffIDs[0] {
		return nil, fmt.Errorf("oci: want one uncompressed layer whose digest is the config's diff ID; layers %v, diff IDs %v", l.Manifest.Layers, l.Config.RootFS.DiffIDs)
	}
	if b, err = blob(l.Manifest.Layers[0]); err != nil {
		return nil, err
	}
	lr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := lr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("oci: layer: %w", err)
		}
		l.Files = append(l.Files, h)
	}
	return &l, nil
}

// ReadFile is Read of the archive in file name.
func ReadFile(name string) (*Layout, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("oci: %w", err)
	}
	defer f.Close()
	return Read(bufio.NewReaderSize(f, 1<<20))
}
