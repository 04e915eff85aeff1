package edge

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/internal/natstest"
	"github.com/daraja-edge/daraja-edge/publish"
	"github.com/daraja-edge/daraja-edge/verify"
)

const accepted = `{"ResultCode":0,"ResultDesc":"Accepted"}`

var fixtureCases = []struct {
	file      string
	kind      daraja.Kind
	shortcode string
	txID      string
	result    string
}{
	{"c2b_confirmation.json", daraja.C2BConfirmation, "600638", "RKTQDM7W6S", ""},
	{"stk_callback_success.json", daraja.STKCallback, "174379", "ws_CO_191220191020363925", "0"},
	{"stk_callback_cancelled.json", daraja.STKCallback, "174379", "ws_CO_27072017151044001", "1032"},
	{"b2c_result_success.json", daraja.B2CResult, "600000", "AG_20191219_00004e48cf7e3533f581", "0"},
	{"b2c_result_failed.json", daraja.B2CResult, "600000", "AG_20191219_00006c6fddb15123addf", "2001"},
	{"reversal_result.json", daraja.ReversalResult, "600000", "AG_20181005_00004d7ee675c0c7ee0b", "21"},
	{"status_result.json", daraja.StatusResult, "600000", "AG_20200927_0000547b1e7e9d2fbb08", "0"},
	{"balance_result.json", daraja.BalanceResult, "600000", "AG_20200206_00005e091a8ec6b9eac5", "0"},
	{"c2b_validation.json", daraja.C2BValidation, "600638", "RKTQDM7W6T", ""},
}

// TestFixturesEndToEnd posts every shared fixture from an allowlisted
// source with a fresh token and checks each message on the stream: subject,
// headers, body byte for byte, exactly once.
func TestFixturesEndToEnd(t *testing.T) {
	h := start(t, nil)
	type sent struct {
		tok  verify.IssueResponse
		body []byte
	}
	var all []sent
	for _, fc := range fixtureCases {
		tok := h.issue(verify.IssueRequest{Kinds: []daraja.Kind{fc.kind}, Shortcode: fc.shortcode, Reference: "REF-" + fc.file})
		body := fixture(t, fc.file)
		// The URL handed out is the one Daraja will call.
		if want := "https://localhost:8443" + fc.kind.Path() + "?t=" + tok.Token; tok.URLs[string(fc.kind)] != want {
			t.Fatalf("url = %s, want %s", tok.URLs[string(fc.kind)], want)
		}
		r := h.callback(allowedSrc, fc.kind, tok.Token, body)
		want := accepted
		if fc.kind == daraja.C2BValidation {
			want = `{"ResultCode":"0","ResultDesc":"Accepted"}` // no validator: on_timeout accept
		}
		if r.status != http.StatusOK || r.body != want {
			t.Fatalf("%s: %d %s", fc.file, r.status, r.body)
		}
		all = append(all, sent{tok, body})
	}
	msgs := h.messages()
	if len(msgs) != len(fixtureCases) {
		t.Fatalf("stream holds %d messages, want %d", len(msgs), len(fixtureCases))
	}
	for i, fc := range fixtureCases {
		m := msgs[i]
		if want := "daraja.cb." + string(fc.kind) + "." + fc.shortcode + "." + all[i].tok.ID; m.Subject != want {
			t.Errorf("%s: subject %s, want %s", fc.file, m.Subject, want)
		}
		if !bytes.Equal(m.Data, all[i].body) {
			t.Errorf("%s: body changed on the way", fc.file)
		}
		want := map[string]string{
			"Nats-Msg-Id":           string(fc.kind) + ":" + fc.txID,
			"Daraja-Kind":           string(fc.kind),
			"Daraja-Shortcode":      fc.shortcode,
			"Daraja-Transaction-Id": fc.txID,
			"Daraja-Result-Code":    fc.result,
			"Daraja-Reference":      "REF-" + fc.file,
			"Daraja-Token-Id":       all[i].tok.ID,
			"Daraja-Source-Ip":      allowedSrc,
			"Daraja-Edge":           h.srv.name,
		}
		for k, v := range want {
			if got := m.Header.Get(k); got != v {
				t.Errorf("%s: header %s = %q, want %q", fc.file, k, got, v)
			}
		}
		at, err := time.Parse(time.RFC3339Nano, m.Header.Get("Daraja-Received-At"))
		if err != nil || time.Since(at) > time.Minute {
			t.Errorf("%s: Daraja-Received-At %q", fc.file, m.Header.Get("Daraja-Received-At"))
		}
	}
	// Token state shows the consuming transaction.
	status, body := h.admin(http.MethodGet, "/v1/tokens/"+all[1].tok.ID, testAdminKey, nil)
	var st verify.Status
	_ = json.Unmarshal(body, &st)
	if status != http.StatusOK || st.State != verify.StateConsumed || st.ConsumedBy != fixtureCases[1].txID {
		t.Errorf("token status: %d %s", status, body)
	}
}

// TestRejections: each hostile or broken request gets its status and
// publishes nothing.
func TestRejections(t *testing.T) {
	h := start(t, nil)
	stk := fixture(t, "stk_callback_success.json")
	stk2 := bytes.Replace(stk, []byte("ws_CO_191220191020363925"), []byte("ws_CO_OTHER"), 1)
	c2b := fixture(t, "c2b_confirmation.json")
	newSTK := func() string {
		return h.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379"}).Token
	}

	good := newSTK()
	revoked := h.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379"})
	if status, _ := h.admin(http.MethodDelete, "/v1/tokens/"+revoked.ID, testAdminKey, nil); status != http.StatusNoContent {
		t.Fatalf("revoke: %d", status)
	}
	expiring := h.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379", TTL: "1s"})
	b2c := h.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.B2CResult}, Shortcode: "600000"}).Token
	otherShortcode := h.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.C2BConfirmation}, Shortcode: "600999", Reusable: true}).Token
	wrong := []byte(good)
	wrong[20] ^= 1
	time.Sleep(1100 * time.Millisecond) // let "expiring" expire

	tests := []struct {
		name   string
		src    string
		method string
		path   string
		body   []byte
		hdr    map[string]string
		status int
		reason string
	}{
		// A stranger connecting directly is closed at accept
		// (TestRefusedAtAccept, TestStrangerRefusedAtAcceptBehindProxies):
		// the handler's refusals are of strangers behind the trusted proxy.
		{"source not allowlisted", proxySrc, "POST", "/stk/callback?t=" + newSTK(), stk,
			map[string]string{"X-Forwarded-For": strangerSrc}, 403, "source_not_allowed"},
		{"trusted proxy, rightmost entry not allowlisted", proxySrc, "POST", "/stk/callback?t=" + newSTK(), stk,
			map[string]string{"X-Forwarded-For": allowedSrc + ", " + strangerSrc}, 403, "source_not_allowed"},
		{"no token", allowedSrc, "POST", "/stk/callback", stk, nil, 403, "token_unknown"},
		{"empty token", allowedSrc, "POST", "/stk/callback?t=", stk, nil, 403, "token_unknown"},
		{"wrong token", allowedSrc, "POST", "/stk/callback?t=" + string(wrong), stk, nil, 403, "token_unknown"},
		{"made-up token", allowedSrc, "POST", "/stk/callback?t=" + strings.Repeat("A", 40), stk, nil, 403, "token_unknown"},
		{"two tokens", allowedSrc, "POST", "/stk/callback?t=" + good + "&t=" + good, stk, nil, 403, "token_unknown"},
		{"token in a header", allowedSrc, "POST", "/stk/callback", stk, map[string]string{"T": good}, 403, "token_unknown"},
		{"token of another kind", allowedSrc, "POST", "/stk/callback?t=" + b2c, stk, nil, 403, "token_wrong_kind"},
		{"token for another shortcode", allowedSrc, "POST", "/c2b/confirmation?t=" + otherShortcode, c2b, nil, 403, "token_wrong_shortcode"},
		{"expired token", allowedSrc, "POST", "/stk/callback?t=" + expiring.Token, stk, nil, 403, "token_expired"},
		{"revoked token", allowedSrc, "POST", "/stk/callback?t=" + revoked.Token, stk, nil, 403, "token_revoked"},
		{"body over the limit", allowedSrc, "POST", "/stk/callback?t=" + newSTK(), bytes.Repeat([]byte(" "), 5000), nil, 413, "body_too_large"},
		{"malformed JSON", allowedSrc, "POST", "/stk/callback?t=" + newSTK(), []byte(`{"Body":`), nil, 400, "malformed_body"},
		{"valid JSON, wrong shape", allowedSrc, "POST", "/stk/callback?t=" + newSTK(), c2b, nil, 400, "malformed_body"},
		{"wrong method", allowedSrc, "GET", "/stk/callback?t=" + newSTK(), nil, nil, 405, "method_not_allowed"},
		{"unknown path", allowedSrc, "POST", "/stk/callbacks?t=" + newSTK(), stk, nil, 404, "unknown_path"},
		{"trailing slash", allowedSrc, "POST", "/stk/callback/?t=" + newSTK(), stk, nil, 404, "unknown_path"},
		{"encoded path", allowedSrc, "POST", "/stk/%63allback?t=" + newSTK(), stk, nil, 404, "unknown_path"},
		{"unknown path from stranger is 403 first", proxySrc, "POST", "/nope", stk,
			map[string]string{"X-Forwarded-For": strangerSrc}, 403, "source_not_allowed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := h.count()
			r := h.post(tt.src, tt.method, tt.path, tt.body, tt.hdr)
			if r.status != tt.status {
				t.Errorf("status %d %s, want %d", r.status, r.body, tt.status)
			}
			if !strings.HasPrefix(r.body, `{"error":"`) {
				t.Errorf("answer %q is not a plain error", r.body)
			}
			if after := h.count(); after != before {
				t.Errorf("published %d messages", after-before)
			}
			reason, ev := h.rejection()
			from := tt.src
			if from == proxySrc {
				from = strangerSrc // the client the trusted proxy saw
			}
			if reason != tt.reason || ev["reason"] != tt.reason || ev["source_ip"] != from {
				t.Errorf("rejection event %s %v, want reason %s from %s", reason, ev, tt.reason, tt.src)
			}
		})
	}

	t.Run("duplicate versus replay", func(t *testing.T) {
		before := h.count()
		if r := h.callback(allowedSrc, daraja.STKCallback, good, stk); r.status != 200 || r.body != accepted {
			t.Fatalf("first: %d %s", r.status, r.body)
		}
		// The same callback again: 200, not published twice.
		if r := h.callback(allowedSrc, daraja.STKCallback, good, stk); r.status != 200 || r.body != accepted {
			t.Fatalf("repeat: %d %s", r.status, r.body)
		}
		// Another callback on the consumed token: replay.
		if r := h.callback(allowedSrc, daraja.STKCallback, good, stk2); r.status != 403 {
			t.Fatalf("replay: %d %s", r.status, r.body)
		}
		if got := h.count() - before; got != 1 {
			t.Fatalf("published %d, want 1", got)
		}
	})

	t.Run("trusted proxy forwarding an allowlisted source", func(t *testing.T) {
		before := h.count()
		r := h.post(proxySrc, "POST", "/stk/callback?t="+newSTK(), stk2, map[string]string{"X-Forwarded-For": "196.201.214.200, " + allowedSrc})
		if r.status != 200 {
			t.Fatalf("%d %s", r.status, r.body)
		}
		msgs := h.messages()
		if len(msgs) != before+1 || msgs[len(msgs)-1].Header.Get("Daraja-Source-Ip") != allowedSrc {
			t.Fatalf("want one message from %s", allowedSrc)
		}
	})

	t.Run("reusable C2B token deduplicates by TransID", func(t *testing.T) {
		tok := h.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.C2BConfirmation}, Shortcode: "600638", Reusable: true}).Token
		other := bytes.Replace(c2b, []byte("RKTQDM7W6S"), []byte("RKTQDM7W6Z"), 1)
		before := h.count()
		for _, b := range [][]byte{c2b, c2b, other, c2b} {
			if r := h.callback(allowedSrc, daraja.C2BConfirmation, tok, b); r.status != 200 {
				t.Fatalf("%d %s", r.status, r.body)
			}
		}
		if got := h.count() - before; got != 2 {
			t.Fatalf("published %d, want 2", got)
		}
	})
}

func TestAdminAuth(t *testing.T) {
	h := start(t, nil)
	req := verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379"}
	for name, key := range map[string]string{"no key": "", "wrong key": "not-the-admin-key-at-all", "prefix of key": testAdminKey[:10]} {
		status, body := h.admin(http.MethodPost, "/v1/tokens", key, req)
		if status != http.StatusUnauthorized || !strings.Contains(string(body), `"code":"unauthorized"`) {
			t.Errorf("%s: %d %s", name, status, body)
		}
		if status, _ := h.admin(http.MethodGet, "/v1/tokens/tok_aaaaaaaaaaaaaaaa", key, nil); status != http.StatusUnauthorized {
			t.Errorf("%s: GET %d", name, status)
		}
	}
	if status, body := h.admin(http.MethodPost, "/v1/tokens", testAdminKey, map[string]any{"kinds": []string{"stk.callback"}, "shortcode": "174379", "extra": 1}); status != 400 {
		t.Errorf("unknown field: %d %s", status, body)
	}
	if status, body := h.admin(http.MethodPost, "/v1/tokens", testAdminKey, verify.IssueRequest{Kinds: []daraja.Kind{"nope"}, Shortcode: "1"}); status != 400 || !strings.Contains(string(body), `"code":"invalid_request"`) {
		t.Errorf("bad request: %d %s", status, body)
	}
	if status, _ := h.admin(http.MethodGet, "/v1/tokens/tok_aaaaaaaaaaaaaaaa", testAdminKey, nil); status != 404 {
		t.Errorf("unknown id: %d", status)
	}
	for _, p := range []string{"/healthz", "/readyz"} {
		if status, body := h.admin(http.MethodGet, p, "", nil); status != 200 {
			t.Errorf("%s: %d %s", p, status, body)
		}
	}
}

// TestC2BValidation: a validator that accepts, one that rejects, none.
func TestC2BValidation(t *testing.T) {
	h := start(t, func(c *config.Config) {
		c.Validation.OnTimeout = config.OnTimeoutReject
		// Registered with ResponseType Completed: Daraja itself would accept.
		c.C2B.Shortcodes = map[string]config.C2BShortcode{"600639": {ResponseType: config.ResponseCompleted}}
	})
	body := fixture(t, "c2b_validation.json")
	tok := h.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.C2BValidation}, Shortcode: "600638", Reusable: true}).Token
	withTx := func(tx string) []byte {
		return bytes.Replace(body, []byte("RKTQDM7W6T"), []byte(tx), 1)
	}
	respond := func(answer string) func() {
		sub, err := h.nc.Subscribe("daraja.validate.600638", func(m *nats.Msg) {
			if m.Header.Get(publish.HeaderKind) != "c2b.validation" || m.Header.Get(publish.HeaderTransactionID) == "" {
				_ = m.Respond([]byte(`{"ResultCode":"C2B00016","ResultDesc":"bad headers"}`))
				return
			}
			_ = m.Respond([]byte(answer))
		})
		if err != nil {
			t.Fatal(err)
		}
		_ = h.nc.Flush()
		return func() { _ = sub.Unsubscribe(); _ = h.nc.Flush() }
	}
	decisionOf := func(tx string) (string, string) {
		for _, m := range h.messages() {
			if m.Header.Get("Daraja-Transaction-Id") == tx {
				if !strings.HasPrefix(m.Subject, "daraja.cb.c2b.validation.600638.tok_") {
					t.Errorf("decision recorded on %s", m.Subject)
				}
				return m.Header.Get("Daraja-Decision"), m.Header.Get("Daraja-Decision-By")
			}
		}
		return "", ""
	}

	t.Run("accepts", func(t *testing.T) {
		stop := respond(`{"ResultCode":"0","ResultDesc":"Accepted"}`)
		defer stop()
		r := h.callback(allowedSrc, daraja.C2BValidation, tok, withTx("VAL0001"))
		if r.status != 200 || r.body != `{"ResultCode":"0","ResultDesc":"Accepted"}` {
			t.Fatalf("%d %s", r.status, r.body)
		}
		if d, by := decisionOf("VAL0001"); d != "accepted" || by != "validator" {
			t.Errorf("decision %s by %s", d, by)
		}
	})
	t.Run("rejects", func(t *testing.T) {
		answer := `{"ResultCode":"C2B00012","ResultDesc":"Invalid Account Number"}`
		stop := respond(answer)
		defer stop()
		r := h.callback(allowedSrc, daraja.C2BValidation, tok, withTx("VAL0002"))
		if r.status != 200 || r.body != answer {
			t.Fatalf("%d %s", r.status, r.body)
		}
		if d, by := decisionOf("VAL0002"); d != "rejected" || by != "validator" {
			t.Errorf("decision %s by %s", d, by)
		}
	})
	// What Daraja gets is what Daraja-Decision records: the answer is
	// rebuilt from what was read, and a reply a standard JSON parser reads
	// otherwise than Go does is no answer (the fallback applies).
	t.Run("ambiguous replies", func(t *testing.T) {
		for i, c := range []struct{ reply, body, decision, by string }{
			{`{"ResultCode":"\u0030","ResultDesc":"Accepted"}`, `{"ResultCode":"0","ResultDesc":"Accepted"}`, "accepted", "validator"},
			{`{"ResultCode":0}`, `{"ResultCode":"0","ResultDesc":"Accepted"}`, "accepted", "validator"},
			{`{"ResultCode":"0","ResultDesc":"Accepted"}}`, `{"ResultCode":"C2B00016","ResultDesc":"Rejected"}`, "rejected", "invalid-reply"},
			{`{"resultCode":"0","resultDesc":"Accepted"}`, `{"ResultCode":"C2B00016","ResultDesc":"Rejected"}`, "rejected", "invalid-reply"},
			{`{"ResultCode":"0","ResultCode":"C2B00011"}`, `{"ResultCode":"C2B00016","ResultDesc":"Rejected"}`, "rejected", "invalid-reply"},
			{`{"ResultCode":true}`, `{"ResultCode":"C2B00016","ResultDesc":"Rejected"}`, "rejected", "invalid-reply"},
		} {
			stop := respond(c.reply)
			tx := fmt.Sprintf("VALAMB%02d", i)
			r := h.callback(allowedSrc, daraja.C2BValidation, tok, withTx(tx))
			stop()
			d, by := decisionOf(tx)
			if r.status != 200 || r.body != c.body || d != c.decision || by != c.by {
				t.Errorf("validator %s: Daraja got %d %s, recorded %s by %s; want %s, %s by %s", c.reply, r.status, r.body, d, by, c.body, c.decision, c.by)
			}
		}
	})
	// Daraja (or a balancer) sends the same validation again and the
	// validator now answers otherwise: Daraja is given the answer the
	// stream recorded the first time, never one it does not hold.
	t.Run("repeated validation", func(t *testing.T) {
		first := `{"ResultCode":"C2B00012","ResultDesc":"Invalid Account Number"}`
		stop := respond(first)
		r1 := h.callback(allowedSrc, daraja.C2BValidation, tok, withTx("VALREP01"))
		stop()
		stop = respond(`{"ResultCode":"0","ResultDesc":"Accepted"}`)
		r2 := h.callback(allowedSrc, daraja.C2BValidation, tok, withTx("VALREP01"))
		stop()
		if r1.body != first || r2.status != 200 || r2.body != first {
			t.Errorf("first answer %s, repeat %d %s; want %s both times", r1.body, r2.status, r2.body, first)
		}
		n := 0
		for _, m := range h.messages() {
			if m.Header.Get("Daraja-Transaction-Id") == "VALREP01" {
				n++
				if m.Header.Get(publish.HeaderDecision) != "rejected" || m.Header.Get(publish.HeaderDecisionAnswer) != first {
					t.Errorf("recorded %s %s", m.Header.Get(publish.HeaderDecision), m.Header.Get(publish.HeaderDecisionAnswer))
				}
			}
		}
		if n != 1 {
			t.Errorf("%d records of the validation, want 1", n)
		}
	})
	t.Run("no validator", func(t *testing.T) {
		t0 := time.Now()
		r := h.callback(allowedSrc, daraja.C2BValidation, tok, withTx("VAL0003"))
		if took := time.Since(t0); took > h.cfg.Validation.Timeout+time.Second {
			t.Errorf("answered after %s", took)
		}
		if r.status != 200 || r.body != `{"ResultCode":"C2B00016","ResultDesc":"Rejected"}` {
			t.Fatalf("%d %s", r.status, r.body)
		}
		if d, by := decisionOf("VAL0003"); d != "rejected" || by != "timeout" {
			t.Errorf("decision %s by %s", d, by)
		}
	})
	t.Run("no validator, shortcode registered Completed", func(t *testing.T) {
		tok := h.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.C2BValidation}, Shortcode: "600639", Reusable: true}).Token
		b := bytes.Replace(withTx("VAL0005"), []byte("600638"), []byte("600639"), 1)
		r := h.callback(allowedSrc, daraja.C2BValidation, tok, b)
		if r.status != 200 || r.body != `{"ResultCode":"0","ResultDesc":"Accepted"}` {
			t.Fatalf("%d %s, want the registered Completed answer", r.status, r.body)
		}
	})
	t.Run("validator too slow", func(t *testing.T) {
		sub, _ := h.nc.Subscribe("daraja.validate.600638", func(m *nats.Msg) {
			time.Sleep(h.cfg.Validation.Timeout + 500*time.Millisecond)
			_ = m.Respond([]byte(`{"ResultCode":"0","ResultDesc":"Accepted"}`))
		})
		_ = h.nc.Flush()
		defer func() { _ = sub.Unsubscribe() }()
		t0 := time.Now()
		r := h.callback(allowedSrc, daraja.C2BValidation, tok, withTx("VAL0004"))
		if took := time.Since(t0); took > h.cfg.Validation.Timeout+time.Second {
			t.Errorf("answered after %s", took)
		}
		if r.status != 200 || !strings.Contains(r.body, "C2B00016") {
			t.Fatalf("%d %s", r.status, r.body)
		}
	})
}

// TestSpoolWhenStreamGone: no ack means the callback is spooled (200),
// then replayed with the same Msg-Id once the stream is back.
func TestSpoolWhenStreamGone(t *testing.T) {
	h := start(t, nil)
	tok := h.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379"}).Token
	ctx := context.Background()
	cfg, err := h.stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.js.DeleteStream(ctx, h.cfg.NATS.Stream.Name); err != nil {
		t.Fatal(err)
	}
	body := fixture(t, "stk_callback_success.json")
	r := h.callback(allowedSrc, daraja.STKCallback, tok, body)
	if r.status != http.StatusOK || r.body != accepted {
		t.Fatalf("%d %s", r.status, r.body)
	}
	if _, n := h.srv.spool.Stats(); n != 1 {
		t.Fatalf("spool holds %d records", n)
	}
	// The same callback again while the stream is away: spooled again, and
	// de-duplicated by the stream on replay.
	if r := h.callback(allowedSrc, daraja.STKCallback, tok, body); r.status != http.StatusOK {
		t.Fatalf("repeat: %d %s", r.status, r.body)
	}
	if h.stream, err = h.js.CreateStream(ctx, cfg.Config); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if _, n := h.srv.spool.Stats(); n == 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	msgs := h.messages()
	if len(msgs) != 1 || !bytes.Equal(msgs[0].Data, body) || msgs[0].Header.Get("Nats-Msg-Id") != "stk.callback:ws_CO_191220191020363925" {
		t.Fatalf("stream holds %d messages after replay", len(msgs))
	}
}

// TestNeitherAckNorSpoolIs503: no ack and an unwritable spool: 503.
func TestNeitherAckNorSpoolIs503(t *testing.T) {
	h := start(t, nil)
	tok := h.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379"}).Token
	if err := h.js.DeleteStream(context.Background(), h.cfg.NATS.Stream.Name); err != nil {
		t.Fatal(err)
	}
	// A file where the spool directory was: no segment can be created.
	if err := os.RemoveAll(h.cfg.Spool.Dir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(h.cfg.Spool.Dir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	r := h.callback(allowedSrc, daraja.STKCallback, tok, fixture(t, "stk_callback_success.json"))
	if r.status != http.StatusServiceUnavailable || r.body != `{"error":"unavailable"}`+"\n" {
		t.Fatalf("%d %q", r.status, r.body)
	}
}

// TestGracefulStop: a stop lets the request in flight finish with its 200.
func TestGracefulStop(t *testing.T) {
	cfg := testConfig(t)
	srv, err := New(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	h := &harness{t: t, srv: srv, cfg: cfg, clients: map[string]*http.Client{}}
	h.roots = x509.NewCertPool()
	h.roots.AddCert(srv.Certificate())
	nc, err := nats.Connect(srv.NATSURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	// A slow validator keeps the request in flight while the stop begins.
	started := make(chan struct{})
	if _, err := nc.Subscribe("daraja.validate.600638", func(m *nats.Msg) {
		close(started)
		time.Sleep(500 * time.Millisecond)
		_ = m.Respond([]byte(`{"ResultCode":"0","ResultDesc":"Accepted"}`))
	}); err != nil {
		t.Fatal(err)
	}
	_ = nc.Flush()
	tok := h.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.C2BValidation}, Shortcode: "600638", Reusable: true}).Token
	res := make(chan reply, 1)
	go func() { res <- h.callback(allowedSrc, daraja.C2BValidation, tok, fixture(t, "c2b_validation.json")) }()
	<-started
	cancel()
	if r := <-res; r.status != 200 || r.body != `{"ResultCode":"0","ResultDesc":"Accepted"}` {
		t.Errorf("in-flight request: %d %s", r.status, r.body)
	}
	if err := <-done; err != nil {
		t.Errorf("Run after stop: %v", err)
	}
	if _, err := net.Dial("tcp", srv.PublicAddr().String()); err == nil {
		t.Error("public listener still accepts after stop")
	}
}

// TestSpoolSurvivesRestart: callbacks spooled while the stream is away are
// still on disk after a stop, and the next start replays them.
func TestSpoolSurvivesRestart(t *testing.T) {
	ns := natstest.Server(t)
	cfg := testConfig(t)
	cfg.NATS.URL = ns.ClientURL()
	first := start(t, func(c *config.Config) { *c = cfg })
	body := fixture(t, "stk_callback_success.json")
	tok := first.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379"}).Token
	streamCfg, err := first.stream.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := first.js.DeleteStream(context.Background(), cfg.NATS.Stream.Name); err != nil {
		t.Fatal(err)
	}
	if r := first.callback(allowedSrc, daraja.STKCallback, tok, body); r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	first.stop() // a stop that cannot drain: the stream is still gone
	if spooled := first.srv.Pending(); spooled != 1 {
		t.Fatalf("%d records left in the spool at stop, want 1", spooled)
	}

	_, js := natstest.Connect(t, ns)
	if _, err := js.CreateStream(context.Background(), streamCfg.Config); err != nil {
		t.Fatal(err)
	}
	second := start(t, func(c *config.Config) { *c = cfg })
	for deadline := time.Now().Add(15 * time.Second); second.count() == 0; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the restarted edge did not replay its spool")
		}
	}
	msgs := second.messages()
	if len(msgs) != 1 || !bytes.Equal(msgs[0].Data, body) {
		t.Fatalf("stream holds %d messages after the restart", len(msgs))
	}
}
