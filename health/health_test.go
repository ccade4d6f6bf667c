package health

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"nodeagent/proxier"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func serve(h http.Handler, path string) (int, http.Header, string) {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
	return rec.Code, rec.Header(), rec.Body.String()
}

func TestProxyHealth(t *testing.T) {
	now := time.Unix(1000, 0)
	p := NewProxy(time.Minute)
	p.now = func() time.Time { return now }
	if ok, _ := p.Healthy(); ok {
		t.Fatal("healthy before the first sync")
	}
	p.Synced(now)
	if ok, _ := p.Healthy(); !ok {
		t.Fatal("unhealthy after a sync")
	}
	now = now.Add(time.Second)
	p.Queued()
	now = now.Add(59 * time.Second)
	if ok, _ := p.Healthy(); !ok {
		t.Fatal("unhealthy with a change queued for 59s of 60")
	}
	now = now.Add(time.Second)
	if code, _, _ := serve(p, "/healthz"); code != http.StatusServiceUnavailable {
		t.Fatalf("change queued for the whole timeout: code %d", code)
	}
	p.Synced(now)
	code, _, body := serve(p, "/healthz")
	if code != http.StatusOK || !strings.Contains(body, `"lastUpdated"`) {
		t.Fatalf("after sync: %d %s", code, body)
	}
	// No change queued, but no successful sync for longer than the timeout either (the periodic
	// resync keeps failing): unhealthy.
	now = now.Add(61 * time.Second)
	if ok, _ := p.Healthy(); ok {
		t.Fatal("healthy with the last successful sync 61s old")
	}
}

// /healthz and /livez answer as kube-proxy v1.34's: JSON with lastUpdated (now while healthy),
// currentTime and, for /healthz only, nodeEligible; a node being deleted fails /healthz but not
// /livez; each answer is counted by code.
func TestHealthzLivez(t *testing.T) {
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	p := NewProxy(time.Minute)
	p.now = func() time.Time { return now }
	m := NewMetrics()
	m.AddProxyHealth(p)
	synced := now
	p.Synced(synced)
	now = now.Add(10 * time.Second)

	decode := func(s string) map[string]any {
		var out map[string]any
		if err := json.Unmarshal([]byte(s), &out); err != nil {
			t.Fatalf("body %q: %v", s, err)
		}
		return out
	}
	code, hdr, body := serve(p, "/healthz")
	got := decode(body)
	if code != 200 || hdr.Get("Content-Type") != "application/json" || hdr.Get("X-Content-Type-Options") != "nosniff" ||
		got["healthy"] != true || got["nodeEligible"] != true ||
		got["currentTime"] != "2025-01-02T03:04:15Z" || got["lastUpdated"] != "2025-01-02T03:04:15Z" {
		t.Errorf("healthy /healthz: %d %v %s", code, hdr, body)
	}
	for _, n := range []*v1.Node{
		{ObjectMeta: metav1.ObjectMeta{Name: "node01", DeletionTimestamp: &metav1.Time{Time: now}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "node01"}, Spec: v1.NodeSpec{Taints: []v1.Taint{{Key: "other", Effect: v1.TaintEffectNoSchedule}, {Key: ToBeDeletedTaint, Effect: v1.TaintEffectNoSchedule}}}},
	} {
		p.SetNodeEligible(NodeEligible(n))
		code, _, body = serve(p, "/healthz")
		if got := decode(body); code != 503 || got["nodeEligible"] != false || got["healthy"] != true {
			t.Errorf("/healthz of a node leaving: %d %s", code, body)
		}
		code, _, body = serve(p.Livez(), "/livez")
		if got := decode(body); code != 200 || got["nodeEligible"] != nil || got["healthy"] != true {
			t.Errorf("/livez of a node leaving: %d %s", code, body)
		}
	}
	p.SetNodeEligible(NodeEligible(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node01"}}))
	if code, _, _ := serve(p, "/healthz"); code != 200 {
		t.Errorf("/healthz of an eligible node again: %d", code)
	}
	// Unhealthy proxy: both fail; lastUpdated is the last sync.
	p.Queued()
	now = now.Add(2 * time.Minute)
	code, _, body = serve(p.Livez(), "/livez")
	if got := decode(body); code != 503 || got["healthy"] != false || got["lastUpdated"] != "2025-01-02T03:04:05Z" {
		t.Errorf("/livez of an unhealthy proxy: %d %s", code, body)
	}
	_, _, metrics := serve(m.Handler(), "/metrics")
	for _, want := range []string{
		`kubeproxy_proxy_healthz_total{code="200"} 2`,
		`kubeproxy_proxy_healthz_total{code="503"} 2`,
		`kubeproxy_proxy_livez_total{code="200"} 2`,
		`kubeproxy_proxy_livez_total{code="503"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// fakeListen records where the services listen and listens on loopback instead.
type fakeListen struct {
	mu    sync.Mutex
	addrs map[uint16]string   // port -> real address of the latest listener
	hosts map[uint16][]string // port -> hosts asked for, in order
}

func newFakeListen(s *Services) *fakeListen {
	f := &fakeListen{addrs: map[uint16]string{}, hosts: map[uint16][]string{}}
	s.listen = func(host string, port uint16) (net.Listener, error) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		f.addrs[port] = ln.Addr().String()
		f.hosts[port] = append(f.hosts[port], host)
		return ln, nil
	}
	return f
}

func (f *fakeListen) addr(port uint16) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.addrs[port]
}

func get(t *testing.T, addr string) (int, http.Header, string) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

var demo = types.NamespacedName{Namespace: "default", Name: "demoapp-lb"}

func ep(addr string, port uint16, local, ready bool) proxier.Endpoint {
	return proxier.Endpoint{Addr: netip.MustParseAddr(addr), Port: port, Local: local, Ready: ready, Serving: true, Terminating: !ready}
}

// hcPort is a service port of demo with health-check node port 31999. Its LocalEndpoints are
// the local endpoints as the model chooses them: the ready ones, or when none is ready the
// serving-terminating ones (which the old count took for ready).
func hcPort(port string, f proxier.Family, eps ...proxier.Endpoint) *proxier.ServicePort {
	var ready, fallback []proxier.Endpoint
	for _, e := range eps {
		switch {
		case e.Local && e.Ready:
			ready = append(ready, e)
		case e.Local && e.Serving:
			fallback = append(fallback, e)
		}
	}
	if len(ready) == 0 {
		ready = fallback
	}
	return &proxier.ServicePort{Name: proxier.ServicePortName{NamespacedName: demo, Port: port, Protocol: v1.ProtocolTCP, Family: f},
		HealthCheckNodePort: 31999, AllEndpoints: eps, LocalEndpoints: ready}
}

func TestServiceHealthCheckPorts(t *testing.T) {
	s := NewServices(ServicesOptions{Logger: quiet})
	f := newFakeListen(s)
	defer s.Close()
	sp := hcPort("", proxier.IPv4, ep("10.244.1.59", 80, true, true))
	s.Sync(&proxier.State{Services: []*proxier.ServicePort{sp}}, proxier.Changes{Full: true})
	code, hdr, body := get(t, f.addr(31999))
	if want := `{"service":{"namespace":"default","name":"demoapp-lb"},"localEndpoints":1,"serviceProxyHealthy":true}`; code != 200 || body != want ||
		hdr.Get("Content-Type") != "application/json" || hdr.Get("X-Content-Type-Options") != "nosniff" {
		t.Fatalf("with a local endpoint: %d %v %s", code, hdr, body)
	}
	noLocal := *sp
	noLocal.AllEndpoints = nil
	changed := proxier.Changes{Services: map[types.NamespacedName]bool{demo: true}}
	s.Sync(&proxier.State{Services: []*proxier.ServicePort{&noLocal}}, changed)
	if code, _, _ := get(t, f.addr(31999)); code != 503 {
		t.Fatalf("without local endpoints: %d", code)
	}
	// A partial sync of another service leaves this one's port as it is.
	other := types.NamespacedName{Namespace: "default", Name: "other"}
	s.Sync(&proxier.State{Services: []*proxier.ServicePort{&noLocal, {Name: proxier.ServicePortName{NamespacedName: other}}}},
		proxier.Changes{Services: map[types.NamespacedName]bool{other: true}})
	if code, _, _ := get(t, f.addr(31999)); code != 503 {
		t.Fatalf("after another service changed: %d, want still 503", code)
	}
	s.Sync(&proxier.State{}, changed)
	if _, err := http.Get("http://" + f.addr(31999)); err == nil {
		t.Fatal("port still open after the service went away")
	}
}

// Only ready local endpoints count, by address over the service's ports, as kube-proxy v1.34
// counts them: a node whose local endpoints are all terminating answers 503 so that load
// balancers drain it during a rollout.
func TestHealthCheckCountsReadyLocalEndpoints(t *testing.T) {
	tests := []struct {
		name string
		sps  []*proxier.ServicePort
		want int
	}{
		{"all local terminating", []*proxier.ServicePort{hcPort("", proxier.IPv4,
			ep("10.244.1.5", 80, true, false), ep("10.244.1.6", 80, true, false), ep("10.244.2.5", 80, false, true))}, 0},
		{"one ready, one terminating", []*proxier.ServicePort{hcPort("", proxier.IPv4,
			ep("10.244.1.5", 80, true, true), ep("10.244.1.6", 80, true, false))}, 1},
		{"remote only", []*proxier.ServicePort{hcPort("", proxier.IPv4, ep("10.244.2.5", 80, false, true))}, 0},
		{"one pod, two ports", []*proxier.ServicePort{
			hcPort("http", proxier.IPv4, ep("10.244.1.5", 80, true, true)),
			hcPort("https", proxier.IPv4, ep("10.244.1.5", 443, true, true), ep("10.244.1.7", 443, true, true))}, 2},
		{"dual-stack pod", []*proxier.ServicePort{
			hcPort("", proxier.IPv4, ep("10.244.1.5", 80, true, true)),
			hcPort("", proxier.IPv6, ep("fd00:244:1::5", 80, true, true))}, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := NewServices(ServicesOptions{Logger: quiet})
			f := newFakeListen(s)
			defer s.Close()
			s.Sync(&proxier.State{Services: tc.sps}, proxier.Changes{Full: true})
			code, _, body := get(t, f.addr(31999))
			wantCode := 200
			if tc.want == 0 {
				wantCode = 503
			}
			var b checkBody
			if err := json.Unmarshal([]byte(body), &b); err != nil || code != wantCode || b.LocalEndpoints != tc.want {
				t.Errorf("%d %s, want %d with %d local endpoints", code, body, wantCode, tc.want)
			}
		})
	}
}

// An unhealthy proxy fails every health check, with serviceProxyHealthy false, as kube-proxy's.
func TestHealthCheckFollowsProxyHealth(t *testing.T) {
	now := time.Unix(1000, 0)
	p := NewProxy(time.Minute)
	p.now = func() time.Time { return now }
	p.Synced(now)
	p.SetNodeEligible(false) // only /healthz looks at the node
	s := NewServices(ServicesOptions{Logger: quiet, Proxy: p})
	f := newFakeListen(s)
	defer s.Close()
	s.Sync(&proxier.State{Services: []*proxier.ServicePort{hcPort("", proxier.IPv4, ep("10.244.1.5", 80, true, true))}}, proxier.Changes{Full: true})
	if code, _, body := get(t, f.addr(31999)); code != 200 || !strings.Contains(body, `"serviceProxyHealthy":true`) {
		t.Fatalf("healthy proxy: %d %s", code, body)
	}
	p.Queued()
	now = now.Add(time.Minute)
	if code, _, body := get(t, f.addr(31999)); code != 503 || !strings.Contains(body, `"localEndpoints":1,"serviceProxyHealthy":false`) {
		t.Fatalf("unhealthy proxy: %d %s", code, body)
	}
}

// With node-port addresses the servers listen on the node's addresses inside them only, and move
// when those addresses change.
func TestHealthCheckNodePortAddresses(t *testing.T) {
	s := NewServices(ServicesOptions{Logger: quiet, NodePortAddresses: []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/24"), netip.MustParsePrefix("fd00:10::/64")}})
	f := newFakeListen(s)
	defer s.Close()
	st := &proxier.State{Node: proxier.Node{IPs: []netip.Addr{netip.MustParseAddr("10.0.0.151"),
		netip.MustParseAddr("192.168.1.5"), netip.MustParseAddr("fd00:10::151")}},
		Services: []*proxier.ServicePort{hcPort("", proxier.IPv4, ep("10.244.1.5", 80, true, true))}}
	s.Sync(st, proxier.Changes{Full: true})
	if got := f.hosts[31999]; !slices.Equal(got, []string{"10.0.0.151", "fd00:10::151"}) {
		t.Fatalf("listened on %q", got)
	}
	st.Node.IPs = []netip.Addr{netip.MustParseAddr("10.0.0.152")}
	s.Sync(st, proxier.Changes{})
	if got := f.hosts[31999]; !slices.Equal(got, []string{"10.0.0.151", "fd00:10::151", "10.0.0.152"}) {
		t.Fatalf("after the node address changed, listened on %q", got)
	}
	if code, _, _ := get(t, f.addr(31999)); code != 200 {
		t.Fatalf("on the new address: %d", code)
	}

	// Without node-port addresses: every address.
	all := NewServices(ServicesOptions{Logger: quiet})
	fa := newFakeListen(all)
	defer all.Close()
	all.Sync(st, proxier.Changes{Full: true})
	if got := fa.hosts[31999]; !slices.Equal(got, []string{""}) {
		t.Fatalf("without node-port addresses, listened on %q", got)
	}
}

// headerWatch is a listener whose connections report when the server reads again after the
// request headers arrived: the request is parsed and the connection is busy with it.
type headerWatch struct {
	net.Listener
	headersDone chan struct{}
	once        sync.Once
}

func (l *headerWatch) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &headerWatchConn{Conn: c, l: l}, nil
}

type headerWatchConn struct {
	net.Conn
	l    *headerWatch
	seen []byte
}

func (c *headerWatchConn) Read(b []byte) (int, error) {
	if bytes.Contains(c.seen, []byte("\r\n\r\n")) {
		c.l.once.Do(func() { close(c.l.headersDone) })
	}
	n, err := c.Conn.Read(b)
	c.seen = append(c.seen, b[:max(n, 0)]...)
	return n, err
}

// A client that sends its headers and never its body, then the service going away: Sync used to
// shut the server down under the lock and wait for that client forever, and rules were never
// synced again. Sync must return at once.
func TestSyncNotBlockedBySlowClient(t *testing.T) {
	s := NewServices(ServicesOptions{Logger: quiet})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	w := &headerWatch{Listener: ln, headersDone: make(chan struct{})}
	s.listen = func(_ string, _ uint16) (net.Listener, error) {
		if w != nil {
			first := w
			w = nil
			return first, nil
		}
		return net.Listen("tcp", addr) // the same port again
	}
	watch := w
	t.Cleanup(s.Close)
	s.Sync(&proxier.State{Services: []*proxier.ServicePort{hcPort("", proxier.IPv4, ep("10.244.1.5", 80, true, true))}}, proxier.Changes{Full: true})
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() }) // runs first: unblocks the old code's Shutdown
	if _, err := conn.Write([]byte("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-watch.headersDone:
	case <-time.After(10 * time.Second):
		t.Fatal("the server never read the headers")
	}
	done := make(chan struct{})
	go func() {
		s.Sync(&proxier.State{}, proxier.Changes{Services: map[types.NamespacedName]bool{demo: true}})
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Sync blocked by a client that never sends its body")
	}
	// The port is free at once, for the next service that takes it.
	s.Sync(&proxier.State{Services: []*proxier.ServicePort{hcPort("", proxier.IPv4)}}, proxier.Changes{Full: true})
	if code, _, _ := get(t, addr); code != 503 {
		t.Fatalf("port reopened: %d", code)
	}
}

func TestNewHTTPServerLimits(t *testing.T) {
	srv := NewHTTPServer(http.NotFoundHandler())
	if srv.ReadHeaderTimeout <= 0 || srv.ReadTimeout <= 0 || srv.WriteTimeout <= 0 || srv.IdleTimeout <= 0 || srv.MaxHeaderBytes <= 0 {
		t.Errorf("server without limits: %+v", srv)
	}
}

// A sync shows under nodeagent's metric names (kube-proxy's: kubeproxy_test.go).
func TestMetricsNames(t *testing.T) {
	m := NewMetrics()
	m.ObserveSync("partial", 3*time.Millisecond)
	m.AddLayer2(func() Layer2Stats { return Layer2Stats{BadPackets: 7} })
	_, _, body := serve(m.Handler(), "/metrics")
	for _, want := range []string{
		`nodeagent_sync_proxy_rules_duration_seconds_count{sync="partial"} 1`,
		"nodeagent_sync_proxy_rules_last_timestamp_seconds ",
		"nodeagent_layer2_bad_packets_total 7",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}
