package proxier

import (
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// hinted is an endpoint of a topology test: its node, and the zones and nodes it is hinted for.
type hinted struct {
	ip, node     string
	zones, nodes []string
	notReady     bool
}

func hintedSlice(eps ...hinted) *discovery.EndpointSlice {
	s := slice("web", "web-1", discovery.AddressTypeIPv4, "http", 8080)
	for _, e := range eps {
		de := discovery.Endpoint{Addresses: []string{e.ip}, NodeName: ptr.To(e.node)}
		if e.notReady {
			de.Conditions.Ready = ptr.To(false)
		}
		if e.zones != nil || e.nodes != nil {
			de.Hints = &discovery.EndpointHints{}
			for _, z := range e.zones {
				de.Hints.ForZones = append(de.Hints.ForZones, discovery.ForZone{Name: z})
			}
			for _, n := range e.nodes {
				de.Hints.ForNodes = append(de.Hints.ForNodes, discovery.ForNode{Name: n})
			}
		}
		s.Endpoints = append(s.Endpoints, de)
	}
	return s
}

// Endpoints of the topology tests: node01 and node02 in zone-a, node03 in zone-b.
var (
	epA1 = hinted{ip: "10.244.1.5", node: "node01", zones: []string{"zone-a"}, nodes: []string{"node01"}}
	epA2 = hinted{ip: "10.244.2.5", node: "node02", zones: []string{"zone-a"}, nodes: []string{"node02"}}
	epB3 = hinted{ip: "10.244.3.5", node: "node03", zones: []string{"zone-b"}, nodes: []string{"node03"}}
)

func zoneOnly(e hinted) hinted           { e.nodes = nil; return e }
func noHints(e hinted) hinted            { e.zones, e.nodes = nil, nil; return e }
func notReady(e hinted) hinted           { e.notReady = true; return e }
func zones(e hinted, z ...string) hinted { e.zones = z; return e }

func TestTopologyHints(t *testing.T) {
	const all = "10.244.1.5:8080,10.244.2.5:8080,10.244.3.5:8080"
	itpLocal := func(s *v1.Service) { s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal) }
	etpLocal := func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeNodePort
		s.Spec.Ports[0].NodePort = 30080
		s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	}
	cases := []struct {
		name     string
		node     Node
		svc      func(*v1.Service)
		eps      []hinted
		internal string // InternalEndpoints
		external string // ExternalEndpoints ("": same as internal)
	}{
		{name: "no hints: every endpoint", node: Node{Name: "node03", Zone: "zone-b"},
			eps: []hinted{noHints(epA1), noHints(epA2), noHints(epB3)}, internal: all},
		{name: "all zone-hinted, zone matches: only the zone's endpoints", node: Node{Name: "node02", Zone: "zone-a"},
			eps: []hinted{zoneOnly(epA1), zoneOnly(epA2), zoneOnly(epB3)}, internal: "10.244.1.5:8080,10.244.2.5:8080"},
		{name: "an endpoint hinted for several zones", node: Node{Name: "node03", Zone: "zone-b"},
			eps:      []hinted{zoneOnly(epA1), zones(zoneOnly(epA2), "zone-a", "zone-b"), zoneOnly(epB3)},
			internal: "10.244.2.5:8080,10.244.3.5:8080"},
		{name: "one ready endpoint without hints: hints ignored", node: Node{Name: "node02", Zone: "zone-a"},
			eps: []hinted{zoneOnly(epA1), zoneOnly(epA2), noHints(epB3)}, internal: all},
		{name: "a not-ready endpoint without hints does not count", node: Node{Name: "node02", Zone: "zone-a"},
			eps:      []hinted{zoneOnly(epA1), zoneOnly(epA2), zoneOnly(epB3), notReady(noHints(hinted{ip: "10.244.3.6", node: "node03"}))},
			internal: "10.244.1.5:8080,10.244.2.5:8080"},
		{name: "no endpoint hinted for this zone: every endpoint", node: Node{Name: "node04", Zone: "zone-c"},
			eps: []hinted{zoneOnly(epA1), zoneOnly(epA2), zoneOnly(epB3)}, internal: all},
		{name: "node without a zone label: every endpoint", node: Node{Name: "node02"},
			eps: []hinted{zoneOnly(epA1), zoneOnly(epA2), zoneOnly(epB3)}, internal: all},
		{name: "empty zone hint does not match a node without zone", node: Node{Name: "node02"},
			eps: []hinted{zones(zoneOnly(epA1), ""), zones(zoneOnly(epA2), ""), zones(zoneOnly(epB3), "")}, internal: all},
		{name: "the endpoint hinted for this zone is not ready: every ready endpoint", node: Node{Name: "node03", Zone: "zone-b"},
			eps: []hinted{zoneOnly(epA1), zoneOnly(epA2), notReady(zoneOnly(epB3))}, internal: "10.244.1.5:8080,10.244.2.5:8080"},
		{name: "all node-hinted, one for this node: only it", node: Node{Name: "node02", Zone: "zone-a"},
			eps: []hinted{epA1, epA2, epB3}, internal: "10.244.2.5:8080"},
		{name: "node hints, none for this node: zone hints apply", node: Node{Name: "node04", Zone: "zone-a"},
			eps: []hinted{epA1, epA2, epB3}, internal: "10.244.1.5:8080,10.244.2.5:8080"},
		{name: "node hints missing on one endpoint: zone hints apply", node: Node{Name: "node02", Zone: "zone-a"},
			eps: []hinted{epA1, epA2, zoneOnly(epB3)}, internal: "10.244.1.5:8080,10.244.2.5:8080"},
		{name: "internalTrafficPolicy Local ignores hints", node: Node{Name: "node03", Zone: "zone-b"}, svc: itpLocal,
			eps:      []hinted{zoneOnly(epA1), zoneOnly(epA2), zones(zoneOnly(epB3), "zone-a")},
			internal: "10.244.3.5:8080", external: all},
		{name: "externalTrafficPolicy Local ignores hints, cluster traffic follows them", node: Node{Name: "node01", Zone: "zone-a"},
			svc: etpLocal, eps: []hinted{zones(epA1, "zone-b"), zoneOnly(epA2), zoneOnly(epB3)},
			internal: "10.244.2.5:8080", external: "10.244.1.5:8080"},
		{name: "externalTrafficPolicy Cluster follows hints", node: Node{Name: "node01", Zone: "zone-b"},
			svc:      func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeNodePort; s.Spec.Ports[0].NodePort = 30080 },
			eps:      []hinted{zoneOnly(epA1), zoneOnly(epA2), zoneOnly(epB3)},
			internal: "10.244.3.5:8080"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sps, _ := ServicePorts(svc("web", c.svc), []*discovery.EndpointSlice{hintedSlice(c.eps...)}, c.node)
			if len(sps) != 1 {
				t.Fatalf("%d ports", len(sps))
			}
			sp := sps[0]
			if got := addrsString(sp.InternalEndpoints()); got != c.internal {
				t.Errorf("internal endpoints %s, want %s", got, c.internal)
			}
			want := c.external
			if want == "" {
				want = c.internal
			}
			if got := addrsString(sp.ExternalEndpoints()); got != want {
				t.Errorf("external endpoints %s, want %s", got, want)
			}
		})
	}
}

// TestTrackerFollowsZone: the tracker reads this node's zone from its Node object; a change of
// the zone label recomputes every service (a full sync), other nodes' objects change nothing.
func TestTrackerFollowsZone(t *testing.T) {
	tr := NewTracker(Node{Name: "node02"}, Config{}, nil)
	tr.Upsert(svc("web", nil))
	tr.Upsert(hintedSlice(zoneOnly(epA1), zoneOnly(epA2), zoneOnly(epB3)))
	tr.Synced()
	cluster := func() string {
		t.Helper()
		st, _ := tr.Snapshot()
		if len(st.Services) != 1 {
			t.Fatalf("services %v", st.Services)
		}
		return addrsString(st.Services[0].ClusterEndpoints)
	}
	if got := cluster(); got != "10.244.1.5:8080,10.244.2.5:8080,10.244.3.5:8080" {
		t.Fatalf("without a zone: %s", got)
	}
	node := func(name, zone string) *v1.Node {
		n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/hostname": name}}}
		if zone != "" {
			n.Labels[v1.LabelTopologyZone] = zone
		}
		return n
	}
	tr.Upsert(node("node03", "zone-b"))
	if tr.Pending() {
		t.Fatalf("another node's zone marked a change")
	}
	tr.Upsert(node("node02", "zone-a"))
	if !tr.Pending() {
		t.Fatalf("this node's zone did not mark a change")
	}
	st, ch := tr.Snapshot()
	if !ch.Full || st.Node.Zone != "zone-a" {
		t.Fatalf("zone change: full %v, zone %q", ch.Full, st.Node.Zone)
	}
	if got := addrsString(st.Services[0].ClusterEndpoints); got != "10.244.1.5:8080,10.244.2.5:8080" {
		t.Errorf("in zone-a: %s", got)
	}
	// The same labels again, and the host's identity without a zone, change nothing.
	tr.Upsert(node("node02", "zone-a"))
	tr.SetNode(Node{Name: "node02"})
	if tr.Pending() {
		t.Fatalf("no-op node update marked a change")
	}
	tr.Upsert(node("node02", "zone-b"))
	if st, ch := tr.Snapshot(); !ch.Full || addrsString(st.Services[0].ClusterEndpoints) != "10.244.3.5:8080" {
		t.Errorf("moved to zone-b: full %v, endpoints %s", ch.Full, addrsString(st.Services[0].ClusterEndpoints))
	}
	// Renamed to a node whose Node object is known: its zone applies.
	tr.SetNode(Node{Name: "node03"})
	if st, _ := tr.Snapshot(); st.Node.Zone != "zone-b" {
		t.Errorf("renamed to node03: zone %q", st.Node.Zone)
	}
	tr.Delete(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node03"}})
	if got := cluster(); got != "10.244.1.5:8080,10.244.2.5:8080,10.244.3.5:8080" {
		t.Errorf("Node deleted: %s", got)
	}
}

// TestCategorize: which endpoints each kind of traffic uses, and what becomes of traffic with
// none, is decided once here for every mode.
func TestCategorize(t *testing.T) {
	local := ep{ip: "10.244.1.5", node: "node01"}
	remote := ep{ip: "10.244.2.5", node: "node02"}
	localTerminating := ep{ip: "10.244.1.6", node: "node01", ready: ptr.To(false), serving: ptr.To(true), terminating: ptr.To(true)}
	remoteNotReady := ep{ip: "10.244.2.6", node: "node02", ready: ptr.To(false), serving: ptr.To(false)}
	nodePort := func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeNodePort; s.Spec.Ports[0].NodePort = 30080 }
	etpLocal := func(s *v1.Service) { nodePort(s); s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal }
	itpLocal := func(s *v1.Service) { s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal) }
	both := func(s *v1.Service) { etpLocal(s); itpLocal(s) }
	cases := []struct {
		name                      string
		svc                       func(*v1.Service)
		eps                       []ep
		cluster, local, reachable string
		internal, external        Verdict
		readyLocal                int
	}{
		{name: "cluster policies", eps: []ep{local, remote},
			cluster: "10.244.1.5:8080,10.244.2.5:8080", reachable: "10.244.1.5:8080,10.244.2.5:8080", readyLocal: 1},
		{name: "no endpoints rejects", svc: etpLocal, internal: Reject, external: Reject},
		{name: "only not-ready endpoints rejects", svc: itpLocal, eps: []ep{remoteNotReady}, internal: Reject, external: Reject},
		{name: "ETP Local without local endpoint drops external, forwards internal", svc: etpLocal, eps: []ep{remote},
			cluster: "10.244.2.5:8080", reachable: "10.244.2.5:8080", external: Drop},
		{name: "ITP Local without local endpoint drops internal", svc: itpLocal, eps: []ep{remote}, internal: Drop},
		{name: "ITP Local with a local endpoint", svc: itpLocal, eps: []ep{local, remote},
			local: "10.244.1.5:8080", reachable: "10.244.1.5:8080", readyLocal: 1},
		{name: "both Local: cluster endpoints still serve pods and the node", svc: both, eps: []ep{local, remote},
			cluster: "10.244.1.5:8080,10.244.2.5:8080", local: "10.244.1.5:8080", reachable: "10.244.1.5:8080,10.244.2.5:8080", readyLocal: 1},
		{name: "local terminating fallback while ready endpoints elsewhere", svc: etpLocal, eps: []ep{localTerminating, remote},
			cluster: "10.244.2.5:8080", local: "10.244.1.6:8080", reachable: "10.244.1.6:8080,10.244.2.5:8080"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sps, _ := ServicePorts(svc("web", c.svc), []*discovery.EndpointSlice{slice("web", "web-1", discovery.AddressTypeIPv4, "http", 8080, c.eps...)}, Node{Name: "node01"})
			sp := sps[0]
			if got := addrsString(sp.ClusterPolicyEndpoints()); got != c.cluster {
				t.Errorf("cluster-policy endpoints %s, want %s", got, c.cluster)
			}
			if got := addrsString(sp.LocalPolicyEndpoints()); got != c.local {
				t.Errorf("local-policy endpoints %s, want %s", got, c.local)
			}
			if got := addrsString(sp.ReachableEndpoints()); got != c.reachable {
				t.Errorf("reachable endpoints %s, want %s", got, c.reachable)
			}
			if v := sp.InternalVerdict(); v != c.internal {
				t.Errorf("internal verdict %v, want %v", v, c.internal)
			}
			if v := sp.ExternalVerdict(); v != c.external {
				t.Errorf("external verdict %v, want %v", v, c.external)
			}
			if n := sp.ReadyLocalEndpoints(); n != c.readyLocal {
				t.Errorf("ready local endpoints %d, want %d", n, c.readyLocal)
			}
		})
	}
}
