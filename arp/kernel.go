package arp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"

	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"
	"github.com/mdlayher/packet"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/net/bpf"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// Link is what the responder needs to know about one network interface.
type Link struct {
	Name         string
	Index        int
	HardwareAddr net.HardwareAddr
	Up           bool // administratively up and running (carrier)
	NoARP        bool
	Loopback     bool
	Enslaved     bool // has a master (bridge port, bond slave): its master answers instead
}

// unusable returns why the responder must not answer on l ("" when it may).
func (l Link) unusable() string {
	switch {
	case !l.Up:
		return "down"
	case l.Loopback:
		return "loopback"
	case l.NoARP:
		return "NOARP"
	case l.Enslaved:
		return "enslaved"
	case len(l.HardwareAddr) != 6:
		return "not Ethernet"
	}
	return ""
}

// Links lists the network interfaces.
type Links interface {
	Links() ([]Link, error)
}

// Dialer opens the per-interface sockets.
type Dialer interface {
	// ListenARP returns a connection that reads and writes whole Ethernet frames carrying ARP on
	// the link; written frames are addressed with a *packet.Addr.
	ListenARP(l Link) (net.PacketConn, error)
	// ListenNDP returns a connection that receives the Neighbor Solicitations seen on the link,
	// unicast and multicast, and sends Neighbor Advertisements.
	ListenNDP(l Link) (NDPConn, error)
}

// NDPConn is the part of *ndp.Conn the responder uses.
type NDPConn interface {
	ReadFrom() (ndp.Message, *ipv6.ControlMessage, netip.Addr, error)
	WriteTo(m ndp.Message, cm *ipv6.ControlMessage, dst netip.Addr) error
	JoinGroup(group netip.Addr) error
	LeaveGroup(group netip.Addr) error
	Close() error
}

var _ NDPConn = (*ndp.Conn)(nil)

// kernel is the real Links and Dialer, in the network namespace at nsPath ("" : the current one).
type kernel struct {
	nsPath string
}

var (
	_ Links  = kernel{}
	_ Dialer = kernel{}
)

func (k kernel) Links() ([]Link, error) {
	var links []netlink.Link
	var err error
	if k.nsPath == "" {
		links, err = netlink.LinkList()
	} else {
		ns, nerr := netns.GetFromPath(k.nsPath)
		if nerr != nil {
			return nil, fmt.Errorf("open network namespace %s: %w", k.nsPath, nerr)
		}
		defer ns.Close()
		h, herr := netlink.NewHandleAt(ns)
		if herr != nil {
			return nil, fmt.Errorf("netlink in %s: %w", k.nsPath, herr)
		}
		defer h.Close()
		links, err = h.LinkList()
	}
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	out := make([]Link, 0, len(links))
	for _, l := range links {
		a := l.Attrs()
		out = append(out, Link{
			Name:         a.Name,
			Index:        a.Index,
			HardwareAddr: a.HardwareAddr,
			Up:           a.Flags&net.FlagUp != 0 && a.Flags&net.FlagRunning != 0,
			NoARP:        a.RawFlags&unix.IFF_NOARP != 0,
			Loopback:     a.Flags&net.FlagLoopback != 0,
			Enslaved:     a.MasterIndex != 0,
		})
	}
	return out, nil
}

func (k kernel) ListenARP(l Link) (net.PacketConn, error) {
	var c *packet.Conn
	err := inNetNS(k.nsPath, func() error {
		var err error
		c, err = packet.Listen(&net.Interface{Index: l.Index, Name: l.Name, HardwareAddr: l.HardwareAddr},
			packet.Raw, int(ethernet.EtherTypeARP), nil)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("ARP socket on %s: %w", l.Name, err)
	}
	return c, nil
}

// ListenNDP returns two sockets behind one NDPConn. Solicitations are read from a packet socket
// filtered to ICMPv6 Neighbor Solicitations: an ICMPv6 socket would miss the unicast ones (a
// neighbour re-checking a stale entry sends its probe to our MAC and the service address, which is
// not local, so the kernel drops it before any ICMPv6 socket). Advertisements are sent, and the
// solicited-node groups joined (so that the NIC accepts those multicast frames), through an
// ICMPv6 socket from mdlayher/ndp whose receive side is filtered shut.
func (k kernel) ListenNDP(l Link) (NDPConn, error) {
	var (
		send *ndp.Conn
		recv *packet.Conn
	)
	err := inNetNS(k.nsPath, func() error {
		// Looked up here: the address list ndp.Listen reads comes from the namespace.
		ifi, err := net.InterfaceByIndex(l.Index)
		if err != nil {
			return err
		}
		send, _, err = ndp.Listen(ifi, ndp.LinkLocal)
		if err != nil {
			return err
		}
		recv, err = packet.Listen(ifi, packet.Raw, unix.ETH_P_IPV6, &packet.Config{Filter: nsFilter})
		if err != nil {
			send.Close()
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("NDP sockets on %s: %w", l.Name, err)
	}
	var f ipv6.ICMPFilter
	f.SetAll(true) // block everything: this socket only sends
	if err := send.SetICMPFilter(&f); err != nil {
		send.Close()
		recv.Close()
		return nil, fmt.Errorf("NDP socket on %s: ICMPv6 filter: %w", l.Name, err)
	}
	return &ndpSocket{Conn: send, recv: recv, index: l.Index}, nil
}

// nsFilter passes Ethernet frames carrying an IPv6 packet whose next header is ICMPv6 and whose
// ICMPv6 type is Neighbor Solicitation (no extension headers: RFC 4861 messages carry none).
var nsFilter = func() []bpf.RawInstruction {
	const (
		ipv6Next = 14 + 6  // Ethernet header, then IPv6 next header
		icmpType = 14 + 40 // first byte after the IPv6 header
	)
	prog, err := bpf.Assemble([]bpf.Instruction{
		bpf.LoadAbsolute{Off: 12, Size: 2},
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: unix.ETH_P_IPV6, SkipTrue: 5},
		bpf.LoadAbsolute{Off: ipv6Next, Size: 1},
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: unix.IPPROTO_ICMPV6, SkipTrue: 3},
		bpf.LoadAbsolute{Off: icmpType, Size: 1},
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: uint32(ipv6.ICMPTypeNeighborSolicitation), SkipTrue: 1},
		bpf.RetConstant{Val: 0xffff},
		bpf.RetConstant{Val: 0},
	})
	if err != nil {
		panic(fmt.Sprintf("assemble the NS filter: %v", err))
	}
	return prog
}()

// ndpSocket reads solicitations from a packet socket and does everything else through *ndp.Conn.
type ndpSocket struct {
	*ndp.Conn
	recv  frameReader
	index int
	buf   []byte // read buffer; ReadFrom is called by one goroutine
}

// frameReader is the receiving side of a packet socket (*packet.Conn), which reads whole frames.
type frameReader interface {
	ReadFrom(b []byte) (int, net.Addr, error)
	Close() error
}

// ReadFrom returns the next Neighbor Solicitation seen on the interface, unicast or multicast,
// with its source address. A frame that is not a valid solicitation returns an error wrapping
// errBadPacket, so that it is counted; the socket stays usable.
func (s *ndpSocket) ReadFrom() (ndp.Message, *ipv6.ControlMessage, netip.Addr, error) {
	if s.buf == nil {
		s.buf = make([]byte, 1600)
	}
	n, _, err := s.recv.ReadFrom(s.buf)
	if err != nil {
		return nil, nil, netip.Addr{}, err
	}
	m, src, err := parseNS(s.buf[:n])
	if err != nil {
		return nil, nil, netip.Addr{}, err
	}
	return m, &ipv6.ControlMessage{IfIndex: s.index}, src, nil
}

// Sizes in a frame carrying a Neighbor Solicitation.
const (
	ethHeaderLen  = 14
	ipv6HeaderLen = 40
	nsMinLen      = 24 // ICMPv6 type, code, checksum, reserved, target address (RFC 4861 4.3)
	ndpOptionUnit = 8  // option lengths count units of 8 bytes
	ndpOptSrcLLA  = 1  // source link-layer address option
)

// parseNS parses an Ethernet frame holding a Neighbor Solicitation and validates it as RFC 4861
// 7.1.1 asks (hop limit 255, ICMP code 0, length, checksum, non-multicast target, options of
// non-zero length, and for a source of :: a solicited-node destination and no source link-layer
// address); the checksum was checked by nobody else. Every length is checked before use: the
// frame comes from anyone on the LAN. Errors wrap errBadPacket.
func parseNS(frame []byte) (*ndp.NeighborSolicitation, netip.Addr, error) {
	bad := func(format string, args ...any) (*ndp.NeighborSolicitation, netip.Addr, error) {
		return nil, netip.Addr{}, fmt.Errorf("%w: Neighbor Solicitation: "+format, append([]any{errBadPacket}, args...)...)
	}
	if len(frame) < ethHeaderLen+ipv6HeaderLen || frame[12] != 0x86 || frame[13] != 0xdd {
		return bad("not an IPv6 frame (%d bytes)", len(frame))
	}
	hdr := frame[ethHeaderLen : ethHeaderLen+ipv6HeaderLen]
	plen := int(hdr[4])<<8 | int(hdr[5])
	switch {
	case hdr[0]>>4 != 6:
		return bad("IP version %d", hdr[0]>>4)
	case hdr[6] != unix.IPPROTO_ICMPV6:
		return bad("next header %d", hdr[6])
	case hdr[7] != 255:
		return bad("hop limit %d", hdr[7])
	case plen < nsMinLen:
		return bad("payload length %d", plen)
	case len(frame)-ethHeaderLen-ipv6HeaderLen < plen:
		return bad("payload length %d beyond the %d-byte frame", plen, len(frame))
	}
	src := netip.AddrFrom16([16]byte(hdr[8:24]))
	dst := netip.AddrFrom16([16]byte(hdr[24:40]))
	// Ethernet may pad short frames: the IPv6 payload length says where the message ends.
	body := frame[ethHeaderLen+ipv6HeaderLen : ethHeaderLen+ipv6HeaderLen+plen]
	if body[0] != byte(ipv6.ICMPTypeNeighborSolicitation) || body[1] != 0 {
		return bad("ICMPv6 type %d code %d", body[0], body[1])
	}
	if icmpv6Checksum(src, dst, body) != 0 {
		return bad("checksum")
	}
	target := netip.AddrFrom16([16]byte(body[8:24]))
	if target.IsMulticast() {
		return bad("multicast target %s", target)
	}
	srcLLA := false
	for opts := body[nsMinLen:]; len(opts) > 0; {
		if len(opts) < 2 || opts[1] == 0 || int(opts[1])*ndpOptionUnit > len(opts) {
			return bad("option length")
		}
		srcLLA = srcLLA || opts[0] == ndpOptSrcLLA
		opts = opts[int(opts[1])*ndpOptionUnit:]
	}
	if src.IsUnspecified() {
		if srcLLA {
			return bad("source link-layer address from ::")
		}
		if g, err := ndp.SolicitedNodeMulticast(target); err != nil || g != dst {
			return bad("from :: to %s, not the solicited-node group of %s", dst, target)
		}
	}
	return &ndp.NeighborSolicitation{TargetAddress: target}, src, nil
}

// icmpv6Checksum returns the one's complement sum over the IPv6 pseudo-header and body, which
// is 0 for a message with a correct checksum.
func icmpv6Checksum(src, dst netip.Addr, body []byte) uint16 {
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(b[i])<<8 | uint32(b[i+1])
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	s, d := src.As16(), dst.As16()
	add(s[:])
	add(d[:])
	n := len(body)
	add([]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n), 0, 0, 0, unix.IPPROTO_ICMPV6})
	add(body)
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

func (s *ndpSocket) Close() error {
	return errors.Join(s.Conn.Close(), s.recv.Close())
}

// inNetNS runs fn on an OS thread that is in the network namespace at path (the current one when
// path is ""). Sockets fn creates stay in that namespace. The thread is switched back afterwards;
// if that fails it is left locked so that it ends with its goroutine instead of serving others
// from the wrong namespace.
func inNetNS(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("current network namespace: %w", err)
			return
		}
		defer orig.Close()
		target, err := netns.GetFromPath(path)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open network namespace %s: %w", path, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter network namespace %s: %w", path, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("leave network namespace %s: %w", path, err))
			return // the thread stays locked and dies with this goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
