package lb

import (
	v1 "k8s.io/api/core/v1"
)

// LabelExcludeFromExternalLB marks nodes that must not carry load-balancer traffic; MetalLB's
// speakers honour it too.
const LabelExcludeFromExternalLB = v1.LabelNodeExcludeBalancers

// NodeUnusableReason returns why node must not announce load-balancer addresses, or "" when it
// may: it carries LabelExcludeFromExternalLB, its network is unavailable, or it is not Ready. Only
// meaningful where Node objects come from the API; membership (agents alive) is checked apart.
func NodeUnusableReason(node *v1.Node) string {
	if _, ok := node.Labels[LabelExcludeFromExternalLB]; ok {
		return "labelled " + LabelExcludeFromExternalLB
	}
	ready := false
	for _, c := range node.Status.Conditions {
		switch {
		case c.Type == v1.NodeNetworkUnavailable && c.Status == v1.ConditionTrue:
			return "condition NetworkUnavailable is True"
		case c.Type == v1.NodeReady:
			ready = c.Status == v1.ConditionTrue
		}
	}
	if !ready {
		return "not Ready"
	}
	return ""
}
