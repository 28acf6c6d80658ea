package tasks

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/breaker"
	"github.com/ghlcancel/ghlcancel/internal/campaign"
	"github.com/ghlcancel/ghlcancel/internal/deadletter"
	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/ledger"
	"github.com/ghlcancel/ghlcancel/internal/ratelimit"
	"github.com/ghlcancel/ghlcancel/internal/redistest"
	"github.com/ghlcancel/ghlcancel/internal/sandbox"
	"github.com/ghlcancel/ghlcancel/internal/syncbuf"
	"github.com/ghlcancel/ghlcancel/internal/tokens"
)

var redisServer *redistest.Server

func TestMain(m *testing.M) { redistest.Main(m, &redisServer) }

const (
	hLoc = "locHandler0000000001"
	hTok = "tok-handler"
)

// Fakes for the handler's collaborators. Each fake answers one way.

type fakePacer struct {
	admit   func(ratelimit.Request) (ledger.Admission, error)
	observe func()
}

func (p fakePacer) Admit(_ context.Context, r ratelimit.Request) (ledger.Admission, error) {
	return p.admit(r)
}
func (p fakePacer) Observe(context.Context, string, ghl.Limits, *ghl.RateLimitError) error {
	if p.observe != nil {
		p.observe()
	}
	return nil
}

type openBreaker struct{ abandoned atomic.Int32 }

func (b *openBreaker) Allow() (bool, error) {
	return false, &breaker.OpenError{RetryAfter: time.Minute, State: breaker.Open}
}
func (b *openBreaker) Record(bool, bool) {}
func (b *openBreaker) Abandon(bool)      { b.abandoned.Add(1) }

type tokenFunc func(loc string) (string, error)

func (f tokenFunc) Token(_ context.Context, loc string) (string, error) { return f(loc) }

type hBundle struct {
	rdb    *redis.Client
	sb     *sandbox.Server
	api    *ghl.Client
	h      *Handler
	led    *ledger.Ledger
	calls  *atomic.Int64 // API calls that reached the server
	answer atomic.Pointer[func(w http.ResponseWriter, r *http.Request) bool]
}

// hSetup builds a handler on a fresh Redis database and a sandbox; b.answer,
// when set and returning true, answers a call instead of the sandbox.
func hSetup(t *testing.T) *hBundle {
	t.Helper()
	b := &hBundle{rdb: redisServer.Client(t), sb: sandbox.New(sandbox.Config{}), calls: &atomic.Int64{}}
	b.sb.AddLocation(hLoc, hTok)
	inner := b.sb.Handler()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.calls.Add(1)
		if f := b.answer.Load(); f != nil && (*f)(w, r) {
			return
		}
		inner.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	api, err := ghl.New(ghl.Config{BaseURL: srv.URL, Timeout: 2 * time.Second})
	require.NoError(t, err)
	b.api = api
	b.led = ledger.New(b.rdb, ledger.Config{WriteBackoff: 10 * time.Millisecond})
	b.h = &Handler{API: api, Ledger: b.led, Tokens: tokens.Static(hTok)}
	// The tasks' campaign exists, as an enqueue makes it: outcomes are
	// counted only in a campaign that is still there.
	require.NoError(t, b.rdb.HSet(context.Background(), ledger.CampaignKey("hc"), "total", 0, "started_at", time.Now().UnixMilli()).Err())
	return b
}

func (b *hBundle) respond(f func(w http.ResponseWriter, r *http.Request) bool) { b.answer.Store(&f) }

// failEmailReads answers every read of an email (GET) with status and a
// HighLevel-style JSON message.
func (b *hBundle) failEmailReads(status int, message string) {
	b.respond(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/conversations/messages/email/") {
			return false
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(map[string]any{"statusCode": status, "message": message})
		return true
	})
}

func cancelTaskOf(t *testing.T, kind ghl.Kind, id string) *asynq.Task {
	t.Helper()
	task, err := NewCancelTask(kind, CancelPayload{MessageID: id, LocationID: hLoc, CampaignID: "hc"}, TaskOptions{})
	require.NoError(t, err)
	return task
}

// process runs one delivery with a 20 s deadline, as asynq would.
func (b *hBundle) process(t *testing.T, id string, retried, maxRetry int) (*Report, error) {
	t.Helper()
	return b.processKind(t, ghl.KindMessage, id, retried, maxRetry)
}

func (b *hBundle) processKind(t *testing.T, kind ghl.Kind, id string, retried, maxRetry int) (*Report, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ctx, rep := WithReport(ctx)
	err := b.h.Process(ctx, cancelTaskOf(t, kind, id), TaskInfo{ID: TaskID(kind, id), Queue: QueueDefault, Retried: retried, MaxRetry: maxRetry})
	return rep, err
}

// fate reads what Redis says happened to a message: its recorded outcome
// and dead letter (if any) and its campaign's counters.
func (b *hBundle) fate(t *testing.T, id string) (*ledger.Outcome, *deadletter.Record, campaign.Status) {
	t.Helper()
	return b.fateOf(t, ghl.KindMessage, id)
}

func (b *hBundle) fateOf(t *testing.T, kind ghl.Kind, id string) (*ledger.Outcome, *deadletter.Record, campaign.Status) {
	t.Helper()
	ctx := context.Background()
	o, _, _, err := b.led.Record(ctx, TaskID(kind, id))
	require.NoError(t, err)
	rec, ok, err := deadletter.New(b.rdb).Get(ctx, TaskID(kind, id))
	require.NoError(t, err)
	st, _, err := campaign.New(b.rdb, 0).Get(ctx, "hc")
	require.NoError(t, err)
	if !ok {
		return o, nil, st
	}
	return o, &rec, st
}

// TestFinalAttemptAlwaysEndsInOneFate: on a task's final attempt asynq
// archives whatever the handler returns, so every way out must end in
// exactly one recorded outcome or dead letter, with its reason.
func TestFinalAttemptAlwaysEndsInOneFate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		tweak  func(b *hBundle)
		reason string // dead-letter reason; "" means a non-dead outcome
		calls  int64  // API calls expected
	}{
		{"paced: the location's slot is too far", func(b *hBundle) {
			b.h.Pacer = fakePacer{admit: func(ratelimit.Request) (ledger.Admission, error) {
				return ledger.Admission{}, &ratelimit.SnoozeError{RetryAfter: time.Hour, Reason: "pacing"}
			}}
		}, ReasonPaced, 0},
		{"circuit breaker open", func(b *hBundle) { b.h.Breaker = &openBreaker{} }, ReasonCircuitOpen, 0},
		{"429 asking for longer than the deadline", func(b *hBundle) {
			b.respond(func(w http.ResponseWriter, _ *http.Request) bool {
				w.Header().Set("Retry-After", "3600")
				w.WriteHeader(429)
				_, _ = w.Write([]byte(`{"statusCode":429,"message":"Too many requests"}`))
				return true
			})
		}, string(ghl.ReasonRateLimited), 1},
		{"token source fails", func(b *hBundle) {
			b.h.Tokens = tokenFunc(func(string) (string, error) { return "", errors.New("vault unreachable") })
		}, string(ghl.ReasonTokenSource), 0},
		{"limiter cannot reach Redis", func(b *hBundle) {
			b.h.Pacer = fakePacer{admit: func(ratelimit.Request) (ledger.Admission, error) {
				return ledger.Admission{}, errors.New("dial tcp: connection refused")
			}}
		}, ReasonLimiter, 0},
		{"5xx on the final attempt", func(b *hBundle) {
			b.respond(func(w http.ResponseWriter, _ *http.Request) bool {
				w.WriteHeader(503)
				_, _ = w.Write([]byte(`{"statusCode":503,"message":"unavailable"}`))
				return true
			})
		}, string(ghl.ReasonServerError), 1},
		{"misrouted on the final attempt", func(b *hBundle) {
			b.respond(func(w http.ResponseWriter, r *http.Request) bool {
				w.WriteHeader(404)
				_, _ = fmt.Fprintf(w, `{"statusCode":404,"message":"Cannot DELETE %s","error":"Not Found"}`, r.URL.Path)
				return true
			})
		}, string(ghl.ReasonMisrouted), 1},
		{"token endpoint misrouted (GHL_BASE_URL)", func(b *hBundle) {
			b.h.Tokens = tokenFunc(func(string) (string, error) { return "", misroutedTokenErr() })
		}, string(ghl.ReasonMisrouted), 0},
		{"panic before the call", func(b *hBundle) {
			b.h.Tokens = tokenFunc(func(string) (string, error) { panic("token source bug") })
		}, ReasonPanic, 0},
		{"panic after the call", func(b *hBundle) {
			b.h.Pacer = fakePacer{
				admit: func(r ratelimit.Request) (ledger.Admission, error) {
					return b.led.Begin(context.Background(), r.TaskID, r.Campaign, r.Mark)
				},
				observe: func() { panic("observer bug") },
			}
		}, ReasonPanic, 1},
		{"cancelled", func(*hBundle) {}, "", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := hSetup(t)
			id := b.sb.ScheduleN(hLoc, 1, false)[0]
			tt.tweak(b)
			rep, err := b.process(t, id, 3, 3)
			o, rec, st := b.fate(t, id)
			require.NotNil(t, o, "the final attempt recorded no outcome (asynq would archive it silently)")
			require.Equal(t, int64(1), st.Done, "exactly one outcome in the campaign")
			require.Equal(t, tt.calls, b.calls.Load(), "API calls")
			if tt.reason == "" {
				require.NoError(t, err)
				require.Equal(t, ledger.Cancelled, o.Outcome)
				require.Nil(t, rec)
				return
			}
			require.ErrorIs(t, err, asynq.SkipRetry)
			require.Equal(t, ledger.DeadLettered, o.Outcome)
			require.NotNil(t, rec, "a dead letter with its reason")
			require.Equal(t, tt.reason, rec.Reason)
			require.Equal(t, tt.reason, o.Reason)
			require.Equal(t, OutcomeDeadLettered, rep.Outcome)
			require.Equal(t, tt.reason, rep.Reason)
			require.Equal(t, map[string]int64{tt.reason: 1}, st.DeadByReason)
		})
	}
}

// TestLastTryBeforeTheSpare: asynq keeps one attempt spare
// (AsynqMaxRetry), so on the attempt before it a failure is dead-lettered
// with its reason (its retries are used up) while a wait for the location's
// turn goes back to asynq, uses no retry and records nothing: with
// --max-retry 0 every first attempt is such a try, and a paced task must
// not be dead-lettered for waiting its turn.
func TestLastTryBeforeTheSpare(t *testing.T) {
	t.Parallel()
	t.Run("paced: goes back to asynq", func(t *testing.T) {
		t.Parallel()
		b := hSetup(t)
		id := b.sb.ScheduleN(hLoc, 1, false)[0]
		b.h.Pacer = fakePacer{admit: func(ratelimit.Request) (ledger.Admission, error) {
			return ledger.Admission{}, &ratelimit.SnoozeError{RetryAfter: time.Hour, Reason: "pacing"}
		}}
		rep, err := b.process(t, id, 2, 3)
		require.Error(t, err)
		require.NotErrorIs(t, err, asynq.SkipRetry)
		require.False(t, IsFailure(err), "a wait for the location's turn uses no retry")
		require.Equal(t, OutcomePaced, rep.Outcome)
		o, rec, st := b.fate(t, id)
		require.Nil(t, o)
		require.Nil(t, rec)
		require.Zero(t, st.Done)
		require.Zero(t, b.calls.Load())
	})
	t.Run("cooling down after a 429: goes back, reported rate_limited", func(t *testing.T) {
		t.Parallel()
		b := hSetup(t)
		id := b.sb.ScheduleN(hLoc, 1, false)[0]
		b.h.Pacer = fakePacer{admit: func(ratelimit.Request) (ledger.Admission, error) {
			return ledger.Admission{}, &ratelimit.SnoozeError{RetryAfter: time.Hour, Reason: ratelimit.SnoozeCooldown}
		}}
		rep, err := b.process(t, id, 2, 3)
		require.Error(t, err)
		require.False(t, IsFailure(err))
		require.Equal(t, OutcomeRateLimited, rep.Outcome)
		require.Equal(t, ReasonPaced, rep.Reason, "the retry reason stays the limiter's wait")
		require.Zero(t, b.calls.Load())
	})
	t.Run("5xx: dead-lettered, retries used up", func(t *testing.T) {
		t.Parallel()
		b := hSetup(t)
		id := b.sb.ScheduleN(hLoc, 1, false)[0]
		b.respond(func(w http.ResponseWriter, _ *http.Request) bool {
			w.WriteHeader(503)
			_, _ = w.Write([]byte(`{"statusCode":503,"message":"unavailable"}`))
			return true
		})
		rep, err := b.process(t, id, 2, 3)
		require.ErrorIs(t, err, asynq.SkipRetry)
		require.Equal(t, OutcomeDeadLettered, rep.Outcome)
		o, rec, _ := b.fate(t, id)
		require.Equal(t, ledger.DeadLettered, o.Outcome)
		require.NotNil(t, rec)
		require.Equal(t, string(ghl.ReasonServerError), rec.Reason)
		require.Equal(t, 3, rec.Attempts)
	})
}

// TestNotFinalAttemptRecordsNothing: the same failures before the final
// attempt go back to asynq (retry or snooze) and record no outcome.
func TestNotFinalAttemptRecordsNothing(t *testing.T) {
	t.Parallel()
	b := hSetup(t)
	id := b.sb.ScheduleN(hLoc, 1, false)[0]
	b.h.Breaker = &openBreaker{}
	rep, err := b.process(t, id, 0, 3)
	var oe *breaker.OpenError
	require.ErrorAs(t, err, &oe)
	require.False(t, IsFailure(err), "a paused task uses no retry")
	require.Equal(t, OutcomePaused, rep.Outcome)
	o, rec, _ := b.fate(t, id)
	require.Nil(t, o)
	require.Nil(t, rec)
}

// TestOutcomeWriteIsRetriedNotTheCall: when writing the outcome fails, the
// write is tried again in the handler; HighLevel is called once.
func TestOutcomeWriteIsRetriedNotTheCall(t *testing.T) {
	t.Parallel()
	b := hSetup(t)
	failures := b.failSettles(t, 2)
	id := b.sb.ScheduleN(hLoc, 1, false)[0]
	rep, err := b.process(t, id, 0, 3)
	require.NoError(t, err)
	require.Equal(t, OutcomeCancelled, rep.Outcome)
	require.Equal(t, int64(1), b.calls.Load())
	o, _, st := b.fate(t, id)
	require.Equal(t, ledger.Cancelled, o.Outcome)
	require.Equal(t, int64(1), st.Cancelled)
	require.Zero(t, failures.Load(), "two writes failed (the outcome above is the one that went through)")
}

// TestOutcomeWriteFailsOnTheLastAttempt: the cancel went through on the
// task's last attempt, and Redis refuses the outcome through every retry
// of the write. asynq archives whatever a last attempt returns, so the
// attempt must not say it will run again (it used to: log and metrics
// counted a retry): it reports unrecorded, tells the operator to send
// the message again, and hands asynq SkipRetry.
func TestOutcomeWriteFailsOnTheLastAttempt(t *testing.T) {
	t.Parallel()
	b := hSetup(t)
	failures := b.failSettles(t, 1000)
	var logs syncbuf.Buffer
	b.h.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	id := b.sb.ScheduleN(hLoc, 1, false)[0]
	rep, err := b.process(t, id, 3, 3) // the last attempt
	status, _, _ := b.sb.MessageStatus(id)
	require.Equal(t, sandbox.StatusCancelled, status, "HighLevel cancelled it")
	require.ErrorIs(t, err, asynq.SkipRetry)
	require.Equal(t, OutcomeUnrecorded, rep.Outcome)
	require.Equal(t, ReasonOutcomeWrite, rep.Reason)
	require.NotContains(t, logs.String(), "will run again")
	require.Contains(t, logs.String(), "send the message again")
	for _, field := range []string{"message_id=" + id, "location_id=" + hLoc, "kind=message", "campaign_id=hc"} {
		require.Contains(t, logs.String(), field, "what the operator needs to send it again")
	}
	o, rec, st := b.fate(t, id)
	require.Nil(t, o, "Redis took nothing")
	require.Nil(t, rec)
	require.Zero(t, st.Done)

	// Not the last attempt: the same failure is a retry.
	failures.Store(1000)
	id2 := b.sb.ScheduleN(hLoc, 1, false)[0]
	rep, err = b.process(t, id2, 0, 3)
	require.Error(t, err)
	require.NotErrorIs(t, err, asynq.SkipRetry)
	require.Equal(t, OutcomeRetry, rep.Outcome)
}

// failSettles makes the handler's ledger fail its next n settle writes
// and returns how many are left to fail.
func (b *hBundle) failSettles(t *testing.T, n int32) *atomic.Int32 {
	t.Helper()
	var failures atomic.Int32
	failures.Store(n)
	flaky := redis.NewClient(&redis.Options{Addr: b.rdb.Options().Addr, DB: b.rdb.Options().DB})
	t.Cleanup(func() { _ = flaky.Close() })
	flaky.AddHook(failSettle{left: &failures})
	b.h.Ledger = ledger.New(flaky, ledger.Config{WriteBackoff: 10 * time.Millisecond})
	return &failures
}

// failSettle fails the settle script's first calls (left of them). Only
// the failures are counted: a call that goes through may be two commands
// (EVALSHA answered NOSCRIPT, then EVAL), depending on whether another test
// loaded the script first.
type failSettle struct{ left *atomic.Int32 }

func (failSettle) DialHook(next redis.DialHook) redis.DialHook { return next }
func (f failSettle) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if name := cmd.Name(); (name == "evalsha" || name == "eval") && isSettle(cmd) && f.left.Load() > 0 && f.left.Add(-1) >= 0 {
			cmd.SetErr(errors.New("injected: connection reset"))
			return cmd.Err()
		}
		return next(ctx, cmd)
	}
}
func (failSettle) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// isSettle: the settle script is the one whose keys include the dead-letter index.
func isSettle(cmd redis.Cmder) bool {
	for _, a := range cmd.Args() {
		if a == deadletter.KeyIndex {
			return true
		}
	}
	return false
}

// TestRedeliveryAfterRecordingDoesNotCall: a task re-delivered after its
// outcome was recorded (the worker died before acknowledging) settles from
// the record, without calling HighLevel.
func TestRedeliveryAfterRecordingDoesNotCall(t *testing.T) {
	t.Parallel()
	b := hSetup(t)
	id := b.sb.ScheduleN(hLoc, 1, false)[0]
	_, err := b.process(t, id, 0, 3)
	require.NoError(t, err)
	require.Equal(t, int64(1), b.calls.Load())
	rep, err := b.process(t, id, 0, 3)
	require.NoError(t, err)
	require.Equal(t, OutcomeRecorded, rep.Outcome)
	require.Equal(t, int64(1), b.calls.Load(), "no second call")
	_, _, st := b.fate(t, id)
	require.Equal(t, int64(1), st.Cancelled)
	require.Equal(t, int64(0), st.NotCancellable)
}

// TestEarlierCallTurnsNotFoundIntoCancelled: the first delivery's call
// cancelled the message and the worker died before recording it; the
// re-delivery's "not found" is recorded as cancelled by that earlier call,
// not as not_cancellable.
func TestEarlierCallTurnsNotFoundIntoCancelled(t *testing.T) {
	t.Parallel()
	b := hSetup(t)
	id := b.sb.ScheduleN(hLoc, 1, false)[0]
	ctx := context.Background()
	// The first delivery: marked, called (HighLevel cancelled it), then died.
	_, err := b.led.Begin(ctx, TaskID(ghl.KindMessage, id), "hc", ledger.NewMark(1))
	require.NoError(t, err)
	_, err = b.api.Cancel(ctx, ghl.KindMessage, id, hTok)
	require.NoError(t, err)

	rep, err := b.process(t, id, 0, 3)
	require.NoError(t, err)
	require.Equal(t, OutcomeCancelled, rep.Outcome)
	o, _, st := b.fate(t, id)
	require.Equal(t, ledger.Cancelled, o.Outcome)
	require.Equal(t, ledger.ReasonEarlierAttempt, o.Reason)
	require.Equal(t, int64(1), st.CancelledEarlier)
	require.Zero(t, st.NotCancellable)

	// Without an earlier call, "not found" stays not_cancellable.
	unknown := sandbox.NewID()
	_, err = b.process(t, unknown, 0, 3)
	require.NoError(t, err)
	o, _, _ = b.fate(t, unknown)
	require.Equal(t, ledger.NotCancellable, o.Outcome)
}

// TestLastTryAfterALostAnswer: a 5xx or a lost answer on a task's last try
// is no failed cancel when HighLevel acted on a call: the message is read
// back before it is dead-lettered. Cancelled by our call (this one's or an
// earlier delivery's, whose answer was lost) is cancelled; gone out is
// already_sent; still scheduled is the dead letter, saying so; a read that
// fails (or no Verify) keeps the dead letter, saying it may be cancelled,
// and the requeue that follows reads it back.
func TestLastTryAfterALostAnswer(t *testing.T) {
	t.Parallel()
	const unavailable = `{"statusCode":503,"message":"unavailable"}`
	// answer returns a responder for the last try: DELETE lost (processed,
	// then 502) or refused (503, not processed); GET fine or 503.
	answer := func(inner http.Handler, lostDelete, failGet bool) func(w http.ResponseWriter, r *http.Request) bool {
		return func(w http.ResponseWriter, r *http.Request) bool {
			switch {
			case r.Method == http.MethodDelete && lostDelete:
				inner.ServeHTTP(httptest.NewRecorder(), r)
				w.WriteHeader(http.StatusBadGateway)
				return true
			case r.Method == http.MethodDelete, r.Method == http.MethodGet && failGet:
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = w.Write([]byte(unavailable))
				return true
			}
			return false
		}
	}
	tests := []struct {
		name                       string
		noVerify, sent             bool
		status                     string // the message's status, when another
		earlierLost                bool   // the first try's answer was lost (its call went through)
		lostDelete, failGet        bool   // on the last try
		outcome, reason, inMessage string
	}{
		{name: "earlier answer lost, 503 on the last try", earlierLost: true, outcome: ledger.Cancelled, reason: ledger.ReasonEarlierAttempt},
		{name: "the last try's answer lost", lostDelete: true, outcome: ledger.Cancelled, reason: ledger.ReasonEarlierAttempt},
		{name: "503 every time, never acted on", outcome: ledger.DeadLettered, reason: string(ghl.ReasonServerError), inMessage: "reads back as still scheduled"},
		{name: "went out before the cancel", sent: true, outcome: ledger.AlreadySent, reason: "sent"},
		{name: "answer lost and the read fails", lostDelete: true, failGet: true, outcome: ledger.DeadLettered, reason: string(ghl.ReasonServerError), inMessage: "may be cancelled already"},
		{name: "answer lost, no Verify", noVerify: true, lostDelete: true, outcome: ledger.DeadLettered, reason: string(ghl.ReasonServerError), inMessage: "may be cancelled already"},
		// A status HighLevel did not document says nothing of its fate
		// (after a "not found" it may; not after a 503): the dead letter
		// stands, naming it (found by review).
		{name: "an undocumented status", status: "rescheduled", outcome: ledger.DeadLettered, reason: string(ghl.ReasonServerError), inMessage: `reads back as "rescheduled"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := hSetup(t)
			b.h.Verify = !tt.noVerify
			inner := b.sb.Handler()
			var id string
			if tt.sent || tt.status != "" {
				id = b.sb.AddMessages(hLoc, sandbox.MessageSpec{Status: cmp.Or(tt.status, sandbox.StatusSent)})[0].CancelID
			} else {
				id = b.sb.ScheduleN(hLoc, 1, false)[0]
			}
			if tt.earlierLost {
				b.respond(answer(inner, true, false))
				_, err := b.process(t, id, 0, 3)
				require.Error(t, err, "the first try retries")
			}
			b.respond(answer(inner, tt.lostDelete, tt.failGet))
			_, err := b.process(t, id, 2, 3)
			o, rec, _ := b.fate(t, id)
			require.NotNil(t, o)
			require.Equal(t, tt.outcome, o.Outcome)
			require.Equal(t, tt.reason, o.Reason)
			if tt.outcome != ledger.DeadLettered {
				require.NoError(t, err)
				require.Nil(t, rec, "no dead letter for a message that is not going out")
				return
			}
			require.ErrorIs(t, err, asynq.SkipRetry)
			require.NotNil(t, rec)
			require.Contains(t, rec.APIMessage, tt.inMessage)
			if tt.lostDelete {
				// The "call sent" mark stays: after a requeue, the cancel's
				// "not found" is read as our call's cancel.
				_, _, sent, err := b.led.Record(context.Background(), TaskID(ghl.KindMessage, id))
				require.NoError(t, err)
				require.True(t, sent, "the call's mark is kept for the requeue")
			}
		})
	}
}

// TestVerifiedNotFoundWithoutAnEarlierCall: a cancel that finds nothing is
// read back. A message cancelled elsewhere (by hand, another tool, an
// earlier run whose records have expired) reads "failed", as a failed send
// does: not_cancellable with reason failed, not already_sent (it was
// reported sent though it never went out). A sent message is already_sent.
func TestVerifiedNotFoundWithoutAnEarlierCall(t *testing.T) {
	t.Parallel()
	b := hSetup(t)
	b.h.Verify = true
	ctx := context.Background()
	elsewhere := b.sb.ScheduleN(hLoc, 1, false)[0]
	_, err := b.api.Cancel(ctx, ghl.KindMessage, elsewhere, hTok) // not through a task: no mark
	require.NoError(t, err)
	sent := b.sb.AddMessages(hLoc, sandbox.MessageSpec{Status: sandbox.StatusSent})[0].CancelID
	for _, tt := range []struct{ id, outcome, reason string }{
		{elsewhere, ledger.NotCancellable, "failed"},
		{sent, ledger.AlreadySent, "sent"},
	} {
		_, err := b.process(t, tt.id, 0, 3)
		require.NoError(t, err)
		o, rec, _ := b.fate(t, tt.id)
		require.Nil(t, rec)
		require.Equal(t, tt.outcome, o.Outcome, tt.id)
		require.Equal(t, tt.reason, o.Reason, tt.id)
	}
	_, _, st := b.fate(t, sent)
	require.Equal(t, int64(1), st.NotCancellable)
	require.Equal(t, int64(1), st.AlreadySent)
}

// TestWrongKindIsNotNotFound: an email's emailMessageId sent as a message
// (a file run without --kind email) and an SMS id sent as an email each end
// as a dead letter wrong_kind naming what HighLevel has, and an email's
// conversation message id sent as a message as email_conversation_id
// naming the id to send, not as not_found (or, for the last, five retries and
// still_scheduled) while the message goes out; the message stays
// scheduled. Sent again with the right kind, each is cancelled. An id of
// neither kind is still not_found.
func TestWrongKindIsNotNotFound(t *testing.T) {
	t.Parallel()
	b := hSetup(t)
	b.h.Verify = true
	emails := b.sb.AddMessages(hLoc, sandbox.MessageSpec{Email: true}, sandbox.MessageSpec{Email: true}, sandbox.MessageSpec{Email: true})
	email, email2, email3 := emails[0], emails[1], emails[2]
	sms := b.sb.ScheduleN(hLoc, 1, false)[0]
	for _, tt := range []struct {
		name      string
		kind      ghl.Kind
		id        string
		reason    string
		says      string
		rightKind ghl.Kind
		rightID   string
	}{
		{"an email's id as a message", ghl.KindMessage, email.CancelID, ReasonWrongKind, `has an email (emailMessageId) (status "scheduled")`, ghl.KindEmail, email.CancelID},
		{"an SMS id as an email", ghl.KindEmail, sms, ReasonWrongKind, `has a message (SMS and other channels) (status "scheduled")`, ghl.KindMessage, sms},
		{"an email's conversation message id as a message", ghl.KindMessage, email2.ID, ReasonEmailConversationID, "emailMessageId (" + email2.CancelID + ")", ghl.KindEmail, email2.CancelID},
		// Not "send it as a message": that would only find the same again.
		{"an email's conversation message id as an email", ghl.KindEmail, email3.ID, ReasonEmailConversationID, "emailMessageId (" + email3.CancelID + ")", ghl.KindEmail, email3.CancelID},
	} {
		_, err := b.processKind(t, tt.kind, tt.id, 0, 3)
		require.ErrorIs(t, err, asynq.SkipRetry, tt.name)
		o, rec, _ := b.fateOf(t, tt.kind, tt.id)
		require.Equal(t, ledger.DeadLettered, o.Outcome, tt.name)
		require.NotNil(t, rec, tt.name)
		require.Equal(t, tt.reason, rec.Reason, tt.name)
		require.Contains(t, rec.APIMessage, tt.says, tt.name)
		require.Contains(t, rec.APIMessage, "send", tt.name)
		st, _, _ := b.sb.MessageStatus(tt.rightID)
		require.Equal(t, sandbox.StatusScheduled, st, tt.name)

		_, err = b.processKind(t, tt.rightKind, tt.rightID, 0, 3)
		require.NoError(t, err, tt.name)
		o, _, _ = b.fateOf(t, tt.rightKind, tt.rightID)
		require.Equal(t, ledger.Cancelled, o.Outcome, tt.name)
		st, _, _ = b.sb.MessageStatus(tt.rightID)
		require.Equal(t, sandbox.StatusCancelled, st, tt.name)
	}
	for _, kind := range []ghl.Kind{ghl.KindMessage, ghl.KindEmail} {
		_, err := b.processKind(t, kind, "noSuchMessage0000001", 0, 3)
		require.NoError(t, err)
		o, rec, _ := b.fateOf(t, kind, "noSuchMessage0000001")
		require.Nil(t, rec)
		require.Equal(t, ledger.NotFound, o.Outcome, kind)
	}
}

// TestOtherKindReadFailuresAreBounded: how HighLevel answers a read of an
// id as the other kind is unverified. If it fails (a 5xx), a message its
// own kind does not know retries a few times, then is a dead letter
// other_kind_unread, also on its last try: not a day of retries, and not a
// not_found that hides an email going out.
func TestOtherKindReadFailuresAreBounded(t *testing.T) {
	t.Parallel()
	b := hSetup(t)
	b.h.Verify = true
	b.failEmailReads(http.StatusBadGateway, "bad gateway")
	for _, tt := range []struct {
		name              string
		retried, maxRetry int
		retries           bool
	}{
		{"first attempt: retried", 0, 150, true},
		{"after the bound: a dead letter", OtherKindRetries, 150, false},
		{"on the last try: a dead letter", 1, 2, false},
	} {
		id := fmt.Sprintf("noSuchMessage%07d", tt.retried*10+tt.maxRetry%10)
		_, err := b.process(t, id, tt.retried, tt.maxRetry)
		o, rec, _ := b.fate(t, id)
		if tt.retries {
			require.Error(t, err, tt.name)
			require.True(t, IsFailure(err), tt.name)
			require.Nil(t, o, tt.name)
			require.Nil(t, rec, tt.name)
			continue
		}
		require.ErrorIs(t, err, asynq.SkipRetry, tt.name)
		require.Equal(t, ledger.DeadLettered, o.Outcome, tt.name)
		require.NotNil(t, rec, tt.name)
		require.Equal(t, ReasonOtherKindUnread, rec.Reason, tt.name)
		require.Contains(t, rec.APIMessage, "may be the other kind's", tt.name)
	}
}

// TestWrongTokenKeyRetriesThenDeadLetters: stored tokens that do not
// decrypt with this worker's key are retried a few times (a worker with an
// old environment during a rollout), then a dead letter token_key, not a
// day of token_source retries while the messages go out.
func TestWrongTokenKeyRetriesThenDeadLetters(t *testing.T) {
	t.Parallel()
	b := hSetup(t)
	b.h.Tokens = tokenFunc(func(string) (string, error) {
		return "", fmt.Errorf("oauth: stored tokens %w", tokens.ErrWrongKey)
	})
	id := b.sb.ScheduleN(hLoc, 1, false)[0]
	_, err := b.process(t, id, TokenKeyRetries-1, 150)
	require.Error(t, err)
	require.True(t, IsFailure(err), "retried")
	o, rec, _ := b.fate(t, id)
	require.Nil(t, o)
	require.Nil(t, rec)
	_, err = b.process(t, id, TokenKeyRetries, 150)
	require.ErrorIs(t, err, asynq.SkipRetry)
	_, rec, _ = b.fate(t, id)
	require.NotNil(t, rec)
	require.Equal(t, ReasonTokenKey, rec.Reason)
	require.Zero(t, b.calls.Load(), "nothing sent")
}

// countingBreaker is a closed breaker that counts what it is told.
type countingBreaker struct{ records, failures atomic.Int32 }

func (b *countingBreaker) Allow() (bool, error) { return false, nil }
func (b *countingBreaker) Record(failure, _ bool) {
	b.records.Add(1)
	if failure {
		b.failures.Add(1)
	}
}
func (b *countingBreaker) Abandon(bool) {}

// TestInvalidTokenIsNotANetworkFailure: a token with a line break inside
// (a secret pasted with it) cannot be sent. It used to fail in Go's
// transport as a "network error": retried for a day, dead-lettered
// "network" with a hint to check HighLevel, and counted by the breaker,
// which paused every location's cancels. It is a dead letter
// invalid_token at once: no call, no pacing slot, nothing for the breaker,
// and the error does not quote the token.
func TestInvalidTokenIsNotANetworkFailure(t *testing.T) {
	t.Parallel()
	b := hSetup(t)
	brk := &countingBreaker{}
	b.h.Breaker = brk
	admitted := atomic.Int32{}
	b.h.Pacer = fakePacer{admit: func(ratelimit.Request) (ledger.Admission, error) {
		admitted.Add(1)
		return ledger.Admission{}, nil
	}}
	b.h.Tokens = tokenFunc(func(string) (string, error) { return "secret-part\nsecond-line", nil })
	id := b.sb.ScheduleN(hLoc, 1, false)[0]
	rep, err := b.process(t, id, 0, 3)
	require.ErrorIs(t, err, asynq.SkipRetry)
	require.Equal(t, OutcomeDeadLettered, rep.Outcome)
	_, rec, st := b.fate(t, id)
	require.NotNil(t, rec)
	require.Equal(t, string(ghl.ReasonInvalidToken), rec.Reason)
	require.Contains(t, rec.APIMessage, "fix the location's token")
	require.NotContains(t, rec.APIMessage, "secret")
	require.NotContains(t, err.Error(), "secret")
	require.Equal(t, int64(1), st.DeadLettered)
	require.Zero(t, b.calls.Load(), "nothing is sent")
	require.Zero(t, admitted.Load(), "no pacing slot is taken")
	require.Zero(t, brk.records.Load(), "the breaker is told nothing")

	// The client refuses it too, as invalid_token and not retryable, for
	// every caller (a sweep's export, an OAuth token gone bad).
	_, err = b.api.Cancel(context.Background(), ghl.KindMessage, id, "secret-part second-part")
	var e *ghl.Error
	require.ErrorAs(t, err, &e)
	require.Equal(t, ghl.ReasonInvalidToken, e.Reason)
	require.False(t, e.Retryable)
	require.NotContains(t, err.Error(), "secret")
	require.Zero(t, b.calls.Load())
}

// TestRefusedCallClearsItsMark: a call HighLevel refused (401) was not
// carried out, so a later "not found" must not count as its cancel; a 5xx
// might have been, so its mark stays.
func TestRefusedCallClearsItsMark(t *testing.T) {
	t.Parallel()
	b := hSetup(t)
	ctx := context.Background()
	id := b.sb.ScheduleN(hLoc, 1, false)[0]
	b.respond(func(w http.ResponseWriter, _ *http.Request) bool {
		w.WriteHeader(503)
		_, _ = w.Write([]byte(`{"statusCode":503,"message":"unavailable"}`))
		return true
	})
	_, _ = b.process(t, id, 0, 3)
	_, _, sent, err := b.led.Record(ctx, TaskID(ghl.KindMessage, id))
	require.NoError(t, err)
	require.True(t, sent, "a 5xx may have cancelled it: the mark stays")

	id2 := b.sb.ScheduleN(hLoc, 1, false)[0]
	b.h.Tokens = tokenFunc(func(string) (string, error) { return "wrong", nil })
	b.answer.Store(nil)
	_, _ = b.process(t, id2, 0, 3) // 401: dead letter, mark cleared
	_, _, sent, err = b.led.Record(ctx, TaskID(ghl.KindMessage, id2))
	require.NoError(t, err)
	require.False(t, sent)
}

func TestReportDecodes(t *testing.T) {
	t.Parallel()
	b := hSetup(t)
	ctx, rep := WithReport(context.Background())
	err := b.h.Process(ctx, asynq.NewTask(TypeCancelMessage, []byte(`{not json`)), TaskInfo{ID: "msg:x", Queue: QueueDefault, MaxRetry: 3})
	require.ErrorIs(t, err, asynq.SkipRetry)
	require.Equal(t, ReasonInvalidPayload, rep.Reason)
	rec, ok, err := deadletter.New(b.rdb).Get(context.Background(), "msg:x")
	require.NoError(t, err)
	require.True(t, ok)
	var payload string
	require.NoError(t, json.Unmarshal([]byte(rec.Payload), &payload))
	require.Equal(t, "{not json", payload)
}

// TestOwnRefusedCallIsNoEarlierCall: a delivery whose first call HighLevel
// refused (429) and whose next call finds nothing has made no earlier call:
// an unknown id is not_found (or not_cancellable without verify), never
// "cancelled by an earlier attempt".
func TestOwnRefusedCallIsNoEarlierCall(t *testing.T) {
	t.Parallel()
	for _, verify := range []bool{true, false} {
		b := hSetup(t)
		b.h.Verify = verify
		b.h.Pacer = fakePacer{admit: func(r ratelimit.Request) (ledger.Admission, error) {
			return b.led.Begin(context.Background(), r.TaskID, r.Campaign, r.Mark)
		}}
		var refused atomic.Bool
		b.respond(func(w http.ResponseWriter, r *http.Request) bool {
			if r.Method == http.MethodDelete && refused.CompareAndSwap(false, true) {
				w.Header().Set("Retry-After", "1")
				w.WriteHeader(429)
				_, _ = w.Write([]byte(`{"statusCode":429,"message":"Too many requests"}`))
				return true
			}
			return false
		})
		unknown := sandbox.NewID()
		_, err := b.process(t, unknown, 0, 3)
		require.NoError(t, err)
		o, _, _ := b.fate(t, unknown)
		want := ledger.NotFound
		if !verify {
			want = ledger.NotCancellable
		}
		require.Equal(t, want, o.Outcome, "verify=%t", verify)
		require.Empty(t, o.Reason)
	}
}

// TestExpiredAfterAnEarlierCall: the send time passed while the task waited
// to be re-delivered; an earlier delivery's call went out before it and
// its answer was lost. Reading the message back says whether that call
// cancelled it; without such a call, expired makes no call at all.
func TestExpiredAfterAnEarlierCall(t *testing.T) {
	t.Parallel()
	b := hSetup(t)
	b.h.Verify = true
	ctx := context.Background()
	past := time.Now().Add(-ExpiryGrace - time.Minute).Unix()
	run := func(id string) *ledger.Outcome {
		task, err := NewCancelTask(ghl.KindMessage, CancelPayload{MessageID: id, LocationID: hLoc, CampaignID: "hc", SendAt: past}, TaskOptions{})
		require.NoError(t, err)
		require.NoError(t, b.h.Process(ctx, task, TaskInfo{ID: TaskID(ghl.KindMessage, id), Queue: QueueDefault, MaxRetry: 3}))
		o, _, _ := b.fate(t, id)
		return o
	}
	cancelledEarlier := b.sb.ScheduleN(hLoc, 1, false)[0]
	_, err := b.led.Begin(ctx, TaskID(ghl.KindMessage, cancelledEarlier), "hc", ledger.NewMark(1))
	require.NoError(t, err)
	_, err = b.api.Cancel(ctx, ghl.KindMessage, cancelledEarlier, hTok)
	require.NoError(t, err)
	calls := b.calls.Load()
	o := run(cancelledEarlier)
	require.Equal(t, ledger.Cancelled, o.Outcome)
	require.Equal(t, ledger.ReasonEarlierAttempt, o.Reason)
	require.Equal(t, calls+1, b.calls.Load(), "one read-back")

	plain := b.sb.ScheduleN(hLoc, 1, false)[0]
	calls = b.calls.Load()
	require.Equal(t, ledger.Expired, run(plain).Outcome)
	require.Equal(t, calls, b.calls.Load(), "no call for an expired cancel")
}

// TestRefusedExplicitTokenInAChain: a location's token set by hand (first
// in a Chain with refreshable sources) that HighLevel refuses is
// dead-lettered unauthorized after one call: nothing can refresh it, and
// it is not called again.
func TestRefusedExplicitTokenInAChain(t *testing.T) {
	t.Parallel()
	b := hSetup(t)
	b.h.Tokens = tokens.NewChain(tokenFunc(func(string) (string, error) { return "revoked-by-hand", nil }), refreshAll{})
	_, err := b.process(t, "chainMsg000000000001", 0, 5)
	require.ErrorIs(t, err, asynq.SkipRetry, "a dead letter")
	require.Equal(t, int64(1), b.calls.Load())
	_, rec, _ := b.fate(t, "chainMsg000000000001")
	require.NotNil(t, rec)
	require.Equal(t, string(ghl.ReasonUnauthorized), rec.Reason)
	require.Equal(t, 401, rec.HTTPStatus)
}

// refreshAll has no token for anyone but would refresh any (it must not be
// asked: the explicit token before it applies).
type refreshAll struct{}

func (refreshAll) Token(context.Context, string) (string, error) { return "", tokens.ErrNoToken }
func (refreshAll) Refresh(context.Context, string, string) (string, error) {
	panic("the explicit token's source is not refreshable; nothing else may refresh it")
}

// TestTakenBackIsNoFailure: a stopping worker's cut attempt (asynq has
// put the task back as it was) is no failure, wherever the cut falls: a
// cancel call, or the other-kind read of a "not found" (which used to be a
// dead letter other_kind_unread on a last try or after 3 retries). A cut
// while the worker is not stopping (asynq took the task: a lost lease)
// stays a failure.
func TestTakenBackIsNoFailure(t *testing.T) {
	t.Parallel()
	b := hSetup(t)
	b.h.Verify = true
	var hangDelete atomic.Bool
	b.respond(func(_ http.ResponseWriter, r *http.Request) bool {
		hang := strings.Contains(r.URL.Path, "/conversations/messages/email/") && r.Method == http.MethodGet ||
			hangDelete.Load() && r.Method == http.MethodDelete
		if hang {
			<-r.Context().Done()
		}
		return hang
	})
	run := func(id string, stopping bool, retried, maxRetry int) (*Report, error) {
		b.h.Stopping = func() bool { return stopping }
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(300*time.Millisecond, cancel)
		ctx, rep := WithReport(ctx)
		err := b.h.Process(ctx, cancelTaskOf(t, ghl.KindMessage, id), TaskInfo{ID: TaskID(ghl.KindMessage, id), Queue: QueueDefault, Retried: retried, MaxRetry: maxRetry})
		return rep, err
	}
	for _, tt := range []struct {
		name              string
		hangDelete        bool
		retried, maxRetry int
	}{
		{"other-kind read cut on the last try", false, 1, 2},
		{"other-kind read cut after the bound", false, OtherKindRetries, 150},
		{"cancel call cut on the last try", true, 1, 2},
	} {
		hangDelete.Store(tt.hangDelete)
		id := fmt.Sprintf("noSuchMessage%07d", tt.retried*10+tt.maxRetry%10+len(tt.name))
		rep, err := run(id, true, tt.retried, tt.maxRetry)
		require.Error(t, err, tt.name)
		require.NotErrorIs(t, err, asynq.SkipRetry, tt.name)
		require.Equal(t, ReasonInterrupted, rep.Reason, tt.name)
		o, rec, st := b.fate(t, id)
		require.Nil(t, o, "%s: no outcome", tt.name)
		require.Nil(t, rec, "%s: no dead letter", tt.name)
		require.Zero(t, st.Retrying, "%s: not marked retrying", tt.name)
	}
	// Not stopping: the cut other-kind read after the bound is the dead
	// letter it always was.
	hangDelete.Store(false)
	_, err := run("noSuchMessage9999999", false, OtherKindRetries, 150)
	require.ErrorIs(t, err, asynq.SkipRetry)
	_, rec, _ := b.fate(t, "noSuchMessage9999999")
	require.NotNil(t, rec)
	require.Equal(t, ReasonOtherKindUnread, rec.Reason)
}

// TestReadBackWaitsDoNotResendTheCancel: on a location whose slots are
// taken, a "not found" cancel's read-back cannot get a slot in the same
// delivery. The next delivery used to send the cancel again with its one
// slot, and the read-back again found none: the message never settled
// while the location's whole rate went on cancels (an audit saw 250 ids
// stuck for good). Now each delivery uses its slot for the step an earlier
// one left: one cancel, one read as its kind, one as the other, then
// not_found. A message that reads back scheduled sends the cancel again.
func TestReadBackWaitsDoNotResendTheCancel(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name      string
		scheduled bool // the read-back finds it scheduled (a cancel that missed)
		want      string
		cancels   int64
	}{
		{"an id HighLevel does not know", false, ledger.NotFound, 1},
		{"a message that reads back scheduled", true, ledger.Cancelled, 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := hSetup(t)
			b.h.Verify = true
			// One call per 300 ms: a cancel's read-back never fits its delivery.
			b.h.Pacer = ratelimit.New(b.rdb, ratelimit.Config{MaxWait: 20 * time.Millisecond, Lead: 10 * time.Millisecond,
				Overrides: map[string]ratelimit.Limit{hLoc: {N: 1, Period: 300 * time.Millisecond}}})
			var cancels, gets atomic.Int64
			id := "noSuchMessage0000777"
			if tt.scheduled {
				id = b.sb.ScheduleN(hLoc, 1, false)[0]
			}
			missed := atomic.Bool{}
			b.respond(func(w http.ResponseWriter, r *http.Request) bool {
				if r.Method == http.MethodGet {
					gets.Add(1)
					return false
				}
				cancels.Add(1)
				if tt.scheduled && missed.CompareAndSwap(false, true) {
					// The first cancel answers "not found" while the message stays scheduled.
					w.Header().Set("Content-Type", "application/json")
					w.WriteHeader(http.StatusNotFound)
					_, _ = w.Write([]byte(`{"statusCode":404,"message":"Message not found"}`))
					return true
				}
				return false
			})
			var o *ledger.Outcome
			retried := 0
			for d := 0; d < 8 && o == nil; d++ {
				_, err := b.process(t, id, retried, 150)
				if o, _, _ = b.fate(t, id); o != nil {
					break
				}
				require.Error(t, err)
				var sn snoozer
				if errors.As(err, &sn) {
					time.Sleep(sn.SnoozeFor()) // waits for its slot
				} else {
					retried++ // reads back scheduled: the cancel goes again
				}
			}
			require.NotNil(t, o, "settled within 8 deliveries (cancels %d, reads %d)", cancels.Load(), gets.Load())
			require.Equal(t, tt.want, o.Outcome)
			require.Equal(t, tt.cancels, cancels.Load(), "cancels sent")
		})
	}
}

// expiringTokens hands out an expired token until asked to refresh (an
// OAuth access token that expired between a delivery's cancel and a later
// delivery's read-back).
type expiringTokens struct {
	refreshes atomic.Int32
	fresh     string
	refused   error // what Refresh answers instead, when set
}

func (e *expiringTokens) Token(context.Context, string) (string, error) {
	if e.refreshes.Load() > 0 {
		return e.fresh, nil
	}
	return "expired-access-token", nil
}

func (e *expiringTokens) Refresh(context.Context, string, string) (string, error) {
	if e.refused != nil {
		return "", e.refused
	}
	e.refreshes.Add(1)
	return e.fresh, nil
}

// TestStagedReadRefreshesTheToken: a read a later delivery makes for a
// verify stage may meet an expired access token. It refreshes once and
// reads again (the cancel's refresh never ran: no cancel is sent), and a
// refused token on the read as the other kind is a failed read, not
// HighLevel saying it has no such message (not_found). Neither reading
// delivery leaves a "call sent" mark: it sends no cancel.
func TestStagedReadRefreshesTheToken(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	stage := func(t *testing.T, b *hBundle, id, st string) {
		t.Helper()
		_, err := b.led.Begin(ctx, TaskID(ghl.KindMessage, id), "hc", ledger.NewMark(1))
		require.NoError(t, err)
		require.NoError(t, b.led.Retrying(ctx, TaskID(ghl.KindMessage, id), "", ledger.NewMark(1), st))
		// The first delivery's mark was cleared (HighLevel answered "not found").
		require.NoError(t, b.rdb.HSet(ctx, ledger.Key(TaskID(ghl.KindMessage, id)), "s", "").Err())
	}
	var deletes atomic.Int32
	t.Run("an expired token is refreshed for the read", func(t *testing.T) {
		t.Parallel()
		b := hSetup(t)
		b.h.Verify = true
		toks := &expiringTokens{fresh: hTok}
		b.h.Tokens = toks
		b.respond(func(_ http.ResponseWriter, r *http.Request) bool {
			if r.Method == http.MethodDelete {
				deletes.Add(1)
			}
			return false
		})
		const id = "noSuchMessage0000881"
		stage(t, b, id, ledger.Stage(ledger.StageReadBack, 404))
		_, err := b.process(t, id, 0, 150)
		require.NoError(t, err)
		o, _, _ := b.fate(t, id)
		require.NotNil(t, o)
		require.Equal(t, ledger.NotFound, o.Outcome, "read as both kinds with the fresh token")
		require.Empty(t, o.Reason, "no earlier call: the reads left no mark")
		require.Equal(t, int32(1), toks.refreshes.Load())
		require.Zero(t, deletes.Load(), "no cancel sent again")
	})
	t.Run("a refused token on the other-kind read is no not_found", func(t *testing.T) {
		t.Parallel()
		b := hSetup(t)
		b.h.Verify = true
		b.h.Tokens = tokens.Static("a-revoked-token")
		const id = "noSuchMessage0000882"
		stage(t, b, id, ledger.Stage(ledger.StageOtherKind, 404))
		_, err := b.process(t, id, 0, 150)
		require.Error(t, err)
		require.True(t, IsFailure(err), "a failed read, retried")
		o, _, _ := b.fate(t, id)
		require.Nil(t, o, "not settled not_found")
		_, _, sent, err := b.led.Record(ctx, TaskID(ghl.KindMessage, id))
		require.NoError(t, err)
		require.False(t, sent, "a reading delivery leaves no call-sent mark")
	})
	t.Run("a refresh refused for good is the token's dead letter", func(t *testing.T) {
		t.Parallel()
		b := hSetup(t)
		b.h.Verify = true
		b.h.Tokens = &expiringTokens{refused: &tokens.GrantError{Reason: "invalid_grant", Message: "refresh token revoked"}}
		const id = "noSuchMessage0000884"
		stage(t, b, id, ledger.Stage(ledger.StageReadBack, 404))
		_, err := b.process(t, id, 0, 150)
		require.ErrorIs(t, err, asynq.SkipRetry)
		o, rec, _ := b.fate(t, id)
		require.NotNil(t, o)
		require.NotNil(t, rec)
		require.Equal(t, "invalid_grant", rec.Reason, "not a day of unauthorized retries")
	})
	t.Run("a 403 on the other-kind read stays a refusal", func(t *testing.T) {
		t.Parallel()
		b := hSetup(t)
		b.h.Verify = true
		b.failEmailReads(http.StatusForbidden, "The token does not have access to this location.")
		const id = "noSuchMessage0000885"
		stage(t, b, id, ledger.Stage(ledger.StageOtherKind, 404))
		_, err := b.process(t, id, 0, 150)
		require.NoError(t, err)
		o, _, _ := b.fate(t, id)
		require.NotNil(t, o)
		require.Equal(t, ledger.NotFound, o.Outcome)
	})
	t.Run("a paced read leaves no mark either", func(t *testing.T) {
		t.Parallel()
		b := hSetup(t)
		const id = "noSuchMessage0000883"
		stage(t, b, id, ledger.Stage(ledger.StageReadBack, 404))
		lim := ratelimit.New(b.rdb, ratelimit.Config{})
		adm, err := lim.Admit(ctx, ratelimit.Request{Location: hLoc, TaskID: TaskID(ghl.KindMessage, id), Campaign: "hc", Mark: ledger.NewMark(2)})
		require.NoError(t, err)
		require.Equal(t, ledger.Stage(ledger.StageReadBack, 404), adm.Stage)
		_, _, sent, err := b.led.Record(ctx, TaskID(ghl.KindMessage, id))
		require.NoError(t, err)
		require.False(t, sent)
	})
}

// countingEvents counts event-to-cancel observations.
type countingEvents struct{ n atomic.Int32 }

func (c *countingEvents) EventCancel(string, time.Duration) { c.n.Add(1) }

// TestEventLatencyObservedOncePerCancel: the event-to-cancel latency is
// observed at a cancel's first call. A delivery snoozed by a 429 comes
// back as a first attempt (asynq counts no retry for it), and its call
// used to be observed again; a retried one too when its first call failed.
func TestEventLatencyObservedOncePerCancel(t *testing.T) {
	t.Parallel()
	b := hSetup(t)
	ev := &countingEvents{}
	b.h.Events = ev
	id := b.sb.ScheduleN(hLoc, 1, false)[0]
	var refused atomic.Bool
	b.respond(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodDelete || !refused.CompareAndSwap(false, true) {
			return false
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Retry-After", "60")
		w.WriteHeader(http.StatusTooManyRequests)
		_, _ = w.Write([]byte(`{"statusCode":429,"message":"Too many requests"}`))
		return true
	})
	task, err := NewCancelTask(ghl.KindMessage, CancelPayload{MessageID: id, LocationID: hLoc, CampaignID: "hc",
		Event: "InboundMessage", EventAt: time.Now().Add(-time.Second).UnixMilli()}, TaskOptions{})
	require.NoError(t, err)
	deliver := func() error {
		return b.h.Process(context.Background(), task, TaskInfo{ID: TaskID(ghl.KindMessage, id), Queue: QueueDefault, MaxRetry: 150})
	}
	err = deliver()
	var sn snoozer
	require.ErrorAs(t, err, &sn, "the 429 snoozes the task")
	require.NoError(t, deliver())
	o, _, _ := b.fate(t, id)
	require.NotNil(t, o)
	require.Equal(t, ledger.Cancelled, o.Outcome)
	require.Equal(t, int32(1), ev.n.Load(), "one cancel, one observation")
}

// misroutedTokenErr is what a token source answers when its endpoint's answer
// is not HighLevel's (a typo in GHL_BASE_URL).
func misroutedTokenErr() error {
	return fmt.Errorf("oauth: %w", &ghl.Error{Reason: ghl.ReasonMisrouted, StatusCode: 404, Retryable: true,
		Request: "POST /api/oauth/token", Message: "404 with Cannot POST /api/oauth/token: not HighLevel's answer for this route; check GHL_BASE_URL"})
}

type routeLog struct {
	mu   sync.Mutex
	seen []string
}

func (r *routeLog) Observe(misrouted bool, request string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seen = append(r.seen, fmt.Sprint(misrouted, " ", request))
}

// TestMisroutedTokenEndpoint: a token call whose answer is not HighLevel's
// is retried as misrouted (not token_source, not a refusal), and the
// worker's route health hears of it: /readyz fails and one error names
// GHL_BASE_URL, as for the message routes, for locations whose every call
// starts at the token endpoint.
func TestMisroutedTokenEndpoint(t *testing.T) {
	t.Parallel()
	b := hSetup(t)
	var routes routeLog
	b.h.Routes = &routes
	b.h.Tokens = tokenFunc(func(string) (string, error) { return "", misroutedTokenErr() })
	id := b.sb.ScheduleN(hLoc, 1, false)[0]
	rep, err := b.process(t, id, 0, 3)
	require.Error(t, err)
	require.Equal(t, []string{OutcomeRetry, string(ghl.ReasonMisrouted)}, []string{rep.Outcome, rep.Reason})
	require.Equal(t, []string{"true POST /api/oauth/token"}, routes.seen)
	require.Zero(t, b.calls.Load())
}

// TestSnoozeOutcome: an attempt that comes back without using a retry is
// reported by why: a pacing wait is not a 429 (the dashboard read 1,400
// "rate_limited" attempts where HighLevel answered none), while the
// limiter's waits after one (a cool-down, the parked day) still are.
func TestSnoozeOutcome(t *testing.T) {
	sn := func(reason string) error {
		return fmt.Errorf("before the call: %w", &ratelimit.SnoozeError{RetryAfter: time.Second, Reason: reason})
	}
	for _, tt := range []struct {
		reason string
		err    error
		want   string
	}{
		{ReasonPaced, sn(ratelimit.SnoozePacing), OutcomePaced},
		{ReasonPaced, sn(ratelimit.SnoozeCooldown), OutcomeRateLimited},
		{ReasonPaced, sn(ratelimit.SnoozeDaily), OutcomeRateLimited},
		{ReasonPaced, errors.New("a snoozer of another kind"), OutcomePaced},
		{ReasonCircuitOpen, errors.New("open"), OutcomePaused},
		{string(ghl.ReasonRateLimited), errors.New("429"), OutcomeRateLimited},
		{"", nil, OutcomeRateLimited},
	} {
		require.Equal(t, tt.want, SnoozeOutcome(tt.reason, tt.err), "reason %q, error %v", tt.reason, tt.err)
	}
	require.Contains(t, Outcomes, OutcomePaced, "initialised at zero like the others")
}
