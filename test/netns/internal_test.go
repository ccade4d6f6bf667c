package lab

import (
	"fmt"
	"testing"
	"time"
)

// localService is a ClusterIP service over the demoapp pods with internalTrafficPolicy Local.
const localService = `apiVersion: v1
kind: Service
metadata:
  name: local
  namespace: default
spec:
  clusterIP: 10.96.0.77
  internalTrafficPolicy: Local
  selector:
    app: demoapp
  ports:
  - port: 80
    targetPort: 80
`

// testInternalTrafficPolicyAndHairpin: with internalTrafficPolicy Local a pod reaches only the
// endpoints on its own node, and a node without one does not forward; a pod reaching itself
// through its service (hairpin) gets its answer, masqueraded so the reply returns through the node.
func testInternalTrafficPolicyAndHairpin(t *testing.T, m mode) {
	e := newEnv(t, m, setup{
		files: map[string]string{
			"local.yaml": localService + "---\n" +
				// demoapp-1 and demoapp-2 only: node03 has no endpoint.
				sliceYAML("local-1", "local", []slicePort{{"", "TCP", 80}}, demoappEndpoints[:2]...),
		},
		pods: []podSpec{demoappPods[0], demoappPods[1], clientPod},
	})
	addr := "10.96.0.77:80"
	client := e.Pod("client-pod") // on node01
	e.waitAnswer(client.NS, "tcp", addr)
	for _, r := range e.spread(client.NS, "tcp", addr, 30) {
		if r.ServerName != "demoapp-1" || r.ClientIP != client.IP {
			t.Fatalf("internalTrafficPolicy Local from node01's pod: %v, want demoapp-1 seeing %s", r, client.IP)
		}
	}
	// node02 itself: only its own demoapp-2.
	n2 := e.Node(2).NS
	e.waitAnswer(n2, "tcp", addr)
	if got := serverNames(e.spread(n2, "tcp", addr, 20)); len(got) != 1 || got["demoapp-2"] != 20 {
		t.Errorf("internalTrafficPolicy Local from node02: reached %v, want only demoapp-2", got)
	}
	// node03 has no local endpoint: nothing answers, though the service has endpoints elsewhere.
	for range 3 {
		if c, err := DialFrom(e.Node(3).NS, "tcp", "", addr, 500*time.Millisecond); err == nil {
			c.Close()
			t.Fatalf("internalTrafficPolicy Local: node03 without a local endpoint reached %s", addr)
		}
	}

	// Hairpin: demoapp-2 through the service to itself.
	self := e.Pod("demoapp-2")
	r := e.waitAnswer(self.NS, "tcp", addr)
	if r.ServerName != "demoapp-2" {
		t.Fatalf("hairpin: demoapp-2 reached %s", r.ServerName)
	}
	if r.ClientIP == self.IP {
		t.Errorf("hairpin: demoapp-2 saw its own address %s as the client; want it masqueraded to the node", r.ClientIP)
	}
	fmt.Printf("internalTrafficPolicy Local (%s mode): node01's pod → demoapp-1 only, node03 not forwarded; hairpin seen as %s\n", m.name, r.ClientIP)
}
