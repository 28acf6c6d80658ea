package deadletter

import (
	"context"

	"github.com/hibiken/asynq"
)

// Purge deletes every record matching f for good, with its copy in asynq's
// archive, PageSize records per round trip so that 100,000 records never
// block Redis. progress, when set, is called after each page with the count
// so far. It returns how many records it deleted. The CLI (`enqueue dead
// purge`) and the console both purge through it.
func (s *Store) Purge(ctx context.Context, f Filter, progress func(deleted int)) (int, error) {
	insp := asynq.NewInspectorFromRedisClient(s.rdb)
	var batch []string
	deleted := 0
	flush := func() error {
		if err := s.Remove(ctx, batch...); err != nil {
			return err
		}
		deleted += len(batch)
		batch = batch[:0]
		if progress != nil {
			progress(deleted)
		}
		return nil
	}
	err := s.Scan(ctx, f, func(r Record) error {
		if info, err := insp.GetTaskInfo(r.Queue, r.TaskID); err == nil && info.State == asynq.TaskStateArchived {
			_ = insp.DeleteTask(r.Queue, r.TaskID)
		}
		batch = append(batch, r.TaskID)
		if len(batch) >= PageSize {
			return flush()
		}
		return nil
	})
	if err == nil && len(batch) > 0 {
		err = flush()
	}
	return deleted, err
}

// CountMatching counts the records matching f (a full scan: for
// confirmations, not for pages refreshed every few seconds).
func (s *Store) CountMatching(ctx context.Context, f Filter) (int, error) {
	n := 0
	err := s.Scan(ctx, f, func(Record) error { n++; return nil })
	return n, err
}
