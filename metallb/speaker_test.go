package metallb

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	"nodeagent/bgp"
	"nodeagent/lb"
	"nodeagent/source"
)

func init() {
	source.Register[lb.IPAddressPool]("metallb.io/v1beta1", "IPAddressPool", source.Namespaced, lb.ValidateIPAddressPool)
	source.Register[lb.L2Advertisement]("metallb.io/v1beta1", "L2Advertisement", source.Namespaced, lb.ValidateL2Advertisement)
}

type recorder struct {
	mu       sync.Mutex
	services map[string]*v1.Service
	synced   bool
}

func (r *recorder) Upsert(obj runtime.Object) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if s, ok := obj.(*v1.Service); ok {
		r.services[s.Name] = s
	}
}
func (r *recorder) Delete(obj runtime.Object) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if s, ok := obj.(*v1.Service); ok {
		delete(r.services, s.Name)
	}
}
func (r *recorder) Synced() { r.synced = true }

func ingress(s *v1.Service) string {
	if s == nil || len(s.Status.LoadBalancer.Ingress) == 0 {
		return ""
	}
	return s.Status.LoadBalancer.Ingress[0].IP
}

// The seed's demoapp-lb gets 10.0.0.51 from the seed's pool, exactly one of the three nodes owns
// it, and removing the pool takes the address away again.
func TestSeedAssignmentAndOwner(t *testing.T) {
	objs, _, err := source.Load("../examples")
	if err != nil {
		t.Fatal(err)
	}
	owners := 0
	var writes []types.NamespacedName
	for _, node := range []string{"node01", "node02", "node03"} {
		rec := &recorder{services: map[string]*v1.Service{}}
		var owned map[netip.Addr][]string
		s := New(Options{Node: node, Next: rec, Announce: func(o map[netip.Addr][]string) { owned = o },
			WriteStatus: func(st Status) { writes = append(writes, st.Service) }})
		objs.Deliver(s)
		if !rec.synced {
			t.Fatal("Synced not passed on")
		}
		if got := ingress(rec.services["demoapp-lb"]); got != "10.0.0.51" {
			t.Fatalf("%s: demoapp-lb got %q, want 10.0.0.51", node, got)
		}
		if ifs, ok := owned[netip.MustParseAddr("10.0.0.51")]; ok {
			owners++
			if len(ifs) != 1 || ifs[0] != "ens33" {
				t.Errorf("%s announces on %v, want the L2Advertisement's ens33", node, ifs)
			}
		}
		// Status writes are queued for the leader.
		if len(s.pending) != 1 {
			t.Errorf("%s: pending status writes %v", node, s.pending)
		}
		for _, p := range objs.Keys() {
			if p.Kind == "IPAddressPool" {
				s.Delete(objs.Get(p))
			}
		}
		if got := ingress(rec.services["demoapp-lb"]); got != "" {
			t.Errorf("%s: after the pool went away demoapp-lb still has %q", node, got)
		}
		if len(owned) != 0 {
			t.Errorf("%s: still announcing %v", node, owned)
		}
	}
	if owners != 1 {
		t.Errorf("%d nodes own 10.0.0.51, want exactly 1", owners)
	}
}

// A service asking for an address no pool has is reported once, with a reference to the Service;
// again by ReportProblems (a new leader); and no more once the request is withdrawn.
func TestProblemsReported(t *testing.T) {
	objs, _, err := source.Load("../examples")
	if err != nil {
		t.Fatal(err)
	}
	type event struct {
		ref    v1.ObjectReference
		reason string
	}
	var got []event
	rec := &recorder{services: map[string]*v1.Service{}}
	s := New(Options{Node: "node01", Next: rec,
		Problem: func(ref v1.ObjectReference, p lb.Problem) { got = append(got, event{ref, p.Reason}) }})
	objs.Deliver(s)
	if len(got) != 0 {
		t.Fatalf("problems on the seed: %v", got)
	}
	bad := &v1.Service{}
	bad.Namespace, bad.Name, bad.UID = "default", "wants-outside", "uid-1"
	bad.Annotations = map[string]string{lb.AnnotationLoadBalancerIPs: "192.0.2.9"}
	bad.Spec.Type = v1.ServiceTypeLoadBalancer
	bad.Spec.Ports = []v1.ServicePort{{Port: 80, Protocol: v1.ProtocolTCP}}
	s.Upsert(bad)
	s.Upsert(bad.DeepCopy()) // the same problem again: not a new event
	if len(got) != 1 {
		t.Fatalf("got %d problem reports, want 1: %v", len(got), got)
	}
	want := v1.ObjectReference{Kind: "Service", APIVersion: "v1", Namespace: "default", Name: "wants-outside", UID: "uid-1"}
	if got[0].ref != want || got[0].reason == "" {
		t.Errorf("reported %+v %q, want %+v with a reason", got[0].ref, got[0].reason, want)
	}
	s.ReportProblems()
	if len(got) != 2 || got[1] != got[0] {
		t.Errorf("ReportProblems: %v", got)
	}
	ok := bad.DeepCopy()
	ok.Annotations = nil
	s.Upsert(ok)
	s.ReportProblems()
	if len(got) != 2 {
		t.Errorf("reports after the problem went away: %v", got[2:])
	}
	if ingress(rec.services["wants-outside"]) == "" {
		t.Error("without the annotation the service got no address")
	}
}

// bgpRecorder is an Options.BGP that records the plans handed to it; while block is open it
// holds every call, as a session that takes long to start or to close does.
type bgpRecorder struct {
	mu      sync.Mutex
	calls   int
	peers   []bgp.Peer
	entered chan struct{}
	block   chan struct{}
}

func (r *bgpRecorder) set(peers []bgp.Peer, _ []bgp.Advertisement) {
	select {
	case r.entered <- struct{}{}:
	default:
	}
	if r.block != nil {
		<-r.block
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	r.peers = peers
}

func (r *bgpRecorder) latest() (int, []bgp.Peer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls, r.peers
}

// poll waits until cond holds, failing the test after a generous deadline.
func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func bgpPeer(name, addr string) *lb.BGPPeer {
	p := &lb.BGPPeer{}
	p.Namespace, p.Name = "metallb-system", name
	p.Spec = lb.BGPPeerSpec{MyASN: 64513, ASN: 64512, Address: addr}
	return p
}

// Starting or stopping BGP sessions must not hold the lock every source event needs: with the
// BGP side stuck, a Service still reaches the proxy, and once it is free it gets the latest plan.
func TestBGPDoesNotBlockEvents(t *testing.T) {
	rec := &recorder{services: map[string]*v1.Service{}}
	b := &bgpRecorder{entered: make(chan struct{}, 1), block: make(chan struct{})}
	released := false
	release := func() {
		if !released {
			released = true
			close(b.block)
		}
	}
	defer release()
	s := New(Options{Node: "node01", Next: rec, BGP: b.set})
	go s.Synced() // the first plan: no peers, no routes
	select {
	case <-b.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("no BGP plan after Synced")
	}
	go s.Upsert(bgpPeer("router", "10.0.0.254"))
	svc := &v1.Service{}
	svc.Namespace, svc.Name = "default", "plain"
	svc.Spec.Type = v1.ServiceTypeClusterIP
	go s.Upsert(svc)
	deadline := time.Now().Add(5 * time.Second)
	for {
		rec.mu.Lock()
		got := rec.services["plain"] != nil
		rec.mu.Unlock()
		if got {
			break
		}
		if time.Now().After(deadline) {
			release()
			t.Fatal("a Service event waited for a BGP session to start")
		}
		time.Sleep(5 * time.Millisecond)
	}
	release()
	poll(t, "the plan with the peer", func() bool {
		_, peers := b.latest()
		return len(peers) == 1 && peers[0].Address == netip.MustParseAddr("10.0.0.254")
	})
}

// An edit that makes a BGPPeer or BGPAdvertisement invalid is reported and ignored: the previous
// version keeps its session and routes until a valid version or a deletion comes.
func TestInvalidBGPEditKeepsPrevious(t *testing.T) {
	rec := &recorder{services: map[string]*v1.Service{}}
	b := &bgpRecorder{entered: make(chan struct{}, 1)}
	var problems []string
	var mu sync.Mutex
	s := New(Options{Node: "node01", Next: rec, BGP: b.set, Problem: func(ref v1.ObjectReference, p lb.Problem) {
		mu.Lock()
		defer mu.Unlock()
		problems = append(problems, ref.Kind+" "+ref.Name+": "+p.Reason)
	}})
	s.Synced()
	planned := func() []bgp.Peer {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.bgpPlan == nil {
			return nil
		}
		return s.bgpPlan.peers
	}
	s.Upsert(bgpPeer("router", "10.0.0.254"))
	ad := &lb.BGPAdvertisement{}
	ad.Namespace, ad.Name = "metallb-system", "all"
	s.Upsert(ad)
	if p := planned(); len(p) != 1 || p[0].Address != netip.MustParseAddr("10.0.0.254") {
		t.Fatalf("planned peers %v", p)
	}

	s.Upsert(bgpPeer("router", "10.0.0.999"))
	if p := planned(); len(p) != 1 || p[0].Address != netip.MustParseAddr("10.0.0.254") {
		t.Errorf("after an invalid edit the plan has %v, want the previous peer", p)
	}
	bad := ad.DeepCopy()
	l := int32(33)
	bad.Spec.AggregationLength = &l
	s.Upsert(bad)
	s.mu.Lock()
	kept := s.bgpAds[key("metallb-system", "all")].Spec.AggregationLength == nil
	s.mu.Unlock()
	if !kept {
		t.Error("an invalid BGPAdvertisement edit replaced the valid one")
	}
	comm := &lb.Community{}
	comm.Namespace, comm.Name = "metallb-system", "aliases"
	comm.Spec.Communities = []lb.CommunityAlias{{Name: "no-advertise", Value: "65535:65282"}}
	s.Upsert(comm)
	badComm := comm.DeepCopy()
	badComm.Spec.Communities[0].Value = "65535:99999"
	s.Upsert(badComm)
	s.mu.Lock()
	kept = s.comms[key("metallb-system", "aliases")].Spec.Communities[0].Value == "65535:65282"
	s.mu.Unlock()
	if !kept {
		t.Error("an invalid Community edit replaced the valid one")
	}
	mu.Lock()
	if len(problems) != 3 || !strings.Contains(problems[0], "BGPPeer router: invalid edit ignored") ||
		!strings.Contains(problems[1], "BGPAdvertisement all: invalid edit ignored") ||
		!strings.Contains(problems[2], "Community aliases: invalid edit ignored") {
		t.Errorf("problems %q", problems)
	}
	mu.Unlock()
	// A new leader hears about them again.
	s.ReportProblems()
	mu.Lock()
	if len(problems) != 6 {
		t.Errorf("ReportProblems: %q", problems[3:])
	}
	mu.Unlock()

	s.Upsert(bgpPeer("router", "10.0.0.253"))
	if p := planned(); len(p) != 1 || p[0].Address != netip.MustParseAddr("10.0.0.253") {
		t.Errorf("a valid edit after an invalid one: plan %v", p)
	}
	s.Upsert(bgpPeer("router", "bogus"))
	s.Delete(bgpPeer("router", "bogus"))
	if p := planned(); len(p) != 0 {
		t.Errorf("after deletion the plan has %v", p)
	}
	// An invalid object with no valid predecessor is left out, as before.
	s.Upsert(bgpPeer("other", "bogus"))
	if p := planned(); len(p) != 0 {
		t.Errorf("an invalid new peer planned: %v", p)
	}
	poll(t, "the last plan delivered", func() bool { n, peers := b.latest(); return n > 0 && len(peers) == 0 })
}

// An invalid edit of a pool or an L2Advertisement keeps the previous version in force, as for the
// BGP kinds: a typo in a pool must not take back every address it gave.
func TestInvalidPoolAndL2EditKeepPrevious(t *testing.T) {
	rec := &recorder{services: map[string]*v1.Service{}}
	var problems []string
	var mu sync.Mutex
	s := New(Options{Node: "node01", Next: rec, Problem: func(ref v1.ObjectReference, p lb.Problem) {
		mu.Lock()
		defer mu.Unlock()
		problems = append(problems, ref.Kind+" "+ref.Name+": "+p.Reason)
	}})
	s.Synced()
	pool := &lb.IPAddressPool{ObjectMeta: metav1.ObjectMeta{Namespace: "metallb-system", Name: "pool"}}
	pool.Spec.Addresses = []string{"10.0.0.51-10.0.0.80"}
	s.Upsert(pool)
	bad := pool.DeepCopy()
	bad.Spec.Addresses = []string{"10.0.0.51-banana"}
	s.Upsert(bad)
	l2 := &lb.L2Advertisement{ObjectMeta: metav1.ObjectMeta{Namespace: "metallb-system", Name: "l2"}}
	l2.Spec.Interfaces = []string{"ens33"}
	s.Upsert(l2)
	badL2 := l2.DeepCopy()
	badL2.Spec.Interfaces = []string{"not/an interface"}
	s.Upsert(badL2)
	s.mu.Lock()
	keptPool := s.pools[key("metallb-system", "pool")].Spec.Addresses[0] == "10.0.0.51-10.0.0.80"
	keptL2 := s.l2ads[key("metallb-system", "l2")].Spec.Interfaces[0] == "ens33"
	s.mu.Unlock()
	if !keptPool || !keptL2 {
		t.Errorf("previous versions kept: pool %v, L2Advertisement %v", keptPool, keptL2)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(problems) != 2 || !strings.Contains(problems[0], "IPAddressPool pool: invalid edit ignored") ||
		!strings.Contains(problems[1], "L2Advertisement l2: invalid edit ignored") {
		t.Errorf("problems %q", problems)
	}
}
