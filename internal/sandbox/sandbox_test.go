package sandbox_test

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/sandbox"
)

func do(t *testing.T, url, version, token string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodDelete, url, nil)
	require.NoError(t, err)
	if version != "" {
		req.Header.Set("Version", version)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	_ = resp.Body.Close()
	return resp
}

func TestRateLimitWindowAndHeaders(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	sb := sandbox.New(sandbox.Config{RateMax: 2, RateInterval: 10 * time.Second, DailyLimit: 3, RetryAfter: true, Now: clock})
	sb.AddLocation("L", "tok")
	srv := httptest.NewServer(sb.Handler())
	t.Cleanup(srv.Close)
	url := srv.URL + "/conversations/messages/" + sandbox.NewID() + "/schedule"

	r := do(t, url, "2021-04-15", "tok")
	require.Equal(t, 200, r.StatusCode)
	require.Equal(t, "2", r.Header.Get("X-RateLimit-Max"))
	require.Equal(t, "10000", r.Header.Get("X-RateLimit-Interval-Milliseconds"))
	require.Equal(t, "1", r.Header.Get("X-RateLimit-Remaining"))
	require.Equal(t, "3", r.Header.Get("X-RateLimit-Limit-Daily"))
	require.Equal(t, "2", r.Header.Get("X-RateLimit-Daily-Remaining"))
	require.Equal(t, 200, do(t, url, "2021-04-15", "tok").StatusCode)
	r = do(t, url, "2021-04-15", "tok")
	require.Equal(t, 429, r.StatusCode)
	require.Equal(t, "10", r.Header.Get("Retry-After"))
	require.Equal(t, "0", r.Header.Get("X-RateLimit-Remaining"))

	now = now.Add(10 * time.Second) // a new window, but the daily budget has one left
	require.Equal(t, 200, do(t, url, "2021-04-15", "tok").StatusCode)
	r = do(t, url, "2021-04-15", "tok")
	require.Equal(t, 429, r.StatusCode)
	require.Equal(t, "0", r.Header.Get("X-RateLimit-Daily-Remaining"))
	require.Equal(t, "50390", r.Header.Get("Retry-After"), "until the next UTC day")
	require.Equal(t, int64(2), sb.Stats().RateLimited)
}

func TestVersionAndAuth(t *testing.T) {
	t.Parallel()
	sb := sandbox.New(sandbox.Config{})
	sb.AddLocation("L", "tok")
	srv := httptest.NewServer(sb.Handler())
	t.Cleanup(srv.Close)
	url := srv.URL + "/conversations/messages/abc/schedule"
	require.Equal(t, 400, do(t, url, "", "tok").StatusCode)
	require.Equal(t, 400, do(t, url, "2023-02-21", "tok").StatusCode)
	require.Equal(t, 401, do(t, url, "2021-04-15", "").StatusCode)
	require.Equal(t, 401, do(t, url, "2021-04-15", "other").StatusCode)
	require.Equal(t, 200, do(t, url, "2021-04-15", "tok").StatusCode)
	require.Equal(t, 404, do(t, srv.URL+"/nope", "2021-04-15", "tok").StatusCode)
}

func TestSentMessagesCannotBeCancelled(t *testing.T) {
	t.Parallel()
	now := time.Now()
	sb := sandbox.New(sandbox.Config{Now: func() time.Time { return now }})
	sb.AddLocation("L", "tok")
	sb.Schedule("L", "past", false, now.Add(-time.Second))
	sb.Schedule("L", "future", false, now.Add(time.Hour))
	st, _, _ := sb.MessageStatus("past")
	require.Equal(t, sandbox.StatusSent, st)
	st, _, _ = sb.MessageStatus("future")
	require.Equal(t, sandbox.StatusScheduled, st)
	require.Equal(t, map[string]int{sandbox.StatusSent: 1, sandbox.StatusScheduled: 1}, sb.Count())
}
