package console

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/verify"
)

// testResult is what "Test a callback URL" found.
type testResult struct {
	URL       string // masked
	Kind      daraja.Kind
	Token     string // verdict
	TokenOK   bool
	ID        string
	Shortcode string
	Expires   string
	Expiring  bool
	Uses      []kindUse // every kind of the token: its callback or waiting
	Host      string    // host:port dialed
	HostWarn  string    // the URL's host is not public_url's
	TLS       string
	TLSOK     bool
	Reach     string
	ReachOK   bool
	Daraja    string
}

func (c *Console) testPage(w http.ResponseWriter, r *http.Request) {
	c.render(w, r, http.StatusOK, "test.html", page{Title: "Test a callback URL", Nav: "test"})
}

const forbidden = `403 {"error":"forbidden"}`

// test checks a callback URL without consuming its token or publishing
// anything to the stream: the token (known, kind, shortcode, expiry, and
// for every kind of it the callback the stream holds or "waiting"), then
// the URL's own host: a TLS handshake (is the certificate one Daraja
// trusts?) and one GET of the path without its query, so the token never
// travels; the edge answers a GET 405 and stores nothing.
func (c *Console) test(w http.ResponseWriter, r *http.Request) {
	raw := strings.TrimSpace(r.PostFormValue("url"))
	res := testResult{URL: c.maskText(raw)}
	p := page{Title: "Test a callback URL", Nav: "test"}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		p.Error = "That is not a callback URL (https://host/path?" + c.o.QueryParam + "=…)."
		c.render(w, r, http.StatusOK, "test.html", p)
		return
	}
	// The checks may take longer than the admin server's write timeout.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(30 * time.Second))
	ctx, cancel := context.WithTimeout(r.Context(), 20*time.Second)
	defer cancel()
	kind, ok := daraja.KindForPath(u.Path)
	res.Kind = kind
	tok := u.Query().Get(c.o.QueryParam)
	switch {
	case !ok:
		res.Token, res.Daraja = "The path "+u.Path+" is not a callback path.", `404 {"error":"not_found"}`
	case tok == "":
		res.Token, res.Daraja = "The URL carries no token (query parameter "+c.o.QueryParam+").", forbidden
	case c.o.Check == nil:
		res.Token = "Token checks are not available."
	default:
		c.checkToken(ctx, tok, kind, &res)
	}
	c.reach(ctx, u, &res)
	switch {
	case !res.TLSOK && res.Daraja != "":
		res.Daraja = "a TLS failure: the call never reaches the edge. With a certificate Daraja trusts: " + res.Daraja
	case !res.TLSOK:
		res.Daraja = "a TLS failure: the call never reaches the edge"
	case !res.ReachOK:
		res.Daraja = "no answer from the edge (see reachability); once it is reached: " + res.Daraja
	}
	p.Data = res
	c.render(w, r, http.StatusOK, "test.html", p)
}

// checkToken fills res with what the token store and the stream say of
// tok for kind. It reads only: Authorize consumes nothing, and whether a
// kind was used is read from the stream.
func (c *Console) checkToken(ctx context.Context, tok string, kind daraja.Kind, res *testResult) {
	g, err := c.o.Check(ctx, tok, kind)
	res.ID = g.ID
	switch {
	case err == nil:
		res.TokenOK = true
		res.Token = "Known and valid for " + string(kind) + "."
		res.Daraja = `200 {"ResultCode":0,"ResultDesc":"Accepted"} for a well-formed callback of shortcode ` + g.Shortcode
	case errors.Is(err, verify.ErrUnknown):
		res.Token, res.Daraja = "Unknown token: not issued by this edge, or its secret is wrong.", forbidden
	case errors.Is(err, verify.ErrExpired):
		res.Token, res.Daraja = "Expired.", forbidden
	case errors.Is(err, verify.ErrRevoked):
		res.Token, res.Daraja = "Revoked.", forbidden
	case errors.Is(err, verify.ErrWrongKind):
		res.Token, res.Daraja = "Not issued for "+string(kind)+": this URL's path is for another kind than the token's.", forbidden
	default:
		res.Token = "The token could not be checked: " + err.Error()
	}
	if g.ID == "" {
		return
	}
	st, err := c.o.Tokens.Status(ctx, g.ID)
	if err != nil {
		return
	}
	res.Shortcode, res.Expires = st.Shortcode, "never"
	if st.ExpiresAt != "" {
		res.Expires = st.ExpiresAt
	}
	res.Expiring = expiring(st)
	res.Uses = c.uses(ctx, st)
	if res.TokenOK && !st.Reusable {
		for _, u := range res.Uses {
			if u.Kind == kind && u.Seq != 0 {
				res.TokenOK = false
				res.Token = "Already used for " + string(kind) + " by transaction " + u.Tx + "."
				res.Daraja = "200 for that same callback again (a duplicate); " + forbidden + " for any other"
			}
		}
	}
}

// reach dials the URL's own host: a TLS handshake verified as Daraja
// would (system roots, or Options.RootCAs), then one GET of the path
// without its query.
func (c *Console) reach(ctx context.Context, u *url.URL, res *testResult) {
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = map[string]string{"https": "443", "http": "80"}[u.Scheme]
	}
	res.Host = net.JoinHostPort(host, port)
	// Only public_url's own host is dialed, and only on a callback path:
	// the form is open to read-only sessions and must not make the edge
	// probe or call whatever host, port and path a URL names.
	want := ""
	if pub, err := url.Parse(c.o.PublicURL); err == nil && pub.Host != "" {
		pport := pub.Port()
		if pport == "" {
			pport = "443"
		}
		want = net.JoinHostPort(pub.Hostname(), pport)
	}
	if want == "" || !strings.EqualFold(want, res.Host) {
		res.HostWarn = "This URL's host " + res.Host + " is not public_url's " + want + ": the edge did not issue it, or public_url is out of date."
		res.TLS = "Not checked: this console dials only public_url's host."
		return
	}
	if _, ok := daraja.KindForPath(u.Path); !ok {
		res.TLS = "Not checked: " + u.Path + " is not a callback path."
		return
	}
	if u.Scheme != "https" {
		res.TLS = "The URL is not https: Daraja calls https URLs only."
		return
	}
	dctx, cancel := context.WithTimeout(ctx, 4*time.Second)
	defer cancel()
	nd := &net.Dialer{Timeout: 3 * time.Second}
	conf := &tls.Config{ServerName: host, RootCAs: c.o.RootCAs, MinVersion: tls.VersionTLS12}
	conn, err := (&tls.Dialer{NetDialer: nd, Config: conf}).DialContext(dctx, "tcp", res.Host)
	var unknown x509.UnknownAuthorityError
	var invalid x509.CertificateInvalidError
	var hostErr x509.HostnameError
	var verr *tls.CertificateVerificationError
	switch {
	case err == nil:
		leaf := conn.(*tls.Conn).ConnectionState().PeerCertificates[0]
		_ = conn.Close()
		res.TLSOK = true
		res.TLS = "Certificate for " + host + " trusted, valid until " + leaf.NotAfter.UTC().Format(time.RFC3339) + "."
	case errors.As(err, &verr) || errors.As(err, &unknown) || errors.As(err, &invalid) || errors.As(err, &hostErr):
		res.TLS = "Certificate not trusted: " + err.Error() + ". Daraja would not connect."
		conf = &tls.Config{ServerName: host, InsecureSkipVerify: true, MinVersion: tls.VersionTLS12} //nolint:gosec // reachability only, after the verdict above
	default:
		res.TLS = "No TLS handshake with " + res.Host + ": " + err.Error() + "."
		if c, derr := nd.DialContext(dctx, "tcp", res.Host); derr == nil {
			_ = c.Close()
			res.TLS += " The port accepts connections but closed this one before TLS: the edge closes connections from addresses outside allowlist.cidrs, and the address this edge dials from is not in it. Safaricom's are; reachability from Safaricom cannot be seen from here."
		}
		return
	}
	tr := &http.Transport{TLSClientConfig: conf, DialContext: nd.DialContext, DisableKeepAlives: true,
		ResponseHeaderTimeout: 4 * time.Second, Proxy: nil}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	target := url.URL{Scheme: "https", Host: u.Host, Path: u.Path} // no query: the token stays here
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target.String(), nil)
	if err != nil {
		res.Reach = "No request: " + err.Error()
		return
	}
	resp, err := client.Do(req)
	if err != nil {
		res.Reach = "GET " + u.Path + " got no answer: " + err.Error() + "."
		return
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	_ = resp.Body.Close()
	code := strconv.Itoa(resp.StatusCode)
	switch resp.StatusCode {
	case http.StatusMethodNotAllowed:
		res.ReachOK = true
		res.Reach = "Reachable: GET " + u.Path + " (without the token) was answered 405, as the edge answers anything but a POST."
	case http.StatusForbidden:
		res.ReachOK = true
		res.Reach = "Reachable, but GET " + u.Path + " was answered 403: the edge refused the address this check came from (outside allowlist.cidrs). Safaricom's addresses pass."
	case http.StatusNotFound:
		res.Reach = "GET " + u.Path + " was answered 404: whatever answers at " + res.Host + " does not serve this callback path."
	default:
		res.Reach = "GET " + u.Path + " was answered " + code + ", not the edge's 405: something else answers at " + res.Host + "."
	}
}
