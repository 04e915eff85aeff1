package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"github.com/daraja-edge/daraja-edge/config"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
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
// new values, and masks secrets.
func TestConfigChanges(t *testing.T) {
	a := config.Default()
	b := a
	b.Allowlist.CIDRs = []string{"127.0.0.9/32"}
	b.Listen = ":9443"
	b.Admin.APIKeys = []string{"a-new-admin-key-0123456789"}
	got := map[string]change{}
	for _, c := range configChanges(a, b) {
		got[c.Key] = c
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
	if len(got) != 3 {
		t.Errorf("changes %v, want 3", got)
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
