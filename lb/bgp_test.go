package lb

import (
	"net/netip"
	"slices"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
)

func TestPlanBGP(t *testing.T) {
	peer := &BGPPeer{}
	peer.Namespace, peer.Name = "metallb-system", "router"
	peer.Spec = BGPPeerSpec{MyASN: 64513, ASN: 64512, Address: "10.0.0.254"}
	pool := &IPAddressPool{}
	pool.Namespace, pool.Name = "metallb-system", "localip-pool"
	ad := &BGPAdvertisement{}
	ad.Namespace, ad.Name = "metallb-system", "all"
	local := v1.ServiceInternalTrafficPolicyLocal

	svc := func(name string, mutate func(*v1.Service)) *v1.Service {
		s := &v1.Service{}
		s.Namespace, s.Name = "default", name
		mutate(s)
		return s
	}
	slice := func(svc, node string) *discovery.EndpointSlice {
		ready := true
		sl := &discovery.EndpointSlice{AddressType: discovery.AddressTypeIPv4,
			Endpoints: []discovery.Endpoint{{Addresses: []string{"10.244.1.59"}, NodeName: &node, Conditions: discovery.EndpointConditions{Ready: &ready}}}}
		sl.Namespace, sl.Name = "default", svc+"-1"
		sl.Labels = map[string]string{discovery.LabelServiceName: svc}
		return sl
	}
	services := map[types.NamespacedName]*v1.Service{
		{Namespace: "default", Name: "lb"}: svc("lb", func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeLoadBalancer
			s.Spec.ClusterIPs = []string{"10.96.0.10"}
		}),
		{Namespace: "default", Name: "lb-local"}: svc("lb-local", func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeLoadBalancer
			s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		}),
		{Namespace: "default", Name: "ext"}: svc("ext", func(s *v1.Service) {
			s.Spec.ClusterIPs = []string{"10.96.0.20"}
			s.Spec.ExternalIPs = []string{"10.0.0.200"}
		}),
		{Namespace: "default", Name: "itp-local"}: svc("itp-local", func(s *v1.Service) {
			s.Spec.ClusterIPs = []string{"10.96.0.30"}
			s.Spec.InternalTrafficPolicy = &local
		}),
		{Namespace: "default", Name: "no-endpoints"}: svc("no-endpoints", func(s *v1.Service) {
			s.Spec.ClusterIPs = []string{"10.96.0.40"}
		}),
	}
	assignments := map[types.NamespacedName]Assignment{
		{Namespace: "default", Name: "lb"}:       {IPs: []netip.Addr{netip.MustParseAddr("10.0.0.51")}, Pool: "localip-pool"},
		{Namespace: "default", Name: "lb-local"}: {IPs: []netip.Addr{netip.MustParseAddr("10.0.0.52")}, Pool: "localip-pool"},
	}
	slices_ := []*discovery.EndpointSlice{slice("lb", "node01"), slice("lb-local", "node02"), slice("ext", "node02"), slice("itp-local", "node02")}

	for name, tc := range map[string]struct {
		node                    string
		clusterIPs, externalIPs bool
		want                    []string
	}{
		"LoadBalancer only":               {"node01", false, false, []string{"10.0.0.51/32"}},
		"ETP Local on its node":           {"node02", false, false, []string{"10.0.0.51/32", "10.0.0.52/32"}},
		"cluster IPs":                     {"node01", true, false, []string{"10.0.0.51/32", "10.96.0.10/32", "10.96.0.20/32"}},
		"cluster IPs, ITP Local node":     {"node02", true, false, []string{"10.0.0.51/32", "10.0.0.52/32", "10.96.0.10/32", "10.96.0.20/32", "10.96.0.30/32"}},
		"external IPs":                    {"node01", false, true, []string{"10.0.0.200/32", "10.0.0.51/32"}},
		"both, never without an endpoint": {"node03", true, true, []string{"10.0.0.200/32", "10.0.0.51/32", "10.96.0.10/32", "10.96.0.20/32"}},
	} {
		t.Run(name, func(t *testing.T) {
			peers, advs, problems := PlanBGP(BGPInput{Node: tc.node, Assignments: assignments, Services: services,
				EndpointSlices: slices_, Pools: []*IPAddressPool{pool}, Peers: []*BGPPeer{peer},
				Advertisements: []*BGPAdvertisement{ad}, ClusterIPs: tc.clusterIPs, ExternalIPs: tc.externalIPs})
			if len(problems) != 0 || len(peers) != 1 {
				t.Fatalf("peers %v problems %v", peers, problems)
			}
			var got []string
			for _, a := range advs {
				got = append(got, a.Prefix.String())
			}
			slices.Sort(got)
			if !slices.Equal(got, tc.want) {
				t.Errorf("routes %v, want %v", got, tc.want)
			}
		})
	}
}
