package metallb

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"hash"
	"maps"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"nodeagent/bgp"
	"nodeagent/lb"
)

// DigestSize is the length of each half of a PlanDigest: 96 bits, enough that two different
// plans do not collide by chance, small enough for memberlist metadata.
const DigestSize = 12

// PlanDigest sums up one agent's view and decisions, so that agents can compare them over
// memberlist without exchanging the objects: equal Inputs and different Decisions mean that
// two agents decided differently from the same view (a bug, or a configuration that differs:
// --lb-class, say); different Inputs are normal for a moment while changes propagate.
type PlanDigest struct {
	// Inputs covers what the decisions are made from: the served Services and their
	// EndpointSlices, pools, advertisements, peers, communities, BFD profiles, Namespaces (by
	// resourceVersion), every Node's labels and eligibility, and the alive members.
	Inputs [DigestSize]byte
	// Decision covers every service's addresses and pool, every address's layer-2 owner and
	// interfaces, and the BGP routes of every node — not only this node's.
	Decision [DigestSize]byte
}

// digestWriter hashes sorted lines.
type digestWriter struct{ lines []string }

func (d *digestWriter) add(format string, args ...any) {
	d.lines = append(d.lines, fmt.Sprintf(format, args...))
}

func (d *digestWriter) sum() [DigestSize]byte {
	slices.Sort(d.lines)
	h := sha256.New()
	for _, l := range d.lines {
		writeLine(h, l)
	}
	var out [DigestSize]byte
	copy(out[:], h.Sum(nil))
	return out
}

func writeLine(h hash.Hash, l string) {
	h.Write([]byte(l))
	h.Write([]byte{0})
}

// stamp identifies one version of an object: its resourceVersion (API mode), or, when it has
// none (manifests), a hash of its content.
func stamp(kind string, o metav1.Object, content any) string {
	rv := o.GetResourceVersion()
	if rv == "" {
		b, err := json.Marshal(content)
		if err != nil {
			b = []byte(err.Error())
		}
		s := sha256.Sum256(b)
		rv = fmt.Sprintf("sha:%x", s[:8])
	}
	return kind + " " + o.GetNamespace() + "/" + o.GetName() + " " + rv
}

// nodeLine is what the decisions read of a Node: its labels and whether it may announce. Status
// heartbeats change its resourceVersion every few seconds, so that is left out.
func nodeLine(n *v1.Node) string {
	return fmt.Sprintf("Node %s [%s] unusable=%q excluded=%q", n.Name, labelsLine(n.Labels), lb.NodeUnusableReason(n), lb.NodeExcludedReason(n))
}

// decisionDigest sums up the decisions: assignments, the layer-2 plan, and the BGP routes of
// each node (by node name).
func decisionDigest(assign map[types.NamespacedName]lb.Assignment, l2 []lb.L2Announcement, routes map[string][]bgp.Advertisement) [DigestSize]byte {
	var d digestWriter
	for k, a := range assign {
		d.add("assign %s %v %s", k, a.IPs, a.Pool)
	}
	for _, a := range l2 {
		d.add("l2 %s owner=%s ifs=%v", a.Addr, a.Owner, a.Interfaces)
	}
	for node, advs := range routes {
		for _, a := range advs {
			d.add("bgp %s %s agg=%d pref=%d comm=%v large=%v peers=%v", node, a.Prefix, a.AggregationLength, a.LocalPref,
				a.Communities, a.LargeCommunities, a.Peers)
		}
	}
	return d.sum()
}

// Digest returns the digest of this agent's current view and decisions; ok is false until the
// initial state has been received and assigned (Synced): until then there are inputs but no
// decisions yet, which a peer would count as deciding differently from the same view. It is
// computed again only after something changed since the last call.
func (s *Speaker) Digest() (d PlanDigest, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.synced {
		return PlanDigest{}, false
	}
	if s.digest != nil && s.digestGen == s.gen {
		return *s.digest, true
	}
	// The membership is read once: the inputs and the decisions must come from the same view.
	l2in := s.l2Input()
	d.Inputs = s.inputDigest(l2in.Alive)
	l2 := lb.PlanL2(l2in)
	routes := map[string][]bgp.Advertisement{}
	for _, n := range s.planNodes(l2in.Alive) {
		in := s.bgpInput(n)
		_, advs, _ := lb.PlanBGP(in)
		if len(advs) > 0 {
			routes[n] = advs
		}
	}
	d.Decision = decisionDigest(s.result.Assignments, l2, routes)
	s.digest, s.digestGen = &d, s.gen
	return d, true
}

// planNodes are the nodes whose BGP routes the decision digest covers: every Node known, every
// alive member (alive, the view the digest was begun with), and this node.
func (s *Speaker) planNodes(alive []string) []string {
	seen := map[string]bool{}
	if s.o.Node != "" {
		seen[s.o.Node] = true
	}
	for n := range s.nodes {
		seen[n] = true
	}
	if s.o.Alive != nil {
		for _, n := range alive {
			seen[n] = true
		}
	}
	return slices.Sorted(maps.Keys(seen))
}

// inputDigest sums up the objects and membership (alive) the decisions read.
func (s *Speaker) inputDigest(alive []string) [DigestSize]byte {
	var d digestWriter
	// Every LoadBalancer service, not only those served: an agent with another --lb-class has
	// the same inputs and must show as deciding differently at once.
	isLB := func(svc *v1.Service) bool {
		return svc != nil && (svc.Spec.Type == v1.ServiceTypeLoadBalancer || s.advertisesServiceIPs())
	}
	for _, svc := range s.services {
		if isLB(svc) {
			d.add("%s", stamp("Service", svc, svc))
		}
	}
	for _, sl := range s.slices {
		if isLB(s.services[key(sl.Namespace, sl.Labels[discovery.LabelServiceName])]) {
			d.add("%s", stamp("EndpointSlice", sl, sl))
		}
	}
	addStamps(&d, "IPAddressPool", s.pools)
	addStamps(&d, "L2Advertisement", s.l2ads)
	addStamps(&d, "BGPPeer", s.bgpPeers)
	addStamps(&d, "BGPAdvertisement", s.bgpAds)
	addStamps(&d, "Community", s.comms)
	addStamps(&d, "BFDProfile", s.bfds)
	for _, o := range s.spaces {
		d.add("Namespace %s %v", o.Name, labelsLine(o.Labels))
	}
	for _, n := range s.nodes {
		d.add("%s", nodeLine(n))
	}
	alive = slices.Clone(alive)
	slices.Sort(alive)
	d.add("alive %v", alive)
	return d.sum()
}

// addStamps adds the stamp of every object of m.
func addStamps[T metav1.Object](d *digestWriter, kind string, m map[types.NamespacedName]T) {
	for _, o := range m {
		d.add("%s", stamp(kind, o, o))
	}
}

func labelsLine(l map[string]string) string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(l)) {
		fmt.Fprintf(&b, "%s=%s,", k, l[k])
	}
	return b.String()
}

// EncodeDigest is d as memberlist metadata: a version byte and both halves.
func EncodeDigest(d PlanDigest) []byte {
	out := make([]byte, 0, 1+2*DigestSize)
	out = append(out, digestVersion)
	out = append(out, d.Inputs[:]...)
	return append(out, d.Decision[:]...)
}

// digestVersion starts an encoded digest; a change of what the digests cover changes it, so
// agents of different versions do not report each other as disagreeing.
const digestVersion = 1

// DecodeDigest reads metadata written by EncodeDigest (from another host: any bytes). ok is false
// for anything else, an empty or foreign version's metadata included.
func DecodeDigest(b []byte) (d PlanDigest, ok bool) {
	if len(b) != 1+2*DigestSize || b[0] != digestVersion {
		return PlanDigest{}, false
	}
	copy(d.Inputs[:], b[1:])
	copy(d.Decision[:], b[1+DigestSize:])
	return d, true
}
