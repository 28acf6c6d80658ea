package main

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestTakenPortLeavesTheFiles: a second sandbox started where one runs
// (its port taken) must not replace the running one's tokens and ids: a
// worker reading the tokens file would send the new tokens to the old
// sandbox, and every cancel was dead-lettered unauthorized.
func TestTakenPortLeavesTheFiles(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	dir := t.TempDir()
	toks, ids := filepath.Join(dir, "tokens.json"), filepath.Join(dir, "ids.csv")
	require.NoError(t, os.WriteFile(toks, []byte(`{"loc":"running-sandbox-token"}`), 0o600))
	require.NoError(t, os.WriteFile(ids, []byte("message_id,location_id,kind\nrunning,loc,message\n"), 0o644))

	err = run(context.Background(), []string{"-addr", ln.Addr().String(), "-tokens-out", toks, "-ids-out", ids, "-messages", "2", "-locations", "1"}, io.Discard, io.Discard)
	require.ErrorContains(t, err, "choose another with -addr")
	b, err := os.ReadFile(toks)
	require.NoError(t, err)
	require.Equal(t, `{"loc":"running-sandbox-token"}`, string(b))
	b, err = os.ReadFile(ids)
	require.NoError(t, err)
	require.Equal(t, "message_id,location_id,kind\nrunning,loc,message\n", string(b))
}
