package ipvs

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"nodeagent/proxier"
	"nodeagent/proxier/nft"
)

// listed is `nft list table` of our table in ns, without handles, with lines sorted inside each
// element list so that two tables built different ways compare equal.
func listed(t *testing.T, ns string, f *nft.Family) string {
	t.Helper()
	out := mustNS(t, ns, "nft", "list", "table", f.Name, tableName)
	// Join element lists onto one line each, then sort their items.
	var b strings.Builder
	inElems := false
	var items []string
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(l, "elements = {"):
			inElems = true
			items = nil
			l = strings.TrimPrefix(l, "elements = {")
			fallthrough
		case inElems:
			end := strings.HasSuffix(l, "}")
			l = strings.TrimSuffix(l, "}")
			for _, it := range strings.Split(l, ",") {
				if it = strings.TrimSpace(it); it != "" {
					items = append(items, it)
				}
			}
			if end {
				inElems = false
				slices.Sort(items)
				b.WriteString("elements = { " + strings.Join(items, ", ") + " }\n")
			}
		default:
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// renderTable is the nft text of one family's table for st.
func renderTable(st *proxier.State, pf proxier.Family) string {
	d := buildDesired(st, []proxier.Family{pf}, DefaultScheduler, nil)
	var b bytes.Buffer
	_ = d.tables[pf].writeText(&b)
	return b.String()
}

// TestTablesMatchNft programs the helper tables over netlink and compares them with what nft
// itself makes of the rendered text, so that the expressions and their text say the same.
// It needs nf_tables only, not IPVS.
func TestTablesMatchNft(t *testing.T) {
	st := testState()
	viaNetlink, viaNft := newNS(t), newNS(t)
	k, err := newGnftKernel("/run/netns/" + viaNetlink)
	if err != nil {
		t.Fatal(err)
	}
	defer k.close()
	for _, pf := range proxier.Families {
		d := buildDesired(st, []proxier.Family{pf}, DefaultScheduler, nil)
		if err := k.replace(d.tables[pf]); err != nil {
			t.Fatalf("%s: %v", pf, err)
		}
		if out, err := inNS(viaNft, renderTable(st, pf), "nft", "-f", "-"); err != nil {
			t.Fatalf("%s: %v %s", pf, err, out)
		}
		f := nft.FamilyOf(pf)
		if a, b := listed(t, viaNetlink, f), listed(t, viaNft, f); a != b {
			t.Errorf("%s: netlink and nft differ:\nnetlink:\n%s\nnft:\n%s", pf, a, b)
		}
	}
	// A second replace is one transaction too, over the existing table.
	d := buildDesired(st, proxier.Families, DefaultScheduler, nil)
	if err := k.replace(d.tables[proxier.IPv4]); err != nil {
		t.Fatalf("replace over an existing table: %v", err)
	}
}

// TestTableUpdate changes elements and firewall chains in place and checks the result equals a
// table built from scratch; then reads the ownership record back.
func TestTableUpdate(t *testing.T) {
	before := testState()
	after := cloneState(before)
	// A new service, a removed one, new endpoints, changed source ranges, a removed firewall.
	after.Services = slices.DeleteFunc(after.Services, func(sp *proxier.ServicePort) bool { return sp.Name.Name == "sctp" })
	after.Services = append(after.Services, withEndpoints(&proxier.ServicePort{
		Name: spn("default", "new", "", v1.ProtocolUDP, proxier.IPv4), ClusterIP: addr("10.96.0.60"), Port: 53,
		LoadBalancerIPs: []netip.Addr{addr("10.0.0.60")}, LoadBalancerSourceRanges: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")},
	}, ep("10.244.1.60", 53, "node01")))
	myapp := service(after, "myapp", proxier.IPv4)
	myapp.LoadBalancerSourceRanges = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}
	empty := service(after, "empty", proxier.IPv4)
	withEndpoints(empty, ep("10.244.3.50", 80, "node03"))

	incremental, scratch := newNS(t), newNS(t)
	ki, err := newGnftKernel("/run/netns/" + incremental)
	if err != nil {
		t.Fatal(err)
	}
	defer ki.close()
	ks, err := newGnftKernel("/run/netns/" + scratch)
	if err != nil {
		t.Fatal(err)
	}
	defer ks.close()
	pf := proxier.IPv4
	d := buildDesired(before, []proxier.Family{pf}, DefaultScheduler, nil)
	if err := ki.replace(d.tables[pf]); err != nil {
		t.Fatal(err)
	}
	names := map[types.NamespacedName]bool{}
	for _, sp := range append(slices.Clone(before.Services), after.Services...) {
		names[sp.Name.NamespacedName] = true
	}
	ops, ok := d.patch(after, names)
	if !ok {
		t.Fatal("patch refused")
	}
	if err := ki.update(d.tables[pf], ops[pf]); err != nil {
		t.Fatal(err)
	}
	// The removed service's virtual server stays recorded until the sync forgets it.
	if err := ki.update(d.tables[pf], d.forget(d.removed)[pf]); err != nil {
		t.Fatal(err)
	}
	fresh := buildDesired(after, []proxier.Family{pf}, DefaultScheduler, nil)
	if err := ks.replace(fresh.tables[pf]); err != nil {
		t.Fatal(err)
	}
	f := nft.FamilyOf(pf)
	if a, b := listed(t, incremental, f), listed(t, scratch, f); a != b {
		t.Errorf("updated table differs from a fresh one:\nupdated:\n%s\nfresh:\n%s", a, b)
	}
	owned, err := ki.owned(f)
	if err != nil {
		t.Fatal(err)
	}
	want := sortedKeys(fresh.vs)
	slices.SortFunc(owned, compareVSKey)
	if !slices.Equal(owned, want) {
		t.Errorf("ownership record:\n got %v\nwant %v", owned, want)
	}
	// No table: nothing owned, no error; remove twice is fine.
	if err := ki.remove(f); err != nil {
		t.Fatal(err)
	}
	if err := ki.remove(f); err != nil {
		t.Fatal(err)
	}
	if owned, err := ki.owned(f); err != nil || len(owned) != 0 {
		t.Fatalf("owned after remove: %v, %v", owned, err)
	}
}

// TestLargeTable replaces the helper table of 6,000 services in one transaction: the batch is
// larger than a netlink socket's default send buffer, which failed with EMSGSIZE at about 4,000.
func TestLargeTable(t *testing.T) {
	st := &proxier.State{Node: proxier.Node{Name: "node01"}}
	for i := range 6000 {
		ip := netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})
		sp := &proxier.ServicePort{Name: spn("default", fmt.Sprintf("svc-%d", i), "", v1.ProtocolTCP, proxier.IPv4),
			ClusterIP: ip, Port: 80, NodePort: uint16(30000 + i%2700),
			LoadBalancerIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})}}
		if i%2 == 0 {
			sp.LoadBalancerSourceRanges = []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}
		}
		st.Services = append(st.Services, sp)
	}
	ns := newNS(t)
	k, err := newGnftKernel("/run/netns/" + ns)
	if err != nil {
		t.Fatal(err)
	}
	defer k.close()
	d := buildDesired(st, []proxier.Family{proxier.IPv4}, DefaultScheduler, nil)
	if err := k.replace(d.tables[proxier.IPv4]); err != nil {
		t.Fatalf("replace a table of 6,000 services: %v", err)
	}
	if out := mustNS(t, ns, "nft", "list", "table", "ip", tableName); !strings.Contains(out, "10.96.23.111") {
		t.Error("the last services' addresses are not in the table")
	}
}
