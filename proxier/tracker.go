package proxier

import (
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"sync"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
)

// Tracker keeps the current Services and EndpointSlices, remembers which services changed since
// the last Snapshot, and computes the desired State incrementally: only changed services are
// recomputed. It implements the source package's Sink. It is safe for concurrent use.
type Tracker struct {
	log *slog.Logger
	// OnChange, when set, is called (without locks held) after every change that matters.
	OnChange func()

	mu       sync.Mutex
	node     Node
	config   Config
	ready    bool
	full     bool
	services map[types.NamespacedName]*v1.Service
	slices   map[types.NamespacedName]*discovery.EndpointSlice
	bySvc    map[types.NamespacedName]map[string]*discovery.EndpointSlice
	dirty    map[types.NamespacedName]bool
	nodeObjs map[string]nodeObject // Node name → what the model reads of it (topology.go)
	// serviceCIDRs are the CIDRs of each ServiceCIDR object, by name (nodeconfig.go).
	serviceCIDRs map[string][]netip.Prefix

	// Derived, kept between snapshots.
	keys      []types.NamespacedName // services with ports, sorted
	raw       map[types.NamespacedName][]*ServicePort
	effective map[types.NamespacedName][]*ServicePort
	// flat is the last State's Services (effective ports in key order).
	flat      []*ServicePort
	endpoints int                                 // across flat
	problems  map[types.NamespacedName][]Problem  // invalid parts of each service
	conflicts map[types.NamespacedName][]Problem  // ports left out for another service's frontend
	claims    map[Frontend][]types.NamespacedName // sorted owners of every frontend
}

// NewTracker returns an empty tracker for the given node.
func NewTracker(node Node, config Config, log *slog.Logger) *Tracker {
	if log == nil {
		log = slog.Default()
	}
	return &Tracker{
		log: log, node: node, config: config, full: true,
		services:  map[types.NamespacedName]*v1.Service{},
		slices:    map[types.NamespacedName]*discovery.EndpointSlice{},
		bySvc:     map[types.NamespacedName]map[string]*discovery.EndpointSlice{},
		dirty:     map[types.NamespacedName]bool{},
		raw:       map[types.NamespacedName][]*ServicePort{},
		effective: map[types.NamespacedName][]*ServicePort{},
		problems:  map[types.NamespacedName][]Problem{},
		conflicts: map[types.NamespacedName][]Problem{},
		claims:    map[Frontend][]types.NamespacedName{},
	}
}

// Upsert records an added or changed object. Updates that change nothing a proxy uses are dropped.
func (t *Tracker) Upsert(obj runtime.Object) {
	if t.apply(obj, false) {
		t.changed()
	}
}

// Delete records a removed object.
func (t *Tracker) Delete(obj runtime.Object) {
	if t.apply(obj, true) {
		t.changed()
	}
}

// Synced records that the source delivered its initial state: from now on Ready is true.
func (t *Tracker) Synced() {
	t.mu.Lock()
	t.ready = true
	t.mu.Unlock()
	t.changed()
}

// Ready reports whether the initial state is complete, so that a proxy may program it.
func (t *Tracker) Ready() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.ready
}

// SetNode changes this node's identity (name or addresses); every service is recomputed. An
// empty n.Zone keeps the zone the Node objects gave.
func (t *Tracker) SetNode(n Node) {
	t.mu.Lock()
	n = t.withNodeObject(n)
	same := n.Equal(t.node)
	if !same {
		t.node = n
		t.full = true
		for k := range t.services {
			t.dirty[k] = true
		}
	}
	t.mu.Unlock()
	if !same {
		t.changed()
	}
}

// Pending reports whether a change is waiting for the next Snapshot.
func (t *Tracker) Pending() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.full || len(t.dirty) > 0
}

func (t *Tracker) changed() {
	if t.OnChange != nil {
		t.OnChange()
	}
}

func (t *Tracker) apply(obj runtime.Object, deleted bool) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch o := obj.(type) {
	case *v1.Service:
		k := types.NamespacedName{Namespace: o.Namespace, Name: o.Name}
		old, had := t.services[k]
		if deleted || Skipped(o.Labels) {
			if !had {
				return false
			}
			delete(t.services, k)
		} else {
			if had && serviceEqual(old, o) {
				return false
			}
			t.services[k] = o
		}
		t.dirty[k] = true
		return true
	case *discovery.EndpointSlice:
		k := types.NamespacedName{Namespace: o.Namespace, Name: o.Name}
		old, had := t.slices[k]
		if deleted || Skipped(o.Labels) || o.Labels[LabelServiceName] == "" {
			if !had {
				return false
			}
			t.removeSlice(k, old)
			return true
		}
		if had && sliceEqual(old, o) {
			return false
		}
		if had {
			t.removeSlice(k, old)
		}
		t.slices[k] = o
		svc := types.NamespacedName{Namespace: o.Namespace, Name: o.Labels[LabelServiceName]}
		if t.bySvc[svc] == nil {
			t.bySvc[svc] = map[string]*discovery.EndpointSlice{}
		}
		t.bySvc[svc][o.Name] = o
		t.dirty[svc] = true
		return true
	case *v1.Node:
		return t.applyNode(o, deleted)
	case *networkingv1.ServiceCIDR:
		return t.applyServiceCIDR(o, deleted)
	}
	// Other kinds (load-balancer objects) are not the proxy's concern.
	return false
}

func (t *Tracker) removeSlice(k types.NamespacedName, old *discovery.EndpointSlice) {
	delete(t.slices, k)
	svc := types.NamespacedName{Namespace: old.Namespace, Name: old.Labels[LabelServiceName]}
	delete(t.bySvc[svc], old.Name)
	if len(t.bySvc[svc]) == 0 {
		delete(t.bySvc, svc)
	}
	t.dirty[svc] = true
}

func serviceEqual(a, b *v1.Service) bool {
	return apiequality.Semantic.DeepEqual(a.Spec, b.Spec) &&
		apiequality.Semantic.DeepEqual(a.Status.LoadBalancer, b.Status.LoadBalancer) &&
		Skipped(a.Labels) == Skipped(b.Labels) &&
		a.Annotations[AnnotationIPVSScheduler] == b.Annotations[AnnotationIPVSScheduler]
}

func sliceEqual(a, b *discovery.EndpointSlice) bool {
	return a.AddressType == b.AddressType &&
		a.Labels[LabelServiceName] == b.Labels[LabelServiceName] &&
		apiequality.Semantic.DeepEqual(a.Ports, b.Ports) &&
		apiequality.Semantic.DeepEqual(a.Endpoints, b.Endpoints)
}

// Snapshot returns the desired State and the services that changed since the previous Snapshot.
// The State shares unchanged ServicePorts with earlier States; nobody may modify them. Its
// Services slice is only valid until the next Snapshot, which patches it in place (copying 25,000
// pointers, and collecting the copy, was most of a one-endpoint change): keep the ServicePorts, not
// the slice.
func (t *Tracker) Snapshot() (*State, Changes) {
	t.mu.Lock()
	defer t.mu.Unlock()
	ch := Changes{Full: t.full, Services: map[types.NamespacedName]bool{}}
	affected := map[types.NamespacedName]bool{}
	present := make(map[types.NamespacedName]bool, len(t.dirty))
	for k := range t.dirty {
		affected[k] = true
		for _, f := range t.raw[k] {
			for _, fe := range f.frontends() {
				t.unclaim(fe, k)
				for _, o := range t.claims[fe] {
					affected[o] = true
				}
			}
		}
		var ports []*ServicePort
		var problems []Problem
		if svc, ok := t.services[k]; ok {
			var sl []*discovery.EndpointSlice
			for _, s := range t.bySvc[k] {
				sl = append(sl, s)
			}
			sort.Slice(sl, func(i, j int) bool { return sl[i].Name < sl[j].Name })
			ports, problems = ServicePorts(svc, sl, t.node)
		}
		present[k] = len(ports) > 0
		if len(ports) > 0 {
			t.raw[k] = ports
		} else {
			delete(t.raw, k)
		}
		for _, sp := range ports {
			for _, fe := range sp.frontends() {
				t.claim(fe, k)
				for _, o := range t.claims[fe] {
					affected[o] = true
				}
			}
		}
		t.setProblems(k, problems)
	}
	t.setKeys(present)
	for k := range affected {
		t.resolveConflicts(k)
		ch.Services[k] = true
	}
	clear(t.dirty)
	t.full = false

	st := &State{Node: t.node, Config: t.config, Services: t.flatten(affected, ch.Full), EndpointCount: t.endpoints,
		ServiceCIDRs: t.serviceCIDRList()}
	pk := map[types.NamespacedName]bool{}
	for k := range t.problems {
		pk[k] = true
	}
	for k := range t.conflicts {
		pk[k] = true
	}
	for _, k := range slices.SortedFunc(maps.Keys(pk), compareKeys) {
		st.Problems = append(st.Problems, t.problems[k]...)
		st.Problems = append(st.Problems, t.conflicts[k]...)
	}
	return st, ch
}

// resolveConflicts drops the ports of k that claim a frontend an earlier service (by namespace and
// name) already claims: every node reading the same objects keeps the same one.
func (t *Tracker) resolveConflicts(k types.NamespacedName) {
	var keep []*ServicePort
	var conflicts []Problem
	for _, sp := range t.raw[k] {
		ok := true
		for _, fe := range sp.frontends() {
			if owner := t.claims[fe][0]; owner != k {
				ok = false
				conflicts = append(conflicts, Problem{Kind: "Service", Object: k,
					Reason: "port " + sp.Name.String() + " conflicts with service " + owner.String() + " on " + fe.String()})
				break
			}
		}
		if ok {
			keep = append(keep, sp)
		}
	}
	for _, sp := range t.effective[k] {
		t.endpoints -= len(sp.AllEndpoints)
	}
	for _, sp := range keep {
		t.endpoints += len(sp.AllEndpoints)
	}
	if len(keep) > 0 {
		t.effective[k] = keep
	} else {
		delete(t.effective, k)
	}
	for _, p := range conflicts {
		if !slices.Contains(t.conflicts[k], p) {
			t.log.Warn("service port left out", "service", k.String(), "reason", p.Reason)
		}
	}
	store(t.conflicts, k, conflicts)
}

func (t *Tracker) setProblems(k types.NamespacedName, ps []Problem) {
	for _, p := range ps {
		if !slices.Contains(t.problems[k], p) {
			t.log.Warn("invalid service", "service", k.String(), "reason", p.Reason)
		}
	}
	store(t.problems, k, ps)
}

func store(m map[types.NamespacedName][]Problem, k types.NamespacedName, ps []Problem) {
	if len(ps) == 0 {
		delete(m, k)
		return
	}
	m[k] = ps
}

// flatten returns the effective ports of every key in order. A few changed keys patch the last
// result in place, found by binary search (the result is sorted by service): adding or removing
// one service among 25,000 then costs a memmove, not a walk of every key.
func (t *Tracker) flatten(changed map[types.NamespacedName]bool, rebuild bool) []*ServicePort {
	if rebuild || len(changed) > 64 {
		return t.rebuildFlat()
	}
	flat := t.flat
	for k := range changed {
		i, _ := slices.BinarySearchFunc(flat, k, func(sp *ServicePort, k types.NamespacedName) int {
			return compareKeys(sp.Name.NamespacedName, k)
		})
		j := i
		for j < len(flat) && flat[j].Name.NamespacedName == k {
			j++
		}
		flat = slices.Replace(flat, i, j, t.effective[k]...)
	}
	t.flat = flat
	return flat
}

// rebuildFlat lays out every key's effective ports afresh.
func (t *Tracker) rebuildFlat() []*ServicePort {
	flat := make([]*ServicePort, 0, len(t.flat))
	for _, k := range t.keys {
		flat = append(flat, t.effective[k]...)
	}
	t.flat = flat
	return flat
}

// setKeys adds the keys marked present to the sorted t.keys and removes the others. A few are
// placed one by one; many (a first sync: map order is random) are merged in one sort, since
// inserting them one at a time would move the slice's tail for each.
func (t *Tracker) setKeys(present map[types.NamespacedName]bool) {
	if len(present) <= 64 {
		for k, p := range present {
			i, found := slices.BinarySearchFunc(t.keys, k, compareKeys)
			switch {
			case p && !found:
				t.keys = slices.Insert(t.keys, i, k)
			case !p && found:
				t.keys = slices.Delete(t.keys, i, i+1)
			}
		}
		return
	}
	keys := t.keys[:0:0]
	for _, k := range t.keys {
		if p, ok := present[k]; !ok || p {
			keys = append(keys, k)
		}
		delete(present, k) // what remains is new
	}
	for k, p := range present {
		if p {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, compareKeys)
	t.keys = keys
}

func compareKeys(a, b types.NamespacedName) int {
	if a.Namespace != b.Namespace {
		if a.Namespace < b.Namespace {
			return -1
		}
		return 1
	}
	switch {
	case a.Name < b.Name:
		return -1
	case a.Name > b.Name:
		return 1
	}
	return 0
}

func (t *Tracker) claim(fe Frontend, k types.NamespacedName) {
	owners := t.claims[fe]
	i, found := slices.BinarySearchFunc(owners, k, compareKeys)
	if !found {
		t.claims[fe] = slices.Insert(owners, i, k)
	}
}

func (t *Tracker) unclaim(fe Frontend, k types.NamespacedName) {
	owners := t.claims[fe]
	i, found := slices.BinarySearchFunc(owners, k, compareKeys)
	if !found {
		return
	}
	owners = slices.Delete(owners, i, i+1)
	if len(owners) == 0 {
		delete(t.claims, fe)
		return
	}
	t.claims[fe] = owners
}

func (f Frontend) String() string {
	if f.Addr.IsUnspecified() {
		return "node port " + strconv.Itoa(int(f.Port)) + "/" + string(f.Protocol)
	}
	return f.Addr.String() + ":" + strconv.Itoa(int(f.Port)) + "/" + string(f.Protocol)
}
