package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/internal/edgetest"
	"github.com/daraja-edge/daraja-edge/internal/natstest"
	"github.com/daraja-edge/daraja-edge/reconcile"
	"github.com/daraja-edge/daraja-edge/verify"
)

// reconcileReport is the part of `reconcile --format json` the tests read.
type reconcileReport struct {
	Discrepancies bool
	Totals        map[string]struct{ Count int }
	Findings      []struct {
		Category, Kind, Receipt, Detail string
	}
}

func (r reconcileReport) byReceipt() map[string]string {
	out := map[string]string{}
	for _, f := range r.Findings {
		out[f.Receipt] = f.Category + ": " + f.Detail
	}
	return out
}

// TestReconcileLiveStream runs a real edge (embedded NATS), delivers
// callbacks of several kinds from an allowlisted source, and reconciles
// statements against the live stream: each category, exit 1 then 0, the
// progress line, and --publish twice landing each missing callback once,
// even past the stream's duplicate window.
func TestReconcileLiveStream(t *testing.T) {
	cfg := edgetest.Config(t, "")
	cfg.NATS.Stream.DuplicateWindow = time.Second // --publish must not rely on it
	e := edgetest.Start(t, cfg)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfgPath, []byte("nats:\n  url: "+e.Srv.NATSURL()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	// Every time is relative to base, an hour after the stream was
	// created: the lines that must be missing are younger than the stream.
	base := time.Now().Add(time.Hour).In(reconcile.EAT).Truncate(time.Second)
	at := func(d time.Duration) time.Time { return base.Add(d) }
	compact := func(d time.Duration) string { return at(d).Format("20060102150405") }
	deliver := func(kind daraja.Kind, reusable bool, body string) {
		t.Helper()
		iss := edgetest.Issue(t, e.Admin, verify.IssueRequest{Kinds: []daraja.Kind{kind}, Shortcode: "600638", Reusable: reusable})
		if status, answer := edgetest.Post(e.Public, kind, iss.Token, []byte(body)); status != 200 {
			t.Fatalf("%s: %d %s", kind, status, answer)
		}
	}
	c2b := func(receipt string, d time.Duration, amount, msisdn string) string {
		return fmt.Sprintf(`{"TransactionType":"Pay Bill","TransID":%q,"TransTime":%q,"TransAmount":%q,"BusinessShortCode":"600638","BillRefNumber":"INV","MSISDN":%q,"FirstName":"Test"}`,
			receipt, compact(d), amount, msisdn)
	}
	deliver(daraja.C2BConfirmation, true, c2b("TKE0000001", -30*time.Minute, "100.00", "254700000801"))
	deliver(daraja.STKCallback, false, fmt.Sprintf(`{"Body":{"stkCallback":{"MerchantRequestID":"1-2","CheckoutRequestID":"ws_CO_0000000000000000000002","ResultCode":0,"ResultDesc":"ok",`+
		`"CallbackMetadata":{"Item":[{"Name":"Amount","Value":200},{"Name":"MpesaReceiptNumber","Value":"TKE0000002"},{"Name":"TransactionDate","Value":%s},{"Name":"PhoneNumber","Value":254700000802}]}}}}`,
		compact(-20*time.Minute)))
	deliver(daraja.B2CResult, false, fmt.Sprintf(`{"Result":{"ResultType":0,"ResultCode":0,"ResultDesc":"ok","OriginatorConversationID":"1-1-3","ConversationID":"AG_E_3","TransactionID":"TKE0000003",`+
		`"ResultParameters":{"ResultParameter":[{"Key":"TransactionAmount","Value":300},{"Key":"TransactionReceipt","Value":"TKE0000003"},{"Key":"ReceiverPartyPublicName","Value":"254700000803 - Test Payee"},`+
		`{"Key":"TransactionCompletedDateTime","Value":%q}]}}}`, at(-10*time.Minute).Format("02.01.2006 15:04:05")))
	// A B2B payment this shortcode made: on its Working account, whose
	// statement is not given.
	deliver(daraja.B2BResult, false, fmt.Sprintf(`{"Result":{"ResultType":0,"ResultCode":0,"ResultDesc":"ok","OriginatorConversationID":"1-1-4","ConversationID":"AG_E_4","TransactionID":"TKE0000004",`+
		`"ResultParameters":{"ResultParameter":[{"Key":"Amount","Value":400},{"Key":"TransCompletedTime","Value":%s}]}}}`, compact(-25*time.Minute)))
	// A callback with no statement line, in the statement's period.
	deliver(daraja.C2BConfirmation, true, c2b("TKE0000009", 2*time.Hour, "900.00", "254700000809"))

	statement := func(name string, from, to time.Duration, rows ...string) string {
		t.Helper()
		const layout = "02-01-2006 15:04:05"
		var b strings.Builder
		fmt.Fprintf(&b, "Account Holder:,Fictional Traders Ltd\r\nShort Code:,600638\r\nAccount:,Utility Account\r\nTime Period:,From %s To %s\r\n\r\n",
			at(from).Format(layout), at(to).Format(layout))
		b.WriteString("Receipt No.,Completion Time,Initiation Time,Details,Transaction Status,Paid In,Withdrawn,Balance,Balance Confirmed,Reason Type,Other Party Info,Linked Transaction ID,A/C No.,Currency\r\n")
		for _, r := range rows {
			b.WriteString(r + "\r\n")
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(b.String()), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	row := func(receipt string, d time.Duration, details, in, out, party string) string {
		when := at(d).Format("02-01-2006 15:04:05")
		return strings.Join([]string{receipt, when, when, details, "Completed", in, out, "", "true", "", party, "", "", "KES"}, ",")
	}
	matched := []string{
		row("TKE0000001", -30*time.Minute, "Pay Bill from 254700000801 - Test One Acc. INV", "100.00", "", "254700000801 - Test One"),
		row("TKE0000002", -20*time.Minute, "Pay Bill Online from 254700000802 - Test Two", "200.00", "", "254700000802 - Test Two"),
		row("TKE0000003", -10*time.Minute, "Business Payment Charge", "", "-15.00", ""),
		row("TKE0000003", -10*time.Minute, "Business Payment to 254700000803 - Test Payee", "", "-300.00", "254700000803 - Test Payee"),
		row("TKE0000007", -15*time.Minute, "Business Pay Bill from 600100 - Fictional Supplies Ltd via API. Acc. INV-7", "700.00", "", "600100 - Fictional Supplies Ltd"),
	}
	full := statement("ORG_600638_Utility_Account.csv", -72*time.Hour, 24*time.Hour, append(matched,
		row("TKE0000005", -5*time.Minute, "Pay Bill from 254700000805 - Test Five Acc. INV", "500.00", "", "254700000805 - Test Five"),
		row("TKE0000006", -48*time.Hour, "Pay Bill from 254700000806 - Test Six Acc. INV", "600.00", "", "254700000806 - Test Six"),
	)...)

	out, stderr, code := reconcileCLI(t, "--config", cfgPath, "--statement", full, "--format", "json")
	if code != 1 {
		t.Fatalf("exit %d, want 1: %s\n%s", code, stderr, out)
	}
	if !regexp.MustCompile(`reconcile: read \d+ messages from stream DARAJA: 5 callbacks`).MatchString(stderr) {
		t.Errorf("no progress line on stderr: %q", stderr)
	}
	var r reconcileReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	got := r.byReceipt()
	for receipt, want := range map[string]string{
		"TKE0000001": reconcile.Matched + ": ",
		"TKE0000002": reconcile.Matched + ": ",
		"TKE0000003": reconcile.Matched + ": 1 charge row(s)",
		"TKE0000005": reconcile.Missing + ": no callback on the stream",
		"TKE0000006": reconcile.NotCovered + ": older than the stream (created ",
		"TKE0000007": reconcile.NoneExpected + ": B2B payment received",
		"TKE0000009": reconcile.WithoutStatement + ": POSSIBLE FORGERY",
		"TKE0000004": reconcile.NotCovered + ": account not supplied: a b2b.result is on the statement of the Working Account",
	} {
		if !strings.HasPrefix(got[receipt], want) {
			t.Errorf("%s: %q, want %q…", receipt, got[receipt], want)
		}
	}
	if len(got) != 8 || !r.Discrepancies {
		t.Errorf("findings %v", got)
	}

	// --publish twice: the missing callback lands once; the second run
	// says nothing new was published.
	publishRun := func() string {
		t.Helper()
		_, stderr, code := reconcileCLI(t, "--config", cfgPath, "--statement", full, "--publish")
		if code != 1 {
			t.Fatalf("--publish: exit %d: %s", code, stderr)
		}
		return stderr
	}
	if s := publishRun(); !strings.Contains(s, "published 1 new missing-callback finding(s) on daraja.missing.>, 0 already there") {
		t.Errorf("first --publish: %q", s)
	}
	time.Sleep(2 * cfg.NATS.Stream.DuplicateWindow) // past the window, Nats-Msg-Id alone no longer de-duplicates
	if s := publishRun(); !strings.Contains(s, "published 0 new missing-callback finding(s) on daraja.missing.>, 1 already there") {
		t.Errorf("second --publish: %q", s)
	}
	_, js := natstest.ConnectURL(t, e.Srv.NATSURL())
	events := streamMessages(t, js, "DARAJA", "daraja.missing.>")
	if len(events) != 1 {
		t.Fatalf("%d missing events, want 1", len(events))
	}
	ev := events[0]
	var body reconcile.MissingEvent
	if err := json.Unmarshal(ev.Data, &body); err != nil {
		t.Fatal(err)
	}
	if ev.Subject != "daraja.missing.c2b.confirmation.600638" || ev.Header.Get(jetstream.MsgIDHeader) != "reconcile:TKE0000005" ||
		ev.Header.Get(reconcile.HeaderMissingSource) != "reconcile" || body.Receipt != "TKE0000005" || body.Source != "reconcile" ||
		body.Amount != "500.00" || strings.Join(body.Kinds, ",") != "c2b.confirmation,stk.callback" || body.Shortcode != "600638" ||
		body.Time != at(-5*time.Minute).Format(time.RFC3339) {
		t.Errorf("event %s %v %s", ev.Subject, ev.Header, ev.Data)
	}

	// Nothing to report: a statement of a shorter period whose every line
	// has its callback (or expects none) exits 0; the callbacks outside it
	// or on another account are not covered.
	quiet := statement("ORG_600638_Utility_Account_quiet.csv", -time.Hour, time.Hour, matched...)
	out, stderr, code = reconcileCLI(t, "--config", cfgPath, "--statement", quiet, "--format", "json")
	if code != 0 {
		t.Fatalf("exit %d, want 0: %s\n%s", code, stderr, out)
	}
	r = reconcileReport{}
	if err := json.Unmarshal([]byte(out), &r); err != nil || r.Discrepancies || r.Totals["matched"].Count != 3 ||
		r.Totals["not_covered"].Count != 2 || r.Totals["no_callback_expected"].Count != 1 {
		t.Errorf("quiet report (%v): %s", err, out)
	}
}

// streamMessages is every message of stream on subjects matching filter.
func streamMessages(t *testing.T, js jetstream.JetStream, stream, filter string) []*jetstream.RawStreamMsg {
	t.Helper()
	ctx := context.Background()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for subj := range info.State.Subjects {
		for seq := uint64(0); ; {
			m, err := s.GetMsg(ctx, seq+1, jetstream.WithGetMsgSubject(subj))
			if err != nil {
				break
			}
			out = append(out, m)
			seq = m.Sequence
		}
	}
	return out
}

// TestReadStreamRetention: on a stream that lost nothing, reconcile's
// horizon is the stream's creation; once its first messages are gone, the
// first message kept. Reconcile's own events on the stream are found.
func TestReadStreamRetention(t *testing.T) {
	ns := natstest.Server(t)
	nc, js := natstest.Connect(t, ns)
	ctx := context.Background()
	s, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "DARAJA", Subjects: []string{"daraja.cb.>", "daraja.missing.>"}})
	if err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	body := `{"TransactionType":"Pay Bill","TransID":"TKF000000%d","TransTime":"20261201100000","TransAmount":"1.00","BusinessShortCode":"600638"}`
	for i := 1; i <= 3; i++ {
		m := &nats.Msg{Subject: "daraja.cb.c2b.confirmation.600638.tok_x", Data: []byte(fmt.Sprintf(body, i)), Header: nats.Header{"Daraja-Kind": {"c2b.confirmation"}}}
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	f := reconcile.Finding{Category: reconcile.Missing, Kind: "c2b.confirmation|stk.callback", Receipt: "TKF0000009", Shortcode: "600638"}
	if _, err := js.PublishMsg(ctx, reconcile.MissingMsg("daraja", f)); err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var progress strings.Builder
	sr, err := readStream(ctx, nc, cfg, true, true, &progress)
	if err != nil {
		t.Fatal(err)
	}
	if !sr.created || !sr.start.Equal(info.Created) || len(sr.callbacks) != 3 || !sr.published["TKF0000009"] || len(sr.published) != 1 {
		t.Errorf("fresh stream: created %v start %v (stream created %v), %d callbacks, published %v", sr.created, sr.start, info.Created, len(sr.callbacks), sr.published)
	}
	if !strings.Contains(progress.String(), "read 4 messages from stream DARAJA: 3 callbacks") {
		t.Errorf("progress %q", progress.String())
	}
	if err := s.DeleteMsg(ctx, 1); err != nil {
		t.Fatal(err)
	}
	second, err := s.GetMsg(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	sr, err = readStream(ctx, nc, cfg, true, false, &progress)
	if err != nil {
		t.Fatal(err)
	}
	if sr.created || !sr.start.Equal(second.Time) || len(sr.callbacks) != 2 || len(sr.published) != 0 {
		t.Errorf("stream that lost its first message: created %v start %v (first kept %v), %d callbacks", sr.created, sr.start, second.Time, len(sr.callbacks))
	}
}
