package bgp

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// TestBIRDBFD cuts the links of two nodes at once: node1's session runs BFD (300 ms × 3, as
// MetalLB's default BFDProfile) and BIRD drops its next hop within bfdDeadline; node2's session has
// only its 9 s hold time, so its next hop is still there at that moment. Without BFD the test fails
// (node1 would outlive the deadline like node2). Several rounds give min/median/max; BIRD waits
// only 1–2 s (error wait time) before it accepts the node again after the BFD failure.
func TestBIRDBFD(t *testing.T) {
	t.Parallel()
	const bfdDeadline = 2 * time.Second
	// node3 runs nothing: its link keeps the router's bridge up while both others are cut, as a
	// switch would (a bridge without carrier makes BIRD drop every neighbour on it at once).
	l := newLab(t, 3)
	sock := l.bird(`protocol bfd { interface "*" { min rx interval 300 ms; min tx interval 300 ms; multiplier 3; }; }
` + birdNodes([]int{1}, nodeASN, "bfd on; error wait time 1,2;") + `protocol bgp node2 from node { neighbor 10.0.0.152 as 64513; }
`)
	withBFD := birdPeer()
	withBFD.BFD = BFD{Enabled: true, ReceiveInterval: 300 * time.Millisecond, TransmitInterval: 300 * time.Millisecond, DetectMultiplier: 3}
	sps := []*speakerProc{l.speaker(1), l.speaker(2)}
	sps[0].mustSetPeers(withBFD)
	sps[1].mustSetPeers(birdPeer())
	for _, sp := range sps {
		sp.mustAdvertise(Advertisement{Prefix: lbV4})
	}
	var measured []time.Duration
	for round := 1; round <= 3; round++ {
		waitNextHops(t, sock, lbV4, 30*time.Second, nodeV4(1), nodeV4(2))
		waitFor(t, 10*time.Second, "BIRD's BFD session with node1 up", func() error {
			out, err := birdc(sock, "show", "bfd", "sessions")
			if err != nil || !strings.Contains(out, nodeV4(1).String()) || !strings.Contains(out, " Up ") {
				return errorf("%v\n%s", err, out)
			}
			return nil
		})
		l.must("ip", "-n", l.node(1), "link", "set", "ens33", "down")
		l.must("ip", "-n", l.node(2), "link", "set", "ens33", "down")
		d := waitNextHops(t, sock, lbV4, bfdDeadline, nodeV4(2))
		measured = append(measured, d)
		t.Logf("MEASURED round %d: link cut → BIRD drops the BFD node's next hop: %s (node without BFD still there)", round, d.Round(time.Millisecond))
		l.must("ip", "-n", l.node(1), "link", "set", "ens33", "up")
		l.must("ip", "-n", l.node(2), "link", "set", "ens33", "up")
	}
	slices.Sort(measured)
	t.Logf("MEASURED BFD 300ms×3 withdrawal over %d rounds: min %s median %s max %s", len(measured),
		measured[0].Round(time.Millisecond), measured[len(measured)/2].Round(time.Millisecond), measured[len(measured)-1].Round(time.Millisecond))
}

// TestBIRDDynamicASN: a peer with dynamicASN external learns BIRD's AS from its OPEN and comes
// up; one whose router turns out to be in our own AS is refused, as FRR's "remote-as external".
func TestBIRDDynamicASN(t *testing.T) {
	t.Parallel()
	l := newLab(t, 2)
	sock := l.bird(birdNodes([]int{1}, nodeASN, "") + `protocol bgp inode2 { local as 64512; neighbor 10.0.0.152 as 64512; passive on; direct;
  ipv4 { import all; export none; }; }
`)
	ext, same := l.speaker(1), l.speaker(2)
	p := birdPeer()
	p.ASN, p.DynamicASN = 0, DynamicExternal
	ext.mustSetPeers(p)
	ext.mustAdvertise(Advertisement{Prefix: lbV4})
	waitNextHops(t, sock, lbV4, 20*time.Second, nodeV4(1))
	if st := ext.status(); len(st.Sessions) != 1 || st.Sessions[0].PeerASN != routerASN {
		t.Errorf("learnt peer AS: got %+v, want %d", st.Sessions, routerASN)
	}
	p.MyASN = routerASN
	same.mustSetPeers(p)
	waitFor(t, 20*time.Second, "the same-AS session refused", func() error {
		st := same.status()
		if len(st.Sessions) != 1 || !strings.Contains(st.Sessions[0].LastError, "our own AS") {
			return errorf("%s", st)
		}
		return nil
	})
	if st := same.status(); st.Established() != 0 {
		t.Errorf("same-AS session up:\n%s", st)
	}
}
