package nftables

import (
	"strings"
	"testing"

	"nodeagent/proxier"
)

// TestDriftSeesElementsAndRules: the periodic full sync notices edits inside our table that
// keep its chain and set count (a map element removed, an element added, a service chain
// flushed, a rule inserted ahead of ours in a chain other than the services chain), rebuilds,
// counts the repair, and leaves an untouched table alone.
func TestDriftSeesElementsAndRules(t *testing.T) {
	ns := netns(t)
	p := newProxier(t, ns, proxier.IPv4)
	st := testState()
	mustSync(t, p, st, proxier.Changes{Full: true})
	if stats := mustSync(t, p, st, proxier.Changes{Full: true}); stats.Rebuilt {
		t.Fatalf("a full sync over an untouched table rebuilt it: %+v", stats)
	}
	if n := p.Repairs(); n != 0 {
		t.Fatalf("Repairs() = %d before any tampering", n)
	}
	for i, cmd := range []string{
		"delete element ip nodeagent service-endpoints { 10.96.0.10 . tcp . 80 . 1 }",
		"add element ip nodeagent cluster-ips { 10.96.9.9 }",
		"delete element ip nodeagent service-ips { 10.96.0.20 . tcp . 80 }",
		"flush chain ip nodeagent service-6QYGQ5L4-default/myapp/tcp/",
		"insert rule ip nodeagent firewall-6QYGQ5L4-default/myapp/tcp/ accept",
		"add chain ip nodeagent intruder",
	} {
		mustNft(t, ns, "", strings.Fields(cmd)...)
		if stats := mustSync(t, p, st, proxier.Changes{Full: true}); !stats.Rebuilt {
			t.Errorf("after %q: full sync did not rebuild: %+v", cmd, stats)
		}
		if n := p.Repairs(); n != uint64(i+1) {
			t.Errorf("after %q: Repairs() = %d, want %d", cmd, n, i+1)
		}
		assertKernelMatchesRender(t, p, ns, st, "ip")
	}
}

// TestDriftIgnoresAffinityElements: packets fill the ClientIP affinity sets; their elements
// are not drift.
func TestDriftIgnoresAffinityElements(t *testing.T) {
	ns := netns(t)
	p := newProxier(t, ns, proxier.IPv4)
	st := testState()
	mustSync(t, p, st, proxier.Changes{Full: true})
	mustNft(t, ns, "", "add", "element", "ip", "nodeagent", "affinity-P2EB7HVC-default/sticky/tcp/web__10.244.1.9/8080", "{ 203.0.113.9 }")
	if stats := mustSync(t, p, st, proxier.Changes{Full: true}); stats.Rebuilt {
		t.Errorf("an affinity element made the full sync rebuild: %+v", stats)
	}
}

// BenchmarkDriftCheck measures the periodic check over an untouched table of N services × 10
// endpoints: a full sync that finds nothing to do.
func BenchmarkDriftCheck(b *testing.B) {
	ns := netns(b)
	p := newProxier(b, ns, proxier.IPv4)
	st := bigState(benchServices(), 10)
	mustSync(b, p, st, proxier.Changes{Full: true})
	b.ResetTimer()
	cpu := cpuTime()
	for b.Loop() {
		if stats := mustSync(b, p, st, proxier.Changes{Full: true}); stats.Rebuilt {
			b.Fatal("rebuilt an untouched table")
		}
	}
	reportCPU(b, cpu)
}
