package source

import (
	"net/netip"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// widget stands for a kind registered from another package (as the MetalLB kinds will be).
type widget struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              struct {
		Size int `json:"size"`
	} `json:"spec"`
}

func (w *widget) DeepCopyObject() runtime.Object {
	c := *w
	w.ObjectMeta.DeepCopyInto(&c.ObjectMeta)
	return &c
}

func init() {
	Register[widget]("test.nodeagent.io/v1", "Widget", Namespaced, func(w *widget) []string {
		if w.Spec.Size < 0 {
			return []string{"spec.size must not be negative"}
		}
		return nil
	})
}

func TestRegisteredKind(t *testing.T) {
	objs, problems := loadDir(t, Manifests{}, map[string]string{"w.yaml": `apiVersion: test.nodeagent.io/v1
kind: Widget
metadata: {name: small, namespace: metallb-system}
spec: {size: 1}
---
apiVersion: test.nodeagent.io/v1
kind: Widget
metadata: {name: broken}
spec: {size: -1}
`})
	ws := Of[*widget](objs)
	if len(ws) != 1 || ws[0].Name != "small" || ws[0].Namespace != "metallb-system" || ws[0].Spec.Size != 1 {
		t.Errorf("widgets: %+v", ws)
	}
	if len(problems) != 1 || problems[0].Kind != "Widget" || !strings.Contains(problems[0].Reason, "must not be negative") {
		t.Errorf("problems: %v", problems)
	}
	rec := newRecorderAny()
	objs.Deliver(rec)
	if rec.n != 1 || !rec.synced {
		t.Errorf("delivered %d widgets, synced %v", rec.n, rec.synced)
	}
}

// anyRecorder counts upserts of any kind.
type anyRecorder struct {
	n      int
	synced bool
}

func newRecorderAny() *anyRecorder               { return &anyRecorder{} }
func (r *anyRecorder) Upsert(obj runtime.Object) { r.n++ }
func (r *anyRecorder) Delete(obj runtime.Object) {}
func (r *anyRecorder) Synced()                   { r.synced = true }

func TestParseFlags(t *testing.T) {
	for in, want := range map[string]PortRange{"30000-32767": {30000, 32767}, "30000+2767": {30000, 32767}, " 8080 ": {8080, 8080}} {
		if got, err := ParsePortRange(in); err != nil || got != want {
			t.Errorf("ParsePortRange(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "0-10", "20-10", "1-70000", "65000+1000", "a-b"} {
		if _, err := ParsePortRange(bad); err == nil {
			t.Errorf("ParsePortRange(%q) accepted", bad)
		}
	}
	got, err := ParseServiceCIDRs("10.96.0.1/12, fd00:96::/108")
	if err != nil || len(got) != 2 || got[0] != DefaultServiceCIDR || got[1] != netip.MustParsePrefix("fd00:96::/108") {
		t.Errorf("ParseServiceCIDRs = %v, %v", got, err)
	}
	for _, bad := range []string{"", "10.96.0.0/12,10.100.0.0/16", "10.0.0.0/31", "nope", "a/1,b/2,c/3"} {
		if _, err := ParseServiceCIDRs(bad); err == nil {
			t.Errorf("ParseServiceCIDRs(%q) accepted", bad)
		}
	}
}
