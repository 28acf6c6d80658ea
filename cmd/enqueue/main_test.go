package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/campaign"
	"github.com/ghlcancel/ghlcancel/internal/deadletter"
	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/ledger"
	"github.com/ghlcancel/ghlcancel/internal/producer"
	"github.com/ghlcancel/ghlcancel/internal/ratelimit"
	"github.com/ghlcancel/ghlcancel/internal/redistest"
	"github.com/ghlcancel/ghlcancel/internal/sandbox"
	"github.com/ghlcancel/ghlcancel/internal/tokens"
	"github.com/ghlcancel/ghlcancel/internal/worker"
)

var redisServer *redistest.Server

func TestMain(m *testing.M) { redistest.Main(m, &redisServer) }

type result struct {
	err            error
	stdout, stderr string
}

func runCmd(t *testing.T, redisURL, stdin string, args ...string) result {
	t.Helper()
	var out, errw bytes.Buffer
	err := run(context.Background(), args, func(k string) string {
		if k == envRedisURL {
			return redisURL
		}
		return ""
	}, strings.NewReader(stdin), &out, &errw)
	return result{err: err, stdout: out.String(), stderr: errw.String()}
}

func TestEnqueueArgsAndDuplicates(t *testing.T) {
	t.Parallel()
	url := redisServer.URL(t)
	r := runCmd(t, url, "", "--location", "locA", "--campaign", "c1", "--urgent", "m1", "m2", "m1")
	require.NoError(t, r.err, r.stderr)
	require.Equal(t, "enqueued 2, requeued 0, already queued 1, already done 0, rejected 0 (lane urgent)\n", r.stdout)

	rdb := redistest.ClientFor(t, url)
	n, err := rdb.LLen(context.Background(), "asynq:{urgent}:pending").Result()
	require.NoError(t, err)
	require.Equal(t, int64(2), n)
	payload, err := rdb.HGet(context.Background(), "asynq:{urgent}:t:msg:m1", "msg").Result()
	require.NoError(t, err)
	require.Contains(t, payload, `"campaign_id":"c1"`)

	// The same message again, to another lane: already queued.
	r = runCmd(t, url, "", "--location", "locA", "--queue", "bulk", "--json", "m1")
	require.NoError(t, r.err)
	var sum producer.Summary
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &sum))
	// It is counted in c1, and the summary says so.
	require.Equal(t, producer.Summary{AlreadyQueued: 1, HeldBy: map[string]int{"c1": 1}}, sum)

	// Queued on the bulk lane, then sent as urgent (an opt-out): it moves,
	// and the summary says so; the second time it is already there.
	r = runCmd(t, url, "", "--location", "locA", "--campaign", "c1", "--queue", "bulk", "m3")
	require.NoError(t, r.err, r.stderr)
	r = runCmd(t, url, "", "--location", "locA", "--campaign", "c1", "--urgent", "m3")
	require.NoError(t, r.err, r.stderr)
	require.Equal(t, "enqueued 0, requeued 0, already queued 1 (1 moved here from a slower lane), already done 0, rejected 0 (lane urgent)\n", r.stdout)
	r = runCmd(t, url, "", "--location", "locA", "--campaign", "c1", "--urgent", "m3")
	require.NoError(t, r.err, r.stderr)
	require.Equal(t, "enqueued 0, requeued 0, already queued 1, already done 0, rejected 0 (lane urgent)\n", r.stdout)
	require.NotContains(t, r.stderr, "slower lane")
	// Running on the bulk lane: it cannot move, and the run says so.
	r = runCmd(t, url, "", "--location", "locA", "--campaign", "c1", "--queue", "bulk", "m4")
	require.NoError(t, r.err, r.stderr)
	require.NoError(t, rdb.HSet(context.Background(), "asynq:{bulk}:t:msg:m4", "state", "active").Err())
	r = runCmd(t, url, "", "--location", "locA", "--campaign", "c1", "--urgent", "m4")
	require.NoError(t, r.err, r.stderr)
	require.Contains(t, r.stderr, "enqueue: 1 message(s) already queued on a slower lane stay there, not moved to lane urgent: running now")
}

func TestEnqueueFileReportsBadLines(t *testing.T) {
	t.Parallel()
	url := redisServer.URL(t)
	var b strings.Builder
	b.WriteString("message_id,location_id,kind\n")
	for i := range 1000 {
		fmt.Fprintf(&b, "id%04d,loc%d,%s\n", i, i%3, []string{"message", "email"}[i%2])
	}
	b.WriteString("bad/id,loc1,message\n# a comment\n\nid0001,loc1,email\nid9999,,message\n")
	path := filepath.Join(t.TempDir(), "ids.csv")
	require.NoError(t, os.WriteFile(path, []byte(b.String()), 0o600))

	r := runCmd(t, url, "", "--file", path)
	require.ErrorIs(t, r.err, errReported)
	require.Equal(t, "enqueued 1000, requeued 0, already queued 1, already done 0, rejected 2 (lane bulk)\n", r.stdout)
	require.Contains(t, r.stderr, "line 1002: message_id: id has a character that is not allowed")
	require.Contains(t, r.stderr, "line 1006: location_id: missing")

	// Re-run (resume): nothing doubles.
	r = runCmd(t, url, "", "--file", path, "--json")
	var sum producer.Summary
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &sum))
	require.Equal(t, producer.Summary{AlreadyQueued: 1001, Rejected: 2}, sum)
}

func TestEnqueueStdin(t *testing.T) {
	t.Parallel()
	url := redisServer.URL(t)
	r := runCmd(t, url, "a1\na2\n", "--location", "L", "--kind", "email", "--file", "-")
	require.NoError(t, r.err, r.stderr)
	require.Equal(t, "enqueued 2, requeued 0, already queued 0, already done 0, rejected 0 (lane bulk)\n", r.stdout)
}

func TestEnqueueUsageErrors(t *testing.T) {
	t.Parallel()
	url := redisServer.URL(t)
	tests := []struct {
		args []string
		want string
	}{
		{nil, "give message ids as arguments or --file"},
		{[]string{"--file", "x", "id"}, "give message ids as arguments or --file"},
		{[]string{"--kind", "fax", "id"}, `unknown kind "fax"`},
		{[]string{"--queue", "fast", "id"}, `--queue "fast"`},
		{[]string{"--urgent", "--queue", "bulk", "id"}, "disagree"},
		{[]string{"--file", "/nonexistent/ids.txt"}, "no such file"},
		{[]string{"dead"}, "usage: enqueue dead list|requeue"},
		{[]string{"dead", "requeue"}, "give a filter"},
	}
	for _, tt := range tests {
		r := runCmd(t, url, "", tt.args...)
		require.ErrorContains(t, r.err, tt.want, "%v", tt.args)
	}
	r := runCmd(t, "redis://127.0.0.1:1/0", "", "--location", "L", "id")
	require.ErrorContains(t, r.err, "cannot reach Redis at 127.0.0.1:1")
}

func TestDeadListAndRequeue(t *testing.T) {
	t.Parallel()
	url := redisServer.URL(t)
	ctx := context.Background()
	store := deadletter.New(redistest.ClientFor(t, url))
	for i := range 5 {
		reason := "unauthorized"
		if i == 4 {
			reason = "bad_request"
		}
		require.NoError(t, store.Add(ctx, deadletter.Record{TaskID: fmt.Sprintf("msg:m%d", i), Kind: "message",
			MessageID: fmt.Sprintf("m%d", i), LocationID: "L", CampaignID: "c1", Queue: "bulk",
			Reason: reason, HTTPStatus: 401, APIMessage: "Invalid token", Attempts: 1,
			DeadAt: time.Now().Add(time.Duration(i-10) * time.Second), Worker: "host-a:41"}))
	}
	r := runCmd(t, url, "", "dead", "list", "--reason", "unauthorized")
	require.NoError(t, r.err)
	require.Equal(t, 5, strings.Count(r.stdout, "\n"), r.stdout) // header + 4
	require.Contains(t, r.stdout, "msg:m0")
	require.Regexp(t, `msg:m0 +L +c1 +unauthorized +401 +1 +host-a:41 +Invalid token`, r.stdout, "the worker that recorded it")
	require.Contains(t, r.stderr, "4 shown, 4 matching")

	r = runCmd(t, url, "", "dead", "list", "--json", "--limit", "2")
	require.NoError(t, r.err)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	require.Len(t, lines, 2)
	var rec deadletter.Record
	require.NoError(t, json.Unmarshal([]byte(lines[0]), &rec))
	require.Equal(t, "msg:m4", rec.TaskID, "newest first")
	require.NoError(t, json.Unmarshal([]byte(lines[1]), &rec))
	require.Equal(t, "msg:m3", rec.TaskID)

	r = runCmd(t, url, "", "dead", "requeue", "--reason", "unauthorized")
	require.NoError(t, r.err, r.stderr)
	require.Equal(t, "requeued 4, already queued 0, already done 0, skipped 0 (not rebuildable, left in place)\n", r.stdout)
	require.NotContains(t, r.stderr, "no dead letter matches")
	// Run again, or with a typo: nothing matches; it says which reasons there are.
	for _, reason := range []string{"unauthorized", "unauthorised"} {
		r = runCmd(t, url, "", "dead", "requeue", "--reason", reason)
		require.NoError(t, r.err, r.stderr)
		require.Contains(t, r.stdout, "requeued 0,")
		require.Contains(t, r.stderr, `no dead letter has --reason "`+reason+`"; the 1 held have: bad_request 1`)
	}
	// A misspelt campaign names the campaign, not the reasons; list,
	// export and purge say it too, and exit 1: no such campaign exists (a
	// script's `dead requeue --campaign X && ...` read the typo as done).
	// A campaign that exists with no dead letter is no error.
	r = runCmd(t, url, "", "--location", "L", "--campaign", "clean-campaign", "mCleanCampaign000001")
	require.NoError(t, r.err, r.stderr)
	for _, verb := range []string{"requeue", "list", "export", "purge"} {
		for _, c := range []string{"no-such-campaign", "clean-campaign"} {
			args := []string{"dead", verb, "--campaign", c}
			if verb == "purge" {
				args = append(args, "--yes")
			}
			r = runCmd(t, url, "", args...)
			if c == "clean-campaign" {
				require.NoError(t, r.err, r.stderr)
			} else {
				require.ErrorContains(t, r.err, `no campaign "no-such-campaign" (unknown, older than its retention, or nothing was ever counted in it`, verb)
			}
			require.Contains(t, r.stderr, `no dead letter has --campaign "`+c+`"; the 1 held have: `, verb)
			require.NotContains(t, r.stderr, "--reason", verb)
		}
	}
	// A campaign gone (7 days) whose dead letters are still kept (30): no
	// error for a filter that matches none of them.
	require.NoError(t, deadletter.New(redistest.ClientFor(t, url)).Add(context.Background(), deadletter.Record{TaskID: "msg:gone1", Kind: "message",
		MessageID: "gone1", LocationID: "L", CampaignID: "expired-campaign", Queue: "bulk", Reason: "unauthorized"}))
	r = runCmd(t, url, "", "dead", "list", "--campaign", "expired-campaign", "--kind", "email")
	require.NoError(t, r.err, r.stderr)
	require.Contains(t, r.stderr, "no dead letter has --kind \"email\"")
	r = runCmd(t, url, "", "dead", "purge", "--campaign", "expired-campaign", "--yes")
	require.NoError(t, r.err, r.stderr)

	// The reason exists, its record is younger than asked.
	r = runCmd(t, url, "", "dead", "list", "--reason", "bad_request", "--older-than", "720h")
	require.Contains(t, r.stderr, "no dead letter matches the whole filter; the 1 held have reasons: bad_request 1")
	r = runCmd(t, url, "", "dead", "list")
	require.Contains(t, r.stderr, "1 shown, 1 matching")
	r = runCmd(t, url, "", "dead", "requeue", "--all")
	require.NoError(t, r.err)
	require.Contains(t, r.stdout, "requeued 1")
}

// withTokenKey runs enqueue commands on url with GHL_TOKEN_KEY=key and
// stdin.
func withTokenKey(url, key string) func(stdin string, args ...string) result {
	return func(stdin string, args ...string) result {
		var out, errw bytes.Buffer
		err := run(context.Background(), args, func(k string) string {
			return map[string]string{envRedisURL: url, "GHL_TOKEN_KEY": key}[k]
		}, strings.NewReader(stdin), &out, &errw)
		return result{err: err, stdout: out.String(), stderr: errw.String()}
	}
}

// TestTokensListShowsARefusedPair: a pair whose refresh HighLevel refused
// for good (remembered by the workers) read "refreshed on first use" while
// every cancel of its location was dead-lettered; a new pair clears it.
func TestTokensListShowsARefusedPair(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := redisServer.URL(t)
	run2 := withTokenKey(url, strings.Repeat("ab", 32))
	const loc = "locRefusedList000001"
	require.NoError(t, run2("rt-SECRET-1\n", "tokens", "set", "--location", loc).err)
	rdb := redistest.ClientFor(t, url)
	gen := rdb.HGet(ctx, "ghlcancel:oauth:{"+loc+"}", "gen").Val()
	memo := fmt.Sprintf("%s|%d|c0ffee|invalid_grant|Invalid grant", gen, time.Now().UnixMilli())
	require.NoError(t, rdb.HSet(ctx, "ghlcancel:oauth:{"+loc+"}", "refused", memo).Err())
	r := run2("", "tokens", "list")
	require.NoError(t, r.err)
	require.Regexp(t, loc+` +oauth +- +REFRESH REFUSED \(invalid_grant\) .*tokens set --replace`, r.stdout)
	require.NoError(t, run2("rt-SECRET-2\n", "tokens", "set", "--location", loc, "--replace").err)
	r = run2("", "tokens", "list")
	require.NoError(t, r.err)
	require.Regexp(t, loc+` +oauth +- +refreshed on first use`, r.stdout)
	require.NotContains(t, r.stdout+r.stderr, "SECRET")
}

func TestTokensSetNeverEchoes(t *testing.T) {
	t.Parallel()
	url := redisServer.URL(t)
	run2 := withTokenKey(url, strings.Repeat("ab", 32))
	r := run2(`{"access_token":"at-SECRET-1","refresh_token":"rt-SECRET-2","expires_in":86399}`, "tokens", "set", "--location", "locT0000000000000001")
	require.NoError(t, r.err)
	require.Equal(t, "stored an encrypted token pair for location locT0000000000000001\n", r.stdout)
	r = run2("rt-SECRET-3\n", "tokens", "set", "--location", "locT0000000000000002")
	require.NoError(t, r.err)
	r = run2("", "tokens", "list")
	require.NoError(t, r.err)
	require.Contains(t, r.stdout, "locT0000000000000001")
	require.Regexp(t, `locT0000000000000002 +oauth +- +refreshed on first use`, r.stdout)
	require.NotContains(t, r.stdout+r.stderr, "SECRET")
	// The workers' tokens file is not in Redis: without it here the list
	// says what it cannot see; with it, the file's token wins where it has one.
	require.Contains(t, r.stderr, "note: GHL_TOKENS_FILE is not set here")
	tf := filepath.Join(t.TempDir(), "tokens.json")
	require.NoError(t, os.WriteFile(tf, []byte(`{"locT0000000000000002":"file-SECRET-5"}`), 0o600))
	var out, errw bytes.Buffer
	require.NoError(t, run(context.Background(), []string{"tokens", "list"}, func(k string) string {
		return map[string]string{envRedisURL: url, "GHL_TOKENS_FILE": tf}[k]
	}, strings.NewReader(""), &out, &errw))
	require.Regexp(t, `locT0000000000000002 +file +- +also oauth`, out.String())
	require.NotContains(t, errw.String(), "note: GHL_TOKENS_FILE")
	require.NotContains(t, out.String()+errw.String(), "SECRET")

	// The agency: its pair never echoed either; listed with the locations
	// the registry knows, and which source applies to each.
	r = run2("rt-SECRET-4\n", "tokens", "agency", "set", "--company", "companyT00000000001", "--app", "appT000000000000001")
	require.NoError(t, r.err)
	require.Equal(t, "stored the agency's encrypted token pair for company companyT00000000001\n", r.stdout)
	rdbA := redistest.ClientFor(t, url)
	_, err := tokens.SetInstalled(context.Background(), rdbA, "locT0000000000000001", "", true, time.Now()) // has its own pair too
	require.NoError(t, err)
	_, err = tokens.SetInstalled(context.Background(), rdbA, "locT0000000000000009", "Shop", true, time.Now())
	require.NoError(t, err)
	_, err = tokens.SetInstalled(context.Background(), rdbA, "locT0000000000000008", "", false, time.Now())
	require.NoError(t, err)
	r = run2("", "tokens", "list")
	require.NoError(t, r.err)
	require.Contains(t, r.stderr, "agency: company companyT00000000001, app appT000000000000001")
	require.Regexp(t, `locT0000000000000001 +oauth +\S+ +also agency`, r.stdout)
	require.Regexp(t, `locT0000000000000009 +agency +- +installed `, r.stdout)
	require.Regexp(t, `locT0000000000000008 +agency +- +UNINSTALLED .*not_installed`, r.stdout)
	require.NotContains(t, r.stdout+r.stderr, "SECRET")
	// The app id alone, keeping the pair the workers rotate (loading the
	// pair file again to add it put back a used-up refresh token).
	r = run2("", "tokens", "agency", "app", "--company", "companyT00000000001", "--app", "appT000000000000002")
	require.NoError(t, r.err, r.stderr)
	require.Contains(t, r.stdout, "set app appT000000000000002 for company companyT00000000001 (the stored pair is kept)")
	r = run2("", "tokens", "list")
	require.NoError(t, r.err)
	require.Contains(t, r.stderr, "agency: company companyT00000000001, app appT000000000000002")
	require.Regexp(t, `locT0000000000000009 +agency +- +installed `, r.stdout, "the pair still applies")
	r = run2("", "tokens", "agency", "app", "--company", "companyT00000000002", "--app", "appT000000000000003")
	require.ErrorContains(t, r.err, "the agency set is company companyT00000000001, not companyT00000000002")
	r = run2("", "tokens", "agency", "set", "--company", "bad/company")
	require.ErrorContains(t, r.err, "--company")
	r = run2("", "tokens", "agency", "locations")
	require.ErrorContains(t, r.err, "GHL_CLIENT_ID")
	r = run2("", "tokens", "agency")
	require.ErrorContains(t, r.err, "enqueue tokens agency set --company C --app A")

	rdb := redistest.ClientFor(t, url)
	keys, err := rdb.Keys(context.Background(), "*").Result()
	require.NoError(t, err)
	for _, k := range keys {
		dump, err := rdb.Dump(context.Background(), k).Result()
		require.NoError(t, err)
		require.NotContains(t, dump, "SECRET", k)
	}
	r = run2("", "tokens", "set", "--location", "locT0000000000000003")
	require.ErrorContains(t, r.err, "no refresh token")
	// jq without -r: the quotes would be stored and the pair refused as
	// invalid_grant ("reinstall the app") while the real token is unspent.
	for stdin, says := range map[string]string{
		"\"rt-SECRET-6\"\n":         "jq without -r",
		"rt-SECRET-7 rt-SECRET-8\n": "refresh token: the token has a space",
		`{"refresh_token":"rt-SECRET-9","access_token":"at SECRET"}`: "access token: the token has a space",
	} {
		r = run2(stdin, "tokens", "set", "--location", "locT0000000000000003")
		require.ErrorContains(t, r.err, says, stdin)
		require.NotContains(t, r.err.Error(), "SECRET", stdin)
	}
	require.Zero(t, rdb.Exists(context.Background(), "ghlcancel:oauth:{locT0000000000000003}").Val(), "nothing stored")
	r = run2("x", "tokens", "set", "--location", "bad/loc")
	require.ErrorContains(t, r.err, "--location")
}

// TestTokensSetRefusesAnotherOrAStoredPair: a pair whose answer says it is
// another location's (or company's, or of the other kind) is refused: its
// first refresh would use up the other one's refresh token. Loading a pair
// again over a stored one needs --replace: workers rotate the stored one, so
// the file loaded before is likely used up. Refusals change nothing stored.
func TestTokensSetRefusesAnotherOrAStoredPair(t *testing.T) {
	t.Parallel()
	url := redisServer.URL(t)
	run2 := withTokenKey(url, strings.Repeat("cd", 32))
	rdb := redistest.ClientFor(t, url)
	stored := func(k string) string { return rdb.HGet(context.Background(), k, "ct").Val() }
	const locA, locB, comp = "locR0000000000000001", "locR0000000000000002", "companyR0000000001"
	pairOf := func(loc, userType, company string) string {
		return fmt.Sprintf(`{"access_token":"at-SECRET","refresh_token":"rt-SECRET-%s","expires_in":86399,"userType":%q,"locationId":%q,"companyId":%q}`,
			loc+userType, userType, loc, company)
	}
	r := run2(pairOf(locA, "Location", comp), "tokens", "set", "--location", locA)
	require.NoError(t, r.err, r.stderr)
	first := stored("ghlcancel:oauth:{" + locA + "}")
	require.NotEmpty(t, first)

	for _, tc := range []struct {
		name, stdin string
		args        []string
		want        string
	}{
		{"another location's pair", pairOf(locA, "Location", comp), []string{"tokens", "set", "--location", locB}, "this pair is location " + locA + "'s, not " + locB + "'s"},
		{"an agency pair as a location's", pairOf("", "Company", comp), []string{"tokens", "set", "--location", locB}, "agency (Company) pair"},
		{"a location's pair as the agency's", pairOf(locA, "Location", comp), []string{"tokens", "agency", "set", "--company", comp}, "location's pair"},
		{"another company's pair", pairOf("", "Company", "companyR0000000002"), []string{"tokens", "agency", "set", "--company", comp}, "company companyR0000000002's"},
		{"the same location again", pairOf(locA, "Location", comp), []string{"tokens", "set", "--location", locA}, "has a stored pair already"},
		{"a bare token over a stored pair", "rt-SECRET-bare\n", []string{"tokens", "set", "--location", locA}, "--replace"},
	} {
		r := run2(tc.stdin, tc.args...)
		require.ErrorContains(t, r.err, tc.want, tc.name)
		require.NotContains(t, r.err.Error(), "SECRET", tc.name)
		require.Empty(t, r.stdout, tc.name)
	}
	require.Equal(t, first, stored("ghlcancel:oauth:{"+locA+"}"), "a refused pair changed the stored one")
	require.Zero(t, rdb.Exists(context.Background(), "ghlcancel:oauth:{"+locB+"}").Val())

	r = run2(pairOf(locA, "Location", comp), "tokens", "set", "--location", locA, "--replace")
	require.NoError(t, r.err, r.stderr)
	require.NotEqual(t, first, stored("ghlcancel:oauth:{"+locA+"}"), "--replace stores the new pair")

	// The agency: once, then only with --replace.
	r = run2(pairOf("", "Company", comp), "tokens", "agency", "set", "--company", comp)
	require.NoError(t, r.err, r.stderr)
	r = run2(pairOf("", "Company", comp), "tokens", "agency", "set", "--company", comp)
	require.ErrorContains(t, r.err, "an agency pair is stored already (company "+comp+")")
	require.ErrorContains(t, r.err, "--replace")
	r = run2(pairOf("", "Company", comp), "tokens", "agency", "set", "--company", comp, "--replace")
	require.NoError(t, r.err, r.stderr)
	// The company set but its pair gone (the worker's "load it with
	// tokens agency set"): nothing to replace, no --replace needed.
	require.NoError(t, rdb.Del(context.Background(), "ghlcancel:agency:oauth:{"+comp+"}").Err())
	r = run2(pairOf("", "Company", comp), "tokens", "agency", "set", "--company", comp)
	require.NoError(t, r.err, r.stderr)
}

func TestParked(t *testing.T) {
	t.Parallel()
	url := redisServer.URL(t)
	r := runCmd(t, url, "", "parked")
	require.NoError(t, r.err)
	require.Equal(t, "no location is parked\n", r.stdout)
	rdb := redistest.ClientFor(t, url)
	l := ratelimit.New(rdb, ratelimit.Config{})
	require.NoError(t, l.Observe(context.Background(), "locP", ghl.Limits{Present: true, Max: -1, Remaining: -1, DailyLimit: 200000, DailyRemaining: 12}, nil))
	r = runCmd(t, url, "", "parked")
	require.NoError(t, r.err)
	require.Contains(t, r.stdout, "locP")
	require.Contains(t, r.stdout, "daily budget nearly spent: 12 of 200000 left")

	// Listed in order (a map's order before), and said when cancels are
	// queued for a parked location: they wait, unless urgent.
	for _, loc := range []string{"locB", "locA"} {
		require.NoError(t, l.Observe(context.Background(), loc, ghl.Limits{Present: true, Max: -1, Remaining: -1, DailyLimit: 200000, DailyRemaining: 0}, nil))
	}
	r = runCmd(t, url, "", "parked")
	require.NoError(t, r.err)
	require.Regexp(t, `(?s)LOCATION.*\nlocA .*\nlocB .*\nlocP `, r.stdout)
	r = runCmd(t, url, "", "--campaign", "parked-camp", "--location", "locP", "m1")
	require.NoError(t, r.err)
	require.Contains(t, r.stderr, "1 location(s) of these cancels are parked for HighLevel's daily budget: their cancels wait until the parking ends")
	require.Contains(t, r.stderr, "  locP: daily budget nearly spent: 12 of 200000 left")
	r = runCmd(t, url, "", "--urgent", "--location", "locP", "m2")
	require.NoError(t, r.err)
	require.Contains(t, r.stderr, "urgent cancels go on while only DAILY_RESERVE is left")
	r = runCmd(t, url, "", "--campaign", "free-camp", "--location", "locFree", "m3")
	require.NoError(t, r.err)
	require.NotContains(t, r.stderr, "parked")
	// Moved to the default lane under a new campaign id (which counts
	// nothing of it): the --location still names the parking it waits for.
	r = runCmd(t, url, "", "--queue", "bulk", "--campaign", "bulk-camp", "--location", "locP", "m4")
	require.NoError(t, r.err)
	r = runCmd(t, url, "", "--campaign", "new-camp", "--location", "locP", "m4")
	require.NoError(t, r.err)
	require.Contains(t, r.stdout, "(1 moved here from a slower lane)")
	require.Contains(t, r.stderr, "  locP: daily budget nearly spent")

	// Released by hand (the budget is known to be back); twice, or a typo,
	// is an error that says so.
	r = runCmd(t, url, "", "parked", "--release", "locP")
	require.NoError(t, r.err, r.stderr)
	require.Contains(t, r.stdout, "released locP (it was parked: daily budget nearly spent: 12 of 200000 left")
	require.Contains(t, r.stderr, "its next answer parks it again")
	r = runCmd(t, url, "", "parked")
	require.NoError(t, r.err)
	require.NotContains(t, r.stdout, "locP")
	r = runCmd(t, url, "", "parked", "--release", "locP")
	require.Error(t, r.err)
	require.ErrorContains(t, r.err, `location "locP" is not parked: nothing to release`)
}

func TestStatusReportCampaigns(t *testing.T) {
	t.Parallel()
	url := redisServer.URL(t)
	r := runCmd(t, url, "", "--location", "L", "--campaign", "spring", "m1", "m2", "m3")
	require.NoError(t, r.err)
	ctx := context.Background()
	led := ledger.New(redistest.ClientFor(t, url), ledger.Config{})
	_, _, err := led.Settle(ctx, ledger.Final{TaskID: "msg:m1", CampaignID: "spring",
		Outcome: ledger.Outcome{Outcome: campaign.Cancelled, HTTPStatus: 200, Attempts: 1}})
	require.NoError(t, err)
	_, _, err = led.Settle(ctx, ledger.Final{TaskID: "msg:m2", CampaignID: "spring",
		Outcome: ledger.Outcome{Outcome: campaign.DeadLettered, Reason: "unauthorized", HTTPStatus: 401, Attempts: 1},
		Dead:    &deadletter.Record{Kind: "message", MessageID: "m2", LocationID: "L", CampaignID: "spring", Reason: "unauthorized"}})
	require.NoError(t, err)
	rl := ratelimit.New(redistest.ClientFor(t, url), ratelimit.Config{})
	require.NoError(t, rl.Observe(ctx, "L", ghl.Limits{Present: true, Max: -1, Remaining: -1, DailyLimit: 200000, DailyRemaining: 5}, nil))

	r = runCmd(t, url, "", "status", "spring")
	require.NoError(t, r.err)
	require.Contains(t, r.stdout, "spring [####################----------] 2/3 66%")
	require.Contains(t, r.stderr, "no worker is running on this Redis database", "why the campaign does not move")
	require.Contains(t, r.stdout, "cancelled 1, already sent 0, not found 0, not cancellable 0, expired (send time passed) 0, dead-lettered 1, retrying 0, pending 1")
	require.Contains(t, r.stdout, "dead letters: unauthorized 1")
	require.Contains(t, r.stdout, "parked location L: daily budget nearly spent: 5 of 200000 left")

	r = runCmd(t, url, "", "status", "spring", "--json")
	require.NoError(t, r.err)
	var s campaign.Status
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &s))
	require.Equal(t, int64(3), s.Total)
	require.Contains(t, s.Parked, "L")

	r = runCmd(t, url, "", "report", "spring")
	require.NoError(t, r.err)
	require.Contains(t, r.stdout, "m2,message,dead_lettered,unauthorized,401,1,")
	require.Contains(t, r.stderr, "report: 2 rows")

	r = runCmd(t, url, "", "campaigns")
	require.NoError(t, r.err)
	require.Contains(t, r.stdout, "spring")
	// Every outcome DONE counts has a column: the columns add up to DONE.
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	require.Equal(t, []string{"CAMPAIGN", "STARTED", "DONE", "TOTAL", "CANCELLED", "ALREADY_SENT", "NOT_FOUND", "NOT_CANCELLABLE", "EXPIRED", "DEAD", "SWEEPS_FAILED", "COMPLETE", "NOTE"}, strings.Fields(lines[0]))
	row := strings.Fields(lines[1])
	require.Equal(t, []string{"spring", "2", "3", "1", "0", "0", "0", "0", "1", "0", "false", "-"}, append(row[:1:1], row[2:]...))
	// --watch, for scripts, ends when the campaign completes: exit 1 when a
	// cancel was dead-lettered (the message may still go out), 0 otherwise.
	_, _, err = led.Settle(ctx, ledger.Final{TaskID: "msg:m3", CampaignID: "spring",
		Outcome: ledger.Outcome{Outcome: campaign.Cancelled, HTTPStatus: 200, Attempts: 1}})
	require.NoError(t, err)
	r = runCmd(t, url, "", "status", "spring", "--watch")
	require.Error(t, r.err)
	require.Contains(t, r.stderr, "campaign spring completed with 1 dead-lettered cancel(s) and 0 failed sweep(s): messages may still go out")
	r = runCmd(t, url, "", "status", "spring")
	require.NoError(t, r.err, "a look without --watch is no failure")
	require.NoError(t, runCmd(t, url, "", "--location", "L", "--campaign", "clean", "m9").err)
	_, _, err = led.Settle(ctx, ledger.Final{TaskID: "msg:m9", CampaignID: "clean",
		Outcome: ledger.Outcome{Outcome: campaign.Cancelled, HTTPStatus: 200, Attempts: 1}})
	require.NoError(t, err)
	r = runCmd(t, url, "", "status", "clean", "--watch")
	require.NoError(t, r.err, r.stderr)

	// A sweep's campaign complete with nothing of its own: the messages it
	// found were queued in spring first, and spring has a dead letter.
	rdb := redistest.ClientFor(t, url)
	now := time.Now().UnixMilli()
	for c, held := range map[string][2]string{"finder": {"spring", "msg:m2"}, "finder-clean": {"clean", "msg:m9"}} {
		require.NoError(t, rdb.HSet(ctx, ledger.CampaignKey(c), "total", 0, "started_at", now, "finished_at", now, "sweeps", 1, "sweeps_done", 1).Err())
		require.NoError(t, rdb.SAdd(ctx, ledger.CampaignHeldByKey(c), held[0]).Err())
		require.NoError(t, rdb.SAdd(ctx, ledger.CampaignHeldKey(c), held[1]).Err())
		require.NoError(t, rdb.ZAdd(ctx, ledger.CampaignIndex, redis.Z{Score: float64(now), Member: c}).Err())
	}
	r = runCmd(t, url, "", "status", "finder", "--watch")
	require.Error(t, r.err, "complete on its own, but a message it found may still go out")
	require.Contains(t, r.stdout, "already queued or done in campaign(s) spring")
	require.Contains(t, r.stderr, "1 of the 1 messages campaign finder's sweeps found queued or done first elsewhere (campaign(s) spring) were dead-lettered there")
	r = runCmd(t, url, "", "status", "finder-clean", "--watch")
	require.NoError(t, r.err, r.stderr)
	r = runCmd(t, url, "", "campaigns")
	require.NoError(t, r.err)
	require.Regexp(t, `(?m)^finder .* true +found_in:spring$`, r.stdout)

	r = runCmd(t, url, "", "status", "nope")
	require.ErrorContains(t, r.err, `no campaign "nope"`)
	r = runCmd(t, url, "", "status")
	require.ErrorContains(t, r.err, "usage: enqueue status CAMPAIGN")
}

// TestStatusOfAnExpiredCampaignWithDeadLetters: dead letters outlive
// their campaign (30 days against 7); status and report said "unknown"
// then, while those messages may still go out.
func TestStatusOfAnExpiredCampaignWithDeadLetters(t *testing.T) {
	t.Parallel()
	url := redisServer.URL(t)
	require.NoError(t, deadletter.New(redistest.ClientFor(t, url)).Add(context.Background(), deadletter.Record{TaskID: "msg:mExpired00000000001",
		Kind: "message", MessageID: "mExpired00000000001", LocationID: "L", CampaignID: "expired-camp", Queue: "bulk",
		Reason: "unauthorized", HTTPStatus: 401, Attempts: 1, DeadAt: time.Now()}))
	for _, cmd := range []string{"status", "report"} {
		r := runCmd(t, url, "", cmd, "expired-camp")
		require.Error(t, r.err, cmd)
		require.ErrorContains(t, r.err, `campaign "expired-camp" has expired`)
		require.ErrorContains(t, r.err, "may still go out: enqueue dead list --campaign expired-camp")
	}
	r := runCmd(t, url, "", "status", "never-was")
	require.ErrorContains(t, r.err, `no campaign "never-was" (unknown, older than its retention`)
}

func TestDeadPurgeAndExport(t *testing.T) {
	t.Parallel()
	url := redisServer.URL(t)
	ctx := context.Background()
	store := deadletter.New(redistest.ClientFor(t, url))
	for i := range 6 {
		reason := []string{"unauthorized", "bad_request"}[i%2]
		require.NoError(t, store.Add(ctx, deadletter.Record{TaskID: fmt.Sprintf("msg:p%d", i), Kind: "message",
			MessageID: fmt.Sprintf("p%d", i), LocationID: "L", Queue: "bulk", Reason: reason}))
	}
	r := runCmd(t, url, "", "dead", "export", "--reason", "bad_request")
	require.NoError(t, r.err)
	require.Equal(t, 3, strings.Count(r.stdout, "\n"))
	require.Contains(t, r.stderr, "exported 3 records")

	r = runCmd(t, url, "", "dead", "purge")
	require.ErrorContains(t, r.err, "give a filter")
	r = runCmd(t, url, "no\n", "dead", "purge", "--reason", "bad_request")
	require.ErrorContains(t, r.err, "not confirmed; nothing deleted")
	r = runCmd(t, url, "yes\n", "dead", "purge", "--reason", "bad_request")
	require.NoError(t, r.err)
	require.Equal(t, "purged 3 dead letters\n", r.stdout)
	r = runCmd(t, url, "", "dead", "purge", "--all", "--yes")
	require.NoError(t, r.err)
	require.Equal(t, "purged 3 dead letters\n", r.stdout)
	n, err := store.Count(ctx)
	require.NoError(t, err)
	require.Zero(t, n)
}

func TestDryRun(t *testing.T) {
	t.Parallel()
	in := "message_id,location_id,kind\n"
	for i := range 250 {
		in += fmt.Sprintf("m%03d,locA,message\n", i)
	}
	in += "e1,locB,email\ne2,locB,email\nm001,locA,message\nbad/id,locB,email\n"
	// No Redis is needed: an unreachable URL must not matter.
	r := runCmd(t, "redis://127.0.0.1:1/0", in, "--file", "-", "--dry-run")
	require.ErrorIs(t, r.err, errReported, "an invalid line makes it exit non-zero")
	require.Contains(t, r.stdout, "dry run: 252 valid, 1 duplicates, 1 invalid, 2 locations; at 100 per 10s per location it takes at least 20s (busiest: locA)") // 100 at once, 100 at 10.2 s, 50 at 20.4 s
	require.Contains(t, r.stdout, "locB      0         2")
	require.Contains(t, r.stderr, "line 255: message_id")

	r = runCmd(t, "redis://127.0.0.1:1/0", "a1\na2\n", "--file", "-", "--location", "L", "--dry-run", "--json", "--rate-limit", "1/1s")
	require.NoError(t, r.err)
	var d DryRun
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &d))
	require.Equal(t, 2, d.Valid)
	require.Equal(t, "1s", d.MinDuration) // the first at once, the second 1.02 s later
	require.Nil(t, d.OverDailyBudget)

	// More than a location's daily budget: the pacing's 7 h is two days
	// at least, said (it was not, found by the daily-budget audit).
	var big strings.Builder
	for i := range 250_000 {
		fmt.Fprintf(&big, "mBig%016d\n", i)
	}
	r = runCmd(t, "redis://127.0.0.1:1/0", big.String(), "--file", "-", "--location", "locBig", "--dry-run")
	require.NoError(t, r.err, r.stderr)
	require.Contains(t, r.stdout, "note: 1 location(s) have more cancels than HighLevel's daily budget of 200000 calls per location (less DAILY_RESERVE, 100 by default): "+
		"each is parked when its budget runs out and goes on the next day, so these take 2 day(s) or more; locBig has 250000")
}

// TestHostileFiles: a 100 MB file without a newline and a binary file are
// refused line by line with a clear message and exit 1, without holding
// the line in memory, and the campaign counts exactly what was enqueued.
func TestHostileFiles(t *testing.T) {
	url := redisServer.URL(t)
	dir := t.TempDir()

	big := filepath.Join(dir, "no-newline.csv")
	f, err := os.Create(big)
	require.NoError(t, err)
	chunk := bytes.Repeat([]byte("a"), 1<<20)
	for range 100 {
		_, err := f.Write(chunk)
		require.NoError(t, err)
	}
	require.NoError(t, f.Close())
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	r := runCmd(t, url, "", "--location", "locA", "--campaign", "hostile", "--file", big)
	runtime.ReadMemStats(&after)
	require.Error(t, r.err)
	require.Contains(t, r.stderr, "line 1: line is longer than 4096 bytes")
	require.Contains(t, r.stdout, "enqueued 0, requeued 0, already queued 0, already done 0, rejected 1")
	require.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(32<<20), "the 100 MB line must not be read into memory")

	// Binary: every line has a NUL or is not UTF-8; one good line among them.
	bin := filepath.Join(dir, "binary.dat")
	var b bytes.Buffer
	for i := range 1000 {
		b.Write([]byte{0x89, 'P', 'N', 'G', 0x00, byte(i%200 + 20), 0xff, 0xfe, '\n'})
	}
	b.WriteString("goodMessage1\n")
	require.NoError(t, os.WriteFile(bin, b.Bytes(), 0o644))
	r = runCmd(t, url, "", "--location", "locA", "--campaign", "hostile", "--file", bin)
	require.Error(t, r.err)
	require.Contains(t, r.stderr, "line 1: line is not text (binary data?)")
	require.Contains(t, r.stdout, "enqueued 1, requeued 0, already queued 0, already done 0, rejected 1000")

	rdb := redistest.ClientFor(t, url)
	st, ok, err := campaign.New(rdb, 0).Get(context.Background(), "hostile")
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, int64(1), st.Total, "the campaign counts exactly what was enqueued")
}

// answerAfter answers the purge question, but first runs what happens
// while an operator reads it.
type answerAfter struct {
	meanwhile func()
	answer    io.Reader
	done      bool
}

func (a *answerAfter) Read(p []byte) (int, error) {
	if !a.done {
		a.done = true
		a.meanwhile()
	}
	return a.answer.Read(p)
}

// TestDeadPurgeDeletesWhatItCounted: while the question waits, a new
// matching dead letter arrives and a counted one is dead-lettered again;
// the purge deletes the counted ones that are unchanged, keeps both, and
// says so.
func TestDeadPurgeDeletesWhatItCounted(t *testing.T) {
	t.Parallel()
	url := redisServer.URL(t)
	ctx := context.Background()
	store := deadletter.New(redistest.ClientFor(t, url))
	old := time.Now().Add(-time.Hour)
	for i := range 4 {
		require.NoError(t, store.Add(ctx, deadletter.Record{TaskID: fmt.Sprintf("msg:q%d", i), Kind: "message",
			MessageID: fmt.Sprintf("q%d", i), LocationID: "L", Queue: "bulk", Reason: "unauthorized", DeadAt: old}))
	}
	in := &answerAfter{answer: strings.NewReader("yes\n"), meanwhile: func() {
		require.NoError(t, store.Add(ctx, deadletter.Record{TaskID: "msg:new", Kind: "message", MessageID: "new", LocationID: "L", Queue: "bulk", Reason: "unauthorized"}))
		require.NoError(t, store.Add(ctx, deadletter.Record{TaskID: "msg:q0", Kind: "message", MessageID: "q0", LocationID: "L", Queue: "bulk", Reason: "unauthorized"}))
	}}
	var out, errw bytes.Buffer
	err := run(ctx, []string{"dead", "purge", "--reason", "unauthorized"}, func(k string) string {
		if k == envRedisURL {
			return url
		}
		return ""
	}, in, &out, &errw)
	require.NoError(t, err, errw.String())
	require.Contains(t, errw.String(), "delete 4 dead letters for good?")
	require.Equal(t, "purged 3 dead letters\n", out.String())
	require.Contains(t, errw.String(), "1 of the 4 were no longer as counted (requeued, dead-lettered again or removed meanwhile) and were not deleted by this purge")
	var left []string
	require.NoError(t, store.Scan(ctx, deadletter.Filter{}, func(r deadletter.Record) error { left = append(left, r.TaskID); return nil }))
	require.ElementsMatch(t, []string{"msg:new", "msg:q0"}, left)
}

type tokenMap map[string]string

func (m tokenMap) Token(_ context.Context, loc string) (string, error) {
	if t, ok := m[loc]; ok {
		return t, nil
	}
	return "", tokens.ErrNoToken
}

// TestSweepWaitExitCode: `sweep --wait` is what a script runs and checks.
// A location whose sweep failed (here: no token, a typo'd location id) left
// its messages scheduled: exit 1 with a line saying so, though the campaign
// reads complete. It used to exit 0. A sweep that cancelled everything
// exits 0, with --json too.
func TestSweepWaitExitCode(t *testing.T) {
	t.Parallel()
	const loc, typo, tok = "locSweepWait00000001", "locSweepWait0000001", "tok-sweep-wait"
	url := redisServer.URL(t)
	sb := sandbox.New(sandbox.Config{})
	sb.AddLocation(loc, tok)
	ids := sb.ScheduleN(loc, 3, false)
	var refuse atomic.Bool // HighLevel refuses every cancel: dead letters bad_request
	inner := sb.Handler()
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if refuse.Load() && r.Method == http.MethodDelete {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"statusCode":400,"message":"Bad Request"}`))
			return
		}
		inner.ServeHTTP(w, r)
	}))
	t.Cleanup(api.Close)
	w, err := worker.New(worker.Config{Redis: redistest.ClientFor(t, url), GHL: ghl.Config{BaseURL: api.URL, Timeout: 2 * time.Second},
		Tokens: tokenMap{loc: tok}, Concurrency: 5, NoPacing: true, DelayedCheckInterval: 100 * time.Millisecond, ShutdownTimeout: 5 * time.Second})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() { cancel(); require.NoError(t, <-done) })

	r := runCmd(t, url, "", "sweep", "--location", typo, "--campaign", "sw-typo", "--wait")
	require.ErrorIs(t, r.err, errReported, r.stderr)
	require.Contains(t, r.stderr, "1 location(s) failed, 0 cancel(s) dead-lettered in campaign sw-typo while it ran: messages may still go out")
	require.Contains(t, r.stdout, "no_token")

	// The sweep ran, its cancels were refused for good.
	refuse.Store(true)
	r = runCmd(t, url, "", "sweep", "--location", loc, "--campaign", "sw-dead", "--wait")
	require.ErrorIs(t, r.err, errReported, r.stderr)
	require.Contains(t, r.stderr, "0 location(s) failed, 3 cancel(s) dead-lettered in campaign sw-dead while it ran")
	// The same sweep again: it requeues the 3 dead letters, which die
	// again. The campaign's count does not change (it exited 0); the run's
	// own dead letters decide.
	r = runCmd(t, url, "", "sweep", "--location", loc, "--campaign", "sw-dead", "--wait")
	require.ErrorIs(t, r.err, errReported, r.stderr)
	require.Contains(t, r.stderr, "0 location(s) failed, 3 cancel(s) dead-lettered in campaign sw-dead while it ran")
	refuse.Store(false)

	// A campaign that already holds a dead letter from other work: the
	// sweep's own result decides the exit code.
	r = runCmd(t, url, "", "--location", typo, "--campaign", "sw-ok", "other1")
	require.NoError(t, r.err, r.stderr)
	tr := campaign.New(redistest.ClientFor(t, url), 0)
	require.Eventually(t, func() bool { s, _, _ := tr.Get(context.Background(), "sw-ok"); return s.DeadLettered == 1 }, 10*time.Second, 50*time.Millisecond)
	r = runCmd(t, url, "", "sweep", "--location", loc, "--campaign", "sw-ok", "--wait", "--json")
	require.NoError(t, r.err, r.stderr)
	require.NotContains(t, r.stderr, "failed,")
	for _, id := range ids {
		st, _, _ := sb.MessageStatus(id)
		require.Equal(t, sandbox.StatusCancelled, st)
	}
	require.NotContains(t, r.stderr, "no message at all")

	// A mistyped contact id: the export answers an empty page, and the
	// sweep completes with nothing found; it says what to check. The
	// contact the messages belong to gets no such note (its messages are
	// read, though none is scheduled any more).
	r = runCmd(t, url, "", "sweep", "--location", loc, "--contact", "sandboxContact00001", "--wait")
	require.NoError(t, r.err, r.stderr)
	require.Contains(t, r.stderr, "note: HighLevel's export holds no message at all of contact sandboxContact00001 at location "+loc+
		" (not even sent ones): check the id, and that it belongs to that location")
	r = runCmd(t, url, "", "sweep", "--location", loc, "--contact", sandbox.DefaultContact, "--wait", "--json")
	require.NoError(t, r.err, r.stderr)
	require.NotContains(t, r.stderr, "no message at all")
	require.Contains(t, r.stdout, `"messages_read":3`)
	// Narrowed to a channel the contact has nothing in: none read, and
	// no note (its other messages were left out by the filter, not a typo).
	r = runCmd(t, url, "", "sweep", "--location", loc, "--contact", sandbox.DefaultContact, "--channel", "email", "--wait", "--json")
	require.NoError(t, r.err, r.stderr)
	require.Contains(t, r.stdout, `"messages_read":0`)
	require.NotContains(t, r.stderr, "no message at all")
}

// TestEnqueueSaysWhatNobodyWillRun: an input with no ids (empty, a header
// only) and a database no worker serves (a mistyped db number in
// REDIS_URL, the workers not started) are said on stderr; the run itself
// did what it was asked.
func TestEnqueueSaysWhatNobodyWillRun(t *testing.T) {
	t.Parallel()
	url := redisServer.URL(t)
	for _, in := range []string{"", "message_id,location_id\n", "\ufeff\n"} {
		r := runCmd(t, url, in, "--location", "L", "--file", "-")
		require.NoError(t, r.err)
		require.Contains(t, r.stderr, "the input held no message ids (empty, or a header only): nothing was enqueued", "%q", in)
		require.NotContains(t, r.stderr, "no worker")
	}
	r := runCmd(t, url, "", "--location", "L", "mNoWorker000000000001")
	require.NoError(t, r.err)
	require.Regexp(t, `no worker is running on this Redis database \(db \d+\): what was queued waits until a worker starts with the same REDIS_URL`, r.stderr)
	// A run that stops part way (a second header with other columns) says
	// it too: what it queued before waits.
	r = runCmd(t, url, "message_id,location_id\nmNoWorker000000000003,L\nmessage_id,kind\nx,email\n", "--file", "-")
	require.Error(t, r.err)
	require.Contains(t, r.stderr, "no worker is running")
	// No dead letter at all: said, not just "requeued 0".
	r = runCmd(t, url, "", "dead", "requeue", "--reason", "unauthorised")
	require.NoError(t, r.err)
	require.Contains(t, r.stderr, "no dead letters are held at all")
	// A live worker (asynq's entry, scored by its expiry): no warning.
	rdb := redistest.ClientFor(t, url)
	require.NoError(t, rdb.ZAdd(context.Background(), "asynq:servers", redis.Z{Score: float64(time.Now().Add(time.Minute).Unix()), Member: "asynq:servers:{h:1:x}"}).Err())
	r = runCmd(t, url, "", "--location", "L", "mNoWorker000000000002")
	require.NoError(t, r.err)
	require.NotContains(t, r.stderr, "no worker")
}

// TestWrongRedisPasswordIsNamed: a refused password is named as such,
// not "cannot reach Redis (is it running?)".
func TestWrongRedisPasswordIsNamed(t *testing.T) {
	t.Parallel()
	srv, err := redistest.Start()
	require.NoError(t, err)
	t.Cleanup(srv.Stop)
	require.NoError(t, redistest.ClientFor(t, "redis://"+srv.Addr+"/0").ConfigSet(context.Background(), "requirepass", "right-pw").Err())
	r := runCmd(t, "redis://:wrong-pw@"+srv.Addr+"/0", "", "status", "c1")
	require.ErrorContains(t, r.err, "the password in REDIS_URL is wrong or missing")
	require.NotContains(t, r.err.Error(), "is it running")
	require.NotContains(t, r.err.Error(), "wrong-pw")
}

// TestMisnamedRedisVariable: REDIS_HOST set and REDIS_URL not: the default
// Redis would be used silently (tasks queued where no worker reads).
func TestMisnamedRedisVariable(t *testing.T) {
	t.Parallel()
	var out, errw bytes.Buffer
	err := run(context.Background(), []string{"status", "c1"}, func(k string) string {
		return map[string]string{"REDIS_HOST": "redis.internal"}[k]
	}, strings.NewReader(""), &out, &errw)
	require.ErrorContains(t, err, "REDIS_HOST is set, but ghlcancel reads REDIS_URL only")
}

// TestRedissAgainstPlainRedisIsNamed: rediss:// against a plain Redis
// times out like a stopped server; the message says which it is.
func TestRedissAgainstPlainRedisIsNamed(t *testing.T) {
	t.Parallel()
	srv, err := redistest.Start()
	require.NoError(t, err)
	t.Cleanup(srv.Stop)
	r := runCmd(t, "rediss://"+srv.Addr+"/0", "", "status", "c1")
	require.ErrorContains(t, r.err, "speaks plain Redis: use redis://")
	require.NotContains(t, r.err.Error(), "is it running")
}

// TestTokensDelete: a location's stored pair that is dead (its refresh
// token spent elsewhere) hid the agency's minted token for that location,
// and nothing removed it but redis-cli. `tokens delete` does; a second run,
// or a location with no pair, says so and fails.
func TestTokensDelete(t *testing.T) {
	t.Parallel()
	url := redisServer.URL(t)
	run2 := withTokenKey(url, strings.Repeat("ef", 32))
	const loc = "locD0000000000000001"
	require.NoError(t, run2("rt-SECRET-1\n", "tokens", "set", "--location", loc).err)
	r := run2("", "tokens", "delete", "--location", loc)
	require.NoError(t, r.err, r.stderr)
	require.Contains(t, r.stdout, "removed the stored OAuth pair of location "+loc)
	require.Contains(t, r.stdout, "enqueue dead requeue --location "+loc)
	require.False(t, redistest.ClientFor(t, url).HExists(context.Background(), "ghlcancel:oauth:{"+loc+"}", "ct").Val(), "no pair left")
	r = run2("", "tokens", "list")
	require.NoError(t, r.err)
	require.NotContains(t, r.stdout, loc)

	r = run2("", "tokens", "delete", "--location", loc)
	require.ErrorContains(t, r.err, "location "+loc+" has no stored OAuth pair: nothing removed")
	r = run2("", "tokens", "delete", "--location", "bad/loc")
	require.ErrorContains(t, r.err, "--location")
	r = run2("", "tokens", "delete")
	require.ErrorContains(t, r.err, "--location")
}

// TestTokensSetWarnsOfAnotherKey: a pair loaded with another GHL_TOKEN_KEY
// than the pairs stored before is stored (rotating the key is loading
// every pair again), with a warning: workers hold one key and would
// dead-letter one side token_key (found by an audit).
func TestTokensSetWarnsOfAnotherKey(t *testing.T) {
	t.Parallel()
	url := redisServer.URL(t)
	first := withTokenKey(url, strings.Repeat("12", 32))
	other := withTokenKey(url, strings.Repeat("34", 32))
	r := first("rt-SECRET-1\n", "tokens", "set", "--location", "locK0000000000000001")
	require.NoError(t, r.err)
	require.NotContains(t, r.stderr, "warning")
	r = first("rt-SECRET-2\n", "tokens", "set", "--location", "locK0000000000000002")
	require.NoError(t, r.err)
	require.NotContains(t, r.stderr, "warning", "the same key")
	r = other("rt-SECRET-3\n", "tokens", "set", "--location", "locK0000000000000003")
	require.NoError(t, r.err)
	require.Contains(t, r.stderr, "warning: 2 of the 2 location pairs stored (location locK0000000000000001's, ...), stored before, does not decrypt with this GHL_TOKEN_KEY")
	require.NotContains(t, r.stderr, "SECRET")
	r = other("rt-SECRET-4\n", "tokens", "agency", "set", "--company", "companyK0000000001")
	require.NoError(t, r.err)
	require.Contains(t, r.stderr, "does not decrypt with this GHL_TOKEN_KEY")

	// A rotation half done: the first pair (sorted) was loaded again with
	// the new key, another was not. Only the first was checked, so this
	// said nothing.
	url2 := redisServer.URL(t)
	first, other = withTokenKey(url2, strings.Repeat("12", 32)), withTokenKey(url2, strings.Repeat("34", 32))
	require.NoError(t, first("rt-SECRET-5\n", "tokens", "set", "--location", "locAaa00000000000001").err)
	require.NoError(t, first("rt-SECRET-6\n", "tokens", "set", "--location", "locBbb00000000000001").err)
	require.NoError(t, other("rt-SECRET-7\n", "tokens", "set", "--location", "locAaa00000000000001", "--replace").err)
	r = other("rt-SECRET-8\n", "tokens", "set", "--location", "locDdd00000000000001")
	require.NoError(t, r.err)
	require.Contains(t, r.stderr, "warning: location locBbb00000000000001's pair, stored before, does not decrypt")
}

// TestWatchWaitsForHeldMessages: a campaign complete on its own whose
// sweep found a message queued first elsewhere waits for that message's
// outcome, says it once (it was said twice after a wait, found by review),
// and exits 1 when it was dead-lettered.
func TestWatchWaitsForHeldMessages(t *testing.T) {
	t.Parallel()
	url := redisServer.URL(t)
	ctx := context.Background()
	rdb := redistest.ClientFor(t, url)
	now := time.Now().UnixMilli()
	const c = "waits-held"
	require.NoError(t, rdb.HSet(ctx, ledger.CampaignKey(c), "total", 0, "started_at", now, "finished_at", now, "sweeps", 1, "sweeps_done", 1).Err())
	require.NoError(t, rdb.SAdd(ctx, ledger.CampaignHeldByKey(c), "other").Err())
	require.NoError(t, rdb.HSet(ctx, ledger.CampaignKey("other"), "total", 1, "started_at", now).Err()) // the holder (one gone is not named)
	require.NoError(t, rdb.SAdd(ctx, ledger.CampaignHeldKey(c), "msg:held1\tother").Err())
	require.NoError(t, rdb.HSet(ctx, "asynq:{bulk}:t:msg:held1", "state", "pending").Err())
	go func() {
		time.Sleep(time.Second)
		rdb.HSet(ctx, ledger.Key("msg:held1"), "o", ledger.DeadLettered+"|unauthorized|401|1|1")
		rdb.Del(ctx, "asynq:{bulk}:t:msg:held1")
	}()
	r := runCmd(t, url, "", "status", c, "--watch")
	require.Error(t, r.err)
	require.Contains(t, r.stderr, "campaign waits-held is complete; waiting for 1 messages its sweeps found, queued first in campaign(s) other")
	require.Equal(t, 1, strings.Count(r.stderr, "were dead-lettered there"), "said once")
}

// TestWatchExitsOneOnExpired: a campaign complete with an expired cancel
// (its message's send time passed before its turn, as behind a parked
// location) exited 0 from status --watch, read as all cancelled.
func TestWatchExitsOneOnExpired(t *testing.T) {
	t.Parallel()
	url := redisServer.URL(t)
	rdb := redistest.ClientFor(t, url)
	now := time.Now().UnixMilli()
	require.NoError(t, rdb.HSet(context.Background(), ledger.CampaignKey("soon0"), "total", 2, "cancelled", 1, "expired", 1,
		"started_at", now, "finished_at", now).Err())
	r := runCmd(t, url, "", "status", "soon0", "--watch")
	require.ErrorIs(t, r.err, errReported, r.stderr)
	require.Contains(t, r.stderr, "campaign soon0 completed with 1 expired cancel(s): their messages' send time passed before their turn, so they have gone out")
	require.NoError(t, rdb.HSet(context.Background(), ledger.CampaignKey("soon0"), "cancelled", 2, "expired", 0).Err())
	r = runCmd(t, url, "", "status", "soon0", "--watch")
	require.NoError(t, r.err, r.stderr)
}

// TestRerunUnderAnotherCampaignNamesWhereTheyAre: a file sent again under a
// new campaign id finds its messages counted in the first campaign; the
// run says which (its own campaign stays empty, so `status` of it finds no
// campaign, and nothing pointed at the first one).
func TestRerunUnderAnotherCampaignNamesWhereTheyAre(t *testing.T) {
	t.Parallel()
	url := redisServer.URL(t)
	ids := []string{"mHeldBy0000000000001", "mHeldBy0000000000002", "mHeldBy0000000000003"}
	r := runCmd(t, url, "", append([]string{"--location", "L", "--campaign", "spring-sale"}, ids...)...)
	require.NoError(t, r.err, r.stderr)
	require.NotContains(t, r.stderr, "counted in another campaign")
	// The same campaign again: nothing to say.
	r = runCmd(t, url, "", append([]string{"--location", "L", "--campaign", "spring-sale"}, ids...)...)
	require.NoError(t, r.err, r.stderr)
	require.Contains(t, r.stdout, "already queued 3")
	require.NotContains(t, r.stderr, "counted in another campaign")
	// Under a new id, and with none: both name spring-sale.
	r = runCmd(t, url, "", append([]string{"--location", "L", "--campaign", "spring-sale-2"}, ids...)...)
	require.NoError(t, r.err, r.stderr)
	require.Contains(t, r.stderr, "enqueue: 3 of the messages already queued or done are counted in another campaign than the one they were sent under, and stay there: spring-sale 3")
	// spring-sale-2 counted nothing, so there is no such campaign; status
	// says why that may be, not only "unknown, or older than its retention".
	r = runCmd(t, url, "", "status", "spring-sale-2")
	require.ErrorContains(t, r.err, `no campaign "spring-sale-2" (unknown, older than its retention, or nothing was ever counted in it (a message already counted in another campaign stays there`)
	r = runCmd(t, url, "", append([]string{"--location", "L", "--json"}, ids[:2]...)...)
	require.NoError(t, r.err, r.stderr)
	require.Contains(t, r.stdout, `"held_by":{"spring-sale":2}`)
}

// TestCampaignExpired: sweep --wait compares the campaign's expired rows
// before and after (review: by the campaign's count, one that expired
// again after a resend reopened it changed nothing; by time, the worker's
// clock was compared with this host's).
func TestCampaignExpired(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	since := time.Now()
	row := func(o string, at time.Time) string {
		return ledger.Outcome{Outcome: o, Attempts: 1, At: at}.Row()
	}
	require.NoError(t, rdb.HSet(ctx, ledger.CampaignOutcomesKey("exp"),
		"msg:old", row(ledger.Expired, since.Add(-time.Minute)),
		"msg:new", row(ledger.Expired, since.Add(time.Second)),
		"msg:now", row(ledger.Expired, since),
		"msg:done", row(ledger.Cancelled, since.Add(time.Second))).Err())
	got, err := campaignExpired(ctx, rdb, "exp")
	require.NoError(t, err)
	require.Len(t, got, 3)
	require.Equal(t, since.Add(time.Second).UnixMilli(), got["msg:new"].UnixMilli())
	require.NotContains(t, got, "msg:done")
}
