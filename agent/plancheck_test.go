package agent

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/runtime"

	"nodeagent/member"
	"nodeagent/metallb"
	"nodeagent/source"
)

func TestDisagrees(t *testing.T) {
	a := metallb.PlanDigest{Inputs: [metallb.DigestSize]byte{1}, Decision: [metallb.DigestSize]byte{1}}
	otherDecision := metallb.PlanDigest{Inputs: a.Inputs, Decision: [metallb.DigestSize]byte{2}}
	otherBoth := metallb.PlanDigest{Inputs: [metallb.DigestSize]byte{2}, Decision: [metallb.DigestSize]byte{2}}
	otherInputs := metallb.PlanDigest{Inputs: [metallb.DigestSize]byte{2}, Decision: a.Decision}
	grace := 15 * time.Second
	tests := []struct {
		name string
		peer metallb.PlanDigest
		for_ time.Duration
		want bool
	}{
		{"the same digest", a, time.Hour, false},
		{"same inputs, other decision: at once", otherDecision, 0, true},
		{"other inputs, other decision, within the grace period", otherBoth, grace - time.Millisecond, false},
		{"other inputs, other decision, past the grace period", otherBoth, grace, true},
		{"other inputs, same decision, for long", otherInputs, time.Hour, false},
	}
	for _, tt := range tests {
		if got := disagrees(a, tt.peer, tt.for_, grace); got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
}

// lockedBuffer is a log destination several goroutines write to.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.b.String(), s)
}

// gather returns the value of every metric c exposes, by name.
func gather(t *testing.T, c prometheus.Collector) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if m.GetCounter() != nil {
				out[mf.GetName()] = m.GetCounter().GetValue()
			} else {
				out[mf.GetName()] = m.GetGauge().GetValue()
			}
		}
	}
	return out
}

// planAgent is the load-balancing half of one agent: membership, speaker and check.
type planAgent struct {
	check  *planCheck
	logs   *lockedBuffer
	mu     sync.Mutex
	events []string
}

func startPlanAgent(t *testing.T, name, class string, join []string, objs source.Objects) (*planAgent, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	bind := netip.MustParseAddrPort(l.Addr().String())
	l.Close()
	// As the agent: the speaker exists first, and hears of every membership change.
	var members atomic.Pointer[member.Members]
	sp := metallb.New(metallb.Options{Node: name, Class: class, Next: discard{}, Alive: func() []string {
		if m := members.Load(); m != nil {
			return m.Alive()
		}
		return []string{name}
	},
		Announce: func(map[netip.Addr][]string) {}, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	m, err := member.Start(member.Options{Name: name, Bind: bind, Join: join, Insecure: true,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), OnChange: sp.MembershipChanged})
	if err != nil {
		t.Fatal(err)
	}
	members.Store(m)
	t.Cleanup(func() { m.Leave(time.Second) })
	objs.Deliver(sp)
	a := &planAgent{logs: &lockedBuffer{}}
	a.check = newPlanCheck(name, sp.Digest, m, slog.New(slog.NewTextHandler(a.logs, nil)))
	a.check.every, a.check.grace = 20*time.Millisecond, time.Hour // only same-input disagreements here
	a.check.event = func(peer, msg string) {
		a.mu.Lock()
		defer a.mu.Unlock()
		a.events = append(a.events, peer+": "+msg)
	}
	ctx := t.Context()
	go a.check.run(ctx)
	return a, bind.String()
}

type discard struct{}

func (discard) Upsert(runtime.Object) {}
func (discard) Delete(runtime.Object) {}
func (discard) Synced()               {}

// Three agents gossip their plan digests over memberlist: two with the same objects and
// configuration agree (both metrics 0, no log line); a third that serves another --lb-class
// decides differently from the same inputs, and every agent counts it at once, with one log
// line and one Event per disagreeing peer however many checks follow.
func TestPlanCheckThreeAgents(t *testing.T) {
	objs, _, err := source.Load("../examples")
	if err != nil {
		t.Fatal(err)
	}
	a1, addr := startPlanAgent(t, "node01", "", nil, objs)
	a2, _ := startPlanAgent(t, "node02", "", []string{addr}, objs)
	compared := func(a *planAgent, n int) bool {
		a.check.mu.Lock()
		defer a.check.mu.Unlock()
		return len(a.check.peers) == n
	}
	waitFor(t, "node01 and node02 comparing", func() bool { return compared(a1, 1) && compared(a2, 1) })
	for i, a := range []*planAgent{a1, a2} {
		a.check.tick(time.Now())
		if m := gather(t, a.check); m["nodeagent_lb_plan_peers_disagreeing"] != 0 || m["nodeagent_lb_plan_disagreements_total"] != 0 ||
			m["nodeagent_lb_plan_peers_compared"] != 1 {
			t.Errorf("agent %d, agreeing: %v", i+1, m)
		}
	}

	a3, _ := startPlanAgent(t, "node03", "other-class", []string{addr}, objs)
	for i, a := range []*planAgent{a1, a2} {
		waitFor(t, fmt.Sprintf("agent %d counting node03", i+1), func() bool {
			return gather(t, a.check)["nodeagent_lb_plan_peers_disagreeing"] == 1
		})
	}
	waitFor(t, "node03 counting both", func() bool { return gather(t, a3.check)["nodeagent_lb_plan_peers_disagreeing"] == 2 })
	// More checks do not repeat the log line or the Event.
	for range 5 {
		a1.check.tick(time.Now())
	}
	const line = "load-balancer decisions differ from a peer"
	if n := a1.logs.count(line); n != 1 || a1.logs.count("peer=node03") != 1 {
		t.Errorf("node01 logged %q %d times, want once about node03:\n%s", line, n, a1.logs.b.String())
	}
	if m := gather(t, a1.check); m["nodeagent_lb_plan_disagreements_total"] != 1 {
		t.Errorf("node01: %v", m)
	}
	a1.mu.Lock()
	defer a1.mu.Unlock()
	if len(a1.events) != 1 || !strings.HasPrefix(a1.events[0], "node03: ") || !strings.Contains(a1.events[0], "from the same inputs") {
		t.Errorf("node01's Events: %q", a1.events)
	}
}

// fakeMembers is a membership of one's own metadata and the peers' given.
type fakeMembers struct {
	meta  []byte
	peers map[string][]byte
}

func (f *fakeMembers) SetMeta(b []byte) error { f.meta = b; return nil }
func (f *fakeMembers) Metas() map[string][]byte {
	out := map[string][]byte{"node01": f.meta}
	for k, v := range f.peers {
		out[k] = v
	}
	return out
}

// Before its initial state is assigned an agent has inputs but no decisions: it gossips
// nothing and counts nobody as disagreeing, even a peer with the same inputs.
func TestPlanCheckWaitsForDecisions(t *testing.T) {
	peer := metallb.PlanDigest{Inputs: [metallb.DigestSize]byte{1}, Decision: [metallb.DigestSize]byte{1}}
	self := metallb.PlanDigest{Inputs: peer.Inputs, Decision: [metallb.DigestSize]byte{2}}
	decided := false
	m := &fakeMembers{peers: map[string][]byte{"node02": metallb.EncodeDigest(peer)}}
	c := newPlanCheck("node01", func() (metallb.PlanDigest, bool) { return self, decided }, m, slog.New(slog.DiscardHandler))
	c.tick(time.Now())
	if got := gather(t, c); m.meta != nil || got["nodeagent_lb_plan_disagreements_total"] != 0 || got["nodeagent_lb_plan_peers_compared"] != 0 {
		t.Errorf("undecided: gossiped %x, metrics %v; want nothing gossiped or compared", m.meta, got)
	}
	decided = true
	c.tick(time.Now())
	if got := gather(t, c); m.meta == nil || got["nodeagent_lb_plan_disagreements_total"] != 1 {
		t.Errorf("decided: gossiped %x, metrics %v; want the digest gossiped and one disagreement", m.meta, got)
	}
}
