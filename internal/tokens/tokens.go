// Package tokens supplies the bearer token for a location. Tokens never
// leave this package except as the Authorization header of an API call: they
// are not logged, not put in task payloads, errors or metrics.
package tokens

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ghlcancel/ghlcancel/internal/ghl"
)

// ErrNoToken means no token is configured for the location. It is terminal:
// the task is dead-lettered with reason no_token.
var ErrNoToken = errors.New("no token configured for this location")

// Source returns the token to use for a location.
type Source interface {
	Token(ctx context.Context, location string) (string, error)
}

// Static is one token for every location (GHL_TOKEN): a Private
// Integration Token or an access token managed outside ghlcancel.
type Static string

// Token returns the static token.
func (s Static) Token(context.Context, string) (string, error) {
	if s == "" {
		return "", ErrNoToken
	}
	return string(s), nil
}

// File reads a JSON object {"locationId": "token", ...} (GHL_TOKENS_FILE)
// and reloads it when its modification time or size changes, checked at
// most once per CheckEvery. A file that fails to load keeps the previous
// tokens in force and reports the error through OnError.
type File struct {
	path       string
	checkEvery time.Duration
	onError    func(error)

	mu        sync.RWMutex
	tokens    map[string]string
	modTime   time.Time
	size      int64
	lastCheck time.Time
	// The version of the file that last failed to load, and when a failure
	// was last reported: a broken file is read and reported once per
	// change (a missing one once per checkEvery), not at every lookup that
	// misses a token.
	badMod     time.Time
	badSize    int64
	lastReport time.Time
	// requireTokens: the file is the only token source, so a version that
	// holds none is refused like a broken one (see RequireTokens).
	requireTokens bool
	// stale: the file on disk could not be loaded (broken, or gone) and an
	// older version is in use (see Stale).
	stale bool
}

// Stale says whether the file on disk is not what is in use: its last
// version could not be loaded (not JSON, an id no location has...) or it is
// gone, so the last good version still answers. An edit that broke the
// file used to show only as a log line while its new tokens never applied.
//
// It checks the file first (at most every check interval, as a lookup
// does): a worker taking no tasks looks up no token, and its broken file
// must still read stale when the metric is scraped.
func (f *File) Stale() bool {
	f.maybeReload(f.checkEvery)
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.stale
}

// ErrNoTokens: the tokens file holds no token while it is the only source.
var ErrNoTokens = errors.New("holds no token (want a JSON object of location id to token)")

// RequireTokens makes a reload to a file that holds no token ({}, null) a
// failure that keeps the tokens loaded: with no other source every cancel
// would be dead-lettered no_token. It fails when the file holds none now.
func (f *File) RequireTokens() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.tokens) == 0 {
		return fmt.Errorf("tokens file %s: %w", f.path, ErrNoTokens)
	}
	f.requireTokens = true
	return nil
}

// FileCheckEveryDefault is how often the tokens file is checked for changes.
const FileCheckEveryDefault = 2 * time.Second

// NewFile loads path. It fails if the file cannot be read or parsed, so a
// worker never starts with no tokens by mistake.
func NewFile(path string, onError func(error)) (*File, error) {
	f := &File{path: path, checkEvery: FileCheckEveryDefault, onError: onError}
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("tokens file: %w", err)
	}
	m, err := readFile(path)
	if err != nil {
		return nil, err
	}
	f.tokens, f.modTime, f.size, f.lastCheck = m, st.ModTime(), st.Size(), time.Now()
	return f, nil
}

// Len returns how many locations have a token.
func (f *File) Len() int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return len(f.tokens)
}

func readFile(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tokens file: %w", err)
	}
	var m map[string]string
	if err := json.Unmarshal(b, &m); err != nil {
		// The JSON error may quote the file's content (a token): say where
		// it is, and which location, never what.
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		where := ""
		switch {
		case errors.As(err, &se):
			line, col := lineCol(b, se.Offset)
			where = fmt.Sprintf(" (invalid JSON at line %d, column %d)", line, col)
		case errors.As(err, &te):
			if k := nonStringValue(b); k != "" {
				where = fmt.Sprintf(" (location %s: its token is not a string)", safeID(k))
			}
		}
		return nil, fmt.Errorf("tokens file %s: not a JSON object of location id to token strings%s", path, where)
	}
	if m == nil {
		m = map[string]string{} // null
	}
	if dup := duplicateKey(b); dup != "" {
		return nil, fmt.Errorf("tokens file %s: location %s is in it twice (only one token can apply)", path, safeID(dup))
	}
	for loc, tok := range m {
		if loc == "" || tok == "" {
			return nil, fmt.Errorf("tokens file %s: empty location id or token", path)
		}
		// A location id no task can have (a space around it, a typo'd
		// character) would load, show in tokens list, and never be used:
		// its cancels dead-letter no_token.
		if err := ghl.ValidateID(loc); err != nil {
			return nil, fmt.Errorf("tokens file %s: location id %s: %w", path, safeID(loc), err)
		}
		// A Private Integration Token as the key (the file written token
		// -> location): a location id never has this form.
		if looksLikeToken(loc) {
			return nil, fmt.Errorf("tokens file %s: a key looks like a token (pit-...), not a location id: the file maps location id -> token", path)
		}
		// A token written with its line break (jq --rawfile, a secret
		// file) is trimmed; anything else a header cannot carry is refused.
		tok = strings.TrimSpace(tok)
		if err := ghl.CheckToken(tok); err != nil {
			return nil, fmt.Errorf("tokens file %s: location %s: %w", path, safeID(loc), err)
		}
		m[loc] = tok
	}
	return m, nil
}

// safeID quotes a tokens file's key for an error when it is an id but
// for spaces around it; anything else may be a token put in the wrong
// place, and is not repeated.
func safeID(key string) string {
	if k := strings.TrimSpace(key); ghl.ValidateID(k) == nil && !looksLikeToken(k) {
		return fmt.Sprintf("%q", key)
	}
	return "(not shown: not an id)"
}

// looksLikeToken: a Private Integration Token (pit-<uuid>) passes
// ghl.ValidateID, so an error that quotes a key it is must not.
func looksLikeToken(key string) bool {
	return strings.HasPrefix(strings.ToLower(strings.TrimSpace(key)), "pit-")
}

// nonStringValue returns the first key (in sorted order) of the JSON
// object b whose value is not a string, or "".
func nonStringValue(b []byte) string {
	var raw map[string]json.RawMessage
	if json.Unmarshal(b, &raw) != nil {
		return ""
	}
	for _, k := range slices.Sorted(maps.Keys(raw)) {
		if v := bytes.TrimSpace(raw[k]); len(v) == 0 || v[0] != '"' {
			return k
		}
	}
	return ""
}

// lineCol is the 1-based line and column of byte offset off in b.
func lineCol(b []byte, off int64) (line, col int) {
	off = min(max(off, 0), int64(len(b)))
	prefix := b[:off]
	line = bytes.Count(prefix, []byte("\n")) + 1
	col = int(off) - (bytes.LastIndexByte(prefix, '\n') + 1)
	return line, max(col, 1)
}

// duplicateKey returns a key the JSON object b holds twice ("" if none;
// b is known to decode).
func duplicateKey(b []byte) string {
	dec := json.NewDecoder(bytes.NewReader(b))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return ""
	}
	seen := map[string]bool{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return ""
		}
		k, _ := t.(string)
		if seen[k] {
			return k
		}
		seen[k] = true
		var skip json.RawMessage
		if dec.Decode(&skip) != nil {
			return ""
		}
	}
	return ""
}

// Token returns the location's token, reloading the file if it changed.
// A location with no token has the file checked again sooner (at most
// every fileRecheckMissing, not every checkEvery): ErrNoToken dead-letters
// the task, and the operator who just added the token and requeued must
// not lose the requeue to the check interval.
func (f *File) Token(_ context.Context, location string) (string, error) {
	f.maybeReload(f.checkEvery)
	f.mu.RLock()
	tok, ok := f.tokens[location]
	f.mu.RUnlock()
	if !ok {
		f.maybeReload(min(f.checkEvery, fileRecheckMissing))
		f.mu.RLock()
		tok, ok = f.tokens[location]
		f.mu.RUnlock()
	}
	if !ok {
		return "", ErrNoToken
	}
	return tok, nil
}

// Refresh answers HighLevel's 401 for the location's token refused: the
// file is checked again at once, and a different token for the location is
// the answer. The operator who fixed a token in the file and requeued its
// dead letters at once must not have them refused again with the old token
// for up to the check interval. The same token again is ErrNotRefreshable
// (the 401 stands); a location the file no longer has, ErrNoToken.
func (f *File) Refresh(_ context.Context, location, refused string) (string, error) {
	f.maybeReload(0)
	f.mu.RLock()
	tok, ok := f.tokens[location]
	f.mu.RUnlock()
	switch {
	case !ok:
		return "", ErrNoToken
	case tok == refused:
		return "", ErrNotRefreshable
	}
	return tok, nil
}

// fileRecheckMissing is how often a lookup that found no token checks the
// file again (a location served by OAuth looks in the file first).
const fileRecheckMissing = 100 * time.Millisecond

// maybeReload reads the file again if it changed, when the last check is
// at least every ago.
func (f *File) maybeReload(every time.Duration) {
	at := time.Now()
	f.mu.RLock()
	due := at.Sub(f.lastCheck) >= every
	f.mu.RUnlock()
	if !due {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if at.Sub(f.lastCheck) < every {
		return
	}
	f.lastCheck = at
	st, err := os.Stat(f.path)
	if err != nil {
		f.stale = true
		if at.Sub(f.lastReport) >= f.checkEvery {
			f.lastReport = at
			f.report(fmt.Errorf("tokens file: %w (keeping %d loaded tokens)", err, len(f.tokens)))
		}
		return
	}
	if st.ModTime().Equal(f.modTime) && st.Size() == f.size {
		f.stale = false // unchanged (or back after being gone)
		return
	}
	if st.ModTime().Equal(f.badMod) && st.Size() == f.badSize {
		return // the same broken version as before
	}
	m, err := readFile(f.path)
	if err == nil && f.requireTokens && len(m) == 0 {
		err = fmt.Errorf("tokens file %s: %w", f.path, ErrNoTokens)
	}
	if err != nil {
		f.badMod, f.badSize, f.lastReport, f.stale = st.ModTime(), st.Size(), at, true
		f.report(fmt.Errorf("%w (keeping %d loaded tokens)", err, len(f.tokens)))
		return
	}
	f.tokens, f.modTime, f.size, f.stale = m, st.ModTime(), st.Size(), false
}

func (f *File) report(err error) {
	if f.onError != nil {
		f.onError(err)
	}
}

// ErrNotRefreshable: the token a location uses comes from a source that
// cannot replace it (an explicit token); a 401 stands.
var ErrNotRefreshable = errors.New("this location's token is set by hand and cannot be refreshed")

// Chain asks its sources in order and uses the first that has a token for
// the location: an explicit token (GHL_TOKENS_FILE), then the location's
// OAuth pair, then a token minted from the agency.
//
// When a later source answered, the chain goes straight to it for the next
// ChainRecheckEvery: an agency location would otherwise cost a Redis read
// per cancel to learn again that it has no pair of its own. A token set for
// it meanwhile (a pair, a file entry) applies within that time; a failure,
// and "no token", are never answered from memory.
type Chain struct {
	sources []Source
	recheck time.Duration
	mu      sync.Mutex
	applies map[string]applied
}

type applied struct {
	i     int
	until time.Time
}

// ChainRecheckEvery is how long a chain remembers which source applies to
// a location that earlier sources have no token for.
const ChainRecheckEvery = 5 * time.Second

// NewChain orders sources.
func NewChain(sources ...Source) *Chain {
	return &Chain{sources: sources, recheck: ChainRecheckEvery, applies: map[string]applied{}}
}

// Token returns the first source's token that is not ErrNoToken.
func (c *Chain) Token(ctx context.Context, location string) (string, error) {
	c.mu.Lock()
	ap, ok := c.applies[location]
	c.mu.Unlock()
	if ok && time.Now().Before(ap.until) {
		if tok, err := c.sources[ap.i].Token(ctx, location); err == nil {
			return tok, nil
		} // any failure is decided by the full walk: an earlier source may have a token now
	}
	for i, s := range c.sources {
		tok, err := s.Token(ctx, location)
		if errors.Is(err, ErrNoToken) && i < len(c.sources)-1 {
			continue
		}
		c.mu.Lock()
		if err == nil && i > 0 {
			c.applies[location] = applied{i: i, until: time.Now().Add(c.recheck)}
		} else {
			delete(c.applies, location)
		}
		c.mu.Unlock()
		return tok, err
	}
	return "", ErrNoToken
}

// Refresh asks the source the location's token comes from to replace it.
// A source that finds it has no token after all (its pair was deleted with
// `tokens delete` while a worker still held its access token) passes the
// refresh on to the sources after it, as Token would.
func (c *Chain) Refresh(ctx context.Context, location, refused string) (string, error) {
	for i, s := range c.sources {
		last := i == len(c.sources)-1
		if _, err := s.Token(ctx, location); errors.Is(err, ErrNoToken) && !last {
			continue
		}
		r, ok := s.(Refresher)
		if !ok {
			return "", ErrNotRefreshable
		}
		tok, err := r.Refresh(ctx, location, refused)
		if errors.Is(err, ErrNoToken) && !last {
			c.mu.Lock()
			delete(c.applies, location)
			c.mu.Unlock()
			continue
		}
		return tok, err
	}
	return "", ErrNoToken
}

// Close closes the sources that need it (an OAuth's pending pairs).
func (c *Chain) Close() error {
	var errs []error
	for _, s := range c.sources {
		if cl, ok := s.(interface{ Close() error }); ok {
			errs = append(errs, cl.Close())
		}
	}
	return errors.Join(errs...)
}

// Locations lists the locations the file has a token for.
func (f *File) Locations() []string {
	f.maybeReload(f.checkEvery)
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]string, 0, len(f.tokens))
	for loc := range f.tokens {
		out = append(out, loc)
	}
	return out
}

// Installer is a Source that acts on an app install at a location.
type Installer interface {
	Install(ctx context.Context, location string) error
}

// Install asks the source that applies to the location: a source before
// the installer with a token for it wins (nothing to mint).
func (c *Chain) Install(ctx context.Context, location string) error {
	for _, s := range c.sources {
		if in, ok := s.(Installer); ok {
			return in.Install(ctx, location)
		}
		if _, err := s.Token(ctx, location); !errors.Is(err, ErrNoToken) {
			return err
		}
	}
	return ErrNoToken
}
