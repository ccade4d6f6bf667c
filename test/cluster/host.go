package cluster

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// hostPaths are where kubelet, containerd, the CNI plugins and the controller manager write by
// default; the harness points each elsewhere or gives the node a private copy, and Up's cleanup
// checks that none of them appeared on the host.
var hostPaths = []string{
	"/usr/libexec/kubernetes", "/var/lib/kubelet", "/var/lib/containerd", "/var/lib/cni",
	"/var/log/pods", "/var/log/containers", "/run/containerd", "/run/xtables.lock",
	"/etc/cni", "/opt/cni", "/opt/containerd", "/etc/kubernetes",
}

// hostState is what the harness promises not to change on the host: the existence of
// hostPaths, the kernel settings kubelet wants, and the cgroups at the top of each hierarchy.
type hostState struct {
	paths   map[string]bool
	sysctls map[string]string
	cgroups []string
}

func snapshotHost() hostState {
	s := hostState{paths: map[string]bool{}, sysctls: map[string]string{}}
	for _, p := range hostPaths {
		_, err := os.Lstat(p)
		s.paths[p] = err == nil
	}
	for key := range kubeletSysctls {
		b, _ := os.ReadFile(filepath.Join("/proc/sys", key))
		s.sysctls[key] = strings.TrimSpace(string(b))
	}
	if hs, err := hierarchies(); err == nil {
		for _, h := range hs {
			ents, _ := os.ReadDir(h.mount)
			for _, e := range ents {
				if e.IsDir() {
					s.cgroups = append(s.cgroups, filepath.Join(h.mount, e.Name()))
				}
			}
		}
	}
	slices.Sort(s.cgroups)
	return s
}

// changes lists how after differs from s.
func (s hostState) changes(after hostState) []string {
	var out []string
	for _, p := range hostPaths {
		if s.paths[p] != after.paths[p] {
			out = append(out, fmt.Sprintf("%s existed: %v, now: %v", p, s.paths[p], after.paths[p]))
		}
	}
	for _, key := range sortedKeys(s.sysctls) {
		if s.sysctls[key] != after.sysctls[key] {
			out = append(out, fmt.Sprintf("sysctl %s was %s, now %s", key, s.sysctls[key], after.sysctls[key]))
		}
	}
	for _, cg := range after.cgroups {
		if _, found := slices.BinarySearch(s.cgroups, cg); !found {
			out = append(out, "cgroup "+cg+" left behind")
		}
	}
	return out
}
