// Package ratelimit bounds how often one source address may do something:
// a token bucket per address, in bounded memory.
package ratelimit

import (
	"math"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// PerSource is a token bucket per source address, in bounded memory.
//
// Memory: at most maxSources buckets, plus one overflow bucket.
//
// A source is forgotten only once it has been idle long enough for its
// bucket to be full again (burst/rate, plus a second), so forgetting it
// gives it nothing it would not have had: no flood of new addresses resets
// the budget of a source that spent its own.
//
// Full table: a new source that finds the table full of busy sources gets
// no bucket of its own; it spends from the overflow bucket (same rate and
// burst), shared by every source in that situation. So whatever the number
// of addresses, Allow says yes at most (maxSources+1)·(burst + rate·t)
// times in any t, and a full table neither lets new sources through
// unlimited (fail open) nor shuts them all out (they still get one source's
// share between them).
//
// What a caller does with a no is its own: the admin API answers a failed
// authentication past the limit with 429 and logs nothing; the public side
// answers a refused source past the limit with a quiet 429 (no log line,
// no rejection event). At a full table those quiet answers are what a flood
// of new sources gets once the overflow bucket is spent, so a flood costs
// at most one source's worth of log lines beyond the tracked ones.
type PerSource struct {
	rate  rate.Limit
	burst int
	max   int
	idle  time.Duration // after this long unseen a bucket is full again

	mu       sync.Mutex
	table    map[netip.Addr]*bucket
	overflow *rate.Limiter
	swept    time.Time
}

type bucket struct {
	lim  *rate.Limiter
	seen time.Time
}

// New allows perSecond events per source with the given burst,
// tracking at most maxSources sources (see PerSource for the bound).
func New(perSecond float64, burst, maxSources int) *PerSource {
	idle := time.Duration(math.MaxInt64) // no refill: never forget
	if refill := float64(burst) / perSecond; perSecond > 0 && refill < (100*365*24*time.Hour).Seconds() {
		idle = time.Duration(refill*float64(time.Second)) + time.Second
	}
	return &PerSource{
		rate: rate.Limit(perSecond), burst: burst, max: maxSources, idle: idle,
		table:    map[netip.Addr]*bucket{},
		overflow: rate.NewLimiter(rate.Limit(perSecond), burst),
	}
}

// Source is the key a source address is limited under: an IPv4 address
// itself; an IPv6 address by its /64, the block one subscriber or one host
// is given (counting each of its 2^64 addresses apart would let one
// scanner fill the table and the logs).
func Source(a netip.Addr) netip.Addr {
	a = a.Unmap().WithZone("")
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}

// Allow spends one token of src's bucket (its Source), reporting whether
// there was one. A nil *PerSource allows everything.
func (l *PerSource) Allow(src netip.Addr, now time.Time) bool {
	if l == nil {
		return true
	}
	src = Source(src)
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.table[src]
	if !ok {
		if len(l.table) >= l.max {
			l.sweep(now)
			if len(l.table) >= l.max {
				return l.overflow.AllowN(now, 1)
			}
		}
		b = &bucket{lim: rate.NewLimiter(l.rate, l.burst)}
		l.table[src] = b
	}
	b.seen = now
	return b.lim.AllowN(now, 1)
}

// Blocked reports whether Allow(src, now) would say no, without spending a
// token: an untracked source is judged by the overflow bucket while the
// table is full.
func (l *PerSource) Blocked(src netip.Addr, now time.Time) bool {
	if l == nil {
		return false
	}
	src = Source(src)
	l.mu.Lock()
	defer l.mu.Unlock()
	if b, ok := l.table[src]; ok {
		return b.lim.TokensAt(now) < 1
	}
	return len(l.table) >= l.max && l.overflow.TokensAt(now) < 1
}

// sweep forgets sources idle long enough for their bucket to be full
// again, at most once a second (it walks the whole table).
func (l *PerSource) sweep(now time.Time) {
	if now.Sub(l.swept) < time.Second {
		return
	}
	l.swept = now
	for a, b := range l.table {
		if now.Sub(b.seen) > l.idle {
			delete(l.table, a)
		}
	}
}

// Len is the number of sources tracked.
func (l *PerSource) Len() int {
	if l == nil {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.table)
}
