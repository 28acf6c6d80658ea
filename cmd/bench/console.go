package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/ghlcancel/ghlcancel/internal/deadletter"
	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/intake"
	"github.com/ghlcancel/ghlcancel/internal/ledger"
	"github.com/ghlcancel/ghlcancel/internal/producer"
	"github.com/ghlcancel/ghlcancel/internal/ratelimit"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
)

// consoleBench: the console's campaign page under a 100,000-message
// campaign against the same page under a 1,000-message one (the baseline)
// in each round: load time (median and p95 of sequential loads through the
// intake on loopback) and Redis commands per load (INFO commandstats). The
// campaigns are real: enqueued by the producer's script, half of each
// settled by the ledger's script (cancelled, already sent, not found, and
// a quarter of all messages dead letters under three reasons: 25,000 for
// the big one), over 200 and 10 locations, a few of them parked or cooling
// down. The dead-letter page and the purge confirmation are measured too.
func consoleBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench console", flag.ContinueOnError)
	fs.SetOutput(stderr)
	big := fs.Int("messages", 100_000, "messages in the big campaign")
	small := fs.Int("baseline", 1_000, "messages in the baseline campaign")
	loads := fs.Int("loads", 30, "page loads per campaign per round")
	rounds := fs.Int("rounds", 3, "rounds")
	redisURL := fs.String("redis-url", "", "Redis to use (default: a fresh redis-server on a free port; the bench flushes its database)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	env, err := newBenchEnv(*redisURL)
	if err != nil {
		return err
	}
	defer env.close()
	if err := env.rdb.FlushDB(ctx).Err(); err != nil {
		return err
	}
	for _, c := range []struct {
		id        string
		n, locs   int
		parkCount int
	}{{"baseline", *small, 10, 1}, {"big", *big, 200, 3}} {
		start := time.Now()
		if err := seedCampaign(ctx, env.rdb, c.id, c.n, c.locs, c.parkCount); err != nil {
			return fmt.Errorf("seeding %s: %w", c.id, err)
		}
		fmt.Fprintf(stderr, "bench console: campaign %q: %d messages over %d locations, half settled, in %s\n", c.id, c.n, c.locs, time.Since(start).Round(time.Millisecond))
	}
	mem, _ := usedMemory(ctx, env.rdb)
	fmt.Fprintf(stderr, "bench console: Redis holds %.1f MB\n", float64(mem)/1e6)

	const key = "bench-console-key-0123456789"
	srv, err := intake.New(intake.Config{Redis: env.rdb, Keys: []string{key}, Registry: prometheus.NewRegistry()})
	if err != nil {
		return err
	}
	hs := httptest.NewServer(srv)
	defer hs.Close()
	cl, err := consoleSignIn(hs.URL, key)
	if err != nil {
		return err
	}

	type result struct{ med, p95, cmds float64 }
	res := map[string][]result{}
	pages := []struct{ name, path string }{
		{"baseline page", "/console/campaign?id=baseline"}, {"big page", "/console/campaign?id=big"},
		{"baseline live", "/console/campaign/live?id=baseline"}, {"big live", "/console/campaign/live?id=big"},
		// Not polled, and not O(1): the dead-letter page reads the newest
		// 20,000 records at most (its counts by reason); the purge
		// confirmation counts every matching record.
		{"big dead", "/console/dead?campaign=big"},
		{"big purge form", "/console/dead/purge?campaign=big"},
	}
	for r := 1; r <= *rounds; r++ {
		for _, p := range pages {
			lat, cmds, err := loadPage(ctx, cl, env.rdb, hs.URL+p.path, *loads)
			if err != nil {
				return fmt.Errorf("%s: %w", p.name, err)
			}
			slices.Sort(lat)
			ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
			x := result{med: ms(lat[len(lat)/2]), p95: ms(lat[len(lat)*95/100]), cmds: cmds}
			res[p.name] = append(res[p.name], x)
			fmt.Fprintf(stderr, "round %d: %-14s median %.1f ms, p95 %.1f ms, %.1f Redis commands per load\n", r, p.name, x.med, x.p95, x.cmds)
		}
	}
	col := func(name string, f func(result) float64) []float64 {
		var v []float64
		for _, x := range res[name] {
			v = append(v, f(x))
		}
		return v
	}
	fmt.Fprintf(stdout, "console, %d-message campaign vs %d-message baseline (median [min-max] of %d rounds, %d loads each):\n", *big, *small, *rounds, *loads)
	for _, p := range pages {
		fmt.Fprintf(stdout, "  %-14s load median %s ms, p95 %s ms, Redis commands per load %s\n", p.name,
			fmtStat(col(p.name, func(x result) float64 { return x.med }), "%.1f"),
			fmtStat(col(p.name, func(x result) float64 { return x.p95 }), "%.1f"),
			fmtStat(col(p.name, func(x result) float64 { return x.cmds }), "%.1f"))
	}
	bigMed := median(col("big page", func(x result) float64 { return x.med }))
	ratio := bigMed / median(col("baseline page", func(x result) float64 { return x.med }))
	// Equal up to a connection handshake (HELLO, CLIENT SETINFO) in a round.
	same := math.Abs(median(col("big page", func(x result) float64 { return x.cmds }))-median(col("baseline page", func(x result) float64 { return x.cmds }))) < 0.5
	fmt.Fprintf(stdout, "  big/baseline load time: %.2f; page under 300 ms: %s; Redis commands independent of the campaign's size: %s\n",
		ratio, verdict(bigMed < 300), verdict(same))
	return nil
}

// seedCampaign enqueues n cancels for campaign id over locs locations and
// settles every other one through the ledger.
func seedCampaign(ctx context.Context, rdb *redis.Client, id string, n, locs, parked int) error {
	p := producer.New(rdb, producer.Config{})
	items := make([]producer.Item, n)
	for i := range items {
		items[i] = producer.Item{Kind: ghl.KindMessage, MessageID: fmt.Sprintf("%s%08dmsg", id, i), LocationID: fmt.Sprintf("loc%04d%s", i%locs, id),
			CampaignID: id, Queue: tasks.QueueBulk}
	}
	for i := 0; i < n; i += producer.BatchSize {
		for _, r := range p.EnqueueBatch(ctx, items[i:min(i+producer.BatchSize, n)]) {
			if r.Err != nil {
				return r.Err
			}
		}
	}
	led := ledger.New(rdb, ledger.Config{})
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, 32)
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(2)) - 2
				if i >= n {
					return
				}
				it := items[i]
				f := ledger.Final{TaskID: tasks.TaskID(it.Kind, it.MessageID), CampaignID: id, FirstAttempt: true,
					Outcome: ledger.Outcome{Outcome: ledger.Cancelled, HTTPStatus: 200, Attempts: 1}}
				switch {
				case i%4 == 2: // a quarter of all messages: 25,000 dead letters for 100,000
					reason := []string{"unauthorized", "bad_request", "server_error"}[(i/4)%3]
					f.Outcome = ledger.Outcome{Outcome: ledger.DeadLettered, Reason: reason, HTTPStatus: 401, Attempts: 1}
					f.Dead = &deadletter.Record{Kind: "message", MessageID: it.MessageID, LocationID: it.LocationID, CampaignID: id,
						Queue: tasks.QueueBulk, Reason: reason, HTTPStatus: 401, Attempts: 1}
				case i%40 == 4:
					f.Outcome = ledger.Outcome{Outcome: ledger.AlreadySent, Reason: "delivered", HTTPStatus: 404, Attempts: 1}
				case i%40 == 8:
					f.Outcome = ledger.Outcome{Outcome: ledger.NotFound, HTTPStatus: 404, Attempts: 1}
				}
				if _, _, err := led.Settle(ctx, f); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return err
	}
	// A few of its locations parked for the day or cooling down.
	now := time.Now()
	for i := range parked {
		loc := fmt.Sprintf("loc%04d%s", i, id)
		if err := rdb.ZAdd(ctx, ratelimit.KeyParked, redis.Z{Score: float64(now.Add(time.Hour).UnixMilli()), Member: loc}).Err(); err != nil {
			return err
		}
		if err := rdb.HSet(ctx, ratelimit.KeyWhy, loc, "daily budget nearly spent (bench)").Err(); err != nil {
			return err
		}
		if err := rdb.ZAdd(ctx, ratelimit.KeyCooling, redis.Z{Score: float64(now.Add(time.Hour).UnixMilli()), Member: fmt.Sprintf("loc%04d%s", i+parked, id)}).Err(); err != nil {
			return err
		}
	}
	return nil
}

var benchLoginToken = regexp.MustCompile(`name="login_token" value="([0-9a-f]{64})"`)

// consoleSignIn signs a cookie-keeping client in to the console.
func consoleSignIn(base, key string) (*http.Client, error) {
	jar, _ := cookiejar.New(nil)
	cl := &http.Client{Jar: jar, Timeout: 30 * time.Second}
	resp, err := cl.Get(base + "/console/login")
	if err != nil {
		return nil, err
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	m := benchLoginToken.FindSubmatch(b)
	if m == nil {
		return nil, errors.New("console sign-in page has no form token")
	}
	resp, err = cl.PostForm(base+"/console/login", url.Values{"login_token": {string(m[1])}, "key": {key}})
	if err != nil {
		return nil, err
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), "Campaigns") {
		return nil, fmt.Errorf("console sign-in failed: %d", resp.StatusCode)
	}
	return cl, nil
}

// loadPage loads a page n times in a row and returns each load's time and
// the Redis commands per load (INFO's own call excluded).
func loadPage(ctx context.Context, cl *http.Client, rdb *redis.Client, u string, n int) ([]time.Duration, float64, error) {
	_, before, err := redisUsage(ctx, rdb)
	if err != nil {
		return nil, 0, err
	}
	lat := make([]time.Duration, 0, n)
	for range n {
		start := time.Now()
		resp, err := cl.Get(u)
		if err != nil {
			return nil, 0, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, 0, fmt.Errorf("GET %s: %d", u, resp.StatusCode)
		}
		lat = append(lat, time.Since(start))
	}
	_, after, err := redisUsage(ctx, rdb)
	if err != nil {
		return nil, 0, err
	}
	return lat, float64(after-before-1) / float64(n), nil
}
