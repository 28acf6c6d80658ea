// Command bench measures ghlcancel against a baseline taken in the same run.
//
//	go run ./cmd/bench core [-tasks 20000] [-concurrency 200] [-rounds 2]
//
// core: end-to-end cancels/s through a worker process and the sandbox API
// (no added latency; pacing on but never binding) versus asynq's own no-op handler on the
// same Redis with the same concurrency, their ratio, and each process's peak
// RSS. Both run as child processes of this binary, so RSS is the worker's
// alone. Redis is a real redis-server on a free port unless -redis-url.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"sync/atomic"
	"syscall"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/ratelimit"
	"github.com/ghlcancel/ghlcancel/internal/sandbox"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
	"github.com/ghlcancel/ghlcancel/internal/tokens"
	"github.com/ghlcancel/ghlcancel/internal/worker"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errors.New("usage: bench core|limits|enqueue|lanes|intake|collector|sweep|scale|webhooks|agency|console [flags]")
	}
	switch args[0] {
	case "core":
		return core(ctx, args[1:], stdout, stderr)
	case "limits":
		return limits(ctx, args[1:], stdout, stderr)
	case "enqueue":
		return enqueueBench(ctx, args[1:], stdout, stderr)
	case "lanes":
		return lanesBench(ctx, args[1:], stdout, stderr)
	case "intake":
		return intakeBench(ctx, args[1:], stdout, stderr)
	case "collector":
		return collectorBench(ctx, args[1:], stdout, stderr)
	case "sweep":
		return sweepBench(ctx, args[1:], stdout, stderr)
	case "scale":
		return scaleBench(ctx, args[1:], stdout, stderr)
	case "webhooks":
		return webhooksBench(ctx, args[1:], stdout, stderr)
	case "agency":
		return agencyBench(ctx, args[1:], stdout, stderr)
	case "console":
		return consoleBench(ctx, args[1:], stdout, stderr)
	case "_enqueue":
		return enqueueChild(ctx, args[1:], stdout)
	case "_worker", "_noop": // child processes
		return child(ctx, args[0], args[1:], stdout)
	case "_sandbox":
		return sandboxMain(ctx, args[1:], stdout)
	}
	return fmt.Errorf("unknown benchmark %q (want core, limits, enqueue, lanes, intake, collector, sweep, scale, webhooks, agency or console)", args[0])
}

const noopType = "bench:noop"

// cpuProfileTo profiles this process's CPU into path ("" profiles nothing)
// until stop.
func cpuProfileTo(path string) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// child runs a worker (or a no-op asynq server), prints "ready" once it
// serves, and stops on SIGTERM.
func child(ctx context.Context, mode string, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet(mode, flag.ContinueOnError)
	redisURL := fs.String("redis-url", "", "")
	concurrency := fs.Int("concurrency", 200, "")
	apiURL := fs.String("api", "", "")
	tokensFile := fs.String("tokens-file", "", "")
	rateLimit := fs.String("rate-limit", "100/10s", "")
	urgentReserve := fs.Int("urgent-reserve", 0, "")
	cpuProfile := fs.String("cpuprofile", os.Getenv("BENCH_CPUPROFILE"), "")
	agencyKey := fs.String("agency-key", "", "worker: tokens minted from the agency stored in Redis with this GHL_TOKEN_KEY (no tokens file)")
	lanes := fs.String("lanes", "weighted", "no-op: weighted (6:3:1) or bulk (the bulk lane alone); worker: shared for one weighted fetch loop")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if mode == "_worker" {
		stop, err := cpuProfileTo(*cpuProfile)
		if err != nil {
			return err
		}
		defer stop()
	}
	opt, err := redis.ParseURL(*redisURL)
	if err != nil {
		return err
	}
	opt.PoolSize = *concurrency*7/4 + 30
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	trips := &roundTrips{}
	rdb.AddHook(trips)
	defer func() { fmt.Fprintf(stdout, "roundtrips %d\n", trips.n.Load()) }()
	if mode == "_noop" {
		queues := tasks.QueueWeights()
		if *lanes == "bulk" {
			queues = map[string]int{tasks.QueueBulk: 1}
		}
		srv := asynq.NewServerFromRedisClient(rdb, asynq.Config{
			Concurrency: *concurrency, Queues: queues,
			TaskCheckInterval: worker.TaskCheckIntervalDefault, LogLevel: asynq.WarnLevel,
		})
		if err := srv.Start(asynq.HandlerFunc(func(context.Context, *asynq.Task) error { return nil })); err != nil {
			return err
		}
		fmt.Fprintln(stdout, "ready")
		<-ctx.Done()
		srv.Shutdown()
		return nil
	}
	var src tokens.Source
	var oauth *tokens.OAuthConfig
	if *agencyKey != "" {
		key, err := tokens.ParseKey(*agencyKey)
		if err != nil {
			return err
		}
		oauth = &tokens.OAuthConfig{TokenURL: *apiURL + "/oauth/token", ClientID: sandbox.ClientIDDefault, ClientSecret: sandbox.ClientSecretDefault, Key: key}
	} else if src, err = tokens.NewFile(*tokensFile, nil); err != nil {
		return err
	}
	var lim ratelimit.Limit
	if *rateLimit != "off" {
		if lim, err = ratelimit.ParseLimit(*rateLimit); err != nil {
			return err
		}
	}
	w, err := worker.New(worker.Config{Redis: rdb, GHL: ghl.Config{BaseURL: *apiURL}, Tokens: src, OAuth: oauth, Concurrency: *concurrency,
		RateLimit: ratelimit.Config{Default: lim, UrgentReserve: *urgentReserve}, NoPacing: *rateLimit == "off", SharedLanes: *lanes == "shared"})
	if err != nil {
		return err
	}
	wctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(wctx) }()
	fmt.Fprintln(stdout, "ready")
	<-ctx.Done()
	cancel()
	return <-done
}

// fill runs fn for 0..n-1 with 32 in flight.
func fill(ctx context.Context, n int, fn func(int) error) error {
	errs := make(chan error, 32)
	for w := range 32 {
		go func() {
			for i := w; i < n; i += 32 {
				if err := fn(i); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	var first error
	for range 32 {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// roundTrips counts a process's round trips to Redis: a command, a script
// or a pipeline is one.
type roundTrips struct{ n atomic.Int64 }

func (*roundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }
func (r *roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		r.n.Add(1)
		return next(ctx, cmd)
	}
}
func (r *roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		r.n.Add(1)
		return next(ctx, cmds)
	}
}
