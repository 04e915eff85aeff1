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
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
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
// nothing it should not (the HTTP/2 flood of one valid callback stores it
// once; the controls that show a body is otherwise valid store theirs), and
// leaves the server serving; at the end goroutines and memory are back
// near where they started.
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
		c := h.rawConn(proxySrc) // a stranger behind the trusted proxy (directly, it is closed at accept)
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = io.WriteString(c, "POST /stk/callback?t="+tok()+" HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: "+strangerSrc+"\r\nExpect: 100-continue\r\nContent-Length: 400\r\n\r\n")
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
	// Deep nesting in a body under every size limit, so the depth guard
	// and not the body cap is what refuses it. The same body nested a few
	// levels is accepted: nothing else in it is wrong.
	deep := func(levels int) (string, []byte) {
		id := fmt.Sprintf("ws_CO_deep_%d", levels)
		return id, []byte(`{"Body":{"stkCallback":{"MerchantRequestID":"m-deep","CheckoutRequestID":"` + id +
			`","ResultCode":0,"ResultDesc":"ok","Extra":` + strings.Repeat(`{"a":`, levels) + "1" + strings.Repeat("}", levels) + `}}}`)
	}
	t.Run("deep JSON nesting under the size limits", func(t *testing.T) {
		cases++
		_, control := deep(8)
		if r := h.callback(allowedSrc, daraja.STKCallback, tok(), control); r.status != http.StatusOK {
			t.Fatalf("the same body nested 8 levels: %d %s, want 200", r.status, r.body)
		}
		served++
		_, body := deep(300)
		if len(body) >= 2048 || int64(len(body)) >= h.cfg.Limits.MaxBodyBytes {
			t.Fatalf("body is %d bytes: not under every size limit", len(body))
		}
		published, malformed := h.count(), h.scrape()[`daraja_edge_rejections_total{reason="malformed_body"}`]
		tk := h.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379"})
		st := h.rawStatus(allowedSrc, req("POST", "/stk/callback?t="+tk.Token, nil, string(body)))
		requests++
		if st != http.StatusBadRequest {
			t.Errorf("status %d, want 400", st)
		}
		if got := h.scrape()[`daraja_edge_rejections_total{reason="malformed_body"}`]; got != malformed+1 {
			t.Errorf("malformed_body rejections %v → %v, want one more", malformed, got)
		}
		refusedByDepth := false
		for _, e := range h.logs.FilterMessage("callback").All() {
			if l, ok := e.ContextMap()["req"].(map[string]any); ok && l["token_id"] == tk.ID {
				refusedByDepth = l["reason"] == "malformed_body" && strings.Contains(fmt.Sprint(l["error"]), "nested deeper")
			}
		}
		if !refusedByDepth {
			t.Errorf("the request log for %s does not name the depth guard", tk.ID)
		}
		if h.count() != published {
			t.Errorf("a hostile request published")
		}
		stillServes(t)
	})
	// A result code that is an object is informational, never a reason to
	// refuse a real callback: accepted, stored byte for byte, and not
	// extracted into a header.
	t.Run("result code object: stored, not extracted", func(t *testing.T) {
		cases++
		requests++
		body := []byte(`{"Body":{"stkCallback":{"CheckoutRequestID":"ws_CO_rc_object","ResultCode":{"$gt":""}}}}`)
		before := len(h.messages())
		if r := h.callback(allowedSrc, daraja.STKCallback, tok(), body); r.status != http.StatusOK {
			t.Fatalf("status %d %s, want 200", r.status, r.body)
		}
		served++
		msgs := h.messages()
		if len(msgs) != before+1 {
			t.Fatalf("stream grew by %d, want 1", len(msgs)-before)
		}
		m := msgs[len(msgs)-1]
		if !bytes.Equal(m.Data, body) || m.Header.Get("Daraja-Result-Code") != "" {
			t.Errorf("stored %q with Daraja-Result-Code %q", m.Data, m.Header.Get("Daraja-Result-Code"))
		}
		stillServes(t)
	})
	// HTTP/2 floods carry a complete, valid callback with a valid token on
	// every stream, so a server that ran a handler to the end would publish.
	h2 := func(name string, reset bool) {
		t.Run(name, func(t *testing.T) {
			cases++
			requests++
			tk := tok()
			id := "ws_CO_h2_" + strings.ReplaceAll(name, " ", "_")
			body := bytes.Replace(stk, []byte("ws_CO_191220191020363925"), []byte(id), 1)
			goroutines := runtime.NumGoroutine()
			published := h.count()
			res := h2Flood(t, h, tk, body, reset)
			// The flood's handlers are done once the goroutines are back.
			for deadline := time.Now().Add(30 * time.Second); runtime.NumGoroutine() > goroutines+5 && time.Now().Before(deadline); {
				time.Sleep(50 * time.Millisecond)
			}
			res.published = h.count() - published
			t.Logf("HOSTILE h2 %q streams=%d answered=%v reset_by_server=%d goaway=%q unprocessed=%d published=%d",
				name, res.opened, res.answered, res.resetByServer, res.goAway, res.unprocessed, res.published)
			fmt.Printf("HOSTILE h2 %q streams=%d answered=%v reset_by_server=%d goaway=%q unprocessed=%d published=%d\n",
				name, res.opened, res.answered, res.resetByServer, res.goAway, res.unprocessed, res.published)
			for st, n := range res.answered {
				if st >= 500 {
					serverErrors += n
					t.Errorf("%d streams answered %d", n, st)
				}
			}
			if reset {
				// Every stream was reset before its body ended: no request
				// was complete, so nothing may be answered 200 or published.
				if res.answered[http.StatusOK] != 0 || res.published != 0 {
					t.Errorf("reset streams: %d answered 200, %d published; want none", res.answered[http.StatusOK], res.published)
				}
			} else {
				// Complete requests, all the same callback: at most the
				// one callback is stored, and only if a stream got a 200;
				// every other stream is answered (200 duplicate) or
				// refused by the server, none is silently dropped.
				want := 0
				if res.answered[http.StatusOK] > 0 {
					want = 1
				}
				if res.published != want {
					t.Errorf("published %d, want %d (%d streams answered 200)", res.published, want, res.answered[http.StatusOK])
				}
				total := res.resetByServer + res.unprocessed
				for _, n := range res.answered {
					total += n
				}
				if total != res.opened {
					t.Errorf("%d streams opened, %d accounted for (answered, reset or past GOAWAY)", res.opened, total)
				}
				if res.answered[http.StatusOK] == 0 {
					t.Errorf("the server ran no handler to the end: the flood measured nothing")
				}
			}
			// The token still works for its callback: first use after a
			// reset flood, a duplicate after the other.
			if r := h.callback(allowedSrc, daraja.STKCallback, tk, body); r.status != http.StatusOK {
				t.Errorf("the flood's callback sent normally: %d %s", r.status, r.body)
			}
			if n := h.count() - published; n != 1 {
				t.Errorf("the flood's callback is on the stream %d times, want 1", n)
			}
			served++
			stillServes(t)
		})
	}
	h2("HTTP/2 rapid reset", true)
	h2("HTTP/2 stream flood", false)
	check("TRACE", []int{http.StatusMethodNotAllowed}, func() int {
		return h.rawStatus(allowedSrc, req("TRACE", "/stk/callback?t="+tok(), nil, ""))
	})

	// RFC 9112 §6.1: Content-Length together with Transfer-Encoding. A
	// proxy that frames by Content-Length forwards the chunked body and
	// whatever follows it as one request; the edge frames by
	// Transfer-Encoding, so it must answer the first request and close,
	// never reading what follows as a request of its own (that one could
	// carry its own X-Forwarded-For, token and body). The smuggled callback
	// is valid: were it served, it would be answered and published.
	t.Run("Content-Length with Transfer-Encoding: answered, then closed", func(t *testing.T) {
		cases++
		first := bytes.Replace(stk, []byte("ws_CO_191220191020363925"), []byte("ws_CO_smuggle_first"), 1)
		second := bytes.Replace(stk, []byte("ws_CO_191220191020363925"), []byte("ws_CO_smuggle_second"), 1)
		published := h.count()
		c, br := h.framedConn(allowedSrc)
		smuggled := fmt.Sprintf("POST /stk/callback?t=%s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"+
			"X-Forwarded-For: %s\r\nContent-Length: %d\r\n\r\n%s", tok(), addr, allowedSrc, len(second), second)
		fmt.Fprintf(c, "POST /stk/callback?t=%s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"+
			"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n%s", tok(), addr, len(first), first, smuggled)
		requests += 2
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("no answer to the framed request: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode >= 500 {
			serverErrors++
		}
		if resp.StatusCode != http.StatusOK {
			t.Errorf("the chunked callback: %d, want 200", resp.StatusCode)
		} else {
			served++
		}
		if !resp.Close {
			t.Errorf("answered without Connection: close")
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if resp2, err := http.ReadResponse(br, nil); err == nil {
			resp2.Body.Close()
			if resp2.StatusCode >= 500 {
				serverErrors++
			}
			t.Errorf("the smuggled request was served: %d", resp2.StatusCode)
		}
		msgs := h.messages()
		if n := len(msgs) - published; n != 1 {
			t.Errorf("the stream gained %d messages, want the framed callback alone", n)
		}
		for _, m := range msgs[published:] {
			if m.Header.Get("Nats-Msg-Id") == "stk.callback:ws_CO_smuggle_second" {
				t.Errorf("the smuggled callback was published")
			}
		}
		stillServes(t)
	})
	// The admin listener frames the same way: a request with both headers
	// is answered and its connection closed, so a proxy that exposes only
	// some admin paths cannot be walked past to another.
	t.Run("admin listener: Content-Length with Transfer-Encoding, then closed", func(t *testing.T) {
		cases++
		c, err := net.DialTimeout("tcp", h.srv.AdminAddr().String(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: admin\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"+
			"GET /metrics HTTP/1.1\r\nHost: admin\r\n\r\n")
		requests += 2
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("no answer to the framed request: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode >= 500 {
			serverErrors++
		}
		if resp.StatusCode != http.StatusOK || !resp.Close {
			t.Errorf("the framed request: %d, Connection: close %v; want 200 and close", resp.StatusCode, resp.Close)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if resp2, err := http.ReadResponse(br, nil); err == nil {
			resp2.Body.Close()
			if resp2.StatusCode >= 500 {
				serverErrors++
			}
			t.Errorf("the smuggled admin request was served: %d", resp2.StatusCode)
		}
		stillServes(t)
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

// h2Result is what the server did with a flood, seen from the client.
type h2Result struct {
	opened        int         // streams the client opened
	answered      map[int]int // responses the server sent, by status
	resetByServer int         // streams the server reset (refused)
	goAway        string      // the server's GOAWAY code, "" if none
	unprocessed   int         // streams above the GOAWAY's last stream id
	published     int         // messages the stream gained (set by the caller)
}

// h2Flood opens an HTTP/2 connection and sends 5000 streams, each a POST
// of body with token. reset: each stream sends its whole body but not its
// end, then resets (rapid reset, CVE-2023-44487). Otherwise each stream is
// a complete request, far more at once than the server allows. It honours
// flow control, reads everything the server sends and returns once every
// stream is accounted for or the connection is gone.
func h2Flood(t *testing.T, h *harness, token string, body []byte, reset bool) h2Result {
	const streams = 5000
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(allowedSrc)}, Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", h.srv.PublicAddr().String(), &tls.Config{RootCAs: h.roots, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.ConnectionState().NegotiatedProtocol != "h2" {
		t.Fatal("no HTTP/2")
	}
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	_, _ = io.WriteString(c, http2.ClientPreface)
	fr := http2.NewFramer(c, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	var (
		wmu      sync.Mutex // the framer's writes
		mu       sync.Mutex // everything below
		cond     = sync.NewCond(&mu)
		window   = 65535 // connection send window
		res      = h2Result{answered: map[int]int{}}
		finished = map[uint32]bool{}
		lastID   = uint32(1<<31 - 1)
		dead     bool
	)
	wmu.Lock()
	_ = fr.WriteSettings()
	wmu.Unlock()
	done := func(id uint32) { // under mu
		finished[id] = true
		cond.Broadcast()
	}
	go func() { // read everything, so the server is never blocked writing
		defer func() { mu.Lock(); dead = true; cond.Broadcast(); mu.Unlock() }()
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			mu.Lock()
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if !f.IsAck() {
					mu.Unlock()
					wmu.Lock()
					_ = fr.WriteSettingsAck()
					wmu.Unlock()
					mu.Lock()
				}
			case *http2.WindowUpdateFrame:
				if f.StreamID == 0 {
					window += int(f.Increment)
					cond.Broadcast()
				}
			case *http2.MetaHeadersFrame:
				if st, err := strconv.Atoi(f.PseudoValue("status")); err == nil && !finished[f.StreamID] {
					res.answered[st]++
					done(f.StreamID)
				}
			case *http2.RSTStreamFrame:
				if !finished[f.StreamID] {
					res.resetByServer++
					done(f.StreamID)
				}
			case *http2.GoAwayFrame:
				res.goAway = f.ErrCode.String()
				lastID = f.LastStreamID
				cond.Broadcast()
			}
			mu.Unlock()
		}
	}()
	for i := uint32(0); i < streams; i++ {
		id := 2*i + 1
		mu.Lock()
		for window < len(body) && !dead && res.goAway == "" {
			cond.Wait()
		}
		stop := dead || res.goAway != ""
		window -= len(body)
		mu.Unlock()
		if stop {
			break
		}
		var hb bytes.Buffer
		enc := hpack.NewEncoder(&hb)
		for _, f := range [][2]string{{":method", "POST"}, {":scheme", "https"}, {":authority", "x"},
			{":path", "/stk/callback?t=" + token}, {"content-type", "application/json"}, {"content-length", strconv.Itoa(len(body))}} {
			_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		wmu.Lock()
		err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true})
		if err == nil {
			err = fr.WriteData(id, !reset, body)
		}
		if err == nil && reset {
			err = fr.WriteRSTStream(id, http2.ErrCodeCancel)
		}
		wmu.Unlock()
		if err != nil {
			break
		}
		mu.Lock()
		res.opened++
		mu.Unlock()
	}
	// Wait until each stream is answered, reset, or past the GOAWAY (a
	// reset flood has no answers to wait for: the caller waits for the
	// server's handlers to end).
	timeout := time.AfterFunc(30*time.Second, func() { mu.Lock(); dead = true; cond.Broadcast(); mu.Unlock() })
	defer timeout.Stop()
	mu.Lock()
	defer mu.Unlock()
	for {
		pending := 0
		for i := 0; i < res.opened; i++ {
			if id := uint32(2*i + 1); !finished[id] && id <= lastID {
				pending++
			}
		}
		if pending == 0 || dead || reset {
			break
		}
		cond.Wait()
	}
	for i := 0; i < res.opened; i++ {
		if id := uint32(2*i + 1); !finished[id] && id > lastID && !reset {
			res.unprocessed++
		}
	}
	return res
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
		statuses[h.post(proxySrc, "POST", "/stk/callback?t=x", []byte("{}"), map[string]string{"X-Forwarded-For": strangerSrc}).status]++
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
	// Guessing keys is: after the burst, guesses get 429 (unchecked).
	limited := 0
	for range 20 {
		if status, _ := h.admin(http.MethodPost, "/v1/tokens", "wrong-key-guess-000000", req); status == http.StatusTooManyRequests {
			limited++
		}
	}
	if limited < 10 {
		t.Errorf("only %d of 20 key guesses limited", limited)
	}
	if status, _ := h.admin(http.MethodPost, "/v1/tokens", "wrong-key-guess-000001", req); status != http.StatusTooManyRequests {
		t.Errorf("a blocked client's next guess reaches the key check: %d", status)
	}
	// The operator is never shut out by someone else's guesses from the
	// same address: the right key still works.
	if status, _ := h.admin(http.MethodPost, "/v1/tokens", key, req); status != http.StatusCreated {
		t.Errorf("the right key from a blocked address: %d, want 201", status)
	}
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// TestHTTPServerErrorLogAtWarn: what net/http reports on its error log (a
// failed TLS handshake here; recovered handler panics go the same way)
// reaches the edge's log at Warn or above, which a production logger keeps.
func TestHTTPServerErrorLogAtWarn(t *testing.T) {
	h := start(t, nil)
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(allowedSrc)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", h.srv.PublicAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: not-tls\r\n\r\n")
	_, _ = io.Copy(io.Discard, c) // until the server closes
	c.Close()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		for _, e := range h.logs.All() {
			if strings.Contains(e.Message, "TLS handshake error") {
				if e.Level < zap.WarnLevel {
					t.Fatalf("the HTTP server's error log is at %s: %q", e.Level, e.Message)
				}
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the HTTP server's error log reached no log line")
		}
	}
}
