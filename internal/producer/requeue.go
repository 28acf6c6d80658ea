package producer

import (
	"context"
	"errors"
	"fmt"

	"github.com/hibiken/asynq"

	"github.com/ghlcancel/ghlcancel/internal/deadletter"
	"github.com/ghlcancel/ghlcancel/internal/ghl"
)

// RequeueStats counts what Requeue did.
type RequeueStats struct {
	Requeued      int
	AlreadyQueued int
	Skipped       int // records that cannot be rebuilt into a task (invalid payloads)
}

// Requeue puts every dead letter matching f back on its lane as a fresh task
// (attempts start from zero), removes it from asynq's archive if it is still
// there, and deletes the record once the task is queued. A record whose
// message is queued again already is dropped as AlreadyQueued. Records that
// hold no valid task (invalid payloads) are left in place and counted.
func (p *Producer) Requeue(ctx context.Context, store *deadletter.Store, f deadletter.Filter, progress func(RequeueStats)) (RequeueStats, error) {
	insp := asynq.NewInspectorFromRedisClient(p.rdb)
	var st RequeueStats
	var done []string
	flush := func() error {
		if err := store.Remove(ctx, done...); err != nil {
			return fmt.Errorf("removing requeued records: %w", err)
		}
		done = done[:0]
		if progress != nil {
			progress(st)
		}
		return nil
	}
	err := store.Scan(ctx, f, func(r deadletter.Record) error {
		kind, err := ghl.ParseKind(r.Kind)
		if err != nil || r.Kind == "" || r.MessageID == "" {
			st.Skipped++
			return nil
		}
		queue := r.Queue
		if !ValidQueue(queue) {
			queue = p.cfg.Queue
		}
		info, err := insp.GetTaskInfo(queue, r.TaskID)
		switch {
		case err == nil && info.State == asynq.TaskStateArchived:
			if err := insp.DeleteTask(queue, r.TaskID); err != nil && !errors.Is(err, asynq.ErrTaskNotFound) {
				return fmt.Errorf("%w: deleting archived task %s: %w", ErrUnavailable, r.TaskID, err)
			}
		case err == nil:
			// The message is queued again (pending, active, retry): leave it be.
			st.AlreadyQueued++
			done = append(done, r.TaskID)
			return nil
		case !errors.Is(err, asynq.ErrTaskNotFound) && !errors.Is(err, asynq.ErrQueueNotFound):
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		// The campaign counts it as pending again (before it can finish anew).
		if err := p.campaigns.Requeued(ctx, r.CampaignID, r.TaskID); err != nil {
			return fmt.Errorf("%w: campaign %s: %w", ErrUnavailable, r.CampaignID, err)
		}
		res := p.enqueue(ctx, Item{Kind: kind, MessageID: r.MessageID, LocationID: r.LocationID,
			CampaignID: r.CampaignID, SendAt: r.SendAt, Queue: queue}, false)
		switch res.Status {
		case Enqueued:
			st.Requeued++
		case AlreadyQueued:
			st.AlreadyQueued++
		default:
			if errors.Is(res.Err, ErrUnavailable) || ctx.Err() != nil {
				return res.Err
			}
			st.Skipped++
			return nil
		}
		done = append(done, r.TaskID)
		if len(done) >= deadletter.PageSize {
			return flush()
		}
		return nil
	})
	if ferr := flush(); err == nil {
		err = ferr
	}
	return st, err
}
