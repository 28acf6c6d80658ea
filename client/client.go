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
// with backoff; see Options.MaxAttempts.
package client

import (
	"bytes"
	"cmp"
	"context"
	crand "crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// BatchSize is how many items CancelMany sends per request.
const BatchSize = 1000

// Options tune a Client. Zero values take the defaults.
type Options struct {
	// HTTPClient defaults to a client with a 60 s timeout.
	HTTPClient *http.Client
	// MaxAttempts per request, first try included. Defaults to 4.
	MaxAttempts int
	// RetryBase is the first retry's mean delay; it doubles per attempt.
	// Defaults to 200 ms.
	RetryBase time.Duration
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
	u, err := url.Parse(strings.TrimRight(baseURL, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("ghlcancel client: base URL %q: want http(s)://host[:port]", baseURL)
	}
	if apiKey == "" {
		return nil, errors.New("ghlcancel client: empty API key")
	}
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{Timeout: 60 * time.Second}
	}
	o.MaxAttempts = cmp.Or(o.MaxAttempts, 4)
	o.RetryBase = cmp.Or(o.RetryBase, 200*time.Millisecond)
	return &Client{base: u, key: apiKey, opts: o}, nil
}

// APIError is an error answer from the API. Code is stable (the Code*
// constants); Items lists invalid items with their positions.
type APIError struct {
	StatusCode int
	APIErrorDetail
}

func (e *APIError) Error() string {
	msg := fmt.Sprintf("ghlcancel: %d %s: %s", e.StatusCode, e.Code, e.Message)
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
	if err := c.do(ctx, http.MethodPost, "/v1/cancellations", nil, it, &res); err != nil {
		return ItemResult{}, err
	}
	if len(res.Results) != 1 {
		return ItemResult{}, fmt.Errorf("ghlcancel: expected 1 result, got %d", len(res.Results))
	}
	return res.Results[0], nil
}

// CancelMany enqueues items in requests of BatchSize, in order. Results are
// indexed by position in items. Unless partial, an invalid item
// stops it with an *APIError whose Items carry positions in items; batches
// before it are enqueued (sending them again is harmless).
func (c *Client) CancelMany(ctx context.Context, items []Cancel, lane string, partial bool) (Response, error) {
	var all Response
	all.Results = make([]ItemResult, 0, len(items))
	for start := 0; start < len(items); start += BatchSize {
		end := min(start+BatchSize, len(items))
		var res Response
		err := c.do(ctx, http.MethodPost, "/v1/cancellations", nil,
			Request{Items: items[start:end], Lane: lane, Partial: partial}, &res)
		if err != nil {
			var ae *APIError
			if errors.As(err, &ae) {
				for i := range ae.Items {
					ae.Items[i].Index += start
				}
			}
			return all, err
		}
		all.Enqueued += res.Enqueued
		all.AlreadyQueued += res.AlreadyQueued
		all.AlreadyDone += res.AlreadyDone
		all.Requeued += res.Requeued
		all.Rejected += res.Rejected
		for _, r := range res.Results {
			r.Index += start
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
func (c *Client) Sweep(ctx context.Context, r SweepRequest) (SweepResponse, error) {
	var res SweepResponse
	err := c.doWith(ctx, http.MethodPost, "/v1/sweeps", nil, http.Header{HeaderIdempotencyKey: {crand.Text()}}, r, &res)
	return res, err
}

// HeaderIdempotencyKey names a POST /v1/sweeps request, so that sending it
// again answers the first sweep instead of starting another (24 h).
const HeaderIdempotencyKey = "Idempotency-Key"

// Campaign reads a campaign's progress. An unknown campaign is an
// *APIError with Code CodeCampaignNotFound.
func (c *Client) Campaign(ctx context.Context, id string) (CampaignStatus, error) {
	var s CampaignStatus
	err := c.do(ctx, http.MethodGet, "/v1/campaigns/"+url.PathEscape(id), nil, nil, &s)
	return s, err
}

// DeadLetters reads one page of dead letters (oldest first); pass the
// returned NextCursor to read the next. limit 0 means the server's default.
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
	return p, err
}

// retryable: the request may not have been processed, and sending it again
// is safe because enqueueing is idempotent.
func retryable(status int) bool {
	return status == http.StatusBadGateway || status == http.StatusServiceUnavailable || status == http.StatusGatewayTimeout
}

func (c *Client) do(ctx context.Context, method, path string, q url.Values, in, out any) error {
	return c.doWith(ctx, method, path, q, nil, in, out)
}

// doWith is do with extra request headers (the same on every attempt).
func (c *Client) doWith(ctx context.Context, method, path string, q url.Values, hdr http.Header, in, out any) error {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return fmt.Errorf("ghlcancel: encode request: %w", err)
		}
	}
	u := *c.base
	u.Path += path
	u.RawQuery = q.Encode()
	var last error
	for attempt := range c.opts.MaxAttempts {
		if attempt > 0 {
			d := c.opts.RetryBase << (attempt - 1)
			d = d/2 + rand.N(d) // jitter around the mean
			select {
			case <-ctx.Done():
				return errors.Join(ctx.Err(), last)
			case <-time.After(d):
			}
		}
		req, err := http.NewRequestWithContext(ctx, method, u.String(), bytes.NewReader(body))
		if err != nil {
			return fmt.Errorf("ghlcancel: %w", err)
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
				return fmt.Errorf("ghlcancel: %s %s: %w", method, path, ctx.Err())
			}
			last = fmt.Errorf("ghlcancel: %s %s: %w", method, path, err)
			continue
		}
		b, err := io.ReadAll(io.LimitReader(res.Body, 64<<20))
		res.Body.Close()
		if err != nil {
			last = fmt.Errorf("ghlcancel: %s %s: reading answer: %w", method, path, err)
			continue
		}
		if res.StatusCode >= 300 {
			ae := &APIError{StatusCode: res.StatusCode}
			var eb ErrorBody
			if json.Unmarshal(b, &eb) == nil && eb.Error.Code != "" {
				ae.APIErrorDetail = eb.Error
			} else {
				ae.Code, ae.Message = "http_"+strconv.Itoa(res.StatusCode), strings.TrimSpace(string(b[:min(len(b), 200)]))
			}
			if retryable(res.StatusCode) {
				last = ae
				continue
			}
			return ae
		}
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("ghlcancel: %s %s: decoding answer: %w", method, path, err)
		}
		return nil
	}
	return fmt.Errorf("ghlcancel: gave up after %d attempts: %w", c.opts.MaxAttempts, last)
}
