package producer_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/campaign"
	"github.com/ghlcancel/ghlcancel/internal/deadletter"
	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/producer"
	"github.com/ghlcancel/ghlcancel/internal/redistest"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
)

var redisServer *redistest.Server

func TestMain(m *testing.M) { redistest.Main(m, &redisServer) }

type got struct {
	n    int
	item producer.Item
	err  string
}

func readAll(t *testing.T, in string, defaults producer.Item) []got {
	t.Helper()
	rd := producer.NewReader(strings.NewReader(in), defaults)
	var out []got
	for {
		l, ok := rd.Next()
		if !ok {
			if l.Err != nil {
				out = append(out, got{n: l.N, err: "fatal: " + l.Err.Error()})
			}
			return out
		}
		g := got{n: l.N, item: l.Item}
		if l.Err != nil {
			g.err = l.Err.Error()
			g.item = producer.Item{}
		}
		out = append(out, g)
	}
}

func TestReader(t *testing.T) {
	t.Parallel()
	def := producer.Item{Kind: ghl.KindMessage, LocationID: "locD", CampaignID: "camp"}
	item := func(id, loc string, kind ghl.Kind, camp string, sendAt int64) producer.Item {
		return producer.Item{Kind: kind, MessageID: id, LocationID: loc, CampaignID: camp, SendAt: sendAt}
	}
	tests := []struct {
		name string
		in   string
		want []got
	}{
		{"plain ids, blanks and comments", "a1\n\n# comment\n  b2  \r\nc3", []got{
			{1, item("a1", "locD", ghl.KindMessage, "camp", 0), ""},
			{4, item("b2", "locD", ghl.KindMessage, "camp", 0), ""},
			{5, item("c3", "locD", ghl.KindMessage, "camp", 0), ""},
		}},
		{"plain bad ids", "ok1\na/b\nx y\n" + strings.Repeat("z", 65), []got{
			{1, item("ok1", "locD", ghl.KindMessage, "camp", 0), ""},
			{2, producer.Item{}, "message_id: id has a character that is not allowed at byte 1 (allowed: letters, digits, '-', '_')"},
			{3, producer.Item{}, "expected one id per line (or a CSV header naming message_id)"},
			{4, producer.Item{}, "message_id: id is 65 bytes long, the limit is 64"},
		}},
		{"csv with all columns", "message_id,location_id,kind,campaign_id,send_at\nm1,L1,email,c9,1700000000\nm2,,,,\n", []got{
			{2, item("m1", "L1", ghl.KindEmail, "c9", 1700000000), ""},
			{3, item("m2", "locD", ghl.KindMessage, "camp", 0), ""},
		}},
		{"csv header case and BOM, quoted", "\ufeffMessage_ID, Location_ID\n\"m1\",\"L1\"\n", []got{
			{2, item("m1", "L1", ghl.KindMessage, "camp", 0), ""},
		}},
		{"csv bad rows", "message_id,kind,send_at\nm1,fax,\nm2\nm3,email,tomorrow\n,email,\nm5,,1764950400000\n", []got{
			{2, producer.Item{}, `unknown kind "fax": want message or email`},
			{3, producer.Item{}, "has 1 fields, the header has 3"},
			{4, producer.Item{}, `send_at "tomorrow": want unix seconds`},
			{5, producer.Item{}, "message_id: empty id"},
			{6, producer.Item{}, "send_at: 1764950400000 looks like milliseconds: want unix seconds"},
		}},
		{"csv campaign ids no URL can carry", "message_id,campaign_id\nm1,..\nm2,.\nm3,spring/sale\n", []got{
			{2, producer.Item{}, `campaign_id: ".." cannot be addressed in a URL path; choose another name`},
			{3, producer.Item{}, `campaign_id: "." cannot be addressed in a URL path; choose another name`},
			{4, item("m3", "locD", ghl.KindMessage, "spring/sale", 0), ""},
		}},
		// The id column misspelt: every line was refused as "one id per
		// line", the typo never named.
		{"csv id column misspelt", "mesage_id,location_id,kind\nm1,L,message\nm2,L,message\n", []got{
			{1, producer.Item{}, `fatal: header: no message_id column (unknown: "mesage_id"): name the id column message_id (known: message_id, location_id, kind, campaign_id, send_at)`},
		}},
		{"csv header without an id column", "location_id,kind\nL,message\n", []got{
			{1, producer.Item{}, `fatal: header: no message_id column: name the id column message_id (known: message_id, location_id, kind, campaign_id, send_at)`},
		}},
		// A data line holding a kind value is no header (and, with no
		// header, not one id).
		{"csv data with a kind value", "m1,L,message\n", []got{{1, producer.Item{}, "expected one id per line (or a CSV header naming message_id)"}}},
		{"csv unknown column", "message_id,colour\nm1,red\n", []got{
			{1, producer.Item{}, `fatal: header: unknown column "colour" (known: message_id, location_id, kind, campaign_id, send_at)`},
		}},
		{"a header with a trailing comma", "message_id,location_id,\nm1,L1,\n", []got{
			{1, producer.Item{}, `fatal: header: an empty column name (a trailing comma?) (known: message_id, location_id, kind, campaign_id, send_at)`},
		}},
		{"a header separated by semicolons", "message_id;location_id\nm1;L1\n", []got{
			{1, producer.Item{}, `fatal: header: the columns are separated by ";"; ghlcancel reads comma-separated files (export as CSV)`},
		}},
		{"a header separated by tabs", "message_id\tlocation_id\nm1\tL1\n", []got{
			{1, producer.Item{}, `fatal: header: the columns are separated by "\t"; ghlcancel reads comma-separated files (export as CSV)`},
		}},
		{"a header naming the id otherwise", "id\nm1\n", []got{
			{1, producer.Item{}, `fatal: header: column "id" is not one ghlcancel reads: name the id column message_id (known: message_id, location_id, kind, campaign_id, send_at)`},
		}},
		{"a header in HighLevel's spelling", "locationId,messageId\nL1,m1\n", []got{
			{1, producer.Item{}, `fatal: header: column "messageId" is not one ghlcancel reads: name the id column message_id (known: message_id, location_id, kind, campaign_id, send_at)`},
		}},
		// HighLevel's ids are 20 letters and digits: a word with no digit
		// that names a message (or has an "_") is a column name, on any
		// line (files joined with cat repeat their header).
		{"column names are not ids, wherever they are", "message\nm0\nid\nuuid\nsms_id\nScheduled_Message_ID\nmessage_id\nMessages\nabcdefghijklmnopqrst\n", []got{
			{1, producer.Item{}, `"message" looks like a column name, not a message id: name the id column message_id (a CSV header), or remove the line`},
			{2, item("m0", "locD", ghl.KindMessage, "camp", 0), ""},
			{3, producer.Item{}, `"id" looks like a column name, not a message id: name the id column message_id (a CSV header), or remove the line`},
			{4, producer.Item{}, `"uuid" looks like a column name, not a message id: name the id column message_id (a CSV header), or remove the line`},
			{5, producer.Item{}, `"sms_id" looks like a column name, not a message id: name the id column message_id (a CSV header), or remove the line`},
			{6, producer.Item{}, `"Scheduled_Message_ID" looks like a column name, not a message id: name the id column message_id (a CSV header), or remove the line`},
			{7, producer.Item{}, `"message_id" looks like a column name, not a message id: name the id column message_id (a CSV header), or remove the line`},
			{8, producer.Item{}, `"Messages" looks like a column name, not a message id: name the id column message_id (a CSV header), or remove the line`},
			{9, item("abcdefghijklmnopqrst", "locD", ghl.KindMessage, "camp", 0), ""},
		}},
		// Real ids with no digit that hold such words by chance are ids
		// (about 3% of HighLevel's ids have no digit).
		{"ids holding header words by chance", "tPyKcMsgNZhmDnPJdyBg\nHuBNsLzcoDXFmsgZIZhi\nSsIJZWVMUpxHmSgBKaun\nAKHrOBSSmSzpDZjdAdXU\nEmailMessageUuidSmsX\n", []got{
			{1, item("tPyKcMsgNZhmDnPJdyBg", "locD", ghl.KindMessage, "camp", 0), ""},
			{2, item("HuBNsLzcoDXFmsgZIZhi", "locD", ghl.KindMessage, "camp", 0), ""},
			{3, item("SsIJZWVMUpxHmSgBKaun", "locD", ghl.KindMessage, "camp", 0), ""},
			{4, item("AKHrOBSSmSzpDZjdAdXU", "locD", ghl.KindMessage, "camp", 0), ""},
			{5, item("EmailMessageUuidSmsX", "locD", ghl.KindMessage, "camp", 0), ""},
		}},
		{"csv files joined: the repeated header is skipped", "message_id,location_id\nm1,L1\nMessage_ID, Location_ID\nm2,L2\n", []got{
			{2, item("m1", "L1", ghl.KindMessage, "camp", 0), ""},
			{4, item("m2", "L2", ghl.KindMessage, "camp", 0), ""},
		}},
		// The first file had no final line break: its last id and the next
		// header share a line. Read as one id, the message would never be
		// cancelled.
		{"files joined with no final line break", "message_id\nID000000000000000001message_id\nID000000000000000002\n", []got{
			{2, producer.Item{}, `message_id "ID000000000000000001message_id" is an id and a column name on one line (files joined with no final line break?): put a line break between them`},
			{3, item("ID000000000000000002", "locD", ghl.KindMessage, "camp", 0), ""},
		}},
		{"one-column files joined with no final line break", "ID000000000000000001uuid\nID000000000000000002Message\nID0000000000000000030uuid\n", []got{
			{1, producer.Item{}, `"ID000000000000000001uuid" is an id and a column name on one line (files joined with no final line break?): put a line break between them`},
			{2, producer.Item{}, `"ID000000000000000002Message" is an id and a column name on one line (files joined with no final line break?): put a line break between them`},
			{3, item("ID0000000000000000030uuid", "locD", ghl.KindMessage, "camp", 0), ""},
		}},
		{"csv files joined with other columns: stop there", "message_id,location_id\nm1,L1\nmessage_id,kind\nm2,email\n", []got{
			{2, item("m1", "L1", ghl.KindMessage, "camp", 0), ""},
			{3, producer.Item{}, "fatal: a second header with other columns (files joined?): send each file on its own"},
		}},
		{"binary", "ok1\n\x00\x01\x02\nok2\n", []got{
			{1, item("ok1", "locD", ghl.KindMessage, "camp", 0), ""},
			{2, producer.Item{}, "line is not text (binary data?)"},
			{3, item("ok2", "locD", ghl.KindMessage, "camp", 0), ""},
		}},
		{"overlong line is skipped, not kept", "ok1\n" + strings.Repeat("x", 200_000) + "\nok2", []got{
			{1, item("ok1", "locD", ghl.KindMessage, "camp", 0), ""},
			{2, producer.Item{}, "line is longer than 4096 bytes"},
			{3, item("ok2", "locD", ghl.KindMessage, "camp", 0), ""},
		}},
		{"one huge line without newline", strings.Repeat("x", 300_000), []got{
			{1, producer.Item{}, "line is longer than 4096 bytes"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, readAll(t, tt.in, def))
		})
	}
	noLoc := readAll(t, "m1\n", producer.Item{Kind: ghl.KindMessage})
	require.Equal(t, "location_id: missing (give --location or a location_id column)", noLoc[0].err)
}

func TestEnqueueAllCountsEveryItem(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	p := producer.New(rdb, producer.Config{Queue: tasks.QueueBulk})
	const n = 2000
	mk := func() func() (producer.Item, bool) {
		i := 0
		return func() (producer.Item, bool) {
			if i == n {
				return producer.Item{}, false
			}
			i++
			return producer.Item{Kind: ghl.KindMessage, MessageID: fmt.Sprintf("m%05d", i%1500), LocationID: "L"}, true
		}
	}
	counts := map[producer.Status]int{}
	p.EnqueueAll(ctx, mk(), func(_ producer.Item, r producer.Result) { counts[r.Status]++ })
	require.Equal(t, map[producer.Status]int{producer.Enqueued: 1500, producer.AlreadyQueued: 500}, counts)

	// Run again (a resumed run): nothing is doubled.
	counts = map[producer.Status]int{}
	p.EnqueueAll(ctx, mk(), func(_ producer.Item, r producer.Result) { counts[r.Status]++ })
	require.Equal(t, map[producer.Status]int{producer.AlreadyQueued: 2000}, counts)
	size, err := rdb.LLen(ctx, "asynq:{bulk}:pending").Result()
	require.NoError(t, err)
	require.Equal(t, int64(1500), size)
}

func TestRequeue(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	store := deadletter.New(rdb)
	p := producer.New(rdb, producer.Config{})
	insp := asynq.NewInspectorFromRedisClient(rdb)

	// m1 is still in asynq's archive; m2 was dropped from it; m3 is queued
	// again already; the invalid payload cannot be rebuilt; m4 is filtered out.
	client := asynq.NewClientFromRedisClient(rdb)
	task, err := tasks.NewCancelTask(ghl.KindMessage, tasks.CancelPayload{MessageID: "m1", LocationID: "L"}, tasks.TaskOptions{Queue: tasks.QueueBulk})
	require.NoError(t, err)
	_, err = client.Enqueue(task)
	require.NoError(t, err)
	require.NoError(t, insp.ArchiveTask(tasks.QueueBulk, "msg:m1"))
	require.Equal(t, producer.Enqueued, p.Enqueue(ctx, producer.Item{Kind: ghl.KindMessage, MessageID: "m3", LocationID: "L"}).Status)

	for _, r := range []deadletter.Record{
		{TaskID: "msg:m1", Kind: "message", MessageID: "m1", LocationID: "L", CampaignID: "c", Queue: tasks.QueueBulk, Reason: "unauthorized", Attempts: 7},
		{TaskID: "msg:m2", Kind: "message", MessageID: "m2", LocationID: "L", CampaignID: "c", Queue: tasks.QueueBulk, Reason: "unauthorized"},
		{TaskID: "msg:m3", Kind: "message", MessageID: "m3", LocationID: "L", CampaignID: "c", Queue: tasks.QueueDefault, Reason: "unauthorized"},
		{TaskID: "p1", Queue: tasks.QueueDefault, Reason: "invalid_payload", CampaignID: "c", Payload: `"{bad"`},
		{TaskID: "msg:m4", Kind: "message", MessageID: "m4", LocationID: "L", CampaignID: "other", Reason: "unauthorized"},
	} {
		require.NoError(t, store.Add(ctx, r))
	}
	st, err := p.Requeue(ctx, store, deadletter.Filter{CampaignID: "c"}, nil)
	require.NoError(t, err)
	require.Equal(t, producer.RequeueStats{Requeued: 2, AlreadyQueued: 1, Skipped: 1}, st)

	info, err := insp.GetTaskInfo(tasks.QueueBulk, "msg:m1")
	require.NoError(t, err)
	require.Equal(t, asynq.TaskStatePending, info.State)
	require.Equal(t, 0, info.Retried, "attempts start again")
	_, err = insp.GetTaskInfo(tasks.QueueBulk, "msg:m2")
	require.NoError(t, err)

	var left []string
	require.NoError(t, store.Scan(ctx, deadletter.Filter{}, func(r deadletter.Record) error {
		left = append(left, r.TaskID)
		return nil
	}))
	require.ElementsMatch(t, []string{"p1", "msg:m4"}, left)
}

// TestBatchTasksDecodeInAsynq: tasks written by our enqueue script are read
// back by asynq's own inspector exactly as asynq's client would write them.
func TestBatchTasksDecodeInAsynq(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	p := producer.New(rdb, producer.Config{MaxRetry: 7, Timeout: 45 * time.Second})
	res := p.EnqueueBatch(ctx, []producer.Item{
		{Kind: ghl.KindEmail, MessageID: "e1", LocationID: "L", CampaignID: "c", SendAt: 1900000000, Queue: tasks.QueueUrgent},
		{Kind: ghl.KindMessage, MessageID: "m1", LocationID: "L"},
		{Kind: ghl.KindMessage, MessageID: "m1", LocationID: "L", Queue: tasks.QueueBulk}, // same message, other lane
		{Kind: ghl.KindMessage, MessageID: "bad/id", LocationID: "L"},
		{Kind: ghl.KindMessage, MessageID: "m2", LocationID: "L", Queue: "nope"},
	})
	require.Equal(t, producer.Enqueued, res[0].Status)
	require.Equal(t, producer.Enqueued, res[1].Status)
	require.Equal(t, producer.AlreadyQueued, res[2].Status, "dedupe across lanes within one batch")
	require.Equal(t, producer.Rejected, res[3].Status)
	require.Equal(t, producer.Rejected, res[4].Status)

	insp := asynq.NewInspectorFromRedisClient(rdb)
	info, err := insp.GetTaskInfo(tasks.QueueUrgent, "email:e1")
	require.NoError(t, err)
	require.Equal(t, tasks.TypeCancelEmail, info.Type)
	require.Equal(t, "email:e1", info.ID)
	require.Equal(t, tasks.QueueUrgent, info.Queue)
	require.Equal(t, tasks.AsynqMaxRetry(7), info.MaxRetry, "7 retries and asynq's spare")
	require.Equal(t, 45*time.Second, info.Timeout)
	require.Equal(t, asynq.TaskStatePending, info.State)
	var pl tasks.CancelPayload
	require.NoError(t, json.Unmarshal(info.Payload, &pl))
	require.Equal(t, tasks.CancelPayload{MessageID: "e1", LocationID: "L", CampaignID: "c", SendAt: 1900000000, RequestedAt: pl.RequestedAt}, pl)
	queues, err := insp.Queues()
	require.NoError(t, err)
	require.Subset(t, queues, []string{tasks.QueueUrgent, tasks.QueueDefault})
	qi, err := insp.GetQueueInfo(tasks.QueueDefault)
	require.NoError(t, err)
	require.Equal(t, 1, qi.Pending)
}

// TestInterruptedRunResumes: a file enqueue cancelled half way (Ctrl-C) and
// run again ends with every id queued exactly once: no duplicates, no gaps.
func TestInterruptedRunResumes(t *testing.T) {
	t.Parallel()
	rdb := redisServer.Client(t)
	p := producer.New(rdb, producer.Config{Queue: tasks.QueueBulk, Parallel: 2})
	var file strings.Builder
	file.WriteString("message_id,location_id\n")
	const n = 20000
	for i := range n {
		fmt.Fprintf(&file, "id%06d,loc%d\n", i, i%7)
	}
	ctx, cancel := context.WithCancel(context.Background())
	counted := 0
	// Cancel once about a quarter is read: the reader stops mid-file.
	rd := producer.NewReader(strings.NewReader(file.String()), producer.Item{Kind: ghl.KindMessage, CampaignID: "resume"})
	p.EnqueueAll(ctx, func() (producer.Item, bool) {
		l, ok := rd.Next()
		if !ok {
			return producer.Item{}, false
		}
		counted++
		if counted == n/4 {
			cancel()
		}
		return l.Item, true
	}, func(producer.Item, producer.Result) {})
	first, err := rdb.LLen(context.Background(), "asynq:{bulk}:pending").Result()
	require.NoError(t, err)
	require.Less(t, first, int64(n), "the first run was interrupted")

	sum, err := producer.EnqueueReader(context.Background(), p, strings.NewReader(file.String()),
		producer.Item{Kind: ghl.KindMessage, CampaignID: "resume"}, -1, io.Discard)
	require.NoError(t, err)
	require.Equal(t, int(first), sum.AlreadyQueued)
	require.Equal(t, n-int(first), sum.Enqueued)
	total, err := rdb.LLen(context.Background(), "asynq:{bulk}:pending").Result()
	require.NoError(t, err)
	require.Equal(t, int64(n), total, "no gaps")
	ids, err := rdb.LRange(context.Background(), "asynq:{bulk}:pending", 0, -1).Result()
	require.NoError(t, err)
	seen := map[string]bool{}
	for _, id := range ids {
		require.False(t, seen[id], "duplicate %s", id)
		seen[id] = true
	}
	s, ok, err := campaign.New(rdb, 0).Get(context.Background(), "resume")
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, int64(n), s.Total, "the campaign counts each id once across both runs")
}

// TestRequeueHundredThousand: 100,000 dead letters, listed and requeued in
// pages; every one ends queued again, none twice, and the store is empty.
func TestRequeueHundredThousand(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("-short")
	}
	ctx := context.Background()
	rdb := redisServer.Client(t)
	store := deadletter.New(rdb)
	const n = 100_000
	for start := 0; start < n; start += 5000 {
		_, err := rdb.Pipelined(ctx, func(pl redis.Pipeliner) error {
			for i := start; i < start+5000; i++ {
				b, _ := json.Marshal(deadletter.Record{TaskID: fmt.Sprintf("msg:d%06d", i), Kind: "message",
					MessageID: fmt.Sprintf("d%06d", i), LocationID: "L", Queue: tasks.QueueBulk, Reason: "unauthorized",
					DeadAt: time.Unix(1700000000, 0).Add(time.Duration(i) * time.Millisecond)})
				pl.HSet(ctx, deadletter.KeyRecords, fmt.Sprintf("msg:d%06d", i), b)
				pl.ZAdd(ctx, deadletter.KeyIndex, redis.Z{Score: float64(1700000000000 + i), Member: fmt.Sprintf("msg:d%06d", i)})
			}
			return nil
		})
		require.NoError(t, err)
	}
	listed := 0
	require.NoError(t, store.Scan(ctx, deadletter.Filter{Reason: "unauthorized"}, func(deadletter.Record) error { listed++; return nil }))
	require.Equal(t, n, listed)

	p := producer.New(rdb, producer.Config{})
	st, err := p.Requeue(ctx, store, deadletter.Filter{Reason: "unauthorized"}, nil)
	require.NoError(t, err)
	require.Equal(t, producer.RequeueStats{Requeued: n}, st)
	left, err := store.Count(ctx)
	require.NoError(t, err)
	require.Zero(t, left)
	pending, err := rdb.LLen(ctx, "asynq:{bulk}:pending").Result()
	require.NoError(t, err)
	require.Equal(t, int64(n), pending)
}

// TestImminentSendsSkipTheBulkLane: a bulk item whose message goes out
// within 15 minutes is put on the default lane; later ones stay on bulk.
func TestImminentSendsSkipTheBulkLane(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redisServer.Client(t)
	p := producer.New(rdb, producer.Config{Queue: tasks.QueueBulk})
	now := time.Now()
	res := p.EnqueueBatch(ctx, []producer.Item{
		{Kind: ghl.KindMessage, MessageID: "soon", LocationID: "L", SendAt: now.Add(5 * time.Minute).Unix()},
		{Kind: ghl.KindMessage, MessageID: "later", LocationID: "L", SendAt: now.Add(2 * time.Hour).Unix()},
		{Kind: ghl.KindMessage, MessageID: "unknown", LocationID: "L"},
		{Kind: ghl.KindMessage, MessageID: "urgent", LocationID: "L", Queue: tasks.QueueUrgent, SendAt: now.Add(time.Minute).Unix()},
	})
	for _, r := range res {
		require.Equal(t, producer.Enqueued, r.Status, r.Err)
	}
	insp := asynq.NewInspectorFromRedisClient(rdb)
	for id, lane := range map[string]string{"msg:soon": tasks.QueueDefault, "msg:later": tasks.QueueBulk,
		"msg:unknown": tasks.QueueBulk, "msg:urgent": tasks.QueueUrgent} {
		_, err := insp.GetTaskInfo(lane, id)
		require.NoError(t, err, "%s should be on %s", id, lane)
	}
}

// TestRequeueInterrupted: Ctrl-C during `dead requeue` (here: after its
// first batch) is reported as interrupted, with what was requeued, not as
// "queue unavailable: context canceled".
func TestRequeueInterrupted(t *testing.T) {
	t.Parallel()
	rdb := redisServer.Client(t)
	store := deadletter.New(rdb)
	bg := context.Background()
	for i := range 3 * producer.BatchSize {
		require.NoError(t, store.Add(bg, deadletter.Record{TaskID: fmt.Sprintf("msg:i%06d", i), Kind: "message",
			MessageID: fmt.Sprintf("i%06d", i), LocationID: "L", Queue: tasks.QueueBulk, Reason: "unauthorized"}))
	}
	ctx, cancel := context.WithCancel(bg)
	defer cancel()
	st, err := producer.New(rdb, producer.Config{}).Requeue(ctx, store, deadletter.Filter{Reason: "unauthorized"},
		func(producer.RequeueStats) { cancel() })
	require.ErrorContains(t, err, "interrupted")
	require.NotContains(t, err.Error(), "unavailable")
	require.Equal(t, producer.BatchSize, st.Requeued)
	left, err := store.Count(bg)
	require.NoError(t, err)
	require.Equal(t, int64(2*producer.BatchSize), left, "the rest wait for the next run")
}

// TestRandomIDsAreNeverColumnNames: HighLevel's ids are 20 random letters
// and digits; none is taken for a column name, the ones with no digit
// included (generated here with letters only, the case the header rule
// looks at).
func TestRandomIDsAreNeverColumnNames(t *testing.T) {
	t.Parallel()
	const letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
	r := rand.New(rand.NewPCG(1, 2))
	var b strings.Builder
	const n = 100_000
	for range n {
		for range 20 {
			b.WriteByte(letters[r.IntN(len(letters))])
		}
		b.WriteByte('\n')
	}
	rd := producer.NewReader(strings.NewReader(b.String()), producer.Item{Kind: ghl.KindMessage, LocationID: "locD"})
	valid := 0
	for {
		l, ok := rd.Next()
		if !ok {
			break
		}
		require.NoError(t, l.Err, "line %d", l.N)
		valid++
	}
	require.Equal(t, n, valid)
}
