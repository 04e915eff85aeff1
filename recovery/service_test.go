package recovery

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/internal/natstest"
	"github.com/daraja-edge/daraja-edge/publish"
	"github.com/daraja-edge/daraja-edge/recovery/darajatest"
	"github.com/daraja-edge/daraja-edge/verify"
)

const statusPath = "/mpesa/transactionstatus/v1/query"

type rig struct {
	t       *testing.T
	d       *darajatest.Server
	stream  jetstream.Stream
	store   *verify.Store
	issuer  *verify.Issuer
	missing *publish.Missing
	logs    []*observer.ObservedLogs
	regs    []*prometheus.Registry
	js      jetstream.JetStream
	secrets []string
}

// newRig runs a real NATS with the stream and buckets, the Daraja
// stand-in, and n recovery replicas, each on its own connection; tune
// changes each replica's options before it starts.
func newRig(t *testing.T, n, attempts int, tune ...func(*Options)) *rig {
	t.Helper()
	ns := natstest.Server(t)
	ctx, cancel := context.WithCancel(context.Background())
	d := darajatest.New("app-key-1234567", "app-secret-7654321")
	t.Cleanup(d.Close)
	passkey := "bfb279f9aa9bdbcf158e97dd71a467cd2e0c893059b10f78e6b72ada1ed2c919"
	d.Passkeys["174379"] = passkey
	r := &rig{t: t, d: d, secrets: []string{d.Key, d.Secret, passkey, "cred-S3cr3t-base64=="}}
	subjects := publish.Subjects{Prefix: "daraja"}
	var done []chan struct{}
	for i := range n {
		nc, js := natstest.Connect(t, ns)
		st, err := publish.EnsureStream(ctx, js, publish.StreamOptions{Name: "DARAJA", Subjects: subjects.StreamSubjects(),
			Replicas: 1, DuplicateWindow: time.Hour, MaxAge: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		pub := publish.New(nc, js, st, 3*time.Second)
		store, err := verify.NewStore(ctx, js, verify.StoreOptions{Bucket: "daraja_tokens", Replicas: 1, Retain: time.Hour}, nil)
		if err != nil {
			t.Fatal(err)
		}
		issuer := &verify.Issuer{Store: store, PublicURL: "https://cb.example.co.ke", QueryParam: "t",
			Limits: verify.Limits{DefaultTTL: time.Hour, MaxTTL: 48 * time.Hour}}
		if i == 0 {
			r.stream, r.store, r.issuer = st, store, issuer
			if r.missing, err = publish.OpenMissing(ctx, js, pub, "daraja_missing", 1, time.Hour, subjects, "edge-0"); err != nil {
				t.Fatal(err)
			}
		}
		core, logs := observer.New(zap.DebugLevel)
		reg := prometheus.NewRegistry()
		r.logs, r.regs = append(r.logs, logs), append(r.regs, reg)
		if i == 0 {
			r.js = js
		}
		client := NewClient(d.URL, d.Key, d.Secret, d.Client())
		o := Options{JS: js, Stream: "DARAJA", Publisher: pub, Subjects: subjects, Edge: "edge-" + string(rune('0'+i)),
			Records: store, Issuer: issuer, Rate: 100, Burst: 10, Attempts: attempts, Backoff: time.Millisecond, MaxBackoff: 4 * time.Millisecond,
			ResultTTL: time.Hour, Registerer: reg, Log: zap.New(core),
			Shortcodes: map[string]Shortcode{"174379": {Client: client, Passkey: passkey, Initiator: "recovery-api",
				SecurityCredential: "cred-S3cr3t-base64==", IdentifierType: "4"}}}
		for _, f := range tune {
			f(&o)
		}
		svc, err := New(ctx, o)
		if err != nil {
			t.Fatal(err)
		}
		ch := make(chan struct{})
		done = append(done, ch)
		go func() { defer close(ch); _ = svc.Run(ctx) }()
	}
	t.Cleanup(func() {
		cancel()
		for _, ch := range done {
			<-ch
		}
		r.checkLogs()
	})
	return r
}

// expire issues a token, annotates it (unless a is empty) and publishes
// its missing event.
func (r *rig) expire(kind daraja.Kind, a verify.Annotation) verify.IssueResponse {
	r.t.Helper()
	ctx := context.Background()
	iss, err := r.issuer.Issue(ctx, verify.IssueRequest{Kinds: []daraja.Kind{kind}, Shortcode: "174379", Reference: "INV-9", TTL: "1h"})
	if err != nil {
		r.t.Fatal(err)
	}
	r.secrets = append(r.secrets, iss.Token)
	if a != (verify.Annotation{}) {
		if _, err := r.store.Annotate(ctx, iss.ID, a); err != nil {
			r.t.Fatal(err)
		}
	}
	rec, _ := r.store.Get(ctx, iss.ID)
	sent, err := r.missing.Resolve(ctx, publish.MissingToken{ID: rec.ID, Kinds: []string{string(kind)}, Shortcode: rec.Shortcode,
		Reference: rec.Reference, IssuedAt: rec.IssuedAt, ExpiresAt: rec.ExpiresAt})
	if err != nil || !sent {
		r.t.Fatalf("missing event: %v %v", sent, err)
	}
	return iss
}

// recovered waits for the one recovered message of a token.
func (r *rig) recovered(kind daraja.Kind, id string) *jetstream.RawStreamMsg {
	r.t.Helper()
	subj := "daraja.recovered." + string(kind) + ".174379." + id
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if m, err := r.stream.GetLastMsgForSubject(context.Background(), subj); err == nil {
			return m
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.t.Fatalf("nothing on %s", subj)
	return nil
}

// settled waits until every replica's consumer has nothing pending.
func (r *rig) settled() {
	r.t.Helper()
	for range 1500 {
		c, err := r.stream.Consumer(context.Background(), ConsumerName)
		if err == nil {
			if info, err := c.Info(context.Background()); err == nil && info.NumPending == 0 && info.NumAckPending == 0 {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.t.Fatal("consumer never settled")
}

// checkLogs fails the test if any log line holds a secret: the app's key
// and secret, the passkey, the credential, URL tokens, every OAuth access
// token the stand-in issued and every STK password it received.
func (r *rig) checkLogs() {
	secrets := append(r.secrets, r.d.Tokens()...)
	for _, q := range r.d.Requests(stkPath) {
		secrets = append(secrets, q["Password"].(string))
	}
	if len(r.d.Tokens()) == 0 {
		r.t.Log("no access token issued: the scan checks none")
	}
	for _, l := range r.logs {
		for _, e := range l.All() {
			line, _ := json.Marshal(append([]any{e.Message}, e.ContextMap()))
			for _, s := range secrets {
				if s != "" && strings.Contains(string(line), s) {
					r.t.Errorf("a secret is logged: %s", line)
				}
			}
		}
	}
}

// TestSTKOnceAcrossReplicas: with two replicas, a missing STK callback is
// queried once and its answer stored once, with the callback headers and
// Daraja-Recovered-By.
func TestSTKOnceAcrossReplicas(t *testing.T) {
	r := newRig(t, 2, 3)
	r.d.SetResult("ws_CO_011220261200001", "1032")
	iss := r.expire(daraja.STKCallback, verify.Annotation{CheckoutRequestID: "ws_CO_011220261200001"})
	m := r.recovered(daraja.STKCallback, iss.ID)
	r.settled()
	if n := r.d.Calls(stkPath); n != 1 {
		t.Fatalf("%d STK queries, want 1", n)
	}
	for k, want := range map[string]string{HeaderRecoveredBy: QuerySTK, HeaderOutcome: "answered", "Daraja-Result-Code": "1032",
		"Daraja-Token-Id": iss.ID, "Daraja-Reference": "INV-9", "Daraja-Kind": "stk.callback", "Daraja-Shortcode": "174379",
		"Daraja-Transaction-Id": "ws_CO_011220261200001", "Nats-Msg-Id": "recovered:" + iss.ID} {
		if got := m.Header.Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	var body map[string]string
	if err := json.Unmarshal(m.Data, &body); err != nil || body["CheckoutRequestID"] != "ws_CO_011220261200001" {
		t.Fatalf("body %s", m.Data)
	}
}

// TestRetryThenUnrecoverable: a query still failing after the bound is
// published as unrecoverable with the reason; one that passes within it
// is answered.
func TestRetryThenUnrecoverable(t *testing.T) {
	r := newRig(t, 1, 3)
	r.d.Fail(stkPath, darajatest.Processing, darajatest.RateLimited, darajatest.ServerError)
	iss := r.expire(daraja.STKCallback, verify.Annotation{CheckoutRequestID: "ws_CO_2"})
	m := r.recovered(daraja.STKCallback, iss.ID)
	if m.Header.Get(HeaderOutcome) != "unrecoverable" || !strings.Contains(m.Header.Get(HeaderError), "3 attempts") ||
		!strings.Contains(m.Header.Get(HeaderError), "500.003.02") {
		t.Fatalf("headers %v", m.Header)
	}
	if n := r.d.Calls(stkPath); n != 3 {
		t.Fatalf("%d tries, want 3", n)
	}
	r.d.Fail(stkPath, darajatest.Processing, darajatest.Processing)
	iss = r.expire(daraja.STKCallback, verify.Annotation{CheckoutRequestID: "ws_CO_3"})
	if m := r.recovered(daraja.STKCallback, iss.ID); m.Header.Get(HeaderOutcome) != "answered" {
		t.Fatalf("third try should answer: %v", m.Header)
	}
}

// TestTransactionStatus: a missing B2C result is asked by Transaction
// Status with the recorded OriginatorConversationID and a fresh token's
// status URLs; the acknowledgement names that token.
func TestTransactionStatus(t *testing.T) {
	r := newRig(t, 1, 2)
	iss := r.expire(daraja.B2CResult, verify.Annotation{OriginatorConversationID: "AG_20261201_0000abc"})
	m := r.recovered(daraja.B2CResult, iss.ID)
	if m.Header.Get(HeaderOutcome) != "acknowledged" || m.Header.Get(HeaderRecoveredBy) != QueryStatus {
		t.Fatalf("headers %v", m.Header)
	}
	reqs := r.d.Requests(statusPath)
	if len(reqs) != 1 {
		t.Fatalf("%d status queries", len(reqs))
	}
	q := reqs[0]
	res := m.Header.Get(HeaderResultTokenID)
	rec, err := r.store.Get(context.Background(), res)
	if err != nil || rec.Reference != "recovers "+iss.ID || !rec.Allows(daraja.StatusResult) {
		t.Fatalf("result token %s: %+v %v", res, rec, err)
	}
	if q["OriginalConversationID"] != "AG_20261201_0000abc" || q["CommandID"] != "TransactionStatusQuery" ||
		q["PartyA"] != "174379" || q["IdentifierType"] != "4" || q["Initiator"] != "recovery-api" ||
		!strings.HasPrefix(q["ResultURL"].(string), "https://cb.example.co.ke/status/result?t=") ||
		!strings.HasPrefix(q["QueueTimeOutURL"].(string), "https://cb.example.co.ke/status/timeout?t=") {
		t.Fatalf("query %v", q)
	}
	r.secrets = append(r.secrets, strings.TrimPrefix(q["ResultURL"].(string), "https://cb.example.co.ke/status/result?t="))
}

// TestNotRecorded: without the recorded id the answer is unrecoverable,
// with no query made.
func TestNotRecorded(t *testing.T) {
	r := newRig(t, 1, 2)
	iss := r.expire(daraja.C2BConfirmation, verify.Annotation{CheckoutRequestID: "ws_CO_x"})
	m := r.recovered(daraja.C2BConfirmation, iss.ID)
	if m.Header.Get(HeaderOutcome) != "unrecoverable" || !strings.Contains(m.Header.Get(HeaderError), "Pull Transactions") {
		t.Fatalf("headers %v", m.Header)
	}
}

// metric reads a counter's value, or a histogram's sample count, from reg.
func metric(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue next
				}
			}
			if h := m.GetHistogram(); h != nil {
				return float64(h.GetSampleCount())
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

// messages waits until subject holds n messages and returns them; it
// fails if it holds more.
func (r *rig) messages(subject string, n int) []*jetstream.RawStreamMsg {
	r.t.Helper()
	var out []*jetstream.RawStreamMsg
	for range 1500 {
		out = out[:0]
		for seq := uint64(1); ; {
			m, err := r.stream.GetMsg(context.Background(), seq, jetstream.WithGetMsgSubject(subject))
			if err != nil {
				break
			}
			out = append(out, m)
			seq = m.Sequence + 1
		}
		if len(out) >= n {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(out) != n {
		r.t.Fatalf("%d messages on %s, want %d", len(out), subject, n)
	}
	return out
}

// TestNoDuplicateQueriesDuringBackoff: a backoff three times the
// consumer's ack wait does not hand the event to another worker or
// replica (the worker tells JetStream it is in progress all along): it is
// delivered once, and exactly one query per attempt reaches Daraja.
func TestNoDuplicateQueriesDuringBackoff(t *testing.T) {
	r := newRig(t, 2, 2, func(o *Options) {
		o.AckWait, o.Backoff, o.MaxBackoff = 2*time.Second, 6*time.Second, 6*time.Second
	})
	r.d.Fail(stkPath, darajatest.Processing)
	iss := r.expire(daraja.STKCallback, verify.Annotation{CheckoutRequestID: "ws_CO_slow"})
	m := r.recovered(daraja.STKCallback, iss.ID)
	if m.Header.Get(HeaderOutcome) != OutcomeAnswered {
		t.Fatalf("headers %v", m.Header)
	}
	r.settled()
	c, err := r.stream.Consumer(context.Background(), ConsumerName)
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.Delivered.Consumer != 1 {
		t.Fatalf("the event was delivered %d times, want once (handed to another worker during the backoff)", info.Delivered.Consumer)
	}
	if n := r.d.Calls(stkPath); n != 2 {
		t.Fatalf("%d STK queries for 2 attempts, want 2", n)
	}
}

// TestMetrics: attempts by result, outcomes and query latency are counted
// in the registry.
func TestMetrics(t *testing.T) {
	r := newRig(t, 1, 3)
	reg := r.regs[0]
	r.d.Fail(stkPath, darajatest.Processing, darajatest.RateLimited, darajatest.ServerError)
	iss := r.expire(daraja.STKCallback, verify.Annotation{CheckoutRequestID: "ws_CO_m1"})
	r.recovered(daraja.STKCallback, iss.ID)
	r.d.Fail(stkPath, darajatest.ServerError)
	iss = r.expire(daraja.STKCallback, verify.Annotation{CheckoutRequestID: "ws_CO_m2"})
	r.recovered(daraja.STKCallback, iss.ID)
	r.d.Fail(stkPath, darajatest.InvalidToken, darajatest.InvalidToken)
	iss = r.expire(daraja.STKCallback, verify.Annotation{CheckoutRequestID: "ws_CO_m3"})
	r.recovered(daraja.STKCallback, iss.ID)
	r.settled()
	stk := func(kv ...string) map[string]string {
		m := map[string]string{"query": QuerySTK}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"daraja_edge_recovery_attempts_total", stk("result", "retryable"), 4},
		{"daraja_edge_recovery_attempts_total", stk("result", "ok"), 1},
		{"daraja_edge_recovery_attempts_total", stk("result", "failed"), 1},
		{"daraja_edge_recovery_outcomes_total", stk("outcome", OutcomeUnrecoverable), 2},
		{"daraja_edge_recovery_outcomes_total", stk("outcome", OutcomeAnswered), 1},
		{"daraja_edge_recovery_query_seconds", stk(), 6},
	} {
		if got := metric(t, reg, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
}

// TestNoCheckoutRecorded: an STK token whose checkout_request_id was never
// recorded, and a B2C token without its originator_conversation_id, are
// published as unrecoverable with the reason, and Daraja is not asked.
func TestNoCheckoutRecorded(t *testing.T) {
	r := newRig(t, 1, 2)
	iss := r.expire(daraja.STKCallback, verify.Annotation{})
	m := r.recovered(daraja.STKCallback, iss.ID)
	if m.Header.Get(HeaderOutcome) != OutcomeUnrecoverable || m.Header.Get(HeaderRecoveredBy) != QuerySTK ||
		!strings.Contains(m.Header.Get(HeaderError), "no checkout_request_id recorded") {
		t.Fatalf("headers %v", m.Header)
	}
	var body map[string]string
	if err := json.Unmarshal(m.Data, &body); err != nil || body["token_id"] != iss.ID || !strings.Contains(body["error"], "checkout_request_id") {
		t.Fatalf("body %s", m.Data)
	}
	iss = r.expire(daraja.B2CResult, verify.Annotation{})
	m = r.recovered(daraja.B2CResult, iss.ID)
	if m.Header.Get(HeaderOutcome) != OutcomeUnrecoverable || !strings.Contains(m.Header.Get(HeaderError), "no originator_conversation_id recorded") {
		t.Fatalf("headers %v", m.Header)
	}
	if n := r.d.Calls(stkPath) + r.d.Calls(statusPath); n != 0 {
		t.Fatalf("%d queries made", n)
	}
}

// TestRefusedStatusQueryRevokesResultToken: Daraja refuses a Transaction
// Status request outright (400: a credential it does not take), so no
// result can come on the token issued for it; the token is revoked, so it
// raises no missing event of its own (it stayed issued and did, and
// recovery answered that event "unrecoverable"). After retryable
// failures Daraja may have taken one attempt: that token stays issued.
func TestRefusedStatusQueryRevokesResultToken(t *testing.T) {
	ctx := context.Background()
	resultToken := func(r *rig, m *jetstream.RawStreamMsg) verify.Record {
		t.Helper()
		id := m.Header.Get(HeaderResultTokenID)
		if m.Header.Get(HeaderOutcome) != OutcomeUnrecoverable || id == "" {
			t.Fatalf("headers %v", m.Header)
		}
		rec, err := r.store.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return rec
	}
	t.Run("refused", func(t *testing.T) {
		r := newRig(t, 1, 2, func(o *Options) {
			sc := o.Shortcodes["174379"]
			sc.SecurityCredential = "" // the stand-in answers 400 Invalid Request
			o.Shortcodes = map[string]Shortcode{"174379": sc}
		})
		iss := r.expire(daraja.B2CResult, verify.Annotation{OriginatorConversationID: "AG_20261201_0000abc"})
		rec := resultToken(r, r.recovered(daraja.B2CResult, iss.ID))
		// The sweep passes revoked tokens by
		// (verify.TestSweepResolvesEachExpiredTokenOnce).
		if rec.State != verify.StateRevoked {
			t.Fatalf("result token of a refused query is %s, want revoked", rec.State)
		}
	})
	t.Run("retryable", func(t *testing.T) {
		r := newRig(t, 1, 2)
		r.d.Fail("/mpesa/transactionstatus/v1/query", darajatest.ServerError, darajatest.ServerError)
		iss := r.expire(daraja.B2CResult, verify.Annotation{OriginatorConversationID: "AG_20261201_0000abd"})
		if rec := resultToken(r, r.recovered(daraja.B2CResult, iss.ID)); rec.State != verify.StateIssued {
			t.Fatalf("result token after retryable failures is %s, want issued (Daraja may have taken an attempt)", rec.State)
		}
	})
}
