// Package proxier holds the model shared by every proxy mode: the pure function from Services,
// EndpointSlices and this node's identity to the desired state, and the change tracker that feeds it.
//
// Nothing here touches the kernel. Mode packages (proxier/iptables, proxier/nftables, proxier/ipvs)
// render a *State into their kernel form.
package proxier

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"nodeagent/object"
)

// Family is an IP family.
type Family int

const (
	// IPv4 is the IPv4 family.
	IPv4 Family = 4
	// IPv6 is the IPv6 family.
	IPv6 Family = 6
)

// Families lists both families in a stable order.
var Families = []Family{IPv4, IPv6}

// FamilyOf returns the family of a.
func FamilyOf(a netip.Addr) Family {
	if a.Is4() || a.Is4In6() {
		return IPv4
	}
	return IPv6
}

func (f Family) String() string {
	if f == IPv6 {
		return "IPv6"
	}
	return "IPv4"
}

// ServicePortName identifies one port of one Service in one IP family, the unit every proxier
// programs. Port is the Service port's name ("" for an unnamed single port).
type ServicePortName struct {
	types.NamespacedName
	Port     string
	Protocol v1.Protocol
	Family   Family
}

func (n ServicePortName) String() string {
	s := n.NamespacedName.String()
	if n.Port != "" {
		s += ":" + n.Port
	}
	return fmt.Sprintf("%s/%s/%s", s, n.Protocol, n.Family)
}

// Endpoint is one backend address of a ServicePort, with its conditions as published in the
// EndpointSlice (nil conditions already resolved the way Kubernetes defines them).
type Endpoint struct {
	// Fields in this order pack into 48 bytes (56 with Port after Addr): a node of 100,000
	// services holds a million endpoints.
	Addr        netip.Addr
	NodeName    string
	Port        uint16
	Local       bool // NodeName is this node
	Ready       bool
	Serving     bool
	Terminating bool
	// ZoneHint and NodeHint are the endpoint's topology hints (EndpointSlice hints.forZones and
	// hints.forNodes) resolved against this node, as Local is: only whether it has any and
	// whether one names this node's zone (this node) matters.
	ZoneHint, NodeHint Hint
}

// AddrPort is the endpoint's address and port.
func (e Endpoint) AddrPort() netip.AddrPort { return netip.AddrPortFrom(e.Addr, e.Port) }

func (e Endpoint) String() string { return e.AddrPort().String() }

// ServicePort is the desired state of one ServicePortName: where it is reachable and which
// endpoints each kind of traffic may use. All addresses are of Name.Family.
type ServicePort struct {
	Name ServicePortName

	ClusterIP netip.Addr // never invalid: services without one are not in the model
	Port      uint16
	// NodePort is 0 when the service has none (ClusterIP type, or allocateLoadBalancerNodePorts=false).
	NodePort                 uint16
	ExternalIPs              []netip.Addr
	LoadBalancerIPs          []netip.Addr   // status.loadBalancer.ingress with ipMode VIP (or unset)
	LoadBalancerSourceRanges []netip.Prefix // empty: any source
	HealthCheckNodePort      uint16         // only for ExternalPolicyLocal LoadBalancer services

	// SessionAffinity is ClientIP affinity; AffinityTimeout is its timeout (default 10800s).
	SessionAffinity bool
	AffinityTimeout time.Duration

	// Scheduler is the IPVS scheduler the Service's AnnotationIPVSScheduler asks for ("": the
	// configured default); only the ipvs mode reads it.
	Scheduler string

	ExternalPolicyLocal bool // externalTrafficPolicy: Local (only meaningful with external addresses)
	InternalPolicyLocal bool // internalTrafficPolicy: Local

	// ClusterEndpoints are the endpoints traffic with a Cluster policy may use: the ready ones
	// anywhere (only those hinted for this zone or node when topology-aware routing applies,
	// see topology.go), or when none is ready the serving-and-terminating ones. Computed even
	// when no traffic uses Cluster policy: it being empty means the service has no usable
	// endpoint anywhere (HasEndpoints).
	ClusterEndpoints []Endpoint
	// LocalEndpoints are the endpoints on this node chosen the same way among local ones.
	LocalEndpoints []Endpoint
	// AllEndpoints are every endpoint with an address, whatever its conditions; proxiers use it
	// to know which conntrack entries are still valid.
	AllEndpoints []Endpoint
}

// InternalEndpoints are the endpoints that traffic to the cluster IP may use; when empty,
// InternalVerdict says what happens to that traffic.
func (sp *ServicePort) InternalEndpoints() []Endpoint {
	if sp.InternalPolicyLocal {
		return sp.LocalEndpoints
	}
	return sp.ClusterEndpoints
}

// ExternalEndpoints are the endpoints that traffic to node ports, external IPs and load-balancer
// IPs may use (traffic from outside the cluster); when empty, ExternalVerdict says what happens to
// that traffic.
func (sp *ServicePort) ExternalEndpoints() []Endpoint {
	if sp.ExternalPolicyLocal {
		return sp.LocalEndpoints
	}
	return sp.ClusterEndpoints
}

// HasExternal reports whether the service port is reachable by any external path.
func (sp *ServicePort) HasExternal() bool {
	return sp.NodePort != 0 || len(sp.ExternalIPs) > 0 || len(sp.LoadBalancerIPs) > 0
}

// Node is this node's identity and the configuration that shapes every service.
type Node struct {
	Name string
	// IPs are the node's own addresses (both families), used for node ports when
	// NodePortAddresses is set and as the source of health-check answers.
	IPs []netip.Addr
	// Zone is the topology.kubernetes.io/zone label of this node's Node object ("": none); the
	// tracker keeps it from the Node objects it receives. Topology hints are read against it.
	Zone string
	// PrimaryIPs are the primary addresses of this node's Node object, at most one per family,
	// picked as kube-proxy's GetNodeHostIPs does: the first of its status addresses (InternalIPs
	// before ExternalIPs), then the first of the other family. The tracker keeps them from the
	// Node objects; --nodeport-addresses primary reads them.
	PrimaryIPs []netip.Addr
	// PodCIDRs are the Node object's spec.podCIDRs; --detect-local-mode NodeCIDR reads them.
	PodCIDRs []netip.Prefix
}

// Equal reports whether n and o are the same node identity.
func (n Node) Equal(o Node) bool {
	return n.Name == o.Name && n.Zone == o.Zone && slices.Equal(n.IPs, o.IPs) &&
		slices.Equal(n.PrimaryIPs, o.PrimaryIPs) && slices.Equal(n.PodCIDRs, o.PodCIDRs)
}

// Config is the part of the agent's configuration the model and proxiers need.
type Config struct {
	// ClusterCIDRs are the pod networks (--cluster-cidr). With LocalDetect's default mode
	// (ClusterCIDR) the first of each family tells pod traffic from other traffic; without
	// one, nothing does (kube-proxy's behaviour without --cluster-cidr).
	ClusterCIDRs []netip.Prefix
	// NodePortAddresses restricts node ports to local addresses in these prefixes
	// (--nodeport-addresses); empty means every local address.
	NodePortAddresses []netip.Prefix
	// NodePortPrimary is --nodeport-addresses primary: node ports answer only on the Node's
	// primary address of each family (Node.PrimaryIPs), and NodePortAddresses is not read. A
	// family without a primary address gets every local address, as in kube-proxy, which
	// falls back the same way while it does not know the node's addresses. kube-proxy v1.34
	// defaults nodePortAddresses to primary in nftables mode only.
	NodePortPrimary bool
	// MasqueradeAll masquerades all traffic to cluster IPs (--masquerade-all).
	MasqueradeAll bool
	// LocalDetect is how traffic from pods is told from other traffic (--detect-local-mode).
	LocalDetect LocalDetect
	// MasqueradeMark is the packet mark bit that asks for masquerade: 1 << the masquerade bit
	// (--iptables-masquerade-bit in iptables and ipvs modes, nftables.masqueradeBit in
	// nftables mode). 0 means kube-proxy's default, bit 14 (0x4000). See MasqMark.
	MasqueradeMark uint32
	// ServiceCIDRs are the ranges cluster IPs are allocated from, as configured
	// (--service-cluster-ip-range in manifests mode); State.ServiceCIDRsOf adds those of
	// ServiceCIDR objects. nftables mode drops traffic to addresses in them no service holds.
	ServiceCIDRs []netip.Prefix
	// LocalhostNodePorts is --iptables-localhost-nodeports (kube-proxy's default: true): in
	// iptables mode, IPv4 node ports answer on 127.0.0.1 too (the proxier sets route_localnet
	// and drops martian traffic to 127.0.0.0/8 as kube-proxy does). Other modes and IPv6
	// ignore it.
	LocalhostNodePorts bool
}

// DefaultMasqueradeMark is kube-proxy's masquerade mark: bit 14.
const DefaultMasqueradeMark uint32 = 1 << 14

// MasqMark returns the masquerade mark in effect.
func (c Config) MasqMark() uint32 {
	if c.MasqueradeMark == 0 {
		return DefaultMasqueradeMark
	}
	return c.MasqueradeMark
}

// MasqueradeMarkOfBit returns the mark of masquerade bit b (--iptables-masquerade-bit), which
// kube-proxy takes in [0, 31].
func MasqueradeMarkOfBit(b int) (uint32, error) {
	if b < 0 || b > 31 {
		return 0, fmt.Errorf("masquerade bit %d: must be within [0, 31]", b)
	}
	return 1 << b, nil
}

// ClusterCIDRsOf returns the cluster CIDRs of family f.
func (c Config) ClusterCIDRsOf(f Family) []netip.Prefix { return prefixesOf(c.ClusterCIDRs, f) }

// NodePortAddressesOf returns the node-port prefixes of family f.
func (c Config) NodePortAddressesOf(f Family) []netip.Prefix {
	return prefixesOf(c.NodePortAddresses, f)
}

func prefixesOf(ps []netip.Prefix, f Family) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if FamilyOf(p.Addr()) == f {
			out = append(out, p)
		}
	}
	return out
}

// State is the whole desired state for this node: every ServicePort in both families, sorted by
// name, plus what shaped it. Proxiers must treat it as read-only. A State from the tracker is its
// holder's: the tracker writes to it again only when the holder hands it back (Tracker.Next).
type State struct {
	Node     Node
	Config   Config
	Services []*ServicePort
	// EndpointCount is the number of endpoints across Services, kept by the tracker as it goes
	// (for metrics: counting them would walk every service at every sync).
	EndpointCount int
	// Problems are objects left out, with the reason (invalid, or conflicting with another).
	Problems []Problem
	// ServiceCIDRs are the CIDRs of the cluster's ServiceCIDR objects (networking.k8s.io/v1),
	// sorted; ServiceCIDRsOf adds Config.ServiceCIDRs.
	ServiceCIDRs []netip.Prefix
}

// ForFamily returns the service ports of family f in state order.
func (s *State) ForFamily(f Family) []*ServicePort {
	var out []*ServicePort
	for _, sp := range s.Services {
		if sp.Name.Family == f {
			out = append(out, sp)
		}
	}
	return out
}

// PortsOfService returns the ports of service n, of every family. The tracker sorts Services by
// service name, so a binary search finds them; a hand-made State that is not sorted (tests) still
// works, through a scan when the search misses.
func (s *State) PortsOfService(n types.NamespacedName) []*ServicePort {
	svcs := s.Services
	i, found := slices.BinarySearchFunc(svcs, n, func(sp *ServicePort, n types.NamespacedName) int {
		if c := cmp.Compare(sp.Name.Namespace, n.Namespace); c != 0 {
			return c
		}
		return cmp.Compare(sp.Name.Name, n.Name)
	})
	if !found {
		if i = slices.IndexFunc(svcs, func(sp *ServicePort) bool { return sp.Name.NamespacedName == n }); i < 0 {
			return nil
		}
	}
	for i > 0 && svcs[i-1].Name.NamespacedName == n {
		i--
	}
	j := i
	for j < len(svcs) && svcs[j].Name.NamespacedName == n {
		j++
	}
	return svcs[i:j:j]
}

// NodeIPsOf returns the node's addresses of family f.
func (s *State) NodeIPsOf(f Family) []netip.Addr {
	var out []netip.Addr
	for _, a := range s.Node.IPs {
		if FamilyOf(a) == f {
			out = append(out, a)
		}
	}
	return out
}

// Problem is an object, or part of one, that the model left out (Kind "Service" or
// "EndpointSlice").
type Problem = object.Problem

// Changes says which services changed since the previous State handed to a proxier. A proxier
// may rewrite only those; Full asks it to rewrite everything (node or config change, first sync).
type Changes struct {
	Full     bool
	Services map[types.NamespacedName]bool
	// Periodic says Full comes from the periodic resync, not from the objects: a proxier may
	// check the kernel for drift and, finding none, write only the services listed, as
	// kube-proxy's periodic syncs are partial.
	Periodic bool
	// Triggers are the trigger times of the EndpointSlice changes in this batch (counts.go), for
	// kube-proxy's network programming latency.
	Triggers []Trigger
}

// Merge returns the changes of c and o together.
func (c Changes) Merge(o Changes) Changes {
	out := Changes{Full: c.Full || o.Full, Periodic: c.Periodic || o.Periodic, Services: maps.Clone(c.Services)}
	if out.Services == nil {
		out.Services = map[types.NamespacedName]bool{}
	}
	maps.Copy(out.Services, o.Services)
	out.Triggers = append(slices.Clip(c.Triggers), o.Triggers...)
	out.Triggers = out.Triggers[:min(len(out.Triggers), MaxTriggers)]
	return out
}

// Changed reports whether the service named n must be rewritten.
func (c Changes) Changed(n types.NamespacedName) bool { return c.Full || c.Services[n] }
