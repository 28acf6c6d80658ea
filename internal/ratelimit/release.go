package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Released is what Release did.
type Released struct {
	// Why the location was parked (its reason in the parking list).
	Why string
	// Woken: the location's waiting cancels moved back to their lane's
	// pending list (behind what is pending there) instead of waiting for
	// the parking's end. Waiting: those it names (woken, running or gone).
	Woken, Waiting int
}

// ErrNotParked: Release found no parking for the location.
var ErrNotParked = errors.New("location is not parked")

// releaseScript lifts a location's parking (the reserve's and a spent
// day's, with any cool-down), and drops it from the parking and cooling
// lists. KEYS the location's hash, parked list, reasons, cooling list,
// waiters; ARGV location, now ms. Returns {0} when it was not parked, else
// {1, why, waiting task ids...}.
var releaseScript = redis.NewScript(`
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local h = redis.call("HMGET", KEYS[1], "c", "p")
local until_ = tonumber(redis.call("ZSCORE", KEYS[2], ARGV[1]) or "0")
-- Not parked: out of the list, and no parking beyond a re-probe's wait.
if until_ < tonumber(ARGV[2]) and tonumber(h[2] or "0") <= now + 10000000 then return {0} end
local why = redis.call("HGET", KEYS[3], ARGV[1]) or ""
-- The parking's end, not its absence: the first call re-probes the
-- budget, the others wait for its answer (a budget still spent parks the
-- location again after one call, not a window's allowance).
redis.call("HDEL", KEYS[1], "c")
redis.call("HSET", KEYS[1], "p", 1)
redis.call("ZREM", KEYS[2], ARGV[1])
redis.call("HDEL", KEYS[3], ARGV[1])
redis.call("ZREM", KEYS[4], ARGV[1])
local out = {1, why}
for _, id in ipairs(redis.call("ZRANGE", KEYS[5], 0, -1)) do out[#out + 1] = id end
return out
`)

// wakeScript moves the named tasks that wait in a lane's retry or
// scheduled set (a snooze) to its pending list, as asynq's own "run task"
// does (behind the lane's pending backlog); tasks in any other state
// (active, pending, archived: a dead letter stays one) are left alone.
// ARGV lanes count, the lanes, then task ids. Returns how many it moved.
var wakeScript = redis.NewScript(`
local nl = tonumber(ARGV[1])
local moved = 0
local t = redis.call("TIME")
local nowns = t[1] .. string.format("%06d", tonumber(t[2])) .. "000"
for i = nl + 2, #ARGV do
  local id = ARGV[i]
  for l = 2, nl + 1 do
    local base = "asynq:{" .. ARGV[l] .. "}:"
    local st = redis.call("HGET", base .. "t:" .. id, "state")
    if (st == "retry" or st == "scheduled") and redis.call("ZREM", base .. st, id) == 1 then
      -- pending_since, as asynq's forwarder sets it: the lane's latency
      -- gauge reads it.
      redis.call("HSET", base .. "t:" .. id, "state", "pending", "pending_since", nowns)
      redis.call("LPUSH", base .. "pending", id)
      moved = moved + 1
      break
    end
  end
end
return moved
`)

// releaseBatch bounds a wake script's ids (and so its time on Redis).
const releaseBatch = 500

// Release lifts a location's parking for its daily budget at once (an
// operator who knows the budget is back: HighLevel reset it, or raised
// it), and wakes the cancels waiting for it in lanes. Its first call
// re-probes the budget while the others wait for the answer: a budget
// still spent parks the location again after one call. progress, when not nil, is
// told how many waiting tasks each step handled, of how many. Returns
// ErrNotParked when nothing was parked.
func Release(ctx context.Context, rdb redis.UniversalClient, location string, lanes []string, progress func(n, total int)) (Released, error) {
	v, err := releaseScript.Run(ctx, rdb, []string{locKey(location), KeyParked, KeyWhy, KeyCooling, waitKey(location)},
		location, strconv.FormatInt(time.Now().UnixMilli(), 10)).Slice()
	if err != nil {
		return Released{}, err
	}
	if n, _ := v[0].(int64); n == 0 {
		return Released{}, ErrNotParked
	}
	r := Released{}
	r.Why, _ = v[1].(string)
	ids := v[2:]
	r.Waiting = len(ids)
	for len(ids) > 0 {
		n := min(len(ids), releaseBatch)
		args := make([]any, 0, 1+len(lanes)+n)
		args = append(args, len(lanes))
		for _, l := range lanes {
			args = append(args, l)
		}
		args = append(args, ids[:n]...)
		moved, err := wakeScript.Run(ctx, rdb, []string{}, args...).Int()
		if err != nil {
			return r, fmt.Errorf("the parking is lifted, but waking its cancels failed after %d (they run when their snooze ends): %w", r.Woken, err)
		}
		r.Woken += moved
		if progress != nil {
			progress(n, r.Waiting)
		}
		ids = ids[n:]
	}
	return r, nil
}
