// Command sandbox serves the HighLevel API stand-in for demos and load
// tests: it seeds scheduled messages over several locations, writes their
// ids as a CSV ready for `enqueue --file` and the tokens as a JSON file ready
// for GHL_TOKENS_FILE, then serves until Ctrl-C. GET /_sandbox/stats
// reports what it answered.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/sandbox"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return // -h: the usage was printed
		}
		fmt.Fprintln(os.Stderr, "sandbox:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("sandbox", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:8089", "listen address")
	locations := fs.Int("locations", 5, "locations to create")
	perLocation := fs.Int("messages", 200, "scheduled messages per location")
	idsOut := fs.String("ids-out", "sandbox-ids.csv", "write message_id,location_id,kind here")
	tokensOut := fs.String("tokens-out", "sandbox-tokens.json", "write {location: token} here (mode 0600)")
	rate := fs.Int("rate", sandbox.RateMaxDefault, "requests per -rate-interval per location; -1 disables")
	interval := fs.Duration("rate-interval", sandbox.RateIntervalDefault, "rate-limit window")
	daily := fs.Int("daily", sandbox.DailyLimitDefault, "requests per location per UTC day")
	retryAfter := fs.Bool("retry-after", false, "send Retry-After on 429")
	var f sandbox.Faults
	agency := fs.String("agency", "", "also create an agency (Company) with this id whose app is installed at -installed locations")
	installed := fs.Int("installed", 0, "with -agency: installed locations, each with -messages scheduled messages in the sweepable export")
	agencyOut := fs.String("agency-out", "sandbox-agency-refresh-token", "with -agency: write the agency's first refresh token here (mode 0600)")
	fs.Float64Var(&f.ErrorRate, "error-rate", 0, "share of requests answered 500/502/503")
	fs.Float64Var(&f.ResetRate, "reset-rate", 0, "share of connections reset")
	fs.Float64Var(&f.TimeoutRate, "timeout-rate", 0, "share of requests that hang until the client gives up")
	fs.Float64Var(&f.LostResponseRate, "lost-response-rate", 0, "share processed, then answered 502")
	fs.DurationVar(&f.Latency, "latency", 0, "added latency per request")
	fs.DurationVar(&f.LatencyJitter, "latency-jitter", 0, "plus up to this much random latency")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *locations < 1 || *perLocation < 0 {
		return errors.New("-locations must be at least 1 and -messages not negative")
	}
	if *installed < 0 || (*installed > 0 && *agency == "") {
		return errors.New("-installed needs -agency COMPANY_ID and must not be negative")
	}
	if *agency != "" {
		if err := ghl.ValidateID(*agency); err != nil {
			return fmt.Errorf("-agency: %w", err)
		}
	}
	// Listen first: a second sandbox whose port is taken must not replace
	// the running one's ids and tokens files (a worker reading the tokens
	// file would send the new tokens to the old sandbox: every cancel
	// unauthorized).
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w (choose another with -addr); the ids and tokens files were left as they were", *addr, err)
	}
	serving := false
	defer func() {
		if !serving {
			ln.Close() // a file could not be written
		}
	}()
	sb := sandbox.New(sandbox.Config{RateMax: *rate, RateInterval: *interval, DailyLimit: *daily, RetryAfter: *retryAfter, Faults: f})
	var csv strings.Builder
	csv.WriteString("message_id,location_id,kind\n")
	toks := map[string]string{}
	for i := range *locations {
		loc := fmt.Sprintf("sandboxLocation%05d", i)
		tok := "sandbox-" + sandbox.NewID()
		sb.AddLocation(loc, tok)
		toks[loc] = tok
		email := i%2 == 1
		kind := map[bool]string{false: "message", true: "email"}[email]
		for _, id := range sb.ScheduleN(loc, *perLocation, email) {
			fmt.Fprintf(&csv, "%s,%s,%s\n", id, loc, kind)
		}
	}
	if err := os.WriteFile(*idsOut, []byte(csv.String()), 0o644); err != nil {
		return err
	}
	b, _ := json.Marshal(toks)
	if err := os.WriteFile(*tokensOut, b, 0o600); err != nil {
		return err
	}
	if *agency != "" {
		for i := range *installed {
			loc := fmt.Sprintf("agencyLocation%05d", i)
			sb.InstallLocation(*agency, loc, fmt.Sprintf("Sub-account %d", i))
			sb.AddMessages(loc, make([]sandbox.MessageSpec, *perLocation)...)
		}
		if err := os.WriteFile(*agencyOut, []byte(sb.AddAgency(*agency)+"\n"), 0o600); err != nil {
			return err
		}
	}
	srv := &http.Server{Handler: sb.Handler(), ReadHeaderTimeout: 5 * time.Second}
	serving = true
	go func() { _ = srv.Serve(ln) }()
	fmt.Fprintf(stdout, "sandbox: serving http://%s (%d locations x %d scheduled messages)\n", ln.Addr(), *locations, *perLocation)
	fmt.Fprintf(stdout, "sandbox: ids in %s, tokens in %s\n", *idsOut, *tokensOut)
	fmt.Fprintf(stdout, "sandbox: try  GHL_BASE_URL=http://%s GHL_TOKENS_FILE=%s go run ./cmd/worker\n", ln.Addr(), *tokensOut)
	fmt.Fprintf(stdout, "sandbox:      go run ./cmd/enqueue --file %s\n", *idsOut)
	if *agency != "" {
		fmt.Fprintf(stdout, "sandbox: agency %s (app %s) installed at %d locations; its refresh token is in %s. Try, with\n", *agency, sandbox.AppIDDefault, *installed, *agencyOut)
		fmt.Fprintf(stdout, "sandbox:   export GHL_BASE_URL=http://%s GHL_CLIENT_ID=%s GHL_CLIENT_SECRET=%s GHL_TOKEN_KEY=$(openssl rand -hex 32)\n", ln.Addr(), sandbox.ClientIDDefault, sandbox.ClientSecretDefault)
		fmt.Fprintf(stdout, "sandbox:   go run ./cmd/enqueue tokens agency set --company %s --app %s < %s\n", *agency, sandbox.AppIDDefault, *agencyOut)
		fmt.Fprintf(stdout, "sandbox:   go run ./cmd/worker    and    go run ./cmd/enqueue sweep --all-locations --wait\n")
	}
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	st := sb.Stats()
	fmt.Fprintf(stdout, "sandbox: answered %d requests: %d cancelled, %d not cancellable, %d unauthorized, %d rate limited\n",
		st.Requests, st.Cancelled, st.NotCancellable, st.Unauthorized, st.RateLimited)
	return nil
}
