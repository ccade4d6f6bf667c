package member

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

func freePort(t *testing.T) uint16 {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return uint16(l.Addr().(*net.TCPAddr).Port)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Three members on loopback find each other, and a member that stops without leaving is seen
// dead by the others within seconds.
func TestMembershipAndDeadNode(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	var ms []*Members
	var first string
	for i, name := range []string{"node01", "node02", "node03"} {
		bind := netip.AddrPortFrom(lo, freePort(t))
		var join []string
		if i > 0 {
			join = []string{first}
		} else {
			first = bind.String()
		}
		m, err := Start(Options{Name: name, Bind: bind, Join: join, Secret: []byte("lab secret")})
		if err != nil {
			t.Fatal(err)
		}
		ms = append(ms, m)
	}
	defer func() {
		for _, m := range ms[:2] {
			m.Leave(time.Second)
		}
	}()
	all := []string{"node01", "node02", "node03"}
	waitFor(t, "all three alive", func() bool { return slices.Equal(ms[0].Alive(), all) && slices.Equal(ms[2].Alive(), all) })

	start := time.Now()
	_ = ms[2].ml.Shutdown() // dies: no leave message
	waitFor(t, "node03 seen dead", func() bool { return slices.Equal(ms[0].Alive(), all[:2]) })
	t.Logf("dead node detected in %v", time.Since(start).Round(time.Millisecond))
	if ms[0].Changes() < 3 {
		t.Errorf("changes %d, want joins and a leave counted", ms[0].Changes())
	}
}

// Start refuses to gossip without a secret unless told Insecure, and a host without the secret,
// or with another one, cannot join members that have it: it would otherwise become an owner of
// load-balancer addresses that nobody then answers for.
func TestSecretRequiredAndEnforced(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	if _, err := Start(Options{Name: "node01", Bind: netip.AddrPortFrom(lo, freePort(t))}); !errors.Is(err, ErrNoSecret) {
		t.Fatalf("Start without a secret: %v, want ErrNoSecret", err)
	}
	bind := netip.AddrPortFrom(lo, freePort(t))
	m, err := Start(Options{Name: "node01", Bind: bind, Secret: []byte("lab secret")})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Leave(time.Second)
	for name, o := range map[string]Options{
		"no secret":    {Insecure: true},
		"wrong secret": {Secret: []byte("guessed")},
	} {
		o.Name, o.Bind = "intruder", netip.AddrPortFrom(lo, freePort(t))
		intruder, err := Start(o)
		if err != nil {
			t.Fatal(err)
		}
		// Join is a synchronous push/pull with node01: had it been accepted, both would list
		// each other by the time it returns.
		n, err := intruder.ml.Join([]string{bind.String()})
		if err == nil || n != 0 {
			t.Errorf("%s: join contacted %d nodes, err %v; want refused", name, n, err)
		}
		if got := m.Alive(); !slices.Equal(got, []string{"node01"}) {
			t.Errorf("%s: node01 sees %v", name, got)
		}
		intruder.Leave(0)
	}
}

// TestRejoinFindsPeersLater: a member whose join list names a peer that is not up yet finds it
// once it is, although the peer knows nobody: the same contact merges the two sides of a
// partition that outlasted memberlist's gossip to dead nodes.
func TestRejoinFindsPeersLater(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	bindA, bindB := netip.AddrPortFrom(lo, freePort(t)), netip.AddrPortFrom(lo, freePort(t))
	a, err := Start(Options{Name: "node01", Bind: bindA, Join: []string{bindB.String()}, Secret: []byte("lab secret"), RejoinInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Leave(time.Second)
	b, err := Start(Options{Name: "node02", Bind: bindB, Secret: []byte("lab secret")})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Leave(time.Second)
	both := []string{"node01", "node02"}
	waitFor(t, "both alive on both", func() bool { return slices.Equal(a.Alive(), both) && slices.Equal(b.Alive(), both) })
}

// Metadata set on one member reaches the others, and a change replaces it.
func TestMeta(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	a, err := Start(Options{Name: "node01", Bind: netip.AddrPortFrom(lo, freePort(t)), Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Leave(time.Second)
	if err := a.SetMeta([]byte("one")); err != nil {
		t.Fatal(err)
	}
	b, err := Start(Options{Name: "node02", Bind: netip.AddrPortFrom(lo, freePort(t)), Insecure: true,
		Join: []string{a.ml.LocalNode().Address()}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Leave(time.Second)
	waitFor(t, "node01's metadata on node02", func() bool { return string(b.Metas()["node01"]) == "one" })
	if err := a.SetMeta([]byte("two")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "node01's new metadata on node02", func() bool { return string(b.Metas()["node01"]) == "two" })
	if err := a.SetMeta(make([]byte, MetaLimit+1)); err == nil {
		t.Error("metadata over the limit accepted")
	}
}

// A suspected member still counts (memberlist tells nobody when a member turns suspect or
// recovers, so the view must not change then); a dead or departed one does not.
func TestAliveNamesKeepSuspects(t *testing.T) {
	nodes := []*memberlist.Node{
		{Name: "node03", State: memberlist.StateSuspect},
		{Name: "node01", State: memberlist.StateAlive},
		{Name: "node04", State: memberlist.StateDead},
		{Name: "node05", State: memberlist.StateLeft},
	}
	if got, want := aliveNames(nodes), []string{"node01", "node03"}; !slices.Equal(got, want) {
		t.Errorf("aliveNames = %v, want %v", got, want)
	}
}
