package iptables

import (
	"bytes"
	"strings"
)

// restoreInput is one iptables-restore --noflush call for one family. With --noflush, declaring
// a chain creates it or flushes it; chains not mentioned, ours or anyone's, are left alone.
type restoreInput struct {
	write  []chain   // chains declared and refilled
	remove []chainID // chains flushed and deleted (after every rule is written, so no reference is left)
	jumps  []jump    // jump rules inserted at the top of built-in chains (Render's view of a first sync)
	// listAll holds the tables whose section starts with -S; see chooseListAll.
	listAll map[string]bool
}

// Costs of iptables-nft's restore, measured with iptables 1.8.9 (nf_tables) on kernel 6.18.
//
// For each command of a table section, iptables-nft inserts the chain it names and the chain it
// jumps to into a sorted linked list of chain names (nft-cache.c, cache_chain_list_insert), walking
// the list from the start, and at COMMIT it asks the kernel for each listed chain with its own
// netlink request. A section of L lines naming C chains so costs about L*C/2 string compares: a
// first sync of 5,000 services with 10 endpoints each (215,000 lines, 55,000 chains) spent 320 s
// there, 1,000 services 5-9 s. kube-proxy's input has the same shape and the same cost.
//
// A command that names no chain makes iptables-nft skip the list and fetch all chains of the table
// in one dump. The only such command that changes nothing is -S (list every rule, to our standard
// output, which we discard); its price is that it reads every existing rule of the table first,
// as iptables-save does. The same 5,000 services restore in 4.3 s with it into an empty table, and
// in 6 s over the full table. iptables-legacy ignores the list question and just prints.
const (
	// listStepsPerRule is how many list steps (~8 ns each) cost as much as fetching and printing
	// one existing rule (~6 µs).
	listStepsPerRule = 750
	// minListSteps is below what -S is never worth it (about 10 ms of list walking): small
	// partial syncs keep their input minimal.
	minListSteps = 1 << 20
)

// chooseListAll decides, per table, whether the restore starts with -S: when walking the chain
// list would cost more than reading the existingRules (per table) the kernel holds.
func (in *restoreInput) chooseListAll(existingRules map[string]int) {
	in.listAll = nil
	for _, table := range []string{tableFilter, tableNAT} {
		lines, chains := in.size(table)
		steps := lines * chains / 2
		if steps > minListSteps && steps > existingRules[table]*listStepsPerRule {
			if in.listAll == nil {
				in.listAll = map[string]bool{}
			}
			in.listAll[table] = true
		}
	}
}

// size counts the lines of a table's section and the chains they declare.
func (in *restoreInput) size(table string) (lines, chains int) {
	for _, c := range in.write {
		if c.id.table == table {
			lines += 1 + len(c.rules)
			chains++
		}
	}
	for _, id := range in.remove {
		if id.table == table {
			lines += 2
			chains++
		}
	}
	return lines, chains
}

func (in *restoreInput) empty() bool {
	return len(in.write) == 0 && len(in.remove) == 0 && len(in.jumps) == 0
}

// chainNames lists the chains written, as table/name; tests use it to see what a sync touched.
func (in *restoreInput) chainNames() []string {
	var out []string
	for _, c := range in.write {
		out = append(out, c.id.String())
	}
	return out
}

// bytes renders the input: filter before nat as kube-proxy orders them, each table committed once.
func (in *restoreInput) bytes() []byte {
	var b bytes.Buffer
	for _, table := range []string{tableFilter, tableNAT} {
		var decls, rules, deletes []string
		for _, c := range in.write {
			if c.id.table == table {
				decls = append(decls, ":"+c.id.name+" - [0:0]")
				rules = append(rules, c.rules...)
			}
		}
		for _, id := range in.remove {
			if id.table == table {
				decls = append(decls, ":"+id.name+" - [0:0]")
				deletes = append(deletes, "-X "+id.name)
			}
		}
		for _, j := range in.jumps {
			if j.table == table {
				words := append([]string{"-I", j.from, "1"}, j.extra...)
				rules = append(rules, line(append(words, comment(j.comment), "-j", j.to)...))
			}
		}
		if len(decls) == 0 && len(rules) == 0 {
			continue
		}
		b.WriteString("*" + table + "\n")
		if in.listAll[table] {
			b.WriteString("-S\n")
		}
		for _, group := range [][]string{decls, rules, deletes} {
			for _, l := range group {
				b.WriteString(l)
				b.WriteByte('\n')
			}
		}
		b.WriteString("COMMIT\n")
	}
	return b.Bytes()
}

// savedJump is one of our jump rules found in a built-in chain.
type savedJump struct {
	table, chain string
	args         []string // the rule after "-A CHAIN", unquoted
	target       string
	comment      string
}

// saved is our part of the kernel's rules as iptables-save shows them.
type saved struct {
	chains map[chainID][]string // every NA- chain with its rules, in save format
	jumps  []savedJump
}

func newSaved() *saved { return &saved{chains: map[chainID][]string{}} }

// maxSavedLine bounds the lines parse looks at. Ours are a few hundred bytes (a comment is at
// most 256); a longer line is someone else's rule and is skipped.
const maxSavedLine = 64 << 10

// parse adds what iptables-save printed for one or more tables. Every line is looked at on its
// own: a line that cannot be ours (too long, say) is skipped without ending the parse, so the
// lines after it are still seen. (A bufio.Scanner stopped at its first over-long line, quietly,
// and our chains after it looked missing.)
func (s *saved) parse(data []byte) {
	table := ""
	for len(data) > 0 {
		raw := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			raw, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
		if len(raw) > maxSavedLine {
			continue
		}
		l := strings.TrimSpace(string(raw))
		switch {
		case strings.HasPrefix(l, "*"):
			table = l[1:]
		case strings.HasPrefix(l, ":"):
			name, _, _ := strings.Cut(l[1:], " ")
			if strings.HasPrefix(name, chainPrefix) {
				id := chainID{table, name}
				if _, ok := s.chains[id]; !ok {
					s.chains[id] = []string{}
				}
			}
		case strings.HasPrefix(l, "-A "):
			words := splitWords(l)
			if len(words) < 2 {
				continue
			}
			name := words[1]
			if strings.HasPrefix(name, chainPrefix) {
				id := chainID{table, name}
				s.chains[id] = append(s.chains[id], l)
				continue
			}
			j := savedJump{table: table, chain: name, args: words[2:]}
			for i := 2; i+1 < len(words); i++ {
				switch words[i] {
				case "-j":
					j.target = words[i+1]
				case "--comment":
					j.comment = words[i+1]
				}
			}
			if strings.HasPrefix(j.target, chainPrefix) && strings.HasPrefix(j.comment, jumpCommentPrefix) {
				s.jumps = append(s.jumps, j)
			}
		}
	}
}

// ruleCounts counts the rules of our chains per table.
func (s *saved) ruleCounts() map[string]int {
	out := map[string]int{}
	for id, rules := range s.chains {
		out[id.table] += len(rules)
	}
	return out
}

// jumpCount counts the rules in the built-in chains that match j.
func (s *saved) jumpCount(j jump) int {
	n := 0
	for _, sj := range s.jumps {
		if sj.table == j.table && sj.chain == j.from && sj.target == j.to && sj.comment == j.comment {
			n++
		}
	}
	return n
}

// splitWords splits a saved rule into arguments the way a shell would for iptables-save's
// quoting: double quotes group, a backslash escapes the next character.
func splitWords(l string) []string {
	var words []string
	var cur strings.Builder
	inWord, quoted := false, false
	for i := 0; i < len(l); i++ {
		c := l[i]
		switch {
		case c == '\\' && i+1 < len(l):
			i++
			cur.WriteByte(l[i])
			inWord = true
		case c == '"':
			quoted = !quoted
			inWord = true
		case c == ' ' && !quoted:
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}
