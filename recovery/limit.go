package recovery

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// sharedLimit bounds the Daraja queries of every replica together: each
// query takes one of the n slots of the current window (of length per,
// counted by the wall clock) in a key-value bucket all replicas share, by
// compare-and-set; when the window is full it waits for the next one. Each
// replica's own limiter (rate and burst) still spaces its queries; this
// one keeps N replicas from querying at N times the rate.
//
// A window is one second, or 1/rate seconds when the rate is below one
// per second, so n is at least 1: a rate of 2 lets 2 queries start in each
// second across the replicas, 0.5 lets one start every 2 seconds. Replica
// clocks that disagree by d let a window hold up to 2n queries for d.
type sharedLimit struct {
	kv  jetstream.KeyValue
	n   int64
	per time.Duration
	now func() time.Time
	// sleep waits d or until ctx ends (a test replaces it with a clock
	// that jumps).
	sleep func(ctx context.Context, d time.Duration) error
}

// window returns the window length and the slots in it for rate per
// second.
func window(rate float64) (time.Duration, int64) {
	if !(rate > 0) || math.IsInf(rate, 0) {
		return time.Second, 1
	}
	secs := 1.0
	if rate < 1 {
		secs = math.Ceil(1 / rate)
	}
	return time.Duration(secs) * time.Second, max(1, int64(math.Floor(rate*secs+1e-9)))
}

// RateBucket is the key-value bucket that holds the shared rate windows
// for a subject prefix.
func RateBucket(prefix string) string {
	return strings.ReplaceAll(prefix, ".", "_") + "_recovery_rate"
}

// openSharedLimit opens (creating) the windows bucket: memory storage,
// entries gone after a minute, replicated like the stream.
func openSharedLimit(ctx context.Context, js jetstream.JetStream, bucket string, replicas int, rate float64) (*sharedLimit, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: bucket,
		Description: "daraja-edge: recovery queries started per window, shared by the replicas",
		History:     1, TTL: time.Minute, Storage: jetstream.MemoryStorage, Replicas: max(1, replicas)})
	if err != nil {
		return nil, fmt.Errorf("recovery: rate bucket %s: %w", bucket, err)
	}
	per, n := window(rate)
	return &sharedLimit{kv: kv, n: n, per: per, now: time.Now, sleep: sleepCtx}, nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Wait takes a slot, waiting for a window with one free. An error of the
// bucket is returned as is: the caller goes on with its own limiter alone
// rather than stop recovering while NATS is unwell.
func (l *sharedLimit) Wait(ctx context.Context) error {
	for {
		now := l.now()
		w := now.UnixNano() / int64(l.per)
		key := "w." + strconv.FormatInt(w, 10)
		e, err := l.kv.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			if _, err := l.kv.Create(ctx, key, []byte("1")); err == nil {
				return nil
			} else if !errors.Is(err, jetstream.ErrKeyExists) {
				return fmt.Errorf("recovery: rate window: %w", err)
			}
			continue // another replica took the first slot: read again
		case err != nil:
			return fmt.Errorf("recovery: rate window: %w", err)
		}
		used, _ := strconv.ParseInt(string(e.Value()), 10, 64)
		if used < l.n {
			if _, err := l.kv.Update(ctx, key, []byte(strconv.FormatInt(used+1, 10)), e.Revision()); err == nil {
				return nil
			} else if !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
				return fmt.Errorf("recovery: rate window: %w", err)
			}
			continue
		}
		next := time.Unix(0, (w+1)*int64(l.per))
		if err := l.sleep(ctx, next.Sub(now)); err != nil {
			return err
		}
	}
}
