package fleet

import (
	"context"
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
	a := New(rdb, "host-a:1", Settings{"RATE_LIMIT": "100/10s", "DEAD_LETTER_RETENTION": Duration(720 * time.Hour), "VERIFY": Bool(true)})
	b := New(rdb, "host-b:2", Settings{"RATE_LIMIT": "off", "DEAD_LETTER_RETENTION": Duration(30 * time.Second), "VERIFY": Bool(true)})
	old := New(rdb, "host-c:3", Settings{"RATE_LIMIT": "5/1s"})
	old.now = func() time.Time { return time.Now().Add(-Stale - time.Second) }
	for _, r := range []*Registry{a, b, old} {
		require.NoError(t, r.Announce(ctx))
	}
	require.NoError(t, rdb.HSet(ctx, Key, "host-d:4", "not json").Err())

	peers, err := a.Peers(ctx)
	require.NoError(t, err)
	require.Len(t, peers, 2, "the stale and the unreadable announcements are workers gone")
	require.Equal(t, []string{"host-a:1", "host-b:2"}, rdb.HKeys(ctx, Key).Val(), "and removed")

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
