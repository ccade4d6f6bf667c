// Package runner runs one sync function for a loop (proxy rules, ARP, BGP): at once when a change
// arrives and the loop is idle, batched when changes arrive during a run, spaced by a minimum
// interval if asked, repeated periodically to repair drift, and retried with backoff on failure.
package runner

import (
	"context"
	"time"
)

// Clock is the part of time the runner uses, so tests can drive it.
type Clock interface {
	Now() time.Time
	// After returns a channel that receives once d has passed, and a function that stops it.
	After(d time.Duration) (<-chan time.Time, func())
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }
func (realClock) After(d time.Duration) (<-chan time.Time, func()) {
	t := time.NewTimer(d)
	return t.C, func() { t.Stop() }
}

// Func is the work of one run. periodic is true when the run is the periodic resync rather than a
// response to a change, so the work can verify the kernel instead of trusting its own memory.
type Func func(ctx context.Context, periodic bool) error

// Runner coalesces triggers into runs of one Func.
type Runner struct {
	fn Func
	// MinInterval is the least time between the starts of two runs (0: none).
	MinInterval time.Duration
	// Period is the time after a successful run when the periodic run happens (0: never).
	Period time.Duration
	// RetryMin and RetryMax bound the exponential backoff after a failed run. Until the retry
	// is due, triggers are held, not run.
	RetryMin, RetryMax time.Duration
	// Clock defaults to the real one.
	Clock Clock

	kick chan struct{}
	// beforeWait, for tests, is called each time the runner is about to wait.
	beforeWait func()
}

// New returns a runner for fn with kube-proxy-like defaults: no minimum interval, a 30 s period,
// retries from 100 ms up to 30 s.
func New(fn Func) *Runner {
	return &Runner{fn: fn, Period: 30 * time.Second, RetryMin: 100 * time.Millisecond, RetryMax: 30 * time.Second,
		Clock: realClock{}, kick: make(chan struct{}, 1)}
}

// Trigger asks for a run. It never blocks; triggers that arrive before the run starts are merged.
func (r *Runner) Trigger() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Run runs until ctx is done. The first run happens on the first Trigger.
func (r *Runner) Run(ctx context.Context) {
	var (
		pending   bool      // a trigger arrived since the last run started
		lastStart time.Time // start of the last run
		retryAt   time.Time // set while the last run failed
		periodAt  time.Time // next periodic run, set after a success
		backoff   time.Duration
	)
	for {
		now := r.Clock.Now()
		due, periodic := periodAt, true
		if pending || !retryAt.IsZero() {
			periodic = false
			// After a failure the backoff holds whatever arrives: a persistent kernel error
			// under a steady stream of changes must not become a loop of full rebuilds.
			// (kube-proxy's runner lets a change run at once and relies on minSyncPeriod, 1 s
			// by default, to bound that loop; this runner's MinInterval defaults to none.)
			due = retryAt
			if due.IsZero() {
				due = now
			}
			if r.MinInterval > 0 && !lastStart.IsZero() && lastStart.Add(r.MinInterval).After(due) {
				due = lastStart.Add(r.MinInterval)
			}
		}
		if due.IsZero() || now.Before(due) {
			var timer <-chan time.Time
			stop := func() {}
			if !due.IsZero() {
				timer, stop = r.Clock.After(due.Sub(now))
			}
			if r.beforeWait != nil {
				r.beforeWait()
			}
			select {
			case <-ctx.Done():
			case <-r.kick:
				pending = true
			case <-timer:
			}
			stop()
			if ctx.Err() != nil {
				return
			}
			continue
		}
		// Triggers that arrive from here on are batched into the next run.
		pending = false
		lastStart = now
		err := r.fn(ctx, periodic)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			backoff = min(max(2*backoff, r.RetryMin), r.RetryMax)
			retryAt = r.Clock.Now().Add(backoff)
			continue
		}
		backoff, retryAt = 0, time.Time{}
		if r.Period > 0 {
			periodAt = r.Clock.Now().Add(r.Period)
		}
	}
}
