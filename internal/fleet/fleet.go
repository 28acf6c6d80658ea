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

// Key is the hash of live workers: worker id -> announcement (JSON).
const Key = "ghlcancel:fleet:workers"

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

// announcement is what a worker writes under its id.
type announcement struct {
	At       int64    `json:"at"` // unix ms
	Settings Settings `json:"settings"`
}

// Registry announces one worker and reads the others.
type Registry struct {
	rdb redis.UniversalClient
	id  string
	own Settings
	now func() time.Time
}

// New returns the Registry of the worker id (deadletter.ThisWorker) with
// settings own.
func New(rdb redis.UniversalClient, id string, own Settings) *Registry {
	return &Registry{rdb: rdb, id: id, own: maps.Clone(own), now: time.Now}
}

// Announce writes this worker's settings with the time.
func (r *Registry) Announce(ctx context.Context) error {
	b, err := json.Marshal(announcement{At: r.now().UnixMilli(), Settings: r.own})
	if err != nil {
		return err
	}
	return r.rdb.HSet(ctx, Key, r.id, b).Err()
}

// Leave removes this worker's announcement (a clean stop).
func (r *Registry) Leave(ctx context.Context) error { return r.rdb.HDel(ctx, Key, r.id).Err() }

// Peers returns the live workers' settings, this one's included, by id;
// announcements older than Stale (or unreadable) are removed.
func (r *Registry) Peers(ctx context.Context) (map[string]Settings, error) {
	all, err := r.rdb.HGetAll(ctx, Key).Result()
	if err != nil {
		return nil, err
	}
	cutoff := r.now().Add(-Stale).UnixMilli()
	out := make(map[string]Settings, len(all))
	var gone []string
	for id, v := range all {
		var a announcement
		if json.Unmarshal([]byte(v), &a) != nil || a.At < cutoff {
			gone = append(gone, id)
			continue
		}
		out[id] = a.Settings
	}
	if len(gone) > 0 {
		// Best effort: the next read tries again.
		_ = r.rdb.HDel(ctx, Key, gone...).Err()
	}
	return out, nil
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
