package reconcile

import (
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/daraja-edge/daraja-edge/daraja"
)

// Categories of a finding, in report order.
const (
	Missing          = "missing_callback"
	WithoutStatement = "callback_without_statement"
	Mismatch         = "mismatch"
	Unreadable       = "unreadable"
	NotCovered       = "not_covered"
	NoneExpected     = "no_callback_expected"
	Matched          = "matched"
)

// Categories lists the categories in report order.
var Categories = []string{Missing, WithoutStatement, Mismatch, Unreadable, NotCovered, NoneExpected, Matched}

// Finding is one line of the report.
type Finding struct {
	Category  string    `json:"category"`
	Kind      string    `json:"kind,omitempty"`
	Receipt   string    `json:"receipt,omitempty"`
	Shortcode string    `json:"shortcode,omitempty"`
	Amount    Cents     `json:"-"`
	Time      time.Time `json:"-"`
	Source    string    `json:"source,omitempty"` // statement file:row, or the callback's subject
	Party     string    `json:"party,omitempty"`  // masked
	Detail    string    `json:"detail,omitempty"`
}

// Input is what Match compares.
type Input struct {
	Statements []*Statement
	Callbacks  []Callback
	// Problems of the callback source (export lines that do not parse).
	CallbackProblems []Problem
	CallbackSource   string
	// StreamStart is the time of the stream's first message: statement
	// lines older than it may have aged out. Zero: unknown.
	StreamStart time.Time
	// Window is how far a callback's time may be from its line's; default 10 min.
	Window time.Duration
}

// class of a statement row by its details.
type class int

const (
	classCharge class = iota
	classCustomer
	classB2C
	classB2B
	classReversal
	classInternal
	classOther
)

func classify(l Line, layout string) class {
	d := strings.ToLower(l.Details + " " + l.ReasonType)
	has := func(words ...string) bool {
		for _, w := range words {
			if strings.Contains(d, w) {
				return true
			}
		}
		return false
	}
	switch {
	case layout == LayoutPull:
		return classCustomer
	case has("charge"):
		return classCharge
	case has("reversal"):
		return classReversal
	case has("settlement", "transfer of funds", "funds transfer", "move funds", "sweep", "to bank", "account to", "transfer from", "transfer to"):
		return classInternal
	case has("business payment to", "salary payment", "promotion payment", "b2c"):
		return classB2C
	case has("business pay bill", "business buy goods", "business to business", "b2b", "merchant to merchant"):
		return classB2B
	case l.In > 0:
		return classCustomer
	}
	return classOther
}

func (c class) kinds() []daraja.Kind {
	switch c {
	case classCustomer:
		return []daraja.Kind{daraja.C2BConfirmation, daraja.STKCallback}
	case classB2C:
		return []daraja.Kind{daraja.B2CResult}
	case classB2B:
		return []daraja.Kind{daraja.B2BResult}
	case classReversal:
		return []daraja.Kind{daraja.ReversalResult}
	}
	return nil
}

// MissingKind is the kind a missing-callback finding is published under.
func (f Finding) MissingKind() string {
	k, _, _ := strings.Cut(f.Kind, "|")
	return k
}

type row struct {
	st *Statement
	Line
}

// Match compares statements with callbacks.
func Match(in Input) *Report {
	window := in.Window
	if window == 0 {
		window = 10 * time.Minute
	}
	r := &Report{}
	byReceipt := map[string][]*Callback{}
	used := map[*Callback]bool{}
	for i := range in.Callbacks {
		c := &in.Callbacks[i]
		if c.Success && c.Receipt != "" {
			byReceipt[c.Receipt] = append(byReceipt[c.Receipt], c)
		}
	}
	// Group rows by receipt across statements; the same row in two files
	// counts once.
	groups := map[string][]row{}
	var order []string
	seen := map[string]bool{}
	receipts := map[string]bool{}
	for _, st := range in.Statements {
		r.Checks = append(r.Checks, st.Checks()...)
		r.Statements = append(r.Statements, StatementSummary{Path: st.Path, Layout: st.Layout, Shortcode: st.Shortcode,
			From: st.From, To: st.To, Rows: len(st.Lines), Unreadable: len(st.Problems)})
		for _, p := range st.Problems {
			r.add(Finding{Category: Unreadable, Shortcode: st.Shortcode, Source: fmt.Sprintf("%s:%d", st.Path, p.Row), Detail: p.Reason})
		}
		for _, l := range st.Lines {
			key := fmt.Sprintf("%s|%d|%d|%d|%s", l.Receipt, l.Time.Unix(), l.In, l.Out, l.Details)
			if seen[key] {
				continue
			}
			seen[key] = true
			receipts[l.Receipt] = true
			if _, ok := groups[l.Receipt]; !ok {
				order = append(order, l.Receipt)
			}
			groups[l.Receipt] = append(groups[l.Receipt], row{st, l})
		}
	}
	for _, p := range in.CallbackProblems {
		r.add(Finding{Category: Unreadable, Source: fmt.Sprintf("%s:%d", in.CallbackSource, p.Row), Detail: p.Reason})
	}
	for _, receipt := range order {
		rows := groups[receipt]
		var principal *row
		cls := classCharge
		for i := range rows {
			c := classify(rows[i].Line, rows[i].st.Layout)
			if c == classCharge {
				continue
			}
			if principal == nil || abs(rows[i].Amount()) > abs(principal.Amount()) {
				principal, cls = &rows[i], c
			}
		}
		charges := len(rows) - 1
		if principal == nil {
			principal = &rows[0]
			charges = 0
		}
		// Sweeps in and out under one receipt: money moved between the
		// organisation's own accounts.
		var sumIn, sumOut Cents
		for _, x := range rows {
			if classify(x.Line, x.st.Layout) != classCharge {
				sumIn += x.In
				sumOut += x.Out
			}
		}
		if cls != classCharge && sumIn > 0 && sumIn == sumOut {
			cls = classInternal
		}
		p := *principal
		f := Finding{Receipt: receipt, Shortcode: p.st.Shortcode, Amount: abs(p.Amount()), Time: p.Time,
			Source: fmt.Sprintf("%s:%d", p.st.Path, p.Row), Party: p.Party}
		cbs := byReceipt[receipt]
		for _, c := range cbs {
			used[c] = true
		}
		kinds := cls.kinds()
		if kinds == nil {
			f.Category = NoneExpected
			switch cls {
			case classCharge:
				f.Detail = "charge"
			case classInternal:
				f.Detail = "internal transfer: " + MaskText(p.Details)
			default:
				f.Detail = "not a transaction the edge receives a callback for: " + MaskText(p.Details)
			}
			if len(cbs) > 0 {
				f.Category, f.Detail = Mismatch, fmt.Sprintf("%s, yet a %s callback names it", f.Detail, cbs[0].Kind)
			}
			r.add(f)
			continue
		}
		if st := strings.ToLower(p.Status); st != "" && st != "completed" {
			f.Category, f.Detail = NoneExpected, "transaction status "+MaskText(p.Status)
			if len(cbs) > 0 {
				f.Category, f.Detail = Mismatch, fmt.Sprintf("transaction status %s, yet a successful %s callback names it", MaskText(p.Status), cbs[0].Kind)
			}
			r.add(f)
			continue
		}
		var match []*Callback
		var other []*Callback
		for _, c := range cbs {
			if kindIn(c.Kind, kinds) {
				match = append(match, c)
			} else {
				other = append(other, c)
			}
		}
		f.Kind = joinKinds(kinds)
		if len(match) == 0 {
			switch {
			case len(other) > 0:
				f.Category, f.Detail = Mismatch, fmt.Sprintf("kind: the statement line wants %s, the stream has %s", joinKinds(kinds), other[0].Kind)
			case !in.StreamStart.IsZero() && p.Time.Before(in.StreamStart):
				f.Category, f.Detail = NotCovered, "older than the stream's retention (first message "+in.StreamStart.In(EAT).Format(time.RFC3339)+")"
			default:
				f.Category = Missing
				f.Detail = "no callback on the stream: query Transaction Status"
				if cls == classCustomer {
					f.Detail += " (or STK Push Query)"
				}
				f.Detail += " for the receipt, or replay it from the spool"
			}
			r.add(f)
			continue
		}
		var names []string
		count := map[daraja.Kind]int{}
		for _, c := range match {
			if count[c.Kind] == 0 {
				names = append(names, string(c.Kind))
			}
			count[c.Kind]++
		}
		f.Kind = strings.Join(names, "+")
		var bad, notes []string
		for _, c := range match {
			if c.HasAmount && c.Amount != f.Amount {
				bad = append(bad, fmt.Sprintf("amount: statement %s, %s %s", f.Amount, c.Kind, c.Amount))
			}
			if c.Shortcode != "" && f.Shortcode != "" && c.Shortcode != f.Shortcode {
				bad = append(bad, fmt.Sprintf("shortcode: statement %s, %s %s", f.Shortcode, c.Kind, c.Shortcode))
			}
			if !c.Time.IsZero() {
				if d := c.Time.Sub(f.Time); d > window || d < -window {
					bad = append(bad, fmt.Sprintf("time: statement %s, %s %s", f.Time.In(EAT).Format(time.RFC3339), c.Kind, c.Time.In(EAT).Format(time.RFC3339)))
				}
			}
			if f.Party == "" && c.MSISDN != "" {
				f.Party = c.MSISDN
			}
		}
		if len(names) > 1 {
			notes = append(notes, "both "+strings.Join(names, " and ")+" (counted once)")
		}
		for _, k := range names {
			if n := count[daraja.Kind(k)]; n > 1 {
				notes = append(notes, fmt.Sprintf("%s delivered %d times", k, n))
			}
		}
		if charges > 0 {
			notes = append(notes, fmt.Sprintf("%d charge row(s)", charges))
		}
		if cls == classReversal && p.Linked != "" && !receipts[p.Linked] && len(byReceipt[p.Linked]) == 0 {
			bad = append(bad, "linked transaction "+p.Linked+" is on no statement and no callback")
		}
		f.Category = Matched
		if len(bad) > 0 {
			f.Category = Mismatch
			notes = append(bad, notes...)
		}
		f.Detail = strings.Join(notes, "; ")
		r.add(f)
	}
	// Callbacks no statement line claims.
	for i := range in.Callbacks {
		c := &in.Callbacks[i]
		if used[c] || !c.Success || c.Receipt == "" {
			continue
		}
		f := Finding{Kind: string(c.Kind), Receipt: c.Receipt, Shortcode: c.Shortcode, Amount: c.Amount, Time: c.Time, Source: c.Subject, Party: c.MSISDN}
		var accounts, covering int
		for _, st := range in.Statements {
			if st.Shortcode != "" && st.Shortcode != c.Shortcode {
				continue
			}
			accounts++
			if !c.Time.IsZero() && !c.Time.Before(st.From) && !c.Time.After(st.To) {
				covering++
			}
		}
		switch {
		case accounts == 0:
			f.Category, f.Detail = NotCovered, "account not supplied: no statement for shortcode "+c.Shortcode
		case covering == 0:
			f.Category, f.Detail = NotCovered, "outside the period of the statements for "+c.Shortcode
		default:
			f.Category, f.Detail = WithoutStatement, "POSSIBLE FORGERY: on the stream, on no statement line that covers its account and time"
		}
		used[c] = true
		for _, d := range byReceipt[c.Receipt] { // an STK and a C2B of one payment: one finding
			if d != c && !used[d] {
				used[d] = true
				f.Kind += "+" + string(d.Kind)
			}
		}
		r.add(f)
	}
	r.finish()
	return r
}

func kindIn(k daraja.Kind, ks []daraja.Kind) bool {
	for _, x := range ks {
		if x == k {
			return true
		}
	}
	return false
}

func joinKinds(ks []daraja.Kind) string {
	s := make([]string, len(ks))
	for i, k := range ks {
		s[i] = string(k)
	}
	return strings.Join(s, "|")
}

func abs(c Cents) Cents { return max(c, -c) }

var phoneRun = regexp.MustCompile(`\+?\d[\d *xX]{7,}\d`)

// MaskText masks every phone-number-like run in free text (details, names).
func MaskText(s string) string {
	return phoneRun.ReplaceAllStringFunc(s, func(m string) string { return daraja.MaskMSISDN(strings.TrimSpace(m)) })
}

// MaskParty is an "Other Party Info" cell as reported: its phone number
// masked and a person's name reduced to initials ("254708374149 - John
// Doe" → "2547******49 - J. D."); an organisation is a number and name a
// business chose, and is kept.
func MaskParty(s string) string {
	s = strings.TrimSpace(s)
	if s == "" {
		return ""
	}
	num, name, ok := strings.Cut(s, " - ")
	if !ok {
		return MaskText(s)
	}
	masked := MaskText(num)
	if masked == num { // not a phone number: an organisation
		return s
	}
	var initials []string
	for _, w := range strings.Fields(name) {
		initials = append(initials, string([]rune(w)[:1])+".")
	}
	return strings.TrimSpace(masked + " - " + strings.Join(initials, " "))
}

// Report is the outcome of Match.
type Report struct {
	Findings   []Finding
	Totals     map[string]Total
	Checks     []string // preamble totals that are not the sums of the rows
	Statements []StatementSummary
}

// Total is a category's count and amount.
type Total struct {
	Count  int   `json:"count"`
	Amount Cents `json:"-"`
}

// StatementSummary is what the report says of each statement.
type StatementSummary struct {
	Path, Layout, Shortcode string
	From, To                time.Time
	Rows, Unreadable        int
}

func (r *Report) add(f Finding) { r.Findings = append(r.Findings, f) }

func (r *Report) finish() {
	rank := map[string]int{}
	for i, c := range Categories {
		rank[c] = i
	}
	sort.SliceStable(r.Findings, func(i, j int) bool {
		a, b := r.Findings[i], r.Findings[j]
		if rank[a.Category] != rank[b.Category] {
			return rank[a.Category] < rank[b.Category]
		}
		if !a.Time.Equal(b.Time) {
			return a.Time.Before(b.Time)
		}
		if a.Receipt != b.Receipt {
			return a.Receipt < b.Receipt
		}
		return a.Source < b.Source
	})
	r.Totals = map[string]Total{}
	for _, c := range Categories {
		r.Totals[c] = Total{}
	}
	for _, f := range r.Findings {
		t := r.Totals[f.Category]
		t.Count++
		t.Amount += f.Amount
		r.Totals[f.Category] = t
	}
}

// Discrepancies reports whether anything needs a person: a missing
// callback, a callback without a statement line, a mismatch, an unreadable
// row or a failed preamble check.
func (r *Report) Discrepancies() bool {
	for _, c := range []string{Missing, WithoutStatement, Mismatch, Unreadable} {
		if r.Totals[c].Count > 0 {
			return true
		}
	}
	return len(r.Checks) > 0
}

// MissingFindings are the missing-callback findings.
func (r *Report) MissingFindings() []Finding {
	var out []Finding
	for _, f := range r.Findings {
		if f.Category == Missing {
			out = append(out, f)
		}
	}
	return out
}
