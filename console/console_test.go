package console

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/internal/natstest"
	"github.com/daraja-edge/daraja-edge/verify"
)

const (
	adminKey = "console-test-admin-key-0123456789"
	readKey  = "console-test-read-key-0123456789"
)

type fixture struct {
	srv    *httptest.Server
	js     jetstream.JetStream
	nc     *nats.Conn
	issuer *verify.Issuer
}

func setup(t *testing.T) *fixture {
	t.Helper()
	ns := natstest.Server(t)
	nc, js := natstest.Connect(t, ns)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "DARAJA", Subjects: []string{"daraja.cb.>", "daraja.missing.>"}}); err != nil {
		t.Fatal(err)
	}
	store, err := verify.NewStore(ctx, js, verify.StoreOptions{Bucket: "daraja_tokens", Replicas: 1, Retain: 48 * time.Hour}, nil)
	if err != nil {
		t.Fatal(err)
	}
	iss := &verify.Issuer{Store: store, PublicURL: "https://127.0.0.1:1", QueryParam: "t",
		Limits: verify.Limits{DefaultTTL: time.Hour, MaxTTL: 24 * time.Hour}}
	c, err := New(ctx, Options{Tokens: iss, Check: store.Authorize, NATS: nc, JS: js, Prefix: "daraja", Stream: "DARAJA",
		Gatherer: prometheus.NewRegistry(), Ready: func(context.Context) error { return nil },
		Keys: []string{adminKey}, ReadKeys: []string{readKey}, PublicURL: "https://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(c)
	t.Cleanup(srv.Close)
	return &fixture{srv: srv, js: js, nc: nc, issuer: iss}
}

func client(t *testing.T) *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func (f *fixture) signIn(t *testing.T, key string) *http.Client {
	t.Helper()
	c := client(t)
	resp, err := c.PostForm(f.srv.URL+"/console/login", url.Values{"key": {key}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther {
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

var csrfRe = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func csrfOf(t *testing.T, page string) string {
	m := csrfRe.FindStringSubmatch(page)
	if m == nil {
		t.Fatal("no CSRF token on the page")
	}
	return m[1]
}

func TestSignIn(t *testing.T) {
	f := setup(t)
	c := client(t)
	if code, _ := get(t, c, f.srv.URL+"/console/"); code != http.StatusSeeOther {
		t.Fatalf("no session: %d, want a redirect to sign-in", code)
	}
	resp, _ := c.PostForm(f.srv.URL+"/console/login", url.Values{"key": {"wrong"}})
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || len(resp.Cookies()) != 0 {
		t.Fatalf("wrong key: %d, cookies %v", resp.StatusCode, resp.Cookies())
	}
	resp, _ = c.PostForm(f.srv.URL+"/console/login", url.Values{"key": {adminKey}})
	resp.Body.Close()
	ck := resp.Cookies()
	if resp.StatusCode != http.StatusSeeOther || len(ck) != 1 || !ck[0].HttpOnly || ck[0].SameSite != http.SameSiteStrictMode || ck[0].MaxAge <= 0 {
		t.Fatalf("sign-in: %d, cookies %+v", resp.StatusCode, ck)
	}
	if strings.Contains(ck[0].Value, adminKey) {
		t.Fatal("the key is in the cookie")
	}
	code, body := get(t, c, f.srv.URL+"/console/")
	if code != http.StatusOK || strings.Contains(body, adminKey) {
		t.Fatalf("live page: %d", code)
	}
	// Sign-out needs the CSRF token, then ends the session.
	resp, _ = c.PostForm(f.srv.URL+"/console/logout", url.Values{})
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("sign-out without CSRF: %d", resp.StatusCode)
	}
	resp, _ = c.PostForm(f.srv.URL+"/console/logout", url.Values{"csrf": {csrfOf(t, body)}})
	resp.Body.Close()
	if code, _ := get(t, c, f.srv.URL+"/console/"); code != http.StatusSeeOther {
		t.Fatalf("after sign-out: %d", code)
	}
}

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
			tok, err := f.issuer.Issue(ctx, verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379"})
			if err != nil {
				t.Fatal(err)
			}
			c := f.signIn(t, tc.key)
			_, page := get(t, c, f.srv.URL+"/console/tokens")
			v := url.Values{"confirm": {"yes"}}
			if tc.csrf {
				v.Set("csrf", csrfOf(t, page))
			}
			resp, err := c.PostForm(f.srv.URL+"/console/tokens/"+tok.ID+"/revoke", v)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			st, _ := f.issuer.Status(ctx, tok.ID)
			if resp.StatusCode != tc.want || (st.State == verify.StateRevoked) != (tc.want == http.StatusSeeOther) {
				t.Fatalf("revoke: %d, state %s", resp.StatusCode, st.State)
			}
		})
	}
}

const stkBody = `{"Body":{"stkCallback":{"MerchantRequestID":"29115-34620561-1","CheckoutRequestID":"ws_CO_03082023134725382708374149","ResultCode":0,"ResultDesc":"ok",
"CallbackMetadata":{"Item":[{"Name":"Amount","Value":1.00},{"Name":"MpesaReceiptNumber","Value":"NLJ7RT61SV"},{"Name":"PhoneNumber","Value":254708374149}]}}},"note":"https://x/stk/callback?t=SECRETTOKENVALUE"}`

func publishCallback(t *testing.T, js jetstream.JetStream) uint64 {
	m := nats.NewMsg("daraja.cb.stk.callback.174379.tok_abcdefghijklmnop")
	m.Header.Set("Daraja-Kind", "stk.callback")
	m.Header.Set("Daraja-Shortcode", "174379")
	m.Header.Set("Daraja-Transaction-Id", "ws_CO_03082023134725382708374149")
	m.Header.Set("Nats-Msg-Id", "stk.callback:ws_CO_03082023134725382708374149")
	m.Header.Set("Daraja-Reference", "ORDER-1")
	m.Header.Set("Daraja-Source-Ip", "127.0.0.2")
	m.Data = []byte(stkBody)
	ack, err := js.PublishMsg(context.Background(), m)
	if err != nil {
		t.Fatal(err)
	}
	return ack.Sequence
}

func TestCallbackMasked(t *testing.T) {
	f := setup(t)
	seq := publishCallback(t, f.js)
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
	if !strings.Contains(body, "NLJ7RT61SV") || !strings.Contains(body, "ORDER-1") {
		t.Error("the page lost what it should show")
	}
}

func TestEvents(t *testing.T) {
	f := setup(t)
	c := f.signIn(t, readKey)
	resp, err := c.Get(f.srv.URL + "/console/events?shortcode=174379")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	publishCallback(t, f.js)
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "data: ") {
			continue
		}
		if strings.Contains(line, "254708374149") || strings.Contains(line, "ws_CO_03082023134725382708374149") {
			t.Fatalf("unmasked: %s", line)
		}
		if !strings.Contains(line, `"msisdn":"2547******49"`) || !strings.Contains(line, `"reference":"ORDER-1"`) {
			t.Fatalf("event: %s", line)
		}
		return
	}
	t.Fatal("stream ended without the callback")
}
