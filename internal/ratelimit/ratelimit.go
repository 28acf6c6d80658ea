// Package ratelimit admits HighLevel calls per location across every worker
// process, in Redis, using the whole allowance HighLevel grants and never
// more, whatever window HighLevel enforces.
//
// Each location has a sliding log of admitted calls (a sorted set of Redis
// TIME stamps, the one clock all workers share). A call is admitted when it
// keeps every span of Window x (1 + margin) holding at most Limit calls: a
// fresh location can use its whole allowance at once (100 calls), and the
// next ones go as the first leave the span (10.2 s later). A bound on every sliding span is also a bound on
// every fixed window, so it is safe whether HighLevel slides or not; the
// wider span absorbs network jitter at burst edges.
//
// A call whose turn is at most MaxWait away books its time and waits in the
// handler. A later one gets a *SnoozeError and goes back to the queue until
// Lead before its estimated turn, holding no worker meanwhile; it joins the
// location's waiters (a sorted set of task ids by turn). A returning waiter
// (and an urgent call) may take any free room; a fresh call may not while a
// waiter is due, so a backlog drains in order and a late waiter (asynq puts
// due tasks behind the whole pending backlog) loses nothing: its room is
// still free when it arrives, since turns are estimates, not bookings.
//
// Before HighLevel's first answer for a location its limit is unknown:
// ProbeBurst (10) calls go, and the others wait (up to ProbeWait) for the
// limit their answers' headers report. Limits come from RATE_LIMIT_OVERRIDES, else
// from HighLevel's headers, else the default.
//
// The same script first checks the message's record (internal/ledger): an
// outcome an earlier attempt recorded is returned instead of a slot, and a
// granted slot leaves the ledger's "call sent" mark. One round trip per call.
package ratelimit

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/ledger"
)

// Defaults for Config: HighLevel's documented burst limit and daily limit.
const (
	LimitDefault        = 100
	PeriodDefault       = 10 * time.Second
	MarginDefault       = 0.02
	MaxWaitDefault      = 2 * time.Second
	LeadDefault         = 1500 * time.Millisecond
	ProbeWaitDefault    = time.Second
	DailyReserveDefault = 100
	// DailyRetryMin is the shortest parking after a daily 429.
	DailyRetryMin = time.Minute
	// DailyBudget is HighLevel's documented daily allowance per location
	// (and app): what `--dry-run` weighs a file against.
	DailyBudget = 200_000
	// DailyReserveNone, as Config.DailyReserve, parks a location only when
	// its daily budget is spent (0 left).
	DailyReserveNone = -1
	// DailyParkDefault is how long a location whose daily budget is nearly
	// spent is parked. HighLevel does not document when the daily window
	// resets, so we re-probe hourly.
	DailyParkDefault = time.Hour
	// staleWaiter: a waiter whose turn passed this long ago is forgotten
	// (its task was deleted or its worker died; a settled task leaves at
	// once); if it comes back after all, it queues again as a fresh call.
	// Long, because asynq puts a due task behind the whole pending backlog.
	staleWaiter = 10 * time.Minute
	// probePoll is how often calls waiting for a location's first answer
	// ask again (when the answer comes to another worker process; in this
	// one, learning the limit wakes them at once).
	probePoll = 100 * time.Millisecond
	// ProbeBurst is how many calls a location with no known limit gets
	// before the first answer tells its limit (a limit below it would see
	// that many calls refused at most, once).
	ProbeBurst = 10
)

// Keys.
const (
	keyPrefix  = "ghlcancel:rl:"
	KeyLearned = keyPrefix + "learned" // hash location -> "N:period ms" ("0:0": HighLevel sent no limit, use the default)
	KeyParked  = keyPrefix + "parked"  // zset location -> parked-until unix ms
	KeyWhy     = keyPrefix + "why"     // hash location -> why it is parked
	// KeyCooling: zset location -> end of its cool-down (unix ms, this
	// process's clock), for operators; the pacer reads the location hash.
	KeyCooling = keyPrefix + "cooling"
)

func logKey(loc string) string  { return keyPrefix + "log:{" + loc + "}" }
func waitKey(loc string) string { return keyPrefix + "wait:{" + loc + "}" }

// locKey is a location's hash: its learned limit (field l, "N:period ms"),
// the end of its cool-down (field c, Redis TIME µs) and of its parking for
// the daily reserve (field p, Redis TIME µs), read together.
func locKey(loc string) string { return keyPrefix + "loc:{" + loc + "}" }

// Limit is a number of requests per period.
type Limit struct {
	N      int
	Period time.Duration
}

// Spec is the limit as ParseLimit reads it: "100/10s".
func (l Limit) Spec() string { return strconv.Itoa(l.N) + "/" + l.Period.String() }

// ParseLimit reads "100/10s".
func ParseLimit(s string) (Limit, error) {
	n, p, ok := strings.Cut(s, "/")
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

// Config configures a Limiter.
type Config struct {
	// Default limit per location. Defaults to LimitDefault per PeriodDefault.
	Default Limit
	// Overrides per location id; they win over learned limits.
	Overrides map[string]Limit
	// Margin is the share the window is widened by, for clock and network
	// jitter (the limit itself is used whole). Defaults to MarginDefault (2%).
	Margin float64
	// MaxWait is the longest wait slept in the handler; longer ones snooze
	// the task. Defaults to MaxWaitDefault.
	MaxWait time.Duration
	// Lead is how long before its turn a snoozed task comes back; it must
	// exceed the worker's delayed-task check interval plus dequeue lag.
	// Defaults to LeadDefault (capped at MaxWait).
	Lead time.Duration
	// ProbeWait is how long calls for a location with no known limit wait
	// for the first call's answer. Defaults to ProbeWaitDefault.
	ProbeWait time.Duration
	// UrgentReserve: while a location has a backlog (waiters), other calls
	// leave this many of each span's calls to urgent ones, so an urgent
	// cancel for a location its own bulk campaign keeps saturated finds
	// room within about MaxWait (bulk calls book up to MaxWait ahead)
	// instead of up to a window. Sweep export pages count as urgent. 0
	// (the default) gives bulk the whole allowance; at most half of a
	// location's limit is kept. Costs a saturated location
	// UrgentReserve/N of its rate.
	UrgentReserve int
	// RecordTTL is how long the ledger's "call sent" mark lives. Defaults
	// to ledger.RetentionDefault.
	RecordTTL time.Duration
	// DailyReserve: park a location when its daily remaining falls to this.
	// Defaults to DailyReserveDefault; DailyReserveNone parks only at 0.
	DailyReserve int
	// DailyPark is how long a parked location waits. Defaults to DailyParkDefault.
	DailyPark time.Duration
	// Observe, when set, receives waits and events for metrics.
	Observe Observer
	// Logger, when set, is told when a location is parked (WARN): until
	// when, and why. Nil logs nothing.
	Logger *slog.Logger
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

	mu      sync.Mutex
	learned map[string]string // what Redis holds in KeyLearned, to write only changes
	// learnGen counts limits learned by this process; probing holds, per
	// location, a channel closed when its limit is learned here, so calls
	// waiting for a location's first answer go as soon as it comes rather
	// than at their next poll.
	learnGen atomic.Uint64
	probing  map[string]*probeWaiters
	// probePoll: see the constant (tests lengthen it).
	probePoll time.Duration

	// reprobes: locations where this process sent the call that re-probes
	// a parking's end; its answer parks again or lifts the parking.
	reprobes sync.Map
	// booked, if set (by tests), is told of every slot booked: the task,
	// the slot's Redis time and how long the caller was told to wait.
	booked func(task string, slot time.Time, wait time.Duration)
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
	cfg.ProbeWait = cmp.Or(cfg.ProbeWait, ProbeWaitDefault)
	cfg.RecordTTL = cmp.Or(cfg.RecordTTL, ledger.RetentionDefault)
	cfg.DailyReserve = cmp.Or(cfg.DailyReserve, DailyReserveDefault)
	if cfg.DailyReserve < 0 {
		cfg.DailyReserve = 0 // DailyReserveNone
	}
	cfg.DailyPark = cmp.Or(cfg.DailyPark, DailyParkDefault)
	return &Limiter{rdb: rdb, cfg: cfg, learned: map[string]string{}, probing: map[string]*probeWaiters{}, probePoll: probePoll}
}

// Settings are the limiter's settings that act on what every worker
// shares (a location's admission log, cool-downs and parking), by their
// environment variable, for the fleet's comparison (internal/fleet).
func (l *Limiter) Settings() map[string]string {
	var ov []string
	for loc, lim := range l.cfg.Overrides {
		ov = append(ov, loc+"="+lim.Spec())
	}
	slices.Sort(ov)
	return map[string]string{
		"RATE_LIMIT":                l.cfg.Default.Spec(),
		"RATE_LIMIT_MARGIN":         strconv.FormatFloat(l.cfg.Margin, 'g', -1, 64),
		"RATE_LIMIT_OVERRIDES":      strings.Join(ov, ","),
		"RATE_LIMIT_URGENT_RESERVE": strconv.Itoa(l.cfg.UrgentReserve),
		"DAILY_RESERVE":             strconv.Itoa(l.cfg.DailyReserve),
	}
}

// Allowance is what the limiter lets through for a limit: at most N calls
// in any span of Span. The margin widens the window (10.2 s for 10 s), so
// that network jitter where two bursts meet cannot put more than the limit
// in HighLevel's window; the whole count is used, so a fresh location's
// first 100 cancels go at once.
func (l *Limiter) Allowance(lim Limit) (n int, span time.Duration) {
	return max(1, lim.N), time.Duration(float64(lim.Period) * (1 + l.cfg.Margin))
}

// MinTime is the least time calls to one location take under lim: the
// first allowance goes at once, then one allowance per span (what
// `enqueue --dry-run` and `sweep --dry-run` print).
func (l *Limiter) MinTime(lim Limit, calls int64) time.Duration {
	if calls <= 0 {
		return 0
	}
	n, span := l.Allowance(lim)
	return time.Duration((calls-1)/int64(n)) * span
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

// SnoozeError reasons: the location's next slot is too far off (pacing),
// it cools down after a 429 or a spent window (cooldown), or it is parked
// until its daily budget comes back (daily).
const (
	SnoozePacing   = "pacing"
	SnoozeCooldown = "cooldown"
	SnoozeDaily    = "daily"
)

// Exact says the delay must not be jittered: the task comes back for its turn.
func (e *SnoozeError) Exact() bool { return true }

// Request is one call about to be made.
type Request struct {
	Location string
	TaskID   string
	Campaign string
	// Mark is the delivery's "call sent" mark (ledger.NewMark).
	Mark string
	// Urgent calls may take any free room, ahead of waiting bulk calls.
	Urgent bool
	// NoRecord: the call is not a cancel (a sweep's export page): no
	// message record to check or mark.
	NoRecord bool
	// Reserve: the call may spend a location's daily reserve, which holds
	// back the others (urgent cancels and their read-backs, the export
	// pages of a sweep whose cancels go to the urgent lane).
	Reserve bool
}

// admitScript: see the package doc. Times in µs (Redis TIME). Each
// redis.call costs about 2 µs of Redis CPU beyond the command itself, so the
// common path (no waiters, room now) makes nine.
// KEYS: log, waiters, the location's hash, the message's ledger record.
// ARGV: 1 default N, 2 default period, 3 override N (0: none), 4 override
// period, 5 margin, 6 max wait, 7 lead, 8 location (unused), 9 task id, 10
// urgent (1/0), 11 campaign, 12 the delivery's mark, 13 record ttl ms, 14
// probe wait, 15 no record (1/0), 16 urgent reserve, 17 probe poll, 18 may
// spend the daily reserve (1/0).
// Returns {code, wait µs, recorded row or earlier-call flag, cooled (1 a
// cool-down, 2 parked for the daily reserve)}:
// code 1 granted (wait, then call; [3] "1" if an earlier call went out;
// a 5th element, the slot's Redis time in µs, for Limiter.booked; an 8th,
// when the call re-probes a parked location's budget, the parking it set
// for the others (else "0")),
// 0 snooze for wait, 2 recorded ([3] the row), 3 ask again after wait
// (a probe's answer), 4 ask again after wait (a parking's end).
var admitScript = redis.NewScript(ledger.Lua + `
local norec = ARGV[15] == "1"
local rec, sent = false, false
local stage, first = false, false
if not norec then rec, sent, stage, first = ledger_begin(KEYS[4], ARGV[12]) end
if rec then
  redis.call("ZREM", KEYS[2], ARGV[9])
  return {2, 0, rec, 0}
end
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local loc = redis.call("HMGET", KEYS[3], "l", "c", "e", "p")
local L, P, learned = tonumber(ARGV[1]), tonumber(ARGV[2]), true
if tonumber(ARGV[3]) > 0 then
  L, P = tonumber(ARGV[3]), tonumber(ARGV[4])
elseif not loc[1] then
  learned = false
else
  local n, p = string.match(loc[1], "^(%d+):(%d+)$")
  if n and tonumber(n) > 0 then L, P = tonumber(n), tonumber(p) * 1000 end
end
local margin = tonumber(ARGV[5])
local cap = L
local urgent = ARGV[10] == "1"
local busy = redis.call("EXISTS", KEYS[2]) == 1
-- With a backlog, other calls leave the urgent reserve of every span.
local reserve = math.min(tonumber(ARGV[16]), math.floor(L / 2))
if not urgent and busy and reserve > 0 then cap = math.max(1, L - reserve) end
local span = math.floor(P * (1 + margin))
local maxwait, lead = tonumber(ARGV[6]), tonumber(ARGV[7])
-- The log keeps admissions in order; entries older than the span are
-- trimmed now and then (they never change the cap-th latest's verdict).
local n = redis.call("ZCARD", KEYS[1])
if n >= cap or n % 32 == 31 then
  redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", now - span)
  n = redis.call("ZCARD", KEYS[1])
end
if not learned and n >= ` + strconv.Itoa(ProbeBurst) + ` then
  -- A few probe calls first: their answers' headers tell the limit.
  local last = tonumber(redis.call("ZRANGE", KEYS[1], -1, -1, "WITHSCORES")[2])
  local until_ = last + tonumber(ARGV[14])
  if now < until_ then return {3, math.min(until_ - now, tonumber(ARGV[17])), "", 0} end
end
local room = now
if n >= cap then
  local e = tonumber(redis.call("ZRANGE", KEYS[1], n - cap, n - cap, "WITHSCORES")[2])
  room = math.max(room, e + span)
end
local cool = tonumber(loc[2] or "0")
local cooled = 0
if cool > room then room = cool; cooled = 1 end
-- Parked for the daily reserve (field p): that reserve is the urgent
-- cancels' (and their read-backs'); everything else waits for the parking.
local reprobe = false
if ARGV[18] ~= "1" then
  local park = tonumber(loc[4] or "0")
  if park > room then
    -- Never booked at the parking's end (every waiter comes back a lead
    -- before it, and all would go at once, into the reserve): ask again
    -- once it has ended, when one call re-probes.
    if park - now <= maxwait then return {4, park - now, "", 2} end
    room = park; cooled = 2
  elseif park > 0 then reprobe = true end
end
local mine, may = false, urgent
if busy then
  redis.call("ZREMRANGEBYSCORE", KEYS[2], "-inf", now - ` + strconv.FormatInt(staleWaiter.Microseconds(), 10) + `)
  mine = redis.call("ZREM", KEYS[2], ARGV[9]) == 1
  may = may or mine or redis.call("ZCOUNT", KEYS[2], "-inf", now + maxwait) == 0
else
  may = true
end
if may and room - now <= maxwait then
  redis.call("ZADD", KEYS[1], room, ARGV[9] .. "@" .. t[1] .. t[2])
  -- The log expires 3 x (max wait + span) after its expiry was last
  -- pushed; it is pushed again once half of that is gone (the location's
  -- field e), not on every call.
  local life = 3 * (maxwait + span)
  if now >= tonumber(loc[3] or "0") then
    redis.call("PEXPIRE", KEYS[1], math.floor(life / 1000) + 1)
    redis.call("HSET", KEYS[3], "e", now + math.floor(life / 2))
  end
  -- A read-back (a verify stage) is no cancel: it leaves no "call sent" mark.
  if not norec then ledger_mark(KEYS[4], ARGV[11], ARGV[12], sent or stage, ARGV[13]) end
  local earlier = "0"
  if sent then earlier = "1" end
  local firstcall = "0"
  if first then firstcall = "1" end
  -- The reserve's parking ended (its field is still set): this call
  -- re-probes the day's budget, the others wait a probe wait for its
  -- answer, which parks the location again or lifts the parking
  -- (Limiter.Observe). Not a burst of calls into the reserve.
  local probed = "0"
  if reprobe then
    probed = string.format("%d", room + tonumber(ARGV[14]))
    redis.call("HSET", KEYS[3], "p", probed)
  end
  return {1, room - now, earlier, cooled, room, stage or "", firstcall, probed}
end
local eta = room
if not (urgent or mine) then
  -- A waiter will be judged with the reserve kept (there is a backlog
  -- once it waits), so its turn is estimated that way too.
  if reserve > 0 then cap = math.max(1, L - reserve) end
  -- The j-th waiter's turn: the room the (n+j)-th admission would get,
  -- each reusing the room of the one cap admissions before it.
  local i = n + redis.call("ZCARD", KEYS[2])
  local steps = math.floor((i - n) / cap) + 1
  local idx = i - steps * cap
  if idx >= 0 then
    local e = tonumber(redis.call("ZRANGE", KEYS[1], idx, idx, "WITHSCORES")[2])
    eta = math.max(room, math.max(now, e + span) + (steps - 1) * span)
  else
    eta = math.max(room, now + (steps - 1) * span)
  end
end
redis.call("ZADD", KEYS[2], eta, ARGV[9])
local wttl = math.floor((eta - now) / 1000) + ` + strconv.FormatInt(staleWaiter.Milliseconds(), 10) + `
if redis.call("PEXPIRE", KEYS[2], wttl, "GT") == 0 and redis.call("PTTL", KEYS[2]) < 0 then
  redis.call("PEXPIRE", KEYS[2], wttl)
end
return {0, math.max(0, eta - now - lead), "", cooled}
`)

// recheckScript: a booked call that waited checks for a cool-down set
// meanwhile (another call saw a 429) or, unless it may spend the daily
// reserve, a parking; if so, the call will not go out and its mark is taken
// back and it joins the location's waiters. KEYS the location's hash,
// record, waiters. ARGV the delivery's mark, "1" if it may spend the
// reserve, the parking a re-probe set itself ("" for none: it passes that
// one only), the task id. Returns µs of cool-down left (0: go).
var recheckScript = redis.NewScript(`
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local h = redis.call("HMGET", KEYS[1], "c", "p")
local cool = tonumber(h[1] or "0")
if ARGV[2] ~= "1" and not (ARGV[3] ~= "" and h[2] == ARGV[3]) then cool = math.max(cool, tonumber(h[2] or "0")) end
if cool <= now then return 0 end
if redis.call("HGET", KEYS[2], "s") == ARGV[1] then redis.call("HSET", KEYS[2], "s", "") end
-- It comes back at the hold's end as one of the location's waiters, as an
-- admission that snoozes does (a release wakes the waiters: one left out
-- waited the hour, found by CI).
redis.call("ZADD", KEYS[3], cool, ARGV[4])
local wttl = math.floor((cool - now) / 1000) + ` + strconv.FormatInt(staleWaiter.Milliseconds(), 10) + `
if redis.call("PEXPIRE", KEYS[3], wttl, "GT") == 0 and redis.call("PTTL", KEYS[3]) < 0 then
  redis.call("PEXPIRE", KEYS[3], wttl)
end
return cool - now
`)

// recheckAfter: a booked wait at least this long re-checks for a cool-down
// before calling.
const recheckAfter = 200 * time.Millisecond

// Admit checks the message's record, then takes a call slot of the location
// for the task and sleeps until it (see the package doc). When the slot is
// more than MaxWait away it returns a *SnoozeError saying when to come back.
func (l *Limiter) Admit(ctx context.Context, r Request) (ledger.Admission, error) {
	on, op := 0, int64(0)
	if lim, ok := l.cfg.Overrides[r.Location]; ok {
		on, op = lim.N, lim.Period.Microseconds()
	}
	keys := []string{logKey(r.Location), waitKey(r.Location), locKey(r.Location), ledger.Key(r.TaskID)}
	urgent, norec := "0", "0"
	if r.Urgent {
		urgent = "1"
	}
	if r.NoRecord {
		norec = "1"
	}
	reserveSpender := "0"
	if r.Reserve {
		reserveSpender = "1"
	}
	var waited time.Duration
	for {
		gen := l.learnGen.Load()
		v, err := admitScript.Run(ctx, l.rdb, keys, l.cfg.Default.N, l.cfg.Default.Period.Microseconds(), on, op,
			strconv.FormatFloat(l.cfg.Margin, 'f', -1, 64), l.cfg.MaxWait.Microseconds(), l.cfg.Lead.Microseconds(),
			r.Location, r.TaskID, urgent, r.Campaign, r.Mark, l.cfg.RecordTTL.Milliseconds(), l.cfg.ProbeWait.Microseconds(), norec,
			l.cfg.UrgentReserve, l.probePoll.Microseconds(), reserveSpender).Slice()
		if err != nil {
			return ledger.Admission{}, fmt.Errorf("rate limiter: %w", err)
		}
		code, _ := v[0].(int64)
		us, _ := v[1].(int64)
		wait := time.Duration(us) * time.Microsecond
		switch code {
		case 2:
			return ledger.ParseAdmission(v[2], nil, nil, nil)
		case 3: // waiting for the probe's answer
			// Redis holds no limit for the location. If this process has
			// one, Redis lost it (flushed, a failover that dropped recent
			// writes): forget it, or the next answer, unchanged to this
			// process, is never written again and the location stays in
			// probe mode (about one call a second) for good.
			l.mu.Lock()
			delete(l.learned, r.Location)
			l.mu.Unlock()
			start := time.Now()
			if err := l.awaitLearn(ctx, r.Location, gen, wait); err != nil {
				return ledger.Admission{}, err
			}
			waited += time.Since(start)
			continue
		case 4: // the parking ends within MaxWait: ask again then
			if waited+wait > 2*l.cfg.MaxWait { // re-probes that keep it parked
				if l.cfg.Observe != nil {
					l.cfg.Observe.Snoozed(SnoozeDaily)
				}
				return ledger.Admission{}, &SnoozeError{RetryAfter: wait, Reason: SnoozeDaily}
			}
			if err := sleep(ctx, wait); err != nil {
				return ledger.Admission{}, err
			}
			waited += wait
			continue
		case 0:
			reason := SnoozePacing
			switch cooled, _ := v[3].(int64); cooled {
			case 1:
				reason = l.coolReason(ctx, r.Location, reserveSpender == "1")
			case 2:
				reason = SnoozeDaily
			}
			if l.cfg.Observe != nil {
				l.cfg.Observe.Snoozed(reason)
			}
			return ledger.Admission{}, &SnoozeError{RetryAfter: wait, Reason: reason}
		}
		earlier := v[2] == "1"
		stage, _ := v[5].(string)
		first := v[6] == "1"
		ownPark := ""
		if len(v) > 7 && v[7] != "0" {
			ownPark, _ = v[7].(string)
			l.reprobes.Store(r.Location, struct{}{})
		}
		// A re-probe that will not go takes its flag back (its parking
		// lapses by itself; the next call re-probes).
		forget := func() {
			if ownPark != "" {
				l.reprobes.Delete(r.Location)
			}
		}
		if l.booked != nil {
			room, _ := v[4].(int64)
			l.booked(r.TaskID, time.UnixMicro(room), wait)
		}
		if err := sleep(ctx, wait); err != nil {
			forget()
			l.unmark(r)
			return ledger.Admission{}, err
		}
		waited += wait
		if wait >= recheckAfter {
			// A re-probe passes the parking it set itself, and no other.
			left, err := recheckScript.Run(ctx, l.rdb, []string{locKey(r.Location), ledger.Key(r.TaskID), waitKey(r.Location)},
				r.Mark, reserveSpender, ownPark, r.TaskID).Int64()
			if err != nil {
				forget()
				l.unmark(r)
				return ledger.Admission{}, fmt.Errorf("rate limiter: %w", err)
			}
			if left > 0 {
				forget()
				reason := l.coolReason(ctx, r.Location, reserveSpender == "1")
				if l.cfg.Observe != nil {
					l.cfg.Observe.Snoozed(reason)
				}
				return ledger.Admission{}, &SnoozeError{RetryAfter: time.Duration(left) * time.Microsecond, Reason: reason}
			}
		}
		if l.cfg.Observe != nil {
			l.cfg.Observe.Waited(waited)
		}
		return ledger.Admission{EarlierCall: earlier, Stage: stage, FirstCall: first}, nil
	}
}

// unmark takes back the delivery's "call sent" mark of a call that will not
// go out (best effort: a mark left behind only makes a later "not found" be
// read back and judged as this delivery's cancel).
func (l *Limiter) unmark(r Request) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = ledger.Unmark(ctx, l.rdb, r.TaskID, r.Mark)
}

// coolReason says why a location's cool-down holds a call: parked for the
// day, or a 429 / spent window. A call that may spend the reserve is not
// held by the reserve's parking: at such a location it is the window.
func (l *Limiter) coolReason(ctx context.Context, location string, reserveSpender bool) string {
	until, err := l.rdb.ZScore(ctx, KeyParked, location).Result()
	if err != nil || int64(until) <= time.Now().UnixMilli() {
		return SnoozeCooldown
	}
	if reserveSpender {
		if why, err := l.rdb.HGet(ctx, KeyWhy, location).Result(); err == nil && strings.Contains(why, ReserveMarker) {
			return SnoozeCooldown
		}
	}
	return SnoozeDaily
}

// awaitLearn waits up to d for a location's limit to be learned by this
// process (another process's answer is seen at the next poll). gen is the
// learn count read before the admission that said to wait: a limit learned
// since then returns at once.
func (l *Limiter) awaitLearn(ctx context.Context, location string, gen uint64, d time.Duration) error {
	l.mu.Lock()
	if l.learnGen.Load() != gen {
		l.mu.Unlock()
		return ctx.Err()
	}
	pw := l.probing[location]
	if pw == nil {
		pw = &probeWaiters{ch: make(chan struct{})}
		l.probing[location] = pw
	}
	pw.n++
	l.mu.Unlock()
	defer func() {
		// The last waiter to leave unwoken takes the entry away (a limit
		// only another process learns would otherwise leave it here).
		l.mu.Lock()
		if pw.n--; pw.n == 0 && l.probing[location] == pw {
			delete(l.probing, location)
		}
		l.mu.Unlock()
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-pw.ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// probeWaiters are the calls of this process waiting for a location's
// first answer: ch is closed when it comes here.
type probeWaiters struct {
	ch chan struct{}
	n  int
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Observe learns from one answer: the limit HighLevel applied (written to
// Redis only when it changes, and remembered only once Redis has it), a
// cool-down after a 429 or a spent window, and parking when the daily
// budget is nearly spent.
func (l *Limiter) Observe(ctx context.Context, location string, lim ghl.Limits, rateLimited *ghl.RateLimitError) error {
	_, reprobe := l.reprobes.LoadAndDelete(location)
	parked, err := l.observe(ctx, location, lim, rateLimited)
	if err == nil && reprobe && !parked && lim.Present && lim.DailyRemaining > l.cfg.DailyReserve {
		// The re-probe's answer shows the budget back: the parking is
		// lifted, unless another answer parked the location again
		// meanwhile. An answer that says nothing of the budget (a 5xx
		// without headers) lifts nothing: the next call re-probes.
		err = liftScript.Run(ctx, l.rdb, []string{locKey(location)}, 2*l.cfg.ProbeWait.Microseconds()).Err()
	}
	return err
}

// liftScript removes a location's ended parking (field p) while it is in
// its re-probe's wait (ends within ARGV[1] µs), not one set for longer.
var liftScript = redis.NewScript(`
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local p = tonumber(redis.call("HGET", KEYS[1], "p") or "0")
if p > 0 and p <= now + tonumber(ARGV[1]) then redis.call("HDEL", KEYS[1], "p") end
return 1
`)

// observe is Observe's work; parked says the answer parked the location.
func (l *Limiter) observe(ctx context.Context, location string, lim ghl.Limits, rateLimited *ghl.RateLimitError) (parked bool, _ error) {
	learned := noLimitHeaders // the default applies
	if lim.Present && lim.Max > 0 && lim.Interval > 0 {
		learned = strconv.Itoa(lim.Max) + ":" + strconv.FormatInt(lim.Interval.Milliseconds(), 10)
	}
	if err := l.learn(ctx, location, learned); err != nil {
		return false, err
	}
	if !lim.Present {
		if rateLimited != nil { // a 429 without headers: still cool down
			return false, l.coolDown(ctx, location, rateLimited.RetryAfter, "429")
		}
		return false, nil
	}
	if l.cfg.Observe != nil && lim.DailyLimit > 0 && lim.DailyRemaining >= 0 &&
		float64(lim.DailyRemaining) < DailyLowShare*float64(lim.DailyLimit) {
		l.cfg.Observe.DailyLow()
	}
	switch {
	case rateLimited != nil && rateLimited.Daily:
		// Before the reserve's case, which a daily 429 (0 left) always
		// meets: HighLevel's Retry-After says when the budget is back
		// (without one, RetryAfter is DailyLimitRecheck). Parking the
		// location DailyPark regardless kept it waiting up to an hour
		// after its budget came back (found by the daily-budget audit).
		// At least DailyRetryMin: a burst-style Retry-After on a spent day
		// would re-probe every few seconds until the reset (review).
		return true, l.park(ctx, location, max(rateLimited.RetryAfter, DailyRetryMin), true, fmt.Sprintf("429: daily limit reached: %d of %d left", max(lim.DailyRemaining, 0), lim.DailyLimit))
	case lim.DailyRemaining == 0:
		return true, l.park(ctx, location, l.cfg.DailyPark, true, fmt.Sprintf("daily budget spent: 0 of %d left", lim.DailyLimit))
	}
	// The window's state holds every call, urgent ones too, parked or not
	// (the reserve's parking below holds only the others: before, its case
	// came first and a burst 429 at a parked location cooled nothing).
	var err error
	switch {
	case rateLimited != nil:
		err = l.coolDown(ctx, location, rateLimited.RetryAfter, "429")
	case lim.Remaining == 0 && lim.Interval > 0 && lim.Max > 0 && l.othersSpend(location, lim):
		// More calls in HighLevel's window than ours explain: something else
		// spends the budget; wait for the next window.
		err = l.coolDown(ctx, location, lim.Interval, "window_spent")
	}
	if err != nil {
		return false, err
	}
	if lim.DailyRemaining > 0 && lim.DailyRemaining <= l.cfg.DailyReserve {
		// The reserve is kept for urgent cancels: they go on (a daily 429
		// or a spent budget then parks them too), the rest waits.
		return true, l.park(ctx, location, l.cfg.DailyPark, false, fmt.Sprintf("daily budget nearly spent: %d of %d left (DAILY_RESERVE %d, %s)", lim.DailyRemaining, lim.DailyLimit, l.cfg.DailyReserve, ReserveMarker))
	}
	return false, nil
}

// othersSpend: HighLevel says the window is spent, yet our own log holds
// fewer admissions in the last window than the limit (read only then, once
// per spent window): another app or integration spends this location's
// budget.
func (l *Limiter) othersSpend(location string, lim ghl.Limits) bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	since := time.Now().Add(-lim.Interval).UnixMicro()
	ours, err := l.rdb.ZCount(ctx, logKey(location), strconv.FormatInt(since, 10), "+inf").Result()
	return err == nil && int(ours) < lim.Max
}

// learn writes a location's limit when it differs from what Redis holds.
// "0:0" (an answer without burst headers) only fills a gap: it never
// replaces a limit HighLevel reported.
func (l *Limiter) learn(ctx context.Context, location, v string) error {
	l.mu.Lock()
	cur, known := l.learned[location]
	l.mu.Unlock()
	if cur == v || (known && v == noLimitHeaders) {
		return nil
	}
	var err error
	if v == noLimitHeaders {
		err = learnGap.Run(ctx, l.rdb, []string{locKey(location), KeyLearned}, location, v).Err()
	} else {
		_, err = l.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.HSet(ctx, locKey(location), "l", v)
			p.HSet(ctx, KeyLearned, location, v) // the learned-locations gauge counts this hash
			return nil
		})
	}
	if err != nil {
		return err
	}
	l.mu.Lock()
	l.learned[location] = v
	l.learnGen.Add(1) // under mu: awaitLearn reads it there before waiting
	if pw := l.probing[location]; pw != nil {
		close(pw.ch) // the calls waiting for this location's first answer
		delete(l.probing, location)
	}
	l.mu.Unlock()
	return nil
}

// learnGap writes "no burst headers" only where nothing is learned.
// KEYS the location's hash, the learned hash. ARGV location, value.
var learnGap = redis.NewScript(`
if redis.call("HSETNX", KEYS[1], "l", ARGV[2]) == 1 then redis.call("HSET", KEYS[2], ARGV[1], ARGV[2]) end
return 1`)

// noLimitHeaders is what an answer without burst headers teaches.
const noLimitHeaders = "0:0"

// extendCool sets field ARGV[2] (c, the cool-down every call respects; p,
// the parking urgent cancels may pass) to now+ARGV[1] µs unless a later
// time is set. KEYS the location's hash.
var extendCool = redis.NewScript(`
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local until_ = now + tonumber(ARGV[1])
local cur = tonumber(redis.call("HGET", KEYS[1], ARGV[2]) or "0")
if until_ > cur then redis.call("HSET", KEYS[1], ARGV[2], until_) end
return 1
`)

// Fields of a location's hash that hold calls back.
const (
	fieldCool = "c" // every call waits: a 429, a spent window, a spent day
	fieldPark = "p" // parked for the daily reserve: urgent cancels may go
)

func (l *Limiter) coolDown(ctx context.Context, location string, d time.Duration, reason string) error {
	return l.holdBack(ctx, location, d, reason, fieldCool)
}

func (l *Limiter) holdBack(ctx context.Context, location string, d time.Duration, reason, field string) error {
	if d <= 0 {
		return nil
	}
	if l.cfg.Observe != nil {
		l.cfg.Observe.CooledDown(reason)
	}
	if err := extendCool.Run(ctx, l.rdb, []string{locKey(location)}, d.Microseconds(), field).Err(); err != nil {
		return err
	}
	// The operators' index (read by the console): best effort, a
	// separate key so the script stays on the location's slot.
	until := time.Now().Add(d).UnixMilli()
	_ = l.rdb.ZAddGT(ctx, KeyCooling, redis.Z{Score: float64(until), Member: location}).Err()
	return nil
}

// ReserveMarker ends the reason of a parking for the daily reserve (which
// urgent cancels may pass), and no other.
const ReserveMarker = "kept for urgent cancels"

// parkScript parks ARGV[3] until ARGV[2] (ms) with reason ARGV[4], unless
// it is parked as long already: one step, so two workers parking at once
// cannot leave the shorter parking (review). A spent day (ARGV[5] "1") at
// a location parked for its reserve (its reason has ARGV[6]) takes the
// reason whatever its end: urgent cancels are held now; a reserve's
// parking at a location parked for a spent day keeps that reason. KEYS
// parked index, reasons; ARGV now ms, ..., ARGV[7] the end as RFC 3339.
// Returns 1 newly parked, 2 now holding urgent cancels too, 0 extended, -1
// unchanged.
var parkScript = redis.NewScript(`
redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", "(" .. ARGV[1])
local cur = redis.call("ZSCORE", KEYS[1], ARGV[3])
if cur and ARGV[5] == "1" and string.find(redis.call("HGET", KEYS[2], ARGV[3]) or "", ARGV[6], 1, true) then
  redis.call("ZADD", KEYS[1], "GT", ARGV[2], ARGV[3])
  redis.call("HSET", KEYS[2], ARGV[3], ARGV[4])
  return 2
end
if cur and ARGV[5] ~= "1" then
  local why = redis.call("HGET", KEYS[2], ARGV[3]) or ""
  if why ~= "" and not string.find(why, ARGV[6], 1, true) then
    -- A spent day's parking holds urgent cancels: a reserve's answer (a
    -- late one, of a call sent before) keeps its reason, and a longer
    -- reserve's parking only extends its end, saying both (review).
    if tonumber(cur) >= tonumber(ARGV[2]) then return -1 end
    redis.call("ZADD", KEYS[1], ARGV[2], ARGV[3])
    local base, t1 = string.match(why, "^(.-) %(until ([^)]*)%)$")
    if base then
      if not string.find(base, "(urgent cancels held until ", 1, true) then
        base = base .. " (urgent cancels held until " .. t1 .. ")"
      end
      redis.call("HSET", KEYS[2], ARGV[3], base .. " (until " .. ARGV[7] .. ")")
    else
      redis.call("HSET", KEYS[2], ARGV[3], why .. " (until " .. ARGV[7] .. ")")
    end
    return 0
  end
end
if cur and tonumber(cur) >= tonumber(ARGV[2]) then return -1 end
redis.call("ZADD", KEYS[1], ARGV[2], ARGV[3])
redis.call("HSET", KEYS[2], ARGV[3], ARGV[4])
if cur then return 0 end
return 1`)

// park holds a location's calls back for its daily budget: all of them
// when spent (the cool-down), all but urgent cancels when only the reserve
// is left (the parking field).
func (l *Limiter) park(ctx context.Context, location string, d time.Duration, spent bool, why string) error {
	// A spent day holds every call (the cool-down) and, like the
	// reserve's, ends with one re-probe (the parking field): at its end a
	// window's allowance would otherwise go into a day still spent.
	field := fieldPark
	if spent {
		field = fieldCool
	}
	if err := l.holdBack(ctx, location, d, "daily", field); err != nil {
		return err
	}
	if spent {
		if err := extendCool.Run(ctx, l.rdb, []string{locKey(location)}, d.Microseconds(), fieldPark).Err(); err != nil {
			return err
		}
	}
	// The cool-down above only ever extends; so does the parking (a daily
	// 429's short Retry-After after a reserve's hour must not leave the
	// location waiting an hour while `enqueue parked` says it is not).
	now := time.Now()
	until := now.Add(d)
	reason, spentFlag := why+" (until "+until.UTC().Format(time.RFC3339)+")", "0"
	if spent {
		spentFlag = "1"
		// The reserve's parking may end later than this one: the reason
		// then says both (its last "(until T)" is the parking's end, which
		// the ETA's note reads). Read first, so only the text can race.
		if ms, err := l.rdb.ZScore(ctx, KeyParked, location).Result(); err == nil && int64(ms) > until.UnixMilli() {
			reason = why + " (urgent cancels held until " + until.UTC().Format(time.RFC3339) + ") (until " +
				time.UnixMilli(int64(ms)).UTC().Format(time.RFC3339) + ")"
		}
	}
	n, err := parkScript.Run(ctx, l.rdb, []string{KeyParked, KeyWhy}, now.UnixMilli(), until.UnixMilli(), location,
		reason, spentFlag, ReserveMarker, until.UTC().Format(time.RFC3339)).Int()
	// Once per parking (a location already parked is not said again by
	// every answer that confirms it), and when a reserve's parking comes
	// to hold urgent cancels too: its cancels wait until then.
	if err == nil && (n == 1 || n == 2) && l.cfg.Logger != nil {
		msg := "location parked: its cancels wait for its daily budget (enqueue parked lists them)"
		switch {
		case !spent:
			msg = "location parked: its cancels wait for its daily budget, urgent ones spend DAILY_RESERVE (enqueue parked lists them)"
		case n == 2:
			msg = "parked location's daily budget spent: its urgent cancels wait too (enqueue parked lists them)"
		}
		l.cfg.Logger.Warn(msg,
			"location", location, "until", until.UTC().Format(time.RFC3339), "why", why)
	}
	return err
}

// Learned returns the limit the workers learned for a location from
// HighLevel's headers, or def when none is known.
func Learned(ctx context.Context, rdb redis.UniversalClient, location string, def Limit) Limit {
	v, err := rdb.HGet(ctx, locKey(location), "l").Result()
	if err != nil {
		return def
	}
	n, p, ok := strings.Cut(v, ":")
	count, err1 := strconv.Atoi(n)
	ms, err2 := strconv.Atoi(p)
	if !ok || err1 != nil || err2 != nil || count <= 0 || ms <= 0 {
		return def
	}
	return Limit{N: count, Period: time.Duration(ms) * time.Millisecond}
}

// Cooling lists locations cooling down now (after a 429, a spent window or
// for the daily budget), with when the cool-down ends. It reads only the
// locations cooling now, and drops the ended ones from the index.
func Cooling(ctx context.Context, rdb redis.UniversalClient) (map[string]time.Time, error) {
	now := strconv.FormatInt(time.Now().UnixMilli(), 10)
	var c *redis.ZSliceCmd
	_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.ZRemRangeByScore(ctx, KeyCooling, "-inf", "("+now)
		c = p.ZRangeByScoreWithScores(ctx, KeyCooling, &redis.ZRangeBy{Min: now, Max: "+inf"})
		return nil
	})
	if err != nil {
		return nil, err
	}
	out := make(map[string]time.Time, len(c.Val()))
	for _, z := range c.Val() {
		out[z.Member.(string)] = time.UnixMilli(int64(z.Score)).UTC()
	}
	return out, nil
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
