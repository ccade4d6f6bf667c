package source

import (
	"fmt"
	"sync"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// Scope says whether objects of a kind live in a namespace.
type Scope bool

const (
	// Namespaced kinds live in a namespace ("default" when a manifest names none).
	Namespaced Scope = true
	// ClusterScoped kinds have no namespace; one given in a manifest is ignored.
	ClusterScoped Scope = false
)

// kind is one registered apiVersion/kind.
type kind struct {
	gvk      schema.GroupVersionKind
	scope    Scope
	new      func() runtime.Object
	validate func(runtime.Object) []string
}

var registry = struct {
	sync.RWMutex
	byGVK  map[schema.GroupVersionKind]*kind
	byKind map[schema.GroupKind]*kind
}{byGVK: map[schema.GroupVersionKind]*kind{}, byKind: map[schema.GroupKind]*kind{}}

// Register makes the manifests source decode documents of apiVersion/kind into a *T. validate, when
// not nil, returns the reasons an object is invalid beyond its metadata (name and namespace are
// checked for every kind). Objects of kinds that are not registered are skipped quietly. Call it
// from an init function, once per kind, for example:
//
//	source.Register[metallb.IPAddressPool]("metallb.io/v1beta1", "IPAddressPool", source.Namespaced, nil)
func Register[T any, P interface {
	*T
	runtime.Object
}](apiVersion, kindName string, scope Scope, validate func(P) []string) {
	gv, err := schema.ParseGroupVersion(apiVersion)
	if err != nil {
		panic(fmt.Sprintf("source.Register: apiVersion %q: %v", apiVersion, err))
	}
	k := &kind{
		gvk:   gv.WithKind(kindName),
		scope: scope,
		new:   func() runtime.Object { return P(new(T)) },
	}
	if validate != nil {
		k.validate = func(obj runtime.Object) []string { return validate(obj.(P)) }
	}
	registry.Lock()
	defer registry.Unlock()
	if _, dup := registry.byKind[k.gvk.GroupKind()]; dup {
		panic(fmt.Sprintf("source.Register: %s registered twice", k.gvk.GroupKind()))
	}
	registry.byGVK[k.gvk] = k
	registry.byKind[k.gvk.GroupKind()] = k
}

// lookup returns the registered kind for gvk, and the registered kind of the same group and kind
// name in another version (to report an unsupported apiVersion rather than skip it quietly).
func lookup(gvk schema.GroupVersionKind) (exact, otherVersion *kind) {
	registry.RLock()
	defer registry.RUnlock()
	if k := registry.byGVK[gvk]; k != nil {
		return k, nil
	}
	return nil, registry.byKind[gvk.GroupKind()]
}

var (
	serviceKind       = schema.GroupKind{Kind: "Service"}
	endpointSliceKind = schema.GroupKind{Group: discoveryv1.GroupName, Kind: "EndpointSlice"}
	nodeKind          = schema.GroupKind{Kind: "Node"}
	podKind           = schema.GroupKind{Kind: "Pod"}
)

func init() {
	Register[v1.Service]("v1", "Service", Namespaced, validateService)
	Register[discoveryv1.EndpointSlice]("discovery.k8s.io/v1", "EndpointSlice", Namespaced, validateEndpointSlice)
	Register[v1.Node]("v1", "Node", ClusterScoped, validateNode)
	Register[v1.Pod]("v1", "Pod", Namespaced, validatePod)
}
