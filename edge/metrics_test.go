package edge

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/verify"
)

// scrape returns the admin /metrics samples as "name{labels}" → value.
func (h *harness) scrape() map[string]float64 {
	h.t.Helper()
	status, body := h.admin(http.MethodGet, "/metrics", "", nil)
	if status != http.StatusOK {
		h.t.Fatalf("/metrics: %d", status)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

// TestMetricsCountWhatWasSent runs a scripted mix of traffic and checks the
// counters match it.
func TestMetricsCountWhatWasSent(t *testing.T) {
	h := start(t, func(c *config.Config) { c.Allowlist.Mode = config.AllowlistReport })
	stk := fixture(t, "stk_callback_success.json")
	newTok := func(k daraja.Kind, sc string, reusable bool) verify.IssueResponse {
		return h.issue(verify.IssueRequest{Kinds: []daraja.Kind{k}, Shortcode: sc, Reusable: reusable})
	}
	// 3 STK accepted, 1 duplicate, 1 replay.
	var toks []verify.IssueResponse
	for i := range 3 {
		tok := newTok(daraja.STKCallback, "174379", false)
		toks = append(toks, tok)
		body := bytes.Replace(stk, []byte("ws_CO_191220191020363925"), []byte("ws_CO_m"+strconv.Itoa(i)), 1)
		if r := h.callback(allowedSrc, daraja.STKCallback, tok.Token, body); r.status != 200 {
			t.Fatalf("%d %s", r.status, r.body)
		}
		if i == 0 {
			h.callback(allowedSrc, daraja.STKCallback, tok.Token, body) // duplicate
			h.callback(allowedSrc, daraja.STKCallback, tok.Token, stk)  // replay
		}
	}
	// 2 unknown tokens, 1 bad body, 1 unknown path.
	h.callback(allowedSrc, daraja.STKCallback, strings.Repeat("A", 40), stk)
	h.callback(allowedSrc, daraja.STKCallback, "nope", stk)
	h.callback(allowedSrc, daraja.STKCallback, newTok(daraja.STKCallback, "174379", false).Token, []byte("{"))
	h.post(allowedSrc, "POST", "/nowhere?t=x", stk, nil)
	// 1 allowlist miss let through (report mode), accepted.
	c2b := newTok(daraja.C2BConfirmation, "600638", true)
	if r := h.callback(strangerSrc, daraja.C2BConfirmation, c2b.Token, fixture(t, "c2b_confirmation.json")); r.status != 200 {
		t.Fatalf("report mode: %d", r.status)
	}
	// 1 validation with no validator: accepted by timeout.
	val := newTok(daraja.C2BValidation, "600638", true)
	h.callback(allowedSrc, daraja.C2BValidation, val.Token, fixture(t, "c2b_validation.json"))
	// 1 revoked.
	if status, _ := h.admin(http.MethodDelete, "/v1/tokens/"+toks[2].ID, testAdminKey, nil); status != 204 {
		t.Fatal("revoke")
	}

	m := h.scrape()
	want := map[string]float64{
		`daraja_edge_requests_total{kind="stk.callback",outcome="accepted"}`:       3,
		`daraja_edge_requests_total{kind="stk.callback",outcome="duplicate"}`:      1,
		`daraja_edge_requests_total{kind="stk.callback",outcome="rejected"}`:       4,
		`daraja_edge_requests_total{kind="unknown",outcome="rejected"}`:            1,
		`daraja_edge_requests_total{kind="c2b.confirmation",outcome="accepted"}`:   1,
		`daraja_edge_requests_total{kind="c2b.validation",outcome="accepted"}`:     1,
		`daraja_edge_rejections_total{reason="token_replay"}`:                      1,
		`daraja_edge_rejections_total{reason="token_unknown"}`:                     2,
		`daraja_edge_rejections_total{reason="malformed_body"}`:                    1,
		`daraja_edge_rejections_total{reason="unknown_path"}`:                      1,
		`daraja_edge_allowlist_misses_total`:                                       1,
		`daraja_edge_validation_decisions_total{by="timeout",decision="accepted"}`: 1,
		`daraja_edge_tokens_total{event="issued"}`:                                 6,
		`daraja_edge_tokens_total{event="revoked"}`:                                1,
		`daraja_edge_publish_duration_seconds_count`:                               6, // 3 STK + duplicate + C2B + validation record
		`daraja_edge_spool_records`:                                                0,
		`daraja_edge_nats_connected`:                                               1,
	}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s = %v, want %v", k, m[k], v)
		}
	}
	// A callback consumes its token by landing on the stream, not by a
	// token event: the admin API reads it from there.
	status, body := h.admin(http.MethodGet, "/v1/tokens/"+toks[0].ID, testAdminKey, nil)
	var st verify.Status
	if err := json.Unmarshal(body, &st); status != http.StatusOK || err != nil ||
		st.State != verify.StateConsumed || st.UsedBy[daraja.STKCallback] != "ws_CO_m0" {
		t.Errorf("token status after its callback: %d %s", status, body)
	}
	if exp := m["daraja_edge_certificate_expiry_timestamp_seconds"]; exp < float64(time.Now().Add(300*24*time.Hour).Unix()) {
		t.Errorf("certificate expiry %v", exp)
	}
}

// TestReadiness: /readyz fails while NATS is unreachable and recovers when
// it is back, and fails while the stream is missing and recovers when it
// is recreated; /healthz stays 200 throughout, and after each recovery a
// callback is accepted and stored.
func TestReadiness(t *testing.T) {
	// A NATS server outside the edge, restarted on the same port and store.
	opts := &server.Options{Host: "127.0.0.1", Port: freeLoopbackPort(t), JetStream: true, StoreDir: t.TempDir(), NoSigs: true, NoLog: true}
	var ns *server.Server
	startNATS := func() {
		var err error
		if ns, err = server.NewServer(opts); err != nil {
			t.Fatal(err)
		}
		go ns.Start()
		if !ns.ReadyForConnections(20 * time.Second) {
			t.Fatal("nats-server did not start")
		}
	}
	stopNATS := func() {
		if ns != nil {
			ns.Shutdown()
			ns.WaitForShutdown()
			ns = nil
		}
	}
	startNATS()
	t.Cleanup(stopNATS)
	h := start(t, func(c *config.Config) { c.NATS.URL = fmt.Sprintf("nats://127.0.0.1:%d", opts.Port) })
	stk := fixture(t, "stk_callback_success.json")
	accepted := 0
	ready := func(wantStatus int, wantWord string) {
		t.Helper()
		var status int
		var body []byte
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if status, body = h.admin(http.MethodGet, "/readyz", "", nil); status == wantStatus && strings.Contains(string(body), wantWord) {
				break
			}
		}
		if status != wantStatus || !strings.Contains(string(body), wantWord) {
			t.Fatalf("/readyz: %d %s, want %d naming %q", status, body, wantStatus, wantWord)
		}
		if status, _ := h.admin(http.MethodGet, "/healthz", "", nil); status != http.StatusOK {
			t.Errorf("healthz: %d", status)
		}
	}
	serves := func() {
		t.Helper()
		accepted++
		tok := h.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379"})
		body := bytes.Replace(stk, []byte("ws_CO_191220191020363925"), []byte(fmt.Sprintf("ws_CO_ready_%d", accepted)), 1)
		if r := h.callback(allowedSrc, daraja.STKCallback, tok.Token, body); r.status != http.StatusOK {
			t.Fatalf("callback after recovery: %d %s", r.status, r.body)
		}
	}
	ready(http.StatusOK, "")
	serves()

	// NATS unreachable: not ready; back: ready again and serving.
	stopNATS()
	ready(http.StatusServiceUnavailable, "NATS")
	startNATS()
	ready(http.StatusOK, "")
	serves()

	// Stream gone: not ready; recreated: ready again and serving.
	for deadline := time.Now().Add(30 * time.Second); !h.nc.IsConnected() && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
	}
	info, err := h.stream.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := h.js.DeleteStream(context.Background(), h.cfg.NATS.Stream.Name); err != nil {
		t.Fatal(err)
	}
	ready(http.StatusServiceUnavailable, "stream")
	if h.stream, err = h.js.CreateStream(context.Background(), info.Config); err != nil {
		t.Fatal(err)
	}
	ready(http.StatusOK, "")
	serves()
	// Every callback answered 200 is stored: the spool, if any was used,
	// drained once the stream was back.
	for deadline := time.Now().Add(30 * time.Second); h.count() < 1 && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
	}
	if n := h.count(); n != 1 {
		t.Errorf("the recreated stream holds %d messages, want the one callback sent since", n)
	}
}

func freeLoopbackPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
