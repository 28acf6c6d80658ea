package campaign_test

import (
	"bytes"
	"context"
	"encoding/csv"
	"fmt"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/client"
	"github.com/ghlcancel/ghlcancel/internal/campaign"
	"github.com/ghlcancel/ghlcancel/internal/deadletter"
	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/ledger"
	"github.com/ghlcancel/ghlcancel/internal/producer"
	"github.com/ghlcancel/ghlcancel/internal/ratelimit"
	"github.com/ghlcancel/ghlcancel/internal/redistest"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
)

var redisServer *redistest.Server

func TestMain(m *testing.M) { redistest.Main(m, &redisServer) }

// seed enqueues ids (kind message) into campaign c for a location through
// the producer, as every producer does.
func seed(t *testing.T, p *producer.Producer, c, loc string, ids ...string) {
	t.Helper()
	for _, id := range ids {
		r := p.Enqueue(context.Background(), producer.Item{Kind: ghl.KindMessage, MessageID: id, LocationID: loc, CampaignID: c})
		require.Equal(t, producer.Enqueued, r.Status, r.Err)
	}
}

// finish takes a task off the queue as a worker would and records its outcome.
func finish(t *testing.T, rdb *redis.Client, led *ledger.Ledger, c, taskID string, o ledger.Outcome) bool {
	t.Helper()
	ctx := context.Background()
	require.NoError(t, asynq.NewInspectorFromRedisClient(rdb).DeleteTask("default", taskID))
	f := ledger.Final{TaskID: taskID, CampaignID: c, Outcome: o}
	if o.Outcome == ledger.DeadLettered {
		f.Dead = &deadletter.Record{Kind: "message", MessageID: taskID[4:], LocationID: "locA", CampaignID: c, Queue: "default", Reason: o.Reason}
	}
	_, recorded, err := led.Settle(ctx, f)
	require.NoError(t, err)
	return recorded
}

func TestCountsEachMessageOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	tr := campaign.New(rdb, time.Hour)
	led := ledger.New(rdb, ledger.Config{Retention: time.Hour})
	p := producer.New(rdb, producer.Config{CampaignRetention: time.Hour})
	seed(t, p, "c1", "locA", "a", "b", "c")
	seed(t, p, "c1", "locB", "d")
	require.NoError(t, led.Retrying(ctx, "msg:a", "c1", "", ""))

	require.True(t, finish(t, rdb, led, "c1", "msg:a", ledger.Outcome{Outcome: campaign.Cancelled, HTTPStatus: 200, Attempts: 2}))
	// The same task again (a re-delivery after a crash): not counted twice,
	// whatever it reports this time.
	_, recorded, err := led.Settle(ctx, ledger.Final{TaskID: "msg:a", CampaignID: "c1",
		Outcome: ledger.Outcome{Outcome: campaign.NotCancellable, HTTPStatus: 404, Attempts: 3}})
	require.NoError(t, err)
	require.False(t, recorded)
	require.True(t, finish(t, rdb, led, "c1", "msg:b", ledger.Outcome{Outcome: campaign.Expired, Attempts: 1}))
	require.True(t, finish(t, rdb, led, "c1", "msg:c", ledger.Outcome{Outcome: campaign.DeadLettered, Reason: "unauthorized", HTTPStatus: 401, Attempts: 1}))

	s, ok, err := tr.Get(ctx, "c1")
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, int64(4), s.Total)
	require.Equal(t, int64(3), s.Done)
	require.Equal(t, int64(1), s.Pending)
	require.Equal(t, int64(0), s.Retrying, "a finished task is no longer retrying")
	require.Equal(t, int64(1), s.Cancelled)
	require.Equal(t, int64(1), s.Expired)
	require.Equal(t, map[string]int64{"unauthorized": 1}, s.DeadByReason)
	require.False(t, s.Complete)
	last, err := deadletter.LastDeadFor(ctx, rdb, "c1")
	require.NoError(t, err)
	require.False(t, last.IsZero(), "the settle script notes the campaign's dead letter (ExpiredNotFound reads it)")

	// Sending the dead-lettered message again revives it: pending again in
	// the same campaign, total unchanged; its success completes the campaign.
	r := p.Enqueue(ctx, producer.Item{Kind: ghl.KindMessage, MessageID: "c", LocationID: "locA", CampaignID: "c1"})
	require.Equal(t, producer.Requeued, r.Status, r.Err)
	s, _, _ = tr.Get(ctx, "c1")
	require.Equal(t, int64(4), s.Total)
	require.Equal(t, int64(0), s.DeadLettered)
	require.Equal(t, int64(2), s.Pending)
	require.Empty(t, s.DeadByReason)
	for _, id := range []string{"msg:c", "msg:d"} {
		require.True(t, finish(t, rdb, led, "c1", id, ledger.Outcome{Outcome: campaign.Cancelled, HTTPStatus: 200, Attempts: 1}))
	}
	s, _, _ = tr.Get(ctx, "c1")
	require.True(t, s.Complete)
	require.NotNil(t, s.FinishedAt)
	require.Equal(t, int64(3), s.Cancelled)
	// b expired: its message went out, so complete is not all well (it
	// read needs_attention false, found by the daily-budget audit).
	require.True(t, s.NeedsAttention, "an expired cancel did not cancel its message")

	// Re-running the whole campaign: nothing new, total and completeness
	// kept. b expired because its send time had passed: the file gives the
	// same send time again (sent again with none, or one still ahead, it
	// would run: TestExpiredSentAgain).
	for _, id := range []string{"a", "b", "c", "d"} {
		it := producer.Item{Kind: ghl.KindMessage, MessageID: id, LocationID: "locA", CampaignID: "c1"}
		if id == "b" {
			it.SendAt = time.Now().Add(-time.Hour).Unix()
		}
		r := p.Enqueue(ctx, it)
		require.Equal(t, producer.AlreadyDone, r.Status, id)
	}
	s, _, _ = tr.Get(ctx, "c1")
	require.Equal(t, int64(4), s.Total)
	require.True(t, s.Complete)

	locs, err := tr.Locations(ctx, "c1")
	require.NoError(t, err)
	require.ElementsMatch(t, []string{"locA", "locB"}, locs)
	ttl, err := rdb.PTTL(ctx, "ghlcancel:campaign:{c1}:outcomes").Result()
	require.NoError(t, err)
	require.InDelta(t, float64(time.Hour), float64(ttl), float64(time.Minute))

	var buf bytes.Buffer
	n, err := tr.WriteReport(ctx, "c1", &buf)
	require.NoError(t, err)
	require.Equal(t, 4, n)
	rows, err := csv.NewReader(&buf).ReadAll()
	require.NoError(t, err)
	require.Equal(t, []string{"message_id", "kind", "outcome", "reason", "http_status", "attempts", "time"}, rows[0])
	byID := map[string][]string{}
	for _, r := range rows[1:] {
		byID[r[0]] = r
	}
	require.Equal(t, []string{"a", "message", "cancelled", "", "200", "2"}, byID["a"][:6])
	require.Equal(t, []string{"b", "message", "expired", "", "0", "1"}, byID["b"][:6])

	list, err := tr.List(ctx, 10)
	require.NoError(t, err)
	require.Len(t, list, 1)
	require.Equal(t, "c1", list[0].Campaign)
	_, ok, err = tr.Get(ctx, "nope")
	require.NoError(t, err)
	require.False(t, ok)
}

func TestNoCampaignIsANoOp(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	tr := campaign.New(rdb, 0)
	seed(t, producer.New(rdb, producer.Config{}), "", "loc", "a")
	require.True(t, finish(t, rdb, ledger.New(rdb, ledger.Config{}), "", "msg:a", ledger.Outcome{Outcome: campaign.Cancelled}))
	list, err := tr.List(ctx, 10)
	require.NoError(t, err)
	require.Empty(t, list)
}

// TestListKeepsLiveCampaigns: the campaign index is pruned by whether a
// campaign is still there, not by when it started. Before, a campaign fed
// for longer than the lister's retention, one kept by a process with a
// longer CAMPAIGN_RETENTION, and one started again under an expired
// campaign's id (its entry kept the old start) were dropped from the
// console's and `enqueue campaigns`' lists while they ran.
func TestListKeepsLiveCampaigns(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	tr := campaign.New(rdb, 500*time.Millisecond) // the lister's retention
	long := producer.New(rdb, producer.Config{CampaignRetention: time.Hour})
	short := producer.New(rdb, producer.Config{CampaignRetention: 300 * time.Millisecond})
	seed(t, long, "kept-longer", "loc", "a")
	seed(t, short, "expires", "loc", "b")
	seed(t, short, "again", "loc", "c")
	time.Sleep(700 * time.Millisecond)       // both short ones expired; nobody listed
	seed(t, short, "again", "loc", "d")      // started again under the same id
	seed(t, long, "kept-longer", "loc", "f") // still fed: listed first

	list, err := tr.List(ctx, 10)
	require.NoError(t, err)
	var names []string
	for _, s := range list {
		names = append(names, s.Campaign)
	}
	require.Equal(t, []string{"kept-longer", "again"}, names, "most recently updated first; the expired one gone")
	n, err := rdb.ZCard(ctx, ledger.CampaignIndex).Result()
	require.NoError(t, err)
	require.Equal(t, int64(2), n, "the expired campaign's entry was pruned")

	// Prune alone (the worker's janitor, when nobody lists) removes what
	// expired and nothing else.
	seed(t, short, "unlisted", "loc", "e")
	time.Sleep(700 * time.Millisecond)
	removed, err := tr.Prune(ctx)
	require.NoError(t, err)
	require.Equal(t, 2, removed, "again and unlisted expired")
	left, err := rdb.ZRange(ctx, ledger.CampaignIndex, 0, -1).Result()
	require.NoError(t, err)
	require.Equal(t, []string{"kept-longer"}, left)
}

// TestRenderSweepRuns: the sweep list holds runs, so a failed sweep that
// was requeued is listed twice while the campaign counts one location; the
// heading must not say "newest 2 of 1".
func TestRenderSweepRuns(t *testing.T) {
	t.Parallel()
	s := campaign.Status{Campaign: "c", Total: 3, Sweeps: 1, SweepsDone: 1,
		SweepList: []client.SweepSummary{{SweepID: "s2", LocationID: "L", Channel: "all", State: "done"},
			{SweepID: "s1", LocationID: "L", Channel: "all", State: "failed"}}}
	out := s.Render(campaign.Status{}, time.Time{})
	require.Contains(t, out, "sweeps: 1/1 location sweeps done")
	require.Contains(t, out, "sweep runs, newest first (at most 20):\n    sweep s2: everything in L, all")
	require.NotContains(t, out, "of 1 sweeps")
}

// TestNotFoundSuggestsOtherCase: campaign ids are case-sensitive; a status
// for "Spring-Sale" when "spring-sale" runs names it. Glob characters in an
// id match only themselves, and a campaign that is gone is not suggested.
func TestNotFoundSuggestsOtherCase(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	p := producer.New(rdb, producer.Config{})
	seed(t, p, "spring-sale", "locA", "mCase0000000000000001")
	seed(t, p, "a*b?[c]", "locA", "mCase0000000000000002")
	seed(t, p, "axbyc", "locA", "mCase0000000000000003")
	seed(t, p, "gone-Camp", "locA", "mCase0000000000000004")
	require.NoError(t, rdb.Del(ctx, ledger.CampaignKey("gone-Camp")).Err())
	tr := campaign.New(rdb, 0)
	for _, tt := range []struct {
		id, want string // want "" means no suggestion
	}{
		{"Spring-Sale", `did you mean "spring-sale"?`},
		{"SPRING-SALE", `did you mean "spring-sale"?`},
		{"A*B?[C]", `did you mean "a*b?[c]"?`},
		{"A*B?C", ""}, // not axbyc: * and ? are not wildcards here
		{"spring-sale2", ""},
		{"gone-camp", ""},
	} {
		err := tr.NotFound(ctx, tt.id, "unknown")
		require.ErrorContains(t, err, `no campaign "`+tt.id+`" (unknown)`)
		if tt.want == "" {
			require.NotContains(t, err.Error(), "did you mean", tt.id)
		} else {
			require.ErrorContains(t, err, tt.want, tt.id)
		}
	}
}

// TestETAIsNeverBelowThePacing: a one-location campaign of 190 whose first
// 100 cancels went in one burst has 90 left that HighLevel's 100 per 10 s
// lets go only about 10 s later; the burst's rate said "ETA 1s". The ETA is
// now never below the pacing floor, and says so; a campaign whose location
// was never called has no floor (the rate's ETA stays).
func TestETAIsNeverBelowThePacing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	p := producer.New(rdb, producer.Config{})
	led := ledger.New(rdb, ledger.Config{})
	ids := make([]string, 190)
	for i := range ids {
		ids[i] = fmt.Sprintf("mPace%015d", i)
	}
	seed(t, p, "burst", "locP", ids...)
	seed(t, p, "fresh", "locQ", "mPace999999999999999")
	tr := campaign.New(rdb, 0)
	s, _, err := tr.Get(ctx, "fresh")
	require.NoError(t, err)
	floor, err := tr.PacedFloor(ctx, s)
	require.NoError(t, err)
	require.Zero(t, floor, "a location never called: no floor")

	lim := ratelimit.New(rdb, ratelimit.Config{})
	require.NoError(t, lim.Observe(ctx, "locP", ghl.Limits{Present: true, Max: 100, Interval: 10 * time.Second, Remaining: 100, DailyLimit: -1, DailyRemaining: -1}, nil))
	start := time.Now()
	for _, id := range ids[:100] {
		_, err := lim.Admit(ctx, ratelimit.Request{Location: "locP", TaskID: "msg:" + id, Campaign: "burst", Mark: ledger.NewMark(1)})
		require.NoError(t, err)
		require.True(t, finish(t, rdb, led, "burst", "msg:"+id, ledger.Outcome{Outcome: ledger.Cancelled, HTTPStatus: 200, Attempts: 1}))
	}
	prev, _, err := tr.Get(ctx, "burst")
	require.NoError(t, err)
	prev.Done -= 100 // as seen before the burst, a second ago: 100/s
	s, _, err = tr.Get(ctx, "burst")
	require.NoError(t, err)
	require.Equal(t, int64(90), s.Pending)
	floor, err = tr.PacedFloor(ctx, s)
	require.NoError(t, err)
	require.Greater(t, floor, 10200*time.Millisecond-time.Since(start)-time.Second)
	require.LessOrEqual(t, floor, 10200*time.Millisecond)
	out := s.RenderPaced(prev, time.Now().Add(-time.Second), floor)
	require.Contains(t, out, "or more (paced by HighLevel's rate limits)")
	require.NotContains(t, s.Render(prev, time.Now().Add(-time.Second)), "paced", "no floor given")
	// A slower rate than the pacing: its own ETA stands.
	prev.Done = s.Done - 1 // 1/s: 90 s to go
	slow := s.RenderPaced(prev, time.Now().Add(-time.Second), 10*time.Second)
	require.NotContains(t, slow, "paced")
	require.Contains(t, slow, "ETA 1m")
	// A parked location's cancels wait for its parking, which neither the
	// rate nor the floor knows (daily-budget audit): said.
	s.Parked = map[string]string{"locP": "daily budget nearly spent: 4 of 150 left (DAILY_RESERVE 10) (until 2026-12-07T20:00:00Z)",
		"locX": "no time here"}
	out = s.RenderPaced(prev, time.Now().Add(-time.Second), 0)
	require.Regexp(t, `ETA 1m\d+s \(cancels at parked locations wait until 2026-12-07T20:00:00Z\)`, out)
	_, ok := campaign.ParkedUntil(map[string]string{"locX": "no time here"})
	require.False(t, ok)
	// Only the reserve's parkings: urgent cancels go on, and the note says
	// so (an urgent campaign read "ETA 59m54s" and finished in 11 s). While
	// a sweep reads, the note stays.
	s.Parked = map[string]string{"locP": "daily budget nearly spent: 4 of 150 left (DAILY_RESERVE 10, kept for urgent cancels) (until 2026-12-07T20:00:00Z)"}
	out = s.RenderPaced(prev, time.Now().Add(-time.Second), 0)
	require.Contains(t, out, "(cancels at parked locations wait until 2026-12-07T20:00:00Z, except urgent ones, which spend the daily reserve)")
	s.Sweeps = 1
	out = s.RenderPaced(prev, time.Now().Add(-time.Second), 0)
	require.Contains(t, out, "ETA unknown (1 location sweep(s) still reading: more cancels may come) (cancels at parked locations wait until 2026-12-07T20:00:00Z, except")
}

// TestHeldFollowsEachMessage: what a sweep found but did not queue (queued
// or done first elsewhere, or in no campaign) is followed message by
// message: an outcome is done, a dead letter failed, a task still queued
// waiting, neither lost; a superseded row reads the other kind's outcome;
// more than ledger.HeldMax is said. Unrelated dead letters of the holding
// campaign do not count (a campaign-level check gave false alarms).
func TestHeldFollowsEachMessage(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	const c = "held-finder"
	require.NoError(t, rdb.HSet(ctx, ledger.CampaignKey(c), "total", 0, "started_at", 1, "finished_at", 1).Err())
	row := func(outcome string) string { return outcome + "|r|200|1|1" }
	require.NoError(t, rdb.HSet(ctx, ledger.Key("msg:done"), "o", row(ledger.Cancelled)).Err())
	require.NoError(t, rdb.HSet(ctx, ledger.Key("msg:dead"), "o", row(ledger.DeadLettered)).Err())
	require.NoError(t, rdb.HSet(ctx, "asynq:{bulk}:t:msg:queued", "state", "pending").Err())
	require.NoError(t, rdb.HSet(ctx, ledger.Key("msg:super"), "o", row(ledger.Superseded)).Err())
	require.NoError(t, rdb.HSet(ctx, ledger.Key("email:super"), "o", row(ledger.DeadLettered)).Err())
	// msg:lost's holding campaign is there with no row for it: deleted by
	// hand. msg:forgot's and msg:none's (held by no campaign) are gone with
	// their records: settled longer ago than the retention. An audit found
	// those reported "may still go out" (status --watch exit 1) although
	// HighLevel had them cancelled.
	require.NoError(t, rdb.HSet(ctx, ledger.CampaignKey("holder-alive"), "total", 1).Err())
	require.NoError(t, rdb.HSet(ctx, ledger.Key("msg:late"), "o", row(ledger.Expired)).Err())
	require.NoError(t, rdb.SAdd(ctx, ledger.CampaignHeldKey(c), "msg:done", "msg:dead", "msg:queued", "msg:lost\tholder-alive", "msg:super",
		"msg:forgot\tholder-gone", "msg:none\t", "msg:late\tholder-alive").Err())
	require.NoError(t, rdb.SAdd(ctx, ledger.CampaignHeldByKey(c), "holder-alive", "holder-gone").Err())
	tr := campaign.New(rdb, 0)
	s, ok, err := tr.Get(ctx, c)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, []string{"holder-alive"}, s.HeldBy, "an expired holder is not named")
	r, err := tr.Held(ctx, s)
	require.NoError(t, err)
	// msg:none, held by no campaign with no record and no task, is lost
	// (its task deleted by hand, or its record expired: only the first
	// may go out, and that is the one to say); msg:late expired where it
	// was held: its message went out (review).
	require.Equal(t, campaign.HeldReport{Followed: 8, Waiting: 1, Failed: 2, Expired: 1, Lost: 2, Forgotten: 1}, r)
	require.True(t, r.Bad())
	require.NoError(t, rdb.SRem(ctx, ledger.CampaignHeldKey(c), "msg:dead", "msg:lost\tholder-alive", "msg:queued", "msg:super", "msg:none\t").Err())
	r, err = tr.Held(ctx, s)
	require.NoError(t, err)
	require.Equal(t, campaign.HeldReport{Followed: 3, Expired: 1, Forgotten: 1}, r)
	require.True(t, r.Bad(), "an expired one went out")
	require.NoError(t, rdb.SRem(ctx, ledger.CampaignHeldKey(c), "msg:late\tholder-alive").Err())
	r, err = tr.Held(ctx, s)
	require.NoError(t, err)
	require.Equal(t, campaign.HeldReport{Followed: 2, Forgotten: 1}, r)
	require.False(t, r.Bad(), "forgotten outcomes are not failures")

	require.NoError(t, rdb.Del(ctx, ledger.CampaignHeldKey(c)).Err())
	require.NoError(t, rdb.SAdd(ctx, ledger.CampaignHeldKey(c), "msg:done").Err())
	r, err = tr.Held(ctx, s)
	require.NoError(t, err)
	require.False(t, r.Bad(), "every message it found has an outcome")
	require.NoError(t, rdb.HSet(ctx, ledger.CampaignKey(c), "held_more", "1").Err())
	r, err = tr.Held(ctx, s)
	require.NoError(t, err)
	require.True(t, r.More && r.Bad(), "not all could be followed")

	// Found by review: a task asynq archived with no outcome (its last
	// attempt could not record one) is a dead letter, not waiting for ever;
	// a record expired before its campaign is read from the holding
	// campaign's outcome row, not lost.
	require.NoError(t, rdb.HSet(ctx, "asynq:{bulk}:t:msg:archived", "state", "archived").Err())
	require.NoError(t, rdb.HSet(ctx, ledger.CampaignOutcomesKey("holder"), "msg:expired", row(ledger.Cancelled), "msg:expiredDead", row(ledger.DeadLettered)).Err())
	r, err = tr.HeldIn(ctx, []string{"ghlcancel:sweep:{swA}:loc", "ghlcancel:sweep:{swB}:loc"})
	require.NoError(t, err)
	require.Equal(t, campaign.HeldReport{}, r, "runs with nothing held")
	require.NoError(t, rdb.SAdd(ctx, "ghlcancel:sweep:{swA}:loc:held", "msg:archived\tholder", "msg:expired\tholder").Err())
	require.NoError(t, rdb.SAdd(ctx, "ghlcancel:sweep:{swB}:loc:held", "msg:expired\tholder", "msg:expiredDead\tholder").Err())
	r, err = tr.HeldIn(ctx, []string{"ghlcancel:sweep:{swA}:loc", "ghlcancel:sweep:{swB}:loc"})
	require.NoError(t, err)
	require.Equal(t, campaign.HeldReport{Followed: 3, Failed: 2}, r, "only these runs' messages, each once")
}

// TestLanes: the lanes Held looks for a queued task on are asynq's.
func TestLanes(t *testing.T) {
	require.Equal(t, tasks.Queues, campaign.Lanes)
}
