package health

import (
	"net/http"
	"time"
)

// Limits of every HTTP server the agent runs (/healthz, /metrics, /debug, the health check node
// ports): each connection costs a goroutine and buffers, and the ports are open to whoever
// reaches the node, so a client that sends slowly, reads slowly or idles is cut off.
const (
	ReadHeaderTimeout = 5 * time.Second
	ReadTimeout       = 10 * time.Second
	WriteTimeout      = 10 * time.Second
	IdleTimeout       = 60 * time.Second
	// MaxHeaderBytes bounds a request's headers; probes and scrapes send a few hundred bytes.
	MaxHeaderBytes = 16 << 10
)

// NewHTTPServer returns a server for handler with the limits above. A caller whose handlers take
// longer to answer (profiles) raises WriteTimeout.
func NewHTTPServer(handler http.Handler) *http.Server {
	return &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout:       ReadTimeout,
		WriteTimeout:      WriteTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
	}
}
