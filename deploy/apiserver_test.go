package deploy_test

import (
	"fmt"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"nodeagent/deploy"
	"nodeagent/test/kube"
)

// TestRBACOnAPIServer applies rbac.yaml to a real kube-apiserver and makes, with the agent's own
// ServiceAccount token, the Lease calls leader election makes, on its Lease and on others: it may
// create, get and update its Lease in its namespace, and may not get, update or delete another
// Lease there, nor touch its Lease's name in another namespace.
func TestRBACOnAPIServer(t *testing.T) {
	cp := kube.StartTest(t, kube.Options{})
	ctx := t.Context()
	cfg, _, err := cp.AgentConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	agent := kubernetes.NewForConfigOrDie(cfg)
	admin := cp.Client
	forbidden := func(what string, err error) {
		t.Helper()
		if !apierrors.IsForbidden(err) {
			t.Errorf("agent %s: %v, want forbidden", what, err)
		}
	}
	lease := func(ns, name string) *coordinationv1.Lease {
		holder := "node01"
		now := metav1.NewMicroTime(time.Now())
		return &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder, AcquireTime: &now, RenewTime: &now}}
	}

	// Its own Lease: create, get, update (what client-go's LeaseLock does).
	own, err := agent.CoordinationV1().Leases(deploy.Namespace).Create(ctx, lease(deploy.Namespace, deploy.Lease), metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("agent create its Lease: %v", err)
	}
	if own, err = agent.CoordinationV1().Leases(deploy.Namespace).Get(ctx, deploy.Lease, metav1.GetOptions{}); err != nil {
		t.Fatalf("agent get its Lease: %v", err)
	}
	node02 := "node02"
	own.Spec.HolderIdentity = &node02
	if _, err := agent.CoordinationV1().Leases(deploy.Namespace).Update(ctx, own, metav1.UpdateOptions{}); err != nil {
		t.Errorf("agent update its Lease: %v", err)
	}
	forbidden("delete its Lease", agent.CoordinationV1().Leases(deploy.Namespace).Delete(ctx, deploy.Lease, metav1.DeleteOptions{}))
	_, err = agent.CoordinationV1().Leases(deploy.Namespace).List(ctx, metav1.ListOptions{})
	forbidden("list Leases", err)

	// Another Lease in its namespace, and its Lease's name in another namespace.
	for _, l := range []*coordinationv1.Lease{lease(deploy.Namespace, "kube-controller-manager"), lease("default", deploy.Lease)} {
		other, err := admin.CoordinationV1().Leases(l.Namespace).Create(ctx, l, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		where := l.Namespace + "/" + l.Name
		_, err = agent.CoordinationV1().Leases(l.Namespace).Get(ctx, l.Name, metav1.GetOptions{})
		forbidden("get Lease "+where, err)
		other.Spec.HolderIdentity = &node02
		_, err = agent.CoordinationV1().Leases(l.Namespace).Update(ctx, other, metav1.UpdateOptions{})
		forbidden("update Lease "+where, err)
		_, err = agent.CoordinationV1().Leases(l.Namespace).Patch(ctx, l.Name, types.MergePatchType, []byte(`{"spec":{"holderIdentity":"x"}}`), metav1.PatchOptions{})
		forbidden("patch Lease "+where, err)
		forbidden("delete Lease "+where, agent.CoordinationV1().Leases(l.Namespace).Delete(ctx, l.Name, metav1.DeleteOptions{}))
	}
	_, err = agent.CoordinationV1().Leases("default").Create(ctx, lease("default", "mine"), metav1.CreateOptions{})
	forbidden("create a Lease outside its namespace", err)

	// Services' status by merge patch (the status writer's call), and not the spec.
	if _, err := admin.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Ports: []corev1.ServicePort{{Port: 80}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	patch := []byte(`{"status":{"loadBalancer":{"ingress":[{"ip":"10.0.0.51"}]}}}`)
	if _, err := agent.CoreV1().Services("default").Patch(ctx, "web", types.MergePatchType, patch, metav1.PatchOptions{}, "status"); err != nil {
		t.Errorf("agent patch services/status: %v", err)
	}
	_, err = agent.CoreV1().Services("default").Patch(ctx, "web", types.MergePatchType, []byte(`{"spec":{"externalIPs":["10.0.0.9"]}}`), metav1.PatchOptions{})
	forbidden("patch a Service's spec", err)
	// Secrets: the basic-auth ones of its own namespace, by list with the field selector the
	// source uses (the API server accepts it), and nothing else.
	if _, err := admin.CoreV1().Secrets(deploy.Namespace).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "bgp-auth"},
		Type: corev1.SecretTypeBasicAuth, Data: map[string][]byte{"password": []byte("s3cret")}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	basicAuth := metav1.ListOptions{FieldSelector: "type=" + string(corev1.SecretTypeBasicAuth)}
	if l, err := agent.CoreV1().Secrets(deploy.Namespace).List(ctx, basicAuth); err != nil {
		t.Errorf("agent list basic-auth Secrets in %s: %v", deploy.Namespace, err)
	} else if len(l.Items) != 1 {
		t.Errorf("agent listed %d basic-auth Secrets in %s, want 1", len(l.Items), deploy.Namespace)
	}
	_, err = agent.CoreV1().Secrets("default").List(ctx, basicAuth)
	forbidden("list Secrets in default", err)
	_, err = agent.CoreV1().Secrets("").List(ctx, basicAuth)
	forbidden("list Secrets cluster-wide", err)
	_, err = agent.CoreV1().Secrets(deploy.Namespace).Get(ctx, "bgp-auth", metav1.GetOptions{})
	forbidden("get a Secret", err)
}

// TestCRDsOnAPIServer installs crds.yaml on a real kube-apiserver (CEL rules included) and checks
// that it stores what the agent decodes and refuses what it could not: a duration that is not one
// (holdTime "ninety"), one that overflows or that BGP cannot carry, a pool without addresses or
// with a negative priority, a malformed community or interface name.
func TestCRDsOnAPIServer(t *testing.T) {
	cp := kube.StartTest(t, kube.Options{})
	ctx := t.Context()
	if err := cp.InstallCRDs(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := cp.Apply(ctx, []byte("apiVersion: v1\nkind: Namespace\nmetadata: {name: metallb-system}\n")); err != nil {
		t.Fatal(err)
	}
	n := 0
	peer := func(version, times string) string {
		n++ // a name per object: server-side apply of one object through both versions trips on
		// fields only v1beta2 declares
		return "apiVersion: metallb.io/" + version + "\nkind: BGPPeer\nmetadata: {name: p" + fmt.Sprint(n) + ", namespace: metallb-system}\n" +
			"spec: {myASN: 64512, peerASN: 64513, peerAddress: 10.0.0.254" + times + "}\n"
	}
	good := []string{
		peer("v1beta2", ", holdTime: 90s, keepaliveTime: 30s, connectTime: 10s, routerID: 10.0.0.1"),
		peer("v1beta2", ", holdTime: \"0\", keepaliveTime: 0s"),
		peer("v1beta1", ", holdTime: 1m30s, keepaliveTime: 500ms"),
		"apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: pool, namespace: metallb-system}\n" +
			"spec: {addresses: [10.0.0.0/24, 10.0.1.1 - 10.0.1.9, 'fd00::/120'], serviceAllocation: {priority: 0}}\n",
		"apiVersion: metallb.io/v1beta1\nkind: Community\nmetadata: {name: c, namespace: metallb-system}\n" +
			"spec: {communities: [{name: a, value: '65535:65282'}, {name: b, value: 'large:1:2:3'}]}\n",
		"apiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: l2, namespace: metallb-system}\nspec: {interfaces: [ens33, eth0.100]}\n",
	}
	for _, m := range good {
		if _, err := cp.Apply(ctx, []byte(m)); err != nil {
			t.Errorf("refused: %v\n%s", err, m)
		}
	}
	bad := []string{
		peer("v1beta2", ", holdTime: ninety"),
		peer("v1beta1", ", holdTime: ninety"),
		peer("v1beta2", ", keepaliveTime: \"30\""),
		peer("v1beta2", ", holdTime: 9999999999h"),
		peer("v1beta2", ", holdTime: 2s"),
		peer("v1beta2", ", holdTime: 70000s"),
		peer("v1beta2", ", connectTime: 500ms"),
		peer("v1beta2", ", routerID: fd00::1"),
		"apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: pool2, namespace: metallb-system}\nspec: {addresses: []}\n",
		"apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: pool3, namespace: metallb-system}\n" +
			"spec: {addresses: [10.0.0.0/24], serviceAllocation: {priority: -1}}\n",
		"apiVersion: metallb.io/v1beta1\nkind: Community\nmetadata: {name: c2, namespace: metallb-system}\nspec: {communities: [{name: a, value: 'no:pe'}]}\n",
		"apiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: l2b, namespace: metallb-system}\nspec: {interfaces: ['a/b']}\n",
	}
	for _, m := range bad {
		if _, err := cp.Apply(ctx, []byte(m)); !apierrors.IsInvalid(err) {
			t.Errorf("not refused as invalid (%v):\n%s", err, m)
		}
	}
}
