package iptables

import (
	"bufio"
	"bytes"
	"strings"
)

// restoreInput is one iptables-restore --noflush call for one family. With --noflush, declaring
// a chain creates it or flushes it; chains not mentioned, ours or anyone's, are left alone.
type restoreInput struct {
	write  []chain   // chains declared and refilled
	remove []chainID // chains flushed and deleted (after every rule is written, so no reference is left)
	jumps  []jump    // jump rules inserted at the top of built-in chains (Render's view of a first sync)
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

// parse adds what iptables-save printed for one or more tables.
func (s *saved) parse(data []byte) {
	table := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64*1024), 16*1024*1024)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
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
