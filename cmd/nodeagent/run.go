package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"nodeagent/health"
	"nodeagent/proxier"
	"nodeagent/proxier/cleanup"
	"nodeagent/proxier/ipvs"
	"nodeagent/runner"
	"nodeagent/source"
)

func runCmd(ctx context.Context, args []string, stderr io.Writer) error {
	c := defaultConfig()
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	runFlags(fs, &c)
	if err := parseWithConfig(fs, args, &c); err != nil {
		return err
	}
	explicit := explicitFlags(fs)
	if err := c.finishKubeProxy(explicit); err != nil {
		return err
	}
	log, err := c.daemonLogger(stderr, explicit)
	if err != nil {
		return err
	}
	slog.SetDefault(log)
	c.logIgnored(log)
	c.logAccepted(log)
	if done, err := c.startupActions(ctx, log, stderr); done {
		return err
	}
	if err := c.resolveMemberlistSecret(explicit, os.Getenv, log); err != nil {
		return err
	}
	node, err := thisNode(c.HostnameOverride)
	if err != nil {
		return err
	}
	mc, err := c.modelConfig()
	if err != nil {
		return err
	}
	tracker := proxier.NewTracker(node, mc, log)
	metrics := health.NewMetrics()
	kubeProxy := metrics.AddKubeProxy(c.Mode, tracker.ChangeCounts)
	// What a run in another mode left behind would act before (or instead of) this mode's
	// rules: kube-proxy removes it at start too.
	if err := cleanup.Others(ctx, c.Mode, log); err != nil {
		log.Error("removing other modes' leftovers", "err", err)
	}
	px, err := newRecordedProxier(c.Mode, log, kubeProxy)
	if err != nil {
		return err
	}
	kubeProxy.SetFamilies(familiesOf(px))
	c.refusedWait = apiRefusedWait
	src, err := openSource(&c, node.Name, log)
	if err != nil {
		return err
	}
	// kube-proxy's start-up steps, in this process's own network namespace: conntrack sysctls
	// (per namespace; nf_conntrack_max only from the host's) and the OOM score.
	if err := c.initSteps(log); err != nil {
		return err
	}

	announcer, err := startLoadBalancing(ctx, &c, node.Name, node.IPs, tracker, log)
	if err != nil {
		return err
	}
	defer announcer.stop()
	metrics.Registry.MustRegister(announcer.metallbCollector())
	if announcer.bgp != nil {
		metrics.Registry.MustRegister(newBGPCollector(announcer.bgp))
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
	proxyHealth := health.NewProxy(max(2*c.syncPeriod, time.Minute))
	metrics.AddProxyHealth(proxyHealth)
	svcHealth := health.NewServices(health.ServicesOptions{Logger: log, NodePortAddresses: mc.NodePortAddresses, Proxy: proxyHealth})
	defer svcHealth.Close()

	firstSync := true
	// missed are the changes of failed syncs: the health checks have not seen them yet.
	var missed proxier.Changes
	sync := func(ctx context.Context, periodic bool) error {
		if !tracker.Ready() {
			return nil
		}
		if periodic {
			// Node addresses may have changed; the tracker ignores a no-op.
			if n, err := thisNode(c.HostnameOverride); err == nil {
				tracker.SetNode(n)
			}
		}
		start := time.Now()
		st, ch := tracker.Snapshot()
		if periodic && !ch.Full {
			ch.Full, ch.Periodic = true, true
		}
		kind := "partial"
		if ch.Full {
			kind = "full"
		}
		err := px.Sync(context.WithoutCancel(ctx), st, ch)
		took := time.Since(start)
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
	r.Period = c.syncPeriod
	r.MinInterval = c.minSyncPeriod
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

	log.Info("starting", "version", version, "node", node.Name, "mode", c.Mode, "nodeIPs", fmt.Sprint(node.IPs))
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

// runFlags binds the flags only run has.
func runFlags(fs *flag.FlagSet, c *Config) {
	fs.DurationVar(&c.syncPeriod, "sync-period", c.syncPeriod, "how often rules are fully resynced and checked for drift")
	fs.DurationVar(&c.minSyncPeriod, "min-sync-period", c.minSyncPeriod, "least time between two syncs (0: a change is applied as soon as the previous sync ends)")
	fs.StringVar(&c.HealthzBindAddress, "healthz-bind-address", c.HealthzBindAddress, "ip:port of the /healthz server (empty: off)")
	fs.StringVar(&c.MetricsBindAddress, "metrics-bind-address", c.MetricsBindAddress, "ip:port of the /metrics server (empty: off)")
	fs.BoolVar(&c.EnableProfiling, "profiling", c.EnableProfiling, "serve Go's /debug/pprof/ on the metrics address (kube-proxy's flag)")
	fs.StringVar(&c.MemberlistBind, "memberlist-bind", c.MemberlistBind, "ip[:port] for memberlist among agents (port 7946 by default); empty: no membership, every node the objects name counts as alive")
	fs.Func("memberlist-join", "comma-separated addresses of other agents' memberlist (this node's own may be among them)", func(s string) error {
		c.MemberlistJoin = splitList(s)
		return nil
	})
	fs.StringVar(&c.MemberlistSecret, "memberlist-secret", c.MemberlistSecret, "shared secret that encrypts and authenticates memberlist gossip; visible in /proc/<pid>/cmdline, prefer --memberlist-secret-file or $"+envMemberlistSecret)
	fs.StringVar(&c.MemberlistSecretFile, "memberlist-secret-file", c.MemberlistSecretFile, "file holding the memberlist secret (surrounding whitespace ignored); a directory means its file \"secretkey\", as MetalLB mounts its memberlist Secret")
	fs.BoolVar(&c.MemberlistInsecure, "memberlist-insecure", c.MemberlistInsecure, "run memberlist without a secret on purpose: any host that reaches the memberlist port can then join and take load-balancer addresses over")
	fs.BoolVar(&c.Layer2, "layer2", c.Layer2, "answer ARP/NDP for the load-balancer addresses this node owns (L2Advertisements)")
	fs.BoolVar(&c.AdvertiseClusterIP, "advertise-cluster-ip", c.AdvertiseClusterIP, "also advertise every service's cluster IPs over BGP, from nodes that may serve them (kube-router's flag)")
	fs.BoolVar(&c.AdvertiseExternalIP, "advertise-external-ip", c.AdvertiseExternalIP, "also advertise every service's externalIPs over BGP, by the load-balancer rules (kube-router's flag)")
	fs.DurationVar(&c.Layer2Refresh.Duration, "layer2-refresh-interval", c.Layer2Refresh.Duration, "re-send gratuitous ARP/NDP for every owned address this often (0: only when ownership changes)")
	fs.StringVar(&c.LeaderElectionNamespace, "leader-election-namespace", c.LeaderElectionNamespace, "namespace of the Lease that elects the agent writing load-balancer status (API mode), of ServiceL2Status objects, and of the basic-auth Secrets BGPPeer passwordSecret names")
	kubeProxyFlags(fs, c)
}

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
