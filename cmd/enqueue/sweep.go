package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ghlcancel/ghlcancel/internal/campaign"
	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/producer"
	"github.com/ghlcancel/ghlcancel/internal/ratelimit"
	"github.com/ghlcancel/ghlcancel/internal/sweep"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
)

// sweep queues one sweep task per location: workers page HighLevel's
// export, keep what is still scheduled and cancel it into a campaign.
func (e env) sweep(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("sweep", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		fmt.Fprint(e.stderr, `usage: enqueue sweep --location L [--location L2 ...] [filters] [--campaign C] [--dry-run] [--wait]
       enqueue sweep --all-locations [filters] ...   (every location the agency's app is installed at)
Finds the messages still scheduled in the locations (HighLevel's message export, paged by the
workers, which hold the tokens) and cancels them into one campaign.
flags:
`)
		fs.PrintDefaults()
	}
	redisURL := e.redisFlag(fs)
	var locations []string
	fs.Func("location", "location (sub-account) to sweep; repeat or comma-separate for several", func(v string) error {
		for _, l := range strings.Split(v, ",") {
			if l = strings.TrimSpace(l); l != "" {
				locations = append(locations, l)
			}
		}
		return nil
	})
	all := fs.Bool("all-locations", false, "sweep every location the agency's app is installed at (listed from HighLevel; needs the agency set with `enqueue tokens agency set` and GHL_CLIENT_ID, GHL_CLIENT_SECRET, GHL_TOKEN_KEY)")
	baseURL := fs.String("base-url", cmp.Or(e.getenv("GHL_BASE_URL"), ghl.BaseURLDefault), "HighLevel API base URL, for --all-locations (env GHL_BASE_URL)")
	contact := fs.String("contact", "", "only this contact's messages")
	conversation := fs.String("conversation", "", "only this conversation's messages")
	channel := fs.String("channel", tasks.ChannelAll, "sms, email or all")
	since := fs.String("since", "", "only messages created at or after this time (RFC 3339 or unix seconds)")
	until := fs.String("until", "", "only messages created at or before this time (RFC 3339 or unix seconds)")
	source := fs.String("source", "", "only messages from this source: workflow, bulk_actions, campaign, api or app")
	campaignID := fs.String("campaign", "", "campaign to cancel into (one is made up and printed when empty)")
	lane := fs.String("lane", "", "lane of the cancels: urgent, default or bulk (default: default with --contact or --conversation, else bulk)")
	pageSize := fs.Int("page-size", tasks.SweepPageSize, "export page size, 10 to 500")
	dryRun := fs.Bool("dry-run", false, "find and count only: per location and channel, with the time the cancels would take")
	wait := fs.Bool("wait", false, "show progress until the sweeps and their cancels are done")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected arguments %q (give locations with --location)", fs.Args())}
	}
	if *all && len(locations) > 0 {
		return usageError{errors.New("give --location or --all-locations, not both")}
	}
	if len(locations) == 0 && !*all {
		fs.Usage()
		return usageError{errors.New("give at least one --location, or --all-locations")}
	}
	r := producer.SweepRequest{Locations: locations, ContactID: *contact, ConversationID: *conversation, Channel: *channel,
		Source: *source, CampaignID: *campaignID, Lane: *lane, DryRun: *dryRun, PageSize: *pageSize}
	if r.Lane == "" && (*contact != "" || *conversation != "") {
		r.Lane = tasks.QueueDefault // a handful of messages someone waits on
	}
	var err error
	if r.Since, err = parseWhen(*since); err != nil {
		return usageError{fmt.Errorf("--since: %w", err)}
	}
	if r.Until, err = parseWhen(*until); err != nil {
		return usageError{fmt.Errorf("--until: %w", err)}
	}
	rdb, err := connect(ctx, *redisURL)
	if err != nil {
		return err
	}
	defer rdb.Close()
	if *all {
		installed, err := e.installed(ctx, rdb, *baseURL)
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
	st, err := producer.New(rdb, producer.Config{}).Sweep(ctx, r)
	if err != nil {
		if errors.Is(err, producer.ErrUnavailable) {
			return err
		}
		return usageError{err}
	}
	if *asJSON && !*wait {
		return json.NewEncoder(e.stdout).Encode(st)
	}
	what := "sweeping"
	if *dryRun {
		what = "counting (dry run)"
	}
	fmt.Fprintf(e.stderr, "sweep %s: %s %d location(s) into campaign %s\n", st.SweepID, what, len(st.TaskIDs), st.CampaignID)
	if !*wait {
		fmt.Fprintf(e.stdout, "%s\n", st.CampaignID)
		fmt.Fprintf(e.stderr, "follow it: enqueue status %s --watch\n", st.CampaignID)
		return nil
	}
	tr := campaign.New(rdb, 0)
	var prev campaign.Status
	var prevAt time.Time
	for {
		s, ok, err := tr.Get(ctx, st.CampaignID)
		if err != nil {
			return err
		}
		if ok && !*asJSON {
			fmt.Fprintln(e.stderr, s.Render(prev, prevAt))
		}
		if ok && s.Complete {
			break
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
		Error    string        `json:"error,omitempty"`
	}
	var rows []row
	for _, loc := range dedupe(locations) {
		state, _, err := sweep.LoadState(ctx, rdb, st.SweepID, loc)
		if err != nil {
			return err
		}
		lim := ratelimit.Learned(ctx, rdb, loc, ratelimit.Limit{N: ratelimit.LimitDefault, Period: ratelimit.PeriodDefault})
		n, span := ratelimit.New(nil, ratelimit.Config{}).Allowance(lim)
		found := state.FoundSMS + state.FoundEmail
		rw := row{Location: loc, Pages: state.Pages, Read: state.Seen, SMS: state.FoundSMS, Email: state.FoundEmail, Error: state.Error}
		if found > 0 {
			rw.MinTime = time.Duration((found-1)/int64(n)) * span
		}
		rows = append(rows, rw)
	}
	if *asJSON {
		return json.NewEncoder(e.stdout).Encode(map[string]any{"sweep": st, "locations": rows})
	}
	tw := tabwriter.NewWriter(e.stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "LOCATION\tPAGES\tREAD\tSCHEDULED_SMS\tSCHEDULED_EMAIL\tCANCEL_TIME\tERROR")
	for _, rw := range rows {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%s\t%s\n", rw.Location, rw.Pages, rw.Read, rw.SMS, rw.Email, rw.MinTime.Round(time.Second), dash(rw.Error))
	}
	_ = tw.Flush()
	if *dryRun {
		fmt.Fprintln(e.stderr, "dry run: nothing was cancelled (CANCEL_TIME: the least time the cancels take under each location's limit; locations run in parallel)")
	}
	return nil
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
		return time.Unix(n, 0), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, errors.New("want an RFC 3339 time like 2026-11-27T18:00:00Z or unix seconds")
	}
	return t, nil
}
