//go:build powercut

package powercut

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/daraja-edge/daraja-edge/internal/lazyfs"
	"github.com/daraja-edge/daraja-edge/internal/pebbletest"
)

// acmeDomain is the name the edge obtains a certificate for; the test's
// DNS server answers it (and everything else) with 127.0.0.1.
const acmeDomain = "callbacks.edge.test"

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
			p := pebbletest.Start(t, httpPort, publicPort)
			conf := edgeConf{
				public: public, admin: freeAddr(t), embedded: freeAddr(t),
				storeDir: filepath.Join(lfs.MountPoint(), "nats"), spoolDir: filepath.Join(lfs.MountPoint(), "spool"),
				sync: c.sync, certStorage: "nats", dataDir: t.TempDir(),
				acme: &acmeConf{domain: acmeDomain, directory: p.Dir, caRoot: p.CARoot, httpListen: httpListen},
			}
			path, _ := writeConf(t, conf)
			a := newAPI(conf.public, conf.admin, p.Roots, nil)
			ch := startChild(t, "edge", "edge", path, "")
			a.waitReady(t, ch, 90*time.Second) // ready once it holds a certificate
			first := servedCertificate(t, conf.public, p.Roots)
			orders := p.Orders.Load()
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
			startInProcess(t, path, p.Roots)
			again := servedCertificate(t, conf.public, p.Roots)
			same := again.SerialNumber.Cmp(first.SerialNumber) == 0
			newOrders := p.Orders.Load() - orders
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
