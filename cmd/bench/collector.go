package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/producer"
	"github.com/ghlcancel/ghlcancel/internal/sandbox"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
	"github.com/ghlcancel/ghlcancel/metrics"
)

// collectorBench measures what one scrape of the queue collector costs
// Redis with the lanes empty (the baseline) and with 1,000,000 tasks
// queued: wall time per scrape and Redis CPU per scrape from INFO
// commandstats. asynq's x/metrics collector runs MEMORY USAGE sampling on
// every scrape, which grows with the queue; this one must not.
func collectorBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("collector", flag.ContinueOnError)
	fs.SetOutput(stderr)
	n := fs.Int("tasks", 1_000_000, "tasks to queue")
	scrapes := fs.Int("scrapes", 200, "scrapes per measurement")
	if err := fs.Parse(args); err != nil {
		return err
	}
	env, err := newBenchEnv("")
	if err != nil {
		return err
	}
	defer env.close()
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.NewQueueCollector(env.rdb, tasks.Queues))
	fmt.Fprintf(stdout, "collector benchmark: %d scrapes empty, then with %d tasks queued, redis %s\n", *scrapes, *n, env.redisURL)

	measure := func(label string) (wall, redisUS time.Duration, err error) {
		if err := env.rdb.ConfigResetStat(ctx).Err(); err != nil {
			return 0, 0, err
		}
		var lat []time.Duration
		for range *scrapes {
			start := time.Now()
			if _, err := reg.Gather(); err != nil {
				return 0, 0, err
			}
			lat = append(lat, time.Since(start))
		}
		us, err := commandUsec(ctx, env.rdb)
		if err != nil {
			return 0, 0, err
		}
		slices.Sort(lat)
		p50, p99 := lat[len(lat)/2], lat[len(lat)*99/100]
		per := time.Duration(us/int64(*scrapes)) * time.Microsecond
		fmt.Fprintf(stdout, "%-22s scrape p50 %-9s p99 %-9s redis CPU per scrape %s\n", label, p50.Round(time.Microsecond), p99.Round(time.Microsecond), per)
		return p50, per, nil
	}
	wall0, cpu0, err := measure("empty lanes:")
	if err != nil {
		return err
	}
	p := producer.New(env.rdb, producer.Config{Queue: tasks.QueueBulk})
	i := 0
	last := time.Now()
	p.EnqueueAll(ctx, func() (producer.Item, bool) {
		if i == *n {
			return producer.Item{}, false
		}
		i++
		if time.Since(last) > 2*time.Second {
			fmt.Fprintf(stderr, "  queued %d/%d\n", i, *n)
			last = time.Now()
		}
		return producer.Item{Kind: ghl.KindMessage, MessageID: sandbox.NewID(), LocationID: "benchLoc" + strconv.Itoa(i%100)}, true
	}, func(producer.Item, producer.Result) {})
	if err := ctx.Err(); err != nil {
		return err
	}
	wall1, cpu1, err := measure(fmt.Sprintf("%d queued:", *n))
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "ratio queued/empty: scrape time %.2f, redis CPU %.2f\n",
		float64(wall1)/float64(max(wall0, 1)), float64(cpu1)/float64(max(cpu0, time.Microsecond)))
	return nil
}

// commandUsec sums usec over INFO commandstats, leaving out INFO and CONFIG
// (the measurement's own commands).
func commandUsec(ctx context.Context, rdb *redis.Client) (int64, error) {
	info, err := rdb.Info(ctx, "commandstats").Result()
	if err != nil {
		return 0, err
	}
	var total int64
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") || name == "cmdstat_info" || strings.HasPrefix(name, "cmdstat_config") {
			continue
		}
		for _, kv := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(kv, "usec="); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				total += n
			}
		}
	}
	return total, nil
}
