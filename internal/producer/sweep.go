package producer

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ghlcancel/ghlcancel/internal/deadletter"
	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/ledger"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
)

// SweepRequest asks for every message still scheduled in some locations,
// narrowed by the filters, to be found and cancelled into one campaign.
type SweepRequest struct {
	Locations      []string
	ContactID      string
	ConversationID string
	Channel        string // sms, email or all (the default)
	Since, Until   time.Time
	Source         string
	// CampaignID groups the cancels; one is made up when empty.
	CampaignID string
	// Lane of the cancels. Defaults to bulk (default for a contact sweep,
	// which is a handful of messages someone is waiting on).
	Lane   string
	DryRun bool
	// PageSize of the export (10 to 500). Defaults to 500.
	PageSize int
	// Queue the sweep tasks go to. Defaults to default.
	Queue string
	// Event, EventID and EventAt name the webhook event that asked for
	// the sweep (kept in its payload, its cancels and its dead letter).
	Event, EventID string
	EventAt        time.Time
	// DedupeKey, when set, is claimed in the same script that queues the
	// sweep (SET NX, DedupeTTL): when it is taken, nothing is queued and
	// Sweep returns ErrDuplicate. A webhook's id, so a replayed or retried
	// delivery queues nothing twice and a failed one leaves no claim.
	DedupeKey string
	DedupeTTL time.Duration
	// DedupeRequest, when set, names what was asked under DedupeKey (a
	// digest of the request): it is kept with the first answer, and a
	// repeat of the key that asks something else gets ErrDedupeMismatch
	// instead of that answer.
	DedupeRequest string
	// revive is the task id of a failed sweep's dead letter this one
	// replays (ReviveSweep); retries, the retries its cancels had.
	revive      string
	reviveState string // the revived run's state key
	retries     int
}

// ErrDuplicate: SweepRequest.DedupeKey was already claimed. Sweep then
// returns the first sweep's SweepStarted when the key holds it (a key
// claimed before answers were stored holds none).
var ErrDuplicate = errors.New("sweep: already queued for this dedupe key")

// ErrDedupeMismatch: SweepRequest.DedupeKey was claimed by a request other
// than this one (its DedupeRequest differs). Nothing is queued; the first
// answer is not this request's, so it is not returned.
var ErrDedupeMismatch = errors.New("sweep: the dedupe key was used for a different request")

// dedupeAnswer is what a dedupe key holds: the first answer, and what was
// asked (absent in keys written before requests were kept, or by callers
// that name none: those answer any repeat).
type dedupeAnswer struct {
	SweepStarted
	Request string `json:"request,omitempty"`
}

// SweepStarted says what Sweep queued.
type SweepStarted struct {
	SweepID    string   `json:"sweep_id"`
	CampaignID string   `json:"campaign_id"`
	TaskIDs    []string `json:"task_ids"`
}

// NewID returns a random id for a sweep or a campaign (20 letters and digits).
func NewID(prefix string) string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return prefix + time.Now().UTC().Format("20060102") + "-" + hex.EncodeToString(b[:])
}

// sweepScript queues sweep tasks the way enqueueScript queues cancels and
// counts them in their campaign (a campaign is complete only when its
// sweeps are done too). KEYS: none. ARGV: now ns, now ms, retention ms,
// campaign, dedupe key ("" for none), dedupe ttl ms, dead letter revived
// ("" for none), the answer kept under the dedupe key, the revived sweep's
// state key ("" for none: its run leaves the campaign's sweep list, which
// lists each location sweep once, as the counters count it), dry run (1/0),
// earlier failed runs this one replaces ("task id\tstate key" lines, see
// failedRunsReplaced), this sweep's id, then per task: encoded message, task id, lane, sweep state key, location,
// contact, channel, event, event id. Returns -1 when the dedupe key is
// taken, -2 when the dead letter to revive is gone (replayed already), -3
// when a real sweep is sent into a dry run's campaign: nothing queued. A
// dry run's campaign is marked dry_run here (its total stays 0: a poller
// must not read "complete, 0" as nothing to cancel). A revived
// sweep's failure is taken back from its campaign's counters when the
// campaign still counts it (its id is in the campaign's failed_sweeps set,
// which expires with the campaign's other keys).
var sweepScript = redis.NewScript(ledger.Lua + deadletter.LuaDropArchived + `
local LANES = {` + luaLanes() + `}
local nowns, now, ttl, campaign = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local dry = ARGV[10] == "1"
-- Before the first write to the campaign's hash (cadd's check comes after).
local existed = not cnew(campaign)
-- A real sweep would count its cancels in a campaign that says nothing
-- was cancelled (dry_run): refused. A replay (ARGV[7]) keeps its campaign.
if ARGV[7] == "" and not dry and redis.call("HGET", (ck(campaign)), "dry_run") == "1" then return -3 end
-- The dedupe key first: a repeat (a redelivered event, a retried request)
-- changes nothing, not even the failed runs it would replace.
if ARGV[5] ~= "" and not redis.call("SET", ARGV[5], ARGV[8], "NX", "PX", ARGV[6]) then return -1 end
-- takeback: a failed run's dead letter goes, and its campaign no longer
-- counts the run (its sweep, its failure, its place in the sweep list):
-- the run queued here replaces it. False when the dead letter is gone.
local function takeback(id, state)
  if redis.call("HDEL", "` + deadletter.KeyRecords + `", id) == 0 then return false end
  redis.call("ZREM", "` + deadletter.KeyIndex + `", id)
  -- asynq's archived copy goes with it, as a requeued cancel's does.
  for _, l in ipairs(LANES) do drop_archived(l, id) end
  -- Who follows the failed run (sweep --wait) finds how it ends.
  if state ~= "" and redis.call("EXISTS", state) == 1 then redis.call("HSET", state, "replaced_by", ARGV[12]) end
  local k = ck(campaign)
  if redis.call("SREM", k .. ":failed_sweeps", id) == 1 then
    redis.call("HINCRBY", k, "sweeps", -1)
    redis.call("HINCRBY", k, "sweeps_done", -1)
    redis.call("HINCRBY", k, "sweeps_failed", -1)
    if state ~= "" then redis.call("ZREM", k .. ":sweeplist", state) end
  end
  return true
end
if ARGV[7] ~= "" and not takeback(ARGV[7], ARGV[9]) then return -2 end
-- The same sweep run again (not requeued) in the campaign of a failed run:
-- it replaces that run as a requeue would (the failure no longer counts:
-- "1 failed sweep, messages may still go out" after the new run cancelled
-- them all). One already replayed is skipped.
for line in string.gmatch(ARGV[11], "[^\n]+") do
  local id, state = string.match(line, "^([^\t]*)\t(.*)$")
  if id then takeback(id, state) end
end
local added = 0
local k, _, _, kl = ck(campaign)
for i = 13, #ARGV, 9 do
  local msg, id, lane, state, loc = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4]
  if redis.call("EXISTS", "asynq:{" .. lane .. "}:t:" .. id) == 0 then
    redis.call("HSET", "asynq:{" .. lane .. "}:t:" .. id, "msg", msg, "state", "pending", "pending_since", nowns)
    redis.call("LPUSH", "asynq:{" .. lane .. "}:pending", id)
    redis.call("HSET", state, "location", loc, "phase", "", "cursor", "", "created", now,
      "contact", ARGV[i+5], "channel", ARGV[i+6], "event", ARGV[i+7], "event_id", ARGV[i+8])
    redis.call("PEXPIRE", state, ttl)
    redis.call("ZADD", k .. ":sweeplist", now, state)
    added = added + 1
  end
  redis.call("SADD", kl, loc)
end
redis.call("ZREMRANGEBYRANK", k .. ":sweeplist", 0, -` + strconv.Itoa(sweepListKeep+1) + `)
redis.call("HINCRBY", k, "sweeps", added)
-- A replayed dry run (one from before dry runs had campaigns of their
-- own) does not mark the campaign it was named into, unless that campaign
-- is new here (its own expired before its dead letter was replayed).
if dry and added > 0 and (ARGV[7] == "" or not existed) then redis.call("HSET", k, "dry_run", "1") end
cadd(campaign, 0, "", now, ttl)
return added`)

// SinceSkew is how far ahead of this clock a sweep's since may be (the
// producer's clock may trail HighLevel's).
const SinceSkew = 5 * time.Minute

// sweepListKeep bounds a campaign's sweep list (the status shows the
// newest campaign.SweepListMax).
const sweepListKeep = 100

// SweepStateKey is where one location's sweep keeps its progress.
func SweepStateKey(sweepID, location string) string { return ledger.SweepStateKey(sweepID, location) }

// ErrDryRunCampaign: a dry-run sweep counts into a campaign of its own.
var ErrDryRunCampaign = errors.New("sweep: a dry run counts into a campaign of its own; leave out the campaign id (the real sweep can use it)")

// Sweep validates r and queues one sweep task per location (the workers
// page the export, holding the tokens, the pacer and the retry policy).
func (p *Producer) Sweep(ctx context.Context, r SweepRequest) (SweepStarted, error) {
	if len(r.Locations) == 0 {
		return SweepStarted{}, errors.New("sweep: give at least one location")
	}
	if r.DryRun && r.CampaignID != "" && r.revive == "" {
		// Its pages, found messages and the sweep itself would count in that
		// campaign, next to the real sweep that follows it.
		return SweepStarted{}, ErrDryRunCampaign
	}
	if r.Channel == "" {
		r.Channel = tasks.ChannelAll
	}
	if r.Lane == "" {
		r.Lane = tasks.QueueBulk
	}
	if r.revive == "" && r.Since.After(time.Now().Add(SinceSkew)) {
		// No message is created in the future: a read of the window as
		// send times would find nothing, report a clean sweep, and leave
		// everything to go out.
		return SweepStarted{}, fmt.Errorf("sweep: since %s is in the future: the window filters when messages were created, not when they go out (leave it out to find every scheduled message)",
			r.Since.UTC().Format(time.RFC3339))
	}
	queue := r.Queue
	if queue == "" {
		queue = tasks.QueueDefault
	}
	st := SweepStarted{SweepID: NewID("sw"), CampaignID: r.CampaignID}
	if st.CampaignID == "" {
		st.CampaignID = NewID("sweep-")
	}
	now := time.Now()
	args := []any{strconv.FormatInt(now.UnixNano(), 10), now.UnixMilli(), p.cfg.CampaignRetention.Milliseconds(), st.CampaignID,
		r.DedupeKey, max(r.DedupeTTL.Milliseconds(), 1), r.revive, "", r.reviveState, flag(r.DryRun), "", st.SweepID}
	seen := map[string]bool{}
	for _, loc := range r.Locations {
		if seen[loc] {
			continue
		}
		seen[loc] = true
		pl := tasks.SweepPayload{SweepID: st.SweepID, CampaignID: st.CampaignID, LocationID: loc, ContactID: r.ContactID,
			ConversationID: r.ConversationID, Channel: r.Channel, Source: r.Source, Lane: r.Lane, DryRun: r.DryRun,
			PageSize: r.PageSize, Created: now.UnixMilli(), Event: r.Event, EventID: r.EventID,
			Retries: p.cfg.MaxRetry}
		if r.revive != "" {
			pl.Retries = r.retries
		}
		if !r.EventAt.IsZero() {
			pl.EventAt = r.EventAt.UnixMilli()
		}
		pl.SetWindow(r.Since, r.Until)
		if err := pl.Validate(); err != nil {
			return SweepStarted{}, fmt.Errorf("sweep of location %q: %w", loc, err)
		}
		if err := tasks.ValidateCampaignID(pl.CampaignID); err != nil && r.revive == "" { // a replay keeps its campaign
			return SweepStarted{}, fmt.Errorf("sweep of location %q: campaign_id: %w", loc, err)
		}
		b, err := json.Marshal(pl)
		if err != nil {
			return SweepStarted{}, err
		}
		id := tasks.SweepTaskID(st.SweepID, loc)
		args = append(args, encodeTaskMessage(tasks.TypeSweep, b, id, queue, tasks.AsynqMaxRetry(tasks.SweepMaxRetry), tasks.SweepTimeout),
			id, queue, SweepStateKey(st.SweepID, loc), loc, r.ContactID, r.Channel, r.Event, r.EventID)
		st.TaskIDs = append(st.TaskIDs, id)
	}
	if r.revive == "" && !r.DryRun && r.CampaignID != "" {
		replaced, err := p.failedRunsReplaced(ctx, r, seen)
		if err != nil {
			return SweepStarted{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		args[10] = replaced
	}
	if err := p.publish(ctx, queue); err != nil {
		return SweepStarted{}, err
	}
	answer, err := json.Marshal(dedupeAnswer{SweepStarted: st, Request: r.DedupeRequest})
	if err != nil {
		return SweepStarted{}, err
	}
	args[7] = answer
	n, err := sweepScript.Run(ctx, p.rdb, nil, args...).Int()
	if err != nil {
		return SweepStarted{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	switch n {
	case -1:
		// The answer of the sweep that took the key, when it is still there.
		var first dedupeAnswer
		b, err := p.rdb.Get(ctx, r.DedupeKey).Bytes()
		switch {
		case err == nil:
			_ = json.Unmarshal(b, &first)
		case !errors.Is(err, redis.Nil):
			return SweepStarted{}, fmt.Errorf("%w: reading the first answer: %w", ErrUnavailable, err)
		}
		if first.Request != "" && r.DedupeRequest != "" && first.Request != r.DedupeRequest {
			return SweepStarted{}, ErrDedupeMismatch
		}
		return first.SweepStarted, ErrDuplicate
	case -2:
		return SweepStarted{}, ErrSweepRevived
	case -3:
		return SweepStarted{}, fmt.Errorf("%w (campaign %s)", ErrIntoDryRun, st.CampaignID)
	}
	return st, nil
}

// ErrIntoDryRun: a real sweep, or a cancel, was sent into a dry run's
// campaign, which says nothing was cancelled: it would be counted under
// that.
var ErrIntoDryRun = errors.New("that campaign is a dry run's (it counts what a sweep would cancel, and says nothing was cancelled); send it with no campaign id, or a new one")

// DryRunCampaigns says which of the campaigns are dry runs' (a cancel sent
// into one is refused: ErrIntoDryRun), so that a caller can refuse a whole
// request before anything is enqueued. The enqueue rule checks again.
func (p *Producer) DryRunCampaigns(ctx context.Context, campaigns []string) (map[string]bool, error) {
	pipe := p.rdb.Pipeline()
	cmds := make([]*redis.StringCmd, len(campaigns))
	for i, c := range campaigns {
		cmds[i] = pipe.HGet(ctx, ledger.CampaignKey(c), "dry_run")
	}
	if len(campaigns) == 0 {
		return nil, nil
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	out := map[string]bool{}
	for i, c := range cmds {
		if c.Val() == "1" {
			out[campaigns[i]] = true
		}
	}
	return out, nil
}

// failedRunsReplaced lists, for sweepScript, the failed sweeps of r's
// campaign that r runs again: the same location (one of locs) and the same
// filters. Each is a "task id\tstate key" line.
func (p *Producer) failedRunsReplaced(ctx context.Context, r SweepRequest, locs map[string]bool) (string, error) {
	ids, err := p.rdb.SMembers(ctx, ledger.CampaignKey(r.CampaignID)+":failed_sweeps").Result()
	if err != nil || len(ids) == 0 {
		return "", err
	}
	recs, err := p.rdb.HMGet(ctx, deadletter.KeyRecords, ids...).Result()
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for i, v := range recs {
		// A record gone (requeued, purged) or unreadable is no run to
		// replace; it must not stop the sweep.
		raw, _ := v.(string)
		var rec deadletter.Record
		var pl tasks.SweepPayload
		if raw == "" || json.Unmarshal([]byte(raw), &rec) != nil || rec.Kind != "sweep" ||
			json.Unmarshal([]byte(rec.Payload), &pl) != nil || !locs[pl.LocationID] || !sameFilters(pl, r) {
			continue
		}
		b.WriteString(ids[i] + "\t" + SweepStateKey(pl.SweepID, pl.LocationID) + "\n")
	}
	return b.String(), nil
}

// sameFilters: the failed run pl asked for what r asks (r's channel set).
func sameFilters(pl tasks.SweepPayload, r SweepRequest) bool {
	var asked tasks.SweepPayload
	asked.SetWindow(r.Since, r.Until)
	since, until := pl.Window()
	askedSince, askedUntil := asked.Window()
	return !pl.DryRun && pl.ContactID == r.ContactID && pl.ConversationID == r.ConversationID && pl.Channel == r.Channel &&
		pl.Source == r.Source && since.Equal(askedSince) && until.Equal(askedUntil)
}

// ErrSweepRevived: the sweep dead letter was replayed by someone else
// first (a second requeue, or two at once): its sweep is queued already.
var ErrSweepRevived = errors.New("sweep: dead letter already replayed")

// ReviveSweep replays a failed sweep's dead letter (one a fix can cure, as
// no_token after the location's token is added): the same filters, campaign
// and triggering event, under a new sweep id; the record is removed and the
// failure taken back from the campaign in the same script. ok is false when
// the record holds no sweep payload (err nil) or was replayed already (err
// ErrSweepRevived).
func (p *Producer) ReviveSweep(ctx context.Context, rec deadletter.Record) (st SweepStarted, ok bool, err error) {
	var pl tasks.SweepPayload
	if rec.Kind != "sweep" || rec.Payload == "" || json.Unmarshal([]byte(rec.Payload), &pl) != nil || pl.Validate() != nil {
		return SweepStarted{}, false, nil
	}
	r := SweepRequest{Locations: []string{pl.LocationID}, ContactID: pl.ContactID, ConversationID: pl.ConversationID,
		Channel: pl.Channel, Source: pl.Source, CampaignID: pl.CampaignID, Lane: pl.Lane, DryRun: pl.DryRun,
		PageSize: pl.PageSize, Queue: rec.Queue, Event: pl.Event, EventID: pl.EventID, revive: rec.TaskID, reviveState: SweepStateKey(pl.SweepID, pl.LocationID), retries: pl.Retries}
	r.Since, r.Until = pl.Window()
	// EventAt is not carried over: the replay's cancels come long after
	// the event, and the event-to-cancel latency is about the pipeline.
	st, err = p.Sweep(ctx, r)
	if err != nil {
		return SweepStarted{}, false, err
	}
	return st, true, nil
}

// publish adds a lane to asynq's set of queues once per producer.
func (p *Producer) publish(ctx context.Context, lane string) error {
	if _, ok := p.published.Load(lane); ok {
		return nil
	}
	if err := p.rdb.SAdd(ctx, "asynq:queues", lane).Err(); err != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	p.published.Store(lane, true)
	return nil
}

// SweepItems turns one export page into cancels: the messages still
// scheduled that pass the filters the export has none for (source, and the
// date window again, in case HighLevel reads it differently). An email is
// cancelled by its emailMessageId (the last of meta.email.messageIds: the
// newest of its thread); an email without one is counted in noID.
func SweepItems(p tasks.SweepPayload, msgs []ghl.ExportedMessage, asked time.Time) (items []Item, scheduled, noID int) {
	for _, m := range msgs {
		if m.Status != "scheduled" || (p.Source != "" && m.Source != p.Source) {
			continue
		}
		if t, err := time.Parse(time.RFC3339, m.DateAdded); err == nil && !p.InWindow(t) {
			continue
		}
		scheduled++
		// Forced over an outcome recorded before the export was asked:
		// HighLevel lists the message as scheduled after it (expired, not
		// found, or cancelled and then scheduled again), so it is cancelled
		// again, not answered "already done" while it is left to go out. An
		// outcome recorded after asked (another sweep or a campaign
		// cancelled it while this page was on its way) stands. A message
		// already queued stays queued.
		it := Item{Kind: ghl.KindMessage, MessageID: m.ID, LocationID: p.LocationID, CampaignID: p.CampaignID, Queue: p.Lane,
			Event: p.Event, EventAt: p.EventAt, ForceBefore: asked.UnixMilli(), MaxRetry: p.Retries}
		if m.IsEmail() {
			ids := m.Meta.Email.MessageIDs
			if len(ids) == 0 {
				noID++
				continue
			}
			it.Kind, it.MessageID = ghl.KindEmail, ids[len(ids)-1]
		}
		items = append(items, it)
	}
	return items, scheduled, noID
}
