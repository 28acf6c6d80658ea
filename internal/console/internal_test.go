package console

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/ghlcancel/ghlcancel/internal/campaign"
)

func TestSafeNext(t *testing.T) {
	c := &Console{cfg: Config{Prefix: "/console"}}
	for next, want := range map[string]string{
		"/console/":                       "/console/",
		"/console/dead?reason=x&kind=sms": "/console/dead?reason=x&kind=sms",
		"/console/campaign?id=a%2Fb":      "/console/campaign?id=a%2Fb",
		"/console":                        "/console",
		"":                                "/console/",
		"https://evil.example/console/":   "/console/",
		"//evil.example/console/":         "/console/",
		"///evil.example":                 "/console/",
		"/console/..//evil.example":       "/console/",
		"/console/../v1/dead-letters":     "/console/",
		"/consolex/":                      "/console/",
		"/console/\\evil.example":         "/console/",
		"/console/\nSet-Cookie: x":        "/console/",
		"javascript:alert(1)":             "/console/",
		"/console/./dead":                 "/console/dead",
		"console/dead":                    "/console/",
		"http:/console/":                  "/console/",
	} {
		assert.Equal(t, want, c.safeNext(next), "next=%q", next)
	}
}

// TestProgressOf: the rate is taken between the page's two samples while a
// campaign runs, over its life otherwise; the ETA follows the rate.
func TestProgressOf(t *testing.T) {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	running := campaign.Status{Total: 1000, Done: 400, Pending: 600, StartedAt: now.Add(-100 * time.Second)}
	finished := now.Add(-10 * time.Second)
	done := campaign.Status{Total: 1000, Done: 1000, StartedAt: now.Add(-110 * time.Second), FinishedAt: &finished, Complete: true}
	// A parked location: the rate alone read "2 m 30 s" while its cancels
	// waited an hour (daily-budget audit).
	parked := running
	parked.Parked = map[string]string{"locA": "daily budget nearly spent: 4 of 150 left (DAILY_RESERVE 10) (until 2026-11-28T13:00:00Z)",
		"locB": "429: daily limit reached: 0 of 150 left (until 2026-11-28T12:05:00Z)"}
	for _, c := range []struct {
		name     string
		s        campaign.Status
		prevDone int64
		prevAt   time.Time
		pct      int
		rate     string
		eta      string
		elapsed  string
	}{
		{"life average", running, 0, time.Time{}, 40, "4.0/s", "2 m 30 s", "1 m 40 s"},
		{"between samples", running, 300, now.Add(-2 * time.Second), 40, "50/s", "12 s", "1 m 40 s"},
		{"samples too close: life average", running, 390, now.Add(-100 * time.Millisecond), 40, "4.0/s", "2 m 30 s", "1 m 40 s"},
		{"a sample from the future or a reset count: life average", running, 500, now.Add(-2 * time.Second), 40, "4.0/s", "2 m 30 s", "1 m 40 s"},
		{"nothing done yet", campaign.Status{Total: 10, Pending: 10, StartedAt: now.Add(-5 * time.Second)}, 0, time.Time{}, 0, "–", "unknown", "5 s"},
		{"complete: over its life, until it finished", done, 900, now.Add(-2 * time.Second), 100, "10/s", "done", "1 m 40 s"},
		{"parked: the latest parking's end is said", parked, 0, time.Time{}, 40, "4.0/s",
			"2 m 30 s (cancels at parked locations wait until 2026-11-28T13:00:00Z)", "1 m 40 s"},
	} {
		p := progressOf(c.s, now, c.prevDone, c.prevAt)
		assert.Equal(t, c.pct, p.Pct, c.name)
		assert.Equal(t, c.rate, p.Rate, c.name)
		assert.Equal(t, c.eta, p.ETA, c.name)
		assert.Equal(t, c.elapsed, p.Elapsed, c.name)
	}
}
