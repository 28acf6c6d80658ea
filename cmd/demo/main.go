// Command demo runs ghlcancel end to end on one machine with nothing but Go:
// an embedded Redis (miniredis) unless -redis-url is given, the sandbox
// HighLevel API seeded with scheduled messages across several locations, a
// worker, and a campaign enqueued from a CSV file through the same code as
// the enqueue command. It shows live progress, verifies the result against
// the sandbox, prints a per-outcome summary, and keeps serving /metrics until
// Ctrl-C (or exits at once with -exit).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"

	"github.com/ghlcancel/ghlcancel/internal/campaign"
	"github.com/ghlcancel/ghlcancel/internal/deadletter"
	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/intake"
	"github.com/ghlcancel/ghlcancel/internal/logging"
	"github.com/ghlcancel/ghlcancel/internal/producer"
	"github.com/ghlcancel/ghlcancel/internal/sandbox"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
	"github.com/ghlcancel/ghlcancel/internal/tokens"
	"github.com/ghlcancel/ghlcancel/internal/webhook"
	"github.com/ghlcancel/ghlcancel/internal/worker"
	"github.com/ghlcancel/ghlcancel/metrics"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return // -h: the usage was printed
		}
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

type options struct {
	locations, perLocation, unknown, badToken, concurrency int
	rateMax                                                int
	rateInterval                                           time.Duration
	faultRate                                              float64
	latency                                                time.Duration
	redisURL, metricsAddr, workDir                         string
	exit                                                   bool
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	fs.IntVar(&o.locations, "locations", 5, "locations (sub-accounts) in the sandbox")
	fs.IntVar(&o.perLocation, "messages", 200, "scheduled messages per location (odd locations schedule emails)")
	fs.IntVar(&o.unknown, "unknown", 50, "ids HighLevel does not know (end not_found: the cancel and the read-back find nothing)")
	fs.IntVar(&o.badToken, "bad-token", 30, "messages in a location whose token HighLevel rejects (end dead-lettered)")
	fs.IntVar(&o.concurrency, "concurrency", 50, "worker concurrency")
	fs.IntVar(&o.rateMax, "rate", 100, "sandbox limit: requests per -rate-interval per location (HighLevel: 100 per 10s)")
	fs.DurationVar(&o.rateInterval, "rate-interval", 10*time.Second, "sandbox rate-limit window")
	fs.Float64Var(&o.faultRate, "fault-rate", 0.05, "share of sandbox answers that are 5xx")
	fs.DurationVar(&o.latency, "latency", 20*time.Millisecond, "sandbox latency per call")
	// Not REDIS_URL: a shell set up for a real deployment would hand the
	// demo's worker that Redis's queue, with sandbox tokens.
	fs.StringVar(&o.redisURL, "redis-url", "", "use this Redis instead of the embedded one: an empty database (REDIS_URL is not read)")
	fs.StringVar(&o.metricsAddr, "metrics-addr", "127.0.0.1:9464", "where to serve /metrics, /healthz, /readyz")
	fs.StringVar(&o.workDir, "dir", "", "where to write the campaign CSV and tokens file (default: a temp dir)")
	fs.BoolVar(&o.exit, "exit", false, "exit when done instead of serving metrics until Ctrl-C")
	logFlags := logging.Flags(fs, func(k string) string {
		if k == "LOG_LEVEL" && getenv(k) == "" {
			return "error" // keep the demo's screen for progress
		}
		return getenv(k)
	})
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.locations < 1 || o.perLocation < 0 || o.unknown < 0 || o.badToken < 0 {
		return errors.New("-locations must be at least 1; counts cannot be negative")
	}
	if o.faultRate < 0 || o.faultRate >= 1 {
		// 5 meaning 5% would make every answer a 5xx: the demo never ends.
		return fmt.Errorf("-fault-rate %g: want a share from 0 to below 1 (0.05 is 5%%)", o.faultRate)
	}
	log, err := logFlags.Logger(stderr)
	if err != nil {
		return err
	}

	// Redis.
	redisURL := o.redisURL
	if redisURL == "" {
		mr := miniredis.NewMiniRedis()
		if err := mr.StartAddr("127.0.0.1:0"); err != nil {
			return fmt.Errorf("embedded redis: %w", err)
		}
		defer mr.Close()
		redisURL = "redis://" + mr.Addr() + "/0"
		fmt.Fprintf(stdout, "redis:    embedded (miniredis) at %s\n", redisURL)
		if getenv("REDIS_URL") != "" {
			fmt.Fprintln(stdout, "          (REDIS_URL is set and not used: the demo runs on -redis-url only)")
		}
	} else {
		fmt.Fprintf(stdout, "redis:    %s\n", redisURL)
	}
	ropt, err := redis.ParseURL(redisURL)
	if err != nil {
		return fmt.Errorf("redis url: %w", err)
	}
	ropt.PoolSize = o.concurrency + 50
	rdb := redis.NewClient(ropt)
	defer rdb.Close()
	if err := rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("cannot reach Redis at %s: %w", ropt.Addr, err)
	}
	if o.redisURL != "" {
		// The demo's worker takes whatever ghlcancel tasks that database
		// holds (with sandbox tokens: real cancels would be dead-lettered)
		// and its campaigns mix with what is there, an earlier demo's too.
		n, err := rdb.DBSize(ctx).Result()
		if err != nil {
			return fmt.Errorf("redis at %s: %w", ropt.Addr, err)
		}
		if n > 0 {
			return fmt.Errorf("redis database %d at %s holds %d keys: the demo's worker would take any tasks queued there and its results would mix with what is there; "+
				"give -redis-url an empty database (e.g. redis://%s/%d), or empty this one if it only holds an earlier demo (redis-cli -u '<url>' FLUSHDB)",
				ropt.DB, ropt.Addr, n, ropt.Addr, (ropt.DB+1)%16)
		}
	}

	// Sandbox API with scheduled messages.
	sb := sandbox.New(sandbox.Config{RateMax: o.rateMax, RateInterval: o.rateInterval,
		Faults: sandbox.Faults{ErrorRate: o.faultRate, Latency: o.latency, LatencyJitter: o.latency}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	api := &http.Server{Handler: sb.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = api.Serve(ln) }()
	defer api.Close()
	apiURL := "http://" + ln.Addr().String()
	fmt.Fprintf(stdout, "sandbox:  HighLevel API stand-in at %s (%d per %s per location, %.0f%% 5xx)\n",
		apiURL, o.rateMax, o.rateInterval, o.faultRate*100)

	dir := o.workDir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "ghlcancel-demo-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	}
	csvPath, tokPath, scheduled, sweepMsgs, err := seed(sb, o, dir)
	if err != nil {
		return err
	}
	src, err := tokens.NewFile(tokPath, nil)
	if err != nil {
		return err
	}

	// Worker.
	reg := prometheus.NewRegistry()
	w, err := worker.New(worker.Config{
		Redis: rdb, GHL: ghl.Config{BaseURL: apiURL}, Tokens: src, Concurrency: o.concurrency,
		Logger: log, Registry: reg, ShutdownTimeout: 10 * time.Second,
	})
	if err != nil {
		return err
	}
	mln, err := net.Listen("tcp", o.metricsAddr)
	if err != nil {
		return fmt.Errorf("metrics listener on %s: %w (pick another with -metrics-addr)", o.metricsAddr, err)
	}
	msrv := &http.Server{Handler: w.HTTPHandler(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = msrv.Serve(mln) }()
	defer msrv.Close()
	fmt.Fprintf(stdout, "metrics:  http://%s/metrics\n", mln.Addr())
	wctx, stopWorker := context.WithCancel(context.Background())
	werr := make(chan error, 1)
	go func() { werr <- w.Run(wctx) }()
	defer func() { stopWorker(); <-werr }()

	// Enqueue the campaign exactly as `enqueue --file` does.
	f, err := os.Open(csvPath)
	if err != nil {
		return err
	}
	total := o.locations*o.perLocation + o.unknown + o.badToken
	fmt.Fprintf(stdout, "campaign: enqueueing %d cancels from %s\n", total, csvPath)
	p := producer.New(rdb, producer.Config{Queue: tasks.QueueBulk})
	start := time.Now()
	sum, err := producer.EnqueueReader(ctx, p, f, producer.Item{Kind: ghl.KindMessage, CampaignID: "demo-campaign"}, int64(total), stderr)
	f.Close()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "campaign: enqueued %d, already queued %d, rejected %d\n", sum.Enqueued, sum.AlreadyQueued, sum.Rejected)

	// Live progress until every task reached a terminal outcome.
	target := float64(sum.Enqueued)
	tracker := campaign.New(rdb, 0)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		mfs, err := reg.Gather()
		if err != nil {
			return err
		}
		// The campaign's own counters: each message's one recorded outcome.
		cs, _, err := tracker.Get(ctx, "demo-campaign")
		if err != nil {
			return err
		}
		terminal := float64(cs.Done)
		live := 0.0
		for _, st := range []string{"pending", "active", "scheduled", "retry"} {
			live += metrics.Sum(mfs, "ghlcancel_queue_tasks", "state", st)
		}
		el := time.Since(start).Seconds()
		fmt.Fprintf(stdout, "progress: %5.0f/%.0f done (%3.0f%%)  queued %5.0f  retries %4.0f  429s %4.0f  %6.1f tasks/s\n",
			terminal, target, 100*terminal/max(target, 1), live,
			metrics.Sum(mfs, "ghlcancel_retries_total"), metrics.Sum(mfs, "ghlcancel_api_requests_total", "code", "429"),
			terminal/max(el, 0.001))
		if terminal >= target && live == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return errors.New("interrupted before the campaign finished")
		case <-tick.C:
		}
	}
	mfs, _ := reg.Gather()
	took := time.Since(start)
	intakeURL, stopIntake, err := webhookDemo(ctx, stdout, rdb, sb, sweepMsgs)
	if err != nil {
		if ctx.Err() != nil {
			return errors.New("interrupted during the webhook demo (the campaign had finished)")
		}
		return err
	}
	defer stopIntake()
	return report(ctx, stdout, mfs, sb, rdb, scheduled, took, redisURL, mln.Addr().String(), intakeURL, o.exit)
}

// sweepLocation is where the webhook demo's contacts have conversations.
const sweepLocation = "demoLocationSweep001"

// webhookDemo: contactAlice replies by SMS. HighLevel (the sandbox, with
// its own test keys) posts the signed InboundMessage webhook to the intake
// API; AUTO_CANCEL_EVENTS=InboundMessage makes it a sweep of her
// conversations (HighLevel's message export, SMS then email), and
// everything still scheduled for her is cancelled without knowing a single
// id. Bob's messages stay scheduled, sent ones are never touched; both are
// checked message by message in the sandbox.
// The intake keeps serving (its console too) until the demo ends: stop
// closes it.
func webhookDemo(ctx context.Context, w io.Writer, rdb *redis.Client, sb *sandbox.Server, sweepMsgs []sandbox.Added) (base string, stop func(), err error) {
	stop = func() {}
	if err := webhookDemoOn(ctx, w, rdb, sb, sweepMsgs, &base, &stop); err != nil {
		stop()
		return "", func() {}, err
	}
	return base, stop, nil
}

// demoKey is the demo intake's API key; it signs in to its console.
const demoKey = "demo-intake-key-0123456789"

func webhookDemoOn(ctx context.Context, w io.Writer, rdb *redis.Client, sb *sandbox.Server, sweepMsgs []sandbox.Added, base *string, stop *func()) error {
	v, err := sb.Verifier()
	if err != nil {
		return err
	}
	rules, err := webhook.LoadRules("InboundMessage", "all", "")
	if err != nil {
		return err
	}
	srv, err := intake.New(intake.Config{Redis: rdb, Keys: []string{demoKey},
		Webhook: &webhook.Config{Verifier: v, Rules: rules}})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = hs.Serve(ln) }()
	*stop = func() { _ = hs.Close() }
	*base = "http://" + ln.Addr().String()
	url := *base + "/v1/webhooks/highlevel"

	fmt.Fprintf(w, "\nwebhook:  contactAlice replies by SMS; HighLevel posts a signed InboundMessage to %s (AUTO_CANCEL_EVENTS=InboundMessage)\n", url)
	body := sb.EventBody(sandbox.EventSpec{Type: "InboundMessage", Location: sweepLocation, Contact: "contactAlice"})
	start := time.Now()
	code, ans, err := sb.Emit(ctx, url, body, sandbox.EmitOptions{})
	if err != nil {
		return err
	}
	var r webhook.Response
	if err := json.Unmarshal(ans, &r); err != nil || code != http.StatusOK || r.Result != webhook.ResultAccepted {
		return fmt.Errorf("the intake answered %d %s to the webhook", code, ans)
	}
	fmt.Fprintf(w, "webhook:  answered %d %s: sweep %s into campaign %s\n", code, r.Result, r.SweepID, r.CampaignID)
	code, ans, err = sb.Emit(ctx, url, body, sandbox.EmitOptions{})
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "webhook:  the same delivery again: %d %s\n", code, strings.TrimSpace(string(ans)))
	code, ans, err = sb.Emit(ctx, url, sb.EventBody(sandbox.EventSpec{Type: "InboundMessage", Location: sweepLocation, Contact: "contactBob00"}), sandbox.EmitOptions{Tamper: true})
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "webhook:  a tampered one for contactBob00: %d %s\n", code, strings.TrimSpace(string(ans)))

	tr := campaign.New(rdb, 0)
	deadline := time.Now().Add(time.Minute)
	for {
		s, ok, err := tr.Get(ctx, r.CampaignID)
		if err != nil {
			return err
		}
		if ok && s.Complete {
			if err := tr.WithSweeps(ctx, &s); err != nil {
				return err
			}
			fmt.Fprintf(w, "webhook:  %s\n", strings.ReplaceAll(s.Render(campaign.Status{}, time.Time{}), "\n", "\n          "))
			break
		}
		if time.Now().After(deadline) {
			return errors.New("the webhook's sweep did not finish within a minute")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	took := time.Since(start)
	alice, bob := 0, 0
	for _, m := range sweepMsgs {
		st, cancels, _ := sb.MessageStatus(m.CancelID)
		switch {
		case m.Contact == "contactAlice" && m.Scheduled:
			if st != sandbox.StatusCancelled {
				return fmt.Errorf("alice's message %s is %s, want cancelled", m.CancelID, st)
			}
			alice++
		case m.Scheduled:
			if st != sandbox.StatusScheduled {
				return fmt.Errorf("bob's message %s is %s, want still scheduled", m.CancelID, st)
			}
			bob++
		case cancels > 0:
			return fmt.Errorf("sent message %s got a cancel call", m.CancelID)
		}
	}
	fmt.Fprintf(w, "webhook:  verified in the sandbox: Alice's %d scheduled SMS and emails cancelled %.1fs after her reply; Bob's %d still scheduled; no sent message touched\n",
		alice, took.Seconds(), bob)
	return nil
}

// seed fills the sandbox and writes the campaign CSV and the tokens file.
func seed(sb *sandbox.Server, o options, dir string) (csvPath, tokPath string, scheduled []string, sweepMsgs []sandbox.Added, err error) {
	var csv strings.Builder
	csv.WriteString("message_id,location_id,kind\n")
	toks := map[string]string{}
	for i := range o.locations {
		loc := fmt.Sprintf("demoLocation%08d", i)
		tok := "demo-pit-" + sandbox.NewID()
		sb.AddLocation(loc, tok)
		toks[loc] = tok
		email := i%2 == 1
		kind := map[bool]string{false: "message", true: "email"}[email]
		for _, id := range sb.ScheduleN(loc, o.perLocation, email) {
			scheduled = append(scheduled, id)
			fmt.Fprintf(&csv, "%s,%s,%s\n", id, loc, kind)
		}
	}
	for i := range o.unknown {
		fmt.Fprintf(&csv, "%s,demoLocation%08d,message\n", sandbox.NewID(), i%o.locations)
	}
	// The sweep's location: two contacts' conversations, scheduled and sent.
	tok := "demo-pit-" + sandbox.NewID()
	sb.AddLocation(sweepLocation, tok)
	toks[sweepLocation] = tok
	var specs []sandbox.MessageSpec
	for _, c := range []string{"contactAlice", "contactBob00"} {
		for i := range 12 {
			st := sandbox.StatusScheduled
			if i%4 == 3 {
				st = sandbox.StatusSent
			}
			specs = append(specs, sandbox.MessageSpec{Contact: c, Email: i%3 == 0, Status: st})
		}
	}
	sweepMsgs = sb.AddMessages(sweepLocation, specs...)
	if o.badToken > 0 {
		const bad = "demoLocationRevoked1"
		sb.AddLocation(bad, "what-highlevel-expects")
		toks[bad] = "a-revoked-token"
		for _, id := range sb.ScheduleN(bad, o.badToken, false) {
			fmt.Fprintf(&csv, "%s,%s,message\n", id, bad)
		}
	}
	csvPath = filepath.Join(dir, "campaign.csv")
	if err := os.WriteFile(csvPath, []byte(csv.String()), 0o600); err != nil {
		return "", "", nil, nil, err
	}
	b, _ := json.Marshal(toks)
	tokPath = filepath.Join(dir, "tokens.json")
	if err := os.WriteFile(tokPath, b, 0o600); err != nil {
		return "", "", nil, nil, err
	}
	return csvPath, tokPath, scheduled, sweepMsgs, nil
}

func report(ctx context.Context, w io.Writer, mfs []*dto.MetricFamily, sb *sandbox.Server, rdb *redis.Client, scheduled []string,
	took time.Duration, redisURL, metricsAddr, intakeURL string, exit bool) error {
	fmt.Fprintf(w, "\nsummary (%.1fs):\n", took.Seconds())
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  OUTCOME\tTASKS")
	for _, o := range tasks.Outcomes {
		fmt.Fprintf(tw, "  %s\t%.0f\n", o, metrics.Sum(mfs, "ghlcancel_tasks_processed_total", "outcome", o))
	}
	_ = tw.Flush()
	st := sb.Stats()
	fmt.Fprintf(w, "  sandbox's answers to %d calls: %d cancelled (campaign and webhook), %d \"failed to cancel\" (read back: not_found or already_sent above), %d unauthorized, %d rate limited (429), %d injected 5xx\n",
		st.Requests, st.Cancelled, st.NotCancellable, st.Unauthorized, st.RateLimited, st.Faulted5xx)

	notCancelled := 0
	for _, id := range scheduled {
		if s, _, _ := sb.MessageStatus(id); s != sandbox.StatusCancelled {
			notCancelled++
		}
	}
	if cs, ok, err := campaign.New(rdb, 0).Get(ctx, "demo-campaign"); err == nil && ok {
		fmt.Fprintf(w, "\ncampaign status (go run ./cmd/enqueue status demo-campaign --redis-url %s):\n%s\n", redisURL, cs.Render(campaign.Status{}, time.Time{}))
	}
	dead, _ := deadletter.New(rdb).Count(ctx)
	fmt.Fprintf(w, "  verified in the sandbox: %d/%d scheduled messages cancelled; %d dead letters kept for replay\n",
		len(scheduled)-notCancelled, len(scheduled), dead)
	fmt.Fprintf(w, "  inspect: go run ./cmd/enqueue dead list --redis-url %s\n", redisURL)
	if notCancelled > 0 {
		return fmt.Errorf("%d scheduled messages were not cancelled", notCancelled)
	}
	if exit {
		return nil
	}
	fmt.Fprintf(w, "\nserving http://%s/metrics and the console at %s/console/ (sign in with the key %s) until Ctrl-C\n", metricsAddr, intakeURL, demoKey)
	<-ctx.Done()
	return nil
}
