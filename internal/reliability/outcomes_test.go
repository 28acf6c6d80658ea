package reliability

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	campaigns "github.com/ghlcancel/ghlcancel/internal/campaign"
	"github.com/ghlcancel/ghlcancel/internal/deadletter"
	"github.com/ghlcancel/ghlcancel/internal/redistest"
	"github.com/ghlcancel/ghlcancel/internal/sandbox"
)

// The ordinary paths users take twice, on the real worker and enqueue
// binaries, a real Redis and the sandbox: each of them once reported
// something false.

// writeCSV writes the campaign's items as the CSV file a user would send.
func (c *campaign) writeCSV(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	w := csv.NewWriter(&b)
	_ = w.Write([]string{"message_id", "location_id", "kind", "campaign_id"})
	for _, it := range c.items {
		_ = w.Write([]string{it.MessageID, it.LocationID, string(it.Kind), it.CampaignID})
	}
	w.Flush()
	path := filepath.Join(t.TempDir(), "campaign.csv")
	require.NoError(t, os.WriteFile(path, []byte(b.String()), 0o600))
	return path
}

// enqueueCLI runs the enqueue binary and returns its stdout.
func enqueueCLI(t *testing.T, redisURL string, args ...string) string {
	t.Helper()
	cmd := exec.Command(enqueueBin, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "REDIS_URL=" + redisURL}
	var out, errw strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errw
	require.NoError(t, cmd.Run(), "enqueue %v: %s", args, errw.String())
	return out.String()
}

func status(t *testing.T, redisURL string) campaigns.Status {
	t.Helper()
	var s campaigns.Status
	require.NoError(t, json.Unmarshal([]byte(enqueueCLI(t, redisURL, "status", "reliability", "--json")), &s))
	return s
}

// TestResendAfterFixingTheToken: a location's token is wrong, its cancels
// are dead-lettered unauthorized; the token is fixed and the same file is
// sent again with enqueue --file. The dead-lettered ids are requeued (not
// "already queued"), HighLevel is called, the messages are cancelled, the
// campaign's total does not move and it completes.
func TestResendAfterFixingTheToken(t *testing.T) {
	t.Parallel()
	srv, err := redistest.Start()
	require.NoError(t, err)
	t.Cleanup(srv.Stop)
	redisURL := "redis://" + srv.Addr + "/0"
	c := newCampaign(t, 3, 100, sandbox.Faults{})
	// The second location's token in the file is wrong.
	broken := c.items[1].LocationID
	good := c.tokens[broken]
	c.tokens[broken] = "SECRET-typo-in-the-token"
	b, _ := json.Marshal(c.tokens)
	require.NoError(t, os.WriteFile(c.tokenFile, b, 0o600))
	file := c.writeCSV(t)

	startWorker(t, redisURL, c)
	require.Contains(t, enqueueCLI(t, redisURL, "--file", file), "enqueued 300, requeued 0, already queued 0, already done 0")
	require.Eventually(t, func() bool { return status(t, redisURL).Complete }, time.Minute, 100*time.Millisecond)
	s := status(t, redisURL)
	require.Equal(t, int64(200), s.Cancelled)
	require.Equal(t, map[string]int64{"unauthorized": 100}, s.DeadByReason)

	// Fix the token (the file is reloaded within 2 s) and send the file again.
	c.tokens[broken] = good
	b, _ = json.Marshal(c.tokens)
	require.NoError(t, os.WriteFile(c.tokenFile, b, 0o600))
	time.Sleep(2500 * time.Millisecond)
	out := enqueueCLI(t, redisURL, "--file", file)
	require.Contains(t, out, "enqueued 0, requeued 100, already queued 0, already done 200", "the resend revives the dead letters and does not call again for the rest")
	require.Eventually(t, func() bool { return c.cancelled() == len(c.scheduled) }, time.Minute, 100*time.Millisecond,
		"%d of %d cancelled after the resend", c.cancelled(), len(c.scheduled))
	require.Eventually(t, func() bool { return status(t, redisURL).Complete }, time.Minute, 100*time.Millisecond)
	s = status(t, redisURL)
	require.Equal(t, int64(300), s.Total, "a resend does not grow the campaign")
	require.Equal(t, int64(300), s.Cancelled)
	require.Zero(t, s.DeadLettered)
	n, err := deadletter.New(redistest.ClientFor(t, redisURL)).Count(context.Background())
	require.NoError(t, err)
	require.Zero(t, n, "the dead letters are gone once requeued")
	require.Equal(t, int64(300), c.sb.Stats().Cancelled, "every message cancelled exactly once")
}

// TestRerunFinishedFile: re-running a finished campaign's file (the README
// calls it safe) queues nothing, calls HighLevel for nothing, keeps the
// total, and the campaign stays complete. --force does call again.
func TestRerunFinishedFile(t *testing.T) {
	t.Parallel()
	srv, err := redistest.Start()
	require.NoError(t, err)
	t.Cleanup(srv.Stop)
	redisURL := "redis://" + srv.Addr + "/0"
	c := newCampaign(t, 2, 150, sandbox.Faults{})
	file := c.writeCSV(t)
	startWorker(t, redisURL, c)
	enqueueCLI(t, redisURL, "--file", file)
	require.Eventually(t, func() bool { return status(t, redisURL).Complete }, time.Minute, 100*time.Millisecond)
	calls := c.sb.Stats().Requests

	for range 2 {
		require.Contains(t, enqueueCLI(t, redisURL, "--file", file), "enqueued 0, requeued 0, already queued 0, already done 300")
	}
	time.Sleep(time.Second)
	s := status(t, redisURL)
	require.Equal(t, int64(300), s.Total)
	require.Equal(t, int64(300), s.Cancelled)
	require.True(t, s.Complete, "a finished campaign stays complete")
	require.Equal(t, calls, c.sb.Stats().Requests, "nothing was called again")

	// --force: HighLevel is asked again (it answers not found: the messages
	// were cancelled; reading them back, they are not scheduled any more).
	require.Contains(t, enqueueCLI(t, redisURL, "--file", file, "--force"), "enqueued 0, requeued 300")
	require.Eventually(t, func() bool { return status(t, redisURL).Complete }, time.Minute, 100*time.Millisecond)
	s = status(t, redisURL)
	require.Equal(t, int64(300), s.Total)
	require.Greater(t, c.sb.Stats().Requests, calls)
	// Still true after the forced re-check: they were cancelled (by the
	// first run), not "already sent".
	require.Equal(t, int64(300), s.Cancelled)
	require.Zero(t, s.AlreadySent+s.NotFound+s.NotCancellable)
}

// TestWrongBasePathIsNotAnOutcome: GHL_BASE_URL with a wrong path prefix
// makes every call a route-level 404. None of them may be recorded as a
// message-level outcome: zero not_cancellable, nothing complete; /readyz
// says why; the worker says GHL_BASE_URL once. With the URL fixed, every
// message is cancelled.
func TestWrongBasePathIsNotAnOutcome(t *testing.T) {
	t.Parallel()
	srv, err := redistest.Start()
	require.NoError(t, err)
	t.Cleanup(srv.Stop)
	redisURL := "redis://" + srv.Addr + "/0"
	c := newCampaign(t, 2, 50, sandbox.Faults{})
	enqueueCLI(t, redisURL, "--file", c.writeCSV(t))
	w := startWorker(t, redisURL, c, "GHL_BASE_URL="+c.api.URL+"/v1")
	require.Eventually(t, func() bool { return w.status("/readyz") == http.StatusServiceUnavailable }, 30*time.Second, 100*time.Millisecond,
		"worker log: %s", tail(w.logs.String(), 2000))
	resp, err := http.Get("http://" + w.metricsAddr + "/readyz")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Contains(t, string(body), "GHL_BASE_URL")
	time.Sleep(3 * time.Second) // more calls, all misrouted
	s := status(t, redisURL)
	require.Zero(t, s.Done, "a misrouted answer is not an outcome: %+v", s)
	require.False(t, s.Complete)
	errorsNamingURL := 0
	for _, line := range strings.Split(w.logs.String(), "\n") {
		if strings.Contains(line, `"level":"ERROR"`) && strings.Contains(line, "GHL_BASE_URL") {
			errorsNamingURL++
		}
	}
	require.Equal(t, 1, errorsNamingURL, "one clear error, not one per task")
	require.Zero(t, c.cancelled())

	// Fix the configuration (restart with the right URL): every message is cancelled.
	require.NoError(t, w.cmd.Process.Signal(syscall.SIGTERM))
	_, _ = w.cmd.Process.Wait()
	startWorker(t, redisURL, c)
	require.Eventually(t, func() bool { return c.cancelled() == len(c.scheduled) }, 3*time.Minute, 200*time.Millisecond,
		"%d of %d cancelled", c.cancelled(), len(c.scheduled))
	require.Eventually(t, func() bool { return status(t, redisURL).Complete }, time.Minute, 100*time.Millisecond)
	s = status(t, redisURL)
	require.Equal(t, int64(100), s.Cancelled)
	require.Zero(t, s.NotCancellable+s.NotFound)
}
