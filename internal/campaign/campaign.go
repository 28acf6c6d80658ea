// Package campaign reads cancel campaigns from Redis: how many distinct
// messages were enqueued, how many reached each terminal outcome, which are
// retrying, and one row per message for the report. The writes happen in
// two scripts only: the producer's enqueue script counts distinct messages
// (a resent id never counts twice), and internal/ledger's settle script
// records each message's outcome once, atomically with its dead letter.
// Everything expires Retention after the campaign's last update.
package campaign

import (
	"cmp"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ghlcancel/ghlcancel/client"
	"github.com/ghlcancel/ghlcancel/internal/deadletter"
	"github.com/ghlcancel/ghlcancel/internal/ledger"
	"github.com/ghlcancel/ghlcancel/internal/ratelimit"
)

// RetentionDefault is how long a campaign's counters and report are kept
// after its last update.
const RetentionDefault = ledger.RetentionDefault

// Terminal outcomes, as counted.
const (
	Cancelled      = ledger.Cancelled
	NotCancellable = ledger.NotCancellable
	Expired        = ledger.Expired
	DeadLettered   = ledger.DeadLettered
)

// Tracker reads campaign progress. The counters are written by the
// producer's enqueue script (distinct totals) and the ledger's settle
// script (outcomes), never here. Safe for concurrent use.
type Tracker struct {
	rdb       redis.UniversalClient
	retention time.Duration
}

// New returns a Tracker; retention 0 means RetentionDefault.
func New(rdb redis.UniversalClient, retention time.Duration) *Tracker {
	return &Tracker{rdb: rdb, retention: cmp.Or(retention, RetentionDefault)}
}

// Status is a campaign's progress.
type Status struct {
	Campaign  string `json:"campaign"`
	Total     int64  `json:"total"`
	Done      int64  `json:"done"`
	Pending   int64  `json:"pending"` // not yet terminal, retrying included
	Retrying  int64  `json:"retrying"`
	Cancelled int64  `json:"cancelled"`
	// CancelledEarlier counts cancels proven by an earlier attempt (its
	// answer was lost; this attempt's "not found" is its trace); they are
	// included in Cancelled.
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
	// DryRun: a dry-run sweep's campaign: it counts what a sweep would
	// cancel and cancels nothing (its total stays 0).
	DryRun bool              `json:"dry_run,omitempty"`
	Parked map[string]string `json:"parked_locations,omitempty"` // location -> why
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
	// what became of those messages is said there (see Tracker.Held).
	// Campaigns that expired since are left out (dropGone).
	HeldBy []string `json:"held_by_campaigns,omitempty"`
	// SweepList: the newest sweeps, filled by WithSweeps (Get leaves it
	// empty: it is polled).
	SweepList []client.SweepSummary `json:"sweep_list,omitempty"`
}

// Workers counts the worker processes serving this Redis database (asynq's
// live servers, scored by when each entry expires). 0 means queued
// cancels wait: a database number mistyped in REDIS_URL, or no worker
// started yet.
func (t *Tracker) Workers(ctx context.Context) (int64, error) {
	// By Redis's clock: asynq scores an entry by its worker's clock, and
	// this host's may run ahead of it (review).
	return workersScript.Run(ctx, t.rdb, []string{"asynq:servers"}).Int64()
}

var workersScript = redis.NewScript(`
local t = redis.call("TIME")
return redis.call("ZCOUNT", KEYS[1], t[1], "+inf")`)

// PacedFloor is the least time s's pending cancels need under the pacing
// of the campaign's locations (ratelimit.Floor, with the limits HighLevel
// reported); 0 when it is unknown (see Floor), for a complete campaign, or
// one over ratelimit.FloorMaxLocations locations.
func (t *Tracker) PacedFloor(ctx context.Context, s Status) (time.Duration, error) {
	if s.Complete || s.Pending <= 0 {
		return 0, nil
	}
	n, err := t.rdb.SCard(ctx, ledger.CampaignLocationsKey(s.Campaign)).Result()
	if err != nil || n == 0 || n > ratelimit.FloorMaxLocations {
		return 0, err
	}
	locs, err := t.Locations(ctx, s.Campaign)
	if err != nil {
		return 0, err
	}
	// No margin: the workers' may be smaller than the default (RATE_LIMIT_MARGIN).
	d, _, err := ratelimit.Floor(ctx, t.rdb, locs, s.Pending, 0)
	return d, err
}

// SweepListMax is how many sweeps WithSweeps lists.
const SweepListMax = 20

// WithSweeps fills s.SweepList with the campaign's newest sweeps.
func (t *Tracker) WithSweeps(ctx context.Context, s *Status) error {
	if s.Sweeps == 0 {
		return nil
	}
	keys, err := t.rdb.ZRevRange(ctx, ledger.CampaignSweepListKey(s.Campaign), 0, SweepListMax-1).Result()
	if err != nil || len(keys) == 0 {
		return err
	}
	cmds := make([]*redis.MapStringStringCmd, len(keys))
	if _, err := t.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, k := range keys {
			cmds[i] = p.HGetAll(ctx, k)
		}
		return nil
	}); err != nil {
		return err
	}
	for i, c := range cmds {
		m := c.Val()
		if len(m) == 0 {
			continue // expired
		}
		n := func(k string) int64 { v, _ := strconv.ParseInt(m[k], 10, 64); return v }
		id, _, _ := strings.Cut(strings.TrimPrefix(keys[i], "ghlcancel:sweep:{"), "}")
		st := "running"
		if m["phase"] == "done" || m["phase"] == "failed" {
			st = m["phase"]
		}
		s.SweepList = append(s.SweepList, client.SweepSummary{SweepID: id, LocationID: m["location"], ContactID: m["contact"],
			Channel: m["channel"], Event: m["event"], EventID: m["event_id"], State: st, StartedAt: time.UnixMilli(n("created")).UTC(),
			Pages: n("pages"), Seen: n("seen"), Found: n("found"), FoundSMS: n("found_sms"), FoundEmail: n("found_email"),
			Enqueued: n("enqueued"), Already: n("already"), Moved: n("moved"), Stayed: n("stayed"), Error: m["error"]})
	}
	return nil
}

// Get returns a campaign's status; ok is false for an unknown campaign.
func (t *Tracker) Get(ctx context.Context, campaign string) (Status, bool, error) {
	var read statusRead
	if _, err := t.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		read = queueStatus(ctx, p, campaign)
		return nil
	}); err != nil {
		return Status{}, false, err
	}
	s, ok := read.status(campaign)
	if ok {
		err := t.dropGone(ctx, []*Status{&s})
		return s, ok, err
	}
	return s, ok, nil
}

// dropGone removes from each status's HeldBy the campaigns that expired
// (or were deleted) since: they hold nothing any more, and a reader told to
// check them would find no such campaign. One round trip, when any names one.
func (t *Tracker) dropGone(ctx context.Context, ss []*Status) error {
	exists := map[string]*redis.IntCmd{}
	for _, s := range ss {
		for _, c := range s.HeldBy {
			exists[c] = nil
		}
	}
	if len(exists) == 0 {
		return nil
	}
	if err := t.pipelined(ctx, func(p redis.Pipeliner) {
		for c := range exists {
			exists[c] = p.Exists(ctx, ledger.CampaignKey(c))
		}
	}); err != nil {
		return err
	}
	for _, s := range ss {
		s.HeldBy = slices.DeleteFunc(s.HeldBy, func(c string) bool { return exists[c].Val() == 0 })
		if len(s.HeldBy) == 0 {
			s.HeldBy = nil
		}
	}
	return nil
}

// statusRead is a campaign's counters and retrying count, queued on a pipeline.
type statusRead struct {
	h        *redis.MapStringStringCmd
	retrying *redis.IntCmd
	heldBy   *redis.StringSliceCmd
}

func queueStatus(ctx context.Context, p redis.Pipeliner, campaign string) statusRead {
	return statusRead{h: p.HGetAll(ctx, ledger.CampaignKey(campaign)), retrying: p.SCard(ctx, ledger.CampaignRetryingKey(campaign)),
		heldBy: p.SMembers(ctx, ledger.CampaignHeldByKey(campaign))}
}

// status decodes the read; ok is false for an unknown (or expired) campaign.
func (r statusRead) status(campaign string) (Status, bool) {
	m := r.h.Val()
	if len(m) == 0 {
		return Status{}, false
	}
	n := func(k string) int64 { v, _ := strconv.ParseInt(m[k], 10, 64); return v }
	s := Status{
		Campaign: campaign, Total: n("total"), Retrying: r.retrying.Val(),
		Cancelled: n(Cancelled), CancelledEarlier: n(Cancelled + ":" + ledger.ReasonEarlierAttempt), NotCancellable: n(NotCancellable), AlreadySent: n(ledger.AlreadySent), NotFound: n(ledger.NotFound), Expired: n(Expired), DeadLettered: n(DeadLettered),
		StartedAt: time.UnixMilli(n("started_at")), DeadByReason: map[string]int64{},
	}
	for k := range m {
		if r, ok := strings.CutPrefix(k, "dead:"); ok && n(k) > 0 {
			s.DeadByReason[r] = n(k)
		}
		if c, ok := strings.CutPrefix(k, "moved:"); ok && n(k) > 0 {
			if s.MovedTo == nil {
				s.MovedTo = map[string]int64{}
			}
			s.MovedTo[c] = n(k)
		}
	}
	s.Done = s.Cancelled + s.NotCancellable + s.AlreadySent + s.NotFound + s.Expired + s.DeadLettered
	s.Sweeps, s.SweepsDone, s.SweepsFailed = n("sweeps"), n("sweeps_done"), n("sweeps_failed")
	// Expired too: a cancel that came after its message's send time (a
	// backlog, a parked location, or a send time already past) did not
	// cancel it; "complete" alone read as success (daily-budget audit).
	s.NeedsAttention = s.DeadLettered > 0 || s.SweepsFailed > 0 || s.Expired > 0
	s.DryRun = m["dry_run"] == "1"
	s.SweepPages, s.SweepSeen, s.SweepFound = n("sweep_pages"), n("sweep_seen"), n("sweep_found")
	if held := r.heldBy.Val(); len(held) > 0 {
		s.HeldBy = slices.Sorted(slices.Values(held))
	}
	s.Pending = s.Total - s.Done
	if f := n("finished_at"); f > 0 {
		ft := time.UnixMilli(f)
		s.FinishedAt = &ft
		s.Complete = true
	}
	return s, true
}

// HeldReport says what became of the messages a campaign's sweeps found
// scheduled but did not queue, because another campaign (or none) had
// queued or done them first (Status.HeldBy names those campaigns).
type HeldReport struct {
	Followed int // messages followed
	Waiting  int // still queued or running: no outcome yet
	Failed   int // dead-lettered: they may still go out
	Expired  int // expired: their send time passed first, they went out
	Lost     int // no outcome and no task, its holding campaign there: deleted by hand
	// Forgotten: no outcome and no task, and the campaign that held it has
	// expired too: settled longer ago than the retention, its outcome no
	// longer kept. Not a failure.
	Forgotten int
	// More: more than ledger.HeldMax were found so: the rest is not followed.
	More bool
}

// Bad reports whether some of the messages may still go out, or could
// not be followed.
func (r HeldReport) Bad() bool { return r.Failed > 0 || r.Expired > 0 || r.Lost > 0 || r.More }

// Held follows, message by message, what the campaign's sweeps found but
// did not queue (see follow). A fixed number of round trips whatever the
// count (at most ledger.HeldMax messages).
func (t *Tracker) Held(ctx context.Context, s Status) (HeldReport, error) {
	members, err := t.rdb.SMembers(ctx, ledger.CampaignHeldKey(s.Campaign)).Result()
	if err != nil {
		return HeldReport{}, err
	}
	more, err := t.rdb.HGet(ctx, ledger.CampaignKey(s.Campaign), "held_more").Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return HeldReport{}, err
	}
	return t.follow(ctx, members, more == "1")
}

// HeldIn follows what the sweep runs with these state keys found but did
// not queue (sweep --wait: its own runs, not the campaign's earlier sweeps).
// One round trip for the runs' sets, then follow's; at most
// ledger.HeldMax messages are followed in all (More beyond).
func (t *Tracker) HeldIn(ctx context.Context, stateKeys []string) (HeldReport, error) {
	sets := make([]*redis.StringSliceCmd, len(stateKeys))
	flags := make([]*redis.StringCmd, len(stateKeys))
	if err := t.pipelined(ctx, func(p redis.Pipeliner) {
		for i, k := range stateKeys {
			sets[i] = p.SMembers(ctx, k+":held")
			flags[i] = p.HGet(ctx, k, "held_more")
		}
	}); err != nil {
		return HeldReport{}, err
	}
	seen := map[string]bool{}
	var members []string
	more := false
	for i := range stateKeys {
		more = more || flags[i].Val() == "1"
		for _, x := range sets[i].Val() {
			if seen[x] {
				continue
			}
			if len(members) == ledger.HeldMax {
				more = true
				break
			}
			seen[x] = true
			members = append(members, x)
		}
	}
	return t.follow(ctx, members, more)
}

// follow classifies held messages ("task id\tholding campaign"): its record's
// outcome (a superseded row is the other kind's: that kind's is read), else
// its task waiting on a lane, else archived by asynq with no outcome (a
// dead letter, as the enqueue rule reads it), else, read once more (it may
// have settled between two reads), the holding campaign's outcome row (a
// record expires before its campaign), else forgotten when that campaign
// is gone too, else lost (held by no campaign, or its campaign is there).
func (t *Tracker) follow(ctx context.Context, members []string, more bool) (HeldReport, error) {
	r := HeldReport{More: more, Followed: len(members)}
	type held struct{ id, campaign string }
	hs := make([]held, 0, len(members))
	for _, m := range members {
		id, c, _ := strings.Cut(m, "\t")
		hs = append(hs, held{id, c})
	}
	for pass := 0; pass < 2 && len(hs) > 0; pass++ {
		outs := make([]*redis.StringCmd, len(hs))
		states := make([][]*redis.StringCmd, len(hs))
		if err := t.pipelined(ctx, func(p redis.Pipeliner) {
			for i, h := range hs {
				outs[i] = p.HGet(ctx, ledger.Key(h.id), "o")
				for _, q := range Lanes {
					states[i] = append(states[i], p.HGet(ctx, "asynq:{"+q+"}:t:"+h.id, "state"))
				}
			}
		}); err != nil {
			return r, err
		}
		var next, unsure []held
		for i, h := range hs {
			o := outs[i].Val()
			if strings.HasPrefix(o, ledger.Superseded+"|") {
				if pass == 0 {
					next = append(next, held{otherTaskID(h.id), h.campaign})
				} else {
					r.Lost++
				}
				continue
			}
			if o != "" {
				r.count(o)
				continue
			}
			archived, live := false, false
			for _, st := range states[i] {
				switch st.Val() {
				case "archived":
					archived = true
				case "pending", "active", "scheduled", "retry", "aggregating":
					live = true
				}
			}
			switch {
			case live:
				r.Waiting++
			case archived:
				r.Failed++
			default:
				unsure = append(unsure, h)
			}
		}
		if len(unsure) > 0 {
			again := make([]*redis.StringCmd, len(unsure))
			rows := make([]*redis.StringCmd, len(unsure))
			there := make([]*redis.IntCmd, len(unsure))
			if err := t.pipelined(ctx, func(p redis.Pipeliner) {
				for i, h := range unsure {
					again[i] = p.HGet(ctx, ledger.Key(h.id), "o")
					if h.campaign != "" {
						rows[i] = p.HGet(ctx, ledger.CampaignOutcomesKey(h.campaign), h.id)
						there[i] = p.Exists(ctx, ledger.CampaignKey(h.campaign))
					}
				}
			}); err != nil {
				return r, err
			}
			for i := range unsure {
				switch {
				case again[i].Val() != "":
					r.count(again[i].Val())
				case rows[i] != nil && rows[i].Val() != "":
					r.count(rows[i].Val())
				case there[i] != nil && there[i].Val() == 0:
					r.Forgotten++
				default:
					// Its campaign is there with no row, or it was held
					// by no campaign (its record alone told: deleted by
					// hand or expired cannot be told apart, and the first
					// may go out).
					r.Lost++
				}
			}
		}
		hs = next
	}
	return r, nil
}

// count one outcome row: a dead letter failed, an expired cancel expired
// (its message went out), anything else done.
func (r *HeldReport) count(row string) {
	switch {
	case strings.HasPrefix(row, ledger.DeadLettered+"|"):
		r.Failed++
	case strings.HasPrefix(row, ledger.Expired+"|"):
		r.Expired++
	}
}

// pipelined runs fill's commands and returns the first error that is not
// a missing field (each command's own, not only the first's).
func (t *Tracker) pipelined(ctx context.Context, fill func(redis.Pipeliner)) error {
	cmds, err := t.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		fill(p)
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return err
	}
	for _, c := range cmds {
		if e := c.Err(); e != nil && !errors.Is(e, redis.Nil) {
			return e
		}
	}
	return nil
}

// Lanes are asynq's queues a task can wait on (tasks.Queues: tasks imports
// this package's users, so it is listed here; TestLanes checks they agree).
var Lanes = []string{"urgent", "default", "bulk"}

// otherTaskID is the task id of the same message id as the other kind.
func otherTaskID(id string) string {
	if rest, ok := strings.CutPrefix(id, "msg:"); ok {
		return "email:" + rest
	}
	if rest, ok := strings.CutPrefix(id, "email:"); ok {
		return "msg:" + rest
	}
	return id
}

// Locations returns the locations a campaign's messages belong to.
func (t *Tracker) Locations(ctx context.Context, campaign string) ([]string, error) {
	return t.rdb.SMembers(ctx, ledger.CampaignLocationsKey(campaign)).Result()
}

// Parked returns the campaign's locations that are parked for the day
// (location -> why), from the rate limiter's parking list. It costs one
// membership check per parked location, whatever the campaign's size.
func (t *Tracker) Parked(ctx context.Context, campaign string) (map[string]string, error) {
	parked, err := ratelimit.Parked(ctx, t.rdb)
	if err != nil || len(parked) == 0 {
		return nil, err
	}
	return ofCampaign(ctx, t.rdb, campaign, parked)
}

// Cooling returns the campaign's locations cooling down (after a 429, a
// spent window or for the daily budget), with when the cool-down ends.
func (t *Tracker) Cooling(ctx context.Context, campaign string) (map[string]time.Time, error) {
	cooling, err := ratelimit.Cooling(ctx, t.rdb)
	if err != nil || len(cooling) == 0 {
		return nil, err
	}
	return ofCampaign(ctx, t.rdb, campaign, cooling)
}

// ofCampaign keeps the entries of m whose location is one of the campaign's.
func ofCampaign[V any](ctx context.Context, rdb redis.UniversalClient, campaign string, m map[string]V) (map[string]V, error) {
	locs := make([]any, 0, len(m))
	for l := range m {
		locs = append(locs, l)
	}
	in, err := rdb.SMIsMember(ctx, ledger.CampaignLocationsKey(campaign), locs...).Result()
	if err != nil {
		return nil, err
	}
	out := map[string]V{}
	for i, l := range locs {
		if in[i] {
			out[l.(string)] = m[l.(string)]
		}
	}
	return out, nil
}

// Similar returns up to 3 live campaigns whose id differs from campaign
// only in the case of ASCII letters: ids are case-sensitive, and a miss by
// case is the usual slip. Only for a miss: it scans the campaign index in
// Redis (ZSCAN with a pattern), which holds every campaign of the
// retention.
func (t *Tracker) Similar(ctx context.Context, campaign string) ([]string, error) {
	var out []string
	iter := t.rdb.ZScan(ctx, ledger.CampaignIndex, 0, caseless(campaign), 1000).Iterator()
	for iter.Next(ctx) && len(out) < 3 {
		c := iter.Val()
		if !iter.Next(ctx) { // the member's score
			break
		}
		if c == campaign {
			continue
		}
		if n, err := t.rdb.Exists(ctx, ledger.CampaignKey(c)).Result(); err != nil {
			return nil, err
		} else if n == 1 {
			out = append(out, c)
		}
	}
	return out, iter.Err()
}

// caseless is a Redis glob pattern matching s with ASCII letters in either
// case, and nothing else.
func caseless(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
			b.WriteString("[" + string(c|0x20) + string(c&^0x20) + "]")
		case c == '*' || c == '?' || c == '[' || c == ']' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// NotFound is the error for a campaign id nothing holds, naming campaigns
// that differ only in case when there are some.
func (t *Tracker) NotFound(ctx context.Context, campaign, hint string) error {
	msg := fmt.Sprintf("no campaign %q (%s)", campaign, hint)
	if near, err := t.Similar(ctx, campaign); err == nil && len(near) > 0 {
		q := make([]string, len(near))
		for i, c := range near {
			q[i] = strconv.Quote(c)
		}
		msg += "; ids are case-sensitive: did you mean " + strings.Join(q, " or ") + "?"
	}
	return errors.New(msg)
}

// pruneScript removes from the campaign index each named campaign whose
// counters hash is gone, in one step with the check: a campaign started
// again meanwhile (its hash back, its entry rescored) stays.
var pruneScript = redis.NewScript(`
local gone = 0
for _, c in ipairs(ARGV) do
  if redis.call("EXISTS", "ghlcancel:campaign:{" .. c .. "}") == 0 then
    gone = gone + redis.call("ZREM", KEYS[1], c)
  end
end
return gone`)

// PruneBatch is how many index entries Prune checks per round trip.
const PruneBatch = 500

// Prune removes from the campaign index the campaigns that expired: those
// not updated for the Tracker's retention whose counters are gone. One
// kept alive longer (a process with a longer CAMPAIGN_RETENTION touched
// it) stays listed. It returns how many it removed.
func (t *Tracker) Prune(ctx context.Context) (int, error) {
	cutoff := "(" + strconv.FormatInt(time.Now().Add(-t.retention).UnixMilli(), 10)
	removed := 0
	for offset := int64(0); ; {
		names, err := t.rdb.ZRangeByScore(ctx, ledger.CampaignIndex, &redis.ZRangeBy{
			Min: "-inf", Max: cutoff, Offset: offset, Count: PruneBatch}).Result()
		if err != nil || len(names) == 0 {
			return removed, err
		}
		args := make([]any, len(names))
		for i, c := range names {
			args[i] = c
		}
		n, err := pruneScript.Run(ctx, t.rdb, []string{ledger.CampaignIndex}, args...).Int()
		if err != nil {
			return removed, err
		}
		removed += n
		// The live ones stay ahead of the next page.
		offset += int64(len(names) - n)
		if len(names) < PruneBatch {
			return removed, nil
		}
	}
}

// ExpiredNotFound is NotFound for a campaign's status or report: when dead
// letters still name the campaign (they are kept longer than campaigns),
// it says that the campaign expired and that those messages may still go
// out, instead of "unknown". deadLetters says where to list them.
func (t *Tracker) ExpiredNotFound(ctx context.Context, campaign, hint, deadLetters string) error {
	// One read (a 404 may be polled every 2 s: reading the dead letters
	// was 100 MB a poll at 100,000 of them, found by review); best effort,
	// as NotFound's did-you-mean: a failed read leaves "unknown".
	if last, err := deadletter.LastDeadFor(ctx, t.rdb, campaign); err == nil && !last.IsZero() {
		return fmt.Errorf("campaign %q has expired: its counters and report are kept CAMPAIGN_RETENTION after its last update, "+
			"but it had dead letters (the last at %s), kept DEAD_LETTER_RETENTION unless requeued or purged, and their messages may still go out: %s",
			campaign, last.UTC().Format(time.RFC3339), deadLetters)
	}
	return t.NotFound(ctx, campaign, hint)
}

// List returns up to n campaigns, the most recently updated first, in two
// round trips after pruning the expired ones from the index.
func (t *Tracker) List(ctx context.Context, n int) ([]Status, error) {
	// Best effort (a replica answers READONLY): the workers prune too, and
	// an expired campaign left in the index is skipped below.
	_, _ = t.Prune(ctx)
	names, err := t.rdb.ZRevRange(ctx, ledger.CampaignIndex, 0, int64(n-1)).Result()
	if err != nil || len(names) == 0 {
		return nil, err
	}
	reads := make([]statusRead, len(names))
	if _, err := t.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, c := range names {
			reads[i] = queueStatus(ctx, p, c)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	var out []Status
	for i, c := range names {
		if s, ok := reads[i].status(c); ok {
			out = append(out, s)
		}
	}
	ps := make([]*Status, len(out))
	for i := range out {
		ps[i] = &out[i]
	}
	return out, t.dropGone(ctx, ps)
}

// WriteReport writes one CSV row per message with a terminal outcome:
// message_id, kind, outcome, reason, http_status, attempts, time. It reads
// 1,000 rows per round trip.
func (t *Tracker) WriteReport(ctx context.Context, campaign string, w io.Writer) (int, error) {
	cw := csv.NewWriter(w)
	_ = cw.Write([]string{"message_id", "kind", "outcome", "reason", "http_status", "attempts", "time"})
	rows := 0
	var cursor uint64
	for {
		kv, next, err := t.rdb.HScan(ctx, ledger.CampaignOutcomesKey(campaign), cursor, "*", 1000).Result()
		if err != nil {
			return rows, err
		}
		for i := 0; i+1 < len(kv); i += 2 {
			kind, id, _ := strings.Cut(kv[i], ":")
			if kind == "msg" {
				kind = "message"
			}
			f := strings.Split(kv[i+1], "|")
			if len(f) != 5 {
				continue
			}
			ms, _ := strconv.ParseInt(f[4], 10, 64)
			if err := cw.Write([]string{id, kind, f[0], f[1], f[2], f[3], time.UnixMilli(ms).UTC().Format(time.RFC3339)}); err != nil {
				return rows, err
			}
			rows++
		}
		if cursor = next; cursor == 0 {
			break
		}
	}
	cw.Flush()
	return rows, cw.Error()
}

// String renders a one-line summary.
func (s Status) String() string {
	return fmt.Sprintf("%s: %d/%d done (cancelled %d, already sent %d, not found %d, not cancellable %d, expired %d, dead %d), %d retrying",
		s.Campaign, s.Done, s.Total, s.Cancelled, s.AlreadySent, s.NotFound, s.NotCancellable, s.Expired, s.DeadLettered, s.Retrying)
}
