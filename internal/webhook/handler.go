package webhook

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/producer"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
	"github.com/ghlcancel/ghlcancel/internal/tokens"
	"github.com/ghlcancel/ghlcancel/internal/webhook/signature"
)

// Defaults for Config.
const (
	WindowDefault  = 5 * time.Minute
	MaxBodyDefault = 256 << 10 // HighLevel's events are a few KB
	// seenKeyPrefix + webhookId marks an event whose sweep is queued.
	seenKeyPrefix = "ghlcancel:webhook:seen:"
	// RetryHorizon: HighLevel retries a delivery answered 429 up to 6
	// times about 10 minutes apart. A body this intake answered 429 is
	// remembered this long past its timestamp, and its retries are not
	// refused as stale.
	RetryHorizon = 70 * time.Minute
	// deferredMax bounds the bodies remembered for retries.
	deferredMax = 100_000
	// queueTimeout bounds the Redis work of one delivery: a slow Redis is
	// answered 429 (retried) before HighLevel gives up on the request.
	queueTimeout = 5 * time.Second
)

// Config configures a Handler.
type Config struct {
	Verifier *signature.Verifier
	Rules    *Rules
	Producer *producer.Producer
	// Redis records INSTALL/UNINSTALL events (the agency's registry of
	// locations) and queues install tasks. Nil: those events are ignored.
	Redis redis.UniversalClient
	// Window: events whose timestamp is further than this from now are
	// replays (answered 200, nothing done); ids are remembered for twice
	// as long. Defaults to WindowDefault.
	Window time.Duration
	// MaxBodyBytes bounds a body. Defaults to MaxBodyDefault.
	MaxBodyBytes int64
	Registry     prometheus.Registerer
	Logger       *slog.Logger
	// Now is the clock (tests). Defaults to time.Now.
	Now func() time.Time
}

// Handler serves POST /v1/webhooks/highlevel.
type Handler struct {
	cfg      Config
	received *prometheus.CounterVec
	sweeps   *prometheus.CounterVec

	// deferred holds the bodies answered 429 (sha256 -> until when their
	// retries are taken despite their age). In memory: a retry reaching
	// another replica, or this one after a restart, is refused as stale
	// (README: run webhooks on one replica, or widen the window).
	mu       sync.Mutex
	deferred map[[32]byte]time.Time

	installs *asynq.Client // nil without Config.Redis
}

// Response is the JSON answer to an event.
type Response struct {
	Result     string `json:"result"`
	Reason     string `json:"reason,omitempty"`
	SweepID    string `json:"sweep_id,omitempty"`
	CampaignID string `json:"campaign_id,omitempty"`
}

// NewHandler builds the handler and registers its metrics.
func NewHandler(cfg Config) (*Handler, error) {
	if cfg.Verifier == nil || cfg.Rules == nil || cfg.Producer == nil {
		return nil, errors.New("webhook: Verifier, Rules and Producer are required")
	}
	cfg.Window = cmp.Or(cfg.Window, WindowDefault)
	cfg.MaxBodyBytes = cmp.Or(cfg.MaxBodyBytes, MaxBodyDefault)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	h := &Handler{cfg: cfg, deferred: map[[32]byte]time.Time{},
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ghlcancel_webhooks_total",
			Help: "HighLevel webhook deliveries by event type and result (accepted, ignored, no_rule, replay, invalid, unavailable, missing_signature, bad_signature, legacy_refused).",
		}, []string{"event", "result"}),
		sweeps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ghlcancel_webhook_sweeps_total",
			Help: "Sweeps queued by webhook events, by event type.",
		}, []string{"event"}),
	}
	if cfg.Registry != nil {
		if err := cfg.Registry.Register(h.received); err != nil {
			return nil, err
		}
		if err := cfg.Registry.Register(h.sweeps); err != nil {
			return nil, err
		}
	}
	for _, e := range Supported {
		h.sweeps.WithLabelValues(e)
		h.received.WithLabelValues(e, ResultAccepted)
	}
	h.received.WithLabelValues("unknown", signature.ReasonBadSignature)
	if cfg.Redis != nil {
		h.installs = asynq.NewClientFromRedisClient(cfg.Redis)
	}
	return h, nil
}

func (h *Handler) answer(w http.ResponseWriter, status int, event string, r Response) {
	h.received.WithLabelValues(event, r.Result).Inc()
	w.Header().Set("Content-Type", "application/json")
	if status == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", "5")
	}
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(r)
}

// ServeHTTP verifies, parses and applies the rules to one event.
//
//	401: unsigned or badly signed (nothing queued)
//	400: too large, not JSON, missing type/locationId/timestamp/contact
//	200: accepted (sweep queued), ignored, no_rule, replay
//	429: the sweep could not be queued now (HighLevel retries only on 429)
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "use POST", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, h.cfg.MaxBodyBytes+1))
	if err != nil {
		h.answer(w, http.StatusBadRequest, "unknown", Response{Result: ResultInvalid, Reason: "reading body: " + err.Error()})
		return
	}
	if int64(len(body)) > h.cfg.MaxBodyBytes {
		h.answer(w, http.StatusBadRequest, "unknown", Response{Result: ResultInvalid, Reason: fmt.Sprintf("body is over %d bytes", h.cfg.MaxBodyBytes)})
		return
	}
	if _, err := h.cfg.Verifier.Verify(body, r.Header); err != nil {
		var ve *signature.VerifyError
		errors.As(err, &ve)
		h.cfg.Logger.Warn("webhook refused", "reason", ve.Reason, "remote", r.RemoteAddr)
		h.answer(w, http.StatusUnauthorized, "unknown", Response{Result: ve.Reason, Reason: ve.Error()})
		return
	}
	ev, err := ParseEvent(body)
	if err != nil {
		h.answer(w, http.StatusBadRequest, "unknown", Response{Result: ResultInvalid, Reason: err.Error()})
		return
	}
	label := EventLabel(ev.Type)
	now := h.cfg.Now()
	sum := sha256.Sum256(body)
	// An app event carries its own order: the registry keeps the latest
	// install or uninstall of a location and a redelivery changes nothing,
	// so one delivered late, within HighLevel's retries, is recorded
	// (dropping a late re-INSTALL left the location uninstalled and its
	// cancels dead-lettered without a call). Older ones are still replays:
	// a location may have no registry entry to order them against.
	appEvent := ev.Type == EventInstall || ev.Type == EventUninstall
	maxAge := h.cfg.Window
	if appEvent {
		maxAge = max(h.cfg.Window, RetryHorizon)
	}
	if age := now.Sub(ev.Timestamp); (age > maxAge || age < -h.cfg.Window) && !h.retrying(sum, now) {
		where := fmt.Sprintf("%s old, older than the %s window", age.Round(time.Second), maxAge)
		if age < 0 {
			where = fmt.Sprintf("%s ahead of this server's clock, more than the %s allowed", (-age).Round(time.Second), h.cfg.Window)
		}
		h.answer(w, http.StatusOK, label, Response{Result: ResultReplay, Reason: fmt.Sprintf("timestamp %s is %s", ev.Timestamp.UTC().Format(time.RFC3339), where)})
		return
	}
	if appEvent {
		h.appEvent(w, r, ev, label, sum)
		return
	}
	d := h.cfg.Rules.Decide(ev)
	if d.Result != ResultAccepted {
		h.answer(w, http.StatusOK, label, Response{Result: d.Result, Reason: d.Why})
		return
	}
	if err := ev.Validate(); err != nil {
		h.answer(w, http.StatusBadRequest, label, Response{Result: ResultInvalid, Reason: err.Error()})
		return
	}
	id := ev.WebhookID
	if id == "" {
		id = "sha256:" + hex.EncodeToString(sum[:])
	}
	qctx, cancel := context.WithTimeout(r.Context(), queueTimeout)
	defer cancel()
	st, err := h.cfg.Producer.Sweep(qctx, producer.SweepRequest{
		Locations: []string{ev.LocationID}, ContactID: ev.ContactID, Channel: d.Channel,
		CampaignID: CampaignID(ev.Type, now), Lane: LaneFor(ev.Type), Queue: LaneFor(ev.Type),
		Event: ev.Type, EventID: ev.WebhookID, EventAt: ev.Timestamp,
		DedupeKey: seenKeyPrefix + id, DedupeTTL: 2 * h.cfg.Window,
	})
	if err == nil || errors.Is(err, producer.ErrDuplicate) {
		h.forget(sum)
	}
	switch {
	case errors.Is(err, producer.ErrDuplicate):
		h.answer(w, http.StatusOK, label, Response{Result: ResultReplay, Reason: "webhookId already seen"})
	case err != nil && !errors.Is(err, producer.ErrUnavailable):
		h.answer(w, http.StatusBadRequest, label, Response{Result: ResultInvalid, Reason: err.Error()})
	case err != nil:
		h.remember(sum, ev.Timestamp.Add(RetryHorizon))
		h.cfg.Logger.Error("webhook: could not queue the sweep; answering 429 so HighLevel retries", "event", ev.Type, "location_id", ev.LocationID, "err", err)
		h.answer(w, http.StatusTooManyRequests, label, Response{Result: ResultUnavailable, Reason: "the queue is unavailable; retry"})
	default:
		h.sweeps.WithLabelValues(label).Inc()
		h.cfg.Logger.Info("webhook: sweep queued", "event", ev.Type, "webhook_id", ev.WebhookID, "location_id", ev.LocationID,
			"contact_id", ev.ContactID, "channel", d.Channel, "sweep_id", st.SweepID, "campaign_id", st.CampaignID)
		h.answer(w, http.StatusOK, label, Response{Result: ResultAccepted, SweepID: st.SweepID, CampaignID: st.CampaignID})
	}
}

// appEvent records an INSTALL or UNINSTALL at a location in the agency's
// registry (an UNINSTALL forgets its minted token at once; an event older
// than the one recorded changes nothing) and, for an INSTALL, queues an
// install task that mints the location's token, retried until the agency
// pair is stored. Both are idempotent, so a redelivery is harmless; a Redis
// failure is answered 429 (HighLevel retries).
func (h *Handler) appEvent(w http.ResponseWriter, r *http.Request, ev Event, label string, sum [32]byte) {
	if h.installs == nil {
		h.answer(w, http.StatusOK, label, Response{Result: ResultIgnored, Reason: "this intake has no Redis for the agency's registry"})
		return
	}
	if ev.LocationID == "" {
		h.cfg.Logger.Warn("webhook: agency-level app event; record its locations with `enqueue tokens agency locations`", "event", ev.Type, "company_id", ev.CompanyID)
		h.answer(w, http.StatusOK, label, Response{Result: ResultIgnored,
			Reason: "an agency-level event names no location; list installs with `enqueue tokens agency locations`"})
		return
	}
	if err := ghl.ValidateID(ev.LocationID); err != nil {
		h.answer(w, http.StatusBadRequest, label, Response{Result: ResultInvalid, Reason: "locationId: " + err.Error()})
		return
	}
	qctx, cancel := context.WithTimeout(r.Context(), queueTimeout)
	defer cancel()
	install := ev.Type == EventInstall
	written, err := tokens.RecordAppEvent(qctx, h.cfg.Redis, ev.LocationID, install, ev.Timestamp)
	if err == nil && install && written {
		key := ev.WebhookID
		if key == "" {
			key = hex.EncodeToString(sum[:])
		}
		var t *asynq.Task
		if t, err = tasks.NewInstallTask(tasks.InstallPayload{LocationID: ev.LocationID, CompanyID: ev.CompanyID,
			EventID: ev.WebhookID, EventAt: ev.Timestamp.UnixMilli()}, key); err == nil {
			if _, err = h.installs.EnqueueContext(qctx, t); errors.Is(err, asynq.ErrTaskIDConflict) {
				err = nil // a redelivery: its task is queued already
			}
		}
	}
	if err != nil {
		h.remember(sum, ev.Timestamp.Add(RetryHorizon))
		h.cfg.Logger.Error("webhook: could not record an app event; answering 429 so HighLevel retries", "event", ev.Type, "location_id", ev.LocationID, "err", err)
		h.answer(w, http.StatusTooManyRequests, label, Response{Result: ResultUnavailable, Reason: "the queue is unavailable; retry"})
		return
	}
	h.forget(sum)
	if !written {
		h.answer(w, http.StatusOK, label, Response{Result: ResultReplay, Reason: "a later install or uninstall of this location is recorded"})
		return
	}
	h.cfg.Logger.Info("webhook: app event recorded", "event", ev.Type, "location_id", ev.LocationID, "company_id", ev.CompanyID)
	h.answer(w, http.StatusOK, label, Response{Result: ResultAccepted})
}

// retrying reports whether body was answered 429 here and may still be
// retried by HighLevel.
func (h *Handler) retrying(sum [32]byte, now time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	until, ok := h.deferred[sum]
	return ok && now.Before(until)
}

func (h *Handler) remember(sum [32]byte, until time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.deferred) >= deferredMax {
		now := h.cfg.Now()
		for k, u := range h.deferred {
			if !now.Before(u) {
				delete(h.deferred, k)
			}
		}
		if len(h.deferred) >= deferredMax {
			h.cfg.Logger.Warn("webhook: too many deliveries waiting for HighLevel's retry; this one's retry will be refused as stale if it comes after the replay window")
			return
		}
	}
	h.deferred[sum] = until
}

func (h *Handler) forget(sum [32]byte) {
	h.mu.Lock()
	delete(h.deferred, sum)
	h.mu.Unlock()
}

// CampaignID groups an event type's sweeps of one UTC day:
// auto-inboundmessage-20261128.
func CampaignID(eventType string, t time.Time) string {
	return "auto-" + strings.ToLower(eventType) + "-" + t.UTC().Format("20060102")
}
