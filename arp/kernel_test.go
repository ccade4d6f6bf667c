package arp

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"testing"

	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"
	"golang.org/x/net/bpf"
	"golang.org/x/net/ipv6"
)

// nsFrame builds an Ethernet frame holding an ICMPv6 message from src to dst.
func nsFrame(t testing.TB, m ndp.Message, src, dst netip.Addr, hopLimit byte) []byte {
	t.Helper()
	body, err := ndp.MarshalMessageChecksum(m, src, dst)
	if err != nil {
		t.Fatal(err)
	}
	ip := make([]byte, 40, 40+len(body))
	ip[0] = 6 << 4
	ip[4], ip[5] = byte(len(body)>>8), byte(len(body))
	ip[6], ip[7] = 58, hopLimit
	s, d := src.As16(), dst.As16()
	copy(ip[8:], s[:])
	copy(ip[24:], d[:])
	f := ethernet.Frame{Destination: net.HardwareAddr{0x33, 0x33, 0xff, 0, 0, 0x51}, Source: clientMAC,
		EtherType: ethernet.EtherTypeIPv6, Payload: append(ip, body...)}
	b, err := f.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseNSAndFilter(t *testing.T) {
	vm, err := bpf.NewVM(func() []bpf.Instruction {
		var out []bpf.Instruction
		for _, r := range nsFilter {
			out = append(out, r.Disassemble())
		}
		return out
	}())
	if err != nil {
		t.Fatal(err)
	}
	group := netip.MustParseAddr("ff02::1:ff00:51")
	ns := &ndp.NeighborSolicitation{TargetAddress: vip6,
		Options: []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Source, Addr: clientMAC}}}
	good := nsFrame(t, ns, client6, group, 255)
	dad := &ndp.NeighborSolicitation{TargetAddress: vip6}
	// patch rewrites bytes of good at off and fixes the ICMPv6 checksum, so that only the patched
	// field is wrong.
	patch := func(off int, b ...byte) []byte {
		f := append([]byte(nil), good...)
		copy(f[off:], b)
		f[14+40+2], f[14+40+3] = 0, 0
		sum := icmpv6Checksum(client6, group, f[14+40:])
		f[14+40+2], f[14+40+3] = byte(sum>>8), byte(sum)
		return f
	}
	tests := []struct {
		name           string
		frame          []byte
		filter, parsed bool
	}{
		{"multicast NS", good, true, true},
		{"unicast NS", nsFrame(t, ns, client6, vip6, 255), true, true},
		{"DAD NS", nsFrame(t, dad, netip.IPv6Unspecified(), group, 255), true, true},
		{"DAD NS with a source link-layer address", nsFrame(t, ns, netip.IPv6Unspecified(), group, 255), true, false},
		{"DAD NS not to the solicited-node group", nsFrame(t, dad, netip.IPv6Unspecified(), netip.IPv6LinkLocalAllNodes(), 255), true, false},
		{"multicast target", nsFrame(t, &ndp.NeighborSolicitation{TargetAddress: group}, client6, group, 255), true, false},
		{"option of length 0", patch(14+40+24+1, 0), true, false},
		{"option longer than the message", patch(14+40+24+1, 2), true, false},
		{"ICMP code 1", patch(14+40+1, 1), true, false},
		{"payload length 0 (issue 11)", shortNSFrame(), true, false},
		{"payload length 23", func() []byte { b := append([]byte(nil), good...); b[14+4], b[14+5] = 0, 23; return b }(), true, false},
		{"payload length beyond the frame", func() []byte { b := append([]byte(nil), good...); b[14+4], b[14+5] = 0xff, 0xff; return b }(), true, false},
		{"IPv4 version", func() []byte { b := append([]byte(nil), good...); b[14] = 0x45; return b }(), true, false},
		{"Ethernet padding after the message", append(append([]byte(nil), good...), make([]byte, 8)...), true, true},
		{"hop limit 254", nsFrame(t, ns, client6, group, 254), true, false},
		{"bad checksum", func() []byte { b := append([]byte(nil), good...); b[14+40+2]++; return b }(), true, false},
		{"truncated", good[:60], true, false},
		{"advertisement", nsFrame(t, &ndp.NeighborAdvertisement{TargetAddress: vip6}, client6, group, 255), false, false},
		{"ARP", arpFrame(t, 1, clientMAC, clientMAC, clientIP, vip), false, false},
	}
	for _, tc := range tests {
		n, err := vm.Run(tc.frame)
		if err != nil {
			t.Fatal(err)
		}
		if (n > 0) != tc.filter {
			t.Errorf("%s: filter passes %d bytes, want pass=%v", tc.name, n, tc.filter)
		}
		m, src, err := parseNS(tc.frame)
		if ok := err == nil; ok != tc.parsed {
			t.Errorf("%s: parsed %v, want %v", tc.name, ok, tc.parsed)
			continue
		}
		if err != nil && !errors.Is(err, errBadPacket) {
			t.Errorf("%s: error %v does not wrap errBadPacket", tc.name, err)
		}
		if err == nil && (m.TargetAddress != vip6 || (src != client6 && !src.IsUnspecified())) {
			t.Errorf("%s: parsed %+v from %s", tc.name, m, src)
		}
	}
}

// shortNSFrame is the 78-byte frame of issue 11: Ethernet, an IPv6 header with next header 58,
// hop limit 255 and payload length 0, then 24 bytes the payload length leaves out (type 135, so
// that the socket filter passes it). parseNS used to index the empty ICMPv6 body and panic, in a
// goroutine nothing recovers: one frame from the LAN stopped the agent.
func shortNSFrame() []byte {
	f := make([]byte, 78)
	copy(f, []byte{0x33, 0x33, 0xff, 0, 0, 0x51})
	copy(f[6:], clientMAC)
	f[12], f[13] = 0x86, 0xdd
	f[14] = 0x60
	f[14+6], f[14+7] = 58, 255
	f[14+40] = 135
	return f
}

func TestParseNSZeroPayloadLength(t *testing.T) {
	if _, _, err := parseNS(shortNSFrame()); !errors.Is(err, errBadPacket) {
		t.Fatalf("parseNS: %v, want a bad packet", err)
	}
}

// fakeFrames is a frameReader fed by a channel.
type fakeFrames struct {
	in     chan []byte
	closed chan struct{}
}

func (f *fakeFrames) ReadFrom(b []byte) (int, net.Addr, error) {
	select {
	case p := <-f.in:
		return copy(b, p), nil, nil
	case <-f.closed:
		return 0, nil, net.ErrClosed
	}
}

func (f *fakeFrames) Close() error { close(f.closed); return nil }

// rawNDP reads through an ndpSocket (the real frame parsing) and writes to a fakeNDP.
type rawNDP struct {
	*fakeNDP
	s *ndpSocket
}

func (c rawNDP) ReadFrom() (ndp.Message, *ipv6.ControlMessage, netip.Addr, error) {
	return c.s.ReadFrom()
}

type rawNDPKernel struct {
	*fakeKernel
	frames *fakeFrames
	conn   chan rawNDP
}

func (k rawNDPKernel) ListenNDP(l Link) (NDPConn, error) {
	c := rawNDP{fakeNDP: newFakeNDP(), s: &ndpSocket{recv: k.frames, index: l.Index}}
	k.conn <- c
	return c, nil
}

// The frame of issue 11 reaches the serving goroutine through the real read path: it is dropped
// and counted, and the solicitation after it is answered on the same socket.
func TestNDPServingSurvivesShortFrame(t *testing.T) {
	fk := newFakeKernel(ethLink("eth0", 2))
	k := rawNDPKernel{fakeKernel: fk, frames: &fakeFrames{in: make(chan []byte, 4), closed: make(chan struct{})},
		conn: make(chan rawNDP, 4)}
	opts := Options{GratuitousRepeats: -1, Links: k, Dialer: k, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	r := New(opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()
	r.SetOwned(map[netip.Addr][]string{vip6: {"eth0"}})
	c := <-k.conn
	// The socket is handed out before the address is owned: a solicitation read before then is
	// (rightly) not answered.
	eventually(t, "the address owned", func() bool { return r.Stats().Announced == 1 })
	k.frames.in <- shortNSFrame()
	ns := &ndp.NeighborSolicitation{TargetAddress: vip6}
	k.frames.in <- nsFrame(t, ns, client6, netip.MustParseAddr("ff02::1:ff00:51"), 255)
	eventually(t, "the solicitation after the bad frame answered", func() bool { return r.Stats().NDPSolicitationsAnswered == 1 })
	if st := r.Stats(); st.BadPackets != 1 {
		t.Errorf("bad packets %d, want 1", st.BadPackets)
	}
	if len(k.conn) != 0 || c.isClosed() {
		t.Error("NDP socket reopened or closed after a bad frame")
	}
}

func TestParseARPRequest(t *testing.T) {
	self := net.HardwareAddr{2, 0, 0, 0, 0, 2}
	req := arpFrame(t, 1, clientMAC, clientMAC, clientIP, vip)
	mod := func(off int, b ...byte) []byte { f := append([]byte(nil), req...); copy(f[off:], b); return f }
	tests := []struct {
		name     string
		frame    []byte
		want     bool // a request to answer
		wantsBad bool
	}{
		{"request", req, true, false},
		{"request with Ethernet padding", append(append([]byte(nil), req...), make([]byte, 18)...), true, false},
		{"reply", arpFrame(t, 2, clientMAC, clientMAC, clientIP, vip), false, false},
		{"our own", arpFrame(t, 1, self, self, vip, vip), false, false},
		{"proxied", arpFrame(t, 1, clientMAC, net.HardwareAddr{2, 9, 9, 9, 9, 9}, clientIP, vip), false, false},
		{"empty", nil, false, true},
		{"Ethernet header only", req[:14], false, true},
		{"truncated ARP", req[:14+20], false, true},
		{"not ARP", mod(12, 0x08, 0x00), false, true},
		{"hardware type 6", mod(14, 0, 6), false, true},
		{"protocol IPv6", mod(14+2, 0x86, 0xdd), false, true},
		{"hardware length 255", mod(14+4, 255), false, true},
		{"protocol length 16", mod(14+5, 16), false, true},
		{"protocol length 0", mod(14+5, 0), false, true},
	}
	for _, tc := range tests {
		p, err := parseARPRequest(tc.frame, self)
		if (p != nil) != tc.want || errors.Is(err, errBadPacket) != tc.wantsBad || (err != nil && !tc.wantsBad) {
			t.Errorf("%s: %v, %v", tc.name, p, err)
		}
	}
}
