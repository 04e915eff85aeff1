package ratelimit

import (
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
	// The table is full of recently seen sources: a third is refused…
	if l.Allow(c, now.Add(2*time.Second)) {
		t.Fatal("table over its bound")
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
