package forward

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/daraja-edge/daraja-edge/config"
)

// pki is a private CA with a server certificate for 127.0.0.1 and a
// client certificate, as PEM files.
type pki struct {
	caFile, clientCert, clientKey string
	pool                          *x509.CertPool
	server                        tls.Certificate
}

func newPKI(t *testing.T) pki {
	t.Helper()
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test app CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	issue := func(serial int64, cn string, usage x509.ExtKeyUsage, ips []net.IP) ([]byte, []byte, tls.Certificate) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IPAddresses: ips,
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, _ := x509.MarshalECPrivateKey(key)
		certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
		keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		return certPEM, keyPEM, pair
	}
	_, _, server := issue(2, "app", x509.ExtKeyUsageServerAuth, []net.IP{net.ParseIP("127.0.0.1")})
	cc, ck, _ := issue(3, "daraja-edge forwarder", x509.ExtKeyUsageClientAuth, nil)
	p := pki{caFile: filepath.Join(dir, "ca.pem"), clientCert: filepath.Join(dir, "client.pem"), clientKey: filepath.Join(dir, "client.key"),
		pool: x509.NewCertPool(), server: server}
	p.pool.AddCert(ca)
	for f, b := range map[string][]byte{p.caFile: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), p.clientCert: cc, p.clientKey: ck} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// newTLSApp is the app stand-in behind TLS with the private CA's
// certificate, requiring and verifying a client certificate from it; it
// speaks HTTP/2 and HTTP/1.1, and records which one each request used.
func newTLSApp(t *testing.T, p pki, secrets ...string) *app {
	a := newApp(t, secrets...)
	a.srv.Close()
	a.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.TLS.PeerCertificates) == 0 || r.TLS.PeerCertificates[0].Subject.CommonName != "daraja-edge forwarder" {
			t.Errorf("no client certificate: %+v", r.TLS.PeerCertificates)
		}
		a.serve(w, r)
	}))
	a.srv.EnableHTTP2 = true
	a.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes below
	a.srv.TLS = &tls.Config{Certificates: []tls.Certificate{p.server}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: p.pool,
		NextProtos: []string{"h2", "http/1.1"}, MinVersion: tls.VersionTLS12}
	a.srv.StartTLS()
	t.Cleanup(a.srv.Close)
	return a
}

// TestMutualTLSAndHTTP2: a destination behind TLS from a private CA
// (tls.ca_file) that requires a client certificate (tls.cert_file,
// key_file) gets every callback, verified by the reference library; with
// http2: true the requests use HTTP/2, with false HTTP/1.1. Without the
// client certificate, or without the CA, nothing gets through.
func TestMutualTLSAndHTTP2(t *testing.T) {
	p := newPKI(t)
	for _, c := range []struct {
		name  string
		http2 bool
		proto string
	}{{"http2", true, "HTTP/2.0"}, {"http1", false, "HTTP/1.1"}} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			a := newTLSApp(t, p, secretA, secretB)
			d := destination("shop", a.srv.URL+"/mpesa")
			d.TLS.CAFile, d.TLS.CertFile, d.TLS.KeyFile = p.caFile, p.clientCert, p.clientKey
			d.HTTP2 = c.http2
			f := e.start(nil, d)
			for i := range 3 {
				tx := c.name + "TX" + string(rune('0'+i))
				e.store("b2c.result", "600000", tx, "tok_abcdefghijklmnop", body("b2c.result", tx))
			}
			eventually(t, "three delivered", func() bool {
				ds, err := f.Deliveries(context.Background(), "shop", "", StateDelivered, 0)
				return err == nil && len(ds) == 3
			})
			for _, g := range a.deliveries() {
				if g.proto != c.proto {
					t.Errorf("request over %s, want %s", g.proto, c.proto)
				}
			}
		})
	}
	for _, c := range []struct {
		name, want string
		tune       func(d *config.Destination)
	}{
		{"no client certificate", "certificate", func(d *config.Destination) { d.TLS.CertFile, d.TLS.KeyFile = "", "" }},
		{"no ca_file", "certificate", func(d *config.Destination) { d.TLS.CAFile = "" }},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			a := newTLSApp(t, p, secretA, secretB)
			d := destination("shop", a.srv.URL)
			d.TLS.CAFile, d.TLS.CertFile, d.TLS.KeyFile = p.caFile, p.clientCert, p.clientKey
			c.tune(&d)
			f := e.start(nil, d)
			e.store("b2c.result", "600000", "AG_1", "tok_abcdefghijklmnop", body("b2c.result", "AG_1"))
			eventually(t, "a failed attempt recorded", func() bool {
				ds, err := f.Deliveries(context.Background(), "shop", "AG_1", "", 0)
				return err == nil && len(ds) == 1 && len(ds[0].Attempts) > 0
			})
			ds, _ := f.Deliveries(context.Background(), "shop", "AG_1", "", 0)
			if att := ds[0].Attempts[0]; att.Status != 0 || !strings.Contains(att.Error, c.want) {
				t.Errorf("attempt %+v, want a TLS error about the %s", att, c.want)
			}
			if n := len(a.deliveries()); n != 0 {
				t.Errorf("%d requests reached the app", n)
			}
		})
	}
}
