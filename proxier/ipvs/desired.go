package ipvs

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"nodeagent/proxier"
	"nodeagent/proxier/nft"
)

// vsKey identifies an IPVS virtual server: address, IP protocol number and port.
type vsKey struct {
	Addr  netip.Addr
	Proto uint8
	Port  uint16
}

func (k vsKey) String() string {
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(k.Addr, k.Port), nft.ProtoName(k.Proto))
}

func compareVSKey(a, b vsKey) int {
	if c := a.Addr.Compare(b.Addr); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Proto, b.Proto); c != 0 {
		return c
	}
	return cmp.Compare(a.Port, b.Port)
}

// vsKind is which address of a service a virtual server serves.
type vsKind int

const (
	kindClusterIP vsKind = iota
	kindExternalIP
	kindLoadBalancer
	kindNodePort
)

func (k vsKind) String() string {
	return [...]string{"cluster IP", "external IP", "load-balancer IP", "node port"}[k]
}

// virtualServer is the desired state of one IPVS virtual server.
type virtualServer struct {
	key        vsKey
	name       proxier.ServicePortName
	kind       vsKind
	scheduler  string
	persistent bool
	timeout    uint32 // persistence, in seconds
	dests      []netip.AddrPort
}

// desired is everything a Sync of a State programs, kept between syncs so that a partial sync
// patches it (patch.go).
type desired struct {
	vs    map[vsKey]*virtualServer
	bySvc map[types.NamespacedName][]vsKey
	// bind counts, per address the dummy interface holds (cluster, external and load-balancer
	// IPs), the virtual servers on it.
	bind   map[netip.Addr]int
	tables map[proxier.Family]*nftTable

	// contrib is what each service put in; refs counts the services that put each table
	// element in.
	contrib map[types.NamespacedName]*contribution
	refs    map[elemRef]int
	// clashes counts virtual servers a second service asked for (a node address reused as a
	// VIP): the first in state order has it, which only a build from scratch decides.
	clashes int
	// removed are the virtual servers patches took out since the last sync's finish.
	removed []vsKey
	// log is set while a patch runs.
	log *patchLog

	// What services are added with.
	builders map[proxier.Family]*tableBuilder
	npAddrs  map[proxier.Family][]netip.Addr
	sched    string
	warn     func(proxier.ServicePortName, string)
}

// schedulers are the IPVS schedulers the kernel ships (ip_vs_<name> modules).
var schedulers = map[string]bool{
	"rr": true, "wrr": true, "lc": true, "wlc": true, "lblc": true, "lblcr": true, "dh": true,
	"sh": true, "sed": true, "nq": true, "fo": true, "ovf": true, "mh": true, "twos": true,
}

// CheckScheduler fails when name (--ipvs-scheduler) is not an IPVS scheduler; empty means the
// default.
func CheckScheduler(name string) error {
	if name != "" && !schedulers[name] {
		return fmt.Errorf("unknown IPVS scheduler %q (--ipvs-scheduler): want one of rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq, fo, ovf, mh, twos", name)
	}
	return nil
}

// DefaultScheduler is the scheduler of services that do not ask for one, as kube-proxy's.
const DefaultScheduler = "rr"

// nodePortAddrs are the node addresses of family f that get node-port virtual servers: all of
// them, or those --nodeport-addresses selects (primary: the Node's primary address).
func nodePortAddrs(st *proxier.State, f proxier.Family) []netip.Addr {
	if ips, restricted := st.NodePortIPs(f); restricted {
		return ips
	}
	var out []netip.Addr
	for _, a := range st.NodeIPsOf(f) {
		a = a.Unmap()
		if a.IsLoopback() || a.IsLinkLocalUnicast() {
			continue
		}
		out = append(out, a)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// buildDesired computes the IPVS state and helper tables of st for the families fams. warn is
// told about services whose annotation names an unknown scheduler.
func buildDesired(st *proxier.State, fams []proxier.Family, defaultSched string, warn func(proxier.ServicePortName, string)) *desired {
	d := &desired{
		vs:       map[vsKey]*virtualServer{},
		bySvc:    map[types.NamespacedName][]vsKey{},
		bind:     map[netip.Addr]int{},
		tables:   map[proxier.Family]*nftTable{},
		contrib:  map[types.NamespacedName]*contribution{},
		refs:     map[elemRef]int{},
		builders: map[proxier.Family]*tableBuilder{},
		npAddrs:  map[proxier.Family][]netip.Addr{},
		sched:    defaultSched,
		warn:     warn,
	}
	for _, f := range fams {
		nb := newTableBuilder(st, f)
		d.builders[f], d.tables[f], d.npAddrs[f] = nb, nb.t, nodePortAddrs(st, f)
		for _, sp := range st.ForFamily(f) {
			d.addService(sp)
		}
	}
	return d
}

// addService puts sp's virtual servers, addresses and table elements in, recorded in its
// service's contribution.
func (d *desired) addService(sp *proxier.ServicePort) {
	n := sp.Name.NamespacedName
	c := d.contrib[n]
	if c == nil {
		c = &contribution{}
		d.contrib[n] = c
	}
	sched := d.sched
	if sp.Scheduler != "" {
		if schedulers[sp.Scheduler] {
			sched = sp.Scheduler
		} else if d.warn != nil {
			d.warn(sp.Name, sp.Scheduler)
		}
	}
	var timeout uint32
	if sp.SessionAffinity {
		t := sp.AffinityTimeout
		if t <= 0 {
			t = proxier.DefaultAffinityTimeout
		}
		timeout = uint32((t + time.Second - 1) / time.Second)
	}
	proto := nft.ProtoNum(sp.Name.Protocol)
	dests := func(eps []proxier.Endpoint) []netip.AddrPort {
		out := make([]netip.AddrPort, 0, len(eps))
		for _, ep := range eps {
			out = append(out, netip.AddrPortFrom(ep.Addr.Unmap(), ep.Port))
		}
		slices.SortFunc(out, netip.AddrPort.Compare)
		return slices.Compact(out)
	}
	internal, external := dests(sp.InternalEndpoints()), dests(sp.ExternalEndpoints())
	add := func(a netip.Addr, port uint16, kind vsKind, ds []netip.AddrPort) {
		k := vsKey{Addr: a.Unmap(), Proto: proto, Port: port}
		if _, dup := d.vs[k]; dup {
			d.clashes++ // the tracker keeps frontends unique; a node address reused as a VIP is not ours to split
			return
		}
		d.vs[k] = &virtualServer{key: k, name: sp.Name, kind: kind, scheduler: sched,
			persistent: sp.SessionAffinity, timeout: timeout, dests: ds}
		d.bySvc[n] = append(d.bySvc[n], k)
		c.vs = append(c.vs, k)
		if kind != kindNodePort {
			d.bind[k.Addr]++
		}
	}
	npAddrs := d.npAddrs[sp.Name.Family]
	add(sp.ClusterIP, sp.Port, kindClusterIP, internal)
	for _, a := range sp.ExternalIPs {
		add(a, sp.Port, kindExternalIP, external)
	}
	for _, a := range sp.LoadBalancerIPs {
		add(a, sp.Port, kindLoadBalancer, external)
	}
	if sp.NodePort != 0 {
		for _, a := range npAddrs {
			add(a, sp.NodePort, kindNodePort, external)
		}
	}
	b := d.builders[sp.Name.Family]
	b.d, b.out = d, c
	b.addService(sp, proto, npAddrs)
}

// sortedKeys returns the keys of m in a stable order.
func sortedKeys[V any](m map[vsKey]V) []vsKey {
	out := make([]vsKey, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.SortFunc(out, compareVSKey)
	return out
}
