package ipvs

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	mipvs "github.com/moby/ipvs"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ipvsKernel is the part of the kernel's IPVS API the proxier uses; *mipvs.Handle satisfies it.
type ipvsKernel interface {
	GetServices() ([]*mipvs.Service, error)
	GetService(*mipvs.Service) (*mipvs.Service, error)
	GetDestinations(*mipvs.Service) ([]*mipvs.Destination, error)
	NewService(*mipvs.Service) error
	UpdateService(*mipvs.Service) error
	DelService(*mipvs.Service) error
	NewDestination(*mipvs.Service, *mipvs.Destination) error
	UpdateDestination(*mipvs.Service, *mipvs.Destination) error
	DelDestination(*mipvs.Service, *mipvs.Destination) error
	SetConfig(*mipvs.Config) error
	Close()
}

var _ ipvsKernel = (*mipvs.Handle)(nil)

// netKernel is the dummy interface that holds the service addresses, and the sysctls.
type netKernel interface {
	// ensureDummy creates the dummy interface when it is missing.
	ensureDummy() error
	// dummyAddrs lists the addresses on the dummy interface (none when it does not exist).
	dummyAddrs() ([]netip.Addr, error)
	addAddr(a netip.Addr) error
	delAddr(a netip.Addr) error
	// deleteDummy removes the interface and with it every address; missing is not an error.
	deleteDummy() error
	// sysctl reads and writes /proc/sys/<path> in the proxier's network namespace.
	readSysctl(path string) (string, error)
	writeSysctl(path, value string) error
	close()
}

// linkKernel is netKernel over netlink in one network namespace.
type linkKernel struct {
	h    *netlink.Handle
	ns   netns.NsHandle // netns.None(): our own
	name string
}

func newLinkKernel(nsPath, name string) (*linkKernel, error) {
	ns := netns.None()
	if nsPath != "" {
		var err error
		if ns, err = netns.GetFromPath(nsPath); err != nil {
			return nil, fmt.Errorf("open network namespace %s: %w", nsPath, err)
		}
	}
	var h *netlink.Handle
	var err error
	// Only rtnetlink: by default the handle opens xfrm and netfilter sockets too, and a kernel
	// without xfrm_user (Debian's, until the module loads) refuses those.
	if ns.IsOpen() {
		h, err = netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	} else {
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
	}
	if err != nil {
		if ns.IsOpen() {
			ns.Close()
		}
		return nil, fmt.Errorf("netlink: %w", err)
	}
	return &linkKernel{h: h, ns: ns, name: name}, nil
}

func (k *linkKernel) close() {
	k.h.Close()
	if k.ns.IsOpen() {
		k.ns.Close()
	}
}

func (k *linkKernel) link() (netlink.Link, error) {
	l, err := k.h.LinkByName(k.name)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return nil, nil
	}
	return l, err
}

func (k *linkKernel) ensureDummy() error {
	l, err := k.link()
	if err != nil {
		return fmt.Errorf("look up %s: %w", k.name, err)
	}
	if l != nil {
		if l.Type() != "dummy" {
			return fmt.Errorf("interface %s exists and is a %s, not a dummy", k.name, l.Type())
		}
		return nil
	}
	// Like kube-ipvs0 it stays down: the kernel still treats its addresses as local, and no
	// route points out of it.
	err = k.h.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: k.name}})
	if errors.Is(err, unix.EOPNOTSUPP) {
		return fmt.Errorf("create dummy interface %s: this kernel has no dummy interfaces (module dummy): %w", k.name, err)
	}
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("create dummy interface %s: %w", k.name, err)
	}
	return nil
}

func (k *linkKernel) dummyAddrs() ([]netip.Addr, error) {
	l, err := k.link()
	if err != nil || l == nil {
		return nil, err
	}
	as, err := k.h.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list addresses of %s: %w", k.name, err)
	}
	var out []netip.Addr
	for _, a := range as {
		if a.IP.IsLinkLocalUnicast() {
			continue
		}
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			out = append(out, ip.Unmap())
		}
	}
	return out, nil
}

func (k *linkKernel) addrArg(a netip.Addr) *netlink.Addr {
	bits := a.BitLen()
	na := &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, bits)}}
	if a.Is6() {
		// No duplicate address detection: the address must answer at once, and it is not
		// announced anyway (the interface stays down).
		na.Flags = unix.IFA_F_NODAD
	}
	return na
}

func (k *linkKernel) addAddr(a netip.Addr) error {
	l, err := k.link()
	if err != nil {
		return err
	}
	if l == nil {
		return fmt.Errorf("interface %s is missing", k.name)
	}
	if err := k.h.AddrAdd(l, k.addrArg(a)); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("bind %s to %s: %w", a, k.name, err)
	}
	return nil
}

func (k *linkKernel) delAddr(a netip.Addr) error {
	l, err := k.link()
	if err != nil || l == nil {
		return err
	}
	if err := k.h.AddrDel(l, k.addrArg(a)); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
		return fmt.Errorf("unbind %s from %s: %w", a, k.name, err)
	}
	return nil
}

func (k *linkKernel) deleteDummy() error {
	l, err := k.link()
	if err != nil || l == nil {
		return err
	}
	if err := k.h.LinkDel(l); err != nil {
		return fmt.Errorf("delete %s: %w", k.name, err)
	}
	return nil
}

// inNetNS runs fn on a thread that is in the proxier's network namespace. /proc/sys/net shows
// the namespace of the thread that opens a file, so sysctls of another namespace need this; the
// thread only opens files there and never forks.
func (k *linkKernel) inNetNS(fn func() error) error {
	if !k.ns.IsOpen() {
		return fn()
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	if err := netns.Set(k.ns); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace: %w", err)
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: it ends with this goroutine instead of serving others
		// from the wrong namespace.
		return errors.Join(ferr, fmt.Errorf("return to own network namespace: %w", err))
	}
	runtime.UnlockOSThread()
	return ferr
}

func (k *linkKernel) readSysctl(path string) (string, error) {
	var v string
	err := k.inNetNS(func() error {
		b, err := os.ReadFile(filepath.Join("/proc/sys", path))
		v = strings.TrimSpace(string(b))
		return err
	})
	return v, err
}

func (k *linkKernel) writeSysctl(path, value string) error {
	return k.inNetNS(func() error {
		return os.WriteFile(filepath.Join("/proc/sys", path), []byte(value), 0o644)
	})
}

// checkIPVS fails when the kernel has no IPVS. Asking generic netlink for the IPVS family makes
// the kernel load ip_vs if it can.
func checkIPVS() error {
	_, err := netlink.GenlFamilyGet("IPVS")
	if err == nil {
		return nil
	}
	if errors.Is(err, syscall.ENOENT) || strings.Contains(err.Error(), "no such file") {
		return fmt.Errorf("this kernel has no IPVS (kernel module ip_vs is not loaded and cannot be loaded); " +
			"load ip_vs, or use --proxy-mode nftables")
	}
	return fmt.Errorf("this kernel's IPVS does not answer (kernel module ip_vs): %w; use --proxy-mode nftables", err)
}
