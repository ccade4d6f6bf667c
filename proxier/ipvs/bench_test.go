package ipvs

import (
	"fmt"
	"log/slog"
	"net/netip"
	"testing"

	v1 "k8s.io/api/core/v1"

	"nodeagent/proxier"
)

// benchState is n ClusterIP+NodePort services of 10 endpoints each, as bench shapes them.
func benchState(n int) *proxier.State {
	st := &proxier.State{Node: proxier.Node{Name: "node01", IPs: []netip.Addr{addr("10.0.0.151")}},
		Config: proxier.Config{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.128.0.0/9")}}}
	for i := range n {
		sp := &proxier.ServicePort{Name: spn("bench", fmt.Sprintf("svc-%05d", i), "http", v1.ProtocolTCP, proxier.IPv4),
			ClusterIP: nth("10.96.0.0", i+1), Port: 80, NodePort: uint16(20000 + i)}
		var eps []proxier.Endpoint
		for j := range 10 {
			eps = append(eps, proxier.Endpoint{Addr: nth("10.128.0.0", i*10+j), Port: 8080, NodeName: "node02", Ready: true, Serving: true})
		}
		st.Services = append(st.Services, withEndpoints(sp, eps...))
	}
	return st
}

func nth(base string, n int) netip.Addr {
	b := addr(base).As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) + uint32(n)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func benchEndpointChange(b *testing.B, n int) {
	p, _ := fakeProxier(slog.New(slog.DiscardHandler))
	st := benchState(n)
	mustSync(b, p, st, proxier.Changes{Full: true})
	victim := st.Services[n/2]
	orig := victim.AllEndpoints
	moved := append([]proxier.Endpoint(nil), orig...)
	moved[0].Addr = addr("10.127.0.1")
	ch := changed(victim.Name.NamespacedName)
	i := 0
	for b.Loop() {
		if i%2 == 0 {
			withEndpoints(victim, moved...)
		} else {
			withEndpoints(victim, orig...)
		}
		i++
		mustSync(b, p, st, ch)
	}
}

func BenchmarkEndpointChange1000(b *testing.B) { benchEndpointChange(b, 1000) }
func BenchmarkEndpointChange5000(b *testing.B) { benchEndpointChange(b, 5000) }
