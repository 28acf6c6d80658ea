// Package progress shows how far a long command is: a progress bar on a
// terminal (schollz/progressbar), a plain line every few seconds otherwise
// (logs, CI), so that progress is visible wherever the command runs.
package progress

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// Reporter counts done items.
type Reporter struct {
	mu    sync.Mutex
	w     io.Writer
	bar   *progressbar.ProgressBar
	label string
	total int64
	n     int64
	start time.Time
	last  time.Time
	every time.Duration
	done  bool
}

// LineEvery is the interval between plain progress lines.
const LineEvery = 2 * time.Second

// New reports to w; total -1 means unknown.
func New(w io.Writer, total int64, label string) *Reporter {
	r := &Reporter{w: w, label: label, total: total, start: time.Now(), every: LineEvery}
	r.last = r.start
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		r.bar = progressbar.NewOptions64(total,
			progressbar.OptionSetWriter(w),
			progressbar.OptionSetDescription(label),
			progressbar.OptionShowCount(),
			progressbar.OptionShowIts(),
			progressbar.OptionSetItsString("items"),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionClearOnFinish(),
		)
	}
	return r
}

// Add counts n more items.
func (r *Reporter) Add(n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n += int64(n)
	if r.bar != nil {
		_ = r.bar.Add(n)
		return
	}
	if now := time.Now(); now.Sub(r.last) >= r.every {
		r.last = now
		r.line(now)
	}
}

func (r *Reporter) line(now time.Time) {
	rate := float64(r.n) / max(now.Sub(r.start).Seconds(), 1e-9)
	if r.total > 0 {
		fmt.Fprintf(r.w, "%s: %d/%d (%.0f%%, %.0f/s)\n", r.label, r.n, r.total, 100*float64(r.n)/float64(r.total), rate)
		return
	}
	fmt.Fprintf(r.w, "%s: %d (%.0f/s)\n", r.label, r.n, rate)
}

// Finish ends the display.
func (r *Reporter) Finish() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done {
		return
	}
	r.done = true
	if r.bar != nil {
		_ = r.bar.Finish()
		return
	}
	if time.Since(r.start) >= r.every {
		r.line(time.Now())
	}
}
