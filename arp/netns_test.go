package arp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// The kernel test builds two throwaway network namespaces joined by a veth pair: the responder's
// ("node", interface vr, 10.0.0.151 / fd00:10::151) and the client's (interface vc, 10.0.0.1 /
// fd00:10::1), runs a Responder in the first and watches from the second with arping, socat and
// ip neigh. Nothing touches the host's own namespace.

func run(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, err := run(t, "", args...)
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func newNetNS(t *testing.T, name string) {
	t.Helper()
	mustRun(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := run(t, "", "ip", "netns", "del", name); err != nil {
			t.Errorf("delete netns %s: %v %s", name, err, out)
		}
	})
	// No duplicate address detection: addresses are usable at once.
	mustRun(t, "ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
		"net.ipv6.conf.default.accept_dad=0")
	mustRun(t, "ip", "-n", name, "link", "set", "lo", "up")
}

// neighMAC returns the link-layer address ip neigh shows for addr in ns ("" when none).
func neighMAC(t *testing.T, ns, dev string, addr netip.Addr) string {
	out, _ := run(t, "", "ip", "-n", ns, "neigh", "show", addr.String(), "dev", dev)
	if m := regexp.MustCompile(`lladdr ([0-9a-f:]{17})`).FindStringSubmatch(out); m != nil {
		return m[1]
	}
	return ""
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestKernel(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	for _, tool := range []string{"ip", "arping", "socat"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
	node, client := fmt.Sprintf("na%dnode", os.Getpid()), fmt.Sprintf("na%dcli", os.Getpid())
	newNetNS(t, node)
	newNetNS(t, client)
	mustRun(t, "ip", "-n", node, "link", "add", "vr", "type", "veth", "peer", "name", "vc", "netns", client)
	mustRun(t, "ip", "-n", node, "addr", "add", "10.0.0.151/24", "dev", "vr")
	mustRun(t, "ip", "-n", node, "addr", "add", "fd00:10::151/64", "dev", "vr")
	mustRun(t, "ip", "-n", client, "addr", "add", "10.0.0.1/24", "dev", "vc")
	mustRun(t, "ip", "-n", client, "addr", "add", "fd00:10::1/64", "dev", "vc")
	mustRun(t, "ip", "-n", node, "link", "set", "vr", "up")
	mustRun(t, "ip", "-n", client, "link", "set", "vc", "up")
	// The NDP socket binds to the link-local address: wait for it.
	waitFor(t, "link-local address on vr", 10*time.Second, func() bool {
		out, _ := run(t, "", "ip", "-n", node, "-6", "addr", "show", "dev", "vr", "scope", "link")
		return strings.Contains(out, "fe80") && !strings.Contains(out, "tentative")
	})
	var nodeMAC string
	if m := regexp.MustCompile(`link/ether ([0-9a-f:]{17})`).FindStringSubmatch(mustRun(t, "ip", "-n", node, "link", "show", "vr")); m != nil {
		nodeMAC = m[1]
	} else {
		t.Fatal("no MAC on vr")
	}

	r := New(Options{NetNS: "/run/netns/" + node, RescanInterval: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Run: %v", err)
		}
	})

	// The host's links are not the responder's: it lists the node namespace.
	links, err := r.opts.Links.Links()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range links {
		names = append(names, l.Name)
	}
	if strings.Join(names, ",") != "lo,vr" {
		t.Fatalf("links in the node namespace: %v", names)
	}

	arping := func(addr string) (string, error) {
		return run(t, "", "ip", "netns", "exec", client, "arping", "-c1", "-w1", "-i", "vc", addr)
	}
	vip, vip2, vip6 := netip.MustParseAddr("10.0.0.51"), netip.MustParseAddr("10.0.0.52"), netip.MustParseAddr("fd00:10::51")

	t.Run("not owned: silent", func(t *testing.T) {
		if out, err := arping(vip.String()); err == nil {
			t.Fatalf("10.0.0.51 answered before being owned:\n%s", out)
		}
	})

	t.Run("ARP answered with the node's MAC", func(t *testing.T) {
		r.SetOwned(map[netip.Addr][]string{vip: {"vr"}})
		var out string
		waitFor(t, "an ARP answer", 5*time.Second, func() bool {
			out, err = arping(vip.String())
			return err == nil
		})
		if !strings.Contains(strings.ToLower(out), nodeMAC) {
			t.Errorf("arping answered, not by %s:\n%s", nodeMAC, out)
		}
		// The client's kernel resolves it too, and the address is not on the node's interface.
		run(t, "x", "ip", "netns", "exec", client, "socat", "-u", "-", "UDP4-SENDTO:10.0.0.51:9")
		waitFor(t, "neighbour entry", 5*time.Second, func() bool { return neighMAC(t, client, "vc", vip) == nodeMAC })
		if out := mustRun(t, "ip", "-n", node, "addr", "show", "dev", "vr"); strings.Contains(out, "10.0.0.51") {
			t.Errorf("address added to the interface:\n%s", out)
		}
		if st := r.Stats(); st.ARPRequestsAnswered == 0 || st.Announced != 1 {
			t.Errorf("stats %+v", st)
		}
	})

	t.Run("gratuitous ARP moves the client's entry", func(t *testing.T) {
		// The client believes another node holds 10.0.0.52.
		mustRun(t, "ip", "-n", client, "neigh", "replace", vip2.String(), "lladdr", "02:00:00:00:00:99", "dev", "vc", "nud", "stale")
		start := time.Now()
		r.SetOwned(map[netip.Addr][]string{vip: {"vr"}, vip2: nil})
		waitFor(t, "neighbour entry moved by gratuitous ARP", 5*time.Second, func() bool {
			return neighMAC(t, client, "vc", vip2) == nodeMAC
		})
		t.Logf("client's neighbour entry moved %v after SetOwned", time.Since(start).Round(time.Millisecond))
	})

	t.Run("released: silent again", func(t *testing.T) {
		r.SetOwned(map[netip.Addr][]string{vip2: nil})
		waitFor(t, "10.0.0.51 unanswered", 5*time.Second, func() bool {
			_, err := arping(vip.String())
			return err != nil
		})
		if _, err := arping(vip2.String()); err != nil {
			t.Error("10.0.0.52 not answered any more")
		}
	})

	t.Run("NDP answered and unsolicited NA moves the client's entry", func(t *testing.T) {
		vip6b := netip.MustParseAddr("fd00:10::52")
		mustRun(t, "ip", "-n", client, "-6", "neigh", "replace", vip6b.String(), "lladdr", "02:00:00:00:00:99", "dev", "vc", "nud", "stale")
		r.SetOwned(map[netip.Addr][]string{vip6: {"vr"}, vip6b: {"vr"}})
		waitFor(t, "unsolicited NA", 5*time.Second, func() bool { return neighMAC(t, client, "vc", vip6b) == nodeMAC })
		waitFor(t, "neighbour solicitation answered", 5*time.Second, func() bool {
			run(t, "x", "ip", "netns", "exec", client, "socat", "-u", "-", "UDP6-SENDTO:[fd00:10::51]:9")
			return neighMAC(t, client, "vc", vip6) == nodeMAC
		})
		if st := r.Stats(); st.NDPSolicitationsAnswered == 0 {
			t.Errorf("stats %+v", st)
		}
	})

	// A neighbour entry that has gone stale is confirmed by unicast probes sent to the owner's MAC
	// and the service address: those must be answered too, or the client drops the entry.
	t.Run("unicast neighbour probes answered", func(t *testing.T) {
		mustRun(t, "ip", "netns", "exec", client, "sysctl", "-qw", "net.ipv4.neigh.vc.delay_first_probe_time=1",
			"net.ipv6.neigh.vc.delay_first_probe_time=1")
		r.SetOwned(map[netip.Addr][]string{vip: {"vr"}, vip6: {"vr"}})
		for _, tc := range []struct {
			addr netip.Addr
			send string
		}{{vip, "UDP4-SENDTO:10.0.0.51:9"}, {vip6, "UDP6-SENDTO:[fd00:10::51]:9"}} {
			mustRun(t, "ip", "-n", client, "neigh", "replace", tc.addr.String(), "lladdr", nodeMAC, "dev", "vc", "nud", "stale")
			before := r.Stats()
			run(t, "x", "ip", "netns", "exec", client, "socat", "-u", "-", tc.send)
			waitFor(t, "probe of "+tc.addr.String()+" answered", 8*time.Second, func() bool {
				out, _ := run(t, "", "ip", "-n", client, "neigh", "show", tc.addr.String(), "dev", "vc")
				if strings.Contains(out, "FAILED") || strings.Contains(out, "INCOMPLETE") {
					t.Fatalf("probe unanswered: %s", out)
				}
				return strings.Contains(out, "REACHABLE")
			})
			after := r.Stats()
			if after.ARPRequestsAnswered+after.NDPSolicitationsAnswered == before.ARPRequestsAnswered+before.NDPSolicitationsAnswered {
				t.Errorf("%s: entry confirmed without an answer from the responder", tc.addr)
			}
		}
	})

	t.Run("interface down and up: re-announced", func(t *testing.T) {
		r.SetOwned(map[netip.Addr][]string{vip: {"vr"}})
		waitFor(t, "announced", 5*time.Second, func() bool { return r.Stats().Announced == 1 })
		mustRun(t, "ip", "-n", node, "link", "set", "vr", "down")
		waitFor(t, "released on link down", 5*time.Second, func() bool { return r.Stats().Announced == 0 })
		mustRun(t, "ip", "-n", client, "neigh", "replace", vip.String(), "lladdr", "02:00:00:00:00:99", "dev", "vc", "nud", "stale")
		mustRun(t, "ip", "-n", node, "link", "set", "vr", "up")
		waitFor(t, "re-announced after link up", 10*time.Second, func() bool { return neighMAC(t, client, "vc", vip) == nodeMAC })
	})

}
