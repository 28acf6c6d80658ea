package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/producer"
	"github.com/ghlcancel/ghlcancel/internal/ratelimit"
	"github.com/ghlcancel/ghlcancel/internal/sandbox"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
)

// limits runs issue 4's and 11's scenarios, each against a fresh sandbox
// and Redis db: bursts (one location, sliding and fixed windows, 1 and 3
// worker processes), a fresh location, pacing (3 worker processes, one
// location), many locations (50, one throttled hard), and scale (500
// locations, 200 ms latency, one worker). With -rounds N every scenario
// runs N times and a summary gives each figure's median [min-max].
func limits(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("limits", flag.ContinueOnError)
	fs.SetOutput(stderr)
	scaleConc := fs.Int("scale-concurrency", 1200, "worker concurrency for the 500-location scenario")
	scaleTasks := fs.Int("scale-tasks", 30000, "tasks in the 500-location scenario")
	only := fs.String("only", "burst,fresh,pacing,many,scale", "scenarios to run, comma-separated")
	rounds := fs.Int("rounds", 1, "rounds of every scenario; with more than one, a summary gives each figure's median [min-max]")
	workerArgs := fs.String("worker-args", "", "extra flags for every worker child, e.g. \"-lanes=shared\"")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *rounds < 1 {
		return fmt.Errorf("-rounds %d: want at least 1", *rounds)
	}
	be, err := newBenchEnv("")
	if err != nil {
		return err
	}
	defer be.close()
	env := &scenarioEnv{benchEnv: be, stdout: stdout, workerArgs: strings.Fields(*workerArgs)}

	want := func(name string) bool { return slices.Contains(strings.Split(*only, ","), name) }
	figs := &figures{}
	for round := 1; round <= *rounds; round++ {
		if *rounds > 1 {
			fmt.Fprintf(stdout, "round %d of %d\n", round, *rounds)
		}
		if err := env.limitsRound(ctx, want, *scaleConc, *scaleTasks, figs); err != nil {
			return err
		}
	}
	if *rounds > 1 {
		figs.summary(stdout, *rounds)
	}
	return nil
}

// limitsRound runs one round of the chosen scenarios and adds their
// figures to figs.
func (env *scenarioEnv) limitsRound(ctx context.Context, want func(string) bool, scaleConc, scaleTasks int, figs *figures) error {
	stdout := env.stdout
	// 0. Bursts: HighLevel's real limit, the strictest window, the default
	// configuration (no limit set for the location): how close to the ideal?
	for _, w := range []struct {
		window  string
		workers int
	}{{"sliding", 1}, {"sliding", 3}, {"fixed", 1}, {"fixed", 3}} {
		if !want("burst") {
			break
		}
		fmt.Fprintf(stdout, "scenario burst: 1 location, sandbox 100 per 10s (%s window), 450 tasks, %d worker process(es), RATE_LIMIT default\n", w.window, w.workers)
		r, err := env.run(ctx, scenario{locations: 1, perLocation: 450, rate: 100, interval: 10 * time.Second,
			workers: w.workers, concurrency: 200, rateFlag: "100/10s", window: w.window})
		if err != nil {
			return err
		}
		ts := r.sb.Admitted(r.locs[0])
		elapsed := ts[len(ts)-1].Sub(ts[0])
		// Ideal: 100 at once, 100 more as each window frees: the 450th call 40 s after the first.
		ideal := 40 * time.Second
		ratio := ideal.Seconds() / elapsed.Seconds()
		fmt.Fprintf(stdout, "  first to last call %.1fs vs ideal 40.0s: %.3f (target >= 0.97: %s); 429s: %d (target 0: %s); most in any 10s span: %d\n",
			elapsed.Seconds(), ratio, verdict(ratio >= 0.97), r.stats.RateLimited, verdict(r.stats.RateLimited == 0), mostInSpan(ts, 10*time.Second))
		name := fmt.Sprintf("burst %s, %d worker(s)", w.window, w.workers)
		figs.add(name+": ideal/actual", "%.3f", ratio, ">= 0.97", ratio >= 0.97)
		figs.add(name+": 429s", "%.0f", float64(r.stats.RateLimited), "0", r.stats.RateLimited == 0)
	}
	if want("fresh") {
		fmt.Fprintln(stdout, "scenario fresh: 100 tasks for a location never called before, sandbox 100 per 10s (sliding), 1 worker")
		r0, err := env.run(ctx, scenario{locations: 1, perLocation: 100, rate: 100, interval: 10 * time.Second,
			workers: 1, concurrency: 200, rateFlag: "100/10s", window: "sliding"})
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "  all 100 cancelled %.2fs after the workers started (target < 2s: %s); 429s: %d\n",
			r0.took.Seconds(), verdict(r0.took < 2*time.Second), r0.stats.RateLimited)
		figs.add("fresh: seconds for 100", "%.2f", r0.took.Seconds(), "< 2", r0.took < 2*time.Second)
	}
	// 1. Pacing: 100 per 2 s (HighLevel's 100 per 10 s, scaled 5x), 3 processes.
	if want("pacing") {
		fmt.Fprintln(stdout, "scenario pacing: 1 location, sandbox 100 per 2s (fixed windows), 3 worker processes, 600 tasks")
		r, err := env.run(ctx, scenario{locations: 1, perLocation: 600, rate: 100, interval: 2 * time.Second,
			workers: 3, concurrency: 50, rateFlag: "100/2s"})
		if err != nil {
			return err
		}
		ts := r.sb.Admitted(r.locs[0])
		ratio := idealRatio(ts, 600, 100, 2*time.Second)
		fmt.Fprintf(stdout, "  first to last call %.2fs vs ideal %.0fs: %.3f (target >= 0.97: %s); most in any 2s span: %d of 100; 429s: %d (target 0: %s)\n",
			ts[len(ts)-1].Sub(ts[0]).Seconds(), idealSpan(600, 100, 2*time.Second).Seconds(), ratio, verdict(ratio >= 0.97),
			mostInSpan(ts, 2*time.Second), r.stats.RateLimited, verdict(r.stats.RateLimited == 0))
		figs.add("pacing 100/2s, 3 workers: ideal/actual", "%.3f", ratio, ">= 0.97", ratio >= 0.97)
		figs.add("pacing 100/2s, 3 workers: 429s", "%.0f", float64(r.stats.RateLimited), "0", r.stats.RateLimited == 0)
	}

	// 2. Many locations, one throttled hard.
	if want("many") {
		fmt.Fprintln(stdout, "scenario many: 50 locations, sandbox 20 per 10s each, one throttled to 2 per 10s, 60 tasks each, 1 worker (concurrency 200);"+
			" ends when the 49 are done and the throttled one has been called for 35s")
		r, err := env.run(ctx, scenario{locations: 50, perLocation: 60, rate: 20, interval: 10 * time.Second,
			workers: 1, concurrency: 200, rateFlag: "20/10s", throttle: 2, throttledFor: 35 * time.Second})
		if err != nil {
			return err
		}
		var ratios []float64
		others429 := 0
		for _, loc := range r.locs[1:] {
			ratios = append(ratios, idealRatio(r.sb.Admitted(loc), 60, 20, 10*time.Second))
			others429 += r.sb.RateLimitedCount(loc)
		}
		// Where the time goes: the first window's spread (dequeue and
		// call throughput), and how late each later call is against its
		// counterpart one span before (the pacing's own cost).
		span := time.Duration(float64(10*time.Second) * (1 + ratelimit.MarginDefault))
		var spreads, lags []float64
		for _, loc := range r.locs[1:] {
			ts := r.sb.Admitted(loc)
			if len(ts) < 20 {
				continue
			}
			spreads = append(spreads, ts[19].Sub(ts[0]).Seconds())
			for k := 20; k < len(ts); k++ {
				lags = append(lags, (ts[k].Sub(ts[k-20])-span).Seconds()*1000)
			}
		}
		if len(spreads) > 0 && len(lags) > 0 {
			fmt.Fprintf(stdout, "  where the time goes: a location's first 20 calls spread over %.3fs (median; max %.3f); a later call went out %.0f ms (median; max %.0f) after its counterpart one %.1fs span before\n",
				median(spreads), slices.Max(spreads), median(lags), slices.Max(lags), span.Seconds())
		}
		slices.Sort(ratios)
		fmt.Fprintf(stdout, "  other 49 locations: ideal/actual time min %.3f, median %.3f (target: full rate, >= 0.97: %s); 429s: %d (%s)\n",
			ratios[0], ratios[len(ratios)/2], verdict(ratios[0] >= 0.97), others429, verdict(others429 == 0))
		figs.add("many: slowest of 49 locations, ideal/actual", "%.3f", ratios[0], ">= 0.97", ratios[0] >= 0.97)
		figs.add("many: 429s of the 49", "%.0f", float64(others429), "0", others429 == 0)
		ts := r.sb.Admitted(r.locs[0])
		fmt.Fprintf(stdout, "  throttled location: most in any 10s span %d of 2; 429s: %d (up to %d probe calls go before HighLevel's first answer reveals 2 per 10s)\n",
			mostInSpan(ts, 10*time.Second), r.sb.RateLimitedCount(r.locs[0]), ratelimit.ProbeBurst)
	}
	if !want("scale") {
		return nil
	}

	// 3. Scale: 500 locations, 200 ms per call.
	per := max(scaleTasks/500, 1)
	fmt.Fprintf(stdout, "scenario scale: 500 locations, sandbox 100 per 10s each, 200ms latency, %d tasks, 1 worker (concurrency %d)\n", per*500, scaleConc)
	r, err := env.run(ctx, scenario{locations: 500, perLocation: per, rate: 100, interval: 10 * time.Second,
		workers: 1, concurrency: scaleConc, rateFlag: "100/10s", latency: 200 * time.Millisecond})
	if err != nil {
		return err
	}
	tput := r.total()
	fmt.Fprintf(stdout, "  sustained %.0f cancels/s (target >= 3000: %s); 429s: %d (%s); took %.1fs\n",
		tput, verdict(tput >= 3000), r.stats.RateLimited, verdict(r.stats.RateLimited == 0), r.took.Seconds())
	figs.add("scale: cancels/s, 500 locations", "%.0f", tput, ">= 3000", tput >= 3000)
	figs.add("scale: 429s", "%.0f", float64(r.stats.RateLimited), "0", r.stats.RateLimited == 0)
	return nil
}

// figures collects each named figure of every round, in first-seen order.
type figures struct {
	names  []string
	vals   map[string][]float64
	format map[string]string
	target map[string]string
	met    map[string][]bool
}

func (f *figures) add(name, format string, v float64, target string, met bool) {
	if f.vals == nil {
		f.vals, f.format, f.target, f.met = map[string][]float64{}, map[string]string{}, map[string]string{}, map[string][]bool{}
	}
	if _, ok := f.vals[name]; !ok {
		f.names = append(f.names, name)
	}
	f.vals[name] = append(f.vals[name], v)
	f.format[name], f.target[name] = format, target
	f.met[name] = append(f.met[name], met)
}

// summary prints every figure as median [min-max] and in how many rounds
// it met its target.
func (f *figures) summary(w io.Writer, rounds int) {
	fmt.Fprintf(w, "\nmedian [min-max] of %d rounds:\n", rounds)
	for _, n := range f.names {
		met := 0
		for _, ok := range f.met[n] {
			if ok {
				met++
			}
		}
		fmt.Fprintf(w, "  %-48s %s (target %s: met in %d of %d rounds)\n", n, fmtStat(f.vals[n], f.format[n]), f.target[n], met, len(f.met[n]))
	}
}

type scenarioEnv struct {
	*benchEnv
	stdout     io.Writer
	workerArgs []string // extra flags for every worker child
}

type scenario struct {
	locations, perLocation, rate, workers, concurrency, throttle int
	interval, latency                                            time.Duration
	rateFlag, window                                             string
	// throttledFor: with throttle set, the scenario ends once every other
	// location is done and the throttled one has been called for this
	// long (0: wait for all its calls too).
	throttledFor time.Duration
}

// idealSpan is how long n calls take at best under limit per window: the
// first limit at once, limit more as each window frees.
func idealSpan(n, limit int, window time.Duration) time.Duration {
	return time.Duration((n-1)/limit) * window
}

// idealRatio is the ideal time over the actual first-to-last time of ts.
func idealRatio(ts []time.Time, n, limit int, window time.Duration) float64 {
	if len(ts) < 2 {
		return 0
	}
	return idealSpan(n, limit, window).Seconds() / ts[len(ts)-1].Sub(ts[0]).Seconds()
}

// mostInSpan is the most timestamps (sorted) in any span of d.
func mostInSpan(ts []time.Time, d time.Duration) int {
	most, j := 0, 0
	for i := range ts {
		for ts[i].Sub(ts[j]) >= d {
			j++
		}
		most = max(most, i-j+1)
	}
	return most
}

type scenarioResult struct {
	sb    *sandbox.Server
	locs  []string
	stats sandbox.Stats
	took  time.Duration
}

// total is calls/s over all locations between the first and last call.
func (r *scenarioResult) total() float64 {
	var first, last time.Time
	n := 0
	for _, loc := range r.locs {
		ts := r.sb.Admitted(loc)
		if len(ts) == 0 {
			continue
		}
		n += len(ts)
		if first.IsZero() || ts[0].Before(first) {
			first = ts[0]
		}
		if ts[len(ts)-1].After(last) {
			last = ts[len(ts)-1]
		}
	}
	return float64(n-1) / last.Sub(first).Seconds()
}

func (e *scenarioEnv) run(ctx context.Context, sc scenario) (*scenarioResult, error) {
	if err := e.rdb.FlushDB(ctx).Err(); err != nil {
		return nil, err
	}
	sb := sandbox.New(sandbox.Config{RateMax: sc.rate, RateInterval: sc.interval, RateWindow: sc.window, DailyLimit: 1 << 30,
		Faults: sandbox.Faults{Latency: sc.latency}})
	apiURL, stopAPI, err := serveSandbox(sb)
	if err != nil {
		return nil, err
	}
	defer stopAPI()

	res := &scenarioResult{sb: sb}
	toks := map[string]string{}
	byLoc := make([][]string, sc.locations)
	for i := range sc.locations {
		loc := fmt.Sprintf("benchLoc%012d", i)
		tok := "bench-" + sandbox.NewID()
		sb.AddLocation(loc, tok)
		toks[loc] = tok
		res.locs = append(res.locs, loc)
		byLoc[i] = sb.ScheduleN(loc, sc.perLocation, false)
	}
	if sc.throttle > 0 {
		sb.SetRateLimit(res.locs[0], sc.throttle)
	}
	// Interleave locations, as a mixed campaign would.
	var items []producer.Item
	for j := range sc.perLocation {
		for i, loc := range res.locs {
			items = append(items, producer.Item{Kind: ghl.KindMessage, MessageID: byLoc[i][j], LocationID: loc})
		}
	}
	tokPath, err := e.writeTokens(toks)
	if err != nil {
		return nil, err
	}
	p := producer.New(e.rdb, producer.Config{Queue: tasks.QueueBulk})
	if err := fill(ctx, len(items), func(i int) error {
		if r := p.Enqueue(ctx, items[i]); r.Status != producer.Enqueued {
			return fmt.Errorf("enqueue: %s %v", r.Status, r.Err)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	var cmds []*exec.Cmd
	for range sc.workers {
		cmd := e.child(ctx, append([]string{"_worker", "-redis-url", e.redisURL, "-concurrency", strconv.Itoa(sc.concurrency),
			"-api", apiURL, "-tokens-file", tokPath, "-rate-limit", sc.rateFlag}, e.workerArgs...)...)
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		cmds = append(cmds, cmd)
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			for _, c := range cmds {
				_ = c.Process.Signal(syscall.SIGTERM)
			}
			for _, c := range cmds {
				_ = c.Wait()
			}
		})
	}
	defer stop()
	start := time.Now()
	want := int64(len(items))
	done := func() bool {
		n := sb.Stats().Cancelled
		if n >= want {
			return true
		}
		if sc.throttle == 0 || sc.throttledFor == 0 {
			return false
		}
		// The others are done when all but the throttled location's
		// outstanding calls are; its own calls need to have run long enough.
		ts := sb.Admitted(res.locs[0])
		return n >= want-int64(sc.perLocation-len(ts)) && len(ts) > 0 && time.Since(ts[0]) >= sc.throttledFor
	}
	last := time.Now()
	for !done() {
		if time.Since(start) > 10*time.Minute {
			return nil, fmt.Errorf("scenario did not finish: %d of %d cancelled", sb.Stats().Cancelled, want)
		}
		if time.Since(last) >= 5*time.Second {
			last = time.Now()
			fmt.Fprintf(e.stdout, "  ... %d/%d cancelled\n", sb.Stats().Cancelled, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
	res.took = time.Since(start)
	stop()
	res.stats = sb.Stats()
	return res, nil
}
