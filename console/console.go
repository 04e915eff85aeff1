// Package console serves the operator console: a browser view of the
// callbacks on the stream, the tokens, a callback-URL check and the
// edge's health, behind a session opened with an admin API key.
//
// Sessions live in memory, per replica: a sign-in on one replica is not
// known to another, and a restart signs everyone out. Behind a load
// balancer that spreads requests over several replicas, the admin
// listener needs sticky sessions (affinity by client address or by the
// daraja_console cookie), or each request may land on a replica that does
// not know the session and is sent back to sign-in. What the console
// shows does not depend on the replica: every one reads the whole stream.
//
// Sign-in is guarded against guessing and forgery: every attempt spends
// one of its source address's budget (Options.Limiter), and past it every
// attempt is answered 429 without the key being looked at; the form
// carries a token bound to a pre-session cookie, and cross-origin
// requests (Sec-Fetch-Site, Origin) are refused on every state-changing
// route.
package console

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"embed"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"net/netip"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/forward"
	"github.com/daraja-edge/daraja-edge/internal/redact"
	"github.com/daraja-edge/daraja-edge/verify"
)

//go:embed assets
var assets embed.FS

// Tokens is the token service the console reads and revokes through
// (*verify.Issuer).
type Tokens interface {
	Status(ctx context.Context, id string) (verify.Status, error)
	List(ctx context.Context, f verify.ListFilter) ([]verify.Status, string, error)
	Revoke(ctx context.Context, id string) error
}

// Options configures the console.
type Options struct {
	Tokens Tokens
	// Check authorizes a token for a kind without consuming anything
	// ((*verify.Store).Authorize).
	Check func(ctx context.Context, token string, kind daraja.Kind) (verify.Grant, error)
	NATS  *nats.Conn
	JS    jetstream.JetStream
	// Prefix is the subject prefix (nats.subject_prefix), Stream the
	// stream's name.
	Prefix, Stream string
	// Gatherer is the edge's metrics registry.
	Gatherer prometheus.Gatherer
	// Ready reports why the edge is not ready, or nil.
	Ready func(ctx context.Context) error
	// Keys may do everything; ReadKeys read everything and change
	// nothing. Entries "sha256:<hex>" are the SHA-256 of a key.
	Keys, ReadKeys []string
	// PublicURL is the base of callback URLs; QueryParam carries the
	// token (default "t").
	PublicURL, QueryParam string
	// CertExpiry returns the public certificate's expiry (optional).
	CertExpiry func() time.Time
	// AllowlistSize returns the number of allowlisted CIDRs (optional).
	AllowlistSize func() int
	// SecureCookies marks the session cookie Secure (set when the admin
	// listener serves TLS; a request over TLS gets Secure regardless).
	SecureCookies bool
	// SessionTTL bounds a session (default 8h).
	SessionTTL time.Duration
	// RootCAs verifies the public URL's certificate (nil: system roots).
	RootCAs *x509.CertPool
	// Limiter bounds sign-in attempts per client address
	// (*ratelimit.PerSource); nil: unlimited.
	Limiter Limiter
	// Spool reports this edge's spool depth (optional).
	Spool func() (bytes, records int64)
	// TokenBucket is the token bucket's name, shown on the health page
	// (optional).
	TokenBucket string
	// Edge names this replica in the live view's state line.
	Edge string
	// Deliveries reads the forwarder's delivery records of each of
	// Destinations (both unset: forwarding is off, no deliveries page).
	Deliveries   Deliveries
	Destinations []string
	Log          *zap.Logger

	now        func() time.Time
	stateEvery time.Duration // live view state events (default 5s)
}

// Limiter counts sign-in attempts per client address
// (*ratelimit.PerSource).
type Limiter interface {
	// Allow spends one attempt, reporting whether one was left.
	Allow(src netip.Addr, now time.Time) bool
}

// Deliveries is the forwarder's record of deliveries
// (*forward.Forwarder).
type Deliveries interface {
	Deliveries(ctx context.Context, destination, tx, state string, limit int) ([]forward.Delivery, error)
}

// Console is the console's handler.
type Console struct {
	o     Options
	log   *zap.Logger
	keys  [][32]byte
	rkeys [][32]byte
	mux   *http.ServeMux
	tmpl  *template.Template
	rates *rates
	// tokenRe finds the token in a query string (tokens.query_param).
	tokenRe *regexp.Regexp
	cop     *http.CrossOriginProtection

	mu       sync.Mutex
	sessions map[string]*session

	stateMu   sync.Mutex // the live view's last state, shared by its streams
	lastState State
	stateAt   time.Time
}

type session struct {
	readOnly bool
	csrf     string
	expires  time.Time
}

const (
	cookieName = "daraja_console"
	// loginCookie carries the sign-in form's token before a session
	// exists (login CSRF: a forged form cannot carry it).
	loginCookie = "daraja_console_login"
)

// New returns the console, mounted at /console/. Its background sampling
// of the metrics stops with ctx.
func New(ctx context.Context, o Options) (*Console, error) {
	if o.Tokens == nil || o.NATS == nil || o.JS == nil || o.Prefix == "" || o.Stream == "" {
		return nil, errors.New("console: Tokens, NATS, JS, Prefix and Stream are required")
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	if o.QueryParam == "" {
		o.QueryParam = "t"
	}
	if o.SessionTTL <= 0 {
		o.SessionTTL = 8 * time.Hour
	}
	if o.now == nil {
		o.now = time.Now
	}
	if o.stateEvery <= 0 {
		o.stateEvery = 5 * time.Second
	}
	if len(o.Destinations) == 0 {
		o.Deliveries = nil // a typed nil *forward.Forwarder is not a nil interface
	}
	if o.Deliveries == nil {
		o.Destinations = nil
	}
	t, err := template.New("").Funcs(funcs).ParseFS(assets, "assets/*.html")
	if err != nil {
		return nil, fmt.Errorf("console: templates: %w", err)
	}
	c := &Console{o: o, log: o.Log.Named("console"), tmpl: t, sessions: map[string]*session{},
		keys: hashKeys(o.Keys), rkeys: hashKeys(o.ReadKeys), tokenRe: tokenPattern(o.QueryParam),
		cop: http.NewCrossOriginProtection()}
	c.rates = newRates(o.Gatherer)
	go c.rates.run(ctx)
	static, _ := fs.Sub(assets, "assets")
	m := http.NewServeMux()
	m.Handle("GET /console/static/", http.StripPrefix("/console/static/", http.FileServerFS(static)))
	m.HandleFunc("GET /console/login", c.loginPage)
	m.HandleFunc("POST /console/login", c.login)
	m.HandleFunc("POST /console/logout", c.authed(c.logout, true))
	m.HandleFunc("GET /console/{$}", c.authed(c.live, false))
	m.HandleFunc("GET /console/events", c.authed(c.events, false))
	m.HandleFunc("GET /console/callbacks/{seq}", c.authed(c.callback, false))
	m.HandleFunc("GET /console/tokens", c.authed(c.tokens, false))
	m.HandleFunc("GET /console/tokens/{id}", c.authed(c.token, false))
	m.HandleFunc("POST /console/tokens/{id}/revoke", c.authed(c.revoke, true))
	m.HandleFunc("GET /console/test", c.authed(c.testPage, false))
	m.HandleFunc("POST /console/test", c.authed(c.test, true))
	m.HandleFunc("GET /console/health", c.authed(c.health, false))
	m.HandleFunc("GET /console/deliveries", c.authed(c.deliveries, false))
	m.HandleFunc("GET /console", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/console/", http.StatusSeeOther)
	})
	c.mux = m
	return c, nil
}

func hashKeys(keys []string) [][32]byte {
	var out [][32]byte
	for _, k := range keys {
		if k == "" {
			continue
		}
		if h, ok := strings.CutPrefix(k, "sha256:"); ok {
			if b, err := hex.DecodeString(h); err == nil && len(b) == 32 {
				out = append(out, [32]byte(b))
			}
			continue
		}
		out = append(out, sha256.Sum256([]byte(k)))
	}
	return out
}

// match reports whether key is one of keys, in constant time per entry.
func match(keys [][32]byte, key string) bool {
	sum := sha256.Sum256([]byte(key))
	m := 0
	for i := range keys {
		m |= subtle.ConstantTimeCompare(sum[:], keys[i][:])
	}
	return m == 1
}

// ServeHTTP serves the console, with headers that keep its pages out of
// caches and frames and allow only its own scripts.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	if !strings.HasPrefix(r.URL.Path, "/console/static/") {
		h.Set("Cache-Control", "no-store")
	}
	// A browser's cross-origin POST (a forged form on another site) is
	// refused on every route, sign-in included.
	if err := c.cop.Check(r); err != nil {
		c.log.Warn("console: cross-origin request refused", zap.String("path", redact.Path(r.URL.Path)))
		http.Error(w, "cross-origin request refused", http.StatusForbidden)
		return
	}
	c.mux.ServeHTTP(w, r)
}

func randomString() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func (c *Console) session(r *http.Request) (*session, string) {
	ck, err := r.Cookie(cookieName)
	if err != nil || ck.Value == "" {
		return nil, ""
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.sessions[ck.Value]
	if !ok {
		return nil, ""
	}
	if !c.o.now().Before(s.expires) {
		delete(c.sessions, ck.Value)
		return nil, ""
	}
	return s, ck.Value
}

type ctxKey struct{}

// authed admits requests with a live session; a state-changing one
// (write) must also carry the session's CSRF token in the form field
// "csrf", compared in constant time.
func (c *Console) authed(next http.HandlerFunc, write bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s, _ := c.session(r)
		if s == nil {
			if r.Method == http.MethodGet && r.URL.Path != "/console/events" {
				http.Redirect(w, r, "/console/login", http.StatusSeeOther)
				return
			}
			http.Error(w, "sign in first", http.StatusUnauthorized)
			return
		}
		if write {
			r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
			if subtle.ConstantTimeCompare([]byte(r.PostFormValue("csrf")), []byte(s.csrf)) != 1 {
				c.log.Warn("console: request refused: CSRF token missing or wrong", zap.String("path", redact.Path(r.URL.Path)))
				http.Error(w, "the form is stale or forged: reload the page and try again", http.StatusForbidden)
				return
			}
		}
		next(w, r.WithContext(context.WithValue(r.Context(), ctxKey{}, s)))
	}
}

func sessionOf(r *http.Request) *session { s, _ := r.Context().Value(ctxKey{}).(*session); return s }

// loginPage serves the sign-in form with a fresh form token, also set in
// a short-lived cookie that only this origin's forms send back.
func (c *Console) loginPage(w http.ResponseWriter, r *http.Request) {
	c.renderLogin(w, r, http.StatusOK, "")
}

func (c *Console) renderLogin(w http.ResponseWriter, r *http.Request, status int, msg string) {
	tok := randomString()
	http.SetCookie(w, &http.Cookie{Name: loginCookie, Value: tok, Path: "/console/login", HttpOnly: true,
		Secure: c.o.SecureCookies || r.TLS != nil, SameSite: http.SameSiteStrictMode, MaxAge: 1800})
	c.render(w, r, status, "login.html", page{Title: "Sign in", CSRF: tok, Error: msg})
}

// clientAddr is the request's peer address (zero when unparseable).
func clientAddr(r *http.Request) netip.Addr {
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}

// login exchanges a key for a session. The form's token must match the
// pre-session cookie the sign-in page set, and the key is checked before
// the source's sign-in budget: a right key always passes, as on the admin
// API, so nothing sharing the operator's address (every local process on
// a loopback listener, everyone behind a balancer) can lock them out. A
// failure (stale form, wrong key) spends one of the budget: a 403 or 401
// while some is left, then a quiet 429.
func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
	key := r.PostFormValue("key")
	ck, err := r.Cookie(loginCookie)
	formOK := err == nil && ck.Value != "" && subtle.ConstantTimeCompare([]byte(r.PostFormValue("csrf")), []byte(ck.Value)) == 1
	full := key != "" && match(c.keys, key)
	read := !full && key != "" && match(c.rkeys, key)
	if !formOK || !(full || read) {
		if c.o.Limiter != nil && !c.o.Limiter.Allow(clientAddr(r), c.o.now()) {
			w.Header().Set("Retry-After", "10")
			c.renderLogin(w, r, http.StatusTooManyRequests, "Too many failed sign-in attempts from your address: wait a little and try again.")
			return
		}
		if !formOK {
			c.log.Warn("console: sign-in refused: form token missing or wrong", zap.String("source", r.RemoteAddr))
			c.renderLogin(w, r, http.StatusForbidden, "The sign-in form was stale or did not come from this console: try again.")
			return
		}
		c.log.Warn("console: sign-in refused: wrong key", zap.String("source", r.RemoteAddr))
		c.renderLogin(w, r, http.StatusUnauthorized, "That key is not an admin API key.")
		return
	}
	readOnly := read
	id := randomString()
	s := &session{readOnly: readOnly, csrf: randomString(), expires: c.o.now().Add(c.o.SessionTTL)}
	c.mu.Lock()
	now := c.o.now()
	for k, v := range c.sessions { // drop expired sessions
		if !now.Before(v.expires) {
			delete(c.sessions, k)
		}
	}
	c.sessions[id] = s
	c.mu.Unlock()
	secure := c.o.SecureCookies || r.TLS != nil
	http.SetCookie(w, &http.Cookie{Name: loginCookie, Value: "", Path: "/console/login", HttpOnly: true,
		Secure: secure, SameSite: http.SameSiteStrictMode, MaxAge: -1})
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: id, Path: "/console/", HttpOnly: true,
		Secure: secure, SameSite: http.SameSiteStrictMode,
		Expires: s.expires, MaxAge: int(c.o.SessionTTL.Seconds())})
	c.log.Info("console: signed in", zap.Bool("read_only", readOnly), zap.String("source", r.RemoteAddr))
	http.Redirect(w, r, "/console/", http.StatusSeeOther)
}

func (c *Console) logout(w http.ResponseWriter, r *http.Request) {
	if _, id := c.session(r); id != "" {
		c.mu.Lock()
		delete(c.sessions, id)
		c.mu.Unlock()
	}
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: "", Path: "/console/", HttpOnly: true,
		Secure: c.o.SecureCookies || r.TLS != nil, SameSite: http.SameSiteStrictMode, MaxAge: -1})
	http.Redirect(w, r, "/console/login", http.StatusSeeOther)
}

// page is what every template gets.
type page struct {
	Title    string
	Nav      string
	CSRF     string
	Session  bool // signed in: the navigation is shown
	ReadOnly bool
	// Forwarding: the deliveries page exists.
	Forwarding bool
	Error      string
	Notice     string
	Data       any
}

func (c *Console) render(w http.ResponseWriter, r *http.Request, status int, name string, p page) {
	if s := sessionOf(r); s != nil {
		p.CSRF, p.ReadOnly, p.Session = s.csrf, s.readOnly, true
	}
	p.Forwarding = len(c.o.Destinations) > 0
	var b strings.Builder
	if err := c.tmpl.ExecuteTemplate(&b, name, p); err != nil {
		c.log.Error("console: render", zap.String("template", name), zap.Error(err))
		http.Error(w, "console: page failed", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(b.String()))
}
