package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// The datapath phase measures what a proxy's rules cost every new connection: a load generator
// in the node's namespace (the kernel observer, started before any measurement, so no process
// start is on the measured path) opens TCP connections to one cluster IP of a working service
// from Workers goroutines for a while, each connect → small request → answer → close, as fast
// as the machine allows. Only a connection's first packet walks the NAT rules (conntrack keeps
// the translation for the rest), so new connections per second and connect latency are where a
// linear ruleset and a map lookup differ.
//
// A connection is closed with SO_LINGER 0 (a reset): at tens of thousands of connections a second
// from one source address (the node's end of the pods link), TIME_WAIT sockets would exhaust the
// 28,000 ephemeral ports within seconds; a reset leaves none, and the conntrack entry goes to the
// CLOSE state (10 s) rather than TIME_WAIT (120 s).

// DatapathProbe asks the observer to load Target from Workers connections at a time for Duration.
type DatapathProbe struct {
	Target   netip.AddrPort
	Workers  int
	Duration time.Duration
}

func (p DatapathProbe) String() string {
	return fmt.Sprintf("%v of connections to %s from %d workers", p.Duration, p.Target, p.Workers)
}

// request is the observer's request line for p.
func (p DatapathProbe) request(id string) string {
	return fmt.Sprintf("%s datapath %s %d %d", id, p.Target, p.Workers, p.Duration.Milliseconds())
}

// Bounds of a datapath request: the observer serves whatever its stdin says, so a line cannot
// make it start a million goroutines or run for hours.
const (
	maxDatapathWorkers  = 256
	maxDatapathDuration = 10 * time.Minute
)

// parseDatapathRequest reads the fields after "ID datapath" back.
func parseDatapathRequest(f []string) (DatapathProbe, error) {
	var p DatapathProbe
	var err error
	if p.Target, err = parseTarget("datapath", f, 3); err != nil {
		return p, err
	}
	w, err1 := strconv.Atoi(f[1])
	d, err2 := strconv.Atoi(f[2])
	if err1 != nil || err2 != nil || w < 1 || w > maxDatapathWorkers || d < 1 || time.Duration(d)*time.Millisecond > maxDatapathDuration {
		return p, fmt.Errorf("datapath request: workers %q (1..%d), duration %q ms (1..%d)", f[1], maxDatapathWorkers,
			f[2], maxDatapathDuration.Milliseconds())
	}
	p.Workers, p.Duration = w, time.Duration(d)*time.Millisecond
	return p, nil
}

// DatapathRun is one load period of one side. Latencies are microseconds: connect is the TCP
// handshake through the proxy's translation; request runs from the start of the connect to the
// end of the answer.
type DatapathRun struct {
	Conns        int     `json:"conns"`
	Errors       int     `json:"errors"`
	Seconds      float64 `json:"seconds"`
	ConnsPerSec  float64 `json:"connsPerSec"`
	ConnectP50Us float64 `json:"connectP50Us"`
	ConnectP99Us float64 `json:"connectP99Us"`
	RequestP50Us float64 `json:"requestP50Us"`
	RequestP99Us float64 `json:"requestP99Us"`
	// LoadAvg is the machine's 1-minute load average when the period began (the machine is
	// shared: a number means little without it).
	LoadAvg float64 `json:"loadAvg1m"`
}

// answer is the observer's answer line: "ID UNIXNANO conns errors seconds p50 p99 p50 p99".
func (r DatapathRun) answer(id string, end time.Time) string {
	return fmt.Sprintf("%s %d %d %d %.6f %.1f %.1f %.1f %.1f", id, end.UnixNano(), r.Conns, r.Errors, r.Seconds,
		r.ConnectP50Us, r.ConnectP99Us, r.RequestP50Us, r.RequestP99Us)
}

// parseDatapathAnswer reads the fields after the time of an answer back.
func parseDatapathAnswer(f []string) (DatapathRun, error) {
	var r DatapathRun
	if len(f) != 7 {
		return r, fmt.Errorf("datapath answer: %d fields, want 7", len(f))
	}
	for i, p := range []*int{&r.Conns, &r.Errors} {
		n, err := strconv.Atoi(f[i])
		if err != nil || n < 0 {
			return r, fmt.Errorf("datapath answer: count %q", f[i])
		}
		*p = n
	}
	for i, p := range []*float64{&r.Seconds, &r.ConnectP50Us, &r.ConnectP99Us, &r.RequestP50Us, &r.RequestP99Us} {
		v, err := strconv.ParseFloat(f[2+i], 64)
		if err != nil || v < 0 {
			return r, fmt.Errorf("datapath answer: number %q", f[2+i])
		}
		*p = v
	}
	if r.Seconds > 0 {
		r.ConnsPerSec = float64(r.Conns) / r.Seconds
	}
	return r, nil
}

// datapathSamples are one worker's connections.
type datapathSamples struct {
	connect, request []time.Duration
	errors           int
}

// summarizeDatapath merges the workers' samples of a period of elapsed.
func summarizeDatapath(ws []datapathSamples, elapsed time.Duration) DatapathRun {
	var connect, request []time.Duration
	r := DatapathRun{Seconds: elapsed.Seconds()}
	for _, w := range ws {
		connect = append(connect, w.connect...)
		request = append(request, w.request...)
		r.Errors += w.errors
	}
	r.Conns = len(request)
	if r.Seconds > 0 {
		r.ConnsPerSec = float64(r.Conns) / r.Seconds
	}
	r.ConnectP50Us, r.ConnectP99Us = us(pct(connect, 50)), us(pct(connect, 99))
	r.RequestP50Us, r.RequestP99Us = us(pct(request, 50)), us(pct(request, 99))
	return r
}

// datapathTimeout bounds one connection: a proxy that drops a SYN costs a worker a second, and
// counts as an error.
const datapathTimeout = time.Second

// loadDatapath runs p from the current network namespace.
func loadDatapath(ctx context.Context, p DatapathProbe) DatapathRun {
	ws := make([]datapathSamples, p.Workers)
	start := time.Now()
	deadline := start.Add(p.Duration)
	var wg sync.WaitGroup
	for i := range ws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil && time.Now().Before(deadline) {
				connect, request, err := requestOnce(p.Target)
				if err != nil {
					ws[i].errors++
					continue
				}
				ws[i].connect = append(ws[i].connect, connect)
				ws[i].request = append(ws[i].request, request)
			}
		}()
	}
	wg.Wait()
	return summarizeDatapath(ws, time.Since(start))
}

// datapathRequest is what a load connection sends; a pod answers with its address whatever it
// reads.
var datapathRequest = []byte("GET\n")

// requestOnce makes one connection: connect, send a small request, read the answer to its end,
// close with a reset.
func requestOnce(target netip.AddrPort) (connect, request time.Duration, err error) {
	d := net.Dialer{Timeout: datapathTimeout}
	t0 := time.Now()
	c, err := d.Dial("tcp", target.String())
	if err != nil {
		return 0, 0, err
	}
	connect = time.Since(t0)
	defer func() {
		_ = c.(*net.TCPConn).SetLinger(0)
		_ = c.Close()
	}()
	_ = c.SetDeadline(t0.Add(datapathTimeout))
	if _, err := c.Write(datapathRequest); err != nil {
		return 0, 0, err
	}
	var buf [64]byte
	n, err := io.ReadFull(c, buf[:])
	if n == 0 || (err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF)) {
		return 0, 0, fmt.Errorf("no answer: %w", err)
	}
	if _, err := netip.ParseAddr(string(bytes.TrimSpace(buf[:n]))); err != nil {
		return 0, 0, fmt.Errorf("answer %q: %w", buf[:n], err)
	}
	return connect, time.Since(t0), nil
}

// answerDatapath serves an observer's datapath request (fields f: ID, "datapath", ...).
func answerDatapath(ctx context.Context, w io.Writer, f []string) error {
	p, err := parseDatapathRequest(f[2:])
	if err != nil {
		return err
	}
	r := loadDatapath(ctx, p)
	if ctx.Err() != nil {
		return nil
	}
	_, err = fmt.Fprintln(w, r.answer(f[0], time.Now()))
	return err
}

// Datapath is one side's datapath phase: every period's numbers, and their medians (errors:
// the sum) as its summary.
type Datapath struct {
	Target  string        `json:"target"`
	Workers int           `json:"workers"`
	Runs    []DatapathRun `json:"runs"`
	Summary DatapathRun   `json:"summary"`
}

// summarizeRuns is the median of each number over runs (the machine is shared: one disturbed
// period does not move a median), errors and connections summed.
func summarizeRuns(runs []DatapathRun) DatapathRun {
	var s DatapathRun
	med := func(get func(DatapathRun) float64) float64 {
		v := make([]float64, len(runs))
		for i, r := range runs {
			v[i] = get(r)
		}
		slices.Sort(v)
		if len(v) == 0 {
			return 0
		}
		if len(v)%2 == 0 {
			return (v[len(v)/2-1] + v[len(v)/2]) / 2
		}
		return v[len(v)/2]
	}
	for _, r := range runs {
		s.Conns += r.Conns
		s.Errors += r.Errors
		s.Seconds += r.Seconds
	}
	s.ConnsPerSec = med(func(r DatapathRun) float64 { return r.ConnsPerSec })
	s.ConnectP50Us = med(func(r DatapathRun) float64 { return r.ConnectP50Us })
	s.ConnectP99Us = med(func(r DatapathRun) float64 { return r.ConnectP99Us })
	s.RequestP50Us = med(func(r DatapathRun) float64 { return r.RequestP50Us })
	s.RequestP99Us = med(func(r DatapathRun) float64 { return r.RequestP99Us })
	s.LoadAvg = med(func(r DatapathRun) float64 { return r.LoadAvg })
	return s
}

// datapathService is the generated service the load goes to: one in the middle of the bulk, the
// same for both sides.
func datapathService(services int) int { return services / 2 }

// measureDatapath runs DatapathRounds periods per side, alternating sides (and which goes first)
// so that both see the same machine, against a working generated service.
func (l *againstLab) measureDatapath(ctx context.Context, sides []*side) error {
	// The generated services' endpoints are outside the pod network the traffic probe uses:
	// route them to each side's pods namespace too.
	for _, s := range sides {
		pods := s.ns + "p"
		for _, st := range [][]string{
			{"-n", pods, "route", "add", "local", endpointNet.String(), "dev", "lo"},
			{"-n", s.ns, "route", "add", endpointNet.String(), "via", podLinkPods.Addr().String()},
		} {
			if out, err := exec.CommandContext(ctx, "ip", st...).CombinedOutput(); err != nil {
				return fmt.Errorf("ip %s: %w: %s", strings.Join(st, " "), err, bytes.TrimSpace(out))
			}
		}
	}
	i := datapathService(l.services)
	p := DatapathProbe{Target: netip.AddrPortFrom(l.clusterIPs[i], 80), Workers: l.o.DatapathWorkers,
		Duration: l.o.DatapathDuration}
	runs := map[*side][]DatapathRun{}
	for round := range max(l.o.DatapathRounds, 1) {
		order := slices.Clone(sides)
		if round%2 == 1 {
			slices.Reverse(order)
		}
		for _, s := range order {
			load, err := loadAverage()
			if err != nil {
				return err
			}
			var run DatapathRun
			var perr error
			if err := l.waitAll(ctx, []*side{s}, time.Now(), p.Duration+30*time.Second,
				func(*side) (request, error) { return p, nil },
				func(_ *side, o observation) { run, perr = parseDatapathAnswer(o.rest) }); err != nil {
				return fmt.Errorf("datapath of %s: %w", ServiceName(i), err)
			}
			if perr != nil {
				return fmt.Errorf("%s: %w", s.impl, perr)
			}
			run.LoadAvg = load
			runs[s] = append(runs[s], run)
			l.o.Log.Info("datapath", "implementation", s.impl, "round", round, "connsPerSec", int(run.ConnsPerSec),
				"connectP50us", run.ConnectP50Us, "connectP99us", run.ConnectP99Us, "errors", run.Errors, "loadAvg", load)
		}
	}
	for _, s := range sides {
		s.res.Datapath = &Datapath{Target: p.Target.String(), Workers: p.Workers, Runs: runs[s], Summary: summarizeRuns(runs[s])}
	}
	return nil
}

// endpointNet holds every generated endpoint address (Endpoints, and measureChanges' new ones).
var endpointNet = netip.PrefixFrom(endpointBase, 9)

// loadAverage reads the machine's 1-minute load average.
func loadAverage() (float64, error) {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0, fmt.Errorf("empty /proc/loadavg")
	}
	return strconv.ParseFloat(f[0], 64)
}

// WriteDatapathTable prints one row per (mode, size, implementation) with a datapath phase, and
// nodeagent's connections per second over kube-proxy's; nothing when no run had one.
func WriteDatapathTable(w io.Writer, rs []AgainstResult) {
	rows := slices.DeleteFunc(slices.Clone(rs), func(r AgainstResult) bool { return r.Datapath == nil })
	if len(rows) == 0 {
		return
	}
	slices.SortStableFunc(rows, func(a, b AgainstResult) int {
		if a.Mode != b.Mode {
			return strings.Compare(a.Mode, b.Mode)
		}
		return a.Services - b.Services
	})
	rate := func(mode string, n int, impl string) float64 {
		for _, r := range rows {
			if r.Mode == mode && r.Services == n && r.Impl == impl {
				return r.Datapath.Summary.ConnsPerSec
			}
		}
		return 0
	}
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', tabwriter.Debug)
	fmt.Fprintln(tw, "| mode\t services\t implementation\t conns/s\t nodeagent ÷ kube-proxy\t connect p50 / p99 µs\t request p50 / p99 µs\t errors\t load avg (1 min)\t periods × s\t")
	fmt.Fprintln(tw, "| ---\t ---\t ---\t ---\t ---\t ---\t ---\t ---\t ---\t ---\t")
	for _, r := range rows {
		s := r.Datapath.Summary
		ratio := ""
		if kp := rate(r.Mode, r.Services, ImplKubeProxy); r.Impl == ImplNodeagent && kp > 0 {
			ratio = fmt.Sprintf("**%.2f**", s.ConnsPerSec/kp)
		}
		per := 0.0
		if n := len(r.Datapath.Runs); n > 0 {
			per = s.Seconds / float64(n)
		}
		fmt.Fprintf(tw, "| %s\t %d\t %s\t %.0f\t %s\t %.0f / %.0f\t %.0f / %.0f\t %d\t %.1f\t %d × %.0f\t\n", r.Mode, r.Services, r.Impl,
			s.ConnsPerSec, ratio, s.ConnectP50Us, s.ConnectP99Us, s.RequestP50Us, s.RequestP99Us, s.Errors, s.LoadAvg,
			len(r.Datapath.Runs), per)
	}
	_ = tw.Flush()
}
