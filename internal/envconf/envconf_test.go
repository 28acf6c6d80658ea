package envconf

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestEnv(t *testing.T) {
	t.Parallel()
	vars := map[string]string{"N": "7", "F": "0.5", "D": "2s", "S": "x", "BADN": "lots", "BADD": "30", "BADF": "half"}
	e := New(func(k string) string { return vars[k] })
	require.Equal(t, 7, e.Int("N", 1))
	require.Equal(t, 1, e.Int("UNSET", 1))
	require.Equal(t, 0.5, e.Float("F", 1))
	require.Equal(t, 2*time.Second, e.Duration("D", time.Hour))
	require.Equal(t, "x", e.String("S", "d"))
	require.Equal(t, "d", e.String("UNSET", "d"))
	require.NoError(t, e.Err())

	e.Int("BADN", 1)
	e.Duration("BADD", time.Hour)
	e.Float("BADF", 1)
	err := e.Err()
	require.ErrorContains(t, err, `BADN="lots": want an integer`)
	require.ErrorContains(t, err, `BADD="30": want a duration with a unit`)
	require.ErrorContains(t, err, `BADF="half": want a number`)
}
