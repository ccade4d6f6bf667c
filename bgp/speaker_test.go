package bgp

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	gobgp "github.com/osrg/gobgp/v4/pkg/packet/bgp"
)

func TestParseCommunities(t *testing.T) {
	std, large, err := ParseCommunities([]string{"65535:65282", "64512:100", "large:64512:1:2"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []Community{0xffffff02, 64512<<16 | 100}; !slices.Equal(std, want) {
		t.Errorf("standard: got %v, want %v", std, want)
	}
	if want := []LargeCommunity{{64512, 1, 2}}; !slices.Equal(large, want) {
		t.Errorf("large: got %v, want %v", large, want)
	}
	if std[0].String() != "65535:65282" || large[0].String() != "large:64512:1:2" {
		t.Errorf("String: %s %s", std[0], large[0])
	}
	for _, bad := range []string{"65536:1", "1:65536", "no-export", "1", "large:1:2", "large:1:2:x", "large:4294967296:1:1"} {
		if _, _, err := ParseCommunities([]string{bad}); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestAnnouncedAggregation(t *testing.T) {
	for _, c := range []struct {
		prefix string
		length int
		want   string
	}{
		{"10.0.0.60/32", 0, "10.0.0.60/32"},
		{"10.0.0.60/32", 32, "10.0.0.60/32"},
		{"10.0.0.60/32", 28, "10.0.0.48/28"},
		{"10.0.0.60/32", 24, "10.0.0.0/24"},
		{"fd00:10::51/128", 64, "fd00:10::/64"},
		{"fd00:10::51/128", 120, "fd00:10::/120"},
	} {
		a := Advertisement{Prefix: netip.MustParsePrefix(c.prefix), AggregationLength: c.length}
		if got := a.announced().String(); got != c.want {
			t.Errorf("%s aggregated to %d: got %s, want %s", c.prefix, c.length, got, c.want)
		}
	}
	if err := (Advertisement{Prefix: netip.MustParsePrefix("10.0.0.1/32"), AggregationLength: 33}).validate(); err == nil {
		t.Error("aggregation length 33 for IPv4 accepted")
	}
	if err := (Advertisement{}).validate(); err == nil {
		t.Error("zero prefix accepted")
	}
}

func TestRoutesFor(t *testing.T) {
	ebgp := Peer{Name: "upstream", MyASN: 64513, ASN: 64512}
	ibgp := Peer{Name: "core", MyASN: 64512, ASN: 64512}
	advs := []Advertisement{
		{Prefix: netip.MustParsePrefix("10.0.0.51/32"), LocalPref: 100, Communities: []Community{2, 1}},
		{Prefix: netip.MustParsePrefix("10.0.0.51/32"), LocalPref: 300, Communities: []Community{1, 3}, LargeCommunities: []LargeCommunity{{1, 2, 3}}},
		{Prefix: netip.MustParsePrefix("10.0.0.60/32"), AggregationLength: 28},
		{Prefix: netip.MustParsePrefix("10.0.0.61/32"), AggregationLength: 28, Communities: []Community{9}},
		{Prefix: netip.MustParsePrefix("10.0.0.70/32"), Peers: []string{"core"}},
	}
	got := routesFor(ebgp, advs)
	if len(got) != 2 {
		t.Fatalf("eBGP peer: got %d routes, want 2 (10.0.0.70 is for core only): %v", len(got), got)
	}
	r := got[netip.MustParsePrefix("10.0.0.51/32")]
	if r.localPref != 0 {
		t.Errorf("eBGP route carries LOCAL_PREF %d", r.localPref)
	}
	if !slices.Equal(r.comms, []Community{1, 2, 3}) || len(r.large) != 1 {
		t.Errorf("merged communities: got %v %v", r.comms, r.large)
	}
	if agg := got[netip.MustParsePrefix("10.0.0.48/28")]; !slices.Equal(agg.comms, []Community{9}) {
		t.Errorf("aggregate: got %+v", agg)
	}
	got = routesFor(ibgp, advs)
	if len(got) != 3 {
		t.Fatalf("iBGP peer: got %d routes, want 3", len(got))
	}
	if lp := got[netip.MustParsePrefix("10.0.0.51/32")].localPref; lp != 300 {
		t.Errorf("iBGP local pref: got %d, want the highest, 300", lp)
	}
	// Order of advertisements does not matter.
	rev := slices.Clone(advs)
	slices.Reverse(rev)
	a, b := routesFor(ibgp, advs), routesFor(ibgp, rev)
	for p, r := range a {
		if !r.equal(b[p]) {
			t.Errorf("%s depends on order: %+v vs %+v", p, r, b[p])
		}
	}
}

func TestPeerValidate(t *testing.T) {
	rid := netip.MustParseAddr("10.0.0.151")
	good := Peer{MyASN: 64513, ASN: 64512, Address: netip.MustParseAddr("10.0.0.254")}
	if err := good.validate(rid); err != nil {
		t.Fatalf("good peer: %v", err)
	}
	for name, c := range map[string]struct {
		mod  func(*Peer)
		rid  netip.Addr
		want string
	}{
		"zero myASN":       {func(p *Peer) { p.MyASN = 0 }, rid, "invalid myASN 0"},
		"AS_TRANS peer":    {func(p *Peer) { p.ASN = 23456 }, rid, "invalid peerASN 23456"},
		"reserved ASN":     {func(p *Peer) { p.ASN = 4294967295 }, rid, "invalid peerASN"},
		"no address":       {func(p *Peer) { p.Address = netip.Addr{} }, rid, "missing peer address"},
		"short hold":       {func(p *Peer) { p.HoldTime = time.Second }, rid, "below 3s"},
		"long keepalive":   {func(p *Peer) { p.HoldTime = 9 * time.Second; p.KeepaliveTime = 9 * time.Second }, rid, "keepaliveTime"},
		"no router ID":     {func(p *Peer) {}, netip.Addr{}, "no IPv4 router ID"},
		"v6 router ID":     {func(p *Peer) { p.RouterID = netip.MustParseAddr("fd00::1") }, netip.Addr{}, "no IPv4 router ID"},
		"source v6 for v4": {func(p *Peer) { p.SourceAddress = netip.MustParseAddr("fd00:10::151") }, rid, "differ in family"},
		"dynamic and ASN":  {func(p *Peer) { p.DynamicASN = DynamicExternal }, rid, "exclude each other"},
		"dynamic unknown":  {func(p *Peer) { p.ASN, p.DynamicASN = 0, "sideways" }, rid, "neither internal nor external"},
		"bfd fast":         {func(p *Peer) { p.BFD = BFD{Enabled: true, ReceiveInterval: time.Millisecond} }, rid, "receiveInterval 1ms"},
		"bfd slow":         {func(p *Peer) { p.BFD = BFD{Enabled: true, TransmitInterval: time.Minute + 1} }, rid, "transmitInterval"},
		"bfd multiplier":   {func(p *Peer) { p.BFD = BFD{Enabled: true, DetectMultiplier: 1} }, rid, "detectMultiplier 1"},
	} {
		p := good
		c.mod(&p)
		err := p.validate(c.rid)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error containing %q", name, err, c.want)
		}
	}
	for _, mod := range []func(*Peer){
		func(p *Peer) { p.ASN, p.DynamicASN = 0, DynamicExternal },
		func(p *Peer) { p.ASN, p.DynamicASN = 0, DynamicInternal },
		func(p *Peer) { p.BFD = BFD{Enabled: true} },
		func(p *Peer) { p.BFD = BFD{DetectMultiplier: 1} }, // off: not checked
	} {
		p := good
		mod(&p)
		if err := p.validate(rid); err != nil {
			t.Errorf("%+v: %v", p, err)
		}
	}
	withID := good
	withID.RouterID = netip.MustParseAddr("192.0.2.1")
	if err := withID.validate(netip.Addr{}); err != nil {
		t.Errorf("peer with its own router ID and no node IPv4: %v", err)
	}
}

func TestNewConfig(t *testing.T) {
	if _, err := New(Config{NodeAddresses: []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")}}); err == nil {
		t.Error("two IPv4 node addresses accepted")
	}
	if _, err := New(Config{RouterID: netip.MustParseAddr("fd00::1")}); err == nil {
		t.Error("IPv6 router ID accepted")
	}
	s, err := New(Config{Logger: discard(), NodeAddresses: []netip.Addr{netip.MustParseAddr("fd00:10::151"), netip.MustParseAddr("::ffff:10.0.0.151")}})
	if err != nil {
		t.Fatal(err)
	}
	if s.routerID != netip.MustParseAddr("10.0.0.151") || s.nextHop6 != netip.MustParseAddr("fd00:10::151") {
		t.Errorf("router ID %s, next hops %s %s", s.routerID, s.nextHop4, s.nextHop6)
	}
	// Invalid peers are rejected without starting anything; the speaker stays usable.
	err = s.SetPeers([]Peer{{Name: "a", MyASN: 0, ASN: 1, Address: netip.MustParseAddr("10.0.0.254")}, {Name: "a"}})
	if err == nil || !strings.Contains(err.Error(), "invalid myASN") || !strings.Contains(err.Error(), "configured twice") {
		t.Errorf("SetPeers: got %v", err)
	}
	if err := s.SetAdvertisements([]Advertisement{{Prefix: netip.MustParsePrefix("10.0.0.51/32")}, {}}); err == nil {
		t.Error("invalid advertisement accepted")
	}
	if len(s.advs) != 1 {
		t.Errorf("valid advertisements kept: %d, want 1", len(s.advs))
	}
	s.Stop()
	if err := s.SetAdvertisements(nil); err != ErrStopped {
		t.Errorf("after Stop: got %v, want ErrStopped", err)
	}
}

func TestBuildPath(t *testing.T) {
	r := route{prefix: netip.MustParsePrefix("10.0.0.51/32"), localPref: 250, comms: []Community{0xffffff02}, large: []LargeCommunity{{64512, 1, 2}}}
	p, err := buildPath(r, netip.MustParseAddr("10.0.0.151"))
	if err != nil {
		t.Fatal(err)
	}
	if p.Family != gobgp.RF_IPv4_UC {
		t.Errorf("family %s", p.Family)
	}
	types := map[gobgp.BGPAttrType]gobgp.PathAttributeInterface{}
	for _, a := range p.Attrs {
		types[a.GetType()] = a
	}
	if nh, ok := types[gobgp.BGP_ATTR_TYPE_NEXT_HOP].(*gobgp.PathAttributeNextHop); !ok || nh.Value != netip.MustParseAddr("10.0.0.151") {
		t.Errorf("next hop: %v", types[gobgp.BGP_ATTR_TYPE_NEXT_HOP])
	}
	if lp, ok := types[gobgp.BGP_ATTR_TYPE_LOCAL_PREF].(*gobgp.PathAttributeLocalPref); !ok || lp.Value != 250 {
		t.Errorf("local pref: %v", types[gobgp.BGP_ATTR_TYPE_LOCAL_PREF])
	}
	if c, ok := types[gobgp.BGP_ATTR_TYPE_COMMUNITIES].(*gobgp.PathAttributeCommunities); !ok || !slices.Equal(c.Value, []uint32{0xffffff02}) {
		t.Errorf("communities: %v", types[gobgp.BGP_ATTR_TYPE_COMMUNITIES])
	}
	if _, ok := types[gobgp.BGP_ATTR_TYPE_LARGE_COMMUNITY]; !ok {
		t.Error("no large communities")
	}
	p, err = buildPath(route{prefix: netip.MustParsePrefix("fd00:10::51/128")}, netip.MustParseAddr("fd00:10::151"))
	if err != nil {
		t.Fatal(err)
	}
	mp, ok := p.Attrs[len(p.Attrs)-1].(*gobgp.PathAttributeMpReachNLRI)
	if p.Family != gobgp.RF_IPv6_UC || !ok || mp.Nexthop != netip.MustParseAddr("fd00:10::151") {
		t.Errorf("IPv6 path: family %s attrs %v", p.Family, p.Attrs)
	}
}

// TestSessionSync drives a session's diff against a real GoBGP server with no peer configured, so
// nothing leaves the process: the RIB must follow the desired routes, attribute changes replace
// paths, withdrawals remove them, and the advertise-only import policy must not drop our own paths.
func TestSessionSync(t *testing.T) {
	var logs bytes.Buffer
	s, err := openSession(Peer{Name: "p", MyASN: 64513, ASN: 64512, Address: netip.MustParseAddr("192.0.2.1")}, sessionOptions{
		log:      slog.New(slog.NewTextHandler(&logs, nil)),
		routerID: netip.MustParseAddr("10.0.0.151"),
		nextHop4: netip.MustParseAddr("10.0.0.151"),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	rib := func() map[string]string {
		out := map[string]string{}
		for _, f := range []gobgp.Family{gobgp.RF_IPv4_UC, gobgp.RF_IPv6_UC} {
			err := s.srv.ListPath(apiutil.ListPathRequest{TableType: api.TableType_TABLE_TYPE_GLOBAL, Family: f}, func(prefix gobgp.NLRI, paths []*apiutil.Path) {
				var attrs []string
				for _, a := range paths[0].Attrs {
					attrs = append(attrs, a.String())
				}
				out[prefix.String()] = strings.Join(attrs, " ")
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		return out
	}
	v4 := netip.MustParsePrefix("10.0.0.51/32")
	v6 := netip.MustParsePrefix("fd00:10::51/128")
	if err := s.sync(map[netip.Prefix]route{v4: {prefix: v4}, v6: {prefix: v6}}); err != nil {
		t.Fatal(err)
	}
	got := rib()
	if len(got) != 1 || !strings.Contains(got["10.0.0.51/32"], "10.0.0.151") {
		t.Errorf("RIB after first sync: %v (the IPv6 prefix has no node address and an IPv4 peer, so it is skipped)", got)
	}
	if !strings.Contains(logs.String(), "no node address of its family") {
		t.Errorf("skipped prefix not logged:\n%s", logs.String())
	}
	if err := s.sync(map[netip.Prefix]route{v4: {prefix: v4, comms: []Community{64512<<16 | 100}}}); err != nil {
		t.Fatal(err)
	}
	if got := rib(); len(got) != 1 || !strings.Contains(got["10.0.0.51/32"], "64512:100") {
		t.Errorf("RIB after attribute change: %v", got)
	}
	if err := s.sync(nil); err != nil {
		t.Fatal(err)
	}
	if got := rib(); len(got) != 0 || len(s.routes) != 0 {
		t.Errorf("RIB after withdrawing everything: %v, routes %v", got, s.routes)
	}
	if st := s.status(); st.State != "idle" || st.Established {
		t.Errorf("status of a never-dialled session: %+v", st)
	}
}

func TestNotificationTap(t *testing.T) {
	var buf bytes.Buffer
	var got [][2]uint8
	h := notificationTap{next: slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn}), notify: func(c, s uint8) { got = append(got, [2]uint8{c, s}) }}
	log := slog.New(h).With("component", "gobgp")
	log.Info(notificationMessage, "Code", 2, "Subcode", 2, "Data", "")
	log.Info("Peer Up")
	log.Debug(notificationMessage, "Code", 6)
	// Attributes of other kinds are read or skipped, never a panic in GoBGP's goroutine.
	log.Info(notificationMessage, "Code", uint8(6), "Subcode", uint8(2))
	log.Info(notificationMessage, "Code", "6", "Subcode", 2.0)
	if !slices.Equal(got, [][2]uint8{{2, 2}, {6, 2}}) {
		t.Errorf("notifications seen: %v", got)
	}
	if buf.Len() != 0 {
		t.Errorf("records below the wrapped handler's level were forwarded:\n%s", buf.String())
	}
	log.Warn("something")
	if !strings.Contains(buf.String(), "component=gobgp") {
		t.Errorf("warning not forwarded with attributes: %q", buf.String())
	}
	p := Peer{MyASN: 64513, ASN: 64999}
	if msg := explainNotification(2, 2, p); !strings.Contains(msg, "peerASN 64999") {
		t.Errorf("bad peer AS explained as %q", msg)
	}
	if msg := explainNotification(5, 1, p); !strings.Contains(msg, "expects AS 64513") {
		t.Errorf("FSM error explained as %q", msg)
	}
}

func TestStatusString(t *testing.T) {
	st := Status{Sessions: []SessionStatus{
		{Name: "a", Address: netip.MustParseAddr("10.0.0.254"), MyASN: 64513, PeerASN: 64512, State: "established", Established: true, Flaps: 2,
			Advertised: []netip.Prefix{netip.MustParsePrefix("10.0.0.51/32"), netip.MustParsePrefix("fd00:10::51/128")}},
		{Name: "b", Address: netip.MustParseAddr("10.0.0.99"), State: "active", Advertised: []netip.Prefix{netip.MustParsePrefix("10.0.0.52/32")}, LastError: "boom"},
	}}
	if st.Established() != 1 || st.Flaps() != 2 {
		t.Errorf("gauges: established %d flaps %d", st.Established(), st.Flaps())
	}
	if adv := st.Advertised(); len(adv) != 2 {
		t.Errorf("advertised counts only established sessions: %v", adv)
	}
	out := st.String()
	for _, want := range []string{"PEER", "10.0.0.51/32,fd00:10::51/128", "established", "boom"} {
		if !strings.Contains(out, want) {
			t.Errorf("status table lacks %q:\n%s", want, out)
		}
	}
}

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// An edit that makes a running peer invalid is reported, and the session keeps its previous
// configuration and its routes; removing the peer still closes it. The peer is a closed port on
// loopback: the session dials and is refused, and nothing leaves the host.
func TestInvalidPeerEditKeepsSession(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	s, err := New(Config{Logger: discard(), RouterID: netip.MustParseAddr("10.0.0.151"), SessionWarnAfter: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	good := Peer{Name: "router", MyASN: 64513, ASN: 64512, Address: netip.MustParseAddr("127.0.0.1"), Port: port, ConnectTime: time.Hour}
	if err := s.SetPeers([]Peer{good}); err != nil {
		t.Fatal(err)
	}
	lbAddr := netip.MustParsePrefix("10.0.0.51/32")
	if err := s.SetAdvertisements([]Advertisement{{Prefix: lbAddr}}); err != nil {
		t.Fatal(err)
	}
	sess := s.sessions["router"]
	bad := good
	bad.ASN = 0
	if err := s.SetPeers([]Peer{bad}); err == nil || !strings.Contains(err.Error(), "invalid peerASN 0") {
		t.Errorf("SetPeers with an invalid edit: %v, want the reason", err)
	}
	if got := s.sessions["router"]; got != sess || got.peer != good {
		t.Fatalf("the session was replaced or closed: %v", got)
	}
	if _, ok := sess.routes[lbAddr]; !ok {
		t.Errorf("routes after the invalid edit: %v", sess.routes)
	}
	if err := s.SetPeers(nil); err != nil {
		t.Fatal(err)
	}
	if len(s.sessions) != 0 {
		t.Errorf("sessions after removing the peer: %v", s.sessions)
	}
}

func TestDynamicASN(t *testing.T) {
	for _, c := range []struct {
		p        Peer
		internal bool
		asn      uint32
	}{
		{Peer{MyASN: 64513, ASN: 64512}, false, 64512},
		{Peer{MyASN: 64512, ASN: 64512}, true, 64512},
		{Peer{MyASN: 64513, DynamicASN: DynamicExternal}, false, 0},
		{Peer{MyASN: 64513, DynamicASN: DynamicInternal}, true, 64513},
	} {
		if c.p.internal() != c.internal || c.p.peerASN() != c.asn {
			t.Errorf("%+v: internal %v peerASN %d, want %v %d", c.p, c.p.internal(), c.p.peerASN(), c.internal, c.asn)
		}
	}
}
