package cleanup

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"nodeagent/proxier"
	"nodeagent/proxier/iptables"
	"nodeagent/proxier/nftables"
)

// inNewNS runs fn on a thread that has entered a network namespace of the test's own, so that
// everything fn does "in this namespace" (netlink sockets, iptables commands it starts) stays
// there. The thread goes back to the original namespace afterwards, or dies with its goroutine.
func inNewNS(t *testing.T, fn func(name string)) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	name := fmt.Sprintf("nacleanup%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	defer exec.Command("ip", "netns", "del", name).Run()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			t.Error(err)
			return
		}
		defer orig.Close()
		ns, err := netns.GetFromName(name)
		if err != nil {
			t.Error(err)
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			t.Error(err)
			return
		}
		fn(name)
		if err := netns.Set(orig); err == nil {
			runtime.UnlockOSThread() // else the thread ends with this goroutine
		}
	}()
	<-done
}

func state() *proxier.State {
	ep := proxier.Endpoint{Addr: netip.MustParseAddr("10.244.2.5"), Port: 8080, NodeName: "node02", Ready: true, Serving: true}
	sp := &proxier.ServicePort{
		Name:      proxier.ServicePortName{NamespacedName: types.NamespacedName{Namespace: "default", Name: "web"}, Protocol: v1.ProtocolTCP, Family: proxier.IPv4},
		ClusterIP: netip.MustParseAddr("10.96.0.100"), Port: 80, NodePort: 30080,
		AllEndpoints: []proxier.Endpoint{ep}, ClusterEndpoints: []proxier.Endpoint{ep},
	}
	return &proxier.State{Node: proxier.Node{Name: "node01", IPs: []netip.Addr{netip.MustParseAddr("10.0.0.151")}}, Services: []*proxier.ServicePort{sp}}
}

func run(t *testing.T, ns string, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %v: %s", args, err, out)
	}
	return string(out)
}

// TestOthers: an agent starting in one mode removes what iptables and nftables mode left in the
// namespace, and keeps its own mode's rules and foreign ones.
func TestOthers(t *testing.T) {
	if _, err := exec.LookPath("iptables-save"); err != nil {
		t.Skip("needs iptables")
	}
	inNewNS(t, func(ns string) {
		ctx := context.Background()
		ipt, err := iptables.New(iptables.Options{Families: []proxier.Family{proxier.IPv4},
			Exec: iptables.CommandExec{Prefix: []string{"ip", "netns", "exec", ns}}})
		if err != nil {
			t.Error(err)
			return
		}
		nft, err := nftables.New(nftables.Options{NetNSPath: "/run/netns/" + ns})
		if err != nil {
			t.Error(err)
			return
		}
		defer nft.Close()
		for _, p := range []proxier.Proxier{ipt, nft} {
			if err := p.Sync(ctx, state(), proxier.Changes{Full: true}); err != nil {
				t.Error(err)
				return
			}
		}
		run(t, ns, "iptables", "-w", "-t", "nat", "-N", "LAB-FOREIGN")
		run(t, ns, "nft", "add table inet labforeign")

		// Starting in nftables mode: iptables mode's chains go, our nftables table stays.
		if err := Others(ctx, "nftables", nil); err != nil {
			t.Errorf("Others(nftables): %v", err)
		}
		saved := run(t, ns, "iptables-save")
		if strings.Contains(saved, "NA-") {
			t.Errorf("iptables mode's chains remain after starting in nftables mode:\n%s", saved)
		}
		if !strings.Contains(saved, "LAB-FOREIGN") {
			t.Errorf("a foreign chain was removed:\n%s", saved)
		}
		if ruleset := run(t, ns, "nft", "list", "tables"); !strings.Contains(ruleset, "table ip nodeagent") {
			t.Errorf("the running mode's table was removed:\n%s", ruleset)
		}

		// Starting in iptables mode: nftables mode's tables go, foreign ones stay.
		if err := Others(ctx, "iptables", nil); err != nil {
			t.Errorf("Others(iptables): %v", err)
		}
		tables := run(t, ns, "nft", "list", "tables")
		if strings.Contains(tables, " nodeagent\n") {
			t.Errorf("nftables mode's tables remain after starting in iptables mode:\n%s", tables)
		}
		if !strings.Contains(tables, "labforeign") {
			t.Errorf("a foreign table was removed:\n%s", tables)
		}
	})
}
