package lab

import (
	"fmt"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"nodeagent/deploy"
	"nodeagent/lb"
	"nodeagent/test/kube"
)

// oneViewMetalLB is the seed's pool with an L2Advertisement that only nodes labelled lb=yes may
// announce from.
const oneViewMetalLB = `apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: localip-pool, namespace: metallb-system}
spec:
  addresses: [10.0.0.51-10.0.0.80]
  avoidBuggyIPs: true
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: selected-nodes, namespace: metallb-system}
spec:
  ipAddressPools: [localip-pool]
  interfaces: [ens33]
  nodeSelectors:
  - matchLabels: {lb: "yes"}
`

// statusRBAC grants what MetalLB parity needs beyond deploy/rbac.yaml: Namespaces (their labels
// for namespaceSelectors), the ip-allocated-from-pool annotation on Services, and
// ServiceL2Status objects.
const statusRBAC = `apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: nodeagent-metallb-status}
rules:
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [services]
  verbs: [patch]
- apiGroups: [metallb.io]
  resources: [servicel2statuses]
  verbs: [list, create, delete, patch]
- apiGroups: [metallb.io]
  resources: [servicel2statuses/status]
  verbs: [patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: nodeagent-metallb-status}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: nodeagent-metallb-status}
subjects:
- {kind: ServiceAccount, name: nodeagent, namespace: kube-system}
`

// l2Owners returns the nodes whose ServiceL2Status says they announce default/svc.
func l2Owners(t *testing.T, cp *kube.ControlPlane, svc string) []string {
	t.Helper()
	list, err := cp.Dynamic.Resource(lb.GroupVersion.WithResource("servicel2statuses")).Namespace(deploy.Namespace).List(t.Context(),
		metav1.ListOptions{LabelSelector: lb.LabelServiceName + "=" + svc})
	if err != nil {
		t.Fatalf("list ServiceL2Status: %v", err)
	}
	var out []string
	for _, u := range list.Items {
		node, _, _ := unstructured.NestedString(u.Object, "status", "node")
		out = append(out, node)
	}
	return out
}

// TestLayer2OneViewAPI: three agents reading a real API server (with memberlist among them) agree
// on one owner of a load-balancer address whose L2Advertisement selects nodes by label — every
// agent sees every Node, so the two selected nodes do not both answer ARP — and when the owner gets
// the exclude-from-external-load-balancers label its address moves to the other selected node:
// none orphaned, none announced twice. The decision does not depend on the proxy mode, so one
// mode runs it.
func TestLayer2OneViewAPI(t *testing.T) {
	RequireRoot(t)
	e := newEnv(t, nftablesMode, setup{pods: demoappPods, agents: []int{}})
	cp := kube.StartTest(t, kube.Options{NetNS: e.Router, Address: RouterAddr, StartTimeout: Scaled(2 * time.Minute)})
	ctx := t.Context()
	_, kubeconfig, err := cp.AgentConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := cp.InstallCRDs(ctx); err != nil {
		t.Fatal(err)
	}
	if err := cp.InstallCRDManifest(ctx, deploy.StatusCRDs); err != nil {
		t.Fatal(err)
	}
	if _, err := cp.Apply(ctx, []byte(statusRBAC)); err != nil {
		t.Fatal(err)
	}
	if _, err := cp.Apply(ctx, []byte("apiVersion: v1\nkind: Namespace\nmetadata: {name: metallb-system}\n")); err != nil {
		t.Fatal(err)
	}
	for _, n := range e.Nodes {
		labels := map[string]string{"kubernetes.io/hostname": n.Name}
		if n.Index != 3 {
			labels["lb"] = "yes"
		}
		node, err := cp.Client.CoreV1().Nodes().Create(ctx, &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: labels}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		node.Status.Conditions = []v1.NodeCondition{{Type: v1.NodeReady, Status: v1.ConditionTrue, Reason: "KubeletReady"}}
		node.Status.Addresses = []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: n.IP.String()}}
		if _, err := cp.Client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"demoapp.yaml", "demoapp-endpoints.yaml"} {
		if _, err := cp.Apply(ctx, []byte(seed(t, f))); err != nil {
			t.Fatalf("apply %s: %v", f, err)
		}
	}
	if _, err := cp.Apply(ctx, []byte(oneViewMetalLB)); err != nil {
		t.Fatal(err)
	}
	var join []string
	for _, n := range e.Nodes {
		join = append(join, n.IP.String())
	}
	for _, n := range e.Nodes {
		// The Lease and the ServiceL2Status objects live in kube-system, the default.
		e.agents[n.Index] = e.StartAgentNoWait(n, "--manifests=", "--kubeconfig", kubeconfig,
			"--memberlist-bind", n.IP.String(), "--memberlist-join", strings.Join(join, ","))
	}
	for i, a := range e.agents {
		if err := a.WaitReady(Scaled(30 * time.Second)); err != nil {
			t.Fatalf("agent on node%02d: %v\n%s", i, err, a.LogTail(30))
		}
	}
	addr := hostPort(lbAddr, 80)
	e.waitAnswer(e.Client, "tcp", addr)
	macs := e.macs()

	// announcers returns the nodes whose agents announce an address, by their metrics.
	announcers := func() []int {
		var out []int
		for _, n := range e.Nodes {
			if scrapeMetrics(t, n.NS)["nodeagent_layer2_announced"] > 0 {
				out = append(out, n.Index)
			}
		}
		return out
	}
	// settle waits until exactly one node announces 10.0.0.51 and it is one of want, then checks
	// that only that node answers ARP and that the client reaches the service through it.
	settle := func(when string, want ...int) int {
		t.Helper()
		var got []int
		if !Eventually(Scaled(20*time.Second), 100*time.Millisecond, func() bool {
			got = announcers()
			if len(got) != 1 {
				return false
			}
			for _, w := range want {
				if got[0] == w {
					return true
				}
			}
			return false
		}) {
			t.Fatalf("%s: nodes %v announce %s, want exactly one of %v", when, got, lbAddr, want)
		}
		owner := got[0]
		out, _ := Exec(e.Client, "arping", "-c", "3", "-w", "3", "-I", "eth0", lbAddr.String())
		replies := arpingReply.FindAllStringSubmatch(out, -1)
		if len(replies) == 0 {
			t.Fatalf("%s: no ARP reply for %s:\n%s", when, lbAddr, out)
		}
		for _, rep := range replies {
			if macs[strings.ToLower(rep[1])] != owner {
				t.Errorf("%s: ARP reply from %s, not from the owner node%02d:\n%s", when, rep[1], owner, out)
			}
		}
		// MetalLB's metrics: the owner counts the requests it answered; every agent the pool.
		if got := scrapeMetrics(t, e.Node(owner).NS)[`metallb_layer2_responses_sent{ip="10.0.0.51"}`]; got < float64(len(replies)) {
			t.Errorf("%s: owner's metallb_layer2_responses_sent %v, want at least the %d replies seen", when, got, len(replies))
		}
		for _, n := range e.Nodes {
			m := scrapeMetrics(t, n.NS)
			if m[`metallb_allocator_addresses_total{pool="localip-pool"}`] != 30 || m[`metallb_allocator_addresses_in_use_total{pool="localip-pool"}`] != 1 {
				t.Errorf("%s: %s's allocator metrics: total %v, in use %v; want 30 and 1", when, n.Name,
					m[`metallb_allocator_addresses_total{pool="localip-pool"}`], m[`metallb_allocator_addresses_in_use_total{pool="localip-pool"}`])
			}
		}
		if !Eventually(Scaled(10*time.Second), 50*time.Millisecond, func() bool {
			_, err := Ask(e.Client, "tcp", addr)
			return err == nil
		}) {
			t.Errorf("%s: %s does not answer through node%02d", when, addr, owner)
		}
		return owner
	}
	owner := settle("two nodes selected", 1, 2)
	other := map[int]int{1: 2, 2: 1}[owner]
	// MetalLB's records: the pool annotation and IPAllocated from the status writer, nodeAssigned
	// and one ServiceL2Status from the announcing node.
	lbSvc, err := cp.Client.CoreV1().Services("default").Get(ctx, "demoapp-lb", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if a := lbSvc.Annotations; a["metallb.io/ip-allocated-from-pool"] != "localip-pool" || a["metallb.universe.tf/ip-allocated-from-pool"] != "localip-pool" {
		t.Errorf("demoapp-lb's annotations %v, want ip-allocated-from-pool localip-pool", a)
	}
	wantEvent := func(reason, message string) {
		t.Helper()
		var seen []string
		if !Eventually(Scaled(20*time.Second), 200*time.Millisecond, func() bool {
			evs, err := cp.Client.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=demoapp-lb,reason=" + reason})
			if err != nil {
				return false
			}
			seen = nil
			for _, ev := range evs.Items {
				seen = append(seen, ev.Message)
				if ev.Message == message && ev.InvolvedObject.UID == lbSvc.UID {
					return true
				}
			}
			return false
		}) {
			t.Errorf("no Event %s %q on demoapp-lb; saw %q", reason, message, seen)
		}
	}
	wantEvent("IPAllocated", `Assigned IP ["10.0.0.51"]`)
	wantEvent("nodeAssigned", fmt.Sprintf("announcing from node %q with protocol %q", e.Node(owner).Name, "layer2"))
	wantL2Status := func(when string, node int) {
		t.Helper()
		var got []string
		if !Eventually(Scaled(20*time.Second), 200*time.Millisecond, func() bool {
			got = l2Owners(t, cp, "demoapp-lb")
			return len(got) == 1 && got[0] == e.Node(node).Name
		}) {
			t.Errorf("%s: ServiceL2Status of demoapp-lb names %v, want exactly node%02d", when, got, node)
		}
	}
	wantL2Status("two nodes selected", owner)

	node, err := cp.Client.CoreV1().Nodes().Get(ctx, e.Node(owner).Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	node.Labels["node.kubernetes.io/exclude-from-external-load-balancers"] = ""
	if _, err := cp.Client.CoreV1().Nodes().Update(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	moved := settle(fmt.Sprintf("node%02d excluded", owner), other)
	wantL2Status(fmt.Sprintf("node%02d excluded", owner), other)
	wantEvent("nodeAssigned", fmt.Sprintf("announcing from node %q with protocol %q", e.Node(other).Name, "layer2"))
	fmt.Printf("one view (API mode): 10.0.0.51 owned by node%02d of the two selected nodes; node%02d excluded → node%02d\n", owner, owner, moved)
	// The agents gossip digests of their decisions: each compares with both others and none
	// ever disagreed (the exclude label reached them within the grace period).
	for _, n := range e.Nodes {
		var m map[string]float64
		if !Eventually(Scaled(10*time.Second), 100*time.Millisecond, func() bool {
			m = scrapeMetrics(t, n.NS)
			return m["nodeagent_lb_plan_peers_compared"] == 2
		}) || m["nodeagent_lb_plan_peers_disagreeing"] != 0 || m["nodeagent_lb_plan_disagreements_total"] != 0 {
			t.Errorf("%s: plan check compared %v peers, %v disagreeing, %v disagreements; want 2, 0, 0", n.Name,
				m["nodeagent_lb_plan_peers_compared"], m["nodeagent_lb_plan_peers_disagreeing"], m["nodeagent_lb_plan_disagreements_total"])
		}
	}
	for i, a := range e.agents {
		if exited, err := a.Exited(); exited {
			t.Errorf("agent on node%02d exited: %v\n%s", i, err, a.LogTail(20))
		}
	}
}
