// Command nodeagent is a per-node dataplane agent: it does kube-proxy's job (Services and
// EndpointSlices programmed into iptables, nftables or IPVS) from a Kubernetes API server or a
// directory of manifests.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `nodeagent — kube-proxy and MetalLB-speaker work in one per-node agent

Usage:
  nodeagent run       [flags]   program the kernel and keep it in sync (the daemon)
  nodeagent render    [flags]   print what run would program, touching nothing
  nodeagent cleanup   [flags]   remove everything nodeagent created in this network namespace
  nodeagent get services [flags] (alias: svc) list services the way kubectl get svc does
  nodeagent bgp status [--metrics-bind-address A]   BGP sessions and routes of the agent running here
  nodeagent bench     [flags]   measure rule-sync latency and the packet path per mode, in namespaces it makes
  nodeagent version

Run "nodeagent <command> -h" for a command's flags. Flags without a command (kube-proxy's command
line, e.g. "nodeagent --config=/var/lib/kube-proxy/config.conf") run the daemon.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := dispatch(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "nodeagent:", err)
		}
		os.Exit(1)
	}
}

func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return flag.ErrHelp
	}
	// kube-proxy has no subcommands: its DaemonSet runs `kube-proxy --config=... --hostname-override=...`.
	// Flags first means that command line, run as the daemon.
	if strings.HasPrefix(args[0], "-") && !slices.Contains([]string{"-h", "-help", "--help", "--version", "-version"}, args[0]) {
		return runCmd(ctx, args, stderr)
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "run":
		return runCmd(ctx, args, stderr)
	case "render":
		return renderCmd(ctx, args, stdout, stderr)
	case "cleanup":
		return cleanupCmd(ctx, args, stderr, nil)
	case "get":
		if len(args) == 0 || (args[0] != "services" && args[0] != "svc" && args[0] != "service") {
			return fmt.Errorf("get: only \"services\" (svc) can be listed")
		}
		return getServicesCmd(ctx, args[1:], stdout, stderr)
	case "bgp":
		if len(args) == 0 || args[0] != "status" {
			return fmt.Errorf("bgp: only \"status\" is known")
		}
		return bgpStatusCmd(ctx, args[1:], stdout, stderr)
	case "bench":
		return benchCmd(ctx, args, stdout, stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, "nodeagent", version)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", cmd)
}

func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	return newFormatLogger(w, level, false)
}

// newFormatLogger logs at level as text, or as JSON.
func newFormatLogger(w io.Writer, level string, json bool) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: %w", level, err)
	}
	opts := &slog.HandlerOptions{Level: l}
	if json {
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return slog.New(slog.NewTextHandler(w, opts)), nil
}
