package nftables

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"nodeagent/proxier"
)

// Test address conventions (the lab's plan, see DESIGN.md):
//
//	node LAN          10.0.0.0/24, this node 10.0.0.151, fd00:10::151
//	pod CIDR          10.244.0.0/16 (this node 10.244.1.0/24), fd00:244::/48
//	service CIDR      10.96.0.0/12, fd00:96::/108
//	external IPs      10.0.0.200
//	load balancers    10.0.0.51-10.0.0.80, fd00:10::51-
//	outside clients   203.0.113.0/24 (source range 203.0.113.0/25)

var nsCounter atomic.Int32

// netns creates a network namespace for the test and deletes it when the test ends.
func netns(t testing.TB) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	name := fmt.Sprintf("nanft%d-%d", os.Getpid(), nsCounter.Add(1))
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	return name
}

// runNft runs the nft binary inside ns with stdin.
func runNft(t testing.TB, ns string, stdin string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, "nft"}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("nft %s: %v: %s", strings.Join(args, " "), err, errOut.String())
	}
	return out.String(), nil
}

func mustNft(t testing.TB, ns string, stdin string, args ...string) string {
	t.Helper()
	out, err := runNft(t, ns, stdin, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func newProxier(t testing.TB, ns string, fams ...proxier.Family) *Proxier {
	t.Helper()
	p, err := New(Options{NetNSPath: "/run/netns/" + ns, Families: fams})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func mustSync(t testing.TB, p *Proxier, st *proxier.State, ch proxier.Changes) SyncStats {
	t.Helper()
	if err := p.Sync(context.Background(), st, ch); err != nil {
		t.Fatal(err)
	}
	return p.LastSync()
}

// normalized lists a table as nft sees it, independent of handles, anonymous set names and
// element or chain order, so that two tables built different ways compare equal.
func normalized(t testing.TB, ns, fam string) string {
	t.Helper()
	out := mustNft(t, ns, "", "-j", "list", "table", fam, tableName)
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("parse nft -j output: %v", err)
	}
	var lines []string
	for _, obj := range doc.Nftables {
		for kind, raw := range obj {
			var m map[string]any
			if err := json.Unmarshal(raw, &m); err != nil {
				continue // metainfo
			}
			delete(m, "handle")
			if elems, ok := m["elem"].([]any); ok {
				strs := make([]string, len(elems))
				for i, e := range elems {
					b, _ := json.Marshal(e)
					strs[i] = string(b)
				}
				slices.Sort(strs)
				m["elem"] = strs
			}
			b, _ := json.Marshal(m)
			lines = append(lines, kind+" "+string(b))
		}
	}
	// Rules keep their order within a chain: sort by chain, stable.
	slices.SortStableFunc(lines, func(a, b string) int { return strings.Compare(ruleChainKey(a), ruleChainKey(b)) })
	return strings.Join(lines, "\n")
}

func ruleChainKey(line string) string {
	if !strings.HasPrefix(line, "rule ") {
		return "0" + line
	}
	var m struct {
		Chain string `json:"chain"`
	}
	_ = json.Unmarshal([]byte(strings.TrimPrefix(line, "rule ")), &m)
	return "1" + m.Chain
}

// assertKernelMatchesRender loads p.Render(st) into a second namespace with nft and compares
// both tables as nft lists them.
func assertKernelMatchesRender(t *testing.T, p *Proxier, ns string, st *proxier.State, fams ...string) {
	t.Helper()
	var buf bytes.Buffer
	if err := p.Render(&buf, st); err != nil {
		t.Fatal(err)
	}
	ref := netns(t)
	mustNft(t, ref, buf.String(), "-f", "-")
	for _, fam := range fams {
		got, want := normalized(t, ns, fam), normalized(t, ref, fam)
		if got != want {
			t.Fatalf("table %s in the kernel differs from Render:\n%s", fam, lineDiff(want, got))
		}
	}
}

func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for _, l := range w {
		if !slices.Contains(g, l) {
			b.WriteString("- " + l + "\n")
		}
	}
	for _, l := range g {
		if !slices.Contains(w, l) {
			b.WriteString("+ " + l + "\n")
		}
	}
	if b.Len() == 0 {
		return "(same lines, different order)"
	}
	return b.String()
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func ep(a string, port uint16, node string) proxier.Endpoint {
	return proxier.Endpoint{Addr: addr(a), Port: port, NodeName: node, Local: node == "node01",
		Ready: true, Serving: true}
}

func spn(ns, name, port string, proto v1.Protocol, f proxier.Family) proxier.ServicePortName {
	return proxier.ServicePortName{NamespacedName: types.NamespacedName{Namespace: ns, Name: name},
		Port: port, Protocol: proto, Family: f}
}

// withEndpoints fills the endpoint lists the way the model does (all endpoints ready).
func withEndpoints(sp *proxier.ServicePort, eps ...proxier.Endpoint) *proxier.ServicePort {
	sp.AllEndpoints, sp.ClusterEndpoints, sp.LocalEndpoints = eps, eps, nil
	for _, e := range eps {
		if e.Local {
			sp.LocalEndpoints = append(sp.LocalEndpoints, e)
		}
	}
	return sp
}

// testState covers every path the proxier renders: ClusterIP, NodePort, LoadBalancer with
// Local policy and source ranges, affinity, no endpoints, internal Local policy, UDP, SCTP,
// dual stack.
func testState() *proxier.State {
	svcs := []*proxier.ServicePort{
		withEndpoints(&proxier.ServicePort{
			Name: spn("default", "demoapp", "http", v1.ProtocolTCP, proxier.IPv4), ClusterIP: addr("10.96.0.10"), Port: 80,
			NodePort: 30080,
		}, ep("10.244.1.5", 80, "node01"), ep("10.244.2.5", 80, "node02"), ep("10.244.3.5", 80, "node03")),
		withEndpoints(&proxier.ServicePort{
			Name: spn("default", "demoapp", "http", v1.ProtocolTCP, proxier.IPv6), ClusterIP: addr("fd00:96::10"), Port: 80,
			NodePort: 30080,
		}, ep("fd00:244:1::5", 80, "node01"), ep("fd00:244:2::5", 80, "node02")),
		withEndpoints(&proxier.ServicePort{
			Name: spn("default", "myapp", "", v1.ProtocolTCP, proxier.IPv4), ClusterIP: addr("10.96.0.20"), Port: 80,
			NodePort: 30081, LoadBalancerIPs: []netip.Addr{addr("10.0.0.51")}, ExternalPolicyLocal: true,
			HealthCheckNodePort: 32000, LoadBalancerSourceRanges: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/25"),
				netip.MustParsePrefix("10.0.0.0/24")},
		}, ep("10.244.1.7", 8080, "node01"), ep("10.244.2.7", 8080, "node02")),
		withEndpoints(&proxier.ServicePort{
			Name: spn("default", "remote-only", "", v1.ProtocolTCP, proxier.IPv4), ClusterIP: addr("10.96.0.21"), Port: 80,
			NodePort: 30082, LoadBalancerIPs: []netip.Addr{addr("10.0.0.52")}, ExternalPolicyLocal: true,
		}, ep("10.244.2.8", 80, "node02")),
		withEndpoints(&proxier.ServicePort{
			Name: spn("default", "sticky", "web", v1.ProtocolTCP, proxier.IPv4), ClusterIP: addr("10.96.0.30"), Port: 8080,
			ExternalIPs: []netip.Addr{addr("10.0.0.200")}, SessionAffinity: true, AffinityTimeout: 600 * time.Second,
		}, ep("10.244.1.9", 8080, "node01"), ep("10.244.3.9", 8080, "node03")),
		withEndpoints(&proxier.ServicePort{
			Name: spn("kube-system", "dns", "dns", v1.ProtocolUDP, proxier.IPv4), ClusterIP: addr("10.96.0.53"), Port: 53,
			InternalPolicyLocal: true,
		}, ep("10.244.1.53", 53, "node01"), ep("10.244.2.53", 53, "node02")),
		withEndpoints(&proxier.ServicePort{
			Name: spn("kube-system", "dns", "dns-tcp", v1.ProtocolTCP, proxier.IPv4), ClusterIP: addr("10.96.0.53"), Port: 53,
			InternalPolicyLocal: true,
		}, ep("10.244.2.53", 53, "node02")),
		withEndpoints(&proxier.ServicePort{
			Name: spn("default", "sctp", "", v1.ProtocolSCTP, proxier.IPv4), ClusterIP: addr("10.96.0.40"), Port: 9999,
		}, ep("10.244.1.40", 9999, "node01")),
		{
			Name: spn("default", "empty", "", v1.ProtocolTCP, proxier.IPv4), ClusterIP: addr("10.96.0.50"), Port: 80,
			NodePort: 30090, ExternalIPs: []netip.Addr{addr("10.0.0.201")},
		},
	}
	return &proxier.State{
		Node: proxier.Node{Name: "node01", IPs: []netip.Addr{addr("10.0.0.151"), addr("fd00:10::151")}},
		Config: proxier.Config{
			ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/48")},
		},
		Services: svcs,
	}
}

// bigState has n ClusterIP/NodePort services with eps endpoints each.
func bigState(n, eps int) *proxier.State {
	st := &proxier.State{
		Node:   proxier.Node{Name: "node01", IPs: []netip.Addr{addr("10.0.0.151")}},
		Config: proxier.Config{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}},
	}
	for i := range n {
		cip := netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})
		sp := &proxier.ServicePort{
			Name:      spn("bench", fmt.Sprintf("svc-%05d", i), "http", v1.ProtocolTCP, proxier.IPv4),
			ClusterIP: cip, Port: 80,
		}
		var list []proxier.Endpoint
		for e := range eps {
			a := netip.AddrFrom4([4]byte{10, byte(128 + e), byte(i >> 8), byte(i)}) // unique for e < 128
			list = append(list, proxier.Endpoint{Addr: a, Port: 8080, NodeName: "node02", Ready: true, Serving: true})
		}
		st.Services = append(st.Services, withEndpoints(sp, list...))
	}
	return st
}

func changed(names ...types.NamespacedName) proxier.Changes {
	ch := proxier.Changes{Services: map[types.NamespacedName]bool{}}
	for _, n := range names {
		ch.Services[n] = true
	}
	return ch
}
