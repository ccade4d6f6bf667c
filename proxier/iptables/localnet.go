package iptables

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// routeLocalnet is the sysctl that lets the kernel route packets to 127.0.0.0/8 that came from
// elsewhere, which localhost node ports need once DNAT-ed (kube-proxy sets it for them).
const routeLocalnet = "net/ipv4/conf/all/route_localnet"

// Sysctl reads and writes /proc/sys entries (such as "net/ipv4/conf/all/route_localnet") of the
// network namespace the proxier programs. Tests pass a fake: no unit test may write the host's.
type Sysctl interface {
	Get(name string) (string, error)
	Set(name, value string) error
}

// ProcSysctl is Sysctl over /proc/sys of the calling process's network namespace: the agent's
// own, which is the one it programs.
type ProcSysctl struct{}

var _ Sysctl = ProcSysctl{}

// Get implements Sysctl.
func (ProcSysctl) Get(name string) (string, error) {
	b, err := os.ReadFile(filepath.Join("/proc/sys", name))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// Set implements Sysctl.
func (ProcSysctl) Set(name, value string) error {
	return os.WriteFile(filepath.Join("/proc/sys", name), []byte(value), 0o644)
}

// ensureRouteLocalnet sets route_localnet=1 unless it is already (checked again on every full
// sync, to repair drift), and reports whether localhost node ports can be offered. A failure is
// logged when it first happens, and node ports then stay off loopback: a read-only /proc/sys
// must not stop every other rule. Called with p.mu held.
func (p *Proxier) ensureRouteLocalnet(full bool) bool {
	if p.localnetSet && !full {
		return true
	}
	err := func() error {
		cur, err := p.sysctl.Get(routeLocalnet)
		if err != nil {
			return err
		}
		if cur == "1" {
			return nil
		}
		if err := p.sysctl.Set(routeLocalnet, "1"); err != nil {
			return err
		}
		p.log.Info("set route_localnet=1 to allow node ports on localhost; to change this, set --iptables-localhost-nodeports=false or --nodeport-addresses",
			"sysctl", strings.ReplaceAll(routeLocalnet, "/", "."), "was", cur)
		return nil
	}()
	if err != nil {
		if !p.localnetFailed {
			p.log.Warn("cannot set route_localnet: node ports are not offered on localhost",
				"err", fmt.Errorf("sysctl %s: %w", routeLocalnet, err))
		}
		p.localnetSet, p.localnetFailed = false, true
		return false
	}
	p.localnetSet, p.localnetFailed = true, false
	return true
}
