package lb

import (
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

func l2ad(name string, pools []string, ifaces []string, nodeSel []metav1.LabelSelector) *L2Advertisement {
	return &L2Advertisement{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "metallb-system"},
		Spec: L2AdvertisementSpec{IPAddressPools: pools, Interfaces: ifaces, NodeSelectors: nodeSel}}
}

// slice returns an EndpointSlice of service ns/name with one ready endpoint per node listed
// ("node" or "!node" for a not-ready one).
func slice(svcName string, nodes ...string) *discoveryv1.EndpointSlice {
	ns, n, _ := strings.Cut(svcName, "/")
	s := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: n + "-abc",
		Labels: map[string]string{discoveryv1.LabelServiceName: n}}}
	for i, node := range nodes {
		ready := !strings.HasPrefix(node, "!")
		node = strings.TrimPrefix(node, "!")
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{fmt.Sprintf("10.244.%d.%d", i, i+1)},
			NodeName: &node, Conditions: discoveryv1.EndpointConditions{Ready: &ready}})
	}
	return s
}

func node(name string, labels ...string) *v1.Node {
	n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{}}}
	for _, l := range labels {
		k, v, _ := strings.Cut(l, "=")
		n.Labels[k] = v
	}
	return n
}

func asg(ip, pool string) Assignment {
	return Assignment{IPs: []netip.Addr{netip.MustParseAddr(ip)}, Pool: pool}
}

func nn(s string) types.NamespacedName {
	ns, n, _ := strings.Cut(s, "/")
	return types.NamespacedName{Namespace: ns, Name: n}
}

var three = []string{"node01", "node02", "node03"}

func TestL2OrderIsStableAndSpreads(t *testing.T) {
	// The same address gives the same order whatever the input order.
	addr := netip.MustParseAddr("10.0.0.51")
	a, b := slices.Clone(three), []string{"node03", "node01", "node02"}
	L2Order(addr, a)
	L2Order(addr, b)
	if !slices.Equal(a, b) {
		t.Fatalf("orders differ: %v %v", a, b)
	}
	if L2Owner(addr, []string{"node02", "node03", "node01"}) != a[0] {
		t.Error("L2Owner disagrees with L2Order")
	}
	if L2Owner(addr, nil) != "" {
		t.Error("owner without candidates")
	}
	// Removing a node that does not own an address keeps its owner; removing the owner makes the
	// second in the order own it.
	for _, n := range a[1:] {
		rest := slices.DeleteFunc(slices.Clone(three), func(s string) bool { return s == n })
		if L2Owner(addr, rest) != a[0] {
			t.Errorf("removing %s moved %s", n, addr)
		}
	}
	if L2Owner(addr, a[1:]) != a[1] {
		t.Error("the next node in the order does not take over")
	}
	// Thirty addresses spread over three nodes: each node owns some.
	owned := map[string]int{}
	for i := 51; i <= 80; i++ {
		owned[L2Owner(netip.MustParseAddr(fmt.Sprintf("10.0.0.%d", i)), three)]++
	}
	for _, n := range three {
		if owned[n] < 3 {
			t.Errorf("%s owns %d of 30 addresses: %v", n, owned[n], owned)
		}
	}
}

func TestPlanL2(t *testing.T) {
	seedAd := l2ad("localip-pool-l2a", []string{"localip-pool"}, []string{"ens33"}, nil)
	owner51 := L2Owner(netip.MustParseAddr("10.0.0.51"), three)
	order51 := slices.Clone(three)
	L2Order(netip.MustParseAddr("10.0.0.51"), order51)

	tests := []struct {
		name string
		in   L2Input
		// want maps an address to "owner [ifaces]" or "!reason substring".
		want map[string]string
	}{
		{
			name: "seed: one owner among three, on ens33",
			in: L2Input{Assignments: map[types.NamespacedName]Assignment{nn("default/demoapp-lb"): asg("10.0.0.51", "localip-pool")},
				Services: []*v1.Service{svc("demoapp-lb")}, EndpointSlices: []*discoveryv1.EndpointSlice{slice("default/demoapp-lb", "node01", "node02")},
				Advertisements: []*L2Advertisement{seedAd}, Alive: three},
			want: map[string]string{"10.0.0.51": owner51 + " [ens33]"},
		},
		{
			name: "owner dead: the next node",
			in: L2Input{Assignments: map[types.NamespacedName]Assignment{nn("default/demoapp-lb"): asg("10.0.0.51", "localip-pool")},
				Services: []*v1.Service{svc("demoapp-lb")}, EndpointSlices: []*discoveryv1.EndpointSlice{slice("default/demoapp-lb", "node01")},
				Advertisements: []*L2Advertisement{seedAd}, Alive: order51[1:]},
			want: map[string]string{"10.0.0.51": order51[1] + " [ens33]"},
		},
		{
			name: "ETP Local: only nodes with a ready local endpoint",
			in: L2Input{Assignments: map[types.NamespacedName]Assignment{nn("default/web"): asg("10.0.0.51", "localip-pool")},
				Services:       []*v1.Service{svc("web", local("web"))},
				EndpointSlices: []*discoveryv1.EndpointSlice{slice("default/web", order51[2], "!"+order51[0])},
				Advertisements: []*L2Advertisement{seedAd}, Alive: three},
			want: map[string]string{"10.0.0.51": order51[2] + " [ens33]"},
		},
		{
			name: "ETP Local without a ready endpoint on an alive node",
			in: L2Input{Assignments: map[types.NamespacedName]Assignment{nn("default/web"): asg("10.0.0.51", "localip-pool")},
				Services:       []*v1.Service{svc("web", local("web"))},
				EndpointSlices: []*discoveryv1.EndpointSlice{slice("default/web", "node09")},
				Advertisements: []*L2Advertisement{seedAd}, Alive: three},
			want: map[string]string{"10.0.0.51": "!no alive announcing node has a ready local endpoint"},
		},
		{
			name: "no ready endpoint at all: not announced",
			in: L2Input{Assignments: map[types.NamespacedName]Assignment{nn("default/web"): asg("10.0.0.51", "localip-pool")},
				Services: []*v1.Service{svc("web")}, EndpointSlices: []*discoveryv1.EndpointSlice{slice("default/web", "!node01")},
				Advertisements: []*L2Advertisement{seedAd}, Alive: three},
			want: map[string]string{"10.0.0.51": "!no service on the address has a ready endpoint"},
		},
		{
			name: "no advertisement for the pool; no alive node",
			in: L2Input{Assignments: map[types.NamespacedName]Assignment{
				nn("default/a"): asg("10.0.0.51", "localip-pool"), nn("default/b"): asg("10.9.0.1", "other")},
				Services:       []*v1.Service{svc("a"), svc("b")},
				EndpointSlices: []*discoveryv1.EndpointSlice{slice("default/a", "node01"), slice("default/b", "node01")},
				Advertisements: []*L2Advertisement{seedAd}},
			want: map[string]string{"10.0.0.51": "!no alive node matches an L2Advertisement of pool localip-pool",
				"10.9.0.1": "!no L2Advertisement selects pool other"},
		},
		{
			name: "node selectors, pool selectors, interfaces merged per node, all pools",
			in: L2Input{Assignments: map[types.NamespacedName]Assignment{
				nn("default/a"): asg("10.0.0.51", "localip-pool"), nn("default/b"): asg("10.9.0.1", "labelled")},
				Services:       []*v1.Service{svc("a"), svc("b")},
				EndpointSlices: []*discoveryv1.EndpointSlice{slice("default/a", "node01"), slice("default/b", "node01")},
				Pools: []*IPAddressPool{seedPool, func() *IPAddressPool {
					p := mkpool("labelled", "10.9.0.0/24")
					p.Labels = map[string]string{"tier": "x"}
					return p
				}()},
				Advertisements: []*L2Advertisement{
					l2ad("only-node02", []string{"localip-pool"}, []string{"eth1"}, sel("kubernetes.io/hostname", "node02")),
					l2ad("also-node02", []string{"localip-pool"}, []string{"eth0", "eth1"}, sel("rack", "a")),
					{ObjectMeta: metav1.ObjectMeta{Name: "by-label"}, Spec: L2AdvertisementSpec{IPAddressPoolSelectors: sel("tier", "x"),
						NodeSelectors: sel("rack", "b")}},
					{ObjectMeta: metav1.ObjectMeta{Name: "broken"}, Spec: L2AdvertisementSpec{NodeSelectors: []metav1.LabelSelector{
						{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "k", Operator: "Nope"}}}}}},
				},
				Nodes: []*v1.Node{node("node01", "rack=b"), node("node02", "kubernetes.io/hostname=node02", "rack=a"), node("node03")},
				Alive: three},
			want: map[string]string{"10.0.0.51": "node02 [eth0 eth1]", "10.9.0.1": "node01 []"},
		},
		{
			name: "an advertisement without pools covers every pool; without interfaces every interface",
			in: L2Input{Assignments: map[types.NamespacedName]Assignment{nn("default/a"): asg("10.0.0.51", "localip-pool")},
				Services: []*v1.Service{svc("a")}, EndpointSlices: []*discoveryv1.EndpointSlice{slice("default/a", "node03")},
				Advertisements: []*L2Advertisement{l2ad("all", nil, nil, nil), l2ad("ens", nil, []string{"ens33"}, nil)},
				Alive:          []string{"node03", "node03"}},
			want: map[string]string{"10.0.0.51": "node03 []"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			plan := PlanL2(tc.in)
			got := map[string]string{}
			for _, a := range plan {
				if a.Owner == "" {
					got[a.Addr.String()] = "!" + a.Reason
					continue
				}
				if a.Candidates[0] != a.Owner {
					t.Errorf("%s: owner %s is not the first candidate %v", a.Addr, a.Owner, a.Candidates)
				}
				got[a.Addr.String()] = fmt.Sprintf("%s %v", a.Owner, a.Interfaces)
			}
			if len(got) != len(tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
			for k, w := range tc.want {
				g := got[k]
				if strings.HasPrefix(w, "!") {
					if !strings.HasPrefix(g, "!") || !strings.Contains(g, w[1:]) {
						t.Errorf("%s: %q, want a reason containing %q", k, g, w[1:])
					}
				} else if g != w {
					t.Errorf("%s: %q, want %q", k, g, w)
				}
			}
		})
	}
}

// Services sharing an address fail over together: one announcement, one owner, whatever the
// services; and Owned gives each node exactly its addresses.
func TestPlanL2SharedAddressAndOwned(t *testing.T) {
	pools := []*IPAddressPool{seedPool}
	services := []*v1.Service{svc("tcp", share("k"), ports("TCP/53")), svc("udp", share("k"), ports("UDP/53")),
		svc("solo", created(1)), svc("solo2", created(2))}
	res := Assign(Input{Pools: pools, Services: services})
	if res.Assignments[nn("default/tcp")].IPs[0] != res.Assignments[nn("default/udp")].IPs[0] {
		t.Fatalf("not shared: %v", summary(res))
	}
	var epSlices []*discoveryv1.EndpointSlice
	for _, s := range services {
		epSlices = append(epSlices, slice("default/"+s.Name, "node01"))
	}
	in := L2Input{Assignments: res.Assignments, Services: services, EndpointSlices: epSlices, Pools: pools,
		Advertisements: []*L2Advertisement{l2ad("l2", []string{"localip-pool"}, []string{"ens33"}, nil)}, Alive: three}
	plan := PlanL2(in)
	if len(plan) != 3 {
		t.Fatalf("plan has %d addresses, want 3: %+v", len(plan), plan)
	}
	if !reflect.DeepEqual(plan[0].Services, []types.NamespacedName{nn("default/tcp"), nn("default/udp")}) {
		t.Errorf("shared address services %v", plan[0].Services)
	}
	total := 0
	for _, n := range three {
		owned := Owned(plan, n)
		for a, ifs := range owned {
			if L2Owner(a, three) != n || !slices.Equal(ifs, []string{"ens33"}) {
				t.Errorf("%s owns %s on %v", n, a, ifs)
			}
		}
		total += len(owned)
	}
	if total != 3 || len(Owned(plan, "")) != 0 {
		t.Errorf("%d addresses owned in all, want 3", total)
	}
	// Same input, shuffled: same plan.
	in.Alive = []string{"node03", "node02", "node01"}
	slices.Reverse(in.Services)
	if again := PlanL2(in); !reflect.DeepEqual(again, plan) {
		t.Errorf("plan depends on input order")
	}
}

func TestNodeUnusableReason(t *testing.T) {
	cond := func(t v1.NodeConditionType, s v1.ConditionStatus) v1.NodeCondition {
		return v1.NodeCondition{Type: t, Status: s}
	}
	tests := []struct {
		node *v1.Node
		want string
	}{
		{&v1.Node{Status: v1.NodeStatus{Conditions: []v1.NodeCondition{cond(v1.NodeReady, v1.ConditionTrue)}}}, ""},
		{&v1.Node{Status: v1.NodeStatus{Conditions: []v1.NodeCondition{cond(v1.NodeReady, v1.ConditionFalse)}}}, "not Ready"},
		{&v1.Node{}, "not Ready"},
		{&v1.Node{Status: v1.NodeStatus{Conditions: []v1.NodeCondition{cond(v1.NodeReady, v1.ConditionTrue),
			cond(v1.NodeNetworkUnavailable, v1.ConditionTrue)}}}, "NetworkUnavailable"},
		{&v1.Node{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{LabelExcludeFromExternalLB: ""}},
			Status: v1.NodeStatus{Conditions: []v1.NodeCondition{cond(v1.NodeReady, v1.ConditionTrue)}}}, "exclude-from-external-load-balancers"},
	}
	for i, tc := range tests {
		got := NodeUnusableReason(tc.node)
		if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Errorf("%d: %q, want %q", i, got, tc.want)
		}
	}
}

// MetalLB's exclusion (both protocols) is the label and NetworkUnavailable, not Ready; a node
// without a Node object is neither excluded nor unusable.
func TestNodeExcludedReason(t *testing.T) {
	notReady := &v1.Node{Status: v1.NodeStatus{Conditions: []v1.NodeCondition{{Type: v1.NodeReady, Status: v1.ConditionFalse}}}}
	if why := NodeExcludedReason(notReady); why != "" {
		t.Errorf("NotReady node excluded: %q", why)
	}
	if NodeExcludedReason(nil) != "" || NodeUnusableReason(nil) != "" {
		t.Error("an unknown node is excluded")
	}
	labelled := &v1.Node{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{LabelExcludeFromExternalLB: ""}}}
	if !strings.Contains(NodeExcludedReason(labelled), LabelExcludeFromExternalLB) {
		t.Errorf("labelled node: %q", NodeExcludedReason(labelled))
	}
}
