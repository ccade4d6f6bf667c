package arp

import (
	"net"
	"net/netip"
	"testing"

	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"
	"golang.org/x/net/bpf"
)

// nsFrame builds an Ethernet frame holding an ICMPv6 message from src to dst.
func nsFrame(t *testing.T, m ndp.Message, src, dst netip.Addr, hopLimit byte) []byte {
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
	tests := []struct {
		name           string
		frame          []byte
		filter, parsed bool
	}{
		{"multicast NS", good, true, true},
		{"unicast NS", nsFrame(t, ns, client6, vip6, 255), true, true},
		{"DAD NS", nsFrame(t, ns, netip.IPv6Unspecified(), group, 255), true, true},
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
		m, src, ok := parseNS(tc.frame)
		if ok != tc.parsed {
			t.Errorf("%s: parsed %v, want %v", tc.name, ok, tc.parsed)
			continue
		}
		if ok && (m.TargetAddress != vip6 || (src != client6 && !src.IsUnspecified())) {
			t.Errorf("%s: parsed %+v from %s", tc.name, m, src)
		}
	}
}
