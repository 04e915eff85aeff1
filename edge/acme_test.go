package edge

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/internal/pebbletest"
)

const acmeDomain = "callbacks.edge.test"

func freeTCPPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func acmeConfig(t *testing.T, p *pebbletest.CA, publicPort, httpPort int) func(*config.Config) {
	return func(c *config.Config) {
		c.PublicURL = "https://" + acmeDomain
		c.Listen = net.JoinHostPort("127.0.0.1", itoa(publicPort))
		c.TLS.Mode = config.TLSACME
		c.TLS.ACME = config.ACME{Domains: []string{acmeDomain}, Email: "ops@edge.test", Directory: p.Dir, CARoot: p.CARoot}
		if httpPort != 0 {
			c.TLS.ACME.HTTPListen = net.JoinHostPort("127.0.0.1", itoa(httpPort))
		}
	}
}

func itoa(n int) string { return (&net.TCPAddr{Port: n}).String()[1:] }

// waitCert waits for the edge to hold a certificate and returns what a
// verifying client sees on its public listener.
func waitCert(t *testing.T, s *Server, roots *x509.CertPool) *x509.Certificate {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for s.Certificate() == nil {
		if time.Now().After(deadline) {
			t.Fatal("no certificate within 90s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(allowedSrc)}, Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", s.PublicAddr().String(), &tls.Config{ServerName: acmeDomain, RootCAs: roots, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatalf("TLS client does not verify the edge: %v", err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0]
}

// TestACMEObtainsCertificate: one edge obtains a certificate from Pebble
// (HTTP-01 or TLS-ALPN-01) and a verifying TLS client accepts it.
func TestACMEObtainsCertificate(t *testing.T) {
	publicPort, httpPort := freeTCPPort(t), freeTCPPort(t)
	p := pebbletest.Start(t, httpPort, publicPort)
	h := start(t, acmeConfig(t, p, publicPort, httpPort))
	leaf := waitCert(t, h.srv, p.Roots)
	if leaf.Subject.CommonName != acmeDomain && (len(leaf.DNSNames) == 0 || leaf.DNSNames[0] != acmeDomain) {
		t.Errorf("certificate for %v", leaf.DNSNames)
	}
	if n := p.Orders.Load(); n != 1 {
		t.Errorf("pebble saw %d orders, want 1", n)
	}
	// The challenge listener serves challenges only: no redirect, no site.
	resp, err := http.Get("http://127.0.0.1:" + itoa(httpPort) + "/stk/callback")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("challenge listener answered %d to a non-challenge request", resp.StatusCode)
	}
	// An old TLS version is refused.
	allowed := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(allowedSrc)}, Timeout: 5 * time.Second}
	if c, err := tls.DialWithDialer(allowed, "tcp", h.srv.PublicAddr().String(), &tls.Config{ServerName: acmeDomain, RootCAs: p.Roots, MaxVersion: tls.VersionTLS11}); err == nil {
		c.Close()
		t.Error("TLS 1.1 accepted")
	}
}

// TestACMESharedStorageOneCertificate: two edges sharing NATS
// (tls.storage: nats) obtain one certificate between them and both serve
// it. Pebble validates against the first edge only, so when the second wins
// the lock, the first answers its challenge from the shared storage.
func TestACMESharedStorageOneCertificate(t *testing.T) {
	publicPort, httpPort := freeTCPPort(t), freeTCPPort(t)
	p := pebbletest.Start(t, httpPort, publicPort)
	shared := func(c *config.Config) { c.TLS.Storage = "nats" }
	first := start(t, func(c *config.Config) { acmeConfig(t, p, publicPort, httpPort)(c); shared(c) })
	second := start(t, func(c *config.Config) {
		acmeConfig(t, p, freeTCPPort(t), 0)(c)
		shared(c)
		c.NATS.URL = first.srv.NATSURL()
	})
	a := waitCert(t, first.srv, p.Roots)
	b := waitCert(t, second.srv, p.Roots)
	if a.SerialNumber.Cmp(b.SerialNumber) != 0 {
		t.Errorf("the edges serve different certificates: %x and %x", a.SerialNumber, b.SerialNumber)
	}
	time.Sleep(time.Second) // a late second order would show now
	if n := p.Orders.Load(); n != 1 {
		t.Errorf("pebble saw %d orders, want exactly 1 for two edges", n)
	}
}

// TestACMEFailureNamesDomain: an ACME failure is logged with the domain and
// the reason, and the edge is not ready (and serves no plain HTTP).
func TestACMEFailureNamesDomain(t *testing.T) {
	dead := freeTCPPort(t) // nothing listens there
	h := start(t, func(c *config.Config) {
		c.PublicURL = "https://" + acmeDomain
		c.TLS.Mode = config.TLSACME
		c.TLS.ACME = config.ACME{Domains: []string{acmeDomain}, Directory: "https://127.0.0.1:" + itoa(dead) + "/dir"}
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		found := false
		for _, e := range h.logs.FilterMessage("could not obtain a certificate; retrying in the background").All() {
			m := e.ContextMap()
			if fmt.Sprint(m["domains"]) == "["+acmeDomain+"]" && strings.Contains(fmt.Sprint(m["error"]), "connection refused") {
				found = true
			}
		}
		if found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no log line naming the domain and the reason")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if status, body := h.admin(http.MethodGet, "/readyz", "", nil); status != http.StatusServiceUnavailable || !strings.Contains(string(body), "certificate") {
		t.Errorf("readyz without a certificate: %d %s", status, body)
	}
	resp, err := http.Post("http://"+h.srv.PublicAddr().String()+"/stk/callback", "application/json", strings.NewReader("{}"))
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest { // Go's "client sent an HTTP request to an HTTPS server"
			t.Errorf("plain HTTP on the public listener answered %d", resp.StatusCode)
		}
	}
}
