package proxy

import (
	"bufio"
	"bytes"
	"net"
	"testing"

	"github.com/pires/go-proxyproto"
)

// FuzzProxyHeader feeds arbitrary bytes to the PROXY protocol parser the
// public listener uses, and what it accepts to the peer-address parsing
// the allowlist relies on: no panic, and an accepted header yields a
// usable address or a refusal.
func FuzzProxyHeader(f *testing.F) {
	for _, v := range []byte{1, 2} {
		var b bytes.Buffer
		h := proxyproto.HeaderProxyFromAddrs(v, &net.TCPAddr{IP: net.ParseIP("196.201.214.200"), Port: 4000}, &net.TCPAddr{IP: net.ParseIP("10.0.0.1"), Port: 443})
		_, _ = h.WriteTo(&b)
		f.Add(b.Bytes())
	}
	f.Add([]byte("PROXY TCP6 ::ffff:1.2.3.4 ::1 1 2\r\n"))
	f.Add([]byte("PROXY UNKNOWN\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := proxyproto.Read(bufio.NewReader(bytes.NewReader(data)))
		if err != nil || h.SourceAddr == nil {
			return
		}
		a, err := peerAddr(h.SourceAddr.String())
		if err != nil {
			return
		}
		if !a.IsValid() || a.Is4In6() {
			t.Fatalf("peer %q parsed to %v", h.SourceAddr, a)
		}
	})
}
