package source

import (
	"fmt"
	"net/netip"
	"strings"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
)

// The checks here are the subset of the API server's validation that protects what a proxy
// does with an object: names, addresses, ports and the enumerations the model switches on. An
// object failing them is not served, as the API server would not have stored it.

// reasons collects validation failures.
type reasons []string

func (r *reasons) add(format string, a ...any) { *r = append(*r, fmt.Sprintf(format, a...)) }

// check adds msgs (from k8s.io/apimachinery/pkg/util/validation) about field's value.
func (r *reasons) check(field, value string, msgs []string) {
	for _, m := range msgs {
		r.add("%s %q: %s", field, value, m)
	}
}

// validateMeta checks what every object needs: a name and, for namespaced kinds, a namespace.
func validateMeta(obj runtime.Object, scope Scope) []string {
	var r reasons
	m, err := meta.Accessor(obj)
	if err != nil {
		r.add("%v", err)
		return r
	}
	if m.GetName() == "" {
		r.add("metadata.name is required")
	} else {
		r.check("metadata.name", m.GetName(), validation.IsDNS1123Subdomain(m.GetName()))
	}
	if scope == Namespaced {
		r.check("metadata.namespace", m.GetNamespace(), validation.IsDNS1123Label(m.GetNamespace()))
	}
	for k, v := range m.GetLabels() {
		r.check("label", k, validation.IsQualifiedName(k))
		r.check("label "+k+" value", v, validation.IsValidLabelValue(v))
	}
	return r
}

func validateService(svc *v1.Service) []string {
	var r reasons
	spec := &svc.Spec
	if svc.Name != "" {
		r.check("metadata.name", svc.Name, validation.IsDNS1035Label(svc.Name))
	}
	switch spec.Type {
	case "", v1.ServiceTypeClusterIP, v1.ServiceTypeNodePort, v1.ServiceTypeLoadBalancer, v1.ServiceTypeExternalName:
	default:
		r.add("unsupported spec.type %q", spec.Type)
	}
	headless := spec.ClusterIP == v1.ClusterIPNone || (len(spec.ClusterIPs) > 0 && spec.ClusterIPs[0] == v1.ClusterIPNone)
	externalName := spec.Type == v1.ServiceTypeExternalName
	externalType := spec.Type == v1.ServiceTypeNodePort || spec.Type == v1.ServiceTypeLoadBalancer

	if externalName {
		if spec.ExternalName == "" {
			r.add("spec.externalName is required for type ExternalName")
		} else {
			r.check("spec.externalName", spec.ExternalName,
				validation.IsDNS1123Subdomain(strings.TrimSuffix(spec.ExternalName, ".")))
		}
		if spec.ClusterIP != "" || len(spec.ClusterIPs) > 0 {
			r.add("spec.clusterIP must not be set for type ExternalName")
		}
	} else {
		r.clusterIPs(spec)
	}
	if headless && externalType {
		r.add("spec.clusterIP may not be None for type %s", spec.Type)
	}
	r.ipFamilies(spec)

	if len(spec.Ports) == 0 && !headless && !externalName {
		r.add("spec.ports is required")
	}
	type portProto struct {
		port  int32
		proto v1.Protocol
	}
	names := map[string]bool{}
	ports := map[portProto]bool{}
	nodePorts := map[portProto]bool{}
	for i, p := range spec.Ports {
		where := fmt.Sprintf("spec.ports[%d]", i)
		if p.Name == "" && len(spec.Ports) > 1 {
			r.add("%s.name is required when a service has several ports", where)
		}
		if p.Name != "" {
			r.check(where+".name", p.Name, validation.IsDNS1123Label(p.Name))
			if names[p.Name] {
				r.add("%s.name %q is used twice", where, p.Name)
			}
			names[p.Name] = true
		}
		r.check(where+".port", fmt.Sprint(p.Port), validation.IsValidPortNum(int(p.Port)))
		proto := p.Protocol
		if proto == "" {
			proto = v1.ProtocolTCP
		}
		if !validProtocol(proto) {
			r.add("%s.protocol %q is not supported (TCP, UDP or SCTP)", where, p.Protocol)
		}
		if ports[portProto{p.Port, proto}] {
			r.add("%s: port %d/%s is used twice", where, p.Port, proto)
		}
		ports[portProto{p.Port, proto}] = true
		r.targetPort(where, p.TargetPort)
		if p.NodePort != 0 {
			if !externalType {
				r.add("%s.nodePort may not be used with type %s", where, typeOrDefault(spec.Type))
			}
			r.check(where+".nodePort", fmt.Sprint(p.NodePort), validation.IsValidPortNum(int(p.NodePort)))
			if nodePorts[portProto{p.NodePort, proto}] {
				r.add("%s: nodePort %d/%s is used twice", where, p.NodePort, proto)
			}
			nodePorts[portProto{p.NodePort, proto}] = true
		}
	}

	for i, s := range spec.ExternalIPs {
		a, err := netip.ParseAddr(s)
		if err != nil {
			r.add("spec.externalIPs[%d] %q is not an IP address", i, s)
		} else if a.IsUnspecified() || a.IsLoopback() || a.IsLinkLocalUnicast() || a.IsMulticast() {
			r.add("spec.externalIPs[%d] %s may not be an unspecified, loopback, link-local or multicast address", i, s)
		}
	}
	if spec.LoadBalancerIP != "" {
		if _, err := netip.ParseAddr(spec.LoadBalancerIP); err != nil {
			r.add("spec.loadBalancerIP %q is not an IP address", spec.LoadBalancerIP)
		}
	}
	for i, s := range spec.LoadBalancerSourceRanges {
		if _, err := netip.ParsePrefix(strings.TrimSpace(s)); err != nil {
			r.add("spec.loadBalancerSourceRanges[%d] %q is not a CIDR", i, s)
		}
	}
	if len(spec.LoadBalancerSourceRanges) > 0 && spec.Type != v1.ServiceTypeLoadBalancer {
		r.add("spec.loadBalancerSourceRanges may only be used with type LoadBalancer")
	}
	if spec.AllocateLoadBalancerNodePorts != nil && spec.Type != v1.ServiceTypeLoadBalancer {
		r.add("spec.allocateLoadBalancerNodePorts may only be used with type LoadBalancer")
	}

	switch spec.SessionAffinity {
	case "", v1.ServiceAffinityNone:
		if spec.SessionAffinityConfig != nil && spec.SessionAffinityConfig.ClientIP != nil {
			r.add("spec.sessionAffinityConfig.clientIP may only be set with sessionAffinity ClientIP")
		}
	case v1.ServiceAffinityClientIP:
		if c := spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			if t := *c.ClientIP.TimeoutSeconds; t <= 0 || t > maxAffinitySeconds {
				r.add("spec.sessionAffinityConfig.clientIP.timeoutSeconds %d out of range 1-%d", t, maxAffinitySeconds)
			}
		}
	default:
		r.add("unsupported spec.sessionAffinity %q", spec.SessionAffinity)
	}

	switch spec.ExternalTrafficPolicy {
	case "":
	case v1.ServiceExternalTrafficPolicyCluster, v1.ServiceExternalTrafficPolicyLocal:
		if !externallyAccessible(svc) {
			r.add("spec.externalTrafficPolicy may only be set for NodePort, LoadBalancer or services with externalIPs")
		}
	default:
		r.add("unsupported spec.externalTrafficPolicy %q", spec.ExternalTrafficPolicy)
	}
	if p := spec.InternalTrafficPolicy; p != nil && *p != v1.ServiceInternalTrafficPolicyCluster && *p != v1.ServiceInternalTrafficPolicyLocal {
		r.add("unsupported spec.internalTrafficPolicy %q", *p)
	}
	if spec.HealthCheckNodePort != 0 {
		if spec.Type != v1.ServiceTypeLoadBalancer || spec.ExternalTrafficPolicy != v1.ServiceExternalTrafficPolicyLocal {
			r.add("spec.healthCheckNodePort may only be set for type LoadBalancer with externalTrafficPolicy Local")
		}
		r.check("spec.healthCheckNodePort", fmt.Sprint(spec.HealthCheckNodePort), validation.IsValidPortNum(int(spec.HealthCheckNodePort)))
	}
	for k, v := range spec.Selector {
		r.check("spec.selector", k, validation.IsQualifiedName(k))
		r.check("spec.selector "+k+" value", v, validation.IsValidLabelValue(v))
	}
	return r
}

func typeOrDefault(t v1.ServiceType) v1.ServiceType {
	if t == "" {
		return v1.ServiceTypeClusterIP
	}
	return t
}

func validProtocol(p v1.Protocol) bool {
	return p == v1.ProtocolTCP || p == v1.ProtocolUDP || p == v1.ProtocolSCTP
}

// externallyAccessible mirrors the API server's notion of a service that takes traffic from
// outside the cluster (and so has an externalTrafficPolicy).
func externallyAccessible(svc *v1.Service) bool {
	return svc.Spec.Type == v1.ServiceTypeLoadBalancer || svc.Spec.Type == v1.ServiceTypeNodePort ||
		(svc.Spec.Type == v1.ServiceTypeClusterIP || svc.Spec.Type == "") && len(svc.Spec.ExternalIPs) > 0
}

func (r *reasons) targetPort(where string, tp intstr.IntOrString) {
	switch {
	case tp.Type == intstr.String && tp.StrVal == "":
	case tp.Type == intstr.String:
		r.check(where+".targetPort", tp.StrVal, validation.IsValidPortName(tp.StrVal))
	case tp.IntVal != 0:
		r.check(where+".targetPort", fmt.Sprint(tp.IntVal), validation.IsValidPortNum(int(tp.IntVal)))
	}
}

// clusterIPs checks spec.clusterIP and spec.clusterIPs: "", "None" or addresses, one per family,
// the first of clusterIPs equal to clusterIP.
func (r *reasons) clusterIPs(spec *v1.ServiceSpec) {
	if spec.ClusterIP != "" && len(spec.ClusterIPs) > 0 && spec.ClusterIPs[0] != spec.ClusterIP {
		r.add("spec.clusterIPs[0] %q must equal spec.clusterIP %q", spec.ClusterIPs[0], spec.ClusterIP)
	}
	ips := spec.ClusterIPs
	if len(ips) == 0 && spec.ClusterIP != "" {
		ips = []string{spec.ClusterIP}
	}
	if len(ips) > 2 {
		r.add("spec.clusterIPs may hold at most two addresses, one per family")
		return
	}
	seen := map[bool]bool{}
	for i, s := range ips {
		if s == v1.ClusterIPNone {
			if len(ips) > 1 {
				r.add("spec.clusterIPs: None must be the only value")
			}
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			r.add("spec.clusterIPs[%d] %q is not an IP address", i, s)
			continue
		}
		if a.IsUnspecified() || a.IsLoopback() || a.IsMulticast() || a.IsLinkLocalUnicast() {
			r.add("spec.clusterIPs[%d] %s may not be an unspecified, loopback, link-local or multicast address", i, s)
		}
		if seen[a.Unmap().Is4()] {
			r.add("spec.clusterIPs: two addresses of the same family")
		}
		seen[a.Unmap().Is4()] = true
	}
}

// ipFamilies checks spec.ipFamilies and spec.ipFamilyPolicy, and that they agree with clusterIPs.
func (r *reasons) ipFamilies(spec *v1.ServiceSpec) {
	if len(spec.IPFamilies) > 2 {
		r.add("spec.ipFamilies may hold at most two families")
	}
	seen := map[v1.IPFamily]bool{}
	for _, f := range spec.IPFamilies {
		if f != v1.IPv4Protocol && f != v1.IPv6Protocol {
			r.add("unsupported spec.ipFamilies value %q", f)
		}
		if seen[f] {
			r.add("spec.ipFamilies lists %s twice", f)
		}
		seen[f] = true
	}
	if p := spec.IPFamilyPolicy; p != nil {
		switch *p {
		case v1.IPFamilyPolicySingleStack:
			if len(spec.IPFamilies) > 1 || len(spec.ClusterIPs) > 1 {
				r.add("spec.ipFamilyPolicy SingleStack allows one family")
			}
		case v1.IPFamilyPolicyPreferDualStack, v1.IPFamilyPolicyRequireDualStack:
		default:
			r.add("unsupported spec.ipFamilyPolicy %q", *p)
		}
	}
	if spec.Type == v1.ServiceTypeExternalName && (len(spec.IPFamilies) > 0 || spec.IPFamilyPolicy != nil) {
		r.add("spec.ipFamilies and spec.ipFamilyPolicy must not be set for type ExternalName")
	}
	for i, s := range spec.ClusterIPs {
		a, err := netip.ParseAddr(s)
		if err != nil || i >= len(spec.IPFamilies) {
			continue
		}
		if familyOf(a) != spec.IPFamilies[i] {
			r.add("spec.clusterIPs[%d] %s is not of family spec.ipFamilies[%d] %s", i, s, i, spec.IPFamilies[i])
		}
	}
}

func familyOf(a netip.Addr) v1.IPFamily {
	if a.Unmap().Is4() {
		return v1.IPv4Protocol
	}
	return v1.IPv6Protocol
}

func validateEndpointSlice(es *discoveryv1.EndpointSlice) []string {
	var r reasons
	switch es.AddressType {
	case discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6, discoveryv1.AddressTypeFQDN:
	case "":
		r.add("addressType is required")
	default:
		r.add("unsupported addressType %q", es.AddressType)
	}
	if len(es.Endpoints) > 1000 {
		r.add("at most 1000 endpoints are allowed, got %d", len(es.Endpoints))
	}
	for i, ep := range es.Endpoints {
		if len(ep.Addresses) == 0 || len(ep.Addresses) > 100 {
			r.add("endpoints[%d] must have 1 to 100 addresses", i)
		}
		for j, s := range ep.Addresses {
			where := fmt.Sprintf("endpoints[%d].addresses[%d]", i, j)
			if es.AddressType == discoveryv1.AddressTypeFQDN {
				r.check(where, s, validation.IsDNS1123Subdomain(s))
				continue
			}
			a, err := netip.ParseAddr(s)
			switch {
			case err != nil || a.Zone() != "":
				r.add("%s %q is not an IP address", where, s)
			case es.AddressType == discoveryv1.AddressTypeIPv4 && !a.Is4():
				r.add("%s %s is not an IPv4 address", where, s)
			case es.AddressType == discoveryv1.AddressTypeIPv6 && !a.Is6():
				r.add("%s %s is not an IPv6 address", where, s)
			default:
				if why := specialEndpointIP(a); why != "" {
					r.add("%s %s %s", where, s, why)
				}
			}
		}
		if ep.NodeName != nil {
			r.check(fmt.Sprintf("endpoints[%d].nodeName", i), *ep.NodeName, validation.IsDNS1123Subdomain(*ep.NodeName))
		}
	}
	if len(es.Ports) > 100 {
		r.add("at most 100 ports are allowed, got %d", len(es.Ports))
	}
	names := map[string]bool{}
	for i, p := range es.Ports {
		name := ""
		if p.Name != nil {
			name = *p.Name
		}
		if name != "" {
			r.check(fmt.Sprintf("ports[%d].name", i), name, validation.IsDNS1123Label(name))
		}
		if names[name] {
			r.add("ports[%d].name %q is used twice", i, name)
		}
		names[name] = true
		if p.Port != nil {
			r.check(fmt.Sprintf("ports[%d].port", i), fmt.Sprint(*p.Port), validation.IsValidPortNum(int(*p.Port)))
		}
		if p.Protocol != nil && !validProtocol(*p.Protocol) {
			r.add("ports[%d].protocol %q is not supported (TCP, UDP or SCTP)", i, *p.Protocol)
		}
	}
	if s, ok := es.Labels[discoveryv1.LabelServiceName]; ok && s != "" {
		r.check("label "+discoveryv1.LabelServiceName, s, validation.IsDNS1035Label(s))
	}
	return r
}

// specialEndpointIP says why a may not be an endpoint address ("" when it may), as the API server's
// ValidateEndpointIP: an endpoint there would turn a service into a way to reach the node itself
// (loopback), the cloud's metadata service (169.254.169.254) or nothing at all.
func specialEndpointIP(a netip.Addr) string {
	a = a.Unmap()
	switch {
	case a.IsUnspecified():
		return "may not be unspecified"
	case a.IsLoopback():
		return "may not be in the loopback range (127.0.0.0/8, ::1/128)"
	case a.IsLinkLocalUnicast():
		return "may not be in the link-local range (169.254.0.0/16, fe80::/10)"
	case a.IsLinkLocalMulticast():
		return "may not be in the link-local multicast range (224.0.0.0/24, ff02::/16)"
	}
	return ""
}

func validateNode(n *v1.Node) []string {
	var r reasons
	for i, s := range n.Spec.PodCIDRs {
		if _, err := netip.ParsePrefix(s); err != nil {
			r.add("spec.podCIDRs[%d] %q is not a CIDR", i, s)
		}
	}
	for i, a := range n.Status.Addresses {
		if a.Type != v1.NodeInternalIP && a.Type != v1.NodeExternalIP {
			continue
		}
		if _, err := netip.ParseAddr(a.Address); err != nil {
			r.add("status.addresses[%d] %s %q is not an IP address", i, a.Type, a.Address)
		}
	}
	return r
}

func validatePod(pod *v1.Pod) []string {
	var r reasons
	if pod.Status.PodIP != "" {
		if _, err := netip.ParseAddr(pod.Status.PodIP); err != nil {
			r.add("status.podIP %q is not an IP address", pod.Status.PodIP)
		}
	}
	for i, ip := range pod.Status.PodIPs {
		if _, err := netip.ParseAddr(ip.IP); err != nil {
			r.add("status.podIPs[%d] %q is not an IP address", i, ip.IP)
		}
	}
	if len(pod.Status.PodIPs) > 0 && pod.Status.PodIP != "" && pod.Status.PodIPs[0].IP != pod.Status.PodIP {
		r.add("status.podIPs[0] %q must equal status.podIP %q", pod.Status.PodIPs[0].IP, pod.Status.PodIP)
	}
	for _, c := range pod.Spec.Containers {
		for j, p := range c.Ports {
			where := fmt.Sprintf("container %s ports[%d]", c.Name, j)
			r.check(where+".containerPort", fmt.Sprint(p.ContainerPort), validation.IsValidPortNum(int(p.ContainerPort)))
			if p.Name != "" {
				r.check(where+".name", p.Name, validation.IsValidPortName(p.Name))
			}
		}
	}
	return r
}

// maxAffinitySeconds is the API server's limit on sessionAffinityConfig.clientIP.timeoutSeconds.
const maxAffinitySeconds = 86400
