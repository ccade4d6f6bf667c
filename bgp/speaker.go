// Package bgp announces service addresses to upstream routers over BGP with an embedded GoBGP
// server, the job of MetalLB's speaker in BGP mode.
//
// The Speaker is told the whole desired state at once — every peer (SetPeers) and every
// advertisement (SetAdvertisements) — and diffs internally, so callers never add or remove single
// routes. It only announces: routes learned from peers are rejected on import and never installed,
// and it does not listen on a TCP port unless Config.ListenPort asks for it. Each route's next hop
// is this node's address, so a router that hears the same prefix from several nodes spreads
// traffic over them (ECMP).
package bgp

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// ErrStopped is returned by a Speaker's setters after Stop.
var ErrStopped = errors.New("bgp speaker stopped")

// Config is the node-wide part of a Speaker's configuration.
type Config struct {
	// Logger receives the speaker's and GoBGP's logs; nil means slog.Default().
	Logger *slog.Logger
	// NodeAddresses are this node's addresses, at most one per family: the next hop of every
	// route of that family. A family without an address is announced with the session's local
	// address as next hop, and only over sessions of the same family.
	NodeAddresses []netip.Addr
	// RouterID is the default BGP identifier; zero means the node's IPv4 address.
	RouterID netip.Addr
	// ListenPort, when positive, lets peers with a SourceAddress also accept connections on
	// SourceAddress:ListenPort. Zero (the default) never listens: sessions are only dialled.
	ListenPort int
	// SessionWarnAfter is how long a new session may stay down before a warning names it; zero
	// means 30 s, negative disables the warning.
	SessionWarnAfter time.Duration
}

// Speaker is this node's BGP speaker: one session per configured peer, each announcing the
// advertisements that apply to it. Its methods are safe for concurrent use.
type Speaker struct {
	log      *slog.Logger
	nextHop4 netip.Addr
	nextHop6 netip.Addr
	routerID netip.Addr
	listen   int
	warn     time.Duration

	mu        sync.Mutex
	sessions  map[string]*session
	advs      []Advertisement
	syncFails uint64
	stopped   bool
}

// New returns a Speaker with no peers. It starts nothing until SetPeers.
func New(cfg Config) (*Speaker, error) {
	s := &Speaker{
		log:      cfg.Logger,
		routerID: cfg.RouterID,
		listen:   cfg.ListenPort,
		warn:     cfg.SessionWarnAfter,
		sessions: make(map[string]*session),
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.log = s.log.With("component", "bgp")
	if s.warn == 0 {
		s.warn = 30 * time.Second
	}
	for _, a := range cfg.NodeAddresses {
		a = a.Unmap()
		switch {
		case !a.IsValid():
			return nil, errors.New("invalid node address")
		case a.Is4() && s.nextHop4.IsValid(), a.Is6() && s.nextHop6.IsValid():
			return nil, fmt.Errorf("more than one node address of the family of %s", a)
		case a.Is4():
			s.nextHop4 = a
		default:
			s.nextHop6 = a
		}
	}
	if !s.routerID.IsValid() {
		s.routerID = s.nextHop4
	}
	if s.routerID.IsValid() && !s.routerID.Is4() {
		return nil, fmt.Errorf("router ID %s is not an IPv4 address", s.routerID)
	}
	if cfg.ListenPort < 0 || cfg.ListenPort > 65535 {
		return nil, fmt.Errorf("listen port %d out of range", cfg.ListenPort)
	}
	return s, nil
}

// SetPeers makes the set of sessions match peers. New peers are dialled, removed ones closed (their
// routes withdrawn), and a peer whose configuration changed gets a fresh session. An invalid peer
// is reported in the returned error and logged, and does not keep the other peers from being
// applied; when it names a running session, that session keeps its previous configuration.
func (s *Speaker) SetPeers(peers []Peer) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return ErrStopped
	}
	var errs []error
	want := make(map[string]Peer, len(peers))
	for _, p := range peers {
		p.Address = p.Address.Unmap()
		p.SourceAddress = p.SourceAddress.Unmap()
		k := p.key()
		if _, dup := want[k]; dup {
			errs = append(errs, fmt.Errorf("peer %s: configured twice", k))
			continue
		}
		if err := p.validate(s.routerID); err != nil {
			err = fmt.Errorf("peer %s: %w", k, err)
			errs = append(errs, err)
			if sess, ok := s.sessions[k]; ok {
				// A mistake in an edit must not tear down a working session and withdraw its
				// routes: the session keeps its last valid configuration.
				s.log.Error("bgp peer configuration invalid; the session keeps its previous one", "peer", k, "err", err)
				want[k] = sess.peer
				continue
			}
			s.log.Error("bgp peer ignored: invalid configuration", "peer", k, "err", err)
			want[k] = Peer{}
			continue
		}
		want[k] = p
	}
	flaps, updates := make(map[string]uint64), make(map[string]uint64)
	for k, sess := range s.sessions {
		if p, ok := want[k]; ok && p == sess.peer {
			continue
		}
		s.log.Info("bgp session closing", "peer", k)
		st := sess.status()
		flaps[k], updates[k] = st.Flaps, st.UpdatesSent
		sess.close()
		delete(s.sessions, k)
	}
	keys := make([]string, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		p := want[k]
		if _, ok := s.sessions[k]; ok || !p.Address.IsValid() {
			continue
		}
		sess, err := newSession(p, sessionOptions{
			log:        s.log,
			routerID:   s.routerID,
			nextHop4:   s.nextHop4,
			nextHop6:   s.nextHop6,
			listenPort: s.listen,
			warnAfter:  s.warn,
			flaps:      flaps[k],
			updates:    updates[k],
		})
		if err != nil {
			s.log.Error("bgp session not started", "peer", k, "err", err)
			errs = append(errs, err)
			continue
		}
		s.log.Info("bgp session configured", "peer", k, "address", p.Address, "port", portString(p.Port), "myASN", p.MyASN, "peerASN", p.ASN)
		s.sessions[k] = sess
		if err := sess.sync(routesFor(p, s.advs)); err != nil {
			s.syncFails++
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// SetAdvertisements replaces everything the speaker announces. Each session gets the
// advertisements addressed to it (all, or those naming it in Peers), aggregated and merged per
// prefix; only the difference to what it announces now goes on the wire. Invalid advertisements
// are reported and skipped.
func (s *Speaker) SetAdvertisements(advs []Advertisement) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return ErrStopped
	}
	var errs []error
	valid := make([]Advertisement, 0, len(advs))
	for _, a := range advs {
		if err := a.validate(); err != nil {
			errs = append(errs, fmt.Errorf("advertisement %s: %w", a.Prefix, err))
			continue
		}
		a.Prefix = netip.PrefixFrom(a.Prefix.Addr().Unmap(), a.Prefix.Bits())
		valid = append(valid, a)
	}
	s.advs = valid
	for _, sess := range s.sessions {
		if err := sess.sync(routesFor(sess.peer, valid)); err != nil {
			s.syncFails++
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Stop withdraws every route, closes every session (each peer gets a CEASE notification and drops
// this node's routes at once) and makes the speaker unusable. A new Speaker re-establishes the
// sessions and announces again.
func (s *Speaker) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return
	}
	s.stopped = true
	var wg sync.WaitGroup
	for _, sess := range s.sessions {
		wg.Go(sess.close)
	}
	wg.Wait()
	clear(s.sessions)
	s.log.Info("bgp speaker stopped")
}

// SessionStatus describes one session for `nodeagent bgp status` and metrics.
type SessionStatus struct {
	// Name is the peer's name (or address when it has none).
	Name string
	// Address is the peer's address.
	Address netip.Addr
	// MyASN and PeerASN are the session's local and remote AS numbers.
	MyASN, PeerASN uint32
	// State is the BGP FSM state: idle, connect, active, opensent, openconfirm or established.
	State string
	// Established reports whether routes are being exchanged (a gauge: 1 or 0).
	Established bool
	// Since is when State last changed.
	Since time.Time
	// Flaps counts established sessions that went down (a counter).
	Flaps uint64
	// UpdatesSent counts BGP UPDATE messages sent to the peer (a counter).
	UpdatesSent uint64
	// Port is the peer's TCP port (179 when the peer sets none).
	Port uint16
	// LastError is the last reason the session failed, empty once it is established.
	LastError string
	// Advertised lists the prefixes the session announces while established (its length is a gauge).
	Advertised []netip.Prefix
}

// Status is a snapshot of the speaker.
type Status struct {
	// Sessions are sorted by name.
	Sessions []SessionStatus
	// SyncFailures counts SetPeers/SetAdvertisements calls that could not program a session (a counter).
	SyncFailures uint64
}

// Status returns the current sessions and what each announces.
func (s *Speaker) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Status{SyncFailures: s.syncFails}
	for _, sess := range s.sessions {
		st.Sessions = append(st.Sessions, sess.status())
	}
	slices.SortFunc(st.Sessions, func(a, b SessionStatus) int { return strings.Compare(a.Name, b.Name) })
	return st
}

// Established counts the sessions that are up (a gauge).
func (st Status) Established() int {
	n := 0
	for _, s := range st.Sessions {
		if s.Established {
			n++
		}
	}
	return n
}

// Advertised returns every prefix announced to at least one established session, sorted.
func (st Status) Advertised() []netip.Prefix {
	var out []netip.Prefix
	for _, s := range st.Sessions {
		if s.Established {
			out = append(out, s.Advertised...)
		}
	}
	slices.SortFunc(out, comparePrefix)
	return slices.Compact(out)
}

// Flaps sums the sessions' flap counters.
func (st Status) Flaps() uint64 {
	var n uint64
	for _, s := range st.Sessions {
		n += s.Flaps
	}
	return n
}

// String renders the status as a table, one session per line, as `nodeagent bgp status` prints it.
func (st Status) String() string {
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "PEER\tADDRESS\tMY ASN\tPEER ASN\tSTATE\tSINCE\tFLAPS\tADVERTISED\tLAST ERROR")
	for _, s := range st.Sessions {
		pfx := make([]string, len(s.Advertised))
		for i, p := range s.Advertised {
			pfx[i] = p.String()
		}
		adv := strings.Join(pfx, ",")
		if adv == "" {
			adv = "-"
		}
		since := "-"
		if !s.Since.IsZero() {
			since = s.Since.UTC().Format(time.RFC3339)
		}
		lastErr := s.LastError
		if lastErr == "" {
			lastErr = "-"
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%s\t%s\t%d\t%s\t%s\n", s.Name, s.Address, s.MyASN, s.PeerASN, s.State, since, s.Flaps, adv, lastErr)
	}
	w.Flush()
	return b.String()
}
