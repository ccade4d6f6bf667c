package agent

import (
	"log/slog"
	"os"
	"runtime"
	"strconv"

	"nodeagent/agent/config"
	"nodeagent/proxier/iptables"
)

// Prepare does what kube-proxy's --init-only does: what needs full root, before the agent may run
// with only CAP_NET_ADMIN — the OOM score adjustment and the conntrack sysctls, in this process's
// own network namespace (nf_conntrack_max only from the host's).
func Prepare(c *config.Config, log *slog.Logger) error {
	applyOOMScoreAdj(c.OOMScore(), log)
	return c.ConntrackSettings().Apply(iptables.ProcSysctl{}, runtime.NumCPU(), log)
}

// applyOOMScoreAdj sets the process's OOM score adjustment as kube-proxy does. Lowering it needs
// CAP_SYS_RESOURCE; without it kube-proxy logs and goes on, and so does nodeagent.
func applyOOMScoreAdj(v int32, log *slog.Logger) {
	if err := os.WriteFile("/proc/self/oom_score_adj", []byte(strconv.Itoa(int(v))), 0o644); err != nil {
		log.Info("OOM score adjustment not applied", "value", v, "err", err)
	}
}
