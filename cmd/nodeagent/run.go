package main

import (
	"context"
	"flag"
	"io"
	"log/slog"
	"os"

	"nodeagent/agent"
	"nodeagent/agent/config"
)

// runCmd parses the daemon's command line (kube-proxy's flags and config file), acts on
// kube-proxy's act-and-exit flags, and runs the agent.
func runCmd(ctx context.Context, args []string, stderr io.Writer) error {
	c := config.Default()
	var kp kubeProxyCLI
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	runFlags(fs, &c, &kp)
	if err := parseWithConfig(fs, args, &c); err != nil {
		return err
	}
	explicit := explicitFlags(fs)
	if err := finishKubeProxy(&c, &kp, explicit); err != nil {
		return err
	}
	log, err := daemonLogger(&c, stderr, explicit)
	if err != nil {
		return err
	}
	slog.SetDefault(log)
	c.LogIgnored(log)
	logAccepted(&c, &kp, log)
	if done, err := startupActions(ctx, &c, &kp, log, stderr); done {
		return err
	}
	if err := c.ResolveMemberlistSecret(explicit, os.Getenv, log); err != nil {
		return err
	}
	return agent.Run(ctx, agent.Options{Config: &c, Log: log, Version: version})
}
