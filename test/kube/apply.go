package kube

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"nodeagent/deploy"
)

// FieldManager is the server-side apply field manager of everything Apply writes.
const FieldManager = "nodeagent-test"

// WriteKubeconfig writes a kubeconfig for Host that authenticates with token as user.
func (cp *ControlPlane) WriteKubeconfig(path, user, token string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["nodeagent-test"] = &clientcmdapi.Cluster{Server: cp.Host, CertificateAuthorityData: cp.CAData}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts[user] = &clientcmdapi.Context{Cluster: "nodeagent-test", AuthInfo: user}
	cfg.CurrentContext = user
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return nil
}

// ServiceAccountToken returns a token for an existing ServiceAccount through the TokenRequest
// API, valid for an hour.
func (cp *ControlPlane) ServiceAccountToken(ctx context.Context, namespace, name string) (string, error) {
	seconds := int64(3600)
	tr, err := cp.Client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &seconds}},
		metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token for service account %s/%s: %w", namespace, name, err)
	}
	return tr.Status.Token, nil
}

// AgentConfig installs deploy/rbac.yaml and returns a client configuration that authenticates as
// the agent's ServiceAccount, and a kubeconfig with the same identity written into Dir (for
// agents run as processes).
func (cp *ControlPlane) AgentConfig(ctx context.Context) (*rest.Config, string, error) {
	if _, err := cp.Apply(ctx, deploy.RBAC); err != nil {
		return nil, "", fmt.Errorf("install agent RBAC: %w", err)
	}
	token, err := cp.ServiceAccountToken(ctx, deploy.Namespace, deploy.ServiceAccount)
	if err != nil {
		return nil, "", err
	}
	path := cp.Dir + "/agent.kubeconfig"
	if err := cp.WriteKubeconfig(path, "system:serviceaccount:"+deploy.Namespace+":"+deploy.ServiceAccount, token); err != nil {
		return nil, "", err
	}
	return cp.TokenConfig(token), path, nil
}

// Decode splits multi-document YAML or JSON into objects, skipping empty documents.
func Decode(data []byte) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var out []*unstructured.Unstructured
	for {
		var obj map[string]any
		err := dec.Decode(&obj)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("decode document %d: %w", len(out)+1, err)
		}
		if len(obj) == 0 {
			continue
		}
		u := &unstructured.Unstructured{Object: obj}
		if u.GetKind() == "" || u.GetAPIVersion() == "" {
			return nil, fmt.Errorf("document %d has no apiVersion or kind", len(out)+1)
		}
		out = append(out, u)
	}
}

// Apply creates or updates every object of a multi-document manifest with server-side apply,
// as `kubectl apply --server-side` would, and returns the objects as the server stored them.
// Namespaced objects without a namespace go to "default". Kinds are resolved through discovery
// at each call, so kinds of CRDs installed just before are known.
func (cp *ControlPlane) Apply(ctx context.Context, manifest []byte) ([]*unstructured.Unstructured, error) {
	objs, err := Decode(manifest)
	if err != nil {
		return nil, err
	}
	groups, err := restmapper.GetAPIGroupResources(cp.Client.Discovery())
	if err != nil {
		return nil, fmt.Errorf("discover API resources: %w", err)
	}
	mapper := restmapper.NewDiscoveryRESTMapper(groups)
	var out []*unstructured.Unstructured
	for _, obj := range objs {
		gvk := obj.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			return out, fmt.Errorf("apply %s %s: %w", gvk.Kind, obj.GetName(), err)
		}
		ri := cp.Dynamic.Resource(m.Resource)
		var applied *unstructured.Unstructured
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			ns := obj.GetNamespace()
			if ns == "" {
				ns = metav1.NamespaceDefault
				obj.SetNamespace(ns)
			}
			applied, err = ri.Namespace(ns).Apply(ctx, obj.GetName(), obj, metav1.ApplyOptions{FieldManager: FieldManager, Force: true})
		} else {
			applied, err = ri.Apply(ctx, obj.GetName(), obj, metav1.ApplyOptions{FieldManager: FieldManager, Force: true})
		}
		if err != nil {
			return out, fmt.Errorf("apply %s %s/%s: %w", gvk.Kind, obj.GetNamespace(), obj.GetName(), err)
		}
		out = append(out, applied)
	}
	return out, nil
}

// crdResource is where CustomResourceDefinitions live.
var crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// InstallCRDs applies deploy/crds.yaml (the MetalLB kinds) and waits until every definition is
// established and every served version is in discovery, so that objects of those kinds can be
// applied right after.
func (cp *ControlPlane) InstallCRDs(ctx context.Context) error {
	return cp.InstallCRDManifest(ctx, deploy.CRDs)
}

// InstallCRDManifest is InstallCRDs for any manifest of CustomResourceDefinitions.
func (cp *ControlPlane) InstallCRDManifest(ctx context.Context, manifest []byte) error {
	crds, err := cp.Apply(ctx, manifest)
	if err != nil {
		return fmt.Errorf("install CRDs: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, cp.opts.StartTimeout)
	defer cancel()
	for _, crd := range crds {
		if crd.GetKind() != "CustomResourceDefinition" {
			return fmt.Errorf("install CRDs: the manifest holds a %s", crd.GetKind())
		}
		if err := cp.waitEstablished(ctx, crd); err != nil {
			return err
		}
	}
	return nil
}

func (cp *ControlPlane) waitEstablished(ctx context.Context, crd *unstructured.Unstructured) error {
	name := crd.GetName()
	group, _, _ := unstructured.NestedString(crd.Object, "spec", "group")
	plural, _, _ := unstructured.NestedString(crd.Object, "spec", "names", "plural")
	versions, _, _ := unstructured.NestedSlice(crd.Object, "spec", "versions")
	var served []string
	for _, v := range versions {
		if m, ok := v.(map[string]any); ok && m["served"] == true {
			served = append(served, m["name"].(string))
		}
	}
	for {
		ok, why, err := cp.crdReady(ctx, name, group, plural, served)
		if ok {
			return nil
		}
		if err != nil && !apierrors.IsNotFound(err) {
			why = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("CRD %s not established: %w (%s)", name, ctx.Err(), why)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// crdReady tells whether a CRD is Established and each served version lists its resource in
// discovery, and if not, why.
func (cp *ControlPlane) crdReady(ctx context.Context, name, group, plural string, served []string) (bool, string, error) {
	got, err := cp.Dynamic.Resource(crdResource).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return false, "", err
	}
	conds, _, _ := unstructured.NestedSlice(got.Object, "status", "conditions")
	established := false
	for _, c := range conds {
		m, _ := c.(map[string]any)
		switch {
		case m["type"] == "Established" && m["status"] == "True":
			established = true
		case m["type"] == "NonStructuralSchema" && m["status"] == "True",
			m["type"] == "NamesAccepted" && m["status"] == "False":
			return false, fmt.Sprintf("%s: %v", m["type"], m["message"]), nil
		}
	}
	if !established {
		return false, "not Established yet", nil
	}
	for _, v := range served {
		list, err := cp.Client.Discovery().ServerResourcesForGroupVersion(group + "/" + v)
		if err != nil {
			return false, "", err
		}
		if !slices.ContainsFunc(list.APIResources, func(r metav1.APIResource) bool { return r.Name == plural }) {
			return false, fmt.Sprintf("%s/%s %s not in discovery yet", group, v, plural), nil
		}
	}
	return true, "", nil
}
