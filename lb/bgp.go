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
	BFDProfiles    []*BFDProfile
	// Namespace is the speaker's namespace, where BGPPeer.passwordSecret Secrets live; Secrets
	// holds that namespace's Secrets by name (type and password only).
	Namespace string
	Secrets   map[string]*v1.Secret
	// ClusterIPs and ExternalIPs also advertise every service's cluster IPs and external IPs
	// to every peer (kube-router's --advertise-cluster-ip and --advertise-external-ip).
	ClusterIPs, ExternalIPs bool
}

// PlanBGP maps MetalLB's BGPPeer and BGPAdvertisement objects onto this node's sessions and
// routes, as MetalLB's speaker does: peers whose nodeSelectors match this node; for every assigned
// address in a pool a BGPAdvertisement selects (and whose nodeSelectors match this node), a route
// when the service has a ready endpoint — on this node for externalTrafficPolicy Local, anywhere
// otherwise — and the node is not excluded (in.Excluded). Problems are objects left out (invalid,
// or a peer whose Secret or BFD profile is missing) and fields that are not honoured.
func PlanBGP(in BGPInput) ([]bgp.Peer, []bgp.Advertisement, []Problem) {
	var problems []Problem
	var peers []bgp.Peer
	for _, p := range sortedByName(in.Peers) {
		if !selectorsMatch(p.Spec.NodeSelectors, in.NodeLabels) {
			continue
		}
		name := types.NamespacedName{Namespace: p.Namespace, Name: p.Name}
		bp, err := BGPPeerConfig(p)
		if err == nil {
			err = resolvePeer(&bp, p, in)
		}
		for _, w := range unhonoured(p, in.BFDProfiles) {
			problems = append(problems, Problem{Kind: "BGPPeer", Object: name, Reason: w})
		}
		if err != nil {
			problems = append(problems, Problem{Kind: "BGPPeer", Object: name, Reason: "not configured: " + err.Error()})
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
				problems = append(problems, Problem{Kind: "BGPAdvertisement",
					Object: types.NamespacedName{Namespace: ad.Namespace, Name: ad.Name}, Reason: err.Error()})
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

// BGPPeerConfig converts what a BGPPeer says by itself; resolvePeer adds what it names elsewhere.
func BGPPeerConfig(p *BGPPeer) (bgp.Peer, error) {
	switch {
	case p.Spec.Interface != "":
		return bgp.Peer{}, fmt.Errorf("spec.interface %q: unnumbered BGP is not supported; set peerAddress", p.Spec.Interface)
	case p.Spec.VRFName != "":
		// Dialling from the default VRF would peer over another routing table than the one named.
		return bgp.Peer{}, fmt.Errorf("spec.vrf %q: sessions in a VRF are not supported", p.Spec.VRFName)
	}
	addr, err := netip.ParseAddr(p.Spec.Address)
	if err != nil {
		return bgp.Peer{}, fmt.Errorf("peerAddress %q: %w", p.Spec.Address, err)
	}
	out := bgp.Peer{Name: p.Namespace + "/" + p.Name, MyASN: p.Spec.MyASN, ASN: p.Spec.ASN, Address: addr,
		Port: p.Spec.Port, Password: p.Spec.Password, EBGPMultiHop: p.Spec.EBGPMultiHop,
		HoldTime: dur(p.Spec.HoldTime), KeepaliveTime: dur(p.Spec.KeepaliveTime), ConnectTime: dur(p.Spec.ConnectTime),
		DynamicASN: bgp.DynamicASN(p.Spec.DynamicASN)}
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

// resolvePeer fills in the peer's password from its passwordSecret and its BFD setting from its
// bfdProfile. Either one missing leaves the peer out, as MetalLB does.
func resolvePeer(out *bgp.Peer, p *BGPPeer, in BGPInput) error {
	if ref := p.Spec.PasswordSecret; ref.Name != "" {
		pw, err := secretPassword(ref, in.Namespace, in.Secrets)
		if err != nil {
			return err
		}
		out.Password = pw
	}
	if p.Spec.BFDProfile != "" {
		prof := findProfile(in.BFDProfiles, p.Namespace, p.Spec.BFDProfile)
		if prof == nil {
			return fmt.Errorf("bfdProfile %q: no BFDProfile of that name in namespace %s", p.Spec.BFDProfile, p.Namespace)
		}
		ms := func(v *uint32) time.Duration {
			if v == nil {
				return 0 // bgp's default, MetalLB's
			}
			return time.Duration(*v) * time.Millisecond
		}
		out.BFD = bgp.BFD{Enabled: true, ReceiveInterval: ms(prof.Spec.ReceiveInterval),
			TransmitInterval: ms(prof.Spec.TransmitInterval)}
		if m := prof.Spec.DetectMultiplier; m != nil {
			out.BFD.DetectMultiplier = *m
		}
	}
	return nil
}

// secretPassword reads a passwordSecret with MetalLB's rules: a kubernetes.io/basic-auth Secret
// with a "password" key, here in the speaker's namespace (the only one it may read).
func secretPassword(ref v1.SecretReference, namespace string, secrets map[string]*v1.Secret) (string, error) {
	if ref.Namespace != "" && ref.Namespace != namespace {
		return "", fmt.Errorf("passwordSecret %s/%s: only Secrets in nodeagent's namespace %s are read", ref.Namespace, ref.Name, namespace)
	}
	sec := secrets[ref.Name]
	if sec == nil {
		return "", fmt.Errorf("passwordSecret %s/%s not found", namespace, ref.Name)
	}
	if sec.Type != v1.SecretTypeBasicAuth {
		return "", fmt.Errorf("passwordSecret %s/%s has type %q, want %q", namespace, ref.Name, sec.Type, v1.SecretTypeBasicAuth)
	}
	pw, ok := sec.Data[v1.BasicAuthPasswordKey]
	if !ok || len(pw) == 0 {
		return "", fmt.Errorf("passwordSecret %s/%s has no %q key", namespace, ref.Name, v1.BasicAuthPasswordKey)
	}
	if len(pw) > 80 {
		// The kernel's TCP_MD5SIG key holds at most 80 bytes.
		return "", fmt.Errorf("passwordSecret %s/%s: password longer than 80 bytes", namespace, ref.Name)
	}
	return string(pw), nil
}

func findProfile(profiles []*BFDProfile, namespace, name string) *BFDProfile {
	for _, p := range profiles {
		if p.Namespace == namespace && p.Name == name {
			return p
		}
	}
	return nil
}

// unhonoured lists the settings of a peer (and of the BFD profile it names) that are accepted but
// have no effect here, one warning each.
func unhonoured(p *BGPPeer, profiles []*BFDProfile) []string {
	var w []string
	if p.Spec.EnableGracefulRestart {
		w = append(w, "spec.enableGracefulRestart is not honoured: the session runs without graceful restart (a stopping agent withdraws its routes)")
	}
	if p.Spec.DisableMP {
		w = append(w, "spec.disableMP is not honoured: one session carries both address families (MP-BGP)")
	}
	if prof := findProfile(profiles, p.Namespace, p.Spec.BFDProfile); prof != nil {
		where := fmt.Sprintf("BFDProfile %s/%s: ", prof.Namespace, prof.Name)
		s := prof.Spec
		if s.EchoMode != nil && *s.EchoMode {
			w = append(w, where+"echoMode is not honoured (GoBGP's BFD has no echo mode)")
		}
		if s.EchoInterval != nil {
			w = append(w, where+"echoInterval is not honoured (GoBGP's BFD has no echo mode)")
		}
		if s.PassiveMode != nil && *s.PassiveMode {
			w = append(w, where+"passiveMode is not honoured: this end sends BFD packets from the start")
		}
		if s.MinimumTTL != nil {
			w = append(w, where+"minimumTtl is not honoured (single-hop BFD sends TTL 255)")
		}
	}
	return w
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
