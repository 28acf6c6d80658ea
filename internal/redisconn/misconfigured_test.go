package redisconn

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// TestMisconfigured: Redis answers no retry can change say what to fix in
// REDIS_URL; anything that may pass by itself is not one of them.
func TestMisconfigured(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want string // "" means retry
	}{
		{errors.New("WRONGPASS invalid username-password pair or user is disabled."), "password"},
		{errors.New("NOAUTH Authentication required."), "password"},
		{errors.New("ERR AUTH <password> called without any password configured for the default user."), "password"},
		{errors.New("ERR DB index is out of range"), "database number"},
		{fmt.Errorf("dial: %w", x509.UnknownAuthorityError{}), "TLS does not match"},
		{errors.New("redis: can't parse \"HTTP/1.1 400 Bad Request\""), "does not speak Redis"},
		{errors.New("dial tcp 127.0.0.1:1: connect: connection refused"), ""},
		{context.DeadlineExceeded, ""},
		{errors.New("LOADING Redis is loading the dataset in memory"), ""},
		{redis.ErrClosed, ""},
		{nil, ""},
	} {
		hint, ok := Misconfigured(tt.err)
		require.Equal(t, tt.want != "", ok, "%v", tt.err)
		require.Contains(t, hint, tt.want, "%v", tt.err)
	}
}
