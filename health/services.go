package health

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"nodeagent/proxier"
)

// shutdownGrace is how long a health-check server that is no longer wanted lets requests in
// flight finish before its connections are cut. Its port is released at once.
const shutdownGrace = time.Second

// ServicesOptions configure Services.
type ServicesOptions struct {
	Logger *slog.Logger
	// NodePortAddresses are the CIDRs of the node addresses the servers listen on
	// (--nodeport-addresses, as kube-proxy's health checks); empty: every address. The node's
	// addresses are the ones in each synced State.
	NodePortAddresses []netip.Prefix
	// Proxy, when set, makes every health check answer 503 while the proxy is unhealthy
	// (serviceProxyHealthy false), as kube-proxy's do; node eligibility does not count here.
	Proxy *Proxy
}

// Services serves kube-proxy's health check on every healthCheckNodePort of the
// externalTrafficPolicy: Local load-balancer services, so that an external load balancer sends
// traffic only to nodes with a ready local endpoint: 200 with the count when there is one and
// the proxy is healthy, 503 otherwise.
//
// Sync runs on the rule-sync path, so nothing in it waits on a network client: servers are
// stopped by closing their listeners and letting their connections go in the background, and
// the handlers take the status lock only to read a value.
type Services struct {
	opts   ServicesOptions
	log    *slog.Logger
	listen func(host string, port uint16) (net.Listener, error)

	// mu guards status; held only to read or write it, never across I/O.
	mu     sync.RWMutex
	status map[uint16]serviceStatus

	// syncMu serialises Sync and Close and guards what follows.
	syncMu  sync.Mutex
	closed  bool
	ports   map[types.NamespacedName][]uint16 // each service's ports, so a partial sync looks at the changed services only
	servers map[uint16]*portServer
	hosts   []string          // the addresses the servers listen on ("" : all)
	failed  map[uint16]string // ports that could not be opened, with the error logged (logged once)
}

type serviceStatus struct {
	name  types.NamespacedName
	local int // distinct addresses of ready local endpoints
}

// portServer is the server of one health-check node port, on one listener per address.
type portServer struct {
	srv       *http.Server
	listeners []net.Listener
	stopping  atomic.Bool
}

// NewServices returns health-check servers; none listens before the first Sync.
func NewServices(o ServicesOptions) *Services {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return &Services{
		opts: o,
		log:  o.Logger,
		listen: func(host string, port uint16) (net.Listener, error) {
			return net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(int(port))))
		},
		status:  map[uint16]serviceStatus{},
		servers: map[uint16]*portServer{},
		ports:   map[types.NamespacedName][]uint16{},
		failed:  map[uint16]string{},
	}
}

// Sync opens the ports st needs and closes the others, looking only at the services in ch unless
// it is full. A port that cannot be opened is logged once and tried again on the next Sync. Sync
// never waits on a client.
func (s *Services) Sync(st *proxier.State, ch proxier.Changes) {
	s.syncMu.Lock()
	defer s.syncMu.Unlock()
	if s.closed {
		return
	}
	s.mu.Lock()
	if ch.Full {
		clear(s.status)
		clear(s.ports)
		s.setLocked(st.Services)
	} else {
		for n := range ch.Services {
			for _, port := range s.ports[n] {
				delete(s.status, port)
			}
			delete(s.ports, n)
			s.setLocked(st.PortsOfService(n))
		}
	}
	want := make(map[uint16]types.NamespacedName, len(s.status))
	for port, v := range s.status {
		want[port] = v.name
	}
	s.mu.Unlock()

	hosts := s.listenHosts(st.Node.IPs)
	rebind := !slices.Equal(hosts, s.hosts)
	if rebind && len(hosts) == 0 && len(want) > 0 {
		s.log.Warn("no node address in --nodeport-addresses: health check node ports listen nowhere",
			"nodePortAddresses", fmt.Sprint(s.opts.NodePortAddresses), "nodeIPs", fmt.Sprint(st.Node.IPs))
	}
	s.hosts = hosts
	for port, ps := range s.servers {
		if _, ok := want[port]; !ok || rebind {
			ps.stop()
			delete(s.servers, port)
		}
	}
	for port := range s.failed {
		if _, ok := want[port]; !ok {
			delete(s.failed, port)
		}
	}
	for _, port := range slices.Sorted(maps.Keys(want)) {
		if _, ok := s.servers[port]; ok {
			continue
		}
		ps, err := s.open(port, hosts)
		if err != nil {
			if msg := err.Error(); s.failed[port] != msg {
				s.failed[port] = msg
				s.log.Error("open health check node port", "port", port, "service", want[port].String(), "err", err)
			}
			continue
		}
		delete(s.failed, port)
		s.servers[port] = ps
	}
}

// setLocked records the health-check ports of sps. A service's local endpoint count is the
// number of distinct addresses among its ready local endpoints over all its ports, as kube-proxy
// counts (a pod serving two ports is one endpoint); with both families, the larger family's
// count, as one family's kube-proxy answers a port. Terminating endpoints do not count, so that
// load balancers drain a node whose local endpoints are all going away.
func (s *Services) setLocked(sps []*proxier.ServicePort) {
	type key struct {
		name types.NamespacedName
		f    proxier.Family
	}
	seen := map[key]map[netip.Addr]bool{}
	for _, sp := range sps {
		if sp.HealthCheckNodePort == 0 {
			continue
		}
		name := sp.Name.NamespacedName
		k := key{name, sp.Name.Family}
		if seen[k] == nil {
			seen[k] = map[netip.Addr]bool{}
		}
		for _, e := range sp.AllEndpoints {
			if e.Local && e.Ready && !e.Terminating {
				seen[k][e.Addr] = true
			}
		}
		port := sp.HealthCheckNodePort
		cur := s.status[port]
		cur.name = name
		cur.local = max(cur.local, len(seen[k]))
		s.status[port] = cur
		if !slices.Contains(s.ports[name], port) {
			s.ports[name] = append(s.ports[name], port)
		}
	}
}

// listenHosts returns the addresses to listen on: every address ("") without node-port
// addresses, else the node's addresses inside them, sorted.
func (s *Services) listenHosts(nodeIPs []netip.Addr) []string {
	if len(s.opts.NodePortAddresses) == 0 {
		return []string{""}
	}
	var out []string
	for _, a := range nodeIPs {
		for _, p := range s.opts.NodePortAddresses {
			if p.Contains(a) {
				out = append(out, a.String())
				break
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// open listens on port at every host and serves the health check there.
func (s *Services) open(port uint16, hosts []string) (*portServer, error) {
	srv := NewHTTPServer(s.handler(port))
	ps := &portServer{srv: srv}
	for _, h := range hosts {
		ln, err := s.listen(h, port)
		if err != nil {
			for _, l := range ps.listeners {
				_ = l.Close()
			}
			return nil, err
		}
		ps.listeners = append(ps.listeners, ln)
	}
	for _, ln := range ps.listeners {
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) && !ps.stopping.Load() {
				s.log.Error("health check node port", "port", port, "address", ln.Addr().String(), "err", err)
			}
		}()
	}
	return ps, nil
}

// stop releases the port at once and lets requests in flight finish in the background for up
// to shutdownGrace; a client that is still sending or reading then is cut off.
func (ps *portServer) stop() {
	ps.stopping.Store(true)
	for _, ln := range ps.listeners {
		_ = ln.Close()
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
		defer cancel()
		if err := ps.srv.Shutdown(ctx); err != nil {
			_ = ps.srv.Close()
		}
	}()
}

// Close stops every health-check server and cuts their connections; later Syncs do nothing.
func (s *Services) Close() {
	s.syncMu.Lock()
	defer s.syncMu.Unlock()
	s.closed = true
	for port, ps := range s.servers {
		ps.stopping.Store(true)
		_ = ps.srv.Close() // closes the listeners and connections without waiting on anyone
		delete(s.servers, port)
	}
}

// checkBody is kube-proxy's health-check answer.
type checkBody struct {
	Service struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"service"`
	LocalEndpoints      int  `json:"localEndpoints"`
	ServiceProxyHealthy bool `json:"serviceProxyHealthy"`
}

func (s *Services) handler(port uint16) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		s.mu.RLock()
		st, ok := s.status[port]
		s.mu.RUnlock()
		healthy := true
		if s.opts.Proxy != nil {
			healthy, _ = s.opts.Proxy.Healthy()
		}
		var body checkBody
		body.Service.Namespace, body.Service.Name = st.name.Namespace, st.name.Name
		body.LocalEndpoints, body.ServiceProxyHealthy = st.local, healthy
		out, _ := json.Marshal(body)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("X-Load-Balancing-Endpoint-Weight", strconv.Itoa(st.local))
		code := http.StatusOK
		if !ok || st.local == 0 || !healthy {
			code = http.StatusServiceUnavailable
		}
		w.WriteHeader(code)
		if _, err := w.Write(out); err != nil {
			s.log.Debug("write health check answer", "port", port, "err", err)
		}
	})
}
