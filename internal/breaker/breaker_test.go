package breaker

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time      { return c.t }
func (c *clock) add(d time.Duration) { c.t = c.t.Add(d) }
func newTest(c *clock, changes *[]string) *Breaker {
	return New(Config{Window: 10 * time.Second, MinCalls: 10, FailureRatio: 0.5, OpenFor: 5 * time.Second,
		MaxOpenFor: 20 * time.Second, Now: c.now, OnChange: func(from, to State) { *changes = append(*changes, from.String()+">"+to.String()) }})
}

func record(b *Breaker, ok, fails int) {
	for range ok {
		b.Record(false, false)
	}
	for range fails {
		b.Record(true, false)
	}
}

func TestTripsOnlyOnSustainedFailures(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		ok, fails int
		want      State
	}{
		{"too few calls to judge", 0, 9, Closed},
		{"under the ratio", 6, 4, Closed},
		{"at the ratio", 5, 5, Open},
		{"all failing", 0, 10, Open},
		{"many calls, few failures", 100, 20, Closed},
	}
	for _, tt := range tests {
		c := &clock{time.Unix(1_000_000, 0)}
		var ch []string
		b := newTest(c, &ch)
		record(b, tt.ok, tt.fails)
		require.Equal(t, tt.want, b.State(), tt.name)
	}
}

func TestOldResultsLeaveTheWindow(t *testing.T) {
	t.Parallel()
	c := &clock{time.Unix(1_000_000, 0)}
	var ch []string
	b := newTest(c, &ch)
	record(b, 0, 9)
	c.add(11 * time.Second) // those 9 are out of the 10 s window now
	record(b, 5, 4)
	require.Equal(t, Closed, b.State())
}

func TestOpenHalfOpenProbeCycle(t *testing.T) {
	t.Parallel()
	c := &clock{time.Unix(1_000_000, 0)}
	var ch []string
	b := newTest(c, &ch)
	record(b, 0, 10)
	require.Equal(t, Open, b.State())

	_, err := b.Allow()
	var oe *OpenError
	require.True(t, errors.As(err, &oe))
	require.Equal(t, 5*time.Second, oe.SnoozeFor())

	c.add(5 * time.Second)
	probe, err := b.Allow()
	require.NoError(t, err)
	require.True(t, probe)
	_, err = b.Allow() // one probe at a time
	require.ErrorAs(t, err, &oe)
	require.Equal(t, HalfOpen, oe.State)

	b.Record(true, true) // probe failed: open for twice as long
	require.Equal(t, Open, b.State())
	c.add(9 * time.Second)
	_, err = b.Allow()
	require.ErrorAs(t, err, &oe)
	require.Equal(t, time.Second, oe.RetryAfter)
	c.add(time.Second)
	probe, err = b.Allow()
	require.NoError(t, err)
	b.Record(false, probe) // recovered
	require.Equal(t, Closed, b.State())
	probe, err = b.Allow()
	require.NoError(t, err)
	require.False(t, probe)
	require.Equal(t, []string{"closed>open", "open>half_open", "half_open>open", "open>half_open", "half_open>closed"}, ch)

	// Backoff resets after recovery and is capped.
	for range 5 {
		record(b, 0, 10)
		c.add(time.Hour)
		probe, _ := b.Allow()
		b.Record(true, probe)
	}
	_, err = b.Allow()
	require.ErrorAs(t, err, &oe)
	require.Equal(t, 20*time.Second, oe.RetryAfter, "capped at MaxOpenFor")
}

func TestStuckProbeDoesNotBlockForever(t *testing.T) {
	t.Parallel()
	c := &clock{time.Unix(1_000_000, 0)}
	var ch []string
	b := newTest(c, &ch)
	record(b, 0, 10)
	c.add(5 * time.Second)
	probe, err := b.Allow()
	require.NoError(t, err)
	require.True(t, probe) // ... and never reports back
	c.add(ProbeTimeoutDefault)
	probe, err = b.Allow()
	require.NoError(t, err)
	require.True(t, probe)
}

// TestChangesAreReportedInOrder: OnChange sees transitions in the order
// they happened, so a gauge set from it ends at the breaker's real state.
// Here the call that opens the breaker is slow to report it (its OnChange
// blocks) while another goroutine half-opens and closes it: the report of
// "open" must not come last (it used to, leaving the gauge at 1 while the
// breaker was closed).
func TestChangesAreReportedInOrder(t *testing.T) {
	t.Parallel()
	c := &clock{t: time.Unix(1_700_000_000, 0)}
	block, entered := make(chan struct{}), make(chan struct{})
	var mu sync.Mutex
	var seen []State
	b := New(Config{MinCalls: 4, OpenFor: time.Second, Now: c.now, OnChange: func(_, to State) {
		if to == Open {
			close(entered)
			<-block
		}
		mu.Lock()
		seen = append(seen, to)
		mu.Unlock()
	}})
	opened := make(chan struct{})
	go func() { record(b, 0, 4); close(opened) }()
	<-entered // the breaker is open; its report is on its way
	c.add(2 * time.Second)
	closed := make(chan struct{})
	go func() {
		probe, err := b.Allow()
		if err == nil {
			b.Record(false, probe)
		}
		close(closed)
	}()
	time.Sleep(50 * time.Millisecond) // let the probe run as far as it can
	close(block)
	<-opened
	<-closed
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, Closed, b.State())
	require.Equal(t, []State{Open, HalfOpen, Closed}, seen)
}

// TestPausedEndsWhenIdle: a breaker that opened as the queue emptied held
// nothing back once its time was up, yet read open for good (a state
// changes only when a call asks), and GhlcancelCircuitOpen fired on an
// idle worker. Paused says false once the open time is up and no call has
// asked for IdleAfter; a call asking makes it true again.
func TestPausedEndsWhenIdle(t *testing.T) {
	t.Parallel()
	c := &clock{time.Unix(1_000_000, 0)}
	var ch []string
	b := newTest(c, &ch)
	require.False(t, b.Paused(), "closed")
	_, _ = b.Allow()
	record(b, 0, 10)
	require.Equal(t, Open, b.State())
	require.True(t, b.Paused(), "open")
	c.add(5*time.Second + IdleAfter - time.Second)
	require.True(t, b.Paused(), "its time is up, not yet idle long")
	c.add(time.Second)
	require.Equal(t, Open, b.State(), "the state itself waits for a call")
	require.False(t, b.Paused(), "idle: nothing is held back")
	probe, err := b.Allow()
	require.NoError(t, err)
	require.True(t, probe)
	require.True(t, b.Paused(), "half-open, a probe in flight")
	b.Record(false, true)
	require.False(t, b.Paused(), "closed again")
}
