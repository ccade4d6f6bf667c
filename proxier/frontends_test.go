package proxier_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"nodeagent/proxier"
)

// claimOf is service default/name, created at t0 plus age, claiming ports.
func claimOf(name string, age time.Duration, ports ...*proxier.ServicePort) proxier.ServiceClaim {
	return proxier.ServiceClaim{Name: types.NamespacedName{Namespace: "default", Name: name}, Created: t0.Add(age), Ports: ports}
}

// outcomeString renders what each service keeps and the problems its owner reads.
func outcomeString(os []proxier.ServiceOutcome) string {
	var out []string
	for _, o := range os {
		var ports []string
		for _, sp := range o.Ports {
			ports = append(ports, describe(sp))
		}
		s := o.Name.Name + " [" + strings.Join(ports, ", ") + "]"
		for _, p := range o.Problems {
			if p.Object != o.Name || p.Kind != "Service" {
				s += fmt.Sprintf(" (problem of %s %s)", p.Kind, p.Object)
			}
			s += " !" + p.Reason
		}
		if len(o.Lost) == 0 != (len(o.Problems) == 0) {
			s += fmt.Sprintf(" (lost %d, problems %d)", len(o.Lost), len(o.Problems))
		}
		out = append(out, s)
	}
	return strings.Join(out, "; ")
}

func TestResolveServices(t *testing.T) {
	for _, c := range []struct {
		name string
		in   []proxier.ServiceClaim
		want string
	}{
		{
			name: "no conflict: every port kept as it is",
			in: []proxier.ServiceClaim{
				claimOf("a", 0, port("a", "10.96.0.1", nodePort(30001))),
				claimOf("b", 0, port("b", "10.96.0.2", external("192.0.2.1"))),
			},
			want: "a [10.96.0.1:80 np30001]; b [10.96.0.2:80 ext[192.0.2.1]]",
		},
		{
			name: "a service without ports keeps nothing and loses nothing",
			in:   []proxier.ServiceClaim{claimOf("gone", 0), claimOf("a", 0, port("a", "10.96.0.1"))},
			want: "gone []; a [10.96.0.1:80]",
		},
		{
			name: "a lost cluster IP leaves the port out, the service's other ports stay",
			in: []proxier.ServiceClaim{
				claimOf("a", -time.Hour, port("a", "10.96.0.1")),
				claimOf("b", 0, port("b", "10.96.0.1"), port("b", "10.96.0.2", named("admin"))),
			},
			want: "a [10.96.0.1:80]; b [10.96.0.2:80] !port http/TCP left out: its cluster IP 10.96.0.1:80/TCP is also the cluster IP of default/a",
		},
		{
			name: "input order does not decide: the older keeps a node port",
			in: []proxier.ServiceClaim{
				claimOf("b", 0, port("b", "10.96.0.2", nodePort(30080))),
				claimOf("a", time.Minute, port("a", "10.96.0.1", nodePort(30080))),
			},
			want: "b [10.96.0.2:80 np30080]; a [10.96.0.1:80] !node port 30080/TCP of port http/TCP left out: it is also the node port of default/b",
		},
		{
			name: "a dual-stack port losing one health check per family: one problem",
			in: []proxier.ServiceClaim{
				claimOf("a", 0, port("a", "10.96.0.1", healthCheck(32000))),
				claimOf("b", time.Minute, port("b", "10.96.0.2", healthCheck(32000)),
					port("b", "fd00::2", ipv6, healthCheck(32000))),
			},
			want: "a [10.96.0.1:80 hc32000]; b [10.96.0.2:80, fd00::2:80] !health-check node port 32000 left out: it is also the health-check node port of default/a",
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := outcomeString(proxier.ResolveServices(c.in)); got != c.want {
				t.Errorf("got  %s\nwant %s", got, c.want)
			}
		})
	}
}
