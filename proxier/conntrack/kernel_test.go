package conntrack

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	v1 "k8s.io/api/core/v1"
)

// netnsForTest creates a network namespace that lives as long as the test.
func netnsForTest(t *testing.T) string {
	t.Helper()
	name := fmt.Sprintf("na-ct-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	return name
}

func inNS(t *testing.T, ns string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestKernelDeletesStaleUDPFlow sends a real UDP packet to a service IP inside a lab namespace,
// DNAT-ed to a local "endpoint", and checks that the entry survives while that endpoint is valid
// and is deleted once the service's only endpoint is another one.
func TestKernelDeletesStaleUDPFlow(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces and conntrack")
	}
	for _, tool := range []string{"ip", "iptables", "conntrack", "bash"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	ns := netnsForTest(t)
	inNS(t, ns, "ip", "link", "set", "lo", "up")
	inNS(t, ns, "ip", "addr", "add", "10.244.1.5/32", "dev", "lo")
	inNS(t, ns, "ip", "route", "add", "10.96.0.0/12", "dev", "lo")
	inNS(t, ns, "iptables", "-t", "nat", "-A", "OUTPUT", "-d", "10.96.0.10/32", "-p", "udp", "--dport", "53",
		"-j", "DNAT", "--to-destination", "10.244.1.5:5353")
	inNS(t, ns, "bash", "-c", "echo query >/dev/udp/10.96.0.10/53")

	entries := func() int {
		out := inNS(t, ns, "conntrack", "-L", "-p", "udp", "--orig-dst", "10.96.0.10")
		n := 0
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "udp") {
				n++
			}
		}
		return n
	}
	if n := entries(); n != 1 {
		t.Fatalf("after sending: %d conntrack entries to 10.96.0.10, want 1", n)
	}

	h, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	k, err := NewKernel(h)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Delete()
	c := NewCleaner(k, nil)

	svc := dnsService(v1.ProtocolUDP, ep("10.244.1.5:5353"))
	if err := c.Clean(state(svc), dnsChanged); err != nil {
		t.Fatal(err)
	}
	if n := entries(); n != 1 {
		t.Fatalf("endpoint still valid: %d entries, want 1", n)
	}
	moved := dnsService(v1.ProtocolUDP, ep("10.244.2.7:5353"))
	if err := c.Clean(state(moved), dnsChanged); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for entries() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("stale entry to %s still present", netip.MustParseAddr("10.96.0.10"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
