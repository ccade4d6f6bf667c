package deploy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// kustomization is the part of kustomization.yaml these tests read.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
	Images     []struct {
		Name    string `json:"name"`
		NewName string `json:"newName"`
		NewTag  string `json:"newTag"`
	} `json:"images"`
}

// documents splits a multi-document YAML file into its JSON documents.
func documents(t *testing.T, file string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
	var out [][]byte
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if len(bytes.TrimSpace(doc)) == 0 || string(bytes.TrimSpace(doc)) == "---" {
			continue
		}
		j, err := yaml.YAMLToJSON(doc)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if string(j) != "null" {
			out = append(out, j)
		}
	}
}

// decodeOne decodes the only document of file strictly (an unknown field is an error, so a typo
// in a manifest fails here rather than being dropped by the API server) into obj.
func decodeOne(t *testing.T, file string, obj any) {
	t.Helper()
	docs := documents(t, file)
	if len(docs) != 1 {
		t.Fatalf("%s holds %d documents, want 1", file, len(docs))
	}
	if err := yaml.UnmarshalStrict(docs[0], obj); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}

func readKustomization(t *testing.T) kustomization {
	t.Helper()
	var k kustomization
	decodeOne(t, "kustomization.yaml", &k)
	return k
}

func daemonSet(t *testing.T) *appsv1.DaemonSet {
	t.Helper()
	var ds appsv1.DaemonSet
	decodeOne(t, "daemonset.yaml", &ds)
	return &ds
}

func configMap(t *testing.T) *corev1.ConfigMap {
	t.Helper()
	var cm corev1.ConfigMap
	decodeOne(t, "configmap.yaml", &cm)
	return &cm
}

// TestKustomizationNamesEveryManifest checks that kubectl apply -k deploy/ installs every
// manifest of this directory, and only files that exist.
func TestKustomizationNamesEveryManifest(t *testing.T) {
	k := readKustomization(t)
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
		t.Errorf("kustomization.yaml is %s %s", k.APIVersion, k.Kind)
	}
	ents, err := os.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	var manifests []string
	for _, e := range ents {
		if n := e.Name(); strings.HasSuffix(n, ".yaml") && n != "kustomization.yaml" {
			manifests = append(manifests, n)
		}
	}
	for _, r := range k.Resources {
		if !slices.Contains(manifests, r) {
			t.Errorf("kustomization.yaml names %s, which is not a manifest of deploy/", r)
		}
	}
	for _, m := range manifests {
		if !slices.Contains(k.Resources, m) {
			t.Errorf("kustomization.yaml leaves out %s", m)
		}
	}
	for _, want := range []string{"crds.yaml", "rbac.yaml", "configmap.yaml", "daemonset.yaml"} {
		if !slices.Contains(k.Resources, want) {
			t.Errorf("kustomization.yaml resources %v lack %s", k.Resources, want)
		}
	}
}

func TestDaemonSet(t *testing.T) {
	ds := daemonSet(t)
	if ds.APIVersion != "apps/v1" || ds.Kind != "DaemonSet" {
		t.Fatalf("daemonset.yaml is %s %s", ds.APIVersion, ds.Kind)
	}
	if ds.Namespace != Namespace {
		t.Errorf("namespace %q, want %q (where the ServiceAccount is)", ds.Namespace, Namespace)
	}
	sel := ds.Spec.Selector
	if sel == nil || len(sel.MatchLabels) == 0 {
		t.Fatal("no selector")
	}
	for k, v := range sel.MatchLabels {
		if ds.Spec.Template.Labels[k] != v {
			t.Errorf("selector %s=%s does not match the template's labels %v", k, v, ds.Spec.Template.Labels)
		}
	}

	us := ds.Spec.UpdateStrategy
	if us.Type != appsv1.RollingUpdateDaemonSetStrategyType || us.RollingUpdate == nil || us.RollingUpdate.MaxUnavailable == nil {
		t.Errorf("update strategy %+v, want RollingUpdate with maxUnavailable", us)
	} else if mu := us.RollingUpdate.MaxUnavailable; mu.Type != intstr.Int || mu.IntVal != 1 {
		t.Errorf("maxUnavailable %s, want 1: one node at a time resyncs", mu.String())
	}

	pod := ds.Spec.Template.Spec
	if pod.ServiceAccountName != ServiceAccount {
		t.Errorf("serviceAccountName %q, want %q (rbac.yaml's)", pod.ServiceAccountName, ServiceAccount)
	}
	if pod.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName %q, want system-node-critical", pod.PriorityClassName)
	}
	if !pod.HostNetwork {
		t.Error("hostNetwork is off: the agent must program the node's own network namespace")
	}
	if pod.DNSPolicy != corev1.DNSDefault {
		t.Errorf("dnsPolicy %q, want Default: cluster DNS is behind a cluster IP the agent itself programs", pod.DNSPolicy)
	}
	tolerateAll := false
	for _, tol := range pod.Tolerations {
		if tol.Operator == corev1.TolerationOpExists && tol.Key == "" && tol.Effect == "" {
			tolerateAll = true
		}
	}
	if !tolerateAll {
		t.Errorf("tolerations %+v lack {operator: Exists}: a tainted node needs its proxy too", pod.Tolerations)
	}

	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	sc := c.SecurityContext
	if sc == nil || sc.Privileged == nil || !*sc.Privileged {
		t.Error("container not privileged: the ipvs mode writes net.* sysctls, read-only otherwise")
	}
	if len(c.Command) < 2 || c.Command[0] != "/usr/local/bin/nodeagent" || c.Command[1] != "run" {
		t.Errorf("command %q, want /usr/local/bin/nodeagent run ...", c.Command)
	}
	if !slices.Contains(c.Command, "--hostname-override=$(NODE_NAME)") {
		t.Errorf("command %q lacks --hostname-override=$(NODE_NAME)", c.Command)
	}
	nodeName := false
	for _, e := range c.Env {
		if e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName" {
			nodeName = true
		}
	}
	if !nodeName {
		t.Error("no NODE_NAME from spec.nodeName")
	}
	apiserver := false
	for _, e := range c.EnvFrom {
		if e.ConfigMapRef != nil && e.ConfigMapRef.Name == "nodeagent-apiserver" && e.ConfigMapRef.Optional != nil && *e.ConfigMapRef.Optional {
			apiserver = true
		}
	}
	if !apiserver {
		t.Error("no optional envFrom ConfigMap nodeagent-apiserver: a cluster without another proxy cannot tell the agent where its API server is")
	}

	// The probes read the health port that the configuration binds.
	healthPort := healthzPort(t)
	for name, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("%s probe: not an HTTP GET", name)
			continue
		}
		want := map[string]string{"liveness": "/livez", "readiness": "/healthz"}[name]
		if p.HTTPGet.Path != want {
			t.Errorf("%s probe path %q, want %q", name, p.HTTPGet.Path, want)
		}
		if p.HTTPGet.Port.IntValue() != healthPort {
			t.Errorf("%s probe port %s, want %d (config.conf's healthzBindAddress)", name, p.HTTPGet.Port.String(), healthPort)
		}
	}

	// Every mount has its volume, and the config volume is configmap.yaml's ConfigMap mounted
	// where --config reads it.
	vols := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		vols[v.Name] = v
	}
	cm := configMap(t)
	configRead := false
	for _, m := range c.VolumeMounts {
		v, ok := vols[m.Name]
		if !ok {
			t.Errorf("mount %s has no volume", m.Name)
			continue
		}
		if v.ConfigMap == nil {
			continue
		}
		if v.ConfigMap.Name != cm.Name {
			t.Errorf("volume %s is ConfigMap %q, want %q (configmap.yaml's)", v.Name, v.ConfigMap.Name, cm.Name)
		}
		for key := range cm.Data {
			if slices.Contains(c.Command, "--config="+m.MountPath+"/"+key) {
				configRead = true
			}
		}
	}
	if !configRead {
		t.Errorf("command %q reads no key of ConfigMap %s through its mount", c.Command, cm.Name)
	}
}

// TestContainerfileInstallsTheCommand checks that the image the Containerfile builds has the agent
// where the DaemonSet runs it (make image's archive is checked in test/cluster/oci).
func TestContainerfileInstallsTheCommand(t *testing.T) {
	b, err := os.ReadFile("../Containerfile")
	if err != nil {
		t.Fatal(err)
	}
	cmd := daemonSet(t).Spec.Template.Spec.Containers[0].Command[0]
	var copied, entry bool
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == "COPY" && f[len(f)-1] == cmd {
			copied = true
		}
		if len(f) >= 2 && f[0] == "ENTRYPOINT" && strings.Contains(line, `"`+cmd+`"`) {
			entry = true
		}
	}
	if !copied || !entry {
		t.Errorf("the Containerfile does not install and run %s (COPY found: %v, ENTRYPOINT: %v)", cmd, copied, entry)
	}
}

// healthzPort returns the port of config.conf's healthzBindAddress.
func healthzPort(t *testing.T) int {
	t.Helper()
	cm := configMap(t)
	if cm.Namespace != Namespace {
		t.Errorf("ConfigMap namespace %q, want %q", cm.Namespace, Namespace)
	}
	var conf struct {
		APIVersion         string `json:"apiVersion"`
		Kind               string `json:"kind"`
		Mode               string `json:"mode"`
		ClusterCIDR        string `json:"clusterCIDR"`
		HealthzBindAddress string `json:"healthzBindAddress"`
	}
	if err := yaml.Unmarshal([]byte(cm.Data["config.conf"]), &conf); err != nil {
		t.Fatalf("config.conf: %v", err)
	}
	if conf.APIVersion != "kubeproxy.config.k8s.io/v1alpha1" || conf.Kind != "KubeProxyConfiguration" {
		t.Errorf("config.conf is %s %s, want a KubeProxyConfiguration", conf.APIVersion, conf.Kind)
	}
	if !slices.Contains([]string{"nftables", "iptables", "ipvs"}, conf.Mode) {
		t.Errorf("config.conf mode %q", conf.Mode)
	}
	if _, _, err := net.ParseCIDR(conf.ClusterCIDR); err != nil {
		t.Errorf("config.conf clusterCIDR: %v", err)
	}
	_, port, err := net.SplitHostPort(conf.HealthzBindAddress)
	if err != nil {
		t.Fatalf("config.conf healthzBindAddress: %v", err)
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		t.Fatalf("config.conf healthzBindAddress port: %v", err)
	}
	return p
}

// TestKustomizationImage checks that the image the DaemonSet names is the one kustomization.yaml
// lets a user retarget.
func TestKustomizationImage(t *testing.T) {
	k := readKustomization(t)
	image := daemonSet(t).Spec.Template.Spec.Containers[0].Image
	name, _, _ := strings.Cut(image, ":")
	for _, img := range k.Images {
		if img.Name == name {
			if got := img.NewName + ":" + img.NewTag; got != image {
				t.Errorf("kustomization.yaml turns %s into %s; keep the two in step", image, got)
			}
			return
		}
	}
	t.Errorf("kustomization.yaml has no images: entry for %s", name)
}
