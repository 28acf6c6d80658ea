package ghl

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestRouteHealth(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_700_000_000, 0)
	var changes []bool
	r := &RouteHealth{MinCalls: 3, Window: time.Minute, Now: func() time.Time { return now }, OnChange: func(b bool) { changes = append(changes, b) }}
	steps := []struct {
		misrouted bool
		advance   time.Duration
		want      bool
	}{
		{true, 0, false},              // one misrouted answer is not enough to judge
		{true, 0, false},              // two
		{true, 0, true},               // three in the window: misrouted
		{true, 2 * time.Minute, true}, // still bad although the window emptied: only a good answer clears it
		{false, 0, false},             // HighLevel answers again
		{true, 0, false},              // one misrouted among good ones: fine
		{true, 0, false},
		{true, 0, false}, // the good answer is still in the window
	}
	for i, s := range steps {
		now = now.Add(s.advance)
		r.Observe(s.misrouted, "DELETE https://x/v1/conversations/messages/m/schedule")
		require.Equal(t, s.want, r.Misrouted(), "step %d", i)
	}
	require.Equal(t, []bool{true, false}, changes)
}
