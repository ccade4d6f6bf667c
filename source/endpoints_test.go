package source

import (
	"fmt"
	"testing"

	discoveryv1 "k8s.io/api/discovery/v1"
)

// TestTrafficDistributionHints: Pods of a service with a trafficDistribution that prefers
// closeness get the hints the EndpointSlice controller gives (their zone; their node too for
// PreferSameNode), only when ready; other services, and the topology-mode annotation, get none.
func TestTrafficDistributionHints(t *testing.T) {
	nodes := `apiVersion: v1
kind: Node
metadata: {name: node01, labels: {topology.kubernetes.io/zone: z1}}
---
apiVersion: v1
kind: Node
metadata: {name: node02}
`
	pods := ""
	for _, p := range []struct{ name, node, ip, ready string }{
		{"p1", "node01", "10.244.1.5", "True"}, {"p2", "node01", "10.244.1.6", "False"}, {"p3", "node02", "10.244.2.5", "True"},
	} {
		pods += fmt.Sprintf("---\napiVersion: v1\nkind: Pod\nmetadata: {name: %s, labels: {app: web}}\nspec: {nodeName: %s, containers: [{name: c}]}\nstatus: {podIP: %s, conditions: [{type: Ready, status: '%s'}]}\n",
			p.name, p.node, p.ip, p.ready)
	}
	cases := []struct {
		name, spec, annotations string
		want                    map[string]string // address → zones/nodes hinted
	}{
		{name: "none", spec: "", want: map[string]string{"10.244.1.5": "", "10.244.1.6": "", "10.244.2.5": ""}},
		{name: "PreferClose", spec: "trafficDistribution: PreferClose, ", want: map[string]string{"10.244.1.5": "z1/", "10.244.1.6": "", "10.244.2.5": ""}},
		{name: "PreferSameZone", spec: "trafficDistribution: PreferSameZone, ", want: map[string]string{"10.244.1.5": "z1/", "10.244.1.6": "", "10.244.2.5": ""}},
		{name: "PreferSameNode", spec: "trafficDistribution: PreferSameNode, ", want: map[string]string{"10.244.1.5": "z1/node01", "10.244.1.6": "", "10.244.2.5": "/node02"}},
		{name: "topology-mode Auto turns it off", spec: "trafficDistribution: PreferClose, ", annotations: "annotations: {service.kubernetes.io/topology-mode: Auto}, ",
			want: map[string]string{"10.244.1.5": "", "10.244.1.6": "", "10.244.2.5": ""}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			svc := fmt.Sprintf("apiVersion: v1\nkind: Service\nmetadata: {name: web, %s}\nspec: {%sselector: {app: web}, ports: [{port: 80}]}\n", c.annotations, c.spec)
			objs, problems := loadDir(t, Manifests{}, map[string]string{"svc.yaml": svc, "nodes.yaml": nodes, "pods.yaml": pods})
			if len(problems) > 0 {
				t.Fatal(problems)
			}
			got := map[string]string{}
			for _, es := range Of[*discoveryv1.EndpointSlice](objs) {
				for _, e := range es.Endpoints {
					h := ""
					if e.Hints != nil {
						for _, z := range e.Hints.ForZones {
							h += z.Name
						}
						h += "/"
						for _, n := range e.Hints.ForNodes {
							h += n.Name
						}
					}
					got[e.Addresses[0]] = h
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(c.want) {
				t.Errorf("hints %v, want %v", got, c.want)
			}
		})
	}
}
