package health

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are the proxy's Prometheus metrics, in their own registry.
type Metrics struct {
	Registry *prometheus.Registry
	// SyncDuration is labelled sync="full" or "partial".
	SyncDuration  *prometheus.HistogramVec
	LastSync      prometheus.Gauge
	Services      prometheus.Gauge
	Endpoints     prometheus.Gauge
	SyncErrors    prometheus.Counter
	InvalidObject prometheus.Gauge
}

// NewMetrics creates and registers the metrics, with Go runtime and process collectors.
func NewMetrics() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		SyncDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "nodeagent_sync_proxy_rules_duration_seconds",
			Help:    "Time to program the kernel for one sync, full or partial.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18),
		}, []string{"sync"}),
		LastSync: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nodeagent_sync_proxy_rules_last_timestamp_seconds",
			Help: "Unix time of the last successful sync.",
		}),
		Services: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nodeagent_services", Help: "Service ports programmed (per family).",
		}),
		Endpoints: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nodeagent_endpoints", Help: "Endpoints programmed, summed over service ports.",
		}),
		SyncErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nodeagent_sync_proxy_rules_errors_total", Help: "Syncs that failed and will be retried.",
		}),
		InvalidObject: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nodeagent_invalid_objects", Help: "Objects or parts of objects left out as invalid or conflicting.",
		}),
	}
	m.Registry.MustRegister(m.SyncDuration, m.LastSync, m.Services, m.Endpoints, m.SyncErrors, m.InvalidObject,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// ObserveSync records a successful sync of kind ("full" or "partial") that took d. kube-proxy's
// names for these figures are KubeProxy's.
func (m *Metrics) ObserveSync(kind string, d time.Duration) {
	m.SyncDuration.WithLabelValues(kind).Observe(d.Seconds())
	m.LastSync.SetToCurrentTime()
}

// Layer2Stats are the layer-2 responder's figures, read at each scrape.
type Layer2Stats struct {
	Announced                                                                      int
	OwnershipChanges, ARPAnswered, NDPAnswered, GratuitousSent, Errors, BadPackets uint64
}

// AddLayer2 registers the layer-2 responder's metrics, read from stats at each scrape.
func (m *Metrics) AddLayer2(stats func() Layer2Stats) {
	counter := func(name, help string, v func(Layer2Stats) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return float64(v(stats())) })
	}
	m.Registry.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "nodeagent_layer2_announced",
			Help: "Load-balancer (address, interface) pairs this node answers ARP/NDP for."},
			func() float64 { return float64(stats().Announced) }),
		counter("nodeagent_layer2_ownership_changes_total", "(address, interface) pairs gained or lost.", func(s Layer2Stats) uint64 { return s.OwnershipChanges }),
		counter("nodeagent_layer2_arp_responses_sent_total", "ARP requests answered.", func(s Layer2Stats) uint64 { return s.ARPAnswered }),
		counter("nodeagent_layer2_ndp_responses_sent_total", "Neighbor Solicitations answered.", func(s Layer2Stats) uint64 { return s.NDPAnswered }),
		counter("nodeagent_layer2_gratuitous_sent_total", "Gratuitous ARPs and unsolicited Neighbor Advertisements sent.", func(s Layer2Stats) uint64 { return s.GratuitousSent }),
		counter("nodeagent_layer2_errors_total", "Failed socket operations and interface listings.", func(s Layer2Stats) uint64 { return s.Errors }),
		counter("nodeagent_layer2_bad_packets_total", "Received ARP/NDP packets dropped as malformed or invalid, or because handling them failed.", func(s Layer2Stats) uint64 { return s.BadPackets }),
	)
}

// AddProxyHealth registers p's counters of /healthz and /livez answers by status code, under
// kube-proxy's names (kubeproxy_proxy_healthz_total, kubeproxy_proxy_livez_total).
func (m *Metrics) AddProxyHealth(p *Proxy) {
	m.Registry.MustRegister(p.healthzTotal, p.livezTotal)
}

// Handler serves the registry in Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{})
}
