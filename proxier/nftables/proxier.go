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
	"time"

	gnft "github.com/google/nftables"
	"k8s.io/apimachinery/pkg/types"

	"nodeagent/proxier"
	"nodeagent/proxier/conntrack"
)

// Cleaner removes conntrack entries that a sync made stale. proxier/conntrack's Cleaner
// satisfies it; the wiring passes conntrack.NewCleaner(...) here.
type Cleaner interface {
	Clean(st *proxier.State) error
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
	Duration                                  time.Duration
}

// Proxier is the nftables proxy mode. It is safe for concurrent use.
type Proxier struct {
	log       *slog.Logger
	fams      []*family
	conntrack Cleaner

	mu      sync.Mutex
	netns   *os.File // nil: own namespace
	sock    *socket
	tables  map[*family]*programmed
	rebuild bool // the kernel's state is unknown: replace the tables on the next Sync
	last    SyncStats
}

var (
	_ proxier.Proxier = (*Proxier)(nil)
	_ Cleaner         = (*conntrack.Cleaner)(nil)
)

// New returns a Proxier. It opens its netlink socket but programs nothing until Sync.
func New(opts Options) (*Proxier, error) {
	p := &Proxier{log: opts.Log, conntrack: opts.Conntrack, tables: map[*family]*programmed{}, rebuild: true}
	if p.log == nil {
		p.log = slog.Default()
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
	for _, f := range p.fams {
		p.tables[f] = newProgrammed()
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
	if p.netns != nil {
		errs = append(errs, p.netns.Close())
		p.netns = nil
	}
	return errors.Join(errs...)
}

// LastSync reports what the last successful Sync sent.
func (p *Proxier) LastSync() SyncStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.last
}

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
			t = newProgrammed()
			p.tables[f] = t
			b.addTable(f)
			b.delTable(f)
			b.addTable(f)
		}
		stats.Services += t.sync(b, &counts, st, ch, f, full)
	}
	err := p.sock.send(b)
	p.sock.seq = b.seq
	if err != nil {
		// The transaction was not committed, but our record of the tables already moved on:
		// start over from scratch next time.
		p.rebuild = true
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
		"messages", stats.Messages, "bytes", stats.Bytes, "duration", stats.Duration)
	if p.conntrack != nil {
		if err := p.conntrack.Clean(st); err != nil {
			p.log.Warn("clearing stale conntrack entries failed", "err", err)
		}
	}
	return nil
}

// checkDrift compares each table's object count (chains, sets and anonymous maps, which the
// kernel reports as the table's use count) with what we programmed. It returns a reason, or ""
// when everything matches.
func (p *Proxier) checkDrift() string {
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
		// A flushed table keeps its chains and sets: count the rules of one base chain too.
		rules, err := conn.GetRules(&gnft.Table{Name: tableName, Family: f.tableFamily()}, &gnft.Chain{Name: chainServices})
		if err != nil {
			return fmt.Sprintf("list chain %s: %v", chainServices, err)
		}
		if want := len(p.tables[f].base.chain(chainServices).rules); len(rules) != want {
			return fmt.Sprintf("chain %s holds %d rules, want %d", chainServices, len(rules), want)
		}
	}
	return ""
}

// elemID names one element of one set or map.
type elemID struct {
	set string
	key elemKey
}

// elemState is a programmed element: how many fragments want it, and its value.
type elemState struct {
	refs int
	val  elemValue
}

// elemValue is an element's value: a verdict (verdict maps) or an endpoint (endpoint maps).
type elemValue struct {
	verdict verdict
	to      netip.AddrPort
}

// chainState is a programmed chain: its rules' fingerprint ("" once flushed).
type chainState struct {
	fingerprint string
}

// programmed is what we believe one family's table holds.
type programmed struct {
	sets        map[string]*set
	chains      map[string]chainState
	staleChains map[string]bool // flushed, to be deleted by a later sync
	staleSets   map[string]bool
	elems       map[elemID]*elemState
	base        *fragment
	owners      map[proxier.ServicePortName]*fragment
	byName      map[types.NamespacedName][]proxier.ServicePortName
	countRefs   map[int]int // endpoint count -> service port fragments using it
}

func newProgrammed() *programmed {
	return &programmed{
		sets: map[string]*set{}, chains: map[string]chainState{},
		staleChains: map[string]bool{}, staleSets: map[string]bool{},
		elems: map[elemID]*elemState{}, owners: map[proxier.ServicePortName]*fragment{},
		byName:    map[types.NamespacedName][]proxier.ServicePortName{},
		countRefs: map[int]int{},
	}
}

// objects is the kernel's use count of the table: chains and named sets (anonymous maps do
// not count).
func (t *programmed) objects() int { return len(t.chains) + len(t.sets) }

// plan collects one family's changes in the order the transaction needs them.
type plan struct {
	newSets   []*set
	newChains []*chain
	flush     []string
	rules     []*chain
	touched   map[elemID]elemBefore
	// fresh: the table starts empty (a rebuild), so every element is an addition; added lists
	// them in order without the bookkeeping of touched, which costs most of a first sync.
	fresh bool
	added []elemID
}

type elemBefore struct {
	present bool
	val     elemValue
}

// sync diffs the wanted fragments against the programmed ones and appends the difference to b.
// It returns how many service ports it compared.
func (t *programmed) sync(b *batch, counts *batchCounts, st *proxier.State, ch proxier.Changes, f *family, full bool) int {
	pl := &plan{touched: map[elemID]elemBefore{}, fresh: len(t.elems) == 0}
	// Objects flushed by an earlier sync are deleted at the end of this one, unless reused.
	deleteChains, deleteSets := t.staleChains, t.staleSets
	t.staleChains, t.staleSets = map[string]bool{}, map[string]bool{}

	compared := 0
	seen := map[proxier.ServicePortName]bool{}
	for _, sp := range st.Services {
		if sp.Name.Family != f.pf || !(full || ch.Services[sp.Name.NamespacedName]) {
			continue
		}
		seen[sp.Name] = true
		compared++
		nf := buildService(st, f, sp)
		t.diffService(pl, f, t.owners[sp.Name], nf, deleteChains, deleteSets)
		if _, ok := t.owners[sp.Name]; !ok {
			t.byName[sp.Name.NamespacedName] = append(t.byName[sp.Name.NamespacedName], sp.Name)
		}
		t.owners[sp.Name] = nf
	}
	// Service ports that are gone.
	var gone []types.NamespacedName
	if full {
		for n := range t.byName {
			gone = append(gone, n)
		}
	} else {
		for n := range ch.Services {
			gone = append(gone, n)
		}
	}
	for _, n := range gone {
		names := t.byName[n]
		kept := names[:0]
		for _, spn := range names {
			if seen[spn] {
				kept = append(kept, spn)
				continue
			}
			t.diffService(pl, f, t.owners[spn], nil, deleteChains, deleteSets)
			delete(t.owners, spn)
		}
		if len(kept) == 0 {
			delete(t.byName, n)
		} else {
			t.byName[n] = kept
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
	for _, s := range sortedSets(t.sets, dels) {
		b.elements(f, t.sets[s], dels[s], true)
		counts.elemsDeleted += len(dels[s])
	}
	for _, c := range pl.rules {
		for _, r := range c.rules {
			b.addRule(f, c.name, r)
			counts.rules++
		}
	}
	for _, s := range sortedSets(t.sets, adds) {
		b.elements(f, t.sets[s], adds[s], false)
		counts.elemsAdded += len(adds[s])
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

// diffService is diff for a service port's fragments; it also keeps count of the endpoint
// counts they use.
func (t *programmed) diffService(pl *plan, f *family, old, nu *fragment, deleteChains, deleteSets map[string]bool) {
	if old != nil {
		for _, n := range old.counts {
			if t.countRefs[n]--; t.countRefs[n] <= 0 {
				delete(t.countRefs, n)
			}
		}
	}
	if nu != nil {
		for _, n := range nu.counts {
			t.countRefs[n]++
		}
	}
	t.diff(pl, f, old, nu, deleteChains, deleteSets)
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
	wantSet := map[string]bool{}
	for _, s := range newFr.sets {
		wantSet[s.name] = true
		delete(deleteSets, s.name)
		if _, ok := t.sets[s.name]; !ok {
			t.sets[s.name] = s
			pl.newSets = append(pl.newSets, s)
		}
	}
	for _, s := range oldFr.sets {
		if !wantSet[s.name] {
			t.staleSets[s.name] = true
		}
	}

	wantChain := map[string]bool{}
	for _, c := range newFr.chains {
		wantChain[c.name] = true
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
		t.chains[c.name] = chainState{fingerprint: fp}
		pl.rules = append(pl.rules, c)
	}
	for _, c := range oldFr.chains {
		if wantChain[c.name] {
			continue
		}
		if _, ok := t.chains[c.name]; ok && !t.staleChains[c.name] {
			pl.flush = append(pl.flush, c.name)
			t.chains[c.name] = chainState{}
			t.staleChains[c.name] = true
		}
	}

	for _, e := range oldFr.elems {
		id := elemID{set: e.set, key: e.key}
		es := t.elems[id]
		if es == nil {
			continue
		}
		pl.touch(id, es)
		if es.refs--; es.refs == 0 {
			delete(t.elems, id)
		}
	}
	for _, e := range newFr.elems {
		id := elemID{set: e.set, key: e.key}
		es := t.elems[id]
		pl.touch(id, es)
		if es == nil {
			es = &elemState{}
			t.elems[id] = es
		}
		es.refs++
		es.val = elemValue{verdict: e.val, to: e.to}
	}
}

func (pl *plan) touch(id elemID, es *elemState) {
	if pl.fresh {
		if es == nil {
			pl.added = append(pl.added, id)
		}
		return
	}
	if _, ok := pl.touched[id]; ok {
		return
	}
	if es == nil {
		pl.touched[id] = elemBefore{}
	} else {
		pl.touched[id] = elemBefore{present: true, val: es.val}
	}
}

// elementChanges turns the touched elements into per-set additions and deletions.
func (t *programmed) elementChanges(pl *plan) (adds, dels map[string][]element) {
	adds, dels = map[string][]element{}, map[string][]element{}
	if len(pl.added) > 0 {
		sizes := map[string]int{}
		for _, id := range pl.added {
			sizes[id.set]++
		}
		for set, n := range sizes {
			adds[set] = make([]element, 0, n)
		}
	}
	for _, id := range pl.added {
		if now := t.elems[id]; now != nil {
			adds[id.set] = append(adds[id.set], element{set: id.set, key: id.key, val: now.val.verdict, to: now.val.to})
		}
	}
	for id, before := range pl.touched {
		now := t.elems[id]
		switch {
		case now == nil && before.present:
			dels[id.set] = append(dels[id.set], element{set: id.set, key: id.key})
		case now != nil && !before.present:
			adds[id.set] = append(adds[id.set], element{set: id.set, key: id.key, val: now.val.verdict, to: now.val.to})
		case now != nil && now.val != before.val:
			dels[id.set] = append(dels[id.set], element{set: id.set, key: id.key})
			adds[id.set] = append(adds[id.set], element{set: id.set, key: id.key, val: now.val.verdict, to: now.val.to})
		}
	}
	return adds, dels
}

func sortedSets(sets map[string]*set, m map[string][]element) []string {
	out := make([]string, 0, len(m))
	for name := range m {
		if sets[name] != nil {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}
