package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/contract"
	"github.com/ghlcancel/ghlcancel/internal/deadletter"
	"github.com/ghlcancel/ghlcancel/internal/envconf"
	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/producer"
	"github.com/ghlcancel/ghlcancel/internal/promtest"
	"github.com/ghlcancel/ghlcancel/internal/ratelimit"
	"github.com/ghlcancel/ghlcancel/internal/redistest"
	"github.com/ghlcancel/ghlcancel/internal/sandbox"
	"github.com/ghlcancel/ghlcancel/internal/syncbuf"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
	"github.com/ghlcancel/ghlcancel/internal/tokens"
)

var redisServer *redistest.Server

func TestMain(m *testing.M) { redistest.Main(m, &redisServer) }

func envFunc(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// TestEndToEnd is the acceptance test of the core pipeline: 1,000 scheduled
// messages over 5 locations, 50 unknown ids, 30 messages in a location whose
// token the API rejects, 10% of calls failing with 5xx, a rate limit that
// trips: every scheduled message ends cancelled exactly once, unknown ids
// are not_cancellable, bad-token ones are dead letters with reason
// unauthorized, the metrics agree with the sandbox's own counts and
// nothing is left in the queues.
func TestEndToEnd(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	v, err := contract.New()
	require.NoError(t, err)
	sb := sandbox.New(sandbox.Config{
		Seed: 42, RateMax: 60, RateInterval: time.Second, RetryAfter: true,
		Faults: sandbox.Faults{ErrorRate: 0.10},
	})
	api := httptest.NewServer(v.Wrap(sb.Handler()))
	t.Cleanup(api.Close)

	tokenFile := map[string]string{}
	var items []producer.Item
	var scheduled []string
	for i := range 5 {
		loc := fmt.Sprintf("location%011d", i)
		tok := fmt.Sprintf("pit-secret-%d-%s", i, strings.Repeat("x", 20))
		sb.AddLocation(loc, tok)
		tokenFile[loc] = tok
		for j, id := range sb.ScheduleN(loc, 200, i%2 == 1) {
			kind := ghl.KindMessage
			if i%2 == 1 {
				kind = ghl.KindEmail
			}
			scheduled = append(scheduled, id)
			items = append(items, producer.Item{Kind: kind, MessageID: id, LocationID: loc, CampaignID: "spring-sale"})
			if j < 10 {
				unknown := sandbox.NewID()
				items = append(items, producer.Item{Kind: ghl.KindMessage, MessageID: unknown, LocationID: loc, CampaignID: "spring-sale"})
			}
		}
	}
	const badLoc = "locationBadToken0001"
	sb.AddLocation(badLoc, "the-token-highlevel-knows")
	tokenFile[badLoc] = "a-revoked-token-we-still-have"
	for _, id := range sb.ScheduleN(badLoc, 30, false) {
		items = append(items, producer.Item{Kind: ghl.KindMessage, MessageID: id, LocationID: badLoc, CampaignID: "spring-sale"})
	}
	require.Len(t, items, 1080)

	dir := t.TempDir()
	tf := filepath.Join(dir, "tokens.json")
	b, err := json.Marshal(tokenFile)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(tf, b, 0o600))

	redisURL := redisServer.URL(t)
	stdout, stderr := &syncbuf.Buffer{}, &syncbuf.Buffer{}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- run(runCtx, []string{"-metrics-addr", "127.0.0.1:0", "-log-format", "json"}, envFunc(map[string]string{
			EnvRedisURL: redisURL, EnvBaseURL: api.URL, EnvTokensFile: tf, EnvConcurrency: "50",
		}), stdout, stderr)
	}()
	addr := waitForAddr(t, stdout, done)

	// Enqueue through the producer the enqueue command uses.
	prod := producer.New(redistest.ClientFor(t, redisURL), producer.Config{Queue: tasks.QueueBulk})
	i := 0
	counts := map[producer.Status]int{}
	prod.EnqueueAll(ctx, func() (producer.Item, bool) {
		if i == len(items) {
			return producer.Item{}, false
		}
		i++
		return items[i-1], true
	}, func(_ producer.Item, r producer.Result) { counts[r.Status]++ })
	require.Equal(t, map[producer.Status]int{producer.Enqueued: 1080}, counts)

	// A wait for correctness, not a speed goal: the drain takes about 25 s
	// alone, but a task drawing a 5xx five times running waits up to 62 s of
	// backoff (2 s base, doubling), and a busy CI machine stretches the rest
	// (one run failed at 90 s beside two other race-enabled packages).
	var s promtest.Scrape
	require.Eventually(t, func() bool {
		s, err = promtest.Get("http://" + addr + "/metrics")
		if err != nil {
			return false
		}
		live := 0.0
		for _, st := range []string{"pending", "active", "scheduled", "retry"} {
			live += s.Sum("ghlcancel_queue_tasks", "state", st)
		}
		return live == 0 && s.Sum("ghlcancel_tasks_processed_total", "outcome", "cancelled")+
			s.Sum("ghlcancel_tasks_processed_total", "outcome", "not_found")+
			s.Sum("ghlcancel_tasks_processed_total", "outcome", "dead_lettered") == 1080
	}, 180*time.Second, 200*time.Millisecond, "queues did not drain; worker log:\n%s", tail(stderr.String(), 2000))

	// The sandbox's truth.
	for _, id := range scheduled {
		st, cancels, _ := sb.MessageStatus(id)
		require.Equal(t, sandbox.StatusCancelled, st, id)
		require.Equal(t, 1, cancels, id)
	}
	counted := sb.Count()
	require.Equal(t, 1000, counted[sandbox.StatusCancelled])
	require.Equal(t, 30, counted[sandbox.StatusScheduled])
	stats := sb.Stats()

	// Metrics equal those counts.
	require.Equal(t, 1000.0, s.Sum("ghlcancel_tasks_processed_total", "outcome", "cancelled"))
	// Unknown ids: the cancel found nothing, reading them back found nothing.
	require.Equal(t, 50.0, s.Sum("ghlcancel_tasks_processed_total", "outcome", "not_found"))
	require.Zero(t, s.Sum("ghlcancel_tasks_processed_total", "outcome", "not_cancellable"))
	require.Equal(t, 30.0, s.Sum("ghlcancel_tasks_processed_total", "outcome", "dead_lettered"))
	require.Equal(t, 30.0, s.Sum("ghlcancel_dead_letters_total", "reason", "unauthorized"))
	require.Equal(t, 30.0, s.Sum("ghlcancel_dead_letters_total"))
	require.Equal(t, float64(stats.Faulted5xx), s.Sum("ghlcancel_retries_total", "reason", "server_error"))
	require.Equal(t, float64(stats.Requests), s.Sum("ghlcancel_api_requests_total"))
	require.Equal(t, float64(stats.RateLimited), s.Sum("ghlcancel_api_requests_total", "code", "429"))
	require.Equal(t, float64(stats.Requests), s.Sum("ghlcancel_api_request_duration_seconds"))
	require.Equal(t, 30.0, s.Sum("ghlcancel_queue_tasks", "state", "archived"))
	require.Equal(t, 0.0, s.Sum("ghlcancel_tasks_in_flight"))
	require.Equal(t, 1.0, s.Sum("ghlcancel_redis_up"))
	require.Positive(t, stats.Faulted5xx)
	t.Logf("sandbox: %+v", stats)

	// Dead letters are durable records with their reason.
	store := deadletter.New(redistest.ClientFor(t, redisURL))
	n := 0
	require.NoError(t, store.Scan(ctx, deadletter.Filter{}, func(r deadletter.Record) error {
		n++
		require.Equal(t, "unauthorized", r.Reason)
		require.Equal(t, badLoc, r.LocationID)
		require.Equal(t, 401, r.HTTPStatus)
		return nil
	}))
	require.Equal(t, 30, n)

	// No token in any log line.
	logs := stderr.String()
	for _, tok := range tokenFile {
		require.NotContains(t, logs, tok)
	}
	require.Empty(t, v.Problems())

	// SIGTERM: drains and exits 0.
	stop()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(40 * time.Second):
		t.Fatal("worker did not stop")
	}
}

var addrRe = regexp.MustCompile(`on http://([0-9.:]+)`)

func waitForAddr(t *testing.T, stdout *syncbuf.Buffer, done chan error) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if m := addrRe.FindStringSubmatch(stdout.String()); m != nil {
			return m[1]
		}
		select {
		case err := <-done:
			t.Fatalf("worker exited early: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatal("worker did not report its metrics address")
	return ""
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func TestRunConfigErrors(t *testing.T) {
	t.Parallel()
	tf := filepath.Join(t.TempDir(), "tokens.json")
	require.NoError(t, os.WriteFile(tf, []byte(`{"loc": "secret-in-file"`), 0o600))
	emptyTF := filepath.Join(t.TempDir(), "empty.json")
	require.NoError(t, os.WriteFile(emptyTF, []byte(`{}`), 0o600))
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"no token", nil, map[string]string{}, "no token: set GHL_TOKEN"},
		{"both token sources", nil, map[string]string{EnvToken: "t", EnvTokensFile: tf}, "GHL_TOKEN is one token for every location: unset it"},
		{"partial oauth", nil, map[string]string{EnvClientID: "id"}, "OAuth needs all of"},
		{"bad token key", nil, map[string]string{EnvClientID: "id", EnvClientSecret: "s", EnvTokenKey: "short"}, "GHL_TOKEN_KEY"},
		{"broken tokens file", nil, map[string]string{EnvTokensFile: tf}, "not a JSON object"},
		{"missing tokens file", nil, map[string]string{EnvTokensFile: tf + ".nope"}, "no such file"},
		{"bad redis url", nil, map[string]string{EnvToken: "t", EnvRedisURL: "http://x"}, "REDIS_URL"},
		// Another tool's variable: the default Redis would be used silently.
		{"misnamed redis variable", nil, map[string]string{EnvToken: "t", "REDIS_ADDR": "10.0.0.5:6379"}, "REDIS_ADDR is set, but ghlcancel reads REDIS_URL only: set REDIS_URL=redis://"},
		{"bad base url", []string{"-metrics-addr", ""}, map[string]string{EnvToken: "t", EnvBaseURL: "ftp://x"}, `GHL_BASE_URL: ghl: bad base URL "ftp://x": want an absolute http(s) URL`},
		{"base url without scheme", []string{"-metrics-addr", ""}, map[string]string{EnvToken: "t", EnvBaseURL: "services.leadconnectorhq.com"}, "GHL_BASE_URL: "},
		{"bad log level", []string{"-log-level", "loud"}, map[string]string{EnvToken: "t"}, `LOG_LEVEL (or -log-level) "loud"`},
		{"metrics address without host", nil, map[string]string{EnvToken: "t", EnvRedisURL: "redis://127.0.0.1:1/0", EnvMetricsAddr: "9464"}, "METRICS_ADDR 9464: "},
		{"stray argument", []string{"extra"}, map[string]string{EnvToken: "t"}, "unexpected arguments"},
		{"bad rate limit", nil, map[string]string{EnvToken: "t", EnvRateLimit: "fast"}, "RATE_LIMIT"},
		{"bad margin", nil, map[string]string{EnvToken: "t", EnvRateMargin: "1.5"}, "RATE_LIMIT_MARGIN"},
		{"bad override", nil, map[string]string{EnvToken: "t", EnvRateOverrides: "locA=10"}, "RATE_LIMIT_OVERRIDES"},
		{"override twice", nil, map[string]string{EnvToken: "t", EnvRateOverrides: "locA=10/10s, locA=20/10s"}, "RATE_LIMIT_OVERRIDES: location locA is given twice"},
		{"override for no location", nil, map[string]string{EnvToken: "t", EnvRateOverrides: "=50/10s"}, `RATE_LIMIT_OVERRIDES: "=50/10s": want location=N/period`},
		{"override location not an id", nil, map[string]string{EnvToken: "t", EnvRateOverrides: "loc A=50/10s"}, `RATE_LIMIT_OVERRIDES: location "loc A"`},
		{"bad concurrency", nil, map[string]string{EnvToken: "t", EnvConcurrency: "lots"}, `WORKER_CONCURRENCY="lots"`},
		{"bad duration", nil, map[string]string{EnvToken: "t", EnvShutdownTimeout: "30"}, `SHUTDOWN_TIMEOUT="30"`},
		{"bad breaker", nil, map[string]string{EnvToken: "t", EnvBreaker: "maybe"}, "CIRCUIT_BREAKER"},
		{"bad urgent reserve", nil, map[string]string{EnvToken: "t", EnvUrgentReserve: "-1"}, `RATE_LIMIT_URGENT_RESERVE=-1: want 0 to half`},
		{"urgent reserve too big", nil, map[string]string{EnvToken: "t", EnvUrgentReserve: "60"}, `RATE_LIMIT_URGENT_RESERVE=60: want 0 to half of RATE_LIMIT's count`},
		{"bad lanes", nil, map[string]string{EnvToken: "t", EnvLanes: "together"}, `WORKER_LANES="together": want separate or shared`},
		{"strict priority yes", nil, map[string]string{EnvToken: "t", EnvStrictPriority: "yes"}, `STRICT_PRIORITY="yes": want true or false`},
		{"negative timeout", nil, map[string]string{EnvToken: "t", EnvAPITimeout: "-1s"}, `GHL_TIMEOUT=-1s: want a positive duration`},
		{"zero shutdown", nil, map[string]string{EnvToken: "t", EnvShutdownTimeout: "0s"}, `SHUTDOWN_TIMEOUT=0s: want a positive duration`},
		{"zero concurrency", nil, map[string]string{EnvToken: "t", EnvConcurrency: "0"}, `WORKER_CONCURRENCY=0: want at least 1`},
		{"huge concurrency", nil, map[string]string{EnvToken: "t", EnvConcurrency: "99999999"}, `WORKER_CONCURRENCY=99999999: want at most 5000`},
		// A token with a character no header carries stops the worker here
		// (it used to be "network error", retried for a day), never quoted.
		{"token with a space inside", nil, map[string]string{EnvToken: "secret-in-file more"}, "GHL_TOKEN: the token has a space, control or non-ASCII character at byte 15 of 19"},
		{"tokens file holds none", nil, map[string]string{EnvTokensFile: emptyTF}, "holds no token"},
		{"negative daily reserve", nil, map[string]string{EnvToken: "t", EnvDailyReserve: "-5"}, `DAILY_RESERVE=-5: want 0 or more`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := run(context.Background(), tt.args, envFunc(tt.env), &bytes.Buffer{}, &bytes.Buffer{})
			require.ErrorContains(t, err, tt.want)
			require.NotContains(t, err.Error(), "secret-in-file")
		})
	}
}

// TestRateConfigExplicitZeros: DAILY_RESERVE=0 and RATE_LIMIT_MARGIN=0 mean
// none, not the default their zero values stand for in the limiter's Config;
// STRICT_PRIORITY takes 1 and TRUE as well as true.
func TestRateConfigExplicitZeros(t *testing.T) {
	t.Parallel()
	cfg, off, err := rateConfig("100/10s", 0, "", time.Second, 0)
	require.NoError(t, err)
	require.False(t, off)
	require.Equal(t, ratelimit.DailyReserveNone, cfg.DailyReserve)
	require.Positive(t, cfg.Margin)
	require.Less(t, cfg.Margin, 1e-6)
	cfg, _, err = rateConfig("100/10s", 0.02, "", time.Second, 250)
	require.NoError(t, err)
	require.Equal(t, 250, cfg.DailyReserve)
	for _, v := range []string{"1", "TRUE", "true", "True"} {
		require.True(t, envconf.New(func(string) string { return v }).Bool(EnvStrictPriority, false), v)
	}
}

// TestRedisURLMistakesStopTheWorker: an answer from Redis that no retry
// can change (a wrong or missing password, a database the server does not
// have, a port that does not speak Redis) stops
// the worker at start with what to fix; it used to log "will keep trying"
// and wait for ever, /readyz saying only "not reachable".
func TestRedisURLMistakesStopTheWorker(t *testing.T) {
	t.Parallel()
	srv, err := redistest.Start()
	require.NoError(t, err)
	t.Cleanup(srv.Stop)
	require.NoError(t, redistest.ClientFor(t, "redis://"+srv.Addr+"/0").ConfigSet(context.Background(), "requirepass", "right-pw").Err())
	http := httptest.NewServer(nil)
	t.Cleanup(http.Close)
	for _, tt := range []struct{ name, url, want string }{
		{"no password", "redis://" + srv.Addr + "/0", "the password in REDIS_URL is wrong or missing"},
		{"wrong password", "redis://:wrong-pw@" + srv.Addr + "/0", "the password in REDIS_URL is wrong or missing"},
		{"no such database", "redis://:right-pw@" + srv.Addr + "/5000", "the database number in REDIS_URL is beyond"},
		// rediss:// against a plain Redis is not here: the TLS handshake
		// waits for an answer the server never sends, a timeout like an
		// unreachable server's.
		{"not a Redis", "redis://" + strings.TrimPrefix(http.URL, "http://") + "/0", "does not speak Redis"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			err := run(ctx, []string{"-metrics-addr", ""}, envFunc(map[string]string{EnvToken: "t", EnvRedisURL: tt.url}), &bytes.Buffer{}, &bytes.Buffer{})
			require.ErrorContains(t, err, tt.want)
			require.ErrorContains(t, err, "REDIS_URL: Redis at ")
			require.NotContains(t, err.Error(), "right-pw")
			require.NotContains(t, err.Error(), "wrong-pw")
		})
	}
}

// TestMetricsAddrOff: METRICS_ADDR=off runs the worker with no listener
// (an empty variable reads as unset, which used to leave :9464 served on
// every interface although the README said empty disables); a real
// address is served and said on stdout.
func TestMetricsAddrOff(t *testing.T) {
	t.Parallel()
	redisURL := redisServer.URL(t)
	for _, tt := range []struct{ addr, want string }{{"off", ""}, {"OFF", ""}, {"127.0.0.1:0", "serving /metrics"}} {
		ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
		var out bytes.Buffer
		err := run(ctx, nil, envFunc(map[string]string{EnvToken: "t", EnvRedisURL: redisURL, EnvMetricsAddr: tt.addr}), &out, &bytes.Buffer{})
		cancel()
		require.NoError(t, err, tt.addr)
		if tt.want == "" {
			require.NotContains(t, out.String(), "serving", tt.addr)
		} else {
			require.Contains(t, out.String(), tt.want, tt.addr)
		}
	}
}

// TestStoredPairsNeedOAuthSettings: a worker started without the OAuth
// settings the others have (only GHL_TOKENS_FILE, or GHL_TOKEN) served
// every queue and dead-lettered no_token the cancels of locations whose
// token is a pair in Redis (an audit: 28 of 60, until replayed). It now
// refuses to start, naming what is stored and the settings.
func TestStoredPairsNeedOAuthSettings(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	file := filepath.Join(t.TempDir(), "tokens.json")
	require.NoError(t, os.WriteFile(file, []byte(`{"locFile000000000001":"tok-file"}`), 0o600))
	for _, tt := range []struct {
		name  string
		store func(rdb *redis.Client)
		want  string
	}{
		{"a location's pair", func(rdb *redis.Client) {
			require.NoError(t, rdb.HSet(ctx, "ghlcancel:oauth:{locPair000000000001}", "gen", 1, "ct", "sealed").Err())
		}, "location locPair000000000001's pair"},
		{"the agency's pair", func(rdb *redis.Client) {
			require.NoError(t, rdb.HSet(ctx, "ghlcancel:agency", "company", "companyStored0000001", "epoch", 1).Err())
		}, "the agency's pair (company companyStored0000001)"},
		{"a deleted pair's marker only", func(rdb *redis.Client) {
			require.NoError(t, rdb.HSet(ctx, "ghlcancel:oauth:{locGone000000000001}", "gen", 3).Err())
		}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			url := redisServer.URL(t)
			tt.store(redistest.ClientFor(t, url))
			for _, env := range []map[string]string{{EnvTokensFile: file}, {EnvToken: "one-token"}} {
				env[EnvRedisURL] = url
				rctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
				err := run(rctx, []string{"-metrics-addr", ""}, envFunc(env), &bytes.Buffer{}, &bytes.Buffer{})
				cancel()
				if tt.want == "" {
					require.NoError(t, err, "nothing stored an OAuth worker needs")
					continue
				}
				require.ErrorContains(t, err, tt.want)
				require.ErrorContains(t, err, "GHL_CLIENT_ID, GHL_CLIENT_SECRET and GHL_TOKEN_KEY are not set")
			}
		})
	}
}

// TestWrongTokenKeyIsRefused: a worker whose GHL_TOKEN_KEY opens none of
// the stored pairs started without a word and dead-lettered their cancels
// token_key (fleet audit). It is refused; a key that opens some (a
// rotation half done) starts, with a warning.
func TestWrongTokenKeyIsRefused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := redisServer.URL(t)
	rdb := redistest.ClientFor(t, url)
	k1, k2 := strings.Repeat("1", 64), strings.Repeat("2", 64)
	seal := func(key, loc string) {
		b, err := tokens.ParseKey(key)
		require.NoError(t, err)
		o, err := tokens.NewOAuth(tokens.OAuthConfig{Redis: rdb, Key: b})
		require.NoError(t, err)
		require.NoError(t, o.Set(ctx, loc, "access-"+loc, "refresh-"+loc, time.Hour))
	}
	seal(k1, "locKey00000000000001")
	start := func(key string) (string, error) {
		var stderr bytes.Buffer
		rctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
		defer cancel()
		err := run(rctx, []string{"-metrics-addr", ""}, envFunc(map[string]string{EnvRedisURL: url,
			EnvClientID: "id", EnvClientSecret: "secret", EnvTokenKey: key}), &bytes.Buffer{}, &stderr)
		return stderr.String(), err
	}
	_, err := start(k2)
	require.ErrorContains(t, err, "GHL_TOKEN_KEY does not decrypt the token pairs stored in Redis (location locKey00000000000001's pair and 0 other(s) checked)")
	_, err = start(k1)
	require.NoError(t, err, "the key they were stored with")
	seal(k2, "locKey00000000000002")
	logs, err := start(k1)
	require.NoError(t, err, "some open: a rotation half done")
	require.Contains(t, logs, "some stored token pairs do not decrypt")
	require.Contains(t, logs, "first=\"location locKey00000000000002's pair\"")
}
