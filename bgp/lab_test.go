package bgp

// The lab for tests against real routers. Addresses follow DESIGN.md's lab plan: the node LAN is
// 10.0.0.0/24 and fd00:10::/64, node0N is 10.0.0.15N / fd00:10::15N on its `ens33`, the router is
// 10.0.0.254 / fd00:10::254 and owns the LAN bridge itself (no separate LAN namespace is needed
// when only the router and the nodes talk). LoadBalancer addresses come from 10.0.0.51–80 and
// fd00:10::51–80.
//
// Every namespace is created by the test that uses it, named "nab" + pid + a per-lab counter, and
// deleted in t.Cleanup. Speakers run in helper processes inside their node namespace (the test
// binary re-executed as TestHelperSpeaker) because GoBGP dials from goroutines on arbitrary OS
// threads, which a Go-level setns cannot confine; they are driven over stdin/stdout with one JSON
// message per line and stopped by PID.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	gobgp "github.com/osrg/gobgp/v4/pkg/packet/bgp"
)

const (
	routerASN = 64512
	nodeASN   = 64513
)

var (
	routerV4 = netip.MustParseAddr("10.0.0.254")
	routerV6 = netip.MustParseAddr("fd00:10::254")
	lbV4     = netip.MustParsePrefix("10.0.0.51/32")
	lbV6     = netip.MustParsePrefix("fd00:10::51/128")
)

// nodeV4 and nodeV6 are node i's (1-based) LAN addresses.
func nodeV4(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 0, 0, byte(150 + i)}) }
func nodeV6(i int) netip.Addr {
	return netip.MustParseAddr(fmt.Sprintf("fd00:10::%d", 150+i))
}

var labSeq atomic.Int32

// lab is a router namespace holding the LAN bridge, and node namespaces plugged into it.
type lab struct {
	t      *testing.T
	dir    string
	router string
	nodes  []string // nodes[i-1] is node i
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
}

func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (scripts/deps.sh installs it)", tool)
		}
	}
}

// newLab builds the router and n node namespaces; everything is deleted when the test ends.
func newLab(t *testing.T, n int) *lab {
	t.Helper()
	needRoot(t)
	needTools(t, "ip")
	id := fmt.Sprintf("nab%d%c", os.Getpid()%100000, 'a'+rune(labSeq.Add(1)-1))
	l := &lab{t: t, dir: t.TempDir(), router: id + "r"}
	l.addNS(l.router)
	l.must("ip", "-n", l.router, "link", "add", "br0", "type", "bridge")
	l.must("ip", "-n", l.router, "link", "set", "br0", "up")
	l.must("ip", "-n", l.router, "addr", "add", routerV4.String()+"/24", "dev", "br0")
	l.must("ip", "-n", l.router, "addr", "add", routerV6.String()+"/64", "dev", "br0", "nodad")
	for i := 1; i <= n; i++ {
		node := fmt.Sprintf("%sn%d", id, i)
		l.addNS(node)
		port := fmt.Sprintf("n%d", i)
		l.must("ip", "-n", l.router, "link", "add", port, "type", "veth", "peer", "name", "ens33", "netns", node)
		l.must("ip", "-n", l.router, "link", "set", port, "master", "br0", "up")
		l.must("ip", "-n", node, "addr", "add", nodeV4(i).String()+"/24", "dev", "ens33")
		l.must("ip", "-n", node, "addr", "add", nodeV6(i).String()+"/64", "dev", "ens33", "nodad")
		l.must("ip", "-n", node, "link", "set", "ens33", "up")
		l.nodes = append(l.nodes, node)
	}
	return l
}

func (l *lab) addNS(name string) {
	l.must("ip", "netns", "add", name)
	l.t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			l.t.Errorf("delete netns %s: %v: %s", name, err, out)
		}
	})
	l.must("ip", "-n", name, "link", "set", "lo", "up")
}

func (l *lab) must(args ...string) string {
	l.t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		l.t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// node returns the namespace of node i (1-based).
func (l *lab) node(i int) string { return l.nodes[i-1] }

// daemon starts a long-running command inside a namespace and stops it by PID at cleanup.
func (l *lab) daemon(ns, logName string, args ...string) *exec.Cmd {
	l.t.Helper()
	logf, err := os.Create(filepath.Join(l.dir, logName))
	if err != nil {
		l.t.Fatal(err)
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		l.t.Fatalf("start %s: %v", args[0], err)
	}
	l.t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		logf.Close()
		if l.t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			l.t.Logf("%s log:\n%s", logName, b)
		}
	})
	return cmd
}

// bird runs BIRD 2 as the router with the given protocol section appended to a common head: the
// device protocol and kernel protocols that install merged (ECMP) routes into the router's own
// namespace. It returns the control socket path.
func (l *lab) bird(protocols string) string {
	l.t.Helper()
	needTools(l.t, "bird", "birdc")
	conf := fmt.Sprintf(`router id %s;
log stderr all;
protocol device { scan time 10; }
protocol kernel k4 { ipv4 { import none; export all; }; merge paths on; }
protocol kernel k6 { ipv6 { import none; export all; }; merge paths on; }
%s
`, routerV4, protocols)
	path := filepath.Join(l.dir, "bird.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		l.t.Fatal(err)
	}
	sock := filepath.Join(l.dir, "bird.ctl")
	l.daemon(l.router, "bird.log", "bird", "-f", "-c", path, "-s", sock)
	waitFor(l.t, 10*time.Second, "bird control socket", func() error {
		_, err := birdc(sock, "show status")
		return err
	})
	return sock
}

// birdNodes renders one BIRD protocol per node: passive, since speakers dial out and never listen.
func birdNodes(nodes []int, asn uint32, extra string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `template bgp node {
  local as %d;
  passive on;
  hold time 9;
  ipv4 { import all; export none; };
  ipv6 { import all; export none; };
}
`, routerASN)
	for _, i := range nodes {
		fmt.Fprintf(&b, "protocol bgp node%d from node { neighbor %s as %d; %s }\n", i, nodeV4(i), asn, extra)
	}
	return b.String()
}

func birdc(sock string, args ...string) (string, error) {
	out, err := exec.Command("birdc", append([]string{"-s", sock}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("birdc %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

var viaRE = regexp.MustCompile(`via (\S+) on `)

// birdNextHops lists the next hops BIRD has for exactly this prefix, sorted.
func birdNextHops(sock string, p netip.Prefix) ([]string, string, error) {
	out, err := birdc(sock, "show", "route", "for", p.String(), "all")
	if err != nil {
		return nil, out, err
	}
	if !strings.Contains(out, p.String()) {
		return nil, out, nil
	}
	var hops []string
	for _, m := range viaRE.FindAllStringSubmatch(out, -1) {
		hops = append(hops, m[1])
	}
	slices.Sort(hops)
	return hops, out, nil
}

// waitNextHops polls BIRD until the prefix has exactly the wanted next hops and returns how long
// that took.
func waitNextHops(t *testing.T, sock string, p netip.Prefix, timeout time.Duration, want ...netip.Addr) time.Duration {
	t.Helper()
	w := make([]string, len(want))
	for i, a := range want {
		w[i] = a.String()
	}
	slices.Sort(w)
	start := time.Now()
	var last string
	var got []string
	for {
		var err error
		got, last, err = birdNextHops(sock, p)
		if err == nil && slices.Equal(got, w) {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("BIRD next hops for %s: got %v, want %v after %s; last output:\n%s", p, got, w, timeout, last)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitFor polls cond until it returns nil.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %v", timeout, what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// helperConfig is the Config a helper process builds its Speaker from.
type helperConfig struct {
	NodeAddresses []netip.Addr
	RouterID      netip.Addr
	ListenPort    int
}

// helperRequest is one command to a helper speaker.
type helperRequest struct {
	Op    string // "peers", "advs", "status", "rib", "stop"
	Peers []Peer
	Advs  []Advertisement
}

// helperReply answers one helperRequest.
type helperReply struct {
	Err    string
	Status Status
	// RIB maps "global" and "adj-in" to the prefixes in the sessions' global RIBs and in what
	// their peers sent before import policy.
	RIB map[string][]string
}

// speakerProc is a Speaker running in a helper process inside a node namespace.
type speakerProc struct {
	t    *testing.T
	name string
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Scanner
	logs *syncBuffer
	mu   sync.Mutex
	done chan struct{}
}

// syncBuffer collects a helper's log output while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// speaker starts a helper speaker in node i's namespace with that node's addresses.
func (l *lab) speaker(i int) *speakerProc {
	l.t.Helper()
	return l.speakerWith(i, helperConfig{NodeAddresses: []netip.Addr{nodeV4(i), nodeV6(i)}})
}

// speakerWith starts a helper speaker in node i's namespace with the given configuration.
func (l *lab) speakerWith(i int, hc helperConfig) *speakerProc {
	l.t.Helper()
	exe, err := os.Executable()
	if err != nil {
		l.t.Fatal(err)
	}
	cfg, _ := json.Marshal(hc)
	cmd := exec.Command("ip", "netns", "exec", l.node(i), exe, "-test.run=^TestHelperSpeaker$")
	cmd.Env = append(os.Environ(), "NA_BGP_HELPER="+string(cfg))
	sp := &speakerProc{t: l.t, name: fmt.Sprintf("node%d", i), cmd: cmd, logs: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stderr = sp.logs
	if sp.in, err = cmd.StdinPipe(); err != nil {
		l.t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		l.t.Fatal(err)
	}
	sp.out = bufio.NewScanner(stdout)
	sp.out.Buffer(make([]byte, 1<<20), 1<<20)
	if err := cmd.Start(); err != nil {
		l.t.Fatalf("start helper speaker: %v", err)
	}
	go func() { _ = cmd.Wait(); close(sp.done) }()
	l.t.Cleanup(func() {
		sp.kill()
		if l.t.Failed() {
			l.t.Logf("%s speaker log:\n%s", sp.name, sp.logs.String())
		}
	})
	return sp
}

// call sends one request and waits for its reply.
func (sp *speakerProc) call(req helperRequest) helperReply {
	sp.t.Helper()
	sp.mu.Lock()
	defer sp.mu.Unlock()
	b, _ := json.Marshal(req)
	if _, err := sp.in.Write(append(b, '\n')); err != nil {
		sp.t.Fatalf("%s: send %s: %v\n%s", sp.name, req.Op, err, sp.logs.String())
	}
	for sp.out.Scan() {
		line := sp.out.Bytes()
		if !bytes.HasPrefix(line, []byte("{")) {
			continue // the testing package's own output
		}
		var r helperReply
		if err := json.Unmarshal(line, &r); err != nil {
			sp.t.Fatalf("%s: bad reply %q: %v", sp.name, line, err)
		}
		return r
	}
	sp.t.Fatalf("%s: helper exited during %s: %v\n%s", sp.name, req.Op, sp.out.Err(), sp.logs.String())
	return helperReply{}
}

func (sp *speakerProc) setPeers(peers ...Peer) string {
	return sp.call(helperRequest{Op: "peers", Peers: peers}).Err
}

func (sp *speakerProc) mustSetPeers(peers ...Peer) {
	sp.t.Helper()
	if err := sp.setPeers(peers...); err != "" {
		sp.t.Fatalf("%s: SetPeers: %s", sp.name, err)
	}
}

func (sp *speakerProc) mustAdvertise(advs ...Advertisement) {
	sp.t.Helper()
	if err := sp.call(helperRequest{Op: "advs", Advs: advs}).Err; err != "" {
		sp.t.Fatalf("%s: SetAdvertisements: %s", sp.name, err)
	}
}

func (sp *speakerProc) status() Status { return sp.call(helperRequest{Op: "status"}).Status }

// stop stops the speaker gracefully and waits for the process to exit.
func (sp *speakerProc) stop() {
	sp.t.Helper()
	sp.call(helperRequest{Op: "stop"})
	select {
	case <-sp.done:
	case <-time.After(10 * time.Second):
		sp.t.Fatalf("%s: helper did not exit after stop", sp.name)
	}
}

// kill ends the helper at once (SIGKILL by PID), as a crashing agent would.
func (sp *speakerProc) kill() {
	select {
	case <-sp.done:
		return
	default:
	}
	_ = sp.cmd.Process.Kill()
	<-sp.done
}

// waitEstablished polls the helper until the named sessions are established.
func (sp *speakerProc) waitEstablished(timeout time.Duration, names ...string) {
	sp.t.Helper()
	waitFor(sp.t, timeout, sp.name+" sessions "+strings.Join(names, ","), func() error {
		st := sp.status()
		for _, n := range names {
			i := slices.IndexFunc(st.Sessions, func(s SessionStatus) bool { return s.Name == n })
			if i < 0 {
				return fmt.Errorf("no session %s", n)
			}
			if !st.Sessions[i].Established {
				return fmt.Errorf("session %s is %s", n, st.Sessions[i].State)
			}
		}
		return nil
	})
}

// TestHelperSpeaker is not a test: it is the body of the helper process that lab tests start in a
// node namespace (see speakerProc). It serves helperRequests on stdin until "stop" or EOF.
func TestHelperSpeaker(t *testing.T) {
	raw := os.Getenv("NA_BGP_HELPER")
	if raw == "" {
		t.Skip("helper process for the lab tests")
	}
	var cfg helperConfig
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	sp, err := New(Config{Logger: log, NodeAddresses: cfg.NodeAddresses, RouterID: cfg.RouterID, ListenPort: cfg.ListenPort, SessionWarnAfter: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	enc := json.NewEncoder(os.Stdout)
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<20)
	reply := func(err error, st Status) {
		r := helperReply{Status: st}
		if err != nil {
			r.Err = err.Error()
		}
		_ = enc.Encode(r)
	}
	for in.Scan() {
		var req helperRequest
		if err := json.Unmarshal(in.Bytes(), &req); err != nil {
			reply(err, Status{})
			continue
		}
		switch req.Op {
		case "peers":
			reply(sp.SetPeers(req.Peers), Status{})
		case "advs":
			reply(sp.SetAdvertisements(req.Advs), Status{})
		case "status":
			reply(nil, sp.Status())
		case "rib":
			rib, err := sp.ribs()
			r := helperReply{RIB: rib}
			if err != nil {
				r.Err = err.Error()
			}
			_ = enc.Encode(r)
		case "stop":
			sp.Stop()
			reply(nil, Status{})
			return
		default:
			reply(fmt.Errorf("unknown op %q", req.Op), Status{})
		}
	}
	sp.Stop()
}

// ribs lists what the sessions' GoBGP servers hold: their global RIB (what is announced) and the
// routes their peers sent before the import policy (adj-in).
func (s *Speaker) ribs() (map[string][]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string][]string{}
	for _, sess := range s.sessions {
		for _, f := range []gobgp.Family{gobgp.RF_IPv4_UC, gobgp.RF_IPv6_UC} {
			for table, req := range map[string]apiutil.ListPathRequest{
				"global": {TableType: api.TableType_TABLE_TYPE_GLOBAL, Family: f},
				"adj-in": {TableType: api.TableType_TABLE_TYPE_ADJ_IN, Family: f, Name: sess.peer.Address.String()},
			} {
				err := sess.srv.ListPath(req, func(prefix gobgp.NLRI, _ []*apiutil.Path) {
					out[table] = append(out[table], prefix.String())
				})
				if err != nil {
					return nil, err
				}
			}
		}
	}
	return out, nil
}

func (sp *speakerProc) rib() map[string][]string {
	sp.t.Helper()
	r := sp.call(helperRequest{Op: "rib"})
	if r.Err != "" {
		sp.t.Fatalf("%s: rib: %s", sp.name, r.Err)
	}
	return r.RIB
}

// listeners returns the TCP ports listened on in a namespace.
func (l *lab) listeners(ns string) string {
	return l.must("ip", "netns", "exec", ns, "ss", "-Hltn")
}

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }
