package edge

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/verify"
)

// TestStrangerRefusedAtAcceptBehindProxies: with trusted proxies (either
// X-Forwarded-For or the PROXY protocol), a TCP peer that is neither a
// trusted proxy nor allowlisted is the client whatever it sends, so it is
// closed at accept, before the TLS handshake, as without proxies (it got a
// full handshake, a log line per failed one and connections it could hold);
// a trusted proxy's connections still reach the handler.
func TestStrangerRefusedAtAcceptBehindProxies(t *testing.T) {
	for name, mutate := range map[string]func(*config.Config){
		"x-forwarded-for": nil, // testConfig trusts proxySrc
		"proxy protocol":  func(c *config.Config) { c.ClientIP.ProxyProtocol = true },
	} {
		t.Run(name, func(t *testing.T) {
			h := start(t, mutate)
			before := h.scrape()[`daraja_edge_rejections_total{reason="source_not_allowed_at_accept"}`]
			d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(strangerSrc)}, Timeout: 5 * time.Second}
			c, err := tls.DialWithDialer(d, "tcp", h.srv.PublicAddr().String(), &tls.Config{RootCAs: h.roots, ServerName: "localhost"})
			if err == nil {
				c.Close()
				t.Fatalf("stranger %s completed a TLS handshake, want the connection closed at accept", strangerSrc)
			}
			if got := h.scrape()[`daraja_edge_rejections_total{reason="source_not_allowed_at_accept"}`]; got != before+1 {
				t.Errorf("refusals at accept %v → %v, want one more (dial: %v)", before, got, err)
			}
			// The trusted proxy's connection is not refused at accept.
			pd := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(proxySrc)}, Timeout: 5 * time.Second}
			pc, err := pd.Dial("tcp", h.srv.PublicAddr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			if mutate != nil {
				hdr, err := (&proxyproto.Header{Version: 2, Command: proxyproto.PROXY, TransportProtocol: proxyproto.TCPv4,
					SourceAddr:      &net.TCPAddr{IP: net.ParseIP(allowedSrc), Port: 40000},
					DestinationAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 8443}}).Format()
				if err != nil {
					t.Fatal(err)
				}
				_, _ = pc.Write(hdr)
			}
			tc := tls.Client(pc, &tls.Config{RootCAs: h.roots, ServerName: "localhost"})
			_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
			if err := tc.Handshake(); err != nil {
				t.Fatalf("the trusted proxy's connection: %v", err)
			}
		})
	}
}

// TestProxyHeaderUnixClientRefused: a PROXY v2 header for a Unix-socket
// client carries a path, not an address; any local process may bind a
// socket to the path "127.0.0.2:1". It was read as the allowlisted
// 127.0.0.2 and the callback stored; now such a header is refused.
func TestProxyHeaderUnixClientRefused(t *testing.T) {
	h := start(t, func(c *config.Config) { c.ClientIP.ProxyProtocol = true })
	tok := h.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379"}).Token
	body := fixture(t, "stk_callback_success.json")
	hdr, err := (&proxyproto.Header{Version: 2, Command: proxyproto.PROXY, TransportProtocol: proxyproto.UnixStream,
		SourceAddr:      &net.UnixAddr{Name: allowedSrc + ":1", Net: "unix"},
		DestinationAddr: &net.UnixAddr{Name: "/run/lb.sock", Net: "unix"}}).Format()
	if err != nil {
		t.Fatal(err)
	}
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(proxySrc)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", h.srv.PublicAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	_, _ = c.Write(hdr)
	tc := tls.Client(c, &tls.Config{RootCAs: h.roots, ServerName: "localhost", NextProtos: []string{"http/1.1"}})
	before := h.count()
	fmt.Fprintf(tc, "POST /stk/callback?t=%s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", tok, len(body), body)
	if resp, err := http.ReadResponse(bufio.NewReader(tc), nil); err == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		if resp.StatusCode == http.StatusOK {
			t.Errorf("a Unix-socket path was taken for the client's address: %d", resp.StatusCode)
		}
	}
	if n := h.count(); n != before {
		t.Errorf("%d messages stored from a Unix-socket client", n-before)
	}
}
