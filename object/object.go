// Package object is the vocabulary source, lb and proxier share about Kubernetes objects: the
// label that hands a Service to another proxy, and Problem, an object (or part of one) left out
// and why. It imports nothing of nodeagent, so all three can use it.
package object

import (
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/types"
)

// LabelServiceProxyName names the proxy that serves a Service; a Service with it is another
// proxy's, not ours (kube-proxy's rule).
const LabelServiceProxyName = "service.kubernetes.io/service-proxy-name"

// Problem is an object, or part of one, that is not served as written, and why: an invalid
// object, a conflict with another, a manifest that does not parse, an address not assigned.
type Problem struct {
	// File, Doc and Item locate a manifest: its path, the 1-based index of the YAML/JSON
	// document in it (0: the file as a whole) and the 1-based index in a List document (0: not in
	// a List). Empty for objects from the API server and problems between objects.
	File string
	Doc  int
	Item int
	// Kind and Object identify the object, as far as they are known.
	Kind   string
	Object types.NamespacedName
	Reason string
	// Event is the reason of the Kubernetes Event that reports it, when not its kind's usual one
	// (MetalLB's LoadBalancerFailed for a Service's unusable requested addresses, say).
	Event string
}

// String formats the problem for people: "FILE document N item M: KIND NAMESPACE/NAME: REASON",
// leaving out what is not known.
func (p Problem) String() string {
	var b strings.Builder
	if p.File != "" {
		b.WriteString(p.File)
		if p.Doc > 0 {
			fmt.Fprintf(&b, " document %d", p.Doc)
		}
		if p.Item > 0 {
			fmt.Fprintf(&b, " item %d", p.Item)
		}
		b.WriteString(": ")
	}
	if p.Kind != "" || p.Object.Name != "" {
		kind := p.Kind
		if kind == "" {
			kind = "object"
		}
		b.WriteString(kind)
		b.WriteByte(' ')
		if p.Object.Namespace != "" {
			b.WriteString(p.Object.Namespace + "/")
		}
		b.WriteString(p.Object.Name)
		b.WriteString(": ")
	}
	b.WriteString(p.Reason)
	return b.String()
}
