package iptables

import (
	"context"
	"errors"
	"sync"
	"testing"

	v1 "k8s.io/api/core/v1"

	"nodeagent/proxier"
)

// countingRecorder counts what a proxier reports for metrics.
type countingRecorder struct {
	mu                           sync.Mutex
	restoreFailed, partialFailed map[proxier.Family]int
	rules                        map[string][2]int // "IPv4/nat" → total, written
	proxier.NopRecorder
}

func newCountingRecorder() *countingRecorder {
	return &countingRecorder{restoreFailed: map[proxier.Family]int{}, partialFailed: map[proxier.Family]int{}, rules: map[string][2]int{}}
}

func (r *countingRecorder) RestoreFailed(f proxier.Family) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.restoreFailed[f]++
}

func (r *countingRecorder) PartialSyncFailed(f proxier.Family) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.partialFailed[f]++
}

func (r *countingRecorder) IPTablesRules(f proxier.Family, table string, total, written int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rules[f.String()+"/"+table] = [2]int{total, written}
}

// The proxier reports kube-proxy's iptables figures: rules owned and written per table and
// family after each sync, a failed restore, and a failed partial sync (which makes the next full).
func TestSyncRecordsMetrics(t *testing.T) {
	ctx := context.Background()
	h := newFakeHost()
	rec := newCountingRecorder()
	o := h.options()
	o.Recorder = rec
	p, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	web := func(eps ...proxier.Endpoint) *proxier.ServicePort {
		return svc("default", "web", "http", v1.ProtocolTCP, "10.96.0.100", 80, eps...)
	}
	st := labState(web(ep("10.244.1.5:8080"), ep("10.244.2.7:8080")))
	if err := p.Sync(ctx, st, proxier.Changes{Full: true}); err != nil {
		t.Fatal(err)
	}
	nat := rec.rules["IPv4/nat"]
	if nat[0] == 0 || nat[0] != nat[1] || nat[0] != p.fams[0].ruleCounts[tableNAT] {
		t.Errorf("after a full sync nat rules (total, written) = %v, want both %d", nat, p.fams[0].ruleCounts[tableNAT])
	}
	if _, ok := rec.rules["IPv6/filter"]; !ok {
		t.Errorf("no IPv6 filter rule count reported: %v", rec.rules)
	}

	// A partial sync writes one chain: the total stays, written is that chain's rules.
	if err := p.Sync(ctx, labState(web(ep("10.244.1.5:8080"))), changes("default/web")); err != nil {
		t.Fatal(err)
	}
	if got := rec.rules["IPv4/nat"]; got[0] != p.fams[0].ruleCounts[tableNAT] || got[1] == 0 || got[1] >= got[0] {
		t.Errorf("after a partial sync nat rules (total, written) = %v, want total %d and a few written", got, p.fams[0].ruleCounts[tableNAT])
	}

	h.v4.fail = errors.New("xtables lock held")
	if err := p.Sync(ctx, st, changes("default/web")); err == nil {
		t.Fatal("sync with a failing restore succeeded")
	}
	if rec.restoreFailed[proxier.IPv4] != 1 || rec.partialFailed[proxier.IPv4] != 1 || rec.restoreFailed[proxier.IPv6] != 0 {
		t.Errorf("restore failures %v, partial sync failures %v; want one each in IPv4 only", rec.restoreFailed, rec.partialFailed)
	}
	// The retry is full: a failure there is no partial one.
	h.v4.fail = errors.New("xtables lock held")
	if err := p.Sync(ctx, st, changes()); err == nil {
		t.Fatal("sync with a failing restore succeeded")
	}
	if rec.restoreFailed[proxier.IPv4] != 2 || rec.partialFailed[proxier.IPv4] != 1 {
		t.Errorf("after a failed full sync: restore failures %v, partial %v; want 2 and 1", rec.restoreFailed, rec.partialFailed)
	}
	if got := p.Families(); len(got) != 2 || got[0] != proxier.IPv4 || got[1] != proxier.IPv6 {
		t.Errorf("Families() = %v", got)
	}
}
