package client_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
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
	require.True(t, one.Moved, "from the bulk lane to the default lane")

	// Sent again as urgent, across batches: the moves are counted in all.
	for i := range items {
		items[i].Urgent = true
	}
	res, err = c.CancelMany(ctx, items, "", false)
	require.NoError(t, err)
	require.Equal(t, []int{2500, 2500}, []int{res.AlreadyQueued, res.Moved})
	for i := range items {
		items[i].Urgent = false
	}

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

// losesFirstAnswer is the real intake behind a proxy that passes the first
// request to path on and then answers 504 (the request got through, its
// answer is lost). It counts the requests to path.
func losesFirstAnswer(t *testing.T, rdb *redis.Client, path string) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	srv, err := intake.New(intake.Config{Redis: rdb, Keys: []string{key}})
	require.NoError(t, err)
	var n atomic.Int32
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == path && n.Add(1) == 1 {
			srv.ServeHTTP(httptest.NewRecorder(), r) // it went through; the answer is lost
			http.Error(w, "upstream timed out", http.StatusGatewayTimeout)
			return
		}
		srv.ServeHTTP(w, r)
	}))
	t.Cleanup(hs.Close)
	return hs, &n
}

// TestSweepRetryAfterALostAnswer: the intake queues a sweep but its answer
// is lost (a proxy answers 503 after the request got through). The
// client's retry carries the same Idempotency-Key, so it gets the first
// sweep's answer and no second sweep starts.
func TestSweepRetryAfterALostAnswer(t *testing.T) {
	t.Parallel()
	rdb := redisServer.Client(t)
	hs, sweeps := losesFirstAnswer(t, rdb, "/v1/sweeps")
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

// TestCampaignIDsThatNeedEscaping: a campaign id with a space, a slash or
// a non-ASCII letter is read back by the id it was created with (the
// client once escaped it twice and was told the campaign did not exist).
func TestCampaignIDsThatNeedEscaping(t *testing.T) {
	t.Parallel()
	hs, _ := server(t, 0)
	c, err := client.New(hs.URL, key)
	require.NoError(t, err)
	ctx := context.Background()
	for i, id := range []string{"Spring Sale 2026", "spring/sale", "été?x=1#frag", "100%", "a+b"} {
		r, err := c.Cancel(ctx, client.Cancel{MessageID: fmt.Sprintf("mEsc%d", i), LocationID: "loc1", CampaignID: id})
		require.NoError(t, err)
		require.Equal(t, client.StatusEnqueued, r.Status)
		st, err := c.Campaign(ctx, id)
		require.NoError(t, err, id)
		require.Equal(t, id, st.Campaign)
		require.Equal(t, int64(1), st.Total, id)
	}
	for _, id := range []string{"", ".", ".."} {
		_, err := c.Campaign(ctx, id)
		require.ErrorContains(t, err, "no campaign can have it", id)
	}
}

// TestClientMistakes: what a user gets wrong when wiring the client: each
// is refused at once, or answered with the cause and the fix, never
// retried as if the network had failed.
func TestClientMistakes(t *testing.T) {
	t.Parallel()
	hs, calls := server(t, 0)
	ctx := context.Background()

	// The base URL with /v1 (every route starts with it; a gateway that
	// strips a prefix ending in /v1 may need one, so it is not refused):
	// the first answer says so.
	c, err := client.New(hs.URL+"/v1/", key)
	require.NoError(t, err)
	_, err = c.Cancel(ctx, client.Cancel{MessageID: "mV1", LocationID: "loc1"})
	require.ErrorContains(t, err, "/v1 twice")
	for _, base := range []string{hs.URL + "?x=1", hs.URL + "/?"} {
		_, err = client.New(base, key)
		require.ErrorContains(t, err, "no query", base)
	}
	// Credentials in the URL would show in every error.
	_, err = client.New(strings.Replace(hs.URL, "http://", "http://user:s3cret@", 1), key)
	require.ErrorContains(t, err, "holds a user or password")
	require.NotContains(t, err.Error(), "s3cret")

	// A key read from a file keeps its line break: trimmed. One with a
	// control character inside is refused, and not echoed.
	c, err = client.New(hs.URL+"\n", key+"\n")
	require.NoError(t, err)
	_, err = c.Cancel(ctx, client.Cancel{MessageID: "mKey", LocationID: "loc1"})
	require.NoError(t, err)
	_, err = client.New(hs.URL, "client-test\x00key-0123456789")
	require.ErrorContains(t, err, "control character at byte 11")
	require.NotContains(t, err.Error(), "client-test")

	// A path prefix that is not the intake's: the 404 names the request.
	c, err = client.New(hs.URL+"/ghlcancel", key)
	require.NoError(t, err)
	_, err = c.Cancel(ctx, client.Cancel{MessageID: "mPath", LocationID: "loc1"})
	var ae *client.APIError
	require.ErrorAs(t, err, &ae)
	require.Equal(t, client.CodeNotFound, ae.Code)
	require.ErrorContains(t, err, "POST "+hs.URL+"/ghlcancel/v1/cancellations")
	require.ErrorContains(t, err, "no such route: POST /ghlcancel/v1/cancellations")

	// A redirect (http to https, or a moved host) is not followed: a
	// redirected POST loses its body, and used to be answered "use POST".
	moved := httptest.NewServer(http.RedirectHandler(hs.URL+"/", http.StatusMovedPermanently))
	t.Cleanup(moved.Close)
	c, err = client.New(moved.URL, key)
	require.NoError(t, err)
	before := calls.Load()
	_, err = c.Cancel(ctx, client.Cancel{MessageID: "mMoved", LocationID: "loc1"})
	require.ErrorAs(t, err, &ae)
	require.Equal(t, http.StatusMovedPermanently, ae.StatusCode)
	require.ErrorContains(t, err, "redirected to "+hs.URL)
	require.ErrorContains(t, err, "base URL")
	require.Equal(t, before, calls.Load(), "the redirect was not followed")

	// https:// pointed at a plain-http intake: refused at once (no retries).
	c, err = client.New(strings.Replace(hs.URL, "http://", "https://", 1), key, client.Options{RetryBase: time.Second})
	require.NoError(t, err)
	start := time.Now()
	_, err = c.Cancel(ctx, client.Cancel{MessageID: "mTLS", LocationID: "loc1"})
	require.ErrorContains(t, err, "check the base URL's scheme")
	require.NotContains(t, err.Error(), "gave up after", "not retried")
	require.Less(t, time.Since(start), time.Second, "no retry delay was waited")
}

// TestCancelManyErrorSaysWhatWasEnqueued: an invalid item in a later batch
// stops CancelMany; the error says the batches before it were enqueued
// (the server's answer speaks only of its own request: "nothing was
// enqueued").
func TestCancelManyErrorSaysWhatWasEnqueued(t *testing.T) {
	t.Parallel()
	hs, _ := server(t, 0)
	c, err := client.New(hs.URL, key)
	require.NoError(t, err)
	its := make([]client.Cancel, 2500)
	for i := range its {
		its[i] = client.Cancel{MessageID: fmt.Sprintf("mMany%d", i), LocationID: "loc1", CampaignID: "many"}
	}
	its[2100].MessageID = "bad/id"
	res, err := c.CancelMany(context.Background(), its, "", false)
	require.ErrorContains(t, err, "items 0-1999 were sent")
	require.ErrorContains(t, err, "items 2000-2499 and any after them were not enqueued")
	require.ErrorContains(t, err, "item 2100: message_id")
	require.Equal(t, 2000, res.Enqueued)
	require.Len(t, res.Results, 2000)
	st, err := c.Campaign(context.Background(), "many")
	require.NoError(t, err)
	require.Equal(t, int64(2000), st.Total)
}

// TestCancelRetryAfterALostAnswer: a proxy forwards the request and then
// answers 504; the client sends it again, and the answer (already_queued:
// the first attempt enqueued it) says it was resent. A dial failure is
// never a resend.
func TestCancelRetryAfterALostAnswer(t *testing.T) {
	t.Parallel()
	hs, _ := losesFirstAnswer(t, redisServer.Client(t), "/v1/cancellations")
	c, err := client.New(hs.URL, key, client.Options{RetryBase: time.Millisecond})
	require.NoError(t, err)
	r, err := c.Cancel(context.Background(), client.Cancel{MessageID: "mLost", LocationID: "loc1", CampaignID: "lost"})
	require.NoError(t, err)
	require.Equal(t, client.StatusAlreadyQueued, r.Status)
	require.True(t, r.Resent, "the answer may be the first attempt's own work")
	st, err := c.Campaign(context.Background(), "lost")
	require.NoError(t, err)
	require.Equal(t, int64(1), st.Total, "counted once")

	r, err = c.Cancel(context.Background(), client.Cancel{MessageID: "mFirst", LocationID: "loc1"})
	require.NoError(t, err)
	require.False(t, r.Resent)
	require.Equal(t, client.StatusEnqueued, r.Status)

	// A connection that could not be made carried nothing: its retry is
	// no resend.
	var dials atomic.Int32
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		if dials.Add(1) == 1 {
			return nil, &net.OpError{Op: "dial", Net: network, Err: errors.New("connection refused")}
		}
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}}
	c, err = client.New(hs.URL, key, client.Options{RetryBase: time.Millisecond, HTTPClient: &http.Client{Transport: tr}})
	require.NoError(t, err)
	r, err = c.Cancel(context.Background(), client.Cancel{MessageID: "mDial", LocationID: "loc1"})
	require.NoError(t, err)
	require.Equal(t, int32(2), dials.Load(), "retried after the failed dial")
	require.Equal(t, client.StatusEnqueued, r.Status)
	require.False(t, r.Resent, "nothing reached the server before")
}

// TestWrongBaseURLAnsweringJSON: a base URL pointing at another service
// that answers 200 with JSON to anything. CancelMany returned no error and
// no results (nothing enqueued, nothing said), Campaign an empty status:
// every call now fails with ErrNotIntake, naming the base URL.
func TestWrongBaseURLAnsweringJSON(t *testing.T) {
	t.Parallel()
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"status":"ok"}`))
	}))
	t.Cleanup(hs.Close)
	c, err := client.New(hs.URL, key)
	require.NoError(t, err)
	ctx := context.Background()
	items := []client.Cancel{{MessageID: "mWrong1", LocationID: "loc1"}, {MessageID: "mWrong2", LocationID: "loc1"}}
	_, err = c.CancelMany(ctx, items, "", false)
	require.ErrorIs(t, err, client.ErrNotIntake)
	require.ErrorContains(t, err, "check the base URL")
	_, err = c.Cancel(ctx, items[0])
	require.ErrorIs(t, err, client.ErrNotIntake)
	_, err = c.Campaign(ctx, "spring")
	require.ErrorIs(t, err, client.ErrNotIntake)
	_, err = c.Sweep(ctx, client.SweepRequest{LocationIDs: []string{"loc1"}})
	require.ErrorIs(t, err, client.ErrNotIntake)
	_, err = c.DeadLetters(ctx, client.DeadLetterFilter{}, "", 0)
	require.ErrorIs(t, err, client.ErrNotIntake)
}

// TestGivingUpSaysItMayHaveBeenProcessed: every attempt's answer was lost
// (the request reached the intake). The error matches ErrMaybeProcessed
// and CancelMany's says the first batch's items may have been enqueued
// (it said nothing of them, and a resend read "already_queued" as someone
// else's work); a Sweep called again with the same IdempotencyKey gets the
// first sweep's answer instead of starting a second one. A failed dial is
// no such error.
func TestGivingUpSaysItMayHaveBeenProcessed(t *testing.T) {
	t.Parallel()
	rdb := redisServer.Client(t)
	ctx := context.Background()
	hs, _ := losesFirstAnswer(t, rdb, "/v1/cancellations")
	c, err := client.New(hs.URL, key, client.Options{MaxAttempts: 1})
	require.NoError(t, err)
	items := []client.Cancel{{MessageID: "mMaybe1", LocationID: "loc1", CampaignID: "maybe"}, {MessageID: "mMaybe2", LocationID: "loc1", CampaignID: "maybe"}}
	_, err = c.CancelMany(ctx, items, "", false)
	require.ErrorIs(t, err, client.ErrMaybeProcessed)
	require.ErrorContains(t, err, "items 0-1 and any after them may have been enqueued")
	res, err := c.CancelMany(ctx, items, "", false)
	require.NoError(t, err)
	require.Equal(t, 2, res.AlreadyQueued, "the first call did enqueue them")

	hs2, sweeps := losesFirstAnswer(t, rdb, "/v1/sweeps")
	c2, err := client.New(hs2.URL, key, client.Options{MaxAttempts: 1})
	require.NoError(t, err)
	req := client.SweepRequest{LocationIDs: []string{"locMaybe000000000001"}, IdempotencyKey: "sweep-maybe-1"}
	_, err = c2.Sweep(ctx, req)
	require.ErrorIs(t, err, client.ErrMaybeProcessed)
	first, err := c2.Sweep(ctx, req)
	require.NoError(t, err)
	require.Equal(t, int32(2), sweeps.Load())
	ids, err := rdb.LRange(ctx, "asynq:{default}:pending", 0, -1).Result()
	require.NoError(t, err)
	var swept []string
	for _, id := range ids {
		if strings.HasPrefix(id, "sweep:") {
			swept = append(swept, id)
		}
	}
	require.Equal(t, []string{first.TaskIDs[0]}, swept, "one sweep queued, and the second call's answer names it")

	dead, err := client.New("http://127.0.0.1:1", key, client.Options{MaxAttempts: 1})
	require.NoError(t, err)
	_, err = dead.Cancel(ctx, items[0])
	require.Error(t, err)
	require.NotErrorIs(t, err, client.ErrMaybeProcessed, "nothing reached a server")
}

// TestBatchSizeForASmallerIntake: an intake with INTAKE_MAX_ITEMS 500
// refuses CancelMany's default batches of 1,000 (413, "split the
// request", which a caller could not act on); Options.BatchSize fits them.
func TestBatchSizeForASmallerIntake(t *testing.T) {
	t.Parallel()
	srv, err := intake.New(intake.Config{Redis: redisServer.Client(t), Keys: []string{key}, MaxItems: 500})
	require.NoError(t, err)
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	items := make([]client.Cancel, 600)
	for i := range items {
		items[i] = client.Cancel{MessageID: fmt.Sprintf("mSmall%d", i), LocationID: "loc1"}
	}
	c, err := client.New(hs.URL, key)
	require.NoError(t, err)
	_, err = c.CancelMany(context.Background(), items, "", false)
	var ae *client.APIError
	require.ErrorAs(t, err, &ae)
	require.Equal(t, client.CodeTooManyItems, ae.Code)
	c, err = client.New(hs.URL, key, client.Options{BatchSize: 500})
	require.NoError(t, err)
	res, err := c.CancelMany(context.Background(), items, "", false)
	require.NoError(t, err)
	require.Equal(t, 600, res.Enqueued)
	_, err = client.New(hs.URL, key, client.Options{BatchSize: -1})
	require.ErrorContains(t, err, "BatchSize")
}
