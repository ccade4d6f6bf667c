package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	"nodeagent/bgp"
	"nodeagent/lb"
	"nodeagent/proxier"
)

// lbState is a State with one service per address, that address its load-balancer IP.
func lbState(addrs ...string) *proxier.State {
	st := &proxier.State{}
	for _, a := range addrs {
		sp := &proxier.ServicePort{LoadBalancerIPs: []netip.Addr{netip.MustParseAddr(a)}}
		sp.Name.Namespace, sp.Name.Name = "default", "svc-"+a
		st.Services = append(st.Services, sp)
	}
	slices.SortFunc(st.Services, func(a, b *proxier.ServicePort) int { return strings.Compare(a.Name.Name, b.Name.Name) })
	return st
}

// Partial syncs keep the index of frontends what a full walk finds, and report only real
// additions and removals: an address moving between services is neither.
func TestFrontendsIncremental(t *testing.T) {
	svc := func(name string, addrs ...string) *proxier.ServicePort {
		sp := &proxier.ServicePort{}
		for _, a := range addrs {
			sp.LoadBalancerIPs = append(sp.LoadBalancerIPs, netip.MustParseAddr(a))
		}
		sp.Name.Namespace, sp.Name.Name = "default", name
		return sp
	}
	changed := func(names ...string) proxier.Changes {
		ch := proxier.Changes{Services: map[types.NamespacedName]bool{}}
		for _, n := range names {
			ch.Services[types.NamespacedName{Namespace: "default", Name: n}] = true
		}
		return ch
	}
	steps := []struct {
		ports          []*proxier.ServicePort
		ch             proxier.Changes
		removed, added string
	}{
		{[]*proxier.ServicePort{svc("a", "10.0.0.1"), svc("b", "10.0.0.2")}, proxier.Changes{Full: true}, "[]", "[10.0.0.1 10.0.0.2]"},
		{[]*proxier.ServicePort{svc("a"), svc("b", "10.0.0.2", "10.0.0.1")}, changed("a", "b"), "[]", "[]"},
		{[]*proxier.ServicePort{svc("b", "10.0.0.1")}, changed("a", "b"), "[10.0.0.2]", "[]"},
		{[]*proxier.ServicePort{svc("b", "10.0.0.1"), svc("c", "10.0.0.3")}, changed("c"), "[]", "[10.0.0.3]"},
		{nil, changed("b", "c"), "[10.0.0.1 10.0.0.3]", "[]"},
	}
	g := newAnnounceGate(slog.New(slog.NewTextHandler(io.Discard, nil)), false)
	set := func(as []netip.Addr) string {
		m := map[netip.Addr]bool{}
		for _, a := range as {
			m[a] = true
		}
		return sortedAddrs(m)
	}
	for i, s := range steps {
		st := &proxier.State{Services: s.ports}
		removed, added := g.frontends(st, s.ch)
		if set(removed) != s.removed || set(added) != s.added {
			t.Errorf("step %d: removed %s, added %s; want %s, %s", i, set(removed), set(added), s.removed, s.added)
		}
		full := newAnnounceGate(g.log, false)
		full.frontends(st, proxier.Changes{Full: true})
		if sortedAddrs(g.count) != sortedAddrs(full.count) {
			t.Errorf("step %d: index %s, a full walk finds %s", i, sortedAddrs(g.count), sortedAddrs(full.count))
		}
	}
}

func ownedOf(s ...string) map[netip.Addr][]string {
	out := map[netip.Addr][]string{}
	for _, a := range s {
		out[netip.MustParseAddr(a)] = nil
	}
	return out
}

func routesOf(s ...string) []bgp.Advertisement {
	var out []bgp.Advertisement
	for _, a := range s {
		ip := netip.MustParseAddr(a)
		out = append(out, bgp.Advertisement{Prefix: netip.PrefixFrom(ip, ip.BitLen())})
	}
	return out
}

func sortedAddrs[V any](m map[netip.Addr]V) string {
	return fmt.Sprint(slices.SortedFunc(maps.Keys(m), netip.Addr.Compare))
}

// The gate hands each announcer the desired state restricted to what the last sync programmed,
// withdraws before a sync that removes an address, and keeps a failed sync's new addresses back.
func TestAnnounceGate(t *testing.T) {
	type step struct {
		owned      []string // set the layer-2 plan (nil: unchanged)
		routes     []string // set the BGP routes (nil: unchanged)
		sync       []string // beforeSync with these frontends, then (unless failed) synced
		failed     bool
		wantOwned  string
		wantRoutes string
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"nothing before the first sync", []step{
			{owned: []string{"10.0.0.50"}, routes: []string{"10.0.0.50"}, wantOwned: "[]", wantRoutes: "[]"},
			{sync: []string{"10.0.0.50"}, wantOwned: "[10.0.0.50]", wantRoutes: "[10.0.0.50]"},
		}},
		{"an address already programmed is announced at once", []step{
			{sync: []string{"10.0.0.50", "10.0.0.51"}, wantOwned: "[]", wantRoutes: "[]"},
			{owned: []string{"10.0.0.51"}, routes: []string{"10.0.0.50"}, wantOwned: "[10.0.0.51]", wantRoutes: "[10.0.0.50]"},
		}},
		{"a failed sync does not announce its new address", []step{
			{owned: []string{"10.0.0.50", "10.0.0.51"}, sync: []string{"10.0.0.50"}, wantOwned: "[10.0.0.50]", wantRoutes: "[]"},
			{sync: []string{"10.0.0.50", "10.0.0.51"}, failed: true, wantOwned: "[10.0.0.50]", wantRoutes: "[]"},
			{sync: []string{"10.0.0.50", "10.0.0.51"}, wantOwned: "[10.0.0.50 10.0.0.51]", wantRoutes: "[]"},
		}},
		{"a sync that removes an address withdraws it, even when it fails", []step{
			{owned: []string{"10.0.0.50", "10.0.0.51"}, routes: []string{"10.0.0.51"}, sync: []string{"10.0.0.50", "10.0.0.51"},
				wantOwned: "[10.0.0.50 10.0.0.51]", wantRoutes: "[10.0.0.51]"},
			{sync: []string{"10.0.0.50"}, failed: true, wantOwned: "[10.0.0.50]", wantRoutes: "[]"},
		}},
		{"the plan withdrawing needs no sync", []step{
			{owned: []string{"10.0.0.50"}, sync: []string{"10.0.0.50"}, wantOwned: "[10.0.0.50]", wantRoutes: "[]"},
			{owned: []string{}, wantOwned: "[]", wantRoutes: "[]"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newAnnounceGate(slog.New(slog.NewTextHandler(io.Discard, nil)), false)
			var gotOwned, gotRoutes string
			calls := 0
			g.layer2 = func(o map[netip.Addr][]string) { gotOwned = sortedAddrs(o); calls++ }
			g.routes = func(advs []bgp.Advertisement) error {
				m := map[netip.Addr]bool{}
				for _, a := range advs {
					m[a.Prefix.Addr()] = true
				}
				gotRoutes = sortedAddrs(m)
				return nil
			}
			for i, s := range tt.steps {
				if s.owned != nil {
					g.setOwned(ownedOf(s.owned...))
				}
				if s.routes != nil {
					g.setAdvertisements(routesOf(s.routes...))
				}
				if s.sync != nil {
					removed, added := g.frontends(lbState(s.sync...), proxier.Changes{Full: true})
					g.beforeSync(removed)
					g.synced(added, !s.failed)
				}
				if s.owned == nil && s.routes == nil && s.sync == nil {
					t.Fatalf("step %d does nothing", i)
				}
				if gotOwned != s.wantOwned || gotRoutes != s.wantRoutes {
					t.Errorf("step %d: layer 2 %s, routes %s; want %s, %s", i, gotOwned, gotRoutes, s.wantOwned, s.wantRoutes)
				}
			}
			// Unchanged states are not handed again (a sync per second must not reach the responder).
			before := calls
			g.beforeSync(nil)
			g.synced(nil, true)
			if calls != before {
				t.Errorf("an unchanged state reached the responder again")
			}
		})
	}
}

// kernelWorld is a fake kernel and layer-2 responder that check, at every call, that nothing is
// announced whose rules are not (for sure) in the kernel.
type kernelWorld struct {
	mu        sync.Mutex
	kernel    map[netip.Addr]bool // addresses whose rules are programmed for sure
	announced map[netip.Addr]bool
	fail      bool // the next sync fails
	syncs     int
	violation []string
	log       []string
}

func (w *kernelWorld) check(when string) {
	for a := range w.announced {
		if !w.kernel[a] {
			w.violation = append(w.violation, fmt.Sprintf("%s: %s announced without its rules", when, a))
		}
	}
}

// Sync implements proxier.Proxier: while it runs, only what both the old and the new state
// program is in the kernel for sure.
func (w *kernelWorld) Sync(_ context.Context, st *proxier.State, _ proxier.Changes) error {
	next := map[netip.Addr]bool{}
	for _, sp := range st.Services {
		for _, a := range sp.LoadBalancerIPs {
			next[a] = true
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.syncs++
	maps.DeleteFunc(w.kernel, func(a netip.Addr, _ bool) bool { return !next[a] })
	w.check("sync start")
	if w.fail {
		w.fail = false
		w.log = append(w.log, "sync failed "+sortedAddrs(next))
		return errors.New("kernel said no")
	}
	w.kernel = next
	w.log = append(w.log, "synced "+sortedAddrs(next))
	return nil
}

func (w *kernelWorld) Render(io.Writer, *proxier.State) error { return nil }
func (w *kernelWorld) Cleanup(context.Context) error          { return nil }

func (w *kernelWorld) setOwned(owned map[netip.Addr][]string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.announced = map[netip.Addr]bool{}
	for a := range owned {
		w.announced[a] = true
	}
	w.log = append(w.log, "announce "+sortedAddrs(owned))
	w.check("announce")
}

func (w *kernelWorld) state() (announced bool, syncs int, violations []string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.announced[netip.MustParseAddr("10.0.0.50")], w.syncs, slices.Clone(w.violation)
}

// lbWeb is the web service as a LoadBalancer with its address from pool, and what announces it.
func lbWeb(svcType v1.ServiceType) *v1.Service {
	svc := webService(80)
	svc.Spec.Type = svcType
	return svc
}

func lbObjects() []runtime.Object {
	pool := &lb.IPAddressPool{ObjectMeta: metav1.ObjectMeta{Namespace: "metallb-system", Name: "pool"}}
	pool.Spec.Addresses = []string{"10.0.0.50/32"}
	l2 := &lb.L2Advertisement{ObjectMeta: metav1.ObjectMeta{Namespace: "metallb-system", Name: "l2"}}
	return []runtime.Object{pool, l2, lbWeb(v1.ServiceTypeLoadBalancer), webEndpoints()}
}

// The agent announces a load-balancer address only after a sync programmed its rules (not when the
// speaker assigns it, nor after a failed sync), and withdraws it before the sync that removes them.
func TestRunAnnouncesOnlyWhatIsProgrammed(t *testing.T) {
	w := &kernelWorld{kernel: map[netip.Addr]bool{}, fail: true}
	src := &fakeSource{initial: lbObjects(), push: make(chan runtime.Object)}
	o := testOptions(t, src, w, nil)
	o.Layer2 = w.setOwned
	runAgent(t, o)

	waitFor(t, "10.0.0.50 announced", func() bool { a, _, _ := w.state(); return a })
	if _, syncs, v := w.state(); len(v) > 0 || syncs < 2 {
		t.Fatalf("after %d syncs (the first failing): %s\n%s", syncs, strings.Join(v, "\n"), strings.Join(w.log, "\n"))
	}
	// The service stops being a LoadBalancer: its address goes from the plan and from the rules.
	src.push <- lbWeb(v1.ServiceTypeClusterIP)
	waitFor(t, "10.0.0.50 withdrawn", func() bool { a, _, _ := w.state(); return !a })
	waitFor(t, "the sync that removes its rules", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return !w.kernel[netip.MustParseAddr("10.0.0.50")]
	})
	if _, _, v := w.state(); len(v) > 0 {
		t.Fatalf("%s\n%s", strings.Join(v, "\n"), strings.Join(w.log, "\n"))
	}
	// And back: announced again only once programmed again.
	src.push <- lbWeb(v1.ServiceTypeLoadBalancer)
	waitFor(t, "10.0.0.50 announced again", func() bool { a, _, _ := w.state(); return a })
	if _, _, v := w.state(); len(v) > 0 {
		t.Fatalf("%s\n%s", strings.Join(v, "\n"), strings.Join(w.log, "\n"))
	}
}

// The index of frontends before each sync, at 100,000 ports of which 1,000 have a load-balancer
// address: a full sync walks them all, a partial sync of one service looks at that one.
func BenchmarkFrontends(b *testing.B) {
	b.Run("full", func(b *testing.B) { benchFrontends(b, true) })
	b.Run("partial", func(b *testing.B) { benchFrontends(b, false) })
}

func benchFrontends(b *testing.B, full bool) {
	st := &proxier.State{}
	for i := range 100_000 {
		sp := &proxier.ServicePort{ClusterIP: netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})}
		sp.Name.Namespace, sp.Name.Name = "default", fmt.Sprintf("svc-%06d", i)
		if i%100 == 0 {
			sp.LoadBalancerIPs = []netip.Addr{netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)})}
		}
		st.Services = append(st.Services, sp)
	}
	g := newAnnounceGate(slog.New(slog.NewTextHandler(io.Discard, nil)), false)
	g.frontends(st, proxier.Changes{Full: true})
	one := proxier.Changes{Services: map[types.NamespacedName]bool{{Namespace: "default", Name: "svc-050000"}: true}}
	b.ReportAllocs()
	for b.Loop() {
		if full {
			if removed, added := g.frontends(st, proxier.Changes{Full: true}); len(removed)+len(added) != 0 || len(g.count) != 1000 {
				b.Fatal("wrong count")
			}
		} else {
			g.frontends(st, one)
		}
	}
}
