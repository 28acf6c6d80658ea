package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/ghlcancel/ghlcancel/internal/producer"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
	"github.com/ghlcancel/ghlcancel/internal/tokens"
)

// agencyBench: the same campaign (n cancels over many locations, a worker
// process, pacing on but never binding) with a token per location from a
// file (the baseline) and with every token minted from one agency pair,
// in the same round. It reports cancels/s, their ratio, Redis and worker CPU
// per cancel, and the mints the sandbox saw (one per location is the goal).
func agencyBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("agency", flag.ContinueOnError)
	fs.SetOutput(stderr)
	n := fs.Int("tasks", 20000, "cancels per measurement")
	locations := fs.Int("locations", 200, "locations the cancels are spread over (each minted once in agency mode)")
	concurrency := fs.Int("concurrency", 200, "worker concurrency")
	rounds := fs.Int("rounds", 3, "rounds; medians and ranges are reported")
	if err := fs.Parse(args); err != nil {
		return err
	}
	env, err := newBenchEnv("")
	if err != nil {
		return err
	}
	defer env.close()
	fmt.Fprintf(stdout, "agency benchmark: %d cancels over %d locations, concurrency %d, pacing on, %d rounds\n", *n, *locations, *concurrency, *rounds)
	var base, agency []usage
	var mints []float64
	for r := 1; r <= *rounds; r++ {
		b, _, err := measureAgency(ctx, env, *n, *locations, *concurrency, false)
		if err != nil {
			return fmt.Errorf("tokens file: %w", err)
		}
		a, m, err := measureAgency(ctx, env, *n, *locations, *concurrency, true)
		if err != nil {
			return fmt.Errorf("agency: %w", err)
		}
		base, agency, mints = append(base, b), append(agency, a), append(mints, float64(m))
		fmt.Fprintf(stdout, "  round %d  file %6.0f cancels/s (redis %3.0f µs)  agency %6.0f cancels/s (redis %3.0f µs, %d mints)  ratio %.2f\n",
			r, b.perSec(), b.us(b.redisCPU), a.perSec(), a.us(a.redisCPU), m, a.perSec()/b.perSec())
	}
	ratio := make([]float64, len(base))
	for i := range base {
		ratio[i] = agency[i].perSec() / base[i].perSec()
	}
	fmt.Fprintf(stdout, "\nmedian [min-max] of %d rounds:\n", *rounds)
	fmt.Fprintf(stdout, "  %-14s %-22s %-18s %-18s %s\n", "tokens", "cancels/s", "Redis CPU µs", "worker CPU µs", "mints")
	for _, row := range []struct {
		name string
		u    []usage
		m    string
	}{{"file", base, "-"}, {"agency", agency, fmtStat(mints, "%.0f")}} {
		fmt.Fprintf(stdout, "  %-14s %-22s %-18s %-18s %s\n", row.name, stat(row.u, func(u usage) float64 { return u.perSec() }, "%.0f"),
			stat(row.u, func(u usage) float64 { return u.us(u.redisCPU) }, "%.0f"), stat(row.u, func(u usage) float64 { return u.us(u.workerCPU) }, "%.0f"), row.m)
	}
	fmt.Fprintf(stdout, "  agency / file: %s\n", fmtStat(ratio, "%.2f"))
	return nil
}

// measureAgency drains n cancels with one worker; with agency, the worker
// has no token of its own: the agency pair is stored as `enqueue tokens
// agency set` would, and every location's token is minted.
func measureAgency(ctx context.Context, env *benchEnv, n, locations, concurrency int, agency bool) (usage, int64, error) {
	if err := env.rdb.FlushDB(ctx).Err(); err != nil {
		return usage{}, 0, err
	}
	const company = "benchCompany00000001"
	sb, err := startSandboxChild(ctx, env, locations, n/locations, "-rate", "-1", "-daily", strconv.Itoa(1<<30), "-agency", company)
	if err != nil {
		return usage{}, 0, err
	}
	defer sb.stop()
	for _, r := range producer.New(env.rdb, producer.Config{Queue: tasks.QueueBulk}).EnqueueBatch(ctx, sb.items) {
		if r.Status != producer.Enqueued {
			return usage{}, 0, fmt.Errorf("enqueue: %s %v", r.Status, r.Err)
		}
	}
	args := []string{"_worker", "-redis-url", env.redisURL, "-concurrency", strconv.Itoa(concurrency), "-api", sb.url, "-rate-limit", "1000000/1s"}
	if agency {
		const keyHex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
		key, _ := tokens.ParseKey(keyHex)
		rt, err := os.ReadFile(sb.tokens + ".agency")
		if err != nil {
			return usage{}, 0, err
		}
		pairs, err := tokens.NewOAuth(tokens.OAuthConfig{Redis: env.rdb, Key: key, Company: true})
		if err != nil {
			return usage{}, 0, err
		}
		if err := tokens.SetAgency(ctx, pairs, company, "", "", string(rt), 0); err != nil {
			return usage{}, 0, err
		}
		args = append(args, "-agency-key", keyHex)
	} else {
		args = append(args, "-tokens-file", sb.tokens)
	}
	u, err := drainAll(ctx, env, sb, env.child(ctx, args...))
	if err != nil {
		return u, 0, err
	}
	st, err := sb.stats()
	return u, st.Mints, err
}
