// Package nftables is the nftables proxy mode: it programs Services the way kube-proxy's
// nftables mode does, into one table per family ("ip nodeagent", "ip6 nodeagent") that it owns
// entirely, talking netlink directly (no nft binary at run time).
//
// Packet classification does not grow with the number of services. Most service ports own no
// chain at all: each of their addresses (cluster IP, external and load-balancer IPs, node port)
// is an element of the set of its endpoint count, and its endpoints are slots 0..n-1 of a
// shared endpoint map under the same key; a chain per endpoint count picks one with
// "dnat to daddr . l4proto . dport . numgen random mod n map @service-endpoints". Replacing an
// endpoint, changing a count to one in use, adding or removing such a service port therefore
// changes map elements only, which the kernel commits without revalidating the table (it walks
// every chain reachable from the base chains whenever a rule with a NAT or jump expression, or
// a verdict-map element that jumps, is added). Service ports whose choice depends on more than
// the address — ClientIP affinity, Local external policy — keep chains of their own, reached
// through verdict maps keyed by address . protocol . port (service-ips) and protocol . port
// (service-nodeports). Maps of the same shape reject or drop traffic to services without
// endpoints, and check load-balancer source ranges.
//
// Every Sync is one netlink transaction. After the first, a Sync rewrites only the chains and
// map elements of the services that changed: the proxier keeps, per service port, the fragment
// of the table it last programmed and sends the difference. Chains no longer used are flushed
// at once and deleted on a later sync, as kube-proxy does for kernels that briefly keep a map's
// reference to a chain. A full Sync first checks that the kernel still holds the table as
// programmed (object count) and rebuilds it from scratch when it does not.
package nftables

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	gnft "github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/types"

	"nodeagent/proxier"
	"nodeagent/proxier/conntrack"
)

// Cleaner removes conntrack entries that a sync made stale. proxier/conntrack's Cleaner
// satisfies it; the wiring passes conntrack.NewCleaner(...) here.
type Cleaner interface {
	Clean(st *proxier.State, ch proxier.Changes) error
}

// Options configure a Proxier.
type Options struct {
	// Log receives the proxier's logs; nil means slog.Default().
	Log *slog.Logger
	// Families are the IP families to program; empty means both.
	Families []proxier.Family
	// NetNSPath, when set, is a network namespace file (e.g. /run/netns/NAME) whose
	// nftables the proxier programs instead of its own namespace's. Tests use it.
	NetNSPath string
	// Conntrack, when set, is called after every successful Sync to clear stale flows: the
	// wiring passes conntrack.NewCleaner(...) for the same namespace.
	Conntrack Cleaner
	// Recorder receives failed transactions for metrics. Nil: none.
	Recorder proxier.Recorder
}

// SyncStats says what the last Sync sent to the kernel, for tests, benchmarks and logs.
type SyncStats struct {
	Full     bool // every service was compared (Changes.Full, a rebuild, or a resync)
	Rebuilt  bool // the tables were replaced from scratch
	Messages int  // netlink messages in the transaction
	Bytes    int  // size of the transaction
	Services int  // service ports compared

	ChainsAdded, ChainsFlushed, ChainsDeleted int
	Rules                                     int
	SetsAdded, SetsDeleted                    int
	ElementsAdded, ElementsDeleted            int
	// Duration is the whole Sync; Commit the part spent waiting for the kernel to apply the
	// transaction (inside sendmsg and until its acknowledgement), the rest is the agent's own.
	Duration, Commit time.Duration
}

// Proxier is the nftables proxy mode. It is safe for concurrent use.
type Proxier struct {
	log       *slog.Logger
	fams      []*family
	conntrack Cleaner
	rec       proxier.Recorder

	mu      sync.Mutex
	netns   *os.File // nil: own namespace
	sock    *socket
	nl      *netlink.Conn // for queries: generation and drift dumps
	tables  map[*family]*programmed
	rebuild bool // the kernel's state is unknown: replace the tables on the next Sync
	last    SyncStats
	repairs atomic.Uint64
	// gen is the nftables generation after our last commit; genKnown says that nobody else
	// committed between that commit and the one before, so that while the generation stays at
	// gen the kernel holds what we programmed and a full sync need not list it. Listing costs
	// what the kernel's dump costs, quadratic in a set's size (250,000 elements: 6 s).
	gen      uint32
	genKnown bool
}

var (
	_ proxier.Proxier = (*Proxier)(nil)
	_ Cleaner         = (*conntrack.Cleaner)(nil)
)

// New returns a Proxier. It opens its netlink socket but programs nothing until Sync.
func New(opts Options) (*Proxier, error) {
	p := &Proxier{log: opts.Log, conntrack: opts.Conntrack, rec: opts.Recorder, tables: map[*family]*programmed{}, rebuild: true}
	if p.log == nil {
		p.log = slog.Default()
	}
	if p.rec == nil {
		p.rec = proxier.NopRecorder{}
	}
	fams := opts.Families
	if len(fams) == 0 {
		fams = proxier.Families
	}
	for _, f := range proxier.Families {
		for _, want := range fams {
			if want == f {
				p.fams = append(p.fams, familyOf(f))
				break
			}
		}
	}
	fd := 0
	if opts.NetNSPath != "" {
		ns, err := os.Open(opts.NetNSPath)
		if err != nil {
			return nil, fmt.Errorf("open network namespace: %w", err)
		}
		p.netns = ns
		fd = int(ns.Fd())
	}
	sock, err := openSocket(fd)
	if err != nil {
		p.Close()
		return nil, err
	}
	p.sock = sock
	if p.nl, err = netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: fd}); err != nil {
		p.Close()
		return nil, fmt.Errorf("open netfilter netlink socket: %w", err)
	}
	for _, f := range p.fams {
		p.tables[f] = newProgrammed(f)
	}
	return p, nil
}

// Close releases the netlink socket; the kernel keeps the rules.
func (p *Proxier) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	if p.sock != nil {
		errs = append(errs, p.sock.close())
		p.sock = nil
	}
	if p.nl != nil {
		errs = append(errs, p.nl.Close())
		p.nl = nil
	}
	if p.netns != nil {
		errs = append(errs, p.netns.Close())
		p.netns = nil
	}
	return errors.Join(errs...)
}

// Families returns the families this proxier programs.
func (p *Proxier) Families() []proxier.Family {
	out := make([]proxier.Family, len(p.fams))
	for i, f := range p.fams {
		out[i] = f.pf
	}
	return out
}

// LastSync reports what the last successful Sync sent.
func (p *Proxier) LastSync() SyncStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.last
}

// Repairs counts the full syncs that found the tables changed by someone else and rebuilt them.
func (p *Proxier) Repairs() uint64 { return p.repairs.Load() }

// Render writes the ruleset a full Sync of st programs, in nft -f syntax.
func (p *Proxier) Render(w io.Writer, st *proxier.State) error {
	return renderText(w, st, p.fams)
}

// query returns a google/nftables connection for reads and the rare small write (Cleanup).
func (p *Proxier) query() (*gnft.Conn, error) {
	var opts []gnft.ConnOption
	if p.netns != nil {
		opts = append(opts, gnft.WithNetNSFd(int(p.netns.Fd())))
	}
	return gnft.New(opts...)
}

func (f *family) tableFamily() gnft.TableFamily { return gnft.TableFamily(f.nfproto) }

// Cleanup deletes our tables (both families, whatever this proxier was configured with) and
// nothing else.
func (p *Proxier) Cleanup(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rebuild = true
	conn, err := p.query()
	if err != nil {
		return fmt.Errorf("cleanup: %w", err)
	}
	tables, err := conn.ListTables()
	if err != nil {
		return fmt.Errorf("cleanup: list tables: %w", err)
	}
	n := 0
	for _, t := range tables {
		if t.Name == tableName && (t.Family == familyIPv4.tableFamily() || t.Family == familyIPv6.tableFamily()) {
			conn.DelTable(t)
			n++
		}
	}
	if n == 0 {
		return nil
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("cleanup: delete tables: %w", err)
	}
	p.log.Info("deleted nftables tables", "tables", n)
	return nil
}

// Sync programs st; see proxier.Proxier.
func (p *Proxier) Sync(ctx context.Context, st *proxier.State, ch proxier.Changes) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.sock == nil {
		return errors.New("sync: proxier is closed")
	}
	start := time.Now()
	rebuild := p.rebuild
	full := ch.Full || rebuild
	if full && !rebuild {
		if drift := p.checkDrift(); drift != "" {
			p.log.Warn("nftables tables changed behind our back; rebuilding", "drift", drift)
			p.repairs.Add(1)
			rebuild = true
		}
	}
	p.sock.seq += 2
	b := newBatch(p.sock.seq)
	stats := SyncStats{Full: full, Rebuilt: rebuild}
	var counts batchCounts
	for _, f := range p.fams {
		t := p.tables[f]
		if rebuild {
			t = newProgrammed(f)
			p.tables[f] = t
			b.addTable(f)
			b.delTable(f)
			b.addTable(f)
		}
		stats.Services += t.sync(b, &counts, st, ch, f, full)
	}
	before, genErr := generation(p.nl)
	commit := time.Now()
	err := p.sock.send(b)
	stats.Commit = time.Since(commit)
	p.sock.seq = b.seq
	if err == nil {
		p.trackGeneration(before, genErr, b.msgs > 0)
	}
	if err != nil {
		// The transaction was not committed, but our record of the tables already moved on:
		// start over from scratch next time.
		p.rebuild = true
		for _, f := range p.fams { // one transaction carries every family
			p.rec.SyncFailed(f.pf)
		}
		return fmt.Errorf("sync nftables: %w", err)
	}
	p.rebuild = false
	stats.Messages, stats.Bytes = b.msgs, len(b.buf)
	stats.ChainsAdded, stats.ChainsFlushed, stats.ChainsDeleted = counts.chainsAdded, counts.chainsFlushed, counts.chainsDeleted
	stats.Rules = counts.rules
	stats.SetsAdded, stats.SetsDeleted = counts.setsAdded, counts.setsDeleted
	stats.ElementsAdded, stats.ElementsDeleted = counts.elemsAdded, counts.elemsDeleted
	stats.Duration = time.Since(start)
	p.last = stats
	p.log.Debug("synced nftables", "full", full, "rebuilt", rebuild, "services", stats.Services,
		"messages", stats.Messages, "bytes", stats.Bytes, "duration", stats.Duration, "commit", stats.Commit)
	if p.conntrack != nil {
		if err := p.conntrack.Clean(st, proxier.Changes{Full: full, Services: ch.Services}); err != nil {
			p.log.Warn("clearing stale conntrack entries failed", "err", err)
		}
	}
	return nil
}

// trackGeneration records the generation after a committed sync: known only when the one
// before it (before, or the error reading it) was ours and the commit moved it by exactly one.
func (p *Proxier) trackGeneration(before uint32, beforeErr error, committed bool) {
	after, err := generation(p.nl)
	if beforeErr != nil || err != nil {
		p.genKnown = false
		return
	}
	moved := after - before
	if (committed && moved != 1) || (!committed && moved != 0) || before != p.gen {
		p.genKnown = false
	}
	p.gen = after
}

// checkDrift compares each table with what we programmed, unless nobody committed an nftables
// transaction since ours: its object count (chains, sets and anonymous maps, which the kernel
// reports as the table's use count), then the rules of every chain and the elements of every
// named set that packets do not fill. It returns a reason, or "" when everything matches.
func (p *Proxier) checkDrift() string {
	gen, err := generation(p.nl)
	if err == nil && p.genKnown && gen == p.gen {
		return ""
	}
	drift := p.listDrift()
	if drift == "" && err == nil {
		// Checked as of gen (or later, which only makes the next check list again).
		p.gen, p.genKnown = gen, true
	}
	return drift
}

// listDrift is checkDrift's comparison with the kernel's listing.
func (p *Proxier) listDrift() string {
	conn, err := p.query()
	if err != nil {
		return err.Error()
	}
	for _, f := range p.fams {
		t, err := conn.ListTableOfFamily(tableName, f.tableFamily())
		if err != nil {
			return fmt.Sprintf("table %s %s: %v", f.name, tableName, err)
		}
		// google/nftables v0.3.0 decodes NFTA_TABLE_USE in host order; the kernel sends it in
		// network order.
		use := binary.BigEndian.Uint32(binary.NativeEndian.AppendUint32(nil, t.Use))
		if want := p.tables[f].objects(); use != uint32(want) {
			return fmt.Sprintf("table %s %s holds %d chains and sets, want %d", f.name, tableName, use, want)
		}
	}
	for _, f := range p.fams {
		want, sets := p.tables[f].wantCounts()
		got, err := dumpCounts(p.nl, f, sets)
		if err != nil {
			return fmt.Sprintf("table %s %s: %v", f.name, tableName, err)
		}
		if d := compareCounts(want, got); d != "" {
			return fmt.Sprintf("table %s %s: %s", f.name, tableName, d)
		}
	}
	return ""
}

// elemID names one element of one set or map (builders use it to deduplicate).
type elemID struct {
	set string
	key elemKey
}

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
	val  verdict
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
	f           *family
	sets        map[string]*set
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

func newProgrammed(f *family) *programmed {
	return &programmed{
		f: f, sets: map[string]*set{}, chains: map[string]chainState{},
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
	k := ekey{set: p.id, proto: e.key.proto, port: e.key.port, slot: e.key.slot}
	if e.key.addr.IsValid() {
		k.addr = e.key.addr.As16()
	}
	return k
}

// addr undoes As16 for the record's family; the zero array is "no address".
func (t *programmed) addr(a [16]byte) netip.Addr {
	if a == ([16]byte{}) {
		return netip.Addr{}
	}
	if t.f.addrLen == 4 {
		return netip.AddrFrom4([4]byte(a[12:]))
	}
	return netip.AddrFrom16(a)
}

// plan collects one family's changes in the order the transaction needs them.
type plan struct {
	newSets   []*set
	newChains []*chain
	flush     []string
	rules     []*chain
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
	val     verdict
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
func (t *programmed) sync(b *batch, counts *batchCounts, st *proxier.State, ch proxier.Changes, f *family, full bool) int {
	pl := &plan{fresh: len(t.elems) == 0 && len(t.verdicts) == 0, pack: packer{t: t}}
	if !pl.fresh {
		pl.touched = map[ekey]elemBefore{}
	} else if full {
		// Room for every element at once: about the endpoints plus two per service port.
		n := 0
		for _, sp := range st.Services {
			if sp.Name.Family == f.pf {
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
			if sp.Name.Family != f.pf {
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
			syncService(n, portsOf(st, n, f.pf))
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
		for _, r := range c.rules {
			b.addRule(f, c.name, r)
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
func (t *programmed) diff(pl *plan, f *family, old, nu *fragment, deleteChains, deleteSets map[string]bool) {
	var oldFr, newFr fragment
	if old != nil {
		oldFr = *old
	}
	if nu != nil {
		newFr = *nu
	}
	for _, s := range newFr.sets {
		delete(deleteSets, s.name)
		if _, ok := t.sets[s.name]; !ok {
			t.sets[s.name] = s
			pl.newSets = append(pl.newSets, s)
		}
	}
	for _, s := range oldFr.sets {
		if !slices.ContainsFunc(newFr.sets, func(n *set) bool { return n.name == s.name }) {
			t.staleSets[s.name] = true
		}
	}

	for _, c := range newFr.chains {
		fp := c.fingerprint(f)
		cs, exists := t.chains[c.name]
		switch {
		case !exists:
			pl.newChains = append(pl.newChains, c)
		case deleteChains[c.name] || t.staleChains[c.name]:
			// Flushed earlier and still there: reuse it.
			delete(deleteChains, c.name)
			delete(t.staleChains, c.name)
		case cs.fingerprint == fp:
			continue
		default:
			pl.flush = append(pl.flush, c.name)
		}
		t.chains[c.name] = chainState{fingerprint: fp, rules: len(c.rules)}
		pl.rules = append(pl.rules, c)
	}
	for _, c := range oldFr.chains {
		if newFr.chain(c.name) != nil {
			continue
		}
		if _, ok := t.chains[c.name]; ok && !t.staleChains[c.name] {
			pl.flush = append(pl.flush, c.name)
			t.chains[c.name] = chainState{}
			t.staleChains[c.name] = true
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
	pl.touch(k, true, es, verdict{})
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
	pl.touch(k, ok, es, verdict{})
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

func (pl *plan) touch(k ekey, present bool, es estate, val verdict) {
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
	e := element{set: info.name, key: elemKey{proto: p.k.proto, port: p.k.port, slot: p.k.slot, addr: t.addr(p.k.addr)}}
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
