package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

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
// command's --help has its synopsis, its description, an example and
// every flag with its default (checkCommandHelp); bash and zsh, run for
// real, complete the commands, the subcommands and each command's flags.
func TestHelpAndCompletion(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"--help"}, &out, &out); err != nil {
		t.Fatal(err)
	}
	cases := completionCasesFor(checkEveryCommandHelp(t, out.String()))
	t.Run("bash", func(t *testing.T) {
		needShell(t, "bash")
		var script bytes.Buffer
		if err := run(context.Background(), []string{"completion", "bash"}, &script, &script); err != nil {
			t.Fatal(err)
		}
		f := t.TempDir() + "/daraja-edge.bash"
		if err := os.WriteFile(f, script.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		drive := "source " + f + " || exit 3\n"
		for _, c := range cases {
			drive += "COMP_WORDS=(daraja-edge " + shellWords(c.words) + `); COMP_CWORD=$((${#COMP_WORDS[@]}-1)); _daraja_edge; echo "${COMPREPLY[*]}"` + "\n"
		}
		got, err := exec.Command("bash", "--norc", "--noprofile", "-c", drive).CombinedOutput()
		compareCompletion(t, "bash", cases, string(got), err)
	})
	t.Run("zsh", func(t *testing.T) {
		needShell(t, "zsh")
		checkZshCompletion(t, cases)
	})
}

// TestLogFormatAutoTerminal: auto (the default) writes the console format
// when stderr is a terminal: here the follower side of a pseudo-terminal
// opened through /dev/ptmx (Linux).
func TestLogFormatAutoTerminal(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("opens a Linux pseudo-terminal")
	}
	if config.Default().Log.Format != "auto" {
		t.Errorf("log.format defaults to %q, want auto", config.Default().Log.Format)
	}
	leader, follower := openPTY(t)
	l, err := newLogger(config.Log{Level: "info", Format: config.Default().Log.Format}, zap.NewAtomicLevel(), follower)
	if err != nil {
		t.Fatal(err)
	}
	l.Info("hello from a terminal", zap.String("k", "v"))
	got := make(chan string, 1)
	go func() {
		var out []byte
		buf := make([]byte, 4096)
		for !bytes.Contains(out, []byte("\n")) {
			n, err := leader.Read(buf)
			out = append(out, buf[:n]...)
			if err != nil {
				break
			}
		}
		got <- string(out)
	}()
	var line string
	select {
	case line = <-got:
	case <-time.After(60 * time.Second): // only turns a hang into a failure
		t.Fatal("nothing read from the terminal")
	}
	if strings.HasPrefix(line, "{") || !strings.Contains(line, "\tINFO\thello from a terminal\t") || !strings.Contains(line, `{"k": "v"}`) {
		t.Errorf("auto on a terminal wrote %q, want the console format", line)
	}
}

// openPTY opens a pseudo-terminal pair through /dev/ptmx: unlock the
// follower (TIOCSPTLCK), find its number (TIOCGPTN), open /dev/pts/N. The
// ioctl numbers are Linux's; callers skip elsewhere.
func openPTY(t *testing.T) (leader, follower *os.File) {
	t.Helper()
	const (
		tiocsptlck = 0x40045431
		tiocgptn   = 0x80045430
	)
	leader, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	t.Cleanup(func() { leader.Close() })
	raw, err := leader.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var unlock int32
	var n uint32
	var errno syscall.Errno
	if err := raw.Control(func(fd uintptr) {
		if _, _, errno = syscall.Syscall(syscall.SYS_IOCTL, fd, tiocsptlck, uintptr(unsafe.Pointer(&unlock))); errno != 0 {
			return
		}
		_, _, errno = syscall.Syscall(syscall.SYS_IOCTL, fd, tiocgptn, uintptr(unsafe.Pointer(&n)))
	}); err != nil || errno != 0 {
		t.Fatalf("unlock the pseudo-terminal: %v %v", err, errno)
	}
	follower, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { follower.Close() })
	return leader, follower
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

// TestCommandUsageErrors: a mistake in one command's arguments exits 2
// with what is wrong and where that command's help is, not the whole
// program's usage; a mistake in the command itself lists every command.
func TestCommandUsageErrors(t *testing.T) {
	for _, c := range []struct {
		args       []string
		want       string
		wholeUsage bool
	}{
		{[]string{"token", "status", "tok_nonexistent"}, `"tok_nonexistent" is not a token id`, false},
		{[]string{"token", "revoke"}, "token revoke: name one token id", false},
		{[]string{"token", "issue"}, "--kinds and --shortcode are required", false},
		{[]string{"completion", "fish"}, "completion: name bash or zsh", false},
		{[]string{"deliveries", "list", "--state", "lost"}, "--state is pending, delivered or dead", false},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`, true},
	} {
		err := run(context.Background(), c.args, io.Discard, io.Discard)
		var ee *exitError
		if !errors.As(err, &ee) || ee.code != 2 || !strings.Contains(ee.msg, c.want) {
			t.Errorf("%q: %v, want exit 2 saying %q", c.args, err, c.want)
			continue
		}
		if whole := strings.Contains(ee.msg, usage()); whole != c.wholeUsage {
			t.Errorf("%q: whole usage printed %v, want %v:\n%s", c.args, whole, c.wholeUsage, ee.msg)
		}
		if !c.wholeUsage && !strings.Contains(ee.msg, "daraja-edge "+c.args[0]) {
			t.Errorf("%q: does not point at the command's help:\n%s", c.args, ee.msg)
		}
	}
}

// TestClientConfigIgnoresServeOnlyProblems: the client commands run with a
// configuration whose webhook secret comes from a variable this shell
// lacks (serve's environment has it), and still stop, naming the key, on
// a problem in what they read (admin, nats).
func TestClientConfigIgnoresServeOnlyProblems(t *testing.T) {
	t.Setenv("DARAJA_EDGE_CONFIG", "")
	dir := t.TempDir()
	write := func(name, y string) string {
		p := dir + "/" + name
		if err := os.WriteFile(p, []byte(y), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	forward := "forward:\n  destinations:\n    - {name: shop, url: \"https://shop.internal\", secrets: [\"${SHOP_WEBHOOK_SECRET_UNSET}\"]}\n"
	ok := write("ok.yaml", "admin:\n  listen: 127.0.0.1:9191\n"+forward)
	var errb bytes.Buffer
	cfg, found, err := clientConfig(ok, &errb)
	if err != nil || !found || cfg.Admin.Listen != "127.0.0.1:9191" || cfg.Forward.Destinations[0].Name != "shop" {
		t.Fatalf("client config with serve's secret unset: %+v %v %v\n%s", cfg.Admin, found, err, errb.String())
	}
	bad := write("bad.yaml", "nats:\n  url: \"${NATS_URL_UNSET}\"\n"+forward)
	errb.Reset()
	_, _, err = clientConfig(bad, &errb)
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 2 || !strings.Contains(errb.String(), "nats.url: ${NATS_URL_UNSET} is not set") ||
		strings.Contains(errb.String(), "secrets") {
		t.Fatalf("client config with nats.url unset: %v\n%s", err, errb.String())
	}
	// check still reports every problem.
	errb.Reset()
	if err := run(context.Background(), []string{"check", "--config", ok}, io.Discard, &errb); err == nil ||
		!strings.Contains(errb.String(), "${SHOP_WEBHOOK_SECRET_UNSET} is not set") {
		t.Fatalf("check passed a config with an unset secret: %v\n%s", err, errb.String())
	}
}
