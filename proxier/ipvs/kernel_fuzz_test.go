package ipvs

import (
	"syscall"
	"testing"

	mipvs "github.com/moby/ipvs"
)

// FuzzKernelKeys feeds arbitrary virtual and real servers, as the kernel could list them, to the
// code that reads them: it never panics, and what it reads addresses the same object again
// (a key that did not round-trip would make Sync update or delete the wrong virtual server).
func FuzzKernelKeys(f *testing.F) {
	f.Add([]byte{10, 96, 0, 10}, false, uint8(6), uint16(80), uint32(0))
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1}, true, uint8(17), uint16(53), uint32(0))
	f.Add([]byte{0xfd, 0, 0, 0x96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10}, true, uint8(132), uint16(9999), uint32(0))
	f.Add([]byte{}, false, uint8(6), uint16(0), uint32(7))
	f.Fuzz(func(t *testing.T, addr []byte, v6 bool, proto uint8, port uint16, fwmark uint32) {
		fam := uint16(syscall.AF_INET)
		if v6 {
			fam = syscall.AF_INET6
		}
		svc := &mipvs.Service{Address: addr, AddressFamily: fam, Protocol: uint16(proto), Port: port, FWMark: fwmark}
		if k, ok := keyOf(svc); ok {
			if !k.Addr.IsValid() {
				t.Fatalf("keyOf(%+v) = invalid address", svc)
			}
			if again, ok := keyOf(kernelService(k)); !ok || again != k {
				t.Fatalf("key %v does not round-trip: %v %v", k, again, ok)
			}
		}
		d := &mipvs.Destination{Address: addr, AddressFamily: fam, Port: port}
		ap := destAddr(d)
		if ap.Addr().IsValid() {
			if again := destAddr(newDest(ap, 1)); again != ap {
				t.Fatalf("real server %v does not round-trip: %v", ap, again)
			}
		}
	})
}
