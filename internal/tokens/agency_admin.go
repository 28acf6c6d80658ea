package tokens

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// AgencyInfo is the agency set with `enqueue tokens agency set`.
type AgencyInfo struct {
	Company string `json:"company_id"`
	App     string `json:"app_id,omitempty"`
	// Epoch counts the pairs set; failures remembered under an earlier
	// one are forgotten.
	Epoch int64 `json:"epoch"`
}

// SetAgency stores the agency's pair (through pairs, an OAuth built with
// Company set) and makes company and app the agency locations mint from.
// Mint failures remembered under the previous pair no longer count.
func SetAgency(ctx context.Context, pairs *OAuth, company, app, access, refresh string, expiresIn time.Duration) error {
	if !pairs.cfg.Company {
		return errors.New("agency: pairs must be built with Company set")
	}
	if err := pairs.Set(ctx, company, access, refresh, expiresIn); err != nil {
		return err
	}
	pipe := pairs.cfg.Redis.TxPipeline()
	pipe.HSet(ctx, agencyKey, "company", company)
	if app != "" { // kept when not given again
		pipe.HSet(ctx, agencyKey, "app", app)
	}
	pipe.HIncrBy(ctx, agencyKey, "epoch", 1)
	pipe.Del(ctx, agencyRevokedKey)
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("agency: store: %w", err)
	}
	return nil
}

// SetAgencyApp sets the marketplace app's id of the agency that is set,
// keeping its pair: the pair is rotated by the workers, so loading it again
// to add the app id would put back a used-up refresh token.
func SetAgencyApp(ctx context.Context, rdb redis.UniversalClient, company, app string) error {
	ai, ok, err := LoadAgency(ctx, rdb)
	switch {
	case err != nil:
		return err
	case !ok:
		return errors.New("agency: none is set: load its pair first (enqueue tokens agency set --company C --app A < pair.json)")
	case ai.Company != company:
		return fmt.Errorf("agency: the agency set is company %s, not %s", ai.Company, company)
	}
	if err := rdb.HSet(ctx, agencyKey, "app", app).Err(); err != nil {
		return fmt.Errorf("agency: store: %w", err)
	}
	return nil
}

// LoadAgency reads the agency; ok is false when none is set.
func LoadAgency(ctx context.Context, rdb redis.UniversalClient) (AgencyInfo, bool, error) {
	v, err := rdb.HMGet(ctx, agencyKey, "company", "app", "epoch").Result()
	if err != nil {
		return AgencyInfo{}, false, fmt.Errorf("agency: read: %w", err)
	}
	var ai AgencyInfo
	ai.Company, _ = v[0].(string)
	ai.App, _ = v[1].(string)
	ai.Epoch = atoi(v[2])
	return ai, ai.Company != "", nil
}

// RegistryEntry is what the registry knows of a location.
type RegistryEntry struct {
	Installed bool      `json:"installed"`
	At        time.Time `json:"at"`
	Name      string    `json:"name,omitempty"`
}

// setInstalledScript records an install (ARGV[1] "installed") or an
// uninstall at ARGV[2] (unix ms) unless the registry holds a later event;
// KEYS: registry, the minted record, the remembered failure. With ARGV[5]
// "1" the minted token is forgotten (its generation moves on, so a mint
// begun before cannot store over it); a remembered failure always is.
// Returns 1 if written, 0 if a later event was kept, 2 if this very event
// is recorded already (a redelivery: nothing is forgotten again).
var setInstalledScript = redis.NewScript(`
local cur = redis.call("HGET", KEYS[1], ARGV[4])
if cur then
  local state, at = string.match(cur, "^(%a+)|(%d+)|")
  at = tonumber(at or "0")
  if at > tonumber(ARGV[2]) then return 0 end
  if at == tonumber(ARGV[2]) and state == ARGV[1] then return 2 end
end
redis.call("HSET", KEYS[1], ARGV[4], ARGV[1] .. "|" .. ARGV[2] .. "|" .. ARGV[3])
if ARGV[5] == "1" and redis.call("HDEL", KEYS[2], "ct") == 1 then redis.call("HINCRBY", KEYS[2], "gen", 1) end
redis.call("DEL", KEYS[3])
return 1`)

// SetInstalled records that a listing found the app installed at a
// location (installed true), or an UNINSTALL (false), at a time. An event
// older than the one recorded is ignored (webhooks arrive out of order).
// Uninstalling forgets the location's minted token; its tasks are
// dead-lettered not_installed until it is installed again.
func SetInstalled(ctx context.Context, rdb redis.UniversalClient, location, name string, installed bool, at time.Time) (bool, error) {
	return setInstalled(ctx, rdb, location, name, installed, !installed, at)
}

// RecordAppEvent records an INSTALL (installed true) or UNINSTALL webhook:
// like SetInstalled, and the location's stored minted token is forgotten
// either way (a reinstall makes earlier tokens useless). recorded is false
// when a later event of the location is recorded; a redelivered event is
// recorded (true) and changes nothing.
func RecordAppEvent(ctx context.Context, rdb redis.UniversalClient, location string, installed bool, at time.Time) (recorded bool, err error) {
	return setInstalled(ctx, rdb, location, "", installed, true, at)
}

func setInstalled(ctx context.Context, rdb redis.UniversalClient, location, name string, installed, forget bool, at time.Time) (bool, error) {
	state := "uninstalled"
	if installed {
		state = "installed"
	}
	n, err := setInstalledScript.Run(ctx, rdb, []string{registryKey, mintKey(location), mintFailKey(location)},
		state, at.UnixMilli(), strings.ReplaceAll(name, "|", " "), location, map[bool]string{true: "1", false: "0"}[forget]).Int()
	if err != nil {
		return false, fmt.Errorf("agency: record install: %w", err)
	}
	return n != 0, nil
}

// Registry returns the locations INSTALL/UNINSTALL webhooks and listings
// recorded.
func Registry(ctx context.Context, rdb redis.UniversalClient) (map[string]RegistryEntry, error) {
	all, err := rdb.HGetAll(ctx, registryKey).Result()
	if err != nil {
		return nil, fmt.Errorf("agency: read registry: %w", err)
	}
	out := make(map[string]RegistryEntry, len(all))
	for loc, v := range all {
		if e, ok := parseEntry(v); ok {
			out[loc] = e
		}
	}
	return out, nil
}

// parseEntry reads "installed|unix ms|name" or "uninstalled|unix ms|".
func parseEntry(v string) (RegistryEntry, bool) {
	parts := strings.SplitN(v, "|", 3)
	if len(parts) != 3 {
		return RegistryEntry{}, false
	}
	ms, _ := strconv.ParseInt(parts[1], 10, 64)
	return RegistryEntry{Installed: parts[0] == "installed", At: time.UnixMilli(ms), Name: parts[2]}, true
}

// forgetScript: KEYS the registry, the location's failure memo, the
// agency's revoked memo; ARGV the location. An "uninstalled" entry goes
// too: HighLevel decides at the next mint (the INSTALL webhook may have
// been missed).
var forgetScript = redis.NewScript(`
redis.call("DEL", KEYS[2], KEYS[3])
local cur = redis.call("HGET", KEYS[1], ARGV[1])
if cur and string.sub(cur, 1, 12) == "uninstalled|" then redis.call("HDEL", KEYS[1], ARGV[1]) end
return 1`)

// ForgetMintFailures forgets what made mints fail for the locations (a
// remembered refusal, an agency refusal, an uninstall recorded), so that
// requeued tasks ask HighLevel at once: the operator fixed the cause.
func ForgetMintFailures(ctx context.Context, rdb redis.UniversalClient, locations []string) error {
	pipe := rdb.Pipeline()
	for _, l := range locations { // one script per location: different slots on a cluster
		forgetScript.Eval(ctx, pipe, []string{registryKey, mintFailKey(l), agencyRevokedKey}, l)
	}
	if len(locations) == 0 {
		return nil
	}
	_, err := pipe.Exec(ctx)
	return err
}

// MintedExpiry returns the expiry of the locations' stored minted tokens.
func MintedExpiry(ctx context.Context, rdb redis.UniversalClient, locations []string) (map[string]time.Time, error) {
	pipe := rdb.Pipeline()
	cmds := make([]*redis.SliceCmd, len(locations))
	for i, l := range locations {
		cmds[i] = pipe.HMGet(ctx, mintKey(l), "exp", "ct")
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	out := map[string]time.Time{}
	for i, c := range cmds {
		v := c.Val()
		// A token forgotten (an UNINSTALL) keeps its expiry field but no
		// token: it has none.
		if len(v) != 2 || v[1] == nil || v[1] == "" {
			continue
		}
		if s, ok := v[0].(string); ok {
			if ms, err := strconv.ParseInt(s, 10, 64); err == nil && ms > 0 {
				out[locations[i]] = time.UnixMilli(ms)
			}
		}
	}
	return out, nil
}

// InstalledLocation is one entry of GET /oauth/installedLocations.
type InstalledLocation struct {
	ID          string `json:"_id"`
	Name        string `json:"name"`
	Address     string `json:"address,omitempty"`
	IsInstalled bool   `json:"isInstalled"`
	InstalledAt string `json:"installedAt,omitempty"`
}

// installedTries bounds the 429 waits of a listing page.
const installedTries = 5

// Installed pages GET /oauth/installedLocations (100 per page, installed
// only) and returns every location the agency's app is installed at,
// recording them as installed in the registry. progress, if set, is called
// after each page with the count so far and HighLevel's total.
func (a *Agency) Installed(ctx context.Context, progress func(n, total int)) ([]InstalledLocation, error) {
	ai, ok, err := LoadAgency(ctx, a.cfg.Redis)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, errors.New("no agency is set: load its pair with `enqueue tokens agency set --company C --app A`")
	}
	if ai.App == "" {
		return nil, errors.New("the agency has no app id (HighLevel needs it to list installs): set it with `enqueue tokens agency app --company C --app A` (keeps the stored pair)")
	}
	var out []InstalledLocation
	seen := map[string]bool{}
	for skip := 0; ; {
		q := url.Values{"companyId": {ai.Company}, "appId": {ai.App}, "isInstalled": {"true"},
			"skip": {strconv.Itoa(skip)}, "limit": {strconv.Itoa(installedPageMax)}}
		var page struct {
			Locations []InstalledLocation `json:"locations"`
			Count     int                 `json:"count"`
		}
		var status int
		var msg string
		for try := 1; ; try++ {
			status, msg, err = a.agencyCall(ctx, ai.Company, http.MethodGet, "/oauth/installedLocations", q, &page)
			var w *mintWait
			if errors.As(err, &w) && try < installedTries {
				select {
				case <-time.After(w.after):
					continue
				case <-ctx.Done():
					return nil, ctx.Err()
				}
			}
			break
		}
		if err != nil {
			return nil, fmt.Errorf("listing installed locations: %w", err)
		}
		if status != http.StatusOK {
			return nil, fmt.Errorf("listing installed locations: HighLevel answered %d: %s (check the company and app ids: `enqueue tokens agency set`)", status, msg)
		}
		now := time.Now()
		for _, l := range page.Locations {
			if l.ID == "" || seen[l.ID] {
				continue
			}
			seen[l.ID] = true
			out = append(out, l)
			if _, err := SetInstalled(ctx, a.cfg.Redis, l.ID, l.Name, true, now); err != nil {
				return nil, err
			}
		}
		skip += len(page.Locations)
		if progress != nil {
			progress(len(out), max(page.Count, len(out)))
		}
		// count is "total location count under the company" and not
		// required: a short page ends the listing as well.
		if len(page.Locations) < installedPageMax || (page.Count > 0 && skip >= page.Count) {
			return out, nil
		}
	}
}

// RegistryEntryFor returns what the registry knows of one location.
func RegistryEntryFor(ctx context.Context, rdb redis.UniversalClient, location string) (RegistryEntry, bool, error) {
	v, err := rdb.HGet(ctx, registryKey, location).Result()
	if errors.Is(err, redis.Nil) {
		return RegistryEntry{}, false, nil
	}
	if err != nil {
		return RegistryEntry{}, false, fmt.Errorf("agency: read registry: %w", err)
	}
	e, ok := parseEntry(v)
	return e, ok, nil
}
