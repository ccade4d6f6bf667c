package iptables

import (
	"context"
	"errors"
	"strings"
	"testing"

	"nodeagent/proxier"
)

// fakeSysctl is /proc/sys in memory: no unit test may write the host's.
type fakeSysctl struct {
	values     map[string]string
	gets, sets int
	failSet    bool
}

func (s *fakeSysctl) Get(name string) (string, error) {
	s.gets++
	v, ok := s.values[name]
	if !ok {
		return "", errors.New("no such sysctl")
	}
	return v, nil
}

func (s *fakeSysctl) Set(name, value string) error {
	s.sets++
	if s.failSet {
		return errors.New("read-only file system")
	}
	s.values[name] = value
	return nil
}

// TestLocalhostNodePorts: with Config.LocalhostNodePorts, an IPv4 sync sets route_localnet once,
// offers node ports on loopback and drops martian traffic to 127.0.0.0/8; when the sysctl cannot
// be written, node ports stay off loopback and everything else is still programmed.
func TestLocalhostNodePorts(t *testing.T) {
	ctx := context.Background()
	web := svc("default", "web", "http", "TCP", "10.96.0.100", 80, ep("10.244.1.5:8080"))
	web.NodePort = 30080
	st := labState(web)
	st.Config.LocalhostNodePorts = true

	h := newFakeHost()
	opts := h.options()
	sys := opts.Sysctl.(*fakeSysctl)
	p, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Sync(ctx, st, proxier.Changes{Full: true}); err != nil {
		t.Fatal(err)
	}
	if sys.values[routeLocalnet] != "1" {
		t.Errorf("route_localnet = %q after a sync with localhost node ports", sys.values[routeLocalnet])
	}
	checkKernel(t, h.v4, st, proxier.IPv4)
	nat := strings.Join(h.v4.rules(tableNAT, servicesChain), "\n")
	if strings.Contains(nat, "! -d 127.0.0.0/8") {
		t.Errorf("IPv4 node ports still exclude loopback:\n%s", nat)
	}
	if fw := h.v4.rules(tableFilter, localnetFirewallChain); len(fw) != 1 || !strings.Contains(fw[0], "-d 127.0.0.0/8") {
		t.Errorf("%s holds %v, want the martian drop", localnetFirewallChain, fw)
	}
	if nat6 := strings.Join(h.v6.rules(tableNAT, servicesChain), "\n"); !strings.Contains(nat6, "! -d ::1/128") {
		t.Errorf("IPv6 node ports must never answer on loopback:\n%s", nat6)
	}
	// A partial sync does not read /proc/sys again.
	gets := sys.gets
	if err := p.Sync(ctx, st, changes("default/web")); err != nil {
		t.Fatal(err)
	}
	if sys.gets != gets {
		t.Errorf("partial sync read route_localnet again")
	}

	// A read-only /proc/sys: no localhost node ports, the rest is programmed.
	h2 := newFakeHost()
	opts2 := h2.options()
	opts2.Sysctl.(*fakeSysctl).failSet = true
	p2, err := New(opts2)
	if err != nil {
		t.Fatal(err)
	}
	if err := p2.Sync(ctx, st, proxier.Changes{Full: true}); err != nil {
		t.Fatalf("a sysctl that cannot be set failed the sync: %v", err)
	}
	nat = strings.Join(h2.v4.rules(tableNAT, servicesChain), "\n")
	if !strings.Contains(nat, "! -d 127.0.0.0/8") || !strings.Contains(nat, "10.96.0.100") {
		t.Errorf("without route_localnet node ports must exclude loopback, services still programmed:\n%s", nat)
	}
	if fw := h2.v4.rules(tableFilter, localnetFirewallChain); len(fw) != 0 {
		t.Errorf("%s holds %v without localhost node ports", localnetFirewallChain, fw)
	}
}
