package deploy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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

// policy is rbac.yaml read for authorization: the roles and the bindings.
type policy struct {
	clusterRoles map[string][]rbacv1.PolicyRule
	roles        map[string][]rbacv1.PolicyRule // "namespace/name"
	clusterBinds []rbacv1.ClusterRoleBinding
	binds        []rbacv1.RoleBinding
}

func loadPolicy(t *testing.T) *policy {
	t.Helper()
	p := &policy{clusterRoles: map[string][]rbacv1.PolicyRule{}, roles: map[string][]rbacv1.PolicyRule{}}
	for _, u := range decodeAll(t, RBAC) {
		var err error
		switch u.GetKind() {
		case "ClusterRole":
			var r rbacv1.ClusterRole
			err = runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &r)
			p.clusterRoles[r.Name] = r.Rules
		case "Role":
			var r rbacv1.Role
			err = runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &r)
			p.roles[r.Namespace+"/"+r.Name] = r.Rules
		case "ClusterRoleBinding":
			var b rbacv1.ClusterRoleBinding
			err = runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &b)
			p.clusterBinds = append(p.clusterBinds, b)
		case "RoleBinding":
			var b rbacv1.RoleBinding
			err = runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &b)
			p.binds = append(p.binds, b)
		}
		if err != nil {
			t.Fatalf("%s %s: %v", u.GetKind(), u.GetName(), err)
		}
	}
	return p
}

// request is a resource request as the API server authorizes it: name is empty for create, list
// and watch (RBAC's resourceNames cannot match those).
type request struct{ verb, group, resource, namespace, name string }

func (r request) String() string {
	return fmt.Sprintf("%s %s.%s %s/%s", r.verb, r.resource, r.group, r.namespace, r.name)
}

// agent reports whether the agent's ServiceAccount is bound to a subject list.
func agent(subjects []rbacv1.Subject) bool {
	return slices.ContainsFunc(subjects, func(s rbacv1.Subject) bool {
		return s.Kind == "ServiceAccount" && s.Name == ServiceAccount && s.Namespace == Namespace
	})
}

// allows is RBAC's authorizer for the agent, without wildcards (the policy must spell out what it
// grants): a ClusterRoleBinding grants its ClusterRole everywhere, a RoleBinding grants its Role
// in its own namespace only, and a rule with resourceNames matches requests for those names only.
func (p *policy) allows(r request) bool {
	match := func(rules []rbacv1.PolicyRule) bool {
		return slices.ContainsFunc(rules, func(rule rbacv1.PolicyRule) bool {
			return slices.Contains(rule.APIGroups, r.group) && slices.Contains(rule.Resources, r.resource) &&
				slices.Contains(rule.Verbs, r.verb) &&
				(len(rule.ResourceNames) == 0 || r.name != "" && slices.Contains(rule.ResourceNames, r.name))
		})
	}
	for _, b := range p.clusterBinds {
		if agent(b.Subjects) && b.RoleRef.Kind == "ClusterRole" && match(p.clusterRoles[b.RoleRef.Name]) {
			return true
		}
	}
	for _, b := range p.binds {
		if !agent(b.Subjects) || b.Namespace != r.namespace {
			continue
		}
		rules := p.roles[b.Namespace+"/"+b.RoleRef.Name]
		if b.RoleRef.Kind == "ClusterRole" {
			rules = p.clusterRoles[b.RoleRef.Name]
		}
		if match(rules) {
			return true
		}
	}
	return false
}

func TestRBACObjects(t *testing.T) {
	objs := decodeAll(t, RBAC)
	var kinds []string
	for _, o := range objs {
		kinds = append(kinds, o.GetKind()+"/"+o.GetNamespace()+"/"+o.GetName())
	}
	want := []string{"ServiceAccount/" + Namespace + "/" + ServiceAccount, "ClusterRole//" + ClusterRole,
		"ClusterRoleBinding//" + ClusterRole, "Role/" + Namespace + "/" + LeaderElectionRole,
		"RoleBinding/" + Namespace + "/" + LeaderElectionRole, "Role/" + Namespace + "/" + SecretsRole,
		"RoleBinding/" + Namespace + "/" + SecretsRole}
	if !slices.Equal(kinds, want) {
		t.Fatalf("rbac.yaml objects = %v, want %v", kinds, want)
	}
	p := loadPolicy(t)
	for _, rules := range []map[string][]rbacv1.PolicyRule{p.clusterRoles, p.roles} {
		for name, rs := range rules {
			for _, r := range rs {
				for _, s := range [][]string{r.APIGroups, r.Resources, r.Verbs, r.ResourceNames} {
					if slices.Contains(s, "*") {
						t.Errorf("%s: rule %+v uses a wildcard", name, r)
					}
				}
			}
		}
	}
	if len(p.clusterBinds) != 1 || len(p.binds) != 2 || !agent(p.clusterBinds[0].Subjects) || !agent(p.binds[0].Subjects) ||
		!agent(p.binds[1].Subjects) || len(p.clusterBinds[0].Subjects) != 1 || len(p.binds[0].Subjects) != 1 || len(p.binds[1].Subjects) != 1 {
		t.Errorf("bindings: %+v %+v", p.clusterBinds, p.binds)
	}
}

// TestRBACScope checks what the agent may do, by scope and not only by verb: every call the code
// makes, and nothing beyond. Its own Lease and no other; Secrets only listed and watched in its own
// namespace (BGPPeer passwordSecret); Services' status by patch only.
func TestRBACScope(t *testing.T) {
	p := loadPolicy(t)
	const lease = "coordination.k8s.io"
	var need []request
	for _, res := range []string{"services", "nodes"} {
		need = append(need, request{"list", "", res, "", ""}, request{"watch", "", res, "", ""})
	}
	need = append(need, request{"list", "discovery.k8s.io", "endpointslices", "", ""}, request{"watch", "discovery.k8s.io", "endpointslices", "", ""})
	for _, res := range []string{"ipaddresspools", "l2advertisements", "bgpadvertisements", "bgppeers", "communities", "bfdprofiles"} {
		need = append(need, request{"list", "metallb.io", res, "", ""}, request{"watch", "metallb.io", res, "", ""})
	}
	need = append(need,
		request{"list", "", "secrets", Namespace, ""}, request{"watch", "", "secrets", Namespace, ""},
		request{"patch", "", "services/status", "team", "web"},
		request{"create", "", "events", "team", ""}, request{"patch", "", "events", "team", "web.17f"},
		request{"get", lease, "leases", Namespace, Lease}, request{"update", lease, "leases", Namespace, Lease},
		request{"create", lease, "leases", Namespace, ""})
	for _, r := range need {
		if !p.allows(r) {
			t.Errorf("the agent may not %s, which it needs", r)
		}
	}
	deny := []request{
		// Other Leases, the agent's Lease elsewhere, and verbs leader election never uses.
		{"update", lease, "leases", Namespace, "kube-controller-manager"}, {"get", lease, "leases", Namespace, "kube-scheduler"},
		{"patch", lease, "leases", Namespace, Lease}, {"delete", lease, "leases", Namespace, Lease},
		{"list", lease, "leases", Namespace, ""}, {"watch", lease, "leases", Namespace, ""},
		{"update", lease, "leases", "default", Lease}, {"get", lease, "leases", "default", Lease},
		{"create", lease, "leases", "default", ""}, {"update", lease, "leases", "", Lease},
		// Objects it only reads, and reads by list and watch.
		{"create", "", "services", "team", ""}, {"update", "", "services", "team", "web"}, {"patch", "", "services", "team", "web"},
		{"delete", "", "services", "team", "web"}, {"get", "", "services", "team", "web"}, {"update", "", "services/status", "team", "web"},
		{"create", "discovery.k8s.io", "endpointslices", "team", ""}, {"delete", "discovery.k8s.io", "endpointslices", "team", "web-x"},
		{"update", "", "nodes", "", "node01"}, {"patch", "", "nodes", "", "node01"}, {"update", "", "nodes/status", "", "node01"},
		{"update", "metallb.io", "ipaddresspools", "metallb-system", "pool"}, {"update", "metallb.io", "ipaddresspools/status", "metallb-system", "pool"},
		{"delete", "metallb.io", "bgppeers", "metallb-system", "peer"},
		// What it never reads or writes.
		{"get", "", "secrets", "metallb-system", "bgp-password"}, {"list", "", "secrets", "", ""}, {"watch", "", "secrets", "", ""},
		{"list", "", "secrets", "default", ""}, {"watch", "", "secrets", "metallb-system", ""},
		{"create", "", "secrets", Namespace, ""}, {"update", "", "secrets", Namespace, "bgp-password"}, {"delete", "", "secrets", Namespace, "bgp-password"},
		{"list", "", "pods", "", ""}, {"get", "", "configmaps", "kube-system", "kubeadm-config"},
		{"create", "", "serviceaccounts/token", Namespace, ServiceAccount},
		{"update", "", "events", "team", "web.17f"}, {"delete", "", "events", "team", "web.17f"}, {"create", "events.k8s.io", "events", "team", ""},
	}
	for _, r := range deny {
		if p.allows(r) {
			t.Errorf("the agent may %s, which it never needs", r)
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
	want := []string{"BFDProfile/v1beta1", "BGPAdvertisement/v1beta1", "BGPPeer/v1beta1", "BGPPeer/v1beta2", "Community/v1beta1",
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
		"BFDProfile/v1beta1":       lb.BFDProfileSpec{},
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

// TestCRDDurations: every field lb decodes as a metav1.Duration has a pattern that admits the Go
// durations and refuses what would not decode (holdTime "ninety" made the agent's informer fail
// its whole list), and a CEL rule that parses it (catching overflow) and bounds it.
func TestCRDDurations(t *testing.T) {
	schemas := crdSchemas(t)
	durType := reflect.TypeFor[metav1.Duration]()
	good := []string{"90s", "0", "0s", "1m30s", "1.5h", "100ms", "3s", ".5s", "1h2m3s4ms5us6ns", "2µs"}
	bad := []string{"ninety", "", "90", "-5s", "+5s", "1e3s", "5 s", "5S", "s", "1d", "90s "}
	checked := 0
	for _, k := range []string{"BGPPeer/v1beta1", "BGPPeer/v1beta2"} {
		props, _, _ := unstructured.NestedMap(schemas[k], "properties", "spec", "properties")
		for f := range reflect.TypeFor[lb.BGPPeerSpec]().Fields() {
			if f.Type.Kind() != reflect.Pointer || f.Type.Elem() != durType {
				continue
			}
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			node, ok := props[name].(map[string]any)
			if !ok {
				continue // not in this version
			}
			checked++
			pattern, _ := node["pattern"].(string)
			re, err := regexp.Compile(pattern)
			if pattern == "" || err != nil {
				t.Errorf("%s.%s: pattern %q: %v", k, name, pattern, err)
				continue
			}
			for _, s := range good {
				if !re.MatchString(s) {
					t.Errorf("%s.%s refuses %q", k, name, s)
				}
				if _, err := time.ParseDuration(s); err != nil {
					t.Errorf("%q is not a Go duration: %v", s, err)
				}
			}
			for _, s := range bad {
				if re.MatchString(s) {
					t.Errorf("%s.%s admits %q", k, name, s)
				}
			}
			rules, _ := node["x-kubernetes-validations"].([]any)
			if len(rules) == 0 || !strings.Contains(fmt.Sprint(rules), "duration(self)") {
				t.Errorf("%s.%s: no CEL rule parsing the duration: %v", k, name, rules)
			}
		}
	}
	if checked != 5 {
		t.Errorf("checked %d duration fields, want 5 (holdTime and keepaliveTime in both versions, connectTime in v1beta2)", checked)
	}
}
