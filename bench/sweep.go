package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"

	"github.com/vishvananda/netns"
)

// Backend is where the probed (last) service's server listens, in the run's pod namespace.
var Backend = netip.MustParseAddr("10.244.0.2")

// Sweep runs every (size, mode) measurement, each in fresh network namespaces that it deletes
// afterwards, by running self ("nodeagent") as `bench --inner` inside them. args are passed on.
func Sweep(ctx context.Context, self string, modes []string, sizes []int, args []string, progress func(string)) ([]Result, error) {
	var out []Result
	for k, n := range sizes {
		for _, m := range modes {
			progress(fmt.Sprintf("measuring %s with %d services", m, n))
			r, err := runIsolated(ctx, self, fmt.Sprintf("nabench%d-%d", os.Getpid(), k), m, n, args)
			if err != nil {
				return out, fmt.Errorf("%s at %d services: %w", m, n, err)
			}
			out = append(out, r)
		}
	}
	return out, nil
}

func runIsolated(ctx context.Context, self, name, mode string, services int, args []string) (Result, error) {
	agent, pod := name, name+"p"
	defer func() {
		_ = exec.Command("ip", "netns", "del", agent).Run()
		_ = exec.Command("ip", "netns", "del", pod).Run()
	}()
	steps := [][]string{
		{"netns", "add", agent},
		{"netns", "add", pod},
		{"-n", agent, "link", "set", "lo", "up"},
		{"-n", pod, "link", "set", "lo", "up"},
		// Both ends are created inside the lab namespaces: the host's never sees them.
		{"-n", agent, "link", "add", "nab0", "type", "veth", "peer", "name", "eth0", "netns", pod},
		{"-n", agent, "addr", "add", "10.244.0.1/24", "dev", "nab0"},
		{"-n", agent, "link", "set", "nab0", "up"},
		{"-n", pod, "addr", "add", Backend.String() + "/24", "dev", "eth0"},
		{"-n", pod, "link", "set", "eth0", "up"},
		{"-n", pod, "route", "add", "default", "via", "10.244.0.1"},
		{"-n", agent, "route", "add", "default", "via", Backend.String()},
	}
	for _, s := range steps {
		if out, err := exec.CommandContext(ctx, "ip", s...).CombinedOutput(); err != nil {
			return Result{}, fmt.Errorf("ip %v: %v: %s", s, err, bytes.TrimSpace(out))
		}
	}
	cmdArgs := append([]string{"netns", "exec", agent, self, "bench", "--inner", "--proxy-mode", mode,
		"--services", strconv.Itoa(services), "--backend-netns", pod}, args...)
	cmd := exec.CommandContext(ctx, "ip", cmdArgs...)
	var stdout, stderr bytes.Buffer
	// The inner run's logs (warnings; debug with NODEAGENT_BENCH_DEBUG) go on to ours.
	cmd.Stdout, cmd.Stderr = &stdout, io.MultiWriter(&stderr, os.Stderr)
	if err := cmd.Run(); err != nil {
		return Result{}, fmt.Errorf("%v: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	var r Result
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		return Result{}, fmt.Errorf("read result: %w (%s)", err, stdout.String())
	}
	return r, nil
}

// InsideLab reports an error unless this process runs in a named network namespace (one under
// /run/netns, as `ip netns add` makes them), so the benchmark never programs a host namespace.
func InsideLab() error {
	var self syscall.Stat_t
	if err := syscall.Stat("/proc/self/ns/net", &self); err != nil {
		return err
	}
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		var st syscall.Stat_t
		if syscall.Stat(filepath.Join("/run/netns", e.Name()), &st) == nil && st.Ino == self.Ino && st.Dev == self.Dev {
			return nil
		}
	}
	return errors.New("refusing to measure outside a lab network namespace: run `nodeagent bench` without --inner")
}

// ServeBackend accepts and closes TCP connections on Backend:8080 inside the named namespace.
func ServeBackend(ns string) (net.Listener, error) {
	ln, err := listenIn(ns, netip.AddrPortFrom(Backend, 8080).String())
	if err != nil {
		return nil, err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	return ln, nil
}

// inNetns runs f on a thread that is in the named network namespace for that call only.
func inNetns(ns string, f func() error) error {
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			ch <- err
			return
		}
		defer orig.Close()
		target, err := netns.GetFromName(ns)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- err
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			ch <- err
			return
		}
		ferr := f()
		if err := netns.Set(orig); err != nil {
			// The thread stays locked and dies with this goroutine, never reused in ns.
			ch <- errors.Join(ferr, err)
			return
		}
		runtime.UnlockOSThread()
		ch <- ferr
	}()
	return <-ch
}
