package lab

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"
)

// v6Pool is an IPv6 pool on the LAN with its L2Advertisement, beside the seed's IPv4 pool.
const v6Pool = `apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata:
  name: localip6-pool
  namespace: metallb-system
spec:
  addresses:
  - fd00:10::51-fd00:10::80
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata:
  name: localip6-pool-l2a
  namespace: metallb-system
spec:
  ipAddressPools:
  - localip6-pool
`

// poolService is a LoadBalancer service over the demoapp pods with annotations, of one family.
func poolService(name string, port int, family string, annotations ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: v1\nkind: Service\nmetadata:\n  name: %s\n  namespace: default\n  annotations:\n", name)
	for i := 0; i+1 < len(annotations); i += 2 {
		fmt.Fprintf(&b, "    %s: %q\n", annotations[i], annotations[i+1])
	}
	if len(annotations) == 0 {
		b.WriteString("    {}\n")
	}
	fmt.Fprintf(&b, "spec:\n  type: LoadBalancer\n  ipFamilies: [%s]\n  selector:\n    app: demoapp\n  ports:\n  - port: %d\n    targetPort: 80\n", family, port)
	return b.String()
}

// testLoadBalancerPools: two services share a requested address (allow-shared-ip) on different
// ports; a request outside every pool gets no address and breaks no other; an IPv6 pool's
// address is answered by NDP from one node; deleting the services stops the announcement.
func testLoadBalancerPools(t *testing.T, m mode) {
	shared := netip.MustParseAddr("10.0.0.60")
	slice6 := strings.Replace(sliceYAML("v6-1", "v6", []slicePort{{"", "TCP", 80}}), "addressType: IPv4", "addressType: IPv6", 1)
	slice6 = strings.Replace(slice6, "endpoints: []\n", "endpoints:\n", 1)
	e := newEnv(t, m, setup{
		pods: demoappPods,
		args: []string{"--service-cluster-ip-range", "10.96.0.0/12,fd00:96::/108"},
		before: func(l *Lab) {
			for _, name := range []string{"demoapp-1", "demoapp-2", "demoapp-3"} {
				p := l.Pod(name)
				slice6 += fmt.Sprintf("- addresses: [%q]\n  conditions: {ready: true}\n  nodeName: %s\n", p.IP6, p.Node.Name)
			}
		},
	})
	services := map[string]string{
		"shared-a": poolService("shared-a", 80, "IPv4", "metallb.io/allow-shared-ip", "k", "metallb.io/loadBalancerIPs", shared.String()),
		"shared-b": poolService("shared-b", 8080, "IPv4", "metallb.io/allow-shared-ip", "k", "metallb.io/loadBalancerIPs", shared.String()),
		"outside":  poolService("outside", 80, "IPv4", "metallb.io/loadBalancerIPs", "192.0.2.9"),
		"v6":       poolService("v6", 80, "IPv6"),
	}
	var objs []string
	for name, svc := range services {
		objs = append(objs, svc)
		if name != "v6" {
			objs = append(objs, sliceYAML(name+"-1", name, []slicePort{{"", "TCP", 80}}, demoappEndpoints...))
		}
	}
	e.WriteManifest("metallb.yaml", []byte(seed(t, "metallb.yaml")+"---\n"+v6Pool))
	e.WriteManifest("services.yaml", []byte(strings.Join(append(objs, slice6), "---\n")))

	out := e.MustExec(e.Node(1).NS, Binary(t), "get", "services", "--manifests", e.Node(1).Manifests,
		"--service-cluster-ip-range", "10.96.0.0/12,fd00:96::/108")
	external := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^(\S+) +LoadBalancer +\S+ +(\S+) `).FindAllStringSubmatch(out, -1) {
		external[m[1]] = m[2]
	}
	want := map[string]string{"shared-a": "10.0.0.60", "shared-b": "10.0.0.60", "outside": "<pending>", "v6": "fd00:10::51"}
	for name, w := range want {
		if external[name] != w {
			t.Errorf("%s has EXTERNAL-IP %q, want %q\n%s", name, external[name], w, out)
		}
	}
	e.waitAnswer(e.Client, "tcp", hostPort(shared, 80))
	e.waitAnswer(e.Client, "tcp", hostPort(shared, 8080))
	v6 := netip.MustParseAddr("fd00:10::51")
	r := e.waitAnswer(e.Client, "tcp", hostPort(v6, 80))
	if !r.ServerIP.Is6() {
		t.Errorf("through %s: answered from %s, want a pod's IPv6 address", v6, r.ServerIP)
	}
	// One node answered the client's Neighbor Solicitation.
	macs := e.macs()
	if owner, ok := macs[e.neighbour(v6)]; !ok {
		t.Errorf("client's neighbour entry for %s is %q, not a node's MAC", v6, e.neighbour(v6))
	} else {
		t.Logf("%s answered by NDP from node%02d", v6, owner)
	}

	// Deleting one sharer keeps the address; deleting both stops the ARP answers within a second.
	e.WriteManifest("services.yaml", []byte(strings.Join(append(slicesWithout(objs, "shared-b"), slice6), "---\n")))
	e.waitAnswer(e.Client, "tcp", hostPort(shared, 80))
	if out, _ := Exec(e.Client, "arping", "-c", "1", "-w", "2", "-I", "eth0", shared.String()); !arpingReply.MatchString(out) {
		t.Fatalf("no ARP answer for %s while shared-a still uses it:\n%s", shared, out)
	}
	removed := time.Now()
	e.WriteManifest("services.yaml", []byte(strings.Join(append(slicesWithout(slicesWithout(objs, "shared-b"), "shared-a"), slice6), "---\n")))
	// took is when the first probe that got no answer started: each probe waits up to a second.
	var took time.Duration
	if !Eventually(Scaled(5*time.Second), time.Millisecond, func() bool {
		start := time.Since(removed)
		out, _ := Exec(e.Client, "arping", "-c", "1", "-w", "1", "-I", "eth0", shared.String())
		took = start
		return !arpingReply.MatchString(out)
	}) {
		t.Fatalf("%s still answered by ARP after both its services were deleted", shared)
	}
	if took > Scaled(time.Second) {
		t.Errorf("ARP answers for %s still came %v after the services were deleted, want within a second", shared, took)
	}
	fmt.Printf("LoadBalancer pools (%s mode): shared 10.0.0.60 on :80 and :8080, outside request pending, IPv6 %s by NDP; ARP stopped %v after deletion\n",
		m.name, v6, took.Round(time.Millisecond))
}

// slicesWithout drops the documents that name service (its Service and its EndpointSlice).
func slicesWithout(docs []string, service string) []string {
	var out []string
	for _, d := range docs {
		if !strings.Contains(d, "name: "+service+"\n") && !strings.Contains(d, "name: "+service+"-1\n") {
			out = append(out, d)
		}
	}
	return out
}
