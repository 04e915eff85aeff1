//go:build browser

package browser

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/verify"
)

// browser is one headless Chromium tab.
type browser struct {
	t   *testing.T
	ctx context.Context
}

// chromium finds the browser: $DARAJA_CHROMIUM, else chromium on PATH
// (Debian's package). The browser tag asks for this test, so a missing
// browser fails it rather than skipping it.
func chromium(t *testing.T) string {
	if p := os.Getenv("DARAJA_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("no chromium on PATH (apt-get install -y chromium, or set DARAJA_CHROMIUM)")
	return ""
}

func newBrowser(t *testing.T) *browser {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 800),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	// The whole walk through gets one generous deadline: the machine is
	// shared and slow.
	ctx, cancelTimeout := context.WithTimeout(ctx, 10*time.Minute)
	t.Cleanup(func() { cancelTimeout(); cancel(); cancelAlloc() })
	b := &browser{t: t, ctx: ctx}
	b.do(chromedp.EmulateViewport(1280, 800))
	return b
}

func (b *browser) do(steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	if err := chromedp.Do(b.ctx, steps...); err != nil {
		b.t.Fatalf("browser: %v", err)
	}
}

// js evaluates expr and returns its value as T.
func js[T any](b *browser, expr string) T {
	b.t.Helper()
	v, err := chromedp.Run(b.ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		b.t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// jsAwait evaluates expr, a promise, and returns what it resolves to.
func jsAwait[T any](b *browser, expr string) T {
	b.t.Helper()
	v, err := chromedp.Run(b.ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		b.t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// open navigates to u and waits for it to load.
func (b *browser) open(u string) { b.t.Helper(); b.do(chromedp.Navigate(u)) }

// click clicks sel and waits for the page it leads to.
func (b *browser) click(sel string) {
	b.t.Helper()
	if _, err := chromedp.Run(b.ctx, chromedp.WaitEvent(page.LoadEventFired, nil, chromedp.Click(chromedp.CSS(sel)))); err != nil {
		b.t.Fatalf("click %s: %v", sel, err)
	}
}

// clickJS clicks the element expr finds and waits for the page it leads
// to.
func (b *browser) clickJS(expr string) {
	b.t.Helper()
	if _, err := chromedp.Run(b.ctx, chromedp.WaitEvent(page.LoadEventFired, nil, chromedp.Evaluate[chromedp.Void]("("+expr+").click()"))); err != nil {
		b.t.Fatalf("click %s: %v", expr, err)
	}
}

// wait polls the predicate expr in the page until it holds, within a
// generous deadline (no timing is asserted).
func (b *browser) wait(what, expr string) {
	b.t.Helper()
	if _, err := chromedp.Run(b.ctx, chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingTimeout(30*time.Second))); err != nil {
		b.t.Fatalf("waiting for %s: %v", what, err)
	}
}

func (b *browser) text(sel string) string {
	b.t.Helper()
	return js[string](b, `(document.querySelector(`+quote(sel)+`)||{textContent:"<absent>"}).textContent`)
}

func (b *browser) path() string { return js[string](b, `location.pathname + location.search`) }

func quote(s string) string { return fmt.Sprintf("%q", s) }

// html is the page's whole markup.
func (b *browser) html() string { return js[string](b, `document.documentElement.outerHTML`) }

// noSecrets fails if the page shows any of secrets.
func (b *browser) noSecrets(secrets ...string) {
	b.t.Helper()
	h := b.html()
	for _, s := range secrets {
		if s != "" && strings.Contains(h, s) {
			b.t.Errorf("%s shows a secret (%.6s…)", b.path(), s)
		}
	}
}

// accessible checks the page: every visible form control has a label, no
// horizontal scroll of the page itself at the current width, and the
// focused element after a Tab draws a visible outline.
func (b *browser) accessible() {
	b.t.Helper()
	unlabelled := js[[]string](b, `Array.from(document.querySelectorAll('input:not([type=hidden]),select,textarea'))
		.filter(e => e.labels.length === 0 && !e.getAttribute('aria-label')).map(e => e.name || e.id)`)
	if len(unlabelled) > 0 {
		b.t.Errorf("%s: controls without a label: %v", b.path(), unlabelled)
	}
	if over := js[int](b, `document.documentElement.scrollWidth - document.documentElement.clientWidth`); over > 0 {
		b.t.Errorf("%s: the page scrolls sideways by %dpx at %dpx width", b.path(), over, js[int](b, `window.innerWidth`))
	}
	// Walk the first Tab stops from the top of the page: each must draw
	// a visible focus ring.
	// Focus starts at the top: the body, focused for a moment.
	b.do(chromedp.Evaluate[chromedp.Void](`window.scrollTo(0, 0); document.body.tabIndex = -1; document.body.focus(); document.body.removeAttribute('tabindex')`))
	stops := min(6, js[int](b, `document.querySelectorAll('a[href],button,input:not([type=hidden]),select').length`))
	for i := range stops {
		b.do(chromedp.KeyEvent(kb.Tab))
		focus := js[string](b, `(() => { const e = document.activeElement; if (!e || e === document.body) return 'nothing focused';
			const s = getComputedStyle(e); return s.outlineStyle === 'none' || parseFloat(s.outlineWidth) < 2 ? 'no outline on ' + e.outerHTML.slice(0, 60) : 'ok' })()`)
		if focus != "ok" {
			b.t.Errorf("%s: Tab stop %d: keyboard focus not visible: %s", b.path(), i+1, focus)
		}
	}
}

// shoot writes the page at desktop and phone width under docs/console/
// when UPDATE_SCREENSHOTS=1, and checks the page at phone width either
// way.
func (b *browser) shoot(name string) {
	b.t.Helper()
	b.accessible()
	b.do(chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile, chromedp.EmulateScale(1)))
	b.accessible()
	if os.Getenv("UPDATE_SCREENSHOTS") == "1" {
		b.write(name+"-phone.png", chromedp.FullScreenshot(100))
	}
	b.do(chromedp.EmulateViewport(1280, 800, chromedp.EmulateScale(1)))
	if os.Getenv("UPDATE_SCREENSHOTS") == "1" {
		b.write(name+"-desktop.png", chromedp.FullScreenshot(100))
	}
}

func (b *browser) write(name string, a chromedp.Action[[]byte]) {
	b.t.Helper()
	// Blur first: a caret or focus ring would make every run's picture
	// differ.
	b.do(chromedp.Evaluate[chromedp.Void](`document.activeElement && document.activeElement.blur && document.activeElement.blur()`))
	png, err := chromedp.Run(b.ctx, a)
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	dir := filepath.Join("..", "..", "docs", "console")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), png, 0o644); err != nil {
		b.t.Fatal(err)
	}
}

// sessionCookie is the console's session cookie for u ("" when none).
func (b *browser) sessionCookie(u string) string {
	b.t.Helper()
	res, err := chromedp.Call(b.ctx, network.GetCookies, network.GetCookiesParams{URLs: []string{u}})
	if err != nil {
		b.t.Fatal(err)
	}
	for _, c := range res.Cookies {
		if c.Name == "daraja_console" {
			if !c.HTTPOnly || c.SameSite != network.CookieSameSiteStrict {
				b.t.Errorf("session cookie: HttpOnly %v SameSite %q", c.HTTPOnly, c.SameSite)
			}
			return c.Value
		}
	}
	return ""
}

// signIn signs in with key from the sign-in page.
func (b *browser) signIn(base, key string) {
	b.t.Helper()
	b.open(base)
	if p := b.path(); p != "/console/login" {
		b.t.Fatalf("without a session %s opened %s, want the sign-in page", base, p)
	}
	b.do(chromedp.SendKeys(chromedp.CSS("#key"), key))
	b.click(`form[action="/console/login"] button[type=submit]`)
	if p := b.path(); p != "/console/" {
		b.t.Fatalf("after sign-in: %s (%s)", p, b.text(".error"))
	}
	b.wait("the live view to connect", `document.getElementById('state').textContent === 'live'`)
}

// TestConsole walks through the console of a running edge in Chromium,
// as an operator would, asserting on the DOM at each step.
func TestConsole(t *testing.T) {
	e := startEdge(t)
	b := newBrowser(t)
	base := e.consoleURL()
	stk := fixture(t, "stk_callback_success.json")

	// Sign-in page.
	b.open(base)
	if p := b.path(); p != "/console/login" {
		t.Fatalf("no session: %s, want the sign-in page", p)
	}
	if js[string](b, `document.querySelector('input[name=csrf]').value`) == "" {
		t.Error("the sign-in form carries no form token")
	}
	b.shoot("login")
	b.signIn(base, adminKey)
	b.wait("the edge's state line", `document.getElementById('edge-state').getAttribute('data-ready') === 'true'`)
	if s := b.text("#edge-state"); !strings.Contains(s, "ready") || !strings.Contains(s, "spool empty") || !strings.Contains(s, "NATS connected") {
		t.Errorf("state line: %q", s)
	}

	// A callback from the allowlisted source appears in the live view.
	tok := e.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379", Reference: "BROWSER-1"})
	b.do(chromedp.Evaluate[chromedp.Void](`window.__seen = {}; new MutationObserver(() => {
		document.querySelectorAll('#live tbody tr').forEach(tr => { const r = tr.querySelector('.c-reference');
			if (r && !window.__seen[r.textContent]) window.__seen[r.textContent] = Date.now(); });
	}).observe(document.querySelector('#live tbody'), {childList: true})`))
	sent := time.Now()
	if code := e.callback(daraja.STKCallback, tok.Token, stk); code != 200 {
		t.Fatalf("callback: %d", code)
	}
	answered := time.Now()
	b.wait("the callback row", `!!window.__seen['BROWSER-1']`)
	seen := time.UnixMilli(js[int64](b, `window.__seen['BROWSER-1']`))
	t.Logf("live view latency: POST sent → row in the DOM %v; 200 answered → row %v",
		seen.Sub(sent).Round(time.Millisecond), seen.Sub(answered).Round(time.Millisecond))
	row := `#live tbody tr.callback`
	if got := b.text(row + " .c-kind"); got != "stk.callback" {
		t.Errorf("row kind %q", got)
	}
	if got := b.text(row + " .c-msisdn"); got != "2547******49" {
		t.Errorf("row phone %q, want masked", got)
	}
	if got := b.text(row + " .c-amount"); got == "" {
		t.Error("row without an amount")
	}
	// A C2B payment and a refused callback (unknown token) join it.
	shop := e.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.C2BConfirmation}, Shortcode: "600638", Reference: "SHOP-C2B"})
	c2bBody := fixture(t, "c2b_confirmation.json")
	if code := e.callback(daraja.C2BConfirmation, shop.Token, c2bBody); code != 200 {
		t.Fatalf("c2b callback: %d", code)
	}
	if code := e.callback(daraja.STKCallback, strings.Repeat("x", 40), stk); code != 403 {
		t.Fatalf("callback with an unknown token: %d, want 403", code)
	}
	b.wait("the rejection row", `document.querySelector('#live tr.rejected') !== null && !!window.__seen['SHOP-C2B']`)
	if got := b.text("#live tr.rejected .c-result_code"); got != "token_unknown" {
		t.Errorf("rejection row reason %q", got)
	}
	b.noSecrets("254708374149", tok.Token, shop.Token, adminKey)
	b.shoot("live")

	// Filter by kind and shortcode: the filter lands in the URL, keeps
	// other traffic out, and survives a refresh.
	b.do(chromedp.SetValue(chromedp.CSS("#f-kind"), "stk.callback"), chromedp.SendKeys(chromedp.CSS("#f-shortcode"), "174379"))
	b.click("#filter")
	if p := b.path(); !strings.Contains(p, "kind=stk.callback") || !strings.Contains(p, "shortcode=174379") {
		t.Fatalf("filter not in the URL: %s", p)
	}
	b.wait("the live view to reconnect", `document.getElementById('state').textContent === 'live'`)
	c2b := e.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.C2BConfirmation}, Shortcode: "600638", Reference: "BROWSER-C2B"})
	if code := e.callback(daraja.C2BConfirmation, c2b.Token, []byte(strings.Replace(string(c2bBody), "RKTQDM7W6S", "RKTQDM7W7S", 1))); code != 200 {
		t.Fatalf("c2b callback: %d", code)
	}
	tok2 := e.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379", Reference: "BROWSER-2"})
	stk2 := []byte(strings.Replace(string(stk), "ws_CO_", "ws_CO_9", 1))
	if code := e.callback(daraja.STKCallback, tok2.Token, stk2); code != 200 {
		t.Fatalf("second callback: %d", code)
	}
	b.wait("the filtered-in callback", `Array.from(document.querySelectorAll('#live .c-reference')).some(td => td.textContent === 'BROWSER-2')`)
	if js[bool](b, `Array.from(document.querySelectorAll('#live .c-reference')).some(td => td.textContent === 'BROWSER-C2B')`) {
		t.Error("the kind filter let a c2b.confirmation through")
	}
	b.do(chromedp.Reload())
	if p := b.path(); !strings.Contains(p, "kind=stk.callback") || !strings.Contains(p, "shortcode=174379") {
		t.Errorf("after refresh: %s", p)
	}
	if k, s := js[string](b, `document.getElementById('f-kind').value`), js[string](b, `document.getElementById('f-shortcode').value`); k != "stk.callback" || s != "174379" {
		t.Errorf("the form lost the filter on refresh: kind %q shortcode %q", k, s)
	}
	b.wait("the backlog after refresh", `Array.from(document.querySelectorAll('#live .c-reference')).some(td => td.textContent === 'BROWSER-1')`)
	if js[bool](b, `Array.from(document.querySelectorAll('#live .c-reference')).some(td => td.textContent.endsWith('C2B')) || document.querySelector('#live tr.rejected') !== null`) {
		t.Error("after refresh the filter lets a c2b.confirmation or a rejection through")
	}

	// Open the first callback: headers and body, phone masked, no token.
	b.clickJS(`Array.from(document.querySelectorAll('#live .c-reference')).find(td => td.textContent === 'BROWSER-1').closest('tr').querySelector('.c-transaction_id a')`)
	if p := b.path(); !strings.HasPrefix(p, "/console/callbacks/") {
		t.Fatalf("callback link led to %s", p)
	}
	headers, body := b.text("#headers"), b.text("#body")
	if !strings.Contains(headers, "Daraja-Kind") || !strings.Contains(headers, "stk.callback") || !strings.Contains(body, "MpesaReceiptNumber") {
		t.Errorf("callback page: headers %q body %.80q", headers, body)
	}
	if !strings.Contains(body, "2547******49") {
		t.Error("the body's phone number is not shown masked")
	}
	b.noSecrets("254708374149", tok.Token, tok2.Token)
	for deadline := time.Now().Add(60 * time.Second); !js[bool](b, `document.querySelector('#deliveries tr.d-delivered') !== null`); {
		if time.Now().After(deadline) {
			t.Fatalf("the callback page never showed a delivered record: %q", b.text("main"))
		}
		time.Sleep(300 * time.Millisecond)
		b.do(chromedp.Reload())
	}
	if att := b.text("#deliveries .attempts"); !strings.Contains(att, "HTTP 503") || !strings.Contains(att, "HTTP 200") {
		t.Errorf("attempts: %q, want the failed one and the delivered one", att)
	}
	b.shoot("callback")

	// Tokens: search by reference, open the token, revoke it.
	b.open(base + "tokens")
	b.do(chromedp.SendKeys(chromedp.CSS(`input[name=reference]`), "BROWSER-2"))
	b.click(`form[action="/console/tokens"] button[type=submit]`)
	if p := b.path(); !strings.Contains(p, "reference=BROWSER-2") {
		t.Errorf("token search not in the URL: %s", p)
	}
	ids := js[[]string](b, `Array.from(document.querySelectorAll('tbody td:first-child a')).map(a => a.textContent)`)
	if len(ids) != 1 || ids[0] != tok2.ID {
		t.Fatalf("search BROWSER-2: %v, want [%s]", ids, tok2.ID)
	}
	b.shoot("tokens")
	b.click(`tbody td:first-child a`)
	if got := b.text(`dd[data-kind="stk.callback"]`); !strings.Contains(got, "received") {
		t.Errorf("token page, stk.callback: %q, want its callback", got)
	}
	if js[string](b, `document.querySelector('dd[data-kind="stk.callback"] a').getAttribute('href')`) == "" {
		t.Error("no link to the token's callback")
	}
	b.shoot("token")
	// A forged request without the CSRF token revokes nothing.
	status := jsAwait[int](b, `fetch('/console/tokens/`+tok2.ID+`/revoke', {method: 'POST', body: new URLSearchParams({confirm: 'yes'})}).then(r => r.status)`)
	if status != 403 || b.text("#state-value") == "revoked" {
		t.Errorf("revoke without CSRF: %d", status)
	}
	b.click("#revoke")
	if !strings.Contains(b.text("main"), "Revoke token "+tok2.ID+"?") {
		t.Fatalf("no confirmation: %q", b.text("main"))
	}
	b.shoot("confirm")
	b.click(`button.danger`)
	if got := b.text("#state-value"); got != "revoked" || !strings.Contains(b.text(".notice"), "Token revoked") {
		t.Errorf("after revoke: state %q", got)
	}
	if js[bool](b, `document.getElementById('revoke') !== null`) {
		t.Error("a revoked token still offers revoke")
	}

	// Test a URL: the token is checked, the host reached, nothing stored.
	fresh := e.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback, daraja.B2CResult}, Shortcode: "174379", Reference: "BROWSER-TEST"})
	before := e.lastSeq()
	b.open(base + "test")
	b.do(chromedp.SendKeys(chromedp.CSS("#url"), fresh.URLs[string(daraja.STKCallback)]))
	b.click("#test")
	if got := b.text("#token-verdict"); !strings.Contains(got, "Known and valid for stk.callback") {
		t.Errorf("verdict %q", got)
	}
	if got := b.text("#reach"); !strings.Contains(got, "Reachable") || !strings.Contains(got, "405") {
		t.Errorf("reachability %q", got)
	}
	if got := b.text("#tls"); !strings.Contains(got, "not trusted") {
		t.Errorf("a self-signed certificate must be reported untrusted: %q", got)
	}
	if b.text("#expiry") == "" || b.text(`dd[data-kind="b2c.result"]`) != "waiting" || b.text(`dd[data-kind="stk.callback"]`) != "waiting" {
		t.Errorf("expiry %q, kinds %q %q", b.text("#expiry"), b.text(`dd[data-kind="stk.callback"]`), b.text(`dd[data-kind="b2c.result"]`))
	}
	b.noSecrets(fresh.Token)
	if after := e.lastSeq(); after != before {
		t.Errorf("the URL test changed the stream: last sequence %d -> %d", before, after)
	}
	if code := e.callback(daraja.STKCallback, fresh.Token, []byte(strings.Replace(string(stk), "ws_CO_", "ws_CO_7", 1))); code != 200 {
		t.Errorf("the tested token no longer takes its callback: %d", code)
	}
	b.shoot("test")

	// Health.
	b.open(base + "health")
	for sel, want := range map[string]string{"#h-ready": "ready", "#h-nats": "CONNECTED", "#h-bucket": "values", "#h-spool": "empty", "#h-allowlist": " entries"} {
		if got := b.text(sel); !strings.Contains(got, want) {
			t.Errorf("health %s: %q, want %q", sel, got, want)
		}
	}
	b.shoot("health")

	// Deliveries.
	b.open(base + "deliveries")
	if js[int](b, `document.querySelectorAll('#deliveries tr.d-delivered').length`) < 1 {
		t.Errorf("no delivered record: %q", b.text("#deliveries"))
	}
	b.shoot("deliveries")

	// Sign out: the session is gone, on the server too: the old cookie,
	// put back, opens nothing.
	b.open(base)
	old := b.sessionCookie(base)
	b.click("#signout")
	if p := b.path(); p != "/console/login" {
		t.Errorf("after sign-out: %s", p)
	}
	b.open(base + "tokens")
	if p := b.path(); p != "/console/login" {
		t.Errorf("after sign-out the tokens page opened: %s", p)
	}
	if c := b.sessionCookie(base); c != "" {
		t.Error("the session cookie outlived sign-out")
	}
	if _, err := chromedp.Call(b.ctx, network.SetCookie, network.SetCookieParams{Name: "daraja_console", Value: old, URL: base, Path: "/console/"}); err != nil {
		t.Fatal(err)
	}
	b.open(base + "tokens")
	if p := b.path(); p != "/console/login" {
		t.Errorf("the signed-out session's cookie still opens %s", p)
	}
	// The live stream refuses it too (fetch resolves at the headers, so a
	// stream that wrongly opened cannot hang the test).
	if status := jsAwait[int](b, `fetch('/console/events').then(r => { const s = r.status; r.body.cancel(); return s; })`); status != 401 {
		t.Errorf("after sign-out the events stream answered %d, want 401", status)
	}

	// A read-only key sees every page and no revoke button.
	other := e.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379", Reference: "BROWSER-RO"})
	b.signIn(base, readKey)
	if got := b.text(".badge"); got != "read-only" {
		t.Errorf("read-only badge: %q", got)
	}
	for _, p := range []string{"", "tokens", "tokens/" + other.ID, "test", "health", "deliveries"} {
		b.open(base + p)
		if got := b.path(); got != "/console/"+p {
			t.Errorf("read-only %s: at %s", p, got)
		}
		if h1 := b.text("h1"); h1 == "" || h1 == "Not found" || h1 == "Refused" {
			t.Errorf("read-only %s: %q", p, h1)
		}
	}
	b.open(base + "tokens/" + other.ID)
	if js[bool](b, `document.getElementById('revoke') !== null || document.querySelector('form[action$="/revoke"]') !== null`) {
		t.Error("a read-only session sees a revoke button")
	}
	b.click("#signout")
}
