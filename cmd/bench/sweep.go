package main

import (
	"context"

	"flag"
	"fmt"
	"github.com/hibiken/asynq"
	"io"
	"strconv"
	"syscall"
	"time"

	"github.com/ghlcancel/ghlcancel/internal/campaign"
	"github.com/ghlcancel/ghlcancel/internal/producer"
)

// sweepBench sweeps one location holding -messages messages (-scheduled of
// them still scheduled) in export pages of 500 and cancels what it finds,
// with one worker: pages/s, cancels/s against the location's limit, and
// what it cost Redis (memory, CPU) and the worker (RSS, CPU).
func sweepBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("sweep", flag.ContinueOnError)
	fs.SetOutput(stderr)
	messages := fs.Int("messages", 100000, "messages in the location")
	scheduled := fs.Int("scheduled", 20000, "of which still scheduled")
	rate := fs.Int("rate", 1000, "the location's limit per -rate-interval (sliding window)")
	interval := fs.Duration("rate-interval", time.Second, "the limit's window")
	concurrency := fs.Int("concurrency", 200, "worker concurrency")
	if err := fs.Parse(args); err != nil {
		return err
	}
	env, err := newBenchEnv("")
	if err != nil {
		return err
	}
	defer env.close()
	fmt.Fprintf(stdout, "sweep benchmark: 1 location, %d messages (%d scheduled), sandbox %d per %s (sliding), export pages of 500, 1 worker (concurrency %d)\n",
		*messages, *scheduled, *rate, *interval, *concurrency)
	sb, err := startSandboxChild(ctx, env, 1, 0, "-rate", strconv.Itoa(*rate), "-rate-interval", interval.String(), "-window", "sliding",
		"-sweep-messages", strconv.Itoa(*messages), "-sweep-scheduled", strconv.Itoa(*scheduled), "-daily", strconv.Itoa(1<<30))
	if err != nil {
		return err
	}
	defer sb.stop()
	rdb := env.rdb
	mem0, err := usedMemory(ctx, env.rdb)
	if err != nil {
		return err
	}
	cmd := env.child(ctx, "_worker", "-redis-url", env.redisURL, "-concurrency", strconv.Itoa(*concurrency),
		"-api", sb.url, "-tokens-file", sb.tokens, "-rate-limit", fmt.Sprintf("%d/%s", *rate, *interval))
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() }()
	buf := make([]byte, 6)
	if _, err := io.ReadFull(out, buf); err != nil || string(buf) != "ready\n" {
		return fmt.Errorf("worker did not start")
	}
	go func() { _, _ = io.Copy(io.Discard, out) }()
	r0, _, err := redisUsage(ctx, rdb)
	if err != nil {
		return err
	}
	w0, _ := cpuOf(cmd.Process.Pid)
	start := time.Now()
	st, err := producer.New(rdb, producer.Config{}).Sweep(ctx, producer.SweepRequest{Locations: []string{"benchLocation0000000"}, CampaignID: "bench-sweep"})
	if err != nil {
		return err
	}
	tr := campaign.New(rdb, 0)
	var swept time.Duration
	var peakMem int64
	last := time.Now()
	for {
		s, _, err := tr.Get(ctx, st.CampaignID)
		if err != nil {
			return err
		}
		if m, err := usedMemory(ctx, env.rdb); err == nil && m > peakMem {
			peakMem = m
		}
		if swept == 0 && s.SweepsDone == s.Sweeps && s.Sweeps > 0 {
			swept = time.Since(start)
			fmt.Fprintf(stdout, "  sweep done: %d pages, %d messages read, %d scheduled found in %.1fs (%.1f pages/s)\n",
				s.SweepPages, s.SweepSeen, s.SweepFound, swept.Seconds(), float64(s.SweepPages)/swept.Seconds())
		}
		if s.Complete {
			took := time.Since(start)
			r1, _, _ := redisUsage(ctx, rdb)
			w1, _ := cpuOf(cmd.Process.Pid)
			allowed := float64(*rate) / interval.Seconds()
			cps := float64(s.Cancelled) / took.Seconds()
			fmt.Fprintf(stdout, "  all %d cancelled in %.1fs: %.0f cancels/s, %.2f of the location's %.0f calls/s (export calls share it)\n",
				s.Cancelled, took.Seconds(), cps, (cps+float64(s.SweepPages)/took.Seconds())/allowed, allowed)
			fmt.Fprintf(stdout, "  Redis: peak memory +%.1f MB over the run (%.0f bytes per message read); CPU %.0f µs per message read, %.0f µs per cancel\n",
				float64(peakMem-mem0)/(1<<20), float64(peakMem-mem0)/float64(s.SweepSeen),
				float64((r1-r0).Microseconds())/float64(s.SweepSeen), float64((r1-r0).Microseconds())/float64(max(s.Cancelled, 1)))
			fmt.Fprintf(stdout, "  worker: CPU %.0f µs per cancel\n", float64((w1-w0).Microseconds())/float64(max(s.Cancelled, 1)))
			break
		}
		if time.Since(last) > 5*time.Second {
			last = time.Now()
			fmt.Fprintf(stdout, "  ... %d pages, %d found, %d/%d cancelled\n", s.SweepPages, s.SweepFound, s.Done, s.Total)
			if s.SweepPages == 0 {
				if info, err := asynq.NewInspectorFromRedisClient(rdb).GetTaskInfo("default", st.TaskIDs[0]); err == nil {
					fmt.Fprintf(stdout, "  the sweep is %s, retried %d times; last error: %s\n", info.State, info.Retried, info.LastErr)
				}
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	if mb, err := peakRSS(cmd.Process.Pid); err == nil {
		fmt.Fprintf(stdout, "  worker peak RSS %.1f MB\n", mb)
	}
	return nil
}
