package reliability

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/deadletter"
	"github.com/ghlcancel/ghlcancel/internal/promtest"
	"github.com/ghlcancel/ghlcancel/internal/redistest"
	"github.com/ghlcancel/ghlcancel/internal/sandbox"
	"github.com/ghlcancel/ghlcancel/internal/syncbuf"
	"github.com/ghlcancel/ghlcancel/internal/webhook"
)

// intakeProc is the real intake binary.
type intakeProc struct {
	cmd  *exec.Cmd
	addr string
	logs *syncbuf.Buffer
}

func startIntake(t *testing.T, redisURL string, sb *sandbox.Server, extraEnv ...string) *intakeProc {
	t.Helper()
	sg, err := sb.Signer()
	require.NoError(t, err)
	ed, rs := sg.PublicKeys()
	p := &intakeProc{addr: freeAddr(t), logs: &syncbuf.Buffer{}}
	p.cmd = exec.Command(intakeBin)
	p.cmd.Env = append([]string{
		"PATH=" + os.Getenv("PATH"), "REDIS_URL=" + redisURL, "INTAKE_ADDR=" + p.addr,
		"INTAKE_API_KEYS=reliability-key-0123456789", "LOG_FORMAT=json",
		"HIGHLEVEL_WEBHOOK_PUBLIC_KEY=" + ed, "HIGHLEVEL_WEBHOOK_RSA_PUBLIC_KEY=" + rs,
	}, extraEnv...)
	startAndWait(t, p.cmd, p.logs, p.addr)
	return p
}

func (p *intakeProc) url() string { return "http://" + p.addr + "/v1/webhooks/highlevel" }

// emit sends a signed event and returns the status and the intake's answer.
func emit(t *testing.T, sb *sandbox.Server, url string, body []byte, o sandbox.EmitOptions) (int, webhook.Response) {
	t.Helper()
	code, b, err := sb.Emit(context.Background(), url, body, o)
	require.NoError(t, err)
	var r webhook.Response
	require.NoError(t, json.Unmarshal(b, &r), "answer %d: %s", code, b)
	return code, r
}

// TestWebhookCancelsAContactsMessages: intake and worker binaries, a real
// Redis, the sandbox signing as HighLevel does. A signed InboundMessage
// from contact C cancels exactly C's scheduled SMS and emails in that
// location (not C's in another location, not another contact's, never a
// sent one), and the latency from the event to the last cancel is
// reported. A replayed copy does nothing, a tampered one is refused, an
// event not in AUTO_CANCEL_EVENTS does nothing, a DND change for SMS
// cancels only SMS, a legacy-signed reply works. An event for a location
// without a token is dead-lettered no_token with the event kept; after the
// token is added, `enqueue dead requeue` replays it and the campaign
// completes with the failure taken back.
func TestWebhookCancelsAContactsMessages(t *testing.T) {
	t.Parallel()
	srv, err := redistest.Start()
	require.NoError(t, err)
	t.Cleanup(srv.Stop)
	redisURL := "redis://" + srv.Addr + "/0"
	c := newCampaign(t, 2, 0, sandbox.Faults{Latency: 5 * time.Millisecond})
	locA, locB, locC := "relLocation000000000", "relLocation000000001", "relLocationNoToken00"
	added := c.sb.AddMessages(locA, sandbox.MixedSpecs(240, 160, 48, 32, 8)...)
	other := c.sb.AddMessages(locB, sandbox.MixedSpecs(16, 16, 0, 0, 8)...) // contact03 here too
	tokC := "SECRET-pit-C-" + sandbox.NewID()
	c.sb.AddLocation(locC, tokC)
	inC := c.sb.AddMessages(locC, sandbox.MixedSpecs(8, 8, 4, 4, 2)...)
	w := startWorker(t, redisURL, c)
	in := startIntake(t, redisURL, c.sb, "AUTO_CANCEL_EVENTS=InboundMessage,ContactDndUpdate")

	scheduledOf := func(set []sandbox.Added, contact string, email *bool) []sandbox.Added {
		var out []sandbox.Added
		for _, a := range set {
			if a.Contact == contact && a.Scheduled && (email == nil || a.Email == *email) {
				out = append(out, a)
			}
		}
		return out
	}
	allCancelled := func(set []sandbox.Added) bool {
		for _, a := range set {
			if st, _, _ := c.sb.MessageStatus(a.CancelID); st != sandbox.StatusCancelled {
				return false
			}
		}
		return true
	}

	// 1. contact03 replies by SMS.
	reply := c.sb.EventBody(sandbox.EventSpec{Type: "InboundMessage", Location: locA, Contact: "contact03"})
	start := time.Now()
	code, r := emit(t, c.sb, in.url(), reply, sandbox.EmitOptions{})
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, webhook.ResultAccepted, r.Result)
	want := scheduledOf(added, "contact03", nil)
	require.Len(t, want, 24)
	require.Eventually(t, func() bool { return allCancelled(want) }, time.Minute, 10*time.Millisecond)
	latency := time.Since(start)
	campaign := r.CampaignID
	require.Eventually(t, func() bool { return statusOf(t, redisURL, campaign).Complete }, 30*time.Second, 50*time.Millisecond)
	s := statusOf(t, redisURL, campaign)
	require.Equal(t, int64(24), s.Total)
	require.Equal(t, int64(24), s.Cancelled)
	require.Equal(t, int64(1), s.Sweeps)
	// What the event cancelled, and why: the status lists the sweep with
	// its event.
	var sent struct {
		WebhookID string `json:"webhookId"`
	}
	require.NoError(t, json.Unmarshal(reply, &sent))
	require.Len(t, s.SweepList, 1)
	sw := s.SweepList[0]
	require.Equal(t, []any{"InboundMessage", sent.WebhookID, "contact03", locA, "all", "done", int64(24), int64(20), int64(4), int64(24)},
		[]any{sw.Event, sw.EventID, sw.ContactID, sw.LocationID, sw.Channel, sw.State, sw.Found, sw.FoundSMS, sw.FoundEmail, sw.Enqueued})
	require.Contains(t, enqueueCLI(t, redisURL, "status", campaign),
		fmt.Sprintf("sweep %s (InboundMessage %s): contact contact03 in %s, all: 24 still scheduled (20 SMS, 4 email), 24 cancels queued, done", sw.SweepID, sent.WebhookID, locA))
	t.Logf("a signed reply from contact03 cancelled its %d scheduled SMS and emails %.0f ms after the webhook was sent", len(want), latency.Seconds()*1000)

	// 2. The same delivery again, a tampered copy, an event not in
	// AUTO_CANCEL_EVENTS, an outbound message: nothing happens.
	code, r = emit(t, c.sb, in.url(), reply, sandbox.EmitOptions{})
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, webhook.ResultReplay, r.Result)
	code, r = emit(t, c.sb, in.url(), c.sb.EventBody(sandbox.EventSpec{Type: "InboundMessage", Location: locA, Contact: "contact04"}), sandbox.EmitOptions{Tamper: true})
	require.Equal(t, http.StatusUnauthorized, code)
	require.Equal(t, "bad_signature", r.Result)
	code, r = emit(t, c.sb, in.url(), c.sb.EventBody(sandbox.EventSpec{Type: "InboundMessage", Location: locA, Contact: "contact04"}), sandbox.EmitOptions{Scheme: sandbox.SchemeBoth, BadEd25519: true})
	require.Equal(t, http.StatusUnauthorized, code, "a bad Ed25519 signature is not rescued by a good RSA one")
	code, r = emit(t, c.sb, in.url(), c.sb.EventBody(sandbox.EventSpec{Type: "AppointmentCreate", Location: locA, Contact: "contact05"}), sandbox.EmitOptions{})
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, webhook.ResultNoRule, r.Result)
	_, r = emit(t, c.sb, in.url(), c.sb.EventBody(sandbox.EventSpec{Type: "OutboundMessage", Location: locA, Contact: "contact05"}), sandbox.EmitOptions{})
	require.Equal(t, webhook.ResultNoRule, r.Result)

	// 3. contact01 turns DND on for SMS only: its SMS go, its emails stay.
	_, r = emit(t, c.sb, in.url(), c.sb.EventBody(sandbox.EventSpec{Type: "ContactDndUpdate", Location: locA, Contact: "contact01", DND: []string{"SMS"}}), sandbox.EmitOptions{})
	require.Equal(t, webhook.ResultAccepted, r.Result)
	sms, email := false, true
	require.Eventually(t, func() bool { return allCancelled(scheduledOf(added, "contact01", &sms)) }, time.Minute, 10*time.Millisecond)

	// 4. contact02 replies, signed with the legacy RSA scheme only.
	_, r = emit(t, c.sb, in.url(), c.sb.EventBody(sandbox.EventSpec{Type: "InboundMessage", Location: locA, Contact: "contact02", MessageType: "Email"}), sandbox.EmitOptions{Scheme: sandbox.SchemeRSA})
	require.Equal(t, webhook.ResultAccepted, r.Result)
	require.Eventually(t, func() bool { return allCancelled(scheduledOf(added, "contact02", nil)) }, time.Minute, 10*time.Millisecond)

	// 5. A reply in location C, which has no token yet.
	_, r = emit(t, c.sb, in.url(), c.sb.EventBody(sandbox.EventSpec{Type: "InboundMessage", Location: locC, Contact: "contact00"}), sandbox.EmitOptions{})
	require.Equal(t, webhook.ResultAccepted, r.Result)
	var rec deadletter.Record
	require.Eventually(t, func() bool {
		recs, _, err := deadletter.New(redistest.ClientFor(t, redisURL)).Page(context.Background(), deadletter.Filter{Reason: "no_token"}, "", 10)
		require.NoError(t, err)
		if len(recs) == 1 {
			rec = recs[0]
		}
		return len(recs) == 1
	}, 30*time.Second, 20*time.Millisecond)
	require.Equal(t, "sweep", rec.Kind)
	require.Contains(t, rec.Payload, `"event":"InboundMessage"`)
	require.Equal(t, int64(1), statusOf(t, redisURL, campaign).SweepsFailed)

	// Everything so far: nothing else was touched.
	require.True(t, allCancelled(scheduledOf(added, "contact03", nil)))
	require.False(t, allCancelled(scheduledOf(added, "contact01", &email)), "contact01's emails are not in an SMS DND")
	for _, a := range added {
		st, cancels, _ := c.sb.MessageStatus(a.CancelID)
		switch {
		case !a.Scheduled:
			require.Zero(t, cancels, "a sent message is never cancelled")
		case a.Contact == "contact03" || a.Contact == "contact02" || (a.Contact == "contact01" && !a.Email):
			require.Equal(t, sandbox.StatusCancelled, st)
		default:
			require.Equal(t, sandbox.StatusScheduled, st, "message %s of %s", a.CancelID, a.Contact)
		}
	}
	for _, a := range append(other, inC...) {
		st, _, _ := c.sb.MessageStatus(a.CancelID)
		require.Equal(t, sandbox.StatusScheduled, st, "location %s is not touched", a.Contact)
	}

	// The token of C is added; the dead-lettered event is replayed.
	c.tokens[locC] = tokC
	b, err := json.Marshal(c.tokens)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(c.tokenFile+".tmp", b, 0o600))
	require.NoError(t, os.Rename(c.tokenFile+".tmp", c.tokenFile))
	// The worker reloads the file within 2 s; a requeue before that fails
	// again with no_token (and is dead-lettered again, the event kept), so
	// requeue until the messages are cancelled, as a user would.
	wantC := scheduledOf(inC, "contact00", nil)
	requeues := 0
	require.Eventually(t, func() bool {
		if allCancelled(wantC) {
			return true
		}
		var st struct {
			Requeued int `json:"requeued"`
		}
		out := enqueueCLI(t, redisURL, "dead", "requeue", "--reason", "no_token", "--json")
		require.NoError(t, json.Unmarshal([]byte(out), &st), out)
		requeues += st.Requeued
		return false
	}, time.Minute, 500*time.Millisecond)
	require.Positive(t, requeues)
	require.Eventually(t, func() bool { return statusOf(t, redisURL, campaign).Complete }, 30*time.Second, 50*time.Millisecond)
	s = statusOf(t, redisURL, campaign)
	require.Zero(t, s.SweepsFailed, "the replayed sweep's failure is taken back")
	states := map[string]int{}
	for _, sw := range s.SweepList {
		states[sw.State]++
		if sw.State == "failed" {
			require.Equal(t, "no_token", sw.Error)
			require.Equal(t, locC, sw.LocationID)
		}
	}
	require.Equal(t, 3, states["done"], "contact03, contact02 and the replayed one: %v", states)
	require.Zero(t, states["failed"], "each failed attempt's entry is replaced by its requeue (%d requeues): %v", requeues, states)
	require.Equal(t, int64(3), s.Sweeps, "contact03, contact02 and the replayed one (the DND sweep has its own campaign)")
	require.Equal(t, int64(24+len(scheduledOf(added, "contact02", nil))+len(wantC)), s.Total)
	// A second requeue finds nothing.
	out := enqueueCLI(t, redisURL, "dead", "requeue", "--reason", "no_token", "--json")
	require.Contains(t, out, `"requeued":0`)

	// Metrics on both sides.
	is, err := promtest.Get("http://" + in.addr + "/metrics")
	require.NoError(t, err)
	for _, c := range []struct {
		event, result string
		want          float64
	}{
		{"InboundMessage", "accepted", 3}, {"InboundMessage", "replay", 1}, {"ContactDndUpdate", "accepted", 1},
		{"AppointmentCreate", "no_rule", 1}, {"OutboundMessage", "no_rule", 1}, {"unknown", "bad_signature", 2},
	} {
		require.Equal(t, c.want, is.Sum("ghlcancel_webhooks_total", "event", c.event, "result", c.result), "%s %s", c.event, c.result)
	}
	require.Equal(t, 3.0, is.Sum("ghlcancel_webhook_sweeps_total", "event", "InboundMessage"))
	ws, err := promtest.Get("http://" + w.metricsAddr + "/metrics")
	require.NoError(t, err)
	n := ws.Sum("ghlcancel_webhook_event_to_cancel_seconds", "event", "InboundMessage")
	require.Equal(t, float64(24+len(scheduledOf(added, "contact02", nil))), n,
		"one observation per event-driven cancel's first call; the replayed sweep's cancels carry no event time")
	t.Logf("event-driven cancels: %d first calls observed by the worker; the no_token event replayed after %d requeue(s)", int(n), requeues)
}
