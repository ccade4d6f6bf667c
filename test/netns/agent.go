package lab

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Scaled stretches d by $NODEAGENT_TIMEOUT_SCALE (default 1): under an emulated VM everything is
// about ten times slower, and deadlines, not sleeps, absorb that.
func Scaled(d time.Duration) time.Duration {
	if f, err := strconv.ParseFloat(os.Getenv("NODEAGENT_TIMEOUT_SCALE"), 64); err == nil && f > 0 {
		return time.Duration(float64(d) * f)
	}
	return d
}

// Main is the body of a lab package's TestMain: it removes namespaces left by killed runs,
// tears every lab down on SIGINT/SIGTERM, runs the tests, and removes the built agent binary.
//
//	func TestMain(m *testing.M) { os.Exit(lab.Main(m)) }
func Main(m *testing.M) int {
	if os.Geteuid() == 0 {
		reapStale()
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "lab: %v: tearing down labs\n", s)
		teardownAll()
		removeBuild()
		os.Exit(2)
	}()
	code := m.Run()
	signal.Stop(sigs)
	teardownAll()
	removeBuild()
	return code
}

var (
	buildOnce sync.Once
	buildDir  string
	buildBin  string
	buildErr  error
)

// Binary returns the nodeagent binary the tests run: $NODEAGENT_BIN if set, else one built from
// this module's ./cmd/nodeagent once per test process. The test is skipped while the command does
// not exist yet and fails if it does not build.
func Binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		if b := os.Getenv("NODEAGENT_BIN"); b != "" {
			buildBin, buildErr = filepath.Abs(b)
			return
		}
		root, err := moduleRoot()
		if err != nil {
			buildErr = err
			return
		}
		if _, err := os.Stat(filepath.Join(root, "cmd", "nodeagent", "main.go")); err != nil {
			buildErr = errNoCommand
			return
		}
		buildDir, err = os.MkdirTemp("", "nodeagent-lab-bin-")
		if err != nil {
			buildErr = err
			return
		}
		bin := filepath.Join(buildDir, "nodeagent")
		start := time.Now()
		cmd := exec.Command("go", "build", "-o", bin, "./cmd/nodeagent")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/nodeagent: %w\n%s", err, out)
			return
		}
		fmt.Fprintf(os.Stderr, "lab: built nodeagent in %v\n", time.Since(start).Round(time.Millisecond))
		buildBin = bin
	})
	if errors.Is(buildErr, errNoCommand) {
		t.Skip("cmd/nodeagent does not exist yet")
	}
	if buildErr != nil {
		t.Fatalf("lab: %v", buildErr)
	}
	return buildBin
}

var errNoCommand = errors.New("no cmd/nodeagent")

func removeBuild() {
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
}

// moduleRoot finds the directory holding go.mod, from the working directory up.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found above the working directory")
		}
		dir = parent
	}
}

// spawn starts commands from one OS thread that lives as long as the process, so that
// Pdeathsig (delivered when the thread that forked a child exits) fires only when the test
// process dies: agents never outlive a killed test run.
var spawn = func() chan func() {
	ch := make(chan func())
	go func() {
		runtime.LockOSThread()
		for f := range ch {
			f()
		}
	}()
	return ch
}()

func startOnSpawner(cmd *exec.Cmd) error {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	done := make(chan error, 1)
	spawn <- func() { done <- cmd.Start() }
	return <-done
}

// Agent is one nodeagent process running in a node namespace.
type Agent struct {
	// Node is where the agent runs.
	Node *Node
	// Args are the arguments after the binary.
	Args []string
	// LogPath is the file its stderr (and stdout) go to.
	LogPath string

	cmd    *exec.Cmd
	done   chan struct{}
	err    error
	stopMu sync.Mutex
}

// StartAgent runs `ip netns exec <node> nodeagent run --manifests <node dir> --hostname-override
// <node> --proxy-mode <lab mode> --cluster-cidr 10.244.0.0/16 args...` (a --proxy-mode in args
// wins) and waits until its /healthz answers 200. The agent is killed when the lab closes.
func (l *Lab) StartAgent(n *Node, args ...string) *Agent {
	l.t.Helper()
	a, err := l.startAgent(n, args...)
	if err != nil {
		l.t.Fatalf("lab: %v", err)
	}
	if err := a.WaitReady(Scaled(15 * time.Second)); err != nil {
		l.t.Fatalf("lab: agent on %s: %v\nlog tail:\n%s", n.Name, err, a.LogTail(30))
	}
	return a
}

// StartAgentNoWait starts an agent like StartAgent but returns without waiting for readiness.
func (l *Lab) StartAgentNoWait(n *Node, args ...string) *Agent {
	l.t.Helper()
	a, err := l.startAgent(n, args...)
	if err != nil {
		l.t.Fatalf("lab: %v", err)
	}
	return a
}

func (l *Lab) startAgent(n *Node, extra ...string) (*Agent, error) {
	bin := Binary(l.t)
	if err := checkNotHost(n.NS); err != nil {
		return nil, fmt.Errorf("start agent: %w", err)
	}
	args := []string{"run", "--manifests", n.Manifests, "--hostname-override", n.Name, "--cluster-cidr", ClusterCIDR.String()}
	if !hasFlag(extra, "--proxy-mode") {
		args = append(args, "--proxy-mode", l.Mode)
	}
	args = append(args, extra...)

	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, fmt.Errorf("lab %s is closed", l.ID)
	}
	seq := 1
	for _, a := range l.agents {
		if a.Node == n {
			seq++
		}
	}
	l.mu.Unlock()
	logPath := filepath.Join(l.Dir, fmt.Sprintf("agent-%s-%d.log", n.Name, seq))
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.NS, bin}, args...)...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	if hasFlag(args, "--memberlist-bind") {
		// Memberlist refuses to run without a secret; one per lab keeps labs apart too.
		cmd.Env = append(os.Environ(), "NODEAGENT_MEMBERLIST_SECRET=lab-"+l.ID)
	}
	a := &Agent{Node: n, Args: args, LogPath: logPath, cmd: cmd, done: make(chan struct{})}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, fmt.Errorf("lab %s is closed", l.ID)
	}
	if err := startOnSpawner(cmd); err != nil {
		return nil, fmt.Errorf("start agent on %s: %w", n.Name, err)
	}
	l.agents = append(l.agents, a)
	go func() {
		a.err = cmd.Wait()
		close(a.done)
	}()
	return a, nil
}

func hasFlag(args []string, name string) bool {
	for _, a := range args {
		if a == name || strings.HasPrefix(a, name+"=") {
			return true
		}
	}
	return false
}

// Pid is the agent's process ID (`ip netns exec` execs the agent, so it is the agent's own).
func (a *Agent) Pid() int { return a.cmd.Process.Pid }

// Exited reports whether the agent process has ended, and how.
func (a *Agent) Exited() (bool, error) {
	select {
	case <-a.done:
		return true, a.err
	default:
		return false, nil
	}
}

// WaitReady polls http://<node IP>:10256/healthz from inside the node until it answers 200.
func (a *Agent) WaitReady(timeout time.Duration) error {
	url := "http://" + netip.AddrPortFrom(a.Node.IP, 10256).String() + "/healthz"
	if addr := flagValue(a.Args, "--healthz-bind-address"); addr != "" {
		ap, err := netip.ParseAddrPort(addr)
		if err != nil || ap.Port() == 0 {
			return fmt.Errorf("cannot poll healthz at %q", addr)
		}
		host := ap.Addr()
		if host.IsUnspecified() {
			host = a.Node.IP
		}
		url = "http://" + netip.AddrPortFrom(host, ap.Port()).String() + "/healthz"
	}
	var last string
	ok := Eventually(timeout, 20*time.Millisecond, func() bool {
		if exited, err := a.Exited(); exited {
			last = fmt.Sprintf("agent exited: %v", err)
			return true
		}
		_, code, err := HTTPGet(a.Node.NS, url)
		if err != nil {
			last = err.Error()
			return false
		}
		last = fmt.Sprintf("status %d", code)
		return code == 200
	})
	if exited, err := a.Exited(); exited {
		return fmt.Errorf("agent exited before it was ready: %v", err)
	}
	if !ok {
		return fmt.Errorf("%s not ready after %v: %s", url, timeout, last)
	}
	return nil
}

func flagValue(args []string, name string) string {
	v := ""
	for i, a := range args {
		if a == name && i+1 < len(args) {
			v = args[i+1]
		} else if strings.HasPrefix(a, name+"=") {
			v = a[len(name)+1:]
		}
	}
	return v
}

// Stop sends SIGTERM and waits for the agent to exit (SIGKILL after 10 s). It returns the
// process's exit error, nil for a clean exit.
func (a *Agent) Stop() error { return a.stop(syscall.SIGTERM, Scaled(10*time.Second)) }

// Kill sends SIGKILL and waits for the agent to exit.
func (a *Agent) Kill() { a.stop(syscall.SIGKILL, 0) }

func (a *Agent) stop(sig syscall.Signal, grace time.Duration) error {
	a.stopMu.Lock()
	defer a.stopMu.Unlock()
	if exited, err := a.Exited(); exited {
		return err
	}
	// By PID: `ip netns exec` execs the agent, so this is the agent itself.
	_ = a.cmd.Process.Signal(sig)
	if grace > 0 {
		select {
		case <-a.done:
			return a.err
		case <-time.After(grace):
			_ = a.cmd.Process.Signal(syscall.SIGKILL)
		}
	}
	<-a.done
	return a.err
}

// Log returns the agent's log so far.
func (a *Agent) Log() string {
	b, _ := os.ReadFile(a.LogPath)
	return string(b)
}

// LogTail returns the last n lines of the agent's log.
func (a *Agent) LogTail(n int) string {
	lines := strings.Split(strings.TrimRight(a.Log(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Eventually polls cond every interval until it holds or timeout passes; it reports whether it
// held.
func Eventually(timeout, interval time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(interval)
	}
}

// Manifests: every node has its own directory; the helpers below write, replace and remove files
// atomically (written beside the directory, then renamed in) so that a watching agent never reads
// half a file.

// WriteManifest writes data as file name in node n's manifests directory.
func (n *Node) WriteManifest(name string, data []byte) error {
	if strings.ContainsRune(name, '/') {
		return fmt.Errorf("manifest name %q: no directories", name)
	}
	tmp, err := os.CreateTemp(filepath.Dir(n.Manifests), ".write-*")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), filepath.Join(n.Manifests, name)); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write manifest %s on %s: %w", name, n.Name, err)
	}
	return nil
}

// RemoveManifest deletes file name from node n's manifests directory.
func (n *Node) RemoveManifest(name string) error {
	if err := os.Remove(filepath.Join(n.Manifests, name)); err != nil {
		return fmt.Errorf("remove manifest %s on %s: %w", name, n.Name, err)
	}
	return nil
}

// WriteManifest writes data as file name into every node's manifests directory.
func (l *Lab) WriteManifest(name string, data []byte) {
	l.t.Helper()
	for _, n := range l.Nodes {
		if err := n.WriteManifest(name, data); err != nil {
			l.t.Fatal(err)
		}
	}
}

// RemoveManifest deletes file name from every node's manifests directory.
func (l *Lab) RemoveManifest(name string) {
	l.t.Helper()
	for _, n := range l.Nodes {
		if err := n.RemoveManifest(name); err != nil {
			l.t.Fatal(err)
		}
	}
}

// CopyManifests copies files (paths) into every node's manifests directory under their base names.
func (l *Lab) CopyManifests(paths ...string) {
	l.t.Helper()
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			l.t.Fatal(err)
		}
		l.WriteManifest(filepath.Base(p), b)
	}
}

// Services runs `nodeagent get services` on node n's manifests and returns, per service name,
// its CLUSTER-IP column (services without one are left out).
func (l *Lab) Services(n *Node) map[string]netip.Addr {
	l.t.Helper()
	out, err := Exec(n.NS, Binary(l.t), "get", "services", "--manifests", n.Manifests)
	if err != nil {
		l.t.Fatalf("lab: %v", err)
	}
	svcs, err := parseServiceTable(out)
	if err != nil {
		l.t.Fatalf("lab: get services: %v\n%s", err, out)
	}
	return svcs
}

// parseServiceTable reads kubectl-get-svc style output: a header with NAME and CLUSTER-IP, then
// one row per service.
func parseServiceTable(out string) (map[string]netip.Addr, error) {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) == 0 {
		return nil, errors.New("no output")
	}
	header := strings.Fields(lines[0])
	nameCol, ipCol := -1, -1
	for i, h := range header {
		switch h {
		case "NAME":
			nameCol = i
		case "CLUSTER-IP":
			ipCol = i
		}
	}
	if nameCol < 0 || ipCol < 0 {
		return nil, fmt.Errorf("no NAME and CLUSTER-IP columns in %q", lines[0])
	}
	svcs := map[string]netip.Addr{}
	for _, line := range lines[1:] {
		f := strings.Fields(line)
		if len(f) <= max(nameCol, ipCol) {
			continue
		}
		// Dual-stack services may list "a,b"; the first is the primary family.
		ip, err := netip.ParseAddr(strings.Split(f[ipCol], ",")[0])
		if err != nil {
			continue // None, <none>
		}
		svcs[f[nameCol]] = ip
	}
	return svcs, nil
}
