package edge

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	pebbleca "github.com/letsencrypt/pebble/v2/ca"
	pebbledb "github.com/letsencrypt/pebble/v2/db"
	pebbleva "github.com/letsencrypt/pebble/v2/va"
	pebblewfe "github.com/letsencrypt/pebble/v2/wfe"
	"github.com/miekg/dns"

	"github.com/daraja-edge/daraja-edge/config"
)

const acmeDomain = "callbacks.edge.test"

// pebble is an in-process ACME server (Pebble) on loopback, validating
// challenges against httpPort and tlsPort on 127.0.0.1.
type pebble struct {
	dir    string         // directory URL
	caRoot string         // PEM file of the directory's own TLS certificate
	roots  *x509.CertPool // Pebble's issuing root: trusted by test clients only
	orders atomic.Int32   // new-order requests seen
}

func startPebble(t *testing.T, httpPort, tlsPort int) *pebble {
	t.Helper()
	t.Setenv("PEBBLE_VA_NOSLEEP", "1")
	t.Setenv("PEBBLE_WFE_NONCEREJECT", "0")
	t.Setenv("PEBBLE_AUTHZREUSE", "0")
	logger := log.New(io.Discard, "", 0)
	db := pebbledb.NewMemoryStore()
	ca := pebbleca.New(logger, db, "", "ecdsa", 0, 1, map[string]pebbleca.Profile{"default": {Description: "default"}})
	va := pebbleva.New(logger, httpPort, tlsPort, false, startDNS(t), db)
	wfe := pebblewfe.New(logger, db, va, ca, []string{"pebble.letsencrypt.org"}, false, false, 0, 0)
	p := &pebble{}
	h := wfe.Handler()
	ts := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.URL.Path == "/order-plz" {
			p.orders.Add(1)
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(ts.Close)
	p.dir = ts.URL + "/dir"
	p.caRoot = filepath.Join(t.TempDir(), "acme-ca.pem")
	if err := os.WriteFile(p.caRoot, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ts.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	p.roots = x509.NewCertPool()
	p.roots.AddCert(ca.GetRootCert(0).Cert)
	return p
}

// startDNS answers every A query with 127.0.0.1 (and nothing else), so
// Pebble's validation of acmeDomain reaches the edge on loopback.
func startDNS(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{Listener: ln, Net: "tcp", Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		for _, q := range r.Question {
			if q.Qtype == dns.TypeA {
				m.Answer = append(m.Answer, &dns.A{
					Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
					A:   net.ParseIP("127.0.0.1"),
				})
			}
		}
		_ = w.WriteMsg(m)
	})}
	go func() { _ = srv.ActivateAndServe() }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	return ln.Addr().String()
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func acmeConfig(t *testing.T, p *pebble, publicPort, httpPort int) func(*config.Config) {
	return func(c *config.Config) {
		c.PublicURL = "https://" + acmeDomain
		c.Listen = net.JoinHostPort("127.0.0.1", itoa(publicPort))
		c.TLS.Mode = config.TLSACME
		c.TLS.ACME = config.ACME{Domains: []string{acmeDomain}, Email: "ops@edge.test", Directory: p.dir, CARoot: p.caRoot}
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
	conn, err := tls.Dial("tcp", s.PublicAddr().String(), &tls.Config{ServerName: acmeDomain, RootCAs: roots, MinVersion: tls.VersionTLS12})
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
	p := startPebble(t, httpPort, publicPort)
	h := start(t, acmeConfig(t, p, publicPort, httpPort))
	leaf := waitCert(t, h.srv, p.roots)
	if leaf.Subject.CommonName != acmeDomain && (len(leaf.DNSNames) == 0 || leaf.DNSNames[0] != acmeDomain) {
		t.Errorf("certificate for %v", leaf.DNSNames)
	}
	if n := p.orders.Load(); n != 1 {
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
	if c, err := tls.Dial("tcp", h.srv.PublicAddr().String(), &tls.Config{ServerName: acmeDomain, RootCAs: p.roots, MaxVersion: tls.VersionTLS11}); err == nil {
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
	p := startPebble(t, httpPort, publicPort)
	shared := func(c *config.Config) { c.TLS.Storage = "nats" }
	first := start(t, func(c *config.Config) { acmeConfig(t, p, publicPort, httpPort)(c); shared(c) })
	second := start(t, func(c *config.Config) {
		acmeConfig(t, p, freeTCPPort(t), 0)(c)
		shared(c)
		c.NATS.URL = first.srv.NATSURL()
	})
	a := waitCert(t, first.srv, p.roots)
	b := waitCert(t, second.srv, p.roots)
	if a.SerialNumber.Cmp(b.SerialNumber) != 0 {
		t.Errorf("the edges serve different certificates: %x and %x", a.SerialNumber, b.SerialNumber)
	}
	time.Sleep(time.Second) // a late second order would show now
	if n := p.orders.Load(); n != 1 {
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
