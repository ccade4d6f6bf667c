package iptables

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"nodeagent/proxier"
)

// wantChains is what the kernel should hold after syncing st: every chain of a full render.
func wantChains(st *proxier.State, f proxier.Family) map[chainID][]string {
	r := newRenderer(st, f, true)
	var rendered []*serviceRules
	for _, sp := range st.ForFamily(f) {
		rendered = append(rendered, r.service(sp))
	}
	out := map[chainID][]string{}
	for _, c := range r.baseChains(rendered) {
		out[c.id] = c.rules
	}
	for _, s := range rendered {
		for _, c := range s.own {
			out[c.id] = c.rules
		}
	}
	return out
}

// checkKernel asserts that k holds exactly our chains for st plus one of each jump rule, next to
// whatever foreign rules it had.
func checkKernel(t *testing.T, k *fakeKernel, st *proxier.State, f proxier.Family) {
	t.Helper()
	got := map[chainID][]string{}
	for _, table := range []string{tableFilter, tableNAT} {
		for c := range k.chains(table) {
			got[chainID{table, c}] = k.rules(table, c)
			if got[chainID{table, c}] == nil {
				got[chainID{table, c}] = []string{}
			}
		}
	}
	want := wantChains(st, f)
	for id, rs := range want {
		if rs == nil {
			want[id] = []string{}
		}
	}
	if d := cmp.Diff(want, got, cmp.AllowUnexported(chainID{})); d != "" {
		t.Errorf("%s kernel chains differ from a full render (-want +got):\n%s", f, d)
	}
	s := newSaved()
	s.parse([]byte(k.save(tableFilter) + k.save(tableNAT)))
	for _, j := range jumps {
		if n := s.jumpCount(j); n != 1 {
			t.Errorf("%s jump %s %s -> %s present %d times, want 1", f, j.table, j.from, j.to, n)
		}
	}
}

func changes(names ...string) proxier.Changes {
	ch := proxier.Changes{Services: map[types.NamespacedName]bool{}}
	for _, n := range names {
		ns, name, _ := strings.Cut(n, "/")
		ch.Services[types.NamespacedName{Namespace: ns, Name: name}] = true
	}
	return ch
}

func lastRestore(k *fakeKernel) string {
	if len(k.restores) == 0 {
		return ""
	}
	return k.restores[len(k.restores)-1]
}

func TestSyncFullThenPartial(t *testing.T) {
	ctx := context.Background()
	h := newFakeHost()
	p, err := New(h.options())
	if err != nil {
		t.Fatal(err)
	}
	web := func(eps ...proxier.Endpoint) *proxier.ServicePort {
		sp := svc("default", "web", "http", v1.ProtocolTCP, "10.96.0.100", 80, eps...)
		sp.NodePort = 30080
		return sp
	}
	dns := svc("kube-system", "kube-dns", "dns", v1.ProtocolUDP, "10.96.0.10", 53, ep("10.244.1.2:53"), ep("10.244.2.3:53"))
	dns6 := svc("kube-system", "kube-dns", "dns", v1.ProtocolUDP, "fd00:96::10", 53, ep("[fd00:244:1::2]:53"))
	st := labState(web(ep("10.244.1.5:8080"), ep("10.244.2.7:8080")), dns, dns6)

	if err := p.Sync(ctx, st, proxier.Changes{Full: true}); err != nil {
		t.Fatal(err)
	}
	checkKernel(t, h.v4, st, proxier.IPv4)
	checkKernel(t, h.v6, st, proxier.IPv6)

	// One endpoint of web goes away: only web's SVC chain is rewritten and the endpoint's SEP
	// chain deleted; NA-SERVICES and kube-dns's chains are not in the restore.
	st2 := labState(web(ep("10.244.1.5:8080")), dns, dns6)
	restores6 := len(h.v6.restores)
	if err := p.Sync(ctx, st2, changes("default/web")); err != nil {
		t.Fatal(err)
	}
	checkKernel(t, h.v4, st2, proxier.IPv4)
	svcChain := serviceChain(svcPrefix, st.Services[0].Name)
	gone := endpointChain(st.Services[0].Name, ep("10.244.2.7:8080"))
	if got, want := p.fams[0].lastWrite, []string{"nat/" + svcChain}; !slices.Equal(got, want) {
		t.Errorf("partial sync wrote %v, want %v", got, want)
	}
	in := lastRestore(h.v4)
	if !strings.Contains(in, "-X "+gone+"\n") {
		t.Errorf("partial sync does not delete %s:\n%s", gone, in)
	}
	if n := strings.Count(in, "\n"); n != 7 {
		// *nat, the SVC and gone SEP declarations, the SVC's masquerade and endpoint rules, -X, COMMIT.
		t.Errorf("partial restore has %d lines, want 7:\n%s", n, in)
	}
	if len(h.v6.restores) != restores6 {
		t.Errorf("IPv6 restored though nothing changed there:\n%s", lastRestore(h.v6))
	}

	// Nothing changed: no restore at all.
	restores4 := len(h.v4.restores)
	if err := p.Sync(ctx, st2, changes()); err != nil {
		t.Fatal(err)
	}
	if len(h.v4.restores) != restores4 {
		t.Errorf("empty change restored:\n%s", lastRestore(h.v4))
	}

	// Removing a service deletes its chains and rewrites the dispatch chains.
	st3 := labState(dns, dns6)
	if err := p.Sync(ctx, st3, changes("default/web")); err != nil {
		t.Fatal(err)
	}
	checkKernel(t, h.v4, st3, proxier.IPv4)
	if got := p.fams[0].lastWrite; !slices.Equal(got, []string{"nat/NA-SERVICES", "nat/NA-NODEPORTS"}) {
		t.Errorf("removal wrote %v, want the nat dispatch chains only", got)
	}

	// A failed restore makes the next sync full, even without Changes.Full.
	h.v4.fail = errors.New("xtables lock held")
	st4 := labState(web(ep("10.244.2.7:8080")), dns, dns6)
	if err := p.Sync(ctx, st4, changes("default/web")); err == nil {
		t.Fatal("sync with a failing restore succeeded")
	}
	checkKernel(t, h.v4, st3, proxier.IPv4) // untouched
	if err := p.Sync(ctx, st4, changes()); err != nil {
		t.Fatal(err)
	}
	checkKernel(t, h.v4, st4, proxier.IPv4)
	if got, want := len(p.fams[0].lastWrite), len(wantChains(st4, proxier.IPv4)); got != want {
		t.Errorf("sync after failure wrote %d chains, want all %d", got, want)
	}
}

func TestFullSyncRepairsDriftAndLeftovers(t *testing.T) {
	ctx := context.Background()
	h := newFakeHost()
	opts := h.options()
	opts.Families = []proxier.Family{proxier.IPv4}
	st := labState(svc("default", "web", "http", v1.ProtocolTCP, "10.96.0.100", 80, ep("10.244.1.5:8080")))

	// Leftovers of an earlier run (a chain of a service that no longer exists, jumped to from
	// NA-SERVICES) and a foreign chain and rule that must survive.
	if err := h.v4.restore("*nat\n:NA-SERVICES - [0:0]\n:NA-SVC-OLDOLDOLDOLDOLDO - [0:0]\n:FOREIGN - [0:0]\n" +
		"-A NA-SERVICES -d 10.96.9.9 -j NA-SVC-OLDOLDOLDOLDOLDO\n-A FOREIGN -j ACCEPT\n-A PREROUTING -j FOREIGN\nCOMMIT\n"); err != nil {
		t.Fatal(err)
	}
	p, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Sync(ctx, st, changes()); err != nil { // first sync is full whatever Changes says
		t.Fatal(err)
	}
	checkKernel(t, h.v4, st, proxier.IPv4)
	if got := h.v4.rules(tableNAT, "PREROUTING"); !slices.Contains(got, "-A PREROUTING -j FOREIGN") {
		t.Errorf("foreign rule lost: %v", got)
	}

	// Someone flushes NA-SERVICES and deletes a jump rule; a partial sync trusts its memory,
	// the full one repairs both.
	if err := h.v4.restore("*nat\n:NA-SERVICES - [0:0]\nCOMMIT\n"); err != nil {
		t.Fatal(err)
	}
	j := jumps[len(jumps)-1]
	if err := h.v4.delete(j.table, j.from, j.spec()); err != nil {
		t.Fatal(err)
	}
	if err := p.Sync(ctx, st, changes()); err != nil {
		t.Fatal(err)
	}
	if n := len(h.v4.rules(tableNAT, servicesChain)); n != 0 {
		t.Fatalf("partial sync touched NA-SERVICES (%d rules)", n)
	}
	if err := p.Sync(ctx, st, proxier.Changes{Full: true}); err != nil {
		t.Fatal(err)
	}
	checkKernel(t, h.v4, st, proxier.IPv4)

	// Cleanup leaves only the foreign rules.
	if err := p.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	for _, table := range []string{tableFilter, tableNAT} {
		if c := h.v4.chains(table); len(c) != 0 {
			t.Errorf("%s chains left after cleanup: %v", table, c)
		}
		for _, b := range builtins[table] {
			for _, r := range h.v4.rules(table, b) {
				if strings.Contains(r, chainPrefix) {
					t.Errorf("%s %s still jumps to us: %s", table, b, r)
				}
			}
		}
	}
	if got := h.v4.rules(tableNAT, "PREROUTING"); !slices.Equal(got, []string{"-A PREROUTING -j FOREIGN"}) {
		t.Errorf("foreign rules after cleanup: %v", got)
	}
	// After a cleanup, the next sync starts over with a full one.
	if err := p.Sync(ctx, st, changes()); err != nil {
		t.Fatal(err)
	}
	checkKernel(t, h.v4, st, proxier.IPv4)
}

type recordingCleaner struct{ states []*proxier.State }

func (c *recordingCleaner) Clean(st *proxier.State, _ proxier.Changes) error {
	c.states = append(c.states, st)
	return errors.New("netlink busy") // must not fail the sync
}

func TestSyncCallsConntrackAfterSuccess(t *testing.T) {
	ctx := context.Background()
	h := newFakeHost()
	ct := &recordingCleaner{}
	opts := h.options()
	opts.Conntrack = ct
	p, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	st := labState()
	if err := p.Sync(ctx, st, proxier.Changes{Full: true}); err != nil {
		t.Fatal(err)
	}
	h.v6.fail = errors.New("boom")
	if err := p.Sync(ctx, st, proxier.Changes{Full: true}); err == nil {
		t.Fatal("want error")
	}
	if len(ct.states) != 1 || ct.states[0] != st {
		t.Errorf("conntrack cleaner called %d times, want once, after the successful sync", len(ct.states))
	}
}

func TestNewDetectsFamilies(t *testing.T) {
	p, err := New(Options{Rules: func(f proxier.Family) (Rules, error) {
		if f == proxier.IPv6 {
			return nil, errors.New("ip6tables: not found")
		}
		return fakeRules{}, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.fams) != 1 || p.fams[0].family != proxier.IPv4 {
		t.Errorf("families %v, want IPv4 only", p.fams)
	}
	if _, err := New(Options{Rules: func(proxier.Family) (Rules, error) { return nil, errors.New("not found") }}); err == nil {
		t.Error("New with no iptables at all succeeded")
	}
}

func TestSyncSettingsChangeIsFull(t *testing.T) {
	ctx := context.Background()
	h := newFakeHost()
	opts := h.options()
	opts.Families = []proxier.Family{proxier.IPv4}
	p, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	st := labState(svc("default", "web", "http", v1.ProtocolTCP, "10.96.0.100", 80, ep("10.244.1.5:8080")))
	if err := p.Sync(ctx, st, proxier.Changes{Full: true}); err != nil {
		t.Fatal(err)
	}
	st2 := labState(st.Services...)
	st2.Config.MasqueradeAll = true
	if err := p.Sync(ctx, st2, changes()); err != nil {
		t.Fatal(err)
	}
	checkKernel(t, h.v4, st2, proxier.IPv4)
}
