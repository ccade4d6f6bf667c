package nftables

import (
	"context"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/types"

	"nodeagent/proxier"
)

// TestSyncMatchesRender programs testState into a namespace and compares the kernel's tables
// with what Render's text produces when nft loads it.
func TestSyncMatchesRender(t *testing.T) {
	ns := netns(t)
	p := newProxier(t, ns)
	st := testState()
	stats := mustSync(t, p, st, proxier.Changes{Full: true})
	if !stats.Rebuilt || stats.Messages == 0 {
		t.Fatalf("first sync: %+v, want a rebuild", stats)
	}
	assertKernelMatchesRender(t, p, ns, st, "ip", "ip6")
}

func demoappName() types.NamespacedName {
	return types.NamespacedName{Namespace: "default", Name: "demoapp"}
}

// dropEndpoint returns a copy of st where the IPv4 port of service name lost its last endpoint.
func dropEndpoint(st *proxier.State, name string) *proxier.State {
	return editEndpoints(st, name, func(eps []proxier.Endpoint) []proxier.Endpoint { return eps[:len(eps)-1] })
}

// editEndpoints returns a copy of st where edit replaced the IPv4 endpoints of service name.
func editEndpoints(st *proxier.State, name string, edit func([]proxier.Endpoint) []proxier.Endpoint) *proxier.State {
	out := *st
	out.Services = slices.Clone(st.Services)
	for i, sp := range out.Services {
		if sp.Name.Name == name && sp.Name.Family == proxier.IPv4 {
			c := *sp
			out.Services[i] = withEndpoints(&c, edit(slices.Clone(sp.ClusterEndpoints))...)
		}
	}
	return &out
}

// noRules fails unless a sync changed elements only: no rule, chain or set was written, so the
// kernel had no reason to validate the table again.
func noRules(t *testing.T, what string, stats SyncStats) {
	t.Helper()
	if stats.Rules != 0 || stats.ChainsAdded != 0 || stats.ChainsFlushed != 0 || stats.ChainsDeleted != 0 ||
		stats.SetsAdded != 0 || stats.SetsDeleted != 0 {
		t.Errorf("%s wrote more than elements: %+v", what, stats)
	}
}

// TestPartialSync changes one service at a time and checks that only its objects are written:
// elements only when an endpoint is replaced or the count stays among the counts in use; the
// shared objects of a new count; the chains an affinity service no longer uses flushed at once
// and deleted by the next sync.
func TestPartialSync(t *testing.T) {
	ns := netns(t)
	p := newProxier(t, ns)
	st := testState()
	first := mustSync(t, p, st, proxier.Changes{Full: true})
	t.Logf("first sync: %+v", first)

	// One endpoint replaced by another (both on node03): its slot in the cluster IP's and the
	// node port's endpoint maps. Remote endpoints have no hairpin element.
	st1 := editEndpoints(st, "demoapp", func(eps []proxier.Endpoint) []proxier.Endpoint {
		eps[2].Addr = addr("10.244.3.6")
		return eps
	})
	stats := mustSync(t, p, st1, changed(demoappName()))
	t.Logf("one endpoint replaced: %+v", stats)
	if stats.Full || stats.Rebuilt || stats.Services != 2 {
		t.Errorf("partial sync compared %d service ports (full %v), want demoapp's 2", stats.Services, stats.Full)
	}
	noRules(t, "replacing an endpoint", stats)
	if stats.ElementsDeleted != 2 || stats.ElementsAdded != 2 || stats.Messages > 4 {
		t.Errorf("replacing an endpoint: %+v, want 2 elements out and 2 in", stats)
	}
	assertKernelMatchesRender(t, p, ns, st1, "ip", "ip6")

	// The count goes from 3 to 1, a count other services use: elements only, although no
	// service has 3 endpoints any more. Count 3's objects go when the count does.
	st2 := editEndpoints(st1, "demoapp", func(eps []proxier.Endpoint) []proxier.Endpoint { return eps[:1] })
	stats = mustSync(t, p, st2, changed(demoappName()))
	t.Logf("count 3 -> 1: %+v", stats)
	// services and nodeports lose a rule each; dnat-3 and nodeport-dnat-3 are flushed.
	if stats.ChainsFlushed != 4 || stats.ChainsAdded != 0 || stats.SetsAdded != 0 || stats.ElementsDeleted != 6 ||
		stats.ElementsAdded != 2 {
		t.Errorf("count 3 -> 1: %+v", stats)
	}
	if stats = mustSync(t, p, st2, changed()); stats.ChainsDeleted != 2 || stats.SetsDeleted != 2 {
		t.Errorf("the next sync should delete count 3's chains and sets: %+v", stats)
	}
	assertKernelMatchesRender(t, p, ns, st2, "ip", "ip6")
	// ... and back to 3: the count's objects again, one rule each in services and nodeports.
	stats = mustSync(t, p, st1, changed(demoappName()))
	if stats.ChainsAdded != 2 || stats.SetsAdded != 2 || stats.ElementsAdded != 6 {
		t.Errorf("count 1 -> 3: %+v", stats)
	}
	assertKernelMatchesRender(t, p, ns, st1, "ip", "ip6")

	// An affinity service keeps chains of its own: the removed endpoint's chain is flushed at
	// once and deleted by the next sync.
	sticky := types.NamespacedName{Namespace: "default", Name: "sticky"}
	st3 := dropEndpoint(st1, "sticky")
	stats = mustSync(t, p, st3, changed(sticky))
	t.Logf("affinity endpoint removed: %+v", stats)
	if stats.ChainsFlushed != 2 || stats.ChainsAdded != 0 || stats.ChainsDeleted != 0 || stats.SetsDeleted != 0 {
		t.Errorf("affinity endpoint removed: %+v", stats)
	}
	out := mustNft(t, ns, "", "list", "chains", "ip")
	if !strings.Contains(out, "web__10.244.3.9/8080") {
		t.Errorf("the unused endpoint chain should survive until the next sync:\n%s", out)
	}
	stats = mustSync(t, p, st3, changed())
	if stats.ChainsDeleted != 1 || stats.SetsDeleted != 1 {
		t.Errorf("cleanup sync: %+v, want the endpoint's chain and affinity set deleted", stats)
	}
	assertKernelMatchesRender(t, p, ns, st3, "ip", "ip6")

	// A periodic full sync with nothing changed finds no drift and writes nothing.
	stats = mustSync(t, p, st3, proxier.Changes{Full: true})
	if stats.Rebuilt || stats.Messages != 0 || stats.Services != len(st3.Services) {
		t.Errorf("resync without drift: %+v", stats)
	}

	// Removing a whole service, then adding it back before its chains are deleted.
	st4 := *st3
	st4.Services = slices.DeleteFunc(slices.Clone(st3.Services), func(sp *proxier.ServicePort) bool {
		return sp.Name.Name == "demoapp"
	})
	stats = mustSync(t, p, &st4, changed(demoappName()))
	if stats.ElementsDeleted == 0 || stats.ChainsDeleted != 0 {
		t.Errorf("service removal: %+v", stats)
	}
	if out := mustNft(t, ns, "", "list", "table", "ip6", tableName); strings.Contains(out, "fd00:96::10") {
		t.Errorf("ip6 table still holds demoapp's address:\n%s", out)
	}
	stats = mustSync(t, p, st3, changed(demoappName()))
	if stats.ChainsAdded != 0 || stats.ChainsDeleted != 0 {
		t.Errorf("re-adding a service should reuse the flushed chains: %+v", stats)
	}
	assertKernelMatchesRender(t, p, ns, st3, "ip", "ip6")
}

// TestAddServiceElementsOnly: among many services with the same endpoint count, adding,
// changing and removing one writes elements only.
func TestAddServiceElementsOnly(t *testing.T) {
	ns := netns(t)
	p := newProxier(t, ns, proxier.IPv4)
	st := bigState(50, 3)
	mustSync(t, p, st, proxier.Changes{Full: true})
	more := bigState(51, 3)
	added := more.Services[50]
	stats := mustSync(t, p, more, changed(added.Name.NamespacedName))
	noRules(t, "adding a service", stats)
	if stats.ElementsAdded != 1+1+3 { // cluster IP, its count's set, 3 slots (remote: no hairpin)
		t.Errorf("adding a service: %+v", stats)
	}
	withEndpoints(added, added.ClusterEndpoints[1:]...)
	withEndpoints(more.Services[0], more.Services[0].ClusterEndpoints[1:]...)
	mustSync(t, p, more, changed(more.Services[0].Name.NamespacedName)) // count 2 now in use
	stats = mustSync(t, p, more, changed(added.Name.NamespacedName))
	noRules(t, "a count change to a count in use", stats)
	assertKernelMatchesRender(t, p, ns, more, "ip")
	stats = mustSync(t, p, st, changed(added.Name.NamespacedName))
	noRules(t, "removing a service", stats)
}

// TestDriftRepair: a full sync notices that someone flushed the ruleset or our table's rules
// and rebuilds.
func TestDriftRepair(t *testing.T) {
	ns := netns(t)
	p := newProxier(t, ns)
	st := testState()
	mustSync(t, p, st, proxier.Changes{Full: true})

	for _, cmd := range []string{"flush ruleset", "flush table ip nodeagent", "delete table ip6 nodeagent"} {
		mustNft(t, ns, "", strings.Fields(cmd)...)
		// A partial sync trusts its records...
		if stats := mustSync(t, p, st, changed()); stats.Rebuilt {
			t.Errorf("after %q: partial sync rebuilt", cmd)
		}
		// ...the periodic full one checks them.
		if stats := mustSync(t, p, st, proxier.Changes{Full: true}); !stats.Rebuilt {
			t.Errorf("after %q: full sync did not rebuild: %+v", cmd, stats)
		}
		assertKernelMatchesRender(t, p, ns, st, "ip", "ip6")
	}
}

// TestFailedSyncRebuilds: a transaction the kernel refuses leaves the tables as they were and
// makes the next sync a rebuild.
func TestFailedSyncRebuilds(t *testing.T) {
	ns := netns(t)
	p := newProxier(t, ns, proxier.IPv4)
	st := testState()
	mustSync(t, p, st, proxier.Changes{Full: true})
	st2 := dropEndpoint(st, "sticky")
	mustSync(t, p, st2, changed(types.NamespacedName{Namespace: "default", Name: "sticky"}))

	// Someone jumps to the chain we are about to delete: the kernel refuses the deletion.
	out := mustNft(t, ns, "", "list", "chains", "ip")
	var stale string
	for _, f := range strings.Fields(out) {
		if strings.HasSuffix(f, "web__10.244.3.9/8080") {
			stale = f
		}
	}
	if stale == "" {
		t.Fatalf("no flushed endpoint chain in:\n%s", out)
	}
	mustNft(t, ns, "add chain ip nodeagent intruder\nadd rule ip nodeagent intruder jump "+stale+"\n", "-f", "-")
	before := normalized(t, ns, "ip")
	err := p.Sync(context.Background(), st2, changed())
	if err == nil || !strings.Contains(err.Error(), "delete chain "+stale) {
		t.Fatalf("Sync error = %v, want one naming the chain it could not delete", err)
	}
	if after := normalized(t, ns, "ip"); after != before {
		t.Fatalf("a failed sync changed the table:\n%s", lineDiff(before, after))
	}
	if stats := mustSync(t, p, st2, changed()); !stats.Rebuilt {
		t.Errorf("sync after a failure: %+v, want a rebuild", stats)
	}
	assertKernelMatchesRender(t, p, ns, st2, "ip")
}

// TestCleanup deletes our tables and leaves a foreign one alone.
func TestCleanup(t *testing.T) {
	ns := netns(t)
	p := newProxier(t, ns)
	mustSync(t, p, testState(), proxier.Changes{Full: true})
	mustNft(t, ns, "table inet foreign {\n chain input {\n type filter hook input priority 0;\n accept\n }\n}\ntable ip nat {\n}\n", "-f", "-")
	if err := p.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	out := mustNft(t, ns, "", "list", "tables")
	if strings.Contains(out, tableName) || !strings.Contains(out, "table inet foreign") || !strings.Contains(out, "table ip nat") {
		t.Fatalf("after Cleanup:\n%s", out)
	}
	if !strings.Contains(mustNft(t, ns, "", "list", "table", "inet", "foreign"), "accept") {
		t.Error("the foreign table lost its rule")
	}
	// Cleanup when there is nothing to clean is fine, and the next Sync rebuilds.
	if err := p.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if stats := mustSync(t, p, testState(), changed()); !stats.Rebuilt {
		t.Errorf("sync after Cleanup: %+v, want a rebuild", stats)
	}
}
