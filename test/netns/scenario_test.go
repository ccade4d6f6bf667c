package lab

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// mode is one row of the scenario suite: a proxy mode and how to look at what it programs.
type mode struct {
	name string
	// skip, when set and non-empty, is why this kernel cannot run the mode (the row skips).
	skip func() string
	// args are flags every agent of the row gets (env.StartAgent), before the scenario's own.
	args []string
	// dump lists the rules the mode programs in a namespace, normalised so that two dumps of the
	// same rules compare equal (no counters, no timestamps).
	dump func(ns string) (string, error)
	// ours matches a dump that still holds objects of nodeagent's.
	ours *regexp.Regexp
	// addForeign programs rules nodeagent does not own; each of foreign matches a dump holding them.
	addForeign func(ns string) error
	foreign    []*regexp.Regexp
}

// modes are the proxy modes the suite runs against: adding a mode (ipvs) is adding its row here.
var modes = []mode{
	iptablesMode,
	nftablesMode,
	ipvsMode,
}

var iptablesMode = mode{
	name: "iptables",
	dump: func(ns string) (string, error) {
		out, err := Exec(ns, "iptables-save")
		if err != nil {
			return "", err
		}
		return normalize(out, `(?m)^#.*\n`, ``, `\[\d+:\d+\]`, `[0:0]`), nil
	},
	ours: regexp.MustCompile(`(?m)^:NA-|-j NA-`),
	addForeign: func(ns string) error {
		for _, args := range [][]string{
			{"-w", "-t", "nat", "-N", "LAB-FOREIGN"},
			{"-w", "-t", "nat", "-A", "LAB-FOREIGN", "-s", "192.0.2.1/32", "-j", "RETURN"},
			{"-w", "-t", "filter", "-A", "INPUT", "-s", "192.0.2.1/32", "-m", "comment", "--comment", "lab-foreign", "-j", "DROP"},
		} {
			if _, err := Exec(ns, "iptables", args...); err != nil {
				return err
			}
		}
		return nil
	},
	foreign: []*regexp.Regexp{
		regexp.MustCompile(`(?m)^:LAB-FOREIGN `),
		regexp.MustCompile(`(?m)^-A LAB-FOREIGN -s 192.0.2.1/32 -j RETURN$`),
		regexp.MustCompile(`(?m)^-A INPUT -s 192.0.2.1/32 -m comment --comment lab-foreign -j DROP$`),
	},
}

var nftablesMode = mode{
	name: "nftables",
	dump: func(ns string) (string, error) {
		out, err := Exec(ns, "nft", "list", "ruleset")
		if err != nil {
			return "", err
		}
		return normalize(out, `counter packets \d+ bytes \d+`, `counter`, `expires \S+`, ``), nil
	},
	ours: regexp.MustCompile(`(?m)^table \S+ nodeagent`),
	addForeign: func(ns string) error {
		_, err := Exec(ns, "nft", "add table inet labforeign; add chain inet labforeign input { type filter hook input priority 0; }; add rule inet labforeign input ip saddr 192.0.2.1 drop")
		return err
	},
	foreign: []*regexp.Regexp{regexp.MustCompile(`(?s)table inet labforeign.*ip saddr 192.0.2.1 drop`)},
}

func normalize(s string, pairs ...string) string {
	for i := 0; i+1 < len(pairs); i += 2 {
		s = regexp.MustCompile(pairs[i]).ReplaceAllString(s, pairs[i+1])
	}
	return s
}

// scenario is one behaviour every mode must show.
type scenario struct {
	name string
	run  func(t *testing.T, m mode)
}

var scenarios = []scenario{
	{"ClusterIP", testClusterIP},
	{"NodePort", testNodePort},
	{"ExternalIP", testExternalIP},
	{"ExternalTrafficPolicyLocal", testExternalTrafficPolicyLocal},
	{"SessionAffinity", testSessionAffinity},
	{"NoEndpointsRefused", testNoEndpoints},
	{"EndpointRemoved", testEndpointRemoved},
	{"PortsAndFixedClusterIP", testPorts},
	{"RestartKeepsConnections", testRestart},
	{"Cleanup", testCleanup},
	{"BrokenManifest", testBrokenManifest},
	{"LoadBalancerLayer2", testLoadBalancerLayer2},
	{"LoadBalancerLocal", testLoadBalancerLocal},
	{"LoadBalancerBGP", testLoadBalancerBGP},
	{"KubernetesAPI", testKubernetesAPI},
	{"DualStack", testDualStack},
	{"LoadBalancerSourceRanges", testLoadBalancerSourceRanges},
	{"InternalTrafficPolicyAndHairpin", testInternalTrafficPolicyAndHairpin},
	{"LoadBalancerPools", testLoadBalancerPools},
	{"BGPLocalAndServiceIPs", testBGPLocalAndServiceIPs},
	{"TopologyAwareRouting", testTopologyAwareRouting},
	{"NodePortPrimary", testNodePortPrimary},
	{"LocalhostNodePorts", testLocalhostNodePorts},
	{"DetectLocalMode", testDetectLocalMode},
	{"MasqueradeBit", testMasqueradeBit},
	{"UnallocatedServiceIP", testUnallocatedServiceIP},
	{"ModeSwitch", testModeSwitch},
	{"TerminatingWithoutServing", testTerminatingWithoutServing},
}

// TestScenarios runs every scenario against every mode, each in its own lab.
func TestScenarios(t *testing.T) {
	RequireRoot(t)
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			if m.skip != nil {
				if why := m.skip(); why != "" {
					t.Skip(why)
				}
			}
			for _, sc := range scenarios {
				t.Run(sc.name, func(t *testing.T) {
					t.Parallel()
					sc.run(t, m)
				})
			}
		})
	}
}

// Pods of the seed manifests, at the seed's addresses.
type podSpec struct {
	node  int
	name  string
	ip    string
	ports []uint16
}

var (
	demoappPods = []podSpec{{1, "demoapp-1", "10.244.1.59", nil}, {2, "demoapp-2", "10.244.2.48", nil}, {3, "demoapp-3", "10.244.3.44", nil}}
	myappPods   = []podSpec{{1, "myapp-1", "10.244.1.96", nil}, {2, "myapp-2", "10.244.2.101", nil}, {2, "myapp-3", "10.244.2.102", nil}}
	redisPod    = podSpec{2, "redis-1", "10.244.2.94", []uint16{6379}}
	// clientPod is a pod that only makes requests (its backend is never an endpoint).
	clientPod = podSpec{1, "client-pod", "10.244.1.10", nil}
)

// env is a lab with manifests, pods and agents for one scenario.
type env struct {
	*Lab
	t      *testing.T
	mode   mode
	agents map[int]*Agent
}

type setup struct {
	files  map[string]string // manifest name → content, written to every node
	pods   []podSpec
	agents []int // nodes to run an agent on (default all)
	args   []string
	before func(*Lab) // runs before the agents start
}

func newEnv(t *testing.T, m mode, s setup) *env {
	t.Helper()
	Binary(t) // skip or fail before building anything
	l := New(t, Options{Mode: m.name})
	e := &env{Lab: l, t: t, mode: m, agents: map[int]*Agent{}}
	for name, content := range s.files {
		l.WriteManifest(name, []byte(content))
	}
	for _, p := range s.pods {
		l.AddPod(l.Node(p.node), p.name, netip.MustParseAddr(p.ip), p.ports...)
	}
	if s.before != nil {
		s.before(l)
	}
	nodes := s.agents
	if nodes == nil {
		for _, n := range l.Nodes {
			nodes = append(nodes, n.Index)
		}
	}
	for _, i := range nodes {
		e.agents[i] = e.StartAgentNoWait(l.Node(i), s.args...)
	}
	for _, i := range nodes {
		if err := e.agents[i].WaitReady(Scaled(20 * time.Second)); err != nil {
			t.Fatalf("agent on node%02d: %v\nlog tail:\n%s", i, err, e.agents[i].LogTail(30))
		}
	}
	return e
}

// seed returns a seed manifest's content.
func seed(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "seed", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// edit replaces old with new in s, failing the test when old is not there exactly once.
func edit(t *testing.T, s, old, new string) string {
	t.Helper()
	if n := strings.Count(s, old); n != 1 {
		t.Fatalf("edit: %q occurs %d times", old, n)
	}
	return strings.Replace(s, old, new, 1)
}

type endpoint struct {
	ip, node string
}

type slicePort struct {
	name     string
	protocol string
	port     uint16
}

// sliceYAML renders an EndpointSlice of service svc with ready endpoints.
func sliceYAML(name, svc string, ports []slicePort, eps ...endpoint) string {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: %s\n  namespace: default\n  labels:\n    kubernetes.io/service-name: %s\naddressType: IPv4\nports:\n", name, svc)
	for _, p := range ports {
		fmt.Fprintf(&b, "- name: %q\n  protocol: %s\n  port: %d\n", p.name, p.protocol, p.port)
	}
	if len(eps) == 0 {
		b.WriteString("endpoints: []\n")
	} else {
		b.WriteString("endpoints:\n")
	}
	for _, e := range eps {
		fmt.Fprintf(&b, "- addresses: [%q]\n  conditions: {ready: true}\n  nodeName: %s\n", e.ip, e.node)
	}
	return b.String()
}

var demoappEndpoints = []endpoint{{"10.244.1.59", "node01"}, {"10.244.2.48", "node02"}, {"10.244.3.44", "node03"}}

func without(eps []endpoint, ip string) []endpoint {
	var out []endpoint
	for _, e := range eps {
		if e.ip != ip {
			out = append(out, e)
		}
	}
	return out
}

// clusterIP reads the cluster IP the manifests source allocates to svc.
func (e *env) clusterIP(svc string) netip.Addr {
	e.t.Helper()
	ip, ok := e.Services(e.Node(1))[svc]
	if !ok {
		e.t.Fatalf("service %s has no cluster IP in `nodeagent get services`", svc)
	}
	return ip
}

func hostPort(a netip.Addr, port uint16) string { return netip.AddrPortFrom(a, port).String() }

// waitAnswer polls until a new connection from ns to addr is answered, and returns the answer.
func (e *env) waitAnswer(ns, network, addr string) Reply {
	e.t.Helper()
	var r Reply
	var last error
	if !Eventually(Scaled(10*time.Second), 20*time.Millisecond, func() bool {
		r, last = Ask(ns, network, addr)
		return last == nil
	}) {
		e.t.Fatalf("%s → %s %s: never answered: %v", ns, network, addr, last)
	}
	return r
}

// spread makes n new connections from ns to addr and returns the replies; any failure fails
// the test.
func (e *env) spread(ns, network, addr string, n int) []Reply {
	e.t.Helper()
	var out []Reply
	for i := 0; i < n; i++ {
		r, err := Ask(ns, network, addr)
		if err != nil {
			e.t.Fatalf("%s → %s %s, connection %d of %d: %v", ns, network, addr, i+1, n, err)
		}
		out = append(out, r)
	}
	return out
}

func serverNames(rs []Reply) map[string]int {
	m := map[string]int{}
	for _, r := range rs {
		m[r.ServerName]++
	}
	return m
}

// testClusterIP: the cluster IP reaches all endpoints from a pod and from a node; from a pod the
// backend sees the pod's own address.
func testClusterIP(t *testing.T, m mode) {
	e := newEnv(t, m, setup{
		files: map[string]string{"demoapp.yaml": seed(t, "demoapp.yaml"), "demoapp-endpoints.yaml": seed(t, "demoapp-endpoints.yaml")},
		pods:  append(demoappPods, clientPod),
	})
	addr := hostPort(e.clusterIP("demoapp-clusterip"), 80)
	client := e.Pod("client-pod")
	for _, from := range []struct{ who, ns string }{{"pod", client.NS}, {"node02", e.Node(2).NS}} {
		e.waitAnswer(from.ns, "tcp", addr)
		rs := e.spread(from.ns, "tcp", addr, 60)
		if got := serverNames(rs); len(got) != 3 {
			t.Errorf("from %s: 60 connections to %s reached %v, want all 3 demoapp pods", from.who, addr, got)
		}
		if from.who == "pod" {
			for _, r := range rs {
				if r.ClientIP != client.IP {
					t.Errorf("from a pod: backend saw %s, want the pod's own %s (no masquerade inside the cluster CIDR)", r.ClientIP, client.IP)
					break
				}
			}
		}
	}
	// HTTP, as the tutorial's curl does.
	body, code, err := HTTPGet(client.NS, "http://"+addr+"/")
	if err != nil || code != 200 || !strings.HasPrefix(body, "iKubernetes demoapp v1.0 !! ClientIP: 10.244.1.10, ServerName: demoapp-") {
		t.Errorf("curl %s from a pod: %d %q %v", addr, code, body, err)
	}
}

// testNodePort: node port 32725 answers the external client through every node; with
// externalTrafficPolicy Cluster the backend sees an address of the node the client went through.
func testNodePort(t *testing.T, m mode) {
	e := newEnv(t, m, setup{
		files: map[string]string{"demoapp.yaml": seed(t, "demoapp.yaml"), "demoapp-endpoints.yaml": seed(t, "demoapp-endpoints.yaml")},
		pods:  demoappPods,
	})
	for _, n := range e.Nodes {
		addr := hostPort(n.IP, 32725)
		e.waitAnswer(e.Client, "tcp", addr)
		rs := e.spread(e.Client, "tcp", addr, 45)
		if got := serverNames(rs); len(got) != 3 {
			t.Errorf("45 connections to %s reached %v, want all 3 demoapp pods", addr, got)
		}
		for _, r := range rs {
			if r.ClientIP != n.IP && r.ClientIP != n.PodCIDR.Addr().Next() {
				t.Errorf("via %s: %s saw %s, want %s's own address (masqueraded)", addr, r.ServerName, r.ClientIP, n.Name)
				break
			}
		}
	}
}

// testExternalIP: 10.0.0.200 on node01's ens33 and in the service's externalIPs reaches the
// service's endpoints through node01.
func testExternalIP(t *testing.T, m mode) {
	e := newEnv(t, m, setup{
		files: map[string]string{"externalip.yaml": seed(t, "externalip.yaml"), "demoapp-endpoints.yaml": seed(t, "demoapp-endpoints.yaml")},
		pods:  demoappPods,
	})
	// The tutorial adds the address by hand, after the service exists.
	if err := e.Node(1).AddExternalIP(ExternalIP); err != nil {
		t.Fatal(err)
	}
	addr := hostPort(ExternalIP, 80)
	e.waitAnswer(e.Client, "tcp", addr)
	rs := e.spread(e.Client, "tcp", addr, 45)
	if got := serverNames(rs); len(got) != 3 {
		t.Errorf("45 connections to %s reached %v, want all 3 demoapp pods", addr, got)
	}
	n1 := e.Node(1)
	for _, r := range rs {
		if r.ClientIP != n1.IP && r.ClientIP != n1.PodCIDR.Addr().Next() {
			t.Errorf("via the external IP: %s saw %s, want node01's address (externalTrafficPolicy Cluster masquerades)", r.ServerName, r.ClientIP)
			break
		}
	}
	// The cluster IP of the same service works too.
	e.waitAnswer(e.Node(3).NS, "tcp", hostPort(e.clusterIP("demoapp-clusterip"), 80))
}

// testExternalTrafficPolicyLocal: switching demoapp-nodeport to externalTrafficPolicy Local while
// the agents run: the backend sees the client's own address, each node sends only to its own
// endpoint, and a node without one does not forward.
func testExternalTrafficPolicyLocal(t *testing.T, m mode) {
	demoapp := seed(t, "demoapp.yaml")
	// node03 has no demoapp pod in this scenario.
	endpoints := sliceYAML("demoapp-nodeport-fghij", "demoapp-nodeport", []slicePort{{"http", "TCP", 80}}, demoappEndpoints[:2]...)
	e := newEnv(t, m, setup{
		files: map[string]string{"demoapp.yaml": demoapp, "demoapp-nodeport-endpoints.yaml": endpoints},
		pods:  demoappPods[:2],
	})
	// Cluster first: node03 forwards to the others.
	n3 := hostPort(e.Node(3).IP, 32725)
	if r := e.waitAnswer(e.Client, "tcp", n3); r.ClientIP == ClientAddr {
		t.Errorf("externalTrafficPolicy Cluster via node03: backend saw the client's address %s; want masquerade", r.ClientIP)
	}

	local := edit(t, demoapp, "  type: NodePort\n", "  type: NodePort\n  externalTrafficPolicy: Local\n")
	e.WriteManifest("demoapp.yaml", []byte(local))
	// Each node's agent applies the change on its own: wait for each to show it.
	for i, want := range []string{"demoapp-1", "demoapp-2"} {
		addr := hostPort(e.Node(i+1).IP, 32725)
		var last Reply
		if !Eventually(Scaled(5*time.Second), 20*time.Millisecond, func() bool {
			r, err := Ask(e.Client, "tcp", addr)
			last = r
			return err == nil && r.ClientIP == ClientAddr
		}) {
			t.Fatalf("after switching to externalTrafficPolicy Local, %s still answers %v", addr, last)
		}
		for _, r := range e.spread(e.Client, "tcp", addr, 15) {
			if r.ServerName != want || r.ClientIP != ClientAddr {
				t.Errorf("externalTrafficPolicy Local via %s: %v, want %s seeing %s", addr, r, want, ClientAddr)
				break
			}
		}
	}
	// node03 has no local endpoint: once its agent has the change, it must not forward.
	noAnswer := func() bool {
		c, err := DialFrom(e.Client, "tcp", "", n3, 300*time.Millisecond)
		if err != nil {
			return true
		}
		defer c.Close()
		_, err = Exchange(c, 300*time.Millisecond)
		return err != nil
	}
	if !Eventually(Scaled(5*time.Second), 20*time.Millisecond, noAnswer) {
		t.Fatalf("externalTrafficPolicy Local: node03 (no local endpoint) still forwards")
	}
	for i := 0; i < 3; i++ {
		start := time.Now()
		if !noAnswer() {
			t.Fatalf("externalTrafficPolicy Local: node03 (no local endpoint) forwarded again")
		}
		if took := time.Since(start); took > time.Second {
			t.Errorf("a refused or dropped connection took %v to fail", took)
		}
	}
}

// testSessionAffinity: myapp (ClientIP affinity) sends one client to one pod, through the node
// port and the fixed cluster IP; rewritten with sessionAffinity None, requests spread again.
func testSessionAffinity(t *testing.T, m mode) {
	myapp := seed(t, "myapp.yaml")
	e := newEnv(t, m, setup{
		files: map[string]string{"myapp.yaml": myapp},
		pods:  myappPods,
	})
	np := hostPort(e.Node(1).IP, 31180)
	vip := "10.97.97.97:80"
	e.waitAnswer(e.Client, "tcp", np)
	e.waitAnswer(e.Node(3).NS, "tcp", vip)
	for _, c := range []struct{ ns, addr string }{{e.Client, np}, {e.Node(3).NS, vip}} {
		if got := serverNames(e.spread(c.ns, "tcp", c.addr, 30)); len(got) != 1 {
			t.Errorf("sessionAffinity ClientIP: 30 connections %s → %s reached %v, want one pod", c.ns, c.addr, got)
		}
	}

	e.WriteManifest("myapp.yaml", []byte(edit(t, myapp, "sessionAffinity: ClientIP", "sessionAffinity: None")))
	for _, c := range []struct{ ns, addr string }{{e.Client, np}, {e.Node(3).NS, vip}} {
		var got map[string]int
		if !Eventually(Scaled(5*time.Second), 50*time.Millisecond, func() bool {
			got = serverNames(e.spread(c.ns, "tcp", c.addr, 30))
			return len(got) > 1
		}) {
			t.Errorf("sessionAffinity None: 30 connections %s → %s still reach only %v", c.ns, c.addr, got)
		}
	}
	if got := serverNames(e.spread(e.Client, "tcp", np, 60)); len(got) != 3 {
		t.Errorf("sessionAffinity None: 60 connections to %s reached %v, want all 3 pods", np, got)
	}
}

// testNoEndpoints: tomcat has no endpoints; connections to it are refused at once (a reject, not
// a drop that would make the client wait for a timeout).
func testNoEndpoints(t *testing.T, m mode) {
	e := newEnv(t, m, setup{
		files: map[string]string{"tomcat.yaml": seed(t, "tomcat.yaml")},
		pods:  []podSpec{clientPod},
	})
	vip := e.clusterIP("tomcat")
	for _, from := range []string{e.Pod("client-pod").NS, e.Node(2).NS} {
		for _, port := range []uint16{8080, 8009} {
			addr := hostPort(vip, port)
			var last error
			if !Eventually(Scaled(5*time.Second), 20*time.Millisecond, func() bool {
				c, err := DialFrom(from, "tcp", "", addr, time.Second)
				if c != nil {
					c.Close()
				}
				last = err
				return errors.Is(err, syscall.ECONNREFUSED)
			}) {
				t.Fatalf("%s → %s (no endpoints): want connection refused, got %v", from, addr, last)
			}
			var worst time.Duration
			for i := 0; i < 5; i++ {
				start := time.Now()
				c, err := DialFrom(from, "tcp", "", addr, time.Second)
				took := time.Since(start)
				if c != nil {
					c.Close()
				}
				if !errors.Is(err, syscall.ECONNREFUSED) {
					t.Fatalf("%s → %s: want connection refused, got %v", from, addr, err)
				}
				worst = max(worst, took)
			}
			t.Logf("%s → %s refused; slowest of 5 in %v", from, addr, worst)
			// A reset comes back in one round trip; a lost one would cost the client's SYN
			// retransmission (1 s). The bound leaves room for a loaded machine's scheduling.
			if bound := Scaled(500 * time.Millisecond); worst > bound {
				t.Errorf("%s → %s: refusal took %v, want < %v", from, addr, worst, bound)
			}
		}
	}
}

// testEndpointRemoved: an endpoint removed from its EndpointSlice gets no new connection within
// 2 s, and a UDP flow that went to it (same client port throughout) moves to another endpoint.
func testEndpointRemoved(t *testing.T, m mode) {
	udpSvc := "apiVersion: v1\nkind: Service\nmetadata:\n  name: demoapp-udp\n  namespace: default\nspec:\n  ports:\n  - name: dns\n    protocol: UDP\n    port: 80\n    targetPort: 80\n"
	udpPorts := []slicePort{{"dns", "UDP", 80}}
	e := newEnv(t, m, setup{
		files: map[string]string{
			"demoapp.yaml":           seed(t, "demoapp.yaml"),
			"demoapp-endpoints.yaml": seed(t, "demoapp-endpoints.yaml"),
			"udp.yaml":               udpSvc + "---\n" + sliceYAML("demoapp-udp-1", "demoapp-udp", udpPorts, demoappEndpoints...),
		},
		pods: append(demoappPods, clientPod),
	})
	client := e.Pod("client-pod")
	tcpAddr := hostPort(e.clusterIP("demoapp-clusterip"), 80)
	udpAddr := hostPort(e.clusterIP("demoapp-udp"), 80)
	e.waitAnswer(client.NS, "tcp", tcpAddr)
	e.waitAnswer(client.NS, "udp", udpAddr)

	flow, err := DialFrom(client.NS, "udp", ":40000", udpAddr, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer flow.Close()
	first, err := Exchange(flow, time.Second)
	if err != nil {
		t.Fatalf("udp flow: %v", err)
	}
	for i := 0; i < 3; i++ {
		if r, err := Exchange(flow, time.Second); err != nil || r.ServerName != first.ServerName {
			t.Fatalf("udp flow should stick to %s before the change: %v %v", first.ServerName, r, err)
		}
	}
	victim := first.ServerIP.String()
	t.Logf("removing %s (%s)", first.ServerName, victim)
	walks := "kubeproxy_conntrack_reconciler_sync_duration_seconds_count{ip_family=\"IPv4\"}"
	walksBefore := scrapeMetrics(t, e.Nodes[0].NS)[walks]

	// The seed file keeps the other services' slices; only demoapp-clusterip's loses the endpoint.
	endpoints := edit(t, seed(t, "demoapp-endpoints.yaml"),
		"endpoints:\n- addresses: [\"10.244.1.59\"]\n  conditions: {ready: true, serving: true, terminating: false}\n  nodeName: node01\n- addresses: [\"10.244.2.48\"]\n  conditions: {ready: true, serving: true, terminating: false}\n  nodeName: node02\n- addresses: [\"10.244.3.44\"]\n  conditions: {ready: true, serving: true, terminating: false}\n  nodeName: node03\n",
		"endpoints:\n"+strings.SplitN(sliceYAML("x", "x", nil, without(demoappEndpoints, victim)...), "endpoints:\n", 2)[1])
	start := time.Now()
	e.WriteManifest("demoapp-endpoints.yaml", []byte(endpoints))
	e.WriteManifest("udp.yaml", []byte(udpSvc+"---\n"+withTriggerTime(sliceYAML("demoapp-udp-1", "demoapp-udp", udpPorts, without(demoappEndpoints, victim)...), start)))

	// New TCP connections: within 2 s, 20 in a row miss the removed endpoint.
	var gone time.Duration
	if !Eventually(Scaled(2*time.Second), 10*time.Millisecond, func() bool {
		for _, r := range e.spread(client.NS, "tcp", tcpAddr, 20) {
			if r.ServerIP.String() == victim {
				return false
			}
		}
		gone = time.Since(start)
		return true
	}) {
		t.Fatalf("2 s after removing %s from its slice, new connections still reach it", victim)
	}
	t.Logf("new connections avoid the removed endpoint after %v", gone.Round(time.Millisecond))
	if got := serverNames(e.spread(client.NS, "tcp", tcpAddr, 40)); got[first.ServerName] > 0 || len(got) != 2 {
		t.Errorf("after removal: 40 connections reached %v, want the 2 remaining pods", got)
	}

	// The UDP flow keeps its client port; its conntrack entry to the removed endpoint must go.
	var r Reply
	if !Eventually(Scaled(2*time.Second), 20*time.Millisecond, func() bool {
		r, err = Exchange(flow, 200*time.Millisecond)
		return err == nil && r.ServerIP.String() != victim
	}) {
		t.Fatalf("udp flow from port 40000 still goes to the removed %s (%v %v): stale conntrack entry", victim, r, err)
	}
	t.Logf("udp flow moved to %s after %v", r.ServerName, time.Since(start).Round(time.Millisecond))

	// kube-proxy's metrics: the slice change, made after the agents started, is measured from its
	// trigger time on every node; the client's node walked its conntrack table for the lost UDP
	// endpoint and deleted the flow's entry. In ipvs mode the kernel usually gets there first:
	// with expire_nodest_conn=1 (Linux 5.9 and later) deleting a real server expires its IPVS
	// connections and their conntrack entries at once, so the walk that follows the sync finds
	// nothing left to delete (measured in the VM: the entry was gone before the walk).
	programmed := "kubeproxy_network_programming_duration_seconds_count{ip_family=\"IPv4\"}"
	deleted := "kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family=\"IPv4\"}"
	for _, n := range e.Nodes {
		var got map[string]float64
		if !Eventually(Scaled(5*time.Second), 50*time.Millisecond, func() bool {
			got = scrapeMetrics(t, n.NS)
			return got[programmed] >= 1 && (n.Index != 1 || got[walks] > walksBefore)
		}) && got[programmed] < 1 {
			t.Errorf("%s: %s = %v, want the slice change measured", n.Name, programmed, got[programmed])
		}
		if n.Index != 1 {
			continue
		}
		if got[walks] <= walksBefore {
			t.Errorf("%s: %s = %v, was %v before the removal: want a walk for the lost UDP endpoint",
				n.Name, walks, got[walks], walksBefore)
		}
		if m.name != "ipvs" && got[deleted] < 1 {
			t.Errorf("%s: %s = %v, want the stale UDP entry counted", n.Name, deleted, got[deleted])
		}
	}
}

// testPorts: a two-port service, a fixed cluster IP with port ≠ target port, and a target port
// given by name.
func testPorts(t *testing.T, m mode) {
	tomcatEndpoints := sliceYAML("tomcat-1", "tomcat", []slicePort{{"http", "TCP", 8080}, {"ajp", "TCP", 8009}},
		endpoint{"10.244.1.80", "node01"}, endpoint{"10.244.3.80", "node03"})
	// The EndpointSlice controller resolves a named targetPort from the pods' container ports and
	// publishes the number under the service port's name.
	named := "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\nspec:\n  clusterIP: 10.96.80.80\n  ports:\n  - name: http\n    port: 80\n    targetPort: http-web\n---\n" +
		sliceYAML("web-1", "web", []slicePort{{"http", "TCP", 8081}}, endpoint{"10.244.2.30", "node02"})
	e := newEnv(t, m, setup{
		files: map[string]string{
			"tomcat.yaml":           seed(t, "tomcat.yaml"),
			"tomcat-endpoints.yaml": tomcatEndpoints,
			"redis.yaml":            seed(t, "redis.yaml"),
			"web.yaml":              named,
		},
		pods: []podSpec{
			{1, "tomcat-1", "10.244.1.80", []uint16{8080, 8009}},
			{3, "tomcat-2", "10.244.3.80", []uint16{8080, 8009}},
			redisPod,
			{2, "web-1", "10.244.2.30", []uint16{8081}},
			clientPod,
		},
	})
	tomcat := e.clusterIP("tomcat")
	for _, from := range []string{e.Pod("client-pod").NS, e.Node(3).NS} {
		for _, port := range []uint16{8080, 8009} {
			addr := hostPort(tomcat, port)
			e.waitAnswer(from, "tcp", addr)
			if got := serverNames(e.spread(from, "tcp", addr, 30)); len(got) != 2 {
				t.Errorf("%s → tomcat %s: reached %v, want tomcat-1 and tomcat-2", from, addr, got)
			}
		}
		if r := e.waitAnswer(from, "tcp", "10.99.99.99:6380"); r.ServerName != "redis-1" {
			t.Errorf("%s → redis 10.99.99.99:6380: answered by %v", from, r)
		}
		if r := e.waitAnswer(from, "tcp", "10.96.80.80:80"); r.ServerName != "web-1" {
			t.Errorf("%s → web (named target port): answered by %v", from, r)
		}
	}
	if ip := e.clusterIP("redis"); ip != netip.MustParseAddr("10.99.99.99") {
		t.Errorf("redis cluster IP listed as %s, want the fixed 10.99.99.99", ip)
	}
}

// testRestart: stopping the agent (SIGTERM) and starting it again keeps established connections
// working, through the cluster IP and through the node port.
func testRestart(t *testing.T, m mode) {
	e := newEnv(t, m, setup{
		files: map[string]string{"demoapp.yaml": seed(t, "demoapp.yaml"), "demoapp-endpoints.yaml": seed(t, "demoapp-endpoints.yaml")},
		pods:  append(demoappPods, clientPod),
	})
	vip := hostPort(e.clusterIP("demoapp-clusterip"), 80)
	np := hostPort(e.Node(1).IP, 32725)
	client := e.Pod("client-pod")
	e.waitAnswer(client.NS, "tcp", vip)
	e.waitAnswer(e.Client, "tcp", np)
	// One established connection per path; each check sends on it again and wants the same pod.
	var checks []func(when string)
	for _, p := range []struct{ what, ns, addr string }{{"pod → cluster IP", client.NS, vip}, {"client → node port", e.Client, np}} {
		nc, err := Dial(p.ns, "tcp", p.addr)
		if err != nil {
			t.Fatalf("%s: %v", p.what, err)
		}
		defer nc.Close()
		first, err := Exchange(nc, time.Second)
		if err != nil {
			t.Fatalf("%s: %v", p.what, err)
		}
		checks = append(checks, func(when string) {
			t.Helper()
			r, err := Exchange(nc, 2*time.Second)
			if err != nil || r != first {
				t.Errorf("%s, %s: got %v (%v); want %v on the same connection", p.what, when, r, err, first)
			}
		})
	}
	runChecks := func(when string) {
		t.Helper()
		for _, check := range checks {
			check(when)
		}
	}
	a := e.agents[1]
	if err := a.Stop(); err != nil {
		t.Errorf("agent on node01 did not exit cleanly on SIGTERM: %v", err)
	}
	runChecks("agent stopped")
	e.agents[1] = e.StartAgent(e.Node(1))
	runChecks("agent restarted")
	// And new connections still work.
	e.waitAnswer(client.NS, "tcp", vip)
	e.waitAnswer(e.Client, "tcp", np)
}

// testCleanup: `nodeagent cleanup` removes everything of ours and leaves a foreign rule alone.
func testCleanup(t *testing.T, m mode) {
	e := newEnv(t, m, setup{
		files: map[string]string{
			"demoapp.yaml":           seed(t, "demoapp.yaml"),
			"demoapp-endpoints.yaml": seed(t, "demoapp-endpoints.yaml"),
			"myapp.yaml":             seed(t, "myapp.yaml"),
			"tomcat.yaml":            seed(t, "tomcat.yaml"),
		},
		pods:   demoappPods,
		agents: []int{1},
		// The foreign rule exists before the agent starts: neither its syncs nor cleanup may touch it.
		before: func(l *Lab) {
			if err := m.addForeign(l.Node(1).NS); err != nil {
				t.Fatal(err)
			}
		},
	})
	n, a := e.Node(1), e.agents[1]
	e.waitAnswer(e.Client, "tcp", hostPort(n.IP, 32725))
	before, err := m.dump(n.NS)
	if err != nil {
		t.Fatal(err)
	}
	if !m.ours.MatchString(before) {
		t.Fatalf("the running agent programmed nothing that %v matches:\n%s", m.ours, before)
	}
	if err := a.Stop(); err != nil {
		t.Errorf("agent exit: %v", err)
	}
	out, err := Exec(n.NS, Binary(t), "cleanup", "--proxy-mode", m.name)
	if err != nil {
		t.Fatalf("nodeagent cleanup: %v", err)
	}
	after, err := m.dump(n.NS)
	if err != nil {
		t.Fatal(err)
	}
	if loc := m.ours.FindStringIndex(after); loc != nil {
		t.Errorf("after cleanup (%s) our objects remain, e.g. %q:\n%s", strings.TrimSpace(out), after[loc[0]:min(len(after), loc[1]+60)], after)
	}
	for _, re := range m.foreign {
		if !re.MatchString(after) {
			t.Errorf("cleanup removed a rule it does not own (%v):\n%s", re, after)
		}
	}
	if r, err := Ask(e.Client, "tcp", hostPort(n.IP, 32725)); err == nil {
		t.Errorf("the node port still answers after cleanup: %v", r)
	}
	// A second cleanup finds nothing and succeeds.
	if _, err := Exec(n.NS, Binary(t), "cleanup", "--proxy-mode", m.name); err != nil {
		t.Errorf("second cleanup: %v", err)
	}
}

// testBrokenManifest: a broken YAML file dropped into the directory is logged and changes
// nothing.
func testBrokenManifest(t *testing.T, m mode) {
	e := newEnv(t, m, setup{
		files: map[string]string{"demoapp.yaml": seed(t, "demoapp.yaml"), "demoapp-endpoints.yaml": seed(t, "demoapp-endpoints.yaml")},
		pods:  demoappPods,
	})
	np := hostPort(e.Node(1).IP, 32725)
	e.waitAnswer(e.Client, "tcp", np)
	n := e.Node(1)
	before, err := m.dump(n.NS)
	if err != nil {
		t.Fatal(err)
	}
	broken := "apiVersion: v1\nkind: Service\nmetadata:\n  name: broken\n  namespace: default\nspec:\n  ports:\n  - port: 80\n    targetPort: [80\n  type: NodePort\n\t- oops: {\n"
	e.WriteManifest("broken.yaml", []byte(broken))
	a := e.agents[1]
	if !Eventually(Scaled(5*time.Second), 20*time.Millisecond, func() bool { return strings.Contains(a.Log(), "broken.yaml") }) {
		t.Fatalf("the agent did not log the broken file; log tail:\n%s", a.LogTail(20))
	}
	for _, line := range strings.Split(a.Log(), "\n") {
		if strings.Contains(line, "broken.yaml") {
			t.Logf("agent logged: %s", line)
			break
		}
	}
	// Rules stay identical for a while after the file was read, and traffic flows.
	deadline := time.Now().Add(Scaled(time.Second))
	for time.Now().Before(deadline) {
		after, err := m.dump(n.NS)
		if err != nil {
			t.Fatal(err)
		}
		if after != before {
			t.Fatalf("rules changed after a broken file was dropped in:\n%s", lineDiff(before, after))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := serverNames(e.spread(e.Client, "tcp", np, 45)); len(got) != 3 {
		t.Errorf("after the broken file: 45 connections reached %v, want all 3 pods", got)
	}
	if exited, err := a.Exited(); exited {
		t.Fatalf("agent exited after a broken file: %v", err)
	}
}

// lineDiff lists lines only in a (-) and only in b (+).
func lineDiff(a, b string) string {
	count := map[string]int{}
	for _, l := range strings.Split(a, "\n") {
		count[l]++
	}
	for _, l := range strings.Split(b, "\n") {
		count[l]--
	}
	var out strings.Builder
	for l, c := range count {
		switch {
		case c > 0:
			fmt.Fprintf(&out, "- %s\n", l)
		case c < 0:
			fmt.Fprintf(&out, "+ %s\n", l)
		}
	}
	return out.String()
}
