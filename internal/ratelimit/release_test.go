package ratelimit

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/ghl"
)

// TestReleaseWakesOnlySnoozedTasks: a release lifts both kinds of parking
// and the location's cool-down, drops it from the lists, and moves the
// waiting tasks that sit in a lane's retry or scheduled set to pending. An
// archived task (a dead letter), an active or pending one, and a task of
// another lane's name are left as they are.
func TestReleaseWakesOnlySnoozedTasks(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	l := New(rdb, Config{DailyReserve: 100, DailyPark: time.Hour, MaxWait: time.Millisecond})
	lim := ghl.Limits{Present: true, Max: 100, Interval: 10 * time.Second, Remaining: 90, DailyLimit: 200000, DailyRemaining: 50}
	require.NoError(t, l.Observe(ctx, "locW", lim, nil))
	require.NoError(t, l.coolDown(ctx, "locW", time.Minute, "429"))

	task := func(lane, id, state string) {
		base := "asynq:{" + lane + "}:"
		require.NoError(t, rdb.HSet(ctx, base+"t:"+id, "state", state, "msg", "x").Err())
		switch state {
		case "retry", "scheduled", "archived":
			require.NoError(t, rdb.ZAdd(ctx, base+state, redis.Z{Score: float64(time.Now().Add(time.Hour).Unix()), Member: id}).Err())
		case "pending":
			require.NoError(t, rdb.LPush(ctx, base+"pending", id).Err())
		}
		require.NoError(t, rdb.ZAdd(ctx, waitKey("locW"), redis.Z{Score: float64(time.Now().Add(time.Hour).UnixMicro()), Member: id}).Err())
	}
	task("bulk", "msg:retry", "retry")
	task("default", "msg:sched", "scheduled")
	task("bulk", "msg:dead", "archived")
	task("bulk", "msg:active", "active")
	task("urgent", "msg:pending", "pending")
	require.NoError(t, rdb.ZAdd(ctx, waitKey("locW"), redis.Z{Score: 1, Member: "msg:gone"}).Err())

	var steps []int
	r, err := Release(ctx, rdb, "locW", []string{"urgent", "default", "bulk"}, func(n, total int) { steps = append(steps, n, total) })
	require.NoError(t, err)
	require.Equal(t, 2, r.Woken)
	require.Equal(t, 6, r.Waiting)
	require.Equal(t, []int{6, 6}, steps)
	require.Contains(t, r.Why, "daily budget nearly spent: 50 of 200000 left")
	state := func(lane, id string) string { return rdb.HGet(ctx, "asynq:{"+lane+"}:t:"+id, "state").Val() }
	require.Equal(t, "pending", state("bulk", "msg:retry"))
	require.Equal(t, "pending", state("default", "msg:sched"))
	require.Equal(t, "archived", state("bulk", "msg:dead"), "a dead letter stays one")
	require.Equal(t, "active", state("bulk", "msg:active"))
	require.Equal(t, []string{"msg:retry"}, rdb.LRange(ctx, "asynq:{bulk}:pending", 0, -1).Val())
	since, err := rdb.HGet(ctx, "asynq:{bulk}:t:msg:retry", "pending_since").Int64()
	require.NoError(t, err, "pending_since set, as asynq's forwarder does (the lane latency gauge reads it)")
	require.InDelta(t, float64(time.Now().UnixNano()), float64(since), float64(5*time.Second))
	require.Equal(t, "1", rdb.HGet(ctx, locKey("locW"), fieldPark).Val(), "the parking is left ended: the first call re-probes")
	require.Equal(t, []string{"msg:sched"}, rdb.LRange(ctx, "asynq:{default}:pending", 0, -1).Val())
	require.Zero(t, rdb.ZCard(ctx, "asynq:{bulk}:retry").Val())
	require.Equal(t, int64(1), rdb.ZCard(ctx, "asynq:{bulk}:archived").Val())

	// Parking, cool-down and list entries are gone: a bulk call goes now.
	parked, err := Parked(ctx, rdb)
	require.NoError(t, err)
	require.Empty(t, parked)
	require.Zero(t, rdb.ZScore(ctx, KeyCooling, "locW").Val())
	_, err = l.Admit(ctx, req("locW", "msg:retry"))
	require.NoError(t, err, "the re-probe")
	_, err = l.Admit(ctx, req("locW", "msg:sched"))
	var sn *SnoozeError
	require.ErrorAs(t, err, &sn, "the others wait for its answer")

	_, err = Release(ctx, rdb, "locW", []string{"bulk"}, nil)
	require.ErrorIs(t, err, ErrNotParked)
}
