package main

import (
	"bytes"
	"context"
	"testing"

	"github.com/stretchr/testify/require"
)

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
	require.Contains(t, out.String(), "sweeps: 1/1 locations done")
	require.Contains(t, out.String(), "webhook:  the same delivery again: 200 {\"result\":\"replay\"")
	require.Contains(t, out.String(), "webhook:  a tampered one for contactBob00: 401 {\"result\":\"bad_signature\"")
	require.Contains(t, out.String(), "verified in the sandbox: Alice's 9 scheduled SMS and emails cancelled")
	require.Regexp(t, `sweep sw\S+ \(InboundMessage wh\S+\): contact contactAlice in demoLocationSweep001, all: 9 still scheduled \(6 SMS, 3 email\), 9 cancels queued, done`, out.String())
}

func TestDemoRejectsBadFlags(t *testing.T) {
	t.Parallel()
	err := run(context.Background(), []string{"-locations", "0"}, func(string) string { return "" }, &bytes.Buffer{}, &bytes.Buffer{})
	require.ErrorContains(t, err, "-locations must be at least 1")
}
