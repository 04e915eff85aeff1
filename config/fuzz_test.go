package config

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// marshal writes c as a file Load reads back as c: YAML with every $ in a
// string doubled, since Load reads $$ as $.
func marshal(t testing.TB, c Config) []byte {
	t.Helper()
	var n yaml.Node
	if err := n.Encode(c); err != nil {
		t.Fatalf("encode: %v", err)
	}
	var escape func(*yaml.Node)
	escape = func(n *yaml.Node) {
		if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!str" {
			n.Value = strings.ReplaceAll(n.Value, "$", "$$")
		}
		for _, c := range n.Content {
			escape(c)
		}
	}
	escape(&n)
	out, err := yaml.Marshal(&n)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	return out
}

// normalize makes empty slices and maps nil, so an absent list and [] are
// the same configuration.
func normalize(v reflect.Value) {
	switch v.Kind() {
	case reflect.Struct:
		for i := range v.NumField() {
			normalize(v.Field(i))
		}
	case reflect.Slice, reflect.Map:
		if v.Len() == 0 {
			v.SetZero()
			return
		}
		if v.Kind() == reflect.Slice {
			for i := range v.Len() {
				normalize(v.Index(i))
			}
			return
		}
		for it := v.MapRange(); it.Next(); {
			e := reflect.New(it.Value().Type()).Elem()
			e.Set(it.Value())
			normalize(e)
			v.SetMapIndex(it.Key(), e)
		}
	}
}

func same(a, b Config) bool {
	normalize(reflect.ValueOf(&a).Elem())
	normalize(reflect.ValueOf(&b).Elem())
	return reflect.DeepEqual(a, b)
}

// FuzzLoad: for any input, Load does not panic, and either refuses it
// with problems that each are a *Problem (one `check` line, naming its key
// when it has one), or returns a Config that survives a round trip
// (written back to YAML and loaded again, it is the same Config): what
// Load accepts is a configuration, not an accident of parsing — a NaN
// rate, which compares unequal to itself, or a $ that a rewrite would read
// as a reference, break it. The problems it reports are bounded by the
// input's size, so aliases cannot multiply the work. (That an accepted
// Config passes Validate needs no fuzzing: Load returns Validate's
// problems.)
func FuzzLoad(f *testing.F) {
	if data, err := os.ReadFile(filepath.Join("..", "config.example.yaml")); err == nil {
		f.Add(string(data))
	}
	f.Add("tls:\n  mode: files\n")
	f.Add("allowlist: {cidrs: [\"::ffff:1.2.3.4/120\"]}\n")
	f.Add("a: &x [1]\nb: *x\n")
	f.Add("limits: {rejects_per_second: .nan}\n")
	f.Add("admin: {auth_failures_per_second: .inf}\n")
	f.Add("tls: {acme: {email: \"$${HOME} $$ $x ${X:-d}\"}}\nadmin: {api_keys: [\"${K}${K}${K}${K}\"]}\n")
	f.Add("nats: {embedded: {sync: 1s}, stream: {replicas: \"${R:-1}\"}}\nlimits: {shutdown_timeout: 1m}\n")
	f.Add(billionLaughs)
	f.Add("forward:\n  destinations:\n    - {name: shop, url: \"https://s/x\", secrets: [whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3], " +
		"paths: {stk.callback: /stk}, headers: {Authorization: \"Bearer $$x\"}, retry: [0s, 1m], rate: 2.5}\n" +
		"c2b: {shortcodes: {\"600999\": {response_type: Completed}}}\n")
	lookup := func(name string) (string, bool) {
		if strings.HasPrefix(name, "U") {
			return "", false // unset
		}
		return "v", true
	}
	f.Fuzz(func(t *testing.T, s string) {
		cfg, err := Load([]byte(s), lookup)
		if limit := 2*len(s) + 10010; len(Problems(err)) > limit {
			t.Fatalf("%d problems for %d bytes of input", len(Problems(err)), len(s))
		}
		if err != nil {
			for _, p := range Problems(err) {
				var pr *Problem
				if !errors.As(p, &pr) || pr.Msg == "" {
					t.Fatalf("a problem that is not a *Problem with a message: %T %q", p, p)
				}
			}
			return
		}
		again, err := Load(marshal(t, cfg), lookup)
		if err != nil {
			t.Fatalf("the accepted config, written back, does not load: %v\n%s", err, marshal(t, cfg))
		}
		if !same(cfg, again) {
			t.Fatalf("round trip changed the config:\n first %+v\nsecond %+v", cfg, again)
		}
	})
}

// TestRoundTrip runs FuzzLoad's property over the example with values that
// need escaping.
func TestRoundTrip(t *testing.T) {
	cfg := Default()
	cfg.TLS.ACME.Email = "a$b@${HOME}$$"
	cfg.Admin.APIKeys = []string{"${DARAJA_EDGE_ADMIN_KEY}-literal", "sha256:" + strings.Repeat("a", 64)}
	cfg.Limits.RejectsPerSecond = 1.0 / 3
	cfg.NATS.Embedded.Sync = "1s"
	again, err := Load(marshal(t, cfg), noEnv)
	if err != nil {
		t.Fatalf("%v\n%s", err, marshal(t, cfg))
	}
	if !same(cfg, again) {
		t.Errorf("round trip changed the config:\n first %+v\nsecond %+v", cfg, again)
	}
	if !math.IsNaN(math.NaN()) || same(Config{Limits: Limits{RejectsPerSecond: math.NaN()}}, Config{Limits: Limits{RejectsPerSecond: math.NaN()}}) {
		t.Fatal("same must see a NaN as a change, or FuzzLoad cannot catch one")
	}
}

// billionLaughs nests nine levels of nine aliases: 9^9 (387 million)
// strings if expanded, in under 1 KB.
var billionLaughs = func() string {
	var b strings.Builder
	b.WriteString("l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n")
	for i := 1; i <= 9; i++ {
		b.WriteString("l" + string(rune('0'+i)) + ": &l" + string(rune('0'+i)) + " [")
		for j := range 9 {
			if j > 0 {
				b.WriteString(", ")
			}
			b.WriteString("*l" + string(rune('0'+i-1)))
		}
		b.WriteString("]\n")
	}
	b.WriteString("allowlist:\n  cidrs: *l9\nclient_ip:\n  trusted_proxies: *l9\ntls:\n  acme:\n    domains: *l9\n")
	return b.String()
}()

// TestAliasBomb: a billion-laughs file is refused with a handful of
// problems, not expanded.
func TestAliasBomb(t *testing.T) {
	if len(billionLaughs) > 4096 {
		t.Fatalf("bomb is %d bytes", len(billionLaughs))
	}
	_, err := Load([]byte(billionLaughs), noEnv)
	if err == nil {
		t.Fatal("accepted")
	}
	if n := len(Problems(err)); n > 100 {
		t.Errorf("%d problems", n)
	}
}
