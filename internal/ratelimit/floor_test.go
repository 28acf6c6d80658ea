package ratelimit

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/ghl"
)

// TestFloorOf: the least time n calls need from a location's log, by the
// admission rule (a call goes a span after the limit-th latest one).
func TestFloorOf(t *testing.T) {
	const s = int64(time.Second / time.Microsecond) // µs
	now := 100 * s
	lim := Limit{N: 4, Period: time.Second}
	at := func(ts ...int64) []redis.Z {
		z := make([]redis.Z, len(ts))
		for i, v := range ts {
			z[i] = redis.Z{Score: float64(v)}
		}
		return z
	}
	for _, tt := range []struct {
		name string
		log  []redis.Z
		cool int64
		n    int64
		want int64
	}{
		{"an empty log: the allowance at once", nil, 0, 4, 0},
		{"one more than the allowance waits a span", nil, 0, 5, s},
		{"three spans and one", nil, 0, 13, 3 * s},
		{"a full burst just now: the next waits a span", at(now, now, now, now), 0, 1, s},
		{"a burst half a span ago", at(now-s/2, now-s/2, now-s/2, now-s/2), 0, 4, s / 2},
		{"two of four used", at(now-s/4, now-s/4), 0, 3, 3 * s / 4},
		{"two of four used, two fit", at(now-s/4, now-s/4), 0, 2, 0},
		{"old calls say nothing", at(now-5*s, now-5*s, now-5*s, now-5*s), 0, 4, 0},
		{"slots booked ahead count", at(now+s, now+s, now+s, now+s), 0, 1, 2 * s},
		{"a cool-down holds every lane", nil, now + 3*s, 1, 3 * s},
	} {
		ls := lanesOf(lim, 0, tt.log, tt.cool, now)
		require.Equal(t, tt.want, floorOf(ls, tt.n, now), tt.name)
	}
	// The margin widens the span: 100 per 10 s with 2% is one more burst
	// at 10.2 s.
	ls := lanesOf(Limit{N: 100, Period: 10 * time.Second}, 0.02, nil, 0, now)
	require.Equal(t, int64(10_200_000), floorOf(ls, 190, now))
	// Two locations take calls side by side.
	two := append(lanesOf(lim, 0, nil, 0, now), lanesOf(lim, 0, nil, 0, now)...)
	require.Equal(t, s, floorOf(two, 16, now))
}

// TestFloorAfterABurst: after a location's first burst of 100 calls (a
// fresh location, the default 100 per 10 s) 90 more cannot go for about
// 10.2 s, whatever the burst's rate made the ETA look like; a location
// never called (no log) or too many locations give no floor.
func TestFloorAfterABurst(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	l := New(rdb, Config{Margin: 0.02, MaxWait: 2 * time.Second})
	learn(t, l, "locF", 100, 10*time.Second)
	for i := range 100 {
		_, err := l.Admit(ctx, req("locF", fmt.Sprint("t", i)))
		require.NoError(t, err)
	}
	d, ok, err := Floor(ctx, rdb, []string{"locF"}, 90, MarginDefault)
	require.NoError(t, err)
	require.True(t, ok)
	require.Greater(t, d, 9*time.Second)
	require.LessOrEqual(t, d, 10200*time.Millisecond)

	// Another location with room doubles what fits: 90 go there at once.
	learn(t, l, "locG", 100, 10*time.Second)
	_, err = l.Admit(ctx, req("locG", "g0"))
	require.NoError(t, err)
	d, ok, err = Floor(ctx, rdb, []string{"locF", "locG"}, 90, MarginDefault)
	require.NoError(t, err)
	require.True(t, ok)
	require.Zero(t, d)
	// A learned location idle long enough for its log to expire has its
	// whole allowance: it does not take the floor away.
	learn(t, l, "locIdle", 100, 10*time.Second)
	d, ok, err = Floor(ctx, rdb, []string{"locF", "locIdle"}, 190, MarginDefault)
	require.NoError(t, err)
	require.True(t, ok)
	require.Greater(t, d, 9*time.Second, "100 go at locIdle at once, the other 90 wait for locF's span")

	// Nothing sure: a location never answered (no learned limit: the
	// workers' own RATE_LIMIT applies, or they run without pacing), one
	// whose answers had no limit headers, no locations, too many.
	require.NoError(t, l.Observe(ctx, "locNoHeaders", ghl.Limits{}, nil))
	for _, locs := range [][]string{{"locF", "neverCalled"}, {"locF", "locNoHeaders"}, {}, make([]string, FloorMaxLocations+1)} {
		_, ok, err = Floor(ctx, rdb, locs, 90, MarginDefault)
		require.NoError(t, err)
		require.False(t, ok, "%v", locs)
	}
}

// TestFloorCountsGrantedCallsOnce: calls granted a slot ahead and waiting
// for it in a worker are in the location's log and still pending in their
// campaign; the floor counted them twice and read a span too far (the ops
// audit: "ETA 21s or more" with 11 s left).
func TestFloorCountsGrantedCallsOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	l := New(rdb, Config{Margin: 0.02, MaxWait: 5 * time.Second})
	learn(t, l, "locB", 10, time.Second)
	for i := range 10 { // the first burst: gone now
		_, err := l.Admit(ctx, req("locB", fmt.Sprint("a", i)))
		require.NoError(t, err)
	}
	// Ten more granted slots 1.02 s ahead: their calls wait in the worker.
	done := make(chan error, 10)
	for i := range 10 {
		go func() {
			_, err := l.Admit(ctx, req("locB", fmt.Sprint("b", i)))
			done <- err
		}()
	}
	require.Eventually(t, func() bool {
		n, _ := rdb.ZCard(ctx, logKey("locB")).Result()
		return n == 20
	}, 5*time.Second, 10*time.Millisecond)
	// Pending: those 10 and 5 more. The 5 go a span after the granted ones
	// (about 2.04 s from the first burst), not a span after that.
	d, ok, err := Floor(ctx, rdb, []string{"locB"}, 15, 0.02)
	require.NoError(t, err)
	require.True(t, ok)
	require.LessOrEqual(t, d, 2040*time.Millisecond)
	require.Greater(t, d, 1500*time.Millisecond)
	// Only the granted ones pending: nothing sure to say.
	_, ok, err = Floor(ctx, rdb, []string{"locB"}, 10, 0.02)
	require.NoError(t, err)
	require.False(t, ok)
	for range 10 {
		require.NoError(t, <-done)
	}

	// More slots booked ahead than the limit (a wait longer than the span):
	// 25 booked over three spans; 5 more pending go a span after the
	// latest ten, about 3.06 s from the burst, not 5.1 s.
	learn(t, l, "locC", 10, time.Second)
	for i := range 10 {
		_, err := l.Admit(ctx, req("locC", fmt.Sprint("a", i)))
		require.NoError(t, err)
	}
	done = make(chan error, 25)
	for i := range 25 {
		go func() {
			_, err := l.Admit(ctx, req("locC", fmt.Sprint("b", i)))
			done <- err
		}()
	}
	require.Eventually(t, func() bool {
		n, _ := rdb.ZCard(ctx, logKey("locC")).Result()
		return n == 35
	}, 5*time.Second, 10*time.Millisecond)
	d, ok, err = Floor(ctx, rdb, []string{"locC"}, 30, 0.02)
	require.NoError(t, err)
	require.True(t, ok)
	require.LessOrEqual(t, d, 3060*time.Millisecond)
	require.Greater(t, d, 2500*time.Millisecond)
	for range 25 {
		require.NoError(t, <-done)
	}
}

// TestFloorLeavesTheReservesParking: a location parked for its daily
// reserve holds only non-urgent cancels, and urgent ones may finish at once
// (an urgent campaign read "ETA 59m or more" and finished in 11 s: review);
// the floor stays a floor for them (the ETA's note names the parking). A
// spent day (the cool-down) holds every call, and counts.
func TestFloorLeavesTheReservesParking(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	l := New(rdb, Config{DailyReserve: 100, DailyPark: time.Hour})
	learn(t, l, "locPark", 100, 10*time.Second)
	require.NoError(t, l.Observe(ctx, "locPark", ghl.Limits{Present: true, Max: 100, Interval: 10 * time.Second, Remaining: 99,
		DailyLimit: 200000, DailyRemaining: 50}, nil))
	d, ok, err := Floor(ctx, rdb, []string{"locPark"}, 5, MarginDefault)
	require.NoError(t, err)
	require.True(t, ok)
	require.Less(t, d, time.Second)
	require.NoError(t, l.Observe(ctx, "locPark", ghl.Limits{Present: true, Max: 100, Interval: 10 * time.Second, Remaining: 99,
		DailyLimit: 200000, DailyRemaining: 0}, nil))
	d, ok, err = Floor(ctx, rdb, []string{"locPark"}, 5, MarginDefault)
	require.NoError(t, err)
	require.True(t, ok)
	require.Greater(t, d, 59*time.Minute)
}
