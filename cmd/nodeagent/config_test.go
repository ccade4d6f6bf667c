package main

import (
	"flag"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
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

	mc, err := c.modelConfig()
	if err != nil {
		t.Fatal(err)
	}
	if mc.MasqueradeAll {
		t.Error("masqueradeAll without it being set")
	}
}

// parse runs parseWithConfig as run does (with its sync-period flags) over a config file
// holding conf.
func parse(t *testing.T, conf string, args ...string) (Config, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	c := defaultConfig()
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.DurationVar(&c.syncPeriod, "sync-period", c.syncPeriod, "")
	fs.DurationVar(&c.minSyncPeriod, "min-sync-period", c.minSyncPeriod, "")
	err := parseWithConfig(fs, append([]string{"--config", path}, args...), &c)
	return c, err
}

// The per-mode block in force is the one of the mode given on the command line, not the file's
// mode; flags given explicitly still win over the block.
func TestConfigModeBlockFollowsProxyModeFlag(t *testing.T) {
	conf := "mode: iptables\nclusterCIDR: 10.244.0.0/16\n" +
		"iptables:\n  masqueradeAll: true\n  syncPeriod: 10s\n  minSyncPeriod: 1s\n" +
		"nftables:\n  masqueradeAll: false\n  syncPeriod: 20s\n  minSyncPeriod: 2s\n" +
		"ipvs:\n  syncPeriod: 40s\n"
	for _, tc := range []struct {
		args          []string
		mode          string
		masq          bool
		sync, minimum time.Duration
	}{
		{nil, "iptables", true, 10 * time.Second, time.Second},
		{[]string{"--proxy-mode", "nftables"}, "nftables", false, 20 * time.Second, 2 * time.Second},
		{[]string{"--proxy-mode=ipvs"}, "ipvs", false, 40 * time.Second, 0},
		{[]string{"--proxy-mode", "nftables", "--sync-period", "5s", "--masquerade-all"}, "nftables", true, 5 * time.Second, 2 * time.Second},
		{[]string{"--proxy-mode", "ipvs", "--ipvs-sync-period", "7s"}, "ipvs", false, 7 * time.Second, 0},
	} {
		c, err := parse(t, conf, tc.args...)
		if err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if c.Mode != tc.mode || c.masqueradeAll != tc.masq || c.syncPeriod != tc.sync || c.minSyncPeriod != tc.minimum {
			t.Errorf("%v: mode %s masqueradeAll %v syncPeriod %v minSyncPeriod %v; want %s %v %v %v",
				tc.args, c.Mode, c.masqueradeAll, c.syncPeriod, c.minSyncPeriod, tc.mode, tc.masq, tc.sync, tc.minimum)
		}
	}
}

// A key neither nodeagent nor kube-proxy knows is an error — a misspelt memberlistSecret must not
// run gossip unencrypted — and so are keys given twice, keys in the wrong case, unknown keys
// inside a block, and another kind of object.
func TestConfigUnknownKeys(t *testing.T) {
	for conf, want := range map[string]string{
		"memberlistBind: 10.0.0.151\nmemberlistSecrett: s3cret\n": `unknown field "memberlistSecrett"`,
		"memberlistSecret: a\nmemberlistSecret: b\n":              `"memberlistSecret"`,
		"MemberlistSecret: s3cret\n":                              `"MemberlistSecret"`,
		"iptables:\n  masqueradeAl: true\n":                       `unknown field "iptables.masqueradeAl"`,
		"clientConnection:\n  kubeConfig: /etc/kubeconfig\n":      `"clientConnection.kubeConfig"`,
		"kind: KubeletConfiguration\n":                            `kind "KubeletConfiguration"`,
		"apiVersion: kubeproxy.config.k8s.io/v1beta1\n":           `apiVersion`,
		"- mode: iptables\n":                                      "cannot unmarshal array",
	} {
		_, err := parse(t, conf)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want one with %s", conf, err, want)
		}
	}
}

// A kube-proxy configuration as kubeadm writes it (every key, most empty) loads: empty values
// mean kube-proxy's defaults (mode "" is iptables), and the kube-proxy settings nodeagent does
// not implement that are set are named for the log.
func TestConfigKubeadm(t *testing.T) {
	c, err := parse(t, kubeadmConfig)
	if err != nil {
		t.Fatal(err)
	}
	if c.Mode != "iptables" || c.HealthzBindAddress != "0.0.0.0:10256" || c.MetricsBindAddress != "127.0.0.1:10249" ||
		c.ClientConnection.Kubeconfig != "/var/lib/kube-proxy/kubeconfig.conf" || c.ClusterCIDR != "10.244.0.0/16" {
		t.Errorf("got mode %q healthz %q metrics %q kubeconfig %q clusterCIDR %q", c.Mode, c.HealthzBindAddress,
			c.MetricsBindAddress, c.ClientConnection.Kubeconfig, c.ClusterCIDR)
	}
	if want := []string{"bindAddress"}; !slices.Equal(c.ignored, want) {
		t.Errorf("ignored settings %v, want %v", c.ignored, want)
	}
	if ct := c.conntrack(); ct.MaxPerCore == nil || *ct.MaxPerCore != 65536 || *ct.Min != 131072 || ct.TCPEstablishedTimeout.Duration != 24*time.Hour {
		t.Errorf("conntrack %+v: want the file's maxPerCore 65536 over kube-proxy's defaults", ct)
	}
	if len(c.FeatureGates) == 0 {
		t.Error("feature gates of the file were dropped")
	}
}

// kubeadmConfig is kubeadm v1.34's kube-proxy ConfigMap content, with a feature gate and a
// conntrack setting added.
const kubeadmConfig = `apiVersion: kubeproxy.config.k8s.io/v1alpha1
bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: ""
  burst: 0
  contentType: ""
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 0
clusterCIDR: 10.244.0.0/16
configSyncPeriod: 0s
conntrack:
  maxPerCore: 65536
  min: null
  tcpBeLiberal: false
  tcpCloseWaitTimeout: null
  tcpEstablishedTimeout: null
  udpStreamTimeout: 0s
  udpTimeout: 0s
detectLocal:
  bridgeInterface: ""
  interfaceNamePrefix: ""
detectLocalMode: ""
enableProfiling: false
featureGates:
  SomeGate: true
healthzBindAddress: ""
hostnameOverride: ""
iptables:
  localhostNodePorts: null
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 0s
  scheduler: ""
  strictARP: false
  syncPeriod: 0s
  tcpFinTimeout: 0s
  tcpTimeout: 0s
  udpTimeout: 0s
kind: KubeProxyConfiguration
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: "0"
    text:
      infoBufferSize: "0"
  verbosity: 0
metricsBindAddress: ""
mode: ""
nftables:
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
nodePortAddresses: null
oomScoreAdj: null
portRange: ""
showHiddenMetricsForVersion: ""
winkernel:
  enableDSR: false
  forwardHealthCheckVip: false
  networkName: ""
  rootHnsEndpointName: ""
  sourceVip: ""
`

// Memberlist needs a secret, from a file, a directory as MetalLB mounts it, the environment, or
// (with a warning) the command line; none is an error unless --memberlist-insecure says so.
func TestMemberlistSecret(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "secret")
	if err := os.WriteFile(file, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	mounted := filepath.Join(dir, "mounted")
	if err := os.Mkdir(mounted, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mounted, "secretkey"), []byte("from-metallb"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		conf string
		args []string
		env  map[string]string
		key  string // "" : none
		err  string
		warn string
	}{
		{name: "none", err: "needs a shared secret"},
		{name: "insecure on purpose", args: []string{"--memberlist-insecure"}, warn: "without a secret"},
		{name: "insecure in the config file", conf: "memberlistInsecure: true\n", warn: "without a secret"},
		{name: "flag", args: []string{"--memberlist-secret", "s3cret"}, key: "s3cret", warn: "/proc/<pid>/cmdline"},
		{name: "config file", conf: "memberlistSecret: s3cret\n", key: "s3cret"},
		{name: "file", args: []string{"--memberlist-secret-file", file}, key: "from-file"},
		{name: "file in the config file", conf: "memberlistSecretFile: " + file + "\n", key: "from-file"},
		{name: "MetalLB's mount", args: []string{"--memberlist-secret-file", mounted}, key: "from-metallb"},
		{name: "environment", env: map[string]string{envMemberlistSecret: "from-env", envMetalLBSecretPath: mounted}, key: "from-env"},
		{name: "MetalLB's environment", env: map[string]string{envMetalLBSecretPath: mounted}, key: "from-metallb"},
		{name: "flag over environment", args: []string{"--memberlist-secret-file", file}, env: map[string]string{envMemberlistSecret: "from-env"}, key: "from-file"},
		{name: "empty file", args: []string{"--memberlist-secret-file", empty}, err: "is empty"},
		{name: "missing file", args: []string{"--memberlist-secret-file", filepath.Join(dir, "nope")}, err: "no such file"},
		{name: "both", args: []string{"--memberlist-secret", "a", "--memberlist-secret-file", file}, err: "not both"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "config.yaml")
			if err := os.WriteFile(path, []byte(tc.conf), 0o600); err != nil {
				t.Fatal(err)
			}
			var logs strings.Builder
			log := slog.New(slog.NewTextHandler(&logs, nil))
			c := defaultConfig()
			fs := flag.NewFlagSet("run", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			runFlags(fs, &c)
			args := append([]string{"--config", path, "--memberlist-bind", "10.0.0.151"}, tc.args...)
			if err := parseWithConfig(fs, args, &c); err != nil {
				t.Fatal(err)
			}
			err := c.resolveMemberlistSecret(explicitFlags(fs), func(k string) string { return tc.env[k] }, log)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one with %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(c.memberlistKey) != tc.key {
				t.Errorf("key %q, want %q", c.memberlistKey, tc.key)
			}
			if tc.warn != "" && !strings.Contains(logs.String(), tc.warn) || tc.warn == "" && logs.Len() > 0 {
				t.Errorf("logs %q, want a warning with %q", logs.String(), tc.warn)
			}
		})
	}
	// Without memberlist nothing is needed.
	c := defaultConfig()
	if err := c.resolveMemberlistSecret(nil, func(string) string { return "" }, slog.Default()); err != nil {
		t.Errorf("without memberlist: %v", err)
	}
}

// lbAllocation and layer2ExcludeInterfaces from the file and their flags: unset keeps the
// defaults (allocation on, MetalLB's exclusions), an empty list excludes nothing.
func TestConfigMetalLBKeys(t *testing.T) {
	for _, tc := range []struct {
		conf    string
		args    []string
		alloc   bool
		exclude []string // nil: the default
	}{
		{"mode: iptables\n", nil, true, nil},
		{"mode: iptables\nlbAllocation: false\nlayer2ExcludeInterfaces: []\n", nil, false, []string{}},
		{"mode: iptables\nlayer2ExcludeInterfaces: ['^eth9$']\n", []string{"--lb-allocation=false"}, false, []string{"^eth9$"}},
		{"mode: iptables\n", []string{"--layer2-exclude-interfaces", "^cni.*, ^docker.*"}, true, []string{"^cni.*", "^docker.*"}},
		{"mode: iptables\n", []string{"--layer2-exclude-interfaces="}, true, []string{}},
	} {
		c, err := parse(t, tc.conf, tc.args...)
		if err != nil {
			t.Fatalf("%q %v: %v", tc.conf, tc.args, err)
		}
		if c.LBAllocation != tc.alloc {
			t.Errorf("%q %v: lbAllocation %v", tc.conf, tc.args, c.LBAllocation)
		}
		switch {
		case tc.exclude == nil && c.Layer2ExcludeInterfaces != nil:
			t.Errorf("%q %v: exclusions %v, want the default", tc.conf, tc.args, *c.Layer2ExcludeInterfaces)
		case tc.exclude != nil && (c.Layer2ExcludeInterfaces == nil || !slices.Equal(*c.Layer2ExcludeInterfaces, tc.exclude)):
			t.Errorf("%q %v: exclusions %v, want %v", tc.conf, tc.args, c.Layer2ExcludeInterfaces, tc.exclude)
		}
	}
}
