package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/hibiken/asynq"

	"github.com/ghlcancel/ghlcancel/internal/campaign"
	"github.com/ghlcancel/ghlcancel/internal/deadletter"
	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/tokens"
)

// Outcomes of one task attempt, as reported to the metrics middleware.
const (
	OutcomeCancelled      = string(ghl.OutcomeCancelled)
	OutcomeNotCancellable = string(ghl.OutcomeNotCancellable)
	OutcomeDeadLettered   = "dead_lettered"
	OutcomeRetry          = "retry"
	OutcomeRateLimited    = "rate_limited"
	// OutcomeExpired: the message's send time passed before the task ran;
	// no call is made (it has gone out already).
	OutcomeExpired = "expired"
	// OutcomePaused: the circuit breaker is open; the task went back to the
	// queue without a call and without using a retry.
	OutcomePaused = "paused"
)

// Outcomes lists every outcome label, to initialise metrics at zero.
var Outcomes = []string{OutcomeCancelled, OutcomeNotCancellable, OutcomeExpired, OutcomeDeadLettered, OutcomeRetry, OutcomeRateLimited, OutcomePaused}

// Dead-letter and retry reasons that are not API reasons.
const (
	ReasonInvalidPayload = "invalid_payload"
	ReasonUnknownType    = "unknown_type"
	ReasonPaced          = "paced"   // the location's next slot is too far: snoozed
	ReasonLimiter        = "limiter" // the limiter could not reach Redis
	ReasonCircuitOpen    = "circuit_open"
)

// Breaker pauses calls while HighLevel fails (internal/breaker.Breaker).
type Breaker interface {
	// Allow returns an error with a SnoozeFor() method while calls are
	// paused; probe marks the one call let through to test recovery.
	Allow() (probe bool, err error)
	// Record reports whether the call failed (5xx, timeout, no connection).
	Record(failure, probe bool)
}

// Pacer paces calls per location (internal/ratelimit.Limiter).
type Pacer interface {
	// Reserve waits for the location's next slot for the task, or returns
	// an error with a SnoozeFor() method when that slot is too far away.
	// Urgent calls do not queue behind the slots other tasks reserved.
	Reserve(ctx context.Context, location, taskID string, urgent bool) error
	// Observe learns from an answer's rate-limit headers and 429s.
	Observe(ctx context.Context, location string, l ghl.Limits, rl *ghl.RateLimitError) error
}

// Report is what one attempt ended with. The handler fills it in; the
// metrics middleware reads it. Reason is set for retries and dead letters.
type Report struct {
	Outcome string
	Reason  string
}

type reportKey struct{}

// WithReport returns a context carrying an empty Report for the handler to fill.
func WithReport(ctx context.Context) (context.Context, *Report) {
	r := &Report{}
	return context.WithValue(ctx, reportKey{}, r), r
}

func reportFrom(ctx context.Context) *Report {
	if r, ok := ctx.Value(reportKey{}).(*Report); ok {
		return r
	}
	return &Report{}
}

// InlineWaitMaxDefault: a rate-limit wait up to this long is slept in the
// handler; a longer one returns the task to the queue with the exact delay.
const InlineWaitMaxDefault = 2 * time.Second

// Handler runs cancel tasks. Its dependencies are explicit; build it once.
type Handler struct {
	API    *ghl.Client
	Tokens tokens.Source
	Dead   *deadletter.Store
	Logger *slog.Logger
	// Pacer, when set, paces calls per location across all workers.
	Pacer Pacer
	// Campaigns, when set, records each task's terminal outcome once per campaign.
	Campaigns *campaign.Tracker
	// Breaker, when set, pauses calls while HighLevel answers mostly 5xx.
	Breaker Breaker
	// Now defaults to time.Now.
	Now func() time.Time
	// InlineWaitMax: without a Pacer, a 429 asking for at most this long is
	// waited out in the handler. Defaults to InlineWaitMaxDefault.
	InlineWaitMax time.Duration
}

// ProcessTask implements asynq.Handler.
func (h *Handler) ProcessTask(ctx context.Context, t *asynq.Task) error {
	rep := reportFrom(ctx)
	taskID, _ := asynq.GetTaskID(ctx)
	retried, _ := asynq.GetRetryCount(ctx)
	maxRetry, _ := asynq.GetMaxRetry(ctx)
	queue, _ := asynq.GetQueueName(ctx)
	final := retried >= maxRetry
	rec := deadletter.Record{TaskID: taskID, Queue: queue, Attempts: retried + 1}

	kind, ok := KindFor(t.Type())
	if !ok {
		rec.Reason, rec.APIMessage, rec.Payload = ReasonUnknownType, "unknown task type "+t.Type(), bounded(t.Payload())
		return h.dead(ctx, rep, rec, errors.New(rec.APIMessage))
	}
	rec.Kind = string(kind)
	var p CancelPayload
	if err := json.Unmarshal(t.Payload(), &p); err != nil {
		rec.Reason, rec.APIMessage, rec.Payload = ReasonInvalidPayload, "payload is not valid JSON", bounded(t.Payload())
		return h.dead(ctx, rep, rec, errors.New(rec.APIMessage))
	}
	rec.MessageID, rec.LocationID, rec.CampaignID, rec.SendAt = p.MessageID, p.LocationID, p.CampaignID, p.SendAt
	if err := p.Validate(); err != nil {
		rec.Reason, rec.APIMessage, rec.Payload = ReasonInvalidPayload, err.Error(), bounded(t.Payload())
		return h.dead(ctx, rep, rec, err)
	}
	// logf attaches the task's attributes only when the level is enabled:
	// most tasks log nothing at the default level, and the attributes would
	// be formatted for nothing on every task.
	logf := func(level slog.Level, msg string, args ...any) {
		l := h.logger()
		if !l.Enabled(ctx, level) {
			return
		}
		l.With("task_id", taskID, "kind", kind, "location_id", p.LocationID,
			"campaign_id", p.CampaignID, "attempt", retried+1).Log(ctx, level, msg, args...)
	}

	if p.SendAt > 0 && h.now().Unix() >= p.SendAt {
		// Its send time passed: it has gone out (or is going); a cancel
		// cannot help and would spend rate budget other cancels need.
		logf(slog.LevelInfo, "send time passed before the cancel ran", "send_at", time.Unix(p.SendAt, 0).UTC())
		return h.finish(ctx, rep, p.CampaignID, taskID, campaign.Outcome{Outcome: campaign.Expired, Attempts: retried + 1}, OutcomeExpired)
	}

	token, err := h.Tokens.Token(ctx, p.LocationID)
	if errors.Is(err, tokens.ErrNoToken) {
		rec.Reason, rec.APIMessage = string(ghl.ReasonNoToken), "no token configured for this location: add it to GHL_TOKENS_FILE or load it with `enqueue tokens set`"
		return h.dead(ctx, rep, rec, err)
	}
	var ge *tokens.GrantError
	if errors.As(err, &ge) {
		rec.Reason, rec.APIMessage = ge.Reason, ge.Error()
		return h.dead(ctx, rep, rec, err)
	}
	if err != nil {
		rep.Outcome, rep.Reason = OutcomeRetry, string(ghl.ReasonTokenSource)
		return fmt.Errorf("token for location %s: %w", p.LocationID, err)
	}

	inlineMax := h.InlineWaitMax
	if inlineMax == 0 {
		inlineMax = InlineWaitMaxDefault
	}
	refreshed := false
	for round := 0; ; round++ {
		if h.Pacer != nil {
			if err := h.Pacer.Reserve(ctx, p.LocationID, taskID, queue == QueueUrgent); err != nil {
				var sn snoozer
				if !errors.As(err, &sn) {
					rep.Outcome, rep.Reason = OutcomeRetry, ReasonLimiter
					return fmt.Errorf("rate limiter for location %s: %w", p.LocationID, err)
				}
				// asynq archives a task on its final attempt whatever
				// IsFailure says, so there a snooze is slept here if time allows.
				if final {
					if round < maxRounds && fitsDeadline(ctx, sn.SnoozeFor()) {
						if sleep(ctx, sn.SnoozeFor()) != nil {
							return err
						}
						continue
					}
					// asynq would archive it silently: record it instead.
					rec.Reason, rec.APIMessage = string(ghl.ReasonRateLimited), err.Error()
					return h.dead(ctx, rep, rec, err)
				}
				rep.Outcome, rep.Reason = OutcomeRateLimited, ReasonPaced
				return err
			}
		}
		probe := false
		if h.Breaker != nil {
			var berr error
			if probe, berr = h.Breaker.Allow(); berr != nil {
				var sn snoozer
				errors.As(berr, &sn)
				if final { // asynq would archive it: wait here if time allows
					if round < maxRounds && sn != nil && fitsDeadline(ctx, sn.SnoozeFor()) {
						if sleep(ctx, sn.SnoozeFor()) != nil {
							return berr
						}
						continue
					}
					rec.Reason, rec.APIMessage = ReasonCircuitOpen, berr.Error()
					return h.dead(ctx, rep, rec, berr)
				}
				rep.Outcome, rep.Reason = OutcomePaused, ReasonCircuitOpen
				return berr
			}
		}
		res, err := h.API.Cancel(ctx, kind, p.MessageID, token)
		if h.Breaker != nil && (ctx.Err() == nil || probe) {
			h.Breaker.Record(ctx.Err() != nil || apiFailure(err), probe)
		}
		var rl *ghl.RateLimitError
		errors.As(err, &rl)
		if h.Pacer != nil {
			if oerr := h.Pacer.Observe(ctx, p.LocationID, limitsOf(res, err), rl); oerr != nil {
				logf(slog.LevelWarn, "rate limiter could not record an answer", "error", oerr)
			}
		}
		if err == nil {
			logf(slog.LevelDebug, "cancel done", "outcome", res.Outcome, "http_status", res.StatusCode)
			status := res.StatusCode
			if res.InnerStatus != 0 {
				status = res.InnerStatus
			}
			return h.finish(ctx, rep, p.CampaignID, taskID,
				campaign.Outcome{Outcome: string(res.Outcome), HTTPStatus: status, Attempts: retried + 1}, string(res.Outcome))
		}
		if rl != nil {
			// With a pacer the 429 became a shared cool-down: the next
			// Reserve waits it out or snoozes. Without one, wait here when short.
			if round < maxRounds && (h.Pacer != nil || rl.RetryAfter <= inlineMax || final) && fitsDeadline(ctx, rl.RetryAfter) {
				if h.Pacer == nil && sleep(ctx, rl.RetryAfter) != nil {
					return err
				}
				continue
			}
			if final { // asynq would archive it silently: record it instead
				rec.Reason, rec.HTTPStatus, rec.APIMessage = string(ghl.ReasonRateLimited), 429, rl.Message
				return h.dead(ctx, rep, rec, err)
			}
			rep.Outcome, rep.Reason = OutcomeRateLimited, string(ghl.ReasonRateLimited)
			logf(slog.LevelDebug, "rate limited", "retry_after", rl.RetryAfter, "daily", rl.Daily)
			return err
		}
		var e *ghl.Error
		if !errors.As(err, &e) {
			e = &ghl.Error{Reason: ghl.ReasonNetwork, Retryable: true, Message: err.Error()}
		}
		// A 401 with a refreshable source: refresh once, call again.
		if r, ok := h.Tokens.(tokens.Refresher); ok && e.Reason == ghl.ReasonUnauthorized && !refreshed {
			refreshed = true
			fresh, rerr := r.Refresh(ctx, p.LocationID, token)
			switch {
			case errors.As(rerr, &ge):
				rec.Reason, rec.HTTPStatus, rec.APIMessage = ge.Reason, 401, ge.Error()
				return h.dead(ctx, rep, rec, rerr)
			case rerr != nil:
				rep.Outcome, rep.Reason = OutcomeRetry, string(ghl.ReasonTokenSource)
				return fmt.Errorf("refreshing the token after a 401: %w", rerr)
			}
			token = fresh
			continue
		}
		rec.Reason, rec.HTTPStatus, rec.APIMessage = string(e.Reason), e.StatusCode, e.Message
		if e.InnerStatus != 0 {
			rec.HTTPStatus = e.InnerStatus
		}
		if !e.Retryable || final {
			return h.dead(ctx, rep, rec, err)
		}
		rep.Outcome, rep.Reason = OutcomeRetry, string(e.Reason)
		logf(slog.LevelInfo, "cancel failed, will retry", "reason", e.Reason, "http_status", e.StatusCode, "error", err)
		h.retrying(ctx, p.CampaignID, taskID)
		return err
	}
}

// apiFailure: the call says HighLevel is failing (what Classify marks
// retryable: 5xx, 408, timeout, no connection, unreadable 2xx), as opposed to
// answering (2xx, 4xx, and 429, which is a *RateLimitError).
func apiFailure(err error) bool {
	if err == nil {
		return false
	}
	var e *ghl.Error
	if errors.As(err, &e) {
		return e.Retryable
	}
	var rl *ghl.RateLimitError
	return !errors.As(err, &rl)
}

// maxRounds bounds in-handler waits (pacing and 429s) within one attempt.
const maxRounds = 5

// limitsOf returns the rate-limit headers of whatever came back.
func limitsOf(res *ghl.Result, err error) ghl.Limits {
	if res != nil {
		return res.Limits
	}
	var e *ghl.Error
	if errors.As(err, &e) {
		return e.Limits
	}
	var rl *ghl.RateLimitError
	if errors.As(err, &rl) {
		return rl.Limits
	}
	return ghl.Limits{}
}

// finish records a terminal, non-dead outcome in the campaign. If that
// cannot be written the task is retried, so a campaign never misses one.
func (h *Handler) finish(ctx context.Context, rep *Report, campaignID, taskID string, o campaign.Outcome, outcome string) error {
	ctx, cancel := recordContext(ctx)
	defer cancel()
	if h.Campaigns != nil {
		if _, err := h.Campaigns.Terminal(ctx, campaignID, taskID, o); err != nil {
			rep.Outcome, rep.Reason = OutcomeRetry, "campaign_write"
			return fmt.Errorf("recording the outcome in campaign %s failed, will retry: %w", campaignID, err)
		}
	}
	rep.Outcome = outcome
	return nil
}

// recordContext lets an outcome that already happened at HighLevel be
// recorded even when the task's context is being cancelled (shutdown), so
// it is not re-run and recorded differently; bounded by its own timeout.
func recordContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
}

func (h *Handler) retrying(ctx context.Context, campaignID, taskID string) {
	if h.Campaigns != nil {
		if err := h.Campaigns.Retrying(ctx, campaignID, taskID); err != nil {
			h.logger().Warn("campaign: could not mark a task retrying", "error", err)
		}
	}
}

func (h *Handler) now() time.Time {
	if h.Now != nil {
		return h.Now()
	}
	return time.Now()
}

// dead records a dead letter and tells asynq not to retry. If the record
// cannot be written the task is retried instead, so it is never lost.
func (h *Handler) dead(ctx context.Context, rep *Report, rec deadletter.Record, cause error) error {
	ctx, cancel := recordContext(ctx)
	defer cancel()
	if err := h.Dead.Add(ctx, rec); err != nil {
		rep.Outcome, rep.Reason = OutcomeRetry, "dead_letter_write"
		return fmt.Errorf("recording dead letter (%s) failed, will retry: %w", rec.Reason, err)
	}
	if h.Campaigns != nil {
		if _, err := h.Campaigns.Terminal(ctx, rec.CampaignID, rec.TaskID, campaign.Outcome{
			Outcome: campaign.DeadLettered, Reason: rec.Reason, HTTPStatus: rec.HTTPStatus, Attempts: rec.Attempts}); err != nil {
			rep.Outcome, rep.Reason = OutcomeRetry, "campaign_write"
			return fmt.Errorf("recording dead letter (%s) in campaign %s failed, will retry: %w", rec.Reason, rec.CampaignID, err)
		}
	}
	rep.Outcome, rep.Reason = OutcomeDeadLettered, rec.Reason
	h.logger().Warn("dead letter", "task_id", rec.TaskID, "kind", rec.Kind, "location_id", rec.LocationID,
		"campaign_id", rec.CampaignID, "reason", rec.Reason, "http_status", rec.HTTPStatus,
		"api_message", rec.APIMessage, "attempts", rec.Attempts)
	return fmt.Errorf("dead letter %s: %w: %w", rec.Reason, cause, asynq.SkipRetry)
}

func (h *Handler) logger() *slog.Logger {
	if h.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return h.Logger
}

func bounded(b []byte) string {
	const limit = 1024
	if len(b) > limit {
		b = b[:limit]
	}
	return fmt.Sprintf("%q", b)
}

func fitsDeadline(ctx context.Context, d time.Duration) bool {
	dl, ok := ctx.Deadline()
	// Leave room for the call itself after the wait.
	return !ok || time.Until(dl) > d+5*time.Second
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
