package main

import (
	"bytes"
	"flag"
	"os"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"nodeagent/source"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

func TestServiceTableSeed(t *testing.T) {
	objs, _, err := source.Load("../../source/testdata/seed")
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	writeServiceTable(&b, objs.Services(), time.Now())
	const golden = "testdata/services.golden"
	if *update {
		if err := os.WriteFile(golden, b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if b.String() != string(want) {
		t.Errorf("got:\n%s\nwant (%s; -update rewrites it):\n%s", b.String(), golden, want)
	}
}

func TestServiceTableNamespacesAndAges(t *testing.T) {
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	at := func(d time.Duration) metav1.ObjectMeta {
		return metav1.ObjectMeta{CreationTimestamp: metav1.NewTime(now.Add(-d))}
	}
	lb := &v1.Service{ObjectMeta: at(5 * time.Minute), Spec: v1.ServiceSpec{Type: v1.ServiceTypeLoadBalancer, ClusterIP: "10.96.0.20",
		Ports: []v1.ServicePort{{Port: 80, NodePort: 30080, Protocol: v1.ProtocolTCP}, {Port: 53, NodePort: 30053, Protocol: v1.ProtocolUDP}}},
		Status: v1.ServiceStatus{LoadBalancer: v1.LoadBalancerStatus{Ingress: []v1.LoadBalancerIngress{{IP: "10.0.0.51"}}}}}
	lb.Name, lb.Namespace = "web", "shop"
	many := &v1.Service{ObjectMeta: at(50 * time.Hour), Spec: v1.ServiceSpec{Type: v1.ServiceTypeLoadBalancer, ClusterIP: "10.96.0.21",
		ExternalIPs: []string{"10.0.0.200"}, Ports: []v1.ServicePort{{Port: 443, NodePort: 30443, Protocol: v1.ProtocolTCP}}},
		Status: v1.ServiceStatus{LoadBalancer: v1.LoadBalancerStatus{Ingress: []v1.LoadBalancerIngress{{IP: "10.0.0.52"}, {IP: "10.0.0.53"}}}}}
	many.Name, many.Namespace = "api", "shop"
	dns := &v1.Service{ObjectMeta: at(90 * time.Second), Spec: v1.ServiceSpec{Type: v1.ServiceTypeClusterIP, ClusterIP: "10.96.0.10",
		Ports: []v1.ServicePort{{Port: 53, Protocol: v1.ProtocolUDP}}}}
	dns.Name, dns.Namespace = "kube-dns", "kube-system"
	var b bytes.Buffer
	writeServiceTable(&b, []*v1.Service{lb, dns, many}, now)
	// kubectl cuts the load-balancer part to 13 characters and "..." (here "10.0.0.52,10.").
	const want = `NAMESPACE     NAME       TYPE           CLUSTER-IP   EXTERNAL-IP                   PORT(S)                     AGE
kube-system   kube-dns   ClusterIP      10.96.0.10   <none>                        53/UDP                      90s
shop          api        LoadBalancer   10.96.0.21   10.0.0.200,10.0.0.52,10....   443:30443/TCP               2d2h
shop          web        LoadBalancer   10.96.0.20   10.0.0.51                     80:30080/TCP,53:30053/UDP   5m
`
	if b.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", b.String(), want)
	}
}
