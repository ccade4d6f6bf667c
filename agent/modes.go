package agent

import (
	"fmt"
	"log/slog"
	"slices"

	"github.com/vishvananda/netns"

	"nodeagent/agent/config"
	"nodeagent/proxier"
	"nodeagent/proxier/conntrack"
	"nodeagent/proxier/iptables"
	"nodeagent/proxier/ipvs"
	"nodeagent/proxier/nftables"
)

// AllModes lists every proxy mode, in the order cleanup visits them.
var AllModes = []string{"iptables", "nftables", "ipvs"}

// NewProxier returns the proxier of a mode, ready to program this network namespace, with the
// ipvs: settings of c (nil: the defaults) and a recorder of the mode's metrics (nil: none).
func NewProxier(mode string, c *config.Config, log *slog.Logger, rec proxier.Recorder) (proxier.Proxier, error) {
	if !slices.Contains(AllModes, mode) {
		return nil, fmt.Errorf("unknown --proxy-mode %q (want iptables, nftables or ipvs)", mode)
	}
	// Every mode clears stale UDP/SCTP conntrack entries after a sync, as kube-proxy's do; the
	// cleaner never touches TCP (in ipvs mode expire_nodest_conn ends flows of removed real servers).
	ct, err := newConntrack(log)
	if err != nil {
		return nil, err
	}
	ct.Recorder = rec
	switch mode {
	case "iptables":
		return iptables.New(iptables.Options{Log: log, Conntrack: ct, Recorder: rec})
	case "nftables":
		return nftables.New(nftables.Options{Log: log, Conntrack: ct, Recorder: rec})
	default:
		// New fails at once, naming the module, on a kernel without IPVS.
		o := IPVSOptions(c, log)
		o.Recorder, o.Conntrack = rec, ct
		return ipvs.New(o)
	}
}

// familiesOf returns the families px programs (both when it does not say).
func familiesOf(px proxier.Proxier) []proxier.Family {
	if f, ok := px.(interface{ Families() []proxier.Family }); ok {
		return f.Families()
	}
	return proxier.Families
}

// NewRenderer returns a proxier of the mode used only to Render: it must not need the kernel.
func NewRenderer(mode string, c *config.Config, log *slog.Logger) (proxier.Proxier, error) {
	switch mode {
	case "iptables":
		// Render both families whatever binaries this machine has.
		return iptables.New(iptables.Options{Log: log, Families: proxier.Families})
	case "nftables":
		return nftables.New(nftables.Options{Log: log, Families: proxier.Families})
	case "ipvs":
		o := IPVSOptions(c, log)
		o.Families = proxier.Families
		if err := ipvs.CheckScheduler(o.Scheduler); err != nil {
			return nil, err
		}
		return ipvs.NewRenderer(o), nil
	}
	return NewProxier(mode, c, log, nil)
}

// newConntrack returns the cleaner of stale UDP/SCTP flows in this network namespace.
func newConntrack(log *slog.Logger) (*conntrack.Cleaner, error) {
	k, err := conntrack.NewKernel(netns.None())
	if err != nil {
		return nil, fmt.Errorf("conntrack: %w", err)
	}
	return conntrack.NewCleaner(k, log), nil
}
