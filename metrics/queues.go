package metrics

import (
	"context"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// QueueStates are the asynq task states exported per lane.
var QueueStates = []string{"pending", "active", "scheduled", "retry", "archived", "completed"}

// QueueCollector reports asynq queue sizes and latency straight from
// Redis with one pipelined round trip of O(1) commands per scrape (LLEN,
// ZCARD, LINDEX, HGET per lane). It avoids asynq's Inspector.GetQueueInfo,
// which samples MEMORY USAGE over the queue on every call.
type QueueCollector struct {
	rdb     redis.UniversalClient
	queues  []string
	timeout time.Duration

	size    *prometheus.Desc
	latency *prometheus.Desc
	up      *prometheus.Desc
	parked  *prometheus.Desc
	learned *prometheus.Desc
	dead    *prometheus.Desc
}

// NewQueueCollector builds a collector for the given lanes.
func NewQueueCollector(rdb redis.UniversalClient, queues []string) *QueueCollector {
	return &QueueCollector{
		rdb: rdb, queues: queues, timeout: 2 * time.Second,
		size: prometheus.NewDesc(Namespace+"_queue_tasks", "Tasks in each asynq lane by state.",
			[]string{"queue", "state"}, nil),
		latency: prometheus.NewDesc(Namespace+"_queue_latency_seconds",
			"Age of the oldest pending task in each lane (0 when empty): how long work waits for a free worker. Tasks waiting for their pacing turn are in the retry state, not pending.", []string{"queue"}, nil),
		up: prometheus.NewDesc(Namespace+"_redis_up", "1 when the last scrape could read Redis.", nil, nil),
		parked: prometheus.NewDesc(Namespace+"_locations_parked",
			"Locations whose tasks wait for HighLevel's daily budget to come back.", nil, nil),
		learned: prometheus.NewDesc(Namespace+"_ratelimit_learned_locations",
			"Locations whose rate limit was learned from X-RateLimit-* headers.", nil, nil),
		dead: prometheus.NewDesc(Namespace+"_dead_letters_stored",
			"Dead letters kept in Redis for inspection and replay (they expire after DEAD_LETTER_RETENTION).", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *QueueCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.size
	ch <- c.latency
	ch <- c.up
	ch <- c.parked
	ch <- c.learned
	ch <- c.dead
}

type queueCmds struct {
	sizes  []*redis.IntCmd
	oldest *redis.StringCmd
}

// Collect implements prometheus.Collector.
func (c *QueueCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	cmds := make([]queueCmds, len(c.queues))
	var parked, learned, dead *redis.IntCmd
	_, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		parked = p.ZCount(ctx, "ghlcancel:rl:parked", strconv.FormatInt(time.Now().UnixMilli(), 10), "+inf")
		learned = p.HLen(ctx, "ghlcancel:rl:learned")
		dead = p.ZCard(ctx, "ghlcancel:dead:index")
		for i, q := range c.queues {
			prefix := "asynq:{" + q + "}:"
			cmds[i].sizes = []*redis.IntCmd{
				p.LLen(ctx, prefix+"pending"), p.LLen(ctx, prefix+"active"),
				p.ZCard(ctx, prefix+"scheduled"), p.ZCard(ctx, prefix+"retry"),
				p.ZCard(ctx, prefix+"archived"), p.ZCard(ctx, prefix+"completed"),
			}
			// asynq LPUSHes, so the oldest pending task is the last element.
			cmds[i].oldest = p.LIndex(ctx, prefix+"pending", -1)
		}
		return nil
	})
	if err != nil && err != redis.Nil {
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 1)
	ch <- prometheus.MustNewConstMetric(c.parked, prometheus.GaugeValue, float64(parked.Val()))
	ch <- prometheus.MustNewConstMetric(c.learned, prometheus.GaugeValue, float64(learned.Val()))
	ch <- prometheus.MustNewConstMetric(c.dead, prometheus.GaugeValue, float64(dead.Val()))
	now := time.Now()
	var sinceCmds []*redis.StringCmd
	_, _ = c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, q := range c.queues {
			id, err := cmds[i].oldest.Result()
			if err != nil || id == "" {
				sinceCmds = append(sinceCmds, nil)
				continue
			}
			sinceCmds = append(sinceCmds, p.HGet(ctx, "asynq:{"+q+"}:t:"+id, "pending_since"))
		}
		return nil
	})
	for i, q := range c.queues {
		for j, st := range QueueStates {
			ch <- prometheus.MustNewConstMetric(c.size, prometheus.GaugeValue, float64(cmds[i].sizes[j].Val()), q, st)
		}
		lat := 0.0
		if sc := sinceCmds[i]; sc != nil {
			if ns, err := strconv.ParseInt(sc.Val(), 10, 64); err == nil && ns > 0 {
				lat = max(0, now.Sub(time.Unix(0, ns)).Seconds())
			}
		}
		ch <- prometheus.MustNewConstMetric(c.latency, prometheus.GaugeValue, lat, q)
	}
}
