package lab

// The soak-and-fault suite (issue 17): three agents take their objects from a real API server
// (test/kube) while objects churn, processes are killed, the API server and etcd go away, rules
// are tampered with and the kernel refuses transactions. Each test checks what must hold —
// stable services keep answering, every agent's kernel state ends equal to what `nodeagent
// render` computes from the same objects, nothing crashes — and records its figures.
//
// A short version of every scenario runs with the rest of the lab tests (about a minute of
// churn and faults in all). NODEAGENT_SOAK=full runs the long one (10 minutes of churn, longer
// outages); NODEAGENT_SOAK_OUT=DIR writes each scenario's row of results into DIR (`make soak`
// assembles them into bench/results/soak/results.md).

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"nodeagent/test/kube"
)

// soakFull reports whether the long soak was asked for ($NODEAGENT_SOAK=full).
func soakFull() bool { return os.Getenv("NODEAGENT_SOAK") == "full" }

// pick returns short or, in a full soak, full.
func pick[T any](short, full T) T {
	if soakFull() {
		return full
	}
	return short
}

// soakEnv is a lab whose agents take their objects from a real API server in the router
// namespace: the seed's demoapp services (the stable services every scenario keeps calling),
// its endpoints and its MetalLB pool.
type soakEnv struct {
	*env
	cp         *kube.ControlPlane
	kubeconfig string
	// args are every agent's arguments (StartAgent adds the lab's own).
	args      []string
	clusterIP netip.Addr
	refs      int // scratch namespaces made so far
}

// newSoakEnv builds the lab, starts the control plane, applies the seed objects and starts an
// agent on every node with args added, and waits until the stable services answer.
func newSoakEnv(t *testing.T, m mode, args ...string) *soakEnv {
	t.Helper()
	e := newEnv(t, m, setup{pods: append(demoappPods, clientPod), agents: []int{}})
	cp := kube.StartTest(t, kube.Options{NetNS: e.Router, Address: RouterAddr, StartTimeout: Scaled(2 * time.Minute)})
	ctx := t.Context()
	_, kubeconfig, err := cp.AgentConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := cp.InstallCRDs(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := cp.Apply(ctx, []byte("apiVersion: v1\nkind: Namespace\nmetadata: {name: metallb-system}\n")); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"demoapp.yaml", "demoapp-endpoints.yaml", "metallb.yaml"} {
		if _, err := cp.Apply(ctx, []byte(seed(t, f))); err != nil {
			t.Fatalf("apply %s: %v", f, err)
		}
	}
	s := &soakEnv{env: e, cp: cp, kubeconfig: kubeconfig}
	s.args = append([]string{"--manifests=", "--kubeconfig", kubeconfig, "--leader-election-namespace", "default"}, args...)
	for _, n := range e.Nodes {
		e.agents[n.Index] = e.StartAgentNoWait(n, s.args...)
	}
	for i, a := range e.agents {
		if err := a.WaitReady(Scaled(30 * time.Second)); err != nil {
			t.Fatalf("agent on node%02d: %v\n%s", i, err, a.LogTail(30))
		}
	}
	svc, err := cp.Client.CoreV1().Services("default").Get(ctx, "demoapp-clusterip", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.clusterIP = netip.MustParseAddr(svc.Spec.ClusterIP)
	for _, tg := range s.stableTargets() {
		e.waitAnswer(tg.ns, "tcp", tg.addr)
	}
	return s
}

// restartAgent starts node i's agent again with the same arguments, without waiting.
func (s *soakEnv) restartAgent(i int) *Agent {
	s.t.Helper()
	s.agents[i] = s.StartAgentNoWait(s.Node(i), s.args...)
	return s.agents[i]
}

// target is one path to a stable service.
type target struct{ name, ns, addr string }

// stableTargets are the paths a client keeps using while a scenario runs: the cluster IP from a
// pod and from a node, the node port through every node, and the load-balancer address.
func (s *soakEnv) stableTargets() []target {
	cip := hostPort(s.clusterIP, 80)
	out := []target{
		{"pod → cluster IP", s.Pod("client-pod").NS, cip},
		{"node02 → cluster IP", s.Node(2).NS, cip},
	}
	for _, n := range s.Nodes {
		out = append(out, target{"client → " + n.Name + " node port", s.Client, hostPort(n.IP, 32725)})
	}
	return append(out, target{"client → load balancer", s.Client, hostPort(lbAddr, 80)})
}

// traffic keeps opening connections to targets until Stop and counts those that fail.
type traffic struct {
	ok, failed atomic.Int64
	// resets counts the failures that were a connection reset by peer (they count in failed too).
	resets   atomic.Int64
	mu       sync.Mutex
	failures []string
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

// startTraffic opens a new connection to each target every interval.
func startTraffic(targets []target, interval time.Duration) *traffic {
	ctx, cancel := context.WithCancel(context.Background())
	tr := &traffic{cancel: cancel}
	for _, tg := range targets {
		tr.wg.Add(1)
		go func() {
			defer tr.wg.Done()
			for ctx.Err() == nil {
				r, err := askPatient(tg.ns, tg.addr)
				if err == nil && !strings.HasPrefix(r.ServerName, "demoapp-") {
					err = fmt.Errorf("answered by %v", r)
				}
				if err != nil {
					tr.failed.Add(1)
					if errors.Is(err, syscall.ECONNRESET) {
						tr.resets.Add(1)
					}
					tr.mu.Lock()
					if len(tr.failures) < 20 {
						tr.failures = append(tr.failures, fmt.Sprintf("%s %s: %v", time.Now().Format("15:04:05.000"), tg.name, err))
					}
					tr.mu.Unlock()
				} else {
					tr.ok.Add(1)
				}
				select {
				case <-ctx.Done():
				case <-time.After(interval):
				}
			}
		}()
	}
	return tr
}

// askPatient is Ask with room for a loaded machine: a connection counts as failed when the
// path is broken, not when the test process waited for a CPU.
func askPatient(ns, addr string) (Reply, error) {
	c, err := DialFrom(ns, "tcp", "", addr, Scaled(3*time.Second))
	if err != nil {
		return Reply{}, err
	}
	defer c.Close()
	return Exchange(c, Scaled(3*time.Second))
}

// Stop ends the traffic and returns the numbers of answered and failed connections.
func (tr *traffic) Stop() (ok, failed int64) {
	tr.cancel()
	tr.wg.Wait()
	return tr.ok.Load(), tr.failed.Load()
}

// check fails the test when a connection failed.
func (tr *traffic) check(t *testing.T, what string) {
	t.Helper()
	ok, failed := tr.Stop()
	t.Logf("%s: %d connections to stable services answered, %d failed", what, ok, failed)
	if failed > 0 {
		tr.mu.Lock()
		t.Errorf("%s: %d of %d connections to stable services failed; first ones:\n%s", what, failed, ok+failed, strings.Join(tr.failures, "\n"))
		tr.mu.Unlock()
	}
}

// checkRerouted is check for traffic through a router whose equal-cost next hops change on
// purpose: a connection in flight when its flow is rehashed to another node meets no conntrack
// entry there and is reset, with any proxy (kube-proxy and MetalLB alike). Up to allowed such
// resets pass; any other failure, or more resets, fails the test.
func (tr *traffic) checkRerouted(t *testing.T, what string, allowed int64) {
	t.Helper()
	ok, failed := tr.Stop()
	resets := tr.resets.Load()
	t.Logf("%s: %d connections to stable services answered, %d failed (%d reset in flight, %d allowed)", what, ok, failed, resets, allowed)
	if failed > resets || resets > allowed {
		tr.mu.Lock()
		t.Errorf("%s: %d of %d connections to stable services failed (%d resets, at most %d allowed); first ones:\n%s",
			what, failed, ok+failed, resets, allowed, strings.Join(tr.failures, "\n"))
		tr.mu.Unlock()
	}
}

// usage is what one agent process uses.
type usage struct {
	rssKB      int64
	goroutines int
	cpu        time.Duration
}

// agentUsage reads an agent's resident memory and CPU time from /proc and its goroutine count
// from its /metrics.
func agentUsage(t *testing.T, a *Agent) usage {
	t.Helper()
	var u usage
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", a.Pid()))
	if err != nil {
		t.Fatalf("agent on %s: %v", a.Node.Name, err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			u.rssKB, _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", a.Pid()))
	if err != nil {
		t.Fatalf("agent on %s: %v", a.Node.Name, err)
	}
	// Fields after the command name (which may hold spaces) start at the state, field 3.
	if i := bytes.LastIndexByte(stat, ')'); i > 0 {
		f := strings.Fields(string(stat[i+1:]))
		if len(f) > 12 {
			ut, _ := strconv.ParseInt(f[11], 10, 64)
			st, _ := strconv.ParseInt(f[12], 10, 64)
			u.cpu = time.Duration(ut+st) * (time.Second / 100) // USER_HZ
		}
	}
	u.goroutines = int(scrapeMetrics(t, a.Node.NS)["go_goroutines"])
	return u
}

// churn writes about rate changes a second through the API: services of every type created,
// changed and deleted, their EndpointSlices changed and their endpoints flapping between ready
// and terminating, LoadBalancer services coming and going. The stable services are not touched.
type churn struct {
	client  *kube.ControlPlane
	changes atomic.Int64
	errs    atomic.Int64
	lbs     atomic.Int32 // live churn LoadBalancer services (the pool has 30 addresses)
	lastErr atomic.Value
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// kubeAPI is the clientset churn writes through.
type kubeAPI = kubernetes.Interface

const (
	churnWorkers = 4
	// churnPerWorker is how many churn services each worker keeps around on average.
	churnPerWorker = 25
	maxChurnLBs    = 8
)

// startChurn runs the churn until Stop.
func startChurn(cp *kube.ControlPlane, rate int) *churn {
	ctx, cancel := context.WithCancel(context.Background())
	c := &churn{client: cp, cancel: cancel}
	for w := range churnWorkers {
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			c.worker(ctx, w, time.Second*churnWorkers/time.Duration(rate))
		}()
	}
	return c
}

// Stop ends the churn once every request under way has returned; it returns the number of
// changes the API server accepted.
func (c *churn) Stop() int64 {
	c.cancel()
	c.wg.Wait()
	return c.changes.Load()
}

// churnSvc is a churn worker's record of one of its services.
type churnSvc struct {
	svc   *v1.Service
	slice *discoveryv1.EndpointSlice
}

func (c *churn) worker(ctx context.Context, w int, every time.Duration) {
	rng := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
	live := map[string]*churnSvc{}
	seq := 0
	tick := time.NewTicker(every)
	defer tick.Stop()
	api := c.client.Client
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		// Requests finish even when the churn stops mid-way: Stop waits for them, so that the
		// objects the check renders are final.
		rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := c.step(rctx, rng, api, w, &seq, live)
		cancel()
		if err != nil {
			c.errs.Add(1)
			c.lastErr.Store(err.Error())
		}
	}
}

// names returns the keys of m in order (map order would make runs differ for no reason).
func names(m map[string]*churnSvc) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func (c *churn) step(ctx context.Context, rng *rand.Rand, api kubeAPI, w int, seq *int, live map[string]*churnSvc) error {
	svcs := api.CoreV1().Services("default")
	slices_ := api.DiscoveryV1().EndpointSlices("default")
	keys := names(live)
	op := rng.IntN(100)
	switch {
	case len(keys) == 0 || (op < 25 && len(keys) < 2*churnPerWorker) || len(keys) < churnPerWorker/2:
		*seq++
		name := fmt.Sprintf("churn-%d-%d", w, *seq)
		typ := v1.ServiceTypeClusterIP
		switch r := rng.IntN(10); {
		case r < 1 && c.lbs.Load() < maxChurnLBs:
			typ = v1.ServiceTypeLoadBalancer
			c.lbs.Add(1)
		case r < 4:
			typ = v1.ServiceTypeNodePort
		}
		svc := &v1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: v1.ServiceSpec{Type: typ, Ports: []v1.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP,
				Port: int32(8000 + rng.IntN(1000)), TargetPort: intstr.FromInt(8080)}}},
		}
		created, err := svcs.Create(ctx, svc, metav1.CreateOptions{})
		if err != nil {
			if typ == v1.ServiceTypeLoadBalancer {
				c.lbs.Add(-1)
			}
			return fmt.Errorf("create service %s: %w", name, err)
		}
		c.changes.Add(1)
		cs := &churnSvc{svc: created}
		live[name] = cs
		slice, err := slices_.Create(ctx, churnSlice(name, rng), metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create slice %s: %w", name, err)
		}
		c.changes.Add(1)
		cs.slice = slice
	case op < 40:
		// Delete a service and its slice.
		name := keys[rng.IntN(len(keys))]
		cs := live[name]
		delete(live, name)
		if cs.svc.Spec.Type == v1.ServiceTypeLoadBalancer {
			c.lbs.Add(-1)
		}
		if err := svcs.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			return fmt.Errorf("delete service %s: %w", name, err)
		}
		c.changes.Add(1)
		if cs.slice != nil {
			if err := slices_.Delete(ctx, cs.slice.Name, metav1.DeleteOptions{}); err != nil {
				return fmt.Errorf("delete slice %s: %w", name, err)
			}
			c.changes.Add(1)
		}
	case op < 55:
		// Change a service: its port, or its session affinity.
		cs := live[keys[rng.IntN(len(keys))]]
		svc := cs.svc.DeepCopy()
		if rng.IntN(2) == 0 {
			svc.Spec.Ports[0].Port = int32(8000 + rng.IntN(1000))
		} else if svc.Spec.SessionAffinity == v1.ServiceAffinityClientIP {
			svc.Spec.SessionAffinity, svc.Spec.SessionAffinityConfig = v1.ServiceAffinityNone, nil
		} else {
			svc.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		}
		updated, err := svcs.Update(ctx, svc, metav1.UpdateOptions{})
		if err != nil {
			return c.refetch(ctx, api, cs, fmt.Errorf("update service %s: %w", svc.Name, err))
		}
		c.changes.Add(1)
		cs.svc = updated
	default:
		// Change a slice: an endpoint flaps between ready and terminating, or is replaced.
		cs := live[keys[rng.IntN(len(keys))]]
		if cs.slice == nil {
			return nil
		}
		slice := cs.slice.DeepCopy()
		i := rng.IntN(len(slice.Endpoints))
		ep := &slice.Endpoints[i]
		if rng.IntN(4) == 0 {
			*ep = churnEndpoint(rng)
		} else {
			ready := ep.Conditions.Ready == nil || !*ep.Conditions.Ready
			ep.Conditions = discoveryv1.EndpointConditions{Ready: &ready, Serving: ptr(true), Terminating: ptr(!ready)}
		}
		updated, err := slices_.Update(ctx, slice, metav1.UpdateOptions{})
		if err != nil {
			return c.refetch(ctx, api, cs, fmt.Errorf("update slice %s: %w", slice.Name, err))
		}
		c.changes.Add(1)
		cs.slice = updated
	}
	return nil
}

// refetch reloads a churn service's objects after a failed update, so that the next update
// starts from the server's version; it returns err.
func (c *churn) refetch(ctx context.Context, api kubeAPI, cs *churnSvc, err error) error {
	if svc, gerr := api.CoreV1().Services("default").Get(ctx, cs.svc.Name, metav1.GetOptions{}); gerr == nil {
		cs.svc = svc
	}
	if cs.slice != nil {
		if sl, gerr := api.DiscoveryV1().EndpointSlices("default").Get(ctx, cs.slice.Name, metav1.GetOptions{}); gerr == nil {
			cs.slice = sl
		}
	}
	return err
}

func ptr[T any](v T) *T { return &v }

// churnEndpoint is a ready endpoint at a pod address of a random node (no backend answers
// there; only the stable services carry traffic).
func churnEndpoint(rng *rand.Rand) discoveryv1.Endpoint {
	n := 1 + rng.IntN(3)
	return discoveryv1.Endpoint{
		Addresses:  []string{fmt.Sprintf("10.244.%d.%d", n, 100+rng.IntN(150))},
		Conditions: discoveryv1.EndpointConditions{Ready: ptr(true), Serving: ptr(true), Terminating: ptr(false)},
		NodeName:   ptr(fmt.Sprintf("node%02d", n)),
	}
}

func churnSlice(svc string, rng *rand.Rand) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: svc + "-1", Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Protocol: ptr(v1.ProtocolTCP), Port: ptr(int32(8080))}},
	}
	for range 1 + rng.IntN(3) {
		s.Endpoints = append(s.Endpoints, churnEndpoint(rng))
	}
	return s
}

// kernelState lists what node namespace ns holds of the mode's rules, normalised so that two
// listings of the same rules built different ways compare equal.
func kernelState(mode, ns string) (string, error) {
	if mode == "iptables" {
		return iptablesState(ns)
	}
	return nftablesState(ns)
}

// nftablesState lists both of our tables as nft's JSON, without handles, with set elements
// sorted and objects sorted except rules, which keep their order within their chain.
func nftablesState(ns string) (string, error) {
	var lines []string
	for _, fam := range []string{"ip", "ip6"} {
		out, err := Exec(ns, "nft", "-j", "list", "table", fam, "nodeagent")
		if err != nil {
			if strings.Contains(out, "No such file or directory") {
				lines = append(lines, "no table "+fam)
				continue
			}
			return "", err
		}
		var doc struct {
			Nftables []map[string]json.RawMessage `json:"nftables"`
		}
		if err := json.Unmarshal([]byte(out), &doc); err != nil {
			return "", fmt.Errorf("parse nft -j output: %w", err)
		}
		var objs []string
		for _, obj := range doc.Nftables {
			for kind, raw := range obj {
				var m map[string]any
				if err := json.Unmarshal(raw, &m); err != nil {
					continue // metainfo
				}
				delete(m, "handle")
				if elems, ok := m["elem"].([]any); ok {
					strs := make([]string, len(elems))
					for i, e := range elems {
						b, _ := json.Marshal(e)
						strs[i] = string(b)
					}
					slices.Sort(strs)
					m["elem"] = strs
				}
				b, _ := json.Marshal(m)
				objs = append(objs, kind+" "+string(b))
			}
		}
		slices.SortStableFunc(objs, func(a, b string) int { return strings.Compare(objectKey(a), objectKey(b)) })
		lines = append(lines, objs...)
	}
	return strings.Join(lines, "\n"), nil
}

// objectKey orders nft objects: everything but rules by content, rules by chain only (stable
// sort keeps their order in the chain).
func objectKey(line string) string {
	if !strings.HasPrefix(line, "rule ") {
		return "0" + line
	}
	var m struct {
		Family string `json:"family"`
		Chain  string `json:"chain"`
	}
	_ = json.Unmarshal([]byte(strings.TrimPrefix(line, "rule ")), &m)
	return "1" + m.Family + " " + m.Chain
}

// iptablesState lists iptables-save's and ip6tables-save's view of ns: per table our chains
// with their rules in order, and the rules of the built-in chains (jumps into ours) sorted, so
// that the order in which the jumps were inserted does not count.
func iptablesState(ns string) (string, error) {
	var out []string
	for _, cmd := range []string{"iptables-save", "ip6tables-save"} {
		save, err := Exec(ns, cmd)
		if err != nil {
			return "", err
		}
		out = append(out, "# "+cmd)
		out = append(out, normalizeSave(save)...)
	}
	return strings.Join(out, "\n"), nil
}

func normalizeSave(save string) []string {
	var out, builtin []string
	table := ""
	flush := func() {
		slices.Sort(builtin)
		out = append(out, builtin...)
		builtin = nil
	}
	for _, line := range strings.Split(save, "\n") {
		switch {
		case line == "" || strings.HasPrefix(line, "#") || line == "COMMIT":
		case strings.HasPrefix(line, "*"):
			flush()
			table = line
			out = append(out, line)
		case strings.HasPrefix(line, ":"):
			name := strings.Fields(line)[0]
			if strings.ToUpper(name) == name && !strings.HasPrefix(name, ":NA-") {
				continue // built-in chain: its policy and counters are not ours
			}
			out = append(out, table+" "+name)
		case strings.HasPrefix(line, "-A NA-"):
			out = append(out, table+" "+line)
		default:
			builtin = append(builtin, table+" "+line)
		}
	}
	flush()
	// Our chains' declarations and rules keep save's order within a chain; chains in any order.
	slices.SortStableFunc(out, func(a, b string) int { return strings.Compare(chainOf(a), chainOf(b)) })
	return out
}

func chainOf(line string) string {
	f := strings.Fields(line)
	if len(f) >= 3 && f[1] == "-A" {
		return f[0] + " " + f[2]
	}
	if len(f) >= 2 {
		return f[0] + " " + strings.TrimPrefix(f[1], ":")
	}
	return line
}

// reference renders, for every node, what its agent should program from the objects its
// source serves (the API server, or the node's manifests with manifests set), loads it into a
// scratch namespace and returns that namespace's normalised state per node.
func (s *soakEnv) reference(manifests bool) map[string]string {
	s.t.Helper()
	refs := map[string]string{}
	var mu sync.Mutex
	jobs := make([]func() error, 0, len(s.Nodes))
	for _, n := range s.Nodes {
		s.refs++
		ref := fmt.Sprintf("%s-pod-ref%d", s.ID, s.refs)
		jobs = append(jobs, func() error {
			args := []string{"render", "--proxy-mode", s.mode.name, "--hostname-override", n.Name, "--cluster-cidr", ClusterCIDR.String()}
			if manifests {
				args = append(args, "--manifests", n.Manifests)
			} else {
				args = append(args, "--kubeconfig", s.kubeconfig)
			}
			out, err := execStdout(n.NS, nil, Binary(s.t), args...)
			if err != nil {
				return fmt.Errorf("render for %s: %w", n.Name, err)
			}
			if err := s.addNamespaces(ref); err != nil {
				return err
			}
			defer deleteNamespaces(ref)
			if err := loadRender(s.mode.name, ref, out); err != nil {
				return fmt.Errorf("load %s's render into %s: %w", n.Name, ref, err)
			}
			st, err := kernelState(s.mode.name, ref)
			if err != nil {
				return err
			}
			mu.Lock()
			refs[n.Name] = st
			mu.Unlock()
			return nil
		})
	}
	if err := parallel(jobs...); err != nil {
		s.t.Fatal(err)
	}
	return refs
}

// loadRender programs render's output into namespace ns the way its mode's tools load it.
func loadRender(mode, ns string, render []byte) error {
	if mode != "iptables" {
		_, err := execStdout(ns, render, "nft", "-f", "-")
		return err
	}
	v4, v6, _ := strings.Cut(string(render), "# IPv6")
	for _, p := range []struct{ cmd, in string }{{"iptables-restore", v4}, {"ip6tables-restore", v6}} {
		if strings.TrimSpace(p.in) == "" || !strings.Contains(p.in, "COMMIT") {
			continue
		}
		if _, err := execStdout(ns, []byte(p.in), p.cmd, "-w"); err != nil {
			return err
		}
	}
	return nil
}

// execStdout runs name in namespace ns with stdin and returns its standard output alone.
func execStdout(ns string, stdin []byte, name string, args ...string) ([]byte, error) {
	if err := checkNotHost(ns); err != nil {
		return nil, err
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("%s %s in %s: %w: %s", name, strings.Join(args, " "), ns, err, lastLinesOf(errb.String(), 10))
	}
	return out.Bytes(), nil
}

func lastLinesOf(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// convergence is how the nodes' kernels compare with what `nodeagent render` computes from the
// same objects, from a moment on (the churn stopped, a fault cleared).
type convergence struct {
	// at1s is the number of lines, over all nodes, by which the kernels one second after that
	// moment differed from their references.
	at1s int
	// after is, per node, when its kernel was first seen equal to its reference: 1 s when it
	// already was one second after, -1 when never.
	after map[string]time.Duration
	// diffs are the remaining differences of nodes that never converged.
	diffs map[string]string
}

// lostUpdates is the number of nodes that never converged.
func (c convergence) lostUpdates() int {
	n := 0
	for _, d := range c.after {
		if d < 0 {
			n++
		}
	}
	return n
}

func (c convergence) worst() time.Duration {
	var w time.Duration
	for _, d := range c.after {
		w = max(w, d)
	}
	return w
}

// String says when the kernels matched: "≤ 1s" or the slowest node's time.
func (c convergence) String() string {
	if c.worst() <= time.Second && c.lostUpdates() == 0 {
		return "≤ 1s"
	}
	return c.worst().Round(time.Millisecond).String()
}

// converge snapshots every node's kernel one second after since, renders the references
// (manifests: from each node's manifests, else from the API server) and compares; nodes that
// differed are compared again until they match or timeout (from since) passes.
func (s *soakEnv) converge(manifests bool, since time.Time, timeout time.Duration) convergence {
	s.t.Helper()
	time.Sleep(time.Until(since.Add(time.Second)))
	snap := map[string]string{}
	var mu sync.Mutex
	var jobs []func() error
	for _, n := range s.Nodes {
		jobs = append(jobs, func() error {
			st, err := kernelState(s.mode.name, n.NS)
			mu.Lock()
			snap[n.Name] = st
			mu.Unlock()
			return err
		})
	}
	if err := parallel(jobs...); err != nil {
		s.t.Fatal(err)
	}
	refs := s.reference(manifests)
	c := convergence{after: map[string]time.Duration{}, diffs: map[string]string{}}
	pending := map[string]bool{}
	for _, n := range s.Nodes {
		if snap[n.Name] == refs[n.Name] {
			c.after[n.Name] = time.Second
			continue
		}
		c.at1s += strings.Count(lineDiff(refs[n.Name], snap[n.Name]), "\n")
		pending[n.Name] = true
	}
	for len(pending) > 0 {
		elapsed := time.Since(since)
		for _, n := range s.Nodes {
			if !pending[n.Name] {
				continue
			}
			got, err := kernelState(s.mode.name, n.NS)
			if err != nil {
				s.t.Fatal(err)
			}
			if got == refs[n.Name] {
				delete(pending, n.Name)
				delete(c.diffs, n.Name)
				c.after[n.Name] = elapsed
				continue
			}
			c.diffs[n.Name] = lineDiff(refs[n.Name], got)
			if elapsed > timeout {
				delete(pending, n.Name)
				c.after[n.Name] = -1
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return c
}

// checkConverged fails the test for every node whose kernel never matched its reference.
func (s *soakEnv) checkConverged(what string, c convergence) {
	s.t.Helper()
	for _, n := range s.Nodes {
		if c.after[n.Name] < 0 {
			d := c.diffs[n.Name]
			if len(d) > 3000 {
				d = d[:3000] + "\n..."
			}
			s.t.Errorf("%s: %s's rules never matched `nodeagent render` of the same objects:\n%s", what, n.Name, d)
		}
	}
	s.t.Logf("%s: kernels equal their render after %v (per node %v); %d lines differed 1 s after", what, c, c.after, c.at1s)
}

// checkAlive fails the test for every agent that exited.
func (s *soakEnv) checkAlive(what string) {
	s.t.Helper()
	for i, a := range s.agents {
		if exited, err := a.Exited(); exited {
			s.t.Errorf("%s: agent on node%02d exited: %v\n%s", what, i, err, a.LogTail(20))
		}
	}
}

// result is one row of bench/results/soak/results.md.
type result struct {
	Scenario, Mode, Duration string
	Changes                  int64
	FailedConnections        int64
	LostUpdates              string
	RSS, Goroutines          string
	CPUPerChange             string
	Recovery                 string
}

// record writes r as a Markdown table row to $NODEAGENT_SOAK_OUT/<scenario>-<mode>.row, and logs it.
func record(t *testing.T, r result) {
	t.Helper()
	dash := func(s string) string {
		if s == "" {
			return "–"
		}
		return s
	}
	run := "short"
	if soakFull() {
		run = "full"
	}
	row := fmt.Sprintf("| %s | %s | %s | %s | %d | %d | %s | %s | %s | %s | %s |\n", r.Scenario, r.Mode, run, r.Duration, r.Changes,
		r.FailedConnections, dash(r.LostUpdates), dash(r.RSS), dash(r.Goroutines), dash(r.CPUPerChange), dash(r.Recovery))
	t.Logf("result: %s", strings.TrimSpace(row))
	dir := os.Getenv("NODEAGENT_SOAK_OUT")
	if dir == "" || t.Failed() {
		return
	}
	name := strings.ToLower(strings.ReplaceAll(r.Scenario, " ", "-")) + "-" + r.Mode + ".row"
	if err := os.WriteFile(filepath.Join(dir, name), []byte(row), 0o644); err != nil {
		t.Errorf("write result: %v", err)
	}
}

// soakModes runs run for the nftables mode and, when iptables is cheap for the scenario, for
// the iptables mode, each in its own lab.
func soakModes(t *testing.T, withIPTables bool, run func(t *testing.T, m mode)) {
	RequireRoot(t)
	ms := []mode{nftablesMode}
	if withIPTables {
		ms = append(ms, iptablesMode)
	}
	for _, m := range ms {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			run(t, m)
		})
	}
}

// TestSoakChurn: for 20 s (full soak: 10 minutes) about 100 object changes a second go through
// the API while clients keep connecting to the stable services through the cluster IP, every
// node port and the load-balancer address. No connection may fail; once the churn stops every
// agent's kernel must equal `nodeagent render` of the API's objects; memory and goroutines must
// stay flat (checked in the full soak, after the first minute).
func TestSoakChurn(t *testing.T) {
	soakModes(t, false, func(t *testing.T, m mode) {
		s := newSoakEnv(t, m)
		duration := pick(Scaled(20*time.Second), 10*time.Minute)
		warm := pick(5*time.Second, time.Minute)
		tr := startTraffic(s.stableTargets(), 50*time.Millisecond)
		// What an agent spends with nothing changing (metrics, health checks, timers), to take off
		// the CPU time per change.
		idleFor := pick(3*time.Second, 10*time.Second)
		idle := map[int]usage{}
		for i, a := range s.agents {
			idle[i] = agentUsage(t, a)
		}
		time.Sleep(idleFor)
		start := time.Now()
		before := map[int]usage{}
		for i, a := range s.agents {
			before[i] = agentUsage(t, a)
		}
		// About 70 operations a second make about 100 changes (a create or delete writes two objects).
		ch := startChurn(s.cp, 70)
		time.Sleep(warm)
		warmUsage := map[int]usage{}
		for i, a := range s.agents {
			warmUsage[i] = agentUsage(t, a)
		}
		time.Sleep(duration - warm)
		changes := ch.Stop()
		stopped := time.Now()
		took := stopped.Sub(start)
		conv := s.converge(false, stopped, Scaled(30*time.Second))
		tr.check(t, "churn")
		s.checkConverged("after the churn", conv)
		s.checkAlive("churn")
		t.Logf("churn: %d changes in %v (%.0f/s), %d API errors (last: %v)", changes, took.Round(time.Millisecond),
			float64(changes)/took.Seconds(), ch.errs.Load(), ch.lastErr.Load())
		if rate := float64(changes) / took.Seconds(); rate < 50 {
			// The API server on a loaded machine sets the pace; the full soak must reach it.
			if soakFull() {
				t.Errorf("churn reached %.0f changes/s, want about 100", rate)
			} else {
				t.Logf("churn reached only %.0f changes/s (a loaded machine?)", rate)
			}
		}

		var rss, gor, cpu []string
		for i, a := range s.agents {
			end := agentUsage(t, a)
			w := warmUsage[i]
			rss = append(rss, fmt.Sprintf("%.1f→%.1f", float64(w.rssKB)/1024, float64(end.rssKB)/1024))
			gor = append(gor, fmt.Sprintf("%d→%d", w.goroutines, end.goroutines))
			idleRate := float64(before[i].cpu-idle[i].cpu) / float64(idleFor)
			busy := end.cpu - before[i].cpu - time.Duration(idleRate*float64(took))
			perChange := busy / time.Duration(max(changes, 1))
			cpu = append(cpu, perChange.Round(time.Microsecond).String())
			t.Logf("node%02d: RSS %d kB at %v, %d kB at the end; goroutines %d → %d; CPU %v for %d changes (idle %.1f%% of a core taken off)",
				i, w.rssKB, warm, end.rssKB, w.goroutines, end.goroutines, end.cpu-before[i].cpu, changes, 100*idleRate)
			if soakFull() {
				if float64(end.rssKB) > 1.1*float64(w.rssKB) {
					t.Errorf("node%02d: RSS grew from %d kB after %v to %d kB (> 10%%)", i, w.rssKB, warm, end.rssKB)
				}
				if float64(end.goroutines) > 1.1*float64(w.goroutines)+2 {
					t.Errorf("node%02d: goroutines grew from %d after %v to %d (> 10%%)", i, w.goroutines, warm, end.goroutines)
				}
			}
		}
		record(t, result{
			Scenario: "churn", Mode: m.name, Duration: took.Round(time.Second).String(), Changes: changes,
			FailedConnections: tr.failed.Load(),
			LostUpdates:       fmt.Sprintf("%d (%d lines differ 1 s after)", conv.lostUpdates(), conv.at1s),
			RSS:               "MiB at " + warm.String() + " → end: " + strings.Join(rss, ", "),
			Goroutines:        strings.Join(gor, ", "),
			CPUPerChange:      strings.Join(cpu, ", "),
			Recovery:          "kernels equal render " + conv.String() + " after the churn stopped",
		})
	})
}
