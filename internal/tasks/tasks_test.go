package tasks

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/tokens"
)

func TestBackoffCeiling(t *testing.T) {
	t.Parallel()
	b := Backoff{}
	tests := []struct {
		n    int
		want time.Duration
	}{
		{-1, 2 * time.Second},
		{0, 2 * time.Second},
		{1, 4 * time.Second},
		{2, 8 * time.Second},
		{9, 1024 * time.Second},
		{10, BackoffCapDefault}, // 2048 s > 20 min
		{39, BackoffCapDefault},
		{40, BackoffCapDefault},
		{1000, BackoffCapDefault},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, b.Ceiling(tt.n), "n=%d", tt.n)
	}
	custom := Backoff{Base: 100 * time.Millisecond, Cap: time.Second}
	require.Equal(t, 400*time.Millisecond, custom.Ceiling(2))
	require.Equal(t, time.Second, custom.Ceiling(5))
}

func TestRetryDelay(t *testing.T) {
	t.Parallel()
	rl := &ghl.RateLimitError{RetryAfter: 10 * time.Second}
	tests := []struct {
		name string
		n    int
		err  error
		u    float64
		want time.Duration
	}{
		{"first retry, low draw: floor", 0, errors.New("x"), 0, BackoffMin},
		{"first retry, high draw: within a few seconds", 0, &ghl.Error{Reason: ghl.ReasonServerError}, 0.999, 1998 * time.Millisecond},
		{"third retry, mid draw", 2, &ghl.Error{Reason: ghl.ReasonTimeout}, 0.5, 4 * time.Second},
		{"late retry capped", 50, &ghl.Error{Reason: ghl.ReasonNetwork}, 0.5, 10 * time.Minute},
		{"rate limit: wait as told", 0, rl, 0, 10*time.Second + BackoffMin},
		{"rate limit: up to 10% jitter", 7, rl, 1, 11*time.Second + BackoffMin},
		{"wrapped rate limit", 3, fmt.Errorf("wrap: %w", rl), 0.5, 10500*time.Millisecond + BackoffMin},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := retryDelay(Backoff{}, tt.n, tt.err, tt.u)
			require.InDelta(t, float64(tt.want), float64(got), float64(time.Millisecond))
		})
	}
}

func TestIsFailure(t *testing.T) {
	t.Parallel()
	tests := []struct {
		err  error
		want bool
	}{
		{&ghl.RateLimitError{RetryAfter: time.Second}, false},
		{fmt.Errorf("x: %w", &ghl.RateLimitError{}), false},
		{&ghl.Error{Reason: ghl.ReasonServerError, Retryable: true}, true},
		{errors.New("boom"), true},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, IsFailure(tt.err), "%v", tt.err)
	}
}

// TestMaxRetryDefaultSpansADay: with full jitter the expected delay of retry
// n is half its ceiling; the default retry count should keep a message
// retrying for about a day before it is dead-lettered.
func TestMaxRetryDefaultSpansADay(t *testing.T) {
	t.Parallel()
	var expected time.Duration
	for n := 0; n < MaxRetryDefault; n++ {
		expected += Backoff{}.Ceiling(n) / 2
	}
	require.Greater(t, expected, 20*time.Hour)
	require.Less(t, expected, 28*time.Hour)
}

func TestTaskTypesAreNotPrefixes(t *testing.T) {
	t.Parallel()
	require.False(t, strings.HasPrefix(TypeCancelMessage, TypeCancelEmail))
	require.False(t, strings.HasPrefix(TypeCancelEmail, TypeCancelMessage))
	for _, k := range []ghl.Kind{ghl.KindMessage, ghl.KindEmail} {
		got, ok := KindFor(TypeFor(k))
		require.True(t, ok)
		require.Equal(t, k, got)
	}
	_, ok := KindFor("ghl:message")
	require.False(t, ok)
}

func TestAsynqMaxRetry(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ retries, want int }{
		{-1, 1}, // none: asynq's spare only
		{0, 1},
		{5, 6},
		{MaxRetryDefault, MaxRetryDefault + 1},
		{math.MaxInt, math.MaxInt32},
	} {
		require.Equal(t, tt.want, AsynqMaxRetry(tt.retries), "retries %d", tt.retries)
	}
}

func TestNewCancelTask(t *testing.T) {
	t.Parallel()
	p := CancelPayload{MessageID: "ve9EPM428h8vShlRW1KT", LocationID: "loc1", CampaignID: "spring"}
	task, err := NewCancelTask(ghl.KindEmail, p, TaskOptions{Queue: QueueBulk, MaxRetry: 5})
	require.NoError(t, err)
	require.Equal(t, TypeCancelEmail, task.Type())
	var got CancelPayload
	require.NoError(t, json.Unmarshal(task.Payload(), &got))
	require.Equal(t, p.MessageID, got.MessageID)
	require.NotZero(t, got.RequestedAt)
	require.NotContains(t, string(task.Payload()), "token")
	// asynq keeps one attempt spare (AsynqMaxRetry): 5 retries are 6.
	rdb := redisServer.Client(t)
	info, err := asynq.NewClientFromRedisClient(rdb).Enqueue(task)
	require.NoError(t, err)
	require.Equal(t, 6, info.MaxRetry)
	require.Equal(t, "email:ve9EPM428h8vShlRW1KT", TaskID(ghl.KindEmail, p.MessageID))
	require.Equal(t, "msg:ve9EPM428h8vShlRW1KT", TaskID(ghl.KindMessage, p.MessageID))

	for _, bad := range []CancelPayload{
		{MessageID: "", LocationID: "loc"},
		{MessageID: "a/b", LocationID: "loc"},
		{MessageID: "abc", LocationID: ""},
		{MessageID: "abc", LocationID: "loc", CampaignID: strings.Repeat("c", 129)},
	} {
		_, err := NewCancelTask(ghl.KindMessage, bad, TaskOptions{})
		require.Error(t, err, "%+v", bad)
	}
	// A task or dead letter from before "." was refused where work comes
	// in still runs and can be requeued.
	_, err = NewCancelTask(ghl.KindMessage, CancelPayload{MessageID: "abc", LocationID: "loc", CampaignID: "."}, TaskOptions{})
	require.NoError(t, err)
	_, err = NewCancelTask("fax", p, TaskOptions{})
	require.Error(t, err)
}

func TestValidateCampaignID(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		id, err string
	}{
		{"spring-sale", ""}, {"a/b", ""}, {"...", ""}, {".x", ""}, {"spring sale #1", ""}, {strings.Repeat("c", 128), ""},
		{"", "empty"}, {strings.Repeat("c", 129), "129 bytes, the limit is 128"},
		{".", `"." cannot be addressed in a URL path`}, {"..", `".." cannot be addressed in a URL path`},
	} {
		err := ValidateCampaignID(c.id)
		if c.err == "" {
			require.NoError(t, err, "%q", c.id)
		} else {
			require.ErrorContains(t, err, c.err, "%q", c.id)
		}
	}
}

func TestDeadErrorKeepsBothInChain(t *testing.T) {
	t.Parallel()
	cause := &ghl.Error{Reason: ghl.ReasonUnauthorized}
	err := fmt.Errorf("dead letter %s: %w: %w", cause.Reason, cause, asynq.SkipRetry)
	require.ErrorIs(t, err, asynq.SkipRetry)
	var e *ghl.Error
	require.ErrorAs(t, err, &e)
}

// TestClassifyTokenError: what each token source failure means for a task
// (a table of the pure mapping).
func TestClassifyTokenError(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name   string
		err    error
		fate   string
		reason string
	}{
		{"no token", tokens.ErrNoToken, FateDead, string(ghl.ReasonNoToken)},
		{"a 401 a fresh token did not cure", tokens.ErrRefreshDidNotCure, FateDead, string(ghl.ReasonUnauthorized)},
		// Wrong GHL_TOKEN_KEY: nothing a retry changes (it was token_source,
		// retried for a day while the messages went out).
		{"stored tokens sealed with another key", fmt.Errorf("oauth: stored tokens %w", tokens.ErrWrongKey), FateDead, ReasonTokenKey},
		{"Redis unreachable", errors.New("dial tcp: connection refused"), FateRetry, string(ghl.ReasonTokenSource)},
		// A typo in GHL_BASE_URL met at the token endpoint: retried as a
		// misrouted cancel is (it was token_source, or a mint refusal).
		{"token endpoint misrouted", fmt.Errorf("mint: %w", &ghl.Error{Reason: ghl.ReasonMisrouted, StatusCode: 404, Retryable: true}), FateRetry, string(ghl.ReasonMisrouted)},
	} {
		v, ok := ClassifyTokenError(tt.err)
		require.True(t, ok, tt.name)
		require.Equal(t, tt.fate, v.Fate, tt.name)
		require.Equal(t, tt.reason, v.Reason, tt.name)
	}
	_, ok := ClassifyTokenError(nil)
	require.False(t, ok)
}

// TestSweepWindow: the window holds to the millisecond both ways (since
// rounded up, until down), a payload written in whole seconds keeps its
// meaning (until takes in its second), and an until before since within
// one second is refused.
func TestSweepWindow(t *testing.T) {
	base := time.Unix(1_796_000_000, 0)
	ms := func(n int) time.Time { return base.Add(time.Duration(n) * time.Millisecond) }
	var p SweepPayload
	p.SetWindow(ms(528).Add(300*time.Microsecond), ms(1296))
	for _, tc := range []struct {
		at   time.Time
		want bool
	}{
		{ms(528), false}, // before since's sub-millisecond part
		{ms(529), true},
		{ms(1296), true},
		{ms(1297), false},
		{ms(26), false},
	} {
		require.Equal(t, tc.want, p.InWindow(tc.at), tc.at.Format(time.RFC3339Nano))
	}
	require.Equal(t, base.Unix(), p.Since, "whole seconds for older workers")
	require.Equal(t, base.Unix()+1, p.Until)

	old := SweepPayload{Since: base.Unix(), Until: base.Unix()} // before since_ms
	require.True(t, old.InWindow(ms(0)))
	require.True(t, old.InWindow(ms(999)), "until took in its whole second")
	require.False(t, old.InWindow(ms(1000)))

	// An until in whole seconds takes in its second, as before: a message
	// at .400 of it is in (it was left out, and went out).
	var whole SweepPayload
	whole.SetWindow(base, base)
	require.True(t, whole.InWindow(ms(400)))
	require.False(t, whole.InWindow(ms(1000)))
	ws, wu := whole.Window()
	os, ou := old.Window()
	require.True(t, ws.Equal(os) && wu.Equal(ou), "the same window written now and before: %v-%v, %v-%v", ws, wu, os, ou)

	var open SweepPayload
	open.SetWindow(time.Time{}, time.Time{})
	require.True(t, open.InWindow(ms(5)))
	require.Zero(t, open.Since+open.SinceMs+open.Until+open.UntilMs)

	bad := SweepPayload{SweepID: "sw1", CampaignID: "c", LocationID: "locWindow0000000001", Channel: ChannelAll}
	bad.SetWindow(ms(900), ms(100))
	require.ErrorContains(t, bad.Validate(), "until is before since")
	bad.SetWindow(ms(100), ms(100))
	require.NoError(t, bad.Validate())
}
