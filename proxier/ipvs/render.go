package ipvs

import (
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"nodeagent/proxier"
)

// protoFlag is ipvsadm's option for a virtual server's protocol.
func protoFlag(p uint8) string {
	switch p {
	case unix.IPPROTO_UDP:
		return "-u"
	case unix.IPPROTO_SCTP:
		return "--sctp-service"
	}
	return "-t"
}

// vsLine is the virtual server as `ipvsadm -Sn` prints it.
func vsLine(vs *virtualServer) string {
	s := fmt.Sprintf("-A %s %s -s %s", protoFlag(vs.key.Proto), netip.AddrPortFrom(vs.key.Addr, vs.key.Port), vs.scheduler)
	if vs.persistent {
		s += fmt.Sprintf(" -p %d", vs.timeout)
	}
	return s
}

// destLine is one real server as `ipvsadm -Sn` prints it (masquerading, weight 1).
func destLine(vs *virtualServer, d netip.AddrPort, weight int) string {
	return fmt.Sprintf("-a %s %s -r %s -m -w %d", protoFlag(vs.key.Proto), netip.AddrPortFrom(vs.key.Addr, vs.key.Port), d, weight)
}

// renderIPVS writes the virtual servers of d as `ipvsadm -Sn` would list them, sorted.
func renderIPVS(w io.Writer, d *desired) error {
	var b strings.Builder
	for _, k := range sortedKeys(d.vs) {
		vs := d.vs[k]
		b.WriteString(vsLine(vs) + "\n")
		for _, dst := range vs.dests {
			b.WriteString(destLine(vs, dst, 1) + "\n")
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// renderAll is Render's output: the addresses on the dummy interface, the IPVS table, then the
// helper tables, each under a comment line.
func renderAll(w io.Writer, d *desired, fams []proxier.Family) error {
	var addrs []netip.Addr
	for a := range d.bind {
		addrs = append(addrs, a)
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	var b strings.Builder
	fmt.Fprintf(&b, "# addresses on %s\n", DummyInterface)
	for _, a := range addrs {
		fmt.Fprintf(&b, "# %s\n", netip.PrefixFrom(a, a.BitLen()))
	}
	b.WriteString("# ipvsadm -Sn\n")
	if _, err := io.WriteString(w, b.String()); err != nil {
		return err
	}
	if err := renderIPVS(w, d); err != nil {
		return err
	}
	for _, f := range fams {
		if _, err := fmt.Fprintf(w, "# nft helper table (%s)\n", f); err != nil {
			return err
		}
		if err := d.tables[f].writeText(w); err != nil {
			return err
		}
	}
	return nil
}
