package lab

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/textproto"
	"regexp"
	"strconv"
	"strings"
	"sync"
)

// Pod is a namespace behind a node's cni0 with an in-process demoapp backend.
type Pod struct {
	// Name is the pod's name, the backend's ServerName.
	Name string
	// NS is the pod's network namespace.
	NS string
	// Node is the node the pod runs on.
	Node *Node
	// IP and IP6 are the pod's addresses (IP6 is derived: the IPv4 address's last octet, written
	// as hex digits, in the node's fd00:244:N::/64).
	IP, IP6 netip.Addr
	// Ports are the ports served, each on TCP and UDP.
	Ports []uint16

	mu      sync.Mutex
	closers map[net.Conn]struct{}
	ln      []net.Listener
	pcs     []net.PacketConn
	closed  bool
	wg      sync.WaitGroup
}

var podName = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]{0,40}[a-z0-9])?$`)

// AddPod creates pod name with address ip on node n and starts its backend on ports (80 if none),
// each on TCP and UDP. The backend answers a line or an HTTP request with the demoapp line:
// "iKubernetes demoapp v1.0 !! ClientIP: <seen source>, ServerName: <name>, ServerIP: <pod IP>!".
func (l *Lab) AddPod(n *Node, name string, ip netip.Addr, ports ...uint16) *Pod {
	l.t.Helper()
	p, err := l.addPod(n, name, ip, ports)
	if err != nil {
		l.t.Fatalf("lab: add pod %s on %s: %v", name, n.Name, err)
	}
	return p
}

func (l *Lab) addPod(n *Node, name string, ip netip.Addr, ports []uint16) (*Pod, error) {
	if !podName.MatchString(name) {
		return nil, fmt.Errorf("pod name %q: use lower-case letters, digits, '-' and '.'", name)
	}
	if !ip.Is4() || !n.PodCIDR.Contains(ip) || ip == n.PodCIDR.Addr().Next() {
		return nil, fmt.Errorf("address %s is not a pod address of %s (%s)", ip, n.Name, n.PodCIDR)
	}
	if len(ports) == 0 {
		ports = []uint16{80}
	}
	last := ip.As4()[3]
	hex, err := strconv.ParseUint(strconv.Itoa(int(last)), 16, 16)
	if err != nil {
		return nil, err
	}
	a6 := n.PodCIDR6.Addr().As16()
	a6[14], a6[15] = byte(hex>>8), byte(hex)
	p := &Pod{
		Name: name, NS: l.ID + "-pod-" + name, Node: n, IP: ip, IP6: netip.AddrFrom16(a6), Ports: ports,
		closers: map[net.Conn]struct{}{},
	}
	l.mu.Lock()
	if _, dup := l.pods[name]; dup {
		l.mu.Unlock()
		return nil, fmt.Errorf("pod %s exists", name)
	}
	l.pods[name] = p
	n.podVeth++
	veth := fmt.Sprintf("veth%d", n.podVeth)
	l.mu.Unlock()

	if err := l.addNamespaces(p.NS); err != nil {
		return nil, err
	}
	if err := sysctl(p.NS, "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"); err != nil {
		return nil, err
	}
	// hairpin: a pod reaching itself through a service comes back out the port it came in on.
	if err := ipBatch(n.NS,
		fmt.Sprintf("link add %s type veth peer name eth0 netns %s", veth, p.NS),
		fmt.Sprintf("link set %s master %s up", veth, PodBridge),
		fmt.Sprintf("link set %s type bridge_slave hairpin on", veth),
	); err != nil {
		return nil, err
	}
	if err := ipBatch(p.NS,
		"link set lo up",
		"link set eth0 up",
		fmt.Sprintf("addr add %s/24 dev eth0", ip),
		fmt.Sprintf("addr add %s/64 dev eth0 nodad", p.IP6),
		"route add default via "+n.PodCIDR.Addr().Next().String(),
		"route add default via "+n.PodCIDR6.Addr().Next().String(),
	); err != nil {
		return nil, err
	}
	if err := p.serve(); err != nil {
		return nil, err
	}
	return p, nil
}

// Pod returns the pod called name.
func (l *Lab) Pod(name string) *Pod {
	l.mu.Lock()
	defer l.mu.Unlock()
	p := l.pods[name]
	if p == nil {
		l.t.Fatalf("lab: no pod %s", name)
	}
	return p
}

func (p *Pod) serve() error {
	for _, port := range p.Ports {
		// "tcp"/"udp" on the wildcard address: one socket serves IPv4 and IPv6.
		ln, err := Listen(p.NS, "tcp", fmt.Sprintf(":%d", port))
		if err != nil {
			return fmt.Errorf("pod %s: listen tcp %d: %w", p.Name, port, err)
		}
		pc, err := ListenPacket(p.NS, "udp", fmt.Sprintf(":%d", port))
		if err != nil {
			ln.Close()
			return fmt.Errorf("pod %s: listen udp %d: %w", p.Name, port, err)
		}
		p.mu.Lock()
		p.ln = append(p.ln, ln)
		p.pcs = append(p.pcs, pc)
		p.mu.Unlock()
		p.wg.Add(2)
		go p.acceptLoop(ln)
		go p.udpLoop(pc)
	}
	return nil
}

// answer is the demoapp line for a client seen as client, reached at server.
func (p *Pod) answer(client, server netip.Addr) string {
	return fmt.Sprintf("iKubernetes demoapp v1.0 !! ClientIP: %s, ServerName: %s, ServerIP: %s!\n", client.Unmap(), p.Name, server.Unmap())
}

func (p *Pod) acceptLoop(ln net.Listener) {
	defer p.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			c.Close()
			return
		}
		p.closers[c] = struct{}{}
		p.mu.Unlock()
		go p.serveConn(c)
	}
}

// serveConn answers each line with the demoapp line, and each HTTP/1.x request with the same
// line as its body, keeping the connection open for more.
func (p *Pod) serveConn(c net.Conn) {
	defer func() {
		c.Close()
		p.mu.Lock()
		delete(p.closers, c)
		p.mu.Unlock()
	}()
	client := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr()
	server := c.LocalAddr().(*net.TCPAddr).AddrPort().Addr()
	body := p.answer(client, server)
	br := bufio.NewReader(c)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		if f := strings.Fields(line); len(f) == 3 && strings.HasPrefix(f[2], "HTTP/1.") {
			hdr, err := textproto.NewReader(br).ReadMIMEHeader()
			if err != nil {
				return
			}
			if n, _ := strconv.Atoi(hdr.Get("Content-Length")); n > 0 {
				if _, err := br.Discard(n); err != nil {
					return
				}
			}
			closing := strings.EqualFold(hdr.Get("Connection"), "close") || f[2] == "HTTP/1.0"
			resp := fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n", len(body))
			if closing {
				resp += "Connection: close\r\n"
			}
			if _, err := c.Write([]byte(resp + "\r\n" + body)); err != nil || closing {
				return
			}
			continue
		}
		if _, err := c.Write([]byte(body)); err != nil {
			return
		}
	}
}

func (p *Pod) udpLoop(pc net.PacketConn) {
	defer p.wg.Done()
	buf := make([]byte, 2048)
	for {
		_, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		client := from.(*net.UDPAddr).AddrPort().Addr().Unmap()
		// Without IP_PKTINFO the local address is unknown; a pod has one per family.
		server := p.IP
		if client.Is6() {
			server = p.IP6
		}
		if _, err := pc.WriteTo([]byte(p.answer(client, server)), from); err != nil && errors.Is(err, net.ErrClosed) {
			return
		}
	}
}

// close stops the backend and drops its open connections.
func (p *Pod) close() {
	p.mu.Lock()
	p.closed = true
	for _, ln := range p.ln {
		ln.Close()
	}
	for _, pc := range p.pcs {
		pc.Close()
	}
	for c := range p.closers {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}
