package ipvs

import (
	"net/netip"
	"slices"

	"k8s.io/apimachinery/pkg/types"

	"nodeagent/proxier"
	"nodeagent/proxier/nft"
)

// A partial sync patches the previous desired state instead of building it again: each
// service's contribution (its virtual servers, addresses and helper-table elements and chains)
// is taken out and the new one put in, so one change costs what that service has, not what
// every service has. Shared things are counted: an address by its virtual servers, a set element
// by the services that put it in.

// contribution is what one service (all its ports, both families) put into a desired state.
type contribution struct {
	vs     []vsKey
	elems  []tableElem
	chains []famChain
}

// elemRef names one element of one family's helper table.
type elemRef struct {
	pf  proxier.Family
	set string
	key nft.Key
}

type tableElem struct {
	elemRef
	val string
}

type famChain struct {
	pf    proxier.Family
	chain *nft.Chain
}

// priorElem is an element as the kernel had it before a patch.
type priorElem struct {
	had bool
	val string
}

// tableOps turn the kernel's table of one family from what it was into what a patch made of
// it, in the order update applies them.
type tableOps struct {
	del, add  map[string][]tableElem // by set
	newChains []*nft.Chain
	rewritten []*nft.Chain // existing chains whose rules changed
	gone      []string     // chains deleted
}

func (o *tableOps) empty() bool {
	return len(o.del) == 0 && len(o.add) == 0 && len(o.newChains) == 0 && len(o.rewritten) == 0 && len(o.gone) == 0
}

func newTableOps() *tableOps {
	return &tableOps{del: map[string][]tableElem{}, add: map[string][]tableElem{}}
}

// patchLog records, during a patch, what the kernel had of everything the patch touches.
type patchLog struct {
	elems  map[elemRef]priorElem
	chains map[famChainName]*nft.Chain // nil: there was none
}

type famChainName struct {
	pf   proxier.Family
	name string
}

// addElem puts one element in for c.
func (d *desired) addElem(c *contribution, pf proxier.Family, set string, key nft.Key, val string) {
	e := tableElem{elemRef{pf, set, key}, val}
	c.elems = append(c.elems, e)
	d.touchElem(e.elemRef)
	d.refs[e.elemRef]++
	d.tables[pf].set(set).elems[key] = val
}

// addChain puts a service's chain (a firewall) in for c.
func (d *desired) addChain(c *contribution, pf proxier.Family, ch *nft.Chain) {
	c.chains = append(c.chains, famChain{pf, ch})
	t := d.tables[pf]
	if d.log == nil { // building from scratch: names are unique
		t.chains = append(t.chains, ch)
		return
	}
	d.touchChain(pf, ch.Name)
	if i := slices.IndexFunc(t.chains, func(o *nft.Chain) bool { return o.Name == ch.Name }); i >= 0 {
		t.chains[i] = ch
		return
	}
	t.chains = append(t.chains, ch)
}

func (d *desired) touchElem(r elemRef) {
	if d.log == nil {
		return
	}
	if _, seen := d.log.elems[r]; !seen {
		v, had := d.tables[r.pf].set(r.set).elems[r.key]
		d.log.elems[r] = priorElem{had, v}
	}
}

func (d *desired) touchChain(pf proxier.Family, name string) {
	if d.log == nil {
		return
	}
	k := famChainName{pf, name}
	if _, seen := d.log.chains[k]; !seen {
		d.log.chains[k] = d.tables[pf].chain(name)
	}
}

// remove takes out what service n put in. The ownership record of its virtual servers stays:
// they exist until retired, and the sync's finish forgets them then.
func (d *desired) remove(n types.NamespacedName) {
	c := d.contrib[n]
	if c == nil {
		return
	}
	delete(d.contrib, n)
	delete(d.bySvc, n)
	for _, k := range c.vs {
		vs := d.vs[k]
		delete(d.vs, k)
		d.removed = append(d.removed, k)
		if vs.kind != kindNodePort {
			if d.bind[k.Addr]--; d.bind[k.Addr] <= 0 {
				delete(d.bind, k.Addr)
			}
		}
	}
	for _, e := range c.elems {
		d.touchElem(e.elemRef)
		if d.refs[e.elemRef]--; d.refs[e.elemRef] > 0 {
			continue
		}
		delete(d.refs, e.elemRef)
		if e.set != setVirtualServers {
			delete(d.tables[e.pf].set(e.set).elems, e.key)
		}
	}
	for _, fc := range c.chains {
		d.touchChain(fc.pf, fc.chain.Name)
		t := d.tables[fc.pf]
		t.chains = slices.DeleteFunc(t.chains, func(o *nft.Chain) bool { return o == fc.chain })
	}
}

// patch brings d from the state it was built or patched for to st, for the changed services
// only. It returns the table operations per family, and false when it cannot patch (two
// services ask for one virtual server: who gets it depends on every service): d is then
// unusable, and the caller builds from scratch.
func (d *desired) patch(st *proxier.State, changed map[types.NamespacedName]bool) (map[proxier.Family]*tableOps, bool) {
	if d.clashes > 0 {
		return nil, false
	}
	d.log = &patchLog{elems: map[elemRef]priorElem{}, chains: map[famChainName]*nft.Chain{}}
	defer func() { d.log = nil }()
	for n := range changed {
		d.remove(n)
	}
	for n := range changed {
		for _, sp := range st.PortsOfService(n) {
			if d.tables[sp.Name.Family] != nil {
				d.addService(sp)
			}
		}
	}
	if d.clashes > 0 {
		return nil, false
	}
	ops := map[proxier.Family]*tableOps{}
	opsOf := func(pf proxier.Family) *tableOps {
		if ops[pf] == nil {
			ops[pf] = newTableOps()
		}
		return ops[pf]
	}
	for r, was := range d.log.elems {
		v, has := d.tables[r.pf].set(r.set).elems[r.key]
		if was.had && (!has || v != was.val) {
			o := opsOf(r.pf)
			o.del[r.set] = append(o.del[r.set], tableElem{r, was.val})
		}
		if has && (!was.had || v != was.val) {
			o := opsOf(r.pf)
			o.add[r.set] = append(o.add[r.set], tableElem{r, v})
		}
	}
	for k, was := range d.log.chains {
		now := d.tables[k.pf].chain(k.name)
		switch {
		case was == nil && now != nil:
			opsOf(k.pf).newChains = append(opsOf(k.pf).newChains, now)
		case was != nil && now == nil:
			opsOf(k.pf).gone = append(opsOf(k.pf).gone, k.name)
		case was != nil && string(was.AppendText(nil, d.tables[k.pf].fam)) != string(now.AppendText(nil, d.tables[k.pf].fam)):
			opsOf(k.pf).rewritten = append(opsOf(k.pf).rewritten, now)
		}
	}
	return ops, true
}

// forget drops the ownership record of the virtual servers in keys that no service wants any
// more (retired, or never created), returning the table operations.
func (d *desired) forget(keys []vsKey) map[proxier.Family]*tableOps {
	ops := map[proxier.Family]*tableOps{}
	for _, k := range keys {
		pf := proxier.FamilyOf(k.Addr)
		t := d.tables[pf]
		if t == nil {
			continue
		}
		r := elemRef{pf, setVirtualServers, vsElem(k)}
		if d.refs[r] > 0 {
			continue
		}
		s := t.set(setVirtualServers)
		if _, ok := s.elems[r.key]; !ok {
			continue
		}
		delete(s.elems, r.key)
		if ops[pf] == nil {
			ops[pf] = newTableOps()
		}
		ops[pf].del[setVirtualServers] = append(ops[pf].del[setVirtualServers], tableElem{r, ""})
	}
	return ops
}

// keep records the virtual servers in keys in the ownership set without any service wanting
// them (those still draining, when a full sync builds from scratch).
func (d *desired) keep(keys []vsKey) {
	for _, k := range keys {
		if t := d.tables[proxier.FamilyOf(k.Addr)]; t != nil {
			t.set(setVirtualServers).elems[vsElem(k)] = ""
		}
	}
}

// boundOf are the addresses the virtual servers of services names need on the dummy interface.
func (d *desired) boundOf(names map[types.NamespacedName]bool) []netip.Addr {
	var out []netip.Addr
	for n := range names {
		for _, k := range d.bySvc[n] {
			if vs := d.vs[k]; vs != nil && vs.kind != kindNodePort {
				out = append(out, k.Addr)
			}
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}
