// Package allowlist decides whether a source address may deliver callbacks:
// built-in presets plus configured IPv4/IPv6 CIDRs, looked up without
// allocating.
package allowlist

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// List is an immutable set of address ranges, kept as sorted, merged
// intervals of 128-bit addresses (IPv4 as IPv4-mapped IPv6, in a table of
// its own so an IPv6 range never admits an IPv4 client), so a lookup is a
// binary search with no allocation. It is safe for concurrent use; a
// reload builds a new List and swaps it in.
type List struct {
	v4, v6 []interval
	size   int
}

// u128 is an IPv6 address (or IPv4-mapped IPv4) as a number.
type u128 struct{ hi, lo uint64 }

func (a u128) less(b u128) bool { return a.hi < b.hi || (a.hi == b.hi && a.lo < b.lo) }

func (a u128) next() (u128, bool) {
	if a.lo == ^uint64(0) {
		if a.hi == ^uint64(0) {
			return a, false
		}
		return u128{a.hi + 1, 0}, true
	}
	return u128{a.hi, a.lo + 1}, true
}

type interval struct{ first, last u128 }

func toU128(a netip.Addr) u128 {
	b := a.As16() // IPv4 becomes ::ffff:a.b.c.d
	return u128{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
}

// span is the first and last address of a prefix.
func span(p netip.Prefix) interval {
	bits := p.Bits()
	if p.Addr().Is4() {
		bits += 96
	}
	first := toU128(p.Addr())
	last := first
	switch {
	case bits == 0:
		last = u128{^uint64(0), ^uint64(0)}
	case bits <= 64:
		last.hi |= ^uint64(0) >> bits
		last.lo = ^uint64(0)
	case bits < 128:
		last.lo |= ^uint64(0) >> (bits - 64)
	}
	return interval{first, last}
}

// PresetNames lists the built-in presets, sorted.
func PresetNames() []string {
	names := make([]string, 0, len(presets))
	for n := range presets {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// ParsePrefix parses a CIDR, or a bare address as a single-host range.
// IPv4-mapped IPv6 ranges are turned into their IPv4 form; host bits are
// cleared.
func ParsePrefix(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("%q is not a CIDR", s)
		}
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR", s)
	}
	if p.Addr().Is4In6() {
		if p.Bits() < 96 {
			return netip.Prefix{}, fmt.Errorf("%q is not a CIDR: an IPv4-mapped range needs /96 or longer", s)
		}
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p.Masked(), nil
}

// New builds a List from preset names and CIDR strings.
func New(presetNames, cidrs []string) (*List, error) {
	var prefixes []netip.Prefix
	for _, name := range presetNames {
		entries, ok := presets[name]
		if !ok {
			return nil, fmt.Errorf("allowlist: unknown preset %q (known: %s)", name, strings.Join(PresetNames(), ", "))
		}
		for _, e := range entries {
			p, err := ParsePrefix(e)
			if err != nil {
				return nil, fmt.Errorf("allowlist: preset %s: %w", name, err)
			}
			prefixes = append(prefixes, p)
		}
	}
	for i, c := range cidrs {
		p, err := ParsePrefix(c)
		if err != nil {
			return nil, fmt.Errorf("allowlist: cidrs[%d]: %w", i, err)
		}
		prefixes = append(prefixes, p)
	}
	return FromPrefixes(prefixes), nil
}

// FromPrefixes builds a List from parsed prefixes.
func FromPrefixes(prefixes []netip.Prefix) *List {
	var v4, v6 []interval
	for _, p := range prefixes {
		switch {
		case !p.IsValid():
		case p.Addr().Is4():
			v4 = append(v4, span(p.Masked()))
		default:
			v6 = append(v6, span(p.Masked()))
		}
	}
	return &List{v4: merge(v4), v6: merge(v6), size: len(prefixes)}
}

// merge sorts intervals and joins overlapping or adjacent ones.
func merge(ivs []interval) []interval {
	slices.SortFunc(ivs, func(a, b interval) int {
		switch {
		case a.first.less(b.first):
			return -1
		case b.first.less(a.first):
			return 1
		}
		return 0
	})
	var merged []interval
	for _, iv := range ivs {
		if n := len(merged); n > 0 {
			last := &merged[n-1]
			if after, ok := last.last.next(); !ok || !after.less(iv.first) { // overlapping or adjacent
				if last.last.less(iv.last) {
					last.last = iv.last
				}
				continue
			}
		}
		merged = append(merged, iv)
	}
	return merged
}

// Len is the number of ranges in the list.
func (l *List) Len() int { return l.size }

// Contains reports whether addr lies in one of the ranges. IPv4-mapped IPv6
// addresses are looked up as IPv4. An invalid address is never contained.
func (l *List) Contains(addr netip.Addr) bool {
	if l == nil || !addr.IsValid() {
		return false
	}
	addr = addr.Unmap()
	ranges := l.v6
	if addr.Is4() {
		ranges = l.v4
	}
	x := toU128(addr)
	// The last interval starting at or before x is the only candidate.
	lo, hi := 0, len(ranges)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if x.less(ranges[m].first) {
			hi = m
		} else {
			lo = m + 1
		}
	}
	return lo > 0 && !ranges[lo-1].last.less(x)
}
