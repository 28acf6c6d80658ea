package tasks

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"

	"github.com/hibiken/asynq"

	"github.com/ghlcancel/ghlcancel/internal/deadletter"
	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/ledger"
	"github.com/ghlcancel/ghlcancel/internal/ratelimit"
	"github.com/ghlcancel/ghlcancel/internal/tokens"
)

// Outcomes of one task attempt, as reported to the metrics middleware.
const (
	OutcomeCancelled      = string(ghl.OutcomeCancelled)
	OutcomeNotCancellable = string(ghl.OutcomeNotCancellable)
	OutcomeDeadLettered   = "dead_lettered"
	OutcomeRetry          = "retry"
	// OutcomeRateLimited: HighLevel answered 429 (or the location cools
	// down after one, or waits for its daily budget): the task comes back
	// later without using a retry.
	OutcomeRateLimited = "rate_limited"
	// OutcomePaced: the location's next pacing slot was too far off; the
	// task comes back for its turn (no call made, no retry used). The most
	// common attempt on a busy location, and no sign of trouble.
	OutcomePaced = "paced"
	// OutcomeExpired: the message's send time passed before the task ran;
	// no call is made (it has gone out already).
	OutcomeExpired = "expired"
	// OutcomePaused: the circuit breaker is open; the task went back to the
	// queue without a call and without using a retry.
	OutcomePaused = "paused"
	// OutcomeRecorded: an earlier attempt of this task already recorded its
	// outcome (a re-delivery after a crash); nothing was called or written.
	OutcomeRecorded = "already_recorded"
	// OutcomeUnrecorded: the task's last attempt could not write its
	// outcome (Redis failed through the write's retries); asynq archives
	// the task with none. HighLevel may have cancelled the message.
	OutcomeUnrecorded = "unrecorded"
	// OutcomeSuperseded: the task named the wrong kind of a message that is
	// also queued or done as the right kind; it was dropped (no dead letter,
	// out of its campaign's total; its record says superseded).
	OutcomeSuperseded = ledger.Superseded
	// OutcomeAlreadySent and OutcomeNotFound: verified "not found" cancels.
	OutcomeAlreadySent = "already_sent"
	OutcomeNotFound    = "not_found"
	// Sweep deliveries: the sweep finished, failed for good, or goes on in
	// a new delivery.
	OutcomeSwept          = "swept"
	OutcomeSweepFailed    = "sweep_failed"
	OutcomeSweepContinues = "sweep_continues"
)

// Outcomes lists every outcome label, to initialise metrics at zero.
var Outcomes = []string{OutcomeCancelled, OutcomeNotCancellable, OutcomeAlreadySent, OutcomeNotFound, OutcomeExpired,
	OutcomeDeadLettered, OutcomeRetry, OutcomeRateLimited, OutcomePaced, OutcomePaused, OutcomeRecorded, OutcomeUnrecorded,
	OutcomeSuperseded, OutcomeSwept, OutcomeSweepFailed, OutcomeSweepContinues}

// Dead-letter and retry reasons that are not API reasons.
const (
	ReasonInvalidPayload = "invalid_payload"
	ReasonUnknownType    = "unknown_type"
	ReasonPaced          = "paced"   // the location's next slot is too far: snoozed
	ReasonLimiter        = "limiter" // the limiter (Redis) failed before the call
	ReasonCircuitOpen    = "circuit_open"
	ReasonPanic          = "panic"
	// ReasonInterrupted: the attempt's time ran out (or the worker is
	// shutting down) before HighLevel answered.
	ReasonInterrupted = "interrupted"
	// ReasonOutcomeWrite: HighLevel answered but the outcome could not be
	// recorded (Redis failed after bounded retries of the write).
	ReasonOutcomeWrite = "outcome_write"
)

// Breaker pauses calls while HighLevel fails (internal/breaker.Breaker).
type Breaker interface {
	// Allow returns an error with a SnoozeFor() method while calls are
	// paused; probe marks the one call let through to test recovery.
	Allow() (probe bool, err error)
	// Record reports whether the call failed (5xx, timeout, no connection).
	Record(failure, probe bool)
	// Abandon says an allowed call did not go out after all.
	Abandon(probe bool)
}

// Pacer admits calls per location (internal/ratelimit.Limiter).
type Pacer interface {
	// Admit runs right before a call. It checks the message's record (an
	// outcome recorded by an earlier attempt comes back in
	// Admission.Recorded: do not call), then waits for a slot of the
	// location, or returns an error with a SnoozeFor() method when the
	// slot is too far away. Granting a slot leaves the "call sent" mark.
	Admit(ctx context.Context, r ratelimit.Request) (ledger.Admission, error)
	// Observe learns from an answer's rate-limit headers and 429s.
	Observe(ctx context.Context, location string, l ghl.Limits, rl *ghl.RateLimitError) error
}

// RouteWatch is told whether each answer came from HighLevel's route or
// was misrouted (ghl.RouteHealth).
type RouteWatch interface {
	Observe(misrouted bool, request string)
}

// Report is what one attempt ended with. settle fills it in; the metrics
// middleware reads it. Reason is set for retries and dead letters.
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

// ReportOf returns the Report WithReport put in ctx (a throwaway one if none).
func ReportOf(ctx context.Context) *Report { return reportFrom(ctx) }

func reportFrom(ctx context.Context) *Report {
	if r, ok := ctx.Value(reportKey{}).(*Report); ok {
		return r
	}
	return &Report{}
}

// InlineWaitMaxDefault: a rate-limit wait up to this long is slept in the
// handler; a longer one returns the task to the queue with the exact delay.
const InlineWaitMaxDefault = 2 * time.Second

// SettleReserveMax is the part of a task's deadline kept for settling it:
// the call and its waits stop that much before asynq's deadline, so the
// outcome is always written before asynq gives up on the task.
const SettleReserveMax = 5 * time.Second

// Handler runs cancel tasks. Its dependencies are explicit; build it once.
type Handler struct {
	API    *ghl.Client
	Tokens tokens.Source
	// Ledger records every task's fate. Required.
	Ledger *ledger.Ledger
	Logger *slog.Logger
	// Pacer, when set, paces calls per location across all workers.
	Pacer Pacer
	// Breaker, when set, pauses calls while HighLevel answers mostly 5xx.
	Breaker Breaker
	// Routes, when set, watches for misrouted answers (a wrong GHL_BASE_URL).
	Routes RouteWatch
	// Now defaults to time.Now.
	Now func() time.Time
	// InlineWaitMax: without a Pacer, a 429 asking for at most this long is
	// waited out in the handler. Defaults to InlineWaitMaxDefault.
	InlineWaitMax time.Duration
	// Verify reads a message back when its cancel finds nothing to cancel,
	// to record already_sent or not_found instead of not_cancellable (which
	// it keeps for a message reading "failed" with no call of ours).
	Verify bool
	// Events, when set, is told how long after its webhook event each
	// event-driven cancel makes its first call.
	Events EventObserver
	// StillScheduledRetries bounds how often a message that reads back as
	// scheduled after a "not found" cancel is tried again before it is
	// dead-lettered still_scheduled. Defaults to StillScheduledRetriesDefault.
	StillScheduledRetries int
	// Stopping, when set, says the worker's shutdown timeout is (about to
	// be) over: an attempt whose context is then cancelled was put back by
	// asynq as it was (no retry used; TakenBack).
	Stopping func() bool
}

// TakenBack: the attempt's context was cancelled because the worker is
// stopping, so asynq has put the task back as it was (no retry used, and
// what the handler returns is ignored). Such an attempt did not fail.
func TakenBack(ctx context.Context, stopping func() bool) bool {
	return errors.Is(ctx.Err(), context.Canceled) && stopping != nil && stopping()
}

// EventObserver receives event-to-cancel latencies.
type EventObserver interface {
	EventCancel(event string, d time.Duration)
}

// StillScheduledRetriesDefault is Handler.StillScheduledRetries' default.
const StillScheduledRetriesDefault = 5

// ReasonStillScheduled: the cancel found nothing, yet the message reads back
// as scheduled.
const ReasonStillScheduled = "still_scheduled"

// sentStatuses are the message statuses that mean it went out (or tried
// to). HighLevel documents no "cancelled" status; a cancelled message reads
// back "failed", like one whose send failed, so "failed" is not here.
var sentStatuses = map[string]bool{"connected": true, "delivered": true, "opened": true,
	"pending": true, "read": true, "sent": true, "undelivered": true, "clicked": true, "opt_out": true, "queued": true}

// notFound decides what a "not found" cancel answer means. Without Verify it
// is not_cancellable, or cancelled when our own earlier call went out and
// its answer was lost. With Verify the message is read back once (paced
// like any call): scheduled means try the cancel again; a status that says
// it went out is already_sent; "failed" is our own earlier call's cancel
// after one, else not_cancellable with reason failed (HighLevel has no
// "cancelled" status: the message may have been cancelled elsewhere, by
// hand, another tool or a run whose records expired, or its send failed);
// no such message is not_found.
func (h *Handler) notFound(ctx context.Context, a *attempt, token string, status int, earlier bool) result {
	return h.verify(ctx, a, token, status, earlier, ledger.StageReadBack, false)
}

// verify is notFound from a verify step: ledger.StageReadBack (read the
// message back as its kind) or ledger.StageOtherKind (its kind has nothing:
// read it as the other kind). admitted: this delivery's admission is for
// the first read (an earlier delivery's cancel answered "not found" and
// left the step; see ledger.StageReadBack). A read that cannot be made now
// (no slot, a 429, a failure) leaves its step for the next delivery, which
// makes that read instead of sending the cancel again: on a location with
// a backlog, every delivery used to spend its one slot on the cancel and
// never get one for the read-back, and the message never settled.
func (h *Handler) verify(ctx context.Context, a *attempt, token string, status int, earlier bool, step string, admitted bool) result {
	if !h.Verify {
		if earlier {
			return result{fate: fateDone, outcome: ledger.Cancelled, reason: ledger.ReasonEarlierAttempt, status: status}
		}
		return done(ledger.NotCancellable, status)
	}
	if step == ledger.StageOtherKind {
		return h.otherKindOrNotFound(ctx, a, token, status, earlier, admitted)
	}
	m, err := h.readBack(ctx, a, a.kind, token, admitted)
	switch {
	case errors.Is(err, ghl.ErrNotFound):
		return h.otherKindOrNotFound(ctx, a, token, status, earlier, false)
	case err != nil:
		r := h.readBackFailed(a, err)
		r.stage = ledger.Stage(ledger.StageReadBack, status)
		return r
	case m.Status == "scheduled" && a.kind == ghl.KindMessage && m.IsEmail():
		// An email's conversation message id: the message cancel cannot
		// reach it, however often it is tried.
		return emailConversationID(m, status)
	case m.Status == "scheduled":
		limit := cmp.Or(h.StillScheduledRetries, StillScheduledRetriesDefault)
		err := fmt.Errorf("the cancel found nothing to cancel, yet the message reads back as scheduled")
		if a.retried >= limit {
			return dead(ReasonStillScheduled, status, err.Error()+fmt.Sprintf(" (%d attempts)", a.retried+1), err)
		}
		r := retry(ReasonStillScheduled, err)
		r.stage = ledger.StageClear // the cancel goes again
		return r
	case m.Status == "failed" && earlier:
		return result{fate: fateDone, outcome: ledger.Cancelled, reason: ledger.ReasonEarlierAttempt, status: status}
	case m.Status == "failed":
		return result{fate: fateDone, outcome: ledger.NotCancellable, reason: m.Status, status: status}
	case sentStatuses[m.Status]:
		return result{fate: fateDone, outcome: ledger.AlreadySent, reason: m.Status, status: status}
	}
	// A status HighLevel did not document: say what it was.
	return result{fate: fateDone, outcome: ledger.AlreadySent, reason: cmp.Or(m.Status, "unknown"), status: status}
}

// otherKindOrNotFound: the message's kind has nothing under the id; read
// it as the other kind (asOtherKind), else it is not_found.
func (h *Handler) otherKindOrNotFound(ctx context.Context, a *attempt, token string, status int, earlier, admitted bool) result {
	if r, ok := h.asOtherKind(ctx, a, token, status, admitted); ok {
		return r
	}
	r := done(ledger.NotFound, status)
	if earlier {
		r.reason = ledger.ReasonEarlierAttempt
	}
	return r
}

// ReasonTokenKey: the location's stored OAuth tokens do not decrypt with
// this worker's GHL_TOKEN_KEY.
const ReasonTokenKey = "token_key"

// TokenKeyRetries: a token_key failure is retried this many times before
// it is a dead letter (a worker started with an old environment, a pair
// re-sealed by a worker with another key during a rollout), not for a day.
const TokenKeyRetries = 5

// TokenKeyRetry says whether a dead token verdict is a token_key failure
// still worth retrying after retried retries (the last try is settle's).
func TokenKeyRetry(v TokenVerdict, retried int) bool {
	return v.Fate == FateDead && v.Reason == ReasonTokenKey && retried < TokenKeyRetries
}

// ReasonWrongKind: the cancel and the read-back found nothing of the task's
// kind, but HighLevel has the other kind under the id (an email's id sent
// as a message, or the reverse). A requeue sends it as the other kind, and
// queuing the right kind takes the wrong one's dead letter out of its
// campaign (the enqueue rule).
const ReasonWrongKind = ledger.ReasonWrongKind

// ReasonEmailConversationID: the id is a scheduled email's conversation
// message id; HighLevel cancels an email by its emailMessageId, another id
// (named in the dead letter's message).
const ReasonEmailConversationID = "email_conversation_id"

// asOtherKind reads a message found as neither a cancel nor a read-back of
// its task's kind as the other kind: an email's emailMessageId sent as a
// message (a file run without --kind email), or a message id sent as an
// email. An answer means the task named the wrong kind: a dead letter
// wrong_kind saying what HighLevel has, to be sent again with the right
// kind, not a not_found while an email goes out. No such message, or a
// refusal (HighLevel documents no answer for an id of the other kind),
// leaves it not found (ok false); a refused token (401) is no such
// refusal but a failed read. A 429 or a pacing wait is that (no retry
// used); a failure worth retrying retries the task, whose next delivery
// makes this read again (the verify stage), but only while it has retried fewer than
// OtherKindRetries times: how HighLevel answers an id of the other kind is
// unverified, and a message its own kind does not know must not take a day
// of retries. After that, and on the last try, it is a dead letter
// other_kind_unread: not not_found, since the id may be the other kind's
// and its message go out; the operator requeues or purges it.
func (h *Handler) asOtherKind(ctx context.Context, a *attempt, token string, status int, admitted bool) (result, bool) {
	other := OtherKind(a.kind)
	m, err := h.readBack(ctx, a, other, token, admitted)
	var e *ghl.Error
	switch {
	case err == nil && other == ghl.KindMessage && m.IsEmail():
		// An email's conversation message id sent as an email.
		return emailConversationID(m, status), true
	case err == nil:
		msg := fmt.Sprintf("HighLevel has no %s with this id, but has %s (status %q): send it again as kind %s (enqueue dead requeue does; or --kind %s, or a kind column, with its --campaign)",
			kindNoun(a.kind), aKind(other), m.Status, other, other)
		r := dead(ReasonWrongKind, status, msg, errors.New(msg))
		r.otherScheduled = m.Status == "scheduled"
		return r, true
	case errors.Is(err, ghl.ErrNotFound), errors.As(err, &e) && !e.Retryable && !refusedToken(e):
		return result{}, false
	}
	// A refused token (401, after a refresh where there is one) is no
	// answer about the message: the read failed, as a 5xx does (bounded
	// below).
	r := h.readBackFailed(a, err)
	// A read cut by a stopping worker failed nothing: asynq has put the
	// task back (settle sees the retry as taken back).
	if r.fate == fateRetry && (a.lastTry || a.retried >= OtherKindRetries) && !TakenBack(ctx, h.Stopping) {
		msg := fmt.Sprintf("not found as %s; reading it as %s failed (%s), so it may be the other kind's and still scheduled: requeue to try again, or purge if the kind is right",
			aKind(a.kind), aKind(other), r.reason)
		return dead(ReasonOtherKindUnread, status, msg, err), true
	}
	r.stage = ledger.Stage(ledger.StageOtherKind, status)
	return r, true
}

// refusedToken: HighLevel refused the token (401), not the message. A 403
// stays a refusal of the read (the app may lack the scope, or the id is
// another location's): HighLevel documents no answer for an id of the
// other kind.
func refusedToken(e *ghl.Error) bool {
	return e.Reason == ghl.ReasonUnauthorized
}

// OtherKindRetries bounds the retries a failing read-back as the other kind
// costs a message its own kind does not know (see asOtherKind).
const OtherKindRetries = 3

// ReasonOtherKindUnread: not found as its kind; reading it as the other
// kind failed, and the task had retried OtherKindRetries times.
const ReasonOtherKindUnread = "other_kind_unread"

// emailConversationID is the dead letter of an email's conversation message
// id sent for a cancel, which takes the emailMessageId.
func emailConversationID(m *ghl.Message, status int) result {
	msg := fmt.Sprintf("HighLevel reads this id as an email's conversation message (status %q); an email is cancelled by its emailMessageId", m.Status)
	if ids := m.Meta.Email.MessageIDs; len(ids) > 0 {
		msg += " (" + ids[len(ids)-1] + ")"
	}
	msg += ": send that id as kind email (--kind email, or a kind column, with its --campaign)"
	return dead(ReasonEmailConversationID, status, msg, errors.New(msg))
}

// OtherKind is the kind a task did not name.
func OtherKind(k ghl.Kind) ghl.Kind {
	if k == ghl.KindEmail {
		return ghl.KindMessage
	}
	return ghl.KindEmail
}

func kindNoun(k ghl.Kind) string {
	if k == ghl.KindEmail {
		return "email (emailMessageId)"
	}
	return "message (SMS and other channels)"
}

func aKind(k ghl.Kind) string {
	if k == ghl.KindEmail {
		return "an " + kindNoun(k)
	}
	return "a " + kindNoun(k)
}

// readBack reads the message back as kind, paced like any call (unless
// admitted: the delivery's admission was for this read). A wait for the
// pacing slot, or a failure to get one, comes back as an admitError.
//
// A 401 with a refreshable token source refreshes the token once per
// delivery for its reads (the cancel has its own) and reads again (a paced
// call); a refresh that fails is the token's fate. A read a later delivery makes
// for a verify stage may come after the access token expired, which the
// cancel's own refresh never saw.
func (h *Handler) readBack(ctx context.Context, a *attempt, kind ghl.Kind, token string, admitted bool) (*ghl.Message, error) {
	token = cmp.Or(a.freshToken, token)
	for {
		if !admitted {
			if _, err := h.admit(ctx, a); err != nil {
				return nil, admitError{err}
			}
		}
		m, err := h.API.GetMessage(ctx, kind, a.p.MessageID, token)
		if h.Pacer != nil && m != nil {
			_ = h.Pacer.Observe(ctx, a.p.LocationID, m.Limits, nil)
		} else if rl := (*ghl.RateLimitError)(nil); h.Pacer != nil && errors.As(err, &rl) {
			_ = h.Pacer.Observe(ctx, a.p.LocationID, rl.Limits, rl)
		}
		var e *ghl.Error
		if rf, ok := h.Tokens.(tokens.Refresher); ok && !a.readRefreshed && errors.As(err, &e) && e.Reason == ghl.ReasonUnauthorized {
			a.readRefreshed = true
			fresh, rerr := rf.Refresh(ctx, a.p.LocationID, token)
			if rerr == nil {
				token, a.freshToken, admitted = fresh, fresh, false
				continue
			}
			if !errors.Is(rerr, tokens.ErrNotRefreshable) {
				// Its fate is the token's (a revoked grant is a dead letter
				// with its reason), as on the cancel's path.
				return nil, refreshError{rerr}
			}
		}
		return m, err
	}
}

type admitError struct{ error }

// refreshError: a read-back's 401 and the token could not be refreshed.
type refreshError struct{ error }

func (e refreshError) Unwrap() error { return e.error }

func (e admitError) Unwrap() error { return e.error }

// readBackFailed is what a failed read-back means: the attempt waits (its
// pacing slot, a 429) or is retried; the caller sets the verify stage, so
// the next delivery makes the read, not the cancel.
func (h *Handler) readBackFailed(a *attempt, err error) result {
	var re refreshError
	if errors.As(err, &re) {
		r, _ := h.tokenFailure(a, re.error)
		return r
	}
	err = fmt.Errorf("verifying a not-found cancel: %w", err)
	var ae admitError
	if errors.As(err, &ae) {
		var sn snoozer
		if errors.As(ae.error, &sn) {
			return snooze(ReasonPaced, err)
		}
		return retry(ReasonLimiter, err)
	}
	var rl *ghl.RateLimitError
	if errors.As(err, &rl) {
		return snooze(string(ghl.ReasonRateLimited), err)
	}
	var e *ghl.Error
	reason := string(ghl.ReasonNetwork)
	if errors.As(err, &e) {
		reason = string(e.Reason)
	}
	return retry(reason, err)
}

// fate is where an attempt ends.
type fate int

const (
	fateDone   fate = iota // a terminal outcome: cancelled, not cancellable, expired
	fateDead               // a dead letter
	fateRetry              // try again after backoff (uses up an attempt)
	fateSnooze             // come back later without using an attempt (paced, 429, circuit open)
)

// result is what an attempt found; settle turns it into everything else.
type result struct {
	fate    fate
	outcome string // fateDone
	reason  string // dead-letter, retry or snooze reason; a note for fateDone
	status  int    // HTTP status (inner status when the body carried one)
	message string // HighLevel's message, or a hint, for dead letters
	payload string // the raw payload of an undecodable task
	err     error  // the cause; for snoozes it has SnoozeFor()
	// recorded: an earlier attempt already settled the message.
	recorded *ledger.Outcome
	// marked: the "call sent" mark was left for this attempt.
	marked bool
	// ambiguous: a call went out and HighLevel may have acted on it without
	// us knowing (timeout, 5xx, connection lost, unreadable answer).
	ambiguous bool
	// earlier: an earlier attempt's call went out without a recorded answer.
	earlier bool
	// stage: the verify stage a retry or snooze leaves for the next
	// delivery (ledger.Stage), ledger.StageClear to remove it, "" to leave
	// it as it is.
	stage string
	// otherScheduled: a wrong_kind read found the other kind scheduled.
	otherScheduled bool
}

func done(outcome string, status int) result {
	return result{fate: fateDone, outcome: outcome, status: status}
}

func dead(reason string, status int, message string, err error) result {
	return result{fate: fateDead, reason: reason, status: status, message: message, err: err}
}

func retry(reason string, err error) result { return result{fate: fateRetry, reason: reason, err: err} }

func snooze(reason string, err error) result {
	return result{fate: fateSnooze, reason: reason, err: err}
}

// attempt is one delivery of one task.
type attempt struct {
	t       *asynq.Task
	taskID  string
	queue   string
	kind    ghl.Kind
	p       CancelPayload
	retried int
	final   bool   // asynq archives whatever this attempt returns
	lastTry bool   // a failure here is dead-lettered (see AsynqMaxRetry)
	mark    string // this delivery's "call sent" mark (ledger.NewMark)
	// freshToken: a token a read-back refreshed in this delivery (used by
	// its later reads); readRefreshed: it refreshed once already.
	freshToken    string
	readRefreshed bool
	decodeErr     result
}

// TaskInfo is what asynq says about a delivery.
type TaskInfo struct {
	ID       string
	Queue    string
	Retried  int
	MaxRetry int
}

func (h *Handler) begin(t *asynq.Task, info TaskInfo) *attempt {
	a := &attempt{t: t, taskID: info.ID, queue: info.Queue, retried: info.Retried,
		final: info.Retried >= info.MaxRetry, lastTry: info.Retried >= info.MaxRetry-1,
		mark: ledger.NewMark(info.Retried + 1)}
	kind, ok := KindFor(t.Type())
	if !ok {
		a.decodeErr = dead(ReasonUnknownType, 0, "unknown task type "+t.Type(), errors.New("unknown task type"))
		a.decodeErr.payload = bounded(t.Payload())
		return a
	}
	a.kind = kind
	if err := json.Unmarshal(t.Payload(), &a.p); err != nil {
		a.decodeErr = dead(ReasonInvalidPayload, 0, "payload is not valid JSON", err)
		a.decodeErr.payload = bounded(t.Payload())
		return a
	}
	if err := a.p.Validate(); err != nil {
		a.decodeErr = dead(ReasonInvalidPayload, 0, err.Error(), err)
		a.decodeErr.payload = bounded(t.Payload())
	}
	return a
}

// ProcessTask implements asynq.Handler.
func (h *Handler) ProcessTask(ctx context.Context, t *asynq.Task) error {
	var info TaskInfo
	info.ID, _ = asynq.GetTaskID(ctx)
	info.Queue, _ = asynq.GetQueueName(ctx)
	info.Retried, _ = asynq.GetRetryCount(ctx)
	info.MaxRetry, _ = asynq.GetMaxRetry(ctx)
	return h.Process(ctx, t, info)
}

// Process runs one delivery: decode, preflight, attempt, then one settle
// for every way out, a panic included.
func (h *Handler) Process(ctx context.Context, t *asynq.Task, info TaskInfo) (err error) {
	a := h.begin(t, info)
	defer func() {
		if v := recover(); v != nil {
			h.logger().Error("panic in cancel task: dead-lettered", "task_id", a.taskID, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			r := dead(ReasonPanic, 0, truncate(fmt.Sprint(v), 256), fmt.Errorf("panic: %v", v))
			r.marked, r.ambiguous = true, true // a call may have gone out: keep its mark
			err = h.settle(ctx, a, r)
		}
	}()
	if a.decodeErr.fate == fateDead {
		return h.settle(ctx, a, a.decodeErr)
	}
	wctx, cancel := workContext(ctx)
	defer cancel()
	return h.settle(ctx, a, h.run(wctx, a))
}

// workContext ends the call and its waits SettleReserveMax (or a quarter of
// the attempt's time, if shorter) before asynq's deadline.
func workContext(ctx context.Context) (context.Context, context.CancelFunc) {
	dl, ok := ctx.Deadline()
	if !ok {
		return context.WithCancel(ctx)
	}
	reserve := min(SettleReserveMax, time.Until(dl)/4)
	return context.WithDeadline(ctx, dl.Add(-reserve))
}

// run makes the attempt and says how it ended. It writes nothing: settle does.
func (h *Handler) run(ctx context.Context, a *attempt) result {
	p := a.p
	if PastSendTime(p.SendAt, h.now()) {
		return h.expired(ctx, a)
	}
	token, err := h.Tokens.Token(ctx, p.LocationID)
	if r, ok := h.tokenFailure(a, err); ok {
		return r
	}
	if v, bad := CheckToken(token); bad {
		// Before a pacing slot is taken: nothing could be sent.
		return dead(v.Reason, 0, v.Message, errors.New(v.Message))
	}

	inlineMax := h.InlineWaitMax
	if inlineMax == 0 {
		inlineMax = InlineWaitMaxDefault
	}
	var st result // what this attempt has done so far: marks and calls
	refreshed := false
	for round := 0; ; round++ {
		// The breaker first: a paused call takes no slot.
		probe := false
		if h.Breaker != nil {
			var berr error
			if probe, berr = h.Breaker.Allow(); berr != nil {
				if h.waitOnFinal(ctx, a, round, berr) {
					continue
				}
				return st.with(snooze(ReasonCircuitOpen, berr))
			}
		}
		adm, err := h.admit(ctx, a)
		if err != nil {
			if h.Breaker != nil {
				h.Breaker.Abandon(probe)
			}
			var sn snoozer
			switch {
			case errors.As(err, &sn):
				if h.waitOnFinal(ctx, a, round, err) {
					continue
				}
				return st.with(snooze(ReasonPaced, err))
			case ctx.Err() != nil:
				return st.with(retry(ReasonInterrupted, fmt.Errorf("before the call: %w", err)))
			}
			return st.with(retry(ReasonLimiter, fmt.Errorf("rate limiter for location %s: %w", p.LocationID, err)))
		}
		if adm.Recorded != nil {
			if h.Breaker != nil {
				h.Breaker.Abandon(probe)
			}
			return result{fate: fateDone, recorded: adm.Recorded}
		}
		st.marked = true
		st.earlier = st.earlier || adm.EarlierCall
		if step, status, ok := ledger.ParseStage(adm.Stage); ok {
			// An earlier delivery's cancel answered "not found": this
			// slot is for the read that settles it, not another cancel.
			if h.Breaker != nil {
				h.Breaker.Abandon(probe)
			}
			return st.with(h.verify(ctx, a, token, status, st.earlier, step, true))
		}
		// Once per cancel: a re-delivery after a 429 is no first attempt's
		// call, though asynq counts no retry for it.
		if h.Events != nil && p.EventAt > 0 && p.Event != "" && adm.FirstCall {
			h.Events.EventCancel(p.Event, max(h.now().Sub(time.UnixMilli(p.EventAt)), 0)) // a clock ahead of ours is not negative time
		}

		res, err := h.API.Cancel(ctx, a.kind, p.MessageID, token)
		if h.Breaker != nil {
			if ghl.NotSent(err) {
				h.Breaker.Abandon(probe)
			} else if ctx.Err() == nil || probe {
				h.Breaker.Record(ctx.Err() != nil || apiFailure(err), probe)
			} else {
				h.Breaker.Abandon(probe)
			}
		}
		var rl *ghl.RateLimitError
		errors.As(err, &rl)
		var e *ghl.Error
		if err != nil && rl == nil && !errors.As(err, &e) {
			e = &ghl.Error{Reason: ghl.ReasonNetwork, Retryable: true, Message: err.Error()}
		}
		if h.Routes != nil && (e == nil || e.StatusCode != 0) { // only answers say where they came from
			req := ""
			if e != nil {
				req = e.Request
			}
			h.Routes.Observe(e != nil && e.Reason == ghl.ReasonMisrouted, req)
		}
		if h.Pacer != nil && (e == nil || e.StatusCode != 0) { // HighLevel answered
			if oerr := h.Pacer.Observe(ctx, p.LocationID, limitsOf(res, err), rl); oerr != nil {
				h.logf(ctx, a, slog.LevelWarn, "rate limiter could not record an answer", "error", oerr)
			}
		}
		if err == nil {
			h.logf(ctx, a, slog.LevelDebug, "cancel done", "outcome", res.Outcome, "http_status", res.StatusCode)
			status := res.StatusCode
			if res.InnerStatus != 0 {
				status = res.InnerStatus
			}
			if res.Outcome == ghl.OutcomeNotCancellable {
				return st.with(h.notFound(ctx, a, token, status, st.earlier))
			}
			return done(string(res.Outcome), status)
		}
		if rl != nil {
			// With a pacer the 429 became a shared cool-down: the next
			// Admit waits it out or snoozes. Without one, wait here when short.
			if round < maxRounds && (h.Pacer != nil || rl.RetryAfter <= inlineMax || a.final) && fitsDeadline(ctx, rl.RetryAfter) {
				if h.Pacer == nil && sleep(ctx, rl.RetryAfter) != nil {
					return st.with(retry(ReasonInterrupted, err))
				}
				continue
			}
			h.logf(ctx, a, slog.LevelDebug, "rate limited", "retry_after", rl.RetryAfter, "daily", rl.Daily)
			r := snooze(string(ghl.ReasonRateLimited), err)
			r.status, r.message = http429, rl.Message
			return st.with(r)
		}
		// A 401 with a refreshable source: refresh once, call again. A
		// token set by hand (ErrNotRefreshable) takes the path below.
		if rf, ok := h.Tokens.(tokens.Refresher); ok && e.Reason == ghl.ReasonUnauthorized && !refreshed {
			refreshed = true
			fresh, rerr := rf.Refresh(ctx, p.LocationID, token)
			if rerr == nil {
				token = fresh
				continue
			}
			if !errors.Is(rerr, tokens.ErrNotRefreshable) {
				r, _ := h.tokenFailure(a, rerr)
				if r.fate == fateDead && r.status == 0 {
					r.status = 401
				}
				return st.with(r)
			}
		}
		status := e.StatusCode
		if e.InnerStatus != 0 {
			status = e.InnerStatus
		}
		if !e.Retryable {
			return st.with(dead(string(e.Reason), status, e.Message, err))
		}
		level := slog.LevelInfo
		if e.Reason == ghl.ReasonMisrouted || TakenBack(ctx, h.Stopping) {
			level = slog.LevelDebug // Routes logs it once for all tasks; settle logs an interruption
		}
		h.logf(ctx, a, level, "cancel failed, will retry", "reason", e.Reason, "http_status", e.StatusCode, "error", err)
		r := retry(string(e.Reason), err)
		r.status, r.message = status, e.Message
		// HighLevel may have acted on it unless the answer was not its own.
		r.ambiguous = e.Reason != ghl.ReasonMisrouted
		if a.lastTry && (r.ambiguous || st.earlier) && !TakenBack(ctx, h.Stopping) {
			return st.with(h.lastRead(ctx, a, token, r))
		}
		return st.with(r)
	}
}

// lastRead: the last try's cancel failed in a way HighLevel may have acted
// on (a 5xx, a timeout, a lost connection), or an earlier delivery's did,
// and r, a retry, is about to become its dead letter. A lost answer is
// not a failed cancel: with Verify the message is read back first (paced,
// waiting for its turn within the attempt's time). "failed" is our call's
// cancel (cancelled, earlier_attempt, as a "not found" after such a call
// is), a status that says it went out is already_sent, and a message still
// scheduled stays r's dead letter, which then says so. A read that cannot
// be made keeps the dead letter, saying the message may be cancelled
// already: a requeue reads it back (the "call sent" mark is kept).
func (h *Handler) lastRead(ctx context.Context, a *attempt, token string, r result) result {
	const unread = " (HighLevel may have acted on a call whose answer was lost, so it may be cancelled already: requeue to read it back)"
	if !h.Verify {
		r.message += unread
		return r
	}
	var m *ghl.Message
	var err error
	for round := 0; ; round++ {
		m, err = h.readBack(ctx, a, a.kind, token, false)
		var ae admitError
		if errors.As(err, &ae) && waitIn(ctx, round, ae.error) {
			continue
		}
		break
	}
	switch {
	case err != nil:
		h.logf(ctx, a, slog.LevelInfo, "last try: reading the message back failed", "error", err)
		r.message += unread
		return r
	case m.Status == "scheduled" && a.kind == ghl.KindMessage && m.IsEmail():
		// An email's conversation message id: its cancel can never work.
		return emailConversationID(m, r.status)
	case m.Status == "failed":
		return result{fate: fateDone, outcome: ledger.Cancelled, reason: ledger.ReasonEarlierAttempt, status: r.status}
	case sentStatuses[m.Status]:
		return result{fate: fateDone, outcome: ledger.AlreadySent, reason: m.Status, status: r.status}
	}
	// Still scheduled, or a status HighLevel did not document: nothing
	// says it will not go out (unlike after a "not found" cancel).
	if m.Status == "scheduled" {
		r.message += " (it reads back as still scheduled)"
	} else {
		r.message += fmt.Sprintf(" (it reads back as %q)", m.Status)
	}
	return r
}

const http429 = 429

// with carries what the attempt did so far (marks, calls) into r.
func (st result) with(r result) result {
	r.marked = st.marked || r.marked
	r.earlier = st.earlier
	return r
}

// expired: the send time passed (by more than ExpiryGrace) before the
// cancel ran; it has gone out, so a cancel cannot help and would spend
// rate budget others need. Unless an earlier delivery's call went out
// before then and its answer was lost: that call may have cancelled it,
// so read it back.
func (h *Handler) expired(ctx context.Context, a *attempt) result {
	o, _, sent, err := h.Ledger.Record(ctx, a.taskID)
	switch {
	case err != nil:
		return retry(ReasonLimiter, fmt.Errorf("reading the message's record: %w", err))
	case o != nil:
		return result{fate: fateDone, recorded: o}
	case sent:
		token, err := h.Tokens.Token(ctx, a.p.LocationID)
		if r, ok := h.tokenFailure(a, err); ok {
			return r
		}
		r := h.notFound(ctx, a, token, 0, true)
		if r.fate == fateDone && r.outcome == ledger.NotFound {
			r.outcome = ledger.Expired // it is gone; nothing says our call did it
		}
		return r
	}
	h.logf(ctx, a, slog.LevelInfo, "send time passed before the cancel ran", "send_at", time.Unix(a.p.SendAt, 0).UTC())
	return done(ledger.Expired, 0)
}

// admit is the check right before a call: through the pacer, or straight
// to the ledger when there is none.
func (h *Handler) admit(ctx context.Context, a *attempt) (ledger.Admission, error) {
	if h.Pacer != nil {
		return h.Pacer.Admit(ctx, ratelimit.Request{Location: a.p.LocationID, TaskID: a.taskID,
			Campaign: a.p.CampaignID, Mark: a.mark, Urgent: a.queue == QueueUrgent, Reserve: a.queue == QueueUrgent})
	}
	return h.Ledger.Begin(ctx, a.taskID, a.p.CampaignID, a.mark)
}

// waitOnFinal: asynq archives whatever the final attempt returns, so there a
// snooze is slept in the handler when the deadline allows.
func (h *Handler) waitOnFinal(ctx context.Context, a *attempt, round int, err error) bool {
	return a.final && waitIn(ctx, round, err)
}

// waitIn sleeps out err's wait (a snoozer's) in the handler when it fits
// the attempt's deadline and round is below maxRounds; false when not
// (or interrupted).
func waitIn(ctx context.Context, round int, err error) bool {
	var sn snoozer
	if round >= maxRounds || !errors.As(err, &sn) || !fitsDeadline(ctx, sn.SnoozeFor()) {
		return false
	}
	return sleep(ctx, sn.SnoozeFor()) == nil
}

// tokenFailure maps a token source error; ok is false for no error.
func (h *Handler) tokenFailure(a *attempt, err error) (result, bool) {
	ObserveTokenRoute(h.Routes, err)
	v, ok := ClassifyTokenError(err)
	if !ok {
		return result{}, false
	}
	if TokenKeyRetry(v, a.retried) {
		return retry(v.Reason, fmt.Errorf("token source: %w", err)), true
	}
	switch v.Fate {
	case FateDead:
		return dead(v.Reason, v.Status, v.Message, err), true
	case FateSnooze:
		return snooze(v.Reason, err), true
	}
	return retry(v.Reason, fmt.Errorf("token source: %w", err)), true
}

// Fates of a token error.
const (
	FateDead   = "dead"
	FateRetry  = "retry"
	FateSnooze = "snooze" // err has SnoozeFor: come back then
)

// TokenVerdict is what a token source error means for a task.
type TokenVerdict struct {
	Fate    string
	Reason  string
	Status  int
	Message string // with the operator's next step
}

// ClassifyTokenError maps a token source error for every kind of task (the
// cancel and sweep handlers); ok is false for no error.
func ClassifyTokenError(err error) (TokenVerdict, bool) {
	var ge *tokens.GrantError
	var me *tokens.MintError
	var sn snoozer
	switch {
	case err == nil:
		return TokenVerdict{}, false
	case errors.Is(err, tokens.ErrNoToken):
		return TokenVerdict{Fate: FateDead, Reason: string(ghl.ReasonNoToken),
			Message: "no token configured for this location: check the location id (a mistyped one has none), or add it to GHL_TOKENS_FILE, load its pair with `enqueue tokens set`, or load an agency pair with `enqueue tokens agency set` (workers mint from it only with GHL_CLIENT_ID, GHL_CLIENT_SECRET and GHL_TOKEN_KEY)"}, true
	case errors.Is(err, tokens.ErrWrongKey):
		return TokenVerdict{Fate: FateDead, Reason: ReasonTokenKey, Message: err.Error()}, true
	case errors.Is(err, tokens.ErrRefreshDidNotCure):
		return TokenVerdict{Fate: FateDead, Reason: string(ghl.ReasonUnauthorized), Status: 401, Message: err.Error()}, true
	case errors.As(err, &ge):
		return TokenVerdict{Fate: FateDead, Reason: ge.Reason, Message: ge.Error()}, true
	case errors.As(err, &me) && !me.Temporary:
		return TokenVerdict{Fate: FateDead, Reason: me.Reason, Message: me.Error()}, true
	case errors.As(err, &me):
		return TokenVerdict{Fate: FateRetry, Reason: me.Reason, Message: me.Error()}, true
	case errors.As(err, &sn) && sn.SnoozeFor() > 0:
		return TokenVerdict{Fate: FateSnooze, Reason: ReasonPaced, Message: err.Error()}, true
	case misroutedToken(err) != nil:
		// The token endpoint's answer was not HighLevel's (GHL_BASE_URL):
		// retried as a misrouted cancel is, and no refusal.
		return TokenVerdict{Fate: FateRetry, Reason: string(ghl.ReasonMisrouted), Message: err.Error()}, true
	}
	return TokenVerdict{Fate: FateRetry, Reason: string(ghl.ReasonTokenSource), Message: err.Error()}, true
}

// misroutedToken is the misrouted answer behind a token source's error
// (an OAuth refresh, an agency mint), or nil.
func misroutedToken(err error) *ghl.Error {
	var e *ghl.Error
	if errors.As(err, &e) && e.Reason == ghl.ReasonMisrouted {
		return e
	}
	return nil
}

// ObserveTokenRoute feeds routes (which may be nil) a token source's
// misrouted answer, so that /readyz and the one GHL_BASE_URL error cover
// locations whose every call starts with a token call that fails so.
func ObserveTokenRoute(routes RouteWatch, err error) {
	if e := misroutedToken(err); e != nil && routes != nil {
		routes.Observe(true, e.Request)
	}
}

// CheckToken is the verdict on a token no request can carry
// (ghl.CheckToken): a dead letter invalid_token, before any pacing slot.
func CheckToken(token string) (TokenVerdict, bool) {
	if err := ghl.CheckToken(token); err != nil {
		return TokenVerdict{Fate: FateDead, Reason: string(ghl.ReasonInvalidToken), Message: err.Error() + ": fix the location's token, then requeue"}, true
	}
	return TokenVerdict{}, false
}

// settle is the one place a task's fate is decided: it turns the attempt's
// result into the recorded outcome or dead letter (one atomic write), the
// error asynq gets, and the report the metrics read. On the last try a
// retry becomes a dead letter with its reason instead, and so does a snooze
// on the final attempt, where asynq archives whatever comes back.
func (h *Handler) settle(ctx context.Context, a *attempt, r result) error {
	rep := reportFrom(ctx)
	// Taken back by a stopping worker: asynq has put the task back as it
	// was, with no retry used, and ignores what comes back here. Nothing
	// failed: no dead letter on a last try, no "retrying" in the campaign
	// (the next delivery is a first attempt again and would never leave
	// that set), no network failure reported.
	takenBack := (r.fate == fateRetry || r.fate == fateSnooze) && TakenBack(ctx, h.Stopping)
	if takenBack {
		r.fate, r.reason = fateRetry, ReasonInterrupted
	}
	if (a.lastTry && r.fate == fateRetry && !takenBack) || (a.final && r.fate == fateSnooze) {
		r.fate = fateDead
		if r.message == "" && r.err != nil {
			r.message = truncate("retries exhausted: "+r.err.Error(), 512)
		}
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), SettleReserveMax)
	defer cancel()
	// This delivery's "call sent" mark stays only while HighLevel may have
	// acted on its call without us knowing (another delivery's mark is
	// never cleared here).
	clearMark := ""
	if r.marked && !r.ambiguous {
		clearMark = a.mark
	}
	switch r.fate {
	case fateDone, fateDead:
		if r.recorded != nil {
			rep.Outcome = OutcomeRecorded
			h.logf(ctx, a, slog.LevelDebug, "outcome already recorded by an earlier attempt", "outcome", r.recorded.Outcome)
			return nil
		}
		f := ledger.Final{TaskID: a.taskID, CampaignID: a.p.CampaignID, KeepMark: (r.ambiguous || r.earlier) && r.fate == fateDead,
			Outcome: ledger.Outcome{Outcome: r.outcome, Reason: r.reason, HTTPStatus: r.status, Attempts: a.retried + 1}}
		f.Admitted, f.FirstAttempt = r.marked, a.retried == 0
		if !r.marked {
			f.LeaveWaiters = a.p.LocationID
		}
		if r.fate == fateDead {
			f.Outcome.Outcome = ledger.DeadLettered
			f.Dead = &deadletter.Record{Kind: string(a.kind), MessageID: a.p.MessageID, LocationID: a.p.LocationID,
				CampaignID: a.p.CampaignID, SendAt: a.p.SendAt, Queue: a.queue, Reason: r.reason,
				HTTPStatus: r.status, APIMessage: r.message, Attempts: a.retried + 1, Payload: r.payload, Worker: deadletter.ThisWorker}
			if r.reason == ReasonWrongKind {
				f.OtherKind = ledger.OtherKindKeys(TaskID(OtherKind(a.kind), a.p.MessageID), Queues)
				f.MoveOtherTo = a.queue
				f.OtherScheduled = r.otherScheduled
			}
		}
		got, recorded, err := h.Ledger.Settle(wctx, f)
		if err != nil && a.final {
			// asynq archives whatever a final attempt returns: nothing will
			// run again, and Redis took neither outcome nor dead letter.
			// Say so; a resend requeues it (the enqueue rule reads an
			// archived task with no outcome as dead).
			rep.Outcome, rep.Reason = OutcomeUnrecorded, ReasonOutcomeWrite
			h.logger().Error("outcome could not be recorded on the task's last attempt; asynq archives it with no outcome: send the message again to settle it",
				"task_id", a.taskID, "kind", a.kind, "message_id", a.p.MessageID, "location_id", a.p.LocationID,
				"campaign_id", a.p.CampaignID, "outcome", f.Outcome.Outcome, "reason", r.reason, "error", err)
			return fmt.Errorf("recording %s on the last attempt: %w: %w", f.Outcome.Outcome, err, asynq.SkipRetry)
		}
		if err != nil {
			// HighLevel answered but Redis will not take the outcome. The
			// task runs again; its "call sent" mark turns a "not found" then
			// into this cancel.
			rep.Outcome, rep.Reason = OutcomeRetry, ReasonOutcomeWrite
			h.logger().Error("outcome could not be recorded; the task will run again", "task_id", a.taskID,
				"outcome", f.Outcome.Outcome, "reason", r.reason, "error", err)
			return fmt.Errorf("recording %s: %w", f.Outcome.Outcome, err)
		}
		if !recorded {
			rep.Outcome = OutcomeRecorded
			return nil
		}
		if got.Outcome == ledger.Superseded {
			rep.Outcome = OutcomeSuperseded
			h.logf(ctx, a, slog.LevelInfo, "HighLevel has this id as the other kind, and the message is queued or done as that kind: this task is dropped (no dead letter; the other kind's task settles the message)")
			return nil
		}
		if got.Outcome != ledger.DeadLettered {
			rep.Outcome = got.Outcome
			if rep.Outcome == ledger.Cancelled {
				rep.Outcome = OutcomeCancelled
			}
			return nil
		}
		rep.Outcome, rep.Reason = OutcomeDeadLettered, r.reason
		h.logger().Warn("dead letter", "task_id", a.taskID, "kind", a.kind, "location_id", a.p.LocationID,
			"campaign_id", a.p.CampaignID, "reason", r.reason, "http_status", r.status,
			"api_message", r.message, "attempts", a.retried+1)
		cause := r.err
		if cause == nil {
			cause = errors.New(r.message)
		}
		return fmt.Errorf("dead letter %s: %w: %w", r.reason, cause, asynq.SkipRetry)
	case fateRetry:
		campaign := a.p.CampaignID
		if takenBack {
			campaign = ""
			h.logf(ctx, a, slog.LevelInfo, "attempt interrupted: the worker is stopping, and the task goes back to its lane", "error", r.err)
		}
		var err error
		if campaign == "" && !takenBack {
			// Sent with no campaign, it may have been handed one.
			err = h.Ledger.RetryingHanded(wctx, a.taskID, clearMark, r.stage)
		} else {
			err = h.Ledger.Retrying(wctx, a.taskID, campaign, clearMark, r.stage)
		}
		if err != nil {
			h.logf(ctx, a, slog.LevelWarn, "could not mark the task retrying", "error", err)
		}
		rep.Outcome, rep.Reason = OutcomeRetry, r.reason
		return r.err
	default: // fateSnooze
		// A 429 (HighLevel refused the call) clears the mark; a read-back
		// that waits leaves its verify stage.
		if clearMark != "" || r.stage != "" {
			if err := h.Ledger.Retrying(wctx, a.taskID, "", clearMark, r.stage); err != nil {
				h.logf(ctx, a, slog.LevelWarn, "could not clear the call mark", "error", err)
			}
		}
		rep.Outcome, rep.Reason = SnoozeOutcome(r.reason, r.err), r.reason
		return r.err
	}
}

// SnoozeOutcome is the metrics outcome of an attempt that comes back later
// without using a retry, by its reason and error: paused (circuit breaker),
// paced (waiting for the location's turn), else rate_limited (a 429, and
// the limiter's waits that follow one: a cool-down, the daily budget).
func SnoozeOutcome(reason string, err error) string {
	switch reason {
	case ReasonCircuitOpen:
		return OutcomePaused
	case ReasonPaced:
		var sn *ratelimit.SnoozeError
		if errors.As(err, &sn) && sn.Reason != ratelimit.SnoozePacing && sn.Reason != "" {
			return OutcomeRateLimited
		}
		return OutcomePaced
	}
	return OutcomeRateLimited
}

// apiFailure: the call says HighLevel is failing (what Classify marks
// retryable: 5xx, 408, timeout, no connection, unreadable 2xx, misrouted),
// as opposed to answering (2xx, 4xx, and 429, which is a *RateLimitError).
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

// logf attaches the task's attributes only when the level is enabled: most
// tasks log nothing at the default level, and the attributes would be
// formatted for nothing on every task.
func (h *Handler) logf(ctx context.Context, a *attempt, level slog.Level, msg string, args ...any) {
	l := h.logger()
	if !l.Enabled(ctx, level) {
		return
	}
	l.With("task_id", a.taskID, "kind", a.kind, "location_id", a.p.LocationID,
		"campaign_id", a.p.CampaignID, "attempt", a.retried+1).Log(ctx, level, msg, args...)
}

func (h *Handler) now() time.Time {
	if h.Now != nil {
		return h.Now()
	}
	return time.Now()
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

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
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
