// Package tasks defines the cancel tasks ghlcancel puts on asynq queues and
// the handler that runs them.
package tasks

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/hibiken/asynq"

	"github.com/ghlcancel/ghlcancel/internal/ghl"
)

// Task types. Neither is a prefix of the other, so an asynq ServeMux routes
// each to its own handler.
const (
	TypeCancelMessage = "ghl:message:cancel_schedule"
	TypeCancelEmail   = "ghl:email:cancel_schedule"
)

// Queues (lanes). Single cancels from services go to urgent, bulk files to
// bulk; the worker serves them with QueueWeights.
const (
	QueueUrgent  = "urgent"
	QueueDefault = "default"
	QueueBulk    = "bulk"
)

// Queues lists every lane, highest priority first.
var Queues = []string{QueueUrgent, QueueDefault, QueueBulk}

// QueueWeights are asynq's weighted-priority weights for the lanes.
func QueueWeights() map[string]int {
	return map[string]int{QueueUrgent: 6, QueueDefault: 3, QueueBulk: 1}
}

// Defaults for TaskOptions.
const (
	// MaxRetryDefault makes retries span about a day with Backoff's
	// defaults (see TestMaxRetryDefaultSpansADay).
	MaxRetryDefault = 150
	// TimeoutDefault bounds one attempt: the API timeout plus room for an
	// in-handler wait for a rate-limit window.
	TimeoutDefault = 60 * time.Second
)

// TypeFor returns the task type of a kind.
func TypeFor(kind ghl.Kind) string {
	if kind == ghl.KindEmail {
		return TypeCancelEmail
	}
	return TypeCancelMessage
}

// KindFor returns the kind of a task type; ok is false for an unknown type.
func KindFor(taskType string) (ghl.Kind, bool) {
	switch taskType {
	case TypeCancelMessage:
		return ghl.KindMessage, true
	case TypeCancelEmail:
		return ghl.KindEmail, true
	}
	return "", false
}

// TaskID is derived from kind and message id, so enqueueing the same
// message twice into a queue is refused by asynq (ErrTaskIDConflict).
func TaskID(kind ghl.Kind, messageID string) string {
	if kind == ghl.KindEmail {
		return "email:" + messageID
	}
	return "msg:" + messageID
}

// CancelPayload is the task payload. It never carries a token: the worker
// looks the token up by location.
type CancelPayload struct {
	MessageID  string `json:"message_id"`
	LocationID string `json:"location_id"`
	CampaignID string `json:"campaign_id,omitempty"`
	// SendAt is when the message is scheduled to go out (unix seconds), if known.
	SendAt int64 `json:"send_at,omitempty"`
	// RequestedAt is when the cancel was requested (unix milliseconds).
	RequestedAt int64 `json:"requested_at"`
	// Event and EventAt (unix ms): the webhook event whose sweep found the
	// message, for the event-to-cancel latency.
	Event   string `json:"event,omitempty"`
	EventAt int64  `json:"event_at,omitempty"`
}

// Validate checks the ids of a payload.
func (p CancelPayload) Validate() error {
	if err := ghl.ValidateID(p.MessageID); err != nil {
		return fmt.Errorf("message_id: %w", err)
	}
	if err := ghl.ValidateID(p.LocationID); err != nil {
		return fmt.Errorf("location_id: %w", err)
	}
	// Only the length: "." and ".." are refused where new work comes in
	// (the intake, the CLI, a file's rows, a new sweep), so a task or dead
	// letter from before that still runs and can be requeued.
	if len(p.CampaignID) > CampaignIDMax {
		return fmt.Errorf("campaign_id: longer than %d bytes", CampaignIDMax)
	}
	return nil
}

// CampaignIDMax is the longest campaign id, in bytes.
const CampaignIDMax = 128

// ValidateCampaignID is the rule for a new campaign id, checked where work
// comes in: 1 to CampaignIDMax bytes, and not "." or "..", which no URL
// path can carry (clients clean them away, and so does the intake's
// router): GET /v1/campaigns/.. would answer for another path. Any other
// byte is allowed; "/" travels as %2F.
func ValidateCampaignID(id string) error {
	switch {
	case id == "":
		return errors.New("empty")
	case len(id) > CampaignIDMax:
		return fmt.Errorf("%d bytes, the limit is %d", len(id), CampaignIDMax)
	case id == "." || id == "..":
		return fmt.Errorf("%q cannot be addressed in a URL path; choose another name", id)
	}
	return nil
}

// TaskOptions are per-task asynq options.
type TaskOptions struct {
	// Queue to put the task on. Defaults to QueueDefault.
	Queue string
	// MaxRetry attempts after the first. Defaults to MaxRetryDefault; a
	// negative value means none.
	MaxRetry int
	// Timeout of one attempt. Defaults to TimeoutDefault.
	Timeout time.Duration
}

// Payload validates p and encodes it (setting RequestedAt if unset).
func Payload(kind ghl.Kind, p CancelPayload) ([]byte, error) {
	if kind != ghl.KindMessage && kind != ghl.KindEmail {
		return nil, fmt.Errorf("kind: unknown %q", kind)
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if p.RequestedAt == 0 {
		p.RequestedAt = time.Now().UnixMilli()
	}
	return json.Marshal(p)
}

// AsynqMaxRetry is asynq's MaxRetry for a cancel task that may fail
// retries times after its first attempt (none if negative): one more.
// asynq archives whatever a task's final attempt returns, IsFailure or not,
// so without the spare a task with no retries left (every task, with
// --max-retry 0) would be dead-lettered for waiting its turn at the rate
// limit. The handler dead-letters a failure one attempt before asynq's
// last (attempt.lastTry) and hands a wait back, which uses no retry; only a
// failure asynq counts itself (a worker that died mid-attempt) reaches the
// spare, where the handler settles whatever happens.
func AsynqMaxRetry(retries int) int {
	return min(max(retries, 0), math.MaxInt32-1) + 1
}

// NewCancelTask builds a cancel task. It validates the payload, so a task
// that would only ever be dead-lettered is refused at the door.
func NewCancelTask(kind ghl.Kind, p CancelPayload, o TaskOptions) (*asynq.Task, error) {
	b, err := Payload(kind, p)
	if err != nil {
		return nil, err
	}
	return asynq.NewTask(TypeFor(kind), b,
		asynq.TaskID(TaskID(kind, p.MessageID)),
		asynq.Queue(cmp.Or(o.Queue, QueueDefault)),
		asynq.MaxRetry(AsynqMaxRetry(cmp.Or(o.MaxRetry, MaxRetryDefault))),
		asynq.Timeout(max(cmp.Or(o.Timeout, TimeoutDefault), time.Second)),
	), nil
}

// UnixSecondsMax bounds a time given in unix seconds: a larger number
// (after the year 5138) is a time in milliseconds, given by mistake.
const UnixSecondsMax = 100_000_000_000

// CheckUnixSeconds refuses a unix time that is in milliseconds: read as
// seconds it lands tens of thousands of years ahead (a sweep "since" then
// finds nothing, a send time never passes).
func CheckUnixSeconds(n int64) error {
	if n >= UnixSecondsMax {
		return fmt.Errorf("%d looks like milliseconds: want unix seconds", n)
	}
	return nil
}

// ExpiryGrace is how long after its send time a message may still be
// scheduled: HighLevel's scheduler may send it late, and the clock that
// wrote send_at may run ahead of the worker's. Until then a cancel still
// calls HighLevel, whose answer says what happened (cancelled, or already
// sent); after it the cancel ends expired with no call.
const ExpiryGrace = 2 * time.Minute

// PastSendTime: a message whose send time (unix seconds; 0 unknown) was
// more than ExpiryGrace before now has gone out, and a cancel cannot help.
func PastSendTime(sendAt int64, now time.Time) bool {
	return sendAt > 0 && now.Unix() >= sendAt+int64(ExpiryGrace/time.Second)
}
