// Package metrics holds ghlcancel's Prometheus collectors. Build them with
// New on a registry of your own (never the global one). Labels are bounded:
// task types, outcomes, reasons, endpoints, status codes and lane names.
// Message and location ids never become labels.
package metrics

import (
	"context"
	"runtime/debug"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
	"github.com/ghlcancel/ghlcancel/internal/tokens"
	"github.com/ghlcancel/ghlcancel/internal/webhook"
)

// Namespace prefixes every metric.
const Namespace = "ghlcancel"

// Metrics are the worker's collectors.
type Metrics struct {
	TasksProcessed *prometheus.CounterVec
	TaskDuration   *prometheus.HistogramVec
	TasksInFlight  prometheus.Gauge
	APIRequests    *prometheus.CounterVec
	APIDuration    *prometheus.HistogramVec
	DeadLetters    *prometheus.CounterVec
	Retries        *prometheus.CounterVec
	LimiterWait    prometheus.Histogram
	LimiterSnooze  *prometheus.CounterVec
	LimiterCool    *prometheus.CounterVec
	TokenRefreshes *prometheus.CounterVec
	TokenMints     *prometheus.CounterVec
	DailyLowCount  prometheus.Counter
	CircuitOpen    prometheus.GaugeFunc // reads the function given to CircuitPausedBy
	CircuitChanges *prometheus.CounterVec
	Misrouted      prometheus.Gauge
	SweepPages     prometheus.Counter
	SweepMessages  *prometheus.CounterVec
	Sweeps         *prometheus.CounterVec
	EventToCancel  *prometheus.HistogramVec

	TokensFileStale prometheus.GaugeFunc // reads the function given to TokensFileStaleBy
	FleetDiffers    *prometheus.GaugeVec

	fleetNames    []string // set once, before the janitor runs
	circuitPaused atomic.Pointer[func() bool]
	tokensStale   atomic.Pointer[func() bool]
}

// flag reads the function p holds (set later) as a gauge: 1 when it says
// true, 0 when false or not set.
func flag(p *atomic.Pointer[func() bool]) func() float64 {
	return func() float64 {
		if f := p.Load(); f != nil && (*f)() {
			return 1
		}
		return 0
	}
}

// FleetSettings creates fleet_settings_differ at 0 for each setting this
// worker announces (internal/fleet).
func (m *Metrics) FleetSettings(names []string) {
	m.fleetNames = names
	for _, n := range names {
		m.FleetDiffers.WithLabelValues(n).Set(0)
	}
}

// FleetDiffer sets fleet_settings_differ: 1 for the settings on which the
// live workers disagree, 0 for the others this worker announced.
func (m *Metrics) FleetDiffer(differ map[string]bool) {
	for _, n := range m.fleetNames {
		m.FleetDiffers.WithLabelValues(n).Set(map[bool]float64{true: 1}[differ[n]])
	}
}

// TokensFileStaleBy makes tokens_file_stale read stale (the worker's
// GHL_TOKENS_FILE).
func (m *Metrics) TokensFileStaleBy(stale func() bool) { m.tokensStale.Store(&stale) }

// CircuitPausedBy makes circuit_open read paused (the worker's breaker).
func (m *Metrics) CircuitPausedBy(paused func() bool) { m.circuitPaused.Store(&paused) }

// EventCancel implements tasks.EventObserver.
func (m *Metrics) EventCancel(event string, d time.Duration) {
	m.EventToCancel.WithLabelValues(event).Observe(d.Seconds())
}

// SweepPage implements sweep.Observer.
func (m *Metrics) SweepPage(seen, scheduled int) {
	m.SweepPages.Inc()
	m.SweepMessages.WithLabelValues("seen").Add(float64(seen))
	m.SweepMessages.WithLabelValues("scheduled").Add(float64(scheduled))
}

// SweepDone implements sweep.Observer.
func (m *Metrics) SweepDone(result string) { m.Sweeps.WithLabelValues(result).Inc() }

// DeadLetterReasons are initialised at zero so that rate() works from the start.
var DeadLetterReasons = []string{
	string(ghl.ReasonBadRequest), string(ghl.ReasonUnprocessable), string(ghl.ReasonUnauthorized),
	string(ghl.ReasonForbidden), string(ghl.ReasonClientError), string(ghl.ReasonNoToken),
	string(ghl.ReasonServerError), string(ghl.ReasonTimeout), string(ghl.ReasonNetwork),
	string(ghl.ReasonBadResponse), string(ghl.ReasonRateLimited), string(ghl.ReasonMisrouted),
	string(ghl.ReasonInvalidGrant), string(ghl.ReasonInactive), string(ghl.ReasonTokenSource),
	tasks.ReasonInvalidPayload, tasks.ReasonUnknownType, tasks.ReasonPanic, tasks.ReasonCircuitOpen,
	tasks.ReasonPaced, tasks.ReasonLimiter, tasks.ReasonInterrupted,
}

// RetryReasons are initialised at zero.
var RetryReasons = []string{
	string(ghl.ReasonServerError), string(ghl.ReasonTimeout), string(ghl.ReasonNetwork),
	string(ghl.ReasonBadResponse), string(ghl.ReasonRateLimited), string(ghl.ReasonTokenSource),
	string(ghl.ReasonMisrouted), tasks.ReasonOutcomeWrite, tasks.ReasonInterrupted,
	tasks.ReasonPaced, tasks.ReasonLimiter, tasks.ReasonCircuitOpen,
}

// AgencyRefresh prefixes the result label of the agency pair's refreshes.
const AgencyRefresh = "agency_"

// TokenRefreshResults are the result labels of token refreshes.
var TokenRefreshResults = []string{"ok", "lost_race", "invalid_grant", "inactive", "error", "stored_late"}

// TokenMintResults are the result labels of location tokens minted from the agency.
var TokenMintResults = []string{"ok", "lost_race", "suppressed", "rate_limited", "error",
	tokens.ReasonNotInstalled, tokens.ReasonLocationInactive, tokens.ReasonAgencyRevoked, tokens.ReasonMintRefused, tokens.ReasonMintFailed}

// Minted records the result of minting a location token from the agency.
func (m *Metrics) Minted(result string) { m.TokenMints.WithLabelValues(result).Inc() }

// Waited implements ratelimit.Observer.
func (m *Metrics) Waited(d time.Duration) { m.LimiterWait.Observe(d.Seconds()) }

// Snoozed implements ratelimit.Observer.
func (m *Metrics) Snoozed(reason string) { m.LimiterSnooze.WithLabelValues(reason).Inc() }

// CooledDown implements ratelimit.Observer.
func (m *Metrics) CooledDown(reason string) { m.LimiterCool.WithLabelValues(reason).Inc() }

// DailyLow implements ratelimit.Observer.
func (m *Metrics) DailyLow() { m.DailyLowCount.Inc() }

// Refreshed records a token refresh result.
func (m *Metrics) Refreshed(result string) { m.TokenRefreshes.WithLabelValues(result).Inc() }

// The token endpoints' labels: refreshes (POST /oauth/token), mints from
// the agency (POST /oauth/locationToken) and the agency's installed
// locations (GET /oauth/installedLocations).
const (
	EndpointOAuthToken         = "oauth_token"
	EndpointLocationToken      = "oauth_location_token"
	EndpointInstalledLocations = "oauth_installed_locations"
)

// Endpoints are the API endpoint labels a worker calls (the installed
// locations are listed by the enqueue CLI only).
var Endpoints = []string{ghl.KindMessage.Endpoint(), ghl.KindEmail.Endpoint(), "get_message", "get_email", "export_messages",
	EndpointOAuthToken, EndpointLocationToken}

// New registers the collectors on reg, plus the Go and process collectors
// and ghlcancel_build_info.
func New(reg prometheus.Registerer) *Metrics {
	f := promauto.With(reg)
	m := &Metrics{
		TasksProcessed: f.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "tasks_processed_total",
			Help: "Task attempts by task type and outcome (cancelled, not_cancellable, expired, dead_lettered, retry, rate_limited, paced, paused, already_recorded, unrecorded, superseded).",
		}, []string{"task_type", "outcome"}),
		TaskDuration: f.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "task_duration_seconds",
			Help:    "Time one task attempt took in the handler, including in-handler rate-limit waits.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"task_type"}),
		TasksInFlight: f.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "tasks_in_flight",
			Help: "Tasks being processed by this worker right now.",
		}),
		APIRequests: f.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "api_requests_total",
			Help: "HighLevel API calls by endpoint and HTTP status code (\"error\" when no response arrived).",
		}, []string{"endpoint", "code"}),
		APIDuration: f.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "api_request_duration_seconds",
			Help:    "HighLevel API call latency by endpoint and status class (2xx, 4xx, 5xx, error when no response arrived).",
			Buckets: []float64{.01, .025, .05, .1, .2, .3, .5, .75, 1, 2, 5, 10, 30},
		}, []string{"endpoint", "class"}),
		DeadLetters: f.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "dead_letters_total",
			Help: "Tasks dead-lettered (recorded for inspection and replay) by reason.",
		}, []string{"reason"}),
		Retries: f.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "retries_total",
			Help: "Task attempts that will be retried, by reason (rate_limited retries do not use up an attempt).",
		}, []string{"reason"}),
	}
	m.LimiterWait = f.NewHistogram(prometheus.HistogramOpts{
		Namespace: Namespace, Name: "ratelimit_wait_seconds",
		Help:    "Time calls waited in the handler for their location's next slot.",
		Buckets: []float64{0, .01, .05, .1, .25, .5, 1, 2, 5},
	})
	m.LimiterSnooze = f.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "ratelimit_snoozes_total",
		Help: "Tasks sent back to the queue because their location's next slot was too far (pacing, cooldown after a 429, daily budget).",
	}, []string{"reason"})
	m.LimiterCool = f.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "ratelimit_cooldowns_total",
		Help: "Shared per-location cool-downs set, by cause (429, window_spent, daily).",
	}, []string{"reason"})
	m.TokenRefreshes = f.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "token_refreshes_total",
		Help: "OAuth token refreshes by result (ok, lost_race, invalid_grant, inactive, error).",
	}, []string{"result"})
	m.TokenMints = f.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "token_mints_total",
		Help: "Location tokens minted from the agency token, by result (ok, lost_race, suppressed: a failure under a minute old answered, rate_limited, error, and the refusal reasons not_installed, location_inactive, agency_revoked, mint_refused, mint_failed).",
	}, []string{"result"})
	m.CircuitOpen = f.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "circuit_open",
		Help: "1 while this worker's circuit breaker pauses HighLevel calls (open or half-open), 0 when closed or idle (open time up and no call asking for 30 s).",
	}, flag(&m.circuitPaused))
	m.TokensFileStale = f.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "tokens_file_stale",
		Help: "1 while GHL_TOKENS_FILE on disk could not be loaded (not valid JSON, a bad id or token, gone) and the last good version is in use; 0 otherwise, or with no tokens file.",
	}, flag(&m.tokensStale))
	m.FleetDiffers = f.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "fleet_settings_differ",
		Help: "1 while the live workers sharing this Redis disagree on this setting (one that acts on shared state: pacing, retention, VERIFY, GHL_BASE_URL); the worker's log names the values and workers.",
	}, []string{"setting"})
	m.CircuitChanges = f.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "circuit_transitions_total",
		Help: "Circuit breaker state changes, by the state entered (open, half_open, closed).",
	}, []string{"to"})
	for _, s := range []string{"open", "half_open", "closed"} {
		m.CircuitChanges.WithLabelValues(s)
	}
	m.Misrouted = f.NewGauge(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "api_misrouted",
		Help: "1 while every recent HighLevel answer this worker got was misrouted (route-level 404, HTML page, redirect): GHL_BASE_URL or a proxy is wrong.",
	})
	m.SweepPages = f.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace, Name: "sweep_pages_total",
		Help: "Export pages sweeps read from HighLevel.",
	})
	m.SweepMessages = f.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "sweep_messages_total",
		Help: "Messages sweeps read (seen) and found still scheduled (scheduled).",
	}, []string{"result"})
	m.Sweeps = f.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "sweeps_total",
		Help: "Location sweeps that ended, by result (done, failed).",
	}, []string{"result"})
	m.EventToCancel = f.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: Namespace, Name: "webhook_event_to_cancel_seconds",
		Help:    "Time from a webhook event's timestamp to the first call of each cancel its sweep found (a contact's first is the reaction time), by event type.",
		Buckets: []float64{.1, .25, .5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300},
	}, []string{"event"})
	for _, e := range webhook.Supported {
		m.EventToCancel.WithLabelValues(e)
	}
	for _, r := range []string{"seen", "scheduled"} {
		m.SweepMessages.WithLabelValues(r)
	}
	for _, r := range []string{"done", "failed"} {
		m.Sweeps.WithLabelValues(r)
	}
	m.DailyLowCount = f.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace, Name: "ratelimit_daily_low_total",
		Help: "API answers showing a location with under 10% of its daily request budget left.",
	})
	for _, r := range []string{"pacing", "cooldown", "daily"} {
		m.LimiterSnooze.WithLabelValues(r)
	}
	for _, r := range []string{"429", "window_spent", "daily"} {
		m.LimiterCool.WithLabelValues(r)
	}
	for _, r := range TokenRefreshResults {
		m.TokenRefreshes.WithLabelValues(r)
		// The agency pair's results too: a first refusal must be an
		// increase from 0, or the alert on it never sees one (a refusal
		// is remembered, so the counter seldom moves again).
		m.TokenRefreshes.WithLabelValues(AgencyRefresh + r)
	}
	for _, r := range TokenMintResults {
		m.TokenMints.WithLabelValues(r)
	}
	for _, tt := range []string{tasks.TypeCancelMessage, tasks.TypeCancelEmail, tasks.TypeSweep} {
		for _, o := range tasks.Outcomes {
			m.TasksProcessed.WithLabelValues(tt, o)
		}
	}
	for _, r := range DeadLetterReasons {
		m.DeadLetters.WithLabelValues(r)
	}
	for _, r := range RetryReasons {
		m.Retries.WithLabelValues(r)
	}
	for _, e := range Endpoints {
		m.APIDuration.WithLabelValues(e, "2xx")
	}
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	version := "dev"
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		version = bi.Main.Version
	}
	f.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "build_info", Help: "Build information; always 1.",
	}, []string{"version"}).WithLabelValues(version).Set(1)
	return m
}

// ObserveAPI records one API call; pass it as ghl.Config.Observe.
func (m *Metrics) ObserveAPI(endpoint string, status int, d time.Duration) {
	m.APIRequests.WithLabelValues(endpoint, CodeLabel(status)).Inc()
	m.APIDuration.WithLabelValues(endpoint, ClassLabel(status)).Observe(d.Seconds())
}

// ClassLabel is a status's class: "2xx" ... "5xx", "error" for no response.
func ClassLabel(status int) string {
	if status >= 100 && status < 600 {
		return strconv.Itoa(status/100) + "xx"
	}
	return "error"
}

// CodeLabel bounds the code label: common codes as themselves, anything
// else as its class ("2xx" ...), no response as "error".
func CodeLabel(status int) string {
	switch status {
	case 0:
		return "error"
	case 200, 201, 204, 400, 401, 403, 404, 408, 422, 429, 500, 502, 503, 504:
		return strconv.Itoa(status)
	}
	if status >= 100 && status < 600 {
		return strconv.Itoa(status/100) + "xx"
	}
	return "other"
}

// Middleware records every task attempt once: outcome, duration, in-flight,
// dead letters and retries by reason.
func (m *Metrics) Middleware(next asynq.Handler) asynq.Handler {
	return asynq.HandlerFunc(func(ctx context.Context, t *asynq.Task) error {
		ctx, rep := tasks.WithReport(ctx)
		m.TasksInFlight.Inc()
		defer m.TasksInFlight.Dec() // also when the handler panics
		start := time.Now()
		err := next.ProcessTask(ctx, t)
		taskType := t.Type()
		if _, ok := tasks.KindFor(taskType); !ok && taskType != tasks.TypeSweep {
			taskType = "unknown"
		}
		m.TaskDuration.WithLabelValues(taskType).Observe(time.Since(start).Seconds())
		outcome := rep.Outcome
		if outcome == "" { // a handler that reported nothing
			outcome = tasks.OutcomeRetry
			if err == nil {
				outcome = tasks.OutcomeCancelled
			}
		}
		m.TasksProcessed.WithLabelValues(taskType, outcome).Inc()
		switch outcome {
		case tasks.OutcomeDeadLettered:
			m.DeadLetters.WithLabelValues(rep.Reason).Inc()
		case tasks.OutcomeRetry, tasks.OutcomeRateLimited, tasks.OutcomePaced, tasks.OutcomePaused:
			m.Retries.WithLabelValues(rep.Reason).Inc()
		}
		return err
	})
}
