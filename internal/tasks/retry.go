package tasks

import (
	"errors"
	"math/rand/v2"
	"time"

	"github.com/hibiken/asynq"

	"github.com/ghlcancel/ghlcancel/internal/ghl"
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

// RetryDelay returns an asynq.RetryDelayFunc: the rate-limit wait (plus up to
// 10% jitter) for a *ghl.RateLimitError, backoff otherwise.
func RetryDelay(b Backoff) asynq.RetryDelayFunc {
	return func(n int, err error, _ *asynq.Task) time.Duration {
		return retryDelay(b, n, err, rand.Float64())
	}
}

func retryDelay(b Backoff, n int, err error, u float64) time.Duration {
	var rl *ghl.RateLimitError
	if errors.As(err, &rl) {
		return rl.RetryAfter + time.Duration(u*float64(rl.RetryAfter)*RateLimitJitter/100) + BackoffMin
	}
	return b.Delay(n, u)
}

// IsFailure is asynq's IsFailure: a rate limit is not a failure, so it does
// not use up a retry (it still retries, after the wait the API asked for).
func IsFailure(err error) bool {
	var rl *ghl.RateLimitError
	return !errors.As(err, &rl)
}
