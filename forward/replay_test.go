package forward

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// TestReplaySelections: a replay by stream sequence, by transaction id
// and by a time range each deliver exactly the callbacks selected once
// more (a new round: delivered ones too), and nothing else.
func TestReplaySelections(t *testing.T) {
	e := newEnv(t)
	a := newApp(t, secretA, secretB)
	d := destination("shop", a.srv.URL)
	f := e.start(nil, d)
	ctx := context.Background()
	seq := map[string]uint64{}
	for _, tx := range []string{"AG_A", "AG_B", "AG_C"} {
		seq[tx] = e.store("b2c.result", "600000", tx, "tok_abcdefghijklmnop", body("b2c.result", tx))
		time.Sleep(20 * time.Millisecond) // distinct stored times for the range below
	}
	eventually(t, "three delivered", func() bool {
		ds, err := f.Deliveries(ctx, "shop", "", StateDelivered, 0)
		return err == nil && len(ds) == 3
	})
	raw, err := e.stream.GetMsg(ctx, seq["AG_B"]) // a range in the middle: AG_C after it is left out
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		req  ReplayRequest
		want string
	}{
		{"sequence", ReplayRequest{Destination: "shop", Sequence: seq["AG_A"]}, "AG_A"},
		{"transaction id", ReplayRequest{Destination: "shop", TX: "AG_C"}, "AG_C"},
		{"time range", ReplayRequest{Destination: "shop", Since: raw.Time, Until: raw.Time.Add(time.Millisecond)}, "AG_B"},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := len(a.deliveries())
			res, err := f.Replay(ctx, c.req)
			if err != nil || !slices.Equal(res.Queued, []uint64{seq[c.want]}) {
				t.Fatalf("queued %v (%v), want [%d]", res.Queued, err, seq[c.want])
			}
			eventually(t, "replayed", func() bool {
				ds, err := f.Deliveries(ctx, "shop", c.want, StateDelivered, 0)
				return err == nil && len(ds) == 1 && ds[0].Replays == 1 && len(ds[0].Attempts) == 2
			})
			got := a.deliveries()[before:]
			if len(got) != 1 || got[0].header.Get("Daraja-Transaction-Id") != c.want {
				t.Errorf("replay reached the app as %d requests", len(got))
			}
		})
	}
	for _, bad := range []ReplayRequest{{Destination: "shop"}, {Destination: "shop", Since: raw.Time, Until: raw.Time.Add(-time.Second)}} {
		if _, err := f.Replay(ctx, bad); !errors.Is(err, ErrBadReplay) {
			t.Errorf("%+v: %v", bad, err)
		}
	}
	if res, err := f.Replay(ctx, ReplayRequest{Destination: "shop", TX: "NO_SUCH"}); err != nil || len(res.Queued) != 0 {
		t.Errorf("unknown transaction: %+v %v", res, err)
	}
}

// TestSecondDeadLetterAfterReplay: a callback that fails again after a
// replay from the dead letters lands on the dead-letter subject a second
// time, with the attempts of its new round, instead of being dropped as
// a duplicate of the first dead letter.
func TestSecondDeadLetterAfterReplay(t *testing.T) {
	e := newEnv(t)
	a := newApp(t, secretA, secretB)
	a.answer = func(int, *http.Request) (int, map[string]string) { return http.StatusBadRequest, nil }
	d := destination("shop", a.srv.URL)
	f := e.start(nil, d)
	ctx := context.Background()
	const subj = "daraja.dlq.shop.c2b.confirmation.600999"
	seq := e.store("c2b.confirmation", "600999", "RKTQDM7W6S", "tok_abcdefghijklmnop", body("c2b.confirmation", "RKTQDM7W6S"))
	count := func() uint64 {
		info, err := e.stream.Info(ctx, jetstream.WithSubjectFilter(subj))
		if err != nil {
			t.Fatal(err)
		}
		return info.State.Subjects[subj]
	}
	eventually(t, "first dead letter", func() bool { return count() == 1 })
	res, err := f.Replay(ctx, ReplayRequest{Destination: "shop", DLQ: true})
	if err != nil || !slices.Equal(res.Queued, []uint64{seq}) {
		t.Fatalf("replay: %+v %v", res, err)
	}
	eventually(t, "second dead letter", func() bool { return count() == 2 })
	dl, err := e.stream.GetLastMsgForSubject(ctx, subj)
	if err != nil {
		t.Fatal(err)
	}
	if id := dl.Header.Get("Nats-Msg-Id"); id != "dlq:shop:c2b.confirmation:RKTQDM7W6S:replay-1" {
		t.Errorf("second dead letter's Nats-Msg-Id %q", id)
	}
	var atts []Attempt
	if err := json.Unmarshal([]byte(dl.Header.Get(HeaderAttempts)), &atts); err != nil || len(atts) != len(d.Retry) {
		t.Errorf("second dead letter's attempts %q: want the %d of its own round", dl.Header.Get(HeaderAttempts), len(d.Retry))
	}
	ds, err := f.Deliveries(ctx, "shop", "RKTQDM7W6S", StateDead, 0)
	if err != nil || len(ds) != 1 || len(ds[0].Attempts) != 2*len(d.Retry) || ds[0].Replays != 1 {
		t.Errorf("record: %+v %v", ds, err)
	}
	if n := len(a.deliveries()); n != 2*len(d.Retry) {
		t.Errorf("%d attempts reached the app, want %d", n, 2*len(d.Retry))
	}
	// Still dead: the dead letters select it once more (one sequence for
	// its two dead letters).
	if res, err := f.Replay(ctx, ReplayRequest{Destination: "shop", DLQ: true}); err != nil || !slices.Equal(res.Queued, []uint64{seq}) {
		t.Errorf("third replay: %+v %v", res, err)
	}
}

// TestReplaySequenceMustBeForwarded: a replay by stream sequence is taken
// only for a callback the destination delivers. A dead letter (it reached
// the app under the dead letter's id, and a later replay by transaction
// delivered it twice), a validation, another kind or shortcode, or a
// sequence the stream does not hold were all queued: each is refused with
// ErrNotForwarded, queues nothing and reaches nothing.
func TestReplaySequenceMustBeForwarded(t *testing.T) {
	e := newEnv(t)
	a := newApp(t, secretA, secretB)
	d := destination("shop", a.srv.URL)
	d.Kinds, d.Shortcodes = []string{"b2c.result", "c2b.validation"}, []string{"600000"}
	f := e.start(nil, d)
	ctx := context.Background()
	good := e.store("b2c.result", "600000", "AG_OK", "tok_abcdefghijklmnop", body("b2c.result", "AG_OK"))
	eventually(t, "delivered", func() bool {
		ds, err := f.Deliveries(ctx, "shop", "AG_OK", StateDelivered, 0)
		return err == nil && len(ds) == 1
	})
	otherKind := e.store("b2c.timeout", "600000", "AG_TO", "tok_abcdefghijklmnop", body("b2c.timeout", "AG_TO"))
	otherShortcode := e.store("b2c.result", "600001", "AG_SC", "tok_abcdefghijklmnoq", body("b2c.result", "AG_SC"))
	validation := e.store("c2b.validation", "600000", "TKS000VAL", "tok_abcdefghijklmnor", []byte(`{"TransID":"TKS000VAL"}`))
	dl, err := e.js.Publish(ctx, "daraja.dlq.shop.b2c.result.600000", []byte(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	before := len(a.deliveries())
	for name, seq := range map[string]uint64{"another kind": otherKind, "another shortcode": otherShortcode,
		"a validation": validation, "a dead letter": dl.Sequence, "no message": dl.Sequence + 100} {
		res, err := f.Replay(ctx, ReplayRequest{Destination: "shop", Sequence: seq})
		if !errors.Is(err, ErrNotForwarded) || len(res.Queued) != 0 {
			t.Errorf("%s (sequence %d): queued %v, %v; want ErrNotForwarded", name, seq, res.Queued, err)
		}
	}
	if res, err := f.Replay(ctx, ReplayRequest{Destination: "shop", Sequence: good}); err != nil || !slices.Equal(res.Queued, []uint64{good}) {
		t.Fatalf("the delivered callback: %v %v", res.Queued, err)
	}
	eventually(t, "replayed", func() bool { return len(a.deliveries()) > before })
	time.Sleep(200 * time.Millisecond) // anything queued wrongly would arrive by now
	for _, got := range a.deliveries()[before:] {
		if tx := got.header.Get("Daraja-Transaction-Id"); tx != "AG_OK" {
			t.Errorf("a refused replay reached the app: %s", tx)
		}
	}
}

// TestFailingCallbacksDoNotBlockOthers: callbacks the app keeps refusing
// wait for their next attempt (an hour here) without holding up the rest:
// a healthy callback stored after them is delivered. With the consumer's
// pending bound at concurrency, the waiting ones filled it and nothing
// else was fetched.
func TestFailingCallbacksDoNotBlockOthers(t *testing.T) {
	e := newEnv(t)
	a := newApp(t, secretA, secretB)
	a.answer = func(_ int, r *http.Request) (int, map[string]string) {
		if r.URL.Path == "/bad" {
			return http.StatusInternalServerError, nil
		}
		return http.StatusOK, nil
	}
	d := destination("shop", a.srv.URL)
	d.Concurrency = 2
	d.Retry = []time.Duration{0, time.Hour}
	d.Paths = map[string]string{"stk.callback": "/bad", "c2b.confirmation": "/good"}
	f := e.start(nil, d)
	e.store("stk.callback", "174379", "ws_CO_1", "tok_abcdefghijklmnop", body("stk.callback", "1"))
	e.store("stk.callback", "174379", "ws_CO_2", "tok_abcdefghijklmnop", body("stk.callback", "2"))
	eventually(t, "two failed attempts", func() bool { return len(a.deliveries()) == 2 })
	e.store("c2b.confirmation", "600999", "RKTQDM7W6S", "tok_abcdefghijklmnop", body("c2b.confirmation", "RKTQDM7W6S"))
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		ds, _ := f.Deliveries(context.Background(), "shop", "RKTQDM7W6S", StateDelivered, 0)
		if len(ds) == 1 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("a healthy callback not delivered in 5 s: blocked behind %d callbacks waiting an hour; app saw %d requests", d.Concurrency, len(a.deliveries()))
}

// Two replay requests of one callback (two POSTs, e.g. dlq:true twice)
// reset each other's round on every attempt: the callback is attempted
// forever and never dead-lettered again.

// TestTwoReplaysEnd: two replay requests for one dead callback make one
// round each, one after the other; they took turns resetting each other's
// round, which never reached its dead letter (17 attempts in 10 s, still
// pending).
func TestTwoReplaysEnd(t *testing.T) {
	e := newEnv(t)
	a := newApp(t, secretA, secretB)
	a.answer = func(int, *http.Request) (int, map[string]string) { return http.StatusBadRequest, nil }
	d := destination("shop", a.srv.URL)
	d.Retry = []time.Duration{0, 500 * time.Millisecond, 500 * time.Millisecond}
	f := e.start(nil, d)
	ctx := context.Background()
	seq := e.store("c2b.confirmation", "600999", "RKTQDM7W6S", "tok_abcdefghijklmnop", body("c2b.confirmation", "RKTQDM7W6S"))
	dead := func(replays int) func() bool {
		return func() bool {
			ds, err := f.Deliveries(ctx, "shop", "RKTQDM7W6S", StateDead, 0)
			return err == nil && len(ds) == 1 && ds[0].Replays >= replays
		}
	}
	eventually(t, "dead", dead(0))
	for range 2 {
		if _, err := f.Replay(ctx, ReplayRequest{Destination: "shop", Sequence: seq}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "dead again after both replays", dead(2))
	time.Sleep(2 * time.Second) // a round still going would make attempts by now
	ds, _ := f.Deliveries(ctx, "shop", "RKTQDM7W6S", "", 0)
	if n := len(a.deliveries()); n > 3*len(d.Retry) || ds[0].State != StateDead {
		t.Fatalf("%d attempts for one callback (schedule: %d per round, 3 rounds at most); record state %q (want dead), replays %d",
			n, len(d.Retry), ds[0].State, ds[0].Replays)
	}
}
