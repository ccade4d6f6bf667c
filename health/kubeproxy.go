package health

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/types"

	"nodeagent/proxier"
)

// KubeProxy are kube-proxy v1.34's metrics, with its names, types, labels and buckets, so that
// dashboards and alerts made for kube-proxy keep working. As in kube-proxy, every mode has the
// common ones and its own: iptables the full/partial sync latencies, iptables-restore failures
// and rule counts; nftables the full/partial latencies and transaction failures; ipvs the
// restore failures (of its helper tables here); iptables and nftables the conntrack reconciler's.
// kube-proxy runs one proxier per IP family and labels most figures with ip_family; this agent
// syncs its families together, so a sync's duration is observed once under each of them.
//
// It implements proxier.Recorder for the counters only a mode knows.
type KubeProxy struct {
	mode     string
	families []proxier.Family

	syncDuration, fullDuration, partialDuration *prometheus.HistogramVec
	lastSynced, lastQueued                      *prometheus.GaugeVec
	programming                                 *prometheus.HistogramVec
	noLocal                                     *prometheus.GaugeVec

	restoreFailures, partialRestoreFailures *prometheus.CounterVec
	iptablesRules, iptablesLast             *prometheus.GaugeVec
	nftSyncFailures, nftCleanupFailures     *prometheus.CounterVec
	conntrackDuration                       *prometheus.HistogramVec
	conntrackDeleted                        *prometheus.CounterVec

	// mu guards what follows: each service's share of the no-local-endpoints gauges, so that a
	// partial sync looks only at the changed services.
	mu          sync.Mutex
	noLocalBy   map[types.NamespacedName]noLocalCount
	noLocalSums noLocalCount
}

// noLocalCount is, per family (index 0 IPv4, 1 IPv6), how many service ports (services in ipvs
// mode) drop traffic of a Local policy for want of a local endpoint, internal and external.
type noLocalCount struct {
	internal, external [2]int
}

var _ proxier.Recorder = (*KubeProxy)(nil)

// kube-proxy's buckets: exponential from 1 ms for sync latencies; for network programming
// 0.25 s, 0.5 s, every second to 59 s, every 5 s to 115 s, every 30 s to 5 min.
var (
	syncBuckets        = prometheus.ExponentialBuckets(0.001, 2, 15)
	programmingBuckets = func() []float64 {
		b := []float64{0.25, 0.5}
		b = append(b, prometheus.LinearBuckets(1, 1, 59)...)
		b = append(b, prometheus.LinearBuckets(60, 5, 12)...)
		return append(b, prometheus.LinearBuckets(120, 30, 7)...)
	}()
)

// kube-proxy's metrics are ALPHA in component-base, which prefixes their help with this.
const alpha = "[ALPHA] "

// AddKubeProxy registers kube-proxy's metrics for mode ("iptables", "nftables" or "ipvs"), the
// change counts read from changes at each scrape (nil: none). Call SetFamilies once the proxier
// knows its families.
func (m *Metrics) AddKubeProxy(mode string, changes func() proxier.ChangeCounts) *KubeProxy {
	family := []string{"ip_family"}
	hist := func(name, help string, buckets []float64) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{Subsystem: "kubeproxy", Name: name, Help: alpha + help, Buckets: buckets}, family)
	}
	gauge := func(name, help string, labels ...string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Subsystem: "kubeproxy", Name: name, Help: alpha + help}, append(labels, family...))
	}
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Subsystem: "kubeproxy", Name: name, Help: alpha + help}, append(labels, family...))
	}
	k := &KubeProxy{
		mode:            mode,
		syncDuration:    hist("sync_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds", syncBuckets),
		fullDuration:    hist("sync_full_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for full resyncs", syncBuckets),
		partialDuration: hist("sync_partial_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for partial resyncs", syncBuckets),
		lastSynced:      gauge("sync_proxy_rules_last_timestamp_seconds", "The last time proxy rules were successfully synced"),
		lastQueued:      gauge("sync_proxy_rules_last_queued_timestamp_seconds", "The last time a sync of proxy rules was queued"),
		programming:     hist("network_programming_duration_seconds", "In Cluster Network Programming Latency in seconds", programmingBuckets),
		noLocal: gauge("sync_proxy_rules_no_local_endpoints_total",
			"Number of services with a Local traffic policy and no endpoints", "traffic_policy"),
		restoreFailures:        counter("sync_proxy_rules_iptables_restore_failures_total", "Cumulative proxy iptables restore failures"),
		partialRestoreFailures: counter("sync_proxy_rules_iptables_partial_restore_failures_total", "Cumulative proxy iptables partial restore failures"),
		iptablesRules:          gauge("sync_proxy_rules_iptables_total", "Total number of iptables rules owned by kube-proxy", "table"),
		iptablesLast:           gauge("sync_proxy_rules_iptables_last", "Number of iptables rules written by kube-proxy in last sync", "table"),
		nftSyncFailures:        counter("sync_proxy_rules_nftables_sync_failures_total", "Cumulative proxy nftables sync failures"),
		nftCleanupFailures:     counter("sync_proxy_rules_nftables_cleanup_failures_total", "Cumulative proxy nftables cleanup failures"),
		conntrackDuration:      hist("conntrack_reconciler_sync_duration_seconds", "ReconcileConntrackFlowsLatency latency in seconds", syncBuckets),
		conntrackDeleted:       counter("conntrack_reconciler_deleted_entries_total", "Cumulative conntrack flows deleted by conntrack reconciler"),
		noLocalBy:              map[types.NamespacedName]noLocalCount{},
	}
	m.Registry.MustRegister(k.syncDuration, k.lastQueued, k.lastSynced, k.programming, k.noLocal)
	if changes != nil {
		read := func(f func(proxier.ChangeCounts) float64) func() float64 {
			return func() float64 { return f(changes()) }
		}
		m.Registry.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "kubeproxy_sync_proxy_rules_endpoint_changes_pending", Help: alpha + "Pending proxy rules Endpoint changes"},
				read(func(c proxier.ChangeCounts) float64 { return float64(c.EndpointChangesPending) })),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "kubeproxy_sync_proxy_rules_endpoint_changes_total", Help: alpha + "Cumulative proxy rules Endpoint changes"},
				read(func(c proxier.ChangeCounts) float64 { return float64(c.EndpointChanges) })),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "kubeproxy_sync_proxy_rules_service_changes_pending", Help: alpha + "Pending proxy rules Service changes"},
				read(func(c proxier.ChangeCounts) float64 { return float64(c.ServicesPending) })),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "kubeproxy_sync_proxy_rules_service_changes_total", Help: alpha + "Cumulative proxy rules Service changes"},
				read(func(c proxier.ChangeCounts) float64 { return float64(c.ServiceChanges) })),
		)
	}
	switch mode {
	case "iptables":
		m.Registry.MustRegister(k.fullDuration, k.partialDuration, k.restoreFailures, k.partialRestoreFailures,
			k.iptablesRules, k.iptablesLast, k.conntrackDuration, k.conntrackDeleted)
	case "ipvs":
		m.Registry.MustRegister(k.restoreFailures, k.conntrackDuration, k.conntrackDeleted)
	case "nftables":
		m.Registry.MustRegister(k.fullDuration, k.partialDuration, k.nftSyncFailures, k.nftCleanupFailures,
			k.conntrackDuration, k.conntrackDeleted)
	}
	return k
}

// SetFamilies sets the families the proxier programs and shows every counter and gauge of
// theirs at zero, so that a dashboard's rate() or absent() sees them before the first event.
func (k *KubeProxy) SetFamilies(fams []proxier.Family) {
	k.families = append([]proxier.Family(nil), fams...)
	for _, f := range fams {
		l := f.String()
		for _, c := range []*prometheus.CounterVec{k.restoreFailures, k.partialRestoreFailures, k.nftSyncFailures, k.nftCleanupFailures, k.conntrackDeleted} {
			c.WithLabelValues(l)
		}
		k.noLocal.WithLabelValues("internal", l)
		k.noLocal.WithLabelValues("external", l)
	}
}

// Queued records that a sync was asked for (kube-proxy's Sync(), called on every change).
func (k *KubeProxy) Queued() {
	for _, f := range k.families {
		k.lastQueued.WithLabelValues(f.String()).SetToCurrentTime()
	}
}

// ObserveSync records one sync attempt, successful or not, as kube-proxy does: its duration,
// and whether it rewrote everything (full) or only what changed.
func (k *KubeProxy) ObserveSync(full bool, took time.Duration) {
	kind := k.partialDuration
	if full {
		kind = k.fullDuration
	}
	for _, f := range k.families {
		l := f.String()
		k.syncDuration.WithLabelValues(l).Observe(took.Seconds())
		kind.WithLabelValues(l).Observe(took.Seconds())
	}
}

// Synced records a successful sync of st, finished at now, that programmed the changes ch
// (those of failed syncs before it included): the time of the last sync, the network
// programming latency of each EndpointSlice change measured from its trigger time, and the
// services without the local endpoints their Local policy needs.
func (k *KubeProxy) Synced(st *proxier.State, ch proxier.Changes, now time.Time) {
	for _, t := range ch.Triggers {
		if !k.programs(t.Family) {
			continue
		}
		// A trigger time in the future (clock skew with the control plane) counts as no delay.
		k.programming.WithLabelValues(t.Family.String()).Observe(max(0, now.Sub(t.Time).Seconds()))
	}
	k.updateNoLocal(st, ch)
	for _, f := range k.families {
		k.lastSynced.WithLabelValues(f.String()).Set(float64(now.UnixNano()) / 1e9)
	}
}

func (k *KubeProxy) programs(f proxier.Family) bool {
	for _, g := range k.families {
		if g == f {
			return true
		}
	}
	return false
}

// updateNoLocal recounts the changed services' shares of the no-local-endpoints gauges (every
// service on a full sync). As kube-proxy: a service port whose policy is Local, that has
// endpoints elsewhere but none here, counts once per family and policy (iptables, nftables);
// ipvs mode counts services, not their ports.
func (k *KubeProxy) updateNoLocal(st *proxier.State, ch proxier.Changes) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if ch.Full {
		clear(k.noLocalBy)
		k.noLocalSums = noLocalCount{}
		var n types.NamespacedName
		var group []*proxier.ServicePort
		for i, sp := range st.Services {
			if i > 0 && sp.Name.NamespacedName != n {
				k.setNoLocal(n, group)
				group = group[:0]
			}
			n = sp.Name.NamespacedName
			group = append(group, sp)
		}
		if len(group) > 0 {
			k.setNoLocal(n, group)
		}
	} else {
		for n := range ch.Services {
			k.setNoLocal(n, st.PortsOfService(n))
		}
	}
	for _, f := range k.families {
		i := familyIndex(f)
		k.noLocal.WithLabelValues("internal", f.String()).Set(float64(k.noLocalSums.internal[i]))
		k.noLocal.WithLabelValues("external", f.String()).Set(float64(k.noLocalSums.external[i]))
	}
}

// setNoLocal replaces service n's share with that of its ports sps.
func (k *KubeProxy) setNoLocal(n types.NamespacedName, sps []*proxier.ServicePort) {
	old := k.noLocalBy[n]
	var c noLocalCount
	for _, sp := range sps {
		i := familyIndex(sp.Name.Family)
		if sp.InternalPolicyLocal && sp.InternalVerdict() == proxier.Drop {
			c.internal[i]++
		}
		if sp.ExternalPolicyLocal && sp.HasExternal() && sp.ExternalVerdict() == proxier.Drop {
			c.external[i]++
		}
	}
	if k.mode == "ipvs" {
		for i := range 2 {
			c.internal[i], c.external[i] = min(c.internal[i], 1), min(c.external[i], 1)
		}
	}
	for i := range 2 {
		k.noLocalSums.internal[i] += c.internal[i] - old.internal[i]
		k.noLocalSums.external[i] += c.external[i] - old.external[i]
	}
	if c == (noLocalCount{}) {
		delete(k.noLocalBy, n)
	} else {
		k.noLocalBy[n] = c
	}
}

func familyIndex(f proxier.Family) int {
	if f == proxier.IPv6 {
		return 1
	}
	return 0
}

// RestoreFailed implements proxier.Recorder.
func (k *KubeProxy) RestoreFailed(f proxier.Family) {
	k.restoreFailures.WithLabelValues(f.String()).Inc()
}

// PartialSyncFailed implements proxier.Recorder.
func (k *KubeProxy) PartialSyncFailed(f proxier.Family) {
	k.partialRestoreFailures.WithLabelValues(f.String()).Inc()
}

// SyncFailed implements proxier.Recorder.
func (k *KubeProxy) SyncFailed(f proxier.Family) {
	k.nftSyncFailures.WithLabelValues(f.String()).Inc()
}

// IPTablesRules implements proxier.Recorder.
func (k *KubeProxy) IPTablesRules(f proxier.Family, table string, total, written int) {
	k.iptablesRules.WithLabelValues(table, f.String()).Set(float64(total))
	k.iptablesLast.WithLabelValues(table, f.String()).Set(float64(written))
}

// ConntrackCleaned implements proxier.Recorder.
func (k *KubeProxy) ConntrackCleaned(f proxier.Family, took time.Duration, deleted int) {
	k.conntrackDuration.WithLabelValues(f.String()).Observe(took.Seconds())
	k.conntrackDeleted.WithLabelValues(f.String()).Add(float64(deleted))
}
