package recovery

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/reconcile"
	"github.com/daraja-edge/daraja-edge/recovery/darajatest"
	"github.com/daraja-edge/daraja-edge/verify"
)

const pullPath = "/pulltransactions/v1/query"

// withPull registers 174379 for Pull Transactions.
func withPull(o *Options) {
	sc := o.Shortcodes["174379"]
	sc.Pull = true
	o.Shortcodes["174379"] = sc
}

// TestPullRecovery: a single-use C2B token that expires without its
// confirmation is recovered by Pull Transactions over the token's window:
// each transaction found is its own message on the token's recovered
// subject (Nats-Msg-Id from the receipt, the transaction's object as the
// body); one outside the window is not. The event delivered again (a
// crash before the ack, or the same event published twice) queries
// nothing more and stores nothing more.
func TestPullRecovery(t *testing.T) {
	r := newRig(t, 2, 2, withPull)
	r.d.PullPage = 1 // two pages, then an empty one
	now := time.Now()
	r.d.AddPull("174379",
		darajatest.PullTransaction{Receipt: "TLA1B2C3D4", Time: now.Add(time.Minute), MSISDN: "254708374149", BillReference: "INV-9", Amount: "150.00"},
		darajatest.PullTransaction{Receipt: "TLA1B2C3D5", Time: now.Add(2 * time.Minute), MSISDN: "254708374150", BillReference: "INV-10", Amount: "20.00"},
		darajatest.PullTransaction{Receipt: "TLA0OUTSID", Time: now.Add(-3 * time.Hour), Amount: "1.00"})
	iss := r.expire(daraja.C2BConfirmation, verify.Annotation{})
	subject := "daraja.recovered.c2b.confirmation.174379." + iss.ID
	msgs := r.messages(subject, 2)
	r.settled()
	for i, receipt := range []string{"TLA1B2C3D4", "TLA1B2C3D5"} {
		m := msgs[i]
		for k, want := range map[string]string{"Nats-Msg-Id": "recovered:c2b.confirmation:" + iss.ID + ":" + receipt, HeaderRecoveredBy: QueryPull,
			HeaderOutcome: OutcomeAnswered, HeaderCount: "2", "Daraja-Transaction-Id": receipt, "Daraja-Receipt": receipt,
			"Daraja-Token-Id": iss.ID, "Daraja-Kind": "c2b.confirmation", "Daraja-Reference": "INV-9"} {
			if got := m.Header.Get(k); got != want {
				t.Errorf("message %d: %s: %q, want %q", i, k, got, want)
			}
		}
		var tx map[string]string
		if err := json.Unmarshal(m.Data, &tx); err != nil || tx["transactionId"] != receipt || tx["transactiontype"] != "c2b-pay-bill-debit" {
			t.Errorf("message %d: body %s", i, m.Data)
		}
	}
	q := r.d.Requests(pullPath)
	if len(q) != 3 || q[0]["ShortCode"] != "174379" || q[0]["OffSetValue"] != "0" || q[1]["OffSetValue"] != "1" || q[2]["OffSetValue"] != "2" {
		t.Fatalf("pull requests %v", q)
	}
	if from := q[0]["StartDate"].(string); from != now.In(eat).Format(pullLayout) {
		t.Errorf("StartDate %s, want the token's issue time in EAT", from)
	}
	if got := metric(t, r.regs[0], "daraja_edge_recovery_outcomes_total", map[string]string{"query": QueryPull, "outcome": OutcomeAnswered}) +
		metric(t, r.regs[1], "daraja_edge_recovery_outcomes_total", map[string]string{"query": QueryPull, "outcome": OutcomeAnswered}); got != 1 {
		t.Errorf("pull answered %v times, want 1", got)
	}

	// The same event again, under another Nats-Msg-Id.
	again := &nats.Msg{Subject: "daraja.missing.c2b.confirmation.174379", Header: nats.Header{"Nats-Msg-Id": {"again:" + iss.ID}},
		Data: []byte(`{"token_id":"` + iss.ID + `","kinds":["c2b.confirmation"],"shortcode":"174379"}`)}
	if _, err := r.js.PublishMsg(context.Background(), again); err != nil {
		t.Fatal(err)
	}
	r.settled()
	if n := r.d.Calls(pullPath); n != 3 {
		t.Fatalf("%d pull requests after the event came again, want still 3", n)
	}
	r.messages(subject, 2)
}

// reconcileFinding publishes the event `daraja-edge reconcile --publish`
// puts on <prefix>.missing.<kind>.<shortcode> for a missing callback
// (reconcile.MissingMsg itself); kinds is the finding's "a|b" list.
func (r *rig) reconcileFinding(kinds, shortcode, receipt string, at time.Time) {
	r.t.Helper()
	m := reconcile.MissingMsg("daraja", reconcile.Finding{Category: reconcile.Missing, Kind: kinds, Receipt: receipt,
		Shortcode: shortcode, Amount: 15000, Time: at, Source: "statement.csv:4"})
	if _, err := r.js.PublishMsg(context.Background(), m); err != nil {
		r.t.Fatal(err)
	}
}

// TestReconcileFindings: a missing event reconcile published names a
// receipt, not a token. A C2B receipt is recovered by Pull Transactions
// around its time (that transaction alone published), a B2C receipt by
// Transaction Status with TransactionID = the receipt; a finding for a
// shortcode recovery does not know is skipped quietly (counted, nothing
// published, not dropped as not understood); the same finding published
// again is not asked about again.
func TestReconcileFindings(t *testing.T) {
	r := newRig(t, 1, 2, withPull)
	at := time.Date(2026, 12, 1, 9, 30, 0, 0, time.UTC)
	r.d.AddPull("174379",
		darajatest.PullTransaction{Receipt: "TLB0000001", Time: at.Add(-time.Minute), Amount: "5.00"},
		darajatest.PullTransaction{Receipt: "TLB0000002", Time: at, MSISDN: "254708374149", BillReference: "ACC-7", Amount: "150.00"})

	r.reconcileFinding("c2b.confirmation|stk.callback", "174379", "TLB0000002", at)
	m := r.messages("daraja.recovered.c2b.confirmation.174379.TLB0000002", 1)[0]
	for k, want := range map[string]string{"Nats-Msg-Id": "recovered:c2b.confirmation:TLB0000002:TLB0000002", HeaderRecoveredBy: QueryPull,
		HeaderOutcome: OutcomeAnswered, HeaderMissingSource: SourceReconcile, "Daraja-Receipt": "TLB0000002",
		"Daraja-Transaction-Id": "TLB0000002", "Daraja-Shortcode": "174379", "Daraja-Token-Id": ""} {
		if got := m.Header.Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	var tx map[string]string
	if err := json.Unmarshal(m.Data, &tx); err != nil || tx["transactionId"] != "TLB0000002" || tx["billreference"] != "ACC-7" {
		t.Fatalf("body %s", m.Data)
	}
	q := r.d.Requests(pullPath)
	if len(q) != 1 || q[0]["StartDate"] != "2026-12-01 12:00:00" || q[0]["EndDate"] != "2026-12-01 13:00:00" {
		t.Fatalf("pull requests %v", q)
	}

	r.reconcileFinding("b2c.result", "174379", "TLB0000003", at)
	m = r.messages("daraja.recovered.b2c.result.174379.TLB0000003", 1)[0]
	if m.Header.Get(HeaderOutcome) != OutcomeAcknowledged || m.Header.Get(HeaderRecoveredBy) != QueryStatus ||
		m.Header.Get(HeaderMissingSource) != SourceReconcile {
		t.Fatalf("headers %v", m.Header)
	}
	sq := r.d.Requests(statusPath)
	if len(sq) != 1 || sq[0]["TransactionID"] != "TLB0000003" || sq[0]["OriginalConversationID"] != nil || sq[0]["PartyA"] != "174379" {
		t.Fatalf("status requests %v", sq)
	}
	r.secrets = append(r.secrets, strings.TrimPrefix(sq[0]["ResultURL"].(string), "https://cb.example.co.ke/status/result?t="))
	if rec, err := r.store.Get(context.Background(), m.Header.Get(HeaderResultTokenID)); err != nil || rec.Reference != "recovers TLB0000003" {
		t.Fatalf("result token: %+v %v", rec, err)
	}

	r.reconcileFinding("c2b.confirmation|stk.callback", "", "TLB0000004", at) // a statement naming no shortcode
	r.settled()
	if got := metric(t, r.regs[0], "daraja_edge_recovery_outcomes_total", map[string]string{"query": "none", "outcome": OutcomeSkipped}); got != 1 {
		t.Fatalf("skipped %v, want 1", got)
	}
	for _, e := range r.logs[0].All() {
		if strings.Contains(e.Message, "not understood") {
			t.Fatalf("a reconcile finding was dropped as not understood: %v", e.ContextMap())
		}
	}
	r.messages("daraja.recovered.c2b.confirmation.unknown.TLB0000004", 0)

	// Published again (reconcile run over the same statement a day later).
	m2 := &nats.Msg{Subject: "daraja.missing.c2b.confirmation.174379", Header: nats.Header{HeaderMissingSource: {SourceReconcile}},
		Data: []byte(`{"source":"reconcile","receipt":"TLB0000002","amount":"150.00","time":"` + at.Format(time.RFC3339) + `"}`)}
	if _, err := r.js.PublishMsg(context.Background(), m2); err != nil {
		t.Fatal(err)
	}
	r.settled()
	if n := r.d.Calls(pullPath); n != 1 {
		t.Fatalf("%d pull requests, want 1", n)
	}
}

// TestPullTransactions: the answer's shapes, an empty one, and an error.
func TestPullTransactions(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		want       []string
		err        bool
	}{
		{"nested", `{"ResponseRefID":"x","ResponseCode":"1000","ResponseMessage":"Success","Response":[[{"transactionId":"TLA1B2C3D4","amount":"1"},{"transactionId":"TLA1B2C3D5"}]]}`, []string{"TLA1B2C3D4", "TLA1B2C3D5"}, false},
		{"flat", `{"ResponseCode":"1000","Response":[{"transactionId":"TLA1B2C3D4"}]}`, []string{"TLA1B2C3D4"}, false},
		{"empty", `{"ResponseCode":"1000","Response":[[]]}`, nil, false},
		{"no response", `{"ResponseCode":"1000","ResponseMessage":"Success"}`, nil, false},
		{"error code", `{"ResponseCode":"1001","ResponseMessage":"Shortcode not registered"}`, nil, true},
		{"bad receipt", `{"ResponseCode":"1000","Response":[[{"transactionId":"x.y"}]]}`, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			txs, err := PullTransactions([]byte(tc.body))
			if (err != nil) != tc.err {
				t.Fatalf("err %v", err)
			}
			var got []string
			for _, tx := range txs {
				got = append(got, tx.Receipt)
				if !json.Valid(tx.Raw) {
					t.Errorf("raw %s", tx.Raw)
				}
			}
			if strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Fatalf("receipts %v, want %v", got, tc.want)
			}
		})
	}
}
