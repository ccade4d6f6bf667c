package cluster

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestConformance runs upstream e2e tests against a cluster: E2E_FOCUS (default
// FocusedConformance, a handful of Services tests; "all" for every [sig-network] conformance
// test) with the node proxy $PROXY, whose every test must pass. With E2E_COMPARE=1 it runs the
// same tests under nodeagent and under kube-proxy, one cluster after the other, and writes the
// side-by-side table to $E2E_TABLE (make conformance); a test that fails under both proves nothing
// about either, so there failures are data, not test failures.
func TestConformance(t *testing.T) {
	requireOptIn(t)
	dir, err := Built()
	if err != nil {
		t.Skipf("cluster binaries not built (%v): run make conformance, or test/cluster/build.sh", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "e2e.test")); err != nil {
		t.Skip("e2e.test not built: run make conformance, or test/cluster/build.sh e2e.test (about 6 minutes cold)")
	}
	focus := os.Getenv("E2E_FOCUS")
	switch focus {
	case "":
		focus = FocusedConformance
	case "all":
		focus = AllNetworkConformance
	}
	skip := os.Getenv("E2E_SKIP")
	if skip == "" {
		skip = `\[Disruptive\]`
	}
	compare := os.Getenv("E2E_COMPARE") == "1"
	proxies := []string{os.Getenv("PROXY")}
	if proxies[0] == "" {
		proxies[0] = ProxyNodeagent
	}
	if compare {
		proxies = []string{ProxyNodeagent, ProxyKube}
	}
	all := map[string][]E2EResult{}
	for _, proxy := range proxies {
		t.Run(proxy, func(t *testing.T) {
			c := Up(t, Options{Proxy: proxy, Mode: os.Getenv("PROXY_MODE"), BinDir: dir, NodeagentImage: os.Getenv("NODEAGENT_IMAGE")})
			start := time.Now()
			report := filepath.Join(c.Dir, "e2e")
			if out := os.Getenv("E2E_REPORT_DIR"); out != "" {
				report = filepath.Join(out, proxy)
			}
			results, err := c.RunE2E(t.Context(), focus, skip, report)
			if err != nil {
				t.Fatal(err)
			}
			all[proxy] = results
			var failed []string
			for _, r := range ran(results) {
				t.Logf("%-7s %6v  %s %s", r.Outcome, r.Time, r.Name, r.Message)
				if r.Outcome == "failed" {
					failed = append(failed, r.Name)
				}
			}
			t.Logf("%s: %d tests in %v, %d failed", proxy, len(ran(results)), time.Since(start).Round(time.Second), len(failed))
			if len(ran(results)) == 0 {
				t.Errorf("no test ran: focus %q matches nothing", focus)
			}
			if len(failed) > 0 && !compare {
				t.Errorf("%d e2e tests failed with %s:\n%s\n(log: %s)", len(failed), proxy, strings.Join(failed, "\n"), filepath.Join(report, "e2e.log"))
			}
		})
	}
	if compare {
		table := CompareTable(proxies, all)
		t.Logf("\n%s", table)
		if out := os.Getenv("E2E_TABLE"); out != "" {
			mode := os.Getenv("PROXY_MODE")
			if mode == "" {
				mode = "nftables"
			}
			head := fmt.Sprintf("# Upstream e2e tests: nodeagent and kube-proxy side by side\n\n"+
				"`make conformance` at %s: the e2e suite of Kubernetes %s against the cluster of test/cluster "+
				"(3 nodes, containerd, CoreDNS), once with nodeagent and once with kube-proxy, both in %s mode.\n"+
				"Focus `%s`, skip `%s`. Differing outcomes come first.\n\n", revision(), kubeVersion, mode, focus, skip)
			if err := os.WriteFile(out, []byte(head+table), 0o644); err != nil {
				t.Error(err)
			}
		}
	}
}

// kubeVersion is the version of every Kubernetes binary build.sh builds (tools/go.mod's).
const kubeVersion = "v1.34.4"

// revision is git describe of the module, or "an unknown revision".
func revision() string {
	root, err := moduleFile("")
	if err != nil {
		return "an unknown revision"
	}
	out, err := exec.Command("git", "-C", root, "describe", "--always", "--dirty").Output()
	if err != nil {
		return "an unknown revision"
	}
	return strings.TrimSpace(string(out))
}

func TestReadJUnitAndCompare(t *testing.T) {
	junit := `<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="4" disabled="0" errors="0" failures="1" time="70">
  <testsuite name="Kubernetes e2e suite" package="/" tests="4" disabled="0" skipped="1" errors="0" failures="1" time="70">
    <testcase name="[SynchronizedBeforeSuite]" classname="Kubernetes e2e suite" status="passed" time="1.5"></testcase>
    <testcase name="[It] [sig-network] Services should serve a basic endpoint from pods  [Conformance]" classname="Kubernetes e2e suite" status="passed" time="12.4"></testcase>
    <testcase name="[It] [sig-network] Services should be rejected when no endpoints exist" classname="Kubernetes e2e suite" status="failed" time="40.2">
      <failure message="connection timed out&#xA;more" type="failed">details</failure>
    </testcase>
    <testcase name="[It] [sig-storage] something" classname="Kubernetes e2e suite" status="skipped" time="0"><skipped message="skipped"></skipped></testcase>
  </testsuite>
</testsuites>`
	path := filepath.Join(t.TempDir(), "junit_01.xml")
	if err := os.WriteFile(path, []byte(junit), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := readJUnit(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0].Outcome != "passed" || got[0].Time != 12*time.Second ||
		got[1].Outcome != "failed" || got[1].Message != "connection timed out" || got[2].Outcome != "skipped" {
		t.Fatalf("readJUnit = %+v", got)
	}
	if !strings.HasPrefix(got[0].Name, "[sig-network] Services should serve") {
		t.Errorf("name %q keeps the [It] prefix", got[0].Name)
	}
	other := []E2EResult{{Name: got[0].Name, Outcome: "passed", Time: 10 * time.Second}, {Name: got[1].Name, Outcome: "passed", Time: time.Second}}
	table := CompareTable([]string{"nodeagent", "kube-proxy"}, map[string][]E2EResult{"nodeagent": got, "kube-proxy": other})
	lines := strings.Split(strings.TrimSpace(table), "\n")
	if len(lines) != 5 {
		t.Fatalf("table:\n%s", table)
	}
	// The test whose outcome differs comes first; skipped tests are left out.
	if !strings.Contains(lines[2], "rejected when no endpoints") || !strings.Contains(lines[2], "**failed**") {
		t.Errorf("first row %q, want the differing test", lines[2])
	}
	if !strings.Contains(lines[4], "1 of 2") || !strings.Contains(lines[4], "2 of 2") {
		t.Errorf("totals %q", lines[4])
	}
}
