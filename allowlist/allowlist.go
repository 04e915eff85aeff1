// Package allowlist decides whether a source address may deliver callbacks:
// built-in presets plus configured IPv4/IPv6 CIDRs, looked up in a trie.
package allowlist

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/yl2chen/cidranger"
)

// List is an immutable set of address ranges. It is safe for concurrent use;
// a reload builds a new List and swaps it in.
type List struct {
	ranger cidranger.Ranger
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
	return FromPrefixes(prefixes), nil
}

// FromPrefixes builds a List from parsed prefixes.
func FromPrefixes(prefixes []netip.Prefix) *List {
	r := cidranger.NewPCTrieRanger()
	for _, p := range prefixes {
		p = p.Masked()
		n := net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
		// Insert only fails on a malformed IPNet, which netip rules out.
		_ = r.Insert(cidranger.NewBasicRangerEntry(n))
	}
	return &List{ranger: r, size: len(prefixes)}
}

// Len is the number of ranges in the list.
func (l *List) Len() int { return l.size }

// Contains reports whether addr lies in one of the ranges. IPv4-mapped IPv6
// addresses are looked up as IPv4. An invalid address is never contained.
func (l *List) Contains(addr netip.Addr) bool {
	if l == nil || !addr.IsValid() {
		return false
	}
	addr = addr.Unmap().WithZone("")
	var buf [16]byte
	var ip net.IP
	if addr.Is4() {
		b := addr.As4()
		copy(buf[:4], b[:])
		ip = buf[:4]
	} else {
		buf = addr.As16()
		ip = buf[:]
	}
	ok, err := l.ranger.Contains(ip)
	return err == nil && ok
}
