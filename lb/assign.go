package lb

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	"nodeagent/object"
)

// Service annotations MetalLB reads, current and legacy (metallb.universe.tf) spellings.
const (
	AnnotationLoadBalancerIPs       = "metallb.io/loadBalancerIPs"
	AnnotationLoadBalancerIPsLegacy = "metallb.universe.tf/loadBalancerIPs"
	AnnotationAddressPool           = "metallb.io/address-pool"
	AnnotationAddressPoolLegacy     = "metallb.universe.tf/address-pool"
	AnnotationAllowSharedIP         = "metallb.io/allow-shared-ip"
	AnnotationAllowSharedIPLegacy   = "metallb.universe.tf/allow-shared-ip"
	// AnnotationAllocatedFromPool names the pool a Service's addresses came from. MetalLB v0.14.8's
	// controller writes the metallb.universe.tf spelling, v0.14.9 and later the metallb.io one;
	// either marks the service's status.loadBalancer.ingress as MetalLB's (or nodeagent's).
	AnnotationAllocatedFromPool       = "metallb.io/ip-allocated-from-pool"
	AnnotationAllocatedFromPoolLegacy = "metallb.universe.tf/ip-allocated-from-pool"
)

// Input is everything address allocation depends on.
type Input struct {
	Pools    []*IPAddressPool
	Services []*v1.Service
	// Namespaces give the labels serviceAllocation.namespaceSelectors match; a namespace that is
	// not listed has no labels.
	Namespaces []*v1.Namespace
	// Class is the spec.loadBalancerClass served (MetalLB's --lb-class): set, only services of
	// that class; "", only services without a class (MetalLB's default).
	Class string
	// Off turns allocation off (a cloud controller owns load-balancer status): no service is
	// served, every status is left as it is.
	Off bool
}

// Assignment is the addresses one Service gets.
type Assignment struct {
	// IPs holds one address per family, in the order of the service's ipFamilies.
	IPs []netip.Addr
	// Pool is the IPAddressPool the addresses come from.
	Pool string
}

// Problem is a Service that gets no address, or a pool left out (Kind "Service" or
// "IPAddressPool"), and why.
type Problem = object.Problem

// Result is the outcome of Assign.
type Result struct {
	// Assignments maps every served Service that got addresses to them.
	Assignments map[types.NamespacedName]Assignment
	// Problems lists served Services that got no address, and pools left out, in a stable order.
	Problems []Problem
	// Foreign are served Services whose status.loadBalancer.ingress someone else wrote (see
	// Assign): their status is left as it is.
	Foreign map[types.NamespacedName]bool
	// Pools counts each valid pool's addresses and those in use.
	Pools map[string]PoolUsage
	class string
	off   bool
}

// Serves reports whether the allocator is in charge of svc: a LoadBalancer Service whose
// loadBalancerClass is class, or unset when class is "" — MetalLB's rule: with --lb-class set,
// services without a class are not served.
func Serves(svc *v1.Service, class string) bool {
	if svc.Spec.Type != v1.ServiceTypeLoadBalancer {
		return false
	}
	if svc.Spec.LoadBalancerClass == nil || *svc.Spec.LoadBalancerClass == "" {
		return class == ""
	}
	return *svc.Spec.LoadBalancerClass == class
}

// Serves reports whether this result is in charge of svc's status: Serves(svc, class) with
// allocation on, and svc's status not written by someone else.
func (r *Result) Serves(svc *v1.Service) bool {
	return !r.off && Serves(svc, r.class) && !r.Foreign[types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}]
}

// Ingress returns the status.loadBalancer.ingress svc should have, and whether the allocator is in
// charge of svc at all (when it is not, its status belongs to someone else).
func (r *Result) Ingress(svc *v1.Service) ([]v1.LoadBalancerIngress, bool) {
	if !r.Serves(svc) {
		return nil, false
	}
	a, ok := r.Assignments[types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}]
	if !ok {
		return nil, true
	}
	out := make([]v1.LoadBalancerIngress, len(a.IPs))
	for i, ip := range a.IPs {
		mode := v1.LoadBalancerIPModeVIP
		out[i] = v1.LoadBalancerIngress{IP: ip.String(), IPMode: &mode}
	}
	return out, true
}

// Apply returns svc with status.loadBalancer.ingress set to its assignment (ipMode VIP), emptied
// when a served service got none. It returns svc itself when nothing changes or when svc is not
// served, and otherwise a modified copy: svc is never written to.
func (r *Result) Apply(svc *v1.Service) *v1.Service {
	ing, served := r.Ingress(svc)
	if !served || ingressEqual(svc.Status.LoadBalancer.Ingress, ing) {
		return svc
	}
	out := svc.DeepCopy()
	out.Status.LoadBalancer.Ingress = ing
	return out
}

// ingressEqual compares ingress lists, taking an unset ipMode as VIP (what the API server defaults
// it to) so that a status writer does not rewrite the same thing forever.
func ingressEqual(a, b []v1.LoadBalancerIngress) bool {
	return slices.EqualFunc(a, b, func(x, y v1.LoadBalancerIngress) bool {
		mode := func(m *v1.LoadBalancerIPMode) v1.LoadBalancerIPMode {
			if m == nil {
				return v1.LoadBalancerIPModeVIP
			}
			return *m
		}
		return x.IP == y.IP && x.Hostname == y.Hostname && mode(x.IPMode) == mode(y.IPMode) &&
			len(x.Ports) == 0 && len(y.Ports) == 0
	})
}

type portKey struct {
	proto v1.Protocol
	port  int32
}

func (p portKey) String() string { return fmt.Sprintf("%s/%d", p.proto, p.port) }

// request is one served Service, parsed.
type request struct {
	svc        *v1.Service
	name       types.NamespacedName
	families   []v1.IPFamily // wanted families, primary first
	preferDual bool          // PreferDualStack: the primary family alone will do
	requested  []netip.Addr  // spec.loadBalancerIP or the loadBalancerIPs annotation
	current    []netip.Addr  // status.loadBalancer.ingress
	poolName   string
	sharing    string // allow-shared-ip key ("" : no sharing)
	backend    string // the selector when externalTrafficPolicy is Local: only equal ones may share
	ports      []portKey
	nsLabels   labels.Set
}

// use is who holds one address.
type use struct {
	pool     string
	sharing  string
	backend  string
	ports    map[portKey]types.NamespacedName
	services []types.NamespacedName
}

type allocator struct {
	pools  []*pool // by name
	byName map[string]*pool
	used   map[netip.Addr]*use
	// low remembers, per pool and family, an address below which every address is used or
	// avoided, so that allocating n services without sharing costs O(n), not O(n²).
	low map[lowKey]netip.Addr
}

type lowKey struct {
	pool *pool
	v4   bool
}

// Assign computes the addresses of every served LoadBalancer Service. It is a pure function of its
// input: every agent given the same objects computes the same result.
//
// Services are taken oldest first (creation timestamp, then namespace/name) in three passes:
//  1. a service keeps the addresses in its status.loadBalancer.ingress while they are still valid
//     for it (inside a pool it may use, matching what it requests, not clashing with an older
//     holder) — that is how an address survives restarts and unrelated changes;
//  2. services requesting addresses (spec.loadBalancerIP, metallb.io/loadBalancerIPs) get them,
//     or a Problem saying why not;
//  3. the others get the lowest free (or shareable) address of each family from the first pool
//     that has one: the pool they name (metallb.io/address-pool), else autoAssign pools in
//     priority order (serviceAllocation.priority ascending, then restricted pools without a
//     priority, then unrestricted pools; ties by name).
//
// A dual-stack service gets both addresses from the same pool. Services may share an address as
// MetalLB allows: the same allow-shared-ip key, no port used twice, and with
// externalTrafficPolicy Local only services with the same selector.
//
// A service whose status.loadBalancer.ingress someone else wrote is left alone (Result.Foreign,
// and a Problem says so): an entry that is a hostname, or an address no pool holds, on a service
// without the ip-allocated-from-pool annotation. MetalLB clears such a status and allocates
// anew; nodeagent never rewrites an ingress entry it did not assign (a cloud controller's, say),
// while a status it wrote, annotated, is cleared when its pool goes away, as MetalLB does.
func Assign(in Input) *Result {
	res := &Result{Assignments: map[types.NamespacedName]Assignment{}, Foreign: map[types.NamespacedName]bool{},
		class: in.Class, off: in.Off}
	if in.Off {
		return res
	}
	a := &allocator{byName: map[string]*pool{}, used: map[netip.Addr]*use{}, low: map[lowKey]netip.Addr{}}
	a.setPools(in.Pools, res)

	nsLabels := map[string]labels.Set{}
	for _, ns := range in.Namespaces {
		nsLabels[ns.Name] = ns.Labels
	}
	var reqs []*request
	seen := map[types.NamespacedName]bool{}
	for _, svc := range sortedServices(in.Services) {
		if !Serves(svc, in.Class) {
			continue
		}
		name := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
		if seen[name] {
			continue
		}
		seen[name] = true
		if why := a.foreign(svc); why != "" {
			res.Foreign[name] = true
			res.problem(name, why)
			continue
		}
		req, err := parseRequest(svc)
		if err != nil {
			p := Problem{Kind: "Service", Object: name, Reason: err.Error()}
			if errors.As(err, new(requestedIPsError)) {
				p.Event = EventLoadBalancerFailed
			}
			res.Problems = append(res.Problems, p)
			continue
		}
		req.nsLabels = nsLabels[svc.Namespace]
		reqs = append(reqs, req)
	}

	done := map[*request]bool{}
	for _, req := range reqs { // 1: keep valid current addresses
		if len(req.current) == 0 {
			continue
		}
		if len(req.requested) > 0 && !sameAddrs(req.current, req.requested) {
			continue
		}
		if p, err := a.check(req, req.current); err == nil {
			a.claim(req, p, req.current, res)
			done[req] = true
		}
	}
	for _, req := range reqs { // 2: requested addresses
		if done[req] || len(req.requested) == 0 {
			continue
		}
		done[req] = true
		p, err := a.check(req, req.requested)
		if err != nil {
			res.problem(req.name, err.Error())
			continue
		}
		a.claim(req, p, req.requested, res)
	}
	for _, req := range reqs { // 3: allocation
		if done[req] {
			continue
		}
		p, ips, err := a.allocate(req)
		if err != nil {
			res.problem(req.name, err.Error())
			continue
		}
		a.claim(req, p, ips, res)
	}
	res.Pools = a.usage()
	return res
}

// foreign returns why svc's status.loadBalancer.ingress was written by someone else ("": it was
// not, or it is empty).
func (a *allocator) foreign(svc *v1.Service) string {
	if svc.Annotations[AnnotationAllocatedFromPool] != "" || svc.Annotations[AnnotationAllocatedFromPoolLegacy] != "" {
		return ""
	}
	for _, ing := range svc.Status.LoadBalancer.Ingress {
		if ing.IP == "" && ing.Hostname == "" {
			continue
		}
		what := ing.Hostname
		if ip, err := parseAddr(ing.IP); err == nil {
			if a.poolFor(ip) != nil {
				continue
			}
			what = ip.String()
		} else if ing.IP != "" {
			what = ing.IP
		}
		return fmt.Sprintf("status.loadBalancer.ingress holds %s, which no IPAddressPool has and which was not allocated here (no annotation %s): left as it is",
			what, AnnotationAllocatedFromPool)
	}
	return ""
}

func (r *Result) problem(name types.NamespacedName, reason string) {
	r.Problems = append(r.Problems, Problem{Kind: "Service", Object: name, Reason: reason})
}

// setPools parses the pools, leaving out (with a Problem) invalid ones, a second pool of the same
// name, and pools overlapping an earlier one (by namespace/name).
func (a *allocator) setPools(in []*IPAddressPool, res *Result) {
	sorted := slices.Clone(in)
	slices.SortFunc(sorted, func(x, y *IPAddressPool) int {
		return cmp.Or(cmp.Compare(x.Namespace, y.Namespace), cmp.Compare(x.Name, y.Name))
	})
	bad := func(p *IPAddressPool, reason string) {
		res.Problems = append(res.Problems, Problem{Kind: "IPAddressPool",
			Object: types.NamespacedName{Namespace: p.Namespace, Name: p.Name}, Reason: reason})
	}
outer:
	for _, obj := range sorted {
		p, errs := parsePool(obj)
		if len(errs) > 0 {
			bad(obj, strings.Join(errs, "; "))
			continue
		}
		if o := a.byName[p.name]; o != nil {
			bad(obj, fmt.Sprintf("another pool named %q exists in namespace %s", p.name, o.obj.Namespace))
			continue
		}
		for _, o := range a.pools {
			for _, r := range p.ranges {
				for _, or := range o.ranges {
					if r.Overlaps(or) {
						bad(obj, fmt.Sprintf("%s overlaps %s of pool %s", r, or, o.name))
						continue outer
					}
				}
			}
		}
		a.pools = append(a.pools, p)
		a.byName[p.name] = p
	}
	slices.SortFunc(a.pools, func(x, y *pool) int { return cmp.Compare(x.name, y.name) })
}

func sortedServices(in []*v1.Service) []*v1.Service {
	out := slices.Clone(in)
	slices.SortStableFunc(out, func(x, y *v1.Service) int {
		return cmp.Or(x.CreationTimestamp.Time.Compare(y.CreationTimestamp.Time),
			cmp.Compare(x.Namespace, y.Namespace), cmp.Compare(x.Name, y.Name))
	})
	return out
}

// annotation returns the value of a MetalLB annotation under either spelling.
func annotation(svc *v1.Service, current, legacy string) (string, error) {
	c, l := strings.TrimSpace(svc.Annotations[current]), strings.TrimSpace(svc.Annotations[legacy])
	if c != "" && l != "" && c != l {
		return "", fmt.Errorf("annotations %s=%q and %s=%q disagree", current, c, legacy, l)
	}
	return cmp.Or(c, l), nil
}

func familyOf(a netip.Addr) v1.IPFamily {
	if a.Is4() {
		return v1.IPv4Protocol
	}
	return v1.IPv6Protocol
}

// serviceFamilies returns the families a service wants addresses of, primary first.
func serviceFamilies(svc *v1.Service) []v1.IPFamily {
	var fams []v1.IPFamily
	for _, f := range svc.Spec.IPFamilies {
		if (f == v1.IPv4Protocol || f == v1.IPv6Protocol) && !slices.Contains(fams, f) {
			fams = append(fams, f)
		}
	}
	if len(fams) == 0 {
		fams = []v1.IPFamily{v1.IPv4Protocol}
		if a, err := netip.ParseAddr(svc.Spec.ClusterIP); err == nil {
			fams[0] = familyOf(a)
		}
	}
	pol := svc.Spec.IPFamilyPolicy
	if pol == nil || *pol == v1.IPFamilyPolicySingleStack {
		fams = fams[:1]
	}
	return fams
}

// EventLoadBalancerFailed is the Event reason MetalLB's controller records for a Service whose
// requested addresses (spec.loadBalancerIP, the loadBalancerIPs annotation) cannot be used as
// written, where a failed allocation is AllocationFailed.
const EventLoadBalancerFailed = "LoadBalancerFailed"

// requestedIPsError is why a Service's requested addresses cannot be used as written.
type requestedIPsError string

func (e requestedIPsError) Error() string { return string(e) }

func parseRequest(svc *v1.Service) (*request, error) {
	req := &request{svc: svc, name: types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name},
		families: serviceFamilies(svc)}
	req.preferDual = svc.Spec.IPFamilyPolicy != nil && *svc.Spec.IPFamilyPolicy == v1.IPFamilyPolicyPreferDualStack
	var err error
	if req.poolName, err = annotation(svc, AnnotationAddressPool, AnnotationAddressPoolLegacy); err != nil {
		return nil, err
	}
	if req.sharing, err = annotation(svc, AnnotationAllowSharedIP, AnnotationAllowSharedIPLegacy); err != nil {
		return nil, err
	}
	if svc.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal {
		req.backend = labels.Set(svc.Spec.Selector).String()
	}
	for _, p := range svc.Spec.Ports {
		req.ports = append(req.ports, portKey{proto: cmp.Or(p.Protocol, v1.ProtocolTCP), port: p.Port})
	}
	ann, err := annotation(svc, AnnotationLoadBalancerIPs, AnnotationLoadBalancerIPsLegacy)
	if err != nil {
		return nil, err
	}
	var list []string
	switch spec := strings.TrimSpace(svc.Spec.LoadBalancerIP); {
	case ann != "" && spec != "":
		return nil, requestedIPsError(fmt.Sprintf("both spec.loadBalancerIP and annotation %s are set; use only the annotation", AnnotationLoadBalancerIPs))
	case ann != "":
		list = strings.Split(ann, ",")
	case spec != "":
		list = []string{spec}
	}
	if len(list) > 0 {
		byFamily := map[v1.IPFamily]netip.Addr{}
		for _, s := range list {
			a, err := parseAddr(strings.TrimSpace(s))
			if err != nil {
				return nil, requestedIPsError(fmt.Sprintf("invalid requested address %q: %v", strings.TrimSpace(s), err))
			}
			f := familyOf(a)
			if !slices.Contains(req.families, f) {
				return nil, requestedIPsError(fmt.Sprintf("requested address %s is %s but the service's families are %v", a, f, req.families))
			}
			if o, dup := byFamily[f]; dup {
				return nil, requestedIPsError(fmt.Sprintf("requested addresses %s and %s are both %s", o, a, f))
			}
			byFamily[f] = a
		}
		for _, f := range req.families {
			if a, ok := byFamily[f]; ok {
				req.requested = append(req.requested, a)
			} else if !req.preferDual {
				return nil, fmt.Errorf("the service is dual-stack and requests no %s address", f)
			}
		}
	}
	seen := map[v1.IPFamily]bool{}
	for _, ing := range svc.Status.LoadBalancer.Ingress {
		a, err := parseAddr(ing.IP)
		if err != nil {
			continue
		}
		if f := familyOf(a); slices.Contains(req.families, f) && !seen[f] {
			seen[f] = true
			req.current = append(req.current, a)
		}
	}
	slices.SortStableFunc(req.current, func(x, y netip.Addr) int {
		return cmp.Compare(slices.Index(req.families, familyOf(x)), slices.Index(req.families, familyOf(y)))
	})
	if len(req.current) < len(req.families) && !req.preferDual {
		req.current = nil // a dual-stack service lacking one family: allocate afresh
	}
	return req, nil
}

func sameAddrs(a, b []netip.Addr) bool {
	return len(a) == len(b) && !slices.ContainsFunc(a, func(x netip.Addr) bool { return !slices.Contains(b, x) })
}

// poolFor returns the pool holding addr (nil: none), honouring avoidBuggyIPs.
func (a *allocator) poolFor(addr netip.Addr) *pool {
	for _, p := range a.pools {
		if p.avoidBuggy && buggyIP(addr) {
			continue
		}
		for _, r := range p.ranges {
			if r.Contains(addr) {
				return p
			}
		}
	}
	return nil
}

// allows returns why the pool's serviceAllocation refuses req, or nil.
func (p *pool) allows(req *request) error {
	if !p.restricted {
		return nil
	}
	if len(p.namespaces) > 0 || len(p.nsSelectors) > 0 {
		if !slices.Contains(p.namespaces, req.name.Namespace) &&
			(len(p.nsSelectors) == 0 || !anyMatch(p.nsSelectors, req.nsLabels)) {
			return fmt.Errorf("pool %s does not serve namespace %s", p.name, req.name.Namespace)
		}
	}
	if !anyMatch(p.svcSelectors, req.svc.Labels) {
		return fmt.Errorf("pool %s does not serve this service (serviceSelectors)", p.name)
	}
	return nil
}

// conflict returns why req may not use addr, or nil when addr is free or shareable.
func (a *allocator) conflict(addr netip.Addr, req *request) error {
	u := a.used[addr]
	if u == nil {
		return nil
	}
	holder := u.services[0]
	switch {
	case u.sharing == "":
		return fmt.Errorf("address %s is already used by %s, which does not allow sharing", addr, holder)
	case req.sharing == "":
		return fmt.Errorf("address %s is already used by %s (sharing needs annotation %s on both)", addr, holder, AnnotationAllowSharedIP)
	case u.sharing != req.sharing:
		return fmt.Errorf("address %s is already used by %s with sharing key %q, not %q", addr, holder, u.sharing, req.sharing)
	case u.backend != req.backend:
		return fmt.Errorf("address %s is already used by %s and cannot be shared: externalTrafficPolicy Local services share only with Local services of the same selector", addr, holder)
	}
	for _, pk := range req.ports {
		if other, ok := u.ports[pk]; ok {
			return fmt.Errorf("port %s of address %s is already used by %s", pk, addr, other)
		}
	}
	return nil
}

// check returns the pool from which req may hold ips, or why it may not.
func (a *allocator) check(req *request, ips []netip.Addr) (*pool, error) {
	var p *pool
	for _, ip := range ips {
		q := a.poolFor(ip)
		switch {
		case q == nil:
			return nil, fmt.Errorf("address %s is not in any IPAddressPool", ip)
		case p != nil && q != p:
			return nil, fmt.Errorf("addresses %s and %s are in different pools (%s, %s)", ips[0], ip, p.name, q.name)
		}
		p = q
	}
	if req.poolName != "" && p.name != req.poolName {
		return nil, fmt.Errorf("address %s is in pool %s, not in pool %s named by annotation %s", ips[0], p.name, req.poolName, AnnotationAddressPool)
	}
	if err := p.allows(req); err != nil {
		return nil, err
	}
	for _, ip := range ips {
		if err := a.conflict(ip, req); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// poolRank orders pools for automatic allocation: a set priority first (lowest number first), then
// restricted pools without a priority, then unrestricted pools.
func poolRank(p *pool) (int, int) {
	switch {
	case p.restricted && p.priority > 0:
		return 0, p.priority
	case p.restricted:
		return 1, 0
	}
	return 2, 0
}

// allocate picks addresses for req.
func (a *allocator) allocate(req *request) (*pool, []netip.Addr, error) {
	var cands []*pool
	if req.poolName != "" {
		p := a.byName[req.poolName]
		if p == nil {
			return nil, nil, fmt.Errorf("pool %q named by annotation %s does not exist", req.poolName, AnnotationAddressPool)
		}
		if err := p.allows(req); err != nil {
			return nil, nil, err
		}
		cands = []*pool{p}
	} else {
		for _, p := range a.pools {
			if p.autoAssign && p.allows(req) == nil {
				cands = append(cands, p)
			}
		}
		slices.SortStableFunc(cands, func(x, y *pool) int {
			xr, xp := poolRank(x)
			yr, yp := poolRank(y)
			return cmp.Or(cmp.Compare(xr, yr), cmp.Compare(xp, yp))
		})
		if len(cands) == 0 {
			return nil, nil, fmt.Errorf("no IPAddressPool with autoAssign serves this service")
		}
	}
	tries := [][]v1.IPFamily{req.families}
	if req.preferDual && len(req.families) > 1 {
		tries = append(tries, req.families[:1])
	}
	for _, fams := range tries {
		for _, p := range cands {
			if ips, ok := a.freeIn(p, fams, req); ok {
				return p, ips, nil
			}
		}
	}
	names := make([]string, len(cands))
	for i, p := range cands {
		names[i] = p.name
	}
	return nil, nil, fmt.Errorf("no free %s address in pool(s) %s", strings.Join(familyNames(req.families), "+"), strings.Join(names, ", "))
}

func familyNames(fs []v1.IPFamily) []string {
	out := make([]string, len(fs))
	for i, f := range fs {
		out[i] = string(f)
	}
	return out
}

// freeIn returns, for each family, the lowest address of p that req may use.
func (a *allocator) freeIn(p *pool, fams []v1.IPFamily, req *request) ([]netip.Addr, bool) {
	var out []netip.Addr
	for _, f := range fams {
		ip, ok := a.lowestFree(p, f == v1.IPv4Protocol, req)
		if !ok {
			return nil, false
		}
		out = append(out, ip)
	}
	return out, true
}

// lowestFree walks p's ranges of one family from the bottom. Every address skipped is used or
// avoided, so the walk costs at most the number of used addresses plus the avoided ones; a
// request that does not share starts where the previous such walk ended.
func (a *allocator) lowestFree(p *pool, v4 bool, req *request) (netip.Addr, bool) {
	key := lowKey{pool: p, v4: v4}
	start, hinted := a.low[key]
	for _, r := range p.ranges {
		if r.Is4() != v4 || (req.sharing == "" && hinted && r.Last.Less(start)) {
			continue
		}
		first := r.First
		if req.sharing == "" && hinted && first.Less(start) {
			first = start
		}
		for ip := first; ; ip = ip.Next() {
			if !(p.avoidBuggy && buggyIP(ip)) && a.conflict(ip, req) == nil {
				if req.sharing == "" {
					a.low[key] = ip
				}
				return ip, true
			}
			if ip == r.Last {
				break
			}
		}
	}
	return netip.Addr{}, false
}

func (a *allocator) claim(req *request, p *pool, ips []netip.Addr, res *Result) {
	for _, ip := range ips {
		u := a.used[ip]
		if u == nil {
			u = &use{pool: p.name, sharing: req.sharing, backend: req.backend, ports: map[portKey]types.NamespacedName{}}
			a.used[ip] = u
		}
		u.services = append(u.services, req.name)
		for _, pk := range req.ports {
			u.ports[pk] = req.name
		}
	}
	res.Assignments[req.name] = Assignment{IPs: slices.Clone(ips), Pool: p.name}
}
