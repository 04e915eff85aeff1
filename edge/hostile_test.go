package edge

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/verify"
)

// rawConn opens a TLS connection from src to the edge (HTTP/1.1 only).
func (h *harness) rawConn(src string) *tls.Conn {
	h.t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", h.srv.PublicAddr().String(), &tls.Config{RootCAs: h.roots, NextProtos: []string{"http/1.1"}})
	if err != nil {
		h.t.Fatal(err)
	}
	return c
}

// rawStatus writes req on a new connection from src and returns the status
// of the first response (0: the connection closed without one).
func (h *harness) rawStatus(src, req string) int {
	h.t.Helper()
	c := h.rawConn(src)
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		return 0
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestHostileRequests: every hostile case gets its answer, publishes
// nothing, and leaves the server serving; at the end goroutines and memory
// are back near where they started.
func TestHostileRequests(t *testing.T) {
	h := start(t, func(c *config.Config) {
		c.Limits.ReadHeaderTimeout = time.Second
		c.Limits.ReadTimeout = 2 * time.Second
		c.Limits.RejectsBurst = 1000 // the rate limit has its own test
	})
	addr := h.srv.PublicAddr().String()
	stk := fixture(t, "stk_callback_success.json")
	tok := func() string {
		return h.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379"}).Token
	}
	var cases, requests, serverErrors, liveness int
	served := 0
	stillServes := func(t *testing.T) {
		t.Helper()
		liveness++
		body := bytes.Replace(stk, []byte("ws_CO_191220191020363925"), []byte(fmt.Sprintf("ws_CO_alive_%d", liveness)), 1)
		if r := h.callback(allowedSrc, daraja.STKCallback, tok(), body); r.status != http.StatusOK {
			t.Fatalf("server no longer serves: %d %s", r.status, r.body)
		}
		served++
	}
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	goroutinesBefore := runtime.NumGoroutine()
	baseline := h.count()

	check := func(name string, want []int, send func() int) {
		t.Run(name, func(t *testing.T) {
			cases++
			published := h.count()
			got := send()
			requests++
			if got >= 500 {
				serverErrors++
			}
			ok := false
			for _, w := range want {
				ok = ok || got == w
			}
			if !ok {
				t.Errorf("status %d, want one of %v", got, want)
			}
			if h.count() != published {
				t.Errorf("a hostile request published")
			}
			stillServes(t)
		})
	}
	req := func(method, target string, headers map[string]string, body string) string {
		var b strings.Builder
		fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\n", method, target, addr)
		for k, v := range headers {
			fmt.Fprintf(&b, "%s: %s\r\n", k, v)
		}
		if body != "" {
			fmt.Fprintf(&b, "Content-Length: %d\r\n", len(body))
		}
		b.WriteString("\r\n" + body)
		return b.String()
	}
	const closed = 0

	check("slow headers (slowloris)", []int{closed, http.StatusRequestTimeout}, func() int {
		c := h.rawConn(allowedSrc)
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(15 * time.Second))
		_, _ = io.WriteString(c, "POST /stk/callback?t="+tok()+" HTTP/1.1\r\nHost: x\r\n")
		for range 5 { // one header line a second: past read_header_timeout
			time.Sleep(time.Second)
			if _, err := io.WriteString(c, "X-Slow: 1\r\n"); err != nil {
				return closed
			}
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return closed
		}
		resp.Body.Close()
		return resp.StatusCode
	})
	check("slow body", []int{closed, http.StatusBadRequest}, func() int {
		c := h.rawConn(allowedSrc)
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(15 * time.Second))
		_, _ = io.WriteString(c, "POST /stk/callback?t="+tok()+" HTTP/1.1\r\nHost: x\r\nContent-Length: 400\r\n\r\n{")
		for range 4 { // a byte a second: past read_timeout
			time.Sleep(time.Second)
			if _, err := io.WriteString(c, " "); err != nil {
				break
			}
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return closed
		}
		resp.Body.Close()
		return resp.StatusCode
	})
	check("huge headers", []int{http.StatusRequestHeaderFieldsTooLarge}, func() int {
		return h.rawStatus(allowedSrc, req("POST", "/stk/callback?t="+tok(), map[string]string{"X-Big": strings.Repeat("a", 64<<10)}, string(stk)))
	})
	check("huge declared body", []int{http.StatusRequestEntityTooLarge}, func() int {
		return h.rawStatus(allowedSrc, "POST /stk/callback?t="+tok()+" HTTP/1.1\r\nHost: x\r\nContent-Length: 104857600\r\n\r\n{")
	})
	check("endless chunked body", []int{http.StatusRequestEntityTooLarge}, func() int {
		c := h.rawConn(allowedSrc)
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(15 * time.Second))
		_, _ = io.WriteString(c, "POST /stk/callback?t="+tok()+" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
		done := make(chan int, 1)
		go func() {
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				done <- closed
				return
			}
			resp.Body.Close()
			done <- resp.StatusCode
		}()
		chunk := fmt.Sprintf("%x\r\n%s\r\n", 1024, strings.Repeat(" ", 1024))
		for i := 0; i < 100_000; i++ { // 100 MiB at most; the answer comes long before
			if _, err := io.WriteString(c, chunk); err != nil {
				break
			}
			select {
			case st := <-done:
				return st
			default:
			}
		}
		return <-done
	})
	for name, body := range map[string]string{
		"deep JSON nesting":     `{"Body":` + strings.Repeat(`{"a":`, 5000) + "1" + strings.Repeat("}", 5001),
		"duplicate JSON keys":   `{"Body":{"stkCallback":{"CheckoutRequestID":"ws_1","checkoutrequestid":"ws_2","ResultCode":0}}}`,
		"invalid UTF-8":         "{\"Body\":{\"stkCallback\":{\"CheckoutRequestID\":\"ws_\xff\xfe\",\"ResultCode\":0}}}",
		"number out of range":   `{"Body":{"stkCallback":{"CheckoutRequestID":"ws_1","ResultCode":1e999}}}`,
		"control chars in id":   `{"Body":{"stkCallback":{"CheckoutRequestID":"ws\r\nNats-Msg-Id: x","ResultCode":0}}}`,
		"JSON then more":        `{"Body":{"stkCallback":{"CheckoutRequestID":"ws_1","ResultCode":0}}}{"x":1}`,
		"array instead":         `[{"Body":{}}]`,
		"empty body":            ``,
		"nul bytes":             "{\"Body\":\x00}",
		"huge string in a key":  `{"` + strings.Repeat("K", 3000) + `":1}`,
		"null identifying id":   `{"Body":{"stkCallback":{"CheckoutRequestID":null,"ResultCode":0}}}`,
		"result code object":    `{"Body":{"stkCallback":{"CheckoutRequestID":"ws_1","ResultCode":{"$gt":""}}}}`,
		"wrong kind for path":   string(fixture(t, "c2b_confirmation.json")),
		"bom before the object": "\xef\xbb\xbf" + string(stk),
	} {
		want := []int{http.StatusBadRequest}
		if len(body) > 4096 {
			want = []int{http.StatusRequestEntityTooLarge}
		}
		check(name, want, func() int {
			return h.rawStatus(allowedSrc, req("POST", "/stk/callback?t="+tok(), nil, body))
		})
	}
	for _, target := range []string{"/stk/callback/", "//stk/callback", "/stk/%63allback", "/../stk/callback",
		"/stk/./callback", "/STK/CALLBACK", "/stk/callback%00", "/stk/callback;x=1", "/stk%2Fcallback"} {
		check("path "+target, []int{http.StatusNotFound, http.StatusBadRequest}, func() int {
			return h.rawStatus(allowedSrc, req("POST", target+"?t="+tok(), nil, string(stk)))
		})
	}
	check("two tokens", []int{http.StatusForbidden}, func() int {
		return h.rawStatus(allowedSrc, req("POST", "/stk/callback?t="+tok()+"&t="+tok(), nil, string(stk)))
	})
	check("token in a header", []int{http.StatusForbidden}, func() int {
		return h.rawStatus(allowedSrc, req("POST", "/stk/callback", map[string]string{"Authorization": "Bearer " + tok(), "T": tok()}, string(stk)))
	})
	check("token in a fragment", []int{http.StatusForbidden, http.StatusBadRequest, http.StatusNotFound}, func() int {
		return h.rawStatus(allowedSrc, req("POST", "/stk/callback#t="+tok(), nil, string(stk)))
	})
	check("token percent-encoded", []int{http.StatusForbidden}, func() int {
		t := tok()
		return h.rawStatus(allowedSrc, req("POST", "/stk/callback?t=%"+fmt.Sprintf("%02X", t[0])+t[1:], nil, string(stk)))
	})
	check("method override header on GET", []int{http.StatusMethodNotAllowed}, func() int {
		return h.rawStatus(allowedSrc, req("GET", "/stk/callback?t="+tok(), map[string]string{"X-HTTP-Method-Override": "POST"}, ""))
	})
	check("method override to DELETE on POST without a token", []int{http.StatusForbidden}, func() int {
		return h.rawStatus(allowedSrc, req("POST", "/stk/callback", map[string]string{"X-HTTP-Method-Override": "DELETE", "X-Method-Override": "PUT"}, string(stk)))
	})
	check("Expect: 100-continue from a stranger", []int{http.StatusForbidden}, func() int {
		c := h.rawConn(strangerSrc)
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = io.WriteString(c, "POST /stk/callback?t="+tok()+" HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 400\r\n\r\n")
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return closed
		}
		if strings.Contains(line, "100") {
			t.Errorf("the edge invited a stranger's body: %q", line)
		}
		var st int
		fmt.Sscanf(line, "HTTP/1.1 %d", &st)
		return st
	})
	check("HTTP/2 rapid reset", []int{closed}, func() int { return h2Flood(t, h, tok(), true) })
	check("HTTP/2 stream flood", []int{closed}, func() int { return h2Flood(t, h, tok(), false) })
	check("TRACE", []int{http.StatusMethodNotAllowed}, func() int {
		return h.rawStatus(allowedSrc, req("TRACE", "/stk/callback?t="+tok(), nil, ""))
	})

	for _, c := range h.clients {
		c.CloseIdleConnections()
	}
	var goroutinesAfter int
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		goroutinesAfter = runtime.NumGoroutine()
		if goroutinesAfter <= goroutinesBefore+5 || time.Now().After(deadline) {
			break
		}
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	published := h.count() - baseline - served
	t.Logf("HOSTILE cases=%d requests=%d published=%d server_errors=%d goroutines %d→%d heap %dKiB→%dKiB",
		cases, requests, published, serverErrors, goroutinesBefore, goroutinesAfter, before.HeapAlloc>>10, after.HeapAlloc>>10)
	fmt.Printf("HOSTILE cases=%d requests=%d published=%d server_errors=%d goroutines %d→%d heap %dKiB→%dKiB\n",
		cases, requests, published, serverErrors, goroutinesBefore, goroutinesAfter, before.HeapAlloc>>10, after.HeapAlloc>>10)
	if published != 0 || serverErrors != 0 {
		t.Errorf("published %d, server errors %d", published, serverErrors)
	}
	if goroutinesAfter > goroutinesBefore+5 {
		t.Errorf("goroutines grew from %d to %d", goroutinesBefore, goroutinesAfter)
	}
	if after.HeapAlloc > before.HeapAlloc+32<<20 {
		t.Errorf("heap grew from %d to %d bytes", before.HeapAlloc, after.HeapAlloc)
	}
}

// h2Flood opens an HTTP/2 connection and either opens and resets streams as
// fast as it can (rapid reset, CVE-2023-44487) or opens far more streams
// than allowed without reading. Each stream carries a valid callback with a
// valid token, so a server that ran the handlers would publish.
func h2Flood(t *testing.T, h *harness, token string, reset bool) int {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(allowedSrc)}, Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", h.srv.PublicAddr().String(), &tls.Config{RootCAs: h.roots, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.ConnectionState().NegotiatedProtocol != "h2" {
		t.Fatal("no HTTP/2")
	}
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	_, _ = io.WriteString(c, http2.ClientPreface)
	fr := http2.NewFramer(c, c)
	_ = fr.WriteSettings()
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	go func() { // drain what the server sends, so it is never blocked writing
		for {
			if _, err := fr.ReadFrame(); err != nil {
				return
			}
		}
	}()
	for i := uint32(0); i < 5000; i++ {
		id := 2*i + 1
		hb.Reset()
		for _, f := range [][2]string{{":method", "POST"}, {":scheme", "https"}, {":authority", "x"},
			{":path", "/stk/callback?t=" + token}, {"content-type", "application/json"}} {
			_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true}); err != nil {
			break
		}
		if reset {
			if err := fr.WriteRSTStream(id, http2.ErrCodeCancel); err != nil {
				break
			}
		}
	}
	return 0 // the connection is simply dropped by the client; what matters is nothing published and the server serving
}

// TestRejectRateLimit: a scanner outside the allowlist is answered 429 once
// past its burst, and its flood is neither logged nor published per
// request.
func TestRejectRateLimit(t *testing.T) {
	h := start(t, func(c *config.Config) {
		c.Limits.RejectsPerSecond = 1
		c.Limits.RejectsBurst = 5
	})
	statuses := map[int]int{}
	for range 40 {
		statuses[h.post(strangerSrc, "POST", "/stk/callback?t=x", []byte("{}"), nil).status]++
	}
	if statuses[403] != 5 || statuses[429] != 35 {
		t.Fatalf("statuses %v, want 5×403 then 35×429", statuses)
	}
	logged := len(h.logs.FilterMessage("callback").All())
	if logged > 6 {
		t.Errorf("%d request log lines for a rate-limited scanner", logged)
	}
	// Daraja itself is never rate limited.
	for range 20 {
		if r := h.post(allowedSrc, "POST", "/stk/callback?t=x", []byte("{}"), nil); r.status != 403 {
			t.Fatalf("allowlisted source limited: %d", r.status)
		}
	}
	m := h.scrape()
	if m[`daraja_edge_rejections_total{reason="rate_limited"}`] != 35 {
		t.Errorf("rate_limited metric = %v", m[`daraja_edge_rejections_total{reason="rate_limited"}`])
	}
}

// TestAdminHardening: hashed keys work, the admin API is rate limited, and
// a non-loopback admin listener needs TLS or an explicit opt-in.
func TestAdminHardening(t *testing.T) {
	cfg := testConfig(t)
	cfg.Admin.Listen = "0.0.0.0:0"
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "admin.listen") {
		t.Errorf("non-loopback admin without TLS accepted: %v", err)
	}
	cfg.Admin.AllowPlaintextRemote = true
	if err := cfg.Validate(); err != nil {
		t.Errorf("explicit opt-in refused: %v", err)
	}

	key := "hashed-admin-key-0123456789"
	sum := sha256Hex(key)
	h := start(t, func(c *config.Config) {
		c.Admin.APIKeys = []string{"sha256:" + sum}
		c.Admin.AuthFailuresPerSecond = 0.5
	})
	req := verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379"}
	if status, body := h.admin(http.MethodPost, "/v1/tokens", key, req); status != http.StatusCreated {
		t.Fatalf("hashed key refused: %d %s", status, body)
	}
	if status, _ := h.admin(http.MethodPost, "/v1/tokens", "sha256:"+sum, req); status != http.StatusUnauthorized {
		t.Errorf("the hash itself accepted as a key: %d", status)
	}
	// Legitimate issuing is never limited.
	for range 30 {
		if status, _ := h.admin(http.MethodPost, "/v1/tokens", key, req); status != http.StatusCreated {
			t.Fatalf("valid key limited: %d", status)
		}
	}
	// Guessing keys is: after the burst, even the right key gets 429.
	limited := 0
	for range 20 {
		if status, _ := h.admin(http.MethodPost, "/v1/tokens", "wrong-key-guess-000000", req); status == http.StatusTooManyRequests {
			limited++
		}
	}
	if limited < 10 {
		t.Errorf("only %d of 20 key guesses limited", limited)
	}
	if status, _ := h.admin(http.MethodPost, "/v1/tokens", key, req); status != http.StatusTooManyRequests {
		t.Errorf("a blocked client still reaches the key check: %d", status)
	}
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}
