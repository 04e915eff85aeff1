// Package edge assembles a running daraja-edge from its configuration: NATS
// (embedded or remote), the stream and token bucket, TLS, the public
// callback listener and the admin listener, with graceful shutdown.
package edge

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/pires/go-proxyproto"
	"go.uber.org/zap"

	"github.com/daraja-edge/daraja-edge/admin"
	"github.com/daraja-edge/daraja-edge/allowlist"
	"github.com/daraja-edge/daraja-edge/broker"
	"github.com/daraja-edge/daraja-edge/certs"
	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/console"
	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/forward"
	"github.com/daraja-edge/daraja-edge/internal/redact"
	"github.com/daraja-edge/daraja-edge/metrics"
	"github.com/daraja-edge/daraja-edge/proxy"
	"github.com/daraja-edge/daraja-edge/publish"
	"github.com/daraja-edge/daraja-edge/ratelimit"
	"github.com/daraja-edge/daraja-edge/recovery"
	"github.com/daraja-edge/daraja-edge/spool"
	"github.com/daraja-edge/daraja-edge/verify"
)

// Version is reported by the NATS token service (SemVer), the start-up log
// and daraja_edge_build_info; main sets it from the build version.
var Version = "0.0.0-dev"

// Commit is the VCS revision the binary was built from.
var Commit = func() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				return s.Value
			}
		}
	}
	return "unknown"
}()

// publishTimeout bounds the wait for a JetStream ack on the hot path; config
// checks validation.timeout against the same figure.
const publishTimeout = config.PublishWait

// filesCheckInterval is how often certificate files are checked for change.
const filesCheckInterval = 2 * time.Second

// stopBudget splits limits.shutdown_timeout: half for in-flight requests,
// a third for the last spool replay, the rest for closing NATS, so a
// graceful stop ends before the hard deadline in serve.
func stopBudget(total time.Duration) (requests, drain time.Duration) {
	if total <= 0 {
		total = 30 * time.Second
	}
	return total / 2, total / 3
}

// Server is a running daraja-edge.
type Server struct {
	cfg     config.Config
	log     *zap.Logger
	name    string
	broker  *broker.Broker
	stream  jetstream.Stream
	certs   *certs.Manager
	handler *proxy.Handler

	store     *verify.Store
	metrics   *metrics.Metrics
	pub       *publish.JetStream
	durable   *publish.Durable
	missing   *publish.Missing
	watermark *publish.Watermark // embedded NATS only
	recovery  *recovery.Service  // recovery: (optional)
	forwarder *forward.Forwarder // forward: (optional)
	spool     *spool.Spool
	service   micro.Service

	public, admin, challenge       *http.Server
	publicLn, adminLn, challengeLn net.Listener

	bg       context.Context // lives until Close: watch, drainer, sweeper
	bgCancel context.CancelFunc
	bgDone   sync.WaitGroup

	closeOnce sync.Once
}

// Intervals of the background work (variables for tests).
var (
	drainInterval = time.Second
	sweepInterval = 5 * time.Second
	// missingGrace: a token's missing-callback question is asked this long
	// after its expiry, so a callback accepted just before has landed.
	missingGrace = publishTimeout + 2*time.Second
)

// sweepBatch bounds the tokens resolved per sweep.
const sweepBatch = 1000

// New builds the edge and binds its listeners; Run serves. On error
// everything started so far is stopped.
func New(ctx context.Context, cfg config.Config, log *zap.Logger) (_ *Server, err error) {
	if log == nil {
		log = zap.NewNop()
	}
	name, _ := os.Hostname()
	if name == "" {
		name = "daraja-edge"
	}
	s := &Server{cfg: cfg, log: log, name: name}
	s.bg, s.bgCancel = context.WithCancel(context.WithoutCancel(ctx))
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
		EmbeddedSyncInterval: cfg.NATS.Embedded.SyncInterval(),
		Name:                 name,
		MaxMessage:           cfg.Limits.MaxBodyBytes + publish.MaxHeaderBytes,
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
	s.spool, err = spool.Open(cfg.Spool.Dir, cfg.Spool.MaxBytes, log)
	if err != nil {
		return nil, fmt.Errorf("edge: spool.dir %q: %w", cfg.Spool.Dir, err)
	}
	s.metrics = metrics.New(metrics.Gauges{
		Spool:               s.spool.Stats,
		SpoolStuck:          func() bool { return s.spool.Stuck() != nil },
		SpoolCorrupt:        s.spool.Corrupt,
		SpoolReplayFailures: s.spool.ReplayFailures,
		CertificateExpiry: func() time.Time {
			if c := s.certs.Leaf(); c != nil {
				return c.NotAfter
			}
			return time.Time{}
		},
		NATSConnected: func() bool { return s.broker.Conn.IsConnected() },
		Version:       Version,
		Commit:        Commit,
	})
	retain := cfg.Tokens.MaxTTL + 7*24*time.Hour
	store, err := verify.NewStore(ctx, s.broker.JetStream, verify.StoreOptions{
		Bucket:       TokenBucket(cfg.NATS.SubjectPrefix),
		Replicas:     cfg.NATS.Stream.Replicas,
		Retain:       retain,
		Observer:     s.metrics,
		MissingGrace: missingGrace,
	}, log)
	if err != nil {
		return nil, err
	}
	s.store = store
	if err := store.Watch(s.bg); err != nil {
		return nil, err
	}
	s.pub = publish.New(s.broker.Conn, s.broker.JetStream, s.stream, publishTimeout)

	s.durable = publish.NewDurable(s.pub, s.spool, subjects, s.metrics, log)
	s.missing, err = publish.OpenMissing(ctx, s.broker.JetStream, s.pub, MissingBucket(cfg.NATS.SubjectPrefix),
		cfg.NATS.Stream.Replicas, retain, subjects, name)
	if err != nil {
		return nil, err
	}
	issuer := &verify.Issuer{
		Store: store, PublicURL: cfg.PublicURL, QueryParam: cfg.Tokens.QueryParam,
		Limits: verify.Limits{DefaultTTL: cfg.Tokens.DefaultTTL, MaxTTL: cfg.Tokens.MaxTTL},
		Uses: func(ctx context.Context, rec verify.Record) (map[daraja.Kind]string, error) {
			uses, err := s.pub.Uses(ctx, subjects, rec.ID, rec.Shortcode, daraja.KindStrings(rec.Kinds))
			if err != nil {
				return nil, err
			}
			out := make(map[daraja.Kind]string, len(uses))
			for k, u := range uses {
				out[daraja.Kind(k)] = u.TransactionID
			}
			return out, nil
		},
	}
	if cfg.Recovery.Enabled {
		shortcodes, err := recovery.FromConfig(cfg.Recovery)
		if err != nil {
			return nil, fmt.Errorf("edge: %w", err)
		}
		s.recovery, err = recovery.New(ctx, recovery.OptionsFrom(cfg.Recovery, recovery.Options{
			JS: s.broker.JetStream, Stream: cfg.NATS.Stream.Name, Publisher: s.pub, Subjects: subjects, Edge: name,
			Records: store, Issuer: issuer, Shortcodes: shortcodes,
			Registerer: s.metrics.Registerer(), Log: log,
		}))
		if err != nil {
			return nil, err
		}
	}
	s.service, err = verify.ServeNATS(s.broker.Conn, cfg.NATS.SubjectPrefix, Version, issuer, log)
	if err != nil {
		return nil, fmt.Errorf("edge: token service: %w", err)
	}

	var validator proxy.Validator
	if len(cfg.Forward.Destinations) > 0 {
		s.forwarder, err = forward.New(forward.Options{
			JS: s.broker.JetStream, Stream: cfg.NATS.Stream.Name, Prefix: cfg.NATS.SubjectPrefix,
			Destinations: cfg.Forward.Destinations, Tokens: store,
			Fallback: cfg.ValidationFallback, HistoryTTL: cfg.NATS.Stream.MaxAge,
			Replicas: cfg.NATS.Stream.Replicas, Log: log,
		})
		if err != nil {
			return nil, fmt.Errorf("edge: forward: %w", err)
		}
		if err := s.metrics.Registerer().Register(s.forwarder); err != nil {
			return nil, fmt.Errorf("edge: forward metrics: %w", err)
		}
		validator = s.forwarder // only when set: a typed nil is not a nil interface
		// Its consumers start from new messages when first created: create
		// them before the public listener accepts a callback, or the first
		// callbacks after a first start would never be delivered.
		if err := s.forwarder.Start(s.bg); err != nil {
			return nil, fmt.Errorf("edge: forward: %w", err)
		}
	}
	s.handler = proxy.New(proxy.Options{
		Tokens: store, Publisher: s.durable, Requester: s.pub, Notifier: s.pub, Metrics: s.metrics, Validator: validator,
		RejectLimiter: ratelimit.New(cfg.Limits.RejectsPerSecond, cfg.Limits.RejectsBurst, 100_000),
		Subjects:      subjects, QueryParam: cfg.Tokens.QueryParam, Edge: name,
		ValidationTimeout: cfg.Validation.Timeout,
		RejectOnTimeout:   cfg.Validation.OnTimeout == config.OnTimeoutReject,
		RejectFor: func(shortcode string) bool {
			return cfg.ValidationFallback(shortcode) == config.OnTimeoutReject
		},
		Log: log,
	}, policy)

	var lc net.ListenConfig
	// The public listener refuses strangers at accept (below); keep-alive
	// is then set only on connections let through, so a refusal costs no
	// keep-alive system calls.
	refuseAtAccept := cfg.TLS.Mode != config.TLSACME || cfg.TLS.Storage != "nats"
	publicLC := lc
	if refuseAtAccept {
		publicLC.KeepAlive = -1
	}
	if s.publicLn, err = publicLC.Listen(ctx, "tcp", cfg.Listen); err != nil {
		return nil, fmt.Errorf("edge: listen %s: %w", cfg.Listen, err)
	}
	if s.adminLn, err = lc.Listen(ctx, "tcp", cfg.Admin.Listen); err != nil {
		return nil, fmt.Errorf("edge: admin.listen %s: %w", cfg.Admin.Listen, err)
	}
	if cfg.TLS.Mode == config.TLSACME && cfg.TLS.ACME.HTTPListen != "" {
		if s.challengeLn, err = lc.Listen(ctx, "tcp", cfg.TLS.ACME.HTTPListen); err != nil {
			return nil, fmt.Errorf("edge: tls.acme.http_listen %s: %w", cfg.TLS.ACME.HTTPListen, err)
		}
	}
	if err := s.setupTLS(ctx, cfg); err != nil {
		return nil, err
	}
	if cfg.NATS.URL == "" {
		// The stream and buckets (certificates too) exist now: make their
		// directories durable (nats-server fsyncs files, not the
		// directories it creates).
		if err := s.broker.SyncStore(cfg.NATS.Embedded.StoreDir); err != nil {
			return nil, err
		}
		if err := s.checkWatermark(ctx, cfg); err != nil {
			return nil, err
		}
	}
	if refuseAtAccept {
		// A TCP peer that is neither allowlisted nor a trusted proxy is
		// the client, and a stranger: closed at accept, before the TLS
		// handshake (beneath the PROXY listener, so the peer seen is the
		// TCP peer). The policy in force decides per connection (report
		// mode lets everything through to the handler). While an ACME
		// challenge is pending, every source reaches the handshake:
		// TLS-ALPN-01 validators connect from addresses no allowlist
		// holds. Not with shared certificate storage: another replica's
		// challenge can be validated here, and this process does not see
		// it pending.
		s.publicLn = proxy.RefuseAtAccept(s.publicLn, proxy.AcceptOptions{
			Policy:    s.handler.Policy,
			Refused:   func(netip.Addr) { s.metrics.Rejected("source_not_allowed_at_accept") },
			Exempt:    s.certs.ChallengePending,
			Log:       log,
			KeepAlive: 15 * time.Second, // net's default
		})
	}
	if cfg.ClientIP.ProxyProtocol {
		s.publicLn = &proxyproto.Listener{
			Listener:          s.publicLn,
			ConnPolicy:        s.proxyPolicy,
			ReadHeaderTimeout: cfg.Limits.ReadHeaderTimeout,
			ValidateHeader:    tcpProxyHeader,
		}
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
		// net/http reports TLS handshake failures, bad requests and
		// recovered panics here: at Warn, so a Warn-level logger keeps them.
		ErrorLog: httpErrorLog(log.Named("http")),
	}
	if s.certs != nil {
		s.public.TLSConfig = s.certs.TLSConfig()
	}
	// The admin listener serves the admin API and the operator console
	// (/console/), under the same TLS and exposure rules.
	con, err := console.New(s.bg, console.Options{
		Tokens: issuer, Check: store.Authorize,
		NATS: s.broker.Conn, JS: s.broker.JetStream,
		Prefix: cfg.NATS.SubjectPrefix, Stream: cfg.NATS.Stream.Name,
		Gatherer: s.metrics.Gatherer(), Ready: s.ready,
		Keys: keys, ReadKeys: cfg.Admin.ReadOnlyKeys(),
		PublicURL: cfg.PublicURL, QueryParam: cfg.Tokens.QueryParam,
		CertExpiry: func() time.Time {
			if l := s.certs.Leaf(); l != nil {
				return l.NotAfter
			}
			return time.Time{}
		},
		AllowlistSize: func() int { return s.handler.Policy().Allow.Len() },
		SecureCookies: cfg.Admin.CertFile != "",
		// Every sign-in attempt spends one of its address's budget.
		Limiter:     ratelimit.New(cfg.Admin.AuthFailuresPerSecond, max(1, int(10*cfg.Admin.AuthFailuresPerSecond)), 10_000),
		Spool:       s.spool.Stats,
		TokenBucket: TokenBucket(cfg.NATS.SubjectPrefix),
		Edge:        name,
		Deliveries:  s.forwarder,
		Destinations: func() (names []string) {
			for _, d := range cfg.Forward.Destinations {
				names = append(names, d.Name)
			}
			return names
		}(),
		Log: log,
	})
	if err != nil {
		return nil, fmt.Errorf("edge: console: %w", err)
	}
	adminMux := http.NewServeMux()
	adminMux.Handle("/console/", con)
	adminMux.Handle("/console", con)
	adminOpts := admin.Options{
		Tokens: issuer, APIKeys: keys, ReadKeys: cfg.Admin.ReadOnlyKeys(), Ready: s.ready, Metrics: s.metrics.Handler(), Log: log,
		Limiter: ratelimit.New(cfg.Admin.AuthFailuresPerSecond, max(1, int(10*cfg.Admin.AuthFailuresPerSecond)), 10_000),
	}
	if s.forwarder != nil {
		adminOpts.Deliveries = s.forwarder
	}
	adminMux.Handle("/", admin.Handler(adminOpts))
	s.admin = &http.Server{
		Handler:           proxy.CloseAfterTransferEncoding(adminMux),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          httpErrorLog(log.Named("admin.http")),
	}
	if cfg.Admin.CertFile != "" {
		pair, err := tls.LoadX509KeyPair(cfg.Admin.CertFile, cfg.Admin.KeyPEMFile)
		if err != nil {
			return nil, fmt.Errorf("edge: admin.cert_file %s with admin.tls_key_file %s: %w", cfg.Admin.CertFile, cfg.Admin.KeyPEMFile, err)
		}
		s.admin.TLSConfig = &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	}
	if s.challengeLn != nil {
		s.challenge = &http.Server{
			Handler:           s.certs.HTTPChallengeHandler(),
			ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second,
			IdleTimeout: 30 * time.Second, MaxHeaderBytes: 8 << 10,
		}
	}
	return s, nil
}

// WatermarkFile is where an embedded-NATS edge records the highest stream
// sequence acknowledged to it, beside the store.
func WatermarkFile(cfg config.Config) string {
	return filepath.Join(cfg.NATS.Embedded.StoreDir, "daraja-edge.acked")
}

// checkWatermark compares the stream with the highest sequence this edge
// saw acknowledged before: a stream behind it lost acknowledged callbacks.
// The edge says so (an error log and a metric the shipped alert rules page
// on) and keeps serving: new callbacks are still stored.
func (s *Server) checkWatermark(ctx context.Context, cfg config.Config) error {
	wm, recorded, err := publish.OpenWatermark(WatermarkFile(cfg), cfg.NATS.Stream.Name)
	if err != nil {
		return err
	}
	info, err := s.stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("edge: stream %s: %w", cfg.NATS.Stream.Name, err)
	}
	if last := info.State.LastSeq; recorded > last {
		s.log.Error("the stream holds less than was acknowledged before this start: acknowledged callbacks were lost "+
			"(a power cut with nats.embedded.sync set to an interval, or a store restored from an older copy); "+
			"reconcile with M-Pesa statements and Daraja queries",
			zap.String("stream", cfg.NATS.Stream.Name), zap.Uint64("acknowledged_sequence", recorded),
			zap.Uint64("stream_last_sequence", last), zap.Uint64("lost_at_least", recorded-last),
			zap.String("watermark_file", WatermarkFile(cfg)))
		s.metrics.AckedLost(recorded - last)
		wm.Reset(last)
	}
	s.watermark = wm
	s.pub.Remember(wm)
	return nil
}

// setupTLS prepares the public listener's certificates.
func (s *Server) setupTLS(ctx context.Context, cfg config.Config) error {
	o := certs.Options{
		Mode: cfg.TLS.Mode, Hosts: certHosts(cfg), CertFile: cfg.TLS.CertFile, KeyFile: cfg.TLS.KeyFile,
		StorageDir: cfg.TLS.Storage,
	}
	if cfg.TLS.Storage == "nats" {
		st, err := certs.NewNATSStorage(ctx, s.broker.JetStream, CertBucket(cfg.NATS.SubjectPrefix), cfg.NATS.Stream.Replicas, s.name)
		if err != nil {
			return err
		}
		o.Storage = st
	}
	if cfg.TLS.Mode == config.TLSACME {
		o.Hosts = acmeDomains(cfg)
		o.ACME = certs.ACMEOptions{
			Directory: cfg.TLS.ACME.Directory, Email: cfg.TLS.ACME.Email,
			TLSALPNPort: s.publicLn.Addr().(*net.TCPAddr).Port,
		}
		if s.challengeLn != nil {
			o.ACME.HTTPPort = s.challengeLn.Addr().(*net.TCPAddr).Port
		}
		if cfg.TLS.ACME.CARoot != "" {
			pem, err := os.ReadFile(cfg.TLS.ACME.CARoot)
			if err != nil {
				return fmt.Errorf("edge: tls.acme.ca_root: %w", err)
			}
			o.ACME.TrustedRoots = x509.NewCertPool()
			if !o.ACME.TrustedRoots.AppendCertsFromPEM(pem) {
				return fmt.Errorf("edge: tls.acme.ca_root %s holds no PEM certificate", cfg.TLS.ACME.CARoot)
			}
		}
	}
	var err error
	s.certs, err = certs.New(ctx, o, s.log)
	return err
}

// proxyPolicy requires a PROXY header from trusted proxies (a connection
// from one without a header is refused: it would pass the balancer's own
// address off as the client) and refuses one from anyone else.
func (s *Server) proxyPolicy(o proxyproto.ConnPolicyOptions) (proxyproto.Policy, error) {
	if ta, ok := o.Upstream.(*net.TCPAddr); ok {
		if a, ok := netip.AddrFromSlice(ta.IP); ok && s.handler.Policy().ClientIP.Trusts(a.Unmap()) {
			return proxyproto.REQUIRE, nil
		}
	}
	return proxyproto.REJECT, nil
}

// tcpProxyHeader accepts a PROXY header for a TCP client, or one that
// names no client (LOCAL, UNKNOWN/UNSPEC: a balancer's health check; its
// own address then counts, which the allowlist refuses). A Unix socket's
// "address" is a path anyone local can choose, such as
// "196.201.214.200:1", and a UDP client cannot have sent an HTTPS request:
// refused.
func tcpProxyHeader(h *proxyproto.Header) error {
	if h.Command.IsLocal() {
		return nil
	}
	switch h.TransportProtocol {
	case proxyproto.TCPv4, proxyproto.TCPv6, proxyproto.UNSPEC:
		return nil
	}
	return fmt.Errorf("PROXY header for a %v client: only TCP clients are taken", h.TransportProtocol)
}

// CertBucket is the key-value bucket holding certificates with tls.storage
// "nats".
func CertBucket(prefix string) string {
	return strings.ReplaceAll(prefix, ".", "_") + "_certs"
}

func acmeDomains(cfg config.Config) []string {
	if len(cfg.TLS.ACME.Domains) > 0 {
		return cfg.TLS.ACME.Domains
	}
	u, _ := url.Parse(cfg.PublicURL)
	return []string{u.Hostname()}
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
		Allow:         allow,
		ReportOnly:    cfg.Allowlist.Mode == config.AllowlistReport,
		ClientIP:      proxy.NewClientIP(trusted),
		ProxyProtocol: cfg.ClientIP.ProxyProtocol,
		MaxBodyBytes:  cfg.Limits.MaxBodyBytes,
	}, nil
}

// httpErrorLog is a net/http error log on l at Warn.
func httpErrorLog(l *zap.Logger) *log.Logger {
	std, _ := zap.NewStdLogAt(l, zap.WarnLevel) // only fails for an invalid level
	return std
}

// MissingBucket is the key-value bucket marking tokens whose
// missing-callback question is settled.
func MissingBucket(prefix string) string {
	return strings.ReplaceAll(prefix, ".", "_") + "_missing"
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
	for _, h := range []string{"localhost", "127.0.0.1", "::1"} {
		if !slices.Contains(hosts, h) {
			hosts = append(hosts, h)
		}
	}
	return hosts
}

// adminKeys returns the configured API keys; with none, it reuses the key in
// key_file or generates one there (mode 0600). The key is never logged.
func adminKeys(a config.Admin, log *zap.Logger) ([]string, error) {
	if keys := a.Keys(); len(keys) > 0 {
		return keys, nil
	}
	// A key the operator wrote there is never replaced: one too short for
	// the log redaction (the same bound as admin.api_keys) stops the start.
	if data, err := os.ReadFile(a.KeyFile); err == nil {
		switch k := strings.TrimSpace(string(data)); {
		case len(k) >= redact.MinRun:
			log.Info("admin API key read from admin.key_file", zap.String("key_file", a.KeyFile))
			return []string{k}, nil
		case k != "":
			return nil, fmt.Errorf("edge: admin.key_file %q holds a key shorter than %d characters; write a longer one or empty the file to have one generated",
				a.KeyFile, redact.MinRun)
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
	errc := make(chan error, 3) // one per listener: none may block
	go func() {
		var err error
		if s.certs != nil {
			err = s.public.ServeTLS(s.publicLn, "", "")
		} else {
			err = s.public.Serve(s.publicLn)
		}
		errc <- fmt.Errorf("edge: public listener: %w", err)
	}()
	go func() {
		var err error
		if s.admin.TLSConfig != nil {
			err = s.admin.ServeTLS(s.adminLn, "", "")
		} else {
			err = s.admin.Serve(s.adminLn)
		}
		errc <- fmt.Errorf("edge: admin listener: %w", err)
	}()
	if s.challenge != nil {
		go func() { errc <- fmt.Errorf("edge: tls.acme.http_listen: %w", s.challenge.Serve(s.challengeLn)) }()
	}
	// Listeners are serving: ACME challenges can be answered now.
	s.certs.Start(s.bg)
	s.bgDone.Add(1)
	go func() { defer s.bgDone.Done(); s.certs.WatchFiles(s.bg, filesCheckInterval) }()
	s.bgDone.Add(1)
	go s.background()
	if s.recovery != nil {
		s.bgDone.Add(1)
		go func() { defer s.bgDone.Done(); _ = s.recovery.Run(s.bg) }()
	}
	if s.watermark != nil {
		s.bgDone.Add(1)
		go func() {
			defer s.bgDone.Done()
			s.watermark.Run(s.bg, time.Second, func(err error) { s.log.Warn("acknowledged-sequence record not written", zap.Error(err)) })
		}()
	}
	scheme := "https"
	if s.certs == nil {
		scheme = "http"
	}
	s.log.Info("daraja-edge serving",
		zap.String("public", scheme+"://"+s.publicLn.Addr().String()),
		zap.String("admin", "http://"+s.adminLn.Addr().String()),
		zap.String("nats", s.NATSURL()), zap.String("edge", s.name),
		zap.String("version", Version), zap.String("commit", Commit))

	var runErr error
	select {
	case <-ctx.Done():
	case err := <-errc:
		runErr = err
	}
	s.log.Info("stopping: finishing in-flight requests")
	requestsBudget, drainBudget := stopBudget(s.cfg.Limits.ShutdownTimeout)
	shutCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), requestsBudget)
	defer cancel()
	if err := s.public.Shutdown(shutCtx); err != nil {
		s.log.Error("in-flight callbacks did not finish within half of limits.shutdown_timeout: their connections are closed "+
			"(a callback not yet stored used nothing up, so Daraja's retry lands)", zap.Duration("waited", requestsBudget))
		_ = s.public.Close()
		runErr = errors.Join(runErr, fmt.Errorf("edge: public shutdown: %w", err))
	}
	if err := s.admin.Shutdown(shutCtx); err != nil {
		runErr = errors.Join(runErr, fmt.Errorf("edge: admin shutdown: %w", err))
	}
	if s.challenge != nil {
		_ = s.challenge.Shutdown(shutCtx)
	}
	if s.forwarder != nil {
		// Attempts in flight finish or go back to the stream for another
		// replica (or the next start).
		s.forwarder.Stop(shutCtx)
	}
	s.bgCancel()
	s.bgDone.Wait()
	// Last chance to hand the spool to NATS; what is left is replayed on
	// the next start.
	drainCtx, cancelDrain := context.WithTimeout(context.WithoutCancel(ctx), drainBudget)
	s.drain(drainCtx)
	cancelDrain()
	if _, left := s.spool.Stats(); left > 0 {
		s.log.Warn("stopping with callbacks in the spool; the next start replays them", zap.Int64("records", left))
	}
	s.Close()
	s.log.Info("stopped")
	return runErr
}

// Close releases everything without waiting for requests. Safe twice.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		for _, ln := range []net.Listener{s.publicLn, s.adminLn, s.challengeLn} {
			if ln != nil {
				_ = ln.Close()
			}
		}
		s.bgCancel()
		s.bgDone.Wait()
		s.certs.Close()
		if s.service != nil {
			_ = s.service.Stop()
		}
		if s.broker != nil {
			s.broker.Close()
		}
		if s.spool != nil {
			_ = s.spool.Close()
		}
	})
}

// Reload applies the reloadable part of cfg (allowlist, trusted proxies,
// body limit) and re-reads certificate files (tls.mode files). The policy
// is applied even when the certificate files are broken: a bad certificate
// must not keep an allowlist change out (the current certificate stays, and
// the error is returned). Other changes need a restart.
func (s *Server) Reload(cfg config.Config) error {
	p, err := BuildPolicy(cfg)
	if err != nil {
		s.metrics.Reload(false)
		return err
	}
	s.handler.SetPolicy(p)
	if err := s.certs.Reload(s.bg); err != nil {
		s.metrics.Reload(false)
		return fmt.Errorf("allowlist, trusted proxies and limits applied; certificate files refused, the current certificate stays: %w", err)
	}
	s.metrics.Reload(true)
	return nil
}

// ReloadRefused records a reload refused because the file was invalid.
func (s *Server) ReloadRefused() { s.metrics.Reload(false) }

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
	if s.spool.Full() {
		return errors.New("spool is full")
	}
	if err := s.spool.Stuck(); err != nil {
		return fmt.Errorf("spool replay stuck: %w", err)
	}
	if err := writable(s.cfg.Spool.Dir); err != nil {
		return fmt.Errorf("spool directory cannot be written (a callback NATS cannot take now would be answered 503): %w", err)
	}
	return nil
}

// writable reports whether a file can be created, written and removed in
// dir now, as the spool does when it starts a segment: a directory
// remounted read-only, replaced, removed or on a full disk fails it.
func writable(dir string) error {
	f, err := os.CreateTemp(dir, ".readyz-*")
	if err != nil {
		return err
	}
	_, werr := f.Write([]byte("readyz\n"))
	cerr := f.Close()
	rerr := os.Remove(f.Name())
	return errors.Join(werr, cerr, rerr)
}

// background replays the spool and settles expired tokens (missing
// events).
func (s *Server) background() {
	defer s.bgDone.Done()
	drain := time.NewTicker(drainInterval)
	defer drain.Stop()
	sweep := time.NewTicker(sweepInterval)
	defer sweep.Stop()
	for {
		select {
		case <-s.bg.Done():
			return
		case <-drain.C:
			if s.broker.Conn.IsConnected() {
				s.drain(s.bg)
			}
		case <-sweep.C:
			s.sweep(s.bg)
		}
	}
}

// sweep publishes the missing events of expired tokens. It waits while
// NATS is out of reach, the local token copy is incomplete, or the spool
// holds callbacks (one of them may be the token's).
func (s *Server) sweep(ctx context.Context) {
	if !s.broker.Conn.IsConnected() || s.durable.Pending() > 0 {
		return
	}
	select {
	case <-s.store.Synced():
	default:
		return
	}
	n, err := s.store.Sweep(ctx, sweepBatch, func(ctx context.Context, rec verify.Record) (bool, error) {
		return s.missing.Resolve(ctx, publish.MissingToken{
			ID: rec.ID, Kinds: daraja.KindStrings(rec.Kinds), Shortcode: rec.Shortcode, Reference: rec.Reference,
			IssuedAt: rec.IssuedAt, ExpiresAt: rec.ExpiresAt,
		})
	})
	if err != nil {
		s.log.Warn("missing-callback sweep stopped", zap.Int("emitted", n), zap.Error(err))
	} else if n > 0 {
		s.log.Info("missing-callback events published", zap.Int("count", n))
	}
}

// drain replays the spool.
func (s *Server) drain(ctx context.Context) {
	n, err := s.durable.Drain(ctx)
	if n > 0 {
		s.log.Info("spooled callbacks replayed to NATS", zap.Int("count", n))
	}
	if err != nil && ctx.Err() == nil {
		s.log.Warn("spool replay paused", zap.Int("replayed", n), zap.Error(err))
	}
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

// Pending reports callbacks spooled but not yet on NATS.
func (s *Server) Pending() (spooled int64) { return s.durable.Pending() }

// MetricNames lists every daraja_edge_* metric this edge exports (for
// checking alert rules and dashboards against it).
func (s *Server) MetricNames() []string { return s.metrics.Names() }
