// Package ghl is a small HighLevel (LeadConnector) API client for the calls
// ghlcancel makes: cancelling scheduled messages and emails, and reading a
// message back to verify its status. Every answer goes through Classify.
package ghl

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Defaults for Config.
const (
	BaseURLDefault      = "https://services.leadconnectorhq.com/"
	VersionDefault      = "2021-04-15"
	TimeoutDefault      = 30 * time.Second
	UserAgentDefault    = "ghlcancel/dev (+https://github.com/ghlcancel/ghlcancel)"
	MaxIdleConnsDefault = 512
	// maxBodyBytes bounds how much of a response body is read.
	maxBodyBytes = 64 << 10
	// maxExportBytes bounds an export page's body: 500 messages with
	// their bodies and metadata run to a few hundred KB.
	maxExportBytes = 32 << 20
)

// Kind is which cancel endpoint a message id belongs to.
type Kind string

// Kinds of scheduled message.
const (
	KindMessage Kind = "message" // DELETE /conversations/messages/{id}/schedule
	KindEmail   Kind = "email"   // DELETE /conversations/messages/email/{id}/schedule
)

// ParseKind accepts "message" (also "sms", empty) and "email".
func ParseKind(s string) (Kind, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "message", "sms":
		return KindMessage, nil
	case "email":
		return KindEmail, nil
	}
	return "", fmt.Errorf("unknown kind %q: want message or email", s)
}

// Endpoint is a bounded label naming an API route (a template, never an id).
func (k Kind) Endpoint() string {
	if k == KindEmail {
		return "cancel_email"
	}
	return "cancel_message"
}

// Config configures a Client.
type Config struct {
	// BaseURL of the API. Defaults to BaseURLDefault. A trailing slash is added.
	BaseURL string
	// Version header sent with every call. Defaults to VersionDefault.
	Version string
	// Timeout for one whole call. Defaults to TimeoutDefault.
	Timeout time.Duration
	// UserAgent header. Defaults to UserAgentDefault.
	UserAgent string
	// MaxIdleConns kept open to the API. Size it near the worker concurrency.
	// Defaults to MaxIdleConnsDefault.
	MaxIdleConns int
	// HTTPClient replaces the tuned client built from the fields above.
	HTTPClient *http.Client
	// Observe, when set, is called after every call with its endpoint label,
	// HTTP status (0 when none arrived) and duration. Used for metrics.
	Observe func(endpoint string, status int, d time.Duration)
	// Now defaults to time.Now.
	Now func() time.Time
}

// Client calls the HighLevel API. It is safe for concurrent use.
type Client struct {
	base    *url.URL
	http    *http.Client
	version string
	ua      string
	observe func(string, int, time.Duration)
	now     func() time.Time
}

// ErrBaseURL: the base URL given to New is not one a client can call.
var ErrBaseURL = errors.New("ghl: bad base URL")

// New builds a Client.
func New(cfg Config) (*Client, error) {
	raw := cmp.Or(cfg.BaseURL, BaseURLDefault)
	if !strings.HasSuffix(raw, "/") {
		raw += "/"
	}
	base, err := url.Parse(raw)
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		return nil, fmt.Errorf("%w %q: want an absolute http(s) URL such as %s", ErrBaseURL, cfg.BaseURL, BaseURLDefault)
	}
	if base.User != nil || base.RawQuery != "" {
		return nil, fmt.Errorf("%w: it must not carry credentials or a query", ErrBaseURL)
	}
	timeout := cmp.Or(cfg.Timeout, TimeoutDefault)
	hc := cfg.HTTPClient
	if hc == nil {
		hc = NewHTTPClient(timeout, cmp.Or(cfg.MaxIdleConns, MaxIdleConnsDefault))
	}
	c := &Client{
		base:    base,
		http:    hc,
		version: cmp.Or(cfg.Version, VersionDefault),
		ua:      cmp.Or(cfg.UserAgent, UserAgentDefault),
		observe: cfg.Observe,
		now:     cfg.Now,
	}
	if c.now == nil {
		c.now = time.Now
	}
	return c, nil
}

// NewHTTPClient returns an *http.Client tuned for many concurrent calls to
// one host: enough idle connections per host that a burst of workers reuses
// them instead of opening new ones, bounded dial and TLS times, no redirects.
func NewHTTPClient(timeout time.Duration, maxIdle int) *http.Client {
	tr := &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		DialContext: (&net.Dialer{
			Timeout:   5 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          maxIdle,
		MaxIdleConnsPerHost:   maxIdle,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: timeout,
		ExpectContinueTimeout: time.Second,
	}
	return &http.Client{
		Transport: tr,
		Timeout:   timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// BaseURL returns the base URL calls go to (no credentials: New refuses them).
func (c *Client) BaseURL() string { return c.base.String() }

// MaxIDLength is the longest id accepted. HighLevel ids are 20-24 characters.
const MaxIDLength = 64

// ValidateID rejects an id before any call: empty, too long, or holding
// anything but ASCII letters, digits, '-' and '_' (so no slash, dot,
// whitespace or control character can change the path).
func ValidateID(id string) error {
	if id == "" {
		return errors.New("empty id")
	}
	if len(id) > MaxIDLength {
		return fmt.Errorf("id is %d bytes long, the limit is %d", len(id), MaxIDLength)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return fmt.Errorf("id has a character that is not allowed at byte %d (allowed: letters, digits, '-', '_')", i)
		}
	}
	return nil
}

// CancelPath is the API path, relative to the base URL, of a cancel call.
func CancelPath(kind Kind, id string) string {
	if kind == KindEmail {
		return "conversations/messages/email/" + url.PathEscape(id) + "/schedule"
	}
	return "conversations/messages/" + url.PathEscape(id) + "/schedule"
}

// Cancel cancels one scheduled message or email. A nil error means a terminal
// outcome (Result.Outcome); otherwise the error is *Error or *RateLimitError.
func (c *Client) Cancel(ctx context.Context, kind Kind, id, token string) (*Result, error) {
	if kind != KindMessage && kind != KindEmail {
		return nil, &Error{Reason: ReasonClientError, Message: fmt.Sprintf("unknown kind %q", kind)}
	}
	if err := ValidateID(id); err != nil {
		return nil, &Error{Reason: ReasonInvalidID, Message: err.Error()}
	}
	if token == "" {
		return nil, &Error{Reason: ReasonNoToken, Message: "empty token"}
	}
	status, h, body, req, err := c.do(ctx, http.MethodDelete, kind.Endpoint(), CancelPath(kind, id), token)
	if err != nil {
		return nil, err
	}
	res, err := Classify(status, h, body, c.now())
	return res, withRequest(err, req)
}

// messageNotFound is the GET's 400 "Message not found" (not, say,
// "Location not found", which is a problem with the request).
var messageNotFound = regexp.MustCompile(`(?i)\b(message|email)\b.*\bnot found\b`)

// ErrNotFound: HighLevel says it has no such message (a JSON 404, or a 400
// whose message says "not found").
var ErrNotFound = errors.New("highlevel: no such message")

// GetMessage reads a message back (GET /conversations/messages/{id}, or
// /conversations/messages/email/{id} for an email) to verify what a "not
// found" cancel meant. No such message is ErrNotFound; other failures are
// *Error or *RateLimitError as for Cancel.
func (c *Client) GetMessage(ctx context.Context, kind Kind, id, token string) (*Message, error) {
	if err := ValidateID(id); err != nil {
		return nil, &Error{Reason: ReasonInvalidID, Message: err.Error()}
	}
	endpoint, path := "get_message", "conversations/messages/"+url.PathEscape(id)
	if kind == KindEmail {
		endpoint, path = "get_email", "conversations/messages/email/"+url.PathEscape(id)
	}
	status, h, body, req, err := c.do(ctx, http.MethodGet, endpoint, path, token)
	if err != nil {
		return nil, err
	}
	if status >= 200 && status < 300 {
		var m Message
		if err := decodeOK(status, h, body, req, &m, "unreadable message body", func() bool { return m.ID != "" }); err != nil {
			return nil, err
		}
		m.Limits = ParseLimits(h)
		return &m, nil
	}
	res, cerr := Classify(status, h, body, c.now())
	if cerr == nil && res.Outcome == OutcomeNotCancellable { // HighLevel's own 404 / 410
		return nil, ErrNotFound
	}
	var e *Error
	if errors.As(cerr, &e) && e.Reason == ReasonBadRequest && messageNotFound.MatchString(e.Message) {
		return nil, ErrNotFound
	}
	return nil, withRequest(cerr, req)
}

// Message is the subset of a message (or email) ghlcancel reads.
type Message struct {
	ID          string  `json:"id"`
	LocationID  string  `json:"locationId"`
	Status      string  `json:"status"`
	MessageType string  `json:"messageType"`
	Type        float64 `json:"type"`
	Meta        struct {
		Email struct {
			MessageIDs []string `json:"messageIds"`
		} `json:"email"`
	} `json:"meta"`
	// Limits are the answer's rate-limit headers.
	Limits Limits `json:"-"`
}

// IsEmail says whether a message read by its conversation message id is an
// email (cancelled by its emailMessageId, the last of Meta.Email.MessageIDs).
func (m Message) IsEmail() bool { return isEmailType(m.MessageType, m.Type) }

func withRequest(err error, req string) error {
	var e *Error
	var rl *RateLimitError
	switch {
	case errors.As(err, &e):
		e.Request = req
	case errors.As(err, &rl):
		rl.Request = req
	}
	return err
}

// CheckToken says whether a token can be sent as a Bearer credential:
// visible ASCII only. A token pasted with a trailing newline, or a space
// inside, makes Go refuse to build the request, which would read as a
// network failure and be retried for a day; callers trim what they load
// and refuse the rest. The error never quotes the token.
func CheckToken(token string) error {
	if token == "" {
		return errors.New("the token is empty")
	}
	for i := 0; i < len(token); i++ {
		if c := token[i]; c <= ' ' || c > '~' {
			return fmt.Errorf("the token has a space, control or non-ASCII character at byte %d of %d (a line break pasted with it?)", i+1, len(token))
		}
	}
	return nil
}

// NotSent says whether err refused a call before anything was sent (an id
// or a token no request can carry): a circuit breaker learns nothing from
// it, neither failure nor success.
func NotSent(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.StatusCode == 0 && !e.Retryable &&
		(e.Reason == ReasonInvalidToken || e.Reason == ReasonInvalidID || e.Reason == ReasonNoToken)
}

// do sends one request and reads a bounded body. Transport failures come
// back as *Error (timeout or network, retryable). req is the sanitized line.
func (c *Client) do(ctx context.Context, method, endpoint, path, token string) (int, http.Header, []byte, string, error) {
	return c.doLimit(ctx, method, endpoint, path, token, maxBodyBytes)
}

// doLimit is do reading at most limit bytes of the body.
func (c *Client) doLimit(ctx context.Context, method, endpoint, path, token string, limit int64) (int, http.Header, []byte, string, error) {
	u, err := c.base.Parse(path)
	if err != nil {
		return 0, nil, nil, method + " " + path, &Error{Reason: ReasonInvalidID, Message: "bad path", Err: err}
	}
	reqLine := method + " " + sanitizeURL(u)
	if err := CheckToken(token); err != nil {
		// Not a network failure: nothing was sent, and trying again sends
		// nothing either. Never a breaker failure.
		return 0, nil, nil, reqLine, &Error{Reason: ReasonInvalidToken, Request: reqLine, Message: err.Error() + ": fix the location's token"}
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
	if err != nil {
		return 0, nil, nil, reqLine, &Error{Reason: ReasonClientError, Request: reqLine, Message: "building request failed", Err: err}
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Version", c.version)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", c.ua)

	start := c.now()
	resp, err := c.http.Do(req)
	if err != nil {
		c.record(endpoint, 0, start)
		return 0, nil, nil, reqLine, transportError(ctx, err, reqLine)
	}
	body, readErr := io.ReadAll(io.LimitReader(resp.Body, limit))
	// Drain a little more so the connection can be reused, then close.
	_, _ = io.CopyN(io.Discard, resp.Body, maxBodyBytes)
	_ = resp.Body.Close()
	c.record(endpoint, resp.StatusCode, start)
	if readErr != nil {
		if resp.StatusCode >= 200 && resp.StatusCode < 300 {
			return 0, nil, nil, reqLine, &Error{Reason: ReasonBadResponse, StatusCode: resp.StatusCode, Request: reqLine,
				Retryable: true, Limits: ParseLimits(resp.Header), Message: "reading response body failed", Err: scrub(readErr)}
		}
		body = nil // an error status is classified by its code alone
	}
	return resp.StatusCode, resp.Header, body, reqLine, nil
}

func (c *Client) record(endpoint string, status int, start time.Time) {
	if c.observe != nil {
		c.observe(endpoint, status, c.now().Sub(start))
	}
}

func transportError(ctx context.Context, err error, req string) error {
	reason := ReasonNetwork
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		reason = ReasonTimeout
	}
	if ctx.Err() != nil && errors.Is(ctx.Err(), context.Canceled) {
		// The caller gave up (shutdown): still retryable, nothing was decided.
		reason = ReasonNetwork
	}
	return &Error{Reason: reason, Request: req, Retryable: true, Message: string(reason) + " error", Err: scrub(err)}
}

// scrub strips the URL out of a *url.Error so that what we log is the
// sanitized request line we already carry, nothing more.
func scrub(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func sanitizeURL(u *url.URL) string {
	c := *u
	c.User = nil
	c.RawQuery = ""
	c.Fragment = ""
	return c.String()
}

// ExportQuery selects messages of one location for ExportMessages. Channel
// is HighLevel's: "" (every non-email message), "SMS" or "Email".
type ExportQuery struct {
	LocationID     string
	Channel        string
	ContactID      string
	ConversationID string
	// Since and Until bound the messages' creation time (zero: unbounded).
	Since, Until time.Time
	// Limit is the page size, 10 to 500. Defaults to 500.
	Limit  int
	Cursor string
}

// ExportPage is one page of GET /conversations/messages/export.
type ExportPage struct {
	Messages []ExportedMessage `json:"messages"`
	// NextCursor is empty on the last page.
	NextCursor string `json:"nextCursor"`
	Total      int    `json:"total"`
	Limits     Limits `json:"-"`
}

// ExportedMessage is the part of an exported message a sweep reads.
type ExportedMessage struct {
	ID             string  `json:"id"`
	Type           float64 `json:"type"`
	MessageType    string  `json:"messageType"`
	ContactID      string  `json:"contactId"`
	ConversationID string  `json:"conversationId"`
	Status         string  `json:"status"`
	Source         string  `json:"source"`
	DateAdded      string  `json:"dateAdded"`
	Meta           struct {
		Email struct {
			MessageIDs []string `json:"messageIds"`
		} `json:"email"`
	} `json:"meta"`
}

// IsEmail says whether the message is an email (cancelled by its
// emailMessageId, not its id).
func (m ExportedMessage) IsEmail() bool { return isEmailType(m.MessageType, m.Type) }

func isEmailType(messageType string, typ float64) bool {
	return messageType == "TYPE_EMAIL" || messageType == "TYPE_CAMPAIGN_EMAIL" || messageType == "TYPE_CUSTOM_EMAIL" ||
		messageType == "TYPE_CUSTOM_PROVIDER_EMAIL" || (messageType == "" && typ == 3)
}

// decodeOK reads a 2xx answer into v. A body that is not HighLevel's (an
// HTML page, a proxy's answer) is misrouted; JSON that does not decode, or
// that valid (when given) refuses, is a bad response. Both are retryable.
func decodeOK(status int, h http.Header, body []byte, req string, v any, unreadable string, valid func() bool) error {
	trimmed := bytes.TrimSpace(body)
	if misrouted(status, h, trimmed, nil, "") {
		return &Error{Reason: ReasonMisrouted, StatusCode: status, Request: req, Retryable: true, Limits: ParseLimits(h),
			Message: misroutedMessage(status, trimmed, "")}
	}
	err := json.Unmarshal(trimmed, v)
	if err != nil || (valid != nil && !valid()) {
		return &Error{Reason: ReasonBadResponse, StatusCode: status, Request: req, Retryable: true, Limits: ParseLimits(h),
			Message: unreadable, Err: err}
	}
	return nil
}

// ErrCursorExpired: HighLevel refused an export cursor (it lives about 2
// minutes after the last request); start the export again without one.
var ErrCursorExpired = errors.New("highlevel: export cursor expired or invalid")

// ExportMessages reads one page of a location's messages (GET
// /conversations/messages/export, oldest first). A refused cursor is
// ErrCursorExpired; other failures are *Error or *RateLimitError.
func (c *Client) ExportMessages(ctx context.Context, q ExportQuery, token string) (*ExportPage, error) {
	if err := ValidateID(q.LocationID); err != nil {
		return nil, &Error{Reason: ReasonInvalidID, Message: err.Error()}
	}
	v := url.Values{"locationId": {q.LocationID}, "limit": {strconv.Itoa(cmp.Or(q.Limit, 500))},
		"sortBy": {"createdAt"}, "sortOrder": {"asc"}}
	for k, s := range map[string]string{"channel": q.Channel, "contactId": q.ContactID, "conversationId": q.ConversationID, "cursor": q.Cursor} {
		if s != "" {
			v.Set(k, s)
		}
	}
	// Whole seconds, rounded outward: a window to the millisecond is
	// applied by the caller to what comes back (HighLevel's dateAdded
	// carries milliseconds; how it reads a fraction here is undocumented).
	if !q.Since.IsZero() {
		v.Set("startDate", q.Since.UTC().Truncate(time.Second).Format(time.RFC3339))
	}
	if !q.Until.IsZero() {
		u := q.Until.UTC()
		if t := u.Truncate(time.Second); t.Before(u) {
			u = t.Add(time.Second)
		}
		v.Set("endDate", u.Format(time.RFC3339))
	}
	status, h, body, req, err := c.doLimit(ctx, http.MethodGet, "export_messages", "conversations/messages/export?"+v.Encode(), token, maxExportBytes)
	if err != nil {
		return nil, err
	}
	if status >= 200 && status < 300 {
		var p ExportPage
		if err := decodeOK(status, h, body, req, &p, "unreadable export page", nil); err != nil {
			return nil, err
		}
		p.Limits = ParseLimits(h)
		return &p, nil
	}
	_, cerr := Classify(status, h, body, c.now())
	var e *Error
	if q.Cursor != "" && errors.As(cerr, &e) && e.Reason == ReasonBadRequest && strings.Contains(strings.ToLower(e.Message), "cursor") {
		return nil, ErrCursorExpired
	}
	if cerr == nil { // a 404 with HighLevel's body: the route exists, the location does not
		cerr = &Error{Reason: ReasonClientError, StatusCode: status, Message: http.StatusText(status)}
	}
	return nil, withRequest(cerr, req)
}
