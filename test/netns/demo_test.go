package lab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDemo is `make demo`: the lab with an agent per node serving examples/ verbatim, and the
// demoapp answers through every kind of service address printed as a user would see them with
// curl. It asserts each answer, so CI runs it as a test too. The mode is $NODEAGENT_DEMO_MODE
// (default: the agent's default).
func TestDemo(t *testing.T) {
	RequireRoot(t)
	files, err := filepath.Glob(filepath.Join("..", "..", "examples", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples: %v", err)
	}
	name := os.Getenv("NODEAGENT_DEMO_MODE")
	if name == "" {
		name = "nftables"
	}
	var m mode
	for _, row := range modes {
		if row.name == name {
			m = row
		}
	}
	if m.name == "" {
		t.Fatalf("NODEAGENT_DEMO_MODE=%s: no such mode in the suite", name)
	}
	e := newEnv(t, m, setup{
		pods: append(append(append([]podSpec{}, demoappPods...), myappPods...), redisPod, clientPod),
		before: func(l *Lab) {
			l.CopyManifests(files...)
			if err := l.Node(1).AddExternalIP(ExternalIP); err != nil {
				t.Fatal(err)
			}
		},
	})
	say := func(format string, a ...any) { fmt.Printf(format+"\n", a...) }
	out, err := Exec(e.Node(1).NS, Binary(t), "get", "services", "--manifests", e.Node(1).Manifests)
	if err != nil {
		t.Fatalf("get services: %v", err)
	}
	say("\n$ nodeagent get services --manifests examples/   (mode %s)\n%s", name, out)

	curl := func(who, ns, addr string) {
		t.Helper()
		e.waitAnswer(ns, "tcp", addr)
		body, code, err := HTTPGet(ns, "http://"+addr+"/")
		if err != nil || code != 200 || !strings.HasPrefix(body, "iKubernetes demoapp v1.0 !! ClientIP: ") {
			t.Errorf("%s: curl %s: %d %q %v", who, addr, code, body, err)
			return
		}
		say("%-28s curl %-20s → %s", who, addr, strings.TrimSpace(body))
	}
	cip := e.clusterIP("demoapp-clusterip")
	for range 3 {
		curl("pod client-pod (node01)", e.Pod("client-pod").NS, hostPort(cip, 80))
	}
	for _, n := range e.Nodes {
		curl("external client 10.0.0.1", e.Client, hostPort(n.IP, 32725))
	}
	curl("external client 10.0.0.1", e.Client, hostPort(ExternalIP, 80))
	for range 3 {
		curl("external client 10.0.0.1", e.Client, "10.0.0.151:31180")
	}
	r := e.waitAnswer(e.Pod("client-pod").NS, "tcp", "10.99.99.99:6380")
	say("%-28s tcp  %-20s → redis pod %s (%s) answered", "pod client-pod (node01)", "10.99.99.99:6380", r.ServerName, r.ServerIP)

	tomcat := hostPort(e.clusterIP("tomcat"), 8080)
	start := time.Now()
	_, err = Dial(e.Pod("client-pod").NS, "tcp", tomcat)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("tomcat has no endpoints: want connection refused, got %v", err)
	}
	say("%-28s tcp  %-20s → refused in %v (tomcat has no endpoints)", "pod client-pod (node01)", tomcat, time.Since(start).Round(time.Microsecond))
}
