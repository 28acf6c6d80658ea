// Package redisbatch sends concurrent calls of one Lua script to Redis
// together, one pipeline per batch. It never waits to fill a batch: a batch
// is whatever queued up while the previous one was on the wire, so an idle
// process adds no latency and a busy one makes one round trip (two
// syscalls) for many calls. Workers are Redis round-trip bound; this is
// how per-task bookkeeping (pacing, campaign outcomes) stays cheap.
package redisbatch

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// MaxBatch bounds one pipeline.
const MaxBatch = 128

// Batcher runs one script. Safe for concurrent use; its goroutines start on
// first use and live as long as the process.
type Batcher struct {
	rdb    redis.UniversalClient
	script *redis.Script
	once   sync.Once
	reqs   chan *req
}

type req struct {
	keys []string
	args []any
	done chan res
}

type res struct {
	val any
	err error
}

// New returns a Batcher for script on rdb.
func New(rdb redis.UniversalClient, script *redis.Script) *Batcher {
	return &Batcher{rdb: rdb, script: script, reqs: make(chan *req, 1024)}
}

// Run runs the script with keys and args, batched with concurrent calls.
func (b *Batcher) Run(ctx context.Context, keys []string, args ...any) *redis.Cmd {
	b.once.Do(func() {
		for range 2 {
			go b.loop()
		}
	})
	cmd := redis.NewCmd(ctx)
	r := &req{keys: keys, args: args, done: make(chan res, 1)}
	select {
	case b.reqs <- r:
	case <-ctx.Done():
		cmd.SetErr(ctx.Err())
		return cmd
	}
	select {
	case out := <-r.done:
		cmd.SetVal(out.val)
		cmd.SetErr(out.err)
	case <-ctx.Done():
		cmd.SetErr(ctx.Err())
	}
	return cmd
}

func (b *Batcher) loop() {
	for first := range b.reqs {
		batch := []*req{first}
	drain:
		for len(batch) < MaxBatch {
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

func (b *Batcher) send(batch []*req) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cmds := make([]*redis.Cmd, len(batch))
	_, _ = b.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, r := range batch {
			cmds[i] = b.script.EvalSha(ctx, p, r.keys, r.args...)
		}
		return nil
	})
	for i, r := range batch {
		val, err := cmds[i].Result()
		if err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") {
			// First use on this Redis (or after a restart): load it and retry.
			val, err = b.script.Run(ctx, b.rdb, r.keys, r.args...).Result()
		}
		r.done <- res{val: val, err: err}
	}
}
