package lab

import (
	"os"
	"regexp"
	"slices"
	"strings"
)

// StartAgent starts an agent like Lab.StartAgent with the mode's own flags first.
func (e *env) StartAgent(n *Node, args ...string) *Agent {
	e.t.Helper()
	return e.Lab.StartAgent(n, append(slices.Clone(e.mode.args), args...)...)
}

// StartAgentNoWait starts an agent like Lab.StartAgentNoWait with the mode's own flags first.
func (e *env) StartAgentNoWait(n *Node, args ...string) *Agent {
	e.t.Helper()
	return e.Lab.StartAgentNoWait(n, append(slices.Clone(e.mode.args), args...)...)
}

// ipvsDummy is the interface the ipvs mode binds service addresses to.
const ipvsDummy = "nodeagent-ipvs0"

// noIPVS says why the ipvs mode cannot run on this kernel, or "" when it can. The project's
// machines have no IPVS; the row runs inside vm/run (make test-vm).
func noIPVS() string {
	if _, err := os.Stat("/proc/net/ip_vs"); err != nil {
		return "no IPVS on this kernel (run it in the VM: make test-vm)"
	}
	return ""
}

// ipvsMode dumps the virtual servers as ipvsadm saves them, the whole nftables ruleset (the
// helper tables and anything foreign) and the addresses on the dummy interface.
//
// Its agents run with --ipvs-strict-arp, as the seed's kube-proxy configuration has it: every
// node binds the external and load-balancer IPs to its dummy interface, and without strict ARP
// every node would answer ARP for them (see TestIPVSStrictARP), so the client would not reach
// the node the scenarios choose (the external IP's node01, MetalLB's layer-2 owner).
var ipvsMode = mode{
	name: "ipvs",
	skip: noIPVS,
	args: []string{"--ipvs-strict-arp"},
	dump: func(ns string) (string, error) {
		vs, err := Exec(ns, "ipvsadm", "-Sn")
		if err != nil {
			return "", err
		}
		nft, err := Exec(ns, "nft", "list", "ruleset")
		if err != nil {
			return "", err
		}
		addrs, err := Exec(ns, "ip", "-o", "addr", "show")
		if err != nil {
			return "", err
		}
		var b strings.Builder
		b.WriteString(vs)
		b.WriteString(normalize(nft, `counter packets \d+ bytes \d+`, `counter`, `expires \S+`, ``))
		for _, l := range strings.Split(addrs, "\n") {
			if strings.Contains(l, ipvsDummy) {
				b.WriteString(l + "\n")
			}
		}
		return b.String(), nil
	},
	// Our virtual servers are on the lab's 10.0.0.0/8 addresses (cluster IPs, node addresses);
	// the foreign one is on 192.0.2.1.
	ours: regexp.MustCompile(`(?m)^table \S+ nodeagent|^-A -[tu] 10\.|` + ipvsDummy),
	addForeign: func(ns string) error {
		for _, args := range [][]string{
			{"-A", "-t", "192.0.2.1:80", "-s", "rr"},
			{"-a", "-t", "192.0.2.1:80", "-r", "192.0.2.9:80", "-m"},
		} {
			if _, err := Exec(ns, "ipvsadm", args...); err != nil {
				return err
			}
		}
		_, err := Exec(ns, "nft", "add table inet labforeign; add chain inet labforeign input { type filter hook input priority 0; }; add rule inet labforeign input ip saddr 192.0.2.1 drop")
		return err
	},
	foreign: []*regexp.Regexp{
		regexp.MustCompile(`(?m)^-A -t 192\.0\.2\.1:80 -s rr$`),
		regexp.MustCompile(`(?m)^-a -t 192\.0\.2\.1:80 -r 192\.0\.2\.9:80 -m -w 1$`),
		regexp.MustCompile(`(?s)table inet labforeign.*ip saddr 192.0.2.1 drop`),
	},
}
