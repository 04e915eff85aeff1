package publish

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/daraja-edge/daraja-edge/internal/natstest"
	"github.com/daraja-edge/daraja-edge/spool"
)

// outage is a stream on a NATS server that a test stops and starts, a
// connection that does not buffer publishes while NATS is away (as the
// broker's), and a spool.
type outage struct {
	node   *natstest.Node
	nc     *nats.Conn
	js     jetstream.JetStream
	stream jetstream.Stream
	spool  *spool.Spool
	dir    string
	s      Subjects
	f      *fixture
}

func newOutage(t *testing.T) *outage {
	t.Helper()
	ctx := context.Background()
	node := natstest.NewNode(t)
	nc, js := natstest.ConnectURL(t, node.URL(), nats.ReconnectBufSize(-1), nats.MaxReconnects(-1),
		nats.ReconnectWait(50*time.Millisecond))
	s := Subjects{Prefix: "daraja"}
	st, err := EnsureStream(ctx, js, StreamOptions{Name: "DARAJA", Subjects: s.StreamSubjects(), Replicas: 1,
		DuplicateWindow: time.Hour, MaxAge: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	o := &outage{node: node, nc: nc, js: js, stream: st, dir: t.TempDir(), s: s, f: &fixture{s: s}}
	o.openSpool(t)
	return o
}

func (o *outage) openSpool(t *testing.T) {
	t.Helper()
	sp, err := spool.Open(o.dir, 1<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sp.Close() })
	o.spool = sp
}

// back starts NATS again and waits until the stream answers.
func (o *outage) back(t *testing.T) {
	t.Helper()
	o.node.Start()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := o.stream.Info(ctx)
		cancel()
		if err == nil && o.nc.IsConnected() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("NATS not back: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// onSubject is how many messages the stream holds on subject.
func (o *outage) onSubject(t *testing.T, subject string) uint64 {
	t.Helper()
	info, err := o.stream.Info(context.Background(), jetstream.WithSubjectFilter(subject))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Subjects[subject]
}

// TestDurableHoldsUntilReplayed: NATS is back but the spool has not been
// drained yet. The (token, kind) of the spooled first callback is still
// held: the same callback is a duplicate and another a replay, both
// decided without a publish (nothing stored), so this replica never
// answers 200 twice for one (token, kind). Once drained, the stream decides
// the same way.
func TestDurableHoldsUntilReplayed(t *testing.T) {
	ctx := context.Background()
	o := newOutage(t)
	obs := &replayCount{m: map[string]int{}}
	d := NewDurable(New(o.nc, o.js, o.stream, time.Second), o.spool, o.s, obs, zap.NewNop())
	subject := o.s.Callback("b2c.result", "600000", "tok_a")

	o.node.Stop()
	if out, err := d.Store(ctx, o.f.msg("b2c.result", "tok_a", "AG_1"), true); err != nil || out != Spooled {
		t.Fatalf("NATS down: %v %v, want spooled", out, err)
	}
	o.back(t)
	// The stream takes callbacks again (another token)...
	if out, err := d.Store(ctx, o.f.msg("b2c.result", "tok_b", "AG_5"), true); err != nil || out != Stored {
		t.Fatalf("NATS back, another token: %v %v, want stored", out, err)
	}
	// ...but tok_a's result waits in the spool.
	for _, c := range []struct {
		tx   string
		want Outcome
	}{{"AG_2", Replay}, {"AG_1", Duplicate}, {"AG_3", Replay}} {
		if out, err := d.Store(ctx, o.f.msg("b2c.result", "tok_a", c.tx), true); err != nil || out != c.want {
			t.Fatalf("NATS back, spool not drained, %s on tok_a: %v %v, want %v", c.tx, out, err, c.want)
		}
	}
	if n := o.onSubject(t, subject); n != 0 {
		t.Fatalf("%s holds %d messages before the drain, want 0", subject, n)
	}
	if n, err := d.Drain(ctx); err != nil || n != 1 || obs.m["stored"] != 1 {
		t.Fatalf("drained %d %v, outcomes %v", n, err, obs.m)
	}
	for _, c := range []struct {
		tx   string
		want Outcome
	}{{"AG_2", Replay}, {"AG_1", Duplicate}} {
		if out, err := d.Store(ctx, o.f.msg("b2c.result", "tok_a", c.tx), true); err != nil || out != c.want {
			t.Fatalf("after the drain, %s on tok_a: %v %v, want %v", c.tx, out, err, c.want)
		}
	}
	uses, err := d.js.Uses(ctx, o.s, "tok_a", "600000", []string{"b2c.result"})
	if err != nil || uses["b2c.result"].TransactionID != "AG_1" || o.onSubject(t, subject) != 1 {
		t.Fatalf("tok_a after the drain: %+v %v", uses, err)
	}
}

// TestDurableHoldsAfterRestart: the process restarts with a single-use
// callback still in the spool (NATS was away). The new Durable holds its
// (token, kind) again from the spool's records, so with NATS back and the
// spool not yet drained another callback is a replay, not a second 200.
func TestDurableHoldsAfterRestart(t *testing.T) {
	ctx := context.Background()
	o := newOutage(t)
	if _, ok := any(o.spool).(PendingLister); !ok {
		t.Skip("spool.Spool has no Each (PendingLister): the held map cannot be rebuilt at start")
	}
	subject := o.s.Callback("b2c.result", "600000", "tok_a")
	o.node.Stop()
	first := NewDurable(New(o.nc, o.js, o.stream, time.Second), o.spool, o.s, nil, zap.NewNop())
	if out, err := first.Store(ctx, o.f.msg("b2c.result", "tok_a", "AG_1"), true); err != nil || out != Spooled {
		t.Fatalf("NATS down: %v %v, want spooled", out, err)
	}
	// A reusable callback is spooled too, but holds nothing.
	if out, err := first.Store(ctx, o.f.msg("c2b.confirmation", "tok_c", "TX1"), false); err != nil || out != Spooled {
		t.Fatalf("NATS down, reusable: %v %v, want spooled", out, err)
	}
	// Restart: the spool is closed and opened again, a new Durable built.
	if err := o.spool.Close(); err != nil {
		t.Fatal(err)
	}
	o.openSpool(t)
	o.back(t)
	core, logs := observer.New(zap.InfoLevel)
	d := NewDurable(New(o.nc, o.js, o.stream, time.Second), o.spool, o.s, nil, zap.New(core))
	if logs.FilterMessageSnippet("held until replayed").Len() != 1 {
		t.Errorf("no log line for the held callbacks; logs: %v", logs.AllUntimed())
	}
	for _, c := range []struct {
		tx   string
		want Outcome
	}{{"AG_2", Replay}, {"AG_1", Duplicate}} {
		if out, err := d.Store(ctx, o.f.msg("b2c.result", "tok_a", c.tx), true); err != nil || out != c.want {
			t.Fatalf("after a restart, %s on tok_a: %v %v, want %v", c.tx, out, err, c.want)
		}
	}
	if n := o.onSubject(t, subject); n != 0 {
		t.Fatalf("%s holds %d messages before the drain, want 0", subject, n)
	}
	if n, err := d.Drain(ctx); err != nil || n != 2 {
		t.Fatalf("drained %d, %v", n, err)
	}
	uses, err := d.js.Uses(ctx, o.s, "tok_a", "600000", []string{"b2c.result"})
	if err != nil || uses["b2c.result"].TransactionID != "AG_1" {
		t.Fatalf("tok_a after the drain: %+v %v", uses, err)
	}
}

// TestDurableMasksPhoneNumbers: a 2022-style STK CheckoutRequestID ends
// with the payer's number. Spooled, replayed as a duplicate and replayed
// as a conflict, it never appears whole in a log line or in the
// replay_after_outage event; the event carries what rejection events carry
// (reason, source IP, path, token id) and the masked ids, never the body.
func TestDurableMasksPhoneNumbers(t *testing.T) {
	const phone = "712345678"
	ctx := context.Background()
	ns := natstest.Server(t)
	nc, js := natstest.Connect(t, ns)
	s := Subjects{Prefix: "daraja"}
	st, err := EnsureStream(ctx, js, StreamOptions{Name: "DARAJA", Subjects: s.StreamSubjects(), Replicas: 1,
		DuplicateWindow: time.Hour, MaxAge: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	sp, err := spool.Open(t.TempDir(), 1<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	stk := func(token, checkout string) *nats.Msg {
		c := Callback{Kind: "stk.callback", Shortcode: "174379", TransactionID: checkout, ResultCode: "0", TokenID: token,
			SourceIP: "196.201.214.200", ReceivedAt: time.Now(), Edge: "e1",
			Body: []byte(`{"Body":{"stkCallback":{"CheckoutRequestID":"` + checkout + `","PhoneNumber":254` + phone + `}}}`)}
		return c.Msg(s.Callback(c.Kind, c.Shortcode, token))
	}
	idA := "ws_CO_03082023134725382" + phone // spooled, then another replica stores another on its token
	idB := "ws_CO_03082023134725999" + phone // spooled, and also stored by another replica
	idC := "ws_CO_03082023134726000" + phone // the other replica's callback on tok_a

	core, logs := observer.New(zap.DebugLevel)
	log := zap.New(core)
	deadNC, deadJS := natstest.Connect(t, ns)
	deadNC.Close()
	dead := NewDurable(New(deadNC, deadJS, st, 200*time.Millisecond), sp, s, nil, log)
	for _, m := range []*nats.Msg{stk("tok_a", idA), stk("tok_b", idB)} {
		if out, err := dead.Store(ctx, m, true); err != nil || out != Spooled {
			t.Fatalf("spool: %v %v", out, err)
		}
	}
	live := New(nc, js, st, 2*time.Second)
	for _, m := range []*nats.Msg{stk("tok_a", idC), stk("tok_b", idB)} {
		if out, err := live.Store(ctx, m, true); err != nil || out != Stored {
			t.Fatalf("other replica: %v %v", out, err)
		}
	}
	rejected, err := nc.SubscribeSync("daraja.rejected.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	d := NewDurable(live, sp, s, nil, log)
	if n, err := d.Drain(ctx); err != nil || n != 2 {
		t.Fatalf("drained %d, %v", n, err)
	}
	ev, err := rejected.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatal("no replay_after_outage event:", err)
	}
	if ev.Subject != "daraja.rejected.replay_after_outage" {
		t.Fatalf("event on %s", ev.Subject)
	}
	var got map[string]any
	if err := json.Unmarshal(ev.Data, &got); err != nil {
		t.Fatal(err)
	}
	masked := "stk.callback:ws_CO_03082023134725382******678"
	if got["reason"] != "replay_after_outage" || got["source_ip"] != "196.201.214.200" || got["path"] != "/stk/callback" ||
		got["token_id"] != "tok_a" || got["msg_id"] != masked {
		t.Fatalf("event %s", ev.Data)
	}
	if strings.Contains(string(ev.Data), phone) || strings.Contains(string(ev.Data), "stkCallback") {
		t.Fatalf("event holds the phone number or the body: %s", ev.Data)
	}
	for k, vs := range ev.Header {
		for _, v := range vs {
			if strings.Contains(v, phone) {
				t.Fatalf("event header %s holds the phone number: %s", k, v)
			}
		}
	}
	// Every log line: spooled (Warn), duplicate (Info), conflict (Error).
	for _, want := range []struct {
		level   zapcore.Level
		snippet string
	}{
		{zap.WarnLevel, "callback spooled"},
		{zap.InfoLevel, "already on the stream"},
		{zap.ErrorLevel, "conflicts with another callback"},
	} {
		if logs.FilterLevelExact(want.level).FilterMessageSnippet(want.snippet).Len() == 0 {
			t.Errorf("no %s log %q", want.level, want.snippet)
		}
	}
	conflict := logs.FilterMessageSnippet("conflicts with another callback").AllUntimed()
	if len(conflict) != 1 || conflict[0].ContextMap()["msg_id"] != masked {
		t.Fatalf("conflict log %+v", conflict)
	}
	for _, e := range logs.AllUntimed() {
		if line := fmt.Sprint(e.Message, e.ContextMap()); strings.Contains(line, phone) {
			t.Fatalf("log line holds the phone number: %s", line)
		}
	}
}

// TestOversizeNotSpooled: a callback larger than the server's max_payload
// (the edge refuses to start with a body limit that allows one; this is
// the defence behind it) is answered 503 and not spooled: spooled, it got
// 200 and could never be replayed, and every record after it was stuck.
func TestOversizeNotSpooled(t *testing.T) {
	ctx := context.Background()
	o := newOutage(t)
	sp, err := spool.Open(t.TempDir(), 64<<20, nil) // room for it: the refusal must not be the spool's
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	d := NewDurable(New(o.nc, o.js, o.stream, time.Second), sp, o.s, nil, zap.NewNop())
	big := o.f.msg("b2c.result", "tok_big", "AG_BIG")
	big.Data = bytes.Repeat([]byte("x"), 1500<<10)
	out, err := d.Store(ctx, big, true)
	if !errors.Is(err, ErrNotDurable) || !errors.Is(err, ErrNotStorable) || d.Pending() != 0 {
		t.Fatalf("a message over max_payload: %v %v, %d spooled; want ErrNotDurable (503), nothing spooled", out, err, d.Pending())
	}
}

// failingGet is a stream whose reads fail.
type failingGet struct{ jetstream.Stream }

func (failingGet) GetMsg(context.Context, uint64, ...jetstream.GetMsgOpt) (*jetstream.RawStreamMsg, error) {
	return nil, context.DeadlineExceeded
}
func (failingGet) GetLastMsgForSubject(context.Context, string) (*jetstream.RawStreamMsg, error) {
	return nil, context.DeadlineExceeded
}

// TestUsedUnresolvedNotSpooled: the stream says the (token, kind) holds a
// callback but the read that tells a duplicate from a replay fails: 503,
// nothing spooled (spooled, a different callback got 200 on a used token).
func TestUsedUnresolvedNotSpooled(t *testing.T) {
	ctx := context.Background()
	o := newOutage(t)
	good := NewDurable(New(o.nc, o.js, o.stream, time.Second), o.spool, o.s, nil, zap.NewNop())
	if out, err := good.Store(ctx, o.f.msg("b2c.result", "tok_a", "AG_1"), true); err != nil || out != Stored {
		t.Fatal(out, err)
	}
	d := NewDurable(New(o.nc, o.js, failingGet{o.stream}, time.Second), o.spool, o.s, nil, zap.NewNop())
	out, err := d.Store(ctx, o.f.msg("b2c.result", "tok_a", "AG_2"), true)
	if !errors.Is(err, ErrNotDurable) || !errors.Is(err, ErrUsedUnresolved) || d.Pending() != 0 {
		t.Fatalf("a used (token, kind) that could not be read back: %v %v, %d spooled; want 503, nothing spooled", out, err, d.Pending())
	}
}
