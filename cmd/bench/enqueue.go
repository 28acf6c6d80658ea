package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/producer"
	"github.com/ghlcancel/ghlcancel/internal/sandbox"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
)

// enqueueBench measures bulk enqueue against asynq's Enqueue one by one on
// the same Redis, Redis memory per pending task, and the peak RSS of an
// enqueue process streaming a 1,000,000-line file.
func enqueueBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("enqueue", flag.ContinueOnError)
	fs.SetOutput(stderr)
	n := fs.Int("tasks", 100000, "tasks per measurement")
	lines := fs.Int("file-lines", 1000000, "lines in the file for the RSS measurement")
	if err := fs.Parse(args); err != nil {
		return err
	}
	env, err := newBenchEnv("")
	if err != nil {
		return err
	}
	defer env.close()
	rdb := env.rdb
	items := make([]producer.Item, *n)
	for i := range items {
		items[i] = producer.Item{Kind: ghl.KindMessage, MessageID: sandbox.NewID(), LocationID: fmt.Sprintf("benchLoc%012d", i%100), CampaignID: "bench"}
	}
	fmt.Fprintf(stdout, "enqueue benchmark: %d tasks, redis %s\n", *n, env.redisURL)

	// Baseline: asynq's client, one Enqueue at a time.
	if err := rdb.FlushDB(ctx).Err(); err != nil {
		return err
	}
	client := asynq.NewClientFromRedisClient(rdb)
	start := time.Now()
	for _, it := range items {
		task, err := tasks.NewCancelTask(it.Kind, tasks.CancelPayload{MessageID: it.MessageID, LocationID: it.LocationID, CampaignID: it.CampaignID},
			tasks.TaskOptions{Queue: tasks.QueueBulk})
		if err != nil {
			return err
		}
		if _, err := client.EnqueueContext(ctx, task); err != nil {
			return err
		}
	}
	base := float64(*n) / time.Since(start).Seconds()
	fmt.Fprintf(stdout, "  asynq Enqueue one by one   %8.0f tasks/s\n", base)

	// Ours, with campaign counting and cross-lane dedupe.
	if err := rdb.FlushDB(ctx).Err(); err != nil {
		return err
	}
	before, err := usedMemory(ctx, rdb)
	if err != nil {
		return err
	}
	p := producer.New(rdb, producer.Config{Queue: tasks.QueueBulk})
	i := 0
	enq := 0
	start = time.Now()
	p.EnqueueAll(ctx, func() (producer.Item, bool) {
		if i == len(items) {
			return producer.Item{}, false
		}
		i++
		return items[i-1], true
	}, func(_ producer.Item, r producer.Result) {
		if r.Status == producer.Enqueued {
			enq++
		}
	})
	ours := float64(*n) / time.Since(start).Seconds()
	if enq != *n {
		return fmt.Errorf("enqueued %d of %d", enq, *n)
	}
	after, err := usedMemory(ctx, rdb)
	if err != nil {
		return err
	}
	perTask := float64(after-before) / float64(*n)
	fmt.Fprintf(stdout, "  ghlcancel bulk enqueue     %8.0f tasks/s\n", ours)
	fmt.Fprintf(stdout, "\nresult: bulk enqueue %.1fx asynq one by one (target >= 5x: %s)\n", ours/base, verdict(ours/base >= 5))
	fmt.Fprintf(stdout, "result: Redis memory per pending task %.0f bytes with hash-max-listpack-value 512 (target <= 550: %s)\n", perTask, verdict(perTask <= 550))
	// The same with Redis's default hash-max-listpack-value (64).
	if err := env.rdb.ConfigSet(ctx, "hash-max-listpack-value", "64").Err(); err == nil {
		_ = rdb.FlushDB(ctx).Err()
		b0, _ := usedMemory(ctx, rdb)
		p.EnqueueBatch(ctx, items[:20000])
		b1, _ := usedMemory(ctx, rdb)
		fmt.Fprintf(stdout, "        with Redis's default (64): %.0f bytes (asynq's task hash becomes a hashtable)\n", float64(b1-b0)/20000)
		_ = env.rdb.ConfigSet(ctx, "hash-max-listpack-value", "512").Err()
	}

	// Peak RSS of an enqueue process streaming a big file.
	if err := rdb.FlushDB(ctx).Err(); err != nil {
		return err
	}
	path := filepath.Join(env.dir, "ids.csv")
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	fmt.Fprintln(w, "message_id,location_id")
	for j := range *lines {
		fmt.Fprintf(w, "%s,benchLoc%012d\n", sandbox.NewID(), j%500)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	f.Close()
	cmd := exec.CommandContext(ctx, env.self, "_enqueue", "-redis-url", env.redisURL, "-file", path)
	cmd.Stderr = stderr
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("enqueue child: %w", err)
	}
	rss := 0.0
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		rss = float64(ru.Maxrss) / 1024
	}
	fmt.Fprintf(stdout, "result: enqueue of a %d-line file: %s; peak RSS %.1f MB\n", *lines, strings.TrimSpace(string(out)), rss)
	return nil
}

func usedMemory(ctx context.Context, rdb *redis.Client) (int64, error) {
	info, err := rdb.Info(ctx, "memory").Result()
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "used_memory:"); ok {
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, fmt.Errorf("no used_memory in INFO")
}

// enqueueChild streams a file through producer.EnqueueReader, as the
// enqueue command does, and prints the summary and rate.
func enqueueChild(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("_enqueue", flag.ContinueOnError)
	redisURL := fs.String("redis-url", "", "")
	file := fs.String("file", "", "")
	if err := fs.Parse(args); err != nil {
		return err
	}
	opt, err := redis.ParseURL(*redisURL)
	if err != nil {
		return err
	}
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	f, err := os.Open(*file)
	if err != nil {
		return err
	}
	defer f.Close()
	p := producer.New(rdb, producer.Config{Queue: tasks.QueueBulk})
	start := time.Now()
	sum, err := producer.EnqueueReader(ctx, p, f, producer.Item{Kind: ghl.KindMessage, CampaignID: "bench-file"}, -1, io.Discard)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%d enqueued in %.1fs (%.0f/s)\n", sum.Enqueued, time.Since(start).Seconds(), float64(sum.Enqueued)/time.Since(start).Seconds())
	return nil
}
