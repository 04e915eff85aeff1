package forward

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// countByID counts the app's requests per webhook-id.
func (a *app) countByID() map[string]int {
	out := map[string]int{}
	for _, g := range a.deliveries() {
		out[g.header.Get("webhook-id")]++
	}
	return out
}

func (a *app) stats() (overlaps, maxInflight int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.overlaps, a.maxInflight
}

// shortAckWait makes every consumer's ack wait 1 s (in-progress acks every
// third of it), so a message held without them would be redelivered
// while held.
func shortAckWait(f *Forwarder) {
	for _, d := range f.dests {
		d.ackWait = time.Second
	}
}

// TestSharedLimitNoDuplicates: the main and the replay consumer share one
// limit of attempts in flight, and messages that wait for a slot longer
// than the ack wait (the app takes 1.5 s, the ack wait is 1 s) are kept
// alive meanwhile: no callback reaches the app twice at once or once too
// often, and never more than concurrency requests are in flight.
func TestSharedLimitNoDuplicates(t *testing.T) {
	e := newEnv(t)
	a := newApp(t, secretA, secretB)
	a.delay = 1500 * time.Millisecond
	d := destination("shop", a.srv.URL)
	d.Concurrency = 2
	f := e.startWith(nil, shortAckWait, d)
	ctx := context.Background()
	var old []uint64
	for i := range 2 {
		tx := "OLD" + strconv.Itoa(i)
		old = append(old, e.store("b2c.result", "600000", tx, "tok_abcdefghijklmnop", body("b2c.result", tx)))
	}
	eventually(t, "first two delivered", func() bool {
		ds, err := f.Deliveries(ctx, "shop", "", StateDelivered, 0)
		return err == nil && len(ds) == 2
	})
	// Four new callbacks and a replay of the two old ones, all at once:
	// six attempts for two slots.
	for i := range 4 {
		tx := "NEW" + strconv.Itoa(i)
		e.store("b2c.result", "600000", tx, "tok_abcdefghijklmnop", body("b2c.result", tx))
	}
	for _, s := range old {
		if _, err := f.Replay(ctx, ReplayRequest{Destination: "shop", Sequence: s}); err != nil {
			t.Fatal(err)
		}
	}
	done := func() bool {
		ds, err := f.Deliveries(ctx, "shop", "", StateDelivered, 0)
		if err != nil || len(ds) != 6 {
			return false
		}
		for _, x := range ds {
			if x.TransactionID[:3] == "OLD" && x.Replays != 1 {
				return false
			}
		}
		return true
	}
	eventually(t, "four new delivered and two replayed", done)
	time.Sleep(3 * time.Second) // a redelivered copy would come after the 1 s ack wait
	for id, n := range a.countByID() {
		if n > 2 {
			t.Errorf("%s reached the app %d times", id, n)
		}
	}
	if got := len(a.deliveries()); got != 8 {
		t.Errorf("%d requests, want 8 (4 new, 2 old, 2 replays)", got)
	}
	overlaps, maxIn := a.stats()
	if overlaps != 0 {
		t.Errorf("%d concurrent duplicate deliveries", overlaps)
	}
	if maxIn > d.Concurrency {
		t.Errorf("%d requests in flight at once, concurrency %d (main and replay share the limit)", maxIn, d.Concurrency)
	}
	// The server handed each message out once: none passed its ack wait
	// while it waited here.
	for name, want := range map[string]uint64{ConsumerName("shop"): 6, ConsumerName("shop") + "_replay": 2} {
		stream := "DARAJA"
		if want == 2 {
			stream = f.replayStream()
		}
		c, err := e.js.Consumer(ctx, stream, name)
		if err != nil {
			t.Fatal(err)
		}
		info, err := c.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.Delivered.Consumer != want {
			t.Errorf("%s: %d deliveries by the server, want %d (a message redelivered while held)", name, info.Delivered.Consumer, want)
		}
	}
	ds, _ := f.Deliveries(ctx, "shop", "", "", 0)
	for _, x := range ds {
		want := 1
		if x.TransactionID[:3] == "OLD" {
			want = 2
		}
		if len(x.Attempts) != want {
			t.Errorf("%s: %d attempts recorded, want %d", x.TransactionID, len(x.Attempts), want)
		}
	}
}

// TestReplayWaitsForAttemptInFlight: a replay of a callback whose attempt
// is in flight, and two replays of one callback queued together, never
// reach the app at the same time (the record's lease, written
// compare-and-set); each replay is one more delivery, after the other.
func TestReplayWaitsForAttemptInFlight(t *testing.T) {
	e := newEnv(t)
	a := newApp(t, secretA, secretB)
	a.delay = time.Second
	d := destination("shop", a.srv.URL)
	d.Concurrency = 4
	f := e.start(nil, d)
	ctx := context.Background()
	seq := e.store("c2b.confirmation", "600999", "RKTQDM7W6S", "tok_abcdefghijklmnop", body("c2b.confirmation", "RKTQDM7W6S"))
	eventually(t, "first attempt in flight", func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return a.inflightAll > 0
	})
	if _, err := f.Replay(ctx, ReplayRequest{Destination: "shop", Sequence: seq}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "delivered and replayed once", func() bool {
		ds, err := f.Deliveries(ctx, "shop", "RKTQDM7W6S", StateDelivered, 0)
		return err == nil && len(ds) == 1 && ds[0].Replays == 1 && len(ds[0].Attempts) == 2
	})
	for range 2 {
		if _, err := f.Replay(ctx, ReplayRequest{Destination: "shop", Sequence: seq}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "replayed twice more", func() bool {
		ds, err := f.Deliveries(ctx, "shop", "RKTQDM7W6S", StateDelivered, 0)
		return err == nil && len(ds) == 1 && ds[0].Replays == 3 && len(ds[0].Attempts) == 4
	})
	if got := len(a.deliveries()); got != 4 {
		t.Errorf("%d requests, want 4", got)
	}
	if overlaps, _ := a.stats(); overlaps != 0 {
		t.Errorf("%d concurrent duplicate deliveries", overlaps)
	}
}

// TestDeliveryRecordCompareAndSet: a record written by someone else since
// it was read is not overwritten: the write is refused, and an attempt's
// result is added to what is there now, so no attempt is lost.
func TestDeliveryRecordCompareAndSet(t *testing.T) {
	e := newEnv(t)
	f := e.start(nil, destination("shop", "http://127.0.0.1:1"))
	d := f.dests[0]
	ctx := context.Background()
	cb := &callback{seq: 42, header: map[string][]string{"Nats-Msg-Id": {"b2c.result:AG_1"}, "Daraja-Kind": {"b2c.result"},
		"Daraja-Transaction-Id": {"AG_1"}, "Daraja-Shortcode": {"600000"}}}
	key := deliveryKey("shop", "AG_1", 42)
	rec, rev, act, _, err := d.claim(ctx, key, cb, false, "holder-a", Delivery{}, 0)
	if err != nil || act != actAttempt || rev == 0 || rec.Holder != "holder-a" {
		t.Fatalf("claim: %+v %d %v %v", rec, rev, act, err)
	}
	// Another worker sees the lease and waits, also from a stale read.
	if _, _, act, wait, err := d.claim(ctx, key, cb, false, "holder-b", Delivery{}, 0); err != nil || act != actWait || wait <= 0 {
		t.Fatalf("second claim: %v %s %v", act, wait, err)
	}
	// Two writes from the same revision: the second is refused.
	other := rec
	other.Attempts = append(other.Attempts, Attempt{At: time.Now(), Status: 503, Error: "HTTP 503"})
	other.Holder, other.Lease = "", time.Time{}
	if _, err := f.hist.write(ctx, other, rev); err != nil {
		t.Fatal(err)
	}
	if _, err := f.hist.write(ctx, other, rev); !errors.Is(err, errConflict) {
		t.Fatalf("stale write: %v", err)
	}
	if _, err := f.hist.write(ctx, other, 0); !errors.Is(err, errConflict) {
		t.Fatalf("create over a record: %v", err)
	}
	// holder-a's result from the stale revision lands beside the other.
	got, _, err := d.record(ctx, key, cb, rec, rev, "holder-a", Attempt{At: time.Now(), Status: 200}, true, 0)
	if err != nil {
		t.Fatal(err)
	}
	stored, _, err := f.hist.get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if len(stored.Attempts) != 2 || stored.Attempts[0].Status != 503 || stored.Attempts[1].Status != 200 ||
		stored.State != StateDelivered || len(got.Attempts) != 2 {
		t.Errorf("record after a conflict: %+v", stored)
	}
}

type failingDeliveredKV struct {
	jetstream.KeyValue
	failed bool
}

func (k *failingDeliveredKV) Update(ctx context.Context, key string, v []byte, rev uint64) (uint64, error) {
	if !k.failed && strings.Contains(string(v), `"state":"delivered"`) {
		k.failed = true
		return 0, errors.New("nats: connection closed")
	}
	return k.KeyValue.Update(ctx, key, v, rev)
}

type lostAckMsg struct {
	jetstream.Msg
	lost bool
}

func (m *lostAckMsg) DoubleAck(ctx context.Context) error {
	if m.lost {
		return errors.New("nats: connection closed")
	}
	return m.Msg.DoubleAck(ctx)
}

// TestDeliveredRecordedAfterBucketBlip: NATS out of reach for a moment
// after a 2xx: the "delivered" record's first write fails and the ack is
// lost. The record is written once the bucket answers, so the redelivery
// finds it and the app is not called again (it was: docs/forward.md
// "Duplicates" says a 2xx the forwarder saw is never followed by another
// attempt).
func TestDeliveredRecordedAfterBucketBlip(t *testing.T) {
	e := newEnv(t)
	a := newApp(t, secretA, secretB)
	d := destination("shop", a.srv.URL)
	d.Kinds = []string{"b2c.result"} // its own consumer never sees the callback below
	f := e.start(nil, d)
	dd := f.dests[0]
	kv := &failingDeliveredKV{KeyValue: f.hist.kv}
	f.hist = history{kv: kv}
	clock := time.Now()
	f.now = func() time.Time { return clock }
	ctx := context.Background()
	e.store("c2b.confirmation", "600999", "RKTQDM7W6S", "tok_abcdefghijklmnop", body("c2b.confirmation", "RKTQDM7W6S"))
	cons, err := e.js.CreateConsumer(ctx, "DARAJA", jetstream.ConsumerConfig{AckPolicy: jetstream.AckExplicitPolicy, FilterSubject: "daraja.cb.c2b.>"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := cons.Fetch(1)
	if err != nil {
		t.Fatal(err)
	}
	m := <-b.Messages()
	dd.handle(ctx, &lostAckMsg{Msg: m, lost: true}, false, func() {})
	if len(a.deliveries()) != 1 || a.deliveries()[0].status != 200 {
		t.Fatal("first attempt not made")
	}
	clock = clock.Add(d.Timeout + leaseMargin + time.Second) // the redelivery, after the ack wait
	dd.handle(ctx, m, false, func() {})
	if n := len(a.deliveries()); n != 1 {
		t.Fatalf("the app got a callback it answered 2xx again: %d requests", n)
	}
}
