package conntrack

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"nodeagent/proxier"
)

// Test addresses follow the lab plan: node01 is 10.0.0.151, pods are in 10.244.0.0/16, services
// in 10.96.0.0/12, the external client is 10.0.0.1, LB IPs come from 10.0.0.51-80, the seed's
// externalIP is 10.0.0.200; IPv6 uses fd00:10::/64, fd00:244:N::/64 and fd00:96::/108.

// fakeKernel holds flows and applies filters the way netlink does: one dump, one delete per match.
type fakeKernel struct {
	flows []*netlink.ConntrackFlow
	calls int
}

func (k *fakeKernel) ConntrackDeleteFilters(_ netlink.ConntrackTableType, family netlink.InetFamily, filters ...netlink.CustomConntrackFilter) (uint, error) {
	k.calls++
	var n uint
	k.flows = slices.DeleteFunc(k.flows, func(f *netlink.ConntrackFlow) bool {
		if f.FamilyType != uint8(family) {
			return false
		}
		for _, filter := range filters {
			if filter.MatchConntrackFlow(f) {
				n++
				return true
			}
		}
		return false
	})
	return n, nil
}

func (k *fakeKernel) has(f *netlink.ConntrackFlow) bool {
	return slices.Contains(k.flows, f)
}

// flow builds an entry: client → dst as sent, and the reply coming from replySrc.
func flow(proto uint8, client, dst, replySrc string) *netlink.ConntrackFlow {
	c, d, r := netip.MustParseAddrPort(client), netip.MustParseAddrPort(dst), netip.MustParseAddrPort(replySrc)
	fam := uint8(unix.AF_INET)
	if d.Addr().Is6() {
		fam = unix.AF_INET6
	}
	return &netlink.ConntrackFlow{
		FamilyType: fam,
		Forward:    netlink.IPTuple{Protocol: proto, SrcIP: net.IP(c.Addr().AsSlice()), SrcPort: c.Port(), DstIP: net.IP(d.Addr().AsSlice()), DstPort: d.Port()},
		Reverse:    netlink.IPTuple{Protocol: proto, SrcIP: net.IP(r.Addr().AsSlice()), SrcPort: r.Port(), DstIP: net.IP(c.Addr().AsSlice()), DstPort: c.Port()},
	}
}

func ep(s string) proxier.Endpoint {
	ap := netip.MustParseAddrPort(s)
	return proxier.Endpoint{Addr: ap.Addr(), Port: ap.Port(), Ready: true, Serving: true}
}

func dnsService(proto v1.Protocol, eps ...proxier.Endpoint) *proxier.ServicePort {
	return &proxier.ServicePort{
		Name:            proxier.ServicePortName{NamespacedName: types.NamespacedName{Namespace: "kube-system", Name: "dns"}, Port: "dns", Protocol: proto, Family: proxier.IPv4},
		ClusterIP:       netip.MustParseAddr("10.96.0.10"),
		Port:            53,
		NodePort:        30053,
		ExternalIPs:     []netip.Addr{netip.MustParseAddr("10.0.0.200")},
		LoadBalancerIPs: []netip.Addr{netip.MustParseAddr("10.0.0.51")},
		AllEndpoints:    eps,
	}
}

// dnsChanged is a partial sync's Changes for dnsService.
var dnsChanged = proxier.Changes{Services: map[types.NamespacedName]bool{{Namespace: "kube-system", Name: "dns"}: true}}

func state(sps ...*proxier.ServicePort) *proxier.State {
	return &proxier.State{
		Node:     proxier.Node{Name: "node01", IPs: []netip.Addr{netip.MustParseAddr("10.0.0.151"), netip.MustParseAddr("fd00:10::151")}},
		Services: sps,
	}
}

func TestCleanRemovedEndpoint(t *testing.T) {
	const udp = unix.IPPROTO_UDP
	k := &fakeKernel{}
	c := NewCleaner(k, nil)
	if err := c.Clean(state(dnsService(v1.ProtocolUDP, ep("10.244.1.5:5353"), ep("10.244.2.7:5353"))), dnsChanged); err != nil {
		t.Fatal(err)
	}
	toKept := flow(udp, "10.244.1.9:40000", "10.96.0.10:53", "10.244.1.5:5353")
	toGone := flow(udp, "10.244.1.9:40001", "10.96.0.10:53", "10.244.2.7:5353")
	extGone := flow(udp, "10.0.0.1:40002", "10.0.0.200:53", "10.244.2.7:5353")
	lbGone := flow(udp, "10.0.0.1:40003", "10.0.0.51:53", "10.244.2.7:5353")
	npGone := flow(udp, "10.0.0.1:40004", "10.0.0.151:30053", "10.244.2.7:5353")
	npKept := flow(udp, "10.0.0.1:40005", "10.0.0.151:30053", "10.244.1.5:5353")
	// This node (or a pod behind it) talking to another host's node port: never DNAT-ed here.
	npElsewhere := flow(udp, "10.0.0.151:40006", "10.0.0.152:30053", "10.0.0.152:30053")
	tcp := flow(unix.IPPROTO_TCP, "10.244.1.9:40007", "10.96.0.10:53", "10.244.2.7:5353")
	otherPort := flow(udp, "10.244.1.9:40008", "10.96.0.10:54", "10.244.2.7:5353")
	v6 := flow(udp, "[fd00:244:1::9]:40009", "[fd00:96::10]:53", "[fd00:244:2::7]:5353")
	k.flows = []*netlink.ConntrackFlow{toKept, toGone, extGone, lbGone, npGone, npKept, npElsewhere, tcp, otherPort, v6}

	calls := k.calls
	if err := c.Clean(state(dnsService(v1.ProtocolUDP, ep("10.244.1.5:5353"))), dnsChanged); err != nil {
		t.Fatal(err)
	}
	if k.calls != calls+1 {
		t.Fatalf("kernel called %d times, want once (IPv4 only)", k.calls-calls)
	}
	for name, f := range map[string]*netlink.ConntrackFlow{"toKept": toKept, "npKept": npKept, "npElsewhere": npElsewhere, "tcp": tcp, "otherPort": otherPort, "v6": v6} {
		if !k.has(f) {
			t.Errorf("%s was deleted, want kept", name)
		}
	}
	for name, f := range map[string]*netlink.ConntrackFlow{"toGone": toGone, "extGone": extGone, "lbGone": lbGone, "npGone": npGone} {
		if k.has(f) {
			t.Errorf("%s kept, want deleted", name)
		}
	}
}

func TestCleanFirstEndpoints(t *testing.T) {
	const udp = unix.IPPROTO_UDP
	k := &fakeKernel{}
	c := NewCleaner(k, nil)
	if err := c.Clean(state(dnsService(v1.ProtocolUDP)), dnsChanged); err != nil {
		t.Fatal(err)
	}
	if k.calls != 0 {
		t.Fatalf("no endpoints anywhere: kernel called %d times, want 0", k.calls)
	}
	// Sent while the service had no endpoints: not DNAT-ed, the reply would come from the VIP.
	noNAT := flow(udp, "10.244.1.9:40000", "10.96.0.10:53", "10.96.0.10:53")
	npNoNAT := flow(udp, "10.0.0.1:40001", "10.0.0.151:30053", "10.0.0.151:30053")
	k.flows = []*netlink.ConntrackFlow{noNAT, npNoNAT}
	if err := c.Clean(state(dnsService(v1.ProtocolUDP)), dnsChanged); err != nil {
		t.Fatal(err)
	}
	if k.calls != 0 || len(k.flows) != 2 {
		t.Fatalf("still no endpoints: calls %d, flows %d; want 0 calls, 2 flows", k.calls, len(k.flows))
	}
	if err := c.Clean(state(dnsService(v1.ProtocolUDP, ep("10.244.1.5:5353"))), dnsChanged); err != nil {
		t.Fatal(err)
	}
	if len(k.flows) != 0 {
		t.Fatalf("first endpoint arrived: %d flows left, want 0", len(k.flows))
	}
}

func TestCleanSkipsWhenNothingLost(t *testing.T) {
	k := &fakeKernel{}
	c := NewCleaner(k, nil)
	st := state(dnsService(v1.ProtocolSCTP, ep("10.244.1.5:5353")))
	if err := c.Clean(st, dnsChanged); err != nil {
		t.Fatal(err)
	}
	if k.calls != 1 {
		t.Fatalf("first call: kernel called %d times, want 1 (leftovers of a previous run)", k.calls)
	}
	// Adding an endpoint invalidates nothing; so does an unchanged state or a TCP service losing one.
	tcp := dnsService(v1.ProtocolTCP, ep("10.244.1.5:53"))
	tcp.Name.Port = "dns-tcp"
	for _, st := range []*proxier.State{
		state(dnsService(v1.ProtocolSCTP, ep("10.244.1.5:5353"), ep("10.244.2.7:5353")), tcp),
		state(dnsService(v1.ProtocolSCTP, ep("10.244.1.5:5353"), ep("10.244.2.7:5353"))),
	} {
		if err := c.Clean(st, dnsChanged); err != nil {
			t.Fatal(err)
		}
	}
	if k.calls != 1 {
		t.Fatalf("kernel called %d times, want still 1", k.calls)
	}
	sctp := flow(unix.IPPROTO_SCTP, "10.244.1.9:40000", "10.96.0.10:53", "10.244.2.7:5353")
	k.flows = append(k.flows, sctp)
	// An endpoint that stops serving is no longer valid.
	gone := ep("10.244.2.7:5353")
	gone.Ready, gone.Serving = false, false
	if err := c.Clean(state(dnsService(v1.ProtocolSCTP, ep("10.244.1.5:5353"), gone)), dnsChanged); err != nil {
		t.Fatal(err)
	}
	if k.calls != 2 || len(k.flows) != 0 {
		t.Fatalf("endpoint stopped serving: calls %d, flows %d; want 2 calls, 0 flows", k.calls, len(k.flows))
	}
}

// A Cleaner fed partial Changes walks the table exactly when one fed the whole state every time
// does, and deletes the same flows, through endpoint moves, services coming and going, and a
// protocol change.
func TestCleanPartialMatchesFull(t *testing.T) {
	const udp = unix.IPPROTO_UDP
	named := func(name string, sp *proxier.ServicePort) *proxier.ServicePort {
		sp.Name.Name = name
		return sp
	}
	other := func(eps ...proxier.Endpoint) *proxier.ServicePort {
		sp := named("other", dnsService(v1.ProtocolUDP, eps...))
		sp.ClusterIP, sp.NodePort, sp.ExternalIPs, sp.LoadBalancerIPs = netip.MustParseAddr("10.96.0.11"), 30054, nil, nil
		return sp
	}
	dns := func(eps ...proxier.Endpoint) *proxier.ServicePort { return dnsService(v1.ProtocolUDP, eps...) }
	a, b, c := ep("10.244.1.5:5353"), ep("10.244.2.7:5353"), ep("10.244.3.2:5353")
	steps := []struct {
		sps     []*proxier.ServicePort
		changed []string
	}{
		{[]*proxier.ServicePort{dns(a, b), other(c)}, nil},
		{[]*proxier.ServicePort{dns(a, b), other(c)}, []string{"other"}},
		{[]*proxier.ServicePort{dns(a), other(c)}, []string{"dns"}},
		{[]*proxier.ServicePort{dns(a), other()}, []string{"other"}},
		{[]*proxier.ServicePort{dns(a)}, []string{"other"}},
		{[]*proxier.ServicePort{dns(a), other(b)}, []string{"other"}},
		{[]*proxier.ServicePort{dnsService(v1.ProtocolTCP, a), other(b)}, []string{"dns"}},
		{[]*proxier.ServicePort{dns(b), other(a, b)}, []string{"dns", "other"}},
	}
	flows := func() []*netlink.ConntrackFlow {
		var out []*netlink.ConntrackFlow
		for i, dst := range []string{"10.96.0.10:53", "10.96.0.11:53", "10.0.0.151:30053", "10.0.0.151:30054"} {
			for j, reply := range []string{"10.244.1.5:5353", "10.244.2.7:5353", "10.244.3.2:5353"} {
				out = append(out, flow(udp, fmt.Sprintf("10.0.0.1:%d", 40000+10*i+j), dst, reply))
			}
		}
		return out
	}
	partial, full := &fakeKernel{}, &fakeKernel{}
	pc, fc := NewCleaner(partial, nil), NewCleaner(full, nil)
	for i, s := range steps {
		partial.flows, full.flows = flows(), flows()
		ch := proxier.Changes{Full: i == 0, Services: map[types.NamespacedName]bool{}}
		for _, n := range s.changed {
			ch.Services[types.NamespacedName{Namespace: "kube-system", Name: n}] = true
		}
		st := state(s.sps...)
		slices.SortFunc(st.Services, func(x, y *proxier.ServicePort) int { return strings.Compare(x.Name.Name, y.Name.Name) })
		if err := pc.Clean(st, ch); err != nil {
			t.Fatal(err)
		}
		if err := fc.Clean(st, proxier.Changes{Full: true}); err != nil {
			t.Fatal(err)
		}
		if partial.calls != full.calls || len(partial.flows) != len(full.flows) {
			t.Fatalf("step %d: partial walked %d times and left %d flows; full walked %d times and left %d",
				i, partial.calls, len(partial.flows), full.calls, len(full.flows))
		}
	}
	if full.calls < 4 {
		t.Fatalf("the steps walked the table %d times; the test means to make it walk at least 4", full.calls)
	}
}
