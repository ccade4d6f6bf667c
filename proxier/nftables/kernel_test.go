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

// dropEndpoint returns a copy of st where the IPv4 demoapp port lost its last endpoint.
func dropEndpoint(st *proxier.State) *proxier.State {
	out := *st
	out.Services = slices.Clone(st.Services)
	for i, sp := range out.Services {
		if sp.Name.Name == "demoapp" && sp.Name.Family == proxier.IPv4 {
			c := *sp
			out.Services[i] = withEndpoints(&c, sp.ClusterEndpoints[:len(sp.ClusterEndpoints)-1]...)
		}
	}
	return &out
}

// TestPartialSync changes one service and checks that only its objects are written, that the
// chain it no longer uses is flushed at once and deleted by the next sync.
func TestPartialSync(t *testing.T) {
	ns := netns(t)
	p := newProxier(t, ns)
	st := testState()
	first := mustSync(t, p, st, proxier.Changes{Full: true})

	st2 := dropEndpoint(st)
	stats := mustSync(t, p, st2, changed(demoappName()))
	t.Logf("first sync: %+v", first)
	t.Logf("one endpoint removed: %+v", stats)
	if stats.Full || stats.Rebuilt {
		t.Errorf("partial sync was full: %+v", stats)
	}
	if stats.Services != 2 { // demoapp's IPv4 and IPv6 ports
		t.Errorf("compared %d service ports, want 2", stats.Services)
	}
	// The service chain is rewritten; the removed endpoint's chain is flushed; its hairpin
	// element goes. Nothing else.
	if stats.ChainsFlushed != 2 || stats.ChainsAdded != 0 || stats.Rules != 3 || stats.ElementsDeleted != 1 ||
		stats.ElementsAdded != 0 || stats.ChainsDeleted != 0 {
		t.Errorf("partial sync wrote %+v", stats)
	}
	if stats.Messages > 10 || stats.Messages*10 > first.Messages {
		t.Errorf("partial sync sent %d messages (first sync %d)", stats.Messages, first.Messages)
	}
	out := mustNft(t, ns, "", "list", "chains", "ip")
	if !strings.Contains(out, "http__10.244.3.5/80") {
		t.Errorf("the unused endpoint chain should survive until the next sync:\n%s", out)
	}

	// The next sync (nothing changed) deletes the flushed chain.
	stats = mustSync(t, p, st2, changed())
	if stats.ChainsDeleted != 1 || stats.Messages != 1 {
		t.Errorf("cleanup sync: %+v, want exactly one chain deleted", stats)
	}
	assertKernelMatchesRender(t, p, ns, st2, "ip", "ip6")

	// A periodic full sync with nothing changed finds no drift and writes nothing.
	stats = mustSync(t, p, st2, proxier.Changes{Full: true})
	if stats.Rebuilt || stats.Messages != 0 || stats.Services != len(st2.Services) {
		t.Errorf("resync without drift: %+v", stats)
	}

	// Removing a whole service, then adding it back before its chains are deleted.
	st3 := *st2
	st3.Services = slices.DeleteFunc(slices.Clone(st2.Services), func(sp *proxier.ServicePort) bool {
		return sp.Name.Name == "demoapp"
	})
	stats = mustSync(t, p, &st3, changed(demoappName()))
	if stats.ChainsFlushed != 8 || stats.ElementsDeleted == 0 || stats.ChainsDeleted != 0 {
		t.Errorf("service removal: %+v", stats)
	}
	if out := mustNft(t, ns, "", "list", "map", "ip6", tableName, mapServiceIPs); strings.Contains(out, "demoapp") {
		t.Errorf("service-ips still sends to demoapp:\n%s", out)
	}
	stats = mustSync(t, p, st2, changed(demoappName()))
	if stats.ChainsAdded != 0 || stats.ChainsDeleted != 0 {
		t.Errorf("re-adding a service should reuse its flushed chains: %+v", stats)
	}
	assertKernelMatchesRender(t, p, ns, st2, "ip", "ip6")
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
	st2 := dropEndpoint(st)
	mustSync(t, p, st2, changed(demoappName()))

	// Someone jumps to the chain we are about to delete: the kernel refuses the deletion.
	out := mustNft(t, ns, "", "list", "chains", "ip")
	var stale string
	for _, f := range strings.Fields(out) {
		if strings.HasSuffix(f, "http__10.244.3.5/80") {
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
