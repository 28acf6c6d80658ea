package webhook_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/producer"
	"github.com/ghlcancel/ghlcancel/internal/redistest"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
	"github.com/ghlcancel/ghlcancel/internal/tokens"
	"github.com/ghlcancel/ghlcancel/internal/webhook"
	"github.com/ghlcancel/ghlcancel/internal/webhook/signature"
	"github.com/ghlcancel/ghlcancel/metrics"
)

var redisServer *redistest.Server

func TestMain(m *testing.M) { redistest.Main(m, &redisServer) }

func newSigner(t *testing.T) *signature.Signer {
	t.Helper()
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	r, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	return &signature.Signer{Ed: ed, RSA: r}
}

func verifierFor(t *testing.T, s *signature.Signer, legacy bool) *signature.Verifier {
	t.Helper()
	ed, rs := s.PublicKeys()
	v, err := signature.NewVerifier(ed, rs, legacy)
	require.NoError(t, err)
	return v
}

func TestDefaultKeysParse(t *testing.T) {
	v, err := signature.NewVerifier("", "", true)
	require.NoError(t, err)
	require.True(t, v.Legacy())
	v, err = signature.NewVerifier("", "", false)
	require.NoError(t, err)
	require.False(t, v.Legacy())
	_, err = signature.NewVerifier("bm90IGEga2V5", "", true)
	require.ErrorContains(t, err, "Ed25519 webhook key")
	ed, rs := newSigner(t).PublicKeys()
	_, err = signature.NewVerifier(rs, "", true)
	require.ErrorContains(t, err, "want an Ed25519 key")
	_, err = signature.NewVerifier(ed, ed, true)
	require.ErrorContains(t, err, "want an RSA key")
}

func TestVerify(t *testing.T) {
	good, other := newSigner(t), newSigner(t)
	body := []byte(`{"type":"InboundMessage","locationId":"loc","webhookId":"w1","timestamp":"2026-11-28T10:00:00Z"}`)
	tampered := bytes.Replace(body, []byte("w1"), []byte("w2"), 1)
	ed := func(s *signature.Signer, b []byte) string { return s.SignEd25519(b) }
	rs := func(s *signature.Signer, b []byte) string {
		sig, err := s.SignRSA(b)
		require.NoError(t, err)
		return sig
	}
	tests := []struct {
		name      string
		headers   map[string]string
		legacy    bool
		wantErr   string // reason; "" = valid
		wantUsing string
	}{
		{"valid Ed25519", map[string]string{signature.HeaderSignature: ed(good, body)}, true, "", "ed25519"},
		{"valid RSA", map[string]string{signature.HeaderLegacySignature: rs(good, body)}, true, "", "rsa"},
		{"both valid: Ed25519 decides", map[string]string{signature.HeaderSignature: ed(good, body), signature.HeaderLegacySignature: rs(good, body)}, true, "", "ed25519"},
		{"tampered body, Ed25519", map[string]string{signature.HeaderSignature: ed(good, tampered)}, true, signature.ReasonBadSignature, ""},
		{"tampered body, RSA", map[string]string{signature.HeaderLegacySignature: rs(good, tampered)}, true, signature.ReasonBadSignature, ""},
		{"wrong Ed25519 key", map[string]string{signature.HeaderSignature: ed(other, body)}, true, signature.ReasonBadSignature, ""},
		{"wrong RSA key", map[string]string{signature.HeaderLegacySignature: rs(other, body)}, true, signature.ReasonBadSignature, ""},
		{"bad Ed25519 and good RSA: refused", map[string]string{signature.HeaderSignature: ed(other, body), signature.HeaderLegacySignature: rs(good, body)}, true, signature.ReasonBadSignature, ""},
		{"Ed25519 not base64", map[string]string{signature.HeaderSignature: "%%%"}, true, signature.ReasonBadSignature, ""},
		{"missing headers", nil, true, signature.ReasonMissingSignature, ""},
		{"legacy off refuses a good RSA", map[string]string{signature.HeaderLegacySignature: rs(good, body)}, false, signature.ReasonLegacyRefused, ""},
		{"legacy off still takes Ed25519", map[string]string{signature.HeaderSignature: ed(good, body)}, false, "", "ed25519"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			for k, v := range tt.headers {
				h.Set(k, v)
			}
			using, err := verifierFor(t, good, tt.legacy).Verify(body, h)
			if tt.wantErr == "" {
				require.NoError(t, err)
				require.Equal(t, tt.wantUsing, using)
				return
			}
			var ve *signature.VerifyError
			require.ErrorAs(t, err, &ve)
			require.Equal(t, tt.wantErr, ve.Reason)
		})
	}
}

func TestParseEvents(t *testing.T) {
	tests := []struct {
		in      string
		want    map[string][]string
		wantErr string
	}{
		{"", map[string][]string{}, ""},
		{"InboundMessage", map[string][]string{"InboundMessage": nil}, ""},
		{" inboundmessage:SMS+email , ContactDndUpdate", map[string][]string{"InboundMessage": {"sms", "email"}, "ContactDndUpdate": nil}, ""},
		{"AppointmentCreate,ContactDelete", map[string][]string{"AppointmentCreate": nil, "ContactDelete": nil}, ""},
		{"OutboundMessage", nil, "want one of InboundMessage"},
		{"ContactDelete:sms", nil, "only InboundMessage takes message types"},
		{"InboundMessage:", nil, "empty message type"},
		{"InboundMessage:sms+emial", nil, `unknown message type "emial": want one of sms, rcs, email`},
		{"InboundMessage:SMS+Email+CALL+VoiceMail+Live Chat+WhatsApp+facebook+TYPE_RCS", map[string][]string{"InboundMessage": {"sms", "email", "call", "voicemail", "live_chat", "whatsapp", "fb", "rcs"}}, ""},
	}
	for _, tt := range tests {
		got, err := webhook.ParseEvents(tt.in)
		if tt.wantErr != "" {
			require.ErrorContains(t, err, tt.wantErr, tt.in)
			continue
		}
		require.NoError(t, err, tt.in)
		require.Equal(t, tt.want, got, tt.in)
	}
}

func TestDecide(t *testing.T) {
	rules, err := webhook.LoadRules("InboundMessage:sms+email,ContactDndUpdate,ContactDelete", "all", "")
	require.NoError(t, err)
	smsOnly, err := webhook.LoadRules("ContactDndUpdate,AppointmentCreate", "sms", "")
	require.NoError(t, err)
	// A rule and an event spell a type their own way: one type.
	chat, err := webhook.LoadRules("InboundMessage:live_chat+facebook", "all", "")
	require.NoError(t, err)
	ev := func(typ string, f func(*webhook.Event)) webhook.Event {
		e := webhook.Event{Type: typ, LocationID: "loc", ContactID: "c1"}
		if f != nil {
			f(&e)
		}
		return e
	}
	tests := []struct {
		name       string
		rules      *webhook.Rules
		ev         webhook.Event
		result, ch string
	}{
		{"SMS reply", rules, ev("InboundMessage", func(e *webhook.Event) { e.MessageType, e.Direction = "SMS", "inbound" }), "accepted", "all"},
		{"email reply", rules, ev("InboundMessage", func(e *webhook.Event) { e.MessageType = "Email" }), "accepted", "all"},
		{"call is not in the rule", rules, ev("InboundMessage", func(e *webhook.Event) { e.MessageType = "CALL" }), "ignored", ""},
		{"outbound direction", rules, ev("InboundMessage", func(e *webhook.Event) { e.MessageType, e.Direction = "SMS", "outbound" }), "ignored", ""},
		{"not in the rule", rules, ev("AppointmentCreate", nil), "no_rule", ""},
		{"unknown type", rules, ev("OutboundMessage", nil), "no_rule", ""},
		{"DND on everywhere", rules, ev("ContactDndUpdate", func(e *webhook.Event) { e.DND = true }), "accepted", "all"},
		{"DND on SMS", rules, ev("ContactDndUpdate", func(e *webhook.Event) { e.DNDActive = []string{"SMS"} }), "accepted", "sms"},
		{"DND on Email", rules, ev("ContactDndUpdate", func(e *webhook.Event) { e.DNDActive = []string{"Email", "FB"} }), "accepted", "email"},
		{"DND on SMS and Email", rules, ev("ContactDndUpdate", func(e *webhook.Event) { e.DNDActive = []string{"Email", "SMS"} }), "accepted", "all"},
		{"DND off", rules, ev("ContactDndUpdate", nil), "ignored", ""},
		{"DND on WhatsApp only", rules, ev("ContactDndUpdate", func(e *webhook.Event) { e.DNDActive = []string{"WhatsApp"} }), "ignored", ""},
		{"DND on Email, rule sweeps SMS only", smsOnly, ev("ContactDndUpdate", func(e *webhook.Event) { e.DNDActive = []string{"Email"} }), "ignored", ""},
		{"DND everywhere, rule sweeps SMS only", smsOnly, ev("ContactDndUpdate", func(e *webhook.Event) { e.DND = true }), "accepted", "sms"},
		{"appointment, SMS only", smsOnly, ev("AppointmentCreate", nil), "accepted", "sms"},
		{"contact deleted", rules, ev("ContactDelete", nil), "accepted", "all"},
		{"Live Chat reply, rule live_chat", chat, ev("InboundMessage", func(e *webhook.Event) { e.MessageType = "Live Chat" }), "accepted", "all"},
		{"TYPE_FACEBOOK reply, rule facebook", chat, ev("InboundMessage", func(e *webhook.Event) { e.MessageType = "TYPE_FACEBOOK" }), "accepted", "all"},
		{"FB reply, rule facebook", chat, ev("InboundMessage", func(e *webhook.Event) { e.MessageType = "FB" }), "accepted", "all"},
		{"SMS reply, rule chat only", chat, ev("InboundMessage", func(e *webhook.Event) { e.MessageType = "SMS" }), "ignored", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := tt.rules.Decide(tt.ev)
			require.Equal(t, tt.result, d.Result, d.Why)
			require.Equal(t, tt.ch, d.Channel)
		})
	}
}

func TestRulesFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "rules.json")
	require.NoError(t, os.WriteFile(path, []byte(`{"locations": {"locQuiet": {"events": []}, "locSMS": {"events": ["InboundMessage:sms"], "channels": "sms"}, "locInherit": {"events": ["AppointmentCreate"]}, "locChannelOnly": {"channels": "sms"}}}`), 0o600))
	r, err := webhook.LoadRules("InboundMessage,ContactDndUpdate", "email", path)
	require.NoError(t, err)
	d0 := r.Decide(webhook.Event{Type: "InboundMessage", LocationID: "locQuiet"})
	require.Equal(t, "no_rule", d0.Result)
	require.Contains(t, d0.Why, "not in this location's entry in AUTO_CANCEL_RULES_FILE", "the reason names the file, not the variable")
	require.Contains(t, r.Decide(webhook.Event{Type: "AppointmentCreate", LocationID: "elsewhere"}).Why, "not in AUTO_CANCEL_EVENTS")
	// An entry that only narrows the channels keeps the default events (it
	// used to turn them all off there, with a reason blaming AUTO_CANCEL_EVENTS).
	require.Equal(t, webhook.Decision{Result: "accepted", Channel: "sms"}, r.Decide(webhook.Event{Type: "InboundMessage", LocationID: "locChannelOnly"}))
	dnd := r.Decide(webhook.Event{Type: "ContactDndUpdate", LocationID: "locChannelOnly", ContactID: "C", DNDActive: []string{"Email"}})
	require.Equal(t, "ignored", dnd.Result)
	require.Contains(t, dnd.Why, "which this location's entry in AUTO_CANCEL_RULES_FILE does not sweep")
	d := r.Decide(webhook.Event{Type: "InboundMessage", LocationID: "locSMS", MessageType: "SMS"})
	require.Equal(t, webhook.Decision{Result: "accepted", Channel: "sms"}, d)
	require.Equal(t, "ignored", r.Decide(webhook.Event{Type: "InboundMessage", LocationID: "locSMS", MessageType: "Email"}).Result)
	require.Equal(t, "email", r.Decide(webhook.Event{Type: "AppointmentCreate", LocationID: "locInherit"}).Channel)
	require.Equal(t, "email", r.Decide(webhook.Event{Type: "InboundMessage", LocationID: "elsewhere"}).Channel)

	for name, body := range map[string]string{
		"unknown field": `{"locations": {"a": {"event": ["InboundMessage"]}}}`,
		"unknown event": `{"locations": {"a": {"events": ["Reply"]}}}`,
		"bad channel":   `{"locations": {"a": {"events": [], "channels": "fax"}}}`,
		"not JSON":      `locations: a`,
	} {
		require.NoError(t, os.WriteFile(path, []byte(body), 0o600))
		_, err := webhook.LoadRules("", "", path)
		require.ErrorContains(t, err, "AUTO_CANCEL_RULES_FILE", name)
	}
	_, err = webhook.LoadRules("", "", filepath.Join(dir, "missing.json"))
	require.ErrorContains(t, err, "AUTO_CANCEL_RULES_FILE")
	_, err = webhook.LoadRules("", "fax", "")
	require.ErrorContains(t, err, "AUTO_CANCEL_CHANNELS")
}

func TestParseEvent(t *testing.T) {
	ev, err := webhook.ParseEvent([]byte(`{"type":"ContactDndUpdate","locationId":"L","id":"C","dnd":false,"timestamp":1764324000000,
		"dndSettings":{"SMS":{"status":"active"},"Email":{"status":"inactive"},"WhatsApp":{"status":"permanent"}}}`))
	require.NoError(t, err)
	require.Equal(t, "C", ev.ContactID)
	require.Equal(t, []string{"SMS", "WhatsApp"}, ev.DNDActive, "active and permanent are DND on")
	require.Equal(t, int64(1764324000), ev.Timestamp.Unix())
	ev, err = webhook.ParseEvent([]byte(`{"type":"AppointmentCreate","locationId":"L","timestamp":"2026-11-28T10:00:00.123Z","appointment":{"contactId":"C2"}}`))
	require.NoError(t, err)
	require.Equal(t, "C2", ev.ContactID)
	for name, body := range map[string]string{
		"no timestamp":  `{"type":"InboundMessage","locationId":"L"}`,
		"bad timestamp": `{"type":"InboundMessage","locationId":"L","timestamp":"yesterday"}`,
		"no type":       `{"locationId":"L","timestamp":"2026-11-28T10:00:00Z"}`,
		"not JSON":      `{"type":`,
		"two objects":   `{"type":"a","timestamp":1}{}`,
		"microseconds":  `{"type":"InboundMessage","locationId":"L","timestamp":1764324000000000}`,
	} {
		_, err := webhook.ParseEvent([]byte(body))
		require.Error(t, err, name)
	}
}

// handlerEnv is the handler on a real Redis.
type handlerEnv struct {
	t      *testing.T
	rdb    *redis.Client
	signer *signature.Signer
	srv    *httptest.Server
	reg    *prometheus.Registry
	now    time.Time
}

func newHandlerEnv(t *testing.T, rdb *redis.Client, events string) *handlerEnv {
	t.Helper()
	e := &handlerEnv{t: t, rdb: rdb, signer: newSigner(t), reg: prometheus.NewRegistry(), now: time.Now()}
	rules, err := webhook.LoadRules(events, "", "")
	require.NoError(t, err)
	h, err := webhook.NewHandler(webhook.Config{Verifier: verifierFor(t, e.signer, true), Rules: rules, Redis: rdb,
		Producer: producer.New(rdb, producer.Config{}), Registry: e.reg, Now: func() time.Time { return e.now }})
	require.NoError(t, err)
	e.srv = httptest.NewServer(h)
	t.Cleanup(e.srv.Close)
	return e
}

func (e *handlerEnv) body(typ, id string, ts time.Time, contact string) []byte {
	m := map[string]any{"type": typ, "locationId": "locWebhook0000000001", "webhookId": id, "timestamp": ts.UTC().Format(time.RFC3339Nano),
		"contactId": contact, "messageType": "SMS", "direction": "inbound"}
	b, _ := json.Marshal(m)
	return b
}

func (e *handlerEnv) post(body []byte, sign bool) (int, webhook.Response) {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, e.srv.URL, bytes.NewReader(body))
	if sign {
		req.Header.Set(signature.HeaderSignature, e.signer.SignEd25519(body))
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(e.t, err)
	defer resp.Body.Close()
	var r webhook.Response
	require.NoError(e.t, json.NewDecoder(resp.Body).Decode(&r))
	return resp.StatusCode, r
}

func (e *handlerEnv) count(event, result string) float64 {
	e.t.Helper()
	mfs, err := e.reg.Gather()
	require.NoError(e.t, err)
	return metrics.Sum(mfs, "ghlcancel_webhooks_total", "event", event, "result", result)
}

func sweepTasks(t *testing.T, rdb *redis.Client) []tasks.SweepPayload {
	t.Helper()
	ids, err := rdb.LRange(context.Background(), "asynq:{default}:pending", 0, -1).Result()
	require.NoError(t, err)
	var out []tasks.SweepPayload
	for _, id := range ids {
		if !strings.HasPrefix(id, "sweep:") {
			continue
		}
		msg, err := rdb.HGet(context.Background(), "asynq:{default}:t:"+id, "msg").Bytes()
		require.NoError(t, err)
		i := bytes.Index(msg, []byte(`{"sweep_id"`))
		require.GreaterOrEqual(t, i, 0)
		var p tasks.SweepPayload
		require.NoError(t, json.NewDecoder(bytes.NewReader(msg[i:])).Decode(&p))
		out = append(out, p)
	}
	return out
}

// TestHandler: what each delivery is answered and whether a sweep is
// queued, against a real Redis. HighLevel retries only on 429.
func TestHandler(t *testing.T) {
	rdb := redisServer.Client(t)
	e := newHandlerEnv(t, rdb, "InboundMessage")
	ctx := context.Background()

	ok := e.body("InboundMessage", "wh-1", e.now.Add(-time.Minute), "contactReplied000001")
	code, r := e.post(ok, true)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "accepted", r.Result)
	require.Equal(t, webhook.CampaignID("InboundMessage", e.now), r.CampaignID)
	sw := sweepTasks(t, rdb)
	require.Len(t, sw, 1)
	require.Equal(t, tasks.SweepPayload{SweepID: r.SweepID, CampaignID: r.CampaignID, LocationID: "locWebhook0000000001",
		ContactID: "contactReplied000001", Channel: "all", Lane: "default", Created: sw[0].Created, Event: "InboundMessage",
		EventID: "wh-1", EventAt: e.now.Add(-time.Minute).UnixMilli()}, sw[0])

	// The same delivery again (HighLevel's retry, or an attacker's replay).
	code, r = e.post(ok, true)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "replay", r.Result)
	// Re-signed with a new body but the same webhookId: still a replay.
	code, r = e.post(e.body("InboundMessage", "wh-1", e.now, "contactOther00000001"), true)
	require.Equal(t, "replay", r.Result, "code %d", code)
	// Stale and future timestamps.
	code, r = e.post(e.body("InboundMessage", "wh-old", e.now.Add(-6*time.Minute), "contactReplied000001"), true)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "replay", r.Result)
	require.Contains(t, r.Reason, "6m0s old, older than the 5m0s window")
	_, r = e.post(e.body("InboundMessage", "wh-future", e.now.Add(6*time.Minute), "contactReplied000001"), true)
	require.Equal(t, "replay", r.Result)
	require.Contains(t, r.Reason, "6m0s ahead of this server's clock", "not \"-6m0s from now\"")
	// Not in AUTO_CANCEL_EVENTS.
	_, r = e.post(e.body("AppointmentCreate", "wh-2", e.now, "contactReplied000001"), true)
	require.Equal(t, "no_rule", r.Result)
	// Unsigned, tampered.
	code, r = e.post(e.body("InboundMessage", "wh-3", e.now, "contactReplied000001"), false)
	require.Equal(t, http.StatusUnauthorized, code)
	require.Equal(t, "missing_signature", r.Result)
	req, _ := http.NewRequest(http.MethodPost, e.srv.URL, bytes.NewReader(bytes.Replace(ok, []byte("wh-1"), []byte("wh-9"), 1)))
	req.Header.Set(signature.HeaderSignature, e.signer.SignEd25519(ok))
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	// Malformed: signed but not an event, no contact, too large.
	code, r = e.post([]byte(`{"type":"InboundMessage"`), true)
	require.Equal(t, http.StatusBadRequest, code)
	require.Equal(t, "invalid", r.Result)
	code, r = e.post(e.body("InboundMessage", "wh-4", e.now, ""), true)
	require.Equal(t, http.StatusBadRequest, code)
	require.Contains(t, r.Reason, "no contact id")
	big := append(bytes.Repeat([]byte(" "), webhook.MaxBodyDefault), ok...)
	code, _ = e.post(big, true)
	require.Equal(t, http.StatusBadRequest, code)
	require.Len(t, sweepTasks(t, rdb), 1, "only the first delivery queued a sweep")

	// Without a webhookId the body's hash is the id.
	noID := []byte(strings.Replace(string(e.body("InboundMessage", "", e.now, "contactNoID000000001")), `"webhookId":"",`, "", 1))
	_, r = e.post(noID, true)
	require.Equal(t, "accepted", r.Result)
	_, r = e.post(noID, true)
	require.Equal(t, "replay", r.Result)

	require.Equal(t, 2.0, e.count("InboundMessage", "accepted"))
	require.Equal(t, 5.0, e.count("InboundMessage", "replay"))
	require.Equal(t, 1.0, e.count("AppointmentCreate", "no_rule"))
	require.Equal(t, 1.0, e.count("unknown", "missing_signature"))
	require.Equal(t, 1.0, e.count("unknown", "bad_signature"))
	require.Equal(t, 3.0, e.count("unknown", "invalid")+e.count("InboundMessage", "invalid"))
	require.NoError(t, rdb.Ping(ctx).Err())
}

// TestHandlerRedisDown: when the sweep cannot be queued the answer is 429
// (HighLevel retries only on 429), and the webhookId is not claimed, so
// the retry is accepted once Redis is back.
func TestHandlerRedisDown(t *testing.T) {
	srv, err := redistest.Start("--appendonly", "yes") // a restart keeps what was queued
	require.NoError(t, err)
	t.Cleanup(srv.Stop)
	rdb := srv.Client(t)
	e := newHandlerEnv(t, rdb, "InboundMessage")
	body := e.body("InboundMessage", "wh-down", e.now, "contactReplied000001")
	other := e.body("InboundMessage", "wh-never-429", e.now, "contactReplied000002")
	srv.Kill()
	code, r := e.post(body, true)
	require.Equal(t, http.StatusTooManyRequests, code)
	require.Equal(t, "unavailable", r.Result)
	require.NoError(t, srv.Restart())
	require.Eventually(t, func() bool { return rdb.Ping(context.Background()).Err() == nil }, 10*time.Second, 50*time.Millisecond)
	// HighLevel retries about 10 minutes later, with the same body (and so
	// the same timestamp, now outside the 5-minute window): accepted.
	e.now = e.now.Add(10*time.Minute + time.Second)
	code, r = e.post(body, true)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "accepted", r.Result)
	require.Len(t, sweepTasks(t, rdb), 1)
	// Its next copy is a replay; so is an equally old body never answered 429.
	_, r = e.post(body, true)
	require.Equal(t, "replay", r.Result)
	_, r = e.post(other, true)
	require.Equal(t, "replay", r.Result)
	require.Contains(t, r.Reason, "older than the 5m0s window")
	// Past HighLevel's retry horizon a 429'd body is stale too.
	body2 := e.body("InboundMessage", "wh-down-2", e.now, "contactReplied000003")
	srv.Kill()
	code, _ = e.post(body2, true)
	require.Equal(t, http.StatusTooManyRequests, code)
	require.NoError(t, srv.Restart())
	require.Eventually(t, func() bool { return rdb.Ping(context.Background()).Err() == nil }, 10*time.Second, 50*time.Millisecond)
	e.now = e.now.Add(webhook.RetryHorizon + time.Second)
	_, r = e.post(body2, true)
	require.Equal(t, "replay", r.Result)
	require.Len(t, sweepTasks(t, rdb), 1)
}

// TestAppEvents: INSTALL and UNINSTALL need no rule; each is recorded in
// the agency's registry; an INSTALL queues one install task (none for a
// redelivery); an event older than the recorded one changes nothing; an
// agency-level install (no location) is ignored.
func TestAppEvents(t *testing.T) {
	t.Parallel()
	rdb := redistest.ClientFor(t, redisServer.URL(t))
	e := newHandlerEnv(t, rdb, "") // no AUTO_CANCEL_EVENTS
	ctx := context.Background()
	const loc = "locWebhook0000000001"
	installTasks := func() int {
		ids, err := rdb.LRange(ctx, "asynq:{default}:pending", 0, -1).Result()
		require.NoError(t, err)
		n := 0
		for _, id := range ids {
			if strings.HasPrefix(id, "install:") {
				n++
			}
		}
		return n
	}
	entry := func() tokens.RegistryEntry {
		en, ok, err := tokens.RegistryEntryFor(ctx, rdb, loc)
		require.NoError(t, err)
		require.True(t, ok)
		return en
	}
	app := func(typ, id string, ts time.Time, location string) []byte {
		b, _ := json.Marshal(map[string]any{"type": typ, "locationId": location, "companyId": "companyWebhook000001",
			"appId": "appWebhook0000000001", "webhookId": id, "timestamp": ts.UTC().Format(time.RFC3339Nano)})
		return b
	}

	code, r := e.post(app("INSTALL", "wh-i1", e.now.Add(-2*time.Minute), loc), true)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, webhook.ResultAccepted, r.Result)
	require.True(t, entry().Installed)
	require.Equal(t, 1, installTasks())
	_, r = e.post(app("INSTALL", "wh-i1", e.now.Add(-2*time.Minute), loc), true) // redelivered
	require.Equal(t, webhook.ResultAccepted, r.Result)
	require.Equal(t, 1, installTasks(), "a redelivery queues nothing new")

	_, r = e.post(app("UNINSTALL", "wh-u1", e.now.Add(-time.Minute), loc), true)
	require.Equal(t, webhook.ResultAccepted, r.Result)
	require.False(t, entry().Installed)
	// The INSTALL of before, delivered late under another id: ignored.
	_, r = e.post(app("INSTALL", "wh-i0", e.now.Add(-90*time.Second), loc), true)
	require.Equal(t, webhook.ResultReplay, r.Result)
	require.False(t, entry().Installed)
	require.Equal(t, 1, installTasks())

	// Reinstalled, and HighLevel delivers the INSTALL after the replay
	// window (its deliveries come late and out of order): recorded, not
	// dropped. An event older than the one recorded is still ignored.
	reinstalledAt := e.now.Add(-30 * time.Second)
	e.now = e.now.Add(6 * time.Minute)
	code, r = e.post(app("INSTALL", "wh-i2", reinstalledAt, loc), true)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, webhook.ResultAccepted, r.Result, r.Reason)
	require.True(t, entry().Installed)
	require.Equal(t, 2, installTasks(), "the reinstall mints a token")
	_, r = e.post(app("UNINSTALL", "wh-u1", e.now.Add(-7*time.Minute), loc), true)
	require.Equal(t, webhook.ResultReplay, r.Result, "the old uninstall, late again")
	require.Contains(t, r.Reason, "a later install or uninstall", "ordered by the registry, not by the window")
	require.True(t, entry().Installed)
	// Beyond HighLevel's retries an app event is a replay: a location with
	// no registry entry has nothing to order it against.
	const other = "locWebhookOther00001"
	_, r = e.post(app("UNINSTALL", "wh-u-old", e.now.Add(-2*time.Hour), other), true)
	require.Equal(t, webhook.ResultReplay, r.Result)
	require.Contains(t, r.Reason, "older than the")
	_, ok, err := tokens.RegistryEntryFor(ctx, rdb, other)
	require.NoError(t, err)
	require.False(t, ok, "nothing recorded")
	_, r = e.post(app("INSTALL", "wh-future", e.now.Add(10*time.Minute), loc), true)
	require.Equal(t, webhook.ResultReplay, r.Result, "a timestamp far ahead is still refused")

	code, r = e.post(app("INSTALL", "wh-agency", e.now, ""), true)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, webhook.ResultIgnored, r.Result)
	code, r = e.post(app("UNINSTALL", "wh-bad", e.now, "bad/location"), true)
	require.Equal(t, http.StatusBadRequest, code)
	require.Equal(t, webhook.ResultInvalid, r.Result)
	code, _ = e.post(app("INSTALL", "wh-unsigned", e.now, loc), false)
	require.Equal(t, http.StatusUnauthorized, code)
	require.Equal(t, 3.0, e.count("INSTALL", webhook.ResultAccepted))
}
