package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"nodeagent/agent/config"
	"nodeagent/lb"
	"nodeagent/metallb"
	"nodeagent/source"
)

// manifests returns the manifests source configured by c.
func manifests(c *config.Config, log *slog.Logger) (*source.Manifests, error) {
	cidrs, err := source.ParseServiceCIDRs(c.ServiceClusterIPRange)
	if err != nil {
		return nil, fmt.Errorf("--service-cluster-ip-range: %w", err)
	}
	ports, err := source.ParsePortRange(c.ServiceNodePortRange)
	if err != nil {
		return nil, fmt.Errorf("--service-node-port-range: %w", err)
	}
	return &source.Manifests{Dir: c.Manifests, ServiceCIDRs: cidrs, NodePortRange: ports, Log: log}, nil
}

// restConfig is the API server connection named by --kubeconfig, or the in-cluster one.
func restConfig(c *config.Config) (*rest.Config, error) {
	var cfg *rest.Config
	var err error
	if c.ClientConnection.Kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", c.ClientConnection.Kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	cfg.UserAgent = c.UserAgent
	if cfg.Dial == nil && c.RefusedWait > 0 {
		cfg.Dial = waitRefused(&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}, c.RefusedWait)
	}
	c.ApplyClientSettings(cfg, false)
	return cfg, nil
}

// apiRefusedWait is how long the daemon's connections to the API server wait out "connection
// refused".
const apiRefusedWait = time.Minute

// waitRefused returns a dial function that, while the server refuses connections (an API server
// restarting), tries again every 200 ms for up to wait, rather than failing at once. client-go's
// reflectors back off after every failed list or watch (0.8 s doubling up to 30 s, jittered up to
// twice that), so after an outage of 15 s a watch came back about 20 s after the API server did;
// a dial that is still waiting connects as soon as the server listens.
func waitRefused(d *net.Dialer, wait time.Duration) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		deadline := time.Now().Add(wait)
		for {
			c, err := d.DialContext(ctx, network, addr)
			if err == nil || !errors.Is(err, syscall.ECONNREFUSED) || time.Now().After(deadline) {
				return c, err
			}
			select {
			case <-ctx.Done():
				return nil, err
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
}

// typed returns a copy of cfg for the typed clientset, which speaks protobuf by default as
// kube-proxy's does (--kube-api-content-type).
func typed(c *config.Config, cfg *rest.Config) *rest.Config {
	cfg = rest.CopyConfig(cfg)
	c.ApplyClientSettings(cfg, true)
	return cfg
}

// kubeClient connects to the API server named by --kubeconfig, or in-cluster.
func kubeClient(c *config.Config) (kubernetes.Interface, error) {
	cfg, err := restConfig(c)
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(typed(c, cfg))
}

// metallbKinds are the MetalLB CRD kinds the Kubernetes source watches.
var metallbKinds = []source.ExtraKind{
	{Resource: lb.GroupVersion.WithResource("ipaddresspools"), New: func() runtime.Object { return &lb.IPAddressPool{} }},
	{Resource: lb.GroupVersion.WithResource("l2advertisements"), New: func() runtime.Object { return &lb.L2Advertisement{} }},
	{Resource: lb.GroupVersion.WithResource("bgpadvertisements"), New: func() runtime.Object { return &lb.BGPAdvertisement{} }},
	{Resource: lb.GroupVersion.WithResource("communities"), New: func() runtime.Object { return &lb.Community{} }},
	{Resource: lb.GroupVersionV1beta2.WithResource("bgppeers"), New: func() runtime.Object { return &lb.BGPPeer{} }},
	{Resource: lb.GroupVersion.WithResource("bfdprofiles"), New: func() runtime.Object { return &lb.BFDProfile{} }},
}

var errNoSource = errors.New("no source: give --manifests DIR or --kubeconfig FILE (or run in a cluster)")

func useKube(c *config.Config) (bool, error) {
	switch {
	case c.Manifests != "" && c.ClientConnection.Kubeconfig != "":
		return false, errors.New("--manifests and --kubeconfig exclude each other")
	case c.Manifests != "":
		if st, err := os.Stat(c.Manifests); err != nil || !st.IsDir() {
			return false, fmt.Errorf("--manifests %s: not a directory", c.Manifests)
		}
		return false, nil
	case c.ClientConnection.Kubeconfig != "" || os.Getenv("KUBERNETES_SERVICE_HOST") != "":
		return true, nil
	}
	return false, errNoSource
}

// OpenSource returns the source the configuration names.
func OpenSource(c *config.Config, node string, log *slog.Logger) (source.Runner, error) {
	kube, err := useKube(c)
	if err != nil {
		return nil, err
	}
	if !kube {
		return manifests(c, log)
	}
	cfg, err := restConfig(c)
	if err != nil {
		return nil, err
	}
	client, err := kubernetes.NewForConfig(typed(c, cfg))
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &source.Kube{Client: client, NodeName: node, Log: log, Dynamic: dyn, Extra: metallbKinds,
		SecretNamespace: c.LeaderElectionNamespace}, nil
}

// LoadObjects reads the inputs once, for render and get: the manifests, or a list from the API
// server; LoadBalancer services come with the addresses a running agent would assign.
func LoadObjects(ctx context.Context, c *config.Config, node string, log *slog.Logger) ([]runtime.Object, error) {
	src, err := OpenSource(c, node, log)
	if err != nil {
		return nil, err
	}
	rec := &recorder{synced: make(chan struct{})}
	sink := metallb.New(metallb.Options{Node: node, Class: c.LBClass, AllocationOff: !c.LBAllocation, Next: rec, Log: log,
		Namespace: c.LeaderElectionNamespace})
	if m, ok := src.(*source.Manifests); ok {
		objs, problems, err := m.Load()
		if err != nil {
			return nil, err
		}
		for _, p := range problems {
			log.Warn("manifest problem", "problem", p.String())
		}
		objs.Deliver(sink)
		return rec.objs, nil
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- src.Run(ctx, sink) }()
	select {
	case <-rec.synced:
		cancel()
		return rec.objs, nil
	case err := <-errc:
		return nil, fmt.Errorf("list from API server: %w", err)
	case <-ctx.Done():
		return nil, fmt.Errorf("list from API server: %w", ctx.Err())
	}
}

// recorder is a Sink that keeps the initial list.
type recorder struct {
	objs   []runtime.Object
	synced chan struct{}
	done   bool
}

func (r *recorder) Upsert(obj runtime.Object) {
	if r.done {
		return
	}
	// A service may come again with its load-balancer addresses: keep the latest.
	if svc, ok := obj.(*v1.Service); ok {
		for i, o := range r.objs {
			if old, ok := o.(*v1.Service); ok && old.Namespace == svc.Namespace && old.Name == svc.Name {
				r.objs[i] = obj
				return
			}
		}
	}
	r.objs = append(r.objs, obj)
}
func (r *recorder) Delete(runtime.Object) {}
func (r *recorder) Synced() {
	if !r.done {
		r.done = true
		close(r.synced)
	}
}

// ListServices returns the services in force, with the allocation a running agent computes.
func ListServices(ctx context.Context, c *config.Config, log *slog.Logger) ([]*v1.Service, error) {
	kube, err := useKube(c)
	if err != nil {
		return nil, err
	}
	if !kube {
		objs, err := LoadObjects(ctx, c, "", log)
		if err != nil {
			return nil, err
		}
		var out []*v1.Service
		for _, o := range objs {
			if svc, ok := o.(*v1.Service); ok {
				out = append(out, svc)
			}
		}
		return out, nil
	}
	client, err := kubeClient(c)
	if err != nil {
		return nil, err
	}
	list, err := client.CoreV1().Services(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list services: %w", err)
	}
	out := make([]*v1.Service, len(list.Items))
	for i := range list.Items {
		out[i] = &list.Items[i]
	}
	return out, nil
}
