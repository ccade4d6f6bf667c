package agent

import (
	"github.com/prometheus/client_golang/prometheus"

	"nodeagent/bgp"
)

// bgpCollector exposes the BGP sessions' state at each scrape, by peer, with MetalLB's metric
// names under nodeagent's prefix.
type bgpCollector struct {
	speaker              *bgp.Speaker
	up, announced, flaps *prometheus.Desc
}

func newBGPCollector(sp *bgp.Speaker) *bgpCollector {
	label := []string{"peer"}
	return &bgpCollector{speaker: sp,
		up:        prometheus.NewDesc("nodeagent_bgp_session_up", "1 while the BGP session with the peer is established.", label, nil),
		announced: prometheus.NewDesc("nodeagent_bgp_announced_prefixes", "Prefixes announced to the peer.", label, nil),
		flaps:     prometheus.NewDesc("nodeagent_bgp_session_flaps_total", "Established sessions with the peer that went down.", label, nil),
	}
}

func (c *bgpCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.up
	ch <- c.announced
	ch <- c.flaps
}

func (c *bgpCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.speaker.Status().Sessions {
		up := 0.0
		if s.Established {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, up, s.Name)
		ch <- prometheus.MustNewConstMetric(c.announced, prometheus.GaugeValue, float64(len(s.Advertised)), s.Name)
		ch <- prometheus.MustNewConstMetric(c.flaps, prometheus.CounterValue, float64(s.Flaps), s.Name)
	}
}
