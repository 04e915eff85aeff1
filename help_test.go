package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// cliRun runs the command line, returning what it printed (stdout and
// stderr together) and its exit code as main would map it.
func cliRun(args ...string) (string, int) {
	var out bytes.Buffer
	err := run(context.Background(), args, &out, &out)
	if err == nil {
		return out.String(), 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return out.String() + ee.msg, ee.code
	}
	return out.String() + err.Error(), 1
}

// helpOf runs `NAME --help` and returns its text and the flag set it
// printed (through writeHelp), or fails.
func helpOf(t *testing.T, c command) (string, *flag.FlagSet) {
	t.Helper()
	var shown *flag.FlagSet
	onHelp = func(name string, fs *flag.FlagSet) {
		if name == c.name {
			shown = fs
		}
	}
	defer func() { onHelp = nil }()
	help, code := cliRun(append(strings.Fields(c.name), "--help")...)
	if code != 0 {
		t.Fatalf("%s --help: exit %d: %s", c.name, code, help)
	}
	if shown == nil {
		t.Fatalf("%s --help did not print its flags through writeHelp (its flag set must come from commandFlags, "+
			"or newFlagSet must use writeHelp): %s", c.name, help)
	}
	return help, shown
}

// flagLines returns the lines of help that describe --name: the flag and
// its placeholder, then what it does and its default.
func flagLines(help, name string) string {
	lines := strings.Split(help, "\n")
	for i, l := range lines {
		if l == "  --"+name || strings.HasPrefix(l, "  --"+name+" ") {
			if i+1 < len(lines) {
				return l + "\n" + lines[i+1]
			}
			return l
		}
	}
	return ""
}

// checkCommandHelp: c's --help has its synopsis, its description, an
// example of it whose flags it takes, and every flag it takes with a
// placeholder from the synopsis, its usage and its default; the synopsis
// names exactly the flags it takes.
func checkCommandHelp(t *testing.T, c command) *flag.FlagSet {
	t.Helper()
	help, fs := helpOf(t, c)
	if !strings.HasPrefix(help, strings.TrimSpace("daraja-edge "+c.name+" "+c.synopsis)+"\n") {
		t.Errorf("no synopsis first: %s", help)
	}
	desc := sentence(c.summary)
	if len(c.summary) < 10 || !strings.Contains(help, "\n"+desc+"\n") {
		t.Errorf("no description %q: %s", desc, help)
	}
	if !strings.Contains(c.example, "daraja-edge "+c.name) || !strings.Contains(help, "Example:\n  "+c.example+"\n") {
		t.Errorf("no example of %q: %s", c.name, help)
	}
	for _, w := range strings.Fields(c.example) {
		if m := flagWord.FindStringSubmatch(strings.SplitN(w, "=", 2)[0]); m != nil && fs.Lookup(m[1]) == nil {
			t.Errorf("the example uses %s, which %s does not take", w, c.name)
		}
	}
	syn := synopsisFlags(c.synopsis)
	fs.VisitAll(func(f *flag.Flag) {
		lines := flagLines(help, f.Name)
		switch {
		case lines == "":
			t.Errorf("--%s is not in the help: %s", f.Name, help)
			return
		case strings.Contains(lines, "`"):
			t.Errorf("--%s: a backquote in the help: %q", f.Name, lines)
		case !strings.Contains(lines, strings.ReplaceAll(f.Usage, "`", "")):
			t.Errorf("--%s: the help lacks its usage %q: %q", f.Name, f.Usage, lines)
		}
		sf, ok := syn[f.Name]
		if !ok {
			t.Errorf("--%s is not in the synopsis %q", f.Name, c.synopsis)
		}
		if !isBoolFlag(f) && (sf.value == "" || !strings.HasPrefix(lines, "  --"+f.Name+" "+sf.value+"\n")) {
			t.Errorf("--%s takes a value; its line names none from the synopsis: %q", f.Name, lines)
		}
		switch {
		case sf.required:
			if !strings.Contains(lines, "(required)") {
				t.Errorf("--%s is required by the synopsis; the help does not say so: %q", f.Name, lines)
			}
		case !strings.Contains(lines, "(default"):
			t.Errorf("--%s: no default in the help: %q", f.Name, lines)
		case f.DefValue != "" && f.DefValue != "[]" && !strings.Contains(f.Usage, "(default") && !strings.Contains(lines, f.DefValue+")") &&
			!strings.Contains(lines, fmt.Sprintf("%q)", f.DefValue)):
			t.Errorf("--%s: the help does not show its default %q: %q", f.Name, f.DefValue, lines)
		}
	})
	for name := range syn {
		if fs.Lookup(name) == nil {
			t.Errorf("the synopsis names --%s, which %s does not take", name, c.name)
		}
	}
	return fs
}

// checkEveryCommandHelp: usage (the text of --help) lists every command
// of the table with its synopsis and summary, and each command's --help
// passes checkCommandHelp. It returns each command's flag set.
func checkEveryCommandHelp(t *testing.T, usage string) map[string]*flag.FlagSet {
	t.Helper()
	flagsOf := map[string]*flag.FlagSet{}
	for _, c := range commands {
		if !strings.Contains(usage, "  "+strings.TrimSpace("daraja-edge "+c.name+" "+c.synopsis)+"\n      "+c.summary+"\n") {
			t.Errorf("--help lacks %q", c.name)
		}
		t.Run(c.name, func(t *testing.T) { flagsOf[c.name] = checkCommandHelp(t, c) })
	}
	return flagsOf
}

// completionCase is what a shell should offer after words, the last one
// being completed.
type completionCase struct {
	words []string
	want  []string
}

// completionCases are, from the table: the commands, each group's
// subcommands, the shells, and each command's flags (which must be the
// flags its --help shows, with --help).
func completionCasesFor(flagsOf map[string]*flag.FlagSet) []completionCase {
	cases := []completionCase{
		{[]string{""}, subcommands("")},
		{[]string{"de"}, []string{"deliveries"}},
		{[]string{"completion", ""}, []string{"bash", "zsh"}},
	}
	for _, g := range groups() {
		cases = append(cases, completionCase{[]string{g, ""}, subcommands(g)})
	}
	for _, c := range commands {
		if flagsOf[c.name] == nil {
			continue // its --help failed
		}
		want := []string{"--help"}
		flagsOf[c.name].VisitAll(func(f *flag.Flag) { want = append(want, "--"+f.Name) })
		slices.Sort(want)
		cases = append(cases, completionCase{append(strings.Fields(c.name), "--"), want})
	}
	cases = append(cases, completionCase{[]string{"deliveries", "replay", "--d"}, []string{"--destination", "--dlq"}})
	return cases
}

// checkZshCompletion: `completion zsh`, sourced by a real zsh (which runs
// compinit itself when it was not), registers _daraja_edge for
// daraja-edge and offers each case's words; then a real interactive zsh
// completes two lines typed with Tab.
func checkZshCompletion(t *testing.T, cases []completionCase) {
	t.Helper()
	script, code := cliRun("completion", "zsh")
	if code != 0 {
		t.Fatalf("completion zsh: exit %d: %s", code, script)
	}
	dir := t.TempDir()
	f := filepath.Join(dir, "_daraja-edge.zsh")
	if err := os.WriteFile(f, []byte(script), 0o600); err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "HOME="+dir, "ZDOTDIR="+dir)
	var drive strings.Builder
	fmt.Fprintf(&drive, "source %q || exit 3\nprint -r -- \"$_comps[daraja-edge]\"\n", f)
	for _, c := range cases {
		words := append([]string{"daraja-edge"}, c.words...)
		// compadd keeps the candidates that start with the word; so here.
		fmt.Fprintf(&drive, "words=(%s); CURRENT=%d; _daraja_edge_words; r=(${(M)reply:#%s*}); print -r -- \"$r\"\n",
			shellWords(words), len(words), words[len(words)-1])
	}
	cmd := exec.Command("zsh", "-f", "-c", drive.String())
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	first, rest, _ := strings.Cut(string(out), "\n")
	if first != "_daraja_edge" {
		t.Errorf("zsh: daraja-edge completes with %q, want _daraja_edge (%v): %s", first, err, out)
	}
	compareCompletion(t, "zsh", cases, rest, err)

	// Interactive: type, press Tab, read the line zsh completed.
	drv := fmt.Sprintf(`zmodload zsh/zpty zsh/datetime || exit 3
expect() {
  local buf= chunk end=$(( EPOCHREALTIME + 120 ))
  while (( EPOCHREALTIME < end )); do
    if zpty -r -t z chunk; then buf+=$chunk; [[ $buf == *$1* ]] && return 0; else sleep 0.05; fi
  done
  print -r -- "no ${(q)1} in: ${(q+)buf}"; return 1
}
zpty z 'zsh -f -i' || exit 3
zpty -w z 'PS1="%%%% "; source %q; print -r -- READ""Y'
expect READY || exit 1
zpty -w -n z $'daraja-edge deliveries re\t'
expect 'daraja-edge deliveries replay' || exit 1
zpty -w -n z $'\C-u'
zpty -w -n z $'daraja-edge token list --sho\t'
expect 'daraja-edge token list --shortcode' || exit 1
zpty -d z
print OK
`, f)
	cmd = exec.Command("zsh", "-f", "-c", drv)
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err != nil || !strings.HasSuffix(string(out), "OK\n") {
		t.Errorf("interactive zsh completion: %v: %s", err, out)
	}
}

// shellWords quotes words for a bash or zsh array.
func shellWords(words []string) string {
	q := make([]string, len(words))
	for i, w := range words {
		q[i] = "'" + strings.ReplaceAll(w, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}

func compareCompletion(t *testing.T, shell string, cases []completionCase, out string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v: %s", shell, err, out)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != len(cases) {
		t.Fatalf("%s: %d answers for %d cases: %s", shell, len(lines), len(cases), out)
	}
	for i, c := range cases {
		if got := strings.Fields(lines[i]); !slices.Equal(got, c.want) {
			t.Errorf("%s completes daraja-edge %s with %v, want %v", shell, strings.Join(c.words, " "), got, c.want)
		}
	}
}

// needShell finds a shell, or skips; in CI a missing shell fails.
func needShell(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is not installed (.ci/run installs it)", name)
		}
		t.Skipf("%s is not installed", name)
	}
}

// TestGroupHelp: `token --help` and `deliveries --help` list their
// subcommands (exit 0); a group alone or with an unknown subcommand is
// exit 2 naming the subcommands.
func TestGroupHelp(t *testing.T) {
	for _, g := range groups() {
		for _, h := range []string{"--help", "-h", "help"} {
			out, code := cliRun(g, h)
			if code != 0 {
				t.Errorf("%s %s: exit %d: %s", g, h, code, out)
			}
			for _, c := range commands {
				if sub, ok := strings.CutPrefix(c.name, g+" "); ok && !strings.Contains(out, "  "+fmt.Sprintf("%-10s %s", sub, c.summary)+"\n") {
					t.Errorf("%s %s lacks %q: %s", g, h, c.name, out)
				}
			}
		}
		subs := strings.Join(subcommands(g), ", ")
		for _, args := range [][]string{{g}, {g, "frobnicate"}} {
			if out, code := cliRun(args...); code != 2 || !strings.Contains(out, subs) {
				t.Errorf("%v: exit %d, want 2 naming %s: %s", args, code, subs, out)
			}
		}
	}
	if gs := groups(); !slices.Equal(gs, []string{"deliveries", "token"}) {
		t.Errorf("groups %v", gs)
	}
}

// TestVersion: `--version`, `-version` and `version` print the version
// and commit; `version --help` prints help, not the version.
func TestVersion(t *testing.T) {
	want := fmt.Sprintf("daraja-edge %s (commit %s)\n", version, buildCommit())
	for _, args := range [][]string{{"--version"}, {"-version"}, {"version"}} {
		if out, code := cliRun(args...); code != 0 || out != want {
			t.Errorf("%v: exit %d %q, want %q", args, code, out, want)
		}
	}
	if out, code := cliRun("version", "--help"); code != 0 || strings.Contains(out, want) || !strings.Contains(out, "Example:") {
		t.Errorf("version --help: exit %d: %s", code, out)
	}
	if out, code := cliRun("version", "extra"); code != 2 {
		t.Errorf("version extra: exit %d: %s", code, out)
	}
}

// TestSynopsisFlags: flags outside [ ] and ( ) are required; each takes
// the placeholder after it; a switch takes none.
func TestSynopsisFlags(t *testing.T) {
	got := synopsisFlags("--kinds K[,K] --shortcode S [--reference R] [--reusable] (--sequence N | --tx ID | --dlq) [--statement PATH …] --statement PATH [--format text|json]")
	want := map[string]synopsisFlag{
		"kinds": {"K[,K]", true}, "shortcode": {"S", true}, "reference": {"R", false}, "reusable": {"", false},
		"sequence": {"N", false}, "tx": {"ID", false}, "dlq": {"", false}, "statement": {"PATH", true}, "format": {"text|json", false},
	}
	if len(got) != len(want) {
		t.Errorf("got %v, want %v", got, want)
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("--%s: %+v, want %+v", k, got[k], w)
		}
	}
}
