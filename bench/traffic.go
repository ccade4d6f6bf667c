package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The traffic probe times what users feel: from an API write to the first TCP connection through
// the service that a pod answers. It runs inside the kernel observer (`bench --observe`), a
// process started in the node's namespace before any measurement, so no process start is on the
// measured path: a request starts a burst of connection attempts every millisecond, from before
// the write, and the answer says when the wanted endpoint first answered.
//
// Pods are one listener in a namespace behind the node that answers on every address of the pod
// network (a local route for the whole prefix) and writes the address it was reached at, so the
// client knows which endpoint a connection reached.

// TrafficProbe asks the observer for connection attempts to Target every millisecond, Parallel
// at a time, until an attempt is answered by Want; then for After more to count answers by Stale
// (an endpoint the change removed: new connections must not reach it any more).
type TrafficProbe struct {
	Target   netip.AddrPort
	Want     netip.Addr
	Stale    netip.Addr // invalid: none
	Parallel int
	After    time.Duration
	Timeout  time.Duration
}

func (p TrafficProbe) String() string {
	return "connection to " + p.Target.String() + " answered by " + p.Want.String()
}

// request is the observer's request line for p.
func (p TrafficProbe) request(id string) string {
	stale := "-"
	if p.Stale.IsValid() {
		stale = p.Stale.String()
	}
	return fmt.Sprintf("%s traffic %s %s %s %d %d %d", id, p.Target, p.Want, stale, p.Parallel,
		p.After.Milliseconds(), p.Timeout.Milliseconds())
}

// parseTarget checks that an observer request of kind has n fields and reads the first, the
// address and port it is about.
func parseTarget(kind string, f []string, n int) (netip.AddrPort, error) {
	if len(f) != n {
		return netip.AddrPort{}, fmt.Errorf("%s request: %d fields, want %d", kind, len(f), n)
	}
	t, err := netip.ParseAddrPort(f[0])
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%s request: %w", kind, err)
	}
	return t, nil
}

// parseTrafficRequest reads the fields after "ID traffic" back.
func parseTrafficRequest(f []string) (TrafficProbe, error) {
	var p TrafficProbe
	var err error
	if p.Target, err = parseTarget("traffic", f, 6); err != nil {
		return p, err
	}
	if p.Want, err = netip.ParseAddr(f[1]); err != nil {
		return p, fmt.Errorf("traffic request: %w", err)
	}
	if f[2] != "-" {
		if p.Stale, err = netip.ParseAddr(f[2]); err != nil {
			return p, fmt.Errorf("traffic request: %w", err)
		}
	}
	n := make([]int, 3)
	for i, s := range f[3:] {
		if n[i], err = strconv.Atoi(s); err != nil || n[i] < 0 {
			return p, fmt.Errorf("traffic request: bad number %q", s)
		}
	}
	if n[0] < 1 || n[0] > 64 || n[2] < 1 {
		return p, fmt.Errorf("traffic request: parallel %d (1..64), timeout %d ms (> 0)", n[0], n[2])
	}
	p.Parallel, p.After, p.Timeout = n[0], time.Duration(n[1])*time.Millisecond, time.Duration(n[2])*time.Millisecond
	return p, nil
}

// attemptKind is how one connection attempt ended.
type attemptKind uint8

const (
	attemptAnswered attemptKind = iota // a pod answered and said which
	attemptRefused                     // reset: the proxy rejects (a service without endpoints)
	attemptFailed                      // timeout, unreachable, or a connection closed without an answer
)

// attempt is one connection attempt's outcome: when it ended and, if answered, by which pod.
type attempt struct {
	start time.Time // when the connection was begun
	at    time.Time
	kind  attemptKind
	from  netip.Addr
}

// TrafficResult is what a traffic probe saw: when Want first answered (zero if it never did)
// and what the attempts found until then and during the After window.
type TrafficResult struct {
	First    time.Time
	Attempts int // attempts that ended, before the end of the After window
	Refused  int // before the first answer by Want
	Failed   int // before the first answer by Want
	Others   int // answered by another endpoint before Want first answered
	// StaleAfter counts answers by the removed endpoint to attempts begun after Want first
	// answered: with a transactional proxy it stays 0.
	StaleAfter int
}

// tally classifies attempts as they end.
type tally struct {
	p   TrafficProbe
	res TrafficResult
}

// add records one attempt and reports whether the probe is done: After has passed since Want
// first answered.
func (t *tally) add(a attempt) (done bool) {
	first := t.res.First
	if !first.IsZero() && a.at.Sub(first) > t.p.After {
		return true
	}
	t.res.Attempts++
	switch {
	case a.kind == attemptAnswered && a.from == t.p.Want:
		if first.IsZero() || a.at.Before(first) {
			t.res.First = a.at
		}
	case !first.IsZero():
		// Only connections begun after Want answered are new connections: one in flight
		// before may have been translated by the rules that were replaced.
		if a.kind == attemptAnswered && t.p.Stale.IsValid() && a.from == t.p.Stale && a.start.After(first) {
			t.res.StaleAfter++
		}
	case a.kind == attemptRefused:
		t.res.Refused++
	case a.kind == attemptFailed:
		t.res.Failed++
	default:
		t.res.Others++
	}
	return false
}

// answer is the observer's answer line for a result: "ID UNIXNANO attempts refused failed others
// stale".
func (r TrafficResult) answer(id string) string {
	return fmt.Sprintf("%s %d %d %d %d %d %d", id, r.First.UnixNano(), r.Attempts, r.Refused, r.Failed, r.Others, r.StaleAfter)
}

// parseTrafficAnswer reads the fields after the time of an answer back.
func parseTrafficAnswer(first time.Time, f []string) (TrafficResult, error) {
	r := TrafficResult{First: first}
	if len(f) != 5 {
		return r, fmt.Errorf("traffic answer: %d counts, want 5", len(f))
	}
	for i, p := range []*int{&r.Attempts, &r.Refused, &r.Failed, &r.Others, &r.StaleAfter} {
		n, err := strconv.Atoi(f[i])
		if err != nil {
			return r, fmt.Errorf("traffic answer: %w", err)
		}
		*p = n
	}
	return r, nil
}

// fullRate is how long a traffic probe makes Parallel attempts every millisecond.
const fullRate = 100 * time.Millisecond

// probeTraffic runs p from the current network namespace.
func probeTraffic(ctx context.Context, p TrafficProbe) (TrafficResult, error) {
	ctx, cancel := context.WithTimeout(ctx, p.Timeout)
	defer cancel()
	t := &tally{p: p}
	// Buffered for the attempts still in flight when the probe ends, so none blocks.
	const perAttempt = 100 * time.Millisecond
	results := make(chan attempt, p.Parallel*int(perAttempt/time.Millisecond+2))
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	inFlight := 0
	start := time.Now()
	fire := func() {
		// Full bursts while a fast proxy's answer may come; a slow one's second of waiting is
		// timed at a quarter of the rate, so that the probe does not load the machine it measures.
		n := p.Parallel
		if time.Since(start) > fullRate {
			n = max(1, n/4)
		}
		for range n {
			if inFlight >= cap(results)-1 {
				return
			}
			inFlight++
			go func() { results <- connectOnce(p.Target, perAttempt) }()
		}
	}
	fire()
	for {
		select {
		case <-ctx.Done():
			return t.res, fmt.Errorf("no answer by %s through %s after %v (%d attempts: %d refused, %d failed, %d other endpoints)",
				p.Want, p.Target, p.Timeout, t.res.Attempts, t.res.Refused, t.res.Failed, t.res.Others)
		case <-tick.C:
			fire()
		case a := <-results:
			inFlight--
			if t.add(a) {
				return t.res, nil
			}
		}
	}
}

// connectOnce makes one connection and reads which pod answered. The connection is closed with a
// reset (linger 0), so that thousands of attempts leave neither TIME_WAIT sockets nor
// long-lived conntrack entries behind.
func connectOnce(target netip.AddrPort, timeout time.Duration) attempt {
	d := net.Dialer{Timeout: timeout}
	start := time.Now()
	c, err := d.Dial("tcp", target.String())
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			return attempt{start: start, at: time.Now(), kind: attemptRefused}
		}
		return attempt{start: start, at: time.Now(), kind: attemptFailed}
	}
	defer func() {
		_ = c.(*net.TCPConn).SetLinger(0)
		_ = c.Close()
	}()
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	var buf [64]byte
	n, _ := io.ReadFull(c, buf[:])
	at := time.Now()
	from, err := netip.ParseAddr(strings.TrimSpace(string(buf[:n])))
	if err != nil {
		return attempt{start: start, at: at, kind: attemptFailed}
	}
	return attempt{start: start, at: at, kind: attemptAnswered, from: from}
}

// servePods answers every connection accepted by ln with the address it was reached at (the
// endpoint's), one goroutine per connection so that the datapath load is not served one at a time.
// It ends its side after the answer (the traffic probe reads to that end) and then reads what the
// client sent until the client closes, so that an unread request (the datapath load's) does not
// turn the close into a reset that could overtake the answer.
func servePods(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(time.Second))
			ap, err := netip.ParseAddrPort(c.LocalAddr().String())
			if err != nil {
				return
			}
			if _, err := io.WriteString(c, ap.Addr().Unmap().String()+"\n"); err != nil {
				return
			}
			_ = c.(*net.TCPConn).CloseWrite()
			_, _ = io.Copy(io.Discard, io.LimitReader(c, 4096))
		}()
	}
}
