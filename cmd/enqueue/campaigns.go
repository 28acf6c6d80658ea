package main

import (
	"cmp"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

	"github.com/ghlcancel/ghlcancel/internal/campaign"
	"github.com/ghlcancel/ghlcancel/internal/ledger"
	"github.com/ghlcancel/ghlcancel/internal/progress"
	"github.com/ghlcancel/ghlcancel/internal/ratelimit"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
)

const campaignUsage = "usage: enqueue status CAMPAIGN [--json] [--watch] | enqueue report CAMPAIGN > out.csv | enqueue campaigns [--limit N] [--json]"

// oneCampaign takes exactly one campaign id.
// campaignUnknown says why a campaign id reads as none: a campaign exists
// once a message is counted in it, so a run whose every message was
// already counted elsewhere (it said which campaigns) made none.
const campaignUnknown = "unknown, older than its retention, or nothing was ever counted in it " +
	"(a message already counted in another campaign stays there: enqueue named it); `enqueue campaigns` lists them"

func oneCampaign(_ *cobra.Command, args []string) error {
	if len(args) != 1 {
		return usageError{errors.New(campaignUsage)}
	}
	return nil
}

func (e *env) statusCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status CAMPAIGN",
		Short: "How far a campaign is: outcomes, rate, ETA, parked locations, sweeps",
		Example: `  enqueue status spring-sale --watch
  enqueue status spring-sale --json`,
		Args: oneCampaign,
	}
	asJSON := cmd.Flags().Bool("json", false, "print JSON (one object per refresh with --watch)")
	watch := cmd.Flags().Bool("watch", false, "refresh every 2 s until the campaign completes; exit 1 if it completes with dead letters, failed sweeps or expired cancels")
	cmd.RunE = e.withRedis(func(ctx context.Context, rdb *redis.Client, args []string) error {
		tr := campaign.New(rdb, 0)
		var prev campaign.Status
		var prevAt time.Time
		warned := false
		for {
			s, ok, err := tr.Get(ctx, args[0])
			if err != nil {
				return err
			}
			if !ok {
				return tr.ExpiredNotFound(ctx, args[0], campaignUnknown, "enqueue dead list --campaign "+args[0])
			}
			if !s.Complete && !warned {
				warned = true
				e.warnNoWorker(ctx, rdb, "this campaign")
			}
			if s.Parked, err = tr.Parked(ctx, args[0]); err != nil {
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
				floor, err := tr.PacedFloor(ctx, s)
				if err != nil {
					return err
				}
				fmt.Fprintln(e.stdout, s.RenderPaced(prev, prevAt, floor))
			}
			if !*watch {
				return nil
			}
			if s.Complete {
				// --watch is for scripts, as sweep --wait: a dead letter or
				// a failed sweep leaves messages that may still go out, here
				// or in a campaign holding messages its sweeps found.
				heldBad, waited, err := e.waitHeld(ctx, s, func() (campaign.HeldReport, error) { return tr.Held(ctx, s) })
				if err != nil {
					return err
				}
				if waited {
					continue // read the campaign again: it may have reopened meanwhile
				}
				if s.DeadLettered == 0 && s.SweepsFailed == 0 && s.Expired == 0 && !heldBad {
					return nil
				}
				if s.DeadLettered > 0 || s.SweepsFailed > 0 {
					fmt.Fprintf(e.stderr, "campaign %s completed with %d dead-lettered cancel(s) and %d failed sweep(s): messages may still go out; see enqueue dead list --campaign %s\n",
						args[0], s.DeadLettered, s.SweepsFailed, args[0])
				}
				if s.Expired > 0 {
					fmt.Fprintf(e.stderr, "campaign %s completed with %d expired cancel(s): their messages' send time passed before their turn, so they have gone out (enqueue report %s lists them)\n",
						args[0], s.Expired, args[0])
				}
				return errReported
			}
			prev, prevAt = s, time.Now()
			select {
			case <-ctx.Done():
				// A script waiting on --watch must not read "complete".
				return fmt.Errorf("interrupted before campaign %s completed (%d of %d done)", args[0], s.Done, s.Total)
			case <-time.After(2 * time.Second):
			}
		}
	})
	return cmd
}

// waitHeld waits (every 2 s) until every message s's sweeps found but did
// not queue (queued or done first in another campaign, or in none:
// s.HeldBy names the campaigns) has an outcome, and reports whether some
// were dead-lettered, lost or not followed, said on stderr: they may still
// go out. A campaign complete on its own counts none of them, so
// "complete" alone would say they were dealt with.
//
// waited says it had to wait: the caller reads the campaign again (it may
// have reopened meanwhile) before it trusts its status.
func (e *env) waitHeld(ctx context.Context, s campaign.Status, follow func() (campaign.HeldReport, error)) (bad, waited bool, err error) {
	where := "no campaign"
	if len(s.HeldBy) > 0 {
		where = "campaign(s) " + strings.Join(s.HeldBy, ", ")
	}
	said := false
	for {
		r, err := follow()
		if err != nil {
			return false, said, err
		}
		if r.Waiting == 0 {
			if said {
				// The caller reads the campaign again and calls once more:
				// that call says what became of them.
				return r.Bad(), true, nil
			}
			if r.Failed > 0 || r.Lost > 0 {
				fmt.Fprintf(e.stderr, "%d of the %d messages campaign %s's sweeps found queued or done first elsewhere (%s) were dead-lettered there, and %d have no outcome and no task: they may still go out; see enqueue dead list\n",
					r.Failed, r.Followed, s.Campaign, where, r.Lost)
			}
			if r.Expired > 0 {
				fmt.Fprintf(e.stderr, "%d of the %d messages campaign %s's sweeps found queued or done first elsewhere (%s) expired there: their send time passed before their turn, so they have gone out\n",
					r.Expired, r.Followed, s.Campaign, where)
			}
			if r.Forgotten > 0 {
				fmt.Fprintf(e.stderr, "%d of the %d messages campaign %s's sweeps found queued or done first elsewhere settled longer ago than CAMPAIGN_RETENTION: their outcomes, and the campaigns that held them, are no longer kept\n",
					r.Forgotten, r.Followed, s.Campaign)
			}
			if r.More {
				fmt.Fprintf(e.stderr, "campaign %s's sweeps found more than %d messages queued elsewhere first: only those were followed\n", s.Campaign, ledger.HeldMax)
			}
			return r.Bad(), said, nil
		}
		if !said {
			said = true
			fmt.Fprintf(e.stderr, "campaign %s is complete; waiting for %d messages its sweeps found, queued first in %s\n", s.Campaign, r.Waiting, where)
		}
		select {
		case <-ctx.Done():
			return false, said, fmt.Errorf("interrupted while %d messages campaign %s's sweeps found (queued in %s) had no outcome yet", r.Waiting, s.Campaign, where)
		case <-time.After(2 * time.Second):
		}
	}
}

func (e *env) reportCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "report CAMPAIGN",
		Short:   "Every message's outcome in a campaign, as CSV (or JSON lines)",
		Example: `  enqueue report spring-sale > spring-sale.csv`,
		Args:    oneCampaign,
	}
	asJSON := cmd.Flags().Bool("json", false, "JSON lines, one object per message, instead of CSV")
	cmd.RunE = e.withRedis(func(ctx context.Context, rdb *redis.Client, args []string) error {
		tr := campaign.New(rdb, 0)
		if _, ok, err := tr.Get(ctx, args[0]); err != nil || !ok {
			return cmp.Or(err, tr.ExpiredNotFound(ctx, args[0], campaignUnknown, "enqueue dead list --campaign "+args[0]))
		}
		out := e.stdout
		var pw *io.PipeWriter
		done := make(chan error, 1)
		if *asJSON {
			var pr *io.PipeReader
			pr, pw = io.Pipe()
			out = pw
			go func() { done <- csvToJSONLines(pr, e.stdout) }()
		}
		n, err := tr.WriteReport(ctx, args[0], out)
		if pw != nil {
			_ = pw.CloseWithError(err)
			err = cmp.Or(err, <-done)
		}
		fmt.Fprintf(e.stderr, "report: %d rows\n", n)
		return err
	})
	return cmd
}

// csvToJSONLines turns a CSV with a header into one JSON object per row.
func csvToJSONLines(in io.Reader, out io.Writer) error {
	r := csv.NewReader(in)
	header, err := r.Read()
	if err != nil {
		return err
	}
	enc := json.NewEncoder(out)
	for {
		row, err := r.Read()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		obj := make(map[string]string, len(header))
		for i, h := range header {
			if i < len(row) {
				obj[h] = row[i]
			}
		}
		if err := enc.Encode(obj); err != nil {
			return err
		}
	}
}

func (e *env) campaignsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "campaigns",
		Short: "The newest campaigns with their counts",
		Args:  noArgs,
	}
	asJSON := cmd.Flags().Bool("json", false, "print JSON")
	limit := cmd.Flags().Int("limit", 20, "how many, the most recently updated first")
	cmd.RunE = e.withRedis(func(ctx context.Context, rdb *redis.Client, _ []string) error {
		list, err := campaign.New(rdb, 0).List(ctx, *limit)
		if err != nil {
			return err
		}
		if *asJSON {
			return json.NewEncoder(e.stdout).Encode(list)
		}
		tw := tabwriter.NewWriter(e.stdout, 2, 4, 2, ' ', 0)
		// Every outcome DONE adds up (campaign.Status.Done), so none is left unexplained.
		// SWEEPS_FAILED: a campaign of sweeps can be complete at 0/0 with
		// every sweep failed (no token): its contacts' messages still go out.
		// NOTE: a dry run's campaign reads 0/0 complete as one that found
		// nothing; a sweep's messages queued in other campaigns first are
		// counted there.
		fmt.Fprintln(tw, "CAMPAIGN\tSTARTED\tDONE\tTOTAL\tCANCELLED\tALREADY_SENT\tNOT_FOUND\tNOT_CANCELLABLE\tEXPIRED\tDEAD\tSWEEPS_FAILED\tCOMPLETE\tNOTE")
		for _, s := range list {
			var note []string
			if s.DryRun {
				note = append(note, "dry_run")
			}
			if len(s.HeldBy) > 0 {
				note = append(note, "found_in:"+strings.Join(s.HeldBy, ","))
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%t\t%s\n", s.Campaign, s.StartedAt.UTC().Format(time.RFC3339),
				s.Done, s.Total, s.Cancelled, s.AlreadySent, s.NotFound, s.NotCancellable, s.Expired, s.DeadLettered, s.SweepsFailed, s.Complete, dash(strings.Join(note, " ")))
		}
		return tw.Flush()
	})
	return cmd
}

// releaseParked lifts a location's parking and wakes its waiting cancels.
func (e *env) releaseParked(ctx context.Context, rdb *redis.Client, location string) error {
	var bar *progress.Reporter
	r, err := ratelimit.Release(ctx, rdb, location, tasks.Queues, func(n, total int) {
		if bar == nil {
			bar = progress.New(e.stderr, int64(total), "waking "+location+"'s cancels")
		}
		bar.Add(n)
	})
	if bar != nil {
		bar.Finish()
	}
	if errors.Is(err, ratelimit.ErrNotParked) {
		return fmt.Errorf("location %q is not parked: nothing to release (`enqueue parked` lists the parked locations)", location)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "released %s (it was parked: %s); woke %d waiting cancel(s) (of %d it had waiting: the rest were pending, running or done already)\n",
		location, cmp.Or(r.Why, "no reason recorded"), r.Woken, r.Waiting)
	fmt.Fprintln(e.stderr, "enqueue: its calls resume now; if its daily budget is still spent, its next answer parks it again")
	return nil
}

func (e *env) parkedCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "parked",
		Short: "Locations whose cancels wait for HighLevel's daily budget, and why",
		Args:  noArgs,
	}
	asJSON := cmd.Flags().Bool("json", false, "print JSON: location -> why")
	release := cmd.Flags().String("release", "", "lift LOCATION's parking now and wake its waiting cancels (when you know its daily budget is back; its first call re-probes, and a budget still spent parks it again after one call)")
	cmd.RunE = e.withRedis(func(ctx context.Context, rdb *redis.Client, _ []string) error {
		if *release != "" {
			return e.releaseParked(ctx, rdb, *release)
		}
		parked, err := ratelimit.Parked(ctx, rdb)
		if err != nil {
			return err
		}
		if *asJSON {
			return json.NewEncoder(e.stdout).Encode(parked)
		}
		if len(parked) == 0 {
			fmt.Fprintln(e.stdout, "no location is parked")
			return nil
		}
		tw := tabwriter.NewWriter(e.stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "LOCATION\tWHY")
		for _, loc := range slices.Sorted(maps.Keys(parked)) {
			fmt.Fprintf(tw, "%s\t%s\n", loc, parked[loc])
		}
		return tw.Flush()
	})
	return cmd
}
