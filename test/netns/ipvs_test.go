package lab

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The tests in this file exercise what only the ipvs mode has. They skip on a kernel without
// IPVS; `make test-vm` runs them inside vm/run.

// requireIPVS skips the test on a kernel without IPVS.
func requireIPVS(t *testing.T) {
	t.Helper()
	RequireRoot(t)
	if why := noIPVS(); why != "" {
		t.Skip(why)
	}
}

// serviceYAML is a ClusterIP service with a fixed address and port 80 → targetPort 80, plus extra
// spec lines (indented two spaces).
func serviceYAML(name, clusterIP, extra string) string {
	return fmt.Sprintf("apiVersion: v1\nkind: Service\nmetadata:\n  name: %s\n  namespace: default\nspec:\n  clusterIP: %s\n%s  ports:\n  - name: http\n    port: 80\n    targetPort: 80\n",
		name, clusterIP, extra)
}

// realServers parses `ipvsadm -Sn` into "VIP:port → real server → weight" for one virtual server.
func realServers(t *testing.T, ns, vip string) map[string]int {
	t.Helper()
	out, err := Exec(ns, "ipvsadm", "-Sn")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`(?m)^-a -t ` + regexp.QuoteMeta(vip) + ` -r (\S+) -m -w (\d+)$`)
	m := map[string]int{}
	for _, sm := range re.FindAllStringSubmatch(out, -1) {
		w, _ := strconv.Atoi(sm[2])
		m[sm[1]] = w
	}
	return m
}

// TestIPVSGracefulTermination: an endpoint removed from its slice while a TCP connection to it
// is open keeps that connection (weight 0, not deleted) until the connection closes, while every
// new connection goes to the remaining endpoint; an endpoint without connections goes at once.
func TestIPVSGracefulTermination(t *testing.T) {
	requireIPVS(t)
	t.Parallel()
	ports := []slicePort{{"http", "TCP", 80}}
	svc := serviceYAML("grace", "10.96.50.50", "")
	two := demoappEndpoints[:2]
	e := newEnv(t, ipvsMode, setup{
		files:  map[string]string{"grace.yaml": svc + "---\n" + sliceYAML("grace-1", "grace", ports, two...)},
		pods:   append(demoappPods, clientPod),
		agents: []int{1},
	})
	client, n1 := e.Pod("client-pod"), e.Node(1)
	const vip = "10.96.50.50:80"
	e.waitAnswer(client.NS, "tcp", vip)

	long, err := Dial(client.NS, "tcp", vip)
	if err != nil {
		t.Fatal(err)
	}
	defer long.Close()
	first, err := Exchange(long, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	victim := first.ServerIP.String()
	other := without(two, victim)
	t.Logf("long connection to %s; removing it from the slice", first.ServerName)
	e.WriteManifest("grace.yaml", []byte(svc+"---\n"+sliceYAML("grace-1", "grace", ports, other...)))

	victimRS := victim + ":80"
	if !Eventually(Scaled(5*time.Second), 20*time.Millisecond, func() bool {
		w, ok := realServers(t, n1.NS, vip)[victimRS]
		return ok && w == 0
	}) {
		t.Fatalf("removed %s with an open connection: want it kept at weight 0; ipvsadm has %v", victimRS, realServers(t, n1.NS, vip))
	}
	for _, r := range e.spread(client.NS, "tcp", vip, 20) {
		if r.ServerIP.String() == victim {
			t.Fatalf("a new connection reached the removed endpoint %s (weight 0)", victim)
		}
	}
	// The old connection keeps working for longer than the agent's drain check interval (5 s).
	deadline := time.Now().Add(7 * time.Second)
	for n := 0; time.Now().Before(deadline); n++ {
		r, err := Exchange(long, Scaled(time.Second))
		if err != nil || r != first {
			t.Fatalf("exchange %d on the long connection after removal: %v (%v), want %v", n, r, err, first)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if w, ok := realServers(t, n1.NS, vip)[victimRS]; !ok || w != 0 {
		t.Errorf("while its connection is open, %s should stay at weight 0; ipvsadm has %v", victimRS, realServers(t, n1.NS, vip))
	}
	long.Close()
	// Closed, the connection no longer counts as active; IPVS keeps it (FIN/TIME_WAIT, kernel
	// timeouts of minutes) as inactive, and the agent deletes the real server when that ends.
	if !Eventually(Scaled(5*time.Second), 50*time.Millisecond, func() bool {
		out, _ := Exec(n1.NS, "ipvsadm", "-Ln", "-t", vip)
		re := regexp.MustCompile(`(?m)^\s+-> ` + regexp.QuoteMeta(victimRS) + `\s+Masq\s+0\s+0\s+`)
		return re.MatchString(out)
	}) {
		out, _ := Exec(n1.NS, "ipvsadm", "-Ln", "-t", vip)
		t.Errorf("after the long connection closed, %s still has active connections:\n%s", victimRS, out)
	}

	// An endpoint that never had a connection is deleted at once: add demoapp-3, then remove it.
	third := demoappEndpoints[2]
	thirdRS := third.ip + ":80"
	e.WriteManifest("grace.yaml", []byte(svc+"---\n"+sliceYAML("grace-1", "grace", ports, append(other, third)...)))
	if !Eventually(Scaled(5*time.Second), 20*time.Millisecond, func() bool { return realServers(t, n1.NS, vip)[thirdRS] == 1 }) {
		t.Fatalf("%s never added; ipvsadm has %v", thirdRS, realServers(t, n1.NS, vip))
	}
	e.WriteManifest("grace.yaml", []byte(svc+"---\n"+sliceYAML("grace-1", "grace", ports, other...)))
	if !Eventually(Scaled(5*time.Second), 20*time.Millisecond, func() bool {
		_, ok := realServers(t, n1.NS, vip)[thirdRS]
		return !ok
	}) {
		t.Errorf("%s had no connections and left the slice: want it deleted, not drained; ipvsadm has %v", thirdRS, realServers(t, n1.NS, vip))
	}
}

// TestIPVSPersistence: sessionAffinity ClientIP with timeoutSeconds becomes an IPVS persistent
// virtual server with that timeout: ipvsadm shows it, one client stays on one backend, the
// kernel's persistence template expires within the timeout, and a changed timeout is applied.
func TestIPVSPersistence(t *testing.T) {
	requireIPVS(t)
	t.Parallel()
	ports := []slicePort{{"http", "TCP", 80}}
	affinity := func(secs int) string {
		return serviceYAML("sticky", "10.96.70.70", fmt.Sprintf("  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: %d\n", secs)) +
			"---\n" + sliceYAML("sticky-1", "sticky", ports, demoappEndpoints...)
	}
	e := newEnv(t, ipvsMode, setup{
		files:  map[string]string{"sticky.yaml": affinity(30)},
		pods:   append(demoappPods, clientPod),
		agents: []int{1},
	})
	client, n1 := e.Pod("client-pod"), e.Node(1)
	const vip = "10.96.70.70:80"
	e.waitAnswer(client.NS, "tcp", vip)
	if out := e.MustExec(n1.NS, "ipvsadm", "-Sn"); !strings.Contains(out, "-A -t "+vip+" -s rr -p 30\n") {
		t.Errorf("ipvsadm -Sn lacks the persistent virtual server with timeout 30:\n%s", out)
	}
	if got := serverNames(e.spread(client.NS, "tcp", vip, 30)); len(got) != 1 {
		t.Errorf("30 connections within timeoutSeconds reached %v, want one pod", got)
	}
	// The template (client 10.244.1.10, port 0 → the chosen pod; state NONE, or ASSURED in
	// newer ipvsadm) expires within 30 s.
	tmpl := regexp.MustCompile(`(?m)^TCP\s+(\d\d):(\d\d)\s+\S+\s+` + regexp.QuoteMeta(client.IP.String()) + `:0\s+` + regexp.QuoteMeta(vip) + `\s`)
	out := e.MustExec(n1.NS, "ipvsadm", "-Lnc")
	sm := tmpl.FindStringSubmatch(out)
	if sm == nil {
		t.Fatalf("no persistence template for %s → %s in ipvsadm -Lnc:\n%s", client.IP, vip, out)
	}
	mins, _ := strconv.Atoi(sm[1])
	secs, _ := strconv.Atoi(sm[2])
	if left := mins*60 + secs; left > 30 {
		t.Errorf("persistence template expires in %ds, want at most the service's 30s:\n%s", left, out)
	}

	e.WriteManifest("sticky.yaml", []byte(affinity(10)))
	if !Eventually(Scaled(5*time.Second), 50*time.Millisecond, func() bool {
		out, _ := Exec(n1.NS, "ipvsadm", "-Sn")
		return strings.Contains(out, "-A -t "+vip+" -s rr -p 10\n")
	}) {
		t.Errorf("timeoutSeconds 10 not applied:\n%s", e.MustExec(n1.NS, "ipvsadm", "-Sn"))
	}
}

// TestIPVSStrictARP: the node binds cluster IPs to its dummy interface. With --ipvs-strict-arp
// (arp_ignore=1, arp_announce=2) an ARP request from the LAN client for one gets no answer from
// the node; without it the kernel answers for every local address, whatever the interface.
func TestIPVSStrictARP(t *testing.T) {
	requireIPVS(t)
	t.Parallel()
	const cip = "10.96.60.60"
	for _, strict := range []bool{true, false} {
		t.Run(fmt.Sprintf("strict=%v", strict), func(t *testing.T) {
			t.Parallel()
			m := ipvsMode
			m.args = nil
			if strict {
				m.args = []string{"--ipvs-strict-arp"}
			}
			e := newEnv(t, m, setup{
				files:  map[string]string{"arp.yaml": serviceYAML("arp", cip, "") + "---\n" + sliceYAML("arp-1", "arp", []slicePort{{"http", "TCP", 80}}, demoappEndpoints[0])},
				pods:   demoappPods[:1],
				agents: []int{1},
			})
			n1 := e.Node(1)
			if !Eventually(Scaled(5*time.Second), 50*time.Millisecond, func() bool {
				out, _ := Exec(n1.NS, "ip", "-o", "addr", "show", "dev", ipvsDummy)
				return strings.Contains(out, cip+"/32")
			}) {
				t.Fatalf("%s never bound to %s", cip, ipvsDummy)
			}
			sysctls := e.MustExec(n1.NS, "sysctl", "-n", "net.ipv4.conf.all.arp_ignore", "net.ipv4.conf.all.arp_announce")
			if want := map[bool]string{true: "1\n2\n", false: "0\n0\n"}[strict]; sysctls != want {
				t.Errorf("arp_ignore, arp_announce = %q, want %q", sysctls, want)
			}
			// arping works here: the node's own LAN address is answered either way.
			if out, _ := Exec(e.Client, "arping", "-c", "1", "-w", "3", "-I", "eth0", n1.IP.String()); !arpingReply.MatchString(out) {
				t.Fatalf("no ARP reply for node01's own %s:\n%s", n1.IP, out)
			}
			out, _ := Exec(e.Client, "arping", "-c", "2", "-w", "2", "-I", "eth0", cip)
			answered := arpingReply.MatchString(out)
			if strict && answered {
				t.Errorf("with --ipvs-strict-arp the node answered ARP for the cluster IP %s:\n%s", cip, out)
			}
			if !strict && !answered {
				t.Errorf("without --ipvs-strict-arp the kernel should answer ARP for %s on %s:\n%s", cip, ipvsDummy, out)
			}
		})
	}
}
