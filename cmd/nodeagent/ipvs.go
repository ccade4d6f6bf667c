package main

import (
	"flag"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"nodeagent/proxier"
	"nodeagent/proxier/ipvs"
)

// ipvsSettings is the ipvs: block (and --ipvs-* flags) of the command being run. The proxier
// constructors take only a mode, so the settings reach them here; nil means the defaults.
var ipvsSettings *ipvsConfig

// ipvsFlags binds kube-proxy's --ipvs-* flags to c.IPVS, which already holds the config file's
// ipvs: block, so that a flag given overrides the file. --ipvs-sync-period and
// --ipvs-min-sync-period are kube-proxy's mode-specific spellings of --sync-period and
// --min-sync-period and exist where those do (run).
func ipvsFlags(fs *flag.FlagSet, c *Config) {
	fs.StringVar(&c.IPVS.Scheduler, "ipvs-scheduler", c.IPVS.Scheduler,
		"IPVS scheduler of services whose annotation "+proxier.AnnotationIPVSScheduler+" names none: rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq, mh, ... (default rr)")
	fs.BoolVar(&c.IPVS.StrictARP, "ipvs-strict-arp", c.IPVS.StrictARP,
		"set arp_ignore=1 and arp_announce=2 so the node never answers ARP for service addresses on "+ipvs.DummyInterface+" (needed with MetalLB's layer 2)")
	fs.DurationVar(&c.IPVS.TCPTimeout.Duration, "ipvs-tcp-timeout", c.IPVS.TCPTimeout.Duration,
		"IPVS timeout of idle established TCP connections (0: leave the kernel's)")
	fs.DurationVar(&c.IPVS.TCPFinTimeo.Duration, "ipvs-tcpfin-timeout", c.IPVS.TCPFinTimeo.Duration,
		"IPVS timeout of TCP connections after a FIN (0: leave the kernel's)")
	fs.DurationVar(&c.IPVS.UDPTimeout.Duration, "ipvs-udp-timeout", c.IPVS.UDPTimeout.Duration,
		"IPVS timeout of UDP flows (0: leave the kernel's)")
	if fs.Lookup("sync-period") != nil {
		fs.DurationVar(&c.syncPeriod, "ipvs-sync-period", c.syncPeriod, "same as --sync-period")
	}
	if fs.Lookup("min-sync-period") != nil {
		fs.DurationVar(&c.minSyncPeriod, "ipvs-min-sync-period", c.minSyncPeriod, "same as --min-sync-period")
	}
	ipvsSettings = &c.IPVS
}

// ipvsOptions turns the ipvs settings into the proxier's options.
func ipvsOptions(log *slog.Logger) ipvs.Options {
	o := ipvs.Options{Log: log}
	if c := ipvsSettings; c != nil {
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
