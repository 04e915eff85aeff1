package config

import (
	"fmt"
	"maps"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"
)

// Daraja API base URLs.
const (
	DarajaSandbox    = "https://sandbox.safaricom.co.ke"
	DarajaProduction = "https://api.safaricom.co.ke"
)

// Recovery asks Daraja about missing callbacks (STK Push Query,
// Transaction Status, Pull Transactions) and publishes the answer on
// <prefix>.recovered.<kind>.<shortcode>.<token id>. Off by default.
//
// Every secret is given either as a value (normally "${ENV}", expanded at
// load) or as a *_file key naming a file that holds it (trailing newline
// trimmed); never both. Secrets are never logged.
type Recovery struct {
	// Enabled turns recovery on. Default false.
	Enabled bool `yaml:"enabled"`
	// BaseURL is Daraja's API base: https://sandbox.safaricom.co.ke or
	// https://api.safaricom.co.ke (http:// only to a loopback stand-in, for
	// tests). Default the sandbox.
	BaseURL string `yaml:"base_url"`
	// ConsumerKey and ConsumerSecret are the Daraja app's OAuth client
	// credentials; a shortcode may name its own app instead.
	ConsumerKey        string `yaml:"consumer_key"`
	ConsumerKeyFile    string `yaml:"consumer_key_file"`
	ConsumerSecret     string `yaml:"consumer_secret"`
	ConsumerSecretFile string `yaml:"consumer_secret_file"`
	// Rate is Daraja queries per second across every replica together
	// (counted in a shared key-value bucket); Burst the queries one edge
	// may start at once. Default 2 and 5 (Daraja's spike arrest is a few
	// per second per app).
	Rate  float64 `yaml:"rate"`
	Burst int     `yaml:"burst"`
	// Timeout bounds one HTTP call to Daraja. Default 15s.
	Timeout time.Duration `yaml:"timeout"`
	// Attempts bounds the tries of one query (a failure that may pass: a
	// network error, 429, 5xx, a transaction still being processed).
	// Default 6.
	Attempts int `yaml:"attempts"`
	// Backoff is the wait after the first failed try, doubled after each
	// (±20 % jitter) up to MaxBackoff. Default 5s and 2m.
	Backoff    time.Duration `yaml:"backoff"`
	MaxBackoff time.Duration `yaml:"max_backoff"`
	// ResultTTL is the life of the fresh token a Transaction Status query
	// hands Daraja as its ResultURL and QueueTimeOutURL. Default 24h.
	ResultTTL time.Duration `yaml:"result_ttl"`
	// Shortcodes maps each business shortcode to its query credentials.
	Shortcodes map[string]RecoveryShortcode `yaml:"shortcodes"`
}

// RecoveryShortcode is what one shortcode needs for the queries it makes.
type RecoveryShortcode struct {
	// ConsumerKey and ConsumerSecret override recovery's app for this
	// shortcode (a business with one Daraja app per shortcode).
	ConsumerKey        string `yaml:"consumer_key"`
	ConsumerKeyFile    string `yaml:"consumer_key_file"`
	ConsumerSecret     string `yaml:"consumer_secret"`
	ConsumerSecretFile string `yaml:"consumer_secret_file"`
	// Passkey is the Lipa Na M-Pesa Online passkey: set, STK callbacks
	// are recovered by STK Push Query.
	Passkey     string `yaml:"passkey"`
	PasskeyFile string `yaml:"passkey_file"`
	// InitiatorName is the API operator that makes Transaction Status
	// queries (one with query permissions only): set, B2C, B2B and
	// reversal results are recovered by Transaction Status.
	InitiatorName string `yaml:"initiator_name"`
	// SecurityCredential is the initiator's password encrypted with
	// Safaricom's certificate, ready-made (base64); or the edge computes
	// it at start-up from InitiatorPasswordFile and CertificateFile.
	SecurityCredential     string `yaml:"security_credential"`
	SecurityCredentialFile string `yaml:"security_credential_file"`
	InitiatorPasswordFile  string `yaml:"initiator_password_file"`
	// CertificateFile is Safaricom's public certificate (PEM) for the
	// environment base_url names.
	CertificateFile string `yaml:"certificate_file"`
	// IdentifierType is Transaction Status's PartyA type: 1 MSISDN, 2 till
	// number, 4 organisation shortcode. Default 4.
	IdentifierType string `yaml:"identifier_type"`
	// Pull: the shortcode is registered for the Pull Transactions API, so
	// C2B confirmations are recovered by pulling the token's window.
	Pull bool `yaml:"pull"`
}

// DefaultRecovery is recovery with every default (off).
func DefaultRecovery() Recovery {
	return Recovery{
		BaseURL: DarajaSandbox, Rate: 2, Burst: 5, Timeout: 15 * time.Second, Attempts: 6,
		Backoff: 5 * time.Second, MaxBackoff: 2 * time.Minute, ResultTTL: 24 * time.Hour,
	}
}

// Secret returns a secret given as a value or as a file holding it
// (trailing whitespace trimmed). The error names the file, never the
// content.
func Secret(value, file string) (string, error) {
	if file == "" {
		return value, nil
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", file, unwrapPath(err))
	}
	return strings.TrimRight(string(data), " \t\r\n"), nil
}

// STK reports whether the shortcode is set up for STK Push Query.
func (r RecoveryShortcode) STK() bool { return r.Passkey != "" || r.PasskeyFile != "" }

// Status reports whether the shortcode is set up for Transaction Status.
func (r RecoveryShortcode) Status() bool { return r.InitiatorName != "" }

func (v *validator) recovery(c Config) {
	r := c.Recovery
	if !r.Enabled {
		return
	}
	if u := v.httpURL("recovery.base_url", r.BaseURL, true); u != nil {
		base := strings.TrimRight(r.BaseURL, "/")
		if u.Scheme == "http" && !isLoopback(u.Hostname()) {
			v.add("recovery.base_url", "http:// only to a loopback stand-in; Daraja is %s or %s", DarajaSandbox, DarajaProduction)
		} else if u.Scheme == "https" && base != DarajaSandbox && base != DarajaProduction && !isLoopback(u.Hostname()) {
			v.add("recovery.base_url", "%q is neither Daraja's sandbox (%s) nor production (%s)", clip(redactURL(u)), DarajaSandbox, DarajaProduction)
		}
	}
	if !finitePositive(r.Rate) || r.Burst < 1 {
		v.add("recovery.rate", "%v per second with a burst of %d: both must be above zero", r.Rate, r.Burst)
	}
	v.positive("recovery.timeout", r.Timeout)
	v.positive("recovery.backoff", r.Backoff)
	v.positive("recovery.result_ttl", r.ResultTTL)
	if r.MaxBackoff < r.Backoff {
		v.add("recovery.max_backoff", "%s is shorter than recovery.backoff %s", r.MaxBackoff, r.Backoff)
	}
	if r.Attempts < 1 || r.Attempts > 20 {
		v.add("recovery.attempts", "%d: must be 1 to 20", r.Attempts)
	}
	if r.ResultTTL > c.Tokens.MaxTTL {
		v.add("recovery.result_ttl", "%s is longer than tokens.max_ttl %s", r.ResultTTL, c.Tokens.MaxTTL)
	}
	topKey := v.secret("recovery.consumer_key", r.ConsumerKey, r.ConsumerKeyFile)
	topSecret := v.secret("recovery.consumer_secret", r.ConsumerSecret, r.ConsumerSecretFile)
	if len(r.Shortcodes) == 0 {
		v.add("recovery.shortcodes", "names no shortcode: list each shortcode whose missing callbacks are to be recovered")
	}
	for _, sc := range slices.Sorted(maps.Keys(r.Shortcodes)) {
		key := func(k string) string { return "recovery.shortcodes." + sc + "." + k }
		s := r.Shortcodes[sc]
		if !shortcodeRE.MatchString(sc) {
			v.add("recovery.shortcodes."+sc, "%q is not a shortcode (5 to 9 digits)", clip(sc))
		}
		ownKey := v.secret(key("consumer_key"), s.ConsumerKey, s.ConsumerKeyFile)
		ownSecret := v.secret(key("consumer_secret"), s.ConsumerSecret, s.ConsumerSecretFile)
		// A shortcode's own app is its own key and secret together: one
		// without the other would run with the top-level half of another
		// app (an empty secret, or a secret ignored).
		switch {
		case ownKey && !ownSecret:
			v.add(key("consumer_secret"), "missing: given with this shortcode's own consumer_key (an app's key and secret go together)")
		case ownSecret && !ownKey:
			v.add(key("consumer_key"), "missing: given with this shortcode's own consumer_secret (an app's key and secret go together)")
		case !ownKey:
			if !topKey {
				v.add(key("consumer_key"), "missing: set recovery.consumer_key (or _file), or this shortcode's own")
			}
			if !topSecret {
				v.add(key("consumer_secret"), "missing: set recovery.consumer_secret (or _file), or this shortcode's own")
			}
		}
		stk := v.secret(key("passkey"), s.Passkey, s.PasskeyFile)
		status := s.InitiatorName != ""
		if !stk && !status && !s.Pull {
			v.add("recovery.shortcodes."+sc, "names no query: set passkey (STK Push Query), initiator_name with a security "+
				"credential (Transaction Status), or pull: true (Pull Transactions)")
		}
		ready := v.secret(key("security_credential"), s.SecurityCredential, s.SecurityCredentialFile)
		computed := s.InitiatorPasswordFile != "" || s.CertificateFile != ""
		switch {
		case ready && computed:
			v.add(key("security_credential"), "given ready-made and as initiator_password_file/certificate_file: name one")
		case computed && (s.InitiatorPasswordFile == "" || s.CertificateFile == ""):
			v.add(key("initiator_password_file"), "initiator_password_file and certificate_file go together")
		case computed:
			v.file(key("initiator_password_file"), s.InitiatorPasswordFile)
			v.caFile(key("certificate_file"), s.CertificateFile)
		}
		if status && !ready && !computed {
			v.add(key("security_credential"), "missing: Transaction Status needs security_credential (or _file), "+
				"or initiator_password_file with certificate_file")
		}
		if !status && (ready || computed) {
			v.add(key("initiator_name"), "missing: a security credential is given but no initiator_name")
		}
		switch s.IdentifierType {
		case "", "1", "2", "4":
		default:
			v.add(key("identifier_type"), "%q is not one of 1 (MSISDN), 2 (till number), 4 (organisation shortcode)", clip(s.IdentifierType))
		}
	}
}

// secret checks a secret given as a value or a file: not both, and the
// file readable. It reports whether the secret is set.
func (v *validator) secret(key, value, file string) bool {
	switch {
	case value != "" && file != "":
		v.add(key, "given both as a value and as %s_file: name one", key[strings.LastIndexByte(key, '.')+1:])
		return true
	case file != "":
		if s, err := Secret("", file); err != nil {
			v.add(key+"_file", "%v", err)
		} else if s == "" {
			v.add(key+"_file", "%q is empty", file)
		}
		return true
	}
	return value != ""
}

func redactURL(u *url.URL) string { return u.Redacted() }
