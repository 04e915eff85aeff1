package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func noEnv(string) string { return "" }

func TestExampleLoads(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "config.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(data, noEnv)
	if err != nil {
		t.Fatalf("config.example.yaml does not load: %v", err)
	}
	// The example shows the defaults; it must not drift from them except
	// where it says so.
	want := Default()
	want.Allowlist.CIDRs = []string{"127.0.0.1/32"}
	want.Admin.APIKeys = []string{""}
	want.TLS.ACME.Domains = []string{}
	want.ClientIP.TrustedProxies = []string{}
	if got, w := strings.ReplaceAll(dump(cfg), " ", ""), strings.ReplaceAll(dump(want), " ", ""); got != w {
		t.Errorf("example differs from defaults:\n got %s\nwant %s", got, w)
	}
}

func dump(c Config) string { return strings.ReplaceAll(strings.TrimSpace(sprint(c)), "\n", " ") }

func TestLoadProblems(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string // each must appear as a line
	}{
		{"bad cidr", "allowlist:\n  cidrs: [10.0.0.0/8, 10.1.0.0/16, 10.0.0.0/33]\n",
			[]string{`allowlist.cidrs[2]: "10.0.0.0/33" is not a CIDR`}},
		{"unknown key", "tls:\n  mod: acme\n", []string{"tls.mod: unknown key (line 2)"}},
		{"unknown top key", "listne: :1\n", []string{"listne: unknown key (line 1)"}},
		{"bad duration", "validation:\n  timeout: soon\n",
			[]string{`validation.timeout: "soon" is not a duration (like 4s, 10m, 24h) (line 2)`}},
		{"bad int", "nats:\n  stream:\n    replicas: three\n",
			[]string{`nats.stream.replicas: "three" is not a whole number (line 3)`}},
		{"list expected", "allowlist:\n  cidrs: 10.0.0.0/8\n", []string{"allowlist.cidrs: must be a list (line 2)"}},
		{"several at once", "tls:\n  mode: magic\nallowlist:\n  mode: maybe\nlog:\n  level: loud\n",
			[]string{`tls.mode: "magic" is not one of acme, files, self-signed, off`,
				`allowlist.mode: "maybe" is not one of enforce, report`,
				`log.level: "loud" is not one of debug, info, warn, error`}},
		{"files need files", "tls:\n  mode: files\n",
			[]string{"tls.cert_file: must name a file", "tls.key_file: must name a file"}},
		{"missing file", "tls:\n  mode: files\n  cert_file: /nonexistent/c.pem\n  key_file: /nonexistent/k.pem\n",
			[]string{`tls.cert_file: "/nonexistent/c.pem" cannot be read: no such file or directory`}},
		{"preset", "allowlist:\n  presets: [safaricom, airtel]\n", []string{`allowlist.presets[1]: "airtel" is not a preset (known: safaricom)`}},
		{"ttl order", "tokens:\n  default_ttl: 800h\n", []string{"tokens.default_ttl: 800h0m0s is longer than tokens.max_ttl 720h0m0s"}},
		{"nats url hides secrets", "nats:\n  url: \"http://u:secretpw@h:4222\"\n", []string{"nats.url: is not a nats://, tls://, ws:// or wss:// URL"}},
		{"short key", "admin:\n  api_keys: [short]\n", []string{"admin.api_keys[0]: is shorter than 16 characters"}},
		{"duplicate key", "listen: \":1\"\nlisten: \":2\"\n", []string{"listen: set twice (line 2)"}},
		{"not yaml", "tls: [\n", []string{"not valid YAML"}},
		{"enforce nothing", "allowlist:\n  presets: []\n", []string{"allowlist: enforce mode with no presets and no cidrs would refuse every callback"}},
		{"same listeners", "listen: 127.0.0.1:9090\n", []string{`admin.listen: "127.0.0.1:9090" is also the public listen address`}},
		{"alias loop", "allowlist:\n  cidrs: &x [*x]\n", []string{"allowlist.cidrs[0]: must be a single value"}},
		{"validation vs write", "validation:\n  timeout: 20s\n", []string{"validation.timeout: 20s must be shorter than limits.write_timeout 10s"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load([]byte(tt.yaml), noEnv)
			if err == nil {
				t.Fatal("no error")
			}
			var lines []string
			for _, p := range Problems(err) {
				lines = append(lines, p.Error())
			}
			all := strings.Join(lines, "\n")
			for _, w := range tt.want {
				found := false
				for _, l := range lines {
					if strings.HasPrefix(l, w) {
						found = true
					}
				}
				if !found {
					t.Errorf("missing %q in:\n%s", w, all)
				}
			}
			if strings.Contains(all, "secretpw") {
				t.Errorf("problem text leaks a password: %s", all)
			}
		})
	}
}

func TestEnvExpansion(t *testing.T) {
	env := map[string]string{"KEY": "0123456789abcdef-key", "REPLICAS": "3", "EVIL": "x@y\nlisten: :1"}
	cfg, err := Load([]byte("admin:\n  api_keys: [\"${KEY}\", \"${UNSET}\"]\nnats:\n  stream:\n    replicas: ${REPLICAS}\nlog:\n  format: json\ntls:\n  acme:\n    email: \"${EVIL}\"\n"),
		func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	// EVIL must stay a single string value, never YAML structure.
	if cfg.TLS.ACME.Email != env["EVIL"] {
		t.Errorf("email = %q", cfg.TLS.ACME.Email)
	}
	if cfg.NATS.Stream.Replicas != 3 {
		t.Errorf("replicas = %d, want 3", cfg.NATS.Stream.Replicas)
	}
	if got := cfg.Admin.Keys(); len(got) != 1 || got[0] != env["KEY"] {
		t.Errorf("keys = %q", got)
	}
	if cfg.Listen != ":8443" {
		t.Errorf("listen changed to %q by an env value", cfg.Listen)
	}
}

func TestDefaultsApplyUnderPartialFile(t *testing.T) {
	cfg, err := Load([]byte("validation:\n  on_timeout: reject\n"), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Validation.Timeout != 4*time.Second || cfg.Validation.OnTimeout != "reject" {
		t.Errorf("validation = %+v", cfg.Validation)
	}
	if cfg.NATS.Stream.Name != "DARAJA" {
		t.Errorf("stream default lost: %+v", cfg.NATS.Stream)
	}
}

func FuzzLoad(f *testing.F) {
	if data, err := os.ReadFile(filepath.Join("..", "config.example.yaml")); err == nil {
		f.Add(string(data))
	}
	f.Add("tls:\n  mode: files\n")
	f.Add("allowlist: {cidrs: [\"::ffff:1.2.3.4/120\"]}\n")
	f.Add("a: &x [1]\nb: *x\n")
	f.Fuzz(func(t *testing.T, s string) {
		cfg, err := Load([]byte(s), func(string) string { return "v" })
		if err == nil {
			if verr := cfg.Validate(); verr != nil {
				t.Fatalf("Load accepted a config Validate refuses: %v", verr)
			}
		}
	})
}
