package bench

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"fmt"
	"io"
	"net/netip"
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

// ChainRef names one IPv4 nf_tables chain. iptables-nft (the iptables of the lab's machines and
// of every current distribution) keeps iptables rules in nf_tables too, so one probe observes
// both modes of both implementations: table "nat" for iptables, the implementation's own table
// for nftables.
type ChainRef struct {
	Table string
	Chain string
}

// Both implementations commit a sync in one transaction (iptables-restore of the nat table,
// one nft batch), and name an endpoint's chain after the service port and the endpoint. So
// "the chain of (service, endpoint) has a rule" means "the sync that added this endpoint, with
// every rule that sends traffic to it, is in the kernel" — a check that costs one small netlink
// dump whatever the size of the ruleset, instead of listing hundreds of thousands of rules.

// EndpointChain is the chain that DNATs to ep for port "http"/TCP of generated service i, as
// impl names it in mode.
func EndpointChain(impl, mode string, i int, ep netip.AddrPort) (ChainRef, error) {
	ns, name := Namespace, ServiceName(i)
	switch impl + "/" + mode {
	case ImplNodeagent + "/iptables":
		// proxier/iptables: "NA-SEP-" + hash of the ServicePortName's String and the endpoint.
		spn := proxier.ServicePortName{NamespacedName: types.NamespacedName{Namespace: ns, Name: name},
			Port: "http", Protocol: v1.ProtocolTCP, Family: proxier.IPv4}
		return ChainRef{"nat", "NA-SEP-" + hash32(spn.String()+"|"+ep.String(), 16)}, nil
	case ImplKubeProxy + "/iptables":
		// kube-proxy: "KUBE-SEP-" + hash of "ns/name:port" + protocol + "ip:port".
		return ChainRef{"nat", "KUBE-SEP-" + hash32(ns+"/"+name+":http"+"tcp"+ep.String(), 16)}, nil
	case ImplNodeagent + "/nftables", ImplKubeProxy + "/nftables":
		// Both: "endpoint-" + hash + "-ns/name/proto/port__ip/port" in their own ip table.
		readable := ns + "/" + name + "/tcp/http__" + ep.Addr().String() + "/" + strconv.Itoa(int(ep.Port()))
		table := "nodeagent"
		if impl == ImplKubeProxy {
			table = "kube-proxy"
		}
		return ChainRef{table, "endpoint-" + hash32(readable, 8) + "-" + readable}, nil
	}
	return ChainRef{}, fmt.Errorf("no endpoint chain known for %s in %s mode", impl, mode)
}

// ReadyChain is a chain that impl fills in its first sync in mode, to know it is up.
func ReadyChain(impl, mode string) (ChainRef, error) {
	switch impl + "/" + mode {
	case ImplNodeagent + "/iptables":
		return ChainRef{"nat", "NA-POSTROUTING"}, nil
	case ImplKubeProxy + "/iptables":
		return ChainRef{"nat", "KUBE-POSTROUTING"}, nil
	case ImplNodeagent + "/nftables":
		return ChainRef{"nodeagent", "services"}, nil
	case ImplKubeProxy + "/nftables":
		return ChainRef{"kube-proxy", "services"}, nil
	}
	return ChainRef{}, fmt.Errorf("no ready chain known for %s in %s mode", impl, mode)
}

func hash32(s string, n int) string {
	sum := sha256.Sum256([]byte(s))
	return base32.StdEncoding.EncodeToString(sum[:])[:n]
}

// Observe serves wait requests of the against benchmark in the current network namespace. Each
// line of r is "ID TABLE CHAIN"; Observe polls the kernel until that IPv4 chain holds a rule and
// answers "ID UNIXNANO" (the wall-clock time it saw it), or "ID error MESSAGE". Requests are
// served one at a time; Observe returns when r ends or ctx is done.
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
		f := strings.Fields(line)
		if len(f) != 3 {
			return fmt.Errorf("observe: bad request %q", line)
		}
		seen, err := pollChain(ctx, conn, ChainRef{Table: f[1], Chain: f[2]})
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			fmt.Fprintf(w, "%s error %s\n", f[0], strings.ReplaceAll(err.Error(), "\n", " "))
			continue
		}
		fmt.Fprintf(w, "%s %d\n", f[0], seen.UnixNano())
	}
}

// pollChain polls until c has a rule: every millisecond at first, so that a fast change is timed
// to about a millisecond, then every 20 ms so that a wait of minutes costs little CPU.
func pollChain(ctx context.Context, conn *netlink.Conn, c ChainRef) (time.Time, error) {
	start := time.Now()
	for ctx.Err() == nil {
		n, err := countRules(conn, c)
		if err != nil {
			return time.Time{}, err
		}
		if n > 0 {
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

// countRules dumps the rules of one chain (the kernel filters by table and chain, so the cost does
// not grow with the ruleset) and counts them without decoding their expressions.
func countRules(conn *netlink.Conn, c ChainRef) (int, error) {
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_RULE_TABLE, Data: append([]byte(c.Table), 0)},
		{Type: unix.NFTA_RULE_CHAIN, Data: append([]byte(c.Chain), 0)},
	})
	if err != nil {
		return 0, err
	}
	// nfgenmsg: family, version, resource id (big endian).
	hdr := []byte{unix.NFPROTO_IPV4, unix.NFNETLINK_V0, 0, 0}
	msgs, err := conn.Execute(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETRULE),
			Flags: netlink.Request | netlink.Dump,
		},
		Data: append(hdr, attrs...),
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
