package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"

	"nodeagent/lb"
	"nodeagent/metallb"
	"nodeagent/proxier"
)

// A Service that loses a frontend to another gets a FrontendConflict Warning, from the leader
// only, and again from a new leader.
func TestFrontendConflictEvents(t *testing.T) {
	rec := record.NewFakeRecorder(10)
	w := &statusWriter{log: slog.New(slog.DiscardHandler), events: rec}
	tr := proxier.NewTracker(proxier.Node{Name: "node01"}, proxier.Config{}, slog.New(slog.DiscardHandler))
	tr.OnConflict = w.frontendConflict
	svc := func(name, cip string, external ...string) *v1.Service {
		return &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
			Spec: v1.ServiceSpec{ClusterIP: cip, ClusterIPs: []string{cip}, ExternalIPs: external,
				Ports: []v1.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80}}}}
	}
	tr.Upsert(svc("victim", "10.96.0.10"))
	tr.Upsert(svc("attacker", "10.96.0.20", "10.96.0.10"))
	tr.Synced()
	tr.Snapshot()
	if len(rec.Events) != 0 {
		t.Fatalf("an agent that does not lead recorded %q", <-rec.Events)
	}
	w.leader.Store(true)
	tr.ReportConflicts()
	select {
	case e := <-rec.Events:
		if !strings.HasPrefix(e, "Warning FrontendConflict external IP 10.96.0.10:80/TCP of port http/TCP left out") {
			t.Errorf("event %q", e)
		}
	default:
		t.Fatalf("no event")
	}
}

// lbStatusFixture is a leader's status writer on a fake API server holding services, with a
// speaker feeding it and a tracker behind the speaker.
type lbStatusFixture struct {
	client  *fake.Clientset
	events  *record.FakeRecorder
	speaker *metallb.Speaker
	next    *proxier.Tracker
}

func newLBStatusFixture(t *testing.T, o metallb.Options, services ...*v1.Service) *lbStatusFixture {
	t.Helper()
	f := &lbStatusFixture{client: fake.NewClientset(), events: record.NewFakeRecorder(20)}
	// The API server takes a patch's metadata.resourceVersion as a precondition; the fake does not.
	f.client.PrependReactor("patch", "services", func(a k8stesting.Action) (bool, runtime.Object, error) {
		p := a.(k8stesting.PatchAction)
		var body struct {
			Metadata struct {
				ResourceVersion string `json:"resourceVersion"`
			} `json:"metadata"`
		}
		if err := json.Unmarshal(p.GetPatch(), &body); err != nil || body.Metadata.ResourceVersion == "" {
			return false, nil, nil
		}
		cur, err := f.client.Tracker().Get(v1.SchemeGroupVersion.WithResource("services"), p.GetNamespace(), p.GetName())
		if err != nil {
			return false, nil, nil
		}
		if rv := cur.(*v1.Service).ResourceVersion; rv != body.Metadata.ResourceVersion {
			return true, nil, apierrors.NewConflict(v1.Resource("services"), p.GetName(), fmt.Errorf("version %s, not %s", rv, body.Metadata.ResourceVersion))
		}
		return false, nil, nil
	})
	quiet := slog.New(slog.DiscardHandler)
	w := &statusWriter{client: f.client, log: quiet, events: f.events}
	w.leader.Store(true)
	f.next = proxier.NewTracker(proxier.Node{Name: "node01"}, proxier.Config{}, quiet)
	o.Node, o.Next, o.WriteStatus, o.Log = "node01", f.next, w.write, quiet
	f.speaker = metallb.New(o)
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	go f.speaker.WriteStatuses(done)
	pool := &lb.IPAddressPool{ObjectMeta: metav1.ObjectMeta{Namespace: "metallb-system", Name: "localip-pool"}}
	pool.Spec.Addresses = []string{"10.0.0.51-10.0.0.80"}
	f.speaker.Upsert(pool)
	for _, svc := range services {
		created, err := f.client.CoreV1().Services(svc.Namespace).Create(context.Background(), svc, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		f.speaker.Upsert(created)
	}
	f.speaker.Synced()
	return f
}

func (f *lbStatusFixture) get(t *testing.T, name string) *v1.Service {
	t.Helper()
	svc, err := f.client.CoreV1().Services("default").Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

// patched lists the services the writer patched, in order.
func (f *lbStatusFixture) patched() []string {
	var out []string
	for _, a := range f.client.Actions() {
		if p, ok := a.(k8stesting.PatchAction); ok {
			out = append(out, p.GetName()+"/"+p.GetSubresource())
		}
	}
	return out
}

func lbService(name string, ingress ...v1.LoadBalancerIngress) *v1.Service {
	svc := &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, UID: types.UID("uid-" + name)},
		Spec: v1.ServiceSpec{Type: v1.ServiceTypeLoadBalancer, ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"},
			Ports: []v1.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80}}}}
	svc.Status.LoadBalancer.Ingress = ingress
	return svc
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The leader writes what it assigns — status, the pool annotation under both of MetalLB's
// spellings, an IPAllocated Event — and never clears or rewrites an ingress entry it did not
// assign: a cloud's address outside every pool stays, unannotated, and is proxied.
func TestStatusWriterLeavesForeignIngress(t *testing.T) {
	cloud := lbService("cloud", v1.LoadBalancerIngress{IP: "192.168.1.1"})
	f := newLBStatusFixture(t, metallb.Options{}, cloud, lbService("plain"))
	waitFor(t, "plain's status", func() bool {
		s := f.get(t, "plain")
		return len(s.Status.LoadBalancer.Ingress) == 1 && s.Annotations[lb.AnnotationAllocatedFromPool] != ""
	})
	plain := f.get(t, "plain")
	if ip := plain.Status.LoadBalancer.Ingress[0].IP; ip != "10.0.0.51" {
		t.Errorf("plain got %s, want 10.0.0.51", ip)
	}
	if a := plain.Annotations; a[lb.AnnotationAllocatedFromPool] != "localip-pool" || a[lb.AnnotationAllocatedFromPoolLegacy] != "localip-pool" {
		t.Errorf("plain's annotations %v", a)
	}
	select {
	case e := <-f.events.Events:
		if e != `Normal IPAllocated Assigned IP ["10.0.0.51"]` {
			t.Errorf("event %q", e)
		}
	case <-time.After(10 * time.Second):
		t.Error("no IPAllocated event")
	}
	f.speaker.RewriteStatuses()
	f.speaker.Upsert(f.get(t, "plain")) // its written status comes back through the informer
	got := f.get(t, "cloud")
	if ing := got.Status.LoadBalancer.Ingress; len(ing) != 1 || ing[0].IP != "192.168.1.1" || len(got.Annotations) != 0 {
		t.Errorf("cloud's status became %+v, annotations %v", ing, got.Annotations)
	}
	for _, p := range f.patched() {
		if strings.HasPrefix(p, "cloud/") {
			t.Errorf("the writer patched %s", p)
		}
	}
	// The proxy programs the cloud's address.
	st, _ := f.next.Snapshot()
	found := false
	for _, sp := range st.Services {
		if sp.Name.Name == "cloud" {
			for _, ip := range sp.LoadBalancerIPs {
				found = found || ip.String() == "192.168.1.1"
			}
		}
	}
	if !found {
		t.Error("the proxy was not given cloud's 192.168.1.1")
	}
}

// A status decided from an old version of a service is not written over a newer one: another
// controller may have written that version's status.
func TestStatusWriterHonoursResourceVersion(t *testing.T) {
	f := newLBStatusFixture(t, metallb.Options{}, lbService("plain"))
	waitFor(t, "plain's status", func() bool { return len(f.get(t, "plain").Status.LoadBalancer.Ingress) == 1 })
	w := &statusWriter{client: f.client, log: slog.New(slog.DiscardHandler), events: f.events}
	w.leader.Store(true)
	svc := f.get(t, "plain")
	stale := metallb.Status{Service: types.NamespacedName{Namespace: "default", Name: "plain"}, ResourceVersion: "1",
		IngressChanged: true}
	if svc.ResourceVersion == stale.ResourceVersion {
		t.Fatalf("resource version did not move: %s", svc.ResourceVersion)
	}
	w.write(stale)
	if ing := f.get(t, "plain").Status.LoadBalancer.Ingress; len(ing) != 1 {
		t.Errorf("a stale decision cleared the status: %+v", ing)
	}
}

// With --lb-class set only services of that class are served; with --lb-allocation=false none,
// and a stale status stays as it is.
func TestStatusWriterClassAndAllocationOff(t *testing.T) {
	classed := lbService("classed")
	c := "example.com/lb"
	classed.Spec.LoadBalancerClass = &c
	f := newLBStatusFixture(t, metallb.Options{Class: c}, lbService("plain"), classed)
	waitFor(t, "classed's status", func() bool { return len(f.get(t, "classed").Status.LoadBalancer.Ingress) == 1 })
	if ing := f.get(t, "plain").Status.LoadBalancer.Ingress; len(ing) != 0 {
		t.Errorf("a service without a class was served with --lb-class set: %+v", ing)
	}

	off := newLBStatusFixture(t, metallb.Options{AllocationOff: true}, lbService("plain"),
		lbService("stale", v1.LoadBalancerIngress{IP: "10.0.0.60"}))
	off.speaker.RewriteStatuses()
	// Nothing is queued (TestAllocationOffQueuesNothing checks the queue itself); a write that
	// slipped through would show here.
	if p := off.patched(); len(p) != 0 {
		t.Errorf("allocation off, yet the writer patched %v", p)
	}
}

// The leader records MetalLB's Event reasons for a Service without an address: LoadBalancerFailed
// when its requested addresses cannot be used as written, AllocationFailed when a usable request
// cannot be met.
func TestProblemEventReasons(t *testing.T) {
	rec := record.NewFakeRecorder(10)
	w := &statusWriter{log: slog.New(slog.DiscardHandler), events: rec}
	w.leader.Store(true)
	lbSvc := func(name, requested string) *v1.Service {
		return &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name,
			Annotations: map[string]string{lb.AnnotationLoadBalancerIPs: requested}},
			Spec: v1.ServiceSpec{Type: v1.ServiceTypeLoadBalancer,
				Ports: []v1.ServicePort{{Protocol: v1.ProtocolTCP, Port: 80}}}}
	}
	s := metallb.New(metallb.Options{Node: "node01", Next: proxier.NewTracker(proxier.Node{Name: "node01"}, proxier.Config{}, nil),
		Problem: w.problem, Log: slog.New(slog.DiscardHandler)})
	pool := &lb.IPAddressPool{ObjectMeta: metav1.ObjectMeta{Namespace: "metallb-system", Name: "localip-pool"}}
	pool.Spec.Addresses = []string{"10.0.0.51-10.0.0.80"}
	s.Upsert(pool)
	s.Upsert(lbSvc("typo", "10.0.0.x"))
	s.Upsert(lbSvc("outside", "192.0.2.7"))
	s.Synced()
	got := map[string]bool{}
	for len(rec.Events) > 0 {
		got[strings.SplitN(<-rec.Events, ":", 2)[0]] = true
	}
	for _, want := range []string{
		`Warning LoadBalancerFailed invalid requested loadbalancer IPs`,
		`Warning AllocationFailed Failed to allocate IP for "default/outside"`,
	} {
		if !got[want] {
			t.Errorf("no event %q; got %v", want, got)
		}
	}
}
