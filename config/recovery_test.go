package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRecoveryValidate: check names what each shortcode's queries lack.
func TestRecoveryValidate(t *testing.T) {
	dir := t.TempDir()
	pk := filepath.Join(dir, "passkey")
	_ = os.WriteFile(pk, []byte("bfb279f9\n"), 0o600)
	for _, tc := range []struct {
		name, want string
		mut        func(*Recovery)
	}{
		{"ok", "", func(r *Recovery) {}},
		{"off needs nothing", "", func(r *Recovery) { *r = DefaultRecovery() }},
		{"no consumer key", "recovery.shortcodes.174379.consumer_key: missing", func(r *Recovery) { r.ConsumerKey = "" }},
		{"both value and file", "recovery.consumer_secret: given both", func(r *Recovery) { r.ConsumerSecretFile = pk }},
		{"no query", "recovery.shortcodes.174379: names no query", func(r *Recovery) {
			r.Shortcodes["174379"] = RecoveryShortcode{}
		}},
		{"initiator without credential", "recovery.shortcodes.174379.security_credential: missing", func(r *Recovery) {
			r.Shortcodes["174379"] = RecoveryShortcode{InitiatorName: "api-op"}
		}},
		{"password without certificate", "initiator_password_file and certificate_file go together", func(r *Recovery) {
			r.Shortcodes["174379"] = RecoveryShortcode{InitiatorName: "api-op", InitiatorPasswordFile: pk}
		}},
		{"passkey file missing", "recovery.shortcodes.174379.passkey_file", func(r *Recovery) {
			r.Shortcodes["174379"] = RecoveryShortcode{PasskeyFile: filepath.Join(dir, "nope")}
		}},
		{"not daraja", "recovery.base_url", func(r *Recovery) { r.BaseURL = "https://daraja.example.com" }},
		{"no shortcodes", "recovery.shortcodes: names no shortcode", func(r *Recovery) { r.Shortcodes = nil }},
		// A shortcode's own app: key and secret together (with only its
		// key it ran with an empty secret; with only its secret, the
		// secret was ignored).
		{"own key without own secret", "recovery.shortcodes.174379.consumer_secret: missing: given with this shortcode's own consumer_key", func(r *Recovery) {
			r.Shortcodes["174379"] = RecoveryShortcode{ConsumerKey: "ownkey", PasskeyFile: pk}
		}},
		{"own secret without own key", "recovery.shortcodes.174379.consumer_key: missing: given with this shortcode's own consumer_secret", func(r *Recovery) {
			r.Shortcodes["174379"] = RecoveryShortcode{ConsumerSecret: "ownsecret", PasskeyFile: pk}
		}},
		{"own key and secret", "", func(r *Recovery) {
			r.Shortcodes["174379"] = RecoveryShortcode{ConsumerKey: "ownkey", ConsumerSecret: "ownsecret", PasskeyFile: pk}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			c.Admin.APIKeys = []string{"0123456789abcdef0123"}
			c.Recovery.Enabled, c.Recovery.ConsumerKey, c.Recovery.ConsumerSecret = true, "key", "secret"
			c.Recovery.Shortcodes = map[string]RecoveryShortcode{"174379": {PasskeyFile: pk}}
			tc.mut(&c.Recovery)
			err := c.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("unexpected: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got %v, want %q", err, tc.want)
			}
			if err != nil && strings.Contains(err.Error(), "bfb279f9") {
				t.Fatalf("a secret is echoed: %v", err)
			}
		})
	}
	if s, err := Secret("", pk); err != nil || s != "bfb279f9" {
		t.Fatalf("Secret: %q %v", s, err)
	}
}
