package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"nodeagent/bench"
	"nodeagent/proxier"
)

// benchCmd measures rule-sync latency and the packet path for each mode, in namespaces it makes.
func benchCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	modes := fs.String("proxy-mode", "iptables,nftables", "comma-separated modes to measure side by side")
	services := fs.Int("services", 1000, "services to create")
	eps := fs.Int("endpoints-per-service", 10, "endpoints per service")
	sweep := fs.String("sweep", "", "comma-separated service counts to measure (overrides --services)")
	changes := fs.Int("changes", 200, "single-endpoint changes to time")
	adds := fs.Int("adds", 50, "service additions to time")
	connects := fs.Int("connects", 1000, "TCP connections to time through one service, and directly")
	out := fs.String("out", "", "directory for results.json, results.md and results.png")
	inner := fs.Bool("inner", false, "internal: measure in the current (lab) namespace and print JSON")
	backendNS := fs.String("backend-netns", "", "internal: namespace of the backend server")
	countObjects := fs.Bool("count-objects", true, "count the kernel objects each mode programmed (slow beyond 25,000 services)")
	heapProfile := fs.String("heap-profile", "", "write Go heap profiles to PREFIX-<mode>-<services>-{first-sync,end}.pprof")
	against := fs.String("against", "", "compare with another proxy through a real API server, side by side: kube-proxy")
	af := againstFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *af.observe {
		return bench.Observe(ctx, os.Stdin, stdout)
	}
	if *inner {
		return benchInner(ctx, *modes, *services, *eps, *changes, *adds, *connects, *backendNS, *heapProfile, !*countObjects, stdout, stderr)
	}
	sizes := []int{*services}
	if *sweep != "" {
		sizes = nil
		for _, s := range splitList(*sweep) {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 {
				return fmt.Errorf("--sweep: bad count %q", s)
			}
			sizes = append(sizes, n)
		}
	}
	if *against != "" {
		return benchAgainst(ctx, fs, *against, af, *modes, sizes, *eps, *out, stdout, stderr)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	pass := []string{"--endpoints-per-service", strconv.Itoa(*eps), "--changes", strconv.Itoa(*changes),
		"--adds", strconv.Itoa(*adds), "--connects", strconv.Itoa(*connects),
		"--count-objects=" + strconv.FormatBool(*countObjects)}
	if *heapProfile != "" {
		abs, err := filepath.Abs(*heapProfile)
		if err != nil {
			return err
		}
		pass = append(pass, "--heap-profile", abs)
	}
	results, err := bench.Sweep(ctx, self, splitList(*modes), sizes, pass, func(s string) { fmt.Fprintln(stderr, s) })
	bench.WriteTable(stdout, results)
	if err != nil {
		return err
	}
	if *out != "" {
		rep := bench.Report{Commit: gitCommit(), Machine: machine(), Kernel: kernelRelease(),
			Date: time.Now().UTC().Format(time.RFC3339), Results: results}
		if err := bench.WriteFiles(*out, rep); err != nil {
			return fmt.Errorf("write results: %w", err)
		}
		fmt.Fprintln(stderr, "wrote", *out+"/results.{json,md,png}")
	}
	return nil
}

func benchInner(ctx context.Context, mode string, services, eps, changes, adds, connects int, backendNS, heapProfile string, skipObjects bool, stdout, stderr io.Writer) error {
	if err := bench.InsideLab(); err != nil {
		return err
	}
	level := slog.LevelWarn
	if os.Getenv("NODEAGENT_BENCH_DEBUG") != "" {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	o := bench.Options{Mode: mode, Services: services, EndpointsPerService: eps, Changes: changes, Adds: adds,
		Connects: connects, Log: log, SkipKernelObjects: skipObjects,
		NewProxier: func(m string) (proxier.Proxier, error) { return newProxier(m, log) }}
	if heapProfile != "" {
		o.HeapProfile = fmt.Sprintf("%s-%s-%d", heapProfile, mode, services)
	}
	if backendNS != "" {
		ln, err := bench.ServeBackend(backendNS)
		if err != nil {
			return err
		}
		defer ln.Close()
		o.Backend = bench.Backend
	}
	r, err := bench.Run(ctx, o)
	if err != nil {
		return err
	}
	return json.NewEncoder(stdout).Encode(r)
}

func gitCommit() string {
	if version != "dev" {
		return version
	}
	out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}

func kernelRelease() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}

func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				if i := strings.Index(l, ":"); i >= 0 {
					model = strings.TrimSpace(l[i+1:])
				}
				break
			}
		}
	}
	return fmt.Sprintf("%d cores (%s)", runtime.NumCPU(), model)
}
