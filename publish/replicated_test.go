package publish

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/daraja-edge/daraja-edge/internal/natstest"
)

// TestStoreReplicated: single use on an R3 stream. One after another, the
// same callback twice is a duplicate (one stored) and another callback on
// the same (token, kind) a replay (nothing new stored). Racing writers on
// one fresh (token, kind) meet API errors 10164 ("wrong last sequence"
// without a sequence) and 10158 ("duplicate message id is in process"),
// which an R3 leader answers while another message on the subject, or one
// with the same Nats-Msg-Id, is proposed but not committed: nothing can be
// read yet (the subject's last message is "not found"), so the publish is
// asked again; every writer gets an answer, none an error.
func TestStoreReplicated(t *testing.T) {
	ctx := context.Background()
	servers := natstest.Cluster(t, 3)
	nc, js := natstest.ConnectURL(t, natstest.ClusterURLs(servers))
	s := Subjects{Prefix: "daraja"}
	st, err := EnsureStream(ctx, js, StreamOptions{Name: "DARAJA", Subjects: s.StreamSubjects(), Replicas: 3,
		DuplicateWindow: time.Hour, MaxAge: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	// Generous: a replicated ack waits for a quorum on a loaded machine.
	pub := New(nc, js, st, 30*time.Second)
	f := &fixture{s: s}
	for _, c := range []struct {
		name, tx string
		want     Outcome
	}{
		{"first", "AG_1", Stored},
		{"same again", "AG_1", Duplicate},
		{"same once more", "AG_1", Duplicate},
		{"another", "AG_2", Replay},
	} {
		if out, err := pub.Store(ctx, f.msg("b2c.result", "tok_r3", c.tx), true); err != nil || out != c.want {
			t.Fatalf("%s: %v %v, want %v", c.name, out, err, c.want)
		}
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 || info.Config.Replicas != 3 {
		t.Fatalf("stream holds %d messages (replicas %d), want 1 (3)", info.State.Msgs, info.Config.Replicas)
	}
	uses, err := pub.Uses(ctx, s, "tok_r3", "600000", []string{"b2c.result"})
	if err != nil || uses["b2c.result"].TransactionID != "AG_1" {
		t.Fatalf("uses %+v %v", uses, err)
	}
	// Racing writers on one fresh (token, kind): while the first is
	// proposed and not yet committed, the cluster answers 10164 without a
	// sequence. Half race the same callback, half another each: one is
	// stored, the copies are duplicates, the others replays; none fails.
	for round := 0; ; round++ {
		token := fmt.Sprintf("tok_race%d", round)
		before := pub.inFlight.Load()
		results := make(chan Outcome, 16)
		errs := make(chan error, 16)
		for i := range 16 {
			// Transaction ids unique to the round: a Msg-Id seen before
			// (on any subject) is a duplicate within the window.
			tx := fmt.Sprintf("AG_r%d_same", round)
			if i%2 == 1 {
				tx = fmt.Sprintf("AG_r%d_%d", round, i)
			}
			go func() {
				out, err := pub.Store(ctx, f.msg("b2c.result", token, tx), true)
				results <- out
				errs <- err
			}()
		}
		count := map[Outcome]int{}
		for range 16 {
			out, err := <-results, <-errs
			if err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
			count[out]++
		}
		if count[Stored] != 1 || count[Duplicate]+count[Replay] != 15 {
			t.Fatalf("round %d: outcomes %v", round, count)
		}
		uses, err := pub.Uses(ctx, s, token, "600000", []string{"b2c.result"})
		if err != nil {
			t.Fatal(err)
		}
		want := 0
		if uses["b2c.result"].TransactionID == fmt.Sprintf("AG_r%d_same", round) {
			want = 7 // the copies of the stored one
		}
		if count[Duplicate] != want {
			t.Fatalf("round %d: %v with %s stored", round, count, uses["b2c.result"].TransactionID)
		}
		t.Logf("round %d: %d answers while another message was in flight (10164, 10158)", round, pub.inFlight.Load()-before)
		// Several rounds: a read right after a 10164 finds the other
		// message committed often enough to hide a wrong answer once.
		if round >= 10 && pub.inFlight.Load() > 0 {
			break
		}
		if round == 30 {
			t.Fatal("no 10164 or 10158 answer in 30 rounds of racing writers")
		}
	}
}
