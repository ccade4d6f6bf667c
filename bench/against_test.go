package bench

import (
	"bytes"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"nodeagent/test/kube"
)

func TestEndpointProbe(t *testing.T) {
	cip := netip.MustParseAddr("10.96.4.7")
	ep := netip.MustParseAddrPort("10.128.0.5:8080")
	other := netip.MustParseAddrPort("10.128.0.6:8080")
	for _, impl := range []string{ImplNodeagent, ImplKubeProxy} {
		for _, mode := range []string{"iptables", "nftables"} {
			p, err := EndpointProbe(impl, mode, 1, cip, 3, ep)
			if err != nil {
				t.Fatal(err)
			}
			p2, _ := EndpointProbe(impl, mode, 1, cip, 3, other)
			p3, _ := EndpointProbe(impl, mode, 2, cip.Next(), 3, ep)
			if p.request("1") == p2.request("1") || p.request("1") == p3.request("1") {
				t.Errorf("%s %s: different endpoints or services probe alike: %s", impl, mode, p.request("1"))
			}
			if mode == "iptables" && (p.Table != "nat" || len(p.Chain) > 28) {
				t.Errorf("%s iptables: %+v is not a valid nat chain", impl, p)
			}
			id, back, err := parseRequest(p.request("7"))
			if err != nil || id != "7" || back.request("7") != p.request("7") {
				t.Errorf("%s %s: request %q read back as %q, %+v, %v", impl, mode, p.request("7"), id, back, err)
			}
			if _, err := ReadyProbe(impl, mode); err != nil {
				t.Error(err)
			}
		}
	}
	p, _ := EndpointProbe(ImplKubeProxy, "nftables", 1, cip, 3, ep)
	if !strings.HasSuffix(p.Chain, "-bench/svc-00001/tcp/http__10.128.0.5/8080") {
		t.Errorf("kube-proxy nftables: chain %q does not end with the readable service port and endpoint", p.Chain)
	}
	// nodeagent's map: one key per slot, 16 bytes each; the value is address . port.
	p, _ = EndpointProbe(ImplNodeagent, "nftables", 1, cip, 3, ep)
	if len(p.Keys) != 3 || len(p.Keys[0]) != 16 || !bytes.HasPrefix(p.Keys[2], []byte{10, 96, 4, 7, 6, 0, 0, 0, 0, 80}) ||
		!bytes.Equal(p.Value, []byte{10, 128, 0, 5, 0x1f, 0x90}) {
		t.Errorf("nodeagent nftables probe %+v", p)
	}
	if _, err := EndpointProbe(ImplKubeProxy, "ipvs", 1, cip, 3, ep); err == nil {
		t.Error("ipvs has no endpoint probe but got one")
	}
}

func TestRatiosAndTable(t *testing.T) {
	rs := []AgainstResult{
		{Impl: ImplNodeagent, Mode: "nftables", Services: 1000, ChangeP50Ms: 5, ChangeP99Ms: 10, CPUSeconds: 2, PeakRSSMB: 50},
		{Impl: ImplKubeProxy, Mode: "nftables", Services: 1000, ChangeP50Ms: 100, ChangeP99Ms: 0, CPUSeconds: 8, PeakRSSMB: 100},
		{Impl: ImplNodeagent, Mode: "iptables", Services: 1000},
	}
	q := Ratios(rs)
	if len(q) != 1 {
		t.Fatalf("got %d ratios, want 1 (the iptables run has no kube-proxy row): %+v", len(q), q)
	}
	if q[0].ChangeP50 != 0.05 || q[0].ChangeP99 != 0 || q[0].CPUSeconds != 0.25 || q[0].PeakRSS != 0.5 {
		t.Errorf("ratios %+v", q[0])
	}
	var b bytes.Buffer
	WriteAgainstTable(&b, rs)
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 6 || !strings.Contains(lines[4], "nodeagent : kube-proxy") || !strings.Contains(lines[4], "**0.050**") {
		t.Errorf("table:\n%s", b.String())
	}
}

// TestAgainstKubeProxy runs the side-by-side benchmark at a tiny size in both modes: a real API
// server, kube-proxy and nodeagent each in their own lab namespace, every number observed.
func TestAgainstKubeProxy(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: makes network namespaces")
	}
	if _, err := exec.LookPath("etcd"); err != nil {
		t.Skip("no etcd in PATH (Debian's etcd-server; scripts/deps.sh installs it)")
	}
	// As test/kube's tests: build.sh does nothing when its cache is current.
	binDir, err := kube.Build(t.Context())
	if err != nil {
		t.Skipf("kube-apiserver and kube-proxy cannot be built: %v", err)
	}
	self := buildNodeagent(t)
	start := time.Now()
	rs, err := Against(t.Context(), AgainstOptions{
		Modes: []string{"iptables", "nftables"}, Sizes: []int{20}, EndpointsPerService: 2, Changes: 5,
		ChangeGap: 1100 * time.Millisecond, ChangeTimeout: 30 * time.Second, CreateTimeout: time.Minute,
		Nodeagent: self, KubeBinDir: binDir, Dir: t.TempDir(), TrafficSamples: 2,
		DatapathDuration: time.Second, DatapathRounds: 1, DatapathWorkers: 2,
		Log: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	var b bytes.Buffer
	WriteAgainstTable(&b, rs)
	t.Logf("in %v:\n%s", time.Since(start).Round(time.Millisecond), b.String())
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 4 {
		t.Fatalf("%d results, want 4", len(rs))
	}
	var traffic bytes.Buffer
	WriteTrafficTable(&traffic, rs)
	t.Logf("traffic:\n%s", traffic.String())
	var dp bytes.Buffer
	WriteDatapathTable(&dp, rs)
	t.Logf("datapath:\n%s", dp.String())
	for _, r := range rs {
		// The datapath phase: connections through a working service, every one answered.
		if d := r.Datapath; d == nil || len(d.Runs) != 1 || d.Summary.Conns <= 0 || d.Summary.ConnsPerSec <= 0 ||
			d.Summary.Errors != 0 || d.Summary.ConnectP50Us <= 0 || d.Summary.RequestP99Us < d.Summary.ConnectP50Us {
			t.Errorf("%s %s: implausible datapath %+v", r.Impl, r.Mode, d)
		}
		// The traffic probe: a pod answered through the service after each write, both cases (0 ms:
		// the rules were in before the API write returned).
		for what, l := range map[string]Latencies{"first endpoint": r.FirstEndpoint, "endpoint replaced": r.Replaced} {
			if l.Samples != 2 || l.P50Ms < 0 || l.MaxMs < l.P50Ms || l.MaxMs > 30_000 {
				t.Errorf("%s %s, %s: implausible traffic latencies %+v", r.Impl, r.Mode, what, l)
			}
		}
		if r.Changes != 5 || r.ChangeP50Ms <= 0 || r.ChangeP99Ms < r.ChangeP50Ms || r.FirstSyncMs <= 0 ||
			r.CPUSeconds <= 0 || r.PeakRSSMB <= 0 || r.KernelObjects <= 0 {
			t.Errorf("implausible result %+v", r)
		}
	}
	out, _ := exec.Command("ip", "netns", "list").Output()
	// Only this process's: another bench may run beside the test.
	if bytes.Contains(out, fmt.Appendf(nil, "navs%d-", os.Getpid())) {
		t.Errorf("lab namespaces left behind:\n%s", out)
	}
}

// buildNodeagent builds ./cmd/nodeagent (the agent and the kernel observer), or takes
// $NODEAGENT_BIN.
func buildNodeagent(t *testing.T) string {
	t.Helper()
	if b := os.Getenv("NODEAGENT_BIN"); b != "" {
		abs, err := filepath.Abs(b)
		if err != nil {
			t.Fatal(err)
		}
		return abs
	}
	_, file, _, _ := runtime.Caller(0)
	bin := filepath.Join(t.TempDir(), "nodeagent")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/nodeagent")
	cmd.Dir = filepath.Join(filepath.Dir(file), "..")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/nodeagent: %v\n%s", err, out)
	}
	return bin
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
