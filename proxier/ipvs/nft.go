package ipvs

import (
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"nodeagent/proxier"
	"nodeagent/proxier/nft"
)

// The helper table: what IPVS cannot express. One table per family, owned entirely by the proxier.
//
//   - masquerade: traffic to cluster IPs that does not come from pods (--detect-local-mode; all
//     of it with --masquerade-all; without pod detection, the node's own traffic whose source
//     is a cluster IP, as kube-proxy), traffic to external, load-balancer and node-port virtual servers of
//     services with externalTrafficPolicy Cluster, and hairpin traffic (an endpoint reaching
//     itself through a service). Packets are marked before IPVS sees them (nat prerouting and
//     output run before IPVS's hooks) and masqueraded in postrouting, which IPVS-forwarded
//     packets traverse because net.ipv4.vs.conntrack is 1.
//   - reject (TCP reset, else ICMP port unreachable) new connections to virtual servers without
//     endpoints, or drop them when a Local traffic policy leaves none on this node; the filter
//     chains run before IPVS's input (priority 99) and output (-98) hooks.
//   - loadBalancerSourceRanges: new connections to a load-balancer IP from other sources are
//     dropped.
//   - the set virtual-servers records every virtual server the proxier owns, so that Cleanup
//     (even from another process) removes those and nothing else.
const (
	tableName = "nodeagent-ipvs"

	setVirtualServers = "virtual-servers"
	setClusterIPs     = "cluster-ips"
	setMasquerade     = "external-masquerade"
	setNoEndpoints    = "no-endpoints"
	setLocalOnly      = "no-local-endpoints"
	setHairpin        = "hairpin"
	mapFirewall       = "firewall"

	chainNATPrerouting  = "nat-prerouting"
	chainNATOutput      = "nat-output"
	chainNATPostrouting = "nat-postrouting"
	chainFilterInput    = "filter-input"
	chainFilterOutput   = "filter-output"
	chainFilterPrerout  = "filter-prerouting"
	chainServices       = "services"
	chainMarkOffCluster = "mark-for-masquerade-off-cluster"
	chainMarkMasq       = "mark-for-masquerade"
	chainEndpointsCheck = "endpoints-check"
	chainReject         = "reject-chain"
)

// Chain priorities relative to IPVS's own hooks (see the comment above).
const (
	prioDstNAT       = -100
	prioSrcNAT       = 100
	prioFilter       = 0
	prioBeforeIPVSLO = -110 // local output: before IPVS (-98) and NAT (-100)
)

func vsElem(k vsKey) nft.Key { return nft.Key{Addr: k.Addr, Proto: k.Proto, Port: k.Port} }

// compareElem orders keys by virtual server (the hairpin set's second address is the first).
func compareElem(a, b nft.Key) int {
	return compareVSKey(vsKey{a.Addr, a.Proto, a.Port}, vsKey{b.Addr, b.Proto, b.Port})
}

// nftSet is a set (or verdict map: values are chain names to go to) with its elements.
type nftSet struct {
	nft.Set
	elems map[nft.Key]string
}

// nftTable is the helper table of one family.
type nftTable struct {
	fam    *nft.Family
	sets   []*nftSet // fixed order
	chains []*nft.Chain
}

func (t *nftTable) set(name string) *nftSet {
	for _, s := range t.sets {
		if s.Name == name {
			return s
		}
	}
	return nil
}

func (t *nftTable) chain(name string) *nft.Chain {
	for _, c := range t.chains {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// writeText writes the table in nft -f syntax.
func (t *nftTable) writeText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "table %s %s {\n", t.fam.Name, tableName)
	for _, s := range t.sets {
		kw := "set"
		if s.IsMap {
			kw = "map"
		}
		fmt.Fprintf(&b, "\t%s %s {\n\t\t%s\n", kw, s.Name, s.TypeText(t.fam))
		if s.Comment != "" {
			fmt.Fprintf(&b, "\t\tcomment %q\n", s.Comment)
		}
		keys := make([]nft.Key, 0, len(s.elems))
		for k := range s.elems {
			keys = append(keys, k)
		}
		slices.SortFunc(keys, compareElem)
		if len(keys) > 0 {
			b.WriteString("\t\telements = {")
			for i, k := range keys {
				if i > 0 {
					b.WriteString(",")
				}
				b.WriteString("\n\t\t\t" + string(nft.AppendKey(nil, s.Kind, k)))
				if s.IsMap {
					b.WriteString(" : goto " + s.elems[k])
				}
			}
			b.WriteString("\n\t\t}\n")
		}
		b.WriteString("\t}\n")
	}
	for _, c := range t.chains {
		b.Write(c.AppendText(nil, t.fam))
	}
	b.WriteString("}\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// Terms whose text (or expressions) the ipvs mode's render has always shown its own way.

// relabel is a shared term under another text.
type relabel struct {
	nft.Term
	text string
}

func (r relabel) AppendText(b []byte, _ *nft.Family) []byte { return append(b, r.text...) }

// hairpinMatch is "ip daddr . meta l4proto . th dport . ip saddr @set": a connection from an
// address to a virtual server on its own port.
type hairpinMatch struct{ set string }

func (m hairpinMatch) AppendText(b []byte, f *nft.Family) []byte {
	return append(b, f.Name+" daddr . meta l4proto . th dport . "+f.Name+" saddr @"+m.set...)
}

func (m hairpinMatch) Exprs(f *nft.Family) []expr.Any {
	r := uint32(nft.RegConcat)
	return []expr.Any{
		nft.LoadAddr(f, false, r, f.AddrLen),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: r + f.AddrLen/4},
		&expr.Payload{DestRegister: r + f.AddrLen/4 + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		nft.LoadAddr(f, true, r+f.AddrLen/4+2, f.AddrLen),
		&expr.Lookup{SourceRegister: r, SetName: m.set},
	}
}

// prefixMatch matches the source or destination address against a prefix: the whole address is
// loaded, and masked unless the prefix is one address.
type prefixMatch struct {
	src bool
	p   netip.Prefix
}

func (m prefixMatch) AppendText(b []byte, f *nft.Family) []byte {
	dir := "daddr"
	if m.src {
		dir = "saddr"
	}
	return append(b, f.Name+" "+dir+" "+m.p.Masked().String()...)
}

func (m prefixMatch) Exprs(f *nft.Family) []expr.Any {
	p := m.p.Masked()
	ex := []expr.Any{nft.LoadAddr(f, m.src, nft.Reg1, f.AddrLen)}
	if p.Bits() < p.Addr().BitLen() {
		mask := make([]byte, p.Addr().BitLen()/8)
		for i := 0; i < p.Bits(); i++ {
			mask[i/8] |= 0x80 >> (i % 8)
		}
		ex = append(ex, &expr.Bitwise{SourceRegister: nft.Reg1, DestRegister: nft.Reg1, Len: f.AddrLen, Mask: mask, Xor: make([]byte, len(mask))})
	}
	return append(ex, &expr.Cmp{Op: expr.CmpOpEq, Register: nft.Reg1, Data: p.Addr().AsSlice()})
}

// matchLocal matches traffic from pods as the detector recognises it; d must be implemented.
func matchLocal(d proxier.LocalDetector) nft.Term {
	if d.CIDR.IsValid() {
		return prefixMatch{src: true, p: d.CIDR}
	}
	return nft.IifMatch{Name: d.Interface, Prefix: d.Prefix}
}

// markSet sets the masquerade bit mark (Config.MasqMark: kube-proxy's 0x4000 unless
// configured).
func markSet(mark uint32) nft.Term {
	return relabel{nft.MarkOp{Op: nft.MarkSet, Mark: mark}, fmt.Sprintf("meta mark set meta mark | 0x%x", mark)}
}

// markUnset matches when the masquerade bit is not set.
func markUnset(mark uint32) nft.Term {
	return relabel{nft.MarkOp{Op: nft.MarkUnset, Mark: mark}, fmt.Sprintf("meta mark & 0x%x == 0", mark)}
}

// markClear clears the masquerade bit.
func markClear(mark uint32) nft.Term {
	return relabel{nft.MarkOp{Op: nft.MarkClear, Mark: mark}, fmt.Sprintf("meta mark set meta mark xor 0x%x", mark)}
}

// rejectICMP rejects with port unreachable.
func rejectICMP(f *nft.Family) nft.Term {
	text := "reject with icmp port-unreachable"
	if f.PF == proxier.IPv6 {
		text = "reject with icmpv6 port-unreachable"
	}
	return relabel{nft.Reject{}, text}
}

// tableBuilder makes one family's table: its base, then each service's elements and chains,
// which go into d recorded as contribution out.
type tableBuilder struct {
	f   *nft.Family
	t   *nftTable
	d   *desired
	out *contribution
}

func newTableBuilder(st *proxier.State, pf proxier.Family) *tableBuilder {
	f := nft.FamilyOf(pf)
	t := &nftTable{fam: f}
	newSet := func(name, comment string, kind nft.SetKind, isMap bool) {
		t.sets = append(t.sets, &nftSet{Set: nft.Set{Name: name, Comment: comment, Kind: kind, IsMap: isMap}, elems: map[nft.Key]string{}})
	}
	const keyVS, keyHairpin = nft.KeyAddrProtoPort, nft.KeyAddrProtoPortAddr
	newSet(setVirtualServers, "every virtual server this proxier owns", keyVS, false)
	newSet(setClusterIPs, "cluster IP virtual servers", keyVS, false)
	newSet(setMasquerade, "external virtual servers of services with externalTrafficPolicy Cluster", keyVS, false)
	newSet(setNoEndpoints, "virtual servers without endpoints: reject", keyVS, false)
	newSet(setLocalOnly, "virtual servers whose Local policy leaves no endpoint here: drop", keyVS, false)
	newSet(setHairpin, "local endpoint . endpoint address: an endpoint reaching itself", keyHairpin, false)
	newSet(mapFirewall, "load-balancer virtual servers with source ranges", keyVS, true)

	base := func(name, typ string, hooknum uint32, prio int32, rules ...nft.Rule) {
		t.chains = append(t.chains, &nft.Chain{Name: name, Hook: &nft.Hook{Type: typ, Hooknum: hooknum, Priority: prio}, Rules: rules})
	}
	helper := func(name string, rules ...nft.Rule) {
		t.chains = append(t.chains, &nft.Chain{Name: name, Rules: rules})
	}
	newConn := nft.CtStateNew{}
	base(chainFilterPrerout, "filter", unix.NF_INET_PRE_ROUTING, prioDstNAT-10,
		nft.Rule{newConn, nft.ServiceVmap{Set: mapFirewall}})
	base(chainFilterInput, "filter", unix.NF_INET_LOCAL_IN, prioFilter,
		nft.Rule{newConn, nft.Jump(chainEndpointsCheck)})
	base(chainFilterOutput, "filter", unix.NF_INET_LOCAL_OUT, prioBeforeIPVSLO,
		nft.Rule{newConn, nft.ServiceVmap{Set: mapFirewall}}, nft.Rule{newConn, nft.Jump(chainEndpointsCheck)})
	base(chainNATPrerouting, "nat", unix.NF_INET_PRE_ROUTING, prioDstNAT, nft.Rule{nft.Jump(chainServices)})
	base(chainNATOutput, "nat", unix.NF_INET_LOCAL_OUT, prioDstNAT, nft.Rule{nft.Jump(chainServices)})
	cfg := &st.Config
	mark := cfg.MasqMark()
	base(chainNATPostrouting, "nat", unix.NF_INET_POST_ROUTING, prioSrcNAT,
		nft.Rule{hairpinMatch{set: setHairpin}, nft.Masquerade{}}, nft.Rule{markUnset(mark), nft.Return},
		nft.Rule{markClear(mark)}, nft.Rule{nft.Masquerade{}})

	var services []nft.Rule
	switch local := st.LocalDetector(pf); {
	case cfg.MasqueradeAll:
		services = append(services, nft.Rule{nft.TupleInSet{Set: setClusterIPs}, nft.Jump(chainMarkMasq)})
	case local.Implemented():
		// Traffic to a cluster IP that does not come from a pod may come from outside through
		// a route to the service range, and go on to another node: masquerade it.
		services = append(services, nft.Rule{nft.TupleInSet{Set: setClusterIPs}, nft.Jump(chainMarkOffCluster)})
		helper(chainMarkOffCluster, nft.Rule{matchLocal(local), nft.Return}, nft.Rule{markSet(mark)})
	default:
		// Without pod detection, as kube-proxy's ipvs mode: the node's own connections to a
		// cluster IP take that address (bound to the dummy interface) as their source, which
		// an endpoint on another node cannot answer; masquerade what has a cluster IP and
		// port as source ("src,dst" of KUBE-CLUSTER-IP).
		services = append(services, nft.Rule{nft.TupleInSet{Src: true, Set: setClusterIPs}, nft.Jump(chainMarkMasq)})
	}
	services = append(services, nft.Rule{nft.TupleInSet{Set: setMasquerade}, nft.Jump(chainMarkMasq)})
	helper(chainServices, services...)
	helper(chainMarkMasq, nft.Rule{markSet(mark)})
	helper(chainEndpointsCheck,
		nft.Rule{nft.TupleInSet{Set: setLocalOnly}, nft.Drop},
		nft.Rule{nft.TupleInSet{Set: setNoEndpoints}, nft.Goto(chainReject)})
	helper(chainReject, nft.Rule{nft.L4Proto{Proto: unix.IPPROTO_TCP}, nft.Reject{TCPReset: true}}, nft.Rule{rejectICMP(f)})
	return &tableBuilder{f: f, t: t}
}

func (b *tableBuilder) elem(set string, k nft.Key, v string) { b.d.addElem(b.out, b.f.PF, set, k, v) }

// addService adds sp's elements (and its firewall chain) to the table.
func (b *tableBuilder) addService(sp *proxier.ServicePort, proto uint8, npAddrs []netip.Addr) {
	vs := func(a netip.Addr, port uint16) nft.Key { return nft.Key{Addr: a.Unmap(), Proto: proto, Port: port} }
	// Traffic the model drops or rejects for want of endpoints: its key goes into the set the
	// endpoints-check chain drops (or rejects) from.
	noEndpoints := func(v proxier.Verdict, k nft.Key) {
		switch v {
		case proxier.Drop:
			b.elem(setLocalOnly, k, "")
		case proxier.Reject:
			b.elem(setNoEndpoints, k, "")
		}
	}
	cip := vs(sp.ClusterIP, sp.Port)
	b.elem(setVirtualServers, cip, "")
	b.elem(setClusterIPs, cip, "")
	noEndpoints(sp.InternalVerdict(), cip)
	var external []nft.Key
	for _, a := range sp.ExternalIPs {
		external = append(external, vs(a, sp.Port))
	}
	for _, a := range sp.LoadBalancerIPs {
		external = append(external, vs(a, sp.Port))
	}
	if sp.NodePort != 0 {
		for _, a := range npAddrs {
			external = append(external, vs(a, sp.NodePort))
		}
	}
	externalVerdict := sp.ExternalVerdict()
	for _, k := range external {
		b.elem(setVirtualServers, k, "")
		if !sp.ExternalPolicyLocal {
			b.elem(setMasquerade, k, "")
		}
		noEndpoints(externalVerdict, k)
	}
	for _, ep := range sp.AllEndpoints {
		if ep.Local {
			a := ep.Addr.Unmap()
			b.elem(setHairpin, nft.Key{Addr: a, Proto: proto, Port: ep.Port}, "")
		}
	}
	if len(sp.LoadBalancerSourceRanges) > 0 && len(sp.LoadBalancerIPs) > 0 {
		n := sp.Name
		readable := fmt.Sprintf("%s/%s/%s/%s", n.Namespace, n.Name, strings.ToLower(string(n.Protocol)), n.Port)
		name := nft.ObjectName("firewall", readable, readable)
		c := &nft.Chain{Name: name}
		for _, p := range sp.LoadBalancerSourceRanges {
			c.Rules = append(c.Rules, nft.Rule{prefixMatch{src: true, p: p}, nft.Return})
		}
		c.Rules = append(c.Rules, nft.Rule{nft.Drop})
		b.d.addChain(b.out, b.f.PF, c)
		for _, a := range sp.LoadBalancerIPs {
			b.elem(mapFirewall, vs(a, sp.Port), name)
		}
	}
}
