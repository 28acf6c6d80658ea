// Command enqueue puts cancel tasks on the queue and operates dead letters.
//
//	enqueue [flags] ID...                  cancel these messages
//	enqueue [flags] --file ids.csv         cancel every message in a file (- for stdin)
//	enqueue dead list [filters]            show dead letters
//	enqueue dead requeue [filters|--all]   put dead letters back on their lane
//	enqueue sweep --location L [filters]   find what is still scheduled and cancel it
package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/ghlcancel/ghlcancel/internal/campaign"
	"github.com/ghlcancel/ghlcancel/internal/deadletter"
	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/producer"
	"github.com/ghlcancel/ghlcancel/internal/ratelimit"
	"github.com/ghlcancel/ghlcancel/internal/redisconn"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdin, os.Stdout, os.Stderr)
	if err != nil {
		if !errors.Is(err, errReported) {
			fmt.Fprintln(os.Stderr, "enqueue:", err)
		}
		var ue usageError
		if errors.As(err, &ue) || errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// errReported: the failure was already explained on stderr.
var errReported = errors.New("failed")

type usageError struct{ error }

const (
	envRedisURL     = "REDIS_URL"
	redisURLDefault = "redis://127.0.0.1:6379/0"
)

type env struct {
	getenv         func(string) string
	stdin          io.Reader
	stdout, stderr io.Writer
}

func run(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) error {
	e := env{getenv: getenv, stdin: stdin, stdout: stdout, stderr: stderr}
	if len(args) > 0 && args[0] == "dead" {
		return e.dead(ctx, args[1:])
	}
	if len(args) > 0 && args[0] == "tokens" {
		return e.tokens(ctx, args[1:])
	}
	if len(args) > 0 && args[0] == "sweep" {
		return e.sweep(ctx, args[1:])
	}
	if len(args) > 0 && args[0] == "parked" {
		return e.parked(ctx, args[1:])
	}
	if len(args) > 0 && (args[0] == "status" || args[0] == "report" || args[0] == "campaigns") {
		return e.campaigns(ctx, args[0], args[1:])
	}
	return e.enqueue(ctx, args)
}

func (e env) redisFlag(fs *flag.FlagSet) *string {
	def := e.getenv(envRedisURL)
	if def == "" {
		def = redisURLDefault
	}
	return fs.String("redis-url", def, "Redis URL redis://[:password@]host:port/db (env "+envRedisURL+")")
}

func connect(ctx context.Context, url string) (*redis.Client, error) {
	rdb, addr, err := redisconn.Open(url, 64)
	if err != nil {
		return nil, usageError{err}
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := rdb.Ping(pctx).Err(); err != nil {
		_ = rdb.Close()
		return nil, fmt.Errorf("cannot reach Redis at %s: %w (is it running? is REDIS_URL right?)", addr, err)
	}
	return rdb, nil
}

func (e env) enqueue(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("enqueue", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		fmt.Fprint(e.stderr, `usage: enqueue [flags] ID...
       enqueue [flags] --file PATH|-     (one id per line, or CSV with header message_id[,location_id][,kind][,campaign_id][,send_at])
       enqueue dead list|requeue [flags]
flags:
`)
		fs.PrintDefaults()
	}
	redisURL := e.redisFlag(fs)
	location := fs.String("location", "", "location (sub-account) id of the messages, unless the file has a location_id column")
	retention := fs.Duration("campaign-retention", envDur(e.getenv("CAMPAIGN_RETENTION"), campaign.RetentionDefault), "how long the campaign's counters and report are kept after its last update (env CAMPAIGN_RETENTION)")
	campaign := fs.String("campaign", "", "campaign id to group these cancels under")
	kindFlag := fs.String("kind", "message", "message or email, unless the file has a kind column")
	urgent := fs.Bool("urgent", false, "use the urgent lane")
	queue := fs.String("queue", "", "lane: urgent, default or bulk (default: bulk with --file, default otherwise)")
	file := fs.String("file", "", "read ids from this file, - for stdin")
	maxRetry := fs.Int("max-retry", tasks.MaxRetryDefault, "retries per task before it is dead-lettered")
	parallel := fs.Int("parallel", producer.ParallelDefault, "enqueues in flight")
	asJSON := fs.Bool("json", false, "print the summary as JSON")
	force := fs.Bool("force", false, "cancel again messages that already have an outcome (cancelled, not found, expired...): HighLevel is called again")
	dryRun := fs.Bool("dry-run", false, "validate and count only: per location and kind, duplicates, invalid lines, minimum duration")
	rateLimit := fs.String("rate-limit", "100/10s", "dry run: HighLevel's per-location limit, N/period")
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	kind, err := ghl.ParseKind(*kindFlag)
	if err != nil {
		return usageError{err}
	}
	lane := *queue
	switch {
	case *urgent && lane != "" && lane != tasks.QueueUrgent:
		return usageError{errors.New("--urgent and --queue disagree")}
	case *urgent:
		lane = tasks.QueueUrgent
	case lane == "" && *file != "":
		lane = tasks.QueueBulk
	case lane == "":
		lane = tasks.QueueDefault
	}
	if !producer.ValidQueue(lane) {
		return usageError{fmt.Errorf("--queue %q: want urgent, default or bulk", lane)}
	}
	if (*file == "") == (fs.NArg() == 0) {
		fs.Usage()
		return usageError{errors.New("give message ids as arguments or --file, not both and not neither")}
	}

	var in io.Reader
	var total int64 = -1
	switch {
	case *file == "-":
		in = e.stdin
	case *file != "":
		f, err := os.Open(*file)
		if err != nil {
			return err
		}
		defer f.Close()
		in = f
	default:
		in = strings.NewReader(strings.Join(fs.Args(), "\n"))
		total = int64(fs.NArg())
	}
	defaults := producer.Item{Kind: kind, LocationID: *location, CampaignID: *campaign, Force: *force}
	if *dryRun {
		lim, err := ratelimit.ParseLimit(*rateLimit)
		if err != nil {
			return usageError{err}
		}
		return e.dryRun(in, defaults, lim, *asJSON)
	}
	rdb, err := connect(ctx, *redisURL)
	if err != nil {
		return err
	}
	defer rdb.Close()

	p := producer.New(rdb, producer.Config{Queue: lane, MaxRetry: producer.Retries(*maxRetry), Parallel: *parallel, CampaignRetention: *retention})
	sum, err := producer.EnqueueReader(ctx, p, in, defaults, total, e.stderr)
	if *asJSON {
		_ = json.NewEncoder(e.stdout).Encode(sum)
	} else {
		fmt.Fprintf(e.stdout, "enqueued %d, requeued %d, already queued %d, already done %d, rejected %d (lane %s)\n",
			sum.Enqueued, sum.Requeued, sum.AlreadyQueued, sum.AlreadyDone, sum.Rejected, lane)
		if sum.AlreadyDone > 0 && !*force {
			fmt.Fprintf(e.stderr, "enqueue: %d message(s) already have an outcome (see `enqueue report`); --force cancels them again\n", sum.AlreadyDone)
		}
	}
	if err != nil {
		return err
	}
	if sum.Rejected > 0 {
		fmt.Fprintf(e.stderr, "enqueue: %d line(s) rejected; see the messages above\n", sum.Rejected)
		return errReported
	}
	return nil
}

func (e env) dead(ctx context.Context, args []string) error {
	if len(args) == 0 || (args[0] != "list" && args[0] != "requeue" && args[0] != "purge" && args[0] != "export") {
		return usageError{errors.New("usage: enqueue dead list|requeue|purge|export [--reason R] [--campaign C] [--location L] [--kind K] [--older-than D] [--newer-than D] [--json] [--limit N] [--all] [--yes]")}
	}
	cmd := args[0]
	fs := flag.NewFlagSet("dead "+cmd, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	redisURL := e.redisFlag(fs)
	var f deadletter.Filter
	fs.StringVar(&f.Reason, "reason", "", "only this reason (unauthorized, bad_request, no_token, invalid_payload, ...)")
	fs.StringVar(&f.CampaignID, "campaign", "", "only this campaign")
	fs.StringVar(&f.LocationID, "location", "", "only this location")
	fs.StringVar(&f.Kind, "kind", "", "only message or email")
	fs.DurationVar(&f.OlderThan, "older-than", 0, "only records dead longer ago than this")
	fs.DurationVar(&f.NewerThan, "newer-than", 0, "only records dead more recently than this")
	asJSON := fs.Bool("json", false, "JSON lines, one record per line")
	limit := fs.Int("limit", 100, "list: at most this many records (0 for all)")
	all := fs.Bool("all", false, "requeue, purge: every record (required when no filter is given)")
	yes := fs.Bool("yes", false, "purge: do not ask for confirmation")
	if err := fs.Parse(args[1:]); err != nil {
		return usageError{err}
	}
	rdb, err := connect(ctx, *redisURL)
	if err != nil {
		return err
	}
	defer rdb.Close()
	store := deadletter.New(rdb)

	switch cmd {
	case "purge":
		return e.purge(ctx, store, f, *all, *yes)
	case "export":
		// JSON lines of every matching record, for archiving or analysis.
		enc := json.NewEncoder(e.stdout)
		n := 0
		err := store.Scan(ctx, f, func(r deadletter.Record) error { n++; return enc.Encode(r) })
		fmt.Fprintf(e.stderr, "exported %d records\n", n)
		return err
	}
	if cmd == "requeue" {
		if f == (deadletter.Filter{}) && !*all {
			return usageError{errors.New("dead requeue: give a filter (--reason, --campaign, --location, --kind, --older-than, --newer-than) or --all")}
		}
		total, _ := store.Count(ctx)
		p := producer.New(rdb, producer.Config{})
		st, err := p.Requeue(ctx, store, f, func(s producer.RequeueStats) {
			fmt.Fprintf(e.stderr, "requeue: %d requeued, %d already queued, %d already done, %d skipped (of %d records)\n",
				s.Requeued, s.AlreadyQueued, s.AlreadyDone, s.Skipped, total)
		})
		if *asJSON {
			_ = json.NewEncoder(e.stdout).Encode(st)
		} else {
			fmt.Fprintf(e.stdout, "requeued %d, already queued %d, already done %d, skipped %d (not rebuildable, left in place)\n",
				st.Requeued, st.AlreadyQueued, st.AlreadyDone, st.Skipped)
		}
		return err
	}

	tw := tabwriter.NewWriter(e.stdout, 2, 4, 2, ' ', 0)
	if !*asJSON {
		fmt.Fprintln(tw, "DEAD_AT\tTASK_ID\tLOCATION\tCAMPAIGN\tREASON\tHTTP\tATTEMPTS\tAPI_MESSAGE")
	}
	shown, matched := 0, 0
	enc := json.NewEncoder(e.stdout)
	err = store.ScanNewest(ctx, f, func(r deadletter.Record) error { // newest first
		matched++
		if *limit > 0 && shown >= *limit {
			return nil
		}
		shown++
		if *asJSON {
			return enc.Encode(r)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", r.DeadAt.UTC().Format(time.RFC3339), r.TaskID,
			dash(r.LocationID), dash(r.CampaignID), r.Reason, r.HTTPStatus, r.Attempts, dash(r.APIMessage))
		return nil
	})
	_ = tw.Flush()
	if err != nil {
		return err
	}
	if !*asJSON {
		fmt.Fprintf(e.stderr, "%d shown, %d matching\n", shown, matched)
	}
	return nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// parked lists locations whose tasks wait for HighLevel's daily budget.
func (e env) parked(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("parked", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	redisURL := e.redisFlag(fs)
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	rdb, err := connect(ctx, *redisURL)
	if err != nil {
		return err
	}
	defer rdb.Close()
	parked, err := ratelimit.Parked(ctx, rdb)
	if err != nil {
		return err
	}
	if len(parked) == 0 {
		fmt.Fprintln(e.stdout, "no location is parked")
		return nil
	}
	tw := tabwriter.NewWriter(e.stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "LOCATION\tWHY")
	for loc, why := range parked {
		fmt.Fprintf(tw, "%s\t%s\n", loc, why)
	}
	return tw.Flush()
}

// campaigns serves status, report and campaigns.
func (e env) campaigns(ctx context.Context, cmd string, args []string) error {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	redisURL := e.redisFlag(fs)
	asJSON := fs.Bool("json", false, "JSON output")
	watch := fs.Bool("watch", false, "status: refresh every 2 s until the campaign completes")
	limit := fs.Int("limit", 20, "campaigns: how many, newest first")
	// Flags may follow the campaign id: enqueue status spring-sale --json.
	var pos []string
	rest := args
	for len(rest) > 0 {
		if err := fs.Parse(rest); err != nil {
			return usageError{err}
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	if (cmd == "campaigns") != (len(pos) == 0) || len(pos) > 1 {
		return usageError{fmt.Errorf("usage: enqueue status CAMPAIGN [--json] [--watch] | enqueue report CAMPAIGN > out.csv | enqueue campaigns [--limit N] [--json]")}
	}
	rdb, err := connect(ctx, *redisURL)
	if err != nil {
		return err
	}
	defer rdb.Close()
	tr := campaign.New(rdb, 0)
	switch cmd {
	case "campaigns":
		list, err := tr.List(ctx, *limit)
		if err != nil {
			return err
		}
		if *asJSON {
			return json.NewEncoder(e.stdout).Encode(list)
		}
		tw := tabwriter.NewWriter(e.stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "CAMPAIGN\tSTARTED\tDONE\tTOTAL\tCANCELLED\tNOT_CANCELLABLE\tEXPIRED\tDEAD\tCOMPLETE")
		for _, s := range list {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%t\n", s.Campaign, s.StartedAt.UTC().Format(time.RFC3339),
				s.Done, s.Total, s.Cancelled, s.NotCancellable, s.Expired, s.DeadLettered, s.Complete)
		}
		return tw.Flush()
	case "report":
		if _, ok, err := tr.Get(ctx, pos[0]); err != nil || !ok {
			return cmp.Or(err, fmt.Errorf("no campaign %q (unknown, or older than its retention)", pos[0]))
		}
		n, err := tr.WriteReport(ctx, pos[0], e.stdout)
		fmt.Fprintf(e.stderr, "report: %d rows\n", n)
		return err
	}
	var prev campaign.Status
	var prevAt time.Time
	for {
		s, ok, err := tr.Get(ctx, pos[0])
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("no campaign %q (unknown, or older than its retention)", pos[0])
		}
		if s.Parked, err = tr.Parked(ctx, pos[0]); err != nil {
			return err
		}
		if err := tr.WithSweeps(ctx, &s); err != nil {
			return err
		}
		if *asJSON {
			if err := json.NewEncoder(e.stdout).Encode(s); err != nil {
				return err
			}
		} else {
			fmt.Fprintln(e.stdout, s.Render(prev, prevAt))
		}
		if !*watch || s.Complete {
			return nil
		}
		prev, prevAt = s, time.Now()
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(2 * time.Second):
		}
	}
}

// purge deletes matching dead letters (and their copies in asynq's archive)
// after asking, page by page so 100,000 records never block Redis.
func (e env) purge(ctx context.Context, store *deadletter.Store, f deadletter.Filter, all, yes bool) error {
	if f == (deadletter.Filter{}) && !all {
		return usageError{errors.New("dead purge: give a filter (--reason, --campaign, --location, --kind, --older-than, --newer-than) or --all")}
	}
	n := 0
	if err := store.Scan(ctx, f, func(deadletter.Record) error { n++; return nil }); err != nil {
		return err
	}
	if n == 0 {
		fmt.Fprintln(e.stdout, "no matching dead letters")
		return nil
	}
	if !yes {
		fmt.Fprintf(e.stderr, "delete %d dead letters for good? type yes: ", n)
		line, _ := bufio.NewReader(e.stdin).ReadString('\n')
		if strings.TrimSpace(line) != "yes" {
			return errors.New("not confirmed; nothing deleted (use --yes to skip the question)")
		}
	}
	insp := asynq.NewInspectorFromRedisClient(store.Client())
	var batch []string
	deleted := 0
	flush := func() error {
		if err := store.Remove(ctx, batch...); err != nil {
			return err
		}
		deleted += len(batch)
		batch = batch[:0]
		return nil
	}
	err := store.Scan(ctx, f, func(r deadletter.Record) error {
		if info, err := insp.GetTaskInfo(r.Queue, r.TaskID); err == nil && info.State == asynq.TaskStateArchived {
			_ = insp.DeleteTask(r.Queue, r.TaskID)
		}
		batch = append(batch, r.TaskID)
		if len(batch) >= deadletter.PageSize {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	fmt.Fprintf(e.stdout, "purged %d dead letters\n", deleted)
	return err
}

// DryRun is what --dry-run found.
type DryRun struct {
	Valid       int                       `json:"valid"`
	Duplicates  int                       `json:"duplicates"`
	Invalid     int                       `json:"invalid"`
	ByLocation  map[string]map[string]int `json:"by_location"` // location -> kind -> count
	MinDuration string                    `json:"min_duration"`
	Busiest     string                    `json:"busiest_location,omitempty"`
}

// dryRun reads the input as enqueue would and reports without touching
// Redis. It keeps every distinct id in memory to find duplicates.
func (e env) dryRun(in io.Reader, defaults producer.Item, lim ratelimit.Limit, asJSON bool) error {
	rd := producer.NewReader(in, defaults)
	d := DryRun{ByLocation: map[string]map[string]int{}}
	seen := map[string]struct{}{}
	perLoc := map[string]int{}
	for {
		l, ok := rd.Next()
		if !ok {
			if l.Err != nil {
				return fmt.Errorf("line %d: %w", l.N, l.Err)
			}
			break
		}
		if l.Err != nil {
			d.Invalid++
			if d.Invalid <= 100 {
				fmt.Fprintf(e.stderr, "line %d: %v\n", l.N, l.Err)
			}
			continue
		}
		key := tasks.TaskID(l.Item.Kind, l.Item.MessageID)
		if _, dup := seen[key]; dup {
			d.Duplicates++
			continue
		}
		seen[key] = struct{}{}
		d.Valid++
		if d.ByLocation[l.Item.LocationID] == nil {
			d.ByLocation[l.Item.LocationID] = map[string]int{}
		}
		d.ByLocation[l.Item.LocationID][string(l.Item.Kind)]++
		perLoc[l.Item.LocationID]++
	}
	// Locations run in parallel, each at its own limit: the busiest decides.
	var longest time.Duration
	for loc, n := range perLoc {
		dur := time.Duration(float64(n) / float64(lim.N) * float64(lim.Period))
		if dur > longest {
			longest, d.Busiest = dur, loc
		}
	}
	d.MinDuration = longest.Round(time.Second).String()
	if asJSON {
		return json.NewEncoder(e.stdout).Encode(d)
	}
	tw := tabwriter.NewWriter(e.stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "LOCATION\tMESSAGES\tEMAILS")
	locs := make([]string, 0, len(d.ByLocation))
	for loc := range d.ByLocation {
		locs = append(locs, loc)
	}
	slices.Sort(locs)
	for _, loc := range locs {
		fmt.Fprintf(tw, "%s\t%d\t%d\n", loc, d.ByLocation[loc]["message"], d.ByLocation[loc]["email"])
	}
	_ = tw.Flush()
	fmt.Fprintf(e.stdout, "dry run: %d valid, %d duplicates, %d invalid, %d locations; at %d per %s per location it takes at least %s (busiest: %s)\n",
		d.Valid, d.Duplicates, d.Invalid, len(locs), lim.N, lim.Period, d.MinDuration, d.Busiest)
	if d.Invalid > 0 {
		return errReported
	}
	return nil
}

func envDur(v string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(v); err == nil && d > 0 {
		return d
	}
	return def
}
