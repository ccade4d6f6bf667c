package source

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"

	"nodeagent/lb"
	"nodeagent/object"
)

// normalized returns a copy of obj without what an API server adds or a source may leave out
// (type meta, resource version, managed fields), for comparing objects across sources.
func normalized(obj runtime.Object) runtime.Object {
	c := obj.DeepCopyObject()
	switch o := c.(type) {
	case *v1.Service:
		o.TypeMeta, o.ResourceVersion, o.ManagedFields = metav1.TypeMeta{}, "", nil
	case *discoveryv1.EndpointSlice:
		o.TypeMeta, o.ResourceVersion, o.ManagedFields = metav1.TypeMeta{}, "", nil
	case *v1.Node:
		o.TypeMeta, o.ResourceVersion, o.ManagedFields = metav1.TypeMeta{}, "", nil
	}
	return c
}

// watchStarts counts the watches a fake clientset opened per resource. The fake's watches do
// not replay what happened between an informer's list and its watch, so a test changes objects
// only once every watch is open.
type watchStarts struct {
	mu sync.Mutex
	n  map[string]int
}

func (w *watchStarts) react(action k8stesting.Action) (bool, watch.Interface, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.n[action.GetResource().Resource]++
	return false, nil, nil // let the default reactor open the watch
}

func (w *watchStarts) open(resources ...string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, r := range resources {
		if w.n[r] == 0 {
			return false
		}
	}
	return true
}

// TestKubeMatchesManifests loads the seed manifests, creates the objects in a fake API server,
// and checks that the Kubernetes source delivers what the manifests source delivers (the part
// kube-proxy watches), then that updates and deletes flow through.
func TestKubeMatchesManifests(t *testing.T) {
	dir := seedDir(t)
	writeFile(t, dir, "nodes.yaml", `apiVersion: v1
kind: Node
metadata: {name: node01, labels: {kubernetes.io/hostname: node01}}
status: {addresses: [{type: InternalIP, address: 10.0.0.151}]}
---
apiVersion: v1
kind: Node
metadata: {name: node02}
---
apiVersion: v1
kind: Service
metadata: {name: other-proxy, labels: {service.kubernetes.io/service-proxy-name: someone-else}}
spec: {selector: {app: x}, ports: [{port: 80}]}
`)
	manifests := &Manifests{Dir: dir, Log: quietLog}
	objs, _, err := manifests.Load()
	if err != nil {
		t.Fatal(err)
	}
	fromFiles := newRecorder()
	objs.Deliver(fromFiles)

	client := fake.NewClientset()
	starts := &watchStarts{n: map[string]int{}}
	client.PrependWatchReactor("*", starts.react)
	ctx := context.Background()
	for _, o := range objs.Services() {
		if _, err := client.CoreV1().Services(o.Namespace).Create(ctx, o, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, o := range objs.EndpointSlices() {
		if _, err := client.DiscoveryV1().EndpointSlices(o.Namespace).Create(ctx, o, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, o := range objs.Nodes() {
		if _, err := client.CoreV1().Nodes().Create(ctx, o, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	fromAPI := newRecorder()
	kube := &Kube{Client: client, NodeName: "node01", Log: quietLog}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- kube.Run(runCtx, fromAPI) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	eventually(t, "caches synced", func() bool { s, _, _ := fromAPI.counts(); return s == 1 })

	// What kube-proxy sees of the manifests: no Pods, no objects labelled for another proxy or
	// headless; every node (MetalLB's decisions need them all).
	want := map[Key]runtime.Object{}
	for k, o := range fromFiles.snapshot() {
		m := o.(metav1.Object)
		if !proxied(m) && k.GroupKind != nodeKind {
			continue
		}
		want[k] = o
	}
	if _, ok := want[svcKey("default", "other-proxy")]; ok {
		t.Fatal("filter kept a service labelled for another proxy")
	}
	got := fromAPI.snapshot()
	if len(want) < 12 {
		t.Fatalf("only %d objects to compare", len(want))
	}
	t.Logf("comparing %d objects", len(want))
	for k, w := range want {
		g, ok := got[k]
		if !ok {
			t.Errorf("%v: delivered from files, not from the API", k)
			continue
		}
		if !equality.Semantic.DeepEqual(normalized(g), normalized(w)) {
			t.Errorf("%v differs:\n api: %+v\nfile: %+v", k, normalized(g), normalized(w))
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%v: delivered from the API only", k)
		}
	}

	eventually(t, "watches open", func() bool { return starts.open("services", "endpointslices", "nodes") })

	// An update flows through.
	redis := objs.Get(svcKey("default", "redis")).(*v1.Service).DeepCopy()
	redis.Spec.Ports[0].Port = 6390
	if _, err := client.CoreV1().Services("default").Update(ctx, redis, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "redis update", func() bool { return redisPort(fromAPI) == 6390 })

	// A delete flows through.
	if err := client.DiscoveryV1().EndpointSlices("default").Delete(ctx, "redis-x7k2p", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "slice delete", func() bool { return fromAPI.get(sliceKey("default", "redis-x7k2p")) == nil })

	// A service labelled for another proxy leaves, as it would leave a filtered watch.
	redis.Labels = map[string]string{object.LabelServiceProxyName: "someone-else"}
	if _, err := client.CoreV1().Services("default").Update(ctx, redis, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "relabelled service gone", func() bool { return fromAPI.get(svcKey("default", "redis")) == nil })

	// Another node is delivered too.
	if _, err := client.CoreV1().Nodes().Create(ctx, &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node03"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	node01 := objs.Get(Key{GroupKind: nodeKind, Name: "node01"}).(*v1.Node).DeepCopy()
	node01.Labels["changed"] = "yes"
	if _, err := client.CoreV1().Nodes().Update(ctx, node01, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "node01 update", func() bool {
		n, _ := fromAPI.get(Key{GroupKind: nodeKind, Name: "node01"}).(*v1.Node)
		return n != nil && n.Labels["changed"] == "yes"
	})
	eventually(t, "node03 delivered", func() bool { return fromAPI.get(Key{GroupKind: nodeKind, Name: "node03"}) != nil })
}

func TestKubeTombstone(t *testing.T) {
	rec := newRecorder()
	svc := &v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "a", Namespace: "default"}}
	h := handler(rec, proxied, quietLog, nil)
	h.OnAdd(svc, true)
	if rec.get(svcKey("default", "a")) == nil {
		t.Fatal("add not delivered")
	}
	h.OnDelete(cache.DeletedFinalStateUnknown{Key: "default/a", Obj: svc})
	if _, _, del := rec.counts(); del != 1 || rec.get(svcKey("default", "a")) != nil {
		t.Error("tombstone not delivered as a delete")
	}
	h.OnDelete(cache.DeletedFinalStateUnknown{Key: "default/b", Obj: "garbage"})
	if _, _, del := rec.counts(); del != 1 {
		t.Error("a tombstone without an object was delivered")
	}
}

// TestKubeInvalidObjectEvents: the handler's side of an object that does not convert — reported
// once per version (a re-list of the same version is not reported again), never delivered, its
// delete delivered as a delete of the kind's Go type.
func TestKubeInvalidObjectEvents(t *testing.T) {
	rec := newRecorder()
	var reported []Problem
	h := handler(rec, func(metav1.Object) bool { return true }, quietLog, func(p Problem) { reported = append(reported, p) })
	u := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "metallb.io/v1beta2", "kind": "BGPPeer",
		"metadata": map[string]any{"name": "bad", "namespace": "metallb-system", "resourceVersion": "7"},
		"spec":     map[string]any{"holdTime": "ninety"}}}
	bad, err := typedFrom(func() runtime.Object { return &lb.BGPPeer{} })(u)
	if err != nil {
		t.Fatal(err)
	}
	h.OnAdd(bad, true)
	h.OnUpdate(bad, bad.(runtime.Object).DeepCopyObject())
	if len(reported) != 1 || !strings.Contains(reported[0].Reason, `does not decode as a BGPPeer: time: invalid duration "ninety"`) || len(rec.snapshot()) != 0 {
		t.Errorf("reported %v, delivered %v", reported, rec.snapshot())
	}
	h.OnDelete(cache.DeletedFinalStateUnknown{Key: "metallb-system/bad", Obj: bad})
	if _, _, del := rec.counts(); del != 1 {
		t.Error("delete not delivered")
	}
}

// nsSink records the Namespaces and Nodes a source delivers.
type nsSink struct {
	mu    sync.Mutex
	names map[string]bool
}

func (s *nsSink) Upsert(obj runtime.Object) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch o := obj.(type) {
	case *v1.Namespace:
		s.names["namespace/"+o.Name+"/"+o.Labels["team"]] = true
	case *v1.Node:
		s.names["node/"+o.Name] = true
	}
}
func (s *nsSink) Delete(runtime.Object) {}
func (s *nsSink) Synced()               {}
func (s *nsSink) has(k string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.names[k]
}

// Every Node and every Namespace (with its labels) reaches the sink: MetalLB's nodeSelectors and
// namespaceSelectors are decided from the same view on every agent.
func TestKubeDeliversEveryNodeAndNamespace(t *testing.T) {
	client := fake.NewClientset(
		&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node01"}},
		&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node02"}},
		&v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "team-a", Labels: map[string]string{"team": "a"}}})
	sink := &nsSink{names: map[string]bool{}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = (&Kube{Client: client, NodeName: "node01", Log: quietLog}).Run(ctx, sink) }()
	for _, k := range []string{"node/node01", "node/node02", "namespace/team-a/a"} {
		eventually(t, k, func() bool { return sink.has(k) })
	}
}

// A role that may not list Namespaces (an older deploy/rbac.yaml) still syncs: Nodes arrive, the
// namespace watch is left out.
func TestKubeWithoutNamespaceAccess(t *testing.T) {
	client := fake.NewClientset(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node02"}})
	client.PrependReactor("list", "namespaces", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(v1.Resource("namespaces"), "", errors.New("RBAC"))
	})
	client.PrependWatchReactor("namespaces", func(k8stesting.Action) (bool, watch.Interface, error) {
		return true, nil, apierrors.NewForbidden(v1.Resource("namespaces"), "", errors.New("RBAC"))
	})
	sink := &nsSink{names: map[string]bool{}}
	rec := newRecorder()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = (&Kube{Client: client, NodeName: "node01", Log: quietLog}).Run(ctx, both{sink, rec}) }()
	eventually(t, "caches synced", func() bool { s, _, _ := rec.counts(); return s == 1 })
	if !sink.has("node/node02") {
		t.Error("node02 not delivered")
	}
}

// both passes every call to two sinks.
type both [2]Sink

func (b both) Upsert(o runtime.Object) { b[0].Upsert(o); b[1].Upsert(o) }
func (b both) Delete(o runtime.Object) { b[0].Delete(o); b[1].Delete(o) }
func (b both) Synced()                 { b[0].Synced(); b[1].Synced() }
