package agent

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"

	"nodeagent/proxier"
)

// nodeName is kube-proxy's: --hostname-override, else the lower-cased hostname.
func nodeName(override string) (string, error) {
	if override != "" {
		return strings.ToLower(strings.TrimSpace(override)), nil
	}
	h, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("hostname: %w", err)
	}
	return strings.ToLower(h), nil
}

// localAddrs lists the global-unicast addresses of this network namespace's interfaces, sorted.
func localAddrs() ([]netip.Addr, error) {
	ifaces, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	var out []netip.Addr
	for _, ifc := range ifaces {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			ip, ok := netip.AddrFromSlice(ipn.IP)
			if ok && ip.Unmap().IsGlobalUnicast() {
				out = append(out, ip.Unmap())
			}
		}
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return slices.Compact(out), nil
}

// ThisNode is this node: its name (kube-proxy's, from override) and the addresses of this network
// namespace.
func ThisNode(override string) (proxier.Node, error) {
	name, err := nodeName(override)
	if err != nil {
		return proxier.Node{}, err
	}
	ips, err := localAddrs()
	if err != nil {
		return proxier.Node{}, err
	}
	return proxier.Node{Name: name, IPs: ips}, nil
}
