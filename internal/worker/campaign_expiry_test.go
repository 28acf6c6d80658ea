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

// TestRetriesKeepTheirCampaignAlive: a campaign kept for 1 s after its
// last update, whose one task fails with 5xx for 2.5 s and then goes
// through, is still there at the end and complete: each retry counts as
// an update. (Its counters used to expire under the retrying task, which
// then settled into a campaign recreated with no total: "running" forever,
// 1 done of 0.)
func TestRetriesKeepTheirCampaignAlive(t *testing.T) {
	t.Parallel()
	const retention = time.Second
	b := setup(t, sandbox.Config{RateMax: -1, Faults: sandbox.Faults{ErrorRate: 1}}, producer.Config{CampaignRetention: retention},
		noPacing, func(c *worker.Config) { c.CampaignRetention = retention; c.NoBreaker = true })
	ctx := context.Background()
	id := b.sb.ScheduleN(locGood, 1, false)[0]
	require.Equal(t, producer.Enqueued, b.producer.Enqueue(ctx, producer.Item{Kind: ghl.KindMessage, MessageID: id,
		LocationID: locGood, CampaignID: "kept"}).Status)
	time.Sleep(5 * retention / 2)
	require.Positive(t, b.sb.Stats().Faulted5xx)
	b.sb.SetFaults(sandbox.Faults{})
	b.waitDrained(t, 30*time.Second)
	st, ok, err := campaign.New(b.rdb, 0).Get(ctx, "kept")
	require.NoError(t, err)
	require.True(t, ok, "the campaign expired while its task was retrying")
	require.Equal(t, int64(1), st.Total)
	require.Equal(t, int64(1), st.Cancelled)
	require.True(t, st.Complete)
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
	keys, err := b.rdb.Keys(ctx, ledger.CampaignKey("gone")+"*").Result()
	require.NoError(t, err)
	require.NotEmpty(t, keys)
	require.NoError(t, b.rdb.Del(ctx, keys...).Err())
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
