package lab

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Scenarios of kube-proxy v1.34 parity (issue 12): node-port addresses, pod-traffic detection,
// the masquerade bit, unallocated service addresses, other modes' leftovers, and endpoints
// without a serving condition.

// nodeObjects are Node manifests for the lab's nodes: InternalIP addr(i) (none when invalid) and
// spec.podCIDRs their pod CIDR.
func nodeObjects(l *Lab, addr func(i int) netip.Addr) string {
	var b strings.Builder
	for _, n := range l.Nodes {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Node\nmetadata:\n  name: %s\nspec:\n  podCIDRs: [%q]\n", n.Name, n.PodCIDR)
		if a := addr(n.Index); a.IsValid() {
			fmt.Fprintf(&b, "status:\n  addresses:\n  - {type: InternalIP, address: %q}\n  - {type: Hostname, address: %s}\n", a, n.Name)
		}
	}
	return b.String()
}

// refused polls until a new TCP connection from ns to addr gets no answer (refused, reset or
// timed out), then checks that it stays so for a few more attempts.
func (e *env) refused(what, ns, addr string) {
	e.t.Helper()
	fails := func() bool {
		c, err := DialFrom(ns, "tcp", "", addr, 500*time.Millisecond)
		if err != nil {
			return true
		}
		defer c.Close()
		_, err = Exchange(c, 500*time.Millisecond)
		return err != nil
	}
	if !Eventually(Scaled(10*time.Second), 50*time.Millisecond, fails) {
		e.t.Fatalf("%s: %s → %s still answers", what, ns, addr)
	}
	for i := 0; i < 3; i++ {
		if !fails() {
			e.t.Fatalf("%s: %s → %s answered again", what, ns, addr)
		}
	}
}

// lineServer answers demoapp lines on addr in namespace ns, as a pod's backend does, until the
// test ends: a host outside the cluster that the rules under test must let through, or not.
func lineServer(t *testing.T, ns, addr, name string) {
	t.Helper()
	ln, err := Listen(ns, "tcp", addr)
	if err != nil {
		t.Fatalf("listen %s in %s: %v", addr, ns, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				r := bufio.NewReader(c)
				for {
					if _, err := r.ReadString('\n'); err != nil {
						return
					}
					client := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
					server := c.LocalAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
					fmt.Fprintf(c, "iKubernetes demoapp v1.0 !! ClientIP: %s, ServerName: %s, ServerIP: %s!\n", client, name, server)
				}
			}()
		}
	}()
}

// testNodePortPrimary: with --nodeport-addresses primary node ports answer on the Node's
// InternalIP only, not on the node's other addresses, and follow the Node object when its
// address changes.
func testNodePortPrimary(t *testing.T, m mode) {
	var l *Lab
	e := newEnv(t, m, setup{
		files: map[string]string{"demoapp.yaml": seed(t, "demoapp.yaml"), "demoapp-endpoints.yaml": seed(t, "demoapp-endpoints.yaml")},
		pods:  demoappPods,
		args:  []string{"--nodeport-addresses", "primary"},
		before: func(lab *Lab) {
			l = lab
			lab.WriteManifest("nodes.yaml", []byte(nodeObjects(lab, func(i int) netip.Addr { return lab.Node(i).IP })))
			// node01 holds a second address, which is not its Node's.
			if err := lab.Node(1).AddExternalIP(ExternalIP); err != nil {
				t.Fatal(err)
			}
		},
	})
	n1 := e.Node(1)
	primary, other := hostPort(n1.IP, 32725), hostPort(ExternalIP, 32725)
	e.waitAnswer(e.Client, "tcp", primary)
	e.refused("node port on an address that is not the Node's primary", e.Client, other)

	// The Node's InternalIP moves to the other address: node ports follow it.
	e.WriteManifest("nodes.yaml", []byte(nodeObjects(l, func(i int) netip.Addr {
		if i == 1 {
			return ExternalIP
		}
		return l.Node(i).IP
	})))
	e.waitAnswer(e.Client, "tcp", other)
	e.refused("node port on the Node's former primary address", e.Client, primary)
}

// testLocalhostNodePorts: in iptables mode node ports answer on 127.0.0.1 too, as kube-proxy's
// default --iptables-localhost-nodeports; the other modes never answer there.
func testLocalhostNodePorts(t *testing.T, m mode) {
	e := newEnv(t, m, setup{
		files:  map[string]string{"demoapp.yaml": seed(t, "demoapp.yaml"), "demoapp-endpoints.yaml": seed(t, "demoapp-endpoints.yaml")},
		pods:   demoappPods,
		agents: []int{1},
	})
	n1 := e.Node(1)
	e.waitAnswer(e.Client, "tcp", hostPort(n1.IP, 32725))
	localhost := "127.0.0.1:32725"
	if m.name != "iptables" {
		e.refused("localhost node port outside iptables mode", n1.NS, localhost)
		return
	}
	r := e.waitAnswer(n1.NS, "tcp", localhost)
	t.Logf("127.0.0.1:32725 on node01 answered by %v", r)
	if got := serverNames(e.spread(n1.NS, "tcp", localhost, 30)); len(got) != 3 {
		t.Errorf("30 connections to %s reached %v, want all 3 demoapp pods", localhost, got)
	}
	// Without it, as with kube-proxy's --iptables-localhost-nodeports=false.
	if err := e.agents[1].Stop(); err != nil {
		t.Errorf("agent exit: %v", err)
	}
	e.agents[1] = e.StartAgent(n1, "--iptables-localhost-nodeports=false")
	e.refused("localhost node port with --iptables-localhost-nodeports=false", n1.NS, localhost)
	e.waitAnswer(e.Client, "tcp", hostPort(n1.IP, 32725))
}

// localWeb is a cluster-IP service whose only endpoint is demoapp-1 on node01.
const localWeb = `apiVersion: v1
kind: Service
metadata:
  name: local-web
  namespace: default
spec:
  clusterIP: 10.96.0.81
  ports:
  - port: 80
    targetPort: 80
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: local-web-1
  namespace: default
  labels:
    kubernetes.io/service-name: local-web
addressType: IPv4
ports:
- name: ""
  protocol: TCP
  port: 80
endpoints:
- addresses: ["10.244.1.59"]
  conditions: {ready: true}
  nodeName: node01
`

// testDetectLocalMode: with --detect-local-mode BridgeInterface, InterfaceNamePrefix or NodeCIDR,
// traffic to a cluster IP is masqueraded unless it comes from this node's pods, whatever its
// source address: a host outside the cluster that uses an address of the cluster CIDR, routed to
// the service range through node01, is masqueraded (--cluster-cidr alone would take it for a
// pod), and a pod is not.
func testDetectLocalMode(t *testing.T, m mode) {
	outsider := netip.MustParseAddr("10.244.200.1") // in --cluster-cidr 10.244.0.0/16, not a pod
	e := newEnv(t, m, setup{
		files:  map[string]string{"local-web.yaml": localWeb},
		pods:   []podSpec{demoappPods[0], clientPod},
		agents: []int{},
		before: func(l *Lab) {
			l.WriteManifest("nodes.yaml", []byte(nodeObjects(l, func(i int) netip.Addr { return l.Node(i).IP })))
			if _, err := Exec(l.Client, "ip", "addr", "add", outsider.String()+"/32", "dev", "eth0"); err != nil {
				t.Fatal(err)
			}
			if _, err := Exec(l.Client, "ip", "route", "add", "10.96.0.0/12", "via", l.Node(1).IP.String()); err != nil {
				t.Fatal(err)
			}
			if _, err := Exec(l.Node(1).NS, "ip", "route", "add", outsider.String()+"/32", "via", ClientAddr.String()); err != nil {
				t.Fatal(err)
			}
		},
	})
	vip := "10.96.0.81:80"
	client := e.Pod("client-pod")
	for _, args := range [][]string{
		{"--detect-local-mode", "BridgeInterface", "--pod-bridge-interface", PodBridge},
		{"--detect-local-mode", "InterfaceNamePrefix", "--pod-interface-name-prefix", "cni"},
		{"--detect-local-mode", "NodeCIDR"},
	} {
		a := e.StartAgent(e.Node(1), args...)
		var r Reply
		var err error
		if !Eventually(Scaled(10*time.Second), 50*time.Millisecond, func() bool {
			var c net.Conn
			if c, err = DialFrom(e.Client, "tcp", outsider.String()+":0", vip, time.Second); err != nil {
				return false
			}
			defer c.Close()
			r, err = Exchange(c, time.Second)
			return err == nil
		}) {
			t.Fatalf("%v: %s → %s never answered: %v", args, outsider, vip, err)
		}
		if r.ClientIP == outsider {
			t.Errorf("%v: traffic from %s (not a pod) to %s reached the backend unmasqueraded", args, outsider, vip)
		}
		if r := e.waitAnswer(client.NS, "tcp", vip); r.ClientIP != client.IP {
			t.Errorf("%v: a pod's traffic to %s was masqueraded: backend saw %s, want %s", args, vip, r.ClientIP, client.IP)
		}
		if err := a.Stop(); err != nil {
			t.Errorf("%v: agent exit: %v", args, err)
		}
	}
}

// testMasqueradeBit: with masquerade bit 12 (--iptables-masquerade-bit, nftables.masqueradeBit)
// the agent masquerades what it marks with 0x1000 and leaves packets another component marked
// with kube-proxy's default 0x4000 alone.
func testMasqueradeBit(t *testing.T, m mode) {
	config := filepath.Join(t.TempDir(), "kube-proxy.yaml")
	if err := os.WriteFile(config, []byte("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"+
		"iptables:\n  masqueradeBit: 12\nnftables:\n  masqueradeBit: 12\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	pod := demoappPods[0]
	e := newEnv(t, m, setup{
		files:  map[string]string{"demoapp.yaml": seed(t, "demoapp.yaml"), "demoapp-endpoints.yaml": sliceYAML("demoapp-nodeport-1", "demoapp-nodeport", []slicePort{{"http", "TCP", 80}}, demoappEndpoints[0])},
		pods:   []podSpec{pod},
		agents: []int{1},
		args:   []string{"--config", config, "--iptables-masquerade-bit", "12"},
		before: func(l *Lab) {
			// The client reaches node01's pods directly; another component marks that traffic
			// with 0x4000.
			if _, err := Exec(l.Client, "ip", "route", "add", l.Node(1).PodCIDR.String(), "via", l.Node(1).IP.String()); err != nil {
				t.Fatal(err)
			}
			if _, err := Exec(l.Node(1).NS, "nft", "add table inet labmark; add chain inet labmark pre { type filter hook prerouting priority -150; }; "+
				"add rule inet labmark pre ip saddr "+ClientAddr.String()+" ip daddr "+pod.ip+" meta mark set meta mark or 0x4000"); err != nil {
				t.Fatal(err)
			}
		},
	})
	n1 := e.Node(1)
	// The node port (externalTrafficPolicy Cluster) is masqueraded through bit 12.
	if r := e.waitAnswer(e.Client, "tcp", hostPort(n1.IP, 32725)); r.ClientIP == ClientAddr {
		t.Errorf("node port with masquerade bit 12: backend saw the client's %s, want masquerade", r.ClientIP)
	}
	// Traffic marked 0x4000 by someone else is not ours to masquerade.
	if r := e.waitAnswer(e.Client, "tcp", pod.ip+":80"); r.ClientIP != ClientAddr {
		t.Errorf("direct traffic marked 0x4000 by another component was masqueraded: backend saw %s, want %s", r.ClientIP, ClientAddr)
	}
}

// testUnallocatedServiceIP: in nftables mode, as kube-proxy's, new connections to an address of
// the service CIDR that no service holds are dropped (here the address leads to a host on the
// LAN); kube-proxy's iptables and ipvs modes have no such rule, so neither do ours.
func testUnallocatedServiceIP(t *testing.T, m mode) {
	unallocated := netip.MustParseAddr("10.96.200.200") // in --service-cluster-ip-range 10.96.0.0/12
	target := hostPort(unallocated, 8080)
	e := newEnv(t, m, setup{
		files:  map[string]string{"demoapp.yaml": seed(t, "demoapp.yaml"), "demoapp-endpoints.yaml": seed(t, "demoapp-endpoints.yaml")},
		pods:   []podSpec{demoappPods[0], clientPod},
		agents: []int{1},
		before: func(l *Lab) {
			n1 := l.Node(1)
			for _, c := range [][]string{
				{l.Client, "ip", "addr", "add", unallocated.String() + "/32", "dev", "eth0"},
				{l.Client, "ip", "route", "add", n1.PodCIDR.String(), "via", n1.IP.String()},
				{n1.NS, "ip", "route", "add", unallocated.String() + "/32", "via", ClientAddr.String()},
			} {
				if _, err := Exec(c[0], c[1], c[2:]...); err != nil {
					t.Fatal(err)
				}
			}
			lineServer(t, l.Client, target, "lan-host")
			// Without the agent, the address answers: what follows is the agent's doing.
			if _, err := Ask(n1.NS, "tcp", target); err != nil {
				t.Fatalf("before the agent: %s unreachable: %v", target, err)
			}
		},
	})
	e.waitAnswer(e.Client, "tcp", hostPort(e.Node(1).IP, 32725))
	client := e.Pod("client-pod")
	for _, from := range []struct{ who, ns string }{{"pod", client.NS}, {"node01", e.Node(1).NS}} {
		if m.name == "nftables" {
			e.refused("unallocated service address from a "+from.who, from.ns, target)
			continue
		}
		if r := e.waitAnswer(from.ns, "tcp", target); r.ServerName != "lan-host" {
			t.Errorf("%s → %s answered by %v", from.who, target, r)
		}
	}
}

// testModeSwitch: an agent started in this mode removes what an agent of another mode left
// behind (kube-proxy's platformCleanup), and the service keeps working.
func testModeSwitch(t *testing.T, m mode) {
	other := iptablesMode
	if m.name == iptablesMode.name {
		other = nftablesMode
	}
	e := newEnv(t, m, setup{
		files:  map[string]string{"demoapp.yaml": seed(t, "demoapp.yaml"), "demoapp-endpoints.yaml": seed(t, "demoapp-endpoints.yaml")},
		pods:   demoappPods,
		agents: []int{},
	})
	n1 := e.Node(1)
	np := hostPort(n1.IP, 32725)
	a := e.Lab.StartAgent(n1, "--proxy-mode", other.name)
	e.waitAnswer(e.Client, "tcp", np)
	if err := a.Stop(); err != nil {
		t.Errorf("%s agent exit: %v", other.name, err)
	}
	before, err := other.dump(n1.NS)
	if err != nil {
		t.Fatal(err)
	}
	if !other.ours.MatchString(before) {
		t.Fatalf("the %s agent left nothing that %v matches:\n%s", other.name, other.ours, before)
	}

	e.StartAgent(n1)
	after, err := other.dump(n1.NS)
	if err != nil {
		t.Fatal(err)
	}
	if loc := other.ours.FindStringIndex(after); loc != nil {
		t.Errorf("after starting in %s mode, %s mode's objects remain, e.g. %q", m.name, other.name, after[loc[0]:min(len(after), loc[1]+60)])
	}
	if got := serverNames(e.spread(e.Client, "tcp", np, 30)); len(got) != 3 {
		t.Errorf("after the switch: 30 connections to %s reached %v, want all 3 pods", np, got)
	}
}

// testTerminatingWithoutServing: an endpoint that publishes ready=false and terminating=true but
// no serving condition is serving, as kube-proxy reads it, and takes the traffic while no endpoint
// is ready (connections drain during a rollout).
func testTerminatingWithoutServing(t *testing.T, m mode) {
	svc := `apiVersion: v1
kind: Service
metadata:
  name: draining
  namespace: default
spec:
  clusterIP: 10.96.0.82
  ports:
  - port: 80
    targetPort: 80
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: draining-1
  namespace: default
  labels:
    kubernetes.io/service-name: draining
addressType: IPv4
ports:
- name: ""
  protocol: TCP
  port: 80
endpoints:
- addresses: ["10.244.2.48"]
  conditions: {ready: false, terminating: true}
  nodeName: node02
`
	e := newEnv(t, m, setup{
		files:  map[string]string{"draining.yaml": svc},
		pods:   []podSpec{demoappPods[1]},
		agents: []int{1},
	})
	var r Reply
	var err error
	if !Eventually(Scaled(10*time.Second), 50*time.Millisecond, func() bool {
		r, err = Ask(e.Node(1).NS, "tcp", "10.96.0.82:80")
		return err == nil
	}) {
		if errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("a terminating endpoint without a serving condition was taken as not serving: %v", err)
		}
		t.Fatalf("10.96.0.82:80 never answered: %v", err)
	}
	if r.ServerName != "demoapp-2" {
		t.Errorf("answered by %v", r)
	}
}
