package tokens_test

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/redistest"
	"github.com/ghlcancel/ghlcancel/internal/tokens"
)

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// accepted reports whether the sandbox takes tok as a bearer token.
func (b *oauthBundle) accepted(t *testing.T, tok string) bool {
	t.Helper()
	api, err := ghl.New(ghl.Config{BaseURL: b.srv.URL, Timeout: 5 * time.Second})
	require.NoError(t, err)
	_, err = api.Cancel(context.Background(), ghl.KindMessage, "unknownMessage000001", tok)
	var e *ghl.Error
	return !errors.As(err, &e) || e.Reason != ghl.ReasonUnauthorized
}

// storedGen reads the location's stored generation with a client of its own.
func (b *oauthBundle) storedGen(t *testing.T, loc string) int64 {
	t.Helper()
	n, err := redistest.ClientFor(t, b.url).HGet(context.Background(), tokens.RecordKey(loc), "gen").Int64()
	require.NoError(t, err)
	return n
}

func (b *oauthBundle) locked(t *testing.T, loc string) bool {
	t.Helper()
	n, err := redistest.ClientFor(t, b.url).Exists(context.Background(), tokens.LockKey(loc)).Result()
	require.NoError(t, err)
	return n == 1
}

// TestRefreshSurvivesCancelledContext: the caller's context is cancelled
// right after the token endpoint answered, before the new pair is stored.
// HighLevel has spent the old refresh token by then, so the new pair must
// be stored anyway: another worker (its own Redis client) reads an access
// token the sandbox accepts, and nothing ever reuses the spent refresh token.
func TestRefreshSurvivesCancelledContext(t *testing.T) {
	t.Parallel()
	const refused = "at-refused-by-highlevel"
	for _, tc := range []struct {
		name   string
		access string // stored access token; empty makes Token refresh
		call   func(ctx context.Context, o *tokens.OAuth, loc string) (string, error)
	}{
		{"refresh near expiry, from Token", "", func(ctx context.Context, o *tokens.OAuth, loc string) (string, error) {
			return o.Token(ctx, loc)
		}},
		{"refresh after a 401", refused, func(ctx context.Context, o *tokens.OAuth, loc string) (string, error) {
			return o.Refresh(ctx, loc, refused)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setupOAuth(t, time.Hour)
			const loc = "locOAuth000000000010"
			require.NoError(t, b.newOAuth(t).Set(context.Background(), loc, tc.access, b.sb.AddOAuthLocation(loc), time.Hour))

			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			cancelAfterAnswer := roundTripFunc(func(r *http.Request) (*http.Response, error) {
				resp, err := http.DefaultTransport.RoundTrip(r)
				if r.URL.Path == "/oauth/token" {
					cancel() // the task gives up just as HighLevel answered
				}
				return resp, err
			})
			o := b.newOAuth(t, func(c *tokens.OAuthConfig) {
				c.HTTP = &http.Client{Transport: cancelAfterAnswer, Timeout: 20 * time.Second}
			})
			tok, err := tc.call(ctx, o, loc)
			require.Error(t, ctx.Err(), "the token endpoint was not called")
			require.NoError(t, err, "the refresh finished although its caller gave up")
			require.NotEqual(t, refused, tok)

			other, err := b.newOAuth(t).Token(context.Background(), loc)
			require.NoError(t, err)
			require.Equal(t, tok, other, "the new pair is stored")
			require.True(t, b.accepted(t, other))
			again, err := o.Token(context.Background(), loc)
			require.NoError(t, err)
			require.Equal(t, tok, again)

			st := b.sb.Stats()
			require.Equal(t, int64(1), st.Refreshes)
			require.Zero(t, st.InvalidGrants, "the spent refresh token was used again")
			require.Equal(t, int64(1), b.count("ok"))
			require.False(t, b.locked(t, loc), "the lock is released")
		})
	}
}

// failStores is a go-redis hook that fails the script storing a refreshed
// pair while left > 0, as an unavailable Redis would.
type failStores struct{ left atomic.Int64 }

func (h *failStores) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *failStores) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func (h *failStores) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		for isStoreScript(cmd) {
			n := h.left.Load()
			if n <= 0 {
				break
			}
			if h.left.CompareAndSwap(n, n-1) {
				err := errors.New("injected: connection refused")
				cmd.SetErr(err)
				return err
			}
		}
		return next(ctx, cmd)
	}
}

func isStoreScript(cmd redis.Cmder) bool {
	args := cmd.Args()
	if len(args) < 2 {
		return false
	}
	arg, _ := args[1].(string)
	switch cmd.Name() {
	case "evalsha":
		return arg == tokens.StoreScriptHash
	case "eval":
		sum := sha1.Sum([]byte(arg))
		return hex.EncodeToString(sum[:]) == tokens.StoreScriptHash
	}
	return false
}

// TestPendingPairWhenStoreFails: HighLevel answered a refresh but the new
// pair cannot be stored. The pair is kept (pending) and its access token
// used; a later call stores it; the spent refresh token is never sent
// again (one refresh, no invalid_grant), even when the pending access token
// is refused before it could be stored.
func TestPendingPairWhenStoreFails(t *testing.T) {
	t.Parallel()
	const storeTries = 5 // as in oauth.go
	type step func(t *testing.T, o *tokens.OAuth, loc, first string)
	token := func(t *testing.T, o *tokens.OAuth, loc, first string) {
		tok, err := o.Token(context.Background(), loc)
		require.NoError(t, err)
		require.Equal(t, first, tok)
	}
	refreshOlder := func(t *testing.T, o *tokens.OAuth, loc, first string) {
		tok, err := o.Refresh(context.Background(), loc, "at-an-older-token")
		require.NoError(t, err)
		require.Equal(t, first, tok)
	}
	refreshPending := func(t *testing.T, o *tokens.OAuth, loc, first string) {
		_, err := o.Refresh(context.Background(), loc, first)
		require.ErrorContains(t, err, "waiting to be stored")
		require.NotContains(t, err.Error(), first)
		var ge *tokens.GrantError
		require.False(t, errors.As(err, &ge))
	}
	for _, tc := range []struct {
		name       string
		failStores int64
		stillHeld  []step // calls while the store still fails
		next       step   // the call that stores the pair
		lateStore  bool
	}{
		{name: "stored on a retry", failStores: storeTries - 1},
		{name: "stored by the next Token", failStores: storeTries, next: token, lateStore: true},
		{name: "stored by the next Refresh", failStores: storeTries, next: refreshOlder, lateStore: true},
		{name: "Redis still down at the next Token", failStores: storeTries + 2,
			stillHeld: []step{token, token}, next: token, lateStore: true},
		{name: "pending token refused before it is stored", failStores: storeTries + 1,
			stillHeld: []step{refreshPending}, next: token, lateStore: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			b := setupOAuth(t, time.Hour)
			const loc = "locOAuth000000000011"
			require.NoError(t, b.newOAuth(t).Set(ctx, loc, "", b.sb.AddOAuthLocation(loc), 0))

			hook := &failStores{}
			hook.left.Store(tc.failStores)
			rdb := redistest.ClientFor(t, b.url)
			rdb.AddHook(hook)
			o := b.newOAuth(t, func(c *tokens.OAuthConfig) { c.Redis = rdb })

			first, err := o.Token(ctx, loc)
			require.NoError(t, err, "the new pair's access token is valid: it is used")
			require.True(t, b.accepted(t, first))
			if tc.lateStore {
				require.Equal(t, int64(1), b.storedGen(t, loc), "not stored yet")
				require.True(t, b.locked(t, loc), "the lock is kept while the pair is pending")
				require.Equal(t, int64(1), b.count("error"))
			}
			for _, s := range tc.stillHeld {
				s(t, o, loc, first)
				require.Equal(t, int64(1), b.storedGen(t, loc), "still not stored")
			}
			if tc.next != nil {
				tc.next(t, o, loc, first)
			}
			require.Zero(t, hook.left.Load(), "every injected failure was hit")

			require.Equal(t, int64(2), b.storedGen(t, loc), "stored")
			require.False(t, b.locked(t, loc), "the lock is released")
			other, err := b.newOAuth(t).Token(ctx, loc)
			require.NoError(t, err)
			require.Equal(t, first, other, "another worker reads the pair")
			again, err := o.Token(ctx, loc)
			require.NoError(t, err)
			require.Equal(t, first, again)

			st := b.sb.Stats()
			require.Equal(t, int64(1), st.Refreshes, "the refresh token was spent once")
			require.Zero(t, st.InvalidGrants)
			if tc.lateStore {
				require.Equal(t, int64(1), b.count("stored_late"))
				require.Zero(t, b.count("ok"))
			} else {
				require.Equal(t, int64(1), b.count("ok"))
				require.Zero(t, b.count("stored_late"))
				require.Zero(t, b.count("error"))
			}
		})
	}
}

// TestUnauthorizedDoesNotRotatePerTask: HighLevel refuses a location's
// token for a reason a refresh cannot cure (no access to the location).
// Every task reports its 401 with Refresh; only the first within the
// cooldown refreshes, on every worker; the others get ErrRefreshDidNotCure.
func TestUnauthorizedDoesNotRotatePerTask(t *testing.T) {
	t.Parallel()
	const refused = "at-no-access-to-location"
	for _, tc := range []struct {
		name      string
		accessTTL time.Duration // of the sandbox's access tokens
		run       func(t *testing.T, b *oauthBundle, loc string)
	}{
		{name: "tasks on several workers, concurrent then sequential", accessTTL: time.Hour, run: func(t *testing.T, b *oauthBundle, loc string) {
			ctx := context.Background()
			var workers []*tokens.OAuth
			for range 5 {
				workers = append(workers, b.newOAuth(t))
			}
			var cured, notCured atomic.Int64
			var mu sync.Mutex
			got := map[string]bool{}
			var wg sync.WaitGroup
			for i := range 50 { // each task: take the token, get a 401, report it
				wg.Go(func() {
					w := workers[i%len(workers)]
					tok, err := w.Token(ctx, loc)
					if err != nil {
						t.Errorf("token: %v", err)
						return
					}
					fresh, err := w.Refresh(ctx, loc, tok)
					switch {
					case errors.Is(err, tokens.ErrRefreshDidNotCure):
						notCured.Add(1)
					case err != nil:
						t.Errorf("refresh: %v", err)
					case fresh == tok:
						t.Errorf("Refresh returned the refused token")
					default:
						cured.Add(1)
						mu.Lock()
						got[fresh] = true
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			require.Equal(t, int64(1), b.sb.Stats().Refreshes)
			require.Len(t, got, 1, "every task that was cured got the one new token")
			require.Equal(t, int64(50), cured.Load()+notCured.Load())

			current, err := workers[0].Token(ctx, loc)
			require.NoError(t, err)
			require.True(t, got[current])
			for i := range 50 {
				_, err := workers[i%len(workers)].Refresh(ctx, loc, current)
				require.ErrorIs(t, err, tokens.ErrRefreshDidNotCure)
				require.NotContains(t, err.Error(), current)
			}
			require.Equal(t, int64(1), b.sb.Stats().Refreshes)
		}},
		{name: "after the cooldown, one more refresh", accessTTL: time.Hour, run: func(t *testing.T, b *oauthBundle, loc string) {
			ctx := context.Background()
			o := b.newOAuth(t, func(c *tokens.OAuthConfig) { c.Refresh401Cooldown = time.Minute })
			second, err := o.Refresh(ctx, loc, refused)
			require.NoError(t, err)
			_, err = o.Refresh(ctx, loc, second)
			require.ErrorIs(t, err, tokens.ErrRefreshDidNotCure)
			// The cooldown passes: the 401's refresh is moved two minutes
			// back in Redis, where every worker reads it (not slept
			// through: a stall could outlast a short cooldown too early).
			rdb := redistest.ClientFor(t, b.url)
			require.NoError(t, rdb.HSet(ctx, tokens.RecordKey(loc), "r401", time.Now().Add(-2*time.Minute).UnixMilli()).Err())
			third, err := o.Refresh(ctx, loc, second)
			require.NoError(t, err)
			require.NotEqual(t, second, third)
			_, err = o.Refresh(ctx, loc, third)
			require.ErrorIs(t, err, tokens.ErrRefreshDidNotCure)
			require.Equal(t, int64(2), b.sb.Stats().Refreshes)
		}},
		{name: "refreshes near expiry are not affected", accessTTL: 20 * time.Second, run: func(t *testing.T, b *oauthBundle, loc string) {
			ctx := context.Background()
			second, err := b.newOAuth(t).Refresh(ctx, loc, refused)
			require.NoError(t, err)
			// Past half its life: due. Its expiry is moved in Redis, and a
			// worker that has not cached it reads it (a 10 s sleep would
			// do the same, slowly).
			rdb := redistest.ClientFor(t, b.url)
			require.NoError(t, rdb.HSet(ctx, tokens.RecordKey(loc), "exp", time.Now().Add(9*time.Second).UnixMilli()).Err())
			o := b.newOAuth(t)
			third, err := o.Token(ctx, loc)
			require.NoError(t, err)
			require.NotEqual(t, second, third)
			require.Equal(t, int64(2), b.sb.Stats().Refreshes)
			// The cooldown still runs from the 401's refresh.
			_, err = o.Refresh(ctx, loc, third)
			require.ErrorIs(t, err, tokens.ErrRefreshDidNotCure)
			require.Equal(t, int64(2), b.sb.Stats().Refreshes)
		}},
		{name: "a pair loaded by the operator starts over", accessTTL: time.Hour, run: func(t *testing.T, b *oauthBundle, loc string) {
			ctx := context.Background()
			o := b.newOAuth(t)
			second, err := o.Refresh(ctx, loc, refused)
			require.NoError(t, err)
			_, err = o.Refresh(ctx, loc, second)
			require.ErrorIs(t, err, tokens.ErrRefreshDidNotCure)
			// The app is reinstalled and its pair loaded with `enqueue tokens set`.
			const reinstalled = "at-from-the-reinstall"
			require.NoError(t, b.newOAuth(t).Set(ctx, loc, reinstalled, b.sb.AddOAuthLocation(loc), time.Hour))
			fresh, err := o.Refresh(ctx, loc, reinstalled)
			require.NoError(t, err)
			require.NotEqual(t, reinstalled, fresh)
			require.Equal(t, int64(2), b.sb.Stats().Refreshes)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setupOAuth(t, tc.accessTTL)
			const loc = "locOAuth000000000012"
			// The stored access token is one HighLevel refuses.
			require.NoError(t, b.newOAuth(t).Set(context.Background(), loc, refused, b.sb.AddOAuthLocation(loc), time.Hour))
			tc.run(t, b, loc)
			require.Zero(t, b.sb.Stats().InvalidGrants)
		})
	}
}
