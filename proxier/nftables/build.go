package nftables

import (
	"net/netip"
	"nodeagent/proxier/nft"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"nodeagent/proxier"
)

// Kernel object names. The table is ours alone; everything else lives inside it.
const (
	tableName = "nodeagent"

	setClusterIPs          = "cluster-ips"
	setNodePortIPs         = "nodeport-ips"
	setHairpin             = "hairpin-ips"
	mapServiceIPs          = "service-ips"
	mapServiceNodePorts    = "service-nodeports"
	mapNoEndpointServices  = "no-endpoint-services"
	mapNoEndpointNodePorts = "no-endpoint-nodeports"
	mapFirewallIPs         = "firewall-ips"
	mapServiceEndpoints    = "service-endpoints"
	mapNodePortEndpoints   = "nodeport-endpoints"
	setExternalIPs         = "external-ips"

	chainFilterPreroutingPreDNAT = "filter-prerouting-pre-dnat"
	chainFilterOutputPreDNAT     = "filter-output-pre-dnat"
	chainFilterInput             = "filter-input"
	chainFilterForward           = "filter-forward"
	chainFilterOutput            = "filter-output"
	chainNATPrerouting           = "nat-prerouting"
	chainNATOutput               = "nat-output"
	chainNATPostrouting          = "nat-postrouting"
	chainFirewallCheck           = "firewall-check"
	chainServices                = "services"
	chainServiceEndpointsCheck   = "service-endpoints-check"
	chainNodePortEndpointsCheck  = "nodeport-endpoints-check"
	chainClusterIPsCheck         = "cluster-ips-check"
	chainReject                  = "reject-chain"
	chainMarkForMasquerade       = "mark-for-masquerade"
	chainMarkOffCluster          = "mark-for-masquerade-off-cluster"
	chainMasquerading            = "masquerading"
	chainNodePorts               = "nodeports"
)

// Base chain priorities, as kube-proxy's: the firewall runs just before DNAT.
const (
	prioDstNAT = -100
	prioSrcNAT = 100
	prioFilter = 0
)

// elemID names one element of one set or map (builders use it to deduplicate).
type elemID struct {
	set string
	key nft.Key
}

// element is one element of a set or map: Val is a verdict map's value, To an endpoint map's
// (both are ignored for plain sets).
type element struct {
	set string
	key nft.Key
	val nft.Verdict
	to  netip.AddrPort
}

// fragment is what one owner (the base ruleset, or one ServicePort) puts into a table.
type fragment struct {
	sets   []*nft.Set
	chains []*nft.Chain
	elems  []element
	counts []int // endpoint counts whose dispatch objects (see buildBase) the elements use
}

// chain returns the fragment's chain called name, or nil.
func (fr *fragment) chain(name string) *nft.Chain {
	for _, c := range fr.chains {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// addElem adds an element once per seen; with seen nil it adds it as often as asked (the
// programmed table counts references, so repeats cost nothing but a little bookkeeping).
func (fr *fragment) addElem(seen map[elemID]bool, set string, key nft.Key, val nft.Verdict) {
	if seen != nil {
		id := elemID{set: set, key: key}
		if seen[id] {
			return
		}
		seen[id] = true
	}
	fr.elems = append(fr.elems, element{set: set, key: key, val: val})
}

// Names of the objects shared by all service addresses (or node ports) with n endpoints.
func servicesWith(n int) string  { return "services-with-" + strconv.Itoa(n) + "-endpoints" }
func dnatChain(n int) string     { return "dnat-" + strconv.Itoa(n) + "-endpoints" }
func nodePortsWith(n int) string { return "nodeports-with-" + strconv.Itoa(n) + "-endpoints" }
func nodePortDNAT(n int) string  { return "nodeport-dnat-" + strconv.Itoa(n) + "-endpoints" }

// verdictMaps are the sets of baseSets that are verdict maps: the only ones whose elements
// carry a verdict.
var verdictMaps = map[string]bool{mapServiceIPs: true, mapServiceNodePorts: true, mapNoEndpointServices: true,
	mapNoEndpointNodePorts: true, mapFirewallIPs: true}

// baseSets are the named sets and maps every table has.
func baseSets(st *proxier.State, f *nft.Family) []*nft.Set {
	sets := []*nft.Set{
		{Name: setClusterIPs, Kind: nft.KeyAddr, Comment: "active cluster IPs"},
		{Name: setHairpin, Kind: nft.KeyAddrAddr, Comment: "local endpoint . itself, to masquerade hairpin traffic"},
		{Name: mapServiceIPs, Kind: nft.KeyAddrProtoPort, IsMap: true, Comment: "cluster, external and load-balancer IPs"},
		{Name: mapServiceNodePorts, Kind: nft.KeyProtoPort, IsMap: true, Comment: "node ports"},
		{Name: mapNoEndpointServices, Kind: nft.KeyAddrProtoPort, IsMap: true, Comment: "reject or drop traffic to services without endpoints"},
		{Name: mapNoEndpointNodePorts, Kind: nft.KeyProtoPort, IsMap: true, Comment: "reject or drop traffic to node ports without endpoints"},
		{Name: mapFirewallIPs, Kind: nft.KeyAddrProtoPort, IsMap: true, Comment: "load-balancer IPs with source ranges"},
		{Name: mapServiceEndpoints, Kind: nft.KeyAddrProtoPortSlot, Endpoints: true},
		{Name: mapNodePortEndpoints, Kind: nft.KeyProtoPortSlot, Endpoints: true},
		{Name: setExternalIPs, Kind: nft.KeyAddrProtoPort, Comment: "external and load-balancer IPs picked through service-endpoints"},
	}
	if _, restricted := st.NodePortIPs(f.PF); restricted {
		sets = append(sets, &nft.Set{Name: setNodePortIPs, Kind: nft.KeyAddr, Comment: "node addresses that accept node ports"})
	}
	return sets
}

// buildBase is the fixed part of a table: base chains, dispatch through the maps, the reject
// and masquerade helpers. It depends on the configuration, the node's addresses and the
// endpoint counts in use (sorted): for each count n, a set of the service addresses (and one
// of the node ports) that have n endpoints, and a chain that DNATs them through the shared
// endpoint map with "numgen random mod n". A classification rule per count in the services
// chain sends a packet to its count's chain: a few hash lookups however many services exist.
func buildBase(st *proxier.State, f *nft.Family, counts []int) *fragment {
	cfg := &st.Config
	fr := &fragment{sets: baseSets(st, f), counts: counts}
	local := st.LocalDetector(f.PF)
	mark := cfg.MasqMark()
	setMark := nft.MarkOp{Op: nft.MarkSet, Mark: mark}
	base := func(name, typ string, hooknum uint32, prio int32, rules ...nft.Rule) {
		fr.chains = append(fr.chains, &nft.Chain{Name: name, Hook: &nft.Hook{Type: typ, Hooknum: hooknum, Priority: prio}, Rules: rules})
	}
	helper := func(name string, rules ...nft.Rule) {
		fr.chains = append(fr.chains, &nft.Chain{Name: name, Rules: rules})
	}
	newConn := func(target string) nft.Rule { return nft.Rule{nft.CtStateNew{}, nft.Jump(target)} }

	base(chainFilterPreroutingPreDNAT, "filter", unix.NF_INET_PRE_ROUTING, prioDstNAT-10, newConn(chainFirewallCheck))
	base(chainFilterOutputPreDNAT, "filter", unix.NF_INET_LOCAL_OUT, prioDstNAT-10, newConn(chainFirewallCheck))
	base(chainFilterInput, "filter", unix.NF_INET_LOCAL_IN, prioFilter,
		newConn(chainNodePortEndpointsCheck), newConn(chainServiceEndpointsCheck))
	base(chainFilterForward, "filter", unix.NF_INET_FORWARD, prioFilter,
		newConn(chainServiceEndpointsCheck), newConn(chainClusterIPsCheck))
	base(chainFilterOutput, "filter", unix.NF_INET_LOCAL_OUT, prioFilter,
		newConn(chainServiceEndpointsCheck), newConn(chainClusterIPsCheck))
	base(chainNATPrerouting, "nat", unix.NF_INET_PRE_ROUTING, prioDstNAT, nft.Rule{nft.Jump(chainServices)})
	base(chainNATOutput, "nat", unix.NF_INET_LOCAL_OUT, prioDstNAT, nft.Rule{nft.Jump(chainServices)})
	base(chainNATPostrouting, "nat", unix.NF_INET_POST_ROUTING, prioSrcNAT, nft.Rule{nft.Jump(chainMasquerading)})

	// Node ports: on the configured addresses (--nodeport-addresses, primary by default as in
	// kube-proxy's nftables mode), else on every local address but loopback (kube-proxy's
	// nftables mode never offers localhost node ports).
	nodePortIPs, restricted := st.NodePortIPs(f.PF)
	var nodePortMatch nft.Rule
	if restricted {
		nodePortMatch = nft.Rule{nft.AddrInSet{Set: setNodePortIPs}}
	} else {
		nodePortMatch = nft.Rule{nft.FibLocal{}, nft.AddrMatch{Neg: true, Prefix: f.Loopback}}
	}
	helper(chainFirewallCheck, nft.Rule{nft.ServiceVmap{Set: mapFirewallIPs}})
	services := []nft.Rule{
		{nft.ServiceVmap{Set: mapServiceIPs}},
		{nft.TupleInSet{Set: setExternalIPs}, nft.Jump(chainMarkForMasquerade)},
	}
	nodePorts := []nft.Rule{{nft.PortVmap{Set: mapServiceNodePorts}}}
	// Traffic to a cluster IP from outside the cluster is masqueraded so that replies come
	// back here; external IPs were marked in the services chain, node ports are marked here.
	var clusterMasq nft.Rule
	switch {
	case cfg.MasqueradeAll:
		clusterMasq = nft.Rule{nft.AddrInSet{Set: setClusterIPs}, nft.Jump(chainMarkForMasquerade)}
	case local.Implemented():
		clusterMasq = nft.Rule{nft.AddrInSet{Set: setClusterIPs}, nft.Jump(chainMarkOffCluster)}
	}
	for _, n := range counts {
		fr.sets = append(fr.sets,
			&nft.Set{Name: servicesWith(n), Kind: nft.KeyAddrProtoPort},
			&nft.Set{Name: nodePortsWith(n), Kind: nft.KeyProtoPort})
		services = append(services, nft.Rule{nft.TupleInSet{Set: servicesWith(n)}, nft.Goto(dnatChain(n))})
		nodePorts = append(nodePorts, nft.Rule{nft.PortInSet{Set: nodePortsWith(n)}, nft.Goto(nodePortDNAT(n))})
		var rules []nft.Rule
		if clusterMasq != nil {
			rules = append(rules, clusterMasq)
		}
		helper(dnatChain(n), append(rules, nft.Rule{nft.DNATSlot{ByAddr: true, Mod: uint32(n), Set: mapServiceEndpoints}})...)
		helper(nodePortDNAT(n), nft.Rule{nft.Jump(chainMarkForMasquerade)},
			nft.Rule{nft.DNATSlot{Mod: uint32(n), Set: mapNodePortEndpoints}})
	}
	helper(chainServices, append(services, append(append(nft.Rule{}, nodePortMatch...), nft.Goto(chainNodePorts)))...)
	helper(chainNodePorts, nodePorts...)
	helper(chainServiceEndpointsCheck, nft.Rule{nft.ServiceVmap{Set: mapNoEndpointServices}})
	helper(chainNodePortEndpointsCheck, append(append(nft.Rule{}, nodePortMatch...), nft.PortVmap{Set: mapNoEndpointNodePorts}))
	// New connections that reach the filter hooks with a cluster IP as destination were not
	// DNAT-ed: a port the service does not have is rejected, an address of the service CIDRs
	// no service holds is dropped (kube-proxy's "drop traffic to unallocated ClusterIPs").
	clusterIPsCheck := []nft.Rule{{nft.AddrInSet{Set: setClusterIPs}, nft.Goto(chainReject)}}
	for _, p := range st.ServiceCIDRsOf(f.PF) {
		clusterIPsCheck = append(clusterIPsCheck, nft.Rule{nft.AddrMatch{Prefix: p}, nft.Drop})
	}
	helper(chainClusterIPsCheck, clusterIPsCheck...)
	helper(chainReject, nft.Rule{nft.L4Proto{Proto: unix.IPPROTO_TCP}, nft.Reject{TCPReset: true}}, nft.Rule{nft.Reject{}})
	helper(chainMarkForMasquerade, nft.Rule{setMark})
	if local.Implemented() && !cfg.MasqueradeAll {
		helper(chainMarkOffCluster, nft.Rule{nft.LocalMatch(local, false), nft.Return}, nft.Rule{setMark})
	}
	helper(chainMasquerading,
		nft.Rule{nft.CtStatusDNAT{}, nft.AddrPairInSet{Set: setHairpin}, setMark},
		nft.Rule{nft.MarkOp{Op: nft.MarkUnset, Mark: mark}, nft.Return},
		nft.Rule{nft.MarkOp{Op: nft.MarkClear, Mark: mark}},
		nft.Rule{nft.Masquerade{FullyRandom: true}})

	seen := map[elemID]bool{}
	for _, a := range nodePortIPs {
		fr.addElem(seen, setNodePortIPs, nft.Key{Addr: a}, nft.Verdict{})
	}
	return fr
}

// nameBase is kube-proxy's readable service port name: namespace/name/protocol/port.
func nameBase(sp *proxier.ServicePort) string {
	return sp.Name.Namespace + "/" + sp.Name.Name + "/" + strings.ToLower(string(sp.Name.Protocol)) + "/" + sp.Name.Port
}

// endpointText is the endpoint as it appears in names: nft identifiers may not contain ':'.
func endpointText(ep proxier.Endpoint) string {
	return strings.ReplaceAll(ep.Addr.String(), ":", ".") + "/" + strconv.Itoa(int(ep.Port))
}

// chainsNeeded reports whether a service port needs chains of its own: ClientIP affinity
// (per-endpoint chains and sets) and Local external policy (the choice depends on the source).
// Every other service port is elements in shared sets and maps only (buildShared), so adding,
// changing or removing it costs the kernel no table validation.
func chainsNeeded(sp *proxier.ServicePort) bool {
	return sp.SessionAffinity || (sp.HasExternal() && sp.ExternalPolicyLocal)
}

// buildService is everything one ServicePort programs.
// into, when not nil, is a fragment to reuse: a sync builds 25,000 fragments only to compare
// them, and reusing one spares their allocation.
func buildService(st *proxier.State, f *nft.Family, sp *proxier.ServicePort, into *fragment) *fragment {
	if chainsNeeded(sp) {
		return buildChains(st, f, sp)
	}
	return buildShared(st, f, sp, into)
}

// buildShared programs a service port into the shared objects of its endpoint counts: each
// address (cluster IP, external and load-balancer IPs, node port) goes into the set of its
// count, and its endpoints into slots 0..n-1 of the endpoint map under the same key.
func buildShared(st *proxier.State, f *nft.Family, sp *proxier.ServicePort, into *fragment) *fragment {
	fr := into
	if fr == nil {
		// Sized for the common case: a cluster IP and its endpoints' slots and hairpin elements.
		fr = &fragment{elems: make([]element, 0, 2+2*len(sp.ClusterEndpoints))}
	} else {
		*fr = fragment{elems: fr.elems[:0], counts: fr.counts[:0]}
	}
	var seen map[elemID]bool // no deduplication needed, see addElem
	proto := nft.ProtoNum(sp.Name.Protocol)
	// No chains of its own means External policy Cluster (chainsNeeded): external traffic uses
	// the cluster endpoints.
	internal, external := sp.InternalEndpoints(), sp.ExternalEndpoints()
	var hairpins []netip.Addr
	count := func(n int) {
		if !slices.Contains(fr.counts, n) {
			fr.counts = append(fr.counts, n)
		}
	}
	slots := func(setName, mapName string, k nft.Key, eps []proxier.Endpoint) {
		count(len(eps))
		fr.addElem(seen, setName, k, nft.Verdict{})
		for i, ep := range eps {
			sk := k
			sk.Slot = uint32(i)
			fr.elems = append(fr.elems, element{set: mapName, key: sk, to: ep.AddrPort()})
			// Only an endpoint on this node can receive its own traffic back through us: a
			// pod's packets to a service are translated by its own node's proxy. So remote
			// endpoints need no hairpin element (kube-proxy masquerades for every endpoint;
			// with 10 endpoints per service those elements were almost half of the table).
			if ep.Local && !slices.Contains(hairpins, ep.Addr) {
				hairpins = append(hairpins, ep.Addr)
				fr.addElem(seen, setHairpin, nft.Key{Addr: ep.Addr}, nft.Verdict{})
			}
		}
	}

	fr.addElem(seen, setClusterIPs, nft.Key{Addr: sp.ClusterIP}, nft.Verdict{})
	cipKey := nft.Key{Addr: sp.ClusterIP, Proto: proto, Port: sp.Port}
	if len(internal) > 0 {
		slots(servicesWith(len(internal)), mapServiceEndpoints, cipKey, internal)
	} else {
		fr.addElem(seen, mapNoEndpointServices, cipKey, noEndpoints(sp.InternalVerdict()))
	}
	// External traffic (Cluster policy here) is masqueraded and may use any endpoint.
	for _, addrs := range [][]netip.Addr{sp.ExternalIPs, sp.LoadBalancerIPs} {
		for _, a := range addrs {
			k := nft.Key{Addr: a, Proto: proto, Port: sp.Port}
			if len(external) > 0 {
				fr.addElem(seen, setExternalIPs, k, nft.Verdict{})
				slots(servicesWith(len(external)), mapServiceEndpoints, k, external)
			} else {
				fr.addElem(seen, mapNoEndpointServices, k, noEndpoints(sp.ExternalVerdict()))
			}
		}
	}
	if sp.NodePort != 0 {
		k := nft.Key{Proto: proto, Port: sp.NodePort}
		if len(external) > 0 {
			slots(nodePortsWith(len(external)), mapNodePortEndpoints, k, external)
		} else {
			fr.addElem(seen, mapNoEndpointNodePorts, k, noEndpoints(sp.ExternalVerdict()))
		}
	}
	firewall(fr, seen, f, sp, proto)
	return fr
}

// noEndpoints is the nftables verdict for traffic the model drops or rejects for want of
// endpoints.
func noEndpoints(v proxier.Verdict) nft.Verdict {
	if v == proxier.Drop {
		return nft.Drop
	}
	return nft.Goto(chainReject)
}

// firewall adds the chain that enforces loadBalancerSourceRanges: only the listed sources
// reach the load-balancer IPs.
func firewall(fr *fragment, seen map[elemID]bool, f *nft.Family, sp *proxier.ServicePort, proto uint8) {
	if len(sp.LoadBalancerSourceRanges) == 0 || len(sp.LoadBalancerIPs) == 0 {
		return
	}
	base := nameBase(sp)
	fwChain := nft.ObjectName("firewall", base, base)
	c := &nft.Chain{Name: fwChain}
	for _, p := range sp.LoadBalancerSourceRanges {
		c.Rules = append(c.Rules, nft.Rule{nft.AddrMatch{Src: true, Prefix: p}, nft.Return})
	}
	c.Rules = append(c.Rules, nft.Rule{nft.Drop})
	fr.chains = append(fr.chains, c)
	for _, a := range sp.LoadBalancerIPs {
		fr.addElem(seen, mapFirewallIPs, nft.Key{Addr: a, Proto: proto, Port: sp.Port}, nft.Goto(fwChain))
	}
}

// buildChains is what a service port that needs chains of its own programs: dispatch chains,
// endpoint chains, affinity sets and the elements that route its addresses to them (or reject
// them).
func buildChains(st *proxier.State, f *nft.Family, sp *proxier.ServicePort) *fragment {
	cfg := &st.Config
	podTraffic := st.LocalDetector(f.PF)
	fr := &fragment{}
	seen := map[elemID]bool{}
	base := nameBase(sp)
	svcChain := nft.ObjectName("service", base, base)
	localChain := nft.ObjectName("local", base, base)
	extChain := nft.ObjectName("external", base, base)
	proto := nft.ProtoNum(sp.Name.Protocol)

	// The cluster-policy chain serves internal traffic (Cluster policy) and external traffic
	// (Cluster policy, or pod/node-originated traffic short-circuited under Local policy).
	cluster, local := sp.ClusterPolicyEndpoints(), sp.LocalPolicyEndpoints()
	needCluster := len(cluster) > 0
	needLocal := len(local) > 0
	needExternal := sp.HasExternal() && sp.HasEndpoints()
	internalChain := svcChain
	if sp.InternalPolicyLocal {
		internalChain = localChain
	}

	timeout := sp.AffinityTimeout
	if timeout <= 0 {
		timeout = proxier.DefaultAffinityTimeout
	}
	epChain := func(ep proxier.Endpoint) string {
		t := endpointText(ep)
		return nft.ObjectName("endpoint", base+"__"+t, base+"__"+t)
	}
	affinitySet := func(ep proxier.Endpoint) string {
		t := endpointText(ep)
		return nft.ObjectName("affinity", base+"__"+t, base+"__"+t+"__"+timeout.String())
	}

	// Off-cluster traffic to the cluster IP is masqueraded so that replies come back here.
	var masq nft.Rule
	switch {
	case cfg.MasqueradeAll:
		masq = nft.Rule{nft.AddrMatch{Prefix: netip.PrefixFrom(sp.ClusterIP, sp.ClusterIP.BitLen())}, nft.Jump(chainMarkForMasquerade)}
	case podTraffic.Implemented():
		masq = nft.Rule{nft.AddrMatch{Prefix: netip.PrefixFrom(sp.ClusterIP, sp.ClusterIP.BitLen())}, nft.Jump(chainMarkOffCluster)}
	}
	dispatch := func(name string, eps []proxier.Endpoint, internal bool) {
		c := &nft.Chain{Name: name}
		if internal && masq != nil {
			c.Rules = append(c.Rules, masq)
		}
		if sp.SessionAffinity {
			// A client seen recently goes back to its endpoint, before any random choice.
			for _, ep := range eps {
				c.Rules = append(c.Rules, nft.Rule{nft.AddrInSet{Src: true, Set: affinitySet(ep)}, nft.Goto(epChain(ep))})
			}
		}
		for i, ep := range eps {
			if left := len(eps) - i; left > 1 {
				c.Rules = append(c.Rules, nft.Rule{nft.NumgenZero{Mod: uint32(left)}, nft.Goto(epChain(ep))})
			} else {
				c.Rules = append(c.Rules, nft.Rule{nft.Goto(epChain(ep))})
			}
		}
		fr.chains = append(fr.chains, c)
	}
	if needCluster {
		dispatch(svcChain, cluster, !sp.InternalPolicyLocal)
	}
	if needLocal {
		dispatch(localChain, local, sp.InternalPolicyLocal)
	}
	if needExternal {
		c := &nft.Chain{Name: extChain}
		if !sp.ExternalPolicyLocal {
			c.Rules = []nft.Rule{{nft.Jump(chainMarkForMasquerade)}, {nft.Goto(svcChain)}}
		} else {
			// Local policy keeps the client address, but traffic from pods and from the node
			// itself goes to any endpoint (masqueraded when from the node), as kube-proxy does.
			if podTraffic.Implemented() {
				c.Rules = append(c.Rules, nft.Rule{nft.LocalMatch(podTraffic, false), nft.Goto(svcChain)})
			}
			c.Rules = append(c.Rules,
				nft.Rule{nft.FibLocal{Src: true}, nft.Jump(chainMarkForMasquerade)},
				nft.Rule{nft.FibLocal{Src: true}, nft.Goto(svcChain)})
			if needLocal {
				c.Rules = append(c.Rules, nft.Rule{nft.Goto(localChain)})
			}
		}
		fr.chains = append(fr.chains, c)
	}

	// Endpoint chains for every endpoint a dispatch chain uses.
	used := map[netip.AddrPort]bool{}
	addEndpoint := func(ep proxier.Endpoint) {
		if used[ep.AddrPort()] {
			return
		}
		used[ep.AddrPort()] = true
		r := nft.Rule{nft.L4Proto{Proto: proto}}
		if sp.SessionAffinity {
			aff := affinitySet(ep)
			fr.sets = append(fr.sets, &nft.Set{Name: aff, Kind: nft.KeyAddr, Timeout: timeout})
			r = append(r, nft.UpdateSource{Set: aff})
		}
		r = append(r, nft.DNAT{To: ep.AddrPort()})
		fr.chains = append(fr.chains, &nft.Chain{Name: epChain(ep), Rules: []nft.Rule{r}})
		if ep.Local { // see buildShared
			fr.addElem(seen, setHairpin, nft.Key{Addr: ep.Addr}, nft.Verdict{})
		}
	}
	if needCluster {
		for _, ep := range cluster {
			addEndpoint(ep)
		}
	}
	if needLocal {
		for _, ep := range local {
			addEndpoint(ep)
		}
	}

	// Where the addresses go: to a chain, or (no usable endpoint) dropped or rejected.
	fr.addElem(seen, setClusterIPs, nft.Key{Addr: sp.ClusterIP}, nft.Verdict{})
	cipKey := nft.Key{Addr: sp.ClusterIP, Proto: proto, Port: sp.Port}
	if v := sp.InternalVerdict(); v == proxier.Forward {
		fr.addElem(seen, mapServiceIPs, cipKey, nft.Goto(internalChain))
	} else {
		fr.addElem(seen, mapNoEndpointServices, cipKey, noEndpoints(v))
	}
	externalVerdict := sp.ExternalVerdict()
	for _, addrs := range [][]netip.Addr{sp.ExternalIPs, sp.LoadBalancerIPs} {
		for _, a := range addrs {
			k := nft.Key{Addr: a, Proto: proto, Port: sp.Port}
			if needExternal {
				fr.addElem(seen, mapServiceIPs, k, nft.Goto(extChain))
			}
			if externalVerdict != proxier.Forward {
				fr.addElem(seen, mapNoEndpointServices, k, noEndpoints(externalVerdict))
			}
		}
	}
	if sp.NodePort != 0 {
		k := nft.Key{Proto: proto, Port: sp.NodePort}
		if needExternal {
			fr.addElem(seen, mapServiceNodePorts, k, nft.Goto(extChain))
		}
		if externalVerdict != proxier.Forward {
			fr.addElem(seen, mapNoEndpointNodePorts, k, noEndpoints(externalVerdict))
		}
	}
	firewall(fr, seen, f, sp, proto)
	return fr
}
