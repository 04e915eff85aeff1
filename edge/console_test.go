package edge

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/verify"
)

// TestConsoleOnAdminListener: the console is served by the running edge on
// its admin listener: sign in with the admin key, the live view streams a
// callback delivered after it opened (phone number masked), and the admin
// API beside it is untouched.
func TestConsoleOnAdminListener(t *testing.T) {
	h := start(t, nil)
	base := "http://" + h.srv.AdminAddr().String()
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, Timeout: 30 * time.Second}
	// The sign-in form carries a token bound to a cookie set with it.
	resp, err := c.Get(base + "/console/login")
	if err != nil {
		t.Fatal(err)
	}
	form, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	m := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindSubmatch(form)
	if m == nil {
		t.Fatalf("sign-in page %d without a form token", resp.StatusCode)
	}
	resp, err = c.PostForm(base+"/console/login", url.Values{"key": {testAdminKey}, "csrf": {string(m[1])}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Request.URL.Path != "/console/" {
		t.Fatalf("sign in: %d at %s", resp.StatusCode, resp.Request.URL.Path)
	}
	if u, _ := url.Parse(base + "/console/"); len(jar.Cookies(u)) == 0 {
		t.Fatal("no session cookie after sign-in")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/console/events", nil)
	ev, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer ev.Body.Close()
	if ct := ev.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		t.Fatalf("events: %d %s", ev.StatusCode, ct)
	}
	tok := h.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379", Reference: "CONSOLE-1"})
	if r := h.callback(allowedSrc, daraja.STKCallback, tok.Token, fixture(t, "stk_callback_success.json")); r.status != 200 {
		t.Fatalf("callback: %d", r.status)
	}
	sc := bufio.NewScanner(ev.Body)
	seen, state := false, false
	for !seen && sc.Scan() {
		line := sc.Text()
		if strings.Contains(line, "254708374149") {
			t.Fatalf("live view leaked a phone number: %s", line)
		}
		state = state || strings.HasPrefix(line, "event: state")
		seen = strings.Contains(line, "CONSOLE-1")
	}
	// A stream that ends (EOF: Err is nil) or breaks before the callback
	// came is a failure either way.
	if !seen {
		t.Fatalf("the delivered callback never reached the live view (stream ended: %v)", sc.Err())
	}
	if !state {
		t.Error("no state event (readiness, spool) before the callback")
	}
	if status, _ := h.admin(http.MethodGet, "/v1/tokens/"+tok.ID, testAdminKey, nil); status != http.StatusOK {
		t.Errorf("admin API beside the console: %d", status)
	}
}
