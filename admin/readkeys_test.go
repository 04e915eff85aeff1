package admin

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

const readKey = "read-only-key-for-tests-0123456789"

// TestReadOnlyKeys: a read-only key (admin.read_keys) reads every route
// that reads, gets 403 with the JSON error on every route that changes
// state (which stays unchanged), spends no failure of its address, and is
// never logged; a full key still does everything.
func TestReadOnlyKeys(t *testing.T) {
	for _, form := range []struct{ name, key string }{
		{"plain", readKey},
		{"sha256", "sha256:" + hex.EncodeToString(func() []byte { s := sha256.Sum256([]byte(readKey)); return s[:] }())},
	} {
		t.Run(form.name, func(t *testing.T) {
			h := newHarnessWith(t, noRefill(), func(o *Options) { o.ReadKeys = []string{form.key} })
			id := h.token.ID
			read := "Bearer " + readKey
			h.logs.TakeAll()
			for _, c := range []struct {
				method, target, body string
				status               int
			}{
				{"GET", "/v1/tokens/" + id, "", 200},
				{"HEAD", "/v1/tokens/" + id, "", 200},
				{"GET", "/v1/tokens", "", 200},
				{"GET", "/v1/tokens?reference=x&state=issued", "", 200},
				// Forwarding is off here: past the key check, the route's own 404.
				{"GET", "/v1/deliveries?destination=shop", "", 404},
				{"GET", "/v1/tokens/tok_aaaaaaaaaaaaaaaa", "", 404},
				{"POST", "/v1/tokens", `{"kinds":["stk.callback"],"shortcode":"174379"}`, 403},
				{"DELETE", "/v1/tokens/" + id, "", 403},
				{"PATCH", "/v1/tokens/" + id, `{"checkout_request_id":"ws_CO_191220191020363925"}`, 403},
				{"POST", "/v1/tokens/" + id + "/rotate", `{"overlap":"1h"}`, 403},
				{"POST", "/v1/deliveries/replay", `{"destination":"shop","dlq":true}`, 403},
			} {
				rec := h.do(c.method, c.target, read, c.body)
				if rec.Code != c.status {
					t.Errorf("%s %s with a read-only key: %d, want %d (%s)", c.method, c.target, rec.Code, c.status, rec.Body)
					continue
				}
				if c.status == 403 {
					var e APIError
					if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Error.Code != "forbidden" ||
						rec.Header().Get("Content-Type") != "application/json" {
						t.Errorf("%s %s: 403 body %q (%v)", c.method, c.target, rec.Body, err)
					}
				}
			}
			// Nothing changed: the token is as issued, with no annotation
			// and no successor, and there is still one token.
			rec := h.do("GET", "/v1/tokens/"+id, "Bearer "+apiKey, "")
			if !strings.Contains(rec.Body.String(), `"state":"issued"`) || strings.Contains(rec.Body.String(), "checkout_request_id") ||
				strings.Contains(rec.Body.String(), "rotated_to") {
				t.Errorf("the read-only key changed the token: %s", rec.Body)
			}
			if rec := h.do("GET", "/v1/tokens", "Bearer "+apiKey, ""); strings.Count(rec.Body.String(), `"id":`) != 1 {
				t.Errorf("the read-only key issued a token: %s", rec.Body)
			}
			// The refusals spent nothing: five wrong keys are still 401.
			for i := range 5 {
				if rec := h.do("GET", "/v1/tokens", "Bearer "+wrongKey, ""); rec.Code != http.StatusUnauthorized {
					t.Errorf("wrong key %d after the read-only refusals: %d", i, rec.Code)
				}
			}
			for _, l := range leaks(h.logs, readKey, apiKey) {
				t.Errorf("key logged: %s", l)
			}
			// A full key still writes.
			if rec := h.do("DELETE", "/v1/tokens/"+id, "Bearer "+apiKey, ""); rec.Code != http.StatusNoContent {
				t.Errorf("revoke with the full key: %d %s", rec.Code, rec.Body)
			}
			// A read-only key is not a full key elsewhere either: the
			// scheme and emptiness rules hold.
			for _, auth := range []string{readKey, "Basic " + readKey, "Bearer "} {
				if rec := h.do("GET", "/v1/tokens", auth, ""); rec.Code != http.StatusTooManyRequests && rec.Code != http.StatusUnauthorized {
					t.Errorf("Authorization %q: %d", auth[:min(len(auth), 8)], rec.Code)
				}
			}
		})
	}
}
