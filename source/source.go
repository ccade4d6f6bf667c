// Package source turns the outside world into Kubernetes API objects for the rest of the agent.
//
// Two sources feed the same Sink: Manifests reads a directory of YAML/JSON manifests (the embedded
// default that needs no cluster) and does the little an API server and the EndpointSlice controller
// would have done to them (defaults, cluster-IP and node-port allocation, EndpointSlices from Pod
// manifests); Kube watches a Kubernetes API server with client-go informers. Nothing downstream
// knows which one is in use.
package source

import (
	"cmp"
	"slices"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"nodeagent/object"
)

// Sink receives the objects a source sees. Objects are *v1.Service, *discoveryv1.EndpointSlice, *v1.Node (more
// kinds later: the MetalLB CRD kinds). The Sink must not modify them.
type Sink interface {
	Upsert(obj runtime.Object) // added or changed
	Delete(obj runtime.Object) // removed (only its kind, namespace and name matter)
	Synced()                   // the initial state has been delivered completely; called once
}

// Problem is a manifest, or an object in one, that is not served as written: a file that does not
// parse, an invalid object, a duplicate, or a conflict with another object. It is the one Problem
// type of lb and proxier too.
type Problem = object.Problem

// Key identifies an object: its group and kind, namespace ("" for cluster-scoped kinds) and name.
type Key struct {
	schema.GroupKind
	Namespace string
	Name      string
}

// String formats the key as "Kind.group namespace/name".
func (k Key) String() string {
	if k.Namespace == "" {
		return k.GroupKind.String() + " " + k.Name
	}
	return k.GroupKind.String() + " " + k.Namespace + "/" + k.Name
}

func compareKeys(a, b Key) int {
	return cmp.Or(cmp.Compare(a.Group, b.Group), cmp.Compare(a.Kind, b.Kind),
		cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
}

// Objects is a set of objects by key, as a source delivers them. Its objects must not be modified.
type Objects struct {
	m map[Key]runtime.Object
}

// Len returns the number of objects.
func (o Objects) Len() int { return len(o.m) }

// Get returns the object with key k, or nil.
func (o Objects) Get(k Key) runtime.Object { return o.m[k] }

// Keys returns the keys of all objects, sorted by group, kind, namespace and name.
func (o Objects) Keys() []Key {
	keys := make([]Key, 0, len(o.m))
	for k := range o.m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, compareKeys)
	return keys
}

// Of returns the objects of o that are a T, in key order (so sorted by namespace and name).
func Of[T runtime.Object](o Objects) []T {
	var out []T
	for _, k := range o.Keys() {
		if t, ok := o.m[k].(T); ok {
			out = append(out, t)
		}
	}
	return out
}

// Services returns the Services, sorted by namespace and name.
func (o Objects) Services() []*v1.Service { return Of[*v1.Service](o) }

// EndpointSlices returns the EndpointSlices (those in the manifests and those made from Pod
// manifests), sorted by namespace and name.
func (o Objects) EndpointSlices() []*discoveryv1.EndpointSlice {
	return Of[*discoveryv1.EndpointSlice](o)
}

// Nodes returns the Nodes, sorted by name.
func (o Objects) Nodes() []*v1.Node { return Of[*v1.Node](o) }

// Pods returns the Pods, sorted by namespace and name. Pods are input for EndpointSlices only:
// they are not delivered to a Sink (the API source does not watch them either).
func (o Objects) Pods() []*v1.Pod { return Of[*v1.Pod](o) }

// Deliver upserts every object a Sink takes (all but Pods) in key order and then calls Synced:
// the one-shot form of Manifests.Run, for commands that render once.
func (o Objects) Deliver(sink Sink) {
	for _, k := range o.Keys() {
		if delivered(k) {
			sink.Upsert(o.m[k])
		}
	}
	sink.Synced()
}

// delivered reports whether objects with key k go to a Sink.
func delivered(k Key) bool { return k.GroupKind != podKind }
