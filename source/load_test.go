package source

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
)

// loadDir writes files (name → content) into a new directory and loads it.
func loadDir(t *testing.T, m Manifests, files map[string]string) (Objects, []Problem) {
	t.Helper()
	m.Dir = t.TempDir()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(m.Dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	objs, problems, err := m.Load()
	if err != nil {
		t.Fatal(err)
	}
	return objs, problems
}

func service(objs Objects, ns, name string) *v1.Service {
	s, _ := objs.Get(svcKey(ns, name)).(*v1.Service)
	return s
}

func TestLoadSeed(t *testing.T) {
	objs, problems, err := Load("testdata/seed")
	if err != nil {
		t.Fatal(err)
	}
	// externalip.yaml is the tutorial's second version of demoapp-clusterip: in one directory the
	// later file (by name) wins, as kubectl apply -f DIR would leave it.
	if len(problems) != 1 || problems[0].File != filepath.Join("testdata/seed", "demoapp.yaml") || problems[0].Doc != 1 ||
		problems[0].Kind != "Service" || problems[0].Object.Name != "demoapp-clusterip" || !strings.Contains(problems[0].Reason, "duplicate") {
		t.Errorf("problems: %v", problems)
	}
	var names []string
	for _, s := range objs.Services() {
		names = append(names, s.Name)
	}
	want := []string{"demoapp-clusterip", "demoapp-headless", "demoapp-lb", "demoapp-nodeport", "externalname-redis-svc", "myapp", "redis", "tomcat"}
	if !slices.Equal(names, want) {
		t.Fatalf("services %v, want %v", names, want)
	}
	if len(objs.Pods()) != 0 || len(objs.Nodes()) != 0 {
		t.Errorf("unexpected pods or nodes")
	}

	redis, myapp := service(objs, "default", "redis"), service(objs, "default", "myapp")
	if redis.Spec.ClusterIP != "10.99.99.99" || !slices.Equal(redis.Spec.ClusterIPs, []string{"10.99.99.99"}) ||
		redis.Spec.Ports[0].TargetPort.IntVal != 6379 || redis.Spec.Type != v1.ServiceTypeClusterIP {
		t.Errorf("redis: %+v", redis.Spec)
	}
	if myapp.Spec.ClusterIP != "10.97.97.97" || myapp.Spec.Ports[0].NodePort != 31180 ||
		*myapp.Spec.SessionAffinityConfig.ClientIP.TimeoutSeconds != 10800 {
		t.Errorf("myapp: %+v", myapp.Spec)
	}
	if np := service(objs, "default", "demoapp-nodeport"); np.Spec.Ports[0].NodePort != 32725 {
		t.Errorf("demoapp-nodeport: node port %d", np.Spec.Ports[0].NodePort)
	}
	lb := service(objs, "default", "demoapp-lb")
	if p := lb.Spec.Ports[0].NodePort; !DefaultNodePortRange.Contains(p) || p == 31180 || p == 32725 {
		t.Errorf("demoapp-lb: node port %d", p)
	}
	if h := service(objs, "default", "demoapp-headless"); h.Spec.ClusterIP != "None" {
		t.Errorf("headless: cluster IP %q", h.Spec.ClusterIP)
	}
	if en := service(objs, "default", "externalname-redis-svc"); en.Spec.ClusterIP != "" || en.Spec.IPFamilies != nil {
		t.Errorf("ExternalName: %+v", en.Spec)
	}
	seen := map[string]string{}
	for _, s := range objs.Services() {
		if s.Spec.ClusterIP == "" || s.Spec.ClusterIP == "None" {
			continue
		}
		a := netip.MustParseAddr(s.Spec.ClusterIP)
		if !DefaultServiceCIDR.Contains(a) || a == DefaultServiceCIDR.Addr() {
			t.Errorf("%s: cluster IP %s outside %s", s.Name, a, DefaultServiceCIDR)
		}
		if other, dup := seen[s.Spec.ClusterIP]; dup {
			t.Errorf("%s and %s share %s", s.Name, other, a)
		}
		seen[s.Spec.ClusterIP] = s.Name
		if s.Spec.IPFamilyPolicy == nil || *s.Spec.IPFamilyPolicy != v1.IPFamilyPolicySingleStack ||
			!slices.Equal(s.Spec.IPFamilies, []v1.IPFamily{v1.IPv4Protocol}) {
			t.Errorf("%s: families %v policy %v", s.Name, s.Spec.IPFamilies, s.Spec.IPFamilyPolicy)
		}
	}

	// The seed's own slices are served as written; the headless and tomcat services, which have
	// a selector and no slice, get an empty placeholder as the controller would publish.
	var generated []string
	for _, es := range objs.EndpointSlices() {
		if es.Labels[discoveryv1.LabelManagedBy] == managedBy && es.Labels[discoveryv1.LabelServiceName] != "demoapp-clusterip" {
			generated = append(generated, es.Labels[discoveryv1.LabelServiceName])
			if len(es.Endpoints) != 0 || es.AddressType != discoveryv1.AddressTypeIPv4 {
				t.Errorf("placeholder %s: %+v", es.Name, es)
			}
		}
	}
	if !slices.Equal(generated, []string{"demoapp-headless", "tomcat"}) {
		t.Errorf("generated slices for %v", generated)
	}
	for _, es := range objs.EndpointSlices() {
		if es.Labels[discoveryv1.LabelServiceName] == "demoapp-headless" {
			if _, ok := es.Labels[v1.IsHeadlessService]; !ok {
				t.Errorf("headless slice %s without the headless label", es.Name)
			}
		}
	}
	if es := objs.Get(sliceKey("default", "redis-x7k2p")).(*discoveryv1.EndpointSlice); *es.Ports[0].Protocol != v1.ProtocolTCP {
		t.Errorf("redis slice port: %+v", es.Ports[0])
	}

	again, _, _ := Load("testdata/seed")
	if !equality.Semantic.DeepEqual(objs.m, again.m) {
		t.Error("two loads of the same directory differ")
	}
}

func TestAllocationStableWhenOthersChange(t *testing.T) {
	dir := seedDir(t)
	m := Manifests{Dir: dir}
	before, _, err := m.Load()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for i := range 100 {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Service\nmetadata: {name: s%d, namespace: zz}\nspec: {type: NodePort, ports: [{port: 80}]}\n", i)
	}
	writeFile(t, dir, "more.yaml", b.String())
	after, problems, err := m.Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(after.Services()) != len(before.Services())+100 {
		t.Fatalf("got %d services, problems %v", len(after.Services()), problems)
	}
	for _, s := range before.Services() {
		if a := service(after, s.Namespace, s.Name); !reflect.DeepEqual(a.Spec, s.Spec) {
			t.Errorf("%s changed: %+v → %+v", s.Name, s.Spec, a.Spec)
		}
	}
	ports := map[int32]string{}
	for _, s := range after.Services() {
		for _, p := range s.Spec.Ports {
			if p.NodePort == 0 {
				continue
			}
			if other, dup := ports[p.NodePort]; dup {
				t.Errorf("node port %d of %s and %s", p.NodePort, s.Name, other)
			}
			ports[p.NodePort] = s.Name
		}
	}
}

func TestExplicitValuesAreReservedFirst(t *testing.T) {
	a := "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {type: NodePort, ports: [{port: 80}]}\n"
	objs, _ := loadDir(t, Manifests{}, map[string]string{"a.yaml": a})
	ip, port := service(objs, "default", "a").Spec.ClusterIP, service(objs, "default", "a").Spec.Ports[0].NodePort
	// b sorts after a, but takes a's values explicitly: a must move, not b.
	b := fmt.Sprintf("apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {type: NodePort, clusterIP: %s, ports: [{port: 80, nodePort: %d}]}\n", ip, port)
	objs, problems := loadDir(t, Manifests{}, map[string]string{"a.yaml": a, "b.yaml": b})
	if len(problems) > 0 {
		t.Fatal(problems)
	}
	sa, sb := service(objs, "default", "a"), service(objs, "default", "b")
	if sb.Spec.ClusterIP != ip || sb.Spec.Ports[0].NodePort != port {
		t.Errorf("b did not get its explicit values: %+v", sb.Spec)
	}
	if sa.Spec.ClusterIP == ip || sa.Spec.Ports[0].NodePort == port {
		t.Errorf("a still holds b's values: %+v", sa.Spec)
	}
}

// sliceWith is an EndpointSlice "bad" of one endpoint at addr.
func sliceWith(family, addr string) string {
	return fmt.Sprintf("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: bad}\naddressType: %s\nendpoints: [{addresses: [%q]}]\n", family, addr)
}

// TestEndpointAddressesTheAPIServerAccepts: multicast beyond the link-local block and private,
// shared and documentation ranges are accepted, as ValidateEndpointIP accepts them.
func TestEndpointAddressesTheAPIServerAccepts(t *testing.T) {
	for _, a := range []string{"10.0.0.1", "100.64.0.1", "239.1.1.1", "224.0.1.1", "192.0.2.1", "2001:db8::1", "ff05::1", "fd00::1"} {
		family := "IPv4"
		if strings.Contains(a, ":") {
			family = "IPv6"
		}
		objs, problems := loadDir(t, Manifests{}, map[string]string{"a.yaml": sliceWith(family, a)})
		if objs.Get(sliceKey("default", "bad")) == nil || len(problems) > 0 {
			t.Errorf("%s refused: %v", a, problems)
		}
	}
	// A pod whose address the API server would refuse in a slice is no endpoint of the slices made
	// from pods.
	objs, _ := loadDir(t, Manifests{}, map[string]string{"a.yaml": `apiVersion: v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: good, labels: {app: web}}
status: {podIP: 10.244.0.5}
---
apiVersion: v1
kind: Pod
metadata: {name: sneaky, labels: {app: web}}
status: {podIP: 169.254.169.254}
`})
	var addrs []string
	for _, es := range objs.EndpointSlices() {
		for _, ep := range es.Endpoints {
			addrs = append(addrs, ep.Addresses...)
		}
	}
	if len(addrs) != 1 || addrs[0] != "10.244.0.5" {
		t.Errorf("endpoints made from pods: %v, want only 10.244.0.5", addrs)
	}
}

func TestProblems(t *testing.T) {
	const good = "apiVersion: v1\nkind: Service\nmetadata: {name: good}\nspec: {ports: [{port: 80}]}\n"
	svc := func(name, spec string) string {
		return fmt.Sprintf("apiVersion: v1\nkind: Service\nmetadata: {name: %s}\nspec: %s\n", name, spec)
	}
	for _, tc := range []struct {
		name     string
		manifest string
		want     string // in the problem
		absent   Key    // not served
	}{
		{"bad cluster IP", svc("bad", "{clusterIP: 10.96.0.300, ports: [{port: 80}]}"), `"10.96.0.300" is not an IP address`, svcKey("default", "bad")},
		{"port out of range", svc("bad", "{ports: [{port: 70000}]}"), "must be between 1 and 65535", svcKey("default", "bad")},
		{"missing name", "apiVersion: v1\nkind: Service\nspec: {ports: [{port: 80}]}\n", "metadata.name is required", svcKey("default", "")},
		{"bad name", svc("Bad_Name", "{ports: [{port: 80}]}"), "metadata.name", svcKey("default", "Bad_Name")},
		{"no ports", svc("bad", "{selector: {a: b}}"), "spec.ports is required", svcKey("default", "bad")},
		{"unnamed ports", svc("bad", "{ports: [{port: 80}, {port: 81}]}"), "name is required", svcKey("default", "bad")},
		{"bad protocol", svc("bad", "{ports: [{port: 80, protocol: ICMP}]}"), `protocol "ICMP"`, svcKey("default", "bad")},
		{"bad target port", svc("bad", "{ports: [{port: 80, targetPort: Http_}]}"), "targetPort", svcKey("default", "bad")},
		{"outside CIDR", svc("bad", "{clusterIP: 192.168.0.1, ports: [{port: 80}]}"), "not in the service CIDR 10.96.0.0/12", svcKey("default", "bad")},
		{"broadcast", svc("bad", "{clusterIP: 10.111.255.255, ports: [{port: 80}]}"), "broadcast", svcKey("default", "bad")},
		{"node port outside range", svc("bad", "{type: NodePort, ports: [{port: 80, nodePort: 8080}]}"), "not in the node-port range 30000-32767", svcKey("default", "bad")},
		{"node port on ClusterIP", svc("bad", "{ports: [{port: 80, nodePort: 30080}]}"), "nodePort may not be used with type ClusterIP", svcKey("default", "bad")},
		{"bad external IP", svc("bad", "{externalIPs: [10.0.0.x], ports: [{port: 80}]}"), "externalIPs[0]", svcKey("default", "bad")},
		{"bad type", svc("bad", "{type: Magic, ports: [{port: 80}]}"), `spec.type "Magic"`, svcKey("default", "bad")},
		{"IPv6 not configured", svc("bad", "{ipFamilies: [IPv6], ports: [{port: 80}]}"), "no service CIDR of that family", svcKey("default", "bad")},
		{"dual-stack required", svc("bad", "{ipFamilyPolicy: RequireDualStack, ports: [{port: 80}]}"), "RequireDualStack", svcKey("default", "bad")},
		{"slice address", "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: bad}\naddressType: IPv4\nendpoints: [{addresses: [fd00::1]}]\n",
			"not an IPv4 address", sliceKey("default", "bad")},
		{"slice loopback", sliceWith("IPv4", "127.0.0.1"), "loopback", sliceKey("default", "bad")},
		{"slice loopback 127/8", sliceWith("IPv4", "127.1.2.3"), "loopback", sliceKey("default", "bad")},
		{"slice IPv6 loopback", sliceWith("IPv6", "::1"), "loopback", sliceKey("default", "bad")},
		{"slice unspecified", sliceWith("IPv4", "0.0.0.0"), "unspecified", sliceKey("default", "bad")},
		{"slice IPv6 unspecified", sliceWith("IPv6", "::"), "unspecified", sliceKey("default", "bad")},
		{"slice metadata service", sliceWith("IPv4", "169.254.169.254"), "link-local", sliceKey("default", "bad")},
		{"slice IPv6 link-local", sliceWith("IPv6", "fe80::1"), "link-local", sliceKey("default", "bad")},
		{"slice link-local multicast", sliceWith("IPv4", "224.0.0.5"), "link-local multicast", sliceKey("default", "bad")},
		{"slice IPv6 link-local multicast", sliceWith("IPv6", "ff02::1"), "link-local multicast", sliceKey("default", "bad")},
		{"pod IP", "apiVersion: v1\nkind: Pod\nmetadata: {name: bad}\nstatus: {podIP: nope}\n", "status.podIP", Key{GroupKind: podKind, Namespace: "default", Name: "bad"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs, problems := loadDir(t, Manifests{}, map[string]string{"a.yaml": good + "---\n" + tc.manifest})
			if service(objs, "default", "good") == nil {
				t.Error("the good service is not served")
			}
			if objs.Get(tc.absent) != nil {
				t.Errorf("%v is served", tc.absent)
			}
			if len(problems) != 1 || !strings.Contains(problems[0].Reason, tc.want) || problems[0].Doc != 2 || !strings.HasSuffix(problems[0].File, "a.yaml") {
				t.Errorf("problems %v, want one in document 2 about %q", problems, tc.want)
			}
		})
	}
}

func TestConflicts(t *testing.T) {
	svc := func(ns, name, spec string) string {
		return fmt.Sprintf("---\napiVersion: v1\nkind: Service\nmetadata: {name: %s, namespace: %s}\nspec: %s\n", name, ns, spec)
	}
	objs, problems := loadDir(t, Manifests{}, map[string]string{
		// File order and namespace/name order differ on purpose: the order of names decides.
		"1.yaml": svc("ns2", "a", "{clusterIP: 10.96.1.1, ports: [{port: 80}]}") +
			svc("ns2", "np", "{type: NodePort, ports: [{port: 80, nodePort: 30001}]}") +
			svc("ns1", "dup", "{ports: [{port: 80}]}"),
		"2.yaml": svc("ns1", "z", "{clusterIP: 10.96.1.1, ports: [{port: 80}]}") +
			svc("ns1", "m", "{type: LoadBalancer, ports: [{name: a, port: 80, nodePort: 30001}, {name: b, port: 81, nodePort: 30002}]}") +
			svc("ns1", "dup", "{ports: [{port: 81}]}"),
	})
	want := map[string]string{
		"ns2/a":   "cluster IP 10.96.1.1 is already allocated to ns1/z",
		"ns2/np":  "node port 30001 is already allocated to ns1/m",
		"ns1/dup": "duplicate: replaced by " + filepath.Join(filepath.Dir(problems[0].File), "2.yaml") + " document 3",
	}
	if len(problems) != len(want) {
		t.Fatalf("problems: %v", problems)
	}
	for _, p := range problems {
		if w := want[p.Object.Namespace+"/"+p.Object.Name]; !strings.Contains(p.Reason, w) || w == "" {
			t.Errorf("problem %v, want %q", p, w)
		}
	}
	if s := service(objs, "ns1", "z"); s == nil || s.Spec.ClusterIP != "10.96.1.1" {
		t.Errorf("ns1/z: %v", s)
	}
	if s := service(objs, "ns1", "dup"); s == nil || s.Spec.Ports[0].Port != 81 {
		t.Errorf("ns1/dup: %v", s)
	}
	if service(objs, "ns2", "a") != nil || service(objs, "ns2", "np") != nil {
		t.Error("a conflicting service is served")
	}
}

func TestAllocationExhaustsSmallRanges(t *testing.T) {
	// A /29 has 6 usable addresses (.9 to .14) for 7 services.
	cidr := netip.MustParsePrefix("192.168.7.8/29")
	var b strings.Builder
	for i := range 7 {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Service\nmetadata: {name: s%d}\nspec: {ports: [{port: 80}]}\n", i)
	}
	objs, problems := loadDir(t, Manifests{ServiceCIDRs: []netip.Prefix{cidr}}, map[string]string{"a.yaml": b.String()})
	got := map[string]bool{}
	for _, s := range objs.Services() {
		a := netip.MustParseAddr(s.Spec.ClusterIP)
		if a == cidr.Addr() || a == netip.MustParseAddr("192.168.7.15") || !cidr.Contains(a) || got[a.String()] {
			t.Errorf("%s got %s", s.Name, a)
		}
		got[a.String()] = true
	}
	if len(got) != 6 || len(problems) != 1 || !strings.Contains(problems[0].Reason, "no free cluster IP left in 192.168.7.8/29") {
		t.Errorf("allocated %v, problems %v", got, problems)
	}

	b.Reset()
	for i := range 4 {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Service\nmetadata: {name: n%d}\nspec: {type: NodePort, ports: [{port: 80}]}\n", i)
	}
	objs, problems = loadDir(t, Manifests{NodePortRange: PortRange{30000, 30002}}, map[string]string{"a.yaml": b.String()})
	ports := map[int32]bool{}
	for _, s := range objs.Services() {
		ports[s.Spec.Ports[0].NodePort] = true
	}
	if len(ports) != 3 || !ports[30000] || !ports[30001] || !ports[30002] || len(problems) != 1 ||
		!strings.Contains(problems[0].Reason, "no free node port left in 30000-30002") {
		t.Errorf("node ports %v, problems %v", ports, problems)
	}
}

func TestServiceDefaultsAndNodePorts(t *testing.T) {
	objs, problems := loadDir(t, Manifests{}, map[string]string{"a.yaml": `
apiVersion: v1
kind: Service
metadata: {name: local}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: nolbports}
spec:
  type: LoadBalancer
  allocateLoadBalancerNodePorts: false
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: dns}
spec:
  type: NodePort
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec:
  externalIPs: [10.0.0.200]
  ports: [{port: 80, targetPort: http}]
`})
	if len(problems) > 0 {
		t.Fatal(problems)
	}
	local := service(objs, "default", "local")
	if hc := local.Spec.HealthCheckNodePort; !DefaultNodePortRange.Contains(hc) || hc == local.Spec.Ports[0].NodePort {
		t.Errorf("healthCheckNodePort %d, node port %d", hc, local.Spec.Ports[0].NodePort)
	}
	if !*local.Spec.AllocateLoadBalancerNodePorts || *local.Spec.InternalTrafficPolicy != v1.ServiceInternalTrafficPolicyCluster {
		t.Errorf("local defaults: %+v", local.Spec)
	}
	if p := service(objs, "default", "nolbports").Spec.Ports[0].NodePort; p != 0 {
		t.Errorf("allocateLoadBalancerNodePorts=false got node port %d", p)
	}
	dns := service(objs, "default", "dns").Spec.Ports
	if dns[0].NodePort == 0 || dns[0].NodePort != dns[1].NodePort {
		t.Errorf("dns node ports %d, %d: want one shared", dns[0].NodePort, dns[1].NodePort)
	}
	ext := service(objs, "default", "ext")
	if ext.Spec.ExternalTrafficPolicy != v1.ServiceExternalTrafficPolicyCluster || ext.Spec.Ports[0].TargetPort.StrVal != "http" ||
		ext.Spec.SessionAffinity != v1.ServiceAffinityNone {
		t.Errorf("ext defaults: %+v", ext.Spec)
	}
}

func TestDualStack(t *testing.T) {
	cidrs := []netip.Prefix{DefaultServiceCIDR, netip.MustParsePrefix("fd00:96::/108")}
	svc := func(name, spec string) string {
		return fmt.Sprintf("---\napiVersion: v1\nkind: Service\nmetadata: {name: %s}\nspec: %s\n", name, spec)
	}
	files := map[string]string{"a.yaml": svc("prefer", "{ipFamilyPolicy: PreferDualStack, ports: [{port: 80}]}") +
		svc("v6", "{ipFamilies: [IPv6], ports: [{port: 80}]}") +
		svc("v6first", "{ipFamilyPolicy: RequireDualStack, ipFamilies: [IPv6, IPv4], ports: [{port: 80}]}") +
		svc("fixed", "{ipFamilyPolicy: PreferDualStack, clusterIP: 'fd00:96::10', ports: [{port: 80}]}")}
	objs, problems := loadDir(t, Manifests{ServiceCIDRs: cidrs}, files)
	if len(problems) > 0 {
		t.Fatal(problems)
	}
	fams := func(name string) string {
		s := service(objs, "default", name)
		var out []string
		for i, ip := range s.Spec.ClusterIPs {
			a := netip.MustParseAddr(ip)
			if !cidrs[0].Contains(a) && !cidrs[1].Contains(a) || familyOf(a) != s.Spec.IPFamilies[i] {
				t.Errorf("%s: %s not in its family's CIDR", name, ip)
			}
			out = append(out, string(s.Spec.IPFamilies[i]))
		}
		if s.Spec.ClusterIP != s.Spec.ClusterIPs[0] {
			t.Errorf("%s: clusterIP %s, clusterIPs %v", name, s.Spec.ClusterIP, s.Spec.ClusterIPs)
		}
		return strings.Join(out, ",")
	}
	for name, want := range map[string]string{"prefer": "IPv4,IPv6", "v6": "IPv6", "v6first": "IPv6,IPv4", "fixed": "IPv6,IPv4"} {
		if got := fams(name); got != want {
			t.Errorf("%s: families %s, want %s", name, got, want)
		}
	}
	if s := service(objs, "default", "fixed"); s.Spec.ClusterIP != "fd00:96::10" {
		t.Errorf("fixed: %v", s.Spec.ClusterIPs)
	}

	// With only IPv4 configured, PreferDualStack falls back to one family.
	objs, problems = loadDir(t, Manifests{}, map[string]string{"a.yaml": svc("prefer", "{ipFamilyPolicy: PreferDualStack, ports: [{port: 80}]}")})
	if s := service(objs, "default", "prefer"); len(problems) > 0 || len(s.Spec.ClusterIPs) != 1 {
		t.Errorf("prefer on IPv4 only: %v %v", s.Spec.ClusterIPs, problems)
	}
}

func TestEndpointSlicesFromPods(t *testing.T) {
	pod := func(name, ns, labels, node, ips, port, extra string) string {
		return fmt.Sprintf(`---
apiVersion: v1
kind: Pod
metadata: {name: %s, namespace: %s, labels: {%s}%s}
spec:
  nodeName: %s
  containers: [{name: c, image: x, ports: [%s]}]
status: {%s}
`, name, ns, labels, extra, node, port, ips)
	}
	const ready = ", conditions: [{type: Ready, status: 'True'}]"
	files := map[string]string{
		"svc.yaml": `apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop, labels: {team: a}}
spec:
  ipFamilyPolicy: PreferDualStack
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: web}
  - {name: metrics, port: 9100}
---
apiVersion: v1
kind: Node
metadata: {name: node01, labels: {topology.kubernetes.io/zone: z1}}
`,
		"pods.yaml": pod("p1", "shop", "app: web", "node01", "podIPs: [{ip: 10.244.1.5}, {ip: 'fd00:244:1::5'}]"+ready, "{name: web, containerPort: 8080}", "") +
			pod("p2", "shop", "app: web", "node02", "podIP: 10.244.2.5, conditions: [{type: Ready, status: 'False'}]", "{name: web, containerPort: 8081}", "") +
			pod("p3", "shop", "app: web", "node02", "podIP: 10.244.2.6"+ready, "{name: web, containerPort: 8080}", ", deletionTimestamp: '2024-01-01T00:00:00Z'") +
			pod("p4", "shop", "app: other", "node01", "podIP: 10.244.1.7", "{name: web, containerPort: 8080}", "") +
			pod("p5", "shop", "app: web", "node01", "podIP: 10.244.1.8, phase: Succeeded", "{name: web, containerPort: 8080}", "") +
			pod("p6", "shop", "app: web", "node01", "phase: Pending", "{name: web, containerPort: 8080}", "") +
			pod("p7", "default", "app: web", "node01", "podIP: 10.244.1.9", "{name: web, containerPort: 8080}", "") +
			pod("p8", "shop", "app: web, extra: x", "node01", "podIP: 10.244.1.10", "{name: other, containerPort: 8080}", ""),
	}
	objs, problems := loadDir(t, Manifests{ServiceCIDRs: []netip.Prefix{DefaultServiceCIDR, netip.MustParsePrefix("fd00:96::/108")}}, files)
	if len(problems) > 0 {
		t.Fatal(problems)
	}
	type ep struct{ addr, node, zone, ports, conds string }
	var got []ep
	for _, es := range objs.EndpointSlices() {
		if es.Labels[discoveryv1.LabelServiceName] != "web" || es.Labels[discoveryv1.LabelManagedBy] != managedBy || es.Labels["team"] != "a" ||
			!strings.HasPrefix(es.Name, "web-") || len(es.Name) != len("web-")+5 {
			t.Errorf("slice metadata: %+v", es.ObjectMeta)
		}
		var ports []string
		for _, p := range es.Ports {
			ports = append(ports, fmt.Sprintf("%s=%d/%s", *p.Name, *p.Port, *p.Protocol))
		}
		for _, e := range es.Endpoints {
			zone := ""
			if e.Zone != nil {
				zone = *e.Zone
			}
			got = append(got, ep{e.Addresses[0], *e.NodeName, zone, strings.Join(ports, ","),
				fmt.Sprintf("r%v s%v t%v", *e.Conditions.Ready, *e.Conditions.Serving, *e.Conditions.Terminating)})
			if e.TargetRef == nil || e.TargetRef.Kind != "Pod" || e.TargetRef.Namespace != "shop" {
				t.Errorf("target ref %+v", e.TargetRef)
			}
		}
	}
	slices.SortFunc(got, func(a, b ep) int { return strings.Compare(a.addr, b.addr) })
	want := []ep{
		{"10.244.1.10", "node01", "z1", "metrics=9100/TCP", "rtrue strue tfalse"},
		{"10.244.1.5", "node01", "z1", "http=8080/TCP,metrics=9100/TCP", "rtrue strue tfalse"},
		{"10.244.2.5", "node02", "", "http=8081/TCP,metrics=9100/TCP", "rfalse sfalse tfalse"},
		{"10.244.2.6", "node02", "", "http=8080/TCP,metrics=9100/TCP", "rfalse strue ttrue"},
		{"fd00:244:1::5", "node01", "z1", "http=8080/TCP,metrics=9100/TCP", "rtrue strue tfalse"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("endpoints:\n got %v\nwant %v", got, want)
	}
	if n := len(objs.EndpointSlices()); n != 4 {
		t.Errorf("%d slices, want 4 (3 port sets for IPv4, 1 for IPv6)", n)
	}
	for _, es := range objs.EndpointSlices() {
		v6 := es.AddressType == discoveryv1.AddressTypeIPv6
		for _, e := range es.Endpoints {
			if netip.MustParseAddr(e.Addresses[0]).Is6() != v6 {
				t.Errorf("slice %s (%s) holds %s", es.Name, es.AddressType, e.Addresses[0])
			}
		}
	}
}

// BenchmarkReload measures a reload of a directory of 5000 services (1000 of them with endpoints
// from Pods) after a one-line edit of another file, and the diff sent to the sink.
func BenchmarkReload(b *testing.B) {
	dir := b.TempDir()
	var sb strings.Builder
	for i := range 5000 {
		typ := "ClusterIP"
		if i%2 == 0 {
			typ = "NodePort"
		}
		fmt.Fprintf(&sb, "---\napiVersion: v1\nkind: Service\nmetadata: {name: s%d}\nspec: {type: %s, selector: {app: s%d}, ports: [{name: http, port: 80}]}\n", i, typ, i)
		if i%5 == 0 {
			fmt.Fprintf(&sb, "---\napiVersion: v1\nkind: Pod\nmetadata: {name: p%d, labels: {app: s%d}}\nspec: {nodeName: node01, containers: [{name: c}]}\nstatus: {podIP: 10.244.%d.%d}\n", i, i, i/250, i%250+1)
			continue
		}
		fmt.Fprintf(&sb, "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s%d-x, labels: {kubernetes.io/service-name: s%d}}\naddressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints: [{addresses: [10.244.%d.%d], nodeName: node01}, {addresses: [10.244.%d.%d], nodeName: node02}]\n", i, i, i/250, i%250+1, i/250+100, i%250+1)
	}
	os.WriteFile(filepath.Join(dir, "big.yaml"), []byte(sb.String()), 0o644)
	l := newLoader(dir, []netip.Prefix{DefaultServiceCIDR}, DefaultNodePortRange)
	objs, _, _ := l.load()
	for i := 0; b.Loop(); i++ {
		os.WriteFile(filepath.Join(dir, "small.yaml"), []byte(fmt.Sprintf("apiVersion: v1\nkind: Service\nmetadata: {name: small}\nspec: {ports: [{port: %d}]}\n", 80+i%2)), 0o644)
		next, _, _ := l.load()
		deliverChanges(newRecorder(), objs, next)
		objs = next
	}
}

// TestReloadReusesUnchangedObjects checks that a reload after an unrelated edit serves the very
// same objects (so the diff to the sink is a pointer comparison), generated slices included.
func TestReloadReusesUnchangedObjects(t *testing.T) {
	dir := seedDir(t)
	writeFile(t, dir, "pods.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: t1, labels: {app: tomcat, release: canary}}\n"+
		"spec: {nodeName: node01, containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}\nstatus: {podIP: 10.244.1.20}\n")
	l := newLoader(dir, []netip.Prefix{DefaultServiceCIDR}, DefaultNodePortRange)
	before, _, err := l.load()
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, "redis.yaml", fmt.Sprintf(redisV2, 6381))
	after, _, err := l.load()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range before.Keys() {
		if k.Name == "redis" && k.GroupKind == serviceKind {
			if before.Get(k) == after.Get(k) {
				t.Error("the edited service is the same object")
			}
			continue
		}
		if k.Name == "redis-x7k2p" {
			continue // decoded anew with its edited file; the diff compares it by value
		}
		if before.Get(k) != after.Get(k) {
			t.Errorf("%v is a new object, though nothing it depends on changed", k)
		}
	}
	rec := newRecorder()
	if up, del := deliverChanges(rec, before, after); up != 1 || del != 0 {
		t.Errorf("%d upserts, %d deletes; want 1 and 0", up, del)
	}
}
