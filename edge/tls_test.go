package edge

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/daraja-edge/daraja-edge/certs"
	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/verify"
)

// proxyClient sends each request on a new connection from peer, starting
// it with a PROXY header (version 1 or 2) claiming src.
func (h *harness) proxyClient(peer, src string, version byte) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(peer)}, Timeout: 5 * time.Second}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		TLSClientConfig:   &tls.Config{RootCAs: h.roots},
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			hdr := proxyproto.HeaderProxyFromAddrs(version,
				&net.TCPAddr{IP: net.ParseIP(src), Port: 40000}, c.RemoteAddr())
			if _, err := hdr.WriteTo(c); err != nil {
				c.Close()
				return nil, err
			}
			return c, nil
		},
	}}
}

// TestProxyProtocol: a PROXY v1/v2 header from a trusted L4 balancer
// carries the real Daraja address to the allowlist; the same header from an
// untrusted peer is refused and publishes nothing.
func TestProxyProtocol(t *testing.T) {
	h := start(t, func(c *config.Config) {
		c.ClientIP.ProxyProtocol = true
		c.ClientIP.TrustedProxies = []string{proxySrc + "/32"}
	})
	for _, v := range []byte{1, 2} {
		t.Run("v"+string('0'+v), func(t *testing.T) {
			body := strings.Replace(string(fixture(t, "stk_callback_success.json")), "ws_CO_191220191020363925", "ws_CO_proxy_v"+string('0'+v), 1)
			tok := h.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379"}).Token
			url := "https://" + h.srv.PublicAddr().String() + "/stk/callback?t=" + tok

			before := h.count()
			resp, err := h.proxyClient(strangerSrc, "196.201.214.200", v).Post(url, "application/json", strings.NewReader(body))
			if err == nil {
				resp.Body.Close()
				t.Errorf("untrusted peer's PROXY header answered %d", resp.StatusCode)
			}
			if h.count() != before {
				t.Fatal("an untrusted PROXY header published")
			}

			resp, err = h.proxyClient(proxySrc, "196.201.214.200", v).Post(url, "application/json", strings.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("trusted balancer: %d", resp.StatusCode)
			}
			msgs := h.messages()
			if len(msgs) != before+1 || msgs[len(msgs)-1].Header.Get("Daraja-Source-Ip") != "196.201.214.200" {
				t.Fatalf("want one message from the address in the PROXY header: %d → %d, last from %q", before, len(msgs), msgs[len(msgs)-1].Header.Get("Daraja-Source-Ip"))
			}

			// A trusted balancer relaying a source outside the allowlist.
			tok2 := h.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379"}).Token
			resp, err = h.proxyClient(proxySrc, "203.0.113.9", v).Post(strings.Replace(url, tok, tok2, 1), "application/json", strings.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusForbidden || h.count() != before+1 {
				t.Fatalf("relayed stranger: %d", resp.StatusCode)
			}

			// On PROXY connections X-Forwarded-For is never read: the
			// balancer passes the client's own headers through, even when
			// the client claims an address in the trusted range.
			req, _ := http.NewRequest(http.MethodPost, strings.Replace(url, tok, tok2, 1), strings.NewReader(body))
			req.Header.Set("X-Forwarded-For", allowedSrc)
			resp, err = h.proxyClient(proxySrc, proxySrc, v).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusForbidden || h.count() != before+1 {
				t.Fatalf("X-Forwarded-For believed on a PROXY connection: %d", resp.StatusCode)
			}
		})
	}
	t.Run("trusted balancer without a header", func(t *testing.T) {
		// It would pass the balancer's own address off as the client.
		tok := h.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379"}).Token
		before := h.count()
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			DisableKeepAlives: true, TLSClientConfig: &tls.Config{RootCAs: h.roots},
			DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(proxySrc)}}).DialContext,
		}}
		req, _ := http.NewRequest(http.MethodPost, "https://"+h.srv.PublicAddr().String()+"/stk/callback?t="+tok,
			strings.NewReader(string(fixture(t, "stk_callback_success.json"))))
		req.Header.Set("X-Forwarded-For", allowedSrc)
		if resp, err := c.Do(req); err == nil {
			resp.Body.Close()
			t.Fatalf("a trusted peer without a PROXY header was answered %d", resp.StatusCode)
		}
		if h.count() != before {
			t.Fatal("published")
		}
	})
}

func writePair(t *testing.T, dir string, cert tls.Certificate) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	key, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	// Write to temporary names and rename, as certificate tools do.
	for path, block := range map[string]*pem.Block{
		certFile: {Type: "CERTIFICATE", Bytes: cert.Certificate[0]},
		keyFile:  {Type: "PRIVATE KEY", Bytes: key},
	} {
		if err := os.WriteFile(path+".tmp", pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(path+".tmp", path); err != nil {
			t.Fatal(err)
		}
	}
	return certFile, keyFile
}

// TestFilesReload: replaced certificate files are served to the next
// handshake (on change, and on Reload/SIGHUP) while an open keep-alive
// connection keeps working; a bad pair is refused and the current one stays.
func TestFilesReload(t *testing.T) {
	dir := t.TempDir()
	hosts := []string{"localhost", "127.0.0.1"}
	one, _ := certs.SelfSigned(hosts, time.Hour)
	two, _ := certs.SelfSigned(hosts, time.Hour)
	three, _ := certs.SelfSigned(hosts, time.Hour)
	certFile, keyFile := writePair(t, dir, one)
	h := start(t, func(c *config.Config) {
		c.TLS.Mode = config.TLSFiles
		c.TLS.CertFile, c.TLS.KeyFile = certFile, keyFile
	})
	for _, c := range []tls.Certificate{one, two, three} {
		h.roots.AddCert(c.Leaf)
	}
	served := func() *x509.Certificate {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(allowedSrc)}, Timeout: 5 * time.Second}
		conn, err := tls.DialWithDialer(d, "tcp", h.srv.PublicAddr().String(), &tls.Config{RootCAs: h.roots, ServerName: "localhost"})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0]
	}
	if served().SerialNumber.Cmp(one.Leaf.SerialNumber) != 0 {
		t.Fatal("not serving the first certificate")
	}
	// A keep-alive connection, opened on the first certificate.
	tok := h.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.C2BConfirmation}, Shortcode: "600638", Reusable: true}).Token
	conf := fixture(t, "c2b_confirmation.json")
	keepAlive := func() (reused bool, serial string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, "https://"+h.srv.PublicAddr().String()+"/c2b/confirmation?t="+tok, strings.NewReader(string(conf)))
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
			GotConn: func(i httptrace.GotConnInfo) {
				reused = i.Reused
				if tc, ok := i.Conn.(*tls.Conn); ok {
					serial = tc.ConnectionState().PeerCertificates[0].SerialNumber.String()
				}
			},
		}))
		resp, err := h.client(allowedSrc).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("keep-alive request: %d", resp.StatusCode)
		}
		return reused, serial
	}
	keepAlive()

	// Files change: picked up without a signal.
	writePair(t, dir, two)
	for deadline := time.Now().Add(10 * time.Second); served().SerialNumber.Cmp(two.Leaf.SerialNumber) != 0; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("changed files not served within 10s")
		}
	}
	if reused, serial := keepAlive(); !reused || serial != one.Leaf.SerialNumber.String() {
		t.Errorf("keep-alive connection after reload: reused=%v serial=%s", reused, serial)
	}

	// A mismatched pair (cert three, key two) is refused on reload; an
	// allowlist change in the same reload still applies.
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: three.Certificate[0]})
	os.WriteFile(certFile, certPEM, 0o600)
	widened := h.cfg
	widened.Allowlist.CIDRs = append([]string{"127.0.0.9/32"}, h.cfg.Allowlist.CIDRs...)
	err := h.srv.Reload(widened)
	if err == nil || !strings.Contains(err.Error(), certFile) {
		t.Errorf("mismatched pair: %v", err)
	}
	if served().SerialNumber.Cmp(two.Leaf.SerialNumber) != 0 {
		t.Error("a bad pair replaced the served certificate")
	}
	if !h.srv.handler.Policy().Allow.Contains(netip.MustParseAddr("127.0.0.9")) {
		t.Error("a broken certificate file kept the allowlist change out")
	}
	// Fixed and reloaded by SIGHUP's path.
	writePair(t, dir, three)
	if err := h.srv.Reload(h.cfg); err != nil {
		t.Fatal(err)
	}
	if served().SerialNumber.Cmp(three.Leaf.SerialNumber) != 0 {
		t.Error("Reload did not serve the new pair")
	}
}

// TestTLSErrorsNameTheFile: a missing or mismatched pair fails start-up
// with the file named, and nothing listens in plain HTTP.
func TestTLSErrorsNameTheFile(t *testing.T) {
	dir := t.TempDir()
	a, _ := certs.SelfSigned([]string{"localhost"}, time.Hour)
	b, _ := certs.SelfSigned([]string{"localhost"}, time.Hour)
	certFile, keyFile := writePair(t, dir, a)
	otherDir := t.TempDir()
	_, otherKey := writePair(t, otherDir, b)
	for name, pair := range map[string][2]string{
		"mismatched": {certFile, otherKey},
		"missing":    {filepath.Join(dir, "nope.pem"), keyFile},
	} {
		cfg := testConfig(t)
		cfg.TLS.Mode = config.TLSFiles
		cfg.TLS.CertFile, cfg.TLS.KeyFile = pair[0], pair[1]
		srv, err := New(context.Background(), cfg, nil)
		if err == nil {
			srv.Close()
			t.Errorf("%s: started", name)
			continue
		}
		if !strings.Contains(err.Error(), pair[0]) {
			t.Errorf("%s: error does not name %s: %v", name, pair[0], err)
		}
	}
}
