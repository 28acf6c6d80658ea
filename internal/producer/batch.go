package producer

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/ghlcancel/ghlcancel/internal/deadletter"
	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/ledger"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
)

// BatchSize is how many items one enqueue script call takes.
const BatchSize = 500

// enqueueScript is the one rule for what sending a message means, applied
// atomically per item (see Producer.Enqueue):
//
//   - a task for the message is pending, scheduled, retrying or running on
//     any lane: already queued (1);
//   - its record holds a terminal outcome other than a dead letter: already
//     done (2), nothing is queued, unless force, or unless it is expired
//     and sent again with a send time not past (or none); the campaign's
//     outcome row stands in for a record that expired while the campaign
//     lived on;
//   - it was dead-lettered (record, or an archived asynq copy), or it is
//     forced: the archived copy and the dead letter are removed, its old
//     outcome is taken out of its campaign, and a fresh task (attempts from
//     zero) is queued: requeued (3);
//   - otherwise a fresh task is queued: enqueued (0).
//
// A message sent without a campaign that would run again stays in the
// campaign its record names: the script changes nothing for it and hands
// it back (4) with that campaign, and the caller sends it again under it.
//
// Campaign totals count distinct messages: only a message new to the
// campaign adds to it; a requeued one that moves to another campaign is
// moved. The task is written the way asynq v0.26.0's own enqueue script
// does (HSET msg/state/pending_since, LPUSH to the lane).
// KEYS: dead-letter records, dead-letter index. ARGV: now ns, now ms,
// retention ms, then per item: encoded message, task id, lane, campaign,
// location, force (forceArg), from a dead letter (1/0: its record is removed in
// any case, atomically, so a new dead letter of the fresh task is never
// removed by mistake).
var enqueueScript = redis.NewScript(ledger.Lua + `
local LANES = {` + luaLanes() + `}
local nowns, now, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local res = {}
local delta, locs = {}, {}
local function count(c, n, loc)
  if c == "" then return end
  delta[c] = (delta[c] or 0) + n
  if loc ~= "" and n > 0 then
    locs[c] = locs[c] or {}
    locs[c][loc] = true
  end
end
local function drop_dead(id)
  redis.call("HDEL", KEYS[1], id)
  redis.call("ZREM", KEYS[2], id)
end
-- other_kind is the task id of the same message id as the other kind.
local function other_kind(id)
  if string.sub(id, 1, 4) == "msg:" then return "email:" .. string.sub(id, 5) end
  if string.sub(id, 1, 6) == "email:" then return "msg:" .. string.sub(id, 7) end
  return id
end
-- wrong_kind_of: the campaign ("" for none) of a dead letter wrong_kind of
-- the same message id as the other kind (the task that named the wrong
-- kind), or nil when there is none.
local function wrong_kind_of(id)
  local other = other_kind(id)
  if other == id then return nil end
  local rec = redis.call("HMGET", "ghlcancel:msg:" .. other, "o", "c")
  if not rec[1] or string.sub(rec[1], 1, 25) ~= "dead_lettered|wrong_kind|" then return nil end
  return rec[2] or ""
end
-- handback_to: the campaign an item sent without one is handed back to
-- because of a wrong-kind dead letter of its id: only when the id has no
-- record of its own (its own campaign comes first), and the wrong kind's
-- campaign is still there.
local function handback_to(id)
  local c = wrong_kind_of(id)
  if not c or c == "" or not clive(c) then return nil end
  -- Its own record comes first; a superseded row is none (it belongs to
  -- no campaign).
  local own = redis.call("HGET", "ghlcancel:msg:" .. id, "o")
  if own and not superseded(own) then return nil end
  if not own and redis.call("EXISTS", "ghlcancel:msg:" .. id) == 1 then return nil end
  return c
end
-- drop_wrong_kind: the message is sent as the kind HighLevel has; the
-- wrong kind's task is not a message of its own. Its record, dead letter
-- and archived copy go, and its campaign no longer counts it (the campaign
-- this one is sent to counts the message).
local function drop_wrong_kind(id)
  local prevc = wrong_kind_of(id)
  if not prevc then return end
  local other = other_kind(id)
  drop_dead(other)
  -- Only a campaign that counted it (its row is there: a reused name's
  -- new campaign never did) gives it up.
  if prevc ~= "" and clive(prevc) and creopen(prevc, other) then count(prevc, -1, "") end
  -- Its record keeps a superseded row (counted nowhere), as the settle's
  -- drop does: the first file run again answers already done, instead of
  -- queuing every id as new (3 calls each, and a total that grew until
  -- they were dropped again).
  supersede("ghlcancel:msg:" .. other, "0|0|" .. now, ttl)
  for _, l in ipairs(LANES) do
    local tk = "asynq:{" .. l .. "}:t:" .. other
    local st = redis.call("HGET", tk, "state")
    if st == "archived" or st == "completed" then
      redis.call("DEL", tk)
      redis.call("ZREM", "asynq:{" .. l .. "}:" .. st, other)
    end
  end
end
-- Task ids to push per lane: one LPUSH per lane for the whole batch (in
-- the same order as one LPUSH per task).
local push, seen, seenlane = {}, {}, {}
local function enqueue(lane, id, msg, campaign)
  seen[id] = campaign -- a repeat later in the batch is already queued, in this campaign
  seenlane[id] = lane -- where: a more urgent repeat moves it (no table per item: this is every task's path)
  redis.call("HSET", "asynq:{" .. lane .. "}:t:" .. id, "msg", msg, "state", "pending", "pending_since", nowns)
  push[lane] = push[lane] or {}
  local p = push[lane]
  p[#p+1] = id
end
-- RANK: a lane's place, the most urgent first (LANES' order).
local RANK = {}
for r, l in ipairs(LANES) do RANK[l] = r end
-- moved: positions of the items already queued that moved to the more
-- urgent lane they were asked for; scan: pending-list entries LREM may
-- still read in this call (finding a pending task's place reads its
-- lane's list up to it: the budget bounds how long this call holds Redis).
-- deferred: ids left for the deep pass (a repeat joins its first there).
local deferred = {}
local moved, stayed, deeper, scan = {}, {}, {}, ` + strconv.Itoa(promoteScanMax) + `
-- find_pending: where id is in list key, searched from both ends (the
-- newest, and the next to run) in windows from w growing fourfold up to
-- maxw entries per end, each entry read charged to scan (a window is at
-- most a third of what is left: a miss at the head, a hit at the tail and
-- the LREM that follows fit in it). Returns the end it is nearer (1 the
-- head, -1 the tail) and how many entries from that end it is, or nil.
local function find_pending(key, id, w, maxw)
  local len, prev = redis.call("LLEN", key), 0
  while true do
    local lim = math.min(w, maxw, len, math.floor(scan / 3))
    if lim <= prev then return nil end -- nothing new to read
    prev = lim
    local p = redis.call("LPOS", key, id, "MAXLEN", lim)
    if p then
      scan = scan - (p + 1)
      return 1, p + 1
    end
    scan = scan - lim
    if lim >= len then return nil end -- read whole: not there
    p = redis.call("LPOS", key, id, "RANK", -1, "MAXLEN", lim)
    if p then
      scan = scan - (len - p)
      return -1, len - p
    end
    scan = scan - lim
    if 2 * lim >= len then return nil end
    w = w * 4
  end
end
-- promote moves task id, waiting in state st (pending, scheduled or retry)
-- on lane from, to lane to's pending list, behind what is pending there
-- (as asynq's "run task" does). Its message keeps its payload, retries
-- and last error; only its queue changes. A running task (active) stays:
-- its attempt is under way. Returns whether it moved, or "deeper" for a
-- pending task not within ` + strconv.Itoa(promoteNear) + ` entries of either end of its list, when
-- deep is false: it is searched deeper once every item had its turn (so
-- a few deep ones do not spend the budget of the many near the ends).
local function promote(id, from, st, to, tmsg, hc, deep)
  if st ~= "pending" and st ~= "scheduled" and st ~= "retry" then return false end
  local nm = task_with_queue(tmsg, to)
  if not nm or redis.call("EXISTS", "asynq:{" .. to .. "}:t:" .. id) == 1 then return false end
  local base, dir = "asynq:{" .. from .. "}:", 1
  if st == "pending" then
    local key, d = base .. "pending", nil
    if deep then
      dir, d = find_pending(key, id, ` + strconv.Itoa(4*promoteNear) + `, ` + strconv.Itoa(promoteReach) + `)
    else
      dir, d = find_pending(key, id, ` + strconv.Itoa(promoteNear) + `, ` + strconv.Itoa(promoteNear) + `)
      if not dir then return "deeper" end
    end
    if not dir then return false end
    -- The LREM from that end reads as far again (within the window's third).
    scan = scan - d
  end
  if not take_waiting(base, id, st, dir) then return false end
  enqueue(to, id, nm, hc or "")
  return true
end
-- promote_repeat moves a task this call queued (or moved) for an earlier
-- item of the batch to the more urgent lane a repeat asks for: it is not
-- pushed yet, so it leaves its lane's push list.
local function promote_repeat(id, to)
  local was = seenlane[id]
  if not was or not (RANK[to] < RANK[was]) then return false end
  local tk = "asynq:{" .. was .. "}:t:" .. id
  local nm = task_with_queue(redis.call("HGET", tk, "msg") or "", to)
  if not nm then return false end
  local p = push[was]
  for k = #p, 1, -1 do
    if p[k] == id then
      table.remove(p, k)
      break
    end
  end
  redis.call("DEL", tk)
  enqueue(to, id, nm, seen[id])
  return true
end
local n = (#ARGV - 3) / 7
-- The common case, a batch of messages never seen (a new file): no task on
-- any lane and no record for any of them. One EXISTS over the whole batch
-- tells it; then only a repeat inside the batch is already queued.
-- A dead letter wrong_kind may exist (rare): each item's other kind is
-- checked too (its record key joins the EXISTS, and the rule below).
local wk = redis.call("EXISTS", "` + ledger.KeyWrongKind + `") == 1
local per = ` + strconv.Itoa(existsPerItem) + `
if wk then per = per + 1 end
local keys = {}
for i = 0, n - 1 do
  local id = ARGV[3 + i * 7 + 2]
  ` + existsKeys + `
  keys[#keys+1] = "ghlcancel:msg:" .. id
  if wk then keys[#keys+1] = "ghlcancel:msg:" .. other_kind(id) end
end
local fresh = redis.call("EXISTS", unpack(keys)) == 0
-- A message's record expires with its last call, while its campaign lives
-- on as long as the campaign is fed: the campaign's outcome row then still
-- says what became of it. One HMGET per campaign in the batch reads them.
local rows, ids = {}, {}
for i = 0, n - 1 do
  local a = 3 + i * 7
  local c = ARGV[a+4]
  if c ~= "" then
    ids[c] = ids[c] or {}
    ids[c][#ids[c]+1] = ARGV[a+2]
  end
end
-- A dry run's campaign says nothing was cancelled: no cancel is counted
-- in it (code 5, refused).
local dryc = {}
for c, cids in pairs(ids) do
  local k, ko = ck(c)
  -- Rows of a campaign that is gone are no one's (an outcomes hash once
  -- could outlive its campaign): only a live campaign's rows count.
  local v = {}
  if clive(c) then
    v = redis.call("HMGET", ko, unpack(cids))
    dryc[c] = redis.call("HGET", k, "dry_run") == "1"
  end
  for j, id in ipairs(cids) do
    if v[j] then
      rows[c] = rows[c] or {}
      rows[c][id] = v[j]
    end
  end
end
local adopt = {}
-- held: for an item already queued or done, the campaign that counts the
-- message when it is not the one asked for ("" for none: a sweep follows
-- the message, not only its campaign).
local held = {}
local function hold(i, c, campaign)
  c = c or ""
  if c ~= campaign then
    held[#held+1] = i
    held[#held+1] = c
  end
end
for i = 0, n - 1 do
  local a = 3 + i * 7
  local msg, id, lane, campaign, loc, force, fromdead = ARGV[a+1], ARGV[a+2], ARGV[a+3], ARGV[a+4], ARGV[a+5], ARGV[a+6], ARGV[a+7]
  local row = rows[campaign] and rows[campaign][id]
  if dryc[campaign] then
    res[i+1] = 5
  elseif seen[id] then
    res[i+1] = 1
    hold(i, seen[id], campaign)
    if promote_repeat(id, lane) then moved[#moved+1] = i end
    if fromdead == "1" then drop_dead(id) end
  elseif not row and (fresh or redis.call("EXISTS", unpack(keys, i * per + 1, (i + 1) * per)) == 0) then
    -- Never seen: no task on any lane, no record.
    if fromdead == "1" then drop_dead(id) end
    count(campaign, 1, loc)
    res[i+1] = 0
    enqueue(lane, id, msg, campaign)
  elseif wk and campaign == "" and handback_to(id) then
    -- Sent as the right kind without a campaign: it stays in the one the
    -- wrong kind's dead letter counts it in (the caller sends it again
    -- under it; nothing changed here).
    res[i+1] = 4
    adopt[#adopt+1] = i
    adopt[#adopt+1] = handback_to(id)
  else
    -- Superseded (dropped as the wrong kind while the other kind stood
    -- for the message), and now the other kind is the dead letter
    -- wrong_kind (both kinds found wrong one after the other): this kind
    -- is the message's, and its superseded row is no outcome; it runs.
    local unsuper = wk and wrong_kind_of(id) ~= nil
    if wk then drop_wrong_kind(id) end
    local live, livest, stale, archived = false, nil, {}, false
    for _, l in ipairs(LANES) do
      local st = redis.call("HGET", "asynq:{" .. l .. "}:t:" .. id, "state")
      if st == "archived" or st == "completed" then
        stale[#stale+1] = {l, st}
        if st == "archived" then archived = true end
      elseif st then
        live, livest = l, st
      end
    end
    if live then
      res[i+1] = 1
      -- Its campaign: the queued task's, or the one it was handed.
      local tmsg = redis.call("HGET", "asynq:{" .. live .. "}:t:" .. id, "msg")
      local hc = task_campaign(tmsg)
      if hc == "" then hc = redis.call("HGET", "ghlcancel:msg:" .. id, "h") end
      hold(i, hc, campaign)
      -- Asked for on a more urgent lane than the one it waits on: it
      -- moves there, in its own campaign (its counts do not change).
      -- A task that cannot move (running, or too deep in a backlog) stays,
      -- and the answer names the slower lane it stays on.
      if RANK[lane] < RANK[live] then
        -- A repeat of an id left for the deep pass joins it there (a move
        -- in between may have brought it near an end).
        local m = "deeper"
        if not deferred[id] then m = tmsg and promote(id, live, livest, lane, tmsg, hc, false) end
        if m == "deeper" then
          deferred[id] = true
          deeper[#deeper+1] = {i, id, live, livest, lane, tmsg, hc}
        elseif m then
          moved[#moved+1] = i
        else
          stayed[#stayed+1] = i
          stayed[#stayed+1] = live
        end
      end
      -- A requeued dead letter whose message is queued again is stale.
      if fromdead == "1" then drop_dead(id) end
    else
      local rk = "ghlcancel:msg:" .. id
      local rec = redis.call("HMGET", rk, "o", "c")
      local o, prevc = rec[1], rec[2]
      -- No record (it expired), but the campaign remembers the message.
      if not o and row then o, prevc = row, campaign end
      -- Dead: its record says so, or asynq archived it and nothing else is
      -- recorded (an archived copy next to a true outcome is only stale).
      local dead = (o and string.sub(o, 1, 14) == "dead_lettered|") or (archived and not o)
        or (unsuper and superseded(o))
      -- Forced: always ("1"), or ("b<ms>") over an outcome recorded
      -- before that time (the row's last field).
      local forced = string.sub(force, 1, 1) == "1"
      if not forced and o and string.sub(force, 1, 1) == "b" then
        local at = tonumber(string.match(o, "^[^|]*|[^|]*|[^|]*|[^|]*|(%d+)") or "0")
        forced = at < tonumber(string.match(force, "^b(%d+)"))
      end
      -- Expired is decided from a send time, never by HighLevel: sent
      -- again with a send time not yet past (or none), the message may
      -- still be scheduled (the first send time was wrong), so it runs.
      if not forced and o and string.sub(force, -1) == "e" and string.sub(o, 1, 8) == "expired|" then
        forced = true
      end
      local runs = not (o and not dead and not forced)
      if runs and campaign == "" and prevc and prevc ~= "" and clive(prevc) then
        -- Sent again without a campaign, it stays in the one it has: the
        -- caller sends it again under that campaign (nothing changed here).
        res[i+1] = 4
        adopt[#adopt+1] = i
        adopt[#adopt+1] = prevc
      else
        for _, s in ipairs(stale) do
          redis.call("DEL", "asynq:{" .. s[1] .. "}:t:" .. id)
          redis.call("ZREM", "asynq:{" .. s[1] .. "}:" .. s[2], id)
        end
        if dead or fromdead == "1" then drop_dead(id) end
        if not runs then
          res[i+1] = 2
          hold(i, prevc, campaign)
        else
          if o or prevc or archived then
            prevc = prevc or ""
            -- Its campaign still exists: take the old outcome out of it (and
            -- move the message if it is sent under another campaign). If the
            -- campaign expired, the message counts as new where it is sent.
            if prevc ~= "" and clive(prevc) then
              -- The campaign counts the message if its row is there, or if
              -- it has no outcome yet (counted at enqueue, never settled);
              -- a reused name's new campaign with no row never counted it.
              local counted = creopen(prevc, id) or not o
              count(prevc, 0, "")
              if prevc ~= campaign then
                if counted then
                  count(prevc, -1, "")
                  -- Said where it went (its total shrank), and taken
                  -- back if it had come from there.
                  redis.call("HINCRBY", (ck(prevc)), "moved:" .. campaign, 1)
                  local back = (ck(campaign))
                  if tonumber(redis.call("HGET", back, "moved:" .. prevc) or "0") > 0 then
                    redis.call("HINCRBY", back, "moved:" .. prevc, -1)
                  end
                end
                count(campaign, 1, loc)
              elseif not counted then
                count(campaign, 1, loc)
              end
            else
              count(campaign, 1, loc)
            end
            -- The "call sent" mark stays only if the outcome said so (its last
            -- call may have been carried out) or there was no outcome.
            local keepmark = (not o) or string.sub(o, -2) == "|k"
            -- Sent again, it starts from the cancel: no verify stage.
            redis.call("HDEL", rk, "o", "v", "h")
            if redis.call("EXISTS", rk) == 1 then
              if keepmark then
                redis.call("HSET", rk, "c", campaign)
              else
                redis.call("HSET", rk, "c", campaign, "s", "")
              end
            end
            -- Forced over a cancel: the forced call's "not found" is that
            -- cancel, as after a lost answer.
            if forced and string.sub(o, 1, 10) == "cancelled|" then
              redis.call("HSET", rk, "s", "forced")
              if redis.call("PTTL", rk) == -1 then redis.call("PEXPIRE", rk, ttl) end -- a record made here
            end
            res[i+1] = 3
          else
            count(campaign, 1, loc)
            res[i+1] = 0
            -- A record with no outcome and no campaign may hold a hand-over
            -- (field h) whose task was deleted by hand: it is no one's now.
            redis.call("HDEL", rk, "h")
          end
          enqueue(lane, id, msg, campaign)
        end
      end
    end
  end
end
-- The pending tasks not found near the ends of their lists, searched
-- deeper with what is left of the budget, in the request's order (an id
-- named again in the batch: its first search decides, and a more urgent
-- repeat moves it on).
local decided = {}
for _, d in ipairs(deeper) do
  local i, id, live, lane = d[1], d[2], d[3], d[5]
  local m = decided[id]
  if m == nil then
    m = promote(id, live, d[4], lane, d[6], d[7], true)
    decided[id] = m
  elseif m then
    m = promote_repeat(id, lane)
  end
  if m then
    moved[#moved+1] = i
  elseif decided[id] == false then
    stayed[#stayed+1] = i
    stayed[#stayed+1] = live
  end
end
for lane, ids in pairs(push) do
  if #ids > 0 then redis.call("LPUSH", "asynq:{" .. lane .. "}:pending", unpack(ids)) end
end
for c, d in pairs(delta) do
  if locs[c] then
    local _, _, _, kl = ck(c)
    local m = {}
    for loc in pairs(locs[c]) do m[#m+1] = loc end
    redis.call("SADD", kl, unpack(m))
  end
  cadd(c, d, "", now, ttl)
end
return {res, adopt, held, moved, stayed}`)

// existsKeys appends, in enqueueScript, the task key of id on every lane
// to keys; with the record's key that makes existsPerItem keys per item
// (one more, the other kind's record, while a wrong-kind dead letter may
// exist).
var existsKeys = func() string {
	var b strings.Builder
	for _, l := range tasks.Queues {
		b.WriteString("keys[#keys+1] = " + strconv.Quote("asynq:{"+l+"}:t:") + " .. id; ")
	}
	return b.String()
}()

var existsPerItem = len(tasks.Queues) + 1

// promoteScanMax bounds the pending-list entries one enqueue script call
// reads to move tasks waiting there to a more urgent lane: a pending
// task's place is searched from both ends of its lane's list (LPOS, then
// LREM from the nearer end), about 1.7 ms per 100,000 entries read on the
// 2-core machine, so at most about 17 ms per call. Every item's task is
// looked for within promoteNear entries of either end first (a batch of
// 500 misses reads 512,000 at most); those not found there are searched
// deeper, up to promoteReach from each end, with what is left, in the
// request's order. A task past that stays where it waits, and its answer
// says so (StaysOn). Tasks snoozed or retrying (a sorted set) always move.
const (
	promoteScanMax = 1_000_000
	promoteNear    = 512
	promoteReach   = ledger.MoveReach
)

// luaLanes lists the lanes as Lua string literals.
func luaLanes() string {
	q := make([]string, len(tasks.Queues))
	for i, l := range tasks.Queues {
		q[i] = strconv.Quote(l)
	}
	return strings.Join(q, ", ")
}

// encodeTaskMessage is asynq v0.26.0's TaskMessage protobuf (internal/proto
// asynq.proto) for the fields our tasks set. TestBatchTasksDecodeInAsynq
// checks it against asynq's own decoder.
func encodeTaskMessage(typ string, payload []byte, id, queue string, retry int, timeout time.Duration) []byte {
	b := make([]byte, 0, len(payload)+len(typ)+len(id)+len(queue)+24)
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendString(b, typ)
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendBytes(b, payload)
	b = protowire.AppendTag(b, 3, protowire.BytesType)
	b = protowire.AppendString(b, id)
	b = protowire.AppendTag(b, 4, protowire.BytesType)
	b = protowire.AppendString(b, queue)
	if retry != 0 {
		b = protowire.AppendTag(b, 5, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(int32(retry)))
	}
	// asynq stores whole seconds and reads 0 as "no timeout": round up.
	if secs := int64((timeout + time.Second - 1) / time.Second); secs > 0 {
		b = protowire.AppendTag(b, 8, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(secs))
	}
	return b
}

// EnqueueBatch enqueues items with one script call per BatchSize items and
// returns a Result per item, in order. Dedupe is atomic across lanes; items
// handed back to be sent under their own campaign take a second call.
func (p *Producer) EnqueueBatch(ctx context.Context, items []Item) []Result {
	out := make([]Result, len(items))
	conflict := conflictingKinds(items)
	for start := 0; start < len(items); start += BatchSize {
		end := min(start+BatchSize, len(items))
		if conflict == nil {
			p.enqueueChunk(ctx, items[start:end], out[start:end])
			continue
		}
		// The conflicting items are left out of the chunk and answered here.
		var keep []Item
		var at []int
		for i := start; i < end; i++ {
			if err := conflict[i]; err != nil {
				out[i] = Result{Status: Rejected, Err: err}
				continue
			}
			keep, at = append(keep, items[i]), append(at, i)
		}
		res := make([]Result, len(keep))
		p.enqueueChunk(ctx, keep, res)
		for j, r := range res {
			out[at[j]] = r
		}
	}
	return out
}

// ErrConflictingKind: the same message id came as a message and as an
// email in one batch. A message has one kind: the input is inconsistent,
// and the caller learns it at once (both would be queued, and the wrong
// one's call and read-backs spent before it is dropped as superseded).
var ErrConflictingKind = errors.New("a message has one kind")

// conflictingKinds maps the position of each item whose message id an
// earlier item of items names as the other kind to its error; nil when
// there is none (always, when items hold one kind only).
func conflictingKinds(items []Item) map[int]error {
	if len(items) < 2 || !slices.ContainsFunc(items, func(it Item) bool { return it.Kind != items[0].Kind }) {
		return nil
	}
	check := make(KindCheck, len(items))
	var out map[int]error
	for i, it := range items {
		if _, kind, ok := check.Conflict(i, it); ok {
			if out == nil {
				out = map[int]error{}
			}
			out[i] = fmt.Errorf("%w: message %s came as %s a few items before; send it once, as the kind HighLevel has",
				ErrConflictingKind, it.MessageID, kind)
		}
	}
	return out
}

// KindCheck remembers each message id's first kind in a batch (a message
// has one kind: one id as both would be queued and counted twice).
type KindCheck map[string]kindSeen

type kindSeen struct {
	at   int
	kind ghl.Kind
	loc  string
}

// Conflict records it at position at; when an earlier item named its id
// as the other kind, ok is true with that item's position and kind.
func (c KindCheck) Conflict(at int, it Item) (first int, kind ghl.Kind, ok bool) {
	s, seen := c[it.MessageID]
	if !seen {
		c[it.MessageID] = kindSeen{at, it.Kind, it.LocationID}
		return 0, "", false
	}
	return s.at, s.kind, s.kind != it.Kind
}

// LocationConflict, after Conflict recorded it (at position at): when an
// earlier item named its id at another location, ok is true with that
// item's position and location. A message is in one location: the second
// would answer already_queued and its location be dropped, while the first's
// token cannot reach the message.
func (c KindCheck) LocationConflict(at int, it Item) (first int, loc string, ok bool) {
	s, seen := c[it.MessageID]
	return s.at, s.loc, seen && s.at != at && s.loc != it.LocationID
}

func (p *Producer) enqueueChunk(ctx context.Context, items []Item, out []Result) {
	now := time.Now()
	args := make([]any, 3, 3+len(items)*6)
	args[0] = strconv.FormatInt(now.UnixNano(), 10)
	args[1] = now.UnixMilli()
	args[2] = p.cfg.CampaignRetention.Milliseconds()
	idx := make([]int, 0, len(items)) // positions sent to the script
	lanes := map[string]bool{}
	for i, it := range items {
		queue := p.lane(it, now)
		if !ValidQueue(queue) {
			out[i] = Result{Status: Rejected, Err: fmt.Errorf("unknown queue %q", queue)}
			continue
		}
		payload, err := tasks.Payload(it.Kind, tasks.CancelPayload{
			MessageID: it.MessageID, LocationID: it.LocationID, CampaignID: it.CampaignID, SendAt: it.SendAt,
			Event: it.Event, EventAt: it.EventAt,
		})
		if err != nil {
			out[i] = Result{Status: Rejected, Err: err}
			continue
		}
		id := tasks.TaskID(it.Kind, it.MessageID)
		retry := tasks.AsynqMaxRetry(cmp.Or(it.MaxRetry, p.cfg.MaxRetry, tasks.MaxRetryDefault)) // negative: none
		args = append(args, encodeTaskMessage(tasks.TypeFor(it.Kind), payload, id, queue, retry,
			cmp.Or(p.cfg.Timeout, tasks.TimeoutDefault)), id, queue, it.CampaignID, it.LocationID, forceArg(it, now), flag(it.fromDeadLetter))
		idx = append(idx, i)
		lanes[queue] = true
	}
	if len(idx) == 0 {
		return
	}
	for l := range lanes {
		if _, ok := p.published.Load(l); !ok {
			if err := p.rdb.SAdd(ctx, "asynq:queues", l).Err(); err != nil {
				fail(out, idx, err)
				return
			}
			p.published.Store(l, true)
		}
	}
	// The script runs whole or not at all, so an interrupted caller (Ctrl-C)
	// never leaves tasks queued without their campaign count.
	v, err := enqueueScript.Run(ctx, p.rdb, []string{deadletter.KeyRecords, deadletter.KeyIndex}, args...).Slice()
	if err != nil {
		fail(out, idx, err)
		return
	}
	rep, err := parseEnqueueReply(v, items, idx)
	if err != nil {
		fail(out, idx, err)
		return
	}
	for j, i := range idx {
		switch c := rep.codes[j]; {
		case c < int64(len(scriptStatus)):
			h := rep.held[j]
			out[i] = Result{Status: scriptStatus[c], HeldBy: h.campaign, Elsewhere: h.elsewhere, Moved: rep.moved[j], StaysOn: rep.stayed[j]}
		case c == codeDryRun:
			out[i] = Result{Status: Rejected, Err: fmt.Errorf("%w (campaign %s)", ErrIntoDryRun, items[i].CampaignID)}
		}
	}
	if len(rep.again) > 0 {
		// Under their own campaign the script never hands them back.
		res := make([]Result, len(rep.again))
		p.enqueueChunk(ctx, rep.again, res)
		for k, i := range rep.at {
			out[i] = res[k]
		}
	}
}

// enqueueReply is enqueueScript's reply, read: a code per item sent; the
// items handed back, to send again under their campaign (again), with
// their positions in the caller's items (at); where each item already
// queued or done is held; which items already queued moved to the more
// urgent lane they were asked for; and, for those that could not, the
// slower lane they stay on.
type enqueueReply struct {
	codes  []int64
	again  []Item
	at     []int
	held   []held
	moved  []bool
	stayed []string
}

// parseEnqueueReply reads enqueueScript's {codes, handed back, held,
// moved, stayed} reply: a code per item sent; for each item handed back
// (code 4) its position and campaign; for each item already queued or done
// (codes 1 and 2) in another campaign than asked (or none), its position
// and that campaign; the positions of the items already queued (code 1)
// that moved lanes; for those that stay on a slower lane, their position
// and that lane. A reply of another shape is an error: no item is reported
// from it.
func parseEnqueueReply(v []any, items []Item, idx []int) (enqueueReply, error) {
	bad := errors.New("enqueue script: unexpected reply")
	if len(v) != 5 {
		return enqueueReply{}, bad
	}
	raw, ok := v[0].([]any)
	adopt, ok2 := v[1].([]any)
	heldList, ok3 := v[2].([]any)
	movedList, ok4 := v[3].([]any)
	stayedList, ok5 := v[4].([]any)
	if !ok || !ok2 || !ok3 || !ok4 || !ok5 || len(raw) != len(idx) || len(adopt)%2 != 0 || len(heldList)%2 != 0 || len(stayedList)%2 != 0 {
		return enqueueReply{}, bad
	}
	r := enqueueReply{codes: make([]int64, len(raw)), held: make([]held, len(raw)), moved: make([]bool, len(raw)), stayed: make([]string, len(raw))}
	handed := 0
	for j, x := range raw {
		c, ok := x.(int64)
		if !ok || c < 0 || c > codeDryRun {
			return enqueueReply{}, bad
		}
		if c == 4 {
			handed++
		}
		r.codes[j] = c
	}
	if handed != len(adopt)/2 {
		return enqueueReply{}, bad
	}
	position := func(x any, fits func(code int64) bool, used map[int64]bool) (int64, bool) {
		j, ok := x.(int64)
		if !ok || j < 0 || j >= int64(len(idx)) || !fits(r.codes[j]) || used[j] {
			return 0, false
		}
		used[j] = true
		return j, true
	}
	pairs := func(list []any, fits func(code int64) bool, none bool, each func(j int64, c string)) bool {
		used := map[int64]bool{}
		for k := 0; k < len(list); k += 2 {
			j, ok := position(list[k], fits, used)
			c, ok2 := list[k+1].(string)
			if !ok || !ok2 || (c == "" && !none) {
				return false
			}
			each(j, c)
		}
		return true
	}
	if !pairs(adopt, func(code int64) bool { return code == 4 }, false, func(j int64, c string) {
		it := items[idx[j]]
		it.CampaignID = c
		r.again, r.at = append(r.again, it), append(r.at, idx[j])
	}) {
		return enqueueReply{}, bad
	}
	if !pairs(heldList, func(code int64) bool { return code == 1 || code == 2 }, true, func(j int64, c string) { r.held[j] = held{c, true} }) {
		return enqueueReply{}, bad
	}
	used := map[int64]bool{}
	for _, x := range movedList {
		j, ok := position(x, func(code int64) bool { return code == 1 }, used)
		if !ok {
			return enqueueReply{}, bad
		}
		r.moved[j] = true
	}
	if !pairs(stayedList, func(code int64) bool { return code == 1 }, false, func(j int64, l string) { r.stayed[j] = l }) {
		return enqueueReply{}, bad
	}
	for _, l := range r.stayed {
		if l != "" && !ValidQueue(l) {
			return enqueueReply{}, bad
		}
	}
	for j := range r.moved {
		if r.moved[j] && r.stayed[j] != "" {
			return enqueueReply{}, bad
		}
	}
	return r, nil
}

// held is where an item already queued or done is counted: elsewhere, in
// campaign ("" for none), or (elsewhere false) in the campaign asked for.
type held struct {
	campaign  string
	elsewhere bool
}

// forceArg is the enqueue script's force field: "1", "b<ms>" (ForceBefore)
// or "0", followed by "e" when the item's send time is not past (or not
// given): an expired outcome then runs again.
func forceArg(it Item, now time.Time) string {
	f := flag(it.Force)
	if !it.Force && it.ForceBefore > 0 {
		f = "b" + strconv.FormatInt(it.ForceBefore, 10)
	}
	if !tasks.PastSendTime(it.SendAt, now) {
		f += "e"
	}
	return f
}

func flag(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// codeDryRun is enqueueScript's answer for an item sent into a dry run's
// campaign: refused (ErrIntoDryRun), nothing changed.
const codeDryRun = 5

// scriptStatus maps enqueueScript's per-item answers.
var scriptStatus = []Status{0: Enqueued, 1: AlreadyQueued, 2: AlreadyDone, 3: Requeued}

func fail(out []Result, idx []int, err error) {
	for _, i := range idx {
		out[i] = Result{Status: Rejected, Err: fmt.Errorf("%w: %w", ErrUnavailable, err)}
	}
}
