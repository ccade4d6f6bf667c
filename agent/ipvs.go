package agent

import (
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"nodeagent/agent/config"
	"nodeagent/proxier/ipvs"
)

// IPVSOptions turns the ipvs: settings of c into the proxier's options (nil c: the defaults).
func IPVSOptions(cfg *config.Config, log *slog.Logger) ipvs.Options {
	o := ipvs.Options{Log: log}
	if cfg != nil {
		c := &cfg.IPVS
		o.Scheduler = c.Scheduler
		o.StrictARP = c.StrictARP
		o.TCPTimeout = c.TCPTimeout.Duration
		o.TCPFinTimeout = c.TCPFinTimeo.Duration
		o.UDPTimeout = c.UDPTimeout.Duration
	}
	return o
}

// ipvsRefusedCollector exposes the virtual servers the kernel refused (an IPVS scheduler module
// it lacks, say), one series per virtual server, at each scrape.
type ipvsRefusedCollector struct {
	px   *ipvs.Proxier
	desc *prometheus.Desc
}

func newIPVSRefusedCollector(px *ipvs.Proxier) *ipvsRefusedCollector {
	return &ipvsRefusedCollector{px: px, desc: prometheus.NewDesc("nodeagent_ipvs_refused_virtual_servers",
		"1 for each IPVS virtual server the kernel refused while the other services were applied.",
		[]string{"service", "virtual_server"}, nil)}
}

func (c *ipvsRefusedCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *ipvsRefusedCollector) Collect(ch chan<- prometheus.Metric) {
	for _, r := range c.px.Refused() {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, 1, r.Service.String(), r.VirtualServer)
	}
}
