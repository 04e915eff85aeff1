package main

import (
	"context"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/daraja-edge/daraja-edge/internal/natstest"
	"github.com/daraja-edge/daraja-edge/publish"
)

// TestVerifyStream: the verification finds a 200 that is not on the
// stream, a transaction stored twice under two ids, and one stored but not
// answered, and counts only what was published after the given sequence.
func TestVerifyStream(t *testing.T) {
	ctx := context.Background()
	_, js := natstest.Connect(t, natstest.Server(t))
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}}); err != nil {
		t.Fatal(err)
	}
	put := func(subject, tx, id string) {
		t.Helper()
		if _, err := js.PublishMsg(ctx, &nats.Msg{Subject: subject, Data: []byte("{}"), Header: nats.Header{
			publish.HeaderTransactionID: {tx}, publish.HeaderMsgID: {id}}}); err != nil {
			t.Fatal(err)
		}
	}
	put("t.a", "old", "old") // before the load: not counted
	after, err := lastSeq(ctx, js, "T")
	if err != nil {
		t.Fatal(err)
	}
	put("t.a", "tx1", "k:tx1")
	put("t.b", "tx2", "k:tx2")
	put("t.c", "tx2", "other:tx2") // tx2 under a second id
	put("t.d", "tx4", "k:tx4")     // stored, not answered
	put("t.e", "old", "again")     // not one of ours

	tests := []struct {
		name       string
		sent, ok   []string
		want       verdict
		wantFailed bool
	}{
		{"clean", []string{"tx1"}, []string{"tx1"}, verdict{sent: 1, ok: 1, stored: 1}, false},
		{"lost", []string{"tx1", "tx3"}, []string{"tx1", "tx3"}, verdict{sent: 2, ok: 2, stored: 1, lost: 1}, true},
		{"duplicated", []string{"tx2"}, []string{"tx2"}, verdict{sent: 1, ok: 1, stored: 2, duplicated: 1}, true},
		{"only after the start", []string{"old"}, []string{"old"}, verdict{sent: 1, ok: 1, stored: 1}, false},
		{"unanswered", []string{"tx1", "tx4"}, []string{"tx1"}, verdict{sent: 2, ok: 1, stored: 2, unanswered: 1}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := verifyStream(ctx, js, "T", "t.>", after, tt.sent, tt.ok)
			if err != nil {
				t.Fatal(err)
			}
			if v != tt.want {
				t.Errorf("got %+v, want %+v", v, tt.want)
			}
			// "unanswered" fails only the floor (1 of 2 answered < 98%).
			if failed := v.check(0.98) != nil; failed != tt.wantFailed {
				t.Errorf("check failed=%v, want %v (%v)", failed, tt.wantFailed, v)
			}
		})
	}
}
