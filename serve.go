package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"

	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.yaml.in/yaml/v3"

	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/edge"
)

var semver = regexp.MustCompile(`^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$`)

func cmdServe(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlagSet("serve", stderr)
	path := configFlag(fs, "configuration file")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	found, err := findConfig(*path, true)
	if err != nil {
		return err
	}
	*path = found // SIGHUP re-reads the same file
	cfg, err := loadConfig(*path, stderr)
	if err != nil {
		return err
	}
	if err := checkEnvironment(*path, cfg, stderr); err != nil {
		return err
	}
	if cfg, err = withFileSecrets(*path, cfg, stderr); err != nil {
		return err
	}
	level := zap.NewAtomicLevel()
	log, err := newLogger(cfg.Log, level, stderr)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	for _, w := range cfg.Warnings() {
		log.Warn("configuration: " + w)
	}

	// What -ldflags "-X main.version=… -X main.commit=…" set reaches the
	// start-up log and daraja_edge_build_info (an image built without .git
	// has no VCS information of its own).
	if v := strings.TrimPrefix(version, "v"); semver.MatchString(v) {
		edge.Version = v
	}
	edge.Commit = buildCommit()
	ctx, stopped := stopOnSignals(ctx, log, cfg.Limits.ShutdownTimeout)
	defer stopped()
	srv, err := edge.New(ctx, cfg, log)
	if err != nil {
		return err
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				cfg = reload(*path, cfg, srv, level, log)
			}
		}
	}()
	return srv.Run(ctx)
}

// withFileSecrets reads the forward destinations' secrets_file into their
// secrets (config.WithFileSecrets); a problem is exit 2, one line each.
func withFileSecrets(path string, cfg config.Config, stderr io.Writer) (config.Config, error) {
	out, err := cfg.WithFileSecrets()
	if err != nil {
		for _, p := range config.Problems(err) {
			fmt.Fprintf(stderr, "%s: %v\n", path, p)
		}
		return cfg, &exitError{code: 2}
	}
	return out, nil
}

// exit ends the process when a stop cannot finish (a variable for tests).
var exit = os.Exit

// stopOnSignals returns a context that ends on the first SIGINT or SIGTERM:
// the edge then stops gracefully. If that stop has not finished within
// timeout (limits.shutdown_timeout), or a second signal arrives, it logs an
// error and exits 1 at once, whatever is still running: spooled callbacks
// are on disk and replay on the next start. Call the returned function when
// the stop has finished.
func stopOnSignals(ctx context.Context, log *zap.Logger, timeout time.Duration) (context.Context, func()) {
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithCancel(ctx)
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	finished := make(chan struct{})
	go func() {
		var first os.Signal
		select {
		case first = <-sigs:
		case <-finished:
			return
		}
		log.Info("stopping gracefully; a second signal exits at once",
			zap.String("signal", first.String()), zap.Duration("shutdown_timeout", timeout))
		cancel()
		deadline := time.NewTimer(timeout)
		defer deadline.Stop()
		select {
		case <-finished:
			return
		case sig := <-sigs:
			log.Error("second signal: exiting at once, without finishing in-flight requests",
				zap.String("signal", sig.String()))
		case <-deadline.C:
			log.Error("the stop did not finish within limits.shutdown_timeout: exiting",
				zap.Duration("shutdown_timeout", timeout))
		}
		_ = log.Sync()
		exit(1)
	}()
	var once sync.Once
	return ctx, func() {
		once.Do(func() {
			signal.Stop(sigs)
			close(finished)
			cancel()
		})
	}
}

// reload re-reads the file on SIGHUP. An invalid file is refused and the
// running configuration stays; changes that need a restart are logged.
func reload(path string, old config.Config, srv *edge.Server, level zap.AtomicLevel, log *zap.Logger) config.Config {
	cfg, err := config.LoadFile(path)
	if err == nil {
		// The running configuration holds the secrets_file secrets in
		// secrets: compare like with like.
		cfg, err = cfg.WithFileSecrets()
	}
	if err != nil {
		var problems []string
		for _, p := range config.Problems(err) {
			problems = append(problems, p.Error())
		}
		log.Error("reload refused: the file is invalid; the running configuration stays", zap.Strings("problems", problems))
		srv.ReloadRefused()
		return old
	}
	if err := srv.Reload(cfg); err != nil {
		log.Error("reload refused", zap.Error(err))
		return old
	}
	if l, err := zapcore.ParseLevel(cfg.Log.Level); err == nil {
		level.SetLevel(l)
	}
	// What a reload applies; everything else needs a restart.
	applied := old
	applied.Allowlist, applied.ClientIP.TrustedProxies, applied.Limits.MaxBodyBytes, applied.Log.Level =
		cfg.Allowlist, cfg.ClientIP.TrustedProxies, cfg.Limits.MaxBodyBytes, cfg.Log.Level
	done, pending := configChanges(old, applied), configChanges(applied, cfg)
	switch {
	case len(pending) > 0 && len(done) == 0:
		log.Warn("configuration reloaded, nothing applied: every change needs a restart", zap.Any("need_restart", pending))
	case len(pending) > 0:
		log.Warn("configuration reloaded in part: some changes need a restart",
			zap.Any("applied", done), zap.Any("need_restart", pending))
	case len(done) > 0:
		log.Info("configuration reloaded", zap.Any("applied", done))
	default:
		log.Info("configuration reloaded: nothing changed")
	}
	return applied
}

// change is one configuration key that differs, its values masked when
// the key holds a secret.
type change struct {
	Key string `json:"key"`
	Old string `json:"old"`
	New string `json:"new"`
}

// configChanges lists the keys whose values differ between a and b.
func configChanges(a, b config.Config) []change {
	fa, fb := flatten(a), flatten(b)
	var keys []string
	for k := range fb {
		keys = append(keys, k)
	}
	for k := range fa {
		if _, ok := fb[k]; !ok {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var out []change
	for _, k := range keys {
		if fa[k] != fb[k] {
			c := change{Key: k, Old: fa[k], New: fb[k]}
			if secretKey(k) {
				c.Old, c.New = maskSecret(c.Old), maskSecret(c.New)
			}
			out = append(out, c)
		}
	}
	return out
}

// flatten turns a configuration into key paths (tls.acme.email,
// forward.destinations[0].secrets) and their values as JSON text, URL
// credentials masked. Lists of
// mappings are walked entry by entry, so a secret inside one has a key
// secretKey knows; lists of values are one value (allowlist.cidrs).
func flatten(c config.Config) map[string]string {
	data, _ := yaml.Marshal(c)
	var tree any
	_ = yaml.Unmarshal(data, &tree)
	out := map[string]string{}
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		switch t := v.(type) {
		case map[string]any:
			// An empty mapping holds no value: its keys appear when set.
			for k, sub := range t {
				walk(strings.TrimPrefix(prefix+"."+k, "."), sub)
			}
			return
		case []any:
			if len(t) > 0 {
				if _, ok := t[0].(map[string]any); ok {
					for i, sub := range t {
						walk(fmt.Sprintf("%s[%d]", prefix, i), sub)
					}
					return
				}
			}
		}
		b, _ := json.Marshal(v)
		out[prefix] = urlCredentials.ReplaceAllString(string(b), "://(credentials not shown)@")
	}
	walk("", tree)
	return out
}

// urlCredentials matches the user information of a URL (nats.url,
// forward.destinations[].url): a password, or a token standing as the user.
var urlCredentials = regexp.MustCompile(`://[^/@\s",]+@`)

// secretKey reports whether the key path k holds a secret: a static
// header (it may carry a bearer token), or a key whose own name says key,
// secret, password, credential or token — not a *_file key, which holds a
// path, nor a key of a section so named (tokens.default_ttl).
func secretKey(k string) bool {
	if strings.Contains(k, ".headers") {
		return true
	}
	name := k[strings.LastIndexByte(k, '.')+1:]
	if strings.HasSuffix(name, "_file") {
		return false
	}
	for _, w := range []string{"key", "secret", "password", "credential", "token"} {
		if strings.Contains(name, w) {
			return true
		}
	}
	return false
}

func maskSecret(v string) string {
	if v == "" || v == `""` || v == "null" || v == "[]" {
		return v
	}
	return "(set, not shown)"
}

func newLogger(c config.Log, level zap.AtomicLevel, stderr io.Writer) (*zap.Logger, error) {
	l, err := zapcore.ParseLevel(c.Level)
	if err != nil {
		return nil, fmt.Errorf("log.level: %w", err)
	}
	level.SetLevel(l)
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.EncodeTime = zapcore.RFC3339NanoTimeEncoder
	var enc zapcore.Encoder
	format := c.Format
	if format == "auto" {
		format = "json"
		if f, ok := stderr.(*os.File); ok {
			if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
				format = "console"
			}
		}
	}
	if format == "console" {
		encCfg.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(encCfg)
	} else {
		enc = zapcore.NewJSONEncoder(encCfg)
	}
	return zap.New(zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(stderr)), level), zap.ErrorOutput(zapcore.AddSync(stderr))), nil
}
