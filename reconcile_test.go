package main

import (
	"bytes"
	"context"
	"errors"
	"os"
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
// the golden report and exits 1 (discrepancies).
func TestReconcileOffline(t *testing.T) {
	out, stderr, code := reconcileCLI(t, "--statement", "testdata/statements/pair/ORG_600638_Utility_Account_20261101-20261130.csv",
		"--callbacks", "testdata/statements/pair/callbacks.ndjson")
	if code != 1 {
		t.Fatalf("exit %d, want 1: %s", code, stderr)
	}
	want, err := os.ReadFile("testdata/statements/golden/pair-report.txt")
	if err != nil {
		t.Fatal(err)
	}
	// The golden file names the statement relative to testdata/statements.
	out = strings.ReplaceAll(out, "testdata/statements/", "")
	if out != string(want) {
		t.Errorf("report differs:\n%s", out)
	}
}

func TestReconcileBadInput(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"--statement", "testdata/statements/nope.csv"},
		{"--statement", "testdata/statements/ledger-600638.csv"}, // needs --columns
		{"--statement", "testdata/statements/ledger-600638.csv", "--columns", "receipt=Ref"},
		{"--statement", "testdata/statements/pull-600638-202611.json", "--format", "xml"},
		{"--statement", "testdata/statements/pull-600638-202611.json", "--tz", "Mars/Olympus"},
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
