package ghl

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"time"
)

// Outcome is the terminal, successful result of a cancel call.
type Outcome string

// Outcomes of a cancel call that needs no retry.
const (
	// OutcomeCancelled: the scheduled message will not be sent.
	OutcomeCancelled Outcome = "cancelled"
	// OutcomeNotCancellable: HighLevel says there is nothing to cancel (unknown
	// id, already sent, already cancelled). Terminal, not a failure of ours.
	OutcomeNotCancellable Outcome = "not_cancellable"
)

// Result is a call that reached a terminal, non-error outcome.
type Result struct {
	Outcome     Outcome
	StatusCode  int
	InnerStatus int // 0 when the body had no "status"
	Message     string
	Limits      Limits
}

// apiBody is the union of HighLevel's success and error bodies:
// {"status": 200, "message": "..."} and {"statusCode": 400, "message": "..." | [...], "error": "..."}.
type apiBody struct {
	Status     *float64        `json:"status"`
	StatusCode *float64        `json:"statusCode"`
	Message    json.RawMessage `json:"message"`
	Error      string          `json:"error"`
}

// messageText returns "message" whether it is a string or an array of strings.
func (b apiBody) messageText() string {
	if len(b.Message) == 0 {
		return b.Error
	}
	var s string
	if err := json.Unmarshal(b.Message, &s); err == nil {
		return s
	}
	var list []string
	if err := json.Unmarshal(b.Message, &list); err == nil {
		return strings.Join(list, "; ")
	}
	return b.Error
}

// maxMessageLen bounds an API message copied into errors and dead letters.
const maxMessageLen = 512

func truncate(s string) string {
	s = strings.ToValidUTF8(s, "?")
	if len(s) <= maxMessageLen {
		return s
	}
	cut := maxMessageLen
	for cut > 0 && !utf8RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

func utf8RuneStart(b byte) bool { return b&0xC0 != 0x80 }

// Classify turns one HTTP answer into a Result or a typed error. It is the
// only place that decides what a status code means; see the table in the
// README. The returned error is *Error or *RateLimitError with Request unset.
func Classify(status int, h http.Header, body []byte, now time.Time) (*Result, error) {
	limits := ParseLimits(h)
	var b apiBody
	trimmed := bytes.TrimSpace(body)
	parseErr := error(nil)
	if len(trimmed) > 0 {
		parseErr = json.Unmarshal(trimmed, &b)
	}
	msg := truncate(b.messageText())

	if status >= 200 && status < 300 {
		if parseErr != nil {
			return nil, &Error{Reason: ReasonBadResponse, StatusCode: status, Retryable: true, Limits: limits,
				Message: "unreadable response body: " + parseErr.Error()}
		}
		inner := 0
		if b.Status != nil {
			inner = int(*b.Status)
		}
		if inner == 0 || (inner >= 200 && inner < 300) {
			return &Result{Outcome: OutcomeCancelled, StatusCode: status, InnerStatus: inner, Message: msg, Limits: limits}, nil
		}
		// A 2xx that reports a failure inside: classify the inner status,
		// but never as a rate limit with our own headers' advice missing.
		res, err := classifyFailure(inner, h, limits, msg, now)
		if res != nil {
			res.StatusCode, res.InnerStatus = status, inner
		}
		if e, ok := err.(*Error); ok {
			e.StatusCode, e.InnerStatus = status, inner
		}
		return res, err
	}
	return classifyFailure(status, h, limits, msg, now)
}

func classifyFailure(status int, h http.Header, limits Limits, msg string, now time.Time) (*Result, error) {
	if msg == "" {
		msg = http.StatusText(status)
	}
	fail := func(r Reason, retryable bool) error {
		return &Error{Reason: r, StatusCode: status, Message: msg, Retryable: retryable, Limits: limits}
	}
	switch {
	case status == http.StatusNotFound || status == http.StatusGone:
		return &Result{Outcome: OutcomeNotCancellable, StatusCode: status, Message: msg, Limits: limits}, nil
	case status == http.StatusTooManyRequests:
		wait, daily := rateLimitWait(h, limits, now)
		return nil, &RateLimitError{RetryAfter: wait, Daily: daily, Limits: limits, Message: msg}
	case status == http.StatusBadRequest:
		return nil, fail(ReasonBadRequest, false)
	case status == http.StatusUnauthorized:
		return nil, fail(ReasonUnauthorized, false)
	case status == http.StatusForbidden:
		return nil, fail(ReasonForbidden, false)
	case status == http.StatusUnprocessableEntity:
		return nil, fail(ReasonUnprocessable, false)
	case status == http.StatusRequestTimeout:
		return nil, fail(ReasonTimeout, true)
	case status >= 500:
		return nil, fail(ReasonServerError, true)
	case status >= 400:
		return nil, fail(ReasonClientError, false)
	default: // 1xx, 3xx: we follow no redirects for a DELETE; treat as a server fault.
		return nil, fail(ReasonServerError, true)
	}
}
