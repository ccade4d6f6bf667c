package nftables

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"nodeagent/proxier/nft"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"nodeagent/proxier"
)

// fakeKernel is kernel without a kernel, for unit tests that run without root: it keeps each
// family's table as nft text, applies a transaction all or nothing with the checks of the
// kernel that partial syncs depend on (what is flushed or deleted exists, a chain or set is
// deleted only when nothing refers to it, what a rule or verdict refers to exists, an element
// is not added twice with different values), and records every committed transaction as nft
// commands. Dump renders the tables as commands in a fixed order, the shape of knftables'
// Fake.Dump, so that two tables built different ways compare as text.
type fakeKernel struct {
	tables map[string]*fakeTable // by family name: "ip", "ip6"
	gen    uint32
	// txs holds the commands of every committed transaction that had any.
	txs [][]string
	// failNext, when set, makes the next commit fail with it and commit nothing.
	failNext error
}

var _ kernel = (*fakeKernel)(nil)

type fakeTable struct {
	chains map[string]*fakeChain
	sets   map[string]*fakeSet
}

type fakeChain struct {
	hook  string // "" or "{ type nat hook prerouting priority -100 ; }"
	rules []string
}

type fakeSet struct {
	decl  string            // "set NAME { ... }" or "map NAME { ... }"
	elems map[string]string // key -> value ("" in a plain set)
}

func newFakeKernel() *fakeKernel { return &fakeKernel{tables: map[string]*fakeTable{}} }

func (t *fakeTable) clone() *fakeTable {
	c := &fakeTable{chains: map[string]*fakeChain{}, sets: map[string]*fakeSet{}}
	for n, ch := range t.chains {
		c.chains[n] = &fakeChain{hook: ch.hook, rules: slices.Clone(ch.rules)}
	}
	for n, s := range t.sets {
		c.sets[n] = &fakeSet{decl: s.decl, elems: maps.Clone(s.elems)}
	}
	return c
}

// fakeOp is one command of a transaction and its effect on the tables.
type fakeOp struct {
	text  string
	apply func(tables map[string]*fakeTable) error
}

type fakeTx struct{ ops []fakeOp }

var _ tx = (*fakeTx)(nil)

func (k *fakeKernel) begin() tx { return &fakeTx{} }

func (k *fakeKernel) commit(t tx) error {
	ft := t.(*fakeTx)
	if len(ft.ops) == 0 {
		return nil // as the netlink kernel: an empty transaction is not sent
	}
	if err := k.failNext; err != nil {
		k.failNext = nil
		return err
	}
	work := map[string]*fakeTable{}
	for n, tb := range k.tables {
		work[n] = tb.clone()
	}
	var errs []error
	cmds := make([]string, len(ft.ops))
	for i, op := range ft.ops {
		cmds[i] = op.text
		if err := op.apply(work); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", op.text, err))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	k.tables = work
	k.gen++
	k.txs = append(k.txs, cmds)
	return nil
}

// last returns the commands of the last committed transaction.
func (k *fakeKernel) last() []string {
	if len(k.txs) == 0 {
		return nil
	}
	return k.txs[len(k.txs)-1]
}

// edit changes the tables behind the proxier's back, as another program would.
func (k *fakeKernel) edit(fn func(tables map[string]*fakeTable)) {
	fn(k.tables)
	k.gen++
}

func (k *fakeKernel) generation() (uint32, error) { return k.gen, nil }

func (k *fakeKernel) objects(f *nft.Family) (int, error) {
	t := k.tables[f.Name]
	if t == nil {
		return 0, syscall.ENOENT
	}
	return len(t.chains) + len(t.sets), nil
}

func (k *fakeKernel) counts(f *nft.Family, sets []string) (kernelCounts, error) {
	kc := kernelCounts{rules: map[string]int{}, elems: map[string]int{}}
	t := k.tables[f.Name]
	if t == nil {
		return kc, syscall.ENOENT
	}
	for n, c := range t.chains {
		if len(c.rules) > 0 {
			kc.rules[n] = len(c.rules)
		}
	}
	for _, n := range sets {
		s := t.sets[n]
		if s == nil {
			return kc, fmt.Errorf("list elements of %s: %w", n, syscall.ENOENT)
		}
		kc.elems[n] = len(s.elems)
	}
	return kc, nil
}

func (k *fakeKernel) deleteTables() (int, error) {
	n := len(k.tables)
	if n > 0 {
		k.tables = map[string]*fakeTable{}
		k.gen++
	}
	return n, nil
}

func (k *fakeKernel) close() error { return nil }

// Dump renders the tables as nft commands: per family the table, its chains and sets by name,
// the rules of each chain in order, and the elements of each set sorted.
func (k *fakeKernel) Dump() string {
	var b strings.Builder
	for _, fam := range slices.Sorted(maps.Keys(k.tables)) {
		t := k.tables[fam]
		prefix := fam + " " + tableName + " "
		b.WriteString("add table " + fam + " " + tableName + "\n")
		chains := slices.Sorted(maps.Keys(t.chains))
		for _, n := range chains {
			b.WriteString("add chain " + prefix + n + t.chains[n].hook + "\n")
		}
		sets := slices.Sorted(maps.Keys(t.sets))
		for _, n := range sets {
			b.WriteString("add " + t.sets[n].decl + "\n")
		}
		for _, n := range chains {
			for _, r := range t.chains[n].rules {
				b.WriteString("add rule " + prefix + n + " " + r + "\n")
			}
		}
		for _, n := range sets {
			s := t.sets[n]
			for _, key := range slices.Sorted(maps.Keys(s.elems)) {
				b.WriteString("add element " + prefix + n + " { " + elemText(key, s.elems[key]) + " }\n")
			}
		}
	}
	return b.String()
}

func elemText(key, val string) string {
	if val == "" {
		return key
	}
	return key + " : " + val
}

// refs returns the chains (jump, goto) and sets (@name) that a rule or verdict refers to.
func refs(text string) (chains, sets []string) {
	words := strings.Fields(text)
	for i, w := range words {
		if (w == "jump" || w == "goto") && i+1 < len(words) {
			chains = append(chains, words[i+1])
		}
		if strings.HasPrefix(w, "@") {
			sets = append(sets, strings.TrimPrefix(w, "@"))
		}
	}
	return chains, sets
}

// referrers returns what in t refers to chain (chain true) or set name.
func (t *fakeTable) referrers(name string, chain bool) []string {
	var out []string
	for cn, c := range t.chains {
		for _, r := range c.rules {
			cs, ss := refs(r)
			if (chain && slices.Contains(cs, name) && cn != name) || (!chain && slices.Contains(ss, name)) {
				out = append(out, "rule in "+cn)
			}
		}
	}
	if chain {
		for sn, s := range t.sets {
			for _, v := range s.elems {
				if cs, _ := refs(v); slices.Contains(cs, name) {
					out = append(out, "element of "+sn)
				}
			}
		}
	}
	return out
}

// checkRefs fails unless the chains and sets that text refers to exist in t.
func (t *fakeTable) checkRefs(text string) error {
	cs, ss := refs(text)
	for _, c := range cs {
		if t.chains[c] == nil {
			return fmt.Errorf("chain %s: %w", c, syscall.ENOENT)
		}
	}
	for _, s := range ss {
		if t.sets[s] == nil {
			return fmt.Errorf("set %s: %w", s, syscall.ENOENT)
		}
	}
	return nil
}

func (x *fakeTx) op(text string, fam string, apply func(t *fakeTable) error) {
	x.ops = append(x.ops, fakeOp{text: text, apply: func(tables map[string]*fakeTable) error {
		t := tables[fam]
		if t == nil {
			return fmt.Errorf("table %s %s: %w", fam, tableName, syscall.ENOENT)
		}
		return apply(t)
	}})
}

func (x *fakeTx) addTable(f *nft.Family) {
	x.ops = append(x.ops, fakeOp{text: "add table " + f.Name + " " + tableName, apply: func(tables map[string]*fakeTable) error {
		if tables[f.Name] == nil {
			tables[f.Name] = &fakeTable{chains: map[string]*fakeChain{}, sets: map[string]*fakeSet{}}
		}
		return nil
	}})
}

func (x *fakeTx) delTable(f *nft.Family) {
	x.ops = append(x.ops, fakeOp{text: "delete table " + f.Name + " " + tableName, apply: func(tables map[string]*fakeTable) error {
		if tables[f.Name] == nil {
			return fmt.Errorf("table %s %s: %w", f.Name, tableName, syscall.ENOENT)
		}
		delete(tables, f.Name)
		return nil
	}})
}

func (x *fakeTx) addSet(f *nft.Family, s *nft.Set) {
	kw := "set"
	if s.IsMap || s.Endpoints {
		kw = "map"
	}
	decl := kw + " " + f.Name + " " + tableName + " " + s.Name + " { " + s.TypeText(f) + " ;"
	if s.Timeout > 0 {
		decl += " flags dynamic,timeout ; timeout " + strconv.Itoa(int(s.Timeout.Seconds())) + "s ;"
	}
	if s.Comment != "" {
		decl += " comment " + strconv.Quote(s.Comment) + " ;"
	}
	decl += " }"
	x.op("add "+decl, f.Name, func(t *fakeTable) error {
		if t.sets[s.Name] == nil {
			t.sets[s.Name] = &fakeSet{decl: decl, elems: map[string]string{}}
		}
		return nil
	})
}

func (x *fakeTx) delSet(f *nft.Family, name string) {
	x.op("delete set "+f.Name+" "+tableName+" "+name, f.Name, func(t *fakeTable) error {
		if t.sets[name] == nil {
			return syscall.ENOENT
		}
		if r := t.referrers(name, false); len(r) > 0 {
			return fmt.Errorf("%w: used by %s", syscall.EBUSY, strings.Join(r, ", "))
		}
		delete(t.sets, name)
		return nil
	})
}

func (x *fakeTx) addChain(f *nft.Family, c *nft.Chain) {
	hook := ""
	if h := c.Hook; h != nil {
		hook = " { type " + h.Type + " hook " + nft.HookNames[h.Hooknum] + " priority " + strconv.Itoa(int(h.Priority)) + " ; }"
	}
	x.op("add chain "+f.Name+" "+tableName+" "+c.Name+hook, f.Name, func(t *fakeTable) error {
		if t.chains[c.Name] == nil {
			t.chains[c.Name] = &fakeChain{hook: hook}
		}
		return nil
	})
}

func (x *fakeTx) flushChain(f *nft.Family, name string) {
	x.op("flush chain "+f.Name+" "+tableName+" "+name, f.Name, func(t *fakeTable) error {
		c := t.chains[name]
		if c == nil {
			return syscall.ENOENT
		}
		c.rules = nil
		return nil
	})
}

func (x *fakeTx) delChain(f *nft.Family, name string) {
	x.op("delete chain "+f.Name+" "+tableName+" "+name, f.Name, func(t *fakeTable) error {
		if t.chains[name] == nil {
			return syscall.ENOENT
		}
		// As the kernel: a chain's own rules go with it, references from elsewhere keep it.
		if r := t.referrers(name, true); len(r) > 0 {
			return fmt.Errorf("%w: used by %s", syscall.EBUSY, strings.Join(r, ", "))
		}
		delete(t.chains, name)
		return nil
	})
}

func (x *fakeTx) addRule(f *nft.Family, chainName string, r nft.Rule) {
	text := string(nft.AppendRule(nil, f, r))
	x.op("add rule "+f.Name+" "+tableName+" "+chainName+" "+text, f.Name, func(t *fakeTable) error {
		c := t.chains[chainName]
		if c == nil {
			return fmt.Errorf("chain %s: %w", chainName, syscall.ENOENT)
		}
		if err := t.checkRefs(text); err != nil {
			return err
		}
		c.rules = append(c.rules, text)
		return nil
	})
}

func (x *fakeTx) elements(f *nft.Family, s *nft.Set, n int, at func(i int) element, del bool) {
	for i := range n {
		e := at(i)
		key := string(nft.AppendKey(nil, s.Kind, e.key))
		var val string
		switch {
		case del:
		case s.IsMap:
			val = string(e.val.AppendText(nil, f))
		case s.Endpoints:
			val = string(nft.AppendEndpoint(nil, e.to))
		}
		prefix := f.Name + " " + tableName + " " + s.Name
		if del {
			x.op("delete element "+prefix+" { "+key+" }", f.Name, func(t *fakeTable) error {
				st := t.sets[s.Name]
				if st == nil {
					return fmt.Errorf("set %s: %w", s.Name, syscall.ENOENT)
				}
				if _, ok := st.elems[key]; !ok {
					return syscall.ENOENT
				}
				delete(st.elems, key)
				return nil
			})
			continue
		}
		x.op("add element "+prefix+" { "+elemText(key, val)+" }", f.Name, func(t *fakeTable) error {
			st := t.sets[s.Name]
			if st == nil {
				return fmt.Errorf("set %s: %w", s.Name, syscall.ENOENT)
			}
			if err := t.checkRefs(val); err != nil {
				return err
			}
			if old, ok := st.elems[key]; ok && old != val {
				return fmt.Errorf("%w: holds %q", syscall.EEXIST, old)
			}
			st.elems[key] = val
			return nil
		})
	}
}

// size counts a command a message, and the commands' text as bytes.
func (x *fakeTx) size() (msgs, bytes int) {
	for _, op := range x.ops {
		bytes += len(op.text)
	}
	return len(x.ops), bytes
}

// newFakeProxier returns a Proxier over a fake kernel.
func newFakeProxier(t testing.TB, fams ...proxier.Family) (*Proxier, *fakeKernel) {
	t.Helper()
	k := newFakeKernel()
	p := newWithKernel(Options{Families: fams, Log: slog.New(slog.DiscardHandler)}, k)
	t.Cleanup(func() { p.Close() })
	return p, k
}

// fullDump is what a fresh proxier programs for st in one full sync.
func fullDump(t testing.TB, st *proxier.State, fams ...proxier.Family) string {
	t.Helper()
	p, k := newFakeProxier(t, fams...)
	mustSync(t, p, st, proxier.Changes{Full: true})
	return k.Dump()
}

// assertLikeFullSync fails unless k holds what a full sync of st into an empty kernel programs.
func assertLikeFullSync(t *testing.T, k *fakeKernel, st *proxier.State, fams ...proxier.Family) {
	t.Helper()
	if got, want := k.Dump(), fullDump(t, st, fams...); got != want {
		t.Fatalf("tables differ from a full sync's:\n%s", lineDiff(want, got))
	}
}
