package tokens

import "time"

// Internals for the tests in package tokens_test.
var (
	// StoreScriptHash is the SHA1 of the script that stores a refreshed
	// pair, so that a Redis hook can make that store fail.
	StoreScriptHash = casStore.Hash()
	RecordKey       = recordKey
	LockKey         = lockKey
	MintKey         = mintKey
)

// SetLockTTL shortens o's refresh lock TTL (and so its flusher's period);
// call it before o is used.
func SetLockTTL(o *OAuth, d time.Duration) { o.lockTTL = d }

// Flushing reports whether o's flusher goroutine runs.
func Flushing(o *OAuth) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.flushing
}

// SetChainRecheck changes how long c remembers the source that applies.
func SetChainRecheck(c *Chain, d time.Duration) { c.recheck = d }

// ExpireChainMemory makes c's memory of the source that applies to
// location due, as if its recheck time had passed.
func ExpireChainMemory(c *Chain, location string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ap, ok := c.applies[location]; ok {
		ap.until = time.Now().Add(-time.Millisecond)
		c.applies[location] = ap
	}
}
