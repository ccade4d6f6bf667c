package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	lab "nodeagent/test/netns"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

// dialResponses asks the netexec pod at podIP to connect to host:port itself, tries times, and
// returns the host names that answered (agnhost's /dial, as the e2e suite uses it).
func dialResponses(ns, podIP, host string, port, tries int) ([]string, error) {
	q := url.Values{"request": {"hostname"}, "protocol": {"http"}, "host": {host}, "port": {fmt.Sprint(port)}, "tries": {fmt.Sprint(tries)}}
	body, code, err := lab.HTTPGet(ns, fmt.Sprintf("http://%s:8080/dial?%s", podIP, q.Encode()))
	if err != nil {
		return nil, err
	}
	var r struct {
		Responses []string `json:"responses"`
		Errors    []string `json:"errors"`
	}
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		return nil, fmt.Errorf("/dial answered %d %q: %w", code, body, err)
	}
	if len(r.Responses) == 0 {
		return nil, fmt.Errorf("/dial to %s:%d: no responses, errors %q", host, port, r.Errors)
	}
	return r.Responses, nil
}

// TestCluster brings a cluster up with the node proxy $PROXY (default nodeagent, as a DaemonSet
// from its image), runs three agnhost pods behind a LoadBalancer Service, and reaches them the
// ways a cluster's users do: through the cluster IP from a pod, by name through CoreDNS from a
// pod, with kubectl exec, on the node port of every node from the LAN client, and (nodeagent,
// which allocates and announces it) on the load-balancer address from the LAN client.
func TestCluster(t *testing.T) {
	requireOptIn(t)
	start := time.Now()
	c := Up(t, Options{Proxy: os.Getenv("PROXY"), Mode: os.Getenv("PROXY_MODE"), NodeagentImage: os.Getenv("NODEAGENT_IMAGE")})
	up := time.Since(start)
	ctx := t.Context()

	metallb, err := moduleFile("examples/metallb.yaml")
	if err != nil {
		t.Fatal(err)
	}
	demo, err := moduleFile("test/cluster/testdata/demoapp.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Proxy == ProxyNodeagent {
		if _, err := c.Kubectl(ctx, "create", "namespace", "metallb-system"); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Kubectl(ctx, "apply", "-f", metallb); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Kubectl(ctx, "apply", "-f", demo); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitDeployment(ctx, "demo", "demoapp"); err != nil {
		t.Fatal(err)
	}
	client := c.ControlPlane.Client
	svc, err := client.CoreV1().Services("demo").Get(ctx, "demoapp", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pods, err := client.CoreV1().Pods("demo").List(ctx, metav1.ListOptions{LabelSelector: "app=demoapp"})
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, p := range pods.Items {
		names[p.Name] = true
	}
	from := pods.Items[0]
	clusterIP, nodePort := svc.Spec.ClusterIP, int(svc.Spec.Ports[0].NodePort)
	t.Logf("demoapp: cluster IP %s, node port %d, pods %v; dialing from %s on %s", clusterIP, nodePort, keys(names), from.Name, from.Spec.NodeName)

	// A pod reaches the Service through its cluster IP, and every backend answers in turn.
	seen := map[string]bool{}
	var last error
	if !lab.Eventually(lab.Scaled(30*time.Second), 200*time.Millisecond, func() bool {
		got, err := dialResponses(c.CP, from.Status.PodIP, clusterIP, 80, 10)
		last = err
		for _, h := range got {
			if !names[h] {
				last = fmt.Errorf("answer from %q, not a demoapp pod", h)
				return false
			}
			seen[h] = true
		}
		return len(seen) == len(names)
	}) {
		t.Fatalf("cluster IP %s from pod %s: answers from %v of %v (last: %v)", clusterIP, from.Name, keys(seen), keys(names), last)
	}

	// By name: the pod's resolver is CoreDNS behind kube-dns's cluster IP.
	if !lab.Eventually(lab.Scaled(30*time.Second), 200*time.Millisecond, func() bool {
		_, last = dialResponses(c.CP, from.Status.PodIP, "demoapp.demo.svc.cluster.local", 80, 1)
		return last == nil
	}) {
		t.Fatalf("demoapp.demo.svc.cluster.local from pod %s: %v", from.Name, last)
	}

	// kubectl exec: API server to kubelet to containerd, and back.
	out, err := c.Kubectl(ctx, "-n", "demo", "exec", from.Name, "--", "/agnhost", "connect", "--timeout=5s", "demoapp:80")
	if err != nil {
		t.Fatalf("kubectl exec: %v (%s)", err, out)
	}

	// The LAN client reaches the node port on every node.
	for _, n := range c.Nodes {
		target := fmt.Sprintf("http://%s:%d/hostname", n.IP, nodePort)
		if !lab.Eventually(lab.Scaled(20*time.Second), 200*time.Millisecond, func() bool {
			body, _, err := lab.HTTPGet(c.Lab.Client, target)
			last = err
			if err == nil && !names[strings.TrimSpace(body)] {
				last = fmt.Errorf("answer %q", body)
			}
			return last == nil
		}) {
			t.Fatalf("node port from the client: %s: %v", target, last)
		}
	}

	// The proxy runs in the mode asked for: only the iptables mode puts the cluster IP into
	// iptables' nat table (read in node01's namespace; the nftables mode has a table of its own).
	mode := c.Mode
	if mode == "" {
		mode = "nftables"
	}
	rules, err := lab.Exec(c.Nodes[0].NS, "iptables-save", "-t", "nat")
	if err != nil {
		t.Fatal(err)
	}
	if inIPTables := strings.Contains(rules, clusterIP); inIPTables != (mode == "iptables") {
		t.Errorf("mode %s, but the cluster IP %s in iptables' nat table: %v", mode, clusterIP, inIPTables)
	}

	if c.Proxy == ProxyNodeagent {
		// nodeagent allocates the address from the seed's pool and answers ARP for it.
		var lbIP string
		if !lab.Eventually(lab.Scaled(30*time.Second), 200*time.Millisecond, func() bool {
			s, err := client.CoreV1().Services("demo").Get(ctx, "demoapp", metav1.GetOptions{})
			if err == nil && len(s.Status.LoadBalancer.Ingress) > 0 {
				lbIP = s.Status.LoadBalancer.Ingress[0].IP
			}
			return lbIP != ""
		}) {
			t.Fatal("no load-balancer address allocated")
		}
		target := "http://" + lbIP + "/hostname"
		if !lab.Eventually(lab.Scaled(20*time.Second), 200*time.Millisecond, func() bool {
			body, _, err := lab.HTTPGet(c.Lab.Client, target)
			last = err
			if err == nil && !names[strings.TrimSpace(body)] {
				last = fmt.Errorf("answer %q", body)
			}
			return last == nil
		}) {
			t.Fatalf("load balancer from the client: %s: %v", target, last)
		}
		t.Logf("load-balancer address %s answers the LAN client", lbIP)
	}
	t.Logf("cluster up in %v; checks done %v later; memory: %s", up.Round(time.Millisecond), (time.Since(start) - up).Round(time.Millisecond), c.memory(context.WithoutCancel(ctx)))
}

// requireOptIn skips a cluster test unless NODEAGENT_CLUSTER=1 (make test-cluster sets it): a
// cluster takes a minute and about 1.5 GB, too much for every go test ./...
func requireOptIn(t *testing.T) {
	t.Helper()
	if os.Getenv("NODEAGENT_CLUSTER") != "1" {
		t.Skip("a whole cluster: set NODEAGENT_CLUSTER=1 or run make test-cluster")
	}
}

// TestClusterHold brings a cluster up and keeps it until SIGINT or SIGTERM (make cluster): for
// trying things by hand with the kubectl command it prints.
func TestClusterHold(t *testing.T) {
	if os.Getenv("NODEAGENT_CLUSTER_HOLD") != "1" {
		t.Skip("interactive: make cluster (NODEAGENT_CLUSTER_HOLD=1)")
	}
	hold := Hold()
	c := Up(t, Options{Proxy: os.Getenv("PROXY"), Mode: os.Getenv("PROXY_MODE"), NodeagentImage: os.Getenv("NODEAGENT_IMAGE")})
	t.Logf("cluster up; Ctrl-C (SIGINT) takes it down. kubectl:\n\n  ip netns exec %s %s --kubeconfig %s get nodes -o wide\n\nthe LAN client: ip netns exec %s curl ...",
		c.CP, filepath.Join(c.BinDir, "kubectl"), c.Kubeconfig, c.Lab.Client)
	<-hold
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
