// Package client is the Go client of ghlcancel's intake API, for services
// that cancel scheduled HighLevel messages: enqueue one cancel or many, read
// a campaign's progress, list dead letters.
//
//	c, err := client.New("http://ghlcancel-intake:8080", os.Getenv("GHLCANCEL_API_KEY"))
//	res, err := c.Cancel(ctx, client.Cancel{MessageID: id, LocationID: loc, Urgent: true})
//
// Enqueueing is idempotent per message (a message already queued answers
// already_queued), and a sweep carries an Idempotency-Key, so the client
// retries requests that failed on the way (connection errors, 502/503/504)
// with backoff; see Options.MaxAttempts. A cancel request sent again after
// a lost answer says so (Response.Resent). Redirects are not followed: a
// redirected POST would lose its body, so the error names the address to
// use instead.
package client

import (
	"bytes"
	"cmp"
	"context"
	crand "crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// BatchSize is how many items CancelMany sends per request by default
// (the intake's default INTAKE_MAX_ITEMS); Options.BatchSize changes it.
const BatchSize = 1000

// Options tune a Client. Zero values take the defaults.
type Options struct {
	// HTTPClient defaults to a client with a 60 s timeout.
	HTTPClient *http.Client
	// MaxAttempts per request, first try included. Defaults to 6: with
	// the default RetryBase the retries span about 6 s, so an intake
	// restart or a load balancer's failover is ridden out.
	MaxAttempts int
	// RetryBase is the first retry's mean delay; it doubles per attempt.
	// Defaults to 200 ms.
	RetryBase time.Duration
	// BatchSize is how many items CancelMany sends per request; defaults
	// to BatchSize. Set it to an intake's INTAKE_MAX_ITEMS when that is
	// lower (the intake answers 413 too_many_items otherwise).
	BatchSize int
}

// Client talks to one intake API. Safe for concurrent use.
type Client struct {
	base *url.URL
	key  string
	opts Options
}

// New returns a client for the intake API at baseURL, authenticating with
// apiKey (sent as a Bearer token; never logged or put in errors).
func New(baseURL, apiKey string, opts ...Options) (*Client, error) {
	u, err := url.Parse(strings.TrimRight(strings.TrimSpace(baseURL), "/"))
	switch {
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		return nil, fmt.Errorf("ghlcancel client: base URL %q: want http(s)://host[:port]", baseURL)
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return nil, fmt.Errorf("ghlcancel client: base URL %q: no query or fragment; want http(s)://host[:port]", baseURL)
	case u.User != nil:
		// It would show in every error; the API key is the credential.
		return nil, errors.New("ghlcancel client: the base URL holds a user or password: leave it out (the API key authenticates)")
	}
	// A key read from a file or a secret often ends in a line break.
	apiKey = strings.TrimSpace(apiKey)
	if apiKey == "" {
		return nil, errors.New("ghlcancel client: empty API key")
	}
	for i := range len(apiKey) {
		if c := apiKey[i]; c <= ' ' || c >= 0x7f {
			return nil, fmt.Errorf("ghlcancel client: the API key has a space or control character at byte %d; no header can carry it", i)
		}
	}
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{Timeout: 60 * time.Second}
	}
	// Redirects are answered, not followed (on a copy: the caller's client
	// is left as it is).
	hc := *o.HTTPClient
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	o.HTTPClient = &hc
	o.MaxAttempts = cmp.Or(o.MaxAttempts, 6)
	o.RetryBase = cmp.Or(o.RetryBase, 200*time.Millisecond)
	if o.BatchSize < 0 {
		return nil, fmt.Errorf("ghlcancel client: BatchSize %d: want 1 or more (0: the default, %d)", o.BatchSize, BatchSize)
	}
	o.BatchSize = cmp.Or(o.BatchSize, BatchSize)
	return &Client{base: u, key: apiKey, opts: o}, nil
}

// APIError is an error answer from the API. Code is stable (the Code*
// constants); Items lists invalid items with their positions. Method and
// URL name the request that got it.
type APIError struct {
	StatusCode  int
	Method, URL string
	APIErrorDetail
}

func (e *APIError) Error() string {
	msg := fmt.Sprintf("ghlcancel: %s %s: %d %s: %s", e.Method, e.URL, e.StatusCode, e.Code, e.Message)
	for i, it := range e.Items {
		if i == 3 {
			msg += fmt.Sprintf(" (and %d more)", max(e.InvalidItems, len(e.Items))-3)
			break
		}
		msg += "; " + it.Error()
	}
	return msg
}

// Cancel enqueues one cancel.
func (c *Client) Cancel(ctx context.Context, it Cancel) (ItemResult, error) {
	var res Response
	resent, err := c.doWith(ctx, http.MethodPost, "/v1/cancellations", nil, nil, it, &res)
	if err != nil {
		return ItemResult{}, err
	}
	if len(res.Results) != 1 {
		return ItemResult{}, c.notIntake(http.MethodPost, "/v1/cancellations", fmt.Sprintf("%d results for 1 item", len(res.Results)))
	}
	r := res.Results[0]
	r.Resent = resent
	return r, nil
}

// CancelMany enqueues items in requests of Options.BatchSize, in order. Results are
// indexed by position in items. Unless partial, an invalid item
// stops it with an *APIError whose Items carry positions in items; batches
// before it are enqueued (their results are returned, and sending them
// again is harmless), and the error says so.
func (c *Client) CancelMany(ctx context.Context, items []Cancel, lane string, partial bool) (Response, error) {
	var all Response
	all.Results = make([]ItemResult, 0, len(items))
	for start := 0; start < len(items); start += c.opts.BatchSize {
		end := min(start+c.opts.BatchSize, len(items))
		var res Response
		resent, err := c.doWith(ctx, http.MethodPost, "/v1/cancellations", nil, nil,
			Request{Items: items[start:end], Lane: lane, Partial: partial}, &res)
		if err == nil && len(res.Results) != end-start {
			// A 2xx from something that is not the intake (a wrong base
			// URL): it enqueued nothing, and must not read as success.
			err = c.notIntake(http.MethodPost, "/v1/cancellations", fmt.Sprintf("%d results for %d items", len(res.Results), end-start))
		}
		if err != nil {
			var ae *APIError
			if errors.As(err, &ae) {
				for i := range ae.Items {
					ae.Items[i].Index += start
				}
			}
			maybe := errors.Is(err, ErrMaybeProcessed)
			if start > 0 || maybe {
				// The answer speaks of its own request ("nothing was
				// enqueued"); the batches before it were. Refused items were
				// not enqueued; a batch whose answer was lost or came back
				// "unavailable" may have been, in part.
				fate := "were not enqueued"
				switch {
				case maybe:
					fate = "may have been enqueued, all or in part (send them again: any already queued answers already_queued)"
				case ae == nil || ae.Code != CodeInvalidItems:
					fate = "may not have been enqueued (send them again: any already queued answers already_queued)"
				}
				sent := ""
				if start > 0 {
					sent = fmt.Sprintf("items 0-%d were sent (their results are returned); ", start-1)
				}
				err = fmt.Errorf("ghlcancel: %sitems %d-%d and any after them %s: %w", sent, start, len(items)-1, fate, err)
			}
			return all, err
		}
		all.Resent = all.Resent || resent
		all.Enqueued += res.Enqueued
		all.AlreadyQueued += res.AlreadyQueued
		all.Moved += res.Moved
		all.AlreadyDone += res.AlreadyDone
		all.Requeued += res.Requeued
		all.Rejected += res.Rejected
		for _, r := range res.Results {
			r.Index += start
			r.Resent = resent
			if r.Error != nil {
				r.Error.Index += start
			}
			all.Results = append(all.Results, r)
		}
	}
	return all, nil
}

// Sweep starts a sweep; follow it with Campaign(resp.CampaignID), which
// reads complete once every location is swept and every cancel it found
// has an outcome.
//
// A sweep is not idempotent, so every call sends an Idempotency-Key of its
// own: a retry after a lost answer gets the first sweep's answer instead of
// starting a second one.
//
// To retry a Sweep whose call failed after it may have reached the intake
// (an error matching ErrMaybeProcessed), call it again with the same
// SweepRequest.IdempotencyKey: set one before the first call.
func (c *Client) Sweep(ctx context.Context, r SweepRequest) (SweepResponse, error) {
	var res SweepResponse
	key := cmp.Or(r.IdempotencyKey, crand.Text())
	_, err := c.doWith(ctx, http.MethodPost, "/v1/sweeps", nil, http.Header{HeaderIdempotencyKey: {key}}, r, &res)
	if err == nil && (res.SweepID == "" || res.CampaignID == "") {
		err = c.notIntake(http.MethodPost, "/v1/sweeps", "no sweep_id or campaign_id")
	}
	return res, err
}

// HeaderIdempotencyKey names a POST /v1/sweeps request, so that sending it
// again answers the first sweep instead of starting another (24 h).
const HeaderIdempotencyKey = "Idempotency-Key"

// Campaign reads a campaign's progress. An unknown campaign is an
// *APIError with Code CodeCampaignNotFound.
func (c *Client) Campaign(ctx context.Context, id string) (CampaignStatus, error) {
	var s CampaignStatus
	if id == "" || id == "." || id == ".." {
		// No campaign has such an id (the intake refuses them), and no URL
		// path can carry "." or "..".
		return s, fmt.Errorf("ghlcancel: campaign id %q: no campaign can have it", id)
	}
	err := c.do(ctx, http.MethodGet, "/v1/campaigns/"+url.PathEscape(id), nil, nil, &s)
	if err == nil && s.Campaign != id {
		err = c.notIntake(http.MethodGet, "/v1/campaigns/"+url.PathEscape(id), fmt.Sprintf("it names campaign %q", s.Campaign))
	}
	return s, err
}

// DeadLetters reads one page of dead letters (oldest first); pass the
// returned NextCursor to read the next. limit 0 means the server's default.
// A CampaignID naming no campaign and no dead letter (a typo) is an
// *APIError with Code CodeCampaignNotFound, not an empty page.
func (c *Client) DeadLetters(ctx context.Context, f DeadLetterFilter, cursor string, limit int) (DeadLetterPage, error) {
	q := url.Values{}
	for k, v := range map[string]string{"reason": f.Reason, "campaign_id": f.CampaignID,
		"location_id": f.LocationID, "kind": f.Kind, "cursor": cursor} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var p DeadLetterPage
	err := c.do(ctx, http.MethodGet, "/v1/dead-letters", q, nil, &p)
	if err == nil && p.DeadLetters == nil {
		err = c.notIntake(http.MethodGet, "/v1/dead-letters", "no dead_letters list")
	}
	return p, err
}

// ErrNotIntake: a 2xx answer that is not the intake's (a wrong base URL
// pointing at another service that answers JSON): nothing it says can be
// trusted, and nothing was done.
var ErrNotIntake = errors.New("the answer is not the intake's")

func (c *Client) notIntake(method, path, why string) error {
	return fmt.Errorf("ghlcancel: %s %s: %w (%s): check the base URL", method, c.base.String()+path, ErrNotIntake, why)
}

// ErrMaybeProcessed: the request failed after an attempt that may have
// reached the intake (an answer lost, a timeout, 502/503/504, the context
// ended mid-request). Enqueueing is idempotent, so sending the same items
// again is safe and answers already_queued for those it did enqueue; a
// Sweep is retried safely with the same SweepRequest.IdempotencyKey.
var ErrMaybeProcessed = errors.New("the intake may have processed it")

// retryable: the request may not have been processed, and sending it again
// is safe because enqueueing is idempotent.
func retryable(status int) bool {
	return status == http.StatusBadGateway || status == http.StatusServiceUnavailable || status == http.StatusGatewayTimeout
}

// permanent: a transport error that sending again cannot change (the
// address speaks another protocol, or its certificate is refused).
func permanent(err error) bool {
	var rh tls.RecordHeaderError
	var cv *tls.CertificateVerificationError
	var ua x509.UnknownAuthorityError
	var hn x509.HostnameError
	var ci x509.CertificateInvalidError
	return errors.As(err, &rh) || errors.As(err, &cv) || errors.As(err, &ua) || errors.As(err, &hn) || errors.As(err, &ci) ||
		strings.Contains(err.Error(), "server gave HTTP response to HTTPS client")
}

// unsent: a transport error that says the request never reached the
// server (its connection could not be made).
func unsent(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

func (c *Client) do(ctx context.Context, method, path string, q url.Values, in, out any) error {
	_, err := c.doWith(ctx, method, path, q, nil, in, out)
	return err
}

// doWith is do with extra request headers (the same on every attempt).
// path is escaped already. resent: the request was sent again after an
// attempt that may have reached the server.
func (c *Client) doWith(ctx context.Context, method, path string, q url.Values, hdr http.Header, in, out any) (resent bool, _ error) {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return false, fmt.Errorf("ghlcancel: encode request: %w", err)
		}
	}
	target := c.base.String() + path
	if len(q) > 0 {
		target += "?" + q.Encode()
	}
	var last error
	landed := false // an earlier attempt may have reached the server
	for attempt := range c.opts.MaxAttempts {
		if attempt > 0 {
			d := c.opts.RetryBase << (attempt - 1)
			d = d/2 + rand.N(d) // jitter around the mean
			select {
			case <-ctx.Done():
				return false, maybeProcessed(landed, errors.Join(ctx.Err(), last))
			case <-time.After(d):
			}
			resent = resent || landed
		}
		req, err := http.NewRequestWithContext(ctx, method, target, bytes.NewReader(body))
		if err != nil {
			return false, fmt.Errorf("ghlcancel: %w", err)
		}
		for k, v := range hdr {
			req.Header[k] = v
		}
		req.Header.Set("Authorization", "Bearer "+c.key)
		req.Header.Set("Accept", "application/json")
		if in != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		res, err := c.opts.HTTPClient.Do(req)
		if err != nil {
			if ctx.Err() != nil {
				return false, maybeProcessed(landed || !unsent(err), fmt.Errorf("ghlcancel: %s %s: %w", method, target, ctx.Err()))
			}
			last = fmt.Errorf("ghlcancel: %s %s: %w", method, path, err) // err names the URL
			if permanent(err) {
				return false, fmt.Errorf("%w (check the base URL's scheme and the intake's certificate)", last)
			}
			landed = landed || !unsent(err)
			continue
		}
		b, err := io.ReadAll(io.LimitReader(res.Body, 64<<20))
		res.Body.Close()
		if err != nil {
			last = fmt.Errorf("ghlcancel: %s %s: reading answer: %w", method, target, err)
			landed = true
			continue
		}
		if res.StatusCode >= 300 {
			ae := &APIError{StatusCode: res.StatusCode, Method: method, URL: target}
			var eb ErrorBody
			switch {
			case json.Unmarshal(b, &eb) == nil && eb.Error.Code != "":
				ae.APIErrorDetail = eb.Error
			case res.StatusCode < 400 && res.Header.Get("Location") != "":
				ae.Code = "http_" + strconv.Itoa(res.StatusCode)
				ae.Message = "redirected to " + res.Header.Get("Location") +
					": not followed (a redirected request loses its body); use that address's scheme, host and prefix as the base URL"
			default:
				ae.Code, ae.Message = "http_"+strconv.Itoa(res.StatusCode), strings.TrimSpace(string(b[:min(len(b), 200)]))
			}
			if retryable(res.StatusCode) {
				last = ae
				landed = true
				continue
			}
			return false, ae
		}
		if err := json.Unmarshal(b, out); err != nil {
			// A 2xx came back: the intake (if it is the intake) did it.
			return false, maybeProcessed(true, fmt.Errorf("ghlcancel: %s %s: decoding answer: %w (check the base URL)", method, target, err))
		}
		return resent, nil
	}
	return false, maybeProcessed(landed, fmt.Errorf("ghlcancel: gave up after %d attempts: %w", c.opts.MaxAttempts, last))
}

// maybeProcessed marks err with ErrMaybeProcessed when an attempt may have
// reached the intake.
func maybeProcessed(landed bool, err error) error {
	if !landed {
		return err
	}
	return fmt.Errorf("%w (%w: sending it again is safe)", err, ErrMaybeProcessed)
}
