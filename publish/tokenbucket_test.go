package publish

import (
	"context"
	"testing"
	"time"

	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/internal/natstest"
	"github.com/daraja-edge/daraja-edge/spool"
	"github.com/daraja-edge/daraja-edge/verify"
)

// TestRequestPathNeverWritesTokenBucket: the request path (token check,
// then the durable store) reads the token bucket at most and never writes
// it: single use lives on the stream. Callbacks on single-use and reusable
// tokens (first, duplicate, replay; a token checked by a replica whose
// local copy lacks it) leave the bucket's stream at the same last
// sequence.
func TestRequestPathNeverWritesTokenBucket(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	nc, js := natstest.Connect(t, natstest.Server(t))
	s := Subjects{Prefix: "daraja"}
	st, err := EnsureStream(ctx, js, StreamOptions{Name: "DARAJA", Subjects: s.StreamSubjects(), Replicas: 1,
		DuplicateWindow: time.Hour, MaxAge: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	o := verify.StoreOptions{Bucket: "daraja_tokens", Replicas: 1, Retain: 48 * time.Hour}
	store, err := verify.NewStore(ctx, js, o, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Watch(ctx); err != nil {
		t.Fatal(err)
	}
	<-store.Synced()
	// Another replica that has not watched: it reads what it lacks.
	cold, err := verify.NewStore(ctx, js, o, nil)
	if err != nil {
		t.Fatal(err)
	}
	lim := verify.Limits{DefaultTTL: time.Hour, MaxTTL: 24 * time.Hour}
	tokens := map[string]verify.Issued{}
	for name, req := range map[string]verify.IssueRequest{
		"stk": {Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379", Reference: "ORDER-1"},
		"b2c": {Kinds: []daraja.Kind{daraja.B2CResult, daraja.B2CTimeout}, Shortcode: "600000"},
		"c2b": {Kinds: []daraja.Kind{daraja.C2BConfirmation}, Shortcode: "600638", Reusable: true},
	} {
		iss, err := store.Issue(ctx, req, lim)
		if err != nil {
			t.Fatal(err)
		}
		tokens[name] = iss
	}
	bucket, err := js.Stream(ctx, "KV_daraja_tokens")
	if err != nil {
		t.Fatal(err)
	}
	lastSeq := func() uint64 {
		t.Helper()
		info, err := bucket.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return info.State.LastSeq
	}
	before := lastSeq()

	sp, err := spool.Open(t.TempDir(), 1<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	d := NewDurable(New(nc, js, st, 5*time.Second), sp, s, nil, nil)
	for _, c := range []struct {
		replica *verify.Store
		token   string
		kind    daraja.Kind
		tx      string
		want    Outcome
	}{
		{store, "stk", daraja.STKCallback, "ws_CO_1", Stored},
		{store, "stk", daraja.STKCallback, "ws_CO_1", Duplicate},
		{cold, "stk", daraja.STKCallback, "ws_CO_2", Replay},
		{cold, "b2c", daraja.B2CTimeout, "AG_1", Stored},
		{store, "b2c", daraja.B2CResult, "AG_1", Stored},
		{store, "b2c", daraja.B2CResult, "AG_2", Replay},
		{store, "c2b", daraja.C2BConfirmation, "TX1", Stored},
		{cold, "c2b", daraja.C2BConfirmation, "TX2", Stored},
		{store, "c2b", daraja.C2BConfirmation, "TX1", Duplicate},
	} {
		g, err := c.replica.Authorize(ctx, tokens[c.token].Token, c.kind)
		if err != nil {
			t.Fatalf("%s %s: %v", c.token, c.tx, err)
		}
		cb := Callback{Kind: string(c.kind), Shortcode: g.Shortcode, TransactionID: c.tx, TokenID: g.ID,
			Reference: g.Reference, ReceivedAt: time.Now(), Body: []byte(`{}`)}
		out, err := d.Store(ctx, cb.Msg(s.Callback(cb.Kind, cb.Shortcode, cb.TokenID)), !g.Reusable)
		if err != nil || out != c.want {
			t.Fatalf("%s %s: %v %v, want %v", c.token, c.tx, out, err, c.want)
		}
	}
	if after := lastSeq(); after != before {
		t.Fatalf("the request path wrote the token bucket: last sequence %d → %d", before, after)
	}
	for name, iss := range tokens {
		rec, err := store.Get(ctx, iss.Record.ID)
		if err != nil || rec.State != verify.StateIssued {
			t.Fatalf("%s: %+v %v", name, rec, err)
		}
	}
}
