package edge

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/verify"
)

// natsAt runs a nats-server on a fixed port and store, so a test can stop
// it and bring the same one back.
func natsAt(t *testing.T, port int, dir string) *server.Server {
	t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: port, JetStream: true, StoreDir: dir,
		NoSigs: true, NoLog: true, SyncAlways: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns
}

func (h *harness) tokenState(id string) verify.Status {
	h.t.Helper()
	status, body := h.admin(http.MethodGet, "/v1/tokens/"+id, testAdminKey, nil)
	var st verify.Status
	if err := json.Unmarshal(body, &st); status != http.StatusOK || err != nil {
		h.t.Fatalf("token %s: %d %s", id, status, body)
	}
	return st
}

// TestNotDurableUsesNothing: a callback that neither the stream nor the
// spool took is answered 503 and leaves its token unused: the token's
// state (read from the stream) stays issued, Daraja's retry lands once,
// and a token that never got a callback still yields exactly one missing
// event. Before one-write single use, the 503 left the token consumed: the
// retry was refused as a replay and no missing event ever came.
func TestNotDurableUsesNothing(t *testing.T) {
	dir := t.TempDir()
	ns := natsAt(t, server.RANDOM_PORT, filepath.Join(dir, "nats"))
	port := ns.Addr().(*net.TCPAddr).Port
	defer quickSweeps()()
	cfg := testConfig(t)
	cfg.NATS.URL = ns.ClientURL()
	cfg.Spool.MaxBytes = 1 // takes nothing: no ack means 503
	h := startConfig(t, cfg)

	body := fixture(t, "b2c_result_success.json")
	retried := h.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.B2CResult}, Shortcode: "600000", TTL: "1h"})
	silent := h.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.B2CResult}, Shortcode: "600000", TTL: "3s"})

	ns.Shutdown()
	ns.WaitForShutdown()
	if r := h.callback(allowedSrc, daraja.B2CResult, retried.Token, body); r.status != http.StatusServiceUnavailable {
		t.Fatalf("NATS down, spool full: %d %s, want 503", r.status, r.body)
	}

	natsAt(t, port, filepath.Join(dir, "nats"))
	waitUntil(t, 15*time.Second, func() bool { return h.srv.broker.Conn.IsConnected() })
	if st := h.tokenState(retried.ID); st.State != verify.StateIssued || st.ConsumedBy != "" {
		t.Fatalf("after the 503 the token is %s (%s), want issued", st.State, st.ConsumedBy)
	}
	if r := h.callback(allowedSrc, daraja.B2CResult, retried.Token, body); r.status != http.StatusOK {
		t.Fatalf("Daraja's retry: %d %s", r.status, r.body)
	}
	if st := h.tokenState(retried.ID); st.State != verify.StateConsumed || st.ConsumedBy != "AG_20191219_00004e48cf7e3533f581" {
		t.Fatalf("after the retry: %+v", st)
	}
	if n := h.count(); n != 1 {
		t.Fatalf("stream holds %d callbacks, want 1", n)
	}

	// The silent token expires: exactly one missing event, none for the
	// token that got its callback.
	waitUntil(t, 40*time.Second, func() bool { return len(h.missingEvents()) > 0 })
	time.Sleep(2 * sweepInterval) // give every replica's sweep another go
	ev := h.missingEvents()
	if len(ev) != 1 || ev[0].Header.Get("Daraja-Token-Id") != silent.ID {
		t.Fatalf("missing events %d (want 1 for %s)", len(ev), silent.ID)
	}
}

func (h *harness) missingEvents() []*jetstream.RawStreamMsg {
	var out []*jetstream.RawStreamMsg
	ctx := context.Background()
	info, err := h.stream.Info(ctx)
	if err != nil {
		return nil
	}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && seq > 0; seq++ {
		m, err := h.stream.GetMsg(ctx, seq)
		if err == nil && len(m.Subject) > len("daraja.missing.") && m.Subject[:len("daraja.missing.")] == "daraja.missing." {
			out = append(out, m)
		}
	}
	return out
}

// quickSweeps shortens the missing-event sweep for a test; the returned
// func restores it.
func quickSweeps() func() {
	si, mg := sweepInterval, missingGrace
	sweepInterval, missingGrace = 500*time.Millisecond, time.Second
	return func() { sweepInterval, missingGrace = si, mg }
}

func waitUntil(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s", d)
		}
	}
}

// TestStoreBehindAcknowledgedIsReported: an embedded-NATS edge records the
// highest sequence acknowledged to it (fsynced, beside the store); a start
// on a stream that holds less — acknowledged callbacks lost — logs an error
// naming both and sets a metric, and keeps serving.
func TestStoreBehindAcknowledgedIsReported(t *testing.T) {
	cfg := testConfig(t)
	h := startConfig(t, cfg)
	body := fixture(t, "b2c_result_success.json")
	tok := h.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.B2CResult}, Shortcode: "600000"})
	if r := h.callback(allowedSrc, daraja.B2CResult, tok.Token, body); r.status != http.StatusOK {
		t.Fatalf("%d %s", r.status, r.body)
	}
	h.stop()
	data, err := os.ReadFile(WatermarkFile(cfg))
	if err != nil || strings.TrimSpace(string(data)) != "DARAJA 1" {
		t.Fatalf("watermark after one callback: %q %v", data, err)
	}
	// As after a power cut that lost what was acknowledged: the record says
	// more was acknowledged than the stream holds.
	if err := os.WriteFile(WatermarkFile(cfg), []byte("DARAJA 7\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	again := startConfig(t, cfg)
	lines := again.logs.FilterMessageSnippet("acknowledged callbacks were lost").All()
	if len(lines) != 1 || lines[0].ContextMap()["acknowledged_sequence"] != uint64(7) ||
		lines[0].ContextMap()["stream_last_sequence"] != uint64(1) {
		t.Fatalf("loss log lines: %+v", lines)
	}
	if v := again.metric("daraja_edge_stream_acknowledged_lost"); v != "6" {
		t.Fatalf("daraja_edge_stream_acknowledged_lost = %q, want 6", v)
	}
	tok2 := again.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.B2CResult}, Shortcode: "600000"})
	if r := again.callback(allowedSrc, daraja.B2CResult, tok2.Token, body); r.status != http.StatusOK {
		t.Fatalf("after the loss report the edge still serves: %d %s", r.status, r.body)
	}
}

// metric reads one unlabelled sample from /metrics.
func (h *harness) metric(name string) string {
	h.t.Helper()
	_, body := h.admin(http.MethodGet, "/metrics", "", nil)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return v
		}
	}
	return ""
}

// TestCleanStopIsQuiet: a clean stop logs no warning-level NATS
// disconnection (an on-call person would chase it).
func TestCleanStopIsQuiet(t *testing.T) {
	h := start(t, nil)
	h.stop()
	for _, e := range h.logs.FilterMessageSnippet("disconnected").All() {
		if e.Level >= zap.WarnLevel {
			t.Errorf("clean stop logged %s %q", e.Level, e.Message)
		}
	}
}
