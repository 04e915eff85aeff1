package edge

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/verify"
)

const (
	allowedSrc   = "127.0.0.2" // in allowlist.cidrs
	strangerSrc  = "127.0.0.3" // not allowlisted
	proxySrc     = "127.0.0.4" // a trusted proxy, not itself allowlisted
	testAdminKey = "test-admin-key-0123456789"
)

// harness is a real edge: embedded NATS with JetStream on a random port,
// self-signed TLS, the admin API, and clients bound to chosen loopback
// source addresses.
type harness struct {
	t       *testing.T
	srv     *Server
	cfg     config.Config
	logs    *observer.ObservedLogs
	roots   *x509.CertPool
	nc      *nats.Conn
	js      jetstream.JetStream
	stream  jetstream.Stream
	mu      sync.Mutex
	clients map[string]*http.Client
	tokens  []string // every token issued, to prove none is logged
	rejects chan *nats.Msg
	stop    func() // stops the edge as SIGTERM would; safe twice
}

func testConfig(t *testing.T) config.Config {
	dir := t.TempDir()
	cfg := config.Default()
	cfg.PublicURL = "https://localhost:8443"
	cfg.Listen = "127.0.0.1:0"
	cfg.TLS.Storage = filepath.Join(dir, "certs")
	cfg.Allowlist.CIDRs = []string{allowedSrc + "/32"}
	cfg.ClientIP.TrustedProxies = []string{proxySrc + "/32"}
	cfg.Validation.Timeout = time.Second
	cfg.NATS.Embedded = config.Embedded{Listen: "127.0.0.1:0", StoreDir: filepath.Join(dir, "nats")}
	cfg.Spool.Dir = filepath.Join(dir, "spool")
	cfg.Limits.MaxBodyBytes = 4096
	cfg.Admin.Listen, cfg.Admin.APIKeys, cfg.Admin.KeyFile = "127.0.0.1:0", []string{testAdminKey}, filepath.Join(dir, "admin.key")
	cfg.Admin.AuthFailuresPerSecond = 1000 // TestAdminHardening tests the limit itself
	return cfg
}

func start(t *testing.T, mutate func(*config.Config)) *harness {
	t.Helper()
	cfg := testConfig(t)
	if mutate != nil {
		mutate(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("test config: %v", err)
	}
	return startConfig(t, cfg)
}

// startConfig starts an edge on cfg as given, unvalidated: tests use it to
// set what config refuses (a spool too small to take anything).
func startConfig(t *testing.T, cfg config.Config) *harness {
	t.Helper()
	core, logs := observer.New(zap.DebugLevel)
	srv, err := New(context.Background(), cfg, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	h := &harness{t: t, srv: srv, cfg: cfg, logs: logs, clients: map[string]*http.Client{}}
	h.roots = x509.NewCertPool()
	if c := srv.Certificate(); c != nil { // an ACME edge has none yet
		h.roots.AddCert(c)
	}
	natsURL := srv.NATSURL()
	if natsURL == "" {
		natsURL = cfg.NATS.URL
	}
	h.nc, err = nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	h.js, _ = jetstream.New(h.nc)
	h.rejects = make(chan *nats.Msg, 4096)
	if _, err := h.nc.ChanSubscribe("daraja.rejected.>", h.rejects); err != nil {
		t.Fatal(err)
	}
	_ = h.nc.Flush()
	h.stream, err = h.js.Stream(context.Background(), cfg.NATS.Stream.Name)
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	h.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Error("edge did not stop within 30s")
			}
		})
	}
	t.Cleanup(func() {
		h.nc.Close()
		for _, c := range h.clients {
			c.CloseIdleConnections()
		}
		h.stop()
		h.checkLogsClean()
	})
	return h
}

// client returns an HTTPS client whose connections come from src.
func (h *harness) client(src string) *http.Client {
	h.mu.Lock()
	defer h.mu.Unlock()
	if c, ok := h.clients[src]; ok {
		return c
	}
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c := &http.Client{
		Timeout: 20 * time.Second,
		Transport: &http.Transport{
			DialContext:       d.DialContext,
			TLSClientConfig:   &tls.Config{RootCAs: h.roots, MinVersion: tls.VersionTLS12},
			ForceAttemptHTTP2: true,
		},
	}
	h.clients[src] = c
	return c
}

type reply struct {
	status int
	body   string
	header http.Header
}

// post sends body to path?t=token from src, with extra headers.
func (h *harness) post(src, method, pathAndQuery string, body []byte, hdr map[string]string) reply {
	h.t.Helper()
	req, err := http.NewRequest(method, "https://"+h.srv.PublicAddr().String()+pathAndQuery, bytes.NewReader(body))
	if err != nil {
		h.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := h.client(src).Do(req)
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, pathAndQuery, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return reply{resp.StatusCode, string(b), resp.Header}
}

func (h *harness) callback(src string, kind daraja.Kind, token string, body []byte) reply {
	h.t.Helper()
	return h.post(src, http.MethodPost, kind.Path()+"?t="+token, body, nil)
}

// admin calls the admin API with key ("" sends no Authorization).
func (h *harness) admin(method, path, key string, body any) (int, []byte) {
	h.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, "http://"+h.srv.AdminAddr().String()+path, rd)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func (h *harness) issue(req verify.IssueRequest) verify.IssueResponse {
	h.t.Helper()
	status, body := h.admin(http.MethodPost, "/v1/tokens", testAdminKey, req)
	if status != http.StatusCreated {
		h.t.Fatalf("issue: %d %s", status, body)
	}
	var out verify.IssueResponse
	if err := json.Unmarshal(body, &out); err != nil {
		h.t.Fatal(err)
	}
	h.mu.Lock()
	h.tokens = append(h.tokens, out.Token)
	h.mu.Unlock()
	return out
}

// messages returns every message in the stream, in order.
func (h *harness) messages() []*jetstream.RawStreamMsg {
	h.t.Helper()
	ctx := context.Background()
	info, err := h.stream.Info(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := h.stream.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			h.t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

func (h *harness) count() int { return len(h.messages()) }

// checkLogsClean fails the test if any log line holds a token secret or a
// full phone number.
func (h *harness) checkLogsClean() {
	for _, e := range h.logs.All() {
		line, _ := json.Marshal(e.ContextMap())
		text := e.Message + " " + string(line)
		if strings.Contains(text, "254708374149") {
			h.t.Errorf("log holds a full phone number: %s", text)
		}
		if strings.Contains(text, "?t=") || strings.Contains(text, testAdminKey) {
			h.t.Errorf("log holds a token or key: %s", text)
		}
		for _, tok := range h.tokens {
			if strings.Contains(text, tok) {
				h.t.Errorf("log holds token %s…: %s", tok[:4], text)
			}
		}
	}
}

func fixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "daraja", "testdata", "fixtures", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// rejection waits for the next event on daraja.rejected.>.
func (h *harness) rejection() (reason string, ev map[string]any) {
	h.t.Helper()
	select {
	case m := <-h.rejects:
		_ = json.Unmarshal(m.Data, &ev)
		return strings.TrimPrefix(m.Subject, "daraja.rejected."), ev
	case <-time.After(5 * time.Second):
		h.t.Fatal("no rejection event")
		return "", nil
	}
}
