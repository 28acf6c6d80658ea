package contract_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/contract"
)

// TestSpecMatchesShared fails when the vendored spec drifts from the copy in
// ../shared/highlevel-api (present on developer machines and in CI).
func TestSpecMatchesShared(t *testing.T) {
	t.Parallel()
	shared := filepath.Join(contract.SpecDir(), "..", "..", "..", "..", "shared", "highlevel-api")
	if _, err := os.Stat(shared); err != nil {
		t.Skipf("no shared spec at %s", shared)
	}
	for _, f := range []string{"apps/conversations.json", "apps/oauth.json", "common/common-schemas.json"} {
		want, err := os.ReadFile(filepath.Join(shared, f))
		require.NoError(t, err)
		got, err := os.ReadFile(filepath.Join(contract.SpecDir(), f))
		require.NoError(t, err)
		require.Equal(t, string(want), string(got), "%s differs from shared/: copy it again", f)
	}
}

func TestLoads(t *testing.T) {
	t.Parallel()
	for name, load := range map[string]func() (*contract.Validator, error){"New": contract.New, "NewOAuth": contract.NewOAuth} {
		v, err := load()
		require.NoError(t, err, name)
		require.Empty(t, v.Problems(), name)
	}
}
