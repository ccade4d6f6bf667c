package lab

import (
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	// Scenarios mostly wait on the network and on agents; three labs at a time keep two cores
	// busy without starving the agents. An explicit -test.parallel wins.
	flag.Parse()
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "test.parallel" })
	if !set {
		_ = flag.Set("test.parallel", "3")
	}
	os.Exit(Main(m))
}

// TestLabConnectivity checks the lab network itself, without any agent: pods reach pods on
// other nodes over both families, the client reaches every node on the LAN, client2 reaches the
// LAN through the router, and nothing leaks between labs built side by side.
func TestLabConnectivity(t *testing.T) {
	t.Parallel()
	l := New(t, Options{})
	a := l.AddPod(l.Node(1), "demoapp-1", netip.MustParseAddr("10.244.1.59"), 80, 8080)
	b := l.AddPod(l.Node(2), "demoapp-2", netip.MustParseAddr("10.244.2.48"))
	c := l.AddPod(l.Node(3), "demoapp-3", netip.MustParseAddr("10.244.3.44"))

	// Pod to pod across nodes, TCP and UDP, IPv4 and IPv6: the backend sees the pod's own address.
	for _, from := range []*Pod{a, b, c} {
		for _, to := range []*Pod{a, b, c} {
			for _, network := range []string{"tcp", "udp"} {
				for _, dst := range []netip.Addr{to.IP, to.IP6} {
					addr := netip.AddrPortFrom(dst, 80).String()
					r, err := Ask(from.NS, network, addr)
					if err != nil {
						t.Fatalf("%s → %s %s: %v", from.Name, network, addr, err)
					}
					want := from.IP
					if dst.Is6() {
						want = from.IP6
					}
					if r.ServerName != to.Name || r.ClientIP != want || r.ServerIP != dst {
						t.Errorf("%s → %s %s: got %v, want %s seeing %s", from.Name, network, addr, r, to.Name, want)
					}
				}
			}
		}
	}

	// A second port and HTTP.
	body, code, err := HTTPGet(l.Node(2).NS, "http://10.244.1.59:8080/")
	if err != nil || code != 200 {
		t.Fatalf("node02 → http://10.244.1.59:8080/: %d %v", code, err)
	}
	if r, err := ParseReply(body); err != nil || r.ClientIP != l.Node(2).IP || r.ServerName != "demoapp-1" {
		// node02 reaches node01's pods over the LAN, from its ens33 address.
		t.Errorf("node02 → demoapp-1 over HTTP: %q (%v)", body, err)
	}

	// The client reaches each node on the LAN: a listener in the node answers.
	for _, n := range l.Nodes {
		for _, ip := range []netip.Addr{n.IP, n.IP6} {
			ln, err := Listen(n.NS, "tcp", netip.AddrPortFrom(ip, 9000).String())
			if err != nil {
				t.Fatal(err)
			}
			accepted := make(chan netip.Addr, 1)
			go func() {
				c, err := ln.Accept()
				if err == nil {
					accepted <- netip.MustParseAddrPort(c.RemoteAddr().String()).Addr()
					c.Close()
				}
			}()
			conn, err := Dial(l.Client, "tcp", netip.AddrPortFrom(ip, 9000).String())
			if err != nil {
				t.Fatalf("client → %s %s: %v", n.Name, ip, err)
			}
			conn.Close()
			select {
			case src := <-accepted:
				if want := map[bool]netip.Addr{false: ClientAddr, true: ClientAddr6}[ip.Is6()]; src != want {
					t.Errorf("client → %s: node saw %s, want %s", ip, src, want)
				}
			case <-time.After(Scaled(2 * time.Second)):
				t.Errorf("client → %s: not accepted", ip)
			}
			ln.Close()
		}
	}

	// The client has no route to pods: services are its only way in.
	if _, err := DialFrom(l.Client, "tcp", "", "10.244.1.59:80", 200*time.Millisecond); err == nil {
		t.Error("client reached a pod address directly; it should have no route to pods")
	}

	// client2 reaches a node through the router (the node's default route leads back).
	r, err := Ask(l.Client2, "tcp", "10.244.1.59:80")
	if err == nil {
		t.Errorf("client2 reached a pod directly (%v); the router has no pod routes", r)
	}
	ln, err := Listen(l.Node(3).NS, "tcp", "10.0.0.153:9001")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			fmt.Fprintf(c, "hi\n")
			c.Close()
		}
	}()
	conn, err := Dial(l.Client2, "tcp", "10.0.0.153:9001")
	if err != nil {
		t.Fatalf("client2 → node03 via router: %v", err)
	}
	conn.Close()
}

// TestLabGuard checks the guards that keep lab code off the host's network namespace.
func TestLabGuard(t *testing.T) {
	RequireRoot(t)
	if err := checkNotHost(""); err == nil {
		t.Error("empty namespace name accepted")
	}
	if err := checkNotHost("../../proc/1/ns/net"); err == nil {
		t.Error("path accepted as a namespace name")
	}
	// The handles of the host's own namespace are refused.
	for _, p := range []string{"/proc/self/ns/net", "/proc/1/ns/net", fmt.Sprintf("/proc/%d/ns/net", os.Getpid())} {
		if err := checkNotHostPath(p); err == nil {
			t.Errorf("%s accepted as a lab namespace", p)
		}
	}
	// A lab namespace is accepted.
	l := New(t, Options{Nodes: 1})
	if err := checkNotHost(l.Node(1).NS); err != nil {
		t.Errorf("lab namespace refused: %v", err)
	}
}

func TestParseServiceTable(t *testing.T) {
	out := `NAME                TYPE           CLUSTER-IP      EXTERNAL-IP   PORT(S)        AGE
demoapp-clusterip   ClusterIP      10.97.12.34     <none>        80/TCP         1s
demoapp-headless    ClusterIP      None            <none>        80/TCP         1s
dual                ClusterIP      10.96.0.9,fd00:96::9   <none>   80/TCP     1s
`
	got, err := parseServiceTable(out)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]netip.Addr{
		"demoapp-clusterip": netip.MustParseAddr("10.97.12.34"),
		"dual":              netip.MustParseAddr("10.96.0.9"),
	}
	if len(got) != len(want) || got["demoapp-clusterip"] != want["demoapp-clusterip"] || got["dual"] != want["dual"] {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestParseReply(t *testing.T) {
	r, err := ParseReply("iKubernetes demoapp v1.0 !! ClientIP: 10.0.0.1, ServerName: demoapp-1, ServerIP: 10.244.1.59!\n")
	if err != nil {
		t.Fatal(err)
	}
	if r.ClientIP != ClientAddr || r.ServerName != "demoapp-1" || r.ServerIP != netip.MustParseAddr("10.244.1.59") {
		t.Errorf("got %+v", r)
	}
	if _, err := ParseReply("HTTP/1.1 404 Not Found"); err == nil {
		t.Error("garbage parsed")
	}
}

// TestLabNAT checks that the lab gives a proxy what a Kubernetes node gives kube-proxy, with
// hand-written iptables rules in node01: DNAT to a pod on the same bridge is undone on the reply
// (bridged traffic passes the node's netfilter hooks), and a REJECT refuses at once.
func TestLabNAT(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("iptables"); err != nil {
		t.Skip("needs iptables")
	}
	l := New(t, Options{Nodes: 2})
	n := l.Node(1)
	l.AddPod(n, "backend", netip.MustParseAddr("10.244.1.59"))
	l.AddPod(l.Node(2), "remote", netip.MustParseAddr("10.244.2.48"))
	client := l.AddPod(n, "client", netip.MustParseAddr("10.244.1.10"))
	for _, rule := range [][]string{
		{"-t", "nat", "-A", "PREROUTING", "-d", "10.96.0.10", "-p", "tcp", "--dport", "80", "-j", "DNAT", "--to-destination", "10.244.1.59:80"},
		{"-t", "nat", "-A", "OUTPUT", "-d", "10.96.0.10", "-p", "tcp", "--dport", "80", "-j", "DNAT", "--to-destination", "10.244.1.59:80"},
		{"-t", "nat", "-A", "PREROUTING", "-d", "10.96.0.20", "-p", "tcp", "--dport", "80", "-j", "DNAT", "--to-destination", "10.244.2.48:80"},
		{"-t", "filter", "-A", "OUTPUT", "-d", "10.96.0.11", "-p", "tcp", "-j", "REJECT"},
		{"-t", "filter", "-A", "FORWARD", "-d", "10.96.0.11", "-p", "tcp", "-j", "REJECT"},
	} {
		l.MustExec(n.NS, "iptables", append([]string{"-w"}, rule...)...)
	}
	// Pod → service → pod on the same bridge.
	r, err := Ask(client.NS, "tcp", "10.96.0.10:80")
	if err != nil || r.ServerName != "backend" || r.ClientIP != client.IP {
		t.Errorf("pod → DNAT → same-node pod: %v %v", r, err)
	}
	// Pod → service → pod on another node.
	r, err = Ask(client.NS, "tcp", "10.96.0.20:80")
	if err != nil || r.ServerName != "remote" || r.ClientIP != client.IP {
		t.Errorf("pod → DNAT → other node's pod: %v %v", r, err)
	}
	// Node → service.
	if r, err := Ask(n.NS, "tcp", "10.96.0.10:80"); err != nil || r.ServerName != "backend" {
		t.Errorf("node → DNAT → pod: %v %v", r, err)
	}
	// REJECT: refused, fast, from the node and from a pod.
	for _, ns := range []string{n.NS, client.NS} {
		start := time.Now()
		_, err := DialFrom(ns, "tcp", "", "10.96.0.11:80", time.Second)
		if !errors.Is(err, syscall.ECONNREFUSED) || time.Since(start) > 100*time.Millisecond {
			t.Errorf("%s → rejected address: %v after %v, want connection refused at once", ns, err, time.Since(start))
		}
	}
}
