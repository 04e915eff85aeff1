// Command daraja-edge stands in front of Safaricom Daraja callback URLs: it
// terminates TLS, admits only allowlisted sources bearing a token it issued,
// and publishes each vetted callback durably to NATS JetStream.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/daraja-edge/daraja-edge/config"
)

// Set at build time: -ldflags "-X main.version=v1.2.3 -X main.commit=abc123".
var (
	version = "0.0.0-dev" // the same as edge.Version until a build sets it
	commit  = ""
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		code := 1
		var ee *exitError
		if errors.As(err, &ee) {
			code = ee.code
		}
		if msg := err.Error(); msg != "" {
			fmt.Fprintln(os.Stderr, "daraja-edge:", msg)
		}
		os.Exit(code)
	}
}

// exitError carries an exit code; an empty message prints nothing more.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

func usageError(format string, args ...any) error {
	return &exitError{code: 2, msg: fmt.Sprintf(format, args...) + "\n\n" + usage()}
}

// commandError is a usage error of one command: what is wrong and where
// that command's help is, not the whole program's usage.
func commandError(command, format string, args ...any) error {
	return &exitError{code: 2, msg: fmt.Sprintf(format, args...) + "\n(daraja-edge " + command + " --help shows its flags)"}
}

// run is the whole program; main only maps its error to an exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError("no command")
	}
	switch args[0] {
	case "help", "-h", "--help", "-help":
		fmt.Fprint(stdout, usage())
		return nil
	case "--version", "-version":
		args = []string{"version"}
	}
	c, rest := find(args)
	if c == nil {
		if args[0] == "token" {
			return usageError("token: name a subcommand: %s", strings.Join(subcommands("token"), ", "))
		}
		return usageError("unknown command %q", args[0])
	}
	return c.run(ctx, rest, stdout, stderr)
}

// loadConfig loads path; an invalid file is exit 2 with one line per problem.
func loadConfig(path string, stderr io.Writer) (config.Config, error) {
	cfg, err := config.LoadFile(path)
	if err != nil {
		for _, p := range config.Problems(err) {
			fmt.Fprintf(stderr, "%s: %v\n", path, p)
		}
		return cfg, &exitError{code: 2}
	}
	return cfg, nil
}

// checkEnvironment checks the directories cfg names as serve will use
// them (config.CheckEnvironment); a problem is exit 2, one line each.
func checkEnvironment(path string, cfg config.Config, stderr io.Writer) error {
	if err := config.CheckEnvironment(cfg); err != nil {
		for _, p := range config.Problems(err) {
			fmt.Fprintf(stderr, "%s: %v\n", path, p)
		}
		return &exitError{code: 2}
	}
	return nil
}

// clientConfig is the configuration for the client commands (token issue,
// tail, health): the file findConfig finds, else the defaults (flags and
// the environment can say the rest). A file named by --config or
// DARAJA_EDGE_CONFIG that does not exist is an error. found reports
// whether a file was read. A problem in a part of the file no client reads
// (a webhook secret from an environment only serve has) is not one here.
func clientConfig(explicit string, stderr io.Writer) (cfg config.Config, found bool, err error) {
	path, err := findConfig(explicit, false)
	if err != nil {
		return config.Config{}, false, err
	}
	if path == "" {
		return config.Default(), false, nil
	}
	cfg, err = config.LoadFile(path)
	if err == nil {
		return cfg, true, nil
	}
	// Only the parts a client reads can stop it: an operator's shell need
	// not hold what serve alone needs (an app's webhook secret).
	bad := false
	for _, p := range config.Problems(err) {
		var pr *config.Problem
		if errors.As(p, &pr) && !clientReads(pr.Key) {
			continue
		}
		fmt.Fprintf(stderr, "%s: %v\n", path, p)
		bad = true
	}
	if bad {
		return cfg, false, &exitError{code: 2}
	}
	return cfg, true, nil
}

// clientReads reports whether the client commands read the configuration
// key: admin.*, nats.* and the forward destinations' names (or the whole
// file, key "").
func clientReads(key string) bool {
	for _, p := range []string{"admin", "nats"} {
		if key == p || strings.HasPrefix(key, p+".") {
			return true
		}
	}
	if rest, ok := strings.CutPrefix(key, "forward.destinations["); ok {
		return strings.HasSuffix(rest, "].name") || !strings.Contains(rest, ".")
	}
	return key == "" || key == "forward" || key == "forward.destinations"
}

func cmdCheck(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("check", stderr)
	explicit := configFlag(fs, "configuration file")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	path, err := findConfig(*explicit, true)
	if err != nil {
		return err
	}
	cfg, err := loadConfig(path, stderr)
	if err != nil {
		return err
	}
	if err := checkEnvironment(path, cfg, stderr); err != nil {
		return err
	}
	for _, w := range cfg.Warnings() {
		fmt.Fprintf(stderr, "%s: warning: %s\n", path, w)
	}
	fmt.Fprintf(stdout, "%s: ok\n", path)
	return nil
}
