package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/daraja-edge/daraja-edge/reconcile"
)

func reconcileCLI(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	t.Setenv("DARAJA_EDGE_CONFIG", "")
	var out, errb bytes.Buffer
	err := cmdReconcile(context.Background(), args, &out, &errb)
	code := 0
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

// TestReconcileOffline: the pair reconciled from its export file prints
// the golden report in each --format and exits 1 (discrepancies).
func TestReconcileOffline(t *testing.T) {
	for format, golden := range map[string]string{"": "pair-report.txt", "text": "pair-report.txt", "json": "pair-report.json", "csv": "pair-report.csv"} {
		args := []string{"--statement", "reconcile/testdata/statements/pair/ORG_600638_Utility_Account_20261101-20261130.csv",
			"--callbacks", "reconcile/testdata/statements/pair/callbacks.ndjson"}
		if format != "" {
			args = append(args, "--format", format)
		}
		out, stderr, code := reconcileCLI(t, args...)
		if code != 1 {
			t.Fatalf("--format %q: exit %d, want 1: %s", format, code, stderr)
		}
		want, err := os.ReadFile("reconcile/testdata/statements/golden/" + golden)
		if err != nil {
			t.Fatal(err)
		}
		// The golden file names the statement relative to testdata/statements.
		out = strings.ReplaceAll(out, "reconcile/testdata/statements/", "")
		if out != string(want) {
			t.Errorf("--format %q: report differs from %s:\n%s", format, golden, out)
		}
	}
}

// TestReconcileNothingToReport: a statement whose every line has its
// callback exits 0.
func TestReconcileNothingToReport(t *testing.T) {
	export := filepath.Join(t.TempDir(), "callbacks.ndjson")
	var buf bytes.Buffer
	c2b := func(receipt, when, amount, msisdn string) {
		body := fmt.Sprintf(`{"TransactionType":"Pay Bill","TransID":%q,"TransTime":%q,"TransAmount":%q,"BusinessShortCode":"600638","MSISDN":%q}`, receipt, when, amount, msisdn)
		m := &nats.Msg{Subject: "daraja.cb.c2b.confirmation.600638.tok_c2breusable00001", Data: []byte(body),
			Header: nats.Header{"Daraja-Kind": {"c2b.confirmation"}, "Daraja-Shortcode": {"600638"}}}
		if err := writeExport(&buf, m); err != nil {
			t.Fatal(err)
		}
	}
	c2b("TKS0000001", "20261118235959", "1252000.00", "254700000201")
	c2b("TKS0000003", "20261120110509", "12500.00", "254700000203")
	b2c := `{"Result":{"ResultType":0,"ResultCode":0,"ResultDesc":"ok","OriginatorConversationID":"1-1-1","ConversationID":"AG_1","TransactionID":"TKS0000002",` +
		`"ResultParameters":{"ResultParameter":[{"Key":"TransactionAmount","Value":2000},{"Key":"TransactionCompletedDateTime","Value":"19.11.2026 07:00:00"}]}}}`
	if err := writeExport(&buf, &nats.Msg{Subject: "daraja.cb.b2c.result.600638.tok_b2c0000000000001", Data: []byte(b2c),
		Header: nats.Header{"Daraja-Kind": {"b2c.result"}, "Daraja-Shortcode": {"600638"}}}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(export, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, format := range []string{"text", "json", "csv"} {
		out, stderr, code := reconcileCLI(t, "--statement", "reconcile/testdata/statements/Statements for 600638 from 2026-11-01 to 2026-11-30.csv",
			"--callbacks", export, "--format", format)
		if code != 0 {
			t.Fatalf("--format %s: exit %d, want 0: %s\n%s", format, code, stderr, out)
		}
		switch format {
		case "text":
			if !strings.Contains(out, "matched                          3") {
				t.Errorf("text report:\n%s", out)
			}
		case "json":
			var r struct {
				Discrepancies bool
				Totals        map[string]struct{ Count int }
			}
			if err := json.Unmarshal([]byte(out), &r); err != nil || r.Discrepancies || r.Totals["matched"].Count != 3 {
				t.Errorf("json report (%v):\n%s", err, out)
			}
		case "csv":
			rows, err := csv.NewReader(strings.NewReader(out)).ReadAll()
			if err != nil || len(rows) != 1+3+7 || rows[0][0] != "category" || rows[1][0] != "matched" {
				t.Errorf("csv report (%v):\n%s", err, out)
			}
		}
	}
}

func TestReconcileBadInput(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"--statement", "reconcile/testdata/statements/nope.csv"},
		{"--statement", "reconcile/testdata/statements/ledger-600638.csv"}, // needs --columns
		{"--statement", "reconcile/testdata/statements/ledger-600638.csv", "--columns", "receipt=Ref"},
		{"--statement", "reconcile/testdata/statements/pull-600638-202611.json", "--format", "xml"},
		{"--statement", "reconcile/testdata/statements/pull-600638-202611.json", "--tz", "Mars/Olympus"},
	} {
		if _, stderr, code := reconcileCLI(t, args...); code != 2 || stderr == "" {
			t.Errorf("%v: exit %d, stderr %q", args, code, stderr)
		}
	}
}

// TestTailExportRoundTrip: what writeExport writes, ReadExport reads.
func TestTailExportRoundTrip(t *testing.T) {
	body, err := os.ReadFile("daraja/testdata/fixtures/c2b_confirmation.json")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	m := &nats.Msg{Subject: "daraja.cb.c2b.confirmation.600638.tok_x", Data: body,
		Header: nats.Header{"Daraja-Kind": {"c2b.confirmation"}, "Daraja-Shortcode": {"600638"}}}
	if err := writeExport(&buf, m); err != nil {
		t.Fatal(err)
	}
	cbs, problems, err := reconcile.ReadExport(&buf, "daraja")
	if err != nil || len(problems) != 0 || len(cbs) != 1 || cbs[0].Receipt != "RKTQDM7W6S" || cbs[0].Amount != 1000 {
		t.Fatalf("%v %v %+v", err, problems, cbs)
	}
}
