package fleet

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/redistest"
)

var redisServer *redistest.Server

func TestMain(m *testing.M) { redistest.Main(m, &redisServer) }

// TestPeersAndDifferences: workers announce, read each other (a stale or
// unreadable announcement is a worker gone, removed), and differ only on
// the settings that differ; a worker that leaves is no longer counted.
func TestPeersAndDifferences(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	a := New(rdb, Workers, "host-a:1", Settings{"RATE_LIMIT": "100/10s", "DEAD_LETTER_RETENTION": Duration(720 * time.Hour), "VERIFY": Bool(true)})
	b := New(rdb, Workers, "host-b:2", Settings{"RATE_LIMIT": "off", "DEAD_LETTER_RETENTION": Duration(30 * time.Second), "VERIFY": Bool(true)})
	for _, r := range []*Registry{a, b} {
		require.NoError(t, r.Announce(ctx))
	}
	// Stamped by Redis's clock: one a stale time ago is a worker gone, as
	// is an unreadable one.
	stale := time.Now().Add(-Stale - 5*time.Second).UnixMilli()
	require.NoError(t, rdb.HSet(ctx, Workers, "host-c:3", fmt.Sprintf(`%d|{"RATE_LIMIT":"5/1s"}`, stale), "host-d:4", "not json").Err())

	peers, err := a.Peers(ctx)
	require.NoError(t, err)
	require.Len(t, peers, 2, "the stale and the unreadable announcements are workers gone")
	require.Equal(t, []string{"host-a:1", "host-b:2"}, rdb.HKeys(ctx, Workers).Val(), "and removed")

	diffs := Differences(peers, a.Names())
	require.Len(t, diffs, 2)
	require.Equal(t, `DEAD_LETTER_RETENTION: "30s" (host-b:2), "720h0m0s" (host-a:1)`, diffs[0].String())
	require.Equal(t, `RATE_LIMIT: "100/10s" (host-a:1), "off" (host-b:2)`, diffs[1].String())
	require.Equal(t, 720*time.Hour, MaxDuration(peers, "DEAD_LETTER_RETENTION"), "the longest is kept")

	require.NoError(t, b.Leave(ctx))
	peers, err = a.Peers(ctx)
	require.NoError(t, err)
	require.Empty(t, Differences(peers, a.Names()), "alone, nothing differs")
	require.Zero(t, MaxDuration(map[string]Settings{"x": {}}, "DEAD_LETTER_RETENTION"), "a worker that does not say is skipped")
}

// TestKeepLongest: the longest retention said is kept for that long after
// the last process that said it (a worker with 30 days that stopped still
// protects the dead letters it wrote), and a shorter one does not cut it.
func TestKeepLongest(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	d, err := KeepLongest(ctx, rdb, "DEAD_LETTER_RETENTION", 300*time.Millisecond)
	require.NoError(t, err)
	require.Equal(t, 300*time.Millisecond, d)
	d, err = KeepLongest(ctx, rdb, "DEAD_LETTER_RETENTION", 30*time.Millisecond)
	require.NoError(t, err)
	require.Equal(t, 300*time.Millisecond, d, "a shorter one keeps the longest")
	d, err = KeepLongest(ctx, rdb, "DEAD_LETTER_RETENTION", 150*time.Millisecond)
	require.NoError(t, err)
	require.Equal(t, 300*time.Millisecond, d)
	time.Sleep(200 * time.Millisecond) // the 150 ms one is out; the 300 ms one is not
	d, err = KeepLongest(ctx, rdb, "DEAD_LETTER_RETENTION", 30*time.Millisecond)
	require.NoError(t, err)
	require.Equal(t, 300*time.Millisecond, d)
	time.Sleep(150 * time.Millisecond) // the long one's holder said nothing more
	d, err = KeepLongest(ctx, rdb, "DEAD_LETTER_RETENTION", 30*time.Millisecond)
	require.NoError(t, err)
	require.Equal(t, 30*time.Millisecond, d, "kept as long as it said, no longer")

	// A middle one said under the longest outlives it (review: one value
	// forgot the 14-day worker once the 30-day one ran out).
	_, err = KeepLongest(ctx, rdb, "X", time.Second)
	require.NoError(t, err)
	_, err = KeepLongest(ctx, rdb, "X", 2*time.Second)
	require.NoError(t, err)
	time.Sleep(1500 * time.Millisecond)
	_, err = KeepLongest(ctx, rdb, "X", time.Second) // the middle one says it again: until 2.5 s
	require.NoError(t, err)
	time.Sleep(750 * time.Millisecond) // the 2 s one ran out at 2 s
	d, err = KeepLongest(ctx, rdb, "X", 10*time.Millisecond)
	require.NoError(t, err)
	require.Equal(t, time.Second, d)
}
