package worker_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/deadletter"
	"github.com/ghlcancel/ghlcancel/internal/ghl"
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
		c.Tokens = toks
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
		RateLimit: ratelimit.Config{Default: ratelimit.Limit{N: 50, Period: time.Second}},
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
// location HighLevel throttles to 1 call per second, with 12 tasks queued
// first, must not hold them: its tasks snooze, and all 152 tasks of the
// other 19 locations are done before its 4th call (about 3 s in).
func TestThrottledLocationDoesNotStarveOthers(t *testing.T) {
	t.Parallel()
	sb := sandbox.New(sandbox.Config{RateMax: 10, RateInterval: time.Second})
	toks := tokenMap{}
	const slow = "locSlow0000000000001"
	var others []string
	var items []producer.Item
	var all []string
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
	sb.SetRateLimit(slow, 1)
	// The slow location's tasks are enqueued first, so they reach the
	// workers first.
	for _, loc := range append([]string{slow}, others...) {
		n := 8
		if loc == slow {
			n = 12 // more than the worker's slots
		}
		for _, id := range sb.ScheduleN(loc, n, false) {
			items = append(items, producer.Item{Kind: ghl.KindMessage, MessageID: id, LocationID: loc})
			all = append(all, id)
		}
	}
	f := startFleet(t, 1, sb, toks, worker.Config{
		Concurrency: 10, DelayedCheckInterval: 100 * time.Millisecond,
		RateLimit: ratelimit.Config{Default: ratelimit.Limit{N: 10, Period: time.Second}},
	})
	f.enqueue(t, items)
	f.waitCancelled(t, all, 90*time.Second)

	slowTimes := sb.Admitted(slow)
	require.Len(t, slowTimes, 12)
	for _, loc := range others {
		times := sb.Admitted(loc)
		require.Len(t, times, 8, loc)
		require.True(t, times[len(times)-1].Before(slowTimes[3]),
			"location %s finished after the throttled location's 4th call: it was starved", loc)
	}
	n, err := deadletter.New(redistest.ClientFor(t, f.url)).Count(context.Background())
	require.NoError(t, err)
	require.Zero(t, n)
}
