package lb

import (
	v1 "k8s.io/api/core/v1"
)

// LabelExcludeFromExternalLB marks nodes that must not carry load-balancer traffic; MetalLB's
// speakers honour it too.
const LabelExcludeFromExternalLB = v1.LabelNodeExcludeBalancers

// NodeExcludedReason returns why node must not announce load-balancer addresses by any protocol,
// or "" when it may: MetalLB's rule for layer 2 and BGP alike — it carries
// LabelExcludeFromExternalLB, or its condition NetworkUnavailable is True. A nil node (no Node
// object known) is not excluded.
func NodeExcludedReason(node *v1.Node) string {
	if node == nil {
		return ""
	}
	if _, ok := node.Labels[LabelExcludeFromExternalLB]; ok {
		return "labelled " + LabelExcludeFromExternalLB
	}
	for _, c := range node.Status.Conditions {
		if c.Type == v1.NodeNetworkUnavailable && c.Status == v1.ConditionTrue {
			return "condition NetworkUnavailable is True"
		}
	}
	return ""
}

// NodeUnusableReason returns why node must not answer ARP/NDP for load-balancer addresses, or ""
// when it may: NodeExcludedReason, or it is not Ready. MetalLB's layer 2 does not look at Ready
// (memberlist alone says a speaker is up); nodeagent also runs without memberlist, where a Node's
// Ready condition is the only sign of life every agent sees alike. Only meaningful where Node
// objects come from the API; membership (agents alive) is checked apart. A nil node is usable.
func NodeUnusableReason(node *v1.Node) string {
	if node == nil {
		return ""
	}
	if why := NodeExcludedReason(node); why != "" {
		return why
	}
	for _, c := range node.Status.Conditions {
		if c.Type == v1.NodeReady && c.Status == v1.ConditionTrue {
			return ""
		}
	}
	return "not Ready"
}
