package client

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"
)

// Cancel asks for one scheduled message to be cancelled.
type Cancel struct {
	// MessageID is the scheduled message's id (for emails, the email
	// message id). Required.
	MessageID string `json:"message_id"`
	// LocationID is the sub-account the message belongs to. Required.
	LocationID string `json:"location_id"`
	// Kind is "message" (SMS and other channels, the default) or "email".
	Kind string `json:"kind,omitempty"`
	// CampaignID groups cancels so their progress can be read back.
	CampaignID string `json:"campaign_id,omitempty"`
	// SendAt is when the message is scheduled to go out, if known: a cancel
	// that is still queued when it passes is recorded as expired instead of
	// being sent, and bulk items due soon skip ahead of the bulk lane.
	SendAt *SendAt `json:"send_at,omitempty"`
	// Urgent puts the cancel on the urgent lane (a single opt-out, an
	// appointment that just moved), ahead of campaign-sized work.
	Urgent bool `json:"urgent,omitempty"`
	// Force cancels again a message that already has a terminal outcome
	// (cancelled, not cancellable, expired): HighLevel is called again.
	// Without it such a message answers already_done.
	Force bool `json:"force,omitempty"`
}

// SendAt is a point in time given in JSON as unix seconds or as an RFC 3339
// string; it is sent as unix seconds.
type SendAt struct{ time.Time }

// At returns a *SendAt for t.
func At(t time.Time) *SendAt { return &SendAt{t} }

// MarshalJSON writes unix seconds.
func (s SendAt) MarshalJSON() ([]byte, error) {
	return strconv.AppendInt(nil, s.Unix(), 10), nil
}

// UnmarshalJSON reads unix seconds or an RFC 3339 string.
func (s *SendAt) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var str string
		if err := json.Unmarshal(b, &str); err != nil {
			return err
		}
		t, err := time.Parse(time.RFC3339, str)
		if err != nil || t.Unix() <= 0 {
			return fmt.Errorf("want unix seconds or an RFC 3339 time like 2026-11-27T18:00:00Z")
		}
		s.Time = t
		return nil
	}
	n, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil || n <= 0 {
		return fmt.Errorf("want unix seconds or an RFC 3339 time like 2026-11-27T18:00:00Z")
	}
	if n >= 100_000_000_000 { // after the year 5138: milliseconds, by mistake
		return fmt.Errorf("%d looks like milliseconds: want unix seconds or an RFC 3339 time", n)
	}
	s.Time = time.Unix(n, 0)
	return nil
}

// Lanes a request's non-urgent items can go to.
const (
	LaneDefault = "default"
	LaneBulk    = "bulk"
)

// Request is the body of POST /v1/cancellations in its batch form. (A
// single Cancel object is accepted as the body too.)
type Request struct {
	Items []Cancel `json:"items"`
	// Lane for items not marked urgent: "default" (the default) or "bulk".
	Lane string `json:"lane,omitempty"`
	// Partial enqueues the valid items and reports invalid ones as rejected
	// in a 202, instead of refusing the whole request with a 400.
	Partial bool `json:"partial,omitempty"`
	// Force applies Cancel.Force to every item.
	Force bool `json:"force,omitempty"`
}

// Item statuses in a Response: one rule decides them, for every producer.
const (
	// StatusEnqueued: queued now, new to its campaign.
	StatusEnqueued = "enqueued"
	// StatusAlreadyQueued: the message is already waiting, retrying or
	// being cancelled; nothing changed.
	StatusAlreadyQueued = "already_queued"
	// StatusAlreadyDone: the message already has a terminal outcome
	// (cancelled, not cancellable, expired); HighLevel is not called again
	// unless the item is sent with force.
	StatusAlreadyDone = "already_done"
	// StatusRequeued: the message had been dead-lettered (or was done and
	// sent with force): it is queued again with attempts from zero.
	StatusRequeued = "requeued"
	// StatusRejected: the item is invalid (see its error).
	StatusRejected = "rejected"
)

// ItemResult is what happened to one item of a request.
type ItemResult struct {
	// Index is the item's position in the request (0-based).
	Index     int    `json:"index"`
	MessageID string `json:"message_id,omitempty"`
	// TaskID is the queue's id for the cancel (msg:<id> or email:<id>).
	TaskID string `json:"task_id,omitempty"`
	// Status is enqueued, already_queued, already_done, requeued or
	// rejected (see the Status constants).
	Status string `json:"status"`
	// Error says why an item was rejected.
	Error *ItemError `json:"error,omitempty"`
	// HeldBy, for already_queued and already_done: the campaign the
	// message is counted in when it is not the one asked for (a resend
	// under a new campaign id); its outcome is there, not in the
	// campaign asked for.
	HeldBy string `json:"held_by,omitempty"`
	// Moved, for already_queued: the message waited on a slower lane (a
	// bulk campaign's cancel, say) and now waits on the one this request
	// asked for, still counted in its own campaign (HeldBy).
	Moved bool `json:"moved,omitempty"`
	// StaysOn, for already_queued: the slower lane than the one asked for
	// that the cancel stays on, not moved, because it is running now or
	// lies deep in a long pending backlog (over 131,072 tasks from both
	// ends). Sending it again in a minute can move it.
	StaysOn string `json:"stays_on,omitempty"`
	// Resent (set by the client, never sent over the wire): the request
	// was sent again after an attempt whose answer was lost (a timeout, a
	// dropped connection, a 502/503/504). That attempt may have enqueued
	// the item, so already_queued or already_done can be this request's
	// own work. Campaign counts are exact either way.
	Resent bool `json:"-"`
}

// ItemError is a problem with one item.
type ItemError struct {
	Index   int    `json:"index"`
	Field   string `json:"field,omitempty"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e ItemError) Error() string {
	if e.Field != "" {
		return fmt.Sprintf("item %d: %s: %s", e.Index, e.Field, e.Message)
	}
	return fmt.Sprintf("item %d: %s", e.Index, e.Message)
}

// Response is the 202 answer to POST /v1/cancellations.
type Response struct {
	Enqueued      int `json:"enqueued"`
	AlreadyQueued int `json:"already_queued"`
	// Moved: of AlreadyQueued, the items moved to the lane asked for
	// (ItemResult.Moved).
	Moved       int          `json:"moved,omitempty"`
	AlreadyDone int          `json:"already_done"`
	Requeued    int          `json:"requeued"`
	Rejected    int          `json:"rejected"`
	Results     []ItemResult `json:"results"`
	// Resent: see ItemResult.Resent (for CancelMany, true when any of its
	// requests was sent again).
	Resent bool `json:"-"`
}

// CampaignStatus is a campaign's progress (GET /v1/campaigns/{id}).
type CampaignStatus struct {
	Campaign  string `json:"campaign"`
	Total     int64  `json:"total"`
	Done      int64  `json:"done"`
	Pending   int64  `json:"pending"`
	Retrying  int64  `json:"retrying"`
	Cancelled int64  `json:"cancelled"`
	// CancelledEarlier: cancels proven by an earlier attempt whose answer
	// was lost (included in Cancelled).
	CancelledEarlier int64 `json:"cancelled_by_earlier_attempt"`
	NotCancellable   int64 `json:"not_cancellable"`
	// AlreadySent and NotFound: "not found" cancels, verified by reading
	// the message back.
	AlreadySent  int64            `json:"already_sent"`
	NotFound     int64            `json:"not_found"`
	Expired      int64            `json:"expired"`
	DeadLettered int64            `json:"dead_lettered"`
	DeadByReason map[string]int64 `json:"dead_by_reason,omitempty"`
	// MovedTo: messages this campaign counted that were sent again under
	// another campaign, which counts them now (a sweep that found them
	// still scheduled, a file re-run under a new id): its total shrank by
	// these, and their outcomes are there. Net: a move back from a
	// campaign takes one off its count.
	MovedTo    map[string]int64 `json:"moved_to,omitempty"`
	StartedAt  time.Time        `json:"started_at"`
	FinishedAt *time.Time       `json:"finished_at,omitempty"`
	Complete   bool             `json:"complete"`
	// NeedsAttention: a cancel was dead-lettered or a location's sweep
	// failed, so messages may still go out, or a cancel expired (its
	// message's send time passed before its turn: it has gone out):
	// complete does not mean all went well (see dead_by_reason,
	// sweeps_failed, expired and the dead letters).
	// Messages this campaign's sweeps found held by other campaigns
	// (held_by_campaigns) are settled there.
	NeedsAttention bool `json:"needs_attention"`
	// DryRun: a dry-run sweep's campaign, which cancels nothing.
	DryRun bool              `json:"dry_run,omitempty"`
	Parked map[string]string `json:"parked_locations,omitempty"`
	// Sweeps: locations being swept for scheduled messages, how many
	// finished (failed ones included), the export pages read, the messages
	// read and those found still scheduled (their cancels are in Total).
	Sweeps       int64 `json:"sweeps,omitempty"`
	SweepsDone   int64 `json:"sweeps_done,omitempty"`
	SweepsFailed int64 `json:"sweeps_failed,omitempty"`
	SweepPages   int64 `json:"sweep_pages,omitempty"`
	SweepSeen    int64 `json:"sweep_messages_read,omitempty"`
	SweepFound   int64 `json:"sweep_scheduled_found,omitempty"`
	// HeldBy: other campaigns that count messages this campaign's sweeps
	// found scheduled but did not queue (already queued or done there):
	// what became of those messages is said there. One that expired since
	// is no longer named: its messages settled longer ago than the
	// retention.
	HeldBy []string `json:"held_by_campaigns,omitempty"`
	// SweepList is the campaign's newest sweeps (up to 20), one per
	// location swept: what each was asked to find, by which webhook event
	// if one asked, and what it found.
	SweepList []SweepSummary `json:"sweep_list,omitempty"`
}

// SweepSummary is one location's sweep in a campaign.
type SweepSummary struct {
	SweepID    string `json:"sweep_id"`
	LocationID string `json:"location_id"`
	ContactID  string `json:"contact_id,omitempty"`
	Channel    string `json:"channel,omitempty"`
	// Event and EventID: the HighLevel webhook event that started the
	// sweep (type and webhookId), if one did.
	Event   string `json:"event,omitempty"`
	EventID string `json:"event_id,omitempty"`
	// State is running, done or failed (a failed sweep is a dead letter).
	State     string    `json:"state"`
	StartedAt time.Time `json:"started_at"`
	Pages     int64     `json:"pages"`
	Seen      int64     `json:"messages_read"`
	// Found: messages still scheduled (by channel); Enqueued: the cancels
	// queued for them; Already: those a cancel was already queued or done
	// for (another campaign, an earlier sweep or event), not queued again.
	Found      int64 `json:"scheduled_found"`
	FoundSMS   int64 `json:"scheduled_sms"`
	FoundEmail int64 `json:"scheduled_email"`
	Enqueued   int64 `json:"cancels_queued"`
	Already    int64 `json:"already_queued_or_done,omitempty"`
	// Moved: of Already, the cancels that waited on a slower lane and now
	// wait on the sweep's.
	Moved int64 `json:"moved_to_this_lane,omitempty"`
	// Stayed: of Already, the cancels left on a slower lane than the
	// sweep's: running, or deep in a long backlog.
	Stayed int64  `json:"stayed_on_a_slower_lane,omitempty"`
	Error  string `json:"error,omitempty"`
}

// DeadLetter is a cancel that failed for good, with the reason.
type DeadLetter struct {
	TaskID     string    `json:"task_id"`
	Kind       string    `json:"kind,omitempty"`
	MessageID  string    `json:"message_id,omitempty"`
	LocationID string    `json:"location_id,omitempty"`
	CampaignID string    `json:"campaign_id,omitempty"`
	SendAt     int64     `json:"send_at,omitempty"`
	Queue      string    `json:"queue"`
	Reason     string    `json:"reason"`
	HTTPStatus int       `json:"http_status,omitempty"`
	APIMessage string    `json:"api_message,omitempty"`
	Attempts   int       `json:"attempts"`
	DeadAt     time.Time `json:"dead_at"`
	// Worker is host:pid of the worker that dead-lettered it.
	Worker  string `json:"worker,omitempty"`
	Payload string `json:"payload,omitempty"`
}

// DeadLetterPage is one page of GET /v1/dead-letters.
type DeadLetterPage struct {
	DeadLetters []DeadLetter `json:"dead_letters"`
	// NextCursor fetches the next page; empty on the last one.
	NextCursor string `json:"next_cursor,omitempty"`
}

// DeadLetterFilter selects dead letters; empty fields match all.
type DeadLetterFilter struct {
	Reason     string
	CampaignID string
	LocationID string
	Kind       string
}

// ErrorBody is the body of every error answer.
type ErrorBody struct {
	Error APIErrorDetail `json:"error"`
}

// APIErrorDetail is the error object: a stable code, a message for people,
// and for invalid items their positions.
type APIErrorDetail struct {
	Code    string      `json:"code"`
	Message string      `json:"message"`
	Items   []ItemError `json:"items,omitempty"`
	// InvalidItems counts every invalid item; Items lists at most 1,000.
	InvalidItems int `json:"invalid_items,omitempty"`
}

// Error codes the API answers with. They are stable: match on them.
const (
	CodeUnauthorized     = "unauthorized"
	CodePayloadTooLarge  = "payload_too_large"
	CodeTooManyItems     = "too_many_items"
	CodeMalformedJSON    = "malformed_json"
	CodeInvalidRequest   = "invalid_request"
	CodeInvalidItems     = "invalid_items"
	CodeUnsupportedMedia = "unsupported_media_type"
	CodeMethodNotAllowed = "method_not_allowed"
	CodeNotFound         = "not_found"
	CodeCampaignNotFound = "campaign_not_found"
	CodeInvalidParameter = "invalid_parameter"
	CodeQueueUnavailable = "queue_unavailable"
	CodeInternal         = "internal"
	CodeDuplicateRequest = "duplicate_request"
	// CodeIdempotencyKeyReused: an Idempotency-Key sent again with a
	// different request (422); nothing was started.
	CodeIdempotencyKeyReused = "idempotency_key_reused"
	CodeItemInvalidJSON      = "invalid_json"
	CodeItemMissingField     = "missing_field"
	CodeItemInvalidID        = "invalid_id"
	CodeItemInvalidKind      = "invalid_kind"
	CodeItemInvalidSendAt    = "invalid_send_at"
	CodeItemInvalidCampaign  = "invalid_campaign_id"
	CodeItemUnknownField     = "unknown_field"
	// CodeItemConflictingKind: the request holds the same message id as
	// a message and as an email; a message has one kind.
	CodeItemConflictingKind = "conflicting_kind"
	// CodeItemConflictingLocation: the request holds the same message id
	// at two locations; a message is in one.
	CodeItemConflictingLocation = "conflicting_location"
)

// Sweep channels.
const (
	ChannelSMS   = "sms"
	ChannelEmail = "email"
	ChannelAll   = "all"
)

// SweepRequest is the body of POST /v1/sweeps: find what is still
// scheduled in the locations, narrowed by the filters, and cancel it into
// one campaign (the workers page HighLevel's message export).
type SweepRequest struct {
	LocationIDs    []string `json:"location_ids"`
	ContactID      string   `json:"contact_id,omitempty"`
	ConversationID string   `json:"conversation_id,omitempty"`
	// Channel is sms, email or all (the default).
	Channel string `json:"channel,omitempty"`
	// Since and Until bound the messages' creation time.
	Since *SendAt `json:"since,omitempty"`
	Until *SendAt `json:"until,omitempty"`
	// Source keeps only messages from workflow, bulk_actions, campaign, api or app.
	Source string `json:"source,omitempty"`
	// CampaignID groups the cancels; one is made up when empty.
	CampaignID string `json:"campaign_id,omitempty"`
	// Lane of the cancels: urgent, default or bulk (default: default for a
	// contact or conversation sweep, else bulk).
	Lane string `json:"lane,omitempty"`
	// DryRun finds and counts only.
	DryRun bool `json:"dry_run,omitempty"`
	// IdempotencyKey is sent as the Idempotency-Key header (1 to 128
	// visible ASCII characters); empty: one is made up for the call. Set
	// it to be able to call Sweep again after an error matching
	// ErrMaybeProcessed: the intake then answers the first sweep.
	IdempotencyKey string `json:"-"`
}

// SweepResponse is the 202 answer to POST /v1/sweeps. Follow the sweep
// with GET /v1/campaigns/{campaign_id}.
type SweepResponse struct {
	SweepID    string   `json:"sweep_id"`
	CampaignID string   `json:"campaign_id"`
	TaskIDs    []string `json:"task_ids"`
}
