package ratelimit

import (
	"context"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// FloorMaxLocations bounds the locations Floor reads (two commands and up
// to a window's allowance of log entries each); beyond it Floor says
// nothing.
const FloorMaxLocations = 1000

// Floor is the least time n more calls to locations need from now under
// the pacing the workers apply: each location's limit as HighLevel's
// headers reported it (learned), widened by margin, its log of admitted
// calls (a call waits for the limit-th latest one to leave its span) and
// its cool-down (not the daily reserve's parking, which urgent cancels
// pass). It is a floor: the calls split across the locations as well as
// the limits allow, no other traffic, no 429s, no urgent reserve (the
// caller passes the smallest margin the workers may use). The rate a
// status sees during a location's first burst says nothing of the pacing
// to come; this does (`status --watch` showed "ETA 2s" with 10 s to go).
//
// ok is false when there is nothing sure to say: no calls or no locations,
// as many calls holding a slot ahead as are pending,
// more than FloorMaxLocations, or a location with no learned limit (never
// answered yet, HighLevel sent no limit headers so the workers use their
// own RATE_LIMIT, or the workers run without pacing, which learns
// nothing). A learned location whose log is gone (idle for a while) has
// its whole allowance free.
func Floor(ctx context.Context, rdb redis.UniversalClient, locations []string, n int64, margin float64) (d time.Duration, ok bool, err error) {
	if n <= 0 || len(locations) == 0 || len(locations) > FloorMaxLocations {
		return 0, false, nil
	}
	var now *redis.TimeCmd
	hs := make([]*redis.SliceCmd, len(locations))
	if _, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		now = p.Time(ctx)
		for i, loc := range locations {
			hs[i] = p.HMGet(ctx, locKey(loc), "l", fieldCool)
		}
		return nil
	}); err != nil {
		return 0, false, err
	}
	limits := make([]Limit, len(locations))
	cools := make([]int64, len(locations))
	for i := range locations {
		v := hs[i].Val()
		s, _ := v[0].(string)
		c, p, found := strings.Cut(s, ":")
		cn, err1 := strconv.Atoi(c)
		pm, err2 := strconv.ParseInt(p, 10, 64)
		if !found || err1 != nil || err2 != nil || cn <= 0 || pm <= 0 {
			return 0, false, nil
		}
		limits[i] = Limit{N: cn, Period: time.Duration(pm) * time.Millisecond}
		// The reserve's parking (field p) is not counted: urgent cancels
		// pass it, and a floor must hold for them too (the ETA's note
		// says when the others wait until).
		if s, _ := v[1].(string); s != "" {
			cools[i], _ = strconv.ParseInt(s, 10, 64)
		}
	}
	nowUS := now.Val().UnixMicro()
	logs := make([]*redis.ZSliceCmd, len(locations))
	booked := make([]*redis.IntCmd, len(locations))
	if _, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, loc := range locations {
			logs[i] = p.ZRangeWithScores(ctx, logKey(loc), -int64(max(1, limits[i].N)), -1)
			booked[i] = p.ZCount(ctx, logKey(loc), "("+strconv.FormatInt(nowUS, 10), "+inf")
		}
		return nil
	}); err != nil {
		return 0, false, err
	}
	var ls []lane
	for i := range locations {
		ls = append(ls, lanesOf(limits[i], margin, logs[i].Val(), cools[i], nowUS)...)
		// Calls granted a slot still ahead (waiting for it in a worker; more
		// than the limit when RATE_LIMIT_MAX_WAIT is longer than the span)
		// are in the log already and, when they are the caller's, among its
		// n pending calls too: counted twice, the floor read a span too far
		// ("ETA 21s or more" with 11 s left). Taking them off n keeps it a
		// floor either way (fewer calls never need more time). A call in
		// flight (its slot just passed, its answer not yet recorded) is
		// still counted twice: the floor can then be up to a span high for
		// the last few pending calls.
		n -= booked[i].Val()
	}
	if n <= 0 {
		return 0, false, nil // every pending call may already hold its slot
	}
	return time.Duration(floorOf(ls, n, nowUS)) * time.Microsecond, true, nil
}

// lane is one of a location's N slots per span: its next free time (Redis
// µs) and its span. The k-th call after the limit-th latest admitted one
// goes a span after it, so a location is N lanes, each free once a span.
type lane struct{ next, span int64 }

// lanesOf turns a location's log (its latest limit entries, oldest first,
// scored by slot time in Redis µs) into its lanes from now.
func lanesOf(lim Limit, margin float64, log []redis.Z, cool, now int64) []lane {
	n := max(1, lim.N)
	span := int64(float64(lim.Period.Microseconds()) * (1 + margin))
	out := make([]lane, n)
	pad := n - len(log)
	for j := range out {
		next := now
		if j >= pad {
			next = max(next, int64(log[j-pad].Score)+span)
		}
		out[j] = lane{next: max(next, cool), span: span}
	}
	return out
}

// floorOf is the least t - now by which the lanes hold n calls.
func floorOf(ls []lane, n int64, now int64) int64 {
	sort.Slice(ls, func(i, j int) bool { return ls[i].next < ls[j].next })
	count := func(t int64) int64 {
		var c int64
		for _, l := range ls {
			if l.next > t {
				break
			}
			c += 1 + (t-l.next)/l.span
			if c >= n {
				return c
			}
		}
		return c
	}
	// One lane alone holds n calls by hi.
	lo, hi := now, ls[0].next+(n-1)*ls[0].span
	for lo < hi {
		mid := lo + (hi-lo)/2
		if count(mid) >= n {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo - now
}
