package proxier_test

import (
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"nodeagent/bench"
	"nodeagent/proxier"
)

// benchTracker runs step b.N times on a tracker that holds n services × 10 endpoints, for n of
// 1,000 and 25,000, each step followed by a Next that hands back the previous State, as the
// agent's sync loop does.
func benchTracker(b *testing.B, step func(tr *proxier.Tracker, n, k int)) {
	for _, n := range []int{1000, 25000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			tr := proxier.NewTracker(proxier.Node{Name: "bench-node"}, proxier.Config{}, slog.New(slog.DiscardHandler))
			for i := range n {
				tr.Upsert(bench.Service(i))
				tr.Upsert(bench.Slice(i, bench.Endpoints(i, 10)))
			}
			tr.Synced()
			st, _ := tr.Snapshot()
			b.ResetTimer()
			for k := range b.N {
				step(tr, n, k)
				st, _ = tr.Next(st)
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

// service is a Service default/name of type NodePort with cluster IP cip, one port "http" 80/TCP
// with node port np, created at t0 plus age.
func service(name, cip string, np int32, age time.Duration, opts ...func(*v1.Service)) *v1.Service {
	s := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, UID: types.UID("uid-" + name),
			CreationTimestamp: metav1.NewTime(t0.Add(age))},
		Spec: v1.ServiceSpec{Type: v1.ServiceTypeNodePort, ClusterIP: cip, ClusterIPs: []string{cip},
			Ports: []v1.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80, NodePort: np}}},
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

func withExternalIPs(ips ...string) func(*v1.Service) {
	return func(s *v1.Service) { s.Spec.ExternalIPs = ips }
}

func withIngress(ips ...string) func(*v1.Service) {
	return func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		for _, ip := range ips {
			s.Status.LoadBalancer.Ingress = append(s.Status.LoadBalancer.Ingress, v1.LoadBalancerIngress{IP: ip})
		}
	}
}

// endpointSlice is an EndpointSlice of service default/svc with one ready endpoint on 8080.
func endpointSlice(svc, ip string) *discovery.EndpointSlice {
	name, proto, port := "http", v1.ProtocolTCP, int32(8080)
	return &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: svc + "-1",
			Labels: map[string]string{discovery.LabelServiceName: svc}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: &name, Protocol: &proto, Port: &port}},
		Endpoints:   []discovery.Endpoint{{Addresses: []string{ip}}},
	}
}

type event struct {
	svc    v1.ObjectReference
	reason string
}

// conflictTracker returns a tracker that records what it tells OnConflict.
func conflictTracker(events *[]event) *proxier.Tracker {
	tr := proxier.NewTracker(proxier.Node{Name: "node01"}, proxier.Config{}, slog.New(slog.DiscardHandler))
	tr.OnConflict = func(svc v1.ObjectReference, reason string) { *events = append(*events, event{svc, reason}) }
	return tr
}

// frontends describes the state's ports by service name, sorted.
func frontends(st *proxier.State) string {
	var out []string
	for _, sp := range st.Services {
		out = append(out, sp.Name.Name+" "+describe(sp))
	}
	return strings.Join(out, "; ")
}

// A Service whose external IP, or load-balancer IP, is another's cluster IP and port takes
// nothing from it: the victim keeps its cluster IP and node port, the other service loses that
// one frontend only and keeps the rest, and the loser is reported, once.
func TestTrackerFrontendTakeover(t *testing.T) {
	for _, c := range []struct {
		name     string
		attacker *v1.Service
		want     string
		reason   string
	}{
		{
			name: "external IP",
			// Older than the victim, and sorting before it: neither age nor name may win a cluster IP.
			attacker: service("aaa", "10.96.0.20", 30020, -time.Hour, withExternalIPs("10.96.0.10", "192.0.2.7")),
			want:     "aaa 10.96.0.20:80 ext[192.0.2.7] np30020; victim 10.96.0.10:80 np30010",
			reason:   "external IP 10.96.0.10:80/TCP of port http/TCP left out: it is also the cluster IP of default/victim",
		},
		{
			name:     "load-balancer IP",
			attacker: service("aaa", "10.96.0.20", 30020, -time.Hour, withIngress("10.96.0.10", "198.51.100.7")),
			want:     "aaa 10.96.0.20:80 lb[198.51.100.7] np30020; victim 10.96.0.10:80 np30010",
			reason:   "load-balancer IP 10.96.0.10:80/TCP of port http/TCP left out: it is also the cluster IP of default/victim",
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			for _, order := range []string{"victim first", "attacker first", "attacker later"} {
				var events []event
				tr := conflictTracker(&events)
				victim := service("victim", "10.96.0.10", 30010, 0)
				switch order {
				case "victim first":
					tr.Upsert(victim)
					tr.Upsert(c.attacker)
				case "attacker first":
					tr.Upsert(c.attacker)
					tr.Upsert(victim)
				case "attacker later":
					tr.Upsert(victim)
					tr.Synced()
					tr.Snapshot()
					tr.Upsert(c.attacker)
				}
				tr.Synced()
				st, ch := tr.Snapshot()
				if got := frontends(st); got != c.want {
					t.Fatalf("%s: state %s, want %s", order, got, c.want)
				}
				if order == "attacker later" && ch.Changed(types.NamespacedName{Namespace: "default", Name: "victim"}) {
					t.Errorf("%s: the victim, which lost nothing, is marked changed", order)
				}
				if len(st.Problems) != 1 || st.Problems[0].Object.Name != "aaa" || st.Problems[0].Reason != c.reason {
					t.Errorf("%s: problems %v", order, st.Problems)
				}
				if len(events) != 1 || events[0].svc.Name != "aaa" || events[0].svc.UID != "uid-aaa" || events[0].reason != c.reason {
					t.Errorf("%s: events %v", order, events)
				}
				// Nothing new, nothing reported again, though both services change; a new
				// leader hears it again.
				for _, n := range []string{"aaa", "victim"} {
					tr.Upsert(endpointSlice(n, "10.244.0.5"))
				}
				if st, _ := tr.Snapshot(); frontends(st) != c.want || len(st.Problems) != 1 {
					t.Errorf("%s: after an endpoint change: %s, problems %v", order, frontends(st), st.Problems)
				}
				tr.ReportConflicts()
				if len(events) != 2 || events[1] != events[0] {
					t.Errorf("%s: events after a resync and a report %v", order, events)
				}
				// The attacker gone, nothing is left of the conflict.
				tr.Delete(c.attacker)
				st, _ = tr.Snapshot()
				if got := frontends(st); got != "victim 10.96.0.10:80 np30010" || len(st.Problems) != 0 {
					t.Errorf("%s: after the attacker left: %s, problems %v", order, got, st.Problems)
				}
			}
		})
	}
}

// Two external IPs on one address and port: the older service keeps it, then the first by
// namespace and name, whatever the order the objects arrive in; the loser keeps its cluster IP,
// node port and other external IPs.
func TestTrackerExternalIPTie(t *testing.T) {
	for _, c := range []struct {
		name   string
		a, b   *v1.Service
		want   string
		loser  string
		reason string
	}{
		{
			name:   "older wins",
			a:      service("a", "10.96.0.1", 30001, time.Minute, withExternalIPs("192.0.2.1", "192.0.2.2")),
			b:      service("b", "10.96.0.2", 30002, 0, withExternalIPs("192.0.2.1")),
			want:   "a 10.96.0.1:80 ext[192.0.2.2] np30001; b 10.96.0.2:80 ext[192.0.2.1] np30002",
			loser:  "a",
			reason: "external IP 192.0.2.1:80/TCP of port http/TCP left out: it is also the external IP of default/b",
		},
		{
			name:   "same age: name wins",
			a:      service("a", "10.96.0.1", 30001, 0, withExternalIPs("192.0.2.1")),
			b:      service("b", "10.96.0.2", 30002, 0, withExternalIPs("192.0.2.1", "192.0.2.2")),
			want:   "a 10.96.0.1:80 ext[192.0.2.1] np30001; b 10.96.0.2:80 ext[192.0.2.2] np30002",
			loser:  "b",
			reason: "external IP 192.0.2.1:80/TCP of port http/TCP left out: it is also the external IP of default/a",
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			for _, abFirst := range []bool{true, false} {
				var events []event
				tr := conflictTracker(&events)
				if abFirst {
					tr.Upsert(c.a)
					tr.Upsert(c.b)
				} else {
					tr.Upsert(c.b)
					tr.Synced()
					tr.Snapshot()
					tr.Upsert(c.a)
				}
				tr.Synced()
				st, _ := tr.Snapshot()
				if got := frontends(st); got != c.want {
					t.Fatalf("state %s, want %s", got, c.want)
				}
				if len(events) != 1 || events[0].svc.Name != c.loser || events[0].reason != c.reason {
					t.Errorf("events %v", events)
				}
			}
		})
	}
}

// Two Services with the same node port (the API server forbids it; hostile manifests do not):
// the older keeps it, the other keeps its cluster IP.
func TestTrackerNodePortTie(t *testing.T) {
	var events []event
	tr := conflictTracker(&events)
	tr.Upsert(service("a", "10.96.0.1", 30080, time.Minute))
	tr.Upsert(service("b", "10.96.0.2", 30080, 0))
	tr.Synced()
	st, _ := tr.Snapshot()
	if got, want := frontends(st), "a 10.96.0.1:80; b 10.96.0.2:80 np30080"; got != want {
		t.Fatalf("state %s, want %s", got, want)
	}
	if len(events) != 1 || events[0].svc.Name != "a" {
		t.Errorf("events %v", events)
	}
}

// The incrementally resolved state equals the one a fresh tracker computes, through services
// that take, share and give back frontends in every way.
func TestTrackerConflictsMatchFresh(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	rng := rand.New(rand.NewPCG(3, 4))
	cips := []string{"10.96.0.1", "10.96.0.2", "10.96.0.3", "10.96.0.4", "10.96.0.5", "10.96.0.6"}
	ext := []string{"10.96.0.1", "10.96.0.2", "10.96.0.3", "192.0.2.1", "192.0.2.2"}
	nps := []int32{30001, 30002, 30003, 30004, 30005}
	random := func(i int) *v1.Service {
		var opts []func(*v1.Service)
		var ips []string
		for range rng.IntN(3) {
			ips = append(ips, ext[rng.IntN(len(ext))]) // repeats included
		}
		opts = append(opts, withExternalIPs(ips...))
		if rng.IntN(3) == 0 {
			opts = append(opts, withIngress(ext[rng.IntN(len(ext))]))
		}
		return service(fmt.Sprint("s", i), cips[rng.IntN(len(cips))], nps[rng.IntN(len(nps))], time.Duration(rng.IntN(3))*time.Minute, opts...)
	}
	live := map[int]*v1.Service{}
	tr := proxier.NewTracker(proxier.Node{Name: "node01"}, proxier.Config{}, log)
	tr.Synced()
	for step := range 400 {
		for range 1 + rng.IntN(3) {
			i := rng.IntN(8)
			if s, ok := live[i]; ok && rng.IntN(3) == 0 {
				tr.Delete(s)
				delete(live, i)
				continue
			}
			live[i] = random(i)
			tr.Upsert(live[i])
		}
		got, _ := tr.Snapshot()
		fresh := proxier.NewTracker(proxier.Node{Name: "node01"}, proxier.Config{}, log)
		for _, s := range live {
			fresh.Upsert(s)
		}
		fresh.Synced()
		want, _ := fresh.Snapshot()
		if frontends(got) != frontends(want) || fmt.Sprint(got.Problems) != fmt.Sprint(want.Problems) {
			t.Fatalf("step %d:\n%s\n%v\nfresh tracker:\n%s\n%v", step, frontends(got), got.Problems, frontends(want), want.Problems)
		}
		if err := uniqueFrontends(got); err != nil {
			t.Fatalf("step %d: %v in %s", step, err, frontends(got))
		}
	}
}

// uniqueFrontends checks that no two service ports of st, and no port twice, ask for one address,
// port and protocol, or one node port.
func uniqueFrontends(st *proxier.State) error {
	type key struct {
		addr  netip.Addr
		port  uint16
		proto v1.Protocol
		node  bool
	}
	owner := map[key]proxier.ServicePortName{}
	for _, sp := range st.Services {
		keys := []key{{sp.ClusterIP, sp.Port, sp.Name.Protocol, false}}
		for _, a := range append(slices.Clone(sp.ExternalIPs), sp.LoadBalancerIPs...) {
			keys = append(keys, key{a, sp.Port, sp.Name.Protocol, false})
		}
		if sp.NodePort != 0 {
			keys = append(keys, key{netip.IPv4Unspecified(), sp.NodePort, sp.Name.Protocol, true})
		}
		for _, k := range keys {
			if o, ok := owner[k]; ok {
				return fmt.Errorf("%s port %d/%s (node port: %v) asked for by %s and %s", k.addr, k.port, k.proto, k.node, o, sp.Name)
			}
			owner[k] = sp.Name
		}
	}
	return nil
}

// A Service's own repeated frontends (an external IP that is its cluster IP, an address listed
// twice) reach no proxier: with internalTrafficPolicy Local they would put one key with two
// different endpoint lists into a kernel map.
func TestTrackerDropsOwnRepeats(t *testing.T) {
	var events []event
	tr := conflictTracker(&events)
	local := v1.ServiceInternalTrafficPolicyLocal
	tr.Upsert(service("self", "10.96.0.10", 30010, 0, withExternalIPs("10.96.0.10", "192.0.2.1", "192.0.2.1"),
		func(s *v1.Service) { s.Spec.InternalTrafficPolicy = &local }))
	tr.Synced()
	st, _ := tr.Snapshot()
	if got, want := frontends(st), "self 10.96.0.10:80 ext[192.0.2.1] np30010"; got != want {
		t.Fatalf("state %s, want %s", got, want)
	}
	if len(st.Problems) != 0 || len(events) != 0 {
		t.Errorf("problems %v, events %v", st.Problems, events)
	}
}
