package forward

import (
	"context"
	"testing"
	"time"
)

func TestCircuit(t *testing.T) {
	now := time.Unix(1000, 0)
	var states []bool
	c := newCircuit(2, 10*time.Second, 8, func(open bool) { states = append(states, open) })
	c.now = func() time.Time { return now }
	ctx := context.Background()
	try := func(ok bool) {
		t.Helper()
		probe, err := c.acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		c.release(ok, probe)
	}
	try(false)
	if c.isOpen() {
		t.Fatal("open after one failure of two")
	}
	try(false)
	if !c.isOpen() {
		t.Fatal("closed after two failures in a row")
	}
	// Open: no attempt before the probe time.
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := c.acquire(short); err == nil {
		t.Fatal("an attempt while open, before the probe")
	}
	now = now.Add(10 * time.Second)
	probe, err := c.acquire(ctx)
	if err != nil || !probe {
		t.Fatalf("probe: %v %v", probe, err)
	}
	// Only one probe at a time.
	short2, cancel2 := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel2()
	if _, err := c.acquire(short2); err == nil {
		t.Fatal("second attempt during the probe")
	}
	c.release(true, true)
	if c.isOpen() {
		t.Fatal("open after a good probe")
	}
	// Paced catch-up: one in flight, then two (each success doubles the
	// limit), then unlimited.
	for _, limit := range []int{1, 2, 20} {
		var held int
		for held < 20 {
			short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
			_, err := c.acquire(short)
			cancel()
			if err != nil {
				break
			}
			held++
		}
		if held != limit {
			t.Fatalf("catch-up allowed %d in flight, want %d", held, limit)
		}
		for range held {
			c.release(true, false)
		}
	}
	if len(states) != 2 || !states[0] || states[1] {
		t.Errorf("state changes %v", states)
	}
}
