package edge

import (
	"testing"
	"time"

	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/verify"
)

// TestRefusalLogsActionable: a refusal of a proven token carries its id and
// reference, and a refused request whose X-Forwarded-For was not believed
// says why, so an on-call person can act on the line alone.
func TestRefusalLogsActionable(t *testing.T) {
	h := start(t, nil)
	body := fixture(t, "stk_callback_success.json")
	expiring := h.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379", Reference: "ORDER-77", TTL: "1s"})
	b2c := h.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.B2CResult}, Shortcode: "174379", Reference: "PAYOUT-9"})
	time.Sleep(1100 * time.Millisecond)
	h.callback(allowedSrc, daraja.STKCallback, expiring.Token, body)
	h.callback(allowedSrc, daraja.STKCallback, b2c.Token, body)
	h.post(strangerSrc, "POST", "/stk/callback?t="+b2c.Token, body, map[string]string{"X-Forwarded-For": allowedSrc})

	for _, c := range []struct{ reason, id, ref string }{
		{"token_expired", expiring.ID, "ORDER-77"}, {"token_wrong_kind", b2c.ID, "PAYOUT-9"},
	} {
		found := false
		for _, e := range h.logs.FilterMessage("callback").All() {
			req, _ := e.ContextMap()["req"].(map[string]any)
			if req["reason"] == c.reason {
				found = true
				if req["token_id"] != c.id || req["reference"] != c.ref {
					t.Errorf("%s logged without its token: %v", c.reason, req)
				}
			}
		}
		if !found {
			t.Errorf("no %s line", c.reason)
		}
	}
	found := false
	for _, e := range h.logs.FilterMessage("callback").All() {
		req, _ := e.ContextMap()["req"].(map[string]any)
		if req["reason"] == "source_not_allowed" && req["source_ip"] == strangerSrc {
			found = true
			if req["x_forwarded_for_ignored"] != "peer not in client_ip.trusted_proxies" {
				t.Errorf("refusal does not say why X-Forwarded-For was ignored: %v", req)
			}
		}
	}
	if !found {
		t.Error("no refusal line for the stranger")
	}
}
