package ipvs

import (
	"errors"
	"net/netip"
	"slices"
	"sync"
	"testing"

	mipvs "github.com/moby/ipvs"
	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/types"

	"nodeagent/proxier"
	"nodeagent/proxier/conntrack"
	"nodeagent/proxier/nft"
)

var _ Cleaner = (*conntrack.Cleaner)(nil)

// stubIPVS is an in-memory IPVS table, enough for Sync to run without the kernel module.
type stubIPVS struct {
	mu    sync.Mutex
	svcs  map[vsKey]*mipvs.Service
	dests map[vsKey][]*mipvs.Destination
	fail  error // returned by NewService when set
}

func newStubIPVS() *stubIPVS {
	return &stubIPVS{svcs: map[vsKey]*mipvs.Service{}, dests: map[vsKey][]*mipvs.Destination{}}
}

func (k *stubIPVS) key(s *mipvs.Service) vsKey {
	key, _ := keyOf(s)
	return key
}

func (k *stubIPVS) GetServices() ([]*mipvs.Service, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []*mipvs.Service
	for _, s := range k.svcs {
		c := *s
		out = append(out, &c)
	}
	return out, nil
}

func (k *stubIPVS) GetService(s *mipvs.Service) (*mipvs.Service, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	got, ok := k.svcs[k.key(s)]
	if !ok {
		return nil, unix.ESRCH
	}
	c := *got
	return &c, nil
}

func (k *stubIPVS) GetDestinations(s *mipvs.Service) ([]*mipvs.Destination, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, ok := k.svcs[k.key(s)]; !ok {
		return nil, unix.ESRCH
	}
	return slices.Clone(k.dests[k.key(s)]), nil
}

func (k *stubIPVS) NewService(s *mipvs.Service) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.fail != nil {
		return k.fail
	}
	c := *s
	k.svcs[k.key(s)] = &c
	return nil
}

func (k *stubIPVS) UpdateService(s *mipvs.Service) error { return k.NewService(s) }

func (k *stubIPVS) DelService(s *mipvs.Service) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.svcs, k.key(s))
	delete(k.dests, k.key(s))
	return nil
}

func (k *stubIPVS) NewDestination(s *mipvs.Service, d *mipvs.Destination) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	c := *d
	k.dests[k.key(s)] = append(k.dests[k.key(s)], &c)
	return nil
}

func (k *stubIPVS) UpdateDestination(s *mipvs.Service, d *mipvs.Destination) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, have := range k.dests[k.key(s)] {
		if destAddr(have) == destAddr(d) {
			have.Weight = d.Weight
		}
	}
	return nil
}

func (k *stubIPVS) DelDestination(s *mipvs.Service, d *mipvs.Destination) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.dests[k.key(s)] = slices.DeleteFunc(k.dests[k.key(s)], func(have *mipvs.Destination) bool {
		return destAddr(have) == destAddr(d)
	})
	return nil
}

func (k *stubIPVS) SetConfig(*mipvs.Config) error { return nil }
func (k *stubIPVS) Close()                        {}

// stubNet is the dummy interface and /proc/sys in memory.
type stubNet struct {
	addrs   map[netip.Addr]bool
	sysctls map[string]string
}

func (n *stubNet) ensureDummy() error { return nil }
func (n *stubNet) dummyAddrs() ([]netip.Addr, error) {
	var out []netip.Addr
	for a := range n.addrs {
		out = append(out, a)
	}
	return out, nil
}
func (n *stubNet) addAddr(a netip.Addr) error { n.addrs[a] = true; return nil }
func (n *stubNet) delAddr(a netip.Addr) error { delete(n.addrs, a); return nil }
func (n *stubNet) deleteDummy() error         { clear(n.addrs); return nil }
func (n *stubNet) readSysctl(path string) (string, error) {
	return n.sysctls[path], nil
}
func (n *stubNet) writeSysctl(path, value string) error { n.sysctls[path] = value; return nil }
func (n *stubNet) close()                               {}

// stubNft accepts every table.
type stubNft struct{}

func (stubNft) replace(*nftTable) error            { return nil }
func (stubNft) update(*nftTable, *tableOps) error  { return nil }
func (stubNft) remove(*nft.Family) error           { return nil }
func (stubNft) owned(*nft.Family) ([]vsKey, error) { return nil, nil }
func (stubNft) close()                             {}

// recordingCleaner records what each Clean call got.
type recordingCleaner struct {
	calls []proxier.Changes
}

func (c *recordingCleaner) Clean(_ *proxier.State, ch proxier.Changes) error {
	c.calls = append(c.calls, ch)
	return nil
}

// TestSyncCleansConntrack: like the other modes (and kube-proxy's ipvs mode), every successful
// Sync hands the state and its changes to the conntrack cleaner, so that a UDP flow whose real
// server went away is not kept on it by a stale conntrack entry; a failed Sync does not, and the
// next one is full.
func TestSyncCleansConntrack(t *testing.T) {
	ct := &recordingCleaner{}
	k := newStubIPVS()
	p := newProxier(Options{DrainInterval: -1, Conntrack: ct}, k,
		&stubNet{addrs: map[netip.Addr]bool{}, sysctls: map[string]string{}}, stubNft{})
	st := testState()
	mustSync(t, p, st, proxier.Changes{Full: true})
	if len(ct.calls) != 1 || !ct.calls[0].Full {
		t.Fatalf("first sync: cleaner calls %+v, want one full", ct.calls)
	}
	dns := nsName("kube-system", "dns")
	st2 := cloneState(st)
	sp := service(st2, "dns", proxier.IPv4)
	withEndpoints(sp, sp.AllEndpoints[:1]...)
	mustSync(t, p, st2, changed(dns))
	if len(ct.calls) != 2 || ct.calls[1].Full || !ct.calls[1].Services[dns] {
		t.Fatalf("endpoint removed: cleaner calls %+v, want a partial one naming %s", ct.calls, dns)
	}

	k.fail = errors.New("refused")
	st3 := cloneState(st2)
	st3.Services = append(st3.Services, withEndpoints(&proxier.ServicePort{
		Name: spn("default", "late", "", "UDP", proxier.IPv4), ClusterIP: addr("10.96.0.70"), Port: 53,
	}, ep("10.244.2.70", 53, "node02")))
	late := types.NamespacedName{Namespace: "default", Name: "late"}
	if err := p.Sync(t.Context(), st3, changed(late)); err == nil {
		t.Fatal("sync over a refusing kernel succeeded")
	}
	if len(ct.calls) != 2 {
		t.Fatalf("a failed sync called the cleaner: %+v", ct.calls)
	}
	k.fail = nil
	mustSync(t, p, st3, changed())
	if len(ct.calls) != 3 || !ct.calls[2].Full {
		t.Fatalf("after a failed sync: cleaner calls %+v, want a full one", ct.calls)
	}
}
