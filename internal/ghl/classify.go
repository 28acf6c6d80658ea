package ghl

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
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

	// Only HighLevel's own JSON answers say anything about the message. A
	// page from something else (a wrong base URL, a proxy) is a
	// configuration error, whatever its status code.
	if e := misroutedAnswer(status, h, trimmed, parseErr, b, msg); e != nil {
		e.Limits = limits
		return nil, e
	}
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

// Misrouted is the misrouted error (Reason ReasonMisrouted, retryable,
// Request unset) for an answer that cannot be HighLevel's, by the rule
// Classify applies to the message routes; nil for any other answer. For
// the routes Classify does not read (OAuth token, agency mint and
// listing): a typo in GHL_BASE_URL must read as one there too, not as
// HighLevel refusing a token.
func Misrouted(status int, h http.Header, body []byte) *Error {
	var b apiBody
	trimmed := bytes.TrimSpace(body)
	parseErr := error(nil)
	if len(trimmed) > 0 {
		parseErr = json.Unmarshal(trimmed, &b)
	}
	return misroutedAnswer(status, h, trimmed, parseErr, b, truncate(b.messageText()))
}

func misroutedAnswer(status int, h http.Header, trimmed []byte, parseErr error, b apiBody, msg string) *Error {
	if misrouted(status, h, trimmed, parseErr, msg) || ((status == http.StatusNotFound || status == http.StatusGone) && !highLevelShape(b, status)) {
		return &Error{Reason: ReasonMisrouted, StatusCode: status, Retryable: true, Message: misroutedMessage(status, trimmed, msg)}
	}
	return nil
}

// routeNotFound is the framework's (NestJS/Express) answer for a path with
// no route: "Cannot DELETE /v1/conversations/messages/x/schedule".
var routeNotFound = regexp.MustCompile(`^Cannot (GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS) /`)

// misrouted reports an answer that cannot be HighLevel's answer about the
// message: a redirect; a 405; a 404/410 that is empty, not JSON, or the
// framework's route-not-found; a 2xx or 4xx HTML page. 5xx pages from
// gateways stay server errors (retried either way), 429 stays a rate limit.
func misrouted(status int, h http.Header, body []byte, parseErr error, msg string) bool {
	html := strings.Contains(strings.ToLower(h.Get("Content-Type")), "html") || (len(body) > 0 && body[0] == '<')
	switch {
	case status >= 300 && status < 400, status == http.StatusMethodNotAllowed:
		return true
	case status == http.StatusNotFound || status == http.StatusGone:
		return len(body) == 0 || parseErr != nil || html || routeNotFound.MatchString(msg)
	case status == http.StatusTooManyRequests, status == http.StatusRequestTimeout:
		return false
	case status >= 200 && status < 300, status >= 400 && status < 500:
		return html
	}
	return false
}

// highLevelShape: an error body as HighLevel's framework writes it, with
// its statusCode equal to the HTTP status. A proxy's or gateway's JSON 404
// ({"message":"no Route matched with those values"}, {"message":"Not
// Found"}) has none and says nothing about the message.
func highLevelShape(b apiBody, status int) bool {
	return b.StatusCode != nil && int(*b.StatusCode) == status
}

func misroutedMessage(status int, body []byte, msg string) string {
	what := msg
	switch {
	case status >= 300 && status < 400:
		what = "a redirect"
	case len(body) == 0:
		what = "an empty answer"
	case body[0] == '<' || msg == "":
		what = "a page that is not HighLevel's JSON"
	}
	return fmt.Sprintf("%d with %s: not HighLevel's answer for this route; check GHL_BASE_URL (and any proxy in front)", status, what)
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
	default: // 1xx (3xx is misrouted): treat as a server fault.
		return nil, fail(ReasonServerError, true)
	}
}
