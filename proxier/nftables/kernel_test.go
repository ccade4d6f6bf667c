package nftables

import (
	"testing"

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
