package main

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// The seed's kube-proxy ConfigMap content is read verbatim, and flags given too override it.
func TestKubeProxyConfigFile(t *testing.T) {
	c := defaultConfig()
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	if err := parseWithConfig(fs, []string{"--config", "../../examples/kube-proxy-config.yaml"}, &c); err != nil {
		t.Fatal(err)
	}
	if c.Mode != "ipvs" || !c.IPVS.StrictARP {
		t.Errorf("mode %q strictARP %v, want ipvs and true", c.Mode, c.IPVS.StrictARP)
	}

	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(path, []byte("mode: iptables\nclusterCIDR: 10.244.0.0/16\niptables:\n  masqueradeAll: true\n  syncPeriod: 10s\n  minSyncPeriod: 1s\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c = defaultConfig()
	fs = flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	if err := parseWithConfig(fs, []string{"--config=" + path, "--proxy-mode", "nftables"}, &c); err != nil {
		t.Fatal(err)
	}
	if c.Mode != "nftables" || c.ClusterCIDR != "10.244.0.0/16" || !c.masqueradeAll || c.syncPeriod != 10*time.Second || c.minSyncPeriod != time.Second {
		t.Errorf("got %+v", c)
	}
	mc, err := c.modelConfig()
	if err != nil || len(mc.ClusterCIDRs) != 1 || !mc.MasqueradeAll {
		t.Errorf("model config %+v %v", mc, err)
	}
}
