package proxier

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"time"

	v1 "k8s.io/api/core/v1"
)

// FrontendKind is how a service port claims a frontend.
type FrontendKind uint8

// The kinds of frontend. Their order is the order in which one port's own repeated frontends
// are kept (see ResolveFrontends).
const (
	ClusterIPFrontend FrontendKind = iota + 1
	LoadBalancerIPFrontend
	ExternalIPFrontend
	NodePortFrontend
	HealthCheckFrontend
)

func (k FrontendKind) String() string {
	switch k {
	case ClusterIPFrontend:
		return "cluster IP"
	case LoadBalancerIPFrontend:
		return "load-balancer IP"
	case ExternalIPFrontend:
		return "external IP"
	case NodePortFrontend:
		return "node port"
	case HealthCheckFrontend:
		return "health-check node port"
	}
	return "frontend"
}

// class orders the kinds that may meet on one frontend: the lower class keeps it whatever the
// age of the services. Cluster IPs are allocated by the API server, so no Service that names an
// address itself (external IPs) or has one written into its status (load-balancer IPs) can take
// one away. A node port is programmed in the kernel before any socket sees the packet, so on a
// port that is also a health-check node port, the node port is what answers.
func (k FrontendKind) class() int {
	switch k {
	case ClusterIPFrontend, NodePortFrontend:
		return 0
	}
	return 1
}

// Claim is one service port competing for its frontends.
type Claim struct {
	Port *ServicePort
	// Created is the Service's creation time: between equals the older service keeps a frontend,
	// so that a new Service cannot take an address or port away from a running one.
	Created time.Time
}

// Conflict is a frontend a service port was denied because another one has it.
type Conflict struct {
	Port ServicePortName // the loser
	// Kind is how Port claimed the frontend. A port that lost its cluster IP is left out whole;
	// any other loss leaves out only that frontend.
	Kind     FrontendKind
	Frontend Frontend
	// Winner and WinnerKind are the port that keeps the frontend and how it claims it.
	Winner     ServicePortName
	WinnerKind FrontendKind
}

// String explains the conflict to the owner of the losing Service: it names the port (a
// health-check node port belongs to the whole service), the frontend and who has it.
func (c Conflict) String() string {
	winner := fmt.Sprintf("the %s of %s", c.WinnerKind, c.Winner.NamespacedName)
	if c.Winner.NamespacedName == c.Port.NamespacedName {
		winner = fmt.Sprintf("the %s of its port %s", c.WinnerKind, portLabel(c.Winner))
	}
	switch c.Kind {
	case ClusterIPFrontend:
		return fmt.Sprintf("port %s left out: its cluster IP %s is also %s", portLabel(c.Port), c.Frontend, winner)
	case HealthCheckFrontend:
		return fmt.Sprintf("health-check node port %d left out: it is also %s", c.Frontend.Port, winner)
	}
	return fmt.Sprintf("%s %s of port %s left out: it is also %s", c.Kind, c.Frontend, portLabel(c.Port), winner)
}

func portLabel(n ServicePortName) string {
	if n.Port == "" {
		return string(n.Protocol)
	}
	return n.Port + "/" + string(n.Protocol)
}

func (f Frontend) String() string {
	switch {
	case !f.Addr.IsValid():
		return strconv.Itoa(int(f.Port))
	case f.Addr.IsUnspecified():
		return strconv.Itoa(int(f.Port)) + "/" + string(f.Protocol)
	}
	return netip.AddrPortFrom(f.Addr, f.Port).String() + "/" + string(f.Protocol)
}

// Resolution is the outcome of ResolveFrontends.
type Resolution struct {
	// Ports holds, for each claim in input order, its port without the frontends it lost: the
	// claim's own pointer when it lost nothing, a copy otherwise, nil when it lost its cluster IP.
	Ports []*ServicePort
	// Conflicts are the frontends lost to another port, sorted by loser, kind and frontend.
	Conflicts []Conflict
}

// frontendKey is a frontend as the kernel sees it. Node ports and health-check node ports are on
// every node address and kept apart from addresses (a hostile external IP of 0.0.0.0 is not a
// node port); health-check node ports are one TCP listener for both families.
type frontendKey struct {
	Frontend
	node bool // a node port (Addr: the family's unspecified address) or a health check (Addr invalid)
}

// entry is one frontend one claim makes.
type entry struct {
	claim int
	kind  FrontendKind
	key   frontendKey
	index int // into the port's ExternalIPs or LoadBalancerIPs
	// blocker marks a TCP node port's entry on the health-check key of its port: it takes that
	// port away from health checks but is never denied anything there.
	blocker bool
	lost    bool
}

// frontendsOf appends the entries of claim i to es. A repeated frontend of one port (an external
// IP that is also its cluster IP or a load-balancer IP, an address listed twice) is made once, as
// the first of cluster IP, load-balancer IPs, external IPs: the repeats change nothing about
// where traffic goes, and would put one key twice into a kernel map.
func frontendsOf(es []entry, i int, sp *ServicePort) []entry {
	start := len(es)
	add := func(kind FrontendKind, k frontendKey, index int) {
		if slices.ContainsFunc(es[start:], func(e entry) bool { return e.key == k && !e.blocker }) {
			return
		}
		es = append(es, entry{claim: i, kind: kind, key: k, index: index})
	}
	proto := sp.Name.Protocol
	add(ClusterIPFrontend, frontendKey{Frontend: Frontend{Addr: sp.ClusterIP, Port: sp.Port, Protocol: proto}}, 0)
	for j, a := range sp.LoadBalancerIPs {
		add(LoadBalancerIPFrontend, frontendKey{Frontend: Frontend{Addr: a, Port: sp.Port, Protocol: proto}}, j)
	}
	for j, a := range sp.ExternalIPs {
		add(ExternalIPFrontend, frontendKey{Frontend: Frontend{Addr: a, Port: sp.Port, Protocol: proto}}, j)
	}
	if sp.NodePort != 0 {
		unspec := netip.IPv4Unspecified()
		if sp.Name.Family == IPv6 {
			unspec = netip.IPv6Unspecified()
		}
		add(NodePortFrontend, frontendKey{Frontend: Frontend{Addr: unspec, Port: sp.NodePort, Protocol: proto}, node: true}, 0)
		if proto == v1.ProtocolTCP {
			es = append(es, entry{claim: i, kind: NodePortFrontend, blocker: true,
				key: frontendKey{Frontend: Frontend{Port: sp.NodePort, Protocol: v1.ProtocolTCP}, node: true}})
		}
	}
	if sp.HealthCheckNodePort != 0 {
		add(HealthCheckFrontend, frontendKey{Frontend: Frontend{Port: sp.HealthCheckNodePort, Protocol: v1.ProtocolTCP}, node: true}, 0)
	}
	return es
}

// keysOf lists the kernel frontends sp claims, for indexing who shares a frontend with whom. A
// frontend sp repeats is listed as often as sp names it, so that the repeat shows as a frontend
// claimed twice, for ResolveFrontends to drop.
func keysOf(sp *ServicePort) []frontendKey {
	proto := sp.Name.Protocol
	out := make([]frontendKey, 0, 1+len(sp.LoadBalancerIPs)+len(sp.ExternalIPs))
	out = append(out, frontendKey{Frontend: Frontend{Addr: sp.ClusterIP, Port: sp.Port, Protocol: proto}})
	for _, a := range slices.Concat(sp.LoadBalancerIPs, sp.ExternalIPs) {
		out = append(out, frontendKey{Frontend: Frontend{Addr: a, Port: sp.Port, Protocol: proto}})
	}
	if sp.NodePort != 0 || sp.HealthCheckNodePort != 0 {
		for _, e := range frontendsOf(nil, 0, sp) {
			if e.key.node {
				out = append(out, e.key)
			}
		}
	}
	return out
}

// ResolveFrontends gives every frontend (address, port and protocol; node port; health-check
// node port) to one service port, so that no two ports ask the kernel for the same one. A
// Service must not be able to take another's traffic, and every node reading the same objects
// must decide the same way; the rules are:
//
//  1. A port's own repeated frontends count once (see frontendsOf); the repeats are dropped
//     without a Conflict.
//  2. Cluster IPs: of the ports whose cluster IP, port and protocol are the same (never from the
//     API server, which allocates them), the first by rank keeps it and the others are left out
//     whole: a port cannot be programmed without its cluster IP.
//  3. Every other frontend, among the ports still in, goes to the first claimant by rank; the
//     others lose that frontend only and keep the rest. A cluster IP always beats an external or
//     load-balancer IP on its address, and a node port always beats a health-check node port.
//     A health-check node port is kept by every port of the winning service.
//
// Rank is: the kind's class (above), then the older Service, then namespace and name, then port
// name, protocol and family. What is not a conflict here, as in kube-proxy: an external or
// load-balancer IP that is one of the node's own addresses, on another service's node port (the
// address rule is matched first, so it takes that address's traffic; the node port keeps every
// other address), and the same port number with another protocol.
func ResolveFrontends(in []Claim) Resolution {
	var es []entry
	for i, c := range in { // 1: every frontend once per port
		es = frontendsOf(es, i, c.Port)
	}
	byKey := make(map[frontendKey][]int, len(es))
	for i, e := range es {
		byKey[e.key] = append(byKey[e.key], i)
	}
	rank := func(a, b int) int {
		ea, eb := es[a], es[b]
		if c := cmp.Compare(ea.kind.class(), eb.kind.class()); c != 0 {
			return c
		}
		return compareClaims(in[ea.claim], in[eb.claim])
	}
	var conflicts []Conflict
	lose := func(i, winner int) {
		es[i].lost = true
		e, w := es[i], es[winner]
		conflicts = append(conflicts, Conflict{Port: in[e.claim].Port.Name, Kind: e.kind, Frontend: e.key.Frontend,
			Winner: in[w.claim].Port.Name, WinnerKind: w.kind})
	}

	out := make([]bool, len(in)) // left out whole
	var cluster []int
	for _, ids := range byKey { // 2: cluster IPs among themselves
		cluster = cluster[:0]
		for _, i := range ids {
			if es[i].kind == ClusterIPFrontend {
				cluster = append(cluster, i)
			}
		}
		if len(cluster) < 2 {
			continue
		}
		w := slices.MinFunc(cluster, rank)
		for _, i := range cluster {
			if i != w {
				lose(i, w)
				out[es[i].claim] = true
			}
		}
	}
	var live []int
	for _, ids := range byKey { // 3: the rest, among the ports still in
		if len(ids) < 2 {
			continue
		}
		live = live[:0]
		for _, i := range ids {
			if !out[es[i].claim] && !es[i].lost {
				live = append(live, i)
			}
		}
		if len(live) < 2 {
			continue
		}
		w := slices.MinFunc(live, rank)
		for _, i := range live {
			switch {
			case i == w || es[i].blocker:
			case es[i].kind == HealthCheckFrontend && es[w].kind == HealthCheckFrontend &&
				in[es[i].claim].Port.Name.NamespacedName == in[es[w].claim].Port.Name.NamespacedName:
				// One service's ports share its health check.
			default:
				lose(i, w)
			}
		}
	}

	res := Resolution{Ports: make([]*ServicePort, len(in))} // 4: the ports without what they lost
	for i, c := range in {
		if !out[i] {
			res.Ports[i] = c.Port
		}
	}
	for start := 0; start < len(es); {
		end := start + 1
		for end < len(es) && es[end].claim == es[start].claim {
			end++
		}
		if i := es[start].claim; !out[i] {
			res.Ports[i] = without(in[i].Port, es[start:end])
		}
		start = end
	}
	slices.SortFunc(conflicts, compareConflicts)
	res.Conflicts = conflicts
	return res
}

// compareClaims orders claims by rank after the kind's class: older service first, then by name.
func compareClaims(a, b Claim) int {
	if c := a.Created.Compare(b.Created); c != 0 {
		return c
	}
	return comparePortNames(a.Port.Name, b.Port.Name)
}

func comparePortNames(a, b ServicePortName) int {
	if c := compareKeys(a.NamespacedName, b.NamespacedName); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Port, b.Port); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Protocol, b.Protocol); c != 0 {
		return c
	}
	return cmp.Compare(a.Family, b.Family)
}

func compareConflicts(a, b Conflict) int {
	if c := comparePortNames(a.Port, b.Port); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Kind, b.Kind); c != 0 {
		return c
	}
	if c := a.Frontend.Addr.Compare(b.Frontend.Addr); c != 0 {
		return c
	}
	return cmp.Compare(a.Frontend.Port, b.Frontend.Port)
}

// without returns sp less the frontends of es (its entries) that were lost and the repeats that
// frontendsOf dropped: sp itself when that is nothing, else a copy (ServicePorts are shared and
// never modified).
func without(sp *ServicePort, es []entry) *ServicePort {
	kept := func(kind FrontendKind, j int) bool {
		return slices.ContainsFunc(es, func(e entry) bool { return e.kind == kind && e.index == j && !e.lost && !e.blocker })
	}
	lostNode := func(kind FrontendKind) bool {
		return slices.ContainsFunc(es, func(e entry) bool { return e.kind == kind && e.lost })
	}
	same := !lostNode(NodePortFrontend) && !lostNode(HealthCheckFrontend)
	for j := range sp.LoadBalancerIPs {
		same = same && kept(LoadBalancerIPFrontend, j)
	}
	for j := range sp.ExternalIPs {
		same = same && kept(ExternalIPFrontend, j)
	}
	if same {
		return sp
	}
	c := *sp
	c.LoadBalancerIPs, c.ExternalIPs = nil, nil
	for j, a := range sp.LoadBalancerIPs {
		if kept(LoadBalancerIPFrontend, j) {
			c.LoadBalancerIPs = append(c.LoadBalancerIPs, a)
		}
	}
	for j, a := range sp.ExternalIPs {
		if kept(ExternalIPFrontend, j) {
			c.ExternalIPs = append(c.ExternalIPs, a)
		}
	}
	if lostNode(NodePortFrontend) {
		c.NodePort = 0
	}
	if lostNode(HealthCheckFrontend) {
		c.HealthCheckNodePort = 0
	}
	return &c
}
