package proxier_test

import (
	"log/slog"
	"net/netip"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"

	"nodeagent/bench"
	"nodeagent/proxier"
)

// triggered is bench's slice i with endpoints eps and a last-change-trigger-time of at.
func triggered(i int, at time.Time, eps ...netip.Addr) *discovery.EndpointSlice {
	s := bench.Slice(i, eps)
	s.Annotations = map[string]string{v1.EndpointsLastChangeTriggerTime: at.Format(time.RFC3339Nano)}
	return s
}

// The tracker counts Service and EndpointSlice events as kube-proxy's change trackers do, and
// hands a Snapshot the trigger times of the slice changes made after it started: not those of
// older changes (an agent restarting would report the age of every slice), not unchanged
// updates, not removals.
func TestTrackerChangeCountsAndTriggers(t *testing.T) {
	before := time.Now().Add(-time.Second)
	tr := proxier.NewTracker(proxier.Node{Name: "node01"}, proxier.Config{}, slog.New(slog.DiscardHandler))
	after := time.Now().Add(time.Millisecond)
	eps := bench.Endpoints(0, 2)

	tr.Upsert(bench.Service(0))
	tr.Upsert(bench.Service(0)) // unchanged: counted, not pending twice
	tr.Upsert(triggered(0, before, eps[0]))
	tr.Upsert(triggered(1, after, eps[1]))
	headless := bench.Service(2)
	headless.Labels = map[string]string{proxier.LabelHeadless: ""}
	tr.Upsert(headless) // kube-proxy's informers never deliver it
	fqdn := triggered(2, after, eps[0])
	fqdn.AddressType = discovery.AddressTypeFQDN
	fqdn.Name = "fqdn"
	tr.Upsert(fqdn)
	got := tr.ChangeCounts()
	want := proxier.ChangeCounts{ServiceChanges: 2, EndpointChanges: 2, ServicesPending: 1, EndpointChangesPending: 2}
	if got != want {
		t.Errorf("counts %+v, want %+v", got, want)
	}
	tr.Synced()
	_, ch := tr.Snapshot()
	if len(ch.Triggers) != 1 || !ch.Triggers[0].Time.Equal(after) || ch.Triggers[0].Family != proxier.IPv4 {
		t.Errorf("triggers %v, want only %v (IPv4): %v is before the tracker started", ch.Triggers, after, before)
	}
	if c := tr.ChangeCounts(); c.ServicesPending != 0 || c.EndpointChangesPending != 0 {
		t.Errorf("after a snapshot pending counts are %+v, want 0", c)
	}

	// Unchanged endpoints under a new trigger time: nothing to program, nothing measured.
	tr.Upsert(triggered(1, after.Add(time.Second), eps[1]))
	// A removal's annotation dates from the slice's last update.
	tr.Delete(triggered(0, after.Add(2*time.Second), eps[0]))
	if _, ch := tr.Snapshot(); len(ch.Triggers) != 0 {
		t.Errorf("unchanged update and removal gave triggers %v", ch.Triggers)
	}
	if c := tr.ChangeCounts(); c.EndpointChanges != 4 {
		t.Errorf("endpoint changes %d, want 4 (every event counts)", c.EndpointChanges)
	}
}

// Changes of a failed sync keep their trigger times when merged with the next, up to MaxTriggers.
func TestChangesMergeKeepsTriggers(t *testing.T) {
	at := time.Now()
	a := proxier.Changes{Triggers: []proxier.Trigger{{Family: proxier.IPv4, Time: at}}}
	b := proxier.Changes{Triggers: []proxier.Trigger{{Family: proxier.IPv6, Time: at}}}
	if m := a.Merge(b); len(m.Triggers) != 2 || m.Triggers[1].Family != proxier.IPv6 {
		t.Errorf("merged triggers %v", m.Triggers)
	}
	if len(a.Triggers) != 1 {
		t.Errorf("Merge changed its receiver: %v", a.Triggers)
	}
	big := proxier.Changes{Triggers: make([]proxier.Trigger, proxier.MaxTriggers)}
	if m := big.Merge(b); len(m.Triggers) != proxier.MaxTriggers {
		t.Errorf("merged %d triggers, want at most %d", len(m.Triggers), proxier.MaxTriggers)
	}
}
