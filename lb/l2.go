package lb

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"fmt"
	"net/netip"
	"slices"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
)

// L2Input is everything the layer-2 announcement decision depends on.
type L2Input struct {
	// Assignments are Assign's result.
	Assignments map[types.NamespacedName]Assignment
	// Services and EndpointSlices say which services have ready endpoints, and on which nodes
	// (externalTrafficPolicy Local).
	Services       []*v1.Service
	EndpointSlices []*discoveryv1.EndpointSlice
	// Pools give the labels ipAddressPoolSelectors match.
	Pools          []*IPAddressPool
	Advertisements []*L2Advertisement
	// Nodes give the labels nodeSelectors match; a node that is not listed has no labels.
	Nodes []*v1.Node
	// Alive is the membership view: the nodes whose agents are up and may announce (already
	// filtered with NodeUnusableReason where Node objects are known).
	Alive []string
}

// L2Announcement is the layer-2 decision for one address.
type L2Announcement struct {
	Addr     netip.Addr
	Pool     string
	Services []types.NamespacedName // the services holding Addr, sorted
	// Owner is the one node that answers ARP/NDP for Addr ("" when none may; Reason says why).
	Owner string
	// Interfaces are where the owner answers; nil means every usable interface.
	Interfaces []string
	// Candidates are the nodes that may announce Addr, in preference order: Owner first, then the
	// node that takes over if Owner goes away, and so on.
	Candidates []string
	Reason     string
}

// L2Order sorts candidate nodes for addr into preference order: by SHA-256 of "node#addr", ties
// by name. The order depends on the address, not on the service, so services sharing an address
// fail over together; it spreads addresses across nodes, and removing a node moves only the
// addresses it owned. Every agent computes the same order. candidates is sorted in place.
func L2Order(addr netip.Addr, candidates []string) {
	key := func(n string) [sha256.Size]byte { return sha256.Sum256([]byte(n + "#" + addr.String())) }
	keys := make(map[string][sha256.Size]byte, len(candidates))
	for _, n := range candidates {
		keys[n] = key(n)
	}
	slices.SortFunc(candidates, func(a, b string) int {
		ka, kb := keys[a], keys[b]
		return cmp.Or(bytes.Compare(ka[:], kb[:]), cmp.Compare(a, b))
	})
}

// L2Owner returns the node among candidates that announces addr ("" when there is none).
func L2Owner(addr netip.Addr, candidates []string) string {
	if len(candidates) == 0 {
		return ""
	}
	c := slices.Clone(candidates)
	L2Order(addr, c)
	return c[0]
}

type l2Ad struct {
	obj      *L2Advertisement
	poolSels []labels.Selector
	nodeSels []labels.Selector
}

func (a *l2Ad) selectsPool(name string, poolLabels labels.Set) bool {
	s := &a.obj.Spec
	if len(s.IPAddressPools) == 0 && len(s.IPAddressPoolSelectors) == 0 {
		return true
	}
	return slices.Contains(s.IPAddressPools, name) || (len(a.poolSels) > 0 && anyMatch(a.poolSels, poolLabels))
}

// PlanL2 decides, for every assigned address, which node announces it and on which interfaces.
// It is stateless, MetalLB's layer-2 shape: a node may announce an address when it is alive,
// matches an L2Advertisement that selects the address's pool, and — for a service with
// externalTrafficPolicy Local — has a ready endpoint of it; among those, L2Order picks the owner.
// A service without any ready endpoint is not announced. The result is sorted by address.
func PlanL2(in L2Input) []L2Announcement {
	var ads []*l2Ad
	for _, obj := range in.Advertisements {
		ad := &l2Ad{obj: obj}
		var e1, e2 []string
		ad.poolSels, e1 = parseSelectors("", obj.Spec.IPAddressPoolSelectors)
		ad.nodeSels, e2 = parseSelectors("", obj.Spec.NodeSelectors)
		if len(e1)+len(e2) > 0 {
			continue // invalid: reported by ValidateL2Advertisement, matches nothing here
		}
		ads = append(ads, ad)
	}
	slices.SortFunc(ads, func(a, b *l2Ad) int {
		return cmp.Or(cmp.Compare(a.obj.Namespace, b.obj.Namespace), cmp.Compare(a.obj.Name, b.obj.Name))
	})
	poolLabels := map[string]labels.Set{}
	for _, p := range in.Pools {
		poolLabels[p.Name] = p.Labels
	}
	nodeLabels := map[string]labels.Set{}
	for _, n := range in.Nodes {
		nodeLabels[n.Name] = n.Labels
	}
	services := map[types.NamespacedName]*v1.Service{}
	for _, s := range in.Services {
		services[types.NamespacedName{Namespace: s.Namespace, Name: s.Name}] = s
	}
	ready := readyNodes(in.EndpointSlices)
	alive := slices.Clone(in.Alive)
	slices.Sort(alive)
	alive = slices.Compact(alive)

	byAddr := map[netip.Addr]*L2Announcement{}
	for name, as := range in.Assignments {
		for _, ip := range as.IPs {
			ann := byAddr[ip]
			if ann == nil {
				ann = &L2Announcement{Addr: ip, Pool: as.Pool}
				byAddr[ip] = ann
			}
			ann.Services = append(ann.Services, name)
		}
	}
	out := make([]L2Announcement, 0, len(byAddr))
	for _, ann := range byAddr {
		slices.SortFunc(ann.Services, func(a, b types.NamespacedName) int {
			return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
		})
		decideL2(ann, ads, poolLabels[ann.Pool], nodeLabels, services, ready, alive)
		out = append(out, *ann)
	}
	slices.SortFunc(out, func(a, b L2Announcement) int { return a.Addr.Compare(b.Addr) })
	return out
}

func decideL2(ann *L2Announcement, ads []*l2Ad, poolLabels labels.Set, nodeLabels map[string]labels.Set,
	services map[types.NamespacedName]*v1.Service, ready map[types.NamespacedName]map[string]bool, alive []string) {
	var poolAds []*l2Ad
	for _, ad := range ads {
		if ad.selectsPool(ann.Pool, poolLabels) {
			poolAds = append(poolAds, ad)
		}
	}
	if len(poolAds) == 0 {
		ann.Reason = fmt.Sprintf("no L2Advertisement selects pool %s", ann.Pool)
		return
	}
	// nodeAds: the advertisements through which each alive node may announce the pool.
	nodeAds := map[string][]*l2Ad{}
	for _, n := range alive {
		for _, ad := range poolAds {
			if anyMatch(ad.nodeSels, nodeLabels[n]) {
				nodeAds[n] = append(nodeAds[n], ad)
			}
		}
	}
	cands := map[string]bool{}
	anyEndpoints, anyLocal := false, false
	for _, name := range ann.Services {
		eps := ready[name]
		if len(eps) == 0 {
			continue // nothing would answer: not announced, as MetalLB does
		}
		anyEndpoints = true
		local := false
		if svc := services[name]; svc != nil && svc.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal {
			local, anyLocal = true, true
		}
		for n := range nodeAds {
			if !local || eps[n] {
				cands[n] = true
			}
		}
	}
	switch {
	case !anyEndpoints:
		ann.Reason = "no service on the address has a ready endpoint"
		return
	case len(cands) == 0 && len(nodeAds) == 0:
		ann.Reason = fmt.Sprintf("no alive node matches an L2Advertisement of pool %s", ann.Pool)
		return
	case len(cands) == 0 && anyLocal:
		ann.Reason = "no alive announcing node has a ready local endpoint (externalTrafficPolicy Local)"
		return
	}
	for n := range cands {
		ann.Candidates = append(ann.Candidates, n)
	}
	L2Order(ann.Addr, ann.Candidates)
	ann.Owner = ann.Candidates[0]
	for _, ad := range nodeAds[ann.Owner] {
		if len(ad.obj.Spec.Interfaces) == 0 {
			ann.Interfaces = nil
			return
		}
		ann.Interfaces = append(ann.Interfaces, ad.obj.Spec.Interfaces...)
	}
	slices.Sort(ann.Interfaces)
	ann.Interfaces = slices.Compact(ann.Interfaces)
}

// readyNodes maps each service to the nodes holding a ready endpoint of it.
func readyNodes(eps []*discoveryv1.EndpointSlice) map[types.NamespacedName]map[string]bool {
	out := map[types.NamespacedName]map[string]bool{}
	for _, s := range eps {
		svc := s.Labels[discoveryv1.LabelServiceName]
		if svc == "" {
			continue
		}
		name := types.NamespacedName{Namespace: s.Namespace, Name: svc}
		for _, ep := range s.Endpoints {
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			if len(ep.Addresses) == 0 {
				continue
			}
			node := ""
			if ep.NodeName != nil {
				node = *ep.NodeName
			}
			if out[name] == nil {
				out[name] = map[string]bool{}
			}
			out[name][node] = true
		}
	}
	return out
}

// Owned returns the addresses node must announce according to plan, each with its interfaces
// (nil: every usable interface) — the shape the ARP/NDP responder takes.
func Owned(plan []L2Announcement, node string) map[netip.Addr][]string {
	out := map[netip.Addr][]string{}
	for _, a := range plan {
		if a.Owner == node && node != "" {
			out[a.Addr] = a.Interfaces
		}
	}
	return out
}

// ReadyNodes returns, per service, the nodes that have a ready endpoint of it ("" for endpoints
// without a node name).
func ReadyNodes(eps []*discoveryv1.EndpointSlice) map[types.NamespacedName]map[string]bool {
	return readyNodes(eps)
}
