package lab

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

const dualService = `apiVersion: v1
kind: Service
metadata:
  name: dual
  namespace: default
spec:
  type: NodePort
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIPs: [10.96.0.9, "fd00:96::9"]
  selector:
    app: demoapp
  ports:
  - name: http
    port: 80
    targetPort: 80
    nodePort: 30080
`

// dualSlice is the EndpointSlice of family (IPv4 or IPv6) for the service dual, with the pods'
// addresses of that family.
func dualSlice(family string, pods ...*Pod) string {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: dual-%s\n  namespace: default\n  labels:\n    kubernetes.io/service-name: dual\naddressType: %s\nports:\n- name: http\n  protocol: TCP\n  port: 80\nendpoints:\n",
		strings.ToLower(family), family)
	for _, p := range pods {
		a := p.IP
		if family == "IPv6" {
			a = p.IP6
		}
		fmt.Fprintf(&b, "- addresses: [%q]\n  conditions: {ready: true}\n  nodeName: %s\n", a, p.Node.Name)
	}
	return b.String()
}

// testDualStack: a RequireDualStack service answers on its IPv4 and IPv6 cluster IPs and on the
// node port over both families, each family with its own EndpointSlice; a change to the IPv6
// slice leaves IPv4 alone.
func testDualStack(t *testing.T, m mode) {
	e := newEnv(t, m, setup{pods: append(demoappPods, clientPod),
		// As on a dual-stack API server: without a range of each family the service is refused.
		args: []string{"--service-cluster-ip-range", "10.96.0.0/12,fd00:96::/108"}})
	pods := []*Pod{e.Pod("demoapp-1"), e.Pod("demoapp-2"), e.Pod("demoapp-3")}
	e.WriteManifest("dual.yaml", []byte(dualService+"---\n"+dualSlice("IPv4", pods...)+"---\n"+dualSlice("IPv6", pods...)))
	client := e.Pod("client-pod")
	v4, v6 := netip.MustParseAddr("10.96.0.9"), netip.MustParseAddr("fd00:96::9")
	for _, vip := range []netip.Addr{v4, v6} {
		addr := hostPort(vip, 80)
		e.waitAnswer(client.NS, "tcp", addr)
		rs := e.spread(client.NS, "tcp", addr, 45)
		if got := serverNames(rs); len(got) != 3 {
			t.Errorf("45 connections to %s reached %v, want all 3 demoapp pods", addr, got)
		}
		want := client.IP
		if vip.Is6() {
			want = client.IP6
		}
		for _, r := range rs {
			if r.ClientIP != want || (vip.Is6() && !r.ServerIP.Is6()) {
				t.Errorf("%s: %s saw %s at %s, want the pod's own %s at an address of the same family", addr, r.ServerName, r.ClientIP, r.ServerIP, want)
				break
			}
		}
	}
	// The external client over IPv6 through node02's node port: masqueraded to an address of node02.
	n := e.Node(2)
	np6 := hostPort(n.IP6, 30080)
	e.waitAnswer(e.Client, "tcp", np6)
	rs := e.spread(e.Client, "tcp", np6, 30)
	if got := serverNames(rs); len(got) != 3 {
		t.Errorf("30 connections to %s reached %v, want all 3 demoapp pods", np6, got)
	}
	for _, r := range rs {
		if r.ClientIP != n.IP6 && r.ClientIP != n.PodCIDR6.Addr().Next() {
			t.Errorf("via %s: %s saw %s, want node02's own IPv6 address (masqueraded)", np6, r.ServerName, r.ClientIP)
			break
		}
	}

	// demoapp-3 leaves the IPv6 slice only.
	e.WriteManifest("dual.yaml", []byte(dualService+"---\n"+dualSlice("IPv4", pods...)+"---\n"+dualSlice("IPv6", pods[:2]...)))
	addr6 := hostPort(v6, 80)
	if !Eventually(Scaled(10*time.Second), 100*time.Millisecond, func() bool {
		return serverNames(e.spread(client.NS, "tcp", addr6, 20))["demoapp-3"] == 0
	}) {
		t.Fatalf("demoapp-3 still answers on %s after it left the IPv6 slice", addr6)
	}
	if got := serverNames(e.spread(client.NS, "tcp", hostPort(v4, 80), 45)); len(got) != 3 {
		t.Errorf("after an IPv6-only change, IPv4 reached %v, want all 3 demoapp pods", got)
	}
	fmt.Printf("Dual-stack (%s mode): 10.96.0.9 and [fd00:96::9] reach 3 pods each; [%s]:30080 answers over IPv6\n", m.name, n.IP6)
}
