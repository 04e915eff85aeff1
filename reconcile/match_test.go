package reconcile

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/publish"
)

// accountsInput reads the named statements of testdata/statements/accounts
// and its callbacks.
func accountsInput(t *testing.T, names ...string) Input {
	t.Helper()
	var in Input
	for _, n := range names {
		in.Statements = append(in.Statements, readFile(t, filepath.Join("accounts", n), Options{}))
	}
	f, err := os.Open(filepath.Join(dir, "accounts", "callbacks.ndjson"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	in.Callbacks, in.CallbackProblems, err = ReadExport(f, "daraja")
	if err != nil || len(in.CallbackProblems) > 0 {
		t.Fatalf("callbacks: %v %v", err, in.CallbackProblems)
	}
	in.CallbackSource = "accounts/callbacks.ndjson"
	return in
}

// byReceipt is each finding's category and detail by receipt.
func byReceipt(r *Report) map[string]Finding {
	out := map[string]Finding{}
	for _, f := range r.Findings {
		out[f.Receipt] = f
	}
	return out
}

// want checks receipts' categories and that each detail holds its words.
func want(t *testing.T, r *Report, cases map[string][2]string) {
	t.Helper()
	got := byReceipt(r)
	for receipt, w := range cases {
		f, ok := got[receipt]
		if !ok {
			t.Errorf("%s: no finding", receipt)
			continue
		}
		if f.Category != w[0] || !strings.Contains(f.Detail, w[1]) {
			t.Errorf("%s: %s %q, want %s with %q", receipt, f.Category, f.Detail, w[0], w[1])
		}
	}
}

// TestB2BAndAccounts: a B2B payment received expects no b2b.result (the
// payer gets it); a b2b.result is on the Working account's statement, so
// a Utility-only run does not cover it (nor a Pull response a b2c.result);
// a statement with no shortcode covers no account; a B2B result's time is
// read from TransCompletedTime. Golden reports for both runs.
func TestB2BAndAccounts(t *testing.T) {
	const utility = "ORG_600638_Utility_Account_20261201-20261231.csv"
	const working = "ORG_600638_Working_Account_20261201-20261231.csv"
	t.Run("utility only", func(t *testing.T) {
		r := Match(accountsInput(t, utility, "pull-600639.json", "export.csv"))
		var b bytes.Buffer
		if err := r.WriteText(&b); err != nil {
			t.Fatal(err)
		}
		golden(t, "accounts-utility-only.txt", b.Bytes())
		want(t, r, map[string][2]string{
			"TKU0000002": {NoneExpected, "B2B payment received: the paying organisation gets the b2b.result"},
			"TKU0000003": {Matched, "B2B payment received"},
			"TKU0000004": {Matched, "1 charge row(s)"},
			"TKW0000001": {NotCovered, "account not supplied: a b2b.result is on the statement of the Working Account of 600638; the statements given are of Utility Account"},
			"TKW0000002": {NotCovered, "account not supplied"},
			"TKP0000101": {Matched, ""},
			"TKP0000102": {NotCovered, "account not supplied: a b2c.result is on the statement of the Utility Account of 600639; the statements given are of Pull Transactions (C2B only)"},
			"TKN0000001": {Matched, ""},
			"TKN0000009": {NotCovered, "no statement for shortcode 600777 (1 statement(s) name no shortcode and cover no account)"},
		})
		if r.Totals[WithoutStatement].Count != 0 || r.Totals[Missing].Count != 0 || r.Discrepancies() {
			t.Errorf("a Utility-only run reports forgeries or missing callbacks: %+v %v", r.Totals, r.Checks)
		}
	})
	t.Run("utility and working", func(t *testing.T) {
		r := Match(accountsInput(t, utility, working))
		var b bytes.Buffer
		if err := r.WriteText(&b); err != nil {
			t.Fatal(err)
		}
		golden(t, "accounts-both.txt", b.Bytes())
		want(t, r, map[string][2]string{
			"TKW0000001": {Matched, "1 charge row(s)"},
			"TKW0000002": {Mismatch, "time: statement 2026-12-06T15:00:00+03:00, b2b.result 2026-12-06T17:00:00+03:00"},
			"TKU0000002": {NoneExpected, "B2B payment received"},
		})
	})
}

func TestStatementAccount(t *testing.T) {
	for _, tc := range []struct {
		name, data, want string
	}{
		{"ORG_600638_Utility_Account_20261101-20261130.csv", "Receipt No.,Completion Time,Paid In,Withdrawn\n", AccountUtility},
		{"ORG_600638_Working_Account_2026.csv", "Receipt No.,Completion Time,Paid In,Withdrawn\n", AccountWorking},
		{"x.csv", "Account Holder:,Fictional MMF Ltd\nAccount:,MMF Account\nReceipt No.,Completion Time,Paid In,Withdrawn\n", AccountWorking},
		{"x.csv", "Account:,Organization Settlement Account\nReceipt No.,Completion Time,Paid In,Withdrawn\n", AccountSettlement},
		{"ORG_600638_Utility.csv", "Account:,Merchant Account\nReceipt No.,Completion Time,Paid In,Withdrawn\n", AccountMerchant}, // the preamble wins
		{"Statements for 600638 from 2026-11-01 to 2026-11-30.csv", "Receipt No,Completion Time,Paid In (KSHs),Withdrawn (KSHs)\n", ""},
		{"pull.json", `{"Response":[]}`, AccountPull},
	} {
		st, err := Read(tc.name, []byte(tc.data), Options{})
		if err != nil {
			t.Fatal(err)
		}
		if st.Account != tc.want {
			t.Errorf("%s: account %q, want %q", tc.name, st.Account, tc.want)
		}
	}
	st := &Statement{Account: AccountSettlement}
	for _, k := range []daraja.Kind{daraja.C2BConfirmation, daraja.B2CResult, daraja.B2BResult, daraja.ReversalResult, daraja.STKCallback} {
		if st.Covers(k) {
			t.Errorf("a settlement statement covers %s", k)
		}
	}
	if !(&Statement{}).Covers(daraja.B2BResult) {
		t.Error("a statement of unknown account does not cover b2b.result")
	}
}

// cbFrom is a callback as FromMessage reads it.
func cbFrom(t *testing.T, kind daraja.Kind, shortcode, body string) Callback {
	t.Helper()
	c, ok := FromMessage("daraja", "daraja.cb."+string(kind)+"."+shortcode+".tok_aaaaaaaaaaaaaaaa",
		map[string][]string{publish.HeaderKind: {string(kind)}, publish.HeaderShortcode: {shortcode}}, []byte(body))
	if !ok {
		t.Fatalf("%s body does not parse: %s", kind, body)
	}
	return c
}

func c2bBody(receipt, when, amount, shortcode string) string {
	return fmt.Sprintf(`{"TransactionType":"Pay Bill","TransID":%q,"TransTime":%q,"TransAmount":%q,"BusinessShortCode":%q,"MSISDN":"254700000900"}`,
		receipt, when, amount, shortcode)
}

func resultBody(receipt string, params string) string {
	return fmt.Sprintf(`{"Result":{"ResultType":0,"ResultCode":0,"ResultDesc":"ok","OriginatorConversationID":"1-1-1","ConversationID":"AG_1_%s","TransactionID":%q,"ResultParameters":{"ResultParameter":[%s]}}}`,
		receipt, receipt, params)
}

const g2Head = "Short Code:,600638\nAccount:,Utility Account\nTime Period:,From 01-12-2026 00:00:00 To 31-12-2026 23:59:59\n" +
	"Receipt No.,Completion Time,Details,Transaction Status,Paid In,Withdrawn,Reason Type,Other Party Info,Linked Transaction ID\n"

func g2(t *testing.T, rows ...string) *Statement {
	t.Helper()
	st, err := Read("ORG_600638_Utility_Account.csv", []byte(g2Head+strings.Join(rows, "\n")+"\n"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Problems) > 0 {
		t.Fatalf("problems: %v", st.Problems)
	}
	return st
}

// TestMismatchBranches: time, shortcode and kind disagreements are
// mismatches, not unmatched lines; sweeps in and out under one receipt
// expect no callback; a reversal's linked transaction is checked.
func TestMismatchBranches(t *testing.T) {
	st := g2(t,
		"TKM0000001,02-12-2026 10:00:00,Pay Bill from 254700000901 - A B,Completed,100.00,,Pay Bill,254700000901 - A B,",
		"TKM0000002,02-12-2026 11:00:00,Pay Bill from 254700000902 - C D,Completed,200.00,,Pay Bill,254700000902 - C D,",
		"TKM0000003,02-12-2026 12:00:00,Business Payment to 254700000903 - E F,Completed,,-300.00,Business Payment,254700000903 - E F,",
		"TKM0000004,02-12-2026 13:00:00,Deposit of Funds,Completed,400.00,,Deposit,,",
		"TKM0000004,02-12-2026 13:00:00,Withdrawal of Funds,Completed,,-400.00,Withdrawal,,",
		"TKM0000005,02-12-2026 14:00:00,Reversal of TKM9999999,Completed,,-50.00,Reversal,254700000905 - G H,TKM9999999",
		"TKM0000006,02-12-2026 15:00:00,Reversal of TKM0000001,Completed,,-100.00,Reversal,254700000901 - A B,TKM0000001",
		"TKM0000007,02-12-2026 16:00:00,Reversal,Completed,,-70.00,Reversal,254700000907 - I J,",
	)
	rev := func(receipt, original, amount string, hour int) string {
		return resultBody(receipt, fmt.Sprintf(`{"Key":"Amount","Value":%s},{"Key":"TransCompletedTime","Value":202612021%d0001},{"Key":"OriginalTransactionID","Value":%q}`,
			amount, hour, original))
	}
	in := Input{Statements: []*Statement{st}, Callbacks: []Callback{
		cbFrom(t, daraja.C2BConfirmation, "600638", c2bBody("TKM0000001", "20261202123000", "100.00", "600638")), // 2h30 late
		cbFrom(t, daraja.C2BConfirmation, "600999", c2bBody("TKM0000002", "20261202110000", "200.00", "600999")), // another shortcode
		cbFrom(t, daraja.C2BConfirmation, "600638", c2bBody("TKM0000003", "20261202120000", "300.00", "600638")), // a C2B for a B2C line
		cbFrom(t, daraja.ReversalResult, "600638", rev("TKM0000005", "TKM9999999", "50", 4)),
		cbFrom(t, daraja.ReversalResult, "600638", rev("TKM0000006", "TKM0000001", "100", 5)),
		cbFrom(t, daraja.ReversalResult, "600638", rev("TKM0000007", "TKM8888888", "70", 6)),
	}}
	r := Match(in)
	want(t, r, map[string][2]string{
		"TKM0000001": {Mismatch, "time: statement 2026-12-02T10:00:00+03:00, c2b.confirmation 2026-12-02T12:30:00+03:00"},
		"TKM0000002": {Mismatch, "shortcode: statement 600638, c2b.confirmation 600999"},
		"TKM0000003": {Mismatch, "kind: the statement line wants b2c.result, the stream has c2b.confirmation"},
		"TKM0000004": {NoneExpected, "internal transfer"},
		"TKM0000005": {Mismatch, "linked transaction TKM9999999 is on no statement given and no callback"},
		"TKM0000006": {Matched, ""},
		// The line names no linked transaction; the callback's
		// OriginalTransactionID is checked instead.
		"TKM0000007": {Mismatch, "linked transaction TKM8888888 is on no statement given and no callback"},
	})
	if f := byReceipt(r)["TKM0000006"]; f.Detail != "" {
		t.Errorf("reversal of a transaction on the statement: %+v", f)
	}
	// A callback whose OriginalTransactionID is not the line's.
	in.Callbacks[4] = cbFrom(t, daraja.ReversalResult, "600638", rev("TKM0000006", "TKM0000002", "100", 5))
	want(t, Match(in), map[string][2]string{"TKM0000006": {Mismatch, "linked transaction: statement TKM0000001, reversal.result TKM0000002"}})
}

// TestSharedRows: the same statement given twice (its .csv and its .xls)
// counts each row once; one statement's two equal rows stay two.
func TestSharedRows(t *testing.T) {
	one := pairReport(t)
	st := readFile(t, "ORG_600638_Utility_Account_20261101-20261130.xls", Options{})
	data, _ := os.ReadFile(filepath.Join(dir, pairStatement))
	csvSt, err := Read(pairStatement, data, Options{})
	if err != nil {
		t.Fatal(err)
	}
	f, _ := os.Open(filepath.Join(dir, "pair", "callbacks.ndjson"))
	defer f.Close()
	cbs, problems, _ := ReadExport(f, "daraja")
	two := Match(Input{Statements: []*Statement{csvSt, st}, Callbacks: cbs, CallbackProblems: problems, CallbackSource: "pair/callbacks.ndjson"})
	if two.SharedRows != len(st.Lines) {
		t.Errorf("shared rows %d, want %d", two.SharedRows, len(st.Lines))
	}
	for _, c := range []string{Missing, WithoutStatement, Mismatch, NotCovered, NoneExpected, Matched} {
		if one.Totals[c] != two.Totals[c] {
			t.Errorf("%s: one statement %+v, the same twice %+v", c, one.Totals[c], two.Totals[c])
		}
	}
	if f := byReceipt(two)["TKR0000006"]; f.Category != Matched || f.Detail != "1 charge row(s)" {
		t.Errorf("the B2C and its charge, given twice: %+v", f)
	}
	// The broken row is unreadable in each file: two findings, two sources.
	if two.Totals[Unreadable].Count != one.Totals[Unreadable].Count+1 {
		t.Errorf("unreadable %d", two.Totals[Unreadable].Count)
	}
	var b bytes.Buffer
	_ = two.WriteText(&b)
	if !strings.Contains(b.String(), "8 row(s) on more than one statement, counted once") {
		t.Errorf("text report does not say rows were shared:\n%s", b.String())
	}
	// Two equal rows in one statement are two rows.
	dup := g2(t,
		"TKD0000001,02-12-2026 10:00:00,Pay Bill from 254700000901 - A B,Completed,100.00,,Pay Bill,,",
		"TKD0000001,02-12-2026 10:00:00,Pay Bill from 254700000901 - A B,Completed,100.00,,Pay Bill,,",
	)
	r := Match(Input{Statements: []*Statement{dup}})
	if r.SharedRows != 0 {
		t.Errorf("rows of one statement taken as shared: %d", r.SharedRows)
	}
}

// TestRetentionCreated: on a stream that lost nothing yet, a line older
// than the stream's creation is not covered (older than the stream), not
// missing.
func TestRetentionCreated(t *testing.T) {
	st := readFile(t, pairStatement, Options{})
	created := time.Date(2026, 11, 26, 0, 0, 0, 0, EAT)
	r := Match(Input{Statements: []*Statement{st}, StreamStart: created, StreamCreated: true})
	want(t, r, map[string][2]string{
		"TKR0000004": {NotCovered, "older than the stream (created 2026-11-26T00:00:00+03:00)"},
		"TKR0000003": {NotCovered, "older than the stream (created"},
		"TKR0000007": {Missing, "no callback on the stream"},
	})
}

// TestNoPhoneNumberInReasons: a phone number in a cell a reason quotes is
// masked, whatever the layout and the report format.
func TestNoPhoneNumberInReasons(t *testing.T) {
	phones := []string{"254712345678", "0712345678", "0712-345-678", "+254 712 345 678", "254.712.345.678"}
	var rows []string
	for i, p := range phones {
		rows = append(rows,
			fmt.Sprintf("TKQ000000%d,%s,Pay Bill,Completed,100.00,,Pay Bill,,", i, p),              // in the time cell
			fmt.Sprintf("TKQ000010%d,02-12-2026 10:00:00,Pay Bill,Completed,%s,,Pay Bill,,", i, p)) // in the amount cell
	}
	st, err := Read("x.csv", []byte(g2Head+strings.Join(rows, "\n")+"\n"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	pull, err := Read("pull.json", []byte(`{"Response":[[{"transactionId":"TKQ0000201","trxDate":"254712345678","amount":"1"},`+
		`{"transactionId":"TKQ0000202","trxDate":"2026-12-02 10:00:00","amount":"0712-345-678"}]]}`), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(st.Problems) + len(pull.Problems); n != 2*len(phones)+2 {
		t.Fatalf("%d unreadable rows, want %d: %v %v", n, 2*len(phones)+2, st.Problems, pull.Problems)
	}
	// The reasons themselves (Statement.Problems is API), then the reports.
	for _, p := range append(st.Problems, pull.Problems...) {
		if strings.Contains(p.Reason, "345") {
			t.Errorf("row %d: reason %q quotes a phone number", p.Row, p.Reason)
		}
	}
	r := Match(Input{Statements: []*Statement{st, pull}})
	for _, w := range []struct {
		name  string
		write func(io.Writer) error
	}{{"text", r.WriteText}, {"json", r.WriteJSON}, {"csv", r.WriteCSV}} {
		var b bytes.Buffer
		if err := w.write(&b); err != nil {
			t.Fatal(err)
		}
		out := b.String()
		for _, p := range append(phones, "712345678", "712 345 678", "712-345-678", "712.345.678") {
			if strings.Contains(out, p) {
				t.Errorf("%s report holds %q:\n%s", w.name, p, out)
			}
		}
		if !strings.Contains(out, "2547******78") {
			t.Errorf("%s report does not show the masked cell:\n%s", w.name, out)
		}
	}
	// Dates and amounts are not phone numbers: an echoed one stays readable.
	for _, s := range []string{"31-13-2026 99:00:00", "01-11-2026 10:00:00", "1,252,000.00", "TKR0000003", "2026-11-25T08:15:00+03:00"} {
		if MaskText(s) != s {
			t.Errorf("MaskText(%q) = %q", s, MaskText(s))
		}
	}
}

// TestMissingEventShape: reconcile's missing event has the edge's shape
// (kinds, shortcode; token fields absent) plus receipt, amount, time and
// source, the Msg-Id reconcile:<receipt>, and the header that tells it
// from the edge's.
func TestMissingEventShape(t *testing.T) {
	r := pairReport(t)
	fs := r.MissingFindings()
	if len(fs) != 1 {
		t.Fatalf("%d missing findings", len(fs))
	}
	m := MissingMsg("daraja", fs[0])
	if m.Subject != "daraja.missing.c2b.confirmation.600638" || m.Header.Get("Nats-Msg-Id") != "reconcile:TKR0000004" ||
		m.Header.Get(HeaderMissingSource) != MissingSourceReconcile || m.Header.Get(publish.HeaderKind) != "c2b.confirmation" ||
		m.Header.Get(publish.HeaderShortcode) != "600638" || m.Header.Get(publish.HeaderReceipt) != "TKR0000004" {
		t.Errorf("subject %s, headers %v", m.Subject, m.Header)
	}
	var got map[string]any
	if err := json.Unmarshal(m.Data, &got); err != nil {
		t.Fatal(err)
	}
	wantBody := map[string]any{"kinds": []any{"c2b.confirmation", "stk.callback"}, "shortcode": "600638", "receipt": "TKR0000004",
		"amount": "1200.00", "time": "2026-11-25T08:15:00+03:00", "source": "reconcile",
		"statement": "pair/ORG_600638_Utility_Account_20261101-20261130.csv:20"}
	if g, w := fmt.Sprint(got), fmt.Sprint(wantBody); g != w {
		t.Errorf("body %s, want %s", g, w)
	}
	if strings.Contains(string(m.Data), "2547") {
		t.Errorf("event holds a phone number: %s", m.Data)
	}
	// What the edge's consumers read of a missing event (publish's
	// missingEvent): kinds and shortcode are there, with the same names.
	var edge struct {
		TokenID   string   `json:"token_id"`
		Kinds     []string `json:"kinds"`
		Shortcode string   `json:"shortcode"`
	}
	if err := json.Unmarshal(m.Data, &edge); err != nil || len(edge.Kinds) != 2 || edge.Shortcode != "600638" || edge.TokenID != "" {
		t.Errorf("as an edge event: %+v %v", edge, err)
	}
}
