package nft

import (
	"encoding/binary"
	"net/netip"
)

// nft's numbers of the key types, for a set's key type (concatenations shift them by
// ConcatBits each).
const (
	TypeInteger     = 4
	TypeIPv4Addr    = 7
	TypeIPv6Addr    = 8
	TypeInetProto   = 12
	TypeInetService = 13
	ConcatBits      = 6
)

// AddrTypeNum is nft's type number of f's addresses.
func (f *Family) AddrTypeNum() uint32 {
	if f.AddrLen == 16 {
		return TypeIPv6Addr
	}
	return TypeIPv4Addr
}

// KeyLayout returns the nft type numbers and byte lengths of a key's fields.
func KeyLayout(f *Family, kind SetKind) (types []uint32, lens []uint32) {
	switch kind {
	case KeyAddr:
		return []uint32{f.AddrTypeNum()}, []uint32{f.AddrLen}
	case KeyAddrAddr:
		return []uint32{f.AddrTypeNum(), f.AddrTypeNum()}, []uint32{f.AddrLen, f.AddrLen}
	case KeyAddrProtoPort:
		return []uint32{f.AddrTypeNum(), TypeInetProto, TypeInetService}, []uint32{f.AddrLen, 1, 2}
	case KeyAddrProtoPortSlot:
		return []uint32{f.AddrTypeNum(), TypeInetProto, TypeInetService, TypeInteger}, []uint32{f.AddrLen, 1, 2, 4}
	case KeyProtoPortSlot:
		return []uint32{TypeInetProto, TypeInetService, TypeInteger}, []uint32{1, 2, 4}
	case KeyAddrProtoPortAddr:
		return []uint32{f.AddrTypeNum(), TypeInetProto, TypeInetService, f.AddrTypeNum()}, []uint32{f.AddrLen, 1, 2, f.AddrLen}
	default:
		return []uint32{TypeInetProto, TypeInetService}, []uint32{1, 2}
	}
}

// AppendKeyBytes encodes an element key as the kernel stores it: fields in network order, each
// padded to 4 bytes (the numgen slot in host order, as numgen writes it).
func AppendKeyBytes(dst []byte, kind SetKind, k Key) []byte {
	protoPort := func() {
		dst = append(dst, k.Proto, 0, 0, 0)
		dst = binary.BigEndian.AppendUint16(dst, k.Port)
		dst = append(dst, 0, 0)
	}
	switch kind {
	case KeyAddr:
		dst = AppendAddr(dst, k.Addr)
	case KeyAddrAddr:
		dst = AppendAddr(dst, k.Addr)
		dst = AppendAddr(dst, k.Addr)
	case KeyAddrProtoPort:
		dst = AppendAddr(dst, k.Addr)
		protoPort()
	case KeyProtoPort:
		protoPort()
	case KeyAddrProtoPortSlot:
		dst = AppendAddr(dst, k.Addr)
		protoPort()
		dst = binary.NativeEndian.AppendUint32(dst, k.Slot)
	case KeyProtoPortSlot:
		protoPort()
		dst = binary.NativeEndian.AppendUint32(dst, k.Slot)
	case KeyAddrProtoPortAddr:
		dst = AppendAddr(dst, k.Addr)
		protoPort()
		dst = AppendAddr(dst, k.Addr)
	}
	return dst
}

// AppendAddr appends a's bytes (4 or 16) without the allocation of AsSlice: a first sync
// encodes half a million addresses.
func AppendAddr(dst []byte, a netip.Addr) []byte {
	if a.Is4() {
		b := a.As4()
		return append(dst, b[:]...)
	}
	b := a.As16()
	return append(dst, b[:]...)
}
