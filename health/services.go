package health

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"

	"k8s.io/apimachinery/pkg/types"

	"nodeagent/proxier"
)

// Services serves kube-proxy's health check on every healthCheckNodePort of the
// externalTrafficPolicy: Local load-balancer services, so that an external load balancer sends
// traffic only to nodes with a local endpoint: 200 with the count when there are local endpoints,
// 503 otherwise.
type Services struct {
	log    *slog.Logger
	listen func(port uint16) (net.Listener, error)

	mu      sync.Mutex
	status  map[uint16]serviceStatus
	servers map[uint16]*http.Server
	// ports are each service's health-check node ports, so that a partial sync looks at the
	// changed services only.
	ports map[types.NamespacedName][]uint16
}

type serviceStatus struct {
	name  types.NamespacedName
	local int
}

// NewServices returns health-check servers that listen on every address of the node.
func NewServices(log *slog.Logger) *Services {
	return &Services{
		log: log,
		listen: func(port uint16) (net.Listener, error) {
			return net.Listen("tcp", net.JoinHostPort("", strconv.Itoa(int(port))))
		},
		status:  map[uint16]serviceStatus{},
		servers: map[uint16]*http.Server{},
		ports:   map[types.NamespacedName][]uint16{},
	}
}

// Sync opens the ports st needs and closes the others, looking only at the services in ch unless
// it is full. A port that cannot be opened is logged and tried again on the next Sync.
func (s *Services) Sync(st *proxier.State, ch proxier.Changes) {
	s.mu.Lock()
	defer s.mu.Unlock()
	set := func(sps []*proxier.ServicePort) {
		for _, sp := range sps {
			if sp.HealthCheckNodePort == 0 {
				continue
			}
			port := sp.HealthCheckNodePort
			cur := s.status[port]
			cur.name = sp.Name.NamespacedName
			cur.local = max(cur.local, len(sp.LocalEndpoints))
			s.status[port] = cur
			if !slices.Contains(s.ports[cur.name], port) {
				s.ports[cur.name] = append(s.ports[cur.name], port)
			}
		}
	}
	if ch.Full {
		clear(s.status)
		clear(s.ports)
		set(st.Services)
	} else {
		for n := range ch.Services {
			for _, port := range s.ports[n] {
				delete(s.status, port)
			}
			delete(s.ports, n)
			set(st.PortsOfService(n))
		}
	}
	want := s.status
	for port, srv := range s.servers {
		if _, ok := want[port]; !ok {
			_ = srv.Shutdown(context.Background())
			delete(s.servers, port)
		}
	}
	for port := range want {
		if _, ok := s.servers[port]; ok {
			continue
		}
		ln, err := s.listen(port)
		if err != nil {
			s.log.Error("open health check node port", "port", port, "service", want[port].name.String(), "err", err)
			continue
		}
		srv := &http.Server{Handler: s.handler(port)}
		s.servers[port] = srv
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Error("health check node port", "port", port, "err", err)
			}
		}()
	}
}

// Close stops every health-check server.
func (s *Services) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for port, srv := range s.servers {
		_ = srv.Close()
		delete(s.servers, port)
	}
}

func (s *Services) handler(port uint16) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		st, ok := s.status[port]
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("X-Load-Balancing-Endpoint-Weight", strconv.Itoa(st.local))
		if !ok || st.local == 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		body := struct {
			Service struct {
				Namespace string `json:"namespace"`
				Name      string `json:"name"`
			} `json:"service"`
			LocalEndpoints      int  `json:"localEndpoints"`
			ServiceProxyHealthy bool `json:"serviceProxyHealthy"`
		}{LocalEndpoints: st.local, ServiceProxyHealthy: true}
		body.Service.Namespace, body.Service.Name = st.name.Namespace, st.name.Name
		if err := json.NewEncoder(w).Encode(body); err != nil {
			s.log.Debug("write health check answer", "err", fmt.Errorf("port %d: %w", port, err))
		}
	})
}
