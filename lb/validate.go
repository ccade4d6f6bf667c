package lb

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// pool is an IPAddressPool parsed for allocation.
type pool struct {
	name       string
	obj        *IPAddressPool
	ranges     []Range // sorted by first address, IPv4 before IPv6
	autoAssign bool
	avoidBuggy bool
	// restricted is set when the pool has a serviceAllocation; then the fields below apply.
	restricted   bool
	priority     int
	namespaces   []string
	nsSelectors  []labels.Selector
	svcSelectors []labels.Selector
}

// parsePool parses p; it returns the reasons p is invalid, if any.
func parsePool(p *IPAddressPool) (*pool, []string) {
	out := &pool{name: p.Name, obj: p, autoAssign: p.Spec.AutoAssign == nil || *p.Spec.AutoAssign,
		avoidBuggy: p.Spec.AvoidBuggyIPs}
	var errs []string
	if len(p.Spec.Addresses) == 0 {
		errs = append(errs, "spec.addresses is empty")
	}
	for i, s := range p.Spec.Addresses {
		r, err := ParseRange(s)
		if err != nil {
			errs = append(errs, fmt.Sprintf("spec.addresses[%d]: %v", i, err))
			continue
		}
		if why := specialRange(r); why != "" {
			errs = append(errs, fmt.Sprintf("spec.addresses[%d]: %s %s", i, s, why))
			continue
		}
		for _, o := range out.ranges {
			if r.Overlaps(o) {
				errs = append(errs, fmt.Sprintf("spec.addresses[%d]: %s overlaps %s", i, r, o))
			}
		}
		out.ranges = append(out.ranges, r)
	}
	slices.SortFunc(out.ranges, func(a, b Range) int { return a.First.Compare(b.First) })
	if a := p.Spec.AllocateTo; a != nil {
		out.restricted = true
		out.priority = a.Priority
		if a.Priority < 0 {
			errs = append(errs, fmt.Sprintf("spec.serviceAllocation.priority %d is negative", a.Priority))
		}
		out.namespaces = a.Namespaces
		for i, s := range a.Namespaces {
			if s == "" {
				errs = append(errs, fmt.Sprintf("spec.serviceAllocation.namespaces[%d] is empty", i))
			}
		}
		var e []string
		out.nsSelectors, e = parseSelectors("spec.serviceAllocation.namespaceSelectors", a.NamespaceSelectors)
		errs = append(errs, e...)
		out.svcSelectors, e = parseSelectors("spec.serviceAllocation.serviceSelectors", a.ServiceSelectors)
		errs = append(errs, e...)
	}
	return out, errs
}

// specialRanges are the blocks no load-balancer address may come from: the agent would program
// its proxy rules for them on every node (hijacking the nodes' own loopback, link-local or metadata
// traffic) and answer ARP/NDP or advertise routes for addresses that are not unicast.
var specialRanges = []struct {
	r   Range
	why string
}{
	{prefixRange(netip.MustParsePrefix("0.0.0.0/32")), "includes the unspecified address 0.0.0.0"},
	{prefixRange(netip.MustParsePrefix("127.0.0.0/8")), "overlaps the loopback range 127.0.0.0/8"},
	{prefixRange(netip.MustParsePrefix("169.254.0.0/16")), "overlaps the link-local range 169.254.0.0/16"},
	{prefixRange(netip.MustParsePrefix("224.0.0.0/4")), "overlaps the multicast range 224.0.0.0/4"},
	{prefixRange(netip.MustParsePrefix("255.255.255.255/32")), "includes the broadcast address 255.255.255.255"},
	{prefixRange(netip.MustParsePrefix("::/128")), "includes the unspecified address ::"},
	{prefixRange(netip.MustParsePrefix("::1/128")), "includes the loopback address ::1"},
	{prefixRange(netip.MustParsePrefix("fe80::/10")), "overlaps the link-local range fe80::/10"},
	{prefixRange(netip.MustParsePrefix("ff00::/8")), "overlaps the multicast range ff00::/8"},
}

// specialRange says why r may not be (part of) a pool, "" when it may. MetalLB v0.14.8 checks only
// the syntax of a pool's addresses; nodeagent refuses these blocks too, as the API server refuses
// them for a Service's externalIPs.
func specialRange(r Range) string {
	for _, s := range specialRanges {
		if r.Overlaps(s.r) {
			return s.why
		}
	}
	return ""
}

func parseSelectors(field string, in []metav1.LabelSelector) ([]labels.Selector, []string) {
	var out []labels.Selector
	var errs []string
	for i := range in {
		s, err := metav1.LabelSelectorAsSelector(&in[i])
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s[%d]: %v", field, i, err))
			continue
		}
		out = append(out, s)
	}
	return out, errs
}

// anyMatch reports whether any selector matches set; an empty list matches everything.
func anyMatch(sels []labels.Selector, set labels.Set) bool {
	if len(sels) == 0 {
		return true
	}
	for _, s := range sels {
		if s.Matches(set) {
			return true
		}
	}
	return false
}

// ValidateIPAddressPool returns the reasons p is invalid (nil when valid), for the manifests source.
// Overlaps with other pools are checked by Assign, which sees them all.
func ValidateIPAddressPool(p *IPAddressPool) []string {
	_, errs := parsePool(p)
	return errs
}

// ValidateL2Advertisement returns the reasons a is invalid (nil when valid).
func ValidateL2Advertisement(a *L2Advertisement) []string {
	_, errs := parseSelectors("spec.ipAddressPoolSelectors", a.Spec.IPAddressPoolSelectors)
	_, e := parseSelectors("spec.nodeSelectors", a.Spec.NodeSelectors)
	errs = append(errs, e...)
	for i, n := range a.Spec.IPAddressPools {
		if n == "" {
			errs = append(errs, fmt.Sprintf("spec.ipAddressPools[%d] is empty", i))
		}
	}
	for i, n := range a.Spec.Interfaces {
		if n == "" || len(n) > 15 || strings.ContainsAny(n, "/ \t") {
			errs = append(errs, fmt.Sprintf("spec.interfaces[%d]: %q is not an interface name", i, n))
		}
	}
	return errs
}

// ValidateBGPAdvertisement returns the reasons a is invalid (nil when valid). Community names that
// are not literal values are taken as Community aliases and resolved where all objects are known.
func ValidateBGPAdvertisement(a *BGPAdvertisement) []string {
	var errs []string
	if l := a.Spec.AggregationLength; l != nil && (*l < 0 || *l > 32) {
		errs = append(errs, fmt.Sprintf("spec.aggregationLength %d is not within 0-32", *l))
	}
	if l := a.Spec.AggregationLengthV6; l != nil && (*l < 0 || *l > 128) {
		errs = append(errs, fmt.Sprintf("spec.aggregationLengthV6 %d is not within 0-128", *l))
	}
	for i, c := range a.Spec.Communities {
		if c == "" {
			errs = append(errs, fmt.Sprintf("spec.communities[%d] is empty", i))
		} else if strings.Contains(c, ":") {
			if err := ValidateCommunityValue(c); err != nil {
				errs = append(errs, fmt.Sprintf("spec.communities[%d]: %v", i, err))
			}
		}
	}
	_, e := parseSelectors("spec.ipAddressPoolSelectors", a.Spec.IPAddressPoolSelectors)
	errs = append(errs, e...)
	_, e = parseSelectors("spec.nodeSelectors", a.Spec.NodeSelectors)
	return append(errs, e...)
}

// ValidateCommunityValue checks a BGP community: "AA:NN" (two 16-bit numbers) or a large
// community "large:AA:BB:CC" (three 32-bit numbers).
func ValidateCommunityValue(v string) error {
	parts := strings.Split(v, ":")
	bits := 16
	// "large" in lower case only, as MetalLB's community.New and bgp.ParseCommunities read it.
	if len(parts) == 4 && parts[0] == "large" {
		parts, bits = parts[1:], 32
	} else if len(parts) != 2 {
		return fmt.Errorf("community %q is neither AA:NN nor large:AA:BB:CC", v)
	}
	for _, p := range parts {
		if _, err := strconv.ParseUint(p, 10, bits); err != nil {
			return fmt.Errorf("community %q: %q is not a %d-bit number", v, p, bits)
		}
	}
	return nil
}

// ValidateCommunity returns the reasons c is invalid (nil when valid).
func ValidateCommunity(c *Community) []string {
	var errs []string
	seen := map[string]bool{}
	for i, a := range c.Spec.Communities {
		if a.Name == "" {
			errs = append(errs, fmt.Sprintf("spec.communities[%d].name is empty", i))
		} else if seen[a.Name] {
			errs = append(errs, fmt.Sprintf("spec.communities[%d]: name %q is defined twice", i, a.Name))
		}
		seen[a.Name] = true
		if err := ValidateCommunityValue(a.Value); err != nil {
			errs = append(errs, fmt.Sprintf("spec.communities[%d]: %v", i, err))
		}
	}
	return errs
}

// ValidateBGPPeer returns the reasons p is invalid (nil when valid), with MetalLB's rules: one of
// peerASN and dynamicASN, one of peerAddress and interface, keepalive shorter than hold time.
func ValidateBGPPeer(p *BGPPeer) []string {
	var errs []string
	s := &p.Spec
	if s.MyASN == 0 {
		errs = append(errs, "spec.myASN is not set")
	}
	switch {
	case s.ASN == 0 && s.DynamicASN == "":
		errs = append(errs, "one of spec.peerASN and spec.dynamicASN must be set")
	case s.ASN != 0 && s.DynamicASN != "":
		errs = append(errs, "spec.peerASN and spec.dynamicASN are mutually exclusive")
	}
	if s.DynamicASN != "" && s.DynamicASN != InternalASNMode && s.DynamicASN != ExternalASNMode {
		errs = append(errs, fmt.Sprintf("spec.dynamicASN %q is neither internal nor external", s.DynamicASN))
	}
	switch {
	case s.Address == "" && s.Interface == "":
		errs = append(errs, "one of spec.peerAddress and spec.interface must be set")
	case s.Address != "" && s.Interface != "":
		errs = append(errs, "spec.peerAddress and spec.interface are mutually exclusive")
	}
	if s.Address != "" {
		if _, err := parseAddr(s.Address); err != nil {
			errs = append(errs, fmt.Sprintf("spec.peerAddress: %v", err))
		}
	}
	if s.SrcAddress != "" {
		if _, err := parseAddr(s.SrcAddress); err != nil {
			errs = append(errs, fmt.Sprintf("spec.sourceAddress: %v", err))
		}
	}
	if s.RouterID != "" {
		if a, err := netip.ParseAddr(s.RouterID); err != nil || !a.Is4() {
			errs = append(errs, fmt.Sprintf("spec.routerID %q is not an IPv4 address", s.RouterID))
		}
	}
	hold, keep := 90*time.Second, 30*time.Second
	if s.HoldTime != nil {
		hold = s.HoldTime.Duration
		if hold != 0 && hold < 3*time.Second || hold > 65535*time.Second || hold < 0 {
			// BGP carries the hold time in 16 bits of seconds.
			errs = append(errs, fmt.Sprintf("spec.holdTime %s is neither 0 nor within 3s-65535s", hold))
		}
	}
	if s.KeepaliveTime != nil {
		keep = s.KeepaliveTime.Duration
	} else if s.HoldTime != nil {
		keep = hold / 3
	}
	if keep < 0 {
		errs = append(errs, fmt.Sprintf("spec.keepaliveTime %s is negative", keep))
	}
	if keep > hold {
		errs = append(errs, fmt.Sprintf("spec.keepaliveTime %s is longer than spec.holdTime %s", keep, hold))
	}
	if s.ConnectTime != nil && (s.ConnectTime.Duration < time.Second || s.ConnectTime.Duration > 65535*time.Second) {
		errs = append(errs, fmt.Sprintf("spec.connectTime %s is not within 1s-65535s", s.ConnectTime.Duration))
	}
	if s.Password != "" && s.PasswordSecret.Name != "" {
		errs = append(errs, "spec.password and spec.passwordSecret are mutually exclusive")
	}
	_, e := parseSelectors("spec.nodeSelectors", s.NodeSelectors)
	return append(errs, e...)
}

// ValidateBFDProfile returns the reasons p is invalid (nil when valid), with MetalLB's ranges:
// intervals 10–60000 ms, detectMultiplier 2–255, minimumTtl 1–254.
func ValidateBFDProfile(p *BFDProfile) []string {
	var errs []string
	check := func(name string, v *uint32, lo, hi uint32) {
		if v != nil && (*v < lo || *v > hi) {
			errs = append(errs, fmt.Sprintf("spec.%s %d is not within %d-%d", name, *v, lo, hi))
		}
	}
	s := &p.Spec
	check("receiveInterval", s.ReceiveInterval, 10, 60000)
	check("transmitInterval", s.TransmitInterval, 10, 60000)
	check("echoInterval", s.EchoInterval, 10, 60000)
	check("detectMultiplier", s.DetectMultiplier, 2, 255)
	check("minimumTtl", s.MinimumTTL, 1, 254)
	return errs
}
