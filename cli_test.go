package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/internal/edgetest"
	"github.com/daraja-edge/daraja-edge/verify"
)

// TestTokenCommands drives the token subcommands against a running edge.
func TestTokenCommands(t *testing.T) {
	e := edgetest.Start(t, edgetest.Config(t, ""))
	t.Setenv("DARAJA_EDGE_ADMIN_KEY", edgetest.AdminKey)
	cli := func(args ...string) (string, error) {
		var out, errb bytes.Buffer
		err := run(context.Background(), append(args, "--admin", "http://"+e.Admin), &out, &errb)
		return out.String() + errb.String(), err
	}
	out, err := cli("token", "issue", "--kinds", "c2b.confirmation", "--shortcode", "600638", "--reusable")
	var iss verify.IssueResponse
	if err != nil || json.Unmarshal([]byte(out), &iss) != nil || iss.ID == "" || iss.ExpiresAt != "" {
		t.Fatalf("issue: %v %s", err, out)
	}
	if out, err := cli("token", "status", iss.ID); err != nil || !strings.Contains(out, `"state": "issued"`) {
		t.Fatalf("status: %v %s", err, out)
	}
	out, err = cli("token", "rotate", iss.ID, "--overlap", "1h")
	var next verify.IssueResponse
	if err != nil || json.Unmarshal([]byte(out), &next) != nil || next.RotatedFrom != iss.ID {
		t.Fatalf("rotate: %v %s", err, out)
	}
	if out, err := cli("token", "revoke", next.ID); err != nil || !strings.Contains(out, "revoked") {
		t.Fatalf("revoke: %v %s", err, out)
	}
	if out, err := cli("token", "status", next.ID); err != nil || !strings.Contains(out, `"state": "revoked"`) {
		t.Fatalf("status after revoke: %v %s", err, out)
	}
	if _, err := cli("token", "status", "not-an-id"); err == nil {
		t.Error("a malformed id was accepted")
	}
	if _, err := cli("token", "status", "tok_aaaaaaaaaaaaaaaa"); err == nil {
		t.Error("an unknown token was answered")
	}
	stk := edgetest.Issue(t, e.Admin, verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379"})
	if out, err := cli("token", "annotate", stk.ID, "--checkout-request-id", "ws_CO_191220191020363925"); err != nil ||
		!strings.Contains(out, `"checkout_request_id": "ws_CO_191220191020363925"`) {
		t.Fatalf("annotate: %v %s", err, out)
	}
	ref := edgetest.Issue(t, e.Admin, verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379", Reference: "LIST-ME"})
	if out, err := cli("token", "list", "--reference", "LIST-ME"); err != nil || !strings.Contains(out, ref.ID) || strings.Contains(out, stk.ID) {
		t.Fatalf("list: %v %s", err, out)
	}
	if _, err := cli("token", "frobnicate"); err == nil {
		t.Error("an unknown token subcommand was accepted")
	}
}

// TestHelpAndCompletion: --help lists every command of the table; each
// command's --help has its synopsis, an example and its flags; the bash
// completion offers the table's words.
func TestHelpAndCompletion(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"--help"}, &out, &out); err != nil {
		t.Fatal(err)
	}
	for _, c := range commands {
		if !strings.Contains(out.String(), "daraja-edge "+c.name+" ") {
			t.Errorf("--help lacks %q", c.name)
		}
		var h bytes.Buffer
		args := append(strings.Fields(c.name), "--help")
		_ = run(context.Background(), args, &h, &h)
		if c.name != "version" && c.name != "completion" && (!strings.Contains(h.String(), "Example:") || !strings.Contains(h.String(), "-")) {
			t.Errorf("%s --help: %s", c.name, h.String())
		}
	}
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	var script bytes.Buffer
	if err := run(context.Background(), []string{"completion", "bash"}, &script, &script); err != nil {
		t.Fatal(err)
	}
	f := t.TempDir() + "/c.bash"
	_ = os.WriteFile(f, script.Bytes(), 0o600)
	got, err := exec.Command("bash", "-c", `source `+f+`; COMP_WORDS=(daraja-edge token ""); COMP_CWORD=2; _daraja_edge; echo "${COMPREPLY[@]}"`).Output()
	if err != nil || strings.TrimSpace(string(got)) != strings.Join(subcommands("token"), " ") {
		t.Errorf("completion after 'token': %q %v", got, err)
	}
}

// TestLogFormatAuto: auto writes JSON when stderr is not a terminal.
func TestLogFormatAuto(t *testing.T) {
	var buf bytes.Buffer
	l, err := newLogger(config.Log{Level: "info", Format: "auto"}, zap.NewAtomicLevel(), &buf)
	if err != nil {
		t.Fatal(err)
	}
	l.Info("hello")
	if !strings.HasPrefix(buf.String(), "{") {
		t.Errorf("auto on a non-terminal wrote %q, want JSON", buf.String())
	}
}
