package redisconn

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/ghlcancel/ghlcancel/internal/redistest"
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

// TestRedissAgainstPlainRedis: rediss:// pointing at a plain Redis fails
// as a timeout (the handshake waits unanswered); Explain names it, so the
// worker and the intake stop at start instead of waiting for ever. A
// timeout with redis://, or rediss:// where nothing listens, stays a
// "keep trying".
func TestRedissAgainstPlainRedis(t *testing.T) {
	t.Parallel()
	srv, err := redistest.Start()
	require.NoError(t, err)
	t.Cleanup(srv.Stop)
	ping := func(url string) error {
		rdb, _, err := Open(url, 1)
		require.NoError(t, err)
		defer rdb.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		return rdb.Ping(ctx).Err()
	}
	ctx := context.Background()
	url := "rediss://" + srv.Addr + "/0"
	err = ping(url)
	require.Error(t, err)
	_, plain := Misconfigured(err)
	require.False(t, plain, "the error alone says nothing: %v", err)
	hint, ok := Explain(ctx, url, err)
	require.True(t, ok, "%v", err)
	require.Contains(t, hint, "use redis://")

	// A password the server wants does not hide it (NOAUTH is an answer).
	require.NoError(t, redistest.ClientFor(t, "redis://"+srv.Addr+"/0").ConfigSet(ctx, "requirepass", "pw").Err())
	_, ok = Explain(ctx, "rediss://:pw@"+srv.Addr+"/0", context.DeadlineExceeded)
	require.True(t, ok)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closed := ln.Addr().String()
	require.NoError(t, ln.Close())
	for _, u := range []string{"rediss://" + closed + "/0", "redis://" + srv.Addr + "/0"} {
		_, ok := Explain(ctx, u, context.DeadlineExceeded)
		require.False(t, ok, u)
	}
}
