package forward

import (
	"context"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/daraja-edge/daraja-edge/config"
)

// TestNextWait: the wait after a failed attempt is the schedule's entry
// with ±20 % jitter; a Retry-After lengthens it, up to retry_after_cap,
// and neither the header nor the cap ever shortens it.
func TestNextWait(t *testing.T) {
	const s, m, h = time.Second, time.Minute, time.Hour
	for _, c := range []struct {
		name                     string
		entry, retryAfter, limit time.Duration
		u                        float64
		want                     time.Duration
	}{
		{"no header, middle draw", 30 * s, 0, h, 0.5, 30 * s},
		{"no header, lowest draw", 30 * s, 0, h, 0, 24 * s},
		{"no header, high draw", 30 * s, 0, h, 0.75, 33 * s},
		{"zero entry: no jitter", 0, 0, h, 0.9, 0},
		{"header lengthens", 5 * s, 2 * m, h, 0.5, 2 * m},
		{"header capped", 5 * s, 3 * h, h, 0.5, h},
		{"header capped, zero entry", 0, 3 * h, 10 * m, 0.5, 10 * m},
		{"header shorter than the wait: ignored", 2 * m, 30 * s, h, 0.5, 2 * m},
		{"cap below the wait: the wait stands", 2 * h, 5 * h, h, 0.5, 2 * h},
		{"cap below the jittered wait: the wait stands", 2 * h, 5 * h, h, 0, 96 * m},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := nextWait(c.entry, c.retryAfter, c.limit, c.u); got != c.want {
				t.Errorf("nextWait(%s, %s, %s, %v) = %s, want %s", c.entry, c.retryAfter, c.limit, c.u, got, c.want)
			}
		})
	}
}

// TestJitter: over many draws the waits stay within ±20 % of the entry,
// reach both ends, and average the entry.
func TestJitter(t *testing.T) {
	const entry = 5 * time.Minute
	lo, hi := entry*8/10, entry*12/10
	var sum float64
	minW, maxW := hi, lo
	const n = 20000
	for range n {
		w := nextWait(entry, 0, time.Hour, rand.Float64())
		if w < lo || w > hi {
			t.Fatalf("wait %s outside [%s, %s]", w, lo, hi)
		}
		minW, maxW = min(minW, w), max(maxW, w)
		sum += float64(w)
	}
	if minW > entry*82/100 || maxW < entry*118/100 {
		t.Errorf("draws span only %s–%s: jitter narrower than ±20 %%", minW, maxW)
	}
	if mean := time.Duration(sum / n); mean < entry*98/100 || mean > entry*102/100 {
		t.Errorf("mean wait %s, want about %s", mean, entry)
	}
}

// TestRateLimitPerWindow: with rate: 5 no one-second window holds more
// than 5 attempt turns, after a busy stretch or an idle one (burst one),
// on the forwarder's own limiter driven by a clock the test moves.
func TestRateLimitPerWindow(t *testing.T) {
	d := destination("shop", "http://127.0.0.1:1")
	d.Rate = 5
	f, err := New(Options{Destinations: []config.Destination{d}})
	if err != nil {
		t.Fatal(err)
	}
	dst := f.dests[0]
	now := time.Unix(1_000_000, 0)
	var turns []time.Time
	for i := range 200 {
		if i == 100 {
			now = now.Add(time.Minute) // idle: no more than one turn saved up
		}
		_, delay := dst.reserve(now)
		now = now.Add(delay) // the caller sleeps this long
		turns = append(turns, now)
	}
	worst := 0
	for i, t0 := range turns {
		j, _ := slices.BinarySearchFunc(turns[i:], t0.Add(time.Second), func(a, b time.Time) int { return a.Compare(b) })
		worst = max(worst, j)
	}
	if worst > 5 {
		t.Errorf("%d attempt turns in one second, rate 5", worst)
	}
	if span := turns[99].Sub(turns[0]); span < 99*200*time.Millisecond {
		t.Errorf("100 turns in %s, want at least 19.8 s", span)
	}
	// A limiter is only made when a rate is set.
	d.Rate = 0
	f, _ = New(Options{Destinations: []config.Destination{d}})
	if f.dests[0].limit != nil {
		t.Error("rate 0 has a limiter")
	}
	if l := dst.limit; l.Limit() != rate.Limit(5) || l.Burst() != 1 {
		t.Errorf("limiter %v/%d", l.Limit(), l.Burst())
	}
}

// TestRateLimitHonoured: twelve callbacks at rate: 10 take at least
// about 1.1 s from the first attempt to the last, whatever the
// concurrency (a busy machine only stretches this).
func TestRateLimitHonoured(t *testing.T) {
	e := newEnv(t)
	a := newApp(t, secretA, secretB)
	d := destination("shop", a.srv.URL)
	d.Rate, d.Concurrency = 10, 8
	f := e.start(nil, d)
	for i := range 12 {
		tx := "AG_" + strconv.Itoa(i)
		e.store("b2c.result", "600000", tx, "tok_abcdefghijklmnop", body("b2c.result", tx))
	}
	eventually(t, "twelve delivered", func() bool {
		ds, err := f.Deliveries(context.Background(), "shop", "", StateDelivered, 0)
		return err == nil && len(ds) == 12
	})
	ds, _ := f.Deliveries(context.Background(), "shop", "", StateDelivered, 0)
	var at []time.Time
	for _, x := range ds {
		at = append(at, x.Attempts[0].At)
	}
	slices.SortFunc(at, func(a, b time.Time) int { return a.Compare(b) })
	if span := at[len(at)-1].Sub(at[0]); span < 900*time.Millisecond {
		t.Errorf("12 attempts within %s at rate 10 (want ≥ 1.1 s, 0.9 s allowed)", span)
	}
}

// TestWebhookHeadersPerAttempt: across a retry the webhook-id stays the
// same and the webhook-timestamp is the new attempt's (each request
// verified by the reference library); Retry-After lengthened the wait.
func TestWebhookHeadersPerAttempt(t *testing.T) {
	e := newEnv(t)
	a := newApp(t, secretA, secretB)
	a.answer = func(n int, _ *http.Request) (int, map[string]string) {
		if n == 0 {
			return http.StatusServiceUnavailable, map[string]string{"Retry-After": "2"}
		}
		return http.StatusOK, nil
	}
	d := destination("shop", a.srv.URL)
	d.Retry = []time.Duration{0, 10 * time.Millisecond, 10 * time.Millisecond}
	d.RetryAfterCap = time.Hour
	f := e.start(nil, d)
	e.store("stk.callback", "174379", "ws_CO_1", "tok_abcdefghijklmnop", body("stk.callback", "ws_CO_1"))
	eventually(t, "delivered on the second attempt", func() bool {
		ds, err := f.Deliveries(context.Background(), "shop", "ws_CO_1", StateDelivered, 0)
		return err == nil && len(ds) == 1
	})
	got := a.deliveries()
	if len(got) != 2 {
		t.Fatalf("%d requests, want 2", len(got))
	}
	if id0, id1 := got[0].header.Get("webhook-id"), got[1].header.Get("webhook-id"); id0 != id1 || id0 != WebhookID("stk.callback:ws_CO_1") {
		t.Errorf("webhook-id %q then %q", id0, id1)
	}
	ts0, _ := strconv.ParseInt(got[0].header.Get("webhook-timestamp"), 10, 64)
	ts1, _ := strconv.ParseInt(got[1].header.Get("webhook-timestamp"), 10, 64)
	if ts1 < ts0+2 {
		t.Errorf("webhook-timestamp %d then %d: want the second attempt's own, at least 2 s later (Retry-After: 2)", ts0, ts1)
	}
	if gap := got[1].at.Sub(got[0].at); gap < 2*time.Second {
		t.Errorf("second attempt %s after the first; Retry-After asked for 2 s", gap)
	}
}
