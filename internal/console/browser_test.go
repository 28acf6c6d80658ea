package console_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/deadletter"
	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/ratelimit"
)

// browserTools finds node, chromium and the npm packages, or skips (fails
// under GHLCANCEL_REQUIRE_TOOLS=1: scripts/test installs them).
func browserTools(t *testing.T) (node, chromium string) {
	t.Helper()
	need := func(what string, err error) {
		if err == nil {
			return
		}
		if os.Getenv("GHLCANCEL_REQUIRE_TOOLS") != "" {
			t.Fatalf("%s: %v (scripts/test installs it: apt-get install chromium; npm ci in internal/console/browser)", what, err)
		}
		t.Skipf("%s: %v; run scripts/test, which installs it", what, err)
	}
	node, err := exec.LookPath("node")
	need("node", err)
	chromium = os.Getenv("CHROMIUM")
	if chromium == "" {
		chromium, err = exec.LookPath("chromium")
		need("chromium", err)
	}
	_, err = os.Stat(filepath.Join("browser", "node_modules", "playwright-core", "package.json"))
	need("playwright-core", err)
	_, err = os.Stat(filepath.Join("browser", "node_modules", "axe-core", "axe.min.js"))
	need("axe-core", err)
	return node, chromium
}

// TestBrowser drives headless Chromium through the console against the real
// stack: a wrong key refused, sign-in, a running campaign's progress moving
// on its own, its dead letters requeued after the token fix and seen
// cancelled, a POST without the CSRF token refused, a purge after a typed
// confirmation (a wrong number refused), phone width in dark mode, sign-out,
// a read-only key that cannot requeue; axe-core on every page. Screenshots
// go to $GHLCANCEL_ARTIFACTS/console (default: the test's temporary folder).
func TestBrowser(t *testing.T) {
	node, chromium := browserTools(t)
	s := newStack(t, stackOpts{rate: "5/1s"})

	// A campaign still running when the browser opens it (300 cancels at
	// 5/s on one location: 60 s, while the browser needs a few to get
	// there, or 20 and more on a loaded machine), and dead letters on a
	// location whose token is wrong, fixed before the browser requeues them.
	const running, purge = "spring-sale", "old-import"
	s.campaign(t, running, map[string]int{locGood: 300, locBad: 6})
	s.campaign(t, purge, map[string]int{locBroken: 4})
	require.Eventually(t, func() bool {
		return len(deadIDs(t, s, deadletter.Filter{CampaignID: running})) == 6 &&
			len(deadIDs(t, s, deadletter.Filter{CampaignID: purge})) == 4
	}, 20*time.Second, 50*time.Millisecond)
	s.tokens.set(locBad, tokGood+"-bad-location")
	// A location parked for its daily budget, for the locations page and
	// its Release button.
	const parked = "locParkedForTheDay"
	require.NoError(t, ratelimit.New(s.rdb, ratelimit.Config{}).Observe(context.Background(), parked,
		ghl.Limits{Present: true, Max: -1, Remaining: -1, DailyLimit: 200000, DailyRemaining: 9}, nil))

	out := os.Getenv("GHLCANCEL_ARTIFACTS")
	if out == "" {
		out = t.TempDir()
	}
	out = filepath.Join(out, "console")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "console.test.mjs")
	cmd.Dir = "browser"
	cmd.Env = append(os.Environ(), "BASE="+s.url, "OPERATOR_KEY="+operatorKey, "READONLY_KEY="+readOnlyKey,
		"CAMPAIGN="+running, "PURGE_CAMPAIGN="+purge, "PARKED="+parked, "OUT="+out, "CHROMIUM="+chromium)
	b, err := cmd.CombinedOutput()
	t.Logf("%s", strings.TrimSpace(string(b)))
	require.NoError(t, err, "the browser test failed (its output is above)")
	require.Contains(t, string(b), "browser: ok")
	for _, name := range []string{"login", "campaigns", "campaign", "dead-letters", "purge-confirm", "locations", "phone-campaign"} {
		_, err := os.Stat(filepath.Join(out, name+".png"))
		require.NoError(t, err, "screenshot %s", name)
	}
	t.Logf("screenshots in %s", out)
}
