package ghl

import (
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Header names HighLevel uses to report the limits it applied.
const (
	HeaderRateLimitMax       = "X-RateLimit-Max"
	HeaderRateLimitInterval  = "X-RateLimit-Interval-Milliseconds"
	HeaderRateLimitRemaining = "X-RateLimit-Remaining"
	HeaderRateLimitDaily     = "X-RateLimit-Limit-Daily"
	HeaderRateLimitDailyLeft = "X-RateLimit-Daily-Remaining"
	HeaderRetryAfter         = "Retry-After"
)

// Limits are the rate limits a response reported. Present is false for the
// zero value (no response, or no header), so a zero Limits never reads as
// "nothing remaining". When Present, a field is -1 when its header was
// absent or unparsable, so a genuine 0 remaining is distinguishable.
type Limits struct {
	Present        bool
	Max            int
	Interval       time.Duration
	Remaining      int
	DailyLimit     int
	DailyRemaining int
}

// Known reports whether the response carried any rate-limit header.
func (l Limits) Known() bool { return l.Present }

// ParseLimits reads the X-RateLimit-* headers.
func ParseLimits(h http.Header) Limits {
	l := Limits{
		Max:            headerInt(h, HeaderRateLimitMax),
		Remaining:      headerInt(h, HeaderRateLimitRemaining),
		DailyLimit:     headerInt(h, HeaderRateLimitDaily),
		DailyRemaining: headerInt(h, HeaderRateLimitDailyLeft),
	}
	if ms := headerInt(h, HeaderRateLimitInterval); ms > 0 {
		l.Interval = time.Duration(ms) * time.Millisecond
	}
	l.Present = l.Max >= 0 || l.Interval > 0 || l.Remaining >= 0 || l.DailyLimit >= 0 || l.DailyRemaining >= 0
	return l
}

func headerInt(h http.Header, name string) int {
	v := strings.TrimSpace(h.Get(name))
	if v == "" {
		return -1
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return -1
	}
	return n
}

// ParseRetryAfter reads a Retry-After value: delta seconds (integer or
// decimal) or an HTTP date. ok is false when it is absent or unparsable.
func ParseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.ParseFloat(v, 64); err == nil {
		if secs < 0 || secs > 7*24*3600 {
			return 0, false
		}
		return time.Duration(secs * float64(time.Second)), true
	}
	if t, err := http.ParseTime(v); err == nil {
		d := t.Sub(now)
		if d < 0 {
			d = 0
		}
		return d, true
	}
	return 0, false
}

// Fallback waits when a 429 tells nothing about when to come back.
const (
	// RateLimitFallback is the wait after a 429 with no usable headers: the
	// documented burst window (100 requests per 10 s).
	RateLimitFallback = 10 * time.Second
	// DailyLimitRecheck is how long a location whose daily budget is spent
	// waits before trying again. HighLevel does not document when the daily
	// window resets, so we re-probe hourly rather than guess midnight.
	DailyLimitRecheck = time.Hour
	// RateLimitMinWait is the shortest wait after a 429. A "Retry-After: 0"
	// (or a date already past) would otherwise retry at once, and since 429s
	// use up no retry, a task would spin against the limit (found by
	// FuzzClassify).
	RateLimitMinWait = time.Second
)

// rateLimitWait decides how long to wait after a 429.
func rateLimitWait(h http.Header, l Limits, now time.Time) (wait time.Duration, daily bool) {
	daily = l.DailyRemaining == 0
	if d, ok := ParseRetryAfter(h.Get(HeaderRetryAfter), now); ok {
		return max(d, RateLimitMinWait), daily
	}
	if daily {
		return DailyLimitRecheck, true
	}
	if l.Interval > 0 {
		// The window resets somewhere within one interval; waiting a whole
		// interval is the smallest wait that is sure to land in a new one.
		return l.Interval, false
	}
	return RateLimitFallback, false
}

// RateLimited describes a 429 from its headers, for callers outside Client
// (the OAuth routes): the wait, whether the daily budget is spent, the limits.
func RateLimited(h http.Header, now time.Time) *RateLimitError {
	l := ParseLimits(h)
	wait, daily := rateLimitWait(h, l, now)
	return &RateLimitError{RetryAfter: wait, Daily: daily, Limits: l, Message: "Too many requests"}
}
