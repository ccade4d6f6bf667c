package proxier_test

import (
	"fmt"
	"log/slog"
	"net/netip"
	"testing"

	"nodeagent/bench"
	"nodeagent/proxier"
)

// benchTracker runs step b.N times on a tracker that holds n services × 10 endpoints, for n of
// 1,000 and 25,000, each step followed by a Snapshot.
func benchTracker(b *testing.B, step func(tr *proxier.Tracker, n, k int)) {
	for _, n := range []int{1000, 25000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			tr := proxier.NewTracker(proxier.Node{Name: "bench-node"}, proxier.Config{}, slog.New(slog.DiscardHandler))
			for i := range n {
				tr.Upsert(bench.Service(i))
				tr.Upsert(bench.Slice(i, bench.Endpoints(i, 10)))
			}
			tr.Synced()
			tr.Snapshot()
			b.ResetTimer()
			for k := range b.N {
				step(tr, n, k)
				tr.Snapshot()
			}
		})
	}
}

// BenchmarkTrackerChange is the tracker's share of a one-endpoint change with many services.
func BenchmarkTrackerChange(b *testing.B) {
	eps := bench.Endpoints(7, 10)
	benchTracker(b, func(tr *proxier.Tracker, _, k int) {
		eps[0] = netip.AddrFrom4([4]byte{10, 250, byte(k >> 8), byte(k)})
		tr.Upsert(bench.Slice(7, eps))
	})
}

// BenchmarkTrackerAdd is the tracker's share of adding one service (and its slice) to many.
func BenchmarkTrackerAdd(b *testing.B) {
	benchTracker(b, func(tr *proxier.Tracker, n, k int) {
		tr.Upsert(bench.Service(n + k))
		tr.Upsert(bench.Slice(n+k, bench.Endpoints(n+k, 10)))
	})
}

// The patched State a change produces equals the one a fresh tracker computes from the same
// objects, through same-count changes, count changes, adds and deletes.
func TestTrackerPatchedStateMatchesFresh(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	tr := proxier.NewTracker(proxier.Node{Name: "bench-node"}, proxier.Config{}, log)
	eps := map[int][]netip.Addr{}
	for i := range 200 {
		eps[i] = bench.Endpoints(i, 3)
		tr.Upsert(bench.Service(i))
		tr.Upsert(bench.Slice(i, eps[i]))
	}
	tr.Synced()
	tr.Snapshot()
	for step := range 60 {
		i := (step * 37) % 200
		switch step % 4 {
		case 0: // replace an endpoint
			eps[i][0] = netip.AddrFrom4([4]byte{10, 250, 0, byte(step)})
			tr.Upsert(bench.Slice(i, eps[i]))
		case 1: // a service goes away
			tr.Delete(bench.Service(i))
			tr.Delete(bench.Slice(i, eps[i]))
			delete(eps, i)
		case 2: // one comes (back)
			eps[i] = bench.Endpoints(i, 2)
			tr.Upsert(bench.Service(i))
			tr.Upsert(bench.Slice(i, eps[i]))
		case 3: // two at once, one of them changing its endpoint count
			j := (i + 1) % 200
			if _, ok := eps[j]; ok {
				eps[j] = append(eps[j], netip.AddrFrom4([4]byte{10, 251, 0, byte(step)}))
				tr.Upsert(bench.Slice(j, eps[j]))
			}
			if _, ok := eps[i]; ok {
				eps[i][len(eps[i])-1] = netip.AddrFrom4([4]byte{10, 252, 0, byte(step)})
				tr.Upsert(bench.Slice(i, eps[i]))
			}
		}
		got, _ := tr.Snapshot()
		fresh := proxier.NewTracker(proxier.Node{Name: "bench-node"}, proxier.Config{}, log)
		for i, e := range eps {
			fresh.Upsert(bench.Service(i))
			fresh.Upsert(bench.Slice(i, e))
		}
		fresh.Synced()
		want, _ := fresh.Snapshot()
		if len(got.Services) != len(want.Services) {
			t.Fatalf("step %d: %d service ports, fresh tracker has %d", step, len(got.Services), len(want.Services))
		}
		n := 0
		for _, sp := range want.Services {
			n += len(sp.AllEndpoints)
		}
		if got.EndpointCount != n || want.EndpointCount != n {
			t.Fatalf("step %d: endpoint count %d (fresh tracker %d), want %d", step, got.EndpointCount, want.EndpointCount, n)
		}
		for k := range want.Services {
			g, w := got.Services[k], want.Services[k]
			if g.Name != w.Name || fmt.Sprint(g.AllEndpoints) != fmt.Sprint(w.AllEndpoints) {
				t.Fatalf("step %d, port %d: %s %v, fresh tracker has %s %v", step, k, g.Name, g.AllEndpoints, w.Name, w.AllEndpoints)
			}
		}
	}
}
