package lb

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	"nodeagent/bgp"
)

// BGPInput is everything this node's BGP plan depends on.
type BGPInput struct {
	Node       string
	NodeLabels labels.Set
	// Excluded, when set, says why this node must not advertise load-balancer (or external)
	// addresses (NodeExcludedReason): its sessions stay up, its routes are withdrawn.
	Excluded       string
	Assignments    map[types.NamespacedName]Assignment
	Services       map[types.NamespacedName]*v1.Service
	EndpointSlices []*discovery.EndpointSlice
	Pools          []*IPAddressPool
	Peers          []*BGPPeer
	Advertisements []*BGPAdvertisement
	Communities    []*Community
	// ClusterIPs and ExternalIPs also advertise every service's cluster IPs and external IPs
	// to every peer (kube-router's --advertise-cluster-ip and --advertise-external-ip).
	ClusterIPs, ExternalIPs bool
}

// PlanBGP maps MetalLB's BGPPeer and BGPAdvertisement objects onto this node's sessions and
// routes, as MetalLB's speaker does: peers whose nodeSelectors match this node; for every assigned
// address in a pool a BGPAdvertisement selects (and whose nodeSelectors match this node), a route
// when the service has a ready endpoint — on this node for externalTrafficPolicy Local, anywhere
// otherwise — and the node is not excluded (in.Excluded). Problems are invalid objects, left out.
func PlanBGP(in BGPInput) ([]bgp.Peer, []bgp.Advertisement, []string) {
	var problems []string
	var peers []bgp.Peer
	for _, p := range sortedByName(in.Peers) {
		if !selectorsMatch(p.Spec.NodeSelectors, in.NodeLabels) {
			continue
		}
		bp, err := BGPPeerConfig(p)
		if err != nil {
			problems = append(problems, fmt.Sprintf("BGPPeer %s/%s: %v", p.Namespace, p.Name, err))
			continue
		}
		peers = append(peers, bp)
	}
	aliases := map[string]string{}
	for _, c := range in.Communities {
		for _, a := range c.Spec.Communities {
			aliases[a.Name] = a.Value
		}
	}
	poolLabels := map[string]labels.Set{}
	for _, p := range in.Pools {
		poolLabels[p.Name] = p.Labels
	}
	ready := ReadyNodes(in.EndpointSlices)
	var advs []bgp.Advertisement
	for _, name := range slices.SortedFunc(maps.Keys(in.Assignments), func(a, b types.NamespacedName) int {
		return strings.Compare(a.String(), b.String())
	}) {
		as := in.Assignments[name]
		svc := in.Services[name]
		if svc == nil || in.Excluded != "" || !eligible(svc, ready[name], in.Node) {
			continue
		}
		for _, ad := range sortedAds(in.Advertisements) {
			if !selectsPool(ad, as.Pool, poolLabels[as.Pool]) || !selectorsMatch(ad.Spec.NodeSelectors, in.NodeLabels) {
				continue
			}
			values := make([]string, 0, len(ad.Spec.Communities))
			for _, c := range ad.Spec.Communities {
				if v, ok := aliases[c]; ok {
					c = v
				}
				values = append(values, c)
			}
			std, large, err := bgp.ParseCommunities(values)
			if err != nil {
				problems = append(problems, fmt.Sprintf("BGPAdvertisement %s/%s: %v", ad.Namespace, ad.Name, err))
				continue
			}
			for _, ip := range as.IPs {
				a := bgp.Advertisement{Prefix: netip.PrefixFrom(ip, ip.BitLen()), LocalPref: ad.Spec.LocalPref,
					Communities: std, LargeCommunities: large, Peers: ad.Spec.Peers}
				agg := ad.Spec.AggregationLength
				if ip.Is6() {
					agg = ad.Spec.AggregationLengthV6
				}
				if agg != nil {
					a.AggregationLength = int(*agg)
				}
				advs = append(advs, a)
			}
		}
	}
	return peers, append(advs, serviceIPRoutes(in, ready)...), problems
}

// serviceIPRoutes are the host routes of the cluster and external IPs this node advertises when
// asked: cluster IPs while the service has a ready endpoint (on this node for
// internalTrafficPolicy Local), external IPs by the same rule as load-balancer addresses.
func serviceIPRoutes(in BGPInput, ready map[types.NamespacedName]map[string]bool) []bgp.Advertisement {
	if !in.ClusterIPs && !in.ExternalIPs {
		return nil
	}
	var advs []bgp.Advertisement
	route := func(s string) {
		if ip, err := netip.ParseAddr(s); err == nil {
			advs = append(advs, bgp.Advertisement{Prefix: netip.PrefixFrom(ip, ip.BitLen())})
		}
	}
	for _, name := range slices.SortedFunc(maps.Keys(in.Services), func(a, b types.NamespacedName) int {
		return strings.Compare(a.String(), b.String())
	}) {
		svc, readyOn := in.Services[name], ready[name]
		if in.ClusterIPs {
			local := svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == v1.ServiceInternalTrafficPolicyLocal
			if (local && readyOn[in.Node]) || (!local && len(readyOn) > 0) {
				for _, ip := range svc.Spec.ClusterIPs {
					route(ip)
				}
			}
		}
		if in.ExternalIPs && in.Excluded == "" && eligible(svc, readyOn, in.Node) {
			for _, ip := range svc.Spec.ExternalIPs {
				route(ip)
			}
		}
	}
	return advs
}

// eligible reports whether this node may advertise svc: a ready endpoint here for
// externalTrafficPolicy Local, anywhere otherwise.
func eligible(svc *v1.Service, readyOn map[string]bool, node string) bool {
	if svc.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal {
		return readyOn[node]
	}
	return len(readyOn) > 0
}

// BGPPeerConfig is the session configuration of a BGPPeer.
func BGPPeerConfig(p *BGPPeer) (bgp.Peer, error) {
	addr, err := netip.ParseAddr(p.Spec.Address)
	if err != nil {
		return bgp.Peer{}, fmt.Errorf("peerAddress %q: %w", p.Spec.Address, err)
	}
	out := bgp.Peer{Name: p.Namespace + "/" + p.Name, MyASN: p.Spec.MyASN, ASN: p.Spec.ASN, Address: addr,
		Port: p.Spec.Port, Password: p.Spec.Password, EBGPMultiHop: p.Spec.EBGPMultiHop,
		HoldTime: dur(p.Spec.HoldTime), KeepaliveTime: dur(p.Spec.KeepaliveTime), ConnectTime: dur(p.Spec.ConnectTime)}
	if p.Spec.RouterID != "" {
		if out.RouterID, err = netip.ParseAddr(p.Spec.RouterID); err != nil {
			return bgp.Peer{}, fmt.Errorf("routerID %q: %w", p.Spec.RouterID, err)
		}
	}
	if p.Spec.SrcAddress != "" {
		if out.SourceAddress, err = netip.ParseAddr(p.Spec.SrcAddress); err != nil {
			return bgp.Peer{}, fmt.Errorf("sourceAddress %q: %w", p.Spec.SrcAddress, err)
		}
	}
	return out, nil
}

func dur(d *metav1.Duration) time.Duration {
	if d == nil {
		return 0
	}
	return d.Duration
}

func selectsPool(ad *BGPAdvertisement, pool string, poolLabels labels.Set) bool {
	if len(ad.Spec.IPAddressPools) == 0 && len(ad.Spec.IPAddressPoolSelectors) == 0 {
		return true // MetalLB: no pool named or selected means every pool
	}
	return slices.Contains(ad.Spec.IPAddressPools, pool) ||
		(len(ad.Spec.IPAddressPoolSelectors) > 0 && selectorsMatch(ad.Spec.IPAddressPoolSelectors, poolLabels))
}

// selectorsMatch is MetalLB's rule: no selectors match every object, else any one must match.
func selectorsMatch(sels []metav1.LabelSelector, set labels.Set) bool {
	if len(sels) == 0 {
		return true
	}
	for i := range sels {
		s, err := metav1.LabelSelectorAsSelector(&sels[i])
		if err == nil && s.Matches(set) {
			return true
		}
	}
	return false
}

func sortedByName(ps []*BGPPeer) []*BGPPeer {
	out := slices.Clone(ps)
	slices.SortFunc(out, func(a, b *BGPPeer) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	return out
}

func sortedAds(as []*BGPAdvertisement) []*BGPAdvertisement {
	out := slices.Clone(as)
	slices.SortFunc(out, func(a, b *BGPAdvertisement) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	return out
}
