package nftables

import (
	"bytes"
	"net/netip"
	"nodeagent/proxier/nft"
	"os"
	"path/filepath"
	"testing"

	"nodeagent/proxier"
)

// configStates are testState under the settings that change the fixed part of the table, each
// pinned by testdata/<name>.nft.
func configStates() map[string]*proxier.State {
	with := func(edit func(st *proxier.State)) *proxier.State {
		st := testState()
		st.Node.PodCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:244:1::/64")}
		edit(st)
		return st
	}
	return map[string]*proxier.State{
		// --nodeport-addresses primary: node01's Node names 10.0.0.151 only (so IPv6 node ports
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
		"masquerade-bit": with(func(st *proxier.State) { st.Config.MasqueradeMark = 1 << 12 }),
		// A tenant's loadBalancerSourceRanges of 0.0.0.0/0: a match of zero bits must still be
		// a valid expression (a zero-length load made the kernel refuse the whole sync).
		"source-range-any": with(func(st *proxier.State) {
			for _, sp := range st.Services {
				if len(sp.LoadBalancerSourceRanges) > 0 {
					sp.LoadBalancerSourceRanges = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}
				}
			}
		}),
		// A configured range and a ServiceCIDR object's: traffic to their unallocated
		// addresses is dropped.
		"service-cidrs": with(func(st *proxier.State) {
			st.Config.ServiceCIDRs = []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12")}
			st.ServiceCIDRs = []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12"), netip.MustParsePrefix("fd00:96::/108")}
		}),
	}
}

// TestRenderConfigGolden pins the table under each setting of configStates.
func TestRenderConfigGolden(t *testing.T) {
	for name, st := range configStates() {
		t.Run(name, func(t *testing.T) {
			p := &Proxier{fams: []*nft.Family{nft.IPv4, nft.IPv6}, rebuild: true}
			var buf bytes.Buffer
			if err := p.Render(&buf, st); err != nil {
				t.Fatal(err)
			}
			got := buf.String()
			path := filepath.Join("testdata", name+".nft")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("Render differs from %s (run with -update if intended):\n%s", path, lineDiff(string(want), got))
			}
		})
	}
}

// TestConfigSyncMatchesRender programs each configStates table over netlink and compares it with
// what nft makes of the rendered text: the expressions of every new match (iifname, the mark,
// the service CIDRs) are what nft would have written.
func TestConfigSyncMatchesRender(t *testing.T) {
	for name, st := range configStates() {
		t.Run(name, func(t *testing.T) {
			ns := netns(t)
			p := newProxier(t, ns)
			mustSync(t, p, st, proxier.Changes{Full: true})
			assertKernelMatchesRender(t, p, ns, st, "ip", "ip6")
		})
	}
}
