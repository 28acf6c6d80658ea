package redisconn

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// TestMisnamedEnv: another tool's Redis variable, with REDIS_URL unset and
// no -redis-url, is an error naming both; otherwise nothing is said.
func TestMisnamedEnv(t *testing.T) {
	for _, tt := range []struct {
		name      string
		env       map[string]string
		flagGiven bool
		want      string
	}{
		{"nothing set: the default, silently", nil, false, ""},
		{"REDIS_URL set", map[string]string{"REDIS_URL": "redis://r:6379/0", "REDIS_HOST": "r"}, false, ""},
		{"the flag given", map[string]string{"REDIS_ADDR": "r:6379"}, true, ""},
		{"REDIS_ADDR", map[string]string{"REDIS_ADDR": "r:6379"}, false, "REDIS_ADDR is set, but ghlcancel reads REDIS_URL only"},
		{"REDIS_HOST", map[string]string{"REDIS_HOST": "r"}, false, "REDIS_HOST is set"},
		{"REDIS_PASSWORD", map[string]string{"REDIS_PASSWORD": "secret-pw"}, false, "REDIS_PASSWORD is set"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := MisnamedEnv(func(k string) string { return tt.env[k] }, tt.flagGiven)
			if tt.want == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tt.want)
			require.NotContains(t, err.Error(), "secret-pw")
		})
	}
}
