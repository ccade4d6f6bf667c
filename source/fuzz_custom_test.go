package source

import (
	"encoding/json"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"nodeagent/lb"
)

// customKinds are the MetalLB kinds both sources convert, with their validation.
var customKinds = []struct {
	apiVersion, kind string
	new              func() runtime.Object
	validate         func(runtime.Object) []string
}{
	{"metallb.io/v1beta1", "IPAddressPool", func() runtime.Object { return &lb.IPAddressPool{} },
		func(o runtime.Object) []string { return lb.ValidateIPAddressPool(o.(*lb.IPAddressPool)) }},
	{"metallb.io/v1beta1", "L2Advertisement", func() runtime.Object { return &lb.L2Advertisement{} },
		func(o runtime.Object) []string { return lb.ValidateL2Advertisement(o.(*lb.L2Advertisement)) }},
	{"metallb.io/v1beta1", "BGPAdvertisement", func() runtime.Object { return &lb.BGPAdvertisement{} },
		func(o runtime.Object) []string { return lb.ValidateBGPAdvertisement(o.(*lb.BGPAdvertisement)) }},
	{"metallb.io/v1beta1", "Community", func() runtime.Object { return &lb.Community{} },
		func(o runtime.Object) []string { return lb.ValidateCommunity(o.(*lb.Community)) }},
	{"metallb.io/v1beta2", "BGPPeer", func() runtime.Object { return &lb.BGPPeer{} },
		func(o runtime.Object) []string { return lb.ValidateBGPPeer(o.(*lb.BGPPeer)) }},
}

// FuzzCustomObject feeds arbitrary specs of each MetalLB kind through what the API source does to
// a custom object (the dynamic informer's conversion to the Go type, then the event handler) and
// what the manifests source does (strict decoding, then validation): nothing may panic, a failed
// conversion must become an invalid object that is reported and not delivered, and a converted
// one must be of the kind's type.
func FuzzCustomObject(f *testing.F) {
	for _, s := range []string{
		`{"addresses": ["10.0.0.0/24", "10.0.1.1-10.0.1.9"], "serviceAllocation": {"priority": 1, "namespaceSelectors": [{"matchLabels": {"a": "b"}}]}}`,
		`{"myASN": 64512, "peerASN": 64513, "peerAddress": "10.0.0.254", "holdTime": "90s", "keepaliveTime": "30s"}`,
		`{"myASN": 64512, "peerASN": 64513, "peerAddress": "10.0.0.254", "holdTime": "ninety"}`,
		`{"myASN": -1, "holdTime": 90, "nodeSelectors": [{"matchExpressions": [{"key": "a", "operator": "Bogus"}]}]}`,
		`{"communities": [{"name": "a", "value": "65535:65282"}, {"name": "b", "value": "large:1:2:3"}]}`,
		`{"communities": ["a", "1:2"], "aggregationLength": 24, "localPref": 4294967296}`,
		`{"interfaces": ["ens33"], "ipAddressPools": ["pool"]}`,
		`{"addresses": "10.0.0.0/24"}`,
		"addresses: [10.0.0.0/24]\nautoAssign: maybe\n",
		`[]`, `null`, `{"spec": {}}`,
	} {
		for k := range customKinds {
			f.Add([]byte(s), uint8(k))
		}
	}
	f.Fuzz(func(t *testing.T, data []byte, which uint8) {
		k := customKinds[int(which)%len(customKinds)]
		var spec any
		if err := json.Unmarshal(data, &spec); err != nil {
			if err := yaml.Unmarshal(data, &spec); err != nil {
				return
			}
		}
		obj := map[string]any{"apiVersion": k.apiVersion, "kind": k.kind,
			"metadata": map[string]any{"name": "x", "namespace": "metallb-system", "resourceVersion": "1"}, "spec": spec}

		// The API source.
		u := &unstructured.Unstructured{Object: obj}
		out, err := typedFrom(k.new)(u.DeepCopy())
		if err != nil {
			t.Fatalf("transform failed (this fails the informer's whole list): %v", err)
		}
		rec := newRecorder()
		var reported []Problem
		h := handler(rec, func(metav1.Object) bool { return true }, quietLog, func(p Problem) { reported = append(reported, p) })
		h.OnAdd(out, true)
		switch o := out.(type) {
		case *invalid:
			if len(reported) != 1 || reported[0].Object.Name != "x" || len(rec.snapshot()) != 0 {
				t.Fatalf("invalid object: reported %v, delivered %v", reported, rec.snapshot())
			}
			h.OnDelete(o)
			if _, _, del := rec.counts(); del != 1 {
				t.Fatal("the invalid object's delete was not delivered")
			}
			if m, ok := o.stub.(metav1.Object); !ok || m.GetName() != "x" {
				t.Fatalf("stub %#v", o.stub)
			}
		case runtime.Object:
			if o.GetObjectKind().GroupVersionKind().Kind != k.kind {
				t.Fatalf("converted to %T %v", out, o.GetObjectKind().GroupVersionKind())
			}
			if len(reported) != 0 || len(rec.snapshot()) != 1 {
				t.Fatalf("valid object: reported %v, delivered %v", reported, rec.snapshot())
			}
			_ = k.validate(o)
		default:
			t.Fatalf("transform returned %T", out)
		}

		// The manifests source.
		raw, err := json.Marshal(obj)
		if err != nil {
			return
		}
		typed := k.new()
		if strict, err := sigsjson.UnmarshalStrict(raw, typed); err == nil && len(strict) == 0 {
			_ = k.validate(typed)
			_ = typed.DeepCopyObject()
		}
	})
}
