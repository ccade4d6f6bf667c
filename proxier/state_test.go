package proxier_test

import (
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"nodeagent/bench"
	"nodeagent/proxier"
)

// fingerprint is everything a proxier reads of st, ServicePort pointers included.
func fingerprint(st *proxier.State) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d ports, %d endpoints, problems %v\n", len(st.Services), st.EndpointCount, st.Problems)
	for _, sp := range st.Services {
		fmt.Fprintf(&b, "%p %s %s %v\n", sp, sp.Name, describe(sp), sp.AllEndpoints)
	}
	return b.String()
}

// churn changes the tracker's objects at step: an endpoint moves, a service goes or comes back,
// or several change at once (more than the view patches one by one).
func churn(tr *proxier.Tracker, eps map[int][]netip.Addr, step int) {
	i := (step * 37) % 100
	switch step % 4 {
	case 0:
		if e, ok := eps[i]; ok {
			e[0] = netip.AddrFrom4([4]byte{10, 250, 0, byte(step)})
			tr.Upsert(bench.Slice(i, e))
		}
	case 1:
		if e, ok := eps[i]; ok {
			tr.Delete(bench.Service(i))
			tr.Delete(bench.Slice(i, e))
			delete(eps, i)
		}
	case 2:
		eps[i] = bench.Endpoints(i, 1+step%3)
		tr.Upsert(bench.Service(i))
		tr.Upsert(bench.Slice(i, eps[i]))
	case 3:
		for j := range 70 {
			if e, ok := eps[j]; ok {
				e[len(e)-1] = netip.AddrFrom4([4]byte{10, 251, byte(j), byte(step)})
				tr.Upsert(bench.Slice(j, e))
			}
		}
	}
}

func churnTracker() (*proxier.Tracker, map[int][]netip.Addr) {
	tr := proxier.NewTracker(proxier.Node{Name: "bench-node"}, proxier.Config{}, slog.New(slog.DiscardHandler))
	eps := map[int][]netip.Addr{}
	for i := range 100 {
		eps[i] = bench.Endpoints(i, 3)
		tr.Upsert(bench.Service(i))
		tr.Upsert(bench.Slice(i, eps[i]))
	}
	tr.Synced()
	return tr, eps
}

// A State nobody handed back stays as it was, whatever the tracker builds after it: by Snapshot,
// by Next from the latest State, or by Next from an older one.
func TestStateNeverChangesUnderItsHolder(t *testing.T) {
	tr, eps := churnTracker()
	type held struct {
		st   *proxier.State
		was  string
		step int
	}
	var kept []held
	var chain *proxier.State // handed back at each Next
	for step := range 48 {
		churn(tr, eps, step)
		switch step % 3 {
		case 0: // kept by its holder
			st, _ := tr.Snapshot()
			kept = append(kept, held{st, fingerprint(st), step})
		case 1: // an older State handed back: the latest, kept above, must not be reused
			chain, _ = tr.Next(chain)
		case 2: // the latest handed back
			chain, _ = tr.Next(chain)
		}
		for _, h := range kept {
			if got := fingerprint(h.st); got != h.was {
				t.Fatalf("step %d: the State of step %d changed under its holder:\n%s\nwas\n%s", step, h.step, got, h.was)
			}
		}
	}
}

// Next builds the new State in the memory of the one handed back, empties that one, and
// computes what a fresh tracker computes.
func TestNextReusesHandedBackState(t *testing.T) {
	tr, eps := churnTracker()
	prev, _ := tr.Snapshot()
	for step := range 40 {
		churn(tr, eps, step)
		old := prev.Services
		st, _ := tr.Next(prev)
		if prev.Services != nil || prev.EndpointCount != 0 {
			t.Fatalf("step %d: the State handed back still holds %d ports", step, len(prev.Services))
		}
		if step%4 == 0 && &st.Services[0] != &old[0] {
			t.Errorf("step %d: one endpoint changed, yet the ports were laid out in new memory", step)
		}
		fresh := proxier.NewTracker(proxier.Node{Name: "bench-node"}, proxier.Config{}, slog.New(slog.DiscardHandler))
		for i, e := range eps {
			fresh.Upsert(bench.Service(i))
			fresh.Upsert(bench.Slice(i, e))
		}
		fresh.Synced()
		want, _ := fresh.Snapshot()
		if got, want := contents(st), contents(want); got != want {
			t.Fatalf("step %d:\n%s\nfresh tracker:\n%s", step, got, want)
		}
		prev = st
	}
}

// contents is fingerprint without pointers.
func contents(st *proxier.State) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d ports, %d endpoints, problems %v\n", len(st.Services), st.EndpointCount, st.Problems)
	for _, sp := range st.Services {
		fmt.Fprintf(&b, "%s %s %v\n", sp.Name, describe(sp), sp.AllEndpoints)
	}
	return b.String()
}
