package client_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/client"
	"github.com/ghlcancel/ghlcancel/internal/intake"
	"github.com/ghlcancel/ghlcancel/internal/redistest"
)

var redisServer *redistest.Server

func TestMain(m *testing.M) { redistest.Main(m, &redisServer) }

const key = "client-test-key-0123456789"

// server is the real intake API on a fresh Redis database; failFirst
// requests answer 503 first (a load balancer with no healthy backend).
func server(t *testing.T, failFirst int32) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	srv, err := intake.New(intake.Config{Redis: redisServer.Client(t), Keys: []string{key}})
	require.NoError(t, err)
	var calls atomic.Int32
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) <= failFirst {
			http.Error(w, "no healthy upstream", http.StatusServiceUnavailable)
			return
		}
		srv.ServeHTTP(w, r)
	}))
	t.Cleanup(hs.Close)
	return hs, &calls
}

func TestCancelManyAndStatus(t *testing.T) {
	t.Parallel()
	hs, calls := server(t, 0)
	c, err := client.New(hs.URL, key)
	require.NoError(t, err)
	ctx := context.Background()

	items := make([]client.Cancel, 2500)
	for i := range items {
		items[i] = client.Cancel{MessageID: fmt.Sprintf("m%d", i), LocationID: "loc1", CampaignID: "c1"}
	}
	res, err := c.CancelMany(ctx, items, client.LaneBulk, false)
	require.NoError(t, err)
	require.Equal(t, 2500, res.Enqueued)
	require.Equal(t, int32(3), calls.Load(), "batches of 1,000")
	for i, r := range res.Results {
		require.Equal(t, i, r.Index)
		require.Equal(t, fmt.Sprintf("msg:m%d", i), r.TaskID)
	}
	st, err := c.Campaign(ctx, "c1")
	require.NoError(t, err)
	require.Equal(t, int64(2500), st.Total)

	one, err := c.Cancel(ctx, client.Cancel{MessageID: "m7", LocationID: "loc1"})
	require.NoError(t, err)
	require.Equal(t, client.StatusAlreadyQueued, one.Status)

	// An invalid item in the second batch: its position is in items, not
	// in the batch.
	items[1234].MessageID = "bad/id"
	_, err = c.CancelMany(ctx, items, "", false)
	var ae *client.APIError
	require.ErrorAs(t, err, &ae)
	require.Equal(t, client.CodeInvalidItems, ae.Code)
	require.Equal(t, 1234, ae.Items[0].Index)
	require.ErrorContains(t, err, "item 1234: message_id")

	_, err = c.Campaign(ctx, "unknown")
	require.ErrorAs(t, err, &ae)
	require.Equal(t, client.CodeCampaignNotFound, ae.Code)

	page, err := c.DeadLetters(ctx, client.DeadLetterFilter{Reason: "unauthorized"}, "", 10)
	require.NoError(t, err)
	require.Empty(t, page.DeadLetters)

	bad, err := client.New(hs.URL, "wrong-key-0123456789")
	require.NoError(t, err)
	_, err = bad.Cancel(ctx, client.Cancel{MessageID: "m", LocationID: "l"})
	require.ErrorAs(t, err, &ae)
	require.Equal(t, http.StatusUnauthorized, ae.StatusCode)
	require.NotContains(t, err.Error(), "wrong-key")
}

// TestRetriesUnavailable: 503s before the request gets through are retried
// (safe: enqueueing is idempotent); a client that gives up says so.
func TestRetriesUnavailable(t *testing.T) {
	t.Parallel()
	hs, calls := server(t, 2)
	c, err := client.New(hs.URL, key, client.Options{RetryBase: time.Millisecond})
	require.NoError(t, err)
	r, err := c.Cancel(context.Background(), client.Cancel{MessageID: "m1", LocationID: "l1", Urgent: true})
	require.NoError(t, err)
	require.Equal(t, client.StatusEnqueued, r.Status)
	require.Equal(t, int32(3), calls.Load())

	hs2, _ := server(t, 100)
	c2, err := client.New(hs2.URL, key, client.Options{RetryBase: time.Millisecond, MaxAttempts: 3})
	require.NoError(t, err)
	_, err = c2.Cancel(context.Background(), client.Cancel{MessageID: "m1", LocationID: "l1"})
	var ae *client.APIError
	require.ErrorAs(t, err, &ae)
	require.Equal(t, http.StatusServiceUnavailable, ae.StatusCode)
	require.ErrorContains(t, err, "gave up after 3 attempts")

	_, err = client.New("ftp://x", key)
	require.Error(t, err)
	_, err = client.New(hs.URL, "")
	require.Error(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = c.Cancel(ctx, client.Cancel{MessageID: "m2", LocationID: "l1"})
	require.True(t, errors.Is(err, context.Canceled), "%v", err)
}

// TestSweepRetryAfterALostAnswer: the intake queues a sweep but its answer
// is lost (a proxy answers 503 after the request got through). The
// client's retry carries the same Idempotency-Key, so it gets the first
// sweep's answer and no second sweep starts.
func TestSweepRetryAfterALostAnswer(t *testing.T) {
	t.Parallel()
	rdb := redisServer.Client(t)
	srv, err := intake.New(intake.Config{Redis: rdb, Keys: []string{key}})
	require.NoError(t, err)
	var sweeps atomic.Int32
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/sweeps" && sweeps.Add(1) == 1 {
			srv.ServeHTTP(httptest.NewRecorder(), r) // queued; the answer is lost
			http.Error(w, "upstream timed out", http.StatusGatewayTimeout)
			return
		}
		srv.ServeHTTP(w, r)
	}))
	t.Cleanup(hs.Close)
	c, err := client.New(hs.URL, key, client.Options{RetryBase: time.Millisecond})
	require.NoError(t, err)
	ctx := context.Background()
	res, err := c.Sweep(ctx, client.SweepRequest{LocationIDs: []string{"locIdem0000000000001"}})
	require.NoError(t, err)
	require.Equal(t, int32(2), sweeps.Load(), "retried once")
	ids, err := rdb.LRange(ctx, "asynq:{default}:pending", 0, -1).Result()
	require.NoError(t, err)
	require.Equal(t, []string{res.TaskIDs[0]}, ids, "one sweep queued, and the answer names it")
	st, err := c.Campaign(ctx, res.CampaignID)
	require.NoError(t, err)
	require.Equal(t, int64(1), st.Sweeps)

	// Another call is another sweep (its own key).
	res2, err := c.Sweep(ctx, client.SweepRequest{LocationIDs: []string{"locIdem0000000000001"}})
	require.NoError(t, err)
	require.NotEqual(t, res.SweepID, res2.SweepID)
}
