package iptables

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"nodeagent/proxier"
)

// scaleState is n ClusterIP services of perService endpoints each, shaped like bench's: service i
// at 10.96.0.0 + i + 1 port 80, endpoints from 10.128.0.0 on port 8080, half of them on node01.
func scaleState(n, perService int) *proxier.State {
	sps := make([]*proxier.ServicePort, 0, n)
	for i := range n {
		eps := make([]proxier.Endpoint, perService)
		for j := range eps {
			eps[j] = scaleEndpoint(i*perService + j)
		}
		sps = append(sps, svc("bench", fmt.Sprintf("svc-%05d", i), "http", v1.ProtocolTCP, nthAddr("10.96.0.0", i+1).String(), 80, eps...))
	}
	return labState(sps...)
}

func scaleEndpoint(k int) proxier.Endpoint {
	e := proxier.Endpoint{Addr: nthAddr("10.128.0.0", k), Port: 8080, NodeName: "node02", Ready: true, Serving: true}
	if k%2 == 0 {
		e.NodeName, e.Local = node, true
	}
	return e
}

func nthAddr(base string, n int) netip.Addr {
	b := addr(base).As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) + uint32(n)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// nullExec accepts every restore and shows an empty ruleset, so benchmarks time the Go side only.
type nullExec struct{ restored int }

func (e *nullExec) Run(_ context.Context, name string, _ []string, stdin []byte, _ io.Writer) error {
	if strings.HasSuffix(name, "-restore") {
		e.restored += len(stdin)
	}
	return nil
}

func benchSync(b *testing.B, n int, partial bool) {
	ctx := context.Background()
	st := scaleState(n, 10)
	p, err := New(Options{Families: []proxier.Family{proxier.IPv4}, Exec: &nullExec{}, Log: slog.New(slog.DiscardHandler),
		Rules: func(proxier.Family) (Rules, error) { return fakeRules{}, nil }})
	if err != nil {
		b.Fatal(err)
	}
	if err := p.Sync(ctx, st, proxier.Changes{Full: true}); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if !partial {
			if err := p.Sync(ctx, st, proxier.Changes{Full: true}); err != nil {
				b.Fatal(err)
			}
			continue
		}
		// One endpoint of one service changes, as in bench's change loop.
		k := 1 + i%(n-1)
		sp := st.Services[k]
		eps := append([]proxier.Endpoint(nil), sp.AllEndpoints...)
		eps[i%len(eps)] = scaleEndpoint(n*10 + i)
		st.Services[k] = withEndpoints(sp, eps...)
		if err := p.Sync(ctx, st, changes(sp.Name.NamespacedName.String())); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSyncFull1000(b *testing.B)    { benchSync(b, 1000, false) }
func BenchmarkSyncFull5000(b *testing.B)    { benchSync(b, 5000, false) }
func BenchmarkSyncPartial1000(b *testing.B) { benchSync(b, 1000, true) }
func BenchmarkSyncPartial5000(b *testing.B) { benchSync(b, 5000, true) }

// TestRestoreListsAllWhenLarge checks when a restore starts a table with -S: for the big first
// sync (where iptables-nft's chain list would cost L*C/2 compares) but not for a small partial sync.
func TestRestoreListsAllWhenLarge(t *testing.T) {
	ctx := context.Background()
	h := newFakeHost()
	opts := h.options()
	opts.Families = []proxier.Family{proxier.IPv4}
	p, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	st := scaleState(200, 10)
	if err := p.Sync(ctx, st, proxier.Changes{Full: true}); err != nil {
		t.Fatal(err)
	}
	checkKernel(t, h.v4, st, proxier.IPv4)
	in := lastRestore(h.v4)
	if !strings.HasPrefix(in[strings.Index(in, "*nat\n"):], "*nat\n-S\n") {
		t.Errorf("first sync of 2,200 nat chains does not start the nat table with -S")
	}
	if strings.HasPrefix(in, "*filter\n-S\n") {
		t.Errorf("first sync lists the small filter table")
	}
	// 2,000 endpoints: kube-proxy's large-cluster mode, per-endpoint rules without comments.
	for _, l := range strings.Split(in, "\n") {
		perEndpoint := strings.HasPrefix(l, "-A "+sepPrefix) || strings.HasPrefix(l, "-A "+svcPrefix) && strings.Contains(l, " -j "+sepPrefix)
		if perEndpoint && strings.Contains(l, "--comment") {
			t.Fatalf("large-cluster mode: per-endpoint rule with a comment: %s", l)
		}
		if strings.HasPrefix(l, "-A "+servicesChain) && !strings.Contains(l, "--comment") {
			t.Fatalf("large-cluster mode: dispatch rule without its comment: %s", l)
		}
	}

	sp := st.Services[7]
	st.Services[7] = withEndpoints(sp, append(sp.AllEndpoints[1:], scaleEndpoint(5000))...)
	if err := p.Sync(ctx, st, changes(sp.Name.NamespacedName.String())); err != nil {
		t.Fatal(err)
	}
	checkKernel(t, h.v4, st, proxier.IPv4)
	if in := lastRestore(h.v4); strings.Contains(in, "-S\n") {
		t.Errorf("one-service partial sync lists the table:\n%s", in)
	}
}
