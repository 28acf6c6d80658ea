package tasks

import (
	"errors"
	"math/rand/v2"
	"time"

	"github.com/hibiken/asynq"
)

// Backoff defaults: the first retry comes within BackoffBase, the ceiling
// doubles each attempt up to BackoffCap.
const (
	BackoffBaseDefault = 2 * time.Second
	BackoffCapDefault  = 20 * time.Minute
	// BackoffMin keeps a full-jitter draw from retrying instantly.
	BackoffMin = 100 * time.Millisecond
)

// Backoff is exponential backoff with full jitter
// (delay = random in [BackoffMin, min(Cap, Base*2^n))).
type Backoff struct {
	Base time.Duration
	Cap  time.Duration
}

// Ceiling is the largest delay of retry n (n = failures so far, from 0).
func (b Backoff) Ceiling(n int) time.Duration {
	base, capd := b.Base, b.Cap
	if base <= 0 {
		base = BackoffBaseDefault
	}
	if capd <= 0 {
		capd = BackoffCapDefault
	}
	if n < 0 {
		n = 0
	}
	if n >= 40 { // base<<n would overflow
		return capd
	}
	d := base << n
	if d <= 0 || d > capd {
		return capd
	}
	return d
}

// Delay draws the delay of retry n from u in [0, 1).
func (b Backoff) Delay(n int, u float64) time.Duration {
	d := time.Duration(u * float64(b.Ceiling(n)))
	return max(d, BackoffMin)
}

// RateLimitJitter spreads retries of tasks that were all told the same
// Retry-After, so they do not come back in one burst.
const RateLimitJitter = 10 // percent

// snoozer is an error that asks to come back later without counting as a
// failure: a 429 (*ghl.RateLimitError) or a paced location (*ratelimit.SnoozeError).
type snoozer interface {
	error
	SnoozeFor() time.Duration
}

// RetryDelay returns an asynq.RetryDelayFunc: the wait a snoozer asks for
// (plus up to 10% jitter), backoff otherwise.
func RetryDelay(b Backoff) asynq.RetryDelayFunc {
	return func(n int, err error, _ *asynq.Task) time.Duration {
		return retryDelay(b, n, err, rand.Float64())
	}
}

func retryDelay(b Backoff, n int, err error, u float64) time.Duration {
	var sn snoozer
	if errors.As(err, &sn) {
		d := sn.SnoozeFor()
		if ex, ok := sn.(interface{ Exact() bool }); ok && ex.Exact() {
			return max(d, time.Millisecond) // it holds a slot: no jitter
		}
		return d + time.Duration(u*float64(d)*RateLimitJitter/100) + BackoffMin
	}
	return b.Delay(n, u)
}

// IsFailure is asynq's IsFailure: a rate limit or a paced location is not a
// failure, so it does not use up a retry (the task comes back after the wait).
func IsFailure(err error) bool {
	var sn snoozer
	return !errors.As(err, &sn)
}
