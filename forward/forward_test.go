package forward

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
	"go.uber.org/zap/zaptest"

	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/internal/natstest"
	"github.com/daraja-edge/daraja-edge/publish"
	"github.com/daraja-edge/daraja-edge/verify"
)

var (
	secretA = "whsec_" + base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))
	secretB = "whsec_" + base64.StdEncoding.EncodeToString([]byte("fedcba9876543210fedcba9876543210"))
)

// delivery is one request the app stand-in received.
type delivery struct {
	proto       string // HTTP/1.1 or HTTP/2.0
	arrived, at time.Time
	concurrent  int // requests in flight when it arrived, itself included
	order       int // its place among the requests, counted where concurrent is (arrived is taken before the body is read)
	path, query string
	header      http.Header
	body        []byte
	status      int
}

// app is an HTTP app stand-in: it verifies every signature with the
// Standard Webhooks reference library (each secret on its own) and records
// every request; answer decides the status.
type app struct {
	t      *testing.T
	srv    *httptest.Server
	mu     sync.Mutex
	got    []delivery
	answer func(n int, r *http.Request) (status int, hdr map[string]string)
	hooks  []*standardwebhooks.Webhook
	// delay holds each request this long before answering, so requests
	// overlap; inflight counts requests being answered, per webhook-id
	// and in all; overlaps counts a webhook-id arriving while the same
	// one is in flight (a concurrent duplicate).
	delay       time.Duration
	inflight    map[string]int
	inflightAll int
	entered     int // requests counted in, in order
	maxInflight int
	overlaps    int
	// gate, if set, runs first for each request, outside the lock (a test
	// holds requests there).
	gate func(r *http.Request)
}

func newApp(t *testing.T, secrets ...string) *app {
	a := &app{t: t, inflight: map[string]int{}}
	for _, s := range secrets {
		wh, err := standardwebhooks.NewWebhook(s)
		if err != nil {
			t.Fatal(err)
		}
		a.hooks = append(a.hooks, wh)
	}
	a.srv = httptest.NewServer(http.HandlerFunc(a.serve))
	t.Cleanup(a.srv.Close)
	return a
}

func (a *app) serve(w http.ResponseWriter, r *http.Request) {
	if a.gate != nil {
		a.gate(r)
	}
	arrived := time.Now()
	body, _ := io.ReadAll(r.Body)
	for i, wh := range a.hooks {
		if err := wh.Verify(body, r.Header); err != nil {
			a.t.Errorf("secret %d: signature does not verify: %v", i, err)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
	}
	id := r.Header.Get("webhook-id")
	a.mu.Lock()
	if a.inflight[id] > 0 {
		a.overlaps++
	}
	a.inflight[id]++
	a.inflightAll++
	a.entered++
	concurrent, order := a.inflightAll, a.entered
	a.maxInflight = max(a.maxInflight, a.inflightAll)
	delay := a.delay
	a.mu.Unlock()
	time.Sleep(delay)
	a.mu.Lock()
	a.inflight[id]--
	a.inflightAll--
	n := len(a.got)
	status, hdr := http.StatusOK, map[string]string(nil)
	if a.answer != nil {
		status, hdr = a.answer(n, r)
	}
	a.got = append(a.got, delivery{proto: r.Proto, arrived: arrived, at: time.Now(), concurrent: concurrent, order: order, path: r.URL.Path, query: r.URL.RawQuery, header: r.Header.Clone(), body: body, status: status})
	a.mu.Unlock()
	for k, v := range hdr {
		w.Header().Set(k, v)
	}
	w.WriteHeader(status)
}

func (a *app) deliveries() []delivery {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]delivery(nil), a.got...)
}

// env is a real JetStream with the edge's stream.
type env struct {
	t      *testing.T
	nc     *nats.Conn
	js     jetstream.JetStream
	stream jetstream.Stream
	subj   publish.Subjects
	url    string
}

func newEnv(t *testing.T) *env {
	ns := natstest.Server(t)
	nc, js := natstest.Connect(t, ns)
	s := publish.Subjects{Prefix: "daraja"}
	st, err := publish.EnsureStream(context.Background(), js, publish.StreamOptions{Name: "DARAJA", Subjects: s.StreamSubjects(),
		Replicas: 1, DuplicateWindow: time.Hour, MaxAge: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, nc: nc, js: js, stream: st, subj: s, url: ns.ClientURL()}
}

// store publishes a callback shaped as the edge stores it and returns its
// stream sequence.
func (e *env) store(kind, shortcode, tx, tokenID string, body []byte) uint64 {
	e.t.Helper()
	cb := publish.Callback{Kind: kind, Shortcode: shortcode, TransactionID: tx, TokenID: tokenID, SourceIP: "196.201.214.200",
		Reference: "REF-1", ReceivedAt: time.Now(), Edge: "edge-1", Body: body}
	ack, err := e.js.PublishMsg(context.Background(), cb.Msg(e.subj.Callback(kind, shortcode, tokenID)))
	if err != nil {
		e.t.Fatal(err)
	}
	return ack.Sequence
}

func destination(name, url string) config.Destination {
	d := config.DefaultDestination()
	d.Name, d.URL, d.Secrets = name, url, []string{secretA, secretB}
	d.Retry = []time.Duration{0, 20 * time.Millisecond, 40 * time.Millisecond}
	d.RetryAfterCap = 300 * time.Millisecond
	d.Timeout = 2 * time.Second
	d.Circuit = config.Circuit{Failures: 1000, Probe: 50 * time.Millisecond}
	return d
}

// start runs a forwarder (a replica) on its own connection.
func (e *env) start(tokens Tokens, ds ...config.Destination) *Forwarder {
	e.t.Helper()
	return e.startWith(tokens, nil, ds...)
}

// startWith is start with tune applied between New and Start (a shorter
// ack wait or lag interval, a registry).
func (e *env) startWith(tokens Tokens, tune func(*Forwarder), ds ...config.Destination) *Forwarder {
	e.t.Helper()
	nc, err := nats.Connect(e.url)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	f, err := New(Options{JS: js, Stream: "DARAJA", Prefix: "daraja", Destinations: ds, Tokens: tokens,
		Fallback: func(sc string) string {
			if sc == "600111" {
				return "reject"
			}
			return "accept"
		}, Log: zaptest.NewLogger(e.t)})
	if err != nil {
		e.t.Fatal(err)
	}
	if tune != nil {
		tune(f)
	}
	if err := f.Start(context.Background()); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		f.Stop(ctx)
	})
	return f
}

// eventually polls cond until it holds or 20 s pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func body(kind, tx string) []byte {
	return []byte(fmt.Sprintf("{ \"kind\" : %q,\n\t\"tx\":%q, \"odd\": [1, 2.50, null] }\n", kind, tx))
}

func TestEveryKindByteForByte(t *testing.T) {
	e := newEnv(t)
	a := newApp(t, secretA, secretB)
	d := destination("shop", a.srv.URL+"/mpesa/")
	d.Paths = map[string]string{"stk.callback": "/stk", "c2b.confirmation": "/confirmation"}
	d.Headers = map[string]string{"Authorization": "Bearer app-key"}
	d.ForwardedFor = true
	e.start(nil, d)
	want := map[string][]byte{}
	for i, k := range daraja.Kinds {
		if k == daraja.C2BValidation {
			continue
		}
		tx := "TX" + strconv.Itoa(i)
		want[tx] = body(string(k), tx)
		e.store(string(k), "600000", tx, "tok_abcdefghijklmnop", want[tx])
	}
	eventually(t, "every kind delivered", func() bool { return len(a.deliveries()) >= len(want) })
	got := a.deliveries()
	if len(got) != len(want) {
		t.Fatalf("%d deliveries, want %d", len(got), len(want))
	}
	for _, g := range got {
		tx := g.header.Get("Daraja-Transaction-Id")
		kind := g.header.Get("Daraja-Kind")
		if string(g.body) != string(want[tx]) {
			t.Errorf("%s: body %q, want %q", tx, g.body, want[tx])
		}
		wantPath := "/mpesa" + d.Paths[kind]
		if g.path != wantPath || g.query != "" {
			t.Errorf("%s: path %q query %q, want %q and none (never the token)", kind, g.path, g.query, wantPath)
		}
		if id := g.header.Get("webhook-id"); id != WebhookID(kind+":"+tx) || strings.Contains(id, ".") {
			t.Errorf("%s: webhook-id %q", kind, id)
		}
		if n := len(strings.Fields(g.header.Get("webhook-signature"))); n != 2 {
			t.Errorf("%s: %d signatures, want one per secret", kind, n)
		}
		for h, v := range map[string]string{"Content-Type": "application/json", "Authorization": "Bearer app-key",
			"X-Forwarded-For": "196.201.214.200", "Daraja-Shortcode": "600000", "Daraja-Token-Id": "tok_abcdefghijklmnop",
			"Daraja-Source-Ip": "196.201.214.200"} {
			if g.header.Get(h) != v {
				t.Errorf("%s: %s %q, want %q", kind, h, g.header.Get(h), v)
			}
		}
	}
}

// tokens is a token store read: forward_path by token id.
type tokens map[string]string

func (m tokens) Get(_ context.Context, id string) (verify.Record, error) {
	p, ok := m[id]
	if !ok {
		return verify.Record{}, verify.ErrNotFound
	}
	return verify.Record{ID: id, ForwardPath: p}, nil
}

func TestForwardPath(t *testing.T) {
	e := newEnv(t)
	a := newApp(t, secretA, secretB)
	d := destination("shop", a.srv.URL+"/base")
	d.Paths = map[string]string{"b2c.result": "/b2c"}
	e.start(tokens{"tok_withpath000000": "/payouts/77?src=daraja&k=a+b"}, d)
	e.store("b2c.result", "600000", "TXP", "tok_withpath000000", body("b2c.result", "TXP"))
	e.store("b2c.result", "600000", "TXQ", "tok_nopath00000000", body("b2c.result", "TXQ"))
	eventually(t, "two deliveries", func() bool { return len(a.deliveries()) == 2 })
	for _, g := range a.deliveries() {
		want := map[string]string{"TXP": "/base/payouts/77 k=a+b&src=daraja", "TXQ": "/base/b2c "}[g.header.Get("Daraja-Transaction-Id")]
		if got := g.path + " " + g.query; got != want {
			t.Errorf("target %q, want %q", got, want)
		}
	}
}

func TestAppDownThenRecovers(t *testing.T) {
	e := newEnv(t)
	a := newApp(t, secretA, secretB)
	// Each callback: 500, then 429 with Retry-After, then 200.
	a.answer = func(_ int, r *http.Request) (int, map[string]string) {
		n := 0
		for _, g := range a.got {
			if g.header.Get("webhook-id") == r.Header.Get("webhook-id") {
				n++
			}
		}
		switch n {
		case 0:
			return http.StatusInternalServerError, nil
		case 1:
			return http.StatusTooManyRequests, map[string]string{"Retry-After": "1"}
		}
		return http.StatusOK, nil
	}
	d := destination("shop", a.srv.URL)
	d.Retry = []time.Duration{0, 10 * time.Millisecond, 10 * time.Millisecond, 10 * time.Millisecond}
	f := e.start(nil, d)
	const n = 20
	for i := range n {
		e.store("stk.callback", "174379", "ws_CO_"+strconv.Itoa(i), "tok_abcdefghijklmnop", body("stk.callback", strconv.Itoa(i)))
	}
	eventually(t, "all delivered", func() bool {
		ds, err := f.Deliveries(context.Background(), "shop", "", StateDelivered, 0)
		return err == nil && len(ds) == n
	})
	ok := map[string]int{}
	for _, g := range a.deliveries() {
		if g.status == http.StatusOK {
			ok[g.header.Get("webhook-id")]++
		}
	}
	if len(ok) != n {
		t.Fatalf("%d callbacks delivered, want %d", len(ok), n)
	}
	for id, c := range ok {
		if c != 1 {
			t.Errorf("%s delivered %d times after success", id, c)
		}
	}
	if got := len(a.deliveries()); got != 3*n {
		t.Errorf("%d requests, want %d (two failed attempts and one success each)", got, 3*n)
	}
	ds, _ := f.Deliveries(context.Background(), "shop", "ws_CO_3", "", 0)
	if len(ds) != 1 || len(ds[0].Attempts) != 3 || ds[0].Attempts[1].Status != 429 {
		t.Errorf("history of ws_CO_3: %+v", ds)
	}
}

func TestDeadLetterThenReplay(t *testing.T) {
	e := newEnv(t)
	a := newApp(t, secretA, secretB)
	var healthy bool
	a.answer = func(int, *http.Request) (int, map[string]string) {
		if healthy {
			return http.StatusNoContent, nil
		}
		return http.StatusBadRequest, nil // 4xx is retried too
	}
	d := destination("shop", a.srv.URL)
	f := e.start(nil, d)
	b := body("c2b.confirmation", "RKTQDM7W6S")
	e.store("c2b.confirmation", "600999", "RKTQDM7W6S", "tok_abcdefghijklmnop", b)
	var dl *jetstream.RawStreamMsg
	eventually(t, "dead letter stored", func() bool {
		m, err := e.stream.GetLastMsgForSubject(context.Background(), "daraja.dlq.shop.c2b.confirmation.600999")
		dl = m
		return err == nil
	})
	if string(dl.Data) != string(b) || dl.Header.Get("Nats-Msg-Id") != "dlq:shop:c2b.confirmation:RKTQDM7W6S" ||
		dl.Header.Get("Daraja-Transaction-Id") != "RKTQDM7W6S" {
		t.Fatalf("dead letter: %q %v", dl.Data, dl.Header)
	}
	var atts []Attempt
	if err := json.Unmarshal([]byte(dl.Header.Get(HeaderAttempts)), &atts); err != nil || len(atts) != len(d.Retry) || atts[2].Status != 400 {
		t.Fatalf("attempts header %q: %v", dl.Header.Get(HeaderAttempts), err)
	}
	if got := len(a.deliveries()); got != len(d.Retry) {
		t.Errorf("%d attempts reached the app, want %d", got, len(d.Retry))
	}
	ds, err := f.Deliveries(context.Background(), "shop", "RKTQDM7W6S", StateDead, 0)
	if err != nil || len(ds) != 1 {
		t.Fatalf("dead record: %+v %v", ds, err)
	}
	a.mu.Lock()
	healthy = true
	a.mu.Unlock()
	res, err := f.Replay(context.Background(), ReplayRequest{Destination: "shop", DLQ: true})
	if err != nil || len(res.Queued) != 1 || res.Queued[0] != ds[0].Sequence {
		t.Fatalf("replay: %+v %v", res, err)
	}
	eventually(t, "replayed and delivered", func() bool {
		ds, err := f.Deliveries(context.Background(), "shop", "RKTQDM7W6S", StateDelivered, 0)
		return err == nil && len(ds) == 1
	})
	got := a.deliveries()
	if last := got[len(got)-1]; last.status != http.StatusNoContent || string(last.body) != string(b) {
		t.Errorf("replayed delivery: %d %q", last.status, last.body)
	}
	// Delivered now: a second replay from the dead letters selects nothing.
	if res, err := f.Replay(context.Background(), ReplayRequest{Destination: "shop", DLQ: true}); err != nil || len(res.Queued) != 0 {
		t.Errorf("second dlq replay: %+v %v", res, err)
	}
	if _, err := f.Replay(context.Background(), ReplayRequest{Destination: "nope", Sequence: 1}); !errors.Is(err, ErrUnknownDestination) {
		t.Errorf("unknown destination: %v", err)
	}
}

func TestTwoReplicasDeliverOnce(t *testing.T) {
	e := newEnv(t)
	a := newApp(t, secretA, secretB)
	d := destination("shop", a.srv.URL)
	d.Concurrency = 4
	f1 := e.start(nil, d)
	e.start(nil, d)
	const n = 100
	for i := range n {
		e.store("b2c.result", "600000", "AG_"+strconv.Itoa(i), "tok_abcdefghijklmnop", body("b2c.result", strconv.Itoa(i)))
	}
	eventually(t, "all delivered", func() bool {
		ds, err := f1.Deliveries(context.Background(), "shop", "", StateDelivered, 0)
		return err == nil && len(ds) == n
	})
	seen := map[string]int{}
	for _, g := range a.deliveries() {
		seen[g.header.Get("webhook-id")]++
	}
	if len(seen) != n {
		t.Fatalf("%d distinct callbacks, want %d", len(seen), n)
	}
	for id, c := range seen {
		if c != 1 {
			t.Errorf("%s delivered %d times", id, c)
		}
	}
}

func validationMsg(shortcode string) *nats.Msg {
	cb := publish.Callback{Kind: "c2b.validation", Shortcode: shortcode, TransactionID: "RKTQDM7W6S", TokenID: "tok_abcdefghijklmnop",
		SourceIP: "196.201.214.200", ReceivedAt: time.Now(), Body: []byte(`{"TransID":"RKTQDM7W6S","BusinessShortCode":"` + shortcode + `"}`)}
	return cb.Msg("daraja.validate." + shortcode)
}

func TestValidation(t *testing.T) {
	e := newEnv(t)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	a := newApp(t, secretA, secretB)
	a.answer = func(int, *http.Request) (int, map[string]string) { return http.StatusOK, nil }
	mux := http.NewServeMux()
	mux.HandleFunc("/validate/ok", func(w http.ResponseWriter, r *http.Request) {
		a.serve(httptest.NewRecorder(), r)
		io.WriteString(w, `{"ResultCode":"C2B00012","ResultDesc":"Invalid Account Number","ThirdPartyTransID":"ORD-9","Extra":1}`)
	})
	mux.HandleFunc("/validate/slow", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body) // so the server notices the client leave
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	mux.HandleFunc("/validate/junk", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, `<html>`) })
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	mk := func(name, path, sc string) config.Destination {
		d := destination(name, srv.URL)
		d.Shortcodes, d.ValidationURL, d.ValidationTimeout = []string{sc}, srv.URL+path, 300*time.Millisecond
		return d
	}
	f := e.start(nil, mk("ok", "/validate/ok", "600100"), mk("slow", "/validate/slow", "600111"), mk("junk", "/validate/junk", "600222"))
	for _, c := range []struct {
		sc, answer, decision, by string
		ok                       bool
	}{
		{"600100", `{"ResultCode":"C2B00012","ResultDesc":"Invalid Account Number","ThirdPartyTransID":"ORD-9"}`, "rejected", "app", true},
		{"600111", `{"ResultCode":"C2B00016","ResultDesc":"Rejected"}`, "rejected", "fallback", true}, // Cancelled: reject
		{"600222", `{"ResultCode":"0","ResultDesc":"Accepted"}`, "accepted", "fallback", true},
		{"600333", "", "", "", false}, // no validation_url: the NATS validators answer
	} {
		t.Run(c.sc, func(t *testing.T) {
			t0 := time.Now()
			ans, dec, by, ok := f.Validate(context.Background(), validationMsg(c.sc))
			if string(ans) != c.answer || dec != c.decision || by != c.by || ok != c.ok {
				t.Errorf("got %s %s %s %v", ans, dec, by, ok)
			}
			if el := time.Since(t0); el > 3*time.Second { // the budget is 300 ms; 3 s only guards a hang on a busy machine
				t.Errorf("answered after %s", el)
			}
		})
	}
	if n := len(a.deliveries()); n != 1 {
		t.Errorf("%d signed validation calls verified, want 1", n)
	}
}

func TestEgressRefused(t *testing.T) {
	for addr, refused := range map[string]bool{"169.254.169.254": true, "[fe80::1]": true, "[fd00:ec2::254]": true,
		"100.100.100.200": true, "0.0.0.0": true, "[::ffff:169.254.169.254]": true} {
		d := destination("x", "http://"+addr+":80/")
		cl, err := newClient(d)
		if err != nil {
			t.Fatal(err)
		}
		_, err = cl.Post("http://"+addr+":80/", "application/json", strings.NewReader("{}"))
		if errors.Is(err, ErrRefusedAddress) != refused {
			t.Errorf("%s: %v", addr, err)
		}
	}
	// Loopback is allowed, and a redirect is not followed.
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { t.Error("redirect followed") }))
	t.Cleanup(target.Close)
	redir := httptest.NewServer(http.RedirectHandler(target.URL, http.StatusTemporaryRedirect))
	t.Cleanup(redir.Close)
	cl, _ := newClient(destination("x", redir.URL))
	resp, err := cl.Post(redir.URL, "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTemporaryRedirect {
		t.Errorf("status %d", resp.StatusCode)
	}
}
