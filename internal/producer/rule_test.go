package producer_test

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/campaign"
	"github.com/ghlcancel/ghlcancel/internal/deadletter"
	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/ledger"
	"github.com/ghlcancel/ghlcancel/internal/producer"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
)

// TestEnqueueRule: what sending a message means, by the state the message
// is in, for every producer (the batch script is the one rule). Each row
// brings a message into a state the way the system does, sends it again
// (to campaign c1 unless said), and checks the status, what is queued, and
// the campaign's distinct total and completeness.
func TestEnqueueRule(t *testing.T) {
	t.Parallel()
	const id, loc = "mRule0000000000000001", "locRule000000000000001"
	tid := tasks.TaskID(ghl.KindMessage, id)
	item := producer.Item{Kind: ghl.KindMessage, MessageID: id, LocationID: loc, CampaignID: "c1"}
	type bundle struct {
		rdb  *redis.Client
		p    *producer.Producer
		led  *ledger.Ledger
		insp *asynq.Inspector
	}
	enqueued := func(t *testing.T, b bundle) {
		require.Equal(t, producer.Enqueued, b.p.Enqueue(context.Background(), item).Status)
	}
	// settled takes the pending task off the queue as a worker would and
	// records its outcome.
	settled := func(outcome, reason string) func(*testing.T, bundle) {
		return func(t *testing.T, b bundle) {
			enqueued(t, b)
			require.NoError(t, b.insp.DeleteTask(tasks.QueueDefault, tid))
			f := ledger.Final{TaskID: tid, CampaignID: "c1", Outcome: ledger.Outcome{Outcome: outcome, Reason: reason, Attempts: 1}}
			if outcome == ledger.DeadLettered {
				f.Dead = &deadletter.Record{Kind: "message", MessageID: id, LocationID: loc, CampaignID: "c1", Queue: tasks.QueueDefault, Reason: reason}
			}
			_, _, err := b.led.Settle(context.Background(), f)
			require.NoError(t, err)
		}
	}
	// archived: asynq archived the task (SkipRetry on a dead letter).
	archived := func(t *testing.T, b bundle) {
		settled(ledger.DeadLettered, "unauthorized")(t, b)
		task, err := tasks.NewCancelTask(ghl.KindMessage, tasks.CancelPayload{MessageID: id, LocationID: loc, CampaignID: "c1"}, tasks.TaskOptions{})
		require.NoError(t, err)
		_, err = asynq.NewClientFromRedisClient(b.rdb).Enqueue(task)
		require.NoError(t, err)
		require.NoError(t, b.insp.ArchiveTask(tasks.QueueDefault, tid))
	}
	// expiredRecord: the message's record expired (it lives as long as its
	// last call) while its campaign, fed with other messages, lived on.
	expiredRecord := func(before func(*testing.T, bundle)) func(*testing.T, bundle) {
		return func(t *testing.T, b bundle) {
			before(t, b)
			require.NoError(t, b.rdb.Del(context.Background(), ledger.Key(tid)).Err())
		}
	}
	// reused: c1 expired after the message settled in it, and a new c1 was
	// started under the name with another message: it never counted this one.
	reused := func(before func(*testing.T, bundle)) func(*testing.T, bundle) {
		return func(t *testing.T, b bundle) {
			before(t, b)
			ctx := context.Background()
			require.NoError(t, b.rdb.Del(ctx, ledger.CampaignKey("c1"), ledger.CampaignOutcomesKey("c1"),
				ledger.CampaignRetryingKey("c1"), ledger.CampaignLocationsKey("c1")).Err())
			require.Equal(t, producer.Enqueued, b.p.Enqueue(ctx, producer.Item{Kind: ghl.KindMessage, MessageID: "mRuleOther0000000001",
				LocationID: loc, CampaignID: "c1", Queue: tasks.QueueBulk}).Status)
		}
	}
	tests := []struct {
		name     string
		before   func(*testing.T, bundle)
		force    bool
		campaign string
		want     producer.Status
		queued   bool  // a pending task exists afterwards
		total    int64 // c1's total afterwards
		complete bool  // c1 complete afterwards
	}{
		{"new", func(*testing.T, bundle) {}, false, "c1", producer.Enqueued, true, 1, false},
		{"pending", enqueued, false, "c1", producer.AlreadyQueued, true, 1, false},
		{"pending, sent to another lane or campaign", enqueued, false, "c2", producer.AlreadyQueued, true, 1, false},
		{"retrying", func(t *testing.T, b bundle) {
			enqueued(t, b)
			require.NoError(t, b.rdb.HSet(context.Background(), "asynq:{default}:t:"+tid, "state", "retry").Err())
		}, false, "c1", producer.AlreadyQueued, true, 1, false},
		{"active", func(t *testing.T, b bundle) {
			enqueued(t, b)
			require.NoError(t, b.rdb.HSet(context.Background(), "asynq:{default}:t:"+tid, "state", "active").Err())
		}, false, "c1", producer.AlreadyQueued, true, 1, false},
		{"cancelled", settled(ledger.Cancelled, ""), false, "c1", producer.AlreadyDone, false, 1, true},
		{"cancelled, sent again later to another campaign", settled(ledger.Cancelled, ""), false, "c2", producer.AlreadyDone, false, 1, true},
		{"not found", settled(ledger.NotFound, ""), false, "c1", producer.AlreadyDone, false, 1, true},
		// Sent again with no send time (TestExpiredSentAgain: with one),
		// an expired message may still be scheduled: it runs.
		{"expired", settled(ledger.Expired, ""), false, "c1", producer.Requeued, true, 1, false},
		{"cancelled, forced", settled(ledger.Cancelled, ""), true, "c1", producer.Requeued, true, 1, false},
		{"dead-lettered (record only)", settled(ledger.DeadLettered, "unauthorized"), false, "c1", producer.Requeued, true, 1, false},
		{"dead-lettered and archived by asynq", archived, false, "c1", producer.Requeued, true, 1, false},
		{"cancelled, and asynq also archived a stale copy", func(t *testing.T, b bundle) {
			settled(ledger.Cancelled, "")(t, b)
			task, err := tasks.NewCancelTask(ghl.KindMessage, tasks.CancelPayload{MessageID: id, LocationID: loc, CampaignID: "c1"}, tasks.TaskOptions{})
			require.NoError(t, err)
			_, err = asynq.NewClientFromRedisClient(b.rdb).Enqueue(task)
			require.NoError(t, err)
			require.NoError(t, b.insp.ArchiveTask(tasks.QueueDefault, tid))
		}, false, "c1", producer.AlreadyDone, false, 1, true},
		{"dead-lettered after its campaign expired: it counts anew", func(t *testing.T, b bundle) {
			settled(ledger.DeadLettered, "unauthorized")(t, b)
			require.NoError(t, b.rdb.Del(context.Background(), ledger.CampaignKey("c1"), ledger.CampaignOutcomesKey("c1"),
				ledger.CampaignRetryingKey("c1"), ledger.CampaignLocationsKey("c1")).Err())
		}, false, "c1", producer.Requeued, true, 1, false},
		{"cancelled, its record expired while c1 lived on", expiredRecord(settled(ledger.Cancelled, "")), false, "c1", producer.AlreadyDone, false, 1, true},
		{"cancelled, its record expired, forced", expiredRecord(settled(ledger.Cancelled, "")), true, "c1", producer.Requeued, true, 1, false},
		{"dead-lettered, its record expired while c1 lived on", expiredRecord(settled(ledger.DeadLettered, "unauthorized")), false, "c1", producer.Requeued, true, 1, false},
		{"dead-lettered, sent again without a campaign: it stays in c1", settled(ledger.DeadLettered, "unauthorized"), false, "", producer.Requeued, true, 1, false},
		{"cancelled, forced without a campaign: it stays in c1", settled(ledger.Cancelled, ""), true, "", producer.Requeued, true, 1, false},
		{"cancelled, sent again without a campaign", settled(ledger.Cancelled, ""), false, "", producer.AlreadyDone, false, 1, true},
		// c1 completed (dead-lettered) and is left with nothing to wait
		// for: it stays complete, not "running" until it expires.
		{"dead-lettered, sent to another campaign: it moves (c1 is left empty)", settled(ledger.DeadLettered, "unauthorized"), false, "c2", producer.Requeued, true, 0, true},
		// A reused name's new campaign neither gives up (it left it at 0
		// and complete with its message pending) nor keeps uncounted (it
		// ran uncounted) a message it never counted.
		{"dead-lettered in c1's earlier life, sent to another campaign", reused(settled(ledger.DeadLettered, "unauthorized")), false, "c2", producer.Requeued, true, 1, false},
		{"dead-lettered in c1's earlier life, sent to the new c1", reused(settled(ledger.DeadLettered, "unauthorized")), false, "c1", producer.Requeued, true, 2, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			rdb := redisServer.Client(t)
			b := bundle{rdb: rdb, p: producer.New(rdb, producer.Config{}), led: ledger.New(rdb, ledger.Config{}),
				insp: asynq.NewInspectorFromRedisClient(rdb)}
			tt.before(t, b)
			it := item
			it.Force, it.CampaignID = tt.force, tt.campaign
			r := b.p.Enqueue(ctx, it)
			require.Equal(t, tt.want, r.Status, "%v", r.Err)
			info, err := b.insp.GetTaskInfo(tasks.QueueDefault, tid)
			if tt.queued {
				require.NoError(t, err)
				require.NotEqual(t, asynq.TaskStateArchived, info.State)
				require.Zero(t, info.Retried, "attempts start from zero")
				var pl tasks.CancelPayload
				require.NoError(t, json.Unmarshal(info.Payload, &pl))
				// Sent without a campaign, it runs in the one it has; an
				// already queued task keeps its own.
				want := tt.campaign
				if want == "" || tt.want == producer.AlreadyQueued {
					want = "c1"
				}
				require.Equal(t, want, pl.CampaignID, "the queued task's campaign")
			} else {
				require.Error(t, err, "nothing queued")
			}
			n, err := deadletter.New(rdb).Count(ctx)
			require.NoError(t, err)
			if tt.want == producer.Requeued {
				require.Zero(t, n, "a requeued message's dead letter is gone")
			}
			s, _, err := campaign.New(rdb, 0).Get(ctx, "c1")
			require.NoError(t, err)
			require.Equal(t, tt.total, s.Total, "c1's distinct total")
			require.Equal(t, tt.complete, s.Complete, "c1 complete")
			require.Zero(t, s.DeadLettered, "no dead letter counted in c1 after a resend")
			require.GreaterOrEqual(t, s.Done, int64(0))
			if s.Total > 0 {
				for _, k := range []string{ledger.CampaignKey("c1"), ledger.CampaignLocationsKey("c1")} {
					ttl, err := rdb.PTTL(ctx, k).Result()
					require.NoError(t, err)
					require.Positive(t, ttl, "%s expires", k)
				}
			}
			// The outcomes hash, made by a settle within a minute of the
			// campaign's last update, expires too.
			if n, err := rdb.Exists(ctx, ledger.CampaignOutcomesKey("c1")).Result(); err == nil && n == 1 {
				ttl, err := rdb.PTTL(ctx, ledger.CampaignOutcomesKey("c1")).Result()
				require.NoError(t, err)
				require.Positive(t, ttl, "c1's outcomes expire")
			}
			if n, err := rdb.Exists(ctx, ledger.Key(tid)).Result(); err == nil && n == 1 {
				ttl, err := rdb.PTTL(ctx, ledger.Key(tid)).Result()
				require.NoError(t, err)
				require.Positive(t, ttl, "the message's record expires")
			}
			archived, err := rdb.ZCard(ctx, "asynq:{default}:archived").Result()
			require.NoError(t, err)
			require.Zero(t, archived, "no stale archived copy is left")
			if tt.campaign == "c2" && tt.want == producer.Requeued {
				s2, _, err := campaign.New(rdb, 0).Get(ctx, "c2")
				require.NoError(t, err)
				require.Equal(t, int64(1), s2.Total, "the message counts in the campaign it moved to")
				require.Equal(t, int64(1), s2.Pending)
				// c1's total shrank: it says where the message went (it
				// said nothing, and its dead letters vanished).
				if tt.total == 0 {
					require.Equal(t, map[string]int64{"c2": 1}, s.MovedTo)
					require.Contains(t, s.Render(campaign.Status{}, time.Time{}), "1 message(s) moved out, sent again under another campaign that counts them now (1 to c2)")
				} else {
					require.Empty(t, s.MovedTo, "c1 never counted it")
				}
			}
		})
	}
}

// TestEnqueueBatchEdges: the rule inside one batch, where an item's answer
// depends on the items before it or is decided in a second script call.
func TestEnqueueBatchEdges(t *testing.T) {
	t.Parallel()
	const loc = "locEdge00000000000001"
	ctx := context.Background()
	msg := func(id, c string) producer.Item {
		return producer.Item{Kind: ghl.KindMessage, MessageID: id, LocationID: loc, CampaignID: c}
	}
	// deadIn sends id to c and dead-letters it there, as a worker would.
	deadIn := func(t *testing.T, rdb *redis.Client, p *producer.Producer, id, c string) {
		t.Helper()
		require.Equal(t, producer.Enqueued, p.Enqueue(ctx, msg(id, c)).Status)
		tid := tasks.TaskID(ghl.KindMessage, id)
		require.NoError(t, asynq.NewInspectorFromRedisClient(rdb).DeleteTask(tasks.QueueDefault, tid))
		_, _, err := ledger.New(rdb, ledger.Config{}).Settle(ctx, ledger.Final{TaskID: tid, CampaignID: c,
			Outcome: ledger.Outcome{Outcome: ledger.DeadLettered, Reason: "unauthorized", Attempts: 1},
			Dead:    &deadletter.Record{Kind: "message", MessageID: id, LocationID: loc, CampaignID: c, Queue: tasks.QueueDefault, Reason: "unauthorized"}})
		require.NoError(t, err)
	}
	statuses := func(rs []producer.Result) []producer.Status {
		var out []producer.Status
		for _, r := range rs {
			out = append(out, r.Status)
		}
		return out
	}
	queuedCampaign := func(t *testing.T, rdb *redis.Client, id string) string {
		t.Helper()
		info, err := asynq.NewInspectorFromRedisClient(rdb).GetTaskInfo(tasks.QueueDefault, tasks.TaskID(ghl.KindMessage, id))
		require.NoError(t, err)
		var pl tasks.CancelPayload
		require.NoError(t, json.Unmarshal(info.Payload, &pl))
		return pl.CampaignID
	}

	t.Run("a repeat after an expired record's requeue is already queued", func(t *testing.T) {
		t.Parallel()
		rdb := redisServer.Client(t)
		p := producer.New(rdb, producer.Config{})
		deadIn(t, rdb, p, "mEdge1", "c1")
		require.NoError(t, rdb.Del(ctx, ledger.Key(tasks.TaskID(ghl.KindMessage, "mEdge1"))).Err())
		rs := p.EnqueueBatch(ctx, []producer.Item{msg("mEdge1", "c1"), msg("mEdge1", "c2")})
		require.Equal(t, []producer.Status{producer.Requeued, producer.AlreadyQueued}, statuses(rs))
		require.Equal(t, "c1", queuedCampaign(t, rdb, "mEdge1"))
		n, err := rdb.LLen(ctx, "asynq:{default}:pending").Result()
		require.NoError(t, err)
		require.Equal(t, int64(1), n, "queued once")
		require.Equal(t, int64(1), campaignTotal(t, rdb, "c1"))
		require.Zero(t, campaignTotal(t, rdb, "c2"))
	})
	t.Run("an item handed back keeps its place in the answers", func(t *testing.T) {
		t.Parallel()
		rdb := redisServer.Client(t)
		p := producer.New(rdb, producer.Config{})
		deadIn(t, rdb, p, "mEdge2", "c1")
		bad := msg("mEdge9", "")
		bad.Queue = "nowhere"
		rs := p.EnqueueBatch(ctx, []producer.Item{bad, msg("mEdgeNew", ""), msg("mEdge2", ""), msg("mEdgeNew2", "c3")})
		require.Equal(t, []producer.Status{producer.Rejected, producer.Enqueued, producer.Requeued, producer.Enqueued}, statuses(rs))
		require.Equal(t, "c1", queuedCampaign(t, rdb, "mEdge2"), "sent without a campaign, it runs in its own")
		require.Equal(t, "", queuedCampaign(t, rdb, "mEdgeNew"))
		require.Equal(t, int64(1), campaignTotal(t, rdb, "c1"))
	})
	t.Run("its campaign expired: sent without one, it runs without one", func(t *testing.T) {
		t.Parallel()
		rdb := redisServer.Client(t)
		p := producer.New(rdb, producer.Config{})
		deadIn(t, rdb, p, "mEdge3", "c1")
		require.NoError(t, rdb.Del(ctx, ledger.CampaignKey("c1"), ledger.CampaignOutcomesKey("c1"), ledger.CampaignLocationsKey("c1")).Err())
		require.Equal(t, producer.Requeued, p.Enqueue(ctx, msg("mEdge3", "")).Status)
		require.Equal(t, "", queuedCampaign(t, rdb, "mEdge3"))
		require.Zero(t, campaignTotal(t, rdb, "c1"), "an expired campaign is not brought back")
	})
	t.Run("rows of a campaign that is gone are no one's", func(t *testing.T) {
		t.Parallel()
		rdb := redisServer.Client(t)
		p := producer.New(rdb, producer.Config{})
		deadIn(t, rdb, p, "mEdge4", "c1")
		tid := tasks.TaskID(ghl.KindMessage, "mEdge4")
		require.NoError(t, rdb.Del(ctx, ledger.Key(tid), ledger.CampaignKey("c1")).Err())
		require.NoError(t, rdb.HSet(ctx, ledger.CampaignOutcomesKey("c1"), tid, "cancelled||200|1|1").Err())
		require.Equal(t, producer.Enqueued, p.Enqueue(ctx, msg("mEdge4", "c1")).Status, "a new campaign of that name counts it anew")
		require.Equal(t, int64(1), campaignTotal(t, rdb, "c1"))
		// Its outcome is counted: the old row is not the new campaign's.
		require.NoError(t, asynq.NewInspectorFromRedisClient(rdb).DeleteTask(tasks.QueueDefault, tid))
		_, _, err := ledger.New(rdb, ledger.Config{}).Settle(ctx, ledger.Final{TaskID: tid, CampaignID: "c1",
			Outcome: ledger.Outcome{Outcome: ledger.Cancelled, Attempts: 1}})
		require.NoError(t, err)
		s, _, err := campaign.New(rdb, 0).Get(ctx, "c1")
		require.NoError(t, err)
		require.Equal(t, int64(1), s.Cancelled)
		require.True(t, s.Complete)
		kt, err := rdb.PTTL(ctx, ledger.CampaignKey("c1")).Result()
		require.NoError(t, err)
		ot, err := rdb.PTTL(ctx, ledger.CampaignOutcomesKey("c1")).Result()
		require.NoError(t, err)
		require.Positive(t, ot)
		require.LessOrEqual(t, ot, kt+time.Second, "the outcomes do not outlive the counters")
	})
}

// TestResendManyIsIdempotent: a 1,000-item file sent three times: once
// enqueued, then already queued; once done, already done; totals never move.
func TestResendManyIsIdempotent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	p := producer.New(rdb, producer.Config{Queue: tasks.QueueBulk})
	led := ledger.New(rdb, ledger.Config{})
	items := make([]producer.Item, 1000)
	for i := range items {
		items[i] = producer.Item{Kind: ghl.KindMessage, MessageID: fmt.Sprintf("resend%06d", i), LocationID: "locR", CampaignID: "many"}
	}
	count := func() map[producer.Status]int {
		m := map[producer.Status]int{}
		for _, r := range p.EnqueueBatch(ctx, items) {
			m[r.Status]++
		}
		return m
	}
	require.Equal(t, map[producer.Status]int{producer.Enqueued: 1000}, count())
	require.Equal(t, map[producer.Status]int{producer.AlreadyQueued: 1000}, count())
	insp := asynq.NewInspectorFromRedisClient(rdb)
	for _, it := range items {
		tid := tasks.TaskID(it.Kind, it.MessageID)
		require.NoError(t, insp.DeleteTask(tasks.QueueBulk, tid))
		_, _, err := led.Settle(ctx, ledger.Final{TaskID: tid, CampaignID: "many", Outcome: ledger.Outcome{Outcome: ledger.Cancelled}})
		require.NoError(t, err)
	}
	require.Equal(t, map[producer.Status]int{producer.AlreadyDone: 1000}, count())
	s, _, err := campaign.New(rdb, 0).Get(ctx, "many")
	require.NoError(t, err)
	require.Equal(t, int64(1000), s.Total)
	require.True(t, s.Complete)
}

// TestRetryAndTimeoutAsGiven: MAX_RETRY=0 (or --max-retry 0) means no
// retries, not the default 150 (asynq keeps one spare: tasks.AsynqMaxRetry);
// a timeout under a second is not stored as 0 (asynq's "no timeout").
func TestRetryAndTimeoutAsGiven(t *testing.T) {
	t.Parallel()
	tests := []struct {
		given       int
		timeout     time.Duration
		wantRetry   int
		wantTimeout time.Duration
	}{
		{0, 500 * time.Millisecond, 1, time.Second},
		{3, 1500 * time.Millisecond, 4, 2 * time.Second},
		{150, 0, 151, tasks.TimeoutDefault},
	}
	for i, tt := range tests {
		rdb := redisServer.Client(t)
		p := producer.New(rdb, producer.Config{MaxRetry: producer.Retries(tt.given), Timeout: tt.timeout})
		id := fmt.Sprintf("retry%d", i)
		require.Equal(t, producer.Enqueued, p.Enqueue(context.Background(), producer.Item{Kind: ghl.KindMessage, MessageID: id, LocationID: "L"}).Status)
		info, err := asynq.NewInspectorFromRedisClient(rdb).GetTaskInfo(tasks.QueueDefault, "msg:"+id)
		require.NoError(t, err)
		require.Equal(t, tt.wantRetry, info.MaxRetry, "given %d", tt.given)
		require.Equal(t, tt.wantTimeout, info.Timeout)
	}
}

// TestRepeatsInsideOneBatch: a batch checks all its messages at once when
// none was seen before; a message repeated inside such a batch, or inside a
// batch where some were seen, is queued once and counted once.
func TestRepeatsInsideOneBatch(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	p := producer.New(rdb, producer.Config{Queue: tasks.QueueBulk})
	it := func(id string) producer.Item {
		return producer.Item{Kind: ghl.KindMessage, MessageID: id, LocationID: "locRepeat", CampaignID: "repeat"}
	}
	statuses := func(ids ...string) []producer.Status {
		items := make([]producer.Item, len(ids))
		for i, id := range ids {
			items[i] = it(id)
		}
		var out []producer.Status
		for _, r := range p.EnqueueBatch(ctx, items) {
			require.NoError(t, r.Err)
			out = append(out, r.Status)
		}
		return out
	}
	// All new, one repeated: the fast path.
	require.Equal(t, []producer.Status{producer.Enqueued, producer.Enqueued, producer.AlreadyQueued, producer.AlreadyQueued},
		statuses("repeatA", "repeatB", "repeatA", "repeatA"))
	// One seen before, one new repeated: the item by item path.
	require.Equal(t, []producer.Status{producer.AlreadyQueued, producer.Enqueued, producer.AlreadyQueued},
		statuses("repeatB", "repeatC", "repeatC"))
	pending, err := rdb.LRange(ctx, "asynq:{"+tasks.QueueBulk+"}:pending", 0, -1).Result()
	require.NoError(t, err)
	// Oldest first on the right, as asynq's own LPUSH leaves them.
	require.Equal(t, []string{tasks.TaskID(ghl.KindMessage, "repeatC"), tasks.TaskID(ghl.KindMessage, "repeatB"),
		tasks.TaskID(ghl.KindMessage, "repeatA")}, pending)
	s, _, err := campaign.New(rdb, 0).Get(ctx, "repeat")
	require.NoError(t, err)
	require.Equal(t, int64(3), s.Total)
}

// TestBothKindsInOneBatch: one message id as a message and as an email in
// one batch (a request, or a file's batch of 500 lines) is one message: the first is queued,
// the second refused with the reason, and the campaign counts one (both
// used to be queued, the wrong one dead-lettered wrong_kind beside the
// right one's outcome). The same through EnqueueAll, as the CLI sends.
func TestBothKindsInOneBatch(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	p := producer.New(rdb, producer.Config{Queue: tasks.QueueBulk})
	mk := func(kind ghl.Kind, id, c string) producer.Item {
		return producer.Item{Kind: kind, MessageID: id, LocationID: "locKinds", CampaignID: c}
	}
	out := p.EnqueueBatch(ctx, []producer.Item{mk(ghl.KindEmail, "kindsA", "kinds"), mk(ghl.KindMessage, "kindsB", "kinds"),
		mk(ghl.KindMessage, "kindsA", "kinds"), mk(ghl.KindEmail, "kindsA", "kinds")})
	require.Equal(t, producer.Enqueued, out[0].Status)
	require.Equal(t, producer.Enqueued, out[1].Status)
	require.Equal(t, producer.Rejected, out[2].Status)
	require.ErrorIs(t, out[2].Err, producer.ErrConflictingKind)
	require.ErrorContains(t, out[2].Err, "message kindsA came as email a few items before")
	require.Equal(t, producer.AlreadyQueued, out[3].Status, "the same kind again is a repeat")
	s, _, err := campaign.New(rdb, 0).Get(ctx, "kinds")
	require.NoError(t, err)
	require.Equal(t, int64(2), s.Total)

	items := []producer.Item{mk(ghl.KindMessage, "kindsC", "kinds2"), mk(ghl.KindEmail, "kindsC", "kinds2")}
	got := map[ghl.Kind]producer.Result{}
	i := 0
	p.EnqueueAll(ctx, func() (producer.Item, bool) {
		if i == len(items) {
			return producer.Item{}, false
		}
		i++
		return items[i-1], true
	}, func(it producer.Item, r producer.Result) { got[it.Kind] = r })
	require.Equal(t, producer.Enqueued, got[ghl.KindMessage].Status)
	require.ErrorIs(t, got[ghl.KindEmail].Err, producer.ErrConflictingKind)
	s, _, err = campaign.New(rdb, 0).Get(ctx, "kinds2")
	require.NoError(t, err)
	require.Equal(t, int64(1), s.Total)
}

// TestForceBefore: a sweep's cancels are forced only over an outcome
// recorded before its export was asked (ForceBefore): one recorded while
// the page was on its way (another sweep, a campaign) stands, so the
// message is neither called again nor moved out of the campaign that
// cancelled it. The campaign's row stands in for an expired record.
func TestForceBefore(t *testing.T) {
	t.Parallel()
	const id, loc = "mForce000000000000001", "locForce00000000000001"
	tid := tasks.TaskID(ghl.KindMessage, id)
	for _, tt := range []struct {
		name          string
		outcome       string
		asked         time.Duration // when the export was asked, against when the outcome was recorded
		expireRecord  bool          // the record expired; the sweep counts into c1, whose row remembers the outcome
		want          producer.Status
		c1Total       int64 // the first campaign's total afterwards
		sweepCampaign int64 // the sweep's campaign's total afterwards
		c1Complete    bool
	}{
		// c1 is left with nothing to wait for: it stays complete.
		{"expired before the export was asked: cancelled again", ledger.Expired, time.Minute, false, producer.Requeued, 0, 1, true},
		{"cancelled before the export was asked (scheduled again since)", ledger.Cancelled, time.Minute, false, producer.Requeued, 0, 1, true},
		{"cancelled while the page was on its way: it stands", ledger.Cancelled, -time.Second, false, producer.AlreadyDone, 1, 0, true},
		// Expired was decided from a send time, not by HighLevel, and the
		// export saw the message scheduled: HighLevel is asked.
		{"expired while the page was on its way: cancelled again", ledger.Expired, -time.Second, false, producer.Requeued, 0, 1, true},
		{"record expired, the campaign's row is older: cancelled again", ledger.Expired, time.Minute, true, producer.Requeued, 1, 1, false},
		{"record expired, the campaign's row is newer: it stands", ledger.Cancelled, -time.Second, true, producer.AlreadyDone, 1, 1, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			rdb := redisServer.Client(t)
			p := producer.New(rdb, producer.Config{})
			item := producer.Item{Kind: ghl.KindMessage, MessageID: id, LocationID: loc, CampaignID: "c1"}
			require.Equal(t, producer.Enqueued, p.Enqueue(ctx, item).Status)
			require.NoError(t, asynq.NewInspectorFromRedisClient(rdb).DeleteTask(tasks.QueueDefault, tid))
			at := time.Now()
			_, _, err := ledger.New(rdb, ledger.Config{}).Settle(ctx, ledger.Final{TaskID: tid, CampaignID: "c1",
				Outcome: ledger.Outcome{Outcome: tt.outcome, Attempts: 1, At: at}})
			require.NoError(t, err)
			if tt.expireRecord {
				require.NoError(t, rdb.Del(ctx, ledger.Key(tid)).Err())
			}
			it := item
			it.CampaignID, it.ForceBefore = "swept", at.Add(tt.asked).UnixMilli()
			if tt.expireRecord {
				it.CampaignID = "c1"
			}
			r := p.Enqueue(ctx, it)
			require.Equal(t, tt.want, r.Status, "%v", r.Err)
			want := map[string]int64{"c1": tt.c1Total}
			if !tt.expireRecord {
				want["swept"] = tt.sweepCampaign
			}
			for c, n := range want {
				s, _, err := campaign.New(rdb, 0).Get(ctx, c)
				require.NoError(t, err)
				require.Equal(t, n, s.Total, c)
			}
			s, _, err := campaign.New(rdb, 0).Get(ctx, "c1")
			require.NoError(t, err)
			require.Equal(t, tt.c1Complete, s.Complete, "c1 complete")
		})
	}
}

// TestExpiredSentAgain: expired is decided from the send time the first
// sender gave, never by HighLevel. Sent again with a send time that has
// not passed (a wrong one corrected, or the grace not over) or with none,
// the message may still be scheduled, so it runs again; sent again with
// one that has passed (a finished file run twice), it stays expired.
func TestExpiredSentAgain(t *testing.T) {
	t.Parallel()
	const id, loc = "mExpired00000000000001", "locExpired000000000001"
	tid := tasks.TaskID(ghl.KindMessage, id)
	now := time.Now()
	for _, tt := range []struct {
		name         string
		sendAt       int64 // the second send's send_at (0: none)
		expireRecord bool  // the record expired while c1 lived on (its row remembers the outcome)
		want         producer.Status
	}{
		{"the same past send time: it stays expired", now.Add(-time.Hour).Unix(), false, producer.AlreadyDone},
		{"a send time just past the grace: it stays expired", now.Add(-tasks.ExpiryGrace - time.Second).Unix(), false, producer.AlreadyDone},
		{"a send time within the grace: it runs", now.Add(-30 * time.Second).Unix(), false, producer.Requeued},
		{"a corrected send time ahead: it runs", now.Add(time.Hour).Unix(), false, producer.Requeued},
		{"no send time: it runs", 0, false, producer.Requeued},
		{"no send time, its record expired: it runs", 0, true, producer.Requeued},
		{"the same past send time, its record expired: it stays expired", now.Add(-time.Hour).Unix(), true, producer.AlreadyDone},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			rdb := redisServer.Client(t)
			p := producer.New(rdb, producer.Config{})
			item := producer.Item{Kind: ghl.KindMessage, MessageID: id, LocationID: loc, CampaignID: "c1", SendAt: now.Add(-time.Hour).Unix()}
			require.Equal(t, producer.Enqueued, p.Enqueue(ctx, item).Status)
			require.NoError(t, asynq.NewInspectorFromRedisClient(rdb).DeleteTask(tasks.QueueDefault, tid))
			_, _, err := ledger.New(rdb, ledger.Config{}).Settle(ctx, ledger.Final{TaskID: tid, CampaignID: "c1",
				Outcome: ledger.Outcome{Outcome: ledger.Expired, Attempts: 1}})
			require.NoError(t, err)
			if tt.expireRecord {
				require.NoError(t, rdb.Del(ctx, ledger.Key(tid)).Err())
			}
			item.SendAt = tt.sendAt
			r := p.Enqueue(ctx, item)
			require.Equal(t, tt.want, r.Status, "%v", r.Err)
			s, _, err := campaign.New(rdb, 0).Get(ctx, "c1")
			require.NoError(t, err)
			require.Equal(t, int64(1), s.Total, "one message, counted once")
			info, err := asynq.NewInspectorFromRedisClient(rdb).GetTaskInfo(tasks.QueueDefault, tid)
			if tt.want == producer.Requeued {
				require.NoError(t, err, "queued again")
				require.Equal(t, asynq.TaskStatePending, info.State)
				require.Equal(t, int64(0), s.Expired, "its expired outcome is taken out")
				require.Equal(t, int64(1), s.Pending)
				require.False(t, s.Complete)
			} else {
				require.Error(t, err, "nothing queued")
				require.Equal(t, int64(1), s.Expired)
				require.True(t, s.Complete)
			}
		})
	}
}

// TestRightKindTakesTheWrongKindOut: a message dead-lettered wrong_kind
// (its id sent as the wrong kind) and then sent as the right kind, by a
// resend or a requeue, is one message: the wrong kind's dead letter and
// record go, and its campaign no longer counts it (it used to count the
// message twice, one of them dead-lettered for good, and --watch exited
// 1). A dead letter of another reason stays: that task is a message of
// its own.
func TestRightKindTakesTheWrongKindOut(t *testing.T) {
	t.Parallel()
	const loc = "locKind0000000000001"
	// wrong leaves msg:id as a worker does: its outcome and dead letter
	// settled, and asynq's archived copy (SkipRetry).
	wrong := func(t *testing.T, rdb *redis.Client, id, camp, reason string) {
		t.Helper()
		p := producer.New(rdb, producer.Config{})
		require.Equal(t, producer.Enqueued, p.Enqueue(context.Background(), producer.Item{Kind: ghl.KindMessage, MessageID: id, LocationID: loc, CampaignID: camp}).Status)
		require.NoError(t, asynq.NewInspectorFromRedisClient(rdb).ArchiveTask(tasks.QueueDefault, "msg:"+id))
		_, _, err := ledger.New(rdb, ledger.Config{}).Settle(context.Background(), ledger.Final{TaskID: "msg:" + id, CampaignID: camp,
			Outcome: ledger.Outcome{Outcome: ledger.DeadLettered, Reason: reason, HTTPStatus: 404, Attempts: 1},
			Dead:    &deadletter.Record{Kind: "message", MessageID: id, LocationID: loc, CampaignID: camp, Queue: tasks.QueueDefault, Reason: reason}})
		require.NoError(t, err)
	}
	get := func(t *testing.T, rdb *redis.Client, camp string) campaign.Status {
		t.Helper()
		s, _, err := campaign.New(rdb, 0).Get(context.Background(), camp)
		require.NoError(t, err)
		return s
	}
	for _, tt := range []struct {
		name      string
		reason    string
		requeue   bool   // by enqueue dead requeue, else sent again as an email
		camp      string // the resend's campaign
		stays     bool   // the msg: dead letter stays
		reused    bool   // k1 expired and was started again under its name, with another message
		wantTotal map[string]int64
		wantIn    string // the email task's campaign
	}{
		{"resent as an email, same campaign", tasks.ReasonWrongKind, false, "k1", false, false, map[string]int64{"k1": 1}, "k1"},
		{"resent as an email, another campaign", tasks.ReasonWrongKind, false, "k2", false, false, map[string]int64{"k1": 0, "k2": 1}, "k2"},
		// The hint's own advice without --campaign: it stays in k1 (it
		// used to leave k1 complete with 0 and run in no campaign).
		{"resent as an email, no campaign", tasks.ReasonWrongKind, false, "", false, false, map[string]int64{"k1": 1}, "k1"},
		{"requeued: goes as an email", tasks.ReasonWrongKind, true, "k1", false, false, map[string]int64{"k1": 1}, "k1"},
		// k1's new life never counted it: its pending message stays counted.
		{"its campaign's name reused since", tasks.ReasonWrongKind, false, "k2", false, true, map[string]int64{"k1": 1, "k2": 1}, "k2"},
		{"another reason: a message of its own", "unauthorized", false, "k1", true, false, map[string]int64{"k1": 2}, "k1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			rdb := redisServer.Client(t)
			id := "mKind00000000000000" + fmt.Sprint(len(tt.name)%10)
			wrong(t, rdb, id, "k1", tt.reason)
			// Only a wrong_kind dead letter makes the rule look at the other
			// kind (a batch pays one EXISTS otherwise), for as long as its
			// record may live.
			flag := rdb.PTTL(ctx, ledger.KeyWrongKind).Val()
			if tt.reason == tasks.ReasonWrongKind {
				require.Greater(t, flag, 24*time.Hour)
			} else {
				require.Equal(t, time.Duration(-2), flag, "no flag: no wrong_kind dead letter")
			}
			p := producer.New(rdb, producer.Config{})
			if tt.reused {
				require.NoError(t, rdb.Del(ctx, ledger.CampaignKey("k1"), ledger.CampaignOutcomesKey("k1"),
					ledger.CampaignRetryingKey("k1"), ledger.CampaignLocationsKey("k1")).Err())
				require.Equal(t, producer.Enqueued, p.Enqueue(ctx, producer.Item{Kind: ghl.KindMessage, MessageID: "mOther0000000000001", LocationID: loc, CampaignID: "k1"}).Status)
			}
			if tt.requeue {
				st, err := p.Requeue(ctx, deadletter.New(rdb), deadletter.Filter{Reason: tasks.ReasonWrongKind}, nil)
				require.NoError(t, err)
				require.Equal(t, 1, st.Requeued)
			} else {
				r := p.Enqueue(ctx, producer.Item{Kind: ghl.KindEmail, MessageID: id, LocationID: loc, CampaignID: tt.camp})
				require.Equal(t, producer.Enqueued, r.Status, "%v", r.Err)
			}
			insp := asynq.NewInspectorFromRedisClient(rdb)
			info, err := insp.GetTaskInfo(tasks.QueueDefault, "email:"+id)
			require.NoError(t, err, "queued as an email")
			require.Equal(t, asynq.TaskStatePending, info.State)
			var pl tasks.CancelPayload
			require.NoError(t, json.Unmarshal(info.Payload, &pl))
			require.Equal(t, tt.wantIn, pl.CampaignID, "the email task's campaign")
			_, err = insp.GetTaskInfo(tasks.QueueDefault, "msg:"+id)
			if tt.stays {
				require.NoError(t, err, "a message of its own keeps its archived copy")
			} else {
				require.Error(t, err, "the wrong kind's archived copy is gone")
			}
			_, dead, err := deadletter.New(rdb).Get(ctx, "msg:"+id)
			require.NoError(t, err)
			require.Equal(t, tt.stays, dead)
			o, _, _, err := ledger.New(rdb, ledger.Config{}).Record(ctx, "msg:"+id)
			require.NoError(t, err)
			require.NotNil(t, o)
			if tt.stays {
				require.Equal(t, ledger.DeadLettered, o.Outcome, "the wrong kind's record")
			} else {
				require.Equal(t, ledger.Superseded, o.Outcome, "the wrong kind's record is superseded (counted nowhere)")
				// The first file run again: already done, not queued as new.
				r := p.Enqueue(ctx, producer.Item{Kind: ghl.KindMessage, MessageID: id, LocationID: loc, CampaignID: cmp.Or(tt.camp, "k1")})
				require.Equal(t, producer.AlreadyDone, r.Status, "%v", r.Err)
			}
			for camp, want := range tt.wantTotal {
				s := get(t, rdb, camp)
				require.Equal(t, want, s.Total, "%s's total", camp)
				if !tt.stays {
					require.Zero(t, s.DeadLettered, "%s counts no dead letter", camp)
				}
			}
			if tt.camp == "k2" {
				require.Equal(t, !tt.reused, get(t, rdb, "k1").Complete, "k1 complete only when it has nothing left to wait for")
			}
		})
	}
}

// TestWrongKindFlagAndOwnCampaign: the flag that makes the enqueue rule
// look at the other kind is only ever extended (a worker with a shorter
// dead-letter retention cut it short, and a resend then counted the
// message twice); a requeue of wrong_kind dead letters sets it again
// whatever became of it; and a message sent without a campaign stays in the
// campaign its own record names, not the wrong kind's.
func TestWrongKindFlagAndOwnCampaign(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const loc = "locKind0000000000002"
	settle := func(t *testing.T, rdb *redis.Client, led *ledger.Ledger, kind ghl.Kind, id, camp, reason string) {
		t.Helper()
		tid := tasks.TaskID(kind, id)
		p := producer.New(rdb, producer.Config{})
		require.Equal(t, producer.Enqueued, p.Enqueue(ctx, producer.Item{Kind: kind, MessageID: id, LocationID: loc, CampaignID: camp}).Status)
		require.NoError(t, asynq.NewInspectorFromRedisClient(rdb).ArchiveTask(tasks.QueueDefault, tid))
		_, _, err := led.Settle(ctx, ledger.Final{TaskID: tid, CampaignID: camp,
			Outcome: ledger.Outcome{Outcome: ledger.DeadLettered, Reason: reason, HTTPStatus: 404, Attempts: 1},
			Dead:    &deadletter.Record{Kind: string(kind), MessageID: id, LocationID: loc, CampaignID: camp, Queue: tasks.QueueDefault, Reason: reason}})
		require.NoError(t, err)
	}

	t.Run("a shorter retention does not cut the flag short", func(t *testing.T) {
		t.Parallel()
		rdb := redisServer.Client(t)
		settle(t, rdb, ledger.New(rdb, ledger.Config{}), ghl.KindMessage, "mFlag00000000000001", "k1", tasks.ReasonWrongKind)
		long := rdb.PTTL(ctx, ledger.KeyWrongKind).Val()
		settle(t, rdb, ledger.New(rdb, ledger.Config{DeadRetention: time.Hour, Retention: time.Hour}), ghl.KindMessage, "mFlag00000000000002", "k1", tasks.ReasonWrongKind)
		require.Greater(t, rdb.PTTL(ctx, ledger.KeyWrongKind).Val(), long-time.Minute)
	})
	t.Run("a requeue sets the flag again", func(t *testing.T) {
		t.Parallel()
		rdb := redisServer.Client(t)
		settle(t, rdb, ledger.New(rdb, ledger.Config{}), ghl.KindMessage, "mFlag00000000000003", "k1", tasks.ReasonWrongKind)
		require.NoError(t, rdb.Del(ctx, ledger.KeyWrongKind).Err())
		st, err := producer.New(rdb, producer.Config{}).Requeue(ctx, deadletter.New(rdb), deadletter.Filter{Reason: tasks.ReasonWrongKind}, nil)
		require.NoError(t, err)
		require.Equal(t, 1, st.Requeued)
		n, err := deadletter.New(rdb).Count(ctx)
		require.NoError(t, err)
		require.Zero(t, n, "the wrong kind's dead letter is gone")
		require.Equal(t, int64(1), campaignTotal(t, rdb, "k1"), "one message")
	})
	t.Run("its own campaign comes first", func(t *testing.T) {
		t.Parallel()
		rdb := redisServer.Client(t)
		led := ledger.New(rdb, ledger.Config{})
		const id = "mFlag00000000000004"
		settle(t, rdb, led, ghl.KindEmail, id, "k2", "unauthorized") // the email's own dead letter
		settle(t, rdb, led, ghl.KindMessage, id, "k1", tasks.ReasonWrongKind)
		r := producer.New(rdb, producer.Config{}).Enqueue(ctx, producer.Item{Kind: ghl.KindEmail, MessageID: id, LocationID: loc})
		require.Equal(t, producer.Requeued, r.Status, "%v", r.Err)
		info, err := asynq.NewInspectorFromRedisClient(rdb).GetTaskInfo(tasks.QueueDefault, "email:"+id)
		require.NoError(t, err)
		var pl tasks.CancelPayload
		require.NoError(t, json.Unmarshal(info.Payload, &pl))
		require.Equal(t, "k2", pl.CampaignID, "the campaign its own record names")
		require.Equal(t, int64(1), campaignTotal(t, rdb, "k2"))
		require.Equal(t, int64(0), campaignTotal(t, rdb, "k1"), "the wrong kind is taken out")
	})
}

// campaignTotal is a campaign's distinct total.
func campaignTotal(t *testing.T, rdb *redis.Client, camp string) int64 {
	t.Helper()
	s, _, err := campaign.New(rdb, 0).Get(context.Background(), camp)
	require.NoError(t, err)
	return s.Total
}

// TestHeldBy: a message already queued or done answers which campaign
// counts it when that is not the one asked for (a sweep follows it): the
// queued task's campaign, the one its outcome was counted in, the first of
// two sends in one batch, or none; nothing when it is the one asked for.
func TestHeldBy(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const loc = "locHeld000000000001"
	item := func(id, camp string) producer.Item {
		return producer.Item{Kind: ghl.KindMessage, MessageID: id, LocationID: loc, CampaignID: camp}
	}
	rdb := redisServer.Client(t)
	p := producer.New(rdb, producer.Config{})
	for i, tc := range []struct {
		name      string
		setup     func(t *testing.T, id string)
		camp      string
		status    producer.Status
		heldBy    string
		elsewhere bool
	}{
		{"queued in another campaign", func(t *testing.T, id string) { p.Enqueue(ctx, item(id, "held-a")) }, "held-b", producer.AlreadyQueued, "held-a", true},
		{"queued in the same campaign", func(t *testing.T, id string) { p.Enqueue(ctx, item(id, "held-a")) }, "held-a", producer.AlreadyQueued, "", false},
		{"queued in none", func(t *testing.T, id string) { p.Enqueue(ctx, item(id, "")) }, "held-b", producer.AlreadyQueued, "", true},
		{"queued in none, sent in none", func(t *testing.T, id string) { p.Enqueue(ctx, item(id, "")) }, "", producer.AlreadyQueued, "", false},
		{"done in another campaign", func(t *testing.T, id string) {
			p.Enqueue(ctx, item(id, "held-a"))
			require.NoError(t, asynq.NewInspectorFromRedisClient(rdb).DeleteTask(tasks.QueueDefault, tasks.TaskID(ghl.KindMessage, id)))
			_, _, err := ledger.New(rdb, ledger.Config{}).Settle(ctx, ledger.Final{TaskID: tasks.TaskID(ghl.KindMessage, id), CampaignID: "held-a",
				Outcome: ledger.Outcome{Outcome: ledger.Cancelled, HTTPStatus: 200, Attempts: 1}})
			require.NoError(t, err)
		}, "held-b", producer.AlreadyDone, "held-a", true},
	} {
		id := fmt.Sprintf("mHeld%015d", i)
		tc.setup(t, id)
		r := p.EnqueueBatch(ctx, []producer.Item{item(id, tc.camp)})[0]
		require.Equal(t, []any{tc.status, tc.heldBy, tc.elsewhere}, []any{r.Status, r.HeldBy, r.Elsewhere}, tc.name)
	}
	// Twice in one batch: the second is the first's.
	out := p.EnqueueBatch(ctx, []producer.Item{item("mHeldTwice0000000001", "held-c"), item("mHeldTwice0000000001", "held-d")})
	require.Equal(t, []any{producer.Enqueued, false, producer.AlreadyQueued, "held-c", true},
		[]any{out[0].Status, out[0].Elsewhere, out[1].Status, out[1].HeldBy, out[1].Elsewhere})
}

// TestMovedOutAndBack: a message sent again under another campaign leaves
// its first campaign's total, which says where it went (moved_to); sent
// back, the first campaign counts it again and no longer says it left.
func TestMovedOutAndBack(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	p := producer.New(rdb, producer.Config{})
	const id, loc = "mMovedBack0000000001", "locMoved000000000001"
	tid := tasks.TaskID(ghl.KindMessage, id)
	it := func(c string) producer.Item {
		return producer.Item{Kind: ghl.KindMessage, MessageID: id, LocationID: loc, CampaignID: c}
	}
	deadIn := func(c string) {
		t.Helper()
		require.NoError(t, asynq.NewInspectorFromRedisClient(rdb).DeleteTask(tasks.QueueDefault, tid))
		_, _, err := ledger.New(rdb, ledger.Config{}).Settle(ctx, ledger.Final{TaskID: tid, CampaignID: c,
			Outcome: ledger.Outcome{Outcome: ledger.DeadLettered, Reason: "unauthorized", Attempts: 1},
			Dead:    &deadletter.Record{Kind: "message", MessageID: id, LocationID: loc, CampaignID: c, Queue: tasks.QueueDefault, Reason: "unauthorized"}})
		require.NoError(t, err)
	}
	status := func(c string) campaign.Status {
		t.Helper()
		s, ok, err := campaign.New(rdb, 0).Get(ctx, c)
		require.NoError(t, err)
		require.True(t, ok, c)
		return s
	}
	require.Equal(t, producer.Enqueued, p.Enqueue(ctx, it("first")).Status)
	deadIn("first")
	require.Equal(t, producer.Requeued, p.Enqueue(ctx, it("second")).Status)
	require.Equal(t, map[string]int64{"second": 1}, status("first").MovedTo)
	require.Zero(t, status("first").Total)
	deadIn("second")
	require.Equal(t, producer.Requeued, p.Enqueue(ctx, it("first")).Status)
	require.Empty(t, status("first").MovedTo, "it came back")
	require.Equal(t, int64(1), status("first").Total)
	require.Equal(t, map[string]int64{"first": 1}, status("second").MovedTo)
}
