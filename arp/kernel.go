package arp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"

	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"
	"github.com/mdlayher/packet"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// Link is what the responder needs to know about one network interface.
type Link struct {
	Name         string
	Index        int
	HardwareAddr net.HardwareAddr
	Up           bool // administratively up and running (carrier)
	NoARP        bool
	Loopback     bool
	Enslaved     bool // has a master (bridge port, bond slave): its master answers instead
}

// unusable returns why the responder must not answer on l ("" when it may).
func (l Link) unusable() string {
	switch {
	case !l.Up:
		return "down"
	case l.Loopback:
		return "loopback"
	case l.NoARP:
		return "NOARP"
	case l.Enslaved:
		return "enslaved"
	case len(l.HardwareAddr) != 6:
		return "not Ethernet"
	}
	return ""
}

// Links lists the network interfaces.
type Links interface {
	Links() ([]Link, error)
}

// Dialer opens the per-interface sockets.
type Dialer interface {
	// ListenARP returns a connection that reads and writes whole Ethernet frames carrying ARP on
	// the link; written frames are addressed with a *packet.Addr.
	ListenARP(l Link) (net.PacketConn, error)
	// ListenNDP returns an ICMPv6 connection on the link that receives Neighbor Solicitations.
	ListenNDP(l Link) (NDPConn, error)
}

// NDPConn is the part of *ndp.Conn the responder uses.
type NDPConn interface {
	ReadFrom() (ndp.Message, *ipv6.ControlMessage, netip.Addr, error)
	WriteTo(m ndp.Message, cm *ipv6.ControlMessage, dst netip.Addr) error
	JoinGroup(group netip.Addr) error
	LeaveGroup(group netip.Addr) error
	Close() error
}

var _ NDPConn = (*ndp.Conn)(nil)

// kernel is the real Links and Dialer, in the network namespace at nsPath ("" : the current one).
type kernel struct {
	nsPath string
}

var (
	_ Links  = kernel{}
	_ Dialer = kernel{}
)

func (k kernel) Links() ([]Link, error) {
	var links []netlink.Link
	var err error
	if k.nsPath == "" {
		links, err = netlink.LinkList()
	} else {
		ns, nerr := netns.GetFromPath(k.nsPath)
		if nerr != nil {
			return nil, fmt.Errorf("open network namespace %s: %w", k.nsPath, nerr)
		}
		defer ns.Close()
		h, herr := netlink.NewHandleAt(ns)
		if herr != nil {
			return nil, fmt.Errorf("netlink in %s: %w", k.nsPath, herr)
		}
		defer h.Close()
		links, err = h.LinkList()
	}
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	out := make([]Link, 0, len(links))
	for _, l := range links {
		a := l.Attrs()
		out = append(out, Link{
			Name:         a.Name,
			Index:        a.Index,
			HardwareAddr: a.HardwareAddr,
			Up:           a.Flags&net.FlagUp != 0 && a.Flags&net.FlagRunning != 0,
			NoARP:        a.RawFlags&unix.IFF_NOARP != 0,
			Loopback:     a.Flags&net.FlagLoopback != 0,
			Enslaved:     a.MasterIndex != 0,
		})
	}
	return out, nil
}

func (k kernel) ListenARP(l Link) (net.PacketConn, error) {
	var c *packet.Conn
	err := inNetNS(k.nsPath, func() error {
		var err error
		c, err = packet.Listen(&net.Interface{Index: l.Index, Name: l.Name, HardwareAddr: l.HardwareAddr},
			packet.Raw, int(ethernet.EtherTypeARP), nil)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("ARP socket on %s: %w", l.Name, err)
	}
	return c, nil
}

func (k kernel) ListenNDP(l Link) (NDPConn, error) {
	var c *ndp.Conn
	err := inNetNS(k.nsPath, func() error {
		// Looked up here: the address list ndp.Listen reads comes from the namespace.
		ifi, err := net.InterfaceByIndex(l.Index)
		if err != nil {
			return err
		}
		c, _, err = ndp.Listen(ifi, ndp.LinkLocal)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("NDP socket on %s: %w", l.Name, err)
	}
	var f ipv6.ICMPFilter
	f.SetAll(true)
	f.Accept(ipv6.ICMPTypeNeighborSolicitation)
	if err := c.SetICMPFilter(&f); err != nil {
		c.Close()
		return nil, fmt.Errorf("NDP socket on %s: ICMPv6 filter: %w", l.Name, err)
	}
	// The interface a solicitation arrived on: a socket also receives groups joined through
	// other sockets on other interfaces.
	if err := c.SetControlMessage(ipv6.FlagInterface, true); err != nil {
		c.Close()
		return nil, fmt.Errorf("NDP socket on %s: control messages: %w", l.Name, err)
	}
	return c, nil
}

// inNetNS runs fn on an OS thread that is in the network namespace at path (the current one when
// path is ""). Sockets fn creates stay in that namespace. The thread is switched back afterwards;
// if that fails it is left locked so that it ends with its goroutine instead of serving others
// from the wrong namespace.
func inNetNS(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("current network namespace: %w", err)
			return
		}
		defer orig.Close()
		target, err := netns.GetFromPath(path)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open network namespace %s: %w", path, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter network namespace %s: %w", path, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("leave network namespace %s: %w", path, err))
			return // the thread stays locked and dies with this goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
