// Package ratelimit paces HighLevel calls per location across every worker
// process, in Redis. It is a GCRA with reservations: each call atomically
// reserves the next free slot of its location (Redis TIME is the one clock
// all workers share), so callers never poll and never burst. The same script
// applies the location's shared cool-down (after a 429, a spent window or a
// spent daily budget) and the limit learned from HighLevel's headers.
//
// A caller whose slot is near sleeps until it; one whose slot is further
// away than MaxWait gets a *SnoozeError and goes back to the queue with the
// exact delay, holding no worker meanwhile. Neither uses up a retry.
package ratelimit

import (
	"cmp"
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/redisbatch"
)

// Defaults for Config: HighLevel's documented burst limit and daily limit.
const (
	LimitDefault        = 100
	PeriodDefault       = 10 * time.Second
	MarginDefault       = 0.02
	MaxWaitDefault      = 2 * time.Second
	LeadDefault         = 1500 * time.Millisecond
	DailyReserveDefault = 100
	// DailyParkDefault is how long a location whose daily budget is nearly
	// spent is parked. HighLevel does not document when the daily window
	// resets, so we re-probe hourly.
	DailyParkDefault = time.Hour
)

// Keys.
const (
	keyPrefix  = "ghlcancel:rl:"
	KeyLearned = keyPrefix + "learned" // hash location -> emission interval µs
	KeyParked  = keyPrefix + "parked"  // zset location -> parked-until unix ms
	KeyWhy     = keyPrefix + "why"     // hash location -> why it is parked
)

func tatKey(loc string) string    { return keyPrefix + "tat:{" + loc + "}" }
func coolKey(loc string) string   { return keyPrefix + "cool:{" + loc + "}" }
func urgentKey(loc string) string { return keyPrefix + "tatu:{" + loc + "}" }
func resvKey(loc, taskID string) string {
	return keyPrefix + "resv:{" + loc + "}:" + taskID
}

// Limit is a number of requests per period.
type Limit struct {
	N      int
	Period time.Duration
}

// ParseLimit reads "100/10s".
func ParseLimit(s string) (Limit, error) {
	n, p, ok := cut(s, "/")
	if !ok {
		return Limit{}, fmt.Errorf("limit %q: want N/period, e.g. 100/10s", s)
	}
	count, err := strconv.Atoi(n)
	if err != nil || count < 1 {
		return Limit{}, fmt.Errorf("limit %q: count must be a positive integer", s)
	}
	d, err := time.ParseDuration(p)
	if err != nil || d <= 0 {
		return Limit{}, fmt.Errorf("limit %q: period must be a positive duration", s)
	}
	return Limit{N: count, Period: d}, nil
}

func cut(s, sep string) (string, string, bool) {
	for i := 0; i+len(sep) <= len(s); i++ {
		if s[i:i+len(sep)] == sep {
			return s[:i], s[i+len(sep):], true
		}
	}
	return s, "", false
}

// Config configures a Limiter.
type Config struct {
	// Default limit per location. Defaults to LimitDefault per PeriodDefault.
	Default Limit
	// Overrides per location id; they win over learned limits.
	Overrides map[string]Limit
	// Margin is the share of the limit left unused, for clock and network
	// jitter. Defaults to MarginDefault (2%).
	Margin float64
	// MaxWait is the longest wait slept in the handler; longer ones snooze
	// the task. Defaults to MaxWaitDefault.
	MaxWait time.Duration
	// Lead is how long before its kept slot a snoozed task comes back; it
	// must exceed the worker's delayed-task check interval plus dequeue lag.
	// Defaults to LeadDefault.
	Lead time.Duration
	// DailyReserve: park a location when its daily remaining falls to this.
	// Defaults to DailyReserveDefault.
	DailyReserve int
	// DailyPark is how long a parked location waits. Defaults to DailyParkDefault.
	DailyPark time.Duration
	// Observe, when set, receives waits and events for metrics.
	Observe Observer
}

// Observer receives what the limiter does. Implementations must be cheap.
type Observer interface {
	Waited(d time.Duration)
	Snoozed(reason string)
	CooledDown(reason string)
	// DailyLow: an answer showed a location with less than DailyLowShare of
	// its daily budget left.
	DailyLow()
}

// DailyLowShare is the daily-remaining share under which Observer.DailyLow
// is called (the "daily budget nearly spent" alert fires on it).
const DailyLowShare = 0.10

// Limiter is safe for concurrent use.
type Limiter struct {
	rdb redis.UniversalClient
	cfg Config

	batch   *redisbatch.Batcher
	mu      sync.Mutex
	learned map[string]int64 // what we last wrote to KeyLearned, to write only changes
}

// New builds a Limiter.
func New(rdb redis.UniversalClient, cfg Config) *Limiter {
	if cfg.Default.N == 0 {
		cfg.Default = Limit{N: LimitDefault, Period: PeriodDefault}
	}
	cfg.Default.Period = cmp.Or(cfg.Default.Period, PeriodDefault)
	if cfg.Margin == 0 {
		cfg.Margin = MarginDefault
	}
	cfg.MaxWait = cmp.Or(cfg.MaxWait, MaxWaitDefault)
	cfg.Lead = min(cmp.Or(cfg.Lead, LeadDefault), cfg.MaxWait)
	cfg.DailyReserve = cmp.Or(cfg.DailyReserve, DailyReserveDefault)
	cfg.DailyPark = cmp.Or(cfg.DailyPark, DailyParkDefault)
	return &Limiter{rdb: rdb, cfg: cfg, learned: map[string]int64{}, batch: redisbatch.New(rdb, reserveScript)}
}

// emission is the spacing between calls for a limit, with the margin.
func (l *Limiter) emission(lim Limit) int64 {
	perSec := float64(lim.N) * (1 - l.cfg.Margin)
	if perSec <= 0 {
		perSec = 1
	}
	return int64(float64(lim.Period.Microseconds()) / perSec)
}

// SnoozeError asks for the task to come back after RetryAfter. It is not a
// failure and uses up no retry.
type SnoozeError struct {
	RetryAfter time.Duration
	Reason     string // pacing, cooldown or daily
}

func (e *SnoozeError) Error() string {
	return fmt.Sprintf("rate limiter: location busy (%s), retry after %s", e.Reason, e.RetryAfter.Round(time.Millisecond))
}

// SnoozeFor implements the snoozer interface the task handler knows.
func (e *SnoozeError) SnoozeFor() time.Duration { return e.RetryAfter }

// Exact says the delay must not be jittered: the task holds a slot.
func (e *SnoozeError) Exact() bool { return true }

// reserveScript: see the package doc. Times in microseconds.
// KEYS: tat, cool, learned hash, this task's reservation, urgent tat.
// ARGV: default emission, max wait, location, override emission (0 = none),
// lead, urgent (1/0). An urgent call does not queue behind the slots other
// tasks reserved: it takes the next slot of its own line (spaced like the
// shared one) and pushes the shared line back one slot, so the long-run
// rate is unchanged and the overlap is at most one call per urgent call.
// Returns {granted (0/1), wait µs, cooled (0/1), spacing µs (0 for a kept
// slot)}. When not granted, the
// slot is kept under the task's reservation key and wait is how long to
// snooze (the slot minus lead).
var reserveScript = redis.NewScript(`
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local maxwait = tonumber(ARGV[2])
local lead = tonumber(ARGV[5])
local cool = tonumber(redis.call("GET", KEYS[2]) or "0")
local mine = redis.call("GET", KEYS[4])
if mine then
  mine = tonumber(mine)
  redis.call("DEL", KEYS[4])
  -- Use our own slot unless it passed or a cool-down now covers it.
  if mine >= now - 50000 and mine >= cool then
    local wait = math.max(0, mine - now)
    if wait <= maxwait then
      return {1, wait, 0, 0}
    end
    redis.call("SET", KEYS[4], mine, "PX", math.floor(wait / 1000) + 600000)
    return {0, wait - lead, 0, 0}
  end
end
local em = tonumber(ARGV[1])
local override = tonumber(ARGV[4])
if override > 0 then
  em = override
else
  local learned = redis.call("HGET", KEYS[3], ARGV[3])
  if learned then em = tonumber(learned) end
end
local tat = tonumber(redis.call("GET", KEYS[1]) or "0")
local start = math.max(tat, now)
local cooled = 0
if ARGV[6] == "1" then
  local ut = tonumber(redis.call("GET", KEYS[5]) or "0")
  start = math.max(ut, now)
  local pushed = math.max(tat, now) + em
  redis.call("SET", KEYS[1], pushed, "PX", math.floor((pushed - now) / 1000) + 60000)
  redis.call("SET", KEYS[5], start + em, "PX", math.floor((start + em - now) / 1000) + 60000)
  if cool > start then start = cool; cooled = 1 end
else
  if cool > start then start = cool; cooled = 1 end
  local nexttat = start + em
  redis.call("SET", KEYS[1], nexttat, "PX", math.floor((nexttat - now) / 1000) + 60000)
end
local wait = start - now
if wait > maxwait then
  redis.call("SET", KEYS[4], start, "PX", math.floor(wait / 1000) + 600000)
  return {0, wait - lead, cooled, em}
end
return {1, wait, cooled, em}
`)

// recheck returns how many µs of cool-down the location has left (by
// Redis's clock) and its learned spacing (0 if none).
// KEYS: cool, learned hash. ARGV: location.
var recheck = redis.NewScript(`
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cool = tonumber(redis.call("GET", KEYS[1]) or "0")
local learned = tonumber(redis.call("HGET", KEYS[2], ARGV[1]) or "0")
return {math.max(0, cool - now), learned}
`)

// Reserve takes the next call slot of the location for the task and sleeps
// until it. When the slot is more than MaxWait away, the slot is kept for
// the task and a *SnoozeError says when to come back (Lead before the
// slot); the task's next Reserve claims that slot. A cool-down set while
// it slept (another call saw a 429 or a spent window) sends it back for a
// new slot, so slots reserved before HighLevel answered are not spent
// against a window known to be full.
func (l *Limiter) Reserve(ctx context.Context, location, taskID string, urgent bool) error {
	over := int64(0)
	if lim, ok := l.cfg.Overrides[location]; ok {
		over = l.emission(lim)
	}
	keys := []string{tatKey(location), coolKey(location), KeyLearned, resvKey(location, taskID), urgentKey(location)}
	flag := "0"
	if urgent {
		flag = "1"
	}
	var waited time.Duration
	for round := 0; ; round++ {
		res, err := l.batch.Run(ctx, keys, l.emission(l.cfg.Default), l.cfg.MaxWait.Microseconds(),
			location, over, l.cfg.Lead.Microseconds(), flag).Int64Slice()
		if err != nil {
			return fmt.Errorf("rate limiter: %w", err)
		}
		wait := time.Duration(res[1]) * time.Microsecond
		if res[0] == 0 {
			reason := "pacing"
			if res[2] == 1 {
				reason = "cooldown"
				if parked, _ := l.rdb.ZScore(ctx, KeyParked, location).Result(); parked > 0 {
					reason = "daily"
				}
			}
			if l.cfg.Observe != nil {
				l.cfg.Observe.Snoozed(reason)
			}
			return &SnoozeError{RetryAfter: max(wait, 0), Reason: reason}
		}
		waited += wait
		if wait <= 0 {
			break
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
		if round >= 3 {
			break
		}
		chk, err := recheck.Run(ctx, l.rdb, []string{coolKey(location), KeyLearned}, location).Int64Slice()
		if err != nil {
			return fmt.Errorf("rate limiter: %w", err)
		}
		// Go again if a cool-down began while we slept, or if HighLevel
		// turned out to allow less than the spacing this slot was cut with
		// (slots reserved before the first answer used the default).
		slower := over == 0 && res[3] > 0 && chk[1] > res[3]+res[3]/20
		if chk[0] == 0 && !slower {
			break
		}
	}
	if l.cfg.Observe != nil {
		l.cfg.Observe.Waited(waited)
	}
	return nil
}

// Observe learns from one answer: the limit HighLevel applied (written to
// Redis only when it changes), a cool-down after a 429 or a spent window,
// and parking when the daily budget is nearly spent.
func (l *Limiter) Observe(ctx context.Context, location string, lim ghl.Limits, rateLimited *ghl.RateLimitError) error {
	if !lim.Present {
		if rateLimited != nil { // a 429 without headers: still cool down
			return l.coolDown(ctx, location, rateLimited.RetryAfter, "429")
		}
		return nil
	}
	if lim.Max > 0 && lim.Interval > 0 {
		em := l.emission(Limit{N: lim.Max, Period: lim.Interval})
		l.mu.Lock()
		changed := l.learned[location] != em
		l.learned[location] = em
		l.mu.Unlock()
		if changed {
			if err := l.rdb.HSet(ctx, KeyLearned, location, em).Err(); err != nil {
				return err
			}
		}
	}
	if l.cfg.Observe != nil && lim.DailyLimit > 0 && lim.DailyRemaining >= 0 &&
		float64(lim.DailyRemaining) < DailyLowShare*float64(lim.DailyLimit) {
		l.cfg.Observe.DailyLow()
	}
	switch {
	case lim.DailyRemaining >= 0 && lim.DailyRemaining <= l.cfg.DailyReserve:
		return l.park(ctx, location, l.cfg.DailyPark, fmt.Sprintf("daily budget nearly spent: %d of %d left", lim.DailyRemaining, lim.DailyLimit))
	case rateLimited != nil && rateLimited.Daily:
		return l.park(ctx, location, rateLimited.RetryAfter, "429: daily limit reached")
	case rateLimited != nil:
		return l.coolDown(ctx, location, rateLimited.RetryAfter, "429")
	case lim.Remaining == 0 && lim.Interval > 0 && lim.Max > 0 && l.maxPerWindow(lim.Max) < lim.Max:
		// Our pacing alone cannot spend a whole window of this size, so
		// something else is spending the budget: wait for the next window.
		return l.coolDown(ctx, location, lim.Interval, "window_spent")
	}
	return nil
}

// maxPerWindow is the most calls smooth pacing at limit x (1 - margin) can
// put in any one window of the limit's length: floor((1-margin) x n) + 1.
// When that reaches n (small limits), a spent window is expected and the
// next slot falls in the next window by construction.
func (l *Limiter) maxPerWindow(n int) int {
	return int(float64(n)*(1-l.cfg.Margin)) + 1
}

// extendCool sets the cool-down to now+d unless a later one is set.
var extendCool = redis.NewScript(`
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local until_ = now + tonumber(ARGV[1])
local cur = tonumber(redis.call("GET", KEYS[1]) or "0")
if until_ > cur then
  redis.call("SET", KEYS[1], until_, "PX", math.floor(tonumber(ARGV[1]) / 1000) + 1000)
end
return until_
`)

func (l *Limiter) coolDown(ctx context.Context, location string, d time.Duration, reason string) error {
	if d <= 0 {
		return nil
	}
	if l.cfg.Observe != nil {
		l.cfg.Observe.CooledDown(reason)
	}
	return extendCool.Run(ctx, l.rdb, []string{coolKey(location)}, d.Microseconds()).Err()
}

func (l *Limiter) park(ctx context.Context, location string, d time.Duration, why string) error {
	if err := l.coolDown(ctx, location, d, "daily"); err != nil {
		return err
	}
	until := time.Now().Add(d)
	_, err := l.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.ZAdd(ctx, KeyParked, redis.Z{Score: float64(until.UnixMilli()), Member: location})
		p.HSet(ctx, KeyWhy, location, why+" (until "+until.UTC().Format(time.RFC3339)+")")
		return nil
	})
	return err
}

// Parked lists locations parked now, with why.
func Parked(ctx context.Context, rdb redis.UniversalClient) (map[string]string, error) {
	locs, err := rdb.ZRangeByScore(ctx, KeyParked, &redis.ZRangeBy{Min: strconv.FormatInt(time.Now().UnixMilli(), 10), Max: "+inf"}).Result()
	if err != nil || len(locs) == 0 {
		return map[string]string{}, err
	}
	whys, err := rdb.HMGet(ctx, KeyWhy, locs...).Result()
	if err != nil {
		return nil, err
	}
	out := make(map[string]string, len(locs))
	for i, loc := range locs {
		s, _ := whys[i].(string)
		out[loc] = s
	}
	return out, nil
}
