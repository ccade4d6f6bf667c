package bgp

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	gobgp "github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"
)

// idleHoldAfterReset is how long GoBGP waits before redialling after the peer reset the session.
// GoBGP's default is 30 s; a router restart should not cost half a minute of missing routes.
const idleHoldAfterReset = 5

// session is one BGP session backed by its own embedded GoBGP server. One server per peer (as
// MetalLB's native speaker keeps one session per peer) gives each peer its own router ID, local AS
// and exact set of routes with no shared RIB or export policies to keep consistent, and a broken
// peer cannot disturb another one's server.
type session struct {
	peer     Peer
	log      *slog.Logger
	srv      *server.BgpServer
	cancel   context.CancelFunc // ends the peer-state watch
	warn     *time.Timer        // warns once if the session never comes up
	nextHop4 netip.Addr
	nextHop6 netip.Addr

	// routes is what is in the server's RIB now (and therefore announced while established).
	// Guarded by the Speaker's mutex, like every call that changes the server.
	routes  map[netip.Prefix]route
	skipped map[netip.Prefix]bool // prefixes without a usable next hop, logged once each

	mu         sync.Mutex // guards the fields below, written from GoBGP's event goroutine
	state      string
	up         bool
	since      time.Time
	upSince    time.Time
	flaps      uint64
	lastError  string
	repeated   int        // consecutive failures with the same lastError, logged at debug after the first
	closing    bool       // our own teardown: the session going down is neither a flap nor a warning
	learnedASN uint32     // the peer's AS from its OPEN, for dynamicASN
	refused    bool       // we disabled the peer (dynamicASN mismatch); lastError says why
	opMu       sync.Mutex // orders renewBFD's server calls before close's Stop
	// updBase and updLast keep UpdatesSent counting up across GoBGP restarting its own count
	// (and across the session this one replaced).
	updBase, updLast uint64
}

// sessionOptions carries the speaker-wide settings a session needs.
type sessionOptions struct {
	log        *slog.Logger
	routerID   netip.Addr
	nextHop4   netip.Addr
	nextHop6   netip.Addr
	listenPort int
	warnAfter  time.Duration
	flaps      uint64 // carried over from the session this one replaces
	updates    uint64 // likewise: UPDATE messages sent
}

// newSession starts a GoBGP server for one peer and dials it. The server never accepts routes
// (import default reject) and listens only when opts.listenPort > 0 and the peer has a source
// address to listen on.
func newSession(p Peer, opts sessionOptions) (*session, error) {
	s, err := openSession(p, opts)
	if err != nil {
		return nil, err
	}
	if err := s.addPeer(context.Background()); err != nil {
		s.close()
		return nil, err
	}
	if opts.warnAfter > 0 {
		s.warn = time.AfterFunc(opts.warnAfter, s.warnIfDown)
	}
	return s, nil
}

// openSession starts the session's server without configuring the peer, so nothing is dialled yet.
func openSession(p Peer, opts sessionOptions) (*session, error) {
	log := opts.log.With("peer", p.key(), "address", p.Address)
	s := &session{
		peer:     p,
		log:      log,
		nextHop4: opts.nextHop4,
		nextHop6: opts.nextHop6,
		routes:   make(map[netip.Prefix]route),
		skipped:  make(map[netip.Prefix]bool),
		state:    "idle",
		since:    time.Now(),
		flaps:    opts.flaps,
		updBase:  opts.updates,
	}
	routerID := p.RouterID
	if !routerID.IsValid() {
		routerID = opts.routerID
	}
	gobgpLog := slog.New(notificationTap{next: log.Handler(), notify: s.onNotification}).With("component", "gobgp")
	s.srv = server.NewBgpServer(server.LoggerOption(gobgpLog, &slog.LevelVar{}))
	go s.srv.Serve()

	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	if err := s.startServer(ctx, routerID, opts.listenPort); err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

// startServer starts the session's GoBGP server with its advertise-only import policy and the
// peer-state watch, but no peer yet.
func (s *session) startServer(ctx context.Context, routerID netip.Addr, listenPort int) error {
	p := s.peer
	global := &api.Global{Asn: p.MyASN, RouterId: routerID.String(), ListenPort: -1}
	if listenPort > 0 && p.SourceAddress.IsValid() {
		global.ListenPort = int32(listenPort)
		global.ListenAddresses = []string{p.SourceAddress.String()}
	}
	if err := s.srv.StartBgp(ctx, &api.StartBgpRequest{Global: global}); err != nil {
		return fmt.Errorf("start bgp server for peer %s: %w", p.key(), err)
	}
	// Advertise-only: whatever the peer sends is dropped before it reaches the RIB, so nothing
	// learned from a router is ever re-announced or kept in memory. GoBGP runs the global import
	// policy on locally originated paths too, so those are let through by route type; a bare
	// reject-all default would drop our own announcements.
	local := &api.Policy{Name: "advertise-only", Statements: []*api.Statement{{
		Name:       "accept-local",
		Conditions: &api.Conditions{RouteType: api.Conditions_ROUTE_TYPE_LOCAL},
		Actions:    &api.Actions{RouteAction: api.RouteAction_ROUTE_ACTION_ACCEPT},
	}}}
	if err := s.srv.AddPolicy(ctx, &api.AddPolicyRequest{Policy: local}); err != nil {
		return fmt.Errorf("add import policy for peer %s: %w", p.key(), err)
	}
	if err := s.srv.SetPolicyAssignment(ctx, &api.SetPolicyAssignmentRequest{Assignment: &api.PolicyAssignment{
		Direction:     api.PolicyDirection_POLICY_DIRECTION_IMPORT,
		Policies:      []*api.Policy{{Name: local.Name}},
		DefaultAction: api.RouteAction_ROUTE_ACTION_REJECT,
	}}); err != nil {
		return fmt.Errorf("set import policy for peer %s: %w", p.key(), err)
	}
	if err := s.srv.WatchEvent(ctx, server.WatchEventMessageCallbacks{OnPeerUpdate: s.onPeerUpdate}, server.WatchPeer()); err != nil {
		return fmt.Errorf("watch peer %s: %w", p.key(), err)
	}
	return nil
}

// addPeer configures the peer, which makes GoBGP start dialling it.
func (s *session) addPeer(ctx context.Context) error {
	if err := s.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: s.peerConf()}); err != nil {
		return fmt.Errorf("add peer %s: %w", s.peer.key(), err)
	}
	return nil
}

// peerConf is the peer's GoBGP configuration.
func (s *session) peerConf() *api.Peer {
	p := s.peer
	hold := seconds(p.holdTime())
	keepalive := seconds(p.KeepaliveTime)
	if keepalive == 0 {
		keepalive = max(hold/3, 1)
	}
	conf := &api.Peer{
		Conf: &api.PeerConf{
			NeighborAddress: p.Address.String(),
			PeerAsn:         p.peerASN(),
			LocalAsn:        p.MyASN,
			AuthPassword:    p.Password,
			Description:     p.key(),
		},
		Timers: &api.Timers{Config: &api.TimersConfig{
			HoldTime:               hold,
			KeepaliveInterval:      keepalive,
			ConnectRetry:           seconds(p.connectTime()),
			IdleHoldTimeAfterReset: idleHoldAfterReset,
		}},
		Transport: &api.Transport{RemotePort: uint32(p.Port)},
		AfiSafis: []*api.AfiSafi{
			{Config: &api.AfiSafiConfig{Family: &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}, Enabled: true}},
			{Config: &api.AfiSafiConfig{Family: &api.Family{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST}, Enabled: true}},
		},
	}
	if p.SourceAddress.IsValid() {
		conf.Transport.LocalAddress = p.SourceAddress.String()
	}
	if p.BFD.Enabled {
		// GoBGP's intervals are microseconds; it resets the BGP session when BFD goes down.
		conf.Bfd = &api.BfdPeerConfig{Enabled: true,
			DesiredMinimumTxInterval: uint32(p.BFD.transmit() / time.Microsecond),
			RequiredMinimumReceive:   uint32(p.BFD.receive() / time.Microsecond),
			DetectionMultiplier:      p.BFD.multiplier()}
	}
	if p.EBGPMultiHop && !p.internal() {
		conf.EbgpMultihop = &api.EbgpMultihop{Enabled: true, MultihopTtl: 255}
	}
	return conf
}

// renewBFD replaces GoBGP's BFD session with a fresh one. After a BFD failure GoBGP's session can
// stay bound to the router's previous BFD discriminator (it drops the router's new session's
// packets, and the router drops its own), expire again and reset every new BGP session: seen in
// the lab against BIRD 2 in about one link cut out of eight. A fresh BFD session learns the new
// discriminator.
func (s *session) renewBFD() {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	s.mu.Lock()
	closing := s.closing
	s.mu.Unlock()
	if closing {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	off := s.peerConf()
	off.Bfd.Enabled = false
	for _, conf := range []*api.Peer{off, s.peerConf()} {
		if _, err := s.srv.UpdatePeer(ctx, &api.UpdatePeerRequest{Peer: conf}); err != nil {
			s.log.Warn("bgp renew BFD session", "err", err)
			return
		}
	}
}

// onPeerUpdate records state changes reported by GoBGP and logs failures: the first occurrence of
// a reason at warning level, repeats of the same reason (a peer that keeps refusing us) at debug.
func (s *session) onPeerUpdate(ev *apiutil.WatchEventMessage_PeerEvent, at time.Time) {
	if ev.Type != apiutil.PEER_EVENT_STATE {
		return
	}
	st := ev.Peer.State
	name := stateName(st.SessionState)
	s.mu.Lock()
	defer s.mu.Unlock()
	wasUp := s.up
	s.state = name
	s.since = at
	s.up = st.SessionState == gobgp.BGP_FSM_ESTABLISHED
	switch {
	case s.up && !wasUp && s.peer.DynamicASN == DynamicExternal && st.PeerASN == s.peer.MyASN:
		// GoBGP accepts any AS when none is configured; FRR's "remote-as external" refuses our
		// own, and so do we (GoBGP may already have sent the routes; the session goes at once).
		s.up = false
		s.failed(fmt.Sprintf("dynamicASN external, but the peer's OPEN carries our own AS %d; session disabled", st.PeerASN))
		s.refused = true
		go s.disable()
		return
	case s.up && !wasUp:
		s.learnedASN = st.PeerASN
		s.upSince = at
		s.lastError = ""
		s.repeated = 0
		s.log.Info("bgp session established")
	case !s.up && wasUp && s.closing:
		s.log.Info("bgp session closed")
	case !s.up && wasUp:
		s.flaps++
		s.log.Warn("bgp session down", "reason", st.DisconnectMessage, "flaps", s.flaps)
		if s.peer.BFD.Enabled {
			go s.renewBFD()
		}
	}
	if s.up || s.closing || st.SessionState != gobgp.BGP_FSM_IDLE || !failure(st.DisconnectReason) {
		return
	}
	s.failed(explain(st.DisconnectReason, st.DisconnectMessage, s.peer))
}

// disable stops dialling a peer that must not be peered with; a changed configuration replaces
// the session.
func (s *session) disable() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.srv.DisablePeer(ctx, &api.DisablePeerRequest{Address: s.peer.Address.String(),
		Communication: "dynamicASN external: same AS"}); err != nil {
		s.log.Warn("bgp disable peer", "err", err)
	}
}

// onNotification hears about NOTIFICATIONs GoBGP sends (see notificationTap). While the session
// is not up, they are why it failed to open.
func (s *session) onNotification(code, subcode uint8) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.up || s.closing {
		return
	}
	s.failed(explainNotification(code, subcode, s.peer))
}

// failed records and logs why the session could not be established. Callers hold s.mu.
func (s *session) failed(msg string) {
	if s.refused {
		return // our own refusal is the reason, not the notification it sent
	}
	if msg == s.lastError {
		s.repeated++
		s.log.Debug("bgp session failed again", "reason", msg, "times", s.repeated+1)
		return
	}
	s.lastError = msg
	s.repeated = 0
	s.log.Warn("bgp session failed", "reason", msg)
}

// explainNotification describes a NOTIFICATION we sent while opening the session.
func explainNotification(code, subcode uint8, p Peer) string {
	what := "notification-sent " + gobgp.NewNotificationErrorCode(code, subcode).String()
	switch {
	case code == gobgp.BGP_ERROR_OPEN_MESSAGE_ERROR && subcode == gobgp.BGP_ERROR_SUB_BAD_PEER_AS:
		return fmt.Sprintf("%s: the peer's OPEN carries an AS number other than the configured peerASN %d", what, p.ASN)
	case code == gobgp.BGP_ERROR_FSM_ERROR:
		return fmt.Sprintf("%s: the peer refused our OPEN; check that it expects AS %d from this node's address", what, p.MyASN)
	}
	return what
}

// failure reports whether a disconnect reason is an error worth telling the operator about, as
// opposed to our own teardown.
func failure(r api.PeerState_DisconnectReason) bool {
	switch r {
	case api.PeerState_DISCONNECT_REASON_UNSPECIFIED, api.PeerState_DISCONNECT_REASON_ADMIN_DOWN,
		api.PeerState_DISCONNECT_REASON_DECONFIGURED:
		return false
	}
	return true
}

// explain turns GoBGP's terse reason into a line an operator can act on.
func explain(r api.PeerState_DisconnectReason, msg string, p Peer) string {
	switch {
	case r == api.PeerState_DISCONNECT_REASON_BAD_PEER_AS:
		return fmt.Sprintf("%s: the peer's OPEN carries an AS number other than the configured peerASN %d", msg, p.ASN)
	case strings.Contains(strings.ToLower(msg), "bad peer as"):
		return fmt.Sprintf("%s: the peer does not expect our myASN %d", msg, p.MyASN)
	}
	return msg
}

// warnIfDown logs once when a session has not come up within the warning delay, the only sign an
// unreachable peer or a TCP-MD5 mismatch gives: the connection attempts fail silently.
func (s *session) warnIfDown() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.upSince.IsZero() {
		s.log.Warn("bgp session not established; check that the peer is reachable and configured for this node (address, ASN, password)",
			"state", s.state, "lastError", s.lastError)
	}
}

func stateName(st gobgp.FSMState) string {
	return strings.ToLower(strings.TrimPrefix(st.String(), "BGP_FSM_"))
}

// nextHop picks the address a prefix is announced with: the node's address of the prefix's family,
// or, when the node has none configured and the session runs over that family, the unspecified
// address that GoBGP replaces with the session's own local address.
func (s *session) nextHop(p netip.Prefix) (netip.Addr, bool) {
	if p.Addr().Is4() {
		if s.nextHop4.IsValid() {
			return s.nextHop4, true
		}
		return netip.IPv4Unspecified(), s.peer.Address.Is4()
	}
	if s.nextHop6.IsValid() {
		return s.nextHop6, true
	}
	return netip.IPv6Unspecified(), s.peer.Address.Is6()
}

// sync makes the server's RIB hold exactly want, with one AddPath call for everything new or
// changed and one DeletePath per withdrawn prefix. s.routes only records what succeeded, so a
// failed sync is completed by the next one.
func (s *session) sync(want map[netip.Prefix]route) error {
	var add []*apiutil.Path
	var added []route
	for p, r := range want {
		if cur, ok := s.routes[p]; ok && cur.equal(r) {
			continue
		}
		nh, ok := s.nextHop(p)
		if !ok {
			if !s.skipped[p] {
				s.skipped[p] = true
				s.log.Warn("bgp prefix not announced: no node address of its family for the next hop", "prefix", p)
			}
			continue
		}
		path, err := buildPath(r, nh)
		if err != nil {
			return fmt.Errorf("build path %s for peer %s: %w", p, s.peer.key(), err)
		}
		add = append(add, path)
		added = append(added, r)
	}
	var errs []error
	if len(add) > 0 {
		if _, err := s.srv.AddPath(apiutil.AddPathRequest{Paths: add}); err != nil {
			errs = append(errs, fmt.Errorf("announce %d prefixes to peer %s: %w", len(add), s.peer.key(), err))
		} else {
			for _, r := range added {
				s.routes[r.prefix] = r
			}
		}
	}
	for p, cur := range s.routes {
		if _, ok := want[p]; ok {
			continue
		}
		nh, _ := s.nextHop(p)
		path, err := buildPath(cur, nh)
		if err == nil {
			path.Withdrawal = true
			err = s.srv.DeletePath(apiutil.DeletePathRequest{Paths: []*apiutil.Path{path}})
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("withdraw %s from peer %s: %w", p, s.peer.key(), err))
			continue
		}
		delete(s.routes, p)
	}
	for p := range s.skipped {
		if _, ok := want[p]; !ok {
			delete(s.skipped, p)
		}
	}
	return errors.Join(errs...)
}

// buildPath renders a route as a locally originated GoBGP path (origin IGP, no AS path: GoBGP
// prepends our AS towards eBGP peers and sends an empty one to iBGP peers).
func buildPath(r route, nextHop netip.Addr) (*apiutil.Path, error) {
	nlri, err := gobgp.NewIPAddrPrefix(r.prefix)
	if err != nil {
		return nil, err
	}
	attrs := []gobgp.PathAttributeInterface{gobgp.NewPathAttributeOrigin(gobgp.BGP_ORIGIN_ATTR_TYPE_IGP)}
	family := gobgp.RF_IPv4_UC
	if r.prefix.Addr().Is4() {
		nh, err := gobgp.NewPathAttributeNextHop(nextHop)
		if err != nil {
			return nil, fmt.Errorf("next hop %s: %w", nextHop, err)
		}
		attrs = append(attrs, nh)
	} else {
		family = gobgp.RF_IPv6_UC
		mp, err := gobgp.NewPathAttributeMpReachNLRI(family, []gobgp.PathNLRI{{NLRI: nlri}}, nextHop)
		if err != nil {
			return nil, fmt.Errorf("next hop %s: %w", nextHop, err)
		}
		attrs = append(attrs, mp)
	}
	if r.localPref != 0 {
		attrs = append(attrs, gobgp.NewPathAttributeLocalPref(r.localPref))
	}
	if len(r.comms) > 0 {
		c := make([]uint32, len(r.comms))
		for i, v := range r.comms {
			c[i] = uint32(v)
		}
		attrs = append(attrs, gobgp.NewPathAttributeCommunities(c))
	}
	if len(r.large) > 0 {
		l := make([]*gobgp.LargeCommunity, len(r.large))
		for i, v := range r.large {
			l[i] = gobgp.NewLargeCommunity(v.GlobalAdmin, v.Local1, v.Local2)
		}
		attrs = append(attrs, gobgp.NewPathAttributeLargeCommunities(l))
	}
	return &apiutil.Path{Family: family, Nlri: nlri, Attrs: attrs}, nil
}

// close withdraws every route and shuts the server down. GoBGP sends the peer a CEASE
// notification, so the router drops this node's routes at once instead of after the hold time.
func (s *session) close() {
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
	if s.warn != nil {
		s.warn.Stop()
	}
	if len(s.routes) > 0 {
		if err := s.srv.DeletePath(apiutil.DeletePathRequest{DeleteAll: true}); err != nil {
			s.log.Warn("bgp withdraw on close failed; the peer drops the routes with the session", "err", err)
		}
		clear(s.routes)
	}
	s.opMu.Lock()
	s.srv.Stop()
	s.opMu.Unlock()
	s.cancel()
}

// status snapshots the session for Speaker.Status.
func (s *session) status() SessionStatus {
	updates := s.updatesSent()
	s.mu.Lock()
	st := SessionStatus{
		Name:        s.peer.key(),
		Address:     s.peer.Address,
		MyASN:       s.peer.MyASN,
		PeerASN:     cmp.Or(s.peer.ASN, s.learnedASN),
		State:       s.state,
		Established: s.up,
		Since:       s.since,
		Flaps:       s.flaps,
		LastError:   s.lastError,
		UpdatesSent: updates,
		Port:        s.peer.Port,
	}
	if st.Port == 0 {
		st.Port = DefaultPort
	}
	s.mu.Unlock()
	for p := range s.routes {
		st.Advertised = append(st.Advertised, p)
	}
	slices.SortFunc(st.Advertised, comparePrefix)
	return st
}

// updatesSent returns how many BGP UPDATE messages went to the peer, as a counter that never goes
// down (MetalLB's metallb_bgp_updates_total).
func (s *session) updatesSent() uint64 {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	n, ok := uint64(0), false
	if s.srv != nil {
		_ = s.srv.ListPeer(ctx, &api.ListPeerRequest{Address: s.peer.Address.String()}, func(p *api.Peer) {
			n, ok = p.GetState().GetMessages().GetSent().GetUpdate(), true
		})
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !ok {
		return s.updBase + s.updLast
	}
	if n < s.updLast {
		s.updBase += s.updLast
	}
	s.updLast = n
	return s.updBase + n
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// portString renders a peer port for display, 179 when unset.
func portString(p uint16) string {
	if p == 0 {
		return strconv.Itoa(DefaultPort)
	}
	return strconv.Itoa(int(p))
}
