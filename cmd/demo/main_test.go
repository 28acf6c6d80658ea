package main

import (
	"bytes"
	"context"
	neturl "net/url"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/redistest"
)

var redisServer *redistest.Server

func TestMain(m *testing.M) { redistest.Main(m, &redisServer) }

// TestDemoRunsEndToEnd runs the README's first command, scaled down, on the
// embedded Redis: it must verify every scheduled message cancelled.
func TestDemoRunsEndToEnd(t *testing.T) {
	t.Parallel()
	var out, errw bytes.Buffer
	err := run(context.Background(), []string{"-exit", "-locations", "3", "-messages", "40", "-unknown", "5",
		"-bad-token", "4", "-rate", "50", "-rate-interval", "1s", "-metrics-addr", "127.0.0.1:0", "-dir", t.TempDir()},
		func(string) string { return "" }, &out, &errw)
	require.NoError(t, err, "stdout:\n%s\nstderr:\n%s", out.String(), errw.String())
	require.Contains(t, out.String(), "verified in the sandbox: 120/120 scheduled messages cancelled; 4 dead letters kept for replay")
	require.Regexp(t, `not_found +5\n`, out.String())
	require.Contains(t, out.String(), "demo-campaign [##############################] 129/129 100%")
	require.Contains(t, out.String(), "dead letters: unauthorized 4")
	require.Regexp(t, `auto-inboundmessage-\d{8} \[##############################\] 9/9 100%`, out.String())
	require.Contains(t, out.String(), "sweeps: 1/1 location sweeps done")
	require.Contains(t, out.String(), "webhook:  the same delivery again: 200 {\"result\":\"replay\"")
	require.Contains(t, out.String(), "webhook:  a tampered one for contactBob00: 401 {\"result\":\"bad_signature\"")
	require.Contains(t, out.String(), "verified in the sandbox: Alice's 9 scheduled SMS and emails cancelled")
	require.Regexp(t, `sweep sw\S+ \(InboundMessage wh\S+\): contact contactAlice in demoLocationSweep001, all: 9 still scheduled \(6 SMS, 3 email\), 9 cancels queued, done`, out.String())
}

// TestDemoLeavesARealRedisAlone: REDIS_URL, exported for a real
// deployment, is not the demo's Redis (its worker would take that queue's
// cancels with sandbox tokens and dead-letter them); -redis-url must name
// an empty database, so a second demo on the same one is refused too.
func TestDemoLeavesARealRedisAlone(t *testing.T) {
	t.Parallel()
	url := redisServer.URL(t)
	rdb := redistest.ClientFor(t, url)
	ctx := context.Background()
	require.NoError(t, rdb.LPush(ctx, "asynq:{bulk}:pending", "msg:realMessage0001").Err())
	small := []string{"-exit", "-locations", "1", "-messages", "5", "-unknown", "0", "-bad-token", "0", "-rate", "50", "-rate-interval", "1s",
		"-metrics-addr", "127.0.0.1:0", "-dir", t.TempDir()}
	env := func(k string) string {
		if k == "REDIS_URL" {
			return url
		}
		return ""
	}
	var out, errw bytes.Buffer
	require.NoError(t, run(ctx, small, env, &out, &errw), "stdout:\n%s\nstderr:\n%s", out.String(), errw.String())
	require.Contains(t, out.String(), "redis:    embedded")
	require.Contains(t, out.String(), "REDIS_URL is set and not used")
	require.Equal(t, []string{"msg:realMessage0001"}, rdb.LRange(ctx, "asynq:{bulk}:pending", 0, -1).Val(), "the real queue was touched")
	require.Equal(t, int64(1), rdb.DBSize(ctx).Val())

	err := run(ctx, append(small, "-redis-url", url), env, &bytes.Buffer{}, &bytes.Buffer{})
	require.ErrorContains(t, err, "holds 1 keys")
	require.ErrorContains(t, err, "empty database")
	u, perr := neturl.Parse(url)
	require.NoError(t, perr)
	require.NotContains(t, err.Error(), "e.g. "+url+" ", "the example is another database than the one refused")
	require.NotContains(t, err.Error(), "(e.g. redis://"+u.Host+u.Path+")", "the example is another database than the one refused")
	// 5 meaning 5%: every answer a 5xx, a demo that never ends.
	err = run(ctx, append(small, "-fault-rate", "5"), env, &bytes.Buffer{}, &bytes.Buffer{})
	require.ErrorContains(t, err, "-fault-rate 5: want a share from 0 to below 1")
	require.Equal(t, int64(1), rdb.DBSize(ctx).Val(), "a refused demo wrote nothing")

	// An empty database is the demo's to use.
	empty := redisServer.URL(t)
	out.Reset()
	require.NoError(t, run(ctx, append(small, "-redis-url", empty), env, &out, &errw), "stdout:\n%s\nstderr:\n%s", out.String(), errw.String())
	require.Contains(t, out.String(), "redis:    "+empty)
	require.Contains(t, out.String(), "verified in the sandbox: 5/5 scheduled messages cancelled")
}

func TestDemoRejectsBadFlags(t *testing.T) {
	t.Parallel()
	err := run(context.Background(), []string{"-locations", "0"}, func(string) string { return "" }, &bytes.Buffer{}, &bytes.Buffer{})
	require.ErrorContains(t, err, "-locations must be at least 1")
}
