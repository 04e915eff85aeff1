package config

import (
	"strings"
	"testing"
)

// TestEnvForms: each reference form, for a variable that is set, set but
// empty, and unset, follows the shell (issue 13's blocker: an unset
// ${VAR} used to expand to "" without a word).
func TestEnvForms(t *testing.T) {
	vars := env(map[string]string{"SET": "val", "EMPTY": "", "REF": "${SET}"})
	tests := []struct {
		value string // written double-quoted as tls.acme.email (free text outside acme mode)
		want  string // the loaded value, when wantErr is ""
		// wantErr must start a problem line.
		wantErr string
	}{
		{"${SET}", "val", ""},
		{"${EMPTY}", "", ""},
		{"${UNSET}", "", "tls.acme.email: ${UNSET} is not set (use ${UNSET:-default} for a default) (line 1)"},
		{"${SET:-d}", "val", ""},
		{"${EMPTY:-d}", "d", ""},
		{"${UNSET:-d}", "d", ""},
		{"${UNSET:-}", "", ""},
		{"${UNSET:-a b/c:d}", "a b/c:d", ""},
		{"${SET-d}", "val", ""},
		{"${EMPTY-d}", "", ""},
		{"${UNSET-d}", "d", ""},
		{"${SET:?need it}", "val", ""},
		{"${EMPTY:?need it}", "", "tls.acme.email: ${EMPTY}: need it (line 1)"},
		{"${UNSET:?need it}", "", "tls.acme.email: ${UNSET}: need it (line 1)"},
		{"${UNSET:?}", "", "tls.acme.email: ${UNSET}: is not set or empty"},
		{"${EMPTY?need it}", "", ""},
		{"${UNSET?need it}", "", "tls.acme.email: ${UNSET}: need it"},
		{"${UNSET?}", "", "tls.acme.email: ${UNSET}: is not set"},
		{"x${SET}y${SET}z", "xvalyvalz", ""},
		{"$${SET}", "${SET}", ""},
		{"a$$b", "a$b", ""},
		{"a$b $", "a$b $", ""},
		{"$$$${SET}", "$${SET}", ""},
		{"${REF}", "${SET}", ""}, // a value is never expanded again
		{"${SET", "", "tls.acme.email: ${SET has no closing }: write $${ for a literal ${"},
		{"${1X}", "", "tls.acme.email: ${1X} is not a variable reference"},
		{"${}", "", "tls.acme.email: ${} is not a variable reference"},
		{"${SET:+x}", "", "tls.acme.email: ${SET:+x} is not a form daraja-edge knows"},
		{"${UNSET:-${SET}}", "", "tls.acme.email: ${UNSET:-${SET}: a default or message cannot hold another reference"},
	}
	for _, tt := range tests {
		t.Run(tt.value, func(t *testing.T) {
			y := `tls: {acme: {email: "` + tt.value + `"}}` + "\n"
			cfg, err := Load([]byte(y), vars)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("error: %v", err)
				}
				if cfg.TLS.ACME.Email != tt.want {
					t.Errorf("got %q, want %q", cfg.TLS.ACME.Email, tt.want)
				}
				return
			}
			lines := problemLines(t, y, vars)
			for _, l := range lines {
				if strings.HasPrefix(l, tt.wantErr) {
					return
				}
			}
			t.Errorf("missing %q in %q", tt.wantErr, lines)
		})
	}
}

// TestEnvNamesKey: the problem names the key the reference is in, as
// `check` and `serve` print it, and an unset cluster URL is an error
// rather than a quiet switch to embedded NATS.
func TestEnvNamesKey(t *testing.T) {
	y := "public_url: ${PUBLIC_URL}\nnats:\n  url: \"${NATS_URL}\"\nallowlist:\n  cidrs: [10.0.0.0/8, \"${EXTRA_CIDR}\"]\n"
	lines := problemLines(t, y, noEnv)
	for _, w := range []string{
		"public_url: ${PUBLIC_URL} is not set",
		"nats.url: ${NATS_URL} is not set",
		"allowlist.cidrs[1]: ${EXTRA_CIDR} is not set",
	} {
		found := false
		for _, l := range lines {
			found = found || strings.HasPrefix(l, w)
		}
		if !found {
			t.Errorf("missing %q in:\n%s", w, strings.Join(lines, "\n"))
		}
	}
	// The same file with the variables set loads.
	vars := env(map[string]string{"PUBLIC_URL": "https://cb.example.co.ke", "NATS_URL": "nats://n1:4222", "EXTRA_CIDR": "192.0.2.0/24"})
	cfg, err := Load([]byte(y), vars)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.NATS.URL != "nats://n1:4222" || cfg.PublicURL != "https://cb.example.co.ke" || cfg.Allowlist.CIDRs[1] != "192.0.2.0/24" {
		t.Errorf("loaded %q %q %q", cfg.NATS.URL, cfg.PublicURL, cfg.Allowlist.CIDRs)
	}
}

func TestEnvExpansion(t *testing.T) {
	vars := map[string]string{"KEY": "0123456789abcdef-key", "REPLICAS": "3", "EVIL": "x@y\nlisten: :1", "IP": "192.0.2.0/24", "EMPTY": ""}
	cfg, err := Load([]byte("admin:\n  api_keys: [\"${KEY}\", \"${EMPTY}\"]\nnats:\n  url: nats://a:4222\n  stream:\n    replicas: ${REPLICAS}\n"+
		"log:\n  format: json\ntls:\n  acme:\n    email: \"${EVIL}\"\nallowlist:\n  cidrs: [&c \"${IP}\", *c]\n"), env(vars))
	if err != nil {
		t.Fatal(err)
	}
	// EVIL must stay a single string value, never YAML structure.
	if cfg.TLS.ACME.Email != vars["EVIL"] {
		t.Errorf("email = %q", cfg.TLS.ACME.Email)
	}
	if cfg.NATS.Stream.Replicas != 3 {
		t.Errorf("replicas = %d, want 3", cfg.NATS.Stream.Replicas)
	}
	if got := cfg.Admin.Keys(); len(got) != 1 || got[0] != vars["KEY"] {
		t.Errorf("keys = %q", got)
	}
	if cfg.Listen != ":8443" {
		t.Errorf("listen changed to %q by an env value", cfg.Listen)
	}
	// An anchor is expanded once, where it is defined; its alias shares it.
	if len(cfg.Allowlist.CIDRs) != 2 || cfg.Allowlist.CIDRs[0] != vars["IP"] || cfg.Allowlist.CIDRs[1] != vars["IP"] {
		t.Errorf("cidrs = %q", cfg.Allowlist.CIDRs)
	}
}

// TestEnvValueNotEchoed: a problem about a reference quotes the reference,
// never the variable's value (it may be a secret).
func TestEnvValueNotEchoed(t *testing.T) {
	vars := env(map[string]string{"PW": "secretpw"})
	lines := problemLines(t, "nats:\n  url: \"nats://u:${PW}@h:4222/${NOPE}\"\n", vars)
	all := strings.Join(lines, "\n")
	if !strings.Contains(all, "nats.url: ${NOPE} is not set") {
		t.Errorf("problems: %s", all)
	}
	if strings.Contains(all, "secretpw") {
		t.Errorf("problem text leaks a variable's value: %s", all)
	}
}

// TestUnsetVariableOneProblem: a key whose variable is unset gets that one
// problem, not also what validation says of the value left in its place
// (`must start with "whsec_"` under `is not set` read as a malformed
// secret); other keys' problems are all still reported.
func TestUnsetVariableOneProblem(t *testing.T) {
	y := "forward:\n  destinations:\n    - {name: shop, url: \"https://shop.internal\", secrets: [\"${SHOP_WEBHOOK_SECRET}\"]}\n" +
		"allowlist:\n  cidrs: [10.0.0.0/33]\n"
	var lines []string
	for _, l := range problemLines(t, y, noEnv) {
		if strings.HasPrefix(l, "forward.destinations[0].secrets[0]") {
			lines = append(lines, l)
		}
	}
	if len(lines) != 1 || !strings.Contains(lines[0], "${SHOP_WEBHOOK_SECRET} is not set") {
		t.Errorf("problems of the secret: %q, want the one saying it is not set", lines)
	}
	if l := strings.Join(problemLines(t, y, noEnv), "\n"); !strings.Contains(l, "allowlist.cidrs[0]") {
		t.Errorf("another key's problem went missing:\n%s", l)
	}
}
