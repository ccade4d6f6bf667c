package metallb

import (
	"bytes"
	"net/netip"
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"nodeagent/bgp"
	"nodeagent/lb"
	"nodeagent/source"
)

func TestDecisionDigest(t *testing.T) {
	svc := types.NamespacedName{Namespace: "default", Name: "web"}
	other := types.NamespacedName{Namespace: "default", Name: "db"}
	a51, a52 := netip.MustParseAddr("10.0.0.51"), netip.MustParseAddr("10.0.0.52")
	assign := map[types.NamespacedName]lb.Assignment{svc: {IPs: []netip.Addr{a51}, Pool: "p"}, other: {IPs: []netip.Addr{a52}, Pool: "p"}}
	l2 := []lb.L2Announcement{{Addr: a51, Owner: "node01"}, {Addr: a52, Owner: "node02"}}
	route := func(a netip.Addr) bgp.Advertisement { return bgp.Advertisement{Prefix: netip.PrefixFrom(a, 32)} }
	routes := map[string][]bgp.Advertisement{"node01": {route(a51)}, "node02": {route(a51)}}
	base := decisionDigest(assign, l2, routes)
	tests := []struct {
		name   string
		assign map[types.NamespacedName]lb.Assignment
		l2     []lb.L2Announcement
		routes map[string][]bgp.Advertisement
		same   bool
	}{
		{"the same decisions listed in another order", assign,
			[]lb.L2Announcement{l2[1], l2[0]}, map[string][]bgp.Advertisement{"node02": {route(a51)}, "node01": {route(a51)}}, true},
		{"another address", map[types.NamespacedName]lb.Assignment{svc: {IPs: []netip.Addr{a52}, Pool: "p"}, other: assign[other]}, l2, routes, false},
		{"another pool", map[types.NamespacedName]lb.Assignment{svc: {IPs: []netip.Addr{a51}, Pool: "q"}, other: assign[other]}, l2, routes, false},
		{"another layer-2 owner", assign, []lb.L2Announcement{{Addr: a51, Owner: "node03"}, l2[1]}, routes, false},
		{"an address owned by nobody", assign, []lb.L2Announcement{{Addr: a51}, l2[1]}, routes, false},
		{"another node advertising", assign, l2, map[string][]bgp.Advertisement{"node01": {route(a51)}, "node03": {route(a51)}}, false},
		{"a route's local preference", assign, l2, map[string][]bgp.Advertisement{"node01": {route(a51)},
			"node02": {{Prefix: netip.PrefixFrom(a51, 32), LocalPref: 50}}}, false},
	}
	for _, tt := range tests {
		if got := decisionDigest(tt.assign, tt.l2, tt.routes) == base; got != tt.same {
			t.Errorf("%s: same digest %v, want %v", tt.name, got, tt.same)
		}
	}
}

func TestEncodeDigest(t *testing.T) {
	d := PlanDigest{Inputs: [DigestSize]byte{1, 2}, Decision: [DigestSize]byte{3}}
	b := EncodeDigest(d)
	if got, ok := DecodeDigest(b); !ok || got != d {
		t.Fatalf("round trip: %v %v", got, ok)
	}
	for _, bad := range [][]byte{nil, {}, b[:len(b)-1], append(bytes.Clone(b), 0), append([]byte{digestVersion + 1}, b[1:]...)} {
		if _, ok := DecodeDigest(bad); ok {
			t.Errorf("%x decoded", bad)
		}
	}
}

func FuzzDecodeDigest(f *testing.F) {
	f.Add(EncodeDigest(PlanDigest{}))
	f.Fuzz(func(t *testing.T, b []byte) {
		if d, ok := DecodeDigest(b); ok && !bytes.Equal(EncodeDigest(d), b) {
			t.Errorf("%x decoded to %v, which encodes differently", b, d)
		}
	})
}

// Agents with the same objects and membership have the same digest, whichever node they run on
// and in whatever order the objects came; another --lb-class keeps the inputs and changes the
// decision; another view of a Node changes the inputs.
func TestSpeakerDigest(t *testing.T) {
	objs, _, err := source.Load("../examples")
	if err != nil {
		t.Fatal(err)
	}
	alive := func() []string { return []string{"node01", "node02", "node03"} }
	digest := func(node, class string, extra ...*v1.Node) (PlanDigest, *Speaker) {
		s := New(Options{Node: node, Class: class, Next: &recorder{services: map[string]*v1.Service{}}, Alive: alive,
			Announce: func(map[netip.Addr][]string) {}})
		for _, n := range extra {
			s.Upsert(n)
		}
		if _, ok := s.Digest(); ok {
			t.Error("a digest before the initial state was assigned")
		}
		objs.Deliver(s)
		d, ok := s.Digest()
		if !ok {
			t.Fatal("no digest after Synced")
		}
		return d, s
	}
	digestOf := func(s *Speaker) PlanDigest {
		d, _ := s.Digest()
		return d
	}
	d1, s1 := digest("node01", "")
	d2, _ := digest("node02", "")
	if d1 != d2 {
		t.Errorf("node01 %x, node02 %x: want the same digest", d1, d2)
	}
	if d1.Decision == (PlanDigest{}).Decision {
		t.Error("empty decision digest")
	}
	d3, _ := digest("node03", "other-class")
	if d3.Inputs != d1.Inputs || d3.Decision == d1.Decision {
		t.Errorf("another class: inputs same %v (want true), decision same %v (want false)", d3.Inputs == d1.Inputs, d3.Decision == d1.Decision)
	}
	labelled := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node02", Labels: map[string]string{"zone": "a"}}}
	d4, _ := digest("node01", "", labelled)
	if d4.Inputs == d1.Inputs {
		t.Error("a Node only one agent sees leaves the inputs digest unchanged")
	}
	// Cached until something changes.
	if digestOf(s1) != d1 || s1.digestGen != s1.gen {
		t.Error("digest not kept")
	}
	s1.Upsert(labelled)
	if digestOf(s1) != d4 {
		t.Error("after the same Node came, node01's digest differs from the agent that saw it first")
	}
}
