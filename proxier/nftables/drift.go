package nftables

import (
	"encoding/binary"
	"errors"
	"fmt"
	"nodeagent/proxier/nft"
	"slices"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// kernelCounts is what a table holds in the kernel as far as drift detection looks: rules per
// chain and elements per named set. Rules are counted rather than compared because the kernel
// lists expressions in its own form; a removed or added rule or element changes a count.
type kernelCounts struct {
	rules map[string]int
	elems map[string]int
}

// dumpCounts reads the rules of family f's table and the elements of the named sets in sets
// (one netlink dump each) through conn.
func dumpCounts(conn *netlink.Conn, f *nft.Family, sets []string) (kernelCounts, error) {
	kc := kernelCounts{rules: map[string]int{}, elems: map[string]int{}}
	msgs, err := dump(conn, unix.NFT_MSG_GETRULE, f, func(ae *netlink.AttributeEncoder) {
		ae.String(unix.NFTA_RULE_TABLE, tableName)
	})
	if err != nil {
		return kc, fmt.Errorf("list rules: %w", err)
	}
	for _, m := range msgs {
		ad, err := attrs(m)
		if err != nil {
			return kc, fmt.Errorf("list rules: %w", err)
		}
		for ad.Next() {
			if ad.Type() == unix.NFTA_RULE_CHAIN {
				kc.rules[ad.String()]++
			}
		}
	}
	for _, s := range sets {
		msgs, err := dump(conn, unix.NFT_MSG_GETSETELEM, f, func(ae *netlink.AttributeEncoder) {
			ae.String(unix.NFTA_SET_ELEM_LIST_TABLE, tableName)
			ae.String(unix.NFTA_SET_ELEM_LIST_SET, s)
		})
		if err != nil {
			return kc, fmt.Errorf("list elements of %s: %w", s, err)
		}
		n := 0
		for _, m := range msgs {
			ad, err := attrs(m)
			if err != nil {
				return kc, fmt.Errorf("list elements of %s: %w", s, err)
			}
			for ad.Next() {
				if ad.Type() != unix.NFTA_SET_ELEM_LIST_ELEMENTS {
					continue
				}
				ad.Nested(func(nd *netlink.AttributeDecoder) error {
					for nd.Next() {
						if nd.Type() == unix.NFTA_LIST_ELEM {
							n++
						}
					}
					return nil
				})
			}
			if err := ad.Err(); err != nil {
				return kc, fmt.Errorf("list elements of %s: %w", s, err)
			}
		}
		kc.elems[s] = n
	}
	return kc, nil
}

// generation returns the nftables generation of conn's network namespace, which every committed
// transaction (anyone's, in any table) moves on by one.
func generation(conn *netlink.Conn) (uint32, error) {
	msgs, err := conn.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETGEN), Flags: netlink.Request},
		Data:   []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0},
	})
	if err != nil {
		return 0, fmt.Errorf("get nftables generation: %w", err)
	}
	for _, m := range msgs {
		ad, err := attrs(m)
		if err != nil {
			return 0, fmt.Errorf("get nftables generation: %w", err)
		}
		for ad.Next() {
			if ad.Type() == unix.NFTA_GEN_ID {
				return ad.Uint32(), nil
			}
		}
	}
	return 0, errors.New("get nftables generation: no NFTA_GEN_ID in the answer")
}

// dump sends an nftables GET request with NLM_F_DUMP for family f and returns the answers.
func dump(conn *netlink.Conn, msg uint16, f *nft.Family, encode func(*netlink.AttributeEncoder)) ([]netlink.Message, error) {
	ae := netlink.NewAttributeEncoder()
	encode(ae)
	data, err := ae.Encode()
	if err != nil {
		return nil, err
	}
	req := netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | msg),
			Flags: netlink.Request | netlink.Dump,
		},
		Data: append([]byte{f.NFProto, unix.NFNETLINK_V0, 0, 0}, data...),
	}
	return conn.Execute(req)
}

// attrs decodes an nftables answer's attributes, after its nfgenmsg header.
func attrs(m netlink.Message) (*netlink.AttributeDecoder, error) {
	if len(m.Data) < 4 {
		return nil, fmt.Errorf("short nftables message of %d bytes", len(m.Data))
	}
	ad, err := netlink.NewAttributeDecoder(m.Data[4:])
	if err != nil {
		return nil, err
	}
	ad.ByteOrder = binary.BigEndian
	return ad, nil
}

// wantCounts is what t says the kernel should hold, in kernelCounts' terms, and the named sets
// whose elements are ours alone (affinity sets, which packets fill, are left out).
func (t *programmed) wantCounts() (kernelCounts, []string) {
	kc := kernelCounts{rules: make(map[string]int, len(t.chains)), elems: map[string]int{}}
	for name, cs := range t.chains {
		kc.rules[name] = cs.rules
	}
	var sets []string
	for name, s := range t.sets {
		if s.Timeout > 0 {
			continue
		}
		sets = append(sets, name)
		kc.elems[name] = 0
	}
	slices.Sort(sets)
	for k := range t.elems {
		kc.elems[t.setInfo[k.set].name]++
	}
	for k := range t.verdicts {
		kc.elems[t.setInfo[k.set].name]++
	}
	return kc, sets
}

// compareCounts returns how got differs from want ("" when it does not).
func compareCounts(want, got kernelCounts) string {
	for _, c := range sortedKeys(want.rules) {
		if got.rules[c] != want.rules[c] {
			return fmt.Sprintf("chain %s holds %d rules, want %d", c, got.rules[c], want.rules[c])
		}
	}
	for _, c := range sortedKeys(got.rules) {
		if _, ok := want.rules[c]; !ok {
			return fmt.Sprintf("chain %s holds %d rules and is not ours", c, got.rules[c])
		}
	}
	for _, s := range sortedKeys(want.elems) {
		if g, ok := got.elems[s]; ok && g != want.elems[s] {
			return fmt.Sprintf("set %s holds %d elements, want %d", s, g, want.elems[s])
		}
	}
	return ""
}

func sortedKeys(m map[string]int) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
