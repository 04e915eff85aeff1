package config

import (
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/daraja-edge/daraja-edge/allowlist"
	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/internal/redact"
)

var (
	queryParamRE    = regexp.MustCompile(`^[A-Za-z0-9_-]{1,32}$`)
	subjectPrefixRE = regexp.MustCompile(`^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$`)
	streamNameRE    = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
	sha256HexRE     = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// Validate reports every problem with c at once, each naming its key. It
// changes nothing on disk: files named by the config must exist, and TLS
// certificates must match their keys, but directories the edge will
// create or write are CheckEnvironment's business.
func (c Config) Validate() error {
	var v validator

	u, err := url.Parse(c.PublicURL)
	shown := c.PublicURL // never a password: credentials are refused, not echoed
	if err == nil && u.User != nil {
		shown = u.Redacted()
	}
	switch {
	case err != nil || u.Host == "" || u.Hostname() == "":
		v.add("public_url", "%q is not an absolute URL like https://callbacks.example.co.ke", c.PublicURL)
	case u.Scheme != "https" && !(u.Scheme == "http" && c.TLS.Mode == TLSOff):
		v.add("public_url", "%q must use https (http only with tls.mode: off)", c.PublicURL)
	case u.RawQuery != "" || u.Fragment != "" || u.User != nil || u.ForceQuery:
		v.add("public_url", "%q must not carry credentials, a query or a fragment", shown)
	case u.Path != "" && u.Path != "/":
		// verify.Issuer appends the endpoint path (/stk/callback) to
		// public_url, and the edge serves endpoints at the root only.
		v.add("public_url", "%q has a path (%s): the edge serves its endpoints at the root (/stk/callback, /c2b/confirmation…), "+
			"so every URL it handed out would be a 404; use the bare origin, e.g. %s://%s", c.PublicURL, u.Path, u.Scheme, u.Host)
	}
	if daraja.HasRefusedWord(c.PublicURL) {
		v.add("public_url", "%q contains a word Daraja refuses in callback URLs (M-PESA, mpesa, Safaricom, exe, exec, cmd, sql, query, "+
			"in any case or spelling): Daraja would refuse every URL the edge hands out", shown)
	}
	v.hostPort("listen", c.Listen)

	switch c.TLS.Mode {
	case TLSSelfSigned, TLSOff:
	case TLSFiles:
		v.keyPair("tls.cert_file", c.TLS.CertFile, "tls.key_file", c.TLS.KeyFile)
	case TLSACME:
		if len(c.TLS.ACME.Domains) == 0 && (u == nil || u.Hostname() == "") {
			v.add("tls.acme.domains", "is empty and public_url names no host")
		}
		for i, d := range c.TLS.ACME.Domains {
			if d == "" || strings.ContainsAny(d, " /:@") {
				v.add(fmt.Sprintf("tls.acme.domains[%d]", i), "%q is not a domain name", d)
			}
		}
		if d, err := url.Parse(c.TLS.ACME.Directory); err != nil || d.Scheme != "https" || d.Host == "" {
			v.add("tls.acme.directory", "%q is not an https URL", c.TLS.ACME.Directory)
		}
		if c.TLS.ACME.Email != "" && !strings.Contains(c.TLS.ACME.Email, "@") {
			v.add("tls.acme.email", "%q is not an email address", c.TLS.ACME.Email)
		}
		if c.TLS.ACME.HTTPListen != "" {
			v.hostPort("tls.acme.http_listen", c.TLS.ACME.HTTPListen)
		}
		if c.TLS.ACME.CARoot != "" {
			v.caFile("tls.acme.ca_root", c.TLS.ACME.CARoot)
		}
	default:
		v.add("tls.mode", "%q is not one of acme, files, self-signed, off", c.TLS.Mode)
	}
	if c.TLS.Storage == "" {
		v.add("tls.storage", "must be a directory or \"nats\"")
	}

	for i, p := range c.ClientIP.TrustedProxies {
		v.cidr(fmt.Sprintf("client_ip.trusted_proxies[%d]", i), p)
	}
	if c.ClientIP.ProxyProtocol && len(c.ClientIP.TrustedProxies) == 0 {
		v.add("client_ip.proxy_protocol", "needs client_ip.trusted_proxies: PROXY headers are believed only from them")
	}

	if c.Allowlist.Mode != AllowlistEnforce && c.Allowlist.Mode != AllowlistReport {
		v.add("allowlist.mode", "%q is not one of enforce, report", c.Allowlist.Mode)
	}
	known := allowlist.PresetNames()
	for i, p := range c.Allowlist.Presets {
		if !slices.Contains(known, p) {
			v.add(fmt.Sprintf("allowlist.presets[%d]", i), "%q is not a preset (known: %s)", p, strings.Join(known, ", "))
		}
	}
	for i, p := range c.Allowlist.CIDRs {
		v.cidr(fmt.Sprintf("allowlist.cidrs[%d]", i), p)
	}
	if c.Allowlist.Mode == AllowlistEnforce && len(c.Allowlist.Presets) == 0 && len(c.Allowlist.CIDRs) == 0 {
		v.add("allowlist", "enforce mode with no presets and no cidrs would refuse every callback")
	}

	if !queryParamRE.MatchString(c.Tokens.QueryParam) {
		v.add("tokens.query_param", "%q must be 1 to 32 letters, digits, _ or -", c.Tokens.QueryParam)
	} else if daraja.HasRefusedWord(c.Tokens.QueryParam) {
		v.add("tokens.query_param", "%q contains a word Daraja refuses in callback URLs", c.Tokens.QueryParam)
	}
	v.positive("tokens.default_ttl", c.Tokens.DefaultTTL)
	v.positive("tokens.max_ttl", c.Tokens.MaxTTL)
	if c.Tokens.DefaultTTL > c.Tokens.MaxTTL {
		v.add("tokens.default_ttl", "%s is longer than tokens.max_ttl %s", c.Tokens.DefaultTTL, c.Tokens.MaxTTL)
	}

	v.positive("validation.timeout", c.Validation.Timeout)
	// The answer to a validation goes out after the validator's wait and
	// after its decision is published: both must fit in what Daraja waits,
	// and in what the listener lets a response take.
	if answer := c.Validation.Timeout + PublishWait; c.Validation.Timeout > 0 && answer >= DarajaValidationWindow {
		v.add("validation.timeout", "%s plus the edge's %s wait to publish the decision reaches Daraja's validation window (about %s): "+
			"Daraja would give up before the answer and apply the ResponseType registered with the URL; "+
			"at most %s leaves %s for the network", c.Validation.Timeout, PublishWait, DarajaValidationWindow,
			DarajaValidationWindow-PublishWait-ValidationMargin, ValidationMargin)
	} else if answer >= c.Limits.WriteTimeout && c.Limits.WriteTimeout > 0 {
		v.add("validation.timeout", "%s plus the edge's %s wait to publish the decision must be shorter than limits.write_timeout %s, "+
			"or the answer is cut off", c.Validation.Timeout, PublishWait, c.Limits.WriteTimeout)
	}
	if c.Validation.OnTimeout != OnTimeoutAccept && c.Validation.OnTimeout != OnTimeoutReject {
		v.add("validation.on_timeout", "%q is not one of accept, reject", c.Validation.OnTimeout)
	}

	if c.NATS.URL != "" {
		for i, s := range strings.Split(c.NATS.URL, ",") {
			nu, err := url.Parse(strings.TrimSpace(s))
			if err != nil || nu.Host == "" || !slices.Contains([]string{"nats", "tls", "ws", "wss"}, nu.Scheme) {
				key := "nats.url"
				if strings.Contains(c.NATS.URL, ",") {
					key = fmt.Sprintf("nats.url[%d]", i)
				}
				// Never echo the URL: it may hold a password.
				v.add(key, "is not a nats://, tls://, ws:// or wss:// URL")
			}
		}
	} else {
		v.hostPort("nats.embedded.listen", c.NATS.Embedded.Listen)
		if c.NATS.Embedded.StoreDir == "" {
			v.add("nats.embedded.store_dir", "must be a directory")
		}
		if c.NATS.Stream.Replicas > 1 {
			v.add("nats.stream.replicas", "%d needs a NATS cluster: with nats.url empty the embedded server is a single node "+
				"(set nats.url, or replicas: 1)", c.NATS.Stream.Replicas)
		}
	}
	if s := c.NATS.Embedded.Sync; s != SyncEveryAck && s != "" { // "": a zero Embedded, read as always
		if d, err := time.ParseDuration(s); err != nil || d <= 0 {
			v.add("nats.embedded.sync", "%q is not %q or a positive interval like 1s", clip(s), SyncEveryAck)
		}
	}
	if c.NATS.CredentialsFile != "" {
		v.file("nats.credentials_file", c.NATS.CredentialsFile)
	}
	if !subjectPrefixRE.MatchString(c.NATS.SubjectPrefix) {
		v.add("nats.subject_prefix", "%q must be dot-separated tokens of letters, digits, _ or -", c.NATS.SubjectPrefix)
	}
	if !streamNameRE.MatchString(c.NATS.Stream.Name) {
		v.add("nats.stream.name", "%q must be 1 to 64 letters, digits, _ or -", c.NATS.Stream.Name)
	}
	if c.NATS.Stream.Replicas < 1 || c.NATS.Stream.Replicas > 5 {
		v.add("nats.stream.replicas", "%d must be between 1 and 5", c.NATS.Stream.Replicas)
	}
	v.positive("nats.stream.duplicate_window", c.NATS.Stream.DuplicateWindow)
	v.positive("nats.stream.max_age", c.NATS.Stream.MaxAge)
	if c.Tokens.MaxTTL > c.NATS.Stream.MaxAge && c.NATS.Stream.MaxAge > 0 {
		// The stream's copy of a callback is what makes its token single
		// use: it must outlive every single-use token.
		v.add("tokens.max_ttl", "%s must not be longer than nats.stream.max_age %s: a callback leaving the stream while its token still lives would let the token be used again",
			c.Tokens.MaxTTL, c.NATS.Stream.MaxAge)
	}
	if c.NATS.Stream.DuplicateWindow > c.NATS.Stream.MaxAge {
		v.add("nats.stream.duplicate_window", "%s is longer than nats.stream.max_age %s", c.NATS.Stream.DuplicateWindow, c.NATS.Stream.MaxAge)
	}

	if c.Spool.Dir == "" {
		v.add("spool.dir", "must be a directory")
	}
	if c.Spool.MaxBytes < 1<<20 {
		v.add("spool.max_bytes", "%d must be at least 1048576 (1 MiB)", c.Spool.MaxBytes)
	}

	if c.Limits.MaxBodyBytes < 1024 || c.Limits.MaxBodyBytes > 16<<20 {
		v.add("limits.max_body_bytes", "%d must be between 1024 and 16777216", c.Limits.MaxBodyBytes)
	}
	v.positive("limits.read_header_timeout", c.Limits.ReadHeaderTimeout)
	v.positive("limits.read_timeout", c.Limits.ReadTimeout)
	v.positive("limits.write_timeout", c.Limits.WriteTimeout)
	v.positive("limits.idle_timeout", c.Limits.IdleTimeout)
	v.positive("limits.shutdown_timeout", c.Limits.ShutdownTimeout)

	v.hostPort("admin.listen", c.Admin.Listen)
	if host, _, err := net.SplitHostPort(c.Admin.Listen); err == nil && !isLoopback(host) &&
		c.Admin.CertFile == "" && !c.Admin.AllowPlaintextRemote {
		v.add("admin.listen", "%q is not a loopback address: set admin.cert_file and admin.tls_key_file, "+
			"or admin.allow_plaintext_remote: true if a private network protects it", c.Admin.Listen)
	}
	if (c.Admin.CertFile == "") != (c.Admin.KeyPEMFile == "") {
		v.add("admin.cert_file", "admin.cert_file and admin.tls_key_file go together")
	} else if c.Admin.CertFile != "" {
		v.keyPair("admin.cert_file", c.Admin.CertFile, "admin.tls_key_file", c.Admin.KeyPEMFile)
	}
	if !finitePositive(c.Admin.AuthFailuresPerSecond) {
		v.add("admin.auth_failures_per_second", "%v must be above zero", c.Admin.AuthFailuresPerSecond)
	}
	if !finitePositive(c.Limits.RejectsPerSecond) || c.Limits.RejectsBurst < 1 {
		v.add("limits.rejects_per_second", "%v per second with a burst of %d: both must be above zero", c.Limits.RejectsPerSecond, c.Limits.RejectsBurst)
	}
	v.listeners(c)
	for _, keys := range []struct {
		name string
		list []string
	}{{"admin.api_keys", c.Admin.APIKeys}, {"admin.read_keys", c.Admin.ReadKeys}} {
		for i, k := range keys.list {
			if hash, ok := strings.CutPrefix(k, "sha256:"); ok {
				if !sha256HexRE.MatchString(hash) {
					v.add(fmt.Sprintf("%s[%d]", keys.name, i), "a sha256: key must be 64 lowercase hex digits")
				}
			} else if k != "" && len(k) < redact.MinRun {
				// A key pasted into a URL by mistake is hidden from the log
				// only from this length on (redact.Path).
				v.add(fmt.Sprintf("%s[%d]", keys.name, i), "is shorter than %d characters", redact.MinRun)
			}
			if k != "" && keys.name == "admin.read_keys" && slices.Contains(c.Admin.APIKeys, k) {
				v.add(fmt.Sprintf("%s[%d]", keys.name, i), "is also in admin.api_keys: a key is either read-only or not")
			}
		}
	}
	if len(c.Admin.Keys()) == 0 && c.Admin.KeyFile == "" {
		v.add("admin.key_file", "must be set when admin.api_keys holds no key")
	}

	if !slices.Contains([]string{"debug", "info", "warn", "error"}, c.Log.Level) {
		v.add("log.level", "%q is not one of debug, info, warn, error", c.Log.Level)
	}
	if c.Log.Format != "json" && c.Log.Format != "console" && c.Log.Format != "auto" {
		v.add("log.format", "%q is not one of json, console, auto", c.Log.Format)
	}
	v.forward(c)
	v.c2b(c)
	v.recovery(c)
	return errors.Join(v.problems...)
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

type validator struct{ problems []error }

func (v *validator) add(key, format string, args ...any) {
	v.problems = append(v.problems, &Problem{Key: key, Msg: fmt.Sprintf(format, args...)})
}

func (v *validator) positive(key string, d time.Duration) {
	if d <= 0 {
		v.add(key, "%s must be longer than zero", d)
	}
}

func (v *validator) hostPort(key, addr string) {
	_, port, err := net.SplitHostPort(addr)
	switch {
	case err == nil && port != "":
		if n, err := strconv.Atoi(port); err == nil && (n < 0 || n > 65535) {
			v.add(key, "%q: port %d is not between 0 and 65535", addr, n)
		}
	case isDigits(addr):
		v.add(key, "%q is not a host:port address (did you mean \":%s\"?)", addr, addr)
	default:
		v.add(key, "%q is not a host:port address", clip(addr))
	}
}

// listeners refuses two listeners of the edge on one port where their
// hosts overlap (the same host, or either is every address): the second
// would fail to bind at start.
func (v *validator) listeners(c Config) {
	type listener struct{ key, what, addr string }
	ls := []listener{{"listen", "public listen", c.Listen}, {"admin.listen", "admin listen", c.Admin.Listen}}
	if c.NATS.URL == "" {
		ls = append(ls, listener{"nats.embedded.listen", "embedded NATS listen", c.NATS.Embedded.Listen})
	}
	if c.TLS.Mode == TLSACME && c.TLS.ACME.HTTPListen != "" {
		ls = append(ls, listener{"tls.acme.http_listen", "ACME HTTP challenge", c.TLS.ACME.HTTPListen})
	}
	for i := range ls {
		for j := range i {
			if sameSocket(ls[i].addr, ls[j].addr) {
				v.add(ls[i].key, "%q is also the %s address (%s)", ls[i].addr, ls[j].what, ls[j].key)
			}
		}
	}
}

func sameSocket(a, b string) bool {
	ha, pa, err1 := net.SplitHostPort(a)
	hb, pb, err2 := net.SplitHostPort(b)
	if err1 != nil || err2 != nil || pa != pb || pa == "0" {
		return false
	}
	norm := func(h string) string {
		switch h {
		case "", "0.0.0.0", "::", "[::]":
			return ""
		case "localhost":
			return "127.0.0.1"
		}
		return h
	}
	ha, hb = norm(ha), norm(hb)
	return ha == "" || hb == "" || ha == hb
}

func isDigits(s string) bool {
	return s != "" && strings.Trim(s, "0123456789") == ""
}

func finitePositive(f float64) bool { return f > 0 && !math.IsInf(f, 0) }

// cidr checks one allowlist or proxy entry; a CIDR with host bits set
// (10.0.0.1/8) is refused, since it is unclear whether the range or the
// host was meant.
func (v *validator) cidr(key, s string) {
	if _, err := allowlist.ParsePrefix(s); err != nil {
		v.add(key, "%q is not a CIDR", clip(s))
		return
	}
	if !strings.Contains(s, "/") {
		return // a bare address: one host
	}
	p, err := netip.ParsePrefix(strings.TrimSpace(s))
	if err == nil && p.Masked() != p {
		v.add(key, "%q has host bits set: did you mean %s (the range), or %s (the one host)?", s, p.Masked(), p.Addr())
	}
}

// keyPair checks that a certificate and its key exist and belong together.
func (v *validator) keyPair(certKey, certPath, keyKey, keyPath string) {
	n := len(v.problems)
	v.file(certKey, certPath)
	v.file(keyKey, keyPath)
	if len(v.problems) > n {
		return
	}
	if _, err := tls.LoadX509KeyPair(certPath, keyPath); err != nil {
		v.add(certKey, "%q with %s %q is not a usable certificate and key: %v", certPath, keyKey, keyPath, err)
	}
}

func (v *validator) file(key, path string) {
	if path == "" {
		v.add(key, "must name a file")
		return
	}
	if _, err := os.Stat(path); err != nil {
		v.add(key, "%q cannot be read: %v", path, errors.Unwrap(err))
	}
}
