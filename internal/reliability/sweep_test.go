package reliability

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	campaigns "github.com/ghlcancel/ghlcancel/internal/campaign"
	"github.com/ghlcancel/ghlcancel/internal/promtest"
	"github.com/ghlcancel/ghlcancel/internal/redistest"
	"github.com/ghlcancel/ghlcancel/internal/sandbox"
)

// sweepWorld is a sandbox with the sweep issue's locations: A with 1,200
// SMS (700 scheduled across 12 contacts, the rest sent) and 100 emails (60
// scheduled); B with 100 scheduled.
type sweepWorld struct {
	*campaign
	a, b       string
	added      []sandbox.Added
	bScheduled []string
}

func newSweepWorld(t *testing.T, latency time.Duration) *sweepWorld {
	t.Helper()
	c := newCampaign(t, 2, 0, sandbox.Faults{Latency: latency})
	w := &sweepWorld{campaign: c, a: "relLocation000000000", b: "relLocation000000001"}
	w.added = c.sb.AddMessages(w.a, sandbox.MixedSpecs(1200, 700, 100, 60, 12)...)
	for _, a := range c.sb.AddMessages(w.b, make([]sandbox.MessageSpec, 100)...) {
		w.bScheduled = append(w.bScheduled, a.CancelID)
	}
	return w
}

func statusOf(t *testing.T, redisURL, id string) campaigns.Status {
	t.Helper()
	var s campaigns.Status
	require.NoError(t, json.Unmarshal([]byte(enqueueCLI(t, redisURL, "status", id, "--json")), &s))
	return s
}

// TestSweepEndToEnd: a contact sweep cancels exactly that contact's
// scheduled SMS and emails; a location sweep, its worker SIGKILLed mid-way
// and its cursor expired, cancels every other scheduled message there once,
// never a sent one, nothing in another location; both campaigns complete
// with exact totals. Then verified outcomes: sent ids end already_sent,
// unknown ids not_found, in the campaign, the report and the metrics.
func TestSweepEndToEnd(t *testing.T) {
	t.Parallel()
	srv, err := redistest.Start("--appendonly", "yes")
	require.NoError(t, err)
	t.Cleanup(srv.Stop)
	redisURL := "redis://" + srv.Addr + "/0"
	w := newSweepWorld(t, 10*time.Millisecond)
	w1 := startWorker(t, redisURL, w.campaign)

	// 1. A contact replied: cancel what is still scheduled for them.
	start := time.Now()
	out := enqueueCLI(t, redisURL, "sweep", "--location", w.a, "--contact", "contact03", "--campaign", "replied", "--wait", "--json")
	took := time.Since(start)
	var res struct {
		Locations []struct {
			SMS   int64 `json:"scheduled_sms"`
			Email int64 `json:"scheduled_email"`
		} `json:"locations"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &res))
	wantSMS, wantEmail := 0, 0
	for _, a := range w.added {
		if a.Contact == "contact03" && a.Scheduled {
			if a.Email {
				wantEmail++
			} else {
				wantSMS++
			}
		}
	}
	require.Equal(t, int64(wantSMS), res.Locations[0].SMS)
	require.Equal(t, int64(wantEmail), res.Locations[0].Email)
	s := statusOf(t, redisURL, "replied")
	require.True(t, s.Complete)
	require.Equal(t, int64(wantSMS+wantEmail), s.Total)
	require.Equal(t, s.Total, s.Cancelled)
	for _, a := range w.added {
		st, cancels, _ := w.sb.MessageStatus(a.CancelID)
		switch {
		case a.Contact == "contact03" && a.Scheduled:
			require.Equal(t, sandbox.StatusCancelled, st)
		case a.Scheduled:
			require.Equal(t, sandbox.StatusScheduled, st, "another contact's message")
		default:
			require.Zero(t, cancels)
		}
	}
	t.Logf("contact sweep: %d SMS + %d emails found and cancelled in %.1fs (sweep, cancels, campaign complete)", wantSMS, wantEmail, took.Seconds())

	// 2. The whole location, pages of 10: kill the worker mid-sweep, expire
	// the cursor it held, start another.
	exportsBefore := w.sb.ExportCalls()
	enqueueCLI(t, redisURL, "sweep", "--location", w.a, "--campaign", "all-of-it", "--page-size", "10")
	require.Eventually(t, func() bool { return w.sb.ExportCalls()-exportsBefore >= 40 }, time.Minute, 5*time.Millisecond)
	require.NoError(t, w1.cmd.Process.Signal(syscall.SIGKILL))
	_, _ = w1.cmd.Process.Wait()
	w.sb.ExpireCursors()
	killedAfter := w.sb.ExportCalls() - exportsBefore
	w2 := startWorker(t, redisURL, w.campaign)
	require.Eventually(t, func() bool { return statusOf(t, redisURL, "all-of-it").Complete }, 4*time.Minute, 200*time.Millisecond)
	s = statusOf(t, redisURL, "all-of-it")
	rest := int64(760 - wantSMS - wantEmail)
	require.Equal(t, rest, s.Total, "every other scheduled message, counted once")
	require.Equal(t, rest, s.Cancelled)
	require.Equal(t, int64(1), s.SweepsDone)
	require.Zero(t, s.SweepsFailed)
	for _, a := range w.added {
		st, cancels, _ := w.sb.MessageStatus(a.CancelID)
		if a.Scheduled {
			require.Equal(t, sandbox.StatusCancelled, st, "no gap: %+v", a)
			require.Equal(t, 1, cancels, "no duplicate: %+v", a)
		} else {
			require.Zero(t, cancels, "a sent message is never cancelled")
		}
	}
	for _, id := range w.bScheduled {
		st, _, _ := w.sb.MessageStatus(id)
		require.Equal(t, sandbox.StatusScheduled, st, "location B is untouched")
	}
	t.Logf("location sweep: killed after %d export pages; all %d cancelled once after a new worker resumed it (%d pages in all, %d messages read, cursor restarts included)",
		killedAfter, rest, s.SweepPages, s.SweepSeen)

	// 3. Verified outcomes: 20 sent ids and 10 unknown ids, cancelled by id.
	var b strings.Builder
	b.WriteString("message_id,location_id,kind,campaign_id\n")
	sent := 0
	for _, a := range w.added {
		if !a.Scheduled && !a.Email && sent < 20 {
			fmt.Fprintf(&b, "%s,%s,message,verify\n", a.CancelID, w.a)
			sent++
		}
	}
	for range 10 {
		fmt.Fprintf(&b, "%s,%s,message,verify\n", sandbox.NewID(), w.a)
	}
	file := filepath.Join(t.TempDir(), "verify.csv")
	require.NoError(t, os.WriteFile(file, []byte(b.String()), 0o600))
	enqueueCLI(t, redisURL, "--file", file)
	require.Eventually(t, func() bool { return statusOf(t, redisURL, "verify").Complete }, time.Minute, 100*time.Millisecond)
	s = statusOf(t, redisURL, "verify")
	require.Equal(t, int64(20), s.AlreadySent)
	require.Equal(t, int64(10), s.NotFound)
	require.Zero(t, s.NotCancellable+s.Cancelled)
	rows, err := csv.NewReader(bytes.NewReader([]byte(enqueueCLI(t, redisURL, "report", "verify")))).ReadAll()
	require.NoError(t, err)
	byOutcome := map[string]int{}
	for _, r := range rows[1:] {
		byOutcome[r[2]]++
		if r[2] == "already_sent" {
			require.Equal(t, "sent", r[3], "the status read back is the reason")
		}
	}
	require.Equal(t, map[string]int{"already_sent": 20, "not_found": 10}, byOutcome)
	scrape, err := promtest.Get("http://" + w2.metricsAddr + "/metrics")
	require.NoError(t, err)
	require.Equal(t, 20.0, scrape.Sum("ghlcancel_tasks_processed_total", "outcome", "already_sent"))
	require.Equal(t, 10.0, scrape.Sum("ghlcancel_tasks_processed_total", "outcome", "not_found"))
	resp, err := http.Get("http://" + w2.metricsAddr + "/readyz")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
}
