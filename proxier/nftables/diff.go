package nftables

import (
	"cmp"
	"net/netip"
	"nodeagent/proxier/nft"
	"slices"

	"k8s.io/apimachinery/pkg/types"

	"nodeagent/proxier"
)

// ekey is an element's identity in the programmed record: its set's index in the record's set
// table and its key, packed without pointers. A table of 25,000 services holds 300,000 of
// them; pointer-free keys and values keep that map small and cost the garbage collector
// nothing to scan.
type ekey struct {
	set   uint16
	proto uint8
	port  uint16
	slot  uint32
	addr  [16]byte // As16 of the key's address; the hairpin set's two addresses are the same
}

// estate is a programmed element of a plain set or an endpoint map: how many fragments want
// it, and the endpoint (endpoint maps).
type estate struct {
	refs   int32
	toPort uint16
	to     [16]byte
}

// vstate is a programmed element of a verdict map: how many fragments want it and its verdict.
// Few elements are in verdict maps (services without endpoints, with chains of their own or
// source ranges), so this map may hold the chain's name.
type vstate struct {
	refs int32
	val  nft.Verdict
}

// chainState is a programmed chain: its rules' fingerprint ("" once flushed) and how many
// rules it holds (for drift detection).
type chainState struct {
	fingerprint string
	rules       int
}

// programmed is what we believe one family's table holds. Per service it keeps a copy of the
// ServicePort it last programmed, not what that produced: a service's fragment is built again
// when the service changes, which costs far less than keeping 25,000 fragments around.
type programmed struct {
	f           *nft.Family
	sets        map[string]*nft.Set
	chains      map[string]chainState
	staleChains map[string]bool // flushed, to be deleted by a later sync
	staleSets   map[string]bool
	setIDs      map[string]uint16 // element sets by name, for ekey
	setInfo     []setInfo         // by ekey.set
	elems       map[ekey]estate
	verdicts    map[ekey]vstate
	base        *fragment
	// ports holds, per service, copies of its ports of this family as last programmed.
	ports     map[types.NamespacedName][]proxier.ServicePort
	countRefs map[int]int // endpoint count -> service port fragments using it
}

// setInfo is what the record needs to turn an ekey back into an element.
type setInfo struct {
	name  string
	isMap bool
}

func newProgrammed(f *nft.Family) *programmed {
	return &programmed{
		f: f, sets: map[string]*nft.Set{}, chains: map[string]chainState{},
		staleChains: map[string]bool{}, staleSets: map[string]bool{},
		setIDs: map[string]uint16{}, elems: map[ekey]estate{}, verdicts: map[ekey]vstate{},
		ports: map[types.NamespacedName][]proxier.ServicePort{}, countRefs: map[int]int{},
	}
}

// objects is the kernel's use count of the table: chains and named sets (anonymous maps do
// not count).
func (t *programmed) objects() int { return len(t.chains) + len(t.sets) }

// setID returns the index of the set called name, adding it to the table on first use. Set
// names are few (fixed ones and one per endpoint count), so the table never shrinks.
func (t *programmed) setID(name string) uint16 {
	if id, ok := t.setIDs[name]; ok {
		return id
	}
	id := uint16(len(t.setInfo))
	t.setIDs[name] = id
	t.setInfo = append(t.setInfo, setInfo{name: name, isMap: verdictMaps[name]})
	return id
}

// packer turns elements into ekeys; it remembers the last set, since a fragment's elements
// come in runs of one set.
type packer struct {
	t    *programmed
	name string
	id   uint16
}

func (p *packer) key(e *element) ekey {
	if e.set != p.name || p.name == "" {
		p.name, p.id = e.set, p.t.setID(e.set)
	}
	k := ekey{set: p.id, proto: e.key.Proto, port: e.key.Port, slot: e.key.Slot}
	if e.key.Addr.IsValid() {
		k.addr = e.key.Addr.As16()
	}
	return k
}

// addr undoes As16 for the record's family; the zero array is "no address".
func (t *programmed) addr(a [16]byte) netip.Addr {
	if a == ([16]byte{}) {
		return netip.Addr{}
	}
	if t.f.AddrLen == 4 {
		return netip.AddrFrom4([4]byte(a[12:]))
	}
	return netip.AddrFrom16(a)
}

// plan collects one family's changes in the order the transaction needs them.
type plan struct {
	newSets   []*nft.Set
	newChains []*nft.Chain
	flush     []string
	rules     []*nft.Chain
	touched   map[ekey]elemBefore
	// fresh: the table starts empty (a rebuild), so every element is an addition; added holds
	// them by set, in order, without the bookkeeping of touched.
	fresh   bool
	pack    packer
	scratch [2]fragment // reused by diffService for the old and the new fragment
}

// elemBefore is an element's state before the sync touched it.
type elemBefore struct {
	present bool
	es      estate
	val     nft.Verdict
}

// portsOf returns the ports of service n of family pf in st.
func portsOf(st *proxier.State, n types.NamespacedName, pf proxier.Family) []*proxier.ServicePort {
	var out []*proxier.ServicePort
	for _, sp := range st.PortsOfService(n) {
		if sp.Name.Family == pf {
			out = append(out, sp)
		}
	}
	return out
}

// sync diffs the wanted fragments against the programmed ones and appends the difference to b.
// It returns how many service ports it compared.
func (t *programmed) sync(b tx, counts *batchCounts, st *proxier.State, ch proxier.Changes, f *nft.Family, full bool) int {
	pl := &plan{fresh: len(t.elems) == 0 && len(t.verdicts) == 0, pack: packer{t: t}}
	if !pl.fresh {
		pl.touched = map[ekey]elemBefore{}
	} else if full {
		// Room for every element at once: about the endpoints plus two per service port.
		n := 0
		for _, sp := range st.Services {
			if sp.Name.Family == f.PF {
				n += 2 + len(sp.ClusterEndpoints)*(1+len(sp.ExternalIPs)+len(sp.LoadBalancerIPs))
			}
		}
		t.elems = make(map[ekey]estate, n)
	}
	// Objects flushed by an earlier sync are deleted at the end of this one, unless reused.
	deleteChains, deleteSets := t.staleChains, t.staleSets
	t.staleChains, t.staleSets = map[string]bool{}, map[string]bool{}

	compared := 0
	// syncService brings service n's ports from what t.ports holds to nu (state order).
	syncService := func(n types.NamespacedName, nu []*proxier.ServicePort) {
		old := t.ports[n]
		var rec []proxier.ServicePort
		if len(nu) > 0 {
			rec = make([]proxier.ServicePort, 0, len(nu))
		}
		for _, sp := range nu {
			compared++
			var was *proxier.ServicePort
			for i := range old {
				if old[i].Name == sp.Name {
					was = &old[i]
					break
				}
			}
			t.diffService(pl, st, was, sp, deleteChains, deleteSets)
			rec = append(rec, *sp)
		}
		for i := range old {
			if !slices.ContainsFunc(nu, func(sp *proxier.ServicePort) bool { return sp.Name == old[i].Name }) {
				t.diffService(pl, st, &old[i], nil, deleteChains, deleteSets)
			}
		}
		if len(rec) == 0 {
			delete(t.ports, n)
		} else {
			t.ports[n] = rec
		}
	}
	if full {
		// Every service, in state order; a map rather than runs of equal names, so that a
		// hand-made state that is not sorted works too.
		var names []types.NamespacedName
		wanted := make(map[types.NamespacedName][]*proxier.ServicePort, max(len(t.ports), len(st.Services)))
		for _, sp := range st.Services {
			if sp.Name.Family != f.PF {
				continue
			}
			n := sp.Name.NamespacedName
			if _, ok := wanted[n]; !ok {
				names = append(names, n)
			}
			wanted[n] = append(wanted[n], sp)
		}
		for _, n := range names {
			syncService(n, wanted[n])
		}
		for n := range t.ports {
			if _, ok := wanted[n]; !ok {
				syncService(n, nil)
			}
		}
	} else {
		for n := range ch.Services {
			syncService(n, portsOf(st, n, f.PF))
		}
	}
	// The base follows the endpoint counts in use. A new count, or one no longer used, costs a
	// rule change (and so a table validation); with many services most counts are shared.
	inUse := make([]int, 0, len(t.countRefs))
	for n := range t.countRefs {
		inUse = append(inUse, n)
	}
	slices.Sort(inUse)
	if full || t.base == nil || !slices.Equal(inUse, t.base.counts) {
		nb := buildBase(st, f, inUse)
		t.diff(pl, f, t.base, nb, deleteChains, deleteSets)
		t.base = nb
	}

	// The transaction, in dependency order.
	for _, s := range pl.newSets {
		b.addSet(f, s)
		counts.setsAdded++
	}
	for _, c := range pl.newChains {
		b.addChain(f, c)
		counts.chainsAdded++
	}
	for _, name := range pl.flush {
		b.flushChain(f, name)
		counts.chainsFlushed++
	}
	adds, dels := t.elementChanges(pl)
	for _, id := range t.sortedSets(dels) {
		ps := dels[id]
		b.elements(f, t.sets[t.setInfo[id].name], len(ps), func(i int) element { return t.toElement(ps[i]) }, true)
		counts.elemsDeleted += len(ps)
	}
	for _, c := range pl.rules {
		for _, r := range c.Rules {
			b.addRule(f, c.Name, r)
			counts.rules++
		}
	}
	for _, id := range t.sortedSets(adds) {
		ps := adds[id]
		b.elements(f, t.sets[t.setInfo[id].name], len(ps), func(i int) element { return t.toElement(ps[i]) }, false)
		counts.elemsAdded += len(ps)
	}
	for name := range deleteChains {
		b.delChain(f, name)
		delete(t.chains, name)
		counts.chainsDeleted++
	}
	for name := range deleteSets {
		b.delSet(f, name)
		delete(t.sets, name)
		counts.setsDeleted++
	}
	return compared
}

// diffService is diff for one service port, from what it programmed (was, nil if nothing) to
// what it wants (sp, nil if nothing); it also keeps count of the endpoint counts they use.
func (t *programmed) diffService(pl *plan, st *proxier.State, was, sp *proxier.ServicePort, deleteChains, deleteSets map[string]bool) {
	var old, nu *fragment
	if was != nil {
		old = buildService(st, t.f, was, &pl.scratch[0])
		for _, n := range old.counts {
			if t.countRefs[n]--; t.countRefs[n] <= 0 {
				delete(t.countRefs, n)
			}
		}
	}
	if sp != nil {
		nu = buildService(st, t.f, sp, &pl.scratch[1])
		for _, n := range nu.counts {
			t.countRefs[n]++
		}
	}
	t.diff(pl, t.f, old, nu, deleteChains, deleteSets)
}

// diff records what turning fragment old into nu needs (either may be nil) and updates t.
func (t *programmed) diff(pl *plan, f *nft.Family, old, nu *fragment, deleteChains, deleteSets map[string]bool) {
	var oldFr, newFr fragment
	if old != nil {
		oldFr = *old
	}
	if nu != nil {
		newFr = *nu
	}
	for _, s := range newFr.sets {
		delete(deleteSets, s.Name)
		if _, ok := t.sets[s.Name]; !ok {
			t.sets[s.Name] = s
			pl.newSets = append(pl.newSets, s)
		}
	}
	for _, s := range oldFr.sets {
		if !slices.ContainsFunc(newFr.sets, func(n *nft.Set) bool { return n.Name == s.Name }) {
			t.staleSets[s.Name] = true
		}
	}

	for _, c := range newFr.chains {
		fp := c.Fingerprint(f)
		cs, exists := t.chains[c.Name]
		switch {
		case !exists:
			pl.newChains = append(pl.newChains, c)
		case deleteChains[c.Name] || t.staleChains[c.Name]:
			// Flushed earlier and still there: reuse it.
			delete(deleteChains, c.Name)
			delete(t.staleChains, c.Name)
		case cs.fingerprint == fp:
			continue
		default:
			pl.flush = append(pl.flush, c.Name)
		}
		t.chains[c.Name] = chainState{fingerprint: fp, rules: len(c.Rules)}
		pl.rules = append(pl.rules, c)
	}
	for _, c := range oldFr.chains {
		if newFr.chain(c.Name) != nil {
			continue
		}
		if _, ok := t.chains[c.Name]; ok && !t.staleChains[c.Name] {
			pl.flush = append(pl.flush, c.Name)
			t.chains[c.Name] = chainState{}
			t.staleChains[c.Name] = true
		}
	}

	for i := range oldFr.elems {
		t.release(pl, &oldFr.elems[i])
	}
	for i := range newFr.elems {
		t.want(pl, &newFr.elems[i])
	}
}

// release drops one fragment's claim on an element.
func (t *programmed) release(pl *plan, e *element) {
	k := pl.pack.key(e)
	if t.setInfo[k.set].isMap {
		vs, ok := t.verdicts[k]
		if !ok {
			return
		}
		pl.touch(k, true, estate{}, vs.val)
		if vs.refs--; vs.refs <= 0 {
			delete(t.verdicts, k)
		} else {
			t.verdicts[k] = vs
		}
		return
	}
	es, ok := t.elems[k]
	if !ok {
		return
	}
	pl.touch(k, true, es, nft.Verdict{})
	if es.refs--; es.refs <= 0 {
		delete(t.elems, k)
	} else {
		t.elems[k] = es
	}
}

// want records one fragment's claim on an element; the last claim sets its value (the first,
// when the table is built from scratch; only an invalid state has two values for one key).
func (t *programmed) want(pl *plan, e *element) {
	k := pl.pack.key(e)
	if pl.fresh {
		t.wantFresh(pl, k, e)
		return
	}
	if t.setInfo[k.set].isMap {
		vs, ok := t.verdicts[k]
		pl.touch(k, ok, estate{}, vs.val)
		vs.refs++
		vs.val = e.val
		t.verdicts[k] = vs
		return
	}
	es, ok := t.elems[k]
	pl.touch(k, ok, es, nft.Verdict{})
	es.refs++
	if e.to.IsValid() {
		es.to, es.toPort = e.to.Addr().As16(), e.to.Port()
	}
	t.elems[k] = es
}

// wantFresh is want for a table built from scratch: every element recorded is an addition,
// and elementChanges takes them from the record, without the bookkeeping of touched.
func (t *programmed) wantFresh(pl *plan, k ekey, e *element) {
	if t.setInfo[k.set].isMap {
		if vs, ok := t.verdicts[k]; ok {
			vs.refs++
			t.verdicts[k] = vs
			return
		}
		t.verdicts[k] = vstate{refs: 1, val: e.val}
	} else {
		if es, ok := t.elems[k]; ok {
			es.refs++
			t.elems[k] = es
			return
		}
		es := estate{refs: 1}
		if e.to.IsValid() {
			es.to, es.toPort = e.to.Addr().As16(), e.to.Port()
		}
		t.elems[k] = es
	}
}

func (pl *plan) touch(k ekey, present bool, es estate, val nft.Verdict) {
	if pl.fresh {
		return // a fresh table releases nothing
	}
	if _, ok := pl.touched[k]; ok {
		return
	}
	pl.touched[k] = elemBefore{present: present, es: es, val: val}
}

// pending is an element to send, without pointers (a first sync holds 300,000 of them): its
// key and, for plain sets and endpoint maps, its value. Verdicts are looked up when sent.
type pending struct {
	k  ekey
	es estate
}

// toElement turns a pending element into what the batch encodes.
func (t *programmed) toElement(p pending) element {
	info := t.setInfo[p.k.set]
	e := element{set: info.name, key: nft.Key{Proto: p.k.proto, Port: p.k.port, Slot: p.k.slot, Addr: t.addr(p.k.addr)}}
	if info.isMap {
		e.val = t.verdicts[p.k].val
	} else if p.es.toPort != 0 {
		e.to = netip.AddrPortFrom(t.addr(p.es.to), p.es.toPort)
	}
	return e
}

// elementChanges turns the touched elements into per-set additions and deletions.
func (t *programmed) elementChanges(pl *plan) (adds, dels map[uint16][]pending) {
	if pl.fresh {
		// Everything recorded is new: count per set, then fill lists of exactly that size.
		sizes := make([]int, len(t.setInfo))
		for k := range t.elems {
			sizes[k.set]++
		}
		for k := range t.verdicts {
			sizes[k.set]++
		}
		adds = make(map[uint16][]pending, len(sizes))
		for id, n := range sizes {
			if n > 0 {
				adds[uint16(id)] = make([]pending, 0, n)
			}
		}
		for k, es := range t.elems {
			adds[k.set] = append(adds[k.set], pending{k: k, es: es})
		}
		for k := range t.verdicts {
			adds[k.set] = append(adds[k.set], pending{k: k})
		}
		return adds, nil
	}
	adds, dels = map[uint16][]pending{}, map[uint16][]pending{}
	for k, before := range pl.touched {
		now := t.present(k)
		es := t.elems[k]
		switch {
		case !now && before.present:
			dels[k.set] = append(dels[k.set], pending{k: k})
		case now && !before.present:
			adds[k.set] = append(adds[k.set], pending{k: k, es: es})
		case now && t.changedValue(k, before):
			dels[k.set] = append(dels[k.set], pending{k: k})
			adds[k.set] = append(adds[k.set], pending{k: k, es: es})
		}
	}
	return adds, dels
}

func (t *programmed) present(k ekey) bool {
	if t.setInfo[k.set].isMap {
		_, ok := t.verdicts[k]
		return ok
	}
	_, ok := t.elems[k]
	return ok
}

func (t *programmed) changedValue(k ekey, before elemBefore) bool {
	if t.setInfo[k.set].isMap {
		return t.verdicts[k].val != before.val
	}
	now := t.elems[k]
	return now.to != before.es.to || now.toPort != before.es.toPort
}

// sortedSets returns the ids in m of sets that exist, in name order.
func (t *programmed) sortedSets(m map[uint16][]pending) []uint16 {
	out := make([]uint16, 0, len(m))
	for id := range m {
		if t.sets[t.setInfo[id].name] != nil {
			out = append(out, id)
		}
	}
	slices.SortFunc(out, func(a, b uint16) int { return cmp.Compare(t.setInfo[a].name, t.setInfo[b].name) })
	return out
}
