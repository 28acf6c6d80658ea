package tokens

import (
	"cmp"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// OAuth keeps per-location OAuth pairs in Redis, encrypted at rest
// (AES-256-GCM, the location id as associated data), and refreshes access
// tokens before they expire. Refreshes are single-flight across every
// worker: one Redis lock per location decides who calls the token endpoint,
// and a generation number fences the write, so a refresh token (single-use
// at HighLevel) is spent once and the new pair is stored before anyone
// uses it. A worker that loses the race reads the stored pair.
type OAuth struct {
	cfg  OAuthConfig
	aead cipher.AEAD

	mu      sync.Mutex
	cache   map[string]pair
	flights map[string]*flight
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
	// Observe receives refresh results: ok, lost_race, invalid_grant, inactive, error.
	Observe func(result string)
}

// Defaults.
const (
	RefreshBeforeDefault = 10 * time.Minute
	lockTTL              = 60 * time.Second // longer than the HTTP timeout
	peerWait             = 30 * time.Second
)

// GrantError is a refresh HighLevel refused for good: the location needs an
// operator (reinstall the app, or reactivate the sub-account).
type GrantError struct {
	Reason  string // invalid_grant or location_inactive
	Message string
}

func (e *GrantError) Error() string {
	hint := "reinstall the app for this location, then load the new pair with `enqueue tokens set`"
	if e.Reason == "location_inactive" {
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
}

type flight struct {
	done   chan struct{}
	access string
	err    error
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

// NewOAuth builds the source.
func NewOAuth(cfg OAuthConfig) (*OAuth, error) {
	if cfg.Redis == nil {
		return nil, errors.New("oauth: Redis is required")
	}
	block, err := aes.NewCipher(cfg.Key)
	if err != nil {
		return nil, fmt.Errorf("oauth: token key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	if cfg.HTTP == nil {
		cfg.HTTP = &http.Client{Timeout: 20 * time.Second}
	}
	cfg.RefreshBefore = cmp.Or(cfg.RefreshBefore, RefreshBeforeDefault)
	return &OAuth{cfg: cfg, aead: aead, cache: map[string]pair{}, flights: map[string]*flight{}}, nil
}

func recordKey(loc string) string { return "ghlcancel:oauth:{" + loc + "}" }
func lockKey(loc string) string   { return "ghlcancel:oauth:{" + loc + "}:lock" }

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
	return o.refresh(ctx, location, p.gen)
}

// Refresher is a Source that can replace a token HighLevel refused.
type Refresher interface {
	Source
	Refresh(ctx context.Context, location, refused string) (string, error)
}

// Refresh is called after a 401 with the token that was refused: unless
// another worker refreshed meanwhile, the pair is refreshed now.
func (o *OAuth) Refresh(ctx context.Context, location, refused string) (string, error) {
	p, found, err := o.load(ctx, location)
	if err != nil {
		return "", err
	}
	if !found {
		return "", ErrNoToken
	}
	if p.Access != refused && o.fresh(p) {
		o.remember(location, p)
		return p.Access, nil
	}
	return o.refresh(ctx, location, p.gen)
}

func (o *OAuth) remember(location string, p pair) {
	o.mu.Lock()
	if cur, ok := o.cache[location]; !ok || p.gen >= cur.gen {
		o.cache[location] = p
	}
	o.mu.Unlock()
}

// refresh is single-flight in this process; refreshLocked makes it so across processes.
func (o *OAuth) refresh(ctx context.Context, location string, staleGen int64) (string, error) {
	o.mu.Lock()
	if f, ok := o.flights[location]; ok {
		o.mu.Unlock()
		select {
		case <-f.done:
			return f.access, f.err
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	f := &flight{done: make(chan struct{})}
	o.flights[location] = f
	o.mu.Unlock()
	f.access, f.err = o.refreshShared(ctx, location, staleGen)
	o.mu.Lock()
	delete(o.flights, location)
	o.mu.Unlock()
	close(f.done)
	return f.access, f.err
}

var releaseLock = redis.NewScript(`
if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end
return 0`)

// casStore writes a pair only if the stored generation is still ARGV[1].
var casStore = redis.NewScript(`
local g = tonumber(redis.call("HGET", KEYS[1], "gen") or "0")
if g ~= tonumber(ARGV[1]) then return 0 end
redis.call("HSET", KEYS[1], "gen", ARGV[2], "exp", ARGV[3], "life", ARGV[4], "ct", ARGV[5])
return 1`)

func (o *OAuth) refreshShared(ctx context.Context, location string, staleGen int64) (string, error) {
	deadline := time.Now().Add(peerWait)
	owner := make([]byte, 16)
	_, _ = rand.Read(owner)
	lockVal := hex.EncodeToString(owner)
	for time.Now().Before(deadline) {
		got, err := o.cfg.Redis.SetArgs(ctx, lockKey(location), lockVal, redis.SetArgs{Mode: "NX", TTL: lockTTL}).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return "", fmt.Errorf("oauth: lock: %w", err)
		}
		if got == "OK" {
			access, err := o.refreshOwned(ctx, location, staleGen)
			_ = releaseLock.Run(context.WithoutCancel(ctx), o.cfg.Redis, []string{lockKey(location)}, lockVal).Err()
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
			if n, _ := o.cfg.Redis.Exists(ctx, lockKey(location)).Result(); n == 0 {
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

// refreshOwned runs with the lock held.
func (o *OAuth) refreshOwned(ctx context.Context, location string, staleGen int64) (string, error) {
	p, found, err := o.load(ctx, location)
	if err != nil {
		return "", err
	}
	if !found {
		return "", ErrNoToken
	}
	if p.gen != staleGen && o.fresh(p) { // refreshed while we queued for the lock
		o.remember(location, p)
		o.observe("lost_race")
		return p.Access, nil
	}
	next, err := o.callTokenEndpoint(ctx, p.Refresh)
	if err != nil {
		var ge *GrantError
		if errors.As(err, &ge) {
			// A peer whose lock expired mid-call may have won: use its pair.
			if q, ok, _ := o.load(ctx, location); ok && q.gen != p.gen && o.fresh(q) {
				o.remember(location, q)
				o.observe("lost_race")
				return q.Access, nil
			}
			o.observe(map[string]string{"invalid_grant": "invalid_grant", "location_inactive": "inactive"}[ge.Reason])
			return "", err
		}
		o.observe("error")
		return "", err
	}
	next.gen = p.gen + 1
	ok, err := o.store(ctx, location, next, p.gen)
	if err != nil {
		o.observe("error")
		return "", err
	}
	if !ok { // fenced out: someone stored a newer pair; use it
		q, found, err := o.load(ctx, location)
		if err != nil || !found {
			return "", cmp.Or(err, ErrNoToken)
		}
		o.remember(location, q)
		o.observe("lost_race")
		return q.Access, nil
	}
	o.remember(location, next)
	o.observe("ok")
	return next.Access, nil
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

func (o *OAuth) callTokenEndpoint(ctx context.Context, refreshToken string) (pair, error) {
	if o.cfg.TokenURL == "" || o.cfg.ClientID == "" || o.cfg.ClientSecret == "" {
		return pair{}, errors.New("oauth: cannot refresh: set GHL_CLIENT_ID and GHL_CLIENT_SECRET")
	}
	form := url.Values{
		"client_id": {o.cfg.ClientID}, "client_secret": {o.cfg.ClientSecret},
		"grant_type": {"refresh_token"}, "refresh_token": {refreshToken}, "user_type": {"Location"},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, o.cfg.TokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		return pair{}, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
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
	if resp.StatusCode == http.StatusOK {
		var tr tokenResponse
		if err := json.Unmarshal(body, &tr); err != nil || tr.AccessToken == "" || tr.RefreshToken == "" {
			return pair{}, fmt.Errorf("oauth: POST %s: 200 without a token pair", o.cfg.TokenURL)
		}
		life := time.Duration(tr.ExpiresIn * float64(time.Second))
		return pair{Access: tr.AccessToken, Refresh: tr.RefreshToken, exp: time.Now().Add(life), life: life}, nil
	}
	var te tokenError
	_ = json.Unmarshal(body, &te)
	msg := strings.Trim(string(te.Message), `"[]`)
	lower := strings.ToLower(msg + " " + te.Error)
	switch {
	case resp.StatusCode == http.StatusBadRequest && strings.Contains(lower, "not active"):
		return pair{}, &GrantError{Reason: "location_inactive", Message: msg}
	case resp.StatusCode == http.StatusBadRequest || resp.StatusCode == http.StatusUnauthorized:
		if strings.Contains(lower, "grant") || strings.Contains(lower, "refresh token") {
			return pair{}, &GrantError{Reason: "invalid_grant", Message: msg}
		}
	}
	return pair{}, fmt.Errorf("oauth: POST %s: %d: %s", o.cfg.TokenURL, resp.StatusCode, msg)
}

// load reads and decrypts the stored pair.
func (o *OAuth) load(ctx context.Context, location string) (pair, bool, error) {
	vals, err := o.cfg.Redis.HMGet(ctx, recordKey(location), "gen", "exp", "life", "ct").Result()
	if err != nil {
		return pair{}, false, fmt.Errorf("oauth: read tokens: %w", err)
	}
	ct, _ := vals[3].(string)
	if ct == "" {
		return pair{}, false, nil
	}
	raw, err := base64.StdEncoding.DecodeString(ct)
	if err != nil || len(raw) < o.aead.NonceSize() {
		return pair{}, false, errors.New("oauth: stored tokens are corrupt")
	}
	plain, err := o.aead.Open(nil, raw[:o.aead.NonceSize()], raw[o.aead.NonceSize():], []byte(location))
	if err != nil {
		return pair{}, false, errors.New("oauth: stored tokens do not decrypt: wrong GHL_TOKEN_KEY?")
	}
	var p pair
	if err := json.Unmarshal(plain, &p); err != nil {
		return pair{}, false, errors.New("oauth: stored tokens are corrupt")
	}
	p.gen = atoi(vals[0])
	p.exp = time.UnixMilli(atoi(vals[1]))
	p.life = time.Duration(atoi(vals[2])) * time.Millisecond
	return p, true, nil
}

func atoi(v any) int64 {
	s, _ := v.(string)
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}

func (o *OAuth) seal(location string, p pair) (string, error) {
	plain, err := json.Marshal(p)
	if err != nil {
		return "", err
	}
	nonce := make([]byte, o.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(o.aead.Seal(nonce, nonce, plain, []byte(location))), nil
}

// store writes p if the stored generation is still expectGen.
func (o *OAuth) store(ctx context.Context, location string, p pair, expectGen int64) (bool, error) {
	ct, err := o.seal(location, p)
	if err != nil {
		return false, err
	}
	n, err := casStore.Run(ctx, o.cfg.Redis, []string{recordKey(location)}, expectGen, p.gen,
		p.exp.UnixMilli(), p.life.Milliseconds(), ct).Int()
	if err != nil {
		return false, fmt.Errorf("oauth: store tokens: %w", err)
	}
	return n == 1, nil
}

// setStore replaces a pair unconditionally, bumping the generation.
var setStore = redis.NewScript(`
local g = redis.call("HINCRBY", KEYS[1], "gen", 1)
redis.call("HSET", KEYS[1], "exp", ARGV[1], "life", ARGV[2], "ct", ARGV[3])
return g`)

// Set loads a location's pair (from an app install or a manual rotation),
// replacing whatever is stored. An empty access token (or a zero expiry)
// makes the first use refresh.
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
	if err := setStore.Run(ctx, o.cfg.Redis, []string{recordKey(location)}, p.exp.UnixMilli(), p.life.Milliseconds(), ct).Err(); err != nil {
		return fmt.Errorf("oauth: store tokens: %w", err)
	}
	o.mu.Lock()
	delete(o.cache, location)
	o.mu.Unlock()
	return nil
}

// Locations lists locations with stored pairs and their access expiry.
func Locations(ctx context.Context, rdb redis.UniversalClient) (map[string]time.Time, error) {
	out := map[string]time.Time{}
	iter := rdb.Scan(ctx, 0, "ghlcancel:oauth:{*}", 1000).Iterator()
	for iter.Next(ctx) {
		k := iter.Val()
		if strings.HasSuffix(k, ":lock") {
			continue
		}
		loc := strings.TrimSuffix(strings.TrimPrefix(k, "ghlcancel:oauth:{"), "}")
		out[loc] = time.UnixMilli(atoi(rdb.HGet(ctx, k, "exp").Val()))
	}
	return out, iter.Err()
}
