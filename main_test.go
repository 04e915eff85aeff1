package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func runCLI(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	err := run(context.Background(), args, &out, &errb)
	code = 0
	if err != nil {
		code = 1
		var ee *exitError
		if errors.As(err, &ee) {
			code = ee.code
		}
		errb.WriteString(err.Error())
	}
	return out.String(), errb.String(), code
}

func TestCheck(t *testing.T) {
	if out, errs, code := runCLI(t, "check", "--config", "config.example.yaml"); code != 0 || !strings.Contains(out, "ok") {
		t.Fatalf("example: code %d, %s %s", code, out, errs)
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("allowlist:\n  cidrs: [10.0.0.0/8, 10.1.0.0/16, 10.0.0.0/33]\ntls:\n  mod: acme\n"), 0o600)
	_, errs, code := runCLI(t, "check", "--config", bad)
	if code != 2 {
		t.Fatalf("code %d, want 2", code)
	}
	lines := strings.Split(strings.TrimSpace(errs), "\n")
	want := []string{
		bad + `: allowlist.cidrs[2]: "10.0.0.0/33" is not a CIDR`,
		bad + `: tls.mod: unknown key (line 4); did you mean mode?`,
	}
	for _, w := range want {
		found := false
		for _, l := range lines {
			found = found || l == w
		}
		if !found {
			t.Errorf("missing line %q in:\n%s", w, errs)
		}
	}
	if _, _, code := runCLI(t, "check", "--config", "/nonexistent.yaml"); code != 2 {
		t.Errorf("missing file: code %d", code)
	}
	// What serve would refuse at start, check refuses: an unset variable,
	// a spool directory that cannot be created.
	t.Setenv("NATS_URL_UNSET_FOR_TEST", "")
	os.Unsetenv("NATS_URL_UNSET_FOR_TEST")
	unset := filepath.Join(t.TempDir(), "unset.yaml")
	os.WriteFile(unset, []byte("nats:\n  url: ${NATS_URL_UNSET_FOR_TEST}\n"), 0o600)
	if _, errs, code := runCLI(t, "check", "--config", unset); code != 2 || !strings.Contains(errs, "nats.url: ${NATS_URL_UNSET_FOR_TEST} is not set") {
		t.Errorf("unset variable: code %d, %s", code, errs)
	}
	warn := filepath.Join(t.TempDir(), "warn.yaml")
	os.WriteFile(warn, []byte("validation: {on_timeout: reject}\nc2b: {shortcodes: {\"600999\": {response_type: Completed}}}\n"), 0o600)
	if out, errs, code := runCLI(t, "check", "--config", warn); code != 0 || !strings.Contains(out, "ok") || !strings.Contains(errs, warn+": warning: c2b.shortcodes.600999.response_type") {
		t.Errorf("warning: code %d, %s %s", code, out, errs)
	}
	spool := filepath.Join(t.TempDir(), "spool.yaml")
	os.WriteFile(spool, []byte("spool:\n  dir: "+filepath.Join(bad, "spool")+"\n"), 0o600)
	if _, errs, code := runCLI(t, "check", "--config", spool); code != 2 || !strings.Contains(errs, "spool.dir: ") {
		t.Errorf("check with the spool under a file: code %d, %s", code, errs)
	}
	// serve refuses it too, before it listens. The deadline only turns a
	// serve that wrongly starts into a failure instead of a hang.
	data := t.TempDir()
	os.WriteFile(spool, []byte("listen: 127.0.0.1:0\nadmin: {listen: 127.0.0.1:0, key_file: "+filepath.Join(data, "admin.key")+"}\n"+
		"tls: {storage: "+filepath.Join(data, "certs")+"}\nnats: {embedded: {listen: 127.0.0.1:0, store_dir: "+filepath.Join(data, "nats")+"}}\n"+
		"spool:\n  dir: "+filepath.Join(bad, "spool")+"\n"), 0o600)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var serveErr bytes.Buffer
	err := run(ctx, []string{"serve", "--config", spool}, io.Discard, &serveErr)
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 2 || !strings.Contains(serveErr.String(), "spool.dir: ") {
		t.Errorf("serve with the spool under a file: %v, %s", err, serveErr.String())
	}
}

// TestMissingConfigFile: a --config that does not exist is an error for
// every command, never a silent fall back to defaults (issue 13).
func TestMissingConfigFile(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "typo.yaml")
	for _, args := range [][]string{
		{"serve", "--config", missing},
		{"check", "--config", missing},
		{"token", "issue", "--config", missing, "--kinds", "stk.callback", "--shortcode", "174379"},
		{"tail", "--config", missing},
		{"health", "--config", missing},
		// --admin says where to ask; the missing file is still an error.
		{"health", "--admin", "http://127.0.0.1:1", "--config", missing},
	} {
		if _, errs, code := runCLI(t, args...); code != 2 || !strings.Contains(errs, "--config "+missing+": no such file or directory") {
			t.Errorf("%q: code %d, %s", args, code, errs)
		}
	}
	t.Setenv("DARAJA_EDGE_CONFIG", missing)
	if _, errs, code := runCLI(t, "health"); code != 2 || !strings.Contains(errs, "DARAJA_EDGE_CONFIG="+missing) {
		t.Errorf("health with DARAJA_EDGE_CONFIG missing: code %d, %s", code, errs)
	}
}

func TestUsageAndVersion(t *testing.T) {
	for _, arg := range []string{"version", "--version", "-version"} {
		if out, _, code := runCLI(t, arg); code != 0 || out != "daraja-edge "+version+" (commit "+buildCommit()+")\n" {
			t.Errorf("%s: %d %q", arg, code, out)
		}
	}
	for _, args := range [][]string{{}, {"bogus"}, {"token"}, {"token", "issue"}, {"serve", "--nope"}, {"check", "extra"}} {
		if _, _, code := runCLI(t, args...); code != 2 {
			t.Errorf("%q: code %d, want 2", args, code)
		}
	}
	if out, _, code := runCLI(t, "--help"); code != 0 || !strings.Contains(out, "serve") {
		t.Errorf("help: %d", code)
	}
}

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestServeAndTokenIssue runs `serve` as the README does, with a generated
// admin key, and `token issue` against it.
func TestServeAndTokenIssue(t *testing.T) {
	dir := t.TempDir()
	public, adm, natsAddr := freePort(t), freePort(t), freePort(t)
	cfgPath := filepath.Join(dir, "config.yaml")
	cfg := strings.NewReplacer(
		`listen: ":8443"`, `listen: "`+public+`"`,
		`listen: 127.0.0.1:9090`, `listen: "`+adm+`"`,
		`listen: "127.0.0.1:4222"`, `listen: "`+natsAddr+`"`,
		"./data", filepath.Join(dir, "data"),
	).Replace(string(mustRead(t, "config.example.yaml")))
	os.WriteFile(cfgPath, []byte(cfg), 0o600)
	t.Setenv("DARAJA_EDGE_ADMIN_KEY", "")

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var serveErr bytes.Buffer // written by serve until it returns
	go func() { done <- run(ctx, []string{"serve", "--config", cfgPath}, &bytes.Buffer{}, &serveErr) }()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("serve did not stop")
		}
		key := strings.TrimSpace(string(mustRead(t, filepath.Join(dir, "data", "admin.key"))))
		if len(key) < 32 || strings.Contains(serveErr.String(), key) {
			t.Errorf("generated admin key missing or logged")
		}
		if !strings.Contains(serveErr.String(), "daraja-edge serving") {
			t.Errorf("serve log: %s", serveErr.String())
		}
	}()
	var out, errs string
	var code int
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		out, errs, code = runCLI(t, "token", "issue", "--config", cfgPath, "--kinds", "b2c.result,b2c.timeout", "--shortcode", "600000", "--reference", "PAYOUT-77", "--ttl", "1h")
		if code == 0 {
			break
		}
	}
	if code != 0 {
		t.Fatalf("token issue: %d %s", code, errs)
	}
	var resp struct {
		ID   string            `json:"id"`
		URLs map[string]string `json:"urls"`
	}
	if err := json.Unmarshal([]byte(out), &resp); err != nil || !strings.HasPrefix(resp.ID, "tok_") || len(resp.URLs) != 2 {
		t.Fatalf("answer %s (%v)", out, err)
	}
	if out, errs, code := runCLI(t, "health", "--config", cfgPath); code != 0 || !strings.Contains(out, "ready") {
		t.Errorf("health: %d %s %s", code, out, errs)
	}
	if _, _, code := runCLI(t, "token", "issue", "--config", cfgPath, "--kinds", "b2c.result", "--shortcode", "60"); code != 1 {
		t.Errorf("bad shortcode: code %d", code)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestServeStartErrorsNameKey (issue 13): serve's start-up failures name
// the key and its value and keep the cause: an unreachable nats.url says
// "connection refused" and never shows its credentials; a busy embedded
// NATS port fails at once (no 30 s wait: the test asserts the error, not
// the time), naming nats.embedded.listen.
func TestServeStartErrorsNameKey(t *testing.T) {
	closed := freePort(t) // freed: nothing listens there
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for _, tt := range []struct {
		name, nats string // nats: the nats section, %s the store directory
		want       []string
		errno      error
	}{
		{"nats.url unreachable", `{url: "nats://edge:pw-secret-42@` + closed + `", embedded: {store_dir: %s}}`,
			[]string{`nats.url "nats://` + closed + `" (credentials redacted): `, "connection refused"}, syscall.ECONNREFUSED},
		{"embedded port busy", `{embedded: {listen: "` + busy.Addr().String() + `", store_dir: %s}}`,
			[]string{`nats.embedded.listen "` + busy.Addr().String() + `": `, "address already in use"}, syscall.EADDRINUSE},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "config.yaml")
			yaml := "listen: 127.0.0.1:0\n" +
				"admin: {listen: 127.0.0.1:0, api_keys: [serve-errors-admin-key-0123], key_file: " + filepath.Join(dir, "admin.key") + "}\n" +
				"tls: {storage: " + filepath.Join(dir, "certs") + "}\n" +
				"spool: {dir: " + filepath.Join(dir, "spool") + "}\n" +
				"nats: " + fmt.Sprintf(tt.nats, filepath.Join(dir, "nats")) + "\n"
			if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			// The deadline only turns a serve that wrongly starts into a
			// failure instead of a hang.
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			var logs bytes.Buffer
			err := run(ctx, []string{"serve", "--config", path}, io.Discard, &logs)
			if err == nil {
				t.Fatal("serve started")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if !errors.Is(err, tt.errno) {
				t.Errorf("error %q does not wrap %v", err, tt.errno)
			}
			if all := err.Error() + logs.String(); strings.Contains(all, "pw-secret-42") || strings.Contains(all, "edge:") {
				t.Errorf("the URL's credentials show:\n%s", all)
			}
		})
	}
}
