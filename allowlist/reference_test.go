package allowlist

import (
	"math/rand/v2"
	"net/netip"
	"testing"
)

// linearScan is the reference List must agree with on every address: each
// range checked in turn with netip.Prefix.Contains, IPv4-mapped ranges and
// addresses taken as IPv4, zones ignored.
func linearScan(prefixes []netip.Prefix, a netip.Addr) bool {
	a = a.Unmap().WithZone("")
	for _, p := range prefixes {
		if !p.IsValid() {
			continue
		}
		p = p.Masked()
		if p.Addr().Is4In6() {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// lastAddr is the highest address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func randomPrefixes(r *rand.Rand, n int) []netip.Prefix {
	var out []netip.Prefix
	for range n {
		var a netip.Addr
		var bits int
		switch r.IntN(5) {
		case 0, 1:
			a = netip.AddrFrom4([4]byte{byte(r.IntN(256)), byte(r.IntN(256)), byte(r.IntN(256)), byte(r.IntN(256))})
			bits = r.IntN(33)
		case 2: // IPv4-mapped, as FromPrefixes may be handed one
			a = netip.AddrFrom16(netip.AddrFrom4([4]byte{byte(r.IntN(256)), byte(r.IntN(256)), byte(r.IntN(256)), byte(r.IntN(256))}).As16())
			bits = 80 + r.IntN(49)
		default:
			var b [16]byte
			for i := range b {
				b[i] = byte(r.IntN(256))
			}
			a = netip.AddrFrom16(b)
			bits = r.IntN(129)
		}
		out = append(out, netip.PrefixFrom(a, bits).Masked())
	}
	return out
}

// probes are the addresses at and just outside each range's ends, in both
// IPv4 and IPv4-mapped form.
func probes(prefixes []netip.Prefix) []netip.Addr {
	var out []netip.Addr
	add := func(a netip.Addr) {
		if !a.IsValid() {
			return
		}
		out = append(out, a)
		if a.Is4() {
			out = append(out, netip.AddrFrom16(a.As16()))
		}
	}
	for _, p := range prefixes {
		first, last := p.Masked().Addr(), lastAddr(p)
		add(first)
		add(first.Prev())
		add(last)
		add(last.Next())
	}
	return out
}

func TestAgreesWithLinearScan(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	for round := range 50 {
		prefixes := randomPrefixes(r, 1+r.IntN(200))
		l, err := FromPrefixes(prefixes)
		if err != nil {
			t.Fatal(err)
		}
		check := func(a netip.Addr) {
			if got, want := l.Contains(a), linearScan(prefixes, a); got != want {
				t.Fatalf("round %d: Contains(%s) = %v, a linear scan says %v", round, a, got, want)
			}
		}
		for _, a := range probes(prefixes) {
			check(a)
		}
		for _, p := range randomPrefixes(r, 500) {
			check(p.Addr())
		}
	}
}

func FuzzAgreesWithLinearScan(f *testing.F) {
	f.Add(uint64(1), uint8(10), []byte{196, 201, 214, 200})
	f.Add(uint64(2), uint8(1), []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3})
	f.Fuzz(func(t *testing.T, seed uint64, n uint8, probe []byte) {
		prefixes := randomPrefixes(rand.New(rand.NewPCG(seed, 1)), int(n)+1)
		a, ok := netip.AddrFromSlice(probe)
		if !ok {
			return
		}
		l, err := FromPrefixes(prefixes)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range append(probes(prefixes), a) {
			if got, want := l.Contains(a), linearScan(prefixes, a); got != want {
				t.Fatalf("Contains(%s) = %v, a linear scan says %v", a, got, want)
			}
		}
	})
}
