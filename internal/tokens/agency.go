package tokens

import (
	"cmp"
	"context"
	"crypto/cipher"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ghlcancel/ghlcancel/internal/ghl"
)

// Agency mints location tokens from an agency (Company) OAuth pair, for
// the locations that have no token of their own (see Chain).
//
// The agency pair lives in Redis like a location pair (an OAuth with
// Company set: encrypted, refreshed single-flight and fenced). A minted
// location token is cached in this process and, encrypted, in Redis until
// shortly before it expires. Minting is single-flight across every worker:
// one Redis lock per location decides who calls POST /oauth/locationToken;
// the others wait for the token it stores. A generation number fences the
// write. A mint HighLevel refuses, or one that fails, is remembered for
// FailFor: the location's tasks get the same answer meanwhile, and nobody
// calls again before it passes (no retry storm).
//
// Which company, and which app (for the installed-locations listing), is
// read from Redis (`enqueue tokens agency set`); so is the registry of
// locations the app was installed at or uninstalled from (INSTALL and
// UNINSTALL webhooks, `enqueue tokens agency locations`). A location the
// registry says is uninstalled gets ErrNotInstalled-like MintErrors without
// a call.
type Agency struct {
	cfg     AgencyConfig
	aead    cipher.AEAD
	lockTTL time.Duration

	mu      sync.Mutex
	cache   map[string]minted
	flights map[string]*flight
}

// AgencyConfig configures Agency.
type AgencyConfig struct {
	Redis redis.UniversalClient
	// BaseURL of the API, e.g. https://services.leadconnectorhq.com.
	BaseURL string
	// Pairs keeps the agency pair: an OAuth built with Company true.
	Pairs *OAuth
	// Key encrypts minted tokens at rest (the same key as the pairs').
	Key []byte
	// HTTP defaults to a client with a 20 s timeout.
	HTTP *http.Client
	// RemintBefore: a minted token is replaced when less than this is
	// left, capped at half its life. Defaults to RefreshBeforeDefault.
	RemintBefore time.Duration
	// FailFor: after a mint failed, nobody mints for the location again
	// before this has passed. Defaults to MintFailForDefault.
	FailFor time.Duration
	// Refresh401Cooldown: a 401 on a token minted after a 401 within this
	// gets ErrRefreshDidNotCure instead of another mint. Defaults to
	// RefreshOn401Cooldown.
	Refresh401Cooldown time.Duration
	// Pacer admits mint and listing calls against the company's bucket and
	// learns its limit from the answers. Nil: no pacing.
	Pacer CallPacer
	// Observe receives mint results: ok, lost_race, suppressed (a recent
	// failure answered instead), rate_limited, error, and the MintError
	// reasons.
	Observe func(result string)
}

// CallPacer paces calls that are not cancels, by bucket (a company:
// "agency:<companyId>").
type CallPacer interface {
	// Admit waits for the call's turn, or returns an error; one with a
	// SnoozeFor() time.Duration method asks the task to come back later.
	Admit(ctx context.Context, bucket string) error
	// Observe learns from an answer's headers (limits, 429 cool-downs).
	Observe(ctx context.Context, bucket string, h http.Header, status int)
}

// Defaults and versions.
const (
	// AgencyVersion is the Version header of HighLevel's OAuth routes.
	AgencyVersion      = "2021-07-28"
	MintFailForDefault = time.Minute
	mintLockTTL        = lockTTL // longer than a mint (refreshTimeout bounds it)
	mintPoll           = 20 * time.Millisecond
	installedPageMax   = 100
)

// Mint failure reasons (dead-letter reasons and metric labels).
const (
	ReasonNotInstalled     = "not_installed"
	ReasonLocationInactive = "location_inactive"
	ReasonAgencyRevoked    = "agency_revoked"
	ReasonMintRefused      = "mint_refused"
	ReasonMintFailed       = "mint_failed" // transient: 5xx, network
)

// MintError is a location token HighLevel did not mint.
type MintError struct {
	Reason  string
	Message string
	// Temporary failures (5xx, network) are tried again after FailFor;
	// the others need an operator.
	Temporary bool
	// RetryAfter, for a temporary failure, is when the next mint may be
	// tried. A temporary failure is a retry that uses up an attempt (not a
	// snooze): HighLevel failing for a day ends in a dead letter.
	RetryAfter time.Duration
}

func (e *MintError) Error() string {
	return fmt.Sprintf("location token from the agency (%s): %s; %s", e.Reason, e.Message, MintHint(e.Reason))
}

// MintHint says what an operator does about a mint failure.
func MintHint(reason string) string {
	switch reason {
	case ReasonNotInstalled:
		return "the app is not installed on this sub-account (or was uninstalled): install it there, then requeue these dead letters " +
			"(the location has no token in GHL_TOKENS_FILE and no stored pair either: if it should have one there, check its id for a typo)"
	case ReasonLocationInactive:
		return "the sub-account is paused: reactivate it, then requeue these dead letters"
	case ReasonAgencyRevoked:
		return "the agency grant was revoked or refused: install the app again at agency level, load its new pair with `enqueue tokens agency set --replace`, then requeue"
	case ReasonMintRefused:
		return "HighLevel refused to mint a token for this location: check the company id (`enqueue tokens agency set`) and the app's oauth.write scope, then requeue"
	}
	return "HighLevel's OAuth endpoint failed; the mint is tried again in a minute"
}

// callFailed: HighLevel's OAuth route did not answer usably (network,
// unreadable 2xx): a temporary mint failure.
type callFailed struct{ err error }

func (e *callFailed) Error() string { return e.err.Error() }
func (e *callFailed) Unwrap() error { return e.err }

// mintWait: the company's bucket is full; SnoozeFor says when.
type mintWait struct{ after time.Duration }

func (w *mintWait) Error() string {
	return fmt.Sprintf("minting location tokens is rate limited for the agency; next try in %s", w.after.Round(time.Millisecond))
}
func (w *mintWait) SnoozeFor() time.Duration { return w.after }

// Keys.
const (
	agencyKey = "ghlcancel:agency" // hash: company, app, epoch
	// agencyRevokedKey remembers an agency_revoked refusal for FailFor, for
	// every location ("epoch\tmessage").
	agencyRevokedKey = "ghlcancel:agency:revoked"
	registryKey      = "ghlcancel:agency:locations" // hash location -> "installed|unix ms|name" or "uninstalled|unix ms|"
)

func mintKey(loc string) string     { return "ghlcancel:mint:{" + loc + "}" }
func mintLockKey(loc string) string { return mintKey(loc) + ":lock" }
func mintFailKey(loc string) string { return mintKey(loc) + ":fail" }

type minted struct {
	Token   string `json:"t"`
	exp     time.Time
	life    time.Duration
	gen     int64
	r401    time.Time
	company string
}

// NewAgency builds the source.
func NewAgency(cfg AgencyConfig) (*Agency, error) {
	if cfg.Redis == nil || cfg.Pairs == nil {
		return nil, errors.New("agency: Redis and Pairs are required")
	}
	if !cfg.Pairs.cfg.Company {
		return nil, errors.New("agency: Pairs must be built with Company set")
	}
	aead, err := newAEAD(cfg.Key)
	if err != nil {
		return nil, fmt.Errorf("agency: token key: %w", err)
	}
	if cfg.HTTP == nil {
		cfg.HTTP = NewHTTPClient()
	}
	cfg.RemintBefore = cmp.Or(cfg.RemintBefore, RefreshBeforeDefault)
	cfg.FailFor = cmp.Or(cfg.FailFor, MintFailForDefault)
	cfg.Refresh401Cooldown = cmp.Or(cfg.Refresh401Cooldown, RefreshOn401Cooldown)
	cfg.BaseURL = strings.TrimSuffix(cfg.BaseURL, "/")
	return &Agency{cfg: cfg, aead: aead, lockTTL: mintLockTTL, cache: map[string]minted{}, flights: map[string]*flight{}}, nil
}

func (a *Agency) fresh(m minted) bool {
	if m.Token == "" {
		return false
	}
	before := a.cfg.RemintBefore
	if m.life > 0 {
		before = min(before, m.life/2)
	}
	return time.Until(m.exp) > before
}

// agencyState is what Redis says about a location, read in one round trip.
type agencyState struct {
	company, app string
	epoch        int64
	uninstalled  bool
	minted       minted
	hasMinted    bool
	fail         *MintError
}

// state reads the agency, the location's registry entry, its minted token
// and its remembered failure.
func (a *Agency) state(ctx context.Context, loc string) (agencyState, error) {
	pipe := a.cfg.Redis.Pipeline()
	ag := pipe.HMGet(ctx, agencyKey, "company", "app", "epoch")
	reg := pipe.HGet(ctx, registryKey, loc)
	rec := pipe.HMGet(ctx, mintKey(loc), "gen", "exp", "life", "ct", "r401", "company")
	fail := pipe.Get(ctx, mintFailKey(loc))
	failTTL := pipe.PTTL(ctx, mintFailKey(loc))
	revoked := pipe.Get(ctx, agencyRevokedKey)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return agencyState{}, fmt.Errorf("agency: read tokens: %w", err)
	}
	var st agencyState
	v := ag.Val()
	st.company, _ = v[0].(string)
	st.app, _ = v[1].(string)
	st.epoch = atoi(v[2])
	st.uninstalled = strings.HasPrefix(reg.Val(), "uninstalled|")
	if r := rec.Val(); len(r) == 6 {
		if ct, _ := r[3].(string); ct != "" {
			m, err := a.open(loc, ct)
			if err != nil {
				// Sealed with another key (GHL_TOKEN_KEY rotated): as if
				// absent, so a new mint replaces it (same generation fence).
				m = minted{}
			}
			m.gen, m.exp = atoi(r[0]), time.UnixMilli(atoi(r[1]))
			m.life = time.Duration(atoi(r[2])) * time.Millisecond
			if ms := atoi(r[4]); ms > 0 {
				m.r401 = time.UnixMilli(ms)
			}
			m.company, _ = r[5].(string)
			st.minted, st.hasMinted = m, m.Token != ""
		} else {
			st.minted.gen = atoi(r[0])
		}
	}
	if rv := strings.SplitN(revoked.Val(), "\t", 2); len(rv) == 2 && atoi(rv[0]) == st.epoch {
		st.fail = &MintError{Reason: ReasonAgencyRevoked, Message: rv[1]}
	}
	if f := fail.Val(); f != "" && st.fail == nil {
		// "epoch\treason\ttemporary\tmessage": a failure remembered under
		// another agency pair (set since) does not count.
		parts := strings.SplitN(f, "\t", 4)
		if len(parts) == 4 && atoi(parts[0]) == st.epoch {
			st.fail = &MintError{Reason: parts[1], Temporary: parts[2] == "1", Message: parts[3],
				RetryAfter: max(failTTL.Val(), time.Millisecond)}
		}
	}
	return st, nil
}

func (a *Agency) notInstalled() *MintError {
	return &MintError{Reason: ReasonNotInstalled, Message: "the app was uninstalled from this location (UNINSTALL webhook)"}
}

// Token returns a minted token for the location, minting one first when
// none is fresh. It returns ErrNoToken when no agency pair is set.
func (a *Agency) Token(ctx context.Context, location string) (string, error) {
	a.mu.Lock()
	m, ok := a.cache[location]
	a.mu.Unlock()
	if ok && a.fresh(m) {
		return m.Token, nil
	}
	st, err := a.state(ctx, location)
	if err != nil {
		return "", err
	}
	switch {
	case st.company == "":
		return "", ErrNoToken
	case st.uninstalled:
		return "", a.notInstalled()
	case st.hasMinted && st.minted.company == st.company && a.fresh(st.minted):
		a.remember(location, st.minted)
		return st.minted.Token, nil
	case st.fail != nil:
		a.observe("suppressed")
		return "", st.fail
	}
	return a.mint(ctx, location, st.minted.gen, false)
}

// Refresh is called after HighLevel refused a minted token: unless another
// worker minted a new one meanwhile, a new one is minted, once per
// Refresh401Cooldown for the location (then ErrRefreshDidNotCure).
func (a *Agency) Refresh(ctx context.Context, location, refused string) (string, error) {
	a.forget(location)
	st, err := a.state(ctx, location)
	if err != nil {
		return "", err
	}
	switch {
	case st.company == "":
		return "", ErrNoToken
	case st.uninstalled:
		return "", a.notInstalled()
	case st.hasMinted && st.minted.Token != refused && st.minted.company == st.company && a.fresh(st.minted):
		a.remember(location, st.minted)
		return st.minted.Token, nil
	case st.fail != nil:
		a.observe("suppressed")
		return "", st.fail
	case st.hasMinted && st.minted.Token == refused && !st.minted.r401.IsZero() && time.Since(st.minted.r401) < a.cfg.Refresh401Cooldown:
		return "", ErrRefreshDidNotCure
	}
	return a.mint(ctx, location, st.minted.gen, true)
}

func (a *Agency) remember(loc string, m minted) {
	a.mu.Lock()
	if cur, ok := a.cache[loc]; !ok || m.gen >= cur.gen {
		a.cache[loc] = m
	}
	a.mu.Unlock()
}

func (a *Agency) forget(loc string) {
	a.mu.Lock()
	delete(a.cache, loc)
	a.mu.Unlock()
}

// mint is single-flight in this process; mintShared makes it so across
// processes.
func (a *Agency) mint(ctx context.Context, loc string, staleGen int64, on401 bool) (string, error) {
	return singleFlight(ctx, &a.mu, a.flights, loc, func() (string, error) {
		return a.mintShared(ctx, loc, staleGen, on401)
	})
}

func (a *Agency) mintShared(ctx context.Context, loc string, staleGen int64, on401 bool) (string, error) {
	deadline := time.Now().Add(peerWait)
	owner := make([]byte, 16)
	_, _ = rand.Read(owner)
	lockVal := hex.EncodeToString(owner)
	for time.Now().Before(deadline) {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		got, err := a.cfg.Redis.SetArgs(ctx, mintLockKey(loc), lockVal, redis.SetArgs{Mode: "NX", TTL: a.lockTTL}).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return "", fmt.Errorf("agency: lock: %w", err)
		}
		if got == "OK" {
			// Detached: a minted token is stored even if the caller gave up.
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), refreshTimeout)
			tok, err := a.mintOwned(dctx, loc, staleGen, on401)
			_ = releaseLock.Run(dctx, a.cfg.Redis, []string{mintLockKey(loc)}, lockVal).Err()
			cancel()
			return tok, err
		}
		// A peer mints: wait for its token, or its failure.
		for time.Now().Before(deadline) {
			st, err := a.state(ctx, loc)
			if err != nil {
				return "", err
			}
			if st.hasMinted && st.minted.gen != staleGen && st.minted.company == st.company && a.fresh(st.minted) {
				a.remember(loc, st.minted)
				a.observe("lost_race")
				return st.minted.Token, nil
			}
			if st.fail != nil {
				return "", st.fail
			}
			if n, _ := a.cfg.Redis.Exists(ctx, mintLockKey(loc)).Result(); n == 0 {
				break
			}
			select {
			case <-time.After(mintPoll):
			case <-ctx.Done():
				return "", ctx.Err()
			}
		}
	}
	a.observe("error")
	return "", errors.New("agency: timed out waiting for another worker's location token")
}

// storeMinted writes a minted token if the stored generation is still
// ARGV[1], clears the location's remembered failure, and lets the record
// expire a while after the token does.
var storeMinted = redis.NewScript(`
local g = tonumber(redis.call("HGET", KEYS[1], "gen") or "0")
if g ~= tonumber(ARGV[1]) then return 0 end
redis.call("HSET", KEYS[1], "gen", ARGV[2], "exp", ARGV[3], "life", ARGV[4], "ct", ARGV[5], "r401", ARGV[6], "company", ARGV[7])
redis.call("PEXPIREAT", KEYS[1], tonumber(ARGV[3]) + 3600000)
redis.call("DEL", KEYS[2])
return 1`)

// mintOwned runs with the location's lock held.
func (a *Agency) mintOwned(ctx context.Context, loc string, staleGen int64, on401 bool) (string, error) {
	st, err := a.state(ctx, loc)
	switch {
	case err != nil:
		return "", err
	case st.company == "":
		return "", ErrNoToken
	case st.uninstalled:
		return "", a.notInstalled()
	case st.hasMinted && st.minted.gen != staleGen && st.minted.company == st.company && a.fresh(st.minted):
		a.remember(loc, st.minted)
		a.observe("lost_race")
		return st.minted.Token, nil
	case st.fail != nil:
		return "", st.fail
	}
	asked := time.Now() // life counts from before the call, as for OAuth refreshes
	tok, life, err := a.callMint(ctx, st.company, loc)
	if err != nil {
		var me *MintError
		var w *mintWait
		switch {
		case errors.As(err, &w):
			a.observe("rate_limited")
		case errors.As(err, &me):
			a.observe(me.Reason)
			a.rememberFailure(ctx, loc, st.epoch, me)
		case errors.As(err, new(*callFailed)):
			a.observe(ReasonMintFailed)
			me = &MintError{Reason: ReasonMintFailed, Message: err.Error(), Temporary: true, RetryAfter: a.cfg.FailFor}
			a.rememberFailure(ctx, loc, st.epoch, me)
			err = me
		default: // no agency pair, Redis, a key that does not decrypt: not HighLevel's answer
			a.observe("error")
		}
		return "", err
	}
	m := minted{Token: tok, exp: asked.Add(life), life: life, gen: st.minted.gen + 1, company: st.company}
	if on401 {
		m.r401 = time.Now()
	}
	ct, err := a.seal(loc, m)
	if err != nil {
		return "", err
	}
	var r401 int64
	if !m.r401.IsZero() {
		r401 = m.r401.UnixMilli()
	}
	// Not stored (Redis failing, or fenced out by a peer whose lock
	// expired): the token works all the same; peers mint their own.
	_ = storeMinted.Run(ctx, a.cfg.Redis, []string{mintKey(loc), mintFailKey(loc)}, st.minted.gen, m.gen,
		m.exp.UnixMilli(), m.life.Milliseconds(), ct, r401, m.company).Err()
	a.remember(loc, m)
	a.observe("ok")
	return tok, nil
}

func (a *Agency) rememberFailure(ctx context.Context, loc string, epoch int64, me *MintError) {
	if me.Reason == ReasonAgencyRevoked { // every location's answer, until a new pair is set
		_ = a.cfg.Redis.Set(ctx, agencyRevokedKey, fmt.Sprintf("%d\t%s", epoch, truncateMsg(me.Message)), a.cfg.FailFor).Err()
	}
	v := fmt.Sprintf("%d\t%s\t%s\t%s", epoch, me.Reason, map[bool]string{true: "1", false: "0"}[me.Temporary], truncateMsg(me.Message))
	_ = a.cfg.Redis.Set(ctx, mintFailKey(loc), v, a.cfg.FailFor).Err()
}

func truncateMsg(s string) string {
	s = strings.ReplaceAll(s, "\t", " ")
	if len(s) > 300 {
		s = s[:300]
	}
	return s
}

// callMint asks HighLevel for a location token with the agency's access
// token; a 401 refreshes the agency pair once.
func (a *Agency) callMint(ctx context.Context, company, loc string) (string, time.Duration, error) {
	form := url.Values{"companyId": {company}, "locationId": {loc}}
	var resp struct {
		AccessToken string  `json:"access_token"`
		ExpiresIn   float64 `json:"expires_in"`
	}
	status, msg, err := a.agencyCall(ctx, company, http.MethodPost, "/oauth/locationToken", form, &resp)
	if err != nil {
		return "", 0, err
	}
	if status == http.StatusOK || status == http.StatusCreated {
		if resp.AccessToken == "" || resp.ExpiresIn <= 0 {
			return "", 0, &MintError{Reason: ReasonMintFailed, Temporary: true, Message: "POST /oauth/locationToken answered without a token or its lifetime", RetryAfter: a.cfg.FailFor}
		}
		return resp.AccessToken, time.Duration(resp.ExpiresIn * float64(time.Second)), nil
	}
	lower := strings.ToLower(msg)
	switch {
	case status >= 500:
		return "", 0, &MintError{Reason: ReasonMintFailed, Temporary: true, Message: fmt.Sprintf("POST /oauth/locationToken: %d: %s", status, msg), RetryAfter: a.cfg.FailFor}
	case strings.Contains(lower, "not active"):
		return "", 0, &MintError{Reason: ReasonLocationInactive, Message: msg}
	case strings.Contains(lower, "install"):
		return "", 0, &MintError{Reason: ReasonNotInstalled, Message: msg}
	}
	return "", 0, &MintError{Reason: ReasonMintRefused, Message: fmt.Sprintf("%d: %s", status, msg)}
}

// agencyCall makes one call with the agency's access token, through the
// company's pacer bucket, refreshing the agency pair once after a 401. A
// 2xx body is decoded into out. It returns the status and, for others,
// HighLevel's message; a second 401 and agency grant failures are
// MintErrors (agency_revoked), a 429 a mintWait.
func (a *Agency) agencyCall(ctx context.Context, company, method, path string, form url.Values, out any) (int, string, error) {
	bucket := "agency:" + company
	access, err := a.cfg.Pairs.Token(ctx, company)
	for try := 0; ; try++ {
		if err != nil {
			return 0, "", agencyTokenError(err)
		}
		if a.cfg.Pacer != nil {
			if err := a.cfg.Pacer.Admit(ctx, bucket); err != nil {
				var sn interface{ SnoozeFor() time.Duration }
				if errors.As(err, &sn) && sn.SnoozeFor() > 0 {
					return 0, "", &mintWait{after: sn.SnoozeFor()} // the company's bucket is full: its turn comes
				}
				return 0, "", err // the limiter's Redis: not HighLevel's doing
			}
		}
		var body io.Reader
		u := a.cfg.BaseURL + path
		if method == http.MethodGet {
			u += "?" + form.Encode()
		} else {
			body = strings.NewReader(form.Encode())
		}
		req, err := http.NewRequestWithContext(ctx, method, u, body)
		if err != nil {
			return 0, "", err
		}
		req.Header.Set("Authorization", "Bearer "+access)
		req.Header.Set("Version", AgencyVersion)
		req.Header.Set("Accept", "application/json")
		if body != nil {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
		resp, err := a.cfg.HTTP.Do(req)
		if err != nil {
			var ue *url.Error
			if errors.As(err, &ue) {
				err = ue.Err // the URL carries no secret, but keep errors uniform
			}
			return 0, "", &callFailed{fmt.Errorf("%s %s: %w", method, path, err)}
		}
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		_ = resp.Body.Close()
		if a.cfg.Pacer != nil {
			a.cfg.Pacer.Observe(ctx, bucket, resp.Header, resp.StatusCode)
		}
		// Not HighLevel's answer (a typo in GHL_BASE_URL, a proxy): no
		// refusal, never remembered as one.
		if e := ghl.Misrouted(resp.StatusCode, resp.Header, raw); e != nil {
			e.Request = method + " " + req.URL.Path
			return 0, "", e
		}
		switch {
		case resp.StatusCode >= 200 && resp.StatusCode < 300:
			if err := json.Unmarshal(raw, out); err != nil {
				return 0, "", &callFailed{fmt.Errorf("%s %s: %d with a body that is not the documented JSON", method, path, resp.StatusCode)}
			}
			return resp.StatusCode, "", nil
		case resp.StatusCode == http.StatusTooManyRequests:
			return 0, "", &mintWait{after: ghl.RateLimited(resp.Header, time.Now()).RetryAfter}
		case resp.StatusCode == http.StatusUnauthorized && try == 0:
			fresh, rerr := a.cfg.Pairs.Refresh(ctx, company, access)
			if rerr != nil {
				return 0, "", agencyTokenError(rerr)
			}
			access = fresh
			continue
		case resp.StatusCode == http.StatusUnauthorized:
			return 0, "", &MintError{Reason: ReasonAgencyRevoked, Message: "HighLevel refused the agency's freshly refreshed access token: " + apiMessage(raw)}
		}
		return resp.StatusCode, apiMessage(raw), nil
	}
}

// agencyTokenError maps a failure to get the agency's access token.
func agencyTokenError(err error) error {
	var ge *GrantError
	switch {
	case errors.As(err, &ge):
		return &MintError{Reason: ReasonAgencyRevoked, Message: ge.Reason + ": " + ge.Message}
	case errors.Is(err, ErrRefreshDidNotCure):
		return &MintError{Reason: ReasonAgencyRevoked, Message: "the agency's access token is refused although it was just refreshed"}
	case errors.Is(err, ErrNoToken):
		return fmt.Errorf("%w: the agency's company is set but its token pair is not; load it with `enqueue tokens agency set`", ErrNoToken)
	}
	return err
}

// apiMessage is the message of a HighLevel error body (a string or an
// array of strings), cut short; never the whole body.
func apiMessage(raw []byte) string {
	var e struct {
		Message json.RawMessage `json:"message"`
	}
	_ = json.Unmarshal(raw, &e)
	var s string
	if json.Unmarshal(e.Message, &s) != nil {
		var list []string
		_ = json.Unmarshal(e.Message, &list)
		s = strings.Join(list, "; ")
	}
	return truncateMsg(s)
}

// Close stores what the agency pair's refreshes left pending (see
// OAuth.Close).
func (a *Agency) Close() error { return a.cfg.Pairs.Close() }

func (a *Agency) observe(result string) {
	if a.cfg.Observe != nil && result != "" {
		a.cfg.Observe(result)
	}
}

func (a *Agency) seal(loc string, m minted) (string, error) {
	return sealJSON(a.aead, []byte("minted:"+loc), m)
}

func (a *Agency) open(loc, ct string) (minted, error) {
	var m minted
	err := openJSON(a.aead, []byte("minted:"+loc), ct, &m, "agency: stored location tokens")
	return m, err
}

// IsMintReason reports whether a dead letter's reason is a mint failure.
func IsMintReason(reason string) bool {
	switch reason {
	case ReasonNotInstalled, ReasonLocationInactive, ReasonAgencyRevoked, ReasonMintRefused, ReasonMintFailed:
		return true
	}
	return false
}

// Install is an INSTALL at the location: a token minted before it (and
// cached in this process) is forgotten, and one is minted now unless a peer
// already stored one since the uninstall.
func (a *Agency) Install(ctx context.Context, location string) error {
	a.forget(location)
	_, err := a.Token(ctx, location)
	return err
}
