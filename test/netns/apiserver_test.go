package lab

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"nodeagent/test/kube"
)

// testKubernetesAPI: the same seed objects, applied to a real kube-apiserver (with etcd) running
// in the router namespace, reach every agent through client-go: the API server allocates the
// cluster IPs, one agent (the Lease holder) writes demoapp-lb's 10.0.0.51 into its status, the
// rules follow updates, and a restart of the API server loses nothing.
func testKubernetesAPI(t *testing.T, m mode) {
	begin := time.Now()
	e := newEnv(t, m, setup{pods: demoappPods, agents: []int{}})
	cp := kube.StartTest(t, kube.Options{NetNS: e.Router, Address: RouterAddr})
	ctx := t.Context()
	_, kubeconfig, err := cp.AgentConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := cp.InstallCRDs(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := cp.Apply(ctx, []byte("apiVersion: v1\nkind: Namespace\nmetadata: {name: metallb-system}\n")); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"demoapp.yaml", "demoapp-endpoints.yaml", "metallb.yaml"} {
		if _, err := cp.Apply(ctx, []byte(seed(t, f))); err != nil {
			t.Fatalf("apply %s: %v", f, err)
		}
	}
	for _, n := range e.Nodes {
		// The lab passes every agent its manifests directory; an empty one leaves the API server.
		e.agents[n.Index] = e.StartAgentNoWait(n, "--manifests=", "--kubeconfig", kubeconfig, "--leader-election-namespace", "default")
	}
	for i, a := range e.agents {
		if err := a.WaitReady(Scaled(30 * time.Second)); err != nil {
			t.Fatalf("agent on node%02d: %v\n%s", i, err, a.LogTail(30))
		}
	}
	t.Logf("agents ready after %v", time.Since(begin))
	svc, err := cp.Client.CoreV1().Services("default").Get(ctx, "demoapp-clusterip", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cip := netip.MustParseAddr(svc.Spec.ClusterIP)
	rs := e.spread(e.Node(2).NS, "tcp", hostPort(cip, 80), 1)
	e.waitAnswer(e.Client, "tcp", "10.0.0.151:32725")

	// Exactly one agent writes the assigned address into the status.
	var ingress string
	if !Eventually(Scaled(30*time.Second), 100*time.Millisecond, func() bool {
		lb, err := cp.Client.CoreV1().Services("default").Get(ctx, "demoapp-lb", metav1.GetOptions{})
		if err == nil && len(lb.Status.LoadBalancer.Ingress) > 0 {
			ingress = lb.Status.LoadBalancer.Ingress[0].IP
			return true
		}
		return false
	}) {
		t.Fatal("no agent wrote demoapp-lb's status.loadBalancer.ingress")
	}
	if ingress != lbAddr.String() {
		t.Errorf("demoapp-lb status has %s, want %s", ingress, lbAddr)
	}
	e.waitAnswer(e.Client, "tcp", hostPort(lbAddr, 80))
	t.Logf("LB answered after %v", time.Since(begin))

	// A new service created through the API converges, also after the API server restarted.
	if err := cp.Restart(ctx); err != nil {
		t.Fatalf("restart API server: %v", err)
	}
	t.Logf("API server restarted after %v", time.Since(begin))
	fixed := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "redis", Namespace: "default"},
		Spec: v1.ServiceSpec{ClusterIP: "10.99.99.99", Selector: map[string]string{"app": "demoapp"},
			Ports: []v1.ServicePort{{Port: 6380, TargetPort: intOrString(80)}}},
	}
	if !Eventually(Scaled(30*time.Second), 200*time.Millisecond, func() bool {
		_, err := cp.Client.CoreV1().Services("default").Create(context.Background(), fixed, metav1.CreateOptions{})
		return err == nil
	}) {
		t.Fatal("create a service after the restart")
	}
	if _, err := cp.Apply(ctx, []byte(sliceYAML("redis-1", "redis", []slicePort{{"", "TCP", 80}}, endpoint{"10.244.1.59", "node01"}))); err != nil {
		t.Fatal(err)
	}
	t.Logf("redis created after %v", time.Since(begin))
	r := e.waitAnswer(e.Node(3).NS, "tcp", "10.99.99.99:6380")
	if r.ServerName != "demoapp-1" {
		t.Errorf("10.99.99.99:6380 reached %s, want demoapp-1", r.ServerName)
	}
	fmt.Printf("Kubernetes API (%s mode): cluster IP %s answered by %s; demoapp-lb status %s; service created after an API server restart answered\n",
		m.name, cip, rs[0].ServerName, ingress)
	for i, a := range e.agents {
		if exited, err := a.Exited(); exited {
			t.Errorf("agent on node%02d exited: %v\n%s", i, err, a.LogTail(20))
		}
	}
}

func intOrString(i int) intstr.IntOrString { return intstr.FromInt(i) }
