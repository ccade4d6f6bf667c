// Package cleanup removes from this network namespace what the proxy modes other than the running
// one left behind, as kube-proxy's platformCleanup does at start: rules of a mode that no longer
// runs would keep translating (or rejecting) service traffic in front of the running mode's.
//
// kube-proxy cleans the iptables and ipvs leftovers when it starts in nftables mode, and the
// nftables leftovers when it starts in iptables or ipvs mode; its iptables and ipvs modes share
// their KUBE- chains, so neither removes the other's. nodeagent's ipvs mode shares nothing with
// its iptables mode (its helper rules are an nftables table), so every mode removes both others.
package cleanup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"nodeagent/proxier"
	"nodeagent/proxier/iptables"
	"nodeagent/proxier/ipvs"
	"nodeagent/proxier/nftables"
)

// Modes are the proxy modes, in the order Others visits them.
var Modes = []string{"iptables", "nftables", "ipvs"}

// Others removes every kernel object of the modes other than mode. A mode this host cannot run
// (no iptables binary, no IPVS) has left nothing to remove and is skipped. Errors are joined; the
// caller logs them and goes on, as kube-proxy does.
func Others(ctx context.Context, mode string, log *slog.Logger) error {
	if log == nil {
		log = slog.Default()
	}
	var errs []error
	for _, m := range Modes {
		if m == mode {
			continue
		}
		if err := Mode(ctx, m, log); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Mode removes every kernel object of mode m, and nothing else.
func Mode(ctx context.Context, m string, log *slog.Logger) error {
	if log == nil {
		log = slog.Default()
	}
	var px proxier.Proxier
	switch m {
	case "iptables":
		p, err := iptables.New(iptables.Options{Log: log})
		if err != nil {
			log.Debug("no iptables here: nothing of iptables mode to remove", "err", err)
			return nil
		}
		px = p
	case "nftables":
		p, err := nftables.New(nftables.Options{Log: log})
		if err != nil {
			return fmt.Errorf("clean up nftables mode: %w", err)
		}
		defer p.Close()
		px = p
	case "ipvs":
		left, err := ipvs.Leftovers()
		if err != nil {
			return fmt.Errorf("clean up ipvs mode: %w", err)
		}
		if !left {
			return nil // IPVS is not even asked, so that its module is not loaded for nothing
		}
		p, err := ipvs.New(ipvs.Options{Log: log, DrainInterval: -1})
		if err != nil {
			return fmt.Errorf("clean up ipvs mode: %w", err)
		}
		defer p.Close()
		px = p
	default:
		return fmt.Errorf("unknown proxy mode %q", m)
	}
	if err := px.Cleanup(ctx); err != nil {
		return fmt.Errorf("clean up %s mode: %w", m, err)
	}
	return nil
}
