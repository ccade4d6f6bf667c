package cluster

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Main is the body of the package's TestMain: it removes what killed runs left behind (their
// nodes' processes, cgroups and namespaces), takes every cluster down on SIGINT or SIGTERM, and
// runs the tests.
func Main(m *testing.M) int {
	if os.Geteuid() == 0 {
		reapStale()
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		holdMu.Lock()
		if holding != nil {
			// A held cluster's test returns and its cleanup takes the cluster down.
			close(holding)
			holding = nil
			holdMu.Unlock()
			s = <-sigs
		} else {
			holdMu.Unlock()
		}
		fmt.Fprintf(os.Stderr, "cluster: %v: taking clusters down\n", s)
		liveMu.Lock()
		var cs []*Cluster
		for c := range live {
			cs = append(cs, c)
		}
		liveMu.Unlock()
		for _, c := range cs {
			if err := c.Down(); err != nil {
				fmt.Fprintf(os.Stderr, "cluster: down: %v\n", err)
			}
			c.Lab.Close()
		}
		os.Exit(2)
	}()
	code := m.Run()
	signal.Stop(sigs)
	return code
}

var (
	holdMu  sync.Mutex
	holding chan struct{}
)

// Hold returns a channel that the first SIGINT or SIGTERM closes, instead of tearing the
// clusters down at once as Main does otherwise; for a test that keeps a cluster until the user
// is done with it.
func Hold() <-chan struct{} {
	holdMu.Lock()
	defer holdMu.Unlock()
	holding = make(chan struct{})
	return holding
}

// Names carry the pid of the test process that made them, in base 36 (test/netns's lab IDs).
var (
	staleCgroup = regexp.MustCompile(`^nodeagent-nal([0-9a-z]{1,7})-[0-9a-z]+$`)
	staleLab    = regexp.MustCompile(`^nal([0-9a-z]{1,7})-[0-9a-z]+$`)
	staleNetns  = regexp.MustCompile(`^nal([0-9a-z]{1,7})-[0-9a-z]+-[a-z0-9.-]+$`)
)

func deadOwner(pid36 string) bool {
	pid, err := strconv.ParseInt(pid36, 36, 64)
	if err != nil || int(pid) == os.Getpid() {
		return false
	}
	return syscall.Kill(int(pid), 0) == syscall.ESRCH
}

// reapStale kills the processes in the cgroups of clusters whose test process is gone, removes
// those cgroups, and deletes the namespaces such processes made.
func reapStale() {
	hs, err := hierarchies()
	if err != nil {
		return
	}
	var dirs []string
	for _, h := range hs {
		ents, _ := os.ReadDir(h.mount)
		for _, e := range ents {
			if m := staleCgroup.FindStringSubmatch(e.Name()); e.IsDir() && m != nil && deadOwner(m[1]) {
				dirs = append(dirs, filepath.Join(h.mount, e.Name()))
			}
		}
	}
	if len(dirs) > 0 {
		fmt.Fprintf(os.Stderr, "cluster: removing the cgroups of finished runs: %v\n", dirs)
		if err := killCgroups(dirs, 30*time.Second); err != nil {
			fmt.Fprintln(os.Stderr, "cluster:", err)
		}
		if err := removeCgroups(dirs, 30*time.Second); err != nil {
			fmt.Fprintln(os.Stderr, "cluster:", err)
		}
	}
	tmp, _ := os.ReadDir(os.TempDir())
	for _, e := range tmp {
		if name, ok := strings.CutPrefix(e.Name(), dirPrefix); ok && e.IsDir() {
			if m := staleLab.FindStringSubmatch(name); m != nil && deadOwner(m[1]) {
				if err := os.RemoveAll(filepath.Join(os.TempDir(), e.Name())); err != nil {
					fmt.Fprintln(os.Stderr, "cluster:", err)
				}
			}
		}
	}
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		if m := staleNetns.FindStringSubmatch(e.Name()); m != nil && deadOwner(m[1]) {
			if out, err := exec.Command("ip", "netns", "del", e.Name()).CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "cluster: ip netns del %s: %v: %s\n", e.Name(), err, out)
			}
		}
	}
}
