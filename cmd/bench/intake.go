package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ghlcancel/ghlcancel/client"
	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/intake"
	"github.com/ghlcancel/ghlcancel/internal/producer"
	"github.com/ghlcancel/ghlcancel/internal/sandbox"
)

// intakeBench measures the intake API (HTTP on loopback, the Go client,
// JSON both ways, API-key check) for batches of 1 and 500 items, against
// the same items enqueued straight through the producer on the same Redis
// with the same concurrency: the ratio is what the HTTP layer costs.
func intakeBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("intake", flag.ContinueOnError)
	fs.SetOutput(stderr)
	singles := fs.Int("singles", 20000, "requests of 1 item")
	batches := fs.Int("batches", 200, "requests of 500 items")
	conc := fs.Int("concurrency", 32, "requests in flight")
	if err := fs.Parse(args); err != nil {
		return err
	}
	env, err := newBenchEnv("")
	if err != nil {
		return err
	}
	defer env.close()
	const key = "bench-key-0123456789abcdef"
	srv, err := intake.New(intake.Config{Redis: env.rdb, Keys: []string{key}})
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
	tr := &http.Transport{MaxIdleConnsPerHost: *conc, MaxConnsPerHost: *conc}
	c, err := client.New("http://"+ln.Addr().String(), key, client.Options{HTTPClient: &http.Client{Transport: tr, Timeout: time.Minute}})
	if err != nil {
		return err
	}
	prod := producer.New(env.rdb, producer.Config{})
	fmt.Fprintf(stdout, "intake benchmark: concurrency %d, redis %s\n", *conc, env.redisURL)

	for _, size := range []int{1, 500} {
		n := *singles
		if size > 1 {
			n = *batches
		}
		mk := func() [][]client.Cancel {
			reqs := make([][]client.Cancel, n)
			for i := range reqs {
				reqs[i] = make([]client.Cancel, size)
				for j := range reqs[i] {
					reqs[i][j] = client.Cancel{MessageID: sandbox.NewID(), LocationID: fmt.Sprintf("benchLoc%03d", (i*size+j)%100), CampaignID: "bench"}
				}
			}
			return reqs
		}
		// Baseline: the producer, no HTTP.
		if err := env.rdb.FlushDB(ctx).Err(); err != nil {
			return err
		}
		base, err := drive(ctx, mk(), *conc, stderr, fmt.Sprintf("producer, batch %d", size), func(items []client.Cancel) error {
			pi := make([]producer.Item, len(items))
			for i, it := range items {
				pi[i] = producer.Item{Kind: ghl.KindMessage, MessageID: it.MessageID, LocationID: it.LocationID, CampaignID: it.CampaignID}
			}
			for _, r := range prod.EnqueueBatch(ctx, pi) {
				if r.Status != producer.Enqueued {
					return fmt.Errorf("producer: %v %v", r.Status, r.Err)
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		if err := env.rdb.FlushDB(ctx).Err(); err != nil {
			return err
		}
		api, err := drive(ctx, mk(), *conc, stderr, fmt.Sprintf("intake API, batch %d", size), func(items []client.Cancel) error {
			res, err := c.CancelMany(ctx, items, client.LaneDefault, false)
			if err == nil && res.Enqueued != len(items) {
				err = fmt.Errorf("intake: %d of %d enqueued", res.Enqueued, len(items))
			}
			return err
		})
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "batch %3d: intake %8.0f req/s %8.0f items/s | producer %8.0f req/s %8.0f items/s | ratio %.2f\n",
			size, api.reqs, api.items, base.reqs, base.items, api.items/base.items)
	}
	return nil
}

type rate struct{ reqs, items float64 }

// drive runs fn over reqs with conc in flight and reports rates, showing
// progress on stderr.
func drive(ctx context.Context, reqs [][]client.Cancel, conc int, stderr io.Writer, label string, fn func([]client.Cancel) error) (rate, error) {
	var (
		next, done atomic.Int64
		firstErr   error
		once       sync.Once
		wg         sync.WaitGroup
	)
	items := 0
	for _, r := range reqs {
		items += len(r)
	}
	stop := make(chan struct{})
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				fmt.Fprintf(stderr, "  %s: %d/%d requests\n", label, done.Load(), len(reqs))
			}
		}
	}()
	start := time.Now()
	for range conc {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= len(reqs) {
					return
				}
				if err := fn(reqs[i]); err != nil {
					once.Do(func() { firstErr = err })
					return
				}
				done.Add(1)
			}
		})
	}
	wg.Wait()
	close(stop)
	el := time.Since(start).Seconds()
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	return rate{float64(len(reqs)) / el, float64(items) / el}, firstErr
}
