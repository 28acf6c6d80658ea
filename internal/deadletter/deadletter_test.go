package deadletter_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/deadletter"
	"github.com/ghlcancel/ghlcancel/internal/redistest"
)

var redisServer *redistest.Server

func TestMain(m *testing.M) { redistest.Main(m, &redisServer) }

func TestAddIsIdempotentPerTask(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := deadletter.New(redisServer.Client(t))
	r := deadletter.Record{TaskID: "msg:a", Kind: "message", MessageID: "a", Reason: "unauthorized", Attempts: 1}
	require.NoError(t, s.Add(ctx, r))
	r.Attempts = 2
	require.NoError(t, s.Add(ctx, r))
	n, err := s.Count(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(1), n)
	got, ok, err := s.Get(ctx, "msg:a")
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, 2, got.Attempts)
	require.False(t, got.DeadAt.IsZero())
	require.Error(t, s.Add(ctx, deadletter.Record{}))
}

// TestFiftyThousandAreAllListed: more than asynq's 10,000-task archive,
// with thousands sharing one millisecond so pages split inside a tie.
func TestFiftyThousandAreAllListed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	s := deadletter.New(rdb)
	const total = 50_000
	base := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	addMany(t, rdb, total, func(i int) deadletter.Record {
		reason := "unauthorized"
		if i%5 == 0 {
			reason = "bad_request"
		}
		return deadletter.Record{
			TaskID: fmt.Sprintf("msg:%06d", i), Kind: "message", MessageID: fmt.Sprintf("%06d", i),
			LocationID: fmt.Sprintf("loc%d", i%7), CampaignID: fmt.Sprintf("c%d", i%3), Reason: reason,
			// 2,500 records per millisecond.
			DeadAt: base.Add(time.Duration(i/2500) * time.Millisecond),
		}
	})
	seen := map[string]bool{}
	last := time.Time{}
	require.NoError(t, s.Scan(ctx, deadletter.Filter{}, func(r deadletter.Record) error {
		require.False(t, seen[r.TaskID], "listed twice: %s", r.TaskID)
		require.False(t, r.DeadAt.Before(last), "out of order")
		seen[r.TaskID], last = true, r.DeadAt
		return nil
	}))
	require.Len(t, seen, total)

	count := func(f deadletter.Filter) int {
		n := 0
		require.NoError(t, s.Scan(ctx, f, func(deadletter.Record) error { n++; return nil }))
		return n
	}
	require.Equal(t, total/5, count(deadletter.Filter{Reason: "bad_request"}))
	require.Equal(t, 16667, count(deadletter.Filter{CampaignID: "c0"}))
	require.Equal(t, 0, count(deadletter.Filter{Kind: "email"}))

	// Pages of 700 (cursor inside a 2,500-record millisecond) see each
	// bad_request record exactly once, in order.
	paged, cursor, pages := map[string]bool{}, "", 0
	for {
		recs, next, err := s.Page(ctx, deadletter.Filter{Reason: "bad_request"}, cursor, 700)
		require.NoError(t, err)
		for _, r := range recs {
			require.False(t, paged[r.TaskID], "paged twice: %s", r.TaskID)
			paged[r.TaskID] = true
		}
		pages++
		if next == "" {
			break
		}
		require.Len(t, recs, 700)
		cursor = next
	}
	require.Len(t, paged, total/5)
	require.Equal(t, (total/5+699)/700, pages)
	_, _, err := s.Page(ctx, deadletter.Filter{}, "nonsense", 10)
	require.Error(t, err)
}

func addMany(t *testing.T, rdb *redis.Client, n int, rec func(int) deadletter.Record) {
	t.Helper()
	ctx := context.Background()
	s := deadletter.New(rdb)
	errs := make(chan error, 8)
	for w := range 8 {
		go func() {
			for i := w; i < n; i += 8 {
				if err := s.Add(ctx, rec(i)); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range 8 {
		require.NoError(t, <-errs)
	}
}

func TestFilterMatch(t *testing.T) {
	t.Parallel()
	now := time.Now()
	r := deadletter.Record{Reason: "unauthorized", CampaignID: "c", LocationID: "l", Kind: "email", DeadAt: now.Add(-2 * time.Hour)}
	tests := []struct {
		f    deadletter.Filter
		want bool
	}{
		{deadletter.Filter{}, true},
		{deadletter.Filter{Reason: "unauthorized", CampaignID: "c", LocationID: "l", Kind: "email"}, true},
		{deadletter.Filter{Reason: "bad_request"}, false},
		{deadletter.Filter{CampaignID: "x"}, false},
		{deadletter.Filter{LocationID: "x"}, false},
		{deadletter.Filter{Kind: "message"}, false},
		{deadletter.Filter{OlderThan: time.Hour}, true},
		{deadletter.Filter{OlderThan: 3 * time.Hour}, false},
		{deadletter.Filter{NewerThan: 3 * time.Hour}, true},
		{deadletter.Filter{NewerThan: time.Hour}, false},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, tt.f.Match(r, now), "%+v", tt.f)
	}
}

func TestRemove(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := deadletter.New(redisServer.Client(t))
	for i := range 3 {
		require.NoError(t, s.Add(ctx, deadletter.Record{TaskID: fmt.Sprint(i), Reason: "x"}))
	}
	require.NoError(t, s.Remove(ctx, "0", "2"))
	require.NoError(t, s.Remove(ctx))
	var left []string
	require.NoError(t, s.Scan(ctx, deadletter.Filter{}, func(r deadletter.Record) error {
		left = append(left, r.TaskID)
		return nil
	}))
	require.Equal(t, []string{"1"}, left)
}

// TestPruneKeepsOnlyTheRetention: dead letters older than the retention go
// (so a revoked token on a huge campaign cannot fill a noeviction Redis);
// newer ones stay; newest-first listing sees them in order.
func TestPruneKeepsOnlyTheRetention(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := deadletter.New(redisServer.Client(t))
	s.Retention = 24 * time.Hour
	now := time.Now()
	for i := range 2500 {
		age := time.Duration(i)*time.Minute + 30*time.Second // 30 s .. ~41 h old, none on the boundary
		require.NoError(t, s.Add(ctx, deadletter.Record{TaskID: fmt.Sprintf("msg:p%05d", i), Reason: "unauthorized", DeadAt: now.Add(-age),
			CampaignID: fmt.Sprintf("c%d", i/1000)})) // c0: the newest 1,000; c2: only past the retention
	}
	for c, want := range map[string]bool{"c0": true, "c2": true, "none": false} {
		last, err := deadletter.LastDeadFor(ctx, s.Client(), c)
		require.NoError(t, err)
		require.Equal(t, want, !last.IsZero(), c)
	}
	n, err := s.Prune(ctx)
	require.NoError(t, err)
	require.Equal(t, 2500-24*60, n)
	left, err := s.Count(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(24*60), left)
	// A campaign's last dead letter goes with the retention too.
	last, err := deadletter.LastDeadFor(ctx, s.Client(), "c2")
	require.NoError(t, err)
	require.True(t, last.IsZero(), "c2's dead letters are all past the retention")
	last, err = deadletter.LastDeadFor(ctx, s.Client(), "c0")
	require.NoError(t, err)
	require.WithinDuration(t, now.Add(-999*time.Minute-30*time.Second), last, time.Second, "c0's last written (i = 999)")
	var order []string
	require.NoError(t, s.ScanNewest(ctx, deadletter.Filter{}, func(r deadletter.Record) error {
		order = append(order, r.TaskID)
		return nil
	}))
	require.Len(t, order, 24*60)
	require.Equal(t, "msg:p00000", order[0], "newest first")
	require.Equal(t, fmt.Sprintf("msg:p%05d", 24*60-1), order[len(order)-1])
}

// TestPruneKeepsANoteWrittenSinceItsScan: the prune reads the campaigns'
// notes, then deletes the old ones; a dead letter written for one of them
// in between renews its note, which must stay (a plain HDEL removed it, and
// that campaign read "unknown" once expired while its new dead letter was
// kept). Unreadable notes go.
func TestPruneKeepsANoteWrittenSinceItsScan(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	cutoff := time.Now().Add(-time.Hour).UnixMilli()
	require.NoError(t, rdb.HSet(ctx, deadletter.KeyCampaigns,
		"renewed", time.Now().UnixMilli(), // read as old by the scan, renewed since
		"old", cutoff-1, "junk", "x", "edge", cutoff).Err())
	require.NoError(t, deadletter.DropCampaignsOlder(ctx, rdb, []string{"renewed", "old", "junk", "edge", "absent"}, cutoff))
	left, err := rdb.HKeys(ctx, deadletter.KeyCampaigns).Result()
	require.NoError(t, err)
	require.ElementsMatch(t, []string{"renewed", "edge"}, left)
}

// TestPurgeExactlyWhatWasCounted: a purge deletes the records counted for
// its confirmation and nothing else: not one that started matching after,
// not one dead-lettered again since (a new failure nobody has seen), and
// takes their archived asynq copies with them.
func TestPurgeExactlyWhatWasCounted(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	s := deadletter.New(rdb)
	old := time.Now().Add(-time.Hour)
	for i := range 5 {
		require.NoError(t, s.Add(ctx, deadletter.Record{TaskID: fmt.Sprintf("msg:%d", i), Queue: "bulk", CampaignID: "c", Reason: "unauthorized", DeadAt: old.Add(time.Duration(i) * time.Millisecond)}))
	}
	require.NoError(t, s.Add(ctx, deadletter.Record{TaskID: "msg:other", Queue: "bulk", CampaignID: "d", Reason: "unauthorized", DeadAt: old}))
	// asynq's archived copy of msg:0, and a live (pending) task msg:1.
	require.NoError(t, rdb.HSet(ctx, "asynq:{bulk}:t:msg:0", "state", "archived").Err())
	require.NoError(t, rdb.ZAdd(ctx, "asynq:{bulk}:archived", redis.Z{Score: 1, Member: "msg:0"}).Err())
	require.NoError(t, rdb.HSet(ctx, "asynq:{bulk}:t:msg:1", "state", "pending").Err())

	refs, err := s.Matching(ctx, deadletter.Filter{CampaignID: "c"})
	require.NoError(t, err)
	require.Len(t, refs, 5)
	// Meanwhile: a sixth starts matching, msg:2 is requeued (removed),
	// msg:3 is dead-lettered again.
	require.NoError(t, s.Add(ctx, deadletter.Record{TaskID: "msg:late", Queue: "bulk", CampaignID: "c", Reason: "unauthorized"}))
	require.NoError(t, s.Remove(ctx, "msg:2"))
	require.NoError(t, s.Add(ctx, deadletter.Record{TaskID: "msg:3", Queue: "bulk", CampaignID: "c", Reason: "server_error"}))

	var progress []int
	n, err := s.PurgeRefs(ctx, refs, func(d int) { progress = append(progress, d) })
	require.NoError(t, err)
	require.Equal(t, 3, n, "msg:0, msg:1, msg:4")
	require.Equal(t, []int{3}, progress)
	var left []string
	require.NoError(t, s.Scan(ctx, deadletter.Filter{}, func(r deadletter.Record) error { left = append(left, r.TaskID); return nil }))
	require.ElementsMatch(t, []string{"msg:other", "msg:late", "msg:3"}, left)
	require.Zero(t, rdb.Exists(ctx, "asynq:{bulk}:t:msg:0").Val(), "the archived copy goes")
	require.Zero(t, rdb.ZCard(ctx, "asynq:{bulk}:archived").Val())
	require.Equal(t, "pending", rdb.HGet(ctx, "asynq:{bulk}:t:msg:1", "state").Val(), "a live task is never touched")
}

// TestScanIDs reads a selection across pages, skipping ids with no record.
func TestScanIDs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	s := deadletter.New(rdb)
	var ids []string
	_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := range 2500 {
			id := fmt.Sprintf("msg:%04d", i)
			ids = append(ids, id)
			if i%10 == 0 {
				continue // no record
			}
			p.HSet(ctx, deadletter.KeyRecords, id, fmt.Sprintf(`{"task_id":%q,"reason":"x"}`, id))
		}
		return nil
	})
	require.NoError(t, err)
	seen := map[string]bool{}
	require.NoError(t, s.ScanIDs(ctx, ids, func(r deadletter.Record) error {
		require.False(t, seen[r.TaskID])
		seen[r.TaskID] = true
		return nil
	}))
	require.Len(t, seen, 2250)
	require.True(t, seen["msg:2499"], "the last page is read")
	require.False(t, seen["msg:0010"])
}

// redeadBeforeHMGet dead-letters msg:0 again (a newer score, same reason)
// right before the scan reads its record: the race between reading the
// index and the records.
type redeadBeforeHMGet struct {
	s    *deadletter.Store
	once bool
}

func (h *redeadBeforeHMGet) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *redeadBeforeHMGet) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() == "hmget" && !h.once {
			h.once = true
			if err := h.s.Add(ctx, deadletter.Record{TaskID: "msg:0", Queue: "bulk", CampaignID: "c", Reason: "unauthorized"}); err != nil {
				return err
			}
		}
		return next(ctx, cmd)
	}
}
func (h *redeadBeforeHMGet) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestPurgeKeepsAFailureThatCameBackDuringTheScan: the ref of a record
// dead-lettered again while the scan ran carries the score it was read
// under, so the purge leaves the new failure alone.
func TestPurgeKeepsAFailureThatCameBackDuringTheScan(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	s := deadletter.New(rdb)
	old := time.Now().Add(-time.Hour)
	for i := range 3 {
		require.NoError(t, s.Add(ctx, deadletter.Record{TaskID: fmt.Sprintf("msg:%d", i), Queue: "bulk", CampaignID: "c", Reason: "unauthorized", DeadAt: old}))
	}
	opt := *rdb.Options()
	hooked := redis.NewClient(&opt)
	defer hooked.Close()
	hooked.AddHook(&redeadBeforeHMGet{s: s})
	refs, err := deadletter.New(hooked).Matching(ctx, deadletter.Filter{CampaignID: "c"})
	require.NoError(t, err)
	require.Len(t, refs, 3)
	for _, r := range refs {
		require.Equal(t, old.UnixMilli(), r.Score, "the score the scan read, not a later one")
	}
	n, err := s.PurgeRefs(ctx, refs, nil)
	require.NoError(t, err)
	require.Equal(t, 2, n)
	_, ok, err := s.Get(ctx, "msg:0")
	require.NoError(t, err)
	require.True(t, ok, "the failure that came back is kept")
}
