// Package nft is the vocabulary that both users of nftables share: the nftables mode
// (proxier/nftables) and the ipvs mode's helper tables (proxier/ipvs). It describes families,
// set key layouts and their elements (as nft text and as the kernel's bytes), protocol and
// object names, and the expressions of the matches and statements both modes write. Each mode
// keeps its own tables and how it talks to the kernel.
package nft

import (
	"crypto/sha256"
	"encoding/base32"
	"net/netip"
	"strconv"

	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"

	"nodeagent/proxier"
)

// Family is one IP family's table and the constants that differ between ip and ip6.
type Family struct {
	PF       proxier.Family
	Name     string // nft family keyword and payload protocol: "ip" or "ip6"
	NFProto  byte   // NFPROTO_IPV4 / NFPROTO_IPV6, also the table family
	AddrLen  uint32 // bytes in an address
	SaddrOff uint32 // offset of the source address in the network header
	DaddrOff uint32 // offset of the destination address in the network header
	AddrType string // nft type name of an address
	Loopback netip.Prefix
}

// The two families, shared: code compares them by pointer.
var (
	IPv4 = &Family{PF: proxier.IPv4, Name: "ip", NFProto: unix.NFPROTO_IPV4, AddrLen: 4, SaddrOff: 12, DaddrOff: 16,
		AddrType: "ipv4_addr", Loopback: netip.MustParsePrefix("127.0.0.0/8")}
	IPv6 = &Family{PF: proxier.IPv6, Name: "ip6", NFProto: unix.NFPROTO_IPV6, AddrLen: 16, SaddrOff: 8, DaddrOff: 24,
		AddrType: "ipv6_addr", Loopback: netip.MustParsePrefix("::1/128")}
)

// FamilyOf returns the Family of f.
func FamilyOf(f proxier.Family) *Family {
	if f == proxier.IPv6 {
		return IPv6
	}
	return IPv4
}

// AddrOffset is the offset of the source (src) or destination address in the network header.
func (f *Family) AddrOffset(src bool) uint32 {
	if src {
		return f.SaddrOff
	}
	return f.DaddrOff
}

// ProtoNum is the IP protocol number of a Service protocol (TCP when unknown).
func ProtoNum(p v1.Protocol) uint8 {
	switch p {
	case v1.ProtocolUDP:
		return unix.IPPROTO_UDP
	case v1.ProtocolSCTP:
		return unix.IPPROTO_SCTP
	}
	return unix.IPPROTO_TCP
}

// ProtoName is nft's name of an IP protocol number, or the number.
func ProtoName(p uint8) string {
	switch p {
	case unix.IPPROTO_TCP:
		return "tcp"
	case unix.IPPROTO_UDP:
		return "udp"
	case unix.IPPROTO_SCTP:
		return "sctp"
	}
	return strconv.Itoa(int(p))
}

// MaxNameLen keeps generated names well inside the kernel's 256-byte limit; the hash in every
// generated name keeps truncated names unique.
const MaxNameLen = 200

// ObjectName is prefix-HASH-readable, truncated to MaxNameLen, HASH taken of hashInput: stable
// across restarts and unique.
func ObjectName(prefix, readable, hashInput string) string {
	sum := sha256.Sum256([]byte(hashInput))
	name := prefix + "-" + base32.StdEncoding.EncodeToString(sum[:])[:8] + "-" + readable
	if len(name) > MaxNameLen {
		name = name[:MaxNameLen]
	}
	return name
}
