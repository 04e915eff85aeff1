package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/daraja-edge/daraja-edge/internal/natstest"
)

func TestTailLineMasksAndNeverPrintsBodies(t *testing.T) {
	body, err := os.ReadFile("daraja/testdata/fixtures/stk_callback_success.json")
	if err != nil {
		t.Fatal(err)
	}
	m := &nats.Msg{Subject: "daraja.cb.stk.callback.174379", Data: body, Header: nats.Header{
		"Daraja-Kind": {"stk.callback"}, "Daraja-Shortcode": {"174379"},
		"Daraja-Transaction-Id": {"ws_CO_191220191020363925"}, "Daraja-Result-Code": {"0"},
	}}
	for _, asJSON := range []bool{false, true} {
		var out bytes.Buffer
		pr := &tailPrinter{w: &out, json: asJSON, prefix: "daraja"}
		pr.print(m)
		pr.print(&nats.Msg{Subject: "daraja.rejected.token_replay", Data: []byte(`{"reason":"token_replay","source_ip":"127.0.0.9","path":"/stk/callback"}`)})
		pr.print(&nats.Msg{Subject: "daraja.missing.b2c.result.600000", Data: []byte(`{"token_id":"tok_x","kinds":["b2c.result"],"shortcode":"600000"}`)})
		text := out.String()
		lines := strings.Split(strings.TrimSpace(text), "\n")
		if len(lines) != 3 {
			t.Fatalf("want 3 lines, got %q", text)
		}
		if strings.Contains(text, "254708374149") || strings.Contains(text, "MerchantRequestID") {
			t.Errorf("tail printed a phone number or body: %s", text)
		}
		if !strings.Contains(lines[0], "2547******49") || !strings.Contains(lines[0], "1.00") {
			t.Errorf("callback line: %s", lines[0])
		}
		if !strings.Contains(lines[1], "token_replay") || !strings.Contains(lines[2], "tok_x") {
			t.Errorf("event lines: %s", text)
		}
		if asJSON {
			for _, l := range lines {
				var v map[string]any
				if err := json.Unmarshal([]byte(l), &v); err != nil {
					t.Errorf("not JSON: %s", l)
				}
			}
		}
	}
}

// TestTailMasksPhoneInCheckoutID: since 2022 an STK CheckoutRequestID is
// ws_CO_<17-digit timestamp><9-digit payer number>. tail shows it with the
// phone part masked but for its last three digits (enough to find the
// callback on the stream), in text and JSON, and never the 9 digits.
func TestTailMasksPhoneInCheckoutID(t *testing.T) {
	body, err := os.ReadFile("testdata/callbacks/stk.callback__success.json")
	if err != nil {
		t.Fatal(err)
	}
	const (
		id     = "ws_CO_15032026102233101700000101" // 17-digit timestamp, then 700000101
		masked = "ws_CO_15032026102233101******101"
		phone  = "700000101"
	)
	if !bytes.Contains(body, []byte(id)) {
		t.Fatalf("the testdata body does not hold %s", id)
	}
	m := &nats.Msg{Subject: "daraja.cb.stk.callback.174379.tok_x", Data: body, Header: nats.Header{
		"Daraja-Kind": {"stk.callback"}, "Daraja-Shortcode": {"174379"},
		"Daraja-Transaction-Id": {id}, "Daraja-Result-Code": {"0"}, "Daraja-Token-Id": {"tok_x"},
	}}
	for _, asJSON := range []bool{false, true} {
		var out bytes.Buffer
		(&tailPrinter{w: &out, json: asJSON, prefix: "daraja"}).print(m)
		text := out.String()
		if strings.Contains(text, phone) {
			t.Errorf("json=%v: tail printed the payer's number held in the CheckoutRequestID: %s", asJSON, text)
		}
		if !strings.Contains(text, masked) {
			t.Errorf("json=%v: want the id as %s: %s", asJSON, masked, text)
		}
	}
}

// TestTailSaysWhenNATSGoes: tail tells its user when it loses NATS.
func TestTailSaysWhenNATSGoes(t *testing.T) {
	ns := natstest.Server(t)
	_, js := natstest.Connect(t, ns)
	if _, err := js.CreateStream(context.Background(), jetstream.StreamConfig{Name: "DARAJA", Subjects: []string{"daraja.cb.>", "daraja.missing.>"}}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errb := &lockedWriter{w: &bytes.Buffer{}}
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"tail", "--nats", ns.ClientURL()}, io.Discard, errb) }()
	time.Sleep(300 * time.Millisecond) // let tail subscribe
	ns.Shutdown()
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(errb.String(), "lost NATS"); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("tail said nothing when NATS went away: %q", errb.String())
		}
	}
	cancel()
	<-done
}

// TestTailExportEnds: `tail --export` writes what the stream holds on the
// callback and missing subjects, in order, and exits 0 by itself (a
// script writing a file for reconcile --callbacks must not hang); on an
// empty stream it writes nothing and exits too.
func TestTailExportEnds(t *testing.T) {
	ctx := context.Background()
	ns := natstest.Server(t)
	_, js := natstest.Connect(t, ns)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "DARAJA", Subjects: []string{"daraja.cb.>", "daraja.missing.>", "daraja.other.>"}}); err != nil {
		t.Fatal(err)
	}
	export := func() []exportLine {
		t.Helper()
		var out, errb bytes.Buffer
		done := make(chan error, 1)
		go func() { done <- run(ctx, []string{"tail", "--export", "--nats", ns.ClientURL()}, &out, &errb) }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("tail --export: %v (%s)", err, errb.String())
			}
		case <-time.After(20 * time.Second):
			t.Fatal("tail --export did not exit after writing the stream")
		}
		var lines []exportLine
		for l := range strings.Lines(out.String()) {
			var e exportLine
			if err := json.Unmarshal([]byte(l), &e); err != nil {
				t.Fatalf("line %q: %v", l, err)
			}
			lines = append(lines, e)
		}
		return lines
	}
	if got := export(); len(got) != 0 {
		t.Fatalf("empty stream: %d lines", len(got))
	}
	const n = 1203 // more than one fetch
	for i := range n {
		subj := fmt.Sprintf("daraja.cb.stk.callback.174379.tok_%016d", i)
		if i%100 == 7 {
			subj = fmt.Sprintf("daraja.missing.stk.callback.174379.tok_%016d", i)
		}
		if _, err := js.Publish(ctx, subj, fmt.Appendf(nil, `{"i":%d}`, i)); err != nil {
			t.Fatal(err)
		}
		if i%400 == 0 {
			if _, err := js.Publish(ctx, "daraja.other.x", []byte(`{}`)); err != nil {
				t.Fatal(err)
			}
		}
	}
	got := export()
	if len(got) != n {
		t.Fatalf("%d lines, want %d", len(got), n)
	}
	for i, l := range got {
		if string(l.Body) != fmt.Sprintf(`{"i":%d}`, i) || !strings.HasSuffix(l.Subject, fmt.Sprintf("tok_%016d", i)) {
			t.Fatalf("line %d: %s %s", i, l.Subject, l.Body)
		}
	}
}
