package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/ghlcancel/ghlcancel/internal/campaign"
	"github.com/ghlcancel/ghlcancel/internal/deadletter"
	"github.com/ghlcancel/ghlcancel/internal/producer"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
)

const deadUsage = "usage: enqueue dead list|requeue|purge|export [--reason R] [--campaign C] [--location L] [--kind K] [--older-than D] [--newer-than D] [--json] [--limit N] [--all] [--yes]"

func (e *env) deadCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dead",
		Short: "Dead letters: list, requeue, purge, export (tasks that need an operator, with their reason)",
		Long: `Dead letters are tasks that failed for good (a 401, a 400, retries exhausted...), each with
its reason, HighLevel's answer and a hint. Fix the cause, then requeue them.`,
		RunE: subcommandOnly(deadUsage),
	}
	cmd.AddCommand(e.deadListCmd(), e.deadRequeueCmd(), e.deadPurgeCmd(), e.deadExportCmd())
	return cmd
}

// filterFlags are the same on every dead-letter command.
func filterFlags(fs *pflag.FlagSet) *deadletter.Filter {
	var f deadletter.Filter
	fs.StringVar(&f.Reason, "reason", "", "only this reason (unauthorized, bad_request, no_token, not_installed, invalid_payload, ...)")
	fs.StringVar(&f.CampaignID, "campaign", "", "only this campaign")
	fs.StringVar(&f.LocationID, "location", "", "only this location")
	fs.StringVar(&f.Kind, "kind", "", "only message, email or sweep")
	fs.DurationVar(&f.OlderThan, "older-than", 0, "only records dead longer ago than this")
	fs.DurationVar(&f.NewerThan, "newer-than", 0, "only records dead more recently than this")
	return &f
}

const needFilter = "give a filter (--reason, --campaign, --location, --kind, --older-than, --newer-than) or --all"

// checkFilter is a dead-letter command's PreRunE: the filter must be valid
// and, where all is given (requeue, purge), not empty unless --all.
func checkFilter(verb string, f *deadletter.Filter, all *bool) func(*cobra.Command, []string) error {
	return func(*cobra.Command, []string) error {
		if err := f.Validate(); err != nil {
			return usageError{fmt.Errorf("dead %s: %w", verb, err)}
		}
		if all != nil && *f == (deadletter.Filter{}) && !*all {
			return usageError{errors.New("dead " + verb + ": " + needFilter)}
		}
		return nil
	}
}

func (e *env) deadListCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "Show dead letters, newest first",
		Example: `  enqueue dead list --reason unauthorized --campaign spring-sale`,
		Args:    noArgs,
	}
	f := filterFlags(cmd.Flags())
	cmd.PreRunE = checkFilter("list", f, nil)
	asJSON := cmd.Flags().Bool("json", false, "JSON lines, one record per line")
	limit := cmd.Flags().Int("limit", 100, "at most this many records (0 for all)")
	cmd.RunE = e.withRedis(func(ctx context.Context, rdb *redis.Client, _ []string) error {
		tw := tabwriter.NewWriter(e.stdout, 2, 4, 2, ' ', 0)
		if !*asJSON {
			fmt.Fprintln(tw, "DEAD_AT\tTASK_ID\tLOCATION\tCAMPAIGN\tREASON\tHTTP\tATTEMPTS\tWORKER\tAPI_MESSAGE")
		}
		shown, matched := 0, 0
		enc := json.NewEncoder(e.stdout)
		err := deadletter.New(rdb).ScanNewest(ctx, *f, func(r deadletter.Record) error {
			matched++
			if *limit > 0 && shown >= *limit {
				return nil
			}
			shown++
			if *asJSON {
				return enc.Encode(r)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\n", r.DeadAt.UTC().Format(time.RFC3339), r.TaskID,
				dash(r.LocationID), dash(r.CampaignID), r.Reason, r.HTTPStatus, r.Attempts, dash(r.Worker), dash(r.APIMessage))
			return nil
		})
		_ = tw.Flush()
		if err != nil {
			return err
		}
		if !*asJSON {
			fmt.Fprintf(e.stderr, "%d shown, %d matching\n", shown, matched)
		}
		if matched == 0 {
			return e.noMatchHint(ctx, rdb, *f)
		}
		return nil
	})
	return cmd
}

func (e *env) deadRequeueCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "requeue",
		Short: "Put matching dead letters back on their lane (after fixing the cause)",
		Example: `  enqueue dead requeue --reason unauthorized
  enqueue dead requeue --all`,
		Args: noArgs,
	}
	f := filterFlags(cmd.Flags())
	asJSON := cmd.Flags().Bool("json", false, "print the counts as JSON")
	all := cmd.Flags().Bool("all", false, "every record (required when no filter is given)")
	maxRetry := cmd.Flags().Int("max-retry", tasks.MaxRetryDefault, "retries per requeued cancel before it is dead-lettered again (a sweep keeps its own)")
	retention := e.retentionFlag(cmd, "how long the campaigns the cancels are requeued into are kept after their last update")
	var keep time.Duration
	filterOK := checkFilter("requeue", f, all)
	cmd.PreRunE = func(cmd *cobra.Command, args []string) (err error) {
		if keep, err = retention(); err != nil {
			return err
		}
		return filterOK(cmd, args)
	}
	cmd.RunE = e.withRedis(func(ctx context.Context, rdb *redis.Client, _ []string) error {
		store := deadletter.New(rdb)
		total, _ := store.Count(ctx)
		st, err := producer.New(rdb, producer.Config{MaxRetry: producer.Retries(*maxRetry), CampaignRetention: keep}).Requeue(ctx, store, *f, func(s producer.RequeueStats) {
			fmt.Fprintf(e.stderr, "requeue: %d requeued, %d already queued, %d already done, %d skipped (%d dead letters in all)\n",
				s.Requeued, s.AlreadyQueued, s.AlreadyDone, s.Skipped, total)
		})
		if *asJSON {
			_ = json.NewEncoder(e.stdout).Encode(st)
		} else {
			fmt.Fprintf(e.stdout, "requeued %d, already queued %d, already done %d, skipped %d (not rebuildable, left in place)\n",
				st.Requeued, st.AlreadyQueued, st.AlreadyDone, st.Skipped)
		}
		if err == nil && st == (producer.RequeueStats{}) {
			err = e.noMatchHint(ctx, rdb, *f)
		}
		if st.Requeued > 0 {
			e.warnNoWorker(ctx, rdb, "what was requeued")
		}
		return err
	})
	return cmd
}

// noMatchHint: a filter that matched none of the records held is often a
// typo (--reason unauthorised); say which reasons there are.
//
// It names each filter value no record has (a misspelt --reason or
// --campaign), with the values the records do have, most common first.
// A --campaign that names no campaign at all is an error (exit 1, as
// status says of it): a script's `dead requeue --campaign X && ...` must
// not read a typo as "nothing left to requeue".
func (e *env) noMatchHint(ctx context.Context, rdb *redis.Client, f deadletter.Filter) error {
	store := deadletter.New(rdb)
	fields := []struct {
		flag, want string
		of         func(deadletter.Record) string
		held       map[string]int
	}{
		{"--reason", f.Reason, func(r deadletter.Record) string { return r.Reason }, map[string]int{}},
		{"--campaign", f.CampaignID, func(r deadletter.Record) string { return r.CampaignID }, map[string]int{}},
		{"--location", f.LocationID, func(r deadletter.Record) string { return r.LocationID }, map[string]int{}},
		{"--kind", f.Kind, func(r deadletter.Record) string { return r.Kind }, map[string]int{}},
	}
	total := 0
	err := store.Scan(ctx, deadletter.Filter{}, func(r deadletter.Record) error {
		total++
		for _, fl := range fields {
			fl.held[fl.of(r)]++
		}
		return nil
	})
	if err != nil {
		return nil // only a hint
	}
	if total == 0 {
		fmt.Fprintln(e.stderr, "no dead letters are held at all (in this Redis database)")
		return e.unknownCampaign(ctx, rdb, f.CampaignID)
	}
	// held lists a field's values, most common first, at most 8.
	held := func(m map[string]int) string { return countList(m, 8, "(none)") }
	said := false
	for _, fl := range fields {
		if fl.want != "" && fl.held[fl.want] == 0 {
			fmt.Fprintf(e.stderr, "no dead letter has %s %q; the %d held have: %s\n", fl.flag, fl.want, total, held(fl.held))
			said = true
		}
	}
	if !said {
		fmt.Fprintf(e.stderr, "no dead letter matches the whole filter; the %d held have reasons: %s (see them: enqueue dead list)\n", total, held(fields[0].held))
	}
	if fields[1].held[f.CampaignID] > 0 {
		return nil // its dead letters outlive it (30 days against 7)
	}
	return e.unknownCampaign(ctx, rdb, f.CampaignID)
}

// unknownCampaign is an error when id ("" for none given) names no
// campaign that exists.
func (e *env) unknownCampaign(ctx context.Context, rdb *redis.Client, id string) error {
	if id == "" {
		return nil
	}
	tr := campaign.New(rdb, 0)
	if _, ok, err := tr.Get(ctx, id); err != nil || ok {
		return nil
	}
	return tr.NotFound(ctx, id, campaignUnknown)
}

func (e *env) deadExportCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "export",
		Short:   "Every matching dead letter as JSON lines, for archiving or analysis",
		Example: `  enqueue dead export --campaign spring-sale > dead.jsonl`,
		Args:    noArgs,
	}
	f := filterFlags(cmd.Flags())
	cmd.PreRunE = checkFilter("export", f, nil)
	cmd.RunE = e.withRedis(func(ctx context.Context, rdb *redis.Client, _ []string) error {
		enc := json.NewEncoder(e.stdout)
		n := 0
		err := deadletter.New(rdb).Scan(ctx, *f, func(r deadletter.Record) error { n++; return enc.Encode(r) })
		fmt.Fprintf(e.stderr, "exported %d records\n", n)
		if err == nil && n == 0 {
			err = e.noMatchHint(ctx, rdb, *f)
		}
		return err
	})
	return cmd
}

// deadPurgeCmd deletes matching dead letters (and their copies in asynq's
// archive) after asking, page by page so 100,000 records never block Redis.
func (e *env) deadPurgeCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "purge",
		Short:   "Delete matching dead letters for good (asks first)",
		Example: `  enqueue dead purge --older-than 720h`,
		Args:    noArgs,
	}
	f := filterFlags(cmd.Flags())
	all := cmd.Flags().Bool("all", false, "every record (required when no filter is given)")
	yes := cmd.Flags().Bool("yes", false, "do not ask for confirmation")
	cmd.PreRunE = checkFilter("purge", f, all)
	cmd.RunE = e.withRedis(func(ctx context.Context, rdb *redis.Client, _ []string) error {
		store := deadletter.New(rdb)
		// Exactly the records counted here are purged: one dead-lettered
		// while the question waits is not deleted unseen.
		refs, err := store.Matching(ctx, *f)
		if err != nil {
			return err
		}
		n := len(refs)
		if n == 0 {
			fmt.Fprintln(e.stdout, "no matching dead letters")
			return e.noMatchHint(ctx, rdb, *f)
		}
		if !*yes {
			fmt.Fprintf(e.stderr, "delete %d dead letters for good? type yes: ", n)
			line, _ := bufio.NewReader(e.stdin).ReadString('\n')
			if strings.TrimSpace(line) != "yes" {
				return errors.New("not confirmed; nothing deleted (use --yes to skip the question)")
			}
		}
		deleted, err := store.PurgeRefs(ctx, refs, nil)
		if deleted < n && err == nil {
			fmt.Fprintf(e.stderr, "%d of the %d were no longer as counted (requeued, dead-lettered again or removed meanwhile) and were not deleted by this purge\n", n-deleted, n)
		}
		fmt.Fprintf(e.stdout, "purged %d dead letters\n", deleted)
		return err
	})
	return cmd
}

// countList lists m's keys with their counts, the most common first (then
// by name), at most limit of them (0: all) and "and N more"; empty names
// the "" key.
func countList(m map[string]int, limit int, empty string) string {
	keys := slices.Collect(maps.Keys(m))
	slices.SortFunc(keys, func(a, b string) int { return cmp.Or(m[b]-m[a], strings.Compare(a, b)) })
	var out []string
	for i, k := range keys {
		if limit > 0 && i == limit {
			out = append(out, fmt.Sprintf("and %d more", len(keys)-limit))
			break
		}
		out = append(out, fmt.Sprintf("%s %d", cmp.Or(k, empty), m[k]))
	}
	return strings.Join(out, ", ")
}
