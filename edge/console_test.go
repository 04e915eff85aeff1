package edge

import (
	"bufio"
	"context"
	"net/http"
	"net/http/cookiejar"
	"net/url"
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
	resp, err := c.PostForm(base+"/console/login", url.Values{"key": {testAdminKey}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("sign in: %d", resp.StatusCode)
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
	for sc.Scan() {
		line := sc.Text()
		if strings.Contains(line, "254708374149") {
			t.Fatalf("live view leaked a phone number: %s", line)
		}
		if strings.Contains(line, "CONSOLE-1") {
			break
		}
	}
	if sc.Err() != nil {
		t.Fatalf("the delivered callback never reached the live view: %v", sc.Err())
	}
	if status, _ := h.admin(http.MethodGet, "/v1/tokens/"+tok.ID, testAdminKey, nil); status != http.StatusOK {
		t.Errorf("admin API beside the console: %d", status)
	}
}
