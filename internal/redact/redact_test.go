package redact

import (
	"strings"
	"testing"

	"github.com/daraja-edge/daraja-edge/daraja"
)

const tok = "wEtZr0EY5mOTXc8pwaAKFPayvHo6hMKAUPV774TE"

func TestPath(t *testing.T) {
	for _, c := range []struct{ name, in, want string }{
		{"endpoint", "/stk/callback", "/stk/callback"},
		{"scanner path", "/wp-login.php", "/wp-login.php"},
		{"empty", "", ""},
		{"token in fragment", "/stk/callback#t=" + tok, "/stk/callback#t=[redacted]"},
		{"token segment", "/" + tok + "/x", "/[redacted]/x"},
		{"admin token path", "/v1/tokens/" + tok + "/rotate", "/v1/tokens/[redacted]/rotate"},
		{"token id", "/v1/tokens/tok_6v3r7ypjmnwrytos", "/v1/tokens/[redacted]"},
		{"19 kept", "/" + tok[:19], "/" + tok[:19]},
		{"20 hidden", "/" + tok[:20], "/[redacted]"},
		{"token at the end, no slash", tok, "[redacted]"},
		{"control byte", "/a\x00b", "/a?b"},
		{"newline", "/a\nb\r", "/a?b?"},
		{"non-ASCII", "/caf\xc3\xa9", "/caf??"},
		{"long", "/" + strings.Repeat("a/", 100), strings.Repeat("/a", 64)},
		{"long token run cut", strings.Repeat("/"+tok, 12), strings.Repeat("/[redacted]", 12)[:MaxPath]},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := Path(c.in); got != c.want {
				t.Errorf("Path(%q) = %q, want %q", c.in, got, c.want)
			}
		})
	}
}

// TestPathKeepsEndpoints: every endpoint path comes out as it went in, so
// the public side needs no list of known paths of its own.
func TestPathKeepsEndpoints(t *testing.T) {
	for _, k := range daraja.Kinds {
		if got := Path(k.Path()); got != k.Path() {
			t.Errorf("Path(%q) = %q", k.Path(), got)
		}
	}
}

func TestPathCleanDoesNotAllocate(t *testing.T) {
	p := "/b2c/result"
	if n := testing.AllocsPerRun(100, func() { _ = Path(p) }); n != 0 {
		t.Errorf("%v allocations for a clean path", n)
	}
}

// FuzzPath: whatever the input, the output holds no run of MinRun token
// characters (so none of the input's), no byte outside printable ASCII, at
// most MaxPath bytes; a path that needed nothing comes out unchanged; and
// the output is what the public side's former safePath gave.
func FuzzPath(f *testing.F) {
	for _, s := range []string{"/stk/callback#t=" + tok, "/" + tok + "/x", "/a\x00b", "/" + strings.Repeat("a/", 100), "/v1/tokens/tok_6v3r7ypjmnwrytos"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		out := Path(p)
		if len(out) > MaxPath {
			t.Fatalf("%d bytes", len(out))
		}
		run := 0
		for i := 0; i < len(out); i++ {
			c := out[i]
			if c < 0x20 || c > 0x7e {
				t.Fatalf("%q holds byte %#x", out, c)
			}
			if tokenChar(c) {
				if run++; run >= MinRun {
					t.Fatalf("%q keeps a token-like run", out)
				}
			} else {
				run = 0
			}
		}
		if clean(p) && out != p {
			t.Fatalf("clean %q changed to %q", p, out)
		}
		if want := formerSafePath(p); out != want {
			t.Fatalf("Path(%q) = %q, safePath gave %q", p, out, want)
		}
	})
}

// formerSafePath is proxy.safePath as it was when Path replaced it (its
// pass-through of endpoint paths aside: TestPathKeepsEndpoints covers it).
func formerSafePath(p string) string {
	var b strings.Builder
	run := 0
	flush := func(end int) {
		if run >= 20 {
			b.WriteString("[redacted]")
		} else {
			b.WriteString(p[end-run : end])
		}
		run = 0
	}
	for i := 0; i < len(p) && b.Len() < 128; i++ {
		c := p[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' {
			run++
			continue
		}
		flush(i)
		if c < 0x20 || c > 0x7e {
			c = '?'
		}
		b.WriteByte(c)
	}
	if run > 0 {
		flush(len(p))
	}
	s := b.String()
	if len(s) > 128 {
		s = s[:128]
	}
	return s
}

func BenchmarkPath(b *testing.B) {
	for _, p := range []string{"/stk/callback", "/" + tok + "/x"} {
		b.Run(p[:4], func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = Path(p)
			}
		})
	}
}
