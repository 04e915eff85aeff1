package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/daraja-edge/daraja-edge/internal/natstest"
	"github.com/daraja-edge/daraja-edge/ratelimit"
	"github.com/daraja-edge/daraja-edge/verify"
)

const (
	apiKey   = "admin-key-for-tests-0123456789abcdef"
	wrongKey = "wrong-key-guess-that-is-long-000000000"
	remote   = "192.0.2.7:40000"
)

// noRefill is a limiter of 5 failures that does not refill within a test.
func noRefill() *ratelimit.PerSource { return ratelimit.New(1e-9, 5, 100) }

type harness struct {
	h     http.Handler
	logs  *observer.ObservedLogs
	token verify.IssueResponse // a real token, issued through the API
	asked *askedIDs
}

// askedIDs is the real token service, noting every id it is asked about.
type askedIDs struct {
	*verify.Issuer
	mu  sync.Mutex
	ids []string
}

func (a *askedIDs) note(id string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.ids = append(a.ids, id)
}

func (a *askedIDs) Status(ctx context.Context, id string) (verify.Status, error) {
	a.note(id)
	return a.Issuer.Status(ctx, id)
}

func (a *askedIDs) Revoke(ctx context.Context, id string) error {
	a.note(id)
	return a.Issuer.Revoke(ctx, id)
}

func (a *askedIDs) Rotate(ctx context.Context, req verify.RotateRequest) (verify.IssueResponse, error) {
	a.note(req.ID)
	return a.Issuer.Rotate(ctx, req)
}

// newHarness serves the admin API over a real token store on an embedded
// NATS server, logging (admin and store both) to an observer.
func newHarness(t *testing.T, lim Limiter) *harness {
	t.Helper()
	return newHarnessWith(t, lim, nil)
}

// newHarnessWith is newHarness with more options set by opt.
func newHarnessWith(t *testing.T, lim Limiter, opt func(*Options)) *harness {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	log := zap.New(core)
	_, js := natstest.Connect(t, natstest.Server(t))
	st, err := verify.NewStore(context.Background(), js, verify.StoreOptions{Bucket: "admin_test", Replicas: 1, Retain: time.Hour}, log)
	if err != nil {
		t.Fatal(err)
	}
	iss := &verify.Issuer{Store: st, PublicURL: "https://cb.example.co.ke", QueryParam: "t",
		Limits: verify.Limits{DefaultTTL: time.Hour, MaxTTL: 24 * time.Hour}}
	asked := &askedIDs{Issuer: iss}
	o := Options{Tokens: asked, APIKeys: []string{apiKey}, Limiter: lim, Log: log}
	if opt != nil {
		opt(&o)
	}
	h := &harness{h: Handler(o), logs: logs, asked: asked}
	body := `{"kinds":["stk.callback"],"shortcode":"174379"}`
	rec := h.do("POST", "/v1/tokens", "Bearer "+apiKey, body)
	if rec.Code != http.StatusCreated {
		t.Fatalf("issue: %d %s", rec.Code, rec.Body)
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &h.token); err != nil || h.token.Token == "" {
		t.Fatalf("issue answer %s: %v", rec.Body, err)
	}
	return h
}

func (h *harness) do(method, target, auth, body string) *httptest.ResponseRecorder {
	return h.doFrom(remote, method, target, auth, body)
}

func (h *harness) doFrom(from, method, target, auth, body string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodGet, target, strings.NewReader(body))
	r.Method = method // httptest.NewRequest refuses odd methods
	r.RemoteAddr = from
	if auth != "" {
		r.Header.Set("Authorization", auth)
	}
	rec := httptest.NewRecorder()
	h.h.ServeHTTP(rec, r)
	return rec
}

// leaks returns every logged entry, JSON-encoded, that holds any 12-byte
// piece of one of secrets.
func leaks(logs *observer.ObservedLogs, secrets ...string) []string {
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	var out []string
	for _, e := range logs.All() {
		buf, err := enc.EncodeEntry(e.Entry, e.Context)
		if err != nil {
			out = append(out, "unencodable entry: "+err.Error())
			continue
		}
		line := buf.String()
		buf.Free()
	scan:
		for _, s := range secrets {
			for i := 0; i+12 <= len(s); i++ {
				if strings.Contains(line, s[i:i+12]) {
					out = append(out, line)
					break scan
				}
			}
		}
	}
	return out
}

// TestLogsHoldNoSecret: whatever a client puts in the path, query, method
// or Authorization header, no token and no key (right or wrong) reaches
// any field of any log line, while refused requests are still logged.
func TestLogsHoldNoSecret(t *testing.T) {
	h := newHarness(t, nil)
	tok := h.token.Token
	for _, c := range []struct{ name, method, target, auth string }{
		{"token as id, wrong key", "GET", "/v1/tokens/" + tok, "Bearer " + wrongKey},
		{"token as id, no key", "DELETE", "/v1/tokens/" + tok, ""},
		{"token as id, right key", "GET", "/v1/tokens/" + tok, "Bearer " + apiKey},
		{"token to rotate, right key", "POST", "/v1/tokens/" + tok + "/rotate", "Bearer " + apiKey},
		{"token path and query", "GET", "/" + tok + "?t=" + tok, ""},
		{"token path and query, right key", "GET", "/" + tok + "?t=" + tok, "Bearer " + apiKey},
		{"key in query", "POST", "/v1/tokens?api_key=" + apiKey + "&t=" + tok, ""},
		{"wrong key in query", "GET", "/v1/tokens/x?key=" + wrongKey, "Bearer " + wrongKey},
		{"token as method", tok, "/v1/tokens", "Bearer " + wrongKey},
		{"token as method, unknown path", tok, "/" + tok, ""},
		{"token as key", "POST", "/v1/tokens", "Bearer " + tok},
		{"key without scheme", "POST", "/v1/tokens", apiKey},
		{"token in a control-byte path", "GET", "/v1/tokens/%0A" + tok, "Bearer " + wrongKey},
	} {
		t.Run(c.name, func(t *testing.T) {
			h.logs.TakeAll()
			h.do(c.method, c.target, c.auth, "")
			for _, l := range leaks(h.logs, tok, apiKey, wrongKey) {
				t.Errorf("secret logged: %s", l)
			}
		})
	}
	// A pasted token never reached the token service (whose errors and
	// logs name the ids it is asked about).
	for _, id := range h.asked.ids {
		if !verify.ValidID(id) {
			t.Errorf("the token service was asked about %q", id)
		}
	}
	// The check above sees log lines: refused requests are logged, with
	// the token-shaped part of their path redacted.
	h.logs.TakeAll()
	h.do("GET", "/v1/tokens/"+tok, "Bearer "+wrongKey, "")
	refused := h.logs.FilterField(zap.String("path", "/v1/tokens/[redacted]")).Len()
	if refused != 1 {
		t.Errorf("a refused request logged %d times with its path redacted, want once: %v", refused, h.logs.All())
	}
}

// TestValidKeyNotLockedOut: wrong keys from an address are limited, and
// the right key from the same address passes however many were spent.
func TestValidKeyNotLockedOut(t *testing.T) {
	h := newHarness(t, noRefill())
	statuses := map[int]int{}
	h.logs.TakeAll()
	for range 20 {
		statuses[h.do("POST", "/v1/tokens", "Bearer "+wrongKey, "").Code]++
	}
	if statuses[http.StatusUnauthorized] != 5 || statuses[http.StatusTooManyRequests] != 15 {
		t.Errorf("20 wrong keys answered %v, want 5×401 then 15×429", statuses)
	}
	if n := h.logs.Len(); n != 5 {
		t.Errorf("%d log lines for 20 wrong keys, want 5 (past the limit, refusals are quiet)", n)
	}
	body := `{"kinds":["stk.callback"],"shortcode":"174379"}`
	if rec := h.do("POST", "/v1/tokens", "Bearer "+apiKey, body); rec.Code != http.StatusCreated {
		t.Errorf("the right key after the wrong ones: %d %s", rec.Code, rec.Body)
	}
	if rec := h.do("GET", "/v1/tokens/"+h.token.ID, "Bearer "+apiKey, ""); rec.Code != http.StatusOK {
		t.Errorf("status with the right key after the wrong ones: %d %s", rec.Code, rec.Body)
	}
	// The right key gave the address nothing back.
	if rec := h.do("POST", "/v1/tokens", "Bearer "+wrongKey, ""); rec.Code != http.StatusTooManyRequests {
		t.Errorf("a wrong key after the right one: %d", rec.Code)
	}
	if rec := h.do("POST", "/v1/tokens", "", ""); rec.Code != http.StatusTooManyRequests || rec.Header().Get("Retry-After") == "" {
		t.Errorf("no key past the limit: %d, Retry-After %q", rec.Code, rec.Header().Get("Retry-After"))
	}
}

// TestFullLimiterTableStillLimits: with the limiter's table full, wrong
// keys from ever-new addresses are still limited (issue 12: it failed
// open), and the right key from one of them still passes.
func TestFullLimiterTableStillLimits(t *testing.T) {
	h := newHarness(t, ratelimit.New(1e-9, 2, 1))
	h.doFrom("192.0.2.1:1", "POST", "/v1/tokens", "Bearer "+wrongKey, "") // fills the table
	statuses := map[int]int{}
	for i := range 50 {
		from := fmt.Sprintf("198.51.100.%d:1", i)
		statuses[h.doFrom(from, "POST", "/v1/tokens", "Bearer "+wrongKey, "").Code]++
	}
	if statuses[http.StatusUnauthorized] != 2 || statuses[http.StatusTooManyRequests] != 48 {
		t.Errorf("50 new addresses at a full table answered %v, want 2×401 (one shared burst) then 48×429", statuses)
	}
	body := `{"kinds":["stk.callback"],"shortcode":"174379"}`
	if rec := h.doFrom("198.51.100.77:1", "POST", "/v1/tokens", "Bearer "+apiKey, body); rec.Code != http.StatusCreated {
		t.Errorf("the right key from an overflowed address: %d %s", rec.Code, rec.Body)
	}
}

// TestErrorsAreJSON: every error answer, unknown routes and wrong methods
// included, is the API's JSON error, with Allow on 405.
func TestErrorsAreJSON(t *testing.T) {
	h := newHarness(t, nil)
	for _, c := range []struct {
		name, method, target, auth string
		status                     int
		code, allow                string
	}{
		{"unknown path", "GET", "/nope", "", 404, "not_found", ""},
		{"root", "GET", "/", "", 404, "not_found", ""},
		{"metrics not served", "GET", "/metrics", "", 404, "not_found", ""},
		{"unclean path, no redirect", "POST", "/v1//tokens", "Bearer " + apiKey, 404, "not_found", ""},
		{"trailing slash", "GET", "/v1/tokens/", "Bearer " + apiKey, 404, "not_found", ""},
		{"dot segment", "GET", "/v1/tokens/../healthz", "", 404, "not_found", ""},
		{"wrong method on tokens", "PUT", "/v1/tokens", "Bearer " + apiKey, 405, "method_not_allowed", "GET, HEAD, POST"},
		{"wrong method on a token", "PUT", "/v1/tokens/" + h.token.ID, "Bearer " + apiKey, 405, "method_not_allowed", "DELETE, GET, HEAD, PATCH"},
		{"wrong method on healthz", "POST", "/healthz", "", 405, "method_not_allowed", "GET, HEAD"},
		{"no key", "POST", "/v1/tokens", "", 401, "unauthorized", ""},
		{"unknown token", "GET", "/v1/tokens/tok_aaaaaaaaaaaaaaaa", "Bearer " + apiKey, 404, "not_found", ""},
		{"not a token id", "DELETE", "/v1/tokens/whatever", "Bearer " + apiKey, 404, "not_found", ""},
		{"bad body", "POST", "/v1/tokens", "Bearer " + apiKey, 400, "invalid_request", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			rec := h.do(c.method, c.target, c.auth, "")
			if rec.Code != c.status {
				t.Fatalf("status %d, want %d (%s)", rec.Code, c.status, rec.Body)
			}
			if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			var e APIError
			dec := json.NewDecoder(bytes.NewReader(rec.Body.Bytes()))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&e); err != nil || e.Error.Code != c.code || e.Error.Message == "" {
				t.Errorf("body %q (%v), want code %q", rec.Body, err, c.code)
			}
			if got := rec.Header().Get("Allow"); got != c.allow {
				t.Errorf("Allow %q, want %q", got, c.allow)
			}
		})
	}
}

// TestRoutes: the token API answers with the right key.
func TestRoutes(t *testing.T) {
	h := newHarness(t, noRefill())
	id := h.token.ID
	for _, c := range []struct {
		name, method, target, auth, body string
		status                           int
	}{
		{"healthz", "GET", "/healthz", "", "", 200},
		{"readyz", "GET", "/readyz", "", "", 200},
		{"status", "GET", "/v1/tokens/" + id, "Bearer " + apiKey, "", 200},
		{"scheme in any case", "GET", "/v1/tokens/" + id, "bearer " + apiKey, "", 200},
		{"rotate", "POST", "/v1/tokens/" + id + "/rotate", "Bearer " + apiKey, `{"overlap":"1h"}`, 201},
		{"annotate", "PATCH", "/v1/tokens/" + id, "Bearer " + apiKey, `{"checkout_request_id":"ws_CO_191220191020363925"}`, 200},
		{"annotate nothing", "PATCH", "/v1/tokens/" + id, "Bearer " + apiKey, `{}`, 400},
		{"annotate unknown field", "PATCH", "/v1/tokens/" + id, "Bearer " + apiKey, `{"x":1}`, 400},
		{"annotate without key", "PATCH", "/v1/tokens/" + id, "", `{"checkout_request_id":"ws_CO_1"}`, 401},
		{"deliveries without forwarding", "GET", "/v1/deliveries?destination=shop", "Bearer " + apiKey, "", 404},
		{"replay without forwarding", "POST", "/v1/deliveries/replay", "Bearer " + apiKey, `{"destination":"shop","dlq":true}`, 404},
		{"revoke", "DELETE", "/v1/tokens/" + id, "Bearer " + apiKey, "", 204},
		{"issue bad kind", "POST", "/v1/tokens", "Bearer " + apiKey, `{"kinds":["nope"],"shortcode":"174379"}`, 400},
		// One JSON object and nothing after it: a second object or
		// garbage issued a token from the first.
		{"issue trailing object", "POST", "/v1/tokens", "Bearer " + apiKey, `{"kinds":["stk.callback"],"shortcode":"174379"} {"kinds":["b2c.result"]}`, 400},
		{"issue trailing garbage", "POST", "/v1/tokens", "Bearer " + apiKey, `{"kinds":["stk.callback"],"shortcode":"174379"}garbage`, 400},
		{"issue misspelt ttl", "POST", "/v1/tokens", "Bearer " + apiKey, `{"kinds":["stk.callback"],"shortcode":"174379","tll":"1m"}`, 400},
		{"issue too large", "POST", "/v1/tokens", "Bearer " + apiKey, `{"kinds":["stk.callback"],"shortcode":"174379","reference":"` + strings.Repeat("x", 40<<10) + `"}`, 413},
	} {
		t.Run(c.name, func(t *testing.T) {
			if rec := h.do(c.method, c.target, c.auth, c.body); rec.Code != c.status {
				t.Errorf("%d, want %d: %s", rec.Code, c.status, rec.Body)
			}
		})
	}
}
