package iptables

import (
	"bytes"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"nodeagent/proxier"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// Address conventions of these tests, from the lab plan (shared/DESIGN.md):
//
//   - this node is node01, 10.0.0.151 / fd00:10::151 on the LAN 10.0.0.0/24 / fd00:10::/64;
//     node02 is 10.0.0.152;
//   - pods: node01's are 10.244.1.0/24 (fd00:244:1::/64), node02's 10.244.2.0/24
//     (fd00:244:2::/64); the cluster CIDR is 10.244.0.0/16 (fd00:244::/48);
//   - services: 10.96.0.0/12 (fd00:96::/108); the seed's externalIP is 10.0.0.200;
//   - load-balancer IPs come from the pool 10.0.0.51-10.0.0.80 (fd00:10::51-fd00:10::80);
//   - clients: 10.0.0.1 on the LAN, 203.0.113.0/24 behind the router.
const node = "node01"

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func prefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// ep is a ready endpoint; local when it is a node01 pod (10.244.1.x or fd00:244:1::x).
func ep(s string) proxier.Endpoint {
	ap := netip.MustParseAddrPort(s)
	e := proxier.Endpoint{Addr: ap.Addr(), Port: ap.Port(), NodeName: "node02", Ready: true, Serving: true}
	if prefix("10.244.1.0/24").Contains(e.Addr) || prefix("fd00:244:1::/64").Contains(e.Addr) {
		e.NodeName, e.Local = node, true
	}
	return e
}

func terminating(e proxier.Endpoint) proxier.Endpoint {
	e.Ready, e.Terminating = false, true
	return e
}

// svc builds a service port with the endpoint lists filled the way the model fills them.
func svc(ns, name, port string, proto v1.Protocol, clusterIP string, svcPort uint16, eps ...proxier.Endpoint) *proxier.ServicePort {
	ip := addr(clusterIP)
	sp := &proxier.ServicePort{
		Name:      proxier.ServicePortName{NamespacedName: types.NamespacedName{Namespace: ns, Name: name}, Port: port, Protocol: proto, Family: proxier.FamilyOf(ip)},
		ClusterIP: ip,
		Port:      svcPort,
	}
	return withEndpoints(sp, eps...)
}

func withEndpoints(sp *proxier.ServicePort, eps ...proxier.Endpoint) *proxier.ServicePort {
	sp.AllEndpoints = eps
	sp.ClusterEndpoints, sp.LocalEndpoints = nil, nil
	usable := func(local bool) []proxier.Endpoint {
		var ready, fallback []proxier.Endpoint
		for _, e := range eps {
			if local && !e.Local {
				continue
			}
			if e.Ready && !e.Terminating {
				ready = append(ready, e)
			} else if e.Serving && e.Terminating {
				fallback = append(fallback, e)
			}
		}
		if len(ready) > 0 {
			return ready
		}
		return fallback
	}
	sp.ClusterEndpoints, sp.LocalEndpoints = usable(false), usable(true)
	return sp
}

func labState(sps ...*proxier.ServicePort) *proxier.State {
	return &proxier.State{
		Node: proxier.Node{Name: node, IPs: []netip.Addr{addr("10.0.0.151"), addr("fd00:10::151")}},
		Config: proxier.Config{
			ClusterCIDRs: []netip.Prefix{prefix("10.244.0.0/16"), prefix("fd00:244::/48")},
		},
		Services: sps,
	}
}

// fakeRules records single-rule calls; tests that need a kernel use fakeKernel instead.
type fakeRules struct{ k *fakeKernel }

func (r fakeRules) Delete(table, chain string, spec ...string) error {
	if r.k == nil {
		return nil
	}
	return r.k.delete(table, chain, spec)
}

func (fakeRules) HasRandomFully() bool                { return true }
func (fakeRules) GetIptablesVersion() (int, int, int) { return 1, 8, 9 }

func renderProxier(t *testing.T, fams ...proxier.Family) *Proxier {
	t.Helper()
	p, err := New(Options{Families: fams, Rules: func(proxier.Family) (Rules, error) { return fakeRules{}, nil }})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRenderGolden(t *testing.T) {
	v4 := []proxier.Family{proxier.IPv4}
	both := []proxier.Family{proxier.IPv4, proxier.IPv6}

	nodePort := svc("default", "demoapp", "http", v1.ProtocolTCP, "10.97.56.1", 80, ep("10.244.1.5:80"), ep("10.244.2.7:80"), ep("10.244.2.8:80"))
	nodePort.NodePort = 30080

	externalIP := svc("default", "demoapp", "http", v1.ProtocolTCP, "10.97.56.1", 80, ep("10.244.1.5:80"), ep("10.244.2.7:80"))
	externalIP.ExternalIPs = []netip.Addr{addr("10.0.0.200")}

	lb := svc("default", "demoapp", "http", v1.ProtocolTCP, "10.97.56.1", 80, ep("10.244.1.5:80"), ep("10.244.2.7:80"))
	lb.NodePort = 30080
	lb.LoadBalancerIPs = []netip.Addr{addr("10.0.0.51")}
	lb.LoadBalancerSourceRanges = []netip.Prefix{prefix("10.0.0.0/24"), prefix("203.0.113.0/24")}

	etpLocal := svc("default", "demoapp", "http", v1.ProtocolTCP, "10.97.56.1", 80, ep("10.244.1.5:80"), ep("10.244.2.7:80"))
	etpLocal.NodePort, etpLocal.HealthCheckNodePort = 30080, 32000
	etpLocal.LoadBalancerIPs = []netip.Addr{addr("10.0.0.51")}
	etpLocal.ExternalPolicyLocal = true
	etpNoLocal := svc("default", "remote-only", "", v1.ProtocolTCP, "10.97.56.2", 80, ep("10.244.2.7:80"))
	etpNoLocal.NodePort, etpNoLocal.HealthCheckNodePort = 30081, 32001
	etpNoLocal.LoadBalancerIPs = []netip.Addr{addr("10.0.0.52")}
	etpNoLocal.ExternalPolicyLocal = true

	itpLocal := svc("default", "node-cache", "dns", v1.ProtocolUDP, "10.96.0.20", 53, ep("10.244.1.5:53"), ep("10.244.2.7:53"))
	itpLocal.InternalPolicyLocal = true
	itpNoLocal := svc("default", "remote-cache", "dns", v1.ProtocolUDP, "10.96.0.21", 53, ep("10.244.2.7:53"))
	itpNoLocal.InternalPolicyLocal = true

	affinity := svc("default", "sticky", "http", v1.ProtocolTCP, "10.97.56.3", 80, ep("10.244.1.5:8080"), ep("10.244.2.7:8080"))
	affinity.SessionAffinity, affinity.AffinityTimeout = true, 600*time.Second

	noEndpoints := svc("default", "empty", "http", v1.ProtocolTCP, "10.97.56.4", 80)
	noEndpoints.NodePort = 30082
	noEndpoints.ExternalIPs = []netip.Addr{addr("10.0.0.200")}
	noEndpoints.LoadBalancerIPs = []netip.Addr{addr("10.0.0.53")}

	fallback := svc("default", "rolling", "http", v1.ProtocolTCP, "10.97.56.5", 80,
		terminating(ep("10.244.1.5:80")), terminating(ep("10.244.2.7:80")), func() proxier.Endpoint {
			e := ep("10.244.2.8:80")
			e.Ready, e.Serving = false, false // starting: neither ready nor serving
			return e
		}())

	dualV4 := svc("default", "demoapp", "http", v1.ProtocolTCP, "10.97.56.1", 80, ep("10.244.1.5:80"), ep("10.244.2.7:80"))
	dualV4.NodePort = 30080
	dualV6 := svc("default", "demoapp", "http", v1.ProtocolTCP, "fd00:96::10", 80, ep("[fd00:244:1::5]:80"), ep("[fd00:244:2::7]:80"))
	dualV6.NodePort = 30080
	dualV6.LoadBalancerIPs = []netip.Addr{addr("fd00:10::51")}

	dns := svc("kube-system", "kube-dns", "dns", v1.ProtocolUDP, "10.96.0.10", 53, ep("10.244.1.2:53"), ep("10.244.2.3:53"))
	sctp := svc("default", "signalling", "sctp", v1.ProtocolSCTP, "10.97.56.6", 3868, ep("10.244.2.9:3868"))
	sctp.NodePort = 30868

	masqAll := labState(svc("default", "demoapp", "http", v1.ProtocolTCP, "10.97.56.1", 80, ep("10.244.1.5:80")))
	masqAll.Config.MasqueradeAll = true
	npAddrs := labState(nodePort)
	npAddrs.Config.NodePortAddresses = []netip.Prefix{prefix("10.0.0.0/24")}
	noCIDR := labState(etpLocal)
	noCIDR.Config.ClusterCIDRs = nil
	// --nodeport-addresses primary: node01's Node object names 10.0.0.151 (IPv4 only); it also
	// holds the external IP 10.0.0.200.
	primary := labState(dualV4, dualV6)
	primary.Node.IPs = []netip.Addr{addr("10.0.0.151"), addr("10.0.0.200"), addr("fd00:10::151")}
	primary.Node.PrimaryIPs = []netip.Addr{addr("10.0.0.151")}
	primary.Config.NodePortPrimary = true
	// --detect-local-mode: the pod traffic matches of the cluster IP and the Local policy's
	// short-circuit, per mode.
	web := svc("default", "web", "http", v1.ProtocolTCP, "10.96.0.100", 80, ep("10.244.1.5:8080"), ep("10.244.2.7:8080"))
	detect := func(d proxier.LocalDetect) *proxier.State {
		st := labState(web, etpLocal)
		st.Node.PodCIDRs = []netip.Prefix{prefix("10.244.1.0/24"), prefix("fd00:244:1::/64")}
		st.Config.LocalDetect = d
		return st
	}
	masqBit := labState(nodePort)
	masqBit.Config.MasqueradeMark = 1 << 12
	localhost := labState(dualV4, dualV6)
	localhost.Config.LocalhostNodePorts = true

	cases := []struct {
		name string
		fams []proxier.Family
		st   *proxier.State
	}{
		{"empty", both, labState()},
		{"clusterip", v4, labState(svc("default", "web", "http", v1.ProtocolTCP, "10.96.0.100", 80, ep("10.244.1.5:8080"), ep("10.244.2.7:8080")))},
		{"nodeport", v4, labState(nodePort)},
		{"externalip", v4, labState(externalIP)},
		{"loadbalancer-source-ranges", v4, labState(lb)},
		{"etp-local", v4, labState(etpLocal, etpNoLocal)},
		{"etp-local-no-cluster-cidr", v4, noCIDR},
		{"itp-local", v4, labState(itpLocal, itpNoLocal)},
		{"affinity", v4, labState(affinity)},
		{"no-endpoints", v4, labState(noEndpoints)},
		{"terminating-fallback", v4, labState(fallback)},
		{"dual-stack", both, labState(dualV4, dualV6)},
		{"udp-sctp", v4, labState(dns, sctp)},
		{"masquerade-all", v4, masqAll},
		{"nodeport-addresses", v4, npAddrs},
		{"nodeport-primary", both, primary},
		{"detect-local-node-cidr", v4, detect(proxier.LocalDetect{Mode: proxier.DetectNodeCIDR})},
		{"detect-local-bridge", v4, detect(proxier.LocalDetect{Mode: proxier.DetectBridgeInterface, BridgeInterface: "cni0"})},
		{"detect-local-prefix", v4, detect(proxier.LocalDetect{Mode: proxier.DetectInterfaceNamePrefix, InterfaceNamePrefix: "veth"})},
		{"masquerade-bit", v4, masqBit},
		{"localhost-nodeports", both, localhost},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := renderProxier(t, tc.fams...).Render(&buf, tc.st); err != nil {
				t.Fatal(err)
			}
			golden(t, filepath.Join("testdata", tc.name+".golden"), buf.Bytes())
			// Deterministic: a second render is byte for byte the same.
			var again bytes.Buffer
			if err := renderProxier(t, tc.fams...).Render(&again, tc.st); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf.Bytes(), again.Bytes()) {
				t.Error("two renders of the same state differ")
			}
		})
	}
}

func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if d := cmp.Diff(string(want), string(got)); d != "" {
		t.Errorf("%s differs (-want +got), run go test -update if intended:\n%s", path, d)
	}
}

func TestChainNames(t *testing.T) {
	n := proxier.ServicePortName{NamespacedName: types.NamespacedName{Namespace: "a-very-long-namespace-name-indeed", Name: "and-a-service-name-that-is-long-too"}, Port: "https-alternative", Protocol: v1.ProtocolSCTP, Family: proxier.IPv6}
	e := ep("[fd00:244:2::7]:65535")
	for _, name := range []string{serviceChain(svcPrefix, n), serviceChain(svlPrefix, n), serviceChain(extPrefix, n), serviceChain(fwPrefix, n), endpointChain(n, e), externalServicesChain, firewallChain} {
		if len(name) > 28 {
			t.Errorf("chain %s is %d characters, over the kernel's 28", name, len(name))
		}
	}
	if serviceChain(svcPrefix, n) != serviceChain(svcPrefix, n) || endpointChain(n, e) == endpointChain(n, ep("[fd00:244:2::8]:65535")) {
		t.Error("chain names must be stable and differ per endpoint")
	}
	other := n
	other.Protocol = v1.ProtocolTCP
	if serviceChain(svcPrefix, n) == serviceChain(svcPrefix, other) {
		t.Error("chain names must differ per protocol")
	}
}

func TestSplitWords(t *testing.T) {
	got := splitWords(`-A INPUT -m comment --comment "nodeagent load \"x\" balancer" -j NA-X`)
	want := []string{"-A", "INPUT", "-m", "comment", "--comment", `nodeagent load "x" balancer`, "-j", "NA-X"}
	if d := cmp.Diff(want, got); d != "" {
		t.Error(d)
	}
}
