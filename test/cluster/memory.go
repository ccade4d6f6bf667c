package cluster

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// memory sums the resident memory of every process of the cluster: those in its namespaces
// (control plane, nodes' daemons, host-network pods) and those in its nodes' cgroups (shims,
// containers), and says how many there are.
func (c *Cluster) memory(context.Context) string {
	inodes := map[uint64]bool{}
	for _, ns := range append([]string{c.CP}, c.nodeNamespaces()...) {
		var st syscall.Stat_t
		if syscall.Stat(filepath.Join("/run/netns", ns), &st) == nil {
			inodes[st.Ino] = true
		}
	}
	pids := map[int]bool{}
	for _, pid := range cgroupPIDs(c.cgroups) {
		pids[pid] = true
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat(filepath.Join("/proc", e.Name(), "ns/net"), &st) == nil && inodes[st.Ino] {
			pids[pid] = true
		}
	}
	var kb int64
	for pid := range pids {
		kb += rssKB(pid)
	}
	return fmt.Sprintf("%d MB resident in %d processes", kb/1024, len(pids))
}

func (c *Cluster) nodeNamespaces() []string {
	var out []string
	for _, n := range c.Nodes {
		out = append(out, n.NS)
	}
	return out
}

func rssKB(pid int) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				return kb
			}
		}
	}
	return 0
}
