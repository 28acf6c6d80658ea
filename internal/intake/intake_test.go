package intake_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/client"
	"github.com/ghlcancel/ghlcancel/internal/contract"
	"github.com/ghlcancel/ghlcancel/internal/deadletter"
	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/intake"
	"github.com/ghlcancel/ghlcancel/internal/ledger"
	"github.com/ghlcancel/ghlcancel/internal/redistest"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
	"github.com/ghlcancel/ghlcancel/metrics"
)

var redisServer *redistest.Server

func TestMain(m *testing.M) { redistest.Main(m, &redisServer) }

const key = "test-key-0123456789abcdef"

// env is an intake server on its own Redis database, behind a validator of
// our OpenAPI document that checks every exchange.
type env struct {
	t     *testing.T
	url   string
	rdb   *redis.Client
	reg   *prometheus.Registry
	check *contract.Validator
}

func specPath() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "openapi.yaml")
}

func newEnv(t *testing.T, cfg intake.Config) *env {
	t.Helper()
	rdb := redisServer.Client(t)
	return newEnvOn(t, rdb, cfg)
}

func newEnvOn(t *testing.T, rdb *redis.Client, cfg intake.Config) *env {
	t.Helper()
	cfg.Redis = rdb
	if cfg.Keys == nil {
		cfg.Keys = []string{"another-key-aaaaaaaaaaaa", key}
	}
	cfg.Registry = prometheus.NewRegistry()
	srv, err := intake.New(cfg)
	require.NoError(t, err)
	v, err := contract.NewOwn(specPath())
	require.NoError(t, err)
	hs := httptest.NewServer(v.Wrap(srv))
	t.Cleanup(func() {
		hs.Close()
		require.Empty(t, v.Problems(), "exchanges that do not match openapi.yaml")
	})
	return &env{t: t, url: hs.URL, rdb: rdb, reg: cfg.Registry, check: v}
}

// do sends a request and decodes the JSON answer into out (if non-nil).
func (e *env) do(method, path string, hdr map[string]string, body []byte, out any) *http.Response {
	e.t.Helper()
	req, err := http.NewRequest(method, e.url+path, bytes.NewReader(body))
	require.NoError(e.t, err)
	req.Header.Set("Content-Type", "application/json")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	require.NoError(e.t, err)
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	require.NoError(e.t, err)
	if out != nil {
		require.NoError(e.t, json.Unmarshal(b, out), "body %s", b)
	}
	return res
}

var auth = map[string]string{"Authorization": "Bearer " + key}

func (e *env) post(body any, out any) *http.Response {
	e.t.Helper()
	b, ok := body.([]byte)
	if !ok {
		var err error
		b, err = json.Marshal(body)
		require.NoError(e.t, err)
	}
	return e.do(http.MethodPost, "/v1/cancellations", auth, b, out)
}

func (e *env) errBody(res *http.Response, eb client.ErrorBody, status int, code string) client.ErrorBody {
	e.t.Helper()
	require.Equal(e.t, status, res.StatusCode, "%+v", eb)
	require.Equal(e.t, code, eb.Error.Code, eb.Error.Message)
	require.NotEmpty(e.t, eb.Error.Message)
	return eb
}

func (e *env) queued() map[string]int {
	e.t.Helper()
	insp := asynq.NewInspectorFromRedisClient(e.rdb)
	out := map[string]int{}
	qs, _ := insp.Queues()
	for _, q := range qs {
		info, err := insp.GetQueueInfo(q)
		require.NoError(e.t, err)
		out[q] = info.Pending + info.Scheduled + info.Retry + info.Active
	}
	return out
}

func items(n int, campaign string) []client.Cancel {
	out := make([]client.Cancel, n)
	for i := range out {
		out[i] = client.Cancel{MessageID: fmt.Sprintf("m%05d", i), LocationID: fmt.Sprintf("loc%d", i%7), CampaignID: campaign}
	}
	return out
}

func TestAuthentication(t *testing.T) {
	t.Parallel()
	e := newEnv(t, intake.Config{})
	body, _ := json.Marshal(client.Cancel{MessageID: "m1", LocationID: "l1"})
	for _, r := range []struct{ method, path string }{
		{http.MethodPost, "/v1/cancellations"}, {http.MethodGet, "/v1/campaigns/c1"}, {http.MethodGet, "/v1/dead-letters"},
	} {
		for name, hdr := range map[string]map[string]string{
			"no key":           nil,
			"wrong key":        {"Authorization": "Bearer " + key + "x"},
			"prefix of key":    {"X-API-Key": key[:len(key)-1]},
			"basic not bearer": {"Authorization": "Basic " + key},
		} {
			var eb client.ErrorBody
			res := e.do(r.method, r.path, hdr, body, &eb)
			e.errBody(res, eb, http.StatusUnauthorized, client.CodeUnauthorized)
			require.Contains(t, res.Header.Get("WWW-Authenticate"), "Bearer", name)
			require.NotContains(t, eb.Error.Message, key, "the key must not be echoed")
		}
	}
	require.Empty(t, e.queued(), "nothing enqueued without a key")
	var res client.Response
	require.Equal(t, http.StatusAccepted, e.do(http.MethodPost, "/v1/cancellations", map[string]string{"X-API-Key": key}, body, &res).StatusCode)
	require.Equal(t, http.StatusAccepted, e.do(http.MethodPost, "/v1/cancellations",
		map[string]string{"Authorization": "Bearer another-key-aaaaaaaaaaaa"}, body, &res).StatusCode)
	require.Equal(t, http.StatusOK, e.do(http.MethodGet, "/v1/openapi.yaml", nil, nil, nil).StatusCode)
	require.Equal(t, http.StatusOK, e.do(http.MethodGet, "/healthz", nil, nil, nil).StatusCode)
	require.Equal(t, http.StatusOK, e.do(http.MethodGet, "/readyz", nil, nil, nil).StatusCode)

	_, err := intake.ParseKeys("short")
	require.ErrorContains(t, err, "at least 16")
	keys, err := intake.ParseKeys("# comment\n" + key + ", another-key-aaaaaaaaaaaa\n\n")
	require.NoError(t, err)
	require.Len(t, keys, 2)
	_, err = intake.New(intake.Config{Redis: e.rdb})
	require.ErrorContains(t, err, "no API keys")
}

func TestSizeLimits(t *testing.T) {
	t.Parallel()
	e := newEnv(t, intake.Config{MaxBodyBytes: 64 << 10, MaxItems: 100})
	big, _ := json.Marshal(client.Request{Items: items(2000, "")}) // ~110 KB
	var eb client.ErrorBody
	e.errBody(e.post(big, &eb), eb, http.StatusRequestEntityTooLarge, client.CodePayloadTooLarge)

	// Without a Content-Length (chunked), the limit is met while reading.
	req, _ := http.NewRequest(http.MethodPost, e.url+"/v1/cancellations", io.MultiReader(bytes.NewReader(big)))
	req.Header.Set("Authorization", "Bearer "+key)
	req.ContentLength = -1
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	require.NoError(t, json.NewDecoder(res.Body).Decode(&eb))
	res.Body.Close()
	e.errBody(res, eb, http.StatusRequestEntityTooLarge, client.CodePayloadTooLarge)

	eb = client.ErrorBody{}
	e.errBody(e.post(client.Request{Items: items(101, "")}, &eb), eb, http.StatusRequestEntityTooLarge, client.CodeTooManyItems)
	require.Empty(t, e.queued())
	var ok client.Response
	require.Equal(t, http.StatusAccepted, e.post(client.Request{Items: items(100, "")}, &ok).StatusCode)
	require.Equal(t, 100, ok.Enqueued)
}

func TestMalformedAndInvalidItems(t *testing.T) {
	t.Parallel()
	e := newEnv(t, intake.Config{})
	for _, c := range []struct{ body, code, contains string }{
		{`{"items": [`, client.CodeMalformedJSON, "byte"},
		{`{"items": [{"message_id": "a"}],}`, client.CodeMalformedJSON, "byte 33"},
		{``, client.CodeMalformedJSON, "empty"},
		{`[1,2]`, client.CodeMalformedJSON, "object"},
		{`null`, client.CodeMalformedJSON, "null"},
		{`{"items": []} {"items": []}`, client.CodeMalformedJSON, "after"},
		{`{"items": []}`, client.CodeInvalidRequest, "empty"},
		{`{"items": {}}`, client.CodeInvalidRequest, "array"},
		{`{"items": [{"message_id":"a","location_id":"b"}], "lane": "urgent"}`, client.CodeInvalidRequest, "lane"},
		{`{"items": [{"message_id":"a","location_id":"b"}], "colour": 1}`, client.CodeInvalidRequest, "colour"},
		{`{"hello": 1}`, client.CodeInvalidRequest, "message_id"},
	} {
		var eb client.ErrorBody
		res := e.post([]byte(c.body), &eb)
		e.errBody(res, eb, http.StatusBadRequest, c.code)
		require.Contains(t, eb.Error.Message, c.contains, c.body)
	}

	good := `{"message_id": "ok1", "location_id": "loc1"}`
	body := `{"items": [` + strings.Join([]string{
		good, // 0
		`{"message_id": "a/b", "location_id": "l"}`,                                         // 1 slash
		`{"location_id": "l"}`,                                                              // 2 missing
		`{"message_id": "x", "location_id": "l", "kind": "fax"}`,                            // 3
		`{"message_id": "x", "location_id": "l", "send_at": "tomorrow"}`,                    // 4
		`{"mesage_id": "x", "location_id": "l"}`,                                            // 5 typo
		`"just a string"`,                                                                   // 6
		`{"message_id": 12, "location_id": "l"}`,                                            // 7 wrong type
		`{"message_id": "` + strings.Repeat("x", 10<<10) + `", "location_id": "l"}`,         // 8 10 KB id
		`{"message_id": "héllo", "location_id": "l"}`,                                       // 9 unicode
		`{"message_id": "ok2", "location_id": "l", "send_at": 1900000000, "kind": "email"}`, // 10
		`{"message_id": "x", "location_id": "l", "campaign_id": ".."}`,                      // 11 no URL can carry it
		`{"message_id": "x", "location_id": "l", "campaign_id": "."}`,                       // 12
		`{"message_id": "x", "location_id": "l", "send_at": 1900000000000}`,                 // 13 milliseconds
		// The spec's kinds exactly: these answered 202 though it refuses them.
		`{"message_id": "x", "location_id": "l", "kind": "SMS"}`,   // 14
		`{"message_id": "x", "location_id": "l", "kind": ""}`,      // 15
		`{"message_id": "x", "location_id": "l", "kind": "Email"}`, // 16
	}, ",") + `]}`
	var eb client.ErrorBody
	e.errBody(e.post([]byte(body), &eb), eb, http.StatusBadRequest, client.CodeInvalidItems)
	got := map[int]string{}
	for _, it := range eb.Error.Items {
		got[it.Index] = it.Field + "/" + it.Code
	}
	require.Equal(t, map[int]string{
		1: "message_id/invalid_id", 2: "message_id/missing_field", 3: "kind/invalid_kind",
		4: "send_at/invalid_send_at", 5: "mesage_id/unknown_field", 6: "/invalid_json",
		7: "message_id/invalid_json", 8: "message_id/invalid_id", 9: "message_id/invalid_id",
		11: "campaign_id/invalid_campaign_id", 12: "campaign_id/invalid_campaign_id", 13: "send_at/invalid_send_at",
		14: "kind/invalid_kind", 15: "kind/invalid_kind", 16: "kind/invalid_kind",
	}, got)
	require.Equal(t, 15, eb.Error.InvalidItems)
	require.Empty(t, e.queued(), "a refused request enqueues nothing")

	// partial: the valid ones go, the invalid ones come back rejected.
	var res client.Response
	require.Equal(t, http.StatusAccepted, e.post([]byte(strings.Replace(body, `{"items"`, `{"partial": true, "items"`, 1)), &res).StatusCode)
	require.Equal(t, 2, res.Enqueued)
	require.Equal(t, 15, res.Rejected)
	require.Len(t, res.Results, 17)
	require.Equal(t, client.StatusEnqueued, res.Results[0].Status)
	require.Equal(t, "msg:ok1", res.Results[0].TaskID)
	require.Equal(t, "email:ok2", res.Results[10].TaskID)
	require.Equal(t, client.StatusRejected, res.Results[3].Status)
	require.Equal(t, client.CodeItemInvalidKind, res.Results[3].Error.Code)
	// A rejected item names its message when it has one to name.
	require.Equal(t, "x", res.Results[3].MessageID)
	require.Equal(t, "x", res.Results[4].MessageID, "send_at fails the decode: the id is still named")
	require.Contains(t, res.Results[13].Error.Message, "looks like milliseconds", "Date.now() is named")
	require.Equal(t, "a/b", res.Results[1].MessageID)
	require.Empty(t, res.Results[6].MessageID)
	require.Equal(t, map[string]int{"default": 2}, e.queued())

	eb = client.ErrorBody{}
	e.errBody(e.do(http.MethodPost, "/v1/cancellations", map[string]string{"Authorization": "Bearer " + key, "Content-Type": "text/csv"},
		[]byte(good), &eb), eb, http.StatusUnsupportedMediaType, client.CodeUnsupportedMedia)
	eb = client.ErrorBody{}
	e.errBody(e.do(http.MethodGet, "/v1/cancellations", auth, nil, &eb), eb, http.StatusMethodNotAllowed, client.CodeMethodNotAllowed)
	checked := e.check.Checked()
	for _, k := range []string{"POST /v1/cancellations 400", "POST /v1/cancellations 202", "POST /v1/cancellations 415"} {
		require.Positive(t, checked[k], "%s not validated against openapi.yaml: %v", k, checked)
	}
}

// TestTenThousandItems: one request of 10,000 items is enqueued whole, its
// campaign counts them, and sending it again enqueues nothing twice.
func TestTenThousandItems(t *testing.T) {
	t.Parallel()
	e := newEnv(t, intake.Config{})
	its := items(10_000, "spring-sale")
	its[42].Urgent = true
	its[43].Kind = "email"
	its[44].SendAt = client.At(time.Now().Add(24 * time.Hour))
	var res client.Response
	require.Equal(t, http.StatusAccepted, e.post(client.Request{Items: its, Lane: client.LaneBulk}, &res).StatusCode)
	require.Equal(t, 10_000, res.Enqueued)
	require.Len(t, res.Results, 10_000)
	for i, r := range res.Results {
		require.Equal(t, i, r.Index)
		require.Equal(t, client.StatusEnqueued, r.Status)
	}
	require.Equal(t, "email:m00043", res.Results[43].TaskID)
	require.Equal(t, map[string]int{"bulk": 9_999, "urgent": 1}, e.queued())

	var st client.CampaignStatus
	require.Equal(t, http.StatusOK, e.do(http.MethodGet, "/v1/campaigns/spring-sale", auth, nil, &st).StatusCode)
	require.Equal(t, int64(10_000), st.Total)
	require.Equal(t, int64(10_000), st.Pending)

	res = client.Response{}
	require.Equal(t, http.StatusAccepted, e.post(client.Request{Items: its, Lane: client.LaneBulk}, &res).StatusCode)
	require.Equal(t, 10_000, res.AlreadyQueued)
	require.Equal(t, 0, res.Enqueued)
	require.Equal(t, map[string]int{"bulk": 9_999, "urgent": 1}, e.queued())
	st = client.CampaignStatus{}
	e.do(http.MethodGet, "/v1/campaigns/spring-sale", auth, nil, &st)
	require.Equal(t, int64(10_000), st.Total, "a resent request does not count twice")

	// The metrics count every item.
	mfs, err := e.reg.Gather()
	require.NoError(t, err)
	require.Equal(t, 10_000.0, metrics.Sum(mfs, "ghlcancel_intake_items_total", "result", "enqueued"))
	require.Equal(t, 10_000.0, metrics.Sum(mfs, "ghlcancel_intake_items_total", "result", "already_queued"))
	require.Equal(t, 2.0, metrics.Sum(mfs, "ghlcancel_intake_requests_total", "route", "cancellations", "code", "202"))

	// A single object is a one-item request; urgent goes to its own lane.
	res = client.Response{}
	require.Equal(t, http.StatusAccepted, e.post(client.Cancel{MessageID: "single", LocationID: "l", Urgent: true}, &res).StatusCode)
	require.Equal(t, client.ItemResult{Index: 0, MessageID: "single", TaskID: "msg:single", Status: client.StatusEnqueued}, res.Results[0])
	require.Equal(t, 2, e.queued()["urgent"])
}

func TestCampaignAndDeadLetters(t *testing.T) {
	t.Parallel()
	e := newEnv(t, intake.Config{})
	var eb client.ErrorBody
	e.errBody(e.do(http.MethodGet, "/v1/campaigns/nope", auth, nil, &eb), eb, http.StatusNotFound, client.CodeCampaignNotFound)
	// A campaign id with a slash is read with it escaped.
	var res client.Response
	require.Equal(t, http.StatusAccepted, e.post([]byte(`{"items": [{"message_id": "s1", "location_id": "loc1", "campaign_id": "spring/sale"}]}`), &res).StatusCode)
	var cs client.CampaignStatus
	require.Equal(t, http.StatusOK, e.do(http.MethodGet, "/v1/campaigns/spring%2Fsale", auth, nil, &cs).StatusCode)
	require.Equal(t, "spring/sale", cs.Campaign)
	require.EqualValues(t, 1, cs.Total)

	store := deadletter.New(e.rdb)
	ctx := context.Background()
	base := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
	for i := range 250 {
		reason := "unauthorized"
		if i%5 == 0 {
			reason = "bad_request"
		}
		require.NoError(t, store.Add(ctx, deadletter.Record{
			TaskID: fmt.Sprintf("msg:d%03d", i), Kind: "message", MessageID: fmt.Sprintf("d%03d", i), LocationID: "loc1",
			Queue: "default", Reason: reason, Attempts: 1, DeadAt: base.Add(time.Duration(i/10) * time.Millisecond),
		}))
	}
	seen := map[string]bool{}
	cursor := ""
	for {
		var page client.DeadLetterPage
		path := "/v1/dead-letters?reason=unauthorized&limit=30"
		if cursor != "" {
			path += "&cursor=" + cursor
		}
		require.Equal(t, http.StatusOK, e.do(http.MethodGet, path, auth, nil, &page).StatusCode)
		for _, d := range page.DeadLetters {
			require.Equal(t, "unauthorized", d.Reason)
			require.False(t, seen[d.TaskID])
			seen[d.TaskID] = true
		}
		if cursor = page.NextCursor; cursor == "" {
			break
		}
	}
	require.Len(t, seen, 200)
	// Sweeps dead-letter too: the API filters on them as the console and
	// the CLI do (it used to refuse kind=sweep).
	require.NoError(t, store.Add(ctx, deadletter.Record{TaskID: "sweep:s1:loc1", Kind: "sweep", LocationID: "loc1",
		Queue: "default", Reason: "server_error", Attempts: 3}))
	var sweeps client.DeadLetterPage
	require.Equal(t, http.StatusOK, e.do(http.MethodGet, "/v1/dead-letters?kind=sweep", auth, nil, &sweeps).StatusCode)
	require.Len(t, sweeps.DeadLetters, 1)
	require.Equal(t, "sweep:s1:loc1", sweeps.DeadLetters[0].TaskID)
	for _, q := range []string{"limit=0", "limit=1001", "limit=x", "kind=fax", "cursor=zzz", "campaign=c1", "reason=unauthorized&Kind=email"} {
		eb = client.ErrorBody{}
		e.errBody(e.do(http.MethodGet, "/v1/dead-letters?"+q, auth, nil, &eb), eb, http.StatusBadRequest, client.CodeInvalidParameter)
	}
	// A mistyped campaign id read as "nothing to replay" (200, empty):
	// the did-you-mean 404. A campaign with no dead letter, or dead
	// letters that outlived their campaign, is an empty page still.
	eb = client.ErrorBody{}
	e.errBody(e.do(http.MethodGet, "/v1/dead-letters?campaign_id=Spring%2FSale", auth, nil, &eb), eb, http.StatusNotFound, client.CodeCampaignNotFound)
	require.Contains(t, eb.Error.Message, `did you mean "spring/sale"`)
	var empty client.DeadLetterPage
	require.Equal(t, http.StatusOK, e.do(http.MethodGet, "/v1/dead-letters?campaign_id=spring%2Fsale", auth, nil, &empty).StatusCode)
	require.Empty(t, empty.DeadLetters)
	require.NoError(t, store.Add(ctx, deadletter.Record{TaskID: "msg:gone1", Kind: "message", MessageID: "gone1", LocationID: "loc1",
		CampaignID: "expired-campaign", Queue: "default", Reason: "unauthorized", Attempts: 1}))
	require.Equal(t, http.StatusOK, e.do(http.MethodGet, "/v1/dead-letters?campaign_id=expired-campaign&reason=bad_request", auth, nil, &empty).StatusCode)
	require.Empty(t, empty.DeadLetters)
	// That campaign's status is a 404 still, which says it expired with
	// dead letters left (an audit found it read as "unknown" for the 23
	// days dead letters outlive their campaign).
	eb = client.ErrorBody{}
	e.errBody(e.do(http.MethodGet, "/v1/campaigns/expired-campaign", auth, nil, &eb), eb, http.StatusNotFound, client.CodeCampaignNotFound)
	require.Contains(t, eb.Error.Message, `campaign "expired-campaign" has expired`)
	require.Contains(t, eb.Error.Message, "may still go out: GET /v1/dead-letters?campaign_id=expired-campaign")
}

// TestRedisDown: enqueues answer 503 with a retry hint, /readyz 503.
func TestRedisDown(t *testing.T) {
	t.Parallel()
	dead := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { _ = dead.Close() })
	e := newEnvOn(t, dead, intake.Config{})
	var eb client.ErrorBody
	res := e.post(client.Cancel{MessageID: "m", LocationID: "l"}, &eb)
	e.errBody(res, eb, http.StatusServiceUnavailable, client.CodeQueueUnavailable)
	require.Equal(t, "1", res.Header.Get("Retry-After"))
	require.Equal(t, http.StatusServiceUnavailable, e.do(http.MethodGet, "/readyz", nil, nil, nil).StatusCode)
	eb = client.ErrorBody{}
	e.errBody(e.do(http.MethodGet, "/v1/campaigns/c", auth, nil, &eb), eb, http.StatusServiceUnavailable, client.CodeQueueUnavailable)
}

// TestResendThroughTheAPI: a service that sends the same cancels again (as
// a retrying client would) gets the truth per item: already_queued while
// waiting, requeued for a dead letter (its token was fixed), already_done
// once cancelled, and requeued with force. Totals count distinct messages.
func TestResendThroughTheAPI(t *testing.T) {
	t.Parallel()
	e := newEnv(t, intake.Config{})
	ctx := context.Background()
	batch := items(3, "svc")
	var res client.Response
	require.Equal(t, http.StatusAccepted, e.post(client.Request{Items: batch}, &res).StatusCode)
	require.Equal(t, 3, res.Enqueued)
	require.Equal(t, http.StatusAccepted, e.post(client.Request{Items: batch}, &res).StatusCode)
	require.Equal(t, 3, res.AlreadyQueued)

	// A worker's outcomes: m00000 cancelled, m00001 dead-lettered unauthorized.
	led := ledger.New(e.rdb, ledger.Config{})
	insp := asynq.NewInspectorFromRedisClient(e.rdb)
	for i, o := range []string{ledger.Cancelled, ledger.DeadLettered} {
		tid := tasks.TaskID(ghl.KindMessage, batch[i].MessageID)
		require.NoError(t, insp.DeleteTask("default", tid))
		f := ledger.Final{TaskID: tid, CampaignID: "svc", Outcome: ledger.Outcome{Outcome: o}}
		if o == ledger.DeadLettered {
			f.Outcome.Reason = "unauthorized"
			f.Dead = &deadletter.Record{Kind: "message", MessageID: batch[i].MessageID, LocationID: batch[i].LocationID, CampaignID: "svc", Queue: "default", Reason: "unauthorized"}
		}
		_, _, err := led.Settle(ctx, f)
		require.NoError(t, err)
	}
	require.Equal(t, http.StatusAccepted, e.post(client.Request{Items: batch}, &res).StatusCode)
	require.Equal(t, []string{client.StatusAlreadyDone, client.StatusRequeued, client.StatusAlreadyQueued},
		[]string{res.Results[0].Status, res.Results[1].Status, res.Results[2].Status})
	require.Equal(t, client.Response{AlreadyQueued: 1, AlreadyDone: 1, Requeued: 1}, client.Response{AlreadyQueued: res.AlreadyQueued, AlreadyDone: res.AlreadyDone, Requeued: res.Requeued})
	require.Equal(t, http.StatusAccepted, e.post(client.Request{Items: batch[:1], Force: true}, &res).StatusCode)
	require.Equal(t, client.StatusRequeued, res.Results[0].Status)

	var st client.CampaignStatus
	require.Equal(t, http.StatusOK, e.do(http.MethodGet, "/v1/campaigns/svc", auth, nil, &st).StatusCode)
	require.Equal(t, int64(3), st.Total)
	require.Equal(t, int64(3), st.Pending)
	require.Zero(t, st.DeadLettered)
}

// TestSweeps: POST /v1/sweeps queues one sweep task per location into a
// campaign (made up when not given) that reads incomplete until they end;
// bad filters are 400s that name the field.
func TestSweeps(t *testing.T) {
	t.Parallel()
	e := newEnv(t, intake.Config{})
	var res client.SweepResponse
	resp := e.do(http.MethodPost, "/v1/sweeps", auth, []byte(`{"location_ids":["locA","locB","locA"],"contact_id":"c1","channel":"sms","since":"2026-11-01T00:00:00Z"}`), &res)
	require.Equal(t, http.StatusAccepted, resp.StatusCode)
	require.NotEmpty(t, res.CampaignID)
	require.Len(t, res.TaskIDs, 2, "a location given twice is swept once")
	var st client.CampaignStatus
	require.Equal(t, http.StatusOK, e.do(http.MethodGet, "/v1/campaigns/"+res.CampaignID, auth, nil, &st).StatusCode)
	require.Equal(t, int64(2), st.Sweeps)
	require.False(t, st.Complete, "not complete while its sweeps run")
	require.Equal(t, 2, e.queued()["default"], "contact sweeps run on the default lane")
	for _, body := range []string{`{}`, `{"location_ids":[]}`, `{"location_ids":["a/b"]}`, `{"location_ids":["l"],"channel":"fax"}`,
		`{"location_ids":["l"],"source":"nowhere"}`, `{"location_ids":["l"],"locations":["x"]}`, `not json`,
		`{"location_ids":["l"],"campaign_id":".."}`, `{"location_ids":["l"],"campaign_id":"."}`,
		`{"location_ids":["l"],"campaign_id":"spring","dry_run":true}`} {
		var eb client.ErrorBody
		e.errBody(e.do(http.MethodPost, "/v1/sweeps", auth, []byte(body), &eb), eb, http.StatusBadRequest, client.CodeInvalidRequest)
	}

	// The same Idempotency-Key answers the first sweep again; a new key is
	// a new sweep; a key no header can carry is refused.
	idem := func(k string) map[string]string {
		h := maps.Clone(auth)
		h[client.HeaderIdempotencyKey] = k
		return h
	}
	body := []byte(`{"location_ids":["locI"],"campaign_id":"idem"}`)
	var first, again, other client.SweepResponse
	require.Equal(t, http.StatusAccepted, e.do(http.MethodPost, "/v1/sweeps", idem("k-1"), body, &first).StatusCode)
	resp = e.do(http.MethodPost, "/v1/sweeps", idem("k-1"), body, &again)
	require.Equal(t, http.StatusAccepted, resp.StatusCode)
	require.Equal(t, "true", resp.Header.Get("Idempotent-Replayed"))
	require.Equal(t, first, again)
	require.Equal(t, http.StatusAccepted, e.do(http.MethodPost, "/v1/sweeps", idem("k-2"), body, &other).StatusCode)
	require.NotEqual(t, first.SweepID, other.SweepID)
	require.Equal(t, http.StatusOK, e.do(http.MethodGet, "/v1/campaigns/idem", auth, nil, &st).StatusCode)
	require.Equal(t, int64(2), st.Sweeps, "k-1 once, k-2 once: the repeat started nothing")
	// The same request spelt otherwise (spacing, field order) is the same
	// request; the key sent with another request is refused and starts
	// nothing, rather than answering with a sweep that is not this one's.
	for _, same := range []string{`{ "campaign_id": "idem",  "location_ids": ["locI"] }`,
		`{"location_ids":["locI","locI"],"campaign_id":"idem","channel":"all","lane":"bulk"}`} {
		resp = e.do(http.MethodPost, "/v1/sweeps", idem("k-1"), []byte(same), &again)
		require.Equal(t, http.StatusAccepted, resp.StatusCode, same)
		require.Equal(t, "true", resp.Header.Get("Idempotent-Replayed"), same)
		require.Equal(t, first, again, same)
	}
	var reused client.ErrorBody
	for _, otherBody := range []string{`{"location_ids":["locJ"],"campaign_id":"idem"}`, `{"location_ids":["locI"],"campaign_id":"idem","channel":"sms"}`,
		`{"location_ids":["locI"]}`} {
		resp = e.do(http.MethodPost, "/v1/sweeps", idem("k-1"), []byte(otherBody), &reused)
		e.errBody(resp, reused, http.StatusUnprocessableEntity, client.CodeIdempotencyKeyReused)
		require.Empty(t, resp.Header.Get("Idempotent-Replayed"), otherBody)
		require.Contains(t, reused.Error.Message, "new key", otherBody)
	}
	require.Equal(t, http.StatusOK, e.do(http.MethodGet, "/v1/campaigns/idem", auth, nil, &st).StatusCode)
	require.Equal(t, int64(2), st.Sweeps, "a reused key started nothing")
	// A key claimed before requests were kept with their answer answers
	// any repeat, as it did then.
	old, err := json.Marshal(first)
	require.NoError(t, err)
	require.NoError(t, e.rdb.Set(context.Background(), "ghlcancel:idem:sweeps:k-older", old, time.Hour).Err())
	resp = e.do(http.MethodPost, "/v1/sweeps", idem("k-older"), []byte(`{"location_ids":["locZ"]}`), &again)
	require.Equal(t, http.StatusAccepted, resp.StatusCode)
	require.Equal(t, first, again)
	var eb client.ErrorBody
	e.errBody(e.do(http.MethodPost, "/v1/sweeps", idem(strings.Repeat("k", 129)), body, &eb), eb, http.StatusBadRequest, client.CodeInvalidRequest)
	// A key whose first answer is not there to give (claimed without one):
	// a conflict, not a 400 that says the request was wrong.
	require.NoError(t, e.rdb.Set(context.Background(), "ghlcancel:idem:sweeps:k-old", "1764000000000", time.Hour).Err())
	e.errBody(e.do(http.MethodPost, "/v1/sweeps", idem("k-old"), body, &eb), eb, http.StatusConflict, client.CodeDuplicateRequest)
	require.Equal(t, http.StatusOK, e.do(http.MethodGet, "/v1/campaigns/idem", auth, nil, &st).StatusCode)
	require.Equal(t, int64(2), st.Sweeps)
}

// TestRequestMistakes: what a caller gets wrong, answered with the cause:
// the auth scheme's case, a doubled /v1, and the sweep route's body read
// like the cancellations route's (size limit, media type, one object).
func TestRequestMistakes(t *testing.T) {
	t.Parallel()
	e := newEnv(t, intake.Config{MaxBodyBytes: 2048})
	body, _ := json.Marshal(client.Cancel{MessageID: "mCase", LocationID: "l1"})
	// Two not through the contract check: its validator takes only
	// "Bearer", and reads the first JSON value of a body and passes that on.
	srv, err := intake.New(intake.Config{Redis: redisServer.Client(t), Keys: []string{key}, Registry: prometheus.NewRegistry()})
	require.NoError(t, err)
	direct := func(path, authz string, body []byte) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
		req.Header.Set("Authorization", authz)
		srv.ServeHTTP(rec, req)
		return rec
	}
	rec := direct("/v1/cancellations", "bearer  "+key, body)
	require.Equal(t, http.StatusAccepted, rec.Code, "the scheme is case-insensitive (RFC 9110): %s", rec.Body)
	rec = direct("/v1/sweeps", "Bearer "+key, []byte(`{"location_ids":["locMistake0000000001"]}{"location_ids":["x"]}`))
	require.Equal(t, http.StatusBadRequest, rec.Code, rec.Body.String())
	require.Contains(t, rec.Body.String(), "data after the JSON object")

	var eb client.ErrorBody
	e.errBody(e.do(http.MethodPost, "/v1/v1/cancellations", auth, body, &eb), eb, http.StatusNotFound, client.CodeNotFound)
	require.Contains(t, eb.Error.Message, "no such route: POST /v1/v1/cancellations")
	require.Contains(t, eb.Error.Message, "/v1 twice")

	sweep := []byte(`{"location_ids":["locMistake0000000001"]}`)
	var sr client.SweepResponse
	require.Equal(t, http.StatusAccepted, e.do(http.MethodPost, "/v1/sweeps",
		map[string]string{"Authorization": "Bearer " + key, "Content-Type": "Application/JSON; charset=utf-8"}, sweep, &sr).StatusCode)
	eb = client.ErrorBody{}
	big := []byte(`{"location_ids":["` + strings.Repeat("l", 3000) + `"]}`)
	e.errBody(e.do(http.MethodPost, "/v1/sweeps", auth, big, &eb), eb, http.StatusRequestEntityTooLarge, client.CodePayloadTooLarge)
	eb = client.ErrorBody{}
	e.errBody(e.do(http.MethodPost, "/v1/sweeps", map[string]string{"Authorization": "Bearer " + key, "Content-Type": "text/plain"}, sweep, &eb), eb,
		http.StatusUnsupportedMediaType, client.CodeUnsupportedMedia)
	require.Equal(t, map[string]int{"default": 1}, e.queued(), "one sweep, nothing else (the direct server has a database of its own)")
}

// TestBothKindsInOneRequest: one message id as a message and as an email in
// one request is refused at that item (all or nothing), or rejected alone
// with "partial": the campaign counts one message, not two.
func TestBothKindsInOneRequest(t *testing.T) {
	t.Parallel()
	e := newEnv(t, intake.Config{})
	body := func(partial bool) []byte {
		b, _ := json.Marshal(map[string]any{"partial": partial, "items": []client.Cancel{
			{MessageID: "mBoth", LocationID: "l1", CampaignID: "both"},
			{MessageID: "mOther", LocationID: "l1", CampaignID: "both"},
			{MessageID: "mBoth", LocationID: "l1", CampaignID: "both", Kind: "email"},
		}})
		return b
	}
	var eb client.ErrorBody
	e.errBody(e.post(body(false), &eb), eb, http.StatusBadRequest, client.CodeInvalidItems)
	require.Len(t, eb.Error.Items, 1)
	require.Equal(t, 2, eb.Error.Items[0].Index)
	require.Equal(t, client.CodeItemConflictingKind, eb.Error.Items[0].Code)
	require.Contains(t, eb.Error.Items[0].Message, "item 0 as message")
	require.Empty(t, e.queued(), "nothing enqueued")

	var res client.Response
	require.Equal(t, http.StatusAccepted, e.post(body(true), &res).StatusCode)
	require.Equal(t, 2, res.Enqueued)
	require.Equal(t, client.StatusRejected, res.Results[2].Status)
	var st client.CampaignStatus
	require.Equal(t, http.StatusOK, e.do(http.MethodGet, "/v1/campaigns/both", auth, nil, &st).StatusCode)
	require.Equal(t, int64(2), st.Total)
}

// TestOneMessageAtTwoLocations: one message id at two locations in one
// request is refused at the second (its location was dropped as
// already_queued, and the first's token cannot reach the message); the
// same id twice at one location is no conflict.
func TestOneMessageAtTwoLocations(t *testing.T) {
	t.Parallel()
	e := newEnv(t, intake.Config{})
	b, _ := json.Marshal(map[string]any{"items": []client.Cancel{
		{MessageID: "mTwoLocs", LocationID: "l3", CampaignID: "locs"},
		{MessageID: "mTwoLocs", LocationID: "l3", CampaignID: "locs"},
		{MessageID: "mTwoLocs", LocationID: "l0", CampaignID: "locs"},
	}})
	var eb client.ErrorBody
	e.errBody(e.post(b, &eb), eb, http.StatusBadRequest, client.CodeInvalidItems)
	require.Len(t, eb.Error.Items, 1)
	require.Equal(t, 2, eb.Error.Items[0].Index)
	require.Equal(t, "location_id", eb.Error.Items[0].Field)
	require.Equal(t, client.CodeItemConflictingLocation, eb.Error.Items[0].Code)
	require.Contains(t, eb.Error.Items[0].Message, "item 0 at location l3")
	require.Empty(t, e.queued(), "nothing enqueued")
}

// TestCancelIntoADryRunsCampaign: an item sent into a dry run's campaign
// is refused. Without "partial" the whole request is refused, nothing
// enqueued (it answered 202 with the others enqueued and that one
// rejected); with it, that item alone, with its field.
func TestCancelIntoADryRunsCampaign(t *testing.T) {
	t.Parallel()
	e := newEnv(t, intake.Config{})
	var sw client.SweepResponse
	require.Equal(t, http.StatusAccepted, e.do(http.MethodPost, "/v1/sweeps", auth, []byte(`{"location_ids":["l1"],"dry_run":true}`), &sw).StatusCode)
	body := func(partial bool) []byte {
		b, _ := json.Marshal(map[string]any{"partial": partial, "items": []client.Cancel{
			{MessageID: "mFine", LocationID: "l1", CampaignID: "real"},
			{MessageID: "mIntoDry", LocationID: "l1", CampaignID: sw.CampaignID},
		}})
		return b
	}
	var eb client.ErrorBody
	e.errBody(e.post(body(false), &eb), eb, http.StatusBadRequest, client.CodeInvalidItems)
	require.Len(t, eb.Error.Items, 1)
	require.Equal(t, 1, eb.Error.Items[0].Index)
	require.Equal(t, "campaign_id", eb.Error.Items[0].Field)
	require.Contains(t, eb.Error.Items[0].Message, "dry run")
	require.Equal(t, map[string]int{"default": 1}, e.queued(), "nothing but the dry run's sweep")

	var res client.Response
	require.Equal(t, http.StatusAccepted, e.post(body(true), &res).StatusCode)
	require.Equal(t, 1, res.Enqueued)
	require.Equal(t, 1, res.Rejected)
	require.Equal(t, "campaign_id", res.Results[1].Error.Field)
}

// TestResendUnderANewCampaignNamesTheHolder: a message already queued in
// one campaign, sent again under a new campaign id (a common retry),
// answers already_queued naming the campaign that counts it (held_by);
// the new id then reads 404 saying nothing was counted in it, not only
// "unknown or expired".
func TestResendUnderANewCampaignNamesTheHolder(t *testing.T) {
	t.Parallel()
	e := newEnv(t, intake.Config{})
	var res client.Response
	require.Equal(t, http.StatusAccepted, e.post(client.Cancel{MessageID: "mHeld", LocationID: "l1", CampaignID: "spring"}, &res).StatusCode)
	require.Empty(t, res.Results[0].HeldBy)
	require.Equal(t, http.StatusAccepted, e.post(client.Cancel{MessageID: "mHeld", LocationID: "l1", CampaignID: "newcamp"}, &res).StatusCode)
	require.Equal(t, client.StatusAlreadyQueued, res.Results[0].Status)
	require.Equal(t, "spring", res.Results[0].HeldBy)
	var eb client.ErrorBody
	e.errBody(e.do(http.MethodGet, "/v1/campaigns/newcamp", auth, nil, &eb), eb, http.StatusNotFound, client.CodeCampaignNotFound)
	require.Contains(t, eb.Error.Message, "nothing was ever counted in it")
}

// TestUrgentResendMovesAQueuedCancel: a message a campaign queued on the
// bulk lane, sent again as urgent (the contact opted out), moves to the
// urgent lane in the campaign that counts it: already_queued, moved, with
// the holder named. Sent again, it is where it was asked to be.
func TestUrgentResendMovesAQueuedCancel(t *testing.T) {
	t.Parallel()
	e := newEnv(t, intake.Config{})
	var res client.Response
	require.Equal(t, http.StatusAccepted, e.post(client.Request{Lane: client.LaneBulk,
		Items: []client.Cancel{{MessageID: "mMoved", LocationID: "l1", CampaignID: "spring"}}}, &res).StatusCode)
	require.Equal(t, map[string]int{"bulk": 1}, e.queued())
	for i, want := range []bool{true, false} {
		res = client.Response{}
		require.Equal(t, http.StatusAccepted, e.post(client.Cancel{MessageID: "mMoved", LocationID: "l1", CampaignID: "opt-out", Urgent: true}, &res).StatusCode)
		require.Equal(t, []any{client.StatusAlreadyQueued, "spring", want}, []any{res.Results[0].Status, res.Results[0].HeldBy, res.Results[0].Moved}, "send %d", i+1)
		require.Equal(t, map[string]int{"bulk": 0, "urgent": 1}, e.queued())
		moved := 0
		if want {
			moved = 1
		}
		require.Equal(t, moved, res.Moved)
	}
	// One running on the bulk lane cannot move: the answer says where it stays.
	require.Equal(t, http.StatusAccepted, e.post(client.Request{Lane: client.LaneBulk,
		Items: []client.Cancel{{MessageID: "mRunning", LocationID: "l1", CampaignID: "spring"}}}, &res).StatusCode)
	require.NoError(t, e.rdb.HSet(context.Background(), "asynq:{bulk}:t:msg:mRunning", "state", "active").Err())
	res = client.Response{}
	require.Equal(t, http.StatusAccepted, e.post(client.Cancel{MessageID: "mRunning", LocationID: "l1", Urgent: true}, &res).StatusCode)
	require.Equal(t, []any{client.StatusAlreadyQueued, false, "bulk"}, []any{res.Results[0].Status, res.Results[0].Moved, res.Results[0].StaysOn})
}

// TestCampaignSaysWhenItNeedsAttention: a campaign whose only location's
// sweep failed read complete with dead_lettered 0, and a client polling
// for "complete and no dead letters" reported success while every message
// stayed scheduled. needs_attention says so.
func TestCampaignSaysWhenItNeedsAttention(t *testing.T) {
	t.Parallel()
	e := newEnv(t, intake.Config{})
	var res client.Response
	require.Equal(t, http.StatusAccepted, e.post(client.Cancel{MessageID: "mAttn", LocationID: "l1", CampaignID: "attn"}, &res).StatusCode)
	var st client.CampaignStatus
	require.Equal(t, http.StatusOK, e.do(http.MethodGet, "/v1/campaigns/attn", auth, nil, &st).StatusCode)
	require.False(t, st.NeedsAttention)
	require.NoError(t, e.rdb.HSet(context.Background(), ledger.CampaignKey("attn"), "sweeps", 1, "sweeps_done", 1, "sweeps_failed", 1).Err())
	require.Equal(t, http.StatusOK, e.do(http.MethodGet, "/v1/campaigns/attn", auth, nil, &st).StatusCode)
	require.True(t, st.NeedsAttention, "a failed sweep")
	require.Zero(t, st.DeadLettered)
}
