package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"

	"github.com/ghlcancel/ghlcancel/internal/producer"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
)

// scaleBench runs 1, 2 and 3 worker processes against one redis-server
// (pacing on, a limit that never binds) and reports, per process count,
// cancels/s, Redis CPU per cancel and the projected ceiling of one Redis
// core (1,000,000 / Redis µs per cancel): where adding workers stops
// helping. On a 2-core machine the workers share the cores with Redis and
// the sandbox, so cancels/s flattens early; Redis µs per cancel is the
// figure that carries over to a bigger machine.
func scaleBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("scale", flag.ContinueOnError)
	fs.SetOutput(stderr)
	n := fs.Int("tasks", 30000, "tasks per measurement")
	concurrency := fs.Int("concurrency", 200, "concurrency of each worker process")
	rounds := fs.Int("rounds", 3, "rounds; medians and ranges are reported")
	locations := fs.Int("locations", 50, "sandbox locations the messages are spread over")
	procs := fs.String("workers", "1,2,3", "worker process counts to measure")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var counts []int
	for _, s := range strings.Split(*procs, ",") {
		c, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || c < 1 {
			return fmt.Errorf("-workers: %q is not a process count", s)
		}
		counts = append(counts, c)
	}
	env, err := newBenchEnv("")
	if err != nil {
		return err
	}
	defer env.close()
	fmt.Fprintf(stdout, "scale benchmark: %d tasks over %d locations, concurrency %d per worker process, pacing on, %d rounds\n",
		*n, *locations, *concurrency, *rounds)
	res := make([][]usage, len(counts))
	for r := 1; r <= *rounds; r++ {
		for i, c := range counts {
			u, err := measureScale(ctx, env, *n, *concurrency, *locations, c)
			if err != nil {
				return fmt.Errorf("%d workers: %w", c, err)
			}
			res[i] = append(res[i], u)
			fmt.Fprintf(stdout, "  round %d  %d worker(s) %7.0f cancels/s  workers %4.0f µs  redis %4.0f µs, %3.1f round trips\n",
				r, c, u.perSec(), u.us(u.workerCPU), u.us(u.redisCPU), float64(u.roundTrips)/float64(u.n))
		}
	}
	fmt.Fprintf(stdout, "\nper process count, median [min-max] of %d rounds:\n", *rounds)
	fmt.Fprintf(stdout, "  %-10s %-22s %-20s %-20s %-26s %s\n", "workers", "cancels/s", "vs 1 worker", "Redis CPU µs", "one Redis core's ceiling", "workers' CPU µs")
	for i, c := range counts {
		u := res[i]
		vs := make([]float64, len(u))
		for r := range u {
			vs[r] = u[r].perSec() / res[0][r].perSec()
		}
		redisUS := col(u, func(u usage) float64 { return u.us(u.redisCPU) })
		ceil := make([]float64, len(redisUS))
		for r, v := range redisUS {
			ceil[r] = 1e6 / v
		}
		fmt.Fprintf(stdout, "  %-10d %-22s %-20s %-20s %-26s %s\n", c,
			stat(u, func(u usage) float64 { return u.perSec() }, "%.0f"), fmtStat(vs, "%.2f"),
			fmtStat(redisUS, "%.0f"), fmtStat(ceil, "%.0f")+" cancels/s",
			stat(u, func(u usage) float64 { return u.us(u.workerCPU) }, "%.0f"))
	}
	return nil
}

// measureScale drains n cancels with procs worker processes at once.
func measureScale(ctx context.Context, env *benchEnv, n, concurrency, locations, procs int) (usage, error) {
	if err := env.rdb.FlushDB(ctx).Err(); err != nil {
		return usage{}, err
	}
	sb, err := startSandboxChild(ctx, env, locations, n/locations, "-rate", "-1", "-daily", strconv.Itoa(1<<30))
	if err != nil {
		return usage{}, err
	}
	defer sb.stop()
	for _, r := range producer.New(env.rdb, producer.Config{Queue: tasks.QueueBulk}).EnqueueBatch(ctx, sb.items) {
		if r.Status != producer.Enqueued {
			return usage{}, fmt.Errorf("enqueue: %s %v", r.Status, r.Err)
		}
	}
	cmds := make([]*exec.Cmd, procs)
	for i := range cmds {
		cmds[i] = env.child(ctx, "_worker", "-redis-url", env.redisURL, "-concurrency", strconv.Itoa(concurrency), "-api", sb.url,
			"-tokens-file", sb.tokens, "-rate-limit", "1000000/1s")
	}
	return drainAll(ctx, env, sb, cmds...)
}
