// Package console is the operators' campaign console, served by the intake
// at /console: campaigns with live progress, each campaign's outcomes, dead
// letters by reason with what to do, parked and cooling locations, sweeps,
// the CSV report, and dead-letter requeue and purge.
//
// Pages are server-rendered html/template with a little plain JavaScript
// (embedded, no CDN, no build step). Security:
//   - sign-in with an API key (POST body, never a URL), then a random
//     session id in a cookie (HttpOnly, SameSite=Strict; unless the console
//     is reached on a loopback host, Secure and named __Host-..., so no
//     sibling subdomain can plant one); sessions live in Redis (any
//     intake replica serves them, sign-out ends them everywhere) and end
//     when their key is removed from the configuration;
//   - a per-session CSRF token on every state-changing form, an
//     Origin/Sec-Fetch-Site check on every POST, a double-submit token on
//     the sign-in form;
//   - a strict Content-Security-Policy (no inline script or style, nothing
//     from another origin), no framing, no referrer to other sites, no caching;
//   - read-only keys see everything and change nothing (enforced by the
//     server; the pages only hide the buttons).
package console

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"errors"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ghlcancel/ghlcancel/internal/campaign"
	"github.com/ghlcancel/ghlcancel/internal/deadletter"
	"github.com/ghlcancel/ghlcancel/internal/producer"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Cookie names (with HostPrefix where cookies are Secure: see cookieName)
// and lifetimes.
const (
	SessionCookie = "ghlcancel_session"
	loginCookie   = "ghlcancel_login"
	// SessionTTL is how long a session lasts after sign-in.
	SessionTTL = 12 * time.Hour
	sessionKey = "ghlcancel:console:session:"
)

// CSP is the Content-Security-Policy of every console response: scripts,
// styles, images and fetches from this origin only, no inline code, no
// plugins, no framing, forms posting only here.
const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// Role is what a session may do.
type Role string

const (
	RoleOperator Role = "operator" // sees and changes
	RoleReadOnly Role = "readonly" // sees
)

// Config configures the console.
type Config struct {
	// Redis holds the queue, campaigns, dead letters and sessions. Required.
	Redis redis.UniversalClient
	// Keys may sign in and change things (the intake's API keys and
	// CONSOLE_KEYS). ReadOnlyKeys may sign in and look. At least one key in all.
	Keys, ReadOnlyKeys []string
	// Producer configures requeues (retries, campaign retention).
	Producer producer.Config
	// Logger defaults to a discarding logger.
	Logger *slog.Logger
	// Prefix is where the console is mounted; defaults to /console.
	Prefix string
}

// Console is the console's http.Handler.
type Console struct {
	cfg       Config
	keys      map[[32]byte]Role
	fps       map[string]Role // key fingerprint -> role, for the sessions
	prod      *producer.Producer
	campaigns *campaign.Tracker
	dead      *deadletter.Store
	tmpl      *template.Template
	static    http.Handler
	mux       *http.ServeMux
	log       *slog.Logger
	now       func() time.Time
}

// New builds the console.
func New(cfg Config) (*Console, error) {
	if cfg.Redis == nil {
		return nil, errors.New("console: Config.Redis is required")
	}
	if len(cfg.Keys)+len(cfg.ReadOnlyKeys) == 0 {
		return nil, errors.New("console: no keys configured")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "/console"
	}
	c := &Console{
		cfg:       cfg,
		keys:      map[[32]byte]Role{},
		fps:       map[string]Role{},
		prod:      producer.New(cfg.Redis, cfg.Producer),
		campaigns: campaign.New(cfg.Redis, cfg.Producer.CampaignRetention),
		dead:      deadletter.New(cfg.Redis),
		mux:       http.NewServeMux(),
		log:       cfg.Logger,
		now:       time.Now,
	}
	for _, k := range cfg.ReadOnlyKeys {
		c.keys[sha256.Sum256([]byte(k))] = RoleReadOnly
	}
	for _, k := range cfg.Keys {
		h := sha256.Sum256([]byte(k))
		if c.keys[h] == RoleReadOnly {
			return nil, errors.New("console: a key is both read-only (CONSOLE_READONLY_KEYS) and full (INTAKE_API_KEYS or CONSOLE_KEYS); list it once")
		}
		c.keys[h] = RoleOperator
	}
	for h, r := range c.keys {
		c.fps[fingerprint(h)] = r
	}
	var err error
	c.tmpl, err = template.New("").Funcs(funcs(cfg.Prefix)).ParseFS(templateFS, "templates/*.html")
	if err != nil {
		return nil, err
	}
	sub, _ := fs.Sub(staticFS, "static")
	c.static = http.StripPrefix(cfg.Prefix+"/static/", http.FileServerFS(sub))

	p := cfg.Prefix
	c.mux.HandleFunc("GET "+p+"/static/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=300")
		c.static.ServeHTTP(w, r)
	})
	c.mux.HandleFunc("GET "+p+"/login", c.getLogin)
	c.mux.HandleFunc("POST "+p+"/login", c.postLogin)
	c.mux.HandleFunc("POST "+p+"/logout", c.signedIn(true, c.postLogout))
	c.mux.HandleFunc("GET "+p+"/{$}", c.signedIn(false, c.getCampaigns))
	// A campaign id is any 1 to 128 bytes ("a/b", and "." or ".." from
	// before they were refused at the door): it travels in the query, where
	// no path cleaning touches it.
	c.mux.HandleFunc("GET "+p+"/campaign", c.signedIn(false, c.getCampaign))
	c.mux.HandleFunc("GET "+p+"/campaign/live", c.signedIn(false, c.getCampaignLive))
	c.mux.HandleFunc("GET "+p+"/campaign/report.csv", c.signedIn(false, c.getReport))
	c.mux.HandleFunc("GET "+p+"/dead", c.signedIn(false, c.getDead))
	c.mux.HandleFunc("POST "+p+"/dead/requeue", c.signedIn(true, c.postRequeue))
	c.mux.HandleFunc("GET "+p+"/dead/purge", c.signedIn(false, c.getPurge))
	c.mux.HandleFunc("POST "+p+"/dead/purge", c.signedIn(true, c.postPurge))
	c.mux.HandleFunc("GET "+p+"/locations", c.signedIn(false, c.getLocations))
	c.mux.HandleFunc("POST "+p+"/locations/release", c.signedIn(true, c.postRelease))
	c.mux.HandleFunc(p, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, p+"/", http.StatusSeeOther)
	})
	c.mux.HandleFunc(p+"/", func(w http.ResponseWriter, r *http.Request) {
		c.fail(w, r, nil, http.StatusNotFound, "No such page.")
	})
	return c, nil
}

// ServeHTTP sets the security headers of every console response.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", CSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	// same-origin, not no-referrer: under no-referrer browsers send "Origin: null"
	// with form POSTs, which sameOrigin must refuse.
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cache-Control", "no-store")
	c.mux.ServeHTTP(w, r)
}

// session is a signed-in browser.
type session struct {
	id   string // the Redis key's suffix (hash of the cookie's value)
	Role Role
	CSRF string
	key  string // fingerprint of the key it signed in with
}

func (s *session) ReadOnly() bool { return s.Role != RoleOperator }

func randomToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func hashHex(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// roleOf returns the role of a key, comparing its hash with every
// configured key's in constant time.
func (c *Console) roleOf(key string) (Role, string, bool) {
	// A key pasted with a space or line break around it is the same key
	// (keys are trimmed when they load, and so is the API's Bearer).
	key = strings.TrimSpace(key)
	if key == "" {
		return "", "", false
	}
	sum := sha256.Sum256([]byte(key))
	var role Role
	for h, r := range c.keys {
		if subtle.ConstantTimeCompare(sum[:], h[:]) == 1 {
			role = r
		}
	}
	return role, fingerprint(sum), role != ""
}

// fingerprint names a key in sessions and logs: 8 bytes of its SHA-256.
func fingerprint(sum [32]byte) string { return hex.EncodeToString(sum[:8]) }

// stillConfigured: a session ends when its key leaves the configuration
// or changes role.
func (c *Console) stillConfigured(fp string, role Role) bool {
	r, ok := c.fps[fp]
	return ok && r == role
}

func (c *Console) loadSession(r *http.Request) (*session, error) {
	ck, err := r.Cookie(cookieName(r, SessionCookie))
	if err != nil || len(ck.Value) != 64 {
		return nil, nil
	}
	id := hashHex(ck.Value)
	m, err := c.cfg.Redis.HGetAll(r.Context(), sessionKey+id).Result()
	if err != nil {
		return nil, err
	}
	s := &session{id: id, Role: Role(m["role"]), CSRF: m["csrf"], key: m["key"]}
	if s.CSRF == "" || !c.stillConfigured(s.key, s.Role) {
		return nil, nil
	}
	return s, nil
}

// loopback reports whether the request came to a loopback host name, where
// browsers may run the console over plain HTTP.
func loopback(r *http.Request) bool {
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}

// secureCookies: the request came over TLS or to a host that is not
// loopback (behind a TLS proxy), where cookies are Secure and carry the
// __Host- prefix.
func secureCookies(r *http.Request) bool { return r.TLS != nil || !loopback(r) }

// cookieName is the name a cookie has for r: with the __Host- prefix where
// cookies are Secure, so that a sibling subdomain or a plain-HTTP answer
// cannot plant one (browsers take a __Host- cookie only when Secure, from
// the host itself, for Path=/). On loopback HTTP the plain name.
func cookieName(r *http.Request, name string) string {
	if secureCookies(r) {
		return HostPrefix + name
	}
	return name
}

// HostPrefix is the cookie name prefix browsers bind to one host.
const HostPrefix = "__Host-"

func (c *Console) cookie(r *http.Request, name, value, path string, maxAge int) *http.Cookie {
	if secureCookies(r) {
		path = "/" // __Host- requires it
	}
	return &http.Cookie{Name: cookieName(r, name), Value: value, Path: path, MaxAge: maxAge, HttpOnly: true,
		Secure: secureCookies(r), SameSite: http.SameSiteStrictMode}
}

// sameOrigin refuses cross-site POSTs: the browser's Sec-Fetch-Site, or
// the Origin header, must say this site.
func sameOrigin(r *http.Request) bool {
	if s := r.Header.Get("Sec-Fetch-Site"); s != "" && s != "same-origin" && s != "none" {
		return false
	}
	o := r.Header.Get("Origin")
	if o == "" || o == "null" {
		return o == ""
	}
	u, err := url.Parse(o)
	return err == nil && u.Host == r.Host
}

type ctxKey struct{}

func sessionOf(r *http.Request) *session {
	s, _ := r.Context().Value(ctxKey{}).(*session)
	return s
}

// signedIn requires a session; change requires an operator session, a
// same-origin request and the session's CSRF token in the form.
func (c *Console) signedIn(change bool, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s, err := c.loadSession(r)
		if err != nil {
			c.log.Error("console: reading the session failed", "err", err)
			c.fail(w, r, nil, http.StatusServiceUnavailable, "Redis is unavailable; try again in a moment.")
			return
		}
		if s == nil {
			if r.Method == http.MethodGet && !strings.HasSuffix(r.URL.Path, "/live") {
				http.Redirect(w, r, c.cfg.Prefix+"/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
				return
			}
			c.fail(w, r, nil, http.StatusUnauthorized, "You are not signed in (or your session ended). Sign in again.")
			return
		}
		if change {
			if !sameOrigin(r) {
				c.fail(w, r, s, http.StatusForbidden, "Refused: the request did not come from this console's pages.")
				return
			}
			if err := r.ParseForm(); err != nil {
				c.fail(w, r, s, http.StatusBadRequest, "The form could not be read.")
				return
			}
			if subtle.ConstantTimeCompare([]byte(r.PostForm.Get("csrf")), []byte(s.CSRF)) != 1 {
				c.log.Warn("console: request without a valid CSRF token refused", "path", r.URL.Path, "remote", r.RemoteAddr)
				c.fail(w, r, s, http.StatusForbidden, "Refused: the form's security token is missing or stale. Reload the page and try again.")
				return
			}
			if s.ReadOnly() && !strings.HasSuffix(r.URL.Path, "/logout") {
				c.fail(w, r, s, http.StatusForbidden, "This session signed in with a read-only key: it can look, not change. Sign in with an operator key to requeue, purge or release.")
				return
			}
		}
		h(w, r.WithContext(context.WithValue(r.Context(), ctxKey{}, s)))
	}
}

// safeNext keeps a post-sign-in redirect inside the console: a path (no
// scheme, no host, no control character) that is still under the prefix
// once cleaned, as http.Redirect will clean it.
func (c *Console) safeNext(next string) string {
	home := c.cfg.Prefix + "/"
	if strings.ContainsFunc(next, func(r rune) bool { return r < 0x20 || r == 0x7f || r == '\\' }) {
		return home
	}
	u, err := url.Parse(next)
	if err != nil || u.Scheme != "" || u.Host != "" || u.User != nil || u.Opaque != "" || !strings.HasPrefix(u.Path, "/") {
		return home
	}
	clean := path.Clean(u.Path)
	if clean != c.cfg.Prefix && !strings.HasPrefix(clean, home) {
		return home
	}
	if strings.HasSuffix(u.Path, "/") && !strings.HasSuffix(clean, "/") {
		clean += "/"
	}
	out := (&url.URL{Path: clean, RawQuery: u.RawQuery}).String()
	if strings.HasPrefix(out, "//") {
		return home
	}
	return out
}

func (c *Console) getLogin(w http.ResponseWriter, r *http.Request) {
	tok := randomToken()
	http.SetCookie(w, c.cookie(r, loginCookie, tok, c.cfg.Prefix+"/login", 3600))
	c.render(w, r, http.StatusOK, "login", page{Title: "Sign in", Data: loginView{Token: tok, Next: c.safeNext(r.URL.Query().Get("next"))}})
}

type loginView struct {
	Token, Next, Error string
}

func (c *Console) postLogin(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil || !sameOrigin(r) {
		c.fail(w, r, nil, http.StatusForbidden, "Refused: the sign-in did not come from this console's page.")
		return
	}
	ck, err := r.Cookie(cookieName(r, loginCookie))
	if err != nil || ck.Value == "" || subtle.ConstantTimeCompare([]byte(ck.Value), []byte(r.PostForm.Get("login_token"))) != 1 {
		c.fail(w, r, nil, http.StatusForbidden, "Refused: the sign-in form is stale. Open the sign-in page again. "+
			"(If this repeats: the console is reached over plain HTTP on an address that is not loopback, and browsers drop its Secure cookies; serve it over HTTPS.)")
		return
	}
	next := c.safeNext(r.PostForm.Get("next"))
	role, fp, ok := c.roleOf(r.PostForm.Get("key"))
	if !ok {
		c.log.Warn("console: sign-in with a wrong key refused", "remote", r.RemoteAddr)
		tok := randomToken()
		http.SetCookie(w, c.cookie(r, loginCookie, tok, c.cfg.Prefix+"/login", 3600))
		c.render(w, r, http.StatusUnauthorized, "login", page{Title: "Sign in", Data: loginView{Token: tok, Next: next,
			Error: "That key is not accepted. Use an intake API key (INTAKE_API_KEYS), a CONSOLE_KEYS key or a CONSOLE_READONLY_KEYS key."}})
		return
	}
	sid := randomToken()
	key := sessionKey + hashHex(sid)
	if cmds, err := c.cfg.Redis.TxPipelined(r.Context(), func(p redis.Pipeliner) error {
		p.HSet(r.Context(), key, "role", string(role), "csrf", randomToken(), "key", fp, "created", c.now().UnixMilli())
		p.Expire(r.Context(), key, SessionTTL)
		return nil
	}); err != nil {
		msg := "Redis is unavailable; try again in a moment."
		if full := redisFull(err, cmds...); full != "" {
			msg = full
		}
		c.log.Error("console: storing the session failed", "err", err, "cause", cmdErr(cmds))
		c.fail(w, r, nil, http.StatusServiceUnavailable, msg)
		return
	}
	c.log.Info("console: signed in", "role", role, "key", fp, "remote", r.RemoteAddr)
	http.SetCookie(w, c.cookie(r, loginCookie, "", c.cfg.Prefix+"/login", -1))
	http.SetCookie(w, c.cookie(r, SessionCookie, sid, c.cfg.Prefix, int(SessionTTL.Seconds())))
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (c *Console) postLogout(w http.ResponseWriter, r *http.Request) {
	s := sessionOf(r)
	if err := c.cfg.Redis.Del(r.Context(), sessionKey+s.id).Err(); err != nil {
		c.fail(w, r, s, http.StatusServiceUnavailable, "Redis is unavailable; the session could not be ended. Try again.")
		return
	}
	http.SetCookie(w, c.cookie(r, SessionCookie, "", c.cfg.Prefix, -1))
	http.Redirect(w, r, c.cfg.Prefix+"/login", http.StatusSeeOther)
}
