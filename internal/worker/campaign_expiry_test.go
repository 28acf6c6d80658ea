package worker_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/campaign"
	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/ledger"
	"github.com/ghlcancel/ghlcancel/internal/producer"
	"github.com/ghlcancel/ghlcancel/internal/sandbox"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
	"github.com/ghlcancel/ghlcancel/internal/worker"
)

// TestRetriesKeepTheirCampaignAlive: marking a task retrying pushes its
// campaign's expiry as an outcome does (at most once a minute), so a
// campaign with a task between retries does not expire under it; a
// campaign that is gone is not brought back. (Its counters used to expire
// under the retrying task, which then settled into a campaign recreated
// with no total: "running" forever, 1 done of 0.) Checked on the keys'
// expiry rather than by waiting for one, so a slow machine changes nothing.
func TestRetriesKeepTheirCampaignAlive(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	p := producer.New(rdb, producer.Config{CampaignRetention: 10 * time.Second})
	require.Equal(t, producer.Enqueued, p.Enqueue(ctx, producer.Item{Kind: ghl.KindMessage, MessageID: "retryKeeps0000000001",
		LocationID: locGood, CampaignID: "kept"}).Status)
	k := ledger.CampaignKey("kept")
	led := ledger.New(rdb, ledger.Config{Retention: time.Hour})
	taskID := tasks.TaskID(ghl.KindMessage, "retryKeeps0000000001")
	ttl := func(key string) time.Duration {
		d, err := rdb.PTTL(ctx, key).Result()
		require.NoError(t, err)
		return d
	}
	// Last updated two minutes ago: the retry pushes every key's expiry.
	require.NoError(t, rdb.HSet(ctx, k, "updated_at", time.Now().Add(-2*time.Minute).UnixMilli()).Err())
	require.NoError(t, led.Retrying(ctx, taskID, "kept", ""))
	for _, key := range []string{k, k + ":retrying", k + ":locations"} {
		require.Greater(t, ttl(key), 59*time.Minute, key)
	}
	// Updated just now: the next retry within the minute writes nothing
	// more than its retrying entry.
	require.NoError(t, rdb.PExpire(ctx, k, 10*time.Second).Err())
	require.NoError(t, led.Retrying(ctx, taskID, "kept", ""))
	require.LessOrEqual(t, ttl(k), 10*time.Second, "touched twice within a minute")

	// A campaign that is gone stays gone.
	require.NoError(t, led.Retrying(ctx, tasks.TaskID(ghl.KindMessage, "retryGone00000000001"), "never-there", ""))
	left, err := rdb.Keys(ctx, ledger.CampaignKey("never-there")+"*").Result()
	require.NoError(t, err)
	require.Empty(t, left)
}

// TestOutcomeInAGoneCampaign: a campaign whose counters are gone (expired
// or deleted) while its task waits is not brought back by the task's
// outcome; the message's record still has it.
func TestOutcomeInAGoneCampaign(t *testing.T) {
	t.Parallel()
	b := setup(t, sandbox.Config{RateMax: -1, Faults: sandbox.Faults{ErrorRate: 1}}, producer.Config{},
		noPacing, func(c *worker.Config) { c.NoBreaker = true })
	ctx := context.Background()
	id := b.sb.ScheduleN(locGood, 1, false)[0]
	require.Equal(t, producer.Enqueued, b.producer.Enqueue(ctx, producer.Item{Kind: ghl.KindMessage, MessageID: id,
		LocationID: locGood, CampaignID: "gone"}).Status)
	require.Eventually(t, func() bool { return b.sb.Stats().Faulted5xx > 0 }, 10*time.Second, 10*time.Millisecond)
	// All of the campaign's keys at once (a retry between listing and
	// deleting them could otherwise leave one).
	k := ledger.CampaignKey("gone")
	n, err := b.rdb.Del(ctx, k, k+":outcomes", k+":retrying", k+":locations", k+":failed_sweeps", k+":sweeplist").Result()
	require.NoError(t, err)
	require.Positive(t, n)
	b.sb.SetFaults(sandbox.Faults{})
	b.waitDrained(t, 30*time.Second)

	_, ok, err := campaign.New(b.rdb, 0).Get(ctx, "gone")
	require.NoError(t, err)
	require.False(t, ok, "a gone campaign came back")
	left, err := b.rdb.Keys(ctx, ledger.CampaignKey("gone")+"*").Result()
	require.NoError(t, err)
	require.Empty(t, left)
	o, c, _, err := ledger.New(b.rdb, ledger.Config{}).Record(ctx, tasks.TaskID(ghl.KindMessage, id))
	require.NoError(t, err)
	require.NotNil(t, o)
	require.Equal(t, ledger.Cancelled, o.Outcome)
	require.Equal(t, "gone", c)
}
