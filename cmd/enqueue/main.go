// Command enqueue puts cancel tasks on the queue and operates on what
// follows: campaigns, dead letters, sweeps, tokens. `enqueue --help` lists
// every command; docs/cli.md is the generated reference.
//
//	enqueue [flags] ID...                  cancel these messages
//	enqueue [flags] --file ids.csv         cancel every message in a file (- for stdin)
//	enqueue status CAMPAIGN [--watch]      how far a campaign is
//	enqueue dead list [filters]            show dead letters
//	enqueue dead requeue [filters|--all]   put dead letters back on their lane
//	enqueue sweep --location L [filters]   find what is still scheduled and cancel it
//	enqueue tokens list                    which token source applies to each location
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

	"github.com/ghlcancel/ghlcancel/internal/campaign"
	"github.com/ghlcancel/ghlcancel/internal/envconf"
	"github.com/ghlcancel/ghlcancel/internal/redisconn"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdin, os.Stdout, os.Stderr)
	if err != nil {
		if !errors.Is(err, errReported) {
			fmt.Fprintln(os.Stderr, "enqueue:", err)
		}
		var ue usageError
		if errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// errReported: the failure was already explained on stderr.
var errReported = errors.New("failed")

// retentionFlag adds --campaign-retention (env CAMPAIGN_RETENTION) to a
// command that writes campaigns. The returned func gives its value, or a
// usageError for a bad one: an unreadable environment value the flag did
// not override is refused as the workers refuse it at start (a silent 7
// days here would keep the campaign for another time than theirs).
func (e *env) retentionFlag(cmd *cobra.Command, help string) func() (time.Duration, error) {
	ev := envconf.New(e.getenv)
	d := cmd.Flags().Duration("campaign-retention", ev.Duration("CAMPAIGN_RETENTION", campaign.RetentionDefault), help+" (env CAMPAIGN_RETENTION)")
	return func() (time.Duration, error) {
		if err := ev.Err(); err != nil && !cmd.Flags().Changed("campaign-retention") {
			return 0, usageError{err}
		}
		if *d <= 0 {
			return 0, usageError{fmt.Errorf("--campaign-retention %s: want a positive duration, such as 168h", *d)}
		}
		return *d, nil
	}
}

// usageError is a command line the command cannot run (exit status 2).
type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }

const (
	envRedisURL     = "REDIS_URL"
	redisURLDefault = "redis://127.0.0.1:6379/0"
)

type env struct {
	getenv         func(string) string
	stdin          io.Reader
	stdout, stderr io.Writer
	redisURL       *string // the persistent --redis-url
}

// run builds the command tree and runs args. --help exits 0; a command
// line that cannot run is a usageError that names the command's --help.
func run(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) error {
	e := env{getenv: getenv, stdin: stdin, stdout: stdout, stderr: stderr}
	root := e.rootCmd()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return nil
	}
	var ue usageError
	if errors.As(err, &ue) || strings.HasPrefix(err.Error(), "unknown command") || strings.HasPrefix(err.Error(), "unknown flag") {
		return usageError{fmt.Errorf("%w\n(see `%s --help`)", err, cmd.CommandPath())}
	}
	return err
}

// rootCmd is the whole tree: the root queues cancels; the others operate.
func (e *env) rootCmd() *cobra.Command {
	root := e.sendCmd()
	root.SilenceErrors, root.SilenceUsage = true, true
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	def := e.getenv(envRedisURL)
	if def == "" {
		def = redisURLDefault
	}
	e.redisURL = root.PersistentFlags().String("redis-url", def, "Redis URL redis://[:password@]host:port/db (env "+envRedisURL+")")
	root.AddGroup(&cobra.Group{ID: "campaigns", Title: "Campaigns:"}, &cobra.Group{ID: "dead", Title: "Dead letters:"},
		&cobra.Group{ID: "setup", Title: "Finding messages and tokens:"})
	for _, c := range []*cobra.Command{e.statusCmd(), e.reportCmd(), e.campaignsCmd(), e.parkedCmd()} {
		c.GroupID = "campaigns"
		root.AddCommand(c)
	}
	dead := e.deadCmd()
	dead.GroupID = "dead"
	sweep, tokens := e.sweepCmd(), e.tokensCmd()
	sweep.GroupID, tokens.GroupID = "setup", "setup"
	root.AddCommand(dead, sweep, tokens, e.docsCmd())
	return root
}

// noArgs refuses positional arguments with a usage error.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageError{fmt.Errorf("unexpected arguments %q", args)}
	}
	return nil
}

// subcommandOnly is the RunE of a command that only groups others.
func subcommandOnly(usage string) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) > 0 {
			return usageError{fmt.Errorf("unknown command %q for %q\n%s", args[0], cmd.CommandPath(), usage)}
		}
		return usageError{errors.New(usage)}
	}
}

func (e *env) connect(ctx context.Context) (*redis.Client, error) {
	if err := redisconn.MisnamedEnv(e.getenv, *e.redisURL != redisURLDefault); err != nil {
		return nil, err
	}
	rdb, addr, err := redisconn.Open(*e.redisURL, 64)
	if err != nil {
		return nil, usageError{err}
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := rdb.Ping(pctx).Err(); err != nil {
		_ = rdb.Close()
		if hint, bad := redisconn.Explain(ctx, *e.redisURL, err); bad {
			return nil, fmt.Errorf("the Redis at %s refused: %s (%w)", addr, hint, err)
		}
		return nil, fmt.Errorf("cannot reach Redis at %s: %w (is it running? is REDIS_URL or --redis-url right?)", addr, err)
	}
	return rdb, nil
}

// warnNoWorker says on stderr when no worker serves this Redis database:
// the tasks just queued wait until one starts there (a database number
// mistyped in REDIS_URL, or the workers not started yet). asynq lists its
// live servers in asynq:servers, scored by when each entry expires.
func (e *env) warnNoWorker(ctx context.Context, rdb *redis.Client, what string) {
	n, err := campaign.New(rdb, 0).Workers(ctx)
	if err != nil || n > 0 {
		return
	}
	fmt.Fprintf(e.stderr, "enqueue: no worker is running on this Redis database (db %d): %s waits until a worker starts with the same REDIS_URL\n",
		rdb.Options().DB, what)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// withRedis is a command's RunE that connects to Redis first (with the
// actionable error when it cannot) and closes the connection after run.
func (e *env) withRedis(run func(ctx context.Context, rdb *redis.Client, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		rdb, err := e.connect(ctx)
		if err != nil {
			return err
		}
		defer rdb.Close()
		return run(ctx, rdb, args)
	}
}
