package source

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

func TestDecodeDocuments(t *testing.T) {
	const manifest = `# leading comment, not a document
---
apiVersion: v1
kind: Service
metadata: {name: a}
spec: {ports: [{port: 80}]}
---
# only a comment
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: skipped}
spec: {}
--- # a separator with a comment
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Node
  metadata: {name: node01, namespace: ignored}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: s, namespace: other}
  addressType: IPv4
  endpoints: []
---
apiVersion: v1
kind: ServiceList
items:
- metadata: {name: typed}
  spec: {ports: [{port: 81}]}
`
	p := decodeFile("f.yaml", []byte(manifest))
	if !p.ok || len(p.problems) > 0 {
		t.Fatalf("ok=%v problems=%v", p.ok, p.problems)
	}
	type want struct {
		key       Key
		doc, item int
	}
	wants := []want{
		{svcKey("default", "a"), 1, 0},
		{Key{GroupKind: nodeKind, Name: "node01"}, 3, 1},
		{sliceKey("other", "s"), 3, 2},
		{svcKey("default", "typed"), 4, 1},
	}
	if len(p.docs) != len(wants) {
		t.Fatalf("got %d objects, want %d", len(p.docs), len(wants))
	}
	for i, w := range wants {
		d := p.docs[i]
		if d.key != w.key || d.doc != w.doc || d.item != w.item {
			t.Errorf("object %d: got %v doc %d item %d, want %v doc %d item %d", i, d.key, d.doc, d.item, w.key, w.doc, w.item)
		}
	}
	if svc := p.docs[3].obj.(*v1.Service); svc.Kind != "Service" || svc.APIVersion != "v1" {
		t.Errorf("typed list item has TypeMeta %+v, want v1 Service", svc.TypeMeta)
	}
}

func TestDecodeJSON(t *testing.T) {
	const manifest = `{"apiVersion": "v1", "kind": "Service",
	"metadata": {"name": "a", "namespace": "ns"}, "spec": {"ports": [{"port": 80}]}}
{"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "b"},
	"addressType": "IPv6", "endpoints": [{"addresses": ["fd00::1"]}]}`
	p := decodeFile("f.json", []byte(manifest))
	if !p.ok || len(p.docs) != 2 {
		t.Fatalf("ok=%v docs=%d problems=%v", p.ok, len(p.docs), p.problems)
	}
	if es := p.docs[1].obj.(*discoveryv1.EndpointSlice); es.AddressType != discoveryv1.AddressTypeIPv6 || es.Namespace != "default" {
		t.Errorf("slice decoded as %+v", es)
	}
}

func TestDecodeProblems(t *testing.T) {
	for _, tc := range []struct {
		name, manifest string
		want           string // in the problem's text
		docs           int    // objects still decoded from the file
	}{
		{"syntax", "apiVersion: v1\nkind: Service\nmetadata: {name: a\n", "invalid YAML", 0},
		{"unknown field", "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {prots: []}\n", `unknown field "spec.prots"`, 0},
		{"wrong type", "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: eighty}]}\n", "Service default/a", 0},
		{"duplicate key", "apiVersion: v1\nkind: Service\nkind: Service\nmetadata: {name: a}\n", `key "kind" already set`, 0},
		{"missing kind", "apiVersion: v1\nmetadata: {name: a}\n", "apiVersion and kind must both be set", 0},
		{"old apiVersion", "apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata: {name: a}\n", "use discovery.k8s.io/v1", 0},
		{"scalar", "just a string\n", "not a Kubernetes object", 0},
		{"second document bad", "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\nkind: [\n", "document 2", 1},
		{"bad JSON", `{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"}} {"kind":`, "invalid JSON", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := decodeFile("f.yaml", []byte(tc.manifest))
			if p.ok {
				t.Fatal("file accepted")
			}
			if len(p.problems) != 1 {
				t.Fatalf("got problems %v, want one", p.problems)
			}
			if got := p.problems[0].String(); !strings.Contains(got, tc.want) || !strings.HasPrefix(got, "f.yaml document ") {
				t.Errorf("problem %q does not say %q", got, tc.want)
			}
			if len(p.docs) != tc.docs {
				t.Errorf("got %d objects, want %d", len(p.docs), tc.docs)
			}
		})
	}
}

func TestDecodeSkipsOtherKinds(t *testing.T) {
	p := decodeFile("f.yaml", []byte("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {replicas: 3}\n---\n"+
		"apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: k}\n"))
	if !p.ok || len(p.docs) != 0 || len(p.problems) != 0 {
		t.Errorf("ok=%v docs=%d problems=%v, want nothing", p.ok, len(p.docs), p.problems)
	}
}

// FuzzDecode feeds arbitrary bytes through decoding, validation, defaulting, allocation and
// endpoint generation: nothing may panic, and what comes out must be keyed consistently.
func FuzzDecode(f *testing.F) {
	files, _ := filepath.Glob("testdata/seed/*.yaml")
	for _, name := range files {
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte(`{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","labels":{"a":"b"}},"status":{"podIP":"10.0.0.1"}}]}`))
	f.Add([]byte(`apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  ipFamilyPolicy: PreferDualStack
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: web}, {name: dns, port: 53, protocol: UDP}]
---
apiVersion: v1
kind: Pod
metadata: {name: p1, namespace: shop, labels: {app: web}}
spec: {nodeName: node01, containers: [{name: c, ports: [{name: web, containerPort: 8080}]}]}
status: {podIPs: [{ip: 10.244.1.5}, {ip: "fd00:244:1::5"}], conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Node
metadata: {name: node01, labels: {topology.kubernetes.io/zone: z1}}
`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p := decodeFile("fuzz.yaml", data)
		if !p.ok && len(p.problems) == 0 {
			t.Fatal("file rejected without a problem")
		}
		for _, d := range p.docs {
			if d.obj == nil || d.kind == nil || d.key.Kind == "" {
				t.Fatalf("incomplete document %+v", d)
			}
		}
		l := newLoader("", []netip.Prefix{DefaultServiceCIDR, netip.MustParsePrefix("fd00:96::/108")}, DefaultNodePortRange)
		objs, _ := l.combine(p.docs)
		for _, k := range objs.Keys() {
			if objs.Get(k) == nil {
				t.Fatalf("nil object for %v", k)
			}
		}
	})
}
