package config

import (
	"encoding/json"
	"fmt"
	"os"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"
)

// loggingConfig is the logging: block of a KubeProxyConfiguration (component-base's
// LoggingConfiguration): format and verbosity are honoured, the rest accepted.
type loggingConfig struct {
	Format         string          `json:"format,omitempty"`
	Verbosity      *int            `json:"verbosity,omitempty"`
	FlushFrequency json.RawMessage `json:"flushFrequency,omitempty"`
	VModule        json.RawMessage `json:"vmodule,omitempty"`
	Options        json.RawMessage `json:"options,omitempty"`
}

// kube-proxy v1.34's defaults for what nodeagent now honours.
const (
	defaultOOMScoreAdj = -999
	defaultAPIQPS      = 5
	defaultAPIBurst    = 10
	// ProtobufContent is the API content type kube-proxy's typed client speaks by default.
	ProtobufContent = "application/vnd.kubernetes.protobuf"
)

// ConntrackSettings is the conntrack settings in force: the config file's block over
// kube-proxy's defaults (a block that names only some keys keeps the defaults of the others).
func (c *Config) ConntrackSettings() Conntrack {
	d := defaultConntrack()
	if c.Conntrack == nil {
		return d
	}
	out := *c.Conntrack
	if out.MaxPerCore == nil {
		out.MaxPerCore = d.MaxPerCore
	}
	if out.Min == nil {
		out.Min = d.Min
	}
	if out.TCPEstablishedTimeout == nil {
		out.TCPEstablishedTimeout = d.TCPEstablishedTimeout
	}
	if out.TCPCloseWaitTimeout == nil {
		out.TCPCloseWaitTimeout = d.TCPCloseWaitTimeout
	}
	return out
}

// Level is the slog level of --log-level, or of kube-proxy's -v when that was given and
// --log-level was not: -v 4 and above is debug (kube-proxy logs each sync at 4).
func (c *Config) Level(explicit map[string]bool) string {
	if c.Logging.Verbosity != nil && !explicit["log-level"] && *c.Logging.Verbosity >= 4 {
		return "debug"
	}
	return c.LogLevel
}

// ApplyClientSettings sets kube-proxy's API client settings on a client's configuration:
// --master, QPS, burst and, for a typed client, content type (protobuf by default, as
// kube-proxy; the dynamic client for custom kinds keeps JSON, which is all custom resources speak).
func (c *Config) ApplyClientSettings(cfg *rest.Config, typed bool) {
	if c.Master != "" {
		cfg.Host = c.Master
	}
	cfg.QPS, cfg.Burst = defaultAPIQPS, defaultAPIBurst
	if c.ClientConnection.QPS > 0 {
		cfg.QPS = c.ClientConnection.QPS
	}
	if c.ClientConnection.Burst > 0 {
		cfg.Burst = int(c.ClientConnection.Burst)
	}
	if !typed {
		return
	}
	ct := c.ClientConnection.ContentType
	if ct == "" {
		ct = ProtobufContent
	}
	cfg.ContentType = ct
	if ct == ProtobufContent {
		cfg.AcceptContentTypes = ProtobufContent + ",application/json"
	}
}

// OOMScore is the process's OOM score adjustment in force (kube-proxy's -999 by default).
func (c *Config) OOMScore() int32 {
	if c.OOMScoreAdj != nil {
		return *c.OOMScoreAdj
	}
	return defaultOOMScoreAdj
}

// WriteFile writes the configuration in force as a KubeProxyConfiguration, for
// --write-config-to.
func (c *Config) WriteFile(path string) error {
	out := *c
	out.APIVersion, out.Kind = kubeProxyAPIVersion, kubeProxyKind
	mc := modeConfig{MasqueradeAll: &out.MasqueradeAll}
	mc.SyncPeriod.Duration, mc.MinSyncPeriod.Duration = out.SyncPeriod, out.MinSyncPeriod
	switch out.Mode {
	case "nftables":
		out.NFTables.modeConfig = mc
	case "ipvs":
		out.IPVS.modeConfig = mc
	default:
		out.IPTables.modeConfig = mc
	}
	ct := c.ConntrackSettings()
	out.Conntrack = &ct
	out.MemberlistSecret = "" // a secret is never written out
	b, err := yaml.Marshal(&out)
	if err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	return os.WriteFile(path, b, 0o600)
}
