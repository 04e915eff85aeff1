package console

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/forward"
	"github.com/daraja-edge/daraja-edge/internal/natstest"
	"github.com/daraja-edge/daraja-edge/publish"
	"github.com/daraja-edge/daraja-edge/ratelimit"
	"github.com/daraja-edge/daraja-edge/verify"
)

const (
	adminKey = "console-test-admin-key-0123456789"
	readKey  = "console-test-read-key-0123456789"
	bucket   = "daraja_tokens"
)

type fixture struct {
	srv    *httptest.Server
	js     jetstream.JetStream
	nc     *nats.Conn
	url    string // NATS
	issuer *verify.Issuer
	store  *verify.Store
	logs   *observer.ObservedLogs
	clock  *clock
}

// clock is the console's settable clock (Options.now).
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

// setup runs a console over a real NATS server with JetStream, the
// edge's stream subjects and a real token store; mutate adjusts its
// options, tlsSrv serves it over TLS.
func setupWith(t *testing.T, tlsSrv bool, mutate func(*Options)) *fixture {
	t.Helper()
	ns := natstest.Server(t)
	nc, js := natstest.Connect(t, ns)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	subjects := publish.Subjects{Prefix: "daraja"}
	if _, err := publish.EnsureStream(ctx, js, publish.StreamOptions{Name: "DARAJA", Subjects: subjects.StreamSubjects(),
		Replicas: 1, DuplicateWindow: time.Hour, MaxAge: time.Hour}); err != nil {
		t.Fatal(err)
	}
	store, err := verify.NewStore(ctx, js, verify.StoreOptions{Bucket: bucket, Replicas: 1, Retain: 48 * time.Hour}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Watch(ctx); err != nil {
		t.Fatal(err)
	}
	iss := &verify.Issuer{Store: store, PublicURL: "https://127.0.0.1:1", QueryParam: "t",
		Limits: verify.Limits{DefaultTTL: time.Hour, MaxTTL: 24 * time.Hour}}
	core, logs := observer.New(zap.DebugLevel)
	clk := &clock{t: time.Now()}
	o := Options{Tokens: iss, Check: store.Authorize, NATS: nc, JS: js, Prefix: "daraja", Stream: "DARAJA",
		Gatherer: prometheus.NewRegistry(), Ready: func(context.Context) error { return nil },
		Keys: []string{adminKey}, ReadKeys: []string{readKey}, PublicURL: "https://127.0.0.1:1",
		TokenBucket: bucket, Edge: "edge-test", Log: zap.New(core), now: clk.now}
	if mutate != nil {
		mutate(&o)
	}
	c, err := New(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(c)
	if tlsSrv {
		srv.StartTLS()
	} else {
		srv.Start()
	}
	t.Cleanup(srv.Close)
	return &fixture{srv: srv, js: js, nc: nc, url: ns.ClientURL(), issuer: iss, store: store, logs: logs, clock: clk}
}

func setup(t *testing.T) *fixture { return setupWith(t, false, nil) }

func (f *fixture) client() *http.Client {
	jar, _ := cookiejar.New(nil)
	c := f.srv.Client() // trusts the TLS server's certificate
	return &http.Client{Transport: c.Transport, Jar: jar, Timeout: 60 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// loginForm fetches the sign-in page (its cookie lands in c's jar) and
// returns the form's token.
func (f *fixture) loginForm(t *testing.T, c *http.Client) string {
	t.Helper()
	code, page := get(t, c, f.srv.URL+"/console/login")
	if code != http.StatusOK {
		t.Fatalf("sign-in page: %d", code)
	}
	return csrfOf(t, page)
}

func (f *fixture) tryLogin(t *testing.T, c *http.Client, key string) *http.Response {
	t.Helper()
	v := url.Values{"key": {key}, "csrf": {f.loginForm(t, c)}}
	resp, err := c.PostForm(f.srv.URL+"/console/login", v)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

func (f *fixture) signIn(t *testing.T, key string) *http.Client {
	t.Helper()
	c := f.client()
	if resp := f.tryLogin(t, c, key); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("sign-in: %d", resp.StatusCode)
	}
	return c
}

func get(t *testing.T, c *http.Client, u string) (int, string) {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func post(t *testing.T, c *http.Client, u string, v url.Values) (int, string) {
	t.Helper()
	resp, err := c.PostForm(u, v)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

var csrfRe = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func csrfOf(t *testing.T, page string) string {
	t.Helper()
	m := csrfRe.FindStringSubmatch(page)
	if m == nil {
		t.Fatal("no CSRF token on the page")
	}
	return m[1]
}

// pageCSRF reads the session's CSRF token from a signed-in page.
func (f *fixture) pageCSRF(t *testing.T, c *http.Client) string {
	t.Helper()
	_, page := get(t, c, f.srv.URL+"/console/health")
	return csrfOf(t, page)
}

func (f *fixture) issue(t *testing.T, req verify.IssueRequest) verify.IssueResponse {
	t.Helper()
	tok, err := f.issuer.Issue(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestSignIn(t *testing.T) {
	f := setup(t)
	c := f.client()
	if code, _ := get(t, c, f.srv.URL+"/console/"); code != http.StatusSeeOther {
		t.Fatalf("no session: %d, want a redirect to sign-in", code)
	}
	resp := f.tryLogin(t, c, "wrong")
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("wrong key: %d", resp.StatusCode)
	}
	for _, ck := range resp.Cookies() {
		if ck.Name == cookieName {
			t.Fatalf("wrong key got a session cookie")
		}
	}
	resp = f.tryLogin(t, c, adminKey)
	var ck *http.Cookie
	for _, x := range resp.Cookies() {
		if x.Name == cookieName {
			ck = x
		}
	}
	if resp.StatusCode != http.StatusSeeOther || ck == nil || !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.MaxAge <= 0 || ck.Secure {
		t.Fatalf("sign-in: %d, cookie %+v (plain HTTP: not Secure)", resp.StatusCode, ck)
	}
	if strings.Contains(ck.Value, adminKey) {
		t.Fatal("the key is in the cookie")
	}
	code, body := get(t, c, f.srv.URL+"/console/")
	if code != http.StatusOK || strings.Contains(body, adminKey) {
		t.Fatalf("live page: %d", code)
	}
	// Sign-out needs the CSRF token, then ends the session.
	if code, _ := post(t, c, f.srv.URL+"/console/logout", url.Values{}); code != http.StatusForbidden {
		t.Fatalf("sign-out without CSRF: %d", code)
	}
	post(t, c, f.srv.URL+"/console/logout", url.Values{"csrf": {csrfOf(t, body)}})
	if code, _ := get(t, c, f.srv.URL+"/console/"); code != http.StatusSeeOther {
		t.Fatalf("after sign-out: %d", code)
	}
}

// TestSecureCookieOverTLS: over TLS both the sign-in form's cookie and
// the session cookie are Secure.
func TestSecureCookieOverTLS(t *testing.T) {
	f := setupWith(t, true, nil)
	c := f.client()
	resp, err := c.Get(f.srv.URL + "/console/login")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if cs := resp.Cookies(); len(cs) != 1 || !cs[0].Secure || !cs[0].HttpOnly {
		t.Fatalf("sign-in form cookie over TLS: %+v", cs)
	}
	resp = f.tryLogin(t, c, adminKey)
	var secure, found bool
	for _, ck := range resp.Cookies() {
		if ck.Name == cookieName {
			found, secure = true, ck.Secure
		}
	}
	if resp.StatusCode != http.StatusSeeOther || !found || !secure {
		t.Fatalf("session cookie over TLS: %d found %v secure %v", resp.StatusCode, found, secure)
	}
}

// TestSessionExpiry: a session ends at its TTL on the console's clock.
func TestSessionExpiry(t *testing.T) {
	f := setupWith(t, false, func(o *Options) { o.SessionTTL = time.Hour })
	c := f.signIn(t, readKey)
	if code, _ := get(t, c, f.srv.URL+"/console/tokens"); code != http.StatusOK {
		t.Fatalf("fresh session: %d", code)
	}
	f.clock.add(59 * time.Minute)
	if code, _ := get(t, c, f.srv.URL+"/console/tokens"); code != http.StatusOK {
		t.Fatalf("session before its TTL: %d", code)
	}
	f.clock.add(time.Minute)
	if code, _ := get(t, c, f.srv.URL+"/console/tokens"); code != http.StatusSeeOther {
		t.Fatalf("expired session: %d, want a redirect to sign-in", code)
	}
	if code, _ := get(t, c, f.srv.URL+"/console/events"); code != http.StatusUnauthorized {
		t.Fatalf("expired session, events: %d", code)
	}
}

// TestLoginCSRF: a sign-in without the form's token (a forged form has
// none: the token's cookie is SameSite=Strict) or from another origin
// opens no session.
func TestLoginCSRF(t *testing.T) {
	f := setup(t)
	noCookie := func(t *testing.T, resp *http.Response) {
		for _, ck := range resp.Cookies() {
			if ck.Name == cookieName && ck.Value != "" {
				t.Fatal("a session was opened")
			}
		}
	}
	t.Run("no form token", func(t *testing.T) {
		c := f.client()
		resp, err := c.PostForm(f.srv.URL+"/console/login", url.Values{"key": {adminKey}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("%d, want 403", resp.StatusCode)
		}
		noCookie(t, resp)
	})
	t.Run("token without its cookie", func(t *testing.T) {
		tok := f.loginForm(t, f.client()) // another browser's form
		resp, err := f.client().PostForm(f.srv.URL+"/console/login", url.Values{"key": {adminKey}, "csrf": {tok}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("%d, want 403", resp.StatusCode)
		}
		noCookie(t, resp)
	})
	for _, hdr := range []struct{ name, value string }{
		{"Sec-Fetch-Site", "cross-site"},
		{"Origin", "https://attacker.example"},
	} {
		t.Run("cross-origin "+hdr.name, func(t *testing.T) {
			c := f.client()
			v := url.Values{"key": {adminKey}, "csrf": {f.loginForm(t, c)}}
			req, _ := http.NewRequest(http.MethodPost, f.srv.URL+"/console/login", strings.NewReader(v.Encode()))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.Header.Set(hdr.name, hdr.value)
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusForbidden {
				t.Fatalf("%d, want 403", resp.StatusCode)
			}
			noCookie(t, resp)
		})
	}
}

// TestLoginRateLimit: past the source's budget every attempt, the right
// key included, gets 429 without the key being looked at.
func TestLoginRateLimit(t *testing.T) {
	f := setupWith(t, false, func(o *Options) { o.Limiter = ratelimit.New(0.0001, 3, 100) })
	c := f.client()
	for i := range 3 {
		if resp := f.tryLogin(t, c, "wrong-key-"+strconv.Itoa(i)); resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("attempt %d: %d, want 401", i+1, resp.StatusCode)
		}
	}
	resp := f.tryLogin(t, c, "wrong-key-again")
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("a wrong key past the budget: %d, want 429", resp.StatusCode)
	}
	for _, ck := range resp.Cookies() {
		if ck.Name == cookieName {
			t.Fatal("a session was opened past the budget")
		}
	}
	// Stale or forged forms spend the budget too (a bare POST, no cookie).
	f2 := setupWith(t, false, func(o *Options) { o.Limiter = ratelimit.New(0.0001, 3, 100) })
	for i := range 4 {
		resp, err := f2.client().PostForm(f2.srv.URL+"/console/login", url.Values{"key": {"x"}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if want := map[bool]int{true: http.StatusForbidden, false: http.StatusTooManyRequests}[i < 3]; resp.StatusCode != want {
			t.Fatalf("bare POST %d: %d, want %d", i+1, resp.StatusCode, want)
		}
	}
	// The operator's right key still passes: failures from the same
	// address (a loopback listener, a balancer) cannot lock them out.
	for _, fx := range []*fixture{f, f2} {
		resp := fx.tryLogin(t, fx.client(), adminKey)
		if resp.StatusCode != http.StatusSeeOther {
			t.Fatalf("the right key after the budget was spent: %d, want 303", resp.StatusCode)
		}
	}
}

// TestKeyNeverLogged: neither a key nor a wrong guess reaches the log.
func TestKeyNeverLogged(t *testing.T) {
	f := setup(t)
	f.tryLogin(t, f.client(), "a-wrong-guess-0123456789")
	f.signIn(t, adminKey)
	f.signIn(t, readKey)
	if f.logs.Len() == 0 {
		t.Fatal("no log lines captured: the check would be vacuous")
	}
	for _, e := range f.logs.All() {
		line := e.Message
		for k, v := range e.ContextMap() {
			line += " " + k + "=" + strings.TrimSpace(strings.ReplaceAll(jsonString(v), "\n", " "))
		}
		for _, secret := range []string{adminKey, readKey, "a-wrong-guess-0123456789"} {
			if strings.Contains(line, secret) {
				t.Errorf("log line holds a key: %s", line)
			}
		}
	}
}

func jsonString(v any) string { b, _ := json.Marshal(v); return string(b) }

func TestRevoke(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		key  string
		csrf bool
		want int
	}{
		{"admin", adminKey, true, http.StatusSeeOther},
		{"no csrf", adminKey, false, http.StatusForbidden},
		{"read-only", readKey, true, http.StatusForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok := f.issue(t, verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379"})
			c := f.signIn(t, tc.key)
			v := url.Values{"confirm": {"yes"}}
			if tc.csrf {
				v.Set("csrf", f.pageCSRF(t, c))
			}
			code, _ := post(t, c, f.srv.URL+"/console/tokens/"+tok.ID+"/revoke", v)
			st, _ := f.issuer.Status(ctx, tok.ID)
			if code != tc.want || (st.State == verify.StateRevoked) != (tc.want == http.StatusSeeOther) {
				t.Fatalf("revoke: %d, state %s", code, st.State)
			}
		})
	}
}

// TestRevokeConfirmation: a revoke without confirm=yes renders the
// confirmation form and revokes nothing.
func TestRevokeConfirmation(t *testing.T) {
	f := setup(t)
	tok := f.issue(t, verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379"})
	c := f.signIn(t, adminKey)
	code, page := post(t, c, f.srv.URL+"/console/tokens/"+tok.ID+"/revoke", url.Values{"csrf": {f.pageCSRF(t, c)}})
	if code != http.StatusOK || !strings.Contains(page, `name="confirm" value="yes"`) ||
		!strings.Contains(page, `action="/console/tokens/`+tok.ID+`/revoke"`) || !csrfRe.MatchString(page) {
		t.Fatalf("no confirmation form: %d\n%s", code, page)
	}
	if st, _ := f.issuer.Status(context.Background(), tok.ID); st.State != verify.StateIssued {
		t.Fatalf("revoked without confirmation: %s", st.State)
	}
}

// TestReadOnlySeesNoRevoke: a read-only session sees a token's page with
// no revoke button; an admin session sees one.
func TestReadOnlySeesNoRevoke(t *testing.T) {
	f := setup(t)
	tok := f.issue(t, verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379"})
	for _, tc := range []struct {
		key    string
		button bool
	}{{readKey, false}, {adminKey, true}} {
		c := f.signIn(t, tc.key)
		code, page := get(t, c, f.srv.URL+"/console/tokens/"+tok.ID)
		if code != http.StatusOK {
			t.Fatalf("token page: %d", code)
		}
		if has := strings.Contains(page, "/revoke"); has != tc.button {
			t.Errorf("key %s…: revoke button %v, want %v", tc.key[:17], has, tc.button)
		}
		if tc.key == readKey && !strings.Contains(page, "read-only") {
			t.Error("a read-only session is not marked read-only")
		}
	}
}

const stkBody = `{"Body":{"stkCallback":{"MerchantRequestID":"29115-34620561-1","CheckoutRequestID":"ws_CO_03082023134725382708374149","ResultCode":0,"ResultDesc":"ok",
"CallbackMetadata":{"Item":[{"Name":"Amount","Value":1.00},{"Name":"MpesaReceiptNumber","Value":"NLJ7RT61SV"},{"Name":"PhoneNumber","Value":254708374149}]}}},"note":"https://x/stk/callback?a=1&t=SECRETTOKENVALUE"}`

// publishCallback stores a callback as the edge does, for tokenID (kind
// stk.callback, shortcode 174379), and returns its stream sequence.
func publishCallback(t *testing.T, js jetstream.JetStream, tokenID, tx, body string) uint64 {
	t.Helper()
	cb := publish.Callback{Kind: string(daraja.STKCallback), Shortcode: "174379", TransactionID: tx, TokenID: tokenID,
		Reference: "ORDER-1", SourceIP: "127.0.0.2", ReceivedAt: time.Now(), Edge: "edge-test", Body: []byte(body)}
	subj := publish.Subjects{Prefix: "daraja"}.Callback(cb.Kind, cb.Shortcode, tokenID)
	ack, err := js.PublishMsg(context.Background(), cb.Msg(subj))
	if err != nil {
		t.Fatal(err)
	}
	return ack.Sequence
}

func TestCallbackMasked(t *testing.T) {
	f := setup(t)
	seq := publishCallback(t, f.js, "tok_abcdefghijklmnop", "ws_CO_03082023134725382708374149", stkBody)
	c := f.signIn(t, readKey)
	code, body := get(t, c, f.srv.URL+"/console/callbacks/"+itoa(seq))
	if code != http.StatusOK {
		t.Fatalf("callback page: %d %s", code, body)
	}
	for _, secret := range []string{"254708374149", "SECRETTOKENVALUE", "ws_CO_03082023134725382708374149"} {
		if strings.Contains(body, secret) {
			t.Errorf("the page shows %q", secret)
		}
	}
	if !strings.Contains(body, "NLJ7RT61SV") || !strings.Contains(body, "ORDER-1") || !strings.Contains(body, "1.00") {
		t.Error("the page lost what it should show (receipt, reference, the amount as stored)")
	}
}

// TestMaskUsesQueryParam: the token is masked under the configured
// tokens.query_param, not a fixed name.
func TestMaskUsesQueryParam(t *testing.T) {
	f := setupWith(t, false, func(o *Options) { o.QueryParam = "key_x" })
	body := strings.Replace(stkBody, "&t=SECRETTOKENVALUE", "&key_x=OTHERSECRETVALUE", 1)
	seq := publishCallback(t, f.js, "tok_abcdefghijklmnop", "ws_CO_03082023134725382708374149", body)
	c := f.signIn(t, readKey)
	_, page := get(t, c, f.srv.URL+"/console/callbacks/"+itoa(seq))
	if strings.Contains(page, "OTHERSECRETVALUE") {
		t.Error("the token under key_x is shown")
	}
	if !strings.Contains(page, "key_x=…") {
		t.Error("no masked key_x= on the page")
	}
}

// sse reads server-sent events from a live view stream.
type sse struct {
	t    *testing.T
	body io.ReadCloser
	ch   chan [2]string // event, data
}

func (f *fixture) events(t *testing.T, c *http.Client, query string) *sse {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, f.srv.URL+"/console/events"+query, nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != http.StatusOK || ct != "text/event-stream" {
		t.Fatalf("events: %d %q", resp.StatusCode, ct)
	}
	s := &sse{t: t, body: resp.Body, ch: make(chan [2]string, 64)}
	t.Cleanup(func() { cancel(); resp.Body.Close() })
	go func() {
		defer close(s.ch)
		sc := bufio.NewScanner(resp.Body)
		var ev string
		for sc.Scan() {
			line := sc.Text()
			if v, ok := strings.CutPrefix(line, "event: "); ok {
				ev = v
			}
			if v, ok := strings.CutPrefix(line, "data: "); ok {
				s.ch <- [2]string{ev, v}
			}
		}
	}()
	return s
}

// next returns the next event other than state, failing if the stream
// ends or nothing comes within the (generous) deadline.
func (s *sse) next(skipState bool) (string, string) {
	s.t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case e, ok := <-s.ch:
			if !ok {
				s.t.Fatal("the event stream ended")
			}
			if skipState && e[0] == "state" {
				continue
			}
			return e[0], e[1]
		case <-deadline:
			s.t.Fatal("no event within 30s")
		}
	}
}

func TestEvents(t *testing.T) {
	f := setup(t)
	c := f.signIn(t, readKey)
	ev := f.events(t, c, "?shortcode=174379")
	publishCallback(t, f.js, "tok_abcdefghijklmnop", "ws_CO_03082023134725382708374149", stkBody)
	typ, line := ev.next(true)
	if typ != "callback" || strings.Contains(line, "254708374149") || strings.Contains(line, "ws_CO_03082023134725382708374149") {
		t.Fatalf("unmasked or wrong: %s %s", typ, line)
	}
	if !strings.Contains(line, `"msisdn":"2547******49"`) || !strings.Contains(line, `"reference":"ORDER-1"`) {
		t.Fatalf("event: %s", line)
	}
}

// TestEventsFilterExcludes: a filtered live view never sends what the
// filter leaves out: a callback of another kind published first is not
// the first event that arrives.
func TestEventsFilterExcludes(t *testing.T) {
	f := setup(t)
	c := f.signIn(t, readKey)
	for _, q := range []string{"?kind=c2b.confirmation", "?shortcode=600000", "?type=rejected"} {
		t.Run(q, func(t *testing.T) {
			ev := f.events(t, c, q)
			publishCallback(t, f.js, "tok_abcdefghijklmnop", "ws_CO_1"+strconv.Itoa(len(q)), stkBody) // stk.callback, 174379
			// Then one the filter takes, on the stream and as a rejection.
			m := nats.NewMsg("daraja.cb.c2b.confirmation.600000.tok_qrstuvwxyzabcdef")
			m.Header.Set(publish.HeaderKind, "c2b.confirmation")
			m.Header.Set(publish.HeaderShortcode, "600000")
			m.Header.Set(publish.HeaderTransactionID, "RKTQDM7W6S"+strconv.Itoa(len(q)))
			m.Data = []byte(`{}`)
			if _, err := f.js.PublishMsg(context.Background(), m); err != nil {
				t.Fatal(err)
			}
			if err := f.nc.Publish("daraja.rejected.token_unknown", []byte(`{"reason":"token_unknown","source_ip":"127.0.0.9","path":"/c2b/confirmation"}`)); err != nil {
				t.Fatal(err)
			}
			typ, line := ev.next(true)
			if strings.Contains(line, "stk.callback") {
				t.Fatalf("the filter %s let through %s %s", q, typ, line)
			}
		})
	}
}

// TestEventsRejection: a rejection reaches the live view with its reason,
// its path masked.
func TestEventsRejection(t *testing.T) {
	f := setup(t)
	c := f.signIn(t, readKey)
	ev := f.events(t, c, "")
	data := `{"reason":"token_revoked","source_ip":"196.201.214.200","path":"/stk/callback?t=SECRETTOKENVALUE","token_id":"tok_abcdefghijklmnop","at":"2026-01-02T03:04:05Z"}`
	if err := f.nc.Publish("daraja.rejected.token_revoked", []byte(data)); err != nil {
		t.Fatal(err)
	}
	typ, line := ev.next(true)
	var e Event
	if err := json.Unmarshal([]byte(line), &e); err != nil || typ != "rejected" {
		t.Fatalf("%s %s: %v", typ, line, err)
	}
	if e.Reason != "token_revoked" || e.Source != "196.201.214.200" || e.TokenID != "tok_abcdefghijklmnop" || e.Kind != "stk.callback" ||
		strings.Contains(line, "SECRETTOKENVALUE") {
		t.Fatalf("rejection event: %s", line)
	}
}

// TestEventsMissing: a missing-callback event on the stream reaches the
// live view.
func TestEventsMissing(t *testing.T) {
	f := setup(t)
	c := f.signIn(t, readKey)
	ev := f.events(t, c, "?type=missing")
	data := `{"token_id":"tok_abcdefghijklmnop","kinds":["stk.callback"],"shortcode":"174379","reference":"ORDER-9","expires_at":"2026-01-02T03:04:05Z"}`
	if _, err := f.js.Publish(context.Background(), "daraja.missing.stk.callback.174379", []byte(data)); err != nil {
		t.Fatal(err)
	}
	typ, line := ev.next(true)
	var e Event
	_ = json.Unmarshal([]byte(line), &e)
	if typ != "missing" || e.Type != "missing" || e.Reference != "ORDER-9" || e.Kind != "stk.callback" || e.TokenID != "tok_abcdefghijklmnop" || e.Seq == 0 {
		t.Fatalf("missing event: %s %s", typ, line)
	}
}

// TestEventsState: the live view sends this replica's state (readiness,
// spool) at once and then periodically, and ends its stream once the
// session is signed out.
func TestEventsState(t *testing.T) {
	f := setupWith(t, false, func(o *Options) {
		o.Spool = func() (int64, int64) { return 2048, 3 }
		o.Ready = func(context.Context) error { return errors.New("spool replay stuck: stream full") }
		o.stateEvery = 50 * time.Millisecond
	})
	c := f.signIn(t, readKey)
	ev := f.events(t, c, "?kind=b2c.result") // state events pass every filter
	for range 2 {
		typ, line := ev.next(false)
		var s State
		if err := json.Unmarshal([]byte(line), &s); err != nil || typ != "state" {
			t.Fatalf("%s %s: %v", typ, line, err)
		}
		if s.Ready || !strings.Contains(s.NotReady, "spool replay stuck") || s.SpoolRecords != 3 || s.SpoolBytes != 2048 ||
			!s.SpoolKnown || s.NATS != "CONNECTED" || s.Edge != "edge-test" || s.SignedOut {
			t.Fatalf("state: %s", line)
		}
	}
	post(t, c, f.srv.URL+"/console/logout", url.Values{"csrf": {f.pageCSRF(t, c)}})
	for {
		typ, line := ev.next(false)
		if typ == "state" && strings.Contains(line, `"signed_out":true`) {
			break
		}
	}
	select {
	case _, open := <-ev.ch:
		if open {
			t.Fatal("events after signed_out")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the stream did not end after sign-out")
	}
}

// TestHealth shows readiness, NATS, stream, token bucket, spool depth,
// certificate and allowlist.
func TestHealth(t *testing.T) {
	expiry := time.Date(2031, 5, 6, 7, 8, 9, 0, time.UTC)
	f := setupWith(t, false, func(o *Options) {
		o.Spool = func() (int64, int64) { return 4096, 7 }
		o.CertExpiry = func() time.Time { return expiry }
		o.AllowlistSize = func() int { return 12 }
	})
	f.issue(t, verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379"})
	c := f.signIn(t, readKey)
	code, page := get(t, c, f.srv.URL+"/console/health")
	if code != http.StatusOK {
		t.Fatalf("health: %d", code)
	}
	for _, want := range []string{
		`id="h-ready" class="ok">ready`, `id="h-nats" class="ok">CONNECTED`,
		`id="h-stream" class="ok">DARAJA: `, `id="h-bucket" class="ok">daraja_tokens: `, " values, ",
		`id="h-spool" class="bad">7 callbacks waiting for NATS (4096 bytes)`,
		"expires 2031-05-06T07:08:09Z", "12 entries", "accepted",
	} {
		if !strings.Contains(page, want) {
			t.Errorf("health page lacks %q", want)
		}
	}
}

// TestTokensSearch: each filter narrows the search, and the page keeps it.
func TestTokensSearch(t *testing.T) {
	f := setup(t)
	a := f.issue(t, verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379", Reference: "INV-APPLE"})
	b := f.issue(t, verify.IssueRequest{Kinds: []daraja.Kind{daraja.B2CResult, daraja.B2CTimeout}, Shortcode: "600000", Reference: "INV-BANANA"})
	r := f.issue(t, verify.IssueRequest{Kinds: []daraja.Kind{daraja.C2BConfirmation}, Shortcode: "600000", Reference: "INV-CHERRY"})
	if err := f.issuer.Revoke(context.Background(), r.ID); err != nil {
		t.Fatal(err)
	}
	c := f.signIn(t, readKey)
	for _, tc := range []struct {
		query   string
		want    []string
		notWant []string
		kept    string
	}{
		{"reference=INV-APPLE", []string{a.ID}, []string{b.ID, r.ID}, `value="INV-APPLE"`},
		{"shortcode=600000", []string{b.ID, r.ID}, []string{a.ID}, `value="600000"`},
		{"kind=b2c.result", []string{b.ID}, []string{a.ID, r.ID}, `selected>b2c.result`},
		{"state=revoked", []string{r.ID}, []string{a.ID, b.ID}, `selected>revoked`},
		{"state=issued&shortcode=600000", []string{b.ID}, []string{a.ID, r.ID}, `selected>issued`},
	} {
		t.Run(tc.query, func(t *testing.T) {
			code, page := get(t, c, f.srv.URL+"/console/tokens?"+tc.query)
			if code != http.StatusOK {
				t.Fatalf("%d", code)
			}
			for _, id := range tc.want {
				if !strings.Contains(page, id) {
					t.Errorf("missing %s", id)
				}
			}
			for _, id := range tc.notWant {
				if strings.Contains(page, id) {
					t.Errorf("%s should not match", id)
				}
			}
			if !strings.Contains(page, tc.kept) {
				t.Errorf("the form does not keep %s", tc.kept)
			}
		})
	}
}

// TestTokenPageUses: each kind of a token shows its callback from the
// stream with a link to it, or "waiting".
func TestTokenPageUses(t *testing.T) {
	f := setup(t)
	tok := f.issue(t, verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback, daraja.B2CResult}, Shortcode: "174379"})
	seq := publishCallback(t, f.js, tok.ID, "ws_CO_03082023134725382708374149", stkBody)
	c := f.signIn(t, readKey)
	_, page := get(t, c, f.srv.URL+"/console/tokens/"+tok.ID)
	if !strings.Contains(page, `<dd data-kind="stk.callback">received `) || !strings.Contains(page, `href="/console/callbacks/`+itoa(seq)+`"`) {
		t.Errorf("stk.callback's callback not shown with its link:\n%s", page)
	}
	if !strings.Contains(page, `<dd data-kind="b2c.result">waiting</dd>`) {
		t.Error("b2c.result is not waiting")
	}
	if strings.Contains(page, "ws_CO_03082023134725382708374149") {
		t.Error("the transaction id is not masked")
	}
}

// publicHost stands in for the edge's public listener: it answers every
// GET 405 as the edge does, and records the requests it got.
type publicHost struct {
	srv  *httptest.Server
	mu   sync.Mutex
	reqs []string
}

func newPublicHost(t *testing.T) *publicHost {
	p := &publicHost{}
	p.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		p.reqs = append(p.reqs, r.Method+" "+r.URL.RequestURI())
		p.mu.Unlock()
		w.Header().Set("Allow", http.MethodPost)
		w.WriteHeader(http.StatusMethodNotAllowed)
	}))
	t.Cleanup(p.srv.Close)
	return p
}

// streamState is what must not change under a URL test.
func (f *fixture) streamState(t *testing.T) [2]uint64 {
	t.Helper()
	ctx := context.Background()
	s, err := f.js.Stream(ctx, "DARAJA")
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := f.js.KeyValue(ctx, bucket)
	if err != nil {
		t.Fatal(err)
	}
	ks, err := kv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return [2]uint64{info.State.LastSeq, ks.Values()}
}

// TestURLTest: "Test a callback URL" says what Daraja would get for each
// kind of token trouble, dials the URL's host with one GET that carries
// no token, and changes nothing: no stream message, no bucket write, no
// NATS publish, the token still unused.
func TestURLTest(t *testing.T) {
	pub := newPublicHost(t)
	roots := x509.NewCertPool()
	roots.AddCert(pub.srv.Certificate())
	f := setupWith(t, false, func(o *Options) { o.PublicURL, o.RootCAs = pub.srv.URL, roots })
	ctx := context.Background()
	stk := []daraja.Kind{daraja.STKCallback}
	valid := f.issue(t, verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback, daraja.B2CResult}, Shortcode: "174379"})
	used := f.issue(t, verify.IssueRequest{Kinds: stk, Shortcode: "174379"})
	usedSeq := publishCallback(t, f.js, used.ID, "ws_CO_03082023134725382708374149", stkBody)
	revoked := f.issue(t, verify.IssueRequest{Kinds: stk, Shortcode: "174379"})
	if err := f.issuer.Revoke(ctx, revoked.ID); err != nil {
		t.Fatal(err)
	}
	expired := f.issue(t, verify.IssueRequest{Kinds: stk, Shortcode: "174379", TTL: "1s"})
	for deadline := time.Now().Add(30 * time.Second); ; {
		if _, err := f.store.Authorize(ctx, expired.Token, daraja.STKCallback); errors.Is(err, verify.ErrExpired) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the 1s token never expired")
		}
		time.Sleep(100 * time.Millisecond)
	}
	u := func(kind daraja.Kind, tok string) string { return pub.srv.URL + kind.Path() + "?t=" + tok }

	// Anything published under the prefix while the tests run is a failure.
	sub, err := f.nc.SubscribeSync("daraja.>")
	if err != nil {
		t.Fatal(err)
	}
	_ = f.nc.Flush()
	before := f.streamState(t)
	admin, ro := f.signIn(t, adminKey), f.signIn(t, readKey)

	for _, tc := range []struct {
		name, url, verdict, daraja string
		ok                         bool
		more                       []string
	}{
		{"valid", u(daraja.STKCallback, valid.Token), "Known and valid for stk.callback.", `200 {&#34;ResultCode&#34;:0`, true,
			[]string{`<dd data-kind="stk.callback">waiting</dd>`, `<dd data-kind="b2c.result">waiting</dd>`, `id="expiry"`, "Reachable: GET /stk/callback (without the token) was answered 405"}},
		{"unknown", u(daraja.STKCallback, strings.Repeat("A", 40)), "Unknown token", `403 {&#34;error&#34;:&#34;forbidden&#34;}`, false, nil},
		{"expired", u(daraja.STKCallback, expired.Token), "Expired.", `403 {&#34;error&#34;:&#34;forbidden&#34;}`, false, []string{`id="expiry"`}},
		{"revoked", u(daraja.STKCallback, revoked.Token), "Revoked.", `403 {&#34;error&#34;:&#34;forbidden&#34;}`, false, nil},
		{"wrong kind", u(daraja.C2BConfirmation, valid.Token), "Not issued for c2b.confirmation", `403 {&#34;error&#34;:&#34;forbidden&#34;}`, false,
			[]string{`<dd data-kind="stk.callback">waiting</dd>`}},
		{"used", u(daraja.STKCallback, used.Token), "Already used for stk.callback by transaction", "200 for that same callback again (a duplicate)", false,
			[]string{`href="/console/callbacks/` + itoa(usedSeq) + `"`}},
		{"no token", pub.srv.URL + "/stk/callback", "carries no token", "403", false, nil},
		{"not a callback path", pub.srv.URL + "/nope?t=x", "is not a callback path", "404", false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, page := post(t, ro, f.srv.URL+"/console/test", url.Values{"url": {tc.url}, "csrf": {f.pageCSRF(t, ro)}})
			if code != http.StatusOK {
				t.Fatalf("%d", code)
			}
			verdict := regexp.MustCompile(`id="token-verdict">([^<]*)`).FindStringSubmatch(page)
			if verdict == nil || !strings.Contains(verdict[1], tc.verdict) {
				t.Fatalf("verdict %q, want %q", verdict, tc.verdict)
			}
			if ok := strings.Contains(page, `class="ok" id="token-verdict"`); ok != tc.ok {
				t.Errorf("verdict ok %v, want %v", ok, tc.ok)
			}
			if !strings.Contains(page, tc.daraja) {
				t.Errorf("Daraja would get: want %q", tc.daraja)
			}
			for _, m := range tc.more {
				if !strings.Contains(page, m) {
					t.Errorf("page lacks %q", m)
				}
			}
			if strings.Contains(page, "host-warn") {
				t.Error("warned of a host that is public_url's")
			}
			for _, tok := range []string{valid.Token, used.Token, expired.Token, revoked.Token} {
				if strings.Contains(page, tok) {
					t.Error("the page shows a token's secret")
				}
			}
		})
	}
	asked := func() int { pub.mu.Lock(); defer pub.mu.Unlock(); return len(pub.reqs) }
	t.Run("other host warned, not dialed", func(t *testing.T) {
		// The form is open to read-only sessions: it must not make the
		// edge probe or call any host, port or path a URL names.
		before := asked()
		other := strings.Replace(u(daraja.STKCallback, valid.Token), "127.0.0.1", "localhost", 1)
		_, page := post(t, ro, f.srv.URL+"/console/test", url.Values{"url": {other}, "csrf": {f.pageCSRF(t, ro)}})
		if !strings.Contains(page, `id="host-warn"`) || !strings.Contains(page, "dials only public_url") {
			t.Error("no warning for a host other than public_url's")
		}
		if n := asked() - before; n != 0 {
			t.Errorf("a host other than public_url's was asked %d times", n)
		}
	})
	t.Run("not a callback path, not dialed", func(t *testing.T) {
		before := asked()
		_, page := post(t, ro, f.srv.URL+"/console/test", url.Values{"url": {pub.srv.URL + "/internal/purge?t=x"}, "csrf": {f.pageCSRF(t, ro)}})
		if !strings.Contains(page, "is not a callback path") {
			t.Error("no verdict for a path that is not a callback path")
		}
		if n := asked() - before; n != 0 {
			t.Errorf("a path that is not a callback path was asked %d times", n)
		}
	})
	t.Run("no csrf", func(t *testing.T) {
		code, _ := post(t, admin, f.srv.URL+"/console/test", url.Values{"url": {u(daraja.STKCallback, valid.Token)}})
		if code != http.StatusForbidden {
			t.Fatalf("%d, want 403", code)
		}
	})

	if after := f.streamState(t); after != before {
		t.Errorf("stream/bucket changed under URL tests: %v -> %v", before, after)
	}
	if m, err := sub.NextMsg(500 * time.Millisecond); err == nil {
		t.Errorf("published under the prefix: %s", m.Subject)
	}
	if st, _ := f.issuer.Status(ctx, valid.ID); st.State != verify.StateIssued || len(st.UsedBy) != 0 {
		t.Errorf("the tested token changed: %+v", st)
	}
	pub.mu.Lock()
	defer pub.mu.Unlock()
	if len(pub.reqs) == 0 {
		t.Fatal("the public host was never asked")
	}
	for _, r := range pub.reqs {
		if !strings.HasPrefix(r, "GET ") || strings.Contains(r, "?") {
			t.Errorf("the public host got %q: only a GET without a query is allowed", r)
		}
	}
}

// TestURLTestUntrustedCertificate: a certificate Daraja would not trust
// is reported, and reachability still checked.
func TestURLTestUntrustedCertificate(t *testing.T) {
	pub := newPublicHost(t)
	f := setupWith(t, false, func(o *Options) { o.PublicURL = pub.srv.URL }) // system roots
	c := f.signIn(t, readKey)
	_, page := post(t, c, f.srv.URL+"/console/test", url.Values{"url": {pub.srv.URL + "/stk/callback?t=x"}, "csrf": {f.pageCSRF(t, c)}})
	if !strings.Contains(page, `class="bad" id="tls">Certificate not trusted`) || !strings.Contains(page, `class="ok" id="reach">Reachable`) {
		t.Fatalf("untrusted certificate:\n%s", page)
	}
	if !strings.Contains(page, "a TLS failure") {
		t.Error("Daraja's answer does not say TLS fails")
	}
}

// TestDeliveries: with forwarding on, a callback's delivery records (a
// real forwarder delivering to an app stand-in) show on its page and on
// the deliveries page.
func TestDeliveries(t *testing.T) {
	var calls atomic.Int32
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(app.Close)
	var fw *forward.Forwarder
	f := setupWith(t, false, func(o *Options) {
		ns, err := nats.Connect(o.NATS.ConnectedUrl())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(ns.Close)
		js, _ := jetstream.New(ns)
		d := config.DefaultDestination()
		d.Name, d.URL = "shop", app.URL
		d.Secrets = []string{"whsec_" + base64.StdEncoding.EncodeToString([]byte("console-test-secret-0123456789"))}
		d.Retry = []time.Duration{0, 50 * time.Millisecond, 100 * time.Millisecond}
		fw, err = forward.New(forward.Options{JS: js, Stream: "DARAJA", Prefix: "daraja", Destinations: []config.Destination{d}})
		if err != nil {
			t.Fatal(err)
		}
		if err := fw.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			fw.Stop(ctx)
		})
		o.Deliveries, o.Destinations = fw, []string{"shop"}
	})
	tx := "ws_CO_03082023134725382708374149"
	seq := publishCallback(t, f.js, "tok_abcdefghijklmnop", tx, stkBody)
	for deadline := time.Now().Add(30 * time.Second); ; {
		ds, _ := fw.Deliveries(context.Background(), "shop", tx, forward.StateDelivered, 10)
		if len(ds) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the callback was never delivered")
		}
		time.Sleep(50 * time.Millisecond)
	}
	c := f.signIn(t, readKey)
	_, page := get(t, c, f.srv.URL+"/console/callbacks/"+itoa(seq))
	if !strings.Contains(page, `<tr class="d-delivered">`) || !strings.Contains(page, "HTTP 503") || !strings.Contains(page, "HTTP 200") {
		t.Errorf("callback page lacks its delivery (two attempts, delivered):\n%s", page)
	}
	_, page = get(t, c, f.srv.URL+"/console/deliveries?destination=shop&state=delivered")
	if !strings.Contains(page, `href="/console/callbacks/`+itoa(seq)+`"`) || strings.Contains(page, tx) {
		t.Errorf("deliveries page: want the callback, its transaction id masked:\n%s", page)
	}
	if !strings.Contains(page, `href="/console/deliveries" aria-current="page"`) {
		t.Error("no Deliveries navigation with forwarding on")
	}
	_, page = get(t, c, f.srv.URL+"/console/deliveries?destination=shop&state=dead")
	if strings.Contains(page, `href="/console/callbacks/`+itoa(seq)+`"`) {
		t.Error("the state filter let a delivered callback through")
	}
	// Without forwarding there is no deliveries page.
	g := setup(t)
	gc := g.signIn(t, readKey)
	if code, page := get(t, gc, g.srv.URL+"/console/deliveries"); code != http.StatusNotFound || strings.Contains(page, `href="/console/deliveries"`) {
		t.Errorf("forwarding off: %d", code)
	}
}

// TestStaticAndHeaders: pages carry the CSP and frame headers.
func TestStaticAndHeaders(t *testing.T) {
	f := setup(t)
	c := f.client()
	resp, err := c.Get(f.srv.URL + "/console/login")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if !strings.Contains(resp.Header.Get("Content-Security-Policy"), "frame-ancestors 'none'") || resp.Header.Get("Cache-Control") != "no-store" {
		t.Errorf("headers: %v", resp.Header)
	}
	if code, css := get(t, c, f.srv.URL+"/console/static/console.css"); code != http.StatusOK || !strings.Contains(css, "--fg") {
		t.Errorf("stylesheet: %d", code)
	}
}

// TestExpiringSkipsRotatedAndRevoked: the console asks for a rotation
// only of a live reusable token near its end, as the store's warning: not
// of one already rotated or revoked (it said "expires soon: rotate it" of
// both). A live one near its end still gets it.
func TestExpiringSkipsRotatedAndRevoked(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	c2b := []daraja.Kind{daraja.C2BConfirmation}
	rotated := f.issue(t, verify.IssueRequest{Kinds: c2b, Shortcode: "600638", Reusable: true, TTL: "720h"})
	if _, err := f.issuer.Rotate(ctx, verify.RotateRequest{ID: rotated.ID, Overlap: "48h"}); err != nil {
		t.Fatal(err)
	}
	revoked := f.issue(t, verify.IssueRequest{Kinds: c2b, Shortcode: "600638", Reusable: true, TTL: "72h"})
	if err := f.issuer.Revoke(ctx, revoked.ID); err != nil {
		t.Fatal(err)
	}
	live := f.issue(t, verify.IssueRequest{Kinds: c2b, Shortcode: "600638", Reusable: true, TTL: "72h"})
	c := f.signIn(t, readKey)
	if _, page := get(t, c, f.srv.URL+"/console/tokens/"+live.ID); !strings.Contains(page, "expires soon: rotate it") {
		t.Errorf("a live reusable token 72h from its end: no rotation asked for")
	}
	for name, id := range map[string]string{"rotated": rotated.ID, "revoked": revoked.ID} {
		code, page := get(t, c, f.srv.URL+"/console/tokens/"+id)
		if code != http.StatusOK {
			t.Fatalf("%s: %d", name, code)
		}
		if strings.Contains(page, "expires soon: rotate it") {
			t.Errorf("%s reusable token %s: its page says \"expires soon: rotate it\"", name, id)
		}
	}
}
