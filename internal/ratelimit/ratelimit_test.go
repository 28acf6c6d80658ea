package ratelimit

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/redistest"
)

var redisServer *redistest.Server

func TestMain(m *testing.M) { redistest.Main(m, &redisServer) }

func TestParseLimit(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want Limit
		ok   bool
	}{
		{"100/10s", Limit{100, 10 * time.Second}, true},
		{"20/1s", Limit{20, time.Second}, true},
		{"5/500ms", Limit{5, 500 * time.Millisecond}, true},
		{"100", Limit{}, false},
		{"0/10s", Limit{}, false},
		{"-1/10s", Limit{}, false},
		{"x/10s", Limit{}, false},
		{"10/soon", Limit{}, false},
		{"10/-1s", Limit{}, false},
	}
	for _, tt := range tests {
		got, err := ParseLimit(tt.in)
		require.Equal(t, tt.ok, err == nil, tt.in)
		require.Equal(t, tt.want, got, tt.in)
	}
}

func TestEmissionAndWindowCapacity(t *testing.T) {
	t.Parallel()
	l := New(nil, Config{})
	// 100 per 10 s with a 2% margin: one call every 10 s / 98.
	require.Equal(t, int64(102040), l.emission(Limit{100, 10 * time.Second}))
	tests := []struct{ n, most int }{{100, 99}, {50, 50}, {20, 20}, {3, 3}, {1000, 981}}
	for _, tt := range tests {
		require.Equal(t, tt.most, l.maxPerWindow(tt.n), "n=%d", tt.n)
	}
}

// TestDailyBudgetParksTheLocation: a nearly spent daily budget parks the
// location (its tasks snooze with reason daily), says why, and leaves
// other locations alone.
func TestDailyBudgetParksTheLocation(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	var obs recorder
	l := New(rdb, Config{DailyReserve: 100, DailyPark: time.Hour, Observe: &obs})

	require.NoError(t, l.Reserve(ctx, "locA", "t1", false))
	lim := ghl.Limits{Present: true, Max: 100, Interval: 10 * time.Second, Remaining: 90, DailyLimit: 200000, DailyRemaining: 99}
	require.NoError(t, l.Observe(ctx, "locA", lim, nil))

	err := l.Reserve(ctx, "locA", "t2", false)
	var sn *SnoozeError
	require.ErrorAs(t, err, &sn)
	require.Equal(t, "daily", sn.Reason)
	require.Greater(t, sn.RetryAfter, 50*time.Minute)
	require.NoError(t, l.Reserve(ctx, "locB", "t3", false), "other locations are not parked")

	parked, err := Parked(ctx, rdb)
	require.NoError(t, err)
	require.Len(t, parked, 1)
	require.Contains(t, parked["locA"], "daily budget nearly spent: 99 of 200000 left")
	require.Equal(t, map[string]int{"daily": 1}, obs.snoozes)

	// Under 10% of the daily budget left is reported (the alert's input);
	// 10% or more is not.
	require.Equal(t, 1, obs.dailyLow)
	lim.DailyRemaining = 19_999
	require.NoError(t, l.Observe(ctx, "locC", lim, nil))
	lim.DailyRemaining = 20_000
	require.NoError(t, l.Observe(ctx, "locC", lim, nil))
	require.Equal(t, 2, obs.dailyLow)
}

func TestRateLimitedSetsSharedCooldown(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	a := New(rdb, Config{})
	b := New(rdb, Config{}) // another worker
	require.NoError(t, a.Observe(ctx, "locA", ghl.Limits{}, &ghl.RateLimitError{RetryAfter: 30 * time.Second}))
	err := b.Reserve(ctx, "locA", "t1", false)
	var sn *SnoozeError
	require.ErrorAs(t, err, &sn)
	require.Equal(t, "cooldown", sn.Reason)
	require.InDelta(t, float64(30*time.Second-LeadDefault), float64(sn.RetryAfter), float64(time.Second))

	// A snoozed task keeps its slot: when it comes back (Lead before it), it
	// claims that slot instead of queueing again behind everyone.
	require.NoError(t, a.Observe(ctx, "locB", ghl.Limits{}, &ghl.RateLimitError{RetryAfter: 2500 * time.Millisecond}))
	err = b.Reserve(ctx, "locB", "t2", false)
	require.ErrorAs(t, err, &sn)
	err = b.Reserve(ctx, "locB", "t3", false)
	require.ErrorAs(t, err, &sn, "t3's slot comes after t2's")
	time.Sleep(1100 * time.Millisecond) // t2's snooze: 2.5 s minus the 1.5 s lead
	require.NoError(t, b.Reserve(ctx, "locB", "t2", false), "t2 comes back to its own slot")
}

func TestLearnsLimitOnlyWhenItChanges(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	l := New(rdb, Config{})
	lim := ghl.Limits{Present: true, Max: 50, Interval: 10 * time.Second, Remaining: 40, DailyLimit: -1, DailyRemaining: -1}
	require.NoError(t, l.Observe(ctx, "locA", lim, nil))
	em, err := rdb.HGet(ctx, KeyLearned, "locA").Int64()
	require.NoError(t, err)
	require.Equal(t, l.emission(Limit{50, 10 * time.Second}), em)
	require.NoError(t, rdb.HSet(ctx, KeyLearned, "locA", 1).Err())
	require.NoError(t, l.Observe(ctx, "locA", lim, nil)) // unchanged: no write
	em, _ = rdb.HGet(ctx, KeyLearned, "locA").Int64()
	require.Equal(t, int64(1), em)
}

type recorder struct {
	snoozes  map[string]int
	dailyLow int
}

func (r *recorder) Waited(time.Duration) {}
func (r *recorder) Snoozed(reason string) {
	if r.snoozes == nil {
		r.snoozes = map[string]int{}
	}
	r.snoozes[reason]++
}
func (r *recorder) CooledDown(string) {}
func (r *recorder) DailyLow()         { r.dailyLow++ }

// TestUrgentDoesNotQueueBehindBulk: 300 bulk tasks reserved a location's
// next 30 s; an urgent call gets a slot at once and pushes the shared line
// back by one slot, so the location's long-run rate is unchanged.
func TestUrgentDoesNotQueueBehindBulk(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	// MaxWait 1 ms: every call whose slot is not now snoozes, keeping its slot.
	l := New(rdb, Config{Default: Limit{N: 10, Period: time.Second}, MaxWait: time.Millisecond})
	for i := range 300 {
		err := l.Reserve(ctx, "locU", fmt.Sprintf("bulk%d", i), false)
		if i > 0 { // far-off slots: the task snoozes, keeping its slot
			var sn *SnoozeError
			require.ErrorAs(t, err, &sn)
		}
	}
	before, err := rdb.Get(ctx, tatKey("locU")).Int64()
	require.NoError(t, err)
	start := time.Now()
	require.NoError(t, l.Reserve(ctx, "locU", "urgent1", true))
	require.Less(t, time.Since(start), time.Second, "the urgent call did not wait behind the bulk line")
	after, err := rdb.Get(ctx, tatKey("locU")).Int64()
	require.NoError(t, err)
	require.Equal(t, l.emission(Limit{N: 10, Period: time.Second}), after-before, "the bulk line moved back one slot")
	// A second urgent call right away is spaced one slot from the first,
	// not sent behind the bulk line's 30 s.
	err = l.Reserve(ctx, "locU", "urgent2", true)
	var sn *SnoozeError
	require.ErrorAs(t, err, &sn)
	require.Less(t, sn.RetryAfter, 150*time.Millisecond)
}
