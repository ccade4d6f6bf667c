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

	"nodeagent/agent/config"
)

// The seed's kube-proxy ConfigMap content is read verbatim, and flags given too override it.
func TestKubeProxyConfigFile(t *testing.T) {
	c := config.Default()
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	if err := parseWithConfig(fs, []string{"--config", "../../examples/kube-proxy-config.yaml"}, &c); err != nil {
		t.Fatal(err)
	}
	if c.Mode != "ipvs" || !c.IPVS.StrictARP {
		t.Errorf("mode %q strictARP %v, want ipvs and true", c.Mode, c.IPVS.StrictARP)
	}

	mc, err := c.ModelConfig()
	if err != nil {
		t.Fatal(err)
	}
	if mc.MasqueradeAll {
		t.Error("masqueradeAll without it being set")
	}
}

// parse runs parseWithConfig as run does (with its sync-period flags) over a config file
// holding conf.
func parse(t *testing.T, conf string, args ...string) (config.Config, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	c := config.Default()
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.DurationVar(&c.SyncPeriod, "sync-period", c.SyncPeriod, "")
	fs.DurationVar(&c.MinSyncPeriod, "min-sync-period", c.MinSyncPeriod, "")
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
		if c.Mode != tc.mode || c.MasqueradeAll != tc.masq || c.SyncPeriod != tc.sync || c.MinSyncPeriod != tc.minimum {
			t.Errorf("%v: mode %s masqueradeAll %v syncPeriod %v minSyncPeriod %v; want %s %v %v %v",
				tc.args, c.Mode, c.MasqueradeAll, c.SyncPeriod, c.MinSyncPeriod, tc.mode, tc.masq, tc.sync, tc.minimum)
		}
	}
}

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
		{name: "environment", env: map[string]string{config.EnvMemberlistSecret: "from-env", config.EnvMetalLBSecretPath: mounted}, key: "from-env"},
		{name: "MetalLB's environment", env: map[string]string{config.EnvMetalLBSecretPath: mounted}, key: "from-metallb"},
		{name: "flag over environment", args: []string{"--memberlist-secret-file", file}, env: map[string]string{config.EnvMemberlistSecret: "from-env"}, key: "from-file"},
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
			c := config.Default()
			fs := flag.NewFlagSet("run", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			runFlags(fs, &c, &kubeProxyCLI{})
			args := append([]string{"--config", path, "--memberlist-bind", "10.0.0.151"}, tc.args...)
			if err := parseWithConfig(fs, args, &c); err != nil {
				t.Fatal(err)
			}
			err := c.ResolveMemberlistSecret(explicitFlags(fs), func(k string) string { return tc.env[k] }, log)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one with %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(c.MemberlistKey) != tc.key {
				t.Errorf("key %q, want %q", c.MemberlistKey, tc.key)
			}
			if tc.warn != "" && !strings.Contains(logs.String(), tc.warn) || tc.warn == "" && logs.Len() > 0 {
				t.Errorf("logs %q, want a warning with %q", logs.String(), tc.warn)
			}
		})
	}
	// Without memberlist nothing is needed.
	c := config.Default()
	if err := c.ResolveMemberlistSecret(nil, func(string) string { return "" }, slog.Default()); err != nil {
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
