// Package ratelimit bounds how often one source address may do something:
// a token bucket per address, in bounded memory.
package ratelimit

import (
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// PerSource is a token bucket per source address, bounded in memory:
// idle sources are forgotten, and when the table is full of busy ones a new
// source is refused (it is refused anyway: only rejections spend tokens).
type PerSource struct {
	rate  rate.Limit
	burst int
	max   int

	mu    sync.Mutex
	table map[netip.Addr]*bucket
	swept time.Time
}

type bucket struct {
	lim  *rate.Limiter
	seen time.Time
}

// New allows perSecond events per source with the given burst,
// tracking at most maxSources sources.
func New(perSecond float64, burst, maxSources int) *PerSource {
	return &PerSource{rate: rate.Limit(perSecond), burst: burst, max: maxSources, table: map[netip.Addr]*bucket{}}
}

// Allow spends one token of src's bucket, reporting whether there was one.
func (l *PerSource) Allow(src netip.Addr, now time.Time) bool {
	if l == nil {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.table[src]
	if !ok {
		if len(l.table) >= l.max {
			l.sweep(now)
			if len(l.table) >= l.max {
				return false
			}
		}
		b = &bucket{lim: rate.NewLimiter(l.rate, l.burst)}
		l.table[src] = b
	}
	b.seen = now
	return b.lim.AllowN(now, 1)
}

// Blocked reports whether src has no token left, without spending one.
func (l *PerSource) Blocked(src netip.Addr, now time.Time) bool {
	if l == nil {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.table[src]
	return ok && b.lim.TokensAt(now) < 1
}

// sweep forgets sources idle long enough for their bucket to be full again.
func (l *PerSource) sweep(now time.Time) {
	if now.Sub(l.swept) < time.Second {
		return
	}
	l.swept = now
	idle := time.Duration(float64(l.burst)/float64(l.rate)*float64(time.Second)) + time.Second
	for a, b := range l.table {
		if now.Sub(b.seen) > idle {
			delete(l.table, a)
		}
	}
}

// Len is the number of sources tracked.
func (l *PerSource) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.table)
}
