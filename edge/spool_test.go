package edge

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/publish"
	"github.com/daraja-edge/daraja-edge/spool"
	"github.com/daraja-edge/daraja-edge/verify"
)

// waitReadyz polls /readyz until it answers status with a body naming word
// (generous: the machine may be loaded), and fails the test otherwise.
func (h *harness) waitReadyz(status int, word string) string {
	h.t.Helper()
	var got int
	var body []byte
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if got, body = h.admin(http.MethodGet, "/readyz", "", nil); got == status && strings.Contains(string(body), word) {
			return string(body)
		}
	}
	h.t.Fatalf("/readyz: %d %s, want %d naming %q", got, body, status, word)
	return ""
}

// quickDrains shortens the spool replay interval for a test; the returned
// func restores it.
func quickDrains() func() {
	d := drainInterval
	drainInterval = 100 * time.Millisecond
	return func() { drainInterval = d }
}

// TestSpoolStuckAtTheEdge: a spooled callback the stream keeps refusing
// (here: larger than the stream's max_msg_size, set after the edge
// started) makes the drain fail again and again. After the spool's limit
// of failed attempts in a row /readyz answers 503 naming the spool and
// daraja_edge_spool_stuck is 1, with every failed attempt counted; once
// the stream takes it again the record is replayed, exactly once, and both
// clear.
func TestSpoolStuckAtTheEdge(t *testing.T) {
	defer quickDrains()()
	h := start(t, nil)
	ctx := context.Background()
	tok := h.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379"})
	body := fixture(t, "stk_callback_success.json")
	h.waitReadyz(http.StatusOK, "ready")

	info, err := h.stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	small := info.Config
	small.MaxMsgSize = 64 // less than any callback
	if _, err := h.js.UpdateStream(ctx, small); err != nil {
		t.Fatal(err)
	}
	if r := h.callback(allowedSrc, daraja.STKCallback, tok.Token, body); r.status != http.StatusOK {
		t.Fatalf("the stream refuses the callback: %d %s, want 200 from the spool", r.status, r.body)
	}
	if h.srv.Pending() != 1 {
		t.Fatalf("%d records spooled, want 1", h.srv.Pending())
	}
	reason := h.waitReadyz(http.StatusServiceUnavailable, "spool replay stuck")
	m := h.scrape()
	if m["daraja_edge_spool_stuck"] != 1 {
		t.Errorf("daraja_edge_spool_stuck = %v while /readyz says %s", m["daraja_edge_spool_stuck"], reason)
	}
	if f := m["daraja_edge_spool_replay_failures_total"]; f < spool.DefaultStuckAttempts {
		t.Errorf("daraja_edge_spool_replay_failures_total = %v, want at least %d", f, spool.DefaultStuckAttempts)
	}
	if n := h.count(); n != 0 {
		t.Fatalf("the stream holds %d messages while it refuses them", n)
	}

	if _, err := h.js.UpdateStream(ctx, info.Config); err != nil {
		t.Fatal(err)
	}
	h.waitReadyz(http.StatusOK, "ready")
	if m := h.scrape(); m["daraja_edge_spool_stuck"] != 0 || m["daraja_edge_spool_records"] != 0 {
		t.Errorf("after the replay: spool_stuck %v, spool_records %v, want 0 and 0",
			m["daraja_edge_spool_stuck"], m["daraja_edge_spool_records"])
	}
	msgs := h.messages()
	if len(msgs) != 1 || msgs[0].Header.Get("Nats-Msg-Id") != "stk.callback:ws_CO_191220191020363925" {
		t.Fatalf("the stream holds %d messages after the replay, want the one callback", len(msgs))
	}
	if st := h.tokenState(tok.ID); st.State != verify.StateConsumed {
		t.Errorf("token after the replay: %s, want consumed", st.State)
	}
}

// TestSpoolCorruptRecordAtTheEdge: an edge that starts on a spool holding a
// damaged record counts it in daraja_edge_spool_corrupt_total, logs an
// Error naming the segment, and still replays the record after it.
func TestSpoolCorruptRecordAtTheEdge(t *testing.T) {
	cfg := testConfig(t)
	sp, err := spool.Open(cfg.Spool.Dir, cfg.Spool.MaxBytes, nil)
	if err != nil {
		t.Fatal(err)
	}
	subjects := publish.Subjects{Prefix: cfg.NATS.SubjectPrefix}
	for _, id := range []string{"AG_damaged_0001", "AG_intact_0002"} {
		cb := publish.Callback{Kind: string(daraja.B2CResult), Shortcode: "600000", TransactionID: id, TokenID: "tok_" + id,
			ReceivedAt: time.Now(), Edge: "test", Body: []byte(`{"Result":{"ConversationID":"` + id + `","ResultCode":0}}`)}
		m := cb.Msg(subjects.Callback(cb.Kind, cb.Shortcode, cb.TokenID))
		m.Header.Set(publish.HeaderExpectFirst, "0")
		if err := sp.Append(m); err != nil {
			t.Fatal(err)
		}
	}
	if err := sp.Close(); err != nil {
		t.Fatal(err)
	}
	segs, err := filepath.Glob(filepath.Join(cfg.Spool.Dir, "*.spool"))
	if err != nil || len(segs) != 1 {
		t.Fatalf("segments: %v %v", segs, err)
	}
	data, err := os.ReadFile(segs[0])
	if err != nil {
		t.Fatal(err)
	}
	at := strings.Index(string(data), "AG_damaged_0001")
	if at < 0 {
		t.Fatal("the first record is not in the segment")
	}
	data[at] ^= 0x20 // one flipped bit inside the first record's payload
	if err := os.WriteFile(segs[0], data, 0o600); err != nil {
		t.Fatal(err)
	}

	h := startConfig(t, cfg)
	if v := h.scrape()["daraja_edge_spool_corrupt_total"]; v != 1 {
		t.Errorf("daraja_edge_spool_corrupt_total = %v, want 1", v)
	}
	named := false
	for _, e := range h.logs.FilterMessageSnippet("damaged").All() {
		if seg, _ := e.ContextMap()["segment"].(string); e.Level.String() == "error" && seg == segs[0] {
			named = true
		}
	}
	if !named {
		var lines []string
		for _, e := range h.logs.FilterMessageSnippet("spool").All() {
			b, _ := json.Marshal(e.ContextMap())
			lines = append(lines, e.Level.String()+" "+e.Message+" "+string(b))
		}
		t.Errorf("no Error log naming the damaged segment %s; spool lines:\n%s", segs[0], strings.Join(lines, "\n"))
	}
	waitUntil(t, 60*time.Second, func() bool { return h.count() == 1 })
	msgs := h.messages()
	if got := msgs[0].Header.Get(nats.MsgIdHdr); got != "b2c.result:AG_intact_0002" {
		t.Errorf("replayed %q, want the record after the damage", got)
	}
	h.waitReadyz(http.StatusOK, "ready")
}

// TestSpoolUnwritableNotReady: a spool directory that cannot be written
// any more (replaced while the edge runs; spool_linux_test.go remounts it
// read-only, which stops root too) makes /readyz answer 503 naming the
// spool, since a callback NATS could not take would then get a 503; once
// it is back /readyz is green again.
func TestSpoolUnwritableNotReady(t *testing.T) {
	h := start(t, nil)
	h.waitReadyz(http.StatusOK, "ready")
	dir := h.cfg.Spool.Dir
	if err := os.Rename(dir, dir+".moved"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, []byte("not a directory"), 0o600); err != nil {
		t.Fatal(err)
	}
	h.waitReadyz(http.StatusServiceUnavailable, "spool directory cannot be written")
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(dir+".moved", dir); err != nil {
		t.Fatal(err)
	}
	h.waitReadyz(http.StatusOK, "ready")
	if left, _ := filepath.Glob(filepath.Join(dir, ".readyz-*")); len(left) != 0 {
		t.Errorf("the readiness probe left %v behind", left)
	}
}
