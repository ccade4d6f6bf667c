package ipvs

import (
	"cmp"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"testing"

	v1 "k8s.io/api/core/v1"

	"nodeagent/proxier"
	"nodeagent/proxier/nft"
)

// A sequence of partial syncs leaves the kernel (virtual servers, real servers, dummy addresses,
// helper tables) exactly as a build from scratch of the same state describes it: each step
// changes what a patch has to get right (shared elements, firewall chains, moved addresses).
func TestPartialSyncsMatchFullBuild(t *testing.T) {
	p, f := fakeProxier(slog.New(slog.DiscardHandler))
	k, n := p.nft.(*fakeNft), p.net.(*fakeNet)
	st := testState()
	mustSync(t, p, st, proxier.Changes{Full: true})
	find := func(name string, fam proxier.Family) int {
		i := slices.IndexFunc(st.Services, func(sp *proxier.ServicePort) bool { return sp.Name.Name == name && sp.Name.Family == fam })
		if i < 0 {
			t.Fatalf("no service %s", name)
		}
		return i
	}
	// replace swaps in a copy of service name's port of family fam, changed by change.
	replace := func(name string, fam proxier.Family, change func(*proxier.ServicePort)) {
		i := find(name, fam)
		c := *st.Services[i]
		change(&c)
		st = cloneState(st)
		st.Services[i] = &c
	}
	add := func(sp *proxier.ServicePort) {
		st = cloneState(st)
		st.Services = append(st.Services, sp)
		slices.SortStableFunc(st.Services, func(a, b *proxier.ServicePort) int {
			return cmp.Or(cmp.Compare(a.Name.Namespace, b.Name.Namespace), cmp.Compare(a.Name.Name, b.Name.Name))
		})
	}
	remove := func(name string) {
		st = cloneState(st)
		st.Services = slices.DeleteFunc(st.Services, func(sp *proxier.ServicePort) bool { return sp.Name.Name == name })
	}
	shared := withEndpoints(&proxier.ServicePort{
		Name: spn("default", "shared", "", v1.ProtocolTCP, proxier.IPv4), ClusterIP: addr("10.96.0.70"), Port: 80,
		LoadBalancerIPs: []netip.Addr{addr("10.0.0.70")}, LoadBalancerSourceRanges: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")},
	}, ep("10.244.1.5", 80, "node01"))
	steps := []struct {
		name    string
		service string
		apply   func()
	}{
		{"endpoints change", "demoapp", func() {
			replace("demoapp", proxier.IPv4, func(sp *proxier.ServicePort) { withEndpoints(sp, ep("10.244.1.6", 80, "node01")) })
		}},
		{"service removed", "sctp", func() { remove("sctp") }},
		{"service with a firewall and a shared hairpin endpoint added", "shared", func() { add(shared) }},
		{"source ranges changed", "myapp", func() {
			replace("myapp", proxier.IPv4, func(sp *proxier.ServicePort) {
				sp.LoadBalancerSourceRanges = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}
			})
		}},
		{"source ranges dropped", "myapp", func() {
			replace("myapp", proxier.IPv4, func(sp *proxier.ServicePort) { sp.LoadBalancerSourceRanges = nil })
		}},
		{"first endpoint", "empty", func() {
			replace("empty", proxier.IPv4, func(sp *proxier.ServicePort) { withEndpoints(sp, ep("10.244.3.50", 80, "node03")) })
		}},
		{"cluster IP moved", "sticky", func() {
			replace("sticky", proxier.IPv4, func(sp *proxier.ServicePort) { sp.ClusterIP = addr("10.96.0.31") })
		}},
		{"external policy Local", "demoapp", func() {
			replace("demoapp", proxier.IPv6, func(sp *proxier.ServicePort) { sp.ExternalPolicyLocal = true })
		}},
		{"service sharing a hairpin endpoint removed", "shared", func() { remove("shared") }},
		{"the other one sharing it changed", "demoapp", func() {
			replace("demoapp", proxier.IPv4, func(sp *proxier.ServicePort) { withEndpoints(sp, ep("10.244.1.5", 80, "node01")) })
		}},
	}
	for _, step := range steps {
		step.apply()
		stats := mustSync(t, p, st, changed(nsName("default", step.service)))
		if stats.Full {
			t.Fatalf("%s: the sync was full", step.name)
		}
		fresh := buildDesired(st, p.fams, DefaultScheduler, nil)
		for _, pf := range p.fams {
			if d := k.tables[nft.FamilyOf(pf)].diff(fresh.tables[pf]); d != "" {
				t.Errorf("%s: %s helper table differs from a fresh build:\n%s", step.name, pf, d)
			}
		}
		f.mu.Lock()
		have := slices.SortedFunc(maps.Keys(f.svcs), compareVSKey)
		f.mu.Unlock()
		if want := sortedKeys(fresh.vs); !slices.Equal(have, want) {
			t.Errorf("%s: virtual servers\n got %v\nwant %v", step.name, have, want)
		}
		for key, vs := range fresh.vs {
			if got := f.realServers(key); !slices.Equal(got, vs.dests) {
				t.Errorf("%s: real servers of %s: %v, want %v", step.name, key, got, vs.dests)
			}
		}
		if got, want := sortedAddrs(n.addrs), sortedAddrs(fresh.bind); !slices.Equal(got, want) {
			t.Errorf("%s: dummy addresses\n got %v\nwant %v", step.name, got, want)
		}
	}
}
