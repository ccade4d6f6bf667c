package bench

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Both reports land as JSON, a Markdown table and a PNG plot.
func TestWriteFiles(t *testing.T) {
	dir := t.TempDir()
	rep := Report{Commit: "abc", Results: []Result{
		{Mode: "nftables", Services: 1000, EndpointsPerService: 10, FirstSyncMs: 100, ChangeP50Ms: 0.1, ChangeP99Ms: 2},
		{Mode: "nftables", Services: 5000, EndpointsPerService: 10, FirstSyncMs: 200, ChangeP50Ms: 0.2, ChangeP99Ms: 3},
	}}
	if err := WriteFiles(filepath.Join(dir, "sweep"), rep); err != nil {
		t.Fatal(err)
	}
	against := AgainstReport{Commit: "abc", Against: "kube-proxy v1.34.4", Results: []AgainstResult{
		{Impl: ImplNodeagent, Mode: "nftables", Services: 1000, ChangeP50Ms: 1, ChangeP99Ms: 2},
		{Impl: ImplKubeProxy, Mode: "nftables", Services: 1000, ChangeP50Ms: 10, ChangeP99Ms: 20},
	}}
	if err := WriteAgainstFiles(filepath.Join(dir, "against"), against); err != nil {
		t.Fatal(err)
	}
	for sub, want := range map[string]string{"sweep": "| nftables | 5000 ", "against": "kube-proxy v1.34.4"} {
		md, err := os.ReadFile(filepath.Join(dir, sub, "results.md"))
		if err != nil || !strings.Contains(string(md), want) || !strings.Contains(string(md), "Commit abc") {
			t.Errorf("%s/results.md: %v\n%s", sub, err, md)
		}
		var v map[string]any
		if b, err := os.ReadFile(filepath.Join(dir, sub, "results.json")); err != nil || json.Unmarshal(b, &v) != nil || v["commit"] != "abc" {
			t.Errorf("%s/results.json: %v %s", sub, err, b)
		}
		if png, err := os.ReadFile(filepath.Join(dir, sub, "results.png")); err != nil || !strings.HasPrefix(string(png), "\x89PNG") {
			t.Errorf("%s/results.png is not a PNG: %v", sub, err)
		}
	}
}
