package recovery

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/daraja-edge/daraja-edge/internal/natstest"
)

// fakeClock is a clock that only moves when a limiter sleeps.
type fakeClock struct {
	mu     sync.Mutex
	t      time.Time
	sleeps int
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }

func (c *fakeClock) sleep(_ context.Context, d time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
	c.sleeps++
	return nil
}

// TestSharedRate: two replicas' limiters on one bucket let no more than
// rate queries start in a window between them; the next one waits for
// the next window. The clock is a fake that moves only when a limiter
// sleeps, so nothing depends on timing.
func TestSharedRate(t *testing.T) {
	for _, tc := range []struct {
		rate  float64
		per   time.Duration
		slots int
	}{{2, time.Second, 2}, {5, time.Second, 5}, {0.5, 2 * time.Second, 1}} {
		ns := natstest.Server(t)
		clock := &fakeClock{t: time.Date(2026, 12, 1, 9, 0, 0, 250e6, time.UTC)}
		var replicas []*sharedLimit
		for range 2 {
			_, js := natstest.Connect(t, ns)
			l, err := openSharedLimit(context.Background(), js, RateBucket("daraja"), 1, tc.rate)
			if err != nil {
				t.Fatal(err)
			}
			if l.per != tc.per || l.n != int64(tc.slots) {
				t.Fatalf("rate %v: window %s with %d slots, want %s with %d", tc.rate, l.per, l.n, tc.per, tc.slots)
			}
			l.now, l.sleep = clock.now, clock.sleep
			replicas = append(replicas, l)
		}
		perWindow := map[int64]int{}
		const queries = 12
		for i := range queries {
			if err := replicas[i%2].Wait(context.Background()); err != nil {
				t.Fatal(err)
			}
			perWindow[clock.now().UnixNano()/int64(tc.per)]++
		}
		for w, n := range perWindow {
			if n > tc.slots {
				t.Errorf("rate %v: %d queries started in window %d, at most %d allowed", tc.rate, n, w, tc.slots)
			}
		}
		if want := (queries + tc.slots - 1) / tc.slots; len(perWindow) != want {
			t.Errorf("rate %v: %d windows used for %d queries, want %d", tc.rate, len(perWindow), queries, want)
		}
		if clock.sleeps == 0 {
			t.Errorf("rate %v: no limiter waited", tc.rate)
		}
	}
}
