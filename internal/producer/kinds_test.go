package producer_test

import (
	"context"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/ghlcancel/ghlcancel/internal/campaign"
	"github.com/ghlcancel/ghlcancel/internal/deadletter"
	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/ledger"
	"github.com/ghlcancel/ghlcancel/internal/producer"
	"github.com/ghlcancel/ghlcancel/internal/sandbox"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
	"github.com/ghlcancel/ghlcancel/internal/tokens"
)

// TestBothKindsAcrossRequests: one id sent as each kind in two requests
// (the kind corrected while the wrong one is still queued, or a file re-run
// with --kind after the first run settled) is one message. The wrong kind's
// task, when it finds HighLevel has the id as the other kind, is dropped if
// the message is queued or done as that kind: no dead letter, no record, out
// of its campaign's total. It used to be a dead letter wrong_kind counted
// beside the right one (total 2), and status --watch exited 1. With nothing
// queued as the right kind it is still the dead letter that tells the
// operator to send it again (the control row).
func TestBothKindsAcrossRequests(t *testing.T) {
	t.Parallel()
	const loc, tok = "locBoth0000000000001", "tokBoth"
	for _, tt := range []struct {
		name string
		// wrong is the kind the id is wrongly sent as; the id is an email's
		// emailMessageId when wrong is a message, an SMS id otherwise.
		wrong ghl.Kind
		// rightFirst: the right kind runs (and is cancelled) before the wrong
		// one; otherwise it is only queued when the wrong one runs.
		rightFirst bool
		// rightCamp is the right kind's campaign ("" sends no right kind,
		// "-" sends it with no campaign: the kind corrected without
		// --campaign, so it stays in k1).
		rightCamp string
		// wantTotal: campaigns' totals at the end; all complete, no dead letter.
		wantTotal map[string]int64
	}{
		{"the wrong kind runs while the right one is queued", ghl.KindMessage, false, "k1", map[string]int64{"k1": 1}},
		{"the right kind is done first", ghl.KindMessage, true, "k1", map[string]int64{"k1": 1}},
		{"an SMS id sent as an email, then as a message", ghl.KindEmail, false, "k1", map[string]int64{"k1": 1}},
		{"the right kind in another campaign", ghl.KindMessage, false, "k2", map[string]int64{"k1": 0, "k2": 1}},
		// Read from the queued task's payload: JSON escapes in the name.
		{"the right kind in a campaign named with escapes", ghl.KindMessage, false, `k"2\ & <x> é`, map[string]int64{"k1": 0, `k"2\ & <x> é`: 1}},
		{"done first, in another campaign", ghl.KindEmail, true, "k2", map[string]int64{"k1": 0, "k2": 1}},
		{"no right kind: the dead letter stays", ghl.KindMessage, false, "", map[string]int64{"k1": 1}},
		// The verification's case: k1 read complete 0/0 while the corrected
		// cancels ran in no campaign.
		{"corrected with no campaign while the wrong one is queued", ghl.KindMessage, false, "-", map[string]int64{"k1": 1}},
		{"corrected with no campaign, done first", ghl.KindEmail, true, "-", map[string]int64{"k1": 1}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			rdb := redisServer.Client(t)
			sb, h := sandboxHandler(t, rdb, loc, tok)
			rightKind := ghl.KindEmail
			id := sb.AddMessages(loc, sandbox.MessageSpec{Email: true})[0].CancelID
			if tt.wrong == ghl.KindEmail {
				rightKind = ghl.KindMessage
				id = sb.ScheduleN(loc, 1, false)[0]
			}
			p := producer.New(rdb, producer.Config{})
			send := func(kind ghl.Kind, camp string) {
				t.Helper()
				if camp == "-" {
					camp = ""
				}
				r := p.Enqueue(ctx, producer.Item{Kind: kind, MessageID: id, LocationID: loc, CampaignID: camp})
				require.Equal(t, producer.Enqueued, r.Status, "%v", r.Err)
			}
			run := func(kind ghl.Kind) error {
				t.Helper()
				return runQueued(t, rdb, h, tasks.TaskID(kind, id))
			}
			if tt.rightFirst {
				send(rightKind, tt.rightCamp)
				require.NoError(t, run(rightKind))
				send(tt.wrong, "k1")
				require.NoError(t, run(tt.wrong), "the wrong kind is dropped, not dead-lettered")
			} else {
				send(tt.wrong, "k1")
				if tt.rightCamp != "" {
					send(rightKind, tt.rightCamp)
				}
				err := run(tt.wrong)
				if tt.rightCamp == "" {
					require.ErrorIs(t, err, asynq.SkipRetry, "a dead letter")
				} else {
					require.NoError(t, err, "the wrong kind is dropped, not dead-lettered")
					require.NoError(t, run(rightKind))
				}
			}

			_, dead, err := deadletter.New(rdb).Get(ctx, tasks.TaskID(tt.wrong, id))
			require.NoError(t, err)
			o, _, _, err := ledger.New(rdb, ledger.Config{}).Record(ctx, tasks.TaskID(tt.wrong, id))
			require.NoError(t, err)
			st, _, _ := sb.MessageStatus(id)
			if tt.rightCamp == "" {
				require.True(t, dead, "the operator learns the kind is wrong")
				require.NotNil(t, o)
				require.Equal(t, ledger.DeadLettered, o.Outcome)
				require.Equal(t, sandbox.StatusScheduled, st, "nothing cancelled it yet")
			} else {
				require.False(t, dead, "no dead letter for the wrong kind")
				require.NotNil(t, o)
				require.Equal(t, ledger.Superseded, o.Outcome, "its record says it was superseded (counted nowhere)")
				require.Equal(t, sandbox.StatusCancelled, st)
				ro, _, _, err := ledger.New(rdb, ledger.Config{}).Record(ctx, tasks.TaskID(rightKind, id))
				require.NoError(t, err)
				require.NotNil(t, ro)
				require.Equal(t, ledger.Cancelled, ro.Outcome, "the right kind's task says what became of it")
			}
			for camp, want := range tt.wantTotal {
				s, ok, err := campaign.New(rdb, 0).Get(ctx, camp)
				require.NoError(t, err)
				require.True(t, ok, camp)
				require.Equal(t, want, s.Total, "%s's total", camp)
				require.True(t, s.Complete, "%s complete", camp)
				if tt.rightCamp != "" {
					require.Zero(t, s.DeadLettered, "%s counts no dead letter", camp)
					require.Equal(t, want, s.Cancelled, "%s: its one message cancelled, or none", camp)
					require.Zero(t, s.Retrying, camp)
				}
			}
		})
	}
}

// runQueued runs one delivery of the queued task tid the way the worker
// does (its payload as asynq holds it), then deletes it as asynq does with
// a task that returns nil or SkipRetry.
func runQueued(t *testing.T, rdb *redis.Client, h *tasks.Handler, tid string) error {
	t.Helper()
	return runQueuedOn(t, rdb, h, tasks.QueueDefault, tid)
}

// runQueuedOn is runQueued for a task on lane.
func runQueuedOn(t *testing.T, rdb *redis.Client, h *tasks.Handler, lane, tid string) error {
	t.Helper()
	insp := asynq.NewInspectorFromRedisClient(rdb)
	info, err := insp.GetTaskInfo(lane, tid)
	require.NoError(t, err, "queued: %s", tid)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err = h.Process(ctx, asynq.NewTask(info.Type, info.Payload), tasks.TaskInfo{ID: tid, Queue: lane, MaxRetry: 3})
	require.NoError(t, insp.DeleteTask(lane, tid))
	return err
}

// TestAWrongKindUrgentResendMovesTheRightKind: an opt-out sent as urgent
// with the wrong kind (an SMS id as an email) for a message whose cancel a
// campaign queued on the bulk lane: the wrong kind's task is dropped as
// superseded, and the right kind's cancel moves to the urgent lane (the
// audit saw it stay on bulk behind a parked location while every report
// said the opt-out was done). Dropped from a slower lane, it moves nothing.
func TestAWrongKindUrgentResendMovesTheRightKind(t *testing.T) {
	t.Parallel()
	const loc, tok = "locWrongUrgent000001", "tokWrongUrgent"
	for _, tt := range []struct {
		name             string
		rightOn, wrongOn string
		wantOn           string
	}{
		{"urgent resend as the wrong kind", tasks.QueueBulk, tasks.QueueUrgent, tasks.QueueUrgent},
		{"default resend as the wrong kind", tasks.QueueBulk, tasks.QueueDefault, tasks.QueueDefault},
		{"bulk resend as the wrong kind: it stays", tasks.QueueDefault, tasks.QueueBulk, tasks.QueueDefault},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			rdb := redisServer.Client(t)
			sb, h := sandboxHandler(t, rdb, loc, tok)
			id := sb.ScheduleN(loc, 1, false)[0]
			p := producer.New(rdb, producer.Config{PromoteWithin: -1})
			right := producer.Item{Kind: ghl.KindMessage, MessageID: id, LocationID: loc, CampaignID: "bulk-camp", Queue: tt.rightOn}
			require.Equal(t, producer.Enqueued, p.Enqueue(ctx, right).Status)
			wrong := producer.Item{Kind: ghl.KindEmail, MessageID: id, LocationID: loc, CampaignID: "opt-out", Queue: tt.wrongOn}
			require.Equal(t, producer.Enqueued, p.Enqueue(ctx, wrong).Status)
			require.NoError(t, runQueuedOn(t, rdb, h, tt.wrongOn, tasks.TaskID(ghl.KindEmail, id)), "dropped, not dead-lettered")
			o, _, _, err := ledger.New(rdb, ledger.Config{}).Record(ctx, tasks.TaskID(ghl.KindEmail, id))
			require.NoError(t, err)
			require.NotNil(t, o)
			require.Equal(t, ledger.Superseded, o.Outcome)

			tid := tasks.TaskID(ghl.KindMessage, id)
			for _, l := range tasks.Queues {
				n := rdb.Exists(ctx, "asynq:{"+l+"}:t:"+tid).Val()
				require.Equal(t, map[bool]int64{true: 1, false: 0}[l == tt.wantOn], n, "the right kind's task on %s", l)
			}
			require.Equal(t, []string{tid}, rdb.LRange(ctx, "asynq:{"+tt.wantOn+"}:pending", 0, -1).Val())
			require.NoError(t, runQueuedOn(t, rdb, h, tt.wantOn, tid))
			st, _, _ := sb.MessageStatus(id)
			require.Equal(t, sandbox.StatusCancelled, st)
			s, _, err := campaign.New(rdb, 0).Get(ctx, "bulk-camp")
			require.NoError(t, err)
			require.Equal(t, []int64{1, 1}, []int64{s.Total, s.Cancelled}, "counted once, in its campaign")
			// The wrong kind's campaign gave the message up, moved or not
			// (the review saw it count it, never complete, once it moved).
			s, _, err = campaign.New(rdb, 0).Get(ctx, "opt-out")
			require.NoError(t, err)
			require.Equal(t, []any{int64(0), true}, []any{s.Total, s.Complete}, "the opt-out's campaign")
		})
	}
}

// TestSupersededNeedsTheRightKind: a wrong_kind settle is dropped only for
// a message the other kind stands for: its task queued or running, or an
// outcome HighLevel answered for it that the other-kind read does not
// contradict. Not: an archived copy, the other kind's own wrong_kind dead
// letter or superseded row (both kinds settling at once), an expired
// outcome (a guess from a send time), an outcome while the read found the
// message scheduled, or a settle without the keys. A replayed settle (a
// lost reply, a re-delivery) changes the campaign's total once.
func TestSupersededNeedsTheRightKind(t *testing.T) {
	t.Parallel()
	const loc = "locBoth0000000000002"
	queued := func(t *testing.T, _ *redis.Client, p *producer.Producer, _ *ledger.Ledger, id string) {
		require.Equal(t, producer.Enqueued, p.Enqueue(context.Background(), producer.Item{Kind: ghl.KindEmail, MessageID: id, LocationID: loc, CampaignID: "k1"}).Status)
	}
	settled := func(outcome string) func(*testing.T, *redis.Client, *producer.Producer, *ledger.Ledger, string) {
		return func(t *testing.T, rdb *redis.Client, p *producer.Producer, led *ledger.Ledger, id string) {
			queued(t, rdb, p, led, id)
			require.NoError(t, asynq.NewInspectorFromRedisClient(rdb).DeleteTask(tasks.QueueDefault, "email:"+id))
			_, _, err := led.Settle(context.Background(), ledger.Final{TaskID: "email:" + id, CampaignID: "k1",
				Outcome: ledger.Outcome{Outcome: outcome, HTTPStatus: 200, Attempts: 1}})
			require.NoError(t, err)
		}
	}
	for _, tt := range []struct {
		name           string
		other          func(t *testing.T, rdb *redis.Client, p *producer.Producer, led *ledger.Ledger, id string)
		noKeys         bool
		otherScheduled bool
		superseded     bool
	}{
		{"the other kind queued", queued, false, true, true},
		{"the other kind cancelled", settled(ledger.Cancelled), false, false, true},
		{"the other kind cancelled, but the read found it scheduled", settled(ledger.Cancelled), false, true, false},
		{"the other kind expired (a guess)", settled(ledger.Expired), false, false, false},
		{"the other kind archived with no outcome", func(t *testing.T, rdb *redis.Client, p *producer.Producer, led *ledger.Ledger, id string) {
			queued(t, rdb, p, led, id)
			require.NoError(t, asynq.NewInspectorFromRedisClient(rdb).ArchiveTask(tasks.QueueDefault, "email:"+id))
		}, false, false, false},
		{"the other kind's own wrong_kind dead letter", func(t *testing.T, rdb *redis.Client, p *producer.Producer, led *ledger.Ledger, id string) {
			queued(t, rdb, p, led, id)
			settleWrongKind(t, led, ghl.KindEmail, id, nil)
		}, false, false, false},
		// Both kinds found wrong at once: the first is dropped while the
		// second's task is still on its lane; the second, seeing the
		// first's superseded row, stays a dead letter (not both dropped).
		{"the other kind superseded a moment ago", func(t *testing.T, rdb *redis.Client, p *producer.Producer, led *ledger.Ledger, id string) {
			queued(t, rdb, p, led, id)
			require.Equal(t, ledger.Superseded, settleWrongKind(t, led, ghl.KindEmail, id, ledger.OtherKindKeys("msg:"+id, tasks.Queues)).Outcome)
		}, false, false, false},
		{"nothing of the other kind", func(*testing.T, *redis.Client, *producer.Producer, *ledger.Ledger, string) {}, false, false, false},
		{"the other kind queued, no keys given", queued, true, false, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			rdb := redisServer.Client(t)
			led := ledger.New(rdb, ledger.Config{})
			p := producer.New(rdb, producer.Config{})
			const id = "mSuper0000000000001"
			require.Equal(t, producer.Enqueued, p.Enqueue(ctx, producer.Item{Kind: ghl.KindMessage, MessageID: id, LocationID: loc, CampaignID: "k1"}).Status)
			require.Equal(t, producer.Enqueued, p.Enqueue(ctx, producer.Item{Kind: ghl.KindMessage, MessageID: "mOther000000000001", LocationID: loc, CampaignID: "k1"}).Status)
			tt.other(t, rdb, p, led, id)
			before := campaignTotal(t, rdb, "k1")
			keys := ledger.OtherKindKeys(tasks.TaskID(ghl.KindEmail, id), tasks.Queues)
			if tt.noKeys {
				keys = nil
			}
			f := ledger.Final{TaskID: "msg:" + id, CampaignID: "k1", OtherKind: keys, OtherScheduled: tt.otherScheduled,
				Outcome: ledger.Outcome{Outcome: ledger.DeadLettered, Reason: tasks.ReasonWrongKind, HTTPStatus: 404, Attempts: 1},
				Dead:    &deadletter.Record{Kind: "message", MessageID: id, LocationID: loc, CampaignID: "k1", Queue: tasks.QueueDefault, Reason: tasks.ReasonWrongKind}}
			got, recorded, err := led.Settle(ctx, f)
			require.NoError(t, err)
			require.True(t, recorded)
			_, dead, err := deadletter.New(rdb).Get(ctx, "msg:"+id)
			require.NoError(t, err)
			require.Equal(t, !tt.superseded, dead)
			after := campaignTotal(t, rdb, "k1")
			if tt.superseded {
				require.Equal(t, ledger.Superseded, got.Outcome)
				require.Equal(t, before-1, after, "the campaign gives the wrong kind up")
			} else {
				require.Equal(t, ledger.DeadLettered, got.Outcome)
				require.Equal(t, before, after)
			}
			// Settled again (a lost reply retried, a re-delivery after a
			// crash): recorded already, nothing moves.
			_, recorded, err = led.Settle(ctx, f)
			require.NoError(t, err)
			require.False(t, recorded, "the replay finds it recorded")
			require.Equal(t, after, campaignTotal(t, rdb, "k1"), "the total moves once")
			adm, err := led.Begin(ctx, "msg:"+id, "k1", ledger.NewMark(2))
			require.NoError(t, err)
			require.NotNil(t, adm.Recorded, "a re-delivery settles from the record, with no call")
		})
	}
}

// settleWrongKind settles kind's task of id as a dead letter wrong_kind,
// as the handler does (other: the other kind's keys, or none).
func settleWrongKind(t *testing.T, led *ledger.Ledger, kind ghl.Kind, id string, other []string) ledger.Outcome {
	t.Helper()
	got, recorded, err := led.Settle(context.Background(), ledger.Final{TaskID: tasks.TaskID(kind, id), CampaignID: "k1", OtherKind: other,
		Outcome: ledger.Outcome{Outcome: ledger.DeadLettered, Reason: tasks.ReasonWrongKind, HTTPStatus: 404, Attempts: 1},
		Dead:    &deadletter.Record{Kind: string(kind), MessageID: id, LocationID: "locBoth0000000000002", CampaignID: "k1", Queue: tasks.QueueDefault, Reason: tasks.ReasonWrongKind}})
	require.NoError(t, err)
	require.True(t, recorded)
	return got
}

// TestRequeueStartsFromTheCancel: a verify stage (a read-back an earlier
// delivery could not make) belongs to the task that left it: a message
// dead-lettered with one and sent again runs from the cancel, not from a
// read that skips it.
func TestRequeueStartsFromTheCancel(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	led := ledger.New(rdb, ledger.Config{})
	p := producer.New(rdb, producer.Config{})
	const id, loc = "mStage0000000000001", "locStage00000000001"
	tid := tasks.TaskID(ghl.KindMessage, id)
	require.Equal(t, producer.Enqueued, p.Enqueue(ctx, producer.Item{Kind: ghl.KindMessage, MessageID: id, LocationID: loc, CampaignID: "k1"}).Status)
	adm, err := led.Begin(ctx, tid, "k1", ledger.NewMark(1))
	require.NoError(t, err)
	require.Empty(t, adm.Stage)
	stage := ledger.Stage(ledger.StageOtherKind, 404)
	require.NoError(t, led.Retrying(ctx, tid, "k1", "", stage))
	adm, err = led.Begin(ctx, tid, "k1", ledger.NewMark(2))
	require.NoError(t, err)
	require.Equal(t, stage, adm.Stage, "the next delivery reads the stage")
	require.NoError(t, asynq.NewInspectorFromRedisClient(rdb).ArchiveTask(tasks.QueueDefault, tid))
	_, _, err = led.Settle(ctx, ledger.Final{TaskID: tid, CampaignID: "k1",
		Outcome: ledger.Outcome{Outcome: ledger.DeadLettered, Reason: tasks.ReasonOtherKindUnread, HTTPStatus: 404, Attempts: 4},
		Dead:    &deadletter.Record{Kind: "message", MessageID: id, LocationID: loc, CampaignID: "k1", Queue: tasks.QueueDefault, Reason: tasks.ReasonOtherKindUnread}})
	require.NoError(t, err)
	require.Equal(t, producer.Requeued, p.Enqueue(ctx, producer.Item{Kind: ghl.KindMessage, MessageID: id, LocationID: loc, CampaignID: "k1"}).Status)
	adm, err = led.Begin(ctx, tid, "k1", ledger.NewMark(1))
	require.NoError(t, err)
	require.Empty(t, adm.Stage, "sent again, it starts from the cancel")
	require.Nil(t, adm.Recorded)
}

// TestRequeueAfterBothKindsFoundWrong: both kinds of an id queued, the
// message's own kind dropped as superseded while the other was queued,
// then the other found wrong too (a dead letter wrong_kind: HighLevel has
// the id as the first kind after all, e.g. it read back differently). The
// dead letter's advice, a requeue, sends the first kind again: it must run,
// not answer "already done" from its superseded row while the message
// stays scheduled (the re-review's scenario: total 0, nothing queued).
func TestRequeueAfterBothKindsFoundWrong(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	led := ledger.New(rdb, ledger.Config{})
	p := producer.New(rdb, producer.Config{})
	insp := asynq.NewInspectorFromRedisClient(rdb)
	const id, loc = "mBothWrong000000001", "locBoth0000000000003"
	for _, k := range []ghl.Kind{ghl.KindMessage, ghl.KindEmail} {
		require.Equal(t, producer.Enqueued, p.Enqueue(ctx, producer.Item{Kind: k, MessageID: id, LocationID: loc, CampaignID: "k1"}).Status)
	}
	require.Equal(t, ledger.Superseded, settleWrongKind(t, led, ghl.KindMessage, id, ledger.OtherKindKeys("email:"+id, tasks.Queues)).Outcome)
	require.NoError(t, insp.DeleteTask(tasks.QueueDefault, "msg:"+id)) // asynq drops a task that returned nil
	require.Equal(t, ledger.DeadLettered, settleWrongKind(t, led, ghl.KindEmail, id, ledger.OtherKindKeys("msg:"+id, tasks.Queues)).Outcome)
	require.NoError(t, insp.ArchiveTask(tasks.QueueDefault, "email:"+id)) // SkipRetry
	require.Equal(t, int64(1), campaignTotal(t, rdb, "k1"))

	st, err := p.Requeue(ctx, deadletter.New(rdb), deadletter.Filter{Reason: tasks.ReasonWrongKind}, nil)
	require.NoError(t, err)
	require.Equal(t, 1, st.Requeued, "%+v", st)
	info, err := insp.GetTaskInfo(tasks.QueueDefault, "msg:"+id)
	require.NoError(t, err, "queued again as a message")
	require.Equal(t, asynq.TaskStatePending, info.State)
	require.Equal(t, int64(1), campaignTotal(t, rdb, "k1"), "one message")
	n, err := deadletter.New(rdb).Count(ctx)
	require.NoError(t, err)
	require.Zero(t, n)
	s, _, err := campaign.New(rdb, 0).Get(ctx, "k1")
	require.NoError(t, err)
	require.False(t, s.Complete, "it runs")
	// A plain re-run of the superseded kind while the other still stands is
	// already done.
	const id2 = "mBothWrong000000002"
	for _, k := range []ghl.Kind{ghl.KindMessage, ghl.KindEmail} {
		require.Equal(t, producer.Enqueued, p.Enqueue(ctx, producer.Item{Kind: k, MessageID: id2, LocationID: loc, CampaignID: "k1"}).Status)
	}
	require.Equal(t, ledger.Superseded, settleWrongKind(t, led, ghl.KindMessage, id2, ledger.OtherKindKeys("email:"+id2, tasks.Queues)).Outcome)
	require.NoError(t, insp.DeleteTask(tasks.QueueDefault, "msg:"+id2))
	require.Equal(t, producer.AlreadyDone, p.Enqueue(ctx, producer.Item{Kind: ghl.KindMessage, MessageID: id2, LocationID: loc, CampaignID: "k1"}).Status)
}

// handoff is a message whose id is an email's, its sandbox and a handler,
// for the cases where the kind is corrected with no campaign.
type handoff struct {
	rdb *redis.Client
	h   *tasks.Handler
	p   *producer.Producer
	sb  *sandbox.Server
	id  string
}

const handoffLoc, handoffTok = "locHandoff000000001", "tokHandoff"

func newHandoff(t *testing.T) handoff {
	t.Helper()
	rdb := redisServer.Client(t)
	sb, h := sandboxHandler(t, rdb, handoffLoc, handoffTok)
	id := sb.AddMessages(handoffLoc, sandbox.MessageSpec{Email: true})[0].CancelID
	return handoff{rdb, h, producer.New(rdb, producer.Config{}), sb, id}
}

// sandboxHandler is a sandbox serving location loc (token tok) and the
// real cancel handler against it (verify on), as a worker runs it.
func sandboxHandler(t *testing.T, rdb *redis.Client, loc, tok string) (*sandbox.Server, *tasks.Handler) {
	t.Helper()
	sb := sandbox.New(sandbox.Config{})
	sb.AddLocation(loc, tok)
	srv := httptest.NewServer(sb.Handler())
	t.Cleanup(srv.Close)
	api, err := ghl.New(ghl.Config{BaseURL: srv.URL, Timeout: 5 * time.Second})
	require.NoError(t, err)
	return sb, &tasks.Handler{API: api, Ledger: ledger.New(rdb, ledger.Config{}), Tokens: tokens.Static(tok), Verify: true}
}

func (e handoff) send(t *testing.T, kind ghl.Kind, camp string, force bool) producer.Status {
	t.Helper()
	r := e.p.Enqueue(context.Background(), producer.Item{Kind: kind, MessageID: e.id, LocationID: handoffLoc, CampaignID: camp, Force: force})
	require.NoError(t, r.Err)
	return r.Status
}

// emailDeadLettered settles the queued email task as a worker does on a
// 401 with no campaign in its payload: a dead letter unauthorized.
func (e handoff) emailDeadLettered(t *testing.T) {
	t.Helper()
	require.NoError(t, asynq.NewInspectorFromRedisClient(e.rdb).DeleteTask(tasks.QueueDefault, "email:"+e.id))
	_, _, err := ledger.New(e.rdb, ledger.Config{}).Settle(context.Background(), ledger.Final{TaskID: "email:" + e.id,
		Outcome: ledger.Outcome{Outcome: ledger.DeadLettered, Reason: "unauthorized", HTTPStatus: 401, Attempts: 1},
		Dead:    &deadletter.Record{Kind: "email", MessageID: e.id, LocationID: handoffLoc, Reason: "unauthorized"}})
	require.NoError(t, err)
}

// handOver sends the id as a message in campaign k1, then as an email with
// no campaign, and runs the message task: it is dropped as the wrong kind,
// and the queued email is handed k1.
func (e handoff) handOver(t *testing.T) {
	t.Helper()
	e.send(t, ghl.KindMessage, "k1", false)
	e.send(t, ghl.KindEmail, "", false)
	require.NoError(t, e.run(t, "msg:"+e.id))
}

func (e handoff) run(t *testing.T, tid string) error {
	t.Helper()
	return runQueued(t, e.rdb, e.h, tid)
}

func (e handoff) campaign(t *testing.T, c string) campaign.Status {
	t.Helper()
	s, ok, err := campaign.New(e.rdb, 0).Get(context.Background(), c)
	require.NoError(t, err)
	require.True(t, ok, c)
	return s
}

// TestHandoffSecondPaths: the kind corrected with no campaign hands the
// message to the wrong kind's campaign; what users do next must not break
// its counts (the review of that change found each of these).
func TestHandoffSecondPaths(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	t.Run("the wrong kind forced again after the handoff", func(t *testing.T) {
		t.Parallel()
		e := newHandoff(t)
		e.handOver(t)
		require.Equal(t, producer.Requeued, e.send(t, ghl.KindMessage, "k1", true))
		require.NoError(t, e.run(t, "msg:"+e.id))
		require.NoError(t, e.run(t, "email:"+e.id))
		s := e.campaign(t, "k1")
		require.Equal(t, []any{int64(1), int64(1), int64(1), true}, []any{s.Total, s.Done, s.Cancelled, s.Complete}, "one message, done (it read 2 totals, 1 done, for good)")
	})
	t.Run("the wrong kind forced again after a settled handoff", func(t *testing.T) {
		t.Parallel()
		e := newHandoff(t)
		e.send(t, ghl.KindEmail, "", false)
		require.NoError(t, e.run(t, "email:"+e.id))
		e.send(t, ghl.KindMessage, "k1", false)
		require.NoError(t, e.run(t, "msg:"+e.id))
		e.send(t, ghl.KindMessage, "k1", true)
		require.NoError(t, e.run(t, "msg:"+e.id))
		s := e.campaign(t, "k1")
		require.Equal(t, []any{int64(1), int64(1), true}, []any{s.Total, s.Done, s.Complete})
	})
	t.Run("a handoff is used once: a reused campaign name is not fed", func(t *testing.T) {
		t.Parallel()
		e := newHandoff(t)
		e.handOver(t)
		require.NoError(t, e.run(t, "email:"+e.id))
		require.Zero(t, e.rdb.HExists(ctx, ledger.Key("email:"+e.id), "h").Val(), "no handoff left behind")
		// k1 expires; its name is reused for another message; the email is
		// forced again with no campaign.
		require.NoError(t, e.rdb.Del(ctx, ledger.CampaignKey("k1"), ledger.CampaignOutcomesKey("k1"), ledger.CampaignRetryingKey("k1"), ledger.CampaignLocationsKey("k1")).Err())
		e.send(t, ghl.KindEmail, "", true)
		y := e.sb.ScheduleN(handoffLoc, 1, false)[0]
		require.Equal(t, producer.Enqueued, e.p.Enqueue(ctx, producer.Item{Kind: ghl.KindMessage, MessageID: y, LocationID: handoffLoc, CampaignID: "k1"}).Status)
		require.NoError(t, e.run(t, "email:"+e.id))
		s := e.campaign(t, "k1")
		require.Equal(t, []any{int64(1), int64(0), false}, []any{s.Total, s.Done, s.Complete}, "the new k1 waits for its own message")
	})
	t.Run("a handed dead letter is listed under the campaign", func(t *testing.T) {
		t.Parallel()
		e := newHandoff(t)
		e.handOver(t)
		e.emailDeadLettered(t)
		require.Equal(t, int64(1), e.campaign(t, "k1").DeadLettered)
		n := 0
		require.NoError(t, deadletter.New(e.rdb).Scan(ctx, deadletter.Filter{CampaignID: "k1"}, func(deadletter.Record) error { n++; return nil }))
		require.Equal(t, 1, n, "enqueue dead list --campaign k1 finds it")
	})
	t.Run("a settled right kind's dead letter counted by the drop is listed under the campaign", func(t *testing.T) {
		t.Parallel()
		e := newHandoff(t)
		e.send(t, ghl.KindEmail, "", false)
		e.emailDeadLettered(t)
		e.send(t, ghl.KindMessage, "k1", false)
		require.NoError(t, e.run(t, "msg:"+e.id))
		require.Equal(t, int64(1), e.campaign(t, "k1").DeadLettered)
		st, err := e.p.Requeue(ctx, deadletter.New(e.rdb), deadletter.Filter{CampaignID: "k1"}, nil)
		require.NoError(t, err)
		require.Equal(t, 1, st.Requeued, "enqueue dead requeue --campaign k1 finds it")
	})
	t.Run("a hand-over whose task was deleted by hand is no one's", func(t *testing.T) {
		t.Parallel()
		e := newHandoff(t)
		e.handOver(t)
		require.NoError(t, asynq.NewInspectorFromRedisClient(e.rdb).DeleteTask(tasks.QueueDefault, "email:"+e.id))
		require.Equal(t, producer.Enqueued, e.send(t, ghl.KindEmail, "", false))
		require.Zero(t, e.rdb.HExists(ctx, ledger.Key("email:"+e.id), "h").Val(), "sent again, its old hand-over goes")
	})
	t.Run("a handed task that retries is retrying in its campaign", func(t *testing.T) {
		t.Parallel()
		e := newHandoff(t)
		e.handOver(t)
		info, err := asynq.NewInspectorFromRedisClient(e.rdb).GetTaskInfo(tasks.QueueDefault, "email:"+e.id)
		require.NoError(t, err)
		deliver := func(retried int) error {
			return e.h.Process(ctx, asynq.NewTask(info.Type, info.Payload), tasks.TaskInfo{ID: "email:" + e.id, Queue: tasks.QueueDefault, Retried: retried, MaxRetry: 3})
		}
		e.sb.SetFaults(sandbox.Faults{ErrorRate: 1})
		require.Error(t, deliver(0), "a 5xx: retried")
		s := e.campaign(t, "k1")
		require.Equal(t, []any{int64(1), int64(0), int64(1)}, []any{s.Total, s.Done, s.Retrying}, "status says retrying 1 (it said 0 while the message waited between tries)")
		e.sb.SetFaults(sandbox.Faults{})
		require.NoError(t, deliver(1))
		s = e.campaign(t, "k1")
		require.Equal(t, []any{int64(1), int64(1), int64(1), int64(0), true}, []any{s.Total, s.Done, s.Cancelled, s.Retrying, s.Complete})
	})
	t.Run("the campaign is read from the payload, not a later error text", func(t *testing.T) {
		t.Parallel()
		e := newHandoff(t)
		e.send(t, ghl.KindMessage, "k1", false)
		e.send(t, ghl.KindEmail, "", false)
		// asynq rewrites a retried task's message with the error (field 7).
		tk := "asynq:{" + tasks.QueueDefault + "}:t:email:" + e.id
		msg := []byte(e.rdb.HGet(ctx, tk, "msg").Val())
		msg = protowire.AppendTag(msg, 7, protowire.BytesType)
		msg = protowire.AppendString(msg, `highlevel: server_error 500: {"campaign_id":"zz"}`)
		require.NoError(t, e.rdb.HSet(ctx, tk, "msg", msg).Err())
		require.NoError(t, e.run(t, "msg:"+e.id))
		require.Equal(t, int64(1), e.campaign(t, "k1").Total, "the message stays in k1")
		require.Equal(t, "k1", e.rdb.HGet(ctx, ledger.Key("email:"+e.id), "h").Val())
	})
}
