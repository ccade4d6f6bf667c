package proxier

import (
	"maps"
	"net/netip"
	"slices"

	"k8s.io/apimachinery/pkg/types"
)

// view is what the proxiers read, kept between snapshots: every service's ports after conflicts,
// laid out flat in service order, their endpoint count and the problems. The tracker applies the
// services that changed and asks it for a State.
//
// Ownership: every State handed out belongs to its holder and is never written again, except
// through Tracker.Next, by which the holder gives the latest one back. Laying out 25,000 ports
// afresh (and collecting the old copy) costs ten times more than patching a handed-back one in
// place, so the sync loop hands back; a caller that keeps its States (tests, one-shot commands)
// pays for the copy.
type view struct {
	keys      []types.NamespacedName // services with ports before conflicts, sorted
	effective map[types.NamespacedName][]*ServicePort
	endpoints int                                // across effective
	problems  map[types.NamespacedName][]Problem // invalid parts of each service
	conflicts map[types.NamespacedName][]Problem // frontends each service lost, one per reason
	// last is the latest State handed out, and flat its Services as built (last's holder may
	// have cleared it by handing it back).
	last *State
	flat []*ServicePort
}

func newView() view {
	return view{effective: map[types.NamespacedName][]*ServicePort{}, problems: map[types.NamespacedName][]Problem{},
		conflicts: map[types.NamespacedName][]Problem{}}
}

// setProblems records the invalid parts of service k and returns those not recorded before.
func (v *view) setProblems(k types.NamespacedName, ps []Problem) []Problem {
	fresh := newProblems(v.problems[k], ps)
	store(v.problems, k, ps)
	return fresh
}

// apply records the outcome of service k after conflicts and returns the conflicts not recorded
// before.
func (v *view) apply(o ServiceOutcome) []Problem {
	k := o.Name
	for _, sp := range v.effective[k] {
		v.endpoints -= len(sp.AllEndpoints)
	}
	for _, sp := range o.Ports {
		v.endpoints += len(sp.AllEndpoints)
	}
	if len(o.Ports) > 0 {
		v.effective[k] = o.Ports
	} else {
		delete(v.effective, k)
	}
	fresh := newProblems(v.conflicts[k], o.Problems)
	store(v.conflicts, k, o.Problems)
	return fresh
}

func newProblems(old, ps []Problem) []Problem {
	var out []Problem
	for _, p := range ps {
		if !slices.Contains(old, p) {
			out = append(out, p)
		}
	}
	return out
}

func store(m map[types.NamespacedName][]Problem, k types.NamespacedName, ps []Problem) {
	if len(ps) == 0 {
		delete(m, k)
		return
	}
	m[k] = ps
}

// state returns a new State holding the view, for node and config, after the services in
// changed were applied. rebuild lays every service out afresh; handedBack says the holder of
// v.last gave it back, so that its Services may be patched in place.
func (v *view) state(node Node, config Config, cidrs []netip.Prefix, changed map[types.NamespacedName]bool, rebuild, handedBack bool) *State {
	st := &State{Node: node, Config: config, Services: v.flatten(changed, rebuild, handedBack), EndpointCount: v.endpoints,
		ServiceCIDRs: cidrs}
	pk := map[types.NamespacedName]bool{}
	for k := range v.problems {
		pk[k] = true
	}
	for k := range v.conflicts {
		pk[k] = true
	}
	for _, k := range slices.SortedFunc(maps.Keys(pk), compareKeys) {
		st.Problems = append(st.Problems, v.problems[k]...)
		st.Problems = append(st.Problems, v.conflicts[k]...)
	}
	v.last, v.flat = st, st.Services
	return st
}

// flatten returns the effective ports of every key in order. A few changed keys patch the last
// layout, found by binary search (it is sorted by service): adding or removing one service among
// 25,000 then costs a memmove, not a walk of every key. The last layout is patched in place only
// when it was handed back; otherwise a copy is.
func (v *view) flatten(changed map[types.NamespacedName]bool, rebuild, handedBack bool) []*ServicePort {
	if rebuild || v.last == nil || len(changed) > 64 {
		return v.rebuildFlat()
	}
	flat := v.flat
	if !handedBack {
		// Room for a few more, so that an added service does not copy it all again.
		flat = make([]*ServicePort, len(v.flat), len(v.flat)+len(v.flat)/64+8)
		copy(flat, v.flat)
	}
	for k := range changed {
		i, _ := slices.BinarySearchFunc(flat, k, func(sp *ServicePort, k types.NamespacedName) int {
			return compareKeys(sp.Name.NamespacedName, k)
		})
		j := i
		for j < len(flat) && flat[j].Name.NamespacedName == k {
			j++
		}
		flat = slices.Replace(flat, i, j, v.effective[k]...)
	}
	return flat
}

// rebuildFlat lays out every key's effective ports afresh.
func (v *view) rebuildFlat() []*ServicePort {
	flat := make([]*ServicePort, 0, len(v.flat))
	for _, k := range v.keys {
		flat = append(flat, v.effective[k]...)
	}
	return flat
}

// setKeys adds the keys marked present to the sorted v.keys and removes the others. A few are
// placed one by one; many (a first sync: map order is random) are merged in one sort, since
// inserting them one at a time would move the slice's tail for each.
func (v *view) setKeys(present map[types.NamespacedName]bool) {
	if len(present) <= 64 {
		for k, p := range present {
			i, found := slices.BinarySearchFunc(v.keys, k, compareKeys)
			switch {
			case p && !found:
				v.keys = slices.Insert(v.keys, i, k)
			case !p && found:
				v.keys = slices.Delete(v.keys, i, i+1)
			}
		}
		return
	}
	keys := v.keys[:0:0]
	for _, k := range v.keys {
		if p, ok := present[k]; !ok || p {
			keys = append(keys, k)
		}
		delete(present, k) // what remains is new
	}
	for k, p := range present {
		if p {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, compareKeys)
	v.keys = keys
}

func compareKeys(a, b types.NamespacedName) int {
	if a.Namespace != b.Namespace {
		if a.Namespace < b.Namespace {
			return -1
		}
		return 1
	}
	switch {
	case a.Name < b.Name:
		return -1
	case a.Name > b.Name:
		return 1
	}
	return 0
}
