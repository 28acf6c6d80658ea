package main

import (
	"bytes"
	"context"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/client"
	"github.com/ghlcancel/ghlcancel/internal/redistest"
	"github.com/ghlcancel/ghlcancel/internal/syncbuf"
	"github.com/ghlcancel/ghlcancel/internal/webhook"
	"github.com/ghlcancel/ghlcancel/internal/webhook/signature"
)

var redisServer *redistest.Server

func TestMain(m *testing.M) { redistest.Main(m, &redisServer) }

// TestRunServesUntilCancelled runs the command with its environment, enqueues
// through the Go client and stops it as SIGTERM would.
func TestRunServesUntilCancelled(t *testing.T) {
	const key = "cmd-intake-key-0123456789"
	env := map[string]string{EnvRedisURL: redisServer.URL(t), EnvAddr: "127.0.0.1:0", EnvKeys: key, EnvMaxItems: "50"}
	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr syncbuf.Buffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, func(k string) string { return env[k] }, &stdout, &stderr) }()
	var url string
	require.Eventually(t, func() bool {
		m := regexp.MustCompile(`serving on (http://\S+)`).FindStringSubmatch(stdout.String())
		if m != nil {
			url = m[1]
		}
		return m != nil
	}, 5*time.Second, 10*time.Millisecond)
	c, err := client.New(url, key)
	require.NoError(t, err)
	r, err := c.Cancel(ctx, client.Cancel{MessageID: "m1", LocationID: "l1"})
	require.NoError(t, err)
	require.Equal(t, client.StatusEnqueued, r.Status)
	_, err = c.CancelMany(ctx, make([]client.Cancel, 51), "", false)
	var ae *client.APIError
	require.ErrorAs(t, err, &ae)
	require.Equal(t, http.StatusRequestEntityTooLarge, ae.StatusCode, "INTAKE_MAX_ITEMS applies")
	cancel()
	require.NoError(t, <-done)
	require.NotContains(t, stdout.String()+stderr.String(), key)
}

func TestConfigErrors(t *testing.T) {
	for name, c := range map[string]struct {
		env  map[string]string
		want string
	}{
		"no keys":     {map[string]string{}, EnvKeys},
		"short key":   {map[string]string{EnvKeys: "abc"}, "at least 16"},
		"both":        {map[string]string{EnvKeys: strings.Repeat("k", 20), EnvKeysFile: "/x"}, "exactly one"},
		"bad number":  {map[string]string{EnvKeys: strings.Repeat("k", 20), EnvMaxItems: "many"}, EnvMaxItems},
		"no file":     {map[string]string{EnvKeysFile: "/nonexistent/keys"}, "no such file"},
		"bad event":   {map[string]string{EnvKeys: strings.Repeat("k", 20), EnvAutoEvents: "InboundMessage,Reply"}, `AUTO_CANCEL_EVENTS: event "Reply": want one of InboundMessage`},
		"bad channel": {map[string]string{EnvKeys: strings.Repeat("k", 20), EnvAutoChannels: "fax"}, "AUTO_CANCEL_CHANNELS"},
		"typo type":   {map[string]string{EnvKeys: strings.Repeat("k", 20), EnvAutoEvents: "InboundMessage:sms+emial"}, `unknown message type "emial"`},
		"bad legacy":  {map[string]string{EnvKeys: strings.Repeat("k", 20), EnvWebhookLegacy: "maybe"}, `HIGHLEVEL_WEBHOOK_LEGACY="maybe": want on or off`},
		"bad key":     {map[string]string{EnvKeys: strings.Repeat("k", 20), EnvWebhookKey: "bm90IGEga2V5"}, "HIGHLEVEL_WEBHOOK_PUBLIC_KEY"},
		"key file":    {map[string]string{EnvKeys: strings.Repeat("k", 20), EnvWebhookRSAKey: "/nonexistent/rsa.pem"}, "HIGHLEVEL_WEBHOOK_RSA_PUBLIC_KEY: not a key (PEM or base64), so read as a file: open /nonexistent/rsa.pem"},
		// A relative path is a path (it was read as base64: "neither PEM nor base64").
		"relative key file": {map[string]string{EnvKeys: strings.Repeat("k", 20), EnvWebhookRSAKey: "keys/rsa.pem"}, "HIGHLEVEL_WEBHOOK_RSA_PUBLIC_KEY: not a key (PEM or base64), so read as a file: open keys/rsa.pem"},
		// No dot, and a '/' where base64 may have one: still a path.
		"relative key file, no dot": {map[string]string{EnvKeys: strings.Repeat("k", 20), EnvWebhookKey: "secrets/ghl_key"},
			"HIGHLEVEL_WEBHOOK_PUBLIC_KEY: not a key (PEM or base64), so read as a file: open secrets/ghl_key"},
		"types split by a comma": {map[string]string{EnvKeys: strings.Repeat("k", 20), EnvAutoEvents: "InboundMessage:sms,email"},
			`"email" is a message type: join an event's message types with +, as InboundMessage:sms+email`},
		"bad window": {map[string]string{EnvKeys: strings.Repeat("k", 20), EnvWebhookWindow: "5"}, EnvWebhookWindow},
		"no rules":   {map[string]string{EnvKeys: strings.Repeat("k", 20), EnvAutoRulesFile: "/nonexistent/rules.json"}, "AUTO_CANCEL_RULES_FILE"},
	} {
		err := run(context.Background(), nil, func(k string) string { return c.env[k] }, &bytes.Buffer{}, &bytes.Buffer{})
		require.ErrorContains(t, err, c.want, name)
	}
}

// TestStartupLineNamesMessageTypes: the startup line says when replies
// cancel only for some message types, so a rule that leaves email out
// shows at a glance.
func TestStartupLineNamesMessageTypes(t *testing.T) {
	rules, err := webhook.LoadRules("InboundMessage:sms,ContactDelete", "", "")
	require.NoError(t, err)
	require.Equal(t, "cancelling ContactDelete,InboundMessage:sms on all, 0 location rules", describeRules(rules))
}

// TestWebhookKeyMistakes: a PEM whose line breaks were written as \n (an
// environment file) is read as the key; the start line says which keys
// check signatures, so a misspelt variable name (the built-in key in use)
// shows.
func TestWebhookKeyMistakes(t *testing.T) {
	escaped := `-----BEGIN PUBLIC KEY-----\n` + signature.DefaultEd25519Key + `\n-----END PUBLIC KEY-----\n`
	env := map[string]string{EnvWebhookKey: escaped}
	_, err := webhookConfig(func(k string) string { return env[k] }, false, time.Minute, "", "", "")
	require.NoError(t, err, "a PEM with \\n for its line breaks")
	require.Equal(t, "Ed25519 key from HIGHLEVEL_WEBHOOK_PUBLIC_KEY", webhookKeys(func(k string) string { return env[k] }, false))
	require.Equal(t, "HighLevel's published Ed25519 key (built in), HighLevel's published RSA key (built in)",
		webhookKeys(func(string) string { return "" }, true))
}

// TestRulesCompareWhateverTheOrder: intakes compare their rules by a
// summary and a digest; the same rules written in another order must not
// read as a disagreement (review).
func TestRulesCompareWhateverTheOrder(t *testing.T) {
	a, err := webhook.LoadRules("InboundMessage:sms+email,ContactDndUpdate", "all", "")
	require.NoError(t, err)
	b, err := webhook.LoadRules("ContactDndUpdate,InboundMessage:email+sms", "all", "")
	require.NoError(t, err)
	require.Equal(t, describeRules(a), describeRules(b))
	require.Equal(t, rulesDigest(a), rulesDigest(b))
	c, err := webhook.LoadRules("InboundMessage:sms", "all", "")
	require.NoError(t, err)
	require.NotEqual(t, rulesDigest(a), rulesDigest(c))
}
