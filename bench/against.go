package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"nodeagent/test/kube"
)

// Addresses of the against lab: a LAN bridge in the API server's namespace, one node namespace
// per proxy on it (the lab's node LAN and router addresses).
var (
	againstRouter    = netip.MustParseAddr("10.0.0.254")
	againstKubeProxy = netip.MustParseAddr("10.0.0.151")
	againstNodeagent = netip.MustParseAddr("10.0.0.152")
)

// Node names of the two proxies.
const (
	kubeProxyNode = "kube-proxy-node"
	nodeagentNode = "nodeagent-node"
)

// AgainstOptions configure a side-by-side run of nodeagent and kube-proxy.
type AgainstOptions struct {
	// Modes are the proxy modes to compare: iptables, nftables.
	Modes []string
	// Sizes are the service counts; each (mode, size) runs in a fresh lab.
	Sizes               []int
	EndpointsPerService int
	// Changes is how many single-endpoint changes to time after the services exist.
	Changes int
	// Writers is how many goroutines create objects through the API at once.
	Writers int
	// ChangeGap is the pause after a change reached both kernels before the next one. kube-proxy
	// syncs at most once per --*-min-sync-period (1 s by default); a gap at least that long
	// measures its reaction to a change rather than its rate limit.
	ChangeGap time.Duration
	// CreateTimeout bounds the wait for the last created service; ChangeTimeout for one change.
	CreateTimeout, ChangeTimeout time.Duration
	// Nodeagent is the nodeagent binary: the agent under test and the kernel observer.
	Nodeagent string
	// KubeBinDir holds kube-apiserver and kube-proxy; empty runs test/kube's build.sh.
	KubeBinDir string
	// Etcd is the etcd binary; empty looks it up in PATH.
	Etcd string
	// Dir keeps logs and kubeconfigs; empty uses a temporary directory removed at the end.
	Dir string
	// Log receives progress messages.
	Log *slog.Logger
	// TrafficSamples is how many samples of each traffic case to take (see measureTraffic);
	// 0 skips the traffic probe.
	TrafficSamples int
	// KubeProxyArgs are extra kube-proxy flags (e.g. --iptables-min-sync-period=0).
	KubeProxyArgs []string
	// DatapathDuration is how long each side is loaded per period in the datapath phase
	// (see measureDatapath), DatapathRounds how many periods per side; 0 skips the phase.
	DatapathDuration time.Duration
	DatapathRounds   int
	// DatapathWorkers is how many connections the datapath load keeps open at once.
	DatapathWorkers int
}

func (o *AgainstOptions) defaults() {
	if o.EndpointsPerService == 0 {
		o.EndpointsPerService = 10
	}
	if o.Writers == 0 {
		o.Writers = 16
	}
	if o.CreateTimeout == 0 {
		o.CreateTimeout = 15 * time.Minute
	}
	if o.ChangeTimeout == 0 {
		o.ChangeTimeout = 2 * time.Minute
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.DatapathWorkers == 0 {
		o.DatapathWorkers = 2 * runtime.NumCPU()
	}
}

// AgainstResult is what one implementation did in one (mode, size) run. Times are
// milliseconds; CPU in seconds of user plus system time over the whole run.
type AgainstResult struct {
	Impl                string `json:"implementation"`
	Mode                string `json:"mode"`
	Services            int    `json:"services"`
	EndpointsPerService int    `json:"endpointsPerService"`
	// CreateMs is how long the API writes of every Service and EndpointSlice took (the same for
	// both implementations of a run).
	CreateMs float64 `json:"createMs"`
	// FirstSyncMs runs from the first API write to the last created service's rules being in
	// this implementation's kernel; LastLagMs from the last write to the same moment.
	FirstSyncMs float64 `json:"firstSyncMs"`
	LastLagMs   float64 `json:"lastLagMs"`
	// Changes is how many single-endpoint changes were timed (API write → new endpoint in kernel).
	Changes     int     `json:"changes"`
	ChangeP50Ms float64 `json:"changeP50Ms"`
	ChangeP99Ms float64 `json:"changeP99Ms"`
	ChangeMaxMs float64 `json:"changeMaxMs"`
	// WatchP50Ms and WatchP99Ms time the same changes from the API write to the watch event
	// reaching a plain client (the benchmark itself): the floor under both implementations.
	WatchP50Ms    float64 `json:"watchP50Ms"`
	WatchP99Ms    float64 `json:"watchP99Ms"`
	CPUSeconds    float64 `json:"cpuSeconds"`
	CPUCreateSecs float64 `json:"cpuCreateSeconds"`
	PeakRSSMB     float64 `json:"peakRssMB"`
	// KernelObjects counts the implementation's IPv4 rules and chains (iptables), or rules,
	// chains, sets and elements of its table (nftables).
	KernelObjects int `json:"kernelObjects"`
	// FirstEndpoint and Replaced are the traffic probe's cases: from the API write's return to
	// the first connection through the service answered by (a) the first endpoint of a service
	// that had none, (b) the new endpoint of a working service where one was replaced.
	FirstEndpoint Latencies `json:"firstEndpoint"`
	Replaced      Latencies `json:"replaced"`
	// TrafficAttempts counts the probe's connection attempts; StaleAnswers those answered by a
	// replaced endpoint after its replacement had answered (a proxy that switches atomically: 0).
	TrafficAttempts int `json:"trafficAttempts"`
	StaleAnswers    int `json:"staleAnswers"`
	// Datapath is the datapath phase: new connections per second through a cluster IP.
	Datapath *Datapath `json:"datapath,omitempty"`
}

// Against runs every (mode, size) of o, each in a fresh lab, and returns two results per run:
// nodeagent's, then kube-proxy's. On failure it returns what it measured so far.
func Against(ctx context.Context, o AgainstOptions) ([]AgainstResult, error) {
	o.defaults()
	if o.KubeBinDir == "" {
		dir, err := kube.Build(ctx)
		if err != nil {
			return nil, fmt.Errorf("build kube-apiserver and kube-proxy: %w", err)
		}
		o.KubeBinDir = dir
	}
	if o.Dir == "" {
		dir, err := os.MkdirTemp("", "na-against-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		o.Dir = dir
	}
	var out []AgainstResult
	k := 0
	for _, n := range o.Sizes {
		for _, m := range o.Modes {
			o.Log.Info("measuring nodeagent and kube-proxy side by side", "mode", m, "services", n,
				"endpointsPerService", o.EndpointsPerService)
			lab := &againstLab{o: &o, mode: m, services: n,
				prefix: fmt.Sprintf("navs%d-%d", os.Getpid(), k), dir: filepath.Join(o.Dir, fmt.Sprintf("%s-%d", m, n))}
			k++
			rs, err := lab.run(ctx)
			out = append(out, rs...)
			if err != nil {
				return out, fmt.Errorf("%s mode, %d services: %w", m, n, err)
			}
		}
	}
	return out, nil
}

// againstLab is one (mode, size) run: three namespaces, a control plane, two proxies and their
// kernel observers.
type againstLab struct {
	o        *AgainstOptions
	mode     string
	services int
	prefix   string
	dir      string

	namespaces []string
	listeners  []net.Listener
	probeIPs   map[string]netip.Addr // cluster IPs of the traffic probe's services
	cp         *kube.ControlPlane
	procs      []*process
	observers  []*observer
	clusterIPs []netip.Addr // of generated service i, as the API server allocated them
}

// side is one implementation under test.
type side struct {
	impl string
	ns   string
	proc *process
	obs  *observer
	res  AgainstResult
}

func (l *againstLab) run(ctx context.Context) (res []AgainstResult, err error) {
	if err := os.MkdirAll(filepath.Join(l.dir, "kube"), 0o755); err != nil {
		return nil, err
	}
	defer func() {
		if cerr := l.close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
		if err != nil {
			err = fmt.Errorf("%w\n%s", err, l.logTails())
		}
	}()
	api, kp, na := l.prefix+"a", l.prefix+"k", l.prefix+"n"
	if err := l.network(ctx, api, kp, na); err != nil {
		return nil, err
	}
	begin := time.Now()
	cp, err := kube.Start(ctx, kube.Options{NetNS: api, Address: againstRouter, BinDir: l.o.KubeBinDir,
		Etcd: l.o.Etcd, Dir: filepath.Join(l.dir, "kube"), Logger: l.o.Log})
	if err != nil {
		return nil, err
	}
	l.cp = cp
	l.o.Log.Debug("control plane ready", "took", time.Since(begin))
	client := cp.Client
	if err := setupObjects(ctx, client); err != nil {
		return nil, err
	}

	sides := []*side{{impl: ImplNodeagent, ns: na}, {impl: ImplKubeProxy, ns: kp}}
	for _, s := range sides {
		s.res = AgainstResult{Impl: s.impl, Mode: l.mode, Services: l.services, EndpointsPerService: l.o.EndpointsPerService}
		if s.obs, err = l.startObserver(s.impl, s.ns); err != nil {
			return nil, err
		}
	}
	sides[0].proc, err = l.start("nodeagent", na, l.o.Nodeagent, "run", "--kubeconfig", cp.Kubeconfig,
		"--proxy-mode", l.mode, "--hostname-override", nodeagentNode, "--cluster-cidr", "10.244.0.0/16",
		"--healthz-bind-address", "127.0.0.1:10256", "--metrics-bind-address", "127.0.0.1:10249", "--profiling")
	if err != nil {
		return nil, err
	}
	kpArgs := []string{filepath.Join(l.o.KubeBinDir, "kube-proxy"),
		"--kubeconfig", cp.Kubeconfig, "--proxy-mode", l.mode, "--hostname-override", kubeProxyNode,
		"--cluster-cidr", "10.244.0.0/16",
		// Inside a namespace the global conntrack table size is read-only; 0 leaves it (and the
		// TCP timeouts) alone.
		"--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0", "--conntrack-tcp-timeout-close-wait=0",
		"--healthz-bind-address", "127.0.0.1:10256", "--metrics-bind-address", "127.0.0.1:10249"}
	sides[1].proc, err = l.start("kube-proxy", kp, append(kpArgs, l.o.KubeProxyArgs...)...)
	if err != nil {
		return nil, err
	}
	// Both up and synced (empty) before the clock starts.
	if err := l.waitAll(ctx, sides, time.Time{}, 2*time.Minute, func(s *side) (request, error) {
		return ReadyProbe(s.impl, l.mode)
	}, nil); err != nil {
		return nil, fmt.Errorf("proxies starting: %w", err)
	}
	l.o.Log.Debug("both proxies synced", "after", time.Since(begin))

	if l.o.TrafficSamples > 0 || l.o.DatapathDuration > 0 {
		if err := l.startPods(ctx, sides); err != nil {
			return nil, err
		}
	}
	if l.o.TrafficSamples > 0 {
		if err := l.createProbeServices(ctx, client, l.o.EndpointsPerService); err != nil {
			return nil, err
		}
	}
	if err := l.measureCreate(ctx, client, sides); err != nil {
		return nil, err
	}
	for _, s := range sides {
		cpu, _, err := s.proc.usage()
		if err != nil {
			return nil, err
		}
		s.res.CPUCreateSecs = cpu
	}
	if err := l.measureChanges(ctx, client, sides); err != nil {
		return nil, err
	}
	if l.o.TrafficSamples > 0 {
		if err := l.measureTraffic(ctx, client, sides); err != nil {
			return nil, err
		}
	}
	if l.o.DatapathDuration > 0 {
		if err := l.measureDatapath(ctx, sides); err != nil {
			return nil, err
		}
	}
	for _, s := range sides {
		if s.res.CPUSeconds, s.res.PeakRSSMB, err = s.proc.usage(); err != nil {
			return nil, err
		}
		if s.res.KernelObjects, err = countKernelObjects(ctx, s.ns, s.impl, l.mode); err != nil {
			l.o.Log.Warn("count kernel objects", "implementation", s.impl, "err", err)
		}
		res = append(res, s.res)
	}
	return res, nil
}

// network makes the lab: a bridge with the router address in the API server's namespace, and a
// veth from it into each node namespace. Every link is created inside the lab's namespaces.
func (l *againstLab) network(ctx context.Context, api, kp, na string) error {
	steps := [][]string{}
	for _, ns := range []string{api, kp, na} {
		steps = append(steps, []string{"netns", "add", ns}, []string{"-n", ns, "link", "set", "lo", "up"})
	}
	steps = append(steps,
		[]string{"-n", api, "link", "add", "br0", "type", "bridge"},
		[]string{"-n", api, "addr", "add", againstRouter.String() + "/24", "dev", "br0"},
		[]string{"-n", api, "link", "set", "br0", "up"})
	for i, n := range []struct {
		ns   string
		addr netip.Addr
	}{{kp, againstKubeProxy}, {na, againstNodeagent}} {
		port := fmt.Sprintf("port%d", i)
		steps = append(steps,
			[]string{"-n", api, "link", "add", port, "type", "veth", "peer", "name", "ens33", "netns", n.ns},
			[]string{"-n", api, "link", "set", port, "master", "br0"},
			[]string{"-n", api, "link", "set", port, "up"},
			[]string{"-n", n.ns, "addr", "add", n.addr.String() + "/24", "dev", "ens33"},
			[]string{"-n", n.ns, "link", "set", "ens33", "up"})
	}
	for _, s := range steps {
		if s[0] == "netns" && s[1] == "add" {
			l.namespaces = append(l.namespaces, s[2])
		}
		if out, err := exec.CommandContext(ctx, "ip", s...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %w: %s", strings.Join(s, " "), err, bytes.TrimSpace(out))
		}
	}
	return nil
}

// setupObjects creates the benchmark namespace and the two Node objects (kube-proxy reads its
// node's addresses from it).
func setupObjects(ctx context.Context, c kubernetes.Interface) error {
	if _, err := c.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: Namespace}},
		metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create namespace %s: %w", Namespace, err)
	}
	for name, addr := range map[string]netip.Addr{kubeProxyNode: againstKubeProxy, nodeagentNode: againstNodeagent} {
		node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/hostname": name}},
			Status: v1.NodeStatus{Addresses: []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: addr.String()},
				{Type: v1.NodeHostName, Address: name}}}}
		created, err := c.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create node %s: %w", name, err)
		}
		// Status is a subresource: the create dropped it.
		created.Status = node.Status
		if _, err := c.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("node %s status: %w", name, err)
		}
	}
	return nil
}

// apiService is generated service i without a fixed cluster IP: the API server allocates it (the
// generator's fixed addresses start at the one the "kubernetes" service holds).
func apiService(i int) *v1.Service {
	s := Service(i)
	s.Spec.ClusterIP, s.Spec.ClusterIPs = "", nil
	return s
}

// measureCreate writes services 0..N-2 and their slices with parallel writers, then service
// N-1 and its slice, and times until each kernel has service N-1's last endpoint.
func (l *againstLab) measureCreate(ctx context.Context, c kubernetes.Interface, sides []*side) error {
	n, e := l.services, l.o.EndpointsPerService
	last := Endpoints(n-1, e)
	l.clusterIPs = make([]netip.Addr, n)
	lastCreated := make(chan struct{})
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	waitErr := make(chan error, 1)
	start := time.Now()
	var lastWrite time.Time
	var seen sync.Map
	go func() {
		waitErr <- l.waitAll(ctx, sides, start, l.o.CreateTimeout, func(s *side) (request, error) {
			// Known once the last service is written, which is before its slice is.
			select {
			case <-lastCreated:
			case <-ctx.Done():
				return Probe{}, ctx.Err()
			}
			return EndpointProbe(s.impl, l.mode, n-1, l.clusterIPs[n-1], e, netip.AddrPortFrom(last[len(last)-1], 8080))
		}, func(s *side, o observation) { seen.Store(s, o.at) })
	}()
	err := func() error {
		work := make(chan int)
		errs := make(chan error, l.o.Writers)
		var wg sync.WaitGroup
		for range l.o.Writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range work {
					if err := l.createService(ctx, c, i, e); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
	feed:
		for i := range n - 1 {
			select {
			case work <- i:
			case err := <-errs:
				close(work)
				wg.Wait()
				return err
			case <-ctx.Done():
				break feed
			}
		}
		close(work)
		wg.Wait()
		select {
		case err := <-errs:
			return err
		default:
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		lastWrite = time.Now()
		return l.createService(ctx, c, n-1, e, lastCreated)
	}()
	if err != nil {
		return fmt.Errorf("create objects: %w", err)
	}
	created := time.Now()
	l.o.Log.Info("objects created through the API", "services", n, "slices", n, "took", created.Sub(start).Round(time.Millisecond))
	if err := <-waitErr; err != nil {
		return fmt.Errorf("last created service: %w", err)
	}
	for _, s := range sides {
		v, _ := seen.Load(s)
		t := v.(time.Time)
		s.res.CreateMs = ms(created.Sub(start))
		s.res.FirstSyncMs = ms(t.Sub(start))
		s.res.LastLagMs = ms(t.Sub(lastWrite))
		l.o.Log.Info("last created service in the kernel", "implementation", s.impl,
			"afterFirstWrite", t.Sub(start).Round(time.Millisecond), "afterLastWrite", t.Sub(lastWrite).Round(time.Millisecond))
	}
	return nil
}

// createService creates generated service i and its slice, retrying what an overloaded API
// server refuses for a while.
// The cluster IP the API server gave it goes into l.clusterIPs, and service closes
// whatever channels are given once it is known.
func (l *againstLab) createService(ctx context.Context, c kubernetes.Interface, i, e int, service ...chan struct{}) error {
	try := func(f func() error) error {
		var err error
		for attempt := range 8 {
			if err = f(); err == nil || apierrors.IsAlreadyExists(err) {
				return nil
			}
			if ctx.Err() != nil || !(apierrors.IsServerTimeout(err) || apierrors.IsTooManyRequests(err) ||
				apierrors.IsTimeout(err) || apierrors.IsInternalError(err) || apierrors.IsServiceUnavailable(err)) {
				return err
			}
			time.Sleep(time.Duration(50<<attempt) * time.Millisecond)
		}
		return err
	}
	if err := try(func() error {
		svc, err := c.CoreV1().Services(Namespace).Create(ctx, apiService(i), metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			// A retried create that had gone through.
			svc, err = c.CoreV1().Services(Namespace).Get(ctx, ServiceName(i), metav1.GetOptions{})
		}
		if err == nil {
			l.clusterIPs[i], _ = netip.ParseAddr(svc.Spec.ClusterIP)
		}
		return err
	}); err != nil {
		return fmt.Errorf("service %s: %w", ServiceName(i), err)
	}
	for _, ch := range service {
		close(ch)
	}
	if err := try(func() error {
		_, err := c.DiscoveryV1().EndpointSlices(Namespace).Create(ctx, Slice(i, Endpoints(i, e)), metav1.CreateOptions{})
		return err
	}); err != nil {
		return fmt.Errorf("endpoint slice of %s: %w", ServiceName(i), err)
	}
	return nil
}

// measureChanges replaces one endpoint address of one random slice at a time and times until
// each kernel has the new endpoint.
func (l *againstLab) measureChanges(ctx context.Context, c kubernetes.Interface, sides []*side) error {
	n, e := l.services, l.o.EndpointsPerService
	rng := rand.New(rand.NewPCG(7, 11))
	next := n * e
	lat := map[*side][]time.Duration{}
	events, stopWatch, err := watchSlices(ctx, c)
	if err != nil {
		return err
	}
	defer stopWatch()
	var floor []time.Duration
	for k := range l.o.Changes {
		// Before every change, the first one too: the create phase has just made both sync.
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(l.o.ChangeGap):
		}
		i := rng.IntN(n)
		slice, err := c.DiscoveryV1().EndpointSlices(Namespace).Get(ctx, ServiceName(i)+"-1", metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("change %d: %w", k, err)
		}
		j := rng.IntN(len(slice.Endpoints))
		addr := nth(endpointBase, next)
		next++
		slice.Endpoints[j].Addresses = []string{addr.String()}
		ep := netip.AddrPortFrom(addr, 8080)
		// The observers poll from before the write, so nothing that lands quickly is missed.
		t0 := time.Now()
		waitErr := make(chan error, 1)
		var mu sync.Mutex
		go func() {
			waitErr <- l.waitAll(ctx, sides, t0, l.o.ChangeTimeout, func(s *side) (request, error) {
				return EndpointProbe(s.impl, l.mode, i, l.clusterIPs[i], e, ep)
			}, func(s *side, o observation) {
				mu.Lock()
				lat[s] = append(lat[s], o.at.Sub(t0))
				mu.Unlock()
			})
		}()
		updated, err := c.DiscoveryV1().EndpointSlices(Namespace).Update(ctx, slice, metav1.UpdateOptions{})
		if err != nil {
			// The observers are left waiting; the lab is torn down with them.
			return fmt.Errorf("change %d: update slice %s: %w", k, slice.Name, err)
		}
		if err := <-waitErr; err != nil {
			return fmt.Errorf("change %d (%s of %s): %w", k, addr, ServiceName(i), err)
		}
		if at, ok := events.seen(updated.ResourceVersion); ok {
			floor = append(floor, at.Sub(t0))
		}
		if k%20 == 19 {
			l.o.Log.Debug("changes", "done", k+1)
		}
	}
	for _, s := range sides {
		d := lat[s]
		s.res.Changes = len(d)
		s.res.ChangeP50Ms, s.res.ChangeP99Ms, s.res.ChangeMaxMs = ms(pct(d, 50)), ms(pct(d, 99)), ms(pct(d, 100))
		s.res.WatchP50Ms, s.res.WatchP99Ms = ms(pct(floor, 50)), ms(pct(floor, 99))
	}
	return nil
}

// sliceEvents records when each EndpointSlice resourceVersion arrived on a watch.
type sliceEvents struct {
	mu sync.Mutex
	at map[string]time.Time
}

func (e *sliceEvents) seen(rv string) (time.Time, bool) {
	// The event may trail the observers by a little; it is the floor, so it is never later
	// than both by much.
	for range 100 {
		e.mu.Lock()
		t, ok := e.at[rv]
		e.mu.Unlock()
		if ok {
			return t, true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Time{}, false
}

// watchSlices watches the benchmark's EndpointSlices from now on, as an informer would.
func watchSlices(ctx context.Context, c kubernetes.Interface) (*sliceEvents, func(), error) {
	list, err := c.DiscoveryV1().EndpointSlices(Namespace).List(ctx, metav1.ListOptions{Limit: 1})
	if err != nil {
		return nil, nil, fmt.Errorf("list endpoint slices: %w", err)
	}
	w, err := c.DiscoveryV1().EndpointSlices(Namespace).Watch(ctx, metav1.ListOptions{ResourceVersion: list.ResourceVersion})
	if err != nil {
		return nil, nil, fmt.Errorf("watch endpoint slices: %w", err)
	}
	e := &sliceEvents{at: map[string]time.Time{}}
	go func() {
		for ev := range w.ResultChan() {
			now := time.Now()
			if s, ok := ev.Object.(*discovery.EndpointSlice); ok {
				e.mu.Lock()
				e.at[s.ResourceVersion] = now
				e.mu.Unlock()
			}
		}
	}()
	return e, w.Stop, nil
}

// waitAll asks every side's observer for probe(side) and waits for all answers; seen gets each
// side's time. A zero since means no time is kept.
func (l *againstLab) waitAll(ctx context.Context, sides []*side, since time.Time, timeout time.Duration,
	probe func(*side) (request, error), seen func(*side, observation)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	errs := make(chan error, len(sides))
	for _, s := range sides {
		ref, err := probe(s)
		if err != nil {
			return err
		}
		ch, err := s.obs.wait(ref)
		if err != nil {
			return fmt.Errorf("%s: %w", s.impl, err)
		}
		go func() {
			select {
			case r := <-ch:
				if r.err != nil {
					errs <- fmt.Errorf("%s: %w", s.impl, r.err)
					return
				}
				if seen != nil {
					seen(s, r)
				}
				errs <- nil
			case <-ctx.Done():
				msg := "exited"
				if !s.proc.exited() {
					msg = "still running"
				}
				errs <- fmt.Errorf("%s (%s): %s not in the kernel after %v: %w", s.impl, msg, ref, timeout, ctx.Err())
			}
		}()
	}
	var all []error
	for range sides {
		all = append(all, <-errs)
	}
	return errors.Join(all...)
}

// close stops every process by PID, the control plane, and deletes the namespaces. It runs also
// after a failure or a cancelled context.
func (l *againstLab) close() error {
	var errs []error
	begin := time.Now()
	// Observers end when their requests do; every process gets its grace period at once.
	for _, o := range l.observers {
		_ = o.in.Close()
	}
	for _, ln := range l.listeners {
		_ = ln.Close()
	}
	stopErrs := make(chan error, len(l.procs))
	for _, p := range l.procs {
		go func() { stopErrs <- p.stop(10 * time.Second) }()
	}
	for range l.procs {
		errs = append(errs, <-stopErrs)
	}
	l.o.Log.Debug("proxies and observers stopped", "took", time.Since(begin))
	if l.cp != nil {
		errs = append(errs, l.cp.Stop())
	}
	l.o.Log.Debug("control plane stopped", "took", time.Since(begin))
	for _, ns := range l.namespaces {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("ip netns del %s: %w: %s", ns, err, bytes.TrimSpace(out)))
		}
	}
	return errors.Join(errs...)
}

func (l *againstLab) logTails() string {
	var b strings.Builder
	for _, p := range l.procs {
		if p.logPath != "" {
			data, _ := os.ReadFile(p.logPath)
			fmt.Fprintf(&b, "--- last lines of %s:\n%s\n", p.name, lastLines(data, 15))
		}
	}
	return b.String()
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// process is a program this benchmark started inside a lab namespace (ip netns exec execs in
// place, so the PID is the program's own) and stops by that PID.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error
}

// start runs argv in namespace ns with its output in name.log.
func (l *againstLab) start(name, ns string, argv ...string) (*process, error) {
	logPath := filepath.Join(l.dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	p, err := l.spawn(name, ns, argv, func(cmd *exec.Cmd) { cmd.Stdout, cmd.Stderr = f, f })
	if p != nil {
		p.logPath = logPath
	}
	return p, err
}

func (l *againstLab) spawn(name, ns string, argv []string, setup func(*exec.Cmd)) (*process, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...)
	setup(cmd)
	// Killed with this process if it dies without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	l.procs = append(l.procs, p)
	l.o.Log.Debug("started", "name", name, "pid", cmd.Process.Pid, "netns", ns)
	return p, nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, then SIGKILL after grace, to the process's PID and waits for it.
func (p *process) stop(grace time.Duration) error {
	if p.exited() {
		return nil
	}
	pid := p.cmd.Process.Pid
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("stop %s: %w", p.name, err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill %s: %w", p.name, err)
	}
	<-p.done
	return nil
}

// usage reads the process's CPU time so far (user + system, /proc/PID/stat) and its peak
// resident set (VmHWM).
func (p *process) usage() (cpuSeconds, peakMB float64, err error) {
	if p.exited() {
		return 0, 0, fmt.Errorf("%s exited: %v", p.name, p.err)
	}
	pid := strconv.Itoa(p.cmd.Process.Pid)
	stat, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0, 0, fmt.Errorf("%s: %w", p.name, err)
	}
	// The command name may hold spaces; the fields after its closing parenthesis do not.
	f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("%s: short /proc/%s/stat", p.name, pid)
	}
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	// USER_HZ, the unit of these fields, is 100 on every Linux architecture.
	cpuSeconds = (utime + stime) / 100
	status, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return 0, 0, fmt.Errorf("%s: %w", p.name, err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if fs := strings.Fields(line); len(fs) >= 2 && fs[0] == "VmHWM:" {
			kb, _ := strconv.ParseFloat(fs[1], 64)
			peakMB = kb / 1024
		}
	}
	return cpuSeconds, peakMB, nil
}

// observer is a `nodeagent bench --observe` child in one proxy's namespace.
type observer struct {
	p       *process
	in      io.WriteCloser
	mu      sync.Mutex
	nextID  int
	pending map[string]chan observation
}

type observation struct {
	at  time.Time
	err error
	// rest are the answer's fields after the time (a traffic probe's counts).
	rest []string
}

// request is what an observer can be asked to wait for: a Probe of the kernel or a TrafficProbe.
type request interface {
	request(id string) string
	String() string
}

func (l *againstLab) startObserver(impl, ns string) (*observer, error) {
	o := &observer{pending: map[string]chan observation{}}
	var stdout io.ReadCloser
	errLog, err := os.Create(filepath.Join(l.dir, "observe-"+impl+".log"))
	if err != nil {
		return nil, err
	}
	defer errLog.Close()
	p, err := l.spawn("observer of "+impl, ns, []string{l.o.Nodeagent, "bench", "--observe"}, func(cmd *exec.Cmd) {
		o.in, _ = cmd.StdinPipe()
		stdout, _ = cmd.StdoutPipe()
		cmd.Stderr = errLog
	})
	if err != nil {
		return nil, err
	}
	o.p = p
	l.observers = append(l.observers, o)
	go o.read(stdout)
	return o, nil
}

// read dispatches the observer's answers to the waiting requests.
func (o *observer) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		id, rest, _ := strings.Cut(sc.Text(), " ")
		var obs observation
		if msg, ok := strings.CutPrefix(rest, "error "); ok {
			obs.err = errors.New(msg)
		} else if f := strings.Fields(rest); len(f) > 0 {
			ns, err := strconv.ParseInt(f[0], 10, 64)
			obs.at, obs.rest = time.Unix(0, ns), f[1:]
			if err != nil {
				obs.err = fmt.Errorf("observer answered %q", sc.Text())
			}
		} else {
			obs.err = fmt.Errorf("observer answered %q", sc.Text())
		}
		o.mu.Lock()
		ch := o.pending[id]
		delete(o.pending, id)
		o.mu.Unlock()
		if ch != nil {
			ch <- obs
		}
	}
}

// wait asks the observer to report when ref holds.
func (o *observer) wait(ref request) (<-chan observation, error) {
	if o.p.exited() {
		return nil, fmt.Errorf("kernel observer exited: %v", o.p.err)
	}
	o.mu.Lock()
	o.nextID++
	id := strconv.Itoa(o.nextID)
	ch := make(chan observation, 1)
	o.pending[id] = ch
	o.mu.Unlock()
	if _, err := fmt.Fprintln(o.in, ref.request(id)); err != nil {
		return nil, fmt.Errorf("ask kernel observer: %w", err)
	}
	return ch, nil
}

// countKernelObjects counts what impl programmed in ns (IPv4): iptables rules and chains named
// with its prefix, or rules, chains, sets and elements of its nftables table.
func countKernelObjects(ctx context.Context, ns, impl, mode string) (int, error) {
	if mode == "iptables" {
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "iptables-save").Output()
		if err != nil {
			return 0, fmt.Errorf("iptables-save: %w", err)
		}
		prefix := "NA-"
		if impl == ImplKubeProxy {
			prefix = "KUBE-"
		}
		n := 0
		for _, line := range bytes.Split(out, []byte("\n")) {
			if bytes.HasPrefix(line, []byte(":"+prefix)) || bytes.HasPrefix(line, []byte("-A "+prefix)) ||
				(bytes.HasPrefix(line, []byte("-A ")) && bytes.Contains(line, []byte("-j "+prefix))) {
				n++
			}
		}
		return n, nil
	}
	table := "nodeagent"
	if impl == ImplKubeProxy {
		table = "kube-proxy"
	}
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "nft", "-j", "list", "table", "ip", table).Output()
	if err != nil {
		return 0, fmt.Errorf("nft list table ip %s: %w", table, err)
	}
	return countNft(out)
}
