package cluster

import (
	"context"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// FocusedConformance is a handful of the [sig-network] Services conformance tests: cluster IPs
// with one and several ports, both protocols on one port, session affinity, node ports, the
// kubernetes Service, and a type change that must remove a service's rules.
const FocusedConformance = `\[sig-network\] Services should (serve a basic endpoint from pods|serve multiport endpoints from pods|serve endpoints on same port and different protocols|have session affinity work for service with type clusterIP|be able to create a functioning NodePort service|provide secure master service|be able to change the type from ClusterIP to ExternalName) .*\[Conformance\]`

// AllNetworkConformance is every [sig-network] conformance test.
const AllNetworkConformance = `\[sig-network\].*\[Conformance\]`

// E2EResult is the outcome of one e2e test.
type E2EResult struct {
	Name    string        `json:"name"`
	Outcome string        `json:"outcome"` // passed, failed or skipped
	Time    time.Duration `json:"time"`
	Message string        `json:"message,omitempty"`
}

// RunE2E runs the upstream e2e suite (build.sh's e2e.test) against the cluster from the control
// plane's namespace, on the tests focus selects and skip leaves out, with its JUnit report and
// log in reportDir, and returns each test's outcome.
func (c *Cluster) RunE2E(ctx context.Context, focus, skip, reportDir string) ([]E2EResult, error) {
	bin := filepath.Join(c.BinDir, "e2e.test")
	if err := os.MkdirAll(reportDir, 0o755); err != nil {
		return nil, err
	}
	logPath := filepath.Join(reportDir, "e2e.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	args := []string{"netns", "exec", c.CP, "env", "PATH=" + c.BinDir + ":" + os.Getenv("PATH"), bin,
		"--kubeconfig=" + c.Kubeconfig,
		"--provider=skeleton",
		"--report-dir=" + reportDir,
		"--ginkgo.focus=" + focus,
		"--ginkgo.no-color",
		"--ginkgo.timeout=4h",
		"--dump-logs-on-failure=false",
	}
	if skip != "" {
		args = append(args, "--ginkgo.skip="+skip)
	}
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Dir = reportDir
	cmd.Stdout, cmd.Stderr = logFile, logFile
	runErr := cmd.Run()
	results, err := readJUnit(filepath.Join(reportDir, "junit_01.xml"))
	if err != nil {
		return nil, fmt.Errorf("e2e.test (%v): %w\n%s", runErr, err, tailFile(logPath, 40))
	}
	return results, nil
}

// readJUnit reads the e2e suite's JUnit report.
func readJUnit(path string) ([]E2EResult, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var suites struct {
		Suites []struct {
			Cases []struct {
				Name    string  `xml:"name,attr"`
				Time    float64 `xml:"time,attr"`
				Skipped *struct {
					Message string `xml:"message,attr"`
				} `xml:"skipped"`
				Failure *struct {
					Message string `xml:"message,attr"`
					Text    string `xml:",chardata"`
				} `xml:"failure"`
				Error *struct {
					Message string `xml:"message,attr"`
				} `xml:"error"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(b, &suites); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var out []E2EResult
	for _, s := range suites.Suites {
		for _, tc := range s.Cases {
			name := strings.TrimPrefix(tc.Name, "[It] ")
			if strings.HasPrefix(name, "[SynchronizedBeforeSuite]") || strings.HasPrefix(name, "[SynchronizedAfterSuite]") ||
				strings.HasPrefix(name, "[ReportBeforeSuite]") || strings.HasPrefix(name, "[ReportAfterSuite]") || strings.HasPrefix(name, "[BeforeSuite]") {
				if tc.Failure == nil && tc.Error == nil {
					continue
				}
			}
			r := E2EResult{Name: name, Outcome: "passed", Time: time.Duration(tc.Time * float64(time.Second)).Round(time.Second)}
			switch {
			case tc.Failure != nil:
				r.Outcome, r.Message = "failed", firstLine(tc.Failure.Message)
			case tc.Error != nil:
				r.Outcome, r.Message = "failed", firstLine(tc.Error.Message)
			case tc.Skipped != nil:
				r.Outcome = "skipped"
			}
			out = append(out, r)
		}
	}
	return out, nil
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

// ran returns the results of tests that ran (not skipped).
func ran(results []E2EResult) []E2EResult {
	return slices.DeleteFunc(slices.Clone(results), func(r E2EResult) bool { return r.Outcome == "skipped" })
}

// WriteE2EResults writes results as JSON to path.
func WriteE2EResults(path string, results []E2EResult) error {
	b, err := json.MarshalIndent(ran(results), "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// CompareTable renders the outcomes of the same tests under several proxies side by side, as
// Markdown, with a count of passes per proxy and the tests whose outcome differs first.
func CompareTable(proxies []string, results map[string][]E2EResult) string {
	outcome := map[string]map[string]E2EResult{}
	var names []string
	for _, p := range proxies {
		outcome[p] = map[string]E2EResult{}
		for _, r := range ran(results[p]) {
			outcome[p][r.Name] = r
			if !slices.Contains(names, r.Name) {
				names = append(names, r.Name)
			}
		}
	}
	slices.Sort(names)
	differs := func(n string) bool {
		first := outcome[proxies[0]][n].Outcome
		for _, p := range proxies[1:] {
			if outcome[p][n].Outcome != first {
				return true
			}
		}
		return false
	}
	slices.SortStableFunc(names, func(a, b string) int {
		da, db := differs(a), differs(b)
		switch {
		case da && !db:
			return -1
		case db && !da:
			return 1
		}
		return 0
	})
	var b strings.Builder
	b.WriteString("| test |")
	for _, p := range proxies {
		fmt.Fprintf(&b, " %s |", p)
	}
	b.WriteString("\n| --- |")
	for range proxies {
		b.WriteString(" --- |")
	}
	b.WriteString("\n")
	for _, n := range names {
		fmt.Fprintf(&b, "| %s |", strings.ReplaceAll(n, "|", `\|`))
		for _, p := range proxies {
			r, ok := outcome[p][n]
			switch {
			case !ok:
				b.WriteString(" — |")
			case r.Outcome == "passed":
				fmt.Fprintf(&b, " pass (%v) |", r.Time)
			default:
				fmt.Fprintf(&b, " **%s** (%v) |", r.Outcome, r.Time)
			}
		}
		b.WriteString("\n")
	}
	b.WriteString("| **passed** |")
	for _, p := range proxies {
		pass := 0
		for _, r := range outcome[p] {
			if r.Outcome == "passed" {
				pass++
			}
		}
		fmt.Fprintf(&b, " %d of %d |", pass, len(outcome[p]))
	}
	b.WriteString("\n")
	return b.String()
}
