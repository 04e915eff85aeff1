package edge

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/internal/pebbletest"
)

// TestRefusedAtAccept: with no trusted proxy and the allowlist enforced, a
// stranger's connection is closed before the TLS handshake, counted and
// logged; after a reload to report mode it reaches the handler again.
func TestRefusedAtAccept(t *testing.T) {
	h := start(t, func(c *config.Config) { c.ClientIP.TrustedProxies = nil })
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(strangerSrc)}, Timeout: 5 * time.Second}
	_, err := tls.DialWithDialer(d, "tcp", h.srv.PublicAddr().String(), &tls.Config{RootCAs: h.roots})
	if err == nil || !(errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)) {
		t.Fatalf("stranger's handshake: %v, want EOF or a reset before any ServerHello", err)
	}
	if got := h.scrape()[`daraja_edge_rejections_total{reason="source_not_allowed_at_accept"}`]; got != 1 {
		t.Errorf("refusals at accept counted: %v, want 1", got)
	}
	if h.logs.FilterMessageSnippet("refused at accept").FilterField(zap.String("source", strangerSrc)).Len() != 1 {
		t.Errorf("no refusal line for %s", strangerSrc)
	}
	if r := h.post(allowedSrc, "POST", "/nope", nil, nil); r.status != 404 {
		t.Fatalf("allowlisted source: %d, want 404", r.status)
	}
	cfg := h.cfg
	cfg.Allowlist.Mode = config.AllowlistReport
	if err := h.srv.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if r := h.post(strangerSrc, "POST", "/nope", nil, nil); r.status != 404 {
		t.Fatalf("stranger in report mode: %d, want 404 from the handler", r.status)
	}
}

// TestACMEWithRefusalAtAccept: with no trusted proxy, a TLS-ALPN-01
// validator from outside the allowlist still reaches the edge while the
// challenge is pending.
func TestACMEWithRefusalAtAccept(t *testing.T) {
	publicPort, httpPort := freeTCPPort(t), freeTCPPort(t)
	p := pebbletest.Start(t, httpPort, publicPort)
	h := start(t, func(c *config.Config) {
		acmeConfig(t, p, publicPort, 0)(c) // TLS-ALPN-01 only
		c.ClientIP.TrustedProxies = nil    // Pebble validates from 127.0.0.1, not allowlisted
	})
	deadline := time.Now().Add(60 * time.Second)
	for h.srv.Certificate() == nil {
		if time.Now().After(deadline) {
			t.Fatal("no certificate within 60s: the validator was refused")
		}
		time.Sleep(100 * time.Millisecond)
	}
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(allowedSrc)}, Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", h.srv.PublicAddr().String(), &tls.Config{ServerName: acmeDomain, RootCAs: p.Roots})
	if err != nil {
		t.Fatalf("allowlisted client: %v", err)
	}
	c.Close()
	// No challenge pending any more: 127.0.0.1 is refused at accept again.
	if c, err := tls.Dial("tcp", h.srv.PublicAddr().String(), &tls.Config{ServerName: acmeDomain, RootCAs: p.Roots}); err == nil {
		c.Close()
		t.Error("a source outside the allowlist completed a handshake after the challenge")
	}
}
