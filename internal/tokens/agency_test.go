package tokens_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/redistest"
	"github.com/ghlcancel/ghlcancel/internal/sandbox"
	"github.com/ghlcancel/ghlcancel/internal/tokens"
)

const testCompany = "companyAgency0000001"

type agencyBundle struct {
	sb      *sandbox.Server
	srv     *httptest.Server
	url     string
	results sync.Map // result -> *atomic.Int64
}

// setupAgency: a sandbox with an agency whose access tokens live agencyTTL
// and whose minted location tokens live mintTTL, no rate limits (opts may
// change the sandbox's configuration).
func setupAgency(t *testing.T, agencyTTL, mintTTL time.Duration, opts ...func(*sandbox.Config)) *agencyBundle {
	t.Helper()
	cfg := sandbox.Config{AccessTTL: agencyTTL, MintTTL: mintTTL, RateMax: -1}
	for _, o := range opts {
		o(&cfg)
	}
	sb := sandbox.New(cfg)
	srv := httptest.NewServer(sb.Handler())
	t.Cleanup(srv.Close)
	return &agencyBundle{sb: sb, srv: srv, url: redisServer.URL(t)}
}

// newAgency is one worker's source, with a Redis client of its own.
// newPairs is an OAuth source on the sandbox's token endpoint: the
// agency's pair (company) or the locations' own.
func (b *agencyBundle) newPairs(t *testing.T, rdb redis.UniversalClient, company bool) *tokens.OAuth {
	t.Helper()
	pairs, err := tokens.NewOAuth(tokens.OAuthConfig{Redis: rdb, TokenURL: b.srv.URL + "/oauth/token", Company: company,
		ClientID: sandbox.ClientIDDefault, ClientSecret: sandbox.ClientSecretDefault, Key: testKey})
	require.NoError(t, err)
	return pairs
}

func (b *agencyBundle) newAgency(t *testing.T, opts ...func(*tokens.AgencyConfig)) *tokens.Agency {
	t.Helper()
	rdb := redistest.ClientFor(t, b.url)
	pairs := b.newPairs(t, rdb, true)
	cfg := tokens.AgencyConfig{Redis: rdb, BaseURL: b.srv.URL, Pairs: pairs, Key: testKey, Observe: func(r string) {
		v, _ := b.results.LoadOrStore(r, new(atomic.Int64))
		v.(*atomic.Int64).Add(1)
	}}
	for _, o := range opts {
		o(&cfg)
	}
	a, err := tokens.NewAgency(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = a.Close() })
	return a
}

func (b *agencyBundle) count(result string) int64 {
	v, ok := b.results.Load(result)
	if !ok {
		return 0
	}
	return v.(*atomic.Int64).Load()
}

// setAgency loads a fresh agency pair (refresh token only: the first use
// refreshes) as `enqueue tokens agency set` does.
func (b *agencyBundle) setAgency(t *testing.T) {
	t.Helper()
	rdb := redistest.ClientFor(t, b.url)
	pairs, err := tokens.NewOAuth(tokens.OAuthConfig{Redis: rdb, Company: true, Key: testKey})
	require.NoError(t, err)
	require.NoError(t, tokens.SetAgency(context.Background(), pairs, testCompany, sandbox.AppIDDefault, "", b.sb.AddAgency(testCompany), 0))
}

func (b *agencyBundle) accepted(t *testing.T, tok string) bool {
	t.Helper()
	api, err := ghl.New(ghl.Config{BaseURL: b.srv.URL, Timeout: 5 * time.Second})
	require.NoError(t, err)
	_, err = api.Cancel(context.Background(), ghl.KindMessage, "unknownMessage000001", tok)
	var e *ghl.Error
	return !errors.As(err, &e) || e.Reason != ghl.ReasonUnauthorized
}

// TestMintRace is TestRefreshRace for minted tokens: 8 workers (own Redis
// clients), 4 callers each, 200 installed locations, minted tokens living
// 300 ms and agency tokens 1 s, until 400 mints. At most one mint per location per
// token lifetime (no two mints of a location in flight at once, none while
// a fresh token of it is stored: see mintLog), no token handed out already expired (see
// callWithToken), no refresh token used twice.
func TestMintRace(t *testing.T) {
	t.Parallel()
	const mintTTL = 300 * time.Millisecond
	b := setupAgency(t, time.Second, mintTTL)
	b.setAgency(t)
	locs := make([]string, 200)
	for i := range locs {
		locs[i] = fmt.Sprintf("locAgency%011d", i)
		b.sb.InstallLocation(testCompany, locs[i], "")
	}
	api, err := ghl.New(ghl.Config{BaseURL: b.srv.URL, Timeout: 5 * time.Second})
	require.NoError(t, err)
	var flights callCounts
	var stop atomic.Bool
	var wg sync.WaitGroup
	mints := mintLog{rdb: redistest.ClientFor(t, b.url)}
	for range 8 {
		a := b.newAgency(t, func(c *tokens.AgencyConfig) { c.HTTP = &http.Client{Transport: &mints, Timeout: 20 * time.Second} })
		for range 4 {
			wg.Go(func() {
				for !stop.Load() && callWithToken(t, b.sb, api, a, locs[rand.IntN(len(locs))], &flights) {
				}
			})
		}
	}
	// Until tokens were minted again (twice as many mints as locations)
	// and a worker waited for a peer's mint, not for a fixed time: a CI run
	// once got through only 200 calls in 3 s, one per location.
	require.Eventually(t, func() bool { return b.count("ok") >= int64(2*len(locs)) && b.count("lost_race") > 0 },
		60*time.Second, 20*time.Millisecond)
	stop.Store(true)
	wg.Wait()

	st := b.sb.Stats()
	minted := 0
	for _, loc := range locs {
		minted += len(b.sb.Mints(loc))
	}
	minGap, overlaps, early := mints.check()
	t.Logf("calls %d (expired in flight %d), mints %d (ok %d, lost races %d), agency refreshes %d, invalid grants %d, shortest gap between the starts of a location's mints %s",
		flights.calls.Load(), flights.expiredInFlight.Load(), minted, b.count("ok"), b.count("lost_race"), st.Refreshes, st.InvalidGrants, minGap)
	require.Zero(t, st.InvalidGrants, "an agency refresh token was used twice")
	require.Equal(t, int64(minted), b.count("ok"), "every mint HighLevel saw was ours")
	require.Greater(t, minted, len(locs), "tokens expired and were minted again")
	require.Positive(t, b.count("lost_race"), "workers waited for a peer's mint")
	require.Empty(t, overlaps, "two workers minted for one location at once")
	require.Empty(t, early, "a location was minted while a fresh token of it was stored")
}

// mintLog is a RoundTripper that records, per location, when each POST
// /oauth/locationToken started and when its answer arrived, by the
// client's clock, and whether a token of the location that was still
// fresh (more than half its life left, the rule Agency mints by) was
// stored when the request started. Both hold or fail whatever the load:
// the minter read the same record, under the lock, before the request.
type mintLog struct {
	rdb   *redis.Client
	mu    sync.Mutex
	calls map[string][][2]time.Time
	early []string
}

func (m *mintLog) RoundTrip(req *http.Request) (*http.Response, error) {
	if !strings.HasSuffix(req.URL.Path, "/oauth/locationToken") {
		return http.DefaultTransport.RoundTrip(req)
	}
	body, err := req.GetBody()
	if err != nil {
		return nil, err
	}
	raw, err := io.ReadAll(body)
	if err != nil {
		return nil, err
	}
	form, err := url.ParseQuery(string(raw))
	if err != nil {
		return nil, err
	}
	loc := form.Get("locationId")
	rec, err := m.rdb.HMGet(req.Context(), tokens.MintKey(loc), "exp", "life").Result()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	var early bool
	if exp, life, ok := msField(rec[0]), msField(rec[1]), rec[0] != nil && rec[1] != nil; ok {
		early = time.UnixMilli(exp).Sub(start) > time.Duration(life)*time.Millisecond/2
	}
	resp, err := http.DefaultTransport.RoundTrip(req)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.calls == nil {
		m.calls = map[string][][2]time.Time{}
	}
	if early {
		m.early = append(m.early, loc)
	}
	m.calls[loc] = append(m.calls[loc], [2]time.Time{start, time.Now()})
	return resp, err
}

func msField(v any) int64 {
	s, _ := v.(string)
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}

// check returns the shortest time between the starts of two consecutive
// mints of a location (logged: it moves with the load), the locations with
// two mints in flight at once, and those minted while fresh.
func (m *mintLog) check() (minGap time.Duration, overlaps, early []string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	minGap = time.Hour
	for loc, calls := range m.calls {
		slices.SortFunc(calls, func(a, b [2]time.Time) int { return a[0].Compare(b[0]) })
		for i := 1; i < len(calls); i++ {
			minGap = min(minGap, calls[i][0].Sub(calls[i-1][0]))
			if calls[i][0].Before(calls[i-1][1]) {
				overlaps = append(overlaps, loc)
			}
		}
	}
	return minGap, overlaps, m.early
}

// TestAgencyMint: what one location's token goes through.
func TestAgencyMint(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupAgency(t, time.Hour, time.Hour)
	const loc = "locAgency00000000001"
	a := b.newAgency(t)

	_, err := a.Token(ctx, loc)
	require.ErrorIs(t, err, tokens.ErrNoToken, "no agency set")

	b.setAgency(t)
	b.sb.InstallLocation(testCompany, loc, "Main Street")
	first, err := a.Token(ctx, loc)
	require.NoError(t, err)
	require.True(t, b.accepted(t, first))
	again, err := b.newAgency(t).Token(ctx, loc) // another worker reads the stored token
	require.NoError(t, err)
	require.Equal(t, first, again)
	require.Len(t, b.sb.Mints(loc), 1)

	// Nothing in Redis holds the minted token or the agency's tokens in clear.
	rdb := redistest.ClientFor(t, b.url)
	keys, err := rdb.Keys(ctx, "ghlcancel:*").Result()
	require.NoError(t, err)
	for _, k := range keys {
		dump, err := rdb.Dump(ctx, k).Result()
		require.NoError(t, err)
		require.NotContains(t, dump, first, k)
		require.NotContains(t, dump, "rt-", k)
	}

	// HighLevel refuses the minted token: mint again, once.
	b.sb.RevokeAccess(first)
	second, err := a.Refresh(ctx, loc, first)
	require.NoError(t, err)
	require.NotEqual(t, first, second)
	third, err := b.newAgency(t).Refresh(ctx, loc, first) // a peer's late 401 report
	require.NoError(t, err)
	require.Equal(t, second, third)
	require.Len(t, b.sb.Mints(loc), 2)
	b.sb.RevokeAccess(second)
	_, err = a.Refresh(ctx, loc, second)
	require.ErrorIs(t, err, tokens.ErrRefreshDidNotCure, "a freshly minted token refused too is not minted again")
	require.Len(t, b.sb.Mints(loc), 2)
}

// TestMintFailures: each refusal has its reason, is not retried for a
// minute by anyone, and is forgotten when the operator fixes the cause.
func TestMintFailures(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupAgency(t, time.Hour, time.Hour)
	b.setAgency(t)
	rdb := redistest.ClientFor(t, b.url)
	a := b.newAgency(t)
	mintErr := func(t *testing.T, loc string) *tokens.MintError {
		t.Helper()
		_, err := a.Token(ctx, loc)
		var me *tokens.MintError
		require.ErrorAs(t, err, &me)
		require.NotContains(t, err.Error(), "rt-")
		return me
	}

	t.Run("not installed, then installed", func(t *testing.T) {
		const loc = "locAgency00000000011"
		me := mintErr(t, loc)
		require.Equal(t, tokens.ReasonNotInstalled, me.Reason)
		require.False(t, me.Temporary)
		require.Contains(t, me.Error(), "install it there, then requeue")
		refused := b.sb.Stats().MintsRefused
		// Every worker gets the same answer for a minute, without a call.
		require.Equal(t, tokens.ReasonNotInstalled, mintErr(t, loc).Reason)
		_, err := b.newAgency(t).Token(ctx, loc)
		require.ErrorAs(t, err, &me)
		require.Equal(t, refused, b.sb.Stats().MintsRefused, "no second mint within the minute")
		require.Positive(t, b.count("suppressed"))
		// The operator installs the app and requeues: minted at once.
		b.sb.InstallLocation(testCompany, loc, "")
		require.NoError(t, tokens.ForgetMintFailures(ctx, rdb, []string{loc}))
		_, err = a.Token(ctx, loc)
		require.NoError(t, err)
	})

	t.Run("inactive", func(t *testing.T) {
		const loc = "locAgency00000000012"
		b.sb.InstallLocation(testCompany, loc, "")
		b.sb.SetInactive(loc, true)
		require.Equal(t, tokens.ReasonLocationInactive, mintErr(t, loc).Reason)
	})

	t.Run("uninstall webhook, then a late install event, then a reinstall", func(t *testing.T) {
		const loc = "locAgency00000000013"
		b.sb.InstallLocation(testCompany, loc, "")
		tok, err := a.Token(ctx, loc)
		require.NoError(t, err)
		now := time.Now()
		ok, err := tokens.SetInstalled(ctx, rdb, loc, "", false, now)
		require.NoError(t, err)
		require.True(t, ok)
		mints := len(b.sb.Mints(loc))
		// The cached token is still handed out by this process, but a 401
		// finds the location uninstalled without a call.
		b.sb.UninstallLocation(loc)
		_, err = a.Refresh(ctx, loc, tok)
		var me *tokens.MintError
		require.ErrorAs(t, err, &me)
		require.Equal(t, tokens.ReasonNotInstalled, me.Reason)
		require.Equal(t, tokens.ReasonNotInstalled, mintErr(t, loc).Reason)
		// An INSTALL older than the UNINSTALL (delivered late) changes nothing.
		ok, err = tokens.SetInstalled(ctx, rdb, loc, "", true, now.Add(-time.Minute))
		require.NoError(t, err)
		require.False(t, ok)
		require.Equal(t, tokens.ReasonNotInstalled, mintErr(t, loc).Reason)
		require.Len(t, b.sb.Mints(loc), mints, "no call for an uninstalled location")
		// Installed again.
		b.sb.InstallLocation(testCompany, loc, "")
		_, err = tokens.SetInstalled(ctx, rdb, loc, "", true, now.Add(time.Second))
		require.NoError(t, err)
		_, err = a.Token(ctx, loc)
		require.NoError(t, err)
	})

	t.Run("an INSTALL forgets the stored token once; its redelivery does not", func(t *testing.T) {
		const loc = "locAgency00000000016"
		b.sb.InstallLocation(testCompany, loc, "")
		at := time.Now()
		ok, err := tokens.RecordAppEvent(ctx, rdb, loc, true, at)
		require.NoError(t, err)
		require.True(t, ok)
		require.NoError(t, b.newAgency(t).Install(ctx, loc))
		require.Len(t, b.sb.Mints(loc), 1)
		ok, err = tokens.RecordAppEvent(ctx, rdb, loc, true, at) // HighLevel delivers it again
		require.NoError(t, err)
		require.True(t, ok, "recorded (already)")
		require.NoError(t, b.newAgency(t).Install(ctx, loc)) // its task runs again
		require.Len(t, b.sb.Mints(loc), 1, "the redelivery kept the token")
		ok, err = tokens.RecordAppEvent(ctx, rdb, loc, true, at.Add(time.Second)) // a reinstall
		require.NoError(t, err)
		require.True(t, ok)
		require.NoError(t, b.newAgency(t).Install(ctx, loc))
		require.Len(t, b.sb.Mints(loc), 2, "a reinstall mints anew")
	})

	t.Run("GHL_TOKEN_KEY rotated: a stored token sealed with the old key is minted anew, not an error", func(t *testing.T) {
		sb := setupAgency(t, time.Hour, time.Hour)
		sb.setAgency(t)
		const loc = "locAgency00000000017"
		sb.sb.InstallLocation(testCompany, loc, "")
		_, err := sb.newAgency(t).Token(ctx, loc) // stored, sealed with testKey
		require.NoError(t, err)
		newKey := []byte("fedcba9876543210fedcba9876543210")
		rdb := redistest.ClientFor(t, sb.url)
		pairs, err := tokens.NewOAuth(tokens.OAuthConfig{Redis: rdb, TokenURL: sb.srv.URL + "/oauth/token", Company: true,
			ClientID: sandbox.ClientIDDefault, ClientSecret: sandbox.ClientSecretDefault, Key: newKey})
		require.NoError(t, err)
		// The operator loads the agency pair again under the new key.
		require.NoError(t, tokens.SetAgency(ctx, pairs, testCompany, "", "", sb.sb.AddAgency(testCompany), 0))
		rotated, err := tokens.NewAgency(tokens.AgencyConfig{Redis: rdb, BaseURL: sb.srv.URL, Pairs: pairs, Key: newKey})
		require.NoError(t, err)
		tok, err := rotated.Token(ctx, loc)
		require.NoError(t, err)
		require.True(t, sb.accepted(t, tok))
		require.Len(t, sb.sb.Mints(loc), 2, "minted again under the new key")
		again, err := rotated.Token(ctx, loc)
		require.NoError(t, err)
		require.Equal(t, tok, again)
	})

	t.Run("HighLevel fails: temporary, one call a minute", func(t *testing.T) {
		sb := setupAgency(t, time.Hour, time.Hour)
		sb.setAgency(t)
		const loc = "locAgency00000000014"
		sb.sb.InstallLocation(testCompany, loc, "")
		fa := sb.newAgency(t)
		_, err := fa.Token(ctx, loc) // the agency pair is refreshed before the faults begin
		require.NoError(t, err)
		const loc2 = "locAgency00000000015"
		sb.sb.InstallLocation(testCompany, loc2, "")
		sb.sb.SetFaults(sandbox.Faults{ErrorRate: 1})
		_, err = fa.Token(ctx, loc2)
		var me *tokens.MintError
		require.ErrorAs(t, err, &me)
		require.Equal(t, tokens.ReasonMintFailed, me.Reason)
		require.True(t, me.Temporary)
		require.Greater(t, me.RetryAfter, 50*time.Second)
		before := sb.sb.Stats().MintsRefused
		_, err = sb.newAgency(t).Token(ctx, loc2)
		require.ErrorAs(t, err, &me)
		require.True(t, me.Temporary)
		require.Equal(t, before, sb.sb.Stats().MintsRefused, "no retry storm")
	})

	t.Run("company rate limit: wait, nothing remembered", func(t *testing.T) {
		// A sliding window: three mints in a row straddling a fixed
		// window's edge would all be allowed.
		sb := setupAgency(t, time.Hour, time.Hour, func(c *sandbox.Config) { c.RateWindow = "sliding" })
		sb.setAgency(t)
		sb.sb.SetRateLimit("company:"+testCompany, 2) // the agency refresh is not counted; two mints are
		fa := sb.newAgency(t)
		for i := range 3 {
			loc := fmt.Sprintf("locAgency0000000002%d", i)
			sb.sb.InstallLocation(testCompany, loc, "")
			_, err := fa.Token(ctx, loc)
			if i < 2 {
				require.NoError(t, err)
				continue
			}
			var sn interface{ SnoozeFor() time.Duration }
			require.ErrorAs(t, err, &sn)
			require.Positive(t, sn.SnoozeFor())
			var me *tokens.MintError
			require.False(t, errors.As(err, &me), "a 429 is not a refusal")
		}
	})

	t.Run("the company's pacer is full: a wait, not a failure", func(t *testing.T) {
		sb := setupAgency(t, time.Hour, time.Hour)
		sb.setAgency(t)
		const loc = "locAgency00000000041"
		sb.sb.InstallLocation(testCompany, loc, "")
		p := &fullPacer{}
		fa := sb.newAgency(t, func(c *tokens.AgencyConfig) { c.Pacer = p })
		_, err := fa.Token(ctx, loc)
		var sn interface{ SnoozeFor() time.Duration }
		require.ErrorAs(t, err, &sn)
		require.Equal(t, 7*time.Second, sn.SnoozeFor())
		var me *tokens.MintError
		require.False(t, errors.As(err, &me), "pacing is not HighLevel failing")
		p.open.Store(true)
		_, err = fa.Token(ctx, loc)
		require.NoError(t, err, "nothing was remembered")
		require.Equal(t, int64(1), p.observed.Load(), "the answer's headers reach the pacer")
	})

	t.Run("a token endpoint blip during the agency's refresh is not a revoked agency", func(t *testing.T) {
		sb := setupAgency(t, time.Hour, time.Hour)
		sb.setAgency(t)
		const loc = "locAgency00000000051"
		sb.sb.InstallLocation(testCompany, loc, "")
		var blip atomic.Bool
		rdb := redistest.ClientFor(t, sb.url)
		pairs, err := tokens.NewOAuth(tokens.OAuthConfig{Redis: rdb, TokenURL: sb.srv.URL + "/oauth/token", Company: true,
			ClientID: sandbox.ClientIDDefault, ClientSecret: sandbox.ClientSecretDefault, Key: testKey,
			HTTP: &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
				if blip.Load() && r.URL.Path == "/oauth/token" {
					return &http.Response{StatusCode: 503, Body: http.NoBody, Header: http.Header{}, Request: r}, nil
				}
				return http.DefaultTransport.RoundTrip(r)
			})}})
		require.NoError(t, err)
		fa, err := tokens.NewAgency(tokens.AgencyConfig{Redis: rdb, BaseURL: sb.srv.URL, Pairs: pairs, Key: testKey})
		require.NoError(t, err)
		_, err = fa.Token(ctx, "locAgency00000000052") // refreshes the agency pair; not installed
		require.Error(t, err)
		refreshes := sb.sb.Stats().Refreshes
		sb.sb.RevokeAgency(testCompany) // the agency's access token gets 401 from now on
		blip.Store(true)                // ...and the refresh it calls for meets a 503
		_, err = fa.Token(ctx, loc)
		require.Error(t, err)
		var me *tokens.MintError
		require.False(t, errors.As(err, &me) && me.Reason == tokens.ReasonAgencyRevoked, "a 503 is not a revoked agency: %v", err)
		require.Equal(t, refreshes, sb.sb.Stats().Refreshes)
		require.Zero(t, sb.sb.Stats().InvalidGrants)
	})

	t.Run("agency revoked, then a new agency pair", func(t *testing.T) {
		sb := setupAgency(t, time.Hour, time.Hour)
		sb.setAgency(t)
		const loc = "locAgency00000000031"
		sb.sb.InstallLocation(testCompany, loc, "")
		fa := sb.newAgency(t)
		_, err := fa.Token(ctx, "locAgency00000000032") // not installed: refreshes the agency pair first
		require.Error(t, err)
		sb.sb.RevokeAgency(testCompany)
		_, err = fa.Token(ctx, loc)
		var me *tokens.MintError
		require.ErrorAs(t, err, &me)
		require.Equal(t, tokens.ReasonAgencyRevoked, me.Reason)
		require.Contains(t, me.Message, "invalid_grant", "the agency refresh's own answer")
		require.Contains(t, me.Error(), "enqueue tokens agency set")
		// Every other location gets the same answer, without a call.
		calls := sb.sb.Stats().MintsRefused
		const other = "locAgency00000000033"
		sb.sb.InstallLocation(testCompany, other, "")
		_, err = sb.newAgency(t).Token(ctx, other)
		require.ErrorAs(t, err, &me)
		require.Equal(t, tokens.ReasonAgencyRevoked, me.Reason)
		require.Equal(t, calls, sb.sb.Stats().MintsRefused, "a revoked agency is not asked again for each location")
		// The operator installs the app again at agency level and loads its
		// pair: the remembered failure no longer counts.
		sb.setAgency(t)
		_, err = fa.Token(ctx, loc)
		require.NoError(t, err)
	})
}

// TestInstalledListing pages 250 installs 100 at a time.
func TestInstalledListing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupAgency(t, time.Hour, time.Hour)
	a := b.newAgency(t)
	_, err := a.Installed(ctx, nil)
	require.ErrorContains(t, err, "enqueue tokens agency set")
	b.setAgency(t)
	for i := range 250 {
		b.sb.InstallLocation(testCompany, fmt.Sprintf("locListed%011d", i), fmt.Sprintf("Shop %d", i))
	}
	b.sb.UninstallLocation("locListed00000000007")
	var pages int
	got, err := a.Installed(ctx, func(n, total int) { pages++ })
	require.NoError(t, err)
	require.Len(t, got, 249)
	require.Equal(t, 3, pages)
	reg, err := tokens.Registry(ctx, redistest.ClientFor(t, b.url))
	require.NoError(t, err)
	require.Len(t, reg, 249)
	require.Equal(t, "Shop 3", reg["locListed00000000003"].Name)
	require.NotContains(t, reg, "locListed00000000007")
}

// TestChain: a location's explicit token wins, then its OAuth pair, then
// the agency; an explicit token is not refreshed.
func TestChain(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupAgency(t, time.Hour, time.Hour)
	b.setAgency(t)
	rdb := redistest.ClientFor(t, b.url)
	const explicit, paired, minted = "locChain000000000001", "locChain000000000002", "locChain000000000003"
	for _, l := range []string{explicit, paired, minted} {
		b.sb.InstallLocation(testCompany, l, "")
	}
	pairs := b.newPairs(t, rdb, false)
	require.NoError(t, pairs.Set(ctx, paired, "", b.sb.AddOAuthLocation(paired), 0))
	file := staticFor{explicit: "pit-explicit"}
	c := tokens.NewChain(file, pairs, b.newAgency(t))

	tok, err := c.Token(ctx, explicit)
	require.NoError(t, err)
	require.Equal(t, "pit-explicit", tok)
	_, err = c.Refresh(ctx, explicit, tok)
	require.ErrorIs(t, err, tokens.ErrNotRefreshable)

	tok, err = c.Token(ctx, paired)
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(tok, "at-"), "the location's pair")
	require.Empty(t, b.sb.Mints(paired))

	tok, err = c.Token(ctx, minted)
	require.NoError(t, err)
	require.Len(t, b.sb.Mints(minted), 1)
	// The chain remembers that the agency applies; a pair loaded for the
	// location takes over once it checks again.
	const late = "locChain000000000004"
	b.sb.InstallLocation(testCompany, late, "")
	tokens.SetChainRecheck(c, time.Hour) // no stall outlasts it; the recheck is made due below
	agencyTok, err := c.Token(ctx, late)
	require.NoError(t, err)
	require.NoError(t, pairs.Set(ctx, late, "", b.sb.AddOAuthLocation(late), 0))
	again, err := c.Token(ctx, late)
	require.NoError(t, err)
	require.Equal(t, agencyTok, again, "remembered: no Redis read for the pair")
	tokens.ExpireChainMemory(c, late)
	own, err := c.Token(ctx, late)
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(own, "at-"), "the location's own pair applies once the chain checks again")
	b.sb.RevokeAccess(tok)
	fresh, err := c.Refresh(ctx, minted, tok)
	require.NoError(t, err)
	require.NotEqual(t, tok, fresh)
	require.Len(t, b.sb.Mints(minted), 2)
}

// TestDeletedPairFallsThroughOn401: a location moved to the agency's app;
// its own pair was deleted (tokens delete) while a worker still held its
// access token, which HighLevel then refused. The 401's refresh found no
// pair and dead-lettered no_token, although the agency was set to mint
// for it ("the agency's token applies", tokens delete said); the refresh
// now goes on to the agency, and the stale token is not used again.
func TestDeletedPairFallsThroughOn401(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupAgency(t, time.Hour, time.Hour)
	b.setAgency(t)
	rdb := redistest.ClientFor(t, b.url)
	const loc = "locMovedToAgency0001"
	pairs := b.newPairs(t, rdb, false)
	require.NoError(t, pairs.Set(ctx, loc, "", b.sb.AddOAuthLocation(loc), 0))
	c := tokens.NewChain(staticFor{}, pairs, b.newAgency(t))
	own, err := c.Token(ctx, loc)
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(own, "at-"), "the location's pair")

	b.sb.InstallLocation(testCompany, loc, "")
	b.sb.RevokeAccess(own)
	_, err = tokens.DeletePair(ctx, rdb, loc)
	require.NoError(t, err)
	minted, err := c.Refresh(ctx, loc, own)
	require.NoError(t, err, "the agency applies once the pair is gone")
	require.NotEqual(t, own, minted)
	require.Len(t, b.sb.Mints(loc), 1)
	again, err := c.Token(ctx, loc)
	require.NoError(t, err)
	require.Equal(t, minted, again, "the deleted pair's token is not used again")
}

// staticFor is explicit tokens for some locations (as GHL_TOKENS_FILE).
type staticFor map[string]string

func (s staticFor) Token(_ context.Context, loc string) (string, error) {
	if t, ok := s[loc]; ok {
		return t, nil
	}
	return "", tokens.ErrNoToken
}

// fullPacer snoozes every call 7 s until open, and counts answers observed.
type fullPacer struct {
	open     atomic.Bool
	observed atomic.Int64
}

type snoozeErr struct{}

func (snoozeErr) Error() string            { return "paced" }
func (snoozeErr) SnoozeFor() time.Duration { return 7 * time.Second }

func (p *fullPacer) Admit(context.Context, string) error {
	if !p.open.Load() {
		return snoozeErr{}
	}
	return nil
}

func (p *fullPacer) Observe(context.Context, string, http.Header, int) { p.observed.Add(1) }

// TestRemintsBeforeExpiry: a minted token is replaced once it has less
// than RemintBefore (10 min of an hour's life) left, and not before: the
// margin TestMintRace cannot check (it checks no mint comes early). The
// stored expiry is moved instead of waiting, and each step asks a worker
// with an empty cache, as another process would.
func TestRemintsBeforeExpiry(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupAgency(t, time.Hour, time.Hour)
	b.setAgency(t)
	const loc = "locAgency00000000090"
	b.sb.InstallLocation(testCompany, loc, "")
	rdb := redistest.ClientFor(t, b.url)
	first, err := b.newAgency(t).Token(ctx, loc)
	require.NoError(t, err)
	require.Len(t, b.sb.Mints(loc), 1)
	for _, tt := range []struct {
		left  time.Duration
		mints int
	}{{11 * time.Minute, 1}, {9 * time.Minute, 2}} {
		require.NoError(t, rdb.HSet(ctx, tokens.MintKey(loc), "exp", time.Now().Add(tt.left).UnixMilli()).Err())
		tok, err := b.newAgency(t).Token(ctx, loc)
		require.NoError(t, err)
		require.Len(t, b.sb.Mints(loc), tt.mints, "%s left", tt.left)
		require.Equal(t, tt.mints == 1, tok == first, "%s left", tt.left)
	}
}

// TestRedirectedTokenEndpointIsMisrouted: a token endpoint that redirects
// (GHL_BASE_URL with http:// behind an https redirect, or a proxy) was
// followed: a 301 turned the POST into a GET, a 308 hid the misconfiguration
// and counted one call twice. It is read as misrouted now, as the message
// routes read a redirect, and the refresh token is not spent.
func TestRedirectedTokenEndpointIsMisrouted(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupAgency(t, time.Hour, time.Hour)
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, b.srv.URL+r.URL.Path, http.StatusPermanentRedirect)
	})
	moved := httptest.NewServer(mux)
	t.Cleanup(moved.Close)
	const own = "locOAuthMoved0000001"
	rt := b.sb.AddOAuthLocation(own)
	pairs := func(url string) *tokens.OAuth {
		o, err := tokens.NewOAuth(tokens.OAuthConfig{Redis: redistest.ClientFor(t, b.url), TokenURL: url + "/oauth/token",
			ClientID: sandbox.ClientIDDefault, ClientSecret: sandbox.ClientSecretDefault, Key: testKey})
		require.NoError(t, err)
		return o
	}
	require.NoError(t, pairs(b.srv.URL).Set(ctx, own, "", rt, 0))
	_, err := pairs(moved.URL).Token(ctx, own)
	var e *ghl.Error
	require.ErrorAs(t, err, &e)
	require.Equal(t, ghl.ReasonMisrouted, e.Reason)
	require.Zero(t, b.sb.Stats().Refreshes, "the redirect was not followed")
	// The right URL: the refresh token is still good.
	tok, err := pairs(b.srv.URL).Token(ctx, own)
	require.NoError(t, err)
	require.NotEmpty(t, tok)
}

// TestBaseURLTypoIsMisrouted: a typo in GHL_BASE_URL's path ("/api") met at
// the token endpoints is HighLevel refusing nothing: the answer is the
// misrouted error the message routes give (retried; /readyz and one log
// line name GHL_BASE_URL), no refresh token is spent, and no mint refusal
// is remembered. It dead-lettered every agency location mint_refused ("check
// the company id"), and an OAuth pair's refresh was a silent token_source
// retry for a day.
func TestBaseURLTypoIsMisrouted(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupAgency(t, time.Hour, time.Hour)
	b.setAgency(t)
	const loc = "locAgency00000000091"
	b.sb.InstallLocation(testCompany, loc, "Typo")
	typo := b.srv.URL + "/api"
	misrouted := func(t *testing.T, err error) {
		t.Helper()
		var e *ghl.Error
		require.ErrorAs(t, err, &e)
		require.Equal(t, ghl.ReasonMisrouted, e.Reason)
		require.Contains(t, err.Error(), "GHL_BASE_URL")
		require.Contains(t, e.Request, "/api/oauth/")
		var me *tokens.MintError
		require.False(t, errors.As(err, &me), "not a mint refusal")
	}

	// The agency pair's refresh meets the typo first.
	a := b.newAgency(t, func(c *tokens.AgencyConfig) {
		pairs, err := tokens.NewOAuth(tokens.OAuthConfig{Redis: c.Redis, TokenURL: typo + "/oauth/token", Company: true,
			ClientID: sandbox.ClientIDDefault, ClientSecret: sandbox.ClientSecretDefault, Key: testKey})
		require.NoError(t, err)
		c.BaseURL, c.Pairs = typo, pairs
	})
	_, err := a.Token(ctx, loc)
	misrouted(t, err)
	// With a fresh agency pair, the mint itself meets it.
	_, err = b.newAgency(t).Token(ctx, "locAgency00000000092") // not installed: refreshes the agency pair, then refused
	require.Error(t, err)
	_, err = b.newAgency(t, func(c *tokens.AgencyConfig) { c.BaseURL = typo }).Token(ctx, loc)
	misrouted(t, err)
	require.Zero(t, b.count(tokens.ReasonMintRefused))

	// Fixed: the location mints at once (nothing remembered), with the
	// agency's refresh token unspent by the typo.
	tok, err := b.newAgency(t).Token(ctx, loc)
	require.NoError(t, err)
	require.True(t, b.accepted(t, tok))

	// An OAuth location pair: the refresh meets the typo; the refresh token
	// stays good for the fixed URL.
	const own = "locOAuthTypo00000001"
	pairs := func(url string) *tokens.OAuth {
		o, err := tokens.NewOAuth(tokens.OAuthConfig{Redis: redistest.ClientFor(t, b.url), TokenURL: url + "/oauth/token",
			ClientID: sandbox.ClientIDDefault, ClientSecret: sandbox.ClientSecretDefault, Key: testKey})
		require.NoError(t, err)
		t.Cleanup(func() { _ = o.Close() })
		return o
	}
	bad := pairs(typo)
	require.NoError(t, bad.Set(ctx, own, "", b.sb.AddOAuthLocation(own), 0))
	_, err = bad.Token(ctx, own)
	misrouted(t, err)
	tok, err = pairs(b.srv.URL).Token(ctx, own)
	require.NoError(t, err)
	require.True(t, b.accepted(t, tok))
}

// TestMintedExpiryOfAForgottenToken: `tokens list` showed an expiry for a
// location whose minted token an UNINSTALL forgot (the record keeps its
// expiry field, not its token).
func TestMintedExpiryOfAForgottenToken(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupAgency(t, time.Hour, time.Hour)
	b.setAgency(t)
	const loc = "locAgency00000000093"
	b.sb.InstallLocation(testCompany, loc, "")
	_, err := b.newAgency(t).Token(ctx, loc)
	require.NoError(t, err)
	rdb := redistest.ClientFor(t, b.url)
	exps, err := tokens.MintedExpiry(ctx, rdb, []string{loc, "locAgency00000000094"})
	require.NoError(t, err)
	require.Len(t, exps, 1)
	require.WithinDuration(t, time.Now().Add(time.Hour), exps[loc], time.Minute)
	_, err = tokens.SetInstalled(ctx, rdb, loc, "", false, time.Now())
	require.NoError(t, err)
	exps, err = tokens.MintedExpiry(ctx, rdb, []string{loc})
	require.NoError(t, err)
	require.Empty(t, exps, "the token is forgotten: no expiry to show")
}
