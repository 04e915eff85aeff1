package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/forward"
	"github.com/daraja-edge/daraja-edge/verify"
)

// openAPIFile is the admin API's OpenAPI document.
const openAPIFile = "../docs/openapi.yaml"

// loadOpenAPI loads and validates docs/openapi.yaml.
func loadOpenAPI(t *testing.T) *openapi3.T {
	t.Helper()
	doc, err := openapi3.NewLoader().LoadFromFile(openAPIFile)
	if err != nil {
		t.Fatalf("%s: %v", openAPIFile, err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("%s is not a valid OpenAPI document: %v", openAPIFile, err)
	}
	return doc
}

// documented lists the document's operations as net/http patterns
// ("GET /v1/tokens/{id}"), each with its x-daraja-access and whether it
// needs no security.
func documented(doc *openapi3.T) map[string]*openapi3.Operation {
	out := map[string]*openapi3.Operation{}
	for p, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			out[method+" "+p] = op
		}
	}
	return out
}

// TestOpenAPIMatchesHandlers: docs/openapi.yaml is a valid OpenAPI 3.1
// document that describes exactly the routes the admin handler serves,
// each with its access; its enums are the code's; and answers of the real
// handler, successes and errors, validate against it.
func TestOpenAPIMatchesHandlers(t *testing.T) {
	doc := loadOpenAPI(t)
	if doc.OpenAPIMajorMinor() != "3.1" {
		t.Errorf("openapi %q, want 3.1", doc.OpenAPI)
	}
	ops := documented(doc)

	// Both ways, by the table the handler is built from.
	served := map[string]Access{}
	for _, r := range Routes() {
		served[r.Pattern] = r.Access
	}
	for pattern, access := range served {
		op, ok := ops[pattern]
		if !ok {
			t.Errorf("%s is served but not in %s", pattern, openAPIFile)
			continue
		}
		if got := op.Extensions["x-daraja-access"]; got != string(access) {
			t.Errorf("%s: x-daraja-access %v, want %s", pattern, got, access)
		}
		open := op.Security != nil && len(*op.Security) == 0
		if open != (access == AccessOpen) {
			t.Errorf("%s: security %v, but access is %s", pattern, op.Security, access)
		}
	}
	for pattern := range ops {
		if _, ok := served[pattern]; !ok {
			t.Errorf("%s is in %s but not served", pattern, openAPIFile)
		}
	}

	// The enums are the code's.
	enum := func(name string) []string {
		var out []string
		for _, v := range doc.Components.Schemas[name].Value.Enum {
			out = append(out, fmt.Sprint(v))
		}
		return out
	}
	if got, want := enum("Kind"), daraja.KindStrings(daraja.Kinds); !slices.Equal(got, want) {
		t.Errorf("Kind enum %v, want %v", got, want)
	}
	if got, want := enum("TokenState"), []string{verify.StateIssued, verify.StateConsumed, verify.StateExpired, verify.StateRevoked}; !slices.Equal(got, want) {
		t.Errorf("TokenState enum %v, want %v", got, want)
	}
	if got, want := enum("DeliveryState"), []string{forward.StatePending, forward.StateDelivered, forward.StateDead}; !slices.Equal(got, want) {
		t.Errorf("DeliveryState enum %v, want %v", got, want)
	}

	// The real mux, walked from the document: every documented operation
	// reaches a handler (no 404 "no such route", no 405), and every other
	// method on a documented path is 405 whose Allow (what the mux serves
	// there) is exactly the documented methods, plus HEAD with GET.
	d := newDeliveries(t)
	h := newHarnessWith(t, nil, func(o *Options) {
		o.Deliveries = d.f
		o.ReadKeys = []string{readKey}
		o.Metrics = promhttp.Handler()
	})
	id := h.token.ID
	// The walk changes nothing: bodies are empty, the token unknown.
	concrete := func(p string) string { return strings.ReplaceAll(p, "{id}", "tok_aaaaaaaaaaaaaaaa") }
	for p, item := range doc.Paths.Map() {
		var methods []string
		for m := range item.Operations() {
			methods = append(methods, m)
			rec := h.do(m, concrete(p), "Bearer "+apiKey, "")
			var e APIError
			_ = json.Unmarshal(rec.Body.Bytes(), &e)
			if rec.Code == http.StatusMethodNotAllowed || e.Error.Message == "no such route" {
				t.Errorf("%s %s is documented; the mux answers %d %s", m, p, rec.Code, rec.Body)
			}
		}
		if slices.Contains(methods, http.MethodGet) {
			methods = append(methods, http.MethodHead)
		}
		sort.Strings(methods)
		rec := h.do("PUT", concrete(p), "Bearer "+apiKey, "")
		if slices.Contains(methods, "PUT") {
			continue
		}
		if got := rec.Header().Get("Allow"); rec.Code != http.StatusMethodNotAllowed || got != strings.Join(methods, ", ") {
			t.Errorf("PUT %s: %d, Allow %q; the document lists %v", p, rec.Code, got, methods)
		}
	}

	// Real answers validate against the document: status documented for
	// the operation, required headers, body schema.
	doc.Servers = nil // match any host
	router, err := legacy.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	d.publish(t, "AG_20191219_0001")
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		rec := h.do("GET", "/v1/deliveries?destination=shop&state=dead", "Bearer "+apiKey, "")
		if strings.Contains(rec.Body.String(), "AG_20191219_0001") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no dead delivery: %s", rec.Body)
		}
	}
	for _, c := range []struct {
		name, method, target, auth, body string
		status                           int
	}{
		{"issue", "POST", "/v1/tokens", apiKey, `{"kinds":["b2c.result","b2c.timeout"],"shortcode":"600000","reference":"PAYOUT-77","ttl":"1h","forward_path":"/payouts/77?src=daraja"}`, 201},
		{"issue reusable", "POST", "/v1/tokens", apiKey, `{"kinds":["c2b.confirmation"],"shortcode":"600638","reusable":true}`, 201},
		{"issue bad kind", "POST", "/v1/tokens", apiKey, `{"kinds":["nope"],"shortcode":"174379"}`, 400},
		{"issue without key", "POST", "/v1/tokens", "", `{"kinds":["stk.callback"],"shortcode":"174379"}`, 401},
		{"issue with a read-only key", "POST", "/v1/tokens", readKey, `{"kinds":["stk.callback"],"shortcode":"174379"}`, 403},
		{"list", "GET", "/v1/tokens?shortcode=174379&state=issued&limit=1", apiKey, "", 200},
		{"list with a read-only key", "GET", "/v1/tokens?kind=b2c.result", readKey, "", 200},
		{"list bad limit", "GET", "/v1/tokens?limit=0", apiKey, "", 400},
		{"status", "GET", "/v1/tokens/" + id, readKey, "", 200},
		{"status unknown", "GET", "/v1/tokens/tok_aaaaaaaaaaaaaaaa", apiKey, "", 404},
		{"annotate", "PATCH", "/v1/tokens/" + id, apiKey, `{"checkout_request_id":"ws_CO_191220191020363925"}`, 200},
		{"annotate nothing", "PATCH", "/v1/tokens/" + id, apiKey, `{}`, 400},
		{"rotate a single-use token", "POST", "/v1/tokens/" + id + "/rotate", apiKey, `{}`, 201},
		{"revoke", "DELETE", "/v1/tokens/" + id, apiKey, "", 204},
		{"revoke with a read-only key", "DELETE", "/v1/tokens/" + id, readKey, "", 403},
		{"deliveries", "GET", "/v1/deliveries?destination=shop&state=dead", readKey, "", 200},
		{"deliveries of a tx", "GET", "/v1/deliveries?destination=shop&tx=AG_20191219_0001", apiKey, "", 200},
		{"deliveries unknown destination", "GET", "/v1/deliveries?destination=nope", apiKey, "", 404},
		{"deliveries without destination", "GET", "/v1/deliveries", apiKey, "", 400},
		{"replay dlq", "POST", "/v1/deliveries/replay", apiKey, `{"destination":"shop","dlq":true}`, 202},
		{"replay tx", "POST", "/v1/deliveries/replay", apiKey, `{"destination":"shop","tx":"AG_20191219_0001"}`, 202},
		{"replay nothing named", "POST", "/v1/deliveries/replay", apiKey, `{"destination":"shop"}`, 400},
		{"healthz", "GET", "/healthz", "", "", 200},
		{"readyz", "GET", "/readyz", "", "", 200},
		{"metrics", "GET", "/metrics", "", "", 200},
	} {
		t.Run(c.name, func(t *testing.T) {
			auth := ""
			if c.auth != "" {
				auth = "Bearer " + c.auth
			}
			rec := h.do(c.method, c.target, auth, c.body)
			if rec.Code != c.status {
				t.Fatalf("%d, want %d: %s", rec.Code, c.status, rec.Body)
			}
			req := httptest.NewRequest(c.method, c.target, strings.NewReader(c.body))
			if c.body != "" {
				req.Header.Set("Content-Type", "application/json")
			}
			route, params, err := router.FindRoute(req)
			if err != nil {
				t.Fatalf("no documented route: %v", err)
			}
			validateAnswer(t, req, route, params, rec)
		})
	}

	// What no operation describes: an unknown path (404) and a wrong
	// method (405 with Allow) answer the components' responses.
	for _, c := range []struct {
		method, target, component string
		status                    int
	}{
		{"GET", "/nope", "NotFound", 404},
		{"GET", "/v1/tokens/", "NotFound", 404},
		{"DELETE", "/v1/tokens", "MethodNotAllowed", 405},
		{"POST", "/healthz", "MethodNotAllowed", 405},
	} {
		rec := h.do(c.method, c.target, "", "")
		resp := doc.Components.Responses[c.component].Value
		if rec.Code != c.status {
			t.Errorf("%s %s: %d, want %d", c.method, c.target, rec.Code, c.status)
		}
		for name, hdr := range resp.Headers {
			if hdr.Value.Required && rec.Header().Get(name) == "" {
				t.Errorf("%s %s: no %s header (%s)", c.method, c.target, name, c.component)
			}
		}
		var body any
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
			t.Errorf("%s %s: %v", c.method, c.target, err)
			continue
		}
		schema := resp.Content.Get("application/json").Schema.Value
		if err := schema.VisitJSON(body, openapi3.EnableJSONSchema2020()); err != nil {
			t.Errorf("%s %s answered %s, not the %s schema: %v", c.method, c.target, rec.Body, c.component, err)
		}
	}
}

// validateAnswer checks rec, the answer to req, against the document's
// description of route: a documented status, the required headers and
// the body's schema.
func validateAnswer(t *testing.T, req *http.Request, route *routers.Route, params map[string]string, rec *httptest.ResponseRecorder) {
	t.Helper()
	opts := &openapi3filter.Options{IncludeResponseStatus: true, AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route, Options: opts}
	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: rec.Code, Header: rec.Header(), Options: opts}
	out.SetBodyBytes(bytes.Clone(rec.Body.Bytes()))
	if err := openapi3filter.ValidateResponse(context.Background(), out); err != nil {
		t.Errorf("answer %d %s does not match the document: %v", rec.Code, rec.Body, err)
	}
	// The request itself is one the document allows (the failures here
	// are meant: their requests break it on purpose).
	if rec.Code < 300 {
		if err := openapi3filter.ValidateRequest(context.Background(), in); err != nil {
			t.Errorf("the request is not one the document allows: %v", err)
		}
	}
}
