package edge

import (
	"context"
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"go.uber.org/zap/zaptest/observer"

	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/recovery"
	"github.com/daraja-edge/daraja-edge/recovery/darajatest"
	"github.com/daraja-edge/daraja-edge/verify"
)

// TestRecoveryEndToEnd: two edges (replicas) on one NATS; a token is
// issued, its checkout_request_id PATCHed, and it expires without a
// callback: Daraja's STK Push Query is made once, its answer is on
// daraja.recovered.stk.callback.<shortcode>.<token id>, and no secret is in
// any log (the app's key and secret, the passkey, the URL token, the
// OAuth access tokens and the STK password).
func TestRecoveryEndToEnd(t *testing.T) {
	dir := t.TempDir()
	ns := natsAt(t, server.RANDOM_PORT, filepath.Join(dir, "nats"))
	defer quickSweeps()()
	d := darajatest.New("e2e-consumer-key-0001", "e2e-consumer-secret-0002")
	defer d.Close()
	passkey := "bfb279f9aa9bdbcf158e97dd71a467cd2e0c893059b10f78e6b72ada1ed2c919"
	d.Passkeys["174379"] = passkey
	rc := config.DefaultRecovery()
	rc.Enabled, rc.BaseURL, rc.ConsumerKey, rc.ConsumerSecret = true, d.URL, d.Key, d.Secret
	rc.Backoff, rc.MaxBackoff = 10*time.Millisecond, 20*time.Millisecond
	rc.Shortcodes = map[string]config.RecoveryShortcode{"174379": {Passkey: passkey}}

	var edges []*harness
	var logs []*observer.ObservedLogs
	for range 2 {
		cfg := testConfig(t)
		cfg.NATS.URL = ns.ClientURL()
		cfg.Recovery = rc
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
		h := startConfig(t, cfg) // the edge runs recovery itself: cfg.Recovery.Enabled
		edges, logs = append(edges, h), append(logs, h.logs)
	}
	iss := edges[0].issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379", Reference: "ORDER-1", TTL: "2s"})
	status, body := edges[1].admin(http.MethodPatch, "/v1/tokens/"+iss.ID, testAdminKey, map[string]string{"checkout_request_id": "ws_CO_e2e_1"})
	if status != http.StatusOK {
		t.Fatalf("PATCH: %d %s", status, body)
	}
	subj := "daraja.recovered.stk.callback.174379." + iss.ID
	waitUntil(t, 60*time.Second, func() bool {
		_, err := edges[0].stream.GetLastMsgForSubject(context.Background(), subj)
		return err == nil
	})
	m, _ := edges[0].stream.GetLastMsgForSubject(context.Background(), subj)
	if m.Header.Get(recovery.HeaderRecoveredBy) != recovery.QuerySTK || m.Header.Get("Daraja-Result-Code") != "0" ||
		m.Header.Get("Daraja-Reference") != "ORDER-1" {
		t.Fatalf("recovered headers %v", m.Header)
	}
	var answer map[string]string
	if err := json.Unmarshal(m.Data, &answer); err != nil || answer["CheckoutRequestID"] != "ws_CO_e2e_1" {
		t.Fatalf("recovered body %s", m.Data)
	}
	time.Sleep(2 * sweepInterval) // every replica's sweep and consumer get another go
	if n := d.Calls("/mpesa/stkpushquery/v1/query"); n != 1 {
		t.Fatalf("%d STK queries with two replicas, want 1", n)
	}
	secrets := append([]string{d.Key, d.Secret, passkey, iss.Token}, d.Tokens()...) // every OAuth access token issued
	for _, q := range d.Requests("/mpesa/stkpushquery/v1/query") {
		secrets = append(secrets, q["Password"].(string)) // the STK password: base64(shortcode+passkey+timestamp)
	}
	if len(d.Tokens()) == 0 {
		t.Fatal("no access token issued")
	}
	for _, l := range logs {
		for _, e := range l.All() {
			line, _ := json.Marshal(append([]any{e.Message}, e.ContextMap()))
			for _, s := range secrets {
				if strings.Contains(string(line), s) {
					t.Errorf("a secret is logged: %s", line)
				}
			}
		}
	}
}
