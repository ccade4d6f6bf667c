// Package kube runs a real Kubernetes control plane for tests and benchmarks: Debian's etcd and a
// kube-apiserver v1.34 built from the Go module proxy (see build.sh and the module in apiserver/).
// No fake: what the agent sees through client-go here is what it sees in a cluster.
//
// A control plane listens on 127.0.0.1 in the caller's network namespace by default. That is a
// plain local server; nothing here programs the kernel. Given a lab namespace (Options.NetNS) it
// starts both processes there with `ip netns exec` instead, listening on an address of that
// namespace so that agents in the lab reach it, and bridges a unix socket into the namespace with
// socat so that the clients of this process reach it too without entering the namespace.
//
// The API server authenticates a static admin token (group system:masters) and service-account
// tokens signed by a key generated per control plane, authorizes with Node,RBAC, and serves the
// service range 10.96.0.0/12 of the lab. No controller manager runs: namespaces are not
// finalized, ServiceAccounts get no default token, EndpointSlices exist only when a test writes
// them — exactly what tests of an agent that only reads them want.
package kube

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// ServiceCIDR is the service-cluster-ip-range of every control plane, the lab's service network.
const ServiceCIDR = "10.96.0.0/12"

// Options configure a control plane. The zero value is a control plane on 127.0.0.1 with free
// ports, binaries from build.sh's cache and a temporary directory.
type Options struct {
	// NetNS, when set, runs etcd and kube-apiserver inside this existing network namespace.
	NetNS string
	// Address is where the API server listens and what it advertises. Default 127.0.0.1; inside a
	// lab namespace, an address of that namespace that agents in other namespaces can route to.
	Address netip.Addr
	// Port is the API server's secure port; 0 picks a free one (6443 inside NetNS).
	Port int
	// BinDir holds kube-apiserver; empty runs build.sh (which does nothing when its cache is
	// current).
	BinDir string
	// Etcd is the etcd binary; empty looks up "etcd" in PATH.
	Etcd string
	// Dir keeps certificates, tokens, kubeconfigs and logs; empty makes a temporary directory that
	// Stop removes. etcd's data lives in /dev/shm when that is writable (fsync there is free,
	// which matters for benchmarks writing thousands of objects), else under Dir.
	Dir string
	// APIServerArgs are appended to kube-apiserver's command line; a later flag wins.
	APIServerArgs []string
	// StartTimeout bounds how long Start and Restart wait for /readyz; default 2 minutes.
	StartTimeout time.Duration
	// Logger receives progress messages; default slog.Default().
	Logger *slog.Logger
}

// ControlPlane is a running etcd plus kube-apiserver. Its clients authenticate as an admin.
type ControlPlane struct {
	// Host is the API server's URL as clients in its network namespace reach it.
	Host string
	// CAData is the PEM certificate of the CA that signed the serving certificate.
	CAData []byte
	// AdminToken authenticates as user "admin" in group system:masters.
	AdminToken string
	// Kubeconfig is the path of an admin kubeconfig for Host.
	Kubeconfig string
	// Dir is the directory of certificates, kubeconfigs and logs.
	Dir string
	// Client and Dynamic are admin clientsets of this process.
	Client  *kubernetes.Clientset
	Dynamic *dynamic.DynamicClient

	opts      Options
	log       *slog.Logger
	admin     *rest.Config
	sock      string // unix socket bridged into NetNS, "" on the host
	apiArgv   []string
	etcdArgv  []string
	ownDir    bool
	etcdData  string
	mu        sync.Mutex
	etcd      *proc
	apiserver *proc
	bridge    *proc
	stopped   bool
}

// Build runs build.sh and returns the directory holding kube-apiserver and kube-proxy. The first
// build on a machine takes minutes; after that it returns at once.
func Build(ctx context.Context) (string, error) {
	return runBuild(ctx, "build.sh", "kube-apiserver")
}

// BuildMetalLB runs metallb-build.sh and returns the directory holding MetalLB v0.14.8's
// controller and speaker binaries and its CustomResourceDefinitions (crd/). The first build on a
// machine takes minutes; after that it returns at once.
func BuildMetalLB(ctx context.Context) (string, error) {
	return runBuild(ctx, "metallb-build.sh", "speaker")
}

// runBuild runs the build script name of this package and returns the directory it printed last,
// checked to hold the file want.
func runBuild(ctx context.Context, name, want string) (string, error) {
	script, err := buildScript(name)
	if err != nil {
		return "", err
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "bash", script)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s: %w\n%s", script, err, lastLines(stderr.Bytes(), 30))
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	dir := lines[len(lines)-1]
	if _, err := os.Stat(filepath.Join(dir, want)); err != nil {
		return "", fmt.Errorf("%s printed %q, which has no %s: %w", script, dir, want, err)
	}
	return dir, nil
}

// buildScript finds the script name next to this source file, or under test/kube of a parent of
// the working directory (for binaries built with -trimpath).
func buildScript(name string) (string, error) {
	if _, file, _, ok := runtime.Caller(0); ok {
		p := filepath.Join(filepath.Dir(file), name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find %s: %w", name, err)
	}
	for {
		p := filepath.Join(dir, "test", "kube", name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("find %s: not beside this package's source nor under test/kube of a parent directory", name)
		}
		dir = parent
	}
}

// Start runs etcd and kube-apiserver and returns once /readyz answers ok, with admin clients
// connected. Stop it when done, also when Start failed halfway (Stop is safe on any result).
func Start(ctx context.Context, opts Options) (cp *ControlPlane, err error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 2 * time.Minute
	}
	if !opts.Address.IsValid() {
		opts.Address = netip.MustParseAddr("127.0.0.1")
	}
	if opts.Etcd == "" {
		if opts.Etcd, err = exec.LookPath("etcd"); err != nil {
			return nil, fmt.Errorf("etcd: %w (Debian's etcd-server; scripts/deps.sh installs it)", err)
		}
	}
	if opts.BinDir == "" {
		if opts.BinDir, err = Build(ctx); err != nil {
			return nil, fmt.Errorf("build kube-apiserver: %w", err)
		}
	}
	cp = &ControlPlane{opts: opts, log: opts.Logger.With("component", "kube-controlplane")}
	// The error returns below set the named result to nil; what has to be stopped is this one.
	started := cp
	defer func() {
		if err != nil {
			if stopErr := started.Stop(); stopErr != nil {
				started.log.Warn("stop after failed start", "err", stopErr)
			}
			cp = nil
		}
	}()

	cp.Dir = opts.Dir
	if cp.Dir == "" {
		if cp.Dir, err = os.MkdirTemp("", "na-kube-"); err != nil {
			return nil, fmt.Errorf("control plane directory: %w", err)
		}
		cp.ownDir = true
	}
	if cp.etcdData, err = os.MkdirTemp("/dev/shm", "na-etcd-"); err != nil {
		if cp.etcdData, err = os.MkdirTemp(cp.Dir, "etcd-"); err != nil {
			return nil, fmt.Errorf("etcd data directory: %w", err)
		}
	}

	pki, err := newPKI(cp.Dir, opts.Address)
	if err != nil {
		return nil, err
	}
	cp.CAData = pki.caPEM
	if cp.AdminToken, err = randomToken(); err != nil {
		return nil, err
	}
	tokens := fmt.Sprintf("%s,admin,admin,\"system:masters\"\n", cp.AdminToken)
	if err := os.WriteFile(pki.tokensFile, []byte(tokens), 0o600); err != nil {
		return nil, fmt.Errorf("write token file: %w", err)
	}

	port := opts.Port
	if port == 0 && opts.NetNS != "" {
		port = 6443
	}
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	etcdClient, etcdPeer := ports[1], ports[2]
	if port == 0 {
		port = ports[0]
	}
	cp.Host = "https://" + net.JoinHostPort(opts.Address.String(), strconv.Itoa(port))

	etcdURL := func(port int) string { return "http://127.0.0.1:" + strconv.Itoa(port) }
	etcdArgv := []string{opts.Etcd,
		"--name=nodeagent-test",
		"--data-dir=" + cp.etcdData,
		"--listen-client-urls=" + etcdURL(etcdClient),
		"--advertise-client-urls=" + etcdURL(etcdClient),
		"--listen-peer-urls=" + etcdURL(etcdPeer),
		"--initial-advertise-peer-urls=" + etcdURL(etcdPeer),
		"--initial-cluster=nodeagent-test=" + etcdURL(etcdPeer),
		"--initial-cluster-state=new",
		"--logger=zap", "--log-level=warn",
	}
	cp.etcdArgv = etcdArgv
	if cp.etcd, err = cp.start("etcd", etcdArgv, false); err != nil {
		return nil, err
	}

	cp.apiArgv = append([]string{filepath.Join(opts.BinDir, "kube-apiserver"),
		"--etcd-servers=" + etcdURL(etcdClient),
		"--bind-address=" + opts.Address.String(),
		"--advertise-address=" + opts.Address.String(),
		"--secure-port=" + strconv.Itoa(port),
		"--tls-cert-file=" + pki.certFile,
		"--tls-private-key-file=" + pki.keyFile,
		"--cert-dir=" + filepath.Join(cp.Dir, "certs"),
		"--token-auth-file=" + pki.tokensFile,
		"--authorization-mode=Node,RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + pki.saPubFile,
		"--service-account-signing-key-file=" + pki.saKeyFile,
		"--service-cluster-ip-range=" + ServiceCIDR,
		// No kubelet registers this address, and a loopback one is not a valid endpoint.
		"--endpoint-reconciler-type=none",
		"--profiling=false",
		"--v=1",
	}, opts.APIServerArgs...)

	cp.admin = &rest.Config{
		Host:            cp.Host,
		BearerToken:     cp.AdminToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: cp.CAData},
		// Tests and benchmarks write thousands of objects; client-side throttling would measure
		// itself. A negative QPS turns client-go's limiter off.
		QPS: -1,
	}
	if opts.NetNS != "" {
		cp.sock = filepath.Join(cp.Dir, "apiserver.sock")
		argv := []string{"socat", "UNIX-LISTEN:" + cp.sock + ",fork,unlink-early",
			"TCP:" + net.JoinHostPort(opts.Address.String(), strconv.Itoa(port))}
		if cp.bridge, err = cp.start("socat", argv, true); err != nil {
			return nil, err
		}
		sock := cp.sock
		cp.admin.Dial = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}
	}
	if cp.Client, err = kubernetes.NewForConfig(cp.admin); err != nil {
		return nil, fmt.Errorf("admin clientset: %w", err)
	}
	if cp.Dynamic, err = dynamic.NewForConfig(cp.admin); err != nil {
		return nil, fmt.Errorf("admin dynamic client: %w", err)
	}
	cp.Kubeconfig = filepath.Join(cp.Dir, "admin.kubeconfig")
	if err := cp.WriteKubeconfig(cp.Kubeconfig, "admin", cp.AdminToken); err != nil {
		return nil, err
	}

	if cp.apiserver, err = cp.start("kube-apiserver", cp.apiArgv, false); err != nil {
		return nil, err
	}
	if err := cp.waitReady(ctx); err != nil {
		return nil, err
	}
	return cp, nil
}

// TB is the part of testing.TB that StartTest uses. It is spelled out so that this package, which
// the bench subcommand links into the daemon's binary, does not import package testing.
type TB interface {
	Helper()
	Context() context.Context
	Skip(args ...any)
	Skipf(format string, args ...any)
	Fatalf(format string, args ...any)
	Errorf(format string, args ...any)
	Logf(format string, args ...any)
	TempDir() string
	Cleanup(func())
	Failed() bool
}

// StartTest starts a control plane for a test and stops it when the test ends. It skips the test,
// with the reason, when the binaries cannot be had at all (no etcd, build.sh failing); any other
// failure fails it. On failure the tail of both logs goes to the test log.
func StartTest(t TB, opts Options) *ControlPlane {
	t.Helper()
	ctx := t.Context()
	if opts.Etcd == "" {
		if _, err := exec.LookPath("etcd"); err != nil {
			t.Skip("no etcd in PATH (Debian's etcd-server; scripts/deps.sh installs it)")
		}
	}
	if opts.BinDir == "" {
		start := time.Now()
		dir, err := Build(ctx)
		if err != nil {
			t.Skipf("kube-apiserver cannot be built: %v", err)
		}
		t.Logf("build.sh: %s in %v", dir, time.Since(start).Round(time.Millisecond))
		opts.BinDir = dir
	}
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	start := time.Now()
	cp, err := Start(ctx, opts)
	if err != nil {
		t.Fatalf("start control plane: %v", err)
	}
	t.Logf("control plane at %s ready in %v", cp.Host, time.Since(start).Round(time.Millisecond))
	t.Cleanup(func() {
		if t.Failed() {
			for _, name := range []string{"etcd", "kube-apiserver"} {
				b, _ := os.ReadFile(filepath.Join(cp.Dir, name+".log"))
				t.Logf("last lines of %s.log:\n%s", name, lastLines(b, 40))
			}
		}
		if err := cp.Stop(); err != nil {
			t.Errorf("stop control plane: %v", err)
		}
	})
	return cp
}

// Config returns a copy of the admin client configuration.
func (cp *ControlPlane) Config() *rest.Config {
	return rest.CopyConfig(cp.admin)
}

// TokenConfig returns a client configuration that authenticates with a bearer token, for
// clients of this process (it goes through the socket bridge when the server is in a namespace).
func (cp *ControlPlane) TokenConfig(token string) *rest.Config {
	c := rest.AnonymousClientConfig(cp.admin)
	c.BearerToken = token
	return c
}

// Restart stops the API server and starts it again on the same port, etcd and keys, and waits
// for /readyz. Clients keep working across it once their requests are retried; watches end and
// informers re-list, as after a real API server restart.
func (cp *ControlPlane) Restart(ctx context.Context) error {
	cp.mu.Lock()
	old := cp.apiserver
	cp.mu.Unlock()
	if err := old.stop(30 * time.Second); err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	p, err := cp.start("kube-apiserver", cp.apiArgv, false)
	if err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	cp.mu.Lock()
	cp.apiserver = p
	cp.mu.Unlock()
	if err := cp.waitReady(ctx); err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	return nil
}

// StopAPIServer kills the API server by its PID (no grace, as in a crash) and leaves it down:
// clients get "connection refused" until StartAPIServer.
func (cp *ControlPlane) StopAPIServer() error {
	cp.mu.Lock()
	p := cp.apiserver
	cp.apiserver = nil
	cp.mu.Unlock()
	if p == nil {
		return errors.New("stop API server: not running")
	}
	return p.stop(0)
}

// StartAPIServer starts the API server again after StopAPIServer, on the same port, etcd and
// keys, and waits for /readyz.
func (cp *ControlPlane) StartAPIServer(ctx context.Context) error {
	cp.mu.Lock()
	running := cp.apiserver != nil
	cp.mu.Unlock()
	if running {
		return errors.New("start API server: already running")
	}
	p, err := cp.start("kube-apiserver", cp.apiArgv, false)
	if err != nil {
		return err
	}
	cp.mu.Lock()
	cp.apiserver = p
	cp.mu.Unlock()
	if err := cp.waitReady(ctx); err != nil {
		return fmt.Errorf("start API server: %w", err)
	}
	return nil
}

// StopEtcd kills etcd by its PID (no grace) and leaves it down: the API server stays up without
// its storage, as in an etcd outage, until StartEtcd.
func (cp *ControlPlane) StopEtcd() error {
	cp.mu.Lock()
	p := cp.etcd
	cp.etcd = nil
	cp.mu.Unlock()
	if p == nil {
		return errors.New("stop etcd: not running")
	}
	return p.stop(0)
}

// StartEtcd starts etcd again on the same data directory and ports after StopEtcd, and waits
// until the API server reports ready.
func (cp *ControlPlane) StartEtcd(ctx context.Context) error {
	cp.mu.Lock()
	running := cp.etcd != nil
	cp.mu.Unlock()
	if running {
		return errors.New("start etcd: already running")
	}
	p, err := cp.start("etcd", cp.etcdArgv, false)
	if err != nil {
		return err
	}
	cp.mu.Lock()
	cp.etcd = p
	cp.mu.Unlock()
	if err := cp.waitReady(ctx); err != nil {
		return fmt.Errorf("start etcd: %w", err)
	}
	return nil
}

// Stop ends the API server, etcd and the socket bridge by their PIDs and removes what Start
// created outside Dir (and Dir itself when Start made it). It is safe to call more than once.
func (cp *ControlPlane) Stop() error {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if cp.stopped {
		return nil
	}
	cp.stopped = true
	var errs []error
	for _, p := range []*proc{cp.apiserver, cp.bridge, cp.etcd} {
		if p != nil {
			errs = append(errs, p.stop(30*time.Second))
		}
	}
	if cp.etcdData != "" {
		errs = append(errs, os.RemoveAll(cp.etcdData))
	}
	if cp.ownDir {
		errs = append(errs, os.RemoveAll(cp.Dir))
	}
	return errors.Join(errs...)
}

// waitReady polls /readyz until it answers ok, a process exits, or the start timeout passes.
func (cp *ControlPlane) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, cp.opts.StartTimeout)
	defer cancel()
	var last error
	for {
		cp.mu.Lock()
		procs := []*proc{cp.etcd, cp.apiserver, cp.bridge}
		cp.mu.Unlock()
		for _, p := range procs {
			if p != nil && p.exited() {
				return fmt.Errorf("%s exited before the API server was ready: %v\n%s", p.name, p.err, p.tail())
			}
		}
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		body, err := cp.Client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(rctx)
		rcancel()
		if err == nil && string(body) == "ok" {
			return nil
		}
		if err != nil {
			last = err
		} else {
			last = fmt.Errorf("/readyz: %s", body)
		}
		select {
		case <-ctx.Done():
			cp.mu.Lock()
			tail := cp.apiserver.tail()
			cp.mu.Unlock()
			return fmt.Errorf("API server at %s not ready: %w (last: %v)\n%s", cp.Host, ctx.Err(), last, tail)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// proc is a child process started by this package and stopped by its PID.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error // of Wait, valid once done is closed
	group   bool  // stop the whole process group (socat's forked children)
}

// start runs argv (inside NetNS through ip netns exec, which execs in place so the PID is the
// program's own), appending its output to name.log in Dir.
func (cp *ControlPlane) start(name string, argv []string, group bool) (*proc, error) {
	if cp.opts.NetNS != "" {
		argv = append([]string{"ip", "netns", "exec", cp.opts.NetNS}, argv...)
	}
	logPath := filepath.Join(cp.Dir, name+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	defer logFile.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Killed with this process if it dies without cleaning up (a test timeout).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: group}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	cp.log.Debug("started", "name", name, "pid", cmd.Process.Pid, "log", logPath)
	p := &proc{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{}), group: group}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, and SIGKILL after grace, to the process (or its group) by PID and waits
// for it to be gone.
func (p *proc) stop(grace time.Duration) error {
	if p.exited() {
		return nil
	}
	pid := p.cmd.Process.Pid
	if p.group {
		pid = -pid
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("stop %s: %w", p.name, err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill %s: %w", p.name, err)
	}
	<-p.done
	return nil
}

// tail returns the last lines of the process's log.
func (p *proc) tail() string {
	if p == nil {
		return ""
	}
	b, _ := os.ReadFile(p.logPath)
	return p.name + ".log:\n" + lastLines(b, 20)
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// freePorts asks the kernel for n distinct free TCP ports on loopback. Another process may take
// one before the server binds it; with ports drawn from the whole ephemeral range that is rare.
func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("free port: %w", err)
		}
		// Held open until all are drawn, so that no port comes back twice.
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
