// Package broker provides daraja-edge's NATS connection: an embedded
// nats-server with JetStream when no URL is configured, or a connection to
// the operator's servers.
package broker

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	neturl "net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// Options says where NATS is.
type Options struct {
	// URL of remote servers; empty starts an embedded server.
	URL string
	// CredentialsFile is a .creds file for the remote servers.
	CredentialsFile string
	// EmbeddedListen is host:port for the embedded server's clients; port 0
	// picks a free one.
	EmbeddedListen string
	// EmbeddedStoreDir holds the embedded server's JetStream data.
	EmbeddedStoreDir string
	// EmbeddedSyncInterval is how often the embedded server fsyncs; zero
	// means before every ack (nats-server's SyncAlways), so an
	// acknowledged callback is on disk, not in the page cache. NATS's own
	// default (2 minutes, acks at once) loses every recent callback on a
	// power cut.
	EmbeddedSyncInterval time.Duration
	// Name is this edge's name, used as the connection name.
	Name string
	// MaxMessage is the largest message the edge publishes (the body limit
	// plus headers): the embedded server's max_payload is raised to take
	// it, and a remote server that cannot is an error at start.
	MaxMessage int64
}

// Broker is a live NATS connection, with the embedded server if it runs one.
type Broker struct {
	closing   atomic.Bool
	Conn      *nats.Conn
	JetStream jetstream.JetStream
	server    *server.Server
	log       *zap.Logger
}

// Start starts the embedded server if asked for, then connects.
func Start(ctx context.Context, o Options, log *zap.Logger) (*Broker, error) {
	if log == nil {
		log = zap.NewNop()
	}
	log = log.Named("nats")
	b := &Broker{log: log}
	opts := []nats.Option{
		nats.Name("daraja-edge " + o.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectBufSize(-1), // never buffer publishes while disconnected: callers need the truth
		// A node cut off by a partition is noticed in seconds, not the
		// client's default 4 minutes: until then token issue stalls and
		// each callback waits out the ack timeout before it is spooled.
		nats.PingInterval(5 * time.Second),
		nats.MaxPingsOutstanding(2),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if b.closing.Load() {
				return // our own stop: not an incident
			}
			log.Warn("disconnected from NATS", zap.Error(err))
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("reconnected to NATS", zap.String("server", nc.ConnectedServerName()))
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			log.Warn("NATS error", zap.Error(err))
		}),
	}
	url := o.URL
	dialer := &recordingDialer{d: net.Dialer{Timeout: nats.DefaultTimeout}}
	if url == "" {
		ns, err := startEmbedded(o, log)
		if err != nil {
			return nil, err
		}
		b.server = ns
		url = ns.ClientURL()
		opts = append(opts, nats.InProcessServer(ns))
	} else {
		if o.CredentialsFile != "" {
			// Read now, so an unreadable file is named as such rather than
			// as a failure to connect.
			if _, err := os.ReadFile(o.CredentialsFile); err != nil {
				return nil, fmt.Errorf("broker: nats.credentials_file %q: %w", o.CredentialsFile, unwrapPath(err))
			}
			opts = append(opts, nats.UserCredentials(o.CredentialsFile))
		}
		// nats.go reports a refused connection as "no servers available":
		// the dialer keeps the cause.
		opts = append(opts, nats.SetCustomDialer(dialer))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		b.Close()
		return nil, connectError(o, err, dialer.errs())
	}
	b.Conn = nc
	if mp := nc.MaxPayload(); o.MaxMessage > 0 && mp > 0 && o.MaxMessage > mp {
		b.Close()
		return nil, fmt.Errorf("broker: limits.max_body_bytes with the callback headers (%d bytes) is more than the NATS server's max_payload (%d): "+
			"a callback that size could never be stored; lower limits.max_body_bytes or raise max_payload", o.MaxMessage, mp)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		b.Close()
		return nil, fmt.Errorf("broker: jetstream: %w", err)
	}
	b.JetStream = js
	if _, err := js.AccountInfo(ctx); err != nil {
		b.Close()
		return nil, fmt.Errorf("broker: JetStream is not available on this NATS account: %w", err)
	}
	return b, nil
}

// connectError names the key and its value (the URL never with its
// credentials: a password, or a token standing as the user) and keeps the
// cause: the dial errors when nats.go says only that no server was
// available.
func connectError(o Options, err error, dialErrs []error) error {
	if o.URL == "" {
		return fmt.Errorf("broker: connect to the embedded NATS (nats.embedded.listen %q): %w", o.EmbeddedListen, err)
	}
	shown, redacted := redactURLs(o.URL)
	key := fmt.Sprintf("nats.url %q", shown)
	if redacted {
		key += " (credentials redacted)"
	}
	if o.CredentialsFile != "" {
		key += fmt.Sprintf(" with nats.credentials_file %q", o.CredentialsFile)
	}
	if errors.Is(err, nats.ErrNoServers) && len(dialErrs) > 0 {
		format := "broker: %s: " + strings.Repeat("%w; ", len(dialErrs)) + "%w"
		args := []any{key}
		for _, e := range dialErrs {
			args = append(args, e)
		}
		return fmt.Errorf(format, append(args, err)...)
	}
	return fmt.Errorf("broker: %s: %w", key, err)
}

// redactURLs returns the comma-separated URLs in s without their user
// information, and whether any had some. A URL that does not parse is
// shown as "(a URL that does not parse)": it may hold a password.
func redactURLs(s string) (string, bool) {
	var out []string
	redacted := false
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		u, err := neturl.Parse(part)
		if err != nil {
			out = append(out, "(a URL that does not parse)")
			redacted = redacted || strings.Contains(part, "@")
			continue
		}
		if u.User != nil {
			u.User, redacted = nil, true
		}
		out = append(out, u.String())
	}
	return strings.Join(out, ","), redacted
}

// recordingDialer dials as nats.go would and keeps the errors of the
// first connect, which nats.go folds into ErrNoServers.
type recordingDialer struct {
	d    net.Dialer
	mu   sync.Mutex
	seen []error
}

// maxDialErrs bounds the errors kept: one per server of a cluster URL.
const maxDialErrs = 5

// Dial is nats.CustomDialer.
func (r *recordingDialer) Dial(network, address string) (net.Conn, error) {
	c, err := r.d.Dial(network, address)
	if err != nil {
		r.mu.Lock()
		if len(r.seen) < maxDialErrs {
			r.seen = append(r.seen, err)
		}
		r.mu.Unlock()
	}
	return c, err
}

func (r *recordingDialer) errs() []error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.seen)
}

// unwrapPath drops the path an *fs.PathError repeats: the message names it.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

func startEmbedded(o Options, log *zap.Logger) (*server.Server, error) {
	host, portStr, err := net.SplitHostPort(o.EmbeddedListen)
	if err != nil {
		return nil, fmt.Errorf("broker: nats.embedded.listen %q: %w", o.EmbeddedListen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("broker: nats.embedded.listen %q: bad port", o.EmbeddedListen)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	if err := os.MkdirAll(o.EmbeddedStoreDir, 0o700); err != nil {
		return nil, fmt.Errorf("broker: nats.embedded.store_dir %q: %w", o.EmbeddedStoreDir, err)
	}
	if port != server.RANDOM_PORT {
		// A busy port fails now, naming the key, not after a 30 s wait.
		ln, err := net.Listen("tcp", o.EmbeddedListen)
		if err != nil {
			return nil, fmt.Errorf("broker: nats.embedded.listen %q: %w", o.EmbeddedListen, err)
		}
		_ = ln.Close()
	}
	name := o.Name
	if name == "" {
		name = "daraja-edge"
	}
	sopts := &server.Options{
		ServerName: name,
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   o.EmbeddedStoreDir,
		NoSigs:     true,
		SyncAlways: o.EmbeddedSyncInterval <= 0,
	}
	if o.MaxMessage > server.MAX_PAYLOAD_SIZE {
		sopts.MaxPayload = int32(o.MaxMessage)
	}
	if o.EmbeddedSyncInterval > 0 {
		sopts.SyncInterval = o.EmbeddedSyncInterval
	}
	ns, err := server.NewServer(sopts)
	if err != nil {
		return nil, fmt.Errorf("broker: embedded NATS: %w", err)
	}
	ns.SetLoggerV2(&serverLog{log.Named("server").Sugar()}, false, false, false)
	go ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("broker: nats.embedded.listen %q: the embedded NATS did not start within 30s", o.EmbeddedListen)
	}
	sync := "always (fsync before every ack)"
	if o.EmbeddedSyncInterval > 0 {
		sync = o.EmbeddedSyncInterval.String() + " (a power cut loses what was acknowledged since the last sync)"
	}
	log.Info("embedded NATS started", zap.String("listen", ns.Addr().String()), zap.String("store_dir", o.EmbeddedStoreDir),
		zap.String("sync", sync))
	return ns, nil
}

// ClientURL is the URL consumers use to reach this broker's embedded server,
// or "" when connected to a remote one.
func (b *Broker) ClientURL() string {
	if b.server == nil {
		return ""
	}
	return b.server.ClientURL()
}

// Close drains the connection and stops the embedded server. It is safe to
// call more than once.
func (b *Broker) Close() {
	b.closing.Store(true)
	if b.Conn != nil && !b.Conn.IsClosed() {
		if err := b.Conn.Drain(); err != nil {
			b.Conn.Close()
		}
		deadline := time.Now().Add(5 * time.Second)
		for !b.Conn.IsClosed() && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		b.Conn.Close()
	}
	if b.server != nil {
		b.server.Shutdown()
		b.server.WaitForShutdown()
	}
}

type serverLog struct{ s *zap.SugaredLogger }

func (l *serverLog) Noticef(f string, v ...any) { l.s.Debugf(f, v...) }
func (l *serverLog) Warnf(f string, v ...any)   { l.s.Warnf(f, v...) }
func (l *serverLog) Fatalf(f string, v ...any)  { l.s.Errorf(f, v...) }
func (l *serverLog) Errorf(f string, v ...any)  { l.s.Errorf(f, v...) }
func (l *serverLog) Debugf(f string, v ...any)  { l.s.Debugf(f, v...) }
func (l *serverLog) Tracef(f string, v ...any)  {}

// SyncStore fsyncs every directory of the embedded server's store. The
// server fsyncs the files it writes (with sync always) but not the
// directories it creates, so on a filesystem that makes a directory entry
// durable only with a fsync of its directory, a stream or bucket created
// just before a power cut would be lost with everything acknowledged into
// it. Call it after creating streams and buckets. A remote broker: no-op.
func (b *Broker) SyncStore(storeDir string) error {
	if b.server == nil {
		return nil
	}
	var dirs []string
	err := filepath.WalkDir(storeDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			dirs = append(dirs, path)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("broker: sync nats.embedded.store_dir: %w", err)
	}
	// Deepest first, so each entry is durable before its parent's.
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := syncDir(dirs[i]); err != nil {
			return fmt.Errorf("broker: sync nats.embedded.store_dir %s: %w", dirs[i], err)
		}
	}
	return syncDir(filepath.Dir(filepath.Clean(storeDir)))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
