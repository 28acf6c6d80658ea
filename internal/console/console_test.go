package console_test

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"html"
	"html/template"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/campaign"
	"github.com/ghlcancel/ghlcancel/internal/console"
	"github.com/ghlcancel/ghlcancel/internal/deadletter"
	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/intake"
	"github.com/ghlcancel/ghlcancel/internal/ledger"
	"github.com/ghlcancel/ghlcancel/internal/producer"
	"github.com/ghlcancel/ghlcancel/internal/ratelimit"
	"github.com/ghlcancel/ghlcancel/internal/sandbox"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
	"github.com/ghlcancel/ghlcancel/metrics"
)

func cookieNamed(resp *http.Response, name string) *http.Cookie {
	for _, c := range resp.Cookies() {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// waitCampaign waits until the campaign is complete and returns it.
func waitCampaign(t *testing.T, s *stack, id string) campaign.Status {
	t.Helper()
	var st campaign.Status
	require.Eventually(t, func() bool {
		var ok bool
		st, ok, _ = campaign.New(s.rdb, 0).Get(context.Background(), id)
		return ok && st.Complete
	}, 30*time.Second, 50*time.Millisecond)
	return st
}

func TestSignInAndOut(t *testing.T) {
	s := newStack(t, stackOpts{})
	b := s.browser(t)

	// Signed out: every page leads to the sign-in page, keeping where to go.
	resp, _ := b.get("/console/dead?reason=unauthorized")
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	assert.Equal(t, "/console/login?next="+url.QueryEscape("/console/dead?reason=unauthorized"), resp.Header.Get("Location"))
	resp, _ = b.get("/console")
	assert.Equal(t, http.StatusSeeOther, resp.StatusCode)

	resp, page := b.get("/console/login")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, console.CSP, resp.Header.Get("Content-Security-Policy"))
	assert.Equal(t, "DENY", resp.Header.Get("X-Frame-Options"))
	assert.Equal(t, "no-store", resp.Header.Get("Cache-Control"))
	assert.Equal(t, "same-origin", resp.Header.Get("Referrer-Policy"), "no-referrer would make browsers send Origin: null")
	assert.NotContains(t, page, "<script>", "no inline script under the CSP")
	assert.NotContains(t, page, "style=", "no inline style under the CSP")
	tok := match(t, loginTokenRE, page)

	// A wrong key: refused, with what to use instead, and no session.
	resp, page = b.post("/console/login", url.Values{"login_token": {tok}, "key": {"wrong-key-0123456789abcdef"}})
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	assert.Contains(t, page, "That key is not accepted")
	assert.Nil(t, cookieNamed(resp, console.SessionCookie))
	assert.NotContains(t, page, "wrong-key-0123456789abcdef", "a key is never echoed")

	// The right key, but the sign-in form's token is missing (login CSRF),
	// or the form was posted from another site.
	resp, _ = b.post("/console/login", url.Values{"key": {operatorKey}})
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)
	_, page = b.get("/console/login")
	resp, _ = b.do(http.MethodPost, "/console/login", url.Values{"login_token": {match(t, loginTokenRE, page)}, "key": {operatorKey}},
		map[string]string{"Origin": "https://evil.example"})
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)
	assert.Nil(t, cookieNamed(resp, console.SessionCookie))
	// A "next" leading off the console is replaced by the console's home.
	_, page = b.get("/console/login")
	resp, _ = b.post("/console/login", url.Values{"login_token": {match(t, loginTokenRE, page)}, "key": {operatorKey}, "next": {"https://evil.example/"}})
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	assert.Equal(t, "/console/", resp.Header.Get("Location"))

	// The right key pasted with a line break: the same key (the API's
	// Bearer is trimmed too).
	_, page = b.get("/console/login")
	resp, _ = b.post("/console/login", url.Values{"login_token": {match(t, loginTokenRE, page)}, "key": {" " + operatorKey + "\n"}})
	require.Equal(t, http.StatusSeeOther, resp.StatusCode, "a key with spaces around it")

	// The right key: a session cookie, HttpOnly and SameSite=Strict; not
	// Secure on a loopback host (browsers keep it on http://127.0.0.1).
	_, page = b.get("/console/login")
	resp, _ = b.post("/console/login", url.Values{"login_token": {match(t, loginTokenRE, page)}, "key": {operatorKey}, "next": {"/console/dead?reason=unauthorized"}})
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	assert.Equal(t, "/console/dead?reason=unauthorized", resp.Header.Get("Location"))
	ck := cookieNamed(resp, console.SessionCookie)
	require.NotNil(t, ck)
	assert.True(t, ck.HttpOnly)
	assert.Equal(t, http.SameSiteStrictMode, ck.SameSite)
	assert.False(t, ck.Secure)
	assert.Equal(t, "/console", ck.Path)
	assert.NotContains(t, ck.Value, operatorKey)

	resp, home := b.get("/console/")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.NotContains(t, home, operatorKey)
	assert.NotContains(t, home, "read-only")
	csrf := match(t, csrfRE, home)

	// Sign-out needs the CSRF token too, then ends the session for good:
	// the old cookie replayed later is signed out.
	old := ck.Value
	resp, _ = b.post("/console/logout", url.Values{})
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)
	resp, _ = b.post("/console/logout", url.Values{"csrf": {csrf}})
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	assert.Equal(t, "/console/login", resp.Header.Get("Location"))
	replay := s.browser(t)
	u, _ := url.Parse(s.url + "/console/")
	replay.c.Jar.SetCookies(u, []*http.Cookie{{Name: console.SessionCookie, Value: old, Path: "/console"}})
	resp, _ = replay.get("/console/")
	assert.Equal(t, http.StatusSeeOther, resp.StatusCode, "a signed-out session must not work again")

	// CONSOLE_KEYS keys sign in too.
	s.browser(t).signIn(consoleKey)
}

// TestSecureCookieOffLoopback: behind a proxy on a real host name the
// cookies are Secure and __Host- prefixed (Path=/), and a cookie without
// the prefix, which a sibling subdomain could plant, is not read there.
func TestSecureCookieOffLoopback(t *testing.T) {
	s := newStack(t, stackOpts{})
	b := s.browser(t)
	b.host = "console.example.com"
	resp, page := b.get("/console/login")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	login := cookieNamed(resp, console.HostPrefix+"ghlcancel_login")
	require.NotNil(t, login)
	assert.True(t, login.Secure)
	assert.Equal(t, "/", login.Path)
	assert.Nil(t, cookieNamed(resp, "ghlcancel_login"))
	tok := match(t, loginTokenRE, page)
	form := url.Values{"login_token": {tok}, "key": {operatorKey}}
	origin := map[string]string{"Origin": "https://console.example.com"}

	// A planted login cookie without the prefix does not pass the check.
	resp, _ = b.do(http.MethodPost, "/console/login", form, map[string]string{"Cookie": "ghlcancel_login=" + tok, "Origin": origin["Origin"]})
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)

	resp, _ = b.do(http.MethodPost, "/console/login", form,
		map[string]string{"Cookie": console.HostPrefix + "ghlcancel_login=" + tok, "Origin": origin["Origin"]})
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	sess := cookieNamed(resp, console.HostPrefix+console.SessionCookie)
	require.NotNil(t, sess)
	assert.True(t, sess.Secure)
	assert.True(t, sess.HttpOnly)
	assert.Equal(t, "/", sess.Path)
	assert.Nil(t, cookieNamed(resp, console.SessionCookie))
	cleared := cookieNamed(resp, console.HostPrefix+"ghlcancel_login")
	require.NotNil(t, cleared, "the sign-in token is cleared")
	assert.Negative(t, cleared.MaxAge)
	assert.Equal(t, "/", cleared.Path, "cleared with the attributes it was set with, or the browser keeps it")
	assert.True(t, cleared.Secure)

	// The session works under its prefixed name only.
	resp, _ = b.do(http.MethodGet, "/console/", nil, map[string]string{"Cookie": console.HostPrefix + console.SessionCookie + "=" + sess.Value})
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	resp, _ = b.do(http.MethodGet, "/console/", nil, map[string]string{"Cookie": console.SessionCookie + "=" + sess.Value})
	assert.Equal(t, http.StatusSeeOther, resp.StatusCode, "not signed in: to the sign-in page")

	// Sign-out clears it the same way.
	signedIn := map[string]string{"Cookie": console.HostPrefix + console.SessionCookie + "=" + sess.Value, "Origin": origin["Origin"]}
	_, home := b.do(http.MethodGet, "/console/", nil, signedIn)
	resp, _ = b.do(http.MethodPost, "/console/logout", url.Values{"csrf": {match(t, csrfRE, home)}}, signedIn)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	out := cookieNamed(resp, console.HostPrefix+console.SessionCookie)
	require.NotNil(t, out)
	assert.Negative(t, out.MaxAge)
	assert.Equal(t, "/", out.Path)
	assert.True(t, out.Secure)
	resp, _ = b.do(http.MethodGet, "/console/", nil, signedIn)
	assert.Equal(t, http.StatusSeeOther, resp.StatusCode, "the session ended")
}

// TestRefusedWithoutCSRF: a state-changing request without the session's
// CSRF token, or from another site, changes nothing.
func TestRefusedWithoutCSRF(t *testing.T) {
	s := newStack(t, stackOpts{})
	s.finished(t, "csrf", map[string]int{locBad: 3})
	b := s.browser(t)
	csrf := b.signIn(operatorKey)
	dead := deadletter.New(s.rdb)
	n, err := dead.Count(context.Background())
	require.NoError(t, err)
	require.EqualValues(t, 3, n)

	form := url.Values{"scope": {"filter"}, "campaign": {"csrf"}}
	resp, page := b.post("/console/dead/requeue", form)
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)
	assert.Contains(t, page, "security token")
	form.Set("csrf", strings.Repeat("0", 64))
	resp, _ = b.post("/console/dead/requeue", form)
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)
	form.Set("csrf", csrf)
	resp, _ = b.do(http.MethodPost, "/console/dead/requeue", form, map[string]string{"Origin": "https://evil.example"})
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)
	resp, _ = b.do(http.MethodPost, "/console/dead/requeue", form, map[string]string{"Sec-Fetch-Site": "cross-site"})
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)
	resp, _ = b.do(http.MethodPost, "/console/dead/requeue", form, map[string]string{"Origin": "null"})
	assert.Equal(t, http.StatusForbidden, resp.StatusCode, "an opaque origin (sandboxed frame, data: URL)")
	purge := url.Values{"campaign": {"csrf"}, "expected": {"3"}, "confirm": {"3"}}
	resp, _ = b.post("/console/dead/purge", purge)
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)

	n, err = dead.Count(context.Background())
	require.NoError(t, err)
	assert.EqualValues(t, 3, n, "nothing requeued or purged")

	// The same form with the token goes through.
	resp, _ = b.post("/console/dead/requeue", form)
	assert.Equal(t, http.StatusSeeOther, resp.StatusCode)
}

// TestReadOnlyKey: a read-only session sees everything and changes nothing.
func TestReadOnlyKey(t *testing.T) {
	s := newStack(t, stackOpts{})
	s.finished(t, "ro", map[string]int{locBad: 2, locGood: 2})
	b := s.browser(t)
	csrf := b.signIn(readOnlyKey)

	_, page := b.get("/console/")
	assert.Contains(t, page, "read-only")
	assert.Contains(t, page, `href="/console/campaign?id=ro"`)
	resp, page := b.get("/console/campaign?id=ro")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, page, "unauthorized")
	_, page = b.get("/console/dead?campaign=ro")
	assert.Contains(t, page, "read-only key")
	assert.NotContains(t, page, `name="id"`, "no selection boxes for a read-only session")
	assert.NotContains(t, page, "Requeue selected")
	resp, _ = b.get("/console/campaign/report.csv?id=ro")
	assert.Equal(t, http.StatusOK, resp.StatusCode, "read-only sessions download reports")

	recs := deadIDs(t, s, deadletter.Filter{CampaignID: "ro"})
	require.Len(t, recs, 2)
	for _, form := range []url.Values{
		{"csrf": {csrf}, "scope": {"filter"}, "campaign": {"ro"}},
		{"csrf": {csrf}, "scope": {"selected"}, "id": recs},
	} {
		resp, page = b.post("/console/dead/requeue", form)
		assert.Equal(t, http.StatusForbidden, resp.StatusCode)
		assert.Contains(t, page, "read-only key")
	}
	resp, _ = b.post("/console/dead/purge", url.Values{"csrf": {csrf}, "campaign": {"ro"}, "expected": {"2"}, "confirm": {"2"}})
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)
	assert.Len(t, deadIDs(t, s, deadletter.Filter{CampaignID: "ro"}), 2, "nothing changed")

	// Sign-out works for read-only sessions.
	resp, _ = b.post("/console/logout", url.Values{"csrf": {csrf}})
	assert.Equal(t, http.StatusSeeOther, resp.StatusCode)
}

func deadIDs(t *testing.T, s *stack, f deadletter.Filter) []string {
	t.Helper()
	var ids []string
	require.NoError(t, deadletter.New(s.rdb).Scan(context.Background(), f, func(r deadletter.Record) error {
		ids = append(ids, r.TaskID)
		return nil
	}))
	return ids
}

// TestFixAndRequeue is what an operator does twice: requeue before fixing
// the token (dead again, truthfully), fix it, requeue a selection, then the
// rest by filter, and requeue once more (nothing left: nothing happens).
func TestFixAndRequeue(t *testing.T) {
	s := newStack(t, stackOpts{})
	msgs := s.campaign(t, "fix", map[string]int{locBad: 4, locGood: 3})
	st := waitCampaign(t, s, "fix")
	require.EqualValues(t, 3, st.Cancelled)
	require.EqualValues(t, 4, st.DeadByReason["unauthorized"])
	b := s.browser(t)
	csrf := b.signIn(operatorKey)

	// The campaign page says what happened and what to do.
	_, page := b.get("/console/campaign?id=fix")
	assert.Contains(t, page, `id="o-cancelled">3<`)
	assert.Contains(t, page, `id="o-dead_lettered">4<`)
	assert.Contains(t, page, template.HTMLEscapeString(tasks.DeadLetterHint("unauthorized")))
	assert.Contains(t, page, `href="/console/dead?campaign=fix&amp;reason=unauthorized"`)
	assert.Contains(t, page, `<span class="bad">complete, with failures</span>`, "not a clean completion")
	// A campaign whose sweeps found messages queued in "fix" first names it.
	require.NoError(t, s.rdb.HSet(context.Background(), ledger.CampaignKey("finder"), "total", 0, "started_at", time.Now().UnixMilli(),
		"finished_at", time.Now().UnixMilli(), "sweeps", 1, "sweeps_done", 1).Err())
	require.NoError(t, s.rdb.SAdd(context.Background(), ledger.CampaignHeldByKey("finder"), "fix").Err())
	_, held := b.get("/console/campaign?id=finder")
	assert.Contains(t, held, `already queued or done in <a href="/console/campaign?id=fix">fix</a>: they are counted there`)
	_, list := b.get("/console/")
	assert.Contains(t, list, `<span class="bad">complete, with failures</span>`)

	// Requeued before the fix: they fail again and say so.
	resp, _ := b.post("/console/dead/requeue", url.Values{"csrf": {csrf}, "scope": {"filter"}, "campaign": {"fix"}})
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	loc := resp.Header.Get("Location")
	assert.Contains(t, loc, "campaign=fix")
	_, page = b.get(loc)
	assert.Contains(t, page, "Requeued 4.")
	_, page = b.get(loc)
	assert.NotContains(t, page, "Requeued", "a reload does not show the result again")
	st = waitCampaign(t, s, "fix")
	assert.EqualValues(t, 4, st.DeadLettered)
	assert.EqualValues(t, 3, st.Cancelled)

	// Fixed; requeue two selected, then the rest by filter.
	s.tokens.set(locBad, tokGood+"-bad-location")
	ids := deadIDs(t, s, deadletter.Filter{CampaignID: "fix"})
	require.Len(t, ids, 4)
	resp, _ = b.post("/console/dead/requeue", url.Values{"csrf": {csrf}, "scope": {"selected"}, "id": {ids[0], ids[1], ids[0], ids[1], ids[0]}})
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	_, page = b.get(resp.Header.Get("Location"))
	assert.Contains(t, page, "Requeued 2. Already queued 0,", "an id ticked twice counts once")
	require.Eventually(t, func() bool { return len(deadIDs(t, s, deadletter.Filter{CampaignID: "fix"})) == 2 }, 10*time.Second, 50*time.Millisecond)
	assert.ElementsMatch(t, ids[2:], deadIDs(t, s, deadletter.Filter{CampaignID: "fix"}), "only the selection was requeued")
	resp, _ = b.post("/console/dead/requeue", url.Values{"csrf": {csrf}, "scope": {"filter"}, "campaign": {"fix"}, "reason": {"unauthorized"}})
	_, page = b.get(resp.Header.Get("Location"))
	assert.Contains(t, page, "Requeued 2.")
	st = waitCampaign(t, s, "fix")
	assert.EqualValues(t, 7, st.Cancelled)
	assert.EqualValues(t, 0, st.DeadLettered)
	assert.Empty(t, st.DeadByReason)
	_, page = b.get("/console/campaign?id=fix")
	assert.Contains(t, page, `<span class="ok">complete</span>`, "clean once the dead letters are requeued and done")
	for _, id := range msgs {
		_, cancels, ok := s.sb.MessageStatus(id)
		require.True(t, ok)
		assert.Equal(t, 1, cancels, "every message cancelled once in the sandbox")
	}

	// A second requeue finds nothing and says so.
	resp, _ = b.post("/console/dead/requeue", url.Values{"csrf": {csrf}, "scope": {"filter"}, "campaign": {"fix"}})
	_, page = b.get(resp.Header.Get("Location"))
	assert.Contains(t, page, "Requeued 0.")
	// An empty selection, or no filter at all, is refused with what to do.
	resp, page = b.post("/console/dead/requeue", url.Values{"csrf": {csrf}, "scope": {"selected"}})
	assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
	assert.Contains(t, page, "Select at least one")
	resp, page = b.post("/console/dead/requeue", url.Values{"csrf": {csrf}, "scope": {"filter"}})
	assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
	assert.Contains(t, page, "enqueue dead requeue --all")

	// The CSV report has every message with its final outcome.
	resp, body := b.get("/console/campaign/report.csv?id=fix")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, `attachment; filename="fix.csv"`, resp.Header.Get("Content-Disposition"))
	rows, err := csv.NewReader(strings.NewReader(body)).ReadAll()
	require.NoError(t, err)
	require.Len(t, rows, 8)
	for _, r := range rows[1:] {
		assert.Equal(t, "cancelled", r[2], r)
	}
}

// TestResultLineCannotBeForged: the line after a requeue or purge comes
// from what the session did, once, not from the link: a crafted query shows
// nothing, another session's link shows nothing, a reload shows nothing.
func TestResultLineCannotBeForged(t *testing.T) {
	s := newStack(t, stackOpts{})
	s.finished(t, "flash", map[string]int{locBad: 3})
	a, other := s.browser(t), s.browser(t)
	csrf := a.signIn(operatorKey)
	other.signIn(operatorKey)

	// A number no random id or CSRF token on the page will hold ("999"
	// did, in one run's token).
	_, page := a.get("/console/dead?done=requeue&requeued=987654321&already_queued=1&done=purge&purged=987654321")
	assert.NotContains(t, page, "987654321")
	assert.NotContains(t, page, "987,654,321") // as the console would print it
	assert.NotContains(t, page, "Requeued ")
	assert.NotContains(t, page, `class="flash"`)

	resp, _ := a.post("/console/dead/requeue", url.Values{"csrf": {csrf}, "scope": {"filter"}, "campaign": {"flash"}})
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	loc := resp.Header.Get("Location")
	assert.NotContains(t, loc, "requeued=", "no numbers travel in the link")
	_, page = other.get(loc)
	assert.NotContains(t, page, `class="flash"`, "another session's result line")
	a.do(http.MethodHead, loc, nil, nil) // a HEAD (a link preview) does not use it up
	_, page = a.get(loc)
	assert.Contains(t, page, `<p class="flash" role="status">Requeued 3.`)
	_, page = a.get(loc)
	assert.NotContains(t, page, `class="flash"`, "shown once")

	// A Redis that will not keep the line: the requeue is done, its result
	// is shown in place.
	opt := *s.rdb.Options()
	rdb := redis.NewClient(&opt)
	t.Cleanup(func() { _ = rdb.Close() })
	rdb.AddHook(&failCmd{name: "set", from: 1})
	srv, err := intake.New(intake.Config{Redis: rdb, Keys: []string{operatorKey}, Registry: prometheus.NewRegistry()})
	require.NoError(t, err)
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	c := s.browser(t)
	c.base = hs.URL
	csrf = c.signIn(operatorKey)
	resp, page = c.post("/console/dead/requeue", url.Values{"csrf": {csrf}, "scope": {"filter"}, "campaign": {"flash"}})
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, page, `<p class="flash" role="status">Requeued `)
	assert.Contains(t, page, "skipped 0 (not rebuildable, left in place).")
}

// TestPurgeConfirmation: purge deletes only after the number of matching
// dead letters is typed, and again if the number changed meanwhile.
func TestPurgeConfirmation(t *testing.T) {
	s := newStack(t, stackOpts{})
	s.finished(t, "purge", map[string]int{locBad: 5})
	s.finished(t, "keep", map[string]int{locBad: 2})
	b := s.browser(t)
	csrf := b.signIn(operatorKey)

	asOfRE := regexp.MustCompile(`name="as_of" value="(\d+)"`)
	resp, page := b.get("/console/dead/purge?campaign=purge")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, page, `<strong id="purge-count">5</strong>`)
	shown := asOfRE.FindStringSubmatch(page)
	require.NotNil(t, shown)
	assert.Contains(t, page, "Type <strong>5</strong> to confirm")
	resp, page = b.get("/console/dead/purge")
	assert.Equal(t, http.StatusBadRequest, resp.StatusCode, "no filter: not from the browser")
	assert.Contains(t, page, "enqueue dead purge --all")

	form := url.Values{"csrf": {csrf}, "campaign": {"purge"}, "expected": {"5"},
		"as_of": {shown[1]}}
	for _, typed := range []string{"", "yes", "4", "50"} {
		form.Set("confirm", typed)
		resp, page = b.post("/console/dead/purge", form)
		assert.Equal(t, http.StatusUnprocessableEntity, resp.StatusCode, typed)
		assert.Contains(t, page, "Nothing was deleted: type 5 to confirm.")
	}
	assert.Len(t, deadIDs(t, s, deadletter.Filter{CampaignID: "purge"}), 5)

	// The count changed since the page was shown: ask again with the new one.
	form.Set("expected", "6")
	form.Set("confirm", "6")
	resp, page = b.post("/console/dead/purge", form)
	assert.Equal(t, http.StatusUnprocessableEntity, resp.StatusCode)
	assert.Contains(t, page, "changed since this page was shown")

	// Shown 5; before the operator confirms, one of them is requeued and
	// fails again: 5 still match, but the one that failed again was not
	// counted. Nothing is deleted; the page asks again.
	_, page = b.get("/console/dead/purge?campaign=purge")
	form.Set("as_of", asOfRE.FindStringSubmatch(page)[1])
	again := deadIDs(t, s, deadletter.Filter{CampaignID: "purge"})[0]
	rec, ok, err := deadletter.New(s.rdb).Get(context.Background(), again)
	require.NoError(t, err)
	require.True(t, ok)
	rec.DeadAt = time.Now().Add(time.Second)
	require.NoError(t, deadletter.New(s.rdb).Add(context.Background(), rec))
	form.Set("expected", "5")
	form.Set("confirm", "5")
	resp, page = b.post("/console/dead/purge", form)
	assert.Equal(t, http.StatusUnprocessableEntity, resp.StatusCode)
	assert.Contains(t, page, "the matching dead letters changed since this page was shown")
	assert.Len(t, deadIDs(t, s, deadletter.Filter{CampaignID: "purge"}), 5)

	// Confirmed from a fresh page: all 5, the one that failed again included.
	_, page = b.get("/console/dead/purge?campaign=purge")
	form.Set("as_of", asOfRE.FindStringSubmatch(page)[1])
	resp, _ = b.post("/console/dead/purge", form)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	assert.Contains(t, resp.Header.Get("Location"), "campaign=purge")
	assert.Empty(t, deadIDs(t, s, deadletter.Filter{CampaignID: "purge"}))
	assert.Len(t, deadIDs(t, s, deadletter.Filter{CampaignID: "keep"}), 2, "other campaigns' dead letters stay")
	// Their archived tasks went with them.
	insp := asynq.NewInspectorFromRedisClient(s.rdb)
	archived, err := insp.ListArchivedTasks(tasks.QueueBulk)
	require.NoError(t, err)
	assert.Len(t, archived, 2)
	_, page = b.get(resp.Header.Get("Location"))
	assert.Contains(t, page, "Purged 5 dead letters.")

	// Purging again: nothing matches, nothing to confirm.
	_, page = b.get("/console/dead/purge?campaign=purge")
	assert.Contains(t, page, `<strong id="purge-count">0</strong>`)
	assert.NotContains(t, page, `name="confirm"`)
}

// TestDeadLetterFilters: every filter narrows the list, and a bad one says
// what is allowed.
func TestDeadLetterFilters(t *testing.T) {
	s := newStack(t, stackOpts{})
	s.campaign(t, "f1", map[string]int{locBad: 3})
	s.campaign(t, "f2", map[string]int{locBad: 2})
	waitCampaign(t, s, "f1")
	waitCampaign(t, s, "f2")
	b := s.browser(t)
	b.signIn(operatorKey)
	count := func(q string) string {
		resp, page := b.get("/console/dead?" + q)
		require.Equal(t, http.StatusOK, resp.StatusCode, page)
		i := strings.Index(page, `id="dead-summary">`)
		require.Positive(t, i)
		return strings.SplitN(page[i+len(`id="dead-summary">`):], " ", 2)[0]
	}
	assert.Equal(t, "5", count(""))
	assert.Equal(t, "3", count("campaign=f1"))
	assert.Equal(t, "5", count("reason=unauthorized"))
	assert.Equal(t, "0", count("reason=forbidden"))
	assert.Equal(t, "5", count("location="+locBad))
	assert.Equal(t, "0", count("location="+locGood))
	assert.Equal(t, "5", count("kind=message"))
	assert.Equal(t, "0", count("kind=email"))
	assert.Equal(t, "5", count("age=1h"))
	assert.Equal(t, "0", count("age=gt1d"))
	resp, page := b.get("/console/dead?kind=sms")
	assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
	assert.Contains(t, page, "kind: message, email or sweep")
	resp, _ = b.get("/console/dead?age=forever")
	assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
}

// TestCampaignPages: the list and the page of a running campaign, its
// cooling location, an unknown campaign.
func TestCampaignPages(t *testing.T) {
	// 40 cancels at 4 per second: about 10 s running, so that a loaded
	// machine still finds it running on the pages below.
	s := newStack(t, stackOpts{rate: "4/1s"})
	const id = "slow one+&?#x"
	s.campaign(t, id, map[string]int{locGood: 40})
	b := s.browser(t)
	b.signIn(operatorKey)

	_, page := b.get("/console/")
	assert.Contains(t, page, `href="/console/campaign?id=slow%20one%2b%26%3f%23x"`)
	assert.Contains(t, page, "running")
	resp, page := b.get("/console/campaign?id=" + url.QueryEscape(id))
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, page, `data-live="/console/campaign/live?id=slow&#43;one%2B%26%3F%23x"`)
	assert.NotContains(t, page, `id="no-worker"`, "a worker serves this database")
	// The link to its dead letters filters on exactly this campaign.
	link := regexp.MustCompile(`href="(/console/dead\?campaign=[^"]*)"`).FindStringSubmatch(page)
	require.NotNil(t, link)
	_, dead := b.get(html.UnescapeString(link[1]))
	assert.Contains(t, dead, `name="campaign" value="slow one&#43;&amp;?#x"`)
	assert.Contains(t, page, `of <span id="total">40</span> done`)
	assert.Contains(t, page, "None of this campaign's locations is parked or cooling down.")

	// The live part, between two samples.
	at := time.Now().Add(-2 * time.Second).UnixMilli()
	resp, live := b.do(http.MethodGet, "/console/campaign/live?id="+url.QueryEscape(id)+"&prev_done=0&prev_at="+strconv.FormatInt(at, 10), nil, map[string]string{"X-Console-Fetch": "1"})
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, live, `id="live-inner"`)
	assert.NotContains(t, live, "<html", "a fragment, not a page")
	assert.Contains(t, live, `data-complete="false"`)

	// A cool-down (a 429 elsewhere) shows with when it ends.
	require.NoError(t, s.rdb.ZAdd(context.Background(), "ghlcancel:rl:cooling", redis.Z{Score: float64(time.Now().Add(time.Minute).UnixMilli()), Member: locGood}).Err())
	_, page = b.get("/console/campaign?id=" + url.QueryEscape(id))
	assert.Contains(t, page, "<strong>"+locGood+"</strong> cooling down after a rate limit until")
	// Another location's cool-down is not this campaign's.
	require.NoError(t, s.rdb.ZAdd(context.Background(), "ghlcancel:rl:cooling", redis.Z{Score: float64(time.Now().Add(time.Minute).UnixMilli()), Member: locBroken}).Err())
	_, page = b.get("/console/campaign?id=" + url.QueryEscape(id))
	assert.NotContains(t, page, locBroken)
	_, page = b.get("/console/locations")
	assert.Contains(t, page, "<strong>"+locGood+"</strong> until")
	assert.Contains(t, page, "<strong>"+locBroken+"</strong> until")

	waitCampaign(t, s, id)
	_, live = b.do(http.MethodGet, "/console/campaign/live?id="+url.QueryEscape(id), nil, map[string]string{"X-Console-Fetch": "1"})
	assert.Contains(t, live, `data-complete="true"`)
	assert.Contains(t, live, `id="o-cancelled">40<`)

	resp, page = b.get("/console/campaign?id=nope")
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
	assert.Contains(t, page, "No campaign &#34;nope&#34;")
	// The live fetch of a signed-out browser gets 401, so the page reloads to sign-in.
	resp, _ = s.browser(t).do(http.MethodGet, "/console/campaign/live?id="+url.QueryEscape(id), nil, map[string]string{"X-Console-Fetch": "1"})
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
}

// TestSessionEndsWithItsKey: a key removed from the configuration ends its
// sessions at the next request, on any intake sharing the Redis.
func TestSessionEndsWithItsKey(t *testing.T) {
	s := newStack(t, stackOpts{})
	b := s.browser(t)
	b.signIn(operatorKey)
	c, err := console.New(console.Config{Redis: s.rdb, Keys: []string{consoleKey}})
	require.NoError(t, err)
	req, _ := http.NewRequest(http.MethodGet, "http://127.0.0.1/console/", nil)
	u, _ := url.Parse(s.url + "/console/")
	for _, ck := range b.c.Jar.Cookies(u) {
		req.AddCookie(ck)
	}
	rec := httptest.NewRecorder()
	c.ServeHTTP(rec, req)
	assert.Equal(t, http.StatusSeeOther, rec.Code, "a session of a removed key is signed out")

	// The same key, still configured: the session works; moved to the
	// read-only list: its operator session ends (it would keep its rights).
	same, err := console.New(console.Config{Redis: s.rdb, Keys: []string{operatorKey}})
	require.NoError(t, err)
	rec = httptest.NewRecorder()
	same.ServeHTTP(rec, req)
	assert.Equal(t, http.StatusOK, rec.Code)
	moved, err := console.New(console.Config{Redis: s.rdb, ReadOnlyKeys: []string{operatorKey}})
	require.NoError(t, err)
	rec = httptest.NewRecorder()
	moved.ServeHTTP(rec, req)
	assert.Equal(t, http.StatusSeeOther, rec.Code, "an operator session of a key now read-only is signed out")

	_, err = console.New(console.Config{Redis: s.rdb, Keys: []string{operatorKey}, ReadOnlyKeys: []string{operatorKey}})
	assert.ErrorContains(t, err, "both read-only")
}

func TestFormatting(t *testing.T) {
	for _, c := range []struct {
		n    int64
		want string
	}{{0, "0"}, {7, "7"}, {999, "999"}, {1000, "1,000"}, {1234, "1,234"}, {100000, "100,000"}, {1234567, "1,234,567"}, {-1234, "-1,234"}} {
		assert.Equal(t, c.want, console.Num(c.n), c.n)
	}
	for _, c := range []struct {
		d    time.Duration
		want string
	}{
		{0, "0 s"}, {400 * time.Millisecond, "0.4 s"}, {3 * time.Second, "3 s"}, {200 * time.Second, "3 m 20 s"},
		{time.Hour + 5*time.Minute + 9*time.Second, "1 h 5 m"}, {2*time.Hour + 5*time.Second, "2 h"},
		{27 * time.Hour, "1 d 3 h"}, {-90 * time.Second, "1 m 30 s"},
	} {
		assert.Equal(t, c.want, console.Dur(c.d), c.d)
	}
	for _, c := range []struct {
		r    float64
		want string
	}{{0, "–"}, {0.26, "0.3/s"}, {9.96, "10.0/s"}, {97.4, "97/s"}, {3484.2, "3,484/s"}} {
		assert.Equal(t, c.want, console.Rate(c.r), c.r)
	}
}

// TestEveryReasonHasAHint: the console's hint for each dead-letter reason a
// worker writes says more than the fallback.
func TestEveryReasonHasAHint(t *testing.T) {
	fallback := tasks.DeadLetterHint("no-such-reason")
	for _, r := range []string{
		string(ghl.ReasonBadRequest), string(ghl.ReasonUnprocessable), string(ghl.ReasonUnauthorized), string(ghl.ReasonForbidden),
		string(ghl.ReasonClientError), string(ghl.ReasonRateLimited), string(ghl.ReasonServerError), string(ghl.ReasonTimeout),
		string(ghl.ReasonNetwork), string(ghl.ReasonBadResponse), string(ghl.ReasonMisrouted), string(ghl.ReasonInvalidID),
		string(ghl.ReasonNoToken), string(ghl.ReasonInvalidToken), tasks.ReasonTokenKey, string(ghl.ReasonTokenSource), string(ghl.ReasonInvalidGrant), string(ghl.ReasonInactive),
		tasks.ReasonInvalidPayload, tasks.ReasonUnknownType, tasks.ReasonPaced, tasks.ReasonLimiter, tasks.ReasonCircuitOpen,
		tasks.ReasonPanic, tasks.ReasonInterrupted, tasks.ReasonOutcomeWrite, tasks.ReasonStillScheduled, tasks.ReasonWrongKind, tasks.ReasonEmailConversationID, tasks.ReasonOtherKindUnread,
		"not_installed", "agency_revoked", "mint_refused", "mint_failed",
	} {
		h := tasks.DeadLetterHint(r)
		assert.NotEqual(t, fallback, h, r)
		assert.NotEmpty(t, h, r)
	}
	// A mistyped location id has no token: the hint said only "add it",
	// and a requeue of the typo failed again.
	assert.Contains(t, tasks.DeadLetterHint(string(ghl.ReasonNoToken)), "check its id first")
}

// TestDeadLetterPageIsBounded: with more dead letters than the page reads,
// it says it counted among the newest, and offers the CLI for the rest.
func TestDeadLetterPageIsBounded(t *testing.T) {
	s := newStack(t, stackOpts{})
	ctx := context.Background()
	const n = 20_050
	for i := 0; i < n; i += 1000 {
		_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for j := i; j < min(i+1000, n); j++ {
				id := fmt.Sprintf("msg:bulk%06d", j)
				rec := fmt.Sprintf(`{"task_id":%q,"kind":"message","message_id":"bulk%06d","location_id":%q,"campaign_id":"huge","queue":"bulk","reason":"unauthorized","attempts":1,"dead_at":%q}`,
					id, j, locBad, time.Now().Add(-time.Duration(n-j)*time.Millisecond).UTC().Format(time.RFC3339Nano))
				p.HSet(ctx, deadletter.KeyRecords, id, rec)
				p.ZAdd(ctx, deadletter.KeyIndex, redis.Z{Score: float64(time.Now().Add(-time.Duration(n-j) * time.Millisecond).UnixMilli()), Member: id})
			}
			return nil
		})
		require.NoError(t, err)
	}
	b := s.browser(t)
	b.signIn(operatorKey)
	resp, page := b.get("/console/dead?campaign=huge")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, page, "20,000 matching among the newest 20,000 of 20,050 dead letters; the newest 200 are shown.")
	assert.Contains(t, page, "enqueue dead list")
	assert.Equal(t, 200, strings.Count(page, `name="id"`))
	assert.Contains(t, page, `value="msg:bulk020049"`, "newest first")
}

// failCmd fails one command (by name) from its n-th call on, as a Redis
// that goes away during a report download.
type failCmd struct {
	name  string
	from  int
	calls atomic.Int32
}

func (f *failCmd) DialHook(next redis.DialHook) redis.DialHook { return next }
func (f *failCmd) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() == f.name && int(f.calls.Add(1)) >= f.from {
			err := errors.New("connection reset (test)")
			cmd.SetErr(err)
			return err
		}
		return next(ctx, cmd)
	}
}
func (f *failCmd) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestReportFailureIsNotADownload: a report that fails before its first
// row is an error page, not an empty CSV; one that fails after rows went
// out is cut off visibly (the connection aborts), never a short file that
// looks whole.
func TestReportFailureIsNotADownload(t *testing.T) {
	s := newStack(t, stackOpts{})
	ctx := context.Background()
	// 3,000 settled messages: the report reads them in several HSCAN pages.
	led := ledger.New(s.rdb, ledger.Config{})
	var items []producer.Item
	for i := range 3000 {
		items = append(items, producer.Item{Kind: ghl.KindMessage, MessageID: fmt.Sprintf("rep%06d", i), LocationID: locGood, CampaignID: "rep", Queue: tasks.QueueBulk})
	}
	for i := 0; i < len(items); i += producer.BatchSize {
		for _, r := range s.prod.EnqueueBatch(ctx, items[i:min(i+producer.BatchSize, len(items))]) {
			require.NoError(t, r.Err)
		}
	}
	for _, it := range items {
		_, _, err := led.Settle(ctx, ledger.Final{TaskID: tasks.TaskID(it.Kind, it.MessageID), CampaignID: "rep", FirstAttempt: true,
			Outcome: ledger.Outcome{Outcome: ledger.Cancelled, HTTPStatus: 200, Attempts: 1}})
		require.NoError(t, err)
	}
	for _, c := range []struct {
		from int
		want string
	}{{1, "before"}, {2, "after"}} {
		opt := *s.rdb.Options()
		rdb := redis.NewClient(&opt)
		t.Cleanup(func() { _ = rdb.Close() })
		rdb.AddHook(&failCmd{name: "hscan", from: c.from})
		reg := prometheus.NewRegistry()
		srv, err := intake.New(intake.Config{Redis: rdb, Keys: []string{operatorKey}, Registry: reg})
		require.NoError(t, err)
		hs := httptest.NewServer(srv)
		t.Cleanup(hs.Close)
		b := s.browser(t)
		b.base = hs.URL
		b.signIn(operatorKey)
		req, _ := http.NewRequest(http.MethodGet, hs.URL+"/console/campaign/report.csv?id=rep", nil)
		resp, err := b.c.Do(req)
		require.NoError(t, err)
		body, readErr := io.ReadAll(resp.Body)
		resp.Body.Close()
		if c.want == "before" {
			assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
			assert.Empty(t, resp.Header.Get("Content-Disposition"))
			assert.Contains(t, string(body), "Redis is unavailable")
			continue
		}
		assert.Equal(t, http.StatusOK, resp.StatusCode, "the first rows went out")
		assert.Error(t, readErr, "the download must end in an error, not look complete (%d bytes read)", len(body))
		mfs, err := reg.Gather()
		require.NoError(t, err)
		assert.Equal(t, 1.0, metrics.Sum(mfs, "ghlcancel_intake_requests_total", "code", "aborted"), "counted as aborted, not 200")
	}
}

// TestCampaignPageShowsSweeps: a campaign started by a sweep shows the
// sweep's progress: locations swept, pages and messages read, scheduled
// found, each sweep with its state.
func TestCampaignPageShowsSweeps(t *testing.T) {
	s := newStack(t, stackOpts{})
	ctx := context.Background()
	s.sb.AddMessages(locGood, sandbox.MixedSpecs(40, 25, 10, 5, 4)...)
	st, err := s.prod.Sweep(ctx, producer.SweepRequest{Locations: []string{locGood}, ContactID: "contact01", CampaignID: "replied"})
	require.NoError(t, err)
	done := waitCampaign(t, s, st.CampaignID)
	require.EqualValues(t, 1, done.SweepsDone)
	b := s.browser(t)
	b.signIn(operatorKey)
	_, page := b.get("/console/campaign?id=replied")
	assert.Contains(t, page, `<h2 id="sweeps-h">Sweeps</h2>`)
	assert.Contains(t, page, fmt.Sprintf("1 of 1 location sweeps done: %s pages, %s messages read, %s still scheduled found (a location swept twice counts twice).",
		console.Num(done.SweepPages), console.Num(done.SweepSeen), console.Num(done.SweepFound)))
	assert.Contains(t, page, "contact contact01")
	assert.Contains(t, page, ">done<")
	assert.EqualValues(t, done.SweepFound, done.Cancelled)
	assert.Positive(t, done.SweepFound)
}

// TestCampaignIDsAreExact: a campaign id is any bytes, spaces included:
// the link to "ws "'s dead letters shows its own 2, not the 3 of "ws"
// (the filter used to trim ids, so requeue and purge by it would have
// acted on the other campaign).
func TestCampaignIDsAreExact(t *testing.T) {
	s := newStack(t, stackOpts{})
	s.finished(t, "ws ", map[string]int{locBad: 2})
	s.finished(t, "ws", map[string]int{locBad: 3})
	b := s.browser(t)
	b.signIn(operatorKey)
	_, camp := b.get("/console/campaign?id=" + url.QueryEscape("ws "))
	link := regexp.MustCompile(`href="(/console/dead\?campaign=[^"]*)">Its dead letters`).FindStringSubmatch(camp)
	require.NotNil(t, link)
	_, dead := b.get(html.UnescapeString(link[1]))
	summary := regexp.MustCompile(`id="dead-summary">([^<]*)`).FindStringSubmatch(dead)
	require.NotNil(t, summary)
	assert.Contains(t, summary[1], "2 matching", "the campaign's own dead letters")
}

// TestPurgeTwiceAndAfterwards: the same purge confirmed from a second tab
// says nothing is left (it used to say the dead letters "changed" and ask
// to type 0); the campaign page then counts the outcomes and says a
// purged dead letter cannot be requeued, instead of offering them.
func TestPurgeTwiceAndAfterwards(t *testing.T) {
	s := newStack(t, stackOpts{})
	s.finished(t, "twotabs", map[string]int{locBad: 3})
	b := s.browser(t)
	csrf := b.signIn(operatorKey)
	asOfRE := regexp.MustCompile(`name="as_of" value="(\d+)"`)
	_, tab1 := b.get("/console/dead/purge?campaign=twotabs")
	_, tab2 := b.get("/console/dead/purge?campaign=twotabs")
	form := func(page string) url.Values {
		m := asOfRE.FindStringSubmatch(page)
		require.NotNil(t, m)
		return url.Values{"csrf": {csrf}, "campaign": {"twotabs"}, "age": {""}, "expected": {"3"}, "confirm": {"3"}, "as_of": {m[1]}}
	}
	resp, _ := b.post("/console/dead/purge", form(tab1))
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	resp, page := b.post("/console/dead/purge", form(tab2))
	assert.Equal(t, http.StatusConflict, resp.StatusCode)
	assert.Contains(t, page, "none of these dead letters is left")
	assert.NotContains(t, page, "type that number")

	_, camp := b.get("/console/campaign?id=twotabs")
	assert.Contains(t, camp, "Dead-lettered, by reason")
	assert.Contains(t, camp, "a purged one stays counted, but only dead letters still stored can be requeued")
}

// TestNoWorkerIsSaid: a running campaign on a Redis database no worker
// serves (a database number mistyped in a worker's REDIS_URL, or none
// started) read "running, ETA unknown" with no hint; the page says why
// nothing moves, as enqueue does.
func TestNoWorkerIsSaid(t *testing.T) {
	s := newStack(t, stackOpts{noWorker: true})
	s.campaign(t, "idle", map[string]int{locGood: 3})
	b := s.browser(t)
	b.signIn(operatorKey)
	_, page := b.get("/console/campaign?id=idle")
	assert.Contains(t, page, `id="no-worker"`)
	assert.Contains(t, page, "No worker is running on this Redis database")
}

// TestReleaseAParkedLocation: an operator releases a parked location from
// the locations page (as `enqueue parked --release`); the result shows
// once; releasing it again (a second tab) says it is not parked; a
// read-only session sees no button and is refused.
func TestReleaseAParkedLocation(t *testing.T) {
	s := newStack(t, stackOpts{})
	ctx := context.Background()
	l := ratelimit.New(s.rdb, ratelimit.Config{})
	require.NoError(t, l.Observe(ctx, "locParked", ghl.Limits{Present: true, Max: -1, Remaining: -1, DailyLimit: 200000, DailyRemaining: 7}, nil))

	ro := s.browser(t)
	roCSRF := ro.signIn(readOnlyKey)
	_, page := ro.get("/console/locations")
	assert.Contains(t, page, "<strong>locParked</strong>: daily budget nearly spent: 7 of 200000 left")
	assert.NotContains(t, page, "/console/locations/release", "no button for a read-only session")
	resp, _ := ro.post("/console/locations/release", url.Values{"csrf": {roCSRF}, "location": {"locParked"}})
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)

	b := s.browser(t)
	csrf := b.signIn(operatorKey)
	_, page = b.get("/console/locations")
	assert.Contains(t, page, `<button type="submit" aria-label="Release locParked">Release</button>`)
	resp, _ = b.post("/console/locations/release", url.Values{"csrf": {csrf}, "location": {"locParked"}})
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	_, page = b.get(resp.Header.Get("Location"))
	assert.Contains(t, page, `<p class="flash" role="status">Released locParked: woke 0 waiting cancels.`)
	assert.Contains(t, page, "No location is parked.")
	parked, err := ratelimit.Parked(ctx, s.rdb)
	require.NoError(t, err)
	assert.Empty(t, parked)

	resp, _ = b.post("/console/locations/release", url.Values{"csrf": {csrf}, "location": {"locParked"}})
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	_, page = b.get(resp.Header.Get("Location"))
	assert.Contains(t, page, "locParked is not parked (its parking ended, or it was released meanwhile): nothing to release.")
	resp, page = b.post("/console/locations/release", url.Values{"csrf": {csrf}})
	assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
	assert.Contains(t, page, "Release which location?")
	resp, _ = b.post("/console/locations/release", url.Values{"location": {"locParked"}})
	assert.Equal(t, http.StatusForbidden, resp.StatusCode, "no CSRF token")
}
