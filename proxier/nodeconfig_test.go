package proxier

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	v1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

// nodeWith is a Node object with status addresses ("InternalIP=10.0.0.151", ...) and pod CIDRs.
func nodeWith(name string, addresses []v1.NodeAddress, podCIDRs ...string) *v1.Node {
	return &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: v1.NodeSpec{PodCIDRs: podCIDRs},
		Status: v1.NodeStatus{Addresses: addresses}}
}

func TestPrimaryIPs(t *testing.T) {
	in, ex, host := v1.NodeInternalIP, v1.NodeExternalIP, v1.NodeHostName
	cases := []struct {
		addrs []v1.NodeAddress
		want  string
	}{
		{nil, "[]"},
		{[]v1.NodeAddress{{Type: host, Address: "node01"}}, "[]"},
		{[]v1.NodeAddress{{Type: in, Address: "10.0.0.151"}, {Type: in, Address: "10.0.0.161"}}, "[10.0.0.151]"},
		// InternalIPs first, whatever the order; then the first of the other family.
		{[]v1.NodeAddress{{Type: ex, Address: "198.51.100.1"}, {Type: in, Address: "10.0.0.151"}, {Type: in, Address: "fd00:10::151"}}, "[10.0.0.151 fd00:10::151]"},
		{[]v1.NodeAddress{{Type: in, Address: "fd00:10::151"}, {Type: ex, Address: "198.51.100.1"}}, "[fd00:10::151 198.51.100.1]"},
		// Garbage is skipped, not fatal.
		{[]v1.NodeAddress{{Type: in, Address: "not-an-ip"}, {Type: in, Address: " 10.0.0.151 "}}, "[10.0.0.151]"},
	}
	for _, c := range cases {
		if got := fmt.Sprint(primaryIPs(nodeWith("n", c.addrs))); got != c.want {
			t.Errorf("%v: %s, want %s", c.addrs, got, c.want)
		}
	}
}

func TestNodePortIPs(t *testing.T) {
	node := Node{Name: "node01", IPs: addrs("10.0.0.151", "10.0.0.200", "10.244.1.1", "fd00:10::151"),
		PrimaryIPs: addrs("10.0.0.151")}
	cases := []struct {
		name       string
		cfg        Config
		node       Node
		f          Family
		want       string
		restricted bool
	}{
		{"unset: every address", Config{}, node, IPv4, "[]", false},
		{"prefixes", Config{NodePortAddresses: prefixes("10.0.0.0/24")}, node, IPv4, "[10.0.0.151 10.0.0.200]", true},
		{"prefixes of the other family: every address", Config{NodePortAddresses: prefixes("10.0.0.0/24")}, node, IPv6, "[]", false},
		{"zero-length prefix: every address", Config{NodePortAddresses: prefixes("10.0.0.0/24", "0.0.0.0/0")}, node, IPv4, "[]", false},
		{"prefix matching nothing: no address", Config{NodePortAddresses: prefixes("192.168.0.0/16")}, node, IPv4, "[]", true},
		{"primary", Config{NodePortPrimary: true, NodePortAddresses: prefixes("10.244.0.0/16")}, node, IPv4, "[10.0.0.151]", true},
		{"primary without one of the family: every address", Config{NodePortPrimary: true}, node, IPv6, "[]", false},
		{"primary before the Node is known: every address", Config{NodePortPrimary: true}, Node{Name: "node01", IPs: node.IPs}, IPv4, "[]", false},
		{"primary that is not local: no address", Config{NodePortPrimary: true},
			Node{Name: "node01", IPs: node.IPs, PrimaryIPs: addrs("192.0.2.1")}, IPv4, "[]", true},
		{"primary loopback: ignored", Config{NodePortPrimary: true},
			Node{Name: "node01", IPs: node.IPs, PrimaryIPs: addrs("127.0.0.1")}, IPv4, "[]", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st := &State{Node: c.node, Config: c.cfg}
			ips, restricted := st.NodePortIPs(c.f)
			if got := fmt.Sprint(ips); got != c.want || restricted != c.restricted {
				t.Errorf("got %s restricted %v, want %s restricted %v", got, restricted, c.want, c.restricted)
			}
		})
	}
}

func TestLocalDetector(t *testing.T) {
	node := Node{Name: "node01", PodCIDRs: prefixes("10.244.1.0/24", "fd00:244:1::/64")}
	clusterCIDRs := prefixes("10.244.0.0/16", "10.245.0.0/16", "fd00:244::/48")
	cases := []struct {
		detect LocalDetect
		node   Node
		f      Family
		want   string
	}{
		{LocalDetect{}, node, IPv4, "saddr 10.244.0.0/16"},
		{LocalDetect{Mode: DetectClusterCIDR}, node, IPv6, "saddr fd00:244::/48"},
		{LocalDetect{Mode: DetectNodeCIDR}, node, IPv4, "saddr 10.244.1.0/24"},
		{LocalDetect{Mode: DetectNodeCIDR}, node, IPv6, "saddr fd00:244:1::/64"},
		{LocalDetect{Mode: DetectNodeCIDR}, Node{Name: "node01"}, IPv4, "none"},
		{LocalDetect{Mode: DetectBridgeInterface, BridgeInterface: "cni0"}, node, IPv6, "iifname cni0"},
		{LocalDetect{Mode: DetectInterfaceNamePrefix, InterfaceNamePrefix: "veth"}, node, IPv4, "iifname veth*"},
		{LocalDetect{Mode: DetectInterfaceNamePrefix}, node, IPv4, "none"},
		{LocalDetect{Mode: "Bogus"}, node, IPv4, "none"},
	}
	for _, c := range cases {
		st := &State{Node: c.node, Config: Config{ClusterCIDRs: clusterCIDRs, LocalDetect: c.detect}}
		if got := st.LocalDetector(c.f).String(); got != c.want {
			t.Errorf("%+v %s: %s, want %s", c.detect, c.f, got, c.want)
		}
	}
	// Without --cluster-cidr the default mode detects nothing.
	if d := (&State{}).LocalDetector(IPv4); d.Implemented() {
		t.Errorf("no cluster CIDR: %v", d)
	}
}

func TestLocalDetectValidate(t *testing.T) {
	for _, d := range []LocalDetect{{}, {Mode: DetectNodeCIDR}, {Mode: DetectBridgeInterface, BridgeInterface: "cni0"},
		{Mode: DetectInterfaceNamePrefix, InterfaceNamePrefix: "veth"}} {
		if err := d.Validate(); err != nil {
			t.Errorf("%+v: %v", d, err)
		}
	}
	for _, d := range []LocalDetect{{Mode: "clustercidr"}, {Mode: DetectBridgeInterface},
		{Mode: DetectBridgeInterface, BridgeInterface: "a-very-long-interface"},
		{Mode: DetectInterfaceNamePrefix, InterfaceNamePrefix: `ve"th`}, {Mode: DetectInterfaceNamePrefix, InterfaceNamePrefix: "a b"}} {
		if err := d.Validate(); err == nil {
			t.Errorf("%+v: accepted", d)
		}
	}
}

// TestTrackerFollowsNodeObject: this node's primary addresses and pod CIDRs come from its Node
// object; a change makes the next snapshot full without recomputing services, and a Node without
// addresses keeps the last ones.
func TestTrackerFollowsNodeObject(t *testing.T) {
	tr := NewTracker(Node{Name: "node01", IPs: addrs("10.0.0.151")}, Config{}, nil)
	tr.Upsert(svc("web", nil))
	tr.Synced()
	tr.Snapshot()
	internal := []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "10.0.0.151"}}
	tr.Upsert(nodeWith("node02", []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "10.0.0.152"}}, "10.244.2.0/24"))
	if tr.Pending() {
		t.Fatal("another node's addresses marked a change")
	}
	tr.Upsert(nodeWith("node01", internal, "10.244.1.0/24"))
	st, ch := tr.Snapshot()
	if !ch.Full || len(ch.Services) != 0 {
		t.Errorf("addresses of this node: full %v, services %v; want full, none recomputed", ch.Full, ch.Services)
	}
	if fmt.Sprint(st.Node.PrimaryIPs) != "[10.0.0.151]" || fmt.Sprint(st.Node.PodCIDRs) != "[10.244.1.0/24]" {
		t.Errorf("node %+v", st.Node)
	}
	tr.Upsert(nodeWith("node01", nil))
	tr.SetNode(Node{Name: "node01", IPs: addrs("10.0.0.151")})
	if tr.Pending() {
		t.Error("a Node without addresses, or the host identity again, marked a change")
	}
	if st, _ := tr.Snapshot(); fmt.Sprint(st.Node.PrimaryIPs) != "[10.0.0.151]" {
		t.Errorf("addresses lost: %+v", st.Node)
	}
	tr.SetNode(Node{Name: "node02"})
	if st, _ := tr.Snapshot(); fmt.Sprint(st.Node.PrimaryIPs) != "[10.0.0.152]" || fmt.Sprint(st.Node.PodCIDRs) != "[10.244.2.0/24]" {
		t.Errorf("renamed to node02: %+v", st.Node)
	}
}

func TestTrackerServiceCIDRs(t *testing.T) {
	tr := NewTracker(Node{Name: "node01"}, Config{ServiceCIDRs: prefixes("10.96.0.0/12")}, nil)
	tr.Upsert(svc("web", nil))
	tr.Synced()
	tr.Snapshot()
	cidr := func(name string, cidrs ...string) *networkingv1.ServiceCIDR {
		return &networkingv1.ServiceCIDR{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: networkingv1.ServiceCIDRSpec{CIDRs: cidrs}}
	}
	tr.Upsert(cidr("kubernetes", "10.96.0.0/12", "fd00:96::/108"))
	tr.Upsert(cidr("extra", "10.100.0.5/16", "bogus"))
	st, ch := tr.Snapshot()
	if !ch.Full || len(ch.Services) != 0 {
		t.Errorf("ServiceCIDR added: full %v, services %v", ch.Full, ch.Services)
	}
	if got := fmt.Sprint(st.ServiceCIDRsOf(IPv4)); got != "[10.96.0.0/12 10.100.0.0/16]" {
		t.Errorf("IPv4 service CIDRs %s", got)
	}
	if got := fmt.Sprint(st.ServiceCIDRsOf(IPv6)); got != "[fd00:96::/108]" {
		t.Errorf("IPv6 service CIDRs %s", got)
	}
	tr.Upsert(cidr("extra", "10.100.0.0/16"))
	if tr.Pending() {
		t.Error("the same CIDRs again marked a change")
	}
	tr.Delete(cidr("kubernetes"))
	st, _ = tr.Snapshot()
	if !slices.Equal(st.ServiceCIDRs, prefixes("10.100.0.0/16")) {
		t.Errorf("after delete: %v", st.ServiceCIDRs)
	}
	if got := fmt.Sprint(st.ServiceCIDRsOf(IPv4)); got != "[10.96.0.0/12 10.100.0.0/16]" {
		t.Errorf("the configured range stays: %s", got)
	}
}
