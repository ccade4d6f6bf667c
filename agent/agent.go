// Package agent is the daemon: it wires a source of Kubernetes objects, the MetalLB speaker and
// the proxy tracker to a proxier, keeps the kernel in sync (partial syncs on changes, periodic full
// syncs), and serves health, metrics and load-balancer status. Command-line parsing is the
// command's; Run takes the configuration it produced.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"nodeagent/agent/config"
	"nodeagent/health"
	"nodeagent/proxier"
	"nodeagent/proxier/cleanup"
	"nodeagent/proxier/ipvs"
	"nodeagent/runner"
	"nodeagent/source"
)

// Options are what Run needs: the configuration in force and the machine's parts. A nil
// function or source means the real one; tests replace them to run the daemon without root.
type Options struct {
	// Config is the configuration in force (flags and file applied, memberlist secret
	// resolved). Run sets its RefusedWait when it opens the source itself.
	Config  *config.Config
	Log     *slog.Logger
	Version string

	// Node returns this node's name and addresses, at start and before each periodic sync
	// (nil: ThisNode of Config.HostnameOverride).
	Node func() (proxier.Node, error)
	// Source delivers the objects (nil: the one Config names, manifests or API server).
	Source source.Runner
	// NewProxier returns the proxier that programs the kernel, recording to rec (nil: the
	// mode's, after removing what other modes left behind).
	NewProxier func(rec proxier.Recorder) (proxier.Proxier, error)
	// Prepare does kube-proxy's start-up steps in this process (nil: Prepare, the conntrack
	// sysctls and the OOM score).
	Prepare func() error
	// Layer2, when set, receives the addresses to answer ARP/NDP for instead of the layer-2
	// responder, which is then not started (tests: no raw sockets).
	Layer2 func(owned map[netip.Addr][]string)
}

// Run runs the agent until ctx ends (nil error) or the source stops (its error). Programmed
// rules stay in place when it returns: a restarted agent must not interrupt live connections.
func Run(ctx context.Context, o Options) error {
	c, log := o.Config, o.Log
	thisNode := o.Node
	if thisNode == nil {
		thisNode = func() (proxier.Node, error) { return ThisNode(c.HostnameOverride) }
	}
	node, err := thisNode()
	if err != nil {
		return err
	}
	mc, err := c.ModelConfig()
	if err != nil {
		return err
	}
	tracker := proxier.NewTracker(node, mc, log)
	metrics := health.NewMetrics()
	kubeProxy := metrics.AddKubeProxy(c.Mode, tracker.ChangeCounts)
	newProxier := o.NewProxier
	if newProxier == nil {
		newProxier = func(rec proxier.Recorder) (proxier.Proxier, error) {
			// What a run in another mode left behind would act before (or instead of) this
			// mode's rules: kube-proxy removes it at start too.
			if err := cleanup.Others(ctx, c.Mode, log); err != nil {
				log.Error("removing other modes' leftovers", "err", err)
			}
			return NewProxier(c.Mode, c, log, rec)
		}
	}
	px, err := newProxier(kubeProxy)
	if err != nil {
		return err
	}
	kubeProxy.SetFamilies(familiesOf(px))
	src := o.Source
	if src == nil {
		c.RefusedWait = apiRefusedWait
		if src, err = OpenSource(c, node.Name, log); err != nil {
			return err
		}
	}
	// kube-proxy's start-up steps, in this process's own network namespace: conntrack sysctls
	// (per namespace; nf_conntrack_max only from the host's) and the OOM score.
	prepare := o.Prepare
	if prepare == nil {
		prepare = func() error { return Prepare(c, log) }
	}
	if err := prepare(); err != nil {
		return err
	}

	// Addresses are announced only while their rules are programmed: the sync below tells the gate.
	gate := newAnnounceGate(log.With("component", "announce"), c.AdvertiseClusterIP)
	announcer, err := startLoadBalancing(ctx, c, node.Name, node.IPs, tracker, gate, o.Layer2, log)
	if err != nil {
		return err
	}
	defer announcer.stop()
	metrics.Registry.MustRegister(announcer.metallbCollector())
	if announcer.bgp != nil {
		metrics.Registry.MustRegister(newBGPCollector(announcer.bgp))
	}
	if announcer.check != nil {
		metrics.Registry.MustRegister(announcer.check)
	}
	if rp, ok := px.(interface{ Repairs() uint64 }); ok {
		metrics.Registry.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "nodeagent_sync_repairs_total",
			Help: "Full syncs that found the rules changed by someone else and rewrote them.",
		}, func() float64 { return float64(rp.Repairs()) }))
	}
	if ipx, ok := px.(*ipvs.Proxier); ok {
		metrics.Registry.MustRegister(newIPVSRefusedCollector(ipx))
	}
	if r := announcer.layer2; r != nil {
		metrics.AddLayer2(func() health.Layer2Stats {
			s := r.Stats()
			return health.Layer2Stats{Announced: s.Announced, OwnershipChanges: s.OwnershipChanges, ARPAnswered: s.ARPRequestsAnswered,
				NDPAnswered: s.NDPSolicitationsAnswered, GratuitousSent: s.GratuitousSent, Errors: s.Errors, BadPackets: s.BadPackets}
		})
	}
	proxyHealth := health.NewProxy(max(2*c.SyncPeriod, time.Minute))
	metrics.AddProxyHealth(proxyHealth)
	svcHealth := health.NewServices(health.ServicesOptions{Logger: log, NodePortAddresses: mc.NodePortAddresses, Proxy: proxyHealth})
	defer svcHealth.Close()

	firstSync := true
	// missed are the changes of failed syncs: the health checks have not seen them yet.
	var missed proxier.Changes
	// last is the previous sync's State: nobody reads it once the sync is over, so it is handed
	// back to the tracker to be patched into the next one.
	var last *proxier.State
	sync := func(ctx context.Context, periodic bool) error {
		if !tracker.Ready() {
			return nil
		}
		if periodic {
			// Node addresses may have changed; the tracker ignores a no-op.
			if n, err := thisNode(); err == nil {
				tracker.SetNode(n)
			}
		}
		start := time.Now()
		st, ch := tracker.Next(last)
		last = st
		if periodic && !ch.Full {
			ch.Full, ch.Periodic = true, true
		}
		kind := "partial"
		if ch.Full {
			kind = "full"
		}
		// withdraw → sync → announce: no address is announced without its rules.
		removed, added := gate.frontends(st, ch)
		gate.beforeSync(removed)
		err := px.Sync(context.WithoutCancel(ctx), st, ch)
		took := time.Since(start)
		gate.synced(added, err == nil)
		kubeProxy.ObserveSync(ch.Full, took) // kube-proxy times failed syncs too
		if err != nil {
			missed = missed.Merge(ch)
			metrics.SyncErrors.Inc()
			log.Error("sync failed; previous rules stay, retrying", "mode", c.Mode, "sync", kind, "err", err)
			return err
		}
		metrics.ObserveSync(kind, took)
		endpoints := st.EndpointCount
		metrics.Services.Set(float64(len(st.Services)))
		metrics.Endpoints.Set(float64(endpoints))
		metrics.InvalidObject.Set(float64(len(st.Problems)))
		proxyHealth.Synced(start)
		all := missed.Merge(ch)
		kubeProxy.Synced(st, all, start.Add(took))
		svcHealth.Sync(st, all)
		missed = proxier.Changes{}
		if firstSync {
			firstSync = false
			log.Info("first sync done", "mode", c.Mode, "servicePorts", len(st.Services), "endpoints", endpoints, "took", took)
		} else {
			log.Debug("synced", "sync", kind, "changed", len(ch.Services), "took", took)
		}
		return nil
	}
	r := runner.New(sync)
	r.Period = c.SyncPeriod
	r.MinInterval = c.MinSyncPeriod
	tracker.OnChange = func() {
		proxyHealth.Queued()
		kubeProxy.Queued()
		r.Trigger()
	}
	// As kube-proxy's sync loop: the informers' initial sync counts as queued.
	kubeProxy.Queued()

	if err := serve(ctx, log, c.HealthzBindAddress, map[string]http.Handler{"/healthz": proxyHealth, "/livez": proxyHealth.Livez()}, 0); err != nil {
		if c.BindAddressHardFail {
			return err
		}
		log.Error("healthz server not started; going on (--bind-address-hard-fail stops instead)", "err", err)
	}
	metricsRoutes := map[string]http.Handler{"/metrics": metrics.Handler(), "/healthz": proxyHealth,
		"/debug/bgp": http.HandlerFunc(announcer.bgpStatus)}
	if c.EnableProfiling {
		metricsRoutes["/debug/pprof/"] = http.HandlerFunc(pprof.Index)
		metricsRoutes["/debug/pprof/cmdline"] = http.HandlerFunc(pprof.Cmdline)
		metricsRoutes["/debug/pprof/profile"] = http.HandlerFunc(pprof.Profile)
		metricsRoutes["/debug/pprof/symbol"] = http.HandlerFunc(pprof.Symbol)
		metricsRoutes["/debug/pprof/trace"] = http.HandlerFunc(pprof.Trace)
	}
	writeTimeout := time.Duration(0)
	if c.EnableProfiling {
		writeTimeout = profilingWriteTimeout
	}
	if err := serve(ctx, log, c.MetricsBindAddress, metricsRoutes, writeTimeout); err != nil {
		if c.BindAddressHardFail {
			return err
		}
		log.Error("metrics server not started; going on (--bind-address-hard-fail stops instead)", "err", err)
	}

	log.Info("starting", "version", o.Version, "node", node.Name, "mode", c.Mode, "nodeIPs", fmt.Sprint(node.IPs))
	srcErr := make(chan error, 1)
	go func() {
		srcErr <- src.Run(ctx, nodeWatch{Sink: announcer.speaker, name: node.Name, health: proxyHealth})
	}()
	runnerDone := make(chan struct{})
	go func() {
		r.Run(ctx)
		close(runnerDone)
	}()
	select {
	case <-ctx.Done():
		// Rules stay in place: a restarted agent must not interrupt live connections. A sync in
		// progress finishes first (bounded: a wedged kernel call must not keep the agent alive).
		select {
		case <-runnerDone:
		case <-time.After(10 * time.Second):
			log.Warn("stopping while a sync is still running")
		}
		log.Info("stopping; programmed rules are left in place")
		return nil
	case err := <-srcErr:
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("source stopped: %w", err)
	}
}

// profilingWriteTimeout lets /debug/pprof/profile and /trace run for up to this long (pprof
// refuses a duration past the server's WriteTimeout; its default profile takes 30 s).
const profilingWriteTimeout = 2 * time.Minute

// serve starts an HTTP server on addr (skipped when addr is empty or its port is 0) that stops
// with ctx. It has health's limits; writeTimeout, when positive, replaces its WriteTimeout.
func serve(ctx context.Context, log *slog.Logger, addr string, routes map[string]http.Handler, writeTimeout time.Duration) error {
	if addr == "" {
		return nil
	}
	if _, port, err := net.SplitHostPort(addr); err == nil && port == "0" {
		return nil
	}
	mux := http.NewServeMux()
	for p, h := range routes {
		mux.Handle(p, h)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", addr, err)
	}
	srv := health.NewHTTPServer(mux)
	if writeTimeout > 0 {
		srv.WriteTimeout = writeTimeout
	}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server", "addr", addr, "err", err)
		}
	}()
	return nil
}

// nodeWatch passes every object on and tells the proxy health whether this node's Node object
// leaves it eligible for load-balancer traffic (kube-proxy's /healthz fails on a node being
// deleted or marked for deletion). A deleted Node keeps the last answer, as in kube-proxy.
type nodeWatch struct {
	source.Sink
	name   string
	health *health.Proxy
}

func (w nodeWatch) Upsert(obj runtime.Object) {
	if n, ok := obj.(*v1.Node); ok && n.Name == w.name {
		w.health.SetNodeEligible(health.NodeEligible(n))
	}
	w.Sink.Upsert(obj)
}
