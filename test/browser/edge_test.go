//go:build browser

// Package browser drives the operator console of a real daraja-edge in a
// real headless Chromium (Debian's chromium, through chromedp): sign in,
// the live view, filters, a callback's page, tokens and revoke, the URL
// test, health, deliveries, sign out, a read-only key. Run it with
//
//	go test -race -tags browser ./test/browser
//
// UPDATE_SCREENSHOTS=1 also writes each page at desktop (1280x800) and
// phone (390x844) width under docs/console/.
package browser

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/edge"
	"github.com/daraja-edge/daraja-edge/verify"
)

const (
	allowedSrc = "127.0.0.2" // Safaricom's stand-in: allowlisted
	adminKey   = "browser-admin-key-0123456789abcdef"
	readKey    = "browser-read-key-0123456789abcdef"
)

// edgeUnderTest is a running edge: embedded NATS with JetStream on a
// random port, self-signed TLS on the public listener, the admin listener
// with the console, and forwarding to an app stand-in.
type edgeUnderTest struct {
	t      *testing.T
	srv    *edge.Server
	cfg    config.Config
	logs   *observer.ObservedLogs
	public *http.Client // from allowedSrc, trusting the edge's certificate
	js     jetstream.JetStream
	stream jetstream.Stream
	app    atomic.Int32 // deliveries the app stand-in took
	tokens []string
	mu     sync.Mutex
}

// freePort returns a loopback port free a moment ago: public_url must
// name the public listener's port before it is bound.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func startEdge(t *testing.T) *edgeUnderTest {
	t.Helper()
	e := &edgeUnderTest{t: t}
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if e.app.Add(1) == 1 {
			w.WriteHeader(http.StatusServiceUnavailable) // the first attempt fails: the page shows a retry
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(app.Close)

	dir := t.TempDir()
	port := strconv.Itoa(freePort(t))
	cfg := config.Default()
	cfg.PublicURL = "https://127.0.0.1:" + port
	cfg.Listen = "127.0.0.1:" + port
	cfg.TLS.Storage = filepath.Join(dir, "certs")
	// 127.0.0.1 too: the console's URL test connects from it, and an
	// address outside the list is closed at accept.
	cfg.Allowlist.CIDRs = []string{allowedSrc + "/32", "127.0.0.1/32"}
	cfg.NATS.Embedded = config.Embedded{Listen: "127.0.0.1:0", StoreDir: filepath.Join(dir, "nats")}
	cfg.Spool.Dir = filepath.Join(dir, "spool")
	cfg.Admin.Listen, cfg.Admin.KeyFile = "127.0.0.1:0", filepath.Join(dir, "admin.key")
	cfg.Admin.APIKeys, cfg.Admin.ReadKeys = []string{adminKey}, []string{readKey}
	d := config.DefaultDestination()
	d.Name, d.URL = "shop", app.URL+"/mpesa"
	d.Secrets = []string{"whsec_" + base64.StdEncoding.EncodeToString([]byte("browser-test-forward-secret-0123"))}
	d.Retry = []time.Duration{0, 200 * time.Millisecond, time.Second}
	cfg.Forward.Destinations = []config.Destination{d}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("config: %v", err)
	}
	e.cfg = cfg
	core, logs := observer.New(zap.DebugLevel)
	e.logs = logs
	srv, err := edge.New(context.Background(), cfg, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	e.srv = srv
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()

	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(allowedSrc)}, Timeout: 10 * time.Second}
	e.public = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: dialer.DialContext, TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
	}}
	nc, err := nats.Connect(srv.NATSURL())
	if err != nil {
		t.Fatal(err)
	}
	e.js, _ = jetstream.New(nc)
	if e.stream, err = e.js.Stream(context.Background(), cfg.NATS.Stream.Name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		nc.Close()
		e.public.CloseIdleConnections()
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(60 * time.Second):
			t.Error("the edge did not stop within 60s")
		}
		e.checkLogs()
	})
	return e
}

// consoleURL is the console's address on the admin listener.
func (e *edgeUnderTest) consoleURL() string {
	return "http://" + e.srv.AdminAddr().String() + "/console/"
}

// issue issues a token through the admin API.
func (e *edgeUnderTest) issue(req verify.IssueRequest) verify.IssueResponse {
	e.t.Helper()
	b, _ := json.Marshal(req)
	r, _ := http.NewRequest(http.MethodPost, "http://"+e.srv.AdminAddr().String()+"/v1/tokens", bytes.NewReader(b))
	r.Header.Set("Authorization", "Bearer "+adminKey)
	r.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusCreated {
		e.t.Fatalf("issue: %d %s", resp.StatusCode, body)
	}
	var out verify.IssueResponse
	if err := json.Unmarshal(body, &out); err != nil {
		e.t.Fatal(err)
	}
	e.mu.Lock()
	e.tokens = append(e.tokens, out.Token)
	e.mu.Unlock()
	return out
}

// callback POSTs body for kind with token from the allowlisted source, as
// Daraja would, and returns the status.
func (e *edgeUnderTest) callback(kind daraja.Kind, token string, body []byte) int {
	e.t.Helper()
	resp, err := e.public.Post("https://"+e.srv.PublicAddr().String()+kind.Path()+"?t="+token, "application/json", bytes.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// lastSeq is the stream's last sequence.
func (e *edgeUnderTest) lastSeq() uint64 {
	e.t.Helper()
	info, err := e.stream.Info(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	return info.State.LastSeq
}

func fixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "daraja", "testdata", "fixtures", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkLogs fails the test if a log line holds a key, a token or a full
// phone number.
func (e *edgeUnderTest) checkLogs() {
	secrets := []string{adminKey, readKey, "254708374149"}
	e.mu.Lock()
	secrets = append(secrets, e.tokens...)
	e.mu.Unlock()
	for _, l := range e.logs.All() {
		b, _ := json.Marshal(l.ContextMap())
		line := l.Message + " " + string(b)
		for _, s := range secrets {
			if bytes.Contains([]byte(line), []byte(s)) {
				e.t.Errorf("a log line holds a secret (%.6s…): %s", s, line)
			}
		}
	}
}
