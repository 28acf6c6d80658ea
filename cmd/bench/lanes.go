package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/producer"
	"github.com/ghlcancel/ghlcancel/internal/sandbox"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
)

// lanesBench measures enqueue-to-API-call latency of urgent cancels while a
// large bulk campaign drains through the same worker.
func lanesBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("lanes", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bulk := fs.Int("bulk", 100000, "bulk tasks draining")
	urgentN := fs.Int("urgent", 200, "urgent cancels, one every 50 ms")
	sameLoc := fs.Bool("same-location", false, "urgent cancels for the bulk campaign's own locations (queued behind their bulk backlog)")
	reserve := fs.Int("urgent-reserve", 0, "the worker's RATE_LIMIT_URGENT_RESERVE")
	after := fs.Int("urgent-after", 2000, "bulk cancels done before the urgent ones start (30000: after every location's first window, the steady state)")
	rounds := fs.Int("rounds", 3, "rounds; medians and ranges are reported")
	if err := fs.Parse(args); err != nil {
		return err
	}
	env, err := newBenchEnv("")
	if err != nil {
		return err
	}
	defer env.close()
	fmt.Fprintf(stdout, "lanes benchmark: %d bulk tasks over 200 locations (sandbox 100 per 10s each, 5 ms latency), %d urgent cancels for other locations, 1 worker (concurrency 200)\n", *bulk, *urgentN)
	if *sameLoc {
		fmt.Fprintln(stdout, "  urgent cancels go to the bulk campaign's own locations")
	}
	fmt.Fprintf(stdout, "  urgent cancels start after %d bulk cancels; RATE_LIMIT_URGENT_RESERVE=%d\n", *after, *reserve)
	var p50, p99, worst []float64
	for r := 1; r <= *rounds; r++ {
		lat, err := runLanes(ctx, env, *bulk, *urgentN, *sameLoc, *reserve, *after, stdout)
		if err != nil {
			return err
		}
		slices.Sort(lat)
		q := func(q float64) float64 {
			return float64(lat[min(len(lat)-1, int(q*float64(len(lat))))].Microseconds()) / 1000
		}
		p50, p99, worst = append(p50, q(0.50)), append(p99, q(0.99)), append(worst, q(1))
		fmt.Fprintf(stdout, "  round %d  urgent latency (enqueue to API call) p50 %.0f ms, p99 %.0f ms, max %.0f ms\n", r, q(0.50), q(0.99), q(1))
	}
	fmt.Fprintf(stdout, "\nresult: urgent latency, median [min-max] of %d rounds: p50 %s ms, p99 %s ms (target p99 <= 250 ms: %s), max %s ms\n",
		*rounds, fmtStat(p50, "%.0f"), fmtStat(p99, "%.0f"), verdict(median(p99) <= 250), fmtStat(worst, "%.0f"))
	return nil
}

func runLanes(ctx context.Context, env *benchEnv, bulkN, urgentN int, sameLoc bool, reserve, after int, stdout io.Writer) ([]time.Duration, error) {
	if err := env.rdb.FlushDB(ctx).Err(); err != nil {
		return nil, err
	}
	sb := sandbox.New(sandbox.Config{Faults: sandbox.Faults{Latency: 5 * time.Millisecond}})
	apiURL, stopAPI, err := serveSandbox(sb)
	if err != nil {
		return nil, err
	}
	defer stopAPI()
	toks := map[string]string{}
	var bulkItems []producer.Item
	for i := range 200 {
		loc := fmt.Sprintf("bulkLoc%013d", i)
		toks[loc] = "tok-" + loc
		sb.AddLocation(loc, toks[loc])
		for _, id := range sb.ScheduleN(loc, bulkN/200, false) {
			bulkItems = append(bulkItems, producer.Item{Kind: ghl.KindMessage, MessageID: id, LocationID: loc, CampaignID: "bulk"})
		}
	}
	type urgentMsg struct{ loc, id string }
	urgents := make([]urgentMsg, urgentN)
	for i := range urgents {
		loc := fmt.Sprintf("urgentLoc%011d", i)
		if sameLoc {
			loc = fmt.Sprintf("bulkLoc%013d", i%200)
		} else {
			toks[loc] = "tok-" + loc
			sb.AddLocation(loc, toks[loc])
		}
		urgents[i] = urgentMsg{loc, sb.ScheduleN(loc, 1, false)[0]}
	}
	tokPath, err := env.writeTokens(toks)
	if err != nil {
		return nil, err
	}
	p := producer.New(env.rdb, producer.Config{Queue: tasks.QueueBulk})
	i := 0
	p.EnqueueAll(ctx, func() (producer.Item, bool) {
		if i == len(bulkItems) {
			return producer.Item{}, false
		}
		i++
		return bulkItems[i-1], true
	}, func(producer.Item, producer.Result) {})

	cmd := env.child(ctx, "_worker", "-redis-url", env.redisURL, "-concurrency", "200",
		"-api", apiURL, "-tokens-file", tokPath, "-urgent-reserve", strconv.Itoa(reserve))
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	defer func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() }()
	// Let the bulk drain get going, then send urgent cancels one by one.
	if after >= bulkN {
		return nil, fmt.Errorf("-urgent-after %d: want fewer than -bulk %d", after, bulkN)
	}
	for sb.Stats().Cancelled < int64(after) {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		time.Sleep(10 * time.Millisecond)
	}
	sent := make([]time.Time, urgentN)
	for j, u := range urgents {
		sent[j] = time.Now()
		if r := p.Enqueue(ctx, producer.Item{Kind: ghl.KindMessage, MessageID: u.id, LocationID: u.loc, Queue: tasks.QueueUrgent}); r.Status != producer.Enqueued {
			return nil, fmt.Errorf("urgent enqueue: %v", r.Err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	lat := make([]time.Duration, 0, urgentN)
	deadline := time.Now().Add(2 * time.Minute)
	for j, u := range urgents {
		for {
			if at := sb.CancelledAt(u.id); !at.IsZero() {
				lat = append(lat, at.Sub(sent[j]))
				break
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("urgent cancel %d not done after 2 minutes", j)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	fmt.Fprintf(stdout, "  429s during the round: %d\n", sb.Stats().RateLimited)
	if int(sb.Stats().Cancelled) >= bulkN {
		fmt.Fprintln(os.Stderr, "note: the bulk drain finished before the urgent cancels did; raise -bulk")
	}
	return lat, nil
}
