package source

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"math/bits"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	v1 "k8s.io/api/core/v1"
)

// DefaultServiceCIDR is kube-apiserver's default --service-cluster-ip-range.
var DefaultServiceCIDR = netip.MustParsePrefix("10.96.0.0/12")

// DefaultNodePortRange is kube-apiserver's default --service-node-port-range.
var DefaultNodePortRange = PortRange{First: 30000, Last: 32767}

// PortRange is an inclusive range of ports.
type PortRange struct {
	First, Last uint16
}

// Contains reports whether port p is in r.
func (r PortRange) Contains(p int32) bool { return p >= int32(r.First) && p <= int32(r.Last) }

// String formats the range as --service-node-port-range takes it.
func (r PortRange) String() string { return fmt.Sprintf("%d-%d", r.First, r.Last) }

// ParsePortRange parses a port range the way kube-apiserver's --service-node-port-range does:
// "30000-32767", "30000+2767" (first port plus an offset) or a single port.
func ParsePortRange(s string) (PortRange, error) {
	s = strings.TrimSpace(s)
	parse := func(p string) (uint16, error) {
		n, err := strconv.ParseUint(strings.TrimSpace(p), 10, 16)
		if err != nil {
			return 0, fmt.Errorf("port range %q: %w", s, err)
		}
		return uint16(n), nil
	}
	var r PortRange
	var err error
	if a, b, ok := strings.Cut(s, "-"); ok {
		if r.First, err = parse(a); err != nil {
			return r, err
		}
		if r.Last, err = parse(b); err != nil {
			return r, err
		}
	} else if a, b, ok := strings.Cut(s, "+"); ok {
		if r.First, err = parse(a); err != nil {
			return r, err
		}
		off, err := parse(b)
		if err != nil {
			return r, err
		}
		if int(r.First)+int(off) > 65535 {
			return r, fmt.Errorf("port range %q: ends beyond 65535", s)
		}
		r.Last = r.First + off
	} else {
		if r.First, err = parse(s); err != nil {
			return r, err
		}
		r.Last = r.First
	}
	if r.First == 0 || r.Last < r.First {
		return r, fmt.Errorf("port range %q: want 1 <= first <= last", s)
	}
	return r, nil
}

// ParseServiceCIDRs parses --service-cluster-ip-range: one CIDR, or two of different families
// separated by a comma (the first family is the cluster's primary one).
func ParseServiceCIDRs(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("service CIDR: %w", err)
		}
		out = append(out, p.Masked())
	}
	if err := checkServiceCIDRs(out); err != nil {
		return nil, err
	}
	return out, nil
}

func checkServiceCIDRs(ps []netip.Prefix) error {
	switch {
	case len(ps) == 0:
		return errors.New("service CIDR: none given")
	case len(ps) > 2:
		return fmt.Errorf("service CIDRs %v: at most one per family", ps)
	case len(ps) == 2 && ps[0].Addr().Is4() == ps[1].Addr().Is4():
		return fmt.Errorf("service CIDRs %v: two of the same family", ps)
	}
	for _, p := range ps {
		if !p.IsValid() || p.Addr().Is4In6() || newIPRange(p).size < 2 {
			return fmt.Errorf("service CIDR %s: too small", p)
		}
	}
	return nil
}

// ipRange is the part of a service CIDR that cluster IPs come from: every address but the
// network address (and for IPv4 the broadcast address). Like kube-apiserver, it prefers the
// upper band [offset, size) for dynamic allocation so that the lower band stays free for
// addresses that manifests fix by hand (10.96.0.10 for DNS, ...).
type ipRange struct {
	prefix netip.Prefix
	base   netip.Addr // first usable address
	size   uint64     // number of usable addresses (capped for huge IPv6 ranges)
	offset uint64     // start of the dynamic band
}

func newIPRange(p netip.Prefix) ipRange {
	p = p.Masked()
	r := ipRange{prefix: p, base: p.Addr().Next()}
	host := p.Addr().BitLen() - p.Bits()
	switch {
	case host >= 62:
		r.size = 1 << 62
	case p.Addr().Is4() && host < 2:
		r.size = 0
	case p.Addr().Is4():
		r.size = (uint64(1) << host) - 2
	default:
		r.size = (uint64(1) << host) - 1
	}
	r.offset = bandOffset(r.size, 16, 256, 16)
	return r
}

// bandOffset is kube-apiserver's calculateRangeOffset: size/step clamped to [lo, hi], 0 for
// ranges smaller than lo.
func bandOffset(size, lo, hi, step uint64) uint64 {
	if size < lo {
		return 0
	}
	return min(max(size/step, lo), hi)
}

// index returns a's position in the usable range.
func (r ipRange) index(a netip.Addr) (uint64, bool) {
	if !r.prefix.Contains(a) {
		return 0, false
	}
	ah, al := split128(a)
	bh, bl := split128(r.base)
	lo, borrow := bits.Sub64(al, bl, 0)
	hi, _ := bits.Sub64(ah, bh, borrow)
	if hi != 0 || ah < bh || (ah == bh && al < bl) || lo >= r.size {
		return 0, false
	}
	return lo, true
}

// addr returns the address at position i of the usable range.
func (r ipRange) addr(i uint64) netip.Addr {
	bh, bl := split128(r.base)
	lo, carry := bits.Add64(bl, i, 0)
	hi := bh + carry
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], hi)
	binary.BigEndian.PutUint64(b[8:], lo)
	a := netip.AddrFrom16(b)
	if r.base.Is4() {
		return a.Unmap()
	}
	return a
}

func split128(a netip.Addr) (hi, lo uint64) {
	b := a.As16()
	return binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
}

// hashKey maps an allocation key to a 64-bit number: the same on every node for the same key.
func hashKey(key string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(key))
	return h.Sum64()
}

// probe returns the first index i of [0, size) for which free(i) holds, trying the dynamic band
// [offset, size) first, starting at a position derived from key and going up with wrap-around,
// then the static band [0, offset).
func probe(key string, size, offset uint64, free func(uint64) bool) (uint64, bool) {
	if offset >= size {
		offset = 0
	}
	band := size - offset
	if band == 0 {
		return 0, false
	}
	start := offset + hashKey(key)%band
	for i := uint64(0); i < band; i++ {
		c := start + i
		if c >= size {
			c -= band
		}
		if free(c) {
			return c, true
		}
	}
	for c := uint64(0); c < offset; c++ {
		if free(c) {
			return c, true
		}
	}
	return 0, false
}

// allocator hands out cluster IPs and node ports the way kube-apiserver would, but as a pure
// function of the set of services: explicit values are reserved first, then every missing value
// is derived from a hash of the service (and port) name, probing upwards past taken values.
type allocator struct {
	ranges    map[v1.IPFamily]ipRange
	primary   v1.IPFamily
	nodePorts PortRange
	ips       map[netip.Addr]string // owner ("namespace/name") of every cluster IP
	ports     map[int32]string      // owner of every node port (node ports are per number, not protocol)
	owned     map[string][]owned    // what each owner holds, to release it
}

// owned is a cluster IP or a node port someone holds.
type owned struct {
	ip   netip.Addr
	port int32
}

func newAllocator(cidrs []netip.Prefix, nodePorts PortRange) *allocator {
	a := &allocator{ranges: map[v1.IPFamily]ipRange{}, nodePorts: nodePorts,
		ips: map[netip.Addr]string{}, ports: map[int32]string{}, owned: map[string][]owned{}}
	for i, p := range cidrs {
		f := familyOf(p.Addr())
		if i == 0 {
			a.primary = f
		}
		a.ranges[f] = newIPRange(p)
	}
	return a
}

// plan is what a service needs from the allocator.
type plan struct {
	owner     string
	families  []v1.IPFamily
	policy    v1.IPFamilyPolicy
	headless  bool
	explicit  map[v1.IPFamily]netip.Addr
	nodePorts bool // its ports get node ports
}

// planService works out a (defaulted) service's IP families and explicit addresses, as the API
// server's service registry does, or returns why it cannot be stored.
func (a *allocator) planService(svc *v1.Service) (*plan, error) {
	p := &plan{owner: svc.Namespace + "/" + svc.Name, explicit: map[v1.IPFamily]netip.Addr{}}
	spec := &svc.Spec
	if spec.Type == v1.ServiceTypeExternalName {
		return p, nil
	}
	ips := spec.ClusterIPs
	if len(ips) == 0 && spec.ClusterIP != "" {
		ips = []string{spec.ClusterIP}
	}
	p.headless = len(ips) > 0 && ips[0] == v1.ClusterIPNone
	var ipFamilies []v1.IPFamily
	if !p.headless {
		for _, s := range ips {
			addr, err := netip.ParseAddr(s)
			if err != nil {
				return nil, fmt.Errorf("cluster IP %q: %w", s, err)
			}
			addr = addr.Unmap()
			p.explicit[familyOf(addr)] = addr
			ipFamilies = append(ipFamilies, familyOf(addr))
		}
	}
	families := spec.IPFamilies
	if len(families) == 0 {
		families = ipFamilies
	}
	if len(families) == 0 {
		families = []v1.IPFamily{a.primary}
	}
	if spec.IPFamilyPolicy != nil {
		p.policy = *spec.IPFamilyPolicy
	} else if len(families) > 1 {
		return nil, errors.New("spec.ipFamilyPolicy must be PreferDualStack or RequireDualStack for two families")
	} else {
		p.policy = v1.IPFamilyPolicySingleStack
	}
	if p.policy != v1.IPFamilyPolicySingleStack && len(families) == 1 {
		other := v1.IPv6Protocol
		if families[0] == v1.IPv6Protocol {
			other = v1.IPv4Protocol
		}
		if _, ok := a.ranges[other]; ok {
			families = append(families, other)
		} else if p.policy == v1.IPFamilyPolicyRequireDualStack {
			return nil, fmt.Errorf("spec.ipFamilyPolicy RequireDualStack, but no %s service CIDR is configured (--service-cluster-ip-range)", other)
		}
	}
	for i, f := range families {
		if _, ok := a.ranges[f]; ok {
			p.families = append(p.families, f)
		} else if i == 0 || p.policy != v1.IPFamilyPolicyPreferDualStack || p.explicit[f].IsValid() {
			return nil, fmt.Errorf("IP family %s: no service CIDR of that family is configured (--service-cluster-ip-range)", f)
		}
	}
	for i, f := range ipFamilies {
		if i >= len(p.families) || p.families[i] != f {
			return nil, fmt.Errorf("spec.clusterIPs families %v do not match spec.ipFamilies %v", ipFamilies, p.families)
		}
	}
	p.nodePorts = spec.Type == v1.ServiceTypeNodePort ||
		spec.Type == v1.ServiceTypeLoadBalancer && (spec.AllocateLoadBalancerNodePorts == nil || *spec.AllocateLoadBalancerNodePorts)
	return p, nil
}

// reserve claims a service's explicit cluster IPs and node ports, all or nothing.
func (a *allocator) reserve(svc *v1.Service, p *plan) error {
	var ips []netip.Addr
	for _, f := range p.families {
		addr, ok := p.explicit[f]
		if !ok {
			continue
		}
		r := a.ranges[f]
		if _, in := r.index(addr); !in {
			return fmt.Errorf("cluster IP %s is not in the service CIDR %s (or is its network or broadcast address)", addr, r.prefix)
		}
		if owner, taken := a.ips[addr]; taken {
			return fmt.Errorf("cluster IP %s is already allocated to %s", addr, owner)
		}
		ips = append(ips, addr)
	}
	var ports []int32
	claim := func(what string, port int32) error {
		if !a.nodePorts.Contains(port) {
			return fmt.Errorf("%s %d is not in the node-port range %s", what, port, a.nodePorts)
		}
		if owner, taken := a.ports[port]; taken && owner != p.owner {
			return fmt.Errorf("%s %d is already allocated to %s", what, port, owner)
		}
		ports = append(ports, port)
		return nil
	}
	for _, sp := range svc.Spec.Ports {
		if sp.NodePort != 0 {
			if err := claim("node port", sp.NodePort); err != nil {
				return err
			}
		}
	}
	if svc.Spec.HealthCheckNodePort != 0 {
		for _, sp := range svc.Spec.Ports {
			if sp.NodePort == svc.Spec.HealthCheckNodePort {
				return fmt.Errorf("healthCheckNodePort %d is also a node port of the service", sp.NodePort)
			}
		}
		if err := claim("healthCheckNodePort", svc.Spec.HealthCheckNodePort); err != nil {
			return err
		}
	}
	for _, ip := range ips {
		a.takeIP(ip, p.owner)
	}
	for _, port := range ports {
		a.takePort(port, p.owner)
	}
	return nil
}

// allocation is what the allocator decided for one service.
type allocation struct {
	clusterIPs          []string // nil for ExternalName
	families            []v1.IPFamily
	policy              v1.IPFamilyPolicy // "" for ExternalName
	nodePorts           []int32           // per port of the service
	healthCheckNodePort int32
}

func (a allocation) equal(b allocation) bool {
	return slices.Equal(a.clusterIPs, b.clusterIPs) && slices.Equal(a.families, b.families) && a.policy == b.policy &&
		slices.Equal(a.nodePorts, b.nodePorts) && a.healthCheckNodePort == b.healthCheckNodePort
}

// apply returns a copy of svc with the allocation filled in.
func (a allocation) apply(svc *v1.Service) *v1.Service {
	svc = svc.DeepCopy()
	spec := &svc.Spec
	if a.policy == "" {
		spec.ClusterIP, spec.ClusterIPs, spec.IPFamilies, spec.IPFamilyPolicy = "", nil, nil, nil
		return svc
	}
	spec.ClusterIP, spec.ClusterIPs = a.clusterIPs[0], slices.Clone(a.clusterIPs)
	spec.IPFamilies, spec.IPFamilyPolicy = slices.Clone(a.families), ptr(a.policy)
	for i := range spec.Ports {
		spec.Ports[i].NodePort = a.nodePorts[i]
	}
	spec.HealthCheckNodePort = a.healthCheckNodePort
	return svc
}

// allocate decides the missing cluster IPs and node ports of svc (which it does not modify),
// after every explicit value has been reserved.
func (a *allocator) allocate(svc *v1.Service, p *plan) (allocation, error) {
	spec := &svc.Spec
	var out allocation
	if spec.Type == v1.ServiceTypeExternalName {
		return out, nil
	}
	out.families, out.policy = p.families, p.policy
	if p.headless {
		out.clusterIPs = []string{v1.ClusterIPNone}
	} else {
		for _, f := range p.families {
			addr, ok := p.explicit[f]
			if !ok {
				r := a.ranges[f]
				i, found := probe(p.owner, r.size, r.offset, func(i uint64) bool {
					_, taken := a.ips[r.addr(i)]
					return !taken
				})
				if !found {
					return out, fmt.Errorf("no free cluster IP left in %s", r.prefix)
				}
				addr = r.addr(i)
				a.takeIP(addr, p.owner)
			}
			out.clusterIPs = append(out.clusterIPs, addr.String())
		}
	}
	out.nodePorts = make([]int32, len(spec.Ports))
	for i, sp := range spec.Ports {
		out.nodePorts[i] = sp.NodePort
	}
	if p.nodePorts {
		for i, sp := range spec.Ports {
			if out.nodePorts[i] != 0 {
				continue
			}
			// Like the API server, a port number served over several protocols shares one node port.
			for j, other := range spec.Ports {
				if other.Port == sp.Port && out.nodePorts[j] != 0 {
					out.nodePorts[i] = out.nodePorts[j]
					break
				}
			}
			if out.nodePorts[i] == 0 {
				port, err := a.nodePort(p.owner, p.owner+"/"+sp.Name)
				if err != nil {
					return out, err
				}
				out.nodePorts[i] = port
			}
		}
	}
	out.healthCheckNodePort = spec.HealthCheckNodePort
	if spec.Type == v1.ServiceTypeLoadBalancer && spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal &&
		out.healthCheckNodePort == 0 {
		port, err := a.nodePort(p.owner, p.owner+"#healthcheck")
		if err != nil {
			return out, err
		}
		out.healthCheckNodePort = port
	}
	return out, nil
}

func (a *allocator) takeIP(ip netip.Addr, owner string) {
	a.ips[ip] = owner
	a.owned[owner] = append(a.owned[owner], owned{ip: ip})
}

func (a *allocator) takePort(port int32, owner string) {
	a.ports[port] = owner
	a.owned[owner] = append(a.owned[owner], owned{port: port})
}

// release frees every value owner holds.
func (a *allocator) release(owner string) {
	for _, v := range a.owned[owner] {
		if v.ip.IsValid() && a.ips[v.ip] == owner {
			delete(a.ips, v.ip)
		}
		if v.port != 0 && a.ports[v.port] == owner {
			delete(a.ports, v.port)
		}
	}
	delete(a.owned, owner)
}

func (a *allocator) nodePort(owner, key string) (int32, error) {
	size := uint64(a.nodePorts.Last) - uint64(a.nodePorts.First) + 1
	i, ok := probe(key, size, bandOffset(size, 16, 128, 32), func(i uint64) bool {
		_, taken := a.ports[int32(a.nodePorts.First)+int32(i)]
		return !taken
	})
	if !ok {
		return 0, fmt.Errorf("no free node port left in %s", a.nodePorts)
	}
	port := int32(a.nodePorts.First) + int32(i)
	a.takePort(port, owner)
	return port, nil
}
