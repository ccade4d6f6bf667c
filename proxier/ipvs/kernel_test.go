package ipvs

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"

	"nodeagent/proxier"
)

// These tests program IPVS for real in a network namespace of their own. The project's
// machines have no IPVS; run them inside vm/run (make test-vm).

func requireIPVSKernel(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	if _, err := os.Stat("/proc/net/ip_vs"); err != nil {
		t.Skip("no IPVS on this kernel (run it in the VM: make test-vm)")
	}
}

// kernelProxier returns a proxier for a fresh namespace (drain checks only during Sync).
func kernelProxier(t *testing.T) (*Proxier, string) {
	t.Helper()
	requireIPVSKernel(t)
	ns := newNS(t)
	p, err := New(Options{NetNSPath: "/run/netns/" + ns, DrainInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p, ns
}

// saved is `ipvsadm -Sn` in ns without the lines matching skip, sorted.
func saved(t *testing.T, ns, skip string) []string {
	t.Helper()
	var out []string
	for _, l := range strings.Split(mustNS(t, ns, "ipvsadm", "-Sn"), "\n") {
		if l != "" && (skip == "" || !strings.Contains(l, skip)) {
			out = append(out, l)
		}
	}
	slices.Sort(out)
	return out
}

// rendered is what Render promises ipvsadm -Sn shows for st, sorted.
func rendered(t *testing.T, p *Proxier, st *proxier.State) []string {
	t.Helper()
	var b strings.Builder
	if err := renderIPVS(&b, p.desired(st)); err != nil {
		t.Fatal(err)
	}
	out := strings.Split(strings.TrimSpace(b.String()), "\n")
	slices.Sort(out)
	return out
}

func sameLines(t *testing.T, what string, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s: ipvsadm -Sn differs from the rendered state\ngot:\n%s\nwant:\n%s", what, strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestKernelSync: a full sync programs exactly what Render shows (virtual servers, addresses on
// the dummy interface, helper tables) next to a foreign virtual server it leaves alone; a change
// to one service examines only that service's virtual servers; a full resync repairs someone's
// `ipvsadm -C`; Cleanup removes ours and nothing else.
func TestKernelSync(t *testing.T) {
	p, ns := kernelProxier(t)
	const foreign = "192.0.2.1:80"
	mustNS(t, ns, "ipvsadm", "-A", "-t", foreign, "-s", "rr")

	st := testState()
	stats := mustSync(t, p, st, proxier.Changes{Full: true})
	want := rendered(t, p, st)
	sameLines(t, "first sync", saved(t, ns, foreign), want)
	total := stats.ServicesAdded
	if total != len(p.desired(st).vs) {
		t.Errorf("first sync added %d virtual servers, want %d", total, len(p.desired(st).vs))
	}
	addrs := mustNS(t, ns, "ip", "-o", "addr", "show", "dev", DummyInterface)
	for _, a := range []string{"10.96.0.10/32", "10.0.0.51/32", "10.0.0.200/32", "fd00:96::30/128", "fd00:10::51/128"} {
		if !strings.Contains(addrs, " "+a+" ") {
			t.Errorf("%s lacks %s:\n%s", DummyInterface, a, addrs)
		}
	}
	if strings.Contains(addrs, "10.0.0.151") {
		t.Errorf("the node address (node ports) must not be bound to %s:\n%s", DummyInterface, addrs)
	}
	for _, fam := range []string{"ip", "ip6"} {
		mustNS(t, ns, "nft", "list", "table", fam, tableName)
	}

	// One endpoint of demoapp (IPv4) leaves: only demoapp's virtual servers are looked at, and
	// the endpoint, which has no connections, is deleted at once.
	st2 := cloneState(st)
	sp := service(st2, "demoapp", proxier.IPv4)
	withEndpoints(sp, sp.AllEndpoints[:2]...)
	stats = mustSync(t, p, st2, changed(nsName("default", "demoapp")))
	if stats.Full || stats.Examined != 4 || stats.DestsDeleted != 2 || stats.ServicesAdded+stats.ServicesDeleted != 0 {
		t.Errorf("partial sync: %+v; want 4 examined (cluster IP and node port, both families), 2 real servers deleted", stats)
	}
	sameLines(t, "after the endpoint change", saved(t, ns, foreign), rendered(t, p, st2))

	// Drift: everything flushed by hand comes back on the next full sync.
	mustNS(t, ns, "ipvsadm", "-C")
	stats = mustSync(t, p, st2, proxier.Changes{Full: true})
	if stats.ServicesAdded != total {
		t.Errorf("resync after ipvsadm -C added %d virtual servers, want %d", stats.ServicesAdded, total)
	}
	sameLines(t, "after the resync", saved(t, ns, foreign), rendered(t, p, st2))
	mustNS(t, ns, "ipvsadm", "-A", "-t", foreign, "-s", "rr")

	// A removed service goes with its addresses.
	st3 := cloneState(st2)
	st3.Services = slices.DeleteFunc(st3.Services, func(sp *proxier.ServicePort) bool { return sp.Name.Name == "sticky" })
	mustSync(t, p, st3, changed(nsName("default", "sticky")))
	sameLines(t, "after removing sticky", saved(t, ns, foreign), rendered(t, p, st3))
	if addrs := mustNS(t, ns, "ip", "-o", "addr", "show", "dev", DummyInterface); strings.Contains(addrs, "10.0.0.200/") {
		t.Errorf("sticky's external IP stays bound after the service left:\n%s", addrs)
	}

	if err := p.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := saved(t, ns, ""); !slices.Equal(got, []string{"-A -t " + foreign + " -s rr"}) {
		t.Errorf("after cleanup ipvsadm -Sn has %q, want only the foreign virtual server", got)
	}
	if out, _ := inNS(ns, "", "ip", "link", "show", DummyInterface); strings.Contains(out, DummyInterface) {
		t.Errorf("%s remains after cleanup", DummyInterface)
	}
	if out := mustNS(t, ns, "nft", "list", "tables"); strings.Contains(out, tableName) {
		t.Errorf("helper tables remain after cleanup:\n%s", out)
	}
}
