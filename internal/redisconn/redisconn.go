// Package redisconn opens the Redis client every command uses from one URL:
//
//	redis://[:password@]host:port/db                         one server
//	redis://[:password@]s1:26379/db?master_name=mymaster&addr=s2:26379&addr=s3:26379
//	                                                          Sentinel: the host and each addr
//	                                                          are sentinels; the client follows
//	                                                          the master through failovers
//
// Both give a *redis.Client, so callers do not care which it is.
package redisconn

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Open parses url and returns a client with at least poolSize connections.
// addr describes where it points, for messages (never the password).
func Open(rawURL string, poolSize int) (rdb *redis.Client, addr string, err error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, "", fmt.Errorf("redis url: %w (want redis://host:port/db)", err)
	}
	if u.Query().Has("master_name") {
		fo, err := redis.ParseFailoverURL(rawURL)
		if err != nil {
			return nil, "", fmt.Errorf("redis sentinel url: %w (want redis://sentinel1:26379/0?master_name=NAME&addr=sentinel2:26379)", err)
		}
		fo.PoolSize = max(fo.PoolSize, poolSize)
		return redis.NewFailoverClient(fo), fmt.Sprintf("sentinel master %q via %v", fo.MasterName, fo.SentinelAddrs), nil
	}
	opt, err := redis.ParseURL(rawURL)
	if err != nil {
		return nil, "", fmt.Errorf("redis url: %w (want redis://host:port/db)", err)
	}
	opt.PoolSize = max(opt.PoolSize, poolSize)
	return redis.NewClient(opt), opt.Addr, nil
}

// Misconfigured says what in REDIS_URL is wrong when err is an answer no
// retry can change: a wrong or missing password, a database number the
// server does not have, TLS against a plain Redis (or the reverse), or a
// server that does not speak Redis. ok is false for anything that may pass
// (a refused connection, a timeout, a Redis that is loading).
func Misconfigured(err error) (hint string, ok bool) {
	if err == nil {
		return "", false
	}
	msg := err.Error()
	var rh tls.RecordHeaderError
	switch {
	case strings.Contains(msg, "WRONGPASS"), strings.Contains(msg, "NOAUTH"), strings.Contains(msg, "invalid password"),
		strings.Contains(msg, "without any password configured"), strings.Contains(msg, "but no password is set"):
		return "the password in REDIS_URL is wrong or missing (redis://:PASSWORD@host:port/db)", true
	case strings.Contains(msg, "DB index is out of range"):
		return "the database number in REDIS_URL is beyond the server's `databases` setting", true
	case errors.As(err, &rh), strings.Contains(msg, "first record does not look like a TLS handshake"),
		strings.Contains(msg, "x509: "):
		return "TLS does not match: rediss:// needs a Redis that speaks TLS, redis:// one that does not (or the certificate is refused)", true
	case strings.Contains(msg, "can't parse"), strings.Contains(msg, "invalid reply"):
		return "the server at REDIS_URL's address does not speak Redis (a wrong port?)", true
	}
	return "", false
}

// Explain is Misconfigured, and one more mismatch no error shows: a
// rediss:// URL pointing at a plain Redis. The TLS handshake then waits
// unanswered (the server reads the ClientHello as an unfinished command)
// and fails as a timeout, like an unreachable server, so the worker and
// the intake used to wait for ever. When a rediss:// ping failed, the
// address is asked once in plain RESP (at most a second): a Redis answer
// there is the mismatch.
func Explain(ctx context.Context, rawURL string, err error) (hint string, ok bool) {
	if hint, ok := Misconfigured(err); ok || err == nil {
		return hint, ok
	}
	opt, perr := redis.ParseURL(rawURL)
	if perr != nil || opt.TLSConfig == nil {
		return "", false
	}
	if speaksPlainRedis(ctx, opt.Addr) {
		return "REDIS_URL says rediss:// (TLS), but the server at its address speaks plain Redis: use redis://", true
	}
	return "", false
}

// speaksPlainRedis sends PING in plain RESP to addr and says whether a
// Redis reply came back (+PONG, or an error such as NOAUTH). A TLS server
// answers with an alert record, or nothing.
func speaksPlainRedis(ctx context.Context, addr string) bool {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return false
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	_ = conn.SetDeadline(deadline)
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return false
	}
	buf := make([]byte, 16)
	n, _ := conn.Read(buf)
	return n > 0 && (buf[0] == '+' || buf[0] == '-')
}

// misnamed are Redis variables other tools read that ghlcancel does not.
var misnamed = []string{"REDIS_ADDR", "REDIS_HOST", "REDIS_ADDRESS", "REDIS_URI", "REDIS_SERVER", "REDIS_PASSWORD"}

// MisnamedEnv: with REDIS_URL unset (and no -redis-url given), a Redis
// variable ghlcancel does not read names the Redis meant; the default
// (127.0.0.1:6379) would be used silently: a worker serving an empty local
// Redis, tasks queued where no worker reads. It is an error naming the
// variable to set instead.
func MisnamedEnv(getenv func(string) string, flagGiven bool) error {
	if flagGiven || getenv("REDIS_URL") != "" {
		return nil
	}
	for _, k := range misnamed {
		if getenv(k) != "" {
			return fmt.Errorf("%s is set, but ghlcancel reads REDIS_URL only: set REDIS_URL=redis://[:PASSWORD@]HOST:PORT/DB "+
				"(without it the default redis://127.0.0.1:6379/0 would be used)", k)
		}
	}
	return nil
}
