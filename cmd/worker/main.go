// Command worker runs cancel tasks from Redis against the HighLevel API and
// serves /metrics, /healthz and /readyz. Configuration: flags, each
// defaulting to an environment variable (see -h and the README).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ghlcancel/ghlcancel/internal/campaign"
	"github.com/ghlcancel/ghlcancel/internal/envconf"
	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/ledger"
	"github.com/ghlcancel/ghlcancel/internal/logging"
	"github.com/ghlcancel/ghlcancel/internal/ratelimit"
	"github.com/ghlcancel/ghlcancel/internal/redisconn"
	"github.com/ghlcancel/ghlcancel/internal/tokens"
	"github.com/ghlcancel/ghlcancel/internal/worker"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return // -h: the usage was printed
		}
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(1)
	}
}

// Environment variables read by the worker.
const (
	EnvRedisURL        = "REDIS_URL"
	EnvBaseURL         = "GHL_BASE_URL"
	EnvAPIVersion      = "GHL_API_VERSION"
	EnvAPITimeout      = "GHL_TIMEOUT"
	EnvToken           = "GHL_TOKEN"
	EnvTokensFile      = "GHL_TOKENS_FILE"
	EnvConcurrency     = "WORKER_CONCURRENCY"
	EnvShutdownTimeout = "SHUTDOWN_TIMEOUT"
	EnvMetricsAddr     = "METRICS_ADDR"
	EnvStrictPriority  = "STRICT_PRIORITY"
	EnvLanes           = "WORKER_LANES"
	EnvRateLimit       = "RATE_LIMIT"
	EnvRateMargin      = "RATE_LIMIT_MARGIN"
	EnvRateOverrides   = "RATE_LIMIT_OVERRIDES"
	EnvRateMaxWait     = "RATE_LIMIT_MAX_WAIT"
	EnvDailyReserve    = "DAILY_RESERVE"
	EnvUrgentReserve   = "RATE_LIMIT_URGENT_RESERVE"
	EnvClientID        = "GHL_CLIENT_ID"
	EnvClientSecret    = "GHL_CLIENT_SECRET"
	EnvTokenKey        = "GHL_TOKEN_KEY"
	EnvRetention       = "CAMPAIGN_RETENTION"
	EnvBreaker         = "CIRCUIT_BREAKER"
	EnvVerify          = "VERIFY"
	EnvDeadRetention   = "DEAD_LETTER_RETENTION"
)

// RedisURLDefault is used when REDIS_URL is unset.
const RedisURLDefault = "redis://127.0.0.1:6379/0"

// MetricsAddrDefault is where /metrics, /healthz and /readyz listen.
const MetricsAddrDefault = ":9464"

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	ep := envconf.New(getenv)
	redisURL := fs.String("redis-url", ep.String(EnvRedisURL, RedisURLDefault), "Redis URL, redis://[:password@]host:port/db (env "+EnvRedisURL+")")
	baseURL := fs.String("base-url", ep.String(EnvBaseURL, ghl.BaseURLDefault), "HighLevel API base URL (env "+EnvBaseURL+")")
	version := fs.String("api-version", ep.String(EnvAPIVersion, ghl.VersionDefault), "Version header (env "+EnvAPIVersion+")")
	apiTimeout := fs.Duration("api-timeout", ep.Duration(EnvAPITimeout, ghl.TimeoutDefault), "timeout of one API call (env "+EnvAPITimeout+")")
	tokensFile := fs.String("tokens-file", getenv(EnvTokensFile), "JSON file {\"locationId\": \"token\"}, reloaded on change (env "+EnvTokensFile+"); or set "+EnvToken)
	concurrency := fs.Int("concurrency", ep.Int(EnvConcurrency, worker.ConcurrencyDefault), "tasks processed at once (env "+EnvConcurrency+")")
	shutdown := fs.Duration("shutdown-timeout", ep.Duration(EnvShutdownTimeout, worker.ShutdownTimeoutDefault), "time in-flight tasks get on SIGTERM (env "+EnvShutdownTimeout+")")
	metricsAddr := fs.String("metrics-addr", ep.String(EnvMetricsAddr, MetricsAddrDefault), "listen address for /metrics, /healthz, /readyz; off (or an empty flag) disables (env "+EnvMetricsAddr+")")
	lanes := fs.String("lanes", ep.String(EnvLanes, "separate"), "separate: one fetch loop per lane (bulk WORKER_CONCURRENCY slots, default half, urgent a quarter); shared: one loop, lanes weighted 6:3:1 (env "+EnvLanes+")")
	strict := fs.Bool("strict-priority", ep.Bool(EnvStrictPriority, false), "serve bulk only when urgent and default are empty (env "+EnvStrictPriority+")")
	rateLimit := fs.String("rate-limit", ep.String(EnvRateLimit, "100/10s"), "default per-location limit N/period, or off (env "+EnvRateLimit+")")
	rateMargin := fs.Float64("rate-limit-margin", ep.Float(EnvRateMargin, ratelimit.MarginDefault), "share the pacing window is widened by, for clock and network jitter (env "+EnvRateMargin+")")
	rateOverrides := fs.String("rate-limit-overrides", getenv(EnvRateOverrides), "per-location limits, loc=N/period,... (env "+EnvRateOverrides+")")
	rateMaxWait := fs.Duration("rate-limit-max-wait", ep.Duration(EnvRateMaxWait, ratelimit.MaxWaitDefault), "longest wait for a slot inside the handler; longer ones snooze the task (env "+EnvRateMaxWait+")")
	urgentReserve := fs.Int("rate-limit-urgent-reserve", ep.Int(EnvUrgentReserve, 0), "calls of each window a location with a backlog keeps for urgent cancels; 0 gives bulk the whole allowance (env "+EnvUrgentReserve+")")
	dailyReserve := fs.Int("daily-reserve", ep.Int(EnvDailyReserve, ratelimit.DailyReserveDefault), "park a location when its daily remaining falls to this; 0 parks only when it is spent (env "+EnvDailyReserve+")")
	retention := fs.Duration("campaign-retention", ep.Duration(EnvRetention, campaign.RetentionDefault), "how long campaign counters and reports are kept after the last update (env "+EnvRetention+")")
	breakerMode := fs.String("circuit-breaker", ep.String(EnvBreaker, "on"), "on: pause calls while HighLevel answers mostly 5xx; off (env "+EnvBreaker+")")
	verify := fs.String("verify", ep.String(EnvVerify, "on"), "on: read a message back when its cancel finds nothing, to record already_sent, not_found or (read back failed) not_cancellable; off: record not_cancellable (env "+EnvVerify+")")
	deadRetention := fs.Duration("dead-letter-retention", ep.Duration(EnvDeadRetention, ledger.DeadRetentionDefault), "how long dead letters are kept (env "+EnvDeadRetention+")")
	logFlags := logging.Flags(fs, getenv)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := redisconn.MisnamedEnv(getenv, *redisURL != RedisURLDefault); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if err := ep.Err(); err != nil {
		return err
	}
	if *lanes != "separate" && *lanes != "shared" {
		return fmt.Errorf("%s=%q: want separate or shared", EnvLanes, *lanes)
	}
	for _, o := range []struct{ env, v string }{{EnvBreaker, *breakerMode}, {EnvVerify, *verify}} {
		if o.v != "on" && o.v != "off" {
			return fmt.Errorf("%s=%q: want on or off", o.env, o.v)
		}
	}
	if *deadRetention <= 0 || *retention <= 0 {
		return fmt.Errorf("%s and %s must be positive durations", EnvRetention, EnvDeadRetention)
	}
	// A zero or negative value here used to pass through, or be taken as
	// "the default", silently.
	for _, d := range []struct {
		env string
		v   time.Duration
	}{{EnvAPITimeout, *apiTimeout}, {EnvShutdownTimeout, *shutdown}, {EnvRateMaxWait, *rateMaxWait}} {
		if d.v <= 0 {
			return fmt.Errorf("%s=%s: want a positive duration", d.env, d.v)
		}
	}
	if *concurrency < 1 {
		return fmt.Errorf("%s=%d: want at least 1", EnvConcurrency, *concurrency)
	}
	if *concurrency > ConcurrencyMax {
		// Each slot holds Redis connections (7/4 per slot with every lane):
		// past this a worker exhausts Redis's default 10,000 clients or
		// memory instead of running. Run more worker processes.
		return fmt.Errorf("%s=%d: want at most %d (run more worker processes instead)", EnvConcurrency, *concurrency, ConcurrencyMax)
	}
	if *dailyReserve < 0 {
		return fmt.Errorf("%s=%d: want 0 or more (0 parks a location only when its daily budget is spent)", EnvDailyReserve, *dailyReserve)
	}
	log, err := logFlags.Logger(stderr)
	if err != nil {
		return err
	}

	rl, noPacing, err := rateConfig(*rateLimit, *rateMargin, *rateOverrides, *rateMaxWait, *dailyReserve)
	if err != nil {
		return err
	}
	if *urgentReserve < 0 || (!noPacing && *urgentReserve*2 > rl.Default.N) {
		return fmt.Errorf("%s=%d: want 0 to half of %s's count", EnvUrgentReserve, *urgentReserve, EnvRateLimit)
	}
	rl.UrgentReserve = *urgentReserve
	for loc, l := range rl.Overrides {
		// Said once at start: an override for a mistyped location changes nothing.
		log.Info("rate limit override", "location_id", loc, "limit", fmt.Sprintf("%d/%s", l.N, l.Period))
	}
	src, oauth, err := tokenSource(getenv, *tokensFile, *baseURL, log)
	if err != nil {
		return err
	}
	rdb, redisAddr, err := redisconn.Open(*redisURL, *concurrency*7/4+30) // every lane's slots, and asynq's own
	if err != nil {
		return fmt.Errorf("%s: %w", EnvRedisURL, err)
	}
	defer rdb.Close()

	w, err := worker.New(worker.Config{
		Redis:               rdb,
		GHL:                 ghl.Config{BaseURL: *baseURL, Version: *version, Timeout: *apiTimeout},
		Tokens:              src,
		OAuth:               oauth,
		Concurrency:         *concurrency,
		ShutdownTimeout:     *shutdown,
		StrictPriority:      *strict,
		SharedLanes:         *lanes == "shared",
		RateLimit:           rl,
		NoPacing:            noPacing,
		NoBreaker:           *breakerMode == "off",
		NoVerify:            *verify == "off",
		CampaignRetention:   *retention,
		DeadLetterRetention: *deadRetention,
		Logger:              log,
	})
	if errors.Is(err, ghl.ErrBaseURL) {
		return fmt.Errorf("%s: %w", EnvBaseURL, err)
	}
	if err != nil {
		return err
	}
	pingCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err = rdb.Ping(pingCtx).Err()
	cancel()
	if hint, bad := redisconn.Explain(ctx, *redisURL, err); bad {
		// No retry changes this answer: stop now, not wait for ever.
		return fmt.Errorf("%s: Redis at %s refused the worker: %s (%w)", EnvRedisURL, redisAddr, hint, err)
	}
	if err != nil {
		// Not fatal: asynq reconnects by itself; /readyz says not ready meanwhile.
		log.Warn("redis is not reachable yet; will keep trying", "addr", redisAddr, "error", err)
	} else {
		checkRedisConfig(ctx, rdb, log)
		if oauth == nil {
			// A worker started without the OAuth settings the others have
			// dead-letters no_token (or, with GHL_TOKEN, unauthorized) the
			// cancels of every location whose token is a stored pair.
			if what, err := tokens.AnyStored(ctx, rdb); err == nil && what != "" {
				return fmt.Errorf("token pairs only OAuth can use are stored in Redis (%s; `enqueue tokens list` shows them all), but %s, %s and %s are not set: "+
					"this worker would dead-letter those locations' cancels; set them as the other workers have them (or remove location pairs no longer used: `enqueue tokens delete --location L`)",
					what, EnvClientID, EnvClientSecret, EnvTokenKey)
			}
		} else if opened, wrong, first, err := tokens.KeyCheck(ctx, rdb, oauth.Key); err != nil {
			log.Warn("could not check that GHL_TOKEN_KEY opens the stored token pairs", "error", err)
		} else if wrong > 0 {
			// A worker whose key opens no stored pair dead-letters every
			// stored location's cancels token_key while the others heal
			// some of them (the fleet audit saw 431 retries and 2 dead
			// letters, with no word at start): refused. Some of each is a
			// key rotation half done: said, not refused.
			if opened == 0 {
				return fmt.Errorf("%s does not decrypt the token pairs stored in Redis (%s and %d other(s) checked): "+
					"`enqueue tokens set` and the other workers used another key; set the same %s on every worker", EnvTokenKey, first, wrong-1, EnvTokenKey)
			}
			log.Warn("some stored token pairs do not decrypt with this worker's GHL_TOKEN_KEY: their cancels will be dead-lettered token_key; load them again with this key (enqueue tokens set --replace) or set the key they were stored with",
				"first", first, "wrong_key", wrong, "opened", opened)
		}
	}

	var srv *http.Server
	// An empty variable reads as unset (the default), so the variable
	// says off; an empty flag disables too.
	if *metricsAddr != "" && !strings.EqualFold(*metricsAddr, "off") {
		ln, err := net.Listen("tcp", *metricsAddr)
		if err != nil {
			return fmt.Errorf("%s %s: %w (pick another address, or off)", EnvMetricsAddr, *metricsAddr, err)
		}
		srv = &http.Server{Handler: w.HTTPHandler(), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		fmt.Fprintf(stdout, "worker: serving /metrics, /healthz, /readyz on http://%s\n", ln.Addr())
	}
	err = w.Run(ctx)
	if srv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}
	return err
}

// RecommendedListpackValue keeps asynq's task hashes compact: with Redis's
// default (64) a pending task takes 635 bytes, with 512 it takes 395.
const RecommendedListpackValue = 512

// checkRedisConfig warns about Redis settings that cost memory or lose
// tasks. It changes nothing; managed Redis may refuse CONFIG, which is fine.
func checkRedisConfig(ctx context.Context, rdb *redis.Client, log *slog.Logger) {
	cfg, err := rdb.ConfigGet(ctx, "*").Result()
	if err != nil {
		return
	}
	if v, err := strconv.Atoi(cfg["hash-max-listpack-value"]); err == nil && v < RecommendedListpackValue {
		log.Warn("redis: hash-max-listpack-value is low; pending tasks take about 60% more memory",
			"value", v, "recommended", RecommendedListpackValue)
	}
	if p := cfg["maxmemory-policy"]; p != "" && p != "noeviction" {
		log.Warn("redis: maxmemory-policy may evict queued tasks; use noeviction", "value", p)
	}
}

// tokenSource picks GHL_TOKEN (one token for every location), or
// GHL_TOKENS_FILE (explicit tokens per location) and/or OAuth
// (GHL_CLIENT_ID, GHL_CLIENT_SECRET, GHL_TOKEN_KEY: location pairs loaded
// with `enqueue tokens set`, and tokens minted from an agency pair loaded
// with `enqueue tokens agency set`, kept encrypted in Redis). With both, a
// location's explicit token wins, then its pair, then the agency.
// ConcurrencyMax bounds WORKER_CONCURRENCY.
const ConcurrencyMax = 5000

func tokenSource(getenv func(string) string, file, baseURL string, log *slog.Logger) (tokens.Source, *tokens.OAuthConfig, error) {
	token, id, secret, key := getenv(EnvToken), getenv(EnvClientID), getenv(EnvClientSecret), getenv(EnvTokenKey)
	oauth := id != "" || secret != "" || key != ""
	if token != "" && (file != "" || oauth) {
		return nil, nil, fmt.Errorf("%s is one token for every location: unset it to use %s or OAuth (%s/%s/%s)", EnvToken, EnvTokensFile, EnvClientID, EnvClientSecret, EnvTokenKey)
	}
	if token != "" {
		// A secret file's line break comes with it: trimmed. Anything else
		// a header cannot carry stops the worker here, not as a day of
		// "network" retries.
		token = strings.TrimSpace(token)
		if err := ghl.CheckToken(token); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", EnvToken, err)
		}
		return tokens.Static(token), nil, nil
	}
	var src tokens.Source
	if file != "" {
		f, err := tokens.NewFile(file, func(err error) { log.Error("tokens file reload failed", "error", err) })
		if err != nil {
			return nil, nil, err
		}
		log.Info("tokens file loaded", "path", file, "locations", f.Len())
		src = f
	}
	if !oauth {
		if f, ok := src.(*tokens.File); ok {
			// The only source: a file that holds no token would dead-letter
			// every cancel no_token (refused at start and on reload).
			if err := f.RequireTokens(); err != nil {
				return nil, nil, err
			}
		}
		if src == nil {
			return nil, nil, errors.New("no token: set " + EnvToken + " (one token for all locations), " + EnvTokensFile +
				" (JSON location id -> token), or " + EnvClientID + ", " + EnvClientSecret + " and " + EnvTokenKey + " (OAuth: location pairs and agency installs)")
		}
		return src, nil, nil
	}
	if id == "" || secret == "" || key == "" {
		return nil, nil, fmt.Errorf("OAuth needs all of %s, %s and %s", EnvClientID, EnvClientSecret, EnvTokenKey)
	}
	k, err := tokens.ParseKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", EnvTokenKey, err)
	}
	u := strings.TrimSuffix(baseURL, "/") + "/oauth/token"
	return src, &tokens.OAuthConfig{TokenURL: u, ClientID: id, ClientSecret: secret, Key: k}, nil
}

func rateConfig(limit string, margin float64, overrides string, maxWait time.Duration, reserve int) (ratelimit.Config, bool, error) {
	if limit == "off" {
		return ratelimit.Config{}, true, nil
	}
	def, err := ratelimit.ParseLimit(limit)
	if err != nil {
		return ratelimit.Config{}, false, fmt.Errorf("%s: %w", EnvRateLimit, err)
	}
	if margin < 0 || margin >= 1 {
		return ratelimit.Config{}, false, fmt.Errorf("%s: %v is not in [0, 1)", EnvRateMargin, margin)
	}
	cfg := ratelimit.Config{Default: def, Margin: margin, MaxWait: maxWait, DailyReserve: reserve, Overrides: map[string]ratelimit.Limit{}}
	if margin == 0 {
		cfg.Margin = 1e-9 // an explicit 0: no margin (the zero value means the default)
	}
	if reserve == 0 {
		cfg.DailyReserve = ratelimit.DailyReserveNone // an explicit 0 (the zero value means the default)
	}
	for _, kv := range strings.Split(overrides, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		loc, lim, ok := strings.Cut(kv, "=")
		loc = strings.TrimSpace(loc)
		if !ok || loc == "" {
			return ratelimit.Config{}, false, fmt.Errorf("%s: %q: want location=N/period", EnvRateOverrides, kv)
		}
		if err := ghl.ValidateID(loc); err != nil {
			return ratelimit.Config{}, false, fmt.Errorf("%s: location %q: %w", EnvRateOverrides, loc, err)
		}
		if _, dup := cfg.Overrides[loc]; dup {
			// Which one was meant? The last would win without a word.
			return ratelimit.Config{}, false, fmt.Errorf("%s: location %s is given twice", EnvRateOverrides, loc)
		}
		l, err := ratelimit.ParseLimit(strings.TrimSpace(lim))
		if err != nil {
			return ratelimit.Config{}, false, fmt.Errorf("%s: %s: %w", EnvRateOverrides, loc, err)
		}
		cfg.Overrides[loc] = l
	}
	return cfg, false, nil
}
