package kube

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"nodeagent/lb"
)

var (
	poolResource = schema.GroupVersionResource{Group: "metallb.io", Version: "v1beta1", Resource: "ipaddresspools"}
	l2Resource   = schema.GroupVersionResource{Group: "metallb.io", Version: "v1beta1", Resource: "l2advertisements"}
	peerV1beta1  = schema.GroupVersionResource{Group: "metallb.io", Version: "v1beta1", Resource: "bgppeers"}
	peerV1beta2  = schema.GroupVersionResource{Group: "metallb.io", Version: "v1beta2", Resource: "bgppeers"}
	bgpAdvert    = schema.GroupVersionResource{Group: "metallb.io", Version: "v1beta1", Resource: "bgpadvertisements"}
)

const metallbNS = "metallb-system"

// TestControlPlane runs one control plane through what the agent's tests and the benchmark rely
// on, in order: core objects, the MetalLB CRDs and the seed's manifest, the agent's RBAC, and an
// API server restart that must keep all of it.
func TestControlPlane(t *testing.T) {
	cp := StartTest(t, Options{})
	ctx := t.Context()
	var uids = map[string]types.UID{}

	t.Run("ServiceAndEndpointSlice", func(t *testing.T) {
		svc, slice := createDemoapp(t, ctx, cp.Client)
		uids["service"], uids["slice"] = svc.UID, slice.UID
		ip, err := netip.ParseAddr(svc.Spec.ClusterIP)
		if err != nil || !netip.MustParsePrefix(ServiceCIDR).Contains(ip) {
			t.Errorf("cluster IP %q not allocated from %s", svc.Spec.ClusterIP, ServiceCIDR)
		}
		got, err := cp.Client.CoreV1().Services("default").Get(ctx, "demoapp", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got.Spec.ClusterIP != svc.Spec.ClusterIP || got.Spec.Ports[0].TargetPort.IntValue() != 80 {
			t.Errorf("service read back as %+v", got.Spec)
		}
		slices, err := cp.Client.DiscoveryV1().EndpointSlices("default").List(ctx,
			metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=demoapp"})
		if err != nil {
			t.Fatal(err)
		}
		if len(slices.Items) != 1 || len(slices.Items[0].Endpoints) != 2 ||
			slices.Items[0].Endpoints[1].Addresses[0] != "10.244.2.2" {
			t.Errorf("endpoint slices read back as %+v", slices.Items)
		}
	})

	t.Run("MetalLBSeed", func(t *testing.T) {
		if _, err := cp.Client.CoreV1().Namespaces().Create(ctx,
			&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: metallbNS}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if err := cp.InstallCRDs(ctx); err != nil {
			t.Fatal(err)
		}
		t.Logf("CRDs established in %v", time.Since(start).Round(time.Millisecond))
		seed, err := os.ReadFile("testdata/metallb.yaml")
		if err != nil {
			t.Fatal(err)
		}
		applied, err := cp.Apply(ctx, seed)
		if err != nil {
			t.Fatal(err)
		}
		if len(applied) != 2 {
			t.Fatalf("applied %d objects, want 2", len(applied))
		}
		pool := getPool(t, ctx, cp.Dynamic)
		uids["pool"] = pool.UID
		if !slices.Equal(pool.Spec.Addresses, []string{"10.0.0.51-10.0.0.80"}) || pool.Spec.AutoAssign == nil ||
			!*pool.Spec.AutoAssign || !pool.Spec.AvoidBuggyIPs {
			t.Errorf("pool read back as %+v", pool.Spec)
		}
		u, err := cp.Dynamic.Resource(l2Resource).Namespace(metallbNS).Get(ctx, "localip-pool-l2a", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var l2 lb.L2Advertisement
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &l2); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(l2.Spec.IPAddressPools, []string{"localip-pool"}) || !slices.Equal(l2.Spec.Interfaces, []string{"ens33"}) {
			t.Errorf("L2Advertisement read back as %+v", l2.Spec)
		}
	})

	t.Run("MetalLBSchemas", func(t *testing.T) {
		// Defaults of the schema apply, and the deprecated BGPPeer version is stored as v1beta2
		// and read back through both.
		_, err := cp.Apply(ctx, []byte(`
apiVersion: metallb.io/v1beta1
kind: BGPAdvertisement
metadata: {name: adv, namespace: metallb-system}
spec: {ipAddressPools: [localip-pool]}
---
apiVersion: metallb.io/v1beta1
kind: BGPPeer
metadata: {name: router, namespace: metallb-system}
spec: {myASN: 64512, peerASN: 4200000000, peerAddress: 10.0.0.254, holdTime: 90s}
`))
		if err != nil {
			t.Fatal(err)
		}
		adv, err := cp.Dynamic.Resource(bgpAdvert).Namespace(metallbNS).Get(ctx, "adv", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if n, _, _ := unstructured.NestedInt64(adv.Object, "spec", "aggregationLength"); n != 32 {
			t.Errorf("aggregationLength = %d, want the schema's default 32", n)
		}
		u, err := cp.Dynamic.Resource(peerV1beta2).Namespace(metallbNS).Get(ctx, "router", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var peer lb.BGPPeer
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &peer); err != nil {
			t.Fatal(err)
		}
		if u.GetAPIVersion() != "metallb.io/v1beta2" || peer.Spec.ASN != 4200000000 || peer.Spec.Address != "10.0.0.254" ||
			peer.Spec.HoldTime == nil || peer.Spec.HoldTime.Duration != 90*time.Second || peer.Spec.Port != 179 {
			t.Errorf("BGPPeer read back as %s %+v", u.GetAPIVersion(), peer.Spec)
		}
		_, err = cp.Apply(ctx, []byte(`
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {name: bad, namespace: metallb-system}
spec: {myASN: 64512, peerASN: 4294967296, peerAddress: 10.0.0.254}
`))
		if !apierrors.IsInvalid(err) {
			t.Errorf("a peer ASN beyond 32 bits was not refused as invalid: %v", err)
		}
		if _, err := cp.Dynamic.Resource(peerV1beta1).Namespace(metallbNS).Get(ctx, "router", metav1.GetOptions{}); err != nil {
			t.Errorf("BGPPeer through v1beta1: %v", err)
		}
	})

	t.Run("AgentRBAC", func(t *testing.T) {
		cfg, kubeconfig, err := cp.AgentConfig(ctx)
		if err != nil {
			t.Fatal(err)
		}
		agent := kubernetes.NewForConfigOrDie(cfg)
		review := func(ns, verb, group, resource, sub string) bool {
			t.Helper()
			r, err := agent.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
				Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
					Namespace: ns, Verb: verb, Group: group, Resource: resource, Subresource: sub}},
			}, metav1.CreateOptions{})
			if err != nil {
				t.Fatalf("access review %s %s: %v", verb, resource, err)
			}
			return r.Status.Allowed
		}
		type access struct{ verb, group, resource, sub string }
		allowed := []access{
			{"list", "", "services", ""}, {"watch", "", "services", ""}, {"watch", "discovery.k8s.io", "endpointslices", ""},
			{"list", "", "nodes", ""}, {"patch", "", "services", "status"}, {"create", "", "events", ""}, {"patch", "", "events", ""},
			{"watch", "metallb.io", "ipaddresspools", ""}, {"list", "metallb.io", "l2advertisements", ""},
			{"list", "metallb.io", "bgppeers", ""}, {"list", "metallb.io", "bgpadvertisements", ""}, {"list", "metallb.io", "communities", ""},
		}
		denied := []access{
			{"delete", "", "services", ""}, {"create", "", "services", ""}, {"update", "", "services", ""},
			{"create", "discovery.k8s.io", "endpointslices", ""}, {"update", "", "nodes", ""}, {"get", "", "secrets", ""},
			{"update", "metallb.io", "ipaddresspools", ""}, {"delete", "coordination.k8s.io", "leases", ""},
			// Leases only in deploy.Namespace, and only its own (deploy's tests check those).
			{"create", "coordination.k8s.io", "leases", ""}, {"update", "coordination.k8s.io", "leases", ""},
			{"update", "", "services", "status"},
		}
		for _, a := range allowed {
			if !review("default", a.verb, a.group, a.resource, a.sub) {
				t.Errorf("agent may not %s %s/%s.%s", a.verb, a.resource, a.sub, a.group)
			}
		}
		for _, a := range denied {
			if review("default", a.verb, a.group, a.resource, a.sub) {
				t.Errorf("agent may %s %s/%s.%s", a.verb, a.resource, a.sub, a.group)
			}
		}

		// And real calls, the way the agent makes them.
		svc, err := cp.Client.CoreV1().Services("default").Get(ctx, "demoapp", metav1.GetOptions{})
		if err != nil {
			t.Fatalf("get service: %v", err)
		}
		if _, err := agent.CoreV1().Services("default").Patch(ctx, "demoapp", types.MergePatchType,
			[]byte(`{"status":{"loadBalancer":{"ingress":[{"ip":"10.0.0.51"}]}}}`), metav1.PatchOptions{}, "status"); err != nil {
			t.Errorf("agent patch services/status: %v", err)
		}
		svc.Spec.ExternalIPs = []string{"10.0.0.200"}
		if _, err := agent.CoreV1().Services("default").Update(ctx, svc, metav1.UpdateOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("agent update service spec: %v, want forbidden", err)
		}
		if err := agent.CoreV1().Services("default").Delete(ctx, "demoapp", metav1.DeleteOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("agent delete service: %v, want forbidden", err)
		}
		if _, err := agent.CoreV1().Secrets(metallbNS).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("agent list secrets: %v, want forbidden", err)
		}
		if _, err := agent.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{}); err != nil {
			t.Errorf("agent list endpoint slices: %v", err)
		}
		// The kubeconfig carries the same identity, for agents run as processes.
		kcfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			t.Fatal(err)
		}
		if cp.opts.NetNS == "" {
			pools, err := dynamic.NewForConfigOrDie(kcfg).Resource(poolResource).Namespace(metallbNS).List(ctx, metav1.ListOptions{})
			if err != nil || len(pools.Items) != 1 {
				t.Errorf("agent (kubeconfig) list pools: %v, %d pools", err, len(pools.Items))
			}
		}
	})

	t.Run("RestartKeepsState", func(t *testing.T) {
		start := time.Now()
		if err := cp.Restart(ctx); err != nil {
			t.Fatal(err)
		}
		t.Logf("API server restarted in %v", time.Since(start).Round(time.Millisecond))
		svc, err := cp.Client.CoreV1().Services("default").Get(ctx, "demoapp", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if svc.UID != uids["service"] || len(svc.Status.LoadBalancer.Ingress) != 1 ||
			svc.Status.LoadBalancer.Ingress[0].IP != "10.0.0.51" {
			t.Errorf("service after restart: uid %s (was %s), status %+v", svc.UID, uids["service"], svc.Status)
		}
		slice, err := cp.Client.DiscoveryV1().EndpointSlices("default").Get(ctx, "demoapp-abc12", metav1.GetOptions{})
		if err != nil || slice.UID != uids["slice"] {
			t.Errorf("endpoint slice after restart: %v", err)
		}
		if pool := getPool(t, ctx, cp.Dynamic); pool.UID != uids["pool"] {
			t.Errorf("pool after restart: uid %s, was %s", pool.UID, uids["pool"])
		}
		// Writes work again too.
		if _, err := cp.Apply(ctx, []byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: after-restart}\n")); err != nil {
			t.Errorf("write after restart: %v", err)
		}
	})
}

func createDemoapp(t *testing.T, ctx context.Context, c kubernetes.Interface) (*corev1.Service, *discoveryv1.EndpointSlice) {
	t.Helper()
	svc, err := c.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "demoapp", Labels: map[string]string{"app": "demoapp"}},
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeLoadBalancer,
			Selector: map[string]string{"app": "demoapp"},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create service: %v", err)
	}
	ready := true
	port, name, proto := int32(80), "http", corev1.ProtocolTCP
	slice, err := c.DiscoveryV1().EndpointSlices("default").Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "demoapp-abc12", Labels: map[string]string{
			discoveryv1.LabelServiceName: "demoapp", discoveryv1.LabelManagedBy: "nodeagent-test"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.244.1.2"}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}, NodeName: ptr("node01")},
			{Addresses: []string{"10.244.2.2"}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}, NodeName: ptr("node02")},
		},
		Ports: []discoveryv1.EndpointPort{{Name: &name, Port: &port, Protocol: &proto}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create endpoint slice: %v", err)
	}
	return svc, slice
}

func getPool(t *testing.T, ctx context.Context, d dynamic.Interface) *lb.IPAddressPool {
	t.Helper()
	u, err := d.Resource(poolResource).Namespace(metallbNS).Get(ctx, "localip-pool", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get pool: %v", err)
	}
	var pool lb.IPAddressPool
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &pool); err != nil {
		t.Fatalf("decode pool: %v", err)
	}
	return &pool
}

func ptr[T any](v T) *T { return &v }

// TestControlPlaneInNetns runs the control plane inside a network namespace this test makes, on
// an address of that namespace, and reaches it from this process through the socket bridge.
func TestControlPlaneInNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	if _, err := exec.LookPath("socat"); err != nil {
		t.Skip("no socat (scripts/deps.sh installs it)")
	}
	ns := fmt.Sprintf("na-kube-%d", os.Getpid())
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	run("netns", "add", ns)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("delete netns %s: %v\n%s", ns, err, out)
		}
	})
	run("-n", ns, "link", "set", "lo", "up")
	// An address of the lab's LAN, on the namespace's own loopback: nothing outside it sees it.
	run("-n", ns, "addr", "add", "10.0.0.250/32", "dev", "lo")

	cp := StartTest(t, Options{NetNS: ns, Address: netip.MustParseAddr("10.0.0.250")})
	if cp.Host != "https://10.0.0.250:6443" {
		t.Errorf("host = %s", cp.Host)
	}
	ctx := t.Context()
	createDemoapp(t, ctx, cp.Client)
	if err := cp.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := cp.Client.CoreV1().Services("default").Get(ctx, "demoapp", metav1.GetOptions{}); err != nil {
		t.Errorf("service after restart in %s: %v", ns, err)
	}
	// A process in the namespace reaches the server with the admin kubeconfig.
	kubeconfigCheck := exec.Command("ip", "netns", "exec", ns, "curl", "-sS", "--cacert", cp.Dir+"/ca.crt",
		"-H", "Authorization: Bearer "+cp.AdminToken, cp.Host+"/api/v1/namespaces/default/services/demoapp")
	if out, err := kubeconfigCheck.CombinedOutput(); err != nil {
		t.Errorf("curl inside %s: %v\n%s", ns, err, out)
	}
}

func TestDecode(t *testing.T) {
	objs, err := Decode([]byte("---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n# only a comment\n---\n{\"apiVersion\": \"v1\", \"kind\": \"Namespace\", \"metadata\": {\"name\": \"b\"}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 2 || objs[0].GetName() != "a" || objs[1].GetName() != "b" {
		t.Errorf("decoded %d objects", len(objs))
	}
	if _, err := Decode([]byte("metadata: {name: a}\n")); err == nil {
		t.Error("a document without kind decoded")
	}
}
