package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
)

// command is one entry of the command line: its name (with subcommand),
// its synopsis, what it does, an example, and the function that runs it.
// --help, the usage text and shell completion are all made from this
// table, so they cannot drift from what runs.
type command struct {
	name     string // "serve", "token issue"
	synopsis string // the flags, as in the usage
	summary  string
	example  string
	run      func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

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
		{"token issue", "--kinds K[,K] --shortcode S [--reference R] [--ttl D] [--reusable] [--forward-path P]",
			"ask the admin API for a token; print its id, token, expiry and callback URLs",
			"daraja-edge token issue --kinds b2c.result,b2c.timeout --shortcode 600000 --reference PAYOUT-77 --ttl 1h",
			cmdTokenIssue},
		{"token status", "TOKEN_ID", "a token's state, kinds, expiry, and per kind the callback that used it",
			"daraja-edge token status tok_6v3r7ypjmnwrytos", cmdTokenStatus},
		{"token list", "[--reference R] [--shortcode S] [--kind K] [--state S] [--after ID] [--limit N]",
			"tokens matching the filters, a page at a time", "daraja-edge token list --reference ORDER-1042", cmdTokenList},
		{"token revoke", "TOKEN_ID", "refuse every later callback on a token, on every replica",
			"daraja-edge token revoke tok_6v3r7ypjmnwrytos", cmdTokenRevoke},
		{"token rotate", "TOKEN_ID [--overlap D] [--ttl D]", "issue a successor to a (reusable C2B) token; both are valid for the overlap",
			"daraja-edge token rotate tok_6v3r7ypjmnwrytos --overlap 48h", cmdTokenRotate},
		{"token annotate", "TOKEN_ID [--checkout-request-id ID] [--originator-conversation-id ID]",
			"record what Daraja answered the request, so a missing callback can be recovered",
			"daraja-edge token annotate tok_6v3r7ypjmnwrytos --checkout-request-id ws_CO_191220191020363925", cmdTokenAnnotate},
		{"reconcile", "--statement PATH [--statement PATH …] [--callbacks FILE.ndjson] [--format text|json|csv] [--tz ZONE] [--columns receipt=…,time=…,in=…,out=…] [--publish]",
			"compare M-Pesa statements with the callbacks on the stream; exit 1 when something is missing, forged or different",
			"daraja-edge reconcile --statement ORG_600638_2026-11.csv", cmdReconcile},
		{"tail", "[--subject S] [--json] [--export] [--nats URL]", "print vetted callbacks, rejections and missing events live, one line each, phone numbers masked",
			"daraja-edge tail --subject 'daraja.cb.stk.callback.>'", cmdTail},
		{"health", "[--admin URL]", "exit 0 if the running edge is ready (the container HEALTHCHECK)", "daraja-edge health", cmdHealth},
		{"version", "", "print version and commit", "daraja-edge version",
			func(_ context.Context, _ []string, stdout, _ io.Writer) error {
				_, err := fmt.Fprintf(stdout, "daraja-edge %s (commit %s)\n", version, buildCommit())
				return err
			}},
		{"completion", "bash|zsh", "print a shell completion script", "source <(daraja-edge completion bash)", cmdCompletion},
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
		fmt.Fprintf(&b, "  daraja-edge %s %s\n      %s\n", c.name, c.synopsis, c.summary)
	}
	b.WriteString("\nRun 'daraja-edge COMMAND --help' for a command's flags and an example.\n\n")
	b.WriteString(clientNote)
	return b.String()
}

// find returns the command args name and the arguments after its name.
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
	return nil, nil
}

// commandHelp is printed before a command's flags by --help.
func commandHelp(name string) string {
	for _, c := range commands {
		if c.name == name {
			return fmt.Sprintf("daraja-edge %s %s\n\n%s.\n\nExample:\n  %s\n\nFlags:\n", c.name, c.synopsis, c.summary, c.example)
		}
	}
	return ""
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

func cmdCompletion(_ context.Context, args []string, stdout, _ io.Writer) error {
	if len(args) != 1 || (args[0] != "bash" && args[0] != "zsh") {
		return usageError("completion: name bash or zsh")
	}
	tops := strings.Join(subcommands(""), " ")
	tokens := strings.Join(subcommands("token"), " ")
	script := `# daraja-edge completion (bash; zsh through bashcompinit)
_daraja_edge() {
  local cur=${COMP_WORDS[COMP_CWORD]}
  if [ "$COMP_CWORD" -eq 1 ]; then
    COMPREPLY=($(compgen -W "` + tops + `" -- "$cur"))
  elif [ "$COMP_CWORD" -eq 2 ] && [ "${COMP_WORDS[1]}" = token ]; then
    COMPREPLY=($(compgen -W "` + tokens + `" -- "$cur"))
  elif [ "$COMP_CWORD" -eq 2 ] && [ "${COMP_WORDS[1]}" = completion ]; then
    COMPREPLY=($(compgen -W "bash zsh" -- "$cur"))
  else
    COMPREPLY=($(compgen -f -- "$cur"))
  fi
}
`
	if args[0] == "zsh" {
		script = "autoload -U +X bashcompinit && bashcompinit\n" + script
	}
	script += "complete -o default -F _daraja_edge daraja-edge\n"
	_, err := io.WriteString(stdout, script)
	return err
}
