package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"regexp"
	"runtime"
	"time"

	"github.com/vishvananda/netns"
)

// DialTimeout is how long Dial and the helpers built on it wait for a connection. It is short on
// purpose: in the lab a reachable backend answers within milliseconds, and scenarios that expect
// a path to be closed should not wait long to see it.
var DialTimeout = Scaled(time.Second)

// InNetns runs fn on an OS thread that has entered network namespace ns; sockets fn creates stay
// in ns for their whole life and may be used from any goroutine afterwards. fn must not start
// goroutines that create sockets (they would run on other threads, in the host's namespace). The
// thread returns to its namespace afterwards; if that fails it is discarded, never reused.
func InNetns(ns string, fn func() error) error {
	if err := checkNotHost(ns); err != nil {
		return err
	}
	type result struct{ err error }
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			// Still in the original namespace: the thread can go back to the pool.
			runtime.UnlockOSThread()
			done <- result{fmt.Errorf("get current netns: %w", err)}
			return
		}
		defer orig.Close()
		target, err := netns.GetFromName(ns)
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{fmt.Errorf("open netns %s: %w", ns, err)}
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			done <- result{fmt.Errorf("enter netns %s: %w", ns, err)}
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: the goroutine ends and the runtime kills the thread
			// rather than let another goroutine run in the lab namespace.
			done <- result{errors.Join(ferr, fmt.Errorf("leave netns %s: %w", ns, err))}
			return
		}
		runtime.UnlockOSThread()
		done <- result{ferr}
	}()
	return (<-done).err
}

// Listen creates a listener inside namespace ns.
func Listen(ns, network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := InNetns(ns, func() (err error) {
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}

// ListenPacket creates a packet socket inside namespace ns.
func ListenPacket(ns, network, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := InNetns(ns, func() (err error) {
		pc, err = net.ListenPacket(network, addr)
		return err
	})
	return pc, err
}

// Dial connects from inside namespace ns, waiting at most DialTimeout.
func Dial(ns, network, addr string) (net.Conn, error) {
	return DialFrom(ns, network, "", addr, DialTimeout)
}

// DialFrom connects from inside namespace ns from local address laddr ("" for any; ":port" fixes
// the source port, e.g. to keep one UDP flow), waiting at most timeout.
func DialFrom(ns, network, laddr, addr string, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	if laddr != "" {
		var err error
		switch network {
		case "udp", "udp4", "udp6":
			d.LocalAddr, err = net.ResolveUDPAddr(network, laddr)
		default:
			d.LocalAddr, err = net.ResolveTCPAddr(network, laddr)
		}
		if err != nil {
			return nil, fmt.Errorf("local address %q: %w", laddr, err)
		}
	}
	var c net.Conn
	// The address is a literal, so Dial makes exactly one socket, on this goroutine's thread.
	err := InNetns(ns, func() (err error) {
		c, err = d.Dial(network, addr)
		return err
	})
	return c, err
}

// Reply is what a lab backend answers: who it saw, who it is.
type Reply struct {
	// ClientIP is the source address the backend saw.
	ClientIP netip.Addr
	// ServerName is the pod's name.
	ServerName string
	// ServerIP is the pod's address the connection reached.
	ServerIP netip.Addr
}

func (r Reply) String() string {
	return fmt.Sprintf("%s (%s) saw %s", r.ServerName, r.ServerIP, r.ClientIP)
}

var replyRE = regexp.MustCompile(`ClientIP: ([^,\s]+), ServerName: ([^,\s]+), ServerIP: ([^!\s]+)!`)

// ParseReply reads a demoapp answer line.
func ParseReply(s string) (Reply, error) {
	m := replyRE.FindStringSubmatch(s)
	if m == nil {
		return Reply{}, fmt.Errorf("not a demoapp answer: %q", s)
	}
	c, err := netip.ParseAddr(m[1])
	if err != nil {
		return Reply{}, fmt.Errorf("client ip in %q: %w", s, err)
	}
	sip, err := netip.ParseAddr(m[3])
	if err != nil {
		return Reply{}, fmt.Errorf("server ip in %q: %w", s, err)
	}
	return Reply{ClientIP: c.Unmap(), ServerName: m[2], ServerIP: sip.Unmap()}, nil
}

// Exchange sends one line on c and reads the backend's answer (one line on TCP, one datagram
// on UDP), waiting at most timeout. It works on a connection any number of times.
func Exchange(c net.Conn, timeout time.Duration) (Reply, error) {
	if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return Reply{}, err
	}
	if _, err := c.Write([]byte("hello\n")); err != nil {
		return Reply{}, fmt.Errorf("send to %s: %w", c.RemoteAddr(), err)
	}
	buf := make([]byte, 512)
	var got []byte
	for {
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if _, udp := c.(*net.UDPConn); udp && n > 0 {
			break
		}
		if bytes.IndexByte(got, '\n') >= 0 {
			break
		}
		if err != nil {
			return Reply{}, fmt.Errorf("read from %s: %w", c.RemoteAddr(), err)
		}
	}
	return ParseReply(string(got))
}

// Ask opens a new connection from namespace ns to addr, exchanges one line and closes it.
func Ask(ns, network, addr string) (Reply, error) {
	c, err := Dial(ns, network, addr)
	if err != nil {
		return Reply{}, err
	}
	defer c.Close()
	return Exchange(c, Scaled(2*time.Second))
}

// HTTPGet fetches url from inside namespace ns over a new connection and returns the body.
func HTTPGet(ns, url string) (string, int, error) {
	tr := &http.Transport{
		DisableKeepAlives: true,
		Proxy:             nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			timeout := DialTimeout
			if dl, ok := ctx.Deadline(); ok && time.Until(dl) < timeout {
				timeout = time.Until(dl)
			}
			return DialFrom(ns, network, "", addr, timeout)
		},
	}
	defer tr.CloseIdleConnections()
	cl := &http.Client{Transport: tr, Timeout: Scaled(3 * time.Second)}
	resp, err := cl.Get(url)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", resp.StatusCode, fmt.Errorf("read %s: %w", url, err)
	}
	return string(b), resp.StatusCode, nil
}
