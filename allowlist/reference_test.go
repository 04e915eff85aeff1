package allowlist

import (
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"

	"github.com/yl2chen/cidranger"
)

// reference is the same ranges in cidranger, the field's standard trie:
// List must agree with it on every address.
func reference(prefixes []netip.Prefix) cidranger.Ranger {
	r := cidranger.NewPCTrieRanger()
	for _, p := range prefixes {
		p = p.Masked()
		_ = r.Insert(cidranger.NewBasicRangerEntry(net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}))
	}
	return r
}

func refContains(r cidranger.Ranger, a netip.Addr) bool {
	ok, err := r.Contains(net.IP(a.Unmap().AsSlice()))
	return err == nil && ok
}

func randomPrefixes(r *rand.Rand, n int) []netip.Prefix {
	var out []netip.Prefix
	for range n {
		var a netip.Addr
		var bits int
		if r.IntN(2) == 0 {
			a = netip.AddrFrom4([4]byte{byte(r.IntN(256)), byte(r.IntN(256)), byte(r.IntN(256)), byte(r.IntN(256))})
			bits = r.IntN(33)
		} else {
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

func TestAgreesWithCidranger(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	for round := range 50 {
		prefixes := randomPrefixes(r, 1+r.IntN(200))
		l, ref := FromPrefixes(prefixes), reference(prefixes)
		probe := func(a netip.Addr) {
			if got, want := l.Contains(a), refContains(ref, a); got != want {
				t.Fatalf("round %d: Contains(%s) = %v, cidranger says %v", round, a, got, want)
			}
		}
		for _, p := range prefixes {
			probe(p.Addr())
			s := span(p)
			probe(fromU128(s.last))
			if n, ok := s.last.next(); ok {
				probe(fromU128(n))
			}
		}
		for range 500 {
			probe(randomPrefixes(r, 1)[0].Addr())
		}
	}
}

func fromU128(x u128) netip.Addr {
	var b [16]byte
	for i := range 8 {
		b[i] = byte(x.hi >> (56 - 8*i))
		b[8+i] = byte(x.lo >> (56 - 8*i))
	}
	return netip.AddrFrom16(b).Unmap()
}

func FuzzAgreesWithCidranger(f *testing.F) {
	f.Add(uint64(1), uint8(10), []byte{196, 201, 214, 200})
	f.Fuzz(func(t *testing.T, seed uint64, n uint8, probe []byte) {
		prefixes := randomPrefixes(rand.New(rand.NewPCG(seed, 1)), int(n)+1)
		a, ok := netip.AddrFromSlice(probe)
		if !ok {
			return
		}
		if got, want := FromPrefixes(prefixes).Contains(a), refContains(reference(prefixes), a); got != want {
			t.Fatalf("Contains(%s) = %v, cidranger says %v", a, got, want)
		}
	})
}

// BenchmarkContainsCidranger is the baseline for BenchmarkContains: the
// same 10,000 ranges and probes in cidranger's trie.
func BenchmarkContainsCidranger(b *testing.B) {
	_, prefixes, probes := randomListPrefixes(10000)
	ref := reference(prefixes)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		refContains(ref, probes[i%len(probes)])
		i++
	}
}
