package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"regexp"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
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

// Problems splits an error returned by Load or Validate into its problems,
// one per line of `check` output.
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

// LoadFile reads, expands, decodes and validates the file at path.
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
	return Load(data, os.Getenv)
}

// Load decodes data over the defaults, expanding ${NAME} in string values
// through getenv, then validates the result. Unknown keys and values of the
// wrong type are problems like any other; every problem is reported at once.
func Load(data []byte, getenv func(string) string) (Config, error) {
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
	expandEnv(&doc, getenv)
	var problems []error
	decodeNode("", &doc, reflect.ValueOf(&cfg).Elem(), &problems, 0)
	// Report what Validate finds too, so one run shows every problem.
	return cfg, errors.Join(append(problems, Problems(cfg.Validate())...)...)
}

var envRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

// expandEnv replaces ${NAME} in every scalar. It works on the parsed tree,
// not the text, so a variable's value cannot inject YAML structure.
func expandEnv(n *yaml.Node, getenv func(string) string) {
	if n.Kind == yaml.ScalarNode && strings.Contains(n.Value, "${") {
		n.Value = envRef.ReplaceAllStringFunc(n.Value, func(ref string) string {
			return getenv(ref[2 : len(ref)-1])
		})
		if n.Style == 0 {
			n.Tag = "" // let a plain scalar resolve again: ${REPLICAS} → 3
		}
	}
	for _, c := range n.Content {
		expandEnv(c, getenv)
	}
}

var durationType = reflect.TypeOf(time.Duration(0))

// decodeNode decodes n into v, walking structs by their yaml tags so that
// every unknown key and bad value is reported with its full key path.
func decodeNode(path string, n *yaml.Node, v reflect.Value, problems *[]error, depth int) {
	// The schema is a few levels deep; anything deeper is an alias loop
	// (a: &x [*x]) or an attack on the loader.
	if depth > 16 {
		*problems = append(*problems, &Problem{Key: path, Msg: "nested too deeply (an alias that refers to itself?)"})
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
	fail := func(msg string) { *problems = append(*problems, &Problem{Key: path, Msg: msg}) }
	switch {
	case v.Kind() == reflect.Struct:
		if n.Kind != yaml.MappingNode {
			fail(fmt.Sprintf("must be a mapping (line %d)", n.Line))
			return
		}
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			key := join(path, k.Value)
			if seen[k.Value] {
				*problems = append(*problems, &Problem{Key: key, Msg: fmt.Sprintf("set twice (line %d)", k.Line)})
				continue
			}
			seen[k.Value] = true
			f, ok := fieldByTag(v, k.Value)
			if !ok {
				*problems = append(*problems, &Problem{Key: key, Msg: fmt.Sprintf("unknown key (line %d)", k.Line)})
				continue
			}
			decodeNode(key, val, f, problems, depth+1)
		}
	case v.Kind() == reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			fail(fmt.Sprintf("must be a list (line %d)", n.Line))
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, item := range n.Content {
			decodeNode(fmt.Sprintf("%s[%d]", path, i), item, s.Index(i), problems, depth+1)
		}
		v.Set(s)
	default:
		if n.Kind != yaml.ScalarNode {
			fail(fmt.Sprintf("must be a single value (line %d)", n.Line))
			return
		}
		if err := n.Decode(v.Addr().Interface()); err != nil {
			fail(fmt.Sprintf("%q is not %s (line %d)", n.Value, describe(v.Type()), n.Line))
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
		if tag == name {
			return v.Field(i), true
		}
	}
	return reflect.Value{}, false
}

func describe(t reflect.Type) string {
	switch {
	case t == durationType:
		return "a duration (like 4s, 10m, 24h)"
	case t.Kind() == reflect.Bool:
		return "true or false"
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Uint64:
		return "a whole number"
	default:
		return "a " + t.Kind().String()
	}
}
