package nftables

import (
	"crypto/sha256"
	"encoding/base32"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"

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

	// maxNameLen keeps generated names well inside the kernel's 256-byte limit; the hash in
	// every generated name keeps truncated names unique.
	maxNameLen = 200
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
	key elemKey
}

// fragment is what one owner (the base ruleset, or one ServicePort) puts into a table.
type fragment struct {
	sets   []*set
	chains []*chain
	elems  []element
	counts []int // endpoint counts whose dispatch objects (see buildBase) the elements use
}

// chain returns the fragment's chain called name, or nil.
func (fr *fragment) chain(name string) *chain {
	for _, c := range fr.chains {
		if c.name == name {
			return c
		}
	}
	return nil
}

// addElem adds an element once per seen; with seen nil it adds it as often as asked (the
// programmed table counts references, so repeats cost nothing but a little bookkeeping).
func (fr *fragment) addElem(seen map[elemID]bool, set string, key elemKey, val verdict) {
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
func baseSets(st *proxier.State, f *family) []*set {
	sets := []*set{
		{name: setClusterIPs, kind: keyAddr, comment: "active cluster IPs"},
		{name: setHairpin, kind: keyAddrAddr, comment: "local endpoint . itself, to masquerade hairpin traffic"},
		{name: mapServiceIPs, kind: keyAddrProtoPort, isMap: true, comment: "cluster, external and load-balancer IPs"},
		{name: mapServiceNodePorts, kind: keyProtoPort, isMap: true, comment: "node ports"},
		{name: mapNoEndpointServices, kind: keyAddrProtoPort, isMap: true, comment: "reject or drop traffic to services without endpoints"},
		{name: mapNoEndpointNodePorts, kind: keyProtoPort, isMap: true, comment: "reject or drop traffic to node ports without endpoints"},
		{name: mapFirewallIPs, kind: keyAddrProtoPort, isMap: true, comment: "load-balancer IPs with source ranges"},
		{name: mapServiceEndpoints, kind: keyAddrProtoPortSlot, endpoints: true},
		{name: mapNodePortEndpoints, kind: keyProtoPortSlot, endpoints: true},
		{name: setExternalIPs, kind: keyAddrProtoPort, comment: "external and load-balancer IPs picked through service-endpoints"},
	}
	if _, restricted := st.NodePortIPs(f.pf); restricted {
		sets = append(sets, &set{name: setNodePortIPs, kind: keyAddr, comment: "node addresses that accept node ports"})
	}
	return sets
}

// buildBase is the fixed part of a table: base chains, dispatch through the maps, the reject
// and masquerade helpers. It depends on the configuration, the node's addresses and the
// endpoint counts in use (sorted): for each count n, a set of the service addresses (and one
// of the node ports) that have n endpoints, and a chain that DNATs them through the shared
// endpoint map with "numgen random mod n". A classification rule per count in the services
// chain sends a packet to its count's chain: a few hash lookups however many services exist.
func buildBase(st *proxier.State, f *family, counts []int) *fragment {
	cfg := &st.Config
	fr := &fragment{sets: baseSets(st, f), counts: counts}
	local := st.LocalDetector(f.pf)
	mark := cfg.MasqMark()
	setMark := markOp{op: markSet, mark: mark}
	base := func(name, typ string, hooknum uint32, prio int32, rules ...rule) {
		fr.chains = append(fr.chains, &chain{name: name, hook: &hook{typ: typ, hooknum: hooknum, priority: prio}, rules: rules})
	}
	helper := func(name string, rules ...rule) {
		fr.chains = append(fr.chains, &chain{name: name, rules: rules})
	}
	newConn := func(target string) rule { return rule{ctStateNew{}, jumpChain(target)} }

	base(chainFilterPreroutingPreDNAT, "filter", unix.NF_INET_PRE_ROUTING, prioDstNAT-10, newConn(chainFirewallCheck))
	base(chainFilterOutputPreDNAT, "filter", unix.NF_INET_LOCAL_OUT, prioDstNAT-10, newConn(chainFirewallCheck))
	base(chainFilterInput, "filter", unix.NF_INET_LOCAL_IN, prioFilter,
		newConn(chainNodePortEndpointsCheck), newConn(chainServiceEndpointsCheck))
	base(chainFilterForward, "filter", unix.NF_INET_FORWARD, prioFilter,
		newConn(chainServiceEndpointsCheck), newConn(chainClusterIPsCheck))
	base(chainFilterOutput, "filter", unix.NF_INET_LOCAL_OUT, prioFilter,
		newConn(chainServiceEndpointsCheck), newConn(chainClusterIPsCheck))
	base(chainNATPrerouting, "nat", unix.NF_INET_PRE_ROUTING, prioDstNAT, rule{jumpChain(chainServices)})
	base(chainNATOutput, "nat", unix.NF_INET_LOCAL_OUT, prioDstNAT, rule{jumpChain(chainServices)})
	base(chainNATPostrouting, "nat", unix.NF_INET_POST_ROUTING, prioSrcNAT, rule{jumpChain(chainMasquerading)})

	// Node ports: on the configured addresses (--nodeport-addresses, primary by default as in
	// kube-proxy's nftables mode), else on every local address but loopback (kube-proxy's
	// nftables mode never offers localhost node ports).
	nodePortIPs, restricted := st.NodePortIPs(f.pf)
	var nodePortMatch rule
	if restricted {
		nodePortMatch = rule{addrInSet{set: setNodePortIPs}}
	} else {
		nodePortMatch = rule{fibLocal{}, addrMatch{neg: true, prefix: f.loopback}}
	}
	helper(chainFirewallCheck, rule{serviceVmap{set: mapFirewallIPs}})
	services := []rule{
		{serviceVmap{set: mapServiceIPs}},
		{tupleInSet{set: setExternalIPs}, jumpChain(chainMarkForMasquerade)},
	}
	nodePorts := []rule{{portVmap{set: mapServiceNodePorts}}}
	// Traffic to a cluster IP from outside the cluster is masqueraded so that replies come
	// back here; external IPs were marked in the services chain, node ports are marked here.
	var clusterMasq rule
	switch {
	case cfg.MasqueradeAll:
		clusterMasq = rule{addrInSet{set: setClusterIPs}, jumpChain(chainMarkForMasquerade)}
	case local.Implemented():
		clusterMasq = rule{addrInSet{set: setClusterIPs}, jumpChain(chainMarkOffCluster)}
	}
	for _, n := range counts {
		fr.sets = append(fr.sets,
			&set{name: servicesWith(n), kind: keyAddrProtoPort},
			&set{name: nodePortsWith(n), kind: keyProtoPort})
		services = append(services, rule{tupleInSet{set: servicesWith(n)}, gotoChain(dnatChain(n))})
		nodePorts = append(nodePorts, rule{portInSet{set: nodePortsWith(n)}, gotoChain(nodePortDNAT(n))})
		var rules []rule
		if clusterMasq != nil {
			rules = append(rules, clusterMasq)
		}
		helper(dnatChain(n), append(rules, rule{dnatSlot{byAddr: true, mod: uint32(n), set: mapServiceEndpoints}})...)
		helper(nodePortDNAT(n), rule{jumpChain(chainMarkForMasquerade)},
			rule{dnatSlot{mod: uint32(n), set: mapNodePortEndpoints}})
	}
	helper(chainServices, append(services, append(append(rule{}, nodePortMatch...), gotoChain(chainNodePorts)))...)
	helper(chainNodePorts, nodePorts...)
	helper(chainServiceEndpointsCheck, rule{serviceVmap{set: mapNoEndpointServices}})
	helper(chainNodePortEndpointsCheck, append(append(rule{}, nodePortMatch...), portVmap{set: mapNoEndpointNodePorts}))
	// New connections that reach the filter hooks with a cluster IP as destination were not
	// DNAT-ed: a port the service does not have is rejected, an address of the service CIDRs
	// no service holds is dropped (kube-proxy's "drop traffic to unallocated ClusterIPs").
	clusterIPsCheck := []rule{{addrInSet{set: setClusterIPs}, gotoChain(chainReject)}}
	for _, p := range st.ServiceCIDRsOf(f.pf) {
		clusterIPsCheck = append(clusterIPsCheck, rule{addrMatch{prefix: p}, verdictDrop})
	}
	helper(chainClusterIPsCheck, clusterIPsCheck...)
	helper(chainReject, rule{l4proto{unix.IPPROTO_TCP}, reject{tcpReset: true}}, rule{reject{}})
	helper(chainMarkForMasquerade, rule{setMark})
	if local.Implemented() && !cfg.MasqueradeAll {
		helper(chainMarkOffCluster, rule{localMatch(local, false), verdictReturn}, rule{setMark})
	}
	helper(chainMasquerading,
		rule{ctStatusDNAT{}, addrPairInSet{set: setHairpin}, setMark},
		rule{markOp{op: markUnset, mark: mark}, verdictReturn},
		rule{markOp{op: markClear, mark: mark}},
		rule{masquerade{}})

	seen := map[elemID]bool{}
	for _, a := range nodePortIPs {
		fr.addElem(seen, setNodePortIPs, elemKey{addr: a}, verdict{})
	}
	return fr
}

// nameBase is kube-proxy's readable service port name: namespace/name/protocol/port.
func nameBase(sp *proxier.ServicePort) string {
	return sp.Name.Namespace + "/" + sp.Name.Name + "/" + strings.ToLower(string(sp.Name.Protocol)) + "/" + sp.Name.Port
}

// objectName is prefix-HASH-readable, truncated: stable across restarts and unique.
func objectName(prefix, readable, hashInput string) string {
	sum := sha256.Sum256([]byte(hashInput))
	name := prefix + "-" + base32.StdEncoding.EncodeToString(sum[:])[:8] + "-" + readable
	if len(name) > maxNameLen {
		name = name[:maxNameLen]
	}
	return name
}

// endpointText is the endpoint as it appears in names: nft identifiers may not contain ':'.
func endpointText(ep proxier.Endpoint) string {
	return strings.ReplaceAll(ep.Addr.String(), ":", ".") + "/" + strconv.Itoa(int(ep.Port))
}

func protoNum(p v1.Protocol) uint8 {
	switch p {
	case v1.ProtocolUDP:
		return unix.IPPROTO_UDP
	case v1.ProtocolSCTP:
		return unix.IPPROTO_SCTP
	}
	return unix.IPPROTO_TCP
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
func buildService(st *proxier.State, f *family, sp *proxier.ServicePort, into *fragment) *fragment {
	if chainsNeeded(sp) {
		return buildChains(st, f, sp)
	}
	return buildShared(st, f, sp, into)
}

// buildShared programs a service port into the shared objects of its endpoint counts: each
// address (cluster IP, external and load-balancer IPs, node port) goes into the set of its
// count, and its endpoints into slots 0..n-1 of the endpoint map under the same key.
func buildShared(st *proxier.State, f *family, sp *proxier.ServicePort, into *fragment) *fragment {
	fr := into
	if fr == nil {
		// Sized for the common case: a cluster IP and its endpoints' slots and hairpin elements.
		fr = &fragment{elems: make([]element, 0, 2+2*len(sp.ClusterEndpoints))}
	} else {
		*fr = fragment{elems: fr.elems[:0], counts: fr.counts[:0]}
	}
	var seen map[elemID]bool // no deduplication needed, see addElem
	proto := protoNum(sp.Name.Protocol)
	// No chains of its own means External policy Cluster (chainsNeeded): external traffic uses
	// the cluster endpoints.
	internal, external := sp.InternalEndpoints(), sp.ExternalEndpoints()
	var hairpins []netip.Addr
	count := func(n int) {
		if !slices.Contains(fr.counts, n) {
			fr.counts = append(fr.counts, n)
		}
	}
	slots := func(setName, mapName string, k elemKey, eps []proxier.Endpoint) {
		count(len(eps))
		fr.addElem(seen, setName, k, verdict{})
		for i, ep := range eps {
			sk := k
			sk.slot = uint32(i)
			fr.elems = append(fr.elems, element{set: mapName, key: sk, to: ep.AddrPort()})
			// Only an endpoint on this node can receive its own traffic back through us: a
			// pod's packets to a service are translated by its own node's proxy. So remote
			// endpoints need no hairpin element (kube-proxy masquerades for every endpoint;
			// with 10 endpoints per service those elements were almost half of the table).
			if ep.Local && !slices.Contains(hairpins, ep.Addr) {
				hairpins = append(hairpins, ep.Addr)
				fr.addElem(seen, setHairpin, elemKey{addr: ep.Addr}, verdict{})
			}
		}
	}

	fr.addElem(seen, setClusterIPs, elemKey{addr: sp.ClusterIP}, verdict{})
	cipKey := elemKey{addr: sp.ClusterIP, proto: proto, port: sp.Port}
	if len(internal) > 0 {
		slots(servicesWith(len(internal)), mapServiceEndpoints, cipKey, internal)
	} else {
		fr.addElem(seen, mapNoEndpointServices, cipKey, noEndpoints(sp.InternalVerdict()))
	}
	// External traffic (Cluster policy here) is masqueraded and may use any endpoint.
	for _, addrs := range [][]netip.Addr{sp.ExternalIPs, sp.LoadBalancerIPs} {
		for _, a := range addrs {
			k := elemKey{addr: a, proto: proto, port: sp.Port}
			if len(external) > 0 {
				fr.addElem(seen, setExternalIPs, k, verdict{})
				slots(servicesWith(len(external)), mapServiceEndpoints, k, external)
			} else {
				fr.addElem(seen, mapNoEndpointServices, k, noEndpoints(sp.ExternalVerdict()))
			}
		}
	}
	if sp.NodePort != 0 {
		k := elemKey{proto: proto, port: sp.NodePort}
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
func noEndpoints(v proxier.Verdict) verdict {
	if v == proxier.Drop {
		return verdictDrop
	}
	return gotoChain(chainReject)
}

// firewall adds the chain that enforces loadBalancerSourceRanges: only the listed sources
// reach the load-balancer IPs.
func firewall(fr *fragment, seen map[elemID]bool, f *family, sp *proxier.ServicePort, proto uint8) {
	if len(sp.LoadBalancerSourceRanges) == 0 || len(sp.LoadBalancerIPs) == 0 {
		return
	}
	base := nameBase(sp)
	fwChain := objectName("firewall", base, base)
	c := &chain{name: fwChain}
	for _, p := range sp.LoadBalancerSourceRanges {
		c.rules = append(c.rules, rule{addrMatch{src: true, prefix: p}, verdictReturn})
	}
	c.rules = append(c.rules, rule{verdictDrop})
	fr.chains = append(fr.chains, c)
	for _, a := range sp.LoadBalancerIPs {
		fr.addElem(seen, mapFirewallIPs, elemKey{addr: a, proto: proto, port: sp.Port}, gotoChain(fwChain))
	}
}

// buildChains is what a service port that needs chains of its own programs: dispatch chains,
// endpoint chains, affinity sets and the elements that route its addresses to them (or reject
// them).
func buildChains(st *proxier.State, f *family, sp *proxier.ServicePort) *fragment {
	cfg := &st.Config
	podTraffic := st.LocalDetector(f.pf)
	fr := &fragment{}
	seen := map[elemID]bool{}
	base := nameBase(sp)
	svcChain := objectName("service", base, base)
	localChain := objectName("local", base, base)
	extChain := objectName("external", base, base)
	proto := protoNum(sp.Name.Protocol)

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
		return objectName("endpoint", base+"__"+t, base+"__"+t)
	}
	affinitySet := func(ep proxier.Endpoint) string {
		t := endpointText(ep)
		return objectName("affinity", base+"__"+t, base+"__"+t+"__"+timeout.String())
	}

	// Off-cluster traffic to the cluster IP is masqueraded so that replies come back here.
	var masq rule
	switch {
	case cfg.MasqueradeAll:
		masq = rule{addrMatch{prefix: netip.PrefixFrom(sp.ClusterIP, sp.ClusterIP.BitLen())}, jumpChain(chainMarkForMasquerade)}
	case podTraffic.Implemented():
		masq = rule{addrMatch{prefix: netip.PrefixFrom(sp.ClusterIP, sp.ClusterIP.BitLen())}, jumpChain(chainMarkOffCluster)}
	}
	dispatch := func(name string, eps []proxier.Endpoint, internal bool) {
		c := &chain{name: name}
		if internal && masq != nil {
			c.rules = append(c.rules, masq)
		}
		if sp.SessionAffinity {
			// A client seen recently goes back to its endpoint, before any random choice.
			for _, ep := range eps {
				c.rules = append(c.rules, rule{addrInSet{src: true, set: affinitySet(ep)}, gotoChain(epChain(ep))})
			}
		}
		for i, ep := range eps {
			if left := len(eps) - i; left > 1 {
				c.rules = append(c.rules, rule{numgenZero{mod: uint32(left)}, gotoChain(epChain(ep))})
			} else {
				c.rules = append(c.rules, rule{gotoChain(epChain(ep))})
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
		c := &chain{name: extChain}
		if !sp.ExternalPolicyLocal {
			c.rules = []rule{{jumpChain(chainMarkForMasquerade)}, {gotoChain(svcChain)}}
		} else {
			// Local policy keeps the client address, but traffic from pods and from the node
			// itself goes to any endpoint (masqueraded when from the node), as kube-proxy does.
			if podTraffic.Implemented() {
				c.rules = append(c.rules, rule{localMatch(podTraffic, false), gotoChain(svcChain)})
			}
			c.rules = append(c.rules,
				rule{fibLocal{src: true}, jumpChain(chainMarkForMasquerade)},
				rule{fibLocal{src: true}, gotoChain(svcChain)})
			if needLocal {
				c.rules = append(c.rules, rule{gotoChain(localChain)})
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
		r := rule{l4proto{proto}}
		if sp.SessionAffinity {
			aff := affinitySet(ep)
			fr.sets = append(fr.sets, &set{name: aff, kind: keyAddr, timeout: timeout})
			r = append(r, updateSource{set: aff})
		}
		r = append(r, dnat{to: ep.AddrPort()})
		fr.chains = append(fr.chains, &chain{name: epChain(ep), rules: []rule{r}})
		if ep.Local { // see buildShared
			fr.addElem(seen, setHairpin, elemKey{addr: ep.Addr}, verdict{})
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
	fr.addElem(seen, setClusterIPs, elemKey{addr: sp.ClusterIP}, verdict{})
	cipKey := elemKey{addr: sp.ClusterIP, proto: proto, port: sp.Port}
	if v := sp.InternalVerdict(); v == proxier.Forward {
		fr.addElem(seen, mapServiceIPs, cipKey, gotoChain(internalChain))
	} else {
		fr.addElem(seen, mapNoEndpointServices, cipKey, noEndpoints(v))
	}
	externalVerdict := sp.ExternalVerdict()
	for _, addrs := range [][]netip.Addr{sp.ExternalIPs, sp.LoadBalancerIPs} {
		for _, a := range addrs {
			k := elemKey{addr: a, proto: proto, port: sp.Port}
			if needExternal {
				fr.addElem(seen, mapServiceIPs, k, gotoChain(extChain))
			}
			if externalVerdict != proxier.Forward {
				fr.addElem(seen, mapNoEndpointServices, k, noEndpoints(externalVerdict))
			}
		}
	}
	if sp.NodePort != 0 {
		k := elemKey{proto: proto, port: sp.NodePort}
		if needExternal {
			fr.addElem(seen, mapServiceNodePorts, k, gotoChain(extChain))
		}
		if externalVerdict != proxier.Forward {
			fr.addElem(seen, mapNoEndpointNodePorts, k, noEndpoints(externalVerdict))
		}
	}
	firewall(fr, seen, f, sp, proto)
	return fr
}
