package health

import (
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"nodeagent/proxier"
)

// scrape gathers m's registry by metric name.
func scrape(t *testing.T, m *Metrics) map[string]*dto.MetricFamily {
	t.Helper()
	fams, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, f := range fams {
		out[f.GetName()] = f
	}
	return out
}

// labelled returns the sample of family f whose labels are exactly want ("name=value", any order).
func labelled(f *dto.MetricFamily, want ...string) *dto.Metric {
	want = slices.Sorted(slices.Values(want))
	for _, m := range f.GetMetric() {
		var got []string
		for _, l := range m.GetLabel() {
			got = append(got, l.GetName()+"="+l.GetValue())
		}
		if slices.Equal(slices.Sorted(slices.Values(got)), want) {
			return m
		}
	}
	return nil
}

// kubeProxyMetric is one of kube-proxy v1.34's metrics as pkg/proxy/metrics declares it.
type kubeProxyMetric struct {
	name   string
	typ    dto.MetricType
	labels []string
}

var (
	commonMetrics = []kubeProxyMetric{
		{"kubeproxy_sync_proxy_rules_duration_seconds", dto.MetricType_HISTOGRAM, []string{"ip_family"}},
		{"kubeproxy_sync_proxy_rules_last_timestamp_seconds", dto.MetricType_GAUGE, []string{"ip_family"}},
		{"kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds", dto.MetricType_GAUGE, []string{"ip_family"}},
		{"kubeproxy_network_programming_duration_seconds", dto.MetricType_HISTOGRAM, []string{"ip_family"}},
		{"kubeproxy_sync_proxy_rules_no_local_endpoints_total", dto.MetricType_GAUGE, []string{"traffic_policy", "ip_family"}},
		{"kubeproxy_sync_proxy_rules_endpoint_changes_total", dto.MetricType_COUNTER, nil},
		{"kubeproxy_sync_proxy_rules_endpoint_changes_pending", dto.MetricType_GAUGE, nil},
		{"kubeproxy_sync_proxy_rules_service_changes_total", dto.MetricType_COUNTER, nil},
		{"kubeproxy_sync_proxy_rules_service_changes_pending", dto.MetricType_GAUGE, nil},
		{"kubeproxy_proxy_healthz_total", dto.MetricType_COUNTER, []string{"code"}},
		{"kubeproxy_proxy_livez_total", dto.MetricType_COUNTER, []string{"code"}},
	}
	fullPartial = []kubeProxyMetric{
		{"kubeproxy_sync_full_proxy_rules_duration_seconds", dto.MetricType_HISTOGRAM, []string{"ip_family"}},
		{"kubeproxy_sync_partial_proxy_rules_duration_seconds", dto.MetricType_HISTOGRAM, []string{"ip_family"}},
	}
	restoreFailures = []kubeProxyMetric{
		{"kubeproxy_sync_proxy_rules_iptables_restore_failures_total", dto.MetricType_COUNTER, []string{"ip_family"}},
	}
	iptablesOnly = []kubeProxyMetric{
		{"kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total", dto.MetricType_COUNTER, []string{"ip_family"}},
		{"kubeproxy_sync_proxy_rules_iptables_total", dto.MetricType_GAUGE, []string{"table", "ip_family"}},
		{"kubeproxy_sync_proxy_rules_iptables_last", dto.MetricType_GAUGE, []string{"table", "ip_family"}},
	}
	nftablesOnly = []kubeProxyMetric{
		{"kubeproxy_sync_proxy_rules_nftables_sync_failures_total", dto.MetricType_COUNTER, []string{"ip_family"}},
		{"kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total", dto.MetricType_COUNTER, []string{"ip_family"}},
	}
	conntrackMetrics = []kubeProxyMetric{
		{"kubeproxy_conntrack_reconciler_sync_duration_seconds", dto.MetricType_HISTOGRAM, []string{"ip_family"}},
		{"kubeproxy_conntrack_reconciler_deleted_entries_total", dto.MetricType_COUNTER, []string{"ip_family"}},
	}
)

// exercise drives every kube-proxy metric of k: a queued change, a full and a partial sync, a
// programmed slice change, a recorded event of each kind, a health probe of each kind.
func exercise(k *KubeProxy, p *Proxy) {
	k.Queued()
	k.ObserveSync(true, 3*time.Millisecond)
	k.ObserveSync(false, time.Millisecond)
	now := time.Now()
	k.Synced(&proxier.State{}, proxier.Changes{Full: true, Triggers: []proxier.Trigger{{Family: proxier.IPv4, Time: now.Add(-time.Second)}}}, now)
	k.RestoreFailed(proxier.IPv4)
	k.PartialSyncFailed(proxier.IPv4)
	k.SyncFailed(proxier.IPv4)
	k.IPTablesRules(proxier.IPv4, "nat", 10, 2)
	k.ConntrackCleaned(proxier.IPv4, time.Millisecond, 1)
	serve(p, "/healthz")
	serve(p.Livez(), "/livez")
}

// Each mode shows kube-proxy's metrics for that mode with kube-proxy's names, types and labels,
// and none of another mode's.
func TestKubeProxyMetricsPerMode(t *testing.T) {
	for _, tc := range []struct {
		mode      string
		want, not [][]kubeProxyMetric
	}{
		{"iptables", [][]kubeProxyMetric{commonMetrics, fullPartial, restoreFailures, iptablesOnly, conntrackMetrics}, [][]kubeProxyMetric{nftablesOnly}},
		{"nftables", [][]kubeProxyMetric{commonMetrics, fullPartial, nftablesOnly, conntrackMetrics}, [][]kubeProxyMetric{restoreFailures, iptablesOnly}},
		{"ipvs", [][]kubeProxyMetric{commonMetrics, restoreFailures, conntrackMetrics}, [][]kubeProxyMetric{fullPartial, iptablesOnly, nftablesOnly}},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			m := NewMetrics()
			p := NewProxy(time.Minute)
			m.AddProxyHealth(p)
			k := m.AddKubeProxy(tc.mode, func() proxier.ChangeCounts { return proxier.ChangeCounts{} })
			k.SetFamilies([]proxier.Family{proxier.IPv4})
			exercise(k, p)
			got := scrape(t, m)
			for _, group := range tc.want {
				for _, w := range group {
					f := got[w.name]
					if f == nil {
						t.Errorf("%s missing", w.name)
						continue
					}
					if f.GetType() != w.typ {
						t.Errorf("%s is a %v, want a %v", w.name, f.GetType(), w.typ)
					}
					if !strings.HasPrefix(f.GetHelp(), "[ALPHA] ") {
						t.Errorf("%s help %q lacks kube-proxy's [ALPHA] prefix", w.name, f.GetHelp())
					}
					for _, s := range f.GetMetric() {
						var names []string
						for _, l := range s.GetLabel() {
							names = append(names, l.GetName())
						}
						slices.Sort(names)
						want := slices.Sorted(slices.Values(w.labels))
						if !slices.Equal(names, want) {
							t.Errorf("%s has labels %v, want %v", w.name, names, want)
						}
					}
				}
			}
			for _, group := range tc.not {
				for _, w := range group {
					if got[w.name] != nil {
						t.Errorf("%s shown in %s mode, which kube-proxy does not", w.name, tc.mode)
					}
				}
			}
		})
	}
}

// The histograms have kube-proxy's buckets, so that its dashboards' quantiles mean the same.
func TestKubeProxyBuckets(t *testing.T) {
	m := NewMetrics()
	k := m.AddKubeProxy("nftables", nil)
	k.SetFamilies([]proxier.Family{proxier.IPv4})
	exercise(k, NewProxy(time.Minute))
	got := scrape(t, m)
	bounds := func(name string) []float64 {
		var out []float64
		for _, b := range got[name].GetMetric()[0].GetHistogram().GetBucket() {
			out = append(out, b.GetUpperBound())
		}
		return out
	}
	sync := bounds("kubeproxy_sync_proxy_rules_duration_seconds")
	if len(sync) != 15 || sync[0] != 0.001 || sync[14] != 16.384 {
		t.Errorf("sync buckets %v, want 15 from 1 ms doubling", sync)
	}
	prog := bounds("kubeproxy_network_programming_duration_seconds")
	if len(prog) != 80 || prog[0] != 0.25 || prog[1] != 0.5 || prog[2] != 1 || prog[60] != 59 || prog[61] != 60 || prog[72] != 115 || prog[73] != 120 || prog[79] != 300 {
		t.Errorf("network programming buckets %v", prog)
	}
	if ct := bounds("kubeproxy_conntrack_reconciler_sync_duration_seconds"); !slices.Equal(ct, sync) {
		t.Errorf("conntrack reconciler buckets %v, want the sync ones", ct)
	}
}

func slice(name, svc string, at time.Time, addrs ...string) *discovery.EndpointSlice {
	ready := true
	s := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, Labels: map[string]string{discovery.LabelServiceName: svc},
			Annotations: map[string]string{v1.EndpointsLastChangeTriggerTime: at.Format(time.RFC3339Nano)}},
		AddressType: discovery.AddressTypeIPv4,
	}
	for _, a := range addrs {
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{Addresses: []string{a}, Conditions: discovery.EndpointConditions{Ready: &ready}})
	}
	port, proto := int32(8080), v1.ProtocolTCP
	s.Ports = []discovery.EndpointPort{{Port: &port, Protocol: &proto}}
	return s
}

func service(name, ip string) *v1.Service {
	return &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec: v1.ServiceSpec{Type: v1.ServiceTypeClusterIP, ClusterIP: ip, ClusterIPs: []string{ip},
			Ports: []v1.ServicePort{{Protocol: v1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt(8080)}}}}
}

// The metrics move with the agent's work: a sync counts under ip_family, the change counts
// follow the tracker, a slice changed after the agent started is measured from its trigger time
// to the end of the sync that programmed it, one changed before is not, and the trigger times
// of a failed sync are measured when a later sync programs them.
func TestKubeProxyMetricsMove(t *testing.T) {
	before := time.Now().Add(-time.Minute)
	tr := proxier.NewTracker(proxier.Node{Name: "node01"}, proxier.Config{}, slog.New(slog.DiscardHandler))
	after := time.Now().Add(time.Millisecond)
	m := NewMetrics()
	k := m.AddKubeProxy("iptables", tr.ChangeCounts)
	k.SetFamilies([]proxier.Family{proxier.IPv4, proxier.IPv6})
	value := func(name string, labels ...string) float64 {
		t.Helper()
		f := scrape(t, m)[name]
		if f == nil {
			t.Fatalf("%s missing", name)
		}
		s := labelled(f, labels...)
		if s == nil {
			t.Fatalf("%s has no sample %v", name, labels)
		}
		switch {
		case s.Histogram != nil:
			return float64(s.Histogram.GetSampleCount())
		case s.Counter != nil:
			return s.Counter.GetValue()
		}
		return s.Gauge.GetValue()
	}

	k.Queued()
	if v := value("kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds", "ip_family=IPv6"); v < float64(after.Unix()-1) {
		t.Errorf("last queued %v, want now", v)
	}
	tr.Upsert(service("old", "10.96.0.1"))
	tr.Upsert(slice("old-1", "old", before, "10.244.1.1"))
	tr.Upsert(service("new", "10.96.0.2"))
	tr.Upsert(slice("new-1", "new", after, "10.244.1.2"))
	tr.Synced()
	if v := value("kubeproxy_sync_proxy_rules_service_changes_pending"); v != 2 {
		t.Errorf("service changes pending %v, want 2", v)
	}
	if v := value("kubeproxy_sync_proxy_rules_endpoint_changes_total"); v != 2 {
		t.Errorf("endpoint changes %v, want 2", v)
	}

	// A failed sync: timed, nothing programmed yet.
	st, ch := tr.Snapshot()
	k.ObserveSync(ch.Full, 2*time.Millisecond)
	if v := value("kubeproxy_sync_proxy_rules_endpoint_changes_pending"); v != 0 {
		t.Errorf("endpoint changes pending after the snapshot %v, want 0", v)
	}
	if v := value("kubeproxy_sync_proxy_rules_duration_seconds", "ip_family=IPv4"); v != 1 {
		t.Errorf("sync duration count %v, want 1", v)
	}
	if v := value("kubeproxy_sync_full_proxy_rules_duration_seconds", "ip_family=IPv6"); v != 1 {
		t.Errorf("full sync duration count (IPv6) %v, want 1", v)
	}
	if f := scrape(t, m)["kubeproxy_network_programming_duration_seconds"]; f != nil {
		t.Errorf("network programming measured before any sync succeeded: %v", f)
	}

	// The retry succeeds and programs the failed sync's changes.
	missed := ch
	st2, ch2 := tr.Snapshot()
	_ = st
	k.ObserveSync(ch2.Full, time.Millisecond)
	end := after.Add(1500 * time.Millisecond)
	k.Synced(st2, missed.Merge(ch2), end)
	f := scrape(t, m)["kubeproxy_network_programming_duration_seconds"]
	h := labelled(f, "ip_family=IPv4").GetHistogram()
	if h.GetSampleCount() != 1 || h.GetSampleSum() < 1.49 || h.GetSampleSum() > 1.51 {
		t.Errorf("network programming: %d samples summing %v s, want one of 1.5 s (the slice changed before the start is not measured)",
			h.GetSampleCount(), h.GetSampleSum())
	}
	if v := value("kubeproxy_sync_proxy_rules_last_timestamp_seconds", "ip_family=IPv4"); v != float64(end.UnixNano())/1e9 {
		t.Errorf("last sync %v, want %v", v, float64(end.UnixNano())/1e9)
	}
	if v := value("kubeproxy_sync_partial_proxy_rules_duration_seconds", "ip_family=IPv4"); v != 1 {
		t.Errorf("partial sync duration count %v, want 1", v)
	}
	if v := value("kubeproxy_sync_proxy_rules_iptables_restore_failures_total", "ip_family=IPv6"); v != 0 {
		t.Errorf("restore failures %v before any, want a 0 sample", v)
	}
	k.RestoreFailed(proxier.IPv6)
	if v := value("kubeproxy_sync_proxy_rules_iptables_restore_failures_total", "ip_family=IPv6"); v != 1 {
		t.Errorf("restore failures %v, want 1", v)
	}
	k.IPTablesRules(proxier.IPv4, "nat", 40, 5)
	if v := value("kubeproxy_sync_proxy_rules_iptables_total", "table=nat", "ip_family=IPv4"); v != 40 {
		t.Errorf("iptables nat rules %v, want 40", v)
	}
	k.ConntrackCleaned(proxier.IPv4, time.Millisecond, 3)
	if v := value("kubeproxy_conntrack_reconciler_deleted_entries_total", "ip_family=IPv4"); v != 3 {
		t.Errorf("conntrack deleted %v, want 3", v)
	}
}

// localPort is a service port of svc with a Local policy for traffic kind ("internal" or
// "external"), endpoints elsewhere, and local ones when local is set.
func localPort(svc, port, kind string, local bool) *proxier.ServicePort {
	remote := proxier.Endpoint{Addr: netip.MustParseAddr("10.244.2.5"), Port: 80, Ready: true, Serving: true}
	sp := &proxier.ServicePort{Name: proxier.ServicePortName{NamespacedName: types.NamespacedName{Namespace: "default", Name: svc}, Port: port,
		Protocol: v1.ProtocolTCP, Family: proxier.IPv4}, ClusterIP: netip.MustParseAddr("10.96.0.9"), Port: 80,
		ClusterEndpoints: []proxier.Endpoint{remote}, AllEndpoints: []proxier.Endpoint{remote}}
	if kind == "internal" {
		sp.InternalPolicyLocal = true
	} else {
		sp.ExternalPolicyLocal, sp.NodePort = true, 30080
	}
	if local {
		e := proxier.Endpoint{Addr: netip.MustParseAddr("10.244.1.5"), Port: 80, Ready: true, Serving: true, Local: true}
		sp.LocalEndpoints = []proxier.Endpoint{e}
		sp.ClusterEndpoints = append(sp.ClusterEndpoints, e)
	}
	return sp
}

// kubeproxy_sync_proxy_rules_no_local_endpoints_total counts the service ports (services in
// ipvs mode) that drop traffic of a Local policy because this node has none of their endpoints,
// and follows partial syncs.
func TestKubeProxyNoLocalEndpoints(t *testing.T) {
	for _, mode := range []string{"nftables", "ipvs"} {
		t.Run(mode, func(t *testing.T) {
			m := NewMetrics()
			k := m.AddKubeProxy(mode, nil)
			k.SetFamilies([]proxier.Family{proxier.IPv4})
			gauge := func(policy string) float64 {
				return labelled(scrape(t, m)["kubeproxy_sync_proxy_rules_no_local_endpoints_total"], "traffic_policy="+policy, "ip_family=IPv4").GetGauge().GetValue()
			}
			st := &proxier.State{Services: []*proxier.ServicePort{
				localPort("a", "http", "internal", false), localPort("a", "https", "internal", false),
				localPort("b", "http", "external", false), localPort("c", "http", "internal", true),
			}}
			k.Synced(st, proxier.Changes{Full: true}, time.Now())
			wantInternal := 2.0
			if mode == "ipvs" {
				wantInternal = 1
			}
			if i, e := gauge("internal"), gauge("external"); i != wantInternal || e != 1 {
				t.Errorf("no local endpoints: internal %v external %v, want %v and 1", i, e, wantInternal)
			}
			// b gets a local endpoint: a partial sync naming b only.
			st.Services[2] = localPort("b", "http", "external", true)
			k.Synced(st, proxier.Changes{Services: map[types.NamespacedName]bool{{Namespace: "default", Name: "b"}: true}}, time.Now())
			if i, e := gauge("internal"), gauge("external"); i != wantInternal || e != 0 {
				t.Errorf("after b got a local endpoint: internal %v external %v, want %v and 0", i, e, wantInternal)
			}
		})
	}
}
