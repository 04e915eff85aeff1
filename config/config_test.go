package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// noEnv is an environment where no variable is set.
func noEnv(string) (string, bool) { return "", false }

// env is an environment holding exactly m.
func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestExampleLoads(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "config.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	// With no variable set, as on a fresh machine: the example must not
	// depend on one.
	cfg, err := Load(data, noEnv)
	if err != nil {
		t.Fatalf("config.example.yaml does not load with an empty environment: %v", err)
	}
	// The example shows the defaults; it must not drift from them except
	// where it says so.
	want := Default()
	want.Allowlist.CIDRs = []string{"127.0.0.1/32", "::1/128"}
	want.Admin.APIKeys = []string{""}
	want.TLS.ACME.Domains = []string{}
	want.ClientIP.TrustedProxies = []string{}
	if got, w := strings.ReplaceAll(dump(cfg), " ", ""), strings.ReplaceAll(dump(want), " ", ""); got != w {
		t.Errorf("example differs from defaults:\n got %s\nwant %s", got, w)
	}
	// With no key configured, serve generates one (edge adminKeys).
	if keys := cfg.Admin.Keys(); len(keys) != 0 {
		t.Errorf("example holds admin keys %q with DARAJA_EDGE_ADMIN_KEY unset", keys)
	}
	cfg, err = Load(data, env(map[string]string{"DARAJA_EDGE_ADMIN_KEY": "example-admin-key-0123456789"}))
	if err != nil || len(cfg.Admin.Keys()) != 1 {
		t.Errorf("example with DARAJA_EDGE_ADMIN_KEY set: keys %q, %v", cfg.Admin.Keys(), err)
	}
}

func dump(c Config) string { return strings.ReplaceAll(strings.TrimSpace(sprint(c)), "\n", " ") }

// problemLines runs Load and returns its problems, one string each.
func problemLines(t *testing.T, yaml string, lookup func(string) (string, bool)) []string {
	t.Helper()
	_, err := Load([]byte(yaml), lookup)
	var lines []string
	for _, p := range Problems(err) {
		lines = append(lines, p.Error())
	}
	return lines
}

func TestLoadProblems(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string // each must start a line
	}{
		{"bad cidr", "allowlist:\n  cidrs: [10.0.0.0/8, 10.1.0.0/16, 10.0.0.0/33]\n",
			[]string{`allowlist.cidrs[2]: "10.0.0.0/33" is not a CIDR`}},
		{"unknown key", "tls:\n  mod: acme\n", []string{"tls.mod: unknown key (line 2); did you mean mode?"}},
		{"unknown top key", "listne: :1\n", []string{"listne: unknown key (line 1); did you mean listen?"}},
		{"unknown far key", "tls:\n  flavour: x\n", []string{"tls.flavour: unknown key (line 2)"}},
		{"key at the wrong level", "mode: acme\n", []string{"mode: unknown key (line 1); it is a key of tls, allowlist"}},
		{"key at the wrong level, deep", "nats:\n  secrets: [x]\n", []string{"nats.secrets: unknown key (line 2); it is a key of forward.destinations[]"}},
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
		{"short key", "admin:\n  api_keys: [short]\n", []string{"admin.api_keys[0]: is shorter than 20 characters"}},
		{"token outlives its stream copy", "tokens:\n  max_ttl: 800h\n", []string{"tokens.max_ttl: 800h0m0s must not be longer than nats.stream.max_age 720h0m0s"}},
		{"short read key", "admin:\n  read_keys: [short]\n", []string{"admin.read_keys[0]: is shorter than 20 characters"}},
		{"read key also a full key", "admin:\n  api_keys: [full-key-0123456789]\n  read_keys: [full-key-0123456789]\n",
			[]string{"admin.read_keys[0]: is also in admin.api_keys"}},
		{"duplicate key", "listen: \":1\"\nlisten: \":2\"\n", []string{"listen: set twice (line 2)"}},
		{"not yaml", "tls: [\n", []string{"not valid YAML"}},
		{"enforce nothing", "allowlist:\n  presets: []\n", []string{"allowlist: enforce mode with no presets and no cidrs would refuse every callback"}},
		{"same listeners", "listen: 127.0.0.1:9090\n", []string{`admin.listen: "127.0.0.1:9090" is also the public listen address (listen)`}},
		{"overlapping listeners", "listen: \":4222\"\nadmin:\n  listen: localhost:4222\n", []string{
			`admin.listen: "localhost:4222" is also the public listen address (listen)`,
			`nats.embedded.listen: "127.0.0.1:4222" is also the public listen address (listen)`,
		}},
		{"acme challenge port", "tls:\n  mode: acme\n  acme:\n    http_listen: \"127.0.0.1:9090\"\n", []string{
			`tls.acme.http_listen: "127.0.0.1:9090" is also the admin listen address (admin.listen)`,
		}},
		{"ca_root not PEM", "tls:\n  mode: acme\n  acme:\n    ca_root: ../go.mod\n", []string{`tls.acme.ca_root: "../go.mod" holds no PEM certificate`}},
		{"alias loop", "allowlist:\n  cidrs: &x [*x]\n", []string{"allowlist.cidrs[0]: must be a single value"}},
		// issue 11: the answer to a validation goes out after the wait and
		// the publish, within Daraja's ~8 s and within write_timeout.
		{"validation past Daraja's window", "validation:\n  timeout: 5s\n", []string{
			"validation.timeout: 5s plus the edge's 3s wait to publish the decision reaches Daraja's validation window (about 8s): " +
				"Daraja would give up before the answer and apply the ResponseType registered with the URL; at most 4s leaves 1s for the network"}},
		{"validation far past Daraja's window", "validation:\n  timeout: 20s\n", []string{"validation.timeout: 20s plus the edge's 3s wait"}},
		{"validation vs write", "validation:\n  timeout: 2s\nlimits:\n  write_timeout: 5s\n",
			[]string{"validation.timeout: 2s plus the edge's 3s wait to publish the decision must be shorter than limits.write_timeout 5s"}},

		// issue 13: what serve would refuse, check refuses.
		{"listen without colon", "listen: 8443\n", []string{`listen: "8443" is not a host:port address (did you mean ":8443"?)`}},
		{"admin listen without colon", "admin:\n  listen: 9090\n", []string{`admin.listen: "9090" is not a host:port address (did you mean ":9090"?)`}},
		{"port out of range", "listen: \":84430\"\n", []string{`listen: ":84430": port 84430 is not between 0 and 65535`}},
		{"host bits", "allowlist:\n  cidrs: [10.0.0.1/8]\n",
			[]string{`allowlist.cidrs[0]: "10.0.0.1/8" has host bits set: did you mean 10.0.0.0/8 (the range), or 10.0.0.1 (the one host)?`}},
		{"host bits v6", "client_ip:\n  trusted_proxies: [\"2001:db8::1/32\"]\n",
			[]string{`client_ip.trusted_proxies[0]: "2001:db8::1/32" has host bits set: did you mean 2001:db8::/32`}},
		{"replicas with embedded", "nats:\n  stream:\n    replicas: 3\n",
			[]string{"nats.stream.replicas: 3 needs a NATS cluster: with nats.url empty the embedded server is a single node"}},
		{"public_url path", "public_url: https://cb.example.co.ke/edge\n",
			[]string{`public_url: "https://cb.example.co.ke/edge" has a path (/edge): the edge serves its endpoints at the root`}},
		{"public_url credentials", "public_url: https://u:secretpw@cb.example.co.ke\n",
			[]string{`public_url: "https://u:xxxxx@cb.example.co.ke" must not carry credentials`}},
		{"public_url credentials and a refused word", "public_url: https://u:secretpw@sql.example.co.ke\n",
			[]string{`public_url: "https://u:xxxxx@sql.example.co.ke" contains a word Daraja refuses`}},
		{"public_url refused word", "public_url: https://M-Pesa.example.co.ke\n",
			[]string{`public_url: "https://M-Pesa.example.co.ke" contains a word Daraja refuses`}},
		{"public_url refused word in port-less host", "public_url: https://callbacks.sql.example\n",
			[]string{`public_url: "https://callbacks.sql.example" contains a word Daraja refuses`}},
		{"query_param refused word", "tokens:\n  query_param: query\n", []string{`tokens.query_param: "query" contains a word Daraja refuses`}},
		{"rate NaN", "limits:\n  rejects_per_second: .nan\n", []string{"limits.rejects_per_second: NaN per second"}},
		{"rate Inf", "admin:\n  auth_failures_per_second: .inf\n", []string{"admin.auth_failures_per_second: +Inf must be above zero"}},

		// issue 19: nats.embedded.sync.
		{"sync word", "nats:\n  embedded:\n    sync: sometimes\n",
			[]string{`nats.embedded.sync: "sometimes" is not "always" or a positive interval like 1s`}},
		{"sync zero", "nats:\n  embedded:\n    sync: 0s\n", []string{`nats.embedded.sync: "0s" is not "always"`}},
		{"sync negative", "nats:\n  embedded:\n    sync: -1s\n", []string{`nats.embedded.sync: "-1s" is not "always"`}},

		// issue 12: the hard shutdown deadline.
		{"shutdown zero", "limits:\n  shutdown_timeout: 0s\n", []string{"limits.shutdown_timeout: 0s must be longer than zero"}},
		{"shutdown bad", "limits:\n  shutdown_timeout: later\n", []string{`limits.shutdown_timeout: "later" is not a duration`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lines := problemLines(t, tt.yaml, noEnv)
			if len(lines) == 0 {
				t.Fatal("no error")
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

// TestAccepted: values close to the refused ones that must load.
func TestAccepted(t *testing.T) {
	for _, y := range []string{
		"listen: \":8443\"\n",
		"allowlist:\n  cidrs: [10.0.0.0/8, 192.0.2.7, 192.0.2.7/32, \"2001:db8::/32\"]\n",
		"public_url: https://cb.example.co.ke/\n",
		"public_url: https://cb.example.co.ke:8443\n",
		"nats:\n  embedded:\n    sync: always\n",
		"nats:\n  embedded:\n    sync: 250ms\n",
		"nats:\n  url: nats://a:4222,nats://b:4222\n  stream:\n    replicas: 3\n",
		"limits:\n  shutdown_timeout: 2m\n",
		"listen: \"127.0.0.1:0\"\nadmin:\n  listen: \"127.0.0.1:0\"\nnats:\n  embedded:\n    listen: \"127.0.0.1:0\"\n", // port 0: each picks its own
		"listen: \"127.0.0.2:9090\"\n",                                                                                  // another host, same port
		"nats:\n  url: nats://a:4222\n  embedded:\n    listen: \":8443\"\n",                                             // embedded listen unused with a cluster
		"nats:\n  embedded:\n    sync: \"\"\n",                                                                          // as a zero Embedded: always
		"nats:\n  stream:\n    replicas: \"3\"\n  url: nats://a:4222\n",                                                 // a quoted number is the number
	} {
		if _, err := Load([]byte(y), noEnv); err != nil {
			t.Errorf("%q: %v", y, err)
		}
	}
}

func TestSync(t *testing.T) {
	for _, tt := range []struct {
		sync     string
		always   bool
		interval time.Duration
	}{
		{"always", true, 0},
		{"", true, 0}, // a zero Embedded stays durable
		{"bogus", true, 0},
		{"-1s", true, 0},
		{"1s", false, time.Second},
		{"2m", false, 2 * time.Minute},
	} {
		e := Embedded{Sync: tt.sync}
		if e.SyncAlways() != tt.always || e.SyncInterval() != tt.interval {
			t.Errorf("sync %q: always %v interval %v, want %v %v", tt.sync, e.SyncAlways(), e.SyncInterval(), tt.always, tt.interval)
		}
	}
	if d := Default().NATS.Embedded; !d.SyncAlways() || d.Sync != "always" {
		t.Errorf("default sync %q", d.Sync)
	}
	cfg, err := Load([]byte("nats:\n  embedded:\n    sync: 1s\n"), noEnv)
	if err != nil || cfg.NATS.Embedded.SyncInterval() != time.Second || cfg.NATS.Embedded.SyncAlways() {
		t.Errorf("sync: 1s loads as %q (%v)", cfg.NATS.Embedded.Sync, err)
	}
	if Default().Limits.ShutdownTimeout != 30*time.Second {
		t.Errorf("default shutdown_timeout %s", Default().Limits.ShutdownTimeout)
	}
}

func TestSuggest(t *testing.T) {
	known := []string{"mode", "acme", "cert_file", "key_file", "storage"}
	for _, tt := range []struct{ key, want string }{
		{"mod", "mode"}, {"moed", "mode"}, {"Mode", "mode"}, {"cert-file", "cert_file"},
		{"certfile", "cert_file"}, {"storge", "storage"}, {"x", ""}, {"flavour", ""}, {"ke", ""}, {"md", ""},
	} {
		if got := suggest(tt.key, known); got != tt.want {
			t.Errorf("suggest(%q) = %q, want %q", tt.key, got, tt.want)
		}
	}
	for _, tt := range []struct {
		a, b string
		want int
	}{{"listne", "listen", 1}, {"mode", "mode", 0}, {"", "abc", 3}, {"kitten", "sitting", 3}, {"ca", "abc", 3}} {
		if got := editDistance(tt.a, tt.b); got != tt.want {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
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

// TestExampleCommentedBlocks: the commented-out forward and c2b examples
// load once uncommented, so they cannot drift from the schema either.
func TestExampleCommentedBlocks(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "config.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	uncomment := false
	for _, l := range strings.Split(string(data), "\n") {
		switch {
		case l == "  destinations: []" || l == "  shortcodes: {}":
			out = append(out, strings.TrimSuffix(strings.TrimSuffix(l, " []"), " {}"))
			uncomment = true
			continue
		case uncomment && strings.HasPrefix(l, "#  "):
			l = " " + l[1:]
		default:
			uncomment = false
		}
		out = append(out, l)
	}
	uncommented := strings.Join(out, "\n")
	cfg, err := Load([]byte(uncommented), env(map[string]string{"SHOP_WEBHOOK_SECRET": goodSecret}))
	if err != nil {
		t.Fatalf("uncommented example: %v\n%s", err, uncommented)
	}
	if len(cfg.Forward.Destinations) != 1 || cfg.C2B.Shortcodes["600999"].ResponseType != ResponseCompleted {
		t.Fatalf("uncommented example: %+v %+v", cfg.Forward, cfg.C2B)
	}
	d := cfg.Forward.Destinations[0]
	want := DefaultDestination()
	want.Name, want.URL, want.Secrets = d.Name, d.URL, d.Secrets
	want.Paths = map[string]string{"stk.callback": "/stk", "c2b.confirmation": "/confirmation"}
	want.Shortcodes, want.Headers = []string{}, map[string]string{}
	if !same(Config{Forward: Forward{Destinations: []Destination{d}}}, Config{Forward: Forward{Destinations: []Destination{want}}}) {
		t.Errorf("example destination differs from the defaults:\n got %s\nwant %s", sprintDestination(d), sprintDestination(want))
	}
}

// TestValidationBudget (issue 11): Daraja waits about 8 s for a C2B
// validation answer, and the edge answers after validation.timeout and
// after publishing the decision (PublishWait). The default leaves a
// second; less is a warning, none is refused (TestLoadProblems); a
// destination's validation_timeout, even its default, stays below
// validation.timeout.
func TestValidationBudget(t *testing.T) {
	def := Default()
	if margin := DarajaValidationWindow - def.Validation.Timeout - PublishWait; margin < ValidationMargin {
		t.Errorf("the default validation.timeout %s leaves %s of Daraja's window, want %s or more", def.Validation.Timeout, margin, ValidationMargin)
	}
	if w := def.Warnings(); len(w) != 0 {
		t.Errorf("defaults warn: %q", w)
	}
	cfg, err := Load([]byte("validation:\n  timeout: 4500ms\n"), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	want := "validation.timeout: 4.5s plus the edge's 3s wait to publish the decision leaves 500ms of Daraja's validation window (about 8s) " +
		"for the network: a slow validator's answer may arrive after Daraja gave up; 4s or less leaves 1s"
	if w := cfg.Warnings(); len(w) != 1 || w[0] != want {
		t.Errorf("warnings %q\nwant %q", w, want)
	}
	lines := problemLines(t, "validation:\n  timeout: 2s\nforward:\n  destinations:\n    - {name: shop, url: \"https://shop.internal\", secrets: ["+
		goodSecret+"], validation_url: \"https://shop.internal/validate\"}\n", noEnv)
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "forward.destinations[0].validation_timeout: 3s must be shorter than validation.timeout 2s") {
		t.Errorf("the default validation_timeout above a lowered validation.timeout: %q", lines)
	}
}
