package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"runtime/debug"
	"strings"
)

// newFlagSet is a command's flag set: errors to stderr, and --help
// printed by writeHelp (synopsis, description, example, every flag with
// its placeholder and default) from the command table.
func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { writeHelp(fs.Output(), name, fs) }
	return fs
}

// parseFlags parses args; bad flags and stray arguments are exit 2.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return &exitError{code: 0}
		}
		return &exitError{code: 2, msg: fs.Name() + ": " + err.Error()}
	}
	if fs.NArg() > 0 {
		return &exitError{code: 2, msg: fs.Name() + ": unexpected argument " + fs.Arg(0)}
	}
	return nil
}

func buildCommit() string {
	if commit != "" {
		return commit
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				return s.Value
			}
		}
	}
	return "unknown"
}

// configEnv names the configuration file when --config is not given.
const configEnv = "DARAJA_EDGE_CONFIG"

// configSearchPath is where a command looks for its configuration file,
// in order, when neither --config nor DARAJA_EDGE_CONFIG names one.
var configSearchPath = []string{"config.yaml", "/etc/daraja-edge/config.yaml"}

// configFlag registers --config on fs. It defaults to "", meaning "not
// given": findConfig then searches.
func configFlag(fs *flag.FlagSet, what string) *string {
	return fs.String("config", "", what+" (default: $"+configEnv+", else ./"+configSearchPath[0]+", else "+configSearchPath[1]+")")
}

// findConfig returns the configuration file a command reads: explicit
// (the --config value) if given, else $DARAJA_EDGE_CONFIG if set, else the
// first file of configSearchPath that exists. A file named by --config or
// the variable must exist: a typo is an error, never a silent fall back to
// defaults. When nothing names a file and none is found, required (serve,
// check) makes it an error listing where it looked; otherwise the result
// is "" and the command uses the defaults (token, tail, health, whose
// flags and environment can say the rest). Errors are exit status 2.
func findConfig(explicit string, required bool) (string, error) {
	return findConfigIn(explicit, os.LookupEnv, configSearchPath, required)
}

func findConfigIn(explicit string, lookupEnv func(string) (string, bool), search []string, required bool) (string, error) {
	named := func(label, path string) (string, error) {
		if _, err := os.Stat(path); err != nil {
			return "", &exitError{code: 2, msg: fmt.Sprintf("%s: %v", label, errors.Unwrap(err))}
		}
		return path, nil
	}
	if explicit != "" {
		return named("--config "+explicit, explicit)
	}
	if p, ok := lookupEnv(configEnv); ok && p != "" {
		return named(configEnv+"="+p, p)
	}
	for _, p := range search {
		_, err := os.Stat(p)
		if err == nil {
			return p, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return "", &exitError{code: 2, msg: fmt.Sprintf("configuration file %s: %v", p, errors.Unwrap(err))}
		}
	}
	if !required {
		return "", nil
	}
	return "", &exitError{code: 2, msg: fmt.Sprintf("no configuration file: --config not given, $%s not set, and none of %s exists",
		configEnv, strings.Join(search, ", "))}
}
