package sandbox_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/contract"
	"github.com/ghlcancel/ghlcancel/internal/sandbox"
)

const (
	agencyCo    = "agencyCompany0000001"
	otherCo     = "otherCompany00000001"
	locA        = "agencyLocationA00001"
	locB        = "agencyLocationB00001"
	locOther    = "otherCoLocation00001" // installed for otherCo
	locNever    = "neverInstalled000001"
	invalidTok  = "Invalid token: access token is invalid"
	notInstMsg  = "This app is not installed on this location"
	convVersion = sandbox.VersionDefault
)

// clock is a Config.Now that tests move by hand, safe to read from the
// server's goroutines.
type clock struct{ ns atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.ns.Store(time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC).UnixNano())
	return c
}

func (c *clock) Now() time.Time          { return time.Unix(0, c.ns.Load()).UTC() }
func (c *clock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

// agencyBundle is a sandbox with agency agencyCo (its app installed at locA
// and locB) and otherCo (installed at locOther), served over HTTP.
type agencyBundle struct {
	sb       *sandbox.Server
	url      string
	clock    *clock
	refresh  string // agencyCo's first refresh token
	otherRT  string // otherCo's
	validate *contract.Validator
}

// setupAgency builds the bundle; cfg.Now is the bundle's clock. With
// validate, the handler is behind HighLevel's OpenAPI validator.
func setupAgency(t *testing.T, cfg sandbox.Config, validate bool) *agencyBundle {
	t.Helper()
	b := &agencyBundle{clock: newClock()}
	cfg.Now = b.clock.Now
	b.sb = sandbox.New(cfg)
	b.refresh = b.sb.AddAgency(agencyCo)
	b.otherRT = b.sb.AddAgency(otherCo)
	b.sb.InstallLocation(agencyCo, locA, "Location A")
	b.sb.InstallLocation(agencyCo, locB, "Location B")
	b.sb.InstallLocation(otherCo, locOther, "")
	h := b.sb.Handler()
	if validate {
		v, err := contract.New()
		require.NoError(t, err)
		b.validate = v
		h = v.Wrap(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	b.url = srv.URL
	return b
}

// answer is an HTTP answer with its JSON body decoded.
type answer struct {
	code   int
	header http.Header
	body   map[string]any
}

// call sends method path with the Version header (when not empty), the
// bearer token (when not empty) and form, as a body for POST and as the
// query for GET.
func (b *agencyBundle) call(t *testing.T, method, path, version, token string, form url.Values) answer {
	t.Helper()
	var body *strings.Reader
	if method == http.MethodPost {
		body = strings.NewReader(form.Encode())
	} else {
		body = strings.NewReader("")
		if form != nil {
			path += "?" + form.Encode()
		}
	}
	req, err := http.NewRequest(method, b.url+path, body)
	require.NoError(t, err)
	if method == http.MethodPost {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if version != "" {
		req.Header.Set("Version", version)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	a := answer{code: resp.StatusCode, header: resp.Header}
	_ = json.NewDecoder(resp.Body).Decode(&a.body)
	return a
}

// refreshWith spends a refresh token at POST /oauth/token.
func (b *agencyBundle) refreshWith(t *testing.T, rt string) answer {
	t.Helper()
	return b.call(t, http.MethodPost, "/oauth/token", "", "", url.Values{
		"client_id": {sandbox.ClientIDDefault}, "client_secret": {sandbox.ClientSecretDefault},
		"grant_type": {"refresh_token"}, "refresh_token": {rt}, "user_type": {"Company"}})
}

// companyToken spends agencyCo's refresh token and returns the access token.
func (b *agencyBundle) companyToken(t *testing.T) string {
	t.Helper()
	a := b.refreshWith(t, b.refresh)
	require.Equal(t, http.StatusOK, a.code, a.body)
	b.refresh = a.body["refresh_token"].(string)
	return a.body["access_token"].(string)
}

func (b *agencyBundle) mint(t *testing.T, token, company, location string) answer {
	t.Helper()
	return b.call(t, http.MethodPost, "/oauth/locationToken", sandbox.AgencyVersion, token,
		url.Values{"companyId": {company}, "locationId": {location}})
}

// mintOK mints a token for location as agencyCo and returns it.
func (b *agencyBundle) mintOK(t *testing.T, companyToken, location string) string {
	t.Helper()
	a := b.mint(t, companyToken, agencyCo, location)
	require.Equal(t, http.StatusOK, a.code, a.body)
	return a.body["access_token"].(string)
}

func (b *agencyBundle) installed(t *testing.T, token string, q url.Values) answer {
	t.Helper()
	return b.call(t, http.MethodGet, "/oauth/installedLocations", sandbox.AgencyVersion, token, q)
}

// cancel asks to cancel a scheduled message of location with token.
func (b *agencyBundle) cancel(t *testing.T, token, location string) answer {
	t.Helper()
	id := b.sb.ScheduleN(location, 1, false)[0]
	return b.call(t, http.MethodDelete, "/conversations/messages/"+id+"/schedule", convVersion, token, nil)
}

// TestCompanyGrant: an agency's refresh token works once and yields a
// company token, which the conversations routes refuse.
func TestCompanyGrant(t *testing.T) {
	t.Parallel()
	b := setupAgency(t, sandbox.Config{}, false)
	rt := b.refresh
	a := b.refreshWith(t, rt)
	require.Equal(t, http.StatusOK, a.code)
	require.Equal(t, "Company", a.body["userType"])
	require.Equal(t, agencyCo, a.body["companyId"])
	require.Equal(t, sandbox.AccessTTLDefault.Seconds(), a.body["expires_in"])
	require.NotContains(t, a.body, "locationId")
	company := a.body["access_token"].(string)

	again := b.refreshWith(t, rt)
	require.Equal(t, http.StatusBadRequest, again.code)
	require.Equal(t, "invalid_grant", again.body["error"])
	require.Equal(t, "Invalid grant: refresh token is invalid", again.body["message"])
	require.Equal(t, http.StatusOK, b.refreshWith(t, a.body["refresh_token"].(string)).code, "the new one works")

	c := b.cancel(t, company, locA)
	require.Equal(t, http.StatusUnauthorized, c.code)
	require.Equal(t, invalidTok, c.body["message"])

	st := b.sb.Stats()
	require.Equal(t, int64(2), st.Refreshes)
	require.Equal(t, int64(1), st.InvalidGrants)
}

// TestMintRefusals: every way POST /oauth/locationToken refuses, in the
// wrapper's order; none mints.
func TestMintRefusals(t *testing.T) {
	t.Parallel()
	b := setupAgency(t, sandbox.Config{}, false)
	company := b.companyToken(t)
	minted := b.mintOK(t, company, locB)
	b.sb.AddLocation(locA, "pit-token")
	b.sb.SetInactive(locB, true)
	loc := b.sb.AddOAuthLocation(locA)
	la := b.refreshWith(t, loc)
	require.Equal(t, http.StatusOK, la.code)
	locationOAuth := la.body["access_token"].(string)
	before := b.sb.Stats()

	for _, tc := range []struct {
		name              string
		version, token    string
		company, location string
		code              int
		msg               any
	}{
		{"no version", "", company, agencyCo, locA, 400, "version header was not found"},
		{"conversations version", convVersion, company, agencyCo, locA, 400, "version header is invalid"},
		{"no token", sandbox.AgencyVersion, "", agencyCo, locA, 401, invalidTok},
		{"unknown token", sandbox.AgencyVersion, "nope", agencyCo, locA, 401, invalidTok},
		{"private integration token", sandbox.AgencyVersion, "pit-token", agencyCo, locA, 401, "This authClass type is not allowed to access this scope"},
		{"location OAuth token", sandbox.AgencyVersion, locationOAuth, agencyCo, locA, 401, "This authClass type is not allowed to access this scope"},
		{"minted token", sandbox.AgencyVersion, minted, agencyCo, locA, 401, "This authClass type is not allowed to access this scope"},
		{"no companyId", sandbox.AgencyVersion, company, "", locA, 422, []any{"companyId should not be empty"}},
		{"no locationId", sandbox.AgencyVersion, company, agencyCo, "", 422, []any{"locationId should not be empty"}},
		{"another company", sandbox.AgencyVersion, company, otherCo, locOther, 403, "The token does not have access to this company"},
		{"inactive", sandbox.AgencyVersion, company, agencyCo, locB, 400, "Location is not active"},
		{"never installed", sandbox.AgencyVersion, company, agencyCo, locNever, 400, notInstMsg},
		{"installed for another company", sandbox.AgencyVersion, company, agencyCo, locOther, 400, notInstMsg},
	} {
		a := b.call(t, http.MethodPost, "/oauth/locationToken", tc.version, tc.token,
			url.Values{"companyId": {tc.company}, "locationId": {tc.location}})
		require.Equal(t, tc.code, a.code, tc.name)
		require.Equal(t, tc.msg, a.body["message"], tc.name)
	}
	st := b.sb.Stats()
	require.Equal(t, before.Mints, st.Mints, "nothing minted")
	require.Equal(t, before.MintsRefused+13, st.MintsRefused)
	require.Equal(t, before.Unauthorized, st.Unauthorized, "agency routes keep out of the conversations counters")
	require.Len(t, b.sb.Mints(locB), 1)
	require.Empty(t, b.sb.Mints(locA))
}

// TestMintedTokenLifetime: a minted token works on the cancel route until
// MintTTL, then gets "Invalid JWT"; minting again leaves earlier tokens alone.
func TestMintedTokenLifetime(t *testing.T) {
	t.Parallel()
	b := setupAgency(t, sandbox.Config{MintTTL: 1500 * time.Millisecond}, false)
	company := b.companyToken(t)
	start := b.clock.Now()
	a := b.mint(t, company, agencyCo, locA)
	require.Equal(t, http.StatusOK, a.code)
	for k, want := range map[string]any{"token_type": "Bearer", "expires_in": 1.5, "locationId": locA,
		"appId": sandbox.AppIDDefault, "scope": "conversations/message.readonly conversations/message.write"} {
		require.Equal(t, want, a.body[k], k)
	}
	for _, k := range []string{"planId", "userId", "versionId"} {
		require.NotEmpty(t, a.body[k], k)
	}
	first := a.body["access_token"].(string)
	require.True(t, strings.HasPrefix(first, "lt-"))
	require.Equal(t, http.StatusOK, b.cancel(t, first, locA).code)
	require.Equal(t, http.StatusUnauthorized, b.cancel(t, first, locB).code, "a token of locA, not locB")

	b.clock.Advance(time.Second)
	second := b.mintOK(t, company, locA)
	require.Equal(t, http.StatusOK, b.cancel(t, first, locA).code, "minting again does not revoke")
	require.Equal(t, http.StatusOK, b.cancel(t, second, locA).code)

	b.clock.Advance(500 * time.Millisecond)
	c := b.cancel(t, first, locA)
	require.Equal(t, http.StatusUnauthorized, c.code)
	require.Equal(t, "Invalid JWT", c.body["message"])
	require.Equal(t, http.StatusOK, b.cancel(t, second, locA).code)
	require.Equal(t, []time.Time{start, start.Add(time.Second)}, b.sb.Mints(locA))
	require.Equal(t, int64(2), b.sb.Stats().Mints)
}

// TestUninstallRevokesMintedTokens: uninstalling stops every minted token
// at once and refuses new mints until the app is installed again; the
// location's other tokens are not touched.
func TestUninstallRevokesMintedTokens(t *testing.T) {
	t.Parallel()
	b := setupAgency(t, sandbox.Config{}, false)
	b.sb.AddLocation(locA, "pit-token")
	company := b.companyToken(t)
	first, second := b.mintOK(t, company, locA), b.mintOK(t, company, locA)
	other := b.mintOK(t, company, locB)

	b.sb.UninstallLocation(locA)
	for _, tok := range []string{first, second} {
		a := b.cancel(t, tok, locA)
		require.Equal(t, http.StatusUnauthorized, a.code)
		require.Equal(t, invalidTok, a.body["message"])
	}
	require.Equal(t, http.StatusOK, b.cancel(t, other, locB).code, "another location's token")
	require.Equal(t, http.StatusOK, b.cancel(t, "pit-token", locA).code, "not an app token")
	a := b.mint(t, company, agencyCo, locA)
	require.Equal(t, http.StatusBadRequest, a.code)
	require.Equal(t, notInstMsg, a.body["message"])

	b.sb.InstallLocation(agencyCo, locA, "Location A")
	require.Equal(t, http.StatusOK, b.cancel(t, b.mintOK(t, company, locA), locA).code)
}

// TestRevokeAgency: a revoked grant's company tokens get 401 and its
// refresh tokens invalid_grant; tokens minted before live on; an expired
// company token gets "Invalid JWT".
func TestRevokeAgency(t *testing.T) {
	t.Parallel()
	b := setupAgency(t, sandbox.Config{AccessTTL: time.Hour}, false)
	company := b.companyToken(t)
	minted := b.mintOK(t, company, locA)
	otherCompany := b.refreshWith(t, b.otherRT).body["access_token"].(string)

	b.sb.RevokeAgency(agencyCo)
	a := b.mint(t, company, agencyCo, locA)
	require.Equal(t, http.StatusUnauthorized, a.code)
	require.Equal(t, invalidTok, a.body["message"])
	require.Equal(t, "invalid_grant", b.refreshWith(t, b.refresh).body["error"])
	require.Equal(t, http.StatusOK, b.cancel(t, minted, locA).code, "minted tokens live until they expire")
	require.Equal(t, http.StatusOK, b.mint(t, otherCompany, otherCo, locOther).code, "other agencies are not touched")

	b.refresh = b.sb.AddAgency(agencyCo)
	company = b.companyToken(t)
	require.Equal(t, http.StatusOK, b.mint(t, company, agencyCo, locA).code, "granted again")
	b.clock.Advance(time.Hour)
	a = b.mint(t, company, agencyCo, locA)
	require.Equal(t, http.StatusUnauthorized, a.code)
	require.Equal(t, "Invalid JWT", a.body["message"])
}

// TestCompanyRateLimit: mints and installed-locations calls count against
// the company's bucket, with a location's headers and 429, and not against
// the location's.
func TestCompanyRateLimit(t *testing.T) {
	t.Parallel()
	b := setupAgency(t, sandbox.Config{RetryAfter: true}, false)
	b.sb.SetRateLimit("company:"+agencyCo, 2)
	company := b.companyToken(t)
	a := b.mint(t, company, agencyCo, locA)
	require.Equal(t, http.StatusOK, a.code)
	require.Equal(t, "2", a.header.Get("X-RateLimit-Max"))
	require.Equal(t, "1", a.header.Get("X-RateLimit-Remaining"))
	require.Equal(t, "10000", a.header.Get("X-RateLimit-Interval-Milliseconds"))
	require.Equal(t, "199999", a.header.Get("X-RateLimit-Daily-Remaining"))
	minted := a.body["access_token"].(string)
	require.Equal(t, http.StatusOK, b.installed(t, company, url.Values{"companyId": {agencyCo}, "appId": {sandbox.AppIDDefault}}).code)

	a = b.mint(t, company, agencyCo, locA)
	require.Equal(t, http.StatusTooManyRequests, a.code)
	require.Equal(t, float64(429), a.body["statusCode"])
	require.Equal(t, "0", a.header.Get("X-RateLimit-Remaining"))
	require.Equal(t, "10", a.header.Get("Retry-After"))
	require.Equal(t, http.StatusTooManyRequests, b.installed(t, company, url.Values{"companyId": {agencyCo}, "appId": {sandbox.AppIDDefault}}).code)
	require.Equal(t, 2, b.sb.RateLimitedCount("company:"+agencyCo))

	require.Equal(t, http.StatusOK, b.cancel(t, minted, locA).code, "the location's own bucket")
	require.Len(t, b.sb.Admitted(locA), 1)
	require.Len(t, b.sb.Admitted("company:"+agencyCo), 2)
	b.clock.Advance(10 * time.Second)
	require.Equal(t, http.StatusOK, b.mint(t, company, agencyCo, locA).code, "a new window")
	st := b.sb.Stats()
	require.Equal(t, int64(2), st.Mints)
	require.Equal(t, int64(1), st.MintsRefused)
	require.Zero(t, st.RateLimited, "a conversations counter")
}

// TestInstalledLocationsQuery: filters, defaults, and the 4xx answers.
func TestInstalledLocationsQuery(t *testing.T) {
	t.Parallel()
	b := setupAgency(t, sandbox.Config{}, false)
	for i := range 30 {
		b.sb.InstallLocation(agencyCo, fmt.Sprintf("bulkLocation%08d", i), fmt.Sprintf("Bulk %02d", i))
	}
	b.sb.UninstallLocation(locB)
	company := b.companyToken(t)
	list := func(kv ...string) answer {
		q := url.Values{"companyId": {agencyCo}, "appId": {sandbox.AppIDDefault}}
		for i := 0; i < len(kv); i += 2 {
			q.Set(kv[i], kv[i+1])
		}
		return b.installed(t, company, q)
	}
	ids := func(a answer) []string {
		var out []string
		for _, l := range a.body["locations"].([]any) {
			out = append(out, l.(map[string]any)["_id"].(string))
		}
		return out
	}

	a := list()
	require.Equal(t, http.StatusOK, a.code)
	require.Equal(t, float64(32), a.body["count"], "locA, locB and 30 bulk; not otherCo's")
	require.Equal(t, false, a.body["installToFutureLocations"])
	require.Len(t, ids(a), 20, "limit defaults to 20")
	require.Equal(t, []string{locA, locB}, ids(a)[:2], "install order")
	first := a.body["locations"].([]any)[0].(map[string]any)
	require.Equal(t, "Location A", first["name"])
	require.Equal(t, true, first["isInstalled"])
	require.Equal(t, b.clock.Now().Format("2006-01-02T15:04:05.000Z"), first["installedAt"])
	require.NotEmpty(t, first["address"])
	require.NotEmpty(t, first["versionId"])

	for _, tc := range []struct {
		name  string
		kv    []string
		count float64
		ids   []string
	}{
		{"uninstalled only", []string{"isInstalled", "false"}, 1, []string{locB}},
		{"installed only", []string{"isInstalled", "true", "limit", "2"}, 31, []string{locA, "bulkLocation00000000"}},
		{"one location", []string{"locationId", locA}, 1, []string{locA}},
		{"by name", []string{"query", "bulk 2"}, 10, nil},
		{"skip past the end", []string{"skip", "32"}, 32, nil},
		{"another app's location", []string{"locationId", locOther}, 0, nil},
	} {
		a := list(tc.kv...)
		require.Equal(t, http.StatusOK, a.code, tc.name)
		require.Equal(t, tc.count, a.body["count"], tc.name)
		if tc.ids != nil {
			require.Equal(t, tc.ids, ids(a), tc.name)
		}
	}
	require.Empty(t, ids(list("skip", "32")))

	for _, tc := range []struct {
		name string
		q    url.Values
		code int
		msg  any
	}{
		{"no companyId", url.Values{"appId": {sandbox.AppIDDefault}}, 422, []any{"companyId should not be empty"}},
		{"no appId", url.Values{"companyId": {agencyCo}}, 422, []any{"appId should not be empty"}},
		{"limit 101", url.Values{"companyId": {agencyCo}, "appId": {sandbox.AppIDDefault}, "limit": {"101"}}, 422, []any{"limit must not be greater than 100"}},
		{"limit 0", url.Values{"companyId": {agencyCo}, "appId": {sandbox.AppIDDefault}, "limit": {"0"}}, 422, []any{"limit must not be less than 1"}},
		{"skip -1", url.Values{"companyId": {agencyCo}, "appId": {sandbox.AppIDDefault}, "skip": {"-1"}}, 422, []any{"skip must not be less than 0"}},
		{"isInstalled yes", url.Values{"companyId": {agencyCo}, "appId": {sandbox.AppIDDefault}, "isInstalled": {"yes"}}, 422, []any{"isInstalled must be a boolean value"}},
		{"another company", url.Values{"companyId": {otherCo}, "appId": {sandbox.AppIDDefault}}, 403, "The token does not have access to this company"},
		{"another app", url.Values{"companyId": {agencyCo}, "appId": {"someOtherApp"}}, 400, "appId does not match the token's app"},
	} {
		a := b.installed(t, company, tc.q)
		require.Equal(t, tc.code, a.code, tc.name)
		require.Equal(t, tc.msg, a.body["message"], tc.name)
	}
	a = b.call(t, http.MethodGet, "/oauth/installedLocations", sandbox.VersionDefault, company,
		url.Values{"companyId": {agencyCo}, "appId": {sandbox.AppIDDefault}})
	require.Equal(t, http.StatusBadRequest, a.code, "the conversations Version")
}

// TestAgencyFaults: injected faults hit the agency routes too, and a
// faulted mint mints nothing.
func TestAgencyFaults(t *testing.T) {
	t.Parallel()
	b := setupAgency(t, sandbox.Config{}, false)
	company := b.companyToken(t)
	b.sb.SetFaults(sandbox.Faults{ErrorRate: 1})
	a := b.mint(t, company, agencyCo, locA)
	require.GreaterOrEqual(t, a.code, 500)
	b.sb.SetFaults(sandbox.Faults{LostResponseRate: 1})
	require.Equal(t, http.StatusBadGateway, b.mint(t, company, agencyCo, locA).code)
	st := b.sb.Stats()
	require.Equal(t, int64(1), st.Faulted5xx)
	require.Equal(t, int64(1), st.LostResponses)
	require.Equal(t, int64(1), st.MintsRefused)
	require.Equal(t, int64(1), st.Mints, "a lost response was minted all the same")
	require.Len(t, b.sb.Mints(locA), 1)
	require.Zero(t, st.Requests, "a conversations counter")
}

// TestAppEvents: INSTALL and UNINSTALL bodies as in HighLevel's payload
// files, at a location and agency-level.
func TestAppEvents(t *testing.T) {
	t.Parallel()
	sb := sandbox.New(sandbox.Config{AppID: "myApp"})
	ts := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	body := func(e sandbox.EventSpec) map[string]any {
		e.WebhookID, e.Timestamp = "wh1", ts
		var m map[string]any
		require.NoError(t, json.Unmarshal(sb.EventBody(e), &m))
		return m
	}
	common := map[string]any{"webhookId": "wh1", "timestamp": "2026-11-27T10:00:00.000Z"}
	with := func(m map[string]any) map[string]any {
		for k, v := range common {
			m[k] = v
		}
		return m
	}
	for _, tc := range []struct {
		name string
		e    sandbox.EventSpec
		want map[string]any
	}{
		{"install at a location", sandbox.EventSpec{Type: "INSTALL", Location: locA, Company: agencyCo}, with(map[string]any{
			"type": "INSTALL", "appId": "myApp", "companyId": agencyCo, "locationId": locA, "userId": "sandboxInstallUser01",
			"planId": "sandboxPlan000000001", "installType": "Location", "isWhitelabelCompany": false, "whitelabelDetails": map[string]any{}})},
		{"install agency-level", sandbox.EventSpec{Type: "INSTALL", Company: agencyCo, AppID: "otherApp"}, with(map[string]any{
			"type": "INSTALL", "appId": "otherApp", "companyId": agencyCo, "planId": "sandboxPlan000000001", "installType": "Company"})},
		{"uninstall at a location", sandbox.EventSpec{Type: "UNINSTALL", Location: locA}, with(map[string]any{
			"type": "UNINSTALL", "appId": "myApp", "locationId": locA})},
		{"uninstall agency-level", sandbox.EventSpec{Type: "UNINSTALL", Company: agencyCo}, with(map[string]any{
			"type": "UNINSTALL", "appId": "myApp", "companyId": agencyCo})},
		{"other events unchanged", sandbox.EventSpec{Type: "ContactDelete", Location: locA, Contact: "c1", Company: agencyCo}, with(map[string]any{
			"type": "ContactDelete", "locationId": locA, "id": "c1", "dnd": false})},
	} {
		require.Equal(t, tc.want, body(tc.e), tc.name)
	}
}

// TestAgencyContract drives the agency routes through HighLevel's OpenAPI
// validator: a company refresh, mints and refusals, and installed
// locations paged 100 at a time over 250 installs. 403 and 429 are not in
// the spec; the validator, as for the conversations routes, does not hold
// undocumented statuses against the server.
func TestAgencyContract(t *testing.T) {
	t.Parallel()
	b := setupAgency(t, sandbox.Config{}, true)
	for i := range 248 {
		b.sb.InstallLocation(agencyCo, fmt.Sprintf("pagedLocation%07d", i), "")
	}
	b.sb.AddLocation(locA, "pit-token")
	company := b.companyToken(t)

	minted := b.mintOK(t, company, locA)
	require.Equal(t, http.StatusOK, b.cancel(t, minted, locA).code)
	require.Equal(t, http.StatusUnauthorized, b.mint(t, "pit-token", agencyCo, locA).code)
	require.Equal(t, http.StatusBadRequest, b.mint(t, company, agencyCo, locNever).code)
	b.sb.SetInactive(locB, true)
	require.Equal(t, http.StatusBadRequest, b.mint(t, company, agencyCo, locB).code)
	require.Equal(t, http.StatusForbidden, b.mint(t, company, otherCo, locOther).code)

	seen := map[string]bool{}
	for page, want := range []int{100, 100, 50, 0} {
		a := b.installed(t, company, url.Values{"companyId": {agencyCo}, "appId": {sandbox.AppIDDefault},
			"limit": {"100"}, "skip": {fmt.Sprint(page * 100)}})
		require.Equal(t, http.StatusOK, a.code)
		require.Equal(t, float64(250), a.body["count"])
		require.Len(t, a.body["locations"], want)
		for _, l := range a.body["locations"].([]any) {
			seen[l.(map[string]any)["_id"].(string)] = true
		}
	}
	require.Len(t, seen, 250)
	a := b.installed(t, company, url.Values{"companyId": {agencyCo}, "appId": {sandbox.AppIDDefault}, "limit": {"101"}})
	require.Equal(t, http.StatusUnprocessableEntity, a.code)

	b.sb.SetRateLimit("company:"+agencyCo, 1)
	require.Equal(t, http.StatusTooManyRequests, b.mint(t, company, agencyCo, locA).code)

	require.Empty(t, b.validate.Problems())
	checked := b.validate.Checked()
	for _, k := range []string{
		"POST /oauth/token 200", "POST /oauth/locationToken 200", "POST /oauth/locationToken 401",
		"POST /oauth/locationToken 400", "POST /oauth/locationToken 403", "POST /oauth/locationToken 429",
		"GET /oauth/installedLocations 200", "GET /oauth/installedLocations 422",
		"DELETE /conversations/messages/{messageId}/schedule 200",
	} {
		require.Positive(t, checked[k], "%s in %v", k, checked)
	}
}
