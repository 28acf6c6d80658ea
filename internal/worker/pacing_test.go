package worker_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/ledger"
	"github.com/ghlcancel/ghlcancel/internal/producer"
	"github.com/ghlcancel/ghlcancel/internal/ratelimit"
	"github.com/ghlcancel/ghlcancel/internal/redistest"
	"github.com/ghlcancel/ghlcancel/internal/sandbox"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
	"github.com/ghlcancel/ghlcancel/internal/worker"
)

// fleet runs n independent workers (own Redis clients, own asynq servers)
// on one Redis database, as separate processes would.
type fleet struct {
	sb      *sandbox.Server
	url     string
	workers []*worker.Worker
}

func startFleet(t *testing.T, n int, sb *sandbox.Server, toks tokenMap, cfg worker.Config) *fleet {
	t.Helper()
	srv := httptest.NewServer(sb.Handler())
	t.Cleanup(srv.Close)
	url := redisServer.URL(t)
	f := &fleet{sb: sb, url: url}
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(context.Background())
	for range n {
		c := cfg
		c.Redis = redistest.ClientFor(t, url)
		c.GHL = ghl.Config{BaseURL: srv.URL, Timeout: 5 * time.Second}
		if c.OAuth == nil {
			c.Tokens = toks
		} else {
			oc := *c.OAuth
			oc.TokenURL = srv.URL + "/oauth/token"
			c.OAuth = &oc
		}
		c.ShutdownTimeout = 5 * time.Second
		w, err := worker.New(c)
		require.NoError(t, err)
		f.workers = append(f.workers, w)
		wg.Go(func() { _ = w.Run(ctx) })
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
	return f
}

func (f *fleet) enqueue(t *testing.T, items []producer.Item) {
	t.Helper()
	p := producer.New(redistest.ClientFor(t, f.url), producer.Config{Queue: tasks.QueueBulk})
	for _, it := range items {
		r := p.Enqueue(context.Background(), it)
		require.Equal(t, producer.Enqueued, r.Status, r.Err)
	}
}

func (f *fleet) waitCancelled(t *testing.T, ids []string, within time.Duration) {
	t.Helper()
	require.Eventually(t, func() bool {
		for _, id := range ids {
			if st, _, _ := f.sb.MessageStatus(id); st != sandbox.StatusCancelled {
				return false
			}
		}
		return true
	}, within, 50*time.Millisecond)
}

// TestPacingSharedAcrossWorkers: three workers, one location, a sandbox
// enforcing 50 per second in fixed windows: no call is ever refused.
func TestPacingSharedAcrossWorkers(t *testing.T) {
	t.Parallel()
	sb := sandbox.New(sandbox.Config{RateMax: 50, RateInterval: time.Second})
	sb.AddLocation(locGood, tokGood)
	f := startFleet(t, 3, sb, tokenMap{locGood: tokGood}, worker.Config{
		Concurrency: 30, DelayedCheckInterval: 100 * time.Millisecond,
		// 10% margin: a 1 s window leaves 2% only 20 ms of jitter under -race.
		RateLimit: ratelimit.Config{Default: ratelimit.Limit{N: 50, Period: time.Second}, Margin: 0.10},
	})
	ids := sb.ScheduleN(locGood, 150, false)
	items := make([]producer.Item, len(ids))
	for i, id := range ids {
		items[i] = producer.Item{Kind: ghl.KindMessage, MessageID: id, LocationID: locGood}
	}
	f.enqueue(t, items)
	f.waitCancelled(t, ids, 60*time.Second)
	require.Zero(t, sb.Stats().RateLimited, "a paced fleet must not trip the limit")
	require.Len(t, sb.Admitted(locGood), 150)
}

// TestThrottledLocationDoesNotStarveOthers: with only 10 worker slots, a
// location HighLevel throttles to 2 calls per second, with 30 tasks queued
// first, must not hold the slots: its far-off tasks snooze, and the tasks
// of the other 19 locations are done before its 10th call (paced at 1 per
// 1.25 s with the 25% margin, about 10 s in). (With the snooze disabled,
// MaxWait 30s, the fast tasks wait behind all 30 slow ones, over 30 s, and
// this test fails.)
func TestThrottledLocationDoesNotStarveOthers(t *testing.T) {
	t.Parallel()
	sb := sandbox.New(sandbox.Config{RateMax: 10, RateInterval: time.Second})
	toks := tokenMap{}
	const slow = "locSlow0000000000001"
	var others []string
	for i := range 20 {
		loc := fmt.Sprintf("locFast%013d", i)
		if i == 0 {
			loc = slow
		}
		tok := "tok-" + loc
		sb.AddLocation(loc, tok)
		toks[loc] = tok
		if loc != slow {
			others = append(others, loc)
		}
	}
	sb.SetRateLimit(slow, 2)
	var items []producer.Item
	for _, id := range sb.ScheduleN(slow, 30, false) {
		items = append(items, producer.Item{Kind: ghl.KindMessage, MessageID: id, LocationID: slow})
	}
	var fast []string
	for _, loc := range others {
		id := sb.ScheduleN(loc, 1, false)[0]
		fast = append(fast, id)
		items = append(items, producer.Item{Kind: ghl.KindMessage, MessageID: id, LocationID: loc})
	}
	f := startFleet(t, 1, sb, toks, worker.Config{
		Concurrency: 10, DelayedCheckInterval: 100 * time.Millisecond,
		// A wide margin: this test is about starvation, and with the
		// default 2% a call of a pair delayed 20 ms by a loaded machine
		// can land in the sandbox's next fixed window with the next pair.
		RateLimit: ratelimit.Config{Default: ratelimit.Limit{N: 10, Period: time.Second}, Margin: 0.25},
	})
	f.enqueue(t, items)
	f.waitCancelled(t, fast, 60*time.Second)

	slowTimes := sb.Admitted(slow)
	for _, loc := range others {
		times := sb.Admitted(loc)
		require.Len(t, times, 1, loc)
		if len(slowTimes) >= 10 {
			require.True(t, times[0].Before(slowTimes[9]),
				"location %s ran after the throttled location's 10th call: it was starved", loc)
		}
		require.Zero(t, sb.RateLimitedCount(loc), loc)
	}
	// Before HighLevel's first answer reveals its 2 per second, the
	// throttled location gets the probe burst; calls past its limit in it
	// are refused once, then never again.
	require.LessOrEqual(t, sb.RateLimitedCount(slow), ratelimit.ProbeBurst-2)
}

// parkedByItsBulk starts a worker (DAILY_RESERVE 25) against a sandbox
// with a daily budget of 40 at 5 calls a second, queues 30 bulk cancels for
// locGood and returns once the location is parked and the calls admitted
// before the parking have gone: the parked ones snooze for the hour.
func parkedByItsBulk(t *testing.T) (*fleet, *redis.Client, []string) {
	t.Helper()
	sb := sandbox.New(sandbox.Config{RateMax: 5, RateInterval: time.Second, DailyLimit: 40})
	sb.AddLocation(locGood, tokGood)
	f := startFleet(t, 1, sb, tokenMap{locGood: tokGood}, worker.Config{
		Concurrency: 10, DelayedCheckInterval: 100 * time.Millisecond,
		RateLimit: ratelimit.Config{Default: ratelimit.Limit{N: 5, Period: time.Second}, Margin: 0.10, DailyReserve: 25},
	})
	ids := sb.ScheduleN(locGood, 30, false)
	items := make([]producer.Item, len(ids))
	for i, id := range ids {
		items[i] = producer.Item{Kind: ghl.KindMessage, MessageID: id, LocationID: locGood}
	}
	f.enqueue(t, items)
	rdb := redistest.ClientFor(t, f.url)
	require.Eventually(t, func() bool {
		parked, err := ratelimit.Parked(context.Background(), rdb)
		return err == nil && parked[locGood] != ""
	}, 30*time.Second, 50*time.Millisecond, "the location is parked once 25 or fewer calls are left")
	time.Sleep(time.Second) // calls admitted before the parking finish
	return f, rdb, ids
}

// TestUrgentCancelsSpendTheDailyReserve: real workers and a sandbox with a
// daily budget of 40. Once an answer shows DAILY_RESERVE (25) or fewer
// left, the location is parked: its bulk and default cancels wait, and an
// urgent cancel sent then still goes out (it waited the parking's hour
// before: the reserve served nothing). The budget is never overrun.
func TestUrgentCancelsSpendTheDailyReserve(t *testing.T) {
	t.Parallel()
	f, _, _ := parkedByItsBulk(t)
	sb := f.sb
	bulkCalls := len(sb.Admitted(locGood))
	require.Less(t, bulkCalls, 30, "bulk cancels wait for the parking")

	late := sb.ScheduleN(locGood, 2, false)
	f.enqueue(t, []producer.Item{
		{Kind: ghl.KindMessage, MessageID: late[0], LocationID: locGood, Queue: tasks.QueueUrgent},
		{Kind: ghl.KindMessage, MessageID: late[1], LocationID: locGood, Queue: tasks.QueueDefault},
	})
	f.waitCancelled(t, late[:1], 20*time.Second)
	time.Sleep(time.Second)
	st, _, _ := sb.MessageStatus(late[1])
	require.Equal(t, sandbox.StatusScheduled, st, "a default-lane cancel waits for the parking")
	require.Len(t, sb.Admitted(locGood), bulkCalls+1, "only the urgent cancel went")
	require.Zero(t, sb.RateLimitedCount(locGood), "the daily budget is never overrun")
}

// TestUrgentResendOfAParkedCancelGoesOut: a cancel queued on the bulk
// lane waits at a location parked for its daily reserve; sent again as
// urgent (the contact opted out), it moves to the urgent lane and goes out
// with the reserve, in its own campaign; the others still wait. Before, the
// answer was already_queued and the cancel waited the parking's hour.
func TestUrgentResendOfAParkedCancelGoesOut(t *testing.T) {
	t.Parallel()
	f, rdb, ids := parkedByItsBulk(t)
	sb := f.sb
	ctx := context.Background()
	calls := len(sb.Admitted(locGood))
	// The cancels that wait (snoozed); one whose attempt is under way stays
	// where it runs.
	var waiting []string
	require.Eventually(t, func() bool {
		waiting = waiting[:0]
		for _, id := range ids {
			st, _, _ := sb.MessageStatus(id)
			if st == sandbox.StatusScheduled && rdb.HGet(ctx, "asynq:{"+tasks.QueueBulk+"}:t:"+tasks.TaskID(ghl.KindMessage, id), "state").Val() == "retry" {
				waiting = append(waiting, id)
			}
		}
		return len(waiting) >= 2
	}, 10*time.Second, 50*time.Millisecond, "cancels wait for the parking")
	r := producer.New(rdb, producer.Config{}).Enqueue(ctx, producer.Item{Kind: ghl.KindMessage, MessageID: waiting[0],
		LocationID: locGood, CampaignID: "opt-out", Queue: tasks.QueueUrgent})
	require.Equal(t, producer.Result{Status: producer.AlreadyQueued, Elsewhere: true, Moved: true}, r)
	f.waitCancelled(t, waiting[:1], 20*time.Second)
	time.Sleep(time.Second)
	require.Len(t, sb.Admitted(locGood), calls+1, "only the moved cancel went")
	st, _, _ := sb.MessageStatus(waiting[1])
	require.Equal(t, sandbox.StatusScheduled, st, "the others wait for the parking")
	require.Zero(t, sb.RateLimitedCount(locGood), "the daily budget is never overrun")
	o, _, _, err := ledger.New(rdb, ledger.Config{}).Record(ctx, tasks.TaskID(ghl.KindMessage, waiting[0]))
	require.NoError(t, err)
	require.NotNil(t, o)
	require.Equal(t, ledger.Cancelled, o.Outcome)
}

// TestReleaseWakesAParkedLocation: `enqueue parked --release` after the
// day's budget came back (sandbox ResetDay, as HighLevel at its reset):
// the cancels parked for the hour run now; a location that is not parked
// (a typo) is said to be so.
func TestReleaseWakesAParkedLocation(t *testing.T) {
	t.Parallel()
	f, rdb, ids := parkedByItsBulk(t)
	sb := f.sb
	ctx := context.Background()
	require.Less(t, len(sb.Admitted(locGood)), 30)

	sb.ResetDay(locGood)
	r, err := ratelimit.Release(ctx, rdb, locGood, tasks.Queues, nil)
	require.NoError(t, err)
	require.Contains(t, r.Why, "daily budget nearly spent")
	require.Positive(t, r.Woken)
	f.waitCancelled(t, ids, 30*time.Second)
	require.Zero(t, sb.RateLimitedCount(locGood))
	_, err = ratelimit.Release(ctx, rdb, "locNeverParked", tasks.Queues, nil)
	require.ErrorIs(t, err, ratelimit.ErrNotParked, "a typo releases nothing and says so")
}

// TestUrgentSweepSpendsTheDailyReserve: at locations parked for their daily
// reserve, a sweep whose cancels go to the urgent lane reads its pages and
// cancels what it finds; one whose cancels go to the default lane waits for
// the parking, pages and all (the audit saw an urgent sweep wait the hour).
func TestUrgentSweepSpendsTheDailyReserve(t *testing.T) {
	t.Parallel()
	sb := sandbox.New(sandbox.Config{})
	const urgentLoc, defaultLoc = "locSweepUrgent000001", "locSweepDefault00001"
	toks := tokenMap{}
	for _, loc := range []string{urgentLoc, defaultLoc} {
		sb.AddLocation(loc, "tok-"+loc)
		toks[loc] = "tok-" + loc
	}
	f := startFleet(t, 1, sb, toks, worker.Config{Concurrency: 10, DelayedCheckInterval: 100 * time.Millisecond})
	ctx := context.Background()
	rdb := redistest.ClientFor(t, f.url)
	l := ratelimit.New(rdb, ratelimit.Config{})
	for _, loc := range []string{urgentLoc, defaultLoc} {
		require.NoError(t, l.Observe(ctx, loc, ghl.Limits{Present: true, Max: 100, Interval: 10 * time.Second, Remaining: 100,
			DailyLimit: 200000, DailyRemaining: 40}, nil))
	}
	urgentIDs, defaultIDs := sb.ScheduleN(urgentLoc, 3, false), sb.ScheduleN(defaultLoc, 3, false)
	p := producer.New(rdb, producer.Config{})
	_, err := p.Sweep(ctx, producer.SweepRequest{Locations: []string{urgentLoc}, CampaignID: "optout-sweep", Lane: tasks.QueueUrgent})
	require.NoError(t, err)
	_, err = p.Sweep(ctx, producer.SweepRequest{Locations: []string{defaultLoc}, CampaignID: "default-sweep", Lane: tasks.QueueDefault})
	require.NoError(t, err)
	f.waitCancelled(t, urgentIDs, 20*time.Second)
	time.Sleep(time.Second)
	for _, id := range defaultIDs {
		st, _, _ := sb.MessageStatus(id)
		require.Equal(t, sandbox.StatusScheduled, st, "a default-lane sweep waits for the parking")
	}
}
