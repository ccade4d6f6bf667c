package cluster

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"nodeagent/test/cluster/oci"
)

// agnhostTools are the host programs the agnhost image carries, as upstream's Alpine image
// does (bind-tools, curl, netcat-openbsd, iproute2, bash), by their names in the image. The
// shell is dash, not busybox's: busybox's runs its own nc applet, which lacks -t. wget is GNU's:
// busybox-static's crashes (exit 139) in the e2e suite's pods.
var agnhostTools = map[string]string{
	"/usr/bin/sh":       "dash",
	"/usr/bin/dash":     "dash",
	"/usr/bin/bash":     "bash",
	"/usr/bin/nc":       "nc.openbsd",
	"/usr/bin/curl":     "curl",
	"/usr/bin/wget":     "wget",
	"/usr/bin/dig":      "dig",
	"/usr/bin/nslookup": "nslookup",
	"/usr/bin/getent":   "getent",
	"/usr/sbin/ip":      "ip",
}

// Agnhost assembles the e2e suite's agnhost image around the agnhost binary (built static by
// build.sh): /agnhost is the entrypoint, "pause" its default command, as upstream's image, with
// the tools the suite runs inside it (agnhostTools, and busybox for the other commands of a
// shell: cat, sleep, ls...), the certificate its https servers load, and upstream's users.
func Agnhost(binary string) (*oci.Image, error) {
	img := oci.New(AgnhostImage)
	img.AddFile("/agnhost", binary, 0o755)
	img.AddLink("/agnhost-2", "agnhost")
	for dst, name := range agnhostTools {
		src, err := exec.LookPath(name)
		if err != nil {
			return nil, fmt.Errorf("agnhost image: %s: %w (test/cluster/deps.sh installs it)", name, err)
		}
		if err := img.AddBinary(dst, src); err != nil {
			return nil, fmt.Errorf("agnhost image: %w", err)
		}
	}
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		return nil, fmt.Errorf("agnhost image: busybox: %w (scripts/deps.sh installs busybox-static)", err)
	}
	if err := img.AddBinary("/usr/bin/busybox", busybox); err != nil {
		return nil, fmt.Errorf("agnhost image: %w", err)
	}
	applets, err := exec.Command(busybox, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("agnhost image: busybox --list: %w", err)
	}
	have := map[string]bool{}
	for _, p := range img.Paths() {
		have[filepath.Base(p)] = true
	}
	for dst := range agnhostTools {
		have[filepath.Base(dst)] = true
	}
	for _, a := range strings.Fields(string(applets)) {
		if !have[a] {
			img.AddLink("/usr/bin/"+a, "busybox")
		}
	}
	// The certificate and key agnhost's porter and netexec load for https.
	src, err := kubernetesSource()
	if err != nil {
		return nil, fmt.Errorf("agnhost image: %w", err)
	}
	for _, f := range []string{"localhost.crt", "localhost.key"} {
		img.AddFile("/"+f, filepath.Join(src, "test/images/agnhost/porter", f), 0o644)
	}
	img.AddData("/etc/passwd", []byte("root:x:0:0:root:/root:/bin/sh\nuser-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh\n"), 0o644)
	img.AddData("/etc/group", []byte("root:x:0:\nuser-defined-in-image:x:1000:\ngroup-defined-in-image:x:50000:user-defined-in-image\n"), 0o644)
	img.AddData("/etc/nsswitch.conf", []byte("hosts: files dns\n"), 0o644)
	img.Add(oci.Entry{Path: "/uploads", Mode: os.ModeDir | 0o755})
	img.Entrypoint = []string{"/agnhost"}
	img.Cmd = []string{"pause"}
	img.Aliases = AgnhostStandIns
	return img, nil
}

// AgnhostStandIns are the other images the [sig-network] e2e tests run, which are not built
// here; the agnhost image answers to their names. The tests run jessie-dnsutils and busybox with
// a shell command of their own (dig, getent, seq, sleep: all in the image), and nginx only as a
// pod that runs (agnhost pause). Without them each such test waits 15 minutes for a pull that
// cannot happen and fails.
var AgnhostStandIns = []string{
	"registry.k8s.io/e2e-test-images/jessie-dnsutils:1.7",
	"registry.k8s.io/e2e-test-images/busybox:1.37.0-1",
	"registry.k8s.io/e2e-test-images/nginx:1.14-4",
}

// kubernetesSource returns the module cache's copy of k8s.io/kubernetes at the version the
// tools module pins (agnhost's certificate lives there).
func kubernetesSource() (string, error) {
	tools, err := moduleFile("test/cluster/tools")
	if err != nil {
		return "", err
	}
	cmd := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "k8s.io/kubernetes")
	cmd.Dir = tools
	cmd.Env = append(os.Environ(), "PATH="+os.Getenv("PATH")+":/usr/local/go/bin")
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go list -m k8s.io/kubernetes in %s: %w", tools, err)
	}
	return strings.TrimSpace(string(out)), nil
}
