package ghl

import (
	"log/slog"
	"sync"
	"time"
)

// RouteHealth watches whether HighLevel's answers come from its routes. A
// wrong GHL_BASE_URL (a typo'd path prefix, a proxy in front that routes
// elsewhere) makes every answer misrouted; RouteHealth then reports the
// worker not ready, logs one error naming GHL_BASE_URL, and logs again once
// answers come from HighLevel again. Safe for concurrent use.
type RouteHealth struct {
	// Window is how far back answers count. Defaults to 1 minute.
	Window time.Duration
	// MinCalls is how many answers in the window it takes to judge.
	// Defaults to 5.
	MinCalls int
	// BaseURL is named in the log line.
	BaseURL string
	Logger  *slog.Logger
	// OnChange, when set, is called with true when every recent answer is
	// misrouted and with false when that ends (for a gauge), in order,
	// under a lock: keep it cheap.
	OnChange func(misrouted bool)
	// Now defaults to time.Now.
	Now func() time.Time

	mu       sync.Mutex
	recent   []routeAnswer // ring of the last answers
	next     int
	bad      bool
	lastSeen string
}

type routeAnswer struct {
	at        time.Time
	misrouted bool
}

const routeRing = 64

// Observe records one answer; request is its sanitized request line.
func (r *RouteHealth) Observe(misrouted bool, request string) {
	now := r.now()
	r.mu.Lock()
	if r.recent == nil {
		r.recent = make([]routeAnswer, routeRing)
	}
	r.recent[r.next] = routeAnswer{at: now, misrouted: misrouted}
	r.next = (r.next + 1) % routeRing
	if misrouted && request != "" {
		r.lastSeen = request
	}
	// Bad once every recent answer is misrouted; good again only once an
	// answer comes from HighLevel (calls may pause meanwhile).
	bad := r.bad
	if misrouted {
		bad = bad || r.judge(now)
	} else {
		bad = false
	}
	changed := bad != r.bad
	r.bad = bad
	req := r.lastSeen
	if changed && r.OnChange != nil {
		r.OnChange(bad) // under the lock: changes reach the gauge in order
	}
	r.mu.Unlock()
	if !changed {
		return
	}
	if r.Logger != nil {
		if bad {
			r.Logger.Error("every recent HighLevel answer is misrouted (a route-level 404, an HTML page, a redirect): "+
				"check GHL_BASE_URL and any proxy in front; tasks are retried meanwhile, not recorded",
				"base_url", r.BaseURL, "example_request", req)
		} else {
			r.Logger.Info("HighLevel answers from its routes again", "base_url", r.BaseURL)
		}
	}
}

// judge: every answer in the window is misrouted, and there are enough; r.mu held.
func (r *RouteHealth) judge(now time.Time) bool {
	window := r.Window
	if window <= 0 {
		window = time.Minute
	}
	minCalls := r.MinCalls
	if minCalls <= 0 {
		minCalls = 5
	}
	n := 0
	for _, a := range r.recent {
		if a.at.IsZero() || now.Sub(a.at) > window {
			continue
		}
		if !a.misrouted {
			return false
		}
		n++
	}
	return n >= minCalls
}

// Misrouted reports whether answers are misrouted: every answer in a window
// was, and none came from HighLevel since (for /readyz).
func (r *RouteHealth) Misrouted() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.bad
}

func (r *RouteHealth) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}
