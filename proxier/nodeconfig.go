package proxier

// What every mode needs besides the services, decided once here from the configuration and this
// node's Node object: which addresses answer node ports (--nodeport-addresses), how traffic from
// pods is recognised (--detect-local-mode), and which ranges cluster IPs come from (ServiceCIDRs).

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

// LocalDetectMode is kube-proxy's --detect-local-mode.
type LocalDetectMode string

const (
	// DetectClusterCIDR: traffic from the first cluster CIDR of its family (--cluster-cidr) is
	// from pods. kube-proxy's default; without a cluster CIDR nothing is detected.
	DetectClusterCIDR LocalDetectMode = "ClusterCIDR"
	// DetectNodeCIDR: traffic from the first of this Node's spec.podCIDRs of its family is
	// from (this node's) pods.
	DetectNodeCIDR LocalDetectMode = "NodeCIDR"
	// DetectBridgeInterface: traffic arriving on the bridge LocalDetect.BridgeInterface
	// (--pod-bridge-interface) is from pods.
	DetectBridgeInterface LocalDetectMode = "BridgeInterface"
	// DetectInterfaceNamePrefix: traffic arriving on an interface whose name starts with
	// LocalDetect.InterfaceNamePrefix (--pod-interface-name-prefix) is from pods.
	DetectInterfaceNamePrefix LocalDetectMode = "InterfaceNamePrefix"
)

// LocalDetect is the configuration of pod-traffic detection (kube-proxy's detectLocalMode and
// detectLocal). Modes use it where kube-proxy uses its local traffic detector: to masquerade
// traffic to a cluster IP that does not come from a pod, and to let pod traffic to an external
// address of an externalTrafficPolicy Local service go to any endpoint.
type LocalDetect struct {
	// Mode is the detection mode; "" means DetectClusterCIDR, kube-proxy's default.
	Mode LocalDetectMode
	// BridgeInterface is --pod-bridge-interface, read in DetectBridgeInterface mode.
	BridgeInterface string
	// InterfaceNamePrefix is --pod-interface-name-prefix, read in DetectInterfaceNamePrefix
	// mode.
	InterfaceNamePrefix string
}

// Validate reports a mode kube-proxy does not know, or a missing or malformed interface name
// for the interface modes.
func (d LocalDetect) Validate() error {
	switch d.Mode {
	case "", DetectClusterCIDR, DetectNodeCIDR:
		return nil
	case DetectBridgeInterface:
		if err := checkInterfaceName(d.BridgeInterface); err != nil {
			return fmt.Errorf("--detect-local-mode BridgeInterface: --pod-bridge-interface: %w", err)
		}
		return nil
	case DetectInterfaceNamePrefix:
		if err := checkInterfaceName(d.InterfaceNamePrefix); err != nil {
			return fmt.Errorf("--detect-local-mode InterfaceNamePrefix: --pod-interface-name-prefix: %w", err)
		}
		return nil
	}
	return fmt.Errorf("--detect-local-mode %q: want ClusterCIDR, NodeCIDR, BridgeInterface or InterfaceNamePrefix", d.Mode)
}

// checkInterfaceName accepts what the kernel accepts as an interface name (IFNAMSIZ is 16 with
// the terminating NUL) and rules need quoted as they are: no '/', quote, or white space.
func checkInterfaceName(s string) error {
	switch {
	case s == "":
		return errors.New("empty")
	case len(s) > 15:
		return fmt.Errorf("%q is longer than 15 bytes", s)
	case strings.ContainsFunc(s, func(r rune) bool {
		return r <= ' ' || r == '/' || r == '"' || r == '\'' || r == '\\' || r == 0x7f || r > 0x7e
	}):
		return fmt.Errorf("%q: not a valid interface name", s)
	}
	return nil
}

// LocalDetector is how one family's pod traffic is recognised, resolved against this node: by
// source CIDR, by input interface, or (zero value) not at all.
type LocalDetector struct {
	// CIDR, when valid, is the pods' source range.
	CIDR netip.Prefix
	// Interface, when not empty, is the pods' input interface, or its name prefix when Prefix.
	Interface string
	Prefix    bool
}

// Implemented reports whether the detector recognises anything (kube-proxy's IsImplemented).
func (d LocalDetector) Implemented() bool { return d.CIDR.IsValid() || d.Interface != "" }

// String describes the detector, for logs and comparisons.
func (d LocalDetector) String() string {
	switch {
	case d.CIDR.IsValid():
		return "saddr " + d.CIDR.String()
	case d.Prefix:
		return "iifname " + d.Interface + "*"
	case d.Interface != "":
		return "iifname " + d.Interface
	}
	return "none"
}

// LocalDetector returns the pod-traffic detector of family f (kube-proxy's getLocalDetectors).
func (s *State) LocalDetector(f Family) LocalDetector {
	d := s.Config.LocalDetect
	switch d.Mode {
	case "", DetectClusterCIDR:
		if cidrs := s.Config.ClusterCIDRsOf(f); len(cidrs) > 0 {
			return LocalDetector{CIDR: cidrs[0]}
		}
	case DetectNodeCIDR:
		if cidrs := prefixesOf(s.Node.PodCIDRs, f); len(cidrs) > 0 {
			return LocalDetector{CIDR: cidrs[0]}
		}
	case DetectBridgeInterface:
		if checkInterfaceName(d.BridgeInterface) == nil {
			return LocalDetector{Interface: d.BridgeInterface}
		}
	case DetectInterfaceNamePrefix:
		if checkInterfaceName(d.InterfaceNamePrefix) == nil {
			return LocalDetector{Interface: d.InterfaceNamePrefix, Prefix: true}
		}
	}
	return LocalDetector{}
}

// NodePortIPs returns the local addresses of family f that answer node ports, and whether node
// ports are restricted to them at all: restricted false means every local address (kube-proxy's
// MatchAll), when --nodeport-addresses gives no prefix of the family or a zero-length one, or
// (primary) the Node has no primary address of the family. Restricted with no address means no
// node port answers in that family.
func (s *State) NodePortIPs(f Family) (ips []netip.Addr, restricted bool) {
	prefixes := s.nodePortPrefixes(f)
	if len(prefixes) == 0 || slices.ContainsFunc(prefixes, func(p netip.Prefix) bool { return p.Bits() == 0 }) {
		return nil, false
	}
	ips = []netip.Addr{}
	for _, a := range s.NodeIPsOf(f) {
		a = a.Unmap()
		if a.IsLoopback() {
			continue // localhost node ports are iptables mode's alone (Config.LocalhostNodePorts)
		}
		if slices.ContainsFunc(prefixes, func(p netip.Prefix) bool { return p.Contains(a) }) && !slices.Contains(ips, a) {
			ips = append(ips, a)
		}
	}
	slices.SortFunc(ips, netip.Addr.Compare)
	return ips, true
}

// nodePortPrefixes is --nodeport-addresses of family f, with primary resolved to host prefixes
// of the Node's primary addresses (loopback left out, as kube-proxy does).
func (s *State) nodePortPrefixes(f Family) []netip.Prefix {
	if !s.Config.NodePortPrimary {
		return s.Config.NodePortAddressesOf(f)
	}
	var out []netip.Prefix
	for _, a := range s.Node.PrimaryIPs {
		if a = a.Unmap(); FamilyOf(a) == f && !a.IsLoopback() {
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
		}
	}
	return out
}

// ServiceCIDRsOf returns the service CIDRs of family f: the configured ones and those of the
// ServiceCIDR objects, sorted, without duplicates.
func (s *State) ServiceCIDRsOf(f Family) []netip.Prefix {
	out := append(prefixesOf(s.Config.ServiceCIDRs, f), prefixesOf(s.ServiceCIDRs, f)...)
	slices.SortFunc(out, comparePrefixes)
	return slices.Compact(out)
}

func comparePrefixes(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// nodeObject is what the tracker keeps of a Node object.
type nodeObject struct {
	zone       string
	primaryIPs []netip.Addr
	podCIDRs   []netip.Prefix
}

// primaryIPs picks a Node's primary addresses as kube-proxy's GetNodeHostIPs: InternalIPs, then
// ExternalIPs; the first, then the first of the other family. Unparsable addresses are skipped.
func primaryIPs(o *v1.Node) []netip.Addr {
	var all []netip.Addr
	for _, typ := range []v1.NodeAddressType{v1.NodeInternalIP, v1.NodeExternalIP} {
		for _, a := range o.Status.Addresses {
			if a.Type != typ {
				continue
			}
			if ip, err := netip.ParseAddr(strings.TrimSpace(a.Address)); err == nil {
				all = append(all, ip.Unmap())
			}
		}
	}
	if len(all) == 0 {
		return nil
	}
	out := []netip.Addr{all[0]}
	for _, a := range all[1:] {
		if FamilyOf(a) != FamilyOf(out[0]) {
			return append(out, a)
		}
	}
	return out
}

// podCIDRs reads a Node's spec.podCIDRs (spec.podCIDR when that is empty); unparsable ones are
// skipped.
func podCIDRs(o *v1.Node) []netip.Prefix {
	ss := o.Spec.PodCIDRs
	if len(ss) == 0 && o.Spec.PodCIDR != "" {
		ss = []string{o.Spec.PodCIDR}
	}
	var out []netip.Prefix
	for _, s := range ss {
		if p, err := netip.ParsePrefix(strings.TrimSpace(s)); err == nil {
			out = append(out, p.Masked())
		}
	}
	return out
}

// applyServiceCIDR records the CIDRs of a ServiceCIDR object. A change makes the next Snapshot
// full (every mode rewrites its fixed rules), without recomputing any service. Called with t.mu
// held; it reports whether anything changed.
func (t *Tracker) applyServiceCIDR(o *networkingv1.ServiceCIDR, deleted bool) bool {
	var cidrs []netip.Prefix
	if !deleted {
		for _, s := range o.Spec.CIDRs {
			p, err := netip.ParsePrefix(strings.TrimSpace(s))
			if err != nil {
				t.log.Warn("ServiceCIDR: invalid CIDR left out", "serviceCIDR", o.Name, "cidr", s)
				continue
			}
			cidrs = append(cidrs, p.Masked())
		}
	}
	if slices.Equal(t.serviceCIDRs[o.Name], cidrs) {
		return false
	}
	if len(cidrs) == 0 {
		delete(t.serviceCIDRs, o.Name)
	} else {
		if t.serviceCIDRs == nil {
			t.serviceCIDRs = map[string][]netip.Prefix{}
		}
		t.serviceCIDRs[o.Name] = cidrs
	}
	t.full = true
	return true
}

// serviceCIDRList is every ServiceCIDR object's CIDRs, sorted, without duplicates. Called with
// t.mu held.
func (t *Tracker) serviceCIDRList() []netip.Prefix {
	var out []netip.Prefix
	for _, cidrs := range t.serviceCIDRs {
		out = append(out, cidrs...)
	}
	slices.SortFunc(out, comparePrefixes)
	return slices.Compact(out)
}
