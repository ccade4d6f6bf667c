package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"nodeagent/test/kube"
)

// The traffic lab: behind each node namespace a pods namespace that answers on every address of
// the pod network, reached over a veth; the node routes the pod and service networks there, so
// that a connection to a cluster IP is routed, translated by the proxy, and answered by a "pod".
var (
	podNet        = netip.MustParsePrefix("10.244.0.0/16")
	podLinkNode   = netip.MustParsePrefix("10.245.0.1/30")
	podLinkPods   = netip.MustParsePrefix("10.245.0.2/30")
	firstEndpoint = netip.MustParseAddr("10.244.1.0")   // case (a): sample k's endpoint is +k+1
	workingBase   = netip.MustParseAddr("10.244.2.0")   // case (b): service k's endpoints
	replacement   = netip.MustParseAddr("10.244.128.0") // case (b): sample k's new endpoint is +k+1
)

// Names of the probed services: case (a) services start without endpoints, case (b) services
// with EndpointsPerService pods.
func firstEndpointService(k int) string { return fmt.Sprintf("probe-first-%02d", k) }
func replaceService(k int) string       { return fmt.Sprintf("probe-replace-%02d", k) }

// workingEndpoints are case (b) service k's initial endpoints.
func workingEndpoints(k, n int) []netip.Addr {
	out := make([]netip.Addr, n)
	for j := range out {
		out[j] = nth(workingBase, k*n+j+1)
	}
	return out
}

// podsNetwork returns the `ip` steps that give node namespace node its pods namespace pods.
func podsNetwork(node, pods string) [][]string {
	return [][]string{
		{"netns", "add", pods},
		{"-n", pods, "link", "set", "lo", "up"},
		{"-n", node, "link", "add", "pods", "type", "veth", "peer", "name", "eth0", "netns", pods},
		{"-n", node, "addr", "add", podLinkNode.String(), "dev", "pods"},
		{"-n", node, "link", "set", "pods", "up"},
		{"-n", pods, "addr", "add", podLinkPods.String(), "dev", "eth0"},
		{"-n", pods, "link", "set", "eth0", "up"},
		// Every pod address is local to the pods namespace (one listener answers them all).
		{"-n", pods, "route", "add", "local", podNet.String(), "dev", "lo"},
		{"-n", node, "route", "add", podNet.String(), "via", podLinkPods.Addr().String()},
		// A cluster IP must be routable before the proxy translates it.
		{"-n", node, "route", "add", kube.ServiceCIDR, "via", podLinkPods.Addr().String()},
	}
}

// startPods makes each side's pods namespace and its listener.
func (l *againstLab) startPods(ctx context.Context, sides []*side) error {
	for _, s := range sides {
		pods := s.ns + "p"
		for _, st := range podsNetwork(s.ns, pods) {
			if st[0] == "netns" && st[1] == "add" {
				l.namespaces = append(l.namespaces, st[2])
			}
			if out, err := exec.CommandContext(ctx, "ip", st...).CombinedOutput(); err != nil {
				return fmt.Errorf("ip %s: %w: %s", strings.Join(st, " "), err, bytes.TrimSpace(out))
			}
		}
		ln, err := listenIn(pods, "0.0.0.0:8080")
		if err != nil {
			return err
		}
		l.listeners = append(l.listeners, ln)
		go servePods(ln)
	}
	return nil
}

// createProbeServices creates the probed services: case (a) ones without a slice, case (b) ones
// with a slice of e pods. They are created before the bulk, so that the bulk's last service in a
// kernel shows they are programmed too.
func (l *againstLab) createProbeServices(ctx context.Context, c kubernetes.Interface, e int) error {
	l.probeIPs = map[string]netip.Addr{}
	for k := range l.o.TrafficSamples {
		for _, name := range []string{firstEndpointService(k), replaceService(k)} {
			svc := namedService(name)
			svc.Spec.ClusterIP, svc.Spec.ClusterIPs = "", nil
			got, err := c.CoreV1().Services(Namespace).Create(ctx, svc, metav1.CreateOptions{})
			if err != nil {
				return fmt.Errorf("create probed service %s: %w", name, err)
			}
			if l.probeIPs[name], err = netip.ParseAddr(got.Spec.ClusterIP); err != nil {
				return fmt.Errorf("probed service %s: cluster IP %q", name, got.Spec.ClusterIP)
			}
		}
		if _, err := c.DiscoveryV1().EndpointSlices(Namespace).Create(ctx,
			namedSlice(replaceService(k), workingEndpoints(k, e)), metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create slice of %s: %w", replaceService(k), err)
		}
	}
	return nil
}

// measureTraffic times, for every sample, (a) a service's first endpoint and (b) one endpoint
// replaced in a working service: from the moment the API write returned to the first connection
// through the service answered by the new endpoint, seen by a client that runs in each node
// namespace from before the write.
func (l *againstLab) measureTraffic(ctx context.Context, c kubernetes.Interface, sides []*side) error {
	e := l.o.EndpointsPerService
	first, replaced := map[*side][]time.Duration{}, map[*side][]time.Duration{}
	for k := range l.o.TrafficSamples {
		// (a) The service had no endpoint: connections were rejected.
		name := firstEndpointService(k)
		want := nth(firstEndpoint, k+1)
		probe := TrafficProbe{Target: netip.AddrPortFrom(l.probeIPs[name], 80), Want: want, Parallel: 2,
			After: 20 * time.Millisecond, Timeout: l.o.ChangeTimeout}
		if err := l.trafficSample(ctx, sides, probe, first, func() error {
			_, err := c.DiscoveryV1().EndpointSlices(Namespace).Create(ctx, namedSlice(name, []netip.Addr{want}), metav1.CreateOptions{})
			return err
		}); err != nil {
			return fmt.Errorf("first endpoint of %s: %w", name, err)
		}
		// (b) One of e working endpoints replaced: every attempt is answered, by the new one
		// once the proxy has it, and never again by the old one after that.
		name = replaceService(k)
		old := workingEndpoints(k, e)
		nu := append([]netip.Addr{nth(replacement, k+1)}, old[1:]...)
		probe = TrafficProbe{Target: netip.AddrPortFrom(l.probeIPs[name], 80), Want: nu[0], Stale: old[0],
			Parallel: min(max(e, 1), 16), After: 50 * time.Millisecond, Timeout: l.o.ChangeTimeout}
		if err := l.trafficSample(ctx, sides, probe, replaced, func() error {
			s, err := c.DiscoveryV1().EndpointSlices(Namespace).Get(ctx, name+"-1", metav1.GetOptions{})
			if err != nil {
				return err
			}
			s.Endpoints = namedSlice(name, nu).Endpoints
			_, err = c.DiscoveryV1().EndpointSlices(Namespace).Update(ctx, s, metav1.UpdateOptions{})
			return err
		}); err != nil {
			return fmt.Errorf("endpoint replaced in %s: %w", name, err)
		}
	}
	for _, s := range sides {
		s.res.FirstEndpoint = summarize(first[s])
		s.res.Replaced = summarize(replaced[s])
	}
	return nil
}

// trafficSample runs one write with both sides' traffic probes around it and appends each side's
// latency (first answer by the new endpoint − the moment the write returned; 0 if it came
// earlier) to lat.
func (l *againstLab) trafficSample(ctx context.Context, sides []*side, probe TrafficProbe,
	lat map[*side][]time.Duration, write func() error) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(l.o.ChangeGap):
	}
	var mu sync.Mutex
	got := map[*side]TrafficResult{}
	waitErr := make(chan error, 1)
	go func() {
		waitErr <- l.waitAll(ctx, sides, time.Now(), probe.Timeout+10*time.Second, func(*side) (request, error) {
			return probe, nil
		}, func(s *side, o observation) {
			r, err := parseTrafficAnswer(o.at, o.rest)
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				got[s] = r
			}
		})
	}()
	err := write()
	returned := time.Now()
	if err != nil {
		return fmt.Errorf("API write: %w", err)
	}
	if err := <-waitErr; err != nil {
		return err
	}
	var errs []error
	for _, s := range sides {
		r, ok := got[s]
		if !ok {
			errs = append(errs, fmt.Errorf("%s: unreadable traffic answer", s.impl))
			continue
		}
		lat[s] = append(lat[s], max(r.First.Sub(returned), 0))
		s.res.TrafficAttempts += r.Attempts
		s.res.StaleAnswers += r.StaleAfter
	}
	return errors.Join(errs...)
}

// Latencies summarizes samples in milliseconds.
type Latencies struct {
	Samples int     `json:"samples"`
	P50Ms   float64 `json:"p50Ms"`
	P90Ms   float64 `json:"p90Ms"`
	MaxMs   float64 `json:"maxMs"`
}

func summarize(d []time.Duration) Latencies {
	return Latencies{Samples: len(d), P50Ms: ms(pct(d, 50)), P90Ms: ms(pct(d, 90)), MaxMs: ms(pct(d, 100))}
}

// listenIn listens on addr inside the named namespace: the socket is made by a thread that enters
// the namespace only for that call (a socket keeps the namespace it was made in).
func listenIn(ns, addr string) (net.Listener, error) {
	var ln net.Listener
	err := inNetns(ns, func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen in %s: %w", ns, err)
	}
	return ln, nil
}

// namedService is a ClusterIP service called name on port 80 (target port 8080).
func namedService(name string) *v1.Service {
	s := Service(0)
	s.Name = name
	return s
}
