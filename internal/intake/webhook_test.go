package intake_test

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/client"
	"github.com/ghlcancel/ghlcancel/internal/intake"
	"github.com/ghlcancel/ghlcancel/internal/sandbox"
	"github.com/ghlcancel/ghlcancel/internal/webhook"
)

// TestWebhookRoute: the webhook route needs no API key (an API key does
// not replace a signature), and every answer matches openapi.yaml (the
// env's validator checks each exchange).
func TestWebhookRoute(t *testing.T) {
	sb := sandbox.New(sandbox.Config{})
	v, err := sb.Verifier()
	require.NoError(t, err)
	rules, err := webhook.LoadRules("InboundMessage", "", "")
	require.NoError(t, err)
	e := newEnv(t, intake.Config{Webhook: &webhook.Config{Verifier: v, Rules: rules}})

	send := func(body []byte, o sandbox.EmitOptions, extra map[string]string) (int, webhook.Response) {
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
