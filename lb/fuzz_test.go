package lb_test

import (
	"net/netip"
	"testing"

	"nodeagent/bgp"
	"nodeagent/lb"
)

// FuzzParseRange: an IPAddressPool address entry parses to a range of one family that starts no
// later than it ends, or to an error; a range written back as first-last parses to itself; and
// pool validation of the entry does not panic.
func FuzzParseRange(f *testing.F) {
	for _, s := range []string{"10.0.0.0/24", "10.0.0.51-10.0.0.80", " 10.0.0.51 - 10.0.0.80 ", "10.0.0.7/32",
		"0.0.0.0/0", "fd00:10::/64", "fd00:10::51-fd00:10::80", "::ffff:10.0.0.0/120", "fe80::1%eth0-fe80::2",
		"10.0.0.1", "10.0.0.2-10.0.0.1", "10.0.0.1-fd00::1", "127.0.0.1/32", "ff02::1-ff02::2", "1.2.3.4--5", "/", "-"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := lb.ParseRange(s)
		_ = lb.ValidateIPAddressPool(&lb.IPAddressPool{Spec: lb.IPAddressPoolSpec{Addresses: []string{s}}})
		if err != nil {
			return
		}
		if !r.First.IsValid() || !r.Last.IsValid() || r.First.Is4() != r.Last.Is4() || r.Last.Less(r.First) {
			t.Fatalf("ParseRange(%q) = %v", s, r)
		}
		if r.First.Zone() != "" || r.First.Is4In6() || r.Last.Is4In6() {
			t.Fatalf("ParseRange(%q) = %v: zone or IPv4-mapped", s, r)
		}
		back, err := lb.ParseRange(r.First.String() + "-" + r.Last.String())
		if err != nil || back != r {
			t.Fatalf("ParseRange(%q) = %v, which reparses as %v, %v", s, r, back, err)
		}
		if !r.Contains(r.First) || !r.Contains(r.Last) || !r.Overlaps(r) {
			t.Fatalf("%v does not contain its ends", r)
		}
		if next := r.Last.Next(); next.IsValid() && r.Contains(next) {
			t.Fatalf("%v contains %v", r, next)
		}
		_ = netip.PrefixFrom(r.First, r.First.BitLen())
	})
}

// FuzzCommunityValue: lb accepts exactly the community values the BGP speaker can parse, so a
// value that passed validation never fails when routes are advertised.
func FuzzCommunityValue(f *testing.F) {
	for _, s := range []string{"65535:65282", "0:0", "65536:1", "1:2:3", "large:1:2:3", "LARGE:1:2:3", "large:4294967295:0:1",
		"large:4294967296:0:1", "large:1:2", ":", "a:b", "+1:2", "1:-2", "01:02", " 1:2", "large::1:2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		verr := lb.ValidateCommunityValue(s)
		std, large, perr := bgp.ParseCommunities([]string{s})
		if (verr == nil) != (perr == nil) {
			t.Fatalf("%q: lb says %v, the BGP speaker says %v", s, verr, perr)
		}
		if perr == nil && len(std)+len(large) != 1 {
			t.Fatalf("%q parsed to %v %v", s, std, large)
		}
		_ = lb.ValidateCommunity(&lb.Community{Spec: lb.CommunitySpec{Communities: []lb.CommunityAlias{{Name: "a", Value: s}}}})
		_ = lb.ValidateBGPAdvertisement(&lb.BGPAdvertisement{Spec: lb.BGPAdvertisementSpec{Communities: []string{s}}})
	})
}
