package iptables

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"nodeagent/proxier"
)

// recordingExec runs commands for real and keeps every restore input.
type recordingExec struct {
	Exec
	mu       sync.Mutex
	restores []string
}

func (r *recordingExec) Run(ctx context.Context, name string, args []string, stdin []byte, stdout io.Writer) error {
	if strings.HasSuffix(name, "-restore") {
		r.mu.Lock()
		r.restores = append(r.restores, string(stdin))
		r.mu.Unlock()
	}
	return r.Exec.Run(ctx, name, args, stdin, stdout)
}

func (r *recordingExec) last() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.restores) == 0 {
		return ""
	}
	return r.restores[len(r.restores)-1]
}

// labNS is a network namespace for one test, deleted when it ends.
type labNS struct {
	t    *testing.T
	name string
}

func newLabNS(t *testing.T) *labNS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces and iptables")
	}
	for _, tool := range []string{"ip", "iptables", "ip6tables", "iptables-save", "iptables-restore", "socat"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	ns := &labNS{t: t, name: fmt.Sprintf("na-ipt-%d", os.Getpid())}
	if out, err := exec.Command("ip", "netns", "add", ns.name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", ns.name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns.name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", ns.name, err, out)
		}
	})
	return ns
}

func (ns *labNS) try(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns.name}, args...)...).CombinedOutput()
	return string(out), err
}

func (ns *labNS) run(args ...string) string {
	ns.t.Helper()
	out, err := ns.try(args...)
	if err != nil {
		ns.t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return out
}

// wrapper writes an executable that runs cmd inside the namespace, for go-iptables, which takes
// a binary path rather than a command prefix.
func (ns *labNS) wrapper(cmd string) string {
	ns.t.Helper()
	path := filepath.Join(ns.t.TempDir(), cmd)
	script := fmt.Sprintf("#!/bin/sh\nexec ip netns exec %s %s \"$@\"\n", ns.name, cmd)
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		ns.t.Fatal(err)
	}
	return path
}

// saved reads our part of the namespace's rules, as iptables-save shows them.
func (ns *labNS) saved(f proxier.Family) *saved {
	s := newSaved()
	for _, table := range []string{tableFilter, tableNAT} {
		s.parse([]byte(ns.run(binary(f, "-save"), "-t", table)))
	}
	return s
}

// checkSynced asserts that the namespace holds every chain of a full render of st with the
// rendered number of rules, and each jump rule once.
func (ns *labNS) checkSynced(st *proxier.State, f proxier.Family) {
	ns.t.Helper()
	want := wantChains(st, f)
	chains, jumpsOff := drift(want, ns.saved(f))
	if len(chains) > 0 || jumpsOff > 0 {
		ns.t.Errorf("%s: kernel differs from the render: chains %v, jump rules off %d", f, chains, jumpsOff)
	}
	if got := len(ns.saved(f).chains); got != len(want) {
		ns.t.Errorf("%s: kernel has %d NA- chains, want %d", f, got, len(want))
	}
}

// serve starts a TCP server in the namespace that answers "hello <its address>" on addr; it is
// stopped by PID.
func (ns *labNS) serve(addr string, port int) {
	ns.t.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns.name, "socat",
		fmt.Sprintf("TCP-LISTEN:%d,bind=%s,fork,reuseaddr", port, addr), "SYSTEM:echo hello $SOCAT_SOCKADDR")
	if err := cmd.Start(); err != nil {
		ns.t.Fatal(err)
	}
	ns.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
}

// dial connects to addr:port from inside the namespace and returns what it read, or the error.
func (ns *labNS) dial(addr string, port int) (string, error) {
	return ns.try("socat", "-T", "2", "-", fmt.Sprintf("TCP:%s:%d,connect-timeout=2", addr, port))
}

func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s", what, detail)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestKernelSync programs a real kernel inside a lab namespace: a full sync, traffic through a
// cluster IP and a refused connection to a service without endpoints, a partial sync that writes
// only the changed service's chains, repair of a hand-flushed chain by the next full sync, and a
// cleanup that leaves foreign rules alone.
func TestKernelSync(t *testing.T) {
	ns := newLabNS(t)
	ns.run("ip", "link", "set", "lo", "up")
	// The node's LAN port (a veth whose peer stays in the namespace) with a route for the
	// service range to the lab router, as on a real node; endpoints are local addresses.
	ns.run("ip", "link", "add", "ens33", "type", "veth", "peer", "name", "ens33-peer")
	ns.run("ip", "link", "set", "ens33", "up")
	ns.run("ip", "link", "set", "ens33-peer", "up")
	ns.run("ip", "addr", "add", "10.0.0.151/24", "dev", "ens33")
	ns.run("ip", "neigh", "add", "10.0.0.254", "lladdr", "02:00:00:00:00:fe", "dev", "ens33")
	ns.run("ip", "route", "add", "10.96.0.0/12", "via", "10.0.0.254", "dev", "ens33")
	ns.run("ip", "addr", "add", "10.244.1.5/32", "dev", "lo")
	ns.run("ip", "addr", "add", "10.244.1.6/32", "dev", "lo")
	// Foreign rules and chains, which must survive every sync and the cleanup.
	addForeignNAT := func() {
		ns.run("iptables", "-t", "nat", "-N", "FOREIGN")
		ns.run("iptables", "-t", "nat", "-A", "FOREIGN", "-j", "RETURN")
		ns.run("iptables", "-t", "nat", "-A", "PREROUTING", "-j", "FOREIGN")
	}
	addForeignNAT()
	ns.run("iptables", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT")
	ns.run("ip6tables", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT")
	foreign := func() string {
		return ns.run("iptables-save") + ns.run("ip6tables-save")
	}
	ns.serve("10.244.1.5", 8080)
	ns.serve("10.244.1.6", 8080)

	rec := &recordingExec{Exec: CommandExec{Prefix: []string{"ip", "netns", "exec", ns.name}}}
	wrappers := map[proxier.Family]string{proxier.IPv4: ns.wrapper("iptables"), proxier.IPv6: ns.wrapper("ip6tables")}
	p, err := New(Options{
		Exec:  rec,
		Rules: func(f proxier.Family) (Rules, error) { return GoIPTables(f, wrappers[f]) },
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.fams) != 2 {
		t.Fatalf("detected %d families, want 2", len(p.fams))
	}

	web := func(eps ...proxier.Endpoint) *proxier.ServicePort {
		sp := svc("default", "web", "http", v1.ProtocolTCP, "10.96.0.100", 80, eps...)
		sp.NodePort = 30080
		return sp
	}
	empty := svc("default", "empty", "http", v1.ProtocolTCP, "10.96.0.101", 80)
	dns := svc("kube-system", "kube-dns", "dns", v1.ProtocolUDP, "10.96.0.10", 53, ep("10.244.1.2:53"), ep("10.244.2.3:53"))
	dns6 := svc("kube-system", "kube-dns", "dns", v1.ProtocolUDP, "fd00:96::10", 53, ep("[fd00:244:1::2]:53"))
	st := labState(web(ep("10.244.1.5:8080")), empty, dns, dns6)

	ctx := context.Background()
	before := foreign()
	if err := p.Sync(ctx, st, proxier.Changes{Full: true}); err != nil {
		t.Fatal(err)
	}
	ns.checkSynced(st, proxier.IPv4)
	ns.checkSynced(st, proxier.IPv6)
	if chains, jumpsOff := drift(p.fams[0].written, ns.saved(proxier.IPv4)); len(chains) > 0 || jumpsOff > 0 {
		t.Errorf("right after a sync, drift finds %v and %d jump rules off", chains, jumpsOff)
	}

	eventually(t, "cluster IP reaches the endpoint", func() (bool, string) {
		out, err := ns.dial("10.96.0.100", 80)
		return err == nil && strings.Contains(out, "hello"), fmt.Sprintf("%q %v", out, err)
	})
	start := time.Now()
	out, err := ns.dial("10.96.0.101", 80)
	if err == nil || !strings.Contains(out, "refused") {
		t.Errorf("service without endpoints: got %q, %v; want connection refused", out, err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("refusal took %v, want immediate", d)
	}

	// Partial sync: web gets a second endpoint; only web's chains are written.
	st2 := labState(web(ep("10.244.1.5:8080"), ep("10.244.1.6:8080")), empty, dns, dns6)
	n := len(rec.restores)
	if err := p.Sync(ctx, st2, changes("default/web")); err != nil {
		t.Fatal(err)
	}
	if len(rec.restores) != n+1 {
		t.Fatalf("partial sync ran %d restores, want 1 (IPv4 only)", len(rec.restores)-n)
	}
	webName := st2.Services[0].Name
	webChains := []string{"nat/" + serviceChain(svcPrefix, webName), "nat/" + serviceChain(extPrefix, webName),
		"nat/" + endpointChain(webName, ep("10.244.1.5:8080")), "nat/" + endpointChain(webName, ep("10.244.1.6:8080"))}
	for _, c := range p.fams[0].lastWrite {
		if !slices.Contains(webChains, c) {
			t.Errorf("partial sync wrote %s, not one of web's chains", c)
		}
	}
	if len(p.fams[0].lastWrite) != 2 {
		t.Errorf("partial sync wrote %v, want web's SVC and new SEP chain", p.fams[0].lastWrite)
	}
	if lines := strings.Count(rec.last(), "\n"); lines > 10 {
		t.Errorf("partial restore input has %d lines:\n%s", lines, rec.last())
	}
	ns.checkSynced(st2, proxier.IPv4)
	seen := map[string]bool{}
	eventually(t, "both endpoints answer through the cluster IP", func() (bool, string) {
		if out, err := ns.dial("10.96.0.100", 80); err == nil {
			seen[strings.TrimSpace(strings.TrimPrefix(out, "hello"))] = true
		}
		return seen["10.244.1.5"] && seen["10.244.1.6"], fmt.Sprintf("seen %v", seen)
	})

	// A periodic resync with nothing drifted writes nothing.
	if err := p.Sync(ctx, st2, proxier.Changes{Full: true, Periodic: true}); err != nil {
		t.Fatal(err)
	}
	if len(p.fams[0].lastWrite) != 0 {
		t.Errorf("a periodic resync without drift wrote %v", p.fams[0].lastWrite)
	}

	// Someone flushes our dispatch chain: the next periodic resync finds it and repairs it.
	ns.run("iptables", "-t", "nat", "-F", servicesChain)
	if chains, _ := drift(p.fams[0].written, ns.saved(proxier.IPv4)); !slices.Equal(chains, []string{"nat/" + servicesChain}) {
		t.Errorf("drift after flushing %s: %v", servicesChain, chains)
	}
	if _, err := ns.dial("10.96.0.100", 80); err == nil {
		t.Error("cluster IP still answers with NA-SERVICES flushed")
	}
	if err := p.Sync(ctx, st2, proxier.Changes{Full: true, Periodic: true}); err != nil {
		t.Fatal(err)
	}
	ns.checkSynced(st2, proxier.IPv4)
	eventually(t, "cluster IP answers after repair", func() (bool, string) {
		out, err := ns.dial("10.96.0.100", 80)
		return err == nil && strings.Contains(out, "hello"), fmt.Sprintf("%q %v", out, err)
	})

	// Everything flushed (iptables -t nat -F; -X for our chains is refused while referenced):
	// the full sync recreates the jump rules too.
	ns.run("iptables", "-t", "nat", "-F")
	ns.run("iptables", "-t", "nat", "-X", "FOREIGN")
	addForeignNAT()
	if err := p.Sync(ctx, st2, proxier.Changes{Full: true}); err != nil {
		t.Fatal(err)
	}
	ns.checkSynced(st2, proxier.IPv4)

	if err := p.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	after := foreign()
	if strings.Contains(after, chainPrefix) {
		t.Errorf("NA- rules left after cleanup:\n%s", after)
	}
	for _, l := range []string{"-A FOREIGN -j RETURN", "-A PREROUTING -j FOREIGN", "-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT"} {
		if !strings.Contains(after, l) {
			t.Errorf("foreign rule %q lost; before:\n%s\nafter:\n%s", l, before, after)
		}
	}
}

// TestKernelLargeSync syncs enough services that the restore starts with -S (see chooseListAll)
// into a fresh namespace, where the tables do not exist yet, then a partial change, a full resync
// over the existing rules and a cleanup.
func TestKernelLargeSync(t *testing.T) {
	ns := newLabNS(t)
	rec := &recordingExec{Exec: CommandExec{Prefix: []string{"ip", "netns", "exec", ns.name}}}
	wrapper := ns.wrapper("iptables")
	p, err := New(Options{
		Families: []proxier.Family{proxier.IPv4},
		Exec:     rec,
		Rules:    func(f proxier.Family) (Rules, error) { return GoIPTables(f, wrapper) },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	st := scaleState(300, 10)
	if err := p.Sync(ctx, st, proxier.Changes{Full: true}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(rec.last(), "*nat\n-S\n") {
		t.Fatal("first sync of 300 services does not list the nat table")
	}
	ns.checkSynced(st, proxier.IPv4)

	sp := st.Services[3]
	st.Services[3] = withEndpoints(sp, append(sp.AllEndpoints[2:], scaleEndpoint(9000))...)
	if err := p.Sync(ctx, st, changes(sp.Name.NamespacedName.String())); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(rec.last(), "\n-S\n") {
		t.Errorf("partial sync lists the table")
	}
	ns.checkSynced(st, proxier.IPv4)

	// A full resync over the existing table, with one service gone.
	st.Services = st.Services[1:]
	if err := p.Sync(ctx, st, proxier.Changes{Full: true}); err != nil {
		t.Fatal(err)
	}
	ns.checkSynced(st, proxier.IPv4)

	if err := p.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if out := ns.run("iptables-save"); strings.Contains(out, chainPrefix) {
		t.Errorf("NA- rules left after cleanup")
	}
}

// TestKernelScaleTiming times a first sync and single-endpoint partial syncs of
// NA_IPT_SCALE services x 10 endpoints in a lab namespace, the way bench does but without the
// tracker and conntrack, to tell the proxier's share of bench's numbers. Skipped unless set:
//
//	NA_IPT_SCALE=5000 go test -run TestKernelScaleTiming -v ./proxier/iptables/
func TestKernelScaleTiming(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("NA_IPT_SCALE"))
	if n < 2 {
		t.Skip("NA_IPT_SCALE not set")
	}
	ns := newLabNS(t)
	rec := &recordingExec{Exec: CommandExec{Prefix: []string{"ip", "netns", "exec", ns.name}}}
	p, err := New(Options{
		Families: []proxier.Family{proxier.IPv4},
		Exec:     rec,
		Rules:    func(f proxier.Family) (Rules, error) { return GoIPTables(f, ns.wrapper("iptables")) },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	st := scaleState(n, 10)
	start := time.Now()
	if err := p.Sync(ctx, st, proxier.Changes{Full: true}); err != nil {
		t.Fatal(err)
	}
	t.Logf("first sync of %d services: %v", n, time.Since(start))
	var lat []time.Duration
	for i := range 50 {
		k := 1 + i*7919%(n-1)
		sp := st.Services[k]
		eps := slices.Clone(sp.AllEndpoints)
		eps[i%len(eps)] = scaleEndpoint(n*10 + i)
		st.Services[k] = withEndpoints(sp, eps...)
		start := time.Now()
		if err := p.Sync(ctx, st, changes(sp.Name.NamespacedName.String())); err != nil {
			t.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	t.Logf("endpoint change: p50 %v, p99 %v; last restore input:\n%s", lat[len(lat)/2], lat[len(lat)*99/100], rec.last())
	start = time.Now()
	if err := p.Sync(ctx, st, proxier.Changes{Full: true}); err != nil {
		t.Fatal(err)
	}
	t.Logf("full resync: %v", time.Since(start))
	ns.checkSynced(st, proxier.IPv4)
}
