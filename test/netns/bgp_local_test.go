package lab

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// testBGPLocalAndServiceIPs: an externalTrafficPolicy Local service is advertised only by the
// nodes with a ready local endpoint, and a node whose last local endpoint goes away withdraws
// within a second; with --advertise-cluster-ip every node advertises the cluster IP of a service
// with endpoints, and clients behind the router reach it.
func testBGPLocalAndServiceIPs(t *testing.T, m mode) {
	local := edit(t, lbServiceYAML, "NAME", "lb-local") + "  externalTrafficPolicy: Local\n"
	slice := func(eps ...endpoint) string {
		return sliceYAML("lb-local-1", "lb-local", []slicePort{{"", "TCP", 80}}, eps...)
	}
	e := newEnv(t, m, setup{
		files: map[string]string{
			"demoapp.yaml": seed(t, "demoapp.yaml"), "demoapp-endpoints.yaml": seed(t, "demoapp-endpoints.yaml"),
			"bgp.yaml": bgpManifests, "local.yaml": local + "---\n" + slice(demoappEndpoints[1:]...),
		},
		pods: demoappPods,
		args: []string{"--layer2=false", "--advertise-cluster-ip"},
	})
	sock := e.startBIRD()
	out := e.MustExec(e.Node(1).NS, Binary(t), "get", "services", "--manifests", e.Node(1).Manifests)
	match := regexp.MustCompile(`(?m)^lb-local +LoadBalancer +\S+ +(\S+) `).FindStringSubmatch(out)
	if match == nil {
		t.Fatalf("lb-local has no external IP:\n%s", out)
	}
	prefix := match[1] + "/32"
	waitHops := func(what, prefix string, want []string) time.Duration {
		t.Helper()
		start := time.Now()
		var hops []string
		var out string
		if !Eventually(Scaled(20*time.Second), 10*time.Millisecond, func() bool {
			hops, out = nextHops(sock, prefix)
			return slices.Equal(hops, want)
		}) {
			t.Fatalf("%s: BIRD's next hops for %s are %v, want %v\n%s", what, prefix, hops, want, out)
		}
		return time.Since(start)
	}
	waitHops("ETP Local", prefix, []string{"10.0.0.152", "10.0.0.153"})
	vip := e.clusterIP("demoapp-clusterip")
	waitHops("--advertise-cluster-ip", vip.String()+"/32", []string{"10.0.0.151", "10.0.0.152", "10.0.0.153"})
	body, _, err := HTTPGet(e.Node(1).NS, "http://127.0.0.1:10249/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`nodeagent_bgp_session_up{peer="metallb-system/router"} 1`, `nodeagent_bgp_session_flaps_total{peer="metallb-system/router"} 0`} {
		if !strings.Contains(body, want) {
			t.Errorf("node01's metrics lack %q:\n%s", want, regexp.MustCompile(`(?m)^nodeagent_bgp.*$`).FindAllString(body, -1))
		}
	}
	if m := regexp.MustCompile(`nodeagent_bgp_announced_prefixes\{peer="metallb-system/router"\} (\d+)`).FindStringSubmatch(body); m == nil || m[1] == "0" {
		t.Errorf("node01's metrics: announced prefixes %v, want some", m)
	}
	r := e.waitAnswer(e.Client2, "tcp", hostPort(vip, 80))
	t.Logf("cluster IP %s from behind the router answered by %s", vip, r.ServerName)

	// node03's only local endpoint goes away: node03 withdraws.
	e.WriteManifest("local.yaml", []byte(local+"---\n"+slice(demoappEndpoints[1])))
	d := waitHops("endpoint gone", prefix, []string{"10.0.0.152"})
	fmt.Printf("MEASURED BGP ETP Local (%s mode): last local endpoint gone → node03's next hop withdrawn from BIRD in %v\n", m.name, d.Round(time.Millisecond))
	if d > Scaled(time.Second) {
		t.Errorf("withdrawal took %v, want within a second", d)
	}
}
