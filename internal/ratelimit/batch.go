package ratelimit

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// batcher sends concurrent reservations to Redis together, one pipeline per
// batch. It never waits to fill a batch: a batch is whatever queued up while
// the previous one was on the wire, so an idle worker adds no latency and a
// busy one makes one round trip (and two syscalls) for many reservations.
type batcher struct {
	rdb   redis.UniversalClient
	once  sync.Once
	reqs  chan *resvReq
	loops int
}

type resvReq struct {
	keys []string
	args []any
	done chan resvRes
}

type resvRes struct {
	vals []int64
	err  error
}

const maxBatch = 128

func newBatcher(rdb redis.UniversalClient) *batcher {
	return &batcher{rdb: rdb, reqs: make(chan *resvReq, 1024), loops: 2}
}

func (b *batcher) reserve(ctx context.Context, keys []string, args ...any) ([]int64, error) {
	b.once.Do(func() {
		for range b.loops {
			go b.loop()
		}
	})
	r := &resvReq{keys: keys, args: args, done: make(chan resvRes, 1)}
	select {
	case b.reqs <- r:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case res := <-r.done:
		return res.vals, res.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (b *batcher) loop() {
	for first := range b.reqs {
		batch := []*resvReq{first}
	drain:
		for len(batch) < maxBatch {
			select {
			case r := <-b.reqs:
				batch = append(batch, r)
			default:
				break drain
			}
		}
		b.send(batch)
	}
}

func (b *batcher) send(batch []*resvReq) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cmds := make([]*redis.Cmd, len(batch))
	_, _ = b.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, r := range batch {
			cmds[i] = reserveScript.EvalSha(ctx, p, r.keys, r.args...)
		}
		return nil
	})
	for i, r := range batch {
		vals, err := cmds[i].Int64Slice()
		if err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") {
			// First use on this Redis (or after a restart): load it and retry.
			vals, err = reserveScript.Run(ctx, b.rdb, r.keys, r.args...).Int64Slice()
		}
		r.done <- resvRes{vals: vals, err: err}
	}
}
