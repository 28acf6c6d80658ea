// Package ledger is where a cancel task's fate is written down, once.
//
// Every message ghlcancel has worked on has a small record in Redis
// (ghlcancel:msg:<task id>, a hash): the terminal outcome once there is one,
// the campaign it counts in, and a "call sent" mark while a call for it is
// out without a recorded answer. Three scripts write it, and nothing else
// does:
//
//   - Settle records a terminal outcome (cancelled, not cancellable,
//     expired, dead letter...) in one atomic script: the message's record,
//     its campaign's counters and report row, and the dead letter when there
//     is one. The first outcome wins; a later Settle for the same message
//     returns the recorded one and writes nothing.
//   - Retrying marks a task that will be retried (campaign "retrying" set)
//     and clears the "call sent" mark when the attempt's call was certainly
//     not carried out.
//   - Begin (or the rate limiter's admission script, which embeds the same
//     Lua) runs right before a call: it answers with the recorded outcome
//     if an earlier attempt already settled the message (the caller then
//     settles from it without calling), else leaves the "call sent" mark and
//     says whether an earlier call was sent without a recorded answer.
//
// The producer's enqueue script reads the same records to decide what a
// resend means (already queued, already done, requeued): see
// internal/producer.
//
// ghlcancel does not support Redis Cluster (see the README): these scripts
// build campaign and asynq key names from their arguments.
package ledger

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ghlcancel/ghlcancel/internal/deadletter"
)

// Key is the record of one message, by task id (msg:<id> or email:<id>).
func Key(taskID string) string { return "ghlcancel:msg:" + taskID }

// Campaign keys. They share a hash tag per campaign.
func CampaignKey(c string) string         { return "ghlcancel:campaign:{" + c + "}" }
func CampaignOutcomesKey(c string) string { return CampaignKey(c) + ":outcomes" }
func CampaignRetryingKey(c string) string { return CampaignKey(c) + ":retrying" }
func CampaignLocationsKey(c string) string {
	return CampaignKey(c) + ":locations"
}

// CampaignSweepListKey orders a campaign's sweeps (their state keys) by
// start time.
func CampaignSweepListKey(c string) string { return CampaignKey(c) + ":sweeplist" }

// CampaignHeldByKey is the set of other campaigns that count messages this
// campaign's sweeps found scheduled but did not queue (already queued or
// done there): what became of those messages is said there.
func CampaignHeldByKey(c string) string { return CampaignKey(c) + ":held_by" }

// CampaignHeldKey is the set of those messages' task ids: who waits for
// the campaign follows each (campaign.Tracker.Held).
func CampaignHeldKey(c string) string { return CampaignKey(c) + ":held" }

// HeldByMax bounds a campaign's HeldByKey set; HeldMax its HeldKey set
// (beyond it, the campaign's held_more field says not all are followed).
const (
	HeldByMax = 50
	HeldMax   = 10000
)

// SweepStateKey is where one location's sweep keeps its progress.
func SweepStateKey(sweepID, location string) string {
	return "ghlcancel:sweep:{" + sweepID + "}:" + location
}

// CampaignIndex is the sorted set of campaigns by their last update (the
// time their expiry was last pushed forward): an entry older than the
// campaigns' retention names a campaign that is gone, unless a process with
// a longer retention touched it (campaign.Tracker.Prune checks).
const CampaignIndex = "ghlcancel:campaigns"

// Terminal outcomes.
const (
	Cancelled = "cancelled"
	// NotCancellable: HighLevel said there was nothing to cancel, unverified
	// (VERIFY=off), or the message reads back "failed" with no call of ours
	// (reason failed: cancelled elsewhere, or its send failed).
	NotCancellable = "not_cancellable"
	// AlreadySent: the cancel found nothing to cancel and reading the
	// message back showed it went out (sent, delivered, read...); the
	// reason holds the status read.
	AlreadySent = "already_sent"
	// NotFound: the cancel found nothing and HighLevel has no such message.
	NotFound     = "not_found"
	Expired      = "expired"
	DeadLettered = "dead_lettered"
)

// ReasonEarlierAttempt is the reason of a `cancelled` outcome whose proof is
// an earlier attempt: that call went out (the worker then died, or the
// answer was a timeout or a 5xx), and this attempt's "not found" is the
// trace of it.
const ReasonEarlierAttempt = "earlier_attempt"

// Defaults.
const (
	// RetentionDefault is how long records, campaign counters and reports
	// are kept after their last update.
	RetentionDefault = 7 * 24 * time.Hour
	// DeadRetentionDefault is how long dead letters (and the records of
	// dead-lettered messages, so a resend revives them) are kept.
	DeadRetentionDefault = 30 * 24 * time.Hour
)

// Outcome is a terminal outcome as recorded.
type Outcome struct {
	Outcome    string // Cancelled, NotCancellable, Expired, DeadLettered, ...
	Reason     string // dead-letter reason, or a note such as ReasonEarlierAttempt
	HTTPStatus int
	Attempts   int
	At         time.Time
}

// Row encodes an outcome the way records and campaign reports store it:
// outcome|reason|status|attempts|unix ms.
func (o Outcome) Row() string {
	return strings.Join([]string{o.Outcome, o.Reason, strconv.Itoa(o.HTTPStatus), strconv.Itoa(o.Attempts),
		strconv.FormatInt(o.At.UnixMilli(), 10)}, "|")
}

// ParseRow decodes Row's format (a record's row may end "|k": the "call
// sent" mark was kept with it).
func ParseRow(row string) (Outcome, error) {
	f := strings.Split(row, "|")
	if len(f) == 6 && f[5] == "k" {
		f = f[:5]
	}
	if len(f) != 5 {
		return Outcome{}, fmt.Errorf("ledger: bad outcome row %q", row)
	}
	status, _ := strconv.Atoi(f[2])
	attempts, _ := strconv.Atoi(f[3])
	ms, _ := strconv.ParseInt(f[4], 10, 64)
	return Outcome{Outcome: f[0], Reason: f[1], HTTPStatus: status, Attempts: attempts, At: time.UnixMilli(ms)}, nil
}

// Admission is what the check right before a call found.
type Admission struct {
	// Recorded is the message's outcome when an earlier attempt already
	// settled it: do not call, settle from it.
	Recorded *Outcome
	// EarlierCall: an earlier call for this message went out and its answer
	// was never recorded (the worker died, or it timed out or got a 5xx).
	EarlierCall bool
	// Stage: the verify stage an earlier delivery left (see StageReadBack):
	// the call this admission is for is that read, and no "call sent"
	// mark was left for it.
	Stage string
	// FirstCall: no delivery of this message was admitted before (for the
	// event-to-cancel latency, observed once per cancel).
	FirstCall bool
}

// Config configures a Ledger.
type Config struct {
	// Retention of records, campaign counters and reports after their last
	// update. Defaults to RetentionDefault.
	Retention time.Duration
	// DeadRetention of dead letters. Defaults to DeadRetentionDefault.
	DeadRetention time.Duration
	// WriteAttempts bounds how often a failed Settle write is tried again
	// (the call is never repeated for it). Defaults to 5.
	WriteAttempts int
	// WriteBackoff is the first pause between write attempts; it doubles.
	// Defaults to 100 ms.
	WriteBackoff time.Duration
}

// Ledger writes message records. Safe for concurrent use.
type Ledger struct {
	rdb redis.UniversalClient
	cfg Config
	// deadFloor (ns): the longest dead-letter retention of the live
	// workers (SetDeadRetentionFloor); a write prunes none younger.
	deadFloor atomic.Int64
}

// SetDeadRetentionFloor makes dead letters (and their records) kept at
// least d, whatever Config.DeadRetention says: the longest retention of
// the workers sharing this Redis (internal/fleet). A worker with a short
// DEAD_LETTER_RETENTION must not remove the others' dead letters.
func (l *Ledger) SetDeadRetentionFloor(d time.Duration) { l.deadFloor.Store(int64(d)) }

// DeadRetention is the retention a write uses: Config.DeadRetention, or
// the floor when that is longer.
func (l *Ledger) DeadRetention() time.Duration {
	return max(l.cfg.DeadRetention, time.Duration(l.deadFloor.Load()))
}

// New returns a Ledger on rdb.
func New(rdb redis.UniversalClient, cfg Config) *Ledger {
	cfg.Retention = cmp.Or(cfg.Retention, RetentionDefault)
	cfg.DeadRetention = cmp.Or(cfg.DeadRetention, DeadRetentionDefault)
	cfg.WriteAttempts = cmp.Or(cfg.WriteAttempts, 5)
	cfg.WriteBackoff = cmp.Or(cfg.WriteBackoff, 100*time.Millisecond)
	return &Ledger{rdb: rdb, cfg: cfg}
}

// Retention returns the configured record retention.
func (l *Ledger) Retention() time.Duration { return l.cfg.Retention }

// Lua is the shared library every ghlcancel script that touches records or
// campaigns starts with. Times are unix ms.
const Lua = `
local function ck(c)
  local b = "ghlcancel:campaign:{" .. c .. "}"
  return b, b .. ":outcomes", b .. ":retrying", b .. ":locations"
end
local function reason_field(outcome, reason)
  if outcome == "dead_lettered" then return "dead:" .. reason end
  return outcome .. ":" .. reason
end
-- ccount reads a campaign's total, the messages done (the sum of the
-- terminal outcomes' counters: no "done" counter to keep in step) and its
-- last update, in one call.
local function ccount(c)
  local v = redis.call("HMGET", (ck(c)), "total", "updated_at", "cancelled", "not_cancellable",
    "already_sent", "not_found", "expired", "dead_lettered", "sweeps", "sweeps_done")
  local done = 0
  for i = 3, 8 do done = done + tonumber(v[i] or "0") end
  local sweeps, swept = tonumber(v[9] or "0"), tonumber(v[10] or "0")
  return tonumber(v[1] or "0"), done, tonumber(v[2] or "0"), sweeps, swept
end
-- ccomplete: every cancel has an outcome and every sweep finished (a
-- campaign of sweeps that found nothing is complete too).
local function ccomplete(total, done, sweeps, swept)
  return (total > 0 or sweeps > 0) and done >= total and swept >= sweeps
end
-- cfinish sets or clears finished_at from the counters. A campaign whose
-- every message moved to another (sent again under a new campaign id) has
-- nothing left to wait for: complete, not running until it expires.
local function cfinish(c, now)
  local total, done, _, sweeps, swept = ccount(c)
  if ccomplete(total, done, sweeps, swept) or (total <= 0 and sweeps == 0) then
    redis.call("HSETNX", (ck(c)), "finished_at", now)
  else
    redis.call("HDEL", (ck(c)), "finished_at")
  end
end
-- clive: a campaign exists while its counters hash does. One that expired
-- or was deleted is gone: outcomes, retries and sweeps do not bring it
-- back (only the enqueue rule's cadd starts a campaign).
local function clive(c)
  return redis.call("EXISTS", (ck(c))) == 1
end
local function ctouch(c, now, ttl)
  local k, ko, kr, kl = ck(c)
  redis.call("HSET", k, "updated_at", now)
  redis.call("PEXPIRE", k, ttl)
  redis.call("PEXPIRE", ko, ttl)
  redis.call("PEXPIRE", kr, ttl)
  redis.call("PEXPIRE", kl, ttl)
  redis.call("PEXPIRE", k .. ":failed_sweeps", ttl)
  redis.call("PEXPIRE", k .. ":sweeplist", ttl)
  redis.call("PEXPIRE", k .. ":held_by", ttl)
  redis.call("PEXPIRE", k .. ":held", ttl)
  redis.call("ZADD", "ghlcancel:campaigns", now, c)
end
-- csettled: after an outcome, set finished_at when done reaches total, and
-- push the campaign's expiry forward at most once a minute (one HMGET on
-- the common path instead of five writes). The outcomes hash exists while
-- done > 0: the outcome that brought done to 1 created it, so the expiry is
-- pushed then too, for all the campaign's keys alike (a campaign settled
-- within a minute of its last update would otherwise leave the hash
-- without one, or outliving its counters).
local function csettled(c, now, ttl)
  local total, done, updated, sweeps, swept = ccount(c)
  if ccomplete(total, done, sweeps, swept) then redis.call("HSETNX", (ck(c)), "finished_at", now) end
  if done == 1 or now - updated >= 60000 then ctouch(c, now, ttl) end
end
-- creopen removes a message's terminal row from campaign c (it runs again);
-- true when there was one (the campaign counted the message).
local function creopen(c, id)
  local k, ko, kr = ck(c)
  redis.call("SREM", kr, id)
  local row = redis.call("HGET", ko, id)
  if not row then return false end
  local outcome, reason = string.match(row, "^([^|]*)|([^|]*)|")
  redis.call("HDEL", ko, id)
  redis.call("HINCRBY", k, outcome, -1)
  if reason ~= "" then redis.call("HINCRBY", k, reason_field(outcome, reason), -1) end
  return true
end
-- cadd changes campaign c's distinct total by n (new messages, or ones that
-- moved to or from it), for a location.
-- cnew: true when campaign c is new (or its counters expired), after
-- clearing what an earlier one of that name left: its outcome rows and
-- held messages are not the new one's. Call it before the first write to
-- the campaign's hash.
local function cnew(c)
  local k, ko = ck(c)
  if redis.call("EXISTS", k) == 1 then return false end
  redis.call("DEL", ko, k .. ":held", k .. ":held_by")
  return true
end
local function cadd(c, n, loc, now, ttl)
  local k, ko, kr, kl = ck(c)
  cnew(c)
  redis.call("HINCRBY", k, "total", n)
  redis.call("HSETNX", k, "started_at", now)
  if loc ~= "" and n > 0 then redis.call("SADD", kl, loc) end
  cfinish(c, now)
  ctouch(c, now, ttl)
end
-- pb_varint reads a protobuf varint at i: its value and the next index.
local function pb_varint(msg, i)
  local v, mul = 0, 1
  while i <= #msg do
    local b = string.byte(msg, i)
    v, i = v + (b % 128) * mul, i + 1
    if b < 128 then return v, i end
    mul = mul * 128
  end
  return nil, i
end
-- task_payload is field 2 (payload) of an asynq TaskMessage, nil if the
-- message does not read as one.
local function task_payload(msg)
  local i = 1
  while i <= #msg do
    local tag = string.byte(msg, i)
    i = i + 1
    local wt, field = tag % 8, math.floor(tag / 8)
    local n
    n, i = pb_varint(msg, i)
    if not n then return nil end
    if wt == 2 then
      if field == 2 then return string.sub(msg, i, i + n - 1) end
      i = i + n
    elseif wt ~= 0 then
      return nil
    end
  end
  return nil
end
-- task_with_queue is the asynq TaskMessage msg with its queue (field 4)
-- set to q, or nil when msg does not read as one (it then stays).
local function task_with_queue(msg, q)
  local out, i, found = {}, 1, false
  while i <= #msg do
    local start, tag = i, string.byte(msg, i)
    if tag >= 128 then return nil end
    local wt, field = tag % 8, math.floor(tag / 8)
    local v
    v, i = pb_varint(msg, i + 1)
    if not v then return nil end
    if wt == 2 then
      if i + v - 1 > #msg then return nil end
      i = i + v
    elseif wt ~= 0 then
      return nil
    end
    if field == 4 and wt == 2 then
      out[#out+1] = string.char(34, #q) .. q
      found = true
    else
      out[#out+1] = string.sub(msg, start, i - 1)
    end
  end
  if not found then return nil end
  return table.concat(out)
end
-- take_waiting takes task id, waiting in state st on the lane whose keys
-- start with base, off that lane: out of its pending list (LREM from the
-- end dir says: 1 the head, -1 the tail) or its retry or scheduled set,
-- and its hash deleted. Returns whether it was there to take.
local function take_waiting(base, id, st, dir)
  if st == "pending" then
    if redis.call("LREM", base .. "pending", dir, id) == 0 then return false end
  elseif redis.call("ZREM", base .. st, id) == 0 then
    return false
  end
  redis.call("DEL", base .. "t:" .. id)
  return true
end
-- move_waiting moves the task of id waiting (pending, scheduled or retry)
-- on lane from to lane to's pending list, behind what is pending there (as
-- asynq's "run task" does), its message rewritten with only its queue
-- changed (its payload, retries and last error stay). A pending task is
-- looked for within reach entries of either end of its lane's list.
-- Returns whether it moved: a running task, one not found, a message that
-- does not read as asynq's, or a task already on lane to stay.
local function move_waiting(id, from, to, reach)
  local base = "asynq:{" .. from .. "}:"
  local v = redis.call("HMGET", base .. "t:" .. id, "state", "msg")
  local st, msg = v[1], v[2]
  if not msg or (st ~= "pending" and st ~= "scheduled" and st ~= "retry") then return false end
  local nm = task_with_queue(msg, to)
  local nk = "asynq:{" .. to .. "}:t:" .. id
  if not nm or redis.call("EXISTS", nk) == 1 then return false end
  local dir = 1
  if st == "pending" then
    local key = base .. "pending"
    local p = redis.call("LPOS", key, id, "MAXLEN", reach)
    if not p then
      p, dir = redis.call("LPOS", key, id, "RANK", -1, "MAXLEN", reach), -1
    end
    if not p then return false end
  end
  if not take_waiting(base, id, st, dir) then return false end
  local t = redis.call("TIME")
  redis.call("HSET", nk, "msg", nm, "state", "pending", "pending_since", t[1] .. string.format("%06d", tonumber(t[2])) .. "000")
  redis.call("LPUSH", "asynq:{" .. to .. "}:pending", id)
  redis.call("SADD", "asynq:queues", to)
  return true
end
-- with_campaign names campaign c in a dead letter's JSON that has none
-- (campaign_id is omitted when empty).
local function with_campaign(json, c)
  if string.find(json, '"campaign_id":', 1, true) then return json end
  if json == "{}" then return '{"campaign_id":' .. cjson.encode(c) .. '}' end
  return '{"campaign_id":' .. cjson.encode(c) .. ',' .. string.sub(json, 2)
end
-- task_campaign reads campaign_id from an asynq task message's payload
-- (JSON, in field 2 of the protobuf: not the fields after it, such as
-- the last error's text); "" when it has none.
local function task_campaign(msg)
  msg = msg and task_payload(msg)
  if not msg then return "" end
  local i = string.find(msg, '"campaign_id":"', 1, true)
  if not i then return "" end
  local j = i + 15
  local k = j
  while k <= #msg do
    local ch = string.sub(msg, k, k)
    if ch == "\\" then k = k + 2
    elseif ch == '"' then break
    else k = k + 1 end
  end
  local ok, v = pcall(cjson.decode, '"' .. string.sub(msg, j, k - 1) .. '"')
  if ok and type(v) == "string" then return v end
  return ""
end
-- superseded: a record's outcome row says the task was dropped as the
-- wrong kind of a message its other kind stands for (counted nowhere).
local function superseded(o)
  return o and string.sub(o, 1, 11) == "` + Superseded + `|"
end
-- supersede leaves that row on record rk (replacing the record), with the
-- rest of a row (status|attempts|ms), for ttl ms.
local function supersede(rk, tail, ttl)
  redis.call("DEL", rk)
  redis.call("HSET", rk, "o", "` + Superseded + `|` + ReasonWrongKind + `|" .. tail)
  redis.call("PEXPIRE", rk, ttl)
end
-- ledger_begin: the check right before a call. Returns the recorded outcome
-- row, or false, whether another delivery's call went out without a
-- recorded answer (a "call sent" mark other than this delivery's own; ""
-- is no mark), the verify stage (field v, or false): an earlier
-- delivery's cancel answered "not found" and a read-back is next, so the
-- call to come is that read, not a cancel; and whether this is the
-- message's first admitted call.
local function ledger_begin(rk, mark)
  local v = redis.call("HMGET", rk, "o", "s", "v")
  if v[1] then return v[1], false, false, false end
  -- first: no delivery was admitted before (a mark, even a cleared one,
  -- says one was).
  return false, (v[2] and v[2] ~= "" and v[2] ~= mark), v[3], not v[2]
end
-- ledger_mark leaves this delivery's "call sent" mark: a call is about to
-- go out. An earlier delivery's mark is kept: its call may have cancelled
-- the message.
local function ledger_mark(rk, campaign, mark, earlier, ttl)
  if earlier then
    redis.call("HSET", rk, "c", campaign)
  else
    redis.call("HSET", rk, "c", campaign, "s", mark)
  end
  redis.call("PEXPIRE", rk, ttl)
end
`

// beginScript: KEYS record. ARGV campaign, mark, ttl ms.
// Returns {recorded row or "", earlier call 0/1, verify stage or "", first call 0/1}.
var beginScript = redis.NewScript(Lua + `
local rec, earlier, stage, first = ledger_begin(KEYS[1], ARGV[2])
if rec then return {rec, 0, "", 0} end
-- A read-back (a verify stage) is no cancel: it leaves no "call sent" mark.
ledger_mark(KEYS[1], ARGV[1], ARGV[2], earlier or stage, ARGV[3])
local e, f = 0, 0
if earlier then e = 1 end
if first then f = 1 end
return {"", e, stage or "", f}
`)

// NewMark returns a "call sent" mark for one delivery of a task: every call
// of that delivery leaves it, and only another delivery's mark says an
// earlier call went out.
func NewMark(attempt int) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return strconv.Itoa(attempt) + "-" + hex.EncodeToString(b[:])
}

// Begin is the check right before a call when no rate limiter runs it (the
// limiter's admission script does the same in the same round trip). mark is
// the delivery's NewMark.
func (l *Ledger) Begin(ctx context.Context, taskID, campaign, mark string) (Admission, error) {
	v, err := beginScript.Run(ctx, l.rdb, []string{Key(taskID)}, campaign, mark, l.cfg.Retention.Milliseconds()).Slice()
	if err != nil {
		return Admission{}, fmt.Errorf("ledger: begin %s: %w", taskID, err)
	}
	return ParseAdmission(v[0], v[1], v[2], v[3])
}

// ParseAdmission reads the {recorded row, earlier call, verify stage, first
// call} the begin Lua returns (also from the rate limiter's script).
func ParseAdmission(row, earlier, stage, first any) (Admission, error) {
	var a Admission
	if s, _ := row.(string); s != "" {
		o, err := ParseRow(s)
		if err != nil {
			return Admission{}, err
		}
		a.Recorded = &o
	}
	n, _ := earlier.(int64)
	a.EarlierCall = n == 1
	a.Stage, _ = stage.(string)
	f, _ := first.(int64)
	a.FirstCall = f == 1
	return a, nil
}

// Verify stages (a record's field v): an earlier delivery's cancel answered
// "not found" and the read-back that settles it could not be made (no
// pacing slot, a 429, a failed read). The next delivery makes that read
// with its one slot instead of sending the cancel again: on a location with
// a backlog, every delivery used to spend its slot on the cancel and never
// get one for the read-back, for ever. A stage is "<step>:<status>" (the
// cancel's HTTP status, for the outcome).
const (
	StageReadBack  = "1" // read the message back as its kind
	StageOtherKind = "2" // read it back as the other kind (its kind has nothing)
	// StageClear, as Ledger.Retrying's stage, removes it: the cancel is
	// to be sent again (the message reads back as scheduled).
	StageClear = "-"
)

// Stage encodes a verify stage with the cancel's status.
func Stage(step string, status int) string { return step + ":" + strconv.Itoa(status) }

// ParseStage decodes Stage's format; ok false for "" or anything else.
func ParseStage(s string) (step string, status int, ok bool) {
	step, st, found := strings.Cut(s, ":")
	if !found || (step != StageReadBack && step != StageOtherKind) {
		return "", 0, false
	}
	status, err := strconv.Atoi(st)
	return step, status, err == nil
}

// KeyWrongKind exists while a dead letter wrong_kind may: the enqueue rule
// checks each item's other kind only then (one EXISTS per batch otherwise).
const KeyWrongKind = "ghlcancel:wrongkind"

// FlagWrongKind makes the enqueue rule look at each item's other kind for
// at least ttl (KeyWrongKind), as a wrong_kind dead letter's settle does: a
// requeue of such dead letters sets it too, whatever happened to it since.
func FlagWrongKind(ctx context.Context, rdb redis.UniversalClient, ttl time.Duration) error {
	cur, err := rdb.PTTL(ctx, KeyWrongKind).Result()
	if err != nil {
		return err
	}
	if cur >= ttl {
		return nil
	}
	return rdb.Set(ctx, KeyWrongKind, "1", ttl).Err()
}

// ReasonWrongKind: see tasks.ReasonWrongKind (the one that names it).
const ReasonWrongKind = "wrong_kind"

// settleScript: KEYS record, dead records, dead index, then (a dead letter
// wrong_kind only) the other kind's record and its task keys on every lane.
// ARGV task id, outcome, reason, row, now ms, campaign, retention ms, dead
// retention ms, dead-letter JSON ("" when not a dead letter), keep mark
// (1/0), location whose rate-limit waiters the task leaves ("": it was
// admitted, and left them then), flags ("m": admitted in this delivery,
// "f": first attempt).
// Returns {1} when recorded, {0, recorded row} when the message already had
// one, {2} when the task was dropped as the wrong kind of a message queued
// or settled as the right one (see Superseded).
var settleScript = redis.NewScript(Lua + `
local id, outcome, reason, row, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local campaign, ttl, deadttl = ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])
-- Sent with no campaign while the wrong kind of its id was queued in one,
-- it counts in that one (the wrong kind's drop handed it over: field h).
local handed = false
if campaign == "" then
  local h = redis.call("HGET", KEYS[1], "h")
  if h and h ~= "" then campaign, handed = h, true end
end
local deadjson = ARGV[9]
if handed and deadjson ~= "" then deadjson = with_campaign(deadjson, campaign) end
-- The wrong kind of a message that is also queued (or settled) as the
-- right kind is not a message of its own: the right kind's task says what
-- became of it. No dead letter is written, its campaign row and count go,
-- and its record keeps a "superseded" row (counted nowhere) so that a
-- replay of this settle (a lost reply, a worker dying before asynq's ack)
-- finds it recorded and changes nothing. The right kind stands for the
-- message when its task is queued or running (its record has no outcome
-- yet), or when its record holds an outcome HighLevel answered and that
-- the other-kind read does not contradict (flag "s": the read found the
-- message scheduled, which contradicts a done outcome, not a dead
-- letter). Not: its own wrong_kind dead letter or superseded row
-- (HighLevel has the id as neither, or both tasks settled at once), an
-- expired outcome (a guess from a send time), an archived copy.
if #KEYS > 3 and reason == "` + ReasonWrongKind + `" and redis.call("HEXISTS", KEYS[1], "o") == 0 then
  local ov = redis.call("HMGET", KEYS[4], "o", "c", "h")
  local other, rc = ov[1], ov[2]
  -- Handed this campaign by an earlier drop (a forced run of the wrong
  -- kind since): that is the right kind's campaign.
  if (not rc or rc == "") and ov[3] and ov[3] ~= "" then rc = ov[3] end
  local right = false
  local live = nil
  if other then
    right = string.sub(other, 1, 25) ~= "dead_lettered|` + ReasonWrongKind + `|" and not superseded(other)
      and string.sub(other, 1, 8) ~= "expired|"
      -- A message read back scheduled contradicts an outcome that says it
      -- is done, not a dead letter (one that says it is not).
      and not (string.find(ARGV[12], "s", 1, true) and string.sub(other, 1, 14) ~= "dead_lettered|")
  else
    for i = 5, #KEYS do
      local st = redis.call("HGET", KEYS[i], "state")
      if st and st ~= "archived" and st ~= "completed" then right, live = true, KEYS[i] end
    end
  end
  if right then
    supersede(KEYS[1], string.match(row, "^[^|]*|[^|]*|(.*)$"), ttl)
    -- Dropped from a more urgent lane than the one the right kind waits on
    -- (an urgent resend sent as the wrong kind): the right kind moves to
    -- it, so the urgency asked for is not lost with the wrong kind. The
    -- lanes' task keys come in their order, the most urgent first.
    if live and ARGV[13] and ARGV[13] ~= "" then
      local own, at, prefix = nil, nil, "asynq:{" .. ARGV[13] .. "}:t:"
      for i = 5, #KEYS do
        if KEYS[i] == live then at = i end
        if string.sub(KEYS[i], 1, #prefix) == prefix then own = i end
      end
      local from, oid = string.match(live, "^asynq:{([^}]*)}:t:(.*)$")
      if own and at and own < at and from and move_waiting(oid, from, ARGV[13], ` + strconv.Itoa(MoveReach) + `) then
        live = KEYS[own]
      end
    end
    if ARGV[11] ~= "" then redis.call("ZREM", "ghlcancel:rl:wait:{" .. ARGV[11] .. "}", id) end
    if campaign ~= "" and clive(campaign) then
      local k, ko, kr = ck(campaign)
      redis.call("SREM", kr, id)
      -- The right kind's campaign: its record's, else its queued task's.
      if not rc and live then rc = task_campaign(redis.call("HGET", live, "msg")) end
      rc = rc or ""
      -- Counted at enqueue (it had no outcome).
      if redis.call("HEXISTS", ko, id) == 0 then
        if rc ~= "" then
          -- The right kind counts in its own campaign: this one gives the
          -- message up, and may be complete now.
          redis.call("HINCRBY", k, "total", -1)
          cfinish(campaign, now)
        elseif other then
          -- Sent as the right kind with no campaign (the kind corrected
          -- without --campaign): the message stays in this one, which
          -- counts the right kind's outcome now (its total is unchanged:
          -- one message).
          local orow = string.gsub(other, "|k$", "")
          local oc, orr = string.match(orow, "^([^|]*)|([^|]*)|")
          local oid = string.sub(KEYS[4], 15)
          if redis.call("HSETNX", ko, oid, orow) == 1 then
            redis.call("HINCRBY", k, oc, 1)
            if orr ~= "" then redis.call("HINCRBY", k, reason_field(oc, orr), 1) end
          end
          -- Its dead letter, if it is one, is listed under this campaign.
          local od = redis.call("HGET", KEYS[2], oid)
          if od then redis.call("HSET", KEYS[2], oid, with_campaign(od, campaign)) end
          redis.call("HSET", KEYS[4], "c", campaign)
          csettled(campaign, now, ttl)
        else
          -- Still queued with no campaign: it settles into this one (field
          -- h of its record; the total is unchanged: one message).
          redis.call("HSET", KEYS[4], "h", campaign)
          if redis.call("PTTL", KEYS[4]) < 0 then redis.call("PEXPIRE", KEYS[4], ttl) end
        end
      end
    end
    return {2}
  end
end
-- The record's row ends "|k" when the "call sent" mark must survive a
-- reopening (a resend); otherwise the mark is dead once an outcome is there.
local rrow = row
if ARGV[10] == "1" then rrow = row .. "|k" end
if redis.call("HSETNX", KEYS[1], "o", rrow) == 0 then return {0, redis.call("HGET", KEYS[1], "o")} end
local flags = ARGV[12] -- "m": admitted in this delivery (the record has its campaign and expiry); "f": first attempt (never retrying)
local admitted = string.find(flags, "m", 1, true)
if not admitted or handed then redis.call("HSET", KEYS[1], "c", campaign) end
if handed then redis.call("HDEL", KEYS[1], "h") end -- used once: a stale one must not misroute a later run
if deadjson ~= "" then
  redis.call("HSET", KEYS[2], id, deadjson)
  redis.call("ZADD", KEYS[3], now, id)
  if campaign ~= "" then redis.call("HSET", "` + deadletter.KeyCampaigns + `", campaign, now) end
  ttl = math.max(ttl, deadttl)
  -- The enqueue rule looks for wrong-kind records only while one may
  -- exist: this flag outlives every record it stands for.
  -- Only ever extended: a worker with a shorter retention must not cut
  -- short the flag of an older record.
  if reason == "` + ReasonWrongKind + `" and redis.call("PTTL", "` + KeyWrongKind + `") < ttl then
    redis.call("SET", "` + KeyWrongKind + `", "1", "PX", ttl)
  end
  -- Dead letters past their retention go, a bounded number per write.
  local old = redis.call("ZRANGE", KEYS[3], "-inf", string.format("(%d", now - deadttl), "BYSCORE", "LIMIT", 0, 100)
  if #old > 0 then
    redis.call("HDEL", KEYS[2], unpack(old))
    redis.call("ZREM", KEYS[3], unpack(old))
  end
end
if ARGV[9] ~= "" or not admitted then redis.call("PEXPIRE", KEYS[1], ttl) end
if ARGV[11] ~= "" then redis.call("ZREM", "ghlcancel:rl:wait:{" .. ARGV[11] .. "}", id) end
-- A campaign whose counters expired (or were deleted) while the task
-- waited is gone: counting the outcome would bring it back with no total
-- and no start, "running" forever. The record keeps the outcome.
if campaign ~= "" and clive(campaign) then
  local k, ko, kr = ck(campaign)
  if redis.call("HSETNX", ko, id, row) == 1 then
    redis.call("HINCRBY", k, outcome, 1)
    if reason ~= "" then redis.call("HINCRBY", k, reason_field(outcome, reason), 1) end
    if not string.find(flags, "f", 1, true) then redis.call("SREM", kr, id) end
    csettled(campaign, now, tonumber(ARGV[7]))
  end
end
return {1}
`)

// Final is one task's terminal outcome, ready to be written.
type Final struct {
	TaskID     string
	CampaignID string
	// LeaveWaiters: the task's location, when it settles without having
	// been admitted in this delivery (it may still be among the location's
	// rate-limit waiters from an earlier snooze).
	LeaveWaiters string
	Outcome      Outcome
	// Dead is the dead letter, when Outcome.Outcome is DeadLettered.
	Dead *deadletter.Record
	// Admitted: the task passed the check right before a call in this
	// delivery (its record has an expiry already). FirstAttempt: it was
	// never retried, so it is in no campaign's retrying set. Both only
	// spare Redis work; false is always safe.
	Admitted, FirstAttempt bool
	// KeepMark keeps the "call sent" mark of a dead-lettered message whose
	// last call may have been carried out (its answer was a timeout or a
	// 5xx): if it is sent again, a "not found" is then that cancel.
	KeepMark bool
	// OtherKind, for a dead letter wrong_kind: the other kind's record key
	// and its task keys on every lane, the most urgent lane first
	// (OtherKindKeys with tasks.Queues). When the message is queued or
	// settled as that kind, the task is Superseded instead.
	OtherKind []string
	// MoveOtherTo: the lane the task ran on. When it is Superseded by the
	// other kind's task waiting on a slower lane (an urgent resend sent as
	// the wrong kind), that task moves to this lane (as the enqueue rule
	// moves a cancel asked for more urgently).
	MoveOtherTo string
	// OtherScheduled: the read as the other kind found the message still
	// scheduled, so an outcome recorded for that kind does not stand for it.
	OtherScheduled bool
}

// MoveReach is how far from either end of a lane's pending list a waiting
// task is looked for to move it to a more urgent lane (LPOS reads about
// 100,000 entries in 1.7 ms on the 2-core machine).
const MoveReach = 131_072

// Superseded is what Settle returns (recorded true) for a wrong_kind task
// whose message is queued or settled as the right kind: the task was
// dropped, with no dead letter and no place in its campaign. Its record
// keeps a row of this outcome (counted nowhere), so a replayed settle or
// a re-delivery finds it recorded.
const Superseded = "superseded"

// OtherKindKeys returns Final.OtherKind for a task of id otherID (the same
// message id as the other kind) with asynq lanes queues.
func OtherKindKeys(otherID string, queues []string) []string {
	keys := make([]string, 0, len(queues)+1)
	keys = append(keys, Key(otherID))
	for _, q := range queues {
		keys = append(keys, "asynq:{"+q+"}:t:"+otherID)
	}
	return keys
}

func settleFlags(f Final) string {
	s := ""
	if f.Admitted {
		s += "m"
	}
	if f.FirstAttempt {
		s += "f"
	}
	if f.OtherScheduled {
		s += "s"
	}
	return s
}

// ErrWrite wraps a Settle that could not be written after every attempt.
var ErrWrite = errors.New("ledger: outcome could not be recorded")

// Settle records f atomically (record, campaign, dead letter). When the
// message already had an outcome, nothing is written and that outcome comes
// back with recorded=false. A failed write is retried (bounded by
// WriteAttempts and ctx); the error after the last attempt wraps ErrWrite.
func (l *Ledger) Settle(ctx context.Context, f Final) (got Outcome, recorded bool, err error) {
	if f.Outcome.At.IsZero() {
		f.Outcome.At = time.Now()
	}
	var dead []byte
	if f.Dead != nil {
		f.Dead.TaskID = f.TaskID
		f.Dead.DeadAt = f.Outcome.At
		if dead, err = json.Marshal(f.Dead); err != nil {
			return Outcome{}, false, err
		}
	}
	if f.Outcome.Outcome == "" {
		return Outcome{}, false, errors.New("ledger: settle without an outcome")
	}
	row := f.Outcome.Row()
	keep := "0"
	if f.KeepMark {
		keep = "1"
	}
	keys := []string{Key(f.TaskID), deadletter.KeyRecords, deadletter.KeyIndex}
	if f.Dead != nil && f.Outcome.Reason == ReasonWrongKind && len(f.OtherKind) > 1 {
		keys = append(keys, f.OtherKind...)
	}
	pause := l.cfg.WriteBackoff
	for attempt := 1; ; attempt++ {
		var v []any
		v, err = settleScript.Run(ctx, l.rdb, keys, f.TaskID, f.Outcome.Outcome, f.Outcome.Reason, row,
			f.Outcome.At.UnixMilli(), f.CampaignID, l.cfg.Retention.Milliseconds(), l.DeadRetention().Milliseconds(), string(dead), keep, f.LeaveWaiters, settleFlags(f),
			f.MoveOtherTo).Slice()
		if err == nil {
			switch n, _ := v[0].(int64); n {
			case 1:
				return f.Outcome, true, nil
			case 2:
				return Outcome{Outcome: Superseded, Reason: ReasonWrongKind, At: f.Outcome.At}, true, nil
			}
			s, _ := v[1].(string)
			prev, perr := ParseRow(s)
			return prev, false, perr
		}
		if attempt >= l.cfg.WriteAttempts || ctx.Err() != nil {
			return Outcome{}, false, fmt.Errorf("%w (%s for %s, tried %d times): %w", ErrWrite, f.Outcome.Outcome, f.TaskID, attempt, err)
		}
		t := time.NewTimer(pause)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
		pause *= 2
	}
}

// retryingScript: KEYS record. ARGV task id, campaign, mark to clear ("":
// none), ttl ms, now ms, verify stage to leave ("": unchanged, StageClear:
// none). A retry keeps its campaign alive: its expiry is
// pushed as by an outcome (at most once a minute, or half the retention if
// that is shorter), so a campaign with a task between retries does not
// expire under it; a campaign already gone is not brought back.
var retryingScript = redis.NewScript(Lua + `
if redis.call("HEXISTS", KEYS[1], "o") == 1 then return 0 end
-- No campaign in its payload (ARGV[7] "h"): the one it was handed, if any.
local c = ARGV[2]
if c == "" and ARGV[7] == "h" then c = redis.call("HGET", KEYS[1], "h") or "" end
if ARGV[3] ~= "" and redis.call("HGET", KEYS[1], "s") == ARGV[3] then redis.call("HSET", KEYS[1], "s", "") end
if ARGV[6] == "` + StageClear + `" then
  redis.call("HDEL", KEYS[1], "v")
elseif ARGV[6] ~= "" and redis.call("EXISTS", KEYS[1]) == 1 then
  -- Only on a record the admission made (it has its expiry).
  redis.call("HSET", KEYS[1], "v", ARGV[6])
end
if c ~= "" then
  local k, ko, kr = ck(c)
  if clive(c) and redis.call("HEXISTS", ko, ARGV[1]) == 0 then
    local now, ttl = tonumber(ARGV[5]), tonumber(ARGV[4])
    redis.call("SADD", kr, ARGV[1])
    local updated = tonumber(redis.call("HGET", k, "updated_at") or "0")
    if now - updated >= math.min(60000, math.floor(ttl / 2)) or redis.call("PTTL", kr) < 0 then
      ctouch(c, now, ttl)
    end
  end
end
return 1
`)

// Retrying marks a task that will be retried in its campaign, clears the
// delivery's "call sent" mark clearMark (when not empty: HighLevel refused
// the call, or no call went out after all; another delivery's mark stays),
// and leaves the verify stage stage ("": unchanged; StageClear: none). One
// round trip, atomic.
func (l *Ledger) Retrying(ctx context.Context, taskID, campaign, clearMark, stage string) error {
	if campaign == "" && clearMark == "" && stage == "" {
		return nil
	}
	return retryingScript.Run(ctx, l.rdb, []string{Key(taskID)}, taskID, campaign, clearMark, l.cfg.Retention.Milliseconds(), time.Now().UnixMilli(), stage, "").Err()
}

// RetryingHanded is Retrying for a task whose payload names no campaign: it
// is marked retrying in the campaign it was handed, if any (record field h,
// written when the wrong kind of its id, queued in that campaign, was
// dropped in its favour; its settle counts it there).
func (l *Ledger) RetryingHanded(ctx context.Context, taskID, clearMark, stage string) error {
	return retryingScript.Run(ctx, l.rdb, []string{Key(taskID)}, taskID, "", clearMark, l.cfg.Retention.Milliseconds(), time.Now().UnixMilli(), stage, "h").Err()
}

// Unmark takes back a delivery's "call sent" mark (its call did not go out).
func Unmark(ctx context.Context, rdb redis.UniversalClient, taskID, mark string) error {
	return retryingScript.Run(ctx, rdb, []string{Key(taskID)}, taskID, "", mark, 0, 0, "", "").Err()
}

// Record reads a message's record: its outcome (nil while it has none), its
// campaign, and whether a call is marked sent.
func (l *Ledger) Record(ctx context.Context, taskID string) (o *Outcome, campaign string, sent bool, err error) {
	v, err := l.rdb.HMGet(ctx, Key(taskID), "o", "c", "s").Result()
	if err != nil {
		return nil, "", false, err
	}
	if s, ok := v[0].(string); ok {
		out, err := ParseRow(s)
		if err != nil {
			return nil, "", false, err
		}
		o = &out
	}
	campaign, _ = v[1].(string)
	mark, _ := v[2].(string)
	row, _ := v[0].(string)
	// Once there is an outcome, the mark counts only if it was kept with it.
	sent = mark != "" && (o == nil || strings.HasSuffix(row, "|k"))
	return o, campaign, sent, nil
}
