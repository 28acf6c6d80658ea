package tokens

import (
	"cmp"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ghlcancel/ghlcancel/internal/ghl"
)

// OAuth keeps per-location OAuth pairs in Redis, encrypted at rest
// (AES-256-GCM, the location id as associated data), and refreshes access
// tokens before they expire. Refreshes are single-flight across every
// worker: one Redis lock per location decides who calls the token endpoint,
// and a generation number fences the write, so a refresh token (single-use
// at HighLevel) is spent once and the new pair is stored before anyone
// uses it. A worker that loses the race reads the stored pair.
//
// Once the lock is taken, a refresh runs detached from the caller's context
// (bounded by refreshTimeout): after HighLevel answers, the old refresh token
// is spent and the new pair is the only one that works, so a task giving up
// must not keep it from being stored. A pair that still cannot be stored
// (Redis down) is kept sealed in memory as pending; its predecessor is never
// refreshed. While a pair is pending, a background flusher tries to store it
// every few seconds and keeps the location's lock (extending it, or taking
// it again once it expired or Redis lost it), so that no other worker spends
// the refresh token HighLevel has already spent; the next Token or Refresh
// for the location tries to store it too. Close stops the flusher.
type OAuth struct {
	cfg  OAuthConfig
	aead cipher.AEAD
	// lockTTL is the refresh lock's TTL: lockTTL, shorter in tests.
	lockTTL time.Duration
	// client is clientTag(cfg.ClientID): the app a remembered refusal is of.
	client string

	mu      sync.Mutex
	cache   map[string]pair
	flights map[string]*flight
	pending map[string]*pendingPair
	// flushing: the flusher goroutine runs (it runs while pending is not
	// empty, and not after Close). closed: Close was called.
	flushing bool
	closed   bool
	closing  chan struct{} // closed by Close
	flushers sync.WaitGroup
}

// OAuthConfig configures OAuth.
type OAuthConfig struct {
	Redis redis.UniversalClient
	// TokenURL is the token endpoint, e.g. https://services.leadconnectorhq.com/oauth/token.
	TokenURL     string
	ClientID     string
	ClientSecret string
	// Key encrypts tokens at rest: 32 bytes (see ParseKey).
	Key []byte
	// HTTP defaults to a client with a 20 s timeout.
	HTTP *http.Client
	// RefreshBefore: refresh when an access token has less than this left,
	// capped at half its lifetime. Defaults to RefreshBeforeDefault.
	RefreshBefore time.Duration
	// Refresh401Cooldown: after a refresh a 401 triggered, a 401 on the
	// current access token gets ErrRefreshDidNotCure instead of another
	// refresh for this long, on every worker (the time is kept in Redis).
	// Refreshes near expiry are not affected. Zero means RefreshOn401Cooldown.
	Refresh401Cooldown time.Duration
	// Company: the pairs are agency (Company) pairs keyed by company id,
	// refreshed with user_type Company and stored apart from location pairs.
	Company bool
	// Observe receives refresh results: ok, lost_race, invalid_grant,
	// inactive, error, and stored_late: a refreshed pair that could not be
	// stored at once (observed as error then) was stored later, by the
	// flusher, Close, or a later call.
	Observe func(result string)
}

// Defaults.
const (
	RefreshBeforeDefault = 10 * time.Minute
	// RefreshOn401Cooldown is the default OAuthConfig.Refresh401Cooldown.
	RefreshOn401Cooldown = 10 * time.Minute
	lockTTL              = 60 * time.Second // longer than refreshTimeout
	peerWait             = 30 * time.Second
	// refreshTimeout bounds a refresh from taking the lock to storing the
	// new pair; it runs detached from the caller's context. It is longer
	// than the default HTTP timeout plus the store's retries.
	refreshTimeout = 45 * time.Second
	releaseTimeout = 5 * time.Second
	// The flusher tries to store pending pairs flushEvery after the last
	// try, backing off to flushMost while Redis fails (both at most a third
	// of the lock's TTL, so that it extends the lock in time); a try is
	// bounded by flushTimeout, Close's last one by closeTimeout.
	flushEvery   = 2 * time.Second
	flushMost    = 10 * time.Second
	flushTimeout = 5 * time.Second
	closeTimeout = 5 * time.Second
	// After an invalid_grant, the stored pair is read every grantPollEvery
	// for up to grantPoll, in case a peer stores the pair it holds pending.
	grantPoll      = 5 * time.Second
	grantPollEvery = 100 * time.Millisecond
	// storeTries and storeBackoff: a refreshed pair is stored with up to
	// storeTries tries, storeBackoff apart, doubling (0.2+0.4+0.8+1.6 s).
	storeTries   = 5
	storeBackoff = 200 * time.Millisecond
)

// ErrRefreshDidNotCure means HighLevel refused the current access token
// although a refresh after an earlier 401 replaced it within the cooldown
// (OAuthConfig.Refresh401Cooldown): another refresh would not help, and
// would rotate the refresh token once per task.
var ErrRefreshDidNotCure = errors.New("a freshly refreshed token was refused too: the token has no access to this location or lacks a scope; check the app install and the location id")

// GrantError is a refresh HighLevel refused for good: the location needs an
// operator (reinstall the app, or reactivate the sub-account).
type GrantError struct {
	Reason  string // invalid_grant or location_inactive
	Message string
	// Agency: the refused pair is the agency's (Company) pair.
	Agency bool
}

func (e *GrantError) Error() string {
	hint := "reinstall the app for this location, then load the new pair with `enqueue tokens set --replace` " +
		"(or, if the agency's app covers it, remove the pair with `enqueue tokens delete --location L`: its token is then minted from the agency)"
	switch {
	case e.Agency:
		hint = "the agency's grant is revoked or spent: install the app again at agency level, then load its new pair with `enqueue tokens agency set --replace`"
	case e.Reason == "location_inactive":
		hint = "the sub-account is paused; reactivate it, then requeue its dead letters"
	}
	return fmt.Sprintf("token refresh refused (%s): %s; %s", e.Reason, e.Message, hint)
}

type pair struct {
	Access  string `json:"a"`
	Refresh string `json:"r"`
	exp     time.Time
	life    time.Duration
	gen     int64
	// r401 is when a 401 last triggered a refresh of the location (zero:
	// never since the pair was Set).
	r401 time.Time
	// refused is HighLevel's refusal of this generation's refresh token,
	// remembered (nil: none).
	refused *refusal
}

// refusal is a refresh HighLevel refused for good, remembered on the
// stored pair ("refused": gen|unix ms|client|reason|message), so that every task
// of the location fails at once instead of calling the token endpoint with
// a refresh token known to be dead and waiting grantPoll for a peer: one
// dead pair used to hold every worker slot it reached for 5 s, slowing
// every other location (an audit measured 10 s becoming 61 s). A new pair
// (tokens set, a refresh stored) clears it; location_inactive is honoured
// for refusedInactiveFor only (reactivating the sub-account cures it).
// It answers only for the app (GHL_CLIENT_ID) that was refused: HighLevel
// answers invalid_grant to a refresh token sent by another client too, and
// one worker started with another app's id (a canary, staging settings)
// must not disable a pair every other worker can refresh.
type refusal struct {
	gen     int64
	at      time.Time
	client  string // clientTag of the app refused
	reason  string
	message string
}

// clientTag names a client id in a refusal without writing it out.
func clientTag(id string) string {
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:6])
}

// refusedInactiveFor is how long a remembered location_inactive stands.
const refusedInactiveFor = time.Minute

// standing: the refusal still answers for p, asked by client (a clientTag).
func (r *refusal) standing(p pair, client string) bool {
	if r == nil || r.gen != p.gen || r.client != client {
		return false
	}
	return r.reason == "invalid_grant" || time.Since(r.at) < refusedInactiveFor
}

func parseRefusal(v any) *refusal {
	s, _ := v.(string)
	parts := strings.SplitN(s, "|", 5)
	if len(parts) != 5 {
		return nil
	}
	gen, err1 := strconv.ParseInt(parts[0], 10, 64)
	ms, err2 := strconv.ParseInt(parts[1], 10, 64)
	if err1 != nil || err2 != nil {
		return nil
	}
	return &refusal{gen: gen, at: time.UnixMilli(ms), client: parts[2], reason: parts[3], message: parts[4]}
}

// rememberRefusal: KEYS the record; ARGV gen, the refusal. Only while the
// refused generation is stored.
var rememberRefusal = redis.NewScript(`
if redis.call("HGET", KEYS[1], "gen") ~= ARGV[1] then return 0 end
redis.call("HSET", KEYS[1], "refused", ARGV[2])
return 1`)

// grantError is the remembered refusal as the refresh's error.
func (o *OAuth) grantError(r *refusal) error {
	return &GrantError{Reason: r.reason, Message: r.message + " (remembered from " + r.at.UTC().Format(time.RFC3339) + ")", Agency: o.cfg.Company}
}

type flight struct {
	done   chan struct{}
	access string
	err    error
	// abandoned: the leader's caller gave up before the refresh began;
	// callers still waiting lead one of their own.
	abandoned bool
}

// pendingPair is a refreshed pair that could not be stored. HighLevel has
// spent the stored refresh token, so it is the only pair that works: it is
// kept sealed as at rest, with what store needs, until a later call stores it.
type pendingPair struct {
	ct      string // seal(location, the pair)
	meta    pair   // gen (stored over gen-1), exp, life, r401; no tokens
	lockVal string // the location's lock, kept until the pair is stored
}

// ParseKey reads a 32-byte key given as 64 hex digits or base64.
func ParseKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if b, err := hex.DecodeString(s); err == nil && len(b) == 32 {
		return b, nil
	}
	if b, err := base64.StdEncoding.DecodeString(s); err == nil && len(b) == 32 {
		return b, nil
	}
	return nil, errors.New("token key: want 32 bytes as 64 hex digits or base64 (e.g. `openssl rand -hex 32`)")
}

// newAEAD is AES-256-GCM with key.
func newAEAD(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// NewHTTPClient is the token endpoints' default client: the message
// client's (ghl.NewHTTPClient: redirects not followed) with a 20 s timeout
// and a few idle connections. A redirect is a base URL that is not
// HighLevel's (http:// for https://, a proxy): its answer is read as
// misrouted, naming GHL_BASE_URL, where following it turned a POST into a
// GET (301, 302) or hid the misconfiguration (307, 308), and counted one
// call twice.
func NewHTTPClient() *http.Client { return ghl.NewHTTPClient(20*time.Second, 4) }

// NewOAuth builds the source.
func NewOAuth(cfg OAuthConfig) (*OAuth, error) {
	if cfg.Redis == nil {
		return nil, errors.New("oauth: Redis is required")
	}
	aead, err := newAEAD(cfg.Key)
	if err != nil {
		return nil, fmt.Errorf("oauth: token key: %w", err)
	}
	if cfg.HTTP == nil {
		cfg.HTTP = NewHTTPClient()
	}
	cfg.RefreshBefore = cmp.Or(cfg.RefreshBefore, RefreshBeforeDefault)
	cfg.Refresh401Cooldown = cmp.Or(cfg.Refresh401Cooldown, RefreshOn401Cooldown)
	return &OAuth{cfg: cfg, aead: aead, lockTTL: lockTTL, client: clientTag(cfg.ClientID), cache: map[string]pair{}, flights: map[string]*flight{},
		pending: map[string]*pendingPair{}, closing: make(chan struct{})}, nil
}

func recordKey(loc string) string { return "ghlcancel:oauth:{" + loc + "}" }
func lockKey(loc string) string   { return "ghlcancel:oauth:{" + loc + "}:lock" }

// agencyPairKey holds an agency (Company) pair; the company id has a hash
// tag of its own, apart from location pairs (see Locations).
func agencyPairKey(company string) string { return "ghlcancel:agency:oauth:{" + company + "}" }

func (o *OAuth) recordKey(subject string) string {
	if o.cfg.Company {
		return agencyPairKey(subject)
	}
	return recordKey(subject)
}

func (o *OAuth) lockKey(subject string) string { return o.recordKey(subject) + ":lock" }

// fresh reports whether p's access token can be used now.
func (o *OAuth) fresh(p pair) bool {
	if p.Access == "" {
		return false
	}
	before := o.cfg.RefreshBefore
	if p.life > 0 {
		before = min(before, p.life/2)
	}
	return time.Until(p.exp) > before
}

// Token returns a fresh access token for the location, refreshing it first
// when it is near expiry.
func (o *OAuth) Token(ctx context.Context, location string) (string, error) {
	if q, st, err := o.flushPending(ctx, location); st == pendingHeld {
		if !o.fresh(q) {
			return "", pendingError(err)
		}
		return q.Access, nil
	}
	o.mu.Lock()
	p, ok := o.cache[location]
	o.mu.Unlock()
	if ok && o.fresh(p) {
		return p.Access, nil
	}
	p, found, err := o.load(ctx, location)
	if err != nil {
		return "", err
	}
	if !found {
		return "", ErrNoToken
	}
	o.remember(location, p)
	if o.fresh(p) {
		return p.Access, nil
	}
	if p.refused.standing(p, o.client) {
		return "", o.grantError(p.refused)
	}
	return o.refresh(ctx, location, p.gen, false)
}

// Refresher is a Source that can replace a token HighLevel refused.
type Refresher interface {
	Source
	Refresh(ctx context.Context, location, refused string) (string, error)
}

// Refresh is called after a 401 with the token that was refused: unless
// another worker refreshed meanwhile, the pair is refreshed now. If the
// refused token is the current one and a 401 already triggered a refresh
// within the cooldown, it returns ErrRefreshDidNotCure instead.
func (o *OAuth) Refresh(ctx context.Context, location, refused string) (string, error) {
	if q, st, err := o.flushPending(ctx, location); st == pendingHeld {
		if q.Access == refused || !o.fresh(q) {
			return "", pendingError(err)
		}
		return q.Access, nil
	}
	p, found, err := o.load(ctx, location)
	if err != nil {
		return "", err
	}
	if !found {
		// Deleted (tokens delete) while this process held its token: the
		// cached one must not answer Token any more.
		o.mu.Lock()
		delete(o.cache, location)
		o.mu.Unlock()
		return "", ErrNoToken
	}
	if p.Access != refused && o.fresh(p) {
		o.remember(location, p)
		return p.Access, nil
	}
	// Only the 401 calls for this refresh (a token near expiry is refreshed
	// anyway): at most one per cooldown, shared by every worker.
	on401 := p.Access == refused && o.fresh(p)
	if on401 && !p.r401.IsZero() && time.Since(p.r401) < o.cfg.Refresh401Cooldown {
		o.remember(location, p)
		return "", ErrRefreshDidNotCure
	}
	if p.refused.standing(p, o.client) {
		return "", o.grantError(p.refused)
	}
	return o.refresh(ctx, location, p.gen, on401)
}

func (o *OAuth) remember(location string, p pair) {
	o.mu.Lock()
	if cur, ok := o.cache[location]; !ok || p.gen >= cur.gen {
		o.cache[location] = p
	}
	o.mu.Unlock()
}

// refresh is single-flight in this process; refreshShared makes it so
// across processes. Callers waiting on another caller's flight give up on
// their own context; the leader waits for its refresh to finish (bounded by
// refreshTimeout), so a worker shutting down waits for it too.
func (o *OAuth) refresh(ctx context.Context, location string, staleGen int64, on401 bool) (string, error) {
	return singleFlight(ctx, &o.mu, o.flights, location, func() (string, error) {
		return o.refreshShared(ctx, location, staleGen, on401)
	})
}

// singleFlight runs run for key unless a flight for it is under way in this
// process (flights, guarded by mu), and then shares its result. A waiter
// whose leader's caller gave up (its context ended first) leads a flight
// of its own.
func singleFlight(ctx context.Context, mu *sync.Mutex, flights map[string]*flight, key string, run func() (string, error)) (string, error) {
	for {
		mu.Lock()
		f, ok := flights[key]
		if !ok {
			f = &flight{done: make(chan struct{})}
			flights[key] = f
			mu.Unlock()
			f.access, f.err = run()
			f.abandoned = f.err != nil && ctx.Err() != nil && errors.Is(f.err, ctx.Err())
			mu.Lock()
			delete(flights, key)
			mu.Unlock()
			close(f.done)
			return f.access, f.err
		}
		mu.Unlock()
		select {
		case <-f.done:
			if f.abandoned && ctx.Err() == nil {
				continue // the leader's caller gave up, not us
			}
			return f.access, f.err
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
}

var releaseLock = redis.NewScript(`
if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end
return 0`)

// casStore writes a pair only if the stored generation is still ARGV[1];
// ARGV[6], unless 0, is the unix-ms time of a refresh a 401 triggered.
var casStore = redis.NewScript(`
local g = tonumber(redis.call("HGET", KEYS[1], "gen") or "0")
if g ~= tonumber(ARGV[1]) then return 0 end
redis.call("HSET", KEYS[1], "gen", ARGV[2], "exp", ARGV[3], "life", ARGV[4], "ct", ARGV[5])
redis.call("HDEL", KEYS[1], "refused")
if ARGV[6] ~= "0" then redis.call("HSET", KEYS[1], "r401", ARGV[6]) end
return 1`)

func (o *OAuth) refreshShared(ctx context.Context, location string, staleGen int64, on401 bool) (string, error) {
	deadline := time.Now().Add(peerWait)
	owner := make([]byte, 16)
	_, _ = rand.Read(owner)
	lockVal := hex.EncodeToString(owner)
	for time.Now().Before(deadline) {
		if err := ctx.Err(); err != nil {
			return "", err // gave up before the refresh began
		}
		access, owned, err := o.lockAndRefresh(ctx, location, lockVal, staleGen, on401)
		if owned || err != nil {
			return access, err
		}
		// Someone else is refreshing: wait for the new generation.
		for time.Now().Before(deadline) {
			p, found, err := o.load(ctx, location)
			if err != nil {
				return "", err
			}
			if found && p.gen != staleGen && p.Access != "" {
				o.remember(location, p)
				o.observe("lost_race")
				return p.Access, nil
			}
			if n, _ := o.cfg.Redis.Exists(ctx, o.lockKey(location)).Result(); n == 0 {
				break // the holder gave up or died: try to take the lock
			}
			select {
			case <-time.After(20 * time.Millisecond):
			case <-ctx.Done():
				return "", ctx.Err()
			}
		}
	}
	o.observe("error")
	return "", errors.New("oauth: timed out waiting for another worker's token refresh")
}

// lockAndRefresh takes the location's lock and, if it got it, refreshes.
// From taking the lock to storing the new pair and releasing the lock, it
// runs detached from ctx, bounded by refreshTimeout.
func (o *OAuth) lockAndRefresh(ctx context.Context, location, lockVal string, staleGen int64, on401 bool) (access string, owned bool, err error) {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), refreshTimeout)
	defer cancel()
	got, err := o.cfg.Redis.SetArgs(dctx, o.lockKey(location), lockVal, redis.SetArgs{Mode: "NX", TTL: o.lockTTL}).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return "", false, fmt.Errorf("oauth: lock: %w", err)
	}
	if got != "OK" {
		return "", false, nil
	}
	access, keepLock, err := o.refreshOwned(dctx, location, lockVal, staleGen, on401)
	if !keepLock {
		o.releaseLock(ctx, location, lockVal)
	}
	return access, true, err
}

// releaseLock releases the location's lock if lockVal still holds it, on a
// context detached from ctx.
func (o *OAuth) releaseLock(ctx context.Context, location, lockVal string) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	_ = releaseLock.Run(rctx, o.cfg.Redis, []string{o.lockKey(location)}, lockVal).Err()
}

// refreshOwned runs with the lock held, on a context detached from the
// caller's. keepLock reports that the new pair is pending (not stored): the
// lock is then kept (by the flusher) until the pair is stored, so that no
// peer spends the stored refresh token, which HighLevel has already spent.
func (o *OAuth) refreshOwned(ctx context.Context, location, lockVal string, staleGen int64, on401 bool) (access string, keepLock bool, err error) {
	// Never refresh a pair whose successor is pending: store that instead.
	switch q, st, err := o.flushPending(ctx, location); {
	case st == pendingHeld && o.fresh(q):
		return q.Access, false, nil
	case st == pendingHeld:
		return "", false, pendingError(err)
	case st == pendingStored && o.fresh(q):
		return q.Access, false, nil
	}
	p, found, err := o.load(ctx, location)
	if err != nil {
		return "", false, err
	}
	if !found {
		return "", false, ErrNoToken
	}
	if p.gen != staleGen && o.fresh(p) { // refreshed while we queued for the lock
		o.remember(location, p)
		o.observe("lost_race")
		return p.Access, false, nil
	}
	if p.refused.standing(p, o.client) { // a peer was refused while we queued
		return "", false, o.grantError(p.refused)
	}
	next, err := o.callTokenEndpoint(ctx, p.Refresh)
	if err != nil {
		var ge *GrantError
		if errors.As(err, &ge) {
			// A peer whose lock expired mid-call may have won, or may hold
			// the successor pending (it spent the stored refresh token, but
			// could not store the new pair before its lock expired): wait a
			// moment for it. The lock is released first: the stored refresh
			// token is spent, so peers may find that out concurrently.
			wait := time.Duration(0)
			if ge.Reason == "invalid_grant" {
				o.releaseLock(ctx, location, lockVal)
				wait = grantPoll
			}
			if q, ok := o.awaitNewer(ctx, location, p.gen, wait); ok {
				if !o.fresh(q) {
					o.observe("error")
					return "", false, errors.New("oauth: the stored token pair was replaced during a refresh; try again")
				}
				o.remember(location, q)
				o.observe("lost_race")
				return q.Access, false, nil
			}
			o.observe(map[string]string{"invalid_grant": "invalid_grant", "location_inactive": "inactive"}[ge.Reason])
			memo := fmt.Sprintf("%d|%d|%s|%s|%s", p.gen, time.Now().UnixMilli(), o.client, ge.Reason, strings.ReplaceAll(truncateMsg(ge.Message), "|", "/"))
			_ = rememberRefusal.Run(ctx, o.cfg.Redis, []string{o.recordKey(location)}, p.gen, memo).Err() // best effort
			return "", false, err
		}
		o.observe("error")
		return "", false, err
	}
	// From here on p.Refresh is spent at HighLevel: next must not be lost.
	next.gen = p.gen + 1
	if on401 {
		next.r401 = time.Now()
	} else {
		next.r401 = p.r401
	}
	ct, err := o.seal(location, next)
	if err != nil {
		o.observe("error")
		return "", false, err
	}
	ok, err := o.storeRetrying(ctx, location, ct, next, p.gen)
	if err != nil {
		// Its access token is valid: use it, and store the pair later.
		o.mu.Lock()
		o.pending[location] = &pendingPair{ct: ct, meta: pair{exp: next.exp, life: next.life, gen: next.gen, r401: next.r401}, lockVal: lockVal}
		o.startFlusherLocked()
		o.mu.Unlock()
		o.observe("error")
		return next.Access, true, nil
	}
	if !ok { // fenced out: someone stored a newer pair; use it
		q, found, err := o.load(ctx, location)
		if err != nil || !found {
			return "", false, cmp.Or(err, ErrNoToken)
		}
		o.remember(location, q)
		if q.gen == next.gen && q.Access == next.Access {
			o.observe("ok") // an earlier try was stored, its reply lost
		} else {
			o.observe("lost_race")
		}
		if !o.fresh(q) {
			// The pair stored meanwhile (`enqueue tokens set --replace`)
			// has no usable access token yet (a bare refresh token is
			// refreshed on first use). The one this refresh got is valid:
			// use it now; the stored pair is refreshed when it is due.
			return next.Access, false, nil
		}
		return q.Access, false, nil
	}
	o.remember(location, next)
	o.observe("ok")
	return next.Access, false, nil
}

// awaitNewer reads the stored pair until its generation is no longer gen,
// for up to wait (once if wait is 0), ignoring read errors.
func (o *OAuth) awaitNewer(ctx context.Context, location string, gen int64, wait time.Duration) (pair, bool) {
	deadline := time.Now().Add(wait)
	for {
		if q, ok, err := o.load(ctx, location); err == nil && ok && q.gen != gen {
			return q, true
		}
		if !time.Now().Before(deadline) {
			return pair{}, false
		}
		select {
		case <-time.After(grantPollEvery):
		case <-ctx.Done():
			return pair{}, false
		}
	}
}

// storeRetrying stores a refreshed pair, sealed as ct, trying storeTries
// times while Redis fails. Being fenced out is an answer, not retried.
func (o *OAuth) storeRetrying(ctx context.Context, location, ct string, p pair, expectGen int64) (bool, error) {
	backoff := storeBackoff
	for try := 1; ; try++ {
		ok, err := o.store(ctx, location, ct, p, expectGen)
		if err == nil || try == storeTries {
			return ok, err
		}
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return false, err
		}
		backoff *= 2
	}
}

// pendingState is what flushPending found.
type pendingState int

const (
	noPending     pendingState = iota // none, or one superseded by a newer stored pair
	pendingStored                     // stored now
	pendingHeld                       // still not stored: nothing may be refreshed
)

// flushPending tries to store the location's pending pair, if any, and
// returns it (pendingStored, pendingHeld) with, when held, why it could not
// be stored. A held pair's access token is valid while fresh.
func (o *OAuth) flushPending(ctx context.Context, location string) (pair, pendingState, error) {
	o.mu.Lock()
	pd, ok := o.pending[location]
	o.mu.Unlock()
	if !ok {
		return pair{}, noPending, nil
	}
	p, err := o.open(location, pd.ct)
	if err != nil {
		return pair{}, pendingHeld, err
	}
	p.gen, p.exp, p.life, p.r401 = pd.meta.gen, pd.meta.exp, pd.meta.life, pd.meta.r401
	stored, err := o.store(ctx, location, pd.ct, p, p.gen-1)
	if err != nil {
		return p, pendingHeld, err
	}
	o.mu.Lock()
	mine := o.pending[location] == pd // concurrent flushes: one observes
	if mine {
		delete(o.pending, location)
	}
	o.mu.Unlock()
	if mine {
		o.releaseLock(ctx, location, pd.lockVal)
	}
	if !stored {
		// The record moved on: a new pair was Set, or an earlier try of ours
		// was stored though its reply was lost.
		q, found, err := o.load(ctx, location)
		if err != nil || !found || q.gen != p.gen || q.Access != p.Access {
			return pair{}, noPending, nil
		}
		p = q
	}
	o.remember(location, p)
	if mine {
		o.observe("stored_late")
	}
	return p, pendingStored, nil
}

// startFlusherLocked starts the flusher unless it runs or Close was called.
// o.mu is held.
func (o *OAuth) startFlusherLocked() {
	if o.flushing || o.closed {
		return
	}
	o.flushing = true
	o.flushers.Add(1)
	go o.flushLoop()
}

// flushLoop stores pending pairs and keeps their locks until none is left
// (or Close is called), trying every flushEvery, backing off to flushMost
// while pairs stay unstored.
func (o *OAuth) flushLoop() {
	defer o.flushers.Done()
	every, most := min(flushEvery, o.lockTTL/3), min(flushMost, o.lockTTL/3)
	wait := every
	for {
		select {
		case <-time.After(wait):
		case <-o.closing:
			o.mu.Lock()
			o.flushing = false
			o.mu.Unlock()
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), flushTimeout)
		held := o.flushAll(ctx, true)
		cancel()
		o.mu.Lock()
		if len(o.pending) == 0 {
			o.flushing = false
			o.mu.Unlock()
			return
		}
		o.mu.Unlock()
		if held > 0 {
			wait = min(2*wait, most)
		} else {
			wait = every // a pair pending since this pass
		}
	}
}

// flushAll tries to store every pending pair and, if hold, keeps the locks
// of those still not stored. It returns how many are still not stored.
func (o *OAuth) flushAll(ctx context.Context, hold bool) int {
	o.mu.Lock()
	locs := make([]string, 0, len(o.pending))
	for loc := range o.pending {
		locs = append(locs, loc)
	}
	o.mu.Unlock()
	held := 0
	for _, loc := range locs {
		if _, st, _ := o.flushPending(ctx, loc); st != pendingHeld {
			continue
		}
		held++
		if hold {
			o.holdLock(ctx, loc)
		}
	}
	return held
}

// holdLockScript keeps a pending pair's lock: KEYS[1] the lock, KEYS[2] the
// record, ARGV[1] the pair's lock value, ARGV[2] the TTL in ms, ARGV[3] the
// pair's generation. Once the record has that generation the pair is stored
// or superseded, and the lock is left alone (0). Otherwise the lock is
// extended if it is ours (1), taken again if it is gone, e.g. expired or
// lost in a Redis restart (2), and left to the peer that holds it (-1).
var holdLockScript = redis.NewScript(`
local g = tonumber(redis.call("HGET", KEYS[2], "gen") or "0")
if g >= tonumber(ARGV[3]) then return 0 end
local v = redis.call("GET", KEYS[1])
if v == ARGV[1] then
  redis.call("PEXPIRE", KEYS[1], ARGV[2])
  return 1
end
if not v then
  redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2])
  return 2
end
return -1`)

// holdLock extends or takes again the lock of the location's pending pair.
func (o *OAuth) holdLock(ctx context.Context, location string) {
	o.mu.Lock()
	pd := o.pending[location]
	o.mu.Unlock()
	if pd == nil {
		return
	}
	_ = holdLockScript.Run(ctx, o.cfg.Redis, []string{o.lockKey(location), o.recordKey(location)},
		pd.lockVal, o.lockTTL.Milliseconds(), pd.meta.gen).Err()
}

// Close stops the flusher and tries once more, for up to closeTimeout, to
// store the pairs still pending; call it when the worker shuts down, after
// its tasks finished and before its Redis client is closed. It returns an
// error naming the locations whose refreshed pair is still not stored: it
// lives only in this process, and HighLevel has spent the stored refresh
// token, so once the process exits those locations need their pair loaded
// again. Token and Refresh still work after Close, without a flusher.
func (o *OAuth) Close() error {
	o.mu.Lock()
	if !o.closed {
		o.closed = true
		close(o.closing)
	}
	o.mu.Unlock()
	o.flushers.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	if o.flushAll(ctx, false) == 0 {
		return nil
	}
	o.mu.Lock()
	locs := make([]string, 0, len(o.pending))
	for loc := range o.pending {
		locs = append(locs, loc)
	}
	o.mu.Unlock()
	slices.Sort(locs)
	return fmt.Errorf("oauth: refreshed token pairs could not be stored (check Redis) and are lost when this process exits, for locations %s: reinstall the app there, or load a new pair with `enqueue tokens set --replace`", strings.Join(locs, ", "))
}

// pendingError is returned while a pending pair cannot be stored and its
// access token cannot serve.
func pendingError(storeErr error) error {
	return fmt.Errorf("oauth: a refreshed token pair is waiting to be stored and cannot be refreshed before (its predecessor is spent at HighLevel); check Redis: %w", storeErr)
}

func (o *OAuth) observe(result string) {
	if o.cfg.Observe != nil && result != "" {
		o.cfg.Observe(result)
	}
}

type tokenResponse struct {
	AccessToken  string  `json:"access_token"`
	RefreshToken string  `json:"refresh_token"`
	ExpiresIn    float64 `json:"expires_in"`
}

type tokenError struct {
	Message json.RawMessage `json:"message"`
	Error   string          `json:"error"`
}

func (o *OAuth) userType() string {
	if o.cfg.Company {
		return "Company"
	}
	return "Location"
}

func (o *OAuth) callTokenEndpoint(ctx context.Context, refreshToken string) (pair, error) {
	if o.cfg.TokenURL == "" || o.cfg.ClientID == "" || o.cfg.ClientSecret == "" {
		return pair{}, errors.New("oauth: cannot refresh: set GHL_CLIENT_ID and GHL_CLIENT_SECRET")
	}
	form := url.Values{
		"client_id": {o.cfg.ClientID}, "client_secret": {o.cfg.ClientSecret},
		"grant_type": {"refresh_token"}, "refresh_token": {refreshToken}, "user_type": {o.userType()},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, o.cfg.TokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		return pair{}, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	// The token's life is counted from before the request: HighLevel
	// started it when it issued the token, at some point before the answer
	// arrived, so counting from the answer would overstate what is left.
	sent := time.Now()
	resp, err := o.cfg.HTTP.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // the URL is fine to log, but keep errors uniform
		}
		return pair{}, fmt.Errorf("oauth: POST %s: %w", o.cfg.TokenURL, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	// Not HighLevel's answer (a typo in GHL_BASE_URL, a proxy): nothing
	// was refused, and the refresh token was not spent.
	if e := ghl.Misrouted(resp.StatusCode, resp.Header, body); e != nil {
		e.Request = "POST " + req.URL.Path
		return pair{}, e
	}
	if resp.StatusCode == http.StatusOK {
		var tr tokenResponse
		if err := json.Unmarshal(body, &tr); err != nil || tr.AccessToken == "" || tr.RefreshToken == "" {
			return pair{}, fmt.Errorf("oauth: POST %s: 200 without a token pair", o.cfg.TokenURL)
		}
		life := time.Duration(tr.ExpiresIn * float64(time.Second))
		return pair{Access: tr.AccessToken, Refresh: tr.RefreshToken, exp: sent.Add(life), life: life}, nil
	}
	var te tokenError
	_ = json.Unmarshal(body, &te)
	msg := strings.Trim(string(te.Message), `"[]`)
	lower := strings.ToLower(msg + " " + te.Error)
	switch {
	case resp.StatusCode == http.StatusBadRequest && strings.Contains(lower, "not active"):
		return pair{}, &GrantError{Reason: "location_inactive", Message: msg, Agency: o.cfg.Company}
	case resp.StatusCode == http.StatusBadRequest || resp.StatusCode == http.StatusUnauthorized:
		if strings.Contains(lower, "grant") || strings.Contains(lower, "refresh token") {
			return pair{}, &GrantError{Reason: "invalid_grant", Message: msg, Agency: o.cfg.Company}
		}
	}
	return pair{}, fmt.Errorf("oauth: POST %s: %d: %s", o.cfg.TokenURL, resp.StatusCode, msg)
}

// load reads and decrypts the stored pair.
func (o *OAuth) load(ctx context.Context, location string) (pair, bool, error) {
	vals, err := o.cfg.Redis.HMGet(ctx, o.recordKey(location), "gen", "exp", "life", "ct", "r401", "refused").Result()
	if err != nil {
		return pair{}, false, fmt.Errorf("oauth: read tokens: %w", err)
	}
	ct, _ := vals[3].(string)
	if ct == "" {
		return pair{}, false, nil
	}
	p, err := o.open(location, ct)
	if err != nil {
		return pair{}, false, err
	}
	p.gen = atoi(vals[0])
	p.exp = time.UnixMilli(atoi(vals[1]))
	p.life = time.Duration(atoi(vals[2])) * time.Millisecond
	if ms := atoi(vals[4]); ms > 0 {
		p.r401 = time.UnixMilli(ms)
	}
	p.refused = parseRefusal(vals[5])
	return p, true, nil
}

// open decrypts a pair sealed by seal (its tokens only).
func (o *OAuth) open(location, ct string) (pair, error) {
	var p pair
	err := openJSON(o.aead, o.ad(location), ct, &p, "oauth: stored tokens")
	return p, err
}

// sealJSON encrypts v's JSON with aead and ad, as base64(nonce|ciphertext).
func sealJSON(aead cipher.AEAD, ad []byte, v any) (string, error) {
	plain, err := json.Marshal(v)
	if err != nil {
		return "", err
	}
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(aead.Seal(nonce, nonce, plain, ad)), nil
}

// ErrWrongKey: stored tokens do not decrypt with this process's
// GHL_TOKEN_KEY. Trying again changes nothing until the key (or the stored
// pair) is fixed: tasks dead-letter it (token_key) instead of retrying for
// a day.
var ErrWrongKey = errors.New("do not decrypt: wrong GHL_TOKEN_KEY? (the workers' key must be the one `enqueue tokens set` used)")

// openJSON decrypts what sealJSON wrote into v; errors name what (never the
// content).
func openJSON(aead cipher.AEAD, ad []byte, ct string, v any, what string) error {
	raw, err := base64.StdEncoding.DecodeString(ct)
	if err != nil || len(raw) < aead.NonceSize() {
		return errors.New(what + " are corrupt")
	}
	plain, err := aead.Open(nil, raw[:aead.NonceSize()], raw[aead.NonceSize():], ad)
	if err != nil {
		return fmt.Errorf("%s %w", what, ErrWrongKey)
	}
	if err := json.Unmarshal(plain, v); err != nil {
		return errors.New(what + " are corrupt")
	}
	return nil
}

func atoi(v any) int64 {
	s, _ := v.(string)
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}

// ad is the associated data a subject's pair is sealed with: a pair cannot
// be moved to another location, nor between a company and a location.
func (o *OAuth) ad(subject string) []byte {
	if o.cfg.Company {
		return []byte("company:" + subject)
	}
	return []byte(subject)
}

func (o *OAuth) seal(location string, p pair) (string, error) {
	return sealJSON(o.aead, o.ad(location), p)
}

// store writes p, sealed as ct, if the stored generation is still expectGen.
func (o *OAuth) store(ctx context.Context, location, ct string, p pair, expectGen int64) (bool, error) {
	var r401 int64
	if !p.r401.IsZero() {
		r401 = p.r401.UnixMilli()
	}
	n, err := casStore.Run(ctx, o.cfg.Redis, []string{o.recordKey(location)}, expectGen, p.gen,
		p.exp.UnixMilli(), p.life.Milliseconds(), ct, r401).Int()
	if err != nil {
		return false, fmt.Errorf("oauth: store tokens: %w", err)
	}
	return n == 1, nil
}

// setStore replaces a pair unconditionally, bumping the generation; a new
// pair starts without a 401 cooldown.
var setStore = redis.NewScript(`
local g = redis.call("HINCRBY", KEYS[1], "gen", 1)
redis.call("HSET", KEYS[1], "exp", ARGV[1], "life", ARGV[2], "ct", ARGV[3])
redis.call("HDEL", KEYS[1], "r401", "refused")
redis.call("PERSIST", KEYS[1]) -- over a deleted pair's marker (DeletePair)
return g`)

// deleteStore drops a pair's tokens but keeps its generation, one higher,
// for a day: a refresh in flight (or a pending pair) is fenced out by it,
// and a pair set again starts above it. Returns 0 when no pair is stored.
var deleteStore = redis.NewScript(`
if redis.call("HEXISTS", KEYS[1], "ct") == 0 then return 0 end
redis.call("HDEL", KEYS[1], "ct", "exp", "life", "r401", "refused")
redis.call("HINCRBY", KEYS[1], "gen", 1)
redis.call("PEXPIRE", KEYS[1], 86400000)
return 1`)

// Set loads a location's pair (from an app install or a manual rotation),
// replacing whatever is stored. An empty access token (or a zero expiry)
// makes the first use refresh. A pair this process refreshed but could not
// store yet is dropped: the new pair supersedes it.
func (o *OAuth) Set(ctx context.Context, location, access, refresh string, expiresIn time.Duration) error {
	if refresh == "" {
		return errors.New("oauth: a refresh token is required")
	}
	p := pair{Access: access, Refresh: refresh, life: expiresIn}
	if access != "" && expiresIn > 0 {
		p.exp = time.Now().Add(expiresIn)
	}
	ct, err := o.seal(location, p)
	if err != nil {
		return err
	}
	if err := setStore.Run(ctx, o.cfg.Redis, []string{o.recordKey(location)}, p.exp.UnixMilli(), p.life.Milliseconds(), ct).Err(); err != nil {
		return fmt.Errorf("oauth: store tokens: %w", err)
	}
	o.mu.Lock()
	delete(o.cache, location)
	pd := o.pending[location]
	delete(o.pending, location)
	o.mu.Unlock()
	if pd != nil {
		o.releaseLock(ctx, location, pd.lockVal)
	}
	return nil
}

// Stored says whether a pair is stored for location (for the agency's
// OAuth, the company).
func (o *OAuth) Stored(ctx context.Context, location string) (bool, error) {
	ok, err := o.cfg.Redis.HExists(ctx, o.recordKey(location), "ct").Result()
	if err != nil {
		return false, fmt.Errorf("oauth: read tokens: %w", err)
	}
	return ok, nil
}

// DeletePair removes location's stored OAuth pair; false when there was
// none. Its cancels then take the next source (GHL_TOKENS_FILE is asked
// first anyway; then the agency's minted token). A worker holding the
// pair's access token in memory uses it until it is due for a refresh,
// which then finds no pair.
func DeletePair(ctx context.Context, rdb redis.UniversalClient, location string) (bool, error) {
	n, err := deleteStore.Run(ctx, rdb, []string{recordKey(location)}).Int()
	if err != nil {
		return false, fmt.Errorf("oauth: delete tokens: %w", err)
	}
	return n == 1, nil
}

// Opens reports whether the pair stored for subject (a location; for the
// agency's OAuth, the company) decrypts with this OAuth's key: nil when it
// does or there is none, ErrWrongKey (wrapped) when it was sealed with
// another.
func (o *OAuth) Opens(ctx context.Context, subject string) error {
	_, _, err := o.load(ctx, subject)
	return err
}

// Locations lists locations with stored pairs and their access expiry.
func Locations(ctx context.Context, rdb redis.UniversalClient) (map[string]time.Time, error) {
	out := map[string]time.Time{}
	err := eachPair(ctx, rdb, func(loc string, exp time.Time) bool {
		out[loc] = exp
		return true
	})
	return out, err
}

// eachPair calls fn with every location that has a stored pair (a SCAN of
// the keyspace), and its access token's expiry, until fn returns false.
func eachPair(ctx context.Context, rdb redis.UniversalClient, fn func(loc string, exp time.Time) bool) error {
	iter := rdb.Scan(ctx, 0, "ghlcancel:oauth:{*}", 1000).Iterator()
	for iter.Next(ctx) {
		k := iter.Val()
		if strings.HasSuffix(k, ":lock") {
			continue
		}
		v := rdb.HMGet(ctx, k, "exp", "ct").Val()
		if len(v) != 2 || v[1] == nil {
			continue // a deleted pair's marker (DeletePair)
		}
		s, _ := v[0].(string)
		if !fn(strings.TrimSuffix(strings.TrimPrefix(k, "ghlcancel:oauth:{"), "}"), time.UnixMilli(atoi(s))) {
			return nil
		}
	}
	return iter.Err()
}

// Refusals returns, for those of locations whose stored pair's refresh was
// refused for good (remembered on the pair), what to tell an operator.
func Refusals(ctx context.Context, rdb redis.UniversalClient, locations []string) (map[string]string, error) {
	pipe := rdb.Pipeline()
	cmds := make([]*redis.SliceCmd, len(locations))
	for i, l := range locations {
		cmds[i] = pipe.HMGet(ctx, recordKey(l), "gen", "refused")
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	out := map[string]string{}
	for i, c := range cmds {
		v := c.Val()
		if len(v) != 2 {
			continue
		}
		r := parseRefusal(v[1])
		if r == nil || r.gen != atoi(v[0]) {
			continue
		}
		note := fmt.Sprintf("REFRESH REFUSED (%s) %s: its cancels are dead-lettered %s until a new pair is loaded (tokens set --replace)",
			r.reason, r.at.UTC().Format(time.RFC3339), r.reason)
		if r.reason != "invalid_grant" {
			note = fmt.Sprintf("refresh refused (%s) %s: asked again a minute later", r.reason, r.at.UTC().Format(time.RFC3339))
		}
		out[locations[i]] = note
	}
	return out, nil
}

// KeyCheckMax bounds the location pairs KeyCheck opens (one read each).
const KeyCheckMax = 200

// KeyCheck opens the agency's pair and up to KeyCheckMax location pairs
// with key: how many opened, how many were sealed with another key, and
// the first of those. A worker whose GHL_TOKEN_KEY opens none is
// misconfigured; some of each is a key rotation half done.
func KeyCheck(ctx context.Context, rdb redis.UniversalClient, key []byte) (opened, wrong int, first string, err error) {
	try := func(o *OAuth, subject, what string) error {
		switch err := o.Opens(ctx, subject); {
		case err == nil:
			opened++
		case errors.Is(err, ErrWrongKey):
			if wrong++; first == "" {
				first = what
			}
		default:
			return err
		}
		return nil
	}
	if ai, ok, err := LoadAgency(ctx, rdb); err != nil {
		return 0, 0, "", err
	} else if ok {
		o, err := NewOAuth(OAuthConfig{Redis: rdb, Key: key, Company: true})
		if err != nil {
			return 0, 0, "", err
		}
		if err := try(o, ai.Company, "the agency's pair (company "+ai.Company+")"); err != nil {
			return 0, 0, "", err
		}
	}
	o, err := NewOAuth(OAuthConfig{Redis: rdb, Key: key})
	if err != nil {
		return 0, 0, "", err
	}
	var locs []string
	if err := eachPair(ctx, rdb, func(loc string, _ time.Time) bool {
		locs = append(locs, loc)
		return len(locs) < KeyCheckMax
	}); err != nil {
		return 0, 0, "", err
	}
	for _, loc := range locs {
		if err := try(o, loc, "location "+loc+"'s pair"); err != nil {
			return 0, 0, "", err
		}
	}
	return opened, wrong, first, nil
}

// AnyStored names what Redis holds that only OAuth settings can use: the
// agency's pair, or a location's pair (the first found: a SCAN of the
// keyspace that stops there); "" when there is none.
func AnyStored(ctx context.Context, rdb redis.UniversalClient) (string, error) {
	if n, err := rdb.Exists(ctx, agencyKey).Result(); err != nil {
		return "", err
	} else if n > 0 {
		if c, _ := rdb.HGet(ctx, agencyKey, "company").Result(); c != "" {
			return "the agency's pair (company " + c + ")", nil
		}
	}
	found := ""
	err := eachPair(ctx, rdb, func(loc string, _ time.Time) bool {
		found = "location " + loc + "'s pair"
		return false
	})
	return found, err
}
