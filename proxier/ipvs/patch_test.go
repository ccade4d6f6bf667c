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

// A removed service whose real server still has a connection keeps its virtual server, address
// and ownership record through partial syncs while it drains; the drain check then deletes all
// three, leaving the kernel as a build from scratch describes it.
func TestRemovedServiceDrains(t *testing.T) {
	p, f := fakeProxier(slog.New(slog.DiscardHandler))
	k, n := p.nft.(*fakeNft), p.net.(*fakeNet)
	st := testState()
	mustSync(t, p, st, proxier.Changes{Full: true})
	vip, ext := vsKey{Addr: addr("10.96.0.30"), Proto: 6, Port: 8080}, vsKey{Addr: addr("10.0.0.200"), Proto: 6, Port: 8080}
	busy := netip.MustParseAddrPort("10.244.1.9:8080")
	setConns := func(c int) {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.dests[vip][busy].ActiveConnections = c
	}
	setConns(1)
	owned := func(key vsKey) bool {
		_, ok := k.tables[nft.IPv4].elems[setVirtualServers][vsElem(key)]
		return ok
	}
	check := func(when string, wantVIP bool) {
		t.Helper()
		if got := f.scheduler(vip) != ""; got != wantVIP {
			t.Errorf("%s: virtual server %s exists %v, want %v", when, vip, got, wantVIP)
		}
		if owned(vip) != wantVIP || n.addrs[vip.Addr] != wantVIP {
			t.Errorf("%s: %s recorded as owned %v, address bound %v; want %v", when, vip, owned(vip), n.addrs[vip.Addr], wantVIP)
		}
		if f.scheduler(ext) != "" || owned(ext) || n.addrs[ext.Addr] {
			t.Errorf("%s: %s (no connections) left behind", when, ext)
		}
	}
	st = cloneState(st)
	st.Services = slices.DeleteFunc(st.Services, func(sp *proxier.ServicePort) bool { return sp.Name.Name == "sticky" })
	mustSync(t, p, st, changed(nsName("default", "sticky")))
	check("removed, draining", true)
	mustSync(t, p, st, changed(nsName("default", "demoapp")))
	check("another service synced", true)
	setConns(0)
	if err := p.drain(); err != nil {
		t.Fatal(err)
	}
	check("drained", false)
	fresh := buildDesired(st, p.fams, DefaultScheduler, nil)
	if d := k.tables[nft.IPv4].diff(fresh.tables[proxier.IPv4]); d != "" {
		t.Errorf("after the drain the table differs from a fresh build:\n%s", d)
	}

	// Two ports on one cluster IP: the UDP one goes at once, the TCP one drains; the address
	// stays until both are gone.
	dnsTCP, dnsUDP := vsKey{Addr: addr("10.96.0.53"), Proto: 6, Port: 53}, vsKey{Addr: addr("10.96.0.53"), Proto: 17, Port: 53}
	st = cloneState(st)
	i := slices.IndexFunc(st.Services, func(sp *proxier.ServicePort) bool { return sp.Name.Port == "dns-tcp" })
	withEndpoints(st.Services[i], ep("10.244.1.53", 53, "node01"))
	mustSync(t, p, st, changed(nsName("kube-system", "dns")))
	f.mu.Lock()
	f.dests[dnsTCP][netip.MustParseAddrPort("10.244.1.53:53")].ActiveConnections = 1
	f.mu.Unlock()
	st = cloneState(st)
	st.Services = slices.DeleteFunc(st.Services, func(sp *proxier.ServicePort) bool { return sp.Name.Name == "dns" })
	mustSync(t, p, st, changed(nsName("kube-system", "dns")))
	if f.scheduler(dnsUDP) != "" || f.scheduler(dnsTCP) == "" || !n.addrs[dnsTCP.Addr] {
		t.Errorf("dns removed: UDP virtual server exists %v (want false), TCP %v (want true), address bound %v (want true)",
			f.scheduler(dnsUDP) != "", f.scheduler(dnsTCP) != "", n.addrs[dnsTCP.Addr])
	}
}
