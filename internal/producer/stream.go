package producer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/ghlcancel/ghlcancel/internal/progress"
)

// Summary counts an enqueue run.
type Summary struct {
	Enqueued      int `json:"enqueued"`
	AlreadyQueued int `json:"already_queued"`
	// Moved: of AlreadyQueued, the messages that waited on a slower lane
	// and now wait on the one asked for (Result.Moved).
	Moved int `json:"moved,omitempty"`
	// StayedOnSlower: of AlreadyQueued, those that stay on a slower lane
	// than the one asked for (Result.StaysOn: running, or deep in a
	// backlog).
	StayedOnSlower int `json:"stayed_on_a_slower_lane,omitempty"`
	AlreadyDone    int `json:"already_done"`
	Requeued       int `json:"requeued"`
	Rejected       int `json:"rejected"`
	Failed         int `json:"failed,omitempty"` // not enqueued: Redis failed or the run was interrupted; re-run
	// HeldBy counts, by campaign ("" for none), the messages already
	// queued or done that are counted in another campaign than the one
	// they were sent under (each message is counted in one campaign):
	// their outcomes are read there. At most maxHeldBy campaigns are
	// named; the rest count under HeldByOthers.
	HeldBy map[string]int `json:"held_by,omitempty"`
}

// HeldByOthers is Summary.HeldBy's key for campaigns past maxHeldBy.
const HeldByOthers = "(other campaigns)"

const maxHeldBy = 20

func (s *Summary) held(r Result) {
	if !r.Elsewhere || (r.Status != AlreadyQueued && r.Status != AlreadyDone) {
		return
	}
	if s.HeldBy == nil {
		s.HeldBy = map[string]int{}
	}
	c := r.HeldBy
	if _, ok := s.HeldBy[c]; !ok && len(s.HeldBy) >= maxHeldBy {
		c = HeldByOthers
	}
	s.HeldBy[c]++
}

// maxReportedRejects bounds per-line messages; the count stays exact.
const maxReportedRejects = 100

// EnqueueReader streams items from in through p, reporting rejected lines (with
// their line numbers) on errw and progress on errw.
func EnqueueReader(ctx context.Context, p *Producer, in io.Reader, defaults Item, total int64, errw io.Writer) (Summary, error) {
	var (
		mu    sync.Mutex // next runs on this goroutine, done on the producer's
		sum   Summary
		fatal error
	)
	rd := NewReader(in, defaults)
	bar := progress.New(errw, total, "enqueue")
	defer bar.Finish()
	reject := func(where string, err error) {
		sum.Rejected++
		if sum.Rejected <= maxReportedRejects {
			fmt.Fprintf(errw, "%s: %v\n", where, err)
		} else if sum.Rejected == maxReportedRejects+1 {
			fmt.Fprintln(errw, "(more rejected lines; only the count is reported from here on)")
		}
	}
	p.EnqueueAll(ctx, func() (Item, bool) {
		for {
			l, ok := rd.Next()
			if !ok {
				if l.Err != nil {
					mu.Lock()
					fatal = fmt.Errorf("line %d: %w", l.N, l.Err)
					mu.Unlock()
				}
				return Item{}, false
			}
			if l.Err != nil {
				mu.Lock()
				reject(fmt.Sprintf("line %d", l.N), l.Err)
				mu.Unlock()
				bar.Add(1)
				continue
			}
			return l.Item, true
		}
	}, func(it Item, r Result) {
		mu.Lock()
		defer mu.Unlock()
		sum.held(r)
		switch r.Status {
		case Enqueued:
			sum.Enqueued++
		case AlreadyQueued:
			sum.AlreadyQueued++
			if r.Moved {
				sum.Moved++
			}
			if r.StaysOn != "" {
				sum.StayedOnSlower++
			}
		case AlreadyDone:
			sum.AlreadyDone++
		case Requeued:
			sum.Requeued++
		default:
			if errors.Is(r.Err, ErrUnavailable) {
				sum.Failed++
				if fatal == nil {
					fatal = r.Err
				}
				break
			}
			reject("message "+it.MessageID, r.Err)
		}
		bar.Add(1)
	})
	// An interrupted run is reported as interrupted, even when batches cut
	// off by it failed first (their errors read "queue unavailable:
	// context canceled", which blames Redis for the user's Ctrl-C).
	if ctx.Err() != nil && (fatal == nil || errors.Is(fatal, ErrUnavailable)) {
		fatal = fmt.Errorf("interrupted: %w (re-run the same command: already queued ids are skipped)", ctx.Err())
	}
	return sum, fatal
}
