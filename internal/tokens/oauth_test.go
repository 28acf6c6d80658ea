package tokens_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/redistest"
	"github.com/ghlcancel/ghlcancel/internal/sandbox"
	"github.com/ghlcancel/ghlcancel/internal/tokens"
)

var redisServer *redistest.Server

func TestMain(m *testing.M) { redistest.Main(m, &redisServer) }

var testKey = []byte("0123456789abcdef0123456789abcdef")

type oauthBundle struct {
	sb       *sandbox.Server
	srv      *httptest.Server
	url      string
	results  sync.Map // result -> *atomic.Int64
	newOAuth func(t *testing.T, opts ...func(*tokens.OAuthConfig)) *tokens.OAuth
}

func setupOAuth(t *testing.T, ttl time.Duration) *oauthBundle {
	t.Helper()
	sb := sandbox.New(sandbox.Config{AccessTTL: ttl, RateMax: -1})
	srv := httptest.NewServer(sb.Handler())
	t.Cleanup(srv.Close)
	b := &oauthBundle{sb: sb, srv: srv, url: redisServer.URL(t)}
	b.newOAuth = func(t *testing.T, opts ...func(*tokens.OAuthConfig)) *tokens.OAuth {
		cfg := tokens.OAuthConfig{
			Redis: redistest.ClientFor(t, b.url), TokenURL: srv.URL + "/oauth/token",
			ClientID: sandbox.ClientIDDefault, ClientSecret: sandbox.ClientSecretDefault, Key: testKey,
			Observe: func(r string) {
				v, _ := b.results.LoadOrStore(r, new(atomic.Int64))
				v.(*atomic.Int64).Add(1)
			},
		}
		for _, opt := range opts {
			opt(&cfg)
		}
		o, err := tokens.NewOAuth(cfg)
		require.NoError(t, err)
		t.Cleanup(func() { _ = o.Close() }) // before its Redis client closes
		return o
	}
	return b
}

func (b *oauthBundle) count(result string) int64 {
	v, ok := b.results.Load(result)
	if !ok {
		return 0
	}
	return v.(*atomic.Int64).Load()
}

// TestRefreshRace: 8 workers (own Redis clients, as 8 processes would
// have), 4 callers each, access tokens living 200 ms, until 100 refreshes:
// every refresh token is used once (no invalid_grant), no token is handed
// out that HighLevel already considers expired, and most refresh attempts
// lost the race to a peer and read its stored pair instead of refreshing
// again.
//
// A handed-out token still has time left when Token returned, but with
// 200 ms lives a loaded machine can stall a caller past it before its
// call arrives (CI saw 7 of 26,835). Those 401s are answered as the worker
// answers them, with Refresh, and the retry must be accepted. The check on
// each token compares the sandbox's expiry with the time before Token was
// called, so it holds however slow the machine is.
func TestRefreshRace(t *testing.T) {
	t.Parallel()
	b := setupOAuth(t, 200*time.Millisecond)
	const loc = "locOAuth000000000001"
	rt := b.sb.AddOAuthLocation(loc)
	require.NoError(t, b.newOAuth(t).Set(context.Background(), loc, "", rt, 0))

	api, err := ghl.New(ghl.Config{BaseURL: b.srv.URL, Timeout: 5 * time.Second})
	require.NoError(t, err)
	var flights callCounts
	var stop atomic.Bool // not a context: in-flight refreshes must finish
	var wg sync.WaitGroup
	for range 8 {
		o := b.newOAuth(t)
		for range 4 {
			wg.Go(func() {
				for !stop.Load() && callWithToken(t, b.sb, api, o, loc, &flights) {
				}
			})
		}
	}
	require.Eventually(t, func() bool { return b.sb.Stats().Refreshes >= 100 }, 60*time.Second, 10*time.Millisecond)
	stop.Store(true)
	wg.Wait()

	st := b.sb.Stats()
	t.Logf("calls %d, expired in flight %d, refreshes %d, invalid grants %d, ok %d, lost races %d",
		flights.calls.Load(), flights.expiredInFlight.Load(), st.Refreshes, st.InvalidGrants, b.count("ok"), b.count("lost_race"))
	require.Zero(t, st.InvalidGrants, "a refresh token was used twice")
	require.Equal(t, st.Refreshes, b.count("ok"), "every refresh HighLevel saw was ours and stored")
	require.Positive(t, b.count("lost_race"))
}

// callCounts counts callWithToken's calls and those that got a 401.
type callCounts struct{ calls, expiredInFlight atomic.Int64 }

// callWithToken makes one cancel call for loc as a worker does: a token
// from src, and on a 401 one Refresh and a retry. Each token src hands out
// must still have been accepted by the sandbox at a time before src was
// asked for it: that holds however slow the machine is, unlike "no 401"
// (a caller stalled past a short-lived token's end gets one). It returns
// false after reporting an error.
func callWithToken(t *testing.T, sb *sandbox.Server, api *ghl.Client, src tokens.Refresher, loc string, n *callCounts) bool {
	ctx := context.Background()
	live := func(tok string, asked time.Time) bool {
		exp, ok := sb.AccessExpiry(tok)
		if !ok || !exp.After(asked) {
			t.Errorf("a token was handed out that HighLevel did not accept when it was asked for (known %v, expired %v before)", ok, asked.Sub(exp))
			return false
		}
		return true
	}
	asked := time.Now()
	tok, err := src.Token(ctx, loc)
	if err != nil {
		t.Errorf("token: %v", err)
		return false
	}
	if !live(tok, asked) {
		return false
	}
	_, err = api.Cancel(ctx, ghl.KindMessage, "unknownMessage000001", tok)
	n.calls.Add(1)
	var e *ghl.Error
	if !errors.As(err, &e) || e.Reason != ghl.ReasonUnauthorized {
		return true
	}
	n.expiredInFlight.Add(1)
	asked = time.Now()
	if tok, err = src.Refresh(ctx, loc, tok); err != nil {
		t.Errorf("refresh after a 401: %v", err)
		return false
	}
	if !live(tok, asked) {
		return false
	}
	if _, err = api.Cancel(ctx, ghl.KindMessage, "unknownMessage000001", tok); errors.As(err, &e) && e.Reason == ghl.ReasonUnauthorized {
		// Stalled past a fresh token's life again: only the check above
		// can tell a fault from a slow machine, so this is logged.
		t.Logf("the retry after Refresh expired in flight too")
	}
	return true
}

func TestRefreshAfter401AndGrantErrors(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupOAuth(t, time.Hour)
	const loc = "locOAuth000000000002"
	o := b.newOAuth(t)
	_, err := o.Token(ctx, loc)
	require.ErrorIs(t, err, tokens.ErrNoToken)

	require.NoError(t, o.Set(ctx, loc, "", b.sb.AddOAuthLocation(loc), 0))
	first, err := o.Token(ctx, loc)
	require.NoError(t, err)
	again, err := o.Token(ctx, loc)
	require.NoError(t, err)
	require.Equal(t, first, again, "a fresh token is reused")

	// HighLevel revokes it early: a 401 makes us refresh once.
	b.sb.RevokeAccess(first)
	second, err := o.Refresh(ctx, loc, first)
	require.NoError(t, err)
	require.NotEqual(t, first, second)
	// A second 401 report with the old token does not refresh again.
	third, err := o.Refresh(ctx, loc, first)
	require.NoError(t, err)
	require.Equal(t, second, third)
	require.Equal(t, int64(2), b.sb.Stats().Refreshes)
	// HighLevel refuses the refreshed token too: within the cooldown that
	// is reported, not refreshed again.
	_, err = o.Refresh(ctx, loc, third)
	require.ErrorIs(t, err, tokens.ErrRefreshDidNotCure)
	require.Equal(t, int64(2), b.sb.Stats().Refreshes)

	// A paused sub-account (asked by a worker whose cooldown is over).
	later := b.newOAuth(t, func(c *tokens.OAuthConfig) { c.Refresh401Cooldown = time.Nanosecond })
	b.sb.SetInactive(loc, true)
	_, err = later.Refresh(ctx, loc, third)
	var ge *tokens.GrantError
	require.ErrorAs(t, err, &ge)
	require.Equal(t, "location_inactive", ge.Reason)
	b.sb.SetInactive(loc, false)

	// A refresh token that HighLevel no longer knows.
	require.NoError(t, o.Set(ctx, loc, "", "rt-revoked-by-reinstall", 0))
	_, err = o.Token(ctx, loc)
	require.ErrorAs(t, err, &ge)
	require.Equal(t, "invalid_grant", ge.Reason)
	require.Contains(t, err.Error(), "enqueue tokens set")
	require.NotContains(t, err.Error(), "rt-revoked-by-reinstall")
	require.Equal(t, int64(1), b.count("invalid_grant"))
	require.Equal(t, int64(1), b.count("inactive"))
}

// TestRefusedRefreshIsRemembered: a refresh HighLevel refused for good is
// remembered on the pair: every later task (of any worker) fails at once
// with the same reason, without sending the dead refresh token again or
// waiting for a peer (one dead pair held every worker slot it reached for
// 5 s, slowing every other location). A new pair clears it; a paused
// sub-account's refusal stands for a minute only (reactivating cures it).
func TestRefusedRefreshIsRemembered(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupOAuth(t, time.Hour)
	const loc = "locOAuthRefused00001"
	w1, w2 := b.newOAuth(t), b.newOAuth(t)
	require.NoError(t, w1.Set(ctx, loc, "", "rt-spent-elsewhere", 0))
	var ge *tokens.GrantError
	_, err := w1.Token(ctx, loc)
	require.ErrorAs(t, err, &ge)
	require.Equal(t, int64(1), b.count("invalid_grant"))

	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := range 20 {
		w := []*tokens.OAuth{w1, w2}[i%2]
		wg.Go(func() {
			if i%3 == 0 {
				_, err := w.Refresh(ctx, loc, "some-refused-access")
				errs <- err
				return
			}
			_, err := w.Token(ctx, loc)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.ErrorAs(t, err, &ge)
		require.Equal(t, "invalid_grant", ge.Reason)
		require.Contains(t, err.Error(), "remembered from")
		require.NotContains(t, err.Error(), "rt-spent-elsewhere")
	}
	require.Equal(t, int64(1), b.count("invalid_grant"), "the dead refresh token was sent once")

	// The operator loads a new pair: it is used at once.
	require.NoError(t, w2.Set(ctx, loc, "", b.sb.AddOAuthLocation(loc), 0))
	_, err = w1.Token(ctx, loc)
	require.NoError(t, err)

	// One worker started with another app's client id (a canary, staging
	// settings) is refused invalid_grant: that refusal is its own, and must
	// not disable a pair the other workers can refresh (found by review).
	const shared = "locOAuthShared000001"
	require.NoError(t, w1.Set(ctx, shared, "", b.sb.AddOAuthLocation(shared), 0))
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest) // RFC 6749 5.2: a refresh token issued to another client
		_, _ = w.Write([]byte(`{"error":"invalid_grant","error_description":"refresh token was issued to another client"}`))
	}))
	t.Cleanup(other.Close)
	stranger := b.newOAuth(t, func(c *tokens.OAuthConfig) { c.ClientID, c.TokenURL = "another-apps-client-id", other.URL })
	_, err = stranger.Token(ctx, shared)
	require.ErrorAs(t, err, &ge)
	require.Equal(t, "invalid_grant", ge.Reason)
	_, err = w2.Token(ctx, shared)
	require.NoError(t, err, "the right app's workers still refresh the pair")

	// A paused sub-account: remembered, then asked again after a minute.
	const paused = "locOAuthPaused000001"
	require.NoError(t, w1.Set(ctx, paused, "", b.sb.AddOAuthLocation(paused), 0))
	b.sb.SetInactive(paused, true)
	_, err = w1.Token(ctx, paused)
	require.ErrorAs(t, err, &ge)
	require.Equal(t, "location_inactive", ge.Reason)
	_, err = w2.Token(ctx, paused)
	require.ErrorAs(t, err, &ge)
	require.Equal(t, int64(1), b.count("inactive"))
	b.sb.SetInactive(paused, false)
	rdb := redistest.ClientFor(t, b.url)
	memo := rdb.HGet(ctx, tokens.RecordKey(paused), "refused").Val()
	parts := strings.SplitN(memo, "|", 3)
	require.Len(t, parts, 3, memo)
	old := fmt.Sprintf("%s|%d|%s", parts[0], time.Now().Add(-2*time.Minute).UnixMilli(), parts[2])
	require.NoError(t, rdb.HSet(ctx, tokens.RecordKey(paused), "refused", old).Err())
	_, err = w2.Token(ctx, paused)
	require.NoError(t, err, "reactivated: asked again after the memo's minute")
}

func TestTokensAreEncryptedAtRest(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupOAuth(t, time.Hour)
	const loc = "locOAuth000000000003"
	o := b.newOAuth(t)
	require.NoError(t, o.Set(ctx, loc, "access-plaintext-AAAA", "refresh-plaintext-BBBB", time.Hour))
	rdb := redistest.ClientFor(t, b.url)
	keys, err := rdb.Keys(ctx, "*").Result()
	require.NoError(t, err)
	for _, k := range keys {
		dump, err := rdb.Dump(ctx, k).Result()
		require.NoError(t, err)
		require.NotContains(t, dump, "plaintext", k)
		vals, _ := rdb.HGetAll(ctx, k).Result()
		for _, v := range vals {
			require.False(t, strings.Contains(v, "plaintext"), k)
		}
	}
	tok, err := o.Token(ctx, loc)
	require.NoError(t, err)
	require.Equal(t, "access-plaintext-AAAA", tok)

	other, err := tokens.NewOAuth(tokens.OAuthConfig{Redis: rdb, TokenURL: "http://x/oauth/token", ClientID: "c", ClientSecret: "s",
		Key: []byte("ffffffffffffffffffffffffffffffff")})
	require.NoError(t, err)
	_, err = other.Token(ctx, loc)
	require.ErrorContains(t, err, "wrong GHL_TOKEN_KEY")
	require.ErrorIs(t, err, tokens.ErrWrongKey, "a dead letter token_key, not a day of token_source retries")
}

func TestParseKey(t *testing.T) {
	t.Parallel()
	_, err := tokens.ParseKey(strings.Repeat("ab", 32))
	require.NoError(t, err)
	_, err = tokens.ParseKey("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")
	require.NoError(t, err)
	_, err = tokens.ParseKey("short")
	require.Error(t, err)
}

// TestReplacedDuringRefresh: `enqueue tokens set --replace` stores a new
// pair while a worker's refresh is at HighLevel. The refresh is fenced out
// (the store moved on); when the new pair is a bare refresh token (no
// access token until its first refresh), the token this refresh got is
// valid and is what the callers get. It answered "" once: every waiting
// cancel dead-lettered invalid_token ("the token is empty") although both
// pairs were good.
func TestReplacedDuringRefresh(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const loc = "locOAuth000000000005"
	sb := sandbox.New(sandbox.Config{AccessTTL: time.Hour, RateMax: -1})
	var o *tokens.OAuth
	var replaced atomic.Bool
	rt2 := sb.AddOAuthLocation(loc)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/oauth/token" && replaced.CompareAndSwap(false, true) {
			// The operator's replace lands while this refresh is in flight.
			if err := o.Set(context.Background(), loc, "", rt2, 0); err != nil {
				t.Error(err)
			}
		}
		sb.Handler().ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	o, err := tokens.NewOAuth(tokens.OAuthConfig{Redis: redisServer.Client(t), TokenURL: srv.URL + "/oauth/token",
		ClientID: sandbox.ClientIDDefault, ClientSecret: sandbox.ClientSecretDefault, Key: testKey})
	require.NoError(t, err)
	t.Cleanup(func() { _ = o.Close() })
	require.NoError(t, o.Set(ctx, loc, "", sb.AddOAuthLocation(loc), 0))

	tok, err := o.Token(ctx, loc)
	require.NoError(t, err)
	require.True(t, replaced.Load())
	require.NotEmpty(t, tok, "the refreshed token, not the replacing pair's missing one")
	_, known := sb.AccessExpiry(tok)
	require.True(t, known, "HighLevel issued it")

	// The replacing pair is what is stored: the next refresh spends rt2.
	next, err := o.Refresh(ctx, loc, tok)
	require.NoError(t, err)
	require.NotEqual(t, tok, next)
	_, known = sb.AccessExpiry(next)
	require.True(t, known)
}

// TestDeleteThenSetDuringRefresh: `tokens delete` then `tokens set` while a
// worker refreshes the old pair. The delete dropped the generation too, so
// the new pair started again at the old one's and the worker's store
// overwrote it (found by review). The delete keeps a higher generation:
// the worker is fenced out and the operator's pair stays. A deleted pair
// reads as none (Stored, Locations), and setting one again is no replace.
func TestDeleteThenSetDuringRefresh(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const loc = "locOAuth000000000077"
	sb := sandbox.New(sandbox.Config{AccessTTL: time.Hour, RateMax: -1})
	rdb := redisServer.Client(t)
	var once atomic.Bool
	rtNew := sb.AddOAuthLocation(loc)
	operator, err := tokens.NewOAuth(tokens.OAuthConfig{Redis: rdb, Key: testKey})
	require.NoError(t, err)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/oauth/token" && once.CompareAndSwap(false, true) {
			if ok, err := tokens.DeletePair(context.Background(), rdb, loc); err != nil || !ok {
				t.Errorf("delete: %v %v", ok, err)
			}
			if stored, err := operator.Stored(context.Background(), loc); err != nil || stored {
				t.Errorf("a deleted pair reads as stored: %v %v", stored, err)
			}
			if locs, err := tokens.Locations(context.Background(), rdb); err != nil || len(locs) != 0 {
				t.Errorf("a deleted pair is listed: %v %v", locs, err)
			}
			if err := operator.Set(context.Background(), loc, "", rtNew, 0); err != nil {
				t.Error(err)
			}
		}
		sb.Handler().ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	o, err := tokens.NewOAuth(tokens.OAuthConfig{Redis: rdb, TokenURL: srv.URL + "/oauth/token",
		ClientID: sandbox.ClientIDDefault, ClientSecret: sandbox.ClientSecretDefault, Key: testKey})
	require.NoError(t, err)
	t.Cleanup(func() { _ = o.Close() })
	require.NoError(t, o.Set(ctx, loc, "", sb.AddOAuthLocation(loc), 0))
	_, err = o.Token(ctx, loc)
	require.NoError(t, err, "the refresh's own token is valid")
	require.True(t, once.Load())
	bare := strconv.FormatInt(time.Time{}.UnixMilli(), 10) // no access token yet
	require.Equal(t, bare, rdb.HGet(ctx, "ghlcancel:oauth:{"+loc+"}", "exp").Val(), "the operator's bare pair is what is stored")
	require.Equal(t, time.Duration(-1), rdb.PTTL(ctx, "ghlcancel:oauth:{"+loc+"}").Val(), "and it does not expire with the delete's marker")
	// The operator's pair works: its refresh token is unspent.
	w, err := tokens.NewOAuth(tokens.OAuthConfig{Redis: rdb, TokenURL: srv.URL + "/oauth/token",
		ClientID: sandbox.ClientIDDefault, ClientSecret: sandbox.ClientSecretDefault, Key: testKey})
	require.NoError(t, err)
	t.Cleanup(func() { _ = w.Close() })
	next, err := w.Token(ctx, loc)
	require.NoError(t, err)
	_, known := sb.AccessExpiry(next)
	require.True(t, known)
}
