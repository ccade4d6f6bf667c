package main

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"nodeagent/proxier"
)

// modeConfig is the per-mode block of a KubeProxyConfiguration (iptables:, nftables:, ipvs:).
type modeConfig struct {
	MasqueradeAll *bool           `json:"masqueradeAll,omitempty"`
	SyncPeriod    metav1.Duration `json:"syncPeriod,omitempty"`
	MinSyncPeriod metav1.Duration `json:"minSyncPeriod,omitempty"`
}

// ipvsConfig is the ipvs: block of a KubeProxyConfiguration.
type ipvsConfig struct {
	modeConfig  `json:",inline"`
	Scheduler   string          `json:"scheduler,omitempty"`
	StrictARP   bool            `json:"strictARP,omitempty"`
	TCPTimeout  metav1.Duration `json:"tcpTimeout,omitempty"`
	TCPFinTimeo metav1.Duration `json:"tcpFinTimeout,omitempty"`
	UDPTimeout  metav1.Duration `json:"udpTimeout,omitempty"`
}

// Config is the agent's configuration. Its YAML form is kube-proxy's KubeProxyConfiguration
// (kubeproxy.config.k8s.io/v1alpha1) — a kube-proxy config file works as it is — plus nodeagent's
// own top-level keys (manifests, serviceClusterIPRange, serviceNodePortRange).
type Config struct {
	Mode               string   `json:"mode,omitempty"`
	HostnameOverride   string   `json:"hostnameOverride,omitempty"`
	ClusterCIDR        string   `json:"clusterCIDR,omitempty"`
	NodePortAddresses  []string `json:"nodePortAddresses,omitempty"`
	HealthzBindAddress string   `json:"healthzBindAddress,omitempty"`
	MetricsBindAddress string   `json:"metricsBindAddress,omitempty"`
	EnableProfiling    bool     `json:"enableProfiling,omitempty"`
	ClientConnection   struct {
		Kubeconfig string `json:"kubeconfig,omitempty"`
	} `json:"clientConnection,omitempty"`
	IPTables modeConfig `json:"iptables,omitempty"`
	NFTables modeConfig `json:"nftables,omitempty"`
	IPVS     ipvsConfig `json:"ipvs,omitempty"`

	Manifests             string   `json:"manifests,omitempty"`
	ServiceClusterIPRange string   `json:"serviceClusterIPRange,omitempty"`
	ServiceNodePortRange  string   `json:"serviceNodePortRange,omitempty"`
	LogLevel              string   `json:"logLevel,omitempty"`
	LBClass               string   `json:"lbClass,omitempty"`
	MemberlistBind        string   `json:"memberlistBind,omitempty"`
	MemberlistJoin        []string `json:"memberlistJoin,omitempty"`
	MemberlistSecret      string   `json:"memberlistSecret,omitempty"`
	Layer2                bool     `json:"layer2,omitempty"`
	// AdvertiseClusterIP and AdvertiseExternalIP add services' cluster and external IPs to the
	// BGP routes, as kube-router's flags of the same names do.
	AdvertiseClusterIP  bool `json:"advertiseClusterIP,omitempty"`
	AdvertiseExternalIP bool `json:"advertiseExternalIP,omitempty"`
	// Layer2Refresh re-announces owned addresses periodically (0: only on ownership changes).
	Layer2Refresh metav1.Duration `json:"layer2RefreshInterval,omitempty"`
	// LeaderElectionNamespace holds the Lease that picks the agent writing LB status (API mode).
	LeaderElectionNamespace string `json:"leaderElectionNamespace,omitempty"`

	// Flattened from the mode blocks, or set by flags.
	masqueradeAll bool
	syncPeriod    time.Duration
	minSyncPeriod time.Duration
}

func defaultConfig() Config {
	return Config{
		Mode:                    "nftables",
		HealthzBindAddress:      "0.0.0.0:10256",
		MetricsBindAddress:      "127.0.0.1:10249",
		ServiceClusterIPRange:   "10.96.0.0/12",
		ServiceNodePortRange:    "30000-32767",
		LogLevel:                "info",
		Layer2:                  true,
		LeaderElectionNamespace: "kube-system",
		syncPeriod:              30 * time.Second,
	}
}

// loadConfigFile reads a KubeProxyConfiguration-style YAML file over c.
func loadConfigFile(path string, c *Config) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	if err := yaml.Unmarshal(b, c); err != nil {
		return fmt.Errorf("parse config %s: %w", path, err)
	}
	mc := c.IPTables
	switch c.Mode {
	case "nftables":
		mc = c.NFTables
	case "ipvs":
		mc = c.IPVS.modeConfig
	}
	if mc.MasqueradeAll != nil {
		c.masqueradeAll = *mc.MasqueradeAll
	}
	if mc.SyncPeriod.Duration > 0 {
		c.syncPeriod = mc.SyncPeriod.Duration
	}
	if mc.MinSyncPeriod.Duration > 0 {
		c.minSyncPeriod = mc.MinSyncPeriod.Duration
	}
	return nil
}

// commonFlags binds the flags every subcommand that reads inputs shares. Flag names are kube-proxy's.
func commonFlags(fs *flag.FlagSet, c *Config) {
	fs.StringVar(&c.Mode, "proxy-mode", c.Mode, "which proxy mode to use: iptables, nftables or ipvs")
	fs.StringVar(&c.HostnameOverride, "hostname-override", c.HostnameOverride, "the name of this node (default: the hostname)")
	fs.StringVar(&c.ClusterCIDR, "cluster-cidr", c.ClusterCIDR, "the pod CIDRs, comma-separated; traffic from outside them to cluster IPs is masqueraded")
	fs.Func("nodeport-addresses", "comma-separated CIDRs (or \"primary\") of the local addresses that answer node ports (default: all)", func(s string) error {
		c.NodePortAddresses = splitList(s)
		return nil
	})
	fs.BoolVar(&c.masqueradeAll, "masquerade-all", c.masqueradeAll, "SNAT all traffic sent via service cluster IPs")
	fs.StringVar(&c.Manifests, "manifests", c.Manifests, "directory of Kubernetes manifests (YAML/JSON) to serve instead of an API server")
	fs.StringVar(&c.ClientConnection.Kubeconfig, "kubeconfig", c.ClientConnection.Kubeconfig, "path to a kubeconfig file to watch a Kubernetes API server")
	fs.StringVar(&c.ServiceClusterIPRange, "service-cluster-ip-range", c.ServiceClusterIPRange, "CIDRs (comma-separated, one per family) the manifests source allocates cluster IPs from")
	fs.StringVar(&c.ServiceNodePortRange, "service-node-port-range", c.ServiceNodePortRange, "port range the manifests source allocates node ports from")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "debug, info, warn or error")
	fs.StringVar(&c.LBClass, "lb-class", c.LBClass, "the spec.loadBalancerClass served besides services without a class (MetalLB's --lb-class)")
	ipvsFlags(fs, c)
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// parseWithConfig parses args into c: defaults, then the --config file, then explicit flags.
func parseWithConfig(fs *flag.FlagSet, args []string, c *Config) error {
	var configPath string
	// Only --config matters in the first pass; unknown flags are the real parse's business.
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--config" || a == "-config":
			if i+1 < len(args) {
				configPath = args[i+1]
			}
		case strings.HasPrefix(a, "--config=") || strings.HasPrefix(a, "-config="):
			configPath = a[strings.Index(a, "=")+1:]
		}
	}
	if configPath != "" {
		if err := loadConfigFile(configPath, c); err != nil {
			return err
		}
	}
	fs.String("config", configPath, "a kube-proxy style configuration file (KubeProxyConfiguration YAML); flags given too override it")
	commonFlags(fs, c)
	return fs.Parse(args)
}

// modelConfig converts the user's settings into the model's.
func (c *Config) modelConfig() (proxier.Config, error) {
	var mc proxier.Config
	for _, s := range splitList(c.ClusterCIDR) {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return mc, fmt.Errorf("--cluster-cidr %q: %w", s, err)
		}
		mc.ClusterCIDRs = append(mc.ClusterCIDRs, p.Masked())
	}
	for _, s := range c.NodePortAddresses {
		if s == "primary" {
			// kube-proxy's "primary": the node's primary addresses, taken as host prefixes later.
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return mc, fmt.Errorf("--nodeport-addresses %q: %w", s, err)
		}
		mc.NodePortAddresses = append(mc.NodePortAddresses, p.Masked())
	}
	mc.MasqueradeAll = c.masqueradeAll
	return mc, nil
}
