package ipvs

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"nodeagent/proxier"
)

// Test address conventions (the lab's plan, see DESIGN.md):
//
//	node LAN          10.0.0.0/24, this node 10.0.0.151, fd00:10::151
//	pod CIDR          10.244.0.0/16 (this node 10.244.1.0/24), fd00:244::/48
//	service CIDR      10.96.0.0/12, fd00:96::/108
//	external IPs      10.0.0.200
//	load balancers    10.0.0.51-10.0.0.80, fd00:10::51-
//	outside clients   203.0.113.0/24 (source range 203.0.113.0/25)

var nsCounter atomic.Int32

// netns creates a network namespace for the test and deletes it when the test ends.
func newNS(t testing.TB) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	name := fmt.Sprintf("naipvs%d-%d", os.Getpid(), nsCounter.Add(1))
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	return name
}

// inNS runs a command inside ns and returns its output.
func inNS(ns string, stdin string, args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, errOut.String())
	}
	return out.String(), nil
}

func mustNS(t testing.TB, ns string, args ...string) string {
	t.Helper()
	out, err := inNS(ns, "", args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func ep(a string, port uint16, node string) proxier.Endpoint {
	return proxier.Endpoint{Addr: addr(a), Port: port, NodeName: node, Local: node == "node01",
		Ready: true, Serving: true}
}

func spn(ns, name, port string, proto v1.Protocol, f proxier.Family) proxier.ServicePortName {
	return proxier.ServicePortName{NamespacedName: types.NamespacedName{Namespace: ns, Name: name},
		Port: port, Protocol: proto, Family: f}
}

// withEndpoints fills the endpoint lists the way the model does (all endpoints ready).
func withEndpoints(sp *proxier.ServicePort, eps ...proxier.Endpoint) *proxier.ServicePort {
	sp.AllEndpoints, sp.ClusterEndpoints, sp.LocalEndpoints = eps, eps, nil
	for _, e := range eps {
		if e.Local {
			sp.LocalEndpoints = append(sp.LocalEndpoints, e)
		}
	}
	return sp
}

// testState covers every path the proxier renders: ClusterIP, NodePort, LoadBalancer with
// Local policy and source ranges, affinity, a scheduler annotation, no endpoints, internal Local
// policy, UDP, SCTP, dual stack.
func testState() *proxier.State {
	svcs := []*proxier.ServicePort{
		withEndpoints(&proxier.ServicePort{
			Name: spn("default", "demoapp", "http", v1.ProtocolTCP, proxier.IPv4), ClusterIP: addr("10.96.0.10"), Port: 80,
			NodePort: 30080,
		}, ep("10.244.1.5", 80, "node01"), ep("10.244.2.5", 80, "node02"), ep("10.244.3.5", 80, "node03")),
		withEndpoints(&proxier.ServicePort{
			Name: spn("default", "demoapp", "http", v1.ProtocolTCP, proxier.IPv6), ClusterIP: addr("fd00:96::10"), Port: 80,
			NodePort: 30080,
		}, ep("fd00:244:1::5", 80, "node01"), ep("fd00:244:2::5", 80, "node02")),
		withEndpoints(&proxier.ServicePort{
			Name: spn("default", "myapp", "", v1.ProtocolTCP, proxier.IPv4), ClusterIP: addr("10.96.0.20"), Port: 80,
			NodePort: 30081, LoadBalancerIPs: []netip.Addr{addr("10.0.0.51")}, ExternalPolicyLocal: true,
			HealthCheckNodePort: 32000, LoadBalancerSourceRanges: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/25"),
				netip.MustParsePrefix("10.0.0.0/24")}, Scheduler: "wlc",
		}, ep("10.244.1.7", 8080, "node01"), ep("10.244.2.7", 8080, "node02")),
		withEndpoints(&proxier.ServicePort{
			Name: spn("default", "remote-only", "", v1.ProtocolTCP, proxier.IPv4), ClusterIP: addr("10.96.0.21"), Port: 80,
			NodePort: 30082, LoadBalancerIPs: []netip.Addr{addr("10.0.0.52")}, ExternalPolicyLocal: true,
		}, ep("10.244.2.8", 80, "node02")),
		withEndpoints(&proxier.ServicePort{
			Name: spn("default", "sticky", "web", v1.ProtocolTCP, proxier.IPv4), ClusterIP: addr("10.96.0.30"), Port: 8080,
			ExternalIPs: []netip.Addr{addr("10.0.0.200")}, SessionAffinity: true, AffinityTimeout: 600 * time.Second,
		}, ep("10.244.1.9", 8080, "node01"), ep("10.244.3.9", 8080, "node03")),
		withEndpoints(&proxier.ServicePort{
			Name: spn("kube-system", "dns", "dns", v1.ProtocolUDP, proxier.IPv4), ClusterIP: addr("10.96.0.53"), Port: 53,
			InternalPolicyLocal: true,
		}, ep("10.244.1.53", 53, "node01"), ep("10.244.2.53", 53, "node02")),
		withEndpoints(&proxier.ServicePort{
			Name: spn("kube-system", "dns", "dns-tcp", v1.ProtocolTCP, proxier.IPv4), ClusterIP: addr("10.96.0.53"), Port: 53,
			InternalPolicyLocal: true,
		}, ep("10.244.2.53", 53, "node02")),
		withEndpoints(&proxier.ServicePort{
			Name: spn("default", "sctp", "", v1.ProtocolSCTP, proxier.IPv4), ClusterIP: addr("10.96.0.40"), Port: 9999,
		}, ep("10.244.1.40", 9999, "node01")),
		withEndpoints(&proxier.ServicePort{
			Name: spn("default", "sticky6", "", v1.ProtocolUDP, proxier.IPv6), ClusterIP: addr("fd00:96::30"), Port: 5000,
			SessionAffinity: true, AffinityTimeout: proxier.DefaultAffinityTimeout, LoadBalancerIPs: []netip.Addr{addr("fd00:10::51")},
		}, ep("fd00:244:2::30", 5000, "node02")),
		{
			Name: spn("default", "empty", "", v1.ProtocolTCP, proxier.IPv4), ClusterIP: addr("10.96.0.50"), Port: 80,
			NodePort: 30090, ExternalIPs: []netip.Addr{addr("10.0.0.201")},
		},
	}
	return &proxier.State{
		Node: proxier.Node{Name: "node01", IPs: []netip.Addr{addr("10.0.0.151"), addr("fd00:10::151")}},
		Config: proxier.Config{
			ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/48")},
		},
		Services: svcs,
	}
}

func changed(names ...types.NamespacedName) proxier.Changes {
	ch := proxier.Changes{Services: map[types.NamespacedName]bool{}}
	for _, n := range names {
		ch.Services[n] = true
	}
	return ch
}

func nsName(ns, name string) types.NamespacedName {
	return types.NamespacedName{Namespace: ns, Name: name}
}

func mustSync(t testing.TB, p *Proxier, st *proxier.State, ch proxier.Changes) SyncStats {
	t.Helper()
	if err := p.Sync(context.Background(), st, ch); err != nil {
		t.Fatal(err)
	}
	return p.LastSync()
}

// cloneState copies st deeply enough for a test to change services.
func cloneState(st *proxier.State) *proxier.State {
	c := *st
	c.Services = nil
	for _, sp := range st.Services {
		n := *sp
		c.Services = append(c.Services, &n)
	}
	return &c
}

// service returns st's service port called name (first family match).
func service(st *proxier.State, name string, f proxier.Family) *proxier.ServicePort {
	for _, sp := range st.Services {
		if sp.Name.Name == name && sp.Name.Family == f {
			return sp
		}
	}
	panic("no service " + name)
}
