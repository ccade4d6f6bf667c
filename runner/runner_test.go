package runner

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// fakeClock advances only when the test says so; After channels fire when their deadline passes.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []waiter
}

type waiter struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Unix(1000, 0)}
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }

func (c *fakeClock) After(d time.Duration) (<-chan time.Time, func()) {
	c.mu.Lock()
	ch := make(chan time.Time, 1)
	c.waiters = append(c.waiters, waiter{c.now.Add(d), ch})
	c.mu.Unlock()
	return ch, func() {}
}

func (c *fakeClock) nextDeadline() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	var next time.Time
	for _, w := range c.waiters {
		if next.IsZero() || w.at.Before(next) {
			next = w.at
		}
	}
	return next
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if !w.at.After(c.now) {
			w.ch <- c.now
		} else {
			kept = append(kept, w)
		}
	}
	c.waiters = kept
}

type call struct {
	at       time.Time
	periodic bool
}

type harness struct {
	t      *testing.T
	clock  *fakeClock
	r      *Runner
	calls  chan call
	result chan error
	idle   chan struct{}
}

func start(t *testing.T, configure func(*Runner)) *harness {
	h := &harness{t: t, clock: newFakeClock(), calls: make(chan call), result: make(chan error), idle: make(chan struct{})}
	h.r = New(func(ctx context.Context, periodic bool) error {
		h.calls <- call{h.clock.Now(), periodic}
		return <-h.result
	})
	h.r.Clock = h.clock
	h.r.beforeWait = func() { h.idle <- struct{}{} }
	configure(h.r)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { h.r.Run(ctx); close(done) }()
	t.Cleanup(func() {
		cancel()
		for {
			select {
			case <-done:
				return
			case <-h.idle:
			// A test that failed mid-run leaves fn waiting to report or to be answered.
			case <-h.calls:
			case h.result <- errors.New("test over"):
			}
		}
	})
	return h
}

func (h *harness) expectCall(periodic bool) call {
	h.t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case c := <-h.calls:
			if c.periodic != periodic {
				h.t.Fatalf("call periodic=%v, want %v", c.periodic, periodic)
			}
			return c
		case <-h.idle: // still waiting for its due time
		case <-timeout:
			h.t.Fatalf("no call")
		}
	}
}

func (h *harness) expectNoCall() {
	h.t.Helper()
	select {
	case c := <-h.calls:
		h.t.Fatalf("unexpected call %+v", c)
	case <-h.idle: // the runner went back to waiting without calling
	case <-time.After(5 * time.Second):
		h.t.Fatalf("runner neither called nor waited")
	}
}

func TestTriggerRunsAtOnceAndBatches(t *testing.T) {
	h := start(t, func(r *Runner) { r.Period = time.Minute })
	h.r.Trigger()
	c := h.expectCall(false)
	if !c.at.Equal(time.Unix(1000, 0)) {
		t.Fatalf("first run delayed to %v", c.at)
	}
	// Three triggers during the run become one run right after it.
	h.r.Trigger()
	h.r.Trigger()
	h.r.Trigger()
	h.result <- nil
	h.expectCall(false)
	h.result <- nil
	h.expectNoCall()
	h.clock.Advance(time.Minute)
	h.expectCall(true)
	h.result <- nil
}

func TestMinIntervalSpacesRuns(t *testing.T) {
	h := start(t, func(r *Runner) { r.MinInterval = time.Second; r.Period = 0 })
	h.r.Trigger()
	h.expectCall(false)
	h.result <- nil
	h.r.Trigger()
	h.expectNoCall()
	h.clock.Advance(999 * time.Millisecond)
	h.expectNoCall()
	h.clock.Advance(time.Millisecond)
	c := h.expectCall(false)
	if got := c.at.Sub(time.Unix(1000, 0)); got != time.Second {
		t.Fatalf("second run after %v", got)
	}
	h.result <- nil
}

func TestFailureRetriesWithBackoff(t *testing.T) {
	h := start(t, func(r *Runner) { r.Period = 0; r.RetryMin = 100 * time.Millisecond })
	h.r.Trigger()
	h.expectCall(false)
	h.result <- errors.New("kernel said no")
	h.expectNoCall()
	h.clock.Advance(100 * time.Millisecond)
	h.expectCall(false)
	h.result <- errors.New("kernel said no")
	h.expectNoCall()
	if got := h.clock.nextDeadline().Sub(h.clock.Now()); got != 200*time.Millisecond {
		t.Fatalf("second retry after %v, want the backoff doubled to 200ms", got)
	}
	h.clock.Advance(200 * time.Millisecond)
	h.expectCall(false)
	h.result <- nil
	h.expectNoCall()
}

// A failing run is retried at its backoff, not sooner, however many changes arrive meanwhile: a
// persistent error under steady changes must not become a hot loop.
func TestTriggersWaitForBackoff(t *testing.T) {
	h := start(t, func(r *Runner) { r.Period = 0; r.RetryMin = 100 * time.Millisecond })
	h.r.Trigger()
	h.expectCall(false)
	h.result <- errors.New("kernel said no")
	h.expectNoCall()
	for range 5 {
		h.r.Trigger()
		h.expectNoCall()
		h.clock.Advance(19 * time.Millisecond)
	}
	h.r.Trigger()
	h.expectNoCall()
	h.clock.Advance(5 * time.Millisecond) // 100 ms after the failure
	c := h.expectCall(false)
	if got := c.at.Sub(time.Unix(1000, 0)); got != 100*time.Millisecond {
		t.Fatalf("retry after %v, want 100ms", got)
	}
	h.result <- nil
	// Once it succeeds, a change runs at once again.
	h.expectNoCall()
	h.r.Trigger()
	h.expectCall(false)
	h.result <- nil
}
