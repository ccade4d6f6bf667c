package iptables

import (
	"slices"
	"strings"
	"testing"
)

// A rule of someone else's that is longer than any of ours does not end the parse: our chains
// and jump rules after it are still found (they looked missing, so every sync saw drift).
func TestSavedParseSkipsLongForeignLines(t *testing.T) {
	huge := `-A FOREIGN -m comment --comment "` + strings.Repeat("x", 17<<20) + `" -j ACCEPT`
	out := "*nat\n:PREROUTING ACCEPT [0:0]\n:FOREIGN - [0:0]\n" + huge + "\n" +
		":" + servicesChain + " - [0:0]\n" +
		`-A PREROUTING -m comment --comment "nodeagent service portals" -j ` + servicesChain + "\n" +
		"-A " + servicesChain + " -j RETURN\nCOMMIT\n"
	s := newSaved()
	s.parse([]byte(out))
	if got := s.chains[chainID{tableNAT, servicesChain}]; len(got) != 1 {
		t.Errorf("%s after a long foreign line: %q", servicesChain, got)
	}
	if len(s.jumps) != 1 || s.jumps[0].target != servicesChain || s.jumps[0].comment != "nodeagent service portals" {
		t.Errorf("jumps %+v", s.jumps)
	}
}

// FuzzSavedParse feeds arbitrary iptables-save output to the parser: it never panics, finds only
// chains of ours, and every jump it finds targets one of ours with our comment.
func FuzzSavedParse(f *testing.F) {
	f.Add([]byte("*nat\n:PREROUTING ACCEPT [0:0]\n:NA-SERVICES - [0:0]\n" +
		`-A PREROUTING -m comment --comment "nodeagent service portals" -j NA-SERVICES` + "\n-A NA-SERVICES -j RETURN\nCOMMIT\n"))
	f.Add([]byte("*filter\n-A INPUT -m comment --comment \"a \\\"quoted\\\" one\" -j NA-X\n-A\n-A NA-\n:\n*"))
	f.Add([]byte(`-A "unterminated -j NA-Y --comment`))
	f.Fuzz(func(t *testing.T, data []byte) {
		s := newSaved()
		s.parse(data)
		for id := range s.chains {
			if !strings.HasPrefix(id.name, chainPrefix) {
				t.Fatalf("chain %q is not ours", id.name)
			}
		}
		for _, j := range s.jumps {
			if !strings.HasPrefix(j.target, chainPrefix) || !strings.HasPrefix(j.comment, jumpCommentPrefix) {
				t.Fatalf("jump %+v is not ours", j)
			}
		}
		_ = s.ruleCounts()
	})
}

// FuzzSplitWords checks the save format's quoting: words joined with their quotes and
// backslashes escaped split back into the same words.
func FuzzSplitWords(f *testing.F) {
	f.Add("-A", "INPUT", `nodeagent "load" balancer`)
	f.Add("", `\`, "a b")
	f.Fuzz(func(t *testing.T, a, b, c string) {
		words := []string{a, b, c}
		for _, w := range words {
			if w == "" || strings.ContainsAny(w, "\n\x00") {
				return
			}
		}
		var quoted []string
		for _, w := range words {
			w = strings.ReplaceAll(w, `\`, `\\`)
			quoted = append(quoted, `"`+strings.ReplaceAll(w, `"`, `\"`)+`"`)
		}
		if got := splitWords(strings.Join(quoted, " ")); !slices.Equal(got, words) {
			t.Fatalf("split %q into %q, want %q", strings.Join(quoted, " "), got, words)
		}
	})
}
