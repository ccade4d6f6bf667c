package metallb

import (
	"net/netip"
	"sync"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

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
			WriteStatus: func(k types.NamespacedName, _ []v1.LoadBalancerIngress) { writes = append(writes, k) }})
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
		Problem: func(ref v1.ObjectReference, reason string) { got = append(got, event{ref, reason}) }})
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
