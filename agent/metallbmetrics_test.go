package agent

import (
	"io"
	"math"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"nodeagent/arp"
	"nodeagent/bgp"
	"nodeagent/lb"
)

// MetalLB's metric names and labels, scraped as Prometheus would.
func TestMetalLBMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(newMetalLBCollector(
		func() map[string]lb.PoolUsage {
			return map[string]lb.PoolUsage{"localip-pool": {Total: 30, IPv4: 30, InUse: 2, InUseIPv4: 2, Services: 3},
				"huge": {Total: math.MaxInt64, IPv6: math.MaxInt64}}
		},
		func() map[netip.Addr]arp.AddrStats {
			return map[netip.Addr]arp.AddrStats{netip.MustParseAddr("10.0.0.51"): {Requests: 5, Responses: 4, Gratuitous: 8}}
		},
		func() bgp.Status {
			return bgp.Status{Sessions: []bgp.SessionStatus{{Name: "metallb-system/router", Address: netip.MustParseAddr("10.0.0.254"),
				Port: 179, Established: true, UpdatesSent: 3,
				Advertised: []netip.Prefix{netip.MustParsePrefix("10.0.0.51/32")}}}}
		}))
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{
		`metallb_allocator_addresses_total{pool="localip-pool"} 30`,
		`metallb_allocator_addresses_in_use_total{pool="localip-pool"} 2`,
		`metallb_allocator_ipv4_addresses_in_use_total{pool="localip-pool"} 2`,
		`metallb_allocator_services_allocated_total{pool="localip-pool"} 3`,
		`metallb_allocator_ipv6_addresses_total{pool="huge"} 9.223372036854776e+18`,
		`metallb_layer2_requests_received{ip="10.0.0.51"} 5`,
		`metallb_layer2_responses_sent{ip="10.0.0.51"} 4`,
		`metallb_layer2_gratuitous_sent{ip="10.0.0.51"} 8`,
		`metallb_bgp_session_up{peer="10.0.0.254:179"} 1`,
		`metallb_bgp_announced_prefixes_total{peer="10.0.0.254:179"} 1`,
		`metallb_bgp_updates_total{peer="10.0.0.254:179"} 3`,
		"# TYPE metallb_layer2_requests_received counter",
		"# TYPE metallb_bgp_updates_total counter",
		"# TYPE metallb_allocator_addresses_total gauge",
	} {
		if !strings.Contains(string(body), want+"\n") {
			t.Errorf("scrape lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("scraped:\n%s", body)
	}
}
