package bench

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestDatapathRequestRoundTrip(t *testing.T) {
	p := DatapathProbe{Target: netip.MustParseAddrPort("10.96.0.12:80"), Workers: 4, Duration: 5 * time.Second}
	f := strings.Fields(p.request("3"))
	if f[0] != "3" || f[1] != "datapath" {
		t.Fatalf("request %v", f)
	}
	if back, err := parseDatapathRequest(f[2:]); err != nil || back != p {
		t.Errorf("%v read back as %+v, %v", f, back, err)
	}
	for _, bad := range []string{
		"10.96.0.1:80 0 1000",       // no worker
		"10.96.0.1:80 257 1000",     // too many workers
		"10.96.0.1:80 4 0",          // no time
		"10.96.0.1:80 4 600001",     // too long
		"10.96.0.1 4 1000",          // no port
		"10.96.0.1:80 four 1000",    // not a number
		"10.96.0.1:80 4 1000 extra", // extra field
	} {
		if _, err := parseDatapathRequest(strings.Fields(bad)); err == nil {
			t.Errorf("%q: accepted", bad)
		}
	}
}

func TestDatapathAnswerRoundTrip(t *testing.T) {
	r := DatapathRun{Conns: 50000, Errors: 3, Seconds: 5, ConnectP50Us: 120.5, ConnectP99Us: 900, RequestP50Us: 300, RequestP99Us: 2000.5}
	f := strings.Fields(r.answer("9", time.Unix(0, 1764680000123456789)))
	if f[0] != "9" || f[1] != "1764680000123456789" {
		t.Fatalf("answer %v", f)
	}
	back, err := parseDatapathAnswer(f[2:])
	r.ConnsPerSec = 10000
	if err != nil || back != r {
		t.Errorf("answer %v read back as %+v, %v", f, back, err)
	}
	for _, bad := range [][]string{{"1", "2"}, {"1", "-2", "5", "1", "1", "1", "1"}, {"1", "2", "x", "1", "1", "1", "1"}} {
		if _, err := parseDatapathAnswer(bad); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}

func TestSummarizeDatapath(t *testing.T) {
	// Two workers: connect latencies 1..100 µs and request latencies ten times those, merged.
	var ws [2]datapathSamples
	for i := 1; i <= 100; i++ {
		w := &ws[i%2]
		w.connect = append(w.connect, time.Duration(i)*time.Microsecond)
		w.request = append(w.request, time.Duration(10*i)*time.Microsecond)
	}
	ws[0].errors, ws[1].errors = 2, 1
	r := summarizeDatapath(ws[:], 4*time.Second)
	want := DatapathRun{Conns: 100, Errors: 3, Seconds: 4, ConnsPerSec: 25, ConnectP50Us: 50, ConnectP99Us: 99,
		RequestP50Us: 500, RequestP99Us: 990}
	if r != want {
		t.Errorf("got %+v, want %+v", r, want)
	}
	if r := summarizeDatapath(nil, 0); r != (DatapathRun{}) {
		t.Errorf("no samples: %+v", r)
	}

	runs := []DatapathRun{
		{Conns: 10, Errors: 1, Seconds: 5, ConnsPerSec: 2, ConnectP50Us: 30, LoadAvg: 3},
		{Conns: 50, Seconds: 5, ConnsPerSec: 10, ConnectP50Us: 10, LoadAvg: 9}, // a disturbed period
		{Conns: 20, Errors: 2, Seconds: 5, ConnsPerSec: 4, ConnectP50Us: 20, LoadAvg: 4},
	}
	s := summarizeRuns(runs)
	if s.Conns != 80 || s.Errors != 3 || s.Seconds != 15 || s.ConnsPerSec != 4 || s.ConnectP50Us != 20 || s.LoadAvg != 4 {
		t.Errorf("medians of three: %+v", s)
	}
	if s := summarizeRuns(runs[:2]); s.ConnsPerSec != 6 || s.LoadAvg != 6 {
		t.Errorf("medians of two: %+v", s)
	}
}

func TestWriteDatapathTable(t *testing.T) {
	dp := func(rate float64) *Datapath {
		run := DatapathRun{Conns: int(rate * 5), Seconds: 5, ConnsPerSec: rate, ConnectP50Us: 100, ConnectP99Us: 900,
			RequestP50Us: 250, RequestP99Us: 1500, LoadAvg: 2.5}
		return &Datapath{Target: "10.96.0.10:80", Workers: 4, Runs: []DatapathRun{run, run}, Summary: summarizeRuns([]DatapathRun{run, run})}
	}
	rs := []AgainstResult{
		{Impl: ImplNodeagent, Mode: "nftables", Services: 25000, Datapath: dp(9000)},
		{Impl: ImplKubeProxy, Mode: "nftables", Services: 25000, Datapath: dp(6000)},
		{Impl: ImplNodeagent, Mode: "iptables", Services: 1000}, // no datapath phase
		{Impl: ImplNodeagent, Mode: "nftables", Services: 1000, Datapath: dp(10000)},
		{Impl: ImplKubeProxy, Mode: "nftables", Services: 1000, Datapath: dp(10000)},
	}
	var b bytes.Buffer
	WriteDatapathTable(&b, rs)
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 6 {
		t.Fatalf("want header, rule and 4 rows:\n%s", b.String())
	}
	// Sorted by mode and size; nodeagent's row carries the ratio.
	if !strings.Contains(lines[2], " 1000 ") || !strings.Contains(lines[2], "**1.00**") ||
		!strings.Contains(lines[4], " 25000 ") || !strings.Contains(lines[4], "**1.50**") || !strings.Contains(lines[4], "9000") ||
		!strings.Contains(lines[4], "100 / 900") || !strings.Contains(lines[4], "250 / 1500") || !strings.Contains(lines[4], "2.5") ||
		!strings.Contains(lines[4], "2 × 5") || strings.Contains(lines[5], "**") {
		t.Errorf("table:\n%s", b.String())
	}
	b.Reset()
	WriteDatapathTable(&b, rs[2:3])
	if b.Len() != 0 {
		t.Errorf("a table without datapath phases:\n%s", b.String())
	}
}
