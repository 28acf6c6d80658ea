// Package sandbox is an in-process stand-in for the HighLevel API: the two
// cancel-schedule endpoints and GET message over a store of scheduled
// messages per location, with the real API's auth, Version header check,
// response bodies, per-location rate limits (X-RateLimit-* headers, 429s) and
// injectable faults. It also plays an agency (Company) app (agency.go):
// company tokens from POST /oauth/token, location tokens minted by POST
// /oauth/locationToken, GET /oauth/installedLocations, installs and
// uninstalls. Tests, the demo and load tests run against it; its answers
// are checked against the official OpenAPI specs in contract tests.
package sandbox

import (
	"cmp"
	"crypto/rand"
	"encoding/json"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for Config.
const (
	VersionDefault      = "2021-04-15"
	RateMaxDefault      = 100
	RateIntervalDefault = 10 * time.Second
	DailyLimitDefault   = 200_000
	ClientIDDefault     = "sandbox-client-id"
	ClientSecretDefault = "sandbox-client-secret"
	AccessTTLDefault    = 86399 * time.Second
	AppIDDefault        = "sandbox-app-id"
)

// Config configures a Server.
type Config struct {
	// Version is the only Version header value accepted. Defaults to VersionDefault.
	Version string
	// RateMax requests per RateInterval per location. Defaults to RateMaxDefault.
	// A negative value disables the burst limit.
	RateMax int
	// RateInterval is the burst window. Defaults to RateIntervalDefault.
	RateInterval time.Duration
	// RateWindow is how the burst limit counts: "fixed" windows aligned on
	// RateInterval, or "sliding" (at most RateMax calls in any span of
	// RateInterval, the strictest reading). HighLevel does not document
	// which it uses. Defaults to "fixed".
	RateWindow string
	// DailyLimit requests per location per UTC day. Defaults to DailyLimitDefault.
	DailyLimit int
	// RetryAfter makes 429s carry a Retry-After header (HighLevel does not
	// document whether it sends one). Defaults to false.
	RetryAfter bool
	// Faults injected into answers. Defaults to none.
	Faults Faults
	// ClientID and ClientSecret the token endpoint accepts. Default to
	// ClientIDDefault and ClientSecretDefault.
	ClientID, ClientSecret string
	// AccessTTL is how long an access token issued by POST /oauth/token
	// lives. Defaults to 86399 s, as HighLevel's.
	AccessTTL time.Duration
	// MintTTL is how long a location token minted by POST
	// /oauth/locationToken lives. Defaults to AccessTTLDefault (HighLevel
	// documents expires_in 86399).
	MintTTL time.Duration
	// AppID is the marketplace app's id: INSTALL and UNINSTALL events carry
	// it, minted tokens report it, and GET /oauth/installedLocations wants it.
	// Defaults to AppIDDefault.
	AppID string
	// Seed for fault injection and ids; 0 picks a random seed.
	Seed uint64
	// Now defaults to time.Now.
	Now func() time.Time
}

// Faults are injected before a request is processed, so a faulted request
// changes nothing, except LostResponseRate, which processes the request and
// then answers 502 (the reply was lost on the way back).
type Faults struct {
	ErrorRate        float64       // share of requests answered 500/502/503
	ResetRate        float64       // share of connections reset without an answer
	TimeoutRate      float64       // share of requests that hang until the client gives up
	LostResponseRate float64       // share processed, then answered 502
	Latency          time.Duration // added to every request
	LatencyJitter    time.Duration // plus a uniform random extra up to this
}

// Message states.
const (
	StatusScheduled = "scheduled"
	StatusSent      = "sent"
	// StatusCancelled is what GET reports for a cancelled message. HighLevel
	// documents no "cancelled" value; "failed" is the closest documented one.
	StatusCancelled = "failed"
)

type message struct {
	id string // what the cancel takes: the message id, or the emailMessageId of an email
	// convID is the conversation message's id (GET message, the export);
	// the same as id for an SMS.
	convID       string
	contact      string
	conversation string
	source       string
	seq          int64 // creation order, for the export's paging
	location     string
	email        bool
	status       string
	sendAt       time.Time // zero: never goes out on its own
	added        time.Time
	cancels      int       // successful cancel calls (more than 1 would be a bug upstream)
	cancelAt     time.Time // when it was cancelled
}

type bucket struct {
	mu          sync.Mutex
	windowStart time.Time
	count       int
	day         time.Time
	dayCount    int
	max         int // per-location override of cfg.RateMax, 0 = default
	admitted    []time.Time
	recent      []time.Time // sliding window: admissions within the last interval
	refused     int         // 429s
}

// maxRecorded bounds the admitted-call timeline kept per location.
const maxRecorded = 1_000_000

// Server is the sandbox. Its zero value is not usable; call New.
type Server struct {
	cfg Config
	now func() time.Time

	mu       sync.RWMutex
	tokens   map[string]string     // token -> location
	expires  map[string]time.Time  // OAuth access token -> expiry
	refresh  map[string]*grant     // refresh token -> its grant
	agencies agencies              // the agency app: company tokens, installs, mints
	inactive map[string]bool       // locations whose refresh fails "Location is not active"
	messages map[string]*message   // by cancel id
	convMsgs map[string]*message   // by conversation message id
	byLoc    map[string][]*message // creation order
	seq      int64
	buckets  map[string]*bucket
	faults   Faults
	// cursorTTL is how long an export cursor lives; 0 means CursorTTLDefault.
	cursorTTL time.Duration
	cursorGen int64 // ExpireCursors bumps it

	rngMu sync.Mutex
	rng   *mrand.Rand

	stats counters

	whKeys webhookKeys
}

// grant is what a refresh token stands for: a location, or an agency
// (company set, location empty).
type grant struct {
	location string
	company  string
	used     bool
}

type counters struct {
	refreshes, invalidGrants,
	requests, cancelled, notCancellable, unauthorized, badRequest, rateLimited,
	faulted5xx, resets, timeouts, lostResponses, gets, exports,
	mints, mintsRefused atomic.Int64
}

// Stats is a snapshot of what the sandbox answered. Requests, Unauthorized,
// BadRequest and RateLimited count the conversations routes; the injected
// faults (Faulted5xx, Resets, Timeouts, LostResponses) count every API route,
// the agency ones included; Refreshes and InvalidGrants count POST
// /oauth/token for location and agency grants alike.
type Stats struct {
	Requests       int64 `json:"requests"`
	Cancelled      int64 `json:"cancelled"`
	NotCancellable int64 `json:"not_cancellable"`
	Unauthorized   int64 `json:"unauthorized"`
	BadRequest     int64 `json:"bad_request"`
	RateLimited    int64 `json:"rate_limited"`
	Faulted5xx     int64 `json:"faulted_5xx"`
	Resets         int64 `json:"resets"`
	Timeouts       int64 `json:"timeouts"`
	LostResponses  int64 `json:"lost_responses"`
	Gets           int64 `json:"gets"`
	Refreshes      int64 `json:"refreshes"`
	InvalidGrants  int64 `json:"invalid_grants"`
	// Mints counts location tokens minted by POST /oauth/locationToken (a
	// lost response included: the token was minted); MintsRefused the
	// calls to it that minted nothing, whatever the reason (version, auth,
	// rate limit, company, location, injected fault).
	Mints        int64 `json:"mints"`
	MintsRefused int64 `json:"mints_refused"`
}

// New builds a Server.
func New(cfg Config) *Server {
	cfg.Version = cmp.Or(cfg.Version, VersionDefault)
	cfg.RateMax = cmp.Or(cfg.RateMax, RateMaxDefault)
	cfg.RateInterval = cmp.Or(cfg.RateInterval, RateIntervalDefault)
	cfg.DailyLimit = cmp.Or(cfg.DailyLimit, DailyLimitDefault)
	cfg.ClientID = cmp.Or(cfg.ClientID, ClientIDDefault)
	cfg.ClientSecret = cmp.Or(cfg.ClientSecret, ClientSecretDefault)
	cfg.AccessTTL = cmp.Or(cfg.AccessTTL, AccessTTLDefault)
	cfg.MintTTL = cmp.Or(cfg.MintTTL, AccessTTLDefault)
	cfg.AppID = cmp.Or(cfg.AppID, AppIDDefault)
	seed := cfg.Seed
	if seed == 0 {
		seed = mrand.Uint64()
	}
	s := &Server{
		cfg:      cfg,
		now:      cfg.Now,
		tokens:   map[string]string{},
		expires:  map[string]time.Time{},
		refresh:  map[string]*grant{},
		inactive: map[string]bool{},
		messages: map[string]*message{},
		convMsgs: map[string]*message{},
		byLoc:    map[string][]*message{},
		buckets:  map[string]*bucket{},
		agencies: newAgencies(),
		faults:   cfg.Faults,
		rng:      mrand.New(mrand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
	}
	if s.now == nil {
		s.now = time.Now
	}
	return s
}

// AddLocation registers a location and the token that grants access to it.
// A location may have several tokens (call again).
func (s *Server) AddLocation(location, token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokens[token] = location
	if s.buckets[location] == nil {
		s.buckets[location] = &bucket{}
	}
}

// AddOAuthLocation registers a location that authenticates with OAuth and
// returns its first refresh token (as an app install would hand out).
func (s *Server) AddOAuthLocation(location string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.buckets[location] == nil {
		s.buckets[location] = &bucket{}
	}
	rt := "rt-" + NewID() + NewID()
	s.refresh[rt] = &grant{location: location}
	return rt
}

// SetInactive makes refreshes for the location fail with "Location is not active".
func (s *Server) SetInactive(location string, inactive bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.inactive[location] = inactive
}

// AccessExpiry reports when an OAuth access token (refreshed or minted)
// stops being accepted; ok is false for a token the sandbox does not know
// or one without an expiry (a Private Integration Token).
func (s *Server) AccessExpiry(token string) (exp time.Time, ok bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	exp, ok = s.expires[token]
	return exp, ok
}

// RevokeAccess makes an access token invalid before its expiry.
func (s *Server) RevokeAccess(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.tokens, token)
	delete(s.expires, token)
}

// token serves POST /oauth/token for grant_type=refresh_token: a refresh
// token works once; the answer carries a new access token and a new
// refresh token. A reused or unknown one gets invalid_grant. A location
// grant's access token works on the conversations routes; an agency
// grant's (see AddAgency) only on the agency routes. The user_type field
// is not checked: the grant decides what kind of token comes back.
func (s *Server) token(w http.ResponseWriter, r *http.Request) {
	s.mu.RLock()
	f := s.faults
	s.mu.RUnlock()
	if d := f.Latency + s.jitter(f.LatencyJitter); d > 0 {
		time.Sleep(d)
	}
	if err := r.ParseForm(); err != nil {
		writeJSON(w, http.StatusUnprocessableEntity, map[string]any{"statusCode": 422, "message": []string{"body must be form-encoded"}, "error": "Unprocessable Entity"})
		return
	}
	if r.PostForm.Get("client_id") != s.cfg.ClientID || r.PostForm.Get("client_secret") != s.cfg.ClientSecret {
		writeJSON(w, http.StatusUnauthorized, map[string]any{"statusCode": 401, "message": "Invalid client credentials", "error": "Unauthorized"})
		return
	}
	if gt := r.PostForm.Get("grant_type"); gt != "refresh_token" {
		writeJSON(w, http.StatusUnprocessableEntity, map[string]any{"statusCode": 422, "message": []string{"the sandbox supports grant_type refresh_token only, got " + gt}, "error": "Unprocessable Entity"})
		return
	}
	rt := r.PostForm.Get("refresh_token")
	s.mu.Lock()
	g := s.refresh[rt]
	switch {
	case g == nil || g.used:
		s.mu.Unlock()
		s.stats.invalidGrants.Add(1)
		writeJSON(w, http.StatusBadRequest, map[string]any{"statusCode": 400, "message": "Invalid grant: refresh token is invalid", "error": "invalid_grant"})
		return
	case s.inactive[g.location]:
		s.mu.Unlock()
		writeJSON(w, http.StatusBadRequest, map[string]any{"statusCode": 400, "message": "Location is not active", "error": "Bad Request"})
		return
	}
	g.used = true
	var body map[string]any
	if g.company != "" {
		body = s.companyGrantLocked(g.company)
	} else {
		body = s.locationGrantLocked(g.location)
	}
	s.mu.Unlock()
	s.stats.refreshes.Add(1)
	writeJSON(w, http.StatusOK, body)
}

// locationGrantLocked issues a location's next access and refresh tokens
// and returns the token answer; s.mu is held. userId is there because the
// spec's GetAccessCodeSuccessfulResponseDto requires it.
func (s *Server) locationGrantLocked(location string) map[string]any {
	access := "at-" + NewID() + NewID()
	next := "rt-" + NewID() + NewID()
	s.tokens[access] = location
	s.expires[access] = s.now().Add(s.cfg.AccessTTL)
	s.refresh[next] = &grant{location: location}
	return map[string]any{
		"access_token": access, "token_type": "Bearer", "expires_in": s.cfg.AccessTTL.Seconds(),
		"refresh_token": next, "scope": "conversations/message.readonly conversations/message.write",
		"userType": "Location", "locationId": location, "userId": installUserID,
	}
}

// ResetDay gives a location its whole daily budget back, as HighLevel's
// daily window does at its reset (tests that cannot wait for midnight).
func (s *Server) ResetDay(location string) {
	s.mu.Lock()
	b := s.buckets[location]
	s.mu.Unlock()
	if b == nil {
		return
	}
	b.mu.Lock()
	b.dayCount = 0
	b.mu.Unlock()
}

// SetRateLimit overrides the burst limit of one location (0 restores the default).
func (s *Server) SetRateLimit(location string, max int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.buckets[location]
	if b == nil {
		b = &bucket{}
		s.buckets[location] = b
	}
	b.mu.Lock()
	b.max = max
	b.mu.Unlock()
}

// Admitted returns when the location's calls were admitted (not refused by
// a limit), in order; the first million are kept.
func (s *Server) Admitted(location string) []time.Time {
	s.mu.RLock()
	b := s.buckets[location]
	s.mu.RUnlock()
	if b == nil {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]time.Time(nil), b.admitted...)
}

// RateLimitedCount returns how many 429s the location got.
func (s *Server) RateLimitedCount(location string) int {
	s.mu.RLock()
	b := s.buckets[location]
	s.mu.RUnlock()
	if b == nil {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.refused
}

// SetFaults replaces the injected faults.
func (s *Server) SetFaults(f Faults) {
	s.mu.Lock()
	s.faults = f
	s.mu.Unlock()
}

// Schedule adds a scheduled message with the given id to a location. A zero
// sendAt means it never goes out by itself.
func (s *Server) Schedule(location, id string, email bool, sendAt time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.addLocked(&message{id: id, location: location, email: email, status: StatusScheduled, sendAt: sendAt,
		contact: DefaultContact, conversation: DefaultConversation, source: "workflow"})
}

// addLocked stores m (an email gets a conversation message id of its own).
func (s *Server) addLocked(m *message) {
	m.convID = m.id
	if m.email {
		m.convID = NewID()
	}
	s.seq++
	m.seq, m.added = s.seq, s.now()
	s.messages[m.id] = m
	s.convMsgs[m.convID] = m
	s.byLoc[m.location] = append(s.byLoc[m.location], m)
}

// ScheduleN adds n scheduled messages with fresh ids and returns the ids.
func (s *Server) ScheduleN(location string, n int, email bool) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = NewID()
		s.Schedule(location, ids[i], email, time.Time{})
	}
	return ids
}

// MessageStatus reports a message's status and how many times it was
// cancelled successfully; ok is false for an unknown id.
func (s *Server) MessageStatus(id string) (status string, cancels int, ok bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	m := s.messages[id]
	if m == nil {
		m = s.convMsgs[id]
	}
	if m == nil {
		return "", 0, false
	}
	return s.statusLocked(m), m.cancels, true
}

// CancelledAt returns when a message was cancelled (zero if it was not).
func (s *Server) CancelledAt(id string) time.Time {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if m := s.messages[id]; m != nil {
		return m.cancelAt
	}
	return time.Time{}
}

// Count returns how many messages are in each status.
func (s *Server) Count() map[string]int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := map[string]int{}
	for _, m := range s.messages {
		out[s.statusLocked(m)]++
	}
	return out
}

func (s *Server) statusLocked(m *message) string {
	if m.status == StatusScheduled && !m.sendAt.IsZero() && !s.now().Before(m.sendAt) {
		return StatusSent
	}
	return m.status
}

// Stats returns what the sandbox answered so far.
func (s *Server) Stats() Stats {
	c := &s.stats
	return Stats{
		Requests: c.requests.Load(), Cancelled: c.cancelled.Load(), NotCancellable: c.notCancellable.Load(),
		Unauthorized: c.unauthorized.Load(), BadRequest: c.badRequest.Load(), RateLimited: c.rateLimited.Load(),
		Faulted5xx: c.faulted5xx.Load(), Resets: c.resets.Load(), Timeouts: c.timeouts.Load(),
		LostResponses: c.lostResponses.Load(), Gets: c.gets.Load(),
		Refreshes: c.refreshes.Load(), InvalidGrants: c.invalidGrants.Load(),
		Mints: c.mints.Load(), MintsRefused: c.mintsRefused.Load(),
	}
}

const idAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// NewID returns a random 20-character id shaped like HighLevel's.
func NewID() string {
	var b [20]byte
	_, _ = rand.Read(b[:])
	for i := range b {
		b[i] = idAlphabet[int(b[i])%len(idAlphabet)]
	}
	return string(b[:])
}

// Handler serves the API routes plus /_sandbox/stats.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("DELETE /conversations/messages/email/{id}/schedule", s.api(s.cancel(true)))
	mux.HandleFunc("DELETE /conversations/messages/{id}/schedule", s.api(s.cancel(false)))
	mux.HandleFunc("GET /conversations/messages/export", s.api(s.export))
	mux.HandleFunc("GET /conversations/messages/{id}", s.api(s.get(false)))
	mux.HandleFunc("GET /conversations/messages/email/{id}", s.api(s.get(true)))
	mux.HandleFunc("POST /oauth/token", s.token)
	mux.HandleFunc("POST /oauth/locationToken", s.agency(&s.stats.mintsRefused, s.locationToken))
	mux.HandleFunc("GET /oauth/installedLocations", s.agency(nil, s.installedLocations))
	mux.HandleFunc("POST /_sandbox/webhooks", s.emitHTTP)
	mux.HandleFunc("GET /_sandbox/webhook-keys", s.webhookKeysHTTP)
	mux.HandleFunc("GET /_sandbox/stats", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, s.Stats())
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		// What HighLevel's framework (NestJS) answers for a path with no route.
		writeJSON(w, http.StatusNotFound, map[string]any{"statusCode": 404, "message": "Cannot " + r.Method + " " + r.URL.Path, "error": "Not Found"})
	})
	return mux
}

type apiFunc func(w http.ResponseWriter, r *http.Request, location string)

// api wraps a route with, in order: latency, faults, the Version header,
// bearer auth and the per-location rate limit.
func (s *Server) api(next apiFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s.stats.requests.Add(1)
		f := s.currentFaults()
		if !s.inject(w, r, f) {
			return
		}
		if !versionOK(w, r, s.cfg.Version) {
			s.stats.badRequest.Add(1)
			return
		}
		token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		s.mu.RLock()
		location, known := s.tokens[token]
		exp, isOAuth := s.expires[token]
		b := s.buckets[location]
		s.mu.RUnlock()
		if known && isOAuth && !s.now().Before(exp) {
			s.stats.unauthorized.Add(1)
			writeJSON(w, http.StatusUnauthorized, map[string]any{"statusCode": 401, "message": "Invalid JWT", "error": "Unauthorized"})
			return
		}
		if !ok || !known {
			s.stats.unauthorized.Add(1)
			writeJSON(w, http.StatusUnauthorized, map[string]any{
				"statusCode": 401, "message": "Invalid token: access token is invalid", "error": "Unauthorized"})
			return
		}
		if !s.admit(w, b) {
			s.stats.rateLimited.Add(1)
			writeTooMany(w)
			return
		}
		s.deliver(w, f, func(w http.ResponseWriter) { next(w, r, location) })
	}
}

func (s *Server) currentFaults() Faults {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.faults
}

// inject applies f's latency and faults before a request is processed. It
// reports false when the request ends there: the client left during the
// latency, the connection was reset, the request hung until the client gave
// up, or a 5xx was answered.
func (s *Server) inject(w http.ResponseWriter, r *http.Request, f Faults) bool {
	if d := f.Latency + s.jitter(f.LatencyJitter); d > 0 {
		select {
		case <-time.After(d):
		case <-r.Context().Done():
			return false
		}
	}
	switch x := s.roll(); {
	case x < f.ResetRate:
		s.stats.resets.Add(1)
		resetConnection(w)
		return false
	case x < f.ResetRate+f.TimeoutRate:
		s.stats.timeouts.Add(1)
		select { // hang until the client gives up
		case <-r.Context().Done():
		case <-time.After(2 * time.Minute):
		}
		return false
	case x < f.ResetRate+f.TimeoutRate+f.ErrorRate:
		s.stats.faulted5xx.Add(1)
		codes := []int{500, 502, 503}
		code := codes[int(s.roll()*3)%3]
		writeJSON(w, code, map[string]any{"statusCode": code, "message": http.StatusText(code)})
		return false
	}
	return true
}

// versionOK answers 400 and reports false unless the Version header is want.
func versionOK(w http.ResponseWriter, r *http.Request, want string) bool {
	v := r.Header.Get("Version")
	if v == want {
		return true
	}
	msg := "version header was not found"
	if v != "" {
		msg = "version header is invalid"
	}
	writeJSON(w, http.StatusBadRequest, map[string]any{"statusCode": 400, "message": msg})
	return false
}

// deliver runs a processed request's handler; for a share LostResponseRate
// of requests the answer is thrown away and the client gets 502.
func (s *Server) deliver(w http.ResponseWriter, f Faults, run func(http.ResponseWriter)) {
	if f.LostResponseRate > 0 && s.roll() < f.LostResponseRate {
		run(discard{h: http.Header{}})
		s.stats.lostResponses.Add(1)
		writeJSON(w, http.StatusBadGateway, map[string]any{"statusCode": 502, "message": "Bad Gateway"})
		return
	}
	run(w)
}

// writeTooMany is the 429 answer (HighLevel does not document its body).
func writeTooMany(w http.ResponseWriter) {
	writeJSON(w, http.StatusTooManyRequests, map[string]any{
		"statusCode": 429, "message": "Too many requests, please try again later.", "error": "Too Many Requests"})
}

// admit counts the request against the location's windows and sets the
// X-RateLimit-* headers. It reports false when the request is over a limit.
func (s *Server) admit(w http.ResponseWriter, b *bucket) bool {
	now := s.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	limit := cmp.Or(b.max, s.cfg.RateMax)
	interval := s.cfg.RateInterval
	if s.cfg.RateWindow == "sliding" {
		drop := 0
		for drop < len(b.recent) && now.Sub(b.recent[drop]) >= interval {
			drop++
		}
		b.recent = b.recent[drop:]
		b.count = len(b.recent)
		if len(b.recent) > 0 {
			b.windowStart = b.recent[0] // the window frees its first call at windowStart+interval
		} else {
			b.windowStart = now
		}
	} else if now.Sub(b.windowStart) >= interval {
		b.windowStart = now.Truncate(interval)
		b.count = 0
	}
	day := now.UTC().Truncate(24 * time.Hour)
	if !b.day.Equal(day) {
		b.day, b.dayCount = day, 0
	}
	h := w.Header()
	burstOK := limit < 0 || b.count < limit
	dailyOK := b.dayCount < s.cfg.DailyLimit
	if burstOK && dailyOK {
		b.count++
		b.dayCount++
		if s.cfg.RateWindow == "sliding" {
			b.recent = append(b.recent, now)
		}
		if len(b.admitted) < maxRecorded {
			b.admitted = append(b.admitted, now)
		}
	} else {
		b.refused++
	}
	if limit >= 0 {
		h.Set("X-RateLimit-Max", strconv.Itoa(limit))
		h.Set("X-RateLimit-Interval-Milliseconds", strconv.FormatInt(interval.Milliseconds(), 10))
		h.Set("X-RateLimit-Remaining", strconv.Itoa(max(0, limit-b.count)))
	}
	h.Set("X-RateLimit-Limit-Daily", strconv.Itoa(s.cfg.DailyLimit))
	h.Set("X-RateLimit-Daily-Remaining", strconv.Itoa(max(0, s.cfg.DailyLimit-b.dayCount)))
	if !(burstOK && dailyOK) && s.cfg.RetryAfter {
		wait := b.windowStart.Add(interval).Sub(now)
		if !dailyOK {
			wait = day.Add(24 * time.Hour).Sub(now)
		}
		h.Set("Retry-After", strconv.Itoa(int((wait+time.Second-1)/time.Second)))
	}
	return burstOK && dailyOK
}

func (s *Server) cancel(email bool) apiFunc {
	return func(w http.ResponseWriter, r *http.Request, location string) {
		id := r.PathValue("id")
		s.mu.Lock()
		m := s.messages[id]
		if m != nil && m.location != location {
			s.mu.Unlock()
			s.stats.unauthorized.Add(1)
			writeJSON(w, http.StatusUnauthorized, map[string]any{
				"statusCode": 401, "message": "The token does not have access to this location.", "error": "Unauthorized"})
			return
		}
		ok := m != nil && m.email == email && s.statusLocked(m) == StatusScheduled
		if ok {
			m.status = StatusCancelled
			m.cancels++
			m.cancelAt = s.now()
		}
		s.mu.Unlock()
		if !ok {
			// The spec's own example: a 200 whose body reports a 404.
			s.stats.notCancellable.Add(1)
			writeJSON(w, http.StatusOK, map[string]any{"status": 404, "message": "Failed cancel the scheduled message"})
			return
		}
		s.stats.cancelled.Add(1)
		writeJSON(w, http.StatusOK, map[string]any{"status": 200, "message": "Scheduled message cancelled successfully"})
	}
}

// get serves GET message (email false: by conversation message id) and GET
// email (email true: by emailMessageId). An unknown id, or an SMS asked for
// as an email, answers 400 "Message not found".
func (s *Server) get(email bool) apiFunc {
	return func(w http.ResponseWriter, r *http.Request, location string) {
		s.stats.gets.Add(1)
		id := r.PathValue("id")
		s.mu.RLock()
		m := s.convMsgs[id]
		if email {
			m = s.messages[id]
		}
		var body map[string]any
		if m != nil && m.location == location && (!email || m.email) {
			if email {
				body = map[string]any{"id": m.id, "threadId": m.convID, "locationId": m.location,
					"contactId": m.contact, "conversationId": m.conversation, "dateAdded": stamp(m.added),
					"subject": "Scheduled", "body": "<p>scheduled email</p>", "direction": "outbound", "status": s.statusLocked(m),
					"contentType": "text/html", "from": "sender@example.com", "to": []string{"contact@example.com"}}
			} else {
				body = s.messageDTOLocked(m)
			}
		}
		s.mu.RUnlock()
		if body == nil {
			writeJSON(w, http.StatusBadRequest, map[string]any{"statusCode": 400, "message": "Message not found"})
			return
		}
		writeJSON(w, http.StatusOK, body)
	}
}

func (s *Server) roll() float64 {
	s.rngMu.Lock()
	defer s.rngMu.Unlock()
	return s.rng.Float64()
}

func (s *Server) jitter(max time.Duration) time.Duration {
	if max <= 0 {
		return 0
	}
	return time.Duration(s.roll() * float64(max))
}

func resetConnection(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic(http.ErrAbortHandler)
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0) // RST instead of FIN
	}
	_ = conn.Close()
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

type discard struct{ h http.Header }

func (d discard) Header() http.Header         { return d.h }
func (d discard) Write(p []byte) (int, error) { return len(p), nil }
func (d discard) WriteHeader(int)             {}

// String describes the config for logs.
func (c Config) String() string {
	return fmt.Sprintf("rate=%d/%s daily=%d retry-after=%t faults=%+v", c.RateMax, c.RateInterval, c.DailyLimit, c.RetryAfter, c.Faults)
}
