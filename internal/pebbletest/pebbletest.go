// Package pebbletest runs an in-process ACME CA (Pebble) on loopback for
// tests, with a DNS server that answers every name with 127.0.0.1, so a
// test edge obtains real ACME certificates without the internet.
package pebbletest

import (
	"crypto/x509"
	"encoding/pem"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	pebbleca "github.com/letsencrypt/pebble/v2/ca"
	pebbledb "github.com/letsencrypt/pebble/v2/db"
	pebbleva "github.com/letsencrypt/pebble/v2/va"
	pebblewfe "github.com/letsencrypt/pebble/v2/wfe"
	"github.com/miekg/dns"
)

// CA is a running Pebble.
type CA struct {
	Dir    string         // the ACME directory URL
	CARoot string         // PEM file of the directory's own TLS certificate (tls.acme.ca_root)
	Roots  *x509.CertPool // Pebble's issuing root: trusted by test clients only
	Orders atomic.Int32   // new-order requests seen
}

var env sync.Once

// Start runs Pebble until the test ends. It validates challenges against
// httpPort (HTTP-01) and tlsPort (TLS-ALPN-01) on 127.0.0.1.
func Start(t testing.TB, httpPort, tlsPort int) *CA {
	t.Helper()
	// Process-wide (t.Setenv is refused in parallel tests); Pebble reads
	// them when it starts: no validation sleep, no nonce rejections, no
	// authorization reuse (each order is validated).
	env.Do(func() {
		for k, v := range map[string]string{"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"} {
			if err := os.Setenv(k, v); err != nil {
				t.Fatal(err)
			}
		}
	})
	logger := log.New(io.Discard, "", 0)
	db := pebbledb.NewMemoryStore()
	ca := pebbleca.New(logger, db, "", "ecdsa", 0, 1, map[string]pebbleca.Profile{"default": {Description: "default"}})
	va := pebbleva.New(logger, httpPort, tlsPort, false, startDNS(t), db)
	wfe := pebblewfe.New(logger, db, va, ca, []string{"pebble.letsencrypt.org"}, false, false, 0, 0)
	c := &CA{}
	h := wfe.Handler()
	ts := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.URL.Path == "/order-plz" {
			c.Orders.Add(1)
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(ts.Close)
	c.Dir = ts.URL + "/dir"
	c.CARoot = filepath.Join(t.TempDir(), "acme-ca.pem")
	if err := os.WriteFile(c.CARoot, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ts.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	c.Roots = x509.NewCertPool()
	c.Roots.AddCert(ca.GetRootCert(0).Cert)
	return c
}

// startDNS answers every A query with 127.0.0.1 (and nothing else), so
// Pebble's validation reaches the edge on loopback.
func startDNS(t testing.TB) string {
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
