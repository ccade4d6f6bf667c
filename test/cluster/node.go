package cluster

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	lab "nodeagent/test/netns"
)

// The kernel settings kubelet insists on (protectKernelDefaults: it refuses to start unless they
// hold, and without it would write them host-wide). Each node's mount namespace sees files with
// these values bind-mounted over the /proc/sys entries; the host's stay as they are.
var kubeletSysctls = map[string]string{
	"vm/overcommit_memory":      "1",
	"vm/panic_on_oom":           "0",
	"kernel/panic":              "10",
	"kernel/panic_on_oops":      "1",
	"kernel/keys/root_maxkeys":  "1000000",
	"kernel/keys/root_maxbytes": "25000000",
}

// PauseImage is the sandbox image containerd's CRI plugin runs and the e2e suite expects.
const PauseImage = "registry.k8s.io/pause:3.10.1"

// Node is one Kubernetes node of a cluster: a lab node namespace with its own mount namespace
// (held by a sleeping process), containerd and kubelet, all in cgroup CgroupPath.
type Node struct {
	*lab.Node
	// Dir holds the node's configuration, logs, and what it sees as /var/lib and /var/log.
	Dir string
	// CgroupPath is kubelet's cgroupRoot, the same path in every hierarchy.
	CgroupPath string

	c          *Cluster
	cgroups    []string // directories created for CgroupPath, parents first
	holder     *proc
	containerd *proc
	kubelet    *proc
}

// setupScript is the shell the holder runs inside the node's network namespace (ip netns exec gives
// it a mount namespace of its own, a slave of the host's): cgroups, a private /run (containerd
// pins pod network namespaces and shim sockets there, kubelet its sockets), /var/lib and /var/log
// of the node's own (kubelet hard-codes /var/lib/kubelet/device-plugins and /var/log/pods), the
// kernel settings kubelet checks. Then it sleeps, keeping the namespace alive.
func (n *Node) setupScript(hs []hierarchy) string {
	var b strings.Builder
	b.WriteString("set -e\n")
	b.WriteString(mountScript(hs))
	b.WriteString(joinScript(hs, n.CgroupPath))
	b.WriteString("mount -t tmpfs -o mode=755 tmpfs /run\n")
	fmt.Fprintf(&b, "mount --bind %s /var/lib\n", shellQuote(filepath.Join(n.Dir, "var-lib")))
	fmt.Fprintf(&b, "mount --bind %s /var/log\n", shellQuote(filepath.Join(n.Dir, "var-log")))
	for _, key := range sortedKeys(kubeletSysctls) {
		fmt.Fprintf(&b, "mount --bind %s /proc/sys/%s\n", shellQuote(filepath.Join(n.Dir, "sysctl", strings.ReplaceAll(key, "/", "."))), key)
	}
	b.WriteString("echo ready\nexec sleep infinity\n")
	return b.String()
}

// nsenter returns argv that runs argv in the node's network and mount namespaces, inside the
// node's cgroup.
func (n *Node) nsenter(hs []hierarchy, argv ...string) []string {
	script := joinScript(hs, n.CgroupPath) + `exec "$@"`
	return append([]string{"nsenter", "-t", strconv.Itoa(n.holder.pid()), "-m", "-n", "--", "sh", "-c", script, "sh"}, argv...)
}

// Exec runs argv inside the node (its network and mount namespaces) and returns the output.
func (n *Node) Exec(ctx context.Context, argv ...string) (string, error) {
	full := append([]string{"nsenter", "-t", strconv.Itoa(n.holder.pid()), "-m", "-n", "--"}, argv...)
	out, err := exec.CommandContext(ctx, full[0], full[1:]...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s on %s: %w: %s", strings.Join(argv, " "), n.Name, err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// writeConfig writes the node's containerd, CNI and kubelet configuration.
func (n *Node) writeConfig() error {
	for _, d := range []string{"var-lib", "var-log", "sysctl", "etc/cni", "volume-plugins"} {
		if err := os.MkdirAll(filepath.Join(n.Dir, d), 0o755); err != nil {
			return err
		}
	}
	for key, v := range kubeletSysctls {
		if err := os.WriteFile(filepath.Join(n.Dir, "sysctl", strings.ReplaceAll(key, "/", ".")), []byte(v+"\n"), 0o644); err != nil {
			return err
		}
	}
	containerd := fmt.Sprintf(`version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins."io.containerd.internal.v1.opt"]
  path = "/var/lib/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  # Root here lacks CAP_SYS_RESOURCE: runc cannot give a sandbox a negative oom_score_adj.
  restrict_oom_score_adj = true
  disable_tcp_service = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %q
    max_conf_num = 1
`, PauseImage, filepath.Join(n.Dir, "etc/cni"))
	cni := fmt.Sprintf(`{
  "cniVersion": "0.4.0",
  "name": "cluster",
  "plugins": [
    {
      "type": "bridge",
      "bridge": %q,
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": %q, "gateway": %q}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`, lab.PodBridge, n.PodCIDR.String(), n.PodCIDR.Addr().Next().String())
	kubelet := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: %s
cgroupsPerQOS: true
enforceNodeAllocatable: [pods]
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
protectKernelDefaults: true
oomScoreAdj: 0
address: %s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
clusterDomain: cluster.local
clusterDNS: [%s]
resolvConf: %s
volumePluginDir: %s
failSwapOn: false
serializeImagePulls: false
shutdownGracePeriod: 0s
imageMinimumGCAge: 24h
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 50Mi
  nodefs.available: 1%%
  imagefs.available: 1%%
  nodefs.inodesFree: 1%%
podPidsLimit: -1
maxPods: 110
`, n.CgroupPath, n.IP, DNSServiceIP, filepath.Join(n.Dir, "etc/resolv.conf"), filepath.Join(n.Dir, "volume-plugins"))
	// Pods with dnsPolicy Default (CoreDNS) get this resolver; the router answers no DNS, and
	// nothing leaves the lab.
	resolv := "nameserver " + lab.RouterAddr.String() + "\n"
	for name, data := range map[string]string{
		"etc/containerd.toml":         containerd,
		"etc/cni/10-cluster.conflist": cni,
		"etc/kubelet.yaml":            kubelet,
		"etc/resolv.conf":             resolv,
	} {
		if err := os.WriteFile(filepath.Join(n.Dir, name), []byte(data), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// start brings the node's holder and containerd up and imports the images; kubelet starts in
// startKubelet, once every node has its images.
func (n *Node) start(ctx context.Context, hs []hierarchy, images []string) error {
	if err := n.writeConfig(); err != nil {
		return fmt.Errorf("%s: config: %w", n.Name, err)
	}
	var err error
	if n.cgroups, err = createCgroup(hs, n.CgroupPath); err != nil {
		return fmt.Errorf("%s: %w", n.Name, err)
	}
	n.holder, err = n.c.startProc("holder", filepath.Join(n.Dir, "holder.log"),
		"ip", "netns", "exec", n.NS, "sh", "-c", n.setupScript(hs))
	if err != nil {
		return err
	}
	if err := waitFor(ctx, 30*time.Second, func() (bool, error) {
		if n.holder.exited() {
			return false, fmt.Errorf("node setup exited: %v\n%s", n.holder.err, n.holder.tail(20))
		}
		b, _ := os.ReadFile(n.holder.logPath)
		return strings.Contains(string(b), "ready"), nil
	}); err != nil {
		return fmt.Errorf("%s: %w", n.Name, err)
	}
	n.containerd, err = n.c.startProc("containerd", filepath.Join(n.Dir, "containerd.log"),
		n.nsenter(hs, "containerd", "--config", filepath.Join(n.Dir, "etc/containerd.toml"), "--log-level", "warn")...)
	if err != nil {
		return err
	}
	if err := waitFor(ctx, time.Minute, func() (bool, error) {
		if n.containerd.exited() {
			return false, fmt.Errorf("containerd exited: %v\n%s", n.containerd.err, n.containerd.tail(20))
		}
		_, err := n.Exec(ctx, "ctr", "--address", "/run/containerd/containerd.sock", "version")
		return err == nil, nil
	}); err != nil {
		return fmt.Errorf("%s: %w", n.Name, err)
	}
	for _, img := range images {
		if _, err := n.Exec(ctx, "ctr", "--address", "/run/containerd/containerd.sock", "-n", "k8s.io", "images", "import", img); err != nil {
			return fmt.Errorf("%s: import %s: %w", n.Name, filepath.Base(img), err)
		}
	}
	return nil
}

// startKubelet starts kubelet, which registers the node.
func (n *Node) startKubelet(hs []hierarchy) error {
	var err error
	n.kubelet, err = n.c.startProc("kubelet", filepath.Join(n.Dir, "kubelet.log"), n.nsenter(hs,
		filepath.Join(n.c.BinDir, "kubelet"),
		"--config="+filepath.Join(n.Dir, "etc/kubelet.yaml"),
		"--kubeconfig="+n.c.Kubeconfig,
		"--hostname-override="+n.Name,
		"--node-ip="+n.IP.String(),
		"--v=1",
	)...)
	return err
}

// stop ends kubelet and containerd by PID, then every process left in the node's cgroup (the
// shims, the containers, the holder, whose end releases the mount namespace and every mount in
// it), and removes the cgroups.
func (n *Node) stop() error {
	var errs []error
	errs = append(errs, n.kubelet.stop(10*time.Second))
	errs = append(errs, n.containerd.stop(10*time.Second))
	if len(n.cgroups) > 0 {
		errs = append(errs, killCgroups(n.cgroups, 30*time.Second))
	}
	errs = append(errs, n.holder.stop(5*time.Second))
	if len(n.cgroups) > 0 {
		errs = append(errs, removeCgroups(n.cgroups, 30*time.Second))
	}
	return errors.Join(errs...)
}

// logTails returns the ends of the node's logs, for a failed test.
func (n *Node) logTails(lines int) string {
	var b strings.Builder
	for _, p := range []*proc{n.holder, n.containerd, n.kubelet} {
		if p != nil {
			b.WriteString(p.tail(lines))
			b.WriteString("\n")
		}
	}
	return b.String()
}

// waitFor polls cond every 200 ms until it holds, fails, or timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, cond func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, lab.Scaled(timeout))
	defer cancel()
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not within %v: %w", lab.Scaled(timeout), ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// shellQuote quotes s for sh.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func sortedKeys(m map[string]string) []string { return slices.Sorted(maps.Keys(m)) }
