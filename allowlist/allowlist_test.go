package allowlist

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
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
		"fe80::1":               false,
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
		l, err := FromPrefixes([]netip.Prefix{p})
		if err != nil {
			t.Fatalf("FromPrefixes(%v): %v", p, err)
		}
		if !l.Contains(p.Addr()) {
			t.Fatalf("%v does not contain its own address", p)
		}
		// Its last address too, unless that is IPv4-mapped (an IPv4
		// client, which no IPv6 range admits): as a linear scan says.
		if last := lastAddr(p); l.Contains(last) != linearScan([]netip.Prefix{p}, last) {
			t.Fatalf("%v: Contains(%v) = %v, a linear scan disagrees", p, last, l.Contains(last))
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
	for _, c := range append(slices.Clone(presets["safaricom"]), cidrs...) {
		p, _ := ParsePrefix(c)
		prefixes = append(prefixes, p)
	}
	return l, prefixes, probes
}

// TestFamilies: an IPv6 range never admits an IPv4 client, an IPv4-mapped
// range handed to FromPrefixes admits the IPv4 addresses it names, and a
// zone does not change the answer.
func TestFamilies(t *testing.T) {
	l, err := FromPrefixes([]netip.Prefix{
		netip.MustParsePrefix("::/0"),
		netip.MustParsePrefix("::ffff:198.51.100.0/120"),
		netip.MustParsePrefix("fe80::/10"),
		{}, // skipped
	})
	if err != nil {
		t.Fatal(err)
	}
	for s, want := range map[string]bool{
		"192.0.2.1":           false,
		"::ffff:192.0.2.1":    false,
		"198.51.100.7":        true,
		"::ffff:198.51.100.7": true,
		"198.51.101.7":        false,
		"2001:db8::1":         true,
		"fe80::1%eth0":        true,
	} {
		if got := l.Contains(netip.MustParseAddr(s)); got != want {
			t.Errorf("Contains(%s) = %v, want %v", s, got, want)
		}
	}
	if l.Len() != 4 {
		t.Errorf("Len() = %d, want 4", l.Len())
	}
	empty, err := New(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if empty.Len() != 0 || empty.Contains(netip.MustParseAddr("0.0.0.0")) || empty.Contains(netip.MustParseAddr("::")) {
		t.Error("an empty list contains something")
	}
}

// TestContainsAllocations: the net.IP handed to cidranger comes from a
// pool; what is left is the one small number cidranger builds per lookup
// (rnet.NewNetworkNumber), which its API gives no way around.
func TestContainsAllocations(t *testing.T) {
	l, probes := randomList(1000)
	i := 0
	allocs := testing.AllocsPerRun(1000, func() {
		l.Contains(probes[i%len(probes)])
		i++
	})
	if allocs > 1 {
		t.Errorf("Contains allocates %.1f times per lookup, want at most 1", allocs)
	}
}

// TestConcurrentContains shares one List (and the buffer pool) between
// goroutines; run it with -race.
func TestConcurrentContains(t *testing.T) {
	l, prefixes, probes := randomListPrefixes(500)
	want := make([]bool, len(probes))
	for i, a := range probes {
		want[i] = linearScan(prefixes, a)
	}
	done := make(chan error, 4)
	for g := range 4 {
		go func() {
			for n := range 2000 {
				i := (n*7 + g) % len(probes)
				if got := l.Contains(probes[i]); got != want[i] {
					done <- fmt.Errorf("Contains(%s) = %v, want %v", probes[i], got, want[i])
					return
				}
			}
			done <- nil
		}()
	}
	for range 4 {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
}

// BenchmarkContains: the safaricom preset plus 10,000 random IPv4 and IPv6
// ranges, probed with addresses inside them.
func BenchmarkContains(b *testing.B) {
	l, probes := randomList(10000)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		l.Contains(probes[i%len(probes)])
		i++
	}
}

// BenchmarkContainsSafaricom: the preset alone, probed with a listed
// address, an unlisted IPv4, a listed IPv4-mapped and an IPv6 address.
func BenchmarkContainsSafaricom(b *testing.B) {
	l, err := New([]string{"safaricom"}, nil)
	if err != nil {
		b.Fatal(err)
	}
	probes := []netip.Addr{
		netip.MustParseAddr("196.201.214.200"), netip.MustParseAddr("203.0.113.9"),
		netip.MustParseAddr("::ffff:196.201.212.69"), netip.MustParseAddr("2001:db8::1"),
	}
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
