package console

import (
	"io/fs"
	"math"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// cssVars reads the custom properties of console.css's :root rule.
func cssVars(t *testing.T) (map[string]string, string) {
	t.Helper()
	b, err := fs.ReadFile(assets, "assets/console.css")
	if err != nil {
		t.Fatal(err)
	}
	css := string(b)
	root := regexp.MustCompile(`:root\{([^}]*)\}`).FindStringSubmatch(css)
	if root == nil {
		t.Fatal("console.css has no :root rule")
	}
	vars := map[string]string{}
	for _, m := range regexp.MustCompile(`--([a-z]+):(#[0-9a-fA-F]{3,6})`).FindAllStringSubmatch(root[1], -1) {
		vars[m[1]] = m[2]
	}
	return vars, css
}

// luminance is the WCAG 2 relative luminance of #rgb or #rrggbb.
func luminance(t *testing.T, hex string) float64 {
	t.Helper()
	h := strings.TrimPrefix(hex, "#")
	if len(h) == 3 {
		h = string([]byte{h[0], h[0], h[1], h[1], h[2], h[2]})
	}
	v, err := strconv.ParseUint(h, 16, 32)
	if err != nil || len(h) != 6 {
		t.Fatalf("colour %q", hex)
	}
	ch := func(c uint64) float64 {
		s := float64(c) / 255
		if s <= 0.04045 {
			return s / 12.92
		}
		return math.Pow((s+0.055)/1.055, 2.4)
	}
	return 0.2126*ch(v>>16&0xff) + 0.7152*ch(v>>8&0xff) + 0.0722*ch(v&0xff)
}

func contrast(t *testing.T, a, b string) float64 {
	la, lb := luminance(t, a), luminance(t, b)
	return (max(la, lb) + 0.05) / (min(la, lb) + 0.05)
}

// TestContrast computes, from console.css itself, the contrast of every
// text colour on the background it is drawn on (WCAG AA: 4.5:1 for
// text), and of the focus ring and input borders against theirs (3:1 for
// non-text, WCAG 1.4.11).
func TestContrast(t *testing.T) {
	vars, css := cssVars(t)
	colour := func(s string) string {
		if name, ok := strings.CutPrefix(s, "--"); ok {
			c, ok := vars[name]
			if !ok {
				t.Fatalf("console.css defines no --%s", name)
			}
			return c
		}
		if !strings.Contains(css, s) {
			t.Fatalf("console.css no longer uses %s: update this test", s)
		}
		return s
	}
	for _, p := range []struct {
		what   string
		fg, bg string
		min    float64
	}{
		{"body text", "--fg", "--bg", 4.5},
		{"hints", "--mute", "--bg", 4.5},
		{"links", "--link", "--bg", 4.5},
		{"good news", "--ok", "--bg", 4.5},
		{"errors, rejected rows", "--bad", "--bg", 4.5},
		{"text on a warning", "--fg", "--warn", 4.5},
		{"links on a warning (missing rows)", "--link", "--warn", 4.5},
		{"errors on a warning", "--bad", "--warn", 4.5},
		{"code and bodies", "--fg", "--code", 4.5},
		{"header and button text", "#fff", "--head", 4.5},
		{"pressed button text", "--head", "#fff", 4.5},
		{"danger button text", "#fff", "--bad", 4.5},
		{"read-only badge", "#000", "--badge", 4.5},
		{"focus ring on the page", "--focus", "--bg", 3},
		{"focus ring on a warning", "--focus", "--warn", 3},
		{"focus ring in the header", "#fff", "--head", 3},
		{"input borders", "#767676", "--bg", 3},
	} {
		if c := contrast(t, colour(p.fg), colour(p.bg)); c < p.min {
			t.Errorf("%s: %s on %s is %.2f:1, want at least %.1f:1", p.what, p.fg, p.bg, c, p.min)
		}
	}
	if !strings.Contains(css, ":focus-visible{outline:3px solid var(--focus)") {
		t.Error("the focus ring rule changed: check it is still visible")
	}
}

// TestLabels: every form control on every page template has a label.
func TestLabels(t *testing.T) {
	files, err := fs.Glob(assets, "assets/*.html")
	if err != nil {
		t.Fatal(err)
	}
	control := regexp.MustCompile(`<(input|select|textarea)\b[^>]*>`)
	for _, f := range files {
		b, _ := fs.ReadFile(assets, f)
		page := string(b)
		for _, m := range control.FindAllStringIndex(page, -1) {
			tag := page[m[0]:m[1]]
			if strings.Contains(tag, `type="hidden"`) {
				continue
			}
			id := regexp.MustCompile(`\bid="([^"]+)"`).FindStringSubmatch(tag)
			// Either wrapped in a <label> that is still open here, or
			// named by a label for its id.
			before := page[:m[0]]
			wrapped := strings.LastIndex(before, "<label") > strings.LastIndex(before, "</label>")
			named := id != nil && strings.Contains(page, `<label for="`+id[1]+`"`)
			if !wrapped && !named && !strings.Contains(tag, "aria-label=") {
				t.Errorf("%s: %s has no label", f, tag)
			}
		}
	}
}
