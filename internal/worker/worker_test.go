package worker_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/breaker"
	"github.com/ghlcancel/ghlcancel/internal/campaign"
	"github.com/ghlcancel/ghlcancel/internal/contract"
	"github.com/ghlcancel/ghlcancel/internal/deadletter"
	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/ledger"
	"github.com/ghlcancel/ghlcancel/internal/producer"
	"github.com/ghlcancel/ghlcancel/internal/ratelimit"
	"github.com/ghlcancel/ghlcancel/internal/redistest"
	"github.com/ghlcancel/ghlcancel/internal/sandbox"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
	"github.com/ghlcancel/ghlcancel/internal/tokens"
	"github.com/ghlcancel/ghlcancel/internal/worker"
)

var redisServer *redistest.Server

func TestMain(m *testing.M) { redistest.Main(m, &redisServer) }

const (
	locGood    = "locGood0000000000001"
	locBadTok  = "locBadToken000000001"
	locNoToken = "locNoToken0000000001"
	tokGood    = "good-token-abc"
)

type testBundle struct {
	rdb       *redis.Client
	sb        *sandbox.Server
	validator *contract.Validator
	worker    *worker.Worker
	producer  *producer.Producer
	dead      *deadletter.Store
	insp      *asynq.Inspector
}

type tokenMap map[string]string

func (m tokenMap) Token(_ context.Context, loc string) (string, error) {
	if t, ok := m[loc]; ok {
		return t, nil
	}
	return "", tokens.ErrNoToken
}

// setup runs a worker against a fresh Redis database and a sandbox behind
// the OpenAPI validator. The bad-token location's token is one the sandbox
// does not accept.
func setup(t *testing.T, sbCfg sandbox.Config, prodCfg producer.Config, tweak ...func(*worker.Config)) *testBundle {
	t.Helper()
	rdb := redisServer.Client(t)
	v, err := contract.New()
	require.NoError(t, err)
	sb := sandbox.New(sbCfg)
	sb.AddLocation(locGood, tokGood)
	sb.AddLocation(locBadTok, "the-real-token")
	srv := httptest.NewServer(v.Wrap(sb.Handler()))
	t.Cleanup(srv.Close)
	cfg := worker.Config{
		Redis:       rdb,
		GHL:         ghl.Config{BaseURL: srv.URL, Timeout: 2 * time.Second},
		Tokens:      tokenMap{locGood: tokGood, locBadTok: "revoked-token"},
		Concurrency: 20,
		Backoff:     tasks.Backoff{Base: 50 * time.Millisecond, Cap: 200 * time.Millisecond},
		// Short, so a test does not wait for retries to come due.
		DelayedCheckInterval: 100 * time.Millisecond,
		ShutdownTimeout:      5 * time.Second,
	}
	for _, f := range tweak {
		f(&cfg)
	}
	w, err := worker.New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
		require.Empty(t, v.Problems(), "requests or responses that break the OpenAPI contract")
	})
	return &testBundle{
		rdb: rdb, sb: sb, validator: v, worker: w,
		producer: producer.New(rdb, prodCfg),
		dead:     deadletter.New(rdb),
		insp:     asynq.NewInspectorFromRedisClient(rdb),
	}
}

// waitDrained waits until no lane has pending, active, scheduled or retry tasks.
func (b *testBundle) waitDrained(t *testing.T, within time.Duration) {
	t.Helper()
	require.Eventually(t, func() bool {
		for _, q := range tasks.Queues {
			info, err := b.insp.GetQueueInfo(q)
			if err != nil {
				continue // queue never used
			}
			if info.Pending+info.Active+info.Scheduled+info.Retry > 0 {
				return false
			}
		}
		return true
	}, within, 50*time.Millisecond)
}

func (b *testBundle) processed(outcome string) float64 {
	return testutil.ToFloat64(b.worker.Metrics.TasksProcessed.WithLabelValues(tasks.TypeCancelMessage, outcome)) +
		testutil.ToFloat64(b.worker.Metrics.TasksProcessed.WithLabelValues(tasks.TypeCancelEmail, outcome))
}

func TestOutcomes(t *testing.T) {
	t.Parallel()
	b := setup(t, sandbox.Config{}, producer.Config{})
	ctx := context.Background()
	msgs := b.sb.ScheduleN(locGood, 3, false)
	emails := b.sb.ScheduleN(locGood, 2, true)
	unknown := sandbox.NewID()
	badTok := b.sb.ScheduleN(locBadTok, 1, false)[0]
	noTok := sandbox.NewID()

	enq := func(kind ghl.Kind, id, loc string) {
		r := b.producer.Enqueue(ctx, producer.Item{Kind: kind, MessageID: id, LocationID: loc, CampaignID: "c1"})
		require.Equal(t, producer.Enqueued, r.Status, r.Err)
	}
	for _, id := range msgs {
		enq(ghl.KindMessage, id, locGood)
	}
	for _, id := range emails {
		enq(ghl.KindEmail, id, locGood)
	}
	enq(ghl.KindMessage, unknown, locGood)
	enq(ghl.KindMessage, badTok, locBadTok)
	enq(ghl.KindMessage, noTok, locNoToken)
	b.waitDrained(t, 10*time.Second)

	for _, id := range append(msgs, emails...) {
		st, cancels, _ := b.sb.MessageStatus(id)
		require.Equal(t, sandbox.StatusCancelled, st)
		require.Equal(t, 1, cancels)
	}
	st, _, _ := b.sb.MessageStatus(badTok)
	require.Equal(t, sandbox.StatusScheduled, st)

	require.Equal(t, 5.0, b.processed(tasks.OutcomeCancelled))
	require.Equal(t, 1.0, b.processed(tasks.OutcomeNotFound), "the unknown id, read back")
	require.Equal(t, 2.0, b.processed(tasks.OutcomeDeadLettered))
	require.Equal(t, 1.0, testutil.ToFloat64(b.worker.Metrics.DeadLetters.WithLabelValues("unauthorized")))
	require.Equal(t, 1.0, testutil.ToFloat64(b.worker.Metrics.DeadLetters.WithLabelValues("no_token")))

	rec, ok, err := b.dead.Get(ctx, tasks.TaskID(ghl.KindMessage, badTok))
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, "unauthorized", rec.Reason)
	require.Equal(t, 401, rec.HTTPStatus)
	require.Equal(t, "Invalid token: access token is invalid", rec.APIMessage)
	require.Equal(t, locBadTok, rec.LocationID)
	require.Equal(t, "c1", rec.CampaignID)
	require.Equal(t, 1, rec.Attempts)
	require.Equal(t, tasks.QueueDefault, rec.Queue)
	require.NotContains(t, rec.APIMessage+rec.Payload, "revoked-token")

	rec, ok, err = b.dead.Get(ctx, tasks.TaskID(ghl.KindMessage, noTok))
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, "no_token", rec.Reason)
	// Which worker: where workers disagree (a tokens file rolled out to
	// some of them), the one that had no token is the one to look at.
	require.Equal(t, deadletter.ThisWorker, rec.Worker)
	require.Regexp(t, `^.+:\d+$`, rec.Worker)

	// asynq archived them too (SkipRetry), without retrying.
	info, err := b.insp.GetQueueInfo(tasks.QueueDefault)
	require.NoError(t, err)
	require.Equal(t, 2, info.Archived)
}

func TestDuplicateEnqueueIsANoOp(t *testing.T) {
	t.Parallel()
	b := setup(t, sandbox.Config{Faults: sandbox.Faults{Latency: 200 * time.Millisecond}}, producer.Config{})
	ctx := context.Background()
	id := b.sb.ScheduleN(locGood, 1, false)[0]
	item := producer.Item{Kind: ghl.KindMessage, MessageID: id, LocationID: locGood}
	require.Equal(t, producer.Enqueued, b.producer.Enqueue(ctx, item).Status)
	require.Equal(t, producer.AlreadyQueued, b.producer.Enqueue(ctx, item).Status)
	item.Queue = tasks.QueueUrgent // another lane: still the same message
	require.Equal(t, producer.AlreadyQueued, b.producer.Enqueue(ctx, item).Status)
	item.Kind = ghl.KindEmail // another kind is another message
	require.Equal(t, producer.Enqueued, b.producer.Enqueue(ctx, item).Status)
	b.waitDrained(t, 10*time.Second)
	_, cancels, _ := b.sb.MessageStatus(id)
	require.Equal(t, 1, cancels)
}

func TestPoisonTasksAreDeadLettered(t *testing.T) {
	t.Parallel()
	b := setup(t, sandbox.Config{}, producer.Config{})
	ctx := context.Background()
	client := asynq.NewClientFromRedisClient(b.rdb)
	poison := []*asynq.Task{
		asynq.NewTask(tasks.TypeCancelMessage, []byte("{not json"), asynq.TaskID("p1")),
		asynq.NewTask(tasks.TypeCancelMessage, []byte(`{"message_id":"a/../b","location_id":"x"}`), asynq.TaskID("p2")),
		asynq.NewTask(tasks.TypeCancelEmail, []byte{0xff, 0x00, 0x01}, asynq.TaskID("p3")),
		asynq.NewTask("ghl:sms:something_else", []byte(`{}`), asynq.TaskID("p4")),
	}
	for _, p := range poison {
		_, err := client.EnqueueContext(ctx, p, asynq.Queue(tasks.QueueDefault), asynq.MaxRetry(5))
		require.NoError(t, err)
	}
	// A good task after them still runs: the worker survived.
	good := b.sb.ScheduleN(locGood, 1, false)[0]
	require.Equal(t, producer.Enqueued, b.producer.Enqueue(ctx, producer.Item{Kind: ghl.KindMessage, MessageID: good, LocationID: locGood}).Status)
	b.waitDrained(t, 10*time.Second)

	want := map[string]string{"p1": tasks.ReasonInvalidPayload, "p2": tasks.ReasonInvalidPayload, "p3": tasks.ReasonInvalidPayload, "p4": tasks.ReasonUnknownType}
	for id, reason := range want {
		rec, ok, err := b.dead.Get(ctx, id)
		require.NoError(t, err)
		require.True(t, ok, id)
		require.Equal(t, reason, rec.Reason, id)
		require.Equal(t, 1, rec.Attempts, "%s must not be retried", id)
	}
	st, _, _ := b.sb.MessageStatus(good)
	require.Equal(t, sandbox.StatusCancelled, st)
}

// TestRetriesThenDeadLetterWhenExhausted: a task given n retries is called
// n+1 times and dead-lettered with its reason; asynq's spare attempt
// (tasks.AsynqMaxRetry) is not spent on failures.
func TestRetriesThenDeadLetterWhenExhausted(t *testing.T) {
	t.Parallel()
	for _, retries := range []int{2, producer.NoRetry} {
		t.Run(fmt.Sprint(retries), func(t *testing.T) {
			t.Parallel()
			b := setup(t, sandbox.Config{Faults: sandbox.Faults{ErrorRate: 1}}, producer.Config{MaxRetry: retries})
			ctx := context.Background()
			id := b.sb.ScheduleN(locGood, 1, false)[0]
			require.Equal(t, producer.Enqueued, b.producer.Enqueue(ctx, producer.Item{Kind: ghl.KindMessage, MessageID: id, LocationID: locGood}).Status)
			b.waitDrained(t, 15*time.Second)
			rec, ok, err := b.dead.Get(ctx, tasks.TaskID(ghl.KindMessage, id))
			require.NoError(t, err)
			require.True(t, ok)
			n := max(retries, 0)
			require.Equal(t, "server_error", rec.Reason)
			require.Equal(t, n+1, rec.Attempts)
			require.Equal(t, float64(n), b.processed(tasks.OutcomeRetry))
			require.Equal(t, 1.0, b.processed(tasks.OutcomeDeadLettered))
			require.Equal(t, float64(n), testutil.ToFloat64(b.worker.Metrics.Retries.WithLabelValues("server_error")))
			// n+1 cancels, and the last try's read-back (a 5xx may have
			// been acted on), faulted too: the dead letter says so.
			require.Equal(t, int64(n+2), b.sb.Stats().Faulted5xx)
			require.Contains(t, rec.APIMessage, "may be cancelled already")
		})
	}
}

func TestTransientFaultsRecover(t *testing.T) {
	t.Parallel()
	b := setup(t, sandbox.Config{Seed: 7, Faults: sandbox.Faults{ErrorRate: 0.3, ResetRate: 0.1}}, producer.Config{})
	ctx := context.Background()
	ids := b.sb.ScheduleN(locGood, 60, false)
	for _, id := range ids {
		require.Equal(t, producer.Enqueued, b.producer.Enqueue(ctx, producer.Item{Kind: ghl.KindMessage, MessageID: id, LocationID: locGood}).Status)
	}
	b.waitDrained(t, 30*time.Second)
	for _, id := range ids {
		st, cancels, _ := b.sb.MessageStatus(id)
		require.Equal(t, sandbox.StatusCancelled, st)
		require.Equal(t, 1, cancels)
	}
	n, err := b.dead.Count(ctx)
	require.NoError(t, err)
	require.Zero(t, n)
	s := b.sb.Stats()
	require.Positive(t, s.Faulted5xx+s.Resets)
	require.Equal(t, float64(s.Faulted5xx+s.Resets), b.processed(tasks.OutcomeRetry))
}

func noPacing(c *worker.Config) { c.NoPacing = true }

// requireAllCancelledNoneDead: every message ended cancelled in the sandbox
// and nothing was dead-lettered.
func (b *testBundle) requireAllCancelledNoneDead(t *testing.T, ids []string) {
	t.Helper()
	for _, id := range ids {
		st, _, _ := b.sb.MessageStatus(id)
		require.Equal(t, sandbox.StatusCancelled, st, id)
	}
	n, err := b.dead.Count(context.Background())
	require.NoError(t, err)
	require.Zero(t, n)
}

func (b *testBundle) enqueueAll(t *testing.T, loc string, ids []string) {
	t.Helper()
	for _, id := range ids {
		r := b.producer.Enqueue(context.Background(), producer.Item{Kind: ghl.KindMessage, MessageID: id, LocationID: loc})
		require.Equal(t, producer.Enqueued, r.Status, r.Err)
	}
}

// A 429 does not use up a retry: without pacing, with MaxRetry 1, eight
// tasks through a 3-per-1.5 s limit meet many 429s and must all end
// cancelled, none dead.
func TestRateLimitUsesNoRetry(t *testing.T) {
	t.Parallel()
	b := setup(t, sandbox.Config{RateMax: 3, RateInterval: 1500 * time.Millisecond, RetryAfter: true}, producer.Config{MaxRetry: 1}, noPacing)
	ids := b.sb.ScheduleN(locGood, 8, false)
	b.enqueueAll(t, locGood, ids)
	b.waitDrained(t, 30*time.Second)
	b.requireAllCancelledNoneDead(t, ids)
	require.Positive(t, b.sb.Stats().RateLimited)
}

// A 429 uses no retry even on a task given none: asynq keeps one attempt
// spare (tasks.AsynqMaxRetry), so the 429 goes back to asynq instead of
// being archived. (The handler waits a 429 out itself only on asynq's final
// attempt, reached through a failure asynq counts: TestFinalAttemptAlwaysEndsInOneFate.)
func TestRateLimitWithNoRetriesUsesNone(t *testing.T) {
	t.Parallel()
	// Sliding: two calls straddling a fixed window's edge would both pass.
	b := setup(t, sandbox.Config{RateMax: 1, RateInterval: 3 * time.Second, RateWindow: "sliding"}, producer.Config{MaxRetry: -1}, noPacing) // negative: no retries at all
	ids := b.sb.ScheduleN(locGood, 2, false)
	b.enqueueAll(t, locGood, ids)
	b.waitDrained(t, 20*time.Second)
	b.requireAllCancelledNoneDead(t, ids)
	require.Positive(t, b.sb.Stats().RateLimited)
}

// TestNoRetriesStillWaitForTheirTurn: --max-retry 0 means no retries of
// failures, and a wait for a pacing slot is none. With every task's
// deadline too short to wait its slot out in place, 12 tasks through a
// 3-per-second limit snooze and all end cancelled, none dead-lettered
// (they were dead-lettered "paced" when asynq's MaxRetry was the retries
// given), without a 429.
func TestNoRetriesStillWaitForTheirTurn(t *testing.T) {
	t.Parallel()
	b := setup(t, sandbox.Config{RateMax: 3, RateInterval: time.Second, RateWindow: "sliding"},
		producer.Config{MaxRetry: producer.NoRetry, Timeout: 2 * time.Second}, func(c *worker.Config) {
			// 10% margin: a 1 s window leaves 2% only 20 ms of jitter under -race.
			c.RateLimit = ratelimit.Config{Default: ratelimit.Limit{N: 3, Period: time.Second}, Margin: 0.10, MaxWait: 100 * time.Millisecond}
		})
	ids := b.sb.ScheduleN(locGood, 12, false)
	b.enqueueAll(t, locGood, ids)
	b.waitDrained(t, 30*time.Second)
	b.requireAllCancelledNoneDead(t, ids)
	require.Positive(t, b.processed(tasks.OutcomePaced), "tasks snoozed for their turn")
	require.Zero(t, b.processed(tasks.OutcomeRateLimited), "no 429: nothing rate limited")
	require.Zero(t, b.sb.Stats().RateLimited)
}

func TestHealthAndMetricsEndpoints(t *testing.T) {
	t.Parallel()
	b := setup(t, sandbox.Config{}, producer.Config{})
	srv := httptest.NewServer(b.worker.HTTPHandler())
	t.Cleanup(srv.Close)
	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200, "/metrics": 200} {
		resp, err := http.Get(srv.URL + path)
		require.NoError(t, err)
		_ = resp.Body.Close()
		require.Equal(t, want, resp.StatusCode, path)
	}
	// /readyz reports a Redis it cannot reach.
	down := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1})
	t.Cleanup(func() { _ = down.Close() })
	srv2 := httptest.NewServer(worker.AdminHandler(b.worker.Registry, down))
	t.Cleanup(srv2.Close)
	resp, err := http.Get(srv2.URL + "/readyz")
	require.NoError(t, err)
	_ = resp.Body.Close()
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
}

// With pacing, the limit is learned from the first answers: before it is
// known the limiter lets the probe burst go, so calls past the real limit
// in it may be refused while the first answer is on its way; after that,
// none. Nothing is lost even with no retries allowed (a 429 uses none).
func TestPacingLearnsTheLimit(t *testing.T) {
	t.Parallel()
	b := setup(t, sandbox.Config{RateMax: 3, RateInterval: 1500 * time.Millisecond}, producer.Config{MaxRetry: -1},
		func(c *worker.Config) { c.RateLimit.Margin = 0.10 })
	ids := b.sb.ScheduleN(locGood, 8, false)
	b.enqueueAll(t, locGood, ids)
	b.waitDrained(t, 30*time.Second)
	for _, id := range ids {
		st, _, _ := b.sb.MessageStatus(id)
		require.Equal(t, sandbox.StatusCancelled, st)
	}
	require.LessOrEqual(t, b.sb.Stats().RateLimited, int64(min(8, ratelimit.ProbeBurst)-3), "only the probe burst's calls past the limit of 3")
	learned, err := b.rdb.HGet(context.Background(), ratelimit.KeyLearned, locGood).Result()
	require.NoError(t, err)
	require.Equal(t, "3:1500", learned, "3 per 1.5 s, from the headers")
	require.Equal(t, 8.0, b.processed(tasks.OutcomeCancelled))
	n, err := b.dead.Count(context.Background())
	require.NoError(t, err)
	require.Zero(t, n)
}

// TestCampaignCountsAndExpired: campaign counters follow every outcome, and
// a cancel whose send time passed (by more than the grace) ends expired
// without an API call; sent again with a corrected send time, it runs.
func TestCampaignCountsAndExpired(t *testing.T) {
	t.Parallel()
	b := setup(t, sandbox.Config{}, producer.Config{})
	ctx := context.Background()
	ids := b.sb.ScheduleN(locGood, 4, false)
	for _, id := range ids {
		require.Equal(t, producer.Enqueued, b.producer.Enqueue(ctx, producer.Item{Kind: ghl.KindMessage, MessageID: id, LocationID: locGood, CampaignID: "camp"}).Status)
	}
	past := b.sb.ScheduleN(locGood, 1, false)[0]
	require.Equal(t, producer.Enqueued, b.producer.Enqueue(ctx, producer.Item{Kind: ghl.KindMessage, MessageID: past,
		LocationID: locGood, CampaignID: "camp", SendAt: time.Now().Add(-tasks.ExpiryGrace - time.Minute).Unix()}).Status)
	// Within the grace HighLevel is still asked: a send_at from a clock
	// running ahead, or a send HighLevel makes late, is still cancelled.
	late := b.sb.ScheduleN(locGood, 1, false)[0]
	require.Equal(t, producer.Enqueued, b.producer.Enqueue(ctx, producer.Item{Kind: ghl.KindMessage, MessageID: late,
		LocationID: locGood, CampaignID: "camp", SendAt: time.Now().Add(-30 * time.Second).Unix()}).Status)
	bad := b.sb.ScheduleN(locBadTok, 1, false)[0]
	require.Equal(t, producer.Enqueued, b.producer.Enqueue(ctx, producer.Item{Kind: ghl.KindMessage, MessageID: bad, LocationID: locBadTok, CampaignID: "camp"}).Status)
	b.waitDrained(t, 10*time.Second)

	s, ok, err := campaign.New(b.rdb, 0).Get(ctx, "camp")
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, int64(7), s.Total)
	require.Equal(t, int64(7), s.Done)
	require.Equal(t, int64(5), s.Cancelled)
	require.Equal(t, int64(1), s.Expired)
	require.Equal(t, int64(1), s.DeadLettered)
	require.Equal(t, map[string]int64{"unauthorized": 1}, s.DeadByReason)
	require.True(t, s.Complete)
	st, _, _ := b.sb.MessageStatus(past)
	require.Equal(t, sandbox.StatusScheduled, st, "no call was made for the expired one")
	st, _, _ = b.sb.MessageStatus(late)
	require.Equal(t, sandbox.StatusCancelled, st, "within the grace the cancel was made")
	require.Equal(t, int64(6), b.sb.Stats().Requests)
	require.Equal(t, 1.0, b.processed(tasks.OutcomeExpired))

	// The send time was wrong (the message is still scheduled): sent again
	// with the right one, it runs and is cancelled, counted once. Sent
	// with the wrong one again (the file run twice), it stays expired.
	require.Equal(t, producer.AlreadyDone, b.producer.Enqueue(ctx, producer.Item{Kind: ghl.KindMessage, MessageID: past,
		LocationID: locGood, CampaignID: "camp", SendAt: time.Now().Add(-tasks.ExpiryGrace - time.Minute).Unix()}).Status)
	require.Equal(t, producer.Requeued, b.producer.Enqueue(ctx, producer.Item{Kind: ghl.KindMessage, MessageID: past,
		LocationID: locGood, CampaignID: "camp", SendAt: time.Now().Add(time.Hour).Unix()}).Status)
	b.waitDrained(t, 10*time.Second)
	require.Eventually(t, func() bool {
		s, _, _ = campaign.New(b.rdb, 0).Get(ctx, "camp")
		return s.Done == 7
	}, 5*time.Second, 50*time.Millisecond)
	st, _, _ = b.sb.MessageStatus(past)
	require.Equal(t, sandbox.StatusCancelled, st)
	require.Equal(t, int64(6), s.Cancelled)
	require.Zero(t, s.Expired)
	require.Equal(t, int64(7), s.Total)

	// Requeue the dead letter (the token is still bad): it is pending again
	// and then dead again, counted once.
	st2, err := b.producer.Requeue(ctx, b.dead, deadletter.Filter{CampaignID: "camp"}, nil)
	require.NoError(t, err)
	require.Equal(t, 1, st2.Requeued)
	b.waitDrained(t, 10*time.Second)
	require.Eventually(t, func() bool {
		s, _, _ = campaign.New(b.rdb, 0).Get(ctx, "camp")
		return s.Done == 7
	}, 5*time.Second, 50*time.Millisecond)
	require.Equal(t, int64(1), s.DeadLettered)
	require.Equal(t, int64(7), s.Total)
}

// TestAPIFaultSuite is issue 6's fault scenario at its exact ratios: the
// sandbox answers 20% of calls 5xx, resets 5% of connections, lets 2% hang
// past the client timeout, and adds random latency. Every scheduled message
// must end cancelled, nothing may be dead-lettered, and every fault must
// show up as exactly one retry in the metrics, by reason.
func TestAPIFaultSuite(t *testing.T) {
	t.Parallel()
	b := setup(t, sandbox.Config{Seed: 42, RateMax: -1, Faults: sandbox.Faults{
		ErrorRate: 0.20, ResetRate: 0.05, TimeoutRate: 0.02, Latency: 2 * time.Millisecond, LatencyJitter: 20 * time.Millisecond,
	}}, producer.Config{}, noPacing, func(c *worker.Config) {
		// Hung calls last until this timeout. It is long enough that no
		// call the sandbox answered can time out on a loaded machine,
		// which would be a retry with no fault counted for it.
		c.GHL.Timeout = 3 * time.Second
		c.Concurrency = 50
	})
	const n = 1500
	ids := b.sb.ScheduleN(locGood, n, false)
	b.enqueueAll(t, locGood, ids)
	b.waitDrained(t, 2*time.Minute)

	b.requireAllCancelledNoneDead(t, ids)
	s := b.sb.Stats()
	t.Logf("%d messages: %d calls, %d 5xx, %d resets, %d timeouts; %v retries; lost 0; duplicate calls (answered not_cancellable) %d",
		n, s.Requests, s.Faulted5xx, s.Resets, s.Timeouts, b.processed(tasks.OutcomeRetry), s.NotCancellable)
	require.Positive(t, s.Faulted5xx)
	require.Positive(t, s.Resets)
	require.Positive(t, s.Timeouts)
	// A timed-out call may have been applied before the client gave up; its
	// retry then finds nothing to cancel. Either way the message is
	// cancelled (checked above) and accounted for exactly once.
	require.Equal(t, float64(n), b.processed(tasks.OutcomeCancelled)+b.processed(tasks.OutcomeNotCancellable))
	retries := func(reason string) float64 {
		return testutil.ToFloat64(b.worker.Metrics.Retries.WithLabelValues(reason))
	}
	require.Equal(t, float64(s.Faulted5xx), retries(string(ghl.ReasonServerError)))
	require.Equal(t, float64(s.Resets+s.Timeouts), retries(string(ghl.ReasonNetwork))+retries(string(ghl.ReasonTimeout)))
	require.Equal(t, float64(s.Faulted5xx+s.Resets+s.Timeouts), b.processed(tasks.OutcomeRetry), "one retry per fault, no more")
	// Bounded: no message needed more calls than the worst fault streak
	// allows at these rates (0.27^12 per message is ~1e-7).
	for _, id := range ids {
		_, cancels, _ := b.sb.MessageStatus(id)
		require.LessOrEqual(t, cancels, 1, "a message was cancelled twice: %s", id)
	}
	require.Less(t, float64(s.Requests), float64(n)*1.6, "calls per message stay near 1/(1-0.27)")
}

// TestCircuitBreakerPausesDuringAnOutage: HighLevel answers every call 5xx
// for 2 s. With the breaker, workers stop calling after the first failures
// (probing now and then), no task burns its retries (MaxRetry 5 runs out in
// about a second of backoff), and everything is cancelled once the outage
// ends. Without it (the control), the outage dead-letters tasks.
func TestCircuitBreakerPausesDuringAnOutage(t *testing.T) {
	t.Parallel()
	for _, withBreaker := range []bool{true, false} {
		t.Run(fmt.Sprintf("breaker=%t", withBreaker), func(t *testing.T) {
			t.Parallel()
			b := setup(t, sandbox.Config{Seed: 3, RateMax: -1, Faults: sandbox.Faults{ErrorRate: 1}},
				producer.Config{MaxRetry: 5}, noPacing, func(c *worker.Config) {
					c.NoBreaker = !withBreaker
					c.Breaker = breaker.Config{OpenFor: 300 * time.Millisecond, MaxOpenFor: 600 * time.Millisecond}
				})
			ids := b.sb.ScheduleN(locGood, 300, false)
			b.enqueueAll(t, locGood, ids)
			ctx := context.Background()
			if withBreaker {
				time.Sleep(2 * time.Second)
				require.Equal(t, 1.0, testutil.ToFloat64(b.worker.Metrics.CircuitOpen), "paused during the outage")
			} else {
				// The control: the same outage, however slow the machine,
				// until it has cost a task its last retry.
				require.Eventually(t, func() bool { n, _ := b.dead.Count(ctx); return n > 0 }, time.Minute, 20*time.Millisecond,
					"without the breaker the outage burns retries")
			}
			during := b.sb.Stats().Requests
			b.sb.SetFaults(sandbox.Faults{})
			b.waitDrained(t, time.Minute)
			dead, err := b.dead.Count(ctx)
			require.NoError(t, err)
			t.Logf("calls during the outage: %d; dead letters: %d; paused: %v", during, dead, b.processed(tasks.OutcomePaused))
			if !withBreaker {
				require.Greater(t, during, int64(300), "every task called again and again")
				return
			}
			b.requireAllCancelledNoneDead(t, ids)
			require.Less(t, during, int64(100), "workers stopped hammering")
			require.Positive(t, b.processed(tasks.OutcomePaused))
			m := b.worker.Metrics
			require.GreaterOrEqual(t, testutil.ToFloat64(m.CircuitChanges.WithLabelValues("open")), 1.0)
			require.GreaterOrEqual(t, testutil.ToFloat64(m.CircuitChanges.WithLabelValues("closed")), 1.0)
			require.Zero(t, testutil.ToFloat64(m.CircuitOpen), "closed again after the outage")
			require.Equal(t, b.processed(tasks.OutcomePaused), testutil.ToFloat64(m.Retries.WithLabelValues(tasks.ReasonCircuitOpen)))
		})
	}
}

// TestRetriesKeepTheirCampaignAlive: marking a task retrying pushes its
// campaign's expiry as an outcome does (at most once a minute), so a
// campaign with a task between retries does not expire under it; a
// campaign that is gone is not brought back. (Its counters used to expire
// under the retrying task, which then settled into a campaign recreated
// with no total: "running" forever, 1 done of 0.) Checked on the keys'
// expiry rather than by waiting for one, so a slow machine changes nothing.
func TestRetriesKeepTheirCampaignAlive(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	p := producer.New(rdb, producer.Config{CampaignRetention: 10 * time.Second})
	require.Equal(t, producer.Enqueued, p.Enqueue(ctx, producer.Item{Kind: ghl.KindMessage, MessageID: "retryKeeps0000000001",
		LocationID: locGood, CampaignID: "kept"}).Status)
	k := ledger.CampaignKey("kept")
	led := ledger.New(rdb, ledger.Config{Retention: time.Hour})
	taskID := tasks.TaskID(ghl.KindMessage, "retryKeeps0000000001")
	ttl := func(key string) time.Duration {
		d, err := rdb.PTTL(ctx, key).Result()
		require.NoError(t, err)
		return d
	}
	// Last updated two minutes ago: the retry pushes every key's expiry.
	require.NoError(t, rdb.HSet(ctx, k, "updated_at", time.Now().Add(-2*time.Minute).UnixMilli()).Err())
	require.NoError(t, led.Retrying(ctx, taskID, "kept", "", ""))
	for _, key := range []string{k, k + ":retrying", k + ":locations"} {
		require.Greater(t, ttl(key), 59*time.Minute, key)
	}
	// Updated just now: the next retry within the minute writes nothing
	// more than its retrying entry.
	require.NoError(t, rdb.PExpire(ctx, k, 10*time.Second).Err())
	require.NoError(t, led.Retrying(ctx, taskID, "kept", "", ""))
	require.LessOrEqual(t, ttl(k), 10*time.Second, "touched twice within a minute")

	// A campaign that is gone stays gone.
	require.NoError(t, led.Retrying(ctx, tasks.TaskID(ghl.KindMessage, "retryGone00000000001"), "never-there", "", ""))
	left, err := rdb.Keys(ctx, ledger.CampaignKey("never-there")+"*").Result()
	require.NoError(t, err)
	require.Empty(t, left)
}

// TestOutcomeInAGoneCampaign: a campaign whose counters are gone (expired
// or deleted) while its task waits is not brought back by the task's
// outcome; the message's record still has it.
func TestOutcomeInAGoneCampaign(t *testing.T) {
	t.Parallel()
	b := setup(t, sandbox.Config{RateMax: -1, Faults: sandbox.Faults{ErrorRate: 1}}, producer.Config{},
		noPacing, func(c *worker.Config) { c.NoBreaker = true })
	ctx := context.Background()
	id := b.sb.ScheduleN(locGood, 1, false)[0]
	require.Equal(t, producer.Enqueued, b.producer.Enqueue(ctx, producer.Item{Kind: ghl.KindMessage, MessageID: id,
		LocationID: locGood, CampaignID: "gone"}).Status)
	require.Eventually(t, func() bool { return b.sb.Stats().Faulted5xx > 0 }, 10*time.Second, 10*time.Millisecond)
	// All of the campaign's keys at once (a retry between listing and
	// deleting them could otherwise leave one).
	k := ledger.CampaignKey("gone")
	n, err := b.rdb.Del(ctx, k, k+":outcomes", k+":retrying", k+":locations", k+":failed_sweeps", k+":sweeplist").Result()
	require.NoError(t, err)
	require.Positive(t, n)
	b.sb.SetFaults(sandbox.Faults{})
	b.waitDrained(t, 30*time.Second)

	_, ok, err := campaign.New(b.rdb, 0).Get(ctx, "gone")
	require.NoError(t, err)
	require.False(t, ok, "a gone campaign came back")
	left, err := b.rdb.Keys(ctx, ledger.CampaignKey("gone")+"*").Result()
	require.NoError(t, err)
	require.Empty(t, left)
	o, c, _, err := ledger.New(b.rdb, ledger.Config{}).Record(ctx, tasks.TaskID(ghl.KindMessage, id))
	require.NoError(t, err)
	require.NotNil(t, o)
	require.Equal(t, ledger.Cancelled, o.Outcome)
	require.Equal(t, "gone", c)
}

// TestStopMidCallIsNoFailure: a worker stopped (SIGTERM) while calls are
// in flight past its shutdown timeout. asynq puts those tasks back as they
// were, with no retry used. They must not be reported as failed: no dead
// letter on a task's last try (here every try is the last: no retries),
// and no "retrying" left in the campaign once another worker finishes
// them (it used to read "retrying 25" on a complete campaign for good).
func TestStopMidCallIsNoFailure(t *testing.T) {
	t.Parallel()
	rdb := redisServer.Client(t)
	sb := sandbox.New(sandbox.Config{Faults: sandbox.Faults{Latency: 1500 * time.Millisecond}})
	sb.AddLocation(locGood, tokGood)
	srv := httptest.NewServer(sb.Handler())
	t.Cleanup(srv.Close)
	run := func(shutdown time.Duration) (context.CancelFunc, chan error) {
		w, err := worker.New(worker.Config{Redis: rdb, GHL: ghl.Config{BaseURL: srv.URL, Timeout: 5 * time.Second},
			Tokens: tokenMap{locGood: tokGood}, Concurrency: 20, NoPacing: true, ShutdownTimeout: shutdown,
			DelayedCheckInterval: 100 * time.Millisecond, Backoff: tasks.Backoff{Base: 50 * time.Millisecond, Cap: 200 * time.Millisecond}})
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- w.Run(ctx) }()
		return cancel, done
	}
	ctx := context.Background()
	p := producer.New(rdb, producer.Config{})
	var ids []string
	for _, c := range []struct {
		name  string
		retry int
	}{{"stop-retries", 0}, {"stop-last-try", -1}} {
		for _, id := range sb.ScheduleN(locGood, 5, false) {
			ids = append(ids, id)
			require.Equal(t, producer.Enqueued, p.Enqueue(ctx, producer.Item{Kind: ghl.KindMessage, MessageID: id, LocationID: locGood,
				CampaignID: c.name, MaxRetry: c.retry}).Status)
		}
	}
	stop, done := run(200 * time.Millisecond)
	require.Eventually(t, func() bool { return sb.Stats().Requests >= int64(len(ids)) }, 10*time.Second, 10*time.Millisecond, "all calls in flight")
	stop()
	require.NoError(t, <-done)
	n, err := deadletter.New(rdb).Count(ctx)
	require.NoError(t, err)
	require.Zero(t, n, "a stop is no failure, on a last try neither")

	stop, done = run(5 * time.Second)
	t.Cleanup(func() { stop(); <-done })
	for _, c := range []string{"stop-retries", "stop-last-try"} {
		var s campaign.Status
		require.Eventually(t, func() bool {
			s, _, _ = campaign.New(rdb, 0).Get(ctx, c)
			return s.Complete
		}, 20*time.Second, 50*time.Millisecond, c)
		require.Equal(t, int64(5), s.Cancelled, c)
		require.Zero(t, s.DeadLettered, c)
		require.Zero(t, s.Retrying, "%s: nothing is left retrying on a complete campaign", c)
	}
	for _, id := range ids {
		st, _, _ := sb.MessageStatus(id)
		require.Equal(t, sandbox.StatusCancelled, st)
	}
}
