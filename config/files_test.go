package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writePair writes a self-signed certificate and its key to dir/name.crt
// and dir/name.key.
func writePair(t *testing.T, dir, name string) (certPath, keyPath string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, DNSNames: []string{"localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath
}

// TestKeyPairs: a certificate and a key that do not belong together are a
// problem for check, not a failure at serve's start (issue 13).
func TestKeyPairs(t *testing.T) {
	dir := t.TempDir()
	certA, keyA := writePair(t, dir, "a")
	_, keyB := writePair(t, dir, "b")
	notPEM := filepath.Join(dir, "junk.pem")
	os.WriteFile(notPEM, []byte("not a certificate"), 0o600)

	tests := []struct {
		name, yaml, want string // want "" means it loads
	}{
		{"files match", "tls: {mode: files, cert_file: " + certA + ", key_file: " + keyA + "}\n", ""},
		{"files mismatch", "tls: {mode: files, cert_file: " + certA + ", key_file: " + keyB + "}\n",
			`tls.cert_file: "` + certA + `" with tls.key_file "` + keyB + `" is not a usable certificate and key: tls: private key does not match public key`},
		{"files junk", "tls: {mode: files, cert_file: " + notPEM + ", key_file: " + keyA + "}\n",
			`tls.cert_file: "` + notPEM + `" with tls.key_file`},
		{"admin match", "admin: {cert_file: " + certA + ", tls_key_file: " + keyA + "}\n", ""},
		{"admin mismatch", "admin: {cert_file: " + certA + ", tls_key_file: " + keyB + "}\n",
			`admin.cert_file: "` + certA + `" with admin.tls_key_file "` + keyB + `" is not a usable certificate and key`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lines := problemLines(t, tt.yaml, noEnv)
			if tt.want == "" {
				if len(lines) > 0 {
					t.Fatalf("problems: %q", lines)
				}
				return
			}
			for _, l := range lines {
				if strings.HasPrefix(l, tt.want) {
					return
				}
			}
			t.Errorf("missing %q in %q", tt.want, lines)
		})
	}
}

// TestCheckEnvironment: directories the edge writes are checked as serve
// will use them, and the check leaves nothing behind.
func TestCheckEnvironment(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "a-file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	existing := filepath.Join(dir, "spool")
	if err := os.Mkdir(existing, 0o700); err != nil {
		t.Fatal(err)
	}
	readOnly := filepath.Join(dir, "ro")
	if err := os.Mkdir(readOnly, 0o500); err != nil {
		t.Fatal(err)
	}
	// Root ignores permission bits; /proc refuses new files even to root.
	unwritable := readOnly
	if os.Geteuid() == 0 {
		unwritable = "/proc/self"
	}

	base := Default()
	base.Admin.APIKeys = []string{"0123456789abcdef-key"} // no key_file to generate
	tests := []struct {
		name string
		set  func(c *Config)
		want []string // problem prefixes; none means it passes
	}{
		{"existing and missing-but-creatable", func(c *Config) {
			c.Spool.Dir = existing
			c.NATS.Embedded.StoreDir = filepath.Join(dir, "not", "yet", "there")
		}, nil},
		{"a file in the way", func(c *Config) {
			c.Spool.Dir = file
			c.NATS.Embedded.StoreDir = filepath.Join(file, "nats")
		}, []string{
			`spool.dir: "` + file + `" is a file, not a directory`,
			`nats.embedded.store_dir: "` + filepath.Join(file, "nats") + `" cannot be created: ` + file + ` is a file, not a directory`,
		}},
		{"not writable", func(c *Config) {
			c.Spool.Dir = unwritable
			c.NATS.Embedded.StoreDir = filepath.Join(unwritable, "nats")
		}, []string{
			`spool.dir: "` + unwritable + `" is not writable: `,
			`nats.embedded.store_dir: "` + filepath.Join(unwritable, "nats") + `" cannot be created: ` + unwritable + ` is not writable: `,
		}},
		{"store dir ignored with a cluster", func(c *Config) {
			c.Spool.Dir = existing
			c.NATS.URL = "nats://n1:4222"
			c.NATS.Embedded.StoreDir = file
		}, nil},
		{"acme storage", func(c *Config) {
			c.Spool.Dir = existing
			c.TLS.Mode, c.TLS.Storage = TLSACME, file
		}, []string{`tls.storage: "` + file + `" is a file`}},
		{"acme storage in nats", func(c *Config) {
			c.Spool.Dir = existing
			c.TLS.Mode, c.TLS.Storage = TLSACME, "nats"
		}, nil},
		{"generated key file", func(c *Config) {
			c.Spool.Dir = existing
			c.Admin.APIKeys = []string{""}
			c.Admin.KeyFile = filepath.Join(file, "admin.key")
		}, []string{`admin.key_file: "` + file + `" is a file`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base
			c.NATS.Embedded.StoreDir = filepath.Join(dir, "nats")
			tt.set(&c)
			var lines []string
			for _, p := range Problems(CheckEnvironment(c)) {
				lines = append(lines, p.Error())
			}
			if len(lines) != len(tt.want) {
				t.Fatalf("problems %q, want %d", lines, len(tt.want))
			}
			for i, w := range tt.want {
				if !strings.HasPrefix(lines[i], w) {
					t.Errorf("problem %q, want prefix %q", lines[i], w)
				}
			}
		})
	}
	// Nothing left behind: no probe file, no directory created.
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if strings.Join(names, ",") != "a-file,ro,spool" {
		t.Errorf("check left %q in its directory", names)
	}
	if e, _ := os.ReadDir(existing); len(e) != 0 {
		t.Errorf("check left %d files in the spool directory", len(e))
	}
}
