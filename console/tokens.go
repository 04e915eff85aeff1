package console

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/verify"
)

var funcs = map[string]any{
	"expiring": func(s verify.Status) bool {
		if !s.Reusable || s.ExpiresAt == "" {
			return false
		}
		t, err := time.Parse(time.RFC3339, s.ExpiresAt)
		return err == nil && time.Until(t) < verify.ExpiryWarning
	},
	"maskTx": func(k daraja.Kind, tx string) string { return daraja.MaskTransactionID(k, tx) },
}

type tokensData struct {
	Filter verify.ListFilter
	Page   []verify.Status
	Next   string
	Kinds  []daraja.Kind
}

func (c *Console) tokens(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := verify.ListFilter{Reference: q.Get("reference"), Shortcode: q.Get("shortcode"), Kind: daraja.Kind(q.Get("kind")),
		State: q.Get("state"), After: q.Get("after")}
	d := tokensData{Filter: f, Kinds: daraja.Kinds}
	p := page{Title: "Tokens", Nav: "tokens"}
	var err error
	if d.Page, d.Next, err = c.o.Tokens.List(r.Context(), f); err != nil {
		p.Error = err.Error()
	}
	p.Data = d
	c.render(w, r, http.StatusOK, "tokens.html", p)
}

type kindUse struct {
	Kind daraja.Kind
	Tx   string // masked; "" waiting
}

type tokenData struct {
	S    verify.Status
	Uses []kindUse
}

func (c *Console) token(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !verify.ValidID(id) {
		c.render(w, r, http.StatusNotFound, "error.html", page{Title: "Not found", Error: "No such token."})
		return
	}
	st, err := c.o.Tokens.Status(r.Context(), id)
	if errors.Is(err, verify.ErrNotFound) {
		c.render(w, r, http.StatusNotFound, "error.html", page{Title: "Not found", Error: "No such token."})
		return
	}
	if err != nil {
		c.render(w, r, http.StatusServiceUnavailable, "error.html", page{Title: "Error", Error: "The token could not be read."})
		return
	}
	d := tokenData{S: st}
	for _, k := range st.Kinds {
		d.Uses = append(d.Uses, kindUse{k, daraja.MaskTransactionID(k, st.UsedBy[k])})
	}
	p := page{Title: "Token " + id, Nav: "tokens", Data: d}
	if r.URL.Query().Get("revoked") == "1" {
		p.Notice = "Token revoked."
	}
	c.render(w, r, http.StatusOK, "token.html", p)
}

// revoke revokes a token after confirmation (confirm=yes); read-only
// sessions are refused with 403.
func (c *Console) revoke(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if sessionOf(r).readOnly {
		c.render(w, r, http.StatusForbidden, "error.html", page{Title: "Refused", Error: "This key is read-only: it cannot revoke tokens."})
		return
	}
	if !verify.ValidID(id) {
		c.render(w, r, http.StatusNotFound, "error.html", page{Title: "Not found", Error: "No such token."})
		return
	}
	if r.PostFormValue("confirm") != "yes" {
		c.render(w, r, http.StatusOK, "confirm.html", page{Title: "Revoke " + id, Nav: "tokens", Data: id})
		return
	}
	if err := c.o.Tokens.Revoke(r.Context(), id); err != nil {
		c.render(w, r, http.StatusServiceUnavailable, "error.html", page{Title: "Error", Error: "Revoke failed: " + err.Error()})
		return
	}
	c.log.Info("console: token revoked", zapID(id))
	http.Redirect(w, r, "/console/tokens/"+id+"?revoked=1", http.StatusSeeOther)
}

type testResult struct {
	URL     string // masked
	Kind    daraja.Kind
	Token   string // verdict
	TokenOK bool
	ID      string
	TLS     string
	TLSOK   bool
	Daraja  string
}

func (c *Console) testPage(w http.ResponseWriter, r *http.Request) {
	c.render(w, r, http.StatusOK, "test.html", page{Title: "Test a callback URL", Nav: "test"})
}

// test checks a callback URL without consuming its token or publishing
// anything: the token (known, kind, expiry, used per kind) and the public
// URL's certificate and reachability from here.
func (c *Console) test(w http.ResponseWriter, r *http.Request) {
	raw := r.PostFormValue("url")
	res := testResult{URL: maskText(raw)}
	u, err := url.Parse(raw)
	p := page{Title: "Test a callback URL", Nav: "test"}
	if err != nil || u.Host == "" {
		p.Error = "That is not a URL."
		c.render(w, r, http.StatusOK, "test.html", p)
		return
	}
	kind, ok := daraja.KindForPath(u.Path)
	res.Kind = kind
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	tok := u.Query().Get(c.o.QueryParam)
	switch {
	case !ok:
		res.Token, res.Daraja = "The path "+u.Path+" is not a callback path.", "404 {\"error\":\"not_found\"}"
	case tok == "":
		res.Token, res.Daraja = "The URL carries no token.", "403 {\"error\":\"forbidden\"}"
	case c.o.Check == nil:
		res.Token = "Token checks are not available."
	default:
		g, err := c.o.Check(ctx, tok, kind)
		res.ID = g.ID
		switch {
		case err == nil:
			res.TokenOK, res.Token, res.Daraja = true, "Known, valid for "+string(kind)+", shortcode "+g.Shortcode+".", "200 {\"ResultCode\":0,\"ResultDesc\":\"Accepted\"} for a well-formed callback"
			if st, err := c.o.Tokens.Status(ctx, g.ID); err == nil && st.UsedBy[kind] != "" && !st.Reusable {
				res.TokenOK = false
				res.Token = "Already used for " + string(kind) + " by transaction " + daraja.MaskTransactionID(kind, st.UsedBy[kind]) + "."
				res.Daraja = "200 for the same callback again (duplicate); 403 {\"error\":\"forbidden\"} for any other"
			}
		case errors.Is(err, verify.ErrUnknown):
			res.Token, res.Daraja = "Unknown token.", "403 {\"error\":\"forbidden\"}"
		case errors.Is(err, verify.ErrExpired):
			res.Token, res.Daraja = "Expired.", "403 {\"error\":\"forbidden\"}"
		case errors.Is(err, verify.ErrRevoked):
			res.Token, res.Daraja = "Revoked.", "403 {\"error\":\"forbidden\"}"
		case errors.Is(err, verify.ErrWrongKind):
			res.Token, res.Daraja = "Not issued for "+string(kind)+".", "403 {\"error\":\"forbidden\"}"
		default:
			res.Token = "The token could not be checked: " + err.Error()
		}
	}
	res.TLS, res.TLSOK = c.dialPublic(ctx)
	p.Data = res
	c.render(w, r, http.StatusOK, "test.html", p)
}

// dialPublic makes a TLS handshake with public_url's host:port.
func (c *Console) dialPublic(ctx context.Context) (string, bool) {
	u, err := url.Parse(c.o.PublicURL)
	if err != nil || u.Host == "" {
		return "public_url is not set.", false
	}
	port := u.Port()
	if port == "" {
		port = "443"
	}
	addr := net.JoinHostPort(u.Hostname(), port)
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 3 * time.Second}, Config: &tls.Config{ServerName: u.Hostname(), RootCAs: c.o.RootCAs, MinVersion: tls.VersionTLS12}}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "TLS to " + addr + " failed: " + err.Error(), false
	}
	defer conn.Close()
	leaf := conn.(*tls.Conn).ConnectionState().PeerCertificates[0]
	return "Reachable at " + addr + "; certificate for " + u.Hostname() + " valid until " + leaf.NotAfter.UTC().Format(time.RFC3339) + ".", true
}

type healthData struct {
	Ready, NATS, Stream, Cert string
	ReadyOK, NATSOK, StreamOK bool
	Allowlist                 int
	Rates                     []rate
}

func (c *Console) health(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	d := healthData{Allowlist: -1, Ready: "ready", ReadyOK: true}
	if c.o.Ready != nil {
		if err := c.o.Ready(ctx); err != nil {
			d.Ready, d.ReadyOK = "not ready: "+err.Error(), false
		}
	}
	st := c.o.NATS.Status()
	d.NATS, d.NATSOK = st.String(), st == nats.CONNECTED
	if s, err := c.o.JS.Stream(ctx, c.o.Stream); err != nil {
		d.Stream = err.Error()
	} else if info, err := s.Info(ctx); err != nil {
		d.Stream = err.Error()
	} else {
		d.StreamOK = true
		d.Stream = c.o.Stream + ": " + itoa(info.State.Msgs) + " messages, " + itoa(info.State.Bytes) + " bytes, " + itoa(uint64(info.State.Consumers)) + " consumers"
	}
	if c.o.CertExpiry != nil {
		if t := c.o.CertExpiry(); !t.IsZero() {
			d.Cert = "expires " + t.UTC().Format(time.RFC3339)
		}
	}
	if c.o.AllowlistSize != nil {
		d.Allowlist = c.o.AllowlistSize()
	}
	d.Rates = c.rates.now()
	c.render(w, r, http.StatusOK, "health.html", page{Title: "Health", Nav: "health", Data: d})
}

var _ = prometheus.DefBuckets
