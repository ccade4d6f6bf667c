package main

import (
	"bytes"
	"context"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"nodeagent/agent"
	"nodeagent/agent/config"
)

// kernelHasIPVS reports whether this kernel has IPVS loaded (it is not, on the project's
// machines; inside vm/run it is).
func kernelHasIPVS() bool {
	_, err := os.Stat("/proc/net/ip_vs")
	return err == nil
}

// On a kernel without IPVS, run --proxy-mode ipvs stops at once, before it reads any input,
// naming the missing module and the mode to use instead.
func TestRunIPVSWithoutKernelSupport(t *testing.T) {
	if kernelHasIPVS() {
		t.Skip("this kernel has IPVS")
	}
	var stderr bytes.Buffer
	start := time.Now()
	err := dispatch(context.Background(), []string{"run", "--proxy-mode", "ipvs", "--manifests", t.TempDir(),
		"--hostname-override", "node01", "--healthz-bind-address", "", "--metrics-bind-address", ""}, io.Discard, &stderr)
	took := time.Since(start)
	if err == nil {
		t.Fatal("run --proxy-mode ipvs succeeded on a kernel without IPVS")
	}
	for _, want := range []string{"ip_vs", "--proxy-mode nftables"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if took > 2*time.Second {
		t.Errorf("run took %v to give up, want at once", took)
	}
}

// render --proxy-mode ipvs needs no kernel support, and --ipvs-scheduler sets the scheduler of
// services without the annotation.
func TestRenderIPVS(t *testing.T) {
	dir := t.TempDir()
	svc := "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  clusterIP: 10.96.0.80\n  sessionAffinity: ClientIP\n  ports: [{port: 80}]\n" +
		"---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: default\n  labels: {kubernetes.io/service-name: web}\naddressType: IPv4\nports: [{name: \"\", port: 8080, protocol: TCP}]\nendpoints:\n- addresses: [10.244.1.5]\n  conditions: {ready: true}\n"
	if err := os.WriteFile(filepath.Join(dir, "web.yaml"), []byte(svc), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, stderr bytes.Buffer
	if err := dispatch(context.Background(), []string{"render", "--proxy-mode", "ipvs", "--manifests", dir,
		"--hostname-override", "node01", "--ipvs-scheduler", "wlc"}, &out, &stderr); err != nil {
		t.Fatalf("render: %v\n%s", err, stderr.String())
	}
	for _, want := range []string{"# 10.96.0.80/32\n", "-A -t 10.96.0.80:80 -s wlc -p 10800\n", "-a -t 10.96.0.80:80 -r 10.244.1.5:8080 -m -w 1\n", "table ip nodeagent-ipvs"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("render lacks %q:\n%s", want, out.String())
		}
	}
	err := dispatch(context.Background(), []string{"render", "--proxy-mode", "ipvs", "--manifests", dir, "--ipvs-scheduler", "fastest"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "fastest") {
		t.Errorf("an unknown --ipvs-scheduler: %v, want an error naming it", err)
	}
}

// The config file's ipvs: block is read, flags override it, and the settings reach the proxier.
func TestIPVSConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	conf := "mode: ipvs\nipvs:\n  scheduler: lc\n  strictARP: true\n  tcpTimeout: 900s\n  tcpFinTimeout: 30s\n  udpTimeout: 10s\n  syncPeriod: 20s\n"
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	c := config.Default()
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.DurationVar(&c.SyncPeriod, "sync-period", c.SyncPeriod, "")
	fs.DurationVar(&c.MinSyncPeriod, "min-sync-period", c.MinSyncPeriod, "")
	if err := parseWithConfig(fs, []string{"--config", path, "--ipvs-udp-timeout", "5s", "--ipvs-min-sync-period", "2s"}, &c); err != nil {
		t.Fatal(err)
	}
	o := agent.IPVSOptions(&c, nil)
	if c.Mode != "ipvs" || o.Scheduler != "lc" || !o.StrictARP || o.TCPTimeout != 900*time.Second ||
		o.TCPFinTimeout != 30*time.Second || o.UDPTimeout != 5*time.Second {
		t.Errorf("mode %q, proxier options %+v", c.Mode, o)
	}
	if c.SyncPeriod != 20*time.Second || c.MinSyncPeriod != 2*time.Second {
		t.Errorf("sync period %v, min %v; want 20s from the file and 2s from --ipvs-min-sync-period", c.SyncPeriod, c.MinSyncPeriod)
	}
}
