package source

import (
	"context"
	"errors"
	"sync"
	"testing"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// secretSink records the Secrets a source delivers.
type secretSink struct {
	mu      sync.Mutex
	secrets map[string]*v1.Secret
	synced  bool
}

func (s *secretSink) Upsert(obj runtime.Object) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sec, ok := obj.(*v1.Secret); ok {
		s.secrets[sec.Namespace+"/"+sec.Name] = sec
	}
}
func (s *secretSink) Delete(runtime.Object) {}
func (s *secretSink) Synced()               { s.mu.Lock(); s.synced = true; s.mu.Unlock() }

// Only basic-auth Secrets of the one namespace reach the sink, with nothing but their password;
// the list and watch are made in that namespace with the type field selector.
func TestKubeSecretsNarrow(t *testing.T) {
	sec := func(ns, name string, typ v1.SecretType) *v1.Secret {
		return &v1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Type: typ,
			Data: map[string][]byte{"password": []byte("pw-" + name), "username": []byte("u")}}
	}
	client := fake.NewClientset(sec("kube-system", "bgp", v1.SecretTypeBasicAuth), sec("kube-system", "token", v1.SecretTypeOpaque),
		sec("default", "bgp", v1.SecretTypeBasicAuth))
	sink := &secretSink{secrets: map[string]*v1.Secret{}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = (&Kube{Client: client, SecretNamespace: "kube-system", Log: quietLog}).Run(ctx, sink) }()
	eventually(t, "synced", func() bool { sink.mu.Lock(); defer sink.mu.Unlock(); return sink.synced })
	sink.mu.Lock()
	got := sink.secrets
	sink.mu.Unlock()
	if len(got) != 1 || got["kube-system/bgp"] == nil {
		t.Fatalf("delivered %v, want only kube-system/bgp", got)
	}
	if d := got["kube-system/bgp"].Data; len(d) != 1 || string(d["password"]) != "pw-bgp" {
		t.Errorf("delivered data %q, want only the password", d)
	}
	for _, a := range client.Actions() {
		if a.GetResource().Resource != "secrets" {
			continue
		}
		if a.GetNamespace() != "kube-system" {
			t.Errorf("%s secrets in namespace %q", a.GetVerb(), a.GetNamespace())
		}
		var sel string
		switch x := a.(type) {
		case k8stesting.ListAction:
			sel = x.GetListRestrictions().Fields.String()
		case k8stesting.WatchAction:
			sel = x.GetWatchRestrictions().Fields.String()
		}
		if sel != "type=kubernetes.io/basic-auth" {
			t.Errorf("%s secrets with field selector %q", a.GetVerb(), sel)
		}
	}
}

// A role that may not list Secrets there still syncs, without them.
func TestKubeWithoutSecretAccess(t *testing.T) {
	client := fake.NewClientset(&v1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "bgp"}, Type: v1.SecretTypeBasicAuth})
	forbid := func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(v1.Resource("secrets"), "", errors.New("RBAC"))
	}
	client.PrependReactor("list", "secrets", forbid)
	client.PrependWatchReactor("secrets", func(k8stesting.Action) (bool, watch.Interface, error) {
		return true, nil, apierrors.NewForbidden(v1.Resource("secrets"), "", errors.New("RBAC"))
	})
	sink := &secretSink{secrets: map[string]*v1.Secret{}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = (&Kube{Client: client, SecretNamespace: "kube-system", Log: quietLog}).Run(ctx, sink) }()
	eventually(t, "synced", func() bool { sink.mu.Lock(); defer sink.mu.Unlock(); return sink.synced })
}
