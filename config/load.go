package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"strings"
	"sync"
	"time"

	"go.yaml.in/yaml/v3"
)

// Problem is one thing wrong with a configuration, tied to the key it is
// about (e.g. `allowlist.cidrs[2]`).
type Problem struct {
	Key string
	Msg string
}

func (p *Problem) Error() string {
	if p.Key == "" {
		return p.Msg
	}
	return p.Key + ": " + p.Msg
}

// Problems splits an error returned by Load, Validate or CheckEnvironment
// into its problems, one per line of `check` output.
func Problems(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, Problems(e)...)
		}
		return out
	}
	return []error{err}
}

// maxFileBytes bounds the configuration file; a real one is a few KiB.
const maxFileBytes = 1 << 20

// LoadFile reads, expands, decodes and validates the file at path, taking
// ${NAME} values from the process environment.
func LoadFile(path string) (Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileBytes+1))
	if err != nil {
		return Config{}, fmt.Errorf("config: read %s: %w", path, err)
	}
	if len(data) > maxFileBytes {
		return Config{}, fmt.Errorf("config: %s is larger than %d bytes", path, maxFileBytes)
	}
	return Load(data, os.LookupEnv)
}

// Load decodes data over the defaults, expanding environment references in
// string values through lookupEnv (os.LookupEnv in production), then
// validates the result. Unknown keys, values of the wrong type and
// references to unset variables are problems like any other; every problem
// is reported at once.
//
// References follow the shell: ${NAME} is the variable's value and an
// error when it is unset (set but empty is empty); ${NAME:-word} is word
// when NAME is unset or empty, ${NAME-word} only when unset; ${NAME:?msg}
// is an error saying msg when NAME is unset or empty, ${NAME?msg} only when
// unset. $$ is a literal $ (so $${ is a literal ${); any other $ is itself.
// Expansion works on the parsed tree, not the text, so a variable's value
// is always one scalar and can never add YAML structure.
func Load(data []byte, lookupEnv func(string) (string, bool)) (Config, error) {
	cfg := Default()
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return cfg, cfg.Validate()
		}
		return cfg, &Problem{Msg: "not valid YAML: " + strings.TrimPrefix(err.Error(), "yaml: ")}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return cfg, &Problem{Msg: "more than one YAML document"}
	}
	d := decoder{budget: decodeBudget(&doc)}
	expandTree("", &doc, lookupEnv, &d.problems)
	d.decode("", &doc, reflect.ValueOf(&cfg).Elem(), 0)
	if d.exhausted {
		// A document whose aliases multiply it is an attack on the loader;
		// stop here rather than report thousands of problems.
		return cfg, errors.Join(d.problems...)
	}
	// Report what Validate finds too, so one run shows every problem, but
	// not of a key whose variable is unset: its value is not the
	// operator's, and "must start with whsec_" under "is not set" misleads.
	unset := map[string]bool{}
	for _, p := range d.problems {
		if pr, ok := p.(*Problem); ok && pr.Key != "" {
			unset[pr.Key] = true
		}
	}
	problems := d.problems
	for _, p := range Problems(cfg.Validate()) {
		if pr, ok := p.(*Problem); ok && unset[pr.Key] {
			continue
		}
		problems = append(problems, p)
	}
	return cfg, errors.Join(problems...)
}

// expandTree expands environment references in every scalar value of n.
// Mapping keys are names, not values, and are left alone. An alias is
// expanded once, where its anchor is defined.
func expandTree(path string, n *yaml.Node, lookupEnv func(string) (string, bool), problems *[]error) {
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			expandTree(path, c, lookupEnv, problems)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			expandTree(join(path, n.Content[i].Value), n.Content[i+1], lookupEnv, problems)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			expandTree(fmt.Sprintf("%s[%d]", path, i), c, lookupEnv, problems)
		}
	case yaml.ScalarNode:
		if !strings.Contains(n.Value, "$") {
			return
		}
		v, errs := expand(n.Value, lookupEnv)
		for _, e := range errs {
			*problems = append(*problems, &Problem{Key: path, Msg: fmt.Sprintf("%s (line %d)", e, n.Line)})
		}
		if v != n.Value {
			n.Value = v
			if n.Style == 0 {
				n.Tag = "" // let a plain scalar resolve again: ${REPLICAS} → 3
			}
		}
	}
}

// expand replaces the references in s (see Load). It never echoes a
// variable's value in an error, only the reference as written.
func expand(s string, lookupEnv func(string) (string, bool)) (string, []string) {
	var out strings.Builder
	var errs []string
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c != '$':
			out.WriteByte(c)
			i++
		case strings.HasPrefix(s[i:], "$$"):
			out.WriteByte('$')
			i += 2
		case strings.HasPrefix(s[i:], "${"):
			end := strings.IndexByte(s[i+2:], '}')
			if end < 0 {
				errs = append(errs, fmt.Sprintf("%s has no closing }: write $${ for a literal ${", clip(s[i:])))
				return s, errs
			}
			ref := s[i : i+2+end+1]
			v, err := resolveRef(ref, lookupEnv)
			if err != "" {
				errs = append(errs, err)
			}
			out.WriteString(v)
			i += len(ref)
		default:
			out.WriteByte(c)
			i++
		}
	}
	return out.String(), errs
}

// resolveRef resolves one ${...} reference; a non-empty second result is
// the problem with it.
func resolveRef(ref string, lookupEnv func(string) (string, bool)) (string, string) {
	body := ref[2 : len(ref)-1]
	n := 0
	for n < len(body) && (body[n] == '_' || isLetter(body[n]) || (n > 0 && body[n] >= '0' && body[n] <= '9')) {
		n++
	}
	name, op := body[:n], body[n:]
	if name == "" {
		return "", fmt.Sprintf("%s is not a variable reference (a name is letters, digits and _; write $${ for a literal ${)", clip(ref))
	}
	val, set := lookupEnv(name)
	switch {
	case op == "":
		if !set {
			return "", fmt.Sprintf("%s is not set (use ${%s:-default} for a default)", ref, name)
		}
		return val, ""
	case strings.Contains(op[1:], "${"):
		return "", fmt.Sprintf("%s: a default or message cannot hold another reference", clip(ref))
	case strings.HasPrefix(op, ":-"):
		if !set || val == "" {
			return op[2:], ""
		}
		return val, ""
	case strings.HasPrefix(op, "-"):
		if !set {
			return op[1:], ""
		}
		return val, ""
	case strings.HasPrefix(op, ":?"), strings.HasPrefix(op, "?"):
		colon := op[0] == ':'
		msg := strings.TrimPrefix(strings.TrimPrefix(op, ":"), "?")
		if !set || (colon && val == "") {
			if msg == "" {
				if colon {
					msg = "is not set or empty"
				} else {
					msg = "is not set"
				}
			}
			return "", fmt.Sprintf("${%s}: %s", name, msg)
		}
		return val, ""
	default:
		return "", fmt.Sprintf("%s is not a form daraja-edge knows (${NAME}, ${NAME:-default}, ${NAME:?message})", clip(ref))
	}
}

func isLetter(c byte) bool { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') }

// clip shortens text quoted in a problem.
func clip(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

var durationType = reflect.TypeOf(time.Duration(0))

// decoder decodes a node tree into the schema, collecting problems.
type decoder struct {
	problems []error
	// budget bounds the nodes visited: aliases may reuse a node, not
	// multiply the document (a billion-laughs file is a few hundred bytes).
	budget    int
	exhausted bool
}

// decodeBudget is twice the nodes in the tree, plus room for the modest
// reuse a real file makes of anchors.
func decodeBudget(n *yaml.Node) int {
	count := 0
	var walk func(*yaml.Node)
	walk = func(n *yaml.Node) {
		count++
		for _, c := range n.Content {
			walk(c)
		}
	}
	walk(n)
	return 2*count + 10000
}

func (d *decoder) fail(key, format string, args ...any) {
	d.problems = append(d.problems, &Problem{Key: key, Msg: fmt.Sprintf(format, args...)})
}

// decode decodes n into v, walking structs by their yaml tags so that
// every unknown key and bad value is reported with its full key path.
func (d *decoder) decode(path string, n *yaml.Node, v reflect.Value, depth int) {
	if d.exhausted {
		return
	}
	if d.budget--; d.budget < 0 {
		d.exhausted = true
		d.fail(path, "aliases expand the file too far (line %d): refused", n.Line)
		return
	}
	// The schema is a few levels deep; anything deeper is an alias loop
	// (a: &x [*x]) or an attack on the loader.
	if depth > 16 {
		d.fail(path, "nested too deeply (an alias that refers to itself?)")
		return
	}
	for n.Kind == yaml.DocumentNode || n.Kind == yaml.AliasNode {
		if n.Kind == yaml.AliasNode {
			n = n.Alias
		} else if len(n.Content) == 1 {
			n = n.Content[0]
		} else {
			return
		}
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		return // keep the default
	}
	switch {
	case v.Kind() == reflect.Struct:
		if n.Kind != yaml.MappingNode {
			d.fail(path, "must be a mapping (line %d)", n.Line)
			return
		}
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			key := join(path, k.Value)
			if seen[k.Value] {
				d.fail(key, "set twice (line %d)", k.Line)
				continue
			}
			seen[k.Value] = true
			f, ok := fieldByTag(v, k.Value)
			if !ok {
				msg := fmt.Sprintf("unknown key (line %d)", k.Line)
				if s := suggest(k.Value, tags(v.Type())); s != "" {
					msg += "; did you mean " + s + "?"
				} else if elsewhere := keyParents()[k.Value]; len(elsewhere) > 0 {
					msg += "; it is a key of " + strings.Join(elsewhere, ", ")
				}
				d.fail(key, "%s", msg)
				continue
			}
			d.decode(key, val, f, depth+1)
		}
	case v.Kind() == reflect.Map:
		if n.Kind != yaml.MappingNode {
			d.fail(path, "must be a mapping (line %d)", n.Line)
			return
		}
		m := reflect.MakeMapWithSize(v.Type(), len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			key := join(path, k.Value)
			if k.Kind != yaml.ScalarNode {
				d.fail(path, "a key must be a single value (line %d)", k.Line)
				continue
			}
			kv := reflect.ValueOf(k.Value).Convert(v.Type().Key())
			if m.MapIndex(kv).IsValid() {
				d.fail(key, "set twice (line %d)", k.Line)
				continue
			}
			e := reflect.New(v.Type().Elem()).Elem()
			d.decode(key, val, e, depth+1)
			m.SetMapIndex(kv, e)
		}
		v.Set(m)
	case v.Kind() == reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.fail(path, "must be a list (line %d)", n.Line)
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, item := range n.Content {
			// A list entry with defaults of its own (a destination) starts
			// from them.
			if df, ok := s.Index(i).Addr().Interface().(interface{ setDefaults() }); ok {
				df.setDefaults()
			}
			d.decode(fmt.Sprintf("%s[%d]", path, i), item, s.Index(i), depth+1)
		}
		v.Set(s)
	default:
		if n.Kind != yaml.ScalarNode {
			d.fail(path, "must be a single value (line %d)", n.Line)
			return
		}
		err := n.Decode(v.Addr().Interface())
		if err != nil && v.Kind() != reflect.String && n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle) != 0 {
			// replicas: "${REPLICAS}" means the number, as unquoted.
			plain := *n
			plain.Tag, plain.Style = "", 0
			err = plain.Decode(v.Addr().Interface())
		}
		if err != nil {
			d.fail(path, "%q is not %s (line %d)", clip(n.Value), describe(v.Type()), n.Line)
		}
	}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func fieldByTag(v reflect.Value, name string) (reflect.Value, bool) {
	t := v.Type()
	for i := range t.NumField() {
		tag, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if tag == name && tag != "-" {
			return v.Field(i), true
		}
	}
	return reflect.Value{}, false
}

func tags(t reflect.Type) []string {
	var out []string
	for i := range t.NumField() {
		if tag, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ","); tag != "" && tag != "-" {
			out = append(out, tag)
		}
	}
	return out
}

// keyParents maps every key of the schema to the sections it belongs to
// (mode: tls, allowlist), so a key written at the wrong level can be
// pointed to its place.
var keyParents = sync.OnceValue(func() map[string][]string {
	out := map[string][]string{}
	var walk func(path string, t reflect.Type)
	walk = func(path string, t reflect.Type) {
		parent := path
		if parent == "" {
			parent = "the top level"
		}
		for i := range t.NumField() {
			tag, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
			if tag == "" || tag == "-" {
				continue
			}
			out[tag] = append(out[tag], parent)
			switch ft := t.Field(i).Type; {
			case ft.Kind() == reflect.Struct:
				walk(join(path, tag), ft)
			case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
				walk(join(path, tag)+"[]", ft.Elem())
			}
		}
	}
	walk("", reflect.TypeOf(Config{}))
	return out
})

// suggest returns the known key closest to key when it is close enough to
// be a misspelling: at most two edits (a swap of neighbours is one), and
// fewer edits than the key has letters.
func suggest(key string, known []string) string {
	best, bestD := "", 3
	for _, k := range known {
		if d := editDistance(strings.ToLower(key), k); d < bestD && d < len(key) {
			best, bestD = k, d
		}
	}
	return best
}

// editDistance is the optimal string alignment distance: insertions,
// deletions, substitutions and transpositions of adjacent bytes.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 1 << 30 // not a misspelling of a key
	}
	prev2 := make([]int, len(b)+1)
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(b)]
}

func describe(t reflect.Type) string {
	switch {
	case t == durationType:
		return "a duration (like 4s, 10m, 24h)"
	case t.Kind() == reflect.Bool:
		return "true or false"
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Uint64:
		return "a whole number"
	case t.Kind() == reflect.Float32 || t.Kind() == reflect.Float64:
		return "a number"
	default:
		return "a " + t.Kind().String()
	}
}
