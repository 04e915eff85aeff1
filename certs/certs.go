// Package certs provides the public listener's TLS: certificates managed by
// certmagic, from files or generated self-signed for local use, behind one
// TLS policy (TLS 1.2 or newer, AEAD suites, HTTP/2 and HTTP/1.1).
package certs

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// Options selects where certificates come from.
type Options struct {
	// Mode is "self-signed", "files" or "off"; see config.TLS.
	Mode string
	// Hosts the certificate must cover; the first is the default name for
	// clients that send no SNI.
	Hosts []string
	// CertFile and KeyFile are PEM files for mode "files".
	CertFile, KeyFile string
	// StorageDir is certmagic's storage directory.
	StorageDir string
}

// Manager owns the certificate cache for the public listener.
type Manager struct {
	magic *certmagic.Config
	cache *certmagic.Cache
	leaf  *x509.Certificate
	log   *zap.Logger
}

// ErrACMENotBuilt is returned for tls.mode acme, which this build does not
// serve yet.
var ErrACMENotBuilt = errors.New("certs: tls.mode acme is not available in this version; use files or self-signed")

// New loads or generates the certificate for o. Mode "off" returns a nil
// Manager and no error.
func New(ctx context.Context, o Options, log *zap.Logger) (*Manager, error) {
	if log == nil {
		log = zap.NewNop()
	}
	log = log.Named("tls")
	switch o.Mode {
	case "off":
		return nil, nil
	case "self-signed", "files":
	case "acme":
		return nil, ErrACMENotBuilt
	default:
		return nil, fmt.Errorf("certs: unknown tls.mode %q", o.Mode)
	}
	m := &Manager{log: log}
	var magic *certmagic.Config
	m.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) { return magic, nil },
		Logger:           log,
	})
	magic = certmagic.New(m.cache, certmagic.Config{
		Storage: &certmagic.FileStorage{Path: o.StorageDir},
		Logger:  log,
	})
	if len(o.Hosts) > 0 {
		magic.DefaultServerName = o.Hosts[0]
	}
	m.magic = magic

	switch o.Mode {
	case "self-signed":
		cert, err := SelfSigned(o.Hosts, 365*24*time.Hour)
		if err != nil {
			m.Close()
			return nil, err
		}
		if _, err := magic.CacheUnmanagedTLSCertificate(ctx, cert, nil); err != nil {
			m.Close()
			return nil, fmt.Errorf("certs: cache self-signed certificate: %w", err)
		}
		m.leaf = cert.Leaf
		log.Warn("serving a self-signed certificate: Daraja will refuse it; use tls.mode acme or files in production",
			zap.Strings("hosts", o.Hosts))
	case "files":
		if err := m.loadFiles(ctx, o.CertFile, o.KeyFile); err != nil {
			m.Close()
			return nil, err
		}
	}
	return m, nil
}

func (m *Manager) loadFiles(ctx context.Context, certFile, keyFile string) error {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return fmt.Errorf("certs: tls.cert_file %s with tls.key_file %s: %w", certFile, keyFile, err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return fmt.Errorf("certs: tls.cert_file %s: %w", certFile, err)
	}
	if _, err := m.magic.CacheUnmanagedCertificatePEMFile(ctx, certFile, keyFile, nil); err != nil {
		return fmt.Errorf("certs: tls.cert_file %s: %w", certFile, err)
	}
	m.leaf = leaf
	m.log.Info("certificate loaded", zap.String("cert_file", certFile), zap.Strings("names", leaf.DNSNames),
		zap.Time("not_after", leaf.NotAfter))
	return nil
}

// TLSConfig is the public listener's TLS configuration.
func (m *Manager) TLSConfig() *tls.Config {
	c := m.magic.TLSConfig()
	c.MinVersion = tls.VersionTLS12
	c.CipherSuites = []uint16{ // TLS 1.2 only; TLS 1.3 suites are all strong
		tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
		tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
		tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
		tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
		tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
		tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
	}
	return c
}

// Leaf is the certificate being served, for readiness and for tests that
// must trust a self-signed one.
func (m *Manager) Leaf() *x509.Certificate {
	if m == nil {
		return nil
	}
	return m.leaf
}

// Close stops certificate maintenance. Safe on a nil Manager and twice.
func (m *Manager) Close() {
	if m != nil && m.cache != nil {
		m.cache.Stop()
		m.cache = nil
	}
}

// SelfSigned generates an ECDSA P-256 certificate for hosts (names or IP
// addresses), valid for validity from now.
func SelfSigned(hosts []string, validity time.Duration) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certs: generate key: %w", err)
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "daraja-edge self-signed", Organization: []string{"daraja-edge"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certs: self-sign: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}
