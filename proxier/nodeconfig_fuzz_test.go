package proxier

import (
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// FuzzNodeObjects feeds this node's Node object and a ServiceCIDR object with arbitrary address
// and CIDR strings (newline-separated) to a tracker: whatever they hold, the snapshot has at most
// one primary address per family, and every mode-facing reading of it works.
func FuzzNodeObjects(f *testing.F) {
	f.Add("10.0.0.151\nfd00:10::151", "198.51.100.1", "10.244.1.0/24\nfd00:244:1::/64", "10.96.0.0/12\nfd00:96::/108")
	f.Add("", "", "", "")
	f.Add("not-an-ip\n::ffff:10.0.0.1\n127.0.0.1", "0.0.0.0", "10.244.1.5/24\n/\n0.0.0.0/0", "bogus\n::/0")
	f.Fuzz(func(t *testing.T, internal, external, podCIDRs, serviceCIDRs string) {
		node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node01"}, Spec: v1.NodeSpec{PodCIDRs: strings.Split(podCIDRs, "\n")}}
		for _, a := range strings.Split(internal, "\n") {
			node.Status.Addresses = append(node.Status.Addresses, v1.NodeAddress{Type: v1.NodeInternalIP, Address: a})
		}
		for _, a := range strings.Split(external, "\n") {
			node.Status.Addresses = append(node.Status.Addresses, v1.NodeAddress{Type: v1.NodeExternalIP, Address: a})
		}
		tr := NewTracker(Node{Name: "node01", IPs: addrs("10.0.0.151", "fd00:10::151")},
			Config{NodePortPrimary: true, LocalDetect: LocalDetect{Mode: DetectNodeCIDR}}, nil)
		tr.Upsert(node)
		tr.Upsert(&networkingv1.ServiceCIDR{ObjectMeta: metav1.ObjectMeta{Name: "kubernetes"},
			Spec: networkingv1.ServiceCIDRSpec{CIDRs: strings.Split(serviceCIDRs, "\n")}})
		st, _ := tr.Snapshot()
		if n := len(st.Node.PrimaryIPs); n > 2 || (n == 2 && FamilyOf(st.Node.PrimaryIPs[0]) == FamilyOf(st.Node.PrimaryIPs[1])) {
			t.Fatalf("primary IPs %v", st.Node.PrimaryIPs)
		}
		for _, fam := range Families {
			ips, restricted := st.NodePortIPs(fam)
			if !restricted && ips != nil {
				t.Fatalf("unrestricted node ports with addresses %v", ips)
			}
			for _, a := range ips {
				if FamilyOf(a) != fam || a.IsLoopback() {
					t.Fatalf("node-port address %s in family %s", a, fam)
				}
			}
			if d := st.LocalDetector(fam); d.CIDR.IsValid() && FamilyOf(d.CIDR.Addr()) != fam {
				t.Fatalf("detector %v for %s", d, fam)
			}
			for _, p := range st.ServiceCIDRsOf(fam) {
				if !p.IsValid() || p != p.Masked() {
					t.Fatalf("service CIDR %v", p)
				}
			}
		}
	})
}
