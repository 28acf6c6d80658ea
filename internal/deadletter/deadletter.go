// Package deadletter keeps a durable record of every cancel task that failed
// for good, in Redis, independent of asynq's archive (which keeps at most
// 10,000 tasks per queue and drops older ones silently). Records are keyed by
// task id, so writing the same dead letter twice (a worker crash between
// recording and acknowledging) keeps one record.
package deadletter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Keys. The hash holds the records, the sorted set orders them by time.
const (
	KeyRecords = "ghlcancel:dead:records"
	KeyIndex   = "ghlcancel:dead:index"
	// KeyCampaigns: campaign id -> when a dead letter naming it was last
	// written (unix ms), so that a campaign that expired while its dead
	// letters remain is told without reading them all (entries past the
	// retention go with the prune).
	KeyCampaigns = "ghlcancel:dead:campaigns"
)

// LastDeadFor returns when a dead letter naming campaign was last written
// (zero when none was within the retention the workers prune by).
func LastDeadFor(ctx context.Context, rdb redis.UniversalClient, campaign string) (time.Time, error) {
	ms, err := rdb.HGet(ctx, KeyCampaigns, campaign).Int64()
	if errors.Is(err, redis.Nil) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, err
	}
	return time.UnixMilli(ms), nil
}

// Record is one dead letter.
type Record struct {
	TaskID     string    `json:"task_id"`
	Kind       string    `json:"kind,omitempty"` // message | email; empty for an undecodable payload
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
	// Worker is the host and process id of the worker that dead-lettered
	// it: where workers disagree (a tokens file rolled out to some of them,
	// another GHL_BASE_URL), it names the one to look at.
	Worker string `json:"worker,omitempty"`
	// Payload is the raw task payload when it could not be decoded
	// (bounded), or a failed sweep's payload (with its webhook event), so
	// that it can be replayed.
	Payload string `json:"payload,omitempty"`
}

// ThisWorker is this process's Record.Worker: host:pid.
var ThisWorker = func() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		h = "unknown-host"
	}
	return h + ":" + strconv.Itoa(os.Getpid())
}()

// Filter selects records. Empty fields match everything.
type Filter struct {
	Reason     string
	CampaignID string
	LocationID string
	Kind       string
	// OlderThan, when set, matches records dead before now-OlderThan.
	OlderThan time.Duration
	// NewerThan, when set, matches records dead after now-NewerThan.
	NewerThan time.Duration
}

// Validate refuses a filter no record can be meant by: an unknown kind (a
// typo would match nothing, silently) or a negative age (which would match
// every record: "--older-than -720h" would purge all of them).
func (f Filter) Validate() error {
	switch f.Kind {
	case "", "message", "email", "sweep":
	default:
		return fmt.Errorf("kind %q: want message, email or sweep", f.Kind)
	}
	if f.OlderThan < 0 || f.NewerThan < 0 {
		return errors.New("ages must be positive durations, such as 720h")
	}
	return nil
}

// Match reports whether r passes the filter at time now.
func (f Filter) Match(r Record, now time.Time) bool {
	return (f.Reason == "" || f.Reason == r.Reason) &&
		(f.CampaignID == "" || f.CampaignID == r.CampaignID) &&
		(f.LocationID == "" || f.LocationID == r.LocationID) &&
		(f.Kind == "" || f.Kind == r.Kind) &&
		(f.OlderThan == 0 || r.DeadAt.Before(now.Add(-f.OlderThan))) &&
		(f.NewerThan == 0 || r.DeadAt.After(now.Add(-f.NewerThan)))
}

// Store reads dead letters and removes them. They are written by
// internal/ledger's settle script, atomically with the message's outcome.
type Store struct {
	rdb redis.UniversalClient
	now func() time.Time
	// Retention: Prune removes records older than this. Zero keeps them.
	Retention time.Duration
}

// New returns a Store on rdb.
func New(rdb redis.UniversalClient) *Store {
	return &Store{rdb: rdb, now: time.Now}
}

// Client returns the Redis client the store uses.
func (s *Store) Client() redis.UniversalClient { return s.rdb }

// Add writes (or overwrites) the record for r.TaskID, bypassing the ledger:
// for tools and tests that seed records. Workers never call it.
func (s *Store) Add(ctx context.Context, r Record) error {
	if r.TaskID == "" {
		return errors.New("deadletter: record without task id")
	}
	if r.DeadAt.IsZero() {
		r.DeadAt = s.now()
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	_, err = s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, KeyRecords, r.TaskID, b)
		p.ZAdd(ctx, KeyIndex, redis.Z{Score: float64(r.DeadAt.UnixMilli()), Member: r.TaskID})
		if r.CampaignID != "" {
			p.HSet(ctx, KeyCampaigns, r.CampaignID, r.DeadAt.UnixMilli())
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("deadletter: add %s: %w", r.TaskID, err)
	}
	return nil
}

// Get returns one record; ok is false when there is none.
func (s *Store) Get(ctx context.Context, taskID string) (Record, bool, error) {
	b, err := s.rdb.HGet(ctx, KeyRecords, taskID).Bytes()
	if errors.Is(err, redis.Nil) {
		return Record{}, false, nil
	}
	if err != nil {
		return Record{}, false, err
	}
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return Record{}, false, fmt.Errorf("deadletter: record %s is corrupt: %w", taskID, err)
	}
	return r, true, nil
}

// Count returns how many records there are in all.
func (s *Store) Count(ctx context.Context) (int64, error) {
	return s.rdb.ZCard(ctx, KeyIndex).Result()
}

// PageSize is how many records one Redis round trip reads while scanning.
const PageSize = 1000

// Scan calls fn for every record that matches f, oldest first, reading
// PageSize records per round trip so that no single command blocks Redis for
// long. Records removed while scanning are handled (the scan walks by time,
// not by rank). fn returning an error stops the scan with that error.
func (s *Store) Scan(ctx context.Context, f Filter, fn func(Record) error) error {
	return s.scanFrom(ctx, "-inf", f, unscored(fn))
}

// unscored adapts a callback that does not need the index score.
func unscored(fn func(Record) error) func(Record, int64) error {
	return func(r Record, _ int64) error { return fn(r) }
}

// ErrBadCursor: a Page cursor that no Page returned.
var ErrBadCursor = errors.New("deadletter: bad cursor")

// errPageFull stops a Page scan once it has one record more than asked for.
var errPageFull = errors.New("page full")

// Page returns up to limit records matching f, oldest first, starting after
// cursor ("" for the first page), and the cursor of the next page ("" when
// there is none). A cursor is "<dead_at unix ms>:<task id>" and stays valid
// while records are added or removed.
func (s *Store) Page(ctx context.Context, f Filter, cursor string, limit int) ([]Record, string, error) {
	from, afterID := "-inf", ""
	var afterMs int64
	if cursor != "" {
		ms, id, ok := strings.Cut(cursor, ":")
		v, err := strconv.ParseInt(ms, 10, 64)
		if !ok || err != nil || id == "" {
			return nil, "", fmt.Errorf("%w %q", ErrBadCursor, cursor)
		}
		from, afterMs, afterID = ms, v, id
	}
	limit = max(limit, 1)
	var out []Record
	err := s.scanFrom(ctx, from, f, func(r Record, _ int64) error {
		if cursor != "" && r.DeadAt.UnixMilli() == afterMs && r.TaskID <= afterID {
			return nil
		}
		out = append(out, r)
		if len(out) > limit {
			return errPageFull
		}
		return nil
	})
	if err != nil && !errors.Is(err, errPageFull) {
		return nil, "", err
	}
	if len(out) <= limit {
		return out, "", nil
	}
	last := out[limit-1]
	return out[:limit], fmt.Sprintf("%d:%s", last.DeadAt.UnixMilli(), last.TaskID), nil
}

// scanFrom calls fn with each matching record and the index score it was
// read under (dead-at, unix ms).
func (s *Store) scanFrom(ctx context.Context, from string, f Filter, fn func(Record, int64) error) error {
	now := s.now()
	for {
		ids, err := s.rdb.ZRangeArgsWithScores(ctx, redis.ZRangeArgs{
			Key: KeyIndex, Start: from, Stop: "+inf", ByScore: true, Count: PageSize,
		}).Result()
		if err != nil {
			return fmt.Errorf("deadletter: scan: %w", err)
		}
		if len(ids) == 0 {
			return nil
		}
		fields, err := s.each(ctx, ids, f, now, fn)
		if err != nil {
			return err
		}
		if len(ids) < PageSize {
			return nil
		}
		// Continue after the last score seen; records sharing that exact
		// millisecond are re-read, so skip the ones already passed.
		last := ids[len(ids)-1].Score
		from = fmt.Sprintf("(%d", int64(last))
		if err := s.scanTies(ctx, last, fields, f, now, fn); err != nil {
			return err
		}
	}
}

// each reads the records of one page of the index (one HMGET) and calls fn
// for those matching f, with the score the page gave; it returns the
// page's task ids.
func (s *Store) each(ctx context.Context, page []redis.Z, f Filter, now time.Time, fn func(Record, int64) error) ([]string, error) {
	ids := make([]string, len(page))
	for i, z := range page {
		ids[i] = z.Member.(string)
	}
	vals, err := s.rdb.HMGet(ctx, KeyRecords, ids...).Result()
	if err != nil {
		return nil, fmt.Errorf("deadletter: scan: %w", err)
	}
	for i, v := range vals {
		str, ok := v.(string)
		if !ok {
			continue // removed meanwhile
		}
		var r Record
		if err := json.Unmarshal([]byte(str), &r); err != nil {
			r = Record{TaskID: ids[i], Reason: "corrupt_record", Payload: truncate(str, 256)}
		}
		if f.Match(r, now) {
			if err := fn(r, int64(page[i].Score)); err != nil {
				return nil, err
			}
		}
	}
	return ids, nil
}

// scanTies handles records whose score equals the last score of a page, so
// that pages split on a millisecond with many records lose none of them.
func (s *Store) scanTies(ctx context.Context, score float64, seen []string, f Filter, now time.Time, fn func(Record, int64) error) error {
	sc := fmt.Sprintf("%d", int64(score))
	ties, err := s.rdb.ZRangeArgs(ctx, redis.ZRangeArgs{Key: KeyIndex, Start: sc, Stop: sc, ByScore: true}).Result()
	if err != nil {
		return err
	}
	done := make(map[string]bool, len(seen))
	for _, id := range seen {
		done[id] = true
	}
	var rest []string
	for _, id := range ties {
		if !done[id] {
			rest = append(rest, id)
		}
	}
	for len(rest) > 0 {
		n := min(len(rest), PageSize)
		vals, err := s.rdb.HMGet(ctx, KeyRecords, rest[:n]...).Result()
		if err != nil {
			return err
		}
		for _, v := range vals {
			str, ok := v.(string)
			if !ok {
				continue
			}
			var r Record
			if json.Unmarshal([]byte(str), &r) == nil && f.Match(r, now) {
				if err := fn(r, int64(score)); err != nil {
					return err
				}
			}
		}
		rest = rest[n:]
	}
	return nil
}

// dropCampaignsOlder removes the named campaigns' notes that are still
// older than cutoffMs: a dead letter written for one since the scan read it
// keeps its note (a plain HDEL lost it, and that campaign then read
// "unknown" once it expired, with its dead letter still kept).
func dropCampaignsOlder(ctx context.Context, rdb redis.UniversalClient, campaigns []string, cutoffMs int64) error {
	for len(campaigns) > 0 {
		n := min(len(campaigns), 1000)
		args := make([]any, 0, 1+n)
		args = append(args, cutoffMs)
		for _, c := range campaigns[:n] {
			args = append(args, c)
		}
		if err := dropOlderScript.Run(ctx, rdb, []string{KeyCampaigns}, args...).Err(); err != nil {
			return err
		}
		campaigns = campaigns[n:]
	}
	return nil
}

// dropOlderScript: KEYS the campaigns' notes; ARGV cutoff ms, then fields.
var dropOlderScript = redis.NewScript(`
local cutoff, n = tonumber(ARGV[1]), 0
for i = 2, #ARGV do
  local v = redis.call("HGET", KEYS[1], ARGV[i])
  if v and not (tonumber(v) and tonumber(v) >= cutoff) then
    n = n + redis.call("HDEL", KEYS[1], ARGV[i])
  end
end
return n`)

// Prune removes records dead longer ago than Retention, PageSize at a
// time, and returns how many it removed.
func (s *Store) Prune(ctx context.Context) (int, error) { return s.PruneOlderThan(ctx, s.Retention) }

// PruneOlderThan removes records dead longer ago than retention (a worker
// passes the longest of its fleet's, internal/fleet); 0 removes none.
func (s *Store) PruneOlderThan(ctx context.Context, retention time.Duration) (int, error) {
	if retention <= 0 {
		return 0, nil
	}
	cutoffMs := s.now().Add(-retention).UnixMilli()
	cutoff := "(" + strconv.FormatInt(cutoffMs, 10)
	// The campaigns' last dead letters past the retention go too (one
	// pass; bounded by the campaigns that had dead letters).
	iter := s.rdb.HScan(ctx, KeyCampaigns, 0, "*", 1000).Iterator()
	var gone []string
	for field := ""; iter.Next(ctx); {
		if field == "" {
			field = iter.Val()
			continue
		}
		if ms, err := strconv.ParseInt(iter.Val(), 10, 64); err != nil || ms < cutoffMs {
			gone = append(gone, field)
		}
		field = ""
	}
	if err := iter.Err(); err != nil {
		return 0, err
	}
	if err := dropCampaignsOlder(ctx, s.rdb, gone, cutoffMs); err != nil {
		return 0, err
	}
	removed := 0
	for {
		ids, err := s.rdb.ZRangeArgs(ctx, redis.ZRangeArgs{Key: KeyIndex, Start: "-inf", Stop: cutoff, ByScore: true, Count: PageSize}).Result()
		if err != nil || len(ids) == 0 {
			return removed, err
		}
		if err := s.Remove(ctx, ids...); err != nil {
			return removed, err
		}
		removed += len(ids)
	}
}

// ScanNewest calls fn for every record that matches f, newest first, PageSize
// records per round trip. fn returning an error stops the scan with it.
func (s *Store) ScanNewest(ctx context.Context, f Filter, fn func(Record) error) error {
	now := s.now()
	upper, offset := "+inf", int64(0) // offset: records at score upper already read
	for {
		zs, err := s.rdb.ZRangeArgsWithScores(ctx, redis.ZRangeArgs{
			Key: KeyIndex, Start: upper, Stop: "-inf", ByScore: true, Rev: true, Offset: offset, Count: PageSize,
		}).Result()
		if err != nil {
			return fmt.Errorf("deadletter: scan: %w", err)
		}
		if len(zs) == 0 {
			return nil
		}
		if _, err := s.each(ctx, zs, f, now, unscored(fn)); err != nil {
			return err
		}
		if len(zs) < PageSize {
			return nil
		}
		last := strconv.FormatInt(int64(zs[len(zs)-1].Score), 10)
		ties := int64(0)
		for _, z := range zs {
			if strconv.FormatInt(int64(z.Score), 10) == last {
				ties++
			}
		}
		if last == upper {
			offset += ties
		} else {
			upper, offset = last, ties
		}
	}
}

// ScanIDs calls fn for the records of the given task ids that exist,
// PageSize per round trip (a selection made in the console).
func (s *Store) ScanIDs(ctx context.Context, taskIDs []string, fn func(Record) error) error {
	for len(taskIDs) > 0 {
		n := min(len(taskIDs), PageSize)
		page := make([]redis.Z, n)
		for i, id := range taskIDs[:n] {
			page[i] = redis.Z{Member: id}
		}
		if _, err := s.each(ctx, page, Filter{}, s.now(), unscored(fn)); err != nil {
			return err
		}
		taskIDs = taskIDs[n:]
	}
	return nil
}

// Remove deletes records by task id.
func (s *Store) Remove(ctx context.Context, taskIDs ...string) error {
	if len(taskIDs) == 0 {
		return nil
	}
	members := make([]any, len(taskIDs))
	for i, id := range taskIDs {
		members[i] = id
	}
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HDel(ctx, KeyRecords, taskIDs...)
		p.ZRem(ctx, KeyIndex, members...)
		return nil
	})
	return err
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
