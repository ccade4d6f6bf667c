package lab

import (
	"fmt"
	"net/netip"
	"regexp"
	"testing"
	"time"
)

// rangedService is a LoadBalancer service that only the given sources may reach.
func rangedService(source string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata:
  name: ranged
  namespace: default
spec:
  type: LoadBalancer
  loadBalancerSourceRanges: [%q]
  selector:
    app: demoapp
  ports:
  - port: 80
    targetPort: 80
`, source)
}

// testLoadBalancerSourceRanges: a LoadBalancer address answers only the sources in
// loadBalancerSourceRanges (others are dropped, as kube-proxy does), and a change of the ranges
// takes effect; the LAN's router, refused at first, is the positive control afterwards.
func testLoadBalancerSourceRanges(t *testing.T, m mode) {
	e := newEnv(t, m, setup{
		files: map[string]string{
			"demoapp.yaml": seed(t, "demoapp.yaml"), "demoapp-endpoints.yaml": seed(t, "demoapp-endpoints.yaml"),
			"metallb.yaml": seed(t, "metallb.yaml"), "ranged.yaml": rangedService("10.0.0.1/32"),
			"ranged-endpoints.yaml": sliceYAML("ranged-1", "ranged", []slicePort{{"", "TCP", 80}}, demoappEndpoints...),
		},
		pods: demoappPods,
	})
	out := e.MustExec(e.Node(1).NS, Binary(t), "get", "services", "--manifests", e.Node(1).Manifests)
	match := regexp.MustCompile(`(?m)^ranged +LoadBalancer +\S+ +(\S+) `).FindStringSubmatch(out)
	if match == nil {
		t.Fatalf("ranged has no external IP:\n%s", out)
	}
	vip, err := netip.ParseAddr(match[1])
	if err != nil {
		t.Fatalf("ranged's external IP %q: %v", match[1], err)
	}
	addr := hostPort(vip, 80)
	allowed, denied := e.Client, e.Router
	for round := range 2 {
		e.waitAnswer(allowed, "tcp", addr)
		// The same address is reachable from the denied source for a service without ranges.
		e.waitAnswer(denied, "tcp", hostPort(lbAddr, 80))
		if !Eventually(Scaled(10*time.Second), 50*time.Millisecond, func() bool {
			c, err := DialFrom(denied, "tcp", "", addr, 300*time.Millisecond)
			if err == nil {
				c.Close()
				return false
			}
			return true
		}) {
			t.Fatalf("round %d: %s reached %s outside loadBalancerSourceRanges", round, denied, addr)
		}
		// Stays closed: five more attempts all fail.
		for range 5 {
			if c, err := DialFrom(denied, "tcp", "", addr, 300*time.Millisecond); err == nil {
				c.Close()
				t.Fatalf("round %d: %s reached %s outside loadBalancerSourceRanges", round, denied, addr)
			}
		}
		if round == 0 {
			e.WriteManifest("ranged.yaml", []byte(rangedService(RouterAddr.String()+"/32")))
			allowed, denied = denied, allowed
		}
	}
	fmt.Printf("loadBalancerSourceRanges (%s mode): %s answers only the listed source, also after a change\n", m.name, vip)
}
