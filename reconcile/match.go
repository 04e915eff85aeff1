package reconcile

import (
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

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
	// StreamStart is how far back the stream can hold callbacks: statement
	// lines older than it have no callback to find. StreamCreated says it
	// is the stream's creation (nothing aged out yet); otherwise it is the
	// time of the first message still kept. Zero: unknown (an export file).
	StreamStart   time.Time
	StreamCreated bool
	// Window is how far a callback's time may be from its line's; default 10 min.
	Window time.Duration
}

// class of a statement row by its details.
type class int

const (
	classCharge class = iota
	classCustomer
	classB2C
	classB2B   // a B2B payment made: the payer's b2b.result
	classB2BIn // a B2B payment received: the payer, not this shortcode, gets the b2b.result
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
		if l.In > 0 && l.Out == 0 {
			return classB2BIn
		}
		return classB2B
	case l.In > 0:
		return classCustomer
	}
	return classOther
}

// kinds are the callbacks a row of the class expects, one of them
// (customer payments: a C2B confirmation or an STK callback, or both).
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

// accepts are callbacks a row of the class may have without expecting
// one: a B2B payment received may come with a C2B confirmation on the
// paybill's confirmation URL; Safaricom does not promise one.
func (c class) accepts() []daraja.Kind {
	if c == classB2BIn {
		return []daraja.Kind{daraja.C2BConfirmation}
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

// rowKey identifies a row across statements: the same account exported
// twice (.csv and .xls, G2 and the newer export) gives rows with the same
// receipt, time, amounts and direction, whatever its details say.
func rowKey(l Line) string {
	return fmt.Sprintf("%s|%d|%d|%d", l.Receipt, l.Time.Unix(), l.In, l.Out)
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
	// Group rows by receipt across statements. A row on two statements
	// counts once: each key is kept as many times as the statement that
	// has it most often has it (one statement may hold two equal rows).
	groups := map[string][]row{}
	var order []string
	kept := map[string]int{}
	for _, st := range in.Statements {
		r.Checks = append(r.Checks, st.Checks()...)
		r.Statements = append(r.Statements, StatementSummary{Path: st.Path, Layout: st.Layout, Shortcode: st.Shortcode,
			Account: st.Account, From: st.From, To: st.To, Rows: len(st.Lines), Unreadable: len(st.Problems)})
		for _, p := range st.Problems {
			r.add(Finding{Category: Unreadable, Shortcode: st.Shortcode, Source: fmt.Sprintf("%s:%d", st.Path, p.Row), Detail: MaskDetails(p.Reason)})
		}
		local := map[string]int{}
		for _, l := range st.Lines {
			key := rowKey(l)
			local[key]++
			if local[key] <= kept[key] {
				r.SharedRows++
				continue
			}
			kept[key] = local[key]
			if _, ok := groups[l.Receipt]; !ok {
				order = append(order, l.Receipt)
			}
			groups[l.Receipt] = append(groups[l.Receipt], row{st, l})
		}
	}
	for _, p := range in.CallbackProblems {
		r.add(Finding{Category: Unreadable, Source: fmt.Sprintf("%s:%d", in.CallbackSource, p.Row), Detail: MaskDetails(p.Reason)})
	}
	for _, receipt := range order {
		r.add(matchReceipt(in, window, receipt, groups, byReceipt, used))
	}
	// Callbacks no statement line claims.
	for i := range in.Callbacks {
		c := &in.Callbacks[i]
		if used[c] || !c.Success || c.Receipt == "" {
			continue
		}
		f := Finding{Kind: string(c.Kind), Receipt: c.Receipt, Shortcode: c.Shortcode, Amount: c.Amount, Time: c.Time, Source: c.Subject, Party: c.MSISDN}
		f.Category, f.Detail = uncovered(in.Statements, c)
		used[c] = true
		// An STK and a C2B of one payment, or one callback delivered
		// twice: one finding, each kind named once.
		names, count := []string{string(c.Kind)}, map[daraja.Kind]int{c.Kind: 1}
		for _, d := range byReceipt[c.Receipt] {
			if d != c && !used[d] {
				used[d] = true
				if count[d.Kind] == 0 {
					names = append(names, string(d.Kind))
				}
				count[d.Kind]++
			}
		}
		f.Kind = strings.Join(names, "+")
		for _, k := range names {
			if n := count[daraja.Kind(k)]; n > 1 {
				f.Detail += fmt.Sprintf("; %s delivered %d times", k, n)
			}
		}
		r.add(f)
	}
	r.finish()
	return r
}

// uncovered says what a callback no statement line claims is: not covered
// when no statement given is of its shortcode, of the account its
// transaction is on, and of its time; otherwise a possible forgery.
func uncovered(sts []*Statement, c *Callback) (category, detail string) {
	var noShortcode, ofShortcode, ofAccount, covering int
	var accounts []string
	for _, st := range sts {
		if st.Shortcode == "" {
			noShortcode++ // a statement that names no shortcode covers no account
			continue
		}
		if st.Shortcode != c.Shortcode {
			continue
		}
		ofShortcode++
		if !st.Covers(c.Kind) {
			accounts = append(accounts, st.Account)
			continue
		}
		ofAccount++
		if !c.Time.IsZero() && !c.Time.Before(st.From) && !c.Time.After(st.To) {
			covering++
		}
	}
	switch {
	case ofShortcode == 0:
		detail = "account not supplied: no statement for shortcode " + orDash(c.Shortcode)
		if noShortcode > 0 {
			detail += fmt.Sprintf(" (%d statement(s) name no shortcode and cover no account)", noShortcode)
		}
		return NotCovered, detail
	case ofAccount == 0:
		return NotCovered, fmt.Sprintf("account not supplied: a %s is on the statement of the %s of %s; the statements given are of %s",
			c.Kind, strings.Join(kindAccounts[c.Kind], " or "), c.Shortcode, strings.Join(dedupe(accounts), ", "))
	case covering == 0:
		return NotCovered, "outside the period of the statements for " + c.Shortcode
	}
	return WithoutStatement, "POSSIBLE FORGERY: on the stream, on no statement line that covers its account and time"
}

func dedupe(s []string) []string {
	var out []string
	seen := map[string]bool{}
	for _, x := range s {
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	return out
}

// matchReceipt is the finding for one receipt's rows.
func matchReceipt(in Input, window time.Duration, receipt string, groups map[string][]row, byReceipt map[string][]*Callback,
	used map[*Callback]bool) Finding {
	rows := groups[receipt]
	principal, cls := principalRow(rows)
	charges := len(rows) - 1
	if cls == classCharge {
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
	expect, accept := cls.kinds(), cls.accepts()
	var match, other []*Callback
	for _, c := range cbs {
		if kindIn(c.Kind, expect) || kindIn(c.Kind, accept) {
			match = append(match, c)
		} else {
			other = append(other, c)
		}
	}
	if expect == nil && len(match) == 0 {
		f.Category = NoneExpected
		switch cls {
		case classCharge:
			f.Detail = "charge"
		case classInternal:
			f.Detail = "internal transfer: " + MaskDetails(p.Details)
		case classB2BIn:
			f.Detail = "B2B payment received: the paying organisation gets the b2b.result, not this shortcode"
		default:
			f.Detail = "not a transaction the edge receives a callback for: " + MaskDetails(p.Details)
		}
		if len(other) > 0 {
			f.Category, f.Detail = Mismatch, fmt.Sprintf("%s, yet a %s callback names it", f.Detail, other[0].Kind)
		}
		return f
	}
	if st := strings.ToLower(p.Status); st != "" && st != "completed" {
		f.Category, f.Detail = NoneExpected, "transaction status "+MaskDetails(p.Status)
		if len(cbs) > 0 {
			f.Category, f.Detail = Mismatch, fmt.Sprintf("transaction status %s, yet a successful %s callback names it", MaskDetails(p.Status), cbs[0].Kind)
		}
		return f
	}
	f.Kind = joinKinds(expect)
	if len(match) == 0 {
		switch {
		case len(other) > 0:
			f.Category, f.Detail = Mismatch, fmt.Sprintf("kind: the statement line wants %s, the stream has %s", joinKinds(expect), other[0].Kind)
		case !in.StreamStart.IsZero() && p.Time.Before(in.StreamStart) && in.StreamCreated:
			f.Category, f.Detail = NotCovered, "older than the stream (created "+in.StreamStart.In(EAT).Format(time.RFC3339)+"): no callback of it can be on it"
		case !in.StreamStart.IsZero() && p.Time.Before(in.StreamStart):
			f.Category, f.Detail = NotCovered, "older than the stream's retention (first message kept "+in.StreamStart.In(EAT).Format(time.RFC3339)+")"
		default:
			f.Category = Missing
			f.Detail = "no callback on the stream: query Transaction Status"
			if cls == classCustomer {
				f.Detail += " (or STK Push Query)"
			}
			f.Detail += " for the receipt, or replay it from the spool"
		}
		return f
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
		if cls == classReversal && c.Linked != "" && p.Linked != "" && c.Linked != p.Linked {
			bad = append(bad, fmt.Sprintf("linked transaction: statement %s, %s %s", p.Linked, c.Kind, c.Linked))
		}
		if f.Party == "" && c.MSISDN != "" {
			f.Party = c.MSISDN
		}
	}
	for _, c := range other {
		bad = append(bad, fmt.Sprintf("kind: a %s callback names it too", c.Kind))
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
	if cls == classB2BIn {
		notes = append(notes, "B2B payment received")
	}
	if cls == classReversal {
		linked := p.Linked
		if linked == "" {
			linked = match[0].Linked
		}
		if linked != "" && len(groups[linked]) == 0 && len(byReceipt[linked]) == 0 {
			bad = append(bad, "linked transaction "+linked+" is on no statement given and no callback: supply the statement of its month")
		}
		// M-Pesa reverses the whole transaction: the two amounts agree.
		if orig, ok := originalAmount(linked, groups, byReceipt); ok && orig != f.Amount {
			bad = append(bad, fmt.Sprintf("amount: reversal %s, original %s %s (a reversal is of the whole transaction)", f.Amount, linked, orig))
		}
	}
	f.Category = Matched
	if len(bad) > 0 {
		f.Category = Mismatch
		notes = append(bad, notes...)
	}
	f.Detail = strings.Join(notes, "; ")
	return f
}

// principalRow is the row of a receipt's rows that decides it: the
// largest that is not a charge, and its class; rows[0] and classCharge
// when all are charges.
func principalRow(rows []row) (*row, class) {
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
	if principal == nil {
		return &rows[0], classCharge
	}
	return principal, cls
}

// originalAmount is the amount of the transaction a reversal reverses:
// its statement line's, else its successful callback's.
func originalAmount(receipt string, groups map[string][]row, byReceipt map[string][]*Callback) (Cents, bool) {
	if receipt == "" {
		return 0, false
	}
	if rows := groups[receipt]; len(rows) > 0 {
		p, _ := principalRow(rows)
		return abs(p.Amount()), true
	}
	for _, c := range byReceipt[receipt] {
		if c.HasAmount {
			return c.Amount, true
		}
	}
	return 0, false
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

var (
	// phoneRun is nine or more digits, spaces and masking marks.
	phoneRun = regexp.MustCompile(`\+?\d[\d *xX]{7,}\d`)
	// groupedPhone is a Kenyan number written in groups with dots or
	// dashes (0712-345-678, +254.712.345.678); a date's groups (01-11-2026)
	// are not shaped like it.
	groupedPhone = regexp.MustCompile(`(?:\+?254[ .\-]?|0)?[17]\d{2}[ .\-]?\d{3}[ .\-]?\d{3}`)
)

// MaskText masks every phone-number-like run in free text (details, names,
// a cell a reason quotes).
func MaskText(s string) string {
	s = phoneRun.ReplaceAllStringFunc(s, func(m string) string { return daraja.MaskMSISDN(strings.TrimSpace(m)) })
	return groupedPhone.ReplaceAllStringFunc(s, func(m string) string {
		digits := strings.Map(func(r rune) rune {
			if r >= '0' && r <= '9' {
				return r
			}
			return -1
		}, m)
		if len(digits) < 9 {
			return m
		}
		return daraja.MaskMSISDN(digits)
	})
}

var (
	// maskedPhone is a phone number as MaskText leaves it (2547******49,
	// 07******49, +254*******78), or as a statement already masked it.
	maskedPhone = regexp.MustCompile(`\+?\d[\d*]*\*[\d*]*\d`)
	// shortcodeParty is a party named by a shortcode: an organisation.
	shortcodeParty = regexp.MustCompile(`^\d{5,8}(?:\s|$)`)
	// nameSep is what comes between a phone number and the name after it.
	nameSep = regexp.MustCompile(`^(?:[ \t]*-[ \t]*|[ \t]+)`)
	// nameWordAt is the next word of a name and the blanks before it.
	nameWordAt = regexp.MustCompile(`^([ \t]*)([^\s]+)`)
)

// notName are words that end the name after a phone number in a Details
// cell ("… - Juma Ali Acc. 1", "… - Jane Doe via M-PESA app").
var notName = map[string]bool{"acc": true, "a/c": true, "account": true, "via": true, "ref": true, "for": true,
	"till": true, "at": true, "to": true, "from": true, "on": true}

// nameWord reports a word of a person's name: it starts with a letter and
// holds no digit.
func nameWord(w string) bool {
	r, _ := utf8.DecodeRuneInString(w)
	if !unicode.IsLetter(r) || strings.ContainsAny(w, "0123456789") {
		return false
	}
	return !notName[strings.ToLower(strings.TrimRight(w, ".,;:"))]
}

// initial is a name's word reduced to its first letter ("Juma" → "J.",
// "Ali," → "A.,").
func initial(w string) string {
	r, _ := utf8.DecodeRuneInString(w)
	return string(r) + "." + w[len(strings.TrimRight(w, ",;:)")):]
}

// MaskDetails is free text as a report shows it (a Details cell, a cell a
// reason quotes): every phone number masked, and the words of a name after
// one (a person's: "2547******01 - Juma Ali Acc. 1" → "2547******01 -
// J. A. Acc. 1", with or without " - ") reduced to initials. A shortcode
// is not a phone number: a business's name after one stays.
func MaskDetails(s string) string {
	s = MaskText(s)
	var b strings.Builder
	last := 0
	for _, loc := range maskedPhone.FindAllStringIndex(s, -1) {
		if loc[0] < last {
			continue
		}
		b.WriteString(s[last:loc[1]])
		i := loc[1]
		sep := nameSep.FindString(s[i:])
		if sep == "" {
			last = i
			continue
		}
		b.WriteString(sep)
		i += len(sep)
		first := true
		for {
			m := nameWordAt.FindStringSubmatch(s[i:])
			if m == nil || !nameWord(m[2]) || first && m[1] != "" {
				break
			}
			b.WriteString(m[1] + initial(m[2]))
			i += len(m[0])
			first = false
		}
		last = i
	}
	b.WriteString(s[last:])
	return b.String()
}

// MaskParty is an "Other Party Info" cell as reported: its phone number
// masked, masked already or not, and a person's name reduced to initials
// ("254708374149 - John Doe" → "2547******49 - J. D.", "2547******33
// Grace Achieng" → "2547******33 G. A."). An organisation, a party named by
// a shortcode ("600000 - Fictional Bank"), is a number and name a business
// chose and is kept; a party of a name alone is taken for a person's.
func MaskParty(s string) string {
	s = strings.TrimSpace(s)
	if s == "" {
		return ""
	}
	m := MaskText(s)
	switch {
	case maskedPhone.MatchString(m):
		return MaskDetails(m)
	case shortcodeParty.MatchString(m):
		return m
	case !strings.ContainsAny(m, "0123456789"):
		var initials []string
		for _, w := range strings.Fields(m) {
			initials = append(initials, initial(w))
		}
		return strings.Join(initials, " ")
	}
	return m
}

// Report is the outcome of Match.
type Report struct {
	Findings   []Finding
	Totals     map[string]Total
	Checks     []string // preamble totals that are not the sums of the rows
	Statements []StatementSummary
	// SharedRows is how many rows were on more than one statement (the
	// same account given twice) and counted once.
	SharedRows int
}

// Total is a category's count and amount.
type Total struct {
	Count  int   `json:"count"`
	Amount Cents `json:"-"`
}

// StatementSummary is what the report says of each statement.
type StatementSummary struct {
	Path, Layout, Shortcode, Account string
	From, To                         time.Time
	Rows, Unreadable                 int
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
