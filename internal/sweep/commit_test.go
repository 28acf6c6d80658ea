package sweep

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/ledger"
	"github.com/ghlcancel/ghlcancel/internal/redistest"
)

var redisServer *redistest.Server

func TestMain(m *testing.M) { redistest.Main(m, &redisServer) }

// TestHeldSetsAtTheirCap: a page read again (a retried delivery) or the
// same campaign swept again finds held messages already followed; with the
// set full, that set held_more ("not all followed", exit 1 for good)
// although nothing new went unfollowed (found by review). One more, new,
// does set it. The run's own set is kept too.
func TestHeldSetsAtTheirCap(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	const c = "capped"
	ck := ledger.CampaignKey(c)
	require.NoError(t, rdb.HSet(ctx, ck, "total", 0).Err())
	ids := make([]any, ledger.HeldMax)
	for i := range ids {
		ids[i] = fmt.Sprintf("msg:m%019d\tother", i)
	}
	require.NoError(t, rdb.SAdd(ctx, ck+":held", ids...).Err())
	state := "ghlcancel:sweep:{swCap}:loc"
	require.NoError(t, rdb.HSet(ctx, state, "phase", "0", "cursor", "").Err())
	require.NoError(t, rdb.PExpire(ctx, state, time.Hour).Err())
	commit := func(cursor, next string, held ...any) {
		t.Helper()
		m := make([]string, len(held))
		for i, h := range held {
			m[i] = h.(string)
		}
		n, err := commitScript.Run(ctx, rdb, []string{state, ck}, "0", cursor, "0", next, 1, 1, 1, 0, 0, "0", 0, len(held), "other", strings.Join(m, "\n")).Int()
		require.NoError(t, err)
		require.Equal(t, 1, n)
	}
	commit("", "c1", ids[:3]...)
	require.Empty(t, rdb.HGet(ctx, ck, "held_more").Val(), "nothing new was left unfollowed")
	require.Equal(t, int64(3), rdb.SCard(ctx, state+":held").Val(), "the run's own held messages")
	commit("c1", "c2", "msg:new0000000000000001\tother")
	require.Equal(t, "1", rdb.HGet(ctx, ck, "held_more").Val(), "a new one beyond the cap is said")
	require.Equal(t, int64(ledger.HeldMax), rdb.SCard(ctx, ck+":held").Val())
}
