package console_test

import (
	"context"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/contract"
	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/intake"
	"github.com/ghlcancel/ghlcancel/internal/producer"
	"github.com/ghlcancel/ghlcancel/internal/ratelimit"
	"github.com/ghlcancel/ghlcancel/internal/redistest"
	"github.com/ghlcancel/ghlcancel/internal/sandbox"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
	"github.com/ghlcancel/ghlcancel/internal/tokens"
	"github.com/ghlcancel/ghlcancel/internal/worker"
)

var redisServer *redistest.Server

func TestMain(m *testing.M) { redistest.Main(m, &redisServer) }

const (
	operatorKey = "operator-key-0123456789abcdef"
	consoleKey  = "console-only-key-0123456789ab"
	readOnlyKey = "read-only-key-0123456789abcdef"

	locGood = "locGood000000000000001"
	locBad  = "locBadToken0000000001"
	// locBroken's token stays wrong: its dead letters are purged.
	locBroken = "locBrokenToken0000001"
	tokGood   = "sandbox-token-good-000000000001"
	tokBad    = "sandbox-token-bad-0000000000001"
)

// swapTokens is a token source the test can fix, as an operator fixes a
// tokens file.
type swapTokens struct {
	mu sync.Mutex
	m  map[string]string
}

func (s *swapTokens) Token(_ context.Context, loc string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.m[loc]; ok {
		return t, nil
	}
	return "", tokens.ErrNoToken
}

func (s *swapTokens) set(loc, tok string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[loc] = tok
}

// stack is the real thing on a fresh Redis database: the sandbox API
// behind the official OpenAPI validator, a worker, and the intake serving
// the console. locBad's token is one the sandbox refuses (401) until the
// test fixes it.
type stack struct {
	rdb    *redis.Client
	sb     *sandbox.Server
	tokens *swapTokens
	url    string
	prod   *producer.Producer
}

type stackOpts struct {
	// rate paces every location (e.g. 20/1s), so a campaign runs long
	// enough to be watched. Empty: HighLevel's default.
	rate string
	// noWorker: no worker serves the stack's Redis database.
	noWorker bool
}

func newStack(t *testing.T, o stackOpts) *stack {
	t.Helper()
	rdb := redisServer.Client(t)
	v, err := contract.New()
	require.NoError(t, err)
	sb := sandbox.New(sandbox.Config{RateMax: -1})
	sb.AddLocation(locGood, tokGood)
	sb.AddLocation(locBad, tokGood+"-bad-location")
	sb.AddLocation(locBroken, tokGood+"-broken-location")
	api := httptest.NewServer(v.Wrap(sb.Handler()))
	t.Cleanup(api.Close)
	toks := &swapTokens{m: map[string]string{locGood: tokGood, locBad: tokBad, locBroken: tokBad}}
	rl := ratelimit.Config{}
	if o.rate != "" {
		lim, err := ratelimit.ParseLimit(o.rate)
		require.NoError(t, err)
		rl.Default = lim
	}
	w, err := worker.New(worker.Config{
		Redis: rdb, GHL: ghl.Config{BaseURL: api.URL, Timeout: 2 * time.Second}, Tokens: toks,
		Concurrency: 20, Backoff: tasks.Backoff{Base: 50 * time.Millisecond, Cap: 200 * time.Millisecond},
		DelayedCheckInterval: 100 * time.Millisecond, ShutdownTimeout: 5 * time.Second, RateLimit: rl,
		TaskCheckInterval: 50 * time.Millisecond,
	})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	if o.noWorker {
		done <- nil
	} else {
		go func() { done <- w.Run(ctx) }()
	}
	prodCfg := producer.Config{MaxRetry: 2}
	srv, err := intake.New(intake.Config{Redis: rdb, Keys: []string{operatorKey}, ConsoleKeys: []string{consoleKey},
		ConsoleReadOnlyKeys: []string{readOnlyKey}, Producer: prodCfg, Registry: prometheus.NewRegistry()})
	require.NoError(t, err)
	hs := httptest.NewServer(srv)
	t.Cleanup(func() {
		hs.Close()
		cancel()
		require.NoError(t, <-done)
		require.Empty(t, v.Problems(), "requests that break HighLevel's OpenAPI contract")
	})
	return &stack{rdb: rdb, sb: sb, tokens: toks, url: hs.URL, prod: producer.New(rdb, prodCfg)}
}

// finished queues a campaign (see campaign) and waits until it completes.
func (s *stack) finished(t *testing.T, id string, perLocation map[string]int) {
	t.Helper()
	s.campaign(t, id, perLocation)
	waitCampaign(t, s, id)
}

// campaign schedules n messages per location in the sandbox and enqueues
// their cancels under one campaign id.
func (s *stack) campaign(t *testing.T, id string, perLocation map[string]int) []string {
	t.Helper()
	var items []producer.Item
	var ids []string
	for loc, n := range perLocation {
		for _, m := range s.sb.ScheduleN(loc, n, false) {
			items = append(items, producer.Item{Kind: ghl.KindMessage, MessageID: m, LocationID: loc, CampaignID: id, Queue: tasks.QueueBulk})
			ids = append(ids, m)
		}
	}
	for _, r := range s.prod.EnqueueBatch(context.Background(), items) {
		require.NoError(t, r.Err)
	}
	return ids
}

// browser is a cookie-keeping HTTP client that does not follow redirects,
// so each answer can be checked.
type browser struct {
	t    *testing.T
	base string
	c    *http.Client
	host string // Host header override
}

func (s *stack) browser(t *testing.T) *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{t: t, base: s.url, c: &http.Client{Jar: jar, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

func (b *browser) do(method, path string, form url.Values, hdr map[string]string) (*http.Response, string) {
	b.t.Helper()
	var body *strings.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	} else {
		body = strings.NewReader("")
	}
	req, err := http.NewRequest(method, b.base+path, body)
	require.NoError(b.t, err)
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if b.host != "" {
		req.Host = b.host
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := b.c.Do(req)
	require.NoError(b.t, err)
	defer resp.Body.Close()
	var sb strings.Builder
	_, _ = io.Copy(&sb, resp.Body)
	return resp, sb.String()
}

func (b *browser) get(path string) (*http.Response, string) {
	return b.do(http.MethodGet, path, nil, nil)
}
func (b *browser) post(path string, form url.Values) (*http.Response, string) {
	return b.do(http.MethodPost, path, form, nil)
}

var (
	loginTokenRE = regexp.MustCompile(`name="login_token" value="([0-9a-f]{64})"`)
	csrfRE       = regexp.MustCompile(`name="csrf" value="([0-9a-f]{64})"`)
)

func match(t *testing.T, re *regexp.Regexp, body string) string {
	t.Helper()
	m := re.FindStringSubmatch(body)
	require.NotNil(t, m, "no %s in the page:\n%s", re, body)
	return m[1]
}

// signIn signs in with key and returns the session's CSRF token.
func (b *browser) signIn(key string) string {
	b.t.Helper()
	_, page := b.get("/console/login")
	resp, body := b.post("/console/login", url.Values{"login_token": {match(b.t, loginTokenRE, page)}, "key": {key}, "next": {"/console/"}})
	require.Equal(b.t, http.StatusSeeOther, resp.StatusCode, body)
	_, home := b.get("/console/")
	return match(b.t, csrfRE, home)
}
