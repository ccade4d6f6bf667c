package health

import (
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"nodeagent/proxier"
)

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
	now = now.Add(2 * time.Minute)
	rec := httptest.NewRecorder()
	p.ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
	if rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("change queued for 2m: code %d", rec.Code)
	}
	p.Synced(now)
	rec = httptest.NewRecorder()
	p.ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
	if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `"lastUpdated"`) {
		t.Fatalf("after sync: %d %s", rec.Code, rec.Body)
	}
}

func TestServiceHealthCheckPorts(t *testing.T) {
	s := NewServices(slog.Default())
	ports := map[uint16]string{}
	s.listen = func(port uint16) (net.Listener, error) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err == nil {
			ports[port] = ln.Addr().String()
		}
		return ln, err
	}
	defer s.Close()
	name := types.NamespacedName{Namespace: "default", Name: "demoapp-lb"}
	sp := &proxier.ServicePort{Name: proxier.ServicePortName{NamespacedName: name}, HealthCheckNodePort: 31999,
		LocalEndpoints: []proxier.Endpoint{{Addr: netip.MustParseAddr("10.244.1.59"), Port: 80}}}
	s.Sync(&proxier.State{Services: []*proxier.ServicePort{sp}}, proxier.Changes{Full: true})
	get := func() (int, string) {
		resp, err := http.Get("http://" + ports[31999])
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get(); code != 200 || !strings.Contains(body, `"localEndpoints":1`) {
		t.Fatalf("with a local endpoint: %d %s", code, body)
	}
	noLocal := *sp
	noLocal.LocalEndpoints = nil
	changed := proxier.Changes{Services: map[types.NamespacedName]bool{name: true}}
	s.Sync(&proxier.State{Services: []*proxier.ServicePort{&noLocal}}, changed)
	if code, _ := get(); code != 503 {
		t.Fatalf("without local endpoints: %d", code)
	}
	// A partial sync of another service leaves this one's port as it is.
	other := types.NamespacedName{Namespace: "default", Name: "other"}
	s.Sync(&proxier.State{Services: []*proxier.ServicePort{&noLocal, {Name: proxier.ServicePortName{NamespacedName: other}}}},
		proxier.Changes{Services: map[types.NamespacedName]bool{other: true}})
	if code, _ := get(); code != 503 {
		t.Fatalf("after another service changed: %d, want still 503", code)
	}
	s.Sync(&proxier.State{}, changed)
	if _, err := http.Get("http://" + ports[31999]); err == nil {
		t.Fatal("port still open after the service went away")
	}
}

// A sync shows under nodeagent's metric names and under kube-proxy's.
func TestMetricsKubeProxyNames(t *testing.T) {
	m := NewMetrics()
	m.ObserveSync("partial", 3*time.Millisecond)
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	for _, want := range []string{
		`nodeagent_sync_proxy_rules_duration_seconds_count{sync="partial"} 1`,
		"kubeproxy_sync_proxy_rules_duration_seconds_count 1",
		"kubeproxy_sync_proxy_rules_last_timestamp_seconds ",
		"nodeagent_sync_proxy_rules_last_timestamp_seconds ",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}
