package lab

import (
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// sampleLine is one sample of the Prometheus text format: name, optional labels, value.
var sampleLine = regexp.MustCompile(`(?m)^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})? (\S+)$`)

// scrapeMetrics reads the /metrics of the agent in namespace ns: "name{a="x",b="y"}" (labels
// sorted by name) → value.
func scrapeMetrics(t *testing.T, ns string) map[string]float64 {
	t.Helper()
	body, code, err := HTTPGet(ns, "http://127.0.0.1:10249/metrics")
	if err != nil || code != 200 {
		t.Fatalf("metrics in %s: %d %v", ns, code, err)
	}
	out := map[string]float64{}
	for _, m := range sampleLine.FindAllStringSubmatch(body, -1) {
		key := m[1]
		if m[2] != "" {
			labels := strings.Split(m[2], ",")
			slices.Sort(labels)
			key += "{" + strings.Join(labels, ",") + "}"
		}
		v, err := strconv.ParseFloat(m[3], 64)
		if err != nil {
			t.Fatalf("metrics in %s: sample %q: %v", ns, m[0], err)
		}
		out[key] = v
	}
	return out
}

// checkKubeProxyMetrics asserts that an agent that has synced shows kube-proxy's metrics of its
// mode under kube-proxy's names and labels: present, and non-zero where a sync moves them. (The
// network programming histogram shows once a slice with a trigger time changes: EndpointRemoved.)
func checkKubeProxyMetrics(t *testing.T, name string, got map[string]float64, mode string) {
	t.Helper()
	v4 := `{ip_family="IPv4"}`
	positive := []string{
		"kubeproxy_sync_proxy_rules_duration_seconds_count" + v4,
		"kubeproxy_sync_proxy_rules_last_timestamp_seconds" + v4,
		"kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds" + v4,
		"kubeproxy_sync_proxy_rules_service_changes_total",
		"kubeproxy_sync_proxy_rules_endpoint_changes_total",
	}
	present := []string{
		`kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family="IPv4",traffic_policy="internal"}`,
		`kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family="IPv4",traffic_policy="external"}`,
		"kubeproxy_sync_proxy_rules_service_changes_pending",
		"kubeproxy_sync_proxy_rules_endpoint_changes_pending",
	}
	switch mode {
	case "iptables":
		positive = append(positive, "kubeproxy_sync_full_proxy_rules_duration_seconds_count"+v4,
			`kubeproxy_sync_proxy_rules_iptables_total{ip_family="IPv4",table="nat"}`,
			`kubeproxy_sync_proxy_rules_iptables_total{ip_family="IPv4",table="filter"}`)
		present = append(present, "kubeproxy_sync_proxy_rules_iptables_restore_failures_total"+v4,
			"kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total"+v4,
			`kubeproxy_sync_proxy_rules_iptables_last{ip_family="IPv4",table="nat"}`,
			"kubeproxy_conntrack_reconciler_deleted_entries_total"+v4)
	case "nftables":
		positive = append(positive, "kubeproxy_sync_full_proxy_rules_duration_seconds_count"+v4)
		present = append(present, "kubeproxy_sync_proxy_rules_nftables_sync_failures_total"+v4,
			"kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total"+v4,
			"kubeproxy_conntrack_reconciler_deleted_entries_total"+v4)
	case "ipvs":
		present = append(present, "kubeproxy_sync_proxy_rules_iptables_restore_failures_total"+v4,
			"kubeproxy_conntrack_reconciler_deleted_entries_total"+v4)
	}
	for _, k := range positive {
		if v, ok := got[k]; !ok || v <= 0 {
			t.Errorf("%s: %s = %v (present %v), want > 0", name, k, v, ok)
		}
	}
	for _, k := range present {
		if _, ok := got[k]; !ok {
			t.Errorf("%s: %s missing", name, k)
		}
	}
}

// withTriggerTime gives the EndpointSlice manifest slice the last-change-trigger-time at, as
// the endpoint-slice controller writes it.
func withTriggerTime(slice string, at time.Time) string {
	return strings.Replace(slice, "metadata:\n", "metadata:\n  annotations:\n    endpoints.kubernetes.io/last-change-trigger-time: \""+
		at.UTC().Format(time.RFC3339Nano)+"\"\n", 1)
}
