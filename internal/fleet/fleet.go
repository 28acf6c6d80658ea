// Package fleet lets the worker processes sharing one Redis see each
// other's settings. Several settings act on state every worker shares (a
// location's admission log, its cool-downs and parking, campaign and dead
// letter expiries, how a "not found" is settled), so one worker configured
// differently changes what the whole fleet does: an audit saw one worker
// with RATE_LIMIT=off bring 255 429s on a location the others paced, and
// one with DEAD_LETTER_RETENTION=30s delete every worker's dead letters at
// its start. Nothing compared them. Each worker now announces its settings
// (Announce, every AnnounceEvery), compares them with the live others'
// (Differences) and says where they differ; the dead letters' retention is
// the longest of the live workers' (MaxDuration).
package fleet

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// The hashes of live processes, by kind: id -> announcement (JSON).
const (
	Workers = "ghlcancel:fleet:workers"
	Intakes = "ghlcancel:fleet:intakes"
)

const (
	// AnnounceEvery is how often a worker announces itself.
	AnnounceEvery = 30 * time.Second
	// Stale: an announcement older than this is a worker gone (killed, or
	// stopped without leaving); it is removed when read.
	Stale = 3 * AnnounceEvery
)

// Settings are a worker's settings that must agree across the fleet:
// name (the environment variable's) -> canonical value.
type Settings map[string]string

// announceScript writes ARGV[2] (the settings' JSON) under id ARGV[1],
// stamped with Redis's clock: liveness never compares two hosts' clocks.
var announceScript = redis.NewScript(`
local t = redis.call("TIME")
redis.call("HSET", KEYS[1], ARGV[1], (t[1] * 1000 + math.floor(t[2] / 1000)) .. "|" .. ARGV[2])
return 1`)

// liveScript returns the announcements (id, JSON, ...) at most ARGV[1] ms
// old by Redis's clock and removes the others in the same step (one that
// was renewed meanwhile is never removed).
var liveScript = redis.NewScript(`
local t = redis.call("TIME")
local cutoff = t[1] * 1000 + math.floor(t[2] / 1000) - tonumber(ARGV[1])
local all, out = redis.call("HGETALL", KEYS[1]), {}
for i = 1, #all, 2 do
  local at, body = string.match(all[i + 1], "^(%d+)|(.*)$")
  if at and tonumber(at) >= cutoff then
    out[#out + 1] = all[i]
    out[#out + 1] = body
  else
    redis.call("HDEL", KEYS[1], all[i])
  end
end
return out`)

// longestScript keeps in KEYS[1] each duration (ms, the member) said,
// scored by when it runs out (Redis's time plus itself, from the last
// process that said it), and returns the longest not run out: a 14-day
// worker under a stopped 30-day one is still kept once the 30 days end
// (review: one value forgot it).
var longestScript = redis.NewScript(`
local t = redis.call("TIME")
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local own = tonumber(ARGV[1])
redis.call("ZADD", KEYS[1], "GT", now + own, own)
redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", "(" .. now)
local longest = 0
for _, m in ipairs(redis.call("ZRANGE", KEYS[1], 0, -1)) do
  longest = math.max(longest, tonumber(m))
end
return longest`)

// Registry announces one process and reads the others of its kind.
type Registry struct {
	rdb   redis.UniversalClient
	key   string // Workers or Intakes
	id    string
	own   Settings
	stale time.Duration // Stale (tests shorten it)
}

// New returns the Registry of process id (host:pid and a suffix) among
// those of key (Workers or Intakes), with settings own.
func New(rdb redis.UniversalClient, key, id string, own Settings) *Registry {
	return &Registry{rdb: rdb, key: key, id: id, own: maps.Clone(own), stale: Stale}
}

// Announce writes this process's settings, stamped with Redis's time.
func (r *Registry) Announce(ctx context.Context) error {
	b, err := json.Marshal(r.own)
	if err != nil {
		return err
	}
	return announceScript.Run(ctx, r.rdb, []string{r.key}, r.id, string(b)).Err()
}

// Leave removes this worker's announcement (a clean stop).
func (r *Registry) Leave(ctx context.Context) error { return r.rdb.HDel(ctx, r.key, r.id).Err() }

// Peers returns the live processes' settings, this one's included, by id;
// announcements older than Stale (or unreadable) are removed.
func (r *Registry) Peers(ctx context.Context) (map[string]Settings, error) { return r.Live(ctx, r.key) }

// Live returns the live processes of kind key (Workers or Intakes) by id,
// removing announcements older than Stale (or unreadable).
func (r *Registry) Live(ctx context.Context, key string) (map[string]Settings, error) {
	all, err := liveScript.Run(ctx, r.rdb, []string{key}, r.stale.Milliseconds()).StringSlice()
	if err != nil {
		return nil, err
	}
	out := make(map[string]Settings, len(all)/2)
	for i := 0; i+1 < len(all); i += 2 {
		var st Settings
		if json.Unmarshal([]byte(all[i+1]), &st) == nil {
			out[all[i]] = st
		}
	}
	return out, nil
}

// KeepLongest records d for setting name (a retention) and returns the
// longest recorded by any process within its own duration: what a
// process that stopped said is kept as long as it said to keep things.
func KeepLongest(ctx context.Context, rdb redis.UniversalClient, name string, d time.Duration) (time.Duration, error) {
	ms, err := longestScript.Run(ctx, rdb, []string{"ghlcancel:fleet:longest:" + name}, d.Milliseconds()).Int64()
	return time.Duration(ms) * time.Millisecond, err
}

// Difference is one setting on which live workers disagree.
type Difference struct {
	Setting string
	// Values: value -> the workers that have it (sorted); a worker that
	// does not announce the setting (an older version) is not counted.
	Values map[string][]string
}

// String says it for a log line: RATE_LIMIT: "100/10s" (host-a:1, host-b:2), "off" (host-c:3).
func (d Difference) String() string {
	var parts []string
	for _, v := range slices.Sorted(maps.Keys(d.Values)) {
		parts = append(parts, fmt.Sprintf("%q (%s)", v, strings.Join(d.Values[v], ", ")))
	}
	return d.Setting + ": " + strings.Join(parts, ", ")
}

// Differences compares the settings of the live workers, this one's
// included, setting by setting (those this worker announces), sorted.
func Differences(peers map[string]Settings, names []string) []Difference {
	var out []Difference
	for _, name := range names {
		values := map[string][]string{}
		for id, s := range peers {
			if v, ok := s[name]; ok {
				values[v] = append(values[v], id)
			}
		}
		if len(values) > 1 {
			for _, ids := range values {
				slices.Sort(ids)
			}
			out = append(out, Difference{Setting: name, Values: values})
		}
	}
	return out
}

// Summary is Differences for a log line and a gauge: the settings that
// differ, and each difference said, joined by "; " ("" when none).
func Summary(peers map[string]Settings, names []string) (differ map[string]bool, line string) {
	differ = map[string]bool{}
	var lines []string
	for _, d := range Differences(peers, names) {
		differ[d.Setting] = true
		lines = append(lines, d.String())
	}
	return differ, strings.Join(lines, "; ")
}

// Names returns the settings this worker announces, sorted.
func (r *Registry) Names() []string { return slices.Sorted(maps.Keys(r.own)) }

// MaxDuration is the longest value of a duration setting among the live
// workers (values that do not parse are skipped), or zero when none has it.
func MaxDuration(peers map[string]Settings, name string) time.Duration {
	var longest time.Duration
	for _, s := range peers {
		if d, err := time.ParseDuration(s[name]); err == nil && d > longest {
			longest = d
		}
	}
	return longest
}

// Duration is the canonical value of a duration setting.
func Duration(d time.Duration) string { return d.String() }

// Bool is the canonical value of an on/off setting.
func Bool(on bool) string {
	if on {
		return "on"
	}
	return "off"
}

// Float is the canonical value of a number setting.
func Float(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }
