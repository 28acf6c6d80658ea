package sandbox

import (
	"cmp"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// AgencyVersion is the only Version header POST /oauth/locationToken and
// GET /oauth/installedLocations accept (the spec's enum of one; not the
// conversations routes' 2021-04-15).
const AgencyVersion = "2021-07-28"

// What the sandbox reports for every install: HighLevel reports the user who
// installed the app, the paid plan and the app version installed.
const (
	installUserID    = "sandboxInstallUser01"
	installPlanID    = "sandboxPlan000000001"
	installVersionID = "sandboxAppVersion001"
	installAddress   = "1 Sandbox Street, Testville, TX 75001, USA"
)

// The scopes of the tokens the agency grant hands out.
const (
	companyScope = "oauth.readonly oauth.write conversations/message.readonly conversations/message.write"
	mintScope    = "conversations/message.readonly conversations/message.write"
)

// agencies is the agency (Company) app's state; Server.mu guards it.
type agencies struct {
	tokens   map[string]companyToken // company access token -> its company and expiry
	installs map[string]*install     // by location
	order    []*install              // first install order, for GET /oauth/installedLocations
	minted   map[string][]string     // location -> every token minted for it, until UninstallLocation
	mints    map[string][]time.Time  // location -> when each mint happened
}

type companyToken struct {
	company string
	expires time.Time
}

// install is the app's install record at one location.
type install struct {
	company, location, name string
	installed               bool
	installedAt             time.Time
}

func newAgencies() agencies {
	return agencies{
		tokens:   map[string]companyToken{},
		installs: map[string]*install{},
		minted:   map[string][]string{},
		mints:    map[string][]time.Time{},
	}
}

// companyBucket is the rate-limit bucket key of an agency: SetRateLimit,
// Admitted and RateLimitedCount take it too.
func companyBucket(company string) string { return "company:" + company }

// AddAgency registers an agency (Company) that installed the app and
// returns its first refresh token, single-use like a location's: POST
// /oauth/token with it issues a company access token (lives
// Config.AccessTTL) and the next refresh token. A company access token
// works on POST /oauth/locationToken and GET /oauth/installedLocations
// only; the conversations routes answer it 401. Calling again for the same
// company adds another grant (as a second authorization would).
func (s *Server) AddAgency(company string) (refreshToken string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.bucketLocked(companyBucket(company))
	rt := "rt-" + NewID() + NewID()
	s.refresh[rt] = &grant{company: company}
	return rt
}

// InstallLocation records the app as installed at location for company
// (name defaults to the location id) and creates the location's rate-limit
// bucket. Installing again is a no-op for an installed location; for an
// uninstalled one it installs again, with a new installedAt, keeping the
// location's place in the install order. A location belongs to the last
// company that installed it.
func (s *Server) InstallLocation(company, location, name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.bucketLocked(location)
	in := s.agencies.installs[location]
	if in == nil {
		in = &install{location: location}
		s.agencies.installs[location] = in
		s.agencies.order = append(s.agencies.order, in)
	}
	if in.installed && in.company == company {
		return
	}
	in.company, in.name = company, cmp.Or(name, location)
	in.installed, in.installedAt = true, s.now()
}

// UninstallLocation records the app as uninstalled at location: minting
// for it answers 400 "This app is not installed on this location", and
// every token minted for it so far stops working at once (401 "Invalid
// token: access token is invalid" on the conversations routes). Tokens the
// location got otherwise (AddLocation, AddOAuthLocation) are not touched.
func (s *Server) UninstallLocation(location string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if in := s.agencies.installs[location]; in != nil {
		in.installed = false
	}
	for _, t := range s.agencies.minted[location] {
		delete(s.tokens, t)
		delete(s.expires, t)
	}
	delete(s.agencies.minted, location)
}

// RevokeAgency revokes the agency's grant: its company access tokens get
// 401 and its refresh tokens invalid_grant. HighLevel does not document
// what happens to location tokens minted earlier; the sandbox lets them
// live until they expire (they are self-contained JWTs upstream), so a
// client keeps cancelling with what it minted and fails only at the next
// mint. Installs are kept; AddAgency grants again.
func (s *Server) RevokeAgency(company string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for t, ct := range s.agencies.tokens {
		if ct.company == company {
			delete(s.agencies.tokens, t)
		}
	}
	for _, g := range s.refresh {
		if g.company == company {
			g.used = true
		}
	}
}

// Mints returns when each successful mint for the location happened, in order.
func (s *Server) Mints(location string) []time.Time {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return append([]time.Time(nil), s.agencies.mints[location]...)
}

// bucketLocked returns the rate-limit bucket key names, creating it; s.mu
// is held for writing.
func (s *Server) bucketLocked(key string) *bucket {
	b := s.buckets[key]
	if b == nil {
		b = &bucket{}
		s.buckets[key] = b
	}
	return b
}

// companyGrantLocked issues an agency's next access and refresh tokens and
// returns the token answer; s.mu is held.
func (s *Server) companyGrantLocked(company string) map[string]any {
	access := "ct-" + NewID() + NewID()
	next := "rt-" + NewID() + NewID()
	s.agencies.tokens[access] = companyToken{company: company, expires: s.now().Add(s.cfg.AccessTTL)}
	s.refresh[next] = &grant{company: company}
	return map[string]any{
		"access_token": access, "token_type": "Bearer", "expires_in": s.cfg.AccessTTL.Seconds(),
		"refresh_token": next, "scope": companyScope, "userType": "Company", "companyId": company,
		"userId": installUserID, "isBulkInstallation": true, "installToFutureLocations": false,
	}
}

type agencyFunc func(w http.ResponseWriter, r *http.Request, company string)

// agency wraps an agency route as api wraps the conversations ones, in
// order: latency, faults, the Version header (AgencyVersion), a live
// company access token, and the company's rate limit (bucket
// "company:"+company, with the same headers and 429 as a location's).
// Every refusal, injected faults included, adds one to refused when it is
// not nil.
//
// Undocumented upstream, decided here: a location token (OAuth, minted or
// Private Integration) is refused 401 "This authClass type is not allowed to
// access this scope", the answer developers report for a token of the
// wrong class; an expired company token gets 401 "Invalid JWT" like an
// expired location token; an unknown or revoked one 401 "Invalid token:
// access token is invalid".
func (s *Server) agency(refused *atomic.Int64, next agencyFunc) http.HandlerFunc {
	refuse := func() {
		if refused != nil {
			refused.Add(1)
		}
	}
	return func(w http.ResponseWriter, r *http.Request) {
		f := s.currentFaults()
		if !s.inject(w, r, f) {
			refuse()
			return
		}
		if !versionOK(w, r, AgencyVersion) {
			refuse()
			return
		}
		company, b, msg := s.companyAuth(r)
		if msg != "" {
			refuse()
			writeJSON(w, http.StatusUnauthorized, map[string]any{"statusCode": 401, "message": msg, "error": "Unauthorized"})
			return
		}
		if !s.admit(w, b) {
			refuse()
			writeTooMany(w)
			return
		}
		s.deliver(w, f, func(w http.ResponseWriter) { next(w, r, company) })
	}
}

// companyAuth finds the company of the request's bearer token and its
// rate-limit bucket, or the 401 message to answer.
func (s *Server) companyAuth(r *http.Request) (company string, b *bucket, msg string) {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	s.mu.Lock()
	defer s.mu.Unlock()
	ct, isCompany := s.agencies.tokens[token]
	_, isLocation := s.tokens[token]
	switch {
	case ok && isLocation:
		return "", nil, "This authClass type is not allowed to access this scope"
	case !ok || !isCompany:
		return "", nil, "Invalid token: access token is invalid"
	case !s.now().Before(ct.expires):
		return "", nil, "Invalid JWT"
	}
	return ct.company, s.bucketLocked(companyBucket(ct.company)), ""
}

// forbidden is the answer when the companyId asked for is not the token's.
// HighLevel does not document it (the spec lists 400, 401 and 422 only);
// the sandbox answers 403, so a client does not mistake it for an expired
// token (401) and refresh in a loop.
func forbidden(w http.ResponseWriter) {
	writeJSON(w, http.StatusForbidden, map[string]any{
		"statusCode": 403, "message": "The token does not have access to this company", "error": "Forbidden"})
}

func unprocessable(w http.ResponseWriter, msgs ...string) {
	writeJSON(w, http.StatusUnprocessableEntity, map[string]any{"statusCode": 422, "message": msgs, "error": "Unprocessable Entity"})
}

func badRequest(w http.ResponseWriter, msg string) {
	writeJSON(w, http.StatusBadRequest, map[string]any{"statusCode": 400, "message": msg, "error": "Bad Request"})
}

// locationToken serves POST /oauth/locationToken: it mints a location
// token from the agency's token. After the agency wrapper: companyId and
// locationId are required (422, as the spec marks them); a companyId other
// than the token's is 403 (see forbidden); an inactive location (SetInactive)
// 400 "Location is not active"; a location where the app is not installed
// for this company (never, or uninstalled since) 400 "This app is not
// installed on this location". A minted token lives Config.MintTTL and works
// on the conversations routes like an OAuth access token (401 "Invalid JWT"
// once expired). Minting again does not revoke earlier tokens: HighLevel
// does not document that it does.
func (s *Server) locationToken(w http.ResponseWriter, r *http.Request, company string) {
	refuse := func(answer func()) {
		s.stats.mintsRefused.Add(1)
		answer()
	}
	if err := r.ParseForm(); err != nil {
		refuse(func() { unprocessable(w, "body must be form-encoded") })
		return
	}
	companyID, location := r.PostForm.Get("companyId"), r.PostForm.Get("locationId")
	if missing := missingFields(r.PostForm.Get, "companyId", "locationId"); missing != nil {
		refuse(func() { unprocessable(w, missing...) })
		return
	}
	if companyID != company {
		refuse(func() { forbidden(w) })
		return
	}
	s.mu.Lock()
	in := s.agencies.installs[location]
	switch {
	case s.inactive[location]:
		s.mu.Unlock()
		refuse(func() { badRequest(w, "Location is not active") })
		return
	case in == nil || !in.installed || in.company != company:
		s.mu.Unlock()
		refuse(func() { badRequest(w, "This app is not installed on this location") })
		return
	}
	token := s.mintLocked(location)
	s.mu.Unlock()
	s.stats.mints.Add(1)
	writeJSON(w, http.StatusOK, map[string]any{
		"access_token": token, "token_type": "Bearer", "expires_in": s.cfg.MintTTL.Seconds(), "scope": mintScope,
		"locationId": location, "planId": installPlanID, "userId": installUserID,
		"appId": s.cfg.AppID, "versionId": installVersionID,
	})
}

// mintLocked registers a new location token for location and records the
// mint; s.mu is held.
func (s *Server) mintLocked(location string) string {
	now := s.now()
	token := "lt-" + NewID() + NewID()
	s.tokens[token] = location
	s.expires[token] = now.Add(s.cfg.MintTTL)
	s.agencies.minted[location] = append(s.agencies.minted[location], token)
	if len(s.agencies.mints[location]) < maxRecorded {
		s.agencies.mints[location] = append(s.agencies.mints[location], now)
	}
	return token
}

// missingFields returns NestJS's "<name> should not be empty" for each
// named field get returns empty, or nil.
func missingFields(get func(string) string, names ...string) []string {
	var out []string
	for _, n := range names {
		if get(n) == "" {
			out = append(out, n+" should not be empty")
		}
	}
	return out
}

// installedQuery is GET /oauth/installedLocations's query, parsed.
type installedQuery struct {
	company, app, location, name string
	skip, limit                  int
	installed                    *bool // nil: both
}

// parseInstalledQuery reads the query, or returns the 422 messages: companyId
// and appId required, skip at least 0 (default 0), limit 1..100 (default 20),
// isInstalled true or false.
func parseInstalledQuery(r *http.Request) (installedQuery, []string) {
	q := r.URL.Query()
	iq := installedQuery{company: q.Get("companyId"), app: q.Get("appId"), location: q.Get("locationId"),
		name: strings.ToLower(q.Get("query")), limit: 20}
	msgs := missingFields(q.Get, "companyId", "appId")
	if v := q.Get("skip"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			msgs = append(msgs, "skip must not be less than 0")
		}
		iq.skip = n
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		switch {
		case err != nil || n < 1:
			msgs = append(msgs, "limit must not be less than 1")
		case n > 100:
			msgs = append(msgs, "limit must not be greater than 100")
		}
		iq.limit = n
	}
	switch v := q.Get("isInstalled"); v {
	case "":
	case "true", "false":
		b := v == "true"
		iq.installed = &b
	default:
		msgs = append(msgs, "isInstalled must be a boolean value")
	}
	return iq, msgs
}

// match reports whether an install record passes the query's filters.
func (iq installedQuery) match(in *install) bool {
	return in.company == iq.company &&
		(iq.installed == nil || *iq.installed == in.installed) &&
		(iq.location == "" || iq.location == in.location) &&
		(iq.name == "" || strings.Contains(strings.ToLower(in.name), iq.name))
}

// installedLocations serves GET /oauth/installedLocations: the company's
// locations where the app is or was installed (uninstalled ones with
// isInstalled false), in first-install order, filtered by isInstalled,
// locationId and query (a case-insensitive part of the name), paged by
// skip and limit; count is how many match before paging. The sandbox knows
// only locations InstallLocation was called for, so locations that never
// had the app are not listed. versionId, onTrial and planId are accepted
// and ignored (every install has the same version and plan). Undocumented
// upstream, decided here: a companyId other than the token's is 403 (see
// forbidden); an appId other than Config.AppID is 400 "appId does not match
// the token's app", loud rather than an empty list a client could take for
// "uninstalled everywhere".
func (s *Server) installedLocations(w http.ResponseWriter, r *http.Request, company string) {
	iq, msgs := parseInstalledQuery(r)
	switch {
	case msgs != nil:
		unprocessable(w, msgs...)
		return
	case iq.company != company:
		forbidden(w)
		return
	case iq.app != s.cfg.AppID:
		badRequest(w, "appId does not match the token's app")
		return
	}
	page := []map[string]any{}
	count := 0
	s.mu.RLock()
	for _, in := range s.agencies.order {
		if !iq.match(in) {
			continue
		}
		count++
		if count > iq.skip && len(page) < iq.limit {
			page = append(page, map[string]any{"_id": in.location, "name": in.name, "address": installAddress,
				"isInstalled": in.installed, "versionId": installVersionID, "installedAt": stamp(in.installedAt)})
		}
	}
	s.mu.RUnlock()
	writeJSON(w, http.StatusOK, map[string]any{"locations": page, "count": count, "installToFutureLocations": false})
}

// appEvent adds an INSTALL or UNINSTALL event's fields to m, as in
// docs/webhook-events/AppInstall.md and AppUninstall.md: appId, companyId
// (when known), locationId (left out with no location: an agency-level
// event), and for an INSTALL planId, installType ("Location", or "Company"
// agency-level) and, at a location, userId and the non-whitelabel fields.
// installType is not in the vendored payload files; HighLevel's deliveries
// carry it. trial (paid apps only) and companyName are left out.
func (s *Server) appEvent(m map[string]any, e EventSpec) {
	m["appId"] = cmp.Or(e.AppID, s.cfg.AppID)
	if e.Company != "" {
		m["companyId"] = e.Company
	}
	if e.Location == "" {
		delete(m, "locationId")
	}
	if e.Type != "INSTALL" {
		return
	}
	m["planId"] = installPlanID
	if e.Location == "" {
		m["installType"] = "Company"
		return
	}
	m["installType"], m["userId"] = "Location", installUserID
	m["isWhitelabelCompany"], m["whitelabelDetails"] = false, map[string]any{}
}

// IssuedSecrets returns every credential the sandbox handed out: access,
// refresh, company and minted tokens (for tests that scan for leaks).
func (s *Server) IssuedSecrets() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []string
	for t := range s.tokens {
		out = append(out, t)
	}
	for t := range s.refresh {
		out = append(out, t)
	}
	for t := range s.agencies.tokens {
		out = append(out, t)
	}
	for _, ts := range s.agencies.minted {
		out = append(out, ts...)
	}
	return out
}
