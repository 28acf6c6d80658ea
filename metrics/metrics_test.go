package metrics_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/tasks"
	"github.com/ghlcancel/ghlcancel/metrics"
)

func TestCodeLabel(t *testing.T) {
	t.Parallel()
	tests := map[int]string{0: "error", 200: "200", 204: "204", 404: "404", 429: "429", 503: "503",
		418: "4xx", 302: "3xx", 599: "5xx", 700: "other", -1: "other"}
	for status, want := range tests {
		require.Equal(t, want, metrics.CodeLabel(status), status)
	}
}

func TestClassLabel(t *testing.T) {
	t.Parallel()
	tests := map[int]string{0: "error", 200: "2xx", 204: "2xx", 404: "4xx", 429: "4xx", 503: "5xx", 302: "3xx", 700: "error", -1: "error"}
	for status, want := range tests {
		require.Equal(t, want, metrics.ClassLabel(status), status)
	}
}

func TestMiddlewareRecordsOnce(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	h := m.Middleware(asynq.HandlerFunc(func(ctx context.Context, t *asynq.Task) error {
		if string(t.Payload()) == "fail" {
			return errors.New("no report: counted as a retry")
		}
		return nil
	}))
	require.NoError(t, h.ProcessTask(context.Background(), asynq.NewTask(tasks.TypeCancelEmail, nil)))
	require.Error(t, h.ProcessTask(context.Background(), asynq.NewTask("other:type", []byte("fail"))))
	mfs, err := reg.Gather()
	require.NoError(t, err)
	require.Equal(t, 1.0, metrics.Sum(mfs, "ghlcancel_tasks_processed_total", "task_type", tasks.TypeCancelEmail, "outcome", "cancelled"))
	require.Equal(t, 1.0, metrics.Sum(mfs, "ghlcancel_tasks_processed_total", "task_type", "unknown", "outcome", "retry"))
	require.Equal(t, 2.0, metrics.Sum(mfs, "ghlcancel_task_duration_seconds"))
	require.Equal(t, 0.0, metrics.Sum(mfs, "ghlcancel_tasks_in_flight"))
}

// TestAlertedSeriesStartAtZero: an alert on increase() sees a first event
// only on a series that existed at 0 before it. The agency pair's refresh
// results were created by their first refusal (already 1, and a refusal
// is remembered: the alert never fired).
func TestAlertedSeriesStartAtZero(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	metrics.New(reg)
	mfs, err := reg.Gather()
	require.NoError(t, err)
	have := map[string]bool{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" {
					have[mf.GetName()+"/"+l.GetValue()] = true
				}
			}
		}
	}
	for _, want := range []string{"agency_invalid_grant", "agency_inactive", "agency_error", "invalid_grant"} {
		require.True(t, have["ghlcancel_token_refreshes_total/"+want], want)
	}
	for _, want := range []string{"agency_revoked", "mint_refused"} {
		require.True(t, have["ghlcancel_token_mints_total/"+want], want)
	}
}

// TestNamesPassPromtool runs Debian's promtool over a full exposition.
func TestNamesPassPromtool(t *testing.T) {
	t.Parallel()
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("GHLCANCEL_REQUIRE_TOOLS") != "" { // set by scripts/test
			t.Fatal("promtool not installed (apt-get install prometheus)")
		}
		t.Skip("promtool not installed (apt-get install prometheus)")
	}
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	m.ObserveAPI("cancel_message", 200, 30*time.Millisecond)
	mfs, err := reg.Gather()
	require.NoError(t, err)
	var buf bytes.Buffer
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), "ghlcancel_") {
			_, err := expfmt.MetricFamilyToText(&buf, mf)
			require.NoError(t, err)
		}
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = &buf
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "promtool: %s", out)
	require.Empty(t, strings.TrimSpace(string(out)), "promtool lint: %s", out)
}

// TestInFlightFallsAfterAPanic: a handler that panics (asynq recovers it)
// must not leave the in-flight gauge up.
func TestInFlightFallsAfterAPanic(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	h := m.Middleware(asynq.HandlerFunc(func(context.Context, *asynq.Task) error { panic("bug") }))
	require.Panics(t, func() { _ = h.ProcessTask(context.Background(), asynq.NewTask(tasks.TypeCancelMessage, nil)) })
	mfs, err := reg.Gather()
	require.NoError(t, err)
	require.Equal(t, 0.0, metrics.Sum(mfs, "ghlcancel_tasks_in_flight"))
}
