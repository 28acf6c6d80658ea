package producer

import (
	"cmp"
	"context"
	"errors"
	"fmt"

	"github.com/ghlcancel/ghlcancel/internal/deadletter"
	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/ledger"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
	"github.com/ghlcancel/ghlcancel/internal/tokens"
)

// RequeueStats counts what Requeue did.
type RequeueStats struct {
	Requeued      int `json:"requeued"`
	AlreadyQueued int `json:"already_queued"`
	AlreadyDone   int `json:"already_done"`
	Skipped       int `json:"skipped"` // records that cannot be rebuilt into a task (invalid payloads)
	// Gone: ids asked for by RequeueIDs that are no longer dead letters
	// (requeued or purged meanwhile: a second click on the same selection).
	Gone int `json:"gone,omitempty"`
}

// Requeue sends every dead letter matching f again, through the same rule
// as any enqueue (Producer.Enqueue): a dead-lettered message is revived
// (its archived copy and record removed, a fresh task queued with attempts
// from zero, its campaign counting it as pending again). A record whose
// message is queued again already, or has since reached a terminal outcome,
// is stale and removed, by the same script (so a new dead letter the fresh
// task writes is never removed). Records that hold no valid task (invalid
// payloads) are left in place and counted as skipped. Records are read and
// sent BatchSize at a time. A failed sweep's dead letter is replayed by
// ReviveSweep (a new sweep with the same filters, campaign and event).
func (p *Producer) Requeue(ctx context.Context, store *deadletter.Store, f deadletter.Filter, progress func(RequeueStats)) (RequeueStats, error) {
	return p.requeue(ctx, func(fn func(deadletter.Record) error) error { return store.Scan(ctx, f, fn) }, progress)
}

// RequeueIDs requeues the dead letters of the given task ids (a selection
// made in the console), by the same rule as Requeue. Ids with no record
// (requeued or purged meanwhile) are not counted.
func (p *Producer) RequeueIDs(ctx context.Context, store *deadletter.Store, taskIDs []string, progress func(RequeueStats)) (RequeueStats, error) {
	found := map[string]bool{}
	st, err := p.requeue(ctx, func(fn func(deadletter.Record) error) error {
		return store.ScanIDs(ctx, taskIDs, func(r deadletter.Record) error {
			found[r.TaskID] = true
			return fn(r)
		})
	}, progress)
	asked := map[string]bool{}
	for _, id := range taskIDs {
		asked[id] = true
	}
	st.Gone = len(asked) - len(found)
	return st, err
}

func (p *Producer) requeue(ctx context.Context, scan func(func(deadletter.Record) error) error, progress func(RequeueStats)) (RequeueStats, error) {
	var st RequeueStats
	var batch []Item
	// A requeue means the operator fixed what a location token mint was
	// refused for (installed the app, reactivated the sub-account): the
	// refusal workers remember for a minute must not answer these tasks.
	forget := map[string]bool{}
	forgetMints := func() error {
		if len(forget) == 0 {
			return nil
		}
		locs := make([]string, 0, len(forget))
		for l := range forget {
			locs = append(locs, l)
		}
		clear(forget)
		if err := tokens.ForgetMintFailures(ctx, p.rdb, locs); err != nil {
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		return nil
	}
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		if err := forgetMints(); err != nil {
			return err
		}
		out := make([]Result, len(batch))
		p.enqueueChunk(ctx, batch, out)
		for _, r := range out {
			switch r.Status {
			case Requeued, Enqueued: // Enqueued: the archived copy and record had expired
				st.Requeued++
			case AlreadyQueued:
				st.AlreadyQueued++
			case AlreadyDone:
				st.AlreadyDone++
			default:
				if errors.Is(r.Err, ErrUnavailable) || ctx.Err() != nil {
					return cmp.Or(r.Err, ctx.Err())
				}
				st.Skipped++
			}
		}
		batch = batch[:0]
		if progress != nil {
			progress(st)
		}
		return nil
	}
	var sweeps []deadletter.Record
	flagged := false
	err := scan(func(r deadletter.Record) error {
		if tokens.IsMintReason(r.Reason) && r.LocationID != "" {
			forget[r.LocationID] = true
		}
		if r.Kind == "sweep" {
			sweeps = append(sweeps, r)
			return nil
		}
		kind, err := ghl.ParseKind(r.Kind)
		if err != nil || r.Kind == "" || r.MessageID == "" {
			st.Skipped++
			return nil
		}
		if r.Reason == tasks.ReasonWrongKind {
			// HighLevel has the id as the other kind: send it as that. The
			// enqueue rule takes this dead letter out of its campaign, when
			// it looks (the flag its settle set; set again here).
			if !flagged {
				if err := ledger.FlagWrongKind(ctx, p.rdb, ledger.DeadRetentionDefault); err != nil {
					return fmt.Errorf("%w: %w", ErrUnavailable, err)
				}
				flagged = true
			}
			kind = tasks.OtherKind(kind)
		}
		queue := r.Queue
		if !ValidQueue(queue) {
			queue = p.cfg.Queue
		}
		batch = append(batch, Item{Kind: kind, MessageID: r.MessageID, LocationID: r.LocationID,
			CampaignID: r.CampaignID, SendAt: r.SendAt, Queue: queue, fromDeadLetter: true})
		if len(batch) >= BatchSize {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	if err == nil {
		err = forgetMints()
	}
	for _, r := range sweeps {
		if err != nil {
			break
		}
		var ok bool
		_, ok, err = p.ReviveSweep(ctx, r)
		switch {
		case ok:
			st.Requeued++
		case errors.Is(err, ErrSweepRevived):
			// Replayed by a requeue running beside this one (a double
			// click): its sweep is queued, nothing is left in place.
			st.AlreadyQueued++
			err = nil
		case err == nil:
			st.Skipped++
		}
	}
	if progress != nil && len(sweeps) > 0 {
		progress(st)
	}
	// Interrupted (Ctrl-C): say so, not "queue unavailable: context
	// canceled", which blames Redis.
	if err != nil && ctx.Err() != nil {
		err = fmt.Errorf("interrupted: %w (run it again: what was requeued is already queued and its dead letters are gone)", ctx.Err())
	}
	return st, err
}
