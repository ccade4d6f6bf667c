package ipvs

import (
	"errors"
	"fmt"
	"net/netip"
	"os"

	gnft "github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"nodeagent/proxier"
	"nodeagent/proxier/nft"
)

// nftKernel programs the helper tables.
type nftKernel interface {
	// replace makes the kernel's table of t.fam exactly t, in one transaction.
	replace(t *nftTable) error
	// update applies ops to the kernel's table of t.fam (t is the table they lead to), in one
	// transaction.
	update(t *nftTable, ops *tableOps) error
	// remove deletes the table of family f; a missing table is not an error.
	remove(f *nft.Family) error
	// owned lists the virtual servers recorded in the kernel's table of f.
	owned(f *nft.Family) ([]vsKey, error)
	close()
}

// elemChunk bounds the elements per netlink message: the element list is one attribute, whose
// length is 16 bits.
const elemChunk = 400

// gnftKernel is nftKernel over google/nftables.
type gnftKernel struct {
	ns *os.File // nil: own namespace
}

func newGnftKernel(nsPath string) (*gnftKernel, error) {
	k := &gnftKernel{}
	if nsPath != "" {
		f, err := os.Open(nsPath)
		if err != nil {
			return nil, fmt.Errorf("open network namespace: %w", err)
		}
		k.ns = f
	}
	return k, nil
}

func (k *gnftKernel) close() {
	if k.ns != nil {
		k.ns.Close()
	}
}

// A whole table is one batch: one datagram, which must fit in the send buffer (the default
// 208 KiB held about 4,000 services), answered by an acknowledgement per message, which must fit
// in the receive buffer. The FORCE options pass net.core.[rw]mem_max with CAP_NET_ADMIN, which a
// proxy has; the kernel allocates only what the messages need.
const sendBuffer, receiveBuffer = 256 << 20, 64 << 20

func (k *gnftKernel) conn() (*gnft.Conn, error) {
	opts := []gnft.ConnOption{gnft.WithSockOptions(func(c *netlink.Conn) error {
		rc, err := c.SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = errors.Join(unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sendBuffer),
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, receiveBuffer))
		}); err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("netlink socket buffers: %w", serr)
		}
		return nil
	})}
	if k.ns != nil {
		opts = append(opts, gnft.WithNetNSFd(int(k.ns.Fd())))
	}
	return gnft.New(opts...)
}

func table(f *nft.Family) *gnft.Table {
	return &gnft.Table{Name: tableName, Family: gnft.TableFamily(f.NFProto)}
}

func (s *nftSet) gnft(t *gnft.Table, f *nft.Family) *gnft.Set {
	addr := gnft.TypeIPAddr
	if f.PF == proxier.IPv6 {
		addr = gnft.TypeIP6Addr
	}
	key := gnft.MustConcatSetType(addr, gnft.TypeInetProto, gnft.TypeInetService)
	if s.Kind == nft.KeyAddrProtoPortAddr {
		key = gnft.MustConcatSetType(addr, gnft.TypeInetProto, gnft.TypeInetService, addr)
	}
	gs := &gnft.Set{Table: t, Name: s.Name, KeyType: key, Concatenation: true, Comment: s.Comment}
	if s.IsMap {
		gs.IsMap = true
		gs.DataType = gnft.TypeVerdict
	}
	return gs
}

// element is one element of s (key, and the chain to go to when s is a verdict map).
func element(s *nftSet, key nft.Key, val string) gnft.SetElement {
	e := gnft.SetElement{Key: nft.AppendKeyBytes(nil, s.Kind, key)}
	if s.IsMap {
		e.VerdictData = &expr.Verdict{Kind: expr.VerdictGoto, Chain: val}
	}
	return e
}

// allElements are every element of s.
func allElements(s *nftSet) []gnft.SetElement {
	out := make([]gnft.SetElement, 0, len(s.elems))
	for k, v := range s.elems {
		out = append(out, element(s, k, v))
	}
	return out
}

func addElements(c *gnft.Conn, gs *gnft.Set, els []gnft.SetElement) error {
	for len(els) > 0 {
		n := min(len(els), elemChunk)
		if err := c.SetAddElements(gs, els[:n]); err != nil {
			return err
		}
		els = els[n:]
	}
	return nil
}

func delElements(c *gnft.Conn, gs *gnft.Set, els []gnft.SetElement) error {
	for len(els) > 0 {
		n := min(len(els), elemChunk)
		if err := c.SetDeleteElements(gs, els[:n]); err != nil {
			return err
		}
		els = els[n:]
	}
	return nil
}

// withSetIDs copies exprs, giving lookups the IDs of sets created in this transaction.
func withSetIDs(exprs []expr.Any, ids map[string]uint32) []expr.Any {
	out := make([]expr.Any, len(exprs))
	for i, e := range exprs {
		if l, ok := e.(*expr.Lookup); ok {
			c := *l
			c.SetID = ids[l.SetName]
			e = &c
		}
		out[i] = e
	}
	return out
}

// addChains adds chains, then their rules (a rule may jump to a chain added after its own).
func addChains(c *gnft.Conn, t *gnft.Table, f *nft.Family, chs []*nft.Chain, ids map[string]uint32) {
	gcs := make([]*gnft.Chain, len(chs))
	for i, ch := range chs {
		gc := &gnft.Chain{Name: ch.Name, Table: t}
		if h := ch.Hook; h != nil {
			prio := gnft.ChainPriority(h.Priority)
			policy := gnft.ChainPolicyAccept
			gc.Type, gc.Hooknum, gc.Priority, gc.Policy = gnft.ChainType(h.Type), gnft.ChainHookRef(gnft.ChainHook(h.Hooknum)), &prio, &policy
		}
		gcs[i] = c.AddChain(gc)
	}
	for i, ch := range chs {
		for _, r := range ch.Rules {
			c.AddRule(&gnft.Rule{Table: t, Chain: gcs[i], Exprs: withSetIDs(r.Exprs(f), ids)})
		}
	}
}

func (k *gnftKernel) replace(t *nftTable) error {
	c, err := k.conn()
	if err != nil {
		return err
	}
	tbl := table(t.fam)
	// Adding first makes the delete valid whether or not the table exists.
	c.AddTable(tbl)
	c.DelTable(tbl)
	c.AddTable(tbl)
	ids := map[string]uint32{}
	gsets := map[string]*gnft.Set{}
	for _, s := range t.sets {
		gs := s.gnft(tbl, t.fam)
		if err := c.AddSet(gs, nil); err != nil {
			return fmt.Errorf("set %s: %w", s.Name, err)
		}
		ids[s.Name] = gs.ID
		gsets[s.Name] = gs
	}
	addChains(c, tbl, t.fam, t.chains, ids)
	for _, s := range t.sets {
		if err := addElements(c, gsets[s.Name], allElements(s)); err != nil {
			return fmt.Errorf("set %s: %w", s.Name, err)
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("replace table %s %s: %w", t.fam.Name, tableName, err)
	}
	return nil
}

func (k *gnftKernel) update(t *nftTable, ops *tableOps) error {
	c, err := k.conn()
	if err != nil {
		return err
	}
	tbl := table(t.fam)
	// Elements first go (vmap elements may point at chains deleted below), new chains come
	// before the elements that point at them.
	for _, s := range t.sets {
		if els := ops.del[s.Name]; len(els) > 0 {
			if err := delElements(c, s.gnft(tbl, t.fam), opElements(s, els)); err != nil {
				return err
			}
		}
	}
	addChains(c, tbl, t.fam, ops.newChains, nil)
	for _, ch := range ops.rewritten {
		gc := &gnft.Chain{Name: ch.Name, Table: tbl}
		c.FlushChain(gc)
		for _, r := range ch.Rules {
			c.AddRule(&gnft.Rule{Table: tbl, Chain: gc, Exprs: r.Exprs(t.fam)})
		}
	}
	for _, s := range t.sets {
		if els := ops.add[s.Name]; len(els) > 0 {
			if err := addElements(c, s.gnft(tbl, t.fam), opElements(s, els)); err != nil {
				return err
			}
		}
	}
	for _, name := range ops.gone {
		c.DelChain(&gnft.Chain{Name: name, Table: tbl})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("update table %s %s: %w", t.fam.Name, tableName, err)
	}
	return nil
}

// opElements are els as netlink elements of s.
func opElements(s *nftSet, els []tableElem) []gnft.SetElement {
	out := make([]gnft.SetElement, 0, len(els))
	for _, e := range els {
		out = append(out, element(s, e.key, e.val))
	}
	return out
}

func (k *gnftKernel) remove(f *nft.Family) error {
	c, err := k.conn()
	if err != nil {
		return err
	}
	tbl := table(f)
	c.AddTable(tbl)
	c.DelTable(tbl)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("delete table %s %s: %w", f.Name, tableName, err)
	}
	return nil
}

func (k *gnftKernel) owned(f *nft.Family) ([]vsKey, error) {
	c, err := k.conn()
	if err != nil {
		return nil, err
	}
	gs, err := c.GetSetByName(table(f), setVirtualServers)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, nil
		}
		return nil, fmt.Errorf("read set %s: %w", setVirtualServers, err)
	}
	els, err := c.GetSetElements(gs)
	if err != nil {
		return nil, fmt.Errorf("read set %s: %w", setVirtualServers, err)
	}
	var out []vsKey
	for _, e := range els {
		b := e.Key
		if len(b) != int(f.AddrLen)+8 {
			continue
		}
		a, _ := netip.AddrFromSlice(b[:f.AddrLen])
		b = b[f.AddrLen:]
		out = append(out, vsKey{Addr: a.Unmap(), Proto: b[0], Port: uint16(b[4])<<8 | uint16(b[5])})
	}
	return out, nil
}
