package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.yaml.in/yaml/v3"

	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/internal/edgetest"
)

// TestReloadUnderLoad: SIGHUP swaps the allowlist while callbacks flow on
// one keep-alive connection; no request fails, the connection survives, an
// invalid file is refused and the old configuration stays.
func TestReloadUnderLoad(t *testing.T) {
	dir := t.TempDir()
	public, adm, natsAddr := freePort(t), freePort(t), freePort(t)
	key := "reload-test-admin-key-0123456789"
	t.Setenv("DARAJA_EDGE_ADMIN_KEY", key)
	base := strings.NewReplacer(
		`listen: ":8443"`, `listen: "`+public+`"`,
		`listen: 127.0.0.1:9090`, `listen: "`+adm+`"`,
		`listen: "127.0.0.1:4222"`, `listen: "`+natsAddr+`"`,
		"./data", filepath.Join(dir, "data"),
	).Replace(string(mustRead(t, "config.example.yaml")))
	cfgPath := filepath.Join(dir, "config.yaml")
	write := func(cidrs, level string) {
		c := strings.Replace(base, `cidrs: ["127.0.0.1/32", "::1/128"]`, "cidrs: "+cidrs, 1)
		if c == base {
			t.Fatal("config.example.yaml's allowlist.cidrs line changed: update this test")
		}
		c = strings.Replace(c, "level: info", "level: "+level, 1)
		if err := os.WriteFile(cfgPath, []byte(c), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(`["127.0.0.2/32"]`, "info")

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var logs bytes.Buffer
	go func() { done <- run(ctx, []string{"serve", "--config", cfgPath}, io.Discard, &lockedWriter{w: &logs}) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	waitReady(t, adm)

	issue := func() string {
		body := `{"kinds":["stk.callback"],"shortcode":"174379"}`
		req, _ := http.NewRequest("POST", "http://"+adm+"/v1/tokens", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out struct{ Token string }
		_ = json.NewDecoder(resp.Body).Decode(&out)
		return out.Token
	}
	var dials atomic.Int32
	client := func(src string, count bool) *http.Client {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			DialContext: func(ctx context.Context, n, a string) (net.Conn, error) {
				if count {
					dials.Add(1)
				}
				return d.DialContext(ctx, n, a)
			},
			TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, // self-signed; TLS is not under test here
			ForceAttemptHTTP2: true,
		}}
	}
	send := func(c *http.Client, n int) int {
		body := fmt.Sprintf(`{"Body":{"stkCallback":{"CheckoutRequestID":"ws_reload_%d_%d","ResultCode":0}}}`, n, time.Now().UnixNano())
		resp, err := c.Post("https://"+public+"/stk/callback?t="+issue(), "application/json", strings.NewReader(body))
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}

	load := client("127.0.0.2", true)
	// One request first, so the workers share its HTTP/2 connection.
	if st := send(load, -1); st != http.StatusOK {
		t.Fatalf("warm-up: %d", st)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var sent, failed atomic.Int32
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				sent.Add(1)
				if st := send(load, w*100000+i); st != http.StatusOK {
					failed.Add(1)
					t.Errorf("load request %d: status %d", i, st)
				}
			}
		}()
	}
	hup := func() {
		if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
	newcomer := client("127.0.0.5", false)
	eventually := func(want int, what string) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if send(newcomer, 0) == want {
				return
			}
		}
		t.Fatalf("%s: 127.0.0.5 never got %d", what, want)
	}

	time.Sleep(200 * time.Millisecond)
	// Not allowlisted: with no trusted proxies its connection is closed at
	// accept (no answer, 0); a kept-alive connection would get 403.
	if st := send(newcomer, 0); st != 0 && st != http.StatusForbidden {
		t.Fatalf("before reload: %d", st)
	}
	write(`["127.0.0.2/32", "127.0.0.5/32"]`, "debug")
	hup()
	eventually(http.StatusOK, "after adding 127.0.0.5")
	os.WriteFile(cfgPath, []byte("allowlist:\n  cidrs: [10.0.0.0/33]\n"), 0o600)
	hup()
	time.Sleep(300 * time.Millisecond)
	if st := send(newcomer, 0); st != http.StatusOK {
		t.Errorf("an invalid file changed the running config: %d", st)
	}
	write(`["127.0.0.2/32"]`, "info")
	hup()
	eventually(http.StatusForbidden, "after removing 127.0.0.5")
	time.Sleep(200 * time.Millisecond)
	close(stop)
	wg.Wait()

	t.Logf("load: %d sent, %d failed, %d connections", sent.Load(), failed.Load(), dials.Load())
	if sent.Load() < 10 || failed.Load() != 0 {
		t.Errorf("load: %d sent, %d failed", sent.Load(), failed.Load())
	}
	if dials.Load() != 1 {
		t.Errorf("the load client dialled %d times: a reload dropped its connection", dials.Load())
	}
	cancel()
	<-done
	done <- nil
	out := logs.String()
	for _, want := range []string{"reload refused: the file is invalid", `allowlist.cidrs[0]: \"10.0.0.0/33\" is not a CIDR`, "configuration reloaded"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q", want)
		}
	}
}

func waitReady(t *testing.T, adm string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if resp, err := http.Get("http://" + adm + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
	}
	t.Fatal("edge not ready")
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestConfigChanges: a reload names each key that changed with its old and
// new values, and masks secrets: keys that hold one, a forward
// destination's secrets and headers (inside a list), the credentials of a
// URL.
func TestConfigChanges(t *testing.T) {
	a := config.Default()
	a.Forward.Destinations = []config.Destination{config.DefaultDestination()}
	a.Forward.Destinations[0].Secrets = []string{"whsec_old-secret-AAAA"}
	b := a
	b.Allowlist.CIDRs = []string{"127.0.0.9/32"}
	b.Listen = ":9443"
	b.Admin.APIKeys = []string{"a-new-admin-key-0123456789"}
	b.NATS.URL = "nats://edge:nats-pw-0123@10.0.0.1:4222,nats://nats-tok-0123@10.0.0.2:4222"
	b.Tokens.DefaultTTL = time.Hour
	d := config.DefaultDestination()
	d.Name, d.URL, d.Secrets = "shop", "https://u:url-pw-0123@shop.internal", []string{"whsec_new-secret-BBBB"}
	d.Headers = map[string]string{"Authorization": "Bearer header-secret-0123"}
	b.Forward.Destinations = []config.Destination{d}
	got := map[string]change{}
	all := ""
	for _, c := range configChanges(a, b) {
		got[c.Key] = c
		all += fmt.Sprintf("%+v\n", c)
	}
	if c := got["allowlist.cidrs"]; c.New != `["127.0.0.9/32"]` {
		t.Errorf("allowlist.cidrs: %+v", c)
	}
	if c := got["listen"]; c.Old != `":8443"` || c.New != `":9443"` {
		t.Errorf("listen: %+v", c)
	}
	if c := got["admin.api_keys"]; strings.Contains(c.New, "a-new-admin-key") || c.New == "" {
		t.Errorf("admin.api_keys not masked: %+v", c)
	}
	if c := got["tokens.default_ttl"]; c.Old != `"24h0m0s"` || c.New != `"1h0m0s"` {
		t.Errorf("tokens.default_ttl (not a secret): %+v", c)
	}
	if c := got["nats.url"]; c.New != `"nats://(credentials not shown)@10.0.0.1:4222,nats://(credentials not shown)@10.0.0.2:4222"` {
		t.Errorf("nats.url: %+v", c)
	}
	if c := got["forward.destinations[0].name"]; c.Old != `""` || c.New != `"shop"` {
		t.Errorf("forward.destinations[0].name: %+v", c)
	}
	if c := got["forward.destinations[0].secrets"]; c.Old != "(set, not shown)" || c.New != "(set, not shown)" {
		t.Errorf("forward.destinations[0].secrets: %+v", c)
	}
	if c := got["forward.destinations[0].headers.Authorization"]; c.New != "(set, not shown)" {
		t.Errorf("forward.destinations[0].headers.Authorization: %+v", c)
	}
	for _, secret := range []string{"a-new-admin-key", "nats-pw", "nats-tok", "edge:", "url-pw", "u:", "header-secret", "old-secret", "new-secret"} {
		if strings.Contains(all, secret) {
			t.Errorf("changes show %q:\n%s", secret, all)
		}
	}
	if len(got) != 9 {
		t.Errorf("changes:\n%s want 9", all)
	}
}

// TestReloadAppliedAndPending runs the real reload (what SIGHUP calls)
// against a running edge: the log names the keys it applied and those
// that need a restart, each with old and new values, secrets masked; the
// running configuration takes only what was applied;
// daraja_edge_config_last_reload_success_timestamp_seconds moves on an
// applied reload, and config_last_reload_successful drops to 0 on a
// refused one.
func TestReloadAppliedAndPending(t *testing.T) {
	cfg := edgetest.Config(t, "")
	e := edgetest.Start(t, cfg)
	metric := func(name string) float64 {
		t.Helper()
		resp, err := http.Get("http://" + e.Admin + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		m := regexp.MustCompile(`(?m)^` + name + ` (\S+)$`).FindSubmatch(body)
		if m == nil {
			t.Fatalf("/metrics has no %s", name)
		}
		v, err := strconv.ParseFloat(string(m[1]), 64)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	const (
		stamp = "daraja_edge_config_last_reload_success_timestamp_seconds"
		ok    = "daraja_edge_config_last_reload_successful"
	)
	before := metric(stamp)

	next := cfg
	next.Allowlist.CIDRs = []string{"127.0.0.2/32", "127.0.0.5/32"}   // applied
	next.Log.Level = "debug"                                          // applied
	next.Limits.ShutdownTimeout = 45 * time.Second                    // needs a restart
	next.Admin.APIKeys = []string{"reloaded-admin-key-must-not-show"} // needs a restart; a secret
	path := filepath.Join(t.TempDir(), "config.yaml")
	data, err := yaml.Marshal(next)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &lockedWriter{w: &bytes.Buffer{}}
	level := zap.NewAtomicLevel()
	log, err := newLogger(config.Log{Level: "info", Format: "json"}, level, logs)
	if err != nil {
		t.Fatal(err)
	}
	running := reload(path, cfg, e.Srv, level, log)

	var entry struct {
		Level       string   `json:"level"`
		Msg         string   `json:"msg"`
		Applied     []change `json:"applied"`
		NeedRestart []change `json:"need_restart"`
	}
	if err := json.Unmarshal([]byte(logs.String()), &entry); err != nil {
		t.Fatalf("log %q: %v", logs.String(), err)
	}
	if entry.Level != "warn" || entry.Msg != "configuration reloaded in part: some changes need a restart" {
		t.Errorf("log %s %q", entry.Level, entry.Msg)
	}
	keys := func(cs []change) map[string]change {
		m := map[string]change{}
		for _, c := range cs {
			m[c.Key] = c
		}
		return m
	}
	applied, pending := keys(entry.Applied), keys(entry.NeedRestart)
	if c := applied["allowlist.cidrs"]; len(applied) != 2 || c.Old != `["127.0.0.2/32"]` || c.New != `["127.0.0.2/32","127.0.0.5/32"]` ||
		applied["log.level"] != (change{Key: "log.level", Old: `"info"`, New: `"debug"`}) {
		t.Errorf("applied %+v", entry.Applied)
	}
	if len(pending) != 2 || pending["limits.shutdown_timeout"] != (change{Key: "limits.shutdown_timeout", Old: `"30s"`, New: `"45s"`}) ||
		pending["admin.api_keys"].New != "(set, not shown)" || pending["admin.api_keys"].Old != "(set, not shown)" {
		t.Errorf("need_restart %+v", entry.NeedRestart)
	}
	if l := logs.String(); strings.Contains(l, "reloaded-admin-key") || strings.Contains(l, edgetest.AdminKey) {
		t.Errorf("the reload log shows an admin key:\n%s", l)
	}
	if !slices.Equal(running.Allowlist.CIDRs, next.Allowlist.CIDRs) || running.Log.Level != "debug" || level.Level() != zap.DebugLevel ||
		running.Limits.ShutdownTimeout != cfg.Limits.ShutdownTimeout || !slices.Equal(running.Admin.APIKeys, cfg.Admin.APIKeys) {
		t.Errorf("running configuration after the reload: %+v", running)
	}
	if after := metric(stamp); after <= before {
		t.Errorf("%s did not move on an applied reload: %v, then %v", stamp, before, after)
	}
	if metric(ok) != 1 {
		t.Errorf("%s is not 1 after an applied reload", ok)
	}

	// A refused reload: the running configuration stays, the timestamp
	// does not move, the success gauge drops.
	applyStamp := metric(stamp)
	if err := os.WriteFile(path, []byte("allowlist:\n  cidrs: [10.0.0.0/33]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if again := reload(path, running, e.Srv, level, log); !slices.Equal(again.Allowlist.CIDRs, running.Allowlist.CIDRs) {
		t.Errorf("a refused reload changed the allowlist to %q", again.Allowlist.CIDRs)
	}
	if metric(ok) != 0 || metric(stamp) != applyStamp {
		t.Errorf("after a refused reload: %s %v, %s moved", ok, metric(ok), stamp)
	}
	if !strings.Contains(logs.String(), "reload refused: the file is invalid; the running configuration stays") {
		t.Errorf("no refusal logged:\n%s", logs.String())
	}

	// Only a change that needs a restart: the log says nothing was applied
	// and names it.
	onlyRestart := running
	onlyRestart.Listen = "127.0.0.1:1"
	if data, err = yaml.Marshal(onlyRestart); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	logs.mu.Lock()
	logs.w = &bytes.Buffer{}
	logs.mu.Unlock()
	if again := reload(path, running, e.Srv, level, log); again.Listen != running.Listen {
		t.Errorf("a restart-only change was taken as running: listen %q", again.Listen)
	}
	if l := logs.String(); !strings.Contains(l, "nothing applied: every change needs a restart") ||
		!strings.Contains(l, `"key":"listen"`) || strings.Contains(l, `"applied"`) {
		t.Errorf("reload with only a restart-needing change:\n%s", l)
	}

	// A destination's secrets_file: serve runs with its secrets read into
	// secrets (withFileSecrets); reloading the same file changes nothing.
	secrets := filepath.Join(t.TempDir(), "shop.secrets")
	if err := os.WriteFile(secrets, []byte("# shop\nwhsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	withDest := running
	d := config.DefaultDestination()
	d.Name, d.URL, d.SecretsFile = "shop", "https://shop.internal", secrets
	withDest.Forward.Destinations = []config.Destination{d}
	if data, err = yaml.Marshal(withDest); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	started, err := withFileSecrets(path, withDest, io.Discard)
	if err != nil || len(started.Forward.Destinations[0].Secrets) != 1 {
		t.Fatalf("withFileSecrets: %+v, %v", started.Forward.Destinations, err)
	}
	logs.mu.Lock()
	logs.w = &bytes.Buffer{}
	logs.mu.Unlock()
	reload(path, started, e.Srv, level, log)
	if l := logs.String(); !strings.Contains(l, "configuration reloaded: nothing changed") {
		t.Errorf("reloading the same secrets_file:\n%s", l)
	}
}

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if s, ok := l.w.(interface{ String() string }); ok {
		return s.String()
	}
	return ""
}
