package ipvs

import (
	"errors"
	"fmt"

	gnft "github.com/google/nftables"
	"github.com/vishvananda/netlink"
)

// Leftovers reports whether this network namespace holds what an ipvs-mode agent leaves: the
// dummy interface or a helper table. Another mode asks before cleaning up after this one, so
// that a node that never ran ipvs mode is not made to load the ip_vs module (kube-proxy runs
// modprobe ip_vs for the same cleanup).
func Leftovers() (bool, error) {
	if _, err := netlink.LinkByName(DummyInterface); err == nil {
		return true, nil
	} else if !errors.As(err, new(netlink.LinkNotFoundError)) {
		return false, fmt.Errorf("look for %s: %w", DummyInterface, err)
	}
	c, err := gnft.New()
	if err != nil {
		return false, fmt.Errorf("nftables: %w", err)
	}
	tables, err := c.ListTables()
	if err != nil {
		return false, fmt.Errorf("list nftables tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == tableName && (t.Family == gnft.TableFamilyIPv4 || t.Family == gnft.TableFamilyIPv6) {
			return true, nil
		}
	}
	return false, nil
}
