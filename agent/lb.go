package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync/atomic"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"

	"nodeagent/agent/config"
	"nodeagent/arp"
	"nodeagent/bgp"
	"nodeagent/member"
	"nodeagent/metallb"
	"nodeagent/proxier"
)

// loadBalancing is the MetalLB side of a running agent: address assignment in front of the proxy
// tracker, membership, and the ARP/NDP responder.
type loadBalancing struct {
	speaker *metallb.Speaker
	layer2  *arp.Responder // nil without --layer2
	members *member.Members
	bgp     *bgp.Speaker
	check   *planCheck // nil without memberlist
}

// startLoadBalancing builds the speaker that feeds next, and starts membership and the layer-2
// responder when configured. In API mode the agent that writes load-balancer status also
// records next's frontend conflicts as Events.
// Announcements go through gate; layer2, when set, replaces the layer-2 responder (tests).
func startLoadBalancing(ctx context.Context, c *config.Config, node string, nodeIPs []netip.Addr, next *proxier.Tracker,
	gate *announceGate, layer2 func(map[netip.Addr][]string), log *slog.Logger) (*loadBalancing, error) {
	lbs := &loadBalancing{}
	opts := metallb.Options{Node: node, Class: c.LBClass, AllocationOff: !c.LBAllocation, Next: next, Log: log.With("component", "metallb"),
		AdvertiseClusterIPs: c.AdvertiseClusterIP, AdvertiseExternalIPs: c.AdvertiseExternalIP, Namespace: c.LeaderElectionNamespace}
	var writer *statusWriter
	if kube, _ := useKube(c); kube {
		client, err := kubeClient(c)
		if err != nil {
			return nil, err
		}
		writer = newStatusWriter(ctx, client, node, log.With("component", "metallb"))
		opts.WriteStatus = writer.write
		opts.Problem = writer.problem
		next.OnConflict = writer.frontendConflict
	}
	defer func() {
		if writer == nil || lbs.speaker == nil {
			return
		}
		go lbs.speaker.WriteStatuses(ctx.Done())
		go writer.lead(ctx, c.LeaderElectionNamespace, "nodeagent-loadbalancer", node, func() {
			lbs.speaker.RewriteStatuses()
			lbs.speaker.ReportProblems()
			next.ReportConflicts()
		})
	}()
	if layer2 != nil {
		gate.layer2 = layer2
		opts.Announce = gate.setOwned
	} else if c.Layer2 {
		patterns := arp.DefaultExcludeInterfaces
		if c.Layer2ExcludeInterfaces != nil {
			patterns = *c.Layer2ExcludeInterfaces
		}
		exclude, err := arp.ExcludeInterfaces(patterns)
		if err != nil {
			return nil, fmt.Errorf("--layer2-exclude-interfaces: %w", err)
		}
		r := arp.New(arp.Options{Logger: log.With("component", "layer2"), RefreshInterval: c.Layer2Refresh.Duration, Exclude: exclude})
		lbs.layer2 = r
		go func() {
			if err := r.Run(ctx); err != nil && ctx.Err() == nil {
				log.Error("layer-2 responder stopped", "err", err)
			}
		}()
		gate.layer2 = r.SetOwned
		opts.Announce = gate.setOwned
	}
	if opts.Announce != nil && writer != nil {
		// Every announcing node records what it announces (nodeAssigned, ServiceL2Status).
		cfg, err := restConfig(c)
		if err != nil {
			return nil, err
		}
		dyn, err := dynamic.NewForConfig(cfg)
		if err != nil {
			return nil, fmt.Errorf("layer-2 status: %w", err)
		}
		l2 := newL2Status(node, c.LeaderElectionNamespace, dyn, writer.client.Discovery(), writer.events, log.With("component", "layer2-status"))
		opts.Layer2Services = l2.set
		go l2.run(ctx)
	}
	// Routes carry each session's local address as next hop; the router ID is a node address.
	bc := bgp.Config{Logger: log}
	for _, a := range nodeIPs {
		if a.Is4() {
			bc.RouterID = a
			break
		}
	}
	sp, err := bgp.New(bc)
	if err != nil {
		return nil, fmt.Errorf("bgp: %w", err)
	}
	lbs.bgp = sp
	gate.routes = sp.SetAdvertisements
	opts.BGP = func(peers []bgp.Peer, advs []bgp.Advertisement) {
		// Invalid peers or routes are logged by the speaker; the valid ones are applied.
		if err := sp.SetPeers(peers); err != nil {
			log.Warn("bgp peers", "err", err)
		}
		gate.setAdvertisements(advs)
	}
	if c.MemberlistBind == "" {
		lbs.speaker = metallb.New(opts)
		return lbs, nil
	}
	bind, err := parseBind(c.MemberlistBind, 7946)
	if err != nil {
		return nil, fmt.Errorf("--memberlist-bind: %w", err)
	}
	// The speaker exists before membership starts, so membership events always find it.
	var members atomic.Pointer[member.Members]
	opts.Alive = func() []string {
		if m := members.Load(); m != nil {
			return m.Alive()
		}
		return []string{node}
	}
	lbs.speaker = metallb.New(opts)
	m, err := member.Start(member.Options{Name: node, Bind: bind, Join: c.MemberlistJoin,
		Secret: c.MemberlistKey, Insecure: c.MemberlistInsecure, Log: log.With("component", "memberlist"),
		OnChange: lbs.speaker.MembershipChanged})
	if err != nil {
		return nil, err
	}
	members.Store(m)
	lbs.members = m
	lbs.speaker.MembershipChanged()
	lbs.check = newPlanCheck(node, lbs.speaker.Digest, m, log.With("component", "plan-check"))
	if writer != nil {
		lbs.check.event = func(_, msg string) {
			// On this node's Node, as the kubelet records its Events (the UID is the name).
			ref := &v1.ObjectReference{Kind: "Node", APIVersion: "v1", Name: node, UID: types.UID(node)}
			writer.events.Event(ref, v1.EventTypeWarning, "LoadBalancerPlanDisagreement", msg)
		}
	}
	go lbs.check.run(ctx)
	return lbs, nil
}

// metallbCollector exposes MetalLB's own metrics of this agent's allocation, layer-2 responder
// and BGP sessions.
func (l *loadBalancing) metallbCollector() *metallbCollector {
	var layer2 func() map[netip.Addr]arp.AddrStats
	if l.layer2 != nil {
		layer2 = l.layer2.AddrStats
	}
	var status func() bgp.Status
	if l.bgp != nil {
		status = l.bgp.Status
	}
	return newMetalLBCollector(l.speaker.PoolUsage, layer2, status)
}

func (l *loadBalancing) stop() {
	if l.bgp != nil {
		// Withdraws every route and closes the sessions (CEASE), as a graceful stop should.
		l.bgp.Stop()
	}
	if l.members != nil {
		l.members.Leave(time.Second)
	}
}

func parseBind(s string, defPort uint16) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap, nil
	}
	host, port := s, strconv.Itoa(int(defPort))
	if h, p, err := net.SplitHostPort(s); err == nil {
		host, port = h, p
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.AddrPort{}, err
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(a, uint16(n)), nil
}

// bgpStatus serves the BGP sessions and what they advertise, as text (/debug/bgp).
func (l *loadBalancing) bgpStatus(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprint(w, l.bgp.Status().String())
}
