package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	"nodeagent/agent/config"
	"nodeagent/proxier"
	"nodeagent/source"
)

// These tests run the daemon's loop with a fake source and a fake proxier: no root, no network
// namespace, no netlink (the node is given, the start-up steps and servers are off).

// fakeSource delivers objects to the agent: the initial list, then whatever is pushed.
type fakeSource struct {
	initial []runtime.Object
	push    chan runtime.Object
}

func (s *fakeSource) Run(ctx context.Context, sink source.Sink) error {
	for _, o := range s.initial {
		sink.Upsert(o)
	}
	sink.Synced()
	for {
		select {
		case <-ctx.Done():
			return nil
		case o := <-s.push:
			sink.Upsert(o)
		}
	}
}

// syncCall is one call of fakeProxier.Sync: the service ports of the state and the changes.
type syncCall struct {
	services []string
	changes  proxier.Changes
	err      error
}

// fakeProxier records every Sync; fail, when set, decides the error of each.
type fakeProxier struct {
	mu    sync.Mutex
	syncs []syncCall
	fail  func(n int) error // n: the 0-based index of the call
}

func (p *fakeProxier) Sync(_ context.Context, st *proxier.State, ch proxier.Changes) error {
	var names []string
	for _, sp := range st.Services {
		names = append(names, sp.Name.String())
	}
	slices.Sort(names)
	p.mu.Lock()
	defer p.mu.Unlock()
	var err error
	if p.fail != nil {
		err = p.fail(len(p.syncs))
	}
	p.syncs = append(p.syncs, syncCall{services: names, changes: ch, err: err})
	return err
}

func (p *fakeProxier) Render(io.Writer, *proxier.State) error { return nil }
func (p *fakeProxier) Cleanup(context.Context) error          { return nil }

// recorded returns a copy of the syncs so far.
func (p *fakeProxier) recorded() []syncCall {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.syncs)
}

// waitSync polls until a recorded sync satisfies cond and returns it.
func (p *fakeProxier) waitSync(t *testing.T, what string, cond func(i int, s syncCall) bool) syncCall {
	t.Helper()
	var found syncCall
	waitFor(t, what, func() bool {
		for i, s := range p.recorded() {
			if cond(i, s) {
				found = s
				return true
			}
		}
		return false
	})
	return found
}

// testOptions are Options for a run without root: the node given, no start-up steps, no servers,
// no layer 2, no API server whatever the environment says.
func testOptions(t *testing.T, src source.Runner, px proxier.Proxier, configure func(*config.Config)) Options {
	c := config.Default()
	c.Manifests = t.TempDir()
	c.Layer2 = false
	c.HealthzBindAddress, c.MetricsBindAddress = "", ""
	if configure != nil {
		configure(&c)
	}
	return Options{Config: &c, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Version: "test",
		Node: func() (proxier.Node, error) {
			return proxier.Node{Name: "node01", IPs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}}, nil
		},
		Source:     src,
		NewProxier: func(proxier.Recorder) (proxier.Proxier, error) { return px, nil },
		Prepare:    func() error { return nil }}
}

// startAgent runs the agent with src and px until the test ends; configure may change the
// configuration first.
func startAgent(t *testing.T, src source.Runner, px proxier.Proxier, configure func(*config.Config)) {
	t.Helper()
	runAgent(t, testOptions(t, src, px, configure))
}

// runAgent runs the agent with o until the test ends.
func runAgent(t *testing.T, o Options) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, o) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

func webService(port int32) *v1.Service {
	svc := &v1.Service{Spec: v1.ServiceSpec{Type: v1.ServiceTypeClusterIP, ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"},
		IPFamilies: []v1.IPFamily{v1.IPv4Protocol}, Ports: []v1.ServicePort{{Name: "http", Port: port, Protocol: v1.ProtocolTCP}}}}
	svc.Namespace, svc.Name = "default", "web"
	return svc
}

func webEndpoints() *discovery.EndpointSlice {
	es := &discovery.EndpointSlice{AddressType: discovery.AddressTypeIPv4,
		Endpoints: []discovery.Endpoint{{Addresses: []string{"10.244.1.5"}, Conditions: discovery.EndpointConditions{Ready: ptrTo(true)}, NodeName: ptrTo("node01")}},
		Ports:     []discovery.EndpointPort{{Name: ptrTo("http"), Port: ptrTo(int32(8080)), Protocol: ptrTo(v1.ProtocolTCP)}}}
	es.Namespace, es.Name = "default", "web-1"
	es.Labels = map[string]string{discovery.LabelServiceName: "web"}
	return es
}

var web = types.NamespacedName{Namespace: "default", Name: "web"}

// The source's initial list reaches the proxier in one full sync, and a later change of a service
// in a partial sync naming it.
func TestRunSyncsTheSourcesObjects(t *testing.T) {
	src := &fakeSource{initial: []runtime.Object{webService(80), webEndpoints()}, push: make(chan runtime.Object)}
	px := &fakeProxier{}
	startAgent(t, src, px, nil)

	first := px.waitSync(t, "the first sync", func(int, syncCall) bool { return true })
	if !first.changes.Full || !slices.Equal(first.services, []string{"default/web:http/TCP/IPv4"}) {
		t.Fatalf("first sync: full %v, services %v; want a full sync of default/web:http/TCP/IPv4", first.changes.Full, first.services)
	}
	src.push <- webService(81)
	partial := px.waitSync(t, "a sync of the changed service", func(i int, s syncCall) bool { return i > 0 && s.changes.Services[web] })
	if partial.changes.Full {
		t.Errorf("a change of one service made a full sync: %+v", partial.changes)
	}
}

// A failed sync is retried without a new change, and the retry carries the state in force.
func TestRunRetriesAFailedSync(t *testing.T) {
	src := &fakeSource{initial: []runtime.Object{webService(80), webEndpoints()}, push: make(chan runtime.Object)}
	px := &fakeProxier{fail: func(n int) error {
		if n == 0 {
			return errors.New("kernel said no")
		}
		return nil
	}}
	startAgent(t, src, px, nil)

	px.waitSync(t, "a sync after the failed one", func(i int, s syncCall) bool {
		return i > 0 && s.err == nil && slices.Equal(s.services, []string{"default/web:http/TCP/IPv4"})
	})
	if first := px.recorded()[0]; first.err == nil || !first.changes.Full {
		t.Errorf("first sync %+v: want the full sync that failed", first)
	}
}

// With nothing changing, the sync period brings full syncs marked periodic.
func TestRunPeriodicFullSyncs(t *testing.T) {
	src := &fakeSource{initial: []runtime.Object{webService(80), webEndpoints()}, push: make(chan runtime.Object)}
	px := &fakeProxier{}
	startAgent(t, src, px, func(c *config.Config) { c.SyncPeriod = 20 * time.Millisecond })

	px.waitSync(t, "two periodic full syncs", func(i int, s syncCall) bool {
		n := 0
		for _, r := range px.recorded()[:i+1] {
			if r.changes.Full && r.changes.Periodic && slices.Equal(r.services, []string{"default/web:http/TCP/IPv4"}) {
				n++
			}
		}
		return n >= 2
	})
}

// failingSource stops at once, as a source that lost its API server for good.
type failingSource struct{}

func (failingSource) Run(context.Context, source.Sink) error { return errors.New("watch gone") }

// A source that stops ends the run with its error; the proxier saw no sync (nothing was synced).
func TestRunEndsWhenTheSourceStops(t *testing.T) {
	px := &fakeProxier{}
	err := Run(context.Background(), testOptions(t, failingSource{}, px, nil))
	if err == nil || !strings.Contains(err.Error(), "source stopped: watch gone") {
		t.Fatalf("Run: %v, want the source's error", err)
	}
	if n := len(px.recorded()); n != 0 {
		t.Errorf("%d syncs before the source delivered anything", n)
	}
}

func ptrTo[T any](v T) *T { return &v }
