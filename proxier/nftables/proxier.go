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
	"errors"
	"fmt"
	"io"
	"log/slog"
	"nodeagent/proxier/nft"
	"sync"
	"sync/atomic"
	"time"

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
	fams      []*nft.Family
	conntrack Cleaner
	rec       proxier.Recorder

	mu      sync.Mutex
	k       kernel // nil once closed
	tables  map[*nft.Family]*programmed
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
	k, err := newNetlinkKernel(opts.NetNSPath)
	if err != nil {
		return nil, err
	}
	return newWithKernel(opts, k), nil
}

// newWithKernel returns a Proxier that programs k (unit tests pass a fake).
func newWithKernel(opts Options, k kernel) *Proxier {
	p := &Proxier{log: opts.Log, conntrack: opts.Conntrack, rec: opts.Recorder, k: k, tables: map[*nft.Family]*programmed{}, rebuild: true}
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
				p.fams = append(p.fams, nft.FamilyOf(f))
				break
			}
		}
	}
	for _, f := range p.fams {
		p.tables[f] = newProgrammed(f)
	}
	return p
}

// Close releases the netlink socket; the kernel keeps the rules.
func (p *Proxier) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.k == nil {
		return nil
	}
	err := p.k.close()
	p.k = nil
	return err
}

// Families returns the families this proxier programs.
func (p *Proxier) Families() []proxier.Family {
	out := make([]proxier.Family, len(p.fams))
	for i, f := range p.fams {
		out[i] = f.PF
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

// Cleanup deletes our tables (both families, whatever this proxier was configured with) and
// nothing else.
func (p *Proxier) Cleanup(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rebuild = true
	if p.k == nil {
		return errors.New("cleanup: proxier is closed")
	}
	n, err := p.k.deleteTables()
	if err != nil {
		return fmt.Errorf("cleanup: %w", err)
	}
	if n > 0 {
		p.log.Info("deleted nftables tables", "tables", n)
	}
	return nil
}

// Sync programs st; see proxier.Proxier.
func (p *Proxier) Sync(ctx context.Context, st *proxier.State, ch proxier.Changes) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.k == nil {
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
	b := p.k.begin()
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
	msgs, size := b.size()
	before, genErr := p.k.generation()
	commit := time.Now()
	err := p.k.commit(b)
	stats.Commit = time.Since(commit)
	if err == nil {
		p.trackGeneration(before, genErr, msgs > 0)
	}
	if err != nil {
		// The transaction was not committed, but our record of the tables already moved on:
		// start over from scratch next time.
		p.rebuild = true
		for _, f := range p.fams { // one transaction carries every family
			p.rec.SyncFailed(f.PF)
		}
		return fmt.Errorf("sync nftables: %w", err)
	}
	p.rebuild = false
	stats.Messages, stats.Bytes = msgs, size
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
	after, err := p.k.generation()
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
	gen, err := p.k.generation()
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
	for _, f := range p.fams {
		use, err := p.k.objects(f)
		if err != nil {
			return fmt.Sprintf("table %s %s: %v", f.Name, tableName, err)
		}
		if want := p.tables[f].objects(); use != want {
			return fmt.Sprintf("table %s %s holds %d chains and sets, want %d", f.Name, tableName, use, want)
		}
	}
	for _, f := range p.fams {
		want, sets := p.tables[f].wantCounts()
		got, err := p.k.counts(f, sets)
		if err != nil {
			return fmt.Sprintf("table %s %s: %v", f.Name, tableName, err)
		}
		if d := compareCounts(want, got); d != "" {
			return fmt.Sprintf("table %s %s: %s", f.Name, tableName, d)
		}
	}
	return ""
}
