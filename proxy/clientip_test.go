package proxy

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/daraja-edge/daraja-edge/allowlist"
	"github.com/daraja-edge/daraja-edge/daraja"
)

func mustList(t testing.TB, cidrs ...string) *allowlist.List {
	t.Helper()
	l, err := allowlist.New(nil, cidrs)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestClientIPResolve(t *testing.T) {
	r := NewClientIP(mustList(t, "10.0.0.0/8", "fd00::/8"))
	tests := []struct {
		name string
		peer string
		xff  []string
		want string
		err  bool
	}{
		{"untrusted peer, no header", "196.201.214.200", nil, "196.201.214.200", false},
		{"untrusted peer ignores forged header", "203.0.113.9", []string{"196.201.214.200"}, "203.0.113.9", false},
		{"trusted peer, one hop", "10.0.0.1", []string{"196.201.214.200"}, "196.201.214.200", false},
		{"rightmost untrusted wins over forged left", "10.0.0.1", []string{"196.201.214.200, 203.0.113.9"}, "203.0.113.9", false},
		{"trusted chain skipped", "10.0.0.1", []string{"203.0.113.9, 196.201.214.200, 10.1.1.1, 10.2.2.2"}, "196.201.214.200", false},
		{"several header lines", "10.0.0.1", []string{"203.0.113.9", "196.201.214.200, 10.9.9.9"}, "196.201.214.200", false},
		{"all trusted: leftmost", "10.0.0.1", []string{"10.3.3.3, 10.2.2.2"}, "10.3.3.3", false},
		{"trusted peer, no header", "10.0.0.1", nil, "10.0.0.1", false},
		{"ipv4-mapped peer", "::ffff:10.0.0.1", []string{"::ffff:196.201.214.200"}, "196.201.214.200", false},
		{"ipv6 proxy and client", "fd00::1", []string{"2001:db8::5"}, "2001:db8::5", false},
		{"entry with port", "10.0.0.1", []string{"196.201.214.200:4431"}, "196.201.214.200", false},
		{"bracketed v6 with port", "10.0.0.1", []string{"[2001:db8::5]:80"}, "2001:db8::5", false},
		{"bracketed v6", "10.0.0.1", []string{"[2001:db8::5]"}, "2001:db8::5", false},
		{"empty entries skipped", "10.0.0.1", []string{" , 196.201.214.200 , "}, "196.201.214.200", false},
		{"garbage from trusted proxy", "10.0.0.1", []string{"196.201.214.200, unknown"}, "", true},
		{"zone refused", "10.0.0.1", []string{"fe80::1%eth0"}, "", true},
		{"too many hops", "10.0.0.1", []string{strings.Repeat("10.0.0.2,", 40)}, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := r.Resolve(netip.MustParseAddr(tt.peer), tt.xff)
			if tt.err {
				if err == nil {
					t.Fatalf("got %s, want error", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != netip.MustParseAddr(tt.want) {
				t.Errorf("got %s, want %s", got, tt.want)
			}
		})
	}
}

func TestClientIPNoTrustedProxies(t *testing.T) {
	var r *ClientIP
	got, err := r.Resolve(netip.MustParseAddr("::ffff:127.0.0.3"), []string{"196.201.214.200"})
	if err != nil || got != netip.MustParseAddr("127.0.0.3") {
		t.Fatalf("got %s, %v", got, err)
	}
}

func FuzzClientIP(f *testing.F) {
	f.Add("10.0.0.1", "196.201.214.200, 203.0.113.9")
	f.Add("::ffff:10.0.0.1", "[2001:db8::5]:80,10.0.0.2")
	f.Add("10.0.0.1", ",,,")
	r := NewClientIP(mustList(f, "10.0.0.0/8"))
	f.Fuzz(func(t *testing.T, peer, xff string) {
		p, err := netip.ParseAddr(peer)
		if err != nil {
			return
		}
		got, err := r.Resolve(p, []string{xff})
		if err != nil {
			return
		}
		if !got.IsValid() || got.Is4In6() || got.Zone() != "" {
			t.Fatalf("resolved to unusable %v", got)
		}
		// An untrusted peer is always its own client.
		if !r.trusted.Contains(p) && got != p.Unmap().WithZone("") {
			t.Fatalf("untrusted peer %s resolved to %s", p, got)
		}
	})
}

func BenchmarkClientIP(b *testing.B) {
	r := NewClientIP(mustList(b, "10.0.0.0/8"))
	peer := netip.MustParseAddr("10.0.0.1")
	xff := []string{"203.0.113.9, 196.201.214.200"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Resolve(peer, xff); err != nil {
			b.Fatal(err)
		}
	}
}

func TestSafePath(t *testing.T) {
	tok := "wEtZr0EY5mOTXc8pwaAKFPayvHo6hMKAUPV774TE"
	for in, want := range map[string]string{
		"/stk/callback":                 "/stk/callback",
		"/wp-login.php":                 "/wp-login.php",
		"/stk/callback#t=" + tok:        "/stk/callback#t=[redacted]",
		"/" + tok + "/x":                "/[redacted]/x",
		"/a\x00b":                       "/a?b",
		"/" + strings.Repeat("a/", 100): strings.Repeat("/a", 64),
	} {
		if got := safePath(in); got != want {
			t.Errorf("safePath(%q) = %q, want %q", in, got, want)
		}
	}
}

func FuzzSafePath(f *testing.F) {
	f.Add("/stk/callback#t=wEtZr0EY5mOTXc8pwaAKFPayvHo6hMKAUPV774TE")
	f.Fuzz(func(t *testing.T, p string) {
		out := safePath(p)
		if len(out) > 128 && out != p {
			t.Fatalf("%d bytes", len(out))
		}
		if _, ok := daraja.KindForPath(p); !ok {
			run := 0
			for i := 0; i < len(out); i++ {
				c := out[i]
				if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' {
					if run++; run >= 20 {
						t.Fatalf("%q keeps a token-like run", out)
					}
				} else {
					run = 0
				}
			}
		}
	})
}

func FuzzSingleQueryValue(f *testing.F) {
	f.Add("t=abc", "t")
	f.Add("t=a&t=b", "t")
	f.Add("x=1&t=%41", "t")
	f.Fuzz(func(t *testing.T, q, key string) {
		v, ok := singleQueryValue(q, key)
		if !ok {
			return
		}
		if v == "" || strings.ContainsAny(v, "%+&") {
			t.Fatalf("singleQueryValue(%q, %q) = %q", q, key, v)
		}
		if strings.Count("&"+q, "&"+key+"=") != 1 {
			t.Fatalf("%q holds key %q more or less than once, yet %q was returned", q, key, v)
		}
	})
}
