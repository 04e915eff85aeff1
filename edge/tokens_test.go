package edge

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/verify"
)

// TestTokenServiceOverNATS: business services issue, read, rotate and
// revoke tokens with NATS requests, same JSON as the admin API.
func TestTokenServiceOverNATS(t *testing.T) {
	h := start(t, nil)
	call := func(subject string, req any, out any) string {
		t.Helper()
		b, _ := json.Marshal(req)
		m, err := h.nc.Request(subject, b, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if out != nil {
			_ = json.Unmarshal(m.Data, out)
		}
		return string(m.Data)
	}
	var iss verify.IssueResponse
	call("daraja.tokens.issue", verify.IssueRequest{Kinds: []daraja.Kind{daraja.B2CResult, daraja.B2CTimeout}, Shortcode: "600000", Reference: "PAYOUT-77", TTL: "1h"}, &iss)
	if iss.Token == "" || len(iss.URLs) != 2 || iss.URLs["b2c.timeout"] != "https://localhost:8443/b2c/timeout?t="+iss.Token {
		t.Fatalf("issue: %+v", iss)
	}
	h.tokens = append(h.tokens, iss.Token)
	// The token works on the public side.
	if r := h.callback(allowedSrc, daraja.B2CResult, iss.Token, fixture(t, "b2c_result_success.json")); r.status != 200 {
		t.Fatalf("callback: %d %s", r.status, r.body)
	}
	var st verify.Status
	call("daraja.tokens.status", map[string]string{"id": iss.ID}, &st)
	if st.State != verify.StateConsumed || st.ConsumedBy != "AG_20191219_00004e48cf7e3533f581" || st.ConsumedKind != "b2c.result" {
		t.Errorf("status: %+v", st)
	}
	var e struct {
		Error verify.RequestError `json:"error"`
	}
	raw := call("daraja.tokens.issue", map[string]any{"kinds": []string{"b2c.result"}, "shortcode": "6"}, &e)
	if e.Error.Code != "invalid_request" || e.Error.Message == "" {
		t.Errorf("bad request answered %s", raw)
	}
	// The same JSON as the HTTP API takes: a misspelt field is refused, not
	// dropped (a "tll" issued a token with the default ttl).
	e = struct {
		Error verify.RequestError `json:"error"`
	}{}
	raw = call("daraja.tokens.issue", map[string]any{"kinds": []string{"stk.callback"}, "shortcode": "174379", "tll": "1m"}, &e)
	if e.Error.Code != "invalid_request" || !strings.Contains(e.Error.Message, "tll") {
		t.Errorf("misspelt field answered %s", raw)
	}
	raw = call("daraja.tokens.status", map[string]string{"id": "tok_aaaaaaaaaaaaaaaa"}, &e)
	if e.Error.Code != "not_found" {
		t.Errorf("unknown id answered %s", raw)
	}
	other := verify.IssueResponse{}
	call("daraja.tokens.issue", verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379"}, &other)
	h.tokens = append(h.tokens, other.Token)
	c2b := verify.IssueResponse{}
	call("daraja.tokens.issue", verify.IssueRequest{Kinds: []daraja.Kind{daraja.C2BConfirmation}, Shortcode: "600638", Reusable: true}, &c2b)
	var rotated verify.IssueResponse
	call("daraja.tokens.rotate", verify.RotateRequest{ID: c2b.ID, Overlap: "1h"}, &rotated)
	h.tokens = append(h.tokens, c2b.Token, rotated.Token)
	if rotated.RotatedFrom != c2b.ID || rotated.Token == "" {
		t.Errorf("rotate over NATS: %+v", rotated)
	}
	call("daraja.tokens.revoke", map[string]string{"id": other.ID}, nil)
	if r := h.callback(allowedSrc, daraja.STKCallback, other.Token, fixture(t, "stk_callback_success.json")); r.status != 403 {
		t.Errorf("revoked over NATS, still accepted: %d", r.status)
	}
}

// TestRotateReusable: a rotated C2B token and its successor are both valid
// for the overlap; after it, only the successor.
func TestRotateReusable(t *testing.T) {
	h := start(t, nil)
	old := h.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.C2BValidation, daraja.C2BConfirmation}, Shortcode: "600638", Reusable: true, TTL: "720h"})
	status, body := h.admin(http.MethodPost, "/v1/tokens/"+old.ID+"/rotate", testAdminKey, map[string]string{"overlap": "2s"})
	if status != http.StatusCreated {
		t.Fatalf("rotate: %d %s", status, body)
	}
	var next verify.IssueResponse
	_ = json.Unmarshal(body, &next)
	h.tokens = append(h.tokens, next.Token)
	if next.RotatedFrom != old.ID || next.Token == old.Token || len(next.URLs) != 2 {
		t.Fatalf("rotate answer: %s", body)
	}
	conf := fixture(t, "c2b_confirmation.json")
	for _, tok := range []string{old.Token, next.Token} {
		if r := h.callback(allowedSrc, daraja.C2BConfirmation, tok, conf); r.status != 200 {
			t.Fatalf("during overlap: %d %s", r.status, r.body)
		}
	}
	time.Sleep(2100 * time.Millisecond)
	if r := h.callback(allowedSrc, daraja.C2BConfirmation, old.Token, conf); r.status != 403 {
		t.Errorf("old token after overlap: %d", r.status)
	}
	if r := h.callback(allowedSrc, daraja.C2BConfirmation, next.Token, conf); r.status != 200 {
		t.Errorf("successor after overlap: %d", r.status)
	}
	var st verify.Status
	_, body = h.admin(http.MethodGet, "/v1/tokens/"+old.ID, testAdminKey, nil)
	_ = json.Unmarshal(body, &st)
	if st.State != verify.StateExpired || st.RotatedTo != next.ID {
		t.Errorf("old token status: %s", body)
	}
	if status, _ := h.admin(http.MethodPost, "/v1/tokens/"+old.ID+"/rotate", testAdminKey, nil); status != http.StatusBadRequest {
		t.Errorf("rotating an expired token: %d", status)
	}
}
