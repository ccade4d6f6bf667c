package agent

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"nodeagent/health"
)

type countSink struct{ upserts, deletes int }

func (s *countSink) Upsert(runtime.Object) { s.upserts++ }
func (s *countSink) Delete(runtime.Object) { s.deletes++ }
func (s *countSink) Synced()               {}

// This node's Node object decides /healthz's node eligibility; other nodes' do not.
func TestNodeWatchSetsEligibility(t *testing.T) {
	p := health.NewProxy(time.Minute)
	p.Synced(time.Now())
	next := &countSink{}
	w := nodeWatch{Sink: next, name: "node01", health: p}
	code := func() int {
		rec := httptest.NewRecorder()
		p.ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
		return rec.Code
	}
	deleting := &metav1.Time{Time: time.Now()}
	w.Upsert(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node02", DeletionTimestamp: deleting}})
	if c := code(); c != http.StatusOK {
		t.Fatalf("another node being deleted: %d", c)
	}
	w.Upsert(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node01", DeletionTimestamp: deleting}})
	if c := code(); c != http.StatusServiceUnavailable {
		t.Fatalf("this node being deleted: %d", c)
	}
	w.Upsert(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node01"}})
	if c := code(); c != http.StatusOK {
		t.Fatalf("this node back: %d", c)
	}
	w.Delete(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node01"}})
	if next.upserts != 3 || next.deletes != 1 {
		t.Errorf("passed on %d upserts, %d deletes", next.upserts, next.deletes)
	}
}
