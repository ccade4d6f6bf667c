package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"nodeagent/agent"
	"nodeagent/agent/config"
)

// kubeProxyCLI holds kube-proxy flags that act once, at start, and have no key of their own in
// the config file.
type kubeProxyCLI struct {
	iptablesSyncPeriod    time.Duration
	iptablesMinSyncPeriod time.Duration
	writeConfigTo         string
	cleanup               bool
	initOnly              bool
	healthzPort           int
	metricsPort           int
	// accepted are flags given that nodeagent takes and does not act on, warned about once.
	accepted []string
}

// kubeProxyFlags binds every kube-proxy v1.34 flag run does not bind elsewhere, so that
// kube-proxy's command line (its DaemonSet's, kubeadm's) starts nodeagent unchanged. The flags
// nodeagent does not act on are accepted with one warning each (see accepted).
func kubeProxyFlags(fs *flag.FlagSet, c *config.Config, k *kubeProxyCLI) {
	fs.DurationVar(&k.iptablesSyncPeriod, "iptables-sync-period", 0, "kube-proxy's: --sync-period when the mode is not ipvs")
	fs.DurationVar(&k.iptablesMinSyncPeriod, "iptables-min-sync-period", 0, "kube-proxy's: --min-sync-period when the mode is not ipvs")
	fs.StringVar(&k.writeConfigTo, "write-config-to", "", "write the configuration in force (KubeProxyConfiguration YAML) to this file and exit")
	fs.BoolVar(&k.cleanup, "cleanup", false, "remove every mode's rules (as `nodeagent cleanup`) and exit")
	fs.BoolVar(&k.initOnly, "init-only", false, "do the steps that need full root (conntrack sysctls, OOM score) and exit")
	fs.StringVar(&c.Master, "master", "", "the API server's address (overrides the kubeconfig's)")
	fs.IntVar(&k.healthzPort, "healthz-port", -1, "deprecated (kube-proxy's): the port of --healthz-bind-address; 0 turns it off")
	fs.IntVar(&k.metricsPort, "metrics-port", -1, "deprecated (kube-proxy's): the port of --metrics-bind-address; 0 turns it off")
	fs.StringVar(&c.ClientConnection.ContentType, "kube-api-content-type", c.ClientConnection.ContentType, "content type of requests to the API server (default "+config.ProtobufContent+")")
	fs.Func("kube-api-qps", "queries per second to the API server (default 5)", func(s string) error {
		v, err := strconv.ParseFloat(s, 32)
		c.ClientConnection.QPS = float32(v)
		return err
	})
	fs.Func("kube-api-burst", "burst of queries to the API server (default 10)", func(s string) error {
		v, err := strconv.ParseInt(s, 10, 32)
		c.ClientConnection.Burst = int32(v)
		return err
	})
	fs.BoolVar(&c.BindAddressHardFail, "bind-address-hard-fail", c.BindAddressHardFail, "stop when the healthz or metrics server cannot bind its port (default: log it and go on)")
	fs.Func("oom-score-adj", "OOM score adjustment of the process, -1000..1000 (default -999)", func(s string) error {
		v, err := strconv.ParseInt(s, 10, 32)
		if err != nil || v < -1000 || v > 1000 {
			return fmt.Errorf("want an integer in [-1000, 1000]")
		}
		c.OOMScoreAdj = ptrTo(int32(v))
		return nil
	})
	// The conntrack flags are set through the config's block at parse time (after the config
	// file was read), so that a flag overrides the file key by key.
	ct := func() *config.Conntrack {
		full := c.ConntrackSettings()
		c.Conntrack = &full
		return c.Conntrack
	}
	int32Flag(fs, "conntrack-max-per-core", "most connections tracked per CPU; 0 leaves nf_conntrack_max as it is (default 32768)", func(v int32) { ct().MaxPerCore = &v })
	int32Flag(fs, "conntrack-min", "least nf_conntrack_max, whatever conntrack-max-per-core gives (default 131072)", func(v int32) { ct().Min = &v })
	durationFlag(fs, "conntrack-tcp-timeout-established", "idle timeout of established TCP connections, 0 leaves it (default 24h0m0s)", func(d time.Duration) { ct().TCPEstablishedTimeout = &metav1.Duration{Duration: d} })
	durationFlag(fs, "conntrack-tcp-timeout-close-wait", "timeout of TCP connections in CLOSE_WAIT, 0 leaves it (default 1h0m0s)", func(d time.Duration) { ct().TCPCloseWaitTimeout = &metav1.Duration{Duration: d} })
	durationFlag(fs, "conntrack-udp-timeout", "idle timeout of UNREPLIED UDP flows, 0 leaves it", func(d time.Duration) { ct().UDPTimeout.Duration = d })
	durationFlag(fs, "conntrack-udp-timeout-stream", "idle timeout of ASSURED UDP flows, 0 leaves it", func(d time.Duration) { ct().UDPStreamTimeout.Duration = d })
	fs.Var(boolFunc(func(b bool) { ct().TCPBeLiberal = b }), "conntrack-tcp-be-liberal", "set nf_conntrack_tcp_be_liberal")
	fs.Func("v", "log verbosity as kube-proxy's -v: 4 and above log at debug level", func(s string) error {
		v, err := strconv.Atoi(s)
		c.Logging.Verbosity = &v
		return err
	})
	fs.StringVar(&c.Logging.Format, "logging-format", c.Logging.Format, "text (default) or json")
	fs.Func("feature-gates", "kube-proxy's feature gates, key=value pairs; accepted, see the README for the ones nodeagent follows", func(s string) error {
		if c.FeatureGates == nil {
			c.FeatureGates = map[string]bool{}
		}
		for _, kv := range splitList(s) {
			name, val, ok := strings.Cut(kv, "=")
			b, err := strconv.ParseBool(strings.TrimSpace(val))
			if !ok || err != nil {
				return fmt.Errorf("%q: want name=true|false", kv)
			}
			c.FeatureGates[strings.TrimSpace(name)] = b
		}
		return nil
	})
	for _, a := range []struct {
		name   string
		isBool bool
	}{
		{"bind-address", false}, {"config-sync-period", false}, {"show-hidden-metrics-for-version", false},
		{"ipvs-exclude-cidrs", false}, {"vmodule", false}, {"log-flush-frequency", false},
		{"log-text-split-stream", true}, {"log-text-info-buffer-size", false},
		{"log-json-split-stream", true}, {"log-json-info-buffer-size", false},
	} {
		if fs.Lookup(a.name) != nil {
			continue
		}
		fs.Var(&acceptedFlag{name: a.name, isBool: a.isBool, seen: &k.accepted}, a.name, "kube-proxy's; accepted, not acted on (see the README)")
	}
}

// acceptedFlag takes a kube-proxy flag nodeagent does not act on and notes that it was given.
type acceptedFlag struct {
	name   string
	isBool bool
	value  string
	seen   *[]string
}

func (a *acceptedFlag) String() string {
	if a == nil {
		return ""
	}
	return a.value
}
func (a *acceptedFlag) Set(s string) error {
	a.value = s
	*a.seen = append(*a.seen, "--"+a.name)
	return nil
}
func (a *acceptedFlag) IsBoolFlag() bool { return a.isBool }

// boolFunc is a bool flag (given alone or as =true/false) that calls set.
type boolFunc func(bool)

func (f boolFunc) String() string { return "false" }
func (f boolFunc) Set(s string) error {
	b, err := strconv.ParseBool(s)
	if err == nil {
		f(b)
	}
	return err
}
func (f boolFunc) IsBoolFlag() bool { return true }

func durationFlag(fs *flag.FlagSet, name, usage string, set func(time.Duration)) {
	fs.Func(name, usage, func(s string) error {
		d, err := time.ParseDuration(s)
		if err == nil {
			set(d)
		}
		return err
	})
}

func int32Flag(fs *flag.FlagSet, name, usage string, set func(int32)) {
	fs.Func(name, usage, func(s string) error {
		v, err := strconv.ParseInt(s, 10, 32)
		if err == nil {
			set(int32(v))
		}
		return err
	})
}

func ptrTo[T any](v T) *T { return &v }

// finishKubeProxy applies what kube-proxy derives from its flags after parsing: the
// mode-specific sync periods and the deprecated port flags.
func finishKubeProxy(c *config.Config, k *kubeProxyCLI, explicit map[string]bool) error {
	if c.Mode != "ipvs" {
		if explicit["iptables-sync-period"] && !explicit["sync-period"] {
			c.SyncPeriod = k.iptablesSyncPeriod
		}
		if explicit["iptables-min-sync-period"] && !explicit["min-sync-period"] {
			c.MinSyncPeriod = k.iptablesMinSyncPeriod
		}
	}
	if c.SyncPeriod <= 0 {
		return errors.New("--sync-period must be greater than 0")
	}
	if c.MinSyncPeriod < 0 {
		return errors.New("--min-sync-period must not be negative")
	}
	var err error
	if explicit["healthz-port"] && !explicit["healthz-bind-address"] {
		c.HealthzBindAddress, err = withPort(c.HealthzBindAddress, k.healthzPort)
		if err != nil {
			return fmt.Errorf("--healthz-port: %w", err)
		}
	}
	if explicit["metrics-port"] && !explicit["metrics-bind-address"] {
		c.MetricsBindAddress, err = withPort(c.MetricsBindAddress, k.metricsPort)
		if err != nil {
			return fmt.Errorf("--metrics-port: %w", err)
		}
	}
	switch c.Logging.Format {
	case "", "text", "json":
	default:
		return fmt.Errorf("--logging-format %q: want text or json", c.Logging.Format)
	}
	return nil
}

// withPort replaces addr's port (0: the server is off, as kube-proxy's deprecated flags).
func withPort(addr string, port int) (string, error) {
	if port < 0 || port > 65535 {
		return "", fmt.Errorf("port %d out of range", port)
	}
	if port == 0 {
		return "", nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = "0.0.0.0"
	}
	return net.JoinHostPort(host, strconv.Itoa(port)), nil
}

// daemonLogger is run's logger: text, or JSON for --logging-format json.
func daemonLogger(c *config.Config, w io.Writer, explicit map[string]bool) (*slog.Logger, error) {
	return newFormatLogger(w, c.Level(explicit), c.Logging.Format == "json")
}

// logAccepted warns once about each kube-proxy flag given that nodeagent does not act on.
func logAccepted(c *config.Config, k *kubeProxyCLI, log *slog.Logger) {
	seen := map[string]bool{}
	for _, f := range k.accepted {
		if !seen[f] {
			seen[f] = true
			log.Warn("kube-proxy flag accepted but not acted on by nodeagent", "flag", f)
		}
	}
	for gate, on := range c.FeatureGates {
		log.Info("feature gate noted", "gate", gate, "enabled", on)
	}
}

// startupActions runs kube-proxy's act-and-exit flags; done reports that run should exit.
func startupActions(ctx context.Context, c *config.Config, k *kubeProxyCLI, log *slog.Logger, stderr io.Writer) (done bool, err error) {
	switch {
	case k.writeConfigTo != "":
		if err := c.WriteFile(k.writeConfigTo); err != nil {
			return true, err
		}
		log.Info("wrote configuration", "file", k.writeConfigTo)
		return true, nil
	case k.cleanup:
		return true, cleanupCmd(ctx, []string{"--log-level", c.LogLevel}, stderr, c)
	case k.initOnly:
		return true, agent.Prepare(c, log)
	}
	return false, nil
}
