package redisbatch_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/redisbatch"
	"github.com/ghlcancel/ghlcancel/internal/redistest"
)

var redisServer *redistest.Server

func TestMain(m *testing.M) { redistest.Main(m, &redisServer) }

var incr = redis.NewScript(`return {redis.call("INCRBY", KEYS[1], ARGV[1]), ARGV[2]}`)

// TestEveryCallerGetsItsOwnAnswer runs 2,000 concurrent calls through the
// batcher and checks each caller received the reply to its own call.
func TestEveryCallerGetsItsOwnAnswer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	b := redisbatch.New(rdb, incr)
	var wg sync.WaitGroup
	for i := range 2000 {
		wg.Go(func() {
			v, err := b.Run(ctx, []string{fmt.Sprintf("k%d", i%10)}, 1, fmt.Sprint(i)).Slice()
			require.NoError(t, err)
			require.Equal(t, fmt.Sprint(i), v[1], "a reply went to the wrong caller")
		})
	}
	wg.Wait()
	for k := range 10 {
		n, err := rdb.Get(ctx, fmt.Sprintf("k%d", k)).Int()
		require.NoError(t, err)
		require.Equal(t, 200, n)
	}
}

func TestReloadsAScriptRedisForgot(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	b := redisbatch.New(rdb, incr)
	_, err := b.Run(ctx, []string{"x"}, 1, "a").Slice()
	require.NoError(t, err)
	require.NoError(t, rdb.ScriptFlush(ctx).Err()) // as after a Redis restart
	v, err := b.Run(ctx, []string{"x"}, 1, "b").Slice()
	require.NoError(t, err)
	require.Equal(t, int64(2), v[0])
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	require.ErrorIs(t, b.Run(cctx, []string{"x"}, 1, "c").Err(), context.Canceled)
}
