package main

import (
	"fmt"
	"log/slog"

	"nodeagent/proxier"
)

// allModes lists every proxy mode, in the order cleanup visits them.
var allModes = []string{"iptables", "nftables", "ipvs"}

// newProxier returns the proxier of a mode, ready to program this network namespace.
func newProxier(mode string, log *slog.Logger) (proxier.Proxier, error) {
	switch mode {
	}
	return nil, fmt.Errorf("unknown --proxy-mode %q (want iptables, nftables or ipvs)", mode)
}

// newRenderer returns a proxier of the mode only used to Render, so it must not need the kernel.
func newRenderer(mode string, log *slog.Logger) (proxier.Proxier, error) {
	return newProxier(mode, log)
}
