package console

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/redistest"
)

// TestRedisFullIsNamed: a Redis at its maxmemory (noeviction) refuses the
// session write inside MULTI, and EXEC answers only EXECABORT; the console
// said "Redis is unavailable; try again", which no retry cures. It now
// says Redis is full and how to free it, from the command's own error.
func TestRedisFullIsNamed(t *testing.T) {
	t.Parallel()
	srv, err := redistest.Start()
	require.NoError(t, err)
	t.Cleanup(srv.Stop)
	ctx := context.Background()
	rdb := redistest.ClientFor(t, "redis://"+srv.Addr+"/0")
	require.NoError(t, rdb.ConfigSet(ctx, "maxmemory-policy", "noeviction").Err())
	require.NoError(t, rdb.ConfigSet(ctx, "maxmemory", "1").Err())
	t.Cleanup(func() { _ = rdb.ConfigSet(ctx, "maxmemory", "0").Err() })
	cmds, err := rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, "ghlcancel:console:session:x", "role", "operator")
		p.Expire(ctx, "ghlcancel:console:session:x", time.Hour)
		return nil
	})
	require.Error(t, err)
	require.NotContains(t, err.Error(), "OOM", "the transaction's error alone hides it")
	require.Contains(t, redisFull(err, cmds...), "Redis is full")
	require.Contains(t, redisFull(rdb.Set(ctx, "k", "v", 0).Err()), "enqueue dead purge")
	require.Empty(t, redisFull(context.DeadlineExceeded))
}
