// Package reconcile compares M-Pesa statements with the callbacks the edge
// put on the stream: it reads the org portal (G2) export (.csv, .xlsx,
// .xls), the newer "Statements for <shortcode> from <date> to <date>"
// export, the Pull Transactions API response and any CSV described by a
// column map, groups statement rows by receipt, and reports what matched,
// what is missing, what came without a statement line and what disagrees.
package reconcile

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/shakinm/xlsReader/xls"
	"github.com/shakinm/xlsReader/xls/structure"
	"github.com/xuri/excelize/v2"
	"golang.org/x/text/encoding/charmap"
)

// Layouts a statement can have.
const (
	LayoutG2         = "g2"             // org portal export, preamble then "Receipt No." header
	LayoutStatements = "statements-for" // "Statements for <shortcode> from <date> to <date>"
	LayoutPull       = "pull"           // Pull Transactions API response
	LayoutColumns    = "columns"        // any CSV, columns named by --columns
)

// Limits on what a statement may hold; past them it is refused, so a hostile
// or broken file cannot take the memory of the machine.
const (
	MaxStatementBytes = 64 << 20
	maxRows           = 1 << 20
	maxCell           = 4096
)

// ErrBadStatement is wrapped by every error that refuses a whole statement.
var ErrBadStatement = errors.New("unreadable statement")

// Options says how to read statements.
type Options struct {
	// Location of statement times; nil is East Africa Time (UTC+3).
	Location *time.Location
	// Columns maps receipt, time, in, out (and optionally amount,
	// shortcode, details, status, party) to a CSV's header names; set, it
	// forces LayoutColumns.
	Columns map[string]string
}

// EAT is East Africa Time, the time of every M-Pesa statement.
var EAT = time.FixedZone("EAT", 3*3600)

func (o Options) loc() *time.Location {
	if o.Location != nil {
		return o.Location
	}
	return EAT
}

// Line is one statement row.
type Line struct {
	Row        int    // the line of a CSV the row starts on, a sheet's row, or the index in a Pull response
	Receipt    string // M-Pesa transaction id
	Time       time.Time
	Details    string
	Status     string
	In, Out    Cents // both positive; one of them is zero
	ReasonType string
	Party      string // other party, masked
	Linked     string // linked transaction id
}

// Amount is the row's signed amount: paid in positive, withdrawn negative.
func (l Line) Amount() Cents { return l.In - l.Out }

// Problem is a row that could not be read.
type Problem struct {
	Row    int
	Reason string
}

// Accounts of an organisation's shortcode, as statements name them. A
// statement is of one account; which one decides the callbacks whose
// transactions it can show.
const (
	AccountUtility    = "Utility Account"                 // C2B paid in, B2C paid out, reversals
	AccountWorking    = "Working Account"                 // MMF: B2B paid out (and C2B on some paybills)
	AccountMerchant   = "Merchant Account"                // a till's Buy Goods payments
	AccountSettlement = "Organization Settlement Account" // sweeps to the bank: no callbacks
	AccountCharges    = "Charges Paid Account"            // charges: no callbacks
	AccountPull       = "Pull Transactions (C2B only)"    // a Pull Transactions API response
)

// kindAccounts are the accounts on whose statement a callback's
// transaction appears: Safaricom's B2B API debits the payer's MMF/Working
// account and credits the recipient's Utility account (Buy Goods: its
// Merchant account), B2C pays from the Utility account, customer payments
// land in the Utility (or, on some paybills, the Working) account or a
// till's Merchant account.
var kindAccounts = map[daraja.Kind][]string{
	daraja.C2BConfirmation: {AccountUtility, AccountWorking, AccountMerchant, AccountPull},
	daraja.STKCallback:     {AccountUtility, AccountWorking, AccountMerchant, AccountPull},
	daraja.B2CResult:       {AccountUtility},
	daraja.B2BResult:       {AccountWorking},
	daraja.ReversalResult:  {AccountUtility, AccountWorking, AccountMerchant},
}

// accountOf reads an account name ("Utility Account", "MMF", a file name
// such as ORG_600638_Utility_Account_…); "" when it names none.
func accountOf(s string) string {
	n := norm(s)
	switch {
	case strings.Contains(n, "utility"):
		return AccountUtility
	case strings.Contains(n, "working"), strings.Contains(n, "mmf"):
		return AccountWorking
	case strings.Contains(n, "merchant"):
		return AccountMerchant
	case strings.Contains(n, "settlement"):
		return AccountSettlement
	case strings.Contains(n, "chargespaid"), strings.Contains(n, "chargesaccount"):
		return AccountCharges
	}
	return ""
}

// Statement is one statement file, read.
type Statement struct {
	Path      string
	Layout    string
	Shortcode string
	// Account is the account the statement is of (AccountUtility, …), from
	// the G2 preamble's "Account:" or the file name; "" when neither says,
	// and then the statement may be of any account of its shortcode.
	Account  string
	From, To time.Time // the period it covers; zero when unknown
	Lines    []Line
	Problems []Problem
	// Preamble totals, when the file states them, and the sums of the rows.
	TotalIn, TotalOut *Cents
	SumIn, SumOut     Cents
}

// Covers reports whether a transaction of a callback of kind k would be
// on this statement's account: a b2b.result is on the Working account's
// statement, never on a Utility one; a Pull Transactions response lists
// C2B payments only.
func (s *Statement) Covers(k daraja.Kind) bool {
	if s.Account == "" {
		return true
	}
	for _, a := range kindAccounts[k] {
		if a == s.Account {
			return true
		}
	}
	return false
}

// Checks are the preamble checks that failed: stated totals that are not
// the sums of the rows.
func (s *Statement) Checks() []string {
	var out []string
	if s.TotalIn != nil && *s.TotalIn != s.SumIn {
		out = append(out, fmt.Sprintf("%s: preamble says paid in %s, the rows add up to %s", s.Path, *s.TotalIn, s.SumIn))
	}
	if s.TotalOut != nil && *s.TotalOut != s.SumOut {
		out = append(out, fmt.Sprintf("%s: preamble says withdrawn %s, the rows add up to %s", s.Path, *s.TotalOut, s.SumOut))
	}
	return out
}

// Cents is an amount in cents of a shilling.
type Cents int64

func (c Cents) String() string {
	sign := ""
	if c < 0 {
		sign, c = "-", -c
	}
	return fmt.Sprintf("%s%d.%02d", sign, c/100, c%100)
}

// ParseAmount reads "1,234.50", "-20.00", "(20.00)", "KES 5", "" (zero).
// It refuses what is shaped like a phone number rather than an amount.
func ParseAmount(s string) (Cents, error) {
	orig := s
	s = strings.TrimSpace(s)
	for _, p := range []string{"KES", "KSH", "Ksh", "KShs", "Kshs"} {
		s = strings.TrimSpace(strings.TrimPrefix(s, p))
	}
	if s == "" || s == "-" {
		return 0, nil
	}
	neg := false
	if strings.HasPrefix(s, "(") && strings.HasSuffix(s, ")") {
		neg, s = true, s[1:len(s)-1]
	}
	s = strings.NewReplacer(",", "", " ", "", "\u00a0", "").Replace(s)
	// An amount has no sign but a minus, no leading zero, and is under KES
	// 10 billion: a cell that is a phone number (0712345678,
	// +254712345678, 254712345678) is not read as one.
	if strings.HasPrefix(s, "+") || len(s) > 1 && s[0] == '0' && s[1] >= '0' && s[1] <= '9' ||
		strings.HasPrefix(s, "-0") && len(s) > 2 && s[2] >= '0' && s[2] <= '9' {
		return 0, fmt.Errorf("amount %q", echo(orig))
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || math.Abs(f) >= 1e10 {
		return 0, fmt.Errorf("amount %q", echo(orig))
	}
	c := Cents(math.Round(f * 100))
	if neg {
		c = -c
	}
	return c, nil
}

var timeLayouts = []string{
	"02-01-2006 15:04:05", "02/01/2006 15:04:05", "02-01-2006 15:04", "02/01/2006 15:04",
	"2006-01-02 15:04:05", "2006-01-02T15:04:05", "20060102150405", "02.01.2006 15:04:05",
	"2006-01-02",
	// Excel's number format 22 (m/d/yy h:mm) as excelize renders a date
	// cell; no M-Pesa export writes a two-digit year.
	"1/2/06 15:04", "1/2/06 15:04:05",
}

// ParseTime reads a statement time in loc: dd-MM-yyyy HH:mm:ss (G2),
// dd/MM/yyyy HH:mm:ss (the newer export), ISO forms, RFC 3339 (with its own
// zone), Excel serial dates (1900 date system) and Excel's m/d/yy h:mm.
func ParseTime(s string, loc *time.Location) (time.Time, error) {
	s = strings.TrimSpace(s)
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	for _, l := range timeLayouts {
		if t, err := time.ParseInLocation(l, s, loc); err == nil {
			return t, nil
		}
	}
	// An Excel serial date (days since 1899-12-30), as .xls cells hold.
	if f, err := strconv.ParseFloat(s, 64); err == nil && f > 20000 && f < 80000 {
		base := time.Date(1899, 12, 30, 0, 0, 0, 0, loc)
		return base.Add(time.Duration(math.Round(f*86400)) * time.Second), nil
	}
	return time.Time{}, fmt.Errorf("time %q", echo(s))
}

// echo is a cell as an error quotes it: phone numbers masked before it is
// cut to 32 bytes (cut first, a number could lose the digits that make
// it one and pass unmasked).
func echo(s string) string {
	return truncate(MaskDetails(strings.TrimSpace(s)), 32)
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// norm is a header or label compared: lower case letters and digits only,
// "(KSHs)" and a trailing colon dropped. "Receipt No." → "receiptno",
// "Paid In (KSHs)" → "paidin".
func norm(s string) string {
	s = strings.ToLower(s)
	s = strings.ReplaceAll(s, "(kshs)", "")
	s = strings.ReplaceAll(s, "(kes)", "")
	var b strings.Builder
	for _, r := range s {
		if r < utf8.RuneSelf && (unicode.IsLetter(r) || unicode.IsDigit(r)) {
			b.WriteRune(r)
		}
	}
	return b.String()
}

// Read reads one statement, detecting its layout by its content (and, for
// the newer export, its shortcode and period by its file name).
func Read(path string, data []byte, o Options) (*Statement, error) {
	if len(data) > MaxStatementBytes {
		return nil, fmt.Errorf("%w: %s: %d bytes, more than %d", ErrBadStatement, path, len(data), MaxStatementBytes)
	}
	var (
		t   *table
		err error
	)
	switch {
	case bytes.HasPrefix(data, []byte("PK\x03\x04")):
		t, err = xlsxRows(data)
	case bytes.HasPrefix(data, []byte{0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1}):
		t, err = xlsRows(data)
	default:
		text := decodeText(data)
		if t := strings.TrimLeft(text, " \t\r\n"); strings.HasPrefix(t, "{") || strings.HasPrefix(t, "[") {
			return readPull(path, []byte(t), o)
		}
		t, err = csvRows(text)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrBadStatement, path, err)
	}
	return readTable(path, t, o)
}

// table is a statement's cells, row by row.
type table struct {
	rows [][]string
	// line is the 1-based line of the file each row starts on (a CSV's
	// blank lines and quoted newlines counted), or its row in the sheet.
	line []int
	// broken is why a row the CSV reader could not split has no cells.
	broken map[int]string
	// csv: a row shorter than the header was cut short. A sheet leaves out
	// the empty cells at a row's end, so there it is not.
	csv bool
}

func (t *table) add(cells []string, line int) {
	t.rows = append(t.rows, cells)
	t.line = append(t.line, line)
}

// decodeText is the file as UTF-8: a BOM dropped, and a file that is not
// UTF-8 read as Windows-1252.
func decodeText(data []byte) string {
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	if utf8.Valid(data) {
		return string(data)
	}
	out, err := charmap.Windows1252.NewDecoder().Bytes(data)
	if err != nil {
		return strings.ToValidUTF8(string(data), "\uFFFD")
	}
	return string(out)
}

// csvRows splits a CSV strictly: a quote that does not close, or one
// inside an unquoted cell, makes the record it starts unreadable, and
// reading starts again on the line after that record's first line, so a
// quote never swallows the lines after it unseen.
func csvRows(text string) (*table, error) {
	t := &table{csv: true, broken: map[int]string{}}
	base, baseLine := 0, 1     // where the current reader starts, and its line
	br := bufio.NewReader(nil) // one buffer for every reader: csv takes it as is
	for {
		br.Reset(strings.NewReader(text[base:]))
		r := csv.NewReader(br)
		r.FieldsPerRecord = -1
		for {
			rec, err := r.Read()
			if errors.Is(err, io.EOF) {
				return t, nil
			}
			if len(t.rows) >= maxRows {
				return nil, fmt.Errorf("more than %d rows", maxRows)
			}
			var pe *csv.ParseError
			if errors.As(err, &pe) && (errors.Is(pe.Err, csv.ErrQuote) || errors.Is(pe.Err, csv.ErrBareQuote)) {
				why := "a quote that does not close (or an undoubled quote in a quoted cell): its cells cannot be told apart"
				if errors.Is(pe.Err, csv.ErrBareQuote) {
					why = "a quote inside an unquoted cell: its cells cannot be told apart"
				}
				t.broken[len(t.rows)] = why
				t.add(nil, baseLine+pe.StartLine-1)
				// The next reader starts on the line after the record's
				// first: the lines the open quote took are read again.
				next := base
				for range pe.StartLine {
					i := strings.IndexByte(text[next:], '\n')
					if i < 0 {
						return t, nil
					}
					next += i + 1
				}
				base, baseLine = next, baseLine+pe.StartLine
				break
			}
			if err != nil {
				return nil, fmt.Errorf("csv: %w", err)
			}
			line, _ := r.FieldPos(0)
			t.add(rec, baseLine+line-1)
		}
	}
}

func xlsxRows(data []byte) (*table, error) {
	f, err := excelize.OpenReader(bytes.NewReader(data), excelize.Options{UnzipSizeLimit: 4 * MaxStatementBytes, UnzipXMLSizeLimit: MaxStatementBytes})
	if err != nil {
		return nil, fmt.Errorf("xlsx: %w", err)
	}
	defer f.Close()
	sheets := f.GetSheetList()
	if len(sheets) == 0 {
		return nil, errors.New("xlsx: no sheet")
	}
	it, err := f.Rows(sheets[0])
	if err != nil {
		return nil, fmt.Errorf("xlsx: %w", err)
	}
	defer it.Close()
	t := &table{}
	for it.Next() {
		if len(t.rows) >= maxRows {
			return nil, fmt.Errorf("more than %d rows", maxRows)
		}
		// Raw values: a date cell is its serial (formatted, excelize
		// writes number format 22 as "11/28/26 09:15"), an amount its
		// number.
		r, err := it.Columns(excelize.Options{RawCellValue: true})
		if err != nil {
			return nil, fmt.Errorf("xlsx: row %d: %w", len(t.rows)+1, err)
		}
		for j, c := range r {
			// A date cell of type "d" holds ISO 8601 with a "Z" that
			// names no zone: Excel times have none.
			if isoCellDate.MatchString(c) {
				r[j] = strings.TrimSuffix(c, "Z")
			}
		}
		t.add(r, len(t.rows)+1)
	}
	return t, it.Error()
}

var isoCellDate = regexp.MustCompile(`^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$`)

func xlsRows(data []byte) (t *table, err error) {
	// The .xls reader is not hardened against hostile files: a panic in it
	// is a refused statement, not a crashed command.
	defer func() {
		if r := recover(); r != nil {
			t, err = nil, fmt.Errorf("xls: damaged file (%v)", r)
		}
	}()
	wb, err := xls.OpenReader(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("xls: %w", err)
	}
	if wb.GetNumberSheets() == 0 {
		return nil, errors.New("xls: no sheet")
	}
	sh, err := wb.GetSheet(0)
	if err != nil {
		return nil, fmt.Errorf("xls: %w", err)
	}
	n := sh.GetNumberRows()
	if n > maxRows {
		return nil, fmt.Errorf("more than %d rows", maxRows)
	}
	t = &table{}
	for i := 0; i < n; i++ {
		r, err := sh.GetRow(i)
		if err != nil {
			t.add(nil, i+1)
			continue
		}
		var cells []string
		for _, c := range r.GetCols() {
			if c == nil {
				cells = append(cells, "")
				continue
			}
			cells = append(cells, xlsCell(c))
		}
		t.add(cells, i+1)
	}
	return t, nil
}

// column names, normalised, for each field.
var columnNames = map[string][]string{
	"receipt":    {"receiptno", "receipt", "receiptnumber", "transactionid"},
	"time":       {"completiontime", "completedtime", "transactiontime", "date"},
	"details":    {"details", "description"},
	"status":     {"transactionstatus", "status"},
	"in":         {"paidin", "moneyin", "credit"},
	"out":        {"withdrawn", "withdrawal", "moneyout", "debit"},
	"reasontype": {"reasontype"},
	"party":      {"otherpartyinfo", "otherparty"},
	"linked":     {"linkedtransactionid"},
	"initiation": {"initiationtime"},
}

func readTable(path string, t *table, o Options) (*Statement, error) {
	rows := t.rows
	st := &Statement{Path: path}
	header := -1
	var col map[string]int
	if len(o.Columns) > 0 {
		st.Layout = LayoutColumns
		for i, r := range rows {
			if c, ok := mapColumns(r, o.Columns); ok {
				header, col = i, c
				break
			}
		}
		if header < 0 {
			return nil, fmt.Errorf("%w: %s: no row has the columns --columns names", ErrBadStatement, path)
		}
	} else {
		for i, r := range rows {
			if len(r) > 0 && firstCell(r) == "receiptno" {
				header = i
				break
			}
		}
		if header < 0 {
			return nil, fmt.Errorf("%w: %s: no header row starting with \"Receipt No.\" (a CSV of another layout needs --columns)", ErrBadStatement, path)
		}
		col = map[string]int{}
		for j, c := range rows[header] {
			n := norm(c)
			for field, names := range columnNames {
				for _, name := range names {
					if n == name {
						if _, dup := col[field]; !dup {
							col[field] = j
						}
					}
				}
			}
		}
		for _, need := range []string{"receipt", "time", "in", "out"} {
			if _, ok := col[need]; !ok {
				return nil, fmt.Errorf("%w: %s: header row has no %s column", ErrBadStatement, path, need)
			}
		}
		_, initiation := col["initiation"]
		st.Layout = LayoutStatements
		if header > 0 || initiation {
			st.Layout = LayoutG2
		}
		readPreamble(st, rows[:header], o)
	}
	if st.Layout != LayoutG2 {
		fromFileName(st, o)
	}
	if st.Account == "" {
		st.Account = accountOf(filepath.Base(path))
	}
	hdr := rows[header]
	// name is a column as its header names it, for a reason to quote.
	name := func(j int) string {
		if j < len(hdr) {
			if n := truncate(MaskText(strings.TrimSpace(hdr[j])), 32); n != "" {
				return n
			}
		}
		return fmt.Sprintf("column %d", j+1)
	}
	field := func(f string) string {
		j, ok := col[f]
		if !ok {
			return f
		}
		return name(j)
	}
	width := 0 // the header's cells up to its last named one
	for j, c := range hdr {
		if strings.TrimSpace(c) != "" {
			width = j + 1
		}
	}
	for i := header + 1; i < len(rows); i++ {
		r, line := rows[i], t.line[i]
		if why, ok := t.broken[i]; ok {
			st.Problems = append(st.Problems, Problem{line, why})
			continue
		}
		if blank(r) {
			continue
		}
		if t.csv && len(r) < width {
			st.Problems = append(st.Problems, Problem{line, fmt.Sprintf("cut short: %d of %d cells, nothing from %s on", len(r), width, name(len(r)))})
			continue
		}
		if t.csv && len(r) > len(hdr) && !blank(r[len(hdr):]) {
			st.Problems = append(st.Problems, Problem{line, fmt.Sprintf("%d cells, the header has %d: a cell holds an unquoted comma", len(r), len(hdr))})
			continue
		}
		cell := func(f string) string {
			j, ok := col[f]
			if !ok || j >= len(r) {
				return ""
			}
			return strings.TrimSpace(truncate(r[j], maxCell))
		}
		l := Line{Row: line, Receipt: cell("receipt"), Details: cell("details"), Status: cell("status"),
			ReasonType: cell("reasontype"), Linked: cell("linked"), Party: MaskParty(cell("party"))}
		if l.Receipt == "" {
			st.Problems = append(st.Problems, Problem{line, "no receipt"})
			continue
		}
		if !safeReceipt(l.Receipt) {
			st.Problems = append(st.Problems, Problem{line, "receipt has characters a receipt cannot have"})
			continue
		}
		tm, err := ParseTime(cell("time"), o.loc())
		if err != nil {
			st.Problems = append(st.Problems, Problem{line, field("time") + ": " + err.Error()})
			continue
		}
		l.Time = tm
		if cell("in") == "" && cell("out") == "" && cell("amount") == "" {
			empty := field("in") + " and " + field("out")
			if _, ok := col["amount"]; ok {
				empty = field("in") + ", " + field("out") + " and " + field("amount")
			}
			st.Problems = append(st.Problems, Problem{line, "no amount: " + empty + " are empty"})
			continue
		}
		in, err1 := ParseAmount(cell("in"))
		out, err2 := ParseAmount(cell("out"))
		if err1 != nil {
			err1 = fmt.Errorf("%s: %w", field("in"), err1)
		}
		if err2 != nil {
			err2 = fmt.Errorf("%s: %w", field("out"), err2)
		}
		if a := cell("amount"); a != "" && cell("in") == "" && cell("out") == "" {
			v, err := ParseAmount(a)
			err1 = nil
			if err != nil {
				err1 = fmt.Errorf("%s: %w", field("amount"), err)
			}
			if v >= 0 {
				in = v
			} else {
				out = v
			}
		}
		if err := errors.Join(err1, err2); err != nil {
			st.Problems = append(st.Problems, Problem{line, strings.ReplaceAll(err.Error(), "\n", "; ")})
			continue
		}
		if in < 0 { // a paid-in column holding a debit
			in, out = 0, out-in
		}
		if out < 0 {
			out = -out
		}
		l.In, l.Out = in, out
		st.SumIn += in
		st.SumOut += out
		st.Lines = append(st.Lines, l)
	}
	finishPeriod(st)
	return st, nil
}

func firstCell(r []string) string {
	for _, c := range r {
		if strings.TrimSpace(c) != "" {
			return norm(c)
		}
	}
	return ""
}

func blank(r []string) bool {
	for _, c := range r {
		if strings.TrimSpace(c) != "" {
			return false
		}
	}
	return true
}

// safeReceipt admits printable ASCII without spaces, at most 64 bytes.
func safeReceipt(s string) bool {
	if len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' || s[i] == ',' || s[i] == '"' {
			return false
		}
	}
	return true
}

func mapColumns(r []string, want map[string]string) (map[string]int, bool) {
	col := map[string]int{}
	for field, name := range want {
		for j, c := range r {
			if norm(c) == norm(name) {
				col[field] = j
				break
			}
		}
		if _, ok := col[field]; !ok {
			return nil, false
		}
	}
	return col, true
}

// readPreamble reads the label/value rows above a G2 header: shortcode,
// period and totals. A label is a cell, its value the next non-empty cell.
func readPreamble(st *Statement, rows [][]string, o Options) {
	for _, r := range rows {
		for j := 0; j < len(r); j++ {
			label := norm(r[j])
			if label == "" {
				continue
			}
			val := ""
			k := j + 1
			for ; k < len(r); k++ {
				if v := strings.TrimSpace(r[k]); v != "" {
					val = v
					break
				}
			}
			if val == "" {
				// "Short Code: 600638" in one cell.
				if _, v, ok := strings.Cut(r[j], ":"); ok {
					val = strings.TrimSpace(v)
				}
			}
			used := true
			switch {
			case label == "shortcode" || label == "organisationshortcode" || label == "organizationshortcode" ||
				strings.HasPrefix(label, "shortcode"):
				if d := digitsRun.FindString(val); d != "" {
					st.Shortcode = d
				}
			case strings.HasPrefix(label, "account") && label != "accountholder" && accountOf(val) != "":
				st.Account = accountOf(val)
			case strings.HasPrefix(label, "timeperiod"):
				st.From, st.To = parsePeriod(val, o.loc())
			case strings.Contains(label, "paidin") && strings.Contains(label, "total"):
				if c, err := ParseAmount(val); err == nil {
					st.TotalIn = &c
				}
			case strings.Contains(label, "withdrawn") && strings.Contains(label, "total"):
				if c, err := ParseAmount(val); err == nil {
					c = max(c, -c)
					st.TotalOut = &c
				}
			default:
				used = false
			}
			if used {
				j = k
			}
		}
	}
}

var (
	digitsRun     = regexp.MustCompile(`\d{5,8}`)
	periodDate    = regexp.MustCompile(`\d{4}-\d{2}-\d{2}|\d{2}[-/.]\d{2}[-/.]\d{4}(?:[ T]\d{2}:\d{2}(?::\d{2})?)?|\d{8}`)
	statementsFor = regexp.MustCompile(`(?i)statements?\s*for\s*(\d{5,8})\s*from\s*(.+?)\s*to\s*(.+?)(?:\.[a-z]+)?$`)
)

// parsePeriod reads "From 01-11-2026 00:00:00 To 30-11-2026 23:59:59".
func parsePeriod(s string, loc *time.Location) (from, to time.Time) {
	ds := periodDate.FindAllString(s, 2)
	if len(ds) != 2 {
		return
	}
	f, err1 := parsePeriodDate(ds[0], loc, false)
	t, err2 := parsePeriodDate(ds[1], loc, true)
	if err1 != nil || err2 != nil || t.Before(f) {
		return
	}
	return f, t
}

func parsePeriodDate(s string, loc *time.Location, end bool) (time.Time, error) {
	if t, err := ParseTime(s, loc); err == nil {
		if end && t.Hour() == 0 && t.Minute() == 0 && t.Second() == 0 {
			t = t.Add(24*time.Hour - time.Second)
		}
		return t, nil
	}
	for _, l := range []string{"02-01-2006", "02/01/2006", "02.01.2006", "20060102"} {
		if t, err := time.ParseInLocation(l, s, loc); err == nil {
			if end {
				t = t.Add(24*time.Hour - time.Second)
			}
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("date %q", echo(s))
}

// fromFileName takes the shortcode and period from "Statements for 600638
// from 2026-11-01 to 2026-11-30.csv" (and, for other layouts, at least a
// shortcode-like number).
func fromFileName(st *Statement, o Options) {
	base := filepath.Base(st.Path)
	base = strings.NewReplacer("_", " ").Replace(base)
	if m := statementsFor.FindStringSubmatch(base); m != nil {
		st.Shortcode = m[1]
		f, err1 := parsePeriodDate(strings.TrimSpace(m[2]), o.loc(), false)
		t, err2 := parsePeriodDate(strings.TrimSpace(strings.TrimSuffix(m[3], filepath.Ext(m[3]))), o.loc(), true)
		if err1 == nil && err2 == nil && !t.Before(f) {
			st.From, st.To = f, t
		}
		return
	}
	if st.Shortcode == "" {
		if d := digitsRun.FindString(base); d != "" && len(d) <= 7 {
			st.Shortcode = d
		}
	}
}

// finishPeriod gives a statement without a stated period the span of its
// rows.
func finishPeriod(st *Statement) {
	if !st.From.IsZero() || len(st.Lines) == 0 {
		return
	}
	st.From, st.To = st.Lines[0].Time, st.Lines[0].Time
	for _, l := range st.Lines {
		if l.Time.Before(st.From) {
			st.From = l.Time
		}
		if l.Time.After(st.To) {
			st.To = l.Time
		}
	}
}

// readPull reads a Pull Transactions API response: objects with a
// transactionId, at any depth of nested arrays. C2B only: every row is money
// paid in.
func readPull(path string, data []byte, o Options) (*Statement, error) {
	st := &Statement{Path: path, Layout: LayoutPull, Account: AccountPull}
	fromFileName(st, o)
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrBadStatement, path, err)
	}
	var walk func(v any, depth int)
	n := 0
	walk = func(v any, depth int) {
		if depth > 16 {
			return
		}
		switch x := v.(type) {
		case []any:
			for _, e := range x {
				walk(e, depth+1)
			}
		case map[string]any:
			if _, ok := x["transactionId"]; !ok {
				for _, k := range []string{"Response", "response", "transactions", "data"} {
					if e, ok := x[k]; ok {
						walk(e, depth+1)
					}
				}
				return
			}
			n++
			s := func(k string) string {
				switch y := x[k].(type) {
				case string:
					return strings.TrimSpace(y)
				case json.Number:
					return y.String()
				}
				return ""
			}
			l := Line{Row: n, Receipt: s("transactionId"), Details: s("transactiontype"), Party: MaskParty(s("msisdn"))}
			if !safeReceipt(l.Receipt) || l.Receipt == "" {
				st.Problems = append(st.Problems, Problem{n, "no usable transactionId"})
				return
			}
			t, err := ParseTime(s("trxDate"), o.loc())
			if err != nil {
				st.Problems = append(st.Problems, Problem{n, err.Error()})
				return
			}
			if s("amount") == "" {
				st.Problems = append(st.Problems, Problem{n, "no amount: amount is empty"})
				return
			}
			a, err := ParseAmount(s("amount"))
			if err != nil {
				st.Problems = append(st.Problems, Problem{n, err.Error()})
				return
			}
			l.Time, l.In = t, max(a, -a)
			l.Details = strings.TrimSpace("Customer Payment " + l.Details)
			st.SumIn += l.In
			st.Lines = append(st.Lines, l)
		}
	}
	walk(v, 0)
	finishPeriod(st)
	return st, nil
}

// xlsCell is a cell's text. xlsReader v0.9.12 decodes an RK integer as
// unsigned (-5000 reads 1073736824), and the portal's withdrawn amounts are
// negative: RK cells are decoded here from the record's own four bytes
// (MS-XLS 2.5.217).
//
// The library offers no way to those bytes (record.Rk keeps them in an
// unexported field, and its GetInt64/GetFloat64 already lost the sign;
// from a float the sign cannot always be told back), so they are read by
// reflection. TestXLSRKDecoding builds RK and MULRK records through the
// library's own Read and fails, naming the library, if an upgrade moves
// the field; rkBytes then reports !ok and the cell falls back to the
// library's text (right for every non-negative amount).
func xlsCell(c structure.CellData) string {
	rk, ok := rkBytes(c)
	if !ok {
		return c.GetString()
	}
	return strconv.FormatFloat(decodeRK(rk), 'f', -1, 64)
}

// rkBytes is the RK number of an RK cell, read from xlsReader's record.Rk
// (field rk, a [4]byte array type). ok is false for any other cell, and
// for an RK cell of a library version that keeps it otherwise.
func rkBytes(c structure.CellData) (rk uint32, ok bool) {
	if c == nil || c.GetType() != "*record.Rk" {
		return 0, false
	}
	v := reflect.ValueOf(c)
	if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
		return 0, false
	}
	f := v.Elem().FieldByName("rk")
	if !f.IsValid() || f.Kind() != reflect.Array || f.Len() != 4 || f.Type().Elem().Kind() != reflect.Uint8 {
		return 0, false
	}
	var b [4]byte
	for i := range b {
		b[i] = byte(f.Index(i).Uint())
	}
	return binary.LittleEndian.Uint32(b[:]), true
}

// decodeRK is an RK number's value: bit 1 set, a signed 30-bit integer,
// else the high 30 bits of an IEEE double; bit 0 set, divided by 100.
func decodeRK(rk uint32) float64 {
	var n float64
	if rk&2 != 0 {
		n = float64(int32(rk) >> 2)
	} else {
		n = math.Float64frombits(uint64(rk&^3) << 32)
	}
	if rk&1 != 0 {
		n /= 100
	}
	return n
}
