package main

import (
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestFindConfig: --config, else DARAJA_EDGE_CONFIG, else ./config.yaml,
// else /etc/daraja-edge/config.yaml; a file named explicitly must exist
// (issue 13: token, tail and health used defaults for a typo).
func TestFindConfig(t *testing.T) {
	dir := t.TempDir()
	write := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("{}\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	flagFile, envFile, local, system := write("flag.yaml"), write("env.yaml"), write("config.yaml"), write("etc.yaml")
	missing := filepath.Join(dir, "missing.yaml")
	noLocal := filepath.Join(dir, "no-config.yaml")
	env := func(v string) func(string) (string, bool) {
		return func(k string) (string, bool) {
			if k != configEnv || v == "unset" {
				return "", false
			}
			return v, true
		}
	}
	tests := []struct {
		name     string
		explicit string
		env      string // "unset" for not set
		search   []string
		required bool
		want     string
		wantErr  string // the error's text must contain it; also exit status 2
	}{
		{"flag first", flagFile, envFile, []string{local, system}, true, flagFile, ""},
		{"env second", "", envFile, []string{local, system}, true, envFile, ""},
		{"empty env is unset", "", "", []string{local, system}, true, local, ""},
		{"local third", "", "unset", []string{local, system}, true, local, ""},
		{"system last", "", "unset", []string{noLocal, system}, true, system, ""},
		{"missing flag file", missing, envFile, []string{local}, false, "", "--config " + missing + ": no such file or directory"},
		{"missing flag file, required", missing, "unset", []string{local}, true, "", "--config " + missing + ": no such file"},
		{"missing env file", "", missing, []string{local}, false, "", configEnv + "=" + missing + ": no such file or directory"},
		{"none found, client", "", "unset", []string{noLocal, missing}, false, "", ""},
		{"none found, required", "", "unset", []string{noLocal, missing}, true, "",
			"no configuration file: --config not given, $DARAJA_EDGE_CONFIG not set, and none of " + noLocal + ", " + missing + " exists"},
		{"search path unreadable", "", "unset", []string{filepath.Join(local, "x")}, true, "", "configuration file " + filepath.Join(local, "x") + ": not a directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := findConfigIn(tt.explicit, env(tt.env), tt.search, tt.required)
			if tt.wantErr == "" {
				if err != nil || got != tt.want {
					t.Fatalf("got %q, %v; want %q", got, err, tt.want)
				}
				return
			}
			var ee *exitError
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.As(err, &ee) || ee.code != 2 {
				t.Fatalf("got %q, %v; want exit 2 with %q", got, err, tt.wantErr)
			}
		})
	}
}

func TestConfigFlag(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	p := configFlag(fs, "configuration file")
	if err := fs.Parse(nil); err != nil || *p != "" {
		t.Fatalf("default %q, %v: want \"\" (not given)", *p, err)
	}
	if u := fs.Lookup("config").Usage; !strings.Contains(u, "DARAJA_EDGE_CONFIG") || !strings.Contains(u, "/etc/daraja-edge/config.yaml") {
		t.Errorf("usage %q does not say where it looks", u)
	}
	if err := fs.Parse([]string{"--config", "a.yaml"}); err != nil || *p != "a.yaml" {
		t.Errorf("--config a.yaml: %q, %v", *p, err)
	}
}
