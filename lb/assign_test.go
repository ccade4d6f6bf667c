package lb

import (
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Test conventions: pools use the lab's plan (10.0.0.51-10.0.0.80, fd00:10::51-fd00:10::80) or
// small ranges in 10.1.x.x / fd00:1::; services live in "default" unless a test says otherwise and
// are created in the order of their creation offsets in seconds (all 0 unless given).

var t0 = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

type svcOpt func(*v1.Service)

func svc(name string, opts ...svcOpt) *v1.Service {
	ns, n, ok := strings.Cut(name, "/")
	if !ok {
		ns, n = "default", name
	}
	s := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: n, Namespace: ns, CreationTimestamp: metav1.NewTime(t0)},
		Spec: v1.ServiceSpec{Type: v1.ServiceTypeLoadBalancer, Selector: map[string]string{"app": n},
			Ports: []v1.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80}}},
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

func created(sec int) svcOpt {
	return func(s *v1.Service) { s.CreationTimestamp = metav1.NewTime(t0.Add(time.Duration(sec) * time.Second)) }
}

func ann(k, v string) svcOpt {
	return func(s *v1.Service) {
		if s.Annotations == nil {
			s.Annotations = map[string]string{}
		}
		s.Annotations[k] = v
	}
}

func share(key string) svcOpt { return ann(AnnotationAllowSharedIP, key) }
func lbIP(ip string) svcOpt   { return func(s *v1.Service) { s.Spec.LoadBalancerIP = ip } }
func fromPool(p string) svcOpt {
	return ann(AnnotationAddressPool, p)
}

func status(ips ...string) svcOpt {
	return func(s *v1.Service) {
		for _, ip := range ips {
			s.Status.LoadBalancer.Ingress = append(s.Status.LoadBalancer.Ingress, v1.LoadBalancerIngress{IP: ip})
		}
	}
}

func ports(ps ...string) svcOpt { // "TCP/80"
	return func(s *v1.Service) {
		s.Spec.Ports = nil
		for _, p := range ps {
			proto, num, _ := strings.Cut(p, "/")
			var n int32
			fmt.Sscan(num, &n)
			s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Protocol: v1.Protocol(proto), Port: n})
		}
	}
}

func local(selector string) svcOpt {
	return func(s *v1.Service) {
		s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		s.Spec.Selector = map[string]string{"app": selector}
	}
}

func families(policy v1.IPFamilyPolicy, fams ...v1.IPFamily) svcOpt {
	return func(s *v1.Service) { s.Spec.IPFamilyPolicy = &policy; s.Spec.IPFamilies = fams }
}

func class(c string) svcOpt { return func(s *v1.Service) { s.Spec.LoadBalancerClass = &c } }

func labelled(k, v string) svcOpt {
	return func(s *v1.Service) { s.Labels = map[string]string{k: v} }
}

func typ(t v1.ServiceType) svcOpt { return func(s *v1.Service) { s.Spec.Type = t } }

type poolOpt func(*IPAddressPool)

func mkpool(name string, opts ...any) *IPAddressPool {
	p := &IPAddressPool{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "metallb-system"}}
	for _, o := range opts {
		switch o := o.(type) {
		case string:
			p.Spec.Addresses = append(p.Spec.Addresses, o)
		case poolOpt:
			o(p)
		}
	}
	return p
}

var noAuto poolOpt = func(p *IPAddressPool) { f := false; p.Spec.AutoAssign = &f }
var buggy poolOpt = func(p *IPAddressPool) { p.Spec.AvoidBuggyIPs = true }

func alloc(a ServiceAllocation) poolOpt {
	return func(p *IPAddressPool) { p.Spec.AllocateTo = &a }
}

func sel(k, v string) []metav1.LabelSelector {
	return []metav1.LabelSelector{{MatchLabels: map[string]string{k: v}}}
}

var seedPool = mkpool("localip-pool", "10.0.0.51-10.0.0.80", buggy)

// summary renders a result as "ns/name" → "ip[,ip]@pool" and "ns/name" → "!reason".
func summary(r *Result) map[string]string {
	out := map[string]string{}
	for n, a := range r.Assignments {
		ips := make([]string, len(a.IPs))
		for i, ip := range a.IPs {
			ips[i] = ip.String()
		}
		out[n.String()] = strings.Join(ips, ",") + "@" + a.Pool
	}
	for _, p := range r.Problems {
		out[p.Kind+":"+p.Object.String()] = "!" + p.Reason
	}
	return out
}

func TestAssign(t *testing.T) {
	dual := families(v1.IPFamilyPolicyRequireDualStack, v1.IPv4Protocol, v1.IPv6Protocol)
	prefer := families(v1.IPFamilyPolicyPreferDualStack, v1.IPv4Protocol, v1.IPv6Protocol)
	v6 := families(v1.IPFamilyPolicySingleStack, v1.IPv6Protocol)
	dualPool := mkpool("dual", "10.0.0.51-10.0.0.80", "fd00:10::51-fd00:10::80")
	tests := []struct {
		name     string
		pools    []*IPAddressPool
		services []*v1.Service
		ns       []*v1.Namespace
		class    string
		// want maps "ns/name" to "ip[,ip]@pool", and "Service:ns/name" / "IPAddressPool:ns/name"
		// to "!" + a substring of the problem's reason.
		want map[string]string
	}{
		{
			name:     "seed demoapp-lb gets the first pool address",
			pools:    []*IPAddressPool{seedPool},
			services: []*v1.Service{svc("demoapp-lb")},
			want:     map[string]string{"default/demoapp-lb": "10.0.0.51@localip-pool"},
		},
		{
			name:  "older services first, then namespace/name",
			pools: []*IPAddressPool{seedPool},
			services: []*v1.Service{svc("a", created(2)), svc("z", created(1)), svc("b/m", created(2)),
				svc("a/m", created(2))},
			want: map[string]string{"default/z": "10.0.0.51@localip-pool", "a/m": "10.0.0.52@localip-pool",
				"b/m": "10.0.0.53@localip-pool", "default/a": "10.0.0.54@localip-pool"},
		},
		{
			name:     "status address kept, new older service does not take it",
			pools:    []*IPAddressPool{seedPool},
			services: []*v1.Service{svc("old", created(1)), svc("kept", created(5), status("10.0.0.51"))},
			want:     map[string]string{"default/kept": "10.0.0.51@localip-pool", "default/old": "10.0.0.52@localip-pool"},
		},
		{
			name:  "our status outside every pool (its pool gone), or a hostname, is replaced",
			pools: []*IPAddressPool{seedPool},
			services: []*v1.Service{svc("a", created(1), status("192.168.1.1"), ann(AnnotationAllocatedFromPool, "gone")),
				svc("b", created(2), status("garbage"), ann(AnnotationAllocatedFromPoolLegacy, "gone")),
				svc("c", created(3), ann(AnnotationAllocatedFromPool, "gone"), func(s *v1.Service) {
					s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{Hostname: "lb.example"}}
				})},
			want: map[string]string{"default/a": "10.0.0.51@localip-pool", "default/b": "10.0.0.52@localip-pool",
				"default/c": "10.0.0.53@localip-pool"},
		},
		{
			name:  "someone else's status (no annotation, outside every pool) is left alone",
			pools: []*IPAddressPool{seedPool},
			services: []*v1.Service{svc("cloud", created(1), status("192.168.1.1")),
				svc("aws", created(2), func(s *v1.Service) {
					s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{Hostname: "lb.example"}}
				}),
				svc("mixed", created(3), status("10.0.0.60", "fd00::1")),
				svc("pooled", created(4), status("10.0.0.70")), svc("empty", created(5), status(""))},
			want: map[string]string{
				"Service:default/cloud": "!status.loadBalancer.ingress holds 192.168.1.1, which no IPAddressPool has and which was not allocated here (no annotation metallb.io/ip-allocated-from-pool): left as it is",
				"Service:default/aws":   "!status.loadBalancer.ingress holds lb.example, which no IPAddressPool has and which was not allocated here (no annotation metallb.io/ip-allocated-from-pool): left as it is",
				"Service:default/mixed": "!status.loadBalancer.ingress holds fd00::1, which no IPAddressPool has and which was not allocated here (no annotation metallb.io/ip-allocated-from-pool): left as it is",
				// An address of a pool is taken as ours, annotated or not (written before the
				// annotation was, or by hand).
				"default/pooled": "10.0.0.70@localip-pool", "default/empty": "10.0.0.51@localip-pool"},
		},
		{
			name:     "two services claiming one status address: the older keeps it",
			pools:    []*IPAddressPool{seedPool},
			services: []*v1.Service{svc("new", created(2), status("10.0.0.60")), svc("old", created(1), status("10.0.0.60"))},
			want:     map[string]string{"default/old": "10.0.0.60@localip-pool", "default/new": "10.0.0.51@localip-pool"},
		},
		{
			name:  "requested addresses: in pool, outside, taken, buggy",
			pools: []*IPAddressPool{mkpool("p", "10.1.0.0/24", buggy)},
			services: []*v1.Service{
				svc("in", created(1), lbIP("10.1.0.9")),
				svc("out", created(2), lbIP("10.9.0.1")),
				svc("taken", created(3), ann(AnnotationLoadBalancerIPs, "10.1.0.9")),
				svc("buggy", created(4), lbIP("10.1.0.255")),
				svc("auto", created(5)),
			},
			want: map[string]string{
				"default/in":            "10.1.0.9@p",
				"Service:default/out":   "!address 10.9.0.1 is not in any IPAddressPool",
				"Service:default/taken": "!address 10.1.0.9 is already used by default/in, which does not allow sharing",
				"Service:default/buggy": "!address 10.1.0.255 is not in any IPAddressPool",
				"default/auto":          "10.1.0.1@p",
			},
		},
		{
			name:  "a status holder keeps its address against a newer explicit request",
			pools: []*IPAddressPool{seedPool},
			services: []*v1.Service{svc("holder", created(5), status("10.0.0.55")),
				svc("asker", created(1), lbIP("10.0.0.55"))},
			want: map[string]string{"default/holder": "10.0.0.55@localip-pool",
				"Service:default/asker": "!already used by default/holder"},
		},
		{
			name:  "a request replaces the status address",
			pools: []*IPAddressPool{seedPool},
			services: []*v1.Service{svc("moved", status("10.0.0.51"), ann(AnnotationLoadBalancerIPs, "10.0.0.70")),
				svc("next", created(1))},
			want: map[string]string{"default/moved": "10.0.0.70@localip-pool", "default/next": "10.0.0.51@localip-pool"},
		},
		{
			name:  "annotation spellings and invalid annotations",
			pools: []*IPAddressPool{seedPool},
			services: []*v1.Service{
				svc("legacy", created(1), ann(AnnotationLoadBalancerIPsLegacy, "10.0.0.60")),
				svc("both", created(2), ann(AnnotationLoadBalancerIPs, "10.0.0.61"), ann(AnnotationLoadBalancerIPsLegacy, "10.0.0.62")),
				svc("spec-and-ann", created(3), ann(AnnotationLoadBalancerIPs, "10.0.0.63"), lbIP("10.0.0.63")),
				svc("bad", created(4), ann(AnnotationLoadBalancerIPs, "10.0.0.x")),
				svc("wrong-family", created(5), ann(AnnotationLoadBalancerIPs, "fd00:10::51")),
				svc("two-v4", created(6), ann(AnnotationLoadBalancerIPs, "10.0.0.64,10.0.0.65")),
				svc("pools-disagree", created(7), ann(AnnotationAddressPool, "a"), ann(AnnotationAddressPoolLegacy, "b")),
				svc("same-twice", created(8), ann(AnnotationLoadBalancerIPs, "10.0.0.66"), ann(AnnotationLoadBalancerIPsLegacy, "10.0.0.66")),
			},
			want: map[string]string{
				"default/legacy":                 "10.0.0.60@localip-pool",
				"Service:default/both":           "!disagree",
				"Service:default/spec-and-ann":   "!both spec.loadBalancerIP and annotation",
				"Service:default/bad":            "!invalid requested address \"10.0.0.x\"",
				"Service:default/wrong-family":   "!is IPv6 but the service's families are [IPv4]",
				"Service:default/two-v4":         "!both IPv4",
				"Service:default/pools-disagree": "!disagree",
				"default/same-twice":             "10.0.0.66@localip-pool",
			},
		},
		{
			name: "address-pool annotation, autoAssign false",
			pools: []*IPAddressPool{mkpool("auto", "10.1.0.1-10.1.0.9"), mkpool("manual", "10.2.0.1-10.2.0.9", noAuto),
				mkpool("aaa-manual", "10.3.0.1/32", noAuto)},
			services: []*v1.Service{
				svc("plain", created(1)),
				svc("named", created(2), fromPool("manual")),
				svc("legacy-named", created(3), ann(AnnotationAddressPoolLegacy, "manual")),
				svc("unknown", created(4), fromPool("nope")),
				svc("ip-not-in-named", created(5), fromPool("manual"), lbIP("10.1.0.5")),
				svc("ip-in-named", created(6), fromPool("manual"), lbIP("10.2.0.7")),
				svc("ip-in-manual", created(7), lbIP("10.3.0.1")),
			},
			want: map[string]string{
				"default/plain":                   "10.1.0.1@auto",
				"default/named":                   "10.2.0.1@manual",
				"default/legacy-named":            "10.2.0.2@manual",
				"Service:default/unknown":         "!pool \"nope\" named by annotation metallb.io/address-pool does not exist",
				"Service:default/ip-not-in-named": "!address 10.1.0.5 is in pool auto, not in pool manual",
				"default/ip-in-named":             "10.2.0.7@manual",
				"default/ip-in-manual":            "10.3.0.1@aaa-manual",
			},
		},
		{
			name:     "avoidBuggyIPs skips .0 and .255 across /24 boundaries",
			pools:    []*IPAddressPool{mkpool("p", "10.1.0.255-10.1.1.1", buggy), mkpool("q", "10.2.0.0/31")},
			services: []*v1.Service{svc("a", created(1)), svc("b", created(2)), svc("c", created(3)), svc("d", created(4))},
			want: map[string]string{"default/a": "10.1.1.1@p", "default/b": "10.2.0.0@q", "default/c": "10.2.0.1@q",
				"Service:default/d": "!no free IPv4 address in pool(s) p, q"},
		},
		{
			name:  "sharing: same key and distinct ports share; clashes and other keys do not",
			pools: []*IPAddressPool{mkpool("p", "10.1.0.1-10.1.0.9")},
			// Requests (pass 2) are placed before automatic allocations (pass 3).
			services: []*v1.Service{
				svc("http", created(1), share("k"), ports("TCP/80")),
				svc("https", created(2), share("k"), ports("TCP/443")),
				svc("dns-udp", created(3), share("k"), ports("UDP/80")),
				svc("http2", created(4), share("k"), ports("TCP/80")),
				svc("other-key", created(5), share("j"), ports("TCP/8080")),
				svc("no-key", created(6), ports("TCP/9090")),
				svc("ask-443", created(7), share("k"), ports("TCP/443"), lbIP("10.1.0.1")),
				svc("ask-nokey", created(8), ports("TCP/1"), lbIP("10.1.0.1")),
				svc("ask-clash", created(9), share("k"), ports("TCP/443"), lbIP("10.1.0.1")),
				svc("ask-ok", created(10), share("k"), ports("TCP/1"), lbIP("10.1.0.1")),
			},
			want: map[string]string{
				"default/http":              "10.1.0.1@p",
				"default/https":             "10.1.0.2@p",
				"default/dns-udp":           "10.1.0.1@p",
				"default/http2":             "10.1.0.2@p",
				"default/other-key":         "10.1.0.3@p",
				"default/no-key":            "10.1.0.4@p",
				"default/ask-443":           "10.1.0.1@p",
				"Service:default/ask-nokey": "!sharing needs annotation metallb.io/allow-shared-ip on both",
				"Service:default/ask-clash": "!port TCP/443 of address 10.1.0.1 is already used by default/ask-443",
				"default/ask-ok":            "10.1.0.1@p",
			},
		},
		{
			name:  "sharing and traffic policy: Local shares only with Local of the same selector",
			pools: []*IPAddressPool{mkpool("p", "10.1.0.1-10.1.0.9")},
			services: []*v1.Service{
				svc("cluster", created(1), share("k"), ports("TCP/1"), status("10.1.0.1")),
				svc("local-a", created(2), share("k"), ports("TCP/2"), local("a")),
				svc("local-a2", created(3), share("k"), ports("TCP/3"), local("a")),
				svc("local-b", created(4), share("k"), ports("TCP/4"), local("b")),
				svc("ask", created(5), share("k"), ports("TCP/5"), local("b"), lbIP("10.1.0.1")),
				svc("legacy-key", created(6), ann(AnnotationAllowSharedIPLegacy, "k"), ports("TCP/6")),
			},
			want: map[string]string{
				"default/cluster":     "10.1.0.1@p",
				"default/local-a":     "10.1.0.2@p",
				"default/local-a2":    "10.1.0.2@p",
				"default/local-b":     "10.1.0.3@p",
				"Service:default/ask": "!externalTrafficPolicy Local services share only with Local services of the same selector",
				"default/legacy-key":  "10.1.0.1@p",
			},
		},
		{
			name:  "sharing survives in status: both keep the shared address",
			pools: []*IPAddressPool{seedPool},
			services: []*v1.Service{svc("a", created(3), share("k"), ports("TCP/80"), status("10.0.0.70")),
				svc("b", created(4), share("k"), ports("UDP/53"), status("10.0.0.70")),
				svc("c", created(1), share("k"), ports("TCP/80"))},
			want: map[string]string{"default/a": "10.0.0.70@localip-pool", "default/b": "10.0.0.70@localip-pool",
				"default/c": "10.0.0.51@localip-pool"},
		},
		{
			name:  "IPv6 and dual stack",
			pools: []*IPAddressPool{mkpool("v4only", "10.1.0.1/32", noAuto), dualPool},
			services: []*v1.Service{
				svc("six", created(1), v6),
				svc("both", created(2), dual),
				svc("six-first", created(3), families(v1.IPFamilyPolicyRequireDualStack, v1.IPv6Protocol, v1.IPv4Protocol)),
				svc("need-both-v4only", created(4), dual, fromPool("v4only")),
				svc("prefer-v4only", created(5), prefer, fromPool("v4only")),
				svc("ask-both", created(6), dual, ann(AnnotationLoadBalancerIPs, "fd00:10::70, 10.0.0.70")),
				svc("ask-one-of-two", created(7), dual, ann(AnnotationLoadBalancerIPs, "10.0.0.71")),
				svc("prefer-ask-one", created(8), prefer, ann(AnnotationLoadBalancerIPs, "10.0.0.72")),
				svc("by-clusterip", created(9), func(s *v1.Service) { s.Spec.ClusterIP = "fd00:96::1" }),
				svc("mixed-pools", created(10), dual, ann(AnnotationLoadBalancerIPs, "10.1.0.1,fd00:10::75")),
			},
			want: map[string]string{
				"default/six":                      "fd00:10::51@dual",
				"default/both":                     "10.0.0.51,fd00:10::52@dual",
				"default/six-first":                "fd00:10::53,10.0.0.52@dual",
				"Service:default/need-both-v4only": "!no free IPv4+IPv6 address in pool(s) v4only",
				"default/prefer-v4only":            "10.1.0.1@v4only",
				"default/ask-both":                 "10.0.0.70,fd00:10::70@dual",
				"Service:default/ask-one-of-two":   "!the service is dual-stack and requests no IPv6 address",
				"default/prefer-ask-one":           "10.0.0.72@dual",
				"default/by-clusterip":             "fd00:10::54@dual",
				"Service:default/mixed-pools":      "!are in different pools",
			},
		},
		{
			name:  "dual-stack status with one family missing is allocated afresh",
			pools: []*IPAddressPool{dualPool},
			services: []*v1.Service{svc("a", dual, status("10.0.0.60")),
				svc("b", prefer, status("10.0.0.61"))},
			want: map[string]string{"default/a": "10.0.0.51,fd00:10::51@dual", "default/b": "10.0.0.61@dual"},
		},
		{
			name: "serviceAllocation: priority, namespaces, selectors, fallback",
			pools: []*IPAddressPool{
				mkpool("general", "10.9.0.1-10.9.0.9"),
				mkpool("prio10", "10.1.0.1/32", alloc(ServiceAllocation{Priority: 10, Namespaces: []string{"team"}})),
				mkpool("prio5", "10.2.0.1/32", alloc(ServiceAllocation{Priority: 5, NamespaceSelectors: sel("tier", "gold")})),
				mkpool("noprio", "10.3.0.1/32", alloc(ServiceAllocation{ServiceSelectors: sel("web", "yes")})),
				mkpool("bad-ns-sel", "10.4.0.1/32", alloc(ServiceAllocation{NamespaceSelectors: sel("tier", "none")})),
			},
			ns: []*v1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: "team", Labels: map[string]string{"tier": "gold"}}}},
			services: []*v1.Service{
				svc("team/a", created(1)),                              // prio5 (gold namespace) before prio10
				svc("team/b", created(2)),                              // prio5 full: prio10
				svc("team/c", created(3)),                              // both full: general
				svc("default/web", created(4), labelled("web", "yes")), // noprio before general
				svc("default/plain", created(5)),
				svc("default/force", created(6), fromPool("prio10")),
				svc("default/ask", created(7), lbIP("10.2.0.1")),
			},
			want: map[string]string{
				"team/a":                "10.2.0.1@prio5",
				"team/b":                "10.1.0.1@prio10",
				"team/c":                "10.9.0.1@general",
				"default/web":           "10.3.0.1@noprio",
				"default/plain":         "10.9.0.2@general",
				"Service:default/force": "!pool prio10 does not serve namespace default",
				"Service:default/ask":   "!pool prio5 does not serve namespace default",
			},
		},
		{
			name:     "no pool serves the service",
			pools:    []*IPAddressPool{mkpool("only-team", "10.1.0.1/32", alloc(ServiceAllocation{Namespaces: []string{"team"}}))},
			services: []*v1.Service{svc("a")},
			want:     map[string]string{"Service:default/a": "!no IPAddressPool with autoAssign serves this service"},
		},
		{
			name:  "loadBalancerClass and service types",
			pools: []*IPAddressPool{seedPool},
			class: "nodeagent.io/lb",
			services: []*v1.Service{
				svc("ours", created(1), class("nodeagent.io/lb")),
				svc("theirs", created(2), class("other.io/lb"), lbIP("10.9.9.9")),
				svc("unset", created(3)),
				svc("clusterip", created(4), typ(v1.ServiceTypeClusterIP), lbIP("10.9.9.9")),
				svc("nodeport", created(5), typ(v1.ServiceTypeNodePort)),
			},
			// MetalLB (#1417): with --lb-class set, a service without a class is not served.
			want: map[string]string{"default/ours": "10.0.0.51@localip-pool"},
		},
		{
			name:     "without a class configured, classed services are someone else's",
			pools:    []*IPAddressPool{seedPool},
			services: []*v1.Service{svc("classed", class("nodeagent.io/lb")), svc("unset", created(1))},
			want:     map[string]string{"default/unset": "10.0.0.51@localip-pool"},
		},
		{
			name: "invalid, duplicate and overlapping pools are left out",
			pools: []*IPAddressPool{mkpool("z-overlap", "10.0.0.60-10.0.0.90"), seedPool, mkpool("bad", "10.5.0.1"),
				func() *IPAddressPool { p := mkpool("localip-pool", "10.7.0.0/24"); p.Namespace = "zzz"; return p }()},
			services: []*v1.Service{svc("a", lbIP("10.0.0.85"))},
			want: map[string]string{
				"IPAddressPool:metallb-system/z-overlap": "!10.0.0.60-10.0.0.90 overlaps 10.0.0.51-10.0.0.80 of pool localip-pool",
				"IPAddressPool:metallb-system/bad":       "!neither a CIDR nor a range",
				"IPAddressPool:zzz/localip-pool":         "!another pool named \"localip-pool\" exists in namespace metallb-system",
				"Service:default/a":                      "!address 10.0.0.85 is not in any IPAddressPool",
			},
		},
		{
			name:     "big IPv6 pool",
			pools:    []*IPAddressPool{mkpool("v6", "fd00:1::/64", buggy)},
			services: []*v1.Service{svc("a", v6, created(1)), svc("b", v6, created(2), ann(AnnotationLoadBalancerIPs, "fd00:1::1"))},
			want:     map[string]string{"default/a": "fd00:1::@v6", "default/b": "fd00:1::1@v6"},
		},
		{
			name:     "problems do not disturb others",
			pools:    []*IPAddressPool{mkpool("p", "10.1.0.1/32")},
			services: []*v1.Service{svc("a", status("10.1.0.1"), created(3)), svc("b", created(1)), svc("c", created(2), lbIP("x"))},
			want: map[string]string{"default/a": "10.1.0.1@p", "Service:default/b": "!no free IPv4 address",
				"Service:default/c": "!invalid requested address"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := Assign(Input{Pools: tc.pools, Services: tc.services, Namespaces: tc.ns, Class: tc.class})
			got := summary(res)
			for k, w := range tc.want {
				g, ok := got[k]
				switch {
				case !ok:
					t.Errorf("%s: nothing, want %s", k, w)
				case strings.HasPrefix(w, "!"):
					if !strings.HasPrefix(g, "!") || !strings.Contains(g, w[1:]) {
						t.Errorf("%s: %s, want a problem containing %q", k, g, w[1:])
					}
				case g != w:
					t.Errorf("%s: %s, want %s", k, g, w)
				}
			}
			for k, g := range got {
				if _, ok := tc.want[k]; !ok {
					t.Errorf("%s: unexpected %s", k, g)
				}
			}
			// Same objects in any order: the same result.
			for i := 0; i < 5; i++ {
				svcs, pools := slices.Clone(tc.services), slices.Clone(tc.pools)
				rand.Shuffle(len(svcs), func(i, j int) { svcs[i], svcs[j] = svcs[j], svcs[i] })
				rand.Shuffle(len(pools), func(i, j int) { pools[i], pools[j] = pools[j], pools[i] })
				again := Assign(Input{Pools: pools, Services: svcs, Namespaces: tc.ns, Class: tc.class})
				if !reflect.DeepEqual(again.Assignments, res.Assignments) || !sameProblems(again.Problems, res.Problems) {
					t.Fatalf("shuffled input gives another result:\n%v\n%v", summary(again), got)
				}
			}
		})
	}
}

func sameProblems(a, b []Problem) bool {
	key := func(ps []Problem) []string {
		var out []string
		for _, p := range ps {
			out = append(out, p.String())
		}
		slices.Sort(out)
		return out
	}
	return slices.Equal(key(a), key(b))
}

// A service keeps its address across restarts (the status written back is read again) and across
// unrelated changes (older services appearing, others leaving).
func TestAssignStableAcrossChanges(t *testing.T) {
	pools := []*IPAddressPool{seedPool}
	services := []*v1.Service{svc("demoapp-lb", created(10)), svc("other", created(11))}
	res := Assign(Input{Pools: pools, Services: services})
	for i, s := range services {
		services[i] = res.Apply(s)
	}
	// An older service appears and "other" is deleted: demoapp-lb keeps .51, the newcomer gets .52.
	services = []*v1.Service{services[0], svc("older", created(1))}
	res = Assign(Input{Pools: pools, Services: services})
	want := map[string]string{"default/demoapp-lb": "10.0.0.51@localip-pool", "default/older": "10.0.0.52@localip-pool"}
	if got := summary(res); !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestApply(t *testing.T) {
	res := Assign(Input{Pools: []*IPAddressPool{mkpool("p", "10.1.0.1/32")},
		Services: []*v1.Service{svc("a", created(1), class("x")), svc("b", created(2), class("x"))}, Class: "x"})
	a := svc("a", created(1), class("x"))
	got := res.Apply(a)
	if got == a {
		t.Fatal("Apply returned the input although the status changes")
	}
	if len(a.Status.LoadBalancer.Ingress) != 0 {
		t.Error("Apply modified its input")
	}
	ing := got.Status.LoadBalancer.Ingress
	if len(ing) != 1 || ing[0].IP != "10.1.0.1" || ing[0].IPMode == nil || *ing[0].IPMode != v1.LoadBalancerIPModeVIP {
		t.Errorf("ingress %+v", ing)
	}
	if again := res.Apply(got); again != got {
		t.Error("Apply copied a service whose status is already right")
	}
	// An unset ipMode counts as VIP.
	noMode := svc("a", created(1), class("x"), status("10.1.0.1"))
	if res.Apply(noMode) != noMode {
		t.Error("an unset ipMode is taken as different from VIP")
	}
	// b is served but got nothing (pool full): its stale status is cleared.
	b := svc("b", created(2), class("x"), status("10.1.0.1"))
	if got := res.Apply(b); len(got.Status.LoadBalancer.Ingress) != 0 {
		t.Errorf("b keeps ingress %+v", got.Status.LoadBalancer.Ingress)
	}
	// Services that are not ours are returned untouched, status and all.
	for _, s := range []*v1.Service{svc("c", class("y"), status("1.2.3.4")), svc("d", typ(v1.ServiceTypeNodePort), status("1.2.3.4")),
		svc("unclassed", status("1.2.3.4"))} {
		if res.Apply(s) != s {
			t.Errorf("%s: Apply changed a service it does not serve", s.Name)
		}
		if _, served := res.Ingress(s); served {
			t.Errorf("%s: Ingress says served", s.Name)
		}
	}
	if _, served := res.Ingress(svc("e", class("x"))); !served {
		t.Error("a service of our class is not served")
	}
}

func TestAssignLargePoolIsFast(t *testing.T) {
	var services []*v1.Service
	for i := 0; i < 2000; i++ {
		services = append(services, svc(fmt.Sprintf("s%04d", i)))
	}
	start := time.Now()
	res := Assign(Input{Pools: []*IPAddressPool{mkpool("p", "10.0.0.0/16", buggy)}, Services: services})
	if len(res.Assignments) != 2000 || len(res.Problems) != 0 {
		t.Fatalf("%d assignments, problems %v", len(res.Assignments), res.Problems)
	}
	if got := res.Assignments[types.NamespacedName{Namespace: "default", Name: "s0255"}].IPs[0]; got != netip.MustParseAddr("10.0.1.2") {
		t.Errorf("s0255 got %s, want 10.0.1.2 (after skipping .0 and .255)", got)
	}
	t.Logf("2000 services in a /16: %v", time.Since(start))
}

// A status someone else wrote, and every status when allocation is off, passes through Apply
// untouched and is not ours to write.
func TestForeignAndOffLeaveStatus(t *testing.T) {
	cloud := svc("cloud", created(1), status("192.168.1.1"))
	plain := svc("plain", created(2))
	res := Assign(Input{Pools: []*IPAddressPool{seedPool}, Services: []*v1.Service{cloud, plain}})
	if !res.Foreign[types.NamespacedName{Namespace: "default", Name: "cloud"}] || res.Serves(cloud) {
		t.Error("a cloud-assigned status is taken as ours")
	}
	if res.Apply(cloud) != cloud {
		t.Error("Apply rewrote a cloud-assigned status")
	}
	if _, served := res.Ingress(cloud); served {
		t.Error("Ingress claims a cloud-assigned status")
	}
	if got := res.Apply(plain); len(got.Status.LoadBalancer.Ingress) != 1 {
		t.Errorf("plain got %+v", got.Status.LoadBalancer.Ingress)
	}
	off := Assign(Input{Pools: []*IPAddressPool{seedPool}, Services: []*v1.Service{cloud, plain}, Off: true})
	if len(off.Assignments) != 0 || len(off.Problems) != 0 {
		t.Errorf("allocation off assigned %v, problems %v", off.Assignments, off.Problems)
	}
	for _, s := range []*v1.Service{cloud, plain, svc("stale", status("10.0.0.51"))} {
		if off.Apply(s) != s || off.Serves(s) {
			t.Errorf("%s: allocation off touched the status", s.Name)
		}
	}
}

// MetalLB's allocator figures: usable addresses per pool (avoidBuggyIPs leaves .0 and .255 out,
// an enormous IPv6 pool is capped), distinct addresses in use, shared ones counted once, and the
// services holding them, a dual-stack one counted once.
func TestPoolUsage(t *testing.T) {
	shared := func(s *v1.Service) { ann(AnnotationAllowSharedIP, "k")(s) }
	res := Assign(Input{
		Pools: []*IPAddressPool{seedPool, mkpool("wide", "10.1.0.0/23", buggy), mkpool("plain", "10.2.0.0/24", "fd00::/120"),
			mkpool("huge", "fd01::/32")},
		Services: []*v1.Service{svc("a", created(1), shared, ports("TCP/80")), svc("b", created(2), shared, ports("TCP/81")),
			svc("c", created(3)), svc("d", created(4), ann(AnnotationAddressPool, "plain"),
				families(v1.IPFamilyPolicyRequireDualStack, v1.IPv4Protocol, v1.IPv6Protocol))},
	})
	want := map[string]PoolUsage{
		"localip-pool": {Total: 30, IPv4: 30, InUse: 2, InUseIPv4: 2, Services: 3},
		"wide":         {Total: 508, IPv4: 508},
		"plain":        {Total: 512, IPv4: 256, IPv6: 256, InUse: 2, InUseIPv4: 1, InUseIPv6: 1, Services: 1},
		"huge":         {Total: math.MaxInt64, IPv6: math.MaxInt64},
	}
	if !reflect.DeepEqual(res.Pools, want) {
		t.Errorf("usage %+v\nwant %+v", res.Pools, want)
	}
	for _, r := range []struct {
		r    string
		want int64
	}{{"10.0.0.255-10.0.1.0", 0}, {"10.0.0.254-10.0.1.1", 2}, {"0.0.0.0/32", 0}, {"255.255.255.255/32", 0}, {"0.0.0.0/0", 1 << 32 * 254 / 256}} {
		rg, err := ParseRange(r.r)
		if err != nil {
			t.Fatal(err)
		}
		if got := rg.size(true); got != r.want {
			t.Errorf("%s without buggy addresses: %d, want %d", r.r, got, r.want)
		}
	}
}
