package edge

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/forward"
	"github.com/daraja-edge/daraja-edge/verify"
)

var fwdSecret = "whsec_" + base64.StdEncoding.EncodeToString([]byte("edge-forward-test-secret-0123"))

// appRequest is one request an app stand-in received.
type appRequest struct {
	id     string // webhook-id
	uri    string
	header http.Header
	body   []byte
	status int
}

// fwdApp is an app behind the forwarder: it verifies every request with
// the Standard Webhooks reference library, records it, and answers what
// answer says (200 by default).
type fwdApp struct {
	t      *testing.T
	wh     *standardwebhooks.Webhook
	mu     sync.Mutex
	reqs   []appRequest
	answer func(n int, r *http.Request) (int, map[string]string)
}

func newFwdApp(t *testing.T) *fwdApp {
	wh, err := standardwebhooks.NewWebhook(fwdSecret)
	if err != nil {
		t.Fatal(err)
	}
	return &fwdApp{t: t, wh: wh}
}

func (a *fwdApp) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	if err := a.wh.Verify(body, r.Header); err != nil {
		a.t.Errorf("signature: %v", err)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	a.mu.Lock()
	status, hdr := http.StatusOK, map[string]string(nil)
	if a.answer != nil {
		status, hdr = a.answer(len(a.reqs), r)
	}
	a.reqs = append(a.reqs, appRequest{id: r.Header.Get("webhook-id"), uri: r.URL.RequestURI(), header: r.Header.Clone(), body: body, status: status})
	a.mu.Unlock()
	for k, v := range hdr {
		w.Header().Set(k, v)
	}
	w.WriteHeader(status)
}

// serve answers on a new loopback port; it returns the base URL.
func (a *fwdApp) serve() string {
	srv := httptest.NewServer(a)
	a.t.Cleanup(srv.Close)
	return srv.URL
}

func (a *fwdApp) requests() []appRequest {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.reqs)
}

// delivered returns, per webhook-id, the body of its 2xx answer and how
// many 2xx answers it got.
func (a *fwdApp) delivered() (bodies map[string][]byte, times map[string]int) {
	bodies, times = map[string][]byte{}, map[string]int{}
	for _, r := range a.requests() {
		if r.status >= 200 && r.status < 300 {
			bodies[r.id] = r.body
			times[r.id]++
		}
	}
	return bodies, times
}

// shop is a destination for the app at url, with a quick schedule.
func shop(url string) config.Destination {
	d := config.DefaultDestination()
	d.Name, d.URL, d.Secrets = "shop", url, []string{fwdSecret}
	d.Retry = slices.Repeat([]time.Duration{100 * time.Millisecond}, 12)
	d.Retry[0] = 0
	d.Circuit = config.Circuit{Failures: 5, Probe: 300 * time.Millisecond}
	d.Timeout = 5 * time.Second
	return d
}

// stkBody is the STK fixture with its own CheckoutRequestID.
func stkBody(t *testing.T, id string) []byte {
	return bytes.Replace(fixture(t, "stk_callback_success.json"), []byte("ws_CO_191220191020363925"), []byte(id), 1)
}

// TestForwardThroughTheEdge: with forward: configured, a callback accepted
// by the running edge reaches the app byte for byte, signed as a Standard
// Webhook (verified with the reference library), without the URL token,
// on the token's forward_path; the app answering 500 first only delays it.
func TestForwardThroughTheEdge(t *testing.T) {
	a := newFwdApp(t)
	a.answer = func(n int, _ *http.Request) (int, map[string]string) {
		if n == 0 {
			return http.StatusInternalServerError, nil
		}
		return http.StatusOK, nil
	}
	url := a.serve()
	h := start(t, func(c *config.Config) {
		c.Forward.Destinations = []config.Destination{shop(url + "/mpesa")}
	})
	body := fixture(t, "stk_callback_success.json")
	tok := h.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379", ForwardPath: "/orders/77?src=daraja"})
	if r := h.callback(allowedSrc, daraja.STKCallback, tok.Token, body); r.status != 200 {
		t.Fatalf("callback: %d %s", r.status, r.body)
	}
	waitUntil(t, 30*time.Second, func() bool { _, n := a.delivered(); return len(n) == 1 })
	got := a.requests()
	if len(got) != 2 || !bytes.Equal(got[1].body, body) {
		t.Fatalf("%d requests; the app got other bytes than Daraja sent", len(got))
	}
	if got[1].uri != "/mpesa/orders/77?src=daraja" {
		t.Errorf("delivered to %s", got[1].uri)
	}
}

// TestForwardEveryKind: a callback of every kind in testdata/callbacks,
// accepted from an allowlisted source, reaches the app byte for byte,
// once, signed, with its Daraja-* headers and never the URL token.
func TestForwardEveryKind(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "testdata", "callbacks", "*.json"))
	if err != nil || len(files) < 13 {
		t.Fatalf("callback bodies: %d files, %v", len(files), err)
	}
	a := newFwdApp(t)
	url := a.serve()
	h := start(t, func(c *config.Config) {
		c.Limits.MaxBodyBytes = 65536
		c.Forward.Destinations = []config.Destination{shop(url)}
	})
	want := map[string][]byte{} // webhook-id → body
	kinds := map[daraja.Kind]bool{}
	var tokens []string
	for _, f := range files {
		kind := daraja.Kind(strings.SplitN(filepath.Base(f), "__", 2)[0])
		if kind == daraja.C2BValidation {
			continue // answered, not delivered
		}
		body, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		cb, err := daraja.Parse(kind, body)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		sc := cb.Shortcode
		if sc == "" {
			sc = "600000"
		}
		tok := h.issue(verify.IssueRequest{Kinds: []daraja.Kind{kind}, Shortcode: sc, Reusable: kind.IsC2B()})
		tokens = append(tokens, tok.Token)
		if r := h.callback(allowedSrc, kind, tok.Token, body); r.status != http.StatusOK {
			t.Fatalf("%s: %d %s", f, r.status, r.body)
		}
		id := forward.WebhookID(string(kind) + ":" + cb.TransactionID)
		if _, dup := want[id]; !dup { // a second file of one transaction is a duplicate: stored once
			want[id] = body
		}
		kinds[kind] = true
	}
	if len(kinds) != len(daraja.Kinds)-1 {
		t.Fatalf("testdata/callbacks covers %d kinds, want every kind but c2b.validation", len(kinds))
	}
	waitUntil(t, 60*time.Second, func() bool { b, _ := a.delivered(); return len(b) >= len(want) })
	bodies, times := a.delivered()
	for id, b := range want {
		if !bytes.Equal(bodies[id], b) {
			t.Errorf("%s: the app got other bytes than Daraja sent", id)
		}
		if times[id] != 1 {
			t.Errorf("%s delivered %d times", id, times[id])
		}
	}
	for _, r := range a.requests() {
		kind := r.header.Get("Daraja-Kind")
		if r.header.Get("Daraja-Source-Ip") != allowedSrc || r.header.Get("Daraja-Token-Id") == "" || kind == "" ||
			r.header.Get("Content-Type") != "application/json" {
			t.Errorf("%s: headers %v", r.id, r.header)
		}
		if strings.Contains(r.uri, "?") {
			t.Errorf("%s: delivered to %s (a query: the URL token?)", kind, r.uri)
		}
		for _, tok := range tokens {
			for k, vs := range r.header {
				if strings.Contains(strings.Join(vs, " "), tok) {
					t.Errorf("%s: header %s holds a URL token", kind, k)
				}
			}
		}
	}
}

// listenAt listens on addr again (the app coming back on its port).
func listenAt(t *testing.T, addr string) net.Listener {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		ln, err := net.Listen("tcp", addr)
		if err == nil {
			return ln
		}
		if time.Now().After(deadline) {
			t.Fatalf("listen %s again: %v", addr, err)
		}
	}
}

// TestForwardAppDownThenBack: the app is down (connection refused), then
// answers 500 and 429, then recovers. Daraja is answered 200 throughout
// and /readyz stays 200; afterwards every callback has reached the app
// byte for byte with exactly one 2xx, a callback reached the app again
// only after a failed attempt, and the retries metric counts every
// attempt after each callback's first (refused ones included).
func TestForwardAppDownThenBack(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // connection refused from now on
	a := newFwdApp(t)
	a.answer = func(n int, _ *http.Request) (int, map[string]string) {
		switch n {
		case 0, 2:
			return http.StatusInternalServerError, nil
		case 1, 3:
			return http.StatusTooManyRequests, map[string]string{"Retry-After": "1"}
		}
		return http.StatusOK, nil
	}
	h := start(t, func(c *config.Config) {
		d := shop("http://" + addr)
		d.Concurrency = 4
		d.Retry = slices.Repeat([]time.Duration{100 * time.Millisecond}, 100) // no dead letter in this test
		d.Retry[0] = 0
		c.Forward.Destinations = []config.Destination{d}
	})
	const n = 12
	sent := map[string][]byte{}
	for i := range n {
		id := "ws_CO_down" + strconv.Itoa(i)
		body := stkBody(t, id)
		tok := h.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379"})
		if r := h.callback(allowedSrc, daraja.STKCallback, tok.Token, body); r.status != http.StatusOK {
			t.Fatalf("callback while the app is down: %d %s", r.status, r.body)
		}
		sent[forward.WebhookID("stk.callback:"+id)] = body
	}
	waitUntil(t, 30*time.Second, func() bool {
		m := h.scrape()
		return m[`daraja_edge_forward_circuit_open{destination="shop"}`] == 1 &&
			m[`daraja_edge_forward_attempts_total{destination="shop",outcome="network_error"}`] >= 5
	})
	if status, body := h.admin(http.MethodGet, "/readyz", "", nil); status != http.StatusOK {
		t.Errorf("/readyz while the app is down: %d %s", status, body)
	}
	// The app comes back on its port: 500, 429, 500, 429, then 200s.
	srv := &http.Server{Handler: a, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(listenAt(t, addr)) }()
	t.Cleanup(func() { _ = srv.Close() })
	waitUntil(t, 60*time.Second, func() bool { b, _ := a.delivered(); return len(b) == n })
	waitUntil(t, 30*time.Second, func() bool {
		return h.scrape()[`daraja_edge_forward_circuit_open{destination="shop"}`] == 0
	})
	bodies, times := a.delivered()
	for id, b := range sent {
		if !bytes.Equal(bodies[id], b) || times[id] != 1 {
			t.Errorf("%s: delivered %d times, bytes equal %v", id, times[id], bytes.Equal(bodies[id], b))
		}
	}
	// A callback reaches the app again only after a failed attempt: each
	// callback's requests are failures, then its one success.
	reqs := a.requests()
	seen := map[string]bool{}
	for _, r := range reqs {
		if seen[r.id] {
			t.Errorf("%s reached the app after it was delivered", r.id)
		}
		if r.status < 300 {
			seen[r.id] = true
		}
	}
	m := h.scrape()
	refused := m[`daraja_edge_forward_attempts_total{destination="shop",outcome="network_error"}`]
	retries := m[`daraja_edge_forward_retries_total{destination="shop"}`]
	duplicates := len(reqs) - n
	if int(retries) != len(reqs)+int(refused)-n {
		t.Errorf("retries metric %v, want %d (%d requests and %v refused attempts for %d callbacks)", retries, len(reqs)+int(refused)-n, len(reqs), refused, n)
	}
	if duplicates != 4 {
		t.Errorf("%d requests beyond one per callback, want the 4 that failed", duplicates)
	}
	t.Logf("%v refused attempts, %d requests for %d callbacks: %d repeated after a failure; retries metric %v", refused, len(reqs), n, duplicates, retries)
}

// TestForwardDeadLetterAndReplay: a callback no attempt delivers ends on
// <prefix>.dlq.<destination>.<kind>.<shortcode> with its attempts, and
// POST /v1/deliveries/replay from the dead letters delivers it once the
// app is healthy; GET /v1/deliveries shows its state.
func TestForwardDeadLetterAndReplay(t *testing.T) {
	a := newFwdApp(t)
	var mu sync.Mutex
	healthy := false
	a.answer = func(int, *http.Request) (int, map[string]string) {
		mu.Lock()
		defer mu.Unlock()
		if healthy {
			return http.StatusOK, nil
		}
		return http.StatusUnprocessableEntity, nil
	}
	url := a.serve()
	h := start(t, func(c *config.Config) {
		d := shop(url)
		d.Retry = []time.Duration{0, 50 * time.Millisecond, 50 * time.Millisecond}
		d.Circuit.Failures = 100
		c.Forward.Destinations = []config.Destination{d}
	})
	body := fixture(t, "c2b_confirmation.json")
	cb, err := daraja.Parse(daraja.C2BConfirmation, body)
	if err != nil {
		t.Fatal(err)
	}
	tok := h.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.C2BConfirmation}, Shortcode: cb.Shortcode, Reusable: true})
	if r := h.callback(allowedSrc, daraja.C2BConfirmation, tok.Token, body); r.status != http.StatusOK {
		t.Fatalf("callback: %d %s", r.status, r.body)
	}
	subj := "daraja.dlq.shop.c2b.confirmation." + cb.Shortcode
	waitUntil(t, 30*time.Second, func() bool {
		_, err := h.stream.GetLastMsgForSubject(context.Background(), subj)
		return err == nil
	})
	dl, _ := h.stream.GetLastMsgForSubject(context.Background(), subj)
	var atts []forward.Attempt
	if err := json.Unmarshal([]byte(dl.Header.Get(forward.HeaderAttempts)), &atts); err != nil || len(atts) != 3 || atts[2].Status != 422 {
		t.Errorf("dead letter's attempts %q", dl.Header.Get(forward.HeaderAttempts))
	}
	if !bytes.Equal(dl.Data, body) || dl.Header.Get("Daraja-Transaction-Id") != cb.TransactionID {
		t.Errorf("dead letter %q %v", dl.Data, dl.Header)
	}
	if v := h.scrape()[`daraja_edge_forward_dead_letters_total{destination="shop"}`]; v != 1 {
		t.Errorf("dead letters metric %v", v)
	}
	mu.Lock()
	healthy = true
	mu.Unlock()
	status, res := h.admin(http.MethodPost, "/v1/deliveries/replay", testAdminKey, map[string]any{"destination": "shop", "dlq": true})
	var queued forward.ReplayResult
	if err := json.Unmarshal(res, &queued); status != http.StatusAccepted || err != nil || len(queued.Queued) != 1 {
		t.Fatalf("replay: %d %s", status, res)
	}
	waitUntil(t, 30*time.Second, func() bool { b, _ := a.delivered(); return len(b) == 1 })
	if b, _ := a.delivered(); !bytes.Equal(b[forward.WebhookID("c2b.confirmation:"+cb.TransactionID)], body) {
		t.Error("the replay delivered other bytes")
	}
	waitUntil(t, 30*time.Second, func() bool {
		status, res := h.admin(http.MethodGet, "/v1/deliveries?destination=shop&tx="+cb.TransactionID, testAdminKey, nil)
		var out struct{ Deliveries []forward.Delivery }
		return status == http.StatusOK && json.Unmarshal(res, &out) == nil && len(out.Deliveries) == 1 &&
			out.Deliveries[0].State == forward.StateDelivered && len(out.Deliveries[0].Attempts) == 4
	})
}

// TestForwardTwoReplicas: two edges on one NATS share each destination's
// consumer: callbacks sent to either are each delivered once to a
// healthy app.
func TestForwardTwoReplicas(t *testing.T) {
	a := newFwdApp(t)
	url := a.serve()
	h1 := start(t, func(c *config.Config) { c.Forward.Destinations = []config.Destination{shop(url)} })
	cfg := testConfig(t)
	cfg.NATS.URL = h1.srv.NATSURL()
	cfg.Forward.Destinations = []config.Destination{shop(url)}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	h2 := startConfig(t, cfg)
	const n = 30
	for i := range n {
		h := []*harness{h1, h2}[i%2]
		tok := h1.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379"})
		h.mu.Lock()
		h.tokens = append(h.tokens, tok.Token)
		h.mu.Unlock()
		if r := h.callback(allowedSrc, daraja.STKCallback, tok.Token, stkBody(t, "ws_CO_two"+strconv.Itoa(i))); r.status != http.StatusOK {
			t.Fatalf("callback %d: %d %s", i, r.status, r.body)
		}
	}
	waitUntil(t, 60*time.Second, func() bool { b, _ := a.delivered(); return len(b) == n })
	time.Sleep(2 * time.Second) // a second delivery would come now
	if got := len(a.requests()); got != n {
		t.Errorf("%d requests for %d callbacks", got, n)
	}
	m1 := h1.scrape()[`daraja_edge_forward_attempts_total{destination="shop",outcome="delivered"}`]
	m2 := h2.scrape()[`daraja_edge_forward_attempts_total{destination="shop",outcome="delivered"}`]
	if int(m1+m2) != n {
		t.Errorf("replicas delivered %v + %v, want %d in all", m1, m2, n)
	}
	t.Logf("replica 1 delivered %v, replica 2 %v", m1, m2)
	// One durable consumer for the destination, shared by both.
	var names []string
	for name := range h1.stream.ListConsumers(context.Background()).Info() {
		if strings.HasPrefix(name.Name, "forward_shop") {
			names = append(names, name.Name)
		}
	}
	if !slices.Equal(names, []string{forward.ConsumerName("shop")}) {
		t.Errorf("consumers %v, want the one durable %s", names, forward.ConsumerName("shop"))
	}
}

// TestForwardValidation: C2B validation is answered by the app's
// validation_url (its ResultCode and ThirdPartyTransID passed through to
// Daraja, recorded as decided by the app), and when the app is slow by
// the shortcode's fallback at the end of validation_timeout, before
// validation.timeout.
func TestForwardValidation(t *testing.T) {
	a := newFwdApp(t)
	done := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("/validate", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := a.wh.Verify(body, r.Header); err != nil {
			t.Errorf("validation call signature: %v", err)
		}
		io.WriteString(w, `{"ResultCode":"C2B00012","ResultDesc":"Invalid Account Number","ThirdPartyTransID":"ORD-9"}`)
	})
	mux.HandleFunc("/validate/slow", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		select {
		case <-r.Context().Done():
		case <-done:
		}
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(done) })
	const fast, slow = "600638", "600639"
	h := start(t, func(c *config.Config) {
		c.Validation.Timeout = 4 * time.Second
		c.C2B.Shortcodes = map[string]config.C2BShortcode{slow: {ResponseType: config.ResponseCancelled}}
		d1, d2 := shop(srv.URL), shop(srv.URL)
		d1.Name, d1.Shortcodes, d1.ValidationURL, d1.ValidationTimeout = "fast", []string{fast}, srv.URL+"/validate", time.Second
		d2.Name, d2.Shortcodes, d2.ValidationURL, d2.ValidationTimeout = "slow", []string{slow}, srv.URL+"/validate/slow", time.Second
		c.Forward.Destinations = []config.Destination{d1, d2}
	})
	for _, c := range []struct {
		shortcode, answer, decision, by string
	}{
		{fast, `{"ResultCode":"C2B00012","ResultDesc":"Invalid Account Number","ThirdPartyTransID":"ORD-9"}`, "rejected", "app"},
		{slow, `{"ResultCode":"C2B00016","ResultDesc":"Rejected"}`, "rejected", "fallback"},
	} {
		t.Run(c.by, func(t *testing.T) {
			body := bytes.Replace(fixture(t, "c2b_validation.json"), []byte(`"600638"`), []byte(`"`+c.shortcode+`"`), 1)
			body = bytes.Replace(body, []byte("RKTQDM7W6T"), []byte("RKTQDM"+c.shortcode[2:]), 1) // its own transaction
			tok := h.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.C2BValidation}, Shortcode: c.shortcode, Reusable: true})
			t0 := time.Now()
			r := h.callback(allowedSrc, daraja.C2BValidation, tok.Token, body)
			took := time.Since(t0)
			if r.status != http.StatusOK || r.body != c.answer {
				t.Errorf("answer to Daraja: %d %s, want %s", r.status, r.body, c.answer)
			}
			if took >= h.cfg.Validation.Timeout {
				t.Errorf("answered after %s, validation.timeout %s", took, h.cfg.Validation.Timeout)
			}
			m, err := h.stream.GetLastMsgForSubject(context.Background(), "daraja.cb.c2b.validation."+c.shortcode+"."+tok.ID)
			if err != nil {
				t.Fatal(err)
			}
			if m.Header.Get("Daraja-Decision") != c.decision || m.Header.Get("Daraja-Decision-By") != c.by {
				t.Errorf("recorded decision %q by %q, want %q by %q", m.Header.Get("Daraja-Decision"), m.Header.Get("Daraja-Decision-By"), c.decision, c.by)
			}
		})
	}
}
