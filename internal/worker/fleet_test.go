package worker_test

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/deadletter"
	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/redistest"
	"github.com/ghlcancel/ghlcancel/internal/syncbuf"
	"github.com/ghlcancel/ghlcancel/internal/worker"
)

// TestWorkersThatDisagree: settings that act on what every worker shares
// were each process's own, and nothing compared them. An audit saw one
// worker with RATE_LIMIT=off bring 255 429s on a location the others
// paced, and one started with DEAD_LETTER_RETENTION=30s delete every
// worker's dead letters at its start. A worker now says where the live
// workers differ (log and fleet_settings_differ), and prunes dead letters
// by the longest retention among them.
func TestWorkersThatDisagree(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	url := redisServer.URL(t)
	store := deadletter.New(redistest.ClientFor(t, url))
	letter := func(id string, age time.Duration) {
		require.NoError(t, store.Add(ctx, deadletter.Record{TaskID: "msg:" + id, Kind: "message", MessageID: id,
			LocationID: "L", Queue: "bulk", Reason: "unauthorized", Attempts: 1, DeadAt: time.Now().Add(-age)}))
	}
	letter("mFleet000000000001", time.Hour)
	letter("mFleet000000000002", 800*time.Hour) // past every retention: A's first prune removes it

	var wg sync.WaitGroup
	start := func(tweak func(*worker.Config)) (*worker.Worker, *syncbuf.Buffer) {
		var logs syncbuf.Buffer
		c := worker.Config{Redis: redistest.ClientFor(t, url), Tokens: tokenMap{"L": "tok"}, GHL: ghl.Config{BaseURL: "http://127.0.0.1:1"},
			ShutdownTimeout: time.Second, Logger: slog.New(slog.NewTextHandler(&logs, nil))}
		tweak(&c)
		w, err := worker.New(c)
		require.NoError(t, err)
		wg.Go(func() { _ = w.Run(ctx) })
		t.Cleanup(func() { cancel(); wg.Wait() }) // before its Redis client closes
		return w, &logs
	}
	_, alogs := start(func(c *worker.Config) { c.DeadLetterRetention = 720 * time.Hour })
	require.Eventually(t, func() bool { return strings.Contains(alogs.String(), "expired dead letters removed") },
		5*time.Second, 10*time.Millisecond, "the first worker announced itself and pruned")
	letter("mFleet000000000003", 800*time.Hour) // for B's first prune
	b, logs := start(func(c *worker.Config) {
		c.DeadLetterRetention = 30 * time.Minute // the letter is an hour old
		c.NoPacing = true
	})
	require.Eventually(t, func() bool { return testutil.ToFloat64(b.Metrics.FleetDiffers.WithLabelValues("RATE_LIMIT")) == 1 },
		5*time.Second, 10*time.Millisecond, logs.String())
	require.Contains(t, logs.String(), "disagree on settings that act on shared state")
	require.Contains(t, logs.String(), `RATE_LIMIT: \"100/10s\"`)
	require.Contains(t, logs.String(), `\"off\"`)
	require.Equal(t, 1.0, testutil.ToFloat64(b.Metrics.FleetDiffers.WithLabelValues("DEAD_LETTER_RETENTION")))
	require.Equal(t, 0.0, testutil.ToFloat64(b.Metrics.FleetDiffers.WithLabelValues("VERIFY")), "they agree on it")
	// B's first prune ran with the longest retention of the two (it
	// removed the 800-hour-old letter), and kept the hour-old one.
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "expired dead letters removed") }, 5*time.Second, 10*time.Millisecond)
	require.Contains(t, logs.String(), "count=1 retention=720h0m0s")
	_, found, err := store.Get(ctx, "msg:mFleet000000000001")
	require.NoError(t, err)
	require.True(t, found, "a short DEAD_LETTER_RETENTION on one worker does not remove the others' dead letters")
}
