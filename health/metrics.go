package health

import (
	"net/http"

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

// Handler serves the registry in Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{})
}
