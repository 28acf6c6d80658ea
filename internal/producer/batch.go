package producer

import (
	"cmp"
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/ghlcancel/ghlcancel/internal/tasks"
)

// BatchSize is how many items one enqueue script call takes.
const BatchSize = 500

// enqueueScript enqueues a batch the way asynq v0.26.0's own enqueue script
// does (HSET msg/state/pending_since, LPUSH to the lane), except that an item
// is skipped when its task id exists on any lane, so cross-lane dedupe is
// atomic. KEYS, 4 per item: task key on its lane, the lane's pending list,
// the task keys on the two other lanes. ARGV: now (ns), then per item the
// encoded message and the task id. Returns 1 (enqueued) or 0 per item.
var enqueueScript = redis.NewScript(`
local res = {}
local n = #KEYS / 4
for i = 0, n - 1 do
  local k = i * 4
  if redis.call("EXISTS", KEYS[k+1]) == 1 or redis.call("EXISTS", KEYS[k+3]) == 1 or redis.call("EXISTS", KEYS[k+4]) == 1 then
    res[i+1] = 0
  else
    redis.call("HSET", KEYS[k+1], "msg", ARGV[2+i*2], "state", "pending", "pending_since", ARGV[1])
    redis.call("LPUSH", KEYS[k+2], ARGV[3+i*2])
    res[i+1] = 1
  end
end
return res`)

// encodeTaskMessage is asynq v0.26.0's TaskMessage protobuf (internal/proto
// asynq.proto) for the fields our tasks set. TestBatchTasksDecodeInAsynq
// checks it against asynq's own decoder.
func encodeTaskMessage(typ string, payload []byte, id, queue string, retry int, timeout time.Duration) []byte {
	b := make([]byte, 0, len(payload)+len(typ)+len(id)+len(queue)+24)
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendString(b, typ)
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendBytes(b, payload)
	b = protowire.AppendTag(b, 3, protowire.BytesType)
	b = protowire.AppendString(b, id)
	b = protowire.AppendTag(b, 4, protowire.BytesType)
	b = protowire.AppendString(b, queue)
	if retry != 0 {
		b = protowire.AppendTag(b, 5, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(int32(retry)))
	}
	if secs := int64(timeout.Seconds()); secs != 0 {
		b = protowire.AppendTag(b, 8, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(secs))
	}
	return b
}

// EnqueueBatch enqueues items with one script call per BatchSize items and
// returns a Result per item, in order. Dedupe is atomic across lanes.
func (p *Producer) EnqueueBatch(ctx context.Context, items []Item) []Result {
	out := make([]Result, len(items))
	for start := 0; start < len(items); start += BatchSize {
		end := min(start+BatchSize, len(items))
		p.enqueueChunk(ctx, items[start:end], out[start:end], true)
	}
	return out
}

func (p *Producer) enqueueChunk(ctx context.Context, items []Item, out []Result, count bool) {
	keys := make([]string, 0, len(items)*4)
	args := make([]any, 1, 1+len(items)*2)
	args[0] = strconv.FormatInt(time.Now().UnixNano(), 10)
	idx := make([]int, 0, len(items)) // positions sent to the script
	lanes := map[string]bool{}
	retry := p.cfg.MaxRetry
	switch {
	case retry == 0:
		retry = tasks.MaxRetryDefault
	case retry < 0:
		retry = 0
	}
	now := time.Now()
	for i, it := range items {
		queue := p.lane(it, now)
		if !ValidQueue(queue) {
			out[i] = Result{Status: Rejected, Err: fmt.Errorf("unknown queue %q", queue)}
			continue
		}
		payload, err := tasks.Payload(it.Kind, tasks.CancelPayload{
			MessageID: it.MessageID, LocationID: it.LocationID, CampaignID: it.CampaignID, SendAt: it.SendAt,
		})
		if err != nil {
			out[i] = Result{Status: Rejected, Err: err}
			continue
		}
		id := tasks.TaskID(it.Kind, it.MessageID)
		keys = append(keys, "asynq:{"+queue+"}:t:"+id, "asynq:{"+queue+"}:pending")
		for _, l := range tasks.Queues {
			if l != queue {
				keys = append(keys, "asynq:{"+l+"}:t:"+id)
			}
		}
		args = append(args, encodeTaskMessage(tasks.TypeFor(it.Kind), payload, id, queue, retry,
			cmp.Or(p.cfg.Timeout, tasks.TimeoutDefault)), id)
		idx = append(idx, i)
		lanes[queue] = true
	}
	if len(idx) == 0 {
		return
	}
	for l := range lanes {
		if _, ok := p.published.Load(l); !ok {
			if err := p.rdb.SAdd(ctx, "asynq:queues", l).Err(); err != nil {
				fail(out, idx, err)
				return
			}
			p.published.Store(l, true)
		}
	}
	res, err := enqueueScript.Run(ctx, p.rdb, keys, args...).Int64Slice()
	if err != nil {
		fail(out, idx, err)
		return
	}
	type group struct{ campaign, location string }
	counts := map[group]int{}
	for j, i := range idx {
		if res[j] == 1 {
			out[i] = Result{Status: Enqueued}
			if count && items[i].CampaignID != "" {
				counts[group{items[i].CampaignID, items[i].LocationID}]++
			}
		} else {
			out[i] = Result{Status: AlreadyQueued}
		}
	}
	// The tasks are queued: count them even if the caller is being
	// interrupted (Ctrl-C), or a resumed run would leave the total short.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	for g, n := range counts {
		if err := p.campaigns.Enqueued(cctx, g.campaign, g.location, n); err != nil {
			// The tasks are queued and will run; only the campaign's total is short.
			for _, i := range idx {
				if out[i].Status == Enqueued && items[i].CampaignID == g.campaign {
					out[i].Err = fmt.Errorf("campaign %s: counting failed: %w", g.campaign, err)
				}
			}
		}
	}
}

func fail(out []Result, idx []int, err error) {
	for _, i := range idx {
		out[i] = Result{Status: Rejected, Err: fmt.Errorf("%w: %w", ErrUnavailable, err)}
	}
}
