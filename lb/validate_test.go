package lb

import (
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestPoolRefusesSpecialAddresses: a pool that covers the unspecified address, loopback,
// link-local (the metadata service 169.254.169.254 among them), multicast or the broadcast address
// is invalid, whole or in part; ordinary ranges next to them are not.
func TestPoolRefusesSpecialAddresses(t *testing.T) {
	for _, tc := range []struct {
		addr, want string // want "": valid
	}{
		{"0.0.0.0/0", "unspecified"},
		{"0.0.0.0/32", "unspecified"},
		{"127.0.0.1/32", "loopback"},
		{"126.255.255.250-127.0.0.3", "loopback"},
		{"169.254.169.254/32", "link-local"},
		{"224.0.0.0/24", "multicast"},
		{"239.1.1.1/32", "multicast"},
		{"255.255.255.255/32", "broadcast"},
		{"::/0", "unspecified"},
		{"::1/128", "loopback"},
		{"fe80::/64", "link-local"},
		{"ff02::1-ff02::2", "multicast"},
		{"0.0.0.1-0.0.0.9", ""},
		{"126.0.0.0/8", ""},
		{"128.0.0.0/16", ""},
		{"169.253.0.0/16", ""},
		{"223.255.255.0/24", ""},
		{"10.0.0.0/8", ""},
		{"fd00::/8", ""},
		{"2001:db8::/32", ""},
		{"fe00::/9", ""},
	} {
		errs := ValidateIPAddressPool(&IPAddressPool{Spec: IPAddressPoolSpec{Addresses: []string{"192.0.2.0/28", tc.addr}}})
		switch {
		case tc.want == "" && len(errs) > 0:
			t.Errorf("%s refused: %v", tc.addr, errs)
		case tc.want != "" && (len(errs) != 1 || !strings.Contains(errs[0], tc.want) || !strings.Contains(errs[0], "spec.addresses[1]")):
			t.Errorf("%s: reasons %q, want one about %s", tc.addr, errs, tc.want)
		}
	}
	// Assign leaves such a pool out, so no service gets 127.0.0.1 from it.
	res := Assign(Input{Pools: []*IPAddressPool{{Spec: IPAddressPoolSpec{Addresses: []string{"127.0.0.1/32"}}}}})
	if len(res.Problems) != 1 || res.Problems[0].Kind != "IPAddressPool" {
		t.Errorf("Assign problems %v, want the loopback pool left out", res.Problems)
	}
}

// TestPeerTimesInBGPRange: hold times BGP cannot carry (16 bits of seconds) and negative times are
// invalid.
func TestPeerTimesInBGPRange(t *testing.T) {
	for _, tc := range []struct {
		hold, keep time.Duration
		valid      bool
	}{
		{90 * time.Second, 30 * time.Second, true},
		{0, 0, true},
		{65535 * time.Second, time.Minute, true},
		{65536 * time.Second, time.Minute, false},
		{-time.Second, -time.Second, false},
		{90 * time.Second, -time.Second, false},
	} {
		p := &BGPPeer{Spec: BGPPeerSpec{MyASN: 1, ASN: 2, Address: "10.0.0.1",
			HoldTime: &metav1.Duration{Duration: tc.hold}, KeepaliveTime: &metav1.Duration{Duration: tc.keep}}}
		if errs := ValidateBGPPeer(p); (len(errs) == 0) != tc.valid {
			t.Errorf("hold %s keepalive %s: %q, want valid %v", tc.hold, tc.keep, errs, tc.valid)
		}
	}
}

func TestPeerPasswordAndSecretExclusive(t *testing.T) {
	p := &BGPPeer{Spec: BGPPeerSpec{MyASN: 1, ASN: 2, Address: "10.0.0.1", Password: "a"}}
	if errs := ValidateBGPPeer(p); errs != nil {
		t.Fatalf("password only: %v", errs)
	}
	p.Spec.PasswordSecret.Name = "s"
	if errs := ValidateBGPPeer(p); len(errs) != 1 || !strings.Contains(errs[0], "mutually exclusive") {
		t.Errorf("password and passwordSecret: %v", errs)
	}
}

func TestValidateBFDProfile(t *testing.T) {
	u := func(v uint32) *uint32 { return &v }
	for _, tc := range []struct {
		spec  BFDProfileSpec
		valid bool
	}{
		{BFDProfileSpec{}, true},
		{BFDProfileSpec{ReceiveInterval: u(10), TransmitInterval: u(60000), DetectMultiplier: u(255), MinimumTTL: u(1)}, true},
		{BFDProfileSpec{ReceiveInterval: u(9)}, false},
		{BFDProfileSpec{TransmitInterval: u(60001)}, false},
		{BFDProfileSpec{DetectMultiplier: u(1)}, false},
		{BFDProfileSpec{MinimumTTL: u(255)}, false},
		{BFDProfileSpec{EchoInterval: u(0)}, false},
	} {
		if errs := ValidateBFDProfile(&BFDProfile{Spec: tc.spec}); (errs == nil) != tc.valid {
			t.Errorf("%+v: %v, want valid %v", tc.spec, errs, tc.valid)
		}
	}
}
