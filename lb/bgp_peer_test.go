package lb

import (
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"nodeagent/bgp"
)

// TestPlanPeerSecretsAndBFD: a peer's passwordSecret and bfdProfile are resolved as MetalLB does;
// what is missing leaves only that peer out, with a problem saying why; fields that are not
// honoured configure the peer and say so.
func TestPlanPeerSecretsAndBFD(t *testing.T) {
	u := func(v uint32) *uint32 { return &v }
	yes := true
	secret := func(name string, typ v1.SecretType, data map[string][]byte) *v1.Secret {
		s := &v1.Secret{Type: typ, Data: data}
		s.Namespace, s.Name = "kube-system", name
		return s
	}
	secrets := map[string]*v1.Secret{
		"good":    secret("good", v1.SecretTypeBasicAuth, map[string][]byte{"password": []byte("s3cret"), "username": []byte("x")}),
		"opaque":  secret("opaque", v1.SecretTypeOpaque, map[string][]byte{"password": []byte("s3cret")}),
		"nopass":  secret("nopass", v1.SecretTypeBasicAuth, map[string][]byte{"username": []byte("x")}),
		"toolong": secret("toolong", v1.SecretTypeBasicAuth, map[string][]byte{"password": []byte(strings.Repeat("x", 81))}),
	}
	fast := &BFDProfile{Spec: BFDProfileSpec{ReceiveInterval: u(300), TransmitInterval: u(200), DetectMultiplier: u(3)}}
	fast.Namespace, fast.Name = "metallb-system", "fast"
	echo := &BFDProfile{Spec: BFDProfileSpec{EchoMode: &yes, PassiveMode: &yes, MinimumTTL: u(254)}}
	echo.Namespace, echo.Name = "metallb-system", "echo"

	for name, tc := range map[string]struct {
		mod      func(*BGPPeerSpec)
		want     func(bgp.Peer) bool // nil: the peer is left out
		problems []string
	}{
		"secret": {func(s *BGPPeerSpec) { s.PasswordSecret.Name = "good" }, func(p bgp.Peer) bool { return p.Password == "s3cret" }, nil},
		"secret in our namespace named": {func(s *BGPPeerSpec) { s.PasswordSecret = v1.SecretReference{Name: "good", Namespace: "kube-system"} },
			func(p bgp.Peer) bool { return p.Password == "s3cret" }, nil},
		"secret elsewhere": {func(s *BGPPeerSpec) {
			s.PasswordSecret = v1.SecretReference{Name: "good", Namespace: "metallb-system"}
		}, nil, []string{"only Secrets in nodeagent's namespace kube-system"}},
		"secret missing":    {func(s *BGPPeerSpec) { s.PasswordSecret.Name = "gone" }, nil, []string{"kube-system/gone not found"}},
		"secret wrong type": {func(s *BGPPeerSpec) { s.PasswordSecret.Name = "opaque" }, nil, []string{`type "Opaque"`}},
		"secret no key":     {func(s *BGPPeerSpec) { s.PasswordSecret.Name = "nopass" }, nil, []string{`no "password" key`}},
		"secret too long":   {func(s *BGPPeerSpec) { s.PasswordSecret.Name = "toolong" }, nil, []string{"longer than 80 bytes"}},
		"bfd": {func(s *BGPPeerSpec) { s.BFDProfile = "fast" }, func(p bgp.Peer) bool {
			return p.BFD == bgp.BFD{Enabled: true, ReceiveInterval: 300 * time.Millisecond, TransmitInterval: 200 * time.Millisecond, DetectMultiplier: 3}
		}, nil},
		"bfd missing": {func(s *BGPPeerSpec) { s.BFDProfile = "slow" }, nil, []string{`bfdProfile "slow"`}},
		"bfd unhonoured": {func(s *BGPPeerSpec) { s.BFDProfile = "echo" }, func(p bgp.Peer) bool { return p.BFD == bgp.BFD{Enabled: true} },
			[]string{"echoMode", "passiveMode", "minimumTtl"}},
		"graceful restart and disableMP": {func(s *BGPPeerSpec) { s.EnableGracefulRestart, s.DisableMP = true, true },
			func(p bgp.Peer) bool { return p.Address.String() == "10.0.0.254" }, []string{"enableGracefulRestart", "disableMP"}},
		"dynamic external": {func(s *BGPPeerSpec) { s.ASN, s.DynamicASN = 0, ExternalASNMode },
			func(p bgp.Peer) bool { return p.ASN == 0 && p.DynamicASN == bgp.DynamicExternal }, nil},
		"vrf":       {func(s *BGPPeerSpec) { s.VRFName = "red" }, nil, []string{"spec.vrf"}},
		"interface": {func(s *BGPPeerSpec) { s.Address, s.Interface = "", "eth1" }, nil, []string{"unnumbered BGP is not supported"}},
	} {
		t.Run(name, func(t *testing.T) {
			other := &BGPPeer{Spec: BGPPeerSpec{MyASN: 64513, ASN: 64512, Address: "10.0.0.253"}}
			other.Namespace, other.Name = "metallb-system", "other"
			p := &BGPPeer{Spec: BGPPeerSpec{MyASN: 64513, ASN: 64512, Address: "10.0.0.254"}}
			p.Namespace, p.Name = "metallb-system", "router"
			tc.mod(&p.Spec)
			peers, _, problems := PlanBGP(BGPInput{Node: "n1", Peers: []*BGPPeer{p, other}, BFDProfiles: []*BFDProfile{fast, echo},
				Namespace: "kube-system", Secrets: secrets})
			var got *bgp.Peer
			for i := range peers {
				if peers[i].Name == "metallb-system/router" {
					got = &peers[i]
				}
			}
			if len(peers) == 0 || peers[0].Name != "metallb-system/other" {
				t.Errorf("the other peer is missing: %+v", peers)
			}
			switch {
			case tc.want == nil && got != nil:
				t.Errorf("peer configured: %+v", *got)
			case tc.want != nil && got == nil:
				t.Errorf("peer left out: %v", problems)
			case tc.want != nil && !tc.want(*got):
				t.Errorf("peer %+v", *got)
			}
			if len(problems) != len(tc.problems) {
				t.Fatalf("problems %v, want %d containing %q", problems, len(tc.problems), tc.problems)
			}
			for i, want := range tc.problems {
				if problems[i].Kind != "BGPPeer" || problems[i].Object.Name != "router" || !strings.Contains(problems[i].Reason, want) {
					t.Errorf("problem %d: %v, want one about router containing %q", i, problems[i], want)
				}
			}
		})
	}
}
