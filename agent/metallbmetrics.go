package agent

import (
	"net"
	"net/netip"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"nodeagent/arp"
	"nodeagent/bgp"
	"nodeagent/lb"
)

// metallbCollector exposes MetalLB v0.14.8's own metrics, under its names and labels, beside
// nodeagent's: the allocator's per-pool address counts (every agent computes the same allocation,
// so every agent exports them; MetalLB's controller does once), the layer-2 per-address counters
// and the BGP per-session figures (MetalLB's native speaker labels a peer "address:port").
type metallbCollector struct {
	pools  func() map[string]lb.PoolUsage      // nil: none
	layer2 func() map[netip.Addr]arp.AddrStats // nil: --layer2 off
	bgp    func() bgp.Status                   // nil: no BGP speaker

	total, total4, total6, inUse, inUse4, inUse6 *prometheus.Desc
	services                                     *prometheus.Desc
	requests, responses, gratuitous              *prometheus.Desc
	sessionUp, prefixes, updates                 *prometheus.Desc
}

func newMetalLBCollector(pools func() map[string]lb.PoolUsage, layer2 func() map[netip.Addr]arp.AddrStats, bgpStatus func() bgp.Status) *metallbCollector {
	pool, ip, peer := []string{"pool"}, []string{"ip"}, []string{"peer"}
	d := func(name, help string, labels []string) *prometheus.Desc {
		return prometheus.NewDesc("metallb_"+name, help, labels, nil)
	}
	return &metallbCollector{pools: pools, layer2: layer2, bgp: bgpStatus,
		total:      d("allocator_addresses_total", "Number of usable IP addresses, per pool", pool),
		total4:     d("allocator_ipv4_addresses_total", "Number of usable IPV4 addresses, per pool", pool),
		total6:     d("allocator_ipv6_addresses_total", "Number of usable IPV6 addresses, per pool", pool),
		inUse:      d("allocator_addresses_in_use_total", "Number of IP addresses in use, per pool", pool),
		inUse4:     d("allocator_ipv4_addresses_in_use_total", "Number of IPV4 addresses in use, per pool", pool),
		inUse6:     d("allocator_ipv6_addresses_in_use_total", "Number of IPV6 addresses in use, per pool", pool),
		services:   d("allocator_services_allocated_total", "Number of services allocated, per pool", pool),
		requests:   d("layer2_requests_received", "Number of layer2 requests received for owned IPs", ip),
		responses:  d("layer2_responses_sent", "Number of layer2 responses sent for owned IPs in response to requests", ip),
		gratuitous: d("layer2_gratuitous_sent", "Number of gratuitous layer2 packets sent for owned IPs as a result of failovers", ip),
		sessionUp:  d("bgp_session_up", "BGP session state (1 is up, 0 is down)", peer),
		prefixes:   d("bgp_announced_prefixes_total", "Number of prefixes currently being advertised on the BGP session", peer),
		updates:    d("bgp_updates_total", "Number of BGP UPDATE messages sent", peer),
	}
}

func (c *metallbCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.total, c.total4, c.total6, c.inUse, c.inUse4, c.inUse6, c.services,
		c.requests, c.responses, c.gratuitous, c.sessionUp, c.prefixes, c.updates} {
		ch <- d
	}
}

func (c *metallbCollector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, label string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, label)
	}
	counter := func(d *prometheus.Desc, v uint64, label string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), label)
	}
	if c.pools != nil {
		for name, u := range c.pools() {
			gauge(c.total, float64(u.Total), name)
			gauge(c.total4, float64(u.IPv4), name)
			gauge(c.total6, float64(u.IPv6), name)
			gauge(c.inUse, float64(u.InUse), name)
			gauge(c.inUse4, float64(u.InUseIPv4), name)
			gauge(c.inUse6, float64(u.InUseIPv6), name)
			gauge(c.services, float64(u.Services), name)
		}
	}
	if c.layer2 != nil {
		for a, s := range c.layer2() {
			counter(c.requests, s.Requests, a.String())
			counter(c.responses, s.Responses, a.String())
			counter(c.gratuitous, s.Gratuitous, a.String())
		}
	}
	if c.bgp != nil {
		for _, s := range c.bgp().Sessions {
			peer := net.JoinHostPort(s.Address.String(), strconv.Itoa(int(s.Port)))
			up := 0.0
			if s.Established {
				up = 1
			}
			gauge(c.sessionUp, up, peer)
			gauge(c.prefixes, float64(len(s.Advertised)), peer)
			counter(c.updates, s.UpdatesSent, peer)
		}
	}
}
