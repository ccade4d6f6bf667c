package agent

import (
	"context"
	"errors"
	"net"
	"syscall"
	"testing"
	"time"
)

// TestWaitRefusedConnectsOnceTheServerListens: a connection to an API server that is
// restarting waits until it listens again (client-go's reflectors would otherwise back off for
// up to a minute), and gives up at its deadline.
func TestWaitRefusedConnectsOnceTheServerListens(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // refused from now on
	if _, err := (&net.Dialer{}).Dial("tcp", addr); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Skipf("a closed port on loopback answers %v, not connection refused", err)
	}
	d := &net.Dialer{Timeout: time.Second}

	// Nobody comes back: it gives up after its wait with the refusal.
	start := time.Now()
	if _, err := waitRefused(d, 500*time.Millisecond)(context.Background(), "tcp", addr); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial with nobody listening: %v, want connection refused", err)
	}
	if took := time.Since(start); took < 500*time.Millisecond {
		t.Errorf("gave up after %v, before its wait of 500ms", took)
	}

	// The server comes back while the dial waits.
	listening := make(chan net.Listener, 1)
	go func() {
		time.Sleep(400 * time.Millisecond)
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			listening <- nil
			return
		}
		listening <- ln
	}()
	c, err := waitRefused(d, 10*time.Second)(context.Background(), "tcp", addr)
	ln2 := <-listening
	if ln2 == nil {
		t.Skip("the port was taken meanwhile")
	}
	defer ln2.Close()
	if err != nil {
		t.Fatalf("dial while the server came back: %v", err)
	}
	c.Close()

	// A cancelled context ends the wait at once.
	ln2.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start = time.Now()
	if _, err := waitRefused(d, time.Minute)(ctx, "tcp", addr); err == nil {
		t.Fatal("dial succeeded with nobody listening")
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("a cancelled dial returned after %v", took)
	}
}
