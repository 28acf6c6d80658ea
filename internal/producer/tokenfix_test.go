package producer_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/campaign"
	"github.com/ghlcancel/ghlcancel/internal/deadletter"
	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/producer"
	"github.com/ghlcancel/ghlcancel/internal/sandbox"
	"github.com/ghlcancel/ghlcancel/internal/tokens"
)

// TestTokenFileFixedThenRequeued: a wrong token in GHL_TOKENS_FILE
// dead-letters the location's cancels unauthorized; the operator fixes the
// file and requeues them at once. The worker had the file checked less
// than its interval (2 s) before, so the requeued cancels met the old token
// again and were dead-lettered a second time (found by an audit with the
// real binaries). A 401 now checks the file again, and a new token there is
// used.
func TestTokenFileFixedThenRequeued(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	const loc = "locFile0000000000001"
	sb, h := sandboxHandler(t, rdb, loc, "tok-good")
	path := filepath.Join(t.TempDir(), "tokens.json")
	edits := 0
	write := func(tok string) {
		require.NoError(t, os.WriteFile(path, []byte(`{"`+loc+`":"`+tok+`"}`), 0o600))
		edits++ // a new modification time even on a coarse clock
		at := time.Now().Add(time.Duration(edits) * time.Minute)
		require.NoError(t, os.Chtimes(path, at, at))
	}
	write("tok-wrong")
	f, err := tokens.NewFile(path, nil)
	require.NoError(t, err)
	h.Tokens = f
	p := producer.New(rdb, producer.Config{})
	id := sb.ScheduleN(loc, 1, false)[0]
	require.Equal(t, producer.Enqueued, p.Enqueue(ctx, producer.Item{Kind: ghl.KindMessage, MessageID: id, LocationID: loc, CampaignID: "fix"}).Status)
	require.Error(t, runQueued(t, rdb, h, "msg:"+id))
	camp := func() campaign.Status {
		s, ok, err := campaign.New(rdb, 0).Get(ctx, "fix")
		require.NoError(t, err)
		require.True(t, ok)
		return s
	}
	require.Equal(t, map[string]int64{"unauthorized": 1}, camp().DeadByReason)

	write("tok-good")
	st, err := p.Requeue(ctx, deadletter.New(rdb), deadletter.Filter{CampaignID: "fix"}, nil)
	require.NoError(t, err)
	require.Equal(t, 1, st.Requeued)
	require.NoError(t, runQueued(t, rdb, h, "msg:"+id), "the fixed token is used at once")
	status, cancels, _ := sb.MessageStatus(id)
	require.Equal(t, []any{sandbox.StatusCancelled, 1}, []any{status, cancels})
	s := camp()
	require.Equal(t, []any{int64(1), int64(1), int64(1), int64(0), true}, []any{s.Total, s.Done, s.Cancelled, s.DeadLettered, s.Complete})

	// A wrong token the file still holds: the 401 stands, once (a dead
	// letter, not a loop).
	write("tok-wrong-again")
	f2, err := tokens.NewFile(path, nil)
	require.NoError(t, err)
	h.Tokens = f2
	id2 := sb.ScheduleN(loc, 1, false)[0]
	require.Equal(t, producer.Enqueued, p.Enqueue(ctx, producer.Item{Kind: ghl.KindMessage, MessageID: id2, LocationID: loc, CampaignID: "fix"}).Status)
	require.ErrorContains(t, runQueued(t, rdb, h, "msg:"+id2), "dead letter unauthorized")
	require.Equal(t, map[string]int64{"unauthorized": 1}, camp().DeadByReason)
	require.Equal(t, int64(3), sb.Stats().Unauthorized, "one 401 per attempt: the first dead letter, the requeued call before the file was read again, this one")
}
