package intake_test

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/client"
	"github.com/ghlcancel/ghlcancel/internal/intake"
	"github.com/ghlcancel/ghlcancel/internal/sandbox"
	"github.com/ghlcancel/ghlcancel/internal/syncbuf"
	"github.com/ghlcancel/ghlcancel/internal/webhook"
)

// webhookEnv is an intake whose webhook verifies the sandbox's signatures
// and takes events, with send: body signed as o says, plus extra headers,
// answered with its status code and webhook answer.
func webhookEnv(t *testing.T, events string) (*sandbox.Server, *env, func(body []byte, o sandbox.EmitOptions, extra map[string]string) (int, webhook.Response)) {
	t.Helper()
	sb := sandbox.New(sandbox.Config{})
	v, err := sb.Verifier()
	require.NoError(t, err)
	rules, err := webhook.LoadRules(events, "", "")
	require.NoError(t, err)
	e := newEnv(t, intake.Config{Webhook: &webhook.Config{Verifier: v, Rules: rules}})
	return sb, e, func(body []byte, o sandbox.EmitOptions, extra map[string]string) (int, webhook.Response) {
		t.Helper()
		h, err := sb.Sign(body, o)
		require.NoError(t, err)
		hdr := map[string]string{}
		for k := range h {
			hdr[k] = h.Get(k)
		}
		for k, v := range extra {
			hdr[k] = v
		}
		var r webhook.Response
		res := e.do(http.MethodPost, "/v1/webhooks/highlevel", hdr, body, &r)
		return res.StatusCode, r
	}
}

// TestWebhookRoute: the webhook route needs no API key (an API key does
// not replace a signature), and every answer matches openapi.yaml (the
// env's validator checks each exchange).
func TestWebhookRoute(t *testing.T) {
	sb, e, send := webhookEnv(t, "InboundMessage")
	reply := sb.EventBody(sandbox.EventSpec{Type: "InboundMessage", Location: "locIntake00000000001", Contact: "contactIntake0000001"})
	code, r := send(reply, sandbox.EmitOptions{}, nil)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, webhook.ResultAccepted, r.Result)
	require.Regexp(t, `^auto-inboundmessage-\d{8}$`, r.CampaignID)
	// The campaign JSON says which event started which sweep (validated
	// against openapi.yaml like every exchange here).
	var st client.CampaignStatus
	res := e.do(http.MethodGet, "/v1/campaigns/"+r.CampaignID, auth, nil, &st)
	require.Equal(t, http.StatusOK, res.StatusCode)
	require.Len(t, st.SweepList, 1)
	require.Equal(t, client.SweepSummary{SweepID: r.SweepID, LocationID: "locIntake00000000001", ContactID: "contactIntake0000001",
		Channel: "all", Event: "InboundMessage", EventID: st.SweepList[0].EventID, State: "running", StartedAt: st.SweepList[0].StartedAt}, st.SweepList[0])
	require.NotEmpty(t, st.SweepList[0].EventID)
	code, r = send(reply, sandbox.EmitOptions{Scheme: sandbox.SchemeNone}, auth)
	require.Equal(t, http.StatusUnauthorized, code, "an API key is no signature")
	require.Equal(t, "missing_signature", r.Result)
	code, r = send(reply, sandbox.EmitOptions{Scheme: sandbox.SchemeRSA}, nil)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, webhook.ResultReplay, r.Result)
	code, r = send([]byte(`[]`), sandbox.EmitOptions{}, nil)
	require.Equal(t, http.StatusBadRequest, code)
	require.Equal(t, webhook.ResultInvalid, r.Result)
	res = e.do(http.MethodGet, "/v1/webhooks/highlevel", nil, nil, nil)
	require.Equal(t, http.StatusMethodNotAllowed, res.StatusCode)
}

// TestOptOutsSweepOnTheUrgentLane: a contact's opt-out (DND) starts its
// sweep on the urgent lane (its cancels go there too, moving those a
// campaign queued on a slower lane: TestSweepCountsWhatWasQueuedElsewhere);
// a reply's sweep goes on the default lane.
func TestOptOutsSweepOnTheUrgentLane(t *testing.T) {
	t.Parallel()
	sb, e, post := webhookEnv(t, "InboundMessage,ContactDndUpdate")
	send := func(spec sandbox.EventSpec) webhook.Response {
		t.Helper()
		code, r := post(sb.EventBody(spec), sandbox.EmitOptions{}, nil)
		require.Equal(t, http.StatusOK, code)
		require.Equal(t, webhook.ResultAccepted, r.Result, r.Reason)
		return r
	}
	const loc = "locOptOut00000000001"
	send(sandbox.EventSpec{Type: webhook.EventInboundMessage, Location: loc, Contact: "contactReplies000001"})
	require.Equal(t, map[string]int{"default": 1}, e.queued(), "a reply's sweep")
	r := send(sandbox.EventSpec{Type: webhook.EventContactDndUpdate, Location: loc, Contact: "contactOptOut0000001", DND: []string{"all"}})
	require.Equal(t, map[string]int{"default": 1, "urgent": 1}, e.queued(), "an opt-out's sweep")
	var st client.CampaignStatus
	require.Equal(t, http.StatusOK, e.do(http.MethodGet, "/v1/campaigns/"+r.CampaignID, auth, nil, &st).StatusCode)
	require.Len(t, st.SweepList, 1)
	for ev, lane := range map[string]string{webhook.EventContactDndUpdate: "urgent", webhook.EventInboundMessage: "default",
		webhook.EventAppointmentCreate: "default", webhook.EventContactDelete: "default"} {
		require.Equal(t, lane, webhook.LaneFor(ev), ev)
	}
}

// TestWebhookURLTypos: HighLevel does not retry a 404, so a typo in the
// app's webhook URL loses every event. A trailing slash is served; any
// other path naming a webhook answers 404 naming the right one, is counted
// under its own route (the GhlcancelWebhookWrongPath alert) and logged at
// most once a minute.
func TestWebhookURLTypos(t *testing.T) {
	sb := sandbox.New(sandbox.Config{})
	v, err := sb.Verifier()
	require.NoError(t, err)
	rules, err := webhook.LoadRules("InboundMessage", "", "")
	require.NoError(t, err)
	logs := &syncbuf.Buffer{}
	e := newEnv(t, intake.Config{Webhook: &webhook.Config{Verifier: v, Rules: rules},
		Logger: slog.New(slog.NewTextHandler(logs, nil))})
	body := sb.EventBody(sandbox.EventSpec{Type: "InboundMessage", Location: "locIntake00000000002", Contact: "contactIntake0000002"})
	h, err := sb.Sign(body, sandbox.EmitOptions{})
	require.NoError(t, err)
	hdr := map[string]string{}
	for k := range h {
		hdr[k] = h.Get(k)
	}
	// A trailing slash is served (outside the spec's validator: the spec
	// names one path).
	srv, err := intake.New(intake.Config{Redis: redisServer.Client(t), Keys: []string{key}, Registry: prometheus.NewRegistry(),
		Webhook: &webhook.Config{Verifier: v, Rules: rules}})
	require.NoError(t, err)
	plain := httptest.NewServer(srv)
	t.Cleanup(plain.Close)
	req, err := http.NewRequest(http.MethodPost, plain.URL+"/v1/webhooks/highlevel/", bytes.NewReader(body))
	require.NoError(t, err)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	var r webhook.Response
	require.NoError(t, json.NewDecoder(res.Body).Decode(&r))
	res.Body.Close()
	require.Equal(t, http.StatusOK, res.StatusCode, "a trailing slash is served")
	require.Equal(t, webhook.ResultAccepted, r.Result)

	for _, path := range []string{"/v1/webhooks/HighLevel", "/v1/webhook/highlevel", "/webhooks/highlevel", "/"} {
		var eb client.ErrorBody
		res := e.do(http.MethodPost, path, hdr, body, &eb)
		require.Equal(t, http.StatusNotFound, res.StatusCode, path)
		require.Contains(t, eb.Error.Message, "HighLevel webhooks go to POST /v1/webhooks/highlevel", path)
	}
	require.Equal(t, 1, strings.Count(logs.String(), "a webhook came to a path no route serves"), "logged once a minute:\n%s", logs)
	require.Contains(t, logs.String(), "path=/v1/webhooks/HighLevel")
	mfs, err := e.reg.Gather()
	require.NoError(t, err)
	require.Equal(t, 4.0, routeCount(mfs, intake.RouteWebhookWrongPath))
	// Unsigned requests (an API client's typo, a scanner probing /webhook)
	// keep their plain 404 and are not counted as lost events.
	for _, path := range []string{"/v1/cancelations", "/webhook", "/v1/webhooks/highlevel/x"} {
		var eb client.ErrorBody
		res = e.do(http.MethodPost, path, auth, []byte(`{}`), &eb)
		require.Equal(t, http.StatusNotFound, res.StatusCode, path)
		require.NotContains(t, eb.Error.Message, "HighLevel webhooks go to", path)
	}
	// A forged signature header is no delivery either.
	var eb client.ErrorBody
	res = e.do(http.MethodPost, "/webhooks/highlevel", map[string]string{"X-GHL-Signature": "Zm9yZ2Vk"}, body, &eb)
	require.Equal(t, http.StatusNotFound, res.StatusCode)
	require.NotContains(t, eb.Error.Message, "HighLevel webhooks go to")
	mfs, err = e.reg.Gather()
	require.NoError(t, err)
	require.Equal(t, 4.0, routeCount(mfs, intake.RouteWebhookWrongPath), "unsigned and forged requests are not counted")
}

// routeCount sums ghlcancel_intake_requests_total for a route.
func routeCount(mfs []*dto.MetricFamily, route string) float64 {
	n := 0.0
	for _, mf := range mfs {
		if mf.GetName() != "ghlcancel_intake_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "route" && l.GetValue() == route {
					n += m.GetCounter().GetValue()
				}
			}
		}
	}
	return n
}
