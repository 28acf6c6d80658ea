// Package intake is the HTTP API other services enqueue cancels through:
//
//	POST /v1/cancellations     one cancel or many: 202 with a result per item
//	GET  /v1/campaigns/{id}    a campaign's progress
//	GET  /v1/dead-letters      dead letters, filtered and paged
//	POST /v1/sweeps            find what is still scheduled and cancel it
//	POST /v1/webhooks/highlevel  HighLevel's signed events (no API key)
//	GET  /v1/openapi.yaml      this API's OpenAPI document (no key needed)
//	GET  /console/             the operators' console (sign-in with a key, then a session)
//	GET  /healthz, /readyz     liveness; readiness (Redis reachable)
//	GET  /metrics              Prometheus metrics
//
// Every /v1 route but the document and the webhook needs an API key (Authorization: Bearer
// KEY or X-API-Key: KEY), compared in constant time. Errors are JSON with a
// stable code (client.Code*). The wire types live in the public client
// package, so the server and the Go client cannot drift apart.
package intake

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"

	"github.com/ghlcancel/ghlcancel/client"
	"github.com/ghlcancel/ghlcancel/internal/campaign"
	"github.com/ghlcancel/ghlcancel/internal/console"
	"github.com/ghlcancel/ghlcancel/internal/deadletter"
	"github.com/ghlcancel/ghlcancel/internal/fleet"
	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/producer"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
	"github.com/ghlcancel/ghlcancel/internal/webhook"
	"github.com/ghlcancel/ghlcancel/internal/webhook/signature"
)

// OpenAPI is this API's OpenAPI 3 document.
//
//go:embed openapi.yaml
var OpenAPI []byte

// Defaults for Config.
const (
	MaxBodyDefault  = 8 << 20 // 10,000 items of ~150 bytes fit with room
	MaxItemsDefault = 10_000
	// MinKeyLength: shorter API keys are refused at start, they can be guessed.
	MinKeyLength = 16
	// maxItemErrors bounds the positions listed in one 400; the count stays exact.
	maxItemErrors   = 1000
	deadPageDefault = 100
	deadPageMax     = 1000
)

// Config configures a Server.
type Config struct {
	// Redis holds the queue. The caller closes it. Required.
	Redis redis.UniversalClient
	// Keys are the accepted API keys. At least one is required.
	Keys []string
	// MaxBodyBytes bounds a request body. Defaults to MaxBodyDefault.
	MaxBodyBytes int64
	// MaxItems bounds the items of one request. Defaults to MaxItemsDefault.
	MaxItems int
	// Producer configures enqueueing (retries, campaign retention).
	Producer producer.Config
	// Logger defaults to a discarding logger.
	Logger *slog.Logger
	// Registry receives the intake metrics. Defaults to a new registry.
	Registry *prometheus.Registry
	// Fleet: this intake's settings that must agree with the other
	// intakes' (Watch compares them); nil compares none.
	Fleet fleet.Settings
	// Webhook, when set, serves POST /v1/webhooks/highlevel (no API key:
	// the signature authenticates). Its Producer, Registry and Logger are
	// the server's.
	Webhook *webhook.Config
	// Console: the operators' console at /console (internal/console), unless
	// NoConsole. Keys sign in as operators, with ConsoleKeys; ConsoleReadOnlyKeys
	// sign in to look.
	NoConsole                        bool
	ConsoleKeys, ConsoleReadOnlyKeys []string
}

// Server is the intake API's http.Handler.
type Server struct {
	cfg       Config
	keys      [][32]byte
	prod      *producer.Producer
	campaigns *campaign.Tracker
	dead      *deadletter.Store
	mux       *http.ServeMux
	log       *slog.Logger

	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	items    *prometheus.CounterVec

	// wrongHookLogged: when a webhook to a wrong path was last logged (unix ns).
	wrongHookLogged atomic.Int64
	// hookVerifier checks the signature of a delivery to a wrong path
	// (nil: webhooks are not served).
	hookVerifier *signature.Verifier
	watch        *watch // see Watch
}

// ParseKeys splits a key list (commas or newlines; blank lines and lines
// starting with # ignored) and checks each key's length.
func ParseKeys(s string) ([]string, error) {
	var keys []string
	for _, line := range strings.Split(s, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		for _, k := range strings.Split(line, ",") {
			k = strings.TrimSpace(k)
			if k == "" {
				continue
			}
			if len(k) < MinKeyLength {
				return nil, fmt.Errorf("API key %d is %d characters; use at least %d random characters (openssl rand -hex 24)", len(keys)+1, len(k), MinKeyLength)
			}
			keys = append(keys, k)
		}
	}
	return keys, nil
}

// New builds a Server.
func New(cfg Config) (*Server, error) {
	if cfg.Redis == nil {
		return nil, errors.New("intake: Config.Redis is required")
	}
	if len(cfg.Keys) == 0 {
		return nil, errors.New("intake: no API keys configured (set INTAKE_API_KEYS or INTAKE_API_KEYS_FILE)")
	}
	cfg.MaxBodyBytes = cmp.Or(cfg.MaxBodyBytes, MaxBodyDefault)
	cfg.MaxItems = cmp.Or(cfg.MaxItems, MaxItemsDefault)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	s := &Server{
		cfg:       cfg,
		prod:      producer.New(cfg.Redis, cfg.Producer),
		campaigns: campaign.New(cfg.Redis, cfg.Producer.CampaignRetention),
		dead:      deadletter.New(cfg.Redis),
		mux:       http.NewServeMux(),
		log:       cfg.Logger,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ghlcancel_intake_requests_total",
			Help: "Intake API requests by route and HTTP status code.",
		}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ghlcancel_intake_request_duration_seconds",
			Help:    "Intake API request duration by route.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"route"}),
		items: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ghlcancel_intake_items_total",
			Help: "Cancel items received by the intake API, by result (enqueued, already_queued, already_done, requeued, rejected).",
		}, []string{"result"}),
	}
	for _, k := range cfg.Keys {
		s.keys = append(s.keys, sha256.Sum256([]byte(k)))
	}
	cfg.Registry.MustRegister(s.requests, s.duration, s.items)
	s.watch = s.newWatch()
	for _, r := range []string{"cancellations", "campaign", "dead_letters", "sweeps", "webhooks", "console"} {
		s.duration.WithLabelValues(r)
	}
	for _, r := range []string{client.StatusEnqueued, client.StatusAlreadyQueued, client.StatusAlreadyDone, client.StatusRequeued, client.StatusRejected} {
		s.items.WithLabelValues(r)
	}

	s.mux.Handle("/v1/cancellations", s.route("cancellations", http.MethodPost, true, s.postCancellations))
	s.mux.Handle("/v1/campaigns/{id}", s.route("campaign", http.MethodGet, true, s.getCampaign))
	s.mux.Handle("/v1/sweeps", s.route("sweeps", http.MethodPost, true, s.postSweeps))
	if cfg.Webhook != nil {
		wc := *cfg.Webhook
		wc.Producer, wc.Redis, wc.Registry, wc.Logger = s.prod, cfg.Redis, cfg.Registry, cfg.Logger
		wh, err := webhook.NewHandler(wc)
		if err != nil {
			return nil, err
		}
		s.hookVerifier = wc.Verifier
		hook := s.route("webhooks", http.MethodPost, false, wh.ServeHTTP)
		s.mux.Handle("/v1/webhooks/highlevel", hook)
		// A trailing slash is the same URL to whoever typed it into the
		// app's settings, and HighLevel does not retry a 404.
		s.mux.Handle("/v1/webhooks/highlevel/{$}", hook)
	}
	if !cfg.NoConsole {
		con, err := console.New(console.Config{Redis: cfg.Redis, Keys: append(slices.Clone(cfg.Keys), cfg.ConsoleKeys...),
			ReadOnlyKeys: cfg.ConsoleReadOnlyKeys, Producer: cfg.Producer, Logger: cfg.Logger})
		if err != nil {
			return nil, err
		}
		s.mux.Handle("/console", s.route("console", "", false, con.ServeHTTP))
		s.mux.Handle("/console/", s.route("console", "", false, con.ServeHTTP))
	}
	s.mux.Handle("/v1/dead-letters", s.route("dead_letters", http.MethodGet, true, s.getDeadLetters))
	s.mux.Handle("/v1/openapi.yaml", s.route("openapi", http.MethodGet, false, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/yaml")
		_, _ = w.Write(OpenAPI)
	}))
	s.mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	s.mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := cfg.Redis.Ping(ctx).Err(); err != nil {
			http.Error(w, "redis unreachable", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	s.mux.Handle("/metrics", promhttp.HandlerFor(cfg.Registry, promhttp.HandlerOpts{}))
	other := s.route("other", "", false, func(w http.ResponseWriter, r *http.Request) {
		msg := "no such route: " + r.Method + " " + r.URL.EscapedPath()
		if strings.HasPrefix(r.URL.Path, "/v1/v1/") {
			msg += " (/v1 twice: a client's base URL is the intake's address, without /v1)"
		}
		writeError(w, http.StatusNotFound, client.CodeNotFound, msg+"; the routes are in /v1/openapi.yaml", nil, 0)
	})
	wrongHook := s.route(RouteWebhookWrongPath, "", false, s.wrongWebhookPath)
	s.mux.Handle("/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// HighLevel's deliveries are POSTs whose signature verifies; a
		// scanner probing /webhook, or anyone adding a header, must not
		// page anyone.
		if s.hookVerifier != nil && r.Method == http.MethodPost &&
			(r.Header.Get(signature.HeaderSignature) != "" || r.Header.Get(signature.HeaderLegacySignature) != "") {
			body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, webhook.MaxBodyDefault))
			if _, verr := s.hookVerifier.Verify(body, r.Header); err == nil && verr == nil {
				wrongHook.ServeHTTP(w, r)
				return
			}
		}
		other.ServeHTTP(w, r)
	}))
	return s, nil
}

// RouteWebhookWrongPath is the intake_requests_total route of webhook
// deliveries whose signature verifies, sent to a path other than
// /v1/webhooks/highlevel (a typo
// in the app's webhook URL): HighLevel does not retry a 404, so each one
// is an event lost, and the GhlcancelWebhookWrongPath alert fires on them.
const RouteWebhookWrongPath = "webhook_wrong_path"

// wrongWebhookPath answers a webhook sent to a path no route serves, and
// says so in the log (at most once a minute): the events are lost until
// the app's webhook URL is fixed.
func (s *Server) wrongWebhookPath(w http.ResponseWriter, r *http.Request) {
	const want = "/v1/webhooks/highlevel"
	now := time.Now().UnixNano()
	if last := s.wrongHookLogged.Load(); now-last >= int64(time.Minute) && s.wrongHookLogged.CompareAndSwap(last, now) {
		s.log.Error("a webhook came to a path no route serves, and HighLevel does not retry it: the event is lost; set the app's webhook URL to https://THIS-HOST"+want,
			"method", r.Method, "path", r.URL.EscapedPath())
	}
	writeError(w, http.StatusNotFound, client.CodeNotFound,
		"no such route: "+r.Method+" "+r.URL.EscapedPath()+"; HighLevel webhooks go to POST "+want, nil, 0)
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// statusWriter remembers the status for the metrics.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// route wraps a handler with method check, authentication and metrics.
func (s *Server) route(name, method string, auth bool, h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			code := strconv.Itoa(cmp.Or(sw.code, http.StatusOK))
			p := recover()
			if p == http.ErrAbortHandler { //nolint:errorlint // a sentinel panic value, compared as net/http does
				code = "aborted" // a response cut off on purpose (a report whose Redis failed mid-way)
			}
			s.requests.WithLabelValues(name, code).Inc()
			s.duration.WithLabelValues(name).Observe(time.Since(start).Seconds())
			if p != nil {
				panic(p)
			}
		}()
		switch {
		case method != "" && r.Method != method:
			sw.Header().Set("Allow", method)
			writeError(sw, http.StatusMethodNotAllowed, client.CodeMethodNotAllowed, "use "+method, nil, 0)
		case auth && !s.authorized(r):
			sw.Header().Set("WWW-Authenticate", `Bearer realm="ghlcancel"`)
			writeError(sw, http.StatusUnauthorized, client.CodeUnauthorized,
				"missing or wrong API key: send Authorization: Bearer KEY or X-API-Key: KEY", nil, 0)
		default:
			h(sw, r)
		}
	})
}

// authorized compares the presented key's hash with every configured key's
// in constant time, without stopping at a match, so timing reveals neither
// the key nor which key matched.
func (s *Server) authorized(r *http.Request) bool {
	key := r.Header.Get("X-API-Key")
	// The scheme's name is case-insensitive (RFC 9110 11.1).
	if scheme, v, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok && strings.EqualFold(scheme, "Bearer") {
		key = strings.TrimSpace(v)
	}
	if key == "" {
		return false
	}
	sum := sha256.Sum256([]byte(key))
	ok := 0
	for i := range s.keys {
		ok |= subtle.ConstantTimeCompare(sum[:], s.keys[i][:])
	}
	return ok == 1
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, msg string, items []client.ItemError, invalid int) {
	writeJSON(w, status, client.ErrorBody{Error: client.APIErrorDetail{Code: code, Message: msg, Items: items, InvalidItems: invalid}})
}

// itemFields are the keys of a Cancel object; the single-item body form is
// recognised by them.
var itemFields = map[string]bool{"message_id": true, "location_id": true, "kind": true, "campaign_id": true, "send_at": true, "urgent": true, "force": true}

// readBody reads a JSON request body within MaxBodyBytes; on false the
// error answer is written.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			writeError(w, http.StatusUnsupportedMediaType, client.CodeUnsupportedMedia, "send Content-Type: application/json", nil, 0)
			return nil, false
		}
	}
	if r.ContentLength > s.cfg.MaxBodyBytes {
		writeError(w, http.StatusRequestEntityTooLarge, client.CodePayloadTooLarge,
			fmt.Sprintf("body of %d bytes is over the limit of %d; split the request", r.ContentLength, s.cfg.MaxBodyBytes), nil, 0)
		return nil, false
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, client.CodePayloadTooLarge,
				fmt.Sprintf("body is over the limit of %d bytes; split the request", s.cfg.MaxBodyBytes), nil, 0)
			return nil, false
		}
		writeError(w, http.StatusBadRequest, client.CodeMalformedJSON, "reading body: "+err.Error(), nil, 0)
		return nil, false
	}
	return body, true
}

func (s *Server) postCancellations(w http.ResponseWriter, r *http.Request) {
	body, ok := s.readBody(w, r)
	if !ok {
		return
	}
	raw, opts, apiErr := s.parseRequest(body)
	lane, partial := opts.lane, opts.partial
	if apiErr != nil {
		writeError(w, http.StatusBadRequest, apiErr.Code, apiErr.Message, nil, 0)
		return
	}
	if len(raw) > s.cfg.MaxItems {
		writeError(w, http.StatusRequestEntityTooLarge, client.CodeTooManyItems,
			fmt.Sprintf("%d items is over the limit of %d per request; split the request", len(raw), s.cfg.MaxItems), nil, 0)
		return
	}

	items := make([]producer.Item, 0, len(raw))
	pos := make([]int, 0, len(raw)) // request index of items[j]
	res := client.Response{Results: make([]client.ItemResult, len(raw))}
	var bad []client.ItemError
	invalid := 0
	// A message has one kind: one id sent as both is refused at the
	// second (see producer.ErrConflictingKind).
	kinds := make(producer.KindCheck, len(raw))
	for i, b := range raw {
		it, ie := decodeItem(i, b, lane)
		if ie == nil {
			if first, kind, ok := kinds.Conflict(i, it); ok {
				ie = &client.ItemError{Index: i, Field: "kind", Code: client.CodeItemConflictingKind,
					Message: fmt.Sprintf("message %s is item %d as %s too: a message has one kind; send it once, as the kind HighLevel has",
						it.MessageID, first, kind)}
			} else if first, loc, ok := kinds.LocationConflict(i, it); ok {
				ie = &client.ItemError{Index: i, Field: "location_id", Code: client.CodeItemConflictingLocation,
					Message: fmt.Sprintf("message %s is item %d at location %s too: a message is in one location; send it once, with the location it is in",
						it.MessageID, first, loc)}
			}
		}
		res.Results[i] = client.ItemResult{Index: i, MessageID: it.MessageID}
		if ie != nil {
			invalid++
			if len(bad) < maxItemErrors {
				bad = append(bad, *ie)
			}
			res.Results[i].Status, res.Results[i].Error = client.StatusRejected, ie
			continue
		}
		it.Force = it.Force || opts.force
		items = append(items, it)
		pos = append(pos, i)
	}
	// Into a dry run's campaign: refused here, with the rest of the
	// request when it is all or nothing (the enqueue rule would refuse
	// those items alone, after enqueueing the others).
	var camps []string
	for _, it := range items {
		if it.CampaignID != "" && !slices.Contains(camps, it.CampaignID) {
			camps = append(camps, it.CampaignID)
		}
	}
	dry, err := s.prod.DryRunCampaigns(r.Context(), camps)
	if err != nil {
		s.unavailable(w, "enqueue", err)
		return
	}
	if len(dry) > 0 {
		kept, keptPos := items[:0], pos[:0]
		for j, it := range items {
			if !dry[it.CampaignID] {
				kept, keptPos = append(kept, it), append(keptPos, pos[j])
				continue
			}
			ie := &client.ItemError{Index: pos[j], Field: "campaign_id", Code: client.CodeItemInvalidCampaign,
				Message: fmt.Sprintf("campaign %s: %v", it.CampaignID, producer.ErrIntoDryRun)}
			invalid++
			if len(bad) < maxItemErrors {
				bad = append(bad, *ie)
			}
			res.Results[pos[j]].Status, res.Results[pos[j]].Error = client.StatusRejected, ie
		}
		items, pos = kept, keptPos
		slices.SortFunc(bad, func(a, b client.ItemError) int { return a.Index - b.Index })
	}
	if invalid > 0 && !partial {
		s.items.WithLabelValues(client.StatusRejected).Add(float64(len(raw)))
		writeError(w, http.StatusBadRequest, client.CodeInvalidItems,
			fmt.Sprintf("%d of %d items are invalid; nothing was enqueued (fix them, or send \"partial\": true to enqueue the valid ones)", invalid, len(raw)),
			bad, invalid)
		return
	}
	out := s.prod.EnqueueBatch(r.Context(), items)
	unavailable := 0
	for j, o := range out {
		ir := &res.Results[pos[j]]
		ir.TaskID = tasks.TaskID(items[j].Kind, items[j].MessageID)
		switch o.Status {
		case producer.Enqueued, producer.AlreadyQueued, producer.AlreadyDone, producer.Requeued:
			ir.Status = o.Status.String()
			if o.Elsewhere {
				ir.HeldBy = o.HeldBy
			}
			ir.Moved, ir.StaysOn = o.Moved, o.StaysOn
		default:
			if errors.Is(o.Err, producer.ErrUnavailable) {
				unavailable++
			}
			ir.Status = client.StatusRejected
			ir.Error = &client.ItemError{Index: pos[j], Code: client.CodeInvalidRequest, Message: o.Err.Error()}
		}
	}
	if unavailable > 0 {
		s.log.Error("enqueue failed: Redis unavailable", "items", unavailable)
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, client.CodeQueueUnavailable,
			fmt.Sprintf("the queue is unavailable; %d items were not enqueued. Send the same request again: items already enqueued answer already_queued or already_done", unavailable), nil, 0)
		return
	}
	for _, ir := range res.Results {
		switch ir.Status {
		case client.StatusEnqueued:
			res.Enqueued++
		case client.StatusAlreadyQueued:
			res.AlreadyQueued++
			if ir.Moved {
				res.Moved++
			}
		case client.StatusAlreadyDone:
			res.AlreadyDone++
		case client.StatusRequeued:
			res.Requeued++
		default:
			res.Rejected++
		}
	}
	s.items.WithLabelValues(client.StatusEnqueued).Add(float64(res.Enqueued))
	s.items.WithLabelValues(client.StatusAlreadyQueued).Add(float64(res.AlreadyQueued))
	s.items.WithLabelValues(client.StatusAlreadyDone).Add(float64(res.AlreadyDone))
	s.items.WithLabelValues(client.StatusRequeued).Add(float64(res.Requeued))
	s.items.WithLabelValues(client.StatusRejected).Add(float64(res.Rejected))
	writeJSON(w, http.StatusAccepted, res)
}

// requestOpts are a batch request's top-level fields.
type requestOpts struct {
	lane           string
	partial, force bool
}

// parseRequest accepts {"items":[...], "lane":..., "partial":..., "force":...}
// or a single Cancel object, and returns the raw items for per-item decoding.
func (s *Server) parseRequest(body []byte) (raw []json.RawMessage, opts requestOpts, _ *client.APIErrorDetail) {
	fail := func(code, format string, a ...any) ([]json.RawMessage, requestOpts, *client.APIErrorDetail) {
		return nil, requestOpts{}, &client.APIErrorDetail{Code: code, Message: fmt.Sprintf(format, a...)}
	}
	var top map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&top); err != nil {
		return fail(client.CodeMalformedJSON, "body is not a JSON object: %s", jsonErr(err, body))
	}
	if dec.More() {
		return fail(client.CodeMalformedJSON, "body has data after the JSON object")
	}
	if top == nil {
		return fail(client.CodeMalformedJSON, "body is null; send an object")
	}
	itemsRaw, batch := top["items"]
	if !batch {
		if _, single := top["message_id"]; !single {
			return fail(client.CodeInvalidRequest, `send {"items": [...]} or one cancel object with a message_id`)
		}
		return []json.RawMessage{body}, requestOpts{lane: client.LaneDefault}, nil
	}
	for k := range top {
		if k != "items" && k != "lane" && k != "partial" && k != "force" {
			return fail(client.CodeInvalidRequest, "unknown field %q at the top level (want items, lane, partial, force)", k)
		}
	}
	if err := json.Unmarshal(itemsRaw, &raw); err != nil || raw == nil {
		return fail(client.CodeInvalidRequest, "items: want an array of cancel objects")
	}
	if len(raw) == 0 {
		return fail(client.CodeInvalidRequest, "items: empty; send at least one cancel")
	}
	opts.lane = client.LaneDefault
	if v, ok := top["lane"]; ok {
		if json.Unmarshal(v, &opts.lane) != nil || (opts.lane != client.LaneDefault && opts.lane != client.LaneBulk) {
			return fail(client.CodeInvalidRequest, `lane: want "default" or "bulk" (mark single items "urgent": true for the urgent lane)`)
		}
	}
	if v, ok := top["partial"]; ok && json.Unmarshal(v, &opts.partial) != nil {
		return fail(client.CodeInvalidRequest, "partial: want true or false")
	}
	if v, ok := top["force"]; ok && json.Unmarshal(v, &opts.force) != nil {
		return fail(client.CodeInvalidRequest, "force: want true or false")
	}
	return raw, opts, nil
}

// jsonErr describes a decoding error with its byte offset.
func jsonErr(err error, body []byte) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("%v at byte %d", se, se.Offset)
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Sprintf("%v at byte %d", te, te.Offset)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return "empty body"
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Sprintf("JSON ends early at byte %d (truncated body?)", len(body))
	}
	return err.Error()
}

// decodeItem decodes and validates one item strictly (unknown fields are
// errors: a typo like "mesage_id" must not silently cancel nothing).
func decodeItem(i int, b json.RawMessage, lane string) (producer.Item, *client.ItemError) {
	var c client.Cancel
	bad := func(field, code, msg string) (producer.Item, *client.ItemError) {
		// The message id, once read, names the rejected item in the answer.
		return producer.Item{MessageID: c.MessageID}, &client.ItemError{Index: i, Field: field, Code: code, Message: msg}
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil || m == nil {
		return bad("", client.CodeItemInvalidJSON, "want a JSON object")
	}
	for k := range m {
		if !itemFields[k] {
			return bad(k, client.CodeItemUnknownField, "unknown field (known: message_id, location_id, kind, campaign_id, send_at, urgent, force)")
		}
	}
	if err := json.Unmarshal(b, &c); err != nil {
		c = client.Cancel{}
		_ = json.Unmarshal(m["message_id"], &c.MessageID) // to name the item, when it is a string
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return bad(te.Field, client.CodeItemInvalidJSON, "want a "+te.Type.String())
		}
		if strings.Contains(err.Error(), "send_at") || m["send_at"] != nil {
			msg := "want unix seconds or an RFC 3339 time like 2026-11-27T18:00:00Z"
			if strings.Contains(err.Error(), "looks like milliseconds") {
				msg = "looks like milliseconds: " + msg // JavaScript's Date.now()
			}
			return bad("send_at", client.CodeItemInvalidSendAt, msg)
		}
		return bad("", client.CodeItemInvalidJSON, err.Error())
	}
	it := producer.Item{MessageID: c.MessageID, LocationID: c.LocationID, CampaignID: c.CampaignID, Queue: lane, Force: c.Force}
	if c.Urgent {
		it.Queue = tasks.QueueUrgent
	}
	for _, f := range []struct{ name, v string }{{"message_id", c.MessageID}, {"location_id", c.LocationID}} {
		if f.v == "" {
			return bad(f.name, client.CodeItemMissingField, "required")
		}
		if err := ghl.ValidateID(f.v); err != nil {
			return bad(f.name, client.CodeItemInvalidID, err.Error())
		}
	}
	// Exactly the spec's values (the CLI's files are read leniently; an
	// API request is held to its contract): "SMS" or "" answered 202
	// though openapi.yaml refuses them.
	_, hasKind := m["kind"]
	if hasKind && c.Kind != string(ghl.KindMessage) && c.Kind != string(ghl.KindEmail) {
		return bad("kind", client.CodeItemInvalidKind, fmt.Sprintf(`%q: want "message" (SMS and other channels) or "email", in lower case, or leave it out`, c.Kind))
	}
	kind, err := ghl.ParseKind(cmp.Or(c.Kind, "message"))
	if err != nil {
		return bad("kind", client.CodeItemInvalidKind, `want "message" or "email"`)
	}
	it.Kind = kind
	if c.CampaignID != "" {
		if err := tasks.ValidateCampaignID(c.CampaignID); err != nil {
			return bad("campaign_id", client.CodeItemInvalidCampaign, err.Error())
		}
	}
	if c.SendAt != nil {
		it.SendAt = c.SendAt.Unix()
	}
	return it, nil
}

// IdempotencyTTL is how long a sweep's Idempotency-Key answers the first
// sweep again.
const IdempotencyTTL = 24 * time.Hour

const idempotencyKeyPrefix = "ghlcancel:idem:sweeps:"

func validIdempotencyKey(k string) bool {
	if len(k) > 128 {
		return false
	}
	for i := 0; i < len(k); i++ {
		if k[i] < 0x21 || k[i] > 0x7e {
			return false
		}
	}
	return true
}

// requestDigest names a sweep request by its meaning, not its bytes: the
// decoded request encoded again (fields in one order, times in one form,
// locations sorted and once each, channel and lane defaults spelt out),
// hashed. A retry of the same request matches however it is written.
func requestDigest(req client.SweepRequest) string {
	req.LocationIDs = slices.Compact(slices.Sorted(slices.Values(req.LocationIDs)))
	req.Channel = cmp.Or(req.Channel, tasks.ChannelAll)
	if req.Lane == "" {
		req.Lane = tasks.QueueBulk
		if req.ContactID != "" || req.ConversationID != "" {
			req.Lane = tasks.QueueDefault
		}
	}
	b, _ := json.Marshal(req)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// postSweeps starts one sweep task per location (POST /v1/sweeps).
func (s *Server) postSweeps(w http.ResponseWriter, r *http.Request) {
	body, ok := s.readBody(w, r)
	if !ok {
		return
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var req client.SweepRequest
	err := dec.Decode(&req)
	if err == nil {
		if _, next := dec.Token(); !errors.Is(next, io.EOF) {
			err = errors.New("data after the JSON object (send one object)")
		}
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, client.CodeInvalidRequest, "body: "+err.Error(), nil, 0)
		return
	}
	if len(req.LocationIDs) == 0 || len(req.LocationIDs) > s.cfg.MaxItems {
		writeError(w, http.StatusBadRequest, client.CodeInvalidRequest, fmt.Sprintf("location_ids: 1 to %d locations", s.cfg.MaxItems), nil, 0)
		return
	}
	sr := producer.SweepRequest{Locations: req.LocationIDs, ContactID: req.ContactID, ConversationID: req.ConversationID,
		Channel: req.Channel, Source: req.Source, CampaignID: req.CampaignID, Lane: req.Lane, DryRun: req.DryRun}
	// A sweep is not idempotent (each starts its own): a caller that may send
	// the same request again (a retry after a lost answer) names it with an
	// Idempotency-Key, and the same key answers the first sweep again.
	if key := r.Header.Get(client.HeaderIdempotencyKey); key != "" {
		if !validIdempotencyKey(key) {
			writeError(w, http.StatusBadRequest, client.CodeInvalidRequest, client.HeaderIdempotencyKey+": 1 to 128 visible ASCII characters", nil, 0)
			return
		}
		sr.DedupeKey, sr.DedupeTTL = idempotencyKeyPrefix+key, IdempotencyTTL
		sr.DedupeRequest = requestDigest(req)
	}
	if sr.Lane == "" && (sr.ContactID != "" || sr.ConversationID != "") {
		sr.Lane = tasks.QueueDefault
	}
	if req.Since != nil {
		sr.Since = req.Since.Time
	}
	if req.Until != nil {
		sr.Until = req.Until.Time
	}
	st, err := s.prod.Sweep(r.Context(), sr)
	switch {
	case errors.Is(err, producer.ErrDuplicate) && st.SweepID != "":
		w.Header().Set("Idempotent-Replayed", "true")
		writeJSON(w, http.StatusAccepted, client.SweepResponse(st))
		return
	case errors.Is(err, producer.ErrDedupeMismatch):
		writeError(w, http.StatusUnprocessableEntity, client.CodeIdempotencyKeyReused, client.HeaderIdempotencyKey+
			" was used within 24 h for a different sweep request; nothing was started: send a new key for a new sweep", nil, 0)
		return
	case errors.Is(err, producer.ErrDuplicate):
		writeError(w, http.StatusConflict, client.CodeDuplicateRequest, client.HeaderIdempotencyKey+" was used, and its first answer is gone; its sweep was queued", nil, 0)
		return
	case errors.Is(err, producer.ErrUnavailable):
		s.unavailable(w, "sweep", err)
		return
	case err != nil:
		writeError(w, http.StatusBadRequest, client.CodeInvalidRequest, err.Error(), nil, 0)
		return
	}
	writeJSON(w, http.StatusAccepted, client.SweepResponse(st))
}

func (s *Server) getCampaign(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if id == "" || len(id) > tasks.CampaignIDMax {
		writeError(w, http.StatusBadRequest, client.CodeInvalidParameter, fmt.Sprintf("campaign id: 1 to %d bytes", tasks.CampaignIDMax), nil, 0)
		return
	}
	st, ok, err := s.campaigns.Get(r.Context(), id)
	if err == nil && ok {
		st.Parked, err = s.campaigns.Parked(r.Context(), id)
	}
	if err == nil && ok {
		err = s.campaigns.WithSweeps(r.Context(), &st)
	}
	if err != nil {
		s.unavailable(w, "campaign status", err)
		return
	}
	if !ok {
		writeError(w, http.StatusNotFound, client.CodeCampaignNotFound,
			s.campaigns.ExpiredNotFound(r.Context(), id, "unknown, finished longer ago than its retention, or nothing was ever counted in it: "+
				"a message already counted in another campaign stays there, and the answer that enqueued it named that campaign (held_by)",
				"GET /v1/dead-letters?campaign_id="+url.QueryEscape(id)).Error(), nil, 0)
		return
	}
	writeJSON(w, http.StatusOK, client.CampaignStatus(st))
}

// deadLetterParams are GET /v1/dead-letters' query parameters.
var deadLetterParams = []string{"reason", "campaign_id", "location_id", "kind", "limit", "cursor"}

func (s *Server) getDeadLetters(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	// A misspelt filter (campaign= for campaign_id=) would list every dead
	// letter as if they matched: refused, as a typo'd body field is.
	for k := range q {
		if !slices.Contains(deadLetterParams, k) {
			writeError(w, http.StatusBadRequest, client.CodeInvalidParameter,
				fmt.Sprintf("unknown query parameter %q: want %s", k, strings.Join(deadLetterParams, ", ")), nil, 0)
			return
		}
	}
	limit := deadPageDefault
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > deadPageMax {
			writeError(w, http.StatusBadRequest, client.CodeInvalidParameter, fmt.Sprintf("limit: want 1 to %d", deadPageMax), nil, 0)
			return
		}
		limit = n
	}
	f := deadletter.Filter{Reason: q.Get("reason"), CampaignID: q.Get("campaign_id"), LocationID: q.Get("location_id"), Kind: q.Get("kind")}
	// The dead-letter store's own check: sweeps dead-letter too, and the
	// console and the CLI filter on them.
	if err := f.Validate(); err != nil {
		writeError(w, http.StatusBadRequest, client.CodeInvalidParameter, err.Error(), nil, 0)
		return
	}
	recs, next, err := s.dead.Page(r.Context(), f, q.Get("cursor"), limit)
	if err != nil {
		if errors.Is(err, deadletter.ErrBadCursor) {
			writeError(w, http.StatusBadRequest, client.CodeInvalidParameter, "cursor: pass next_cursor from the previous page", nil, 0)
			return
		}
		s.unavailable(w, "dead letters", err)
		return
	}
	if len(recs) == 0 && q.Get("cursor") == "" && f.CampaignID != "" {
		// A mistyped campaign id read as "nothing to replay": none of its
		// dead letters (they outlive their campaign) and no such campaign
		// is the did-you-mean 404 the CLI gives.
		known, err := s.campaignKnown(r.Context(), f.CampaignID)
		if err != nil {
			s.unavailable(w, "dead letters", err)
			return
		}
		if !known {
			writeError(w, http.StatusNotFound, client.CodeCampaignNotFound,
				s.campaigns.NotFound(r.Context(), f.CampaignID, "no campaign and no dead letter has this id").Error(), nil, 0)
			return
		}
	}
	page := client.DeadLetterPage{DeadLetters: make([]client.DeadLetter, len(recs)), NextCursor: next}
	for i, rec := range recs {
		page.DeadLetters[i] = client.DeadLetter(rec)
	}
	writeJSON(w, http.StatusOK, page)
}

// campaignKnown: a campaign has the id, or a dead letter names it.
func (s *Server) campaignKnown(ctx context.Context, id string) (bool, error) {
	if _, ok, err := s.campaigns.Get(ctx, id); err != nil || ok {
		return ok, err
	}
	recs, _, err := s.dead.Page(ctx, deadletter.Filter{CampaignID: id}, "", 1)
	return len(recs) > 0, err
}

func (s *Server) unavailable(w http.ResponseWriter, what string, err error) {
	s.log.Error(what+" failed", "err", err)
	w.Header().Set("Retry-After", "1")
	writeError(w, http.StatusServiceUnavailable, client.CodeQueueUnavailable, what+": Redis is unavailable; retry", nil, 0)
}
