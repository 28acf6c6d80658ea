package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

	"github.com/ghlcancel/ghlcancel/internal/campaign"
	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/producer"
	"github.com/ghlcancel/ghlcancel/internal/ratelimit"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
)

// sendCmd is the root command: queue cancels of the given ids or file.
func (e *env) sendCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "enqueue [flags] ID... | enqueue [flags] --file PATH|-",
		Short: "Queue cancels of scheduled HighLevel messages, and operate on them",
		Long: `Queue cancels of scheduled HighLevel messages: the ids given as arguments, or a file
(- for stdin) with one id per line or a CSV with header
message_id[,location_id][,kind][,campaign_id][,send_at]. Workers run them.

The other commands follow a campaign, inspect and replay dead letters, find what is still
scheduled (sweep), and manage tokens.`,
		Example: `  enqueue --location LOC --urgent MSG_ID
  enqueue --file campaign.csv --campaign spring-sale
  enqueue --file campaign.csv --dry-run`,
		Args: cobra.ArbitraryArgs,
	}
	fs := cmd.Flags()
	location := fs.String("location", "", "location (sub-account) id of the messages, unless the file has a location_id column")
	retention := e.retentionFlag(cmd, "how long the campaign's counters and report are kept after its last update")
	campaignID := fs.String("campaign", "", "campaign id to group these cancels under (a file's campaign_id column wins for the rows that fill it)")
	kindFlag := fs.String("kind", "message", "message or email, unless the file has a kind column")
	urgent := fs.Bool("urgent", false, "use the urgent lane (same as --lane urgent)")
	lane := fs.String("lane", "", "lane: urgent, default or bulk (default: bulk with --file, default otherwise)")
	fs.StringVar(lane, "queue", "", "same as --lane (its earlier name)")
	_ = fs.MarkHidden("queue")
	file := fs.String("file", "", "read ids from this file, - for stdin")
	maxRetry := fs.Int("max-retry", tasks.MaxRetryDefault, "retries per task before it is dead-lettered")
	parallel := fs.Int("parallel", producer.ParallelDefault, "enqueues in flight")
	asJSON := fs.Bool("json", false, "print the summary as JSON")
	force := fs.Bool("force", false, "cancel again messages that already have an outcome (cancelled, not found, expired...): HighLevel is called again")
	dryRun := fs.Bool("dry-run", false, "validate and count only: per location and kind, duplicates, invalid lines, minimum duration")
	rateLimit := fs.String("rate-limit", "100/10s", "dry run: HighLevel's per-location limit, N/period")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) > 0 && len(args[0]) < 20 {
			// Typos too (stauts, campains, deadd), not only prefixes: cobra
			// leaves the distance at 0 outside its own lookup.
			cmd.SuggestionsMinimumDistance = 2
			if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
				return usageError{fmt.Errorf("unknown command %q; did you mean %s? (message ids are 20 characters)", args[0], strings.Join(s, ", "))}
			}
		}
		kind, err := ghl.ParseKind(*kindFlag)
		if err != nil {
			return usageError{err}
		}
		if *parallel < 1 {
			return usageError{fmt.Errorf("--parallel %d: want 1 or more enqueues in flight", *parallel)}
		}
		keep, err := retention()
		if err != nil {
			return err
		}
		l := *lane
		switch {
		case *urgent && l != "" && l != tasks.QueueUrgent:
			return usageError{errors.New("--urgent and --lane (or --queue) disagree")}
		case *urgent:
			l = tasks.QueueUrgent
		case l == "" && *file != "":
			l = tasks.QueueBulk
		case l == "":
			l = tasks.QueueDefault
		}
		if !producer.ValidQueue(l) {
			name := "--lane"
			if fs.Changed("queue") {
				name = "--queue"
			}
			return usageError{fmt.Errorf("%s %q: want urgent, default or bulk", name, l)}
		}
		if *campaignID != "" {
			if err := tasks.ValidateCampaignID(*campaignID); err != nil {
				return usageError{fmt.Errorf("--campaign: %w", err)}
			}
		}
		if (*file == "") == (len(args) == 0) {
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
			in = strings.NewReader(strings.Join(args, "\n"))
			total = int64(len(args))
		}
		defaults := producer.Item{Kind: kind, LocationID: *location, CampaignID: *campaignID, Force: *force}
		if *dryRun {
			lim, err := ratelimit.ParseLimit(*rateLimit)
			if err != nil {
				return usageError{err}
			}
			return e.dryRun(in, defaults, lim, *asJSON)
		}
		ctx := cmd.Context()
		rdb, err := e.connect(ctx)
		if err != nil {
			return err
		}
		defer rdb.Close()
		p := producer.New(rdb, producer.Config{Queue: l, MaxRetry: producer.Retries(*maxRetry), Parallel: *parallel, CampaignRetention: keep})
		sum, err := producer.EnqueueReader(ctx, p, in, defaults, total, e.stderr)
		if *asJSON {
			_ = json.NewEncoder(e.stdout).Encode(sum)
		} else {
			failed := ""
			if sum.Failed > 0 {
				failed = fmt.Sprintf(", not enqueued %d (interrupted or Redis failed)", sum.Failed)
			}
			moved := ""
			if sum.Moved > 0 {
				moved = fmt.Sprintf(" (%d moved here from a slower lane)", sum.Moved)
			}
			fmt.Fprintf(e.stdout, "enqueued %d, requeued %d, already queued %d%s, already done %d, rejected %d%s (lane %s)\n",
				sum.Enqueued, sum.Requeued, sum.AlreadyQueued, moved, sum.AlreadyDone, sum.Rejected, failed, l)
			if sum.AlreadyDone > 0 && !*force {
				fmt.Fprintf(e.stderr, "enqueue: %d message(s) already have an outcome (see `enqueue report`); --force cancels them again\n", sum.AlreadyDone)
			}
			e.sayHeldBy(sum.HeldBy)
			if sum.StayedOnSlower > 0 {
				fmt.Fprintf(e.stderr, "enqueue: %d message(s) already queued on a slower lane stay there, not moved to lane %s: running now, or deep in a long pending backlog; run the same command again in a minute to move them\n",
					sum.StayedOnSlower, l)
			}
		}
		if sum.Enqueued+sum.Requeued+sum.Moved > 0 {
			// Said even when the run stopped part way: what it queued waits.
			e.warnNoWorker(ctx, rdb, "what was queued")
			e.warnParked(ctx, rdb, *campaignID, *location, l == tasks.QueueUrgent)
		}
		if err != nil {
			return err
		}
		if sum.Rejected > 0 {
			fmt.Fprintf(e.stderr, "enqueue: %d line(s) rejected; see the messages above\n", sum.Rejected)
			return errReported
		}
		if sum.Enqueued+sum.Requeued+sum.AlreadyQueued+sum.AlreadyDone == 0 {
			fmt.Fprintln(e.stderr, "enqueue: the input held no message ids (empty, or a header only): nothing was enqueued")
		}
		return nil
	}
	return cmd
}

// DryRun is what --dry-run found.
type DryRun struct {
	Valid       int                       `json:"valid"`
	Duplicates  int                       `json:"duplicates"`
	Invalid     int                       `json:"invalid"`
	ByLocation  map[string]map[string]int `json:"by_location"` // location -> kind -> count
	MinDuration string                    `json:"min_duration"`
	Busiest     string                    `json:"busiest_location,omitempty"`
	// OverDailyBudget: locations with more cancels than HighLevel's daily
	// budget less the workers' default reserve, by count: the rest waits
	// parked for the next day(s), past MinDuration.
	OverDailyBudget map[string]int `json:"over_daily_budget,omitempty"`
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
	// Locations run in parallel, each at the same limit: the busiest
	// decides (ties go to the first name).
	most := 0
	for loc, n := range perLoc {
		if n > most || n == most && loc < d.Busiest {
			most, d.Busiest = n, loc
		}
	}
	longest := ratelimit.New(nil, ratelimit.Config{}).MinTime(lim, int64(most))
	d.MinDuration = longest.Round(time.Second).String()
	// The pacing alone read 7 h for 250,000 cancels at one location, which
	// HighLevel's daily budget makes two days at least (daily-budget audit).
	const usable = ratelimit.DailyBudget - ratelimit.DailyReserveDefault
	for loc, n := range perLoc {
		if n > usable {
			if d.OverDailyBudget == nil {
				d.OverDailyBudget = map[string]int{}
			}
			d.OverDailyBudget[loc] = n
		}
	}
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
	if len(d.OverDailyBudget) > 0 {
		over := d.OverDailyBudget
		fmt.Fprintf(e.stdout, "note: %d location(s) have more cancels than HighLevel's daily budget of %d calls per location (less DAILY_RESERVE, %d by default): "+
			"each is parked when its budget runs out and goes on the next day, so these take %d day(s) or more; %s has %d\n",
			len(over), ratelimit.DailyBudget, ratelimit.DailyReserveDefault, (d.OverDailyBudget[d.Busiest]-1)/usable+1, d.Busiest, d.OverDailyBudget[d.Busiest])
	}
	if d.Invalid > 0 {
		return errReported
	}
	return nil
}

// warnParked says which of the campaign's locations and the --location are
// parked for their daily budget: what was just queued (or moved) for them
// waits until the parking ends, unless it is urgent and only the reserve
// is left. (A cancel moved to this lane is counted in the campaign that
// holds it, not in --campaign: the --location names it.) Best effort: a
// failed read says nothing.
func (e *env) warnParked(ctx context.Context, rdb *redis.Client, campaignID, location string, urgent bool) {
	var parked map[string]string
	if campaignID != "" {
		parked, _ = campaign.New(rdb, 0).Parked(ctx, campaignID)
	}
	if location != "" {
		all, _ := ratelimit.Parked(ctx, rdb)
		if why, ok := all[location]; ok {
			if parked == nil {
				parked = map[string]string{}
			}
			parked[location] = why
		}
	}
	if len(parked) == 0 {
		return
	}
	waits := "their cancels wait until the parking ends"
	if urgent {
		waits = "urgent cancels go on while only DAILY_RESERVE is left, and wait once the budget is spent"
	}
	locs := slices.Sorted(maps.Keys(parked))
	fmt.Fprintf(e.stderr, "enqueue: %d location(s) of these cancels are parked for HighLevel's daily budget: %s (`enqueue parked` lists every parked location):\n", len(locs), waits)
	for i, loc := range locs {
		if i == 10 {
			fmt.Fprintf(e.stderr, "  ... and %d more\n", len(locs)-i)
			break
		}
		fmt.Fprintf(e.stderr, "  %s: %s\n", loc, parked[loc])
	}
}

// sayHeldBy names the campaigns that count messages this run found already
// queued or done under another campaign than the one they were sent under:
// their outcomes are read there (a campaign re-run under a new id found
// them all there, and its own status said only "no campaign").
func (e *env) sayHeldBy(held map[string]int) {
	if len(held) == 0 {
		return
	}
	n := 0
	for _, c := range held {
		n += c
	}
	fmt.Fprintf(e.stderr, "enqueue: %d of the messages already queued or done are counted in another campaign than the one they were sent under, and stay there: %s (follow them with `enqueue status CAMPAIGN`)\n",
		n, countList(held, 0, "(no campaign)"))
}
