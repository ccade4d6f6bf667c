package main

import (
	"context"
	"flag"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"nodeagent/agent/config"
)

// parseRun parses args as run does, through finishKubeProxy.
func parseRun(t *testing.T, args ...string) (*parsedRun, map[string]bool, error) {
	t.Helper()
	c := config.Default()
	var kp kubeProxyCLI
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	runFlags(fs, &c, &kp)
	if err := parseWithConfig(fs, args, &c); err != nil {
		return nil, nil, err
	}
	explicit := explicitFlags(fs)
	return &parsedRun{&c, &kp}, explicit, finishKubeProxy(&c, &kp, explicit)
}

// parsedRun is what run parsed: the configuration and kube-proxy's act-at-start flags.
type parsedRun struct {
	*config.Config
	kp *kubeProxyCLI
}

// kube-proxy's DaemonSet command line, with the flags users add most, starts nodeagent: every
// flag is known, and the ones nodeagent implements take effect.
func TestKubeProxyCommandLine(t *testing.T) {
	c, explicit, err := parseRun(t, "--proxy-mode=iptables", "--hostname-override=node01",
		"--iptables-sync-period=1m", "--iptables-min-sync-period=0s", "--conntrack-max-per-core=0",
		"--conntrack-tcp-timeout-close-wait=30m", "--conntrack-tcp-be-liberal", "--v=4", "--logging-format=json",
		"--kube-api-qps=50", "--kube-api-burst=100", "--kube-api-content-type=application/json",
		"--healthz-port=10266", "--metrics-port=0", "--oom-score-adj=-998", "--feature-gates=NFTablesProxyMode=true",
		"--ipvs-exclude-cidrs=10.0.0.0/8", "--log-text-split-stream", "--bind-address=0.0.0.0", "--manifests", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if c.SyncPeriod != time.Minute || c.MinSyncPeriod != 0 {
		t.Errorf("sync %v min %v, want 1m and 0", c.SyncPeriod, c.MinSyncPeriod)
	}
	ct := c.ConntrackSettings()
	if *ct.MaxPerCore != 0 || ct.TCPCloseWaitTimeout.Duration != 30*time.Minute || !ct.TCPBeLiberal || ct.TCPEstablishedTimeout.Duration != 24*time.Hour {
		t.Errorf("conntrack %+v", ct)
	}
	if c.Level(explicit) != "debug" || c.Logging.Format != "json" {
		t.Errorf("log level %q format %q, want debug json", c.Level(explicit), c.Logging.Format)
	}
	if c.ClientConnection.QPS != 50 || c.ClientConnection.Burst != 100 || c.ClientConnection.ContentType != "application/json" {
		t.Errorf("client %+v", c.ClientConnection)
	}
	if c.HealthzBindAddress != "0.0.0.0:10266" || c.MetricsBindAddress != "" {
		t.Errorf("healthz %q metrics %q, want 0.0.0.0:10266 and off", c.HealthzBindAddress, c.MetricsBindAddress)
	}
	if *c.OOMScoreAdj != -998 || !c.FeatureGates["NFTablesProxyMode"] {
		t.Errorf("oom %d gates %v", *c.OOMScoreAdj, c.FeatureGates)
	}
	if want := []string{"--ipvs-exclude-cidrs", "--log-text-split-stream", "--bind-address"}; !slices.Equal(c.kp.accepted, want) {
		t.Errorf("accepted %v, want %v", c.kp.accepted, want)
	}
}

// --iptables-*-sync-period apply to the iptables and nftables modes only, as in kube-proxy.
func TestIPTablesSyncPeriodFlagsPerMode(t *testing.T) {
	c, _, err := parseRun(t, "--proxy-mode=ipvs", "--iptables-min-sync-period=5s", "--ipvs-min-sync-period=2s")
	if err != nil {
		t.Fatal(err)
	}
	if c.MinSyncPeriod != 2*time.Second {
		t.Errorf("ipvs mode min sync %v, want --ipvs-min-sync-period's 2s", c.MinSyncPeriod)
	}
	c, _, err = parseRun(t, "--proxy-mode=nftables", "--iptables-min-sync-period=5s")
	if err != nil {
		t.Fatal(err)
	}
	if c.MinSyncPeriod != 5*time.Second {
		t.Errorf("nftables mode min sync %v, want 5s", c.MinSyncPeriod)
	}
}

// The conntrack flags override the config file key by key; the file's other keys stay.
func TestConntrackFlagOverridesFile(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, []byte("conntrack:\n  maxPerCore: 0\n  udpTimeout: 10s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, _, err := parseRun(t, "--config", cfg, "--conntrack-udp-timeout=20s")
	if err != nil {
		t.Fatal(err)
	}
	ct := c.ConntrackSettings()
	if *ct.MaxPerCore != 0 || ct.UDPTimeout.Duration != 20*time.Second || *ct.Min != 131072 {
		t.Errorf("conntrack %+v: want file's maxPerCore 0, flag's udp 20s, default min", ct)
	}
}

// --write-config-to writes a file nodeagent (and kube-proxy) reads back to the same settings.
func TestWriteConfigTo(t *testing.T) {
	out := filepath.Join(t.TempDir(), "written.yaml")
	c, _, err := parseRun(t, "--proxy-mode=iptables", "--iptables-min-sync-period=3s", "--cluster-cidr=10.244.0.0/16",
		"--memberlist-secret=hidden", "--write-config-to", out)
	if err != nil {
		t.Fatal(err)
	}
	done, err := startupActions(context.Background(), c.Config, c.kp, slog.New(slog.NewTextHandler(io.Discard, nil)), io.Discard)
	if !done || err != nil {
		t.Fatalf("done %v err %v", done, err)
	}
	b, _ := os.ReadFile(out)
	if strings.Contains(string(b), "hidden") {
		t.Error("the memberlist secret was written out")
	}
	back, _, err := parseRun(t, "--config", out)
	if err != nil {
		t.Fatalf("read back: %v\n%s", err, b)
	}
	if back.Mode != "iptables" || back.MinSyncPeriod != 3*time.Second || back.ClusterCIDR != "10.244.0.0/16" {
		t.Errorf("read back mode %q min sync %v cluster CIDR %q\n%s", back.Mode, back.MinSyncPeriod, back.ClusterCIDR, b)
	}
}

// A config file without a mode is kube-proxy's default mode, iptables.
func TestConfigFileEmptyModeIsIPTables(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(cfg, []byte("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: \"\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, _, err := parseRun(t, "--config", cfg)
	if err != nil {
		t.Fatal(err)
	}
	if c.Mode != "iptables" {
		t.Errorf("mode %q, want iptables", c.Mode)
	}
}
