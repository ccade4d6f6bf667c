package main

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/duration"
)

// writeServiceTable prints svcs the way `kubectl get services` does: columns NAME, TYPE,
// CLUSTER-IP, EXTERNAL-IP, PORT(S) and AGE (relative to now), sorted by namespace and name, with
// a NAMESPACE column first when the services span more than one namespace (as with -A). Write
// errors are ignored, as with fmt.Fprint to a terminal.
func writeServiceTable(w io.Writer, svcs []*v1.Service, now time.Time) {
	svcs = slices.Clone(svcs)
	slices.SortFunc(svcs, func(a, b *v1.Service) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	namespaces := len(svcs) > 0 && slices.ContainsFunc(svcs, func(s *v1.Service) bool { return s.Namespace != svcs[0].Namespace })

	// kubectl's tab writer: minimum width 6, padding 3.
	tw := tabwriter.NewWriter(w, 6, 4, 3, ' ', 0)
	header := []string{"NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"}
	if namespaces {
		header = append([]string{"NAMESPACE"}, header...)
	}
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, s := range svcs {
		row := []string{s.Name, string(s.Spec.Type), clusterIPColumn(s), externalIPColumn(s), portsColumn(s.Spec.Ports), age(s, now)}
		if namespaces {
			row = append([]string{s.Namespace}, row...)
		}
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	_ = tw.Flush() // a write error is the caller's writer's to report
}

func clusterIPColumn(s *v1.Service) string {
	if s.Spec.ClusterIP == "" {
		return "<none>"
	}
	return s.Spec.ClusterIP
}

// externalIPColumn is kubectl's getServiceExternalIP (not wide).
func externalIPColumn(s *v1.Service) string {
	switch s.Spec.Type {
	case v1.ServiceTypeClusterIP, v1.ServiceTypeNodePort:
		if len(s.Spec.ExternalIPs) > 0 {
			return strings.Join(s.Spec.ExternalIPs, ",")
		}
		return "<none>"
	case v1.ServiceTypeLoadBalancer:
		lb := loadBalancerStatus(s.Status.LoadBalancer)
		if len(s.Spec.ExternalIPs) > 0 {
			all := slices.Clone(s.Spec.ExternalIPs)
			if lb != "" {
				all = append(all, lb)
			}
			return strings.Join(all, ",")
		}
		if lb != "" {
			return lb
		}
		return "<pending>"
	case v1.ServiceTypeExternalName:
		return s.Spec.ExternalName
	}
	return "<unknown>"
}

// loadBalancerStatus lists ingress IPs and host names, cut to 16 characters as kubectl does
// without -o wide.
func loadBalancerStatus(st v1.LoadBalancerStatus) string {
	var out []string
	for _, ing := range st.Ingress {
		if ing.IP != "" {
			out = append(out, ing.IP)
		} else if ing.Hostname != "" {
			out = append(out, ing.Hostname)
		}
	}
	r := strings.Join(out, ",")
	if len(r) > 16 {
		r = r[:13] + "..."
	}
	return r
}

func portsColumn(ports []v1.ServicePort) string {
	if len(ports) == 0 {
		return "<none>"
	}
	out := make([]string, len(ports))
	for i, p := range ports {
		if p.NodePort > 0 {
			out[i] = fmt.Sprintf("%d:%d/%s", p.Port, p.NodePort, p.Protocol)
		} else {
			out[i] = fmt.Sprintf("%d/%s", p.Port, p.Protocol)
		}
	}
	return strings.Join(out, ",")
}

func age(s *v1.Service, now time.Time) string {
	if s.CreationTimestamp.IsZero() {
		return "<unknown>"
	}
	return duration.HumanDuration(now.Sub(s.CreationTimestamp.Time))
}
