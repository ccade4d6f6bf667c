package nftables

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"nodeagent/proxier/nft"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// batch encodes one nftables transaction straight into a netlink buffer. google/nftables' Conn
// asks the kernel to acknowledge (and echo) every message and reads the answers one syscall
// each, which costs more than the kernel's own work for a ruleset of 100,000 objects; here only
// the last message asks for an acknowledgement, the kernel reports the failing ones, and the
// whole transaction is a single sendmsg. Expressions are still encoded by google/nftables' expr.
type batch struct {
	buf   []byte
	seq   uint32
	first uint32 // seq of the first message after BATCH_BEGIN
	msgs  int
	last  int // offset of the last message header, to set NLM_F_ACK on it
	what  []op
	err   error
	setID uint32
	exprs [][]byte // scratch
	stale int      // answers to other batches skipped while waiting for this one's
}

// op describes a message for error reports; kept cheap (no formatting until an error happens).
type op struct {
	kind uint16
	name string
}

// Counts of what a batch writes, for tests and logs.
type batchCounts struct {
	chainsAdded, chainsFlushed, chainsDeleted int
	rules, elemsAdded, elemsDeleted           int
	setsAdded, setsDeleted                    int
}

const nlaHdrLen = 4

func newBatch(seq uint32) *batch {
	b := &batch{seq: seq, buf: make([]byte, 0, 64<<10)}
	b.begin(unix.NFNL_MSG_BATCH_BEGIN, unix.NLM_F_REQUEST, unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES, op{})
	b.end(0)
	b.first = b.seq + 1
	b.msgs = 0
	b.what = b.what[:0]
	return b
}

// begin starts a message and returns its offset.
func (b *batch) begin(typ uint16, flags uint16, fam byte, resID uint16, what op) int {
	b.seq++
	start := len(b.buf)
	b.buf = binary.NativeEndian.AppendUint32(b.buf, 0) // length, patched in end
	b.buf = binary.NativeEndian.AppendUint16(b.buf, typ)
	b.buf = binary.NativeEndian.AppendUint16(b.buf, flags)
	b.buf = binary.NativeEndian.AppendUint32(b.buf, b.seq)
	b.buf = binary.NativeEndian.AppendUint32(b.buf, 0) // port id: kernel
	b.buf = append(b.buf, fam, unix.NFNETLINK_V0)
	b.buf = binary.BigEndian.AppendUint16(b.buf, resID)
	b.msgs++
	b.what = append(b.what, what)
	return start
}

func (b *batch) end(start int) {
	binary.NativeEndian.PutUint32(b.buf[start:], uint32(len(b.buf)-start))
	b.last = start
}

func (b *batch) nftMsg(msg uint16, flags uint16, fam byte, name string) int {
	return b.begin(unix.NFNL_SUBSYS_NFTABLES<<8|msg, unix.NLM_F_REQUEST|flags, fam, 0, op{kind: msg, name: name})
}

func (b *batch) attr(typ uint16, data []byte) {
	b.buf = binary.NativeEndian.AppendUint16(b.buf, uint16(nlaHdrLen+len(data)))
	b.buf = binary.NativeEndian.AppendUint16(b.buf, typ)
	b.buf = append(b.buf, data...)
	b.pad()
}

func (b *batch) pad() {
	for len(b.buf)%4 != 0 {
		b.buf = append(b.buf, 0)
	}
}

func (b *batch) attrString(typ uint16, s string) {
	b.buf = binary.NativeEndian.AppendUint16(b.buf, uint16(nlaHdrLen+len(s)+1))
	b.buf = binary.NativeEndian.AppendUint16(b.buf, typ)
	b.buf = append(b.buf, s...)
	b.buf = append(b.buf, 0)
	b.pad()
}

func (b *batch) attrU32(typ uint16, v uint32) { b.attr(typ, binary.BigEndian.AppendUint32(nil, v)) }
func (b *batch) attrU64(typ uint16, v uint64) { b.attr(typ, binary.BigEndian.AppendUint64(nil, v)) }

func (b *batch) nest(typ uint16) int {
	start := len(b.buf)
	b.buf = binary.NativeEndian.AppendUint16(b.buf, 0)
	b.buf = binary.NativeEndian.AppendUint16(b.buf, typ|unix.NLA_F_NESTED)
	return start
}

func (b *batch) endNest(start int) {
	n := len(b.buf) - start
	if n > 0xffff {
		b.setErr(fmt.Errorf("netlink attribute of %d bytes exceeds 64 KiB", n))
	}
	binary.NativeEndian.PutUint16(b.buf[start:], uint16(n))
}

func (b *batch) setErr(err error) {
	if b.err == nil {
		b.err = err
	}
}

func (b *batch) addTable(f *nft.Family) {
	m := b.nftMsg(unix.NFT_MSG_NEWTABLE, unix.NLM_F_CREATE, f.NFProto, tableName)
	b.attrString(unix.NFTA_TABLE_NAME, tableName)
	b.end(m)
}

func (b *batch) delTable(f *nft.Family) {
	m := b.nftMsg(unix.NFT_MSG_DELTABLE, 0, f.NFProto, tableName)
	b.attrString(unix.NFTA_TABLE_NAME, tableName)
	b.end(m)
}

func (b *batch) addChain(f *nft.Family, c *nft.Chain) {
	m := b.nftMsg(unix.NFT_MSG_NEWCHAIN, unix.NLM_F_CREATE, f.NFProto, c.Name)
	b.attrString(unix.NFTA_CHAIN_TABLE, tableName)
	b.attrString(unix.NFTA_CHAIN_NAME, c.Name)
	if h := c.Hook; h != nil {
		n := b.nest(unix.NFTA_CHAIN_HOOK)
		b.attrU32(unix.NFTA_HOOK_HOOKNUM, h.Hooknum)
		b.attrU32(unix.NFTA_HOOK_PRIORITY, uint32(h.Priority))
		b.endNest(n)
		b.attrU32(unix.NFTA_CHAIN_POLICY, nfAccept)
		b.attrString(unix.NFTA_CHAIN_TYPE, h.Type)
	}
	b.end(m)
}

// flushChain deletes every rule of a chain.
func (b *batch) flushChain(f *nft.Family, name string) {
	m := b.nftMsg(unix.NFT_MSG_DELRULE, 0, f.NFProto, name)
	b.attrString(unix.NFTA_RULE_TABLE, tableName)
	b.attrString(unix.NFTA_RULE_CHAIN, name)
	b.end(m)
}

func (b *batch) delChain(f *nft.Family, name string) {
	m := b.nftMsg(unix.NFT_MSG_DELCHAIN, 0, f.NFProto, name)
	b.attrString(unix.NFTA_CHAIN_TABLE, tableName)
	b.attrString(unix.NFTA_CHAIN_NAME, name)
	b.end(m)
}

// addRule appends r to the chain.
func (b *batch) addRule(f *nft.Family, chainName string, r nft.Rule) {
	var es []expr.Any
	for _, t := range r {
		es = append(es, t.Exprs(f)...)
	}
	m := b.nftMsg(unix.NFT_MSG_NEWRULE, unix.NLM_F_CREATE|unix.NLM_F_APPEND, f.NFProto, chainName)
	b.attrString(unix.NFTA_RULE_TABLE, tableName)
	b.attrString(unix.NFTA_RULE_CHAIN, chainName)
	list := b.nest(unix.NFTA_RULE_EXPRESSIONS)
	for _, e := range es {
		data, err := expr.Marshal(f.NFProto, e)
		if err != nil {
			b.setErr(fmt.Errorf("encode rule in chain %s: %w", chainName, err))
			return
		}
		b.attr(unix.NFTA_LIST_ELEM|unix.NLA_F_NESTED, data)
	}
	b.endNest(list)
	b.end(m)
}

// Set encodings.
const (
	byteOrderBig  = 2
	elemListLimit = 60000 // start a new message once an element list is this long

	// Kernel constants golang.org/x/sys/unix does not export.
	nfAccept          = 1    // NF_ACCEPT
	nftSetConcat      = 0x80 // NFT_SET_CONCAT
	nftaSetDescConcat = 2    // NFTA_SET_DESC_CONCAT
	nftaSetFieldLen   = 1    // NFTA_SET_FIELD_LEN
)

// endpointUdata is what nft stores in an endpoint map's user data for its typeof clause
// ("typeof [ip daddr .] meta l4proto . th dport . numgen random mod 1 : ip daddr . th dport"),
// byte for byte as nft 1.0.6 writes it: nft needs it to list the map (the numgen field has no
// type of its own) and the golden comparison with nft's own rendering needs it equal.
var endpointUdata = map[nft.SetKind]map[byte]string{
	nft.KeyAddrProtoPortSlot: {
		unix.NFPROTO_IPV4: "000400000000010400000000036000040d00000001580014000407000000010c00040c00000001040c000000010e00040900000001060004100000000214000407000000010c00040b000000010402000000031a0004170000000112000401000000010401000000020400000000043400040d000000012c0014000407000000010c00040c00000001040c0000000114000407000000010c00040b000000010402000000060400000000",
		unix.NFPROTO_IPV6: "000400000000010400000000036000040d00000001580014000407000000010c00040d000000010409000000010e00040900000001060004100000000214000407000000010c00040b000000010402000000031a0004170000000112000401000000010401000000020400000000043400040d000000012c0014000407000000010c00040d0000000104090000000114000407000000010c00040b000000010402000000060400000000",
	},
	nft.KeyProtoPortSlot: {
		unix.NFPROTO_IPV4: "000400000000010400000000034a00040d0000000142000e00040900000001060004100000000114000407000000010c00040b000000010402000000021a0004170000000112000401000000010401000000020400000000043400040d000000012c0014000407000000010c00040c00000001040c0000000114000407000000010c00040b000000010402000000060400000000",
		unix.NFPROTO_IPV6: "000400000000010400000000034a00040d0000000142000e00040900000001060004100000000114000407000000010c00040b000000010402000000021a0004170000000112000401000000010401000000020400000000043400040d000000012c0014000407000000010c00040d0000000104090000000114000407000000010c00040b000000010402000000060400000000",
	},
}

func (b *batch) addSet(f *nft.Family, s *nft.Set) {
	types, lens := nft.KeyLayout(f, s.Kind)
	var typ, keyLen uint32
	for i := range types {
		typ = typ<<nft.ConcatBits | types[i]
		keyLen += (lens[i] + 3) &^ 3
	}
	if len(types) == 1 {
		keyLen = lens[0]
	}
	var flags uint32
	if s.IsMap || s.Endpoints {
		flags |= unix.NFT_SET_MAP
	}
	if len(types) > 1 {
		flags |= nftSetConcat
	}
	if s.Timeout > 0 {
		flags |= unix.NFT_SET_TIMEOUT | unix.NFT_SET_EVAL
	}
	b.setID++
	m := b.nftMsg(unix.NFT_MSG_NEWSET, unix.NLM_F_CREATE, f.NFProto, s.Name)
	b.attrString(unix.NFTA_SET_TABLE, tableName)
	b.attrString(unix.NFTA_SET_NAME, s.Name)
	b.attrU32(unix.NFTA_SET_FLAGS, flags)
	b.attrU32(unix.NFTA_SET_KEY_TYPE, typ)
	b.attrU32(unix.NFTA_SET_KEY_LEN, keyLen)
	if s.IsMap {
		b.attrU32(unix.NFTA_SET_DATA_TYPE, unix.NFT_DATA_VERDICT)
	}
	if s.Endpoints {
		b.attrU32(unix.NFTA_SET_DATA_TYPE, f.AddrTypeNum()<<nft.ConcatBits|nft.TypeInetService)
		b.attrU32(unix.NFTA_SET_DATA_LEN, f.AddrLen+4)
	}
	b.attrU32(unix.NFTA_SET_ID, b.setID)
	if s.Timeout > 0 {
		b.attrU64(unix.NFTA_SET_TIMEOUT, uint64(s.Timeout.Milliseconds()))
	}
	if len(types) > 1 {
		desc := b.nest(unix.NFTA_SET_DESC)
		concat := b.nest(nftaSetDescConcat)
		for _, l := range lens {
			field := b.nest(unix.NFTA_LIST_ELEM)
			b.attrU32(nftaSetFieldLen, l)
			b.endNest(field)
		}
		b.endNest(concat)
		b.endNest(desc)
	}
	udata := userdata.AppendUint32(nil, userdata.NFTNL_UDATA_SET_KEYBYTEORDER, byteOrderBig)
	if s.Endpoints {
		udata, _ = hex.DecodeString(endpointUdata[s.Kind][f.NFProto])
	}
	if s.Comment != "" {
		udata = userdata.AppendString(udata, userdata.NFTNL_UDATA_SET_COMMENT, s.Comment)
	}
	b.attr(unix.NFTA_SET_USERDATA, udata)
	b.end(m)
}

func (b *batch) delSet(f *nft.Family, name string) {
	m := b.nftMsg(unix.NFT_MSG_DELSET, 0, f.NFProto, name)
	b.attrString(unix.NFTA_SET_TABLE, tableName)
	b.attrString(unix.NFTA_SET_NAME, name)
	b.end(m)
}

func (b *batch) verdictData(v nft.Verdict) {
	d := b.nest(unix.NFTA_SET_ELEM_DATA)
	vd := b.nest(unix.NFTA_DATA_VERDICT)
	b.attrU32(unix.NFTA_VERDICT_CODE, uint32(v.Code))
	if v.Chain != "" {
		b.attrString(unix.NFTA_VERDICT_CHAIN, v.Chain)
	}
	b.endNest(vd)
	b.endNest(d)
}

// endpointData is an endpoint map's value: address, then port in network order padded to 4.
func (b *batch) endpointData(to netip.AddrPort) {
	d := b.nest(unix.NFTA_SET_ELEM_DATA)
	var buf [20]byte
	v := nft.AppendAddr(buf[:0], to.Addr())
	v = binary.BigEndian.AppendUint16(v, to.Port())
	b.attr(unix.NFTA_DATA_VALUE, append(v, 0, 0))
	b.endNest(d)
}

// elements adds (del false) or deletes (del true) n elements of one named set or map, element
// i being at(i). An element list is one netlink attribute, limited to 64 KiB, so long lists
// take several messages.
func (b *batch) elements(f *nft.Family, s *nft.Set, n int, at func(i int) element, del bool) {
	msg := uint16(unix.NFT_MSG_NEWSETELEM)
	var flags uint16 = unix.NLM_F_CREATE
	if del {
		msg, flags = unix.NFT_MSG_DELSETELEM, 0
	}
	var key []byte
	m, list := -1, 0
	// Room for all of them at once (an endpoint map's element is about 56 bytes), rather than
	// growing a buffer of many megabytes step by step.
	b.buf = slices.Grow(b.buf, n*60+n/600*64)
	for i := range n {
		el := at(i)
		if m < 0 {
			m = b.nftMsg(msg, flags, f.NFProto, s.Name)
			b.attrString(unix.NFTA_SET_ELEM_LIST_TABLE, tableName)
			b.attrString(unix.NFTA_SET_ELEM_LIST_SET, s.Name)
			list = b.nest(unix.NFTA_SET_ELEM_LIST_ELEMENTS)
		}
		e := b.nest(unix.NFTA_LIST_ELEM)
		k := b.nest(unix.NFTA_SET_ELEM_KEY)
		key = nft.AppendKeyBytes(key[:0], s.Kind, el.key)
		b.attr(unix.NFTA_DATA_VALUE, key)
		b.endNest(k)
		if s.IsMap && !del {
			b.verdictData(el.val)
		}
		if s.Endpoints && !del {
			b.endpointData(el.to)
		}
		b.endNest(e)
		if len(b.buf)-list > elemListLimit {
			b.endNest(list)
			b.end(m)
			m = -1
		}
	}
	if m >= 0 {
		b.endNest(list)
		b.end(m)
	}
}

// bytes closes the batch (BATCH_END) and returns the wire form; the last message asks for an
// acknowledgement so that the sender knows when the kernel is done.
func (b *batch) bytes() []byte {
	if b.msgs > 0 {
		flags := binary.NativeEndian.Uint16(b.buf[b.last+6:])
		binary.NativeEndian.PutUint16(b.buf[b.last+6:], flags|unix.NLM_F_ACK)
	}
	lastSeq := b.seq
	m := b.begin(unix.NFNL_MSG_BATCH_END, unix.NLM_F_REQUEST, unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES, op{})
	b.end(m)
	b.msgs--
	b.what = b.what[:len(b.what)-1]
	b.seq = lastSeq // BATCH_END's seq is never answered
	return b.buf
}

// describe names the message with sequence number seq for an error report.
func (b *batch) describe(seq uint32) string {
	if seq == b.first-1 {
		return "batch"
	}
	i := int(seq - b.first)
	if !b.owns(seq) || i >= len(b.what) {
		return fmt.Sprintf("message %d", seq)
	}
	w := b.what[i]
	names := map[uint16]string{
		unix.NFT_MSG_NEWTABLE: "add table", unix.NFT_MSG_DELTABLE: "delete table",
		unix.NFT_MSG_NEWCHAIN: "add chain", unix.NFT_MSG_DELCHAIN: "delete chain",
		unix.NFT_MSG_NEWRULE: "add rule to chain", unix.NFT_MSG_DELRULE: "flush chain",
		unix.NFT_MSG_NEWSET: "add set", unix.NFT_MSG_DELSET: "delete set",
		unix.NFT_MSG_NEWSETELEM: "add elements to", unix.NFT_MSG_DELSETELEM: "delete elements from",
	}
	return names[w.kind] + " " + w.name
}

// socket is a netlink socket of the netfilter family, in the target network namespace.
type socket struct {
	conn   *netlink.Conn
	sndbuf int
	seq    uint32
	rbuf   []byte
}

func openSocket(netnsFd int) (*socket, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: netnsFd})
	if err != nil {
		return nil, fmt.Errorf("open netfilter netlink socket: %w", err)
	}
	s := &socket{conn: c, seq: uint32(time.Now().Unix()), rbuf: make([]byte, 1<<16)}
	// Errors carry only the failing message's header, not the whole (possibly huge) message.
	if err := s.setsockopt(unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1); err != nil {
		c.Close()
		return nil, err
	}
	_ = s.setsockopt(unix.SOL_NETLINK, unix.NETLINK_EXT_ACK, 1)
	return s, nil
}

func (s *socket) setsockopt(level, opt, v int) error {
	rc, err := s.conn.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), level, opt, v) }); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("setsockopt %d: %w", opt, serr)
	}
	return nil
}

func (s *socket) close() error { return s.conn.Close() }

// send transmits a closed batch in one sendmsg and waits for the kernel's verdict on it: nil
// when the whole transaction was committed, else the errors of the failing messages.
func (s *socket) send(b *batch) error {
	if b.err != nil {
		return b.err
	}
	if b.msgs == 0 {
		return nil
	}
	wire := b.bytes()
	// A batch is one datagram and must fit in the send buffer; SO_SNDBUFFORCE needs
	// CAP_NET_ADMIN, which a proxy has anyway.
	if need := len(wire) + 4096; need > s.sndbuf {
		if err := s.setsockopt(unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, need); err != nil {
			return err
		}
		s.sndbuf = need
	}
	rc, err := s.conn.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	werr := rc.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), wire, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		return !errors.Is(serr, unix.EAGAIN)
	})
	if werr == nil {
		werr = serr
	}
	if werr != nil {
		return fmt.Errorf("send nftables batch of %d messages (%d bytes): %w", b.msgs, len(wire), werr)
	}
	return s.await(b)
}

// await reads answers until the last message's acknowledgement or error. The kernel processes
// the batch inside sendmsg, so every error is already queued in order before that answer.
// Answers to other batches (left unread by an earlier failed or timed-out await) are skipped by
// their sequence numbers rather than blamed on this one.
func (s *socket) await(b *batch) error {
	_ = s.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	defer s.conn.SetReadDeadline(time.Time{})
	rc, err := s.conn.SyscallConn()
	if err != nil {
		return err
	}
	var errs []error
	for {
		var n int
		var rerr error
		if err := rc.Read(func(fd uintptr) bool {
			n, _, rerr = unix.Recvfrom(int(fd), s.rbuf, 0)
			return !errors.Is(rerr, unix.EAGAIN)
		}); err != nil {
			return fmt.Errorf("read nftables answer: %w", err)
		}
		if rerr != nil {
			if errors.Is(rerr, unix.ENOBUFS) {
				// Too many error answers to queue: the transaction failed anyway.
				errs = append(errs, fmt.Errorf("answers overflowed: %w", rerr))
				return errors.Join(errs...)
			}
			return fmt.Errorf("read nftables answer: %w", rerr)
		}
		done, err := b.answers(s.rbuf[:n], &errs)
		if err != nil {
			return errors.Join(append(errs, err)...)
		}
		if done {
			return errors.Join(errs...)
		}
	}
}

// Extended acknowledgement (NETLINK_EXT_ACK) details golang.org/x/sys/unix does not export.
const (
	nlmFCapped      = 0x100 // NLM_F_CAPPED: the error carries only the failing message's header
	nlmFAckTLVs     = 0x200 // NLM_F_ACK_TLVS: attributes follow the error
	nlmsgerrAttrMsg = 1     // NLMSGERR_ATTR_MSG: the kernel's message, a string
	nlmsgerrLen     = 4 + unix.SizeofNlMsghdr
	maxExtackMsg    = 256
)

// owns reports whether seq belongs to this batch: BATCH_BEGIN (first-1) up to its last message.
// Sequence numbers wrap, hence the unsigned differences.
func (b *batch) owns(seq uint32) bool {
	return seq-(b.first-1) <= b.seq-(b.first-1)
}

// answers parses one datagram of the kernel's answers to b: it appends the errors of b's
// failing messages to errs, and reports done once the answer that ends the batch is in (the
// acknowledgement or error of the last message, or an error about BATCH_BEGIN, which the
// kernel sends when it refuses the batch as a whole). Answers with another batch's sequence
// number are skipped and counted in b.stale. A malformed datagram is an error.
func (b *batch) answers(buf []byte, errs *[]error) (done bool, err error) {
	for len(buf) > 0 {
		if len(buf) < unix.SizeofNlMsghdr {
			return done, fmt.Errorf("malformed nftables answer: %d trailing bytes", len(buf))
		}
		l := int(binary.NativeEndian.Uint32(buf[0:4]))
		typ := binary.NativeEndian.Uint16(buf[4:6])
		flags := binary.NativeEndian.Uint16(buf[6:8])
		seq := binary.NativeEndian.Uint32(buf[8:12])
		if l < unix.SizeofNlMsghdr || l > len(buf) {
			return done, fmt.Errorf("malformed nftables answer: message length %d of %d bytes", l, len(buf))
		}
		msg := buf[unix.SizeofNlMsghdr:l]
		buf = buf[min(len(buf), (l+unix.NLMSG_ALIGNTO-1)&^(unix.NLMSG_ALIGNTO-1)):]
		if typ != unix.NLMSG_ERROR {
			continue
		}
		if len(msg) < nlmsgerrLen {
			return done, fmt.Errorf("malformed nftables answer: error of %d bytes", len(msg))
		}
		code := int32(binary.NativeEndian.Uint32(msg[0:4]))
		if inner := binary.NativeEndian.Uint32(msg[4+8:]); inner != seq || !b.owns(seq) {
			b.stale++
			continue
		}
		if code > 0 {
			return done, fmt.Errorf("malformed nftables answer: error code %d", code)
		}
		if code != 0 {
			err := fmt.Errorf("%s: %w", b.describe(seq), os.NewSyscallError("nftables", syscall.Errno(-code)))
			if m := extackMessage(msg, flags); m != "" {
				err = fmt.Errorf("%w (%s)", err, m)
			}
			*errs = append(*errs, err)
		}
		if seq == b.seq || seq == b.first-1 {
			done = true
		}
	}
	return done, nil
}

// extackMessage returns the kernel's explanation attached to an error answer (msg is the
// payload after the netlink header), or "".
func extackMessage(msg []byte, flags uint16) string {
	if flags&nlmFAckTLVs == 0 {
		return ""
	}
	off := nlmsgerrLen
	if flags&nlmFCapped == 0 {
		// The failing message is echoed whole: skip it.
		inner := int(binary.NativeEndian.Uint32(msg[4:8]))
		if inner < unix.SizeofNlMsghdr || 4+inner > len(msg) {
			return ""
		}
		off = 4 + (inner+3)&^3
	}
	for attrs := msg[min(off, len(msg)):]; len(attrs) >= nlaHdrLen; {
		l := int(binary.NativeEndian.Uint16(attrs[0:2]))
		typ := binary.NativeEndian.Uint16(attrs[2:4]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
		if l < nlaHdrLen || l > len(attrs) {
			return ""
		}
		if typ == nlmsgerrAttrMsg {
			v := attrs[nlaHdrLen:l]
			if i := bytes.IndexByte(v, 0); i >= 0 {
				v = v[:i]
			}
			if len(v) > maxExtackMsg {
				v = v[:maxExtackMsg]
			}
			return strings.ToValidUTF8(string(v), "?")
		}
		attrs = attrs[min(len(attrs), (l+3)&^3):]
	}
	return ""
}

var _ tx = (*batch)(nil)

func (b *batch) size() (msgs, bytes int) { return b.msgs, len(b.buf) }
