package agent

import (
	"log/slog"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"sync"

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
}

func newAnnounceGate(log *slog.Logger, serviceIPs bool) *announceGate {
	return &announceGate{log: log, serviceIPs: serviceIPs, programmed: map[netip.Addr]bool{}}
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

// beforeSync withdraws every address whose rules the coming sync of next (frontends of its
// State) removes, before the sync runs.
func (g *announceGate) beforeSync(next map[netip.Addr]bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	maps.DeleteFunc(g.programmed, func(a netip.Addr, _ bool) bool { return !next[a] })
	g.publish()
}

// synced records a successful sync of next: its addresses may be announced now. After a failed
// sync nothing changes: addresses the sync was to add stay held back.
func (g *announceGate) synced(next map[netip.Addr]bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.programmed = next
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

// frontends returns the addresses st programs that an announcer may announce: load-balancer and
// external IPs, and cluster IPs when those are advertised. It walks every service port (a few
// hundred microseconds for 100,000), but allocates only for the announceable addresses.
func (g *announceGate) frontends(st *proxier.State) map[netip.Addr]bool {
	out := map[netip.Addr]bool{}
	for _, sp := range st.Services {
		for _, a := range sp.LoadBalancerIPs {
			out[a.Unmap()] = true
		}
		for _, a := range sp.ExternalIPs {
			out[a.Unmap()] = true
		}
		if g.serviceIPs {
			out[sp.ClusterIP.Unmap()] = true
		}
	}
	return out
}
