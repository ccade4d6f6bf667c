package arp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"
	"golang.org/x/net/ipv6"
)

// Test conventions: interfaces eth0 (index 2, MAC 02:00:00:00:00:02) and eth1 (index 3,
// 02:00:00:00:00:03); the client is 10.0.0.1 / fd00:10::1 with MAC 02:00:00:00:00:01; owned
// addresses come from the lab's pool (10.0.0.51, fd00:10::51).

var (
	clientMAC = net.HardwareAddr{2, 0, 0, 0, 0, 1}
	clientIP  = netip.MustParseAddr("10.0.0.1")
	client6   = netip.MustParseAddr("fd00:10::1")
	vip       = netip.MustParseAddr("10.0.0.51")
	vip2      = netip.MustParseAddr("10.0.0.52")
	vip6      = netip.MustParseAddr("fd00:10::51")
)

func ethLink(name string, index int) Link {
	return Link{Name: name, Index: index, HardwareAddr: net.HardwareAddr{2, 0, 0, 0, 0, byte(index)}, Up: true}
}

// fakeARP is a net.PacketConn carrying Ethernet frames.
type fakeARP struct {
	in     chan []byte
	failed chan error
	mu     sync.Mutex
	out    [][]byte
	closed chan struct{}
	once   sync.Once
}

func newFakeARP() *fakeARP {
	return &fakeARP{in: make(chan []byte, 16), failed: make(chan error, 1), closed: make(chan struct{})}
}

// panicFrame, sent to a fakeARP, makes its ReadFrom panic as a parser bug would.
var panicFrame = []byte("panic")

func (c *fakeARP) ReadFrom(b []byte) (int, net.Addr, error) {
	select {
	case f := <-c.in:
		if string(f) == string(panicFrame) {
			panic("parser bug")
		}
		return copy(b, f), nil, nil
	case err := <-c.failed:
		return 0, nil, err
	case <-c.closed:
		return 0, nil, net.ErrClosed
	}
}

func (c *fakeARP) WriteTo(b []byte, _ net.Addr) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.out = append(c.out, slices.Clone(b))
	return len(b), nil
}

func (c *fakeARP) Close() error                     { c.once.Do(func() { close(c.closed) }); return nil }
func (c *fakeARP) LocalAddr() net.Addr              { return nil }
func (c *fakeARP) SetDeadline(time.Time) error      { return nil }
func (c *fakeARP) SetReadDeadline(time.Time) error  { return nil }
func (c *fakeARP) SetWriteDeadline(time.Time) error { return nil }

func (c *fakeARP) isClosed() bool {
	select {
	case <-c.closed:
		return true
	default:
		return false
	}
}

// written returns the ARP packets written so far, with their Ethernet destinations.
func (c *fakeARP) written(t *testing.T) []sentARP {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []sentARP
	for _, b := range c.out {
		var f ethernet.Frame
		if err := f.UnmarshalBinary(b); err != nil {
			t.Fatal(err)
		}
		var p arp.Packet
		if err := p.UnmarshalBinary(f.Payload); err != nil {
			t.Fatal(err)
		}
		out = append(out, sentARP{dst: f.Destination, p: p})
	}
	return out
}

type sentARP struct {
	dst net.HardwareAddr
	p   arp.Packet
}

func (s sentARP) String() string {
	return fmt.Sprintf("%v to %s: %s is at %s (target %s %s)", s.p.Operation, s.dst, s.p.SenderIP, s.p.SenderHardwareAddr, s.p.TargetIP, s.p.TargetHardwareAddr)
}

func arpFrame(t testing.TB, op arp.Operation, srcMAC net.HardwareAddr, ethSrc net.HardwareAddr, srcIP, target netip.Addr) []byte {
	t.Helper()
	p, err := arp.NewPacket(op, srcMAC, srcIP, net.HardwareAddr{0, 0, 0, 0, 0, 0}, target)
	if err != nil {
		t.Fatal(err)
	}
	pb, _ := p.MarshalBinary()
	f := ethernet.Frame{Destination: ethernet.Broadcast, Source: ethSrc, EtherType: ethernet.EtherTypeARP, Payload: pb}
	fb, err := f.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return fb
}

// fakeNDP is an NDPConn.
type fakeNDP struct {
	in     chan ndpIn
	mu     sync.Mutex
	out    []ndpOut
	groups map[netip.Addr]bool
	closed chan struct{}
	once   sync.Once
}

type ndpIn struct {
	m       ndp.Message
	ifIndex int
	src     netip.Addr
	panics  bool // ReadFrom panics as a parser bug would
	err     error
}

type ndpOut struct {
	m   ndp.Message
	dst netip.Addr
}

func newFakeNDP() *fakeNDP {
	return &fakeNDP{in: make(chan ndpIn, 16), groups: map[netip.Addr]bool{}, closed: make(chan struct{})}
}

func (c *fakeNDP) ReadFrom() (ndp.Message, *ipv6.ControlMessage, netip.Addr, error) {
	select {
	case m := <-c.in:
		if m.panics {
			panic("parser bug")
		}
		if m.err != nil {
			return nil, nil, netip.Addr{}, m.err
		}
		return m.m, &ipv6.ControlMessage{IfIndex: m.ifIndex}, m.src, nil
	case <-c.closed:
		return nil, nil, netip.Addr{}, net.ErrClosed
	}
}

func (c *fakeNDP) WriteTo(m ndp.Message, _ *ipv6.ControlMessage, dst netip.Addr) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.out = append(c.out, ndpOut{m: m, dst: dst})
	return nil
}

func (c *fakeNDP) JoinGroup(g netip.Addr) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.groups[g] = true
	return nil
}

func (c *fakeNDP) LeaveGroup(g netip.Addr) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.groups, g)
	return nil
}

// Close closes the connection; as in the kernel, its group memberships go with it.
func (c *fakeNDP) Close() error {
	c.once.Do(func() {
		c.mu.Lock()
		clear(c.groups)
		c.mu.Unlock()
		close(c.closed)
	})
	return nil
}

func (c *fakeNDP) isClosed() bool {
	select {
	case <-c.closed:
		return true
	default:
		return false
	}
}

func (c *fakeNDP) written() []ndpOut {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.out)
}

func (c *fakeNDP) joined() []netip.Addr {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []netip.Addr
	for g := range c.groups {
		out = append(out, g)
	}
	return out
}

// fakeKernel is Links and Dialer; every Listen returns a fresh fake conn, the latest one kept
// per interface.
type fakeKernel struct {
	mu      sync.Mutex
	links   []Link
	arps    map[string]*fakeARP
	ndps    map[string]*fakeNDP
	dials   map[string]int
	failARP error
}

func newFakeKernel(links ...Link) *fakeKernel {
	return &fakeKernel{links: links, arps: map[string]*fakeARP{}, ndps: map[string]*fakeNDP{}, dials: map[string]int{}}
}

func (k *fakeKernel) Links() ([]Link, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.links), nil
}

func (k *fakeKernel) setLinks(links ...Link) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.links = links
}

func (k *fakeKernel) ListenARP(l Link) (net.PacketConn, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.dials[l.Name]++
	if k.failARP != nil {
		return nil, k.failARP
	}
	c := newFakeARP()
	k.arps[l.Name] = c
	return c, nil
}

func (k *fakeKernel) ListenNDP(l Link) (NDPConn, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	c := newFakeNDP()
	k.ndps[l.Name] = c
	return c, nil
}

func (k *fakeKernel) arp(name string) *fakeARP {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.arps[name]
}

func (k *fakeKernel) ndp(name string) *fakeNDP {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.ndps[name]
}

func (k *fakeKernel) dialCount(name string) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.dials[name]
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func start(t *testing.T, k *fakeKernel, opts Options) *Responder {
	t.Helper()
	opts.Links, opts.Dialer = k, k
	opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	r := New(opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Run returned %v", err)
		}
	})
	return r
}

func countOps(sent []sentARP, a netip.Addr) (req, rep int) {
	for _, s := range sent {
		if s.p.SenderIP != a || s.p.TargetIP != a || !slices.Equal(s.dst, ethernet.Broadcast) {
			continue
		}
		if s.p.Operation == arp.OperationRequest {
			req++
		} else {
			rep++
		}
	}
	return
}

func TestARPAnswersOnlyOwnedAddresses(t *testing.T) {
	eth0 := ethLink("eth0", 2)
	k := newFakeKernel(Link{Name: "lo", Index: 1, Up: true, Loopback: true}, eth0, ethLink("eth1", 3))
	r := start(t, k, Options{GratuitousRepeats: -1})
	r.SetOwned(map[netip.Addr][]string{vip: {"eth0"}})
	eventually(t, "ARP socket on eth0", func() bool { return k.arp("eth0") != nil })
	c := k.arp("eth0")
	// Taking the address: one gratuitous request and one reply, with eth0's MAC.
	eventually(t, "gratuitous ARP", func() bool { req, rep := countOps(c.written(t), vip); return req == 1 && rep == 1 })
	for _, s := range c.written(t) {
		if !slices.Equal(s.p.SenderHardwareAddr, eth0.HardwareAddr) {
			t.Errorf("gratuitous ARP with MAC %s", s.p.SenderHardwareAddr)
		}
	}
	if k.arp("eth1") != nil || k.arp("lo") != nil {
		t.Error("sockets opened on interfaces not asked for")
	}
	// Requests: only the owned address is answered, only real requests.
	c.in <- arpFrame(t, arp.OperationRequest, clientMAC, clientMAC, clientIP, vip2)                         // not ours
	c.in <- arpFrame(t, arp.OperationReply, clientMAC, clientMAC, clientIP, vip)                            // a reply
	c.in <- arpFrame(t, arp.OperationRequest, clientMAC, net.HardwareAddr{2, 9, 9, 9, 9, 9}, clientIP, vip) // proxied
	c.in <- arpFrame(t, arp.OperationRequest, eth0.HardwareAddr, eth0.HardwareAddr, vip, vip)               // our own
	c.in <- []byte{1, 2, 3}                                                                                 // garbage
	c.in <- arpFrame(t, arp.OperationRequest, clientMAC, clientMAC, clientIP, vip)                          // answered
	eventually(t, "reply", func() bool { return r.Stats().ARPRequestsAnswered == 1 })
	sent := c.written(t)
	last := sent[len(sent)-1]
	if len(sent) != 3 || last.p.Operation != arp.OperationReply || !slices.Equal(last.dst, clientMAC) ||
		last.p.SenderIP != vip || !slices.Equal(last.p.SenderHardwareAddr, eth0.HardwareAddr) ||
		last.p.TargetIP != clientIP || !slices.Equal(last.p.TargetHardwareAddr, clientMAC) {
		t.Fatalf("sent %v", sent)
	}
	st := r.Stats()
	if st.Announced != 1 || st.OwnershipChanges != 1 || st.GratuitousSent != 2 || st.BadPackets != 1 {
		t.Errorf("stats %+v", st)
	}
	// MetalLB's per-address counters: requests for the owned address (the real one, not the
	// reply, proxied or own frames), answers, and gratuitous packets; none for 10.0.0.52.
	if got := r.AddrStats(); len(got) != 1 || got[vip] != (AddrStats{Requests: 1, Responses: 1, Gratuitous: 2}) {
		t.Errorf("per-address stats %+v", got)
	}

	// Giving the address up: no more answers, the socket is closed.
	r.SetOwned(nil)
	eventually(t, "socket closed", c.isClosed)
	if st := r.Stats(); st.Announced != 0 || st.OwnershipChanges != 2 {
		t.Errorf("stats after release %+v", st)
	}
}

func TestGratuitousRepeatsAndRefresh(t *testing.T) {
	k := newFakeKernel(ethLink("eth0", 2))
	const interval = 40 * time.Millisecond
	r := start(t, k, Options{GratuitousRepeats: 2, GratuitousInterval: interval})
	began := time.Now()
	r.SetOwned(map[netip.Addr][]string{vip: nil})
	eventually(t, "socket", func() bool { return k.arp("eth0") != nil })
	c := k.arp("eth0")
	eventually(t, "three rounds", func() bool { req, rep := countOps(c.written(t), vip); return req == 3 && rep == 3 })
	if el := time.Since(began); el < 2*interval {
		t.Errorf("three rounds within %v, want them %v apart", el, interval)
	}
	time.Sleep(3 * interval)
	if req, _ := countOps(c.written(t), vip); req != 3 {
		t.Errorf("%d rounds without refresh, want 3", req)
	}

	// With a refresh, announcements go on.
	k2 := newFakeKernel(ethLink("eth0", 2))
	r2 := start(t, k2, Options{GratuitousRepeats: -1, RefreshInterval: interval})
	r2.SetOwned(map[netip.Addr][]string{vip: nil})
	eventually(t, "socket", func() bool { return k2.arp("eth0") != nil })
	eventually(t, "refreshes", func() bool { req, _ := countOps(k2.arp("eth0").written(t), vip); return req >= 3 })
}

// A new address is announced at once even while another one's repeats are pending, and an address
// that stays owned is not announced again when the set changes.
func TestSetOwnedChangesOnlyWhatChanged(t *testing.T) {
	k := newFakeKernel(ethLink("eth0", 2))
	r := start(t, k, Options{GratuitousRepeats: 1, GratuitousInterval: time.Hour})
	r.SetOwned(map[netip.Addr][]string{vip: nil})
	eventually(t, "socket", func() bool { return k.arp("eth0") != nil })
	c := k.arp("eth0")
	eventually(t, "first", func() bool { req, _ := countOps(c.written(t), vip); return req == 1 })
	r.SetOwned(map[netip.Addr][]string{vip: nil, vip2: {"eth0"}})
	eventually(t, "second address", func() bool { req, _ := countOps(c.written(t), vip2); return req == 1 })
	if req, _ := countOps(c.written(t), vip); req != 1 {
		t.Errorf("%s announced %d times", vip, req)
	}
	if k.dialCount("eth0") != 1 {
		t.Errorf("eth0 dialled %d times", k.dialCount("eth0"))
	}
	eventually(t, "stats", func() bool { return r.Stats().Announced == 2 })
}

func TestInterfacesComeAndGo(t *testing.T) {
	eth0, eth1 := ethLink("eth0", 2), ethLink("eth1", 3)
	down := ethLink("down0", 4)
	down.Up = false
	noarp := ethLink("tun0", 5)
	noarp.NoARP = true
	slave := ethLink("veth1", 6)
	slave.Enslaved = true
	ipip := Link{Name: "ipip0", Index: 7, Up: true, HardwareAddr: net.HardwareAddr{1, 2, 3, 4}}
	k := newFakeKernel(eth0, down, noarp, slave, ipip)
	r := start(t, k, Options{RescanInterval: 20 * time.Millisecond, GratuitousRepeats: -1})
	r.SetOwned(map[netip.Addr][]string{vip: nil}) // every usable interface
	eventually(t, "eth0", func() bool { return k.arp("eth0") != nil })
	for _, n := range []string{"down0", "tun0", "veth1", "ipip0"} {
		if k.dialCount(n) != 0 {
			t.Errorf("socket opened on unusable %s", n)
		}
	}
	// eth1 appears: found by the rescan and announced on.
	k.setLinks(eth0, eth1)
	eventually(t, "eth1 announced", func() bool {
		c := k.arp("eth1")
		if c == nil {
			return false
		}
		req, _ := countOps(c.written(t), vip)
		return req == 1
	})
	eventually(t, "two announcements", func() bool { return r.Stats().Announced == 2 })
	// eth0 goes down: its socket closes. It comes back replaced (new index): reopened and announced.
	c0 := k.arp("eth0")
	eth0.Up = false
	k.setLinks(eth0, eth1)
	eventually(t, "eth0 closed", c0.isClosed)
	eth0.Up, eth0.Index = true, 9
	k.setLinks(eth0, eth1)
	eventually(t, "eth0 reopened", func() bool { c := k.arp("eth0"); return c != c0 && c != nil && len(c.written(t)) == 2 })
	// Restricting the address to eth1 closes eth0.
	c0 = k.arp("eth0")
	r.SetOwned(map[netip.Addr][]string{vip: {"eth1", "nonexistent"}})
	eventually(t, "eth0 closed again", c0.isClosed)
	if k.arp("eth1").isClosed() {
		t.Error("eth1 closed")
	}
}

func TestSocketErrors(t *testing.T) {
	k := newFakeKernel(ethLink("eth0", 2))
	k.failARP = errors.New("permission denied")
	r := start(t, k, Options{RescanInterval: 20 * time.Millisecond, GratuitousRepeats: -1})
	r.SetOwned(map[netip.Addr][]string{vip: nil})
	eventually(t, "retries", func() bool { return k.dialCount("eth0") >= 3 })
	if st := r.Stats(); st.Announced != 0 || st.Errors < 3 {
		t.Errorf("stats %+v", st)
	}
	k.mu.Lock()
	k.failARP = nil
	k.mu.Unlock()
	eventually(t, "recovered", func() bool { return r.Stats().Announced == 1 })
	// A read failure that is not our own close reopens the socket.
	c := k.arp("eth0")
	c.failed <- errors.New("network is down")
	eventually(t, "reopened", func() bool { n := k.arp("eth0"); return n != c && n != nil && len(n.written(t)) == 2 })
	if !c.isClosed() {
		t.Error("failed socket not closed")
	}
}

func TestNDP(t *testing.T) {
	eth0 := ethLink("eth0", 2)
	k := newFakeKernel(eth0)
	r := start(t, k, Options{GratuitousRepeats: -1})
	r.SetOwned(map[netip.Addr][]string{vip6: {"eth0"}, netip.MustParseAddr("fd00:20::51"): {"eth0"}})
	eventually(t, "NDP socket", func() bool { return k.ndp("eth0") != nil })
	c := k.ndp("eth0")
	if k.arp("eth0") != nil {
		t.Error("ARP socket opened for IPv6 addresses only")
	}
	// Both addresses end in ::51: one solicited-node group, joined once.
	group := netip.MustParseAddr("ff02::1:ff00:51")
	eventually(t, "group joined", func() bool { return slices.Equal(c.joined(), []netip.Addr{group}) })
	// Unsolicited advertisements, one per address, to all nodes with the override flag.
	eventually(t, "unsolicited NAs", func() bool { return len(c.written()) == 2 })
	for _, o := range c.written() {
		na, ok := o.m.(*ndp.NeighborAdvertisement)
		if !ok || o.dst != netip.IPv6LinkLocalAllNodes() || !na.Override || na.Solicited || !hasTargetLL(na, eth0.HardwareAddr) {
			t.Errorf("unsolicited NA %+v to %s", o.m, o.dst)
		}
	}
	ns := func(target string) *ndp.NeighborSolicitation {
		return &ndp.NeighborSolicitation{TargetAddress: netip.MustParseAddr(target)}
	}
	c.in <- ndpIn{m: ns("fd00:10::52"), ifIndex: 2, src: client6}                 // not ours
	c.in <- ndpIn{m: ns("fd00:10::51"), ifIndex: 3, src: client6}                 // other interface
	c.in <- ndpIn{m: &ndp.RouterSolicitation{}, ifIndex: 2, src: client6}         // not an NS
	c.in <- ndpIn{m: ns("fd00:10::51"), ifIndex: 2, src: client6}                 // answered
	c.in <- ndpIn{m: ns("fd00:10::51"), ifIndex: 2, src: netip.IPv6Unspecified()} // DAD: to all nodes
	eventually(t, "answers", func() bool { return r.Stats().NDPSolicitationsAnswered == 2 })
	out := c.written()[2:]
	if len(out) != 2 {
		t.Fatalf("wrote %d answers", len(out))
	}
	if na := out[0].m.(*ndp.NeighborAdvertisement); out[0].dst != client6 || !na.Solicited || !na.Override ||
		na.TargetAddress != vip6 || !hasTargetLL(na, eth0.HardwareAddr) {
		t.Errorf("answer %+v to %s", na, out[0].dst)
	}
	if na := out[1].m.(*ndp.NeighborAdvertisement); out[1].dst != netip.IPv6LinkLocalAllNodes() || na.Solicited {
		t.Errorf("DAD answer %+v to %s", na, out[1].dst)
	}
	if got := r.AddrStats()[vip6]; got != (AddrStats{Requests: 2, Responses: 2, Gratuitous: 1}) {
		t.Errorf("per-address stats of %s: %+v", vip6, got)
	}
	// Releasing one address keeps the shared group; releasing both leaves it and closes.
	r.SetOwned(map[netip.Addr][]string{vip6: {"eth0"}})
	eventually(t, "one announced", func() bool { return r.Stats().Announced == 1 })
	if !slices.Equal(c.joined(), []netip.Addr{group}) {
		t.Errorf("groups %v after releasing one address", c.joined())
	}
	r.SetOwned(map[netip.Addr][]string{vip: {"eth0"}})
	eventually(t, "NDP socket closed", func() bool {
		select {
		case <-c.closed:
			return true
		default:
			return false
		}
	})
	if len(c.joined()) != 0 {
		t.Errorf("groups %v after release", c.joined())
	}
	eventually(t, "ARP socket", func() bool { return k.arp("eth0") != nil })
}

func hasTargetLL(na *ndp.NeighborAdvertisement, mac net.HardwareAddr) bool {
	for _, o := range na.Options {
		if ll, ok := o.(*ndp.LinkLayerAddress); ok && ll.Direction == ndp.Target && slices.Equal(ll.Addr, mac) {
			return true
		}
	}
	return false
}

func TestRunTwice(t *testing.T) {
	k := newFakeKernel()
	r := start(t, k, Options{})
	time.Sleep(10 * time.Millisecond)
	if err := r.Run(context.Background()); err == nil {
		t.Error("second Run succeeded")
	}
}

// A packet whose handling panics (a parser bug) is dropped and counted; the interface keeps being
// answered on the same sockets. Before, the panic ended the whole agent.
func TestServingSurvivesPanickingPacket(t *testing.T) {
	k := newFakeKernel(ethLink("eth0", 2))
	r := start(t, k, Options{GratuitousRepeats: -1})
	r.SetOwned(map[netip.Addr][]string{vip: {"eth0"}, vip6: {"eth0"}})
	eventually(t, "sockets", func() bool { return k.arp("eth0") != nil && k.ndp("eth0") != nil })
	a, n := k.arp("eth0"), k.ndp("eth0")
	a.in <- panicFrame
	a.in <- arpFrame(t, arp.OperationRequest, clientMAC, clientMAC, clientIP, vip)
	n.in <- ndpIn{panics: true}
	n.in <- ndpIn{m: &ndp.NeighborSolicitation{TargetAddress: vip6}, ifIndex: 2, src: client6}
	eventually(t, "answers after the bad packets", func() bool {
		st := r.Stats()
		return st.ARPRequestsAnswered == 1 && st.NDPSolicitationsAnswered == 1
	})
	if k.dialCount("eth0") != 1 || a.isClosed() || n.isClosed() {
		t.Errorf("sockets reopened or closed after a bad packet")
	}
	if st := r.Stats(); st.BadPackets != 2 {
		t.Errorf("bad packets %d, want 2", st.BadPackets)
	}
}

// MetalLB's default exclusions keep the responder off container and CNI links, even for an
// address whose L2Advertisement names one; other interfaces answer as before.
func TestExcludedInterfaces(t *testing.T) {
	ex, err := ExcludeInterfaces(DefaultExcludeInterfaces)
	if err != nil {
		t.Fatal(err)
	}
	for name, excluded := range map[string]bool{"docker0": true, "cni0": true, "veth1234": true, "lo": true, "kube-ipvs0": true,
		"cali0ab": true, "flannel.1": true, "ens33": false, "eth0": false, "lower": false, "bond0": false} {
		if ex.MatchString(name) != excluded {
			t.Errorf("%s excluded: %v, want %v", name, !excluded, excluded)
		}
	}
	if _, err := ExcludeInterfaces([]string{"(bad"}); err == nil {
		t.Error("an invalid pattern was accepted")
	}
	if ex, err := ExcludeInterfaces([]string{"", " "}); ex != nil || err != nil {
		t.Errorf("no pattern: %v %v", ex, err)
	}
	k := newFakeKernel(ethLink("eth0", 2), ethLink("cni0", 3), ethLink("veth9", 4))
	r := start(t, k, Options{GratuitousRepeats: -1, Exclude: ex})
	r.SetOwned(map[netip.Addr][]string{vip: nil, vip2: {"cni0"}})
	eventually(t, "ARP socket on eth0", func() bool { return k.arp("eth0") != nil })
	eventually(t, "one address announced", func() bool { return r.Stats().Announced == 1 })
	if k.dialCount("cni0") != 0 || k.dialCount("veth9") != 0 {
		t.Errorf("sockets opened on excluded interfaces: cni0 %d, veth9 %d", k.dialCount("cni0"), k.dialCount("veth9"))
	}
}
