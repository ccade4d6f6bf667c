package arp

import (
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/mdlayher/ndp"
)

// Seeds beyond those built here are in testdata/fuzz/<target>/ (the frame of issue 11 among them).

func FuzzParseARP(f *testing.F) {
	f.Add(arpFrame(f, 1, clientMAC, clientMAC, clientIP, vip))
	f.Add(arpFrame(f, 2, clientMAC, clientMAC, clientIP, vip))
	self := net.HardwareAddr{2, 0, 0, 0, 0, 2}
	f.Fuzz(func(t *testing.T, frame []byte) {
		p, err := parseARPRequest(frame, self)
		if err != nil {
			if p != nil || !errors.Is(err, errBadPacket) {
				t.Fatalf("packet %v with error %v", p, err)
			}
			return
		}
		if p == nil {
			return
		}
		// What serveARP relies on to build its answer.
		if len(p.SenderHardwareAddr) != 6 || !p.TargetIP.Is4() || !p.SenderIP.Is4() {
			t.Fatalf("request %+v", p)
		}
	})
}

func FuzzParseNS(f *testing.F) {
	group := netip.MustParseAddr("ff02::1:ff00:51")
	f.Add(nsFrame(f, &ndp.NeighborSolicitation{TargetAddress: vip6,
		Options: []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Source, Addr: clientMAC}}}, client6, group, 255))
	f.Add(nsFrame(f, &ndp.NeighborSolicitation{TargetAddress: vip6}, netip.IPv6Unspecified(), group, 255))
	f.Add(shortNSFrame())
	f.Fuzz(func(t *testing.T, frame []byte) {
		ns, src, err := parseNS(frame)
		if err != nil {
			if ns != nil || !errors.Is(err, errBadPacket) {
				t.Fatalf("message %v with error %v", ns, err)
			}
			return
		}
		if !ns.TargetAddress.Is6() || ns.TargetAddress.IsMulticast() || !src.Is6() {
			t.Fatalf("solicitation for %s from %s", ns.TargetAddress, src)
		}
		// An answer can be built for it.
		na := &ndp.NeighborAdvertisement{TargetAddress: ns.TargetAddress,
			Options: []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Target, Addr: clientMAC}}}
		if _, err := ndp.MarshalMessage(na); err != nil {
			t.Fatalf("answer for %s: %v", ns.TargetAddress, err)
		}
	})
}
