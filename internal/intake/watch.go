package intake

import (
	"context"
	"crypto/rand"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ghlcancel/ghlcancel/internal/deadletter"
	"github.com/ghlcancel/ghlcancel/internal/fleet"
)

// watch is what Watch keeps between looks.
type watch struct {
	reg      *fleet.Registry
	differ   *prometheus.GaugeVec
	workers  prometheus.Gauge
	said     string // the settings' differences last logged
	noWorker bool   // "no worker" was said last
}

func (s *Server) newWatch() *watch {
	w := &watch{
		reg: fleet.New(s.cfg.Redis, fleet.Intakes, deadletter.ThisWorker+"/"+rand.Text()[:4], s.cfg.Fleet),
		differ: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ghlcancel_fleet_settings_differ",
			Help: "1 while the live intakes sharing this Redis disagree on this setting (webhook rules, replay window, legacy signatures, campaign retention); the intake's log names the values and intakes.",
		}, []string{"setting"}),
		workers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ghlcancel_intake_workers_live",
			Help: "asynq servers of live workers serving this intake's Redis database (a worker runs one per lane); 0: what the intake accepts waits (a REDIS_URL database number other than the workers', or no worker running).",
		}),
	}
	for _, n := range w.reg.Names() {
		w.differ.WithLabelValues(n).Set(0)
	}
	w.workers.Set(-1) // unknown until the first look
	s.cfg.Registry.MustRegister(w.differ, w.workers)
	return w
}

// Watch announces this intake's settings to the other intakes sharing its
// Redis every fleet.AnnounceEvery and says (log, metrics) where they
// differ, and whether any worker serves this Redis database, until ctx
// is done. An audit found replicas with different AUTO_CANCEL_EVENTS: a
// reply that reached the one without the event was answered no_rule and
// its messages went out (HighLevel retries only a 429). And an intake on
// another database than the workers' accepted cancels, answered 202, and
// nothing ever ran them, with nothing said.
func (s *Server) Watch(ctx context.Context) {
	t := time.NewTicker(fleet.AnnounceEvery)
	defer t.Stop()
	for {
		s.look(ctx)
		select {
		case <-t.C:
		case <-ctx.Done():
			leave, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			_ = s.watch.reg.Leave(leave)
			cancel()
			return
		}
	}
}

func (s *Server) look(ctx context.Context) {
	w := s.watch
	// The workers are counted even when the announcement fails (an ACL
	// without EVAL): a gauge left at -1 would hide another intake's 0.
	announced := w.reg.Announce(ctx) == nil
	if peers, err := w.reg.Peers(ctx); announced && err == nil {
		differ, now := fleet.Summary(peers, w.reg.Names())
		for _, n := range w.reg.Names() {
			w.differ.WithLabelValues(n).Set(map[bool]float64{true: 1}[differ[n]])
		}
		if now != w.said {
			w.said = now
			if now != "" {
				s.log.Warn("intakes sharing this Redis disagree on their settings: a webhook is acted on as the intake it reaches says; set the same on every intake",
					"differences", now, "intakes", len(peers))
			} else if len(peers) > 1 {
				s.log.Info("intakes sharing this Redis agree on their settings", "intakes", len(peers))
			}
		}
	}
	if n, err := s.campaigns.Workers(ctx); err == nil {
		w.workers.Set(float64(n))
		if none := n == 0; none != w.noWorker {
			w.noWorker = none
			if none {
				s.log.Warn("no worker serves this Redis database: cancels and sweeps accepted here wait until one does; check that REDIS_URL names the workers' database")
			} else {
				s.log.Info("workers serve this Redis database again", "servers", n)
			}
		}
	}
}
