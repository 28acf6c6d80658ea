package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/deadletter"
	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/ledger"
	"github.com/ghlcancel/ghlcancel/internal/redistest"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
	"github.com/ghlcancel/ghlcancel/internal/tokens"
)

// cleanTree is the command tree with no environment set.
func cleanTree() *cobra.Command {
	return (&env{getenv: func(string) string { return "" }}).rootCmd()
}

// visible walks every command a user can see.
func visible(c *cobra.Command, f func(*cobra.Command)) {
	if c.Hidden || c.Name() == "help" {
		return
	}
	f(c)
	for _, sub := range c.Commands() {
		visible(sub, f)
	}
}

// TestEveryHelp: every command's --help succeeds (exit status 0), shows its
// usage and lists each of its flags; the root lists every command with its
// one-line summary.
func TestEveryHelp(t *testing.T) {
	t.Parallel()
	n := 0
	visible(cleanTree(), func(c *cobra.Command) {
		n++
		path := strings.Fields(c.CommandPath())[1:]
		var out, errw bytes.Buffer
		err := run(context.Background(), append(path, "--help"), func(string) string { return "" }, strings.NewReader(""), &out, &errw)
		require.NoError(t, err, "%s --help: %s", c.CommandPath(), errw.String())
		require.Contains(t, out.String(), "Usage:", c.CommandPath())
		c.LocalFlags().VisitAll(func(f *pflag.Flag) {
			if !f.Hidden {
				require.Contains(t, out.String(), "--"+f.Name, "%s --help lists --%s", c.CommandPath(), f.Name)
			}
		})
		if c.HasParent() && c.Parent() == c.Root() {
			var root bytes.Buffer
			require.NoError(t, run(context.Background(), []string{"--help"}, func(string) string { return "" }, strings.NewReader(""), &root, &errw))
			require.Contains(t, root.String(), c.Name()+" ", "enqueue --help lists %s", c.Name())
			require.Contains(t, root.String(), c.Short)
		}
	})
	require.GreaterOrEqual(t, n, 17, "every command was walked")
	for _, want := range []string{"status", "report", "campaigns", "parked", "tokens", "dead", "sweep", "completion"} {
		var out bytes.Buffer
		require.NoError(t, run(context.Background(), []string{"--help"}, func(string) string { return "" }, strings.NewReader(""), &out, &out))
		require.Contains(t, out.String(), "  "+want+" ")
	}
}

// TestUsageErrorsNameTheHelp: a command line that cannot run is a usage
// error (exit status 2) that says where to look.
func TestUsageErrorsNameTheHelp(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"dead", "list", "--bogus"},
		{"dead", "bogus"},
		{"status"},
		{"tokens", "agency", "frobnicate"},
		{"statu", "x"},
		{"stauts", "camp-a"}, // typos too, and never queued as ids (with --location they were)
		{"--location", "L", "staus", "camp-a"},
		{"campains"},
		{"reprot", "x"},
		{"deadd", "list"},
		{"campaigns", "extra"},
		{"--campaign", "..", "abc"}, // no URL path can carry it: refused before anything is sent
		{"sweep", "--location", "l", "--campaign", "."},
		{"sweep", "--location", "l", "--campaign", "spring", "--dry-run"}, // its counts would add to the real sweep's
	} {
		var out, errw bytes.Buffer
		err := run(context.Background(), args, func(string) string { return "" }, strings.NewReader(""), &out, &errw)
		var ue usageError
		require.ErrorAs(t, err, &ue, "%v", args)
		require.Contains(t, err.Error(), "--help`", "%v", args)
		if slices.Contains(args, "--dry-run") {
			require.Contains(t, err.Error(), "--campaign with --dry-run", "%v", args)
		} else if slices.Contains(args, "--campaign") {
			require.Contains(t, err.Error(), "--campaign: \"", "%v", args)
		}
	}
}

// TestCompletion: shell completion scripts are generated.
func TestCompletion(t *testing.T) {
	t.Parallel()
	for _, sh := range []string{"bash", "zsh", "fish", "powershell"} {
		var out, errw bytes.Buffer
		require.NoError(t, run(context.Background(), []string{"completion", sh}, func(string) string { return "" }, strings.NewReader(""), &out, &errw))
		require.Contains(t, out.String(), "enqueue", sh)
	}
}

// TestCLIDocsCurrent: docs/cli.md is what gen-docs writes now.
func TestCLIDocsCurrent(t *testing.T) {
	t.Parallel()
	var b bytes.Buffer
	require.NoError(t, writeDocs(&b, cleanTree()))
	have, err := os.ReadFile("../../docs/cli.md")
	require.NoError(t, err, "docs/cli.md is missing: go run ./cmd/enqueue gen-docs > docs/cli.md")
	require.Equal(t, b.String(), string(have), "docs/cli.md is stale: go run ./cmd/enqueue gen-docs > docs/cli.md")
}

// TestFlagMistakesAreUsageErrors: values that cannot be meant are refused
// before anything runs, not turned into a crash or a silent no-op: a kind
// that does not exist (0 matches, exit 0), a negative age (it matched
// every record: a one-minute-old dead letter was purged by --older-than
// -720h), --parallel -1 (a panic), a negative retention (the campaign's
// counters expired as they were written).
func TestFlagMistakesAreUsageErrors(t *testing.T) {
	t.Parallel()
	url := redisServer.URL(t)
	ctx := context.Background()
	store := deadletter.New(redistest.ClientFor(t, url))
	require.NoError(t, store.Add(ctx, deadletter.Record{TaskID: "msg:fresh", Kind: "message", MessageID: "fresh",
		LocationID: "L", Queue: "bulk", Reason: "unauthorized", DeadAt: time.Now().Add(-time.Minute)}))
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"dead", "requeue", "--kind", "sms"}, `kind "sms": want message, email or sweep`},
		{[]string{"dead", "purge", "--kind", "sms", "--yes"}, `kind "sms"`},
		{[]string{"dead", "list", "--kind", "sms"}, `kind "sms"`},
		{[]string{"dead", "export", "--kind", "sms"}, `kind "sms"`},
		{[]string{"dead", "purge", "--older-than", "-720h", "--yes"}, "ages must be positive"},
		{[]string{"dead", "requeue", "--newer-than", "-1h"}, "ages must be positive"},
		{[]string{"--location", "L", "--parallel", "-1", "m1"}, "--parallel -1"},
		{[]string{"--location", "L", "--parallel", "0", "m1"}, "--parallel 0"},
		{[]string{"--location", "L", "--campaign", "neg", "--campaign-retention", "-168h", "m1"}, "--campaign-retention -168h0m0s: want a positive duration"},
		{[]string{"sweep", "--location", "L", "--since", "1764950400000"}, "--since: 1764950400000 looks like milliseconds: want unix seconds"},
		{[]string{"sweep", "--location", "L", "--until", "1764950400000"}, "--until: 1764950400000 looks like milliseconds"},
	} {
		r := runCmd(t, url, "", tt.args...)
		var ue usageError
		require.ErrorAs(t, r.err, &ue, "%v", tt.args)
		require.ErrorContains(t, r.err, tt.want, "%v", tt.args)
	}
	n, err := store.Count(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 1, n, "nothing was purged")
	q, err := redistest.ClientFor(t, url).Exists(ctx, "ghlcancel:campaign:{neg}").Result()
	require.NoError(t, err)
	require.Zero(t, q, "nothing was enqueued")
}

// cancelAfter reads data, then cancels (a Ctrl-C once the file is read,
// while batches are still buffered or in flight) and ends.
type cancelAfter struct {
	data   *strings.Reader
	cancel context.CancelFunc
}

func (c *cancelAfter) Read(p []byte) (int, error) {
	if c.data.Len() > 0 {
		return c.data.Read(p)
	}
	c.cancel()
	return 0, io.EOF
}

// TestInterruptIsReportedAsInterrupted: Ctrl-C during `enqueue --file`
// says "interrupted" and how many were not enqueued; it used to say
// "queue unavailable: context canceled" (Redis was fine) with a summary
// of zeros that hid the lines left undone.
func TestInterruptIsReportedAsInterrupted(t *testing.T) {
	t.Parallel()
	url := redisServer.URL(t)
	var in strings.Builder
	// 1,250: the last 250 are a partial batch, sent only after the input
	// ends, when the run is already interrupted.
	for i := range 1250 {
		fmt.Fprintf(&in, "ctrlc%015d\n", i)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errw bytes.Buffer
	err := run(ctx, []string{"--location", "L", "--parallel", "1", "--file", "-"}, func(k string) string {
		if k == envRedisURL {
			return url
		}
		return ""
	}, &cancelAfter{data: strings.NewReader(in.String()), cancel: cancel}, &out, &errw)
	require.Error(t, err)
	require.Contains(t, err.Error(), "interrupted")
	require.NotContains(t, err.Error(), "queue unavailable")
	require.Contains(t, out.String(), "not enqueued")
}

// TestBadRetentionIsRefused: a CAMPAIGN_RETENTION the workers refuse
// (30d: Go durations have no days) was replaced here by 7 days without a
// word; it is a usage error, unless --campaign-retention overrides it, in
// every command that writes campaigns.
func TestBadRetentionIsRefused(t *testing.T) {
	t.Parallel()
	getenv := func(k string) string {
		if k == "CAMPAIGN_RETENTION" {
			return "30d"
		}
		return ""
	}
	for _, args := range [][]string{
		{"--location", "L", "--dry-run", "mRetention0000000001"},
		{"sweep", "--location", "L", "--dry-run"},
		{"dead", "requeue", "--all"},
	} {
		var out, errw bytes.Buffer
		err := run(context.Background(), args, getenv, strings.NewReader(""), &out, &errw)
		var ue usageError
		require.ErrorAs(t, err, &ue, args)
		require.ErrorContains(t, err, `CAMPAIGN_RETENTION="30d": want a duration with a unit`)
	}
	var out, errw bytes.Buffer
	err := run(context.Background(), []string{"--location", "L", "--dry-run", "--campaign-retention", "720h", "mRetention0000000001"}, getenv, strings.NewReader(""), &out, &errw)
	require.NoError(t, err)
}

// TestSweepAndRequeueKeepTheRetention: `enqueue sweep` and `dead requeue`
// wrote their campaigns (and a sweep its state, whose held set copies its
// expiry) for the default 7 days whatever CAMPAIGN_RETENTION said; they
// now take it as the send command does.
func TestSweepAndRequeueKeepTheRetention(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := redisServer.URL(t)
	rdb := redistest.ClientFor(t, url)
	getenv := func(k string) string {
		switch k {
		case envRedisURL:
			return url
		case "CAMPAIGN_RETENTION":
			return "2h"
		}
		return ""
	}
	near2h := func(key string) {
		t.Helper()
		ttl, err := rdb.PTTL(ctx, key).Result()
		require.NoError(t, err)
		require.InDelta(t, float64(2*time.Hour), float64(ttl), float64(time.Minute), key)
	}
	var out, errw bytes.Buffer
	require.NoError(t, run(ctx, []string{"sweep", "--location", "locRetention00000001", "--campaign", "sw-retention"}, getenv, strings.NewReader(""), &out, &errw), errw.String())
	near2h(ledger.CampaignKey("sw-retention"))
	states, err := rdb.Keys(ctx, "ghlcancel:sweep:{*}:locRetention00000001").Result()
	require.NoError(t, err)
	require.Len(t, states, 1)
	near2h(states[0])

	require.NoError(t, deadletter.New(rdb).Add(ctx, deadletter.Record{TaskID: "msg:mRetention0000000002", Kind: "message",
		MessageID: "mRetention0000000002", LocationID: "locRetention00000001", CampaignID: "rq-retention", Queue: "bulk",
		Reason: "unauthorized", HTTPStatus: 401, Attempts: 1, DeadAt: time.Now()}))
	require.NoError(t, run(ctx, []string{"dead", "requeue", "--campaign", "rq-retention"}, getenv, strings.NewReader(""), &out, &errw), errw.String())
	near2h(ledger.CampaignKey("rq-retention"))
}

// TestRunbookCommandsRun: every `enqueue ...` command an alert's runbook
// gives is a command of this CLI with flags it takes, and every --reason
// it names is a reason a dead letter can have. A runbook said `--reason
// unauthorized` for invalid_grant dead letters (requeueing others that
// would die again) and named `tokens agency list`, which does not exist.
func TestRunbookCommandsRun(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "prometheus", "alerts.yml"))
	require.NoError(t, err)
	reasons := map[string]bool{}
	for _, r := range []ghl.Reason{ghl.ReasonUnauthorized, ghl.ReasonNoToken, ghl.ReasonInvalidGrant, ghl.ReasonInactive,
		ghl.ReasonBadRequest, ghl.ReasonForbidden, ghl.ReasonServerError, ghl.ReasonInvalidToken, ghl.ReasonMisrouted} {
		reasons[string(r)] = true
	}
	for _, r := range []string{tokens.ReasonNotInstalled, tokens.ReasonAgencyRevoked, tokens.ReasonMintRefused, tokens.ReasonLocationInactive,
		tasks.ReasonTokenKey, tasks.ReasonWrongKind, tasks.ReasonStillScheduled, tasks.ReasonOtherKindUnread} {
		reasons[r] = true
	}
	cmds := regexp.MustCompile("`enqueue ([^`]+)`").FindAllStringSubmatch(string(b), -1)
	require.NotEmpty(t, cmds)
	for _, m := range cmds {
		args := strings.Fields(m[1])
		root := cleanTree()
		c, rest, err := root.Find(args)
		require.NoError(t, err, m[0])
		require.NotEqual(t, root, c, "%s names no command of the CLI", m[0])
		require.NoError(t, c.ParseFlags(rest), m[0])
		if c.HasSubCommands() {
			require.Empty(t, c.Flags().Args(), "%s: no subcommand of %q has that name", m[0], c.CommandPath())
		}
		if c.Args != nil {
			require.NoError(t, c.Args(c, c.Flags().Args()), "%s: %q is no subcommand or argument of %q", m[0], c.Flags().Args(), c.CommandPath())
		}
		if f := c.Flags().Lookup("reason"); f != nil && f.Changed {
			require.True(t, reasons[f.Value.String()], "%s: no dead letter has reason %q", m[0], f.Value.String())
		}
	}
}
