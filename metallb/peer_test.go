package metallb

import (
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"nodeagent/bgp"
	"nodeagent/lb"
)

// TestSpeakerPeerSecret: a Secret of the speaker's namespace configures the peer that names it
// and never reaches the proxy; one of another namespace is ignored; deleting the Secret leaves
// the peer out again, with a problem reported.
func TestSpeakerPeerSecret(t *testing.T) {
	rec := &secretSpy{}
	var reasons []string
	s := New(Options{Node: "node01", Next: rec, Namespace: "kube-system", BGP: func([]bgp.Peer, []bgp.Advertisement) {},
		Problem: func(ref v1.ObjectReference, p lb.Problem) {
			reasons = append(reasons, ref.Kind+" "+ref.Name+": "+p.Reason)
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
