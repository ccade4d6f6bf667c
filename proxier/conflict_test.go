package proxier_test

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"nodeagent/proxier"
)

var t0 = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// port is a TCP/IPv4 service port "http" of service default/name on cluster IP cip, port 80,
// changed by opts.
func port(name, cip string, opts ...func(*proxier.ServicePort)) *proxier.ServicePort {
	sp := &proxier.ServicePort{
		Name: proxier.ServicePortName{NamespacedName: types.NamespacedName{Namespace: "default", Name: name},
			Port: "http", Protocol: v1.ProtocolTCP, Family: proxier.IPv4},
		ClusterIP: netip.MustParseAddr(cip), Port: 80,
	}
	for _, o := range opts {
		o(sp)
	}
	return sp
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func external(ss ...string) func(*proxier.ServicePort) {
	return func(sp *proxier.ServicePort) { sp.ExternalIPs = addrs(ss...) }
}

func lbIPs(ss ...string) func(*proxier.ServicePort) {
	return func(sp *proxier.ServicePort) { sp.LoadBalancerIPs = addrs(ss...) }
}

func nodePort(p uint16) func(*proxier.ServicePort) {
	return func(sp *proxier.ServicePort) { sp.NodePort = p }
}

func healthCheck(p uint16) func(*proxier.ServicePort) {
	return func(sp *proxier.ServicePort) { sp.HealthCheckNodePort = p }
}

func portNo(p uint16) func(*proxier.ServicePort) {
	return func(sp *proxier.ServicePort) { sp.Port = p }
}

func named(n string) func(*proxier.ServicePort) {
	return func(sp *proxier.ServicePort) { sp.Name.Port = n }
}

func proto(p v1.Protocol) func(*proxier.ServicePort) {
	return func(sp *proxier.ServicePort) { sp.Name.Protocol = p }
}

func ipv6(sp *proxier.ServicePort) { sp.Name.Family = proxier.IPv6 }

// describe renders a port's frontends, "-" for a port left out.
func describe(sp *proxier.ServicePort) string {
	if sp == nil {
		return "-"
	}
	s := fmt.Sprintf("%s:%d", sp.ClusterIP, sp.Port)
	if len(sp.ExternalIPs) > 0 {
		s += fmt.Sprintf(" ext%v", sp.ExternalIPs)
	}
	if len(sp.LoadBalancerIPs) > 0 {
		s += fmt.Sprintf(" lb%v", sp.LoadBalancerIPs)
	}
	if sp.NodePort != 0 {
		s += fmt.Sprintf(" np%d", sp.NodePort)
	}
	if sp.HealthCheckNodePort != 0 {
		s += fmt.Sprintf(" hc%d", sp.HealthCheckNodePort)
	}
	return s
}

func TestResolveFrontends(t *testing.T) {
	cases := []struct {
		name  string
		in    []proxier.Claim
		want  []string // describe of each result port, in input order
		lost  []string // Conflict.String of each conflict, in order
		fresh []bool   // which results must be the input pointer (nil: all that lost nothing)
	}{
		{
			name: "nothing shared",
			in: []proxier.Claim{
				{Port: port("a", "10.96.0.1", external("192.0.2.1"), nodePort(30001))},
				{Port: port("b", "10.96.0.2", external("192.0.2.2"), lbIPs("198.51.100.1"), nodePort(30002), healthCheck(30003))},
			},
			want: []string{"10.96.0.1:80 ext[192.0.2.1] np30001", "10.96.0.2:80 ext[192.0.2.2] lb[198.51.100.1] np30002 hc30003"},
		},
		{
			name: "an external IP on another's cluster IP loses it, however old",
			in: []proxier.Claim{
				{Port: port("victim", "10.96.0.10"), Created: t0.Add(time.Hour)},
				{Port: port("attacker", "10.96.0.20", external("10.96.0.10", "192.0.2.7"), nodePort(30007)), Created: t0},
			},
			want: []string{"10.96.0.10:80", "10.96.0.20:80 ext[192.0.2.7] np30007"},
			lost: []string{"external IP 10.96.0.10:80/TCP of port http/TCP left out: it is also the cluster IP of default/victim"},
		},
		{
			name: "a load-balancer IP on another's cluster IP loses it",
			in: []proxier.Claim{
				{Port: port("victim", "10.96.0.10", nodePort(30010)), Created: t0.Add(time.Hour)},
				{Port: port("attacker", "10.96.0.20", lbIPs("10.96.0.10", "198.51.100.9")), Created: t0},
			},
			want: []string{"10.96.0.10:80 np30010", "10.96.0.20:80 lb[198.51.100.9]"},
			lost: []string{"load-balancer IP 10.96.0.10:80/TCP of port http/TCP left out: it is also the cluster IP of default/victim"},
		},
		{
			name: "two external IPs: the older service keeps it",
			in: []proxier.Claim{
				{Port: port("a", "10.96.0.1", external("192.0.2.1")), Created: t0.Add(time.Minute)},
				{Port: port("b", "10.96.0.2", external("192.0.2.1")), Created: t0},
			},
			want: []string{"10.96.0.1:80", "10.96.0.2:80 ext[192.0.2.1]"},
			lost: []string{"external IP 192.0.2.1:80/TCP of port http/TCP left out: it is also the external IP of default/b"},
		},
		{
			name: "an external and a load-balancer IP of the same age: namespace and name decide",
			in: []proxier.Claim{
				{Port: port("b", "10.96.0.2", external("192.0.2.1")), Created: t0},
				{Port: port("a", "10.96.0.1", lbIPs("192.0.2.1")), Created: t0},
			},
			want: []string{"10.96.0.2:80", "10.96.0.1:80 lb[192.0.2.1]"},
			lost: []string{"external IP 192.0.2.1:80/TCP of port http/TCP left out: it is also the load-balancer IP of default/a"},
		},
		{
			name: "another port number or protocol is another frontend",
			in: []proxier.Claim{
				{Port: port("a", "10.96.0.1", external("192.0.2.1"), nodePort(30001))},
				{Port: port("b", "10.96.0.2", external("192.0.2.1"), portNo(81))},
				{Port: port("c", "10.96.0.3", external("192.0.2.1"), proto(v1.ProtocolUDP), nodePort(30001))},
				{Port: port("d", "10.96.0.1", proto(v1.ProtocolUDP))},
			},
			want: []string{"10.96.0.1:80 ext[192.0.2.1] np30001", "10.96.0.2:81 ext[192.0.2.1]", "10.96.0.3:80 ext[192.0.2.1] np30001", "10.96.0.1:80"},
		},
		{
			name: "two node ports: the older keeps it, the other keeps the rest",
			in: []proxier.Claim{
				{Port: port("a", "10.96.0.1", external("192.0.2.1"), nodePort(30080)), Created: t0.Add(time.Second)},
				{Port: port("b", "10.96.0.2", nodePort(30080)), Created: t0},
			},
			want: []string{"10.96.0.1:80 ext[192.0.2.1]", "10.96.0.2:80 np30080"},
			lost: []string{"node port 30080/TCP of port http/TCP left out: it is also the node port of default/b"},
		},
		{
			name: "node ports of the two families do not meet",
			in: []proxier.Claim{
				{Port: port("a", "10.96.0.1", nodePort(30080))},
				{Port: port("b", "fd00::2", ipv6, nodePort(30080))},
			},
			want: []string{"10.96.0.1:80 np30080", "fd00::2:80 np30080"},
		},
		{
			name: "a node port beats a health-check node port, however young",
			in: []proxier.Claim{
				{Port: port("lb", "10.96.0.1", nodePort(30001), healthCheck(30099)), Created: t0},
				{Port: port("lb", "fd00::1", ipv6, nodePort(30001), healthCheck(30099)), Created: t0},
				{Port: port("np", "10.96.0.2", nodePort(30099)), Created: t0.Add(time.Hour)},
			},
			want: []string{"10.96.0.1:80 np30001", "fd00::1:80 np30001", "10.96.0.2:80 np30099"},
			lost: []string{
				"health-check node port 30099 left out: it is also the node port of default/np",
				"health-check node port 30099 left out: it is also the node port of default/np",
			},
		},
		{
			name: "a UDP node port leaves the health check alone",
			in: []proxier.Claim{
				{Port: port("lb", "10.96.0.1", nodePort(30001), healthCheck(30099))},
				{Port: port("np", "10.96.0.2", proto(v1.ProtocolUDP), nodePort(30099))},
			},
			want: []string{"10.96.0.1:80 np30001 hc30099", "10.96.0.2:80 np30099"},
		},
		{
			name: "two health checks: the older service keeps it on all its ports",
			in: []proxier.Claim{
				{Port: port("a", "10.96.0.1", healthCheck(30099)), Created: t0},
				{Port: port("a", "10.96.0.1", named("https"), portNo(443), healthCheck(30099)), Created: t0},
				{Port: port("b", "10.96.0.2", healthCheck(30099)), Created: t0},
			},
			want: []string{"10.96.0.1:80 hc30099", "10.96.0.1:443 hc30099", "10.96.0.2:80"},
			lost: []string{"health-check node port 30099 left out: it is also the health-check node port of default/a"},
		},
		{
			name: "a health check on its own node port",
			in:   []proxier.Claim{{Port: port("a", "10.96.0.1", nodePort(30099), healthCheck(30099))}},
			want: []string{"10.96.0.1:80 np30099"},
			lost: []string{"health-check node port 30099 left out: it is also the node port of its port http/TCP"},
		},
		{
			name: "two cluster IPs: the younger port is left out, and its other frontends freed",
			in: []proxier.Claim{
				{Port: port("a", "10.96.0.1"), Created: t0},
				{Port: port("b", "10.96.0.1", external("192.0.2.1"), nodePort(30001)), Created: t0.Add(time.Minute)},
				{Port: port("c", "10.96.0.3", external("192.0.2.1"), nodePort(30001)), Created: t0.Add(time.Hour)},
			},
			want: []string{"10.96.0.1:80", "-", "10.96.0.3:80 ext[192.0.2.1] np30001"},
			lost: []string{"port http/TCP left out: its cluster IP 10.96.0.1:80/TCP is also the cluster IP of default/a"},
		},
		{
			name: "two ports of one service on one frontend: the port name decides",
			in: []proxier.Claim{
				{Port: port("a", "10.96.0.1", named("web"), nodePort(30001))},
				{Port: port("a", "10.96.0.1", named("api"), nodePort(30002))},
			},
			want: []string{"-", "10.96.0.1:80 np30002"},
			lost: []string{"port web/TCP left out: its cluster IP 10.96.0.1:80/TCP is also the cluster IP of its port api/TCP"},
		},
		{
			name: "a port's own repeats are dropped quietly",
			in: []proxier.Claim{
				{Port: port("a", "10.96.0.1", external("10.96.0.1", "192.0.2.1", "192.0.2.1", "198.51.100.1"), lbIPs("198.51.100.1"))},
			},
			want: []string{"10.96.0.1:80 ext[192.0.2.1] lb[198.51.100.1]"},
		},
		{
			name: "an external IP on a node address and another's node port is no conflict (as in kube-proxy)",
			in: []proxier.Claim{
				{Port: port("a", "10.96.0.1", nodePort(30080))},
				{Port: port("b", "10.96.0.2", external("192.168.1.10"), portNo(30080))},
				{Port: port("c", "10.96.0.3", external("0.0.0.0"), portNo(30080))},
			},
			want: []string{"10.96.0.1:80 np30080", "10.96.0.2:30080 ext[192.168.1.10]", "10.96.0.3:30080 ext[0.0.0.0]"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			check := func(in []proxier.Claim, perm []int) {
				t.Helper()
				res := proxier.ResolveFrontends(in)
				if len(res.Ports) != len(in) {
					t.Fatalf("%d ports for %d claims", len(res.Ports), len(in))
				}
				for i, sp := range res.Ports {
					if got := describe(sp); got != c.want[perm[i]] {
						t.Errorf("port %d (%s): %s, want %s", perm[i], in[i].Port.Name, got, c.want[perm[i]])
					}
					if sp != nil && sp != in[i].Port && describe(sp) == describe(in[i].Port) {
						t.Errorf("port %d copied though it lost nothing", perm[i])
					}
					if sp != nil && sp.Name != in[i].Port.Name {
						t.Errorf("port %d renamed %s", perm[i], sp.Name)
					}
				}
				var lost []string
				for _, cf := range res.Conflicts {
					lost = append(lost, cf.String())
				}
				if !slices.Equal(lost, c.lost) {
					t.Errorf("conflicts\n%s\nwant\n%s", strings.Join(lost, "\n"), strings.Join(c.lost, "\n"))
				}
			}
			ident := make([]int, len(c.in))
			for i := range ident {
				ident[i] = i
			}
			before := make([]string, len(c.in))
			for i, cl := range c.in {
				before[i] = describe(cl.Port)
			}
			check(c.in, ident)
			// The outcome depends on the claims, not on their order.
			rng := rand.New(rand.NewPCG(1, 2))
			for range 10 {
				perm := rng.Perm(len(c.in))
				in := make([]proxier.Claim, len(c.in))
				for i, p := range perm {
					in[i] = c.in[p]
				}
				check(in, perm)
			}
			for i, cl := range c.in {
				if describe(cl.Port) != before[i] {
					t.Errorf("input port %d modified: %s", i, describe(cl.Port))
				}
			}
		})
	}
}

// FuzzResolveFrontends checks, on ports drawn from a few addresses and port numbers (so that
// they collide), that the kept ports never ask the kernel for one frontend twice, that they only
// lose frontends, and that the outcome does not depend on the order of the claims.
func FuzzResolveFrontends(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15})
	f.Add([]byte{0x11, 0x11, 0x11, 0x11, 0x22, 0x22, 0x22, 0x22, 0x11, 0x21, 0x31, 0x41})
	f.Add([]byte("external IPs everywhere, node ports too"))
	f.Fuzz(func(t *testing.T, data []byte) {
		pool := []string{"10.0.0.1", "10.0.0.2", "10.0.0.3", "0.0.0.0"}
		var in []proxier.Claim
		for i := 0; i+4 <= len(data) && len(in) < 16; i += 4 {
			b := data[i : i+4]
			sp := port(fmt.Sprint("s", b[0]&3), pool[b[0]>>2&3], portNo(80+uint16(b[0]>>4&1)), named(fmt.Sprint("p", b[0]>>5&1)))
			if b[0]>>6&1 == 1 {
				sp.Name.Protocol = v1.ProtocolUDP
			}
			for j := range 3 {
				if b[1]>>j&1 == 1 {
					sp.ExternalIPs = append(sp.ExternalIPs, netip.MustParseAddr(pool[(b[1]>>(3+j))&3]))
				}
			}
			if b[2]&1 == 1 {
				sp.LoadBalancerIPs = addrs(pool[b[2]>>1&3])
			}
			if b[3]&1 == 1 {
				sp.NodePort = 30000 + uint16(b[3]>>1&3)
			}
			if b[3]&8 == 8 {
				sp.HealthCheckNodePort = 30000 + uint16(b[3]>>4&3)
			}
			if slices.ContainsFunc(in, func(c proxier.Claim) bool { return c.Port.Name == sp.Name }) {
				continue // a service port name is unique in the tracker
			}
			in = append(in, proxier.Claim{Port: sp, Created: t0.Add(time.Duration(b[2]>>3&3) * time.Minute)})
		}
		res := proxier.ResolveFrontends(in)
		type key struct {
			addr  netip.Addr
			port  uint16
			proto v1.Protocol
			node  bool
		}
		owner := map[key]proxier.ServicePortName{}
		hc := map[uint16]types.NamespacedName{}
		claim := func(sp *proxier.ServicePort, k key) {
			if o, ok := owner[k]; ok {
				t.Fatalf("%v claimed by %s and %s", k, o, sp.Name)
			}
			owner[k] = sp.Name
		}
		for i, sp := range res.Ports {
			if sp == nil {
				continue
			}
			orig := in[i].Port
			if sp.Name != orig.Name || sp.ClusterIP != orig.ClusterIP || sp.Port != orig.Port ||
				(sp.NodePort != 0 && sp.NodePort != orig.NodePort) || (sp.HealthCheckNodePort != 0 && sp.HealthCheckNodePort != orig.HealthCheckNodePort) {
				t.Fatalf("port %s changed beyond losing frontends: %s from %s", sp.Name, describe(sp), describe(orig))
			}
			claim(sp, key{sp.ClusterIP, sp.Port, sp.Name.Protocol, false})
			for _, a := range slices.Concat(sp.LoadBalancerIPs, sp.ExternalIPs) {
				if !slices.Contains(orig.ExternalIPs, a) && !slices.Contains(orig.LoadBalancerIPs, a) {
					t.Fatalf("port %s gained %s", sp.Name, a)
				}
				claim(sp, key{a, sp.Port, sp.Name.Protocol, false})
			}
			if sp.NodePort != 0 {
				claim(sp, key{netip.IPv4Unspecified(), sp.NodePort, sp.Name.Protocol, true})
			}
			if sp.HealthCheckNodePort != 0 {
				if o, ok := hc[sp.HealthCheckNodePort]; ok && o != sp.Name.NamespacedName {
					t.Fatalf("health check %d kept by %s and %s", sp.HealthCheckNodePort, o, sp.Name.NamespacedName)
				}
				hc[sp.HealthCheckNodePort] = sp.Name.NamespacedName
			}
		}
		for p, n := range hc {
			if o, ok := owner[key{netip.IPv4Unspecified(), p, v1.ProtocolTCP, true}]; ok {
				t.Fatalf("health check %d of %s is the node port of %s", p, n, o)
			}
		}
		slices.Reverse(in)
		rev := proxier.ResolveFrontends(in)
		slices.Reverse(rev.Ports)
		for i := range res.Ports {
			if describe(res.Ports[i]) != describe(rev.Ports[i]) {
				t.Fatalf("order changed the outcome for port %d: %s, reversed %s", i, describe(res.Ports[i]), describe(rev.Ports[i]))
			}
		}
		if !slices.Equal(res.Conflicts, rev.Conflicts) {
			t.Fatalf("order changed the conflicts: %v, reversed %v", res.Conflicts, rev.Conflicts)
		}
	})
}
