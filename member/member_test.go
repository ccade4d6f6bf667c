package member

import (
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"
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
