package proxier

import (
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
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
// recomputed, and a frontend that several claim is given to one by ResolveFrontends, run on the
// services that share frontends with a changed one. It implements the source package's Sink. It
// is safe for concurrent use.
type Tracker struct {
	log *slog.Logger
	// OnChange, when set, is called (without locks held) after every change that matters.
	OnChange func()
	// OnConflict, when set, is told (without locks held, from Snapshot) once about each new
	// reason a Service lost a frontend to another: what an Event on that Service should say.
	OnConflict func(svc v1.ObjectReference, reason string)

	mu       sync.Mutex
	node     Node
	config   Config
	ready    bool
	full     bool
	services map[types.NamespacedName]*v1.Service
	slices   map[types.NamespacedName]*discovery.EndpointSlice
	// bySvc are each service's slices sorted by name: a slice, not a map, since nearly every
	// service has one or two (100,000 small maps were 30 MB).
	bySvc    map[types.NamespacedName][]*discovery.EndpointSlice
	dirty    map[types.NamespacedName]bool
	counts   changeCounts          // kube-proxy's change metrics and trigger times (counts.go)
	nodeObjs map[string]nodeObject // Node name → what the model reads of it (topology.go)
	// serviceCIDRs are the CIDRs of each ServiceCIDR object, by name (nodeconfig.go).
	serviceCIDRs map[string][]netip.Prefix

	// Derived, kept between snapshots.
	keys      []types.NamespacedName // services with ports, sorted
	raw       map[types.NamespacedName][]*ServicePort
	effective map[types.NamespacedName][]*ServicePort
	// flat is the last State's Services (effective ports in key order).
	flat      []*ServicePort
	endpoints int                                // across flat
	problems  map[types.NamespacedName][]Problem // invalid parts of each service
	// lost are the frontends each service lost to others (see ResolveFrontends), and conflicts
	// the same as Problems, one per distinct reason.
	lost      map[types.NamespacedName][]Conflict
	conflicts map[types.NamespacedName][]Problem
	claims    map[frontendKey][]types.NamespacedName // sorted claimants of every frontend
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
		bySvc:     map[types.NamespacedName][]*discovery.EndpointSlice{},
		dirty:     map[types.NamespacedName]bool{},
		raw:       map[types.NamespacedName][]*ServicePort{},
		effective: map[types.NamespacedName][]*ServicePort{},
		problems:  map[types.NamespacedName][]Problem{},
		lost:      map[types.NamespacedName][]Conflict{},
		conflicts: map[types.NamespacedName][]Problem{},
		claims:    map[frontendKey][]types.NamespacedName{},
		counts:    newChangeCounts(),
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

func (t *Tracker) apply(obj runtime.Object, deleted bool) (changed bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	defer func() { t.counts.note(obj, deleted, changed) }()
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
		t.bySvc[svc] = insertSlice(t.bySvc[svc], o)
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
	sl := t.bySvc[svc]
	if i, found := slices.BinarySearchFunc(sl, old.Name, bySliceName); found {
		sl = slices.Delete(sl, i, i+1)
	}
	if len(sl) == 0 {
		delete(t.bySvc, svc)
	} else {
		t.bySvc[svc] = sl
	}
	t.dirty[svc] = true
}

func bySliceName(s *discovery.EndpointSlice, name string) int { return strings.Compare(s.Name, name) }

// insertSlice puts o into sl (sorted by name), replacing the slice of the same name.
func insertSlice(sl []*discovery.EndpointSlice, o *discovery.EndpointSlice) []*discovery.EndpointSlice {
	i, found := slices.BinarySearchFunc(sl, o.Name, bySliceName)
	if found {
		sl[i] = o
		return sl
	}
	return slices.Insert(sl, i, o)
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
// the slice. Conflicts found since the previous Snapshot are passed to OnConflict before it returns.
func (t *Tracker) Snapshot() (*State, Changes) {
	t.mu.Lock()
	st, ch, reports := t.snapshot()
	t.mu.Unlock()
	t.report(reports)
	return st, ch
}

func (t *Tracker) snapshot() (*State, Changes, []conflictReport) {
	// Sized for the dirty services: at a first sync of 100,000, growing it step by step (and
	// hashing every key again at each step) cost a tenth of a second.
	ch := Changes{Full: t.full, Services: make(map[types.NamespacedName]bool, len(t.dirty)), Triggers: t.counts.checkout()}
	// seeds are the services whose frontends may have changed hands: the changed ones and every
	// service that shares, or shared, a frontend with one.
	seeds := make(map[types.NamespacedName]bool, len(t.dirty))
	present := make(map[types.NamespacedName]bool, len(t.dirty))
	for k := range t.dirty {
		seeds[k] = true
		ch.Services[k] = true
		t.setClaims(k, false, seeds)
		var ports []*ServicePort
		var problems []Problem
		if svc, ok := t.services[k]; ok {
			ports, problems = ServicePorts(svc, t.bySvc[k], t.node)
		}
		present[k] = len(ports) > 0
		if len(ports) > 0 {
			t.raw[k] = ports
		} else {
			delete(t.raw, k)
		}
		t.setClaims(k, true, seeds)
		t.setProblems(k, problems)
	}
	t.setKeys(present)
	var reports []conflictReport
	seen := make(map[types.NamespacedName]bool, len(seeds))
	for k := range seeds {
		if !seen[k] {
			comp, contested := t.component(k, seen)
			reports = t.resolve(comp, contested, ch.Services, reports)
		}
	}
	clear(t.dirty)
	t.full = false

	st := &State{Node: t.node, Config: t.config, Services: t.flatten(ch.Services, ch.Full), EndpointCount: t.endpoints,
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
	return st, ch, reports
}

// setClaims adds (or removes) the frontends of k's ports to the index of who claims what, and
// adds every other claimant of them to seeds.
func (t *Tracker) setClaims(k types.NamespacedName, add bool, seeds map[types.NamespacedName]bool) {
	for _, sp := range t.raw[k] {
		for _, fe := range keysOf(sp) {
			if add {
				t.claim(fe, k)
			} else {
				t.unclaim(fe, k)
			}
			for _, o := range t.claims[fe] {
				seeds[o] = true
			}
		}
	}
}

// component returns the services linked to k by shared frontends (k included), marking them
// seen, and whether any frontend among them has more than one claim. Only those services
// decide who keeps their frontends, so they can be resolved apart from the rest.
func (t *Tracker) component(k types.NamespacedName, seen map[types.NamespacedName]bool) ([]types.NamespacedName, bool) {
	seen[k] = true
	comp := []types.NamespacedName{k}
	contested := false
	for i := 0; i < len(comp); i++ {
		for _, sp := range t.raw[comp[i]] {
			for _, fe := range keysOf(sp) {
				owners := t.claims[fe]
				contested = contested || len(owners) > 1
				for _, o := range owners {
					if !seen[o] {
						seen[o] = true
						comp = append(comp, o)
					}
				}
			}
		}
	}
	return comp, contested
}

// conflictReport is a new conflict for OnConflict.
type conflictReport struct {
	svc    v1.ObjectReference
	reason string
}

// resolve sets the effective ports of the services in comp (a component, and whether it is
// contested), marks those whose effective ports changed in changed (which holds the dirty
// services), and appends the conflicts not reported before to reports.
func (t *Tracker) resolve(comp []types.NamespacedName, contested bool, changed map[types.NamespacedName]bool,
	reports []conflictReport) []conflictReport {
	if !contested {
		// The common case: nobody shares anything with these services.
		for _, k := range comp {
			reports = t.setEffective(k, t.raw[k], nil, changed, reports)
		}
		return reports
	}
	slices.SortFunc(comp, compareKeys)
	var claims []Claim
	for _, k := range comp {
		created := t.services[k].CreationTimestamp.Time
		for _, sp := range t.raw[k] {
			claims = append(claims, Claim{Port: sp, Created: created})
		}
	}
	res := ResolveFrontends(claims)
	i := 0
	for _, k := range comp {
		var keep []*ServicePort
		for range t.raw[k] {
			if sp := res.Ports[i]; sp != nil {
				keep = append(keep, sp)
			}
			i++
		}
		var lost []Conflict
		for _, c := range res.Conflicts {
			if c.Port.NamespacedName == k {
				lost = append(lost, c)
			}
		}
		reports = t.setEffective(k, keep, lost, changed, reports)
	}
	return reports
}

// setEffective records what service k keeps of its ports after conflicts. A service that did not
// change and lost the same frontends as before keeps the same effective ports, unchanged.
func (t *Tracker) setEffective(k types.NamespacedName, keep []*ServicePort, lost []Conflict,
	changed map[types.NamespacedName]bool, reports []conflictReport) []conflictReport {
	if !changed[k] && slices.Equal(lost, t.lost[k]) {
		return reports
	}
	changed[k] = true
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
	if len(lost) == 0 {
		delete(t.lost, k)
		delete(t.conflicts, k)
		return reports
	}
	t.lost[k] = lost
	var ps []Problem
	for _, c := range lost {
		p := Problem{Kind: "Service", Object: k, Reason: c.String()}
		if !slices.Contains(ps, p) { // a dual-stack port loses a node port once per family
			ps = append(ps, p)
		}
	}
	for _, p := range ps {
		if slices.Contains(t.conflicts[k], p) {
			continue
		}
		t.log.Warn("service frontend left out", "service", k.String(), "reason", p.Reason)
		if svc := t.services[k]; svc != nil {
			reports = append(reports, conflictReport{svc: serviceRef(svc), reason: p.Reason})
		}
	}
	t.conflicts[k] = ps
	return reports
}

func serviceRef(svc *v1.Service) v1.ObjectReference {
	return v1.ObjectReference{Kind: "Service", APIVersion: "v1", Namespace: svc.Namespace, Name: svc.Name,
		UID: svc.UID, ResourceVersion: svc.ResourceVersion}
}

func (t *Tracker) report(rs []conflictReport) {
	if t.OnConflict == nil {
		return
	}
	for _, r := range rs {
		t.OnConflict(r.svc, r.reason)
	}
}

// ReportConflicts passes every current conflict to OnConflict again: after this agent became the
// one that records them, say.
func (t *Tracker) ReportConflicts() {
	t.mu.Lock()
	var rs []conflictReport
	for _, k := range slices.SortedFunc(maps.Keys(t.conflicts), compareKeys) {
		if svc := t.services[k]; svc != nil {
			for _, p := range t.conflicts[k] {
				rs = append(rs, conflictReport{svc: serviceRef(svc), reason: p.Reason})
			}
		}
	}
	t.mu.Unlock()
	t.report(rs)
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

// claim records one claim of fe by k. A service may claim one frontend more than once (its ports
// share its health check; hostile objects repeat a port): the owners list keeps every claim, so
// that a frontend claimed twice is seen as contested.
func (t *Tracker) claim(fe frontendKey, k types.NamespacedName) {
	owners := t.claims[fe]
	i, _ := slices.BinarySearchFunc(owners, k, compareKeys)
	t.claims[fe] = slices.Insert(owners, i, k)
}

// unclaim removes one claim of fe by k.
func (t *Tracker) unclaim(fe frontendKey, k types.NamespacedName) {
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
