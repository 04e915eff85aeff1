//go:build powercut

package powercut

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
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pebbleca "github.com/letsencrypt/pebble/v2/ca"
	pebbledb "github.com/letsencrypt/pebble/v2/db"
	pebbleva "github.com/letsencrypt/pebble/v2/va"
	pebblewfe "github.com/letsencrypt/pebble/v2/wfe"
	"github.com/miekg/dns"

	"github.com/daraja-edge/daraja-edge/internal/lazyfs"
)

// acmeDomain is the name the edge obtains a certificate for; the test's
// DNS server answers it (and everything else) with 127.0.0.1.
const acmeDomain = "callbacks.edge.test"

// pebble is an in-process ACME server (Pebble) on loopback, validating
// challenges against httpPort and tlsPort on 127.0.0.1 (the same as
// edge/acme_test.go's).
type pebble struct {
	dir    string         // directory URL
	caRoot string         // PEM file of the directory's own TLS certificate
	roots  *x509.CertPool // Pebble's issuing root
	orders atomic.Int32   // new-order requests seen
}

var pebbleEnv sync.Once

func startPebble(t *testing.T, httpPort, tlsPort int) *pebble {
	t.Helper()
	// Process-wide (t.Setenv is refused in parallel tests); read by Pebble
	// when it starts.
	pebbleEnv.Do(func() {
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

// startDNS answers every A query with 127.0.0.1, so Pebble's validation
// reaches the edge on loopback.
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

// servedCertificate is the certificate a verifying client sees on the
// edge's public listener (dialled from the allowlisted source).
func servedCertificate(t *testing.T, public string, roots *x509.CertPool) *x509.Certificate {
	t.Helper()
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}}
	conn, err := tls.DialWithDialer(d, "tcp", public, &tls.Config{ServerName: acmeDomain, RootCAs: roots, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatalf("TLS client does not verify the edge: %v", err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0]
}

// testACMECertificate: an edge in acme mode with tls.storage nats (its
// embedded NATS store on a lazy filesystem, strict POSIX, first start)
// obtains a certificate from Pebble; the power is cut; a new edge on what
// survived serves the same certificate without a new order. The control
// (nats.embedded.sync 2m) must lose it: a new order, another certificate.
func testACMECertificate(t *testing.T) {
	for _, c := range []struct {
		name, sync string
		control    bool
	}{{name: "sync-always"}, {name: "control-sync-2m", sync: "2m", control: true}} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			lfs := lazyfs.MountT(t, "", lazyfs.Options{Namespace: lazyfs.StrictNamespace})
			public, httpListen := freeAddr(t), freeAddr(t)
			_, pp, _ := net.SplitHostPort(public)
			_, hp, _ := net.SplitHostPort(httpListen)
			publicPort, _ := strconv.Atoi(pp)
			httpPort, _ := strconv.Atoi(hp)
			p := startPebble(t, httpPort, publicPort)
			conf := edgeConf{
				public: public, admin: freeAddr(t), embedded: freeAddr(t),
				storeDir: filepath.Join(lfs.MountPoint(), "nats"), spoolDir: filepath.Join(lfs.MountPoint(), "spool"),
				sync: c.sync, certStorage: "nats", dataDir: t.TempDir(),
				acme: &acmeConf{domain: acmeDomain, directory: p.dir, caRoot: p.caRoot, httpListen: httpListen},
			}
			path, _ := writeConf(t, conf)
			a := newAPI(conf.public, conf.admin, p.roots, nil)
			ch := startChild(t, "edge", "edge", path, "")
			a.waitReady(t, ch, 90*time.Second) // ready once it holds a certificate
			first := servedCertificate(t, conf.public, p.roots)
			orders := p.orders.Load()
			ch.kill(t)
			if err := lfs.Crash(); err != nil {
				t.Fatal(err)
			}
			a.close()
			st := lfs.Stats()
			t.Logf("cut after the certificate %x (%d order); lazyfs %+v", first.SerialNumber, orders, st)

			// The same ports: a new order (the control's) is validated
			// against them.
			conf.storeDir, conf.spoolDir = filepath.Join(lfs.BackingDir(), "nats"), filepath.Join(lfs.BackingDir(), "spool")
			conf.admin, conf.embedded = "127.0.0.1:0", "127.0.0.1:0"
			path, _ = writeConf(t, conf)
			startInProcess(t, path, p.roots)
			again := servedCertificate(t, conf.public, p.roots)
			same := again.SerialNumber.Cmp(first.SerialNumber) == 0
			newOrders := p.orders.Load() - orders
			line := fmt.Sprintf("POWERCUT acme-nats-storage/%s orders_before=%d new_orders=%d same_certificate=%t", c.name, orders, newOrders, same)
			t.Log(line)
			fmt.Fprintln(os.Stderr, line)
			if c.control {
				if same && newOrders == 0 {
					t.Fatal("the control kept its certificate: this test cannot see a loss")
				}
				return
			}
			if orders != 1 {
				t.Errorf("%d orders before the cut, want 1", orders)
			}
			if !same {
				t.Errorf("after the cut the edge serves certificate %x, not %x", again.SerialNumber, first.SerialNumber)
			}
			if newOrders != 0 {
				t.Errorf("after the cut the edge placed %d new orders, want none", newOrders)
			}
		})
	}
}
