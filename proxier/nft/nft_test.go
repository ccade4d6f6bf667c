package nft

import (
	"encoding/hex"
	"net/netip"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestKeys pins every key layout as nft text and as the kernel's bytes (fields padded to 4
// bytes, the numgen slot in host order).
func TestKeys(t *testing.T) {
	k4 := Key{Addr: netip.MustParseAddr("10.96.0.10"), Proto: unix.IPPROTO_TCP, Port: 80, Slot: 2}
	k6 := Key{Addr: netip.MustParseAddr("fd00::1"), Proto: unix.IPPROTO_SCTP, Port: 9999}
	slot := hex.EncodeToString([]byte{2, 0, 0, 0}) // little endian host
	for _, c := range []struct {
		kind       SetKind
		k          Key
		text, wire string
	}{
		{KeyAddr, k4, "10.96.0.10", "0a60000a"},
		{KeyAddrAddr, k4, "10.96.0.10 . 10.96.0.10", "0a60000a0a60000a"},
		{KeyAddrProtoPort, k4, "10.96.0.10 . tcp . 80", "0a60000a0600000000500000"},
		{KeyProtoPort, k4, "tcp . 80", "0600000000500000"},
		{KeyAddrProtoPortSlot, k4, "10.96.0.10 . tcp . 80 . 2", "0a60000a0600000000500000" + slot},
		{KeyProtoPortSlot, k4, "tcp . 80 . 2", "0600000000500000" + slot},
		{KeyAddrProtoPortAddr, k4, "10.96.0.10 . tcp . 80 . 10.96.0.10", "0a60000a06000000005000000a60000a"},
		{KeyAddrProtoPort, k6, "fd00::1 . sctp . 9999", "fd000000000000000000000000000001" + "84000000270f0000"},
	} {
		if got := string(AppendKey(nil, c.kind, c.k)); got != c.text {
			t.Errorf("kind %d: text %q, want %q", c.kind, got, c.text)
		}
		if got := hex.EncodeToString(AppendKeyBytes(nil, c.kind, c.k)); got != c.wire {
			t.Errorf("kind %d: bytes %s, want %s", c.kind, got, c.wire)
		}
		f := IPv4
		if c.k.Addr.Is6() {
			f = IPv6
		}
		types, lens := KeyLayout(f, c.kind)
		n := 0
		for _, l := range lens {
			n += int(l+3) &^ 3
		}
		if len(types) != len(lens) || (len(lens) > 1 && n != len(c.wire)/2) {
			t.Errorf("kind %d: layout %v %v does not describe %d bytes", c.kind, types, lens, len(c.wire)/2)
		}
	}
}

// TestObjectName: names are stable, carry the hash of their input, and stay inside the limit.
func TestObjectName(t *testing.T) {
	a := ObjectName("service", "default/web/tcp/http", "default/web/tcp/http")
	if a != ObjectName("service", "default/web/tcp/http", "default/web/tcp/http") || !strings.HasPrefix(a, "service-") ||
		!strings.HasSuffix(a, "-default/web/tcp/http") {
		t.Errorf("ObjectName = %q", a)
	}
	if b := ObjectName("service", "default/web/tcp/http", "other input"); b == a {
		t.Error("the hash does not follow the hash input")
	}
	long := ObjectName("endpoint", strings.Repeat("x", 300), "h")
	if len(long) != MaxNameLen {
		t.Errorf("a long name has %d bytes, want %d", len(long), MaxNameLen)
	}
}
