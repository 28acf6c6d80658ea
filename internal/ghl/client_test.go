package ghl_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/contract"
	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/sandbox"
)

const (
	locA   = "locAAAAAAAAAAAAAAAAA"
	locB   = "locBBBBBBBBBBBBBBBBB"
	tokenA = "tok-A-secret-0123456789"
	tokenB = "tok-B-secret-9876543210"
)

type testBundle struct {
	sb        *sandbox.Server
	client    *ghl.Client
	validator *contract.Validator
	srv       *httptest.Server
	observed  *observed
}

type observed struct {
	mu    sync.Mutex
	calls []string
}

// setup runs the sandbox under /api (so a wrong absolute path fails loudly),
// behind the OpenAPI validator, and a real client pointed at it.
func setup(t *testing.T, cfg sandbox.Config) *testBundle {
	t.Helper()
	v, err := contract.New()
	require.NoError(t, err)
	sb := sandbox.New(cfg)
	sb.AddLocation(locA, tokenA)
	sb.AddLocation(locB, tokenB)
	mux := http.NewServeMux()
	mux.Handle("/api/", http.StripPrefix("/api", v.Wrap(sb.Handler())))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	obs := &observed{}
	client, err := ghl.New(ghl.Config{
		BaseURL: srv.URL + "/api", // no trailing slash on purpose
		Timeout: 2 * time.Second,
		Observe: func(endpoint string, status int, _ time.Duration) {
			obs.mu.Lock()
			obs.calls = append(obs.calls, endpoint+" "+http.StatusText(status))
			obs.mu.Unlock()
		},
	})
	require.NoError(t, err)
	return &testBundle{sb: sb, client: client, validator: v, srv: srv, observed: obs}
}

func requireNoContractProblems(t *testing.T, v *contract.Validator) {
	t.Helper()
	require.Empty(t, v.Problems())
}

func TestCancelAgainstSandbox(t *testing.T) {
	t.Parallel()
	b := setup(t, sandbox.Config{})
	ctx := context.Background()

	msgID := b.sb.ScheduleN(locA, 1, false)[0]
	emailID := b.sb.ScheduleN(locA, 1, true)[0]
	otherLoc := b.sb.ScheduleN(locB, 1, false)[0]

	res, err := b.client.Cancel(ctx, ghl.KindMessage, msgID, tokenA)
	require.NoError(t, err)
	require.Equal(t, ghl.OutcomeCancelled, res.Outcome)
	require.Equal(t, 99, res.Limits.Remaining)
	require.Equal(t, 100, res.Limits.Max)
	require.Equal(t, 10*time.Second, res.Limits.Interval)
	status, cancels, _ := b.sb.MessageStatus(msgID)
	require.Equal(t, sandbox.StatusCancelled, status)
	require.Equal(t, 1, cancels)

	// A second cancel of the same message: 200 with an inner 404.
	res, err = b.client.Cancel(ctx, ghl.KindMessage, msgID, tokenA)
	require.NoError(t, err)
	require.Equal(t, ghl.OutcomeNotCancellable, res.Outcome)
	require.Equal(t, 404, res.InnerStatus)

	// Emails go to their own endpoint; the message endpoint does not know them.
	res, err = b.client.Cancel(ctx, ghl.KindMessage, emailID, tokenA)
	require.NoError(t, err)
	require.Equal(t, ghl.OutcomeNotCancellable, res.Outcome)
	res, err = b.client.Cancel(ctx, ghl.KindEmail, emailID, tokenA)
	require.NoError(t, err)
	require.Equal(t, ghl.OutcomeCancelled, res.Outcome)

	// Unknown id.
	res, err = b.client.Cancel(ctx, ghl.KindMessage, sandbox.NewID(), tokenA)
	require.NoError(t, err)
	require.Equal(t, ghl.OutcomeNotCancellable, res.Outcome)

	// Wrong token: a dead letter, and the token is not in the error.
	_, err = b.client.Cancel(ctx, ghl.KindMessage, sandbox.NewID(), "not-a-valid-token-xyz")
	var e *ghl.Error
	require.ErrorAs(t, err, &e)
	require.Equal(t, ghl.ReasonUnauthorized, e.Reason)
	require.False(t, e.Retryable)
	require.NotContains(t, err.Error(), "not-a-valid-token-xyz")
	require.Contains(t, err.Error(), "DELETE "+b.srv.URL+"/api/conversations/messages/")

	// A token for another location.
	_, err = b.client.Cancel(ctx, ghl.KindMessage, otherLoc, tokenA)
	require.ErrorAs(t, err, &e)
	require.Equal(t, ghl.ReasonUnauthorized, e.Reason)

	// Read back.
	m, err := b.client.GetMessage(ctx, ghl.KindMessage, msgID, tokenA)
	require.NoError(t, err)
	require.Equal(t, sandbox.StatusCancelled, m.Status)
	m, err = b.client.GetMessage(ctx, ghl.KindMessage, otherLoc, tokenB)
	require.NoError(t, err)
	require.Equal(t, sandbox.StatusScheduled, m.Status)
	_, err = b.client.GetMessage(ctx, ghl.KindMessage, sandbox.NewID(), tokenA)
	require.ErrorIs(t, err, ghl.ErrNotFound, "an unknown id")
	_, err = b.client.GetMessage(ctx, ghl.KindEmail, msgID, tokenA)
	require.ErrorIs(t, err, ghl.ErrNotFound, "an SMS is no email")

	requireNoContractProblems(t, b.validator)
	checked := b.validator.Checked()
	require.Positive(t, checked["DELETE /conversations/messages/{messageId}/schedule 200"])
	require.Positive(t, checked["DELETE /conversations/messages/email/{emailMessageId}/schedule 200"])
	require.Positive(t, checked["DELETE /conversations/messages/{messageId}/schedule 401"])
	require.Positive(t, checked["GET /conversations/messages/{id} 200"])
	require.Len(t, b.observed.calls, 11)
}

func TestCancelRejectsBadIDsWithoutACall(t *testing.T) {
	t.Parallel()
	b := setup(t, sandbox.Config{})
	for _, id := range []string{"", "a/b", "../../x", "a b", strings.Repeat("x", 10_000), "ünï"} {
		_, err := b.client.Cancel(context.Background(), ghl.KindMessage, id, tokenA)
		var e *ghl.Error
		require.ErrorAs(t, err, &e, id)
		require.Equal(t, ghl.ReasonInvalidID, e.Reason)
		require.False(t, e.Retryable)
	}
	_, err := b.client.Cancel(context.Background(), ghl.KindMessage, sandbox.NewID(), "")
	var e *ghl.Error
	require.ErrorAs(t, err, &e)
	require.Equal(t, ghl.ReasonNoToken, e.Reason)
	require.Zero(t, b.sb.Stats().Requests)
}

func TestCancelRateLimited(t *testing.T) {
	t.Parallel()
	b := setup(t, sandbox.Config{RateMax: 3, RateInterval: time.Hour, RetryAfter: true})
	ids := b.sb.ScheduleN(locA, 4, false)
	for _, id := range ids[:3] {
		_, err := b.client.Cancel(context.Background(), ghl.KindMessage, id, tokenA)
		require.NoError(t, err)
	}
	_, err := b.client.Cancel(context.Background(), ghl.KindMessage, ids[3], tokenA)
	var rl *ghl.RateLimitError
	require.ErrorAs(t, err, &rl)
	require.Greater(t, rl.RetryAfter, time.Duration(0))
	require.LessOrEqual(t, rl.RetryAfter, time.Hour)
	require.Equal(t, 0, rl.Limits.Remaining)
	require.Equal(t, 3, rl.Limits.Max)
	// Other locations have their own bucket.
	other := b.sb.ScheduleN(locB, 1, false)[0]
	_, err = b.client.Cancel(context.Background(), ghl.KindMessage, other, tokenB)
	require.NoError(t, err)
	requireNoContractProblems(t, b.validator)
}

func TestCancelFaultsAreRetryable(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		faults sandbox.Faults
		reason ghl.Reason
	}{
		{"5xx", sandbox.Faults{ErrorRate: 1}, ghl.ReasonServerError},
		{"reset", sandbox.Faults{ResetRate: 1}, ghl.ReasonNetwork},
		{"timeout", sandbox.Faults{TimeoutRate: 1}, ghl.ReasonTimeout},
		{"lost response", sandbox.Faults{LostResponseRate: 1}, ghl.ReasonServerError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, sandbox.Config{Faults: tt.faults})
			// Only the hang should time out: a stalled machine must not
			// turn the other faults into timeouts.
			timeout := 10 * time.Second
			if tt.reason == ghl.ReasonTimeout {
				timeout = 300 * time.Millisecond
			}
			client, err := ghl.New(ghl.Config{BaseURL: b.srv.URL + "/api/", Timeout: timeout})
			require.NoError(t, err)
			id := b.sb.ScheduleN(locA, 1, false)[0]
			_, err = client.Cancel(context.Background(), ghl.KindMessage, id, tokenA)
			var e *ghl.Error
			require.ErrorAs(t, err, &e)
			require.Equal(t, tt.reason, e.Reason, err.Error())
			require.True(t, e.Retryable)
			require.NotContains(t, err.Error(), tokenA)
		})
	}
}

func TestCancelConnectionRefused(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	client, err := ghl.New(ghl.Config{BaseURL: "http://" + addr})
	require.NoError(t, err)
	_, err = client.Cancel(context.Background(), ghl.KindEmail, "ve9EPM428h8vShlRW1KT", tokenA)
	var e *ghl.Error
	require.ErrorAs(t, err, &e)
	require.Equal(t, ghl.ReasonNetwork, e.Reason)
	require.True(t, e.Retryable)
	require.Contains(t, err.Error(), "DELETE http://"+addr+"/conversations/messages/email/ve9EPM428h8vShlRW1KT/schedule")
	require.NotContains(t, err.Error(), tokenA)
}

func TestCancelHeaders(t *testing.T) {
	t.Parallel()
	var got http.Header
	var path string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, path = r.Header.Clone(), r.URL.EscapedPath()
		w.WriteHeader(200)
		_, _ = w.Write([]byte(`{"status":200,"message":"ok"}`))
	}))
	t.Cleanup(srv.Close)
	client, err := ghl.New(ghl.Config{BaseURL: srv.URL + "/v2/", UserAgent: "ua-test/1"})
	require.NoError(t, err)
	_, err = client.Cancel(context.Background(), ghl.KindMessage, "ve9EPM428h8vShlRW1KT", tokenA)
	require.NoError(t, err)
	require.Equal(t, "/v2/conversations/messages/ve9EPM428h8vShlRW1KT/schedule", path)
	require.Equal(t, "Bearer "+tokenA, got.Get("Authorization"))
	require.Equal(t, ghl.VersionDefault, got.Get("Version"))
	require.Equal(t, "application/json", got.Get("Accept"))
	require.Equal(t, "ua-test/1", got.Get("User-Agent"))
}

func TestNewRejectsBadBaseURL(t *testing.T) {
	t.Parallel()
	for _, u := range []string{"ftp://x", "not a url", "http://", "https://user:pw@host/", "https://host/?q=1"} {
		_, err := ghl.New(ghl.Config{BaseURL: u})
		require.Error(t, err, u)
		require.NotContains(t, err.Error(), "pw@")
	}
}

func TestContextCancelIsRetryable(t *testing.T) {
	t.Parallel()
	b := setup(t, sandbox.Config{Faults: sandbox.Faults{Latency: time.Second}})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := b.client.Cancel(ctx, ghl.KindMessage, sandbox.NewID(), tokenA)
	var e *ghl.Error
	require.ErrorAs(t, err, &e)
	require.True(t, e.Retryable)
	require.True(t, errors.Is(err, context.DeadlineExceeded), err.Error())
}

// TestExportAgainstSandbox pages a location's export through the OpenAPI
// validator: filters, the email channel, page bounds, an expired cursor, and
// the email GET by emailMessageId.
func TestExportAgainstSandbox(t *testing.T) {
	t.Parallel()
	b := setup(t, sandbox.Config{})
	ctx := context.Background()
	const alice, bob = "contactAlice00000001", "contactBob0000000001"
	specs := make([]sandbox.MessageSpec, 0, 40)
	for i := range 30 {
		specs = append(specs, sandbox.MessageSpec{Contact: []string{alice, bob}[i%2]})
	}
	for range 10 {
		specs = append(specs, sandbox.MessageSpec{Contact: alice, Email: true})
	}
	added := b.sb.AddMessages(locA, specs...)
	b.sb.AddMessages(locB, sandbox.MessageSpec{Contact: alice})

	// Without a channel the export leaves email out; pages of 10 chain by cursor.
	var got []ghl.ExportedMessage
	q := ghl.ExportQuery{LocationID: locA, Limit: 10}
	pages := 0
	for {
		p, err := b.client.ExportMessages(ctx, q, tokenA)
		require.NoError(t, err)
		pages++
		got = append(got, p.Messages...)
		if p.NextCursor == "" {
			break
		}
		q.Cursor = p.NextCursor
	}
	require.Len(t, got, 30)
	require.Equal(t, 3, pages)
	for i, m := range got {
		require.Equal(t, added[i].ID, m.ID, "oldest first, no gap, no repeat")
		require.Equal(t, "scheduled", m.Status)
	}

	// channel=Email lists the emails, each with the id its cancel needs.
	p, err := b.client.ExportMessages(ctx, ghl.ExportQuery{LocationID: locA, Channel: "Email", ContactID: alice}, tokenA)
	require.NoError(t, err)
	require.Len(t, p.Messages, 10)
	emailID := p.Messages[0].Meta.Email.MessageIDs[len(p.Messages[0].Meta.Email.MessageIDs)-1]
	require.NotEqual(t, p.Messages[0].ID, emailID)
	m, err := b.client.GetMessage(ctx, ghl.KindEmail, emailID, tokenA)
	require.NoError(t, err)
	require.Equal(t, sandbox.StatusScheduled, m.Status)

	// A contact filter keeps that contact's messages only.
	p, err = b.client.ExportMessages(ctx, ghl.ExportQuery{LocationID: locA, ContactID: bob}, tokenA)
	require.NoError(t, err)
	require.Len(t, p.Messages, 15)
	for _, m := range p.Messages {
		require.Equal(t, bob, m.ContactID)
	}

	// An expired cursor is ErrCursorExpired, not a dead letter.
	p, err = b.client.ExportMessages(ctx, ghl.ExportQuery{LocationID: locA, Limit: 10}, tokenA)
	require.NoError(t, err)
	b.sb.ExpireCursors()
	_, err = b.client.ExportMessages(ctx, ghl.ExportQuery{LocationID: locA, Limit: 10, Cursor: p.NextCursor}, tokenA)
	require.ErrorIs(t, err, ghl.ErrCursorExpired)

	// A token for another location is refused like a cancel.
	_, err = b.client.ExportMessages(ctx, ghl.ExportQuery{LocationID: locB}, tokenA)
	var e *ghl.Error
	require.ErrorAs(t, err, &e)
	require.Equal(t, ghl.ReasonUnauthorized, e.Reason)
	require.NotContains(t, err.Error(), tokenA)

	requireNoContractProblems(t, b.validator)
	checked := b.validator.Checked()
	require.Positive(t, checked["GET /conversations/messages/export 200"])
	require.Positive(t, checked["GET /conversations/messages/email/{id} 200"])
}

// TestCheckToken: what a Bearer header can carry (visible ASCII); the
// error places the bad byte without quoting the token.
func TestCheckToken(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		token string
		want  string // "" when fine
	}{
		{"pit-0123abcd-ef45-6789", ""},
		{"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig_-+/=~", ""},
		{"", "the token is empty"},
		{"zq9\n", "at byte 4 of 4"},
		{"zq9 en", "at byte 4 of 6"},
		{"zq9\x7f", "at byte 4 of 4"},
		{"zq9ë", "at byte 4 of 5"},
	} {
		err := ghl.CheckToken(tt.token)
		if tt.want == "" {
			require.NoError(t, err, tt.token)
			continue
		}
		require.ErrorContains(t, err, tt.want, "%q", tt.token)
		if tt.token != "" {
			require.NotContains(t, err.Error(), "zq9", "the token is never quoted")
		}
	}
}
