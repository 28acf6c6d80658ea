// Command intake serves the HTTP intake API (see internal/intake and its
// openapi.yaml): other services enqueue cancels and read campaign status
// and dead letters through it. Configuration: flags, each defaulting to an
// environment variable (see -h and the README).
package main

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/ghlcancel/ghlcancel/internal/campaign"
	"github.com/ghlcancel/ghlcancel/internal/envconf"
	"github.com/ghlcancel/ghlcancel/internal/fleet"
	"github.com/ghlcancel/ghlcancel/internal/intake"
	"github.com/ghlcancel/ghlcancel/internal/logging"
	"github.com/ghlcancel/ghlcancel/internal/producer"
	"github.com/ghlcancel/ghlcancel/internal/redisconn"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
	"github.com/ghlcancel/ghlcancel/internal/webhook"
	"github.com/ghlcancel/ghlcancel/internal/webhook/signature"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return // -h: the usage was printed
		}
		fmt.Fprintln(os.Stderr, "intake:", err)
		os.Exit(1)
	}
}

// Environment variables read by intake.
const (
	EnvRedisURL  = "REDIS_URL"
	EnvAddr      = "INTAKE_ADDR"
	EnvKeys      = "INTAKE_API_KEYS"
	EnvKeysFile  = "INTAKE_API_KEYS_FILE"
	EnvMaxBody   = "INTAKE_MAX_BODY_BYTES"
	EnvMaxItems  = "INTAKE_MAX_ITEMS"
	EnvMaxRetry  = "MAX_RETRY"
	EnvRetention = "CAMPAIGN_RETENTION"

	EnvWebhookKey    = "HIGHLEVEL_WEBHOOK_PUBLIC_KEY"
	EnvWebhookRSAKey = "HIGHLEVEL_WEBHOOK_RSA_PUBLIC_KEY"
	EnvWebhookLegacy = "HIGHLEVEL_WEBHOOK_LEGACY"
	EnvWebhookWindow = "WEBHOOK_REPLAY_WINDOW"
	EnvAutoEvents    = "AUTO_CANCEL_EVENTS"
	EnvAutoChannels  = "AUTO_CANCEL_CHANNELS"
	EnvAutoRulesFile = "AUTO_CANCEL_RULES_FILE"

	EnvConsole             = "CONSOLE"
	EnvConsoleKeys         = "CONSOLE_KEYS"
	EnvConsoleReadOnlyKeys = "CONSOLE_READONLY_KEYS"
)

// Defaults.
const (
	RedisURLDefault = "redis://127.0.0.1:6379/0"
	AddrDefault     = ":8080"
)

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("intake", flag.ContinueOnError)
	fs.SetOutput(stderr)
	ep := envconf.New(getenv)
	redisURL := fs.String("redis-url", ep.String(EnvRedisURL, RedisURLDefault), "Redis URL, redis://[:password@]host:port/db (env "+EnvRedisURL+")")
	addr := fs.String("addr", ep.String(EnvAddr, AddrDefault), "listen address (env "+EnvAddr+")")
	keysFile := fs.String("api-keys-file", getenv(EnvKeysFile), "file of API keys, one per line (env "+EnvKeysFile+"); or set "+EnvKeys+" (comma-separated)")
	maxBody := fs.Int("max-body-bytes", ep.Int(EnvMaxBody, intake.MaxBodyDefault), "largest request body (env "+EnvMaxBody+")")
	maxItems := fs.Int("max-items", ep.Int(EnvMaxItems, intake.MaxItemsDefault), "most items per request (env "+EnvMaxItems+")")
	maxRetry := fs.Int("max-retry", ep.Int(EnvMaxRetry, tasks.MaxRetryDefault), "retries per task before it is dead-lettered (env "+EnvMaxRetry+")")
	retention := fs.Duration("campaign-retention", ep.Duration(EnvRetention, campaign.RetentionDefault), "how long campaign counters and reports are kept (env "+EnvRetention+")")
	window := fs.Duration("webhook-replay-window", ep.Duration(EnvWebhookWindow, webhook.WindowDefault), "webhook events older than this are replays (env "+EnvWebhookWindow+")")
	legacy := fs.String("webhook-legacy", ep.String(EnvWebhookLegacy, "on"), "on: accept X-WH-Signature (RSA) when X-GHL-Signature is absent; off: refuse it (env "+EnvWebhookLegacy+")")
	autoEvents := fs.String("auto-cancel-events", getenv(EnvAutoEvents), "webhook events that cancel a contact's scheduled messages, e.g. InboundMessage:sms+email,ContactDndUpdate (env "+EnvAutoEvents+"; default none)")
	autoChannels := fs.String("auto-cancel-channels", getenv(EnvAutoChannels), "channels those events cancel: sms, email or all (env "+EnvAutoChannels+"; default all)")
	rulesFile := fs.String("auto-cancel-rules-file", getenv(EnvAutoRulesFile), "JSON rules per location (env "+EnvAutoRulesFile+")")
	consoleOn := fs.String("console", ep.String(EnvConsole, "on"), "on: serve the operators' console at /console; off (env "+EnvConsole+")")
	logFlags := logging.Flags(fs, getenv)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := redisconn.MisnamedEnv(getenv, *redisURL != RedisURLDefault); err != nil {
		return err
	}
	if err := ep.Err(); err != nil {
		return err
	}
	for _, c := range []struct {
		name string
		ok   bool
	}{{EnvMaxBody, *maxBody > 0}, {EnvMaxItems, *maxItems > 0}, {EnvMaxRetry, *maxRetry >= 0}, {EnvRetention, *retention > 0}} {
		if !c.ok {
			return fmt.Errorf("%s (or its flag) must be positive", c.name)
		}
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *legacy != "on" && *legacy != "off" {
		return fmt.Errorf("%s=%q: want on or off", EnvWebhookLegacy, *legacy)
	}
	if *consoleOn != "on" && *consoleOn != "off" {
		return fmt.Errorf("%s=%q: want on or off", EnvConsole, *consoleOn)
	}
	if *window <= 0 {
		return fmt.Errorf("%s (or its flag) must be positive", EnvWebhookWindow)
	}
	wh, err := webhookConfig(getenv, *legacy == "on", *window, *autoEvents, *autoChannels, *rulesFile)
	if err != nil {
		return err
	}
	log, err := logFlags.Logger(stderr)
	if err != nil {
		return err
	}
	keys, err := loadKeys(getenv(EnvKeys), *keysFile)
	if err != nil {
		return err
	}
	var consoleKeys, readOnlyKeys []string
	for _, k := range []struct {
		env string
		to  *[]string
	}{{EnvConsoleKeys, &consoleKeys}, {EnvConsoleReadOnlyKeys, &readOnlyKeys}} {
		if *k.to, err = intake.ParseKeys(getenv(k.env)); err != nil {
			return fmt.Errorf("%s: %w", k.env, err)
		}
	}
	rdb, redisAddr, err := redisconn.Open(*redisURL, 64)
	if err != nil {
		return fmt.Errorf("%s: %w", EnvRedisURL, err)
	}
	defer rdb.Close()
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err = rdb.Ping(pctx).Err()
	cancel()
	if hint, bad := redisconn.Explain(ctx, *redisURL, err); bad {
		return fmt.Errorf("%s: Redis at %s refused the intake: %s (%w)", EnvRedisURL, redisAddr, hint, err)
	}
	if err != nil {
		// Not fatal: enqueues answer 503 and /readyz says not ready until it is back.
		log.Warn("redis is not reachable yet; requests answer 503 until it is", "addr", redisAddr, "error", err)
	}

	srv, err := intake.New(intake.Config{
		Redis: rdb, Keys: keys, MaxBodyBytes: int64(*maxBody), MaxItems: *maxItems, Logger: log,
		Producer:  producer.Config{MaxRetry: producer.Retries(*maxRetry), CampaignRetention: *retention},
		Webhook:   wh,
		NoConsole: *consoleOn == "off", ConsoleKeys: consoleKeys, ConsoleReadOnlyKeys: readOnlyKeys,
		Fleet: fleet.Settings{
			// The rules as this intake acts on them, and a digest of the
			// per-location ones (the summary counts them only).
			"AUTO_CANCEL":              describeRules(wh.Rules) + " (digest " + rulesDigest(wh.Rules) + ")",
			"WEBHOOK_REPLAY_WINDOW":    fleet.Duration(*window),
			"HIGHLEVEL_WEBHOOK_LEGACY": *legacy,
			"CAMPAIGN_RETENTION":       fleet.Duration(*retention),
		},
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w (is the port in use? set %s)", *addr, err, EnvAddr)
	}
	hs := &http.Server{
		Handler:           srv,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       120 * time.Second,
	}
	fmt.Fprintf(stdout, "intake: serving on http://%s (%d API keys); webhooks at /v1/webhooks/highlevel (%s; signatures checked with %s)\n",
		ln.Addr(), len(keys), describeRules(wh.Rules), webhookKeys(getenv, *legacy == "on"))
	if *consoleOn == "on" {
		fmt.Fprintf(stdout, "intake: console at http://%s/console/ (sign in with an API key; %d console keys, %d read-only)\n", ln.Addr(), len(consoleKeys), len(readOnlyKeys))
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	watched := make(chan struct{})
	wctx, stopWatch := context.WithCancel(ctx)
	go func() { defer close(watched); srv.Watch(wctx) }()
	defer func() { stopWatch(); <-watched }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return hs.Shutdown(sctx)
}

func loadKeys(inline, file string) ([]string, error) {
	if (inline == "") == (file == "") {
		return nil, fmt.Errorf("set exactly one of %s (comma-separated API keys) or %s (a file with one key per line)", EnvKeys, EnvKeysFile)
	}
	src := inline
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", EnvKeysFile, err)
		}
		src = string(b)
	}
	keys, err := intake.ParseKeys(src)
	if err != nil {
		return nil, err
	}
	if len(keys) == 0 {
		return nil, errors.New("no API keys found (blank or commented out)")
	}
	return keys, nil
}

// looksLikePath: a key variable names a file when it starts with / or .,
// ends like a key file, or is an existing file (a relative path such as
// rsa.pem was read as base64 and refused). Base64 has no '.' and no file
// is named like a whole key.
func looksLikePath(v string) bool {
	if strings.HasPrefix(v, "/") || strings.HasPrefix(v, ".") || strings.ContainsRune(v, '.') {
		return true
	}
	st, err := os.Stat(v)
	return err == nil && st.Mode().IsRegular()
}

func isBase64(v string) bool {
	_, err := base64.StdEncoding.DecodeString(v)
	return err == nil
}

// webhookKeys says where the webhook keys come from, for the start line: a
// misspelt variable name leaves HighLevel's published key in use.
func webhookKeys(getenv func(string) string, legacy bool) string {
	ed := "HighLevel's published Ed25519 key (built in)"
	if strings.TrimSpace(getenv(EnvWebhookKey)) != "" {
		ed = "Ed25519 key from " + EnvWebhookKey
	}
	if !legacy {
		return ed
	}
	rsa := "HighLevel's published RSA key (built in)"
	if strings.TrimSpace(getenv(EnvWebhookRSAKey)) != "" {
		rsa = "RSA key from " + EnvWebhookRSAKey
	}
	return ed + ", " + rsa
}

// webhookConfig reads the webhook keys and rules. A key variable holds the
// key (PEM or base64 SPKI) or the path of a file holding it.
func webhookConfig(getenv func(string) string, legacy bool, window time.Duration, events, channels, rulesFile string) (*webhook.Config, error) {
	var keys [2]string
	for i, env := range []string{EnvWebhookKey, EnvWebhookRSAKey} {
		v := strings.TrimSpace(getenv(env))
		// A relative path with a '/' (secrets/ghl_key) is no base64 key
		// either: read it as the file it names, so a missing one says so.
		if v != "" && !strings.Contains(v, "-----BEGIN") && (looksLikePath(v) || (strings.Contains(v, "/") && !isBase64(v))) {
			b, err := os.ReadFile(v)
			if err != nil {
				return nil, fmt.Errorf("%s: not a key (PEM or base64), so read as a file: %w", env, err)
			}
			v = string(b)
		}
		// A PEM pasted into an environment file with its line breaks
		// written as \n.
		if strings.Contains(v, "-----BEGIN") && strings.Contains(v, `\n`) {
			v = strings.ReplaceAll(v, `\n`, "\n")
		}
		keys[i] = v
	}
	v, err := signature.NewVerifier(keys[0], keys[1], legacy)
	if err != nil {
		return nil, fmt.Errorf("%s / %s: %w", EnvWebhookKey, EnvWebhookRSAKey, err)
	}
	rules, err := webhook.LoadRules(events, channels, rulesFile)
	if err != nil {
		return nil, err
	}
	return &webhook.Config{Verifier: v, Rules: rules, Window: window}, nil
}

// rulesDigest is a short digest of the rules (per-location ones
// included), the same whatever order message types were written in.
func rulesDigest(r *webhook.Rules) string {
	sorted := func(rule webhook.Rule) webhook.Rule {
		ev := make(map[string][]string, len(rule.Events))
		for e, types := range rule.Events {
			ev[e] = slices.Sorted(slices.Values(types))
		}
		rule.Events = ev
		return rule
	}
	c := webhook.Rules{Default: sorted(r.Default), Locations: make(map[string]webhook.Rule, len(r.Locations))}
	for l, rule := range r.Locations {
		c.Locations[l] = sorted(rule)
	}
	b, _ := json.Marshal(c)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:4])
}

// describeRules says in a few words what the webhook rules do.
func describeRules(r *webhook.Rules) string {
	if !r.Enabled() {
		return "no " + EnvAutoEvents + ": events are verified and counted, nothing is cancelled"
	}
	ev := make([]string, 0, len(r.Default.Events))
	for e, types := range r.Default.Events {
		if len(types) > 0 { // limited to some message types: say which
			e += ":" + strings.Join(slices.Sorted(slices.Values(types)), "+")
		}
		ev = append(ev, e)
	}
	slices.Sort(ev)
	return fmt.Sprintf("cancelling %s on %s, %d location rules", strings.Join(ev, ","), r.Default.Channel, len(r.Locations))
}
