package iptables

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	v1 "k8s.io/api/core/v1"

	"nodeagent/proxier"
)

// chain is one of our chains and its rules, each a full restore line ("-A NAME ...").
type chain struct {
	id    chainID
	rules []string
}

// serviceRules is what one service port contributes: chains it owns and rules it adds to the
// shared dispatch chains. It depends only on the service port and the renderer's settings, so an
// unchanged service port's rules are reused between syncs.
type serviceRules struct {
	own      []chain
	dispatch [numDispatch][]string
}

// dispatch indexes the shared chains that service ports add rules to. An array rather than a map
// keyed by chainID: every sync gathers these rules from every service port.
type dispatch int

const (
	filterServices dispatch = iota
	filterExternalServices
	filterNodePorts
	filterFirewall
	natServices
	natNodePorts
	numDispatch
)

// renderer turns service ports of one family into rules.
type renderer struct {
	family proxier.Family
	// local tells pod traffic from other traffic (--detect-local-mode), as kube-proxy's local
	// traffic detector.
	local         proxier.LocalDetector
	masqueradeAll bool
	// mark is the masquerade mark, as iptables prints it (0x4000).
	mark    string
	nodeIPs []netip.Addr
	// nodePortAddrs restricts node ports to these node IPs; nil means every local address.
	nodePortAddrs []netip.Addr
	// localhostNodePorts: node ports answer on 127.0.0.0/8 too (IPv4, every local address).
	localhostNodePorts bool
	randomFully        bool
	// largeCluster is kube-proxy's "large cluster mode": with more than largeClusterEndpoints
	// endpoints in the family, the per-endpoint rules (SEP chains, and the SVC/SVL rules that
	// pick an endpoint) go without their comment. That is most of the rules, and the comments
	// cost iptables-restore about a quarter of its time (5,000 services x 10 endpoints: 5.8 s ->
	// 4.1 s for a first restore).
	largeCluster bool
}

// largeClusterEndpoints is kube-proxy's largeClusterEndpointsThreshold.
const largeClusterEndpoints = 1000

func newRenderer(st *proxier.State, f proxier.Family, randomFully bool) *renderer {
	r := &renderer{family: f, local: st.LocalDetector(f), masqueradeAll: st.Config.MasqueradeAll,
		mark: fmt.Sprintf("%#x", st.Config.MasqMark()), nodeIPs: st.NodeIPsOf(f), randomFully: randomFully}
	endpoints := 0
	for _, sp := range st.Services {
		if sp.Name.Family == f {
			endpoints += len(sp.AllEndpoints)
		}
	}
	r.largeCluster = endpoints > largeClusterEndpoints
	if ips, restricted := st.NodePortIPs(f); restricted {
		r.nodePortAddrs = ips
	}
	// As kube-proxy: only IPv4, and only when node ports answer on every local address (a
	// --nodeport-addresses list never holds loopback here).
	r.localhostNodePorts = st.Config.LocalhostNodePorts && f == proxier.IPv4 && r.nodePortAddrs == nil
	return r
}

// ifLocal and ifNotLocal are the matches of traffic from pods and of other traffic
// (kube-proxy's IfLocal / IfNotLocal); only called when r.local.Implemented().
func (r *renderer) ifLocal() string {
	switch {
	case r.local.CIDR.IsValid():
		return "-s " + r.local.CIDR.String()
	case r.local.Prefix:
		return "-i " + r.local.Interface + "+"
	}
	return "-i " + r.local.Interface
}

func (r *renderer) ifNotLocal() string { return "! " + r.ifLocal() }

// settings summarises everything besides the service port that a rendering depends on.
func (r *renderer) settings() string {
	return fmt.Sprint(r.local, r.masqueradeAll, r.mark, r.nodeIPs, r.nodePortAddrs == nil, r.nodePortAddrs,
		r.localhostNodePorts, r.randomFully, r.largeCluster)
}

// endpointComment is the comment of a per-endpoint rule, with a leading space, or nothing in
// large-cluster mode.
func (r *renderer) endpointComment(s string) string {
	if r.largeCluster {
		return ""
	}
	return " " + comment(s)
}

// line joins words into one restore line.
func line(words ...string) string { return strings.Join(words, " ") }

func comment(s string) string { return `-m comment --comment "` + s + `"` }

// probability is the statistic match's argument for the i-th of n remaining endpoints, printed
// as kube-proxy prints it.
func probability(n int) string { return fmt.Sprintf("%0.10f", 1.0/float64(n)) }

// service renders one service port the way kube-proxy's iptables mode does.
func (r *renderer) service(sp *proxier.ServicePort) *serviceRules {
	out := &serviceRules{}
	add := func(d dispatch, rules ...string) {
		out.dispatch[d] = append(out.dispatch[d], rules...)
	}

	name := portName(sp.Name)
	proto := strings.ToLower(string(sp.Name.Protocol))
	pmatch := "-m " + proto + " -p " + proto
	port := strconv.Itoa(int(sp.Port))
	cip := sp.ClusterIP.String()

	svcChain := serviceChain(svcPrefix, sp.Name)
	svlChain := serviceChain(svlPrefix, sp.Name)
	extChain := serviceChain(extPrefix, sp.Name)
	fwChain := serviceChain(fwPrefix, sp.Name)

	// Which endpoints each path uses and what becomes of a path without any: decided by the
	// model (kube-proxy's CategorizeEndpoints).
	external := sp.HasExternal()
	clusterEPs, localEPs := sp.ClusterPolicyEndpoints(), sp.LocalPolicyEndpoints()
	hasEndpoints := sp.HasEndpoints()
	internalVerdict, externalVerdict := sp.InternalVerdict(), sp.ExternalVerdict()

	internalChain, hasInternal := svcChain, internalVerdict == proxier.Forward
	if sp.InternalPolicyLocal {
		internalChain = svlChain
	}
	externalPolicyChain, hasExternal := svcChain, externalVerdict == proxier.Forward
	if sp.ExternalPolicyLocal {
		externalPolicyChain = svlChain
	}
	// The EXT chain exists whenever there are endpoints somewhere, even with none local, so
	// that pod and node traffic still short-circuits to the cluster endpoints.
	usesExt := hasEndpoints && external
	usesFW := hasEndpoints && len(sp.LoadBalancerIPs) > 0 && len(sp.LoadBalancerSourceRanges) > 0
	lbChain := extChain
	if usesFW {
		lbChain = fwChain
	}

	// A TCP reset, unlike ICMP port-unreachable, is not rate-limited by the kernel
	// (net.ipv4.icmp_ratelimit), so every client sees "connection refused" at once.
	reject := "REJECT"
	if sp.Name.Protocol == v1.ProtocolTCP {
		reject = "REJECT --reject-with tcp-reset"
	}
	filter := func(v proxier.Verdict) (target, comment string) {
		switch v {
		case proxier.Reject:
			return reject, name + " has no endpoints"
		case proxier.Drop:
			return "DROP", name + " has no local endpoints"
		}
		return "", ""
	}
	internalFilter, internalFilterComment := filter(internalVerdict)
	externalFilter, externalFilterComment := filter(externalVerdict)

	// Cluster IP.
	if hasInternal {
		add(natServices, line("-A", servicesChain, comment(name+" cluster IP"), pmatch, "-d", cip, "--dport", port, "-j", internalChain))
	} else {
		add(filterServices, line("-A", servicesChain, comment(internalFilterComment), pmatch, "-d", cip, "--dport", port, "-j", internalFilter))
	}
	// External IPs.
	for _, a := range sp.ExternalIPs {
		if hasEndpoints {
			add(natServices, line("-A", servicesChain, comment(name+" external IP"), pmatch, "-d", a.String(), "--dport", port, "-j", extChain))
		}
		if !hasExternal {
			add(filterExternalServices, line("-A", externalServicesChain, comment(externalFilterComment), pmatch, "-d", a.String(), "--dport", port, "-j", externalFilter))
		}
	}
	// Load-balancer IPs.
	for _, a := range sp.LoadBalancerIPs {
		if hasEndpoints {
			add(natServices, line("-A", servicesChain, comment(name+" loadbalancer IP"), pmatch, "-d", a.String(), "--dport", port, "-j", lbChain))
		}
		if usesFW {
			add(filterFirewall, line("-A", firewallChain, comment(name+" traffic not accepted by "+fwChain), pmatch, "-d", a.String(), "--dport", port, "-j", "DROP"))
		}
	}
	if !hasExternal {
		for _, a := range sp.LoadBalancerIPs {
			add(filterExternalServices, line("-A", externalServicesChain, comment(externalFilterComment), pmatch, "-d", a.String(), "--dport", port, "-j", externalFilter))
		}
	}
	// Node port. Like kube-proxy, loadBalancerSourceRanges do not apply to it.
	if sp.NodePort != 0 {
		np := strconv.Itoa(int(sp.NodePort))
		if hasEndpoints {
			add(natNodePorts, line("-A", nodePortsChain, comment(name), pmatch, "--dport", np, "-j", extChain))
		}
		if !hasExternal {
			add(filterExternalServices, line("-A", externalServicesChain, comment(externalFilterComment), "-m addrtype --dst-type LOCAL", pmatch, "--dport", np, "-j", externalFilter))
		}
	}
	// Health-check node port: accepted whatever the endpoints, so the load balancer can ask.
	if sp.HealthCheckNodePort != 0 {
		add(filterNodePorts, line("-A", nodePortsChain, comment(name+" health check node port"), "-m tcp -p tcp", "--dport", strconv.Itoa(int(sp.HealthCheckNodePort)), "-j ACCEPT"))
	}

	// Per-service chains, in the order kube-proxy creates them.
	rules := map[string][]string{}
	var order []string
	own := func(name string, rs ...string) {
		if _, ok := rules[name]; !ok {
			order = append(order, name)
		}
		rules[name] = append(rules[name], rs...)
	}
	usesClusterChain := len(clusterEPs) > 0
	usesLocalChain := len(localEPs) > 0
	if usesClusterChain {
		own(svcChain)
	}
	if usesLocalChain {
		own(svlChain)
	}
	if usesExt {
		own(extChain)
	}
	if usesFW {
		own(fwChain)
	}

	// Internal traffic: masquerade what must come back through this node.
	if hasInternal {
		args := line(comment(name+" cluster IP"), pmatch, "-d", cip, "--dport", port)
		switch {
		case r.masqueradeAll:
			own(internalChain, line("-A", internalChain, args, "-j", markMasqChain))
		case r.local.Implemented():
			// Off-cluster clients reaching a cluster IP through this node (a static route to
			// the service range) may be sent to another node: masquerade so replies return here.
			own(internalChain, line("-A", internalChain, args, r.ifNotLocal(), "-j", markMasqChain))
		}
	}

	// External traffic.
	if usesExt {
		if !sp.ExternalPolicyLocal {
			own(extChain, line("-A", extChain, comment("masquerade traffic for "+name+" external destinations"), "-j", markMasqChain))
		} else {
			if r.local.Implemented() {
				// Pods reaching an external address behave as if they went out to the load
				// balancer and came back: no traffic policy applies.
				own(extChain, line("-A", extChain, comment("pod traffic for "+name+" external destinations"), r.ifLocal(), "-j", svcChain))
			}
			// The node itself: its source would be the local VIP, so masquerade, and send it
			// to any endpoint.
			own(extChain,
				line("-A", extChain, comment("masquerade LOCAL traffic for "+name+" external destinations"), "-m addrtype --src-type LOCAL", "-j", markMasqChain),
				line("-A", extChain, comment("route LOCAL traffic for "+name+" external destinations"), "-m addrtype --src-type LOCAL", "-j", svcChain))
		}
		if hasExternal {
			own(extChain, line("-A", extChain, "-j", externalPolicyChain))
		}
	}

	// Firewall for loadBalancerSourceRanges.
	if usesFW {
		c := comment(name + " loadbalancer IP")
		allowFromNode := false
		for _, p := range sp.LoadBalancerSourceRanges {
			own(fwChain, line("-A", fwChain, c, "-s", p.String(), "-j", extChain))
			for _, a := range r.nodeIPs {
				if p.Contains(a) {
					allowFromNode = true
				}
			}
		}
		// A request from this node to a VIP that is also a local address loops back with the
		// VIP as source; let it through when the node itself is allowed.
		if allowFromNode {
			for _, a := range sp.LoadBalancerIPs {
				own(fwChain, line("-A", fwChain, c, "-s", a.String(), "-j", extChain))
			}
		}
		// Whatever reaches the end was not DNAT-ed and is dropped by NA-PROXY-FIREWALL.
		own(fwChain, line("-A", fwChain, comment("other traffic to "+name+" will be dropped by "+firewallChain)))
	}

	if usesClusterChain {
		own(svcChain, r.toEndpoints(sp, name, svcChain, clusterEPs)...)
	}
	if usesLocalChain {
		own(svlChain, r.toEndpoints(sp, name, svlChain, localEPs)...)
	}
	c := r.endpointComment(name)
	for _, e := range sp.ReachableEndpoints() {
		sep := endpointChain(sp.Name, e)
		// Hairpin: an endpoint reaching itself through the service must be masqueraded, or it
		// would answer itself directly.
		rs := []string{line("-A", sep+c, "-s", e.Addr.String(), "-j", markMasqChain)}
		affinity := ""
		if sp.SessionAffinity {
			affinity = " -m recent --name " + sep + " --set"
		}
		rs = append(rs, line("-A", sep+c+affinity, pmatch, "-j DNAT --to-destination", e.AddrPort().String()))
		own(sep, rs...)
	}

	for _, n := range order {
		out.own = append(out.own, chain{chainID{tableNAT, n}, rules[n]})
	}
	return out
}

// toEndpoints writes the rules of a SVC or SVL chain: affinity first, then random balancing
// where the i-th rule of n takes 1/(n-i) of what reaches it, so each endpoint gets 1/n.
func (r *renderer) toEndpoints(sp *proxier.ServicePort, name, from string, eps []proxier.Endpoint) []string {
	var rs []string
	if sp.SessionAffinity {
		secs := strconv.Itoa(int(sp.AffinityTimeout.Seconds()))
		for _, e := range eps {
			sep := endpointChain(sp.Name, e)
			rs = append(rs, line("-A", from+r.endpointComment(name+" -> "+e.String()), "-m recent --name", sep, "--rcheck --seconds", secs, "--reap -j", sep))
		}
	}
	for i, e := range eps {
		sep := endpointChain(sp.Name, e)
		c := r.endpointComment(name + " -> " + e.String())
		if left := len(eps) - i; left > 1 {
			rs = append(rs, line("-A", from+c, "-m statistic --mode random --probability", probability(left), "-j", sep))
		} else {
			rs = append(rs, line("-A", from+c, "-j", sep))
		}
	}
	return rs
}

// baseChains assembles the shared chains of one family from the service ports' dispatch rules,
// in state order, around the fixed rules kube-proxy writes.
func (r *renderer) baseChains(services []*serviceRules) []chain {
	var collected [numDispatch][]string
	for _, s := range services {
		for d, rs := range s.dispatch {
			collected[d] = append(collected[d], rs...)
		}
	}
	dispatchNAT := collected[natServices]
	// Node ports come last in NA-SERVICES, so a VIP that is also a local address is matched
	// as a VIP first.
	npComment := comment("nodeagent service nodeports; NOTE: this must be the last rule in this chain")
	var localnet []string
	switch {
	case r.localhostNodePorts:
		// Node ports on 127.0.0.1 too (kube-proxy's --iptables-localhost-nodeports, its
		// default): the proxier sets route_localnet, which lets martian packets to 127.0.0.0/8
		// in from outside; drop those unless DNAT-ed or answers, as kube-proxy's KUBE-FIREWALL.
		dispatchNAT = append(dispatchNAT, line("-A", servicesChain, npComment, "-m addrtype --dst-type LOCAL", "-j", nodePortsChain))
		localnet = []string{line("-A", localnetFirewallChain, comment("block incoming localnet connections"),
			"-d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP")}
	case r.nodePortAddrs == nil:
		loopback := "127.0.0.0/8"
		if r.family == proxier.IPv6 {
			loopback = "::1/128"
		}
		// Node ports are not offered on loopback: that needs route_localnet (IPv4 only,
		// Config.LocalhostNodePorts).
		dispatchNAT = append(dispatchNAT, line("-A", servicesChain, npComment, "-m addrtype --dst-type LOCAL", "!", "-d", loopback, "-j", nodePortsChain))
	default:
		for _, a := range r.nodePortAddrs {
			dispatchNAT = append(dispatchNAT, line("-A", servicesChain, npComment, "-d", a.String(), "-j", nodePortsChain))
		}
	}
	masq := line("-A", postroutingChain, comment("nodeagent service traffic requiring SNAT"), "-j MASQUERADE")
	if r.randomFully {
		masq += " --random-fully"
	}
	return []chain{
		{chainID{tableFilter, servicesChain}, collected[filterServices]},
		{chainID{tableFilter, externalServicesChain}, collected[filterExternalServices]},
		{chainID{tableFilter, forwardChain}, []string{
			line("-A", forwardChain, "-m conntrack --ctstate INVALID -j DROP"),
			line("-A", forwardChain, comment("nodeagent forwarding rules"), "-m mark --mark", r.mark+"/"+r.mark, "-j ACCEPT"),
			line("-A", forwardChain, comment("nodeagent forwarding conntrack rule"), "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
		}},
		{chainID{tableFilter, nodePortsChain}, collected[filterNodePorts]},
		{chainID{tableFilter, firewallChain}, collected[filterFirewall]},
		{chainID{tableFilter, localnetFirewallChain}, localnet},
		{chainID{tableNAT, servicesChain}, dispatchNAT},
		{chainID{tableNAT, nodePortsChain}, collected[natNodePorts]},
		{chainID{tableNAT, postroutingChain}, []string{
			line("-A", postroutingChain, "-m mark ! --mark", r.mark+"/"+r.mark, "-j RETURN"),
			// Clear the mark so a packet re-entering the stack is not masqueraded twice.
			line("-A", postroutingChain, "-j MARK --xor-mark", r.mark),
			masq,
		}},
		{chainID{tableNAT, markMasqChain}, []string{line("-A", markMasqChain, "-j MARK --or-mark", r.mark)}},
	}
}
