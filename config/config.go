// Package config holds daraja-edge's configuration: the YAML schema with its
// defaults, strict loading with shell-like ${ENV} expansion (an unset
// variable is an error), validation that names every offending key
// (Validate, which touches nothing on disk), the directory checks serve
// and check share (CheckEnvironment), and what check only warns about
// (Warnings).
package config

import (
	"time"
)

// Config is the whole configuration file. Every field carries its default in
// Default; Load decodes on top of those defaults.
type Config struct {
	// PublicURL is the base of the callback URLs handed out with tokens,
	// e.g. https://callbacks.example.co.ke. Default https://localhost:8443.
	PublicURL string `yaml:"public_url"`
	// Listen is the public HTTPS listener address. Default ":8443".
	Listen     string     `yaml:"listen"`
	TLS        TLS        `yaml:"tls"`
	ClientIP   ClientIP   `yaml:"client_ip"`
	Allowlist  Allowlist  `yaml:"allowlist"`
	Tokens     Tokens     `yaml:"tokens"`
	Validation Validation `yaml:"validation"`
	NATS       NATS       `yaml:"nats"`
	Spool      Spool      `yaml:"spool"`
	Limits     Limits     `yaml:"limits"`
	Admin      Admin      `yaml:"admin"`
	Log        Log        `yaml:"log"`
	// Forward delivers vetted callbacks to applications over HTTP.
	// Optional; see Destination.
	Forward Forward `yaml:"forward"`
	// C2B describes the C2B URL registrations made with Daraja.
	C2B C2B `yaml:"c2b"`
	// Recovery asks Daraja about missing callbacks. Optional, off by
	// default; see Recovery.
	Recovery Recovery `yaml:"recovery"`
}

// TLS modes.
const (
	TLSACME       = "acme"
	TLSFiles      = "files"
	TLSSelfSigned = "self-signed"
	TLSOff        = "off"
)

// TLS configures how the public listener terminates TLS.
type TLS struct {
	// Mode is acme | files | self-signed | off. Default self-signed.
	Mode string `yaml:"mode"`
	ACME ACME   `yaml:"acme"`
	// CertFile and KeyFile are PEM files, used with mode files.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// Storage is a directory for certmagic's certificates and locks, or
	// "nats" to share them through JetStream. Default ./data/certs.
	Storage string `yaml:"storage"`
}

// ACME configures automatic certificates (mode acme).
type ACME struct {
	// Domains to obtain certificates for. Default: the host of public_url.
	Domains []string `yaml:"domains"`
	// Email is the ACME account contact.
	Email string `yaml:"email"`
	// Directory is the ACME directory URL. Default Let's Encrypt production.
	Directory string `yaml:"directory"`
	// HTTPListen serves HTTP-01 challenges (and nothing else: every other
	// request is a 404, no redirect). "" disables HTTP-01; TLS-ALPN-01 on
	// the public listener still works. Default ":80".
	HTTPListen string `yaml:"http_listen"`
	// CARoot is a PEM file of roots to trust for the ACME directory's own
	// TLS (a private ACME CA). Default "": the system roots.
	CARoot string `yaml:"ca_root"`
}

// ClientIP configures how the real client address is resolved.
type ClientIP struct {
	// TrustedProxies are CIDRs whose X-Forwarded-For is believed, read right
	// to left; the rightmost untrusted entry is the client. Default none.
	TrustedProxies []string `yaml:"trusted_proxies"`
	// ProxyProtocol accepts PROXY protocol v1/v2 from trusted proxies.
	ProxyProtocol bool `yaml:"proxy_protocol"`
}

// Allowlist modes.
const (
	AllowlistEnforce = "enforce"
	AllowlistReport  = "report"
)

// Allowlist configures which source addresses may deliver callbacks.
type Allowlist struct {
	// Mode is enforce (refuse with 403) or report (count, log, let through).
	// Default enforce.
	Mode string `yaml:"mode"`
	// Presets are built-in lists; "safaricom" is Daraja's callback sources.
	// Default [safaricom].
	Presets []string `yaml:"presets"`
	// CIDRs are extra IPv4/IPv6 ranges; a bare address means a single host.
	CIDRs []string `yaml:"cidrs"`
}

// Tokens configures the callback URL tokens.
type Tokens struct {
	// QueryParam is the query parameter carrying the token. Default "t".
	QueryParam string `yaml:"query_param"`
	// DefaultTTL applies when an issue request names none. Default 24h.
	DefaultTTL time.Duration `yaml:"default_ttl"`
	// MaxTTL caps every token's lifetime. Default 720h.
	MaxTTL time.Duration `yaml:"max_ttl"`
}

// Validation on_timeout answers.
const (
	OnTimeoutAccept = "accept"
	OnTimeoutReject = "reject"
)

// The C2B validation budget.
const (
	// DarajaValidationWindow is about how long Daraja waits for the answer
	// to a C2B validation request; past it, Daraja applies the
	// ResponseType registered with the URL, whatever the edge answers.
	DarajaValidationWindow = 8 * time.Second
	// PublishWait bounds the edge's wait for the JetStream ack of a
	// callback (edge's publish timeout). A validation answer goes out only
	// once its decision is published, so this adds to validation.timeout.
	PublishWait = 3 * time.Second
	// ValidationMargin is what validation.timeout plus PublishWait should
	// leave of DarajaValidationWindow for the network (Daraja to the edge
	// and back, the TLS handshake) and the edge's own work.
	ValidationMargin = time.Second
)

// Validation configures the C2B validation request-reply.
type Validation struct {
	// Timeout is how long to wait for a validator's reply. Default 4s. The
	// edge answers Daraja after this wait and after publishing the
	// decision (up to PublishWait), and Daraja waits about
	// DarajaValidationWindow: Validate refuses a timeout that leaves
	// nothing of that window, and Warnings points out one that leaves
	// less than ValidationMargin for the network.
	Timeout time.Duration `yaml:"timeout"`
	// OnTimeout is the answer when no validator replies: accept | reject.
	// Default accept.
	OnTimeout string `yaml:"on_timeout"`
}

// NATS configures the broker connection.
type NATS struct {
	// URL of the NATS server(s), comma separated; empty runs an embedded
	// server. user:password@ or token@ in the URL are honoured; tls:// asks
	// for TLS.
	URL      string   `yaml:"url"`
	Embedded Embedded `yaml:"embedded"`
	// CredentialsFile is a NATS .creds file (JWT and nkey seed).
	CredentialsFile string `yaml:"credentials_file"`
	// SubjectPrefix starts every subject. Default "daraja".
	SubjectPrefix string `yaml:"subject_prefix"`
	Stream        Stream `yaml:"stream"`
}

// Embedded configures the in-process NATS server.
type Embedded struct {
	// Listen is where consumers connect. Default 127.0.0.1:4222; port 0
	// picks a free port.
	Listen string `yaml:"listen"`
	// StoreDir holds JetStream data. Default ./data/nats.
	StoreDir string `yaml:"store_dir"`
	// Sync is when JetStream fsyncs: "always" (before every ack, so an
	// acknowledged callback survives a power cut) or a duration like 1s (an
	// interval: a power cut loses every callback acknowledged within the
	// last interval). Default always; "" (a zero Embedded) also means
	// always. Read it through SyncAlways and SyncInterval.
	Sync string `yaml:"sync"`
}

// SyncEveryAck is the value of nats.embedded.sync that fsyncs before every
// ack.
const SyncEveryAck = "always"

// SyncAlways reports whether JetStream must fsync before every ack
// (nats-server's SyncAlways). It is true for "always" and for any value
// that is not a valid interval, so a bad value errs on the durable side.
func (e Embedded) SyncAlways() bool { return e.SyncInterval() == 0 }

// SyncInterval is the fsync interval (nats-server's SyncInterval) when
// sync is a positive duration, else 0: sync before every ack.
func (e Embedded) SyncInterval() time.Duration {
	if e.Sync == SyncEveryAck {
		return 0
	}
	d, err := time.ParseDuration(e.Sync)
	if err != nil || d <= 0 {
		return 0
	}
	return d
}

// Stream configures the JetStream stream holding vetted callbacks.
type Stream struct {
	// Name of the stream. Default DARAJA.
	Name string `yaml:"name"`
	// Replicas of the stream and token bucket. Default 1.
	Replicas int `yaml:"replicas"`
	// DuplicateWindow is how long Nats-Msg-Id de-duplicates. Default 24h.
	DuplicateWindow time.Duration `yaml:"duplicate_window"`
	// MaxAge is how long messages are kept. Default 720h.
	MaxAge time.Duration `yaml:"max_age"`
}

// Spool configures the local spool used while NATS is unreachable.
type Spool struct {
	// Dir holds spool files. Default ./data/spool.
	Dir string `yaml:"dir"`
	// MaxBytes caps the spool's size on disk. Default 1 GiB.
	MaxBytes int64 `yaml:"max_bytes"`
}

// Limits configures the public listener's limits.
type Limits struct {
	// MaxBodyBytes caps a callback body. Default 65536.
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// ReadHeaderTimeout, ReadTimeout, WriteTimeout, IdleTimeout are the
	// http.Server timeouts. Defaults 5s, 10s, 10s, 60s.
	ReadHeaderTimeout time.Duration `yaml:"read_header_timeout"`
	ReadTimeout       time.Duration `yaml:"read_timeout"`
	WriteTimeout      time.Duration `yaml:"write_timeout"`
	IdleTimeout       time.Duration `yaml:"idle_timeout"`
	// RejectsPerSecond and RejectsBurst bound, per source outside the
	// allowlist, the refusals that are logged and published; past them a
	// scanner gets a quiet 429. Defaults 2 and 20.
	RejectsPerSecond float64 `yaml:"rejects_per_second"`
	RejectsBurst     int     `yaml:"rejects_burst"`
	// ShutdownTimeout is the hard deadline of a stop: in-flight requests,
	// the spool drain and the NATS drain all finish within it, or are cut
	// off. Default 30s.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
}

// Admin configures the admin listener (token API, health, metrics).
type Admin struct {
	// Listen address. Default 127.0.0.1:9090.
	Listen string `yaml:"listen"`
	// APIKeys are accepted bearer keys. Entries that expand to "" are
	// ignored; with none left, serve generates a key and writes it to
	// KeyFile.
	APIKeys []string `yaml:"api_keys"`
	// ReadKeys are bearer keys that may read everything (token status,
	// the console) and change nothing. Same forms as APIKeys.
	ReadKeys []string `yaml:"read_keys"`
	// KeyFile receives a generated key when api_keys holds none, and is
	// where `token issue` looks for a key. Default ./data/admin.key.
	KeyFile string `yaml:"key_file"`
	// APIKeys entries may be "sha256:<64 hex digits>", the SHA-256 of a
	// key, so the file need not hold the key itself.
	//
	// CertFile and KeyPEMFile serve the admin API over TLS. Without them
	// the admin listener must be on loopback unless AllowPlaintextRemote.
	CertFile             string `yaml:"cert_file"`
	KeyPEMFile           string `yaml:"tls_key_file"`
	AllowPlaintextRemote bool   `yaml:"allow_plaintext_remote"`
	// AuthFailuresPerSecond bounds failed authentications per client
	// address (burst ten times that); past it every request of that client
	// gets 429 until the budget refills. Default 0.5.
	AuthFailuresPerSecond float64 `yaml:"auth_failures_per_second"`
}

// Log configures logging.
type Log struct {
	// Level is debug | info | warn | error. Default info.
	Level string `yaml:"level"`
	// Format is auto | json | console. auto is console when stderr is a
	// terminal (a person at a shell) and json otherwise (systemd, docker,
	// a pipe, a file), so logs collected from a service are still the zap
	// JSON the contract describes. Default auto.
	Format string `yaml:"format"`
}

// Default returns a Config holding every default.
func Default() Config {
	return Config{
		PublicURL: "https://localhost:8443",
		Listen:    ":8443",
		TLS: TLS{
			Mode:    TLSSelfSigned,
			ACME:    ACME{Directory: "https://acme-v02.api.letsencrypt.org/directory", HTTPListen: ":80"},
			Storage: "./data/certs",
		},
		Allowlist: Allowlist{Mode: AllowlistEnforce, Presets: []string{"safaricom"}},
		Tokens:    Tokens{QueryParam: "t", DefaultTTL: 24 * time.Hour, MaxTTL: 720 * time.Hour},
		Validation: Validation{
			Timeout:   4 * time.Second,
			OnTimeout: OnTimeoutAccept,
		},
		NATS: NATS{
			Embedded:      Embedded{Listen: "127.0.0.1:4222", StoreDir: "./data/nats", Sync: SyncEveryAck},
			SubjectPrefix: "daraja",
			Stream: Stream{
				Name:            "DARAJA",
				Replicas:        1,
				DuplicateWindow: 24 * time.Hour,
				MaxAge:          720 * time.Hour,
			},
		},
		Spool: Spool{Dir: "./data/spool", MaxBytes: 1 << 30},
		Limits: Limits{
			MaxBodyBytes:      65536,
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       10 * time.Second,
			WriteTimeout:      10 * time.Second,
			IdleTimeout:       60 * time.Second,
			RejectsPerSecond:  2,
			RejectsBurst:      20,
			ShutdownTimeout:   30 * time.Second,
		},
		Admin: Admin{Listen: "127.0.0.1:9090", KeyFile: "./data/admin.key", AuthFailuresPerSecond: 0.5},
		Log:   Log{Level: "info", Format: "auto"},

		Recovery: DefaultRecovery(),
	}
}

// Keys returns the usable admin API keys: the configured ones that are not
// empty after ${ENV} expansion.
// ReadOnlyKeys returns the configured read-only keys that are not empty.
func (a Admin) ReadOnlyKeys() []string {
	var keys []string
	for _, k := range a.ReadKeys {
		if k != "" {
			keys = append(keys, k)
		}
	}
	return keys
}

func (a Admin) Keys() []string {
	var keys []string
	for _, k := range a.APIKeys {
		if k != "" {
			keys = append(keys, k)
		}
	}
	return keys
}
