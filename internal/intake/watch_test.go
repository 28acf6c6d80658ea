package intake_test

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/fleet"
	"github.com/ghlcancel/ghlcancel/internal/intake"
	"github.com/ghlcancel/ghlcancel/internal/redistest"
	"github.com/ghlcancel/ghlcancel/internal/syncbuf"
)

// TestWatchSaysWhatAnIntakeCannotSee: intake replicas with different
// AUTO_CANCEL_EVENTS answered the same reply "accepted" at one and
// "no_rule" at the other (its messages went out: HighLevel retries only a
// 429), and an intake on another Redis database than the workers' took
// cancels that nothing ran; neither said a word (fleet audit). Watch now
// logs both and exposes them as metrics.
func TestWatchSaysWhatAnIntakeCannotSee(t *testing.T) {
	t.Parallel()
	url := redisServer.URL(t)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	start := func(events string) (*syncbuf.Buffer, *prometheus.Registry) {
		var logs syncbuf.Buffer
		reg := prometheus.NewRegistry()
		srv, err := intake.New(intake.Config{Redis: redistest.ClientFor(t, url), Keys: []string{key}, Registry: reg,
			Logger: slog.New(slog.NewTextHandler(&logs, nil)),
			Fleet:  fleet.Settings{"AUTO_CANCEL": events, "CAMPAIGN_RETENTION": "168h0m0s"}})
		require.NoError(t, err)
		wg.Go(func() { srv.Watch(ctx) })
		t.Cleanup(func() { cancel(); wg.Wait() }) // before its Redis client closes
		return &logs, reg
	}
	alogs, _ := start("cancelling InboundMessage on all")
	require.Eventually(t, func() bool { return strings.Contains(alogs.String(), "no worker serves this Redis database") },
		5*time.Second, 10*time.Millisecond, "no asynq server in this database")
	blogs, breg := start("no AUTO_CANCEL_EVENTS")
	require.Eventually(t, func() bool { return strings.Contains(blogs.String(), "intakes sharing this Redis disagree") },
		5*time.Second, 10*time.Millisecond)
	require.Contains(t, blogs.String(), `AUTO_CANCEL: \"cancelling InboundMessage on all\"`)
	require.Contains(t, blogs.String(), `\"no AUTO_CANCEL_EVENTS\"`)
	require.NoError(t, testutil.GatherAndCompare(breg, strings.NewReader(`
# HELP ghlcancel_fleet_settings_differ 1 while the live intakes sharing this Redis disagree on this setting (webhook rules, replay window, legacy signatures, campaign retention); the intake's log names the values and intakes.
# TYPE ghlcancel_fleet_settings_differ gauge
ghlcancel_fleet_settings_differ{setting="AUTO_CANCEL"} 1
ghlcancel_fleet_settings_differ{setting="CAMPAIGN_RETENTION"} 0
`), "ghlcancel_fleet_settings_differ"))
	require.NoError(t, testutil.GatherAndCompare(breg, strings.NewReader(`
# HELP ghlcancel_intake_workers_live asynq servers of live workers serving this intake's Redis database (a worker runs one per lane); 0: what the intake accepts waits (a REDIS_URL database number other than the workers', or no worker running).
# TYPE ghlcancel_intake_workers_live gauge
ghlcancel_intake_workers_live 0
`), "ghlcancel_intake_workers_live"))
	require.Equal(t, 1, strings.Count(blogs.String(), "disagree"), "said once")
}
