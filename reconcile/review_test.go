package reconcile

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xuri/excelize/v2"

	"github.com/daraja-edge/daraja-edge/daraja"
)

// TestReversalResultCode21: Safaricom's documented reversal success is
// ResultCode 21 "The service request is processed successfully"; such a
// result is a successful callback (its receipt matches the statement line,
// no missing callback is reported). 21 with another description, or on
// another kind, is not.
func TestReversalResultCode21(t *testing.T) {
	body, err := os.ReadFile("../testdata/callbacks/reversal.result__success.json")
	if err != nil {
		t.Fatal(err)
	}
	c := cbFrom(t, daraja.ReversalResult, "600638", string(body))
	if !c.Success || c.Receipt != "TSTREV0001" || c.Linked != "TSTREVORIG" {
		t.Fatalf("documented reversal success: %+v", c)
	}
	for _, tc := range []struct {
		kind daraja.Kind
		code any
		desc string
		ok   bool
	}{
		{daraja.ReversalResult, 0, "ok", true},
		{daraja.ReversalResult, "0", "ok", true},
		{daraja.ReversalResult, 21, "The service request is processed successfully.", true},
		{daraja.ReversalResult, "21", "the service request is processed successfully", true},
		{daraja.ReversalResult, 21, "The service request failed", false},
		{daraja.ReversalResult, 21, "", false},
		{daraja.ReversalResult, 1, "The service request is processed successfully", false},
		{daraja.B2CResult, 21, "The service request is processed successfully", false},
	} {
		code := fmt.Sprint(tc.code)
		if s, ok := tc.code.(string); ok {
			code = fmt.Sprintf("%q", s)
		}
		b := fmt.Sprintf(`{"Result":{"ResultType":0,"ResultCode":%s,"ResultDesc":%q,"OriginatorConversationID":"1-1-1","ConversationID":"AG_1_X","TransactionID":"TKV0000001",`+
			`"ResultParameters":{"ResultParameter":[{"Key":"Amount","Value":100}]}}}`, code, tc.desc)
		if got := cbFrom(t, tc.kind, "600638", b); got.Success != tc.ok {
			t.Errorf("%s ResultCode %v %q: success %v, want %v", tc.kind, tc.code, tc.desc, got.Success, tc.ok)
		}
	}
	st := g2(t,
		"TSTREVORIG,15-03-2026 10:00:00,Pay Bill from 254700000201 - John Doe Acc. 1,Completed,100.00,,Pay Bill,254700000201 - John Doe,",
		"TSTREV0001,15-03-2026 10:50:12,Reversal of TSTREVORIG,Completed,,-100.00,Reversal,254700000201 - John Doe,TSTREVORIG",
	)
	orig := cbFrom(t, daraja.C2BConfirmation, "600638", c2bBody("TSTREVORIG", "20260315100000", "100.00", "600638"))
	r := Match(Input{Statements: []*Statement{st}, Callbacks: []Callback{orig, c}})
	want(t, r, map[string][2]string{"TSTREV0001": {Matched, ""}})
	if fs := r.MissingFindings(); len(fs) != 0 {
		t.Errorf("missing findings (would be published): %+v", fs)
	}
}

// fileLine is line n (1-based) of a file.
func fileLine(t *testing.T, data []byte, n int) string {
	t.Helper()
	sc := bufio.NewScanner(bytes.NewReader(data))
	for i := 1; sc.Scan(); i++ {
		if i == n {
			return strings.TrimPrefix(sc.Text(), "\ufeff")
		}
	}
	t.Fatalf("no line %d", n)
	return ""
}

// TestCSVRowIsFileLine: a CSV row is named by the line of the file it
// starts on, blank lines and quoted newlines counted.
func TestCSVRowIsFileLine(t *testing.T) {
	for _, name := range []string{pairStatement, "accounts/ORG_600638_Utility_Account_20261201-20261231.csv",
		"Statements for 600638 from 2026-11-01 to 2026-11-30.csv", "ledger-600638.csv"} {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		o := Options{}
		if strings.HasPrefix(name, "ledger") {
			o.Columns = columns
		}
		st, err := Read(name, data, o)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range st.Lines {
			if got := fileLine(t, data, l.Row); !strings.HasPrefix(got, l.Receipt+",") {
				t.Errorf("%s: %s named row %d, which is %q", name, l.Receipt, l.Row, got)
			}
		}
		for _, p := range st.Problems {
			if got := fileLine(t, data, p.Row); !strings.HasPrefix(got, "TK") {
				t.Errorf("%s: unreadable row %d is %q", name, p.Row, got)
			}
		}
	}
	if st := readFile(t, pairStatement, Options{}); len(st.Problems) != 1 || st.Problems[0].Row != 22 {
		t.Errorf("pair problems %+v, want line 22", st.Problems)
	}
	data := "Receipt No,Completion Time,Paid In,Withdrawn\r\n\r\nTKX1,01/11/2026 10:00:00,1.00,\r\n\r\n\r\nTKX2,01/11/2026 11:00:00,2.00,\r\n"
	st, err := Read("x.csv", []byte(data), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Lines) != 2 || st.Lines[0].Row != 3 || st.Lines[1].Row != 6 {
		t.Errorf("rows %+v", st.Lines)
	}
}

// TestNoAmountIsUnreadable: a row with neither Paid In nor Withdrawn, or
// cut short, is unreadable with a reason naming the column, not "no
// callback expected" (a customer payment without an amount must not pass
// silently).
func TestNoAmountIsUnreadable(t *testing.T) {
	for _, tc := range []struct {
		name, row, reason string
	}{
		{"no amount", "TKA0000001,02-12-2026 10:00:00,Pay Bill from 254700000901 - A B Acc. 1,Completed,,,Pay Bill,254700000901 - A B,", "Paid In"},
		{"cut short", "TKA0000001,02-12-2026 10:00:00,Pay Bill from 254700000901 - A B Acc. 1", "Transaction Status"},
		{"cut short before the amounts", "TKA0000001,02-12-2026 10:00:00", "Details"},
		{"cut short after the amounts", "TKA0000001,02-12-2026 10:00:00,Pay Bill,Completed,100.00,,Pay Bill", "Other Party Info"},
		{"more cells than the header", "TKA0000001,02-12-2026 10:00:00,Pay Bill from x, y Acc. 1,Completed,100.00,,Pay Bill,254700000901 - A B,TKZ0000001", "unquoted comma"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := Read("ORG_600638_Utility_Account.csv", []byte(g2Head+tc.row+"\n"), Options{})
			if err != nil {
				t.Fatal(err)
			}
			if len(st.Lines) != 0 || len(st.Problems) != 1 || st.Problems[0].Row != 5 || !strings.Contains(st.Problems[0].Reason, tc.reason) {
				t.Fatalf("lines %+v, problems %+v; want one unreadable row 5 naming %q", st.Lines, st.Problems, tc.reason)
			}
			r := Match(Input{Statements: []*Statement{st}})
			if r.Totals[Unreadable].Count != 1 || r.Totals[NoneExpected].Count != 0 || !r.Discrepancies() {
				t.Errorf("totals %+v", r.Totals)
			}
		})
	}
	// The newer export with both amount cells empty.
	st, err := Read("Statements for 600638 from 2026-11-01 to 2026-11-30.csv", []byte("Receipt No,Completion Time,Details,Transaction Status,Paid In (KSHs),Withdrawn (KSHs),Balance (KSHs)\r\n"+
		"TKZ0000002,20/11/2026 11:05:09,Business Payment to 254700000202 - Juma Ali,Completed,,,\"1,262,500.00\"\r\n"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Lines) != 0 || len(st.Problems) != 1 || !strings.Contains(st.Problems[0].Reason, "Paid In (KSHs)") {
		t.Errorf("lines %+v, problems %+v", st.Lines, st.Problems)
	}
	// A Pull Transactions entry without an amount.
	pull, err := Read("pull.json", []byte(`{"Response":[{"transactionId":"TKP1","trxDate":"2026-11-10 09:00:00","amount":""}]}`), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(pull.Lines) != 0 || len(pull.Problems) != 1 || !strings.Contains(pull.Problems[0].Reason, "amount") {
		t.Errorf("pull: lines %+v, problems %+v", pull.Lines, pull.Problems)
	}
	// Sheets drop empty cells at a row's end: a row of a sheet whose last
	// cells are empty is not cut short.
	x := excelize.NewFile()
	defer x.Close()
	for i, r := range [][]any{
		{"Receipt No.", "Completion Time", "Details", "Paid In", "Withdrawn", "Other Party Info", "Linked Transaction ID"},
		{"TKA0000001", "02-12-2026 10:00:00", "Pay Bill", 100.0},
	} {
		cell, _ := excelize.CoordinatesToCellName(1, i+1)
		if err := x.SetSheetRow("Sheet1", cell, &r); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	if err := x.Write(&buf); err != nil {
		t.Fatal(err)
	}
	sh, err := Read("x.xlsx", buf.Bytes(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(sh.Lines) != 1 || len(sh.Problems) != 0 || sh.Lines[0].In != 10000 {
		t.Errorf("xlsx: lines %+v, problems %+v", sh.Lines, sh.Problems)
	}
}

// TestUnterminatedQuote: a quote that does not close does not swallow the
// lines after it: its line is unreadable, named, and every other line is
// read.
func TestUnterminatedQuote(t *testing.T) {
	rows := []string{
		"TKA0000001,02-12-2026 10:00:00,Pay Bill from 254700000901 - A B Acc. 1,Completed,100.00,,Pay Bill,254700000901 - A B,",
		`TKQ0000001,02-12-2026 10:30:00,"Pay Bill from x,Completed,100.00,,,,`,
		"TKA0000002,02-12-2026 11:00:00,Pay Bill from 254700000902 - C D Acc. 2,Completed,\"1,200.00\",,Pay Bill,254700000902 - C D,",
		"TKA0000003,02-12-2026 12:00:00,Pay Bill from 254700000903 - E F Acc. 3,Completed,300.00,,Pay Bill,254700000903 - E F,",
		`TKQ0000002,02-12-2026 12:30:00,Pay "Bill" from y,Completed,5.00,,Pay Bill,,`,
		"TKA0000004,02-12-2026 13:00:00,\"Pay Bill Online from 254700000904 - G H\nvia M-PESA app\",Completed,400.00,,Pay Bill,254700000904 - G H,",
		"TKA0000005,02-12-2026 14:00:00,Pay Bill from 254700000905 - I J Acc. 5,Completed,\"500.00\",,Pay Bill,254700000905 - I J,",
	}
	data := []byte(g2Head + strings.Join(rows, "\n") + "\n")
	st, err := Read("ORG_600638_Utility_Account.csv", data, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range st.Lines {
		got = append(got, fmt.Sprintf("%s:%d", l.Receipt, l.Row))
	}
	if w := "TKA0000001:5 TKA0000002:7 TKA0000003:8 TKA0000004:10 TKA0000005:12"; strings.Join(got, " ") != w {
		t.Errorf("lines %v, want %s", got, w)
	}
	if len(st.Problems) != 2 || st.Problems[0].Row != 6 || st.Problems[1].Row != 9 ||
		!strings.Contains(st.Problems[0].Reason, "quote") || !strings.Contains(st.Problems[1].Reason, "quote") {
		t.Errorf("problems %+v, want lines 6 and 9, each about a quote", st.Problems)
	}
	if st.SumIn != 250000 {
		t.Errorf("paid in %s", st.SumIn)
	}
}

// TestNamesReduced: every party and every detail quoting a statement's
// Details reaches a report with its phone number masked and a person's
// name reduced to initials, whatever the shape; a business's shortcode and
// name stay.
func TestNamesReduced(t *testing.T) {
	for in, want := range map[string]string{
		"254708374149 - John Doe":         "2547******49 - J. D.",
		"2547******49 - Jane Doe":         "2547******49 - J. D.",
		"07******49 - Jane Doe":           "07******49 - J. D.",
		"254722***123 - John Doe":         "2547******23 - J. D.",
		"2547xxxxxx49 - Jane Doe":         "2547******49 - J. D.",
		"254 712 345 678 - Jane Doe":      "2547******78 - J. D.",
		"+254712345678 - Jane Doe":        "+254*******78 - J. D.",
		"0712345678 Jane Doe":             "07******78 J. D.",
		"2547******33 Grace Achieng":      "2547******33 G. A.",
		"254733333333 Grace Achieng":      "2547******33 G. A.",
		"254700000105 - Wanjirũ Müller":   "2547******05 - W. M.",
		"Grace Achieng":                   "G. A.",
		"254712345678":                    "2547******78",
		"600000 - Fictional Bank":         "600000 - Fictional Bank",
		"600100 - Fictional Supplies Ltd": "600100 - Fictional Supplies Ltd",
	} {
		if got := MaskParty(in); got != want {
			t.Errorf("MaskParty(%q) = %q, want %q", in, got, want)
		}
	}
	for in, want := range map[string]string{
		"Pay Bill from 254700000201 - Juma Ali Acc. 1":                               "Pay Bill from 2547******01 - J. A. Acc. 1",
		"Business Payment to 2547******02 - Juma Ali":                                "Business Payment to 2547******02 - J. A.",
		"Customer Withdrawal At Agent Till 123456 - 254733333333 Grace Achieng":      "Customer Withdrawal At Agent Till 123456 - 2547******33 G. A.",
		"Pay Bill Online from 254700000105 - Wanjiru Mwangi\nvia M-PESA app":         "Pay Bill Online from 2547******05 - W. M.\nvia M-PESA app",
		"Business Pay Bill from 600100 - Fictional Supplies Ltd via API. Acc. INV-9": "Business Pay Bill from 600100 - Fictional Supplies Ltd via API. Acc. INV-9",
		"Organization Settlement Account to Bank":                                    "Organization Settlement Account to Bank",
	} {
		if got := MaskDetails(in); got != want {
			t.Errorf("MaskDetails(%q) = %q, want %q", in, got, want)
		}
	}
	st := g2(t,
		"TKN0000001,02-12-2026 10:00:00,Customer Withdrawal At Agent Till 123456 - 254733333333 Grace Achieng,Completed,,-200.00,Withdrawal,254733333333 Grace Achieng,",
		"TKN0000002,02-12-2026 11:00:00,Pay Bill from 2547******49 - Jane Doe Acc. 1,Completed,300.00,,Pay Bill,2547******49 - Jane Doe,",
		"TKN0000003,02-12-2026 12:00:00,Pay Bill from 07******48 - Mary Wambui Acc. 1,Completed,300.00,,Pay Bill,07******48 - Mary Wambui,",
		"TKN0000004,02-12-2026 13:00:00,Transfer to 254700000111 - Juma Ali Kazi,Completed,,-50.00,Funds Transfer,,",
		"TKN0000005,02-12-2026 14:00:00,Pay Bill from 254700000112 - Halima Abdi,Cancelled,50.00,,Pay Bill,254700000112 - Halima Abdi,",
	)
	r := Match(Input{Statements: []*Statement{st}})
	for _, w := range []struct {
		name  string
		write func(io.Writer) error
	}{{"text", r.WriteText}, {"json", r.WriteJSON}, {"csv", r.WriteCSV}} {
		var b bytes.Buffer
		if err := w.write(&b); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"Grace", "Achieng", "Jane", "Doe", "Mary", "Wambui", "Juma", "Kazi", "Halima", "Abdi"} {
			if strings.Contains(b.String(), name) {
				t.Errorf("%s report holds %q:\n%s", w.name, name, b.String())
			}
		}
	}
}

// xlsxWithDates writes the G2 rows as Excel does after a CSV is opened and
// saved: times as date cells (number format 22), amounts as numbers.
func xlsxWithDates(t *testing.T, badTime bool) []byte {
	t.Helper()
	src, err := excelize.OpenReader(bytes.NewReader(g2XLSX(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	rows, err := src.GetRows("Sheet1")
	if err != nil {
		t.Fatal(err)
	}
	f := excelize.NewFile()
	defer f.Close()
	header := -1
	for i, r := range rows {
		if len(r) > 0 && r[0] == "Receipt No." {
			header = i
		}
		for j, c := range r {
			cell, _ := excelize.CoordinatesToCellName(j+1, i+1)
			var v any = c
			if header >= 0 && i > header && (j == 1 || j == 2) {
				if tm, err := time.ParseInLocation("02-01-2006 15:04:05", c, time.UTC); err == nil {
					v = tm // excelize writes a serial with number format 22
				}
			}
			if header >= 0 && i > header && j >= 5 && j <= 7 && c != "" {
				if a, err := ParseAmount(c); err == nil {
					v = float64(a) / 100
				}
			}
			if err := f.SetCellValue("Sheet1", cell, v); err != nil {
				t.Fatal(err)
			}
		}
	}
	if badTime {
		cell, _ := excelize.CoordinatesToCellName(2, header+2)
		if err := f.SetCellValue("Sheet1", cell, "not a time"); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	if err := f.Write(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestXLSXDateCells: an .xlsx whose time column holds Excel date cells
// reads as the .csv does; an unreadable time names its column.
func TestXLSXDateCells(t *testing.T) {
	st, err := Read("x.xlsx", xlsxWithDates(t, false), Options{})
	if err != nil {
		t.Fatal(err)
	}
	csvSt := readFile(t, pairStatement, Options{})
	if len(st.Problems) != len(csvSt.Problems) {
		t.Errorf("problems %+v, the csv has %+v", st.Problems, csvSt.Problems)
	}
	if got, want := withoutRows(st), withoutRows(csvSt); !bytes.Equal(got, want) {
		t.Errorf("xlsx with date cells differs from csv:\n%s\nwant\n%s", got, want)
	}
	st, err = Read("x.xlsx", xlsxWithDates(t, true), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Problems) == 0 || !strings.HasPrefix(st.Problems[0].Reason, "Completion Time") {
		t.Errorf("problems %+v, want the first naming Completion Time", st.Problems)
	}
	// The forms excelize formats a date cell as (number format 22).
	for s, want := range map[string]string{
		"11/28/26 09:15":     "2026-11-28T09:15:00+03:00",
		"11/28/26 9:15":      "2026-11-28T09:15:00+03:00",
		"1/2/26 09:15:30":    "2026-01-02T09:15:30+03:00",
		"46353.385416666664": "2026-11-27T09:15:00+03:00",
	} {
		got, err := ParseTime(s, EAT)
		if err != nil || rfc(got) != want {
			t.Errorf("ParseTime(%q) = %v, %v; want %s", s, rfc(got), err, want)
		}
	}
}

// TestUncoveredKindOnce: two C2B confirmations of one receipt with no
// statement line are one finding of kind c2b.confirmation, the count said.
func TestUncoveredKindOnce(t *testing.T) {
	st := g2(t, "TKA0000001,02-12-2026 10:00:00,Pay Bill from 254700000901 - A B Acc. 1,Completed,100.00,,Pay Bill,254700000901 - A B,")
	c := cbFrom(t, daraja.C2BConfirmation, "600638", c2bBody("TKX0000001", "20261203100000", "50.00", "600638"))
	stk := cbFrom(t, daraja.STKCallback, "600638", `{"Body":{"stkCallback":{"MerchantRequestID":"1","CheckoutRequestID":"ws_CO_1","ResultCode":0,"ResultDesc":"ok",`+
		`"CallbackMetadata":{"Item":[{"Name":"Amount","Value":60},{"Name":"MpesaReceiptNumber","Value":"TKX0000002"},{"Name":"TransactionDate","Value":20261203110000}]}}}}`)
	c2 := cbFrom(t, daraja.C2BConfirmation, "600638", c2bBody("TKX0000002", "20261203110000", "60.00", "600638"))
	r := Match(Input{Statements: []*Statement{st}, Callbacks: []Callback{c, c, stk, c2, c2}})
	got := byReceipt(r)
	if f := got["TKX0000001"]; f.Kind != "c2b.confirmation" || !strings.Contains(f.Detail, "c2b.confirmation delivered 2 times") {
		t.Errorf("TKX0000001: %+v", f)
	}
	if f := got["TKX0000002"]; f.Kind != "stk.callback+c2b.confirmation" && f.Kind != "c2b.confirmation+stk.callback" || !strings.Contains(f.Detail, "c2b.confirmation delivered 2 times") {
		t.Errorf("TKX0000002: %+v", f)
	}
	if n := r.Totals[WithoutStatement].Count; n != 2 {
		t.Errorf("%d findings without statement line, want 2", n)
	}
}

// TestReversalAmount: a reversal is of the whole transaction; one whose
// amount is not its original's is a mismatch that says so.
func TestReversalAmount(t *testing.T) {
	st := g2(t,
		"TKO0000001,02-12-2026 10:00:00,Pay Bill from 254700000901 - A B Acc. 1,Completed,300.00,,Pay Bill,254700000901 - A B,",
		"TKO0000002,02-12-2026 10:30:00,Pay Bill from 254700000902 - C D Acc. 2,Completed,400.00,,Pay Bill,254700000902 - C D,",
		"TKV0000001,02-12-2026 11:00:00,Reversal of TKO0000001,Completed,,-150.00,Reversal,254700000901 - A B,TKO0000001",
		"TKV0000002,02-12-2026 12:00:00,Reversal of TKO0000002,Completed,,-400.00,Reversal,254700000902 - C D,TKO0000002",
	)
	rev := func(receipt, original, amount, when string) Callback {
		return cbFrom(t, daraja.ReversalResult, "600638", resultBody(receipt, fmt.Sprintf(`{"Key":"Amount","Value":%s},{"Key":"TransCompletedTime","Value":%s},{"Key":"OriginalTransactionID","Value":%q}`, amount, when, original)))
	}
	// The original of TKV0000003 is on the stream only.
	orig3 := cbFrom(t, daraja.C2BConfirmation, "600638", c2bBody("TKO0000003", "20261201100000", "80.00", "600638"))
	st2 := g2(t, "TKV0000003,02-12-2026 13:00:00,Reversal,Completed,,-70.00,Reversal,,TKO0000003")
	r := Match(Input{Statements: []*Statement{st, st2}, Callbacks: []Callback{
		rev("TKV0000001", "TKO0000001", "150", "20261202110000"),
		rev("TKV0000002", "TKO0000002", "400", "20261202120000"),
		rev("TKV0000003", "TKO0000003", "70", "20261202130000"),
		orig3,
	}})
	want(t, r, map[string][2]string{
		"TKV0000001": {Mismatch, "amount: reversal 150.00, original TKO0000001 300.00"},
		"TKV0000002": {Matched, ""},
		"TKV0000003": {Mismatch, "amount: reversal 70.00, original TKO0000003 80.00"},
	})
}
