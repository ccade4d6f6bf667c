package source

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"nodeagent/deploy"
	"nodeagent/lb"
	"nodeagent/test/kube"
)

// problems collects what a Kube source reports.
type problems struct {
	mu   sync.Mutex
	list []Problem
}

func (p *problems) add(pr Problem) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.list = append(p.list, pr)
}

// has reports whether a problem about name whose reason contains reason was reported.
func (p *problems) has(name, reason string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pr := range p.list {
		if pr.Object.Name == name && strings.Contains(pr.Reason, reason) {
			return true
		}
	}
	return false
}

// looseCRDs returns deploy/crds.yaml with the BGPPeer schemas' spec opened up to anything, as a
// CRD that declares holdTime a plain string (MetalLB's own, or an older one of ours) lets through
// a value the agent cannot decode.
func looseCRDs(t *testing.T) []byte {
	t.Helper()
	crds, err := kube.Decode(deploy.CRDs)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, c := range crds {
		if c.GetName() == "bgppeers.metallb.io" {
			versions, _, _ := unstructured.NestedSlice(c.Object, "spec", "versions")
			for _, v := range versions {
				spec := map[string]any{"type": "object", "x-kubernetes-preserve-unknown-fields": true}
				if err := unstructured.SetNestedMap(v.(map[string]any), spec, "schema", "openAPIV3Schema", "properties", "spec"); err != nil {
					t.Fatal(err)
				}
			}
			if err := unstructured.SetNestedSlice(c.Object, versions, "spec", "versions"); err != nil {
				t.Fatal(err)
			}
		}
		b, err := json.Marshal(c.Object)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, string(b))
	}
	return []byte(strings.Join(out, "\n---\n"))
}

const peerManifest = `apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {name: %s, namespace: metallb-system}
spec: {myASN: 64512, peerASN: 64513, peerAddress: 10.0.0.254, holdTime: %s}
`

// TestKubeInvalidCustomObject: a BGPPeer with holdTime "ninety" (which a loose CRD stores) in the
// API server before the agent starts must not keep the caches from syncing: the other objects are
// served, the bad one is reported and left out; fixing it serves it; breaking a served one keeps
// its last valid version; deleting a broken one deletes what was served.
func TestKubeInvalidCustomObject(t *testing.T) {
	cp := kube.StartTest(t, kube.Options{Logger: quietLog})
	ctx := t.Context()
	if err := cp.InstallCRDManifest(ctx, looseCRDs(t)); err != nil {
		t.Fatal(err)
	}
	apply := func(manifest string) {
		t.Helper()
		if _, err := cp.Apply(ctx, []byte(manifest)); err != nil {
			t.Fatalf("apply: %v\n%s", err, manifest)
		}
	}
	apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: metallb-system}\n")
	apply(`apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {ports: [{port: 80}]}
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: pool, namespace: metallb-system}
spec: {addresses: [10.0.0.50/30]}
`)
	apply(fmt.Sprintf(peerManifest, "good", "90s"))
	apply(fmt.Sprintf(peerManifest, "bad", "ninety"))

	peers := lb.GroupVersionV1beta2.WithResource("bgppeers")
	kinds := []ExtraKind{
		{Resource: lb.GroupVersion.WithResource("ipaddresspools"), New: func() runtime.Object { return &lb.IPAddressPool{} }},
		{Resource: peers, New: func() runtime.Object { return &lb.BGPPeer{} }},
	}
	reported := &problems{}
	rec := newRecorder()
	src := &Kube{Client: kubernetes.NewForConfigOrDie(cp.Config()), Dynamic: dynamic.NewForConfigOrDie(cp.Config()),
		Extra: kinds, Log: quietLog, Report: reported.add}
	runKube(t, src, rec)
	eventually(t, "caches synced with an invalid BGPPeer in the API server", func() bool { s, _, _ := rec.counts(); return s == 1 })

	peerKey := func(name string) Key {
		return Key{GroupKind: schema.GroupKind{Group: lb.GroupName, Kind: "BGPPeer"}, Namespace: "metallb-system", Name: name}
	}
	if rec.get(svcKey("default", "web")) == nil {
		t.Error("service not served")
	}
	if rec.get(Key{GroupKind: schema.GroupKind{Group: lb.GroupName, Kind: "IPAddressPool"}, Namespace: "metallb-system", Name: "pool"}) == nil {
		t.Error("pool not served")
	}
	if p, _ := rec.get(peerKey("good")).(*lb.BGPPeer); p == nil || p.Spec.HoldTime == nil || p.Spec.HoldTime.Duration.String() != "1m30s" {
		t.Errorf("good peer served as %+v", rec.get(peerKey("good")))
	}
	if rec.get(peerKey("bad")) != nil {
		t.Error("the invalid peer was served")
	}
	if !reported.has("bad", "not served") {
		t.Errorf("the invalid peer was not reported: %+v", reported.list)
	}

	// Fixed: served.
	apply(fmt.Sprintf(peerManifest, "bad", "30s"))
	eventually(t, "fixed peer served", func() bool { return rec.get(peerKey("bad")) != nil })
	eventually(t, "fix reported", func() bool { return reported.has("bad", "resolved") })

	// Broken after being valid: the last valid version stays.
	apply(fmt.Sprintf(peerManifest, "good", "[1, 2]"))
	eventually(t, "broken update reported", func() bool { return reported.has("good", "serving its last valid version") })
	if p, _ := rec.get(peerKey("good")).(*lb.BGPPeer); p == nil || p.Spec.HoldTime.Duration.String() != "1m30s" {
		t.Errorf("after an invalid update the peer is %+v, want its last valid version", rec.get(peerKey("good")))
	}

	// Deleted while broken: what was served goes.
	if err := cp.Dynamic.Resource(peers).Namespace("metallb-system").Delete(ctx, "good", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "broken peer's delete", func() bool { return rec.get(peerKey("good")) == nil })

	// The core kinds still flow.
	apply("apiVersion: v1\nkind: Service\nmetadata: {name: web2, namespace: default}\nspec: {ports: [{port: 81}]}\n")
	eventually(t, "later service", func() bool { s, _ := rec.get(svcKey("default", "web2")).(*v1.Service); return s != nil })
}

// runKube starts k.Run in the background; the test's cleanup stops it and checks that Run returned
// nil.
func runKube(t *testing.T, k *Kube, sink Sink) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- k.Run(ctx, sink) }()
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
}
