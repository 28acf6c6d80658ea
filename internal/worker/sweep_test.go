package worker_test

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/campaign"
	"github.com/ghlcancel/ghlcancel/internal/deadletter"
	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/ledger"
	"github.com/ghlcancel/ghlcancel/internal/producer"
	"github.com/ghlcancel/ghlcancel/internal/ratelimit"
	"github.com/ghlcancel/ghlcancel/internal/sandbox"
	"github.com/ghlcancel/ghlcancel/internal/sweep"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
	"github.com/ghlcancel/ghlcancel/internal/tokens"
	"github.com/ghlcancel/ghlcancel/internal/worker"
)

// sweepFixture fills a location the way the sweep issue describes: 1,200
// SMS (700 scheduled across 12 contacts, the rest sent) and 100 emails (60
// scheduled), contacts contact00..contact11.
func sweepFixture(sb *sandbox.Server, loc string) []sandbox.Added {
	return sb.AddMessages(loc, sandbox.MixedSpecs(1200, 700, 100, 60, 12)...)
}

// TestSweepByContactThenLocation: a contact sweep cancels exactly that
// contact's scheduled SMS and emails (emails by emailMessageId); a location
// sweep then cancels every other scheduled message there, none that was
// sent, nothing in another location; both campaigns complete with exact
// totals and sweep progress.
func TestSweepByContactThenLocation(t *testing.T) {
	t.Parallel()
	b := setup(t, sandbox.Config{RateMax: -1}, producer.Config{}, func(c *worker.Config) { c.NoPacing = true })
	ctx := context.Background()
	added := sweepFixture(b.sb, locGood)
	other := b.sb.ScheduleN(locBadTok, 1, false) // another location: never touched
	scheduled := func(pred func(sandbox.Added) bool) int {
		n := 0
		for _, a := range added {
			if a.Scheduled && pred(a) {
				n++
			}
		}
		return n
	}
	wantContact := scheduled(func(a sandbox.Added) bool { return a.Contact == "contact03" })

	st, err := b.producer.Sweep(ctx, producer.SweepRequest{Locations: []string{locGood}, ContactID: "contact03", CampaignID: "replied"})
	require.NoError(t, err)
	require.Equal(t, "replied", st.CampaignID)
	tr := campaign.New(b.rdb, 0)
	require.Eventually(t, func() bool { s, _, _ := tr.Get(ctx, "replied"); return s.Complete }, 30*time.Second, 50*time.Millisecond)
	s, _, err := tr.Get(ctx, "replied")
	require.NoError(t, err)
	require.Equal(t, int64(wantContact), s.Total)
	require.Equal(t, int64(wantContact), s.Cancelled)
	require.Equal(t, int64(1), s.SweepsDone)
	require.Equal(t, int64(wantContact), s.SweepFound)
	for _, a := range added {
		status, cancels, _ := b.sb.MessageStatus(a.CancelID)
		if a.Contact == "contact03" && a.Scheduled {
			require.Equal(t, sandbox.StatusCancelled, status, "contact03's %+v", a)
			require.Equal(t, 1, cancels)
		} else if a.Scheduled {
			require.Equal(t, sandbox.StatusScheduled, status, "another contact's %+v", a)
		}
	}

	_, err = b.producer.Sweep(ctx, producer.SweepRequest{Locations: []string{locGood}, CampaignID: "all-of-it", PageSize: 200})
	require.NoError(t, err)
	require.Eventually(t, func() bool { s, _, _ := tr.Get(ctx, "all-of-it"); return s.Complete }, 60*time.Second, 50*time.Millisecond)
	s, _, err = tr.Get(ctx, "all-of-it")
	require.NoError(t, err)
	rest := 760 - wantContact
	require.Equal(t, int64(rest), s.Total, "every other scheduled message, counted once")
	require.Equal(t, int64(rest), s.Cancelled)
	require.Equal(t, int64(1200+100), s.SweepSeen, "every message read once")
	for _, a := range added {
		status, cancels, _ := b.sb.MessageStatus(a.CancelID)
		if a.Scheduled {
			require.Equal(t, sandbox.StatusCancelled, status)
			require.Equal(t, 1, cancels, "no message cancelled twice")
		} else {
			require.Equal(t, 0, cancels, "a sent message is never cancelled")
		}
	}
	status, _, _ := b.sb.MessageStatus(other[0])
	require.Equal(t, sandbox.StatusScheduled, status, "another location is untouched")
	require.Zero(t, b.sb.Stats().NotCancellable, "no cancel for a message that was not scheduled")
	require.Equal(t, 2.0, testutil.ToFloat64(b.worker.Metrics.Sweeps.WithLabelValues("done")))
	require.Positive(t, testutil.ToFloat64(b.worker.Metrics.TasksProcessed.WithLabelValues(tasks.TypeSweep, tasks.OutcomeSwept)))
	require.Positive(t, b.validator.Checked()["GET /conversations/messages/export 200"], "export exchanges checked against the official spec")
}

// TestSweepCancelsWhatAnEarlierOutcomeLeftScheduled: a message whose cancel
// ended without cancelling it (expired: its send time had passed by the
// time given) and that HighLevel's export still lists as scheduled is
// cancelled by a later sweep. The export is newer than the recorded
// outcome: the sweep used to answer "already done" from it and report the
// campaign complete while the message was left to go out. A second sweep
// of the contact afterwards (into a new campaign) finds nothing and calls
// nothing.
func TestSweepCancelsWhatAnEarlierOutcomeLeftScheduled(t *testing.T) {
	t.Parallel()
	b := setup(t, sandbox.Config{RateMax: -1}, producer.Config{}, func(c *worker.Config) { c.NoPacing = true })
	ctx := context.Background()
	added := b.sb.AddMessages(locGood, sandbox.MessageSpec{Contact: "late01"}, sandbox.MessageSpec{Contact: "late01"},
		sandbox.MessageSpec{Contact: "late01"})
	// Two of the three were sent to a campaign with a send time already
	// past: they end expired, without a call.
	past := time.Now().Add(-time.Hour).Unix()
	var items []producer.Item
	for _, a := range added[:2] {
		items = append(items, producer.Item{Kind: ghl.KindMessage, MessageID: a.CancelID, LocationID: locGood, CampaignID: "first", SendAt: past})
	}
	for _, r := range b.producer.EnqueueBatch(ctx, items) {
		require.Equal(t, producer.Enqueued, r.Status, r.Err)
	}
	tr := campaign.New(b.rdb, 0)
	require.Eventually(t, func() bool { s, _, _ := tr.Get(ctx, "first"); return s.Complete }, 30*time.Second, 50*time.Millisecond)
	s, _, err := tr.Get(ctx, "first")
	require.NoError(t, err)
	require.Equal(t, int64(2), s.Expired)
	for _, a := range added {
		status, _, _ := b.sb.MessageStatus(a.CancelID)
		require.Equal(t, sandbox.StatusScheduled, status)
	}

	for round := range 2 {
		camp := fmt.Sprint("replied-", round)
		_, err = b.producer.Sweep(ctx, producer.SweepRequest{Locations: []string{locGood}, ContactID: "late01", CampaignID: camp})
		require.NoError(t, err)
		require.Eventually(t, func() bool { s, _, _ := tr.Get(ctx, camp); return s.Complete }, 30*time.Second, 50*time.Millisecond)
		s, _, err = tr.Get(ctx, camp)
		require.NoError(t, err)
		for _, a := range added {
			status, cancels, _ := b.sb.MessageStatus(a.CancelID)
			require.Equal(t, sandbox.StatusCancelled, status, "round %d: %+v is still scheduled", round, a)
			require.Equal(t, 1, cancels, "round %d: cancelled once", round)
		}
		if round == 0 {
			require.Equal(t, int64(3), s.SweepFound)
			require.Equal(t, int64(3), s.Total, "every message found scheduled is queued")
			require.Equal(t, int64(3), s.Cancelled)
		} else {
			require.Zero(t, s.SweepFound, "the second sweep finds nothing scheduled")
			require.Zero(t, s.Total)
		}
	}
	// The two expired messages moved to the sweep's campaign with their new
	// outcome, as a message sent again under another campaign does.
	s, _, err = tr.Get(ctx, "first")
	require.NoError(t, err)
	require.Zero(t, s.Total)
	require.Zero(t, s.Expired)
}

// TestSweepEndsWithoutBringingBackAGoneCampaign: a sweep whose campaign's
// counters are gone (expired or deleted) while its page is read ends
// without recreating them: its page and end used to write sweep counters
// into a new hash with no expiry, a campaign "sweeps 1 of 0" that never
// completes. The sweep's own state still records the end.
func TestSweepEndsWithoutBringingBackAGoneCampaign(t *testing.T) {
	t.Parallel()
	// Every answer takes 2 s: the campaign is deleted while the first
	// (and only) page is on its way.
	b := setup(t, sandbox.Config{RateMax: -1, Faults: sandbox.Faults{Latency: 2 * time.Second}}, producer.Config{},
		func(c *worker.Config) { c.NoPacing = true; c.GHL.Timeout = 10 * time.Second })
	ctx := context.Background()
	st, err := b.producer.Sweep(ctx, producer.SweepRequest{Locations: []string{locGood}, CampaignID: "swept-gone"})
	require.NoError(t, err)
	k := ledger.CampaignKey("swept-gone")
	n, err := b.rdb.Del(ctx, k, k+":outcomes", k+":retrying", k+":locations", k+":failed_sweeps", k+":sweeplist").Result()
	require.NoError(t, err)
	require.Positive(t, n)
	state := producer.SweepStateKey(st.SweepID, locGood)
	require.Eventually(t, func() bool { return b.rdb.HExists(ctx, state, "ended").Val() }, 30*time.Second, 50*time.Millisecond)
	require.Equal(t, "done", b.rdb.HGet(ctx, state, "phase").Val())
	_, ok, err := campaign.New(b.rdb, 0).Get(ctx, "swept-gone")
	require.NoError(t, err)
	require.False(t, ok, "a gone campaign came back")
	left, err := b.rdb.Keys(ctx, k+"*").Result()
	require.NoError(t, err)
	require.Empty(t, left)
}

// snoozingPacer has every call wait: a location whose slot is far away.
type snoozingPacer struct{}

func (snoozingPacer) Admit(context.Context, ratelimit.Request) (ledger.Admission, error) {
	return ledger.Admission{}, &ratelimit.SnoozeError{RetryAfter: time.Hour, Reason: "pacing"}
}

func (snoozingPacer) Observe(context.Context, string, ghl.Limits, *ghl.RateLimitError) error {
	return nil
}

// blockingPacer holds every call until its context ends (a wait for the
// location's turn that the worker's stop cuts).
type blockingPacer struct{}

func (blockingPacer) Admit(ctx context.Context, _ ratelimit.Request) (ledger.Admission, error) {
	<-ctx.Done()
	return ledger.Admission{}, ctx.Err()
}

func (blockingPacer) Observe(context.Context, string, ghl.Limits, *ghl.RateLimitError) error {
	return nil
}

// TestSweepLastTryBeforeTheSpare: sweep tasks carry one spare attempt, as
// cancels do. On the try before it a failure (a 5xx on the export) ends
// the sweep failed with its reason, but a wait for the location's turn
// goes back to the queue and fails nothing (it used to fail the sweep
// "paced" once 25 real failures had gone by). On the spare itself, where
// asynq archives whatever comes back, the wait ends the sweep too.
func TestSweepLastTryBeforeTheSpare(t *testing.T) {
	t.Parallel()
	unavailable := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(`{"statusCode":503,"message":"unavailable"}`))
	}))
	t.Cleanup(unavailable.Close)
	api, err := ghl.New(ghl.Config{BaseURL: unavailable.URL, Timeout: 2 * time.Second})
	require.NoError(t, err)
	hanging := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) { <-r.Context().Done() }))
	t.Cleanup(hanging.Close)
	slowAPI, err := ghl.New(ghl.Config{BaseURL: hanging.URL, Timeout: 10 * time.Second})
	require.NoError(t, err)
	for _, tc := range []struct {
		name      string
		pacer     tasks.Pacer
		retried   int
		ends      bool
		reason    string
		isFailure bool
		token     string // the location's token; tokGood when empty
		stopping  bool   // the worker stops mid-call: asynq has put the task back
	}{
		{name: "5xx before the last try: retried", retried: tasks.SweepMaxRetry - 1, isFailure: true},
		{name: "5xx on the last try: failed", retried: tasks.SweepMaxRetry, ends: true, reason: string(ghl.ReasonServerError)},
		{name: "wait on the last try: back to the queue", pacer: snoozingPacer{}, retried: tasks.SweepMaxRetry},
		{name: "wait on the spare: failed", pacer: snoozingPacer{}, retried: tasks.SweepMaxRetry + 1, ends: true, reason: tasks.ReasonPaced},
		// A token no header carries: failed at once, before the pacing
		// slot (the pacer would have snoozed it), not retried as a
		// network error.
		{name: "a token with a line break inside: failed", pacer: snoozingPacer{}, retried: 0, ends: true,
			reason: string(ghl.ReasonInvalidToken), token: "tok\nen"},
		// A stopping worker's cut call on the last try, or the spare, ends
		// nothing: asynq put the task back as it was (and ignores the
		// error, a network one).
		{name: "the worker stops mid-call on the last try: back to the queue", retried: tasks.SweepMaxRetry, stopping: true, isFailure: true},
		{name: "the worker stops mid-call on the spare: back to the queue", retried: tasks.SweepMaxRetry + 1, stopping: true, isFailure: true},
		{name: "the worker stops mid-wait on the spare: back to the queue", pacer: blockingPacer{}, retried: tasks.SweepMaxRetry + 1, stopping: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			rdb := redisServer.Client(t)
			prod := producer.New(rdb, producer.Config{})
			st, err := prod.Sweep(ctx, producer.SweepRequest{Locations: []string{locGood}, CampaignID: "spare"})
			require.NoError(t, err)
			id := tasks.SweepTaskID(st.SweepID, locGood)
			info, err := asynq.NewInspectorFromRedisClient(rdb).GetTaskInfo(tasks.QueueDefault, id)
			require.NoError(t, err)
			require.Equal(t, tasks.AsynqMaxRetry(tasks.SweepMaxRetry), info.MaxRetry, "a sweep task carries the spare attempt")

			h := &sweep.Handler{API: api, Tokens: tokenMap{locGood: cmp.Or(tc.token, tokGood)}, Producer: prod, Redis: rdb, Pacer: tc.pacer}
			pctx := ctx
			if tc.stopping {
				h.API, h.Stopping = slowAPI, func() bool { return true }
				var cancel context.CancelFunc
				pctx, cancel = context.WithCancel(ctx)
				time.AfterFunc(200*time.Millisecond, cancel)
			}
			rctx, rep := tasks.WithReport(pctx)
			err = h.Process(rctx, asynq.NewTask(info.Type, info.Payload),
				tasks.TaskInfo{ID: id, Queue: info.Queue, Retried: tc.retried, MaxRetry: info.MaxRetry})
			require.Error(t, err)
			state, ok, lerr := sweep.LoadState(ctx, rdb, st.SweepID, locGood)
			require.NoError(t, lerr)
			require.True(t, ok)
			s, _, gerr := campaign.New(rdb, 0).Get(ctx, "spare")
			require.NoError(t, gerr)
			rec, dead, derr := deadletter.New(rdb).Get(ctx, id)
			require.NoError(t, derr)
			if !tc.ends {
				if tc.stopping && tc.pacer == nil {
					require.Equal(t, tasks.ReasonInterrupted, rep.Reason)
				}
				require.NotErrorIs(t, err, asynq.SkipRetry)
				require.Equal(t, tc.isFailure, tasks.IsFailure(err), "only a failure uses a retry")
				require.NotContains(t, []string{"done", "failed"}, state.Phase)
				require.False(t, dead)
				require.Zero(t, s.SweepsDone)
				return
			}
			require.ErrorIs(t, err, asynq.SkipRetry)
			require.Equal(t, tasks.OutcomeSweepFailed, rep.Outcome)
			require.Equal(t, "failed", state.Phase)
			require.True(t, dead, "the failed sweep is dead-lettered for replay")
			require.Equal(t, tc.reason, rec.Reason)
			require.Equal(t, deadletter.ThisWorker, rec.Worker, "which worker failed it")
			require.Equal(t, int64(1), s.SweepsFailed)
		})
	}
}

// TestSweepCountsWhatWasQueuedElsewhere: two events for one contact at
// once (two replies, a reply and a booking) sweep the same messages; the
// second finds them still scheduled with their cancels already queued by
// the first. Its summary used to read "N still scheduled, 0 cancels
// queued", as if N were left to go out; it now counts them as already
// queued or done.
func TestSweepCountsWhatWasQueuedElsewhere(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	sb := sandbox.New(sandbox.Config{RateMax: -1})
	sb.AddLocation(locGood, tokGood)
	added := sb.AddMessages(locGood, sandbox.MixedSpecs(20, 12, 4, 2, 2)...)
	want := int64(0)
	for _, a := range added {
		if a.Scheduled && a.Contact == "contact01" {
			want++
		}
	}
	require.Positive(t, want)
	srv := httptest.NewServer(sb.Handler())
	t.Cleanup(srv.Close)
	api, err := ghl.New(ghl.Config{BaseURL: srv.URL, Timeout: 2 * time.Second})
	require.NoError(t, err)
	prod := producer.New(rdb, producer.Config{})
	h := &sweep.Handler{API: api, Tokens: tokenMap{locGood: tokGood}, Producer: prod, Redis: rdb}
	run := func(camp string, lane ...string) sweep.State {
		t.Helper()
		st, err := prod.Sweep(ctx, producer.SweepRequest{Locations: []string{locGood}, ContactID: "contact01", CampaignID: camp,
			Lane: append(lane, "")[0]})
		require.NoError(t, err)
		id := tasks.SweepTaskID(st.SweepID, locGood)
		info, err := asynq.NewInspectorFromRedisClient(rdb).GetTaskInfo(tasks.QueueDefault, id)
		require.NoError(t, err)
		require.NoError(t, h.Process(ctx, asynq.NewTask(info.Type, info.Payload), tasks.TaskInfo{ID: id, Queue: info.Queue, MaxRetry: info.MaxRetry}))
		state, ok, err := sweep.LoadState(ctx, rdb, st.SweepID, locGood)
		require.NoError(t, err)
		require.True(t, ok)
		return state
	}
	first := run("reply-1")
	require.Equal(t, []int64{want, want, 0}, []int64{first.Found, first.Enqueued, first.Already})
	second := run("reply-2")
	require.Equal(t, []int64{want, 0, want}, []int64{second.Found, second.Enqueued, second.Already}, "queued by the first event")
	tr := campaign.New(rdb, 0)
	s, _, err := tr.Get(ctx, "reply-2")
	require.NoError(t, err)
	require.NoError(t, tr.WithSweeps(ctx, &s))
	require.Len(t, s.SweepList, 1)
	require.Equal(t, want, s.SweepList[0].Already)
	require.Contains(t, s.Render(campaign.Status{}, time.Time{}),
		fmt.Sprintf("%d still scheduled (%d SMS, %d email), 0 cancels queued (%d already queued or done earlier: by another event, sweep or campaign, or by this sweep before a page was read again), done",
			want, second.FoundSMS, second.FoundEmail, want))

	// The contact opts out: an urgent sweep moves the cancels the replies
	// queued on the bulk lane (a sweep's default) to the urgent lane, and says so; one
	// running stays, and that is said too. The second time, the others are
	// already there.
	bulkPending := "asynq:{" + tasks.QueueBulk + "}:pending"
	running := rdb.LIndex(ctx, bulkPending, -1).Val()
	require.True(t, strings.HasPrefix(running, "msg:") || strings.HasPrefix(running, "email:"), running)
	require.Equal(t, int64(1), rdb.LRem(ctx, bulkPending, 1, running).Val())
	require.NoError(t, rdb.HSet(ctx, "asynq:{"+tasks.QueueBulk+"}:t:"+running, "state", "active").Err())
	third := run("opt-out", tasks.QueueUrgent)
	require.Equal(t, []int64{want, 0, want, want - 1, 1}, []int64{third.Found, third.Enqueued, third.Already, third.Moved, third.Stayed})
	n, err := rdb.LLen(ctx, "asynq:{"+tasks.QueueUrgent+"}:pending").Result()
	require.NoError(t, err)
	require.Equal(t, want-1, n, "they wait on the urgent lane")
	s, _, err = tr.Get(ctx, "opt-out")
	require.NoError(t, err)
	require.NoError(t, tr.WithSweeps(ctx, &s))
	require.Contains(t, s.Render(campaign.Status{}, time.Time{}), fmt.Sprintf("(%d of them moved to this sweep's lane from a slower one) (1 of them stay on a slower lane", want-1))
	fourth := run("opt-out-2", tasks.QueueUrgent)
	require.Equal(t, []int64{want, 0, want, 0, 1}, []int64{fourth.Found, fourth.Enqueued, fourth.Already, fourth.Moved, fourth.Stayed})

	// reply-2 is complete with nothing of its own: the messages it found
	// are reply-1's. It names reply-1, and whoever waits for it (sweep
	// --wait, status --watch) waits for reply-1 too and hears of its dead
	// letters: "complete, exit 0" while reply-1 still had them queued, and
	// then dead-lettered, left messages scheduled (found by an audit with
	// the real binaries).
	require.True(t, s.Complete)
	require.Equal(t, []string{"reply-1"}, s.HeldBy)
	require.Contains(t, s.Render(campaign.Status{}, time.Time{}), "already queued or done in campaign(s) reply-1")
	held, err := tr.Held(ctx, s)
	require.NoError(t, err)
	require.Equal(t, campaign.HeldReport{Followed: int(want), Waiting: int(want)}, held, "each found message followed, still queued in reply-1")
	led := ledger.New(rdb, ledger.Config{})
	first1 := true
	for _, a := range added {
		if !a.Scheduled || a.Contact != "contact01" {
			continue
		}
		kind := ghl.KindMessage
		if a.Email {
			kind = ghl.KindEmail
		}
		f := ledger.Final{TaskID: tasks.TaskID(kind, a.CancelID), CampaignID: "reply-1", Outcome: ledger.Outcome{Outcome: ledger.Cancelled, HTTPStatus: 200, Attempts: 1}}
		if first1 {
			first1 = false
			f.Outcome = ledger.Outcome{Outcome: ledger.DeadLettered, Reason: "unauthorized", HTTPStatus: 401, Attempts: 1}
			f.Dead = &deadletter.Record{Kind: string(kind), MessageID: a.CancelID, LocationID: locGood, CampaignID: "reply-1", Reason: "unauthorized"}
		}
		_, _, err := led.Settle(ctx, f)
		require.NoError(t, err)
	}
	held, err = tr.Held(ctx, s)
	require.NoError(t, err)
	require.Equal(t, campaign.HeldReport{Followed: int(want), Failed: 1}, held, "one of the messages reply-2 found was dead-lettered: it may still go out")
	require.True(t, held.Bad())
}

// TestSweepWindowToTheMillisecond: HighLevel's dateAdded carries
// milliseconds, and a window's edge copied from one must hold to it. The
// window was cut to whole seconds: a since at .528 took in messages created
// at .026 (cancelling them), an until at .999 left out the second's
// messages (the export's endDate dropped the fraction), and a window of one
// message's exact time found nothing.
func TestSweepWindowToTheMillisecond(t *testing.T) {
	t.Parallel()
	var fixed atomic.Int64 // the sandbox's clock while messages are added
	b := setup(t, sandbox.Config{RateMax: -1, Now: func() time.Time {
		if ms := fixed.Load(); ms != 0 {
			return time.UnixMilli(ms)
		}
		return time.Now()
	}}, producer.Config{}, func(c *worker.Config) { c.NoPacing = true })
	ctx := context.Background()
	t0 := time.Now().Add(-time.Hour).Truncate(time.Second).Add(26 * time.Millisecond) // hh:mm:ss.026
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	for _, d := range []time.Duration{0, 502 * time.Millisecond, 1270 * time.Millisecond} { // .026, .528, next second .296
		fixed.Store(at(d).UnixMilli())
		b.sb.AddMessages(locGood, sandbox.MessageSpec{Contact: "windowed"}, sandbox.MessageSpec{Contact: "windowed"})
	}
	fixed.Store(0)
	tr := campaign.New(b.rdb, 0)
	for _, tc := range []struct {
		name         string
		since, until time.Time
		want         int64
	}{
		{"since a message's time", at(502 * time.Millisecond), time.Time{}, 4},
		{"until the end of the next second", time.Time{}, at(1973 * time.Millisecond), 6},
		{"since and until one message's time", at(502 * time.Millisecond), at(502 * time.Millisecond), 2},
		{"until a millisecond before", time.Time{}, at(501 * time.Millisecond), 2},
	} {
		st, err := b.producer.Sweep(ctx, producer.SweepRequest{Locations: []string{locGood}, ContactID: "windowed",
			Since: tc.since, Until: tc.until, DryRun: true})
		require.NoError(t, err, tc.name)
		require.Eventually(t, func() bool { s, _, _ := tr.Get(ctx, st.CampaignID); return s.Complete && s.SweepsDone == 1 },
			30*time.Second, 20*time.Millisecond, tc.name)
		s, _, err := tr.Get(ctx, st.CampaignID)
		require.NoError(t, err)
		require.Equal(t, tc.want, s.SweepFound, tc.name)
	}
}

// TestTokensFileStaleGauge: a worker whose GHL_TOKENS_FILE breaks keeps
// its last good version and says so on ghlcancel_tokens_file_stale (it
// said so only in a log line, while the tokens added since never applied).
func TestTokensFileStaleGauge(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "tokens.json")
	require.NoError(t, os.WriteFile(path, []byte(`{"`+locGood+`":"`+tokGood+`"}`), 0o600))
	f, err := tokens.NewFile(path, nil)
	require.NoError(t, err)
	w, err := worker.New(worker.Config{Redis: redisServer.Client(t), Tokens: f, GHL: ghl.Config{BaseURL: "http://127.0.0.1:1"}})
	require.NoError(t, err)
	require.Zero(t, testutil.ToFloat64(w.Metrics.TokensFileStale))
	require.NoError(t, os.WriteFile(path, []byte(`{"`+locGood+`":"`+tokGood+`",}`), 0o600))
	later := time.Now().Add(time.Minute)
	require.NoError(t, os.Chtimes(path, later, later))
	// No token is looked up (an idle worker): the scrape itself checks.
	require.Eventually(t, func() bool {
		return testutil.ToFloat64(w.Metrics.TokensFileStale) == 1
	}, 10*time.Second, 50*time.Millisecond)
	_, err = f.Token(ctx, locGood)
	require.NoError(t, err, "the last good version still answers")
}

// TestAFailedUrgentSweepIsReplayedOnItsLane: an opt-out's sweep runs on the
// urgent lane; failed (no token for its location), its dead letter names
// that lane, so its replay runs there too (it said "default", and the
// replay of an opt-out waited behind the default lane's work).
func TestAFailedUrgentSweepIsReplayedOnItsLane(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	prod := producer.New(rdb, producer.Config{})
	const loc = "locNoTokenUrgent0001"
	st, err := prod.Sweep(ctx, producer.SweepRequest{Locations: []string{loc}, ContactID: "contactOptOut0000001", CampaignID: "opt-out",
		Lane: tasks.QueueUrgent, Queue: tasks.QueueUrgent})
	require.NoError(t, err)
	id := tasks.SweepTaskID(st.SweepID, loc)
	info, err := asynq.NewInspectorFromRedisClient(rdb).GetTaskInfo(tasks.QueueUrgent, id)
	require.NoError(t, err)
	h := &sweep.Handler{Tokens: tokenMap{}, Producer: prod, Redis: rdb}
	require.Error(t, h.Process(ctx, asynq.NewTask(info.Type, info.Payload), tasks.TaskInfo{ID: id, Queue: info.Queue, MaxRetry: info.MaxRetry}))
	rec, ok, err := deadletter.New(rdb).Get(ctx, id)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, []string{string(ghl.ReasonNoToken), tasks.QueueUrgent}, []string{rec.Reason, rec.Queue})
}
