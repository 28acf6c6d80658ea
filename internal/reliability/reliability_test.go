// Package reliability holds tests that would fail if a single cancel were
// lost or a single token leaked: the real worker binary as a subprocess,
// killed with SIGKILL mid-campaign; Redis (with AOF) killed and restarted
// mid-campaign; and a scan of everything ghlcancel writes for token values.
package reliability

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	campaigns "github.com/ghlcancel/ghlcancel/internal/campaign"
	"github.com/ghlcancel/ghlcancel/internal/deadletter"
	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/producer"
	"github.com/ghlcancel/ghlcancel/internal/redisconn"
	"github.com/ghlcancel/ghlcancel/internal/redistest"
	"github.com/ghlcancel/ghlcancel/internal/sandbox"
	"github.com/ghlcancel/ghlcancel/internal/syncbuf"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
)

var workerBin, enqueueBin, intakeBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ghlcancel-reliability-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	workerBin, enqueueBin, intakeBin = filepath.Join(dir, "worker"), filepath.Join(dir, "enqueue"), filepath.Join(dir, "intake")
	build := exec.Command("go", "build", "-o", dir, "github.com/ghlcancel/ghlcancel/cmd/worker", "github.com/ghlcancel/ghlcancel/cmd/enqueue",
		"github.com/ghlcancel/ghlcancel/cmd/intake")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build worker, enqueue and intake:", err)
		os.Exit(2)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// campaign is a sandbox with scheduled messages and a tokens file.
type campaign struct {
	sb        *sandbox.Server
	api       *httptest.Server
	items     []producer.Item
	scheduled []string
	tokens    map[string]string
	tokenFile string
}

func newCampaign(t *testing.T, locations, perLocation int, faults sandbox.Faults) *campaign {
	t.Helper()
	sb := sandbox.New(sandbox.Config{RateMax: -1, DailyLimit: 1 << 30, Faults: faults})
	api := httptest.NewServer(sb.Handler())
	t.Cleanup(api.Close)
	c := &campaign{sb: sb, api: api, tokens: map[string]string{}}
	byLoc := make([][]string, locations)
	locs := make([]string, locations)
	for i := range locations {
		locs[i] = fmt.Sprintf("relLocation%09d", i)
		tok := fmt.Sprintf("SECRET-pit-%d-%s", i, sandbox.NewID())
		sb.AddLocation(locs[i], tok)
		c.tokens[locs[i]] = tok
		byLoc[i] = sb.ScheduleN(locs[i], perLocation, i%2 == 1)
	}
	for j := range perLocation {
		for i, loc := range locs {
			kind := ghl.KindMessage
			if i%2 == 1 {
				kind = ghl.KindEmail
			}
			c.items = append(c.items, producer.Item{Kind: kind, MessageID: byLoc[i][j], LocationID: loc, CampaignID: "reliability"})
			c.scheduled = append(c.scheduled, byLoc[i][j])
		}
	}
	b, err := json.Marshal(c.tokens)
	require.NoError(t, err)
	c.tokenFile = filepath.Join(t.TempDir(), "tokens.json")
	require.NoError(t, os.WriteFile(c.tokenFile, b, 0o600))
	return c
}

func (c *campaign) enqueue(t *testing.T, redisURL string) {
	t.Helper()
	p := producer.New(redistest.ClientFor(t, redisURL), producer.Config{Queue: tasks.QueueBulk})
	i := 0
	var mu sync.Mutex
	counts := map[producer.Status]int{}
	p.EnqueueAll(context.Background(), func() (producer.Item, bool) {
		if i == len(c.items) {
			return producer.Item{}, false
		}
		i++
		return c.items[i-1], true
	}, func(_ producer.Item, r producer.Result) { mu.Lock(); counts[r.Status]++; mu.Unlock() })
	require.Equal(t, len(c.items), counts[producer.Enqueued])
}

func (c *campaign) cancelled() int {
	n := 0
	for _, id := range c.scheduled {
		if st, _, _ := c.sb.MessageStatus(id); st == sandbox.StatusCancelled {
			n++
		}
	}
	return n
}

// workerProc is the real worker binary.
type workerProc struct {
	cmd         *exec.Cmd
	metricsAddr string
	logs        *syncbuf.Buffer
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().String()
}

func startWorker(t *testing.T, redisURL string, c *campaign, extraEnv ...string) *workerProc {
	t.Helper()
	w := &workerProc{metricsAddr: freeAddr(t), logs: &syncbuf.Buffer{}}
	w.cmd = exec.Command(workerBin)
	w.cmd.Env = append([]string{
		"PATH=" + os.Getenv("PATH"), "REDIS_URL=" + redisURL, "GHL_BASE_URL=" + c.api.URL,
		"GHL_TOKENS_FILE=" + c.tokenFile, "WORKER_CONCURRENCY=50", "METRICS_ADDR=" + w.metricsAddr,
		"RATE_LIMIT=off", "LOG_FORMAT=json", "LOG_LEVEL=debug", "SHUTDOWN_TIMEOUT=10s",
	}, extraEnv...)
	startAndWait(t, w.cmd, w.logs, w.metricsAddr)
	return w
}

// startAndWait starts a binary (its stderr into logs; killed with the test
// and at cleanup) and waits until addr's /healthz answers 200.
func startAndWait(t *testing.T, cmd *exec.Cmd, logs *syncbuf.Buffer, addr string) {
	t.Helper()
	cmd.Stdout = io.Discard
	cmd.Stderr = logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_, _ = cmd.Process.Wait()
	})
	require.Eventually(t, func() bool {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}, 20*time.Second, 50*time.Millisecond, "%s did not start: %s", filepath.Base(cmd.Path), logs.String())
}

func (w *workerProc) status(path string) int {
	resp, err := http.Get("http://" + w.metricsAddr + path)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestWorkerKilledMidCampaign: SIGKILL the worker while cancels are in
// flight, start another: every scheduled message ends cancelled, nothing is
// dead-lettered, nothing stays queued, and no message is recorded with a
// wrong outcome. A call the killed worker sent whose answer it never
// recorded is answered "not found" when re-delivered; its "call sent" mark
// (left right before the call) makes that "cancelled by an earlier
// attempt", never not_cancellable. The latency variant keeps many calls in
// flight at the kill (every one of them is such a case). Reports the
// recovery time (asynq re-delivers a killed worker's tasks once their lease
// expires).
func TestWorkerKilledMidCampaign(t *testing.T) {
	t.Parallel()
	for _, sc := range []struct {
		name                   string
		locations, perLocation int
		latency                time.Duration
		concurrency            string
		killAt                 int
	}{
		{"5ms latency, 50 in flight", 10, 1000, 5 * time.Millisecond, "50", 3000},
		{"20ms latency, 200 in flight", 10, 200, 20 * time.Millisecond, "200", 600},
	} {
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel()
			srv, err := redistest.Start("--appendonly", "yes")
			require.NoError(t, err)
			t.Cleanup(srv.Stop)
			redisURL := "redis://" + srv.Addr + "/0"
			c := newCampaign(t, sc.locations, sc.perLocation, sandbox.Faults{Latency: sc.latency})
			c.enqueue(t, redisURL)

			w1 := startWorker(t, redisURL, c, "WORKER_CONCURRENCY="+sc.concurrency)
			require.Eventually(t, func() bool { return c.cancelled() >= sc.killAt }, 60*time.Second, time.Millisecond)
			require.NoError(t, w1.cmd.Process.Signal(syscall.SIGKILL))
			_, _ = w1.cmd.Process.Wait()
			killedAt, atKill := time.Now(), c.cancelled()

			startWorker(t, redisURL, c, "WORKER_CONCURRENCY="+sc.concurrency)
			require.Eventually(t, func() bool { return c.cancelled() == len(c.scheduled) }, 4*time.Minute, 100*time.Millisecond,
				"%d of %d cancelled", c.cancelled(), len(c.scheduled))
			recovery := time.Since(killedAt)

			rdb := redistest.ClientFor(t, redisURL)
			ctx := context.Background()
			require.Eventually(t, func() bool { return queued(ctx, rdb) == 0 }, 2*time.Minute, 100*time.Millisecond)
			dead, err := deadletter.New(rdb).Count(ctx)
			require.NoError(t, err)
			require.Zero(t, dead)
			// Campaign counters are exact and true: every message counted
			// once, and recorded cancelled (HighLevel cancelled every one).
			n := int64(len(c.scheduled))
			cs, ok, err := campaigns.New(rdb, 0).Get(ctx, "reliability")
			require.NoError(t, err)
			require.True(t, ok)
			require.Equal(t, n, cs.Total)
			require.Equal(t, n, cs.Done)
			wrong := cs.NotCancellable + cs.NotFound + cs.AlreadySent + cs.Expired + cs.DeadLettered
			require.Zero(t, wrong, "messages HighLevel cancelled but recorded otherwise: %s", cs)
			require.Equal(t, n, cs.Cancelled)
			require.True(t, cs.Complete)
			st := c.sb.Stats()
			t.Logf("killed at %d/%d cancelled; all %d cancelled %.0fs after the kill; wrong outcomes: %d; cancels proven by the killed worker's calls: %d; duplicate calls (answered not found): %d; API calls: %d",
				atKill, n, n, recovery.Seconds(), wrong, cs.CancelledEarlier, st.NotCancellable, st.Requests)
		})
	}
}

// TestRedisRestartMidCampaign: Redis (AOF, fsync always) is killed with
// SIGKILL mid-campaign and restarted; the worker reconnects by itself,
// /readyz says not ready meanwhile, and every message ends cancelled.
func TestRedisRestartMidCampaign(t *testing.T) {
	t.Parallel()
	srv, err := redistest.Start("--appendonly", "yes", "--appendfsync", "always")
	require.NoError(t, err)
	t.Cleanup(srv.Stop)
	redisURL := "redis://" + srv.Addr + "/0"
	c := newCampaign(t, 5, 600, sandbox.Faults{Latency: 20 * time.Millisecond})
	c.enqueue(t, redisURL)

	w := startWorker(t, redisURL, c)
	require.Eventually(t, func() bool { return c.cancelled() >= 600 }, 60*time.Second, 10*time.Millisecond)
	srv.Kill()
	require.Eventually(t, func() bool { return w.status("/readyz") == http.StatusServiceUnavailable }, 10*time.Second, 50*time.Millisecond)
	require.Equal(t, http.StatusOK, w.status("/healthz"))
	time.Sleep(2 * time.Second)
	require.NoError(t, srv.Restart())
	restartedAt := time.Now()
	require.Eventually(t, func() bool { return w.status("/readyz") == http.StatusOK }, 30*time.Second, 50*time.Millisecond)
	ready := time.Since(restartedAt)

	require.Eventually(t, func() bool { return c.cancelled() == len(c.scheduled) }, 4*time.Minute, 100*time.Millisecond,
		"%d of %d cancelled; worker log tail: %s", c.cancelled(), len(c.scheduled), tail(w.logs.String(), 1500))
	dead, err := deadletter.New(redistest.ClientFor(t, redisURL)).Count(context.Background())
	require.NoError(t, err)
	require.Zero(t, dead)
	t.Logf("all %d cancelled after a Redis restart (down 2 s); worker ready again %.1fs after the restart, all cancelled %.1fs after it; API calls %d, duplicates %d",
		len(c.scheduled), ready.Seconds(), time.Since(restartedAt).Seconds(), c.sb.Stats().Requests, c.sb.Stats().NotCancellable)
}

// TestSentinelFailoverMidCampaign: the worker and the producer run with a
// Sentinel URL (one master, one replica, three sentinels); the master is
// killed with SIGKILL mid-campaign, the sentinels promote the replica, and
// the worker follows by itself: every message ends cancelled, nothing is
// dead-lettered, nothing stays queued, the campaign's counters are whole.
// Replication is asynchronous, so writes of the last moment before the
// crash can be lost; for a cancel that means doing it again (a duplicate
// call answered not_cancellable), never not doing it, which this checks.
func TestSentinelFailoverMidCampaign(t *testing.T) {
	t.Parallel()
	topo, err := redistest.StartSentinel()
	require.NoError(t, err)
	t.Cleanup(topo.Stop)
	redisURL := topo.URL()
	rdb, _, err := redisconn.Open(redisURL, 16)
	require.NoError(t, err)
	t.Cleanup(func() { _ = rdb.Close() })
	ctx := context.Background()

	c := newCampaign(t, 5, 600, sandbox.Faults{Latency: 20 * time.Millisecond})
	p := producer.New(rdb, producer.Config{Queue: tasks.QueueBulk})
	for _, r := range p.EnqueueBatch(ctx, c.items) {
		require.Equal(t, producer.Enqueued, r.Status, r.Err)
	}
	// Everything enqueued has reached the replica before the crash.
	require.NoError(t, rdb.Do(ctx, "WAIT", 1, 5000).Err())

	w := startWorker(t, redisURL, c)
	require.Eventually(t, func() bool { return c.cancelled() >= 600 }, 60*time.Second, 10*time.Millisecond)
	oldMaster := topo.CurrentMaster()
	topo.Master.Kill()
	killedAt, atKill := time.Now(), c.cancelled()
	require.Eventually(t, func() bool { m := topo.CurrentMaster(); return m != "" && m != oldMaster }, 30*time.Second, 100*time.Millisecond,
		"the sentinels did not fail over")
	failedOver := time.Since(killedAt)

	require.Eventually(t, func() bool { return c.cancelled() == len(c.scheduled) }, 4*time.Minute, 100*time.Millisecond,
		"%d of %d cancelled; worker log tail: %s", c.cancelled(), len(c.scheduled), tail(w.logs.String(), 1500))
	recovery := time.Since(killedAt)
	require.Eventually(t, func() bool { return queued(ctx, rdb) == 0 }, 2*time.Minute, 100*time.Millisecond,
		"tasks left queued after the failover")
	drained := time.Since(killedAt)
	dead, err := deadletter.New(rdb).Count(ctx)
	require.NoError(t, err)
	require.Zero(t, dead)
	cs, ok, err := campaigns.New(rdb, 0).Get(ctx, "reliability")
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, int64(len(c.scheduled)), cs.Total)
	require.Equal(t, cs.Total, cs.Done)
	require.Equal(t, http.StatusOK, w.status("/readyz"))
	st := c.sb.Stats()
	t.Logf("master killed at %d/%d cancelled; sentinels promoted the replica after %.1fs; all cancelled %.1fs after the kill; queues empty after %.0fs (tasks whose ack was lost with the old master come back when their asynq lease expires); API calls %d, duplicates (answered not found) %d; campaign: %s",
		atKill, len(c.scheduled), failedOver.Seconds(), recovery.Seconds(), drained.Seconds(), st.Requests, st.NotCancellable, cs)
}

// TestNoTokenLeaks runs a campaign with known token values, some of them
// rejected by the API (dead letters), with faults, then scans every Redis
// key and value, all worker log output and /metrics for them.
func TestNoTokenLeaks(t *testing.T) {
	t.Parallel()
	srv, err := redistest.Start()
	require.NoError(t, err)
	t.Cleanup(srv.Stop)
	redisURL := "redis://" + srv.Addr + "/0"
	c := newCampaign(t, 4, 100, sandbox.Faults{ErrorRate: 0.2, ResetRate: 0.05})
	// One location's token is revoked at HighLevel: its tasks dead-letter.
	const revoked = "relLocationRevoked01"
	c.sb.AddLocation(revoked, "what-highlevel-expects")
	c.tokens[revoked] = "SECRET-revoked-token-0001"
	for _, id := range c.sb.ScheduleN(revoked, 20, false) {
		c.items = append(c.items, producer.Item{Kind: ghl.KindMessage, MessageID: id, LocationID: revoked, CampaignID: "reliability"})
	}
	b, _ := json.Marshal(c.tokens)
	require.NoError(t, os.WriteFile(c.tokenFile, b, 0o600))
	c.enqueue(t, redisURL)
	w := startWorker(t, redisURL, c)
	require.Eventually(t, func() bool { return c.cancelled() == len(c.scheduled) }, 2*time.Minute, 50*time.Millisecond)
	rdb := redistest.ClientFor(t, redisURL)
	ctx := context.Background()
	require.Eventually(t, func() bool { n, _ := deadletter.New(rdb).Count(ctx); return n == 20 }, time.Minute, 50*time.Millisecond)

	logs := w.logs.String()
	require.Contains(t, logs, "dead letter", "the logs are what we think they are")
	text := everythingVisible(t, rdb, []string{"reliability"}, []string{w.metricsAddr}, logs)
	require.Equal(t, len(c.items), strings.Count(text, "\nreport-row:"))
	for loc, tok := range c.tokens {
		require.NotContains(t, text, tok, "token of %s leaked", loc)
	}
	require.NotContains(t, text, "SECRET")
}

// everythingVisible is everything a token could leak into: every Redis key
// and value (raw dumps and readable forms), the campaigns' reports as
// operators read them, the dead letters, the metrics pages and the logs.
func everythingVisible(t *testing.T, rdb redis.UniversalClient, campaignIDs, metricsAddrs []string, logs string) string {
	t.Helper()
	ctx := context.Background()
	var everything strings.Builder
	iter := rdb.Scan(ctx, 0, "*", 1000).Iterator()
	for iter.Next(ctx) {
		k := iter.Val()
		everything.WriteString(k + "\n")
		dump, err := rdb.Dump(ctx, k).Result()
		require.NoError(t, err)
		everything.WriteString(dump + "\n")
		switch rdb.Type(ctx, k).Val() {
		case "hash":
			for f, v := range rdb.HGetAll(ctx, k).Val() {
				everything.WriteString(f + "=" + v + "\n")
			}
		case "list":
			everything.WriteString(strings.Join(rdb.LRange(ctx, k, 0, -1).Val(), "\n"))
		case "zset":
			everything.WriteString(strings.Join(rdb.ZRange(ctx, k, 0, -1).Val(), "\n"))
		case "string":
			everything.WriteString(rdb.Get(ctx, k).Val())
		}
	}
	require.NoError(t, iter.Err())
	for _, id := range campaignIDs {
		var report strings.Builder
		_, err := campaigns.New(rdb, 0).WriteReport(ctx, id, &report)
		require.NoError(t, err)
		for _, line := range strings.Split(strings.TrimSpace(report.String()), "\n")[1:] {
			everything.WriteString("\nreport-row:" + line)
		}
	}
	require.NoError(t, deadletter.New(rdb).Scan(ctx, deadletter.Filter{}, func(r deadletter.Record) error {
		b, _ := json.Marshal(r)
		everything.Write(b)
		return nil
	}))
	for _, addr := range metricsAddrs {
		resp, err := http.Get("http://" + addr + "/metrics")
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		everything.Write(body)
	}
	everything.WriteString(logs)
	text := everything.String()
	require.Greater(t, len(text), 10_000)
	return text
}

// queued counts tasks not yet finished on every lane: pending, active,
// scheduled and retrying.
// queued counts the tasks still in asynq's queues, in one MULTI/EXEC: read
// one key at a time, a task the forwarder moves from retry to pending
// between the two reads is in neither, and the queue looks empty while it
// still holds work (the killed worker's re-delivered tasks sit in retry
// until the forwarder moves them).
func queued(ctx context.Context, rdb redis.Cmdable) int64 {
	var counts []*redis.IntCmd
	_, err := rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		for _, q := range tasks.Queues {
			for _, st := range []string{"pending", "active"} {
				counts = append(counts, p.LLen(ctx, "asynq:{"+q+"}:"+st))
			}
			for _, st := range []string{"scheduled", "retry"} {
				counts = append(counts, p.ZCard(ctx, "asynq:{"+q+"}:"+st))
			}
		}
		return nil
	})
	if err != nil {
		return -1
	}
	n := int64(0)
	for _, c := range counts {
		n += c.Val()
	}
	return n
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
