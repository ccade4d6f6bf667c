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

	"nodeagent/deploy"
	"nodeagent/test/kube"
)

// testKubernetesAPI: the same seed objects, applied to a real kube-apiserver (with etcd) running
// in the router namespace, reach every agent through client-go: the API server allocates the
// cluster IPs, one agent (the Lease holder) writes demoapp-lb's 10.0.0.51 into its status, the
// rules follow updates, and a restart of the API server loses nothing.
func testKubernetesAPI(t *testing.T, m mode) {
	begin := time.Now()
	e := newEnv(t, m, setup{pods: demoappPods, agents: []int{}})
	cp := kube.StartTest(t, kube.Options{NetNS: e.Router, Address: RouterAddr, StartTimeout: Scaled(2 * time.Minute)})
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
	// The Lease in the default --leader-election-namespace: deploy/rbac.yaml grants no other.
	agentArgs := []string{"--manifests=", "--kubeconfig", kubeconfig}
	for _, n := range e.Nodes {
		// The lab passes every agent its manifests directory; an empty one leaves the API server.
		e.agents[n.Index] = e.StartAgentNoWait(n, agentArgs...)
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

	// A Warning Event explains why a service asking for an address outside every pool has none.
	outside := lbService("wants-outside")
	outside.Annotations = map[string]string{"metallb.io/loadBalancerIPs": "192.0.2.9"}
	if _, err := cp.Client.CoreV1().Services("default").Create(ctx, outside, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var event string
	if !Eventually(Scaled(30*time.Second), 200*time.Millisecond, func() bool {
		evs, err := cp.Client.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=wants-outside,reason=AllocationFailed"})
		if err != nil || len(evs.Items) == 0 {
			return false
		}
		event = evs.Items[0].Message
		return evs.Items[0].Type == v1.EventTypeWarning
	}) {
		t.Fatal("no AllocationFailed Warning Event for a service asking for 192.0.2.9")
	}
	t.Logf("event: %s", event)

	// The leader dies without releasing its Lease: another agent takes over the status writes.
	leader := leaseHolder(t, cp)
	var dead *Node
	for _, n := range e.Nodes {
		if n.Name == leader {
			dead = n
		}
	}
	if dead == nil {
		t.Fatalf("lease held by %q, not an agent of the lab", leader)
	}
	e.agents[dead.Index].Kill()
	killed := time.Now()
	if _, err := cp.Client.CoreV1().Services("default").Create(ctx, lbService("demoapp-lb2"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var ingress2 string
	if !Eventually(Scaled(60*time.Second), 200*time.Millisecond, func() bool {
		s, err := cp.Client.CoreV1().Services("default").Get(ctx, "demoapp-lb2", metav1.GetOptions{})
		if err == nil && len(s.Status.LoadBalancer.Ingress) > 0 {
			ingress2 = s.Status.LoadBalancer.Ingress[0].IP
			return true
		}
		return false
	}) {
		t.Fatalf("no agent wrote demoapp-lb2's status after the leader %s was killed", leader)
	}
	if a := netip.MustParseAddr(ingress2); a.Compare(lbAddr) <= 0 || a.Compare(netip.MustParseAddr("10.0.0.80")) > 0 {
		t.Errorf("demoapp-lb2 got %s, want a free address of the seed pool", a)
	}
	if now := leaseHolder(t, cp); now == leader {
		t.Errorf("lease still held by the killed %s", leader)
	}
	t.Logf("MEASURED leader %s killed → demoapp-lb2's status written by the next leader after %v", leader, time.Since(killed).Round(time.Millisecond))
	e.agents[dead.Index] = e.StartAgentNoWait(dead, agentArgs...)
	if err := e.agents[dead.Index].WaitReady(Scaled(30 * time.Second)); err != nil {
		t.Fatalf("restarted agent on %s: %v", dead.Name, err)
	}

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

// lbService is a LoadBalancer service in front of the demoapp pods.
func lbService(name string) *v1.Service {
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: v1.ServiceSpec{Type: v1.ServiceTypeLoadBalancer, Selector: map[string]string{"app": "demoapp"},
			Ports: []v1.ServicePort{{Port: 80, TargetPort: intOrString(80)}}},
	}
}

// leaseHolder returns the agent holding the Lease that elects the status writer.
func leaseHolder(t *testing.T, cp *kube.ControlPlane) string {
	t.Helper()
	l, err := cp.Client.CoordinationV1().Leases(deploy.Namespace).Get(t.Context(), deploy.Lease, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("leader lease: %v", err)
	}
	if l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}
