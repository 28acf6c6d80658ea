package sandbox

import (
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
