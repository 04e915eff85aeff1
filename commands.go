package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"regexp"
	"slices"
	"sort"
	"strings"
)

// command is one entry of the command line: its name (with subcommand),
// its synopsis, what it does, an example, and the function that runs it.
// --help, the usage text and shell completion are all made from this
// table, so they cannot drift from what runs: TestHelpAndCompletion
// checks that each synopsis names exactly the command's flags.
type command struct {
	name     string // "serve", "token issue"
	synopsis string // the arguments and flags; flags outside [ ] and ( ) are required
	summary  string
	example  string
	run      func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

// adminClientFlags are the flags of every command that calls the admin
// API (addAdminFlags).
const adminClientFlags = "[--admin URL] [--api-key-file FILE] [--config FILE]"

// commands is set in init: the entries refer to functions that read it.
var commands []command

func init() {
	commands = []command{
		{"serve", "[--config FILE]", "run the edge", "daraja-edge serve --config /etc/daraja-edge/config.yaml",
			func(ctx context.Context, args []string, _, stderr io.Writer) error {
				return cmdServe(ctx, args, stderr)
			}},
		{"check", "[--config FILE]", "validate FILE and the directories it names; exit 2 with one line per problem",
			"daraja-edge check --config config.yaml",
			func(_ context.Context, args []string, stdout, stderr io.Writer) error {
				return cmdCheck(args, stdout, stderr)
			}},
		{"token issue", "--kinds K[,K] --shortcode S [--reference R] [--ttl D] [--reusable] [--forward-path P] " + adminClientFlags,
			"ask the admin API for a token; print its id, token, expiry and callback URLs",
			"daraja-edge token issue --kinds b2c.result,b2c.timeout --shortcode 600000 --reference PAYOUT-77 --ttl 1h",
			cmdTokenIssue},
		{"token status", "TOKEN_ID " + adminClientFlags, "a token's state, kinds, expiry, and per kind the callback that used it",
			"daraja-edge token status tok_6v3r7ypjmnwrytos", cmdTokenStatus},
		{"token list", "[--reference R] [--shortcode S] [--kind K] [--state S] [--after ID] [--limit N] " + adminClientFlags,
			"tokens matching every filter given, in id order, a page at a time (the answer's next is the following page's --after)",
			"daraja-edge token list --reference ORDER-1042 --state issued", cmdTokenList},
		{"token revoke", "TOKEN_ID " + adminClientFlags, "refuse every later callback on a token, on every replica",
			"daraja-edge token revoke tok_6v3r7ypjmnwrytos", cmdTokenRevoke},
		{"token rotate", "TOKEN_ID [--overlap D] [--ttl D] " + adminClientFlags, "issue a successor to a (reusable C2B) token; both are valid for the overlap",
			"daraja-edge token rotate tok_6v3r7ypjmnwrytos --overlap 48h", cmdTokenRotate},
		{"token annotate", "TOKEN_ID [--checkout-request-id ID] [--originator-conversation-id ID] " + adminClientFlags,
			"record what Daraja answered the request, so a missing callback can be recovered",
			"daraja-edge token annotate tok_6v3r7ypjmnwrytos --checkout-request-id ws_CO_191220191020363925", cmdTokenAnnotate},
		{"deliveries list", "[--destination D] [--tx ID] [--state S] " + adminClientFlags,
			"each callback's delivery to an app (forward:), its state and attempts; without --destination, every destination of the config",
			"daraja-edge deliveries list --destination shop --state dead", cmdDeliveriesList},
		{"deliveries replay", "--destination D (--sequence N | --tx ID | --since T --until T | --dlq) " + adminClientFlags,
			"deliver callbacks to a destination again: one stream sequence, a transaction, a time range of the stream, or all its dead letters",
			"daraja-edge deliveries replay --destination shop --dlq", cmdDeliveriesReplay},
		{"reconcile", "--statement PATH [--statement PATH …] [--callbacks FILE.ndjson] [--format text|json|csv] [--tz ZONE] [--columns receipt=…,time=…,in=…,out=…] [--publish] [--nats URL] [--config FILE]",
			"compare M-Pesa statements with the callbacks on the stream; exit 1 when something is missing, forged or different",
			"daraja-edge reconcile --statement ORG_600638_2026-11.csv", cmdReconcile},
		{"tail", "[--subject S] [--json] [--export] [--nats URL] [--config FILE]", "print vetted callbacks, rejections and missing events live, one line each, phone numbers masked",
			"daraja-edge tail --subject 'daraja.cb.stk.callback.>'", cmdTail},
		{"health", "[--admin URL] [--config FILE]", "exit 0 if the running edge is ready (the container HEALTHCHECK)", "daraja-edge health", cmdHealth},
		{"version", "", "print version and commit (also: daraja-edge --version)", "daraja-edge version", cmdVersion},
		{"completion", "bash|zsh", "print a shell completion script for bash or zsh",
			"source <(daraja-edge completion bash)    # or, in ~/.zshrc after compinit: source <(daraja-edge completion zsh)", cmdCompletion},
	}
}

// clientNote is said of every command's configuration.
const clientNote = `Without --config, every command reads $DARAJA_EDGE_CONFIG, else ./config.yaml,
else /etc/daraja-edge/config.yaml; serve and check need one of them, the
others use defaults when there is none. A file named by --config or
DARAJA_EDGE_CONFIG must exist. The admin API key for the token commands
comes from DARAJA_EDGE_ADMIN_KEY, else admin.api_keys in the config, else
admin.key_file (or --api-key-file).
`

// usage is the whole command line, made from the table.
func usage() string {
	var b strings.Builder
	b.WriteString("daraja-edge: a vetting, durable edge for Safaricom Daraja callbacks\n\nUsage:\n")
	for _, c := range commands {
		fmt.Fprintf(&b, "  %s\n      %s\n", strings.TrimSpace("daraja-edge "+c.name+" "+c.synopsis), c.summary)
	}
	b.WriteString("\nRun 'daraja-edge COMMAND --help' for a command's flags, their defaults and an example.\n\n")
	b.WriteString(clientNote)
	return b.String()
}

// find returns the command args name and the arguments after its name. A
// group word without a known subcommand ("token", "token frobnicate")
// finds the group, whose --help lists its subcommands.
func find(args []string) (*command, []string) {
	if len(args) >= 2 {
		for i := range commands {
			if commands[i].name == args[0]+" "+args[1] {
				return &commands[i], args[2:]
			}
		}
	}
	for i := range commands {
		if commands[i].name == args[0] {
			return &commands[i], args[1:]
		}
	}
	if subs := subcommands(args[0]); len(subs) > 0 {
		return group(args[0]), args[1:]
	}
	return nil, nil
}

// group is the command of a group word: it names the subcommands.
func group(word string) *command {
	subs := strings.Join(subcommands(word), ", ")
	return &command{name: word, synopsis: "SUBCOMMAND", run: func(_ context.Context, args []string, stdout, _ io.Writer) error {
		switch {
		case len(args) == 0:
			return usageError("%s: name a subcommand: %s", word, subs)
		case isHelp(args[0]):
			_, err := io.WriteString(stdout, groupHelp(word))
			return err
		}
		return usageError("%s: unknown subcommand %q; one of: %s", word, args[0], subs)
	}}
}

func isHelp(arg string) bool {
	switch arg {
	case "-h", "-help", "--help", "help":
		return true
	}
	return false
}

// groupHelp lists a group's subcommands.
func groupHelp(word string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "daraja-edge %s SUBCOMMAND\n\nSubcommands:\n", word)
	for _, c := range commands {
		if rest, ok := strings.CutPrefix(c.name, word+" "); ok {
			fmt.Fprintf(&b, "  %-10s %s\n", rest, c.summary)
		}
	}
	fmt.Fprintf(&b, "\nRun 'daraja-edge %s SUBCOMMAND --help' for its flags, their defaults and an example.\n", word)
	return b.String()
}

// commandHelp is the head of a command's --help: synopsis, description
// and example, up to the flags.
func commandHelp(name string) string {
	for _, c := range commands {
		if c.name == name {
			return fmt.Sprintf("%s\n\n%s\n\nExample:\n  %s\n\nFlags:\n", strings.TrimSpace("daraja-edge "+c.name+" "+c.synopsis),
				sentence(c.summary), c.example)
		}
	}
	return ""
}

// sentence makes a summary a sentence: capital first, full stop last.
func sentence(s string) string {
	if s == "" {
		return ""
	}
	return strings.ToUpper(s[:1]) + s[1:] + "."
}

// onHelp, when set (by tests), is told of every flag set writeHelp prints.
var onHelp func(name string, fs *flag.FlagSet)

// writeHelp prints a command's --help: commandHelp, then every flag with
// its value's placeholder (from the synopsis), what it does, and its
// default, "(required)" or what the usage already says of it.
func writeHelp(w io.Writer, name string, fs *flag.FlagSet) {
	if onHelp != nil {
		onHelp(name, fs)
	}
	var c command
	for _, x := range commands {
		if x.name == name {
			c = x
		}
	}
	syn := synopsisFlags(c.synopsis)
	var b strings.Builder
	b.WriteString(commandHelp(name))
	n := 0
	fs.VisitAll(func(f *flag.Flag) {
		n++
		sf := syn[f.Name]
		value := sf.value
		if value == "" && !isBoolFlag(f) {
			value = "VALUE"
		}
		fmt.Fprintf(&b, "  %s\n", strings.TrimSpace("--"+f.Name+" "+value))
		// Package flag would read a `quoted` word as the value's name;
		// here the synopsis names it, so quotes are only dropped.
		usage := strings.ReplaceAll(f.Usage, "`", "")
		if d := defaultText(f, sf.required); d != "" {
			usage += " " + d
		}
		fmt.Fprintf(&b, "        %s\n", usage)
	})
	if n == 0 {
		b.WriteString("  (none)\n")
	}
	_, _ = io.WriteString(w, b.String())
}

func isBoolFlag(f *flag.Flag) bool {
	bf, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && bf.IsBoolFlag()
}

// defaultText says what a flag is when not given.
func defaultText(f *flag.Flag, required bool) string {
	switch {
	case required:
		return "(required)"
	case strings.Contains(f.Usage, "(default"):
		return "" // the usage says it, better than the zero value would
	case isBoolFlag(f):
		return "(default " + f.DefValue + ")"
	case f.DefValue == "" || f.DefValue == "[]":
		return "(default: none)"
	}
	if g, ok := f.Value.(flag.Getter); ok {
		if _, ok := g.Get().(string); ok {
			return fmt.Sprintf("(default %q)", f.DefValue)
		}
	}
	return "(default " + f.DefValue + ")"
}

// synopsisFlag is what a synopsis says of a flag.
type synopsisFlag struct {
	value    string // the placeholder after it: "K[,K]", "FILE"; "" for a switch
	required bool   // outside [ ] and ( )
}

var flagWord = regexp.MustCompile(`^--([a-z][a-z0-9-]*)$`)

// synopsisFlags reads the flags of a synopsis.
func synopsisFlags(synopsis string) map[string]synopsisFlag {
	out := map[string]synopsisFlag{}
	words := strings.Fields(synopsis)
	depth := 0
	for i, w := range words {
		opened := strings.Count(w, "[") + strings.Count(w, "(")
		bare := strings.TrimLeft(w, "[(")
		lead := len(w) - len(bare)
		name := trimClosing(bare)
		if m := flagWord.FindStringSubmatch(name); m != nil {
			sf := synopsisFlag{required: depth+lead == 0}
			closed := name != bare // "--json]": no value follows inside
			if !closed && i+1 < len(words) && !strings.HasPrefix(strings.TrimLeft(words[i+1], "[("), "--") && !strings.ContainsAny(words[i+1][:1], "[(|") {
				sf.value = trimClosing(words[i+1])
			}
			if prev, ok := out[m[1]]; ok {
				sf.required = sf.required || prev.required
			}
			out[m[1]] = sf
		}
		depth += opened - strings.Count(w, "]") - strings.Count(w, ")")
	}
	return out
}

// trimClosing drops the "]" and ")" that close a group opened before w:
// "D]" → "D", "K[,K]" stays.
func trimClosing(w string) string {
	for len(w) > 0 && (w[len(w)-1] == ']' || w[len(w)-1] == ')') &&
		strings.Count(w, "]")+strings.Count(w, ")") > strings.Count(w, "[")+strings.Count(w, "(") {
		w = w[:len(w)-1]
	}
	return w
}

// commandFlags is newFlagSet with writeHelp as its --help.
func commandFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := newFlagSet(name, stderr)
	fs.Usage = func() { writeHelp(fs.Output(), name, fs) }
	return fs
}

// parseArgs parses flags and leaves positional arguments in fs.Args();
// --help is exit 0, a bad flag exit 2.
func parseArgs(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return &exitError{code: 0}
		}
		return &exitError{code: 2, msg: fs.Name() + ": " + err.Error()}
	}
	return nil
}

// subcommands lists the words that may follow word ("" for the first).
func subcommands(word string) []string {
	seen := map[string]bool{}
	var out []string
	for _, c := range commands {
		first, rest, _ := strings.Cut(c.name, " ")
		w := first
		if word != "" {
			if first != word || rest == "" {
				continue
			}
			w = rest
		}
		if !seen[w] {
			seen[w] = true
			out = append(out, w)
		}
	}
	sort.Strings(out)
	return out
}

func cmdVersion(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := commandFlags("version", stderr)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	_, err := fmt.Fprintf(stdout, "daraja-edge %s (commit %s)\n", version, buildCommit())
	return err
}

// completionFlags maps each command's name to the flags its synopsis
// names, sorted, with --help.
func completionFlags() map[string][]string {
	out := map[string][]string{}
	for _, c := range commands {
		fl := []string{"--help"}
		for name := range synopsisFlags(c.synopsis) {
			fl = append(fl, "--"+name)
		}
		sort.Strings(fl)
		out[c.name] = fl
	}
	return out
}

// groups lists the words that take subcommands.
func groups() []string {
	var out []string
	for _, w := range subcommands("") {
		if len(subcommands(w)) > 0 {
			out = append(out, w)
		}
	}
	return out
}

func cmdCompletion(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := commandFlags("completion", stderr)
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 || (fs.Arg(0) != "bash" && fs.Arg(0) != "zsh") {
		return commandError("completion", "completion: name bash or zsh")
	}
	script := bashCompletion()
	if fs.Arg(0) == "zsh" {
		script = zshCompletion()
	}
	_, err := io.WriteString(stdout, script)
	return err
}

// completionCases are the case arms both scripts share: what the second
// word can be after each first word, and the flags of each command, made
// from the table. arm formats one arm from a pattern and words.
func completionCases(arm func(pattern string, words []string) string) (second, flags string) {
	var s, f strings.Builder
	for _, g := range groups() {
		s.WriteString(arm(g, subcommands(g)))
	}
	s.WriteString(arm("completion", []string{"bash", "zsh"}))
	cf := completionFlags()
	names := make([]string, 0, len(cf))
	for n := range cf {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		f.WriteString(arm(`"`+n+`"`, cf[n]))
	}
	return s.String(), f.String()
}

func bashCompletion() string {
	second, flags := completionCases(func(p string, words []string) string {
		return fmt.Sprintf("    %s) words=%q ;;\n", p, strings.Join(words, " "))
	})
	return `# daraja-edge completion for bash: source <(daraja-edge completion bash)
_daraja_edge() {
  local cur=${COMP_WORDS[COMP_CWORD]} key=${COMP_WORDS[1]} words=
  case "$key" in
    ` + strings.Join(groups(), "|") + `) key="$key ${COMP_WORDS[2]}" ;;
  esac
  if [[ "$cur" == -* ]]; then
    case "$key" in
` + flags + `    esac
  elif [ "$COMP_CWORD" -eq 1 ]; then
    words="` + strings.Join(subcommands(""), " ") + `"
  elif [ "$COMP_CWORD" -eq 2 ]; then
    case "${COMP_WORDS[1]}" in
` + second + `    esac
  fi
  COMPREPLY=()
  if [ -n "$words" ]; then
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
  fi
}
complete -o default -F _daraja_edge daraja-edge
`
}

func zshCompletion() string {
	second, flags := completionCases(func(p string, words []string) string {
		return fmt.Sprintf("    (%s) reply=(%s) ;;\n", p, strings.Join(words, " "))
	})
	return `#compdef daraja-edge
# daraja-edge completion for zsh: in ~/.zshrc, after compinit,
#   source <(daraja-edge completion zsh)

# _daraja_edge_words sets reply to the candidates for words[CURRENT].
_daraja_edge_words() {
  local key=${words[2]}
  reply=()
  case $key in
    (` + strings.Join(groups(), "|") + `) key="$key ${words[3]}" ;;
  esac
  if [[ ${words[CURRENT]} == -* ]]; then
    case $key in
` + flags + `    esac
  elif (( CURRENT == 2 )); then
    reply=(` + strings.Join(subcommands(""), " ") + `)
  elif (( CURRENT == 3 )); then
    case ${words[2]} in
` + second + `    esac
  fi
}

_daraja_edge() {
  local -a reply
  _daraja_edge_words
  if (( ${#reply} )); then
    compadd -a reply
  else
    _files
  fi
}

(( $+functions[compdef] )) || { autoload -Uz compinit && compinit }
compdef _daraja_edge daraja-edge
`
}
