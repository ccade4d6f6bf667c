package config

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"strconv"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"nodeagent/proxier/iptables"
)

// Conntrack is kube-proxy's conntrack: block (and its --conntrack-* flags).
type Conntrack struct {
	MaxPerCore            *int32           `json:"maxPerCore,omitempty"`
	Min                   *int32           `json:"min,omitempty"`
	TCPEstablishedTimeout *metav1.Duration `json:"tcpEstablishedTimeout,omitempty"`
	TCPCloseWaitTimeout   *metav1.Duration `json:"tcpCloseWaitTimeout,omitempty"`
	TCPBeLiberal          bool             `json:"tcpBeLiberal,omitempty"`
	UDPTimeout            metav1.Duration  `json:"udpTimeout,omitempty"`
	UDPStreamTimeout      metav1.Duration  `json:"udpStreamTimeout,omitempty"`
}

// defaultConntrack is kube-proxy v1.34's default.
func defaultConntrack() Conntrack {
	maxPerCore, minimum := int32(32768), int32(131072)
	return Conntrack{
		MaxPerCore:            &maxPerCore,
		Min:                   &minimum,
		TCPEstablishedTimeout: &metav1.Duration{Duration: 24 * time.Hour},
		TCPCloseWaitTimeout:   &metav1.Duration{Duration: time.Hour},
	}
}

// sysctls reads and writes /proc/sys entries (iptables.ProcSysctl in the agent: the calling
// process's network namespace, so every entry the conntrack settings touch but nf_conntrack_max
// is the agent's own, and that one is read-only outside the host's namespace).
type sysctls = iptables.Sysctl

// netfilterSysctl is the /proc/sys path of a net/netfilter entry.
func netfilterSysctl(name string) string { return "net/netfilter/" + name }

// conntrackMax is kube-proxy's: maxPerCore × CPUs, at least min; 0 when maxPerCore is 0 (leave
// the kernel's value).
func (c Conntrack) conntrackMax(cpus int) int {
	if c.MaxPerCore == nil || *c.MaxPerCore <= 0 {
		return 0
	}
	floor := 0
	if c.Min != nil {
		floor = int(*c.Min)
	}
	return max(int(*c.MaxPerCore)*cpus, floor)
}

// Apply sets the conntrack sysctls as kube-proxy does at start: only settings that are non-zero,
// and only when the kernel's value differs. Unlike kube-proxy, a nf_conntrack_max the namespace
// may not write (any namespace but the host's) is a warning, not a reason to stop: agents in
// network namespaces are a normal way to run nodeagent.
func (c Conntrack) Apply(sys sysctls, cpus int, log *slog.Logger) error {
	set := func(name string, value int) error {
		if cur, err := sys.Get(netfilterSysctl(name)); err == nil && cur == strconv.Itoa(value) {
			return nil
		}
		if err := sys.Set(netfilterSysctl(name), strconv.Itoa(value)); err != nil {
			return fmt.Errorf("sysctl net/netfilter/%s=%d: %w", name, value, err)
		}
		log.Info("set sysctl", "entry", "net/netfilter/"+name, "value", value)
		return nil
	}
	if m := c.conntrackMax(cpus); m > 0 {
		if err := set("nf_conntrack_max", m); err != nil {
			if !errors.Is(err, fs.ErrPermission) && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			log.Warn("nf_conntrack_max cannot be set from this network namespace; leaving the kernel's value (--conntrack-max-per-core=0 silences this)", "want", m, "err", err)
		}
	}
	seconds := func(d *metav1.Duration) int {
		if d == nil {
			return 0
		}
		return int(d.Duration / time.Second)
	}
	for _, s := range []struct {
		name  string
		value int
	}{
		{"nf_conntrack_tcp_timeout_established", seconds(c.TCPEstablishedTimeout)},
		{"nf_conntrack_tcp_timeout_close_wait", seconds(c.TCPCloseWaitTimeout)},
		{"nf_conntrack_udp_timeout", seconds(&c.UDPTimeout)},
		{"nf_conntrack_udp_timeout_stream", seconds(&c.UDPStreamTimeout)},
	} {
		if s.value > 0 {
			if err := set(s.name, s.value); err != nil {
				return err
			}
		}
	}
	if c.TCPBeLiberal {
		return set("nf_conntrack_tcp_be_liberal", 1)
	}
	return nil
}
