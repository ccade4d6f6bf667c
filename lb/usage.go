package lb

import (
	"math"
	"math/big"
	"net/netip"

	"k8s.io/apimachinery/pkg/types"
)

// PoolUsage is how many addresses one pool has and how many of them services use: MetalLB's
// allocator metrics (metallb_allocator_addresses_total and _in_use_total, and their ipv4_ and
// ipv6_ variants).
type PoolUsage struct {
	// Total, IPv4 and IPv6 count usable addresses (avoidBuggyIPs leaves out IPv4 .0 and .255),
	// capped at math.MaxInt64 as MetalLB caps an enormous IPv6 pool.
	Total, IPv4, IPv6 int64
	// InUse, InUseIPv4 and InUseIPv6 count distinct addresses held by at least one service.
	InUse, InUseIPv4, InUseIPv6 int64
	// Services counts the services holding at least one of the pool's addresses
	// (metallb_allocator_services_allocated_total): a dual-stack service, or several sharing
	// one address, each count once.
	Services int64
}

// usage counts every valid pool's addresses and those a holds.
func (a *allocator) usage() map[string]PoolUsage {
	out := make(map[string]PoolUsage, len(a.pools))
	for _, p := range a.pools {
		var u PoolUsage
		for _, r := range p.ranges {
			n := r.size(p.avoidBuggy)
			if r.Is4() {
				u.IPv4 = addCapped(u.IPv4, n)
			} else {
				u.IPv6 = addCapped(u.IPv6, n)
			}
			u.Total = addCapped(u.Total, n)
		}
		out[p.name] = u
	}
	services := map[string]map[types.NamespacedName]bool{}
	for addr, use := range a.used {
		u, ok := out[use.pool]
		if !ok {
			continue
		}
		if services[use.pool] == nil {
			services[use.pool] = map[types.NamespacedName]bool{}
		}
		for _, s := range use.services {
			if !services[use.pool][s] {
				services[use.pool][s] = true
				u.Services++
			}
		}
		u.InUse++
		if addr.Is4() {
			u.InUseIPv4++
		} else {
			u.InUseIPv6++
		}
		out[use.pool] = u
	}
	return out
}

func addCapped(a, b int64) int64 {
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}

// size counts r's addresses, leaving out IPv4 addresses ending in .0 and .255 when avoidBuggy,
// capped at math.MaxInt64.
func (r Range) size(avoidBuggy bool) int64 {
	first, last := new(big.Int).SetBytes(r.First.AsSlice()), new(big.Int).SetBytes(r.Last.AsSlice())
	n := new(big.Int).Sub(last, first)
	n.Add(n, big.NewInt(1))
	if avoidBuggy && r.Is4() {
		// Buggy addresses below x: those ending in .0 at or below it, and in .255 below it.
		below := func(a netip.Addr) int64 { // .0s in [0, a] plus .255s in [0, a]
			v := int64(ipv4Uint(a))
			return v/256 + 1 + (v+1)/256
		}
		before := int64(0)
		if p := r.First.Prev(); p.IsValid() {
			before = below(p)
		}
		n.Sub(n, big.NewInt(below(r.Last)-before))
	}
	if !n.IsInt64() {
		return math.MaxInt64
	}
	return n.Int64()
}

func ipv4Uint(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}
