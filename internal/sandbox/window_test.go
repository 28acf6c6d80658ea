package sandbox

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestSlidingWindow: with a sliding window, 3 per second means 3 in any
// second: a call 0.9 s after a burst of 3 is refused, one 1 s after the
// first is admitted, and Remaining says so.
func TestSlidingWindow(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_700_000_000, 500_000_000)
	sb := New(Config{RateMax: 3, RateInterval: time.Second, RateWindow: "sliding", Now: func() time.Time { return now }})
	b := &bucket{}
	admit := func() (bool, string) {
		w := httptest.NewRecorder()
		ok := sb.admit(w, b)
		return ok, w.Header().Get("X-RateLimit-Remaining")
	}
	for i := range 3 {
		ok, rem := admit()
		require.True(t, ok)
		require.Equal(t, strconv.Itoa(2-i), rem)
		now = now.Add(100 * time.Millisecond)
	}
	now = now.Add(600 * time.Millisecond) // 0.9 s after the first: a fixed window (aligned on seconds) would have reset
	ok, _ := admit()
	require.False(t, ok, "still 3 within the last second")
	now = now.Add(100 * time.Millisecond) // 1.0 s after the first
	ok, rem := admit()
	require.True(t, ok)
	require.Equal(t, "0", rem)
}

// TestExportPagingRules: the export's rules as HighLevel documents them:
// limit 10..500, email only with channel=Email, contact and conversation
// filters, a cursor per page that expires, no nextCursor on the last page.
func TestExportPagingRules(t *testing.T) {
	t.Parallel()
	sb := New(Config{RateMax: -1})
	sb.AddLocation("locE", "tok")
	var specs []MessageSpec
	for i := range 25 {
		specs = append(specs, MessageSpec{Contact: "c" + strconv.Itoa(i%2), Email: i%5 == 0})
	}
	sb.AddMessages("locE", specs...)
	srv := httptest.NewServer(sb.Handler())
	defer srv.Close()
	get := func(q string) (int, map[string]any) {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/conversations/messages/export?locationId=locE&"+q, nil)
		req.Header.Set("Authorization", "Bearer tok")
		req.Header.Set("Version", VersionDefault)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		var body map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&body)
		return resp.StatusCode, body
	}
	for _, bad := range []string{"limit=9", "limit=501", "limit=x"} {
		code, _ := get(bad)
		require.Equal(t, 400, code, bad)
	}
	code, body := get("limit=10&sortOrder=asc")
	require.Equal(t, 200, code)
	require.Equal(t, 20.0, body["total"], "no channel: every non-email message")
	require.Len(t, body["messages"], 10)
	cur := body["nextCursor"].(string)
	_, body = get("limit=10&sortOrder=asc&cursor=" + cur)
	require.Len(t, body["messages"], 10)
	require.NotContains(t, body, "nextCursor", "the last page has none")
	_, body = get("channel=Email&limit=10")
	require.Equal(t, 5.0, body["total"], "emails only with channel=Email")
	email := body["messages"].([]any)[0].(map[string]any)
	require.NotEmpty(t, email["meta"].(map[string]any)["email"].(map[string]any)["messageIds"])
	_, body = get("channel=SMS&contactId=c1&limit=10")
	require.Equal(t, 10.0, body["total"])
	code, _ = get("limit=10&cursor=" + cur + "x")
	require.Equal(t, 400, code, "a cursor for another query or garbled")
	sb.ExpireCursors()
	code, body = get("limit=10&sortOrder=asc&cursor=" + cur)
	require.Equal(t, 400, code)
	require.Contains(t, body["message"], "cursor expired")
}
