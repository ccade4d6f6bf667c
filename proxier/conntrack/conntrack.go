// Package conntrack deletes conntrack entries that would keep UDP and SCTP traffic flowing to
// endpoints a service no longer has. Every proxy mode calls it after a successful sync.
//
// UDP and SCTP have no connection teardown the kernel can see, so a conntrack entry created for
// a client's first packet keeps DNAT-ing later packets to the endpoint chosen then, for as long as
// the client keeps sending. When that endpoint goes away the client is blackholed until it stops
// sending for the entry's timeout. Likewise, packets sent to a service IP while it had no
// endpoints create an entry without DNAT that outlives the arrival of endpoints. The Cleaner
// deletes such entries so the next packet goes through the rules again.
package conntrack

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"nodeagent/proxier"
)

// Kernel is the conntrack table of one network namespace. *netlink.Handle satisfies it; tests
// use a fake.
type Kernel interface {
	// ConntrackDeleteFilters deletes the entries of family that match any of filters and returns
	// how many it deleted.
	ConntrackDeleteFilters(table netlink.ConntrackTableType, family netlink.InetFamily, filters ...netlink.CustomConntrackFilter) (uint, error)
}

var _ Kernel = (*netlink.Handle)(nil)

// NewKernel returns a handle on the conntrack table of the network namespace ns; netns.None()
// means the caller's own namespace (the agent runs inside the namespace it programs). The caller
// closes it with Delete.
func NewKernel(ns netns.NsHandle) (*netlink.Handle, error) {
	if ns == netns.None() {
		h, err := netlink.NewHandle(unix.NETLINK_NETFILTER)
		if err != nil {
			return nil, fmt.Errorf("open conntrack netlink socket: %w", err)
		}
		return h, nil
	}
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("open conntrack netlink socket in namespace %s: %w", ns, err)
	}
	return h, nil
}

// Cleaner deletes conntrack entries of UDP and SCTP flows that can no longer reach a valid endpoint.
type Cleaner struct {
	k   Kernel
	log *slog.Logger
	// Recorder, when set before the first Clean, receives each table walk for metrics.
	Recorder proxier.Recorder

	mu   sync.Mutex
	fams map[proxier.Family]*familyState
}

// familyState is what the Cleaner knows of one family between calls.
type familyState struct {
	fe *frontends // every UDP/SCTP frontend: the filter of a table walk
	// owned is each service's share of fe, so that a partial sync replaces only the changed
	// services' frontends instead of walking every service.
	owned map[types.NamespacedName]*frontends
	// walk means the table must be walked whatever changes: first call (leftovers of a previous
	// run) or a failed walk.
	walk bool
}

// NewCleaner returns a Cleaner working on k.
func NewCleaner(k Kernel, log *slog.Logger) *Cleaner {
	if log == nil {
		log = slog.Default()
	}
	return &Cleaner{k: k, log: log, fams: map[proxier.Family]*familyState{}}
}

// Clean deletes stale entries for st, given the services that changed since the last call: the
// conntrack table is only walked for a family when a UDP or SCTP frontend lost an endpoint or
// gained its first ones (and on the first call, to catch leftovers of a previous run, and after a
// failed walk). A partial ch costs what changed; a full one recomputes every frontend. The
// decision itself is made from st alone, as kube-proxy's does.
//
// An entry is deleted when its protocol is UDP or SCTP and either
//   - its original destination is a service IP (cluster, external or load-balancer) and port whose
//     service port has serving endpoints, and its reply source is none of them; or
//   - its original destination port is such a service port's node port, its reply source is none
//     of the endpoints, and it was DNAT-ed here or addressed to one of this node's IPs (so flows
//     this node merely originates or forwards to other hosts' node ports are left alone).
//
// Traffic policies and endpoint readiness for new connections do not matter here: as for TCP, a
// flow may keep using any endpoint that is still serving.
func (c *Cleaner) Clean(st *proxier.State, ch proxier.Changes) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	for _, f := range proxier.Families {
		fs, needs := c.fams[f], false
		if fs == nil || ch.Full {
			next := &familyState{fe: newFrontends(), owned: map[types.NamespacedName]*frontends{}}
			var n types.NamespacedName
			var group []*proxier.ServicePort
			flush := func() {
				own := frontendsOf(group, f)
				if len(own.vips)+len(own.nodePorts) == 0 {
					return
				}
				next.fe.add(own)
				if had := next.owned[n]; had != nil { // a hand-made state, not sorted by name
					had.add(own)
					return
				}
				next.owned[n] = own
			}
			for _, sp := range st.Services {
				if sp.Name.NamespacedName != n {
					flush()
					n, group = sp.Name.NamespacedName, group[:0]
				}
				group = append(group, sp)
			}
			flush()
			needs = fs == nil || fs.walk || next.fe.needsCleanup(fs.fe)
			fs = next
			c.fams[f] = fs
		} else {
			for n := range ch.Services {
				own, old := frontendsOf(st.PortsOfService(n), f), fs.owned[n]
				if old == nil {
					old = newFrontends()
				}
				needs = needs || own.needsCleanup(old)
				fs.fe.remove(old)
				delete(fs.owned, n)
				if len(own.vips)+len(own.nodePorts) > 0 {
					fs.owned[n] = own
					fs.fe.add(own)
				}
			}
			needs = needs || fs.walk
		}
		fs.fe.nodeIPs = map[netip.Addr]bool{}
		for _, a := range st.NodeIPsOf(f) {
			fs.fe.nodeIPs[a] = true
		}
		if !needs || fs.fe.empty() {
			fs.walk = false
			continue
		}
		fs.walk = true
		start := time.Now()
		n, err := c.k.ConntrackDeleteFilters(netlink.ConntrackTable, inetFamily(f), fs.fe)
		if c.Recorder != nil {
			c.Recorder.ConntrackCleaned(f, time.Since(start), int(n))
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("delete stale %s conntrack entries: %w", f, err))
			continue
		}
		if n > 0 {
			c.log.Info("deleted stale conntrack entries", "family", f.String(), "entries", n)
		}
		fs.walk = false
	}
	return errors.Join(errs...)
}

func inetFamily(f proxier.Family) netlink.InetFamily {
	if f == proxier.IPv6 {
		return unix.AF_INET6
	}
	return unix.AF_INET
}

// protoNumber maps the protocols whose entries need cleaning to their IP protocol numbers; TCP
// is absent on purpose (its connections end visibly, and a reset tells the client).
func protoNumber(p v1.Protocol) (uint8, bool) {
	switch p {
	case v1.ProtocolUDP:
		return unix.IPPROTO_UDP, true
	case v1.ProtocolSCTP:
		return unix.IPPROTO_SCTP, true
	}
	return 0, false
}

type vipKey struct {
	dst   netip.AddrPort
	proto uint8
}

type nodePortKey struct {
	port  uint16
	proto uint8
}

type endpointSet map[netip.AddrPort]bool

// frontends is, for one family, every UDP/SCTP frontend with the endpoints a flow to it may still
// be DNAT-ed to. It is also the netlink filter that picks the stale entries.
type frontends struct {
	vips      map[vipKey]endpointSet
	nodePorts map[nodePortKey]endpointSet
	nodeIPs   map[netip.Addr]bool
}

var _ netlink.CustomConntrackFilter = (*frontends)(nil)

func newFrontends() *frontends {
	return &frontends{vips: map[vipKey]endpointSet{}, nodePorts: map[nodePortKey]endpointSet{}}
}

// frontendsOf returns the UDP/SCTP frontends of sps (one service's ports) in family f.
func frontendsOf(sps []*proxier.ServicePort, f proxier.Family) *frontends {
	fe := newFrontends()
	for _, sp := range sps {
		if sp.Name.Family != f {
			continue
		}
		proto, ok := protoNumber(sp.Name.Protocol)
		if !ok {
			continue
		}
		eps := endpointSet{}
		for _, e := range sp.AllEndpoints {
			if e.Serving {
				eps[e.AddrPort()] = true
			}
		}
		add := func(a netip.Addr) {
			k := vipKey{netip.AddrPortFrom(a, sp.Port), proto}
			fe.vips[k] = merge(fe.vips[k], eps)
		}
		add(sp.ClusterIP)
		for _, a := range sp.ExternalIPs {
			add(a)
		}
		for _, a := range sp.LoadBalancerIPs {
			add(a)
		}
		if sp.NodePort != 0 {
			k := nodePortKey{sp.NodePort, proto}
			fe.nodePorts[k] = merge(fe.nodePorts[k], eps)
		}
	}
	return fe
}

// add merges o's frontends into fe. Two services never share a frontend (the model resolves
// conflicts), so remove can take a service's frontends out again by key.
func (fe *frontends) add(o *frontends) {
	for k, eps := range o.vips {
		fe.vips[k] = merge(fe.vips[k], eps)
	}
	for k, eps := range o.nodePorts {
		fe.nodePorts[k] = merge(fe.nodePorts[k], eps)
	}
}

func (fe *frontends) remove(o *frontends) {
	for k := range o.vips {
		delete(fe.vips, k)
	}
	for k := range o.nodePorts {
		delete(fe.nodePorts, k)
	}
}

func merge(a, b endpointSet) endpointSet {
	if a == nil {
		return b
	}
	out := endpointSet{}
	for k := range a {
		out[k] = true
	}
	for k := range b {
		out[k] = true
	}
	return out
}

// empty reports whether no frontend has endpoints, so no entry could be stale.
func (fe *frontends) empty() bool {
	for _, eps := range fe.vips {
		if len(eps) > 0 {
			return false
		}
	}
	for _, eps := range fe.nodePorts {
		if len(eps) > 0 {
			return false
		}
	}
	return true
}

// needsCleanup reports whether, since prev, a frontend that has endpoints now lost one or had
// none. Frontends that disappeared are not cleaned: their rules are gone, as kube-proxy leaves them.
func (fe *frontends) needsCleanup(prev *frontends) bool {
	stale := func(cur, old endpointSet) bool {
		if len(cur) == 0 {
			return false
		}
		if len(old) == 0 {
			return true
		}
		for e := range old {
			if !cur[e] {
				return true
			}
		}
		return false
	}
	for k, eps := range fe.vips {
		if stale(eps, prev.vips[k]) {
			return true
		}
	}
	for k, eps := range fe.nodePorts {
		if stale(eps, prev.nodePorts[k]) {
			return true
		}
	}
	return false
}

// MatchConntrackFlow reports whether flow is stale (see Cleaner.Clean).
func (fe *frontends) MatchConntrackFlow(flow *netlink.ConntrackFlow) bool {
	proto := flow.Forward.Protocol
	if proto != unix.IPPROTO_UDP && proto != unix.IPPROTO_SCTP {
		return false
	}
	dstIP, ok1 := netip.AddrFromSlice(flow.Forward.DstIP)
	replyIP, ok2 := netip.AddrFromSlice(flow.Reverse.SrcIP)
	if !ok1 || !ok2 {
		return false
	}
	dst := netip.AddrPortFrom(dstIP.Unmap(), flow.Forward.DstPort)
	replySrc := netip.AddrPortFrom(replyIP.Unmap(), flow.Reverse.SrcPort)
	if eps, ok := fe.vips[vipKey{dst, proto}]; ok && len(eps) > 0 && !eps[replySrc] {
		return true
	}
	if eps, ok := fe.nodePorts[nodePortKey{dst.Port(), proto}]; ok && len(eps) > 0 && !eps[replySrc] {
		dnated := replySrc.Addr() != dst.Addr()
		return dnated || fe.nodeIPs[dst.Addr()]
	}
	return false
}
