package forward

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"syscall"
	"time"

	"github.com/daraja-edge/daraja-edge/config"
)

// ErrRefusedAddress is a connection refused by the egress rules: a
// link-local or cloud-metadata address, whatever DNS said.
var ErrRefusedAddress = errors.New("forward: destination address refused (link-local or cloud metadata)")

// metadata are cloud instance-metadata addresses outside link-local.
var metadata = []netip.Addr{
	netip.MustParseAddr("fd00:ec2::254"),   // AWS IMDS over IPv6
	netip.MustParseAddr("100.100.100.200"), // Alibaba Cloud
	netip.MustParseAddr("168.63.129.16"),   // Azure WireServer
}

// refusedAddr reports whether a connection to a must not be made.
// Loopback and private addresses are allowed (SPEC): the app often runs
// next to the edge.
func refusedAddr(a netip.Addr) bool {
	a = a.Unmap()
	if a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() || a.IsUnspecified() || a.IsMulticast() {
		return true
	}
	for _, m := range metadata {
		if a == m {
			return true
		}
	}
	return false
}

// dialControl runs on the resolved address of every connection, so a DNS
// answer cannot steer the forwarder to a refused address.
func dialControl(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("forward: dial %q: %w", address, ErrRefusedAddress)
	}
	if refusedAddr(ap.Addr()) {
		return fmt.Errorf("forward: dial %s: %w", ap.Addr(), ErrRefusedAddress)
	}
	return nil
}

// newClient is the HTTP client of one destination: no redirects, no
// proxy from the environment, the egress rules at connect time, the
// destination's trust and client certificate, HTTP/2 only when asked.
func newClient(d config.Destination) (*http.Client, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if d.TLS.CAFile != "" {
		pem, err := os.ReadFile(d.TLS.CAFile)
		if err != nil {
			return nil, fmt.Errorf("forward: destination %s: tls.ca_file: %w", d.Name, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("forward: destination %s: tls.ca_file holds no certificate", d.Name)
		}
		tc.RootCAs = pool
	}
	if d.TLS.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(d.TLS.CertFile, d.TLS.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("forward: destination %s: client certificate: %w", d.Name, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	dialer := &net.Dialer{Timeout: d.Timeout, KeepAlive: 30 * time.Second, Control: dialControl}
	tr := &http.Transport{
		Proxy:                 nil,
		DialContext:           dialer.DialContext,
		TLSClientConfig:       tc,
		TLSHandshakeTimeout:   d.Timeout,
		ResponseHeaderTimeout: d.Timeout,
		MaxIdleConnsPerHost:   d.Concurrency,
		IdleConnTimeout:       90 * time.Second,
		ForceAttemptHTTP2:     d.HTTP2,
	}
	if !d.HTTP2 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
		tc.NextProtos = []string{"http/1.1"}
	}
	return &http.Client{
		Transport: tr,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse // a 3xx is an answer, and not a 2xx
		},
	}, nil
}
