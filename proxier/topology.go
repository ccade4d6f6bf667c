package proxier

// Endpoint categorisation: which endpoints each kind of traffic of a service port uses, and what
// happens to that traffic when its list is empty. kube-proxy decides this once, in
// CategorizeEndpoints (pkg/proxy/topology.go); so does this file, and every mode and the health
// checks read the result instead of deciding again.

import (
	"slices"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
)

// Hint is how an endpoint's topology hints of one kind (zones, or nodes) relate to this node.
type Hint uint8

const (
	// NoHint: the endpoint has no hint of this kind.
	NoHint Hint = iota
	// HintElsewhere: the endpoint is hinted only for other zones (nodes).
	HintElsewhere
	// HintHere: one of the endpoint's hints names this node's zone (this node).
	HintHere
)

// resolveHints reads an EndpointSlice endpoint's hints against this node. A node without a zone
// label matches no zone hint (kube-proxy ignores zone hints then), whatever a hint names.
func resolveHints(h *discovery.EndpointHints, node Node) (zone, nodeHint Hint) {
	if h == nil {
		return NoHint, NoHint
	}
	if len(h.ForZones) > 0 {
		zone = HintElsewhere
		for _, z := range h.ForZones {
			if node.Zone != "" && z.Name == node.Zone {
				zone = HintHere
				break
			}
		}
	}
	if len(h.ForNodes) > 0 {
		nodeHint = HintElsewhere
		for _, n := range h.ForNodes {
			if node.Name != "" && n.Name == node.Name {
				nodeHint = HintHere
				break
			}
		}
	}
	return zone, nodeHint
}

// ready is the readiness categorisation uses: ready and not terminating.
func (e Endpoint) ready() bool { return e.Ready && !e.Terminating }

func (e Endpoint) servingTerminating() bool { return e.Serving && e.Terminating }

// categorize picks, from every endpoint of a service port (sorted), the endpoints traffic with a
// Cluster policy uses and those traffic with a Local policy uses. Both prefer ready endpoints and
// fall back to serving-and-terminating ones when none is ready (so connections drain during a
// rollout); the cluster list also follows topology hints (topologyMatch), the local one never
// does. The results are subsets of all, in its order.
func categorize(all []Endpoint) (cluster, local []Endpoint) {
	return usable(all, topologyMatch(all)), usable(all, func(e Endpoint) bool { return e.Local })
}

func anyEndpoint(Endpoint) bool { return true }

// topologyMatch says which endpoints Cluster-policy traffic from this node may use, as kube-proxy's
// topologyModeFromHints and availableForTopology: when every ready endpoint carries node hints
// and one is hinted for this node, only those hinted for this node (PreferSameNode); otherwise
// when every ready endpoint carries zone hints and one is hinted for this node's zone, only those
// hinted for the zone (PreferSameZone); otherwise every endpoint. Since a mode is only chosen
// when a ready endpoint fits it, the serving-terminating fallback never needs to ignore it.
func topologyMatch(all []Endpoint) func(Endpoint) bool {
	allNode, allZone := true, true
	forNode, forZone := false, false
	for _, e := range all {
		if !e.ready() {
			continue
		}
		allNode = allNode && e.NodeHint != NoHint
		forNode = forNode || e.NodeHint == HintHere
		allZone = allZone && e.ZoneHint != NoHint
		forZone = forZone || e.ZoneHint == HintHere
	}
	switch {
	case allNode && forNode:
		return func(e Endpoint) bool { return e.NodeHint == HintHere }
	case allZone && forZone:
		return func(e Endpoint) bool { return e.ZoneHint == HintHere }
	}
	return anyEndpoint
}

// usable picks, among the endpoints that match, the ready ones; when none is ready, the serving
// and terminating ones.
func usable(all []Endpoint, match func(Endpoint) bool) []Endpoint {
	// The common case, every endpoint matching and ready, shares all's array (nobody modifies
	// endpoint lists) instead of copying it.
	if !slices.ContainsFunc(all, func(e Endpoint) bool { return !match(e) || !e.ready() }) {
		return all
	}
	var ready, fallback []Endpoint
	for _, e := range all {
		if !match(e) {
			continue
		}
		switch {
		case e.ready():
			ready = append(ready, e)
		case e.servingTerminating():
			fallback = append(fallback, e)
		}
	}
	if len(ready) > 0 {
		return ready
	}
	return fallback
}

// UsesClusterEndpoints reports whether some traffic of the port goes to ClusterEndpoints:
// internal traffic under Cluster policy, and external traffic under either policy (under Local
// policy, traffic from pods and from the node itself still goes to any endpoint).
func (sp *ServicePort) UsesClusterEndpoints() bool {
	return !sp.InternalPolicyLocal || sp.HasExternal()
}

// UsesLocalEndpoints reports whether some traffic of the port goes to LocalEndpoints: internal
// traffic under Local policy, or external traffic under Local policy.
func (sp *ServicePort) UsesLocalEndpoints() bool {
	return sp.InternalPolicyLocal || (sp.HasExternal() && sp.ExternalPolicyLocal)
}

// ClusterPolicyEndpoints are the endpoints a mode programs for Cluster-policy traffic:
// ClusterEndpoints, or nil when no traffic of the port uses them.
func (sp *ServicePort) ClusterPolicyEndpoints() []Endpoint {
	if !sp.UsesClusterEndpoints() {
		return nil
	}
	return sp.ClusterEndpoints
}

// LocalPolicyEndpoints are the endpoints a mode programs for Local-policy traffic:
// LocalEndpoints, or nil when no traffic of the port uses them.
func (sp *ServicePort) LocalPolicyEndpoints() []Endpoint {
	if !sp.UsesLocalEndpoints() {
		return nil
	}
	return sp.LocalEndpoints
}

// ReachableEndpoints are every endpoint some traffic through this node may reach: the union of
// ClusterPolicyEndpoints and LocalPolicyEndpoints, in address order.
func (sp *ServicePort) ReachableEndpoints() []Endpoint {
	return union(sp.ClusterPolicyEndpoints(), sp.LocalPolicyEndpoints())
}

// HasEndpoints reports whether the service port has a usable endpoint anywhere in the cluster,
// even if none is reachable from this node under a Local policy. Topology never empties
// ClusterEndpoints (it only applies when an endpoint fits it), so it tells.
func (sp *ServicePort) HasEndpoints() bool { return len(sp.ClusterEndpoints) > 0 }

// ReadyLocalEndpoints counts the endpoints on this node whose Ready condition is true, whatever
// the traffic policies: what a healthCheckNodePort reports, as kube-proxy's LocalReadyEndpoints
// (serving-terminating endpoints do not count, so load balancers drain the node).
func (sp *ServicePort) ReadyLocalEndpoints() int {
	n := 0
	for _, e := range sp.AllEndpoints {
		if e.Local && e.Ready {
			n++
		}
	}
	return n
}

// Verdict is what becomes of traffic on one path of a service port (internal: to the cluster IP;
// external: to node ports, external IPs and load-balancer IPs).
type Verdict uint8

const (
	// Forward: the path has endpoints; traffic goes to them.
	Forward Verdict = iota
	// Drop: the path's policy is Local and this node has no endpoint, but others do. The packet
	// is dropped silently, as kube-proxy does: a client (or load balancer) must not take this
	// node's answer for the service's.
	Drop
	// Reject: the service has no usable endpoint anywhere; the client is told at once (TCP reset
	// or ICMP port unreachable).
	Reject
)

func (v Verdict) String() string {
	switch v {
	case Drop:
		return "drop"
	case Reject:
		return "reject"
	}
	return "forward"
}

// InternalVerdict is what becomes of traffic to the cluster IP.
func (sp *ServicePort) InternalVerdict() Verdict { return sp.verdict(sp.InternalEndpoints()) }

// ExternalVerdict is what becomes of traffic to the node ports, external IPs and load-balancer
// IPs.
func (sp *ServicePort) ExternalVerdict() Verdict { return sp.verdict(sp.ExternalEndpoints()) }

func (sp *ServicePort) verdict(path []Endpoint) Verdict {
	switch {
	case len(path) > 0:
		return Forward
	case sp.HasEndpoints():
		return Drop
	}
	return Reject
}

// applyNode records what the model reads of a Node object: its zone label, primary addresses and
// pod CIDRs. A change of this node's zone recomputes every service, since hints are resolved
// against it; a change of its addresses or pod CIDRs only makes the next Snapshot full (they
// shape each mode's fixed rules, not the services). A Node without addresses or pod CIDRs (or
// deleted) keeps the last ones seen: kube-proxy reads them once at start and keeps them. Called
// with t.mu held; it reports whether anything changed.
func (t *Tracker) applyNode(o *v1.Node, deleted bool) bool {
	obj := t.nodeObjs[o.Name]
	obj.zone = ""
	if !deleted { // a deletion need carry no labels
		obj.zone = o.Labels[v1.LabelTopologyZone]
		if ips := primaryIPs(o); len(ips) > 0 {
			obj.primaryIPs = ips
		}
		if cidrs := podCIDRs(o); len(cidrs) > 0 {
			obj.podCIDRs = cidrs
		}
	}
	if obj.zone == "" && obj.primaryIPs == nil && obj.podCIDRs == nil {
		delete(t.nodeObjs, o.Name)
	} else {
		if t.nodeObjs == nil {
			t.nodeObjs = map[string]nodeObject{}
		}
		t.nodeObjs[o.Name] = obj
	}
	if o.Name != t.node.Name {
		return false
	}
	n := t.node
	n.Zone, n.PrimaryIPs, n.PodCIDRs = obj.zone, obj.primaryIPs, obj.podCIDRs
	if n.Equal(t.node) {
		return false
	}
	zoneChanged := n.Zone != t.node.Zone
	t.node = n
	if zoneChanged {
		t.recomputeAll()
	} else {
		t.full = true
	}
	return true
}

// withNodeObject fills in what n does not say (zone, primary addresses, pod CIDRs) from the Node
// object of its name: the caller of SetNode knows the host (name, addresses), the Node objects
// know the rest.
func (t *Tracker) withNodeObject(n Node) Node {
	obj := t.nodeObjs[n.Name]
	if n.Name == t.node.Name {
		obj = nodeObject{zone: t.node.Zone, primaryIPs: t.node.PrimaryIPs, podCIDRs: t.node.PodCIDRs}
	}
	if n.Zone == "" {
		n.Zone = obj.zone
	}
	if n.PrimaryIPs == nil {
		n.PrimaryIPs = obj.primaryIPs
	}
	if n.PodCIDRs == nil {
		n.PodCIDRs = obj.podCIDRs
	}
	return n
}

// recomputeAll marks every service changed and the next Snapshot full. Called with t.mu held.
func (t *Tracker) recomputeAll() {
	t.full = true
	for k := range t.services {
		t.dirty[k] = true
	}
}

// union merges two address-sorted endpoint lists, dropping duplicates; when one is empty the
// other is returned as is.
func union(a, b []Endpoint) []Endpoint {
	if len(b) == 0 {
		return a
	}
	if len(a) == 0 {
		return b
	}
	out := make([]Endpoint, 0, len(a)+len(b))
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case j == len(b):
			out = append(out, a[i])
			i++
		case i == len(a):
			out = append(out, b[j])
			j++
		default:
			switch c := a[i].AddrPort().Compare(b[j].AddrPort()); {
			case c < 0:
				out = append(out, a[i])
				i++
			case c > 0:
				out = append(out, b[j])
				j++
			default:
				out = append(out, a[i])
				i++
				j++
			}
		}
	}
	return out
}
