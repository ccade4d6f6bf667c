// Package lab builds the tutorial network of DESIGN.md ("The lab") out of network namespaces and
// runs nodeagent in it: a LAN bridge, three nodes with a cni0 bridge each, an external client, a
// router with a second client network behind it, and pods whose backends run inside this test
// process and answer the way the tutorial's demoapp does.
//
// Every namespace a lab creates carries the lab's unique prefix ("nal" + pid + sequence) and is
// deleted when the test ends, also when it fails, panics or the process is interrupted. Nothing here
// changes the network namespace the tests run in: kernel commands run as `ip netns exec NS ...` or
// `ip -n NS ...`, and sockets are created by a goroutine locked to an OS thread that enters the
// namespace only for the socket call.
//
// Address plan (IPv4 / IPv6):
//
//	LAN                 10.0.0.0/24            fd00:10::/64
//	client              10.0.0.1               fd00:10::1
//	node01..node03      10.0.0.151..153        fd00:10::151..153   (interface ens33)
//	router              10.0.0.254             fd00:10::254
//	client2 (behind)    203.0.113.10/24, default route via the router's 203.0.113.1
//	pods on nodeN       10.244.N.0/24          fd00:244:N::/64     (bridge cni0, .1 / ::1)
//
// Running (as root; without root every test skips):
//
//	go test ./test/netns/                            # lab checks and the scenario suite, every mode
//	go test ./test/netns/ -run 'TestScenarios/nftables' -v
//	NODEAGENT_BIN=bin/nodeagent go test ./test/netns/ # use a built binary instead of building one
//	NODEAGENT_TIMEOUT_SCALE=10 go test ./test/netns/ # stretch every deadline (emulated VMs)
//
// Scenarios run three at a time unless -test.parallel says otherwise. A killed run's namespaces
// are removed by the next run (they carry the dead process's pid); agents die with the test
// process (Pdeathsig).
package lab

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Addresses of the lab's fixed hosts.
var (
	// ClientAddr is the external client on the LAN.
	ClientAddr = netip.MustParseAddr("10.0.0.1")
	// ClientAddr6 is the external client's IPv6 address.
	ClientAddr6 = netip.MustParseAddr("fd00:10::1")
	// RouterAddr is the router's LAN address, the nodes' default gateway.
	RouterAddr = netip.MustParseAddr("10.0.0.254")
	// RouterAddr6 is the router's IPv6 LAN address.
	RouterAddr6 = netip.MustParseAddr("fd00:10::254")
	// Client2Addr is the client on the network behind the router.
	Client2Addr = netip.MustParseAddr("203.0.113.10")
	// ExternalIP is the seed's externalIP, added by hand to a node's ens33 (AddExternalIP).
	ExternalIP = netip.MustParseAddr("10.0.0.200")
	// ClusterCIDR is the pod network, as passed to --cluster-cidr.
	ClusterCIDR = netip.MustParsePrefix("10.244.0.0/16")
)

const (
	// NodeInterface is the name of each node's LAN interface, as in the tutorial.
	NodeInterface = "ens33"
	// PodBridge is the name of each node's pod bridge.
	PodBridge = "cni0"
	// nsPrefix starts every namespace name a lab creates; reapStale relies on it.
	nsPrefix = "nal"
)

// Node is one node namespace of a lab.
type Node struct {
	// Name is the Kubernetes node name (node01...), passed as --hostname-override.
	Name string
	// NS is the network namespace's name.
	NS string
	// Index is N in node0N, 10.0.0.15N and 10.244.N.0/24.
	Index int
	// IP and IP6 are the node's addresses on ens33.
	IP, IP6 netip.Addr
	// PodCIDR and PodCIDR6 are the node's pod networks behind cni0.
	PodCIDR, PodCIDR6 netip.Prefix
	// Manifests is the node's own manifests directory, passed as --manifests.
	Manifests string

	lab     *Lab
	podVeth int
}

// Lab is one instance of the lab network. Create it with New; it removes itself when the test
// ends.
type Lab struct {
	// ID is the unique prefix of every namespace of this lab.
	ID string
	// Mode is the proxy mode agents are started with unless the arguments name one.
	Mode string
	// LAN, Client, Router and Client2 are namespace names.
	LAN, Client, Router, Client2 string
	// Nodes are node01..node0N in order.
	Nodes []*Node
	// Dir is the lab's scratch directory (manifests, agent logs).
	Dir string

	t          testing.TB
	mu         sync.Mutex
	namespaces []string
	pods       map[string]*Pod
	agents     []*Agent
	closed     bool
	closeOnce  sync.Once
}

// Options shape a lab. The zero value is the full three-node lab in iptables mode.
type Options struct {
	// Nodes is how many nodes to build (1..9; default 3).
	Nodes int
	// Mode is the default proxy mode for StartAgent (default "iptables").
	Mode string
}

var (
	labSeq atomic.Int64
	// live holds every lab not yet torn down, for the signal handler and TestMain.
	liveMu sync.Mutex
	live   = map[*Lab]struct{}{}
)

// RequireRoot skips the test with a reason when it cannot create network namespaces.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the lab creates network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2's ip command")
	}
}

// New builds a lab and registers its removal with t.Cleanup.
func New(t testing.TB, opts Options) *Lab {
	t.Helper()
	RequireRoot(t)
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	if opts.Nodes < 1 || opts.Nodes > 9 {
		t.Fatalf("lab: %d nodes; 1..9 supported", opts.Nodes)
	}
	if opts.Mode == "" {
		opts.Mode = "iptables"
	}
	id := fmt.Sprintf("%s%s-%s", nsPrefix, strconv.FormatInt(int64(os.Getpid()), 36), strconv.FormatInt(labSeq.Add(1), 36))
	l := &Lab{
		ID:      id,
		Mode:    opts.Mode,
		LAN:     id + "-lan",
		Client:  id + "-client",
		Router:  id + "-router",
		Client2: id + "-client2",
		Dir:     t.TempDir(),
		t:       t,
		pods:    map[string]*Pod{},
	}
	liveMu.Lock()
	live[l] = struct{}{}
	liveMu.Unlock()
	t.Cleanup(l.Close)
	start := time.Now()
	if err := l.build(opts.Nodes); err != nil {
		t.Fatalf("lab: build: %v", err)
	}
	t.Logf("lab %s built in %v", l.ID, time.Since(start).Round(time.Millisecond))
	return l
}

// Node returns node0N.
func (l *Lab) Node(n int) *Node {
	if n < 1 || n > len(l.Nodes) {
		l.t.Fatalf("lab: no node%02d", n)
	}
	return l.Nodes[n-1]
}

func (l *Lab) build(nodes int) error {
	names := []string{l.LAN, l.Client, l.Router, l.Client2}
	for i := 1; i <= nodes; i++ {
		n := &Node{
			Name:     fmt.Sprintf("node%02d", i),
			NS:       fmt.Sprintf("%s-node%02d", l.ID, i),
			Index:    i,
			IP:       netip.MustParseAddr(fmt.Sprintf("10.0.0.%d", 150+i)),
			IP6:      netip.MustParseAddr(fmt.Sprintf("fd00:10::%d", 150+i)),
			PodCIDR:  netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", i)),
			PodCIDR6: netip.MustParsePrefix(fmt.Sprintf("fd00:244:%d::/64", i)),
			lab:      l,
		}
		n.Manifests = filepath.Join(l.Dir, n.Name, "manifests")
		if err := os.MkdirAll(n.Manifests, 0o755); err != nil {
			return err
		}
		l.Nodes = append(l.Nodes, n)
		names = append(names, n.NS)
	}
	if err := l.addNamespaces(names...); err != nil {
		return err
	}

	// Sysctls first, so that interfaces created afterwards inherit "default" (no DAD).
	noDAD := []string{"net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"}
	forward := []string{
		"net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
		"net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
		"net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf.default.send_redirects=0",
	}
	// The LAN is a plain switch: bridged frames skip its (empty) netfilter hooks.
	lanSys := append(clone(noDAD), "net.bridge.bridge-nf-call-iptables=0", "net.bridge.bridge-nf-call-ip6tables=0", "net.bridge.bridge-nf-call-arptables=0")
	// Nodes are Kubernetes nodes: bridged pod traffic passes the node's netfilter hooks, as
	// br_netfilter arranges on a real node, so that replies between pods on one node are un-NATed.
	nodeSys := append(clone(noDAD), forward...)
	nodeSys = append(nodeSys, "net.bridge.bridge-nf-call-iptables=1", "net.bridge.bridge-nf-call-ip6tables=1")
	jobs := []func() error{
		func() error { return sysctl(l.LAN, lanSys...) },
		func() error { return sysctl(l.Client, noDAD...) },
		func() error { return sysctl(l.Router, append(clone(noDAD), forward...)...) },
		func() error { return sysctl(l.Client2, noDAD...) },
	}
	for _, n := range l.Nodes {
		jobs = append(jobs, func() error { return sysctl(n.NS, nodeSys...) })
	}
	if err := parallel(jobs...); err != nil {
		return err
	}

	// The LAN bridge and every veth into it; each peer is created directly in its namespace.
	lan := []string{
		"link set lo up",
		"link add br0 type bridge forward_delay 0 mcast_snooping 0",
		"link set br0 up",
		"link add client type veth peer name eth0 netns " + l.Client,
		"link set client master br0 up",
		"link add router type veth peer name eth0 netns " + l.Router,
		"link set router master br0 up",
	}
	for _, n := range l.Nodes {
		lan = append(lan,
			fmt.Sprintf("link add %s type veth peer name %s netns %s", n.Name, NodeInterface, n.NS),
			fmt.Sprintf("link set %s master br0 up", n.Name))
	}
	if err := ipBatch(l.LAN, lan...); err != nil {
		return err
	}
	// The router's second network: a veth pair between router and client2.
	if err := ipBatch(l.Router,
		"link set lo up",
		"link set eth0 up",
		"addr add 10.0.0.254/24 dev eth0",
		"addr add fd00:10::254/64 dev eth0 nodad",
		"link add eth1 type veth peer name eth0 netns "+l.Client2,
		"link set eth1 up",
		"addr add 203.0.113.1/24 dev eth1",
	); err != nil {
		return err
	}

	jobs = []func() error{
		func() error {
			return ipBatch(l.Client,
				"link set lo up",
				"link set eth0 up",
				"addr add 10.0.0.1/24 dev eth0",
				"addr add fd00:10::1/64 dev eth0 nodad")
		},
		func() error {
			return ipBatch(l.Client2,
				"link set lo up",
				"link set eth0 up",
				"addr add 203.0.113.10/24 dev eth0",
				"route add default via 203.0.113.1")
		},
	}
	for _, n := range l.Nodes {
		cmds := []string{
			"link set lo up",
			"link set " + NodeInterface + " up",
			fmt.Sprintf("addr add %s/24 dev %s", n.IP, NodeInterface),
			fmt.Sprintf("addr add %s/64 dev %s nodad", n.IP6, NodeInterface),
			"link add " + PodBridge + " type bridge forward_delay 0 mcast_snooping 0",
			"link set " + PodBridge + " up",
			fmt.Sprintf("addr add %s/24 dev %s", n.PodCIDR.Addr().Next(), PodBridge),
			fmt.Sprintf("addr add %s/64 dev %s nodad", n.PodCIDR6.Addr().Next(), PodBridge),
			"route add default via " + RouterAddr.String(),
			"route add default via " + RouterAddr6.String(),
		}
		for _, o := range l.Nodes {
			if o == n {
				continue
			}
			cmds = append(cmds,
				fmt.Sprintf("route add %s via %s", o.PodCIDR, o.IP),
				fmt.Sprintf("route add %s via %s", o.PodCIDR6, o.IP6))
		}
		jobs = append(jobs, func() error { return ipBatch(n.NS, cmds...) })
	}
	return parallel(jobs...)
}

// addNamespaces creates namespaces with one ip process and records them for removal.
func (l *Lab) addNamespaces(names ...string) error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return fmt.Errorf("lab %s is closed", l.ID)
	}
	// Recorded before creation: a half-done batch is still cleaned up.
	l.namespaces = append(l.namespaces, names...)
	l.mu.Unlock()
	var cmds []string
	for _, n := range names {
		cmds = append(cmds, "netns add "+n)
	}
	return ipBatch("", cmds...)
}

// Close stops the lab's agents and backends and deletes its namespaces. It is idempotent and is
// registered with t.Cleanup by New. If the test failed, the agents' log tails are logged first.
func (l *Lab) Close() { l.teardown(l.t) }

// teardownAll removes every lab still alive; for signal handlers and the end of TestMain.
func teardownAll() {
	liveMu.Lock()
	labs := make([]*Lab, 0, len(live))
	for l := range live {
		labs = append(labs, l)
	}
	liveMu.Unlock()
	for _, l := range labs {
		l.teardown(nil)
	}
}

// teardown does Close's work; t is nil when the lab's test may already have finished (signal
// handler, end of TestMain), and then problems go to stderr.
func (l *Lab) teardown(t testing.TB) {
	l.closeOnce.Do(func() {
		l.mu.Lock()
		l.closed = true
		agents, pods, names := l.agents, l.pods, l.namespaces
		l.mu.Unlock()
		for _, a := range agents {
			a.stop(syscall.SIGKILL, 0)
		}
		if t != nil && t.Failed() {
			for _, a := range agents {
				t.Logf("agent on %s (%s), log tail:\n%s", a.Node.Name, a.LogPath, a.LogTail(40))
			}
		}
		for _, p := range pods {
			p.close()
		}
		if err := deleteNamespaces(names...); err != nil {
			if t != nil {
				t.Errorf("lab %s: teardown: %v", l.ID, err)
			} else {
				fmt.Fprintf(os.Stderr, "lab %s: teardown: %v\n", l.ID, err)
			}
		}
		liveMu.Lock()
		delete(live, l)
		liveMu.Unlock()
	})
}

func deleteNamespaces(names ...string) error {
	if len(names) == 0 {
		return nil
	}
	var cmds []string
	for _, n := range names {
		if _, err := os.Stat(filepath.Join("/run/netns", n)); err == nil {
			cmds = append(cmds, "netns del "+n)
		}
	}
	if len(cmds) == 0 {
		return nil
	}
	out, err := runIP(true, "", cmds...)
	if err != nil {
		return fmt.Errorf("delete namespaces: %w: %s", err, out)
	}
	return nil
}

// staleName matches namespaces made by a lab of process PID (base 36): nal<pid>-<seq>-<role>.
var staleName = regexp.MustCompile(`^` + nsPrefix + `([0-9a-z]{1,7})-([0-9a-z]+)-(lan|client|client2|router|node0[1-9]|pod-[a-z0-9.-]+)$`)

// reapStale deletes namespaces left by lab processes that no longer run (a SIGKILLed test run).
func reapStale() {
	ents, err := os.ReadDir("/run/netns")
	if err != nil {
		return
	}
	var dead []string
	for _, e := range ents {
		m := staleName.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		pid, err := strconv.ParseInt(m[1], 36, 64)
		if err != nil || int(pid) == os.Getpid() {
			continue
		}
		if err := syscall.Kill(int(pid), 0); err == syscall.ESRCH {
			dead = append(dead, e.Name())
		}
	}
	if len(dead) > 0 {
		fmt.Fprintf(os.Stderr, "lab: removing %d namespaces left by finished test runs\n", len(dead))
		_ = deleteNamespaces(dead...)
	}
}

// ipBatch runs ip commands in namespace ns ("" for namespace management commands, which act on
// /run/netns and never on the current namespace's network) with one ip process.
func ipBatch(ns string, cmds ...string) error {
	if ns == "" {
		for _, c := range cmds {
			if !strings.HasPrefix(c, "netns ") {
				return fmt.Errorf("ip batch without a namespace may only manage namespaces, not %q", c)
			}
		}
	}
	if out, err := runIP(false, ns, cmds...); err != nil {
		where := ns
		if where == "" {
			where = "netns"
		}
		return fmt.Errorf("ip -batch in %s: %w: %s", where, err, strings.TrimSpace(string(out)))
	}
	return nil
}

func runIP(force bool, ns string, cmds ...string) ([]byte, error) {
	args := []string{}
	if ns != "" {
		args = append(args, "-n", ns)
	}
	if force {
		args = append(args, "-force")
	}
	args = append(args, "-batch", "-")
	cmd := exec.Command("ip", args...)
	cmd.Stdin = strings.NewReader(strings.Join(cmds, "\n") + "\n")
	return cmd.CombinedOutput()
}

// Exec runs a command inside namespace ns (`ip netns exec ns name args...`) and returns its
// combined output.
func Exec(ns, name string, args ...string) (string, error) {
	if err := checkNotHost(ns); err != nil {
		return "", err
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s in %s: %w: %s", name, strings.Join(args, " "), ns, err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// MustExec is Exec that fails the test on error.
func (l *Lab) MustExec(ns, name string, args ...string) string {
	l.t.Helper()
	out, err := Exec(ns, name, args...)
	if err != nil {
		l.t.Fatal(err)
	}
	return out
}

func sysctl(ns string, settings ...string) error {
	_, err := Exec(ns, "sysctl", append([]string{"-q", "-w"}, settings...)...)
	return err
}

// AddExternalIP adds addr to the node's ens33, as the tutorial did by hand for an externalIP.
func (n *Node) AddExternalIP(addr netip.Addr) error {
	bits := 32
	if addr.Is6() {
		bits = 128
	}
	return ipBatch(n.NS, fmt.Sprintf("addr add %s/%d dev %s nodad", addr, bits, NodeInterface))
}

// hostNetns identifies the network namespace the test process started in, recorded before any
// goroutine could have entered a lab namespace.
var hostNetns = func() syscall.Stat_t {
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/self/ns/net", &st); err != nil {
		st.Ino = 0
	}
	return st
}()

// checkNotHost refuses a namespace name that resolves to the test process's own network
// namespace or to init's: the lab must never program the host.
func checkNotHost(ns string) error {
	if ns == "" || strings.Contains(ns, "/") || ns == "." || ns == ".." {
		return fmt.Errorf("refusing namespace %q: not a lab namespace name", ns)
	}
	return checkNotHostPath(filepath.Join("/run/netns", ns))
}

// checkNotHostPath refuses a namespace handle (a /run/netns file or a /proc/PID/ns/net link)
// that is the test process's own network namespace or init's.
func checkNotHostPath(path string) error {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return fmt.Errorf("namespace %s: %w", path, err)
	}
	if hostNetns.Ino == 0 {
		return fmt.Errorf("namespace %s: the host's namespace is unknown, refusing", path)
	}
	if st.Dev == hostNetns.Dev && st.Ino == hostNetns.Ino {
		return fmt.Errorf("refusing namespace %s: it is the test process's own network namespace", path)
	}
	var initNS syscall.Stat_t
	if err := syscall.Stat("/proc/1/ns/net", &initNS); err == nil && st.Dev == initNS.Dev && st.Ino == initNS.Ino {
		return fmt.Errorf("refusing namespace %s: it is init's network namespace", path)
	}
	return nil
}

func clone(s []string) []string { return append([]string(nil), s...) }

// parallel runs jobs concurrently and returns the first error.
func parallel(jobs ...func() error) error {
	errs := make(chan error, len(jobs))
	for _, j := range jobs {
		go func() { errs <- j() }()
	}
	var first error
	for range jobs {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}
