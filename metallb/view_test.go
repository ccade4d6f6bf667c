package metallb

import (
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"nodeagent/bgp"
	"nodeagent/lb"
)

// kindRecorder counts what reaches Next, by kind and name.
type kindRecorder struct {
	recorder
	nodes []string
}

func (r *kindRecorder) Upsert(obj runtime.Object) {
	if n, ok := obj.(*v1.Node); ok {
		r.nodes = append(r.nodes, n.Name)
	}
	r.recorder.Upsert(obj)
}

var quiet = slog.New(slog.DiscardHandler)

func readyNode(name string, labels map[string]string) *v1.Node {
	n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels, ResourceVersion: "1"}}
	n.Status.Conditions = []v1.NodeCondition{{Type: v1.NodeReady, Status: v1.ConditionTrue}}
	return n
}

func lbSvc(namespace, name string) *v1.Service {
	svc := &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}}
	svc.Spec.Type = v1.ServiceTypeLoadBalancer
	svc.Spec.ClusterIP = "10.96.0.10"
	svc.Spec.Ports = []v1.ServicePort{{Port: 80, Protocol: v1.ProtocolTCP}}
	return svc
}

// readySlice is an EndpointSlice of namespace/svc with one ready endpoint on each node.
func readySlice(namespace, svc string, nodes ...string) *discovery.EndpointSlice {
	s := &discovery.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: svc + "-x",
		Labels: map[string]string{discovery.LabelServiceName: svc}}, AddressType: discovery.AddressTypeIPv4}
	ready := true
	for i, n := range nodes {
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{Addresses: []string{netip.AddrFrom4([4]byte{10, 244, byte(i + 1), 10}).String()},
			NodeName: &n, Conditions: discovery.EndpointConditions{Ready: &ready}})
	}
	return s
}

func testPool(name string, addrs ...string) *lb.IPAddressPool {
	p := &lb.IPAddressPool{ObjectMeta: metav1.ObjectMeta{Namespace: "metallb-system", Name: name}}
	p.Spec.Addresses = addrs
	return p
}

// agents are speakers of three nodes fed the same objects, with every agent alive.
type agents struct {
	names    []string
	speakers map[string]*Speaker
	next     map[string]*kindRecorder
	mu       sync.Mutex
	owned    map[string]map[netip.Addr][]string
	calls    map[string]int
}

func newAgents(names ...string) *agents {
	a := &agents{names: names, speakers: map[string]*Speaker{}, next: map[string]*kindRecorder{},
		owned: map[string]map[netip.Addr][]string{}, calls: map[string]int{}}
	for _, n := range names {
		rec := &kindRecorder{recorder: recorder{services: map[string]*v1.Service{}}}
		a.next[n] = rec
		a.speakers[n] = New(Options{Node: n, Next: rec, Alive: func() []string { return names }, Log: quiet,
			Announce: func(o map[netip.Addr][]string) {
				a.mu.Lock()
				defer a.mu.Unlock()
				a.owned[n] = o
				a.calls[n]++
			}})
	}
	return a
}

func (a *agents) upsert(objs ...runtime.Object) {
	for _, n := range a.names {
		for _, o := range objs {
			a.speakers[n].Upsert(o.DeepCopyObject())
		}
	}
}

func (a *agents) synced() {
	for _, n := range a.names {
		a.speakers[n].Synced()
	}
}

// owners returns the nodes announcing addr.
func (a *agents) owners(addr netip.Addr) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for _, n := range a.names {
		if _, ok := a.owned[n][addr]; ok {
			out = append(out, n)
		}
	}
	return out
}

// Every agent that sees every Node picks the same single owner among the nodes an
// L2Advertisement's nodeSelectors select; a node that gets the exclude label hands its address
// to another selected node, and nothing is announced twice or left unannounced.
func TestOneOwnerAcrossAgents(t *testing.T) {
	a := newAgents("node01", "node02", "node03")
	ad := &lb.L2Advertisement{ObjectMeta: metav1.ObjectMeta{Namespace: "metallb-system", Name: "some"}}
	ad.Spec.NodeSelectors = []metav1.LabelSelector{{MatchLabels: map[string]string{"lb": "yes"}}}
	a.upsert(testPool("pool", "10.0.0.51-10.0.0.60"), ad,
		readyNode("node01", map[string]string{"lb": "yes"}), readyNode("node02", map[string]string{"lb": "yes"}),
		readyNode("node03", nil))
	var svcs []runtime.Object
	var addrs []netip.Addr
	for i, name := range []string{"a", "b", "c", "d", "e", "f"} {
		svc := lbSvc("default", name)
		svc.CreationTimestamp = metav1.NewTime(time.Unix(int64(i), 0))
		svcs = append(svcs, svc, readySlice("default", name, "node01", "node02", "node03"))
		addrs = append(addrs, netip.AddrFrom4([4]byte{10, 0, 0, byte(51 + i)}))
	}
	a.upsert(svcs...)
	a.synced()
	check := func(when string, allowed ...string) map[netip.Addr]string {
		t.Helper()
		out := map[netip.Addr]string{}
		for _, addr := range addrs {
			o := a.owners(addr)
			if len(o) != 1 {
				t.Fatalf("%s: %s announced by %v, want exactly one node", when, addr, o)
			}
			ok := false
			for _, n := range allowed {
				ok = ok || n == o[0]
			}
			if !ok {
				t.Errorf("%s: %s announced by %s, not one of %v", when, addr, o[0], allowed)
			}
			out[addr] = o[0]
		}
		return out
	}
	before := check("selected nodes", "node01", "node02")
	// Six addresses over two nodes: both own some (the hash spreads them).
	excluded := before[addrs[0]]
	other := map[string]string{"node01": "node02", "node02": "node01"}[excluded]

	// A heartbeat (no label or condition change) announces nothing anew, and no other node's
	// Node reaches the proxy.
	calls := func() int {
		a.mu.Lock()
		defer a.mu.Unlock()
		n := 0
		for _, c := range a.calls {
			n += c
		}
		return n
	}
	was := calls()
	hb := readyNode("node03", nil)
	hb.ResourceVersion = "2"
	hb.Status.Conditions[0].LastHeartbeatTime = metav1.NewTime(time.Unix(100, 0))
	a.upsert(hb)
	if calls() != was {
		t.Errorf("a heartbeat of node03 replanned the announcements")
	}
	for _, n := range a.names {
		for _, got := range a.next[n].nodes {
			if got != n {
				t.Errorf("%s's proxy was handed Node %s", n, got)
			}
		}
		want := 1
		if n == "node03" {
			want = 2 // its own heartbeat: the proxy decides what it needs of it
		}
		if len(a.next[n].nodes) != want {
			t.Errorf("%s's proxy got its Node %d times, want %d", n, len(a.next[n].nodes), want)
		}
	}

	a.upsert(readyNode(excluded, map[string]string{"lb": "yes", lb.LabelExcludeFromExternalLB: ""}))
	after := check(excluded+" excluded", other)
	for addr, n := range before {
		if n == other && after[addr] != other {
			t.Errorf("%s moved from %s though that node stayed usable", addr, n)
		}
	}
	// NotReady, then NetworkUnavailable, take a node out the same way.
	back := readyNode(excluded, map[string]string{"lb": "yes"})
	a.upsert(back)
	check(excluded+" back", "node01", "node02")
	notReady := back.DeepCopy()
	notReady.Status.Conditions[0].Status = v1.ConditionFalse
	a.upsert(notReady)
	check(excluded+" NotReady", other)
	// Deleting the Node of the other selected node leaves no selected node: nothing announced.
	for _, n := range a.names {
		a.speakers[n].Delete(readyNode(other, nil))
	}
	for _, addr := range addrs {
		if o := a.owners(addr); len(o) != 0 {
			t.Errorf("no selected node left, yet %s announced by %v", addr, o)
		}
	}
}

// A pool restricted by serviceAllocation.namespaceSelectors serves a namespace once its labels
// match, and stops when they change.
func TestNamespaceLabelsSelectPool(t *testing.T) {
	rec := &recorder{services: map[string]*v1.Service{}}
	s := New(Options{Node: "node01", Next: rec, Log: quiet})
	p := testPool("team", "10.0.0.51/32")
	p.Spec.AllocateTo = &lb.ServiceAllocation{NamespaceSelectors: []metav1.LabelSelector{{MatchLabels: map[string]string{"team": "a"}}}}
	s.Upsert(p)
	s.Upsert(lbSvc("apps", "web"))
	ns := &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "apps"}}
	s.Upsert(ns)
	s.Synced()
	if got := ingress(rec.services["web"]); got != "" {
		t.Fatalf("unlabelled namespace got %q from the team pool", got)
	}
	labelled := ns.DeepCopy()
	labelled.Labels = map[string]string{"team": "a"}
	s.Upsert(labelled)
	if got := ingress(rec.services["web"]); got != "10.0.0.51" {
		t.Fatalf("labelled namespace: web got %q, want 10.0.0.51", got)
	}
	// The proxy is not told about Namespaces.
	s.Upsert(ns)
	if got := ingress(rec.services["web"]); got != "" {
		t.Errorf("label removed: web kept %q", got)
	}
}

// A node labelled exclude-from-external-load-balancers keeps its BGP sessions and withdraws its
// load-balancer routes, as MetalLB's speaker does.
func TestBGPExcludedNodeWithdraws(t *testing.T) {
	rec := &recorder{services: map[string]*v1.Service{}}
	var mu sync.Mutex
	var peers []bgp.Peer
	var advs []bgp.Advertisement
	s := New(Options{Node: "node01", Next: rec, Log: quiet, BGP: func(p []bgp.Peer, a []bgp.Advertisement) {
		mu.Lock()
		defer mu.Unlock()
		peers, advs = p, a
	}})
	s.Upsert(testPool("pool", "10.0.0.51/32"))
	s.Upsert(bgpPeer("router", "10.0.0.254"))
	s.Upsert(&lb.BGPAdvertisement{ObjectMeta: metav1.ObjectMeta{Namespace: "metallb-system", Name: "all"}})
	s.Upsert(readyNode("node01", nil))
	s.Upsert(lbSvc("default", "web"))
	s.Upsert(readySlice("default", "web", "node02"))
	s.Synced()
	state := func() (int, int) {
		mu.Lock()
		defer mu.Unlock()
		return len(peers), len(advs)
	}
	poll(t, "a route to the peer", func() bool { p, a := state(); return p == 1 && a == 1 })
	s.Upsert(readyNode("node01", map[string]string{lb.LabelExcludeFromExternalLB: "true"}))
	poll(t, "the route withdrawn, the session kept", func() bool { p, a := state(); return p == 1 && a == 0 })
	unavailable := readyNode("node01", nil)
	unavailable.Status.Conditions = append(unavailable.Status.Conditions, v1.NodeCondition{Type: v1.NodeNetworkUnavailable, Status: v1.ConditionTrue})
	s.Upsert(unavailable)
	poll(t, "still withdrawn while NetworkUnavailable", func() bool { p, a := state(); return p == 1 && a == 0 })
	s.Upsert(readyNode("node01", nil))
	poll(t, "the route back", func() bool { p, a := state(); return p == 1 && a == 1 })
}

// With allocation off nothing is assigned, queued for writing or announced, and services reach
// the proxy exactly as they came, a stale status included.
func TestAllocationOffQueuesNothing(t *testing.T) {
	rec := &recorder{services: map[string]*v1.Service{}}
	var owned map[netip.Addr][]string
	s := New(Options{Node: "node01", Next: rec, Log: quiet, AllocationOff: true, WriteStatus: func(Status) {},
		Announce: func(o map[netip.Addr][]string) { owned = o }})
	s.Upsert(testPool("pool", "10.0.0.51-10.0.0.60"))
	s.Upsert(&lb.L2Advertisement{ObjectMeta: metav1.ObjectMeta{Namespace: "metallb-system", Name: "all"}})
	stale := lbSvc("default", "stale")
	stale.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "10.0.0.55"}}
	s.Upsert(stale)
	s.Upsert(lbSvc("default", "fresh"))
	s.Upsert(readySlice("default", "fresh", "node01"))
	s.Synced()
	s.RewriteStatuses()
	if len(s.pending) != 0 {
		t.Errorf("status writes queued: %v", s.pending)
	}
	if rec.services["stale"] != stale || ingress(rec.services["fresh"]) != "" {
		t.Errorf("services changed on their way to the proxy: stale %v, fresh %q", rec.services["stale"] == stale, ingress(rec.services["fresh"]))
	}
	if len(owned) != 0 {
		t.Errorf("announcing %v", owned)
	}
}

// Layer2Services follows what this node announces: a service while it owns the address, none
// once the node is excluded.
func TestLayer2ServicesFollowOwnership(t *testing.T) {
	rec := &recorder{services: map[string]*v1.Service{}}
	var got [][]L2Service
	s := New(Options{Node: "node01", Next: rec, Log: quiet, Alive: func() []string { return []string{"node01"} },
		Announce: func(map[netip.Addr][]string) {}, Layer2Services: func(l []L2Service) { got = append(got, l) }})
	s.Upsert(testPool("pool", "10.0.0.51/32"))
	ad := &lb.L2Advertisement{ObjectMeta: metav1.ObjectMeta{Namespace: "metallb-system", Name: "all"}}
	ad.Spec.Interfaces = []string{"ens33"}
	s.Upsert(ad)
	svc := lbSvc("default", "web")
	svc.UID = "uid-web"
	s.Upsert(svc)
	s.Upsert(readySlice("default", "web", "node01"))
	s.Upsert(readyNode("node01", nil))
	s.Synced()
	if len(got) != 1 || len(got[0]) != 1 || got[0][0].Service.Name != "web" || got[0][0].UID != "uid-web" ||
		len(got[0][0].Interfaces) != 1 || got[0][0].Interfaces[0] != "ens33" {
		t.Fatalf("announced services %+v", got)
	}
	s.Upsert(readyNode("node01", map[string]string{lb.LabelExcludeFromExternalLB: ""}))
	if len(got) != 2 || len(got[1]) != 0 {
		t.Errorf("after exclusion: %+v", got)
	}
}
