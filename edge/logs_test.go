package edge

import (
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/verify"
)

// TestRefusalLogsActionable: a refusal of a proven token carries its id and
// reference, and a refused request whose X-Forwarded-For was not believed
// (report mode) says why, so an on-call person can act on the line alone.
func TestRefusalLogsActionable(t *testing.T) {
	h := start(t, nil)
	body := fixture(t, "stk_callback_success.json")
	expiring := h.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379", Reference: "ORDER-77", TTL: "1s"})
	b2c := h.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.B2CResult}, Shortcode: "174379", Reference: "PAYOUT-9"})
	time.Sleep(1100 * time.Millisecond)
	h.callback(allowedSrc, daraja.STKCallback, expiring.Token, body)
	h.callback(allowedSrc, daraja.STKCallback, b2c.Token, body)

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
	// A stranger's X-Forwarded-For reaches the handler only in report mode
	// (enforced, a peer neither allowlisted nor a trusted proxy is closed
	// at accept): a refusal then says why the header was not believed.
	hr := start(t, func(c *config.Config) { c.Allowlist.Mode = config.AllowlistReport })
	other := hr.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.B2CResult}, Shortcode: "174379", Reference: "PAYOUT-10"})
	hr.post(strangerSrc, "POST", "/stk/callback?t="+other.Token, body, map[string]string{"X-Forwarded-For": allowedSrc})
	found := false
	for _, e := range hr.logs.FilterMessage("callback").All() {
		req, _ := e.ContextMap()["req"].(map[string]any)
		if req["source_ip"] == strangerSrc && req["status"] != nil {
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

// TestBuildAndReloadMetrics: the version is a metric and in the start-up
// log; a refused reload shows in config_last_reload_successful.
func TestBuildAndReloadMetrics(t *testing.T) {
	h := start(t, nil)
	_, body := h.admin(http.MethodGet, "/metrics", "", nil)
	if !strings.Contains(string(body), `daraja_edge_build_info{commit="`+Commit+`",goversion="`+runtime.Version()+`",version="`+Version+`"} 1`) {
		t.Errorf("no build_info sample for %s %s", Version, Commit)
	}
	if h.logs.FilterMessage("daraja-edge serving").FilterField(zap.String("version", Version)).Len() != 1 {
		t.Error("the start-up line does not name the version")
	}
	if v := h.metric("daraja_edge_config_last_reload_successful"); v != "1" {
		t.Errorf("before any reload: %q", v)
	}
	h.srv.ReloadRefused()
	if v := h.metric("daraja_edge_config_last_reload_successful"); v != "0" {
		t.Errorf("after a refused reload: %q", v)
	}
	if err := h.srv.Reload(h.cfg); err != nil {
		t.Fatal(err)
	}
	if v := h.metric("daraja_edge_config_last_reload_successful"); v != "1" {
		t.Errorf("after an applied reload: %q", v)
	}
}
