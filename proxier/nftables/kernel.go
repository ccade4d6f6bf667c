package nftables

import (
	"encoding/binary"
	"errors"
	"fmt"
	"nodeagent/proxier/nft"
	"os"

	gnft "github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// tx is one transaction as Sync writes it: *batch encodes it for the kernel; unit tests record
// it instead. Nothing reaches the kernel before kernel.commit.
type tx interface {
	addTable(f *nft.Family)
	delTable(f *nft.Family)
	addSet(f *nft.Family, s *nft.Set)
	delSet(f *nft.Family, name string)
	addChain(f *nft.Family, c *nft.Chain)
	// flushChain deletes every rule of a chain.
	flushChain(f *nft.Family, name string)
	delChain(f *nft.Family, name string)
	// addRule appends r to the chain.
	addRule(f *nft.Family, chainName string, r nft.Rule)
	// elements adds (del false) or deletes (del true) n elements of s, element i being at(i).
	elements(f *nft.Family, s *nft.Set, n int, at func(i int) element, del bool)
	// size is the transaction's netlink messages and bytes, for SyncStats.
	size() (msgs, bytes int)
}

// kernel is what the Proxier needs of nftables: transactions, the generation that tells
// whether anyone else committed, the counts that drift detection compares, and the deletion of
// our tables. netlinkKernel talks to the kernel; unit tests use a fake that keeps the tables
// as text.
type kernel interface {
	// begin starts a transaction.
	begin() tx
	// commit sends a transaction begun by begin: nil when the kernel committed all of it, else
	// the errors of the failing messages (and nothing was committed).
	commit(t tx) error
	// generation is the nftables generation, which every committed transaction moves on by one.
	generation() (uint32, error)
	// objects is the kernel's use count of family f's table: its chains and named sets.
	objects(f *nft.Family) (int, error)
	// counts lists the rules per chain of f's table and the elements of the named sets in sets.
	counts(f *nft.Family, sets []string) (kernelCounts, error)
	// deleteTables deletes our tables of both families and nothing else; it returns how many
	// there were.
	deleteTables() (int, error)
	close() error
}

var _ kernel = (*netlinkKernel)(nil)

// netlinkKernel is kernel over netlink, in the network namespace netns (nil: our own).
type netlinkKernel struct {
	netns *os.File
	sock  *socket       // transactions
	nl    *netlink.Conn // for queries: generation and drift dumps
}

func newNetlinkKernel(netnsPath string) (*netlinkKernel, error) {
	k := &netlinkKernel{}
	fd := 0
	if netnsPath != "" {
		ns, err := os.Open(netnsPath)
		if err != nil {
			return nil, fmt.Errorf("open network namespace: %w", err)
		}
		k.netns = ns
		fd = int(ns.Fd())
	}
	sock, err := openSocket(fd)
	if err != nil {
		k.close()
		return nil, err
	}
	k.sock = sock
	if k.nl, err = netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: fd}); err != nil {
		k.close()
		return nil, fmt.Errorf("open netfilter netlink socket: %w", err)
	}
	return k, nil
}

func (k *netlinkKernel) close() error {
	var errs []error
	if k.sock != nil {
		errs = append(errs, k.sock.close())
		k.sock = nil
	}
	if k.nl != nil {
		errs = append(errs, k.nl.Close())
		k.nl = nil
	}
	if k.netns != nil {
		errs = append(errs, k.netns.Close())
		k.netns = nil
	}
	return errors.Join(errs...)
}

func (k *netlinkKernel) begin() tx {
	k.sock.seq += 2
	return newBatch(k.sock.seq)
}

func (k *netlinkKernel) commit(t tx) error {
	b := t.(*batch)
	err := k.sock.send(b)
	k.sock.seq = b.seq
	return err
}

func (k *netlinkKernel) generation() (uint32, error) { return generation(k.nl) }

func (k *netlinkKernel) counts(f *nft.Family, sets []string) (kernelCounts, error) {
	return dumpCounts(k.nl, f, sets)
}

func (k *netlinkKernel) objects(f *nft.Family) (int, error) {
	conn, err := k.query()
	if err != nil {
		return 0, err
	}
	t, err := conn.ListTableOfFamily(tableName, tableFamily(f))
	if err != nil {
		return 0, err
	}
	// google/nftables v0.3.0 decodes NFTA_TABLE_USE in host order; the kernel sends it in
	// network order.
	return int(binary.BigEndian.Uint32(binary.NativeEndian.AppendUint32(nil, t.Use))), nil
}

// query returns a google/nftables connection for reads and the rare small write (Cleanup).
func (k *netlinkKernel) query() (*gnft.Conn, error) {
	var opts []gnft.ConnOption
	if k.netns != nil {
		opts = append(opts, gnft.WithNetNSFd(int(k.netns.Fd())))
	}
	return gnft.New(opts...)
}

func tableFamily(f *nft.Family) gnft.TableFamily { return gnft.TableFamily(f.NFProto) }

func (k *netlinkKernel) deleteTables() (int, error) {
	conn, err := k.query()
	if err != nil {
		return 0, err
	}
	tables, err := conn.ListTables()
	if err != nil {
		return 0, fmt.Errorf("list tables: %w", err)
	}
	n := 0
	for _, t := range tables {
		if t.Name == tableName && (t.Family == tableFamily(nft.IPv4) || t.Family == tableFamily(nft.IPv6)) {
			conn.DelTable(t)
			n++
		}
	}
	if n == 0 {
		return 0, nil
	}
	if err := conn.Flush(); err != nil {
		return 0, fmt.Errorf("delete tables: %w", err)
	}
	return n, nil
}
