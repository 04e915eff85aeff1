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
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// Options selects where certificates come from.
type Options struct {
	// Mode is "acme", "files", "self-signed" or "off"; see config.TLS.
	Mode string
	// Hosts the certificate must cover; the first is the default name for
	// clients that send no SNI. For acme these are the domains to obtain.
	Hosts []string
	// CertFile and KeyFile are PEM files for mode "files".
	CertFile, KeyFile string
	// Storage keeps certificates, accounts and locks; nil means files
	// under StorageDir.
	Storage    certmagic.Storage
	StorageDir string
	ACME       ACMEOptions
}

// ACMEOptions configures mode "acme".
type ACMEOptions struct {
	Directory string
	Email     string
	// TrustedRoots verify the ACME directory's TLS (a private ACME CA); nil
	// means the system roots.
	TrustedRoots *x509.CertPool
	// TLSALPNPort is the public listener's port (TLS-ALPN-01 is answered
	// there); HTTPPort is the challenge listener's port, 0 disabling
	// HTTP-01.
	TLSALPNPort, HTTPPort int
}

// Manager owns the certificate cache for the public listener.
type Manager struct {
	opts   Options
	magic  *certmagic.Config
	cache  *certmagic.Cache
	issuer *certmagic.ACMEIssuer
	leaf   atomic.Pointer[x509.Certificate]
	log    *zap.Logger

	closeOnce sync.Once

	filesMu   sync.Mutex
	filesMod  [2]time.Time // mtimes of cert and key when last loaded
	filesHash string       // cache key of the certificate loaded from them
}

// New loads or generates the certificate for o (mode acme: prepares the
// issuer; Start obtains). Mode "off" returns a nil Manager and no error.
func New(ctx context.Context, o Options, log *zap.Logger) (*Manager, error) {
	if log == nil {
		log = zap.NewNop()
	}
	log = log.Named("tls")
	switch o.Mode {
	case "off":
		return nil, nil
	case "self-signed", "files", "acme":
	default:
		return nil, fmt.Errorf("certs: unknown tls.mode %q", o.Mode)
	}
	m := &Manager{opts: o, log: log}
	var magic *certmagic.Config
	m.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) { return magic, nil },
		Logger:           log,
	})
	storage := o.Storage
	if storage == nil {
		storage = &certmagic.FileStorage{Path: o.StorageDir}
	}
	magic = certmagic.New(m.cache, certmagic.Config{Storage: storage, Logger: log})
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
		m.leaf.Store(cert.Leaf)
		log.Warn("serving a self-signed certificate: Daraja will refuse it; use tls.mode acme or files in production",
			zap.Strings("hosts", o.Hosts))
	case "files":
		if err := m.loadFiles(ctx); err != nil {
			m.Close()
			return nil, err
		}
	case "acme":
		if len(o.Hosts) == 0 {
			m.Close()
			return nil, errors.New("certs: tls.mode acme needs at least one domain")
		}
		m.issuer = certmagic.NewACMEIssuer(magic, certmagic.ACMEIssuer{
			CA:                   o.ACME.Directory,
			Email:                o.ACME.Email,
			Agreed:               true,
			TrustedRoots:         o.ACME.TrustedRoots,
			DisableHTTPChallenge: o.ACME.HTTPPort == 0,
			AltHTTPPort:          o.ACME.HTTPPort,
			AltTLSALPNPort:       o.ACME.TLSALPNPort,
			Logger:               log,
		})
		magic.Issuers = []certmagic.Issuer{m.issuer}
		magic.OnEvent = m.onEvent
	}
	return m, nil
}

// Start obtains and then renews the ACME certificate in the background; the
// public listener (TLS-ALPN-01) and the challenge listener (HTTP-01) must
// already be serving. A failure is logged with the domain and the reason,
// and retried with backoff. Other modes: nothing to do.
func (m *Manager) Start(ctx context.Context) {
	if m == nil || m.issuer == nil {
		return
	}
	domains := m.opts.Hosts
	// ManageAsync is the non-interactive path: certmagic's interactive one
	// (ManageSync) prompts on stdin for an e-mail address when none is
	// configured, which would stall a daemon started from a terminal.
	// Failures and successes reach the log through OnEvent (set in New).
	if err := m.magic.ManageAsync(ctx, domains); err != nil {
		m.log.Error("certificate management stopped", zap.Strings("domains", domains), zap.Error(err))
	}
}

// onEvent logs certmagic's certificate outcomes with the domain and the
// reason an operator needs.
func (m *Manager) onEvent(_ context.Context, event string, data map[string]any) error {
	switch event {
	case "cert_failed":
		err, _ := data["error"].(error)
		m.log.Error("could not obtain a certificate; retrying in the background",
			zap.Strings("domains", []string{fmt.Sprint(data["identifier"])}),
			zap.String("directory", m.opts.ACME.Directory),
			zap.Bool("renewal", data["renewal"] == true), zap.Error(err))
	case "cert_obtained":
		m.log.Info("certificate ready", zap.Strings("domains", []string{fmt.Sprint(data["identifier"])}),
			zap.Bool("renewal", data["renewal"] == true))
	}
	return nil
}

// HTTPChallengeHandler answers ACME HTTP-01 challenges and nothing else:
// every other request is a 404, never a redirect.
func (m *Manager) HTTPChallengeHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if m != nil && m.issuer != nil && m.issuer.HandleHTTPChallenge(w, r) {
			return
		}
		http.NotFound(w, r)
	})
}

func (m *Manager) loadFiles(ctx context.Context) error {
	certFile, keyFile := m.opts.CertFile, m.opts.KeyFile
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return fmt.Errorf("certs: tls.cert_file %s: %w", certFile, err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return fmt.Errorf("certs: tls.key_file %s: %w", keyFile, err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("certs: tls.cert_file %s with tls.key_file %s: %w", certFile, keyFile, err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return fmt.Errorf("certs: tls.cert_file %s: %w", certFile, err)
	}
	if time.Now().After(leaf.NotAfter) {
		return fmt.Errorf("certs: tls.cert_file %s expired at %s", certFile, leaf.NotAfter.Format(time.RFC3339))
	}
	// The new certificate joins the cache, then the old one leaves it, so
	// every handshake finds one and the next serves the new; open
	// connections go on. (certmagic's CacheUnmanagedCertificatePEMBytes-
	// AsReplacement would do both, but deadlocks in v0.25.6.)
	hash, err := m.magic.CacheUnmanagedCertificatePEMBytes(ctx, certPEM, keyPEM, nil)
	if err != nil {
		return fmt.Errorf("certs: tls.cert_file %s: %w", certFile, err)
	}
	m.filesMu.Lock()
	if m.filesHash != "" && m.filesHash != hash {
		m.cache.Remove([]string{m.filesHash})
	}
	m.filesHash = hash
	m.filesMod = [2]time.Time{modTime(certFile), modTime(keyFile)}
	m.filesMu.Unlock()
	m.leaf.Store(leaf)
	m.log.Info("certificate loaded", zap.String("cert_file", certFile), zap.Strings("names", leaf.DNSNames),
		zap.String("serial", leaf.SerialNumber.Text(16)), zap.Time("not_after", leaf.NotAfter))
	return nil
}

func modTime(path string) time.Time {
	st, err := os.Stat(path)
	if err != nil {
		return time.Time{}
	}
	return st.ModTime()
}

// Reload re-reads the certificate files (mode files); a bad pair is refused
// and the current certificate stays. Other modes: nothing to do.
func (m *Manager) Reload(ctx context.Context) error {
	if m == nil || m.opts.Mode != "files" {
		return nil
	}
	return m.loadFiles(ctx)
}

// WatchFiles reloads the certificate files when they change (mode files),
// checking every interval until ctx ends.
func (m *Manager) WatchFiles(ctx context.Context, interval time.Duration) {
	if m == nil || m.opts.Mode != "files" {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			m.filesMu.Lock()
			changed := m.filesMod != [2]time.Time{modTime(m.opts.CertFile), modTime(m.opts.KeyFile)}
			m.filesMu.Unlock()
			if !changed {
				continue
			}
			if err := m.loadFiles(ctx); err != nil {
				m.log.Error("certificate files changed but cannot be loaded; keeping the current certificate", zap.Error(err))
				m.filesMu.Lock()
				m.filesMod = [2]time.Time{modTime(m.opts.CertFile), modTime(m.opts.KeyFile)} // do not retry until they change again
				m.filesMu.Unlock()
			}
		}
	}
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

// Leaf is the certificate being served (nil until one is loaded), for
// readiness, metrics and tests.
func (m *Manager) Leaf() *x509.Certificate {
	if m == nil {
		return nil
	}
	if m.issuer != nil {
		for _, c := range m.cache.AllMatchingCertificates(m.opts.Hosts[0]) {
			if c.Leaf != nil {
				return c.Leaf
			}
		}
		return nil
	}
	return m.leaf.Load()
}

// Close stops certificate maintenance. Safe on a nil Manager and twice.
func (m *Manager) Close() {
	if m != nil && m.cache != nil {
		m.closeOnce.Do(m.cache.Stop)
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

// ChallengePending reports whether an ACME challenge that this process
// presented is pending for one of its domains: the CA's validators may be
// connecting now, from addresses no allowlist holds. A challenge presented
// by another replica sharing the storage is not seen here.
func (m *Manager) ChallengePending() bool {
	if m == nil || m.issuer == nil {
		return false
	}
	for _, d := range m.opts.Hosts {
		if _, ok := certmagic.GetACMEChallenge(d); ok {
			return true
		}
	}
	return false
}
