package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"time"

	"nodeagent/agent"
	"nodeagent/agent/config"
	"nodeagent/proxier"
)

// renderCmd prints what run would program for the inputs, touching nothing.
func renderCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c := config.Default()
	fs := flag.NewFlagSet("render", flag.ContinueOnError)
	fs.SetOutput(stderr)
	if err := parseWithConfig(fs, args, &c); err != nil {
		return err
	}
	log, err := newLogger(stderr, c.LogLevel)
	if err != nil {
		return err
	}
	node, err := agent.ThisNode(c.HostnameOverride)
	if err != nil {
		return err
	}
	mc, err := c.ModelConfig()
	if err != nil {
		return err
	}
	px, err := agent.NewRenderer(c.Mode, &c, log)
	if err != nil {
		return err
	}
	objs, err := agent.LoadObjects(ctx, &c, node.Name, log)
	if err != nil {
		return err
	}
	tracker := proxier.NewTracker(node, mc, log)
	for _, o := range objs {
		tracker.Upsert(o)
	}
	st, _ := tracker.Snapshot()
	return px.Render(stdout, st)
}

// cleanupCmd removes every kernel object of every mode (or of the one named by --proxy-mode).
// c is the configuration of the daemon's --cleanup (nil: the defaults).
func cleanupCmd(ctx context.Context, args []string, stderr io.Writer, c *config.Config) error {
	fs := flag.NewFlagSet("cleanup", flag.ContinueOnError)
	fs.SetOutput(stderr)
	mode := fs.String("proxy-mode", "", "clean up only this mode (default: every mode)")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log, err := newLogger(stderr, *level)
	if err != nil {
		return err
	}
	modes := agent.AllModes
	if *mode != "" {
		modes = []string{*mode}
	}
	var failed error
	for _, m := range modes {
		px, err := agent.NewProxier(m, c, log, nil)
		if err != nil {
			if *mode != "" {
				return err
			}
			log.Debug("mode not available here; nothing to clean", "mode", m, "err", err)
			continue
		}
		if err := px.Cleanup(ctx); err != nil {
			log.Error("cleanup", "mode", m, "err", err)
			failed = fmt.Errorf("cleanup %s: %w", m, err)
			continue
		}
		log.Info("cleaned up", "mode", m)
	}
	return failed
}

// getServicesCmd lists services as `kubectl get svc` does, with the allocation a running agent
// would compute for a manifests directory.
func getServicesCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c := config.Default()
	fs := flag.NewFlagSet("get services", flag.ContinueOnError)
	fs.SetOutput(stderr)
	if err := parseWithConfig(fs, args, &c); err != nil {
		return err
	}
	log, err := newLogger(stderr, "error")
	if err != nil {
		return err
	}
	svcs, err := agent.ListServices(ctx, &c, log)
	if err != nil {
		return err
	}
	writeServiceTable(stdout, svcs, time.Now())
	return nil
}

// newProxier returns the kernel proxier of a mode with the default settings (bench).
func newProxier(mode string, log *slog.Logger) (proxier.Proxier, error) {
	return agent.NewProxier(mode, nil, log, nil)
}
