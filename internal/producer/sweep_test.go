package producer_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/campaign"
	"github.com/ghlcancel/ghlcancel/internal/deadletter"
	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/ledger"
	"github.com/ghlcancel/ghlcancel/internal/producer"
	"github.com/ghlcancel/ghlcancel/internal/sweep"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
)

// TestSweepDedupe: a dedupe key queues its sweep once; a taken key queues
// nothing and counts nothing in the campaign.
func TestSweepDedupe(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	p := producer.New(rdb, producer.Config{})
	req := producer.SweepRequest{Locations: []string{"locDedupe0000000001"}, ContactID: "contact1", CampaignID: "dedupe",
		DedupeKey: "ghlcancel:webhook:seen:w1", DedupeTTL: time.Minute}
	first, err := p.Sweep(ctx, req)
	require.NoError(t, err)
	again, err := p.Sweep(ctx, req)
	require.ErrorIs(t, err, producer.ErrDuplicate)
	require.Equal(t, first, again, "a repeat gets the first sweep's answer")
	require.Equal(t, "1", rdb.HGet(ctx, "ghlcancel:campaign:{dedupe}", "sweeps").Val())
	require.Equal(t, int64(1), rdb.LLen(ctx, "asynq:{default}:pending").Val())
	ttl := rdb.PTTL(ctx, "ghlcancel:webhook:seen:w1").Val()
	require.Greater(t, ttl, 50*time.Second)
}

// TestReviveSweep: a failed sweep's dead letter is replayed once, with its
// filters and event, and its failure taken back from the campaign.
func TestReviveSweep(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	p := producer.New(rdb, producer.Config{})
	st, err := p.Sweep(ctx, producer.SweepRequest{Locations: []string{"locRevive0000000001"}, ContactID: "contact9",
		Channel: "sms", CampaignID: "revive", Event: "InboundMessage", EventID: "w9", EventAt: time.UnixMilli(1_700_000_000_000)})
	require.NoError(t, err)
	// The sweep fails for good, as the sweep handler's end script leaves it.
	k := "ghlcancel:campaign:{revive}"
	require.NoError(t, rdb.HSet(ctx, k, "sweeps_done", 1, "sweeps_failed", 1).Err())
	require.NoError(t, rdb.SAdd(ctx, k+":failed_sweeps", st.TaskIDs[0]).Err())
	raw, err := rdb.HGet(ctx, "asynq:{default}:t:"+st.TaskIDs[0], "msg").Bytes()
	require.NoError(t, err)
	var pl tasks.SweepPayload
	i := bytes.Index(raw, []byte(`{"sweep_id"`))
	require.NoError(t, json.NewDecoder(bytes.NewReader(raw[i:])).Decode(&pl))
	b, _ := json.Marshal(pl)
	store := deadletter.New(rdb)
	rec := deadletter.Record{TaskID: st.TaskIDs[0], Kind: "sweep", LocationID: pl.LocationID, CampaignID: "revive",
		Queue: "default", Reason: "no_token", DeadAt: time.Now(), Payload: string(b)}
	require.NoError(t, store.Add(ctx, rec))
	// asynq archived the failed task (a requeue left this copy for asynq's
	// 90 days, found by an audit; a requeued cancel's copy goes).
	tk := "asynq:{default}:t:" + st.TaskIDs[0]
	require.NoError(t, rdb.HSet(ctx, tk, "state", "archived").Err())
	require.NoError(t, rdb.LRem(ctx, "asynq:{default}:pending", 0, st.TaskIDs[0]).Err())
	require.NoError(t, rdb.ZAdd(ctx, "asynq:{default}:archived", redis.Z{Score: float64(time.Now().Unix()), Member: st.TaskIDs[0]}).Err())

	started, ok, err := p.ReviveSweep(ctx, rec)
	require.NoError(t, err)
	require.True(t, ok)
	require.NotEqual(t, st.SweepID, started.SweepID)
	require.Zero(t, rdb.Exists(ctx, tk).Val(), "the archived copy is removed")
	require.Zero(t, rdb.ZCard(ctx, "asynq:{default}:archived").Val(), "and its entry")
	require.Equal(t, "revive", started.CampaignID)
	v := rdb.HMGet(ctx, k, "sweeps", "sweeps_done", "sweeps_failed").Val()
	require.Equal(t, []any{"1", "0", "0"}, v, "one sweep, running again")
	// The sweep list has the new run in place of the failed one (requeued
	// three times before the fix, a failure was listed three times and
	// pushed the sweeps that cancelled something off the list).
	require.Equal(t, []string{producer.SweepStateKey(started.SweepID, "locRevive0000000001")}, rdb.ZRange(ctx, k+":sweeplist", 0, -1).Val())
	_, found, err := store.Get(ctx, rec.TaskID)
	require.NoError(t, err)
	require.False(t, found, "the dead letter is removed")
	raw, err = rdb.HGet(ctx, "asynq:{default}:t:"+started.TaskIDs[0], "msg").Bytes()
	require.NoError(t, err)
	var again tasks.SweepPayload
	require.NoError(t, json.NewDecoder(bytes.NewReader(raw[bytes.Index(raw, []byte(`{"sweep_id"`)):])).Decode(&again))
	require.Equal(t, []any{"contact9", "sms", "InboundMessage", "w9", int64(0)}, // no event time: a replay is not reaction time
		[]any{again.ContactID, again.Channel, again.Event, again.EventID, again.EventAt})

	// Replayed already (a second requeue, or two at once): nothing more,
	// and it says so (a requeue counts it as already queued).
	_, ok, err = p.ReviveSweep(ctx, rec)
	require.ErrorIs(t, err, producer.ErrSweepRevived)
	require.False(t, ok)
	require.Equal(t, "1", rdb.HGet(ctx, k, "sweeps").Val())
	// The campaign expired before the replay (dead letters outlive
	// campaigns): the new campaign counts only the new sweep.
	rec2 := rec
	rec2.TaskID = started.TaskIDs[0]
	require.NoError(t, store.Add(ctx, rec2))
	require.NoError(t, rdb.Del(ctx, k, k+":failed_sweeps").Err())
	_, ok, err = p.ReviveSweep(ctx, rec2)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, []any{"1", nil, nil}, rdb.HMGet(ctx, k, "sweeps", "sweeps_done", "sweeps_failed").Val())
	// A record without a payload (older release) cannot be replayed.
	_, ok, err = p.ReviveSweep(ctx, deadletter.Record{TaskID: "sweep:x:y", Kind: "sweep", CampaignID: "revive"})
	require.NoError(t, err)
	require.False(t, ok)
}

// TestSweepCampaignIDsNoURLCanCarry: a new sweep into campaign "." is
// refused, while a failed sweep from before that rule is still replayed.
func TestSweepCampaignIDsNoURLCanCarry(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	p := producer.New(rdb, producer.Config{})
	for _, c := range []string{".", ".."} {
		_, err := p.Sweep(ctx, producer.SweepRequest{Locations: []string{"locDot0000000000001"}, CampaignID: c})
		require.ErrorContains(t, err, "cannot be addressed in a URL path", c)
	}
	started, ok, err := p.ReviveSweep(ctx, failedSweep(t, rdb, tasks.SweepPayload{SweepID: "swOld", CampaignID: ".", LocationID: "locDot0000000000001"}))
	require.NoError(t, err)
	require.True(t, ok, "an old dead letter is replayed in its campaign")
	require.Equal(t, ".", started.CampaignID)
}

// failedSweep records pl's sweep as failed and dead-lettered in its
// campaign, as a worker would have before today's rules, and returns the
// dead letter.
func failedSweep(t *testing.T, rdb *redis.Client, pl tasks.SweepPayload) deadletter.Record {
	t.Helper()
	ctx := context.Background()
	pl.Channel, pl.Created = "all", 1
	b, err := json.Marshal(pl)
	require.NoError(t, err)
	rec := deadletter.Record{TaskID: "sweep:" + pl.SweepID + ":" + pl.LocationID, Kind: "sweep", LocationID: pl.LocationID, CampaignID: pl.CampaignID,
		Queue: "default", Reason: "no_token", DeadAt: time.Now(), Payload: string(b)}
	require.NoError(t, rdb.SAdd(ctx, "ghlcancel:campaign:{"+pl.CampaignID+"}:failed_sweeps", rec.TaskID).Err())
	require.NoError(t, rdb.HSet(ctx, "ghlcancel:campaign:{"+pl.CampaignID+"}", "sweeps", 1, "sweeps_done", 1, "sweeps_failed", 1).Err())
	require.NoError(t, deadletter.New(rdb).Add(ctx, rec))
	return rec
}

// TestDryRunSweepHasItsOwnCampaign: a dry run into a named campaign is
// refused (its sweep, pages and found messages would count next to the
// real sweep's); without one it gets a campaign of its own.
func TestDryRunSweepHasItsOwnCampaign(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	p := producer.New(rdb, producer.Config{})
	_, err := p.Sweep(ctx, producer.SweepRequest{Locations: []string{"locDry0000000000001"}, CampaignID: "spring", DryRun: true})
	require.ErrorIs(t, err, producer.ErrDryRunCampaign)
	n, err := rdb.Exists(ctx, "ghlcancel:campaign:{spring}").Result()
	require.NoError(t, err)
	require.Zero(t, n, "nothing written for the refused dry run")
	st, err := p.Sweep(ctx, producer.SweepRequest{Locations: []string{"locDry0000000000001"}, DryRun: true})
	require.NoError(t, err)
	require.NotEqual(t, "spring", st.CampaignID)
	require.NotEmpty(t, st.CampaignID)
	// It says it is a dry run: "complete, total 0" is not "nothing to cancel".
	dry, _, err := campaign.New(rdb, 0).Get(ctx, st.CampaignID)
	require.NoError(t, err)
	require.True(t, dry.DryRun)
	require.Contains(t, dry.Render(campaign.Status{}, time.Time{}), "dry run: counts what a sweep would cancel; nothing was cancelled")
	st, err = p.Sweep(ctx, producer.SweepRequest{Locations: []string{"locDry0000000000001"}, CampaignID: "spring"})
	require.NoError(t, err, "the real sweep takes the name")
	require.Equal(t, "spring", st.CampaignID)
	named, _, err := campaign.New(rdb, 0).Get(ctx, "spring")
	require.NoError(t, err)
	require.False(t, named.DryRun)

	// The real sweep given the dry run's campaign id (copied from its
	// output) is refused: its cancels would count under "dry run: nothing
	// was cancelled" (it was taken, and said so, with 100 cancelled).
	tasksBefore := rdb.LLen(ctx, "asynq:{"+tasks.QueueDefault+"}:pending").Val()
	_, err = p.Sweep(ctx, producer.SweepRequest{Locations: []string{"locDry0000000000001"}, CampaignID: dry.Campaign})
	require.ErrorIs(t, err, producer.ErrIntoDryRun)
	require.ErrorContains(t, err, dry.Campaign)
	require.Equal(t, tasksBefore, rdb.LLen(ctx, "asynq:{"+tasks.QueueDefault+"}:pending").Val(), "nothing queued")
	again, _, err := campaign.New(rdb, 0).Get(ctx, dry.Campaign)
	require.NoError(t, err)
	require.Equal(t, dry.Sweeps, again.Sweeps)
	// Nor is a cancel sent into it by id (enqueue --campaign, the intake).
	r := p.Enqueue(ctx, producer.Item{Kind: ghl.KindMessage, MessageID: "mIntoDry000000000001", LocationID: "locDry0000000000001", CampaignID: dry.Campaign})
	require.Equal(t, producer.Rejected, r.Status)
	require.ErrorIs(t, r.Err, producer.ErrIntoDryRun)
	require.Equal(t, tasksBefore, rdb.LLen(ctx, "asynq:{"+tasks.QueueDefault+"}:pending").Val(), "nothing queued")
	again, _, err = campaign.New(rdb, 0).Get(ctx, dry.Campaign)
	require.NoError(t, err)
	require.Zero(t, again.Total)

	// A dry run that failed before this rule, in a named campaign, is
	// still replayed there.
	started, ok, err := p.ReviveSweep(ctx, failedSweep(t, rdb, tasks.SweepPayload{SweepID: "swDry", CampaignID: "autumn",
		LocationID: "locDry0000000000001", DryRun: true}))
	require.NoError(t, err)
	require.True(t, ok, "an old dry run is replayed in its campaign")
	require.Equal(t, "autumn", started.CampaignID)
}

// TestSweepCancelsKeepTheStartersRetries: the retries a sweep's starter
// was given (the intake's MAX_RETRY, --max-retry) are its cancels' retries,
// though the worker's producer queues them; a replay of the failed sweep
// keeps them. They used to get the default 150 whatever was asked.
func TestSweepCancelsKeepTheStartersRetries(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	insp := asynq.NewInspectorFromRedisClient(rdb)
	payloadOf := func(taskID string) tasks.SweepPayload {
		t.Helper()
		info, err := insp.GetTaskInfo(tasks.QueueDefault, taskID)
		require.NoError(t, err)
		var pl tasks.SweepPayload
		require.NoError(t, json.Unmarshal(info.Payload, &pl))
		return pl
	}
	workers := producer.New(rdb, producer.Config{}) // the worker's: no retries of its own
	msgs := []ghl.ExportedMessage{{ID: "retrySms000000000001", MessageType: "TYPE_SMS", Status: "scheduled"}}
	for i, tc := range []struct {
		name    string
		retries int // producer.Config.MaxRetry of the starter
		want    int // asynq MaxRetry of the cancel
	}{
		{"three", 3, 4},
		{"none", producer.NoRetry, 1},
		{"default", 0, tasks.AsynqMaxRetry(tasks.MaxRetryDefault)},
	} {
		loc := fmt.Sprintf("locRetries000000000%d", i)
		st, err := producer.New(rdb, producer.Config{MaxRetry: tc.retries}).Sweep(ctx,
			producer.SweepRequest{Locations: []string{loc}, CampaignID: "retries-" + tc.name})
		require.NoError(t, err)
		pl := payloadOf(st.TaskIDs[0])
		require.Equal(t, tc.retries, pl.Retries, tc.name)

		items, _, _ := producer.SweepItems(pl, msgs, time.Now())
		items[0].MessageID = fmt.Sprintf("retrySms00000000000%d", i)
		require.Equal(t, producer.Enqueued, workers.EnqueueBatch(ctx, items)[0].Status)
		info, err := insp.GetTaskInfo(tasks.QueueBulk, tasks.TaskID(ghl.KindMessage, items[0].MessageID))
		require.NoError(t, err)
		require.Equal(t, tc.want, info.MaxRetry, tc.name)

		if tc.retries != 3 {
			continue
		}
		// Replayed by an operator's producer with its own default: the
		// sweep keeps the retries it was started with.
		b, _ := json.Marshal(pl)
		rec := deadletter.Record{TaskID: st.TaskIDs[0], Kind: "sweep", LocationID: loc, CampaignID: pl.CampaignID,
			Queue: tasks.QueueDefault, Reason: "no_token", DeadAt: time.Now(), Payload: string(b)}
		require.NoError(t, deadletter.New(rdb).Add(ctx, rec))
		again, ok, err := workers.ReviveSweep(ctx, rec)
		require.NoError(t, err)
		require.True(t, ok)
		require.Equal(t, 3, payloadOf(again.TaskIDs[0]).Retries)
	}
}

// TestDoubleRequeueOfASweep: a double click on "Requeue" for a failed
// sweep (two requeues of one dead letter at once, or one after the other)
// replays it once; the other says it is already queued, or no longer a
// dead letter. It used to say "skipped 1 (not rebuildable, left in place)"
// for a dead letter that was neither.
func TestDoubleRequeueOfASweep(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	p := producer.New(rdb, producer.Config{})
	store := deadletter.New(rdb)
	for i := range 20 {
		rec := failedSweep(t, rdb, tasks.SweepPayload{SweepID: fmt.Sprintf("swTwice%02d", i), CampaignID: "twice", LocationID: "locTwice00000000001"})
		var wg sync.WaitGroup
		stats := make([]producer.RequeueStats, 2)
		for j := range stats {
			wg.Go(func() {
				var err error
				stats[j], err = p.RequeueIDs(ctx, store, []string{rec.TaskID}, nil)
				assert.NoError(t, err)
			})
		}
		wg.Wait()
		sum := producer.RequeueStats{}
		for _, s := range stats {
			sum.Requeued += s.Requeued
			sum.AlreadyQueued += s.AlreadyQueued
			sum.Skipped += s.Skipped
			sum.Gone += s.Gone
		}
		require.Equal(t, 1, sum.Requeued, "replayed once")
		require.Zero(t, sum.Skipped, "nothing is left in place")
		require.Equal(t, 1, sum.AlreadyQueued+sum.Gone, "the other click says why it did nothing")
	}
}

// TestSweepRunAgainReplacesItsFailure: a failed sweep run again with the
// same command (not requeued) into its campaign replaces the failed run, as
// a requeue of its dead letter does. Its failure stayed counted: `status
// --watch` exited 1 ("1 failed sweep: messages may still go out") after the
// new run had cancelled every message (found by an audit with the real
// binaries). A failed run of another location, or with other filters,
// stays.
func TestSweepRunAgainReplacesItsFailure(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	p := producer.New(rdb, producer.Config{})
	const loc, other = "locAgain000000000001", "locAgain000000000002"
	same := failedSweep(t, rdb, tasks.SweepPayload{SweepID: "swAgain1", CampaignID: "again", LocationID: loc})
	otherLoc := failedSweep(t, rdb, tasks.SweepPayload{SweepID: "swAgain2", CampaignID: "again", LocationID: other})
	otherFilter := failedSweep(t, rdb, tasks.SweepPayload{SweepID: "swAgain3", CampaignID: "again", LocationID: loc, ContactID: "contact0000000000001"})
	require.NoError(t, rdb.HSet(ctx, ledger.CampaignKey("again"), "sweeps", 3, "sweeps_done", 3, "sweeps_failed", 3).Err())

	_, err := p.Sweep(ctx, producer.SweepRequest{Locations: []string{loc}, CampaignID: "again"})
	require.NoError(t, err)
	store := deadletter.New(rdb)
	for _, tc := range []struct {
		rec  deadletter.Record
		left bool
	}{{same, false}, {otherLoc, true}, {otherFilter, true}} {
		_, ok, err := store.Get(ctx, tc.rec.TaskID)
		require.NoError(t, err)
		require.Equal(t, tc.left, ok, tc.rec.TaskID)
	}
	s, _, err := campaign.New(rdb, 0).Get(ctx, "again")
	require.NoError(t, err)
	require.Equal(t, []int64{3, 2, 2}, []int64{s.Sweeps, s.SweepsDone, s.SweepsFailed}, "the failed run replaced by the new one")

	// Run once more: nothing left to replace for it.
	_, err = p.Sweep(ctx, producer.SweepRequest{Locations: []string{loc}, CampaignID: "again"})
	require.NoError(t, err)
	s, _, err = campaign.New(rdb, 0).Get(ctx, "again")
	require.NoError(t, err)
	require.Equal(t, []int64{4, 2, 2}, []int64{s.Sweeps, s.SweepsDone, s.SweepsFailed})
}

// TestReplacedRunIsFollowed: `sweep --wait` reads each location's state by
// the sweep id it started; a failed location requeued (or swept again)
// while it waited runs under a new id. It reported the location failed
// and exited 1 after the new run had cancelled everything (found by an
// audit with the real binaries). The failed state now names the run that
// replaces it, and sweep.Runs follows it.
func TestReplacedRunIsFollowed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	p := producer.New(rdb, producer.Config{})
	const loc = "locFollow00000000001"
	for _, tc := range []struct {
		name    string
		replace func(t *testing.T, rec deadletter.Record) string
	}{
		{"requeued", func(t *testing.T, rec deadletter.Record) string {
			st, ok, err := p.ReviveSweep(ctx, rec)
			require.NoError(t, err)
			require.True(t, ok)
			return st.SweepID
		}},
		{"swept again", func(t *testing.T, rec deadletter.Record) string {
			st, err := p.Sweep(ctx, producer.SweepRequest{Locations: []string{loc}, CampaignID: rec.CampaignID})
			require.NoError(t, err)
			return st.SweepID
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			camp := "follow-" + strings.ReplaceAll(tc.name, " ", "-")
			rec := failedSweep(t, rdb, tasks.SweepPayload{SweepID: "swF" + camp, CampaignID: camp, LocationID: loc})
			require.NoError(t, rdb.HSet(ctx, producer.SweepStateKey("swF"+camp, loc), "location", loc, "phase", "failed", "error", "no_token").Err())
			next := tc.replace(t, rec)
			require.NoError(t, rdb.HSet(ctx, producer.SweepStateKey(next, loc), "phase", "done", "found", 7).Err())
			keys, st, ok, err := sweep.Runs(ctx, rdb, "swF"+camp, loc)
			require.NoError(t, err)
			require.True(t, ok)
			require.Equal(t, []string{producer.SweepStateKey("swF"+camp, loc), producer.SweepStateKey(next, loc)}, keys, "the failed run and its replacement")
			require.Equal(t, []any{"done", "", int64(7)}, []any{st.Phase, st.Error, st.Found}, "the replacing run's state")
		})
	}
}

// TestSweepReviewRows: found by the review of the changes above. A repeat
// of a deduped sweep (a redelivered webhook, a retried request) took back
// a failed run while queuing nothing; replaying an old dry run's failed
// sweep marked its real campaign dry_run (and then refused real sweeps and
// requeues there); one unreadable dead letter blocked every sweep into its
// campaign.
func TestSweepReviewRows(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	p := producer.New(rdb, producer.Config{})
	store := deadletter.New(rdb)
	camp := func(c string) campaign.Status {
		s, _, err := campaign.New(rdb, 0).Get(ctx, c)
		require.NoError(t, err)
		return s
	}

	t.Run("a repeat changes nothing", func(t *testing.T) {
		const loc = "locDup00000000000001"
		req := producer.SweepRequest{Locations: []string{loc}, CampaignID: "dupc", DedupeKey: "k:dup-review", DedupeTTL: time.Minute}
		_, err := p.Sweep(ctx, req)
		require.NoError(t, err)
		rec := failedSweep(t, rdb, tasks.SweepPayload{SweepID: "swDupFail", CampaignID: "dupc", LocationID: loc})
		require.NoError(t, rdb.HSet(ctx, ledger.CampaignKey("dupc"), "sweeps", 2, "sweeps_done", 1, "sweeps_failed", 1).Err())
		_, err = p.Sweep(ctx, req)
		require.ErrorIs(t, err, producer.ErrDuplicate)
		_, ok, err := store.Get(ctx, rec.TaskID)
		require.NoError(t, err)
		require.True(t, ok, "the failed run's dead letter stays")
		require.Equal(t, int64(1), camp("dupc").SweepsFailed, "its failure stays counted")
	})
	t.Run("an old dry run replayed leaves its campaign real", func(t *testing.T) {
		const loc = "locDryRev00000000001"
		_, err := p.Sweep(ctx, producer.SweepRequest{Locations: []string{loc}, CampaignID: "winter"})
		require.NoError(t, err)
		dry := failedSweep(t, rdb, tasks.SweepPayload{SweepID: "swDryOld", CampaignID: "winter", LocationID: loc, DryRun: true})
		real := failedSweep(t, rdb, tasks.SweepPayload{SweepID: "swRealOld", CampaignID: "winter", LocationID: "locDryRev00000000002"})
		require.NoError(t, rdb.HSet(ctx, ledger.CampaignKey("winter"), "sweeps", 3, "sweeps_done", 2, "sweeps_failed", 2).Err())
		st, err := p.Requeue(ctx, store, deadletter.Filter{CampaignID: "winter"}, nil)
		require.NoError(t, err)
		require.Equal(t, 2, st.Requeued, "both replayed: %s, %s", dry.TaskID, real.TaskID)
		require.False(t, camp("winter").DryRun, "the campaign holds real cancels")
		_, err = p.Sweep(ctx, producer.SweepRequest{Locations: []string{loc}, CampaignID: "winter"})
		require.NoError(t, err, "a real sweep into it is not refused")
	})
	t.Run("a dry run replayed into its expired campaign marks it", func(t *testing.T) {
		const c = "sweep-20261201-dryexp"
		rec := failedSweep(t, rdb, tasks.SweepPayload{SweepID: "swDryExp", CampaignID: c, LocationID: "locDryExp00000000001", DryRun: true})
		require.NoError(t, rdb.Del(ctx, ledger.CampaignKey(c), ledger.CampaignKey(c)+":failed_sweeps").Err()) // expired (7 days; its dead letter lives 30)
		_, ok, err := p.ReviveSweep(ctx, rec)
		require.NoError(t, err)
		require.True(t, ok)
		require.True(t, camp(c).DryRun, "the campaign it makes again is a dry run's")
	})
	t.Run("a reused campaign name starts with no held messages", func(t *testing.T) {
		const c = "reused-held"
		require.NoError(t, rdb.SAdd(ctx, ledger.CampaignHeldKey(c), "msg:old\tother").Err())
		require.NoError(t, rdb.SAdd(ctx, ledger.CampaignHeldByKey(c), "other").Err())
		_, err := p.Sweep(ctx, producer.SweepRequest{Locations: []string{"locReused0000000001"}, CampaignID: c})
		require.NoError(t, err)
		require.Zero(t, rdb.Exists(ctx, ledger.CampaignHeldKey(c), ledger.CampaignHeldByKey(c)).Val(), "an earlier campaign's held messages are not this one's")
	})
	t.Run("an unreadable dead letter does not block sweeps", func(t *testing.T) {
		rec := failedSweep(t, rdb, tasks.SweepPayload{SweepID: "swCorr", CampaignID: "auto-corrupt", LocationID: "locOther000000000001"})
		require.NoError(t, rdb.HSet(ctx, deadletter.KeyRecords, rec.TaskID, "{not json").Err())
		_, err := p.Sweep(ctx, producer.SweepRequest{Locations: []string{"locCorrupt0000000001"}, CampaignID: "auto-corrupt"})
		require.NoError(t, err)
	})
}

// TestSweepSinceInTheFuture: the window filters when messages were
// created; a since ahead of now (read as "what goes out tomorrow") can find
// nothing and would report a clean sweep while everything goes out. It is
// refused, naming the mistake, with nothing queued; a since a little ahead
// (a clock behind HighLevel's) is not.
func TestSweepSinceInTheFuture(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	p := producer.New(rdb, producer.Config{})
	_, err := p.Sweep(ctx, producer.SweepRequest{Locations: []string{"locSoon000000000001"}, CampaignID: "tomorrow", Since: time.Now().Add(24 * time.Hour)})
	require.ErrorContains(t, err, "not when they go out")
	n, err := rdb.Exists(ctx, "ghlcancel:campaign:{tomorrow}").Result()
	require.NoError(t, err)
	require.Zero(t, n, "nothing started")
	_, err = p.Sweep(ctx, producer.SweepRequest{Locations: []string{"locSoon000000000001"}, CampaignID: "skewed", Since: time.Now().Add(time.Minute)})
	require.NoError(t, err)
}
