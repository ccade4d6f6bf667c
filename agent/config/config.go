// Package config is the agent's configuration: kube-proxy's KubeProxyConfiguration file format
// plus nodeagent's own keys, decoded strictly, with kube-proxy's defaults. Command-line flags are
// the command's business (they bind to these fields); the agent reads the result.
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"nodeagent/proxier"
)

// modeConfig is the part the per-mode blocks of a KubeProxyConfiguration (iptables:, nftables:,
// ipvs:) share.
type modeConfig struct {
	MasqueradeAll *bool           `json:"masqueradeAll,omitempty"`
	SyncPeriod    metav1.Duration `json:"syncPeriod,omitempty"`
	MinSyncPeriod metav1.Duration `json:"minSyncPeriod,omitempty"`
}

// iptablesConfig is the iptables: block. Fields of type json.RawMessage are kube-proxy's and
// accepted so that its files load, but nodeagent does not implement them (see ignoredSettings).
type iptablesConfig struct {
	modeConfig         `json:",inline"`
	MasqueradeBit      *int32 `json:"masqueradeBit,omitempty"`
	LocalhostNodePorts *bool  `json:"localhostNodePorts,omitempty"`
}

// nftablesConfig is the nftables: block.
type nftablesConfig struct {
	modeConfig    `json:",inline"`
	MasqueradeBit *int32 `json:"masqueradeBit,omitempty"`
}

// IPVS is the ipvs: block of a KubeProxyConfiguration.
type IPVS struct {
	modeConfig   `json:",inline"`
	Scheduler    string          `json:"scheduler,omitempty"`
	StrictARP    bool            `json:"strictARP,omitempty"`
	TCPTimeout   metav1.Duration `json:"tcpTimeout,omitempty"`
	TCPFinTimeo  metav1.Duration `json:"tcpFinTimeout,omitempty"`
	UDPTimeout   metav1.Duration `json:"udpTimeout,omitempty"`
	ExcludeCIDRs json.RawMessage `json:"excludeCIDRs,omitempty"`
}

// clientConnection is the clientConnection: block (kubeconfig, contentType, qps, burst as
// kube-proxy uses them; acceptContentTypes is accepted and ignored).
type clientConnection struct {
	Kubeconfig         string          `json:"kubeconfig,omitempty"`
	AcceptContentTypes json.RawMessage `json:"acceptContentTypes,omitempty"`
	ContentType        string          `json:"contentType,omitempty"`
	QPS                float32         `json:"qps,omitempty"`
	Burst              int32           `json:"burst,omitempty"`
}

// kubeProxyOnly are the top-level keys of kube-proxy v1.34's KubeProxyConfiguration
// (kubeproxy.config.k8s.io/v1alpha1) with no nodeagent key of their own: the typed ones are
// honoured (kubeproxy.go), the json.RawMessage ones accepted and warned about when set.
type kubeProxyOnly struct {
	FeatureGates                map[string]bool `json:"featureGates,omitempty"`
	Logging                     loggingConfig   `json:"logging,omitempty"`
	BindAddressHardFail         bool            `json:"bindAddressHardFail,omitempty"`
	OOMScoreAdj                 *int32          `json:"oomScoreAdj,omitempty"`
	Conntrack                   *Conntrack      `json:"conntrack,omitempty"`
	BindAddress                 json.RawMessage `json:"bindAddress,omitempty"`
	ShowHiddenMetricsForVersion json.RawMessage `json:"showHiddenMetricsForVersion,omitempty"`
	Winkernel                   json.RawMessage `json:"winkernel,omitempty"`
	DetectLocalMode             string          `json:"detectLocalMode,omitempty"`
	DetectLocal                 detectLocal     `json:"detectLocal,omitempty"`
	ConfigSyncPeriod            json.RawMessage `json:"configSyncPeriod,omitempty"`
	PortRange                   json.RawMessage `json:"portRange,omitempty"`
	WindowsRunAsService         json.RawMessage `json:"windowsRunAsService,omitempty"`
}

// detectLocal is the detectLocal: block, for detectLocalMode BridgeInterface and
// InterfaceNamePrefix.
type detectLocal struct {
	BridgeInterface     string `json:"bridgeInterface,omitempty"`
	InterfaceNamePrefix string `json:"interfaceNamePrefix,omitempty"`
}

// Config is the agent's configuration. Its YAML form is kube-proxy's KubeProxyConfiguration
// (kubeproxy.config.k8s.io/v1alpha1) — a kube-proxy config file works as it is — plus nodeagent's
// own top-level keys (manifests, serviceClusterIPRange, serviceNodePortRange, ...). A key that
// is neither is an error: a misspelt memberlistSecret must not quietly turn encryption off.
type Config struct {
	APIVersion         string           `json:"apiVersion,omitempty"`
	Kind               string           `json:"kind,omitempty"`
	Mode               string           `json:"mode,omitempty"`
	HostnameOverride   string           `json:"hostnameOverride,omitempty"`
	ClusterCIDR        string           `json:"clusterCIDR,omitempty"`
	NodePortAddresses  []string         `json:"nodePortAddresses,omitempty"`
	HealthzBindAddress string           `json:"healthzBindAddress,omitempty"`
	MetricsBindAddress string           `json:"metricsBindAddress,omitempty"`
	EnableProfiling    bool             `json:"enableProfiling,omitempty"`
	ClientConnection   clientConnection `json:"clientConnection,omitempty"`
	IPTables           iptablesConfig   `json:"iptables,omitempty"`
	NFTables           nftablesConfig   `json:"nftables,omitempty"`
	IPVS               IPVS             `json:"ipvs,omitempty"`
	kubeProxyOnly      `json:",inline"`

	Manifests             string   `json:"manifests,omitempty"`
	ServiceClusterIPRange string   `json:"serviceClusterIPRange,omitempty"`
	ServiceNodePortRange  string   `json:"serviceNodePortRange,omitempty"`
	LogLevel              string   `json:"logLevel,omitempty"`
	LBClass               string   `json:"lbClass,omitempty"`
	MemberlistBind        string   `json:"memberlistBind,omitempty"`
	MemberlistJoin        []string `json:"memberlistJoin,omitempty"`
	MemberlistSecret      string   `json:"memberlistSecret,omitempty"`
	// MemberlistSecretFile holds the gossip secret (a directory: its file "secretkey", the
	// layout of MetalLB's mounted memberlist Secret).
	MemberlistSecretFile string `json:"memberlistSecretFile,omitempty"`
	// MemberlistInsecure runs memberlist without a secret on purpose.
	MemberlistInsecure bool `json:"memberlistInsecure,omitempty"`
	Layer2             bool `json:"layer2,omitempty"`
	// AdvertiseClusterIP and AdvertiseExternalIP add services' cluster and external IPs to the
	// BGP routes, as kube-router's flags of the same names do.
	AdvertiseClusterIP  bool `json:"advertiseClusterIP,omitempty"`
	AdvertiseExternalIP bool `json:"advertiseExternalIP,omitempty"`
	// Layer2Refresh re-announces owned addresses periodically (0: only on ownership changes).
	Layer2Refresh metav1.Duration `json:"layer2RefreshInterval,omitempty"`
	// LeaderElectionNamespace holds the Lease that picks the agent writing LB status (API mode).
	LeaderElectionNamespace string `json:"leaderElectionNamespace,omitempty"`
	// LBAllocation assigns load-balancer addresses from IPAddressPools (default true); false
	// leaves status.loadBalancer.ingress to another controller (a cloud's) and only proxies.
	LBAllocation bool `json:"lbAllocation"`
	// Layer2ExcludeInterfaces are regular expressions of interface names layer 2 never answers
	// on (MetalLB's announcedInterfacesToExclude); unset: arp.DefaultExcludeInterfaces.
	Layer2ExcludeInterfaces *[]string `json:"layer2ExcludeInterfaces,omitempty"`

	// Flattened from the mode blocks, or set by flags; never read from or written to the file.
	MasqueradeAll      bool          `json:"-"`
	MasqueradeBit      int           `json:"-"`
	LocalhostNodePorts bool          `json:"-"`
	SyncPeriod         time.Duration `json:"-"`
	MinSyncPeriod      time.Duration `json:"-"`
	// ignored lists the kube-proxy settings the config file sets that nodeagent does not
	// implement, logged once the logger exists.
	Ignored []string `json:"-"`
	// MemberlistKey is the gossip secret resolved from its sources (memberlistSecret).
	MemberlistKey []byte `json:"-"`
	// Master is kube-proxy's --master: the API server's address over the kubeconfig's.
	Master string `json:"-"`
	// UserAgent is sent to the API server.
	UserAgent string `json:"-"`
	// RefusedWait, when positive, makes API connections wait out "connection refused" that long
	// (the daemon sets it; one-shot commands fail at once).
	RefusedWait time.Duration `json:"-"`
}

// Default is the configuration without a file or flags.
func Default() Config {
	return Config{
		Mode:                    "nftables",
		HealthzBindAddress:      "0.0.0.0:10256",
		MetricsBindAddress:      "127.0.0.1:10249",
		ServiceClusterIPRange:   "10.96.0.0/12",
		ServiceNodePortRange:    "30000-32767",
		LogLevel:                "info",
		Layer2:                  true,
		LBAllocation:            true,
		LeaderElectionNamespace: "kube-system",
		SyncPeriod:              30 * time.Second,
		MasqueradeBit:           14,
		LocalhostNodePorts:      true,
	}
}

// kubeProxyAPIVersion and kubeProxyKind identify a KubeProxyConfiguration.
const (
	kubeProxyAPIVersion = "kubeproxy.config.k8s.io/v1alpha1"
	kubeProxyKind       = "KubeProxyConfiguration"
)

// maxConfigSize bounds what is read of a config file: a real one is a few kilobytes.
const maxConfigSize = 1 << 20

// LoadFile reads a KubeProxyConfiguration-style YAML file over c.
func LoadFile(path string, c *Config) error {
	b, err := readLimited(path, maxConfigSize)
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	if err := Decode(b, c); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	return nil
}

// Decode decodes a config file over c, strictly: unknown keys (nodeagent's and
// kube-proxy's known, see Config), keys given twice and keys in the wrong case are errors.
// kube-proxy v1.34 decodes strictly too, but falls back to lenient decoding of v1alpha1 with a
// log line; nodeagent has no such fallback, because its own keys include the gossip secret,
// where a typo must stop the agent rather than run it unencrypted. As in kube-proxy, an empty
// mode, healthzBindAddress or metricsBindAddress means the default (kubeadm writes them so).
func Decode(b []byte, c *Config) error {
	j, err := yaml.YAMLToJSONStrict(b)
	if err != nil {
		return fmt.Errorf("parse: %w", err)
	}
	keep := *c
	strict, err := kjson.UnmarshalStrict(j, c)
	if err != nil {
		return fmt.Errorf("parse: %w", err)
	}
	if len(strict) > 0 {
		return fmt.Errorf("parse: %w", errors.Join(strict...))
	}
	if c.APIVersion != "" && c.APIVersion != kubeProxyAPIVersion {
		return fmt.Errorf("apiVersion %q: want %s", c.APIVersion, kubeProxyAPIVersion)
	}
	if c.Kind != "" && c.Kind != kubeProxyKind {
		return fmt.Errorf("kind %q: want %s", c.Kind, kubeProxyKind)
	}
	if c.Mode == "" {
		// kube-proxy's default mode, which a kube-proxy config file (kubeadm's writes mode: "")
		// means; nodeagent's own default, nftables, holds only without a config file.
		c.Mode = "iptables"
	}
	if c.HealthzBindAddress == "" {
		c.HealthzBindAddress = keep.HealthzBindAddress
	}
	if c.MetricsBindAddress == "" {
		c.MetricsBindAddress = keep.MetricsBindAddress
	}
	c.Ignored = ignoredSettings(c)
	return nil
}

// readLimited reads a file of at most limit bytes.
func readLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, limit)
	}
	return b, nil
}

// ignoredSettings names the kube-proxy settings c sets to something other than an empty value
// (kubeadm writes every key, most of them empty) that nodeagent does not implement.
func ignoredSettings(c *Config) []string {
	var out []string
	rawType := reflect.TypeFor[json.RawMessage]()
	add := func(prefix string, v reflect.Value) {
		t := v.Type()
		for i := range t.NumField() {
			if t.Field(i).Type != rawType || emptyJSON(v.Field(i).Bytes()) {
				continue
			}
			name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
			out = append(out, prefix+name)
		}
	}
	add("", reflect.ValueOf(c.kubeProxyOnly))
	add("clientConnection.", reflect.ValueOf(c.ClientConnection))
	add("iptables.", reflect.ValueOf(c.IPTables))
	add("nftables.", reflect.ValueOf(c.NFTables))
	add("ipvs.", reflect.ValueOf(c.IPVS))
	slices.Sort(out)
	return out
}

// emptyJSON reports whether raw is absent, null, false, zero, an empty or zero duration
// string, or an object or array of nothing but such values.
func emptyJSON(raw json.RawMessage) bool {
	if len(raw) == 0 {
		return true
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return false
	}
	return emptyValue(v)
}

func emptyValue(v any) bool {
	switch x := v.(type) {
	case nil:
		return true
	case bool:
		return !x
	case float64:
		return x == 0
	case string:
		return x == "" || x == "0" || x == "0s"
	case []any:
		for _, e := range x {
			if !emptyValue(e) {
				return false
			}
		}
		return true
	case map[string]any:
		for _, e := range x {
			if !emptyValue(e) {
				return false
			}
		}
		return true
	}
	return false
}

// ApplyModeBlock takes MasqueradeAll, SyncPeriod and MinSyncPeriod from the config file's block
// of the mode in force — after flags, so that --proxy-mode picks the block — except where a
// flag set them explicitly.
func (c *Config) ApplyModeBlock(explicit map[string]bool) {
	mc := c.IPTables.modeConfig
	switch c.Mode {
	case "nftables":
		mc = c.NFTables.modeConfig
	case "ipvs":
		mc = c.IPVS.modeConfig
	}
	if mc.MasqueradeAll != nil && !explicit["masquerade-all"] {
		c.MasqueradeAll = *mc.MasqueradeAll
	}
	bit := c.IPTables.MasqueradeBit // the ipvs mode reads the iptables block's, as kube-proxy
	if c.Mode == "nftables" {
		bit = c.NFTables.MasqueradeBit
	}
	if bit != nil && !explicit["iptables-masquerade-bit"] {
		c.MasqueradeBit = int(*bit)
	}
	if lnp := c.IPTables.LocalhostNodePorts; lnp != nil && !explicit["iptables-localhost-nodeports"] {
		c.LocalhostNodePorts = *lnp
	}
	if mc.SyncPeriod.Duration > 0 && !explicit["sync-period"] && !explicit["ipvs-sync-period"] {
		c.SyncPeriod = mc.SyncPeriod.Duration
	}
	if mc.MinSyncPeriod.Duration > 0 && !explicit["min-sync-period"] && !explicit["ipvs-min-sync-period"] {
		c.MinSyncPeriod = mc.MinSyncPeriod.Duration
	}
}

// SplitList splits a comma-separated list, dropping blanks.
func SplitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// ModelConfig converts the user's settings into the model's.
func (c *Config) ModelConfig() (proxier.Config, error) {
	var mc proxier.Config
	for _, s := range SplitList(c.ClusterCIDR) {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return mc, fmt.Errorf("--cluster-cidr %q: %w", s, err)
		}
		mc.ClusterCIDRs = append(mc.ClusterCIDRs, p.Masked())
	}
	switch {
	case len(c.NodePortAddresses) == 1 && c.NodePortAddresses[0] == "primary":
		mc.NodePortPrimary = true
	case len(c.NodePortAddresses) == 0 && c.Mode == "nftables":
		mc.NodePortPrimary = true // kube-proxy v1.34's nftables default
	}
	for _, s := range c.NodePortAddresses {
		if s == "primary" {
			if len(c.NodePortAddresses) > 1 {
				return mc, fmt.Errorf("--nodeport-addresses: primary must be alone")
			}
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return mc, fmt.Errorf("--nodeport-addresses %q: %w", s, err)
		}
		mc.NodePortAddresses = append(mc.NodePortAddresses, p.Masked())
	}
	mc.MasqueradeAll = c.MasqueradeAll
	mark, err := proxier.MasqueradeMarkOfBit(c.MasqueradeBit)
	if err != nil {
		return mc, fmt.Errorf("--iptables-masquerade-bit: %w", err)
	}
	mc.MasqueradeMark = mark
	mc.LocalhostNodePorts = c.LocalhostNodePorts
	mc.LocalDetect = proxier.LocalDetect{Mode: proxier.LocalDetectMode(c.DetectLocalMode),
		BridgeInterface: c.DetectLocal.BridgeInterface, InterfaceNamePrefix: c.DetectLocal.InterfaceNamePrefix}
	if err := mc.LocalDetect.Validate(); err != nil {
		return mc, err
	}
	if c.Manifests != "" {
		// No API server, so no ServiceCIDR objects: the range the manifests allocate from is it.
		for _, s := range SplitList(c.ServiceClusterIPRange) {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return mc, fmt.Errorf("--service-cluster-ip-range %q: %w", s, err)
			}
			mc.ServiceCIDRs = append(mc.ServiceCIDRs, p.Masked())
		}
	}
	return mc, nil
}

// Where the memberlist secret may come from besides --memberlist-secret and the config file.
const (
	// EnvMemberlistSecret holds the secret itself, e.g. from a Kubernetes Secret (secretKeyRef).
	EnvMemberlistSecret = "NODEAGENT_MEMBERLIST_SECRET"
	// EnvMetalLBSecretPath is MetalLB v0.14.8's speaker variable (its --ml-secret-key-path): a
	// directory where the memberlist Secret is mounted, read as its file "secretkey".
	EnvMetalLBSecretPath = "METALLB_ML_SECRET_KEY_PATH"
	metalLBSecretKeyName = "secretkey"
	maxSecretSize        = 64 << 10
)

// errNoMemberlistSecret is returned when memberlist would run unauthenticated by accident.
var errNoMemberlistSecret = errors.New("memberlist gossip decides which node answers for each load-balancer address, " +
	"so it needs a shared secret: give --memberlist-secret-file (or $" + EnvMemberlistSecret + ", or MetalLB's $" +
	EnvMetalLBSecretPath + "), or --memberlist-insecure to run without one on purpose")

// ResolveMemberlistSecret sets c.MemberlistKey from the first source that has a secret:
// --memberlist-secret / memberlistSecret, --memberlist-secret-file / memberlistSecretFile (not
// both), $NODEAGENT_MEMBERLIST_SECRET, $METALLB_ML_SECRET_KEY_PATH. Without memberlist it does
// nothing; without a secret it fails unless memberlistInsecure says so. explicit are the flags
// given on the command line: a secret there is visible to every local user, which is warned about.
func (c *Config) ResolveMemberlistSecret(explicit map[string]bool, getenv func(string) string, log *slog.Logger) error {
	c.MemberlistKey = nil
	if c.MemberlistBind == "" {
		return nil
	}
	var key []byte
	switch {
	case c.MemberlistSecret != "" && c.MemberlistSecretFile != "":
		return errors.New("give the memberlist secret once: --memberlist-secret or --memberlist-secret-file, not both")
	case c.MemberlistSecret != "":
		key = []byte(c.MemberlistSecret)
		if explicit["memberlist-secret"] {
			log.Warn("--memberlist-secret is visible to every local user in /proc/<pid>/cmdline; prefer --memberlist-secret-file or $" + EnvMemberlistSecret)
		}
	case c.MemberlistSecretFile != "":
		k, err := readSecret(c.MemberlistSecretFile)
		if err != nil {
			return fmt.Errorf("--memberlist-secret-file: %w", err)
		}
		key = k
	case getenv(EnvMemberlistSecret) != "":
		key = []byte(getenv(EnvMemberlistSecret))
	case getenv(EnvMetalLBSecretPath) != "":
		k, err := readSecret(getenv(EnvMetalLBSecretPath))
		if err != nil {
			return fmt.Errorf("$%s: %w", EnvMetalLBSecretPath, err)
		}
		key = k
	}
	if len(key) == 0 {
		if !c.MemberlistInsecure {
			return errNoMemberlistSecret
		}
		log.Warn("memberlist runs without a secret (--memberlist-insecure): any host that reaches " +
			c.MemberlistBind + " can join and take load-balancer addresses over")
		return nil
	}
	c.MemberlistKey = key
	return nil
}

// readSecret reads a secret file without its surrounding whitespace (a final newline, say); a
// directory is read as its file "secretkey", the layout of a mounted MetalLB memberlist Secret.
func readSecret(path string) ([]byte, error) {
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		path = filepath.Join(path, metalLBSecretKeyName)
	}
	b, err := readLimited(path, maxSecretSize)
	if err != nil {
		return nil, err
	}
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return nil, fmt.Errorf("%s is empty", path)
	}
	return b, nil
}

// LogIgnored warns about the config file's kube-proxy settings that nodeagent does not implement.
func (c *Config) LogIgnored(log *slog.Logger) {
	if len(c.Ignored) > 0 {
		log.Warn("config file sets kube-proxy settings nodeagent does not implement; they are ignored", "settings", c.Ignored)
	}
}
