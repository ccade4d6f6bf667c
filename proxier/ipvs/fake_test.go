package ipvs

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"

	mipvs "github.com/moby/ipvs"
	"golang.org/x/sys/unix"

	"nodeagent/proxier/nft"
)

// fakeIPVS is an in-memory IPVS that refuses the schedulers in missing with ENOENT, as a kernel
// without their ip_vs_<name> module does.
type fakeIPVS struct {
	mu      sync.Mutex
	svcs    map[vsKey]*mipvs.Service
	dests   map[vsKey]map[netip.AddrPort]*mipvs.Destination
	missing map[string]bool
	// scheduled, when set, is called with each real server the fake is asked to update or
	// delete, before it does: a connection IPVS schedules there at that moment.
	scheduled func(k vsKey, d *mipvs.Destination)
}

var _ ipvsKernel = (*fakeIPVS)(nil)

func newFakeIPVS(missing ...string) *fakeIPVS {
	f := &fakeIPVS{svcs: map[vsKey]*mipvs.Service{}, dests: map[vsKey]map[netip.AddrPort]*mipvs.Destination{}, missing: map[string]bool{}}
	for _, m := range missing {
		f.missing[m] = true
	}
	return f
}

func (f *fakeIPVS) key(s *mipvs.Service) vsKey {
	k, ok := keyOf(s)
	if !ok {
		panic("fake IPVS: service without a key")
	}
	return k
}

func (f *fakeIPVS) GetServices() ([]*mipvs.Service, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*mipvs.Service
	for _, k := range sortedKeys(f.svcs) {
		c := *f.svcs[k]
		out = append(out, &c)
	}
	return out, nil
}

func (f *fakeIPVS) GetService(s *mipvs.Service) (*mipvs.Service, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	got, ok := f.svcs[f.key(s)]
	if !ok {
		return nil, unix.ENOENT
	}
	c := *got
	return &c, nil
}

func (f *fakeIPVS) GetDestinations(s *mipvs.Service) ([]*mipvs.Destination, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := f.key(s)
	if _, ok := f.svcs[k]; !ok {
		return nil, unix.ESRCH
	}
	var out []*mipvs.Destination
	for _, d := range f.dests[k] {
		c := *d
		out = append(out, &c)
	}
	return out, nil
}

func (f *fakeIPVS) NewService(s *mipvs.Service) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.missing[s.SchedName] {
		return unix.ENOENT
	}
	k := f.key(s)
	if _, ok := f.svcs[k]; ok {
		return unix.EEXIST
	}
	c := *s
	f.svcs[k] = &c
	f.dests[k] = map[netip.AddrPort]*mipvs.Destination{}
	return nil
}

func (f *fakeIPVS) UpdateService(s *mipvs.Service) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := f.key(s)
	if _, ok := f.svcs[k]; !ok {
		return unix.ESRCH
	}
	if f.missing[s.SchedName] {
		return unix.ENOENT
	}
	c := *s
	f.svcs[k] = &c
	return nil
}

func (f *fakeIPVS) DelService(s *mipvs.Service) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := f.key(s)
	if _, ok := f.svcs[k]; !ok {
		return unix.ESRCH
	}
	delete(f.svcs, k)
	delete(f.dests, k)
	return nil
}

func (f *fakeIPVS) NewDestination(s *mipvs.Service, d *mipvs.Destination) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := f.key(s)
	if _, ok := f.svcs[k]; !ok {
		return unix.ESRCH
	}
	ap := destAddr(d)
	if _, ok := f.dests[k][ap]; ok {
		return unix.EEXIST
	}
	c := *d
	f.dests[k][ap] = &c
	return nil
}

func (f *fakeIPVS) UpdateDestination(s *mipvs.Service, d *mipvs.Destination) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := f.key(s)
	ap := destAddr(d)
	had, ok := f.dests[k][ap]
	if !ok {
		return unix.ENOENT
	}
	if f.scheduled != nil {
		f.scheduled(k, had)
	}
	c := *d
	c.ActiveConnections, c.InactiveConnections = had.ActiveConnections, had.InactiveConnections
	f.dests[k][ap] = &c
	return nil
}

func (f *fakeIPVS) DelDestination(s *mipvs.Service, d *mipvs.Destination) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := f.key(s)
	ap := destAddr(d)
	had, ok := f.dests[k][ap]
	if !ok {
		return unix.ENOENT
	}
	if f.scheduled != nil {
		f.scheduled(k, had)
	}
	delete(f.dests[k], ap)
	return nil
}

func (f *fakeIPVS) SetConfig(*mipvs.Config) error { return nil }
func (f *fakeIPVS) Close()                        {}

// scheduler returns the scheduler of the virtual server k ("" when absent).
func (f *fakeIPVS) scheduler(k vsKey) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s := f.svcs[k]; s != nil {
		return s.SchedName
	}
	return ""
}

// realServers returns the real servers of k, sorted.
func (f *fakeIPVS) realServers(k vsKey) []netip.AddrPort {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []netip.AddrPort
	for ap := range f.dests[k] {
		out = append(out, ap)
	}
	slices.SortFunc(out, netip.AddrPort.Compare)
	return out
}

// fakeNet is the dummy interface and sysctls in memory.
type fakeNet struct {
	addrs   map[netip.Addr]bool
	sysctls map[string]string
}

var _ netKernel = (*fakeNet)(nil)

func newFakeNet() *fakeNet {
	return &fakeNet{addrs: map[netip.Addr]bool{}, sysctls: map[string]string{}}
}

func (n *fakeNet) ensureDummy() error { return nil }
func (n *fakeNet) dummyAddrs() ([]netip.Addr, error) {
	return sortedAddrs(n.addrs), nil
}
func (n *fakeNet) addAddr(a netip.Addr) error             { n.addrs[a] = true; return nil }
func (n *fakeNet) delAddr(a netip.Addr) error             { delete(n.addrs, a); return nil }
func (n *fakeNet) deleteDummy() error                     { clear(n.addrs); return nil }
func (n *fakeNet) readSysctl(path string) (string, error) { return n.sysctls[path], nil }
func (n *fakeNet) writeSysctl(path, value string) error   { n.sysctls[path] = value; return nil }
func (n *fakeNet) close()                                 {}

// fakeNft keeps its own copy of the helper tables: set elements and chains as text, changed
// only by the operations it is given, so that tests compare it with a table built from scratch.
type fakeNft struct {
	tables map[*nft.Family]*fakeTable
}

type fakeTable struct {
	elems  map[string]map[nft.Key]string
	chains map[string]string
}

// copyTable is t as the fake keeps it.
func copyTable(t *nftTable) *fakeTable {
	ft := &fakeTable{elems: map[string]map[nft.Key]string{}, chains: map[string]string{}}
	for _, s := range t.sets {
		ft.elems[s.Name] = maps.Clone(s.elems)
	}
	for _, c := range t.chains {
		ft.chains[c.Name] = string(c.AppendText(nil, t.fam))
	}
	return ft
}

// diff describes how ft differs from t, or is empty.
func (ft *fakeTable) diff(t *nftTable) string {
	want := copyTable(t)
	var out []string
	for name, els := range want.elems {
		for k, v := range els {
			if got, ok := ft.elems[name][k]; !ok || got != v {
				out = append(out, fmt.Sprintf("set %s: %v missing (want %q)", name, k, v))
			}
		}
		for k := range ft.elems[name] {
			if _, ok := els[k]; !ok {
				out = append(out, fmt.Sprintf("set %s: %v extra", name, k))
			}
		}
	}
	for name, text := range want.chains {
		if ft.chains[name] != text {
			out = append(out, "chain "+name+" missing or different")
		}
	}
	for name := range ft.chains {
		if _, ok := want.chains[name]; !ok {
			out = append(out, "chain "+name+" extra")
		}
	}
	slices.Sort(out)
	return strings.Join(out, "\n")
}

var _ nftKernel = (*fakeNft)(nil)

func (k *fakeNft) replace(t *nftTable) error { k.tables[t.fam] = copyTable(t); return nil }
func (k *fakeNft) update(t *nftTable, ops *tableOps) error {
	ft := k.tables[t.fam]
	if ft == nil {
		return errors.New("update of a table never programmed")
	}
	for set, els := range ops.del {
		for _, e := range els {
			if _, ok := ft.elems[set][e.key]; !ok {
				return fmt.Errorf("delete of %v, not in set %s", e.key, set)
			}
			delete(ft.elems[set], e.key)
		}
	}
	for _, c := range ops.newChains {
		if _, ok := ft.chains[c.Name]; ok {
			return fmt.Errorf("add of chain %s, which exists", c.Name)
		}
		ft.chains[c.Name] = string(c.AppendText(nil, t.fam))
	}
	for _, c := range ops.rewritten {
		ft.chains[c.Name] = string(c.AppendText(nil, t.fam))
	}
	for set, els := range ops.add {
		for _, e := range els {
			if _, ok := ft.elems[set][e.key]; ok {
				return fmt.Errorf("add of %v, already in set %s", e.key, set)
			}
			ft.elems[set][e.key] = e.val
		}
	}
	for _, name := range ops.gone {
		delete(ft.chains, name)
	}
	return nil
}
func (k *fakeNft) remove(f *nft.Family) error { delete(k.tables, f); return nil }
func (k *fakeNft) owned(*nft.Family) ([]vsKey, error) {
	return nil, nil
}
func (k *fakeNft) close() {}

// fakeProxier is a Proxier over the fakes, logging to log.
func fakeProxier(log *slog.Logger, missing ...string) (*Proxier, *fakeIPVS) {
	f := newFakeIPVS(missing...)
	return newProxier(Options{Log: log, DrainInterval: -1}, f, newFakeNet(), &fakeNft{tables: map[*nft.Family]*fakeTable{}}), f
}

// weight returns real server ap's weight in k (-1 when absent).
func (f *fakeIPVS) weight(k vsKey, ap netip.AddrPort) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if d := f.dests[k][ap]; d != nil {
		return d.Weight
	}
	return -1
}
