// Package arp is the layer-2 speaker: it answers ARP requests (IPv4) and Neighbor Solicitations
// (IPv6) for the load-balancer addresses this node owns, with the interface's own MAC address,
// and announces each address it takes over with gratuitous ARP / unsolicited Neighbor
// Advertisements so that neighbours move to this node at once. The addresses are never added to
// an interface: the kernel does not know them, only this responder answers for them.
//
// Ownership comes from outside (lb.PlanL2 → lb.Owned) through SetOwned, the whole desired set at
// once. Kernel access stays behind Links and Dialer, so the logic is tested over fake connections.
package arp

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for Options.
const (
	DefaultRescanInterval     = 5 * time.Second
	DefaultGratuitousRepeats  = 3
	DefaultGratuitousInterval = 1100 * time.Millisecond // past Linux's default arp locktime (1 s)
)

// Options configure a Responder. Zero values take the defaults.
type Options struct {
	// NetNS is the path of the network namespace to answer in ("": the current one).
	NetNS string
	// Links and Dialer replace the kernel (tests).
	Links  Links
	Dialer Dialer
	// RescanInterval is how often interfaces are listed again, to follow interfaces that come,
	// go, or change state.
	RescanInterval time.Duration
	// GratuitousRepeats is how many more gratuitous announcements follow the first one on taking
	// an address, GratuitousInterval apart (negative: none).
	GratuitousRepeats  int
	GratuitousInterval time.Duration
	// RefreshInterval, when positive, re-announces every owned address that often.
	RefreshInterval time.Duration
	// Exclude, when set, matches the names of interfaces never answered on, even when an
	// L2Advertisement names them (MetalLB's announcedInterfacesToExclude; see ExcludeInterfaces).
	Exclude *regexp.Regexp
	Logger  *slog.Logger
}

// DefaultExcludeInterfaces are the interfaces MetalLB v0.14.8's manifests keep its speaker from
// answering on (the metallb-excludel2 ConfigMap): container, CNI and virtual links, where a
// load-balancer address must not be claimed.
var DefaultExcludeInterfaces = []string{"^docker.*", "^cbr.*", "^dummy.*", "^virbr.*", "^lxcbr.*", "^veth.*", "^lo$",
	"^cali.*", "^tunl.*", "^flannel.*", "^kube-ipvs.*", "^cni.*", "^nodelocaldns.*"}

// ExcludeInterfaces compiles patterns into one regular expression matching a name any of them
// matches, as MetalLB does; nil for no pattern.
func ExcludeInterfaces(patterns []string) (*regexp.Regexp, error) {
	var parts []string
	for _, p := range patterns {
		if p = strings.TrimSpace(p); p != "" {
			if _, err := regexp.Compile(p); err != nil {
				return nil, fmt.Errorf("interface pattern %q: %w", p, err)
			}
			parts = append(parts, "("+p+")")
		}
	}
	if len(parts) == 0 {
		return nil, nil
	}
	return regexp.Compile(strings.Join(parts, "|"))
}

// Stats are the responder's counters, for metrics.
type Stats struct {
	// Announced is the number of (address, interface) pairs currently answered for.
	Announced int
	// OwnershipChanges counts (address, interface) pairs gained or lost.
	OwnershipChanges uint64
	// ARPRequestsAnswered and NDPSolicitationsAnswered count replies sent.
	ARPRequestsAnswered      uint64
	NDPSolicitationsAnswered uint64
	// GratuitousSent counts gratuitous ARP packets and unsolicited Neighbor Advertisements sent.
	GratuitousSent uint64
	// Errors counts failed socket operations and interface listings.
	Errors uint64
	// BadPackets counts received packets dropped as malformed or invalid, or because handling
	// them panicked.
	BadPackets uint64
}

// AddrStats are the counters of one load-balancer address, MetalLB's layer-2 metrics.
type AddrStats struct {
	// Requests counts ARP requests and Neighbor Solicitations received for the address while
	// this node answered for it; Responses the answers sent; Gratuitous the gratuitous ARP
	// packets and unsolicited Neighbor Advertisements sent for it.
	Requests, Responses, Gratuitous uint64
}

// addrCounters are one address's AddrStats, updated by the serving goroutines.
type addrCounters struct {
	requests, responses, gratuitous atomic.Uint64
}

// Responder answers ARP and NDP for the addresses it owns.
type Responder struct {
	opts Options
	log  *slog.Logger

	mu      sync.Mutex
	desired map[netip.Addr][]string
	kick    chan struct{}

	// Owned only by the Run goroutine.
	links   map[string]*link
	lastErr map[string]string // per interface: last error logged, to log each error once

	announced                         atomic.Int64
	changes, arpAnswered, ndpAnswered atomic.Uint64
	gratuitous, errors                atomic.Uint64
	badPackets                        atomic.Uint64
	lastBadLog                        atomic.Int64 // unix nanoseconds of the last bad-packet log
	runningMu                         sync.Mutex
	// perAddr holds an *addrCounters for every address ever answered for (created when it is
	// taken over, so the number of entries is bounded by the addresses owned, never by traffic).
	perAddr sync.Map
}

// New returns a Responder; nothing happens until Run.
func New(opts Options) *Responder {
	if opts.Links == nil || opts.Dialer == nil {
		k := kernel{nsPath: opts.NetNS}
		if opts.Links == nil {
			opts.Links = k
		}
		if opts.Dialer == nil {
			opts.Dialer = k
		}
	}
	if opts.RescanInterval <= 0 {
		opts.RescanInterval = DefaultRescanInterval
	}
	if opts.GratuitousRepeats == 0 {
		opts.GratuitousRepeats = DefaultGratuitousRepeats
	}
	if opts.GratuitousInterval <= 0 {
		opts.GratuitousInterval = DefaultGratuitousInterval
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Responder{opts: opts, log: opts.Logger.With("component", "arp"), desired: map[netip.Addr][]string{},
		kick: make(chan struct{}, 1), links: map[string]*link{}, lastErr: map[string]string{}}
}

// SetOwned replaces the whole set of owned addresses: each address with the interfaces to answer
// on (nil or empty: every usable interface). Addresses left out stop being answered at once.
// It never blocks; Run applies the set.
func (r *Responder) SetOwned(owned map[netip.Addr][]string) {
	cp := make(map[netip.Addr][]string, len(owned))
	for a, ifs := range owned {
		cp[a.Unmap()] = slices.Clone(ifs)
	}
	r.mu.Lock()
	r.desired = cp
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Stats returns the counters.
func (r *Responder) Stats() Stats {
	return Stats{
		Announced:                int(r.announced.Load()),
		OwnershipChanges:         r.changes.Load(),
		ARPRequestsAnswered:      r.arpAnswered.Load(),
		NDPSolicitationsAnswered: r.ndpAnswered.Load(),
		GratuitousSent:           r.gratuitous.Load(),
		Errors:                   r.errors.Load(),
		BadPackets:               r.badPackets.Load(),
	}
}

// AddrStats returns the counters of every address answered for since the start.
func (r *Responder) AddrStats() map[netip.Addr]AddrStats {
	out := map[netip.Addr]AddrStats{}
	r.perAddr.Range(func(k, v any) bool {
		c := v.(*addrCounters)
		out[k.(netip.Addr)] = AddrStats{Requests: c.requests.Load(), Responses: c.responses.Load(), Gratuitous: c.gratuitous.Load()}
		return true
	})
	return out
}

// counters returns a's counters; for an address never taken over (which is not answered for),
// counters that are not kept.
func (r *Responder) counters(a netip.Addr) *addrCounters {
	if v, ok := r.perAddr.Load(a); ok {
		return v.(*addrCounters)
	}
	return &addrCounters{}
}

// Run answers until ctx is done, then closes every socket. It returns ctx's error.
func (r *Responder) Run(ctx context.Context) error {
	if !r.runningMu.TryLock() {
		return fmt.Errorf("arp: Run called twice")
	}
	defer r.runningMu.Unlock()
	defer func() {
		for name, l := range r.links {
			r.release(l, l.owned(), "stopping")
			l.close()
			delete(r.links, name)
		}
		r.announced.Store(0)
	}()
	rescan := time.NewTicker(r.opts.RescanInterval)
	defer rescan.Stop()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	dirty := true
	for {
		if dirty {
			r.reconcile()
			dirty = false
		}
		wait := time.Hour
		if next := r.announceDue(time.Now()); !next.IsZero() {
			wait = max(time.Until(next), 0)
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-r.kick:
			dirty = true
		case <-rescan.C:
			dirty = true
		case <-timer.C:
		}
	}
}

// reportErr logs err for an interface once until it changes or clears, and counts it.
func (r *Responder) reportErr(iface string, err error) {
	r.errors.Add(1)
	msg := err.Error()
	if r.lastErr[iface] == msg {
		return
	}
	r.lastErr[iface] = msg
	r.log.Warn("layer-2 announcements impaired", "interface", iface, "err", err)
}

// reconcile opens and closes sockets and updates what each interface answers for.
func (r *Responder) reconcile() {
	r.mu.Lock()
	desired := r.desired
	r.mu.Unlock()

	links, err := r.opts.Links.Links()
	if err != nil {
		r.reportErr("", err)
		return // keep answering as before
	}
	delete(r.lastErr, "")
	usable := map[string]Link{}
	for _, l := range links {
		if l.unusable() == "" && (r.opts.Exclude == nil || !r.opts.Exclude.MatchString(l.Name)) {
			usable[l.Name] = l
		}
	}
	// What each usable interface must answer for.
	want := map[string]map[netip.Addr]bool{}
	for addr, ifs := range desired {
		for name := range usable {
			if len(ifs) == 0 || slices.Contains(ifs, name) {
				if want[name] == nil {
					want[name] = map[netip.Addr]bool{}
				}
				want[name][addr] = true
			}
		}
	}
	for name, l := range r.links {
		u, ok := usable[name]
		if ok && len(want[name]) > 0 && u.Index == l.Index && slices.Equal(u.HardwareAddr, l.HardwareAddr) && !l.broken.Load() {
			continue
		}
		reason := "no address to answer for"
		switch {
		case !ok:
			reason = "interface gone or unusable"
		case l.broken.Load():
			reason = "socket failed"
		case len(want[name]) > 0:
			reason = "interface replaced"
		}
		r.release(l, l.owned(), reason)
		l.close()
		delete(r.links, name)
	}
	total := 0
	for _, name := range slices.Sorted(maps.Keys(want)) {
		l := r.links[name]
		if l == nil {
			l = newLink(usable[name])
			r.links[name] = l
		}
		total += r.update(l, want[name])
	}
	for name := range r.lastErr {
		if name != "" && want[name] == nil {
			delete(r.lastErr, name)
		}
	}
	r.announced.Store(int64(total))
}

// update makes l answer for want (as far as its sockets allow) and returns how many addresses it
// answers for.
func (r *Responder) update(l *link, want map[netip.Addr]bool) int {
	var need4, need6 bool
	for a := range want {
		if a.Is4() {
			need4 = true
		} else {
			need6 = true
		}
	}
	failed := false
	if need4 && l.arp == nil {
		c, err := r.opts.Dialer.ListenARP(l.Link)
		if err != nil {
			r.reportErr(l.Name, err)
			failed = true
		} else {
			l.arp, l.arpClosed = c, new(atomic.Bool)
			go r.serveARP(l, c, l.arpClosed)
		}
	} else if !need4 && l.arp != nil {
		l.closeARP()
	}
	if need6 && l.ndp == nil {
		c, err := r.opts.Dialer.ListenNDP(l.Link)
		if err != nil {
			r.reportErr(l.Name, err)
			failed = true
		} else {
			l.ndp, l.ndpClosed, l.groups = c, new(atomic.Bool), map[netip.Addr]int{}
			go r.serveNDP(l, c, l.ndpClosed)
		}
	} else if !need6 && l.ndp != nil {
		l.closeNDP()
	}
	// Only addresses whose family has a socket are answered for.
	next := map[netip.Addr]bool{}
	for a := range want {
		if (a.Is4() && l.arp != nil) || (a.Is6() && l.ndp != nil) {
			next[a] = true
		}
	}
	old := l.owned()
	var gone []netip.Addr
	for a := range old {
		if !next[a] {
			gone = append(gone, a)
		}
	}
	for a := range next {
		if old[a] {
			continue
		}
		if a.Is6() {
			if err := l.join(a); err != nil {
				r.reportErr(l.Name, err)
				failed = true
				delete(next, a)
				continue
			}
		}
		r.changes.Add(1)
		r.perAddr.LoadOrStore(a, &addrCounters{})
		r.log.Info("taking over address", "address", a, "interface", l.Name)
		l.schedule[a] = &schedule{next: time.Now(), left: max(r.opts.GratuitousRepeats, 0) + 1}
	}
	l.setOwned(next)
	r.release(l, setOf(gone), "not owned any more")
	if !failed {
		delete(r.lastErr, l.Name)
	}
	return len(next)
}

func setOf(as []netip.Addr) map[netip.Addr]bool {
	out := make(map[netip.Addr]bool, len(as))
	for _, a := range as {
		out[a] = true
	}
	return out
}

// release stops answering for addrs on l (already dropped from its owned set, or about to be
// with the whole link).
func (r *Responder) release(l *link, addrs map[netip.Addr]bool, reason string) {
	for _, a := range slices.SortedFunc(maps.Keys(addrs), netip.Addr.Compare) {
		r.changes.Add(1)
		delete(l.schedule, a)
		if a.Is6() && l.ndp != nil {
			if err := l.leave(a); err != nil {
				r.reportErr(l.Name, err)
			}
		}
		r.log.Info("giving up address", "address", a, "interface", l.Name, "reason", reason)
	}
}

// announceDue sends the gratuitous announcements that are due and returns when the next one is
// (zero: none pending).
func (r *Responder) announceDue(now time.Time) time.Time {
	var next time.Time
	for _, l := range r.links {
		owned := l.owned()
		for a, s := range l.schedule {
			if !owned[a] {
				delete(l.schedule, a)
				continue
			}
			if !s.next.After(now) {
				if err := r.announce(l, a); err != nil {
					r.reportErr(l.Name, err)
				}
				s.left--
				switch {
				case s.left > 0:
					s.next = now.Add(r.opts.GratuitousInterval)
				case r.opts.RefreshInterval > 0:
					s.next = now.Add(r.opts.RefreshInterval)
				default:
					delete(l.schedule, a)
					continue
				}
			}
			if next.IsZero() || s.next.Before(next) {
				next = s.next
			}
		}
	}
	return next
}

// schedule is the pending gratuitous announcements of one address on one interface.
type schedule struct {
	next time.Time
	left int // announcements left in the initial burst (0: refreshing)
}

// link is one interface the responder answers on.
type link struct {
	Link
	arp       net.PacketConn
	arpClosed *atomic.Bool // set before arp is closed on purpose
	ndp       NDPConn
	ndpClosed *atomic.Bool
	broken    atomic.Bool        // a socket failed: reopen
	groups    map[netip.Addr]int // solicited-node groups joined, with how many owned addresses use each
	schedule  map[netip.Addr]*schedule
	ownedSet  atomic.Pointer[map[netip.Addr]bool] // read by the serving goroutines
}

func newLink(l Link) *link {
	out := &link{Link: l, schedule: map[netip.Addr]*schedule{}}
	out.setOwned(map[netip.Addr]bool{})
	return out
}

func (l *link) owned() map[netip.Addr]bool { return *l.ownedSet.Load() }

func (l *link) setOwned(m map[netip.Addr]bool) { l.ownedSet.Store(&m) }

func (l *link) close() {
	l.setOwned(map[netip.Addr]bool{})
	if l.arp != nil {
		l.closeARP()
	}
	if l.ndp != nil {
		l.closeNDP()
	}
}

func (l *link) closeARP() {
	l.arpClosed.Store(true)
	l.arp.Close()
	l.arp = nil
}

func (l *link) closeNDP() {
	l.ndpClosed.Store(true)
	l.ndp.Close()
	l.ndp, l.groups = nil, nil
}
