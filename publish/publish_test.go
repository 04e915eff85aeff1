package publish

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/daraja-edge/daraja-edge/internal/natstest"
	"github.com/daraja-edge/daraja-edge/spool"
)

func TestCallbackMsgHeaders(t *testing.T) {
	c := Callback{Kind: "stk.callback", Shortcode: "174379", TransactionID: "ws_CO_1", ResultCode: "0",
		TokenID: "tok_x", SourceIP: "196.201.214.200", ReceivedAt: time.Unix(1700000000, 5).UTC(), Edge: "e1", Body: []byte("{}")}
	m := c.Msg(Subjects{Prefix: "daraja"}.Callback(c.Kind, c.Shortcode, c.TokenID))
	if m.Subject != "daraja.cb.stk.callback.174379.tok_x" {
		t.Errorf("subject %s", m.Subject)
	}
	want := map[string]string{
		"Nats-Msg-Id": "stk.callback:ws_CO_1", "Daraja-Kind": "stk.callback", "Daraja-Shortcode": "174379",
		"Daraja-Transaction-Id": "ws_CO_1", "Daraja-Result-Code": "0", "Daraja-Token-Id": "tok_x",
		"Daraja-Source-Ip": "196.201.214.200", "Daraja-Received-At": "2023-11-14T22:13:20.000000005Z", "Daraja-Edge": "e1",
	}
	for k, v := range want {
		if got := m.Header.Get(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	if _, ok := m.Header["Daraja-Reference"]; ok {
		t.Error("empty reference sent as a header")
	}
}

type fixture struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	stream jetstream.Stream
	pub    *JetStream
	s      Subjects
}

func newFixture(t *testing.T, replicas int) *fixture {
	t.Helper()
	nc, js := natstest.Connect(t, natstest.Server(t))
	s := Subjects{Prefix: "daraja"}
	st, err := EnsureStream(context.Background(), js, StreamOptions{Name: "DARAJA", Subjects: s.StreamSubjects(),
		Replicas: replicas, DuplicateWindow: time.Hour, MaxAge: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{nc: nc, js: js, stream: st, pub: New(nc, js, st, 2*time.Second), s: s}
}

func (f *fixture) msg(kind, token, tx string) *nats.Msg {
	c := Callback{Kind: kind, Shortcode: "600000", TransactionID: tx, TokenID: token, ReceivedAt: time.Now(),
		Body: []byte(`{"tx":"` + tx + `"}`)}
	return c.Msg(f.s.Callback(kind, "600000", token))
}

// TestStoreSingleUse: the one conditional write decides. The first callback
// of a (token, kind) is stored; the same one again is a duplicate (nothing
// new stored, even though JetStream answers "wrong last sequence" before it
// looks at the Msg-Id); another is a replay; a token's other kind takes its
// own first callback; reusable tokens take any number, de-duplicated.
func TestStoreSingleUse(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 1)
	steps := []struct {
		name        string
		kind, token string
		tx          string
		first       bool
		want        Outcome
	}{
		{"first result", "b2c.result", "tok_a", "AG_1", true, Stored},
		{"same result again", "b2c.result", "tok_a", "AG_1", true, Duplicate},
		{"another result", "b2c.result", "tok_a", "AG_2", true, Replay},
		{"timeout on the same token", "b2c.timeout", "tok_a", "AG_1", true, Stored},
		{"timeout again", "b2c.timeout", "tok_a", "AG_1", true, Duplicate},
		{"another token", "b2c.result", "tok_b", "AG_3", true, Stored},
		{"reusable 1", "c2b.confirmation", "tok_c", "TX1", false, Stored},
		{"reusable 2", "c2b.confirmation", "tok_c", "TX2", false, Stored},
		{"reusable repeat", "c2b.confirmation", "tok_c", "TX1", false, Duplicate},
	}
	for _, st := range steps {
		got, err := f.pub.Store(ctx, f.msg(st.kind, st.token, st.tx), st.first)
		if err != nil || got != st.want {
			t.Fatalf("%s: %v %v, want %v", st.name, got, err, st.want)
		}
	}
	info, err := f.stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 5 {
		t.Fatalf("stream holds %d messages, want 5", info.State.Msgs)
	}
	uses, err := f.pub.Uses(ctx, f.s, "tok_a", "600000", []string{"b2c.result", "b2c.timeout", "b2b.result"})
	if err != nil {
		t.Fatal(err)
	}
	if len(uses) != 2 || uses["b2c.result"].TransactionID != "AG_1" || uses["b2c.timeout"].TransactionID != "AG_1" {
		t.Fatalf("uses %+v", uses)
	}
}

// TestStoreRace: many writers race different callbacks onto one fresh
// (token, kind): exactly one is stored, every other is a replay.
func TestStoreRace(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 1)
	results := make(chan Outcome, 20)
	for i := range 20 {
		go func() {
			out, err := f.pub.Store(ctx, f.msg("b2c.result", "tok_r", fmt.Sprintf("AG_%d", i)), true)
			if err != nil {
				t.Error(err)
			}
			results <- out
		}()
	}
	count := map[Outcome]int{}
	for range 20 {
		count[<-results]++
	}
	if count[Stored] != 1 || count[Replay] != 19 {
		t.Fatalf("outcomes %v", count)
	}
}

func TestLastSequence(t *testing.T) {
	for desc, want := range map[string]uint64{"wrong last sequence: 42": 42, "wrong last sequence": 0, "": 0,
		"wrong last sequence: x": 0, "wrong last sequence: 0": 0} {
		got, ok := lastSequence(desc)
		if got != want || ok != (want > 0) {
			t.Errorf("lastSequence(%q) = %d %v", desc, got, ok)
		}
	}
}

// TestDurableSpoolsAndReplays: with the stream out of reach a callback is
// spooled (and its (token, kind) held locally: the same callback again is
// a duplicate, another a replay); on replay the first lands once, a
// duplicate of a stored one is dropped, and a callback whose (token, kind)
// another replica used meanwhile goes to rejected.replay_after_outage.
func TestDurableSpoolsAndReplays(t *testing.T) {
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
	obs := &replayCount{m: map[string]int{}}
	f := &fixture{s: s}
	// A publisher on a closed connection: every publish fails as with
	// NATS out of reach.
	deadNC, deadJS := natstest.Connect(t, ns)
	deadNC.Close()
	dead := NewDurable(New(deadNC, deadJS, st, 200*time.Millisecond), sp, s, obs, zap.NewNop())
	for _, c := range []struct {
		token, tx string
		want      Outcome
	}{
		{"tok_a", "AG_1", Spooled},
		{"tok_a", "AG_1", Duplicate},
		{"tok_a", "AG_2", Replay},
		{"tok_b", "AG_3", Spooled},
		{"tok_c", "AG_4", Spooled},
	} {
		got, err := dead.Store(ctx, f.msg("b2c.result", c.token, c.tx), true)
		if err != nil || got != c.want {
			t.Fatalf("%s %s: %v %v, want %v", c.token, c.tx, got, err, c.want)
		}
	}
	if dead.Pending() != 3 {
		t.Fatalf("pending %d", dead.Pending())
	}
	// Meanwhile another replica stored tok_b's callback, and another
	// callback on tok_c.
	live := New(nc, js, st, 2*time.Second)
	if out, err := live.Store(ctx, f.msg("b2c.result", "tok_b", "AG_3"), true); err != nil || out != Stored {
		t.Fatal(out, err)
	}
	if out, err := live.Store(ctx, f.msg("b2c.result", "tok_c", "AG_9"), true); err != nil || out != Stored {
		t.Fatal(out, err)
	}
	rejected, err := nc.SubscribeSync("daraja.rejected.replay_after_outage")
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.InfoLevel)
	d := NewDurable(live, sp, s, obs, zap.New(core))
	n, err := d.Drain(ctx)
	if err != nil || n != 3 {
		t.Fatalf("drained %d, %v", n, err)
	}
	if obs.m["stored"] != 1 || obs.m["duplicate"] != 1 || obs.m["replay"] != 1 {
		t.Fatalf("replay outcomes %v", obs.m)
	}
	errs := logs.FilterLevelExact(zap.ErrorLevel).FilterMessageSnippet("conflicts with another callback").AllUntimed()
	if len(errs) != 1 || errs[0].ContextMap()["msg_id"] != "b2c.result:AG_4" || errs[0].ContextMap()["token_id"] != "tok_c" {
		t.Fatalf("replay error logs %+v, want one naming b2c.result:AG_4 on tok_c", errs)
	}
	ev, err := rejected.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatal("no replay_after_outage event:", err)
	}
	var got outageEvent
	if err := json.Unmarshal(ev.Data, &got); err != nil || got.Reason != "replay_after_outage" || got.MsgID != "b2c.result:AG_4" ||
		got.TokenID != "tok_c" || got.Path != "/b2c/result" || strings.Contains(string(ev.Data), `{"tx":"AG_4"}`) {
		t.Fatalf("event %s (%v)", ev.Data, err)
	}
	uses, _ := live.Uses(ctx, s, "tok_a", "600000", []string{"b2c.result"})
	if uses["b2c.result"].TransactionID != "AG_1" {
		t.Fatalf("tok_a after replay: %+v", uses)
	}
	if info, _ := st.Info(ctx); info.State.Msgs != 3 {
		t.Fatalf("stream holds %d, want 3", info.State.Msgs)
	}
}

type replayCount struct{ m map[string]int }

func (r *replayCount) Replayed(o string) { r.m[o]++ }

// TestMissingOnce: a token without callbacks gets one missing event however
// many replicas resolve it, and a token with a callback gets none.
func TestMissingOnce(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 1)
	m1, err := OpenMissing(ctx, f.js, f.pub, "daraja_missing", 1, time.Hour, f.s, "e1")
	if err != nil {
		t.Fatal(err)
	}
	m2, err := OpenMissing(ctx, f.js, f.pub, "daraja_missing", 1, time.Hour, f.s, "e2")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.pub.Store(ctx, f.msg("b2c.timeout", "tok_used", "AG_1"), true); err != nil {
		t.Fatal(err)
	}
	sent := 0
	for _, m := range []*Missing{m1, m2, m1} {
		for _, id := range []string{"tok_lost", "tok_used"} {
			ok, err := m.Resolve(ctx, MissingToken{ID: id, Kinds: []string{"b2c.result", "b2c.timeout"}, Shortcode: "600000",
				IssuedAt: time.Now().Add(-time.Hour), ExpiresAt: time.Now()})
			if err != nil {
				t.Fatal(err)
			}
			if ok {
				sent++
			}
		}
	}
	info, _ := f.stream.Info(ctx, jetstream.WithSubjectFilter("daraja.missing.>"))
	if sent != 1 || info.State.Subjects["daraja.missing.b2c.result.600000"] != 1 || len(info.State.Subjects) != 1 {
		t.Fatalf("sent %d, missing subjects %v", sent, info.State.Subjects)
	}
}

// BenchmarkCallbackMsg is the header build on the hot path.
func BenchmarkCallbackMsg(b *testing.B) {
	c := Callback{Kind: "stk.callback", Shortcode: "174379", TransactionID: "ws_CO_191220191020363925", Receipt: "NLJ7RT61SV",
		ResultCode: "0", Reference: "ORDER-1042", TokenID: "tok_6v3r7ypjmnwrytos", SourceIP: "196.201.214.200",
		ReceivedAt: time.Now(), Edge: "edge-1", Body: []byte("{}")}
	s := Subjects{Prefix: "daraja"}
	b.ReportAllocs()
	for b.Loop() {
		_ = c.Msg(s.Callback(c.Kind, c.Shortcode, c.TokenID))
	}
}
