package bench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base32"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"nodeagent/proxier"
)

// The implementations the against benchmark compares.
const (
	ImplNodeagent = "nodeagent"
	ImplKubeProxy = "kube-proxy"
)

// Probe is something one implementation's kernel holds once a change is programmed: an IPv4
// nf_tables chain with a rule in it (Chain), or an element of a map (Set) under one of Keys whose
// value starts with Value. iptables-nft (the iptables of the lab's machines and of every current
// distribution) keeps iptables rules in nf_tables too, so one kind of observer serves both modes
// of both implementations: table "nat" for iptables, the implementation's own table for nftables.
//
// Every implementation commits a sync in one transaction (iptables-restore of the nat table, one
// nft batch), so "the endpoint's chain has a rule" or "the endpoint is in the map" means "the sync
// that added this endpoint, with everything that sends traffic to it, is in the kernel". Either
// check costs a netlink request whose answer does not grow with the ruleset, so polling it every
// millisecond perturbs neither proxy, where listing hundreds of thousands of rules would.
type Probe struct {
	Table string
	Chain string
	Set   string
	Keys  [][]byte
	Value []byte
}

func (p Probe) String() string {
	if p.Set != "" {
		return p.Table + "/" + p.Set + " element"
	}
	return p.Table + "/" + p.Chain
}

// request is the observer's request line for p.
func (p Probe) request(id string) string {
	if p.Set == "" {
		return fmt.Sprintf("%s chain %s %s", id, p.Table, p.Chain)
	}
	keys := make([]string, len(p.Keys))
	for i, k := range p.Keys {
		keys[i] = hex.EncodeToString(k)
	}
	return fmt.Sprintf("%s elem %s %s %s %s", id, p.Table, p.Set, hex.EncodeToString(p.Value), strings.Join(keys, ","))
}

// parseRequest reads a request line back.
func parseRequest(line string) (id string, p Probe, err error) {
	f := strings.Fields(line)
	switch {
	case len(f) == 4 && f[1] == "chain":
		return f[0], Probe{Table: f[2], Chain: f[3]}, nil
	case len(f) == 6 && f[1] == "elem":
		p = Probe{Table: f[2], Set: f[3]}
		if p.Value, err = hex.DecodeString(f[4]); err != nil {
			return "", p, fmt.Errorf("observe: bad value in %q", line)
		}
		for _, k := range strings.Split(f[5], ",") {
			b, err := hex.DecodeString(k)
			if err != nil {
				return "", p, fmt.Errorf("observe: bad key in %q", line)
			}
			p.Keys = append(p.Keys, b)
		}
		return f[0], p, nil
	}
	return "", p, fmt.Errorf("observe: bad request %q", line)
}

// EndpointProbe is what shows that impl in mode programmed endpoint ep of generated service i
// (port "http"/TCP, cluster IP clusterIP, endpoints endpoints in all).
func EndpointProbe(impl, mode string, i int, clusterIP netip.Addr, endpoints int, ep netip.AddrPort) (Probe, error) {
	ns, name := Namespace, ServiceName(i)
	switch impl + "/" + mode {
	case ImplNodeagent + "/iptables":
		// proxier/iptables: "NA-SEP-" + hash of the ServicePortName's String and the endpoint.
		spn := proxier.ServicePortName{NamespacedName: types.NamespacedName{Namespace: ns, Name: name},
			Port: "http", Protocol: v1.ProtocolTCP, Family: proxier.IPv4}
		return Probe{Table: "nat", Chain: "NA-SEP-" + hash32(spn.String()+"|"+ep.String(), 16)}, nil
	case ImplKubeProxy + "/iptables":
		// kube-proxy: "KUBE-SEP-" + hash of "ns/name:port" + protocol + "ip:port".
		return Probe{Table: "nat", Chain: "KUBE-SEP-" + hash32(ns+"/"+name+":http"+"tcp"+ep.String(), 16)}, nil
	case ImplKubeProxy + "/nftables":
		// "endpoint-" + hash + "-ns/name/proto/port__ip/port" in table ip kube-proxy.
		readable := ns + "/" + name + "/tcp/http__" + ep.Addr().String() + "/" + strconv.Itoa(int(ep.Port()))
		return Probe{Table: "kube-proxy", Chain: "endpoint-" + hash32(readable, 8) + "-" + readable}, nil
	case ImplNodeagent + "/nftables":
		// proxier/nftables keeps the endpoints of a service without affinity in slots 0..n-1 of
		// the shared map service-endpoints: key cluster IP . protocol . port . slot (each field
		// padded to 4 bytes, the slot in host order as numgen writes it), value address . port.
		if !clusterIP.Is4() {
			return Probe{}, fmt.Errorf("no IPv4 cluster IP for %s", name)
		}
		p := Probe{Table: "nodeagent", Set: "service-endpoints",
			Value: binary.BigEndian.AppendUint16(ep.Addr().AsSlice(), ep.Port())}
		for slot := range endpoints {
			k := append(clusterIP.AsSlice(), unix.IPPROTO_TCP, 0, 0, 0)
			k = binary.BigEndian.AppendUint16(k, 80)
			k = append(k, 0, 0)
			p.Keys = append(p.Keys, binary.NativeEndian.AppendUint32(k, uint32(slot)))
		}
		return p, nil
	}
	return Probe{}, fmt.Errorf("no endpoint probe known for %s in %s mode", impl, mode)
}

// ReadyProbe is a chain that impl fills in its first sync in mode, to know it is up.
func ReadyProbe(impl, mode string) (Probe, error) {
	switch impl + "/" + mode {
	case ImplNodeagent + "/iptables":
		return Probe{Table: "nat", Chain: "NA-POSTROUTING"}, nil
	case ImplKubeProxy + "/iptables":
		return Probe{Table: "nat", Chain: "KUBE-POSTROUTING"}, nil
	case ImplNodeagent + "/nftables":
		return Probe{Table: "nodeagent", Chain: "services"}, nil
	case ImplKubeProxy + "/nftables":
		return Probe{Table: "kube-proxy", Chain: "services"}, nil
	}
	return Probe{}, fmt.Errorf("no ready probe known for %s in %s mode", impl, mode)
}

func hash32(s string, n int) string {
	sum := sha256.Sum256([]byte(s))
	return base32.StdEncoding.EncodeToString(sum[:])[:n]
}

// Observe serves wait requests of the against benchmark in the current network namespace: each
// line of r is a Probe's request; Observe polls the kernel until the probe holds and answers
// "ID UNIXNANO" (the wall-clock time it saw it), or "ID error MESSAGE". A TrafficProbe's request
// is answered with its TrafficResult, a DatapathProbe's with its DatapathRun. Requests are served one
// at a time; Observe returns when r ends or ctx is done.
func Observe(ctx context.Context, r io.Reader, w io.Writer) error {
	if err := InsideLab(); err != nil {
		return err
	}
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return fmt.Errorf("observe: netlink: %w", err)
	}
	defer conn.Close()
	lines := make(chan string)
	readErr := make(chan error, 1)
	go func() {
		in := bufio.NewScanner(r)
		for in.Scan() {
			lines <- in.Text()
		}
		readErr <- in.Err()
	}()
	for {
		var line string
		select {
		case <-ctx.Done():
			return nil
		case err := <-readErr:
			return err
		case line = <-lines:
		}
		if f := strings.Fields(line); len(f) > 1 && f[1] == "datapath" {
			if err := answerDatapath(ctx, w, f); err != nil {
				return err
			}
			continue
		}
		if f := strings.Fields(line); len(f) > 1 && f[1] == "traffic" {
			tp, err := parseTrafficRequest(f[2:])
			if err != nil {
				return err
			}
			r, err := probeTraffic(ctx, tp)
			if ctx.Err() != nil {
				return nil
			}
			if err != nil {
				fmt.Fprintf(w, "%s error %s\n", f[0], strings.ReplaceAll(err.Error(), "\n", " "))
				continue
			}
			fmt.Fprintln(w, r.answer(f[0]))
			continue
		}
		id, p, err := parseRequest(line)
		if err != nil {
			return err
		}
		seen, err := poll(ctx, conn, p)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			fmt.Fprintf(w, "%s error %s\n", id, strings.ReplaceAll(err.Error(), "\n", " "))
			continue
		}
		fmt.Fprintf(w, "%s %d\n", id, seen.UnixNano())
	}
}

// poll checks p until it holds: every millisecond at first, so that a fast change is timed to
// about a millisecond, then every 20 ms so that a wait of minutes costs little CPU.
func poll(ctx context.Context, conn *netlink.Conn, p Probe) (time.Time, error) {
	start := time.Now()
	for ctx.Err() == nil {
		ok, err := holds(conn, p)
		if err != nil {
			return time.Time{}, err
		}
		if ok {
			return time.Now(), nil
		}
		if time.Since(start) < 5*time.Second {
			time.Sleep(time.Millisecond)
		} else {
			time.Sleep(20 * time.Millisecond)
		}
	}
	return time.Time{}, ctx.Err()
}

func holds(conn *netlink.Conn, p Probe) (bool, error) {
	if p.Set == "" {
		n, err := countRules(conn, p)
		return n > 0, err
	}
	for _, k := range p.Keys {
		v, err := elementValue(conn, p.Table, p.Set, k)
		if err != nil {
			return false, err
		}
		if bytes.HasPrefix(v, p.Value) {
			return true, nil
		}
	}
	return false, nil
}

// nfgenmsg is the header of every nf_tables message: family, version, resource id.
var nfgenmsg = []byte{unix.NFPROTO_IPV4, unix.NFNETLINK_V0, 0, 0}

// elementValue gets one element of a map by its key (not a dump: the kernel looks it up) and
// returns its data, nil when there is no such element, set or table.
func elementValue(conn *netlink.Conn, table, set string, key []byte) ([]byte, error) {
	ae := netlink.NewAttributeEncoder()
	ae.String(unix.NFTA_SET_ELEM_LIST_TABLE, table)
	ae.String(unix.NFTA_SET_ELEM_LIST_SET, set)
	ae.Nested(unix.NFTA_SET_ELEM_LIST_ELEMENTS, func(ae *netlink.AttributeEncoder) error {
		ae.Nested(unix.NFTA_LIST_ELEM, func(ae *netlink.AttributeEncoder) error {
			ae.Nested(unix.NFTA_SET_ELEM_KEY, func(ae *netlink.AttributeEncoder) error {
				ae.Bytes(unix.NFTA_DATA_VALUE, key)
				return nil
			})
			return nil
		})
		return nil
	})
	attrs, err := ae.Encode()
	if err != nil {
		return nil, err
	}
	msgs, err := conn.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETSETELEM),
			// No ACK asked: an answer is the element or an error, one message either way (an ACK
			// after the element would arrive on its own and answer the next request).
			Flags: netlink.Request},
		Data: append(slices.Clone(nfgenmsg), attrs...),
	})
	if err != nil {
		var oe *netlink.OpError
		if errors.As(err, &oe) && errors.Is(oe.Err, syscall.ENOENT) {
			return nil, nil
		}
		return nil, fmt.Errorf("get element of %s/%s: %w", table, set, err)
	}
	for _, m := range msgs {
		if m.Header.Type&0xff != unix.NFT_MSG_NEWSETELEM || len(m.Data) < 4 {
			continue
		}
		if v := nestedValue(m.Data[4:], unix.NFTA_SET_ELEM_LIST_ELEMENTS, unix.NFTA_LIST_ELEM, unix.NFTA_SET_ELEM_DATA, unix.NFTA_DATA_VALUE); v != nil {
			return v, nil
		}
	}
	return nil, nil
}

// nestedValue follows a path of attribute types through nested attributes.
func nestedValue(b []byte, path ...uint16) []byte {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return nil
	}
	for ad.Next() {
		if ad.Type() != path[0] {
			continue
		}
		if len(path) == 1 {
			return ad.Bytes()
		}
		return nestedValue(ad.Bytes(), path[1:]...)
	}
	return nil
}

// countRules dumps the rules of one chain (the kernel filters by table and chain, so the cost does
// not grow with the ruleset) and counts them without decoding their expressions.
func countRules(conn *netlink.Conn, c Probe) (int, error) {
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_RULE_TABLE, Data: append([]byte(c.Table), 0)},
		{Type: unix.NFTA_RULE_CHAIN, Data: append([]byte(c.Chain), 0)},
	})
	if err != nil {
		return 0, err
	}
	msgs, err := conn.Execute(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETRULE),
			Flags: netlink.Request | netlink.Dump,
		},
		Data: append(slices.Clone(nfgenmsg), attrs...),
	})
	if err != nil {
		var oe *netlink.OpError
		if errors.As(err, &oe) && (errors.Is(oe.Err, syscall.ENOENT)) {
			return 0, nil // no such table (yet)
		}
		return 0, fmt.Errorf("list rules of %s/%s: %w", c.Table, c.Chain, err)
	}
	n := 0
	for _, m := range msgs {
		if m.Header.Type&0xff == unix.NFT_MSG_NEWRULE {
			n++
		}
	}
	return n, nil
}
