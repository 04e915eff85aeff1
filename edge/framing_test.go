package edge

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/verify"
)

// framedConn is one HTTP/1.1 TLS connection from src with a reader for
// its answers (rawConn is in hostile_test.go).
func (h *harness) framedConn(src string) (*tls.Conn, *bufio.Reader) {
	h.t.Helper()
	c := h.rawConn(src)
	h.t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c, bufio.NewReader(c)
}

// closedAfter reports whether the server closed the connection after its
// answer: a further request gets no answer.
func closedAfter(c *tls.Conn, br *bufio.Reader) bool {
	_, _ = io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err == nil {
		resp.Body.Close()
		return false
	}
	return true
}

// TestFramingCloses: an ordinary callback keeps its keep-alive connection,
// and a refusal does not read a large body: it answers at once and closes
// (a small one keeps the connection). Content-Length with
// Transfer-Encoding (RFC 9112 §6.1), on the public and admin listeners, is
// a case of TestHostileRequests, so that CI's hostile figures count it.
func TestFramingCloses(t *testing.T) {
	h := start(t, nil)
	body := string(fixture(t, "stk_callback_success.json"))

	t.Run("plain Content-Length keeps the connection", func(t *testing.T) {
		tok := h.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379"}).Token
		c, br := h.framedConn(allowedSrc)
		b := strings.Replace(body, "ws_CO_191220191020363925", "ws_CO_framing_plain", 1)
		fmt.Fprintf(c, "POST /stk/callback?t=%s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"+
			"Content-Length: %d\r\n\r\n%s", tok, len(b), b)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || closedAfter(c, br) {
			t.Fatalf("an ordinary callback (%d) lost its keep-alive connection", resp.StatusCode)
		}
	})

	t.Run("refusal does not read a large body", func(t *testing.T) {
		c, br := h.framedConn(allowedSrc)
		// Announce 100 KiB (under the 256 KiB Go's server would read to
		// keep the connection) and send none of it: the answer comes at
		// once and the server hangs up instead of waiting for the body.
		fmt.Fprintf(c, "POST /stk/callback?t=%s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"+
			"Content-Length: 102400\r\n\r\n", strings.Repeat("A", 40))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("no answer before the body: %v", err)
		}
		_, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("status %d", resp.StatusCode)
		}
		_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
		if _, err := br.ReadByte(); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("the server kept the connection, reading the refused body (%v)", err)
		}
	})

	t.Run("refusal with a small body keeps the connection", func(t *testing.T) {
		c, br := h.framedConn(allowedSrc)
		fmt.Fprintf(c, "POST /stk/callback?t=%s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"+
			"Content-Length: %d\r\n\r\n%s", strings.Repeat("A", 40), len(body), body)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden || closedAfter(c, br) {
			t.Fatalf("a small refusal (%d) closed the connection: refusals would cost a handshake", resp.StatusCode)
		}
	})
}

// TestServerErrorsLogged: net/http's own errors (a broken TLS handshake
// here; recovered panics go the same way) reach the log at Warn, where a
// production logger keeps them.
func TestServerErrorsLogged(t *testing.T) {
	h := start(t, nil)
	c, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(allowedSrc)}}).Dial("tcp", h.srv.PublicAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.WriteString(c, "this is not a TLS ClientHello\r\n\r\n")
	_, _ = io.ReadAll(c)
	c.Close()
	waitUntil(t, 5*time.Second, func() bool {
		return h.logs.FilterLoggerName("http").FilterLevelExact(zap.WarnLevel).FilterMessageSnippet("TLS handshake error").Len() > 0
	})
}
