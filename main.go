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
	"syscall"

	"github.com/daraja-edge/daraja-edge/config"
)

// Set at build time: -ldflags "-X main.version=v1.2.3 -X main.commit=abc123".
var (
	version = "dev"
	commit  = ""
)

const usage = `daraja-edge: a vetting, durable edge for Safaricom Daraja callbacks

Usage:
  daraja-edge serve   [--config FILE]   run the edge
  daraja-edge check   [--config FILE]   validate FILE and the directories it names;
                                        exit 2 with one line per problem
  daraja-edge token issue --kinds K[,K] --shortcode S [--reference R] [--ttl D] [--reusable]
                      [--config FILE] [--admin URL] [--api-key-file F]
                                        ask the admin API for a token, print its JSON
  daraja-edge tail    [--subject S] [--json] [--config FILE] [--nats URL]
                                        print vetted callbacks, rejections and missing
                                        events live, one line each, phone numbers masked
  daraja-edge health  [--config FILE] [--admin URL]
                                        exit 0 if the running edge is ready (container HEALTHCHECK)
  daraja-edge version                   print version and commit

Without --config, every command reads $DARAJA_EDGE_CONFIG, else ./config.yaml,
else /etc/daraja-edge/config.yaml; serve and check need one of them, the
others use defaults when there is none. A file named by --config or
DARAJA_EDGE_CONFIG must exist.

The admin API key for 'token issue' comes from DARAJA_EDGE_ADMIN_KEY, else
from admin.api_keys in the config, else from admin.key_file.
`

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
	return &exitError{code: 2, msg: fmt.Sprintf(format, args...) + "\n\n" + usage}
}

// run is the whole program; main only maps its error to an exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError("no command")
	}
	switch args[0] {
	case "serve":
		return cmdServe(ctx, args[1:], stderr)
	case "check":
		return cmdCheck(args[1:], stdout, stderr)
	case "token":
		if len(args) < 2 || args[1] != "issue" {
			return usageError("token: the only subcommand is 'issue'")
		}
		return cmdTokenIssue(ctx, args[2:], stdout, stderr)
	case "tail":
		return cmdTail(ctx, args[1:], stdout, stderr)
	case "health":
		return cmdHealth(ctx, args[1:], stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintf(stdout, "daraja-edge %s (commit %s)\n", version, buildCommit())
		return nil
	case "help", "-h", "--help", "-help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		return usageError("unknown command %q", args[0])
	}
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
// whether a file was read.
func clientConfig(explicit string, stderr io.Writer) (cfg config.Config, found bool, err error) {
	path, err := findConfig(explicit, false)
	if err != nil {
		return config.Config{}, false, err
	}
	if path == "" {
		return config.Default(), false, nil
	}
	cfg, err = loadConfig(path, stderr)
	return cfg, err == nil, err
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
