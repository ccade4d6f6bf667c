package nftables

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"
	"time"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"nodeagent/proxier"
)

// This file is the small Go description of our tables: chains made of rules made of terms, sets
// and maps, and their elements. Every term renders two ways: appendText writes nft syntax (for
// Render, golden files and humans) and exprs produces the google/nftables expressions the
// kernel receives. Keeping both renderings next to each other is what keeps them in step.

// family is one IP family's table and the constants that differ between ip and ip6.
type family struct {
	pf       proxier.Family
	name     string // nft family keyword and payload protocol: "ip" or "ip6"
	nfproto  byte   // NFPROTO_IPV4 / NFPROTO_IPV6
	addrLen  uint32 // bytes in an address
	saddrOff uint32 // offset of the source address in the network header
	daddrOff uint32 // offset of the destination address in the network header
	addrType string // nft type name of an address
	loopback netip.Prefix
}

var (
	familyIPv4 = &family{pf: proxier.IPv4, name: "ip", nfproto: unix.NFPROTO_IPV4, addrLen: 4,
		saddrOff: 12, daddrOff: 16, addrType: "ipv4_addr", loopback: netip.MustParsePrefix("127.0.0.0/8")}
	familyIPv6 = &family{pf: proxier.IPv6, name: "ip6", nfproto: unix.NFPROTO_IPV6, addrLen: 16,
		saddrOff: 8, daddrOff: 24, addrType: "ipv6_addr", loopback: netip.MustParsePrefix("::1/128")}
)

func familyOf(f proxier.Family) *family {
	if f == proxier.IPv6 {
		return familyIPv6
	}
	return familyIPv4
}

// hook makes a chain a base chain.
type hook struct {
	typ      string // "filter" or "nat"
	hooknum  uint32 // NF_INET_*
	priority int32
	prioText string // nft's symbolic priority, e.g. "dstnat - 10"
}

var hookNames = map[uint32]string{
	unix.NF_INET_PRE_ROUTING: "prerouting", unix.NF_INET_LOCAL_IN: "input", unix.NF_INET_FORWARD: "forward",
	unix.NF_INET_LOCAL_OUT: "output", unix.NF_INET_POST_ROUTING: "postrouting",
}

// chain is a chain with its rules in order.
type chain struct {
	name  string
	hook  *hook
	rules []rule
}

// rule is a sequence of terms (matches and statements) evaluated left to right.
type rule []term

// setKind is the key (and data) type of a set or map.
type setKind uint8

const (
	keyAddr              setKind = iota // ipvX_addr
	keyAddrAddr                         // ipvX_addr . ipvX_addr
	keyAddrProtoPort                    // ipvX_addr . inet_proto . inet_service
	keyProtoPort                        // inet_proto . inet_service
	keyAddrProtoPortSlot                // ipvX_addr . inet_proto . inet_service . numgen slot
	keyProtoPortSlot                    // inet_proto . inet_service . numgen slot
)

// set is a named set, a verdict map when isMap, or an endpoint map (data ipvX_addr .
// inet_service) when endpoints.
type set struct {
	name      string
	kind      setKind
	isMap     bool
	endpoints bool
	timeout   time.Duration // > 0: flags dynamic,timeout (affinity sets)
	comment   string
}

// elemKey is one element's key; which fields count depends on the set's kind. The one key of
// two addresses (keyAddrAddr, the hairpin set) always holds the same address twice.
type elemKey struct {
	addr  netip.Addr
	proto uint8
	port  uint16
	slot  uint32 // numgen value, for the endpoint maps
}

// verdict is a rule or map verdict; chain is set for jump and goto.
type verdict struct {
	code  int32 // expr.VerdictKind values
	chain string
}

var (
	verdictDrop   = verdict{code: int32(expr.VerdictDrop)}
	verdictReturn = verdict{code: int32(expr.VerdictReturn)}
)

func gotoChain(name string) verdict { return verdict{code: int32(expr.VerdictGoto), chain: name} }
func jumpChain(name string) verdict { return verdict{code: int32(expr.VerdictJump), chain: name} }

// element is one element of a set or map: val is a verdict map's value, to an endpoint map's
// (both are ignored for plain sets).
type element struct {
	set string
	key elemKey
	val verdict
	to  netip.AddrPort
}

// term is one match or statement of a rule.
type term interface {
	appendText(b []byte, f *family) []byte
	exprs(f *family) []expr.Any
}

// Registers: single values use NFT_REG_1; concatenations start at NFT_REG32_00 like nft does.
const (
	reg1    = unix.NFT_REG_1
	reg2    = unix.NFT_REG_2
	reg32At = unix.NFT_REG32_00
)

func native32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

func protoName(p uint8) string {
	switch p {
	case unix.IPPROTO_TCP:
		return "tcp"
	case unix.IPPROTO_UDP:
		return "udp"
	case unix.IPPROTO_SCTP:
		return "sctp"
	}
	return strconv.Itoa(int(p))
}

func addrField(src bool) string {
	if src {
		return "saddr"
	}
	return "daddr"
}

func (f *family) addrOffset(src bool) uint32 {
	if src {
		return f.saddrOff
	}
	return f.daddrOff
}

func loadAddr(f *family, src bool, reg uint32, n uint32) *expr.Payload {
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: f.addrOffset(src), Len: n}
}

// ctStateNew matches the first packet of a connection.
type ctStateNew struct{}

func (ctStateNew) appendText(b []byte, _ *family) []byte { return append(b, "ct state new"...) }
func (ctStateNew) exprs(*family) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: reg1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: native32(8), Xor: native32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: native32(0)},
	}
}

// ctStatusDNAT matches connections whose destination was translated.
type ctStatusDNAT struct{}

func (ctStatusDNAT) appendText(b []byte, _ *family) []byte { return append(b, "ct status dnat"...) }
func (ctStatusDNAT) exprs(*family) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: reg1, Key: expr.CtKeySTATUS},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: native32(0x20), Xor: native32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: native32(0)},
	}
}

// addrMatch matches the source or destination address against a prefix (or one address).
type addrMatch struct {
	src    bool
	neg    bool
	prefix netip.Prefix
}

func (m addrMatch) appendText(b []byte, f *family) []byte {
	b = append(b, f.name...)
	b = append(b, ' ')
	b = append(b, addrField(m.src)...)
	if m.neg {
		b = append(b, " !="...)
	}
	b = append(b, ' ')
	if m.prefix.IsSingleIP() {
		return m.prefix.Addr().AppendTo(b)
	}
	return m.prefix.AppendTo(b)
}

func (m addrMatch) exprs(f *family) []expr.Any {
	// Like nft: a prefix of whole bytes loads only those bytes; any other, and /0 (a load of no
	// bytes is invalid), loads the whole address and masks it (nft lists a masked partial load
	// as a raw payload, not a prefix).
	bits := m.prefix.Bits()
	masked := bits%8 != 0 || bits == 0
	n := uint32(bits / 8)
	if masked {
		n = f.addrLen
	}
	addr := m.prefix.Masked().Addr().AsSlice()[:n]
	out := []expr.Any{loadAddr(f, m.src, reg1, n)}
	if masked {
		mask := make([]byte, n)
		for i := range bits {
			mask[i/8] |= 0x80 >> (i % 8)
		}
		out = append(out, &expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: n, Mask: mask, Xor: make([]byte, n)})
	}
	op := expr.CmpOpEq
	if m.neg {
		op = expr.CmpOpNeq
	}
	return append(out, &expr.Cmp{Op: op, Register: reg1, Data: addr})
}

// addrInSet matches the source or destination address against a named set.
type addrInSet struct {
	src bool
	set string
}

func (m addrInSet) appendText(b []byte, f *family) []byte {
	b = append(b, f.name...)
	b = append(b, ' ')
	b = append(b, addrField(m.src)...)
	b = append(b, " @"...)
	return append(b, m.set...)
}

func (m addrInSet) exprs(f *family) []expr.Any {
	return []expr.Any{loadAddr(f, m.src, reg1, f.addrLen), &expr.Lookup{SourceRegister: reg1, SetName: m.set}}
}

// addrPairInSet matches "saddr . daddr" against a named set.
type addrPairInSet struct{ set string }

func (m addrPairInSet) appendText(b []byte, f *family) []byte {
	b = append(b, f.name...)
	b = append(b, " saddr . "...)
	b = append(b, f.name...)
	b = append(b, " daddr @"...)
	return append(b, m.set...)
}

func (m addrPairInSet) exprs(f *family) []expr.Any {
	return []expr.Any{
		loadAddr(f, true, reg32At, f.addrLen),
		loadAddr(f, false, reg32At+f.addrLen/4, f.addrLen),
		&expr.Lookup{SourceRegister: reg32At, SetName: m.set},
	}
}

// serviceVmap dispatches on "daddr . l4proto . dport" through a named verdict map.
type serviceVmap struct{ set string }

func (m serviceVmap) appendText(b []byte, f *family) []byte {
	b = append(b, f.name...)
	b = append(b, " daddr . meta l4proto . th dport vmap @"...)
	return append(b, m.set...)
}

func (m serviceVmap) exprs(f *family) []expr.Any {
	r := uint32(reg32At)
	return []expr.Any{
		loadAddr(f, false, r, f.addrLen),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: r + f.addrLen/4},
		&expr.Payload{DestRegister: r + f.addrLen/4 + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: r, DestRegister: 0, IsDestRegSet: true, SetName: m.set},
	}
}

// portVmap dispatches on "l4proto . dport" through a named verdict map.
type portVmap struct{ set string }

func (m portVmap) appendText(b []byte, _ *family) []byte {
	b = append(b, "meta l4proto . th dport vmap @"...)
	return append(b, m.set...)
}

func (m portVmap) exprs(*family) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg32At},
		&expr.Payload{DestRegister: reg32At + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: reg32At, DestRegister: 0, IsDestRegSet: true, SetName: m.set},
	}
}

// tupleInSet matches "daddr . l4proto . dport" against a named set.
type tupleInSet struct{ set string }

func (m tupleInSet) appendText(b []byte, f *family) []byte {
	b = append(b, f.name...)
	b = append(b, " daddr . meta l4proto . th dport @"...)
	return append(b, m.set...)
}

func (m tupleInSet) exprs(f *family) []expr.Any {
	r := uint32(reg32At)
	return []expr.Any{
		loadAddr(f, false, r, f.addrLen),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: r + f.addrLen/4},
		&expr.Payload{DestRegister: r + f.addrLen/4 + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: r, SetName: m.set},
	}
}

// portInSet matches "l4proto . dport" against a named set.
type portInSet struct{ set string }

func (m portInSet) appendText(b []byte, _ *family) []byte {
	b = append(b, "meta l4proto . th dport @"...)
	return append(b, m.set...)
}

func (m portInSet) exprs(*family) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg32At},
		&expr.Payload{DestRegister: reg32At + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: reg32At, SetName: m.set},
	}
}

// dnatSlot translates the destination to the endpoint that a random slot picks in an endpoint
// map: "dnat to daddr . l4proto . dport . numgen random mod N map @m" (node ports leave out
// daddr). The map holds slots 0..N-1 of every service address with N endpoints, so one rule
// serves them all, and replacing or counting endpoints changes map elements only: no rule is
// added, and the kernel does not revalidate the table (it does for every new rule that
// contains a NAT or jump expression, and for verdict-map elements that jump).
type dnatSlot struct {
	byAddr bool // key starts with the destination address (service IPs), else not (node ports)
	mod    uint32
	set    string
}

func (d dnatSlot) appendText(b []byte, f *family) []byte {
	b = append(b, "dnat "...)
	b = append(b, f.name...)
	b = append(b, " to "...)
	if d.byAddr {
		b = append(b, f.name...)
		b = append(b, " daddr . "...)
	}
	b = append(b, "meta l4proto . th dport . numgen random mod "...)
	b = strconv.AppendUint(b, uint64(d.mod), 10)
	b = append(b, " map @"...)
	return append(b, d.set...)
}

func (d dnatSlot) exprs(f *family) []expr.Any {
	r := uint32(reg32At)
	var out []expr.Any
	if d.byAddr {
		out = append(out, loadAddr(f, false, r, f.addrLen))
		r += f.addrLen / 4
	}
	return append(out,
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: r},
		&expr.Payload{DestRegister: r + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Numgen{Register: r + 2, Modulus: d.mod, Type: unix.NFT_NG_RANDOM},
		&expr.Lookup{SourceRegister: reg32At, DestRegister: reg32At, IsDestRegSet: true, SetName: d.set},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(f.nfproto), RegAddrMin: reg32At,
			RegProtoMin: reg32At + f.addrLen/4},
	)
}

// fibLocal matches packets whose source or destination address is local to this node.
type fibLocal struct{ src bool }

func (m fibLocal) appendText(b []byte, _ *family) []byte {
	b = append(b, "fib "...)
	b = append(b, addrField(m.src)...)
	return append(b, " type local"...)
}

func (m fibLocal) exprs(*family) []expr.Any {
	return []expr.Any{
		&expr.Fib{Register: reg1, FlagSADDR: m.src, FlagDADDR: !m.src, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: native32(unix.RTN_LOCAL)},
	}
}

// l4proto matches the transport protocol.
type l4proto struct{ proto uint8 }

func (m l4proto) appendText(b []byte, _ *family) []byte {
	return append(append(b, "meta l4proto "...), protoName(m.proto)...)
}

func (m l4proto) exprs(*family) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{m.proto}},
	}
}

// markOp is one of the three operations of the masquerade protocol on the mark bit mark
// (Config.MasqMark: kube-proxy's 0x4000 unless configured).
type markOp struct {
	op   markKind
	mark uint32
}

type markKind uint8

const (
	markSet   markKind = iota // meta mark set meta mark or MARK
	markClear                 // meta mark set meta mark xor MARK (only after markUnset failed)
	markUnset                 // meta mark & MARK == 0
)

func (m markOp) appendText(b []byte, _ *family) []byte {
	hex := fmt.Sprintf("0x%08x", m.mark)
	switch m.op {
	case markSet:
		return append(b, "meta mark set meta mark or "+hex...)
	case markClear:
		return append(b, "meta mark set meta mark xor "+hex...)
	}
	return append(b, "meta mark & "+hex+" == 0x00000000"...)
}

func (m markOp) exprs(*family) []expr.Any {
	load := &expr.Meta{Key: expr.MetaKeyMARK, Register: reg1}
	store := &expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: reg1}
	switch m.op {
	case markSet:
		return []expr.Any{load, &expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
			Mask: native32(^m.mark), Xor: native32(m.mark)}, store}
	case markClear:
		return []expr.Any{load, &expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
			Mask: native32(0xffffffff), Xor: native32(m.mark)}, store}
	}
	return []expr.Any{load,
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: native32(m.mark), Xor: native32(0)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: native32(0)}}
}

// iifMatch matches the input interface by name, or by name prefix (iifname "veth*").
type iifMatch struct {
	name   string
	prefix bool
	neg    bool
}

func (m iifMatch) appendText(b []byte, _ *family) []byte {
	b = append(b, "iifname "...)
	if m.neg {
		b = append(b, "!= "...)
	}
	name := m.name
	if m.prefix {
		name += "*"
	}
	return strconv.AppendQuote(b, name)
}

func (m iifMatch) exprs(*family) []expr.Any {
	// As nft: a whole name is compared with its NUL padding to IFNAMSIZ, a prefix on its own
	// bytes only.
	data := []byte(m.name)
	if !m.prefix {
		data = append(data, make([]byte, 16-len(data))...)
	}
	op := expr.CmpOpEq
	if m.neg {
		op = expr.CmpOpNeq
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg1},
		&expr.Cmp{Op: op, Register: reg1, Data: data},
	}
}

// localMatch matches traffic from pods (neg: traffic that is not) as the detector recognises
// it: by source CIDR or input interface. d must be implemented.
func localMatch(d proxier.LocalDetector, neg bool) term {
	if d.CIDR.IsValid() {
		return addrMatch{src: true, neg: neg, prefix: d.CIDR}
	}
	return iifMatch{name: d.Interface, prefix: d.Prefix, neg: neg}
}

// appendText writes a verdict.
func (v verdict) appendText(b []byte, _ *family) []byte {
	switch expr.VerdictKind(v.code) {
	case expr.VerdictJump:
		return append(append(b, "jump "...), v.chain...)
	case expr.VerdictGoto:
		return append(append(b, "goto "...), v.chain...)
	case expr.VerdictDrop:
		return append(b, "drop"...)
	case expr.VerdictReturn:
		return append(b, "return"...)
	case expr.VerdictAccept:
		return append(b, "accept"...)
	}
	return append(b, "continue"...)
}

func (v verdict) exprs(*family) []expr.Any {
	return []expr.Any{&expr.Verdict{Kind: expr.VerdictKind(v.code), Chain: v.chain}}
}

// reject answers with a TCP reset (tcp) or ICMP port unreachable, so that clients fail at once.
type reject struct{ tcpReset bool }

func (r reject) appendText(b []byte, _ *family) []byte {
	if r.tcpReset {
		return append(b, "reject with tcp reset"...)
	}
	return append(b, "reject"...)
}

func (r reject) exprs(f *family) []expr.Any {
	if r.tcpReset {
		return []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_TCP_RST}}
	}
	code := uint8(3) // ICMP_PORT_UNREACH
	if f.pf == proxier.IPv6 {
		code = 4 // ICMPV6_PORT_UNREACH
	}
	return []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: code}}
}

// masquerade source-NATs to the outgoing interface's address with random ports.
type masquerade struct{}

func (masquerade) appendText(b []byte, _ *family) []byte {
	return append(b, "masquerade fully-random"...)
}
func (masquerade) exprs(*family) []expr.Any {
	return []expr.Any{&expr.Masq{FullyRandom: true}}
}

// dnat translates the destination to an endpoint.
type dnat struct{ to netip.AddrPort }

func (d dnat) appendText(b []byte, f *family) []byte {
	b = append(b, "dnat to "...)
	if f.pf == proxier.IPv6 {
		b = append(b, '[')
		b = d.to.Addr().AppendTo(b)
		b = append(b, ']')
	} else {
		b = d.to.Addr().AppendTo(b)
	}
	b = append(b, ':')
	return strconv.AppendUint(b, uint64(d.to.Port()), 10)
}

func (d dnat) exprs(f *family) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: reg1, Data: d.to.Addr().AsSlice()},
		&expr.Immediate{Register: reg2, Data: binary.BigEndian.AppendUint16(nil, d.to.Port())},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(f.nfproto), RegAddrMin: reg1, RegProtoMin: reg2},
	}
}

// updateSource adds (or refreshes) the source address in a dynamic set: session affinity.
type updateSource struct{ set string }

func (u updateSource) appendText(b []byte, f *family) []byte {
	b = append(b, "update @"...)
	b = append(b, u.set...)
	b = append(b, " { "...)
	b = append(b, f.name...)
	return append(b, " saddr }"...)
}

func (u updateSource) exprs(f *family) []expr.Any {
	return []expr.Any{
		loadAddr(f, true, reg1, f.addrLen),
		&expr.Dynset{SrcRegKey: reg1, SetName: u.set, Operation: unix.NFT_DYNSET_OP_UPDATE},
	}
}

// numgenZero matches with probability 1/mod: numgen random mod <mod> == 0. The chains of an
// affinity or Local-policy service pick endpoint i of n with "numgen random mod n-i == 0 goto
// endpoint-i", the last one unconditionally: each endpoint gets 1/n of new connections.
//
// Not kube-proxy's "numgen random mod n vmap { ... }": that needs an anonymous map per
// service, and the kernel names and finds sets by walking the table's list of sets, which
// makes the first sync quadratic in the number of services (measured on this project's
// kernel: 2,000 / 4,000 / 8,000 services took 0.37 / 1.4 / 5.7 s for the maps alone). Nor a
// rule per service looking into one shared map: the kernel checks every new element of a map
// against every rule bound to it, and every new binding against every element (dnatSlot keeps
// the bindings to one per endpoint count).
type numgenZero struct{ mod uint32 }

func (n numgenZero) appendText(b []byte, _ *family) []byte {
	b = append(b, "numgen random mod "...)
	b = strconv.AppendUint(b, uint64(n.mod), 10)
	return append(b, " 0"...)
}

func (n numgenZero) exprs(*family) []expr.Any {
	return []expr.Any{
		&expr.Numgen{Register: reg1, Modulus: n.mod, Type: unix.NFT_NG_RANDOM},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: native32(0)},
	}
}

// appendRule writes one rule's terms separated by spaces.
func appendRule(b []byte, f *family, r rule) []byte {
	for i, t := range r {
		if i > 0 {
			b = append(b, ' ')
		}
		b = t.appendText(b, f)
	}
	return b
}

// fingerprint is the text of a chain's rules: two chains program the same rules iff their
// fingerprints are equal.
func (c *chain) fingerprint(f *family) string {
	var b []byte
	for _, r := range c.rules {
		b = appendRule(b, f, r)
		b = append(b, '\n')
	}
	return string(b)
}

// appendKey writes an element's key in nft syntax.
func appendKey(b []byte, kind setKind, k elemKey) []byte {
	switch kind {
	case keyAddr:
		return k.addr.AppendTo(b)
	case keyAddrAddr:
		b = k.addr.AppendTo(b)
		b = append(b, " . "...)
		return k.addr.AppendTo(b)
	case keyAddrProtoPort, keyAddrProtoPortSlot:
		b = k.addr.AppendTo(b)
		b = append(b, " . "...)
	}
	b = append(b, protoName(k.proto)...)
	b = append(b, " . "...)
	b = strconv.AppendUint(b, uint64(k.port), 10)
	if kind == keyAddrProtoPortSlot || kind == keyProtoPortSlot {
		b = append(b, " . "...)
		b = strconv.AppendUint(b, uint64(k.slot), 10)
	}
	return b
}

// appendEndpoint writes an endpoint map's value in nft syntax.
func appendEndpoint(b []byte, to netip.AddrPort) []byte {
	b = to.Addr().AppendTo(b)
	b = append(b, " . "...)
	return strconv.AppendUint(b, uint64(to.Port()), 10)
}

// typeText is the set's "type" clause ("typeof" for the endpoint maps, whose numgen field has
// no type name).
func (s *set) typeText(f *family) string {
	if s.endpoints {
		addr := ""
		if s.kind == keyAddrProtoPortSlot {
			addr = f.name + " daddr . "
		}
		return "typeof " + addr + "meta l4proto . th dport . numgen random mod 1 : " + f.name + " daddr . th dport"
	}
	var t string
	switch s.kind {

	case keyAddr:
		t = f.addrType
	case keyAddrAddr:
		t = f.addrType + " . " + f.addrType
	case keyAddrProtoPort:
		t = f.addrType + " . inet_proto . inet_service"
	case keyProtoPort:
		t = "inet_proto . inet_service"
	}
	if s.isMap {
		t += " : verdict"
	}
	return "type " + t
}
