// Package sweep runs sweep tasks: for one location, page HighLevel's message
// export (GET /conversations/messages/export), keep what is still
// scheduled and passes the filters, and enqueue its cancels into the sweep's
// campaign through the producer (the one enqueue rule: a message already
// queued is not sent twice; one the export lists as scheduled is forced
// over an outcome recorded before the page was asked, which it outdates,
// not over one recorded since).
//
// A sweep is resumable. Its progress (export channel, cursor, counters)
// lives in Redis and advances only after a page's cancels are queued, in
// one script with the campaign's sweep counters: a worker killed mid-sweep
// leaves the page to be read again (its cancels answer already queued, or
// already done if settled since the page was asked), so there is no gap and
// no duplicate. An expired cursor restarts the channel
// from its first page, for the same reason safely. Each delivery pages for
// tasks.SweepBudget and goes back to the queue to carry on.
//
// One function, settle, decides a sweep task's fate, as for cancels.
package sweep

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/ghlcancel/ghlcancel/internal/deadletter"
	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/ledger"
	"github.com/ghlcancel/ghlcancel/internal/producer"
	"github.com/ghlcancel/ghlcancel/internal/ratelimit"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
	"github.com/ghlcancel/ghlcancel/internal/tokens"
)

// Observer receives what sweeps do, for metrics. Implementations must be cheap.
type Observer interface {
	SweepPage(seen, scheduled int)
	SweepDone(result string) // done, failed
}

// Handler runs sweep tasks. Build it once.
type Handler struct {
	API      *ghl.Client
	Tokens   tokens.Source
	Producer *producer.Producer
	Redis    redis.UniversalClient
	// Pacer, when set, admits each export call like a cancel (it counts
	// against the location's budget), ahead of the location's cancels.
	Pacer   tasks.Pacer
	Breaker tasks.Breaker
	Routes  tasks.RouteWatch
	Observe Observer
	Logger  *slog.Logger
	// Retention of sweep progress. Defaults to the ledger's.
	Retention time.Duration
	// MaxRestarts bounds restarts after expired cursors. Defaults to 20.
	MaxRestarts int
	// Stopping: see tasks.Handler.Stopping.
	Stopping func() bool
}

// State is one location's sweep progress, as stored.
type State struct {
	Location   string `json:"location"`
	Phase      string `json:"phase"` // index of the export channel being paged; "done", "failed"
	Cursor     string `json:"-"`
	Pages      int64  `json:"pages"`
	Seen       int64  `json:"seen"`
	Found      int64  `json:"scheduled_found"`
	FoundSMS   int64  `json:"scheduled_sms"`
	FoundEmail int64  `json:"scheduled_email"`
	Enqueued   int64  `json:"enqueued"`
	// Already: found scheduled, but a cancel was already queued or done for
	// them (another campaign, an earlier sweep or event): not queued again.
	Already int64 `json:"already_queued_or_done,omitempty"`
	// Moved: of Already, the cancels that waited on a slower lane and now
	// wait on the sweep's (an urgent sweep after a bulk campaign).
	Moved int64 `json:"moved_to_this_lane,omitempty"`
	// Stayed: of Already, the cancels left on a slower lane than the
	// sweep's (running, or deep in a long backlog: producer.Result.StaysOn).
	Stayed    int64  `json:"stayed_on_a_slower_lane,omitempty"`
	Restarts  int64  `json:"restarts"`
	NoEmailID int64  `json:"emails_without_id,omitempty"`
	Error     string `json:"error,omitempty"`
	// ReplacedBy: the sweep (id) that runs this failed one again (a
	// requeue of its dead letter, or the same sweep sent again into its
	// campaign): its state says how the location's sweep ended.
	ReplacedBy string `json:"replaced_by,omitempty"`
}

// LoadState reads a location's sweep progress.
func LoadState(ctx context.Context, rdb redis.UniversalClient, sweepID, location string) (State, bool, error) {
	m, err := rdb.HGetAll(ctx, producer.SweepStateKey(sweepID, location)).Result()
	if err != nil || len(m) == 0 {
		return State{}, false, err
	}
	n := func(k string) int64 { v, _ := strconv.ParseInt(m[k], 10, 64); return v }
	return State{Location: m["location"], Phase: m["phase"], Cursor: m["cursor"], Pages: n("pages"), Seen: n("seen"),
		Found: n("found"), FoundSMS: n("found_sms"), FoundEmail: n("found_email"), Enqueued: n("enqueued"),
		Already: n("already"), Moved: n("moved"), Stayed: n("stayed"), Restarts: n("restarts"), NoEmailID: n("no_email_id"), Error: m["error"], ReplacedBy: m["replaced_by"]}, true, nil
}

// Runs follows a location's sweep along ReplacedBy: the state keys of it
// and of the runs that replaced it, in order (what sweep --wait follows),
// and the latest state found (how the location's sweep ended, or stands;
// ok false when even the first is gone).
func Runs(ctx context.Context, rdb redis.UniversalClient, sweepID, location string) (keys []string, latest State, ok bool, err error) {
	keys = []string{producer.SweepStateKey(sweepID, location)}
	latest, ok, err = LoadState(ctx, rdb, sweepID, location)
	for st, hops := latest, 0; err == nil && ok && st.ReplacedBy != "" && hops < 20; hops++ {
		keys = append(keys, producer.SweepStateKey(st.ReplacedBy, location))
		var found bool
		if st, found, err = LoadState(ctx, rdb, st.ReplacedBy, location); !found {
			break // the replacing run's state is gone: the last one found is what is known
		}
		latest = st
	}
	return keys, latest, ok, err
}

// commitScript records one page: the next cursor (or channel) and the
// counters, in the sweep's state and its campaign, only if the state is
// still where this delivery read it (a stale delivery changes nothing).
// KEYS state, campaign hash. ARGV phase read, cursor read, next phase, next
// cursor, seen, found, found sms, found email, enqueued, restart (1/0), no
// email id, already queued or done, the other campaigns holding those (one
// per line; kept in the campaign's held_by set, ledger.HeldByMax at most),
// those messages when held elsewhere ("task id\tholding campaign", one per
// line; the campaign's and this run's held sets, ledger.HeldMax at most
// each, then held_more on the campaign or the state), and of the already
// queued, those moved to the sweep's lane from a slower one and those that
// stay on a slower one (running, or deep in a backlog).
var commitScript = redis.NewScript(`
local v = redis.call("HMGET", KEYS[1], "phase", "cursor")
if (v[1] or "") ~= ARGV[1] or (v[2] or "") ~= ARGV[2] then return 0 end
redis.call("HSET", KEYS[1], "phase", ARGV[3], "cursor", ARGV[4])
if ARGV[10] == "1" then
  redis.call("HINCRBY", KEYS[1], "restarts", 1)
  return 1
end
redis.call("HINCRBY", KEYS[1], "pages", 1)
redis.call("HINCRBY", KEYS[1], "seen", ARGV[5])
redis.call("HINCRBY", KEYS[1], "found", ARGV[6])
redis.call("HINCRBY", KEYS[1], "found_sms", ARGV[7])
redis.call("HINCRBY", KEYS[1], "found_email", ARGV[8])
redis.call("HINCRBY", KEYS[1], "enqueued", ARGV[9])
if ARGV[11] ~= "0" then redis.call("HINCRBY", KEYS[1], "no_email_id", ARGV[11]) end
if ARGV[12] ~= "0" then redis.call("HINCRBY", KEYS[1], "already", ARGV[12]) end
if ARGV[15] and ARGV[15] ~= "0" then redis.call("HINCRBY", KEYS[1], "moved", ARGV[15]) end
if ARGV[16] and ARGV[16] ~= "0" then redis.call("HINCRBY", KEYS[1], "stayed", ARGV[16]) end
-- hold adds a held message to a set of at most HeldMax; one more (not a
-- repeat) sets held_more on flags instead.
local function hold(set, flags, m, ttl)
  if redis.call("SISMEMBER", set, m) == 0 and redis.call("SCARD", set) >= ` + strconv.Itoa(ledger.HeldMax) + ` then
    redis.call("HSET", flags, "held_more", "1")
    return
  end
  redis.call("SADD", set, m)
  if ttl > 0 then redis.call("PEXPIRE", set, ttl) end
end
-- This run's own held messages (sweep --wait follows its run, not the
-- campaign's earlier sweeps), kept as long as its state.
local sttl = redis.call("PTTL", KEYS[1])
for m in string.gmatch(ARGV[14], "[^\n]+") do hold(KEYS[1] .. ":held", KEYS[1], m, sttl) end
-- A campaign whose counters are gone (expired, deleted) is not brought
-- back as a hash of sweep counters with no expiry and no total.
if redis.call("EXISTS", KEYS[2]) == 1 then
  redis.call("HINCRBY", KEYS[2], "sweep_pages", 1)
  redis.call("HINCRBY", KEYS[2], "sweep_seen", ARGV[5])
  redis.call("HINCRBY", KEYS[2], "sweep_found", ARGV[6])
  local ttl = redis.call("PTTL", KEYS[2])
  for c in string.gmatch(ARGV[13], "[^\n]+") do
    if redis.call("SCARD", KEYS[2] .. ":held_by") >= ` + strconv.Itoa(ledger.HeldByMax) + ` then break end
    redis.call("SADD", KEYS[2] .. ":held_by", c)
    if ttl > 0 then redis.call("PEXPIRE", KEYS[2] .. ":held_by", ttl) end
  end
  for m in string.gmatch(ARGV[14], "[^\n]+") do hold(KEYS[2] .. ":held", KEYS[2], m, ttl) end
end
return 1`)

// endScript ends a location's sweep once: done, or failed with a dead
// letter; the campaign counts it (and completes if everything else is).
// KEYS state, dead records, dead index. ARGV result (done|failed), campaign,
// now ms, retention ms, dead-letter JSON ("" when done), task id, error.
var endScript = redis.NewScript(ledger.Lua + `
if redis.call("HSETNX", KEYS[1], "ended", ARGV[3]) == 0 then return 0 end
redis.call("HSET", KEYS[1], "phase", ARGV[1], "cursor", "", "error", ARGV[7])
redis.call("PEXPIRE", KEYS[1], ARGV[4]) -- kept as long as its campaign
if ARGV[1] == "failed" then
  redis.call("HSET", KEYS[2], ARGV[6], ARGV[5])
  redis.call("ZADD", KEYS[3], ARGV[3], ARGV[6])
  if ARGV[2] ~= "" then redis.call("HSET", "` + deadletter.KeyCampaigns + `", ARGV[2], ARGV[3]) end
end
-- A campaign that is gone stays gone (as for a task's outcome): the
-- sweep's state and dead letter record how it ended.
if not clive(ARGV[2]) then return 1 end
local k = ck(ARGV[2])
redis.call("HINCRBY", k, "sweeps_done", 1)
if ARGV[1] == "failed" then
  redis.call("HINCRBY", k, "sweeps_failed", 1)
  redis.call("SADD", k .. ":failed_sweeps", ARGV[6])
end
cfinish(ARGV[2], tonumber(ARGV[3]))
ctouch(ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]))
return 1`)

// result is where one delivery of a sweep ended.
type result struct {
	fate    string // done, dead, retry, snooze, again (go on in a new delivery)
	reason  string
	status  int
	message string
	err     error
}

// ProcessTask implements asynq.Handler.
func (h *Handler) ProcessTask(ctx context.Context, t *asynq.Task) error {
	var info tasks.TaskInfo
	info.ID, _ = asynq.GetTaskID(ctx)
	info.Queue, _ = asynq.GetQueueName(ctx)
	info.Retried, _ = asynq.GetRetryCount(ctx)
	info.MaxRetry, _ = asynq.GetMaxRetry(ctx)
	return h.Process(ctx, t, info)
}

// try is where a delivery stands among the task's attempts. Sweep tasks
// carry one spare attempt, as cancels do (tasks.AsynqMaxRetry): a failure
// is dead-lettered on lastTry, while a wait (pacing, a 429, an open
// circuit) goes back to asynq and uses no retry. Only a failure asynq
// counts itself (a worker that died mid-delivery) reaches the spare, final,
// where asynq archives whatever comes back, so every way out ends the sweep.
// try is what a delivery is: the spare (final) or the last of its
// retries, and the lane it runs on (its dead letter's, replayed there).
type try struct {
	final, lastTry bool
	queue          string
}

// Process runs one delivery of a sweep task, then one settle for every way
// out, a panic included.
func (h *Handler) Process(ctx context.Context, t *asynq.Task, info tasks.TaskInfo) (err error) {
	id := info.ID
	at := try{final: info.Retried >= info.MaxRetry, lastTry: info.Retried >= info.MaxRetry-1, queue: cmp.Or(info.Queue, tasks.QueueDefault)}
	var p tasks.SweepPayload
	defer func() {
		if v := recover(); v != nil {
			h.logger().Error("panic in sweep task", "task_id", id, "panic", fmt.Sprint(v))
			err = h.settle(ctx, id, p, at, result{fate: "dead", reason: tasks.ReasonPanic, message: fmt.Sprint(v), err: fmt.Errorf("panic: %v", v)})
		}
	}()
	if err := json.Unmarshal(t.Payload(), &p); err != nil {
		return h.settle(ctx, id, p, at, result{fate: "dead", reason: tasks.ReasonInvalidPayload, message: "payload is not valid JSON", err: err})
	}
	if err := p.Validate(); err != nil {
		return h.settle(ctx, id, p, at, result{fate: "dead", reason: tasks.ReasonInvalidPayload, message: err.Error(), err: err})
	}
	budget := tasks.SweepBudget
	if dl, ok := ctx.Deadline(); ok {
		budget = min(budget, time.Until(dl)-10*time.Second)
	}
	wctx, cancel := context.WithTimeout(ctx, max(budget, time.Second))
	defer cancel()
	return h.settle(ctx, id, p, at, h.run(wctx, id, p, info.Retried))
}

// run pages the export until the sweep is done or the delivery's budget is
// spent.
func (h *Handler) run(ctx context.Context, id string, p tasks.SweepPayload, retried int) result {
	st, ok, err := LoadState(ctx, h.Redis, p.SweepID, p.LocationID)
	switch {
	case err != nil:
		return result{fate: "retry", reason: tasks.ReasonLimiter, err: fmt.Errorf("reading the sweep's progress: %w", err)}
	case !ok:
		return result{fate: "dead", reason: "sweep_expired", message: "the sweep's progress is gone (retention passed); start the sweep again", err: errors.New("no sweep state")}
	case st.Phase == "done" || st.Phase == "failed":
		return result{fate: "done"} // a re-delivery of a finished sweep
	}
	token, err := h.Tokens.Token(ctx, p.LocationID)
	tasks.ObserveTokenRoute(h.Routes, err)
	if v, ok := tasks.ClassifyTokenError(err); ok {
		if tasks.TokenKeyRetry(v, retried) {
			v.Fate = tasks.FateRetry
		}
		return result{fate: v.Fate, reason: v.Reason, message: v.Message, err: err}
	}
	if v, bad := tasks.CheckToken(token); bad {
		// Before the export's pacing slot: nothing could be sent.
		return result{fate: "dead", reason: v.Reason, message: v.Message, err: errors.New(v.Message)}
	}
	phases := p.Phases()
	refreshed := false
	for {
		if ctx.Err() != nil {
			return result{fate: "again", err: ctx.Err()}
		}
		phase, _ := strconv.Atoi(st.Phase)
		if phase >= len(phases) {
			return result{fate: "done"}
		}
		if r, ok := h.admit(ctx, id, p); !ok {
			return r
		}
		probe := false
		if h.Breaker != nil {
			var berr error
			if probe, berr = h.Breaker.Allow(); berr != nil {
				return result{fate: "snooze", reason: tasks.ReasonCircuitOpen, err: berr}
			}
		}
		q := ghl.ExportQuery{LocationID: p.LocationID, Channel: phases[phase], ContactID: p.ContactID,
			ConversationID: p.ConversationID, Limit: p.PageSize, Cursor: st.Cursor}
		if q.Limit == 0 {
			q.Limit = tasks.SweepPageSize
		}
		q.Since, q.Until = p.Window()
		asked := time.Now() // what the page says is newer than outcomes recorded before this
		page, err := h.API.ExportMessages(ctx, q, token)
		if h.Breaker != nil {
			if ghl.NotSent(err) {
				h.Breaker.Abandon(probe)
			} else {
				h.Breaker.Record(isFailure(err), probe)
			}
		}
		if r, ok := h.observe(ctx, p, page, err); !ok {
			return r
		}
		if errors.Is(err, ghl.ErrCursorExpired) {
			if st.Restarts >= int64(h.maxRestarts()) {
				return result{fate: "dead", reason: "cursor_expiring", message: fmt.Sprintf("the export cursor expired %d times", st.Restarts), err: err}
			}
			// Start the channel over: its pages are read again, and their
			// cancels answer already queued, or already done if settled
			// since they were asked for.
			if err := commitScript.Run(ctx, h.Redis, []string{producer.SweepStateKey(p.SweepID, p.LocationID), ledger.CampaignKey(p.CampaignID)},
				st.Phase, st.Cursor, st.Phase, "", 0, 0, 0, 0, 0, "1", 0, 0, "", "").Err(); err != nil {
				return result{fate: "retry", reason: tasks.ReasonLimiter, err: err}
			}
			h.logger().Info("sweep: export cursor expired, starting the channel again", "task_id", id, "location_id", p.LocationID)
			st.Cursor, st.Restarts = "", st.Restarts+1
			continue
		}
		// A 401 with a refreshable token (OAuth pair, agency mint): replace
		// it once per delivery and read the page again.
		var ae *ghl.Error
		if rf, ok := h.Tokens.(tokens.Refresher); ok && errors.As(err, &ae) && ae.Reason == ghl.ReasonUnauthorized && !refreshed {
			refreshed = true
			fresh, rerr := rf.Refresh(ctx, p.LocationID, token)
			if rerr == nil {
				token = fresh
				continue
			}
			tasks.ObserveTokenRoute(h.Routes, rerr)
			if v, _ := tasks.ClassifyTokenError(rerr); !errors.Is(rerr, tokens.ErrNotRefreshable) {
				return result{fate: v.Fate, reason: v.Reason, status: v.Status, message: v.Message, err: rerr}
			}
		}
		if err != nil {
			return fromAPIError(err)
		}
		items, scheduled, noID := producer.SweepItems(p, page.Messages, asked)
		enqueued, already, moved, stayed, refused := 0, 0, 0, 0, 0
		var refusal error
		heldBy := map[string]bool{} // campaigns counting messages found here
		var heldIDs []string        // those messages, followed by who waits for this campaign
		if !p.DryRun && len(items) > 0 {
			for i, r := range h.Producer.EnqueueBatch(ctx, items) {
				switch {
				case r.Status == producer.Enqueued || r.Status == producer.Requeued:
					enqueued++
				case r.Status == producer.AlreadyQueued || r.Status == producer.AlreadyDone:
					already++
					if r.Moved {
						moved++
					}
					if r.StaysOn != "" {
						stayed++
					}
					if r.Elsewhere {
						heldIDs = append(heldIDs, tasks.TaskID(items[i].Kind, items[i].MessageID)+"\t"+r.HeldBy)
						if r.HeldBy != "" {
							heldBy[r.HeldBy] = true
						}
					}
				case r.Status == producer.Rejected && errors.Is(r.Err, producer.ErrUnavailable):
					return result{fate: "retry", reason: tasks.ReasonLimiter, err: r.Err}
				case r.Status == producer.Rejected:
					refused++
					refusal = cmp.Or(refusal, r.Err)
				}
			}
		}
		if refused > 0 {
			// Found but not queued (the campaign's found and queued counts
			// differ by these): say why once per page.
			h.logger().Warn("sweep: scheduled messages refused as cancel tasks", "sweep_id", p.SweepID,
				"location_id", p.LocationID, "count", refused, "first_error", refusal)
		}
		sms, email := 0, 0
		for _, it := range items {
			if it.Kind == ghl.KindEmail {
				email++
			} else {
				sms++
			}
		}
		nextPhase, nextCursor := st.Phase, page.NextCursor
		if nextCursor == "" {
			nextPhase = strconv.Itoa(phase + 1)
		}
		ok, err := commitScript.Run(ctx, h.Redis, []string{producer.SweepStateKey(p.SweepID, p.LocationID), ledger.CampaignKey(p.CampaignID)},
			st.Phase, st.Cursor, nextPhase, nextCursor, len(page.Messages), scheduled, sms, email, enqueued, "0", noID, already,
			strings.Join(slices.Sorted(maps.Keys(heldBy)), "\n"), strings.Join(heldIDs, "\n"), moved, stayed).Int()
		if err != nil {
			return result{fate: "retry", reason: tasks.ReasonLimiter, err: fmt.Errorf("recording the sweep's progress: %w", err)}
		}
		if ok == 0 {
			return result{fate: "done"} // another delivery moved on; it finishes the sweep
		}
		if h.Observe != nil {
			h.Observe.SweepPage(len(page.Messages), scheduled)
		}
		st.Phase, st.Cursor = nextPhase, nextCursor
		st.Pages++
	}
}

// admit takes the export call's slot: ahead of the location's cancels
// (urgent), counted against its budget, without a message record. A sweep
// whose cancels go to the urgent lane may spend a parked location's daily
// reserve, as they will.
func (h *Handler) admit(ctx context.Context, id string, p tasks.SweepPayload) (result, bool) {
	if h.Pacer == nil {
		return result{}, true
	}
	_, err := h.Pacer.Admit(ctx, ratelimit.Request{Location: p.LocationID, TaskID: id, Urgent: true, NoRecord: true,
		Reserve: p.Lane == tasks.QueueUrgent && !p.DryRun})
	if err == nil {
		return result{}, true
	}
	var sn *ratelimit.SnoozeError
	if errors.As(err, &sn) {
		return result{fate: "snooze", reason: tasks.ReasonPaced, err: err}, false
	}
	if ctx.Err() != nil {
		return result{fate: "again", err: ctx.Err()}, false
	}
	return result{fate: "retry", reason: tasks.ReasonLimiter, err: err}, false
}

// observe feeds the pacer and the route watch with an export answer; a 429
// ends the delivery (the location cools down; the sweep snoozes).
func (h *Handler) observe(ctx context.Context, p tasks.SweepPayload, page *ghl.ExportPage, err error) (result, bool) {
	var rl *ghl.RateLimitError
	errors.As(err, &rl)
	var e *ghl.Error
	errors.As(err, &e)
	answered := page != nil || rl != nil || (e != nil && e.StatusCode != 0)
	if h.Routes != nil && answered {
		h.Routes.Observe(e != nil && e.Reason == ghl.ReasonMisrouted, "")
	}
	if h.Pacer != nil && answered {
		lim := ghl.Limits{}
		switch {
		case page != nil:
			lim = page.Limits
		case rl != nil:
			lim = rl.Limits
		case e != nil:
			lim = e.Limits
		}
		if oerr := h.Pacer.Observe(ctx, p.LocationID, lim, rl); oerr != nil {
			h.logger().Warn("rate limiter could not record an answer", "error", oerr)
		}
	}
	if rl != nil {
		return result{fate: "snooze", reason: string(ghl.ReasonRateLimited), err: err}, false
	}
	return result{}, true
}

func fromAPIError(err error) result {
	var e *ghl.Error
	if !errors.As(err, &e) {
		return result{fate: "retry", reason: string(ghl.ReasonNetwork), err: err}
	}
	if e.Retryable {
		return result{fate: "retry", reason: string(e.Reason), status: e.StatusCode, message: e.Message, err: err}
	}
	return result{fate: "dead", reason: string(e.Reason), status: e.StatusCode, message: e.Message, err: err}
}

func isFailure(err error) bool {
	var e *ghl.Error
	if errors.As(err, &e) {
		return e.Retryable
	}
	var rl *ghl.RateLimitError
	return err != nil && !errors.As(err, &rl) && !errors.Is(err, ghl.ErrCursorExpired)
}

// settle decides a sweep delivery's fate: the sweep ended (done, or failed
// with a dead letter; its campaign counts it either way), or the task goes
// back to asynq to carry on, snooze or retry. A failure on the last try
// (its retries are used up) ends the sweep as failed; on the spare, where
// asynq archives whatever comes back, so does anything that is not an end.
func (h *Handler) settle(ctx context.Context, id string, p tasks.SweepPayload, at try, r result) error {
	// Taken back by a stopping worker: asynq has put the task back as it
	// was; on a last try (or the spare) that is no failure.
	// (A cut wait or page loop comes back "again": it carries on as that.)
	takenBack := r.fate != "done" && r.fate != "dead" && tasks.TakenBack(ctx, h.Stopping)
	if takenBack && r.fate != "again" {
		r.fate, r.reason = "retry", tasks.ReasonInterrupted
	}
	if !takenBack && ((at.lastTry && r.fate == "retry") || (at.final && r.fate != "done" && r.fate != "dead")) {
		r.fate, r.reason = "dead", cmp.Or(r.reason, tasks.ReasonInterrupted)
	}
	rep := tasks.ReportOf(ctx)
	rep.Outcome, rep.Reason = outcomeOf[r.fate], r.reason
	if r.fate == "snooze" {
		rep.Outcome = tasks.SnoozeOutcome(r.reason, r.err)
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	switch r.fate {
	case "again":
		return &continueError{}
	case "snooze":
		return r.err
	case "retry":
		msg := "sweep failed, will retry"
		if takenBack {
			msg = "sweep interrupted: the worker is stopping, and the task goes back to its lane"
		}
		h.logger().Info(msg, "task_id", id, "location_id", p.LocationID, "reason", r.reason, "error", r.err)
		return r.err
	}
	result, dead := "done", ""
	if r.fate == "dead" {
		result = "failed"
		msg := r.message
		if msg == "" && r.err != nil {
			msg = r.err.Error()
		}
		pl, _ := json.Marshal(p) // kept for replay (enqueue dead requeue): a few hundred bytes
		b, _ := json.Marshal(deadletter.Record{TaskID: id, Kind: "sweep", LocationID: p.LocationID, CampaignID: p.CampaignID,
			Queue: at.queue, Reason: r.reason, HTTPStatus: r.status, APIMessage: msg, DeadAt: time.Now(), Payload: string(pl),
			Worker: deadletter.ThisWorker})
		dead = string(b)
		h.logger().Warn("sweep failed", "task_id", id, "location_id", p.LocationID, "campaign_id", p.CampaignID, "reason", r.reason, "error", r.err)
	}
	if p.CampaignID != "" {
		keys := []string{producer.SweepStateKey(p.SweepID, p.LocationID), deadletter.KeyRecords, deadletter.KeyIndex}
		if err := endScript.Run(wctx, h.Redis, keys, result, p.CampaignID, time.Now().UnixMilli(),
			h.retention().Milliseconds(), dead, id, r.reason).Err(); err != nil {
			return fmt.Errorf("recording the end of the sweep: %w", err)
		}
	}
	if h.Observe != nil {
		h.Observe.SweepDone(result)
	}
	if r.fate == "dead" {
		return fmt.Errorf("sweep failed (%s): %w: %w", r.reason, errOr(r.err), asynq.SkipRetry)
	}
	return nil
}

// outcomeOf is the metrics outcome of a sweep delivery's fate.
var outcomeOf = map[string]string{"done": tasks.OutcomeSwept, "dead": tasks.OutcomeSweepFailed, "again": tasks.OutcomeSweepContinues,
	"retry": tasks.OutcomeRetry} // a snooze: tasks.SnoozeOutcome

func errOr(err error) error {
	if err == nil {
		return errors.New("sweep failed")
	}
	return err
}

// continueError sends a sweep back to the queue to carry on at once: it
// is no failure and uses no retry (tasks.IsFailure reads SnoozeFor).
type continueError struct{}

func (*continueError) Error() string            { return "sweep continues in a new delivery" }
func (*continueError) SnoozeFor() time.Duration { return 0 }
func (*continueError) Exact() bool              { return true }

func (h *Handler) maxRestarts() int {
	if h.MaxRestarts > 0 {
		return h.MaxRestarts
	}
	return 20
}

func (h *Handler) retention() time.Duration {
	if h.Retention > 0 {
		return h.Retention
	}
	return ledger.RetentionDefault
}

func (h *Handler) logger() *slog.Logger {
	if h.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return h.Logger
}
