package deadletter

import (
	"context"
	"strconv"

	"github.com/redis/go-redis/v9"
)

// Ref names one dead letter as it was when it was matched: its task id, its
// lane and its index score (dead-at, unix ms). A purge removes a record only
// if it is still that one: a record requeued and dead-lettered again since
// is a new failure nobody has seen, and stays.
type Ref struct {
	TaskID string
	Queue  string
	Score  int64
}

// Matching returns every record matching f, oldest first, as refs: what a
// purge confirmation counts, so that exactly those are purged. Each ref's
// score is the one the scan read the record under, so a record requeued
// and dead-lettered again during the scan cannot lend its new score to the
// old ref.
func (s *Store) Matching(ctx context.Context, f Filter) ([]Ref, error) {
	var refs []Ref
	err := s.scanFrom(ctx, "-inf", f, func(r Record, score int64) error {
		refs = append(refs, Ref{TaskID: r.TaskID, Queue: r.Queue, Score: score})
		return nil
	})
	return refs, err
}

// LuaDropArchived defines drop_archived(lane, id): asynq's archived copy
// of a dead letter's task goes with it (purge, a sweep's replay).
const LuaDropArchived = `
local function drop_archived(lane, id)
  local tk = "asynq:{" .. lane .. "}:t:" .. id
  if redis.call("HGET", tk, "state") == "archived" then
    redis.call("DEL", tk)
    redis.call("ZREM", "asynq:{" .. lane .. "}:archived", id)
  end
end
`

// purgeScript removes the records of a page of refs that are still the
// ones matched (same index score), with their copies in asynq's archive.
// KEYS records hash, index. ARGV triplets: task id, score, lane.
var purgeScript = redis.NewScript(LuaDropArchived + `
local n = 0
for i = 1, #ARGV, 3 do
  local id, score, lane = ARGV[i], ARGV[i+1], ARGV[i+2]
  local cur = redis.call("ZSCORE", KEYS[2], id)
  if cur and tonumber(cur) == tonumber(score) then
    redis.call("HDEL", KEYS[1], id)
    redis.call("ZREM", KEYS[2], id)
    n = n + 1
    if lane ~= "" then drop_archived(lane, id) end
  end
end
return n
`)

// PurgeRefs deletes the dead letters named by refs for good, with their
// copies in asynq's archive: one script per PageSize refs. A record that is
// no longer as matched (requeued, dead-lettered again, or removed) is left
// alone and not counted. progress, when set, gets the count so far
// after each page. The CLI (`enqueue dead purge`) and the console both
// purge through it, after showing len(refs) for confirmation.
func (s *Store) PurgeRefs(ctx context.Context, refs []Ref, progress func(deleted int)) (int, error) {
	deleted := 0
	for i := 0; i < len(refs); i += PageSize {
		page := refs[i:min(i+PageSize, len(refs))]
		argv := make([]any, 0, 3*len(page))
		for _, r := range page {
			argv = append(argv, r.TaskID, strconv.FormatInt(r.Score, 10), r.Queue)
		}
		n, err := purgeScript.Run(ctx, s.rdb, []string{KeyRecords, KeyIndex}, argv...).Int()
		if err != nil {
			return deleted, err
		}
		deleted += n
		if progress != nil {
			progress(deleted)
		}
	}
	return deleted, nil
}
