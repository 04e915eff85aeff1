package config

import (
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/daraja-edge/daraja-edge/daraja"
)

// Forward configures delivery of vetted callbacks to applications over
// HTTP, signed as Standard Webhooks. Optional: no destinations, no
// forwarding.
type Forward struct {
	Destinations []Destination `yaml:"destinations"`
}

// Destination is one application that receives callbacks. A destination
// listed in the file starts from DefaultDestination, so only what differs
// need be written.
type Destination struct {
	// Name identifies the destination in logs, metrics and its durable
	// consumer: 1 to 64 lowercase letters, digits, _ or -. Required, unique.
	Name string `yaml:"name"`
	// URL is the base address, http or https; Paths are appended to its
	// path. Loopback and private addresses are allowed; http:// is a
	// warning (Warnings), since callbacks carry payment details.
	URL string `yaml:"url"`
	// Paths maps a kind to the path appended to URL's for it. Default: "".
	Paths map[string]string `yaml:"paths"`
	// Kinds are the callback kinds delivered. Default: every kind but
	// c2b.validation, which is answered through ValidationURL.
	Kinds []string `yaml:"kinds"`
	// Shortcodes restricts delivery to these business shortcodes; empty:
	// all.
	Shortcodes []string `yaml:"shortcodes"`
	// Secrets sign every delivery ("whsec_" and base64 of at least 24
	// bytes); each listed secret adds a signature, so a rotation lists the
	// new and the old. At least one.
	Secrets []string `yaml:"secrets"`
	// SecretsFile names a file of signing secrets, one per line; blank
	// lines and lines starting with # are ignored. Its secrets sign as
	// if listed in Secrets (after them): a rotation edits the file, then
	// restarts. Secrets, SecretsFile or both; at least one secret in all.
	SecretsFile string     `yaml:"secrets_file"`
	TLS         ForwardTLS `yaml:"tls"`
	// Headers are static extra request headers (e.g. Authorization).
	Headers map[string]string `yaml:"headers"`
	// ForwardedFor adds X-Forwarded-For: the callback's source address.
	ForwardedFor bool `yaml:"forwarded_for"`
	// HTTP2 allows HTTP/2 to the destination.
	HTTP2 bool `yaml:"http2"`
	// Timeout bounds one attempt. Default 10s.
	Timeout time.Duration `yaml:"timeout"`
	// Concurrency is the attempts in flight (the consumer's max ack
	// pending). Default 8.
	Concurrency int `yaml:"concurrency"`
	// Rate caps attempts per second; 0 is unlimited. Default 0.
	Rate float64 `yaml:"rate"`
	// Retry holds one entry per attempt: entry i is the wait before attempt
	// i+1, after attempt i ends (±20 % jitter on non-zero waits). Default
	// [0s, 5s, 30s, 2m, 5m, 30m, 2h, 5h, 10h, 14h, 20h, 24h].
	Retry []time.Duration `yaml:"retry"`
	// RetryAfterCap is how far a Retry-After answer may lengthen a wait.
	// Default 1h.
	RetryAfterCap time.Duration `yaml:"retry_after_cap"`
	Circuit       Circuit       `yaml:"circuit"`
	// ValidationURL, when set, is an absolute URL that answers C2B
	// validation for this application.
	ValidationURL string `yaml:"validation_url"`
	// ValidationTimeout is the whole budget of that call; it must be
	// shorter than validation.timeout. Default 3s.
	ValidationTimeout time.Duration `yaml:"validation_timeout"`
}

// ForwardTLS is the trust and client certificate for a destination's TLS.
type ForwardTLS struct {
	// CAFile is a PEM bundle of roots to trust instead of the system's.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are a client certificate, together.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// Circuit stops attempts to a destination that keeps failing.
type Circuit struct {
	// Failures in a row that open the circuit. Default 5.
	Failures int `yaml:"failures"`
	// Probe is the interval of the single attempt made while open; no
	// other attempt is made or counted. Default 10s.
	Probe time.Duration `yaml:"probe"`
}

// C2B describes the C2B registrations as made with Daraja.
type C2B struct {
	// Shortcodes maps a shortcode to its registration.
	Shortcodes map[string]C2BShortcode `yaml:"shortcodes"`
}

// C2B response types, as registered with Daraja.
const (
	ResponseCompleted = "Completed"
	ResponseCancelled = "Cancelled"
)

// C2BShortcode is one shortcode's C2B registration.
type C2BShortcode struct {
	// ResponseType is what Daraja does when validation is not answered in
	// time: Completed (accept) or Cancelled (reject). The edge's own
	// validation fallback for this shortcode follows it.
	ResponseType string `yaml:"response_type"`
}

// ValidationFallback is the answer to a C2B validation nobody answered in
// time for shortcode: the registered response type when c2b lists it
// (Completed: accept, Cancelled: reject), else validation.on_timeout.
func (c Config) ValidationFallback(shortcode string) string {
	switch c.C2B.Shortcodes[shortcode].ResponseType {
	case ResponseCompleted:
		return OnTimeoutAccept
	case ResponseCancelled:
		return OnTimeoutReject
	}
	return c.Validation.OnTimeout
}

// DefaultDestination is a destination holding every default; each entry
// of forward.destinations is decoded on top of it.
func DefaultDestination() Destination {
	var kinds []string
	for _, k := range daraja.Kinds {
		if k != daraja.C2BValidation {
			kinds = append(kinds, string(k))
		}
	}
	h := time.Hour
	return Destination{
		Kinds:             kinds,
		Timeout:           10 * time.Second,
		Concurrency:       8,
		Retry:             []time.Duration{0, 5 * time.Second, 30 * time.Second, 2 * time.Minute, 5 * time.Minute, 30 * time.Minute, 2 * h, 5 * h, 10 * h, 14 * h, 20 * h, 24 * h},
		RetryAfterCap:     h,
		Circuit:           Circuit{Failures: 5, Probe: 10 * time.Second},
		ValidationTimeout: 3 * time.Second,
	}
}

// setDefaults is how the loader starts a list entry from its defaults.
func (d *Destination) setDefaults() { *d = DefaultDestination() }

var (
	destinationNameRE = regexp.MustCompile(`^[a-z0-9_-]{1,64}$`)
	shortcodeRE       = regexp.MustCompile(`^[0-9]{5,9}$`)
)

// reservedHeaders are set by the forwarder itself.
var reservedHeaders = []string{"host", "content-length", "content-type", "transfer-encoding", "connection",
	"webhook-id", "webhook-timestamp", "webhook-signature", "x-forwarded-for"}

func (v *validator) forward(c Config) {
	names := map[string]int{}
	for i, d := range c.Forward.Destinations {
		key := func(k string) string { return fmt.Sprintf("forward.destinations[%d].%s", i, k) }
		switch {
		case !destinationNameRE.MatchString(d.Name):
			v.add(key("name"), "%q must be 1 to 64 lowercase letters, digits, _ or -", clip(d.Name))
		default:
			if j, dup := names[d.Name]; dup {
				v.add(key("name"), "%q is also the name of forward.destinations[%d]", d.Name, j)
			}
			names[d.Name] = i
		}
		u := v.httpURL(key("url"), d.URL, true)
		if u != nil && u.Scheme == "http" && (d.TLS != ForwardTLS{}) {
			v.add(key("tls"), "is set but url is http://")
		}
		for _, k := range slices.Sorted(maps.Keys(d.Paths)) {
			if !isKind(k) {
				v.add(key("paths."+k), "is not a callback kind (known: %s)", kindList())
			}
			if p := d.Paths[k]; p != "" && (!strings.HasPrefix(p, "/") || strings.ContainsAny(p, "?#") || strings.ContainsFunc(p, badURLRune)) {
				v.add(key("paths."+k), "%q must start with / and hold no ?, # or spaces", clip(p))
			}
		}
		if len(d.Kinds) == 0 {
			v.add(key("kinds"), "is empty: the destination would receive nothing (leave it out for every kind)")
		}
		for j, k := range d.Kinds {
			switch {
			case k == string(daraja.C2BValidation):
				v.add(fmt.Sprintf("%s[%d]", key("kinds"), j), "c2b.validation is answered through validation_url, not delivered")
			case !isKind(k):
				v.add(fmt.Sprintf("%s[%d]", key("kinds"), j), "%q is not a callback kind (known: %s)", clip(k), kindList())
			}
		}
		for j, s := range d.Shortcodes {
			if !shortcodeRE.MatchString(s) {
				v.add(fmt.Sprintf("%s[%d]", key("shortcodes"), j), "%q is not a shortcode (5 to 9 digits)", clip(s))
			}
		}
		for j, s := range d.Secrets {
			// Never echo a secret, not even a bad one.
			if msg := checkSecret(s); msg != "" {
				v.add(fmt.Sprintf("%s[%d]", key("secrets"), j), "%s", msg)
			}
		}
		if d.SecretsFile != "" {
			secrets, err := readSecretsFile(d.SecretsFile)
			for _, e := range Problems(err) {
				v.add(key("secrets_file"), "%v", e)
			}
			if err == nil && len(secrets) == 0 {
				v.add(key("secrets_file"), "%q holds no secret (one whsec_ secret a line; # starts a comment)", d.SecretsFile)
			}
		}
		if len(d.Secrets) == 0 && d.SecretsFile == "" {
			v.add(key("secrets"), "needs at least one whsec_ secret, in secrets or secrets_file: deliveries are always signed")
		}
		if d.TLS.CAFile != "" {
			v.caFile(key("tls.ca_file"), d.TLS.CAFile)
		}
		if (d.TLS.CertFile == "") != (d.TLS.KeyFile == "") {
			v.add(key("tls.cert_file"), "tls.cert_file and tls.key_file go together")
		} else if d.TLS.CertFile != "" {
			v.keyPair(key("tls.cert_file"), d.TLS.CertFile, key("tls.key_file"), d.TLS.KeyFile)
		}
		for _, h := range slices.Sorted(maps.Keys(d.Headers)) {
			switch {
			case !httpguts.ValidHeaderFieldName(h):
				v.add(key("headers"), "%q is not a header name", clip(h))
			case slices.Contains(reservedHeaders, strings.ToLower(h)):
				v.add(key("headers."+h), "is set by the forwarder itself")
			case !httpguts.ValidHeaderFieldValue(d.Headers[h]):
				v.add(key("headers."+h), "holds a character a header value cannot (a newline?)") // the value may be a secret
			}
		}
		v.positive(key("timeout"), d.Timeout)
		if d.Concurrency < 1 {
			v.add(key("concurrency"), "%d must be at least 1", d.Concurrency)
		}
		if d.Rate < 0 || math.IsNaN(d.Rate) || math.IsInf(d.Rate, 0) {
			v.add(key("rate"), "%v must be 0 (unlimited) or a positive number of attempts per second", d.Rate)
		}
		if len(d.Retry) == 0 {
			v.add(key("retry"), "is empty: one entry per attempt, so at least one ([0s] for a single attempt)")
		}
		for j, w := range d.Retry {
			if w < 0 {
				v.add(fmt.Sprintf("%s[%d]", key("retry"), j), "%s must not be negative", w)
			}
		}
		if d.RetryAfterCap < 0 {
			v.add(key("retry_after_cap"), "%s must not be negative", d.RetryAfterCap)
		}
		if d.Circuit.Failures < 1 {
			v.add(key("circuit.failures"), "%d must be at least 1", d.Circuit.Failures)
		}
		v.positive(key("circuit.probe"), d.Circuit.Probe)
		if d.ValidationURL != "" {
			v.httpURL(key("validation_url"), d.ValidationURL, false)
			v.positive(key("validation_timeout"), d.ValidationTimeout)
			if d.ValidationTimeout >= c.Validation.Timeout {
				v.add(key("validation_timeout"), "%s must be shorter than validation.timeout %s, which bounds the whole answer to Daraja",
					d.ValidationTimeout, c.Validation.Timeout)
			}
		}
	}
}

func (v *validator) c2b(c Config) {
	for _, sc := range slices.Sorted(maps.Keys(c.C2B.Shortcodes)) {
		key := "c2b.shortcodes." + sc
		if !shortcodeRE.MatchString(sc) {
			v.add(key, "%q is not a shortcode (5 to 9 digits)", clip(sc))
		}
		if rt := c.C2B.Shortcodes[sc].ResponseType; rt != ResponseCompleted && rt != ResponseCancelled {
			v.add(key+".response_type", "%q is not one of Completed, Cancelled (as registered with Daraja)", clip(rt))
		}
	}
}

// httpURL checks an absolute http or https URL; base URLs may not carry a
// query, since paths are appended to them.
func (v *validator) httpURL(key, s string, base bool) *url.URL {
	u, err := url.Parse(s)
	switch {
	case s == "":
		v.add(key, "must be an http:// or https:// URL")
	case err != nil || u.Host == "" || u.Hostname() == "" || (u.Scheme != "http" && u.Scheme != "https"):
		v.add(key, "is not an absolute http:// or https:// URL") // never echoed: it may hold a password
	case u.Fragment != "" || (base && (u.RawQuery != "" || u.ForceQuery)):
		v.add(key, "must not carry a fragment or a query")
	default:
		return u
	}
	return nil
}

func (v *validator) caFile(key, path string) {
	data, err := os.ReadFile(path)
	if err != nil {
		v.add(key, "%q cannot be read: %v", path, unwrapPath(err))
		return
	}
	if !x509.NewCertPool().AppendCertsFromPEM(data) {
		v.add(key, "%q holds no PEM certificate", path)
	}
}

// SigningSecrets returns the secrets that sign this destination's
// deliveries: Secrets, then those of SecretsFile. The error names the
// file and the line, never a secret.
func (d Destination) SigningSecrets() ([]string, error) {
	out := slices.Clone(d.Secrets)
	if d.SecretsFile == "" {
		return out, nil
	}
	fromFile, err := readSecretsFile(d.SecretsFile)
	if err != nil {
		return nil, err
	}
	return append(out, fromFile...), nil
}

// WithFileSecrets returns a copy of c whose forward destinations hold the
// secrets of their secrets_file in Secrets, and no secrets_file: what the
// forwarder signs with. c itself is not changed. The error names the
// destination and the file, never a secret.
func (c Config) WithFileSecrets() (Config, error) {
	if len(c.Forward.Destinations) == 0 {
		return c, nil
	}
	dests := slices.Clone(c.Forward.Destinations)
	var problems []error
	for i := range dests {
		if dests[i].SecretsFile == "" {
			continue
		}
		secrets, err := dests[i].SigningSecrets()
		if err != nil {
			problems = append(problems, &Problem{Key: fmt.Sprintf("forward.destinations[%d].secrets_file", i), Msg: err.Error()})
			continue
		}
		dests[i].Secrets, dests[i].SecretsFile = secrets, ""
	}
	if len(problems) > 0 {
		return c, errors.Join(problems...)
	}
	c.Forward.Destinations = dests
	return c, nil
}

// maxSecretsFileBytes bounds a secrets file; a real one is a few lines.
const maxSecretsFileBytes = 64 << 10

// readSecretsFile reads a file of whsec_ secrets, one per line (blank
// lines and # comments ignored), and checks each. Its errors split with
// Problems, one per bad line; none quotes a secret.
func readSecretsFile(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%q cannot be read: %w", path, unwrapPath(err))
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxSecretsFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%q cannot be read: %w", path, unwrapPath(err))
	}
	if len(data) > maxSecretsFileBytes {
		return nil, fmt.Errorf("%q is larger than %d bytes: not a file of secrets", path, maxSecretsFileBytes)
	}
	var secrets []string
	var problems []error
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if msg := checkSecret(line); msg != "" {
			problems = append(problems, fmt.Errorf("%q line %d: the secret %s", path, i+1, msg))
			continue
		}
		secrets = append(secrets, line)
	}
	if len(problems) > 0 {
		return nil, errors.Join(problems...)
	}
	return secrets, nil
}

// checkSecret returns what is wrong with a signing secret, without
// quoting it.
func checkSecret(s string) string {
	b64, ok := strings.CutPrefix(s, "whsec_")
	if !ok {
		return `must start with "whsec_" (a Standard Webhooks secret)`
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		if raw, err = base64.RawStdEncoding.DecodeString(b64); err != nil {
			return "is not whsec_ followed by base64"
		}
	}
	if len(raw) < 24 {
		return fmt.Sprintf("holds %d bytes: at least 24 are needed", len(raw))
	}
	return ""
}

func isKind(k string) bool { return slices.Contains(daraja.Kinds, daraja.Kind(k)) }

func kindList() string {
	var out []string
	for _, k := range daraja.Kinds {
		out = append(out, string(k))
	}
	return strings.Join(out, ", ")
}

func badURLRune(r rune) bool { return r <= ' ' || r == 0x7f }

// Warnings are things `check` points out without refusing the file.
func (c Config) Warnings() []string {
	var out []string
	if margin := DarajaValidationWindow - c.Validation.Timeout - PublishWait; margin > 0 && margin < ValidationMargin {
		out = append(out, fmt.Sprintf("validation.timeout: %s plus the edge's %s wait to publish the decision leaves %s of Daraja's "+
			"validation window (about %s) for the network: a slow validator's answer may arrive after Daraja gave up; "+
			"%s or less leaves %s", c.Validation.Timeout, PublishWait, margin, DarajaValidationWindow,
			DarajaValidationWindow-PublishWait-ValidationMargin, ValidationMargin))
	}
	for i, d := range c.Forward.Destinations {
		if u, err := url.Parse(d.URL); err == nil && u.Scheme == "http" {
			out = append(out, fmt.Sprintf("forward.destinations[%d].url: http:// sends payment details unencrypted; "+
				"fine on loopback or a private network you trust", i))
		}
	}
	for _, sc := range slices.Sorted(maps.Keys(c.C2B.Shortcodes)) {
		rt := c.C2B.Shortcodes[sc].ResponseType
		if fb := c.ValidationFallback(sc); (rt == ResponseCompleted || rt == ResponseCancelled) && fb != c.Validation.OnTimeout {
			out = append(out, fmt.Sprintf("c2b.shortcodes.%s.response_type: %s (registered with Daraja) answers a late validation with %s, "+
				"not validation.on_timeout %s: the edge follows the registration for this shortcode", sc, rt, fb, c.Validation.OnTimeout))
		}
	}
	return out
}
