package admin

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/forward"
	"github.com/daraja-edge/daraja-edge/internal/natstest"
	"github.com/daraja-edge/daraja-edge/publish"
)

// TestDeliveries: a callback the app refuses is dead-lettered, found by
// GET /v1/deliveries, and replayed by POST /v1/deliveries/replay once the
// app is back, through a real forwarder on a real stream.
func TestDeliveries(t *testing.T) {
	d := newDeliveries(t)
	h := &harness{h: Handler(Options{Deliveries: d.f, APIKeys: []string{apiKey}, Log: zap.NewNop()})}
	d.publish(t, "AG_20191219_0000")
	list := func(q string) []forward.Delivery {
		t.Helper()
		rec := h.do("GET", "/v1/deliveries?"+q, "Bearer "+apiKey, "")
		var out struct{ Deliveries []forward.Delivery }
		if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &out) != nil {
			t.Fatalf("GET ?%s: %d %s", q, rec.Code, rec.Body)
		}
		return out.Deliveries
	}
	poll := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("never: %s", what)
			}
		}
	}
	poll("dead letter", func() bool { return len(list("destination=shop&state=dead&tx=AG_20191219_0000")) == 1 })
	if ds := list("destination=shop&state=dead&tx=AG_other"); len(ds) != 0 {
		t.Errorf("another tx listed: %+v", ds)
	}
	dead := list("destination=shop&state=dead")[0]
	if len(dead.Attempts) != 2 || dead.Attempts[0].Status != 503 {
		t.Errorf("attempts %+v", dead.Attempts)
	}
	d.up.Store(true)
	rec := h.do("POST", "/v1/deliveries/replay", "Bearer "+apiKey, `{"destination":"shop","dlq":true}`)
	if rec.Code != http.StatusAccepted || !strings.Contains(rec.Body.String(), `"queued":[`) {
		t.Fatalf("replay: %d %s", rec.Code, rec.Body)
	}
	poll("delivered after replay", func() bool { return len(list("destination=shop&state=delivered")) == 1 })
	for _, c := range []struct {
		method, target, body string
		status               int
	}{
		{"GET", "/v1/deliveries", "", 400},
		{"GET", "/v1/deliveries?destination=shop&state=lost", "", 400},
		{"GET", "/v1/deliveries?destination=nope", "", 404},
		{"POST", "/v1/deliveries/replay", `{"destination":"shop"}`, 400},
		{"POST", "/v1/deliveries/replay", `{"destination":"nope","sequence":1}`, 404},
		{"POST", "/v1/deliveries/replay", `{"destination":"shop","bogus":1}`, 400},
	} {
		if rec := h.do(c.method, c.target, "Bearer "+apiKey, c.body); rec.Code != c.status {
			t.Errorf("%s %s %s: %d, want %d (%s)", c.method, c.target, c.body, rec.Code, c.status, rec.Body)
		}
	}
	if rec := h.do("GET", "/v1/deliveries?destination=shop", "", ""); rec.Code != http.StatusUnauthorized {
		t.Errorf("without key: %d", rec.Code)
	}
}

// deliveries is a real forwarder with one destination, "shop", on a real
// stream, in front of an app that answers 503 until up.
type deliveries struct {
	f  *forward.Forwarder
	js jetstream.JetStream
	up *atomic.Bool
}

func newDeliveries(t *testing.T) *deliveries {
	t.Helper()
	ctx := context.Background()
	_, js := natstest.Connect(t, natstest.Server(t))
	s := publish.Subjects{Prefix: "daraja"}
	if _, err := publish.EnsureStream(ctx, js, publish.StreamOptions{Name: "DARAJA", Subjects: s.StreamSubjects(), Replicas: 1,
		DuplicateWindow: time.Hour, MaxAge: time.Hour}); err != nil {
		t.Fatal(err)
	}
	up := new(atomic.Bool)
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !up.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	t.Cleanup(app.Close)
	d := config.DefaultDestination()
	d.Name, d.URL, d.Retry = "shop", app.URL, []time.Duration{0, 10 * time.Millisecond}
	d.Secrets = []string{"whsec_" + base64.StdEncoding.EncodeToString([]byte("0123456789abcdef01234567"))}
	f, err := forward.New(forward.Options{JS: js, Stream: "DARAJA", Prefix: "daraja", Destinations: []config.Destination{d}})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Stop(ctx) })
	return &deliveries{f: f, js: js, up: up}
}

// publish puts a b2c.result callback of transaction tx on the stream.
func (d *deliveries) publish(t *testing.T, tx string) {
	t.Helper()
	s := publish.Subjects{Prefix: "daraja"}
	cb := publish.Callback{Kind: "b2c.result", Shortcode: "600000", TransactionID: tx, TokenID: "tok_abcdefghijklmnop",
		ReceivedAt: time.Now(), Body: []byte(`{"Result":{}}`)}
	if _, err := d.js.PublishMsg(context.Background(), cb.Msg(s.Callback(cb.Kind, cb.Shortcode, cb.TokenID))); err != nil {
		t.Fatal(err)
	}
}
