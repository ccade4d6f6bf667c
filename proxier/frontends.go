package proxier

import (
	"slices"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// ServiceClaim is one Service's ports, as the model made them, competing for their frontends.
type ServiceClaim struct {
	Name types.NamespacedName
	// Created is the Service's creation time (see Claim).
	Created time.Time
	Ports   []*ServicePort
}

// ServiceOutcome is what one Service keeps of its ports after ResolveServices.
type ServiceOutcome struct {
	Name types.NamespacedName
	// Ports are the claim's ports without the frontends they lost, in claim order; a port that
	// lost its cluster IP is left out.
	Ports []*ServicePort
	// Lost are the frontends the service lost, sorted as Resolution.Conflicts.
	Lost []Conflict
	// Problems say the same as Lost to the Service's owner: one per distinct reason.
	Problems []Problem
}

// ResolveServices settles the frontends the ports of several Services claim, and returns what
// each keeps, in input order:
//
//  1. Every port of every service claims its frontends (ResolveFrontends decides who keeps what).
//  2. Each service keeps its ports that were not left out, without the frontends they lost.
//  3. Its losses become Problems, one per reason: a dual-stack port loses a node port once per
//     family, but its owner reads one sentence.
func ResolveServices(in []ServiceClaim) []ServiceOutcome {
	var claims []Claim
	for _, s := range in { // 1
		for _, sp := range s.Ports {
			claims = append(claims, Claim{Port: sp, Created: s.Created})
		}
	}
	res := ResolveFrontends(claims)
	out := make([]ServiceOutcome, len(in))
	i := 0
	for j, s := range in { // 2
		o := ServiceOutcome{Name: s.Name}
		for range s.Ports {
			if sp := res.Ports[i]; sp != nil {
				o.Ports = append(o.Ports, sp)
			}
			i++
		}
		for _, c := range res.Conflicts {
			if c.Port.NamespacedName == s.Name {
				o.Lost = append(o.Lost, c)
			}
		}
		for _, c := range o.Lost { // 3
			p := Problem{Kind: "Service", Object: s.Name, Reason: c.String()}
			if !slices.Contains(o.Problems, p) {
				o.Problems = append(o.Problems, p)
			}
		}
		out[j] = o
	}
	return out
}

// frontendIndex resolves frontend conflicts incrementally. It remembers every service's claim,
// who claims each frontend and what each service lost, so that a change resolves only the
// services linked to a changed one by shared frontends (through ResolveServices), and reports
// only the outcomes that differ from before.
type frontendIndex struct {
	raw    map[types.NamespacedName]ServiceClaim  // services with ports
	claims map[frontendKey][]types.NamespacedName // sorted claimants of every frontend
	lost   map[types.NamespacedName][]Conflict
}

func newFrontendIndex() frontendIndex {
	return frontendIndex{raw: map[types.NamespacedName]ServiceClaim{},
		claims: map[frontendKey][]types.NamespacedName{}, lost: map[types.NamespacedName][]Conflict{}}
}

// set replaces the claim of service c.Name (no ports: it claims nothing) and adds to seeds
// every service that shares, or shared, a frontend with it, itself included: those are the
// services whose frontends may change hands.
func (x *frontendIndex) set(c ServiceClaim, seeds map[types.NamespacedName]bool) {
	k := c.Name
	seeds[k] = true
	x.setClaims(k, false, seeds)
	if len(c.Ports) > 0 {
		x.raw[k] = c
	} else {
		delete(x.raw, k)
	}
	x.setClaims(k, true, seeds)
}

// resolve settles the frontends of the components of seeds (from set) and passes apply the
// outcome of every service in changed and of every other service whose losses changed. A
// service left without ports has an outcome without ports.
func (x *frontendIndex) resolve(seeds, changed map[types.NamespacedName]bool, apply func(ServiceOutcome)) {
	seen := make(map[types.NamespacedName]bool, len(seeds))
	for k := range seeds {
		if seen[k] {
			continue
		}
		comp, contested := x.component(k, seen)
		if !contested {
			// The common case: nobody shares anything with these services.
			for _, k := range comp {
				x.settle(ServiceOutcome{Name: k, Ports: x.raw[k].Ports}, changed, apply)
			}
			continue
		}
		slices.SortFunc(comp, compareKeys)
		in := make([]ServiceClaim, len(comp))
		for i, k := range comp {
			in[i] = x.raw[k]
			in[i].Name = k
		}
		for _, o := range ResolveServices(in) {
			x.settle(o, changed, apply)
		}
	}
}

// settle records o's losses and passes it on, unless the service did not change and lost the
// same frontends as before: then it keeps the same effective ports, unchanged.
func (x *frontendIndex) settle(o ServiceOutcome, changed map[types.NamespacedName]bool, apply func(ServiceOutcome)) {
	if !changed[o.Name] && slices.Equal(o.Lost, x.lost[o.Name]) {
		return
	}
	if len(o.Lost) > 0 {
		x.lost[o.Name] = o.Lost
	} else {
		delete(x.lost, o.Name)
	}
	apply(o)
}

// setClaims adds (or removes) the frontends of k's ports to the index of who claims what, and
// adds every other claimant of them to seeds.
func (x *frontendIndex) setClaims(k types.NamespacedName, add bool, seeds map[types.NamespacedName]bool) {
	for _, sp := range x.raw[k].Ports {
		for _, fe := range keysOf(sp) {
			if add {
				x.claim(fe, k)
			} else {
				x.unclaim(fe, k)
			}
			for _, o := range x.claims[fe] {
				seeds[o] = true
			}
		}
	}
}

// component returns the services linked to k by shared frontends (k included), marking them
// seen, and whether any frontend among them has more than one claim. Only those services
// decide who keeps their frontends, so they can be resolved apart from the rest.
func (x *frontendIndex) component(k types.NamespacedName, seen map[types.NamespacedName]bool) ([]types.NamespacedName, bool) {
	seen[k] = true
	comp := []types.NamespacedName{k}
	contested := false
	for i := 0; i < len(comp); i++ {
		for _, sp := range x.raw[comp[i]].Ports {
			for _, fe := range keysOf(sp) {
				owners := x.claims[fe]
				contested = contested || len(owners) > 1
				for _, o := range owners {
					if !seen[o] {
						seen[o] = true
						comp = append(comp, o)
					}
				}
			}
		}
	}
	return comp, contested
}

// claim records one claim of fe by k. A service may claim one frontend more than once (its ports
// share its health check; hostile objects repeat a port): the owners list keeps every claim, so
// that a frontend claimed twice is seen as contested.
func (x *frontendIndex) claim(fe frontendKey, k types.NamespacedName) {
	owners := x.claims[fe]
	i, _ := slices.BinarySearchFunc(owners, k, compareKeys)
	x.claims[fe] = slices.Insert(owners, i, k)
}

// unclaim removes one claim of fe by k.
func (x *frontendIndex) unclaim(fe frontendKey, k types.NamespacedName) {
	owners := x.claims[fe]
	i, found := slices.BinarySearchFunc(owners, k, compareKeys)
	if !found {
		return
	}
	owners = slices.Delete(owners, i, i+1)
	if len(owners) == 0 {
		delete(x.claims, fe)
		return
	}
	x.claims[fe] = owners
}
