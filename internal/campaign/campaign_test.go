package campaign_test

import (
	"bytes"
	"context"
	"encoding/csv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/campaign"
	"github.com/ghlcancel/ghlcancel/internal/redistest"
)

var redisServer *redistest.Server

func TestMain(m *testing.M) { redistest.Main(m, &redisServer) }

func TestCountsEachTaskOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	tr := campaign.New(rdb, time.Hour)
	require.NoError(t, tr.Enqueued(ctx, "c1", "locA", 3))
	require.NoError(t, tr.Enqueued(ctx, "c1", "locB", 1))
	require.NoError(t, tr.Retrying(ctx, "c1", "msg:a"))

	rec, err := tr.Terminal(ctx, "c1", "msg:a", campaign.Outcome{Outcome: campaign.Cancelled, HTTPStatus: 200, Attempts: 2})
	require.NoError(t, err)
	require.True(t, rec)
	// The same task again (a re-delivery after a crash): not counted twice,
	// whatever it reports this time.
	rec, err = tr.Terminal(ctx, "c1", "msg:a", campaign.Outcome{Outcome: campaign.NotCancellable, HTTPStatus: 404, Attempts: 3})
	require.NoError(t, err)
	require.False(t, rec)
	_, err = tr.Terminal(ctx, "c1", "email:b", campaign.Outcome{Outcome: campaign.Expired, Attempts: 1})
	require.NoError(t, err)
	_, err = tr.Terminal(ctx, "c1", "msg:c", campaign.Outcome{Outcome: campaign.DeadLettered, Reason: "unauthorized", HTTPStatus: 401, Attempts: 1})
	require.NoError(t, err)

	s, ok, err := tr.Get(ctx, "c1")
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, int64(4), s.Total)
	require.Equal(t, int64(3), s.Done)
	require.Equal(t, int64(1), s.Pending)
	require.Equal(t, int64(0), s.Retrying, "a finished task is no longer retrying")
	require.Equal(t, int64(1), s.Cancelled)
	require.Equal(t, int64(1), s.Expired)
	require.Equal(t, map[string]int64{"unauthorized": 1}, s.DeadByReason)
	require.False(t, s.Complete)

	// Requeueing the dead letter makes it pending again; its success completes the campaign.
	require.NoError(t, tr.Requeued(ctx, "c1", "msg:c"))
	s, _, _ = tr.Get(ctx, "c1")
	require.Equal(t, int64(0), s.DeadLettered)
	require.Equal(t, int64(2), s.Pending)
	require.Empty(t, s.DeadByReason)
	for _, id := range []string{"msg:c", "msg:d"} {
		_, err = tr.Terminal(ctx, "c1", id, campaign.Outcome{Outcome: campaign.Cancelled, HTTPStatus: 200, Attempts: 1})
		require.NoError(t, err)
	}
	s, _, _ = tr.Get(ctx, "c1")
	require.True(t, s.Complete)
	require.NotNil(t, s.FinishedAt)
	require.Equal(t, int64(3), s.Cancelled)

	locs, err := tr.Locations(ctx, "c1")
	require.NoError(t, err)
	require.ElementsMatch(t, []string{"locA", "locB"}, locs)
	ttl, err := rdb.PTTL(ctx, "ghlcancel:campaign:{c1}:outcomes").Result()
	require.NoError(t, err)
	require.InDelta(t, float64(time.Hour), float64(ttl), float64(time.Minute))

	var buf bytes.Buffer
	n, err := tr.WriteReport(ctx, "c1", &buf)
	require.NoError(t, err)
	require.Equal(t, 4, n)
	rows, err := csv.NewReader(&buf).ReadAll()
	require.NoError(t, err)
	require.Equal(t, []string{"message_id", "kind", "outcome", "reason", "http_status", "attempts", "time"}, rows[0])
	byID := map[string][]string{}
	for _, r := range rows[1:] {
		byID[r[0]] = r
	}
	require.Equal(t, []string{"a", "message", "cancelled", "", "200", "2"}, byID["a"][:6])
	require.Equal(t, []string{"b", "email", "expired", "", "0", "1"}, byID["b"][:6])

	list, err := tr.List(ctx, 10)
	require.NoError(t, err)
	require.Len(t, list, 1)
	require.Equal(t, "c1", list[0].Campaign)
	_, ok, err = tr.Get(ctx, "nope")
	require.NoError(t, err)
	require.False(t, ok)
}

func TestNoCampaignIsANoOp(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tr := campaign.New(redisServer.Client(t), 0)
	require.NoError(t, tr.Enqueued(ctx, "", "loc", 1))
	rec, err := tr.Terminal(ctx, "", "msg:a", campaign.Outcome{Outcome: campaign.Cancelled})
	require.NoError(t, err)
	require.False(t, rec)
	list, err := tr.List(ctx, 10)
	require.NoError(t, err)
	require.Empty(t, list)
}
