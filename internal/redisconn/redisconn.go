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
	"fmt"
	"net/url"

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
