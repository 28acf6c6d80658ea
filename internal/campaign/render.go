package campaign

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/ghlcancel/ghlcancel/internal/ratelimit"
)

// Render draws a progress bar with counts, rate and ETA. The rate is taken
// between two samples when prevAt is set (watching), else over the
// campaign's life.
func (s Status) Render(prev Status, prevAt time.Time) string {
	return s.RenderPaced(prev, prevAt, 0)
}

// RenderPaced is Render with an ETA never below floor (Tracker.PacedFloor).
func (s Status) RenderPaced(prev Status, prevAt time.Time, floor time.Duration) string {
	const width = 30
	frac := 0.0
	if s.Total > 0 {
		frac = float64(s.Done) / float64(s.Total)
	}
	filled := int(frac * width)
	bar := strings.Repeat("#", filled) + strings.Repeat("-", width-filled)
	var b strings.Builder
	// Whole percents rounded down, as the console shows them: 999 of 1,000
	// is 99%, never a 100% that is not complete.
	pct := int64(0)
	if s.Total > 0 {
		pct = 100 * s.Done / s.Total
	}
	if pct == 100 && !s.Complete {
		pct = 99 // every cancel so far is done, but sweeps still read
	}
	fmt.Fprintf(&b, "%s [%s] %d/%d %d%%\n", s.Campaign, bar, s.Done, s.Total, pct)
	if s.DryRun {
		b.WriteString("  dry run: counts what a sweep would cancel; nothing was cancelled\n")
	}
	fmt.Fprintf(&b, "  cancelled %d, already sent %d, not found %d, not cancellable %d, expired (send time passed) %d, dead-lettered %d, retrying %d, pending %d\n",
		s.Cancelled, s.AlreadySent, s.NotFound, s.NotCancellable, s.Expired, s.DeadLettered, s.Retrying, s.Pending)
	if s.CancelledEarlier > 0 {
		fmt.Fprintf(&b, "  (%d of the cancels were proven by an earlier call of ours: its answer was lost, or it was sent again with force after it was cancelled)\n", s.CancelledEarlier)
	}
	if s.Sweeps > 0 {
		failed := ""
		if s.SweepsFailed > 0 {
			failed = fmt.Sprintf(" (%d failed: enqueue dead list --campaign %s)", s.SweepsFailed, s.Campaign)
		}
		// Per location swept, per sweep: a location swept twice into the
		// campaign counts twice, and so do its messages read and found
		// (the campaign's total counts each message once).
		fmt.Fprintf(&b, "  sweeps: %d/%d location sweeps done%s, %d pages read, %d messages read, %d still scheduled found (each sweep counts its own)\n",
			s.SweepsDone, s.Sweeps, failed, s.SweepPages, s.SweepSeen, s.SweepFound)
	}
	if len(s.SweepList) > 0 {
		// Runs: a requeued failed sweep replaces the run that failed (as
		// s.Sweeps counts it once); a location swept twice is listed twice.
		fmt.Fprintf(&b, "  sweep runs, newest first (at most %d):\n", SweepListMax)
	}
	for _, sw := range s.SweepList {
		what := "everything"
		if sw.ContactID != "" {
			what = "contact " + sw.ContactID
		}
		by := ""
		if sw.Event != "" {
			by = fmt.Sprintf(" (%s %s)", sw.Event, sw.EventID)
		}
		already := ""
		if sw.Already > 0 {
			already = fmt.Sprintf(" (%d already queued or done earlier: by another event, sweep or campaign, or by this sweep before a page was read again)", sw.Already)
			if sw.Moved > 0 {
				already += fmt.Sprintf(" (%d of them moved to this sweep's lane from a slower one)", sw.Moved)
			}
			if sw.Stayed > 0 {
				already += fmt.Sprintf(" (%d of them stay on a slower lane: running, or deep in a long backlog)", sw.Stayed)
			}
		}
		fmt.Fprintf(&b, "    sweep %s%s: %s in %s, %s: %d still scheduled (%d SMS, %d email), %d cancels queued%s, %s\n",
			sw.SweepID, by, what, sw.LocationID, sw.Channel, sw.Found, sw.FoundSMS, sw.FoundEmail, sw.Enqueued, already, sw.State)
	}
	if len(s.MovedTo) > 0 {
		names := slices.Sorted(maps.Keys(s.MovedTo))
		parts := make([]string, len(names))
		var n int64
		for i, c := range names {
			parts[i] = fmt.Sprintf("%d to %s", s.MovedTo[c], c)
			n += s.MovedTo[c]
		}
		fmt.Fprintf(&b, "  %d message(s) moved out, sent again under another campaign that counts them now (%s): not in the total above; their outcomes are there (enqueue status %s)\n",
			n, strings.Join(parts, ", "), names[0])
	}
	if len(s.HeldBy) > 0 {
		fmt.Fprintf(&b, "  messages the sweeps found were already queued or done in campaign(s) %s: what became of them is said there (enqueue status %s)\n",
			strings.Join(s.HeldBy, ", "), s.HeldBy[0])
	}
	if len(s.DeadByReason) > 0 {
		var rs []string
		for r, n := range s.DeadByReason {
			rs = append(rs, fmt.Sprintf("%s %d", r, n))
		}
		sort.Strings(rs)
		fmt.Fprintf(&b, "  dead letters: %s (enqueue dead list --campaign %s; purged ones are counted, not listed)\n", strings.Join(rs, ", "), s.Campaign)
	}
	for loc, why := range s.Parked {
		fmt.Fprintf(&b, "  parked location %s: %s\n", loc, why)
	}
	if s.Complete {
		fmt.Fprintf(&b, "  complete: started %s, finished %s (%s)", s.StartedAt.UTC().Format(time.RFC3339),
			s.FinishedAt.UTC().Format(time.RFC3339), s.FinishedAt.Sub(s.StartedAt).Round(time.Second))
		return b.String()
	}
	rate := float64(s.Done) / max(time.Since(s.StartedAt).Seconds(), 1)
	if !prevAt.IsZero() {
		rate = float64(s.Done-prev.Done) / max(time.Since(prevAt).Seconds(), 0.001)
	}
	eta := "unknown"
	var d time.Duration
	if rate > 0 {
		d = time.Duration(float64(s.Pending) / rate * float64(time.Second))
		eta = d.Round(time.Second).String()
	}
	// A location's first burst goes at once: its rate says nothing of the
	// pacing to come, the floor does.
	if floor > d {
		eta = floor.Round(time.Second).String() + " or more (paced by HighLevel's rate limits)"
	}
	if reading := s.Sweeps - s.SweepsDone; reading > 0 {
		// The total grows as they read: no ETA holds.
		eta = fmt.Sprintf("unknown (%d location sweep(s) still reading: more cancels may come)", reading)
	}
	if until, ok := ParkedUntil(s.Parked); ok {
		// The rate and the floor know nothing of a parking (an audit saw
		// "ETA 2m0s" for a campaign whose location was parked an hour).
		eta += ParkedNote(until, ReserveOnly(s.Parked))
	}
	fmt.Fprintf(&b, "  %.1f/s, ETA %s, started %s", rate, eta, s.StartedAt.UTC().Format(time.RFC3339))
	return b.String()
}

// ParkedUntil is the latest end of the parkings in parked (location ->
// reason, as Tracker.Parked gives them: the limiter writes "... (until
// RFC 3339)"); ok is false when there is none it can read.
func ParkedUntil(parked map[string]string) (until time.Time, ok bool) {
	for _, why := range parked {
		i := strings.LastIndex(why, "(until ")
		if i < 0 {
			continue
		}
		t, err := time.Parse(time.RFC3339, strings.TrimSuffix(why[i+len("(until "):], ")"))
		if err == nil && t.After(until) {
			until, ok = t, true
		}
	}
	return until, ok
}

// ParkedNote is what an ETA adds while locations of the campaign are
// parked for their daily budget; reserveOnly: every parking keeps the
// daily reserve for urgent cancels, which go on.
func ParkedNote(until time.Time, reserveOnly bool) string {
	if reserveOnly {
		return " (cancels at parked locations wait until " + until.UTC().Format(time.RFC3339) + ", except urgent ones, which spend the daily reserve)"
	}
	return " (cancels at parked locations wait until " + until.UTC().Format(time.RFC3339) + ")"
}

// ReserveOnly says every parking in parked (as Tracker.Parked gives them)
// is the daily reserve's, which urgent cancels may spend.
func ReserveOnly(parked map[string]string) bool {
	for _, why := range parked {
		if !strings.Contains(why, ratelimit.ReserveMarker) {
			return false
		}
	}
	return len(parked) > 0
}
