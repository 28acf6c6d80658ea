// Package producer puts cancel tasks on the queue. The enqueue CLI, the
// demo and (later) the intake API all enqueue through it, so dedupe,
// validation and lane choice behave the same everywhere.
package producer

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ghlcancel/ghlcancel/internal/campaign"
	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
)

// ErrUnavailable wraps failures to reach Redis: the item was not judged,
// only not enqueued, and trying again later can succeed.
var ErrUnavailable = errors.New("queue unavailable")

// Item is one cancel request.
type Item struct {
	Kind       ghl.Kind
	MessageID  string
	LocationID string
	CampaignID string
	SendAt     int64  // unix seconds, 0 if unknown
	Queue      string // lane; defaults to the producer's
	// Force queues the message again even when it already has a terminal
	// outcome (cancelled, not cancellable, expired): HighLevel is called again.
	Force bool
	// ForceBefore (unix ms), when set, forces it only over an outcome
	// recorded before then (a sweep: what the export it read says is newer
	// than an outcome recorded before the export was asked, not than one
	// recorded while its answer was on the way). Force wins over it.
	ForceBefore int64
	// Event and EventAt (unix ms): the webhook event that found it, if any.
	Event   string
	EventAt int64
	// MaxRetry of its task, as Config.MaxRetry; 0: the producer's.
	MaxRetry int
	// fromDeadLetter: sent by Requeue; the dead letter's record is removed
	// by the enqueue script whatever the answer.
	fromDeadLetter bool
}

// Status is what happened to one item.
type Status int

// Statuses: what sending a message meant (see Producer.Enqueue).
const (
	// Enqueued: a fresh task, new to its campaign.
	Enqueued Status = iota
	// AlreadyQueued: a task for the message is pending, scheduled,
	// retrying or running on some lane; nothing changed.
	AlreadyQueued
	// AlreadyDone: the message has a terminal outcome recorded (cancelled,
	// not cancellable, expired); nothing is queued and HighLevel is not
	// called. Item.Force queues it again.
	AlreadyDone
	// Requeued: the message had ended (dead-lettered, or done and forced):
	// its old outcome and dead letter are gone and a fresh task is queued.
	Requeued
	// Rejected: the item is invalid, or Redis failed (Err wraps ErrUnavailable).
	Rejected
)

func (s Status) String() string {
	switch s {
	case Enqueued:
		return "enqueued"
	case AlreadyQueued:
		return "already_queued"
	case AlreadyDone:
		return "already_done"
	case Requeued:
		return "requeued"
	}
	return "rejected"
}

// Result of one item. Err says why it was rejected.
type Result struct {
	Status Status
	Err    error
	// Elsewhere: for AlreadyQueued and AlreadyDone, the message is counted
	// in another campaign than the one asked for, HeldBy ("" for none):
	// its outcome is counted there, not in the campaign asked for.
	Elsewhere bool
	HeldBy    string
	// Moved: for AlreadyQueued, the message's task waited (pending,
	// snoozed or retrying) on a slower lane than the one asked for, and
	// now waits on that one, in its own campaign.
	Moved bool
	// StaysOn: for AlreadyQueued, the slower lane than the one asked for
	// that the task stays on, not moved: it is running (its attempt is
	// under way), or deep in a long pending backlog (promoteScanMax).
	// Sending it again later can move it.
	StaysOn string
}

// Config configures a Producer.
type Config struct {
	// Queue is the default lane. Defaults to tasks.QueueDefault.
	Queue string
	// MaxRetry per task. Defaults to tasks.MaxRetryDefault; NoRetry (or
	// any negative value) means none.
	MaxRetry int
	// Timeout per attempt. Defaults to tasks.TimeoutDefault.
	Timeout time.Duration
	// Parallel enqueues in flight in EnqueueAll. Zero or less: ParallelDefault.
	Parallel int
	// PromoteWithin: a bulk-lane item whose send_at is at most this far away
	// goes to the default lane instead, so a long bulk drain does not make
	// it expire. Defaults to PromoteWithinDefault; negative disables.
	PromoteWithin time.Duration
	// CampaignRetention is how long campaign counters and reports are kept.
	// Zero or less: campaign.RetentionDefault.
	CampaignRetention time.Duration
}

// NoRetry as Config.MaxRetry means no retries at all (0 means the default).
const NoRetry = -1

// Retries turns a retry count a person gave (a flag, MAX_RETRY) into
// Config.MaxRetry: there, 0 means "none", not "the default".
func Retries(n int) int {
	if n <= 0 {
		return NoRetry
	}
	return n
}

// PromoteWithinDefault is Config.PromoteWithin's default.
const PromoteWithinDefault = 15 * time.Minute

// ParallelDefault is how many enqueue batches are in flight at once: 16 x
// 500 items keeps Redis busy (bench enqueue: 16 x 200 gave 4.6-5.6x
// one-by-one, 16 x 500 7.8x; one 500-item script holds Redis ~2-3 ms).
const ParallelDefault = 16

// Producer enqueues cancel tasks. Safe for concurrent use.
type Producer struct {
	rdb       redis.UniversalClient
	cfg       Config
	published sync.Map // lanes already added to asynq's queue set
}

// New builds a Producer on a shared Redis client (closed by the caller).
func New(rdb redis.UniversalClient, cfg Config) *Producer {
	cfg.Queue = cmp.Or(cfg.Queue, tasks.QueueDefault)
	// Zero or less means the default: a negative count would panic in
	// make(chan), and a negative retention would expire a campaign's
	// counters as they are written.
	if cfg.Parallel <= 0 {
		cfg.Parallel = ParallelDefault
	}
	cfg.PromoteWithin = cmp.Or(cfg.PromoteWithin, PromoteWithinDefault)
	if cfg.CampaignRetention <= 0 {
		cfg.CampaignRetention = campaign.RetentionDefault
	}
	return &Producer{rdb: rdb, cfg: cfg}
}

// lane picks an item's lane: its own, else the producer's; a bulk item
// about to be sent is promoted to default.
func (p *Producer) lane(it Item, now time.Time) string {
	q := cmp.Or(it.Queue, p.cfg.Queue)
	if q == tasks.QueueBulk && it.SendAt > 0 && p.cfg.PromoteWithin > 0 &&
		time.Unix(it.SendAt, 0).Sub(now) <= p.cfg.PromoteWithin {
		return tasks.QueueDefault
	}
	return q
}

// ValidQueue reports whether q is one of the lanes.
func ValidQueue(q string) bool {
	for _, l := range tasks.Queues {
		if q == l {
			return true
		}
	}
	return false
}

// Enqueue puts one item on its lane, by one rule everywhere (CLI, intake
// API, dead-letter requeue), decided atomically in Redis:
//
//   - already queued (pending, scheduled, retrying or running on any lane):
//     AlreadyQueued, nothing changes;
//   - dead-lettered (the token was wrong, and now it is fixed): Requeued,
//     a fresh task with attempts from zero;
//   - already has a terminal outcome: AlreadyDone, HighLevel is not called
//     again (Item.Force: Requeued);
//   - otherwise Enqueued.
//
// A message sent without a campaign that would run again is decided in a
// second script call, under the campaign its record names (each call is
// atomic; an interrupted caller can see such an item Rejected).
//
// Campaign totals count distinct messages, so re-running a file changes no
// total and a finished campaign stays complete.
func (p *Producer) Enqueue(ctx context.Context, it Item) Result {
	out := make([]Result, 1)
	p.enqueueChunk(ctx, []Item{it}, out)
	return out[0]
}

// EnqueueAll enqueues every item from next (which returns ok=false at the
// end) in batches of BatchSize, Parallel batches in flight, calling done for
// each item in no particular order. It holds at most (Parallel+1) batches in
// memory, so a file of any size streams. It stops early when ctx ends.
func (p *Producer) EnqueueAll(ctx context.Context, next func() (Item, bool), done func(Item, Result)) {
	batches := make(chan []Item, p.cfg.Parallel)
	var wg sync.WaitGroup
	var mu sync.Mutex
	for range p.cfg.Parallel {
		wg.Go(func() {
			for b := range batches {
				out := p.EnqueueBatch(ctx, b)
				mu.Lock()
				for i, it := range b {
					done(it, out[i])
				}
				mu.Unlock()
			}
		})
	}
	// Items read but not sent because ctx ended are reported too (not
	// enqueued, ErrUnavailable with ctx's error), so a summary accounts
	// for every item read.
	dropped := func(b []Item) {
		mu.Lock()
		defer mu.Unlock()
		for _, it := range b {
			done(it, Result{Status: Rejected, Err: fmt.Errorf("%w: %w", ErrUnavailable, ctx.Err())})
		}
	}
	batch := make([]Item, 0, BatchSize)
	for ctx.Err() == nil {
		it, ok := next()
		if !ok {
			break
		}
		batch = append(batch, it)
		if len(batch) == BatchSize {
			select {
			case batches <- batch:
			case <-ctx.Done():
				dropped(batch)
			}
			batch = make([]Item, 0, BatchSize)
		}
	}
	if len(batch) > 0 {
		if ctx.Err() == nil {
			batches <- batch
		} else {
			dropped(batch)
		}
	}
	close(batches)
	wg.Wait()
}
