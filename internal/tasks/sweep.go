package tasks

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/ghlcancel/ghlcancel/internal/ghl"
)

// TypeSweep is a sweep of one location: page HighLevel's message export,
// keep what is still scheduled, enqueue its cancels into a campaign.
const TypeSweep = "ghl:location:sweep"

// Sweep channels.
const (
	ChannelSMS   = "sms"   // HighLevel's channel SMS
	ChannelEmail = "email" // channel Email (the export leaves email out otherwise)
	ChannelAll   = "all"   // every non-email message, then every email
)

// Sweep defaults.
const (
	// SweepTimeout bounds one delivery of a sweep; it pages for SweepBudget
	// of it and goes back to the queue to carry on (an export cursor lives
	// about 2 minutes, so the next delivery picks it up at once).
	SweepTimeout = 90 * time.Second
	SweepBudget  = 45 * time.Second
	// SweepMaxRetry: a sweep's own failures (HighLevel 5xx on the export)
	// retry with backoff like a cancel, about an hour. Its asynq MaxRetry
	// is AsynqMaxRetry(SweepMaxRetry): one spare attempt, so a wait on the
	// last try goes back to the queue instead of failing the sweep.
	SweepMaxRetry = 25
	// SweepPageSize is the export's largest page.
	SweepPageSize = 500
)

// SweepPayload is a sweep task's payload (no token).
type SweepPayload struct {
	SweepID        string `json:"sweep_id"`
	CampaignID     string `json:"campaign_id"`
	LocationID     string `json:"location_id"`
	ContactID      string `json:"contact_id,omitempty"`
	ConversationID string `json:"conversation_id,omitempty"`
	Channel        string `json:"channel"`
	// Since and Until bound the messages' creation time in unix seconds
	// (Until takes in its whole second); SinceMs and UntilMs, when set, to
	// the millisecond (HighLevel's dateAdded carries them). Window reads
	// them; SetWindow writes both, so a worker older than the
	// milliseconds reads the window as it did.
	Since   int64 `json:"since,omitempty"`
	Until   int64 `json:"until,omitempty"`
	SinceMs int64 `json:"since_ms,omitempty"`
	UntilMs int64 `json:"until_ms,omitempty"`
	// Source keeps only messages of this source (workflow, campaign, ...).
	Source string `json:"source,omitempty"`
	// Lane the cancels go to. Defaults to bulk.
	Lane string `json:"lane,omitempty"`
	// DryRun counts what would be cancelled and enqueues nothing.
	DryRun   bool  `json:"dry_run,omitempty"`
	PageSize int   `json:"page_size,omitempty"`
	Created  int64 `json:"created"` // unix ms
	// Event, EventID and EventAt (unix ms) name the webhook event that
	// started the sweep, if one did.
	Event   string `json:"event,omitempty"`
	EventID string `json:"event_id,omitempty"`
	EventAt int64  `json:"event_at,omitempty"`
	// Retries of the cancels the sweep queues, as producer.Config.MaxRetry
	// (0: the default; negative: none): the starter's MAX_RETRY or
	// --max-retry, not the worker's.
	Retries int `json:"retries,omitempty"`
}

// SweepSources are the message sources HighLevel documents.
var SweepSources = []string{"workflow", "bulk_actions", "campaign", "api", "app"}

// Validate checks a sweep payload.
func (p SweepPayload) Validate() error {
	if err := ghl.ValidateID(p.SweepID); err != nil {
		return fmt.Errorf("sweep_id: %w", err)
	}
	if err := ghl.ValidateID(p.LocationID); err != nil {
		return fmt.Errorf("location_id: %w", err)
	}
	for _, f := range []struct{ name, v string }{{"contact_id", p.ContactID}, {"conversation_id", p.ConversationID}} {
		if f.v != "" {
			if err := ghl.ValidateID(f.v); err != nil {
				return fmt.Errorf("%s: %w", f.name, err)
			}
		}
	}
	if p.CampaignID == "" || len(p.CampaignID) > CampaignIDMax {
		return fmt.Errorf("campaign_id: 1 to %d bytes", CampaignIDMax)
	}
	if !slices.Contains([]string{ChannelSMS, ChannelEmail, ChannelAll}, p.Channel) {
		return fmt.Errorf("channel %q: want sms, email or all", p.Channel)
	}
	if p.Source != "" && !slices.Contains(SweepSources, p.Source) {
		return fmt.Errorf("source %q: want one of %v", p.Source, SweepSources)
	}
	if since, until := p.Window(); !since.IsZero() && !until.IsZero() && until.Before(since) {
		return errors.New("until is before since")
	}
	if p.Lane != "" && !slices.Contains(Queues, p.Lane) {
		return fmt.Errorf("lane %q: want urgent, default or bulk", p.Lane)
	}
	if p.PageSize != 0 && (p.PageSize < 10 || p.PageSize > 500) {
		return errors.New("page_size: 10 to 500")
	}
	return nil
}

// Window is the messages' creation-time window, both ends in (zero:
// unbounded), to the millisecond.
func (p SweepPayload) Window() (since, until time.Time) {
	switch {
	case p.SinceMs > 0:
		since = time.UnixMilli(p.SinceMs)
	case p.Since > 0:
		since = time.Unix(p.Since, 0)
	}
	switch {
	case p.UntilMs > 0:
		until = time.UnixMilli(p.UntilMs)
	case p.Until > 0: // written in whole seconds: all of its second
		until = time.Unix(p.Until, 0).Add(time.Second - time.Millisecond)
	}
	return since, until
}

// SetWindow sets the creation-time window (zero: unbounded) to the
// millisecond: since rounded up and until down, so that no message created
// outside it is in. An until with no fraction of a second (unix seconds,
// or an RFC 3339 time without one) takes in its whole second, as it did
// before the milliseconds and as Window reads a payload of seconds: the
// same request means the same window, and a failed run written before is
// replaced by the same request now. The whole seconds are set for older
// workers.
func (p *SweepPayload) SetWindow(since, until time.Time) {
	p.Since, p.SinceMs, p.Until, p.UntilMs = 0, 0, 0, 0
	if !since.IsZero() {
		p.SinceMs = since.Add(time.Millisecond - 1).UnixMilli()
		p.Since = since.Unix()
	}
	if !until.IsZero() {
		p.UntilMs = until.UnixMilli()
		if until.Nanosecond() == 0 {
			p.UntilMs += 999
		}
		p.Until = until.Unix()
	}
}

// InWindow says whether a message created at t is in the window.
func (p SweepPayload) InWindow(t time.Time) bool {
	since, until := p.Window()
	return (since.IsZero() || !t.Before(since)) && (until.IsZero() || !t.After(until))
}

// SweepTaskID is the asynq task id of one location's sweep.
func SweepTaskID(sweepID, location string) string { return "sweep:" + sweepID + ":" + location }

// Phases returns the export channels a sweep pages, in order.
func (p SweepPayload) Phases() []string {
	switch p.Channel {
	case ChannelSMS:
		return []string{"SMS"}
	case ChannelEmail:
		return []string{"Email"}
	}
	return []string{"", "Email"} // every non-email message, then the emails
}
