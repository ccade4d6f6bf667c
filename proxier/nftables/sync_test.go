package nftables

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/types"

	"nodeagent/proxier"
)

// These tests run partial syncs against fakeKernel: no root, no netlink. Each checks the
// commands a sync sends and that the tables end up as a full sync into an empty kernel would
// leave them; kernel_test.go runs the same kinds of change against the real kernel.

func name(svc string) types.NamespacedName {
	return types.NamespacedName{Namespace: "default", Name: svc}
}

// assertCommands fails unless got holds exactly want, in any order.
func assertCommands(t *testing.T, what string, got, want []string) {
	t.Helper()
	g, w := slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(want))
	if !slices.Equal(g, w) {
		t.Fatalf("%s sent:\n%s\nwant:\n%s", what, strings.Join(g, "\n"), strings.Join(w, "\n"))
	}
}

// assertOnly fails unless every command of got mentions one of the words.
func assertOnly(t *testing.T, what string, got []string, words ...string) {
	t.Helper()
	for _, c := range got {
		if !slices.ContainsFunc(words, func(w string) bool { return strings.Contains(c, w) }) {
			t.Errorf("%s sent %q, which is about none of %q", what, c, words)
		}
	}
}

// TestFakeAddService: among services with the same endpoint count, a new one is elements only:
// its cluster IP, its entry in the set of its count, and its endpoints' slots.
func TestFakeAddService(t *testing.T) {
	p, k := newFakeProxier(t, proxier.IPv4)
	mustSync(t, p, bigState(50, 3), proxier.Changes{Full: true})
	more := bigState(51, 3)
	added := more.Services[50]
	stats := mustSync(t, p, more, changed(added.Name.NamespacedName))
	if stats.Full || stats.Rebuilt || stats.Services != 1 {
		t.Errorf("adding a service: %+v, want a partial sync of one service port", stats)
	}
	assertCommands(t, "adding a service", k.last(), []string{
		"add element ip nodeagent cluster-ips { 10.96.0.50 }",
		"add element ip nodeagent services-with-3-endpoints { 10.96.0.50 . tcp . 80 }",
		"add element ip nodeagent service-endpoints { 10.96.0.50 . tcp . 80 . 0 : 10.128.0.50 . 8080 }",
		"add element ip nodeagent service-endpoints { 10.96.0.50 . tcp . 80 . 1 : 10.129.0.50 . 8080 }",
		"add element ip nodeagent service-endpoints { 10.96.0.50 . tcp . 80 . 2 : 10.130.0.50 . 8080 }",
	})
	assertLikeFullSync(t, k, more, proxier.IPv4)
}

// TestFakeEndpointChange: replacing an endpoint of a service without chains of its own
// replaces its slots; of one with chains (Local external policy), rewrites its chains only, adds
// the new endpoint's chain and flushes the old one, which the next sync deletes.
func TestFakeEndpointChange(t *testing.T) {
	p, k := newFakeProxier(t)
	st := testState()
	mustSync(t, p, st, proxier.Changes{Full: true})

	st1 := editEndpoints(st, "demoapp", func(eps []proxier.Endpoint) []proxier.Endpoint {
		eps[2].Addr = addr("10.244.3.6")
		return eps
	})
	mustSync(t, p, st1, changed(demoappName()))
	got := k.last()
	assertCommands(t, "replacing an endpoint", got, []string{
		"delete element ip nodeagent service-endpoints { 10.96.0.10 . tcp . 80 . 2 }",
		"delete element ip nodeagent nodeport-endpoints { tcp . 30080 . 2 }",
		"add element ip nodeagent service-endpoints { 10.96.0.10 . tcp . 80 . 2 : 10.244.3.6 . 80 }",
		"add element ip nodeagent nodeport-endpoints { tcp . 30080 . 2 : 10.244.3.6 . 80 }",
	})
	// A changed value is a deletion, then an addition (the kernel refuses to overwrite).
	if !strings.HasPrefix(got[0], "delete element") || !strings.HasPrefix(got[len(got)-1], "add element") {
		t.Errorf("replacing an endpoint: deletions must come before additions:\n%s", strings.Join(got, "\n"))
	}
	assertLikeFullSync(t, k, st1)

	myapp := name("myapp")
	st2 := editEndpoints(st1, "myapp", func(eps []proxier.Endpoint) []proxier.Endpoint {
		eps[0].Addr = addr("10.244.1.8")
		return eps
	})
	stats := mustSync(t, p, st2, changed(myapp))
	got = k.last()
	const (
		oldChain = "endpoint-7FDUZVJ5-default/myapp/tcp/__10.244.1.7/8080"
		newChain = "endpoint-FZIK4YKT-default/myapp/tcp/__10.244.1.8/8080"
	)
	assertOnly(t, "replacing an endpoint of a service with chains", got, "default/myapp/", "hairpin-ips")
	for _, want := range []string{
		"add chain ip nodeagent " + newChain,
		"flush chain ip nodeagent " + oldChain,
		"flush chain ip nodeagent service-6QYGQ5L4-default/myapp/tcp/",
		"add rule ip nodeagent " + newChain + " meta l4proto tcp dnat to 10.244.1.8:8080",
		"delete element ip nodeagent hairpin-ips { 10.244.1.7 . 10.244.1.7 }",
		"add element ip nodeagent hairpin-ips { 10.244.1.8 . 10.244.1.8 }",
	} {
		if !slices.Contains(got, want) {
			t.Errorf("replacing an endpoint of a service with chains: no %q in\n%s", want, strings.Join(got, "\n"))
		}
	}
	if stats.ChainsDeleted != 0 || stats.ChainsAdded != 1 {
		t.Errorf("replacing an endpoint of a service with chains: %+v, want one chain added and none deleted", stats)
	}
	// The firewall chain and the endpoint chain that stays are not rewritten.
	for _, c := range got {
		if strings.Contains(c, "firewall-6QYGQ5L4") || strings.Contains(c, "__10.244.2.7/8080 ") {
			t.Errorf("replacing an endpoint rewrote an unchanged chain: %q", c)
		}
	}
	stats = mustSync(t, p, st2, changed())
	assertCommands(t, "the sync after", k.last(), []string{"delete chain ip nodeagent " + oldChain})
	if stats.Services != 0 {
		t.Errorf("the sync after compared %d service ports, want none", stats.Services)
	}
	assertLikeFullSync(t, k, st2)
}

// TestFakeRemoveService: removing a service with chains and sets of its own deletes its
// elements and flushes its chains; the next sync deletes the chains and sets, after nothing
// refers to them any more (the fake refuses otherwise); adding it back before that reuses them.
func TestFakeRemoveService(t *testing.T) {
	p, k := newFakeProxier(t, proxier.IPv4)
	st := testState()
	mustSync(t, p, st, proxier.Changes{Full: true})

	sticky := name("sticky")
	without := *st
	without.Services = slices.DeleteFunc(slices.Clone(st.Services), func(sp *proxier.ServicePort) bool { return sp.Name.Name == "sticky" })
	stats := mustSync(t, p, &without, changed(sticky))
	got := k.last()
	assertOnly(t, "removing a service", got, "default/sticky/", "10.96.0.30", "10.0.0.200", "10.244.1.9", "10.244.3.9")
	var flushed, deleted []string
	for _, c := range got {
		if f, ok := strings.CutPrefix(c, "flush chain ip nodeagent "); ok {
			flushed = append(flushed, f)
		}
		if strings.HasPrefix(c, "delete chain") || strings.HasPrefix(c, "delete set") {
			deleted = append(deleted, c)
		}
	}
	if len(flushed) != 4 || len(deleted) != 0 || stats.ElementsDeleted == 0 || stats.ElementsAdded != 0 {
		t.Errorf("removing a service flushed %q and deleted %q (%+v); want its 4 chains flushed, its elements deleted, nothing else deleted yet",
			flushed, deleted, stats)
	}
	for _, c := range flushed {
		if !strings.Contains(c, "default/sticky/") {
			t.Errorf("removing sticky flushed %s", c)
		}
	}

	stats = mustSync(t, p, &without, changed())
	got = k.last()
	if stats.ChainsDeleted != 4 || stats.SetsDeleted != 2 || len(got) != 6 {
		t.Errorf("the sync after the removal: %+v, commands:\n%s\nwant sticky's 4 chains and 2 affinity sets deleted", stats, strings.Join(got, "\n"))
	}
	assertOnly(t, "the sync after the removal", got, "default/sticky/")
	assertLikeFullSync(t, k, &without, proxier.IPv4)

	// Added back: its objects again.
	if stats = mustSync(t, p, st, changed(sticky)); stats.ChainsAdded != 4 || stats.SetsAdded != 2 {
		t.Errorf("adding a service back: %+v, want its 4 chains and 2 sets", stats)
	}
	assertLikeFullSync(t, k, st, proxier.IPv4)
	// Removed and added back before the next sync: the flushed chains are filled again.
	mustSync(t, p, &without, changed(sticky))
	if stats = mustSync(t, p, st, changed(sticky)); stats.ChainsAdded != 0 || stats.ChainsDeleted != 0 || stats.SetsDeleted != 0 {
		t.Errorf("re-adding a service before its chains are deleted: %+v, want them reused", stats)
	}
	assertLikeFullSync(t, k, st, proxier.IPv4)
}

// TestFakeFailedTransaction: a transaction the kernel refuses changes nothing, and the next
// sync, partial or not, rebuilds the tables from scratch.
func TestFakeFailedTransaction(t *testing.T) {
	p, k := newFakeProxier(t, proxier.IPv4)
	st := testState()
	mustSync(t, p, st, proxier.Changes{Full: true})
	before := k.Dump()

	k.failNext = errors.New("refused")
	st1 := dropEndpoint(st, "demoapp")
	if err := p.Sync(context.Background(), st1, changed(demoappName())); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("Sync = %v, want the kernel's error", err)
	}
	if k.Dump() != before {
		t.Fatal("a failed transaction changed the tables")
	}
	stats := mustSync(t, p, st1, changed())
	if !stats.Rebuilt || !stats.Full {
		t.Errorf("sync after a failure: %+v, want a rebuild", stats)
	}
	if got := k.last(); len(got) < 3 || !slices.Equal(got[:3], []string{
		"add table ip nodeagent", "delete table ip nodeagent", "add table ip nodeagent",
	}) {
		t.Errorf("a rebuild starts by replacing the table; it sent:\n%s", strings.Join(got[:min(len(got), 5)], "\n"))
	}
	assertLikeFullSync(t, k, st1, proxier.IPv4)

	// Someone refers to a chain that the next sync deletes: the fake, as the kernel, refuses.
	st2 := dropEndpoint(st1, "sticky")
	mustSync(t, p, st2, changed(name("sticky")))
	stale := "endpoint-7SOEXNLL-default/sticky/tcp/web__10.244.3.9/8080"
	k.edit(func(tables map[string]*fakeTable) {
		tables["ip"].chains["intruder"] = &fakeChain{rules: []string{"jump " + stale}}
	})
	if err := p.Sync(context.Background(), st2, changed()); err == nil || !strings.Contains(err.Error(), "delete chain ip nodeagent "+stale) {
		t.Fatalf("Sync = %v, want the deletion of %s refused", err, stale)
	}
	if stats := mustSync(t, p, st2, changed()); !stats.Rebuilt {
		t.Errorf("sync after a refused deletion: %+v, want a rebuild", stats)
	}
	assertLikeFullSync(t, k, st2, proxier.IPv4)
}

// TestFakeDrift: a partial sync trusts its record; a full one notices what someone else
// changed and rebuilds, and writes nothing when nobody did.
func TestFakeDrift(t *testing.T) {
	p, k := newFakeProxier(t)
	st := testState()
	mustSync(t, p, st, proxier.Changes{Full: true})
	if stats := mustSync(t, p, st, proxier.Changes{Full: true}); stats.Rebuilt || stats.Messages != 0 {
		t.Errorf("full sync without drift: %+v, want nothing sent", stats)
	}
	for what, edit := range map[string]func(map[string]*fakeTable){
		"element deleted": func(tb map[string]*fakeTable) { clear(tb["ip"].sets[mapServiceEndpoints].elems) },
		"rule deleted":    func(tb map[string]*fakeTable) { tb["ip6"].chains[chainServices].rules = nil },
		"table deleted":   func(tb map[string]*fakeTable) { delete(tb, "ip6") },
	} {
		k.edit(edit)
		if stats := mustSync(t, p, st, changed()); stats.Rebuilt {
			t.Errorf("%s: partial sync rebuilt", what)
		}
		if stats := mustSync(t, p, st, proxier.Changes{Full: true}); !stats.Rebuilt {
			t.Errorf("%s: full sync did not rebuild: %+v", what, stats)
		}
		assertLikeFullSync(t, k, st)
	}
}
