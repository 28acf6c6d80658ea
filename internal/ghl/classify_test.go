package ghl

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func hdr(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Set(kv[i], kv[i+1])
	}
	return h
}

func TestClassify(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name        string
		status      int
		header      http.Header
		body        string
		outcome     Outcome // set when a Result is expected
		reason      Reason  // set when an *Error is expected
		retryable   bool
		rateLimited time.Duration // set when a *RateLimitError is expected
		daily       bool
		message     string
	}{
		{name: "200 inner 200", status: 200, body: `{"status":200,"message":"ok"}`, outcome: OutcomeCancelled, message: "ok"},
		{name: "200 inner status absent", status: 200, body: `{"message":"done"}`, outcome: OutcomeCancelled},
		{name: "200 empty body", status: 200, body: ``, outcome: OutcomeCancelled},
		{name: "204 no body", status: 204, body: ``, outcome: OutcomeCancelled},
		{name: "201 inner 201", status: 201, body: `{"status":201,"message":"x"}`, outcome: OutcomeCancelled},
		{name: "200 inner 404 (spec example)", status: 200, body: `{"status":404,"message":"Failed cancel the scheduled message"}`,
			outcome: OutcomeNotCancellable, message: "Failed cancel the scheduled message"},
		{name: "200 inner 400", status: 200, body: `{"status":400,"message":"bad"}`, reason: ReasonBadRequest},
		{name: "200 inner 401", status: 200, body: `{"status":401,"message":"no"}`, reason: ReasonUnauthorized},
		{name: "200 inner 403", status: 200, body: `{"status":403,"message":"no"}`, reason: ReasonForbidden},
		{name: "200 inner 422", status: 200, body: `{"status":422,"message":["a","b"]}`, reason: ReasonUnprocessable, message: "a; b"},
		{name: "200 inner 409", status: 200, body: `{"status":409,"message":"conflict"}`, reason: ReasonClientError},
		{name: "200 inner 500", status: 200, body: `{"status":500,"message":"oops"}`, reason: ReasonServerError, retryable: true},
		{name: "200 inner 429", status: 200, body: `{"status":429,"message":"slow"}`, rateLimited: RateLimitFallback},
		{name: "200 html page: not HighLevel", status: 200, body: `<html>gateway</html>`, reason: ReasonMisrouted, retryable: true},
		{name: "200 html content type", status: 200, header: hdr("Content-Type", "text/html; charset=utf-8"), body: `ok`, reason: ReasonMisrouted, retryable: true},
		{name: "200 unreadable text body", status: 200, body: `gateway ok`, reason: ReasonBadResponse, retryable: true},
		{name: "200 truncated json", status: 200, body: `{"status":20`, reason: ReasonBadResponse, retryable: true},
		{name: "404 HighLevel's JSON about the message", status: 404, body: `{"statusCode":404,"message":"Not found"}`, outcome: OutcomeNotCancellable},
		{name: "410 HighLevel's JSON", status: 410, body: `{"statusCode":410,"message":"Gone"}`, outcome: OutcomeNotCancellable},
		{name: "404 HighLevel's message not found", status: 404, body: `{"statusCode":404,"message":"Message not found","error":"Not Found"}`, outcome: OutcomeNotCancellable},
		{name: "404 a proxy's JSON (Kong): no route", status: 404, body: `{"message":"no Route matched with those values"}`, reason: ReasonMisrouted, retryable: true},
		{name: "404 a gateway's JSON without statusCode", status: 404, body: `{"message":"Not Found"}`, reason: ReasonMisrouted, retryable: true},
		{name: "404 JSON whose statusCode disagrees", status: 404, body: `{"statusCode":200,"message":"ok"}`, reason: ReasonMisrouted, retryable: true},
		{name: "404 route does not exist (wrong base path)", status: 404,
			body: `{"statusCode":404,"message":"Cannot DELETE /v1/conversations/messages/x/schedule","error":"Not Found"}`, reason: ReasonMisrouted, retryable: true},
		{name: "404 route does not exist, GET", status: 404, body: `{"message":"Cannot GET /conversations/messages/x","error":"Not Found","statusCode":404}`, reason: ReasonMisrouted, retryable: true},
		{name: "404 html page", status: 404, header: hdr("Content-Type", "text/html"), body: `<!DOCTYPE html><title>404</title>`, reason: ReasonMisrouted, retryable: true},
		{name: "404 plain text", status: 404, body: `404 page not found`, reason: ReasonMisrouted, retryable: true},
		{name: "404 empty body", status: 404, body: ``, reason: ReasonMisrouted, retryable: true},
		{name: "410 empty body", status: 410, body: ``, reason: ReasonMisrouted, retryable: true},
		{name: "403 html page from a proxy", status: 403, body: `<html><body>Forbidden by proxy</body></html>`, reason: ReasonMisrouted, retryable: true},
		{name: "400", status: 400, body: `{"statusCode":400,"message":"Bad Request"}`, reason: ReasonBadRequest, message: "Bad Request"},
		{name: "400 message array", status: 400, body: `{"statusCode":400,"message":["id must be a string","x"]}`, reason: ReasonBadRequest, message: "id must be a string; x"},
		{name: "401", status: 401, body: `{"statusCode":401,"message":"Invalid token: access token is invalid","error":"Unauthorized"}`,
			reason: ReasonUnauthorized, message: "Invalid token: access token is invalid"},
		{name: "401 no message uses error", status: 401, body: `{"error":"Unauthorized"}`, reason: ReasonUnauthorized, message: "Unauthorized"},
		{name: "403", status: 403, body: `{}`, reason: ReasonForbidden, message: "Forbidden"},
		{name: "422", status: 422, body: `{"message":["bad id"],"error":"Unprocessable Entity","statusCode":422}`, reason: ReasonUnprocessable, message: "bad id"},
		{name: "405 method not allowed: a proxy or wrong route", status: 405, body: ``, reason: ReasonMisrouted, retryable: true},
		{name: "409 other 4xx", status: 409, body: `{"statusCode":409,"message":"conflict"}`, reason: ReasonClientError},
		{name: "408 request timeout", status: 408, body: ``, reason: ReasonTimeout, retryable: true},
		{name: "500", status: 500, body: `{"statusCode":500,"message":"Internal server error"}`, reason: ReasonServerError, retryable: true},
		{name: "502 html", status: 502, body: `<html>bad gateway</html>`, reason: ReasonServerError, retryable: true, message: "Bad Gateway"},
		{name: "503", status: 503, body: ``, reason: ReasonServerError, retryable: true},
		{name: "302 redirect", status: 302, header: hdr("Location", "https://example.com/"), body: ``, reason: ReasonMisrouted, retryable: true},
		{name: "301 redirect with html", status: 301, body: `<a href="/">Moved</a>`, reason: ReasonMisrouted, retryable: true},
		{name: "101", status: 101, body: ``, reason: ReasonServerError, retryable: true},
		{name: "429 Retry-After seconds", status: 429, header: hdr("Retry-After", "7"), rateLimited: 7 * time.Second},
		{name: "429 Retry-After date", status: 429, header: hdr("Retry-After", now.Add(3*time.Second).Format(http.TimeFormat)), rateLimited: 3 * time.Second},
		{name: "429 interval header", status: 429, header: hdr(HeaderRateLimitMax, "100", HeaderRateLimitInterval, "10000", HeaderRateLimitRemaining, "0"), rateLimited: 10 * time.Second},
		{name: "429 daily spent", status: 429, header: hdr(HeaderRateLimitDailyLeft, "0", HeaderRateLimitInterval, "10000"), rateLimited: DailyLimitRecheck, daily: true},
		{name: "429 no headers", status: 429, rateLimited: RateLimitFallback},
		{name: "429 junk Retry-After", status: 429, header: hdr("Retry-After", "soon"), rateLimited: RateLimitFallback},
		{name: "429 Retry-After 0 still waits", status: 429, header: hdr("Retry-After", "0"), rateLimited: RateLimitMinWait},
		{name: "429 Retry-After in the past", status: 429, header: hdr("Retry-After", now.Add(-time.Minute).Format(http.TimeFormat)), rateLimited: RateLimitMinWait},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := tt.header
			if h == nil {
				h = http.Header{}
			}
			res, err := Classify(tt.status, h, []byte(tt.body), now)
			switch {
			case tt.outcome != "":
				require.NoError(t, err)
				require.Equal(t, tt.outcome, res.Outcome)
			case tt.rateLimited != 0:
				var rl *RateLimitError
				require.True(t, errors.As(err, &rl), "want *RateLimitError, got %v", err)
				require.Equal(t, tt.rateLimited, rl.RetryAfter)
				require.Equal(t, tt.daily, rl.Daily)
			default:
				var e *Error
				require.True(t, errors.As(err, &e), "want *Error, got %v (result %+v)", err, res)
				require.Equal(t, tt.reason, e.Reason)
				require.Equal(t, tt.retryable, e.Retryable)
				if tt.message != "" {
					require.Equal(t, tt.message, e.Message)
				}
				require.Nil(t, res)
			}
			if tt.message != "" && res != nil {
				require.Equal(t, tt.message, res.Message)
			}
		})
	}
}

// TestMisrouted: the answers of the routes Classify does not read (OAuth
// token, agency mint and listing) that cannot be HighLevel's.
func TestMisrouted(t *testing.T) {
	t.Parallel()
	jsonH := hdr("Content-Type", "application/json")
	for _, tt := range []struct {
		name   string
		status int
		h      http.Header
		body   string
		want   bool
	}{
		{"route not found (a path typo)", 404, jsonH, `{"message":"Cannot POST /api/oauth/token","error":"Not Found","statusCode":404}`, true},
		{"a proxy's JSON 404", 404, jsonH, `{"message":"no Route matched with those values"}`, true},
		{"an empty 404", 404, http.Header{}, ``, true},
		{"an HTML page", 200, hdr("Content-Type", "text/html"), `<html>login</html>`, true},
		{"a redirect", 302, http.Header{}, ``, true},
		{"HighLevel's own 404", 404, jsonH, `{"statusCode":404,"message":"Location not found"}`, false},
		{"a grant refused", 400, jsonH, `{"error":"invalid_grant","error_description":"refresh token is invalid"}`, false},
		{"not installed", 400, jsonH, `{"statusCode":400,"message":"This app is not installed on the location"}`, false},
		{"a 401", 401, jsonH, `{"statusCode":401,"message":"Invalid JWT"}`, false},
		{"a 429", 429, jsonH, `{"statusCode":429,"message":"Too many requests"}`, false},
		{"a 200 pair", 200, jsonH, `{"access_token":"a","refresh_token":"r"}`, false},
	} {
		e := Misrouted(tt.status, tt.h, []byte(tt.body))
		require.Equal(t, tt.want, e != nil, tt.name)
		if e != nil {
			require.Equal(t, ReasonMisrouted, e.Reason, tt.name)
			require.True(t, e.Retryable, tt.name)
			require.Contains(t, e.Message, "GHL_BASE_URL", tt.name)
		}
	}
}

func TestClassifyBoundsMessage(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("é", 2000)
	_, err := Classify(400, http.Header{}, []byte(`{"message":"`+long+`"}`), time.Now())
	var e *Error
	require.ErrorAs(t, err, &e)
	require.LessOrEqual(t, len(e.Message), maxMessageLen+3)
	require.True(t, strings.HasSuffix(e.Message, "..."))
	require.True(t, strings.HasPrefix(e.Message, "é"))
}

func TestParseLimits(t *testing.T) {
	t.Parallel()
	l := ParseLimits(hdr(HeaderRateLimitMax, "100", HeaderRateLimitInterval, "10000", HeaderRateLimitRemaining, "0",
		HeaderRateLimitDaily, "200000", HeaderRateLimitDailyLeft, "199000"))
	require.Equal(t, Limits{Present: true, Max: 100, Interval: 10 * time.Second, Remaining: 0, DailyLimit: 200000, DailyRemaining: 199000}, l)
	require.True(t, l.Known())

	none := ParseLimits(http.Header{})
	require.False(t, none.Known())
	require.Equal(t, -1, none.Remaining)

	require.False(t, Limits{}.Known(), "the zero value means no headers")

	junk := ParseLimits(hdr(HeaderRateLimitRemaining, "-3", HeaderRateLimitMax, "x"))
	require.Equal(t, -1, junk.Remaining)
	require.Equal(t, -1, junk.Max)
}

func TestParseRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"", 0, false},
		{"0", 0, true},
		{"5", 5 * time.Second, true},
		{"1.5", 1500 * time.Millisecond, true},
		{" 12 ", 12 * time.Second, true},
		{"-1", 0, false},
		{"999999999", 0, false},
		{"later", 0, false},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second, true},
		{now.Add(-time.Minute).Format(http.TimeFormat), 0, true},
	}
	for _, tt := range tests {
		got, ok := ParseRetryAfter(tt.in, now)
		require.Equal(t, tt.ok, ok, tt.in)
		require.Equal(t, tt.want, got, tt.in)
	}
}

func TestValidateID(t *testing.T) {
	t.Parallel()
	tests := []struct {
		id string
		ok bool
	}{
		{"ve9EPM428h8vShlRW1KT", true},
		{"abc-DEF_123", true},
		{strings.Repeat("a", MaxIDLength), true},
		{"", false},
		{strings.Repeat("a", MaxIDLength+1), false},
		{"a/b", false},
		{"../x", false},
		{"a b", false},
		{"a\tb", false},
		{"a\nb", false},
		{"a%2Fb", false},
		{"ünïcode", false},
		{"a?b=c", false},
		{"a#b", false},
		{"a\x00b", false},
	}
	for _, tt := range tests {
		err := ValidateID(tt.id)
		require.Equal(t, tt.ok, err == nil, "%q: %v", tt.id, err)
	}
}

func TestParseKind(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]Kind{"": KindMessage, "message": KindMessage, "SMS": KindMessage, " email ": KindEmail} {
		got, err := ParseKind(in)
		require.NoError(t, err)
		require.Equal(t, want, got)
	}
	_, err := ParseKind("fax")
	require.ErrorContains(t, err, "fax")
}
