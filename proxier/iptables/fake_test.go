package iptables

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"

	"nodeagent/proxier"
)

// fakeKernel is a small in-memory iptables for one family: enough of iptables-save and
// iptables-restore --noflush (declare/flush, -A, -I, -X, COMMIT per table) to test what a sync
// leaves behind without root. Like the kernel it refuses rules in missing chains, jumps to missing
// chains and deleting a chain still referenced.
type fakeKernel struct {
	mu       sync.Mutex
	tables   map[string]map[string][]string // table → chain → rules ("-A CHAIN ...")
	restores []string                       // every restore input, in order
	fail     error                          // returned by the next restore
}

var builtins = map[string][]string{
	tableFilter: {"INPUT", "FORWARD", "OUTPUT"},
	tableNAT:    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
}

func newFakeKernel() *fakeKernel {
	k := &fakeKernel{tables: map[string]map[string][]string{}}
	for t, chains := range builtins {
		k.tables[t] = map[string][]string{}
		for _, c := range chains {
			k.tables[t][c] = nil
		}
	}
	return k
}

func (k *fakeKernel) save(table string) string {
	k.mu.Lock()
	defer k.mu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, "*%s\n", table)
	names := slices.Sorted(maps.Keys(k.tables[table]))
	for _, c := range names {
		policy := "-"
		if slices.Contains(builtins[table], c) {
			policy = "ACCEPT"
		}
		fmt.Fprintf(&b, ":%s %s [0:0]\n", c, policy)
	}
	for _, c := range names {
		for _, r := range k.tables[table][c] {
			b.WriteString(r + "\n")
		}
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// restore applies input; each table's changes land at its COMMIT, or not at all.
func (k *fakeKernel) restore(input string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.restores = append(k.restores, input)
	if err := k.fail; err != nil {
		k.fail = nil
		return err
	}
	var table string
	var work map[string][]string
	for n, l := range strings.Split(strings.TrimRight(input, "\n"), "\n") {
		fail := func(format string, a ...any) error {
			return fmt.Errorf("line %d %q: %s", n+1, l, fmt.Sprintf(format, a...))
		}
		words := splitWords(l)
		switch {
		case l == "" || strings.HasPrefix(l, "#"):
		case l == "-S": // lists, changes nothing
		case strings.HasPrefix(l, "*"):
			table = l[1:]
			work = map[string][]string{}
			for c, rs := range k.tables[table] {
				work[c] = slices.Clone(rs)
			}
		case l == "COMMIT":
			for c, rs := range work {
				for _, r := range rs {
					if t := target(r); strings.HasPrefix(t, chainPrefix) {
						if _, ok := work[t]; !ok {
							return fail("chain %s: jump to missing chain %s", c, t)
						}
					}
				}
			}
			k.tables[table] = work
		case strings.HasPrefix(l, ":"):
			work[strings.Fields(l[1:])[0]] = nil
		case words[0] == "-A" || words[0] == "-I":
			if _, ok := work[words[1]]; !ok {
				return fail("no chain %s", words[1])
			}
			if words[0] == "-A" {
				work[words[1]] = append(work[words[1]], l)
			} else {
				r := line(append([]string{"-A", words[1]}, quoteWords(words[3:])...)...)
				work[words[1]] = append([]string{r}, work[words[1]]...)
			}
		case words[0] == "-X":
			for c, rs := range work {
				for _, r := range rs {
					if target(r) == words[1] {
						return fail("chain %s still referenced from %s", words[1], c)
					}
				}
			}
			if _, ok := work[words[1]]; !ok {
				return fail("no chain %s", words[1])
			}
			delete(work, words[1])
		default:
			return fail("unsupported")
		}
	}
	return nil
}

func target(rule string) string {
	w := splitWords(rule)
	for i := range w {
		if w[i] == "-j" && i+1 < len(w) {
			return w[i+1]
		}
	}
	return ""
}

func quoteWords(ws []string) []string {
	out := make([]string, len(ws))
	for i, w := range ws {
		if strings.ContainsAny(w, " \"") {
			w = `"` + strings.ReplaceAll(w, `"`, `\"`) + `"`
		}
		out[i] = w
	}
	return out
}

func (k *fakeKernel) delete(table, chain string, spec []string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	r := line(append([]string{"-A", chain}, quoteWords(spec)...)...)
	i := slices.Index(k.tables[table][chain], r)
	if i < 0 {
		return fmt.Errorf("delete from %s %s: no rule %q", table, chain, r)
	}
	k.tables[table][chain] = slices.Delete(k.tables[table][chain], i, i+1)
	return nil
}

// chains returns our chains of a table with their rule counts.
func (k *fakeKernel) chains(table string) map[string]int {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := map[string]int{}
	for c, rs := range k.tables[table] {
		if strings.HasPrefix(c, chainPrefix) {
			out[c] = len(rs)
		}
	}
	return out
}

func (k *fakeKernel) rules(table, chain string) []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.tables[table][chain])
}

// fakeHost routes commands to one fakeKernel per family.
type fakeHost struct {
	v4, v6 *fakeKernel
}

func newFakeHost() *fakeHost { return &fakeHost{v4: newFakeKernel(), v6: newFakeKernel()} }

func (h *fakeHost) kernel(f proxier.Family) *fakeKernel {
	if f == proxier.IPv6 {
		return h.v6
	}
	return h.v4
}

func (h *fakeHost) Run(_ context.Context, name string, args []string, stdin []byte, stdout io.Writer) error {
	k := h.v4
	if strings.HasPrefix(name, "ip6tables") {
		k = h.v6
	}
	switch {
	case strings.HasSuffix(name, "-save") && len(args) == 2 && args[0] == "-t":
		_, err := io.WriteString(stdout, k.save(args[1]))
		return err
	case strings.HasSuffix(name, "-restore"):
		if !slices.Contains(args, "--noflush") {
			return errors.New("restore without --noflush would flush foreign rules")
		}
		return k.restore(string(stdin))
	}
	return fmt.Errorf("fake host: unexpected command %s %v", name, args)
}

func (h *fakeHost) options() Options {
	return Options{
		Families: []proxier.Family{proxier.IPv4, proxier.IPv6},
		Exec:     h,
		Rules:    func(f proxier.Family) (Rules, error) { return fakeRules{k: h.kernel(f)}, nil },
		Sysctl:   &fakeSysctl{values: map[string]string{routeLocalnet: "0"}},
	}
}
