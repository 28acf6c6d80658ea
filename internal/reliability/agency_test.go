package reliability

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/deadletter"
	"github.com/ghlcancel/ghlcancel/internal/promtest"
	"github.com/ghlcancel/ghlcancel/internal/redistest"
	"github.com/ghlcancel/ghlcancel/internal/sandbox"
	"github.com/ghlcancel/ghlcancel/internal/tokens"
	"github.com/ghlcancel/ghlcancel/internal/webhook"
)

const agencyKeyHex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"

// oauthEnv is what workers and the CLI need for OAuth and agency tokens.
func oauthEnv(baseURL string) []string {
	return []string{"GHL_CLIENT_ID=" + sandbox.ClientIDDefault, "GHL_CLIENT_SECRET=" + sandbox.ClientSecretDefault,
		"GHL_TOKEN_KEY=" + agencyKeyHex, "GHL_BASE_URL=" + baseURL}
}

// enqueueWith runs the enqueue binary with extra environment and stdin.
func enqueueWith(t *testing.T, redisURL string, env []string, stdin string, args ...string) (string, string) {
	t.Helper()
	cmd := exec.Command(enqueueBin, args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "REDIS_URL=" + redisURL}, env...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errw strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errw
	require.NoError(t, cmd.Run(), "enqueue %v: %s", args, errw.String())
	return out.String(), errw.String()
}

// TestAgencyInstallsEndToEnd: an agency pair only (no location token set
// by hand), 50 installed locations with scheduled messages, two worker
// processes, the intake for webhooks. `enqueue sweep --all-locations`
// cancels every scheduled message in all 50, each location's token minted
// once across both workers. A location HighLevel says the app is not
// installed at gets its cancels dead-lettered not_installed with the hint.
// An UNINSTALL webhook makes the next cancels there dead-letter
// not_installed; the INSTALL webhook that follows mints a token again, and
// `enqueue dead requeue` then cancels them. No token (agency, minted, or
// refresh) shows in Redis, the reports, the dead letters, the metrics or
// the logs.
func TestAgencyInstallsEndToEnd(t *testing.T) {
	t.Parallel()
	srv, err := redistest.Start()
	require.NoError(t, err)
	t.Cleanup(srv.Stop)
	redisURL := "redis://" + srv.Addr + "/0"
	ctx := context.Background()

	// HighLevel's documented limits (100 per 10 s per location and per
	// company), so minting and listing go through the company's bucket.
	sb := sandbox.New(sandbox.Config{DailyLimit: 1 << 30, Faults: sandbox.Faults{Latency: 2 * time.Millisecond}})
	api := httptest.NewServer(sb.Handler())
	t.Cleanup(api.Close)
	const company = "relCompany0000000001"
	rt := sb.AddAgency(company)
	var locs []string
	scheduled := map[string][]string{}
	for i := range 50 {
		loc := fmt.Sprintf("relAgency%011d", i)
		locs = append(locs, loc)
		sb.InstallLocation(company, loc, fmt.Sprintf("Shop %d", i))
		for _, a := range sb.AddMessages(loc, sandbox.MixedSpecs(8, 6, 4, 3, 3)...) {
			if a.Scheduled {
				scheduled[loc] = append(scheduled[loc], a.CancelID)
			}
		}
	}
	const gone = "relAgencyGone0000001" // installed once, uninstalled before the campaign
	sb.InstallLocation(company, gone, "Closed shop")
	sb.UninstallLocation(gone)
	goneIDs := sb.ScheduleN(gone, 5, false)

	c := &campaign{sb: sb, api: api, tokens: map[string]string{}}
	c.tokenFile = filepath.Join(t.TempDir(), "tokens.json")
	require.NoError(t, os.WriteFile(c.tokenFile, []byte("{}"), 0o600)) // no location token by hand
	env := oauthEnv(api.URL)
	workerEnv := append([]string{"RATE_LIMIT=100/10s"}, env...)
	w1 := startWorker(t, redisURL, c, workerEnv...)
	w2 := startWorker(t, redisURL, c, workerEnv...)
	in := startIntake(t, redisURL, sb)

	// 1. The agency's pair, from stdin; then the installs, from HighLevel.
	out, _ := enqueueWith(t, redisURL, env, rt+"\n", "tokens", "agency", "set", "--company", company, "--app", sandbox.AppIDDefault)
	require.Contains(t, out, "stored the agency's encrypted token pair for company "+company)
	out, progress := enqueueWith(t, redisURL, env, "", "tokens", "agency", "locations", "--json")
	var listed struct {
		Locations []tokens.InstalledLocation `json:"locations"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &listed))
	require.Len(t, listed.Locations, 50, "the uninstalled location is not listed")
	require.Contains(t, progress, "installed locations: 50 of 50 listed")

	// 2. A sweep over every installed location.
	out, _ = enqueueWith(t, redisURL, env, "", "sweep", "--all-locations", "--campaign", "agency-all")
	require.Equal(t, "agency-all\n", out)
	require.Eventually(t, func() bool { return statusOf(t, redisURL, "agency-all").Complete }, 2*time.Minute, 200*time.Millisecond)
	s := statusOf(t, redisURL, "agency-all")
	want := 0
	for _, loc := range locs {
		want += len(scheduled[loc])
		for _, id := range scheduled[loc] {
			st, n, _ := sb.MessageStatus(id)
			require.Equal(t, sandbox.StatusCancelled, st, "message %s of %s", id, loc)
			require.Equal(t, 1, n)
		}
		require.Len(t, sb.Mints(loc), 1, "one mint for %s across both workers", loc)
	}
	require.Equal(t, int64(want), s.Cancelled)
	require.Equal(t, int64(want), s.Total)
	require.Equal(t, int64(50), s.Sweeps)
	require.Zero(t, s.DeadLettered)
	// Each mint is a HighLevel call, and counted as one (it was not).
	var mints float64
	for _, w := range []*workerProc{w1, w2} {
		sc, err := promtest.Get("http://" + w.metricsAddr + "/metrics")
		require.NoError(t, err)
		mints += sc.Sum("ghlcancel_api_requests_total", "endpoint", "oauth_location_token")
	}
	require.Equal(t, float64(sb.Stats().Mints), mints)
	require.Equal(t, 50.0, mints)
	tokensList, _ := enqueueWith(t, redisURL, env, "", "tokens", "list")
	require.Contains(t, tokensList, locs[7]+"  agency")

	// 3. A file campaign for the location the app is no longer installed at.
	var b strings.Builder
	b.WriteString("message_id,location_id,kind,campaign_id\n")
	for _, id := range goneIDs {
		fmt.Fprintf(&b, "%s,%s,message,agency-gone\n", id, gone)
	}
	path := filepath.Join(t.TempDir(), "gone.csv")
	require.NoError(t, os.WriteFile(path, []byte(b.String()), 0o600))
	enqueueCLI(t, redisURL, "--file", path)
	require.Eventually(t, func() bool { return statusOf(t, redisURL, "agency-gone").Complete }, time.Minute, 100*time.Millisecond)
	s = statusOf(t, redisURL, "agency-gone")
	require.Equal(t, int64(5), s.DeadLettered)
	rdb := redistest.ClientFor(t, redisURL)
	reasons := map[string]int{}
	require.NoError(t, deadletter.New(rdb).Scan(ctx, deadletter.Filter{CampaignID: "agency-gone"}, func(r deadletter.Record) error {
		reasons[r.Reason]++
		require.Contains(t, r.APIMessage, "install it there, then requeue")
		return nil
	}))
	require.Equal(t, map[string]int{tokens.ReasonNotInstalled: 5}, reasons)
	require.Empty(t, sb.Mints(gone))
	require.Equal(t, int64(1), sb.Stats().MintsRefused, "one refused mint for 5 cancels on 2 workers: the refusal is remembered")

	// 4. UNINSTALL at locs[0] (HighLevel revokes its tokens): new cancels
	// there are dead-lettered not_installed. INSTALL again: a token is
	// minted, and the dead letters requeued are cancelled.
	loc0 := locs[0]
	sb.UninstallLocation(loc0)
	code, r := emit(t, sb, in.url(), sb.EventBody(sandbox.EventSpec{Type: "UNINSTALL", Location: loc0, Company: company}), sandbox.EmitOptions{})
	require.Equal(t, http.StatusOK, code, r.Reason)
	require.Equal(t, webhook.ResultAccepted, r.Result)
	later := sb.ScheduleN(loc0, 3, false)
	b.Reset()
	b.WriteString("message_id,location_id,kind,campaign_id\n")
	for _, id := range later {
		fmt.Fprintf(&b, "%s,%s,message,agency-later\n", id, loc0)
	}
	require.NoError(t, os.WriteFile(path, []byte(b.String()), 0o600))
	enqueueCLI(t, redisURL, "--file", path)
	require.Eventually(t, func() bool { return statusOf(t, redisURL, "agency-later").Complete }, time.Minute, 100*time.Millisecond)
	require.Equal(t, int64(3), statusOf(t, redisURL, "agency-later").DeadLettered)
	require.Len(t, sb.Mints(loc0), 1, "nothing minted for an uninstalled location")

	sb.InstallLocation(company, loc0, "Shop 0")
	code, r = emit(t, sb, in.url(), sb.EventBody(sandbox.EventSpec{Type: "INSTALL", Location: loc0, Company: company}), sandbox.EmitOptions{})
	require.Equal(t, http.StatusOK, code, r.Reason)
	require.Equal(t, webhook.ResultAccepted, r.Result)
	require.Eventually(t, func() bool { return len(sb.Mints(loc0)) == 2 }, 30*time.Second, 50*time.Millisecond, "the INSTALL mints a token")
	out = enqueueCLI(t, redisURL, "dead", "requeue", "--campaign", "agency-later")
	require.Contains(t, out, "requeued 3")
	require.Eventually(t, func() bool {
		s := statusOf(t, redisURL, "agency-later")
		return s.Complete && s.Cancelled == 3
	}, time.Minute, 100*time.Millisecond)
	for _, id := range later {
		st, _, _ := sb.MessageStatus(id)
		require.Equal(t, sandbox.StatusCancelled, st)
	}
	require.Len(t, sb.Mints(loc0), 2, "the requeued cancels used the token the INSTALL minted")

	// 5. No credential anywhere an operator or an attacker could read.
	logs := w1.logs.String() + w2.logs.String() + in.logs.String()
	require.Contains(t, logs, "not_installed", "the logs are what we think they are")
	text := everythingVisible(t, rdb, []string{"agency-all", "agency-gone", "agency-later"}, []string{w1.metricsAddr, w2.metricsAddr}, logs)
	secrets := sb.IssuedSecrets()
	require.Greater(t, len(secrets), 100)
	for _, sec := range secrets {
		require.NotContains(t, text, sec)
	}
	require.Regexp(t, `ghlcancel_token_mints_total\{result="not_installed"\} [1-9]`, text, "the refusal is counted by reason")
	require.Regexp(t, `ghlcancel_dead_letters_total\{reason="not_installed"\} [1-9]`, text)
}
