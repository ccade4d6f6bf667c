package ipvs

import (
	"bytes"
	"net/netip"
	"testing"

	"nodeagent/proxier"
	"nodeagent/proxier/nft"
)

// configStates are testState under the settings that change node-port virtual servers or the
// fixed part of the helper tables, each pinned by testdata/render-<name>.txt.
func configStates() map[string]*proxier.State {
	with := func(edit func(st *proxier.State)) *proxier.State {
		st := testState()
		st.Node.PodCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:244:1::/64")}
		edit(st)
		return st
	}
	return map[string]*proxier.State{
		// --nodeport-addresses primary: node01's Node names 10.0.0.151 only (IPv6 node ports
		// stay on every address); the node also holds 10.0.0.200.
		"nodeport-primary": with(func(st *proxier.State) {
			st.Node.IPs = append(st.Node.IPs, addr("10.0.0.200"))
			st.Node.PrimaryIPs = []netip.Addr{addr("10.0.0.151")}
			st.Config.NodePortPrimary = true
		}),
		"detect-local-node-cidr": with(func(st *proxier.State) {
			st.Config.LocalDetect = proxier.LocalDetect{Mode: proxier.DetectNodeCIDR}
		}),
		"detect-local-bridge": with(func(st *proxier.State) {
			st.Config.LocalDetect = proxier.LocalDetect{Mode: proxier.DetectBridgeInterface, BridgeInterface: "cni0"}
		}),
		"detect-local-prefix": with(func(st *proxier.State) {
			st.Config.LocalDetect = proxier.LocalDetect{Mode: proxier.DetectInterfaceNamePrefix, InterfaceNamePrefix: "veth"}
		}),
		// No --cluster-cidr: the node's own traffic sourced from a cluster IP is masqueraded.
		"detect-local-none": with(func(st *proxier.State) { st.Config.ClusterCIDRs = nil }),
		"masquerade-bit":    with(func(st *proxier.State) { st.Config.MasqueradeMark = 1 << 12 }),
	}
}

// TestRenderConfig pins the render under each setting of configStates.
func TestRenderConfig(t *testing.T) {
	for name, st := range configStates() {
		t.Run(name, func(t *testing.T) {
			var b bytes.Buffer
			if err := NewRenderer(Options{Scheduler: "rr"}).Render(&b, st); err != nil {
				t.Fatal(err)
			}
			golden(t, "render-"+name+".txt", b.Bytes())
		})
	}
}

// TestConfigTablesMatchNft programs each configStates helper table over netlink and compares it
// with what nft makes of its text (needs nf_tables only, not IPVS).
func TestConfigTablesMatchNft(t *testing.T) {
	for name, st := range configStates() {
		t.Run(name, func(t *testing.T) {
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
		})
	}
}
