package bgp

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Defaults applied when a Peer leaves a timer unset. HoldTime and KeepaliveTime are MetalLB's
// (and RFC 4271's suggested) values; ConnectTime is shorter than GoBGP's 120 s so that a router that
// comes up late, or a peer that was unreachable, gets its session within seconds.
const (
	DefaultHoldTime    = 90 * time.Second
	DefaultConnectTime = 10 * time.Second
	// DefaultPort is the BGP port a session dials when Peer.Port is 0.
	DefaultPort = 179
)

// Peer is one BGP session as this node sees it: MetalLB's BGPPeer after node selectors have been
// applied and the password secret resolved.
type Peer struct {
	// Name identifies the session in logs, status and metrics (MetalLB's object name). Empty means
	// the peer address. Two peers may not share a name.
	Name string
	// MyASN is the local AS number announced to this peer (BGPPeer.myASN).
	MyASN uint32
	// ASN is the peer's AS number (BGPPeer.peerASN); equal to MyASN makes the session iBGP.
	ASN uint32
	// Address is the peer's address; IPv4 and IPv6 peers both carry both address families (MP-BGP).
	Address netip.Addr
	// Port is the peer's TCP port; 0 means 179.
	Port uint16
	// HoldTime is the proposed hold time; 0 means DefaultHoldTime. Otherwise at least 3 s.
	HoldTime time.Duration
	// KeepaliveTime is the keepalive interval; 0 means a third of the hold time.
	KeepaliveTime time.Duration
	// ConnectTime is the wait between connection attempts; 0 means DefaultConnectTime.
	ConnectTime time.Duration
	// RouterID is the BGP identifier sent to this peer; zero means Config.RouterID.
	RouterID netip.Addr
	// SourceAddress is the local address the session dials from; zero lets the kernel choose.
	SourceAddress netip.Addr
	// Password enables TCP-MD5 (RFC 2385) authentication when not empty.
	Password string
	// EBGPMultiHop allows an eBGP peer that is more than one hop away (TTL 255 instead of 1).
	EBGPMultiHop bool
	// DynamicASN, when set, learns the peer's AS number from its OPEN instead of ASN (which must
	// then be 0): DynamicInternal accepts only a peer in MyASN, DynamicExternal only one in
	// another AS (MetalLB's BGPPeer.dynamicASN).
	DynamicASN DynamicASN
	// BFD, when Enabled, runs a single-hop BFD session beside the BGP session, so a dead link or
	// peer resets the session within the detection time instead of the hold time.
	BFD BFD
}

// DynamicASN is how a peer's AS number is learnt when it is not configured.
type DynamicASN string

const (
	// DynamicInternal accepts only a peer in our own AS (iBGP).
	DynamicInternal DynamicASN = "internal"
	// DynamicExternal accepts only a peer in another AS (eBGP).
	DynamicExternal DynamicASN = "external"
)

// BFD is a session's Bidirectional Forwarding Detection (RFC 5880, single hop RFC 5881) setting,
// MetalLB's BFDProfile as far as GoBGP's native BFD implements it. Zero intervals and multiplier
// mean MetalLB's defaults (300 ms, 300 ms, 3).
type BFD struct {
	Enabled bool
	// ReceiveInterval is the minimum interval between received BFD packets this end requires.
	ReceiveInterval time.Duration
	// TransmitInterval is the minimum interval between BFD packets this end wants to send.
	TransmitInterval time.Duration
	// DetectMultiplier is how many intervals without a packet declare the session down.
	DetectMultiplier uint32
}

// MetalLB's BFDProfile defaults and limits (FRR's): intervals 10 ms–60 s, multiplier 2–255.
const (
	DefaultBFDInterval   = 300 * time.Millisecond
	DefaultBFDMultiplier = 3
	minBFDInterval       = 10 * time.Millisecond
	maxBFDInterval       = 60 * time.Second
)

func (b BFD) receive() time.Duration  { return cmp.Or(b.ReceiveInterval, DefaultBFDInterval) }
func (b BFD) transmit() time.Duration { return cmp.Or(b.TransmitInterval, DefaultBFDInterval) }
func (b BFD) multiplier() uint32      { return cmp.Or(b.DetectMultiplier, DefaultBFDMultiplier) }

// validate reports what is wrong with an enabled BFD setting.
func (b BFD) validate() error {
	if !b.Enabled {
		return nil
	}
	var errs []error
	for _, iv := range []struct {
		name string
		d    time.Duration
	}{{"receiveInterval", b.receive()}, {"transmitInterval", b.transmit()}} {
		if iv.d < minBFDInterval || iv.d > maxBFDInterval {
			errs = append(errs, fmt.Errorf("bfd %s %s outside %s–%s", iv.name, iv.d, minBFDInterval, maxBFDInterval))
		}
	}
	if m := b.multiplier(); m < 2 || m > 255 {
		errs = append(errs, fmt.Errorf("bfd detectMultiplier %d outside 2–255", m))
	}
	return errors.Join(errs...)
}

// key is the name a peer is tracked under.
func (p Peer) key() string {
	if p.Name != "" {
		return p.Name
	}
	return p.Address.String()
}

// internal reports whether the session is iBGP.
func (p Peer) internal() bool {
	switch p.DynamicASN {
	case DynamicInternal:
		return true
	case DynamicExternal:
		return false
	}
	return p.MyASN == p.ASN
}

// peerASN is the AS number configured in GoBGP: 0 (learnt from the OPEN) for DynamicExternal,
// our own for DynamicInternal, which GoBGP then checks like a configured one.
func (p Peer) peerASN() uint32 {
	switch p.DynamicASN {
	case DynamicInternal:
		return p.MyASN
	case DynamicExternal:
		return 0
	}
	return p.ASN
}

// Community is a standard BGP community (RFC 1997), written "ASN:value" as in MetalLB.
type Community uint32

// String renders the community as "high:low".
func (c Community) String() string {
	return fmt.Sprintf("%d:%d", uint32(c)>>16, uint32(c)&0xffff)
}

// LargeCommunity is a BGP large community (RFC 8092), written "large:ASN:local1:local2" in MetalLB.
type LargeCommunity struct {
	// GlobalAdmin is the AS number of the community's owner.
	GlobalAdmin uint32
	// Local1 is the first local data part.
	Local1 uint32
	// Local2 is the second local data part.
	Local2 uint32
}

// String renders the community in MetalLB's "large:a:b:c" form.
func (c LargeCommunity) String() string {
	return fmt.Sprintf("large:%d:%d:%d", c.GlobalAdmin, c.Local1, c.Local2)
}

// ParseCommunities parses MetalLB community strings: "65535:65282" for standard communities,
// "large:64512:1:2" for large ones. Aliases (MetalLB's Community objects) are resolved by the caller.
func ParseCommunities(values []string) ([]Community, []LargeCommunity, error) {
	var std []Community
	var large []LargeCommunity
	for _, v := range values {
		if rest, ok := strings.CutPrefix(v, "large:"); ok {
			parts := strings.Split(rest, ":")
			if len(parts) != 3 {
				return nil, nil, fmt.Errorf("large community %q: want large:ASN:local1:local2", v)
			}
			var n [3]uint32
			for i, p := range parts {
				x, err := strconv.ParseUint(p, 10, 32)
				if err != nil {
					return nil, nil, fmt.Errorf("large community %q: %w", v, err)
				}
				n[i] = uint32(x)
			}
			large = append(large, LargeCommunity{GlobalAdmin: n[0], Local1: n[1], Local2: n[2]})
			continue
		}
		hi, lo, ok := strings.Cut(v, ":")
		if !ok {
			return nil, nil, fmt.Errorf("community %q: want ASN:value or large:ASN:local1:local2", v)
		}
		h, err := strconv.ParseUint(hi, 10, 16)
		if err != nil {
			return nil, nil, fmt.Errorf("community %q: %w", v, err)
		}
		l, err := strconv.ParseUint(lo, 10, 16)
		if err != nil {
			return nil, nil, fmt.Errorf("community %q: %w", v, err)
		}
		std = append(std, Community(uint32(h)<<16|uint32(l)))
	}
	return std, large, nil
}

// Advertisement is one prefix to announce with its attributes: MetalLB's BGPAdvertisement applied
// to one service address.
type Advertisement struct {
	// Prefix is the announced address, usually a /32 or /128 service address.
	Prefix netip.Prefix
	// AggregationLength, when set and shorter than the prefix, widens the announcement to the
	// enclosing prefix of that length (BGPAdvertisement.aggregationLength / aggregationLengthV6),
	// so many service addresses become one route.
	AggregationLength int
	// LocalPref is sent to iBGP peers (LOCAL_PREF is not sent over eBGP); 0 means none.
	LocalPref uint32
	// Communities are attached as the COMMUNITIES attribute.
	Communities []Community
	// LargeCommunities are attached as the LARGE_COMMUNITY attribute.
	LargeCommunities []LargeCommunity
	// Peers restricts the advertisement to the named peers (BGPAdvertisement.peers); empty means all.
	Peers []string
}

// announced returns the prefix that goes on the wire after aggregation.
func (a Advertisement) announced() netip.Prefix {
	p := a.Prefix.Masked()
	if a.AggregationLength > 0 && a.AggregationLength < p.Bits() {
		p = netip.PrefixFrom(p.Addr(), a.AggregationLength).Masked()
	}
	return p
}

// validate reports what is wrong with the advertisement, if anything.
func (a Advertisement) validate() error {
	if !a.Prefix.IsValid() {
		return errors.New("invalid prefix")
	}
	if a.AggregationLength < 0 || a.AggregationLength > a.Prefix.Addr().BitLen() {
		return fmt.Errorf("aggregation length %d out of range for %s", a.AggregationLength, a.Prefix)
	}
	return nil
}

// route is what one session announces for one prefix: the merge of every advertisement that
// aggregates into it. Its lists are sorted and deduplicated so that equal routes compare equal.
type route struct {
	prefix    netip.Prefix
	localPref uint32
	comms     []Community
	large     []LargeCommunity
}

// equal reports whether two routes would be announced identically.
func (r route) equal(o route) bool {
	return r.prefix == o.prefix && r.localPref == o.localPref &&
		slices.Equal(r.comms, o.comms) && slices.Equal(r.large, o.large)
}

// routesFor merges the advertisements that apply to one peer into one route per announced prefix.
// When several advertisements land on the same prefix (aggregation, or two services sharing an
// address) their communities are united and the highest local preference wins, so the result does
// not depend on input order.
func routesFor(peer Peer, advs []Advertisement) map[netip.Prefix]route {
	out := make(map[netip.Prefix]route)
	for _, a := range advs {
		if len(a.Peers) > 0 && !slices.Contains(a.Peers, peer.key()) {
			continue
		}
		p := a.announced()
		r, ok := out[p]
		if !ok {
			r = route{prefix: p}
		}
		if peer.internal() {
			r.localPref = max(r.localPref, a.LocalPref)
		}
		r.comms = append(r.comms, a.Communities...)
		r.large = append(r.large, a.LargeCommunities...)
		out[p] = r
	}
	for p, r := range out {
		slices.Sort(r.comms)
		r.comms = slices.Compact(r.comms)
		slices.SortFunc(r.large, compareLarge)
		r.large = slices.Compact(r.large)
		out[p] = r
	}
	return out
}

func compareLarge(a, b LargeCommunity) int {
	if a.GlobalAdmin != b.GlobalAdmin {
		return cmpUint(a.GlobalAdmin, b.GlobalAdmin)
	}
	if a.Local1 != b.Local1 {
		return cmpUint(a.Local1, b.Local1)
	}
	return cmpUint(a.Local2, b.Local2)
}

func cmpUint(a, b uint32) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// validASN reports whether n can be used as a session's AS number: 0, AS_TRANS (23456) and the
// last 16- and 32-bit numbers are reserved (RFC 7607, RFC 6793, RFC 7300).
func validASN(n uint32) bool {
	return n != 0 && n != 23456 && n != 65535 && n != 4294967295
}

// validate reports what is wrong with the peer; routerID is the speaker-wide default.
func (p Peer) validate(routerID netip.Addr) error {
	var errs []error
	if !validASN(p.MyASN) {
		errs = append(errs, fmt.Errorf("invalid myASN %d", p.MyASN))
	}
	switch p.DynamicASN {
	case "":
		if !validASN(p.ASN) {
			errs = append(errs, fmt.Errorf("invalid peerASN %d", p.ASN))
		}
	case DynamicInternal, DynamicExternal:
		if p.ASN != 0 {
			errs = append(errs, fmt.Errorf("peerASN %d and dynamicASN %s exclude each other", p.ASN, p.DynamicASN))
		}
	default:
		errs = append(errs, fmt.Errorf("dynamicASN %q is neither internal nor external", p.DynamicASN))
	}
	if err := p.BFD.validate(); err != nil {
		errs = append(errs, err)
	}
	if !p.Address.IsValid() {
		errs = append(errs, errors.New("missing peer address"))
	}
	if p.HoldTime != 0 && p.HoldTime < 3*time.Second {
		errs = append(errs, fmt.Errorf("holdTime %s is below 3s", p.HoldTime))
	}
	if p.KeepaliveTime < 0 || (p.KeepaliveTime > 0 && p.KeepaliveTime >= p.holdTime()) {
		errs = append(errs, fmt.Errorf("keepaliveTime %s must be shorter than holdTime %s", p.KeepaliveTime, p.holdTime()))
	}
	if p.ConnectTime < 0 {
		errs = append(errs, fmt.Errorf("negative connectTime %s", p.ConnectTime))
	}
	id := p.RouterID
	if !id.IsValid() {
		id = routerID
	}
	if !id.Is4() {
		errs = append(errs, errors.New("no IPv4 router ID: set routerID on the peer or an IPv4 node address"))
	}
	if p.SourceAddress.IsValid() && p.Address.IsValid() && p.SourceAddress.Is4() != p.Address.Is4() {
		errs = append(errs, fmt.Errorf("source address %s and peer address %s differ in family", p.SourceAddress, p.Address))
	}
	return errors.Join(errs...)
}

func (p Peer) holdTime() time.Duration {
	if p.HoldTime == 0 {
		return DefaultHoldTime
	}
	return p.HoldTime
}

func (p Peer) connectTime() time.Duration {
	if p.ConnectTime == 0 {
		return DefaultConnectTime
	}
	return p.ConnectTime
}

// seconds rounds a duration up to whole seconds, the unit BGP timers have on the wire.
func seconds(d time.Duration) uint64 {
	return uint64((d + time.Second - 1) / time.Second)
}
