package reconcile

import (
	"bytes"
	"encoding/json"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xuri/excelize/v2"
)

var update = flag.Bool("update", false, "rewrite the golden files")

const dir = "testdata/statements"

const pairStatement = "pair/ORG_600638_Utility_Account_20261101-20261130.csv"

// dump is a statement as its golden file holds it.
func dump(st *Statement) []byte {
	type line struct {
		Row                                                            int
		Receipt, Time, Details, Status, In, Out, Party, Reason, Linked string
	}
	out := struct {
		Layout, Shortcode, Account, From string
		To                               string
		TotalIn, TotalOut, SumIn, SumOut string
		Checks                           []string
		Lines                            []line
		Problems                         []Problem
	}{Layout: st.Layout, Shortcode: st.Shortcode, Account: st.Account, From: rfc(st.From), To: rfc(st.To), SumIn: st.SumIn.String(), SumOut: st.SumOut.String(), Checks: st.Checks(), Problems: st.Problems}
	if st.TotalIn != nil {
		out.TotalIn = st.TotalIn.String()
	}
	if st.TotalOut != nil {
		out.TotalOut = st.TotalOut.String()
	}
	for _, l := range st.Lines {
		out.Lines = append(out.Lines, line{l.Row, l.Receipt, rfc(l.Time), MaskDetails(l.Details), l.Status, l.In.String(), l.Out.String(), l.Party, l.ReasonType, l.Linked})
	}
	b, _ := json.MarshalIndent(out, "", " ")
	return append(b, '\n')
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join(dir, "golden", name)
	if *update {
		_ = os.MkdirAll(filepath.Dir(path), 0o755)
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to write it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file:\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

func readFile(t *testing.T, name string, o Options) *Statement {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	st, err := Read(name, data, o)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// g2XLSX writes the G2 rows of g2-rows.json as an .xlsx, as the portal's
// Excel export holds them (amounts as numbers).
func g2XLSX(t testing.TB) []byte {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, "g2-rows.json"))
	if err != nil {
		t.Fatal(err)
	}
	var g struct {
		Preamble [][]string
		Header   []string
		Rows     [][]string
	}
	if err := json.Unmarshal(raw, &g); err != nil {
		t.Fatal(err)
	}
	f := excelize.NewFile()
	defer f.Close()
	all := append(append(g.Preamble, g.Header), g.Rows...)
	for i, r := range all {
		cells := make([]any, len(r))
		for j, c := range r {
			cells[j] = c
			if i > len(g.Preamble) && j >= 5 && j <= 7 && c != "" {
				if a, err := ParseAmount(c); err == nil {
					cells[j] = float64(a) / 100
				}
			}
		}
		cell, _ := excelize.CoordinatesToCellName(1, i+1)
		if err := f.SetSheetRow("Sheet1", cell, &cells); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	if err := f.Write(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

var columns = map[string]string{"receipt": "Ref", "time": "When", "in": "Credit KES", "out": "Debit KES", "details": "Narrative"}

// TestLayouts reads one statement of each layout against its golden file.
func TestLayouts(t *testing.T) {
	for _, tc := range []struct {
		file, golden, layout string
		o                    Options
	}{
		{pairStatement, "g2-csv.json", LayoutG2, Options{}},
		{"ORG_600638_Utility_Account_20261101-20261130.xls", "g2-xls.json", LayoutG2, Options{}},
		{"Statements for 600638 from 2026-11-01 to 2026-11-30.csv", "statements-for.json", LayoutStatements, Options{}},
		{"pull-600638-202611.json", "pull.json", LayoutPull, Options{}},
		{"ledger-600638.csv", "columns.json", LayoutColumns, Options{Columns: columns}},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			st := readFile(t, tc.file, tc.o)
			if st.Layout != tc.layout {
				t.Errorf("layout %q, want %q", st.Layout, tc.layout)
			}
			golden(t, tc.golden, dump(st))
		})
	}
	t.Run("g2-xlsx", func(t *testing.T) {
		st, err := Read("ORG_600638.xlsx", g2XLSX(t), Options{})
		if err != nil {
			t.Fatal(err)
		}
		golden(t, "g2-xlsx.json", dump(st))
	})
}

// TestThreeG2FormatsAgree: the .csv, .xls and .xlsx of one statement give
// the same rows.
func TestThreeG2FormatsAgree(t *testing.T) {
	csvSt := readFile(t, pairStatement, Options{})
	xlsSt := readFile(t, "ORG_600638_Utility_Account_20261101-20261130.xls", Options{})
	xlsxSt, err := Read("x.xlsx", g2XLSX(t), Options{})
	if err != nil {
		t.Fatal(err)
	}
	// Row numbers differ: a CSV row is named by the line it starts on, and
	// a quoted newline makes a line of the file that is no row of a sheet.
	want := withoutRows(csvSt)
	for name, st := range map[string]*Statement{"xls": xlsSt, "xlsx": xlsxSt} {
		if got := withoutRows(st); !bytes.Equal(got, want) {
			t.Errorf("%s differs from csv:\n%s\nwant\n%s", name, got, want)
		}
	}
}

func TestReadEdges(t *testing.T) {
	g2 := "Short Code:,600638\nTotal Paid In:,100.00\nTotal Withdrawn:,0\nReceipt No.,Completion Time,Initiation Time,Details,Transaction Status,Paid In,Withdrawn,Balance\n"
	for _, tc := range []struct {
		name, data string
		o          Options
		wantErr    bool
		check      func(t *testing.T, st *Statement)
	}{
		{name: "columns mapped by name, not position", data: "Short Code:,600638\nReceipt No.,Withdrawn,Paid In,Completion Time,Details\nTKX1,,5.00,01-11-2026 10:00:00,Pay Bill\n",
			check: func(t *testing.T, st *Statement) {
				if st.Lines[0].In != 500 || st.Lines[0].Time.Hour() != 10 {
					t.Errorf("%+v", st.Lines[0])
				}
			}},
		{name: "preamble total checked", data: g2 + "TKX1,01-11-2026 10:00:00,,Pay Bill,Completed,90.00,,\n",
			check: func(t *testing.T, st *Statement) {
				if len(st.Checks()) != 1 {
					t.Errorf("checks %v", st.Checks())
				}
			}},
		{name: "preamble total agrees", data: g2 + "TKX1,01-11-2026 10:00:00,,Pay Bill,Completed,\"100.00\",,\n",
			check: func(t *testing.T, st *Statement) {
				if len(st.Checks()) != 0 {
					t.Errorf("checks %v", st.Checks())
				}
			}},
		{name: "windows-1252", data: "Receipt No,Completion Time,Details,Paid In (KSHs),Withdrawn (KSHs)\r\nTKX1,01/11/2026 10:00:00,Caf\xe9 \x80,\"1,000.00\",\r\n",
			check: func(t *testing.T, st *Statement) {
				if st.Lines[0].Details != "Café €" || st.Lines[0].In != 100000 {
					t.Errorf("%+v", st.Lines[0])
				}
			}},
		{name: "tz", data: "Receipt No,Completion Time,Paid In (KSHs),Withdrawn (KSHs)\nTKX1,01/11/2026 10:00:00,1,\n", o: Options{Location: mustLoc(t, "UTC")},
			check: func(t *testing.T, st *Statement) {
				if st.Lines[0].Time.UTC().Hour() != 10 {
					t.Errorf("%v", st.Lines[0].Time)
				}
			}},
		{name: "EAT by default", data: "Receipt No,Completion Time,Paid In (KSHs),Withdrawn (KSHs)\nTKX1,01/11/2026 10:00:00,1,\n",
			check: func(t *testing.T, st *Statement) {
				if st.Lines[0].Time.UTC().Hour() != 7 {
					t.Errorf("%v", st.Lines[0].Time)
				}
			}},
		{name: "no header", data: "a,b,c\n1,2,3\n", wantErr: true},
		{name: "columns missing", data: "a,b\n", o: Options{Columns: columns}, wantErr: true},
		{name: "header without paid in", data: "Receipt No.,Completion Time\n", wantErr: true},
		{name: "bad json", data: "{\"Response\":", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := Read("x.csv", []byte(tc.data), tc.o)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err %v", err)
			}
			if tc.check != nil {
				if len(st.Lines) == 0 {
					t.Fatalf("no lines: %+v", st)
				}
				tc.check(t, st)
			}
		})
	}
}

func mustLoc(t *testing.T, name string) *time.Location {
	t.Helper()
	l, err := time.LoadLocation(name)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func pairReport(t testing.TB) *Report {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, pairStatement))
	if err != nil {
		t.Fatal(err)
	}
	st, err := Read(pairStatement, data, Options{})
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(dir, "pair", "callbacks.ndjson"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cbs, problems, err := ReadExport(f, "daraja")
	if err != nil {
		t.Fatal(err)
	}
	return Match(Input{Statements: []*Statement{st}, Callbacks: cbs, CallbackProblems: problems, CallbackSource: "pair/callbacks.ndjson"})
}

// TestPairReport reconciles the test pair: its report in each format
// equals the golden file, and each category holds what the pair was made
// to hold.
func TestPairReport(t *testing.T) {
	r := pairReport(t)
	for _, f := range []struct {
		name  string
		write func(io.Writer) error
	}{{"report.txt", r.WriteText}, {"report.json", r.WriteJSON}, {"report.csv", r.WriteCSV}} {
		var b bytes.Buffer
		if err := f.write(&b); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(b.String(), "25470000010") {
			t.Errorf("%s holds a full phone number", f.name)
		}
		golden(t, "pair-"+f.name, b.Bytes())
	}
	want := map[string][]string{
		Matched:          {"TKR0000003", "TKR0000005", "TKR0000006"},
		Missing:          {"TKR0000004"},
		WithoutStatement: {"TKR0000099"},
		// TKR0000008 reverses 150.00 of TKR0000003's 300.00.
		Mismatch:     {"TKR0000007", "TKR0000008"},
		NotCovered:   {"TKR0000098", "TKR0000097"},
		NoneExpected: {"TKR0000009"},
		Unreadable:   {"", ""},
	}
	for cat, receipts := range want {
		var got []string
		for _, f := range r.Findings {
			if f.Category == cat {
				got = append(got, f.Receipt)
			}
		}
		if strings.Join(got, ",") != strings.Join(receipts, ",") {
			t.Errorf("%s: %v, want %v", cat, got, receipts)
		}
	}
	if !r.Discrepancies() || len(r.Checks) != 0 {
		t.Errorf("discrepancies %v, checks %v", r.Discrepancies(), r.Checks)
	}
	for _, f := range r.Findings {
		if f.Receipt == "TKR0000005" && !strings.Contains(f.Detail, "counted once") {
			t.Errorf("STK and C2B of one payment: %+v", f)
		}
		if f.Receipt == "TKR0000006" && !strings.Contains(f.Detail, "1 charge") {
			t.Errorf("B2C with its charge: %+v", f)
		}
	}
}

// TestStreamRetention: a line older than the stream's first kept message
// is not covered, not missing.
func TestStreamRetention(t *testing.T) {
	st := readFile(t, pairStatement, Options{})
	r := Match(Input{Statements: []*Statement{st}, StreamStart: time.Date(2026, 11, 26, 0, 0, 0, 0, EAT)})
	for _, f := range r.Findings {
		if f.Receipt == "TKR0000004" && f.Category != NotCovered {
			t.Errorf("old line: %+v", f)
		}
		if f.Receipt == "TKR0000007" && f.Category != Missing {
			t.Errorf("recent line: %+v", f)
		}
	}
}

func seeds(f *testing.F, names ...string) {
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

func fuzzRead(f *testing.F, name string, o Options) {
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := Read(name, data, o)
		if err != nil {
			return
		}
		if len(st.Lines)+len(st.Problems) > len(data)+1 {
			t.Fatalf("%d rows from %d bytes", len(st.Lines)+len(st.Problems), len(data))
		}
		r := Match(Input{Statements: []*Statement{st}})
		_ = r.WriteText(io.Discard)
		_ = r.WriteCSV(io.Discard)
		_ = r.WriteJSON(io.Discard)
	})
}

func FuzzReadG2CSV(f *testing.F) {
	seeds(f, pairStatement)
	fuzzRead(f, "x.csv", Options{})
}

func FuzzReadStatementsFor(f *testing.F) {
	seeds(f, "Statements for 600638 from 2026-11-01 to 2026-11-30.csv")
	fuzzRead(f, "Statements for 600638 from 2026-11-01 to 2026-11-30.csv", Options{})
}

func FuzzReadPull(f *testing.F) {
	seeds(f, "pull-600638-202611.json")
	fuzzRead(f, "pull.json", Options{})
}

func FuzzReadColumns(f *testing.F) {
	seeds(f, "ledger-600638.csv")
	fuzzRead(f, "x.csv", Options{Columns: columns})
}

func FuzzReadXLS(f *testing.F) {
	seeds(f, "ORG_600638_Utility_Account_20261101-20261130.xls")
	fuzzRead(f, "x.xls", Options{})
}

func FuzzReadXLSX(f *testing.F) {
	f.Add(g2XLSX(f))
	fuzzRead(f, "x.xlsx", Options{})
}

func FuzzReadExport(f *testing.F) {
	seeds(f, "pair/callbacks.ndjson")
	f.Fuzz(func(t *testing.T, data []byte) {
		cbs, problems, _ := ReadExport(bytes.NewReader(data), "daraja")
		if len(cbs)+len(problems) > len(data)+1 {
			t.Fatal("more lines than bytes")
		}
	})
}

// withoutRows dumps st's lines without their row numbers and problems, to
// compare statements read from different formats.
func withoutRows(st *Statement) []byte {
	for i := range st.Lines {
		st.Lines[i].Row = 0
	}
	st.Problems = nil
	return dump(st)
}
