package bgp

import (
	"testing"
	"time"
)

// TestBIRDPassword: with TCP-MD5 on BIRD's side, the node with the right password establishes and
// the one with a wrong password does not (the kernel drops its unsigned or mis-signed segments).
func TestBIRDPassword(t *testing.T) {
	t.Parallel()
	l := newLab(t, 2)
	sock := l.bird(birdNodes([]int{1, 2}, nodeASN, `password "s3cret";`))
	right, wrong := l.speaker(1), l.speaker(2)
	p := birdPeer()
	p.Password = "s3cret"
	right.mustSetPeers(p)
	p.Password = "guess"
	wrong.mustSetPeers(p)
	for _, sp := range []*speakerProc{right, wrong} {
		sp.mustAdvertise(Advertisement{Prefix: lbV4})
	}
	waitNextHops(t, sock, lbV4, 20*time.Second, nodeV4(1))
	// Several connect attempts (every 2 s) later the wrong one is still not up.
	deadline := time.Now().Add(3 * p.ConnectTime)
	for time.Now().Before(deadline) {
		if st := wrong.status(); st.Established() != 0 {
			t.Fatalf("session with a wrong password established:\n%s", st)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if hops, out, _ := birdNextHops(sock, lbV4); len(hops) != 1 {
		t.Errorf("BIRD next hops %v, want only node1's:\n%s", hops, out)
	}
}
