package main

import (
	"bufio"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
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

// usage is what one drain cost: rates and CPU from /proc and Redis's INFO.
type usage struct {
	n          int
	took       time.Duration
	workerCPU  time.Duration // the worker (or no-op server) process, ready to drained
	redisCPU   time.Duration // redis-server, INFO cpu
	redisCmds  int64         // INFO commandstats calls (script bodies' commands included)
	roundTrips int64         // the child's round trips to Redis (a pipeline or a script is one)
	sandboxCPU time.Duration
	rssMB      float64
}

func (u usage) perSec() float64 { return float64(u.n) / u.took.Seconds() }
func (u usage) us(d time.Duration) float64 {
	return float64(d.Microseconds()) / float64(u.n)
}

// coreVariant is one side of the core benchmark.
type coreVariant struct {
	label string
	run   func(ctx context.Context) (usage, error)
}

// core measures, in the same rounds, asynq's own no-op handler (today's
// three lanes and weights, and the bulk lane alone) and the worker (pacing
// off and on), each draining the same number of tasks from the bulk lane on
// the same redis-server: cancels/s, worker CPU, Redis CPU and commands per
// cancel, the sandbox's CPU separately. Medians of the rounds with their
// range; ratios are taken within a round.
func core(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("core", flag.ContinueOnError)
	fs.SetOutput(stderr)
	n := fs.Int("tasks", 20000, "tasks per measurement")
	concurrency := fs.Int("concurrency", 200, "worker concurrency (both sides)")
	rounds := fs.Int("rounds", 3, "rounds; medians and ranges are reported")
	locations := fs.Int("locations", 50, "sandbox locations the messages are spread over")
	workerArgs := fs.String("worker-args", "", "extra flags for the worker child, e.g. \"-lanes=shared\"")
	only := fs.String("only", "", "run only the variants whose label contains this (for profiling)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	env, err := newBenchEnv("")
	if err != nil {
		return err
	}
	defer env.close()
	opt, _ := redis.ParseURL(env.redisURL)
	fmt.Fprintf(stdout, "core benchmark: %d tasks over %d locations, concurrency %d, %d rounds, redis-server %s\n",
		*n, *locations, *concurrency, *rounds, opt.Addr)
	extra := strings.Fields(*workerArgs)
	variants := []coreVariant{
		{"asynq no-op, lanes 6:3:1", func(ctx context.Context) (usage, error) {
			return measureNoop(ctx, env, *n, *concurrency, "weighted")
		}},
		{"asynq no-op, bulk lane only", func(ctx context.Context) (usage, error) {
			return measureNoop(ctx, env, *n, *concurrency, "bulk")
		}},
		{"worker, pacing off", func(ctx context.Context) (usage, error) {
			return measureOurs(ctx, env, *n, *concurrency, *locations, "off", extra)
		}},
		{"worker, pacing on", func(ctx context.Context) (usage, error) {
			return measureOurs(ctx, env, *n, *concurrency, *locations, "1000000/1s", extra)
		}},
	}
	if *only != "" {
		variants = slices.DeleteFunc(variants, func(v coreVariant) bool { return !strings.Contains(v.label, *only) })
		for r := 1; r <= *rounds; r++ {
			for _, v := range variants {
				u, err := v.run(ctx)
				if err != nil {
					return err
				}
				fmt.Fprintf(stdout, "  %-28s %7.0f cancels/s  worker %4.0f µs  redis %4.0f µs, %4.1f cmds, %3.1f round trips\n",
					v.label, u.perSec(), u.us(u.workerCPU), u.us(u.redisCPU), float64(u.redisCmds)/float64(u.n), float64(u.roundTrips)/float64(u.n))
			}
		}
		return nil
	}
	res := make([][]usage, len(variants))
	for r := 1; r <= *rounds; r++ {
		for i, v := range variants {
			u, err := v.run(ctx)
			if err != nil {
				return fmt.Errorf("%s: %w", v.label, err)
			}
			res[i] = append(res[i], u)
			fmt.Fprintf(stdout, "  round %d  %-28s %7.0f cancels/s  worker %4.0f µs  redis %4.0f µs, %4.1f cmds, %3.1f round trips  sandbox %3.0f µs  RSS %4.1f MB\n",
				r, v.label, u.perSec(), u.us(u.workerCPU), u.us(u.redisCPU), float64(u.redisCmds)/float64(u.n),
				float64(u.roundTrips)/float64(u.n), u.us(u.sandboxCPU), u.rssMB)
		}
	}
	fmt.Fprintf(stdout, "\nper cancel, median [min-max] of %d rounds:\n", *rounds)
	fmt.Fprintf(stdout, "  %-28s %-22s %-20s %-20s %-16s %-16s %s\n", "variant", "cancels/s", "worker CPU µs", "Redis CPU µs", "Redis cmds", "round trips", "RSS MB")
	for i, v := range variants {
		u := res[i]
		fmt.Fprintf(stdout, "  %-28s %-22s %-20s %-20s %-16s %-16s %s\n", v.label,
			stat(u, func(u usage) float64 { return u.perSec() }, "%.0f"),
			stat(u, func(u usage) float64 { return u.us(u.workerCPU) }, "%.0f"),
			stat(u, func(u usage) float64 { return u.us(u.redisCPU) }, "%.0f"),
			stat(u, func(u usage) float64 { return float64(u.redisCmds) / float64(u.n) }, "%.1f"),
			stat(u, func(u usage) float64 { return float64(u.roundTrips) / float64(u.n) }, "%.1f"),
			stat(u, func(u usage) float64 { return u.rssMB }, "%.0f"))
	}
	ratio := func(a, b int) []float64 {
		var out []float64
		for r := range res[a] {
			out = append(out, res[a][r].perSec()/res[b][r].perSec())
		}
		return out
	}
	on, weighted, bulk := 3, 0, 1
	r := ratio(on, weighted)
	fmt.Fprintf(stdout, "\nresult: worker (pacing on) / asynq no-op (lanes 6:3:1): %s (target >= 0.85: %s)\n", fmtStat(r, "%.2f"), verdict(median(r) >= 0.85))
	fmt.Fprintf(stdout, "result: worker (pacing on) / asynq no-op (bulk lane only): %s\n", fmtStat(ratio(on, bulk), "%.2f"))
	redisUS := col(res[on], func(u usage) float64 { return u.us(u.redisCPU) })
	workerUS := col(res[on], func(u usage) float64 { return u.us(u.workerCPU) })
	fmt.Fprintf(stdout, "result: Redis CPU per cancel (pacing on) %s µs (target <= 100: %s); projected ceiling of one Redis core: %.0f cancels/s\n",
		fmtStat(redisUS, "%.0f"), verdict(median(redisUS) <= 100), 1e6/median(redisUS))
	fmt.Fprintf(stdout, "result: worker CPU per cancel (pacing on) %s µs (target <= 250: %s)\n", fmtStat(workerUS, "%.0f"), verdict(median(workerUS) <= 250))
	rss := col(res[on], func(u usage) float64 { return u.rssMB })
	fmt.Fprintf(stdout, "result: worker peak RSS at concurrency %d: %s MB (target <= 80: %s)\n", *concurrency, fmtStat(rss, "%.0f"), verdict(slices.Max(rss) <= 80))
	return nil
}

func col(us []usage, f func(usage) float64) []float64 {
	out := make([]float64, len(us))
	for i, u := range us {
		out[i] = f(u)
	}
	return out
}

func stat(us []usage, f func(usage) float64, format string) string {
	return fmtStat(col(us, f), format)
}

// fmtStat prints "median [min-max]".
func fmtStat(v []float64, format string) string {
	return fmt.Sprintf(format+" ["+format+"-"+format+"]", median(v), slices.Min(v), slices.Max(v))
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func measureNoop(ctx context.Context, env *benchEnv, n, concurrency int, lanes string) (usage, error) {
	rdb := env.rdb
	if err := rdb.FlushDB(ctx).Err(); err != nil {
		return usage{}, err
	}
	client := asynq.NewClientFromRedisClient(rdb)
	payload, _ := json.Marshal(tasks.CancelPayload{MessageID: sandbox.NewID(), LocationID: sandbox.NewID(), CampaignID: "bench", RequestedAt: time.Now().UnixMilli()})
	if err := fill(ctx, n, func(i int) error {
		_, err := client.EnqueueContext(ctx, asynq.NewTask(noopType, payload, asynq.TaskID("noop:"+strconv.Itoa(i)), asynq.Queue(tasks.QueueBulk)))
		return err
	}); err != nil {
		return usage{}, err
	}
	return drain(ctx, env, n, nil, env.child(ctx, "_noop", "-redis-url", env.redisURL,
		"-concurrency", strconv.Itoa(concurrency), "-lanes", lanes))
}

func measureOurs(ctx context.Context, env *benchEnv, n, concurrency, locations int, rateLimit string, extra []string) (usage, error) {
	rdb := env.rdb
	if err := rdb.FlushDB(ctx).Err(); err != nil {
		return usage{}, err
	}
	sb, err := startSandboxChild(ctx, env, locations, n/locations, "-rate", "-1", "-daily", strconv.Itoa(1<<30))
	if err != nil {
		return usage{}, err
	}
	defer sb.stop()
	p := producer.New(rdb, producer.Config{Queue: tasks.QueueBulk})
	res := p.EnqueueBatch(ctx, sb.items)
	for _, r := range res {
		if r.Status != producer.Enqueued {
			return usage{}, fmt.Errorf("enqueue: %s %v", r.Status, r.Err)
		}
	}
	// Pacing on runs with a limit that never binds (the sandbox enforces
	// none here): its Redis work is part of the cost measured.
	args := append([]string{"_worker", "-redis-url", env.redisURL, "-concurrency", strconv.Itoa(concurrency), "-api", sb.url,
		"-tokens-file", sb.tokens, "-rate-limit", rateLimit}, extra...)
	return drainAll(ctx, env, sb, env.child(ctx, args...))
}

// drainAll drains the sandbox's campaign through the worker processes and
// checks that the sandbox cancelled every message.
func drainAll(ctx context.Context, env *benchEnv, sb *sandboxChild, cmds ...*exec.Cmd) (usage, error) {
	u, err := drain(ctx, env, len(sb.items), sb, cmds...)
	if err != nil {
		return u, err
	}
	st, err := sb.stats()
	if err != nil {
		return u, err
	}
	if st.Cancelled != int64(len(sb.items)) {
		return u, fmt.Errorf("sandbox cancelled %d of %d", st.Cancelled, len(sb.items))
	}
	return u, nil
}

// sandboxChild is the sandbox in its own process (its CPU is measured
// apart from the worker's).
type sandboxChild struct {
	cmd    *exec.Cmd
	url    string
	tokens string
	items  []producer.Item
}

func startSandboxChild(ctx context.Context, env *benchEnv, locations, perLocation int, flags ...string) (*sandboxChild, error) {
	dir, err := os.MkdirTemp(env.dir, "sandbox-")
	if err != nil {
		return nil, err
	}
	ids, toks := filepath.Join(dir, "ids.csv"), filepath.Join(dir, "tokens.json")
	args := append([]string{"_sandbox", "-locations", strconv.Itoa(locations), "-messages", strconv.Itoa(perLocation),
		"-ids-out", ids, "-tokens-out", toks}, flags...)
	cmd := env.child(ctx, args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &sandboxChild{cmd: cmd, tokens: toks}
	sc := bufio.NewScanner(out)
	if !sc.Scan() {
		s.stop()
		return nil, errors.New("sandbox child did not start")
	}
	s.url = strings.TrimSpace(sc.Text())
	go func() { _, _ = io.Copy(io.Discard, out) }()
	f, err := os.Open(ids)
	if err != nil {
		s.stop()
		return nil, err
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		s.stop()
		return nil, err
	}
	for _, r := range rows[1:] {
		s.items = append(s.items, producer.Item{Kind: ghl.KindMessage, MessageID: r[0], LocationID: r[1], CampaignID: "bench"})
	}
	return s, nil
}

func (s *sandboxChild) pid() int { return s.cmd.Process.Pid }

func (s *sandboxChild) stats() (sandbox.Stats, error) {
	var st sandbox.Stats
	resp, err := http.Get(s.url + "/_sandbox/stats")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

func (s *sandboxChild) stop() {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	_ = s.cmd.Wait()
}

// sandboxMain is the _sandbox child: it seeds locations with scheduled SMS,
// writes their ids and tokens, prints its URL and serves until SIGTERM.
func sandboxMain(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("_sandbox", flag.ContinueOnError)
	locations := fs.Int("locations", 50, "")
	perLocation := fs.Int("messages", 400, "")
	idsOut := fs.String("ids-out", "", "")
	tokensOut := fs.String("tokens-out", "", "")
	rate := fs.Int("rate", sandbox.RateMaxDefault, "")
	interval := fs.Duration("rate-interval", sandbox.RateIntervalDefault, "")
	window := fs.String("window", "fixed", "")
	daily := fs.Int("daily", sandbox.DailyLimitDefault, "")
	latency := fs.Duration("latency", 0, "")
	sweepMessages := fs.Int("sweep-messages", 0, "seed the first location with this many conversation messages instead")
	sweepScheduled := fs.Int("sweep-scheduled", 0, "of which still scheduled (the rest sent)")
	agency := fs.String("agency", "", "also an agency (Company) whose app is installed at every location; its refresh token goes to <tokens-out>.agency")
	if err := fs.Parse(args); err != nil {
		return err
	}
	stop, err := cpuProfileTo(os.Getenv("BENCH_SANDBOX_CPUPROFILE"))
	if err != nil {
		return err
	}
	defer stop()
	sb := sandbox.New(sandbox.Config{RateMax: *rate, RateInterval: *interval, RateWindow: *window, DailyLimit: *daily,
		Faults: sandbox.Faults{Latency: *latency}})
	var b strings.Builder
	b.WriteString("message_id,location_id\n")
	toks := map[string]string{}
	for i := range *locations {
		loc := fmt.Sprintf("benchLocation%07d", i)
		tok := "bench-" + sandbox.NewID()
		sb.AddLocation(loc, tok)
		toks[loc] = tok
		for _, id := range sb.ScheduleN(loc, *perLocation, false) {
			fmt.Fprintf(&b, "%s,%s\n", id, loc)
		}
		if i == 0 && *sweepMessages > 0 {
			specs := make([]sandbox.MessageSpec, *sweepMessages)
			for j := range specs {
				specs[j] = sandbox.MessageSpec{Contact: fmt.Sprintf("contact%04d", j%1000), Email: j%10 == 9}
				if j >= *sweepScheduled {
					specs[j].Status = sandbox.StatusSent
				}
			}
			sb.AddMessages(loc, specs...)
		}
	}
	if err := os.WriteFile(*idsOut, []byte(b.String()), 0o600); err != nil {
		return err
	}
	tb, _ := json.Marshal(toks)
	if err := os.WriteFile(*tokensOut, tb, 0o600); err != nil {
		return err
	}
	if *agency != "" {
		for loc := range toks {
			sb.InstallLocation(*agency, loc, "")
		}
		if err := os.WriteFile(*tokensOut+".agency", []byte(sb.AddAgency(*agency)), 0o600); err != nil {
			return err
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: sb.Handler()}
	go func() { _ = srv.Serve(ln) }()
	fmt.Fprintf(stdout, "http://%s\n", ln.Addr())
	<-ctx.Done()
	return srv.Close()
}

// cpuOf reads a process's user+system CPU time from /proc (10 ms ticks).
func cpuOf(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name (which may hold spaces) start after ')'.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond, nil // USER_HZ is 100 on Linux
}

// redisUsage reads redis-server's CPU and its commands (script bodies'
// included).
func redisUsage(ctx context.Context, rdb *redis.Client) (cpu time.Duration, cmds int64, err error) {
	info, err := rdb.Info(ctx, "cpu", "commandstats").Result()
	if err != nil {
		return 0, 0, err
	}
	var secs float64
	for _, line := range strings.Split(info, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "used_cpu_sys:"), strings.HasPrefix(line, "used_cpu_user:"):
			v, _ := strconv.ParseFloat(line[strings.IndexByte(line, ':')+1:], 64)
			secs += v
		case strings.HasPrefix(line, "cmdstat_"):
			calls := line[strings.Index(line, "calls=")+6:]
			c, _ := strconv.ParseInt(calls[:strings.IndexByte(calls, ',')], 10, 64)
			cmds += c
		}
	}
	return time.Duration(secs * float64(time.Second)), cmds, nil
}

// drain starts the children (worker processes or a no-op server), measures
// from their "ready" until the bulk lane is empty, then stops them: rate,
// the children's and the sandbox's CPU, Redis's CPU and commands, the
// largest child's peak RSS.
func drain(ctx context.Context, env *benchEnv, n int, sb *sandboxChild, cmds ...*exec.Cmd) (usage, error) {
	rdb := env.rdb
	trips := make(chan int64, len(cmds))
	defer func() {
		for _, cmd := range cmds {
			if cmd.Process != nil && cmd.ProcessState == nil {
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
			}
		}
	}()
	for _, cmd := range cmds {
		out, err := cmd.StdoutPipe()
		if err != nil {
			return usage{}, err
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			return usage{}, err
		}
		sc := bufio.NewScanner(out)
		if !sc.Scan() || strings.TrimSpace(sc.Text()) != "ready" {
			return usage{}, errors.New("child did not start")
		}
		go func() { // the child prints its round-trip count when it stops
			var n int64
			for sc.Scan() {
				if v, ok := strings.CutPrefix(sc.Text(), "roundtrips "); ok {
					n, _ = strconv.ParseInt(v, 10, 64)
				}
			}
			trips <- n
		}()
	}
	childCPU := func() (time.Duration, error) {
		var sum time.Duration
		for _, cmd := range cmds {
			c, err := cpuOf(cmd.Process.Pid)
			if err != nil {
				return 0, err
			}
			sum += c
		}
		return sum, nil
	}
	w0, err := childCPU()
	if err != nil {
		return usage{}, err
	}
	var s0 time.Duration
	if sb != nil {
		s0, _ = cpuOf(sb.pid())
	}
	if os.Getenv("BENCH_CMDSTATS") != "" {
		_ = rdb.ConfigResetStat(ctx).Err()
	}
	r0, c0, err := redisUsage(ctx, rdb)
	if err != nil {
		return usage{}, err
	}
	start := time.Now()
	for {
		pend, err1 := rdb.LLen(ctx, "asynq:{bulk}:pending").Result()
		act, err2 := rdb.LLen(ctx, "asynq:{bulk}:active").Result()
		if err := errors.Join(err1, err2); err != nil {
			return usage{}, err
		}
		if pend+act == 0 {
			break
		}
		if time.Since(start) > 5*time.Minute {
			return usage{}, fmt.Errorf("not drained after 5 minutes (%d left)", pend+act)
		}
		time.Sleep(5 * time.Millisecond)
	}
	u := usage{n: n, took: time.Since(start)}
	w1, _ := childCPU()
	u.workerCPU = w1 - w0
	if sb != nil {
		s1, _ := cpuOf(sb.pid())
		u.sandboxCPU = s1 - s0
	}
	r1, c1, err := redisUsage(ctx, rdb)
	if err != nil {
		return usage{}, err
	}
	if os.Getenv("BENCH_CMDSTATS") != "" { // where Redis's time went, per cancel
		info := rdb.Info(ctx, "commandstats").Val()
		for _, line := range strings.Split(info, "\n") {
			if strings.HasPrefix(line, "cmdstat_") {
				fmt.Fprintln(os.Stderr, "   ", strings.TrimSpace(line))
			}
		}
	}
	for _, cmd := range cmds {
		if mb, err := peakRSS(cmd.Process.Pid); err == nil {
			u.rssMB = max(u.rssMB, mb)
		}
	}
	// The polling above costs two LLEN per 5 ms: take them out.
	polls := int64(u.took/(5*time.Millisecond)) * 2
	u.redisCPU, u.redisCmds = r1-r0, c1-c0-polls
	for _, cmd := range cmds {
		_ = cmd.Process.Signal(syscall.SIGTERM)
	}
	for range cmds {
		u.roundTrips += <-trips
	}
	for _, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			return usage{}, fmt.Errorf("child exit: %w", err)
		}
	}
	return u, nil
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}
