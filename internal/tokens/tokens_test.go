package tokens_test

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/tokens"
)

func TestStatic(t *testing.T) {
	t.Parallel()
	tok, err := tokens.Static("abc").Token(context.Background(), "any")
	require.NoError(t, err)
	require.Equal(t, "abc", tok)
	_, err = tokens.Static("").Token(context.Background(), "any")
	require.ErrorIs(t, err, tokens.ErrNoToken)
}

func TestFileReloadsWithoutRestart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "tokens.json")
	require.NoError(t, os.WriteFile(path, []byte(`{"locA":"tok-a-1"}`), 0o600))
	var mu sync.Mutex
	var reloadErrs []error
	f, err := tokens.NewFile(path, func(err error) { mu.Lock(); reloadErrs = append(reloadErrs, err); mu.Unlock() })
	require.NoError(t, err)
	tok, err := f.Token(ctx, "locA")
	require.NoError(t, err)
	require.Equal(t, "tok-a-1", tok)
	_, err = f.Token(ctx, "locB")
	require.ErrorIs(t, err, tokens.ErrNoToken)

	// Rotate a token and add a location.
	require.NoError(t, os.WriteFile(path, []byte(`{"locA":"tok-a-2","locB":"tok-b-1"}`), 0o600))
	future := time.Now().Add(time.Minute)
	require.NoError(t, os.Chtimes(path, future, future))
	require.Eventually(t, func() bool {
		tok, err := f.Token(ctx, "locB")
		return err == nil && tok == "tok-b-1"
	}, 5*time.Second, 50*time.Millisecond)
	tok, _ = f.Token(ctx, "locA")
	require.Equal(t, "tok-a-2", tok)

	// A broken edit keeps the last good tokens and reports without leaking.
	require.NoError(t, os.WriteFile(path, []byte(`{"locA": "tok-a-3-secret"`), 0o600))
	later := future.Add(time.Minute)
	require.NoError(t, os.Chtimes(path, later, later))
	require.Eventually(t, func() bool {
		_, _ = f.Token(ctx, "locA") // reloads happen on use
		mu.Lock()
		defer mu.Unlock()
		return len(reloadErrs) > 0
	}, 5*time.Second, 50*time.Millisecond)
	tok, err = f.Token(ctx, "locA")
	require.NoError(t, err)
	require.Equal(t, "tok-a-2", tok)
	mu.Lock()
	require.NotContains(t, reloadErrs[0].Error(), "tok-a-3-secret")
	mu.Unlock()
	require.True(t, f.Stale(), "the file on disk is not what is in use (ghlcancel_tokens_file_stale)")

	// Fixed: loaded, and no longer stale.
	require.NoError(t, os.WriteFile(path, []byte(`{"locA":"tok-a-3","locB":"tok-b-1"}`), 0o600))
	fixed := later.Add(time.Minute)
	require.NoError(t, os.Chtimes(path, fixed, fixed))
	require.Eventually(t, func() bool {
		tok, _ := f.Token(ctx, "locA")
		return tok == "tok-a-3"
	}, 5*time.Second, 50*time.Millisecond)
	require.False(t, f.Stale())
}

// TestFileTrimsTokensAndRechecksForAMissingOne: a token written with its
// line break (jq --rawfile, a secret file) is trimmed, not sent as a header
// Go refuses to build ("network error", retried for a day). A reload to
// {} keeps the tokens loaded. A location added to the file is found by the
// next lookup that misses it, within the check interval: a requeue right
// after the edit is not dead-lettered no_token again.
func TestFileTrimsTokensAndRechecksForAMissingOne(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "tokens.json")
	require.NoError(t, os.WriteFile(path, []byte(`{"locA":" tok-a\n"}`), 0o600))
	var mu sync.Mutex
	var reloadErrs []error
	f, err := tokens.NewFile(path, func(err error) { mu.Lock(); reloadErrs = append(reloadErrs, err); mu.Unlock() })
	require.NoError(t, err)
	require.NoError(t, f.RequireTokens(), "the only source, as with no OAuth")
	tok, err := f.Token(ctx, "locA")
	require.NoError(t, err)
	require.Equal(t, "tok-a", tok)
	_, err = f.Token(ctx, "locB")
	require.ErrorIs(t, err, tokens.ErrNoToken)

	// The operator adds locB and requeues at once (the regular check is
	// every 2 s): the lookup that misses checks the file again.
	time.Sleep(150 * time.Millisecond)
	require.NoError(t, os.WriteFile(path, []byte(`{"locA":"tok-a","locB":"tok-b"}`), 0o600))
	future := time.Now().Add(time.Minute)
	require.NoError(t, os.Chtimes(path, future, future))
	tok, err = f.Token(ctx, "locB")
	require.NoError(t, err, "found at the first lookup after the edit")
	require.Equal(t, "tok-b", tok)

	// Emptied by mistake: the tokens loaded stay, and the error says so.
	require.NoError(t, os.WriteFile(path, []byte(`{}`), 0o600))
	later := future.Add(time.Minute)
	require.NoError(t, os.Chtimes(path, later, later))
	time.Sleep(150 * time.Millisecond)
	_, err = f.Token(ctx, "locC") // a miss checks the file
	require.ErrorIs(t, err, tokens.ErrNoToken)
	for range 2 { // more misses: the same broken version is not read or reported again
		time.Sleep(150 * time.Millisecond)
		_, err = f.Token(ctx, "locC")
		require.ErrorIs(t, err, tokens.ErrNoToken)
	}
	tok, err = f.Token(ctx, "locB")
	require.NoError(t, err)
	require.Equal(t, "tok-b", tok)
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, reloadErrs, 1, "reported once for this version of the file")
	require.Contains(t, reloadErrs[0].Error(), "holds no token")
	require.Contains(t, reloadErrs[0].Error(), "keeping 2 loaded tokens")

	// A file with no token is fine beside OAuth (locations by pair or
	// agency), but not as the only source.
	empty := filepath.Join(t.TempDir(), "empty.json")
	require.NoError(t, os.WriteFile(empty, []byte(`null`), 0o600))
	g, err := tokens.NewFile(empty, nil)
	require.NoError(t, err)
	require.Zero(t, g.Len())
	require.ErrorIs(t, g.RequireTokens(), tokens.ErrNoTokens)
}

func TestFileRejectsBadContent(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct{ content, says string }{
		"not json":     {`locA=s3cr3t`, "invalid JSON at line 1, column 1"},
		"array":        {`["s3cr3t"]`, "not a JSON object"},
		"empty token":  {`{"s3cr3t":""}`, "empty location id or token"},
		"number token": {`{"locA":12, "locB":"s3cr3t"}`, `location "locA": its token is not a string`},
		"unclosed":     {`{"locA":12, "locB":"s3cr3t"`, "invalid JSON"},
		// An edit that breaks the file: where, never what.
		"trailing comma": {"{\n  \"locA\": \"s3cr3t\",\n}", "invalid JSON at line 3, column 1"},
		// A location id no task has: it loaded, showed in tokens list,
		// and its cancels dead-lettered no_token.
		"space in the id":  {`{"locA ":"s3cr3t"}`, `location id "locA "`},
		"token as the key": {`{"s3cr3t.payload.sig":"locA"}`, "(not shown: not an id)"},
		// A Private Integration Token passes the id check: never quoted.
		"pit as the key":            {`{"pit-s3cr3t-0000-1111":"locA"}`, "a key looks like a token (pit-...)"},
		"pit with a space, the key": {`{" pit-s3cr3t-0000-1111 ":"locA"}`, "(not shown: not an id)"},
		"pit twice":                 {`{"pit-s3cr3t-1":"locA","pit-s3cr3t-1":"locB"}`, "(not shown: not an id) is in it twice"},
		"twice":                     {`{"locA":"s3cr3t","locA":"s3cr3t2"}`, `location "locA" is in it twice`},
		// Characters no Authorization header can carry.
		"inner line break": {`{"locA":"s3cr3t\nmore"}`, `location "locA"`},
		"inner space":      {`{"locA":"s3cr3t more"}`, `location "locA"`},
		"non-ASCII":        {`{"locA":"s3cr3té"}`, `location "locA"`},
	} {
		path := filepath.Join(t.TempDir(), "t.json")
		require.NoError(t, os.WriteFile(path, []byte(tc.content), 0o600))
		_, err := tokens.NewFile(path, nil)
		require.Error(t, err, name)
		require.NotContains(t, err.Error(), "s3cr3t", name)
		require.Contains(t, err.Error(), tc.says, name)
	}
}
