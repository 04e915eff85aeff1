package config

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	goodSecret  = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3" // 24 bytes
	shortSecret = "whsec_c2hvcnQ="                         // 5 bytes
)

func TestForwardDefaults(t *testing.T) {
	y := "forward:\n  destinations:\n    - name: shop\n      url: https://shop.internal/mpesa\n      secrets: [\"${SECRET}\"]\n" +
		"    - name: ledger\n      url: http://127.0.0.1:8080\n      secrets: [" + goodSecret + "]\n      kinds: [b2c.result]\n      timeout: 2s\n      retry: [0s]\n" +
		"c2b: {shortcodes: {\"600999\": {response_type: Completed}}}\n"
	cfg, err := Load([]byte(y), env(map[string]string{"SECRET": goodSecret}))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Forward.Destinations) != 2 {
		t.Fatalf("destinations %+v", cfg.Forward.Destinations)
	}
	shop, ledger := cfg.Forward.Destinations[0], cfg.Forward.Destinations[1]
	want := DefaultDestination()
	want.Name, want.URL, want.Secrets = "shop", "https://shop.internal/mpesa", []string{goodSecret}
	if dump := sprintDestination(shop); dump != sprintDestination(want) {
		t.Errorf("shop = %s\nwant %s", dump, sprintDestination(want))
	}
	if slices.Contains(shop.Kinds, "c2b.validation") || !slices.Contains(shop.Kinds, "c2b.confirmation") || len(shop.Kinds) != 12 {
		t.Errorf("default kinds %q", shop.Kinds)
	}
	if len(shop.Retry) != 12 || shop.Retry[11] != 24*time.Hour || shop.Timeout != 10*time.Second || shop.Concurrency != 8 ||
		shop.Circuit != (Circuit{Failures: 5, Probe: 10 * time.Second}) || shop.ValidationTimeout != 3*time.Second || shop.RetryAfterCap != time.Hour {
		t.Errorf("defaults not applied: %+v", shop)
	}
	// The second entry starts from the defaults too, not from the first.
	if ledger.Timeout != 2*time.Second || len(ledger.Retry) != 1 || ledger.Concurrency != 8 || !slices.Equal(ledger.Kinds, []string{"b2c.result"}) {
		t.Errorf("ledger %+v", ledger)
	}
	if cfg.ValidationFallback("600999") != OnTimeoutAccept || cfg.ValidationFallback("123456") != cfg.Validation.OnTimeout {
		t.Errorf("fallbacks %s %s", cfg.ValidationFallback("600999"), cfg.ValidationFallback("123456"))
	}
	if w := cfg.Warnings(); len(w) != 1 || !strings.HasPrefix(w[0], "forward.destinations[1].url: http:// sends payment details unencrypted") {
		t.Errorf("warnings %q", w)
	}
	// The same round trip FuzzLoad checks.
	again, err := Load(marshal(t, cfg), noEnv)
	if err != nil || !same(cfg, again) {
		t.Errorf("round trip: %v\n%+v\n%+v", err, cfg.Forward, again.Forward)
	}
}

func sprintDestination(d Destination) string {
	return strings.ReplaceAll(sprint(Config{Forward: Forward{Destinations: []Destination{d}}}), "\n", " ")
}

func TestForwardProblems(t *testing.T) {
	dir := t.TempDir()
	certA, keyA := writePair(t, dir, "a")
	_, keyB := writePair(t, dir, "b")
	junk := filepath.Join(dir, "junk.pem")
	os.WriteFile(junk, []byte("junk"), 0o600)

	dest := func(extra string) string {
		return "forward:\n  destinations:\n    - {name: shop, url: \"https://shop.internal\", secrets: [" + goodSecret + "]" + extra + "}\n"
	}
	tests := []struct {
		name, yaml string
		want       []string
	}{
		{"ok", dest(""), nil},
		{"no name, no url, no secret", "forward:\n  destinations:\n    - {}\n", []string{
			`forward.destinations[0].name: "" must be 1 to 64 lowercase letters, digits, _ or -`,
			"forward.destinations[0].url: must be an http:// or https:// URL",
			"forward.destinations[0].secrets: needs at least one whsec_ secret",
		}},
		{"duplicate name", "forward:\n  destinations:\n    - {name: a, url: \"https://a\", secrets: [" + goodSecret + "]}\n    - {name: a, url: \"https://b\", secrets: [" + goodSecret + "]}\n",
			[]string{`forward.destinations[1].name: "a" is also the name of forward.destinations[0]`}},
		{"bad scheme hides url", "forward:\n  destinations:\n    - {name: a, url: \"ftp://u:secretpw@h\", secrets: [" + goodSecret + "]}\n",
			[]string{"forward.destinations[0].url: is not an absolute http:// or https:// URL"}},
		{"query in base", "forward:\n  destinations:\n    - {name: a, url: \"https://h/x?a=1\", secrets: [" + goodSecret + "]}\n", []string{"forward.destinations[0].url: must not carry a fragment or a query"}},
		{"paths", dest(", paths: {stk.callback: stk, bogus.kind: /x, b2c.result: \"/a b\"}"), []string{
			`forward.destinations[0].paths.stk.callback: "stk" must start with /`,
			"forward.destinations[0].paths.bogus.kind: is not a callback kind",
			`forward.destinations[0].paths.b2c.result: "/a b" must start with / and hold no ?, # or spaces`,
		}},
		{"kinds", dest(", kinds: [c2b.validation, stk.push]"), []string{
			"forward.destinations[0].kinds[0]: c2b.validation is answered through validation_url, not delivered",
			`forward.destinations[0].kinds[1]: "stk.push" is not a callback kind`,
		}},
		{"kinds empty", dest(", kinds: []"), []string{"forward.destinations[0].kinds: is empty"}},
		{"shortcodes", dest(", shortcodes: [\"600999\", \"12\", abcdef]"), []string{
			`forward.destinations[0].shortcodes[1]: "12" is not a shortcode (5 to 9 digits)`,
			`forward.destinations[0].shortcodes[2]: "abcdef" is not a shortcode`,
		}},
		{"secrets", "forward:\n  destinations:\n    - {name: a, url: \"https://a\", secrets: [secretpw, whsec_secretpw!!, " + shortSecret + "]}\n", []string{
			`forward.destinations[0].secrets[0]: must start with "whsec_"`,
			"forward.destinations[0].secrets[1]: is not whsec_ followed by base64",
			"forward.destinations[0].secrets[2]: holds 5 bytes: at least 24 are needed",
		}},
		{"tls", dest(", tls: {ca_file: " + junk + ", cert_file: " + certA + ", key_file: " + keyB + "}"), []string{
			`forward.destinations[0].tls.ca_file: "` + junk + `" holds no PEM certificate`,
			`forward.destinations[0].tls.cert_file: "` + certA + `" with forward.destinations[0].tls.key_file "` + keyB + `" is not a usable certificate and key`,
		}},
		{"tls half", dest(", tls: {cert_file: " + certA + "}"), []string{"forward.destinations[0].tls.cert_file: tls.cert_file and tls.key_file go together"}},
		{"tls ok", dest(", tls: {ca_file: " + certA + ", cert_file: " + certA + ", key_file: " + keyA + "}"), nil},
		{"tls with http", "forward:\n  destinations:\n    - {name: a, url: \"http://h\", secrets: [" + goodSecret + "], tls: {ca_file: " + certA + "}}\n", []string{"forward.destinations[0].tls: is set but url is http://"}},
		{"headers", dest(", headers: {\"Bad Name\": x, Content-Type: text/plain, Webhook-Signature: x, Authorization: \"Bearer secretpw\\r\\nX: y\"}"), []string{
			`forward.destinations[0].headers: "Bad Name" is not a header name`,
			"forward.destinations[0].headers.Content-Type: is set by the forwarder itself",
			"forward.destinations[0].headers.Webhook-Signature: is set by the forwarder itself",
			"forward.destinations[0].headers.Authorization: holds a character a header value cannot",
		}},
		{"numbers", dest(", timeout: 0s, concurrency: 0, rate: -1, retry: [], retry_after_cap: -1s, circuit: {failures: 0, probe: 0s}"), []string{
			"forward.destinations[0].timeout: 0s must be longer than zero",
			"forward.destinations[0].concurrency: 0 must be at least 1",
			"forward.destinations[0].rate: -1 must be 0 (unlimited)",
			"forward.destinations[0].retry: is empty",
			"forward.destinations[0].retry_after_cap: -1s must not be negative",
			"forward.destinations[0].circuit.failures: 0 must be at least 1",
			"forward.destinations[0].circuit.probe: 0s must be longer than zero",
		}},
		{"rate NaN", dest(", rate: .nan"), []string{"forward.destinations[0].rate: NaN must be 0"}},
		{"negative retry", dest(", retry: [0s, -5s]"), []string{"forward.destinations[0].retry[1]: -5s must not be negative"}},
		{"validation", dest(", validation_url: \"shop.internal/validate\""), []string{"forward.destinations[0].validation_url: is not an absolute http:// or https:// URL"}},
		{"validation timeout", dest(", validation_url: \"https://shop.internal/validate\", validation_timeout: 4s"),
			[]string{"forward.destinations[0].validation_timeout: 4s must be shorter than validation.timeout 4s"}},
		{"validation timeout unused", dest(", validation_timeout: 9s"), nil},
		{"unknown key", dest(", secret: x"), []string{"forward.destinations[0].secret: unknown key (line 3); did you mean secrets?"}},
		{"c2b", "c2b:\n  shortcodes:\n    \"600999\": {response_type: completed}\n    \"12\": {response_type: Cancelled}\n    \"600998\": {}\n", []string{
			`c2b.shortcodes.12: "12" is not a shortcode (5 to 9 digits)`,
			`c2b.shortcodes.600998.response_type: "" is not one of Completed, Cancelled`,
			`c2b.shortcodes.600999.response_type: "completed" is not one of Completed, Cancelled`,
		}},
		{"c2b not a map", "c2b:\n  shortcodes: [600999]\n", []string{"c2b.shortcodes: must be a mapping (line 2)"}},
		{"c2b twice", "c2b:\n  shortcodes:\n    \"600999\": {response_type: Completed}\n    \"600999\": {response_type: Cancelled}\n",
			[]string{"c2b.shortcodes.600999: set twice (line 4)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lines := problemLines(t, tt.yaml, noEnv)
			all := strings.Join(lines, "\n")
			if tt.want == nil && len(lines) > 0 {
				t.Fatalf("problems:\n%s", all)
			}
			for _, w := range tt.want {
				found := false
				for _, l := range lines {
					found = found || strings.HasPrefix(l, w)
				}
				if !found {
					t.Errorf("missing %q in:\n%s", w, all)
				}
			}
			if strings.Contains(all, "secretpw") {
				t.Errorf("problem text leaks a secret:\n%s", all)
			}
		})
	}
}

func TestC2BWarnings(t *testing.T) {
	cfg, err := Load([]byte("validation: {on_timeout: reject}\nc2b:\n  shortcodes:\n    \"600999\": {response_type: Completed}\n    \"600998\": {response_type: Cancelled}\n"), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	w := cfg.Warnings()
	if len(w) != 1 || !strings.HasPrefix(w[0], "c2b.shortcodes.600999.response_type: Completed (registered with Daraja) answers a late validation with accept, not validation.on_timeout reject") {
		t.Errorf("warnings %q", w)
	}
	if cfg.ValidationFallback("600998") != OnTimeoutReject || cfg.ValidationFallback("600999") != OnTimeoutAccept || cfg.ValidationFallback("1") != OnTimeoutReject {
		t.Error("fallbacks")
	}
}

// TestAliasBombThroughSchema: aliases that multiply through the schema
// (every destination sharing a large header map, every header map...)
// are refused by the decode budget, in a file of a few KB.
func TestAliasBombThroughSchema(t *testing.T) {
	var b strings.Builder
	b.WriteString("x-headers: &h {")
	for i := range 300 {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("h" + strconv.Itoa(i) + ": v")
	}
	b.WriteString("}\nx-dest: &d {name: a, url: \"https://a\", secrets: [" + goodSecret + "], headers: *h, shortcodes: &s [")
	for i := range 300 {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("\"60000" + strconv.Itoa(i%10) + "\"")
	}
	b.WriteString("]}\nforward:\n  destinations: [")
	for i := range 400 {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString("*d")
	}
	b.WriteString("]\n")
	if b.Len() > 8<<10 {
		t.Fatalf("bomb is %d bytes", b.Len())
	}
	lines := problemLines(t, b.String(), noEnv)
	found := false
	for _, l := range lines {
		found = found || strings.HasPrefix(l, "forward.destinations[") && strings.Contains(l, "aliases expand the file too far")
	}
	if !found || len(lines) > 1000 {
		t.Errorf("%d problems, the budget's not among them: %q", len(lines), lines[:min(len(lines), 5)])
	}
}

// TestSecretsFile (issue 20): a destination's signing secrets can come
// from a file, one a line, blank lines and # comments ignored; check
// names the file and the line of a bad one and never echoes a secret.
func TestSecretsFile(t *testing.T) {
	dir := t.TempDir()
	const other = "whsec_YW5vdGhlci1zZWNyZXQtMDEyMzQ1Njc4OWFi" // 30 bytes
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good", "# shop signing secrets: new first\n"+other+"\n\n  "+goodSecret+"  \r\n# old one above\n")
	bad := write("bad", "# comment\nwhsec_secretpw!!\n"+goodSecret+"\nsecretpw-not-whsec\n"+shortSecret+"\n")
	empty := write("empty", "# nothing yet\n\n")
	missing := filepath.Join(dir, "missing")
	dest := func(extra string) string {
		return "forward:\n  destinations:\n    - {name: shop, url: \"https://shop.internal\"" + extra + "}\n"
	}

	cfg, err := Load([]byte(dest(", secrets: ["+goodSecret+"], secrets_file: "+good)), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	d := cfg.Forward.Destinations[0]
	if got, err := d.SigningSecrets(); err != nil || !slices.Equal(got, []string{goodSecret, other, goodSecret}) {
		t.Errorf("SigningSecrets: %q, %v", got, err)
	}
	resolved, err := cfg.WithFileSecrets()
	if rd := resolved.Forward.Destinations[0]; err != nil || rd.SecretsFile != "" || !slices.Equal(rd.Secrets, []string{goodSecret, other, goodSecret}) {
		t.Errorf("WithFileSecrets: %+v, %v", rd, err)
	}
	if d := cfg.Forward.Destinations[0]; d.SecretsFile != good || len(d.Secrets) != 1 {
		t.Errorf("WithFileSecrets changed its receiver: %+v", d)
	}
	if resolved.Validate() != nil {
		t.Errorf("resolved config invalid: %v", resolved.Validate())
	}
	// secrets_file alone is enough.
	if _, err := Load([]byte(dest(", secrets_file: "+good)), noEnv); err != nil {
		t.Errorf("secrets_file alone: %v", err)
	}

	for _, tt := range []struct {
		name, extra string
		want        []string
	}{
		{"missing", ", secrets_file: " + missing, []string{`forward.destinations[0].secrets_file: "` + missing + `" cannot be read: no such file or directory`}},
		{"bad lines", ", secrets_file: " + bad, []string{
			`forward.destinations[0].secrets_file: "` + bad + `" line 2: the secret is not whsec_ followed by base64`,
			`forward.destinations[0].secrets_file: "` + bad + `" line 4: the secret must start with "whsec_"`,
			`forward.destinations[0].secrets_file: "` + bad + `" line 5: the secret holds 5 bytes: at least 24 are needed`,
		}},
		{"empty", ", secrets_file: " + empty, []string{`forward.destinations[0].secrets_file: "` + empty + `" holds no secret`}},
		{"neither", "", []string{"forward.destinations[0].secrets: needs at least one whsec_ secret, in secrets or secrets_file"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			lines := problemLines(t, dest(tt.extra), noEnv)
			if len(lines) != len(tt.want) {
				t.Errorf("problems %q, want %d", lines, len(tt.want))
			}
			all := strings.Join(lines, "\n")
			for _, w := range tt.want {
				if !strings.Contains(all, w) {
					t.Errorf("missing %q in:\n%s", w, all)
				}
			}
			if strings.Contains(all, "secretpw") || strings.Contains(all, strings.TrimPrefix(goodSecret, "whsec_")) {
				t.Errorf("a problem echoes a secret:\n%s", all)
			}
		})
	}
	if _, err := (Destination{SecretsFile: missing}).SigningSecrets(); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("SigningSecrets of a missing file: %v", err)
	}
	if _, err := (Config{Forward: Forward{Destinations: []Destination{{SecretsFile: bad}}}}).WithFileSecrets(); err == nil ||
		!strings.Contains(err.Error(), "forward.destinations[0].secrets_file: ") || strings.Contains(err.Error(), "secretpw") {
		t.Errorf("WithFileSecrets of a bad file: %v", err)
	}
}
