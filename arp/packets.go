package arp

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"
	"github.com/mdlayher/packet"
)

// errBadPacket marks a packet that is malformed or invalid: it is dropped and counted, and the
// socket keeps serving.
var errBadPacket = errors.New("bad packet")

// socketGone reports whether a read error means the socket is closed for good (closed by us, or
// broken) rather than a passing condition.
func socketGone(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	return !errors.Is(err, errBadPacket)
}

// readFailed handles a read error of a serving goroutine: silent when the socket was closed on
// purpose, otherwise logged, counted, and the interface is marked for reopening.
func (r *Responder) readFailed(l *link, closed *atomic.Bool, proto string, err error) {
	if closed.Load() || errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) {
		return
	}
	r.errors.Add(1)
	r.log.Warn("socket failed, reopening", "interface", l.Name, "protocol", proto, "err", err)
	l.broken.Store(true)
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// badPacketLogInterval is the least time between two logs of dropped packets: whoever controls
// the LAN controls how many arrive.
const badPacketLogInterval = time.Minute

// badPacket counts a dropped packet and logs it, at most once per badPacketLogInterval: at warn
// when handling it panicked (a bug in this program), else at debug.
func (r *Responder) badPacket(l *link, proto string, reason any, panicked bool) {
	n := r.badPackets.Add(1)
	now := time.Now().UnixNano()
	last := r.lastBadLog.Load()
	if now-last < int64(badPacketLogInterval) || !r.lastBadLog.CompareAndSwap(last, now) {
		return
	}
	if panicked {
		r.log.Warn("packet handling panicked; packet dropped", "interface", l.Name, "protocol", proto,
			"panic", fmt.Sprint(reason), "badPacketsTotal", n, "stack", string(debug.Stack()))
		return
	}
	r.log.Debug("bad packet dropped", "interface", l.Name, "protocol", proto, "err", fmt.Sprint(reason),
		"badPacketsTotal", n)
}

// serve runs one until it reports the socket gone. Each call of one handles one packet; a panic
// in it drops that packet, is counted, and serving goes on: one hostile frame must not take the
// agent down (nothing above recovers a serving goroutine's panic).
func (r *Responder) serve(l *link, proto string, one func() (gone bool)) {
	step := func() (gone bool) {
		defer func() {
			if p := recover(); p != nil {
				r.badPacket(l, proto, p, true)
				gone = false
			}
		}()
		return one()
	}
	for !step() {
	}
}

// serveARP answers ARP requests for l's owned IPv4 addresses until c is closed.
func (r *Responder) serveARP(l *link, c net.PacketConn, closed *atomic.Bool) {
	buf := make([]byte, 1600)
	r.serve(l, "ARP", func() bool {
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			if socketGone(err) {
				r.readFailed(l, closed, "ARP", err)
				return true
			}
			return false
		}
		req, err := parseARPRequest(buf[:n], l.HardwareAddr)
		if err != nil {
			r.badPacket(l, "ARP", err, false)
			return false
		}
		if req == nil || !l.owned()[req.TargetIP] {
			return false
		}
		cnt := r.counters(req.TargetIP)
		cnt.requests.Add(1)
		reply, err := arp.NewPacket(arp.OperationReply, l.HardwareAddr, req.TargetIP, req.SenderHardwareAddr, req.SenderIP)
		if err != nil {
			return false
		}
		if err := writeARP(c, reply, req.SenderHardwareAddr); err != nil {
			r.errors.Add(1)
			return false
		}
		r.arpAnswered.Add(1)
		cnt.responses.Add(1)
		return false
	})
}

// ARP over Ethernet for IPv4 (RFC 826): the only kind answered.
const (
	arpHardwareEthernet = 1
	arpProtocolIPv4     = 0x0800
)

// parseARPRequest returns the ARP request a frame carries, or nil for frames that are valid but
// not requests to answer: replies, frames whose Ethernet source is not the ARP sender (proxied or
// forged) and our own frames (a packet socket also sees what it sends). A frame that is not
// Ethernet carrying ARP for IPv4 over Ethernet returns an error wrapping errBadPacket.
func parseARPRequest(frame []byte, self net.HardwareAddr) (*arp.Packet, error) {
	var f ethernet.Frame
	if err := f.UnmarshalBinary(frame); err != nil {
		return nil, fmt.Errorf("%w: Ethernet: %w", errBadPacket, err)
	}
	if f.EtherType != ethernet.EtherTypeARP {
		return nil, fmt.Errorf("%w: EtherType %#04x", errBadPacket, uint16(f.EtherType))
	}
	var p arp.Packet
	if err := p.UnmarshalBinary(f.Payload); err != nil {
		return nil, fmt.Errorf("%w: ARP: %w", errBadPacket, err)
	}
	if p.HardwareType != arpHardwareEthernet || p.ProtocolType != arpProtocolIPv4 ||
		p.HardwareAddrLength != 6 || p.IPLength != 4 {
		return nil, fmt.Errorf("%w: ARP hardware type %d protocol %#04x lengths %d/%d", errBadPacket,
			p.HardwareType, p.ProtocolType, p.HardwareAddrLength, p.IPLength)
	}
	if p.Operation != arp.OperationRequest || !bytes.Equal(f.Source, p.SenderHardwareAddr) ||
		bytes.Equal(f.Source, self) || !p.TargetIP.Is4() {
		return nil, nil
	}
	return &p, nil
}

func writeARP(c net.PacketConn, p *arp.Packet, dst net.HardwareAddr) error {
	pb, err := p.MarshalBinary()
	if err != nil {
		return err
	}
	f := ethernet.Frame{Destination: dst, Source: p.SenderHardwareAddr, EtherType: ethernet.EtherTypeARP, Payload: pb}
	fb, err := f.MarshalBinary()
	if err != nil {
		return err
	}
	_, err = c.WriteTo(fb, &packet.Addr{HardwareAddr: dst})
	return err
}

// serveNDP answers Neighbor Solicitations for l's owned IPv6 addresses until c is closed.
func (r *Responder) serveNDP(l *link, c NDPConn, closed *atomic.Bool) {
	r.serve(l, "NDP", func() bool {
		m, cm, src, err := c.ReadFrom()
		if err != nil {
			if errors.Is(err, errBadPacket) {
				r.badPacket(l, "NDP", err, false)
			}
			if socketGone(err) {
				r.readFailed(l, closed, "NDP", err)
				return true
			}
			return false
		}
		ns, ok := m.(*ndp.NeighborSolicitation)
		if !ok || (cm != nil && cm.IfIndex != 0 && cm.IfIndex != l.Index) || !l.owned()[ns.TargetAddress] {
			return false
		}
		cnt := r.counters(ns.TargetAddress)
		cnt.requests.Add(1)
		na := &ndp.NeighborAdvertisement{Solicited: true, Override: true, TargetAddress: ns.TargetAddress,
			Options: []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Target, Addr: l.HardwareAddr}}}
		dst := src
		if !src.IsValid() || src.IsUnspecified() {
			// Duplicate address detection: the answer goes to everyone, unsolicited (RFC 4861 7.2.4).
			dst, na.Solicited = netip.IPv6LinkLocalAllNodes(), false
		}
		if err := c.WriteTo(na, nil, dst); err != nil {
			r.errors.Add(1)
			return false
		}
		r.ndpAnswered.Add(1)
		cnt.responses.Add(1)
		return false
	})
}

// announce sends the gratuitous announcements for a on l: an ARP request and an ARP reply, both
// broadcast with sender and target a (Linux updates an existing neighbour entry from either), or
// an unsolicited Neighbor Advertisement with the override flag to all nodes.
func (r *Responder) announce(l *link, a netip.Addr) error {
	if a.Is4() {
		if l.arp == nil {
			return nil
		}
		for _, op := range []arp.Operation{arp.OperationRequest, arp.OperationReply} {
			p, err := arp.NewPacket(op, l.HardwareAddr, a, ethernet.Broadcast, a)
			if err != nil {
				return fmt.Errorf("gratuitous ARP for %s: %w", a, err)
			}
			if err := writeARP(l.arp, p, ethernet.Broadcast); err != nil {
				return fmt.Errorf("gratuitous ARP for %s on %s: %w", a, l.Name, err)
			}
			r.gratuitous.Add(1)
			r.counters(a).gratuitous.Add(1)
		}
		return nil
	}
	if l.ndp == nil {
		return nil
	}
	na := &ndp.NeighborAdvertisement{Override: true, TargetAddress: a,
		Options: []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Target, Addr: l.HardwareAddr}}}
	if err := l.ndp.WriteTo(na, nil, netip.IPv6LinkLocalAllNodes()); err != nil {
		return fmt.Errorf("unsolicited NA for %s on %s: %w", a, l.Name, err)
	}
	r.gratuitous.Add(1)
	r.counters(a).gratuitous.Add(1)
	return nil
}

// join subscribes l's NDP socket to a's solicited-node group, where solicitations for a arrive.
// Addresses sharing their low 24 bits share a group, hence the count.
func (l *link) join(a netip.Addr) error {
	g, err := ndp.SolicitedNodeMulticast(a)
	if err != nil {
		return err
	}
	if l.groups[g] == 0 {
		if err := l.ndp.JoinGroup(g); err != nil {
			return fmt.Errorf("join %s on %s: %w", g, l.Name, err)
		}
	}
	l.groups[g]++
	return nil
}

func (l *link) leave(a netip.Addr) error {
	g, err := ndp.SolicitedNodeMulticast(a)
	if err != nil || l.groups[g] == 0 {
		return err
	}
	l.groups[g]--
	if l.groups[g] > 0 {
		return nil
	}
	delete(l.groups, g)
	if err := l.ndp.LeaveGroup(g); err != nil {
		return fmt.Errorf("leave %s on %s: %w", g, l.Name, err)
	}
	return nil
}
