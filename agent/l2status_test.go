package agent

import (
	"context"
	"log/slog"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/tools/record"

	"nodeagent/lb"
	"nodeagent/metallb"
)

// l2Objects returns the ServiceL2Status objects in namespace ns: "node service-ns/name" → interfaces.
func l2Objects(t *testing.T, l *l2Status, ns string) map[string][]string {
	t.Helper()
	list, err := l.dyn.Resource(serviceL2Statuses).Namespace(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, u := range list.Items {
		var o lb.ServiceL2Status
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &o); err != nil {
			t.Fatal(err)
		}
		if o.Labels[lb.LabelAnnounceNode] != o.Status.Node || o.Labels[lb.LabelServiceName] != o.Status.ServiceName {
			t.Errorf("%s: labels %v do not match status %+v", o.Name, o.Labels, o.Status)
		}
		var ifs []string
		for _, i := range o.Status.Interfaces {
			ifs = append(ifs, i.Name)
		}
		out[o.Status.Node+" "+o.Status.ServiceNamespace+"/"+o.Status.ServiceName] = ifs
	}
	return out
}

// The announcing node says so as MetalLB's speaker does: a nodeAssigned Event when it starts
// announcing a service, and one ServiceL2Status per announced service, gone when it stops; its
// own stale objects (from before a restart) go, other nodes' stay.
func TestL2StatusObjectsAndEvents(t *testing.T) {
	scheme := runtime.NewScheme()
	other := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "metallb.io/v1beta1", "kind": "ServiceL2Status",
		"metadata": map[string]any{"name": "l2-other", "namespace": "kube-system",
			"labels": map[string]any{lb.LabelAnnounceNode: "node02", lb.LabelServiceName: "x", lb.LabelServiceNamespace: "default"}},
		"status": map[string]any{"node": "node02", "serviceName": "x", "serviceNamespace": "default"}}}
	stale := other.DeepCopy()
	stale.SetName("l2-stale")
	stale.SetLabels(map[string]string{lb.LabelAnnounceNode: "node01", lb.LabelServiceName: "gone", lb.LabelServiceNamespace: "default"})
	_ = unstructured.SetNestedField(stale.Object, "node01", "status", "node")
	_ = unstructured.SetNestedField(stale.Object, "gone", "status", "serviceName")
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(scheme,
		map[schema.GroupVersionResource]string{serviceL2Statuses: "ServiceL2StatusList"}, other, stale)
	events := record.NewFakeRecorder(10)
	l := newL2Status("node01", "kube-system", dyn, nil, events, slog.New(slog.DiscardHandler))
	a := types.NamespacedName{Namespace: "default", Name: "a"}
	b := types.NamespacedName{Namespace: "apps", Name: "b"}
	l.set([]metallb.L2Service{{Service: a, UID: "uid-a", Interfaces: []string{"ens33"}}, {Service: b}})
	for range 2 {
		if e := <-events.Events; e != `Normal nodeAssigned announcing from node "node01" with protocol "layer2"` {
			t.Errorf("event %q", e)
		}
	}
	if err := l.reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := l2Objects(t, l, "kube-system")
	want := map[string][]string{"node01 default/a": {"ens33"}, "node01 apps/b": nil, "node02 default/x": nil}
	if len(got) != len(want) || got["node01 default/a"][0] != "ens33" || got["node01 apps/b"] != nil {
		t.Errorf("objects %v, want %v", got, want)
	}
	for k := range want {
		if _, ok := got[k]; !ok {
			t.Errorf("no object %s", k)
		}
	}

	// a leaves, b now answers on every interface: no new event; a's object goes, b's is updated.
	l.set([]metallb.L2Service{{Service: b, Interfaces: []string{"eth1"}}})
	if err := l.reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := l2Objects(t, l, "kube-system")["node01 apps/b"]; len(got) != 1 || got[0] != "eth1" {
		t.Errorf("b's interfaces %v, want [eth1]", got)
	}
	l.set([]metallb.L2Service{{Service: b}})
	select {
	case e := <-events.Events:
		t.Errorf("event for a service announced before: %q", e)
	default:
	}
	if err := l.reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	got = l2Objects(t, l, "kube-system")
	if _, ok := got["node01 default/a"]; ok || len(got) != 2 || got["node01 apps/b"] != nil {
		t.Errorf("after a left and b answers everywhere: %v", got)
	}
	// Reconciling again with nothing changed writes nothing.
	before := len(dyn.Actions())
	if err := l.reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := len(dyn.Actions()) - before; n != 1 { // the list
		t.Errorf("%d API calls for no change, want 1 (the list)", n)
	}
}
