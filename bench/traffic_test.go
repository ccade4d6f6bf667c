package bench

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestTrafficRequestRoundTrip(t *testing.T) {
	for _, p := range []TrafficProbe{
		{Target: netip.MustParseAddrPort("10.96.0.12:80"), Want: netip.MustParseAddr("10.244.1.1"), Parallel: 2,
			After: 20 * time.Millisecond, Timeout: 2 * time.Minute},
		{Target: netip.MustParseAddrPort("10.96.0.13:80"), Want: netip.MustParseAddr("10.244.128.1"),
			Stale: netip.MustParseAddr("10.244.2.1"), Parallel: 10, After: 50 * time.Millisecond, Timeout: time.Second},
	} {
		line := p.request("3")
		f := strings.Fields(line)
		if f[0] != "3" || f[1] != "traffic" {
			t.Fatalf("request %q", line)
		}
		back, err := parseTrafficRequest(f[2:])
		if err != nil || back != p {
			t.Errorf("%q read back as %+v, %v", line, back, err)
		}
	}
	for _, bad := range []string{
		"10.96.0.1:80 10.244.1.1 - 0 20 1000",       // no attempts
		"10.96.0.1:80 10.244.1.1 - 65 20 1000",      // too many at once
		"10.96.0.1:80 10.244.1.1 - 1 20 0",          // no timeout
		"10.96.0.1 10.244.1.1 - 1 20 1000",          // no port
		"10.96.0.1:80 pod - 1 20 1000",              // not an address
		"10.96.0.1:80 10.244.1.1 - 1 -5 1000",       // negative window
		"10.96.0.1:80 10.244.1.1 - 1 20 1000 extra", // extra field
	} {
		if _, err := parseTrafficRequest(strings.Fields(bad)); err == nil {
			t.Errorf("%q: accepted", bad)
		}
	}
}

func TestTrafficAnswerRoundTrip(t *testing.T) {
	r := TrafficResult{First: time.Unix(0, 1764680000123456789), Attempts: 40, Refused: 12, Failed: 1, Others: 20, StaleAfter: 2}
	f := strings.Fields(r.answer("9"))
	if f[0] != "9" {
		t.Fatalf("answer %v", f)
	}
	var ns int64
	for _, c := range f[1] {
		ns = ns*10 + int64(c-'0')
	}
	back, err := parseTrafficAnswer(time.Unix(0, ns), f[2:])
	if err != nil || !back.First.Equal(r.First) || back != (TrafficResult{First: back.First, Attempts: 40, Refused: 12, Failed: 1, Others: 20, StaleAfter: 2}) {
		t.Errorf("answer %v read back as %+v, %v", f, back, err)
	}
	if _, err := parseTrafficAnswer(time.Time{}, []string{"1", "2"}); err == nil {
		t.Error("short answer accepted")
	}
}

// TestTally feeds attempt outcomes as the probe sees them and checks the classification.
func TestTally(t *testing.T) {
	want, stale, other := netip.MustParseAddr("10.244.128.1"), netip.MustParseAddr("10.244.2.1"), netip.MustParseAddr("10.244.2.2")
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	// Answered attempts took half a millisecond.
	answered := func(ms int, from netip.Addr) attempt {
		return attempt{start: at(ms).Add(-time.Millisecond / 2), at: at(ms), kind: attemptAnswered, from: from}
	}
	for _, tc := range []struct {
		name     string
		stale    netip.Addr
		attempts []attempt
		done     int // index of the attempt that ends the probe, -1: none
		want     TrafficResult
	}{{
		name: "first endpoint: rejected until the new endpoint answers",
		attempts: []attempt{{at: at(0), kind: attemptRefused}, {at: at(1), kind: attemptRefused},
			{at: at(2), kind: attemptFailed}, answered(3, want), {at: at(4), kind: attemptRefused}, answered(30, want)},
		done: 5,
		// The refusal after the first answer was in flight before it: not counted as refused.
		want: TrafficResult{First: at(3), Attempts: 5, Refused: 2, Failed: 1},
	}, {
		name:  "endpoint replaced: the old one stops once the new one answers",
		stale: stale,
		attempts: []attempt{answered(0, stale), answered(0, other), answered(1, stale), answered(2, want),
			answered(3, other), answered(4, want)},
		done: -1,
		want: TrafficResult{First: at(2), Attempts: 6, Others: 3},
	}, {
		name:     "endpoint replaced: the old one still answers after the new one did",
		stale:    stale,
		attempts: []attempt{answered(1, want), answered(2, stale), answered(3, stale), answered(21, stale)},
		done:     3,
		want:     TrafficResult{First: at(1), Attempts: 3, StaleAfter: 2},
	}, {
		name:  "endpoint replaced: a connection begun before the switch may still reach the old one",
		stale: stale,
		attempts: []attempt{answered(1, want),
			{start: at(0), at: at(2), kind: attemptAnswered, from: stale}, answered(3, stale)},
		done: -1,
		want: TrafficResult{First: at(1), Attempts: 3, StaleAfter: 1},
	}, {
		name:     "an earlier answer that ends later still counts as the first",
		attempts: []attempt{answered(5, want), answered(4, want)},
		done:     -1,
		want:     TrafficResult{First: at(4), Attempts: 2},
	}, {
		name:     "never answered",
		attempts: []attempt{{at: at(0), kind: attemptRefused}, {at: at(500), kind: attemptRefused}},
		done:     -1,
		want:     TrafficResult{Attempts: 2, Refused: 2},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			tl := &tally{p: TrafficProbe{Want: want, Stale: tc.stale, After: 15 * time.Millisecond}}
			done := -1
			for i, a := range tc.attempts {
				if tl.add(a) {
					done = i
					break
				}
			}
			if done != tc.done {
				t.Errorf("done at attempt %d, want %d", done, tc.done)
			}
			if tl.res != tc.want {
				t.Errorf("got %+v\nwant %+v", tl.res, tc.want)
			}
		})
	}
}

func TestSummarize(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 10; i++ {
		d = append(d, time.Duration(11-i)*time.Millisecond)
	}
	got := summarize(d)
	if got != (Latencies{Samples: 10, P50Ms: 5, P90Ms: 9, MaxMs: 10}) {
		t.Errorf("summarize: %+v", got)
	}
	if got := summarize(nil); got != (Latencies{}) {
		t.Errorf("summarize(nil): %+v", got)
	}
}

func TestWriteTrafficTable(t *testing.T) {
	rs := []AgainstResult{
		{Impl: ImplNodeagent, Mode: "nftables", Services: 5000,
			FirstEndpoint: Latencies{Samples: 12, P50Ms: 2, P90Ms: 4.5, MaxMs: 8}, Replaced: Latencies{Samples: 12, P50Ms: 0.4, P90Ms: 0.8, MaxMs: 3}},
		{Impl: ImplKubeProxy, Mode: "nftables", Services: 5000, StaleAnswers: 1,
			FirstEndpoint: Latencies{Samples: 12, P50Ms: 900, P90Ms: 1100, MaxMs: 1200}, Replaced: Latencies{Samples: 12, P50Ms: 800, P90Ms: 1000, MaxMs: 1100}},
		{Impl: ImplNodeagent, Mode: "iptables", Services: 5000}, // no traffic samples: no row
	}
	var b bytes.Buffer
	WriteTrafficTable(&b, rs)
	out := b.String()
	for _, want := range []string{
		"first endpoint", "2.0 / 4.5 / 8.0", "900.0 / 1100.0 / 1200.0", "**244×**",
		// A p90 under the probe's 1 ms tick is divided as 1 ms.
		"endpoint replaced", "0.4 / 0.8 / 3.0", "**1000×**", "0 / 1",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "iptables") {
		t.Errorf("a run without traffic samples has a row:\n%s", out)
	}
	b.Reset()
	WriteTrafficTable(&b, rs[2:])
	if b.Len() != 0 {
		t.Errorf("no samples, still a table:\n%s", b.String())
	}
}
