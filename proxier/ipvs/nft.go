package ipvs

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	gnft "github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"nodeagent/proxier"
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

	// Registers: concatenations are loaded from the first 32-bit register on.
	regConcat = 8 // NFT_REG32_00
	regWork   = 1 // NFT_REG_1
)

// Chain priorities relative to IPVS's own hooks (see the comment above).
const (
	prioDstNAT       = -100
	prioSrcNAT       = 100
	prioFilter       = 0
	prioBeforeIPVSLO = -110 // local output: before IPVS (-98) and NAT (-100)
)

// family holds what differs between the ip and ip6 tables.
type family struct {
	pf       proxier.Family
	nf       gnft.TableFamily
	name     string // nft family keyword and payload prefix: "ip", "ip6"
	addrType gnft.SetDatatype
	addrLen  uint32
	saddrOff uint32
	daddrOff uint32
	// icmp is the reject rule's text and code for "port unreachable".
	icmpText string
	icmpCode uint8
}

var (
	familyIPv4 = &family{pf: proxier.IPv4, nf: gnft.TableFamilyIPv4, name: "ip", addrType: gnft.TypeIPAddr,
		addrLen: 4, saddrOff: 12, daddrOff: 16, icmpText: "reject with icmp port-unreachable", icmpCode: 3}
	familyIPv6 = &family{pf: proxier.IPv6, nf: gnft.TableFamilyIPv6, name: "ip6", addrType: gnft.TypeIP6Addr,
		addrLen: 16, saddrOff: 8, daddrOff: 24, icmpText: "reject with icmpv6 port-unreachable", icmpCode: 4}
)

func familyOf(f proxier.Family) *family {
	if f == proxier.IPv6 {
		return familyIPv6
	}
	return familyIPv4
}

// setKind is the key layout of a set.
type setKind int

const (
	keyVS      setKind = iota // addr . inet_proto . inet_service
	keyHairpin                // addr . inet_proto . inet_service . addr
)

// elemKey is a set element's key; addr2 only for keyHairpin.
type elemKey struct {
	addr  netip.Addr
	proto uint8
	port  uint16
	addr2 netip.Addr
}

func vsElem(k vsKey) elemKey { return elemKey{addr: k.Addr, proto: k.Proto, port: k.Port} }

func compareElem(a, b elemKey) int {
	if c := compareVSKey(vsKey{a.addr, a.proto, a.port}, vsKey{b.addr, b.proto, b.port}); c != 0 {
		return c
	}
	return a.addr2.Compare(b.addr2)
}

func (k elemKey) text() string {
	s := fmt.Sprintf("%s . %s . %d", k.addr, protoName(k.proto), k.port)
	if k.addr2.IsValid() {
		s += " . " + k.addr2.String()
	}
	return s
}

// bytes is the key as the kernel stores it: every field padded to 4 bytes.
func (k elemKey) bytes() []byte {
	b := append([]byte{}, k.addr.AsSlice()...)
	b = append(b, k.proto, 0, 0, 0)
	b = append(b, byte(k.port>>8), byte(k.port), 0, 0)
	if k.addr2.IsValid() {
		b = append(b, k.addr2.AsSlice()...)
	}
	return b
}

// nftSet is a named set, or a verdict map (values are chain names to go to).
type nftSet struct {
	name    string
	comment string
	kind    setKind
	isMap   bool
	elems   map[elemKey]string
}

// nftRule is one rule as text and as expressions.
type nftRule struct {
	text  string
	exprs []expr.Any
}

func (r nftRule) then(o nftRule) nftRule {
	t := r.text
	if t != "" && o.text != "" {
		t += " "
	}
	return nftRule{text: t + o.text, exprs: append(slices.Clip(r.exprs), o.exprs...)}
}

type chainHook struct {
	typ  gnft.ChainType
	hook *gnft.ChainHook
	name string // hook keyword
	prio int32
}

type nftChain struct {
	name  string
	hook  *chainHook
	rules []nftRule
}

func (c *nftChain) text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "\tchain %s {\n", c.name)
	if c.hook != nil {
		fmt.Fprintf(&b, "\t\ttype %s hook %s priority %d; policy accept;\n", c.hook.typ, c.hook.name, c.hook.prio)
	}
	for _, r := range c.rules {
		fmt.Fprintf(&b, "\t\t%s\n", r.text)
	}
	b.WriteString("\t}\n")
	return b.String()
}

// nftTable is the helper table of one family.
type nftTable struct {
	fam    *family
	sets   []*nftSet // fixed order
	chains []*nftChain
}

func (t *nftTable) set(name string) *nftSet {
	for _, s := range t.sets {
		if s.name == name {
			return s
		}
	}
	return nil
}

func (t *nftTable) chain(name string) *nftChain {
	for _, c := range t.chains {
		if c.name == name {
			return c
		}
	}
	return nil
}

// baseText is the table without set elements: when it changes, the table is rebuilt.
func (t *nftTable) baseText() string {
	var b strings.Builder
	for _, s := range t.sets {
		fmt.Fprintf(&b, "%s %v %v\n", s.name, s.kind, s.isMap)
	}
	for _, c := range t.chains {
		if c.hook != nil || !strings.HasPrefix(c.name, "firewall-") {
			b.WriteString(c.text())
		}
	}
	return b.String()
}

// writeText writes the table in nft -f syntax.
func (t *nftTable) writeText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "table %s %s {\n", t.fam.name, tableName)
	for _, s := range t.sets {
		kw := "set"
		typ := t.fam.addrType.Name + " . inet_proto . inet_service"
		if s.kind == keyHairpin {
			typ += " . " + t.fam.addrType.Name
		}
		if s.isMap {
			kw = "map"
			typ += " : verdict"
		}
		fmt.Fprintf(&b, "\t%s %s {\n\t\ttype %s\n", kw, s.name, typ)
		if s.comment != "" {
			fmt.Fprintf(&b, "\t\tcomment %q\n", s.comment)
		}
		keys := make([]elemKey, 0, len(s.elems))
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
				b.WriteString("\n\t\t\t" + k.text())
				if s.isMap {
					b.WriteString(" : goto " + s.elems[k])
				}
			}
			b.WriteString("\n\t\t}\n")
		}
		b.WriteString("\t}\n")
	}
	for _, c := range t.chains {
		b.WriteString(c.text())
	}
	b.WriteString("}\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// Rule pieces.

func (f *family) loadAddr(off, reg uint32) expr.Any {
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: f.addrLen}
}

// matchVS is "ip daddr . meta l4proto . th dport @set" (or vmap @set).
func (f *family) matchVS(set string, vmap bool, extraSaddr bool) nftRule {
	r := regConcat
	ex := []expr.Any{f.loadAddr(f.daddrOff, uint32(r))}
	r += int(f.addrLen / 4)
	ex = append(ex, &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: uint32(r)})
	r++
	ex = append(ex, &expr.Payload{DestRegister: uint32(r), Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2})
	r++
	text := f.name + " daddr . meta l4proto . th dport"
	if extraSaddr {
		ex = append(ex, f.loadAddr(f.saddrOff, uint32(r)))
		text += " . " + f.name + " saddr"
	}
	l := &expr.Lookup{SourceRegister: regConcat, SetName: set}
	if vmap {
		l.IsDestRegSet = true
		l.DestRegister = 0
		text += " vmap @" + set
	} else {
		text += " @" + set
	}
	return nftRule{text: text, exprs: append(ex, l)}
}

// matchSourceVS is "ip saddr . meta l4proto . th dport @set": a packet sent from the address of
// a virtual server to its port.
func (f *family) matchSourceVS(set string) nftRule {
	r := uint32(regConcat)
	ex := []expr.Any{f.loadAddr(f.saddrOff, r)}
	r += f.addrLen / 4
	ex = append(ex, &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: r},
		&expr.Payload{DestRegister: r + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: regConcat, SetName: set})
	return nftRule{text: f.name + " saddr . meta l4proto . th dport @" + set, exprs: ex}
}

func (f *family) matchPrefix(p netip.Prefix, src bool) nftRule {
	off, dir := f.daddrOff, "daddr"
	if src {
		off, dir = f.saddrOff, "saddr"
	}
	p = p.Masked()
	ex := []expr.Any{f.loadAddr(off, regWork)}
	if p.Bits() < p.Addr().BitLen() {
		m := make([]byte, p.Addr().BitLen()/8)
		for i := 0; i < p.Bits(); i++ {
			m[i/8] |= 0x80 >> (i % 8)
		}
		ex = append(ex, &expr.Bitwise{SourceRegister: regWork, DestRegister: regWork, Len: f.addrLen, Mask: m, Xor: make([]byte, len(m))})
	}
	ex = append(ex, &expr.Cmp{Op: expr.CmpOpEq, Register: regWork, Data: p.Addr().AsSlice()})
	return nftRule{text: fmt.Sprintf("%s %s %s", f.name, dir, p), exprs: ex}
}

var (
	ruleCtNew = nftRule{text: "ct state new", exprs: []expr.Any{
		&expr.Ct{Register: regWork, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: regWork, DestRegister: regWork, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitNEW), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: regWork, Data: binaryutil.NativeEndian.PutUint32(0)},
	}}
	ruleTCP = nftRule{text: "meta l4proto tcp", exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: regWork},
		&expr.Cmp{Op: expr.CmpOpEq, Register: regWork, Data: []byte{unix.IPPROTO_TCP}},
	}}
	ruleMasq     = nftRule{text: "masquerade", exprs: []expr.Any{&expr.Masq{}}}
	ruleTCPReset = nftRule{text: "reject with tcp reset", exprs: []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_TCP_RST}}}
	ruleDrop     = verdict("drop", expr.VerdictDrop, "")
	ruleReturn   = verdict("return", expr.VerdictReturn, "")
)

// ruleMarkSet sets the masquerade bit mark (Config.MasqMark: kube-proxy's 0x4000 unless
// configured).
func ruleMarkSet(mark uint32) nftRule {
	return nftRule{text: fmt.Sprintf("meta mark set meta mark | 0x%x", mark), exprs: markOp(^mark, mark)}
}

// ruleMarkUnset returns when the masquerade bit is not set.
func ruleMarkUnset(mark uint32) nftRule {
	return nftRule{text: fmt.Sprintf("meta mark & 0x%x == 0 return", mark), exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: regWork},
		&expr.Bitwise{SourceRegister: regWork, DestRegister: regWork, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(mark), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: regWork, Data: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Verdict{Kind: expr.VerdictReturn},
	}}
}

// ruleMarkClear clears the masquerade bit.
func ruleMarkClear(mark uint32) nftRule {
	return nftRule{text: fmt.Sprintf("meta mark set meta mark xor 0x%x", mark), exprs: markOp(^uint32(0), mark)}
}

// matchIif matches the input interface by name, or by name prefix (iifname "veth*"), as nft
// compiles it: a whole name with its NUL padding to IFNAMSIZ, a prefix on its own bytes.
func matchIif(name string, prefix bool) nftRule {
	data := []byte(name)
	text := name
	if prefix {
		text += "*"
	} else {
		data = append(data, make([]byte, 16-len(data))...)
	}
	return nftRule{text: "iifname " + strconv.Quote(text), exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: regWork},
		&expr.Cmp{Op: expr.CmpOpEq, Register: regWork, Data: data},
	}}
}

// matchLocal matches traffic from pods as the detector recognises it; d must be implemented.
func (f *family) matchLocal(d proxier.LocalDetector) nftRule {
	if d.CIDR.IsValid() {
		return f.matchPrefix(d.CIDR, true)
	}
	return matchIif(d.Interface, d.Prefix)
}

// markOp sets mark = (mark & and) ^ xor.
func markOp(and, xor uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: regWork},
		&expr.Bitwise{SourceRegister: regWork, DestRegister: regWork, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(and), Xor: binaryutil.NativeEndian.PutUint32(xor)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: regWork},
	}
}

func verdict(text string, kind expr.VerdictKind, chain string) nftRule {
	if chain != "" {
		text += " " + chain
	}
	return nftRule{text: text, exprs: []expr.Any{&expr.Verdict{Kind: kind, Chain: chain}}}
}

func jump(chain string) nftRule { return verdict("jump", expr.VerdictJump, chain) }
func goTo(chain string) nftRule { return verdict("goto", expr.VerdictGoto, chain) }
func (f *family) reject() nftRule {
	return nftRule{text: f.icmpText, exprs: []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: f.icmpCode}}}
}

// tableBuilder accumulates one family's table while the desired state is built.
type tableBuilder struct {
	st *proxier.State
	f  *family
	t  *nftTable
}

func newTableBuilder(st *proxier.State, pf proxier.Family) *tableBuilder {
	f := familyOf(pf)
	t := &nftTable{fam: f}
	newSet := func(name, comment string, kind setKind, isMap bool) {
		t.sets = append(t.sets, &nftSet{name: name, comment: comment, kind: kind, isMap: isMap, elems: map[elemKey]string{}})
	}
	newSet(setVirtualServers, "every virtual server this proxier owns", keyVS, false)
	newSet(setClusterIPs, "cluster IP virtual servers", keyVS, false)
	newSet(setMasquerade, "external virtual servers of services with externalTrafficPolicy Cluster", keyVS, false)
	newSet(setNoEndpoints, "virtual servers without endpoints: reject", keyVS, false)
	newSet(setLocalOnly, "virtual servers whose Local policy leaves no endpoint here: drop", keyVS, false)
	newSet(setHairpin, "local endpoint . endpoint address: an endpoint reaching itself", keyHairpin, false)
	newSet(mapFirewall, "load-balancer virtual servers with source ranges", keyVS, true)

	base := func(name string, typ gnft.ChainType, hook *gnft.ChainHook, hookName string, prio int32, rules ...nftRule) {
		t.chains = append(t.chains, &nftChain{name: name, hook: &chainHook{typ: typ, hook: hook, name: hookName, prio: prio}, rules: rules})
	}
	helper := func(name string, rules ...nftRule) {
		t.chains = append(t.chains, &nftChain{name: name, rules: rules})
	}
	base(chainFilterPrerout, gnft.ChainTypeFilter, gnft.ChainHookPrerouting, "prerouting", prioDstNAT-10,
		ruleCtNew.then(f.matchVS(mapFirewall, true, false)))
	base(chainFilterInput, gnft.ChainTypeFilter, gnft.ChainHookInput, "input", prioFilter,
		ruleCtNew.then(jump(chainEndpointsCheck)))
	base(chainFilterOutput, gnft.ChainTypeFilter, gnft.ChainHookOutput, "output", prioBeforeIPVSLO,
		ruleCtNew.then(f.matchVS(mapFirewall, true, false)), ruleCtNew.then(jump(chainEndpointsCheck)))
	base(chainNATPrerouting, gnft.ChainTypeNAT, gnft.ChainHookPrerouting, "prerouting", prioDstNAT, jump(chainServices))
	base(chainNATOutput, gnft.ChainTypeNAT, gnft.ChainHookOutput, "output", prioDstNAT, jump(chainServices))
	cfg := &st.Config
	mark := cfg.MasqMark()
	base(chainNATPostrouting, gnft.ChainTypeNAT, gnft.ChainHookPostrouting, "postrouting", prioSrcNAT,
		f.matchVS(setHairpin, false, true).then(ruleMasq), ruleMarkUnset(mark), ruleMarkClear(mark), ruleMasq)

	var services []nftRule
	switch local := st.LocalDetector(pf); {
	case cfg.MasqueradeAll:
		services = append(services, f.matchVS(setClusterIPs, false, false).then(jump(chainMarkMasq)))
	case local.Implemented():
		// Traffic to a cluster IP that does not come from a pod may come from outside through
		// a route to the service range, and go on to another node: masquerade it.
		services = append(services, f.matchVS(setClusterIPs, false, false).then(jump(chainMarkOffCluster)))
		helper(chainMarkOffCluster, f.matchLocal(local).then(ruleReturn), ruleMarkSet(mark))
	default:
		// Without pod detection, as kube-proxy's ipvs mode: the node's own connections to a
		// cluster IP take that address (bound to the dummy interface) as their source, which
		// an endpoint on another node cannot answer; masquerade what has a cluster IP and
		// port as source ("src,dst" of KUBE-CLUSTER-IP).
		services = append(services, f.matchSourceVS(setClusterIPs).then(jump(chainMarkMasq)))
	}
	services = append(services, f.matchVS(setMasquerade, false, false).then(jump(chainMarkMasq)))
	helper(chainServices, services...)
	helper(chainMarkMasq, ruleMarkSet(mark))
	helper(chainEndpointsCheck,
		f.matchVS(setLocalOnly, false, false).then(ruleDrop),
		f.matchVS(setNoEndpoints, false, false).then(goTo(chainReject)))
	helper(chainReject, ruleTCP.then(ruleTCPReset), f.reject())
	return &tableBuilder{st: st, f: f, t: t}
}

// objectName is prefix-HASH-readable, stable and unique, within the kernel's name limit.
func objectName(prefix, readable string) string {
	sum := sha256.Sum256([]byte(readable))
	name := prefix + "-" + base32.StdEncoding.EncodeToString(sum[:])[:8] + "-" + readable
	if len(name) > 200 {
		name = name[:200]
	}
	return name
}

func (b *tableBuilder) elem(set string, k elemKey, v string) { b.t.set(set).elems[k] = v }

// addService adds sp's elements (and its firewall chain) to the table.
func (b *tableBuilder) addService(sp *proxier.ServicePort, proto uint8, npAddrs []netip.Addr) {
	vs := func(a netip.Addr, port uint16) elemKey { return elemKey{addr: a.Unmap(), proto: proto, port: port} }
	// Traffic the model drops or rejects for want of endpoints: its key goes into the set the
	// endpoints-check chain drops (or rejects) from.
	noEndpoints := func(v proxier.Verdict, k elemKey) {
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
	var external []elemKey
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
			b.elem(setHairpin, elemKey{addr: a, proto: proto, port: ep.Port, addr2: a}, "")
		}
	}
	if len(sp.LoadBalancerSourceRanges) > 0 && len(sp.LoadBalancerIPs) > 0 {
		n := sp.Name
		name := objectName("firewall", fmt.Sprintf("%s/%s/%s/%s", n.Namespace, n.Name, strings.ToLower(string(n.Protocol)), n.Port))
		c := &nftChain{name: name}
		for _, p := range sp.LoadBalancerSourceRanges {
			c.rules = append(c.rules, b.f.matchPrefix(p, true).then(ruleReturn))
		}
		c.rules = append(c.rules, ruleDrop)
		b.t.chains = append(b.t.chains, c)
		for _, a := range sp.LoadBalancerIPs {
			b.elem(mapFirewall, vs(a, sp.Port), name)
		}
	}
}

// withOwned returns t with extra keys in the ownership set (virtual servers still draining).
func (t *nftTable) withOwned(keys []vsKey) *nftTable {
	if len(keys) == 0 {
		return t
	}
	c := *t
	c.sets = slices.Clone(t.sets)
	for i, s := range c.sets {
		if s.name == setVirtualServers {
			n := *s
			n.elems = make(map[elemKey]string, len(s.elems)+len(keys))
			for k, v := range s.elems {
				n.elems[k] = v
			}
			for _, k := range keys {
				if proxier.FamilyOf(k.Addr) == t.fam.pf {
					n.elems[vsElem(k)] = ""
				}
			}
			c.sets[i] = &n
		}
	}
	return &c
}
