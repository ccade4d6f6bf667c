package conntrack

import (
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"

	"nodeagent/proxier"
)

type walk struct {
	family  proxier.Family
	deleted int
}

type walkRecorder struct {
	proxier.NopRecorder
	walks []walk
}

func (r *walkRecorder) ConntrackCleaned(f proxier.Family, _ time.Duration, deleted int) {
	r.walks = append(r.walks, walk{f, deleted})
}

// Every table walk is reported with its family and the entries it deleted (kube-proxy's
// conntrack reconciler metrics); a Clean that needs no walk reports nothing.
func TestCleanRecordsWalks(t *testing.T) {
	k := &fakeKernel{}
	rec := &walkRecorder{}
	c := NewCleaner(k, nil)
	c.Recorder = rec
	if err := c.Clean(state(dnsService(v1.ProtocolUDP, ep("10.244.1.5:5353"), ep("10.244.2.7:5353"))), dnsChanged); err != nil {
		t.Fatal(err)
	}
	if len(rec.walks) != 1 || rec.walks[0] != (walk{proxier.IPv4, 0}) {
		t.Fatalf("first Clean reported %v, want one IPv4 walk deleting nothing", rec.walks)
	}
	k.flows = []*netlink.ConntrackFlow{flow(unix.IPPROTO_UDP, "10.244.1.9:40001", "10.96.0.10:53", "10.244.2.7:5353")}
	if err := c.Clean(state(dnsService(v1.ProtocolUDP, ep("10.244.1.5:5353"))), dnsChanged); err != nil {
		t.Fatal(err)
	}
	if len(rec.walks) != 2 || rec.walks[1] != (walk{proxier.IPv4, 1}) {
		t.Fatalf("after an endpoint left: %v, want a second IPv4 walk deleting 1", rec.walks)
	}
	if err := c.Clean(state(dnsService(v1.ProtocolUDP, ep("10.244.1.5:5353"))), dnsChanged); err != nil {
		t.Fatal(err)
	}
	if len(rec.walks) != 2 {
		t.Errorf("nothing changed, yet walks reported: %v", rec.walks)
	}
}
