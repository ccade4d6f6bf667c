package lb

import (
	"fmt"
	"net/netip"
	"strings"
)

// Range is an inclusive range of addresses of one family.
type Range struct {
	First, Last netip.Addr
}

// ParseRange parses one entry of an IPAddressPool's addresses: a CIDR prefix ("10.0.0.0/24",
// host bits ignored as MetalLB does) or an inclusive range "first-last" (spaces allowed around the
// dash). A bare address is refused, as MetalLB refuses it: write it as a /32 or /128.
func ParseRange(s string) (Range, error) {
	s = strings.TrimSpace(s)
	if first, last, ok := strings.Cut(s, "-"); ok {
		a, err := parseAddr(strings.TrimSpace(first))
		if err != nil {
			return Range{}, fmt.Errorf("range %q: %w", s, err)
		}
		b, err := parseAddr(strings.TrimSpace(last))
		if err != nil {
			return Range{}, fmt.Errorf("range %q: %w", s, err)
		}
		if a.Is4() != b.Is4() {
			return Range{}, fmt.Errorf("range %q mixes IPv4 and IPv6", s)
		}
		if b.Less(a) {
			return Range{}, fmt.Errorf("range %q ends before it starts", s)
		}
		return Range{First: a, Last: b}, nil
	}
	if !strings.Contains(s, "/") {
		bits := 32
		if strings.Contains(s, ":") {
			bits = 128
		}
		return Range{}, fmt.Errorf("%q is neither a CIDR nor a range (write a single address as %s/%d)", s, s, bits)
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return Range{}, fmt.Errorf("invalid CIDR %q: %w", s, err)
	}
	if p.Addr().Is4In6() {
		return Range{}, fmt.Errorf("invalid CIDR %q: IPv4-mapped IPv6 prefixes are not allowed", s)
	}
	return prefixRange(p.Masked()), nil
}

func parseAddr(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, err
	}
	if a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("address %q has a zone", s)
	}
	if a.Is4In6() {
		return netip.Addr{}, fmt.Errorf("address %q is IPv4-mapped IPv6", s)
	}
	return a, nil
}

// prefixRange returns the range covering every address of p (p masked).
func prefixRange(p netip.Prefix) Range {
	first := p.Addr()
	b := first.AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	last, _ := netip.AddrFromSlice(b)
	return Range{First: first, Last: last}
}

// Contains reports whether a is in r.
func (r Range) Contains(a netip.Addr) bool {
	return a.Is4() == r.First.Is4() && r.First.Compare(a) <= 0 && a.Compare(r.Last) <= 0
}

// Overlaps reports whether r and o share an address.
func (r Range) Overlaps(o Range) bool {
	return r.First.Is4() == o.First.Is4() && r.First.Compare(o.Last) <= 0 && o.First.Compare(r.Last) <= 0
}

// Is4 reports whether r is an IPv4 range.
func (r Range) Is4() bool { return r.First.Is4() }

func (r Range) String() string {
	if r.First == r.Last {
		return r.First.String()
	}
	return r.First.String() + "-" + r.Last.String()
}

// buggyIP reports whether a is an IPv4 address ending in .0 or .255, which some consumer routers'
// smurf protection drops (what avoidBuggyIPs leaves out).
func buggyIP(a netip.Addr) bool {
	if !a.Is4() {
		return false
	}
	last := a.As4()[3]
	return last == 0 || last == 255
}
