// Package allowlist decides whether a source address may deliver callbacks:
// built-in presets plus configured IPv4/IPv6 CIDRs, looked up in a
// path-compressed trie (github.com/yl2chen/cidranger).
package allowlist

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/yl2chen/cidranger"
)

// List is an immutable set of address ranges. It is safe for concurrent
// use; a reload builds a new List and swaps it in.
//
// IPv4 and IPv6 ranges live in separate tries, so an IPv6 range never
// admits an IPv4 client (::/0 does not admit 192.0.2.1); an IPv4-mapped
// range (::ffff:192.0.2.0/120) is stored as the IPv4 range it names, and an
// IPv4-mapped address is looked up as IPv4.
//
// cidranger works on net.IP; that stays inside this file, so the trie can
// be swapped without touching callers.
type List struct {
	ranger cidranger.Ranger // nil: empty
	size   int
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
	return FromPrefixes(prefixes)
}

// normalize clears host bits and turns an IPv4-mapped range into the IPv4
// range it names. Once masked, a prefix whose address is IPv4-mapped is /96
// or longer: shorter ones clear part of the ::ffff marker.
func normalize(p netip.Prefix) netip.Prefix {
	p = p.Masked()
	if a := p.Addr(); a.Is4In6() {
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p
}

// FromPrefixes builds a List from parsed prefixes; invalid (zero) prefixes
// are skipped.
func FromPrefixes(prefixes []netip.Prefix) (*List, error) {
	l := &List{size: len(prefixes)}
	for _, p := range prefixes {
		if !p.IsValid() {
			continue
		}
		p = normalize(p)
		if l.ranger == nil {
			l.ranger = cidranger.NewPCTrieRanger()
		}
		// A 4-byte IP with a 32-bit mask for IPv4 and 16 bytes for IPv6:
		// cidranger picks the trie by net.IP.To4, which after normalize is
		// non-nil for IPv4 ranges only.
		n := net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
		if err := l.ranger.Insert(cidranger.NewBasicRangerEntry(n)); err != nil {
			return nil, fmt.Errorf("allowlist: insert %s: %w", p, err)
		}
	}
	return l, nil
}

// Len is the number of ranges in the list.
func (l *List) Len() int {
	if l == nil {
		return 0
	}
	return l.size
}

// ipBufs hold the net.IP handed to cidranger: passed through its Ranger
// interface it escapes, so a buffer per lookup would be a heap allocation.
var ipBufs = sync.Pool{New: func() any { return new([net.IPv6len]byte) }}

// Contains reports whether addr lies in one of the ranges. IPv4-mapped IPv6
// addresses are looked up as IPv4; a zone is ignored. An invalid address is
// never contained.
func (l *List) Contains(addr netip.Addr) bool {
	if l == nil || l.ranger == nil || !addr.IsValid() {
		return false
	}
	addr = addr.Unmap()
	buf := ipBufs.Get().(*[net.IPv6len]byte)
	var ip net.IP
	if addr.Is4() {
		*(*[net.IPv4len]byte)(buf[:net.IPv4len]) = addr.As4()
		ip = buf[:net.IPv4len]
	} else {
		*buf = addr.As16()
		ip = buf[:]
	}
	ok, err := l.ranger.Contains(ip)
	ipBufs.Put(buf)
	return err == nil && ok
}
