package cluster

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// hierarchy is one mounted cgroup hierarchy of the host.
type hierarchy struct {
	mount string // e.g. /sys/fs/cgroup/memory
	typ   string // cgroup or cgroup2
	opts  string // the mount options that select it: "memory", "none,name=systemd", ""
}

// hierarchies lists the host's cgroup mounts under /sys/fs/cgroup, which each node's mount
// namespace mounts again (ip netns exec gives it a fresh /sys without them).
func hierarchies() ([]hierarchy, error) {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return nil, fmt.Errorf("cgroups: %w", err)
	}
	defer f.Close()
	return parseMounts(f)
}

// parseMounts reads the cgroup hierarchies out of a /proc/mounts table.
func parseMounts(r io.Reader) ([]hierarchy, error) {
	var out []hierarchy
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 || !strings.HasPrefix(fields[1], "/sys/fs/cgroup") {
			continue
		}
		h := hierarchy{mount: fields[1], typ: fields[2]}
		switch h.typ {
		case "cgroup":
			var sel []string
			for _, o := range strings.Split(fields[3], ",") {
				switch {
				case o == "rw" || o == "ro" || strings.HasPrefix(o, "rel") || strings.HasPrefix(o, "no") || o == "clone_children" || strings.HasPrefix(o, "release_agent"):
				case strings.HasPrefix(o, "name="):
					sel = append(sel, "none", o)
				default:
					sel = append(sel, o)
				}
			}
			h.opts = strings.Join(sel, ",")
		case "cgroup2":
		default:
			continue
		}
		out = append(out, h)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("cgroups: %w", err)
	}
	if len(out) == 0 {
		return nil, errors.New("cgroups: no cgroup hierarchy mounted under /sys/fs/cgroup")
	}
	return out, nil
}

// mountScript is the shell that mounts the hierarchies again inside a node's mount namespace.
func mountScript(hs []hierarchy) string {
	var b strings.Builder
	b.WriteString("mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup\n")
	for _, h := range hs {
		if h.mount == "/sys/fs/cgroup" {
			// A pure cgroup v2 host: the one hierarchy replaces the tmpfs.
			fmt.Fprintf(&b, "umount /sys/fs/cgroup\nmount -t cgroup2 cgroup2 /sys/fs/cgroup\n")
			continue
		}
		fmt.Fprintf(&b, "mkdir -p %s\n", h.mount)
		if h.typ == "cgroup2" {
			fmt.Fprintf(&b, "mount -t cgroup2 cgroup2 %s\n", h.mount)
		} else {
			fmt.Fprintf(&b, "mount -t cgroup -o %s cgroup %s\n", h.opts, h.mount)
		}
	}
	return b.String()
}

// joinScript is the shell that moves the running shell into cgroup path (in every hierarchy), so
// that what it execs, and everything that starts, is found there at teardown.
func joinScript(hs []hierarchy, path string) string {
	var b strings.Builder
	for _, h := range hs {
		fmt.Fprintf(&b, "echo $$ > %s\n", shellQuote(filepath.Join(h.mount, path, "cgroup.procs")))
	}
	return b.String()
}

// createCgroup makes path in every hierarchy, and returns the directories it created (parents
// first) for removeCgroups. A cpuset cgroup takes no process until it has CPUs and memory nodes,
// so each new level copies its parent's.
func createCgroup(hs []hierarchy, path string) ([]string, error) {
	var made []string
	for _, h := range hs {
		parts := strings.Split(strings.Trim(path, "/"), "/")
		dir := h.mount
		for _, p := range parts {
			parent := dir
			dir = filepath.Join(dir, p)
			if err := os.Mkdir(dir, 0o755); errors.Is(err, fs.ErrExist) {
				continue
			} else if err != nil {
				return made, fmt.Errorf("cgroup %s: %w", dir, err)
			}
			made = append(made, dir)
			if h.typ != "cgroup" || !slices.Contains(strings.Split(h.opts, ","), "cpuset") {
				continue
			}
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				if v, err := os.ReadFile(filepath.Join(parent, f)); err == nil && len(strings.TrimSpace(string(v))) > 0 {
					if err := os.WriteFile(filepath.Join(dir, f), v, 0o644); err != nil {
						return made, fmt.Errorf("cgroup %s: %w", filepath.Join(dir, f), err)
					}
				}
			}
		}
	}
	return made, nil
}

// cgroupPIDs returns every process in the cgroup trees at dirs (any hierarchy).
func cgroupPIDs(dirs []string) []int {
	seen := map[int]bool{}
	for _, d := range dirs {
		_ = filepath.WalkDir(d, func(p string, e fs.DirEntry, err error) error {
			if err != nil || e.IsDir() || e.Name() != "cgroup.procs" {
				return nil
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return nil
			}
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil && pid > 0 {
					seen[pid] = true
				}
			}
			return nil
		})
	}
	pids := make([]int, 0, len(seen))
	for pid := range seen {
		pids = append(pids, pid)
	}
	slices.Sort(pids)
	return pids
}

// killCgroups SIGKILLs, by PID, every process left in the cgroup trees at dirs (containerd's
// shims and the containers outlive containerd and kubelet) until none is left or timeout passes.
func killCgroups(dirs []string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		pids := cgroupPIDs(dirs)
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroups: processes %v survive SIGKILL", pids)
		}
		for _, pid := range pids {
			if pid != os.Getpid() {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// removeCgroups removes the trees at dirs, children first. A cgroup whose last process just died
// can refuse removal (EBUSY) for a moment, so removal is retried until timeout.
func removeCgroups(dirs []string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var left []string
		for _, d := range dirs {
			var all []string
			_ = filepath.WalkDir(d, func(p string, e fs.DirEntry, err error) error {
				if err == nil && e.IsDir() {
					all = append(all, p)
				}
				return nil
			})
			// Deepest first.
			slices.SortFunc(all, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
			for _, p := range all {
				if err := syscall.Rmdir(p); err != nil && !errors.Is(err, syscall.ENOENT) {
					left = append(left, p)
				}
			}
		}
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroups: cannot remove %v", left)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
