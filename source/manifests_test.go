package source

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
)

// logBuffer is a goroutine-safe log sink tests can search.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuffer) reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.Reset()
}

func (l *logBuffer) contains(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Contains(l.b.String(), s)
}

// runManifests starts m.Run in the background and waits for Synced; the returned function stops
// it and checks that Run returned nil.
func runManifests(t *testing.T, m *Manifests, sink Sink, synced func() bool) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx, sink) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	eventually(t, "initial sync", synced)
}

const redisV2 = `apiVersion: v1
kind: Service
metadata: {name: redis, namespace: default}
spec:
  selector: {app: redis, role: logstor}
  clusterIP: 10.99.99.99
  ports: [{port: %d, targetPort: 6379}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: redis-x7k2p
  namespace: default
  labels: {kubernetes.io/service-name: redis}
addressType: IPv4
ports: [{protocol: TCP, port: 6379}]
endpoints:
- addresses: ["10.244.2.94"]
  conditions: {ready: true}
  nodeName: node02
`

func redisPort(rec *recorder) int32 {
	s, _ := rec.get(svcKey("default", "redis")).(*v1.Service)
	if s == nil {
		return 0
	}
	return s.Spec.Ports[0].Port
}

func TestRunDeliversInitialStateThenChanges(t *testing.T) {
	dir := seedDir(t)
	logs := &logBuffer{}
	m := &Manifests{Dir: dir, Log: slog.New(slog.NewTextHandler(logs, nil))}
	rec := newRecorder()
	runManifests(t, m, rec, func() bool { s, _, _ := rec.counts(); return s == 1 })

	// The initial state is what Load returns, Pods aside.
	want, _, err := m.Load()
	if err != nil {
		t.Fatal(err)
	}
	got := rec.snapshot()
	if len(got) != want.Len() {
		t.Errorf("delivered %d objects, Load has %d", len(got), want.Len())
	}
	for k, o := range got {
		if !equality.Semantic.DeepEqual(o, want.Get(k)) {
			t.Errorf("%v differs from Load's", k)
		}
	}
	if !logs.contains("externalip.yaml") || !logs.contains("duplicate") {
		t.Errorf("the seed's duplicate was not logged:\n%s", logs.b.String())
	}

	// An edit written the way editors do (temporary file, rename) reaches the sink, and only the
	// changed object is delivered.
	_, up0, del0 := rec.counts()
	start := time.Now()
	writeFile(t, dir, "redis.yaml", fmt.Sprintf(redisV2, 6381))
	eventually(t, "redis port 6381", func() bool { return redisPort(rec) == 6381 })
	t.Logf("edit reached the sink after %v", time.Since(start))
	if _, up, del := rec.counts(); up != up0+1 || del != del0 {
		t.Errorf("%d upserts and %d deletes for one changed service, want 1 and 0", up-up0, del-del0)
	}

	// A file that no longer parses keeps serving what it last produced.
	writeFile(t, dir, "redis.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: redis\n")
	eventually(t, "the syntax error logged", func() bool { return logs.contains("serving its last good version") })
	if redisPort(rec) != 6381 || rec.get(sliceKey("default", "redis-x7k2p")) == nil {
		t.Error("a broken file took its objects away")
	}

	// An object that becomes invalid keeps its last valid version.
	writeFile(t, dir, "redis.yaml", strings.Replace(fmt.Sprintf(redisV2, 6382), "10.99.99.99", "10.99.99.999", 1))
	eventually(t, "the invalid service logged", func() bool { return logs.contains("serving its last valid version") })
	if redisPort(rec) != 6381 {
		t.Error("an invalid update was served")
	}

	// Fixed, the new version is served.
	writeFile(t, dir, "redis.yaml", fmt.Sprintf(redisV2, 6383))
	eventually(t, "redis port 6383", func() bool { return redisPort(rec) == 6383 })
	eventually(t, "the problems resolved", func() bool { return logs.contains("manifest problem resolved") })

	// A removed file takes its objects, and the slices generated for them, away.
	var tomcatSlice Key
	for k := range rec.snapshot() {
		if k.GroupKind == endpointSliceKind && strings.HasPrefix(k.Name, "tomcat-") {
			tomcatSlice = k
		}
	}
	if tomcatSlice.Name == "" {
		t.Fatal("no generated slice for tomcat")
	}
	if err := os.Remove(filepath.Join(dir, "tomcat.yaml")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "tomcat gone", func() bool {
		return rec.get(svcKey("default", "tomcat")) == nil && rec.get(tomcatSlice) == nil
	})
}

func TestRunCoalescesBursts(t *testing.T) {
	dir := t.TempDir()
	m := &Manifests{Dir: dir, Log: quietLog}
	rec := newRecorder()
	runManifests(t, m, rec, func() bool { s, _, _ := rec.counts(); return s == 1 })

	const n = 50
	start := time.Now()
	for i := range n {
		writeFile(t, dir, fmt.Sprintf("s%02d.yaml", i),
			fmt.Sprintf("apiVersion: v1\nkind: Service\nmetadata: {name: s%d}\nspec: {ports: [{port: 80}]}\n", i))
	}
	eventually(t, "all services", func() bool { return len(rec.snapshot()) == n })
	t.Logf("%d files written and delivered in %v", n, time.Since(start))
	// However the events were batched, every service is delivered exactly once: reloads send
	// differences only (and 50 names in a million addresses do not hash to the same place, so no
	// service moves when another arrives).
	if _, up, del := rec.counts(); up != n || del != 0 {
		t.Errorf("%d upserts and %d deletes, want %d and 0", up, del, n)
	}
	var ips []string
	for _, o := range rec.snapshot() {
		ips = append(ips, o.(*v1.Service).Spec.ClusterIP)
	}
	sort.Strings(ips)
	for i := 1; i < len(ips); i++ {
		if ips[i] == ips[i-1] {
			t.Errorf("cluster IP %s allocated twice", ips[i])
		}
	}
}

func TestRunFailsWithoutDirectory(t *testing.T) {
	m := &Manifests{Dir: filepath.Join(t.TempDir(), "missing"), Log: quietLog}
	if err := m.Run(context.Background(), newRecorder()); err == nil {
		t.Error("Run on a missing directory did not fail")
	}
	m = &Manifests{Dir: t.TempDir(), ServiceCIDRs: []netip.Prefix{DefaultServiceCIDR, DefaultServiceCIDR}, Log: quietLog}
	if err := m.Run(context.Background(), newRecorder()); err == nil {
		t.Error("Run with two IPv4 service CIDRs did not fail")
	}
}
