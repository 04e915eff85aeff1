package ratelimit

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

func TestPerSource(t *testing.T) {
	l := New(1, 3, 2)
	now := time.Unix(1000, 0)
	a, b, c := netip.MustParseAddr("203.0.113.1"), netip.MustParseAddr("203.0.113.2"), netip.MustParseAddr("2001:db8::3")
	for i := range 3 {
		if !l.Allow(a, now) {
			t.Fatalf("burst %d refused", i)
		}
	}
	if l.Allow(a, now) {
		t.Fatal("over the burst allowed")
	}
	if !l.Allow(a, now.Add(1100*time.Millisecond)) {
		t.Fatal("refill not allowed")
	}
	if !l.Allow(b, now) {
		t.Fatal("another source limited by the first")
	}
	// The table is full of recently seen sources: a third gets no bucket
	// of its own (it spends from the shared overflow bucket)…
	if !l.Allow(c, now.Add(2*time.Second)) || l.Len() != 2 {
		t.Fatalf("table over its bound: %d tracked", l.Len())
	}
	// …until the others have been idle long enough to be forgotten.
	if !l.Allow(c, now.Add(time.Minute)) || l.Len() != 1 {
		t.Fatalf("idle sources not swept: %d tracked", l.Len())
	}
}

func BenchmarkPerSource(b *testing.B) {
	l := New(2, 20, 100000)
	src := netip.MustParseAddr("203.0.113.1")
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		l.Allow(src, now)
	}
}

// addr returns the i-th address of 198.18.0.0/15.
func addr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 18 + byte(i>>16&1), byte(i >> 8), byte(i)})
}

// TestPerSourceFullTable: sources that find the table full of busy ones
// share one overflow bucket: together they are allowed one burst, not a
// burst each and not nothing, and Blocked says so.
func TestPerSourceFullTable(t *testing.T) {
	l := New(1e-9, 3, 2) // no refill within the test
	now := time.Unix(1000, 0)
	l.Allow(addr(0), now)
	l.Allow(addr(1), now)
	allowed := 0
	for i := 2; i < 1002; i++ {
		if l.Allow(addr(i), now) {
			allowed++
		}
	}
	if allowed != 3 {
		t.Errorf("%d new sources allowed at a full table, want one burst (3) between them", allowed)
	}
	if !l.Blocked(addr(5000), now) {
		t.Error("an untracked source is not blocked once the overflow bucket is spent")
	}
	if l.Blocked(addr(0), now) {
		t.Error("a tracked source with tokens left reported blocked")
	}
	if n := l.Len(); n != 2 {
		t.Errorf("%d sources tracked, bound is 2", n)
	}
}

// TestPerSourceFloodKeepsBudgets: a flood of new addresses does not push a
// source that spent its burst out of the table, which would give it a
// fresh one.
func TestPerSourceFloodKeepsBudgets(t *testing.T) {
	l := New(0.5, 5, 10)
	now := time.Unix(1000, 0)
	guesser := addr(0)
	for range 5 {
		l.Allow(guesser, now)
	}
	for i := 1; i < 10000; i++ {
		l.Allow(addr(i), now)
	}
	// 4 s later the guesser has earned 2 tokens back, not a new burst.
	later := now.Add(4 * time.Second)
	got := 0
	for range 20 {
		if l.Allow(guesser, later) {
			got++
		}
	}
	if got != 2 {
		t.Errorf("after a flood of new addresses the guesser was allowed %d, want 2", got)
	}
}

// TestPerSourceIdleForgotten: a source is forgotten only once its bucket
// is full again, so forgetting it gives it nothing.
func TestPerSourceIdleForgotten(t *testing.T) {
	l := New(1, 2, 1)
	now := time.Unix(1000, 0)
	a, b := addr(0), addr(1)
	l.Allow(a, now)
	l.Allow(a, now)
	// a refills in 2 s: before that it stays, and b overflows.
	l.Allow(b, now.Add(1500*time.Millisecond))
	if l.Len() != 1 || l.Allow(a, now.Add(1500*time.Millisecond)) == false {
		t.Fatalf("a forgotten early or not refilled: %d tracked", l.Len())
	}
	if l.Allow(a, now.Add(1500*time.Millisecond)) {
		t.Fatal("a refilled beyond its rate")
	}
}

func TestPerSourceNil(t *testing.T) {
	var l *PerSource
	if !l.Allow(addr(0), time.Now()) || l.Blocked(addr(0), time.Now()) || l.Len() != 0 {
		t.Fatal("a nil limiter limits")
	}
}

// TestIPv6BySlash64: the addresses of one IPv6 /64 share a bucket (one
// subscriber or host has them all: counted apart, one scanner behind a
// proxy got a log line and a rejection event for each); another /64 and
// IPv4 addresses are their own.
func TestIPv6BySlash64(t *testing.T) {
	l := New(1, 5, 100)
	now := time.Now()
	allowed := 0
	for i := range 40 {
		a := netip.MustParseAddr(fmt.Sprintf("2001:db8:1:2::%x", i+1))
		if l.Allow(a, now) {
			allowed++
		}
	}
	if allowed != 5 {
		t.Errorf("one /64: %d of 40 allowed, want the burst of 5", allowed)
	}
	if !l.Allow(netip.MustParseAddr("2001:db8:1:3::1"), now) || !l.Allow(netip.MustParseAddr("192.0.2.1"), now) {
		t.Error("another /64 or an IPv4 address shares the spent bucket")
	}
	if !l.Blocked(netip.MustParseAddr("2001:db8:1:2:ffff::9"), now) {
		t.Error("Blocked does not see the /64's spent bucket")
	}
	if Source(netip.MustParseAddr("::ffff:192.0.2.7")) != netip.MustParseAddr("192.0.2.7") {
		t.Error("an IPv4-mapped address is not its IPv4 address")
	}
}
