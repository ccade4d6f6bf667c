package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	"nodeagent/proxier"
)

// renderCmd prints what run would program for the inputs, touching nothing.
func renderCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c := defaultConfig()
	fs := flag.NewFlagSet("render", flag.ContinueOnError)
	fs.SetOutput(stderr)
	if err := parseWithConfig(fs, args, &c); err != nil {
		return err
	}
	log, err := newLogger(stderr, c.LogLevel)
	if err != nil {
		return err
	}
	node, err := thisNode(c.HostnameOverride)
	if err != nil {
		return err
	}
	mc, err := c.modelConfig()
	if err != nil {
		return err
	}
	px, err := newRenderer(c.Mode, log)
	if err != nil {
		return err
	}
	objs, err := loadObjects(ctx, &c, node.Name, log)
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
func cleanupCmd(ctx context.Context, args []string, stderr io.Writer) error {
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
	modes := allModes
	if *mode != "" {
		modes = []string{*mode}
	}
	var failed error
	for _, m := range modes {
		px, err := newProxier(m, log)
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
	c := defaultConfig()
	fs := flag.NewFlagSet("get services", flag.ContinueOnError)
	fs.SetOutput(stderr)
	if err := parseWithConfig(fs, args, &c); err != nil {
		return err
	}
	log, err := newLogger(stderr, "error")
	if err != nil {
		return err
	}
	svcs, err := listServices(ctx, &c, log)
	if err != nil {
		return err
	}
	writeServiceTable(stdout, svcs, time.Now())
	return nil
}
