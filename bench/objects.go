// Package bench measures how fast Service changes reach the kernel and what the packet path
// costs, for every proxy mode, in network namespaces it creates: first full sync, single
// endpoint-change and service-add latency (event → kernel acknowledged), peak RSS, kernel object
// count, and TCP connect latency through a service against a direct connection.
package bench

import (
	"fmt"
	"net/netip"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Namespace is the Kubernetes namespace of generated objects.
const Namespace = "bench"

var (
	serviceBase  = netip.MustParseAddr("10.96.0.0")
	endpointBase = netip.MustParseAddr("10.128.0.0") // a /9 of pod addresses, far from the backend
)

// nth returns base + n (n < 2^24).
func nth(base netip.Addr, n int) netip.Addr {
	b := base.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += uint32(n)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// ServiceName names generated service i.
func ServiceName(i int) string { return fmt.Sprintf("svc-%05d", i) }

// ServiceIP is the cluster IP of generated service i.
func ServiceIP(i int) netip.Addr { return nth(serviceBase, i+1) }

// Service returns generated service i: a ClusterIP service on port 80.
func Service(i int) *v1.Service {
	ip := ServiceIP(i).String()
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: ServiceName(i)},
		Spec: v1.ServiceSpec{
			Type: v1.ServiceTypeClusterIP, ClusterIP: ip, ClusterIPs: []string{ip},
			Ports: []v1.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt(8080)}},
		},
	}
}

// Slice returns the EndpointSlice of service i with the given endpoint addresses on port 8080.
func Slice(i int, addrs []netip.Addr) *discovery.EndpointSlice {
	return namedSlice(ServiceName(i), addrs)
}

// namedSlice is the EndpointSlice of the service called svc with these endpoints on port 8080.
func namedSlice(svc string, addrs []netip.Addr) *discovery.EndpointSlice {
	name, proto, port := "http", v1.ProtocolTCP, int32(8080)
	s := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: svc + "-1",
			Labels: map[string]string{discovery.LabelServiceName: svc}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: &name, Protocol: &proto, Port: &port}},
	}
	ready := true
	s.Endpoints = make([]discovery.Endpoint, 0, len(addrs))
	for _, a := range addrs {
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{Addresses: []string{a.String()},
			Conditions: discovery.EndpointConditions{Ready: &ready}})
	}
	return s
}

// Endpoints returns the initial endpoint addresses of service i.
func Endpoints(i, perService int) []netip.Addr {
	out := make([]netip.Addr, perService)
	for j := range out {
		out[j] = nth(endpointBase, i*perService+j)
	}
	return out
}
