package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/daraja-edge/daraja-edge/allowlist"
	"github.com/daraja-edge/daraja-edge/certs"
)

// acceptServer is a TLS http.Server on 127.0.0.1 behind RefuseAtAccept,
// built as the edge builds its public listener.
type acceptServer struct {
	addr       string
	roots      *x509.CertPool
	certPEM    []byte
	policy     atomic.Pointer[Policy]
	handshakes atomic.Int64 // ClientHellos the TLS server read
	exempt     atomic.Bool

	mu      sync.Mutex
	refused []netip.Addr

	logs  *observer.ObservedLogs
	srv   *http.Server
	serve chan error
}

func startAcceptServer(tb testing.TB, p *Policy, log *zap.Logger) *acceptServer {
	tb.Helper()
	cert, err := certs.SelfSigned([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	s := &acceptServer{roots: x509.NewCertPool(), serve: make(chan error, 1)}
	s.certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]})
	s.roots.AppendCertsFromPEM(s.certPEM)
	s.policy.Store(p)
	if log == nil {
		var core zapcore.Core
		core, s.logs = observer.New(zap.DebugLevel)
		log = zap.New(core)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	s.addr = ln.Addr().String()
	wrapped := RefuseAtAccept(ln, AcceptOptions{
		Policy: s.policy.Load,
		Refused: func(a netip.Addr) {
			s.mu.Lock()
			s.refused = append(s.refused, a)
			s.mu.Unlock()
		},
		Exempt: s.exempt.Load,
		Log:    log,
	})
	s.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			_, _ = w.Write([]byte(`{"ResultCode":0}`))
		}),
		ReadHeaderTimeout: 5 * time.Second,
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{cert},
			MinVersion:   tls.VersionTLS12,
			GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
				s.handshakes.Add(1)
				return nil, nil
			},
		},
	}
	go func() { s.serve <- s.srv.ServeTLS(wrapped, "", "") }()
	tb.Cleanup(func() { _ = s.srv.Close() })
	return s
}

func (s *acceptServer) refusedSources() []netip.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]netip.Addr(nil), s.refused...)
}

// post sends one callback-sized POST over a new TLS connection from local.
func (s *acceptServer) post(local string) error {
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext:       (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}).DialContext,
		TLSClientConfig:   &tls.Config{RootCAs: s.roots},
		DisableKeepAlives: true,
	}}
	resp, err := c.Post("https://"+s.addr+"/c2b/confirmation?t=x", "application/json", bytes.NewReader(callbackBody))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

var callbackBody = []byte(`{"TransactionType":"Pay Bill","TransID":"RKTQDM7W6S","TransTime":"20191122063845","TransAmount":"10","BusinessShortCode":"600638","BillRefNumber":"A123","MSISDN":"2547*****149","FirstName":"John"}`)

// handshake opens a TLS connection from local and returns the handshake's
// error.
func (s *acceptServer) handshake(local string) error {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 10 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", s.addr, &tls.Config{RootCAs: s.roots})
	if err == nil {
		c.Close()
	}
	return err
}

// closedBeforeServerHello reports whether err is what a client sees when
// the server closed the connection without a word: EOF or a reset, never a
// TLS alert or a certificate error.
func closedBeforeServerHello(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func mustAllow(t testing.TB, cidrs ...string) *allowlist.List {
	t.Helper()
	l, err := allowlist.New(nil, cidrs)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestAcceptRefusesBeforeHandshake(t *testing.T) {
	s := startAcceptServer(t, &Policy{Allow: mustAllow(t, "127.0.0.2/32"), ClientIP: NewClientIP(nil)}, nil)

	if err := s.post("127.0.0.2"); err != nil {
		t.Fatalf("allowlisted source: %v", err)
	}
	before := s.handshakes.Load()
	if before == 0 {
		t.Fatal("the allowed request made no handshake: the handshake counter counts nothing")
	}
	err := s.handshake("127.0.0.3")
	if err == nil || !closedBeforeServerHello(err) {
		t.Fatalf("refused source: handshake error %v, want EOF or reset", err)
	}
	if got := s.refusedSources(); len(got) != 1 || got[0] != netip.MustParseAddr("127.0.0.3") {
		t.Fatalf("refused: %v, want [127.0.0.3]", got)
	}
	if err := s.post("127.0.0.3"); err == nil {
		t.Fatal("a POST from a refused source was answered")
	}
	// The listener goes on past refused connections: the next client is
	// served, and the handshakes counted are its own only.
	if err := s.post("127.0.0.2"); err != nil {
		t.Fatalf("allowlisted source after refusals: %v", err)
	}
	if got := s.handshakes.Load() - before; got != 1 {
		t.Errorf("%d handshakes since the refusals, want 1 (the allowed one)", got)
	}
	if got := len(s.refusedSources()); got != 2 {
		t.Errorf("%d refusals counted, want 2", got)
	}
	select {
	case err := <-s.serve:
		t.Fatalf("Serve returned: %v", err)
	default:
	}
}

// TestAcceptLetsThrough: report-only mode, a trusted proxy, an exemption,
// and a reload that lists the source each send the connection on to the
// handler; a reload that drops a source refuses it from the next
// connection on.
func TestAcceptLetsThrough(t *testing.T) {
	enforced := &Policy{Allow: mustAllow(t, "127.0.0.2/32"), ClientIP: NewClientIP(nil)}
	s := startAcceptServer(t, enforced, nil)
	for _, tc := range []struct {
		name   string
		policy *Policy
		exempt bool
		src    string
		passes bool
	}{
		{"enforced, listed", enforced, false, "127.0.0.2", true},
		{"enforced, not listed", enforced, false, "127.0.0.3", false},
		{"report only", &Policy{Allow: enforced.Allow, ReportOnly: true, ClientIP: NewClientIP(nil)}, false, "127.0.0.3", true},
		{"a trusted proxy", &Policy{Allow: enforced.Allow, ClientIP: NewClientIP(mustAllow(t, "127.0.0.3/32"))}, false, "127.0.0.3", true},
		// Neither listed nor a trusted proxy: the peer is the client, its
		// headers are never believed, so it is a stranger (it went on to
		// a TLS handshake while any proxy was trusted).
		{"trusted proxies, a stranger", &Policy{Allow: enforced.Allow, ClientIP: NewClientIP(mustAllow(t, "10.0.0.0/8"))}, false, "127.0.0.3", false},
		{"reload lists it", &Policy{Allow: mustAllow(t, "127.0.0.3"), ClientIP: NewClientIP(nil)}, false, "127.0.0.3", true},
		{"reload drops it", &Policy{Allow: mustAllow(t, "127.0.0.3"), ClientIP: NewClientIP(nil)}, false, "127.0.0.2", false},
		{"nil client ip", &Policy{Allow: enforced.Allow}, false, "127.0.0.3", false},
		{"empty allowlist", &Policy{Allow: mustAllow(t), ClientIP: NewClientIP(nil)}, false, "127.0.0.2", false},
		{"no policy", nil, false, "127.0.0.3", true},
		{"exempt (an ACME challenge pending)", enforced, true, "127.0.0.3", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s.policy.Store(tc.policy)
			s.exempt.Store(tc.exempt)
			refusedBefore := len(s.refusedSources())
			err := s.post(tc.src)
			if tc.passes && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if !tc.passes {
				if err == nil {
					t.Fatal("answered")
				}
				if got := len(s.refusedSources()) - refusedBefore; got != 1 {
					t.Fatalf("%d refusals counted, want 1", got)
				}
			}
		})
	}
}

// TestAcceptLogBurst: a burst of refused connections from one source logs
// at most one line a second for it, plus at most one summary a second.
func TestAcceptLogBurst(t *testing.T) {
	s := startAcceptServer(t, &Policy{Allow: mustAllow(t, "127.0.0.2/32"), ClientIP: NewClientIP(nil)}, nil)
	const burst = 200
	start := time.Now()
	for i := range burst {
		if err := s.handshake("127.0.0.3"); err == nil {
			t.Fatalf("connection %d: handshake succeeded", i)
		}
	}
	elapsed := time.Since(start)
	if got := len(s.refusedSources()); got != burst {
		t.Fatalf("%d refusals counted, want %d", got, burst)
	}
	// Lines are written after the close the client saw: wait for the last.
	deadline := time.Now().Add(10 * time.Second)
	for {
		perSource := s.logs.FilterMessageSnippet("source not in the allowlist").Len()
		var summarized int64
		for _, e := range s.logs.FilterMessageSnippet("without a line of their own").All() {
			summarized += e.ContextMap()["connections"].(int64)
		}
		if int64(perSource)+summarized == burst || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	_ = s.srv.Close() // flushes the summary
	maxLines := 1 + int(time.Since(start)/time.Second)
	perSource := s.logs.FilterMessageSnippet("source not in the allowlist").FilterField(zap.String("source", "127.0.0.3"))
	if perSource.Len() < 1 || perSource.Len() > maxLines {
		t.Errorf("%d lines for 127.0.0.3 over %v, want 1..%d", perSource.Len(), elapsed, maxLines)
	}
	summaries := s.logs.FilterMessageSnippet("without a line of their own").All()
	var summarized int64
	for _, e := range summaries {
		summarized += e.ContextMap()["connections"].(int64)
	}
	if len(summaries) > maxLines+1 { // +1: the one written at close
		t.Errorf("%d summary lines over %v, want at most %d", len(summaries), elapsed, maxLines+1)
	}
	if got := int64(perSource.Len()) + summarized; got != burst {
		t.Errorf("lines (%d) and summaries (%d) account for %d refusals, want %d", perSource.Len(), summarized, got, burst)
	}
}

// TestRefusalLogBounds drives the refusal log with a clock of its own.
func TestRefusalLogBounds(t *testing.T) {
	core, logs := observer.New(zap.DebugLevel)
	t0 := time.Unix(1_800_000_000, 0)
	now := t0
	r := &refusalLog{log: zap.New(core), now: func() time.Time { return now }}
	lines := func() int { return logs.FilterMessageSnippet("source not in the allowlist").Len() }
	a := netip.MustParseAddr("203.0.113.7")

	for range 100 {
		r.refused(a)
	}
	if lines() != 1 {
		t.Fatalf("100 refusals in one instant: %d lines, want 1", lines())
	}
	now = t0.Add(999 * time.Millisecond)
	r.refused(a)
	if lines() != 1 {
		t.Fatalf("a second line within the second: %d lines", lines())
	}
	now = t0.Add(time.Second)
	r.refused(a)
	if lines() != 2 {
		t.Fatalf("a second later: %d lines, want 2", lines())
	}

	// A flood of distinct sources: the budget of the second, no more, and
	// a table that does not grow (it is an array).
	now = t0.Add(3 * time.Second)
	for i := range 100_000 {
		r.refused(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}))
	}
	if got := lines() - 2; got != refusalLinesPerSecond {
		t.Fatalf("100,000 sources in one second: %d lines, want %d", got, refusalLinesPerSecond)
	}

	// Two sources sharing a slot: the second waits for the slot's second.
	now = t0.Add(10 * time.Second)
	b, c := sameSlot(t)
	r.refused(b)
	r.refused(c)
	if got := lines() - 2 - refusalLinesPerSecond; got != 1 {
		t.Fatalf("two sources of one slot in one second: %d lines, want 1", got)
	}

	r.flush(true)
	var summarized int64
	for _, e := range logs.FilterMessageSnippet("without a line of their own").All() {
		summarized += e.ContextMap()["connections"].(int64)
	}
	total := int64(100 + 1 + 1 + 100_000 + 2)
	if got := int64(lines()) + summarized; got != total {
		t.Errorf("lines and summaries account for %d refusals, want %d", got, total)
	}
}

func sameSlot(t *testing.T) (netip.Addr, netip.Addr) {
	seen := map[int]netip.Addr{}
	for i := range 1 << 16 {
		a := netip.AddrFrom4([4]byte{192, 0, byte(i >> 8), byte(i)})
		if b, ok := seen[slotOf(a)]; ok {
			return b, a
		}
		seen[slotOf(a)] = a
	}
	t.Fatal("no two addresses share a slot")
	return netip.Addr{}, netip.Addr{}
}

// BenchmarkAcceptCPU compares the server's CPU for a connection refused at
// accept with a whole accepted request on a new TLS connection (handshake,
// a callback-sized POST, a handler that only answers), in the same run.
// The clients run in a child process, so only the server's CPU (getrusage
// of this process) is counted; the kernel's loopback work is charged to
// whichever side runs it.
func BenchmarkAcceptCPU(b *testing.B) {
	s := startAcceptServer(b, &Policy{Allow: mustAllow(b, "127.0.0.2/32"), ClientIP: NewClientIP(nil)}, zap.NewNop())
	ca := filepath.Join(b.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, s.certPEM, 0o600); err != nil {
		b.Fatal(err)
	}
	cpu := func(mode string, n int) time.Duration {
		cmd := exec.Command(os.Args[0], "-test.run=^TestAcceptLoadChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), "ACCEPT_CHILD_ADDR="+s.addr, "ACCEPT_CHILD_MODE="+mode,
			"ACCEPT_CHILD_N="+strconv.Itoa(n), "ACCEPT_CHILD_CA="+ca)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		before := rusage(b)
		if err := cmd.Run(); err != nil {
			b.Fatalf("%s load: %v\n%s", mode, err, out.String())
		}
		return rusage(b) - before
	}
	refusedN := b.N
	refused := cpu("refused", refusedN)
	accepted := cpu("accepted", b.N)
	if got := len(s.refusedSources()); got != refusedN {
		b.Fatalf("%d refusals counted, want %d", got, refusedN)
	}
	perRefused := float64(refused.Nanoseconds()) / float64(refusedN)
	perAccepted := float64(accepted.Nanoseconds()) / float64(b.N)
	b.ReportMetric(perRefused, "refused-cpu-ns/conn")
	b.ReportMetric(perAccepted, "accepted-cpu-ns/req")
	b.ReportMetric(perRefused/perAccepted, "refused/accepted")
	b.ReportMetric(0, "ns/op")
}

// rusage is the CPU (user and system) this process has used.
func rusage(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestAcceptLoadChild is BenchmarkAcceptCPU's client process; it does
// nothing in a normal run.
func TestAcceptLoadChild(t *testing.T) {
	addr := os.Getenv("ACCEPT_CHILD_ADDR")
	if addr == "" {
		t.Skip("client process of BenchmarkAcceptCPU")
	}
	n, _ := strconv.Atoi(os.Getenv("ACCEPT_CHILD_N"))
	pemBytes, err := os.ReadFile(os.Getenv("ACCEPT_CHILD_CA"))
	if err != nil {
		t.Fatal(err)
	}
	s := &acceptServer{addr: addr, roots: x509.NewCertPool()}
	s.roots.AppendCertsFromPEM(pemBytes)
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for range 2 {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				var err error
				if os.Getenv("ACCEPT_CHILD_MODE") == "refused" {
					err = refusedOnce(addr)
				} else {
					err = s.post("127.0.0.2")
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// refusedOnce connects from 127.0.0.3 and waits for the server to close.
func refusedOnce(addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.3")}}).DialContext(ctx, "tcp", addr)
	if err != nil {
		if errors.Is(err, syscall.ECONNRESET) { // the reset came before the dial returned
			return nil
		}
		return err
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || !closedBeforeServerHello(err) {
		return fmt.Errorf("refused connection read: %v, want EOF or reset", err)
	}
	return nil
}

// TestAcceptKeepAliveOnlyForAdmitted: with the listener's keep-alive off,
// a connection let through gets TCP keep-alive from the wrapper.
func TestAcceptKeepAliveOnlyForAdmitted(t *testing.T) {
	lc := net.ListenConfig{KeepAlive: -1}
	inner, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := RefuseAtAccept(inner, AcceptOptions{KeepAlive: 15 * time.Second})
	defer ln.Close()
	go func() {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err == nil {
			time.Sleep(100 * time.Millisecond)
			c.Close()
		}
	}()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var on int
	var serr error
	_ = raw.Control(func(fd uintptr) { on, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE) })
	if serr != nil || on != 1 {
		t.Fatalf("SO_KEEPALIVE on an admitted connection = %d (%v), want 1", on, serr)
	}
}
