package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ghlcancel/ghlcancel/internal/intake"
	"github.com/ghlcancel/ghlcancel/internal/producer"
	"github.com/ghlcancel/ghlcancel/internal/sandbox"
	"github.com/ghlcancel/ghlcancel/internal/tasks"
	"github.com/ghlcancel/ghlcancel/internal/webhook"
	"github.com/ghlcancel/ghlcancel/internal/webhook/signature"
)

// webhooksBench is the webhook issue's load check: signed InboundMessage
// events at a fixed rate (open loop: each is sent at its time whatever the
// answers before it, and its latency counts from that time), every one
// answered 200 accepted or 429, none lost (every accepted one has its sweep
// task in Redis), with the answer-time percentiles. Then capacity, closed
// loop: the webhook route (HTTP, Ed25519 check, JSON, rules, the sweep
// script) against the sweep script alone through the producer, same
// concurrency, same Redis.
func webhooksBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("webhooks", flag.ContinueOnError)
	fs.SetOutput(stderr)
	perSec := fs.Int("rate", 1000, "webhooks per second")
	dur := fs.Duration("duration", 10*time.Second, "how long to send at -rate")
	capN := fs.Int("capacity", 20000, "events for the closed-loop capacity runs (0 skips them)")
	conc := fs.Int("concurrency", 32, "requests in flight for the capacity runs")
	if err := fs.Parse(args); err != nil {
		return err
	}
	env, err := newBenchEnv("")
	if err != nil {
		return err
	}
	defer env.close()
	sb := sandbox.New(sandbox.Config{})
	v, err := sb.Verifier()
	if err != nil {
		return err
	}
	sg, _ := sb.Signer()
	rules, err := webhook.LoadRules("InboundMessage", "", "")
	if err != nil {
		return err
	}
	srv, err := intake.New(intake.Config{Redis: env.rdb, Keys: []string{"bench-key-0123456789abcdef"},
		Webhook: &webhook.Config{Verifier: v, Rules: rules}})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: srv}
	go func() { _ = hs.Serve(ln) }()
	defer hs.Close()
	url := "http://" + ln.Addr().String() + "/v1/webhooks/highlevel"
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 512, MaxConnsPerHost: 0}, Timeout: time.Minute}
	fmt.Fprintf(stdout, "webhooks benchmark: %d/s for %s, redis %s\n", *perSec, *dur, env.redisURL)

	type signed struct {
		body []byte
		sig  string
	}
	mk := func(n int, prefix string) []signed {
		out := make([]signed, n)
		for i := range out {
			b := sb.EventBody(sandbox.EventSpec{Type: "InboundMessage", Location: fmt.Sprintf("benchLoc%012d", i%100),
				Contact: fmt.Sprintf("%sContact%010d", prefix, i)})
			out[i] = signed{b, sg.SignEd25519(b)}
		}
		return out
	}
	send := func(s signed) (int, webhook.Response, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(s.body))
		if err != nil {
			return 0, webhook.Response{}, err
		}
		req.Header.Set(signature.HeaderSignature, s.sig)
		resp, err := hc.Do(req)
		if err != nil {
			return 0, webhook.Response{}, err
		}
		defer resp.Body.Close()
		var r webhook.Response
		err = json.NewDecoder(resp.Body).Decode(&r)
		return resp.StatusCode, r, err
	}

	// 1. Open loop at the rate.
	n := int(float64(*perSec) * dur.Seconds())
	events := mk(n, "load")
	lat := make([]time.Duration, n)
	codes := make([]int, n)
	answers := make([]webhook.Response, n)
	var sent, answered atomic.Int64
	var wg sync.WaitGroup
	stop := progress(stderr, func() string { return fmt.Sprintf("  sent %d/%d, answered %d", sent.Load(), n, answered.Load()) })
	start := time.Now()
	interval := time.Second / time.Duration(*perSec)
	for i := range n {
		at := start.Add(time.Duration(i) * interval)
		if d := time.Until(at); d > 0 {
			time.Sleep(d)
		}
		sent.Add(1)
		wg.Go(func() {
			code, r, err := send(events[i])
			lat[i] = time.Since(at)
			codes[i], answers[i] = code, r
			if err != nil {
				codes[i] = -1
			}
			answered.Add(1)
		})
	}
	sendTook := time.Since(start)
	wg.Wait()
	stop()
	accepted, limited, other := 0, 0, 0
	for i, c := range codes {
		switch {
		case c == http.StatusOK && answers[i].Result == webhook.ResultAccepted:
			accepted++
		case c == http.StatusTooManyRequests:
			limited++
		default:
			other++
		}
	}
	// Lost: an accepted answer whose sweep task is not in Redis.
	lost := 0
	pipe := env.rdb.Pipeline()
	var checks []*redis.IntCmd
	for i, c := range codes {
		if c == http.StatusOK && answers[i].Result == webhook.ResultAccepted {
			loc := fmt.Sprintf("benchLoc%012d", i%100)
			checks = append(checks, pipe.Exists(ctx, "asynq:{"+tasks.QueueDefault+"}:t:"+tasks.SweepTaskID(answers[i].SweepID, loc)))
		}
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return err
	}
	for _, c := range checks {
		if c.Val() != 1 {
			lost++
		}
	}
	queued, err := env.rdb.LLen(ctx, "asynq:{"+tasks.QueueDefault+"}:pending").Result()
	if err != nil {
		return err
	}
	slices.Sort(lat)
	pct := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
	fmt.Fprintf(stdout, "open loop: %d webhooks sent in %.2fs (%.0f/s): %d accepted, %d answered 429, %d other; %d sweep tasks queued, %d accepted without one (lost)\n",
		n, sendTook.Seconds(), float64(n)/sendTook.Seconds(), accepted, limited, other, queued, lost)
	fmt.Fprintf(stdout, "answer time from the scheduled send: p50 %.1f ms, p90 %.1f ms, p99 %.1f ms, max %.1f ms\n",
		ms(pct(.5)), ms(pct(.9)), ms(pct(.99)), ms(lat[len(lat)-1]))
	if other > 0 || lost > 0 || int64(accepted) != queued {
		return fmt.Errorf("webhooks: %d answers neither accepted nor 429, %d lost, %d accepted vs %d queued", other, lost, accepted, queued)
	}
	if *capN == 0 {
		return nil
	}

	// 2. Capacity, closed loop: the route vs the sweep script alone.
	if err := env.rdb.FlushDB(ctx).Err(); err != nil {
		return err
	}
	capEvents := mk(*capN, "cap")
	route, err := closedLoop(ctx, *capN, *conc, stderr, "webhook route", func(i int) error {
		code, r, err := send(capEvents[i])
		if err == nil && (code != http.StatusOK || r.Result != webhook.ResultAccepted) {
			err = fmt.Errorf("answer %d %s: %s", code, r.Result, r.Reason)
		}
		return err
	})
	if err != nil {
		return err
	}
	if err := env.rdb.FlushDB(ctx).Err(); err != nil {
		return err
	}
	prod := producer.New(env.rdb, producer.Config{})
	now := time.Now()
	base, err := closedLoop(ctx, *capN, *conc, stderr, "sweep script", func(i int) error {
		_, err := prod.Sweep(ctx, producer.SweepRequest{Locations: []string{fmt.Sprintf("benchLoc%012d", i%100)},
			ContactID: fmt.Sprintf("capContact%010d", i), CampaignID: webhook.CampaignID("InboundMessage", now),
			Lane: tasks.QueueDefault, Event: "InboundMessage", EventID: fmt.Sprint(i), EventAt: now,
			DedupeKey: fmt.Sprintf("ghlcancel:webhook:seen:%d", i), DedupeTTL: 10 * time.Minute})
		return err
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "capacity (closed loop, %d in flight): webhook route %.0f/s | sweep script alone %.0f/s | ratio %.2f\n",
		*conc, route, base, route/base)
	return nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// progress prints line() every second on w until the returned func is called.
func progress(w io.Writer, line func() string) func() {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				fmt.Fprintln(w, line())
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

// closedLoop runs fn(0..n-1) with conc in flight and returns calls per second.
func closedLoop(ctx context.Context, n, conc int, stderr io.Writer, label string, fn func(int) error) (float64, error) {
	var next, done atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	stop := progress(stderr, func() string { return fmt.Sprintf("  %s: %d/%d", label, done.Load(), n) })
	start := time.Now()
	for range conc {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := fn(i); err != nil {
					once.Do(func() { firstErr = fmt.Errorf("%s: %w", label, err) })
					return
				}
				done.Add(1)
			}
		})
	}
	wg.Wait()
	stop()
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	return float64(n) / time.Since(start).Seconds(), firstErr
}
