package producer_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/campaign"
	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/producer"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
)

// TestAskedMoreUrgentlyItMoves: a message already queued on a slower lane
// (a campaign's bulk cancel), sent again on a more urgent one (the
// contact's opt-out), moves to that lane in its own campaign, whether it
// waited for its turn, a snooze (a parked location) or a retry; the answer
// says so. A running task stays, and so does a task asked for on its own
// lane or a slower one.
func TestAskedMoreUrgentlyItMoves(t *testing.T) {
	t.Parallel()
	const loc = "locMove0000000000001"
	type state func(t *testing.T, rdb *redis.Client, lane, tid string)
	pending := func(*testing.T, *redis.Client, string, string) {}
	// retrying: a real asynq server runs the task once and fails it, so its
	// message carries the retry count and the last error.
	retrying := func(t *testing.T, rdb *redis.Client, lane, tid string) {
		failOnce(t, rdb, lane, tid)
	}
	// snoozed: in the retry set the way a snooze leaves it, with no attempt spent.
	snoozed := func(t *testing.T, rdb *redis.Client, lane, tid string) {
		ctx := context.Background()
		require.Equal(t, int64(1), rdb.LRem(ctx, "asynq:{"+lane+"}:pending", 1, tid).Val())
		require.NoError(t, rdb.ZAdd(ctx, "asynq:{"+lane+"}:retry", redis.Z{Score: float64(time.Now().Add(time.Hour).Unix()), Member: tid}).Err())
		require.NoError(t, rdb.HSet(ctx, "asynq:{"+lane+"}:t:"+tid, "state", "retry").Err())
	}
	scheduled := func(t *testing.T, rdb *redis.Client, lane, tid string) {
		ctx := context.Background()
		require.Equal(t, int64(1), rdb.LRem(ctx, "asynq:{"+lane+"}:pending", 1, tid).Val())
		require.NoError(t, rdb.ZAdd(ctx, "asynq:{"+lane+"}:scheduled", redis.Z{Score: float64(time.Now().Add(time.Hour).Unix()), Member: tid}).Err())
		require.NoError(t, rdb.HSet(ctx, "asynq:{"+lane+"}:t:"+tid, "state", "scheduled").Err())
	}
	active := func(t *testing.T, rdb *redis.Client, lane, tid string) {
		ctx := context.Background()
		require.Equal(t, int64(1), rdb.LRem(ctx, "asynq:{"+lane+"}:pending", 1, tid).Val())
		require.NoError(t, rdb.LPush(ctx, "asynq:{"+lane+"}:active", tid).Err())
		require.NoError(t, rdb.HSet(ctx, "asynq:{"+lane+"}:t:"+tid, "state", "active").Err())
	}
	for i, tc := range []struct {
		name       string
		from       string
		state      state
		asked      string
		wantLane   string
		wantState  asynq.TaskState
		wantRetied int
	}{
		{"pending on bulk, asked urgent", tasks.QueueBulk, pending, tasks.QueueUrgent, tasks.QueueUrgent, asynq.TaskStatePending, 0},
		{"pending on bulk, asked default", tasks.QueueBulk, pending, tasks.QueueDefault, tasks.QueueDefault, asynq.TaskStatePending, 0},
		{"pending on default, asked urgent", tasks.QueueDefault, pending, tasks.QueueUrgent, tasks.QueueUrgent, asynq.TaskStatePending, 0},
		{"snoozed on bulk, asked urgent", tasks.QueueBulk, snoozed, tasks.QueueUrgent, tasks.QueueUrgent, asynq.TaskStatePending, 0},
		{"retrying on bulk, asked urgent", tasks.QueueBulk, retrying, tasks.QueueUrgent, tasks.QueueUrgent, asynq.TaskStatePending, 1},
		{"scheduled on bulk, asked urgent", tasks.QueueBulk, scheduled, tasks.QueueUrgent, tasks.QueueUrgent, asynq.TaskStatePending, 0},
		{"running on bulk, asked urgent: it stays", tasks.QueueBulk, active, tasks.QueueUrgent, tasks.QueueBulk, asynq.TaskStateActive, 0},
		{"pending on urgent, asked bulk: it stays", tasks.QueueUrgent, pending, tasks.QueueBulk, tasks.QueueUrgent, asynq.TaskStatePending, 0},
		{"pending on default, asked default: it stays", tasks.QueueDefault, pending, tasks.QueueDefault, tasks.QueueDefault, asynq.TaskStatePending, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			rdb := redisServer.Client(t)
			// No promotion of imminent bulk items to default: the lane is the one given.
			p := producer.New(rdb, producer.Config{PromoteWithin: -1})
			id := fmt.Sprintf("mMove%015d", i)
			tid := tasks.TaskID(ghl.KindMessage, id)
			first := producer.Item{Kind: ghl.KindMessage, MessageID: id, LocationID: loc, CampaignID: "campaign", Queue: tc.from}
			require.Equal(t, producer.Enqueued, p.Enqueue(ctx, first).Status)
			tc.state(t, rdb, tc.from, tid)
			// Another message pending on the lane: it stays.
			other := producer.Item{Kind: ghl.KindMessage, MessageID: id + "x", LocationID: loc, CampaignID: "campaign", Queue: tc.from}
			require.Equal(t, producer.Enqueued, p.Enqueue(ctx, other).Status)

			optOut := producer.Item{Kind: ghl.KindMessage, MessageID: id, LocationID: loc, CampaignID: "opt-out", Queue: tc.asked}
			r := p.Enqueue(ctx, optOut)
			moves := tc.wantLane != tc.from
			staysOn := ""
			if !moves && slices.Index(tasks.Queues, tc.asked) < slices.Index(tasks.Queues, tc.from) {
				staysOn = tc.from // it could not move, and the answer says where it is
			}
			require.Equal(t, producer.Result{Status: producer.AlreadyQueued, HeldBy: "campaign", Elsewhere: true, Moved: moves, StaysOn: staysOn}, r)

			// One task for the message, on the lane it waits on, read by asynq.
			insp := asynq.NewInspectorFromRedisClient(rdb)
			for _, l := range tasks.Queues {
				if l != tc.wantLane {
					require.Zero(t, rdb.Exists(ctx, "asynq:{"+l+"}:t:"+tid).Val(), "no copy on %s", l)
					continue
				}
				info, err := insp.GetTaskInfo(l, tid)
				require.NoError(t, err)
				require.Equal(t, tc.wantLane, info.Queue)
				require.Equal(t, tc.wantState, info.State)
				require.Equal(t, tc.wantRetied, info.Retried, "its attempts so far")
				if tc.wantRetied > 0 {
					require.Equal(t, "boom", info.LastErr, "its last error")
				}
				var pl tasks.CancelPayload
				require.NoError(t, json.Unmarshal(info.Payload, &pl))
				require.Equal(t, "campaign", pl.CampaignID, "it settles in its own campaign")
			}
			if moves {
				require.Equal(t, []string{tid}, rdb.LRange(ctx, "asynq:{"+tc.wantLane+"}:pending", 0, -1).Val())
				for _, k := range []string{"retry", "scheduled"} {
					require.Zero(t, rdb.ZScore(ctx, "asynq:{"+tc.from+"}:"+k, tid).Val(), "nothing left in %s", k)
				}
				require.Equal(t, []string{tid + "x"}, rdb.LRange(ctx, "asynq:{"+tc.from+"}:pending", 0, -1).Val(),
					"the other message still waits where it was")
				ps, err := insp.GetTaskInfo(tc.wantLane, tid)
				require.NoError(t, err)
				require.WithinDuration(t, time.Now(), ps.NextProcessAt, time.Minute, "it runs now")
			}

			// Counted once, in its own campaign; the opt-out's campaign
			// counts nothing of it (its answer named the holder).
			for c, want := range map[string]int64{"campaign": 2, "opt-out": 0} {
				s, _, err := campaign.New(rdb, 0).Get(ctx, c)
				require.NoError(t, err)
				require.Equal(t, want, s.Total, "%s's total", c)
			}

			// The second time: it is where it was asked to be, and stays.
			again := p.Enqueue(ctx, optOut)
			require.Equal(t, producer.Result{Status: producer.AlreadyQueued, HeldBy: "campaign", Elsewhere: true, StaysOn: staysOn}, again)
		})
	}
}

// failOnce runs task tid on lane with a real asynq server whose handler
// fails it, and waits until it waits for its retry.
func failOnce(t *testing.T, rdb *redis.Client, lane, tid string) {
	t.Helper()
	srv := asynq.NewServerFromRedisClient(rdb, asynq.Config{
		Queues: map[string]int{lane: 1}, Concurrency: 1,
		RetryDelayFunc: func(int, error, *asynq.Task) time.Duration { return time.Hour },
		LogLevel:       asynq.FatalLevel,
	})
	mux := asynq.NewServeMux()
	mux.HandleFunc(tasks.TypeCancelMessage, func(context.Context, *asynq.Task) error { return errors.New("boom") })
	require.NoError(t, srv.Start(mux))
	defer srv.Shutdown()
	insp := asynq.NewInspectorFromRedisClient(rdb)
	require.Eventually(t, func() bool {
		info, err := insp.GetTaskInfo(lane, tid)
		return err == nil && info.State == asynq.TaskStateRetry
	}, 10*time.Second, 20*time.Millisecond)
}

// TestAPendingBacklogTooLongToSearchStays: a pending task's place is
// searched from both ends of its lane's list up to a reach, so one deeper
// than that from both ends stays where it waits, and the answer says where
// it stays; a snoozed task on the same lane still moves, and so does a
// pending one near the end of the list named after the deep one (the deep
// search does not spend the budget of those near the ends: it did).
func TestAPendingBacklogTooLongToSearchStays(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	p := producer.New(rdb, producer.Config{PromoteWithin: -1})
	require.Equal(t, producer.Enqueued, p.Enqueue(ctx, backlogItem("mBacklogPending00001", tasks.QueueBulk)).Status)
	require.Equal(t, producer.Enqueued, p.Enqueue(ctx, backlogItem("mBacklogSnoozed00001", tasks.QueueBulk)).Status)
	snoozedID := tasks.TaskID(ghl.KindMessage, "mBacklogSnoozed00001")
	require.Equal(t, int64(1), rdb.LRem(ctx, "asynq:{bulk}:pending", 1, snoozedID).Val())
	require.NoError(t, rdb.ZAdd(ctx, "asynq:{bulk}:retry", redis.Z{Score: float64(time.Now().Add(time.Hour).Unix()), Member: snoozedID}).Err())
	require.NoError(t, rdb.HSet(ctx, "asynq:{bulk}:t:"+snoozedID, "state", "retry").Err())
	// The reach on each side of the pending one (one past what is read),
	// then one more pending task newest of all.
	filler := producer.PromoteReach
	fill(t, rdb, "LPUSH", filler)
	fill(t, rdb, "RPUSH", filler)
	require.Equal(t, producer.Enqueued, p.Enqueue(ctx, backlogItem("mBacklogNewest000001", tasks.QueueBulk)).Status)

	out := p.EnqueueBatch(ctx, []producer.Item{backlogItem("mBacklogPending00001", tasks.QueueUrgent), backlogItem("mBacklogSnoozed00001", tasks.QueueUrgent),
		backlogItem("mBacklogNewest000001", tasks.QueueUrgent)})
	require.Equal(t, producer.Result{Status: producer.AlreadyQueued, StaysOn: tasks.QueueBulk}, out[0], "past the reach: it stays, and says where")
	require.Equal(t, producer.Result{Status: producer.AlreadyQueued, Moved: true}, out[1], "a snoozed task costs no search")
	require.Equal(t, producer.Result{Status: producer.AlreadyQueued, Moved: true}, out[2], "one at the end still moves")
	require.Equal(t, "pending", rdb.HGet(ctx, "asynq:{bulk}:t:"+tasks.TaskID(ghl.KindMessage, "mBacklogPending00001"), "state").Val())
	require.Equal(t, "pending", rdb.HGet(ctx, "asynq:{urgent}:t:"+snoozedID, "state").Val())
	require.Equal(t, int64(2*filler+1), rdb.LLen(ctx, "asynq:{bulk}:pending").Val(), "the backlog is whole")

	// Exactly the reach from the end that runs next: it moves.
	require.NoError(t, rdb.LTrim(ctx, "asynq:{bulk}:pending", 0, int64(filler)+producer.PromoteReach-1).Err())
	require.Equal(t, producer.Result{Status: producer.AlreadyQueued, Moved: true}, p.Enqueue(ctx, backlogItem("mBacklogPending00001", tasks.QueueUrgent)))
}

// TestManyMoveOutOfALongBacklog: a request moving many cancels out of a
// long bulk backlog moves every one near either end of it (the newest, and
// the next to run): the budget is charged for what is read, not for the
// backlog's length once per task (the review saw 49 of 100 move past a
// 20,000-task backlog).
func TestManyMoveOutOfALongBacklog(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	p := producer.New(rdb, producer.Config{PromoteWithin: -1})
	var bulk, urgent []producer.Item
	for i := range 100 {
		id := fmt.Sprintf("mBacklogMany%08d", i)
		bulk, urgent = append(bulk, backlogItem(id, tasks.QueueBulk)), append(urgent, backlogItem(id, tasks.QueueUrgent))
	}
	// 50 next to run, 200,000 behind them, and 50 newest.
	for _, r := range p.EnqueueBatch(ctx, bulk[:50]) {
		require.Equal(t, producer.Enqueued, r.Status)
	}
	fill(t, rdb, "LPUSH", 200_000)
	for _, r := range p.EnqueueBatch(ctx, bulk[50:]) {
		require.Equal(t, producer.Enqueued, r.Status)
	}
	for i, r := range p.EnqueueBatch(ctx, urgent) {
		require.Equal(t, producer.Result{Status: producer.AlreadyQueued, Moved: true}, r, "item %d", i)
	}
	require.Equal(t, int64(200_000), rdb.LLen(ctx, "asynq:{bulk}:pending").Val(), "only the filler is left")
	require.Equal(t, int64(100), rdb.LLen(ctx, "asynq:{urgent}:pending").Val())
}

// TestARepeatInOneRequestMovesToItsLane: a request naming one message
// twice, the second time on a more urgent lane (an API request with urgent
// set on one of two items), leaves it on the more urgent lane, once.
func TestARepeatInOneRequestMovesToItsLane(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	p := producer.New(rdb, producer.Config{PromoteWithin: -1})
	where := func(id string) []string {
		var on []string
		for _, l := range tasks.Queues {
			tid := tasks.TaskID(ghl.KindMessage, id)
			if rdb.Exists(ctx, "asynq:{"+l+"}:t:"+tid).Val() == 1 {
				on = append(on, l)
			}
			for _, e := range rdb.LRange(ctx, "asynq:{"+l+"}:pending", 0, -1).Val() {
				if e == tid {
					on = append(on, l+" list")
				}
			}
		}
		return on
	}
	// New: queued on bulk, moved to urgent by the repeat.
	out := p.EnqueueBatch(ctx, []producer.Item{backlogItem("mRepeatNew0000000001", tasks.QueueBulk), backlogItem("mRepeatNew0000000001", tasks.QueueUrgent)})
	require.Equal(t, []producer.Result{{Status: producer.Enqueued}, {Status: producer.AlreadyQueued, Moved: true}}, out)
	require.Equal(t, []string{"urgent", "urgent list"}, where("mRepeatNew0000000001"))
	// Pending on bulk, then default and urgent in one request: urgent.
	require.Equal(t, producer.Enqueued, p.Enqueue(ctx, backlogItem("mRepeatOld0000000001", tasks.QueueBulk)).Status)
	out = p.EnqueueBatch(ctx, []producer.Item{backlogItem("mRepeatOld0000000001", tasks.QueueDefault), backlogItem("mRepeatOld0000000001", tasks.QueueUrgent),
		backlogItem("mRepeatOld0000000001", tasks.QueueBulk)})
	require.Equal(t, []producer.Result{{Status: producer.AlreadyQueued, Moved: true}, {Status: producer.AlreadyQueued, Moved: true}, {Status: producer.AlreadyQueued}}, out)
	require.Equal(t, []string{"urgent", "urgent list"}, where("mRepeatOld0000000001"))
	s, _, err := campaign.New(rdb, 0).Get(ctx, "campaign")
	require.NoError(t, err)
	require.Equal(t, int64(2), s.Total, "each message counted once")
}

func backlogItem(id, lane string) producer.Item {
	return producer.Item{Kind: ghl.KindMessage, MessageID: id, LocationID: "locBacklog0000000001", CampaignID: "campaign", Queue: lane}
}

// fill pushes n filler entries on the bulk lane's pending list (cmd LPUSH:
// newer than what is there, RPUSH: to run before it); they are deleted at
// the end.
func fill(t *testing.T, rdb *redis.Client, cmd string, n int) {
	t.Helper()
	require.ErrorIs(t, rdb.Eval(context.Background(), `for i = 1, tonumber(ARGV[1]) do redis.call(ARGV[2], KEYS[1], "filler") end`,
		[]string{"asynq:{bulk}:pending"}, n, cmd).Err(), redis.Nil)
	t.Cleanup(func() { rdb.Del(context.Background(), "asynq:{bulk}:pending") })
}

// TestADeepRepeatMovesToItsLane: a pending task a thousand entries from
// both ends of its list (searched after the items near the ends), named
// twice in one request on two more urgent lanes, ends on the more urgent
// of the two, once.
func TestADeepRepeatMovesToItsLane(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	p := producer.New(rdb, producer.Config{PromoteWithin: -1})
	const id = "mDeepRepeat000000001"
	require.Equal(t, producer.Enqueued, p.Enqueue(ctx, backlogItem(id, tasks.QueueBulk)).Status)
	fill(t, rdb, "LPUSH", 1000)
	fill(t, rdb, "RPUSH", 1000)
	out := p.EnqueueBatch(ctx, []producer.Item{backlogItem(id, tasks.QueueDefault), backlogItem(id, tasks.QueueUrgent), backlogItem(id, tasks.QueueBulk)})
	require.Equal(t, []producer.Result{{Status: producer.AlreadyQueued, Moved: true}, {Status: producer.AlreadyQueued, Moved: true}, {Status: producer.AlreadyQueued}}, out)
	tid := tasks.TaskID(ghl.KindMessage, id)
	require.Equal(t, []string{tid}, rdb.LRange(ctx, "asynq:{urgent}:pending", 0, -1).Val())
	require.Zero(t, rdb.LLen(ctx, "asynq:{default}:pending").Val())
	require.Zero(t, rdb.Exists(ctx, "asynq:{default}:t:"+tid, "asynq:{bulk}:t:"+tid).Val())
	require.Equal(t, int64(2000), rdb.LLen(ctx, "asynq:{bulk}:pending").Val())
}

// TestADeepRepeatBroughtNearAnEnd: an id left for the deep search (513th
// newest) is brought near the list's head when another item of the same
// request moves out of the list before its repeat; the repeat joins the
// first search instead of moving it on its own, so the first is answered
// moved (not stays_on), and the more urgent of the two lanes wins.
func TestADeepRepeatBroughtNearAnEnd(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		a, b string
		want []producer.Result
	}{
		{tasks.QueueDefault, tasks.QueueUrgent, []producer.Result{{Status: producer.AlreadyQueued, Moved: true}, {Status: producer.AlreadyQueued, Moved: true}, {Status: producer.AlreadyQueued, Moved: true}}},
		{tasks.QueueUrgent, tasks.QueueDefault, []producer.Result{{Status: producer.AlreadyQueued, Moved: true}, {Status: producer.AlreadyQueued, Moved: true}, {Status: producer.AlreadyQueued}}},
		{tasks.QueueUrgent, tasks.QueueUrgent, []producer.Result{{Status: producer.AlreadyQueued, Moved: true}, {Status: producer.AlreadyQueued, Moved: true}, {Status: producer.AlreadyQueued}}},
	} {
		t.Run(tt.a+" then "+tt.b, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			rdb := redisServer.Client(t)
			p := producer.New(rdb, producer.Config{PromoteWithin: -1})
			const x, y = "mNearX00000000000001", "mNearY00000000000001"
			require.Equal(t, producer.Enqueued, p.Enqueue(ctx, backlogItem(x, tasks.QueueBulk)).Status)
			fill(t, rdb, "LPUSH", 511)
			fill(t, rdb, "RPUSH", 1000)
			require.Equal(t, producer.Enqueued, p.Enqueue(ctx, backlogItem(y, tasks.QueueBulk)).Status)
			out := p.EnqueueBatch(ctx, []producer.Item{backlogItem(x, tt.a), backlogItem(y, tasks.QueueUrgent), backlogItem(x, tt.b)})
			require.Equal(t, tt.want, out)
			xid := tasks.TaskID(ghl.KindMessage, x)
			require.Equal(t, "pending", rdb.HGet(ctx, "asynq:{urgent}:t:"+xid, "state").Val(), "on the more urgent lane")
			require.Zero(t, rdb.Exists(ctx, "asynq:{default}:t:"+xid, "asynq:{bulk}:t:"+xid).Val())
			require.Equal(t, int64(2), rdb.LLen(ctx, "asynq:{urgent}:pending").Val())
		})
	}
}
