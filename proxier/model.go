package proxier

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"

	"nodeagent/object"
)

const (
	// LabelServiceName links an EndpointSlice to its Service.
	LabelServiceName = discovery.LabelServiceName
	// LabelServiceProxyName marks services handled by another proxy; kube-proxy skips them.
	LabelServiceProxyName = object.LabelServiceProxyName
	// LabelHeadless marks headless services and their slices; kube-proxy skips them.
	LabelHeadless = v1.IsHeadlessService

	// AnnotationIPVSScheduler on a Service picks its IPVS scheduler (rr, wrr, lc, wlc, sh, mh, ...)
	// in ipvs mode, overriding --ipvs-scheduler; other modes ignore it.
	AnnotationIPVSScheduler = "ipvs.nodeagent.io/scheduler"

	// DefaultAffinityTimeout is Kubernetes' default ClientIP affinity timeout (3 hours).
	DefaultAffinityTimeout = 10800 * time.Second
)

// Skipped reports whether a proxy must ignore an object with these labels, as kube-proxy's informer
// label selector does.
func Skipped(labels map[string]string) bool {
	_, proxyName := labels[LabelServiceProxyName]
	_, headless := labels[LabelHeadless]
	return proxyName || headless
}

// ServicePorts computes the desired state of one Service on node: one ServicePort per (port,
// family), sorted by name. slices are the EndpointSlices that belong to the service (any family).
// It returns no ports for services no proxy programs (headless, ExternalName, no cluster IP,
// labelled for another proxy) and a Problem for invalid parts, which are left out.
func ServicePorts(svc *v1.Service, slices []*discovery.EndpointSlice, node Node) ([]*ServicePort, []Problem) {
	key := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	problem := func(format string, a ...any) Problem {
		return Problem{Kind: "Service", Object: key, Reason: fmt.Sprintf(format, a...)}
	}
	if Skipped(svc.Labels) || svc.Spec.Type == v1.ServiceTypeExternalName {
		return nil, nil
	}
	clusterIPs := svc.Spec.ClusterIPs
	if len(clusterIPs) == 0 && svc.Spec.ClusterIP != "" {
		clusterIPs = []string{svc.Spec.ClusterIP}
	}
	if len(clusterIPs) == 0 || clusterIPs[0] == v1.ClusterIPNone {
		return nil, nil
	}
	var problems []Problem
	byFamily := map[Family]netip.Addr{}
	for _, s := range clusterIPs {
		a, err := netip.ParseAddr(s)
		if err != nil {
			problems = append(problems, problem("invalid cluster IP %q", s))
			continue
		}
		a = a.Unmap()
		byFamily[FamilyOf(a)] = a
	}
	external := parseAddrs(svc.Spec.ExternalIPs, "external IP", problem, &problems)
	var lbIPs []netip.Addr
	if svc.Spec.Type == v1.ServiceTypeLoadBalancer {
		for _, ing := range svc.Status.LoadBalancer.Ingress {
			if ing.IP == "" || (ing.IPMode != nil && *ing.IPMode != v1.LoadBalancerIPModeVIP) {
				continue
			}
			lbIPs = append(lbIPs, parseAddrs([]string{ing.IP}, "load-balancer IP", problem, &problems)...)
		}
	}
	var sourceRanges []netip.Prefix
	if svc.Spec.Type == v1.ServiceTypeLoadBalancer {
		for _, r := range svc.Spec.LoadBalancerSourceRanges {
			p, err := netip.ParsePrefix(strings.TrimSpace(r))
			if err != nil {
				problems = append(problems, problem("invalid loadBalancerSourceRange %q", r))
				continue
			}
			sourceRanges = append(sourceRanges, p.Masked())
		}
	}
	externalType := svc.Spec.Type == v1.ServiceTypeNodePort || svc.Spec.Type == v1.ServiceTypeLoadBalancer
	etpLocal := svc.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal &&
		(externalType || len(external) > 0)
	itpLocal := svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == v1.ServiceInternalTrafficPolicyLocal
	affinity := svc.Spec.SessionAffinity == v1.ServiceAffinityClientIP
	timeout := DefaultAffinityTimeout
	if affinity && svc.Spec.SessionAffinityConfig != nil && svc.Spec.SessionAffinityConfig.ClientIP != nil &&
		svc.Spec.SessionAffinityConfig.ClientIP.TimeoutSeconds != nil {
		timeout = time.Duration(*svc.Spec.SessionAffinityConfig.ClientIP.TimeoutSeconds) * time.Second
	}
	var hcPort uint16
	if etpLocal && svc.Spec.Type == v1.ServiceTypeLoadBalancer && svc.Spec.HealthCheckNodePort > 0 && svc.Spec.HealthCheckNodePort < 65536 {
		hcPort = uint16(svc.Spec.HealthCheckNodePort)
	}

	var out []*ServicePort
	for i, p := range svc.Spec.Ports {
		if p.Port <= 0 || p.Port > 65535 {
			problems = append(problems, problem("port %d (index %d) out of range", p.Port, i))
			continue
		}
		proto := p.Protocol
		if proto == "" {
			proto = v1.ProtocolTCP
		}
		if proto != v1.ProtocolTCP && proto != v1.ProtocolUDP && proto != v1.ProtocolSCTP {
			problems = append(problems, problem("port %d: unsupported protocol %q", p.Port, proto))
			continue
		}
		var nodePort uint16
		if externalType && p.NodePort != 0 {
			if p.NodePort < 0 || p.NodePort > 65535 {
				problems = append(problems, problem("nodePort %d out of range", p.NodePort))
				continue
			}
			nodePort = uint16(p.NodePort)
		}
		for _, f := range Families {
			cip, ok := byFamily[f]
			if !ok {
				continue
			}
			sp := &ServicePort{
				Name:                     ServicePortName{NamespacedName: key, Port: p.Name, Protocol: proto, Family: f},
				ClusterIP:                cip,
				Port:                     uint16(p.Port),
				NodePort:                 nodePort,
				ExternalIPs:              addrsOf(external, f),
				LoadBalancerIPs:          addrsOf(lbIPs, f),
				LoadBalancerSourceRanges: prefixesOf(sourceRanges, f),
				HealthCheckNodePort:      hcPort,
				SessionAffinity:          affinity,
				AffinityTimeout:          timeout,
				ExternalPolicyLocal:      etpLocal,
				InternalPolicyLocal:      itpLocal,
				Scheduler:                svc.Annotations[AnnotationIPVSScheduler],
			}
			if !affinity {
				sp.AffinityTimeout = 0
			}
			sp.AllEndpoints = endpointsFor(slices, p.Name, proto, f, node)
			sp.ClusterEndpoints, sp.LocalEndpoints = categorize(sp.AllEndpoints)
			out = append(out, sp)
		}
	}
	return out, problems
}

func parseAddrs(ss []string, what string, problem func(string, ...any) Problem, problems *[]Problem) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		a, err := netip.ParseAddr(strings.TrimSpace(s))
		if err != nil {
			*problems = append(*problems, problem("invalid %s %q", what, s))
			continue
		}
		out = append(out, a.Unmap())
	}
	return out
}

func addrsOf(as []netip.Addr, f Family) []netip.Addr {
	var out []netip.Addr
	for _, a := range as {
		if FamilyOf(a) == f {
			out = append(out, a)
		}
	}
	return out
}

// endpointsFor collects the endpoints of one service port from its slices: the slice port is the
// one whose name and protocol match the service port's (its number is the resolved target port).
// Duplicates across slices are merged, keeping the first; the result is sorted by address and port.
func endpointsFor(from []*discovery.EndpointSlice, portName string, proto v1.Protocol, f Family, node Node) []Endpoint {
	want := discovery.AddressTypeIPv4
	if f == IPv6 {
		want = discovery.AddressTypeIPv6
	}
	n := 0
	for _, s := range from {
		if s.AddressType == want {
			n += len(s.Endpoints)
		}
	}
	// Sized once: grown by append, the slices of 25,000 services kept ~40% unused capacity.
	out := make([]Endpoint, 0, n)
	for _, s := range from {
		if s.AddressType != want {
			continue
		}
		var port int32 = -1
		for _, sp := range s.Ports {
			name := ""
			if sp.Name != nil {
				name = *sp.Name
			}
			p := v1.ProtocolTCP
			if sp.Protocol != nil {
				p = *sp.Protocol
			}
			if name == portName && p == proto && sp.Port != nil {
				port = *sp.Port
				break
			}
		}
		if port <= 0 || port > 65535 {
			continue
		}
		for _, ep := range s.Endpoints {
			if len(ep.Addresses) == 0 {
				continue
			}
			// Like kube-proxy, only the first address of an endpoint is used.
			a, err := netip.ParseAddr(ep.Addresses[0])
			if err != nil || FamilyOf(a) != f {
				continue
			}
			ap := netip.AddrPortFrom(a.Unmap(), uint16(port))
			nodeName := ""
			if ep.NodeName != nil {
				nodeName = *ep.NodeName
			}
			// Nil conditions mean "unknown": ready and serving, not terminating, each on its
			// own, as kube-proxy reads them (a missing serving is not a copy of ready).
			ready := ep.Conditions.Ready == nil || *ep.Conditions.Ready
			serving := ep.Conditions.Serving == nil || *ep.Conditions.Serving
			terminating := ep.Conditions.Terminating != nil && *ep.Conditions.Terminating
			zoneHint, nodeHint := resolveHints(ep.Hints, node)
			out = append(out, Endpoint{
				Addr: ap.Addr(), Port: ap.Port(), NodeName: nodeName,
				Local: node.Name != "" && nodeName == node.Name,
				Ready: ready, Serving: serving, Terminating: terminating,
				ZoneHint: zoneHint, NodeHint: nodeHint,
			})
		}
	}
	if len(out) == 0 {
		return nil
	}
	// Sorted stably, so that of duplicates the first stays first and is kept: deduplicating
	// after the sort spares a map per service port (garbage the size of the endpoints, again).
	slices.SortStableFunc(out, func(a, b Endpoint) int { return a.AddrPort().Compare(b.AddrPort()) })
	out = slices.CompactFunc(out, func(a, b Endpoint) bool { return a.AddrPort() == b.AddrPort() })
	return out[:len(out):len(out)]
}

// Frontend is one address, port and protocol a service port answers on, used to find conflicts.
type Frontend struct {
	Addr     netip.Addr // invalid for node ports (they are on every node address)
	Port     uint16
	Protocol v1.Protocol
}

// frontends lists every frontend of sp.
func (sp *ServicePort) frontends() []Frontend {
	var out []Frontend
	add := func(a netip.Addr, port uint16) {
		out = append(out, Frontend{Addr: a, Port: port, Protocol: sp.Name.Protocol})
	}
	add(sp.ClusterIP, sp.Port)
	for _, a := range sp.ExternalIPs {
		add(a, sp.Port)
	}
	for _, a := range sp.LoadBalancerIPs {
		add(a, sp.Port)
	}
	if sp.NodePort != 0 {
		f := Frontend{Port: sp.NodePort, Protocol: sp.Name.Protocol}
		if sp.Name.Family == IPv6 {
			f.Addr = netip.IPv6Unspecified()
		} else {
			f.Addr = netip.IPv4Unspecified()
		}
		out = append(out, f)
	}
	return out
}
