// Package edge assembles a running daraja-edge from its configuration: NATS
// (embedded or remote), the stream and token bucket, TLS, the public
// callback listener and the admin listener, with graceful shutdown.
package edge

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/daraja-edge/daraja-edge/admin"
	"github.com/daraja-edge/daraja-edge/allowlist"
	"github.com/daraja-edge/daraja-edge/broker"
	"github.com/daraja-edge/daraja-edge/certs"
	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/proxy"
	"github.com/daraja-edge/daraja-edge/publish"
	"github.com/daraja-edge/daraja-edge/verify"
)

// publishTimeout bounds the wait for a JetStream ack on the hot path.
const publishTimeout = 3 * time.Second

// shutdownGrace is how long in-flight requests get to finish on stop.
const shutdownGrace = 15 * time.Second

// Server is a running daraja-edge.
type Server struct {
	cfg     config.Config
	log     *zap.Logger
	name    string
	broker  *broker.Broker
	stream  jetstream.Stream
	certs   *certs.Manager
	handler *proxy.Handler

	public, admin     *http.Server
	publicLn, adminLn net.Listener

	closeOnce sync.Once
}

// New builds the edge and binds its listeners; Run serves. On error
// everything started so far is stopped.
func New(ctx context.Context, cfg config.Config, log *zap.Logger) (s *Server, err error) {
	if log == nil {
		log = zap.NewNop()
	}
	name, _ := os.Hostname()
	if name == "" {
		name = "daraja-edge"
	}
	s = &Server{cfg: cfg, log: log, name: name}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()

	policy, err := BuildPolicy(cfg)
	if err != nil {
		return nil, err
	}
	s.broker, err = broker.Start(ctx, broker.Options{
		URL: cfg.NATS.URL, CredentialsFile: cfg.NATS.CredentialsFile,
		EmbeddedListen: cfg.NATS.Embedded.Listen, EmbeddedStoreDir: cfg.NATS.Embedded.StoreDir,
		Name: name,
	}, log)
	if err != nil {
		return nil, err
	}
	subjects := publish.Subjects{Prefix: cfg.NATS.SubjectPrefix}
	s.stream, err = publish.EnsureStream(ctx, s.broker.JetStream, publish.StreamOptions{
		Name: cfg.NATS.Stream.Name, Subjects: subjects.StreamSubjects(), Replicas: cfg.NATS.Stream.Replicas,
		DuplicateWindow: cfg.NATS.Stream.DuplicateWindow, MaxAge: cfg.NATS.Stream.MaxAge,
	})
	if err != nil {
		return nil, err
	}
	store, err := verify.NewStore(ctx, s.broker.JetStream, verify.StoreOptions{
		Bucket:   TokenBucket(cfg.NATS.SubjectPrefix),
		Replicas: cfg.NATS.Stream.Replicas,
		Retain:   cfg.Tokens.MaxTTL + 7*24*time.Hour,
	}, log)
	if err != nil {
		return nil, err
	}
	issuer := &verify.Issuer{
		Store: store, PublicURL: cfg.PublicURL, QueryParam: cfg.Tokens.QueryParam,
		Limits: verify.Limits{DefaultTTL: cfg.Tokens.DefaultTTL, MaxTTL: cfg.Tokens.MaxTTL},
	}

	pub := publish.New(s.broker.Conn, s.broker.JetStream, publishTimeout)
	s.handler = proxy.New(proxy.Options{
		Tokens: store, Publisher: pub, Requester: pub, Notifier: pub,
		Subjects: subjects, QueryParam: cfg.Tokens.QueryParam, Edge: name,
		ValidationTimeout: cfg.Validation.Timeout,
		RejectOnTimeout:   cfg.Validation.OnTimeout == config.OnTimeoutReject,
		Log:               log,
	}, policy)

	s.certs, err = certs.New(ctx, certs.Options{
		Mode: cfg.TLS.Mode, Hosts: certHosts(cfg), CertFile: cfg.TLS.CertFile, KeyFile: cfg.TLS.KeyFile,
		StorageDir: cfg.TLS.Storage,
	}, log)
	if err != nil {
		return nil, err
	}

	keys, err := adminKeys(cfg.Admin, log)
	if err != nil {
		return nil, err
	}

	s.public = &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: cfg.Limits.ReadHeaderTimeout,
		ReadTimeout:       cfg.Limits.ReadTimeout,
		WriteTimeout:      cfg.Limits.WriteTimeout,
		IdleTimeout:       cfg.Limits.IdleTimeout,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          zap.NewStdLog(log.Named("http").WithOptions(zap.IncreaseLevel(zap.WarnLevel))),
	}
	if s.certs != nil {
		s.public.TLSConfig = s.certs.TLSConfig()
	}
	s.admin = &http.Server{
		Handler: admin.Handler(admin.Options{
			Tokens: issuer, APIKeys: keys, Ready: s.ready, Log: log,
		}),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
	}
	var lc net.ListenConfig
	if s.publicLn, err = lc.Listen(ctx, "tcp", cfg.Listen); err != nil {
		return nil, fmt.Errorf("edge: listen %s: %w", cfg.Listen, err)
	}
	if s.adminLn, err = lc.Listen(ctx, "tcp", cfg.Admin.Listen); err != nil {
		return nil, fmt.Errorf("edge: admin.listen %s: %w", cfg.Admin.Listen, err)
	}
	return s, nil
}

// BuildPolicy turns the reloadable part of cfg into the handler's policy.
func BuildPolicy(cfg config.Config) (*proxy.Policy, error) {
	allow, err := allowlist.New(cfg.Allowlist.Presets, cfg.Allowlist.CIDRs)
	if err != nil {
		return nil, err
	}
	trusted, err := allowlist.New(nil, cfg.ClientIP.TrustedProxies)
	if err != nil {
		return nil, fmt.Errorf("client_ip.trusted_proxies: %w", err)
	}
	return &proxy.Policy{
		Allow:        allow,
		ReportOnly:   cfg.Allowlist.Mode == config.AllowlistReport,
		ClientIP:     proxy.NewClientIP(trusted),
		MaxBodyBytes: cfg.Limits.MaxBodyBytes,
	}, nil
}

// TokenBucket is the key-value bucket holding tokens for a subject prefix.
func TokenBucket(prefix string) string {
	return strings.ReplaceAll(prefix, ".", "_") + "_tokens"
}

func certHosts(cfg config.Config) []string {
	var hosts []string
	if u, err := url.Parse(cfg.PublicURL); err == nil && u.Hostname() != "" {
		hosts = append(hosts, u.Hostname())
	}
	hosts = append(hosts, cfg.TLS.ACME.Domains...)
	return append(hosts, "localhost", "127.0.0.1", "::1")
}

// adminKeys returns the configured API keys; with none, it reuses the key in
// key_file or generates one there (mode 0600). The key is never logged.
func adminKeys(a config.Admin, log *zap.Logger) ([]string, error) {
	if keys := a.Keys(); len(keys) > 0 {
		return keys, nil
	}
	if data, err := os.ReadFile(a.KeyFile); err == nil {
		if k := strings.TrimSpace(string(data)); len(k) >= 16 {
			log.Info("admin API key read from admin.key_file", zap.String("key_file", a.KeyFile))
			return []string{k}, nil
		}
	}
	var b [32]byte
	_, _ = rand.Read(b[:])
	key := hex.EncodeToString(b[:])
	if err := os.MkdirAll(filepath.Dir(a.KeyFile), 0o700); err != nil {
		return nil, fmt.Errorf("edge: admin.key_file: %w", err)
	}
	if err := os.WriteFile(a.KeyFile, []byte(key+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("edge: admin.key_file: %w", err)
	}
	log.Warn("no admin.api_keys configured: generated a key and wrote it to admin.key_file",
		zap.String("key_file", a.KeyFile))
	return []string{key}, nil
}

// Run serves until ctx is cancelled, then stops gracefully: no new
// connections, in-flight requests finish, NATS drains. It returns nil on a
// clean stop.
func (s *Server) Run(ctx context.Context) error {
	errc := make(chan error, 2)
	go func() {
		var err error
		if s.certs != nil {
			err = s.public.ServeTLS(s.publicLn, "", "")
		} else {
			err = s.public.Serve(s.publicLn)
		}
		errc <- fmt.Errorf("edge: public listener: %w", err)
	}()
	go func() { errc <- fmt.Errorf("edge: admin listener: %w", s.admin.Serve(s.adminLn)) }()
	scheme := "https"
	if s.certs == nil {
		scheme = "http"
	}
	s.log.Info("daraja-edge serving",
		zap.String("public", scheme+"://"+s.publicLn.Addr().String()),
		zap.String("admin", "http://"+s.adminLn.Addr().String()),
		zap.String("nats", s.NATSURL()), zap.String("edge", s.name))

	var runErr error
	select {
	case <-ctx.Done():
	case err := <-errc:
		runErr = err
	}
	s.log.Info("stopping: finishing in-flight requests")
	shutCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
	defer cancel()
	if err := s.public.Shutdown(shutCtx); err != nil {
		runErr = errors.Join(runErr, fmt.Errorf("edge: public shutdown: %w", err))
	}
	if err := s.admin.Shutdown(shutCtx); err != nil {
		runErr = errors.Join(runErr, fmt.Errorf("edge: admin shutdown: %w", err))
	}
	s.Close()
	s.log.Info("stopped")
	return runErr
}

// Close releases everything without waiting for requests. Safe twice.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		for _, ln := range []net.Listener{s.publicLn, s.adminLn} {
			if ln != nil {
				_ = ln.Close()
			}
		}
		s.certs.Close()
		if s.broker != nil {
			s.broker.Close()
		}
	})
}

// Reload applies the reloadable part of cfg (allowlist, trusted proxies,
// body limit). Other changes need a restart.
func (s *Server) Reload(cfg config.Config) error {
	p, err := BuildPolicy(cfg)
	if err != nil {
		return err
	}
	s.handler.SetPolicy(p)
	return nil
}

func (s *Server) ready(ctx context.Context) error {
	if st := s.broker.Conn.Status(); st != nats.CONNECTED {
		return fmt.Errorf("NATS is %s", strings.ToLower(st.String()))
	}
	if _, err := s.stream.Info(ctx); err != nil {
		return fmt.Errorf("stream %s: %w", s.cfg.NATS.Stream.Name, err)
	}
	if s.cfg.TLS.Mode != config.TLSOff && s.certs.Leaf() == nil {
		return errors.New("no certificate loaded")
	}
	return nil
}

// PublicAddr is the bound public listener address.
func (s *Server) PublicAddr() net.Addr { return s.publicLn.Addr() }

// AdminAddr is the bound admin listener address.
func (s *Server) AdminAddr() net.Addr { return s.adminLn.Addr() }

// NATSURL is where consumers reach the embedded NATS server ("" when the
// edge uses a remote one).
func (s *Server) NATSURL() string { return s.broker.ClientURL() }

// Certificate is the certificate served on the public listener (nil with
// tls.mode off).
func (s *Server) Certificate() *x509.Certificate { return s.certs.Leaf() }
