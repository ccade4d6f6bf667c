// Package metallb is nodeagent's MetalLB: it sits between a source and the proxy's tracker,
// gives LoadBalancer Services their addresses from IPAddressPools (the pure decisions of package
// lb) and hands the services on with status.loadBalancer.ingress filled in, so every proxy mode
// programs those addresses; and it tells the layer-2 responder which addresses this node owns.
package metallb

import (
	"log/slog"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	"nodeagent/bgp"
	"nodeagent/lb"
)

// Sink is where objects go next (the proxy's change tracker).
type Sink interface {
	Upsert(obj runtime.Object)
	Delete(obj runtime.Object)
	Synced()
}

// Options configure a Speaker.
type Options struct {
	// Node is this node's name.
	Node string
	// Class is the spec.loadBalancerClass served (--lb-class); "": services without a class.
	Class string
	// AllocationOff leaves every Service's load-balancer status to someone else (a cloud
	// controller): no address is assigned or announced, services pass through as they are
	// (--lb-allocation=false).
	AllocationOff bool
	// Next receives every object, Services with their assigned addresses.
	Next Sink
	// Announce, when set, receives the whole set of addresses this node must answer ARP/NDP for,
	// each with its interfaces (nil: all), whenever it changes.
	Announce func(owned map[netip.Addr][]string)
	// Layer2Services, when set with Announce, receives the whole set of services whose addresses
	// this node answers ARP/NDP for, sorted, whenever it changes. Called under the speaker's
	// lock: it must not block.
	Layer2Services func([]L2Service)
	// Alive, when set, returns the nodes whose agents are up (memberlist). Unset: the nodes
	// known from Node objects and endpoints, plus this one — every agent reading the same
	// manifests then computes the same owner.
	Alive func() []string
	// WriteStatus, when set (API mode), is called from a separate goroutine with each served
	// service whose status.loadBalancer.ingress or ip-allocated-from-pool annotation differs from
	// its assignment; it writes them (or does nothing when this agent is not the leader).
	WriteStatus func(Status)
	// Problem, when set, is told once about each new reason a served Service got no address or a
	// pool was left out (API mode records it as a Warning Event). Called under the speaker's
	// lock: it must not block.
	Problem func(obj v1.ObjectReference, p lb.Problem)
	// BGP, when set, receives this node's whole BGP plan (sessions and routes) whenever it changes.
	// It is called from a goroutine of its own, one call at a time and without the speaker's lock
	// (starting and stopping sessions may take seconds); plans made meanwhile collapse into the
	// latest.
	BGP func(peers []bgp.Peer, advs []bgp.Advertisement)
	// AdvertiseClusterIPs and AdvertiseExternalIPs add services' cluster and external IPs to
	// the BGP routes (--advertise-cluster-ip, --advertise-external-ip).
	AdvertiseClusterIPs, AdvertiseExternalIPs bool
	// Namespace is the speaker's own namespace: BGPPeer.passwordSecret Secrets are read from it
	// only; Secrets elsewhere are dropped.
	Namespace string
	Log       *slog.Logger
}

// Speaker assigns addresses and plans layer-2 announcements. It implements Sink itself.
type Speaker struct {
	o   Options
	log *slog.Logger

	mu       sync.Mutex
	synced   bool
	services map[types.NamespacedName]*v1.Service // as received
	sent     map[types.NamespacedName]*v1.Service // as handed to Next
	slices   map[types.NamespacedName]*discovery.EndpointSlice
	nodes    map[string]*v1.Node
	spaces   map[string]*v1.Namespace
	pools    map[types.NamespacedName]*lb.IPAddressPool
	l2ads    map[types.NamespacedName]*lb.L2Advertisement
	bgpPeers map[types.NamespacedName]*lb.BGPPeer
	bgpAds   map[types.NamespacedName]*lb.BGPAdvertisement
	comms    map[types.NamespacedName]*lb.Community
	bfds     map[types.NamespacedName]*lb.BFDProfile
	secrets  map[string]*v1.Secret // Options.Namespace's, by name: type and password only
	// bgpProblems are the current BGP planning problems, each logged and reported once.
	bgpProblems map[string]lb.Problem
	bgpPlan     *bgpPlan
	bgpNext     *bgpPlan // the newest plan not handed to Options.BGP yet
	bgpBusy     bool     // a goroutine is handing plans to Options.BGP
	// bgpExcluded is why this node's Node keeps it from advertising over BGP ("": it does not).
	bgpExcluded string
	// invalid are the BGP objects whose latest version is invalid while their previous valid
	// version stays in force, with the reason.
	invalid  map[objectKey]string
	result   *lb.Result
	problems map[string]bool
	owned    map[netip.Addr][]string
	l2svcs   []L2Service
	pending  map[types.NamespacedName]Status // status writes to do
	kick     chan struct{}
	// gen counts the changes of inputs; digest is the Digest of generation digestGen.
	gen, digestGen uint64
	digest         *PlanDigest
}

// New returns a Speaker.
func New(o Options) *Speaker {
	log := o.Log
	if log == nil {
		log = slog.Default()
	}
	return &Speaker{o: o, log: log,
		services: map[types.NamespacedName]*v1.Service{}, sent: map[types.NamespacedName]*v1.Service{},
		slices: map[types.NamespacedName]*discovery.EndpointSlice{}, nodes: map[string]*v1.Node{},
		spaces: map[string]*v1.Namespace{},
		pools:  map[types.NamespacedName]*lb.IPAddressPool{}, l2ads: map[types.NamespacedName]*lb.L2Advertisement{},
		bgpPeers: map[types.NamespacedName]*lb.BGPPeer{}, bgpAds: map[types.NamespacedName]*lb.BGPAdvertisement{},
		comms: map[types.NamespacedName]*lb.Community{}, invalid: map[objectKey]string{},
		bfds: map[types.NamespacedName]*lb.BFDProfile{}, secrets: map[string]*v1.Secret{}, bgpProblems: map[string]lb.Problem{},
		result: &lb.Result{}, problems: map[string]bool{},
		pending: map[types.NamespacedName]Status{}, kick: make(chan struct{}, 1)}
}

// WriteStatuses runs until done, calling Options.WriteStatus for every status that differs from
// its assignment, the latest wins; each write happens outside the speaker's lock.
func (s *Speaker) WriteStatuses(done <-chan struct{}) {
	for {
		select {
		case <-done:
			return
		case <-s.kick:
		}
		s.mu.Lock()
		batch := s.pending
		s.pending = map[types.NamespacedName]Status{}
		s.mu.Unlock()
		for _, st := range batch {
			s.o.WriteStatus(st)
		}
	}
}

// RewriteStatuses queues a status write for every served service whose status differs from its
// assignment: after this agent became the leader, say.
func (s *Speaker) RewriteStatuses() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, svc := range s.services {
		s.queueStatus(k, svc)
	}
}

// Status is the load-balancer state of a Service as the allocator wants it written: its
// status.loadBalancer.ingress and its ip-allocated-from-pool annotation.
type Status struct {
	Service types.NamespacedName
	UID     types.UID
	// ResourceVersion is the version the decision was made from: a write must not overwrite a
	// newer version (another controller's status, say), which will come with its own decision.
	ResourceVersion string
	// Ingress is the status to write (empty: the service got no address).
	Ingress []v1.LoadBalancerIngress
	// Pool is the pool the addresses come from ("": none, the annotation goes).
	Pool string
	// Was is the ingress the service has now.
	Was []v1.LoadBalancerIngress
	// IngressChanged says whether Ingress differs from Was; PoolAnnotated whether the service
	// already carries the ip-allocated-from-pool annotation Pool asks for.
	IngressChanged, PoolAnnotated bool
}

// statusFor returns the write svc needs, if any.
func (s *Speaker) statusFor(k types.NamespacedName, svc *v1.Service) (Status, bool) {
	ing, served := s.result.Ingress(svc)
	if !served {
		return Status{}, false
	}
	pool := s.result.Assignments[k].Pool
	changed := s.result.Apply(svc) != svc
	annotated := svc.Annotations[lb.AnnotationAllocatedFromPool] == pool && svc.Annotations[lb.AnnotationAllocatedFromPoolLegacy] == pool
	if !changed && annotated {
		return Status{}, false
	}
	return Status{Service: k, UID: svc.UID, ResourceVersion: svc.ResourceVersion, Ingress: ing, Pool: pool,
		Was: svc.Status.LoadBalancer.Ingress, IngressChanged: changed, PoolAnnotated: annotated}, true
}

// queueStatus queues the status write svc needs, if any.
func (s *Speaker) queueStatus(k types.NamespacedName, svc *v1.Service) {
	if s.o.WriteStatus == nil {
		return
	}
	st, ok := s.statusFor(k, svc)
	if !ok {
		return
	}
	s.pending[k] = st
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

func key(namespace, name string) types.NamespacedName {
	return types.NamespacedName{Namespace: namespace, Name: name}
}

// Upsert records an object and passes it on.
func (s *Speaker) Upsert(obj runtime.Object) { s.apply(obj, false) }

// Delete records a removal and passes it on.
func (s *Speaker) Delete(obj runtime.Object) { s.apply(obj, true) }

// Synced passes the end of the initial state on, after assigning every address once.
func (s *Speaker) Synced() {
	s.mu.Lock()
	s.synced = true
	s.reassign()
	s.replan()
	s.mu.Unlock()
	s.o.Next.Synced()
}

// MembershipChanged recomputes which node announces what, after a node joined, left or died.
func (s *Speaker) MembershipChanged() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gen++
	s.replan()
}

func (s *Speaker) apply(obj runtime.Object, deleted bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gen++
	switch o := obj.(type) {
	case *v1.Service:
		k := key(o.Namespace, o.Name)
		if deleted {
			delete(s.services, k)
			delete(s.sent, k)
			s.o.Next.Delete(o)
		} else {
			s.services[k] = o
		}
		if !s.synced {
			if !deleted {
				s.send(k, o)
			}
			return
		}
		// Only load-balancer services (and, when advertised, every service's IPs) change a plan;
		// replanning walks every slice, which a bulk load of plain services must not pay each time.
		lbRelevant := s.serves(o) || s.holds(s.result, k)
		if lbRelevant {
			s.reassign()
		} else if !deleted {
			s.send(k, o)
		}
		if lbRelevant || s.advertisesServiceIPs() {
			s.replan()
		}
		return
	case *discovery.EndpointSlice:
		k := key(o.Namespace, o.Name)
		if deleted {
			delete(s.slices, k)
			s.o.Next.Delete(o)
		} else {
			s.slices[k] = o
			s.o.Next.Upsert(o)
		}
		if s.synced && (s.holds(s.result, key(o.Namespace, o.Labels[discovery.LabelServiceName])) || s.advertisesServiceIPs()) {
			s.replan()
		}
		return
	case *v1.Node:
		old := s.nodes[o.Name]
		if deleted {
			delete(s.nodes, o.Name)
		} else {
			s.nodes[o.Name] = o
		}
		// The proxy needs this node's Node only: another node's heartbeat must not reach it.
		if o.Name == s.o.Node || s.o.Node == "" {
			if deleted {
				s.o.Next.Delete(o)
			} else {
				s.o.Next.Upsert(o)
			}
		}
		if !deleted && old != nil && !nodeChanged(old, o) {
			return // status heartbeats: nothing an announcement depends on
		}
	case *v1.Namespace:
		old := s.spaces[o.Name]
		if deleted {
			delete(s.spaces, o.Name)
		} else {
			s.spaces[o.Name] = o
		}
		// Only labels matter (serviceAllocation.namespaceSelectors).
		if s.synced && (old == nil || deleted || !maps.Equal(old.Labels, o.Labels)) {
			s.reassign()
			s.replan()
		}
		return
	case *lb.IPAddressPool:
		// An invalid edit of a pool would take back every address it gave: the previous version
		// stays in force, as for every other kind.
		if !storeValid(s, "IPAddressPool", s.pools, o, deleted, poolProblem) {
			return
		}
		if s.synced {
			s.reassign()
		}
	case *lb.L2Advertisement:
		if !storeValid(s, "L2Advertisement", s.l2ads, o, deleted, l2Problem) {
			return
		}
	case *lb.BGPPeer:
		if !storeValid(s, "BGPPeer", s.bgpPeers, o, deleted, peerProblem) {
			return
		}
	case *lb.BGPAdvertisement:
		if !storeValid(s, "BGPAdvertisement", s.bgpAds, o, deleted, adProblem) {
			return
		}
	case *lb.Community:
		if !storeValid(s, "Community", s.comms, o, deleted, communityProblem) {
			return
		}
	case *lb.BFDProfile:
		if !storeValid(s, "BFDProfile", s.bfds, o, deleted, bfdProblem) {
			return
		}
	case *v1.Secret:
		// Secrets go no further than here: only a BGPPeer's password is taken from them.
		if o.Namespace != s.o.Namespace {
			return
		}
		if deleted {
			delete(s.secrets, o.Name)
		} else {
			s.secrets[o.Name] = trimSecret(o)
		}
	default:
		if deleted {
			s.o.Next.Delete(obj)
		} else {
			s.o.Next.Upsert(obj)
		}
		return
	}
	if s.synced {
		s.replan()
	}
}

// nodeChanged reports whether an update of a Node changes anything announcements depend on: its
// labels (nodeSelectors, the exclude label) or whether it may announce (conditions).
func nodeChanged(old, cur *v1.Node) bool {
	return !maps.Equal(old.Labels, cur.Labels) || lb.NodeUnusableReason(old) != lb.NodeUnusableReason(cur)
}

// objectKey names an object of a kind.
type objectKey struct {
	kind string
	types.NamespacedName
}

// storeValid stores (or, deleted, forgets) v, a new version of a configuration object, and reports
// whether anything changed. An invalid version does not replace a valid one: a mistake in an
// edit must not close a working session or withdraw routes. It is reported instead, and the
// previous version stays in force until a valid version or a deletion comes. An invalid object
// with no valid predecessor is stored: planning leaves it out and reports it.
func storeValid[T interface {
	*O
	metav1.Object
}, O any](s *Speaker, kind string, m map[types.NamespacedName]T, v T, deleted bool, problem func(T) string) bool {
	k := key(v.GetNamespace(), v.GetName())
	ok := objectKey{kind, k}
	if deleted {
		delete(s.invalid, ok)
		delete(m, k)
		return true
	}
	why := problem(v)
	if prev, had := m[k]; why != "" && had && problem(prev) == "" {
		if s.invalid[ok] != why {
			s.invalid[ok] = why
			s.log.Warn("invalid edit ignored; the previous version stays in force", "kind", kind, "object", k.String(), "reason", why)
			s.report(lb.Problem{Kind: kind, Object: k, Reason: invalidEdit + why})
		}
		return false
	}
	if _, was := s.invalid[ok]; was && why == "" {
		s.log.Info("valid again; the new version is in force", "kind", kind, "object", k.String())
	}
	delete(s.invalid, ok)
	m[k] = v
	return true
}

// invalidEdit starts the reason of a problem report about an ignored edit.
const invalidEdit = "invalid edit ignored, the previous version stays in force: "

// peerProblem says why a BGPPeer cannot be used ("": it can).
func peerProblem(p *lb.BGPPeer) string {
	why := lb.ValidateBGPPeer(p)
	if _, err := lb.BGPPeerConfig(p); err != nil {
		why = append(why, err.Error())
	}
	return strings.Join(why, "; ")
}

// adProblem says why a BGPAdvertisement cannot be used ("": it can).
func adProblem(a *lb.BGPAdvertisement) string {
	return strings.Join(lb.ValidateBGPAdvertisement(a), "; ")
}

// poolProblem says why an IPAddressPool cannot be used ("": it can).
func poolProblem(p *lb.IPAddressPool) string { return strings.Join(lb.ValidateIPAddressPool(p), "; ") }

// l2Problem says why an L2Advertisement cannot be used ("": it can).
func l2Problem(a *lb.L2Advertisement) string {
	return strings.Join(lb.ValidateL2Advertisement(a), "; ")
}

// bfdProblem says why a BFDProfile cannot be used ("": it can).
func bfdProblem(p *lb.BFDProfile) string { return strings.Join(lb.ValidateBFDProfile(p), "; ") }

// trimSecret keeps what a BGPPeer may use of a Secret, so other keys are not held in memory.
func trimSecret(sec *v1.Secret) *v1.Secret {
	out := &v1.Secret{Type: sec.Type}
	out.Namespace, out.Name = sec.Namespace, sec.Name
	if pw, ok := sec.Data[v1.BasicAuthPasswordKey]; ok {
		out.Data = map[string][]byte{v1.BasicAuthPasswordKey: pw}
	} else if pw, ok := sec.StringData[v1.BasicAuthPasswordKey]; ok {
		// Manifests may carry stringData; the API server folds it into data.
		out.Data = map[string][]byte{v1.BasicAuthPasswordKey: []byte(pw)}
	}
	return out
}

// communityProblem says why a Community cannot be used ("": it can).
func communityProblem(c *lb.Community) string { return strings.Join(lb.ValidateCommunity(c), "; ") }

// serves reports whether svc's load-balancer addresses are this speaker's to assign.
func (s *Speaker) serves(svc *v1.Service) bool {
	return !s.o.AllocationOff && lb.Serves(svc, s.o.Class)
}

func (s *Speaker) holds(r *lb.Result, k types.NamespacedName) bool {
	_, ok := r.Assignments[k]
	return ok
}

// send hands svc on with its assigned addresses, unless Next already has exactly that.
func (s *Speaker) send(k types.NamespacedName, svc *v1.Service) {
	if s.synced {
		s.queueStatus(k, svc)
	}
	out := s.result.Apply(svc)
	if s.sent[k] == out {
		return
	}
	s.sent[k] = out
	s.o.Next.Upsert(out)
}

// reassign runs the allocation over every LoadBalancer service and passes on the services whose
// addresses changed. Allocation is deterministic, so every agent computes the same result.
func (s *Speaker) reassign() {
	in := lb.Input{Class: s.o.Class, Off: s.o.AllocationOff}
	for _, p := range s.pools {
		in.Pools = append(in.Pools, p)
	}
	for _, ns := range s.spaces {
		in.Namespaces = append(in.Namespaces, ns)
	}
	for _, svc := range s.services {
		if s.serves(svc) {
			in.Services = append(in.Services, svc)
		}
	}
	s.result = lb.Assign(in)
	seen := map[string]bool{}
	for _, p := range s.result.Problems {
		msg := p.String()
		seen[msg] = true
		if !s.problems[msg] {
			s.log.Warn("load-balancer address not assigned", "object", p.Object.String(), "kind", p.Kind, "reason", p.Reason)
			s.report(p)
		}
	}
	s.problems = seen
	for _, k := range slices.SortedFunc(maps.Keys(s.services), func(a, b types.NamespacedName) int {
		if a.Namespace != b.Namespace {
			return compare(a.Namespace, b.Namespace)
		}
		return compare(a.Name, b.Name)
	}) {
		s.send(k, s.services[k])
	}
}

// PoolUsage returns each valid pool's address counts (MetalLB's allocator metrics).
func (s *Speaker) PoolUsage() map[string]lb.PoolUsage {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.result.Pools)
}

// ReportProblems tells Options.Problem about every current problem again: after this agent
// became the one that records them, say.
func (s *Speaker) ReportProblems() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.result.Problems {
		s.report(p)
	}
	for k, why := range s.invalid {
		s.report(lb.Problem{Kind: k.kind, Object: k.NamespacedName, Reason: invalidEdit + why})
	}
	for _, p := range s.bgpProblems {
		s.report(p)
	}
}

// report passes p to Options.Problem with a reference to the object it is about.
func (s *Speaker) report(p lb.Problem) {
	if s.o.Problem == nil {
		return
	}
	ref := v1.ObjectReference{Kind: p.Kind, Namespace: p.Object.Namespace, Name: p.Object.Name}
	switch p.Kind {
	case "Service":
		ref.APIVersion = "v1"
		if svc := s.services[p.Object]; svc != nil {
			ref.UID, ref.ResourceVersion = svc.UID, svc.ResourceVersion
		}
	case "IPAddressPool":
		ref.APIVersion = lb.GroupVersion.String()
		if pool := s.pools[p.Object]; pool != nil {
			ref.UID, ref.ResourceVersion = pool.UID, pool.ResourceVersion
		}
	case "BGPPeer":
		ref.APIVersion = lb.GroupVersionV1beta2.String()
		if peer := s.bgpPeers[p.Object]; peer != nil {
			ref.UID = peer.UID
		}
	case "BGPAdvertisement":
		ref.APIVersion = lb.GroupVersion.String()
		if ad := s.bgpAds[p.Object]; ad != nil {
			ref.UID = ad.UID
		}
	case "Community":
		ref.APIVersion = lb.GroupVersion.String()
		if c := s.comms[p.Object]; c != nil {
			ref.UID = c.UID
		}
	case "BFDProfile":
		ref.APIVersion = lb.GroupVersion.String()
		if b := s.bfds[p.Object]; b != nil {
			ref.UID = b.UID
		}
	}
	s.o.Problem(ref, p)
}

func compare(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// replan decides which addresses this node announces, by layer 2 and by BGP, and tells the
// announcers when that changes.
func (s *Speaker) replan() {
	if !s.synced {
		return
	}
	s.replanBGP()
	if s.o.Announce == nil {
		return
	}
	plan := lb.PlanL2(s.l2Input())
	s.tellL2Services(plan)
	owned := lb.Owned(plan, s.o.Node)
	if maps.EqualFunc(owned, s.owned, slices.Equal[[]string]) && s.owned != nil {
		return
	}
	for a := range owned {
		if _, had := s.owned[a]; !had {
			s.log.Info("announcing load-balancer address", "addr", a.String(), "interfaces", owned[a])
		}
	}
	for a := range s.owned {
		if _, has := owned[a]; !has {
			s.log.Info("no longer announcing load-balancer address", "addr", a.String())
		}
	}
	s.owned = owned
	s.o.Announce(owned)
}

// l2Input is what the layer-2 plan is made from.
func (s *Speaker) l2Input() lb.L2Input {
	in := lb.L2Input{Assignments: s.result.Assignments}
	for k := range s.result.Assignments {
		in.Services = append(in.Services, s.services[k])
	}
	for _, sl := range s.slices {
		if s.advertisesServiceIPs() || s.holds(s.result, key(sl.Namespace, sl.Labels[discovery.LabelServiceName])) {
			in.EndpointSlices = append(in.EndpointSlices, sl)
		}
	}
	for _, p := range s.pools {
		in.Pools = append(in.Pools, p)
	}
	for _, a := range s.l2ads {
		in.Advertisements = append(in.Advertisements, a)
	}
	for _, n := range s.nodes {
		in.Nodes = append(in.Nodes, n)
	}
	in.Alive = s.alive()
	return in
}

// L2Service is a service whose addresses this node answers ARP/NDP for.
type L2Service struct {
	Service types.NamespacedName
	UID     types.UID
	// Interfaces are where this node answers (those of the service's lowest address this node
	// owns); nil means every usable interface.
	Interfaces []string
}

// tellL2Services passes the services this node announces by plan to Options.Layer2Services, when
// they changed.
func (s *Speaker) tellL2Services(plan []lb.L2Announcement) {
	if s.o.Layer2Services == nil {
		return
	}
	byName := map[types.NamespacedName]L2Service{}
	for _, a := range plan { // sorted by address
		if a.Owner != s.o.Node || s.o.Node == "" {
			continue
		}
		for _, k := range a.Services {
			if _, seen := byName[k]; seen {
				continue
			}
			l := L2Service{Service: k, Interfaces: a.Interfaces}
			if svc := s.services[k]; svc != nil {
				l.UID = svc.UID
			}
			byName[k] = l
		}
	}
	out := slices.SortedFunc(maps.Values(byName), func(a, b L2Service) int {
		return compare(a.Service.String(), b.Service.String())
	})
	if s.l2svcs != nil && slices.EqualFunc(out, s.l2svcs, func(a, b L2Service) bool {
		return a.Service == b.Service && a.UID == b.UID && slices.Equal(a.Interfaces, b.Interfaces)
	}) {
		return
	}
	if out == nil {
		out = []L2Service{}
	}
	s.l2svcs = out
	s.o.Layer2Services(out)
}

// alive is the membership view: memberlist's when there is one, else every node the objects name.
func (s *Speaker) alive() []string {
	var names []string
	if s.o.Alive != nil {
		names = s.o.Alive()
	} else {
		seen := map[string]bool{s.o.Node: true}
		for n := range s.nodes {
			seen[n] = true
		}
		for _, sl := range s.slices {
			for _, ep := range sl.Endpoints {
				if ep.NodeName != nil && *ep.NodeName != "" {
					seen[*ep.NodeName] = true
				}
			}
		}
		names = slices.Collect(maps.Keys(seen))
	}
	var out []string
	for _, n := range names {
		if node, ok := s.nodes[n]; ok && lb.NodeUnusableReason(node) != "" {
			continue
		}
		out = append(out, n)
	}
	return out
}

// advertisesServiceIPs reports whether BGP routes depend on every service, not only LoadBalancers.
func (s *Speaker) advertisesServiceIPs() bool {
	return s.o.BGP != nil && (s.o.AdvertiseClusterIPs || s.o.AdvertiseExternalIPs)
}

// bgpPlan is the last BGP plan handed to Options.BGP.
type bgpPlan struct {
	peers []bgp.Peer
	advs  []bgp.Advertisement
}

func (s *Speaker) replanBGP() {
	if s.o.BGP == nil {
		return
	}
	in := s.bgpInput(s.o.Node)
	if in.Excluded != s.bgpExcluded {
		if in.Excluded != "" {
			s.log.Warn("this node advertises no load-balancer address over BGP", "reason", in.Excluded)
		} else {
			s.log.Info("this node advertises load-balancer addresses over BGP again")
		}
		s.bgpExcluded = in.Excluded
	}
	peers, advs, problems := lb.PlanBGP(in)
	seen := make(map[string]lb.Problem, len(problems))
	for _, p := range problems {
		msg := p.String()
		seen[msg] = p
		if _, had := s.bgpProblems[msg]; !had {
			s.log.Warn("BGP configuration not applied as written", "kind", p.Kind, "object", p.Object.String(), "reason", p.Reason)
			s.report(p)
		}
	}
	s.bgpProblems = seen
	plan := &bgpPlan{peers: peers, advs: advs}
	if s.bgpPlan != nil && reflect.DeepEqual(plan, s.bgpPlan) {
		return
	}
	s.bgpPlan = plan
	s.bgpNext = plan
	if !s.bgpBusy {
		s.bgpBusy = true
		go s.deliverBGP()
	}
}

// bgpInput is what node's BGP plan is made from, as this agent sees it.
func (s *Speaker) bgpInput(node string) lb.BGPInput {
	in := lb.BGPInput{Node: node, Assignments: s.result.Assignments, Services: s.services,
		Pools: slices.Collect(maps.Values(s.pools)), Peers: slices.Collect(maps.Values(s.bgpPeers)),
		Advertisements: slices.Collect(maps.Values(s.bgpAds)), Communities: slices.Collect(maps.Values(s.comms)),
		BFDProfiles: slices.Collect(maps.Values(s.bfds)), Namespace: s.o.Namespace, Secrets: s.secrets,
		ClusterIPs: s.o.AdvertiseClusterIPs, ExternalIPs: s.o.AdvertiseExternalIPs}
	if n := s.nodes[node]; n != nil {
		in.NodeLabels = n.Labels
	}
	in.Excluded = lb.NodeExcludedReason(s.nodes[node])
	for _, sl := range s.slices {
		if s.advertisesServiceIPs() || s.holds(s.result, key(sl.Namespace, sl.Labels[discovery.LabelServiceName])) {
			in.EndpointSlices = append(in.EndpointSlices, sl)
		}
	}
	return in
}

// deliverBGP hands the newest plan to Options.BGP until none is waiting. It runs without the
// speaker's lock: a session that takes long to start or to close must not hold up the source
// events, which all need that lock.
func (s *Speaker) deliverBGP() {
	for {
		s.mu.Lock()
		plan := s.bgpNext
		s.bgpNext = nil
		if plan == nil {
			s.bgpBusy = false
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		s.o.BGP(plan.peers, plan.advs)
	}
}
