package ghl

import (
	"fmt"
	"time"
)

// Reason is a bounded, machine-readable cause of a failed call. It is used as
// the dead-letter reason and as a metric label, so it never carries ids.
type Reason string

// Reasons a call can fail for.
const (
	ReasonBadRequest    Reason = "bad_request"   // 400, or inner 400
	ReasonUnprocessable Reason = "unprocessable" // 422
	ReasonUnauthorized  Reason = "unauthorized"  // 401
	ReasonForbidden     Reason = "forbidden"     // 403
	ReasonClientError   Reason = "client_error"  // any other 4xx
	ReasonRateLimited   Reason = "rate_limited"  // 429
	ReasonServerError   Reason = "server_error"  // 5xx
	ReasonTimeout       Reason = "timeout"       // the call took longer than the client timeout
	ReasonNetwork       Reason = "network"       // connection refused, reset, DNS, TLS
	ReasonBadResponse   Reason = "bad_response"  // a 2xx whose body could not be read or parsed
	// ReasonMisrouted: the answer did not come from HighLevel's route for
	// the call (a route-level 404 "Cannot DELETE ...", an HTML or other
	// non-JSON page, a redirect, 405): GHL_BASE_URL or a proxy in front is
	// wrong. Retried (a fixed configuration resumes the task), never a
	// terminal outcome.
	ReasonMisrouted    Reason = "misrouted"
	ReasonInvalidID    Reason = "invalid_id"    // rejected before any call
	ReasonNoToken      Reason = "no_token"      // no token is configured for the location
	ReasonInvalidToken Reason = "invalid_token" // the token cannot be sent: a space or control character in it
	ReasonTokenSource  Reason = "token_source"  // the token source failed (retryable)
	ReasonInvalidGrant Reason = "invalid_grant" // OAuth refresh token rejected
	ReasonInactive     Reason = "location_inactive"
)

// Error is a call that failed. Retryable says whether trying again later can
// succeed. The message is the API's own text; Request is a sanitized request
// line (method and URL without query or credentials). No token ever appears in it.
type Error struct {
	Reason      Reason
	StatusCode  int // HTTP status; 0 when no response arrived
	InnerStatus int // the "status" field of a 2xx body, when it reported a failure
	Message     string
	Request     string
	Retryable   bool
	Limits      Limits
	Err         error // underlying transport error, if any
}

func (e *Error) Error() string {
	status := ""
	switch {
	case e.InnerStatus != 0:
		status = fmt.Sprintf(" %d (inner status %d)", e.StatusCode, e.InnerStatus)
	case e.StatusCode != 0:
		status = fmt.Sprintf(" %d", e.StatusCode)
	}
	msg := e.Message
	if msg == "" && e.Err != nil {
		msg = e.Err.Error()
	}
	if e.Request == "" {
		return fmt.Sprintf("highlevel: %s%s: %s", e.Reason, status, msg)
	}
	return fmt.Sprintf("highlevel: %s:%s %s: %s", e.Request, status, e.Reason, msg)
}

func (e *Error) Unwrap() error { return e.Err }

// RateLimitError is a 429. RetryAfter is how long to wait before the next call
// for the same location: from Retry-After when sent, else from the
// X-RateLimit-* headers, else a fallback backoff.
type RateLimitError struct {
	RetryAfter time.Duration
	Daily      bool // the daily budget, not the burst window, is spent
	Limits     Limits
	Message    string
	Request    string
}

func (e *RateLimitError) Error() string {
	scope := "burst"
	if e.Daily {
		scope = "daily"
	}
	return fmt.Sprintf("highlevel: %s: 429 rate limited (%s limit), retry after %s: %s",
		e.Request, scope, e.RetryAfter, e.Message)
}

// SnoozeFor is how long to wait before calling for this location again.
func (e *RateLimitError) SnoozeFor() time.Duration { return e.RetryAfter }
