package forward

import (
	"context"
	"sync"
	"time"
)

// circuit is one destination's breaker, per replica: it opens after
// failures in a row; while open, callers wait (holding their message, so
// the consumer fetches nothing more) and one probe per interval goes
// through; after a successful probe the in-flight limit starts at 1 and
// doubles with every success up to concurrency (the paced catch-up).
type circuit struct {
	threshold int
	probe     time.Duration
	max       int
	now       func() time.Time

	mu        sync.Mutex
	failures  int
	open      bool
	probing   bool
	nextProbe time.Time
	ramp      int // in-flight limit while catching up; 0: none
	inflight  int
	changed   chan struct{}
	onState   func(open bool)
}

func newCircuit(threshold int, probe time.Duration, max int, onState func(bool)) *circuit {
	return &circuit{threshold: threshold, probe: probe, max: max, now: time.Now, changed: make(chan struct{}), onState: onState}
}

// acquire waits for the right to make an attempt; probe reports the
// attempt is the open circuit's probe.
func (c *circuit) acquire(ctx context.Context) (probe bool, err error) {
	for {
		c.mu.Lock()
		var wait time.Duration
		switch {
		case !c.open && (c.ramp == 0 || c.inflight < c.ramp):
			c.inflight++
			c.mu.Unlock()
			return false, nil
		case c.open && !c.probing:
			if wait = c.nextProbe.Sub(c.now()); wait <= 0 {
				c.probing = true
				c.inflight++
				c.mu.Unlock()
				return true, nil
			}
		}
		ch := c.changed
		c.mu.Unlock()
		var timer <-chan time.Time
		if wait > 0 {
			t := time.NewTimer(wait)
			timer = t.C
			defer t.Stop()
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-ch:
		case <-timer:
		}
	}
}

// release ends an attempt acquired before.
func (c *circuit) release(ok, probe bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.inflight--
	wasOpen := c.open
	if probe {
		c.probing = false
	}
	if ok {
		c.failures = 0
		switch {
		case c.open:
			c.open, c.ramp = false, 1
		case c.ramp > 0:
			if c.ramp *= 2; c.ramp >= c.max {
				c.ramp = 0
			}
		}
	} else {
		c.failures++
		if c.ramp > 1 {
			c.ramp /= 2
		}
		if c.open || c.failures >= c.threshold {
			c.open, c.ramp = true, 0
			c.nextProbe = c.now().Add(c.probe)
		}
	}
	if c.open != wasOpen && c.onState != nil {
		c.onState(c.open)
	}
	close(c.changed)
	c.changed = make(chan struct{})
}

// isOpen reports whether the circuit is open now.
func (c *circuit) isOpen() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.open
}

// cancel ends a turn acquired before in which no attempt was made:
// nothing is counted, and a probe's turn goes to the next caller.
func (c *circuit) cancel(probe bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.inflight--
	if probe {
		c.probing = false
	}
	close(c.changed)
	c.changed = make(chan struct{})
}
