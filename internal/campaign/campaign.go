// Package campaign tracks cancel campaigns in Redis: how many cancels were
// enqueued, how many reached each terminal outcome, which are retrying, and
// one row per message for the report. Every task's terminal outcome is
// recorded at most once (HSETNX on its task id inside one script), so a
// task that is retried or re-delivered after a worker crash never counts
// twice. Everything expires Retention after the campaign's last update.
package campaign

import (
	"cmp"
	"context"
	"encoding/csv"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ghlcancel/ghlcancel/internal/ratelimit"
	"github.com/ghlcancel/ghlcancel/internal/redisbatch"
)

// RetentionDefault is how long a campaign's counters and report are kept
// after its last update.
const RetentionDefault = 7 * 24 * time.Hour

// Terminal outcomes.
const (
	Cancelled      = "cancelled"
	NotCancellable = "not_cancellable"
	Expired        = "expired"
	DeadLettered   = "dead_lettered"
)

const keyIndex = "ghlcancel:campaigns"

func keyCounts(c string) string   { return "ghlcancel:campaign:{" + c + "}" }
func keyOutcomes(c string) string { return "ghlcancel:campaign:{" + c + "}:outcomes" }
func keyRetrying(c string) string { return "ghlcancel:campaign:{" + c + "}:retrying" }
func keyLocs(c string) string     { return "ghlcancel:campaign:{" + c + "}:locations" }

// Tracker records campaign progress. Safe for concurrent use.
type Tracker struct {
	rdb       redis.UniversalClient
	retention time.Duration
	terminal  *redisbatch.Batcher
}

// New returns a Tracker; retention 0 means RetentionDefault.
func New(rdb redis.UniversalClient, retention time.Duration) *Tracker {
	return &Tracker{rdb: rdb, retention: cmp.Or(retention, RetentionDefault), terminal: redisbatch.New(rdb, terminalScript)}
}

func (t *Tracker) keys(c string) []string {
	return []string{keyCounts(c), keyOutcomes(c), keyRetrying(c), keyLocs(c), keyIndex}
}

// enqueuedScript: ARGV now ms, n, location, retention ms, campaign.
var enqueuedScript = redis.NewScript(`
redis.call("HINCRBY", KEYS[1], "total", ARGV[2])
redis.call("HSETNX", KEYS[1], "started_at", ARGV[1])
redis.call("HSET", KEYS[1], "updated_at", ARGV[1])
redis.call("HDEL", KEYS[1], "finished_at")
if ARGV[3] ~= "" then redis.call("SADD", KEYS[4], ARGV[3]) end
redis.call("ZADD", KEYS[5], "NX", ARGV[1], ARGV[5])
for i = 1, 4 do redis.call("PEXPIRE", KEYS[i], ARGV[4]) end
return 1`)

// Enqueued counts n newly enqueued cancels for a location.
func (t *Tracker) Enqueued(ctx context.Context, campaign, location string, n int) error {
	if campaign == "" || n == 0 {
		return nil
	}
	return enqueuedScript.Run(ctx, t.rdb, t.keys(campaign), time.Now().UnixMilli(), n, location,
		t.retention.Milliseconds(), campaign).Err()
}

// Outcome is a task's terminal outcome.
type Outcome struct {
	Outcome    string // Cancelled, NotCancellable, Expired, DeadLettered
	Reason     string // dead-letter reason
	HTTPStatus int
	Attempts   int
}

// terminalScript: ARGV task id, row, outcome, reason, now ms, retention ms.
// Returns 1 when recorded, 0 when the task already had an outcome.
var terminalScript = redis.NewScript(`
if redis.call("HSETNX", KEYS[2], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call("HINCRBY", KEYS[1], ARGV[3], 1)
redis.call("HINCRBY", KEYS[1], "done", 1)
if ARGV[4] ~= "" then redis.call("HINCRBY", KEYS[1], "dead:" .. ARGV[4], 1) end
redis.call("SREM", KEYS[3], ARGV[1])
redis.call("HSET", KEYS[1], "updated_at", ARGV[5])
local total = tonumber(redis.call("HGET", KEYS[1], "total") or "0")
local done = tonumber(redis.call("HGET", KEYS[1], "done") or "0")
if total > 0 and done >= total then redis.call("HSETNX", KEYS[1], "finished_at", ARGV[5]) end
for i = 1, 4 do redis.call("PEXPIRE", KEYS[i], ARGV[6]) end
return 1`)

// Terminal records a task's terminal outcome once; recorded is false when
// it already had one (a re-delivered or duplicate task).
func (t *Tracker) Terminal(ctx context.Context, campaign, taskID string, o Outcome) (recorded bool, err error) {
	if campaign == "" {
		return false, nil
	}
	reason := ""
	if o.Outcome == DeadLettered {
		reason = o.Reason
	}
	now := time.Now().UnixMilli()
	row := strings.Join([]string{o.Outcome, reason, strconv.Itoa(o.HTTPStatus), strconv.Itoa(o.Attempts), strconv.FormatInt(now, 10)}, "|")
	n, err := t.terminal.Run(ctx, t.keys(campaign), taskID, row, o.Outcome, reason, now, t.retention.Milliseconds()).Int()
	return n == 1, err
}

// Retrying marks a task as retrying (until its terminal outcome).
func (t *Tracker) Retrying(ctx context.Context, campaign, taskID string) error {
	if campaign == "" {
		return nil
	}
	if ok, err := t.rdb.HExists(ctx, keyOutcomes(campaign), taskID).Result(); err != nil || ok {
		return err
	}
	return t.rdb.SAdd(ctx, keyRetrying(campaign), taskID).Err()
}

// requeuedScript undoes a dead letter's terminal outcome. ARGV task id.
var requeuedScript = redis.NewScript(`
local row = redis.call("HGET", KEYS[2], ARGV[1])
if not row then return 0 end
local outcome, reason = string.match(row, "^([^|]*)|([^|]*)|")
if outcome ~= "dead_lettered" then return 0 end
redis.call("HDEL", KEYS[2], ARGV[1])
redis.call("HINCRBY", KEYS[1], "dead_lettered", -1)
redis.call("HINCRBY", KEYS[1], "done", -1)
if reason ~= "" then redis.call("HINCRBY", KEYS[1], "dead:" .. reason, -1) end
redis.call("HDEL", KEYS[1], "finished_at")
return 1`)

// Requeued undoes a dead-lettered task's outcome when it is put back on the
// queue, so the campaign counts it as pending again.
func (t *Tracker) Requeued(ctx context.Context, campaign, taskID string) error {
	if campaign == "" {
		return nil
	}
	return requeuedScript.Run(ctx, t.rdb, t.keys(campaign), taskID).Err()
}

// Status is a campaign's progress.
type Status struct {
	Campaign       string            `json:"campaign"`
	Total          int64             `json:"total"`
	Done           int64             `json:"done"`
	Pending        int64             `json:"pending"` // not yet terminal, retrying included
	Retrying       int64             `json:"retrying"`
	Cancelled      int64             `json:"cancelled"`
	NotCancellable int64             `json:"not_cancellable"`
	Expired        int64             `json:"expired"`
	DeadLettered   int64             `json:"dead_lettered"`
	DeadByReason   map[string]int64  `json:"dead_by_reason,omitempty"`
	StartedAt      time.Time         `json:"started_at"`
	FinishedAt     *time.Time        `json:"finished_at,omitempty"`
	Complete       bool              `json:"complete"`
	Parked         map[string]string `json:"parked_locations,omitempty"` // location -> why
}

// Get returns a campaign's status; ok is false for an unknown campaign.
func (t *Tracker) Get(ctx context.Context, campaign string) (Status, bool, error) {
	var h *redis.MapStringStringCmd
	var retrying *redis.IntCmd
	_, err := t.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		h = p.HGetAll(ctx, keyCounts(campaign))
		retrying = p.SCard(ctx, keyRetrying(campaign))
		return nil
	})
	if err != nil {
		return Status{}, false, err
	}
	m := h.Val()
	if len(m) == 0 {
		return Status{}, false, nil
	}
	n := func(k string) int64 { v, _ := strconv.ParseInt(m[k], 10, 64); return v }
	s := Status{
		Campaign: campaign, Total: n("total"), Done: n("done"), Retrying: retrying.Val(),
		Cancelled: n(Cancelled), NotCancellable: n(NotCancellable), Expired: n(Expired), DeadLettered: n(DeadLettered),
		StartedAt: time.UnixMilli(n("started_at")), DeadByReason: map[string]int64{},
	}
	for k := range m {
		if r, ok := strings.CutPrefix(k, "dead:"); ok && n(k) > 0 {
			s.DeadByReason[r] = n(k)
		}
	}
	s.Pending = s.Total - s.Done
	if f := n("finished_at"); f > 0 {
		ft := time.UnixMilli(f)
		s.FinishedAt = &ft
		s.Complete = true
	}
	return s, true, nil
}

// Locations returns the locations a campaign's messages belong to.
func (t *Tracker) Locations(ctx context.Context, campaign string) ([]string, error) {
	return t.rdb.SMembers(ctx, keyLocs(campaign)).Result()
}

// Parked returns the campaign's locations that are parked for the day
// (location -> why), from the rate limiter's parking list.
func (t *Tracker) Parked(ctx context.Context, campaign string) (map[string]string, error) {
	parked, err := ratelimit.Parked(ctx, t.rdb)
	if err != nil || len(parked) == 0 {
		return nil, err
	}
	locs, err := t.Locations(ctx, campaign)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, l := range locs {
		if why, ok := parked[l]; ok {
			out[l] = why
		}
	}
	return out, nil
}

// List returns up to n campaigns, newest first.
func (t *Tracker) List(ctx context.Context, n int) ([]Status, error) {
	cutoff := time.Now().Add(-t.retention).UnixMilli()
	_ = t.rdb.ZRemRangeByScore(ctx, keyIndex, "-inf", "("+strconv.FormatInt(cutoff, 10)).Err()
	names, err := t.rdb.ZRevRange(ctx, keyIndex, 0, int64(n-1)).Result()
	if err != nil {
		return nil, err
	}
	var out []Status
	for _, c := range names {
		s, ok, err := t.Get(ctx, c)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, s)
		}
	}
	return out, nil
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
		kv, next, err := t.rdb.HScan(ctx, keyOutcomes(campaign), cursor, "*", 1000).Result()
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
	return fmt.Sprintf("%s: %d/%d done (cancelled %d, not cancellable %d, expired %d, dead %d), %d retrying",
		s.Campaign, s.Done, s.Total, s.Cancelled, s.NotCancellable, s.Expired, s.DeadLettered, s.Retrying)
}
