package worker_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/deadletter"
	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/producer"
	"github.com/ghlcancel/ghlcancel/internal/redistest"
	"github.com/ghlcancel/ghlcancel/internal/sandbox"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
	"github.com/ghlcancel/ghlcancel/internal/tokens"
	"github.com/ghlcancel/ghlcancel/internal/worker"
)

// TestOAuthWorkers: three workers on OAuth, access tokens living 2 s:
// every message is cancelled, no refresh token is used twice, nothing is
// dead-lettered; a paused location and a location whose refresh token was
// revoked are dead-lettered with their reasons.
func TestOAuthWorkers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// 2 s, refreshed at 1 s left: long enough that a stalled task is not
	// handed tokens that end in flight twice running (dead-lettered as
	// unauthorized), short enough for several refreshes.
	sb := sandbox.New(sandbox.Config{AccessTTL: 2 * time.Second, RateMax: -1})
	const (
		good    = "locOAuthGood00000001"
		paused  = "locOAuthPaused000001"
		revoked = "locOAuthRevoked00001"
	)
	key := []byte("0123456789abcdef0123456789abcdef")
	oc := &tokens.OAuthConfig{ClientID: sandbox.ClientIDDefault, ClientSecret: sandbox.ClientSecretDefault, Key: key}
	f := startFleet(t, 3, sb, nil, worker.Config{
		Concurrency: 20, DelayedCheckInterval: 100 * time.Millisecond, OAuth: oc, NoPacing: true,
		Backoff: tasks.Backoff{Base: 50 * time.Millisecond, Cap: 200 * time.Millisecond},
	})
	loader, err := tokens.NewOAuth(tokens.OAuthConfig{Redis: redistest.ClientFor(t, f.url), Key: key})
	require.NoError(t, err)
	require.NoError(t, loader.Set(ctx, good, "", sb.AddOAuthLocation(good), 0))
	require.NoError(t, loader.Set(ctx, paused, "", sb.AddOAuthLocation(paused), 0))
	sb.SetInactive(paused, true)
	sb.AddOAuthLocation(revoked)
	require.NoError(t, loader.Set(ctx, revoked, "", "rt-from-an-old-install", 0))

	ids := sb.ScheduleN(good, 300, false)
	var items []producer.Item
	for _, id := range ids {
		items = append(items, producer.Item{Kind: ghl.KindMessage, MessageID: id, LocationID: good})
	}
	pausedID := sb.ScheduleN(paused, 1, false)[0]
	revokedID := sb.ScheduleN(revoked, 1, false)[0]
	items = append(items,
		producer.Item{Kind: ghl.KindMessage, MessageID: pausedID, LocationID: paused},
		producer.Item{Kind: ghl.KindMessage, MessageID: revokedID, LocationID: revoked})
	// Spread the work over more than one token lifetime.
	for i := 0; i < len(items); i += 50 {
		f.enqueue(t, items[i:min(i+50, len(items))])
		time.Sleep(400 * time.Millisecond)
	}
	f.waitCancelled(t, ids, 60*time.Second)

	store := deadletter.New(redistest.ClientFor(t, f.url))
	require.Eventually(t, func() bool { n, _ := store.Count(ctx); return n == 2 }, 20*time.Second, 50*time.Millisecond)
	rec, ok, err := store.Get(ctx, tasks.TaskID(ghl.KindMessage, pausedID))
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, "location_inactive", rec.Reason)
	rec, ok, err = store.Get(ctx, tasks.TaskID(ghl.KindMessage, revokedID))
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, "invalid_grant", rec.Reason)
	require.Contains(t, rec.APIMessage, "enqueue tokens set")
	require.NotContains(t, rec.APIMessage, "rt-from-an-old-install")

	st := sb.Stats()
	t.Logf("sandbox: %+v", st)
	require.Equal(t, int64(1), st.InvalidGrants, "only the revoked location's token may be refused")
	require.GreaterOrEqual(t, st.Refreshes, int64(2))
	// Refreshes are HighLevel calls, counted with the others by endpoint:
	// each granted one a 200, the revoked and the paused location's 400s.
	var granted, refused float64
	for _, w := range f.workers {
		granted += testutil.ToFloat64(w.Metrics.APIRequests.WithLabelValues("oauth_token", "200"))
		refused += testutil.ToFloat64(w.Metrics.APIRequests.WithLabelValues("oauth_token", "400"))
	}
	require.Equal(t, float64(st.Refreshes), granted)
	require.GreaterOrEqual(t, refused, 2.0)
}

// TestUnauthorizedRefreshesOnce: a stored access token that looks fresh but
// HighLevel refuses (revoked early) is refreshed once and the call retried.
func TestUnauthorizedRefreshesOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	sb := sandbox.New(sandbox.Config{RateMax: -1})
	const loc = "locOAuth401000000001"
	key := []byte("0123456789abcdef0123456789abcdef")
	f := startFleet(t, 1, sb, nil, worker.Config{Concurrency: 4, NoPacing: true,
		OAuth: &tokens.OAuthConfig{ClientID: sandbox.ClientIDDefault, ClientSecret: sandbox.ClientSecretDefault, Key: key}})
	loader, err := tokens.NewOAuth(tokens.OAuthConfig{Redis: redistest.ClientFor(t, f.url), Key: key})
	require.NoError(t, err)
	require.NoError(t, loader.Set(ctx, loc, "at-revoked-early", sb.AddOAuthLocation(loc), time.Hour))
	ids := sb.ScheduleN(loc, 5, false)
	var items []producer.Item
	for _, id := range ids {
		items = append(items, producer.Item{Kind: ghl.KindMessage, MessageID: id, LocationID: loc})
	}
	f.enqueue(t, items)
	f.waitCancelled(t, ids, 20*time.Second)
	st := sb.Stats()
	require.Equal(t, int64(1), st.Refreshes, "one refresh for all the 401s")
	require.Positive(t, st.Unauthorized)
	n, err := deadletter.New(redistest.ClientFor(t, f.url)).Count(ctx)
	require.NoError(t, err)
	require.Zero(t, n)
}
