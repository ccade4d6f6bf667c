package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	"nodeagent/proxier"
)

// Options configure one measurement: one mode at one size.
type Options struct {
	Mode                string
	Services            int
	EndpointsPerService int
	Changes             int // single-endpoint changes to time
	Adds                int // service additions to time
	Connects            int // TCP connections to time
	// Backend is the address of the server (port 8080) that the last service points at, listening in
	// another namespace; zero skips the connect measurement.
	Backend netip.Addr
	// NewProxier makes the proxier of a mode in this network namespace.
	NewProxier func(mode string) (proxier.Proxier, error)
	Log        *slog.Logger
	// HeapProfile, when set, is a path prefix: Run writes Go heap profiles (in-use and
	// allocated since start) right after the first sync (PREFIX-first-sync.pprof) and at the
	// end (PREFIX-end.pprof), to see where memory goes, and a CPU profile of the first sync
	// (PREFIX-first-sync-cpu.pprof).
	HeapProfile string
	// SkipKernelObjects leaves KernelObjects 0: listing a million map elements takes the
	// kernel minutes (its dump is quadratic in a set's size).
	SkipKernelObjects bool
}

// Result is what one measurement found. Latencies are in milliseconds, connect times in
// microseconds.
type Result struct {
	Mode                string  `json:"mode"`
	Services            int     `json:"services"`
	EndpointsPerService int     `json:"endpointsPerService"`
	FirstSyncMs         float64 `json:"firstSyncMs"`
	ChangeP50Ms         float64 `json:"changeP50Ms"`
	ChangeP99Ms         float64 `json:"changeP99Ms"`
	AddP50Ms            float64 `json:"addP50Ms"`
	AddP99Ms            float64 `json:"addP99Ms"`
	PeakRSSMB           float64 `json:"peakRssMB"`
	KernelObjects       int     `json:"kernelObjects"`
	ConnectP50Us        float64 `json:"connectP50Us"`
	ConnectP99Us        float64 `json:"connectP99Us"`
	DirectP50Us         float64 `json:"directP50Us"`
	DirectP99Us         float64 `json:"directP99Us"`
}

// Run measures in the current network namespace, which must be one the caller made for it.
func Run(ctx context.Context, o Options) (Result, error) {
	res := Result{Mode: o.Mode, Services: o.Services, EndpointsPerService: o.EndpointsPerService}
	px, err := o.NewProxier(o.Mode)
	if err != nil {
		return res, err
	}
	defer func() { _ = px.Cleanup(context.Background()) }()
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	tr := proxier.NewTracker(proxier.Node{Name: "bench-node"}, proxier.Config{}, log)
	var last *proxier.State // handed back at the next sync, as the agent does
	sync := func() error {
		st, ch := tr.Next(last)
		last = st
		return px.Sync(ctx, st, ch)
	}

	// The probed service is the last one: rule lists sorted by name (iptables' KUBE-SERVICES)
	// put it at the end, so connects through it pay the worst case, not the best.
	probe := o.Services - 1

	// (1) First full sync: every object fed through the tracker, then one sync.
	stopCPU, err := startCPUProfile(o.HeapProfile, "first-sync-cpu")
	if err != nil {
		return res, err
	}
	start := time.Now()
	// Only the endpoints of services changed since are kept: the others are generated again
	// (a copy of every address would be the harness's memory, not the proxy's: 21 MB at 100,000).
	changed := map[int][]netip.Addr{}
	if o.Backend.IsValid() {
		changed[probe] = []netip.Addr{o.Backend}
	}
	eps := func(i int) []netip.Addr {
		if e, ok := changed[i]; ok {
			return e
		}
		return Endpoints(i, o.EndpointsPerService)
	}
	for i := range o.Services {
		tr.Upsert(Service(i))
		tr.Upsert(Slice(i, eps(i)))
	}
	tr.Synced()
	stage(log, "objects fed")
	if err := sync(); err != nil {
		return res, fmt.Errorf("first sync: %w", err)
	}
	res.FirstSyncMs = ms(time.Since(start))
	stopCPU()
	stage(log, "first sync")
	if err := writeHeapProfile(o.HeapProfile, "first-sync"); err != nil {
		return res, err
	}

	// (2) Single-endpoint changes: event in, kernel acknowledged out.
	rng := rand.New(rand.NewPCG(1, 2))
	next := o.Services * o.EndpointsPerService
	var lat []time.Duration
	for range o.Changes {
		i := rng.IntN(max(o.Services-1, 1))
		if i == probe {
			break
		}
		e := eps(i)
		e[rng.IntN(len(e))] = nth(endpointBase, next)
		changed[i] = e
		next++
		s := Slice(i, e)
		t0 := time.Now()
		tr.Upsert(s)
		if err := sync(); err != nil {
			return res, fmt.Errorf("endpoint change: %w", err)
		}
		lat = append(lat, time.Since(t0))
	}
	res.ChangeP50Ms, res.ChangeP99Ms = ms(pct(lat, 50)), ms(pct(lat, 99))

	// (3) Adding one service (with its slice) at a time.
	lat = lat[:0]
	for k := range o.Adds {
		i := o.Services + k
		t0 := time.Now()
		tr.Upsert(Service(i))
		tr.Upsert(Slice(i, Endpoints(i, o.EndpointsPerService)))
		if err := sync(); err != nil {
			return res, fmt.Errorf("add service: %w", err)
		}
		lat = append(lat, time.Since(t0))
	}
	res.AddP50Ms, res.AddP99Ms = ms(pct(lat, 50)), ms(pct(lat, 99))

	res.PeakRSSMB = peakRSSMB()
	if err := writeHeapProfile(o.HeapProfile, "end"); err != nil {
		return res, err
	}
	if !o.SkipKernelObjects {
		if res.KernelObjects, err = kernelObjects(o.Mode); err != nil {
			log.Warn("count kernel objects", "err", err)
		}
	}

	// (6) The packet path: connect through the probed service, and directly, while everything exists.
	if o.Backend.IsValid() && o.Connects > 0 {
		svc := netip.AddrPortFrom(ServiceIP(probe), 80).String()
		direct := netip.AddrPortFrom(o.Backend, 8080).String()
		through, err := connectTimes(svc, o.Connects)
		if err != nil {
			return res, fmt.Errorf("connect through service: %w", err)
		}
		floor, err := connectTimes(direct, o.Connects)
		if err != nil {
			return res, fmt.Errorf("connect directly: %w", err)
		}
		res.ConnectP50Us, res.ConnectP99Us = us(pct(through, 50)), us(pct(through, 99))
		res.DirectP50Us, res.DirectP99Us = us(pct(floor, 50)), us(pct(floor, 99))
	}
	return res, nil
}

// stage logs the peak RSS so far and the heap's size at a stage of the run, at debug level.
func stage(log *slog.Logger, name string) {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	log.Debug("bench stage", "stage", name, "peakRSSMB", peakRSSMB(), "heapAllocMB", m.HeapAlloc>>20, "heapSysMB", m.HeapSys>>20)
}

// startCPUProfile starts a CPU profile to prefix-stage.pprof and returns what stops it; an
// empty prefix profiles nothing.
func startCPUProfile(prefix, stage string) (stop func(), err error) {
	if prefix == "" {
		return func() {}, nil
	}
	f, err := os.Create(prefix + "-" + stage + ".pprof")
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		_ = f.Close()
	}, nil
}

// writeHeapProfile writes the heap profile to prefix-stage.pprof; an empty prefix writes nothing.
func writeHeapProfile(prefix, stage string) error {
	if prefix == "" {
		return nil
	}
	runtime.GC() // the profile shows the heap as of the last collection: make that now
	f, err := os.Create(prefix + "-" + stage + ".pprof")
	if err != nil {
		return fmt.Errorf("heap profile: %w", err)
	}
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		f.Close()
		return fmt.Errorf("heap profile: %w", err)
	}
	return f.Close()
}

func connectTimes(addr string, n int) ([]time.Duration, error) {
	var out []time.Duration
	for range n {
		t0 := time.Now()
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			return nil, err
		}
		out = append(out, time.Since(t0))
		_ = c.Close()
	}
	return out, nil
}

func pct(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[min(max(i-1, 0), len(s)-1)]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }

// peakRSSMB reads this process's peak resident set size.
func peakRSSMB() float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

// kernelObjects counts what the mode put in the kernel of this namespace: iptables rules and
// chains, or nftables rules, chains, sets/maps and their elements; for ipvs, virtual and real
// servers plus its nftables helper tables.
func kernelObjects(mode string) (int, error) {
	switch mode {
	case "ipvs":
		out, err := exec.Command("ipvsadm", "-Sn").Output()
		if err != nil {
			return 0, err
		}
		n, err := kernelObjects("nftables")
		return n + bytes.Count(out, []byte("\n")), err
	case "iptables":
		out, err := exec.Command("iptables-save").Output()
		if err != nil {
			return 0, err
		}
		n := 0
		for _, l := range bytes.Split(out, []byte("\n")) {
			if bytes.Contains(l, []byte("NA-")) && (bytes.HasPrefix(l, []byte("-A")) || bytes.HasPrefix(l, []byte(":"))) {
				n++
			}
		}
		return n, nil
	default:
		out, err := exec.Command("nft", "-j", "list", "ruleset").Output()
		if err != nil {
			return 0, err
		}
		return countNft(out)
	}
}

// countNft counts the chains, rules, sets, maps and their elements in `nft -j list` output.
func countNft(out []byte) (int, error) {
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return 0, err
	}
	n := 0
	for _, o := range doc.Nftables {
		for kind, raw := range o {
			switch kind {
			case "rule", "chain":
				n++
			case "set", "map":
				var s struct {
					Elem []json.RawMessage `json:"elem"`
				}
				_ = json.Unmarshal(raw, &s)
				n += 1 + len(s.Elem)
			}
		}
	}
	return n, nil
}
