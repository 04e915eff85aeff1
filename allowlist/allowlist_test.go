package allowlist

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
)

func TestContains(t *testing.T) {
	l, err := New([]string{"safaricom"}, []string{"127.0.0.2", "10.0.0.0/8", "2001:db8::/32", "::ffff:192.0.2.0/120", "172.16.0.1/12"})
	if err != nil {
		t.Fatal(err)
	}
	tests := map[string]bool{
		"196.201.214.200":       true,
		"196.201.214.201":       false,
		"127.0.0.2":             true,
		"127.0.0.3":             false,
		"10.255.255.255":        true,
		"::ffff:10.1.2.3":       true, // IPv4-mapped looks up as IPv4
		"2001:db8::1":           true,
		"2001:db9::1":           false,
		"192.0.2.7":             true,
		"172.31.255.255":        true, // host bits of 172.16.0.1/12 cleared
		"::1":                   false,
		"::ffff:196.201.212.69": true,
		"fe80::1%eth0":          false,
		"::ffff:196.201.212.70": false,
		"196.201.212.69":        true,
	}
	for s, want := range tests {
		a, err := netip.ParseAddr(s)
		if err != nil {
			t.Fatal(err)
		}
		if got := l.Contains(a); got != want {
			t.Errorf("Contains(%s) = %v, want %v", s, got, want)
		}
	}
	if l.Contains(netip.Addr{}) {
		t.Error("the zero address is contained")
	}
	var nilList *List
	if nilList.Contains(netip.MustParseAddr("127.0.0.1")) {
		t.Error("a nil list contains something")
	}
}

func TestNewErrors(t *testing.T) {
	for _, tc := range []struct {
		presets, cidrs []string
	}{
		{[]string{"airtel"}, nil},
		{nil, []string{"10.0.0.0/33"}},
		{nil, []string{"not-an-ip"}},
		{nil, []string{"::ffff:1.2.3.4/64"}},
		{nil, []string{"fe80::1%eth0"}},
	} {
		if _, err := New(tc.presets, tc.cidrs); err == nil {
			t.Errorf("New(%q, %q) accepted", tc.presets, tc.cidrs)
		}
	}
}

func FuzzParsePrefix(f *testing.F) {
	for _, s := range []string{"10.0.0.0/8", "::ffff:1.2.3.4/120", "2001:db8::/32", "1.2.3.4", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePrefix(s)
		if err != nil {
			return
		}
		if !p.IsValid() || p != p.Masked() || p.Addr().Is4In6() {
			t.Fatalf("ParsePrefix(%q) = %v", s, p)
		}
		l := FromPrefixes([]netip.Prefix{p})
		if !l.Contains(p.Addr()) {
			t.Fatalf("%v does not contain its own address", p)
		}
	})
}

// randomList is the safaricom preset plus n random IPv4 and IPv6 ranges,
// and addresses to probe.
func randomList(n int) (*List, []netip.Addr) {
	l, _, probes := randomListPrefixes(n)
	return l, probes
}

func randomListPrefixes(n int) (*List, []netip.Prefix, []netip.Addr) {
	r := rand.New(rand.NewPCG(1, 2))
	var cidrs []string
	var probes []netip.Addr
	for i := range n {
		if i%2 == 0 {
			a := netip.AddrFrom4([4]byte{byte(r.IntN(256)), byte(r.IntN(256)), byte(r.IntN(256)), byte(r.IntN(256))})
			cidrs = append(cidrs, fmt.Sprintf("%s/%d", a, 8+r.IntN(25)))
			probes = append(probes, a)
		} else {
			var b [16]byte
			for j := range b {
				b[j] = byte(r.IntN(256))
			}
			a := netip.AddrFrom16(b)
			cidrs = append(cidrs, fmt.Sprintf("%s/%d", a, 16+r.IntN(113)))
			probes = append(probes, a)
		}
	}
	l, err := New([]string{"safaricom"}, cidrs)
	if err != nil {
		panic(err)
	}
	var prefixes []netip.Prefix
	for _, c := range append(append([]string(nil), presets["safaricom"]...), cidrs...) {
		p, _ := ParsePrefix(c)
		prefixes = append(prefixes, p)
	}
	return l, prefixes, probes
}

func BenchmarkContains(b *testing.B) {
	l, probes := randomList(10000)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		l.Contains(probes[i%len(probes)])
		i++
	}
}

func ExampleList_Contains() {
	l, err := New([]string{"safaricom"}, []string{"10.20.0.0/16"})
	if err != nil {
		panic(err)
	}
	fmt.Println(l.Contains(netip.MustParseAddr("196.201.214.200")))
	fmt.Println(l.Contains(netip.MustParseAddr("10.20.3.4")))
	fmt.Println(l.Contains(netip.MustParseAddr("203.0.113.9")))
	// Output:
	// true
	// true
	// false
}
