package nft

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

// This file is the small Go description of tables: chains made of rules made of terms, sets
// and maps, and their elements. Every term renders two ways: AppendText writes nft syntax (for
// Render, golden files and humans) and Exprs produces the google/nftables expressions the
// kernel receives. Keeping both renderings next to each other is what keeps them in step.

// Hook makes a chain a base chain.
type Hook struct {
	Type     string // "filter" or "nat"
	Hooknum  uint32 // NF_INET_*
	Priority int32
}

// HookNames are nft's names of the hooks.
var HookNames = map[uint32]string{
	unix.NF_INET_PRE_ROUTING: "prerouting", unix.NF_INET_LOCAL_IN: "input", unix.NF_INET_FORWARD: "forward",
	unix.NF_INET_LOCAL_OUT: "output", unix.NF_INET_POST_ROUTING: "postrouting",
}

// Chain is a chain with its rules in order.
type Chain struct {
	Name  string
	Hook  *Hook
	Rules []Rule
}

// Rule is a sequence of terms (matches and statements) evaluated left to right.
type Rule []Term

// SetKind is the key (and data) type of a set or map.
type SetKind uint8

const (
	KeyAddr              SetKind = iota // ipvX_addr
	KeyAddrAddr                         // ipvX_addr . ipvX_addr
	KeyAddrProtoPort                    // ipvX_addr . inet_proto . inet_service
	KeyProtoPort                        // inet_proto . inet_service
	KeyAddrProtoPortSlot                // ipvX_addr . inet_proto . inet_service . numgen slot
	KeyProtoPortSlot                    // inet_proto . inet_service . numgen slot
	KeyAddrProtoPortAddr                // ipvX_addr . inet_proto . inet_service . ipvX_addr
)

// Set is a named set, a verdict map when IsMap, or an endpoint map (data ipvX_addr .
// inet_service) when Endpoints.
type Set struct {
	Name      string
	Kind      SetKind
	IsMap     bool
	Endpoints bool
	Timeout   time.Duration // > 0: flags dynamic,timeout (affinity sets)
	Comment   string
}

// Key is one element's key; which fields count depends on the set's kind. The keys of two
// addresses (KeyAddrAddr, KeyAddrProtoPortAddr: hairpin sets) always hold the same address
// twice.
type Key struct {
	Addr  netip.Addr
	Proto uint8
	Port  uint16
	Slot  uint32 // numgen value, for the endpoint maps
}

// Verdict is a rule or map verdict; Chain is set for jump and goto.
type Verdict struct {
	Code  int32 // expr.VerdictKind values
	Chain string
}

// Verdicts without a chain.
var (
	Drop   = Verdict{Code: int32(expr.VerdictDrop)}
	Return = Verdict{Code: int32(expr.VerdictReturn)}
)

// Goto continues in chain name and does not come back.
func Goto(name string) Verdict { return Verdict{Code: int32(expr.VerdictGoto), Chain: name} }

// Jump continues in chain name and comes back after it.
func Jump(name string) Verdict { return Verdict{Code: int32(expr.VerdictJump), Chain: name} }

// Term is one match or statement of a rule.
type Term interface {
	AppendText(b []byte, f *Family) []byte
	Exprs(f *Family) []expr.Any
}

// Registers: single values use NFT_REG_1; concatenations start at NFT_REG32_00 like nft does.
const (
	Reg1      = unix.NFT_REG_1
	Reg2      = unix.NFT_REG_2
	RegConcat = unix.NFT_REG32_00
)

// Native32 is v in host byte order, as the kernel compares marks, ct state and verdicts.
func Native32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

func addrField(src bool) string {
	if src {
		return "saddr"
	}
	return "daddr"
}

// LoadAddr loads n bytes of the source (src) or destination address into reg.
func LoadAddr(f *Family, src bool, reg uint32, n uint32) *expr.Payload {
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: f.AddrOffset(src), Len: n}
}

// CtStateNew matches the first packet of a connection.
type CtStateNew struct{}

func (CtStateNew) AppendText(b []byte, _ *Family) []byte { return append(b, "ct state new"...) }
func (CtStateNew) Exprs(*Family) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: Reg1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: Reg1, DestRegister: Reg1, Len: 4, Mask: Native32(8), Xor: Native32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: Reg1, Data: Native32(0)},
	}
}

// CtStatusDNAT matches connections whose destination was translated.
type CtStatusDNAT struct{}

func (CtStatusDNAT) AppendText(b []byte, _ *Family) []byte { return append(b, "ct status dnat"...) }
func (CtStatusDNAT) Exprs(*Family) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: Reg1, Key: expr.CtKeySTATUS},
		&expr.Bitwise{SourceRegister: Reg1, DestRegister: Reg1, Len: 4, Mask: Native32(0x20), Xor: Native32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: Reg1, Data: Native32(0)},
	}
}

// AddrMatch matches the source or destination address against a prefix (or one address).
type AddrMatch struct {
	Src    bool
	Neg    bool
	Prefix netip.Prefix
}

func (m AddrMatch) AppendText(b []byte, f *Family) []byte {
	b = append(b, f.Name...)
	b = append(b, ' ')
	b = append(b, addrField(m.Src)...)
	if m.Neg {
		b = append(b, " !="...)
	}
	b = append(b, ' ')
	if m.Prefix.IsSingleIP() {
		return m.Prefix.Addr().AppendTo(b)
	}
	return m.Prefix.AppendTo(b)
}

func (m AddrMatch) Exprs(f *Family) []expr.Any {
	// Like nft: a prefix of whole bytes loads only those bytes; any other, and /0 (a load of no
	// bytes is invalid), loads the whole address and masks it (nft lists a masked partial load
	// as a raw payload, not a prefix).
	bits := m.Prefix.Bits()
	masked := bits%8 != 0 || bits == 0
	n := uint32(bits / 8)
	if masked {
		n = f.AddrLen
	}
	addr := m.Prefix.Masked().Addr().AsSlice()[:n]
	out := []expr.Any{LoadAddr(f, m.Src, Reg1, n)}
	if masked {
		mask := make([]byte, n)
		for i := range bits {
			mask[i/8] |= 0x80 >> (i % 8)
		}
		out = append(out, &expr.Bitwise{SourceRegister: Reg1, DestRegister: Reg1, Len: n, Mask: mask, Xor: make([]byte, n)})
	}
	op := expr.CmpOpEq
	if m.Neg {
		op = expr.CmpOpNeq
	}
	return append(out, &expr.Cmp{Op: op, Register: Reg1, Data: addr})
}

// AddrInSet matches the source or destination address against a named set.
type AddrInSet struct {
	Src bool
	Set string
}

func (m AddrInSet) AppendText(b []byte, f *Family) []byte {
	b = append(b, f.Name...)
	b = append(b, ' ')
	b = append(b, addrField(m.Src)...)
	b = append(b, " @"...)
	return append(b, m.Set...)
}

func (m AddrInSet) Exprs(f *Family) []expr.Any {
	return []expr.Any{LoadAddr(f, m.Src, Reg1, f.AddrLen), &expr.Lookup{SourceRegister: Reg1, SetName: m.Set}}
}

// AddrPairInSet matches "saddr . daddr" against a named set.
type AddrPairInSet struct{ Set string }

func (m AddrPairInSet) AppendText(b []byte, f *Family) []byte {
	b = append(b, f.Name...)
	b = append(b, " saddr . "...)
	b = append(b, f.Name...)
	b = append(b, " daddr @"...)
	return append(b, m.Set...)
}

func (m AddrPairInSet) Exprs(f *Family) []expr.Any {
	return []expr.Any{
		LoadAddr(f, true, RegConcat, f.AddrLen),
		LoadAddr(f, false, RegConcat+f.AddrLen/4, f.AddrLen),
		&expr.Lookup{SourceRegister: RegConcat, SetName: m.Set},
	}
}

// ServiceVmap dispatches on "daddr . l4proto . dport" through a named verdict map.
type ServiceVmap struct{ Set string }

func (m ServiceVmap) AppendText(b []byte, f *Family) []byte {
	b = append(b, f.Name...)
	b = append(b, " daddr . meta l4proto . th dport vmap @"...)
	return append(b, m.Set...)
}

func (m ServiceVmap) Exprs(f *Family) []expr.Any {
	r := uint32(RegConcat)
	return []expr.Any{
		LoadAddr(f, false, r, f.AddrLen),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: r + f.AddrLen/4},
		&expr.Payload{DestRegister: r + f.AddrLen/4 + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: r, DestRegister: 0, IsDestRegSet: true, SetName: m.Set},
	}
}

// PortVmap dispatches on "l4proto . dport" through a named verdict map.
type PortVmap struct{ Set string }

func (m PortVmap) AppendText(b []byte, _ *Family) []byte {
	b = append(b, "meta l4proto . th dport vmap @"...)
	return append(b, m.Set...)
}

func (m PortVmap) Exprs(*Family) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: RegConcat},
		&expr.Payload{DestRegister: RegConcat + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: RegConcat, DestRegister: 0, IsDestRegSet: true, SetName: m.Set},
	}
}

// TupleInSet matches "daddr . l4proto . dport" against a named set; with Src, "saddr . l4proto .
// dport" (a packet sent from a service address to its port).
type TupleInSet struct {
	Set string
	Src bool
}

func (m TupleInSet) AppendText(b []byte, f *Family) []byte {
	b = append(b, f.Name...)
	if m.Src {
		b = append(b, " saddr"...)
	} else {
		b = append(b, " daddr"...)
	}
	b = append(b, " . meta l4proto . th dport @"...)
	return append(b, m.Set...)
}

func (m TupleInSet) Exprs(f *Family) []expr.Any {
	r := uint32(RegConcat)
	return []expr.Any{
		LoadAddr(f, m.Src, r, f.AddrLen),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: r + f.AddrLen/4},
		&expr.Payload{DestRegister: r + f.AddrLen/4 + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: r, SetName: m.Set},
	}
}

// PortInSet matches "l4proto . dport" against a named set.
type PortInSet struct{ Set string }

func (m PortInSet) AppendText(b []byte, _ *Family) []byte {
	b = append(b, "meta l4proto . th dport @"...)
	return append(b, m.Set...)
}

func (m PortInSet) Exprs(*Family) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: RegConcat},
		&expr.Payload{DestRegister: RegConcat + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: RegConcat, SetName: m.Set},
	}
}

// DNATSlot translates the destination to the endpoint that a random slot picks in an endpoint
// map: "dnat to daddr . l4proto . dport . numgen random mod N map @m" (node ports leave out
// daddr). The map holds slots 0..N-1 of every service address with N endpoints, so one rule
// serves them all, and replacing or counting endpoints changes map elements only: no rule is
// added, and the kernel does not revalidate the table (it does for every new rule that
// contains a NAT or jump expression, and for verdict-map elements that jump).
type DNATSlot struct {
	ByAddr bool // key starts with the destination address (service IPs), else not (node ports)
	Mod    uint32
	Set    string
}

func (d DNATSlot) AppendText(b []byte, f *Family) []byte {
	b = append(b, "dnat "...)
	b = append(b, f.Name...)
	b = append(b, " to "...)
	if d.ByAddr {
		b = append(b, f.Name...)
		b = append(b, " daddr . "...)
	}
	b = append(b, "meta l4proto . th dport . numgen random mod "...)
	b = strconv.AppendUint(b, uint64(d.Mod), 10)
	b = append(b, " map @"...)
	return append(b, d.Set...)
}

func (d DNATSlot) Exprs(f *Family) []expr.Any {
	r := uint32(RegConcat)
	var out []expr.Any
	if d.ByAddr {
		out = append(out, LoadAddr(f, false, r, f.AddrLen))
		r += f.AddrLen / 4
	}
	return append(out,
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: r},
		&expr.Payload{DestRegister: r + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Numgen{Register: r + 2, Modulus: d.Mod, Type: unix.NFT_NG_RANDOM},
		&expr.Lookup{SourceRegister: RegConcat, DestRegister: RegConcat, IsDestRegSet: true, SetName: d.Set},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(f.NFProto), RegAddrMin: RegConcat,
			RegProtoMin: RegConcat + f.AddrLen/4},
	)
}

// FibLocal matches packets whose source or destination address is local to this node.
type FibLocal struct{ Src bool }

func (m FibLocal) AppendText(b []byte, _ *Family) []byte {
	b = append(b, "fib "...)
	b = append(b, addrField(m.Src)...)
	return append(b, " type local"...)
}

func (m FibLocal) Exprs(*Family) []expr.Any {
	return []expr.Any{
		&expr.Fib{Register: Reg1, FlagSADDR: m.Src, FlagDADDR: !m.Src, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: Reg1, Data: Native32(unix.RTN_LOCAL)},
	}
}

// L4Proto matches the transport protocol.
type L4Proto struct{ Proto uint8 }

func (m L4Proto) AppendText(b []byte, _ *Family) []byte {
	return append(append(b, "meta l4proto "...), ProtoName(m.Proto)...)
}

func (m L4Proto) Exprs(*Family) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: Reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: Reg1, Data: []byte{m.Proto}},
	}
}

// MarkOp is one of the three operations of the masquerade protocol on the mark bit mark
// (Config.MasqMark: kube-proxy's 0x4000 unless configured).
type MarkOp struct {
	Op   MarkKind
	Mark uint32
}

type MarkKind uint8

const (
	MarkSet   MarkKind = iota // meta mark set meta mark or MARK
	MarkClear                 // meta mark set meta mark xor MARK (only after markUnset failed)
	MarkUnset                 // meta mark & MARK == 0
)

func (m MarkOp) AppendText(b []byte, _ *Family) []byte {
	hex := fmt.Sprintf("0x%08x", m.Mark)
	switch m.Op {
	case MarkSet:
		return append(b, "meta mark set meta mark or "+hex...)
	case MarkClear:
		return append(b, "meta mark set meta mark xor "+hex...)
	}
	return append(b, "meta mark & "+hex+" == 0x00000000"...)
}

func (m MarkOp) Exprs(*Family) []expr.Any {
	load := &expr.Meta{Key: expr.MetaKeyMARK, Register: Reg1}
	store := &expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: Reg1}
	switch m.Op {
	case MarkSet:
		return []expr.Any{load, &expr.Bitwise{SourceRegister: Reg1, DestRegister: Reg1, Len: 4,
			Mask: Native32(^m.Mark), Xor: Native32(m.Mark)}, store}
	case MarkClear:
		return []expr.Any{load, &expr.Bitwise{SourceRegister: Reg1, DestRegister: Reg1, Len: 4,
			Mask: Native32(0xffffffff), Xor: Native32(m.Mark)}, store}
	}
	return []expr.Any{load,
		&expr.Bitwise{SourceRegister: Reg1, DestRegister: Reg1, Len: 4, Mask: Native32(m.Mark), Xor: Native32(0)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: Reg1, Data: Native32(0)}}
}

// IifMatch matches the input interface by name, or by name prefix (iifname "veth*").
type IifMatch struct {
	Name   string
	Prefix bool
	Neg    bool
}

func (m IifMatch) AppendText(b []byte, _ *Family) []byte {
	b = append(b, "iifname "...)
	if m.Neg {
		b = append(b, "!= "...)
	}
	name := m.Name
	if m.Prefix {
		name += "*"
	}
	return strconv.AppendQuote(b, name)
}

func (m IifMatch) Exprs(*Family) []expr.Any {
	// As nft: a whole name is compared with its NUL padding to IFNAMSIZ, a prefix on its own
	// bytes only.
	data := []byte(m.Name)
	if !m.Prefix {
		data = append(data, make([]byte, 16-len(data))...)
	}
	op := expr.CmpOpEq
	if m.Neg {
		op = expr.CmpOpNeq
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: Reg1},
		&expr.Cmp{Op: op, Register: Reg1, Data: data},
	}
}

// LocalMatch matches traffic from pods (neg: traffic that is not) as the detector recognises
// it: by source CIDR or input interface. d must be implemented.
func LocalMatch(d proxier.LocalDetector, neg bool) Term {
	if d.CIDR.IsValid() {
		return AddrMatch{Src: true, Neg: neg, Prefix: d.CIDR}
	}
	return IifMatch{Name: d.Interface, Prefix: d.Prefix, Neg: neg}
}

// AppendText writes a verdict.
func (v Verdict) AppendText(b []byte, _ *Family) []byte {
	switch expr.VerdictKind(v.Code) {
	case expr.VerdictJump:
		return append(append(b, "jump "...), v.Chain...)
	case expr.VerdictGoto:
		return append(append(b, "goto "...), v.Chain...)
	case expr.VerdictDrop:
		return append(b, "drop"...)
	case expr.VerdictReturn:
		return append(b, "return"...)
	case expr.VerdictAccept:
		return append(b, "accept"...)
	}
	return append(b, "continue"...)
}

func (v Verdict) Exprs(*Family) []expr.Any {
	return []expr.Any{&expr.Verdict{Kind: expr.VerdictKind(v.Code), Chain: v.Chain}}
}

// Reject answers with a TCP reset (tcp) or ICMP port unreachable, so that clients fail at once.
type Reject struct{ TCPReset bool }

func (r Reject) AppendText(b []byte, _ *Family) []byte {
	if r.TCPReset {
		return append(b, "reject with tcp reset"...)
	}
	return append(b, "reject"...)
}

func (r Reject) Exprs(f *Family) []expr.Any {
	if r.TCPReset {
		return []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_TCP_RST}}
	}
	code := uint8(3) // ICMP_PORT_UNREACH
	if f.PF == proxier.IPv6 {
		code = 4 // ICMPV6_PORT_UNREACH
	}
	return []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: code}}
}

// Masquerade source-NATs to the outgoing interface's address with random ports.
type Masquerade struct{ FullyRandom bool }

func (m Masquerade) AppendText(b []byte, _ *Family) []byte {
	if m.FullyRandom {
		return append(b, "masquerade fully-random"...)
	}
	return append(b, "masquerade"...)
}
func (m Masquerade) Exprs(*Family) []expr.Any {
	return []expr.Any{&expr.Masq{FullyRandom: m.FullyRandom}}
}

// DNAT translates the destination to an endpoint.
type DNAT struct{ To netip.AddrPort }

func (d DNAT) AppendText(b []byte, f *Family) []byte {
	b = append(b, "dnat to "...)
	if f.PF == proxier.IPv6 {
		b = append(b, '[')
		b = d.To.Addr().AppendTo(b)
		b = append(b, ']')
	} else {
		b = d.To.Addr().AppendTo(b)
	}
	b = append(b, ':')
	return strconv.AppendUint(b, uint64(d.To.Port()), 10)
}

func (d DNAT) Exprs(f *Family) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: Reg1, Data: d.To.Addr().AsSlice()},
		&expr.Immediate{Register: Reg2, Data: binary.BigEndian.AppendUint16(nil, d.To.Port())},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(f.NFProto), RegAddrMin: Reg1, RegProtoMin: Reg2},
	}
}

// UpdateSource adds (or refreshes) the source address in a dynamic set: session affinity.
type UpdateSource struct{ Set string }

func (u UpdateSource) AppendText(b []byte, f *Family) []byte {
	b = append(b, "update @"...)
	b = append(b, u.Set...)
	b = append(b, " { "...)
	b = append(b, f.Name...)
	return append(b, " saddr }"...)
}

func (u UpdateSource) Exprs(f *Family) []expr.Any {
	return []expr.Any{
		LoadAddr(f, true, Reg1, f.AddrLen),
		&expr.Dynset{SrcRegKey: Reg1, SetName: u.Set, Operation: unix.NFT_DYNSET_OP_UPDATE},
	}
}

// NumgenZero matches with probability 1/mod: numgen random mod <mod> == 0. The chains of an
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
type NumgenZero struct{ Mod uint32 }

func (n NumgenZero) AppendText(b []byte, _ *Family) []byte {
	b = append(b, "numgen random mod "...)
	b = strconv.AppendUint(b, uint64(n.Mod), 10)
	return append(b, " 0"...)
}

func (n NumgenZero) Exprs(*Family) []expr.Any {
	return []expr.Any{
		&expr.Numgen{Register: Reg1, Modulus: n.Mod, Type: unix.NFT_NG_RANDOM},
		&expr.Cmp{Op: expr.CmpOpEq, Register: Reg1, Data: Native32(0)},
	}
}

// AppendRule writes one rule's terms separated by spaces.
func AppendRule(b []byte, f *Family, r Rule) []byte {
	for i, t := range r {
		if i > 0 {
			b = append(b, ' ')
		}
		b = t.AppendText(b, f)
	}
	return b
}

// Fingerprint is the text of a chain's rules: two chains program the same rules iff their
// fingerprints are equal.
func (c *Chain) Fingerprint(f *Family) string {
	var b []byte
	for _, r := range c.Rules {
		b = AppendRule(b, f, r)
		b = append(b, '\n')
	}
	return string(b)
}

// AppendKey writes an element's key in nft syntax.
func AppendKey(b []byte, kind SetKind, k Key) []byte {
	switch kind {
	case KeyAddr:
		return k.Addr.AppendTo(b)
	case KeyAddrAddr:
		b = k.Addr.AppendTo(b)
		b = append(b, " . "...)
		return k.Addr.AppendTo(b)
	case KeyAddrProtoPort, KeyAddrProtoPortSlot, KeyAddrProtoPortAddr:
		b = k.Addr.AppendTo(b)
		b = append(b, " . "...)
	}
	b = append(b, ProtoName(k.Proto)...)
	b = append(b, " . "...)
	b = strconv.AppendUint(b, uint64(k.Port), 10)
	switch kind {
	case KeyAddrProtoPortSlot, KeyProtoPortSlot:
		b = append(b, " . "...)
		b = strconv.AppendUint(b, uint64(k.Slot), 10)
	case KeyAddrProtoPortAddr:
		b = append(b, " . "...)
		b = k.Addr.AppendTo(b)
	}
	return b
}

// AppendEndpoint writes an endpoint map's value in nft syntax.
func AppendEndpoint(b []byte, to netip.AddrPort) []byte {
	b = to.Addr().AppendTo(b)
	b = append(b, " . "...)
	return strconv.AppendUint(b, uint64(to.Port()), 10)
}

// TypeText is the set's "type" clause ("typeof" for the endpoint maps, whose numgen field has
// no type name).
func (s *Set) TypeText(f *Family) string {
	if s.Endpoints {
		addr := ""
		if s.Kind == KeyAddrProtoPortSlot {
			addr = f.Name + " daddr . "
		}
		return "typeof " + addr + "meta l4proto . th dport . numgen random mod 1 : " + f.Name + " daddr . th dport"
	}
	var t string
	switch s.Kind {
	case KeyAddr:
		t = f.AddrType
	case KeyAddrAddr:
		t = f.AddrType + " . " + f.AddrType
	case KeyAddrProtoPort:
		t = f.AddrType + " . inet_proto . inet_service"
	case KeyProtoPort:
		t = "inet_proto . inet_service"
	case KeyAddrProtoPortAddr:
		t = f.AddrType + " . inet_proto . inet_service . " + f.AddrType
	}
	if s.IsMap {
		t += " : verdict"
	}
	return "type " + t
}

// AppendText writes the chain as nft -f syntax within a table block.
func (c *Chain) AppendText(b []byte, f *Family) []byte {
	b = append(b, "\tchain "+c.Name+" {\n"...)
	if h := c.Hook; h != nil {
		b = append(b, "\t\ttype "+h.Type+" hook "+HookNames[h.Hooknum]+" priority "...)
		b = strconv.AppendInt(b, int64(h.Priority), 10)
		b = append(b, "; policy accept;\n"...)
	}
	for _, r := range c.Rules {
		b = append(b, "\t\t"...)
		b = AppendRule(b, f, r)
		b = append(b, '\n')
	}
	return append(b, "\t}\n"...)
}

// Exprs is the rule as the kernel receives it: its terms' expressions in order.
func (r Rule) Exprs(f *Family) []expr.Any {
	var es []expr.Any
	for _, t := range r {
		es = append(es, t.Exprs(f)...)
	}
	return es
}
