// Package cluster runs a real Kubernetes cluster inside the lab of test/netns: a control plane
// (Debian's etcd, kube-apiserver, kube-controller-manager, kube-scheduler) in a namespace of its
// own on the LAN, and three nodes, each a lab node namespace running containerd, runc, the CNI
// bridge plugin and kubelet, whose pods sit behind the node's cni0 and reach the other nodes'
// pods over the lab's routes. nodeagent runs as a DaemonSet from its own image, installed with
// `kubectl apply -k deploy/` as a user would (or kube-proxy, PROXY=kube-proxy, to compare);
// CoreDNS serves cluster DNS. The lab's client sits on the LAN, so NodePort and LoadBalancer
// traffic comes from outside the cluster.
//
//	control plane   10.0.0.10 (namespace <lab>-cp), API server on :6443
//	node01..node03  10.0.0.151..153, pods 10.244.N.0/24
//	services        10.96.0.0/12, cluster DNS 10.96.0.10
//
// Up brings everything up in one call and registers Down, which takes everything down again, also
// when the test fails: processes are stopped by PID, each node's leftovers (containerd's shims
// and the containers) are found through the node's own cgroup, every namespace is deleted. The
// host is not touched: kubelet runs with protectKernelDefaults against bind-mounted /proc/sys
// values, each node has a private /run, /var/lib and /var/log in its own mount namespace, and
// every cgroup lives under /nodeagent-<lab id>. Images come from OCI archives written by package
// oci and imported into each node's containerd; nothing is pulled.
//
// The binaries come from build.sh's cache (test/cluster/build.sh; `make test-cluster` runs it).
package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"nodeagent/test/cluster/oci"
	"nodeagent/test/kube"
	lab "nodeagent/test/netns"
)

// Addresses of the cluster beyond the lab's own.
var (
	// APIServerAddr is the control plane's address on the LAN.
	APIServerAddr = netip.MustParseAddr("10.0.0.10")
	// DNSServiceIP is the cluster IP of kube-dns (CoreDNS).
	DNSServiceIP = netip.MustParseAddr("10.96.0.10")
)

// APIServerPort is the API server's port.
const APIServerPort = 6443

// Images the harness imports into every node.
const (
	NodeagentImage = "nodeagent:dev" // deploy/daemonset.yaml's
	KubeProxyImage = "registry.k8s.io/kube-proxy:v1.34.4"
	CoreDNSImage   = "registry.k8s.io/coredns/coredns:v1.12.1"
	AgnhostImage   = "registry.k8s.io/e2e-test-images/agnhost:2.56" // what the v1.34 e2e suite runs
)

// Proxies Options.Proxy may name.
const (
	ProxyNodeagent = "nodeagent"
	ProxyKube      = "kube-proxy"
)

// Options shape a cluster. The zero value is three nodes with nodeagent.
type Options struct {
	// Proxy is the node proxy: "nodeagent" (default, deploy/ applied with kubectl apply -k) or
	// "kube-proxy" (testdata/kube-proxy.yaml).
	Proxy string
	// Nodes is the number of nodes (1..9, default 3).
	Nodes int
	// BinDir holds the binaries of build.sh; empty asks build.sh for its cache directory, and
	// skips the test, saying so, when they are not built.
	BinDir string
	// Mode is the proxy mode (nftables, iptables); empty keeps the manifests' (nftables).
	Mode string
	// NodeagentImage is an OCI archive of nodeagent's image (make image); empty builds one from
	// this module's ./cmd/nodeagent.
	NodeagentImage string
}

// Cluster is a running cluster.
type Cluster struct {
	// Lab is the network the cluster lives in (LAN, client, router, node namespaces).
	Lab *lab.Lab
	// CP is the control plane's network namespace.
	CP string
	// ControlPlane is etcd and the API server; its clients are admin clients of this process.
	ControlPlane *kube.ControlPlane
	// Kubeconfig is an admin kubeconfig for the API server at APIServerAddr, usable in any
	// namespace of the lab.
	Kubeconfig string
	// Nodes are node01... in order.
	Nodes []*Node
	// BinDir holds the Kubernetes binaries.
	BinDir string
	// Dir holds configuration, logs and images.
	Dir string
	// Proxy is the node proxy running, Mode its mode ("" for the manifests' own).
	Proxy, Mode string

	t          testing.TB
	hs         []hierarchy
	cgroupBase string
	cgroups    []string
	procs      []*proc // controller manager, scheduler
	mu         sync.Mutex
	closing    bool    // Down has begun: nothing new starts
	all        []*proc // every process started, for Down's last pass
	downOnce   sync.Once
	downErr    error
}

var (
	liveMu sync.Mutex
	live   = map[*Cluster]struct{}{}
)

// dirPrefix starts the name of every cluster's directory under os.TempDir.
const dirPrefix = "nodeagent-cluster-"

// Up builds and starts a cluster and registers its Down with t.Cleanup. It skips the test,
// with the reason, when it cannot run here (not root, no containerd, binaries not built).
func Up(t testing.TB, opts Options) *Cluster {
	t.Helper()
	lab.RequireRoot(t)
	for _, tool := range []string{"containerd", "ctr", "runc", "nsenter", "etcd", "socat"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("no %s in PATH (test/cluster/deps.sh and scripts/deps.sh install it)", tool)
		}
	}
	if _, err := os.Stat("/usr/lib/cni/bridge"); err != nil {
		t.Skip("no CNI plugins in /usr/lib/cni (Debian's containernetworking-plugins; test/cluster/deps.sh)")
	}
	if opts.Proxy == "" {
		opts.Proxy = ProxyNodeagent
	}
	if opts.Proxy != ProxyNodeagent && opts.Proxy != ProxyKube {
		t.Fatalf("cluster: proxy %q: nodeagent or kube-proxy", opts.Proxy)
	}
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	if opts.BinDir == "" {
		dir, err := Built()
		if err != nil {
			t.Skipf("cluster binaries not built (%v): run make test-cluster, or test/cluster/build.sh first (about 20 minutes cold)", err)
		}
		opts.BinDir = dir
	}
	start := time.Now()
	c := &Cluster{BinDir: opts.BinDir, Proxy: opts.Proxy, Mode: opts.Mode, t: t}
	host := snapshotHost()
	ctx := t.Context()

	c.Lab = lab.New(t, lab.Options{Nodes: opts.Nodes})
	// Not t.TempDir: a run killed before its cleanup leaves gigabytes of container images here,
	// which the next run's reapStale finds by the lab ID in the name.
	c.Dir = filepath.Join(os.TempDir(), dirPrefix+c.Lab.ID)
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		t.Fatalf("cluster: %v", err)
	}
	liveMu.Lock()
	live[c] = struct{}{}
	liveMu.Unlock()
	// Registered after the lab's cleanup, so it runs before the lab's namespaces go.
	t.Cleanup(func() {
		if t.Failed() {
			c.logTails()
		}
		if err := c.Down(); err != nil {
			t.Errorf("cluster down: %v", err)
		}
		for _, change := range host.changes(snapshotHost()) {
			t.Errorf("cluster: the host changed: %s", change)
		}
	})
	images, err := c.images(ctx, opts)
	if err != nil {
		t.Fatalf("cluster: images: %v", err)
	}
	t.Logf("cluster: images written in %v", time.Since(start).Round(time.Millisecond))
	if err := c.up(ctx, images); err != nil {
		t.Fatalf("cluster: %v", err)
	}
	t.Logf("cluster: %d nodes Ready, %s and CoreDNS running, %v after start", len(c.Nodes), c.Proxy, time.Since(start).Round(time.Millisecond))
	return c
}

// Built returns build.sh's cache directory when it holds every binary a cluster runs.
func Built() (string, error) {
	script, err := moduleFile("test/cluster/build.sh")
	if err != nil {
		return "", err
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command("bash", script, "--check", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubectl", "kube-proxy", "coredns", "agnhost")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s --check: %w: %s", script, err, strings.TrimSpace(stderr.String()))
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	return lines[len(lines)-1], nil
}

// moduleFile returns the path of rel in this module, found from the working directory up.
func moduleFile(rel string) (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && bytes.HasPrefix(b, []byte("module nodeagent\n")) {
			return filepath.Join(dir, rel), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("not inside the nodeagent module")
		}
		dir = parent
	}
}

// images writes the OCI archives every node imports and returns their paths.
func (c *Cluster) images(ctx context.Context, opts Options) ([]string, error) {
	dir := filepath.Join(c.Dir, "images")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	root, err := moduleFile("")
	if err != nil {
		return nil, err
	}
	build := func(out, pkg string) error {
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "PATH="+os.Getenv("PATH")+":/usr/local/go/bin")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %w\n%s", pkg, err, out)
		}
		return nil
	}
	type image struct {
		file string
		make func() (*oci.Image, error)
	}
	var list []image
	pauseBin := filepath.Join(dir, "pause")
	list = append(list, image{"pause.tar", func() (*oci.Image, error) {
		if err := build(pauseBin, "./test/cluster/pause"); err != nil {
			return nil, err
		}
		return oci.Single(PauseImage, pauseBin, "/pause")
	}})
	list = append(list, image{"coredns.tar", func() (*oci.Image, error) {
		return oci.Single(CoreDNSImage, filepath.Join(c.BinDir, "coredns"), "/coredns")
	}})
	list = append(list, image{"agnhost.tar", func() (*oci.Image, error) {
		return Agnhost(filepath.Join(c.BinDir, "agnhost"))
	}})
	var paths []string
	switch {
	case opts.Proxy == ProxyKube:
		list = append(list, image{"kube-proxy.tar", func() (*oci.Image, error) {
			return oci.KubeProxy(KubeProxyImage, filepath.Join(c.BinDir, "kube-proxy"))
		}})
	case opts.NodeagentImage != "":
		paths = append(paths, opts.NodeagentImage)
	default:
		bin := filepath.Join(dir, "nodeagent")
		list = append(list, image{"nodeagent.tar", func() (*oci.Image, error) {
			if err := build(bin, "./cmd/nodeagent"); err != nil {
				return nil, err
			}
			return oci.Nodeagent(NodeagentImage, bin)
		}})
	}
	for _, im := range list {
		img, err := im.make()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", im.file, err)
		}
		p := filepath.Join(dir, im.file)
		if err := img.WriteFile(p); err != nil {
			return nil, err
		}
		paths = append(paths, p)
	}
	return paths, nil
}

func (c *Cluster) up(ctx context.Context, images []string) error {
	t := c.t
	var err error
	if c.hs, err = hierarchies(); err != nil {
		return err
	}
	c.cgroupBase = "/nodeagent-" + c.Lab.ID
	if c.cgroups, err = createCgroup(c.hs, c.cgroupBase); err != nil {
		return err
	}

	// The control plane's namespace, on the LAN, with routes to every node's pods (webhooks and
	// aggregated APIs are reached at pod addresses).
	c.CP = c.Lab.ID + "-cp"
	if out, err := exec.Command("ip", "netns", "add", c.CP).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns add %s: %w: %s", c.CP, err, out)
	}
	cpCmds := []string{
		"link set lo up",
		"link set eth0 up",
		fmt.Sprintf("addr add %s/24 dev eth0", APIServerAddr),
		"route add default via " + lab.RouterAddr.String(),
	}
	for _, n := range c.Lab.Nodes {
		cpCmds = append(cpCmds, fmt.Sprintf("route add %s via %s", n.PodCIDR, n.IP))
	}
	if err := ipBatch(c.Lab.LAN, "link add cp type veth peer name eth0 netns "+c.CP, "link set cp master br0 up"); err != nil {
		return err
	}
	if err := ipBatch(c.CP, cpCmds...); err != nil {
		return err
	}

	start := time.Now()
	if err := os.MkdirAll(filepath.Join(c.Dir, "cp"), 0o755); err != nil {
		return err
	}
	c.ControlPlane, err = kube.Start(ctx, kube.Options{
		NetNS:   c.CP,
		Address: APIServerAddr,
		Port:    APIServerPort,
		BinDir:  c.BinDir,
		Dir:     filepath.Join(c.Dir, "cp"),
		APIServerArgs: []string{
			// Kubelets register and the `kubernetes` Service gets this address as its endpoint.
			"--endpoint-reconciler-type=lease",
			"--allow-privileged=true",
			// kubectl exec/logs: kubelet reports a host name nobody resolves.
			"--kubelet-preferred-address-types=InternalIP",
			// Aggregated APIs at their pods' addresses: this namespace runs no proxy.
			"--enable-aggregator-routing=true",
		},
	})
	if err != nil {
		return err
	}
	c.Kubeconfig = c.ControlPlane.Kubeconfig
	t.Logf("cluster: API server ready in %v", time.Since(start).Round(time.Millisecond))
	if err := c.startControllers(); err != nil {
		return err
	}

	start = time.Now()
	for _, ln := range c.Lab.Nodes {
		c.Nodes = append(c.Nodes, &Node{
			Node:       ln,
			Dir:        filepath.Join(c.Dir, ln.Name),
			CgroupPath: c.cgroupBase + "/" + ln.Name,
			c:          c,
		})
	}
	errs := make(chan error, len(c.Nodes))
	for _, n := range c.Nodes {
		go func() { errs <- n.start(ctx, c.hs, images) }()
	}
	for range c.Nodes {
		if e := <-errs; e != nil && err == nil {
			err = e
		}
	}
	if err != nil {
		return err
	}
	t.Logf("cluster: containerd up and %d images imported on %d nodes in %v", len(images), len(c.Nodes), time.Since(start).Round(time.Millisecond))
	for _, n := range c.Nodes {
		if err := n.startKubelet(c.hs); err != nil {
			return err
		}
	}
	if err := c.waitNodesReady(ctx); err != nil {
		return err
	}
	t.Logf("cluster: %d nodes Ready in %v", len(c.Nodes), time.Since(start).Round(time.Millisecond))

	if err := c.installProxy(ctx); err != nil {
		return err
	}
	coredns, err := moduleFile("test/cluster/testdata/coredns.yaml")
	if err != nil {
		return err
	}
	if _, err := c.Kubectl(ctx, "apply", "-f", coredns); err != nil {
		return err
	}
	if err := c.WaitDaemonSet(ctx, "kube-system", c.Proxy); err != nil {
		return err
	}
	return c.WaitDeployment(ctx, "kube-system", "coredns")
}

// startControllers runs kube-controller-manager and kube-scheduler in the control plane's
// namespace.
func (c *Cluster) startControllers() error {
	k := c.Kubeconfig
	cpDir := c.ControlPlane.Dir
	kcm := []string{"ip", "netns", "exec", c.CP, filepath.Join(c.BinDir, "kube-controller-manager"),
		"--kubeconfig=" + k, "--authentication-kubeconfig=" + k, "--authorization-kubeconfig=" + k,
		"--leader-elect=false",
		"--bind-address=127.0.0.1",
		"--cert-dir=" + filepath.Join(cpDir, "kcm"),
		// kube-root-ca.crt in every namespace, which every projected service-account volume needs.
		"--root-ca-file=" + filepath.Join(cpDir, "ca.crt"),
		"--service-account-private-key-file=" + filepath.Join(cpDir, "sa.key"),
		"--use-service-account-credentials=true",
		"--service-cluster-ip-range=" + kube.ServiceCIDR,
		"--cluster-cidr=" + lab.ClusterCIDR.String(),
		// Its default, /usr/libexec/kubernetes/..., would be created on the host.
		"--flex-volume-plugin-dir=" + filepath.Join(cpDir, "flexvolume"),
		"--v=1",
	}
	sched := []string{"ip", "netns", "exec", c.CP, filepath.Join(c.BinDir, "kube-scheduler"),
		"--kubeconfig=" + k, "--authentication-kubeconfig=" + k, "--authorization-kubeconfig=" + k,
		"--leader-elect=false",
		"--bind-address=127.0.0.1",
		"--v=1",
	}
	for name, argv := range map[string][]string{"kube-controller-manager": kcm, "kube-scheduler": sched} {
		p, err := c.startProc(name, filepath.Join(cpDir, name+".log"), argv...)
		if err != nil {
			return err
		}
		c.procs = append(c.procs, p)
	}
	return nil
}

// startProc starts a process of the cluster unless Down has begun (a signal can take the cluster
// down while Up is still bringing it up); the lock makes a start either finish before Down looks
// at the cluster's processes or not happen.
func (c *Cluster) startProc(name, logPath string, argv ...string) (*proc, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return nil, errors.New("cluster is being taken down")
	}
	p, err := startProc(name, logPath, argv...)
	if err == nil {
		c.all = append(c.all, p)
	}
	return p, err
}

// Kubectl runs kubectl with the admin kubeconfig inside the control plane's namespace and
// returns its standard output.
func (c *Cluster) Kubectl(ctx context.Context, args ...string) (string, error) {
	argv := append([]string{"netns", "exec", c.CP, filepath.Join(c.BinDir, "kubectl"), "--kubeconfig=" + c.Kubeconfig}, args...)
	cmd := exec.CommandContext(ctx, "ip", argv...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// modeLine is the mode line of the proxies' configuration files (deploy/configmap.yaml and
// testdata/kube-proxy.yaml), which Options.Mode replaces.
const modeLine = "    mode: nftables\n"

// withMode returns the manifest in file with the proxy's mode line set to mode.
func withMode(file, mode string) ([]byte, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	if !bytes.Contains(b, []byte(modeLine)) {
		return nil, fmt.Errorf("%s has no line %q to set the mode in", file, strings.TrimSpace(modeLine))
	}
	return bytes.Replace(b, []byte(modeLine), []byte("    mode: "+mode+"\n"), 1), nil
}

// installProxy installs the node proxy the way a user would.
func (c *Cluster) installProxy(ctx context.Context) error {
	if c.Proxy == ProxyKube {
		manifest, err := moduleFile("test/cluster/testdata/kube-proxy.yaml")
		if err != nil {
			return err
		}
		if c.Mode != "" {
			b, err := withMode(manifest, c.Mode)
			if err != nil {
				return err
			}
			manifest = filepath.Join(c.Dir, "kube-proxy.yaml")
			if err := os.WriteFile(manifest, b, 0o644); err != nil {
				return err
			}
		}
		_, err = c.Kubectl(ctx, "apply", "-f", manifest)
		return err
	}
	// deploy/daemonset.yaml: nothing else serves the kubernetes Service's cluster IP, so the
	// agent is told where the API server is.
	if _, err := c.Kubectl(ctx, "-n", "kube-system", "create", "configmap", "nodeagent-apiserver",
		"--from-literal=KUBERNETES_SERVICE_HOST="+APIServerAddr.String(),
		fmt.Sprintf("--from-literal=KUBERNETES_SERVICE_PORT=%d", APIServerPort)); err != nil {
		return err
	}
	deploy, err := moduleFile("deploy")
	if err != nil {
		return err
	}
	if c.Mode != "" {
		// Another mode is a kustomize overlay on deploy/, as a user would write one.
		if deploy, err = c.overlay(deploy); err != nil {
			return err
		}
	}
	_, err = c.Kubectl(ctx, "apply", "-k", deploy)
	return err
}

// overlay writes a kustomization that applies deploy/ with the ConfigMap's mode set to c.Mode
// and returns its directory.
func (c *Cluster) overlay(deploy string) (string, error) {
	cm, err := withMode(filepath.Join(deploy, "configmap.yaml"), c.Mode)
	if err != nil {
		return "", err
	}
	dir := filepath.Join(c.Dir, "overlay")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	// kustomize takes a base outside the overlay only as a relative path.
	base, err := filepath.Rel(dir, deploy)
	if err != nil {
		return "", err
	}
	kustomization := fmt.Sprintf("resources:\n- %s\npatches:\n- path: configmap.yaml\n", base)
	for name, data := range map[string][]byte{"kustomization.yaml": []byte(kustomization), "configmap.yaml": cm} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return "", err
		}
	}
	return dir, nil
}

// waitNodesReady waits until every node has registered and is Ready, and gives each its pod
// CIDR (the lab's, which its cni0 and routes already use; no controller allocates one).
func (c *Cluster) waitNodesReady(ctx context.Context) error {
	client := c.ControlPlane.Client
	var last string
	err := waitFor(ctx, 2*time.Minute, func() (bool, error) {
		for _, n := range c.Nodes {
			if n.kubelet.exited() {
				return false, fmt.Errorf("kubelet on %s exited: %v\n%s", n.Name, n.kubelet.err, n.kubelet.tail(30))
			}
		}
		list, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			last = err.Error()
			return false, nil
		}
		ready := 0
		var states []string
		for _, node := range list.Items {
			for _, cond := range node.Status.Conditions {
				if cond.Type == corev1.NodeReady {
					states = append(states, node.Name+"="+string(cond.Status)+" "+cond.Message)
					if cond.Status == corev1.ConditionTrue {
						ready++
					}
				}
			}
		}
		last = strings.Join(states, "; ")
		return ready == len(c.Nodes), nil
	})
	if err != nil {
		return fmt.Errorf("nodes not Ready (%s): %w", last, err)
	}
	for _, n := range c.Nodes {
		patch := fmt.Sprintf(`{"spec":{"podCIDR":%q,"podCIDRs":[%q]}}`, n.PodCIDR, n.PodCIDR)
		if _, err := client.CoreV1().Nodes().Patch(ctx, n.Name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			return fmt.Errorf("pod CIDR of %s: %w", n.Name, err)
		}
	}
	return nil
}

// WaitDaemonSet waits until the DaemonSet has an up-to-date, ready pod on every node.
func (c *Cluster) WaitDaemonSet(ctx context.Context, namespace, name string) error {
	var last string
	err := waitFor(ctx, 3*time.Minute, func() (bool, error) {
		ds, err := c.ControlPlane.Client.AppsV1().DaemonSets(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			last = err.Error()
			return false, nil
		}
		s := ds.Status
		last = fmt.Sprintf("desired %d, updated %d, ready %d", s.DesiredNumberScheduled, s.UpdatedNumberScheduled, s.NumberReady)
		return s.ObservedGeneration >= ds.Generation && s.DesiredNumberScheduled == int32(len(c.Nodes)) &&
			s.UpdatedNumberScheduled == s.DesiredNumberScheduled && s.NumberReady == s.DesiredNumberScheduled, nil
	})
	if err != nil {
		return fmt.Errorf("DaemonSet %s/%s (%s): %w\n%s", namespace, name, last, err, c.podReport(ctx, namespace))
	}
	return nil
}

// WaitDeployment waits until every replica of the Deployment is updated and available.
func (c *Cluster) WaitDeployment(ctx context.Context, namespace, name string) error {
	var last string
	err := waitFor(ctx, 3*time.Minute, func() (bool, error) {
		d, err := c.ControlPlane.Client.AppsV1().Deployments(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			last = err.Error()
			return false, nil
		}
		last = fmt.Sprintf("replicas %d, updated %d, available %d", d.Status.Replicas, d.Status.UpdatedReplicas, d.Status.AvailableReplicas)
		return deploymentDone(d), nil
	})
	if err != nil {
		return fmt.Errorf("Deployment %s/%s (%s): %w\n%s", namespace, name, last, err, c.podReport(ctx, namespace))
	}
	return nil
}

func deploymentDone(d *appsv1.Deployment) bool {
	want := int32(1)
	if d.Spec.Replicas != nil {
		want = *d.Spec.Replicas
	}
	s := d.Status
	return s.ObservedGeneration >= d.Generation && s.UpdatedReplicas == want && s.AvailableReplicas == want && s.Replicas == want
}

// podReport describes the pods of a namespace, for a failed wait: phase, node, and why a
// container is not ready, with the last lines of its log.
func (c *Cluster) podReport(ctx context.Context, namespace string) string {
	out, err := c.Kubectl(ctx, "-n", namespace, "get", "pods", "-o", "wide")
	if err != nil {
		out = err.Error()
	}
	pods, err := c.ControlPlane.Client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return out
	}
	for _, p := range pods.Items {
		for _, cs := range p.Status.ContainerStatuses {
			if cs.Ready {
				continue
			}
			out += fmt.Sprintf("\n%s/%s: restarts %d, state %+v, last %+v", p.Name, cs.Name, cs.RestartCount, cs.State, cs.LastTerminationState)
			logs, _ := c.Kubectl(ctx, "-n", namespace, "logs", "--tail=15", p.Name, "-c", cs.Name)
			out += "\n" + logs
		}
	}
	return out
}

// logTails logs the ends of every log, for a failed test.
func (c *Cluster) logTails() {
	for _, p := range c.procs {
		c.t.Logf("%s", p.tail(30))
	}
	for _, n := range c.Nodes {
		c.t.Logf("%s", n.logTails(30))
	}
	if c.ControlPlane != nil {
		c.t.Logf("kube-apiserver:\n%s", tailFile(filepath.Join(c.ControlPlane.Dir, "kube-apiserver.log"), 30))
	}
}

// Down stops everything Up started and deletes the control plane's namespace (the lab deletes
// its own). It is idempotent; Up registers it with t.Cleanup.
func (c *Cluster) Down() error {
	c.downOnce.Do(func() {
		c.mu.Lock()
		c.closing = true
		c.mu.Unlock()
		var errs []error
		var wg sync.WaitGroup
		nodeErrs := make([]error, len(c.Nodes))
		for i, n := range c.Nodes {
			if n.holder == nil {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				nodeErrs[i] = n.stop()
			}()
		}
		wg.Wait()
		errs = append(errs, nodeErrs...)
		// The controllers, and anything Up started while Down began.
		for _, p := range c.all {
			errs = append(errs, p.stop(10*time.Second))
		}
		if c.ControlPlane != nil {
			errs = append(errs, c.ControlPlane.Stop())
		}
		if len(c.cgroups) > 0 {
			errs = append(errs, removeCgroups(c.cgroups, 10*time.Second))
		}
		if c.CP != "" {
			if _, err := os.Stat(filepath.Join("/run/netns", c.CP)); err == nil {
				if out, err := exec.Command("ip", "netns", "del", c.CP).CombinedOutput(); err != nil {
					errs = append(errs, fmt.Errorf("ip netns del %s: %w: %s", c.CP, err, out))
				}
			}
		}
		// Only once nothing runs: the overlay snapshots were mounted in the nodes' namespaces.
		if c.Dir != "" && errors.Join(errs...) == nil {
			errs = append(errs, os.RemoveAll(c.Dir))
		}
		liveMu.Lock()
		delete(live, c)
		liveMu.Unlock()
		c.downErr = errors.Join(errs...)
	})
	return c.downErr
}

// ipBatch runs ip commands in network namespace ns.
func ipBatch(ns string, cmds ...string) error {
	cmd := exec.Command("ip", "-n", ns, "-batch", "-")
	cmd.Stdin = strings.NewReader(strings.Join(cmds, "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ip -n %s -batch: %w: %s", ns, err, strings.TrimSpace(string(out)))
	}
	return nil
}
