package lab

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// bgpManifests are the seed's pool announced by BGP instead of layer 2: MetalLB's BGPPeer and
// BGPAdvertisement, the router at 10.0.0.254 in AS 64512, the nodes in AS 64513.
const bgpManifests = `apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: localip-pool, namespace: metallb-system}
spec:
  addresses: [10.0.0.51-10.0.0.80]
  avoidBuggyIPs: true
---
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {name: router, namespace: metallb-system}
spec: {myASN: 64513, peerASN: 64512, peerAddress: 10.0.0.254, holdTime: 9s}
---
apiVersion: metallb.io/v1beta1
kind: Community
metadata: {name: communities, namespace: metallb-system}
spec:
  communities:
  - {name: lab-services, value: "64512:100"}
---
apiVersion: metallb.io/v1beta1
kind: BGPAdvertisement
metadata: {name: lab, namespace: metallb-system}
spec:
  ipAddressPools: [localip-pool]
  communities: [lab-services, "large:64512:7:9"]
`

// startBIRD runs BIRD 2 in the router namespace, peering passively with the three nodes and
// installing merged (ECMP) routes, and returns its control socket. It is stopped by PID.
func (e *env) startBIRD() string {
	e.t.Helper()
	var b strings.Builder
	b.WriteString(`router id 10.0.0.254;
log stderr all;
protocol device { scan time 10; }
protocol kernel k4 { ipv4 { import none; export all; }; merge paths on; }
template bgp node { local as 64512; passive on; hold time 9; ipv4 { import all; export none; }; }
`)
	for _, n := range e.Nodes {
		fmt.Fprintf(&b, "protocol bgp %s from node { neighbor %s as 64513; }\n", n.Name, n.IP)
	}
	conf := filepath.Join(e.Dir, "bird.conf")
	if err := os.WriteFile(conf, []byte(b.String()), 0o644); err != nil {
		e.t.Fatal(err)
	}
	sock := filepath.Join(e.Dir, "bird.ctl")
	logf, err := os.Create(filepath.Join(e.Dir, "bird.log"))
	if err != nil {
		e.t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", e.Router, "bird", "-f", "-c", conf, "-s", sock)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := checkNotHost(e.Router); err != nil {
		e.t.Fatal(err)
	}
	if err := startOnSpawner(cmd); err != nil {
		e.t.Fatalf("start bird: %v", err)
	}
	e.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		logf.Close()
	})
	if !Eventually(Scaled(10*time.Second), 50*time.Millisecond, func() bool {
		return exec.Command("birdc", "-s", sock, "show", "status").Run() == nil
	}) {
		e.t.Fatal("bird never answered on its control socket")
	}
	return sock
}

var birdVia = regexp.MustCompile(`via (\S+) on `)

// nextHops lists BIRD's next hops for prefix, sorted, and the whole answer.
func nextHops(sock, prefix string) ([]string, string) {
	out, _ := exec.Command("birdc", "-s", sock, "show", "route", "for", prefix, "all").CombinedOutput()
	if !strings.Contains(string(out), prefix) {
		return nil, string(out)
	}
	var hops []string
	for _, m := range birdVia.FindAllStringSubmatch(string(out), -1) {
		hops = append(hops, m[1])
	}
	slices.Sort(hops)
	return hops, string(out)
}

// lbServiceYAML is a LoadBalancer service NAME over the demoapp pods.
const lbServiceYAML = `apiVersion: v1
kind: Service
metadata:
  name: NAME
  namespace: default
spec:
  type: LoadBalancer
  selector:
    app: demoapp
  ports:
  - port: 80
    targetPort: 80
`

// testLoadBalancerBGP: every node advertises 10.0.0.51/32 to BIRD with its own address as next
// hop and the configured communities; a client behind the router reaches the service, and its
// connections are spread over more than one node (ECMP).
func testLoadBalancerBGP(t *testing.T, m mode) {
	e := newEnv(t, m, setup{
		files: map[string]string{
			"demoapp.yaml": seed(t, "demoapp.yaml"), "demoapp-endpoints.yaml": seed(t, "demoapp-endpoints.yaml"),
			"bgp.yaml": bgpManifests,
		},
		pods: demoappPods,
		args: []string{"--layer2=false"},
		before: func(l *Lab) {
			// Hash on ports too, so one client's connections spread over the next hops.
			l.MustExec(l.Router, "sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1")
		},
	})
	sock := e.startBIRD()
	want := []string{"10.0.0.151", "10.0.0.152", "10.0.0.153"}
	var hops []string
	var out string
	start := time.Now()
	if !Eventually(Scaled(20*time.Second), 50*time.Millisecond, func() bool {
		hops, out = nextHops(sock, "10.0.0.51/32")
		return slices.Equal(hops, want)
	}) {
		t.Fatalf("BIRD's next hops for 10.0.0.51/32: %v, want %v\n%s", hops, want, out)
	}
	fmt.Printf("BGP (%s mode): 10.0.0.51/32 via all three nodes in BIRD %v after the agents were ready\n", m.name, time.Since(start).Round(time.Millisecond))
	if !strings.Contains(out, "(64512,100)") || !strings.Contains(out, "(64512, 7, 9)") {
		t.Errorf("communities did not arrive as configured:\n%s", out)
	}
	addr := hostPort(lbAddr, 80)
	e.waitAnswer(e.Client2, "tcp", addr)
	via := map[string]int{}
	for _, r := range e.spread(e.Client2, "tcp", addr, 60) {
		via[r.ClientIP.String()]++ // ETP Cluster: the backend sees the node the route went through
	}
	if len(via) < 2 {
		t.Errorf("60 connections from 203.0.113.10 all went through %v; ECMP should spread them", via)
	}

	// A new service is advertised by every node; when its endpoints are gone it is withdrawn.
	lb2 := edit(t, lbServiceYAML, "NAME", "demoapp-lb2")
	eps := func(e ...endpoint) string {
		return sliceYAML("demoapp-lb2-1", "demoapp-lb2", []slicePort{{"", "TCP", 80}}, e...)
	}
	created := time.Now()
	e.WriteManifest("lb2.yaml", []byte(lb2+"---\n"+eps(demoappEndpoints...)))
	if !Eventually(Scaled(10*time.Second), 10*time.Millisecond, func() bool {
		hops, out = nextHops(sock, "10.0.0.52/32")
		return slices.Equal(hops, want)
	}) {
		t.Fatalf("a new service's 10.0.0.52/32: next hops %v, want %v\n%s", hops, want, out)
	}
	fmt.Printf("MEASURED BGP (%s mode): service created → 10.0.0.52/32 via all three nodes in BIRD in %v\n", m.name, time.Since(created).Round(time.Millisecond))
	lost := time.Now()
	e.WriteManifest("lb2.yaml", []byte(lb2+"---\n"+eps()))
	if !Eventually(Scaled(10*time.Second), 10*time.Millisecond, func() bool {
		hops, out = nextHops(sock, "10.0.0.52/32")
		return len(hops) == 0
	}) {
		t.Fatalf("10.0.0.52/32 still has next hops %v after its endpoints went away\n%s", hops, out)
	}
	fmt.Printf("MEASURED BGP (%s mode): endpoints lost → 10.0.0.52/32 withdrawn from BIRD in %v\n", m.name, time.Since(lost).Round(time.Millisecond))
	if hops, out = nextHops(sock, "10.0.0.51/32"); !slices.Equal(hops, want) {
		t.Errorf("10.0.0.51/32 changed with another service: %v\n%s", hops, out)
	}

	// A node whose agent stops gracefully withdraws its route at once.
	if err := e.agents[1].Stop(); err != nil {
		t.Fatal(err)
	}
	if !Eventually(Scaled(10*time.Second), 20*time.Millisecond, func() bool {
		hops, out = nextHops(sock, "10.0.0.51/32")
		return slices.Equal(hops, want[1:])
	}) {
		t.Errorf("after node01's agent stopped: next hops %v\n%s", hops, out)
	}
}
