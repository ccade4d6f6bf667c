// Package iptables is the iptables proxy mode: kube-proxy's iptables rules, in chains named NA-*,
// applied with one iptables-restore --noflush per family and sync.
//
// A sync renders every service port into its own chains (NA-SVC-, NA-SVL-, NA-EXT-, NA-FW-,
// NA-SEP-) plus its rules in the shared dispatch chains (NA-SERVICES, NA-NODEPORTS, ...). A partial
// sync reuses the rendering of unchanged service ports and writes only the chains of changed ones,
// the dispatch chains whose content changed, and deletes the chains of removed ones. A full sync
// reads iptables-save first, reports chains that changed behind its back, rewrites every chain,
// deletes NA- chains it no longer wants (also leftovers of an earlier run) and restores missing
// jump rules in the built-in chains.
package iptables

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"

	"nodeagent/proxier"
)

// ConntrackCleaner removes conntrack entries made stale by a sync; *conntrack.Cleaner is one.
type ConntrackCleaner interface {
	Clean(st *proxier.State, ch proxier.Changes) error
}

// Options configure a Proxier.
type Options struct {
	// Log defaults to slog.Default().
	Log *slog.Logger
	// Families to program. Empty: every family whose iptables binary exists on this host.
	Families []proxier.Family
	// Exec runs iptables-save and iptables-restore. Nil: CommandExec{} (this network namespace).
	Exec Exec
	// Rules returns single-rule access for a family, used for the jump rules in the built-in
	// chains. Nil: GoIPTables(f, "").
	Rules func(f proxier.Family) (Rules, error)
	// Conntrack, when set, is called after every successful Sync with the new state. Nil: no
	// conntrack cleanup (the caller must pass one for UDP/SCTP services to fail over promptly).
	Conntrack ConntrackCleaner
	// Recorder receives restore failures and rule counts for metrics. Nil: none.
	Recorder proxier.Recorder

	// Sysctl sets route_localnet when the state asks for localhost node ports
	// (Config.LocalhostNodePorts). Nil: ProcSysctl{} (this network namespace).
	Sysctl Sysctl
}

// Proxier programs a proxier.State into iptables. It is safe for concurrent use.
type Proxier struct {
	log       *slog.Logger
	exec      Exec
	conntrack ConntrackCleaner
	rec       proxier.Recorder
	sysctl    Sysctl

	mu   sync.Mutex
	fams []*family
	// localnetSet: route_localnet is known to be 1; localnetFailed: setting it failed (logged).
	localnetSet, localnetFailed bool
	// repairs counts full syncs that found our rules changed by someone else and rewrote them.
	repairs atomic.Uint64
}

var _ proxier.Proxier = (*Proxier)(nil)

// Repairs counts the full syncs that found our chains or jump rules changed by someone else and
// rewrote them.
func (p *Proxier) Repairs() uint64 { return p.repairs.Load() }

// family is the per-family half of the Proxier, with what it last programmed.
type family struct {
	family      proxier.Family
	rules       Rules // nil when rulesErr is set
	rulesErr    error
	randomFully bool
	wait        bool

	needFull bool
	// cache is the rendering of every service port as last programmed.
	cache map[proxier.ServicePortName]*serviceRules
	// written is every chain of ours as last programmed, ruleCounts their rules per table.
	written    map[chainID][]string
	ruleCounts map[string]int
	// settings are the renderer settings cache was made with.
	settings string
	// lastWrite is the chains written by the last restore, for tests and debugging; lastRules
	// their rules per table.
	lastWrite []string
	lastRules map[string]int
}

// New returns a Proxier. It runs no kernel command: it only looks for the iptables binaries
// (through go-iptables) to learn which families are available and what they support.
func New(opts Options) (*Proxier, error) {
	p := &Proxier{log: opts.Log, exec: opts.Exec, conntrack: opts.Conntrack, rec: opts.Recorder}
	if p.log == nil {
		p.log = slog.Default()
	}
	if p.rec == nil {
		p.rec = proxier.NopRecorder{}
	}
	if p.sysctl = opts.Sysctl; p.sysctl == nil {
		p.sysctl = ProcSysctl{}
	}
	if p.exec == nil {
		p.exec = CommandExec{}
	}
	rulesFor := opts.Rules
	if rulesFor == nil {
		rulesFor = func(f proxier.Family) (Rules, error) { return GoIPTables(f, "") }
	}
	detect := len(opts.Families) == 0
	for _, f := range proxier.Families {
		if !detect && !slices.Contains(opts.Families, f) {
			continue
		}
		fp := &family{family: f, needFull: true, randomFully: true, wait: true}
		r, err := rulesFor(f)
		if err != nil {
			if detect {
				p.log.Info("iptables mode: family not available", "family", f.String(), "err", err)
				continue
			}
			// Asked for explicitly: Render still works, Sync and Cleanup report the error.
			fp.rulesErr = err
		} else {
			fp.rules = r
			fp.randomFully = r.HasRandomFully()
			v1, v2, v3 := r.GetIptablesVersion()
			fp.wait = v1 > 1 || (v1 == 1 && (v2 > 6 || (v2 == 6 && v3 >= 2)))
		}
		p.fams = append(p.fams, fp)
	}
	if len(p.fams) == 0 {
		return nil, errors.New("iptables mode: neither iptables nor ip6tables found")
	}
	return p, nil
}

// Sync implements proxier.Proxier.
func (p *Proxier) Sync(ctx context.Context, st *proxier.State, ch proxier.Changes) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	// After a failed sync the cleaner has not seen that sync's changes either.
	clean := ch
	for _, fp := range p.fams {
		clean.Full = clean.Full || fp.needFull
	}
	for _, fp := range p.fams {
		if err := p.syncFamily(ctx, fp, st, ch); err != nil {
			fp.needFull = true
			errs = append(errs, fmt.Errorf("sync %s iptables rules: %w", fp.family, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if p.conntrack != nil {
		// The rules are in place; a failure here is retried by the cleaner on its next call and
		// must not make the runner believe the rules failed.
		if err := p.conntrack.Clean(st, clean); err != nil {
			p.log.Warn("conntrack cleanup failed", "err", err)
		}
	}
	return nil
}

func (p *Proxier) syncFamily(ctx context.Context, fp *family, st *proxier.State, ch proxier.Changes) error {
	if fp.rulesErr != nil {
		return fp.rulesErr
	}
	r := newRenderer(st, fp.family, fp.randomFully)
	if r.localhostNodePorts && !p.ensureRouteLocalnet(ch.Full || fp.needFull) {
		r.localhostNodePorts = false
	}
	settings := r.settings()
	// Cached renderings are only valid for the settings they were made with; a caller that
	// changes node or config without Changes.Full still gets a full sync.
	full := ch.Full || fp.needFull || settings != fp.settings
	// A periodic resync over rules this proxier wrote with these settings reads the kernel
	// first and rewrites everything only when something drifted.
	verify := full && ch.Periodic && !fp.needFull && settings == fp.settings && fp.written != nil
	var kernel *saved
	if verify {
		var err error
		if kernel, err = p.save(ctx, fp.family); err != nil {
			return err
		}
		if drifted, jumpsOff := drift(fp.written, kernel); len(drifted) == 0 && jumpsOff == 0 {
			full = false
		}
	}
	sps := st.ForFamily(fp.family)
	rendered := make([]*serviceRules, len(sps))
	var changed []int // indexes of sps rendered anew
	cached := 0       // service ports of sps found in fp.cache
	for i, sp := range sps {
		c, ok := fp.cache[sp.Name]
		if ok {
			cached++
		}
		if ok && !full && !ch.Services[sp.Name.NamespacedName] && !(ch.Full && !ch.Periodic) {
			rendered[i] = c
			continue
		}
		rendered[i] = r.service(sp)
		changed = append(changed, i)
	}
	base := r.baseChains(rendered)
	if full {
		if err := p.syncFull(ctx, fp, sps, rendered, base, kernel); err != nil {
			return err
		}
	} else if err := p.syncPartial(ctx, fp, sps, rendered, changed, cached, base); err != nil {
		p.rec.PartialSyncFailed(fp.family)
		return err
	}
	fp.needFull, fp.settings = false, settings
	for _, table := range []string{tableFilter, tableNAT} {
		p.rec.IPTablesRules(fp.family, table, fp.ruleCounts[table], fp.lastRules[table])
	}
	return nil
}

// ruleCounts counts the rules in, per table, writes (kube-proxy's sync_proxy_rules_iptables_last).
func (in *restoreInput) ruleCounts() map[string]int {
	out := map[string]int{}
	for _, c := range in.write {
		out[c.id.table] += len(c.rules)
	}
	return out
}

// Families returns the families this proxier programs.
func (p *Proxier) Families() []proxier.Family {
	out := make([]proxier.Family, len(p.fams))
	for i, fp := range p.fams {
		out[i] = fp.family
	}
	return out
}

// syncFull reads our chains from the kernel (unless kernel holds them already), rewrites every
// one of them, deletes those no longer wanted and restores the jump rules.
func (p *Proxier) syncFull(ctx context.Context, fp *family, sps []*proxier.ServicePort, rendered []*serviceRules, base []chain, kernel *saved) error {
	if kernel == nil {
		var err error
		if kernel, err = p.save(ctx, fp.family); err != nil {
			return err
		}
	}
	if fp.written != nil {
		p.reportDrift(fp, kernel)
	}
	written := make(map[chainID][]string, len(kernel.chains)+len(base))
	ruleCounts := map[string]int{}
	in := &restoreInput{write: base}
	for _, s := range rendered {
		in.write = append(in.write, s.own...)
	}
	for _, c := range in.write {
		written[c.id] = c.rules
		ruleCounts[c.id.table] += len(c.rules)
	}
	for id := range kernel.chains {
		if _, ok := written[id]; !ok {
			in.remove = append(in.remove, id)
		}
	}
	slices.SortFunc(in.remove, compareIDs)
	in.chooseListAll(kernel.ruleCounts())
	fp.lastWrite, fp.lastRules = in.chainNames(), in.ruleCounts()
	if err := p.insertJumps(ctx, fp, kernel); err != nil {
		return err
	}
	if err := p.restore(ctx, fp, in.bytes()); err != nil {
		return err
	}
	if err := p.deleteDuplicateJumps(fp, kernel); err != nil {
		return err
	}
	cache := make(map[proxier.ServicePortName]*serviceRules, len(sps))
	for i, sp := range sps {
		cache[sp.Name] = rendered[i]
	}
	fp.written, fp.ruleCounts, fp.cache = written, ruleCounts, cache
	return nil
}

// syncPartial writes the chains of the changed service ports and the dispatch chains whose
// content changed, and deletes the chains no service port owns any more. Its work follows the
// number of changed service ports, not of chains: the unchanged ones cost one map lookup.
func (p *Proxier) syncPartial(ctx context.Context, fp *family, sps []*proxier.ServicePort, rendered []*serviceRules, changed []int, cached int, base []chain) error {
	in := &restoreInput{}
	for _, c := range base {
		if old, ok := fp.written[c.id]; !ok || !slices.Equal(old, c.rules) {
			in.write = append(in.write, c)
		}
	}
	owned := map[chainID]bool{}
	var previous []*serviceRules // renderings replaced or gone
	for _, i := range changed {
		for _, c := range rendered[i].own {
			owned[c.id] = true
			if old, ok := fp.written[c.id]; !ok || !slices.Equal(old, c.rules) {
				in.write = append(in.write, c)
			}
		}
		if old, ok := fp.cache[sps[i].Name]; ok {
			previous = append(previous, old)
		}
	}
	var gone []proxier.ServicePortName
	if cached != len(fp.cache) {
		present := make(map[proxier.ServicePortName]bool, len(sps))
		for _, sp := range sps {
			present[sp.Name] = true
		}
		for n, old := range fp.cache {
			if !present[n] {
				gone = append(gone, n)
				previous = append(previous, old)
			}
		}
	}
	for _, old := range previous {
		for _, c := range old.own {
			if _, ok := fp.written[c.id]; ok && !owned[c.id] {
				in.remove = append(in.remove, c.id)
			}
		}
	}
	slices.SortFunc(in.remove, compareIDs)
	in.remove = slices.Compact(in.remove)
	in.chooseListAll(fp.ruleCounts)
	fp.lastWrite, fp.lastRules = in.chainNames(), in.ruleCounts()
	if !in.empty() {
		if err := p.restore(ctx, fp, in.bytes()); err != nil {
			return err
		}
	}
	for _, c := range in.write {
		fp.ruleCounts[c.id.table] += len(c.rules) - len(fp.written[c.id])
		fp.written[c.id] = c.rules
	}
	for _, id := range in.remove {
		fp.ruleCounts[id.table] -= len(fp.written[id])
		delete(fp.written, id)
	}
	for _, i := range changed {
		fp.cache[sps[i].Name] = rendered[i]
	}
	for _, n := range gone {
		delete(fp.cache, n)
	}
	return nil
}

func compareIDs(a, b chainID) int {
	return cmp.Or(cmp.Compare(a.table, b.table), cmp.Compare(a.name, b.name))
}

// reportDrift logs (once per full sync, only when something is off) what drift found. The full
// sync that follows repairs it.
func (p *Proxier) reportDrift(fp *family, kernel *saved) {
	drifted, jumpsOff := drift(fp.written, kernel)
	if len(drifted) == 0 && jumpsOff == 0 {
		return
	}
	p.repairs.Add(1)
	shown := drifted
	if len(shown) > 5 {
		shown = shown[:5]
	}
	p.log.Warn("iptables rules changed outside the agent; rewriting them", "family", fp.family.String(),
		"chains", len(drifted), "first", shown, "jumpRulesOff", jumpsOff)
}

// drift lists our chains that are missing from the kernel or hold a different number of rules
// than written (someone flushed or edited them), and counts jump rules not present exactly once.
// Rules are counted rather than compared because iptables-save prints them in its own canonical
// form (matches reordered, /32 added, MARK --or-mark shown as --set-xmark, ...).
func drift(written map[chainID][]string, kernel *saved) (chains []string, jumpsOff int) {
	for id, rules := range written {
		got, ok := kernel.chains[id]
		if !ok || len(got) != len(rules) {
			chains = append(chains, id.String())
		}
	}
	slices.Sort(chains)
	for _, j := range jumps {
		if kernel.jumpCount(j) != 1 {
			jumpsOff++
		}
	}
	return chains, jumpsOff
}

// insertJumps puts the missing jump rules at the top of the built-in chains, creating the chains
// they jump to where those do not exist yet, in one restore of its own before the big one. Any
// transaction that adds rules makes nf_tables revalidate every chain reachable from the table's
// built-in chains; while our chains are still empty (a first sync) that is nothing, whereas after
// the big restore each jump rule inserted on its own cost a walk of the whole table (5,000
// services: 0.6 s for the twelve). It cannot join the big restore: iptables-nft's -I position 1
// fails on an empty built-in chain once -S has made it load every rule.
func (p *Proxier) insertJumps(ctx context.Context, fp *family, kernel *saved) error {
	in := &restoreInput{}
	created := map[chainID]bool{}
	for _, j := range jumps {
		if kernel.jumpCount(j) > 0 {
			continue
		}
		in.jumps = append(in.jumps, j)
		id := chainID{j.table, j.to}
		if _, ok := kernel.chains[id]; !ok && !created[id] {
			// Declaring a chain flushes it: only those that do not exist.
			created[id] = true
			in.write = append(in.write, chain{id: id})
		}
	}
	if in.empty() {
		return nil
	}
	if err := p.restore(ctx, fp, in.bytes()); err != nil {
		return fmt.Errorf("insert jump rules: %w", err)
	}
	return nil
}

// deleteDuplicateJumps removes all but one of each jump rule found more than once.
func (p *Proxier) deleteDuplicateJumps(fp *family, kernel *saved) error {
	for _, j := range jumps {
		for n := kernel.jumpCount(j); n > 1; n-- {
			if err := fp.rules.Delete(j.table, j.from, j.spec()...); err != nil {
				return fmt.Errorf("delete duplicate jump %s %s -> %s: %w", j.table, j.from, j.to, err)
			}
		}
	}
	return nil
}

func (p *Proxier) save(ctx context.Context, f proxier.Family) (*saved, error) {
	s := newSaved()
	var out bytes.Buffer
	for _, table := range []string{tableFilter, tableNAT} {
		out.Reset()
		if err := p.exec.Run(ctx, binary(f, "-save"), []string{"-t", table}, nil, &out); err != nil {
			return nil, fmt.Errorf("read %s table: %w", table, err)
		}
		s.parse(out.Bytes())
	}
	return s, nil
}

func (p *Proxier) restore(ctx context.Context, fp *family, input []byte) error {
	args := []string{"--noflush"}
	if fp.wait {
		args = append(args, "-w", "5")
	}
	if err := p.exec.Run(ctx, binary(fp.family, "-restore"), args, input, nil); err != nil {
		p.rec.RestoreFailed(fp.family)
		return fmt.Errorf("restore: %w", err)
	}
	return nil
}

// Render implements proxier.Proxier: per family, a "# IPv4" / "# IPv6" line and the
// iptables-restore --noflush input a first full sync into an empty namespace would apply,
// jump rules included.
func (p *Proxier) Render(w io.Writer, st *proxier.State) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, fp := range p.fams {
		r := newRenderer(st, fp.family, fp.randomFully)
		in := &restoreInput{jumps: jumps}
		var rendered []*serviceRules
		for _, sp := range st.ForFamily(fp.family) {
			rendered = append(rendered, r.service(sp))
		}
		in.write = r.baseChains(rendered)
		for _, s := range rendered {
			in.write = append(in.write, s.own...)
		}
		if _, err := fmt.Fprintf(w, "# %s\n%s", fp.family, in.bytes()); err != nil {
			return fmt.Errorf("render %s: %w", fp.family, err)
		}
	}
	return nil
}

// Cleanup implements proxier.Proxier: in every family it deletes the jump rules carrying our
// comment from the built-in chains, then flushes and deletes every NA- chain of the nat and filter
// tables. Nothing else is touched.
func (p *Proxier) Cleanup(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for _, fp := range p.fams {
		fp.needFull, fp.written, fp.cache = true, nil, nil
		if err := p.cleanupFamily(ctx, fp); err != nil {
			errs = append(errs, fmt.Errorf("clean up %s iptables rules: %w", fp.family, err))
		}
	}
	return errors.Join(errs...)
}

func (p *Proxier) cleanupFamily(ctx context.Context, fp *family) error {
	if fp.rulesErr != nil {
		return fp.rulesErr
	}
	kernel, err := p.save(ctx, fp.family)
	if err != nil {
		return err
	}
	for _, j := range kernel.jumps {
		if err := fp.rules.Delete(j.table, j.chain, j.args...); err != nil {
			return fmt.Errorf("delete jump %s %s -> %s: %w", j.table, j.chain, j.target, err)
		}
	}
	in := &restoreInput{}
	for id := range kernel.chains {
		in.remove = append(in.remove, id)
	}
	if in.empty() {
		return nil
	}
	slices.SortFunc(in.remove, compareIDs)
	in.chooseListAll(kernel.ruleCounts())
	return p.restore(ctx, fp, in.bytes())
}
