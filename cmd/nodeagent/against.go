package main

import (
	"context"
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
	"nodeagent/test/kube"
)

// againstOptions are the bench flags that only `--against` uses.
type againstOptions struct {
	writers   *int
	changeGap *time.Duration
	observe   *bool
	traffic   *int
	kpArgs    *string
	dpSeconds *time.Duration
	dpRounds  *int
	dpWorkers *int
	create    *time.Duration
}

func againstFlags(fs *flag.FlagSet) againstOptions {
	return againstOptions{
		writers:   fs.Int("writers", 16, "with --against: goroutines writing objects to the API server at once"),
		changeGap: fs.Duration("change-gap", time.Second, "with --against: pause after a change reached both kernels (kube-proxy syncs at most once a second by default)"),
		observe:   fs.Bool("observe", false, "internal: answer kernel wait requests on stdin in the current (lab) namespace"),
		traffic: fs.Int("traffic-samples", 12, "with --against: samples of each traffic case (a service's first endpoint, "+
			"one endpoint replaced), timed by connections through the service; 0 skips them"),
		kpArgs: fs.String("kube-proxy-args", "", "with --against: extra kube-proxy flags, space-separated (e.g. --iptables-min-sync-period=0)"),
		dpSeconds: fs.Duration("datapath-seconds", 5*time.Second, "with --against: how long each proxy's node is loaded with new connections "+
			"through a cluster IP per period of the datapath phase; 0 skips it"),
		dpRounds:  fs.Int("datapath-rounds", 3, "with --against: datapath periods per proxy, alternating between the two"),
		dpWorkers: fs.Int("datapath-workers", 2*runtime.NumCPU(), "with --against: connections the datapath load keeps in flight at once"),
		create: fs.Duration("create-timeout", 15*time.Minute, "with --against: how long both proxies may take, from the first API write, "+
			"to program the last created service (writing 25,000 services and their slices can take longer than the default)"),
	}
}

// benchAgainst runs `nodeagent bench --against kube-proxy`: both proxies side by side against one
// real API server, in namespaces it makes and deletes.
func benchAgainst(ctx context.Context, fs *flag.FlagSet, against string, ao againstOptions, modes string,
	sizes []int, eps int, out string, stdout, stderr io.Writer) error {
	if against != bench.ImplKubeProxy {
		return fmt.Errorf("--against: only %q can be compared", bench.ImplKubeProxy)
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("--against needs root (it makes network namespaces)")
	}
	// The plain bench times 200 changes; through an API server 100 are the target.
	changes := 100
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "changes" {
			changes, _ = strconv.Atoi(f.Value.String())
		}
	})
	if modes == "both" {
		modes = "iptables,nftables"
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	binDir, err := kube.Build(ctx)
	if err != nil {
		return fmt.Errorf("build kube-apiserver and kube-proxy (test/kube/build.sh): %w", err)
	}
	o := bench.AgainstOptions{Modes: splitList(modes), Sizes: sizes, EndpointsPerService: eps, Changes: changes,
		Writers: *ao.writers, ChangeGap: *ao.changeGap, Nodeagent: self, KubeBinDir: binDir, Log: log,
		TrafficSamples: *ao.traffic, KubeProxyArgs: strings.Fields(*ao.kpArgs),
		DatapathDuration: *ao.dpSeconds, DatapathRounds: *ao.dpRounds, DatapathWorkers: *ao.dpWorkers, CreateTimeout: *ao.create}
	results, err := bench.Against(ctx, o)
	bench.WriteAgainstTable(stdout, results)
	bench.WriteTrafficTable(stdout, results)
	bench.WriteDatapathTable(stdout, results)
	// What was measured before a failure is still worth keeping (large sizes take long).
	if out != "" && len(results) > 0 {
		rep := bench.AgainstReport{Commit: gitCommit(), Machine: machine(), Kernel: kernelRelease(),
			Date: time.Now().UTC().Format(time.RFC3339), Against: "kube-proxy " + kubeProxyVersion(binDir),
			Settings: fmt.Sprintf("%d endpoints per service, objects written by %d parallel clients, %d single-endpoint changes %v apart; "+
				"both proxies with their default flags (kube-proxy's min-sync-period 1s, nodeagent's 0) run at the same time in their own network namespaces%s; "+
				"%d samples of each traffic case, %v apart.%s",
				eps, *ao.writers, changes, *ao.changeGap, kpExtra(*ao.kpArgs), *ao.traffic, *ao.changeGap,
				datapathSettings(*ao.dpSeconds, *ao.dpRounds, *ao.dpWorkers)),
			Results: results}
		if err := bench.WriteAgainstFiles(out, rep); err != nil {
			return fmt.Errorf("write results: %w", err)
		}
		fmt.Fprintln(stderr, "wrote", filepath.Join(out, "results.{json,md,png}"))
	}
	return err
}

func datapathSettings(d time.Duration, rounds, workers int) string {
	if d <= 0 {
		return ""
	}
	return fmt.Sprintf(" Datapath: %d periods of %v per proxy, alternating, %d workers each making connect → 4-byte request → "+
		"answer → close (SO_LINGER 0, one source address) in a loop to the cluster IP of the service in the middle of the bulk.",
		rounds, d, workers)
}

func kpExtra(args string) string {
	if strings.TrimSpace(args) == "" {
		return ""
	}
	return ", kube-proxy with " + strings.TrimSpace(args)
}

func kubeProxyVersion(binDir string) string {
	b, err := exec.Command(filepath.Join(binDir, "kube-proxy"), "--version").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimPrefix(strings.TrimSpace(string(b)), "Kubernetes ")
}
