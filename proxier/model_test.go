package proxier

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// Test addresses follow the lab plan of DESIGN.md: nodes 10.0.0.151-153 (node01-03), pods
// 10.244.N.x on nodeN, services in 10.96.0.0/12, LB pool 10.0.0.51-80, IPv6 fd00:96::/108.

func svc(name string, mut func(*v1.Service)) *v1.Service {
	s := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec: v1.ServiceSpec{
			Type:       v1.ServiceTypeClusterIP,
			ClusterIP:  "10.96.0.10",
			ClusterIPs: []string{"10.96.0.10"},
			Ports:      []v1.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80, TargetPort: intstrFromInt(8080)}},
		},
	}
	if mut != nil {
		mut(s)
	}
	return s
}

type ep struct {
	ip, node                    string
	ready, serving, terminating *bool
}

func slice(svcName, name string, at discovery.AddressType, portName string, port int32, eps ...ep) *discovery.EndpointSlice {
	s := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: name, Labels: map[string]string{LabelServiceName: svcName}},
		AddressType: at,
		Ports:       []discovery.EndpointPort{{Name: ptr.To(portName), Protocol: ptr.To(v1.ProtocolTCP), Port: ptr.To(port)}},
	}
	for _, e := range eps {
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{
			Addresses: []string{e.ip}, NodeName: ptr.To(e.node),
			Conditions: discovery.EndpointConditions{Ready: e.ready, Serving: e.serving, Terminating: e.terminating},
		})
	}
	return s
}

func addrsString(eps []Endpoint) string {
	var s []string
	for _, e := range eps {
		s = append(s, e.String())
	}
	return strings.Join(s, ",")
}

func TestServicePorts(t *testing.T) {
	three := slice("web", "web-1", discovery.AddressTypeIPv4, "http", 8080,
		ep{ip: "10.244.1.59", node: "node01"}, ep{ip: "10.244.2.48", node: "node02"}, ep{ip: "10.244.3.44", node: "node03"})
	cases := []struct {
		name   string
		svc    *v1.Service
		slices []*discovery.EndpointSlice
		check  func(t *testing.T, sps []*ServicePort, problems []Problem)
	}{
		{
			name: "cluster IP with three endpoints", svc: svc("web", nil), slices: []*discovery.EndpointSlice{three},
			check: func(t *testing.T, sps []*ServicePort, _ []Problem) {
				if len(sps) != 1 {
					t.Fatalf("got %d ports", len(sps))
				}
				sp := sps[0]
				if sp.ClusterIP != netip.MustParseAddr("10.96.0.10") || sp.Port != 80 || sp.NodePort != 0 {
					t.Errorf("frontend %v:%d np %d", sp.ClusterIP, sp.Port, sp.NodePort)
				}
				if got := addrsString(sp.ClusterEndpoints); got != "10.244.1.59:8080,10.244.2.48:8080,10.244.3.44:8080" {
					t.Errorf("cluster endpoints %s", got)
				}
				if got := addrsString(sp.LocalEndpoints); got != "10.244.1.59:8080" {
					t.Errorf("local endpoints %s", got)
				}
				if got := addrsString(sp.InternalEndpoints()); got != addrsString(sp.ClusterEndpoints) {
					t.Errorf("internal endpoints %s", got)
				}
			},
		},
		{
			name: "headless", svc: svc("web", func(s *v1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "None", []string{"None"} }),
			slices: []*discovery.EndpointSlice{three},
			check: func(t *testing.T, sps []*ServicePort, _ []Problem) {
				if len(sps) != 0 {
					t.Errorf("headless service got %d ports", len(sps))
				}
			},
		},
		{
			name: "external name", svc: svc("web", func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeExternalName; s.Spec.ExternalName = "redis.ik8s.io" }),
			check: func(t *testing.T, sps []*ServicePort, _ []Problem) {
				if len(sps) != 0 {
					t.Errorf("ExternalName service got %d ports", len(sps))
				}
			},
		},
		{
			name: "other proxy's service", svc: svc("web", func(s *v1.Service) { s.Labels = map[string]string{LabelServiceProxyName: "other"} }),
			check: func(t *testing.T, sps []*ServicePort, _ []Problem) {
				if len(sps) != 0 {
					t.Errorf("service-proxy-name service got %d ports", len(sps))
				}
			},
		},
		{
			name: "load balancer ETP Local with ingress, external IPs and node port",
			svc: svc("web", func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
				s.Spec.HealthCheckNodePort = 31999
				s.Spec.Ports[0].NodePort = 32725
				s.Spec.ExternalIPs = []string{"10.0.0.200"}
				s.Spec.LoadBalancerSourceRanges = []string{"10.0.0.0/24"}
				s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "10.0.0.51"}, {IP: "10.0.0.52", IPMode: ptr.To(v1.LoadBalancerIPModeProxy)}}
			}),
			slices: []*discovery.EndpointSlice{three},
			check: func(t *testing.T, sps []*ServicePort, _ []Problem) {
				sp := sps[0]
				if sp.NodePort != 32725 || sp.HealthCheckNodePort != 31999 || !sp.ExternalPolicyLocal {
					t.Errorf("np %d hc %d etp %v", sp.NodePort, sp.HealthCheckNodePort, sp.ExternalPolicyLocal)
				}
				if len(sp.LoadBalancerIPs) != 1 || sp.LoadBalancerIPs[0].String() != "10.0.0.51" {
					t.Errorf("LB IPs %v (ipMode Proxy must be left out)", sp.LoadBalancerIPs)
				}
				if len(sp.ExternalIPs) != 1 || len(sp.LoadBalancerSourceRanges) != 1 {
					t.Errorf("external %v ranges %v", sp.ExternalIPs, sp.LoadBalancerSourceRanges)
				}
				if got := addrsString(sp.ExternalEndpoints()); got != "10.244.1.59:8080" {
					t.Errorf("external endpoints %s", got)
				}
				if got := addrsString(sp.InternalEndpoints()); !strings.Contains(got, "10.244.3.44") {
					t.Errorf("internal endpoints %s", got)
				}
			},
		},
		{
			name: "ITP Local and affinity with timeout",
			svc: svc("web", func(s *v1.Service) {
				s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
				s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
				s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To(int32(60))}}
			}),
			slices: []*discovery.EndpointSlice{three},
			check: func(t *testing.T, sps []*ServicePort, _ []Problem) {
				sp := sps[0]
				if !sp.SessionAffinity || sp.AffinityTimeout != time.Minute {
					t.Errorf("affinity %v %v", sp.SessionAffinity, sp.AffinityTimeout)
				}
				if got := addrsString(sp.InternalEndpoints()); got != "10.244.1.59:8080" {
					t.Errorf("internal endpoints %s", got)
				}
			},
		},
		{
			name: "default affinity timeout",
			svc:  svc("web", func(s *v1.Service) { s.Spec.SessionAffinity = v1.ServiceAffinityClientIP }),
			check: func(t *testing.T, sps []*ServicePort, _ []Problem) {
				if sps[0].AffinityTimeout != DefaultAffinityTimeout {
					t.Errorf("timeout %v", sps[0].AffinityTimeout)
				}
			},
		},
		{
			name: "terminating fallback only when nothing is ready",
			svc:  svc("web", nil),
			slices: []*discovery.EndpointSlice{slice("web", "web-1", discovery.AddressTypeIPv4, "http", 8080,
				ep{ip: "10.244.1.5", node: "node01", ready: ptr.To(false), serving: ptr.To(true), terminating: ptr.To(true)},
				ep{ip: "10.244.2.5", node: "node02", ready: ptr.To(false), serving: ptr.To(false), terminating: ptr.To(true)},
				ep{ip: "10.244.2.6", node: "node02", ready: ptr.To(true)},
			)},
			check: func(t *testing.T, sps []*ServicePort, _ []Problem) {
				sp := sps[0]
				if got := addrsString(sp.ClusterEndpoints); got != "10.244.2.6:8080" {
					t.Errorf("cluster endpoints %s", got)
				}
				if got := addrsString(sp.LocalEndpoints); got != "10.244.1.5:8080" {
					t.Errorf("local endpoints %s (serving-terminating fallback on node01)", got)
				}
				if len(sp.AllEndpoints) != 3 {
					t.Errorf("all endpoints %d", len(sp.AllEndpoints))
				}
			},
		},
		{
			// kube-proxy (endpointslicecache.go) reads a missing serving condition as true, not as
			// a copy of ready: a terminating endpoint that publishes only ready=false still drains.
			name: "missing serving condition reads as serving",
			slices: []*discovery.EndpointSlice{slice("web", "web-1", discovery.AddressTypeIPv4, "http", 8080,
				ep{ip: "10.244.1.5", node: "node01", ready: ptr.To(false), terminating: ptr.To(true)},
				ep{ip: "10.244.2.5", node: "node02", ready: ptr.To(false)},
			)},
			svc: svc("web", nil),
			check: func(t *testing.T, sps []*ServicePort, _ []Problem) {
				sp := sps[0]
				for _, e := range sp.AllEndpoints {
					if !e.Serving {
						t.Errorf("%s: serving condition unset, read as not serving", e)
					}
				}
				if got := addrsString(sp.ClusterEndpoints); got != "10.244.1.5:8080" {
					t.Errorf("cluster endpoints %q, want the serving-terminating fallback 10.244.1.5:8080", got)
				}
			},
		},
		{
			name: "named ports match by service port name, unnamed by empty name",
			svc: svc("tomcat", func(s *v1.Service) {
				s.Spec.Ports = []v1.ServicePort{{Name: "http", Port: 8080}, {Name: "ajp", Port: 8009}}
			}),
			slices: []*discovery.EndpointSlice{{
				ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: "tomcat-1", Labels: map[string]string{LabelServiceName: "tomcat"}},
				AddressType: discovery.AddressTypeIPv4,
				Ports: []discovery.EndpointPort{
					{Name: ptr.To("ajp"), Port: ptr.To(int32(18009))},
					{Name: ptr.To("http"), Port: ptr.To(int32(18080))},
				},
				Endpoints: []discovery.Endpoint{{Addresses: []string{"10.244.1.7"}}},
			}},
			check: func(t *testing.T, sps []*ServicePort, _ []Problem) {
				if len(sps) != 2 {
					t.Fatalf("got %d ports", len(sps))
				}
				for _, sp := range sps {
					want := map[string]string{"http": "10.244.1.7:18080", "ajp": "10.244.1.7:18009"}[sp.Name.Port]
					if got := addrsString(sp.ClusterEndpoints); got != want {
						t.Errorf("%s: %s, want %s", sp.Name, got, want)
					}
				}
			},
		},
		{
			name: "dual stack gets both families with their own slices",
			svc: svc("web", func(s *v1.Service) {
				s.Spec.ClusterIPs = []string{"10.96.0.10", "fd00:96::10"}
				s.Spec.Ports[0].Protocol = v1.ProtocolUDP
			}),
			slices: []*discovery.EndpointSlice{
				func() *discovery.EndpointSlice {
					s := slice("web", "web-v6", discovery.AddressTypeIPv6, "http", 8080, ep{ip: "fd00:244:1::5", node: "node01"})
					s.Ports[0].Protocol = ptr.To(v1.ProtocolUDP)
					return s
				}(),
			},
			check: func(t *testing.T, sps []*ServicePort, _ []Problem) {
				if len(sps) != 2 || sps[0].Name.Family != IPv4 || sps[1].Name.Family != IPv6 {
					t.Fatalf("ports %v", sps)
				}
				if len(sps[0].ClusterEndpoints) != 0 || addrsString(sps[1].ClusterEndpoints) != "[fd00:244:1::5]:8080" {
					t.Errorf("v4 %v v6 %v", sps[0].ClusterEndpoints, sps[1].ClusterEndpoints)
				}
			},
		},
		{
			name: "invalid parts are problems, the rest stays",
			svc: svc("web", func(s *v1.Service) {
				s.Spec.ExternalIPs = []string{"10.0.0.300", "10.0.0.200"}
				s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Name: "bad", Port: 70000})
			}),
			check: func(t *testing.T, sps []*ServicePort, problems []Problem) {
				if len(sps) != 1 || len(sps[0].ExternalIPs) != 1 {
					t.Errorf("ports %v", sps)
				}
				if len(problems) != 2 {
					t.Errorf("problems %v", problems)
				}
			},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sps, problems := ServicePorts(c.svc, c.slices, Node{Name: "node01"})
			c.check(t, sps, problems)
		})
	}
}

func TestTrackerIncrementalAndConflicts(t *testing.T) {
	tr := NewTracker(Node{Name: "node01"}, Config{}, nil)
	calls := 0
	tr.OnChange = func() { calls++ }
	a := svc("a", nil)
	b := svc("b", nil) // same cluster IP and port as a: conflict, a wins by name
	tr.Upsert(a)
	tr.Upsert(b)
	tr.Synced()
	st, ch := tr.Snapshot()
	if !ch.Full || !tr.Ready() {
		t.Fatalf("first snapshot must be full and ready")
	}
	if len(st.Services) != 1 || st.Services[0].Name.Name != "a" {
		t.Fatalf("services %v", st.Services)
	}
	if len(st.Problems) != 1 || !strings.Contains(st.Problems[0].String(), "is also the cluster IP of default/a") {
		t.Fatalf("problems %v", st.Problems)
	}
	// A no-op update changes nothing.
	tr.Upsert(a.DeepCopy())
	if tr.Pending() {
		t.Fatalf("no-op update marked a change")
	}
	// Deleting a gives the address to b, and both are reported as changed.
	tr.Delete(a)
	st, ch = tr.Snapshot()
	if ch.Full || !ch.Changed(types.NamespacedName{Namespace: "default", Name: "a"}) || !ch.Changed(types.NamespacedName{Namespace: "default", Name: "b"}) {
		t.Fatalf("changes %+v", ch)
	}
	if len(st.Services) != 1 || st.Services[0].Name.Name != "b" || len(st.Problems) != 0 {
		t.Fatalf("services %v problems %v", st.Services, st.Problems)
	}
	// An endpoint change marks only its service.
	c := svc("c", func(s *v1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "10.96.0.11", []string{"10.96.0.11"} })
	tr.Upsert(c)
	tr.Snapshot()
	tr.Upsert(slice("c", "c-1", discovery.AddressTypeIPv4, "http", 8080, ep{ip: "10.244.1.9", node: "node01"}))
	st, ch = tr.Snapshot()
	if len(ch.Services) != 1 || !ch.Changed(types.NamespacedName{Namespace: "default", Name: "c"}) {
		t.Fatalf("changes %+v", ch)
	}
	if len(st.Services) != 2 || len(st.Services[1].LocalEndpoints) != 1 {
		t.Fatalf("services %v", st.Services)
	}
	if calls == 0 {
		t.Errorf("OnChange never called")
	}
}

func intstrFromInt(i int) intstr.IntOrString { return intstr.FromInt(i) }
