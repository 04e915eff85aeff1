package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/internal/edgetest"
	"github.com/daraja-edge/daraja-edge/verify"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func fixture(t *testing.T, name string) []byte {
	b, err := os.ReadFile(filepath.Join("..", "..", "daraja", "testdata", "fixtures", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestConsumerAgainstEdge runs the example against a real edge: it answers
// C2B validation, decodes every kind it is sent, and acks each message.
func TestConsumerAgainstEdge(t *testing.T) {
	e := edgetest.Start(t, edgetest.Config(t, ""))
	natsURL := e.Srv.NATSURL()
	var out syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, Options{NATSURL: natsURL, Stream: "DARAJA", Prefix: "daraja", Durable: "orders", Shortcode: "600638"}, &out)
	}()
	defer func() { cancel(); <-done }()

	// Wait for the validator and the consumer to be in place.
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, err := js.Consumer(ctx, "DARAJA", "orders"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("consumer not created")
		}
	}

	c2b := edgetest.Issue(t, e.Admin, verify.IssueRequest{Kinds: []daraja.Kind{daraja.C2BValidation, daraja.C2BConfirmation}, Shortcode: "600638", Reusable: true})
	send := func(kind daraja.Kind, token string, body []byte) string {
		status, answer := edgetest.Post(e.Public, kind, token, body)
		if status != 200 {
			t.Fatalf("%s: %d %s", kind, status, answer)
		}
		return answer
	}
	// The validator rejects "invoice008" and accepts "ACC-1042".
	if got := send(daraja.C2BValidation, c2b.Token, fixture(t, "c2b_validation.json")); !strings.Contains(got, `"0"`) {
		t.Errorf("validation of ACC-1042: %s", got)
	}
	bad := bytes.Replace(fixture(t, "c2b_validation.json"), []byte("ACC-1042"), []byte("nonsense"), 1)
	bad = bytes.Replace(bad, []byte("RKTQDM7W6T"), []byte("RKTQDM7W6X"), 1)
	if got := send(daraja.C2BValidation, c2b.Token, bad); !strings.Contains(got, "C2B00012") {
		t.Errorf("validation of a bad account: %s", got)
	}
	send(daraja.C2BConfirmation, c2b.Token, fixture(t, "c2b_confirmation.json"))
	stk := edgetest.Issue(t, e.Admin, verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379", Reference: "ORDER-9"})
	send(daraja.STKCallback, stk.Token, fixture(t, "stk_callback_success.json"))
	b2c := edgetest.Issue(t, e.Admin, verify.IssueRequest{Kinds: []daraja.Kind{daraja.B2CResult, daraja.B2CTimeout}, Shortcode: "600000", Reference: "PAYOUT-77"})
	send(daraja.B2CResult, b2c.Token, fixture(t, "b2c_result_success.json"))
	bal := edgetest.Issue(t, e.Admin, verify.IssueRequest{Kinds: []daraja.Kind{daraja.BalanceResult}, Shortcode: "600000"})
	send(daraja.BalanceResult, bal.Token, fixture(t, "balance_result.json"))

	want := []string{
		"c2b.validation 600638 RKTQDM7W6T amount=250.00 account=ACC-1042 decision=accepted",
		"c2b.validation 600638 RKTQDM7W6X amount=250.00 account=nonsense decision=rejected",
		"c2b.confirmation 600638 RKTQDM7W6S amount=10.00 account=invoice008",
		"stk.callback 174379 ws_CO_191220191020363925 result=0 amount=1.00 receipt=NLJ7RT61SV ref=ORDER-9",
		"b2c.result 600000 AG_20191219_00004e48cf7e3533f581 result=0 amount=10 ref=PAYOUT-77",
		"balance.result 600000 AG_20200206_00005e091a8ec6b9eac5 result=0",
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && strings.Count(out.String(), "\n") < len(want) {
		time.Sleep(50 * time.Millisecond)
	}
	for _, w := range want {
		if !strings.Contains(out.String(), w) {
			t.Errorf("consumer output lacks %q:\n%s", w, out.String())
		}
	}
	// Every message acked.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		c, _ := js.Consumer(ctx, "DARAJA", "orders")
		info, err := c.Info(ctx)
		if err == nil && info.NumAckPending == 0 && info.NumPending == 0 && info.AckFloor.Consumer == uint64(len(want)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not all acked: %+v", info)
		}
	}
}
