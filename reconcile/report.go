package reconcile

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

var categoryTitle = map[string]string{
	Missing:          "MISSING CALLBACK (on a statement, not on the stream)",
	WithoutStatement: "CALLBACK WITHOUT STATEMENT LINE (on the stream, on no statement: possible forgery)",
	Mismatch:         "MISMATCH",
	Unreadable:       "UNREADABLE ROWS",
	NotCovered:       "NOT COVERED",
	NoneExpected:     "NO CALLBACK EXPECTED",
	Matched:          "MATCHED",
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.In(EAT).Format("2006-01-02 15:04:05")
}

// WriteText writes the report for people: the discrepancies first, each
// category with its lines, then the totals.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	b.WriteString("Statements:\n")
	for _, s := range r.Statements {
		account := s.Account
		if account == "" {
			account = "account unknown"
		}
		fmt.Fprintf(&b, "  %s: %s, shortcode %s, %s, %s to %s, %d rows", s.Path, s.Layout, orDash(s.Shortcode), account, orDash(formatTime(s.From)), orDash(formatTime(s.To)), s.Rows)
		if s.Unreadable > 0 {
			fmt.Fprintf(&b, ", %d unreadable", s.Unreadable)
		}
		b.WriteString("\n")
	}
	if r.SharedRows > 0 {
		fmt.Fprintf(&b, "  %d row(s) on more than one statement, counted once\n", r.SharedRows)
	}
	for _, c := range r.Checks {
		fmt.Fprintf(&b, "CHECK FAILED: %s\n", c)
	}
	for _, c := range Categories {
		t := r.Totals[c]
		if t.Count == 0 {
			continue
		}
		fmt.Fprintf(&b, "\n%s: %d, KES %s\n", categoryTitle[c], t.Count, t.Amount)
		for _, f := range r.Findings {
			if f.Category != c {
				continue
			}
			fields := []string{" "}
			add := func(v string) {
				if v != "" {
					fields = append(fields, v)
				}
			}
			add(orDash(f.Receipt))
			add(formatTime(f.Time))
			if f.Receipt != "" || f.Amount != 0 {
				add(f.Amount.String())
			}
			add(f.Kind)
			add(f.Shortcode)
			add(f.Party)
			add(f.Source)
			line := strings.Join(fields, " ")
			if f.Detail != "" {
				line += " — " + f.Detail
			}
			b.WriteString(line + "\n")
		}
	}
	b.WriteString("\nTotals:\n")
	for _, c := range Categories {
		t := r.Totals[c]
		fmt.Fprintf(&b, "  %-27s %6d  KES %s\n", c, t.Count, t.Amount)
	}
	matched := map[string]int{}
	var kinds []string
	for _, f := range r.Findings {
		if f.Category == Matched {
			if matched[f.Kind] == 0 {
				kinds = append(kinds, f.Kind)
			}
			matched[f.Kind]++
		}
	}
	for _, k := range kinds {
		fmt.Fprintf(&b, "  %-27s %6d\n", "matched "+k, matched[k])
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

type jsonFinding struct {
	Finding
	Amount string `json:"amount,omitempty"`
	Time   string `json:"time,omitempty"`
}

type jsonTotal struct {
	Count  int    `json:"count"`
	Amount string `json:"amount"`
}

type jsonStatement struct {
	Path       string `json:"path"`
	Layout     string `json:"layout"`
	Shortcode  string `json:"shortcode,omitempty"`
	Account    string `json:"account,omitempty"`
	From       string `json:"from,omitempty"`
	To         string `json:"to,omitempty"`
	Rows       int    `json:"rows"`
	Unreadable int    `json:"unreadable"`
}

func rfc(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.In(EAT).Format(time.RFC3339)
}

// WriteJSON writes the report as one JSON document.
func (r *Report) WriteJSON(w io.Writer) error {
	out := struct {
		Discrepancies bool                 `json:"discrepancies"`
		Statements    []jsonStatement      `json:"statements"`
		Checks        []string             `json:"checks_failed"`
		SharedRows    int                  `json:"shared_rows"`
		Totals        map[string]jsonTotal `json:"totals"`
		Findings      []jsonFinding        `json:"findings"`
	}{Discrepancies: r.Discrepancies(), Checks: r.Checks, Totals: map[string]jsonTotal{}, Findings: []jsonFinding{}, Statements: []jsonStatement{}, SharedRows: r.SharedRows}
	if out.Checks == nil {
		out.Checks = []string{}
	}
	for _, s := range r.Statements {
		out.Statements = append(out.Statements, jsonStatement{s.Path, s.Layout, s.Shortcode, s.Account, rfc(s.From), rfc(s.To), s.Rows, s.Unreadable})
	}
	for c, t := range r.Totals {
		out.Totals[c] = jsonTotal{t.Count, t.Amount.String()}
	}
	for _, f := range r.Findings {
		jf := jsonFinding{Finding: f, Time: rfc(f.Time)}
		if f.Receipt != "" || f.Amount != 0 {
			jf.Amount = f.Amount.String()
		}
		out.Findings = append(out.Findings, jf)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

// WriteCSV writes one row per finding, then one per category total
// (category "total:<name>").
func (r *Report) WriteCSV(w io.Writer) error {
	cw := csv.NewWriter(w)
	_ = cw.Write([]string{"category", "kind", "receipt", "time", "amount", "shortcode", "party", "source", "detail"})
	for _, f := range r.Findings {
		amount := ""
		if f.Receipt != "" || f.Amount != 0 {
			amount = f.Amount.String()
		}
		_ = cw.Write([]string{f.Category, f.Kind, csvSafe(f.Receipt), rfc(f.Time), amount, f.Shortcode, csvSafe(f.Party), csvSafe(f.Source), csvSafe(f.Detail)})
	}
	for _, c := range r.Checks {
		_ = cw.Write([]string{"check_failed", "", "", "", "", "", "", "", csvSafe(c)})
	}
	for _, c := range Categories {
		t := r.Totals[c]
		_ = cw.Write([]string{"total:" + c, "", "", "", t.Amount.String(), "", "", "", strconv.Itoa(t.Count)})
	}
	cw.Flush()
	return cw.Error()
}

// csvSafe keeps a spreadsheet from taking a cell for a formula.
func csvSafe(s string) string {
	if s != "" && strings.ContainsRune("=+-@", rune(s[0])) {
		return "'" + s
	}
	return s
}
