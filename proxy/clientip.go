package proxy

import (
	"errors"
	"net/netip"
	"strings"

	"github.com/daraja-edge/daraja-edge/allowlist"
)

// ErrBadForwardedFor is returned when a trusted proxy sent an
// X-Forwarded-For entry that is not an address.
var ErrBadForwardedFor = errors.New("malformed X-Forwarded-For from a trusted proxy")

// maxForwardedEntries bounds how far right to left X-Forwarded-For is read.
const maxForwardedEntries = 32

// ClientIP resolves the address a request really came from. The TCP peer
// is the client unless it is a trusted proxy; then X-Forwarded-For is read
// from right to left and the first entry that is not a trusted proxy is the
// client (what a proxy we trust saw). Entries left of it were written by
// whoever sent the request and are never believed.
type ClientIP struct {
	trusted *allowlist.List
}

// NewClientIP builds a resolver trusting the given proxy ranges (nil or
// empty: trust none, the peer is always the client).
func NewClientIP(trusted *allowlist.List) *ClientIP { return &ClientIP{trusted: trusted} }

// Trusts reports whether addr is a trusted proxy.
func (c *ClientIP) Trusts(addr netip.Addr) bool {
	return c != nil && c.trusted != nil && c.trusted.Contains(addr)
}

// Resolve returns the client address for a request from peer carrying the
// given X-Forwarded-For header values (in the order they appeared).
func (c *ClientIP) Resolve(peer netip.Addr, forwardedFor []string) (netip.Addr, error) {
	peer = peer.Unmap().WithZone("")
	if c == nil || c.trusted == nil || c.trusted.Len() == 0 || !c.trusted.Contains(peer) {
		return peer, nil
	}
	client := peer
	seen := 0
	for i := len(forwardedFor) - 1; i >= 0; i-- {
		rest := forwardedFor[i]
		for rest != "" {
			var entry string
			if j := strings.LastIndexByte(rest, ','); j >= 0 {
				entry, rest = rest[j+1:], rest[:j]
			} else {
				entry, rest = rest, ""
			}
			entry = strings.TrimSpace(entry)
			if entry == "" {
				continue
			}
			if seen++; seen > maxForwardedEntries {
				return netip.Addr{}, ErrBadForwardedFor
			}
			addr, ok := parseForwarded(entry)
			if !ok {
				return netip.Addr{}, ErrBadForwardedFor
			}
			client = addr
			if !c.trusted.Contains(addr) {
				return addr, nil
			}
		}
	}
	// Every hop was a trusted proxy: the leftmost one is the client.
	return client, nil
}

// parseForwarded parses one X-Forwarded-For entry: an address, optionally
// with a port ("1.2.3.4:5", "[::1]:5") or in brackets ("[::1]").
func parseForwarded(s string) (netip.Addr, bool) {
	if a, err := netip.ParseAddr(s); err == nil && a.Zone() == "" {
		return a.Unmap(), true
	}
	if ap, err := netip.ParseAddrPort(s); err == nil && ap.Addr().Zone() == "" {
		return ap.Addr().Unmap(), true
	}
	if len(s) > 2 && s[0] == '[' && s[len(s)-1] == ']' {
		if a, err := netip.ParseAddr(s[1 : len(s)-1]); err == nil && a.Is6() && a.Zone() == "" {
			return a.Unmap(), true
		}
	}
	return netip.Addr{}, false
}
