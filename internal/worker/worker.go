// Package worker assembles a cancel worker: the asynq server with lane
// weights, retry policy and metrics middleware, the HighLevel client, the
// dead-letter store, and the /metrics, /healthz and /readyz endpoints.
// cmd/worker and cmd/demo both build workers here.
package worker

import (
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"

	"github.com/ghlcancel/ghlcancel/internal/breaker"
	"github.com/ghlcancel/ghlcancel/internal/campaign"
	"github.com/ghlcancel/ghlcancel/internal/deadletter"
	"github.com/ghlcancel/ghlcancel/internal/fleet"
	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/ledger"
	"github.com/ghlcancel/ghlcancel/internal/producer"
	"github.com/ghlcancel/ghlcancel/internal/ratelimit"
	"github.com/ghlcancel/ghlcancel/internal/redisconn"
	"github.com/ghlcancel/ghlcancel/internal/sweep"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
	"github.com/ghlcancel/ghlcancel/internal/tokens"
	"github.com/ghlcancel/ghlcancel/metrics"
)

// Defaults for Config.
const (
	ConcurrencyDefault       = 100
	ShutdownTimeoutDefault   = 30 * time.Second
	TaskCheckIntervalDefault = 100 * time.Millisecond
	DelayedCheckDefault      = time.Second
)

// Config configures a Worker.
type Config struct {
	// Redis is shared by the asynq server, the dead-letter store and the
	// queue collector. The caller closes it. Required.
	Redis redis.UniversalClient
	// GHL configures the API client; its Observe hook is set by New.
	GHL ghl.Config
	// Tokens supplies a token per location. Required unless OAuth is set.
	Tokens tokens.Source
	// OAuth, when set, keeps per-location OAuth pairs in Redis and
	// refreshes them, and mints location tokens from the agency pair when
	// one is set (`enqueue tokens agency set`); its Redis and Observe are
	// set by New. With Tokens set too, Tokens is asked first (explicit
	// tokens), then the location's pair, then the agency.
	OAuth *tokens.OAuthConfig
	// Concurrency is how many tasks run at once. Defaults to ConcurrencyDefault.
	Concurrency int
	// ShutdownTimeout is how long in-flight tasks get to finish on shutdown;
	// unfinished ones go back to the queue. Defaults to ShutdownTimeoutDefault.
	ShutdownTimeout time.Duration
	// TaskCheckInterval is how often an idle worker polls empty lanes; it
	// bounds the pickup latency of a new task. Defaults to TaskCheckIntervalDefault.
	TaskCheckInterval time.Duration
	// DelayedCheckInterval is how often due retries are moved back to their
	// lane. Defaults to DelayedCheckDefault.
	DelayedCheckInterval time.Duration
	// Backoff for retryable failures. Defaults to tasks.Backoff{} (2 s base, 20 min cap).
	Backoff tasks.Backoff
	// StrictPriority serves a lower lane only when the higher ones are empty
	// (one fetch loop over the three lanes). Defaults to false: each lane
	// has its own fetch loop and slots (see LaneConcurrency).
	StrictPriority bool
	// SharedLanes serves the three lanes from one fetch loop weighted 6:3:1
	// (asynq's way: it probes the empty lanes on every fetch). Defaults to
	// false.
	SharedLanes bool
	// RateLimit configures per-location pacing shared by all workers
	// (zero value: HighLevel's documented 100 per 10 s with a 2% margin).
	RateLimit ratelimit.Config
	// NoPacing turns the limiter off: 429s are then only reacted to.
	NoPacing bool
	// Breaker tunes the circuit breaker (zero value: 50% failures of at
	// least 20 calls in 10 s opens it for 5 s, doubling up to 1 min).
	Breaker breaker.Config
	// NoBreaker turns the circuit breaker off.
	NoBreaker bool
	// NoVerify records "not found" cancels as not_cancellable without
	// reading the message back (see tasks.Handler.Verify).
	NoVerify bool
	// CampaignRetention is how long campaign counters, reports and message
	// records are kept after their last update. Defaults to
	// ledger.RetentionDefault.
	CampaignRetention time.Duration
	// DeadLetterRetention is how long dead letters are kept. Defaults to
	// ledger.DeadRetentionDefault.
	DeadLetterRetention time.Duration
	// Logger defaults to a discarding logger.
	Logger *slog.Logger
	// Registry receives the metrics. Defaults to a new registry.
	Registry *prometheus.Registry
}

// Worker runs cancel tasks.
type Worker struct {
	cfg      Config
	srvs     []*asynq.Server
	handler  asynq.Handler
	Metrics  *metrics.Metrics
	Registry *prometheus.Registry
	Dead     *deadletter.Store
	Routes   *ghl.RouteHealth
	log      *slog.Logger
	stopping *atomic.Bool // set a second before asynq's shutdown abort (tasks.TakenBack)
	fleet    *fleet.Registry
	ledger   *ledger.Ledger
}

// New validates cfg and builds a Worker.
func New(cfg Config) (*Worker, error) {
	if cfg.Redis == nil {
		return nil, errors.New("worker: Config.Redis is required")
	}
	if cfg.Tokens == nil && cfg.OAuth == nil {
		return nil, errors.New("worker: no token source: set GHL_TOKEN, GHL_TOKENS_FILE, or GHL_CLIENT_ID, GHL_CLIENT_SECRET and GHL_TOKEN_KEY")
	}
	if cfg.Concurrency < 0 {
		return nil, fmt.Errorf("worker: Config.Concurrency must be positive, got %d", cfg.Concurrency)
	}
	cfg.Concurrency = cmp.Or(cfg.Concurrency, ConcurrencyDefault)
	cfg.ShutdownTimeout = cmp.Or(cfg.ShutdownTimeout, ShutdownTimeoutDefault)
	cfg.TaskCheckInterval = cmp.Or(cfg.TaskCheckInterval, TaskCheckIntervalDefault)
	cfg.DelayedCheckInterval = cmp.Or(cfg.DelayedCheckInterval, DelayedCheckDefault)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	m := metrics.New(cfg.Registry)
	if f, ok := cfg.Tokens.(*tokens.File); ok {
		m.TokensFileStaleBy(f.Stale)
	}
	cfg.Registry.MustRegister(metrics.NewQueueCollector(cfg.Redis, tasks.Queues))
	var pacer *ratelimit.Limiter
	if !cfg.NoPacing {
		rl := cfg.RateLimit
		rl.Observe = m
		rl.Logger = cmp.Or(rl.Logger, cfg.Logger)
		rl.RecordTTL = cmp.Or(cfg.CampaignRetention, ledger.RetentionDefault)
		pacer = ratelimit.New(cfg.Redis, rl)
	}
	if cfg.OAuth != nil {
		src, err := oauthSources(cfg, m, pacer)
		if err != nil {
			return nil, err
		}
		cfg.Tokens = src
	}

	gcfg := cfg.GHL
	gcfg.Observe = m.ObserveAPI
	gcfg.MaxIdleConns = cmp.Or(gcfg.MaxIdleConns, cfg.Concurrency*7/4+20)
	api, err := ghl.New(gcfg)
	if err != nil {
		return nil, err
	}
	dead := deadletter.New(cfg.Redis)
	dead.Retention = cmp.Or(cfg.DeadLetterRetention, ledger.DeadRetentionDefault)
	routes := &ghl.RouteHealth{BaseURL: api.BaseURL(), Logger: cfg.Logger, OnChange: func(bad bool) {
		m.Misrouted.Set(map[bool]float64{true: 1}[bad])
	}}
	stopping := new(atomic.Bool)
	h := &tasks.Handler{API: api, Tokens: cfg.Tokens, Logger: cfg.Logger, Routes: routes, Verify: !cfg.NoVerify, Events: m, Stopping: stopping.Load,
		Ledger: ledger.New(cfg.Redis, ledger.Config{Retention: cfg.CampaignRetention, DeadRetention: dead.Retention})}
	if !cfg.NoBreaker {
		bc := cfg.Breaker
		log := cfg.Logger
		bc.OnChange = func(from, to breaker.State) {
			m.CircuitChanges.WithLabelValues(to.String()).Inc()
			switch to {
			case breaker.Closed:
				log.Info("circuit breaker closed: HighLevel answers again, calls resume")
			case breaker.Open:
				log.Warn("circuit breaker open: HighLevel is failing, calls paused", "from", from.String())
			}
		}
		br := breaker.New(bc)
		h.Breaker = br
		m.CircuitPausedBy(br.Paused)
	}
	if pacer != nil {
		h.Pacer = pacer
	}
	// Sweeps to their handler; both cancel types, and any other type that
	// lands on our lanes (dead-lettered rather than retried forever), to the
	// cancel handler; all wrapped once in the metrics middleware.
	sw := &sweep.Handler{API: api, Tokens: cfg.Tokens, Redis: cfg.Redis, Logger: cfg.Logger, Routes: routes, Observe: m, Stopping: stopping.Load,
		Producer: producer.New(cfg.Redis, producer.Config{CampaignRetention: cfg.CampaignRetention}), Retention: cfg.CampaignRetention}
	if h.Pacer != nil {
		sw.Pacer = h.Pacer
	}
	if h.Breaker != nil {
		sw.Breaker = h.Breaker
	}
	wrapped := m.Middleware(asynq.HandlerFunc(func(ctx context.Context, t *asynq.Task) error {
		if t.Type() == tasks.TypeSweep {
			return sw.ProcessTask(ctx, t)
		}
		return h.ProcessTask(ctx, t)
	}))
	// Install tasks (INSTALL webhooks) mint a location's token; they are
	// not cancels and stay out of the cancel metrics (the mint metric
	// counts them).
	inst := &tasks.InstallHandler{Tokens: cfg.Tokens, Redis: cfg.Redis, Logger: cfg.Logger}
	handler := asynq.HandlerFunc(func(ctx context.Context, t *asynq.Task) error {
		if t.Type() == tasks.TypeInstall {
			return inst.ProcessTask(ctx, t)
		}
		return wrapped.ProcessTask(ctx, t)
	})

	base := asynq.Config{
		RetryDelayFunc:           tasks.RetryDelay(cfg.Backoff),
		IsFailure:                tasks.IsFailure,
		ShutdownTimeout:          cfg.ShutdownTimeout,
		TaskCheckInterval:        cfg.TaskCheckInterval,
		DelayedTaskCheckInterval: cfg.DelayedCheckInterval,
		Logger:                   asynqLogger{cfg.Logger},
		LogLevel:                 asynq.WarnLevel,
	}
	var srvs []*asynq.Server
	if cfg.SharedLanes || cfg.StrictPriority {
		c := base
		c.Concurrency, c.Queues, c.StrictPriority = cfg.Concurrency, tasks.QueueWeights(), cfg.StrictPriority
		srvs = append(srvs, asynq.NewServerFromRedisClient(cfg.Redis, c))
	} else {
		// One fetch loop per lane: no fetch probes an empty lane first
		// (asynq's weighted fetch tried 2.6 lanes per bulk task), and
		// urgent work has slots of its own that bulk work never holds.
		for _, q := range tasks.Queues {
			c := base
			c.Concurrency, c.Queues = LaneConcurrency(q, cfg.Concurrency), map[string]int{q: 1}
			srvs = append(srvs, asynq.NewServerFromRedisClient(cfg.Redis, c))
		}
	}
	settings := fleetSettings(cfg, api.BaseURL(), dead.Retention, pacer)
	m.FleetSettings(slices.Sorted(maps.Keys(settings)))
	return &Worker{cfg: cfg, srvs: srvs, handler: handler, stopping: stopping, Metrics: m, Registry: cfg.Registry, Dead: dead, Routes: routes, log: cfg.Logger,
		// host:pid names the process; the suffix tells apart workers run
		// in one process (tests, an embedding program).
		fleet: fleet.New(cfg.Redis, fleet.Workers, deadletter.ThisWorker+"/"+rand.Text()[:4], settings), ledger: h.Ledger}, nil
}

// fleetSettings are the settings this worker announces to the others
// sharing its Redis (internal/fleet): those that act on shared state.
func fleetSettings(cfg Config, baseURL string, deadRetention time.Duration, pacer *ratelimit.Limiter) fleet.Settings {
	s := fleet.Settings{
		"VERIFY":                fleet.Bool(!cfg.NoVerify),
		"CAMPAIGN_RETENTION":    fleet.Duration(cmp.Or(cfg.CampaignRetention, ledger.RetentionDefault)),
		"DEAD_LETTER_RETENTION": fleet.Duration(deadRetention),
		"GHL_BASE_URL":          baseURL,
		"RATE_LIMIT":            "off",
	}
	if pacer != nil {
		maps.Copy(s, pacer.Settings())
	}
	return s
}

// Run processes tasks until ctx is done, then shuts down: in-flight tasks
// get ShutdownTimeout to finish, the rest go back to their lane.
func (w *Worker) Run(ctx context.Context) error {
	var said string
	retention := w.look(ctx, &said)
	for i, srv := range w.srvs {
		if err := srv.Start(w.handler); err != nil {
			for _, started := range w.srvs[:i] {
				started.Shutdown()
			}
			_ = w.fleet.Leave(context.WithoutCancel(ctx)) // never ran: not a peer
			return fmt.Errorf("worker: start: %w", err)
		}
	}
	if len(w.srvs) == 1 {
		w.log.Info("worker started", "concurrency", w.cfg.Concurrency, "queues", tasks.QueueWeights(), "strict_priority", w.cfg.StrictPriority)
	} else {
		w.log.Info("worker started", "lanes", "one fetch loop each", "urgent", LaneConcurrency(tasks.QueueUrgent, w.cfg.Concurrency),
			"default", LaneConcurrency(tasks.QueueDefault, w.cfg.Concurrency), "bulk", LaneConcurrency(tasks.QueueBulk, w.cfg.Concurrency))
	}
	janitor := make(chan struct{})
	go func() { defer close(janitor); w.janitor(ctx, said, retention) }()
	<-ctx.Done()
	<-janitor
	w.log.Info("worker draining", "shutdown_timeout", w.cfg.ShutdownTimeout)
	// asynq puts in-flight tasks back when ShutdownTimeout runs out, then
	// cancels their attempts: from a second before that, a cancelled
	// attempt was put back, not failed (tasks.TakenBack). Earlier in the
	// drain a cancel is asynq's own failure (a lost lease, a cancel
	// command), which counts a retry, and stays one.
	stopAt := time.AfterFunc(max(0, w.cfg.ShutdownTimeout-time.Second), func() { w.stopping.Store(true) })
	defer stopAt.Stop()
	var wg sync.WaitGroup
	for _, srv := range w.srvs {
		wg.Go(srv.Shutdown) // in parallel: each gets ShutdownTimeout, not the sum
	}
	wg.Wait()
	// An OAuth pair refreshed while Redis was failing is still only in this
	// process: one last try to store it.
	if c, ok := w.cfg.Tokens.(interface{ Close() error }); ok {
		if err := c.Close(); err != nil {
			w.log.Error("token pairs refreshed but not stored; the next refresh of these locations may fail with invalid_grant", "error", err)
		}
	}
	w.log.Info("worker stopped")
	return nil
}

// oauthSources chains the explicit tokens (if any), the locations' OAuth
// pairs and the agency's minted tokens.
func oauthSources(cfg Config, m *metrics.Metrics, pacer *ratelimit.Limiter) (*tokens.Chain, error) {
	oc := *cfg.OAuth
	oc.Redis, oc.Observe = cfg.Redis, m.Refreshed
	// Refreshes and mints are HighLevel calls too: counted with the others
	// (the API panels, the 5xx alert), by endpoint.
	hc := tokens.NewHTTPClient()
	if oc.HTTP != nil {
		c := *oc.HTTP
		hc = &c
	}
	hc.Transport = observedTransport{next: cmp.Or[http.RoundTripper](hc.Transport, http.DefaultTransport), observe: m.ObserveAPI}
	oc.HTTP = hc
	pairs, err := tokens.NewOAuth(oc)
	if err != nil {
		return nil, err
	}
	ac := oc
	ac.Company, ac.Observe = true, func(r string) { m.Refreshed(metrics.AgencyRefresh + r) }
	agencyPairs, err := tokens.NewOAuth(ac)
	if err != nil {
		return nil, err
	}
	acfg := tokens.AgencyConfig{Redis: cfg.Redis, BaseURL: cfg.GHL.BaseURL, Pairs: agencyPairs, Key: oc.Key,
		HTTP: oc.HTTP, Observe: m.Minted}
	if pacer != nil {
		acfg.Pacer = callPacer{pacer}
	}
	agency, err := tokens.NewAgency(acfg)
	if err != nil {
		return nil, err
	}
	var sources []tokens.Source
	if cfg.Tokens != nil {
		sources = append(sources, cfg.Tokens)
	}
	return tokens.NewChain(append(sources, pairs, agency)...), nil
}

// observedTransport reports each token endpoint call to observe: status 0
// when no answer came.
type observedTransport struct {
	next    http.RoundTripper
	observe func(endpoint string, status int, d time.Duration)
}

func (t observedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	start := time.Now()
	resp, err := t.next.RoundTrip(req)
	status := 0
	if err == nil {
		status = resp.StatusCode
	}
	t.observe(tokenEndpoint(req.URL.Path), status, time.Since(start))
	return resp, err
}

// tokenEndpoint is the endpoint label of a token endpoint's path.
func tokenEndpoint(path string) string {
	switch {
	case strings.HasSuffix(path, "/oauth/locationToken"):
		return metrics.EndpointLocationToken
	case strings.HasSuffix(path, "/oauth/installedLocations"):
		return metrics.EndpointInstalledLocations
	}
	return metrics.EndpointOAuthToken
}

// callPacer paces agency calls (mints, listings) in the company's bucket
// like a location's export calls: ahead of waiting cancels, without a
// message record, learning the limit from HighLevel's headers.
type callPacer struct{ l *ratelimit.Limiter }

func (p callPacer) Admit(ctx context.Context, bucket string) error {
	_, err := p.l.Admit(ctx, ratelimit.Request{Location: bucket, TaskID: "call-" + rand.Text(), Urgent: true, NoRecord: true})
	return err
}

func (p callPacer) Observe(ctx context.Context, bucket string, h http.Header, status int) {
	var rl *ghl.RateLimitError
	if status == http.StatusTooManyRequests {
		rl = ghl.RateLimited(h, time.Now())
	}
	_ = p.l.Observe(ctx, bucket, ghl.ParseLimits(h), rl)
}

// LaneConcurrency is the slots of a lane's own fetch loop: the bulk lane
// gets WORKER_CONCURRENCY, the default lane half, the urgent lane a quarter
// (at least 10 each). A lane's slots are used only while it has work.
func LaneConcurrency(lane string, concurrency int) int {
	switch lane {
	case tasks.QueueUrgent:
		return max(concurrency/4, 10)
	case tasks.QueueDefault:
		return max(concurrency/2, 10)
	}
	return concurrency
}

// DeadLetterPruneEvery is how often a worker removes dead letters past
// their retention (writes of new dead letters also remove some), and
// expired campaigns from the campaign index (listing them does too: with
// no one listing, an integrator's campaign per request would grow it).
const DeadLetterPruneEvery = 10 * time.Minute

// janitor announces this worker to the fleet every fleet.AnnounceEvery
// (look) and prunes every DeadLetterPruneEvery, first at once. Run looks
// once before any task runs: dead letters, pruned here and by the
// ledger's writes, are kept the longest retention of the live workers.
func (w *Worker) janitor(ctx context.Context, said string, retention time.Duration) {
	t := time.NewTicker(fleet.AnnounceEvery)
	defer t.Stop()
	campaigns := campaign.New(w.cfg.Redis, w.cfg.CampaignRetention)
	var lastPrune time.Time
	for {
		if time.Since(lastPrune) >= DeadLetterPruneEvery {
			lastPrune = time.Now()
			w.prune(ctx, campaigns, retention)
		}
		select {
		case <-t.C:
			retention = w.look(ctx, &said)
		case <-ctx.Done():
			leave, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			_ = w.fleet.Leave(leave)
			cancel()
			return
		}
	}
}

// look announces this worker's settings, reads the live workers', says
// (once per change, in *said) where they differ, and returns the dead
// letters' retention: the longest of the live workers', which the ledger's
// writes keep too. On a Redis error it keeps the last floor and returns
// this worker's own retention or that floor, whichever is longer.
func (w *Worker) look(ctx context.Context, said *string) time.Duration {
	peers, err := w.announce(ctx)
	if err != nil {
		if ctx.Err() == nil {
			w.log.Warn("announcing this worker's settings to the others failed", "error", err)
		}
		return w.ledger.DeadRetention()
	}
	// The longest among the live workers, and among those that stopped
	// within their own retention (their dead letters are still theirs).
	retention := max(w.Dead.Retention, fleet.MaxDuration(peers, "DEAD_LETTER_RETENTION"))
	if longest, err := fleet.KeepLongest(ctx, w.cfg.Redis, "DEAD_LETTER_RETENTION", w.Dead.Retention); err == nil {
		retention = max(retention, longest)
	}
	w.ledger.SetDeadRetentionFloor(retention)
	differ, now := fleet.Summary(peers, w.fleet.Names())
	w.Metrics.FleetDiffer(differ)
	if now != *said {
		*said = now
		if now != "" {
			w.log.Warn("workers sharing this Redis disagree on settings that act on shared state; set the same on every worker",
				"differences", now, "workers", len(peers))
		} else if len(peers) > 1 {
			w.log.Info("workers sharing this Redis agree on their shared settings", "workers", len(peers))
		}
	}
	return retention
}

// announce writes this worker's settings and reads the live workers'.
func (w *Worker) announce(ctx context.Context) (map[string]fleet.Settings, error) {
	if err := w.fleet.Announce(ctx); err != nil {
		return nil, err
	}
	return w.fleet.Peers(ctx)
}

// prune removes dead letters past retention (the fleet's longest) and
// expired campaigns from the campaign index.
func (w *Worker) prune(ctx context.Context, campaigns *campaign.Tracker, retention time.Duration) {
	if n, err := w.Dead.PruneOlderThan(ctx, retention); err != nil && ctx.Err() == nil {
		w.log.Warn("pruning expired dead letters failed", "error", err)
	} else if n > 0 {
		w.log.Info("expired dead letters removed", "count", n, "retention", retention)
	}
	if n, err := campaigns.Prune(ctx); err != nil && ctx.Err() == nil {
		w.log.Warn("pruning expired campaigns from the index failed", "error", err)
	} else if n > 0 {
		w.log.Info("expired campaigns removed from the index", "count", n)
	}
}

// HTTPHandler serves /metrics, /healthz (the process is up) and /readyz
// (Redis answers a PING within a second, and HighLevel's answers are not all
// misrouted).
func (w *Worker) HTTPHandler() http.Handler {
	return AdminHandler(w.Registry, w.cfg.Redis, func() error {
		if w.Routes.Misrouted() {
			return errors.New("every recent HighLevel answer was misrouted: check GHL_BASE_URL")
		}
		return nil
	})
}

// AdminHandler serves /metrics, /healthz and /readyz for any process; each
// extra check must pass (nil) for /readyz to answer 200.
func AdminHandler(reg *prometheus.Registry, rdb redis.UniversalClient, checks ...func() error) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), time.Second)
		defer cancel()
		if err := rdb.Ping(ctx).Err(); err != nil {
			msg := "redis: not reachable: " + err.Error()
			if hint, bad := redisconn.Misconfigured(err); bad {
				msg = "redis: " + hint + ": " + err.Error()
			}
			http.Error(w, msg, http.StatusServiceUnavailable)
			return
		}
		for _, check := range checks {
			if err := check(); err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	return mux
}

// asynqLogger sends asynq's own logs through slog.
type asynqLogger struct{ l *slog.Logger }

func (a asynqLogger) Debug(args ...any) { a.l.Debug(fmt.Sprint(args...), "component", "asynq") }
func (a asynqLogger) Info(args ...any)  { a.l.Info(fmt.Sprint(args...), "component", "asynq") }
func (a asynqLogger) Warn(args ...any)  { a.l.Warn(fmt.Sprint(args...), "component", "asynq") }
func (a asynqLogger) Error(args ...any) { a.l.Error(fmt.Sprint(args...), "component", "asynq") }
func (a asynqLogger) Fatal(args ...any) {
	a.l.Error(fmt.Sprint(args...), "component", "asynq", "fatal", true)
	panic(fmt.Sprint(args...))
}
