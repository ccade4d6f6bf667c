// Package health serves the agent's /healthz and /metrics endpoints and the per-service health
// check node ports that load balancers probe for externalTrafficPolicy: Local services.
package health

import (
	"encoding/json"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	v1 "k8s.io/api/core/v1"
)

// ToBeDeletedTaint is the taint the cluster autoscaler puts on a node it is about to delete;
// kube-proxy's /healthz fails on such a node so that load balancers drain it first.
const ToBeDeletedTaint = "ToBeDeletedByClusterAutoscaler"

// Proxy tracks whether the proxy keeps up, as kube-proxy's ProxyHealthServer does, and whether
// this node is eligible for load-balancer traffic. The proxy is healthy once a first sync
// succeeded, while no queued change has waited Timeout or longer, and while the last successful
// sync is at most Timeout old (the periodic resync succeeds every sync period on a working node,
// so an older one means syncs keep failing).
type Proxy struct {
	Timeout time.Duration
	now     func() time.Time

	mu         sync.Mutex
	updated    time.Time // last successful sync
	queued     time.Time // oldest change not yet synced; zero when none
	ineligible bool      // this node's Node object is being deleted or is marked for deletion

	healthzTotal, livezTotal *prometheus.CounterVec
}

// NewProxy returns a tracker that reports unhealthy until the first successful sync. The node
// counts as eligible until SetNodeEligible says otherwise: without a Node object (a manifests
// directory may have none) nothing says it is going away.
func NewProxy(timeout time.Duration) *Proxy {
	return &Proxy{Timeout: timeout, now: time.Now,
		healthzTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kubeproxy_proxy_healthz_total", Help: alpha + "Cumulative proxy healthz HTTP status",
		}, []string{"code"}),
		livezTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kubeproxy_proxy_livez_total", Help: alpha + "Cumulative proxy livez HTTP status",
		}, []string{"code"}),
	}
}

// Queued records that a change is waiting to be synced.
func (p *Proxy) Queued() {
	p.mu.Lock()
	if p.queued.IsZero() {
		p.queued = p.now()
	}
	p.mu.Unlock()
}

// Synced records a successful sync that applied every change queued before start.
func (p *Proxy) Synced(start time.Time) {
	p.mu.Lock()
	p.updated = p.now()
	if !p.queued.After(start) {
		p.queued = time.Time{}
	}
	p.mu.Unlock()
}

// SetNodeEligible records whether this node may take load-balancer traffic (see NodeEligible).
func (p *Proxy) SetNodeEligible(eligible bool) {
	p.mu.Lock()
	p.ineligible = !eligible
	p.mu.Unlock()
}

// NodeEligible reports whether node may take load-balancer traffic as kube-proxy decides it: not
// being deleted and not tainted ToBeDeletedByClusterAutoscaler.
func NodeEligible(node *v1.Node) bool {
	if node.DeletionTimestamp != nil {
		return false
	}
	for _, t := range node.Spec.Taints {
		if t.Key == ToBeDeletedTaint {
			return false
		}
	}
	return true
}

// Healthy reports the proxy's state and the time of the last successful sync.
func (p *Proxy) Healthy() (bool, time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.healthyLocked(p.now()), p.updated
}

func (p *Proxy) healthyLocked(now time.Time) bool {
	switch {
	case p.updated.IsZero():
		return false
	case !p.queued.IsZero() && now.Sub(p.queued) >= p.Timeout:
		return false
	case now.Sub(p.updated) > p.Timeout:
		return false
	}
	return true
}

// healthBody is kube-proxy's /healthz and /livez answer.
type healthBody struct {
	LastUpdated  time.Time `json:"lastUpdated"`
	CurrentTime  time.Time `json:"currentTime"`
	NodeEligible *bool     `json:"nodeEligible,omitempty"`
	Healthy      bool      `json:"healthy"`
}

// answer writes /healthz (withNode) or /livez.
func (p *Proxy) answer(w http.ResponseWriter, withNode bool) {
	p.mu.Lock()
	now := p.now()
	ok := p.healthyLocked(now)
	body := healthBody{LastUpdated: p.updated.UTC(), CurrentTime: now.UTC(), Healthy: ok}
	eligible := !p.ineligible
	p.mu.Unlock()
	counter := p.livezTotal
	if withNode {
		counter = p.healthzTotal
		body.NodeEligible = &eligible
		ok = ok && eligible
	}
	code := http.StatusOK
	if !ok {
		code = http.StatusServiceUnavailable
	} else {
		// kube-proxy reports "now" while healthy: older releases' lastUpdated was the last run of
		// the sync loop, changes or not, and clients compare it with the current time.
		body.LastUpdated = body.CurrentTime
	}
	counter.WithLabelValues(strconv.Itoa(code)).Inc()
	out, _ := json.Marshal(body)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = w.Write(out)
}

// ServeHTTP answers /healthz like kube-proxy: 200, or 503 when the proxy is unhealthy or this
// node is not eligible for load-balancer traffic, with a small JSON body.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, _ *http.Request) { p.answer(w, true) }

// Livez answers /livez like kube-proxy: as /healthz without the node's eligibility, so that a
// node being drained does not get its agent restarted.
func (p *Proxy) Livez() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { p.answer(w, false) })
}
