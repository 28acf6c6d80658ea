// Package breaker stops a worker from hammering HighLevel while it answers
// mostly 5xx (or not at all), and resumes by itself when it recovers.
//
// Closed: calls go through; their results fill a sliding window of one-second
// buckets. When the window holds at least MinCalls results and at least
// FailureRatio of them are failures (5xx, timeouts, connection errors; a 4xx
// is an answer, not a failure), the breaker opens.
//
// Open: no call goes out. Allow returns an *OpenError whose SnoozeFor is the
// time left, so the task goes back to the queue without using a retry.
//
// Half-open: once OpenFor has passed, one call at a time is let through as a
// probe. A probe that succeeds closes the breaker; one that fails opens it
// again for twice as long (up to MaxOpenFor).
//
// The state is per worker process: each worker sees its own calls, and a
// fleet of workers converges within one window without sharing anything.
package breaker

import (
	"cmp"
	"fmt"
	"sync"
	"time"
)

// State of the breaker.
type State int

// States.
const (
	Closed State = iota
	Open
	HalfOpen
)

func (s State) String() string {
	return [...]string{"closed", "open", "half_open"}[s]
}

// Defaults for Config.
const (
	WindowDefault       = 10 * time.Second
	MinCallsDefault     = 20
	FailureRatioDefault = 0.5
	OpenForDefault      = 5 * time.Second
	MaxOpenForDefault   = time.Minute
	// ProbeTimeoutDefault: a probe that has not reported back by then (its
	// call hung, its worker died) no longer blocks the next probe.
	ProbeTimeoutDefault = time.Minute
)

// Config tunes a Breaker. Zero values take the defaults.
type Config struct {
	Window       time.Duration
	MinCalls     int
	FailureRatio float64
	OpenFor      time.Duration
	MaxOpenFor   time.Duration
	ProbeTimeout time.Duration
	// OnChange is called on every state change, in the order the changes
	// happen (under a lock of its own: keep it cheap).
	OnChange func(from, to State)
	// Now defaults to time.Now.
	Now func() time.Time
}

// OpenError is returned by Allow while no call may go out.
type OpenError struct {
	RetryAfter time.Duration
	State      State
}

func (e *OpenError) Error() string {
	return fmt.Sprintf("circuit breaker %s: HighLevel is failing; calls paused, retry after %s", e.State, e.RetryAfter.Round(time.Millisecond))
}

// SnoozeFor implements the task handler's snoozer: the task comes back after
// RetryAfter (plus jitter) and uses no retry.
func (e *OpenError) SnoozeFor() time.Duration { return e.RetryAfter }

type bucket struct {
	sec       int64
	ok, fails int
}

// Breaker is safe for concurrent use.
type Breaker struct {
	cfg Config

	mu         sync.Mutex
	notifyMu   sync.Mutex // orders OnChange calls
	state      State
	buckets    []bucket
	openUntil  time.Time
	openFor    time.Duration
	probeSince time.Time // zero: no probe in flight
	lastAsk    time.Time // the last Allow
	pending    []transition
}

// IdleAfter: a breaker whose open time is up and that no call has asked
// for this long holds nothing back (its next call goes as the probe), so
// Paused says false: an idle worker is not "paused" for ever.
const IdleAfter = 30 * time.Second

// New returns a closed Breaker.
func New(cfg Config) *Breaker {
	cfg.Window = cmp.Or(cfg.Window, WindowDefault)
	cfg.MinCalls = cmp.Or(cfg.MinCalls, MinCallsDefault)
	cfg.FailureRatio = cmp.Or(cfg.FailureRatio, FailureRatioDefault)
	cfg.OpenFor = cmp.Or(cfg.OpenFor, OpenForDefault)
	cfg.MaxOpenFor = max(cmp.Or(cfg.MaxOpenFor, MaxOpenForDefault), cfg.OpenFor)
	cfg.ProbeTimeout = cmp.Or(cfg.ProbeTimeout, ProbeTimeoutDefault)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	n := max(int(cfg.Window/time.Second), 1)
	return &Breaker{cfg: cfg, buckets: make([]bucket, n), openFor: cfg.OpenFor}
}

// State returns the current state.
func (b *Breaker) State() State {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state
}

// Paused says whether the breaker holds calls back: open or half-open,
// unless its open time is up and no call has asked for IdleAfter.
func (b *Breaker) Paused() bool {
	now := b.cfg.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == Closed {
		return false
	}
	since := b.lastAsk
	if b.state == Open && b.openUntil.After(since) {
		since = b.openUntil // counted from when its time was up
	}
	return now.Sub(since) < IdleAfter
}

// Allow says whether a call may go out now. probe is true when the call is
// the half-open breaker's probe; pass it back to Record.
func (b *Breaker) Allow() (probe bool, err error) {
	now := b.cfg.Now()
	b.mu.Lock()
	b.lastAsk = now
	from := b.state
	switch b.state {
	case Closed:
		b.mu.Unlock()
		return false, nil
	case Open:
		if now.Before(b.openUntil) {
			wait := b.openUntil.Sub(now)
			b.mu.Unlock()
			return false, &OpenError{RetryAfter: wait, State: Open}
		}
		b.state = HalfOpen
	}
	// Half-open: one probe at a time.
	b.changedLocked(from, HalfOpen)
	if !b.probeSince.IsZero() && now.Sub(b.probeSince) < b.cfg.ProbeTimeout {
		b.mu.Unlock()
		b.notify()
		return false, &OpenError{RetryAfter: time.Second, State: HalfOpen}
	}
	b.probeSince = now
	b.mu.Unlock()
	b.notify()
	return true, nil
}

// Record reports a call's result: failure is true for a 5xx, a timeout or a
// connection error.
func (b *Breaker) Record(failure, probe bool) {
	now := b.cfg.Now()
	b.mu.Lock()
	from := b.state
	if probe {
		b.probeSince = time.Time{}
		if b.state == HalfOpen {
			if failure {
				b.openFor = min(2*b.openFor, b.cfg.MaxOpenFor)
				b.trip(now)
			} else {
				b.state = Closed
				b.openFor = b.cfg.OpenFor
				clear(b.buckets)
			}
		}
		b.changedLocked(from, b.state)
		b.mu.Unlock()
		b.notify()
		return
	}
	if b.state != Closed {
		// A call that was let through before the breaker opened: its
		// result says nothing new.
		b.mu.Unlock()
		return
	}
	sec := now.Unix()
	bk := &b.buckets[int(sec%int64(len(b.buckets)))]
	if bk.sec != sec {
		*bk = bucket{sec: sec}
	}
	if failure {
		bk.fails++
	} else {
		bk.ok++
	}
	var ok, fails int
	for _, x := range b.buckets {
		if sec-x.sec < int64(len(b.buckets)) {
			ok, fails = ok+x.ok, fails+x.fails
		}
	}
	if total := ok + fails; total >= b.cfg.MinCalls && float64(fails) >= b.cfg.FailureRatio*float64(total) {
		b.trip(now)
	}
	b.changedLocked(from, b.state)
	b.mu.Unlock()
	b.notify()
}

// Abandon says a call Allow let through did not go out after all (its
// location was paced, or the task's record already held an outcome): a
// probe frees its place at once instead of after ProbeTimeout.
func (b *Breaker) Abandon(probe bool) {
	if !probe {
		return
	}
	b.mu.Lock()
	b.probeSince = time.Time{}
	b.mu.Unlock()
}

// trip opens the breaker; b.mu is held.
func (b *Breaker) trip(now time.Time) {
	b.state = Open
	b.openUntil = now.Add(b.openFor)
	clear(b.buckets)
}

// changedLocked queues a state change for OnChange; b.mu is held, so
// changes queue in the order they happen.
func (b *Breaker) changedLocked(from, to State) {
	if from != to && b.cfg.OnChange != nil {
		b.pending = append(b.pending, transition{from, to})
	}
}

// notify delivers queued changes to OnChange in order: whoever holds
// notifyMu takes every change queued so far.
func (b *Breaker) notify() {
	if b.cfg.OnChange == nil {
		return
	}
	b.notifyMu.Lock()
	defer b.notifyMu.Unlock()
	b.mu.Lock()
	p := b.pending
	b.pending = nil
	b.mu.Unlock()
	for _, t := range p {
		b.cfg.OnChange(t.from, t.to)
	}
}

type transition struct{ from, to State }
