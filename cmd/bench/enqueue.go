package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/producer"
	"github.com/ghlcancel/ghlcancel/internal/sandbox"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
)

// enqueueBench measures bulk enqueue against asynq's Enqueue one by one
// and against a raw pipelined ceiling (the same keys written by plain
// pipelines, no scripts, no dedupe), on loopback and through a TCP proxy
// adding 1 ms each way (the usual distance to a managed Redis); medians of
// the rounds, ratios within a round. Then Redis memory per pending task and
// the peak RSS of an enqueue process streaming a 1,000,000-line file.
func enqueueBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("enqueue", flag.ContinueOnError)
	fs.SetOutput(stderr)
	n := fs.Int("tasks", 100000, "tasks per bulk measurement")
	oneByOne := fs.Int("one-by-one", 20000, "tasks for asynq one by one on loopback (through the proxy: a tenth)")
	rounds := fs.Int("rounds", 3, "rounds; medians and ranges are reported")
	delay := fs.Duration("proxy-delay", time.Millisecond, "the proxy's delay each way")
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
	proxy, err := startDelayProxy(rdb.Options().Addr, *delay)
	if err != nil {
		return err
	}
	defer proxy.close()
	popt := *rdb.Options()
	popt.Addr = proxy.addr()
	prdb := redis.NewClient(&popt)
	defer prdb.Close()
	items := make([]producer.Item, *n)
	for i := range items {
		items[i] = producer.Item{Kind: ghl.KindMessage, MessageID: sandbox.NewID(), LocationID: fmt.Sprintf("benchLoc%012d", i%100), CampaignID: "bench"}
	}
	fmt.Fprintf(stdout, "enqueue benchmark: %d tasks in bulk, %d (loopback) and %d (proxy) one by one, proxy +%s each way, %d rounds\n",
		*n, *oneByOne, *oneByOne/10, *delay, *rounds)
	type side struct {
		label string
		run   func() (float64, error)
	}
	sides := []side{
		{"loopback: asynq one by one", func() (float64, error) { return asynqOneByOne(ctx, rdb, items[:*oneByOne]) }},
		{"loopback: ghlcancel bulk", func() (float64, error) { return bulkEnqueue(ctx, rdb, items) }},
		{"loopback: raw pipelines", func() (float64, error) { return rawPipelined(ctx, rdb, items) }},
		{"proxy: asynq one by one", func() (float64, error) { return asynqOneByOne(ctx, prdb, items[:*oneByOne/10]) }},
		{"proxy: ghlcancel bulk", func() (float64, error) { return bulkEnqueue(ctx, prdb, items) }},
		{"proxy: raw pipelines", func() (float64, error) { return rawPipelined(ctx, prdb, items) }},
	}
	res := make([][]float64, len(sides))
	for r := 1; r <= *rounds; r++ {
		for i, sd := range sides {
			if err := rdb.FlushDB(ctx).Err(); err != nil {
				return err
			}
			r0, _, err := redisUsage(ctx, rdb)
			if err != nil {
				return err
			}
			v, err := sd.run()
			if err != nil {
				return fmt.Errorf("%s: %w", sd.label, err)
			}
			r1, _, _ := redisUsage(ctx, rdb)
			res[i] = append(res[i], v)
			ntasks := *n
			if strings.Contains(sd.label, "one by one") {
				ntasks = *oneByOne
				if strings.HasPrefix(sd.label, "proxy") {
					ntasks /= 10
				}
			}
			fmt.Fprintf(stdout, "  round %d  %-28s %8.0f tasks/s  Redis CPU %5.1f µs per task\n", r, sd.label, v,
				float64((r1-r0).Nanoseconds())/1000/float64(ntasks))
		}
	}
	ratio := func(a, b int) []float64 {
		out := make([]float64, *rounds)
		for r := range out {
			out[r] = res[a][r] / res[b][r]
		}
		return out
	}
	fmt.Fprintf(stdout, "\nmedian [min-max] of %d rounds:\n", *rounds)
	for i, sd := range sides {
		fmt.Fprintf(stdout, "  %-28s %s tasks/s\n", sd.label, fmtStat(res[i], "%.0f"))
	}
	lc, lr := ratio(1, 2), ratio(4, 3)
	fmt.Fprintf(stdout, "\nresult: bulk enqueue / raw pipelined ceiling, loopback: %s (target >= 0.8: %s)\n", fmtStat(lc, "%.2f"), verdict(median(lc) >= 0.8))
	fmt.Fprintf(stdout, "result: bulk enqueue / raw pipelined ceiling, proxy: %s\n", fmtStat(ratio(4, 5), "%.2f"))
	fmt.Fprintf(stdout, "result: bulk enqueue / asynq one by one, proxy: %sx (target >= 20x: %s)\n", fmtStat(lr, "%.1f"), verdict(median(lr) >= 20))
	fmt.Fprintf(stdout, "result: bulk enqueue / asynq one by one, loopback: %sx\n", fmtStat(ratio(1, 0), "%.1f"))

	// Redis memory per pending task.
	if err := rdb.FlushDB(ctx).Err(); err != nil {
		return err
	}
	before, err := usedMemory(ctx, rdb)
	if err != nil {
		return err
	}
	if _, err := bulkEnqueue(ctx, rdb, items); err != nil {
		return err
	}
	after, err := usedMemory(ctx, rdb)
	if err != nil {
		return err
	}
	p := producer.New(rdb, producer.Config{Queue: tasks.QueueBulk})
	perTask := float64(after-before) / float64(*n)
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
	cmd := env.child(ctx, "_enqueue", "-redis-url", env.redisURL, "-file", path)
	cmd.Stderr = stderr
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("enqueue child: %w", err)
	}
	fmt.Fprintf(stdout, "result: enqueue of a %d-line file: %s\n", *lines, strings.TrimSpace(string(out)))
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
	rss, err := peakRSS(os.Getpid())
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%d enqueued in %.1fs (%.0f/s); peak RSS %.1f MB\n", sum.Enqueued, time.Since(start).Seconds(),
		float64(sum.Enqueued)/time.Since(start).Seconds(), rss)
	return nil
}

// asynqOneByOne enqueues items with asynq's client, one Enqueue each.
func asynqOneByOne(ctx context.Context, rdb *redis.Client, items []producer.Item) (float64, error) {
	client := asynq.NewClientFromRedisClient(rdb)
	start := time.Now()
	for _, it := range items {
		task, err := tasks.NewCancelTask(it.Kind, tasks.CancelPayload{MessageID: it.MessageID, LocationID: it.LocationID, CampaignID: it.CampaignID},
			tasks.TaskOptions{Queue: tasks.QueueBulk})
		if err != nil {
			return 0, err
		}
		if _, err := client.EnqueueContext(ctx, task); err != nil {
			return 0, err
		}
	}
	return float64(len(items)) / time.Since(start).Seconds(), nil
}

// bulkEnqueue streams items through the producer, as enqueue --file does.
func bulkEnqueue(ctx context.Context, rdb *redis.Client, items []producer.Item) (float64, error) {
	p := producer.New(rdb, producer.Config{Queue: tasks.QueueBulk})
	i, enq := 0, 0
	start := time.Now()
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
	took := time.Since(start)
	if enq != len(items) {
		return 0, fmt.Errorf("enqueued %d of %d", enq, len(items))
	}
	return float64(len(items)) / took.Seconds(), nil
}

// rawPipelined is the ceiling: the keys a bulk enqueue writes (the task
// hash, the lane's list, the campaign's counter and locations) written by
// plain pipelines of producer.BatchSize tasks, as many in flight as the
// producer runs, with no dedupe, no outcome record check, no script.
func rawPipelined(ctx context.Context, rdb *redis.Client, items []producer.Item) (float64, error) {
	now := strconv.FormatInt(time.Now().UnixNano(), 10)
	batches := make(chan []producer.Item)
	errs := make(chan error, producer.ParallelDefault)
	var wg sync.WaitGroup
	start := time.Now()
	for range producer.ParallelDefault {
		wg.Go(func() {
			for b := range batches {
				pipe := rdb.Pipeline()
				locs := map[string]bool{}
				for _, it := range b {
					payload, err := tasks.Payload(it.Kind, tasks.CancelPayload{MessageID: it.MessageID, LocationID: it.LocationID, CampaignID: it.CampaignID})
					if err != nil {
						select {
						case errs <- err:
						default:
						}
						continue
					}
					id := tasks.TaskID(it.Kind, it.MessageID)
					// About the size of asynq's encoded task message.
					msg := append(append(append([]byte(tasks.TypeFor(it.Kind)), payload...), id...), tasks.QueueBulk...)
					pipe.HSet(ctx, "asynq:{bulk}:t:"+id, "msg", msg, "state", "pending", "pending_since", now)
					pipe.LPush(ctx, "asynq:{bulk}:pending", id)
					locs[it.LocationID] = true
				}
				pipe.HIncrBy(ctx, "ghlcancel:campaign:bench", "total", int64(len(b)))
				for l := range locs {
					pipe.SAdd(ctx, "ghlcancel:campaign:bench:locations", l)
				}
				if _, err := pipe.Exec(ctx); err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		})
	}
	for s := 0; s < len(items); s += producer.BatchSize {
		batches <- items[s:min(s+producer.BatchSize, len(items))]
	}
	close(batches)
	wg.Wait()
	took := time.Since(start)
	select {
	case err := <-errs:
		return 0, err
	default:
	}
	return float64(len(items)) / took.Seconds(), nil
}
