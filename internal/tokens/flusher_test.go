package tokens_test

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/redistest"
	"github.com/ghlcancel/ghlcancel/internal/tokens"
)

// outage is a go-redis hook for one worker's client: while all is set,
// every command fails, as if Redis were unreachable; while stores is set,
// the script storing a refreshed pair fails.
type outage struct{ all, stores atomic.Bool }

func (h *outage) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *outage) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if h.all.Load() || (h.stores.Load() && isStoreScript(cmd)) {
			err := errors.New("injected: connection refused")
			cmd.SetErr(err)
			return err
		}
		return next(ctx, cmd)
	}
}

func (h *outage) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if h.all.Load() {
			err := errors.New("injected: connection refused")
			for _, cmd := range cmds {
				cmd.SetErr(err)
			}
			return err
		}
		return next(ctx, cmds)
	}
}

type tokenResult struct {
	tok string
	err error
}

// pendingAfterOutage sets up a location whose stored pair is due for a
// refresh and a worker (lock TTL ttl) that refreshes it, but loses Redis
// right after HighLevel answered: the new pair is pending, Redis stays
// unreachable from that worker (hook.all) until the test says, and the lock
// has expired meanwhile. It returns the worker and the pending access token.
func pendingAfterOutage(t *testing.T, b *oauthBundle, loc string, ttl time.Duration) (*tokens.OAuth, *outage, string) {
	t.Helper()
	ctx := context.Background()
	require.NoError(t, b.newOAuth(t).Set(ctx, loc, "", b.sb.AddOAuthLocation(loc), 0))
	hook := &outage{}
	rdb := redistest.ClientFor(t, b.url)
	rdb.AddHook(hook)
	downAfterAnswer := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		resp, err := http.DefaultTransport.RoundTrip(r)
		if r.URL.Path == "/oauth/token" {
			hook.all.Store(true)
		}
		return resp, err
	})
	o := b.newOAuth(t, func(c *tokens.OAuthConfig) {
		c.Redis = rdb
		c.HTTP = &http.Client{Transport: downAfterAnswer, Timeout: 20 * time.Second}
	})
	tokens.SetLockTTL(o, ttl)

	start := time.Now()
	first, err := o.Token(ctx, loc)
	require.NoError(t, err, "the new pair's access token is valid: it is used")
	require.True(t, b.accepted(t, first))
	require.True(t, tokens.Flushing(o), "a pending pair starts the flusher")
	require.Greater(t, time.Since(start), ttl, "the store's retries outlast the lock")
	require.False(t, b.locked(t, loc), "the lock expired while Redis was unreachable")
	require.Equal(t, int64(1), b.storedGen(t, loc), "not stored")
	require.Equal(t, int64(1), b.count("error"))
	return o, hook, first
}

// TestFlusherKeepsLockAndStoresPendingPair: a worker refreshed a pair and
// then could not reach Redis for longer than the lock's TTL, so the lock
// expired. Once Redis answers again (but storing the pair still fails), its
// flusher takes the lock again and extends it: another worker due for a
// refresh waits for the pair instead of spending the refresh token HighLevel
// already spent. When storing works, the flusher stores the pair without any
// further call on the first worker, releases the lock and stops.
func TestFlusherKeepsLockAndStoresPendingPair(t *testing.T) {
	t.Parallel()
	// Under the store's 3.0 s of retries (so the lock expires during them,
	// whatever the load), and long enough that the flusher, extending it
	// every ttl/3, keeps it through a 1.8 s stall.
	const ttl = 2700 * time.Millisecond
	b := setupOAuth(t, time.Hour)
	const loc = "locOAuth000000000020"
	o, hook, first := pendingAfterOutage(t, b, loc, ttl)

	// Redis answers again, but the pair cannot be stored yet.
	hook.stores.Store(true)
	hook.all.Store(false)
	require.Eventually(t, func() bool { return b.locked(t, loc) }, 3*ttl, 20*time.Millisecond,
		"the flusher takes the lock again")

	peer := b.newOAuth(t)
	got := make(chan tokenResult, 1)
	go func() {
		tok, err := peer.Token(context.Background(), loc)
		got <- tokenResult{tok, err}
	}()
	time.Sleep(2 * ttl) // the lock would have expired by now
	select {
	case r := <-got:
		t.Fatalf("the peer did not wait for the pending pair: %q, %v", r.tok, r.err)
	default:
	}
	require.True(t, b.locked(t, loc), "the flusher extends the lock")
	require.Equal(t, int64(1), b.storedGen(t, loc), "still not stored")
	require.Zero(t, b.sb.Stats().InvalidGrants, "the peer spent the spent refresh token")

	hook.stores.Store(false) // storing works: no further call on o
	var r tokenResult
	select {
	case r = <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("the pending pair was not stored")
	}
	require.NoError(t, r.err)
	require.Equal(t, first, r.tok, "the peer reads the stored pair")
	require.Equal(t, int64(2), b.storedGen(t, loc))
	require.Eventually(t, func() bool { return !b.locked(t, loc) }, 5*time.Second, 20*time.Millisecond, "the lock is released")
	require.Eventually(t, func() bool { return !tokens.Flushing(o) }, 5*time.Second, 20*time.Millisecond,
		"the flusher stops when nothing is pending")

	st := b.sb.Stats()
	require.Equal(t, int64(1), st.Refreshes, "the refresh token was spent once")
	require.Zero(t, st.InvalidGrants)
	require.Equal(t, int64(1), b.count("stored_late"))
	require.Equal(t, int64(1), b.count("lost_race"), "the peer")
	require.Zero(t, b.count("ok"))
	again, err := o.Token(context.Background(), loc)
	require.NoError(t, err)
	require.Equal(t, first, again)
	require.NoError(t, o.Close())
}

// TestInvalidGrantWaitsForPeersPendingPair: a worker holds a refreshed pair
// pending, Redis unreachable from it for longer than the lock's TTL. Another
// worker takes the free lock and spends the stored refresh token again:
// invalid_grant. It waits a moment before reporting it (which dead-letters
// tasks), and the first worker's Redis comes back meanwhile: its flusher
// stores the pair, which the other worker then uses.
func TestInvalidGrantWaitsForPeersPendingPair(t *testing.T) {
	t.Parallel()
	const ttl = time.Second
	b := setupOAuth(t, time.Hour)
	const loc = "locOAuth000000000021"
	o, hook, first := pendingAfterOutage(t, b, loc, ttl)

	refused := make(chan struct{})
	var once sync.Once
	signalRefusal := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		resp, err := http.DefaultTransport.RoundTrip(r)
		if r.URL.Path == "/oauth/token" && err == nil && resp.StatusCode == http.StatusBadRequest {
			once.Do(func() { close(refused) })
		}
		return resp, err
	})
	peer := b.newOAuth(t, func(c *tokens.OAuthConfig) {
		c.HTTP = &http.Client{Transport: signalRefusal, Timeout: 20 * time.Second}
	})
	got := make(chan tokenResult, 1)
	go func() {
		tok, err := peer.Token(context.Background(), loc)
		got <- tokenResult{tok, err}
	}()
	select {
	case <-refused:
	case <-time.After(10 * time.Second):
		t.Fatal("the peer did not refresh")
	}
	time.Sleep(500 * time.Millisecond)
	select {
	case r := <-got:
		t.Fatalf("the peer did not wait after invalid_grant: %q, %v", r.tok, r.err)
	default:
	}
	hook.all.Store(false) // the first worker reaches Redis again

	var r tokenResult
	select {
	case r = <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("the peer still waits")
	}
	require.NoError(t, r.err, "the peer uses the pair the first worker stored")
	require.Equal(t, first, r.tok)
	require.Equal(t, int64(2), b.storedGen(t, loc))
	require.Eventually(t, func() bool { return !b.locked(t, loc) }, 5*time.Second, 20*time.Millisecond, "the locks are released")
	require.Eventually(t, func() bool { return !tokens.Flushing(o) }, 5*time.Second, 20*time.Millisecond)

	st := b.sb.Stats()
	require.Equal(t, int64(1), st.Refreshes)
	require.Equal(t, int64(1), st.InvalidGrants, "the peer's try")
	require.Zero(t, b.count("invalid_grant"), "not reported")
	require.Equal(t, int64(1), b.count("lost_race"))
	require.Equal(t, int64(1), b.count("stored_late"))
}

// TestCloseStoresPendingPair: Close stops the flusher and tries once more
// to store a pending pair; if it cannot, it names the location (never the
// token), and Token still works after Close.
func TestCloseStoresPendingPair(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		redisBack bool
	}{
		{"Redis is back", true},
		{"Redis still down", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setupOAuth(t, time.Hour)
			const loc = "locOAuth000000000022"
			o, hook, first := pendingAfterOutage(t, b, loc, time.Second)
			if tc.redisBack {
				hook.all.Store(false)
			}
			err := o.Close()
			require.False(t, tokens.Flushing(o))
			if tc.redisBack {
				require.NoError(t, err)
				require.Equal(t, int64(2), b.storedGen(t, loc))
				require.False(t, b.locked(t, loc))
				require.Equal(t, int64(1), b.count("stored_late"))
				return
			}
			require.ErrorContains(t, err, loc)
			require.NotContains(t, err.Error(), first)
			require.Equal(t, int64(1), b.storedGen(t, loc))
			time.Sleep(100 * time.Millisecond)
			require.False(t, tokens.Flushing(o), "no flusher after Close")

			hook.all.Store(false)
			tok, err := o.Token(context.Background(), loc)
			require.NoError(t, err)
			require.Equal(t, first, tok)
			require.Equal(t, int64(2), b.storedGen(t, loc), "stored by Token")
			require.Equal(t, int64(1), b.count("stored_late"))
			require.Equal(t, int64(1), b.sb.Stats().Refreshes)
		})
	}
}
