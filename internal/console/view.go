package console

import (
	"fmt"
	"html/template"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ghlcancel/ghlcancel/internal/campaign"
)

// Num formats an integer for people: 1234567 -> "1,234,567".
func Num(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	if neg {
		b.WriteByte('-')
	}
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// Dur formats a duration for people: "3 m 20 s", "2 h 5 m", "4 d 3 h",
// "0.4 s"; the two largest units.
func Dur(d time.Duration) string {
	if d < 0 {
		d = -d
	}
	if d < 10*time.Second {
		if d < time.Second && d >= 100*time.Millisecond {
			return fmt.Sprintf("%.1f s", d.Seconds())
		}
		return fmt.Sprintf("%d s", int(d.Round(time.Second).Seconds()))
	}
	d = d.Round(time.Second)
	units := []struct {
		name string
		d    time.Duration
	}{{"d", 24 * time.Hour}, {"h", time.Hour}, {"m", time.Minute}, {"s", time.Second}}
	var parts []string
	for _, u := range units {
		if d >= u.d {
			parts = append(parts, fmt.Sprintf("%d %s", d/u.d, u.name))
			d %= u.d
		} else if len(parts) > 0 {
			break // "2 h 5 s" reads wrong: stop at the first empty unit after the largest
		}
		if len(parts) == 2 {
			break
		}
	}
	return strings.Join(parts, " ")
}

// Rate formats a rate per second for people.
func Rate(perSec float64) string {
	switch {
	case perSec <= 0 || math.IsNaN(perSec) || math.IsInf(perSec, 0):
		return "–"
	case perSec < 10:
		return fmt.Sprintf("%.1f/s", perSec)
	}
	return Num(int64(math.Round(perSec))) + "/s"
}

func funcs(prefix string) template.FuncMap {
	return template.FuncMap{
		"num": func(v any) string {
			switch n := v.(type) {
			case int:
				return Num(int64(n))
			case int64:
				return Num(n)
			}
			return fmt.Sprint(v)
		},
		"dur":    Dur,
		"prefix": func() string { return prefix },
		"when": func(t time.Time) string {
			if t.IsZero() {
				return "–"
			}
			return t.UTC().Format("2006-01-02 15:04:05") + " UTC"
		},
		"ago": func(t time.Time) string {
			if t.IsZero() {
				return ""
			}
			return Dur(time.Since(t)) + " ago"
		},
		"in": func(t time.Time) string { return "in " + Dur(time.Until(t)) },
	}
}

// outcomeMeaning says what each counted outcome means, as the README's
// "What each answer means" does.
var outcomeMeaning = []struct{ key, label, meaning string }{
	{"cancelled", "Cancelled", "HighLevel cancelled the scheduled message; it will not go out."},
	{"already_sent", "Already sent", "Too late: read back after \"not found\", the message had gone out (sent, delivered, read...)."},
	{"not_found", "Not found", "HighLevel knows no such message (read back: it does not exist). Check the id."},
	{"not_cancellable", "Not cancellable", "HighLevel answered \"not found\": not read back (VERIFY=off), or it reads \"failed\" (cancelled elsewhere, or its send failed)."},
	{"expired", "Expired", "Its send time had passed when its turn came: no call was made, the message has gone out."},
	{"dead_lettered", "Dead-lettered", "Failed for good: see the reasons and what to do below; fix the cause, then requeue."},
	{"retrying", "Retrying", "An attempt failed (5xx, network, 429): it will be tried again with backoff. Included in pending."},
	{"pending", "Pending", "Not finished yet: queued, waiting for its location's rate-limit slot, or retrying."},
}

type outcomeRow struct {
	Key, Label, Meaning string
	N                   int64
}

func outcomes(s campaign.Status) []outcomeRow {
	v := map[string]int64{"cancelled": s.Cancelled, "already_sent": s.AlreadySent, "not_found": s.NotFound,
		"not_cancellable": s.NotCancellable, "expired": s.Expired, "dead_lettered": s.DeadLettered,
		"retrying": s.Retrying, "pending": s.Pending}
	out := make([]outcomeRow, len(outcomeMeaning))
	for i, o := range outcomeMeaning {
		out[i] = outcomeRow{Key: o.key, Label: o.label, Meaning: o.meaning, N: v[o.key]}
	}
	return out
}

// progress is the rate and ETA of a campaign, for the list and the page.
type progress struct {
	Pct     int
	PerSec  float64
	Rate    string
	ETA     string
	Elapsed string
}

// progressOf computes rate and ETA: between two samples when the page sent
// its previous one (prevDone at prevAt), else over the campaign's life.
func progressOf(s campaign.Status, now time.Time, prevDone int64, prevAt time.Time) progress {
	var p progress
	if s.Total > 0 {
		p.Pct = int(100 * s.Done / s.Total)
	}
	end := now
	if s.FinishedAt != nil {
		end = *s.FinishedAt
	}
	life := end.Sub(s.StartedAt)
	p.Elapsed = Dur(life)
	p.PerSec = float64(s.Done) / max(life.Seconds(), 1)
	if !prevAt.IsZero() && now.Sub(prevAt) >= 500*time.Millisecond && s.FinishedAt == nil && prevDone <= s.Done {
		p.PerSec = float64(s.Done-prevDone) / now.Sub(prevAt).Seconds()
	}
	p.Rate = Rate(p.PerSec)
	switch {
	case s.Complete:
		p.ETA = "done"
	case p.PerSec > 0:
		p.ETA = Dur(time.Duration(float64(s.Pending) / p.PerSec * float64(time.Second)))
	default:
		p.ETA = "unknown"
	}
	if until, ok := campaign.ParkedUntil(s.Parked); ok && !s.Complete {
		p.ETA += campaign.ParkedNote(until, campaign.ReserveOnly(s.Parked))
	}
	return p
}

type reasonRow struct {
	Reason, Hint string
	N            int64
}

func reasonRows(m map[string]int64, hint func(string) string) []reasonRow {
	out := make([]reasonRow, 0, len(m))
	for r, n := range m {
		out = append(out, reasonRow{Reason: r, N: n, Hint: hint(r)})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].N != out[j].N {
			return out[i].N > out[j].N
		}
		return out[i].Reason < out[j].Reason
	})
	return out
}

type locRow struct {
	Location, Why string
	Until         time.Time
}

func sortedLocs(rows []locRow) []locRow {
	sort.Slice(rows, func(i, j int) bool { return rows[i].Location < rows[j].Location })
	return rows
}
