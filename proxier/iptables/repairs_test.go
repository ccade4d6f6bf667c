package iptables

import (
	"context"
	"testing"

	v1 "k8s.io/api/core/v1"

	"nodeagent/proxier"
)

// TestRepairsCounted: a periodic resync over untouched rules repairs nothing; one that finds a
// chain of ours flushed by someone else rewrites it and counts one repair.
func TestRepairsCounted(t *testing.T) {
	ctx := context.Background()
	h := newFakeHost()
	opts := h.options()
	opts.Families = []proxier.Family{proxier.IPv4}
	st := labState(svc("default", "web", "http", v1.ProtocolTCP, "10.96.0.100", 80, ep("10.244.1.5:8080")))
	p, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	periodic := proxier.Changes{Full: true, Periodic: true}
	for range 2 {
		if err := p.Sync(ctx, st, periodic); err != nil {
			t.Fatal(err)
		}
	}
	if n := p.Repairs(); n != 0 {
		t.Fatalf("Repairs() = %d over untouched rules", n)
	}
	if err := h.v4.restore("*nat\n:NA-SERVICES - [0:0]\nCOMMIT\n"); err != nil {
		t.Fatal(err)
	}
	if err := p.Sync(ctx, st, periodic); err != nil {
		t.Fatal(err)
	}
	checkKernel(t, h.v4, st, proxier.IPv4)
	if n := p.Repairs(); n != 1 {
		t.Errorf("Repairs() = %d after NA-SERVICES was flushed, want 1", n)
	}
}
