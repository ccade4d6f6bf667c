package lab

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// zoneNodes labels node01 with zone01 and the other nodes with zone-b.
func zoneNodes(zone01 string) string {
	var b strings.Builder
	for i, z := range []string{zone01, "zone-b", "zone-b"} {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Node\nmetadata:\n  name: node%02d\n  labels:\n    topology.kubernetes.io/zone: %s\n", i+1, z)
	}
	return b.String()
}

// zonedService is a ClusterIP service whose EndpointSlice is written with zone hints, as the
// EndpointSlice controller writes them for trafficDistribution: each demoapp pod is hinted for its
// node's zone (demoapp-1 for zone-a, the others for zone-b).
const zonedService = `apiVersion: v1
kind: Service
metadata:
  name: zoned
  namespace: default
spec:
  clusterIP: 10.96.0.78
  trafficDistribution: PreferClose
  ports:
  - port: 80
    targetPort: 80
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: zoned-1
  namespace: default
  labels:
    kubernetes.io/service-name: zoned
addressType: IPv4
ports:
- name: ""
  protocol: TCP
  port: 80
endpoints:
- addresses: ["10.244.1.59"]
  conditions: {ready: true}
  nodeName: node01
  zone: zone-a
  hints: {forZones: [{name: zone-a}]}
- addresses: ["10.244.2.48"]
  conditions: {ready: true}
  nodeName: node02
  zone: zone-b
  hints: {forZones: [{name: zone-b}]}
- addresses: ["10.244.3.44"]
  conditions: {ready: true}
  nodeName: node03
  zone: zone-b
  hints: {forZones: [{name: zone-b}]}
`

// closeService selects the demoapp Pod manifests (closePods) with trafficDistribution PreferClose:
// the manifests source makes its EndpointSlice, hints included, from them.
const closeService = `apiVersion: v1
kind: Service
metadata:
  name: close
  namespace: default
spec:
  clusterIP: 10.96.0.79
  trafficDistribution: PreferClose
  selector:
    app: close
  ports:
  - port: 80
    targetPort: 80
`

func closePods() string {
	var b strings.Builder
	for _, p := range demoappPods {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: %s\n  namespace: default\n  labels:\n    app: close\nspec:\n  nodeName: node%02d\n  containers: [{name: demoapp}]\nstatus:\n  podIP: %s\n", p.name, p.node, p.ip)
	}
	return b.String()
}

// testTopologyAwareRouting: with zone hints on every endpoint, a node's cluster-IP traffic goes
// only to the endpoints hinted for its own zone (its Node's topology.kubernetes.io/zone label);
// when the label changes, the node follows. Both for a slice written with hints and for one the
// manifests source makes from Pods of a PreferClose service.
func testTopologyAwareRouting(t *testing.T, m mode) {
	e := newEnv(t, m, setup{
		files: map[string]string{"nodes.yaml": zoneNodes("zone-a"), "zoned.yaml": zonedService, "close.yaml": closeService + closePods()},
		pods:  demoappPods,
	})
	// reaches waits until 30 connections from ns to addr reach exactly the pods want.
	reaches := func(who, ns, addr string, want ...string) {
		t.Helper()
		var got map[string]int
		if !Eventually(Scaled(10*time.Second), 50*time.Millisecond, func() bool {
			if _, err := Ask(ns, "tcp", addr); err != nil {
				return false
			}
			got = serverNames(e.spread(ns, "tcp", addr, 30))
			if len(got) != len(want) {
				return false
			}
			for _, w := range want {
				if got[w] == 0 {
					return false
				}
			}
			return true
		}) {
			t.Fatalf("%s → %s: 30 connections reached %v, want exactly %v", who, addr, got, want)
		}
	}
	n1, n2 := e.Node(1).NS, e.Node(2).NS
	for _, addr := range []string{"10.96.0.78:80", "10.96.0.79:80"} {
		reaches("node01 (zone-a)", n1, addr, "demoapp-1")
		reaches("node02 (zone-b)", n2, addr, "demoapp-2", "demoapp-3")
	}
	// node01 moves to zone-b: it follows its Node's label. The Pods' slice is made again too:
	// every pod is now in zone-b.
	e.WriteManifest("nodes.yaml", []byte(zoneNodes("zone-b")))
	reaches("node01 (now zone-b)", n1, "10.96.0.78:80", "demoapp-2", "demoapp-3")
	reaches("node01 (now zone-b)", n1, "10.96.0.79:80", "demoapp-1", "demoapp-2", "demoapp-3")
	// A zone no endpoint is hinted for: hints are ignored, every endpoint serves.
	e.WriteManifest("nodes.yaml", []byte(zoneNodes("zone-c")))
	reaches("node01 (zone-c)", n1, "10.96.0.78:80", "demoapp-1", "demoapp-2", "demoapp-3")
}
