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

// Tracker tracks change: it keeps the current Services, EndpointSlices, Node and ServiceCIDR
// objects and remembers which services changed since the last Snapshot. A Snapshot hands those
// to the model (ServicePorts, per service), the conflict resolution (frontends.go: who keeps a
// frontend that several claim) and the view the proxiers read (state.go), each of which only
// recomputes what changed. It implements the source package's Sink. It is safe for concurrent
// use.
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

	frontends frontendIndex // frontends.go
	view      view          // state.go
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
		counts:    newChangeCounts(),
		frontends: newFrontendIndex(),
		view:      newView(),
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

// Snapshot returns the desired State and the services that changed since the previous Snapshot
// (or Next). The State is the caller's: the tracker never writes to it again. It shares
// unchanged ServicePorts with earlier States; nobody may modify them. Conflicts found since the
// previous Snapshot are passed to OnConflict before it returns. It lays out a State of its own
// each time, which at 25,000 services costs several times the change itself: a sync loop uses
// Next.
func (t *Tracker) Snapshot() (*State, Changes) { return t.Next(nil) }

// Next is Snapshot for a caller that is done with prev, the State the previous Snapshot or Next
// returned: the new State is built in prev's memory (patching 25,000 service ports in place costs
// a tenth of copying them), and prev is emptied, so that a read of it after the hand-over finds
// nothing rather than a State that changes. Any other prev (nil, an older State) is emptied too
// and costs a copy.
func (t *Tracker) Next(prev *State) (*State, Changes) {
	t.mu.Lock()
	handedBack := prev != nil && prev == t.view.last
	if prev != nil {
		*prev = State{}
	}
	st, ch, reports := t.snapshot(handedBack)
	t.mu.Unlock()
	t.report(reports)
	return st, ch
}

// snapshot hands the changes since the last one to the model (ServicePorts), the conflict
// resolution (frontendIndex) and the view, and returns the view's new State.
func (t *Tracker) snapshot(handedBack bool) (*State, Changes, []conflictReport) {
	// Sized for the dirty services: at a first sync of 100,000, growing it step by step (and
	// hashing every key again at each step) cost a tenth of a second.
	ch := Changes{Full: t.full, Services: make(map[types.NamespacedName]bool, len(t.dirty)), Triggers: t.counts.checkout()}
	seeds := make(map[types.NamespacedName]bool, len(t.dirty))
	present := make(map[types.NamespacedName]bool, len(t.dirty))
	for k := range t.dirty {
		ch.Services[k] = true
		c := ServiceClaim{Name: k}
		var problems []Problem
		if svc, ok := t.services[k]; ok {
			c.Created = svc.CreationTimestamp.Time
			c.Ports, problems = ServicePorts(svc, t.bySvc[k], t.node)
		}
		present[k] = len(c.Ports) > 0
		t.frontends.set(c, seeds)
		for _, p := range t.view.setProblems(k, problems) {
			t.log.Warn("invalid service", "service", k.String(), "reason", p.Reason)
		}
	}
	t.view.setKeys(present)
	var reports []conflictReport
	t.frontends.resolve(seeds, ch.Services, func(o ServiceOutcome) {
		ch.Services[o.Name] = true
		for _, p := range t.view.apply(o) {
			t.log.Warn("service frontend left out", "service", o.Name.String(), "reason", p.Reason)
			if svc := t.services[o.Name]; svc != nil {
				reports = append(reports, conflictReport{svc: serviceRef(svc), reason: p.Reason})
			}
		}
	})
	clear(t.dirty)
	t.full = false
	return t.view.state(t.node, t.config, t.serviceCIDRList(), ch.Services, ch.Full, handedBack), ch, reports
}

// conflictReport is a new conflict for OnConflict.
type conflictReport struct {
	svc    v1.ObjectReference
	reason string
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
	for _, k := range slices.SortedFunc(maps.Keys(t.view.conflicts), compareKeys) {
		if svc := t.services[k]; svc != nil {
			for _, p := range t.view.conflicts[k] {
				rs = append(rs, conflictReport{svc: serviceRef(svc), reason: p.Reason})
			}
		}
	}
	t.mu.Unlock()
	t.report(rs)
}
