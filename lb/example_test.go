package lb_test

import (
	"bytes"
	"fmt"
	"os"
	"slices"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"nodeagent/lb"
)

// seedObjects reads the seed manifests of the tutorial (examples/ holds them verbatim).
func seedObjects() (pools []*lb.IPAddressPool, ads []*lb.L2Advertisement, svcs []*v1.Service, eps []*discoveryv1.EndpointSlice) {
	for _, file := range []string{"../examples/metallb.yaml", "../examples/demoapp.yaml", "../examples/demoapp-endpoints.yaml"} {
		data, err := os.ReadFile(file)
		if err != nil {
			panic(err)
		}
		for _, doc := range bytes.Split(data, []byte("\n---")) {
			var tm metav1.TypeMeta
			if err := yaml.Unmarshal(doc, &tm); err != nil {
				panic(err)
			}
			var obj any
			switch tm.Kind {
			case "IPAddressPool":
				p := &lb.IPAddressPool{}
				pools, obj = append(pools, p), p
			case "L2Advertisement":
				a := &lb.L2Advertisement{}
				ads, obj = append(ads, a), a
			case "Service":
				s := &v1.Service{}
				svcs, obj = append(svcs, s), s
			case "EndpointSlice":
				e := &discoveryv1.EndpointSlice{}
				eps, obj = append(eps, e), e
			default:
				continue
			}
			if err := yaml.UnmarshalStrict(doc, obj); err != nil {
				panic(fmt.Sprintf("%s: %v", file, err))
			}
		}
	}
	return pools, ads, svcs, eps
}

// The seed's MetalLB example end to end: the demoapp-lb Service gets the first address of the
// pool, exactly one of the three nodes answers ARP for it on ens33, and the proxier sees the
// address in the service's status.
func Example() {
	pools, ads, services, epSlices := seedObjects()

	res := lb.Assign(lb.Input{Pools: pools, Services: services})
	for _, p := range res.Problems {
		fmt.Println("problem:", p)
	}
	for i, s := range services {
		services[i] = res.Apply(s) // what the proxier and the status writer get
		if ing := services[i].Status.LoadBalancer.Ingress; len(ing) > 0 {
			fmt.Printf("%s/%s: %s (ipMode %s)\n", s.Namespace, s.Name, ing[0].IP, *ing[0].IPMode)
		}
	}

	nodes := []string{"node01", "node02", "node03"}
	plan := lb.PlanL2(lb.L2Input{Assignments: res.Assignments, Services: services, EndpointSlices: epSlices,
		Pools: pools, Advertisements: ads, Alive: nodes})
	owners := 0
	for _, n := range nodes {
		if owned := lb.Owned(plan, n); len(owned) > 0 {
			owners++
			for addr, ifs := range owned {
				fmt.Printf("one node answers for %s on %v; next in line: %v\n", addr, ifs, slices.Contains(plan[0].Candidates[1:], n))
			}
		}
	}
	fmt.Println("owners:", owners)
	// Output:
	// default/demoapp-lb: 10.0.0.51 (ipMode VIP)
	// one node answers for 10.0.0.51 on [ens33]; next in line: false
	// owners: 1
}
