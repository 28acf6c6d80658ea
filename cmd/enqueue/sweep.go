package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

	"github.com/ghlcancel/ghlcancel/internal/campaign"
	"github.com/ghlcancel/ghlcancel/internal/deadletter"
	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/ledger"
	"github.com/ghlcancel/ghlcancel/internal/producer"
	"github.com/ghlcancel/ghlcancel/internal/ratelimit"
	"github.com/ghlcancel/ghlcancel/internal/sweep"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
)

// sweepCmd queues one sweep task per location: workers page HighLevel's
// export, keep what is still scheduled and cancel it into a campaign.
func (e *env) sweepCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "sweep (--location L ... | --all-locations) [filters]",
		Short: "Find the messages still scheduled in locations and cancel them (no ids needed)",
		Long: `Finds the messages still scheduled in the locations (HighLevel's message export, paged by the
workers, which hold the tokens) and cancels them into one campaign. --all-locations sweeps every
location the agency's app is installed at.`,
		Example: `  enqueue sweep --location LOC --contact CONTACT          # this contact replied
  enqueue sweep --location L1,L2 --source workflow --dry-run
  enqueue sweep --all-locations --campaign spring-sale-off --wait`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError{fmt.Errorf("unexpected arguments %q (give locations with --location)", args)}
			}
			return nil
		},
	}
	fs := cmd.Flags()
	var o sweepOpts
	fs.StringSliceVar(&o.locations, "location", nil, "location (sub-account) to sweep; repeat or comma-separate for several")
	fs.BoolVar(&o.all, "all-locations", false, "sweep every location the agency's app is installed at (listed from HighLevel; needs the agency set with enqueue tokens agency set, and GHL_CLIENT_ID, GHL_CLIENT_SECRET, GHL_TOKEN_KEY)")
	fs.StringVar(&o.baseURL, "base-url", cmp.Or(e.getenv("GHL_BASE_URL"), ghl.BaseURLDefault), "HighLevel API base URL, for --all-locations (env GHL_BASE_URL)")
	fs.StringVar(&o.contact, "contact", "", "only this contact's messages")
	fs.StringVar(&o.conversation, "conversation", "", "only this conversation's messages")
	fs.StringVar(&o.channel, "channel", tasks.ChannelAll, "sms, email or all")
	fs.StringVar(&o.since, "since", "", "only messages created at or after this time (RFC 3339 or unix seconds)")
	fs.StringVar(&o.until, "until", "", "only messages created at or before this time (RFC 3339 or unix seconds)")
	fs.StringVar(&o.source, "source", "", "only messages from this source: workflow, bulk_actions, campaign, api or app")
	fs.StringVar(&o.campaignID, "campaign", "", "campaign to cancel into (one is made up and printed when empty; a --dry-run always has its own)")
	fs.StringVar(&o.lane, "lane", "", "lane of the cancels: urgent, default or bulk (default: default with --contact or --conversation, else bulk)")
	fs.IntVar(&o.pageSize, "page-size", tasks.SweepPageSize, "export page size, 10 to 500")
	fs.IntVar(&o.maxRetry, "max-retry", tasks.MaxRetryDefault, "retries per cancel the sweep queues before it is dead-lettered")
	fs.BoolVar(&o.dryRun, "dry-run", false, "find and count only: per location and channel, with the time the cancels would take")
	fs.BoolVar(&o.wait, "wait", false, "show progress until the sweeps and their cancels are done; exit 1 if a location's sweep failed or a cancel was dead-lettered or expired")
	fs.BoolVar(&o.asJSON, "json", false, "print the result as JSON")
	retention := e.retentionFlag(cmd, "how long the sweep's campaign, its counters and report are kept after its last update")
	cmd.RunE = func(cmd *cobra.Command, _ []string) (err error) {
		if o.retention, err = retention(); err != nil {
			return err
		}
		return e.sweep(cmd.Context(), o)
	}
	return cmd
}

// sweepOpts are sweep's flags.
type sweepOpts struct {
	locations                                                                       []string
	all, dryRun, wait, asJSON                                                       bool
	baseURL, contact, conversation, channel, since, until, source, campaignID, lane string
	pageSize, maxRetry                                                              int
	retention                                                                       time.Duration
}

func (e *env) sweep(ctx context.Context, o sweepOpts) error {
	var locations []string
	for _, l := range o.locations {
		if l = strings.TrimSpace(l); l != "" {
			locations = append(locations, l)
		}
	}
	if o.all && len(locations) > 0 {
		return usageError{errors.New("give --location or --all-locations, not both")}
	}
	if len(locations) == 0 && !o.all {
		return usageError{errors.New("give at least one --location, or --all-locations")}
	}
	if o.campaignID != "" {
		if err := tasks.ValidateCampaignID(o.campaignID); err != nil {
			return usageError{fmt.Errorf("--campaign: %w", err)}
		}
		if o.dryRun {
			return usageError{errors.New("--campaign with --dry-run: a dry run counts into a campaign of its own; give --campaign to the real sweep")}
		}
	}
	r := producer.SweepRequest{Locations: locations, ContactID: o.contact, ConversationID: o.conversation, Channel: o.channel,
		Source: o.source, CampaignID: o.campaignID, Lane: o.lane, DryRun: o.dryRun, PageSize: o.pageSize}
	if r.Lane == "" && (o.contact != "" || o.conversation != "") {
		r.Lane = tasks.QueueDefault // a handful of messages someone waits on
	}
	var err error
	if r.Since, err = parseWhen(o.since); err != nil {
		return usageError{fmt.Errorf("--since: %w", err)}
	}
	if r.Until, err = parseWhen(o.until); err != nil {
		return usageError{fmt.Errorf("--until: %w", err)}
	}
	rdb, err := e.connect(ctx)
	if err != nil {
		return err
	}
	defer rdb.Close()
	if o.all {
		installed, err := e.installed(ctx, rdb, o.baseURL)
		if err != nil {
			return err
		}
		if len(installed) == 0 {
			return errors.New("the agency's app is installed at no location: nothing to sweep")
		}
		for _, l := range installed {
			locations = append(locations, l.ID)
		}
		r.Locations = locations
	}
	// The campaign may hold earlier work (--campaign names an existing
	// one): --wait's exit code counts only the cancels dead-lettered while
	// it ran, by their dead letters: one not there at the start, or there
	// with another time (a re-run requeues the last run's dead letters, and
	// one that fails again comes back under its id). The net change of the
	// campaign's count hid those: 2 again of 17 requeued read as none.
	// Expired cancels likewise, by their outcome rows: new, or with another
	// time (a resend reopens an expired row: by the campaign's count, one
	// expiring again read as none; by time, two hosts' clocks compared).
	var deadBefore, expiredBefore map[string]time.Time
	if r.CampaignID != "" && o.wait {
		if deadBefore, err = campaignDeadLetters(ctx, rdb, r.CampaignID); err != nil {
			return err
		}
		if expiredBefore, err = campaignExpired(ctx, rdb, r.CampaignID); err != nil {
			return err
		}
	}
	st, err := producer.New(rdb, producer.Config{MaxRetry: producer.Retries(o.maxRetry), CampaignRetention: o.retention}).Sweep(ctx, r)
	if err != nil {
		if errors.Is(err, producer.ErrUnavailable) {
			return err
		}
		return usageError{err}
	}
	if o.asJSON && !o.wait {
		return json.NewEncoder(e.stdout).Encode(st)
	}
	what := "sweeping"
	if o.dryRun {
		what = "counting (dry run)"
	}
	fmt.Fprintf(e.stderr, "sweep %s: %s %d location(s) into campaign %s\n", st.SweepID, what, len(st.TaskIDs), st.CampaignID)
	e.warnNoWorker(ctx, rdb, "the sweep")
	if !o.wait {
		fmt.Fprintf(e.stdout, "%s\n", st.CampaignID)
		fmt.Fprintf(e.stderr, "follow it: enqueue status %s --watch\n", st.CampaignID)
		return nil
	}
	tr := campaign.New(rdb, 0)
	var prev, end campaign.Status
	var prevAt time.Time
	var heldBad bool
	latest := map[string]sweep.State{} // each location's latest run, once complete
wait:
	for {
		s, ok, err := tr.Get(ctx, st.CampaignID)
		if err != nil {
			return err
		}
		if ok {
			// A parked location holds the cancels (an hour or more): say
			// so, as status does (the audit found only status did).
			if s.Parked, err = tr.Parked(ctx, st.CampaignID); err != nil {
				return err
			}
		}
		if ok && !o.asJSON {
			floor, err := tr.PacedFloor(ctx, s)
			if err != nil {
				return err
			}
			fmt.Fprintln(e.stderr, s.RenderPaced(prev, prevAt, floor))
		}
		if ok && s.Complete {
			// Messages found but queued or done first elsewhere are counted
			// there: wait for those this sweep found too.
			// A failed location requeued (or swept again) while this waited
			// ends in the run that replaced it.
			var keys []string
			for _, loc := range dedupe(locations) {
				k, state, _, err := sweep.Runs(ctx, rdb, st.SweepID, loc)
				if err != nil {
					return err
				}
				keys, latest[loc] = append(keys, k...), state
			}
			bad, waited, err := e.waitHeld(ctx, s, func() (campaign.HeldReport, error) { return tr.HeldIn(ctx, keys) })
			if err != nil {
				return err
			}
			if !waited {
				end, heldBad = s, bad
				break wait
			}
			continue // read the campaign again: it may have reopened meanwhile
		}
		prev, prevAt = s, time.Now()
		select {
		case <-ctx.Done():
			return fmt.Errorf("interrupted; the sweep goes on: enqueue status %s --watch", st.CampaignID)
		case <-time.After(2 * time.Second):
		}
	}
	// Per location and channel, with the time the cancels take under each
	// location's limit.
	type row struct {
		Location string        `json:"location"`
		Pages    int64         `json:"pages"`
		Read     int64         `json:"messages_read"`
		SMS      int64         `json:"scheduled_sms"`
		Email    int64         `json:"scheduled_email"`
		MinTime  time.Duration `json:"min_cancel_time_ns"`
		// Already: found scheduled, but queued or done already (another
		// campaign, sweep or event first): not queued again here.
		Already int64 `json:"already_queued_or_done"`
		// Moved: of Already, those moved to this sweep's lane from a
		// slower one.
		Moved int64 `json:"moved_to_this_lane,omitempty"`
		// Stayed: of Already, those left on a slower lane (running, or
		// deep in a long backlog).
		Stayed int64  `json:"stayed_on_a_slower_lane,omitempty"`
		Error  string `json:"error,omitempty"`
	}
	var rows []row
	failed := 0
	for _, loc := range dedupe(locations) {
		state := latest[loc]
		lim := ratelimit.Learned(ctx, rdb, loc, ratelimit.Limit{N: ratelimit.LimitDefault, Period: ratelimit.PeriodDefault})
		rw := row{Location: loc, Pages: state.Pages, Read: state.Seen, SMS: state.FoundSMS, Email: state.FoundEmail, Already: state.Already, Moved: state.Moved, Stayed: state.Stayed, Error: state.Error,
			// The export's pages take the location's slots too (a real
			// sweep reads them again): 100 found at 100 per 10 s is 10 s,
			// not 0.
			MinTime: ratelimit.New(nil, ratelimit.Config{}).MinTime(lim, state.FoundSMS+state.FoundEmail+state.Pages)}
		if rw.Error != "" {
			failed++
		}
		rows = append(rows, rw)
	}
	// --wait is for scripts: a location whose sweep failed, or a cancel
	// dead-lettered, leaves messages scheduled, and the exit code says so.
	dead := 0
	if end.DeadLettered > 0 {
		after, err := campaignDeadLetters(ctx, rdb, st.CampaignID)
		if err != nil {
			return err
		}
		for id, at := range after {
			if was, ok := deadBefore[id]; !ok || !was.Equal(at) {
				dead++
			}
		}
	}
	// A cancel that expired (its message's send time passed before its
	// turn, as behind a parked location) did not cancel it either.
	expired := 0
	if end.Expired > 0 {
		after, err := campaignExpired(ctx, rdb, st.CampaignID)
		if err != nil {
			return err
		}
		for id, at := range after {
			if was, ok := expiredBefore[id]; !ok || !was.Equal(at) {
				expired++
			}
		}
	}
	done := func() error {
		if failed == 0 && dead == 0 && expired == 0 && !heldBad {
			return nil
		}
		if failed > 0 || dead > 0 {
			fmt.Fprintf(e.stderr, "sweep %s: %d location(s) failed, %d cancel(s) dead-lettered in campaign %s while it ran: messages may still go out; see enqueue dead list --campaign %s\n",
				st.SweepID, failed, dead, st.CampaignID, st.CampaignID)
		}
		if expired > 0 {
			fmt.Fprintf(e.stderr, "sweep %s: %d cancel(s) in campaign %s expired while it ran: their messages' send time passed before their turn, so they have gone out (enqueue report %s lists them)\n",
				st.SweepID, expired, st.CampaignID, st.CampaignID)
		}
		return errReported
	}
	// A sweep for one contact or conversation that read no message at all
	// at a location (not "none scheduled": none) most often names a
	// mistyped id, or one of another location, which otherwise read as a
	// clean, empty "complete".
	var who []string
	if o.contact != "" {
		who = append(who, "contact "+o.contact)
	}
	if o.conversation != "" {
		who = append(who, "conversation "+o.conversation)
	}
	// Only when nothing else narrowed the export (a channel or a time
	// window leaves a real contact's other messages out) and a page was
	// read (no state read as zeros too).
	narrowed := (o.channel != "" && !strings.EqualFold(o.channel, tasks.ChannelAll)) || o.since != "" || o.until != ""
	for _, rw := range rows {
		if len(who) > 0 && !narrowed && rw.Pages > 0 && rw.Read == 0 && rw.Error == "" {
			fmt.Fprintf(e.stderr, "note: HighLevel's export holds no message at all of %s at location %s (not even sent ones): check the id, and that it belongs to that location\n",
				strings.Join(who, " in "), rw.Location)
		}
	}
	if o.asJSON {
		if err := json.NewEncoder(e.stdout).Encode(map[string]any{"sweep": st, "locations": rows}); err != nil {
			return err
		}
		return done()
	}
	tw := tabwriter.NewWriter(e.stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "LOCATION\tPAGES\tREAD\tSCHEDULED_SMS\tSCHEDULED_EMAIL\tALREADY\tCANCEL_TIME\tERROR")
	for _, rw := range rows {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n", rw.Location, rw.Pages, rw.Read, rw.SMS, rw.Email, rw.Already, rw.MinTime.Round(time.Second), dash(rw.Error))
	}
	_ = tw.Flush()
	if o.dryRun {
		fmt.Fprintln(e.stderr, "dry run: nothing was cancelled (CANCEL_TIME: the least time the sweep's calls take under each location's limit, its export pages and one cancel per message found; locations run in parallel)")
	}
	return done()
}

// campaignDeadLetters maps the task ids of a campaign's cancel dead letters
// (not failed sweeps, which are counted per location) to when they died.
func campaignDeadLetters(ctx context.Context, rdb *redis.Client, id string) (map[string]time.Time, error) {
	out := map[string]time.Time{}
	err := deadletter.New(rdb).Scan(ctx, deadletter.Filter{CampaignID: id}, func(r deadletter.Record) error {
		if r.Kind != "sweep" {
			out[r.TaskID] = r.DeadAt
		}
		return nil
	})
	return out, err
}

// campaignExpired maps the campaign's expired cancels to their outcome's
// time (one pass over its outcome rows; a row HSCAN returns twice counts
// once).
func campaignExpired(ctx context.Context, rdb *redis.Client, id string) (map[string]time.Time, error) {
	out := map[string]time.Time{}
	iter := rdb.HScan(ctx, ledger.CampaignOutcomesKey(id), 0, "*", 1000).Iterator()
	for field := ""; iter.Next(ctx); {
		if field == "" {
			field = iter.Val() // the task id; its row follows
			continue
		}
		if o, err := ledger.ParseRow(iter.Val()); err == nil && o.Outcome == ledger.Expired {
			out[field] = o.At
		}
		field = ""
	}
	return out, iter.Err()
}

func dedupe(in []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range in {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// parseWhen reads RFC 3339 or unix seconds; empty is the zero time.
func parseWhen(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil && n > 0 {
		if err := tasks.CheckUnixSeconds(n); err != nil {
			return time.Time{}, err
		}
		return time.Unix(n, 0), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, errors.New("want an RFC 3339 time like 2026-11-27T18:00:00Z or unix seconds")
	}
	return t, nil
}
