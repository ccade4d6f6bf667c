package source

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

const (
	// managedBy is the value the EndpointSlice controller puts in the managed-by label.
	managedBy = "endpointslice-controller.k8s.io"
	// maxEndpointsPerSlice is the EndpointSlice controller's default --max-endpoints-per-slice.
	maxEndpointsPerSlice = 100
)

// endpointSlicesFor makes the EndpointSlices the EndpointSlice controller would publish for svc
// (defaulted and allocated) from the pods of its namespace: one slice per IP family and per
// distinct set of resolved ports (a named targetPort may resolve differently per pod), at most
// maxEndpointsPerSlice endpoints each, and an empty placeholder per family when no pod matches.
//
// There is no kubelet behind Pod manifests, so a pod with an IP and no Ready condition counts as
// ready; a Ready condition with status False makes it not ready. A pod whose address may not be an
// endpoint (loopback, link-local, unspecified) is left out.
func endpointSlicesFor(svc *v1.Service, pods []*v1.Pod, nodes map[string]*v1.Node) []*discoveryv1.EndpointSlice {
	families := svc.Spec.IPFamilies
	if len(families) == 0 {
		families = []v1.IPFamily{v1.IPv4Protocol}
	}
	var out []*discoveryv1.EndpointSlice
	for _, f := range families {
		type group struct {
			ports     []discoveryv1.EndpointPort
			endpoints []discoveryv1.Endpoint
		}
		var groups []*group
		for _, pod := range pods {
			if !selects(svc.Spec.Selector, pod.Labels) || pod.Status.Phase == v1.PodSucceeded || pod.Status.Phase == v1.PodFailed {
				continue
			}
			addr, ok := podIP(pod, f)
			if !ok {
				continue
			}
			ports := endpointPorts(svc, pod)
			i := slices.IndexFunc(groups, func(g *group) bool { return samePorts(g.ports, ports) })
			if i < 0 {
				groups = append(groups, &group{ports: ports})
				i = len(groups) - 1
			}
			groups[i].endpoints = append(groups[i].endpoints, podEndpoint(svc, pod, addr, nodes))
		}
		if len(groups) == 0 {
			groups = []*group{{ports: []discoveryv1.EndpointPort{}, endpoints: []discoveryv1.Endpoint{}}}
		}
		n := 0
		for _, g := range groups {
			for chunk := range slices.Chunk(g.endpoints, maxEndpointsPerSlice) {
				out = append(out, newSlice(svc, f, n, g.ports, chunk))
				n++
			}
			if len(g.endpoints) == 0 {
				out = append(out, newSlice(svc, f, n, g.ports, g.endpoints))
				n++
			}
		}
	}
	return out
}

// selects reports whether a Service selector matches labels (every selector pair present).
func selects(selector, labels map[string]string) bool {
	for k, v := range selector {
		if l, ok := labels[k]; !ok || l != v {
			return false
		}
	}
	return true
}

// podIP returns the pod's address of family f.
func podIP(pod *v1.Pod, f v1.IPFamily) (string, bool) {
	ips := pod.Status.PodIPs
	if len(ips) == 0 && pod.Status.PodIP != "" {
		ips = []v1.PodIP{{IP: pod.Status.PodIP}}
	}
	for _, ip := range ips {
		a, err := netip.ParseAddr(ip.IP)
		// An address the API server refuses in an EndpointSlice never reaches one: the
		// controller's write of the slice would fail.
		if err == nil && familyOf(a) == f && specialEndpointIP(a) == "" {
			return a.Unmap().String(), true
		}
	}
	return "", false
}

// endpointPorts resolves the service's target ports against the pod's container ports. A named
// target port the pod does not declare is left out for that pod, as the controller does.
func endpointPorts(svc *v1.Service, pod *v1.Pod) []discoveryv1.EndpointPort {
	ports := []discoveryv1.EndpointPort{}
	for _, sp := range svc.Spec.Ports {
		var port int32
		switch {
		case sp.TargetPort.Type == intstr.String && sp.TargetPort.StrVal != "":
			port = containerPort(pod, sp.TargetPort.StrVal, sp.Protocol)
			if port == 0 {
				continue
			}
		case sp.TargetPort.IntVal != 0:
			port = sp.TargetPort.IntVal
		default:
			port = sp.Port
		}
		ports = append(ports, discoveryv1.EndpointPort{
			Name: ptr(sp.Name), Protocol: ptr(sp.Protocol), Port: ptr(port), AppProtocol: sp.AppProtocol,
		})
	}
	return ports
}

func containerPort(pod *v1.Pod, name string, proto v1.Protocol) int32 {
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			pp := p.Protocol
			if pp == "" {
				pp = v1.ProtocolTCP
			}
			if p.Name == name && pp == proto {
				return p.ContainerPort
			}
		}
	}
	return 0
}

func samePorts(a, b []discoveryv1.EndpointPort) bool {
	return slices.EqualFunc(a, b, func(x, y discoveryv1.EndpointPort) bool {
		return *x.Name == *y.Name && *x.Protocol == *y.Protocol && *x.Port == *y.Port
	})
}

func podEndpoint(svc *v1.Service, pod *v1.Pod, addr string, nodes map[string]*v1.Node) discoveryv1.Endpoint {
	ready := true
	for _, c := range pod.Status.Conditions {
		if c.Type == v1.PodReady {
			ready = c.Status == v1.ConditionTrue
		}
	}
	terminating := pod.DeletionTimestamp != nil
	serving := ready || svc.Spec.PublishNotReadyAddresses
	ep := discoveryv1.Endpoint{
		Addresses: []string{addr},
		Conditions: discoveryv1.EndpointConditions{
			// As the controller: a terminating pod is never ready unless the service publishes
			// not-ready addresses.
			Ready:       ptr(svc.Spec.PublishNotReadyAddresses || ready && !terminating),
			Serving:     ptr(serving),
			Terminating: ptr(terminating),
		},
		TargetRef: &v1.ObjectReference{Kind: "Pod", Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID},
	}
	if pod.Spec.NodeName != "" {
		ep.NodeName = ptr(pod.Spec.NodeName)
		if n := nodes[pod.Spec.NodeName]; n != nil {
			if z, ok := n.Labels[v1.LabelTopologyZone]; ok {
				ep.Zone = ptr(z)
			}
		}
	}
	ep.Hints = closeHints(svc, ep)
	if pod.Spec.Hostname != "" && pod.Spec.Subdomain == svc.Name && svc.Spec.ClusterIP == v1.ClusterIPNone {
		ep.Hostname = ptr(pod.Spec.Hostname)
	}
	return ep
}

// closeHints are the topology hints the EndpointSlice controller gives a ready endpoint of a
// service whose trafficDistribution prefers closeness (PreferClose, PreferSameZone,
// PreferSameNode): its own zone and, for PreferSameNode, its own node. The topology-mode
// annotation (Auto) turns trafficDistribution off there, and its own proportional hints need
// every node's CPU: such services get no hints.
func closeHints(svc *v1.Service, ep discoveryv1.Endpoint) *discoveryv1.EndpointHints {
	td := svc.Spec.TrafficDistribution
	if td == nil || ep.Conditions.Ready == nil || !*ep.Conditions.Ready || topologyModeAuto(svc.Annotations) {
		return nil
	}
	switch *td {
	case v1.ServiceTrafficDistributionPreferClose, v1.ServiceTrafficDistributionPreferSameZone, v1.ServiceTrafficDistributionPreferSameNode:
	default:
		return nil
	}
	h := &discoveryv1.EndpointHints{}
	if ep.Zone != nil {
		h.ForZones = []discoveryv1.ForZone{{Name: *ep.Zone}}
	}
	if ep.NodeName != nil && *td == v1.ServiceTrafficDistributionPreferSameNode {
		h.ForNodes = []discoveryv1.ForNode{{Name: *ep.NodeName}}
	}
	if h.ForZones == nil && h.ForNodes == nil {
		return nil
	}
	return h
}

// topologyModeAuto reports whether a Service asks for the EndpointSlice controller's topology-aware
// hints by annotation (either spelling).
func topologyModeAuto(annotations map[string]string) bool {
	v, ok := annotations[v1.DeprecatedAnnotationTopologyAwareHints]
	if !ok {
		v = annotations[v1.AnnotationTopologyMode]
	}
	return v == "Auto" || v == "auto"
}

// newSlice makes the n-th slice of svc's family f. Its name has the controller's shape (the
// service name and five characters) but is derived from the service, family and index, so every
// node reading the same manifests names it the same.
func newSlice(svc *v1.Service, f v1.IPFamily, n int, ports []discoveryv1.EndpointPort, eps []discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	labels := map[string]string{}
	for k, v := range svc.Labels {
		labels[k] = v
	}
	labels[discoveryv1.LabelServiceName] = svc.Name
	labels[discoveryv1.LabelManagedBy] = managedBy
	if svc.Spec.ClusterIP == v1.ClusterIPNone {
		labels[v1.IsHeadlessService] = ""
	} else {
		delete(labels, v1.IsHeadlessService)
	}
	base := svc.Name
	if len(base) > 57 {
		base = base[:57]
	}
	return &discoveryv1.EndpointSlice{
		TypeMeta: metav1.TypeMeta{APIVersion: "discovery.k8s.io/v1", Kind: "EndpointSlice"},
		ObjectMeta: metav1.ObjectMeta{
			Name:      base + "-" + suffix(fmt.Sprintf("%s/%s/%s/%d", svc.Namespace, svc.Name, f, n)),
			Namespace: svc.Namespace,
			Labels:    labels,
		},
		AddressType: discoveryv1.AddressType(f),
		Ports:       ports,
		Endpoints:   eps,
	}
}

// suffix returns five characters from the alphabet Kubernetes uses for generated names.
func suffix(key string) string {
	const alphabet = "bcdfghjklmnpqrstvwxz2456789"
	h := hashKey(key)
	var b strings.Builder
	for range 5 {
		b.WriteByte(alphabet[h%uint64(len(alphabet))])
		h /= uint64(len(alphabet))
	}
	return b.String()
}

func ptr[T any](v T) *T { return &v }
