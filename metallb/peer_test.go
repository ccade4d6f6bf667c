package metallb

import (
	"strings"

	"k8s.io/apimachinery/pkg/runtime"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"nodeagent/bgp"
	"nodeagent/lb"
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
	fast := &lb.BFDProfile{Spec: lb.BFDProfileSpec{ReceiveInterval: u(300), TransmitInterval: u(200), DetectMultiplier: u(3)}}
	fast.Namespace, fast.Name = "metallb-system", "fast"
	echo := &lb.BFDProfile{Spec: lb.BFDProfileSpec{EchoMode: &yes, PassiveMode: &yes, MinimumTTL: u(254)}}
	echo.Namespace, echo.Name = "metallb-system", "echo"

	for name, tc := range map[string]struct {
		mod      func(*lb.BGPPeerSpec)
		want     func(bgp.Peer) bool // nil: the peer is left out
		problems []string
	}{
		"secret": {func(s *lb.BGPPeerSpec) { s.PasswordSecret.Name = "good" }, func(p bgp.Peer) bool { return p.Password == "s3cret" }, nil},
		"secret in our namespace named": {func(s *lb.BGPPeerSpec) { s.PasswordSecret = v1.SecretReference{Name: "good", Namespace: "kube-system"} },
			func(p bgp.Peer) bool { return p.Password == "s3cret" }, nil},
		"secret elsewhere": {func(s *lb.BGPPeerSpec) {
			s.PasswordSecret = v1.SecretReference{Name: "good", Namespace: "metallb-system"}
		}, nil, []string{"only Secrets in nodeagent's namespace kube-system"}},
		"secret missing":    {func(s *lb.BGPPeerSpec) { s.PasswordSecret.Name = "gone" }, nil, []string{"kube-system/gone not found"}},
		"secret wrong type": {func(s *lb.BGPPeerSpec) { s.PasswordSecret.Name = "opaque" }, nil, []string{`type "Opaque"`}},
		"secret no key":     {func(s *lb.BGPPeerSpec) { s.PasswordSecret.Name = "nopass" }, nil, []string{`no "password" key`}},
		"secret too long":   {func(s *lb.BGPPeerSpec) { s.PasswordSecret.Name = "toolong" }, nil, []string{"longer than 80 bytes"}},
		"bfd": {func(s *lb.BGPPeerSpec) { s.BFDProfile = "fast" }, func(p bgp.Peer) bool {
			return p.BFD == bgp.BFD{Enabled: true, ReceiveInterval: 300 * time.Millisecond, TransmitInterval: 200 * time.Millisecond, DetectMultiplier: 3}
		}, nil},
		"bfd missing": {func(s *lb.BGPPeerSpec) { s.BFDProfile = "slow" }, nil, []string{`bfdProfile "slow"`}},
		"bfd unhonoured": {func(s *lb.BGPPeerSpec) { s.BFDProfile = "echo" }, func(p bgp.Peer) bool { return p.BFD == bgp.BFD{Enabled: true} },
			[]string{"echoMode", "passiveMode", "minimumTtl"}},
		"graceful restart and disableMP": {func(s *lb.BGPPeerSpec) { s.EnableGracefulRestart, s.DisableMP = true, true },
			func(p bgp.Peer) bool { return p.Address.String() == "10.0.0.254" }, []string{"enableGracefulRestart", "disableMP"}},
		"dynamic external": {func(s *lb.BGPPeerSpec) { s.ASN, s.DynamicASN = 0, lb.ExternalASNMode },
			func(p bgp.Peer) bool { return p.ASN == 0 && p.DynamicASN == bgp.DynamicExternal }, nil},
		"vrf":       {func(s *lb.BGPPeerSpec) { s.VRFName = "red" }, nil, []string{"spec.vrf"}},
		"interface": {func(s *lb.BGPPeerSpec) { s.Address, s.Interface = "", "eth1" }, nil, []string{"unnumbered BGP is not supported"}},
	} {
		t.Run(name, func(t *testing.T) {
			other := &lb.BGPPeer{Spec: lb.BGPPeerSpec{MyASN: 64513, ASN: 64512, Address: "10.0.0.253"}}
			other.Namespace, other.Name = "metallb-system", "other"
			p := &lb.BGPPeer{Spec: lb.BGPPeerSpec{MyASN: 64513, ASN: 64512, Address: "10.0.0.254"}}
			p.Namespace, p.Name = "metallb-system", "router"
			tc.mod(&p.Spec)
			peers, _, problems := PlanBGP(BGPInput{Node: "n1", Peers: []*lb.BGPPeer{p, other}, BFDProfiles: []*lb.BFDProfile{fast, echo},
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

// TestSpeakerPeerSecret: a Secret of the speaker's namespace configures the peer that names it
// and never reaches the proxy; one of another namespace is ignored; deleting the Secret leaves
// the peer out again, with a problem reported.
func TestSpeakerPeerSecret(t *testing.T) {
	rec := &secretSpy{}
	var reasons []string
	s := New(Options{Node: "node01", Next: rec, Namespace: "kube-system", BGP: func([]bgp.Peer, []bgp.Advertisement) {},
		Problem: func(ref v1.ObjectReference, reason string) {
			reasons = append(reasons, ref.Kind+" "+ref.Name+": "+reason)
		}})
	s.Synced()
	planned := func() []bgp.Peer {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.bgpPlan.peers
	}
	p := bgpPeer("router", "10.0.0.254")
	p.Spec.PasswordSecret.Name = "bgp-auth"
	s.Upsert(p)
	if got := planned(); len(got) != 0 {
		t.Fatalf("peer planned without its Secret: %+v", got)
	}
	sec := &v1.Secret{Type: v1.SecretTypeBasicAuth, Data: map[string][]byte{"password": []byte("elsewhere")}}
	sec.Namespace, sec.Name = "default", "bgp-auth"
	s.Upsert(sec)
	if got := planned(); len(got) != 0 {
		t.Fatalf("a Secret of another namespace was used: %+v", got)
	}
	sec = &v1.Secret{Type: v1.SecretTypeBasicAuth, Data: map[string][]byte{"password": []byte("s3cret"), "other": []byte("x")}}
	sec.Namespace, sec.Name = "kube-system", "bgp-auth"
	s.Upsert(sec)
	if got := planned(); len(got) != 1 || got[0].Password != "s3cret" {
		t.Fatalf("planned %+v, want the peer with the Secret's password", got)
	}
	s.mu.Lock()
	held := s.secrets["bgp-auth"].Data
	s.mu.Unlock()
	if len(held) != 1 {
		t.Errorf("the speaker holds more of the Secret than its password: %q", held)
	}
	s.Delete(sec)
	if got := planned(); len(got) != 0 {
		t.Errorf("peer still planned after its Secret was deleted: %+v", got)
	}
	if rec.secrets != 0 {
		t.Errorf("%d Secret events reached the proxy", rec.secrets)
	}
	if len(reasons) != 2 || !strings.Contains(reasons[0], "BGPPeer router: not configured: passwordSecret kube-system/bgp-auth not found") {
		t.Errorf("problems reported: %q", reasons)
	}
}

// secretSpy is a Sink that counts the Secrets it is given.
type secretSpy struct{ secrets int }

func (r *secretSpy) Upsert(obj runtime.Object) {
	if _, ok := obj.(*v1.Secret); ok {
		r.secrets++
	}
}
func (r *secretSpy) Delete(obj runtime.Object) { r.Upsert(obj) }
func (r *secretSpy) Synced()                   {}
