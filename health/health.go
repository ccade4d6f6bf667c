// Package health serves the agent's /healthz and /metrics endpoints and the per-service health
// check node ports that load balancers probe for externalTrafficPolicy: Local services.
package health

import (
	"encoding/json"
	"net/http"
	"sync"
	"time"
)

// Proxy tracks whether the proxy keeps up: it is healthy once a first sync succeeded and no
// queued change has waited longer than Timeout without a successful sync (kube-proxy's rule).
type Proxy struct {
	Timeout time.Duration
	now     func() time.Time

	mu      sync.Mutex
	updated time.Time // last successful sync
	queued  time.Time // oldest change not yet synced; zero when none
}

// NewProxy returns a tracker that reports unhealthy until the first successful sync.
func NewProxy(timeout time.Duration) *Proxy { return &Proxy{Timeout: timeout, now: time.Now} }

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

// Healthy reports the state and the time of the last successful sync.
func (p *Proxy) Healthy() (bool, time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.updated.IsZero() {
		return false, p.updated
	}
	if !p.queued.IsZero() && p.now().Sub(p.queued) > p.Timeout {
		return false, p.updated
	}
	return true, p.updated
}

// ServeHTTP answers /healthz like kube-proxy: 200 or 503 with a small JSON body.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	ok, updated := p.Healthy()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if !ok {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	body := struct {
		LastUpdated string `json:"lastUpdated"`
		CurrentTime string `json:"currentTime"`
		Healthy     bool   `json:"healthy"`
	}{updated.UTC().Format(time.RFC3339Nano), p.now().UTC().Format(time.RFC3339Nano), ok}
	_ = json.NewEncoder(w).Encode(body)
}
