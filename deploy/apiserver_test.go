package deploy_test

import (
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
	_, err = agent.CoreV1().Secrets("kube-system").List(ctx, metav1.ListOptions{})
	forbidden("list Secrets", err)
}
