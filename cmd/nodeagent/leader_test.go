package main

import (
	"log/slog"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/record"

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
