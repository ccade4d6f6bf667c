// Package ipvs is the IPVS proxy mode, kube-proxy's --proxy-mode ipvs: every service address
// (cluster IP, external IP, load-balancer IP, node address with a node port) is an IPVS virtual
// server whose real servers are the service's endpoints, forwarded by masquerading (IPVS NAT).
//
// The cluster, external and load-balancer IPs are bound to the dummy interface nodeagent-ipvs0
// (kube-proxy's kube-ipvs0) so that the kernel takes their traffic as local, where IPVS picks it
// up. What IPVS cannot express lives in a small nftables table per family, "nodeagent-ipvs"
// (see nft.go): masquerading, rejecting or dropping connections to services without usable
// endpoints, load-balancer source ranges, and the record of which virtual servers are ours.
//
// The scheduler is Options.Scheduler (--ipvs-scheduler, rr by default) unless a Service's
// annotation ipvs.nodeagent.io/scheduler (proxier.AnnotationIPVSScheduler) names another;
// sessionAffinity ClientIP becomes IPVS persistence with the Service's timeout.
//
// IPVS has no transactions. Sync reads the kernel's virtual servers (all of them on a full sync,
// those of the changed services otherwise), adds and updates what is missing first, and only
// then removes what is no longer wanted. An endpoint that leaves a TCP virtual server is not
// deleted while it still has connections: its weight drops to 0, so new connections go
// elsewhere, and it is deleted once its connections are gone (UDP and SCTP ones at once), as
// kube-proxy's graceful termination does.
package ipvs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	mipvs "github.com/moby/ipvs"
	"golang.org/x/sys/unix"

	"nodeagent/proxier"
	"nodeagent/proxier/nft"
)

// DummyInterface holds the service addresses.
const DummyInterface = "nodeagent-ipvs0"

// svcPersistent is IP_VS_SVC_F_PERSISTENT: the virtual server keeps a client on its real server.
const svcPersistent = 0x1

// Options configure a Proxier.
type Options struct {
	// Log receives the proxier's logs; nil means slog.Default().
	Log *slog.Logger
	// Families are the IP families to program; empty means both.
	Families []proxier.Family
	// NetNSPath, when set, is a network namespace file (/run/netns/NAME) to program instead of
	// the proxier's own. Tests use it.
	NetNSPath string
	// Scheduler is the IPVS scheduler of services that do not name one (--ipvs-scheduler);
	// empty means rr.
	Scheduler string
	// StrictARP sets net.ipv4.conf.all.arp_ignore=1 and arp_announce=2 (--ipvs-strict-arp) so
	// that the node does not answer ARP for the addresses on the dummy interface.
	StrictARP bool
	// TCPTimeout, TCPFinTimeout and UDPTimeout are IPVS's connection timeouts
	// (--ipvs-tcp-timeout, --ipvs-tcpfin-timeout, --ipvs-udp-timeout); zero keeps the kernel's.
	TCPTimeout, TCPFinTimeout, UDPTimeout time.Duration
	// DrainInterval is how often real servers waiting for their connections to end are
	// checked between syncs; zero means 5 s, negative means only during Sync.
	DrainInterval time.Duration
	// Recorder receives failed helper-table updates for metrics. Nil: none.
	Recorder proxier.Recorder
	// Conntrack, when set, is called after every successful Sync to clear stale UDP and SCTP
	// flows, as in the other modes and kube-proxy's ipvs mode: IPVS forwards through conntrack
	// (net.ipv4.vs.conntrack=1), whose entry keeps a flow on a removed real server. The wiring
	// passes conntrack.NewCleaner(...) for the same namespace.
	Conntrack Cleaner
}

// Cleaner removes conntrack entries that a sync made stale; *conntrack.Cleaner is one.
type Cleaner interface {
	Clean(st *proxier.State, ch proxier.Changes) error
}

// Proxier is the IPVS proxy mode. It is safe for concurrent use.
type Proxier struct {
	log   *slog.Logger
	fams  []proxier.Family
	opts  Options
	sched string
	ipvs  ipvsKernel
	net   netKernel
	nft   nftKernel

	mu sync.Mutex
	// last is what the last successful Sync programmed (nil before).
	last *desired
	// owned are the virtual servers this proxier owns that may exist in the kernel: the
	// desired ones and those waiting for their real servers to drain. nil until learnt.
	owned map[vsKey]bool
	// draining are the real servers at weight 0 waiting for their connections to end.
	draining map[vsKey]map[netip.AddrPort]bool
	// leaving are owned virtual servers no service wants: recorded in the ownership set until
	// they are retired.
	leaving map[vsKey]bool
	full    bool // the kernel's state is unknown: the next Sync is full
	// bound are the addresses on the dummy interface as this proxier left them; nil means
	// unknown (listed again). Listing a thousand addresses on every sync was the largest fixed
	// cost of a one-service change.
	bound   map[netip.Addr]bool
	sysctls bool // the sysctls were set
	warned  map[string]bool
	stats   SyncStats
	// refused are the desired virtual servers the kernel refused (a scheduler module it lacks,
	// say, which any Service can ask for by annotation), with the kernel's answer. They are
	// reported, retried on every full sync, and do not fail a Sync: the other services apply.
	refused map[vsKey]Refusal

	stop chan struct{}
	done chan struct{}
}

var _ proxier.Proxier = (*Proxier)(nil)

// SyncStats says what the last Sync did, for tests, benchmarks and logs.
type SyncStats struct {
	Full                                            bool
	Examined                                        int // virtual servers compared with the kernel
	ServicesAdded, ServicesUpdated, ServicesDeleted int
	DestsAdded, DestsUpdated, DestsDeleted          int
	Draining                                        int // real servers at weight 0 after the Sync
	Refused                                         int // desired virtual servers the kernel refused
	Duration                                        time.Duration
}

// Refusal is a virtual server the kernel refused to create or change (or to give a real server),
// while the rest of the sync went through.
type Refusal struct {
	// Service is the service port the virtual server belongs to.
	Service proxier.ServicePortName
	// VirtualServer is the virtual server, as address:port/protocol.
	VirtualServer string
	// Reason is the kernel's answer.
	Reason string
}

// refusedByKernel reports whether err is the kernel rejecting one virtual server's or real
// server's settings (no such scheduler module, invalid or unsupported parameters), which is
// that object's problem, rather than a failure of IPVS as a whole.
func refusedByKernel(err error) bool {
	for _, e := range []error{unix.ENOENT, unix.EINVAL, unix.EOPNOTSUPP, unix.EAFNOSUPPORT, unix.EPROTONOSUPPORT} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// Refused lists the virtual servers the kernel refused in the latest syncs, sorted.
func (p *Proxier) Refused() []Refusal {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]Refusal, 0, len(p.refused))
	for _, k := range sortedKeys(p.refused) {
		out = append(out, p.refused[k])
	}
	return out
}

// New returns a Proxier for this kernel. It fails at once when the kernel has no IPVS; it
// programs nothing until Sync.
func New(opts Options) (*Proxier, error) {
	if err := CheckScheduler(opts.Scheduler); err != nil {
		return nil, err
	}
	if err := checkIPVS(); err != nil {
		return nil, err
	}
	h, err := mipvs.New(opts.NetNSPath)
	if err != nil {
		return nil, fmt.Errorf("ipvs: %w", err)
	}
	nk, err := newLinkKernel(opts.NetNSPath, DummyInterface)
	if err != nil {
		h.Close()
		return nil, err
	}
	fk, err := newGnftKernel(opts.NetNSPath)
	if err != nil {
		h.Close()
		nk.close()
		return nil, err
	}
	p := newProxier(opts, h, nk, fk)
	interval := opts.DrainInterval
	if interval == 0 {
		interval = 5 * time.Second
	}
	if interval > 0 {
		p.stop, p.done = make(chan struct{}), make(chan struct{})
		go p.drainLoop(interval)
	}
	return p, nil
}

// NewRenderer returns a Proxier that can only Render: it needs no kernel support.
func NewRenderer(opts Options) *Proxier { return newProxier(opts, nil, nil, nil) }

func newProxier(opts Options, h ipvsKernel, nk netKernel, fk nftKernel) *Proxier {
	p := &Proxier{log: opts.Log, opts: opts, sched: opts.Scheduler, ipvs: h, net: nk, nft: fk,
		draining: map[vsKey]map[netip.AddrPort]bool{}, leaving: map[vsKey]bool{},
		warned: map[string]bool{}, refused: map[vsKey]Refusal{}, full: true}
	if p.log == nil {
		p.log = slog.Default()
	}
	if p.opts.Recorder == nil {
		p.opts.Recorder = proxier.NopRecorder{}
	}
	if p.sched == "" {
		p.sched = DefaultScheduler
	}
	for _, f := range proxier.Families {
		if len(opts.Families) == 0 || slices.Contains(opts.Families, f) {
			p.fams = append(p.fams, f)
		}
	}
	return p
}

// Close stops the drain checks and releases the kernel handles; the kernel keeps the state.
func (p *Proxier) Close() error {
	if p.stop != nil {
		close(p.stop)
		<-p.done
		p.stop = nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ipvs != nil {
		p.ipvs.Close()
		p.net.close()
		p.nft.close()
		p.ipvs = nil
	}
	return nil
}

// Families returns the families this proxier programs.
func (p *Proxier) Families() []proxier.Family { return slices.Clone(p.fams) }

// LastSync reports what the last successful Sync did.
func (p *Proxier) LastSync() SyncStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stats
}

func (p *Proxier) desired(st *proxier.State) *desired {
	return buildDesired(st, p.fams, p.sched, func(n proxier.ServicePortName, s string) {
		key := n.NamespacedName.String() + "/" + s
		if !p.warned[key] {
			p.warned[key] = true
			p.log.Warn("unknown IPVS scheduler in annotation, using the default", "service", n.NamespacedName,
				"annotation", proxier.AnnotationIPVSScheduler, "scheduler", s, "default", p.sched)
		}
	})
}

// Render writes what a full Sync of st programs: the dummy interface's addresses (as comments),
// the virtual servers as `ipvsadm -Sn` prints them, and the helper tables as nft -f input.
func (p *Proxier) Render(w io.Writer, st *proxier.State) error {
	p.mu.Lock()
	d := p.desired(st)
	p.mu.Unlock()
	return renderAll(w, d, p.fams)
}

// Sync programs st; see proxier.Proxier.
func (p *Proxier) Sync(ctx context.Context, st *proxier.State, ch proxier.Changes) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ipvs == nil {
		return errors.New("ipvs proxier is closed or render-only")
	}
	start := time.Now()
	full := ch.Full || p.full || p.last == nil
	var d *desired
	var ops map[proxier.Family]*tableOps
	if !full {
		d = p.last
		var ok bool
		if ops, ok = d.patch(st, ch.Services); !ok {
			full = true
		}
	}
	if full {
		d = p.desired(st)
	}
	s := &syncer{p: p, d: d, full: full, ops: ops, stats: SyncStats{Full: full}}
	err := s.run(ch)
	// d is patched in place: the previous state is gone either way. After a failure the next
	// sync is full.
	p.last = d
	if err != nil {
		p.full, p.bound = true, nil
		return err
	}
	p.full = false
	for k := range p.refused {
		if d.vs[k] == nil {
			delete(p.refused, k)
		}
	}
	s.stats.Refused = len(p.refused)
	s.stats.Duration = time.Since(start)
	s.stats.Draining = p.drainingCount()
	p.stats = s.stats
	if p.opts.Conntrack != nil {
		// The virtual servers are in place; a failure is retried by the cleaner on its next
		// call and must not fail the sync.
		if err := p.opts.Conntrack.Clean(st, proxier.Changes{Full: full, Services: ch.Services}); err != nil {
			p.log.Warn("clearing stale conntrack entries failed", "err", err)
		}
	}
	return nil
}

func (p *Proxier) drainingCount() int {
	n := 0
	for _, m := range p.draining {
		n += len(m)
	}
	return n
}

// syncer is one Sync's work.
type syncer struct {
	p    *Proxier
	d    *desired
	full bool
	// ops are the helper-table operations of a partial sync (the patch's).
	ops   map[proxier.Family]*tableOps
	stats SyncStats
	// kernel are the examined virtual servers as the kernel has them (nil: absent).
	kernel map[vsKey]*mipvs.Service
	// extra are the real servers ensure found on a desired virtual server that are not its
	// endpoints, for removeExtraDests (which would otherwise list them a second time).
	extra map[vsKey][]*mipvs.Destination
}

func afOf(a netip.Addr) uint16 {
	if a.Is4() {
		return syscall.AF_INET
	}
	return syscall.AF_INET6
}

// kernelService is the moby form of a virtual server key (enough to address it).
func kernelService(k vsKey) *mipvs.Service {
	s := &mipvs.Service{Address: k.Addr.AsSlice(), Protocol: uint16(k.Proto), Port: k.Port, AddressFamily: afOf(k.Addr)}
	s.Netmask = 0xffffffff
	if k.Addr.Is6() {
		s.Netmask = 128
	}
	return s
}

// kernelForm is vs as IPVS stores it.
func (vs *virtualServer) kernelForm() *mipvs.Service {
	s := kernelService(vs.key)
	s.SchedName = vs.scheduler
	if vs.persistent {
		s.Flags = svcPersistent
		s.Timeout = vs.timeout
	}
	return s
}

// sameService reports whether the kernel's virtual server has vs's settings.
func sameService(k *mipvs.Service, vs *virtualServer) bool {
	want := vs.kernelForm()
	if k.SchedName != want.SchedName || k.Flags&svcPersistent != want.Flags {
		return false
	}
	return !vs.persistent || (k.Timeout == want.Timeout && k.Netmask == want.Netmask)
}

func keyOf(s *mipvs.Service) (vsKey, bool) {
	if s.FWMark != 0 {
		return vsKey{}, false
	}
	a, ok := netip.AddrFromSlice(s.Address)
	if !ok {
		return vsKey{}, false
	}
	a = a.Unmap()
	if s.AddressFamily == syscall.AF_INET6 && a.Is4() {
		a = netip.AddrFrom16(a.As16())
	}
	return vsKey{Addr: a, Proto: uint8(s.Protocol), Port: s.Port}, true
}

func destAddr(d *mipvs.Destination) netip.AddrPort {
	a, _ := netip.AddrFromSlice(d.Address)
	if d.AddressFamily == syscall.AF_INET6 {
		a = netip.AddrFrom16(a.As16())
	} else {
		a = a.Unmap()
	}
	return netip.AddrPortFrom(a, d.Port)
}

func newDest(ap netip.AddrPort, weight int) *mipvs.Destination {
	return &mipvs.Destination{Address: ap.Addr().AsSlice(), Port: ap.Port(), Weight: weight,
		ConnectionFlags: mipvs.ConnectionFlagMasq, AddressFamily: afOf(ap.Addr())}
}

func (p *Proxier) wantFamily(a netip.Addr) bool { return slices.Contains(p.fams, proxier.FamilyOf(a)) }

func (s *syncer) run(ch proxier.Changes) error {
	p := s.p
	if err := p.setSysctls(s.full); err != nil {
		return err
	}
	if s.full || p.bound == nil {
		if err := p.net.ensureDummy(); err != nil {
			return err
		}
		addrs, err := p.net.dummyAddrs()
		if err != nil {
			return err
		}
		p.bound = map[netip.Addr]bool{}
		for _, a := range addrs {
			p.bound[a] = true
		}
	}
	if p.owned == nil {
		if err := p.learnOwned(p.bound); err != nil {
			return err
		}
	}
	if err := s.readKernel(ch, p.bound); err != nil {
		return err
	}
	// The helper tables first, with every virtual server that exists or is about to.
	if err := s.programTables(); err != nil {
		return err
	}
	bind := s.d.boundOf(ch.Services)
	if s.full {
		bind = sortedAddrs(s.d.bind)
	}
	for _, a := range bind {
		if !p.bound[a] {
			if err := p.net.addAddr(a); err != nil {
				return err
			}
			p.bound[a] = true
		}
	}
	// Add and update, then remove.
	keys := sortedKeys(s.kernel)
	var errs []error
	for _, k := range keys {
		if vs := s.d.vs[k]; vs != nil {
			errs = append(errs, s.ensure(vs))
		}
	}
	for _, k := range keys {
		if vs := s.d.vs[k]; vs != nil {
			errs = append(errs, s.removeExtraDests(vs))
		} else if p.owned[k] {
			errs = append(errs, s.retireService(k))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return p.finish(s.d, s.full)
}

// learnOwned finds the virtual servers an earlier run left: those recorded in the helper
// tables and those on addresses of the dummy interface.
func (p *Proxier) learnOwned(bound map[netip.Addr]bool) error {
	owned := map[vsKey]bool{}
	for _, pf := range p.fams {
		ks, err := p.nft.owned(nft.FamilyOf(pf))
		if err != nil {
			return err
		}
		for _, k := range ks {
			owned[k] = true
		}
	}
	if len(bound) > 0 {
		ks, err := p.ipvs.GetServices()
		if err != nil {
			return fmt.Errorf("list virtual servers: %w", err)
		}
		for _, ksvc := range ks {
			if k, ok := keyOf(ksvc); ok && bound[k.Addr] {
				owned[k] = true
			}
		}
	}
	p.owned = owned
	return nil
}

// readKernel fills s.kernel with the virtual servers this Sync must look at.
func (s *syncer) readKernel(ch proxier.Changes, bound map[netip.Addr]bool) error {
	p := s.p
	s.kernel = map[vsKey]*mipvs.Service{}
	if s.full {
		ks, err := p.ipvs.GetServices()
		if err != nil {
			return fmt.Errorf("list virtual servers: %w", err)
		}
		for _, ksvc := range ks {
			k, ok := keyOf(ksvc)
			if !ok || !p.wantFamily(k.Addr) {
				continue
			}
			if s.d.vs[k] != nil || p.owned[k] || bound[k.Addr] {
				s.kernel[k] = ksvc
				p.owned[k] = true
			}
		}
		for k := range s.d.vs {
			if _, ok := s.kernel[k]; !ok {
				s.kernel[k] = nil
			}
		}
		s.stats.Examined = len(s.kernel)
		return nil
	}
	look := map[vsKey]bool{}
	for n := range ch.Services {
		for _, k := range s.d.bySvc[n] {
			look[k] = true
		}
	}
	for _, k := range s.d.removed {
		look[k] = true
	}
	for k := range p.draining {
		look[k] = true
	}
	for k := range look {
		ksvc, err := p.ipvs.GetService(kernelService(k))
		if err != nil {
			if !isNotFound(err) {
				return fmt.Errorf("read virtual server %s: %w", k, err)
			}
			ksvc = nil
		}
		if ksvc == nil && s.d.vs[k] == nil {
			delete(p.owned, k)
			continue
		}
		s.kernel[k] = ksvc
	}
	s.stats.Examined = len(s.kernel)
	return nil
}

// isNotFound reports whether err is IPVS's answer for a virtual server that does not exist.
func isNotFound(err error) bool {
	return errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENOENT) || strings.Contains(err.Error(), "no such process")
}

// ensure creates or updates vs and adds (or restores the weight of) its real servers. What the
// kernel refuses of vs alone is recorded in p.refused rather than returned: one Service asking
// for something this kernel lacks must not fail every sync of every other one.
func (s *syncer) ensure(vs *virtualServer) error {
	p := s.p
	k := vs.key
	ksvc := s.kernel[k]
	want := vs.kernelForm()
	var refusal error
	switch {
	case ksvc == nil:
		if err := p.ipvs.NewService(want); err != nil && !errors.Is(err, unix.EEXIST) {
			err = fmt.Errorf("add virtual server %s of %s: %w", k, vs.name, err)
			if refusedByKernel(err) {
				p.refuse(vs, err)
				return nil
			}
			return err
		}
		s.stats.ServicesAdded++
		s.kernel[k] = want
	case !sameService(ksvc, vs):
		if err := p.ipvs.UpdateService(want); err != nil {
			err = fmt.Errorf("update virtual server %s of %s: %w", k, vs.name, err)
			if !refusedByKernel(err) {
				return err
			}
			// It keeps its current settings; its real servers still follow the endpoints.
			refusal = err
		} else {
			s.stats.ServicesUpdated++
		}
	}
	defer func() {
		if refusal != nil {
			p.refuse(vs, refusal)
		} else if _, was := p.refused[k]; was {
			delete(p.refused, k)
			p.log.Info("IPVS virtual server accepted now", "service", vs.name.String(), "virtualServer", k.String())
		}
	}()
	p.owned[k] = true
	have := map[netip.AddrPort]*mipvs.Destination{}
	if ksvc != nil {
		ds, err := p.ipvs.GetDestinations(want)
		if err != nil {
			return fmt.Errorf("list real servers of %s: %w", k, err)
		}
		for _, d := range ds {
			ap := destAddr(d)
			have[ap] = d
			if !slices.Contains(vs.dests, ap) {
				if s.extra == nil {
					s.extra = map[vsKey][]*mipvs.Destination{}
				}
				s.extra[k] = append(s.extra[k], d)
			}
		}
	}
	var errs []error
	for _, ap := range vs.dests {
		d, ok := have[ap]
		switch {
		case !ok:
			if err := p.ipvs.NewDestination(want, newDest(ap, 1)); err != nil && !errors.Is(err, unix.EEXIST) {
				err = fmt.Errorf("add real server %s to %s: %w", ap, k, err)
				if refusedByKernel(err) {
					refusal = errors.Join(refusal, err)
				} else {
					errs = append(errs, err)
				}
				continue
			}
			s.stats.DestsAdded++
		case d.Weight != 1 || d.ConnectionFlags&mipvs.ConnectionFlagFwdMask != mipvs.ConnectionFlagMasq:
			if err := p.ipvs.UpdateDestination(want, newDest(ap, 1)); err != nil {
				errs = append(errs, fmt.Errorf("update real server %s of %s: %w", ap, k, err))
				continue
			}
			s.stats.DestsUpdated++
		}
		if m := p.draining[k]; m != nil {
			delete(m, ap)
			if len(m) == 0 {
				delete(p.draining, k)
			}
		}
	}
	return errors.Join(errs...)
}

// refuse records that the kernel refused vs, logging it when the reason is new.
func (p *Proxier) refuse(vs *virtualServer, err error) {
	r := Refusal{Service: vs.name, VirtualServer: vs.key.String(), Reason: err.Error()}
	if p.refused[vs.key] == r {
		return
	}
	p.refused[vs.key] = r
	p.log.Warn("the kernel refused an IPVS virtual server; the other services are applied, this one is retried on every full sync",
		"service", vs.name.String(), "virtualServer", r.VirtualServer, "scheduler", vs.scheduler, "err", err)
}

// removeExtraDests retires the real servers of vs that are no longer its endpoints (as ensure
// found them).
func (s *syncer) removeExtraDests(vs *virtualServer) error {
	svc := vs.kernelForm()
	var errs []error
	for _, d := range s.extra[vs.key] {
		_, err := s.p.retire(svc, vs.key, d, &s.stats)
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// retireService retires every real server of a virtual server that is no longer wanted, and
// deletes it once it has none.
func (s *syncer) retireService(k vsKey) error {
	return s.p.retireService(k, &s.stats)
}

func (p *Proxier) retireService(k vsKey, stats *SyncStats) error {
	svc := kernelService(k)
	ds, err := p.ipvs.GetDestinations(svc)
	if err != nil {
		if isNotFound(err) {
			delete(p.owned, k)
			delete(p.draining, k)
			return nil
		}
		return fmt.Errorf("list real servers of %s: %w", k, err)
	}
	left := 0
	var errs []error
	for _, d := range ds {
		gone, err := p.retire(svc, k, d, stats)
		if err != nil {
			errs = append(errs, err)
		}
		if !gone {
			left++
		}
	}
	if left > 0 || len(errs) > 0 {
		return errors.Join(errs...)
	}
	if err := p.ipvs.DelService(svc); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete virtual server %s: %w", k, err)
	}
	stats.ServicesDeleted++
	delete(p.owned, k)
	delete(p.draining, k)
	return nil
}

// retire deletes real server d of the virtual server k, or, while a TCP real server still has
// connections, sets its weight to 0 and leaves it for a later check. It reports whether d is gone.
//
// A TCP real server is quiesced before its connections are counted: d's counters were read
// earlier in the sync, and IPVS may schedule a connection to it until its weight is 0; deleting
// it then would reset that connection (expire_nodest_conn=1 expires a deleted server's
// connections; seen in the VM as a new connection reset mid-request while its endpoint left).
func (p *Proxier) retire(svc *mipvs.Service, k vsKey, d *mipvs.Destination, stats *SyncStats) (bool, error) {
	ap := destAddr(d)
	if k.Proto == unix.IPPROTO_TCP && d.Weight != 0 {
		if err := p.ipvs.UpdateDestination(svc, newDest(ap, 0)); err != nil {
			return false, fmt.Errorf("quiesce real server %s of %s: %w", ap, k, err)
		}
		stats.DestsUpdated++
		now, err := p.destination(svc, ap)
		if err != nil {
			return false, fmt.Errorf("read real server %s of %s: %w", ap, k, err)
		}
		if now == nil {
			return true, nil
		}
		d = now
	}
	if k.Proto != unix.IPPROTO_TCP || d.ActiveConnections+d.InactiveConnections == 0 {
		if err := p.ipvs.DelDestination(svc, d); err != nil && !isNotFound(err) {
			return false, fmt.Errorf("delete real server %s of %s: %w", ap, k, err)
		}
		stats.DestsDeleted++
		if m := p.draining[k]; m != nil {
			delete(m, ap)
			if len(m) == 0 {
				delete(p.draining, k)
			}
		}
		return true, nil
	}
	if !p.draining[k][ap] {
		p.log.Info("real server draining", "virtualServer", k.String(), "realServer", ap.String(),
			"activeConnections", d.ActiveConnections, "inactiveConnections", d.InactiveConnections)
	}
	if p.draining[k] == nil {
		p.draining[k] = map[netip.AddrPort]bool{}
	}
	p.draining[k][ap] = true
	return false, nil
}

// destination reads real server ap of svc from the kernel; nil when it has none.
func (p *Proxier) destination(svc *mipvs.Service, ap netip.AddrPort) (*mipvs.Destination, error) {
	ds, err := p.ipvs.GetDestinations(svc)
	if err != nil {
		if isNotFound(err) {
			return nil, nil
		}
		return nil, err
	}
	for _, d := range ds {
		if destAddr(d) == ap {
			return d, nil
		}
	}
	return nil, nil
}

// finish forgets the virtual servers retired since the last finish (their ownership record and,
// when nothing else uses it, their address). After a full sync it also removes every address
// nothing uses, whoever left it.
func (p *Proxier) finish(d *desired, full bool) error {
	var gone []vsKey
	check := map[netip.Addr]bool{}
	for _, k := range d.removed {
		switch {
		case d.vs[k] != nil: // wanted again
		case p.owned[k]:
			p.leaving[k] = true
		default: // retired in this sync, or never created
			gone = append(gone, k)
			check[k.Addr] = true
		}
	}
	d.removed = nil
	for _, k := range sortedKeys(p.leaving) {
		if d.vs[k] != nil {
			delete(p.leaving, k)
		} else if !p.owned[k] {
			delete(p.leaving, k)
			gone = append(gone, k)
			check[k.Addr] = true
		}
	}
	if full {
		check = maps.Clone(p.bound)
	}
	for k := range p.leaving {
		delete(check, k.Addr) // still in use by a virtual server that is draining
	}
	var errs []error
	for _, a := range sortedAddrs(check) {
		if p.bound[a] && d.bind[a] == 0 && p.wantFamily(a) {
			if err := p.net.delAddr(a); err != nil {
				errs = append(errs, err)
				continue
			}
			delete(p.bound, a)
		}
	}
	errs = append(errs, p.applyOps(d, d.forget(gone)))
	return errors.Join(errs...)
}

// programTables brings the helper tables to s.d's, with the ownership record of every virtual
// server that exists or is about to: a full sync replaces them (adding the owned virtual servers
// no service wants, still to be retired), a partial one applies its patch's operations.
func (s *syncer) programTables() error {
	p := s.p
	if !s.full {
		return p.applyOps(s.d, s.ops)
	}
	clear(p.leaving)
	for k := range p.owned {
		if s.d.vs[k] == nil {
			p.leaving[k] = true
		}
	}
	s.d.keep(sortedKeys(p.leaving))
	for _, pf := range p.fams {
		if err := p.nft.replace(s.d.tables[pf]); err != nil {
			p.opts.Recorder.RestoreFailed(pf)
			return err
		}
	}
	return nil
}

// applyOps applies table operations of d's tables.
func (p *Proxier) applyOps(d *desired, ops map[proxier.Family]*tableOps) error {
	for _, pf := range p.fams {
		o := ops[pf]
		if o == nil || o.empty() {
			continue
		}
		if err := p.nft.update(d.tables[pf], o); err != nil {
			p.opts.Recorder.RestoreFailed(pf)
			return err
		}
	}
	return nil
}

func sortedAddrs[V any](m map[netip.Addr]V) []netip.Addr {
	out := make([]netip.Addr, 0, len(m))
	for a := range m {
		out = append(out, a)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// setSysctls applies kube-proxy's IPVS settings (again on every full sync, to repair drift).
func (p *Proxier) setSysctls(full bool) error {
	if p.sysctls && !full {
		return nil
	}
	want := [][2]string{
		// Let IPVS-forwarded packets through conntrack, so that masquerading works.
		{"net/ipv4/vs/conntrack", "1"},
		// Drop connections to removed real servers at their next packet, so clients retry.
		{"net/ipv4/vs/expire_nodest_conn", "1"},
		// Expire persistence templates pointing at quiesced (weight 0) real servers.
		{"net/ipv4/vs/expire_quiescent_template", "1"},
	}
	if kernelBefore(5, 9) {
		// Before 5.9 reusing a connection slot of a removed real server stalled for a second.
		want = append(want, [2]string{"net/ipv4/vs/conn_reuse_mode", "0"})
	}
	if p.opts.StrictARP {
		want = append(want, [2]string{"net/ipv4/conf/all/arp_ignore", "1"}, [2]string{"net/ipv4/conf/all/arp_announce", "2"})
	}
	for _, kv := range want {
		cur, err := p.net.readSysctl(kv[0])
		if err != nil {
			return fmt.Errorf("sysctl %s: %w", kv[0], err)
		}
		if cur == kv[1] {
			continue
		}
		if err := p.net.writeSysctl(kv[0], kv[1]); err != nil {
			return fmt.Errorf("sysctl %s=%s: %w", kv[0], kv[1], err)
		}
		p.log.Info("set sysctl", "name", strings.ReplaceAll(kv[0], "/", "."), "value", kv[1], "was", cur)
	}
	if !p.sysctls && (p.opts.TCPTimeout > 0 || p.opts.TCPFinTimeout > 0 || p.opts.UDPTimeout > 0) {
		if err := p.ipvs.SetConfig(&mipvs.Config{TimeoutTCP: p.opts.TCPTimeout,
			TimeoutTCPFin: p.opts.TCPFinTimeout, TimeoutUDP: p.opts.UDPTimeout}); err != nil {
			return fmt.Errorf("set IPVS timeouts: %w", err)
		}
	}
	p.sysctls = true
	return nil
}

// kernelBefore reports whether the running kernel is older than major.minor.
func kernelBefore(major, minor int) bool {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return false
	}
	rel := unix.ByteSliceToString(u.Release[:])
	parts := strings.SplitN(rel, ".", 3)
	if len(parts) < 2 {
		return false
	}
	ma, _ := strconv.Atoi(parts[0])
	mi, _ := strconv.Atoi(strings.TrimFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' }))
	return ma < major || (ma == major && mi < minor)
}

// drainLoop deletes drained real servers between syncs.
func (p *Proxier) drainLoop(interval time.Duration) {
	defer close(p.done)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
			if err := p.drain(); err != nil {
				p.log.Warn("checking draining real servers", "err", err)
			}
		}
	}
}

// drain deletes the draining real servers whose connections are gone, and the virtual servers
// no longer wanted that are left empty.
func (p *Proxier) drain() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.draining) == 0 || p.last == nil || p.ipvs == nil {
		return nil
	}
	var stats SyncStats
	var errs []error
	for _, k := range sortedKeys(p.draining) {
		if p.last.vs[k] == nil {
			errs = append(errs, p.retireService(k, &stats))
			continue
		}
		svc := kernelService(k)
		ds, err := p.ipvs.GetDestinations(svc)
		if err != nil {
			if isNotFound(err) {
				delete(p.draining, k)
				continue
			}
			errs = append(errs, err)
			continue
		}
		for _, d := range ds {
			if p.draining[k][destAddr(d)] {
				_, err := p.retire(svc, k, d, &stats)
				errs = append(errs, err)
			}
		}
	}
	if stats.DestsDeleted+stats.ServicesDeleted > 0 {
		p.log.Info("drained real servers deleted", "realServers", stats.DestsDeleted, "virtualServers", stats.ServicesDeleted)
		errs = append(errs, p.finish(p.last, false))
	}
	if err := errors.Join(errs...); err != nil {
		p.full, p.bound = true, nil
		return err
	}
	return nil
}

// Cleanup removes every virtual server this proxier's mode owns (recorded in the helper tables
// or on an address of the dummy interface), the dummy interface and the helper tables of both
// families, and nothing else. Sysctls keep their values.
func (p *Proxier) Cleanup(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ipvs == nil {
		return errors.New("ipvs proxier is closed or render-only")
	}
	p.full, p.last, p.owned, p.bound = true, nil, nil, nil
	p.draining = map[vsKey]map[netip.AddrPort]bool{}
	clear(p.leaving)
	owned := map[vsKey]bool{}
	for _, f := range []*nft.Family{nft.IPv4, nft.IPv6} {
		ks, err := p.nft.owned(f)
		if err != nil {
			return fmt.Errorf("cleanup: %w", err)
		}
		for _, k := range ks {
			owned[k] = true
		}
	}
	bound, err := p.net.dummyAddrs()
	if err != nil {
		return fmt.Errorf("cleanup: %w", err)
	}
	ks, err := p.ipvs.GetServices()
	if err != nil {
		return fmt.Errorf("cleanup: list virtual servers: %w", err)
	}
	var errs []error
	n := 0
	for _, ksvc := range ks {
		k, ok := keyOf(ksvc)
		if !ok || (!owned[k] && !slices.Contains(bound, k.Addr)) {
			continue
		}
		if err := p.ipvs.DelService(ksvc); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("cleanup: delete virtual server %s: %w", k, err))
			continue
		}
		n++
	}
	errs = append(errs, p.net.deleteDummy())
	for _, f := range []*nft.Family{nft.IPv4, nft.IPv6} {
		errs = append(errs, p.nft.remove(f))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	p.log.Info("ipvs state removed", "virtualServers", n)
	return nil
}
