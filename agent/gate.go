package agent

import (
	"log/slog"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"sync"

	"k8s.io/apimachinery/pkg/types"

	"nodeagent/bgp"
	"nodeagent/proxier"
)

// announceGate stands between the speaker's plan and the announcers (layer-2 responder, BGP
// routes): an address is announced only while this node's proxy rules for it are in the kernel.
// The speaker's plan and the proxier's syncs run apart (the plan changes as objects arrive, the
// syncs follow later, may fail, or remove rules), so the gate holds back what the last successful
// sync did not program, and withdraws an address before a sync removes its rules:
// withdraw → sync → announce. The announcers still receive whole desired states.
type announceGate struct {
	log *slog.Logger
	// layer2 and routes are the announcers (nil: not configured). They are called with the
	// gate's lock held, so a sync cannot run between a decision and its announcement.
	layer2 func(owned map[netip.Addr][]string)
	routes func(advs []bgp.Advertisement) error
	// serviceIPs says whether cluster IPs are announced too (--advertise-cluster-ip), so
	// frontends must collect them.
	serviceIPs bool

	mu sync.Mutex
	// programmed are the addresses whose rules are in the kernel for sure: those of the last
	// successful sync that the sync under way keeps. Empty before the first sync.
	programmed map[netip.Addr]bool
	owned      map[netip.Addr][]string // the speaker's layer-2 plan
	advs       []bgp.Advertisement     // the speaker's BGP routes
	sentOwned  map[netip.Addr][]string // last handed to layer2 (nil: nothing yet)
	sentAdvs   []bgp.Advertisement     // last handed to routes
	sentRoutes bool
	held       int // desired addresses held back at the last publish (logged on change)
	// pending are addresses the syncs added that no successful sync has programmed yet.
	pending map[netip.Addr]bool

	// The frontends of the States handed to the proxier, kept up to date with each sync's
	// Changes (only the sync loop touches them): each service's announceable addresses, and
	// how many services have each.
	bySvc map[types.NamespacedName][]netip.Addr
	count map[netip.Addr]int
}

func newAnnounceGate(log *slog.Logger, serviceIPs bool) *announceGate {
	return &announceGate{log: log, serviceIPs: serviceIPs, programmed: map[netip.Addr]bool{}, pending: map[netip.Addr]bool{}}
}

// setOwned takes the speaker's whole layer-2 plan (metallb.Options.Announce).
func (g *announceGate) setOwned(owned map[netip.Addr][]string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.owned = owned
	g.publish()
}

// setAdvertisements takes the speaker's whole set of BGP routes.
func (g *announceGate) setAdvertisements(advs []bgp.Advertisement) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.advs = advs
	g.publish()
}

// beforeSync withdraws the addresses whose rules the coming sync removes (removed, from
// frontends), before the sync runs.
func (g *announceGate) beforeSync(removed []netip.Addr) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, a := range removed {
		delete(g.programmed, a)
		delete(g.pending, a)
	}
	g.publish()
}

// synced records the outcome of a sync that added the addresses added (from frontends): after a
// successful one, every address a sync added is programmed and may be announced; after a failed
// one they stay held back until a sync succeeds.
func (g *announceGate) synced(added []netip.Addr, ok bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, a := range added {
		g.pending[a] = true
	}
	if !ok {
		return
	}
	for a := range g.pending {
		g.programmed[a] = true
	}
	clear(g.pending)
	g.publish()
}

// publish hands the announcers the desired states restricted to programmed addresses, when
// they differ from what they have.
func (g *announceGate) publish() {
	held := 0
	if g.layer2 != nil {
		owned := make(map[netip.Addr][]string, len(g.owned))
		for a, ifs := range g.owned {
			if g.programmed[a.Unmap()] {
				owned[a] = ifs
			} else {
				held++
			}
		}
		if g.sentOwned == nil || !maps.EqualFunc(owned, g.sentOwned, slices.Equal[[]string]) {
			g.sentOwned = owned
			g.layer2(owned)
		}
	}
	if g.routes != nil {
		advs := make([]bgp.Advertisement, 0, len(g.advs))
		for _, a := range g.advs {
			if g.programmed[a.Prefix.Addr().Unmap()] {
				advs = append(advs, a)
			} else {
				held++
			}
		}
		if !g.sentRoutes || !reflect.DeepEqual(advs, g.sentAdvs) {
			g.sentRoutes, g.sentAdvs = true, advs
			// Invalid routes are logged; the valid ones are applied.
			if err := g.routes(advs); err != nil {
				g.log.Warn("bgp advertisements", "err", err)
			}
		}
	}
	if held != g.held {
		g.log.Debug("load-balancer addresses held back until their rules are programmed", "held", held)
		g.held = held
	}
}

// frontends updates the index of announceable addresses (load-balancer and external IPs, and
// cluster IPs when those are advertised) to st, the State about to be synced, and returns the
// addresses no service had before (added) and those no service has any more (removed). Partial
// syncs look only at the changed services: a walk of 100,000 service ports took milliseconds.
func (g *announceGate) frontends(st *proxier.State, ch proxier.Changes) (removed, added []netip.Addr) {
	inc := func(a netip.Addr) {
		if g.count[a]++; g.count[a] == 1 {
			added = append(added, a)
		}
	}
	dec := func(a netip.Addr) {
		if g.count[a]--; g.count[a] <= 0 {
			delete(g.count, a)
			removed = append(removed, a)
		}
	}
	if ch.Full || g.bySvc == nil {
		old := g.count
		g.bySvc, g.count = map[types.NamespacedName][]netip.Addr{}, map[netip.Addr]int{}
		for _, sp := range st.Services {
			if len(sp.LoadBalancerIPs) == 0 && len(sp.ExternalIPs) == 0 && !g.serviceIPs {
				continue // most ports: nothing to announce, no map access
			}
			g.bySvc[sp.Name.NamespacedName] = g.announceable(sp, g.bySvc[sp.Name.NamespacedName])
		}
		for _, addrs := range g.bySvc {
			for _, a := range addrs {
				g.count[a]++
			}
		}
		for a := range g.count {
			if old[a] == 0 {
				added = append(added, a)
			}
		}
		for a := range old {
			if g.count[a] == 0 {
				removed = append(removed, a)
			}
		}
		return removed, added
	}
	for k := range ch.Services {
		var addrs []netip.Addr
		for _, sp := range st.PortsOfService(k) {
			addrs = g.announceable(sp, addrs)
		}
		for _, a := range addrs {
			inc(a)
		}
		for _, a := range g.bySvc[k] {
			dec(a)
		}
		if len(addrs) == 0 {
			delete(g.bySvc, k)
		} else {
			g.bySvc[k] = addrs
		}
	}
	// An address both removed and added by this change (moved between services) is neither.
	var moved []netip.Addr
	for _, a := range removed {
		if g.count[a] > 0 {
			moved = append(moved, a)
		}
	}
	removed = slices.DeleteFunc(removed, func(a netip.Addr) bool { return slices.Contains(moved, a) })
	added = slices.DeleteFunc(added, func(a netip.Addr) bool { return slices.Contains(moved, a) })
	return removed, added
}

// announceable appends sp's announceable addresses to addrs, each once.
func (g *announceGate) announceable(sp *proxier.ServicePort, addrs []netip.Addr) []netip.Addr {
	add := func(a netip.Addr) {
		a = a.Unmap()
		if !slices.Contains(addrs, a) {
			addrs = append(addrs, a)
		}
	}
	for _, a := range sp.LoadBalancerIPs {
		add(a)
	}
	for _, a := range sp.ExternalIPs {
		add(a)
	}
	if g.serviceIPs {
		add(sp.ClusterIP)
	}
	return addrs
}
