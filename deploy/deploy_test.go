package deploy

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"slices"
	"strings"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"nodeagent/lb"
)

func decodeAll(t *testing.T, data []byte) []*unstructured.Unstructured {
	t.Helper()
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var out []*unstructured.Unstructured
	for {
		var obj map[string]any
		if err := dec.Decode(&obj); errors.Is(err, io.EOF) {
			return out
		} else if err != nil {
			t.Fatalf("decode document %d: %v", len(out)+1, err)
		}
		if obj == nil {
			continue
		}
		out = append(out, &unstructured.Unstructured{Object: obj})
	}
}

func clusterRole(t *testing.T) *rbacv1.ClusterRole {
	t.Helper()
	for _, u := range decodeAll(t, RBAC) {
		if u.GetKind() != "ClusterRole" {
			continue
		}
		var cr rbacv1.ClusterRole
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &cr); err != nil {
			t.Fatalf("ClusterRole: %v", err)
		}
		return &cr
	}
	t.Fatal("rbac.yaml has no ClusterRole")
	return nil
}

// allows is RBAC's rule matching for resource requests, without wildcards: the role must spell
// out what it grants.
func allows(cr *rbacv1.ClusterRole, group, resource, verb string) bool {
	for _, r := range cr.Rules {
		if slices.Contains(r.APIGroups, group) && slices.Contains(r.Resources, resource) && slices.Contains(r.Verbs, verb) {
			return true
		}
	}
	return false
}

func TestRBACObjects(t *testing.T) {
	objs := decodeAll(t, RBAC)
	var kinds []string
	for _, o := range objs {
		kinds = append(kinds, o.GetKind()+"/"+o.GetName())
	}
	want := []string{"ServiceAccount/" + ServiceAccount, "ClusterRole/" + ClusterRole, "ClusterRoleBinding/" + ClusterRole}
	if !slices.Equal(kinds, want) {
		t.Fatalf("rbac.yaml objects = %v, want %v", kinds, want)
	}
	if ns := objs[0].GetNamespace(); ns != Namespace {
		t.Errorf("ServiceAccount namespace = %q, want %q", ns, Namespace)
	}
	var crb rbacv1.ClusterRoleBinding
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(objs[2].Object, &crb); err != nil {
		t.Fatal(err)
	}
	if crb.RoleRef.Kind != "ClusterRole" || crb.RoleRef.Name != ClusterRole {
		t.Errorf("binding refers to %s/%s", crb.RoleRef.Kind, crb.RoleRef.Name)
	}
	if len(crb.Subjects) != 1 || crb.Subjects[0].Kind != "ServiceAccount" ||
		crb.Subjects[0].Name != ServiceAccount || crb.Subjects[0].Namespace != Namespace {
		t.Errorf("binding subjects = %+v", crb.Subjects)
	}
}

func TestClusterRoleIsMinimal(t *testing.T) {
	cr := clusterRole(t)
	for _, r := range cr.Rules {
		for _, s := range [][]string{r.APIGroups, r.Resources, r.Verbs} {
			if slices.Contains(s, "*") {
				t.Errorf("rule %+v uses a wildcard", r)
			}
		}
	}
	type access struct{ group, resource, verb string }
	read := func(group, resource string) []access {
		return []access{{group, resource, "get"}, {group, resource, "list"}, {group, resource, "watch"}}
	}
	var need []access
	need = append(need, read("", "services")...)
	need = append(need, read("", "nodes")...)
	need = append(need, read("", "namespaces")...)
	need = append(need, read("discovery.k8s.io", "endpointslices")...)
	for _, r := range []string{"ipaddresspools", "l2advertisements", "bgpadvertisements", "bgppeers", "communities"} {
		need = append(need, read("metallb.io", r)...)
	}
	need = append(need,
		access{"", "services/status", "update"}, access{"", "services/status", "patch"},
		access{"coordination.k8s.io", "leases", "create"}, access{"coordination.k8s.io", "leases", "update"},
		access{"coordination.k8s.io", "leases", "get"},
		access{"", "events", "create"}, access{"", "events", "patch"},
		access{"events.k8s.io", "events", "create"})
	for _, a := range need {
		if !allows(cr, a.group, a.resource, a.verb) {
			t.Errorf("ClusterRole does not allow %s %s.%s", a.verb, a.resource, a.group)
		}
	}
	deny := []access{
		{"", "services", "create"}, {"", "services", "update"}, {"", "services", "patch"}, {"", "services", "delete"},
		{"discovery.k8s.io", "endpointslices", "create"}, {"discovery.k8s.io", "endpointslices", "delete"},
		{"", "nodes", "update"}, {"", "nodes", "patch"}, {"", "secrets", "get"}, {"", "secrets", "list"},
		{"", "pods", "list"}, {"metallb.io", "ipaddresspools", "update"}, {"coordination.k8s.io", "leases", "delete"},
	}
	for _, a := range deny {
		if allows(cr, a.group, a.resource, a.verb) {
			t.Errorf("ClusterRole allows %s %s.%s, which the agent never needs", a.verb, a.resource, a.group)
		}
	}
}

// crdSchemas maps "Kind/version" to that version's openAPIV3Schema.
func crdSchemas(t *testing.T) map[string]map[string]any {
	t.Helper()
	out := map[string]map[string]any{}
	for _, u := range decodeAll(t, CRDs) {
		if u.GetKind() != "CustomResourceDefinition" || u.GetAPIVersion() != "apiextensions.k8s.io/v1" {
			t.Fatalf("crds.yaml holds %s %s", u.GetAPIVersion(), u.GetKind())
		}
		kind, _, _ := unstructured.NestedString(u.Object, "spec", "names", "kind")
		plural, _, _ := unstructured.NestedString(u.Object, "spec", "names", "plural")
		group, _, _ := unstructured.NestedString(u.Object, "spec", "group")
		if group != lb.GroupName || u.GetName() != plural+"."+group {
			t.Errorf("CRD %s: group %q plural %q", u.GetName(), group, plural)
		}
		versions, _, _ := unstructured.NestedSlice(u.Object, "spec", "versions")
		storage := 0
		for _, v := range versions {
			v := v.(map[string]any)
			if v["storage"] == true {
				storage++
			}
			schema, _, _ := unstructured.NestedMap(v, "schema", "openAPIV3Schema")
			out[kind+"/"+v["name"].(string)] = schema
		}
		if storage != 1 {
			t.Errorf("CRD %s has %d storage versions", u.GetName(), storage)
		}
	}
	return out
}

func TestCRDKindsAndVersions(t *testing.T) {
	var got []string
	for k := range crdSchemas(t) {
		got = append(got, k)
	}
	slices.Sort(got)
	want := []string{"BGPAdvertisement/v1beta1", "BGPPeer/v1beta1", "BGPPeer/v1beta2", "Community/v1beta1",
		"IPAddressPool/v1beta1", "L2Advertisement/v1beta1"}
	if !slices.Equal(got, want) {
		t.Fatalf("CRD versions = %v, want %v", got, want)
	}
}

// TestCRDSchemasAreStructural checks the rule the API server enforces for apiextensions/v1: every
// node of the schema says its type (unless it opts out of pruning), so that a wrong schema fails
// here rather than on a cluster.
func TestCRDSchemasAreStructural(t *testing.T) {
	var walk func(path string, n map[string]any)
	walk = func(path string, n map[string]any) {
		if _, ok := n["type"]; !ok && n["x-kubernetes-preserve-unknown-fields"] != true && n["x-kubernetes-int-or-string"] != true {
			t.Errorf("%s: no type", path)
		}
		if props, ok := n["properties"].(map[string]any); ok {
			for name, p := range props {
				walk(path+"."+name, p.(map[string]any))
			}
		}
		if items, ok := n["items"].(map[string]any); ok {
			walk(path+"[]", items)
		}
		if ap, ok := n["additionalProperties"].(map[string]any); ok {
			walk(path+"{}", ap)
		}
	}
	for k, s := range crdSchemas(t) {
		walk(k, s)
	}
}

// TestCRDsKeepEveryFieldTheAgentReads guards against the API server's pruning: a field that lb's
// types decode but the schema does not declare would be silently dropped on its way into etcd.
func TestCRDsKeepEveryFieldTheAgentReads(t *testing.T) {
	schemas := crdSchemas(t)
	specs := map[string]any{
		"IPAddressPool/v1beta1":    lb.IPAddressPoolSpec{},
		"L2Advertisement/v1beta1":  lb.L2AdvertisementSpec{},
		"BGPAdvertisement/v1beta1": lb.BGPAdvertisementSpec{},
		"Community/v1beta1":        lb.CommunitySpec{},
		"BGPPeer/v1beta2":          lb.BGPPeerSpec{},
	}
	for k, spec := range specs {
		s, ok := schemas[k]
		if !ok {
			t.Errorf("no schema for %s", k)
			continue
		}
		node, _, _ := unstructured.NestedMap(s, "properties", "spec")
		checkFields(t, k+".spec", reflect.TypeOf(spec), node)
	}
}

// checkFields walks a Go struct of package lb alongside its schema node; fields of types from other
// packages (label selectors, durations, secret references) are checked by name only.
func checkFields(t *testing.T, path string, typ reflect.Type, node map[string]any) {
	t.Helper()
	props, _ := node["properties"].(map[string]any)
	for f := range typ.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "" || name == "-" {
			continue
		}
		p, ok := props[name].(map[string]any)
		if !ok {
			t.Errorf("%s.%s: lb decodes it, the CRD schema does not declare it", path, name)
			continue
		}
		ft := f.Type
		for ft.Kind() == reflect.Pointer || ft.Kind() == reflect.Slice {
			ft = ft.Elem()
			if items, ok := p["items"].(map[string]any); ok {
				p = items
			}
		}
		if ft.Kind() == reflect.Struct && ft.PkgPath() == reflect.TypeFor[lb.IPAddressPool]().PkgPath() {
			checkFields(t, path+"."+name, ft, p)
		}
	}
}
