package nftables

import (
	"bytes"
	"flag"
	"nodeagent/proxier/nft"
	"os"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func render(t *testing.T) string {
	t.Helper()
	p := &Proxier{fams: []*nft.Family{nft.IPv4, nft.IPv6}, rebuild: true}
	var buf bytes.Buffer
	if err := p.Render(&buf, testState()); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

// TestRenderGolden pins the rendered ruleset; run with -update after an intended change.
func TestRenderGolden(t *testing.T) {
	got := render(t)
	path := filepath.Join("testdata", "ruleset.nft")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("Render differs from %s (run with -update if intended):\n%s", path, lineDiff(string(want), got))
	}
}

// TestRenderAcceptedByNft checks the rendered text with nft -c in a throwaway namespace.
func TestRenderAcceptedByNft(t *testing.T) {
	ns := netns(t)
	mustNft(t, ns, render(t), "-c", "-f", "-")
}
